//! Criterion benches for crypto kernels.
fn main() {}
