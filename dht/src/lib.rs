//! The improved Kademlia DHT that spreads erasure-coded, encrypted shards over storage nodes.
//!
//! This crate will hold libp2p-kad routing under our own protocol name, the shard transfer
//! protocol, the data-block ↔ key-material records, and the pure placement / repair / audit
//! planners driven by `poll(now)`. It is filled by the DHT issue.
