//! The DAG sidechain that ingests IoT readings in real time and anchors them on the main chain.
//!
//! This crate will hold DAG vertices, tip selection, the deterministic confirmation rule and
//! checkpoints (Merkle roots of the confirmed frontier). It is pure: no tokio, no sockets.
