//! The chain crate's error type: one structured variant per way a block or transaction can be
//! invalid, so callers (mempool, proposer, validators, tests) can tell exactly what failed.

use crypto_accel::{CodecError, DataId};
use thiserror::Error;

use crate::types::{format_cpc, Address, Amount};

/// Result alias for the chain crate.
pub type ChainResult<T> = Result<T, ChainError>;

/// Everything that can make a transaction, a block or a stored state invalid.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChainError {
    /// Bytes did not decode.
    #[error("decode: {0}")]
    Codec(#[from] CodecError),
    /// A block or message of another protocol version.
    #[error("protocol version {got} not supported (this node runs {ours})")]
    Version {
        /// Version received.
        got: u16,
        /// Our version.
        ours: u16,
    },
    /// The block is for another chain.
    #[error("block for chain {got}, this is chain {expected}")]
    WrongChain {
        /// This chain's id.
        expected: u32,
        /// The block's chain id.
        got: u32,
    },
    /// The block's height is not the next one.
    #[error("block number {got}, expected {expected}")]
    BadBlockNumber {
        /// The next height.
        expected: u64,
        /// The block's height.
        got: u64,
    },
    /// The header's pre-state root differs from ours.
    #[error("block claims pre-state root {got}, ours is {expected}")]
    StateRootMismatch {
        /// Our root.
        expected: crypto_accel::Hash,
        /// The header's root.
        got: crypto_accel::Hash,
    },
    /// The block's term is older than the current one.
    #[error("block term {got} is before the current term {current}")]
    TermWentBack {
        /// Current term.
        current: u64,
        /// The block's term.
        got: u64,
    },
    /// A normal block carried a penalty, or an impeach block something else than one penalty.
    #[error("malformed {kind} block: {reason}")]
    MalformedBlock {
        /// "normal" or "impeach".
        kind: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A penalty names another proposer or height than its impeach block.
    #[error("penalty on {proposer} at {number} does not match its impeach block")]
    PenaltyMismatch {
        /// Proposer named by the penalty.
        proposer: Address,
        /// Height named by the penalty.
        number: u64,
    },
    /// A signer address is not a valid ed25519 key.
    #[error("sender {addr} is not a valid public key")]
    BadSender {
        /// The address.
        addr: Address,
    },
    /// Not enough funds.
    #[error("insufficient balance: need {} CPC, have {} CPC", format_cpc(*.need), format_cpc(*.have))]
    InsufficientBalance {
        /// Amount needed.
        need: Amount,
        /// Amount available.
        have: Amount,
    },
    /// The transaction nonce is not the sender's next nonce.
    #[error("bad nonce: expected {expected}, got {got}")]
    BadNonce {
        /// The sender's next nonce.
        expected: u64,
        /// The transaction's nonce.
        got: u64,
    },
    /// An arithmetic result would overflow.
    #[error("arithmetic overflow in {what}")]
    Overflow {
        /// Where.
        what: &'static str,
    },
    /// An audit report about the reporter itself.
    #[error("a storage node may not report audits of itself")]
    SelfReport,
    /// A zero amount where a positive one is required.
    #[error("{what} must be positive")]
    ZeroAmount {
        /// Which amount.
        what: &'static str,
    },
    /// An owner-only function called by someone else.
    #[error("only the owner may call {function}, and {caller} is not it")]
    NotOwner {
        /// The caller.
        caller: Address,
        /// The function.
        function: &'static str,
    },
    /// No data registered under this id.
    #[error("unknown data {id}")]
    UnknownData {
        /// The id.
        id: DataId,
    },
    /// The data id is taken.
    #[error("data {id} is already registered")]
    DataExists {
        /// The id.
        id: DataId,
    },
    /// Registration parameters are inconsistent.
    #[error("invalid data registration: {reason}")]
    InvalidData {
        /// What is wrong.
        reason: &'static str,
    },
    /// The data's policy does not take grants.
    #[error("data {id} is not grant-based")]
    GrantsDisabled {
        /// The id.
        id: DataId,
    },
    /// A grant's intervals fall outside the data's intervals.
    #[error("intervals {start}..{end} outside the data's intervals")]
    IntervalOutOfRange {
        /// Start (inclusive).
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// An expiry height that has already passed.
    #[error("expiry {expiry} is not after height {height}")]
    ExpiryInPast {
        /// The expiry.
        expiry: u64,
        /// The current height.
        height: u64,
    },
    /// No grant for this reader.
    #[error("no grant on {id} for {reader}")]
    UnknownGrant {
        /// Data id.
        id: DataId,
        /// Reader.
        reader: Address,
    },
    /// The grant was already revoked.
    #[error("grant on {id} for {reader} already revoked")]
    AlreadyRevoked {
        /// Data id.
        id: DataId,
        /// Reader.
        reader: Address,
    },
    /// A deposit below a pool's minimum.
    #[error("{pool} deposit would be {} CPC, minimum is {} CPC", format_cpc(*.got), format_cpc(*.min))]
    BelowMinimum {
        /// Pool name.
        pool: &'static str,
        /// Resulting deposit.
        got: Amount,
        /// Minimum.
        min: Amount,
    },
    /// Operation not allowed in the current economy season phase.
    #[error("{op} not allowed in the {phase} phase")]
    WrongPhase {
        /// Operation.
        op: &'static str,
        /// Current phase name.
        phase: &'static str,
    },
    /// RNode deposit or candidacy locked because the address is elected.
    #[error("{addr} is elected until term {until}; deposit locked")]
    LockedWhileElected {
        /// The address.
        addr: Address,
        /// Last term it is elected for.
        until: u64,
    },
    /// Campaign requires an RNode.
    #[error(
        "{addr} is not an RNode: campaigning needs an RNode deposit of at least {} CPC first",
        format_cpc(*.min)
    )]
    NotRNode {
        /// The address.
        addr: Address,
        /// The RNode minimum deposit.
        min: Amount,
    },
    /// Already a candidate.
    #[error("{addr} is already a candidate")]
    AlreadyCandidate {
        /// The address.
        addr: Address,
    },
    /// Not a candidate.
    #[error("{addr} is not a candidate")]
    NotCandidate {
        /// The address.
        addr: Address,
    },
    /// Campaign parameters out of bounds.
    #[error("invalid campaign: {reason}")]
    InvalidCampaign {
        /// What is wrong.
        reason: &'static str,
    },
    /// The admission seed block is unknown or too old.
    #[error("admission seed block {number} unknown or too old")]
    UnknownSeed {
        /// Seed block number.
        number: u64,
    },
    /// The CPU admission proof does not meet the difficulty.
    #[error("CPU proof has {got} leading zero bits, {need} needed")]
    BadCpuProof {
        /// Bits needed.
        need: u8,
        /// Bits found.
        got: u32,
    },
    /// The memory admission proof does not meet its target.
    #[error("memory proof has {got} leading zero bits, {need} needed")]
    BadMemoryProof {
        /// Bits needed.
        need: u8,
        /// Bits found.
        got: u32,
    },
    /// A parameter update out of bounds.
    #[error("{what} = {value} out of bounds (max {max})")]
    ParamOutOfBounds {
        /// Parameter.
        what: &'static str,
        /// Requested value.
        value: u64,
        /// Largest allowed value.
        max: u64,
    },
    /// No such PDash listing.
    #[error("unknown item {item}")]
    UnknownItem {
        /// Listing id.
        item: u64,
    },
    /// No such PDash order.
    #[error("unknown order {order}")]
    UnknownOrder {
        /// Order id.
        order: u64,
    },
    /// The listing was withdrawn.
    #[error("item {item} is delisted")]
    ItemDelisted {
        /// Listing id.
        item: u64,
    },
    /// Caller has no role in this step of the trade.
    #[error("{caller} is not the {role} of order {order}")]
    WrongParty {
        /// The caller.
        caller: Address,
        /// The role required.
        role: &'static str,
        /// The order.
        order: u64,
    },
    /// A trade step out of order.
    #[error("order {order} is {state}, cannot {step}")]
    BadOrderState {
        /// The order.
        order: u64,
        /// Its state.
        state: &'static str,
        /// The step attempted.
        step: &'static str,
    },
    /// Double-vote evidence whose votes do not conflict.
    #[error("evidence rejected: {reason}")]
    BadEvidence {
        /// Why.
        reason: &'static str,
    },
    /// The accused is not a validator.
    #[error("{addr} is not a validator")]
    NotValidator {
        /// The address.
        addr: Address,
    },
    /// This equivocation was already punished.
    #[error("{validator} already punished for height {number}")]
    AlreadyPunished {
        /// Validator.
        validator: Address,
        /// Height.
        number: u64,
    },
    /// A state diff that does not follow the current state.
    #[error("state diff follows root {got}, state is at {expected}")]
    DiffMismatch {
        /// Current root.
        expected: crypto_accel::Hash,
        /// The diff's parent root.
        got: crypto_accel::Hash,
    },
    /// A stored state entry names an unknown table.
    #[error("unknown state table {table}")]
    UnknownTable {
        /// Table id.
        table: u8,
    },
    /// The block store's database failed (I/O, a full disk, the file locked by another
    /// process).
    #[error("block store {op} failed: {reason}")]
    StoreIo {
        /// The operation.
        op: &'static str,
        /// The database's error message.
        reason: String,
    },
    /// Data read from the block store is corrupt or inconsistent.
    #[error("block store corrupt: {what}: {reason}")]
    StoreCorrupt {
        /// What was being read.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The store does not belong to this chain, or a commit does not follow the stored head.
    #[error("block store mismatch: {what}")]
    StoreMismatch {
        /// What differs.
        what: &'static str,
    },
}
