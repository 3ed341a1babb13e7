//! The networked node: config, libp2p networking, the engine that drives the LBFT core,
//! the mempool, the HTTP API with explorer and metrics, and the local devnet launcher.

pub mod mempool;
pub mod view;
