//! The `cpchain` command-line interface.
fn main() {}
