//! The CPChain main chain: a thin control layer that stores data hashes and access rights.
//!
//! Main types: ledger types ([`Header`], [`Block`], [`Tx`], [`SignedTx`], [`Vote`],
//! [`Certificate`], [`DoubleVote`]) in the canonical encoding of `crypto-accel`, with
//! domain-separated ed25519 signatures. Later modules add the state transition with the six
//! built-in system contracts, DPoR election, the LBFT 2.0 validator as a pure state machine,
//! and the block/state store.
//!
//! This crate is pure: no tokio, no sockets, no clock reads. Time and randomness come in as
//! inputs; effects go out as data.
//!
//! Feature flags: none.

mod config;
mod tx;
mod types;

pub use config::ChainConfig;

pub use tx::{Block, SignedTx, Tx, TxPayload};
pub use types::{
    get_amount, put_amount, Address, Amount, BlockKind, Certificate, DoubleVote, Header, Vote,
    VoteKind, CPC, MAX_BLOCK_TXS, MAX_PAYLOAD_BYTES, MAX_VALIDATORS, PROTOCOL_VERSION,
};
