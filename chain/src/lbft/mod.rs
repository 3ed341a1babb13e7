//! LBFT 2.0, the validators committee's consensus, as a pure state machine
//! ([`Validator::step`]: [`Input`] in, [`Output`]s out; no clock, no threads, no I/O).
//!
//! Five states ([`Phase`]): `Idle` (waiting for the proposer's block), `Prepare` (sent
//! PREPARE, collecting a P-certificate), `Commit` (sent COMMIT, collecting a C-certificate),
//! `ImpeachPrepare` and `ImpeachCommit` (the same two phases for the deterministic impeach
//! block). Signature checks leave the machine as [`Output::Verify`] batches and body checks
//! as [`Output::Check`]; answers come back as [`Input::Verified`] / [`Input::Checked`]. The
//! engine executes every inserted block and reports the post-state root with
//! [`Input::Executed`]; the machine needs it for the next header's `state_root`.
//!
//! # Safety
//!
//! 1. A block is final only with a certificate of 2f+1 distinct committee signatures of one
//!    commit-type kind (COMMIT for normal blocks, IMPEACH COMMIT for impeach blocks).
//! 2. An honest validator sends at most one commit-type vote per height: `Commit` and
//!    `ImpeachCommit` are left only when the height is final.
//! 3. Two certificates for different blocks at one height share at least
//!    2(2f+1) − (3f+1) = f+1 signers, so one honest validator would have sent two
//!    commit-type votes at that height: impossible with at most f byzantine validators.
//! 4. Faulty proposers cannot add a third option: a normal block needs the scheduled
//!    proposer's seal, and the impeach block is a function of the (final, hence common)
//!    parent. So no two different blocks are final at one height, for any proposers.
//!
//! Impeachment outranks the normal case: a validator that has not sent a commit-type vote
//! moves to impeachment on timer expiry or an illicit block even after PREPARE, and when an
//! impeach P-certificate and a normal one are both present it IMPEACH COMMITs. A validator
//! that already COMMITted does not start impeachment (that could only split the commit
//! votes); one in `ImpeachPrepare` that sees a P-certificate before any impeach
//! P-certificate may still COMMIT, which rule 2 keeps safe and which lets a height finish
//! when the timer raced the P-certificate. Once impeaching, a validator re-sends only its
//! impeachment votes, so stale PREPAREs do not revive a competing P-certificate after a
//! partition heals. An equivocator's conflicting votes are all kept (bounded) and reported
//! as [`crate::DoubleVote`]; each is a genuine signature, and safety rests on rule 2 alone.
//!
//! Liveness caveat (inherent to the white paper's single-round protocol, which has no view
//! change): if honest commit-type votes split between the proposed and the impeach block so
//! that neither can reach 2f+1, the height stalls — no rule can move a commit-type vote
//! safely. It needs a partition or replay that lets both P-certificates form; the
//! simulation counts such "split stalls" (well under 1% of seeds in the partition
//! scenarios). Leaving that state needs round-tagged votes (a Tendermint-style lock and
//! re-vote), which changes the `Vote` type.
//!
//! Bounded everywhere ([`LbftParams`]): future-height messages within
//! `max_future_heights`, at most `max_buffered` of them, `max_inflight` verification
//! requests, `max_proposals_per_height` distinct proposals checked per height.

mod blocks;
mod machine;

use crypto_accel::{Hash, VerifyBatch, VerifyReport};

use crate::tx::Block;
use crate::types::{Certificate, DoubleVote, Vote};

pub use blocks::{impeach_block, propose};
pub use machine::{verify_item_id, Validator};

/// The five states of an LBFT 2.0 validator at the current height.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Waiting for the proposer's block.
    Idle,
    /// Sent PREPARE for a block; collecting a P-certificate (2f+1 PREPAREs).
    Prepare,
    /// Sent COMMIT; collecting a C-certificate (2f+1 COMMITs).
    Commit,
    /// Sent IMPEACH PREPARE for the impeach block; collecting 2f+1 of them.
    ImpeachPrepare,
    /// Sent IMPEACH COMMIT; collecting 2f+1 of them.
    ImpeachCommit,
}

/// Timers the machine asks the driver to set ([`Output::SetTimer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerKind {
    /// Height `number` must be final by now: no block, no P-certificate or no
    /// C-certificate in time (abnormal cases 1, 3 and 5) starts impeachment.
    Impeach {
        /// The height the timer guards.
        number: u64,
    },
    /// Periodic retransmission while a height is stalled (own votes, certificates, a sync
    /// request), which restores progress after message loss or a partition heals.
    Resend,
}

/// What validators, proposers and civilians send each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A proposer's sealed block.
    Proposal(Block),
    /// PREPARE, COMMIT, IMPEACH PREPARE or IMPEACH COMMIT.
    Vote(Vote),
    /// VALIDATE / IMPEACH VALIDATE: a final block with its 2f+1 signatures.
    Validate(Block, Certificate),
    /// "I am at height `number`": peers ahead answer with VALIDATEs (catch-up).
    Sync {
        /// The sender's current height.
        number: u64,
    },
}

/// An input to [`Validator::step`].
#[derive(Debug, Clone)]
pub enum Input {
    /// A proposed block.
    Proposal(Block),
    /// A vote of any of the four kinds.
    Vote(Vote),
    /// VALIDATE or IMPEACH VALIDATE.
    Validate(Block, Certificate),
    /// A peer's catch-up request.
    Sync {
        /// The peer's height.
        number: u64,
    },
    /// A timer set with [`Output::SetTimer`] expired.
    Timeout(TimerKind),
    /// The local clock (ms); the driver ticks before other inputs.
    Tick(u64),
    /// The result of an [`Output::Verify`] request.
    Verified {
        /// The request id.
        req: u64,
        /// Which items failed.
        report: VerifyReport,
    },
    /// The result of an [`Output::Check`] request: whether the body applies cleanly on the
    /// parent state.
    Checked {
        /// The request id.
        req: u64,
        /// True when the body is valid.
        ok: bool,
    },
    /// The engine executed the inserted block `number`; its post-state root.
    Executed {
        /// Height executed.
        number: u64,
        /// State root after the block.
        post_state_root: Hash,
    },
    /// Candidates (address, RPT) for the next election, read from the state.
    Candidates(Vec<(crate::types::Address, u64)>),
}

impl From<Message> for Input {
    fn from(m: Message) -> Input {
        match m {
            Message::Proposal(b) => Input::Proposal(b),
            Message::Vote(v) => Input::Vote(v),
            Message::Validate(b, c) => Input::Validate(b, c),
            Message::Sync { number } => Input::Sync { number },
        }
    }
}

/// An effect requested by [`Validator::step`].
#[derive(Debug, Clone)]
pub enum Output {
    /// Send to every validator, proposer and civilian.
    Broadcast(Message),
    /// Fire [`Input::Timeout`] with `kind` when the local clock reaches `at_ms` (replaces an
    /// earlier timer of the same kind).
    SetTimer {
        /// Which timer.
        kind: TimerKind,
        /// Local time to fire at.
        at_ms: u64,
    },
    /// A block is final: store and execute it, then answer with [`Input::Executed`].
    Insert(Block, Certificate),
    /// Verify these signatures and answer with [`Input::Verified`].
    Verify {
        /// Request id.
        req: u64,
        /// The signatures.
        batch: VerifyBatch,
        /// `ids[i]` digests item i (key, signature, signed bytes) so an engine may cache
        /// verdicts of signatures it has already checked.
        ids: Vec<Hash>,
    },
    /// Check that the body applies on the parent state; answer with [`Input::Checked`].
    Check {
        /// Request id.
        req: u64,
        /// The block.
        block: Block,
    },
    /// A validator signed two conflicting votes of one kind at one height.
    Evidence(DoubleVote),
}

/// Limits of one validator machine (every buffer is bounded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbftParams {
    /// Messages for heights above current + this are dropped.
    pub max_future_heights: u64,
    /// Most future-height messages buffered.
    pub max_buffered: usize,
    /// Most verification / body-check requests in flight.
    pub max_inflight: usize,
    /// Most distinct proposals (and distinct VALIDATEs) checked per height.
    pub max_proposals_per_height: usize,
    /// Retransmission period while a height is stalled.
    pub resend_ms: u64,
    /// Final blocks kept to answer catch-up requests.
    pub recent_blocks: usize,
}

impl Default for LbftParams {
    fn default() -> Self {
        LbftParams {
            max_future_heights: 8,
            max_buffered: 512,
            max_inflight: 1024,
            max_proposals_per_height: 4,
            resend_ms: 1_000,
            recent_blocks: 32,
        }
    }
}

/// Counters of what the machine dropped, rejected and did (overload is reported here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Votes from addresses outside the committee.
    pub non_validator: u64,
    /// Messages for heights already final.
    pub old: u64,
    /// Messages beyond the future window or the buffer bound.
    pub future_dropped: u64,
    /// Exact duplicates.
    pub duplicate: u64,
    /// Dropped because `max_inflight` or a per-height bound was reached.
    pub overload: u64,
    /// Signatures that failed verification.
    pub bad_signature: u64,
    /// Blocks or certificates that failed a check (wrong version, chain, turn, ...).
    pub bad_block: u64,
    /// Illicit blocks sealed by the scheduled proposer (they start impeachment).
    pub illicit: u64,
    /// Double votes reported.
    pub evidence: u64,
    /// Impeachments this validator started.
    pub impeachments: u64,
    /// Blocks inserted.
    pub inserted: u64,
}
