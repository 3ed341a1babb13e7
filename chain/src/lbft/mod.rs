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
//! # Rounds and locks
//!
//! A height runs in rounds (Tendermint-style locking on LBFT 2.0's phases; every vote and
//! certificate carries its round and signs (height, round, block)). Round 0 is LBFT 2.0's
//! normal case: PREPARE the proposer's valid block, or IMPEACH PREPARE on an illicit block
//! or when the round-0 timer expires before anything was prepared. Per (height, round) an
//! honest validator sends at most one prepare-type vote (PREPARE or IMPEACH PREPARE) and
//! at most one commit-type vote (COMMIT or IMPEACH COMMIT). A P-certificate (2f+1
//! prepare-type votes for one value in the current round) → the commit-type vote for it in
//! that round, and `locked = (value, round)`. 2f+1 commit-type votes for one value in one
//! round → final (insert + VALIDATE with a certificate carrying the round). A round that
//! ends on its timer (timeout · (1 + round)) leads to the next, whose one prepare-type
//! vote is for the locked value, unless a P-certificate for another value from a round
//! `vr` with locked round ≤ `vr` < new round is known; unlocked, for the value of the
//! highest P-certificate known, else for the impeach block. Entering a round broadcasts
//! the highest P-certificate held ([`Message::PCertificate`]) so peers can unlock; f+1
//! validators voting in a later round pull a validator into it.
//!
//! # Safety
//!
//! 1. One prepare-type vote per honest validator per round, and two sets of 2f+1 share
//!    f+1 validators, one of them honest: at most one value has a P-certificate per round.
//!    Commit-type votes need a P-certificate of their round, so a round's C-certificates
//!    are all for that value too.
//! 2. Let X have a C-certificate in round r; its signers include a set S of ≥ f+1 honest
//!    validators that committed X in round r, hence locked on X with lock round ≥ r, and
//!    only in round r (commits happen in the current round only, so before any prepare
//!    of theirs in a round > r). Claim: no value Y ≠ X has a P-certificate in any round
//!    r' ≥ r. Induction on r': r' = r by rule 1. For r' > r assume it for [r, r'). A
//!    P-certificate for Y in r' has ≥ f+1 honest signers, so (2f+1 honest in all) one of
//!    them is in S. That validator's prepare in r' was made on entering r' with lock
//!    (Z, lr), r ≤ lr < r'; Z had a P-certificate in lr, so Z = X by the hypothesis; it
//!    prepares Y ≠ X only holding a P-certificate for Y from a round in [lr, r'), which the
//!    hypothesis excludes. Contradiction.
//! 3. So every C-certificate from a round ≥ r is for X, and one from a round r'' < r for
//!    Y ≠ X would by the same claim (applied at r'') exclude X's P-certificate in r.
//!    Two different blocks are never final at one height. Faulty proposers cannot add a
//!    value: a normal block needs the scheduled proposer's seal, and the impeach block is
//!    a function of the (final, hence common) parent.
//!
//! Liveness: after the network heals, round timers grow until a round is long enough for
//! every honest validator to hear the highest P-certificate and each other's votes; locked
//! validators then re-prepare their value, unlocked ones adopt it (or all impeach when no
//! P-certificate exists), and 2f+1 honest validators agree in one round. The single-round
//! protocol's "split stall" (honest commit votes divided between the proposed and the
//! impeach block) cannot persist: those votes belong to one round, and the next round
//! re-votes. An equivocator's conflicting votes are all kept (bounded) and reported as
//! [`crate::DoubleVote`] (same type, height and round, different blocks).
//!
//! Bounded everywhere ([`LbftParams`]): future-height messages within
//! `max_future_heights`, votes within `max_future_rounds`, at most `max_buffered` of them
//! holding at most `max_buffered_txs` transactions (one copy of each block), `max_inflight` verification
//! requests, `max_proposals_per_height` distinct proposals checked per height.

mod blocks;
mod machine;
mod wire;

use crypto_accel::{Hash, VerifyBatch, VerifyReport};

use crate::tx::Block;
use crate::types::{Certificate, DoubleVote, Vote};

pub use blocks::{genesis_header, impeach_block, propose};
pub use machine::{verify_item_id, Validator};
pub use wire::MAX_MESSAGE_BYTES;

/// The five states of an LBFT 2.0 validator in the current round of the current height.
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
    /// Round `round` of height `number` ends: in round 0 with nothing prepared (no block
    /// in time, abnormal case 1) it starts impeachment; otherwise (no P- or C-certificate
    /// in time, abnormal cases 3 and 5) the next round starts.
    Round {
        /// The height the timer guards.
        number: u64,
        /// The round it guards.
        round: u32,
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
    /// A P-certificate: 2f+1 prepare-type votes for one value in one round, relayed when
    /// entering a round so peers learn the highest one (it justifies switching a lock).
    PCertificate(Vec<Vote>),
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
    /// A relayed P-certificate (its votes are verified one by one).
    PCertificate(Vec<Vote>),
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
            Message::PCertificate(v) => Input::PCertificate(v),
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
    /// A validator signed two conflicting votes of one type at one height and round.
    Evidence(DoubleVote),
}

/// Limits of one validator machine (every buffer is bounded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbftParams {
    /// Messages for heights above current + this are dropped.
    pub max_future_heights: u64,
    /// Votes for rounds above the current round + this are dropped.
    pub max_future_rounds: u32,
    /// Most future-height messages buffered.
    pub max_buffered: usize,
    /// Most transactions in all the future-height blocks buffered (a decoded transaction
    /// takes a few hundred bytes, so 131,072 bound the buffer near 40 MB): without it, 512
    /// unverified blocks of [`crate::MAX_BLOCK_TXS`] each from any peer would take gigabytes.
    /// A node that drops a real future block this way catches up by sync instead.
    pub max_buffered_txs: usize,
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
            max_future_rounds: 8,
            max_buffered: 512,
            max_buffered_txs: 2 * crate::MAX_BLOCK_TXS,
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
