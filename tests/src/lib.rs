//! Shared harness for cpchain's cross-crate tests: end-to-end runs of the `cpchain` binary
//! (in `tests/`), the seeded LBFT 2.0 network simulator ([`sim`]), and, with the DHT issue,
//! the multi-process fault tests.

pub mod sim;
