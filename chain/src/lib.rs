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
pub mod contracts;
mod election;
mod error;
mod keycache;
mod lbft;
pub mod rewards;
pub mod rpt;
mod state;
mod store;
mod tx;
mod types;

pub use config::ChainConfig;
pub use election::{elect, elect_committee, proposer_of, term_of, term_seed, Schedule};
pub use lbft::{
    genesis_header, impeach_block, propose, verify_item_id, Input, LbftParams, Message, Output,
    Phase, Stats, TimerKind, Validator, MAX_MESSAGE_BYTES,
};

pub use error::{ChainError, ChainResult};
pub use keycache::KeyCache;
pub use state::{
    check_evidence, Account, Activity, BlockReceipt, Candidate, DataRecord, DiffEntry,
    Equivocation, GrantRecord, Listing, Order, OrderState, State, StateDiff, TxOutcome,
    EQUIVOCATION_RNODE_DIVISOR, IMPEACH_PENALTY_DIVISOR, MAX_AUDITS_PER_REPORT, MAX_DIFF_BYTES,
};
pub use store::{ChainStore, Head, StoreConfig, STORE_FILE, STORE_FORMAT};
pub use tx::{
    AccessPolicy, Block, IntervalRange, RptWeight, SignedTx, Tx, TxPayload, MAX_ITEM_DESCRIPTION,
    MAX_ITEM_NAME, MAX_SEALED_KEY,
};
pub use types::{
    format_cpc, get_amount, put_amount, Address, Amount, BlockKind, Certificate, DoubleVote,
    Header, Vote, VoteKind, CPC, MAX_BLOCK_TXS, MAX_PAYLOAD_BYTES, MAX_VALIDATORS,
    PROTOCOL_VERSION,
};
