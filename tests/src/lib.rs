//! Shared harness for cpchain's cross-crate tests: end-to-end runs of the `cpchain` binary
//! (in `tests/`), and, with the chain and DHT issues, the seeded network simulator and the
//! multi-process fault tests.
