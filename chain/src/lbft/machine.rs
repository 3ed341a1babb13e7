//! The LBFT 2.0 validator (and civilian follower) state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crypto_accel::{Hash, Keypair, MessageKind, PublicKey, SigDomain, Signature, VerifyBatch};

use super::blocks::impeach_block;
use super::{Input, LbftParams, Message, Output, Phase, Stats, TimerKind};
use crate::config::ChainConfig;
use crate::election::{term_of, Schedule};
use crate::keycache::KeyCache;
use crate::tx::{Block, Tx};
use crate::types::{
    Address, BlockKind, Certificate, DoubleVote, Header, Vote, VoteKind, MAX_BLOCK_TXS,
    PROTOCOL_VERSION,
};

/// A request waiting for [`Input::Verified`] or [`Input::Checked`].
#[derive(Debug, Clone)]
enum Pending {
    /// Seal (item 0) and transaction signatures of a proposal; `illicit` is set when the
    /// header already broke a rule the proposer is responsible for.
    Seal {
        block: Block,
        illicit: Option<&'static str>,
    },
    /// Body check of a proposal whose signatures verified.
    Body { block: Block },
    /// One vote.
    Vote(Vote),
    /// A VALIDATE: certificate signatures (and the seal of a normal block, last).
    Validate { block: Block, cert: Certificate },
}

/// Vote type: prepare-type (PREPARE, IMPEACH PREPARE) or commit-type (COMMIT, IMPEACH
/// COMMIT). An honest validator sends at most one vote of each type per (height, round).
type Class = u8;
const PREPARE_TYPE: Class = 0;
const COMMIT_TYPE: Class = 1;

fn class_of(kind: VoteKind) -> Class {
    if kind.is_prepare_type() {
        PREPARE_TYPE
    } else {
        COMMIT_TYPE
    }
}

/// Votes are keyed by (round, type, validator, block).
type VoteKey = (u32, Class, Address, Hash);

/// Everything that is reset when a height becomes final.
#[derive(Debug, Clone)]
struct Height {
    /// The current round (0: LBFT 2.0's normal case).
    round: u32,
    /// The phase within the current round.
    phase: Phase,
    /// A round timer expired before the parent's post-state root (hence the impeach
    /// block) was known.
    timeout_due: bool,
    /// The impeach block of this height (needs the parent's post-state root).
    impeach: Option<(Hash, Block)>,
    /// Bodies of validly sealed and checked proposals at this height.
    blocks: BTreeMap<Hash, Block>,
    /// The value this validator sent its prepare-type vote for in the current round.
    prepared: Option<Hash>,
    /// The value of this validator's last commit-type vote and its round (the lock).
    locked: Option<(Hash, u32)>,
    /// Proposals already taken in (checked or in flight).
    proposals_seen: BTreeSet<Hash>,
    /// VALIDATEs in flight, by block hash.
    validates_seen: BTreeSet<Hash>,
    /// Verified votes. An equivocator's conflicting votes are all kept (bounded): each is a
    /// genuine signature and may complete a certificate; the one-vote-per-type-per-round
    /// rule of honest validators is what safety rests on.
    votes: BTreeMap<VoteKey, Vote>,
    /// Votes being verified.
    votes_in_flight: BTreeSet<VoteKey>,
    /// (round, type, validator) triples already reported as double votes.
    evidence: BTreeSet<(u32, Class, Address)>,
    /// This validator's own votes, for retransmission.
    mine: Vec<Vote>,
}

impl Height {
    fn new() -> Self {
        Height {
            round: 0,
            phase: Phase::Idle,
            timeout_due: false,
            impeach: None,
            blocks: BTreeMap::new(),
            prepared: None,
            locked: None,
            proposals_seen: BTreeSet::new(),
            validates_seen: BTreeSet::new(),
            votes: BTreeMap::new(),
            votes_in_flight: BTreeSet::new(),
            evidence: BTreeSet::new(),
            mine: Vec::new(),
        }
    }

    fn impeach_hash(&self) -> Option<Hash> {
        self.impeach.as_ref().map(|(h, _)| *h)
    }

    /// The vote kind of type `class` that counts for `block`: the impeach pair for the
    /// impeach block, PREPARE / COMMIT for any other.
    fn kind_for(&self, class: Class, block: &Hash) -> VoteKind {
        let impeach = self.impeach_hash() == Some(*block);
        match (class, impeach) {
            (PREPARE_TYPE, false) => VoteKind::Prepare,
            (PREPARE_TYPE, true) => VoteKind::ImpeachPrepare,
            (_, false) => VoteKind::Commit,
            (_, true) => VoteKind::ImpeachCommit,
        }
    }

    /// Verified votes of type `class` in `round` whose kind matches their block.
    fn of_class(&self, round: u32, class: Class) -> impl Iterator<Item = &Vote> + '_ {
        let lo = (round, class, Address([0; 32]), Hash([0; 32]));
        let hi = (round, class, Address([0xff; 32]), Hash([0xff; 32]));
        self.votes
            .range(lo..=hi)
            .map(|(_, v)| v)
            .filter(move |v| v.kind == self.kind_for(class, &v.block))
    }

    /// Votes of `validator` of type `class` in `round` (one per distinct block).
    fn of_validator(
        &self,
        round: u32,
        class: Class,
        validator: Address,
    ) -> impl Iterator<Item = &Vote> + '_ {
        let lo = (round, class, validator, Hash([0; 32]));
        let hi = (round, class, validator, Hash([0xff; 32]));
        self.votes.range(lo..=hi).map(|(_, v)| v)
    }

    /// Whether anything at this height refers to `block` (a known proposal, the impeach
    /// block, or someone's vote), so votes for it are always worth keeping.
    fn relevant(&self, block: &Hash) -> bool {
        self.blocks.contains_key(block)
            || self.proposals_seen.contains(block)
            || self.impeach_hash() == Some(*block)
            || self.votes.values().any(|v| v.block == *block)
    }

    /// A value with at least `q` verified `class` votes in `round` (the smallest hash if
    /// several, which only byzantine quorums can produce).
    fn quorum_value(&self, round: u32, class: Class, q: usize) -> Option<Hash> {
        let mut count: BTreeMap<Hash, usize> = BTreeMap::new();
        for v in self.of_class(round, class) {
            *count.entry(v.block).or_insert(0) += 1;
        }
        count.into_iter().find(|(_, c)| *c >= q).map(|(h, _)| h)
    }

    /// The verified `class` votes for `block` in `round`, sorted by validator.
    fn votes_for(&self, round: u32, class: Class, block: &Hash) -> Vec<Vote> {
        self.of_class(round, class)
            .filter(|v| v.block == *block)
            .cloned()
            .collect()
    }

    /// Rounds with at least one verified vote, ascending.
    fn rounds(&self) -> BTreeSet<u32> {
        self.votes.keys().map(|k| k.0).collect()
    }

    /// The P-certificate (2f+1 prepare-type votes for one value in one round) of the
    /// highest round below `below`.
    fn highest_pcert(&self, below: u32, q: usize) -> Option<(u32, Hash)> {
        self.rounds()
            .into_iter()
            .rev()
            .filter(|r| *r < below)
            .find_map(|r| self.quorum_value(r, PREPARE_TYPE, q).map(|x| (r, x)))
    }

    /// The highest round above the current one in which at least `weak` distinct
    /// validators voted.
    fn skip_target(&self, weak: usize) -> Option<u32> {
        let mut voters: BTreeMap<u32, BTreeSet<Address>> = BTreeMap::new();
        for (r, _, a, _) in self.votes.keys() {
            if *r > self.round {
                voters.entry(*r).or_default().insert(*a);
            }
        }
        voters
            .into_iter()
            .rev()
            .find(|(_, s)| s.len() >= weak)
            .map(|(r, _)| r)
    }
}

/// An LBFT 2.0 validator (or, built with [`Validator::follower`], a civilian that only
/// accepts VALIDATEs): a pure state machine driven by [`Validator::step`].
#[derive(Debug)]
pub struct Validator {
    cfg: ChainConfig,
    params: LbftParams,
    me: Option<Keypair>,
    me_addr: Option<Address>,
    validator_keys: BTreeMap<Address, PublicKey>,
    /// Decompressed keys of recent proposers and transaction senders (the same ones seal
    /// and sign block after block; decompressing costs a quarter of a verification).
    keys: KeyCache,
    schedule: Schedule,
    /// The last final header and its hash.
    tip: Header,
    tip_hash: Hash,
    /// Post-state root of `tip`, once the engine has executed it.
    post_root: Option<Hash>,
    now: u64,
    started: bool,
    h: Height,
    next_req: u64,
    inflight: BTreeMap<u64, (u64, Pending)>,
    /// Future-height inputs, replayed when their height comes.
    buffer: Vec<(u64, Input)>,
    /// Transactions in the blocks of `buffer`.
    buffer_txs: usize,
    recent: VecDeque<(Block, Certificate)>,
    /// Local time of the last catch-up answer.
    sync_replied: Option<u64>,
    /// Height at the previous resend tick (unchanged = stalled).
    last_resend_height: u64,
    /// Local time the current height started.
    height_started: u64,
    stats: Stats,
}

impl Validator {
    /// A validator (or a civilian when `me` is not in `cfg.validators`) whose last final
    /// block is `tip` with post-state root `tip_post_root`.
    pub fn new(
        cfg: ChainConfig,
        me: Keypair,
        params: LbftParams,
        tip: Header,
        tip_post_root: Hash,
        schedule: Schedule,
    ) -> Self {
        let addr = Address::of(&me.public());
        let mut v = Self::follower(cfg, params, tip, tip_post_root, schedule);
        if v.validator_keys.contains_key(&addr) {
            v.me = Some(me);
            v.me_addr = Some(addr);
        }
        v
    }

    /// A civilian: follows the chain through VALIDATE messages, never votes.
    pub fn follower(
        cfg: ChainConfig,
        params: LbftParams,
        tip: Header,
        tip_post_root: Hash,
        schedule: Schedule,
    ) -> Self {
        // Keys that do not decode cannot sign anything; such members never count.
        let validator_keys = cfg
            .validators
            .iter()
            .filter_map(|a| a.public_key().ok().map(|pk| (*a, pk)))
            .collect();
        let tip_hash = tip.hash();
        let height = tip.number.saturating_add(1);
        let mut v = Validator {
            cfg,
            params,
            me: None,
            me_addr: None,
            validator_keys,
            keys: KeyCache::default(),
            schedule,
            tip,
            tip_hash,
            post_root: Some(tip_post_root),
            now: 0,
            started: false,
            h: Height::new(),
            next_req: 0,
            inflight: BTreeMap::new(),
            buffer: Vec::new(),
            buffer_txs: 0,
            recent: VecDeque::new(),
            sync_replied: None,
            last_resend_height: height,
            height_started: 0,
            stats: Stats::default(),
        };
        v.build_impeach();
        v
    }

    /// Whether this machine votes (its key is in the validators committee).
    pub fn is_validator(&self) -> bool {
        self.me_addr.is_some()
    }

    /// The height being decided (last final + 1).
    pub fn height(&self) -> u64 {
        self.tip.number.saturating_add(1)
    }

    /// The state in the current round of the current height.
    pub fn phase(&self) -> Phase {
        self.h.phase
    }

    /// The current round of the current height.
    pub fn round(&self) -> u32 {
        self.h.round
    }

    /// The lock: the value of this validator's last commit-type vote at this height and
    /// its round.
    pub fn locked(&self) -> Option<(Hash, u32)> {
        self.h.locked
    }

    /// The last final header.
    pub fn tip(&self) -> &Header {
        &self.tip
    }

    /// The post-state root of the last final block, once executed.
    pub fn post_state_root(&self) -> Option<Hash> {
        self.post_root
    }

    /// The proposer schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// Who proposes `number` (if it is in the current term).
    pub fn proposer_for(&self, number: u64) -> Option<Address> {
        self.schedule.proposer(&self.cfg, number)
    }

    /// The impeach block this node would build for the current height.
    pub fn impeach_candidate(&self) -> Option<&Block> {
        self.h.impeach.as_ref().map(|(_, b)| b)
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Verification / check requests in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Buffered future-height inputs.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Feeds one input; returns the effects to carry out, in order.
    pub fn step(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        self.dispatch(input, &mut out);
        out
    }

    fn dispatch(&mut self, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Tick(now) => self.on_tick(now, out),
            Input::Proposal(b) => self.on_proposal(b, out),
            Input::Vote(v) => self.on_vote(v, out),
            Input::PCertificate(votes) => self.on_pcertificate(votes, out),
            Input::Validate(b, c) => self.on_validate(b, c, out),
            Input::Sync { number } => self.reply_sync(number, out),
            Input::Timeout(kind) => self.on_timeout(kind, out),
            Input::Verified { req, report } => self.on_verified(req, &report, out),
            Input::Checked { req, ok } => self.on_checked(req, ok, out),
            Input::Executed {
                number,
                post_state_root,
            } => self.on_executed(number, post_state_root, out),
            Input::Candidates(c) => self.schedule.set_candidates(c),
        }
    }

    fn quorum(&self) -> usize {
        self.cfg.quorum()
    }

    // ---- time ----

    fn on_tick(&mut self, now: u64, out: &mut Vec<Output>) {
        self.now = self.now.max(now);
        if !self.started {
            self.started = true;
            out.push(Output::SetTimer {
                kind: TimerKind::Resend,
                at_ms: self.now.saturating_add(self.params.resend_ms),
            });
            self.arm_height_timer(out);
        }
    }

    /// LBFT2 abnormal cases 1, 3, 5: round 0's deadline for block, P- and C-certificate.
    /// It counts from the parent's timestamp + period, or from now when the height starts
    /// late (after a stall), so proposers always get a full timeout.
    fn arm_height_timer(&mut self, out: &mut Vec<Output>) {
        if !self.is_validator() {
            return;
        }
        let start = self
            .tip
            .timestamp_ms
            .saturating_add(self.cfg.period_ms)
            .max(self.now);
        out.push(Output::SetTimer {
            kind: TimerKind::Round {
                number: self.height(),
                round: 0,
            },
            at_ms: start.saturating_add(self.cfg.impeach_timeout_ms),
        });
    }

    /// The deadline of round `round` ≥ 1, from now: timeout · (1 + round), so that rounds
    /// eventually last long enough for any (finite) message delay after a partition heals.
    fn arm_round_timer(&mut self, round: u32, out: &mut Vec<Output>) {
        let len = self
            .cfg
            .impeach_timeout_ms
            .saturating_mul(u64::from(round).saturating_add(1));
        out.push(Output::SetTimer {
            kind: TimerKind::Round {
                number: self.height(),
                round,
            },
            at_ms: self.now.saturating_add(len),
        });
    }

    fn on_timeout(&mut self, kind: TimerKind, out: &mut Vec<Output>) {
        match kind {
            TimerKind::Round { number, round }
                if number == self.height() && round == self.h.round =>
            {
                self.round_timeout(out);
            }
            TimerKind::Round { .. } => {}
            TimerKind::Resend => {
                out.push(Output::SetTimer {
                    kind: TimerKind::Resend,
                    at_ms: self.now.saturating_add(self.params.resend_ms),
                });
                let height = self.height();
                if height != self.last_resend_height {
                    self.last_resend_height = height;
                    return;
                }
                // Stalled: the height is older than one resend period past the time its
                // block was due.
                let due = self
                    .tip
                    .timestamp_ms
                    .saturating_add(self.cfg.period_ms)
                    .max(self.height_started);
                if self.now >= due.saturating_add(self.params.resend_ms) {
                    self.resend(due, out);
                }
            }
        }
    }

    /// The current round's timer expired without a final block.
    fn round_timeout(&mut self, out: &mut Vec<Output>) {
        if !self.is_validator() {
            return;
        }
        let Some(i) = self.h.impeach_hash() else {
            self.h.timeout_due = true;
            return;
        };
        if self.h.round == 0 && self.h.phase == Phase::Idle {
            // LBFT2 abnormal case 1: no valid block in time → IMPEACH PREPARE in round 0
            // (this validator prepared nothing in it), and give round 0 one more timeout.
            self.prepare(i, out);
            let at_ms = self.now.saturating_add(self.cfg.impeach_timeout_ms);
            out.push(Output::SetTimer {
                kind: TimerKind::Round {
                    number: self.height(),
                    round: 0,
                },
                at_ms,
            });
            self.advance(out);
            return;
        }
        // LBFT2 abnormal cases 3/5 (no P- or C-certificate in time): next round.
        let next = self.h.round.saturating_add(1);
        self.enter_round(next, out);
        self.advance(out);
    }

    /// Moves to round `round` (above the current one) and sends its prepare-type vote: for
    /// the locked value, unless a P-certificate for another value from a round in
    /// [locked round, round) is known; unlocked, for the value of the highest P-certificate
    /// known, else for the impeach block (timeouts favour impeachment, as in LBFT 2.0). The
    /// P-certificate that justifies the choice is broadcast so peers can adopt it.
    fn enter_round(&mut self, round: u32, out: &mut Vec<Output>) {
        let Some(i) = self.h.impeach_hash() else {
            self.h.timeout_due = true;
            return;
        };
        if round <= self.h.round {
            return;
        }
        self.h.round = round;
        self.h.phase = Phase::Idle;
        self.h.prepared = None;
        self.arm_round_timer(round, out);
        let q = self.quorum();
        let best = self.h.highest_pcert(round, q);
        if let Some((vr, x)) = best {
            let votes = self.h.votes_for(vr, PREPARE_TYPE, &x);
            out.push(Output::Broadcast(Message::PCertificate(votes)));
        }
        let value = match (self.h.locked, best) {
            (Some((x, lr)), Some((vr, y))) if y != x && vr >= lr => y,
            (Some((x, _)), _) => x,
            (None, Some((_, y))) => y,
            (None, None) => i,
        };
        self.prepare(value, out);
    }

    /// Sends this round's prepare-type vote for `value` (at most one per round).
    fn prepare(&mut self, value: Hash, out: &mut Vec<Output>) {
        if self.h.prepared.is_some() {
            return;
        }
        let kind = self.h.kind_for(PREPARE_TYPE, &value);
        self.h.prepared = Some(value);
        self.h.phase = if kind == VoteKind::ImpeachPrepare {
            self.stats.impeachments += 1;
            Phase::ImpeachPrepare
        } else {
            Phase::Prepare
        };
        self.cast(kind, value, out);
    }

    /// Retransmission of a stalled height: a sync request, own votes, the body of the
    /// locked or prepared block, and the highest P-certificate held (so peers that missed
    /// it can commit or unlock).
    fn resend(&mut self, due: u64, out: &mut Vec<Output>) {
        // Past the impeach timeout without a final block we may simply be behind.
        if self.now >= due.saturating_add(self.cfg.impeach_timeout_ms) {
            out.push(Output::Broadcast(Message::Sync {
                number: self.height(),
            }));
        }
        if !self.is_validator() {
            return;
        }
        let mut bodies: BTreeSet<Hash> = BTreeSet::new();
        bodies.extend(self.h.locked.map(|(x, _)| x));
        bodies.extend(self.h.prepared);
        for b in bodies {
            if let Some(b) = self.h.blocks.get(&b) {
                out.push(Output::Broadcast(Message::Proposal(b.clone())));
            }
        }
        let q = self.quorum();
        if let Some((vr, x)) = self.h.highest_pcert(self.h.round.saturating_add(1), q) {
            let votes = self.h.votes_for(vr, PREPARE_TYPE, &x);
            out.push(Output::Broadcast(Message::PCertificate(votes)));
        }
        for v in &self.h.mine {
            out.push(Output::Broadcast(Message::Vote(v.clone())));
        }
    }

    // ---- buffering ----

    /// Keeps a future-height input: within the window, at most `max_buffered` inputs, one
    /// copy of each block (as a proposal and as a VALIDATE), and at most `max_buffered_txs`
    /// transactions in all.
    fn buffer(&mut self, number: u64, input: Input) {
        let txs = buffered_txs(&input);
        // The same proposal or VALIDATE again (relays repeat them): kept once. Only an
        // exact copy counts, so a forged body or certificate under a real header cannot push
        // the real one out.
        let copy = |kept: &Input| match (kept, &input) {
            (Input::Proposal(a), Input::Proposal(b)) => a == b,
            (Input::Validate(a, ca), Input::Validate(b, cb)) => a == b && ca == cb,
            _ => false,
        };
        if txs > 0
            && self
                .buffer
                .iter()
                .any(|(n, kept)| *n == number && copy(kept))
        {
            self.stats.duplicate += 1;
            return;
        }
        if number > self.height().saturating_add(self.params.max_future_heights)
            || self.buffer.len() >= self.params.max_buffered
            || self.buffer_txs.saturating_add(txs) > self.params.max_buffered_txs
        {
            self.stats.future_dropped += 1;
            return;
        }
        self.buffer_txs += txs;
        self.buffer.push((number, input));
    }

    fn replay_buffer(&mut self, out: &mut Vec<Output>) {
        let height = self.height();
        let all = std::mem::take(&mut self.buffer);
        self.buffer_txs = 0;
        let mut now_due = Vec::new();
        for (n, i) in all {
            if n == height {
                now_due.push(i);
            } else if n > height {
                self.buffer_txs += buffered_txs(&i);
                self.buffer.push((n, i));
            }
        }
        for i in now_due {
            self.dispatch(i, out);
        }
    }

    // ---- verification plumbing ----

    fn request(
        &mut self,
        pending: Pending,
        batch: VerifyBatch,
        ids: Vec<Hash>,
        out: &mut Vec<Output>,
    ) {
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        self.inflight.insert(req, (self.height(), pending));
        out.push(Output::Verify { req, batch, ids });
    }

    fn overloaded(&mut self) -> bool {
        if self.inflight.len() >= self.params.max_inflight {
            self.stats.overload += 1;
            return true;
        }
        false
    }

    fn on_verified(
        &mut self,
        req: u64,
        report: &crypto_accel::VerifyReport,
        out: &mut Vec<Output>,
    ) {
        let Some((number, pending)) = self.inflight.remove(&req) else {
            return;
        };
        if number != self.height() {
            self.stats.old += 1;
            return;
        }
        match pending {
            Pending::Seal { block, illicit } => self.on_seal_checked(block, illicit, report, out),
            Pending::Vote(v) => self.on_vote_checked(v, report.all_valid(), out),
            Pending::Validate { block, cert } => {
                self.h.validates_seen.remove(&block.hash());
                if report.all_valid() && report.len > 0 {
                    // LBFT2 normal case step 6 / impeachment step 5: a valid (IMPEACH)
                    // VALIDATE → insert and relay once.
                    self.insert(block, cert, out);
                } else {
                    self.stats.bad_signature += 1;
                }
            }
            Pending::Body { .. } => {}
        }
    }

    // ---- proposals ----

    fn on_proposal(&mut self, block: Block, out: &mut Vec<Output>) {
        let number = block.header.number;
        let height = self.height();
        if number < height {
            self.stats.old += 1;
            return;
        }
        if !self.is_validator() {
            return;
        }
        if number > height || self.post_root.is_none() {
            self.buffer(number, Input::Proposal(block));
            return;
        }
        let hash = block.hash();
        if self.h.proposals_seen.contains(&hash) {
            self.stats.duplicate += 1;
            return;
        }
        if self.h.proposals_seen.len() >= self.params.max_proposals_per_height || self.overloaded()
        {
            self.stats.overload += 1;
            return;
        }
        let hd = &block.header;
        // Checks a third party can fail: drop without blaming the proposer.
        // LBFT2 normal case step 2: version, chain, parent, turn.
        let expected = self.schedule.proposer(&self.cfg, number);
        let (Some(expected), Some(seal)) = (expected, hd.seal) else {
            self.stats.bad_block += 1;
            return;
        };
        if hd.version != PROTOCOL_VERSION
            || hd.chain_id != self.cfg.chain_id
            || hd.kind != BlockKind::Normal
            || hd.parent != self.tip_hash
            || hd.proposer != expected
        {
            self.stats.bad_block += 1;
            return;
        }
        let Ok(pk) = self.keys.get(&expected) else {
            self.stats.bad_block += 1;
            return;
        };
        self.h.proposals_seen.insert(hash);
        let illicit = self.illicit_reason(&block);
        let mut batch = VerifyBatch::with_capacity(1 + block.txs.len(), 64);
        let mut ids = Vec::with_capacity(1 + block.txs.len());
        push_item(
            &mut batch,
            &mut ids,
            &pk,
            SigDomain::new(self.cfg.chain_id, MessageKind::BLOCK_SEAL),
            hash.as_bytes(),
            &seal,
        );
        let mut illicit = illicit;
        if illicit.is_none() {
            for tx in &block.txs {
                if let Tx::Signed(t) = tx {
                    let before = batch.len();
                    if !t.push_verify_cached(self.cfg.chain_id, &mut batch, &mut self.keys) {
                        illicit = Some("transaction sender is not a valid key");
                        break;
                    }
                    ids.push(item_id_from_batch(&batch, before, &t.from, &t.sig));
                }
            }
        }
        self.request(Pending::Seal { block, illicit }, batch, ids, out);
    }

    /// Header rules the proposer is responsible for (LBFT2 normal case step 2: timestamp
    /// etc.); `None` when the header is fine.
    fn illicit_reason(&self, block: &Block) -> Option<&'static str> {
        let hd = &block.header;
        let skew = self.cfg.max_clock_skew_ms;
        let earliest = self
            .tip
            .timestamp_ms
            .saturating_add(self.cfg.period_ms)
            .saturating_sub(skew);
        if hd.term != term_of(&self.cfg, hd.number) {
            return Some("wrong term");
        }
        if hd.timestamp_ms < earliest {
            return Some("timestamp earlier than parent + period − skew");
        }
        if hd.timestamp_ms > self.now.saturating_add(skew) {
            return Some("timestamp in the future");
        }
        if Some(hd.state_root) != self.post_root {
            return Some("state root is not the parent's post-state root");
        }
        if block.txs.len() > MAX_BLOCK_TXS {
            return Some("too many transactions");
        }
        if block.txs.iter().any(|t| matches!(t, Tx::Penalty { .. })) {
            return Some("penalty transaction in a normal block");
        }
        if hd.tx_root != Block::compute_tx_root(&block.txs) {
            return Some("transactions root mismatch");
        }
        None
    }

    fn on_seal_checked(
        &mut self,
        block: Block,
        illicit: Option<&'static str>,
        report: &crypto_accel::VerifyReport,
        out: &mut Vec<Output>,
    ) {
        if !report.is_valid(0) {
            // Not the proposer's seal: a forgery, not evidence against the proposer. Forget
            // it, so forgeries cannot use up the per-height proposal slots.
            self.h.proposals_seen.remove(&block.hash());
            self.stats.bad_signature += 1;
            return;
        }
        if illicit.is_some() || !report.all_valid() {
            self.illicit_block(out);
            return;
        }
        let req = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        self.inflight.insert(
            req,
            (
                self.height(),
                Pending::Body {
                    block: block.clone(),
                },
            ),
        );
        out.push(Output::Check { req, block });
    }

    fn on_checked(&mut self, req: u64, ok: bool, out: &mut Vec<Output>) {
        let Some((number, Pending::Body { block })) = self.inflight.remove(&req) else {
            return;
        };
        if number != self.height() {
            self.stats.old += 1;
            return;
        }
        if !ok {
            self.illicit_block(out);
            return;
        }
        let hash = block.hash();
        self.h.blocks.insert(hash, block);
        if self.h.round == 0 && self.h.phase == Phase::Idle {
            // LBFT2 normal case step 3: the block checks out → PREPARE (round 0 only).
            self.prepare(hash, out);
        }
        self.advance(out);
    }

    /// LBFT2 abnormal case 2: the scheduled proposer sealed an illicit block → IMPEACH
    /// PREPARE in round 0 (only before preparing another block; afterwards the timer
    /// decides).
    fn illicit_block(&mut self, out: &mut Vec<Output>) {
        self.stats.illicit += 1;
        if self.is_validator() && self.h.round == 0 && self.h.phase == Phase::Idle {
            if let Some(i) = self.h.impeach_hash() {
                self.prepare(i, out);
                self.advance(out);
            }
        }
    }

    // ---- votes ----

    fn cast(&mut self, kind: VoteKind, block: Hash, out: &mut Vec<Output>) {
        let (Some(kp), Some(addr)) = (&self.me, self.me_addr) else {
            return;
        };
        let round = self.h.round;
        let v = Vote::sign(kp, self.cfg.chain_id, kind, self.height(), round, block);
        self.h
            .votes
            .insert((round, class_of(kind), addr, block), v.clone());
        self.h.mine.push(v.clone());
        out.push(Output::Broadcast(Message::Vote(v)));
    }

    fn on_vote(&mut self, v: Vote, out: &mut Vec<Output>) {
        if !self.is_validator() {
            return;
        }
        let Some(pk) = self.validator_keys.get(&v.validator).copied() else {
            self.stats.non_validator += 1;
            return;
        };
        let height = self.height();
        if v.number < height {
            self.stats.old += 1;
            // A lagging validator: help it catch up (rate limited).
            self.reply_sync(v.number, out);
            return;
        }
        if v.number > height || self.post_root.is_none() {
            self.buffer(v.number, Input::Vote(v));
            return;
        }
        if Some(v.validator) == self.me_addr {
            self.stats.duplicate += 1;
            return;
        }
        if v.round > self.h.round.saturating_add(self.params.max_future_rounds) {
            self.stats.future_dropped += 1;
            return;
        }
        let class = class_of(v.kind);
        let key = (v.round, class, v.validator, v.block);
        if self.h.votes.contains_key(&key) || self.h.votes_in_flight.contains(&key) {
            self.stats.duplicate += 1;
            return;
        }
        // An equivocator's votes for blocks nobody else mentions are kept up to two per
        // round and type.
        if self.h.of_validator(v.round, class, v.validator).count() >= 2
            && !self.h.relevant(&v.block)
        {
            self.stats.overload += 1;
            return;
        }
        let in_flight_same = self
            .h
            .votes_in_flight
            .iter()
            .filter(|(r, c, a, _)| *r == v.round && *c == class && *a == v.validator)
            .count();
        if in_flight_same >= 2 || self.overloaded() {
            self.stats.overload += 1;
            return;
        }
        self.h.votes_in_flight.insert(key);
        let mut batch = VerifyBatch::with_capacity(1, 64);
        let mut ids = Vec::with_capacity(1);
        push_item(
            &mut batch,
            &mut ids,
            &pk,
            v.domain(self.cfg.chain_id),
            &v.message(),
            &v.sig,
        );
        self.request(Pending::Vote(v), batch, ids, out);
    }

    /// A P-certificate relayed by a peer entering a new round: its prepare-type votes are
    /// taken in one by one (each is verified; duplicates are dropped).
    fn on_pcertificate(&mut self, votes: Vec<Vote>, out: &mut Vec<Output>) {
        if !self.is_validator() {
            return;
        }
        if votes.len() > self.validator_keys.len() {
            self.stats.bad_block += 1;
            return;
        }
        for v in votes {
            if v.kind.is_prepare_type() {
                self.on_vote(v, out);
            }
        }
    }

    fn on_vote_checked(&mut self, v: Vote, ok: bool, out: &mut Vec<Output>) {
        let class = class_of(v.kind);
        let key = (v.round, class, v.validator, v.block);
        self.h.votes_in_flight.remove(&key);
        if !ok {
            self.stats.bad_signature += 1;
            return;
        }
        if self.h.votes.contains_key(&key) {
            self.stats.duplicate += 1;
            return;
        }
        let prev = self
            .h
            .of_validator(v.round, class, v.validator)
            .find(|p| p.block != v.block)
            .cloned();
        if let Some(prev) = prev {
            // Two conflicting signed votes of one type at one height and round: evidence
            // (once per validator, round and type).
            if self.h.evidence.insert((v.round, class, v.validator)) {
                self.stats.evidence += 1;
                out.push(Output::Evidence(DoubleVote {
                    a: prev,
                    b: v.clone(),
                }));
            }
        }
        self.h.votes.insert(key, v);
        self.advance(out);
    }

    /// Applies every quorum rule that now holds.
    fn advance(&mut self, out: &mut Vec<Output>) {
        let q = self.quorum();
        if self.is_validator() {
            // Round skip: f+1 validators (one honest at least) vote in a later round → join
            // the highest such round, so that drifted round timers cannot keep honest
            // validators apart.
            let weak = self
                .validator_keys
                .len()
                .saturating_sub(q)
                .saturating_add(1);
            if let Some(r) = self.h.skip_target(weak) {
                self.enter_round(r, out);
            }
            // LBFT2 normal case step 4 / impeachment step 3: a P-certificate (2f+1
            // prepare-type votes for one value) in the current round → the commit-type vote
            // for it in this round (once) and lock on it.
            let round = self.h.round;
            if !matches!(self.h.phase, Phase::Commit | Phase::ImpeachCommit) {
                if let Some(x) = self.h.quorum_value(round, PREPARE_TYPE, q) {
                    let kind = self.h.kind_for(COMMIT_TYPE, &x);
                    self.h.phase = if kind == VoteKind::ImpeachCommit {
                        Phase::ImpeachCommit
                    } else {
                        Phase::Commit
                    };
                    self.h.locked = Some((x, round));
                    self.cast(kind, x, out);
                }
            }
        }
        // LBFT2 normal case step 5 / impeachment step 4: 2f+1 commit-type votes for one
        // value in one round (a C-certificate) → insert + (IMPEACH) VALIDATE.
        for r in self.h.rounds() {
            let Some(x) = self.h.quorum_value(r, COMMIT_TYPE, q) else {
                continue;
            };
            let block = match &self.h.impeach {
                Some((i, b)) if *i == x => Some(b.clone()),
                _ => self.h.blocks.get(&x).cloned(),
            };
            if let Some(block) = block {
                let cert = self.certificate(r, x);
                self.insert(block, cert, out);
                return;
            }
        }
    }

    fn certificate(&self, round: u32, block: Hash) -> Certificate {
        let sigs = self
            .h
            .votes_for(round, COMMIT_TYPE, &block)
            .into_iter()
            .take(self.quorum())
            .map(|v| (v.validator, v.sig))
            .collect();
        Certificate {
            number: self.height(),
            round,
            block,
            kind: self.h.kind_for(COMMIT_TYPE, &block),
            sigs,
        }
    }

    // ---- impeachment ----

    fn build_impeach(&mut self) {
        let number = self.height();
        self.h.impeach = match (self.post_root, self.schedule.proposer(&self.cfg, number)) {
            (Some(root), Some(p)) => {
                let b = impeach_block(&self.cfg, &self.tip, root, p);
                Some((b.hash(), b))
            }
            _ => None,
        };
    }

    // ---- VALIDATE and catch-up ----

    fn on_validate(&mut self, block: Block, cert: Certificate, out: &mut Vec<Output>) {
        let number = block.header.number;
        let height = self.height();
        if number < height {
            self.stats.old += 1;
            return;
        }
        if number > height || self.post_root.is_none() {
            self.buffer(number, Input::Validate(block, cert));
            return;
        }
        let hash = block.hash();
        if self.h.validates_seen.contains(&hash) {
            self.stats.duplicate += 1;
            return;
        }
        if self.h.validates_seen.len() >= self.params.max_proposals_per_height || self.overloaded()
        {
            self.stats.overload += 1;
            return;
        }
        let hd = &block.header;
        let sorted = cert.sigs.windows(2).all(|w| w[0].0 < w[1].0);
        let members = cert
            .sigs
            .iter()
            .all(|(a, _)| self.validator_keys.contains_key(a));
        let kind_ok = matches!(
            (hd.kind, cert.kind),
            (BlockKind::Normal, VoteKind::Commit) | (BlockKind::Impeach, VoteKind::ImpeachCommit)
        );
        let body_ok = match hd.kind {
            BlockKind::Normal => {
                hd.seal.is_some()
                    && Some(hd.proposer) == self.schedule.proposer(&self.cfg, number)
                    && hd.tx_root == Block::compute_tx_root(&block.txs)
            }
            BlockKind::Impeach => self.h.impeach.as_ref().map(|(h, _)| *h) == Some(hash),
        };
        if hd.version != PROTOCOL_VERSION
            || hd.chain_id != self.cfg.chain_id
            || hd.parent != self.tip_hash
            || cert.number != number
            || cert.block != hash
            || !sorted
            || !members
            || cert.sigs.len() < self.quorum()
            || !kind_ok
            || !body_ok
        {
            self.stats.bad_block += 1;
            return;
        }
        let mut batch = VerifyBatch::with_capacity(cert.sigs.len() + 1, 64 * cert.sigs.len());
        let mut ids = Vec::with_capacity(cert.sigs.len() + 1);
        let d = SigDomain::new(self.cfg.chain_id, cert.kind.message_kind());
        let msg = Vote::signed_message(number, cert.round, &hash);
        for (a, s) in &cert.sigs {
            if let Some(pk) = self.validator_keys.get(a) {
                push_item(&mut batch, &mut ids, pk, d, &msg, s);
            }
        }
        if let (BlockKind::Normal, Some(seal)) = (hd.kind, hd.seal) {
            let Ok(pk) = self.keys.get(&hd.proposer) else {
                self.stats.bad_block += 1;
                return;
            };
            let sd = SigDomain::new(self.cfg.chain_id, MessageKind::BLOCK_SEAL);
            push_item(&mut batch, &mut ids, &pk, sd, hash.as_bytes(), &seal);
        }
        self.h.validates_seen.insert(hash);
        self.request(Pending::Validate { block, cert }, batch, ids, out);
    }

    /// A peer is at height `number`: send the VALIDATEs it lacks from the recent blocks,
    /// at most once per resend period (replayed old messages must not amplify).
    fn reply_sync(&mut self, number: u64, out: &mut Vec<Output>) {
        if number >= self.height() {
            return;
        }
        if let Some(t) = self.sync_replied {
            if self.now < t.saturating_add(self.params.resend_ms) {
                return;
            }
        }
        self.sync_replied = Some(self.now);
        let last = number.saturating_add(self.params.max_future_heights);
        for (b, c) in &self.recent {
            let n = b.header.number;
            if n >= number && n <= last {
                out.push(Output::Broadcast(Message::Validate(b.clone(), c.clone())));
            }
        }
    }

    // ---- finality ----

    /// Inserts a final block, announces it (VALIDATE, once) and moves to the next height.
    fn insert(&mut self, block: Block, cert: Certificate, out: &mut Vec<Output>) {
        let hash = block.hash();
        out.push(Output::Insert(block.clone(), cert.clone()));
        out.push(Output::Broadcast(Message::Validate(
            block.clone(),
            cert.clone(),
        )));
        self.schedule.on_final(&self.cfg, block.header.number, hash);
        self.tip = block.header.clone();
        self.tip_hash = hash;
        self.recent.push_back((block, cert));
        while self.recent.len() > self.params.recent_blocks {
            self.recent.pop_front();
        }
        self.post_root = None;
        self.h = Height::new();
        self.height_started = self.now;
        self.stats.inserted += 1;
        self.inflight.retain(|_, (n, _)| *n > self.tip.number);
        self.arm_height_timer(out);
    }

    fn on_executed(&mut self, number: u64, root: Hash, out: &mut Vec<Output>) {
        if number != self.tip.number || self.post_root.is_some() {
            return;
        }
        self.post_root = Some(root);
        self.build_impeach();
        if self.h.timeout_due {
            self.h.timeout_due = false;
            self.round_timeout(out);
        }
        self.replay_buffer(out);
    }
}

/// Digest of one verification item (key, signature, domain-prefixed signed bytes): the
/// `ids` of [`Output::Verify`], so an engine can cache verdicts.
pub fn verify_item_id(pk: &[u8; 32], sig: &Signature, signed: &[u8]) -> Hash {
    Hash::of_parts(&[b"cpchain verify item v1", pk, &sig.0, signed])
}

fn push_item(
    batch: &mut VerifyBatch,
    ids: &mut Vec<Hash>,
    pk: &PublicKey,
    domain: SigDomain,
    msg: &[u8],
    sig: &Signature,
) {
    batch.push(pk, domain, msg, sig);
    let i = batch.len() - 1;
    ids.push(verify_item_id(pk.as_bytes(), sig, batch.message(i)));
}

/// Transactions an input carries (what a buffered input costs in memory, roughly).
fn buffered_txs(input: &Input) -> usize {
    match input {
        Input::Proposal(b) | Input::Validate(b, _) => b.txs.len(),
        _ => 0,
    }
}

fn item_id_from_batch(batch: &VerifyBatch, index: usize, from: &Address, sig: &Signature) -> Hash {
    verify_item_id(&from.0, sig, batch.message(index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lbft::blocks::genesis_header;
    use crate::types::VoteKind;

    /// A block at `number` of `txs` penalty transactions, made distinct by `salt`: what any
    /// peer can send, unsigned and unchecked, for a height the node has not reached.
    fn junk(number: u64, txs: usize, salt: u8) -> (Block, Certificate) {
        let cfg = ChainConfig::mainnet_like(1, vec![], vec![], Address::default());
        let mut header = genesis_header(&cfg, 0);
        header.number = number;
        header.parent = Hash([salt; 32]);
        let txs = (0..txs as u64)
            .map(|n| Tx::Penalty {
                proposer: Address([salt; 32]),
                number: n,
            })
            .collect();
        let cert = Certificate {
            number,
            round: 0,
            block: header.hash(),
            kind: VoteKind::Commit,
            sigs: vec![],
        };
        (Block { header, txs }, cert)
    }

    #[test]
    fn future_blocks_are_buffered_within_a_transaction_budget_once_each() {
        // A validator: it buffers future proposals as well as VALIDATEs.
        let me = Keypair::from_seed([5; 32]);
        let cfg = ChainConfig::mainnet_like(
            1,
            vec![Address::of(&me.public())],
            vec![],
            Address::default(),
        );
        let params = LbftParams {
            max_buffered_txs: 100,
            ..LbftParams::default()
        };
        let schedule = Schedule::bootstrap(&cfg, vec![]);
        let tip = genesis_header(&cfg, 0);
        let mut v = Validator::new(cfg, me, params, tip, Hash::ZERO, schedule);
        // Heights 2..=9 are in the future window of a node at height 1.
        let mut fed_txs = 0;
        for number in 2..=9 {
            for salt in 0..4 {
                let (b, c) = junk(number, 30, salt);
                fed_txs += b.txs.len();
                v.step(Input::Validate(b.clone(), c.clone()));
                // An exact copy (a relay) is not kept twice.
                v.step(Input::Validate(b.clone(), c));
                v.step(Input::Proposal(b.clone()));
                v.step(Input::Proposal(b));
            }
        }
        let kept: usize = v.buffer.iter().map(|(_, i)| buffered_txs(i)).sum();
        assert_eq!(kept, v.buffer_txs);
        assert!(kept <= 100, "{kept} transactions buffered of {fed_txs} fed");
        assert_eq!(kept, 90, "the budget fills with whole blocks");
        // Kept: the first VALIDATE and proposal of height 2, then the next VALIDATE; their
        // copies counted as duplicates, everything after them dropped.
        assert_eq!(v.stats().duplicate, 3, "{:?}", v.stats());
        assert!(v.stats().future_dropped > 0);
        assert_eq!(v.buffered(), 3);
        assert!(v
            .buffer
            .iter()
            .any(|(_, i)| matches!(i, Input::Proposal(_))));
    }
}
