//! The improved Kademlia DHT that spreads erasure-coded, encrypted shards over storage nodes.
//!
//! This crate is pure: no sockets, no clocks, no threads. The node (crate `storage-node`)
//! wires it to libp2p: Kademlia routing under `/cpchain/kad/1` and the shard transfer
//! protocol `/cpchain/shard/3`, whose messages live in [`wire`].
//!
//! - [`record`]: the improved DHT record, mapping each data block to the key material needed
//!   to read it (the interval index and the slot for its PRE capsule) and to its shard map.
//! - [`planner`]: placement by XOR distance (never two shards of a block on one node or
//!   subnet), and the audit and repair schedule, driven by `poll(now)`.
//! - [`proof`]: audit proofs: a random 1 KiB segment of a shard with the BLAKE3 tree path to
//!   the shard's content id, so the challenger needs nothing but the id.
//! - [`wire`]: the shard protocol's requests and responses, every length bounded.
//! - [`routing_sim`]: a seeded simulation of lookups against adversarial routing answers,
//!   with and without disjoint paths.

pub mod planner;
pub mod proof;
pub mod record;
pub mod routing_sim;
pub mod wire;
