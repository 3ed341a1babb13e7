//! The CPChain main chain: a thin control layer that stores data hashes and access rights.
//!
//! This crate will hold the ledger types, the state transition with the six built-in system
//! contracts, DPoR election and the LBFT 2.0 validator as a pure state machine (no tokio, no
//! sockets, no clocks), and the block/state store. It is filled by the chain-core issue.
