//! The `bench` binary: end-to-end benchmark runs.
fn main() {}
