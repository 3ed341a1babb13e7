//! The pure placement, audit and repair planner.
//!
//! [`place`] puts each shard of a block on the live storage node closest by XOR distance to
//! the shard's key, never two shards of a block on one node, and on distinct IP subnets while
//! there are enough of them. [`Planner`] keeps the shard map of every tracked data item and,
//! driven by [`Planner::poll`] with the current time, emits [`Action`]s: audits, repairs and
//! reports of blocks that can no longer be rebuilt. The node carries them out and reports back
//! with `on_audit`, `on_repaired`, `on_repair_failed` and `on_node_down`. Nothing here reads a
//! clock or touches the network; randomness comes from the seed.
//!
//! # Audits
//!
//! Every `audit_period_ms` a round challenges each live holder on `audits_per_holder` (`s`)
//! of its shards, drawn uniformly without replacement, each with a fresh random nonce (see
//! [`crate::proof`]). A failed audit takes the shard away from the holder at once, and makes
//! the holder a suspect: the next round challenges it on *every* shard it holds.
//!
//! A holder that corrupts a fraction `f` of its shards escapes one audit with probability at
//! most `1 - f`, so it is caught within `R` rounds with probability at least
//! `1 - (1 - f)^(s·R)` ([`detection_probability`]; drawing without replacement only helps).
//! With `s = 4`: `f = 10%` is caught in the first round with probability 34%, within 6 rounds
//! 92%, within 11 rounds 99% ([`rounds_to_detect`]); `f = 1%` needs 115 rounds for 99%. A
//! holder that corrupts everything fails its first audit: it is caught in round 1, and the
//! suspect sweep of round 2 takes every remaining shard from it. Once caught, every
//! corrupted shard is found by the sweep of the following round.
//!
//! An unreachable holder gets at most one strike per round; `unreachable_strikes`
//! consecutive strikes (no answer in as many rounds) make it dead, and all its shards lost.
//! Any answer resets the strikes.
//!
//! # Repairs
//!
//! A block with lost shards gets one [`Action::Repair`] for all of them, at most
//! `repair_batch` blocks per poll. Targets come from [`place`], excluding the block's current
//! holders, dead nodes and nodes that lost a shard of this block, and preferring nodes that
//! never failed an audit nor a repair of this block (they are used only when too few others
//! are left). A block is not repaired
//! again while a repair of it is in flight; a failed repair retries after a back-off that
//! doubles from `audit_period_ms` up to 64 times that. A block with fewer than `k` live shards
//! is reported once as [`Action::Unrecoverable`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crypto_accel::{DataId, Hash};
use rand::seq::IteratorRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::record::{NodeId, Subnet, MAX_SHARDS};

/// The key shard `index` of `block` of `data` is placed near.
pub fn shard_key(data: &DataId, block: u64, index: u8) -> [u8; 32] {
    let mut buf = [0u8; 41];
    buf[..32].copy_from_slice(data.as_bytes());
    buf[32..40].copy_from_slice(&block.to_le_bytes());
    buf[40] = index;
    Hash::domain("cpchain shard placement v1", &buf).0
}

/// Kademlia's XOR distance; compare results as big-endian numbers (`[u8; 32]`'s `Ord`).
pub fn distance(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut d = [0u8; 32];
    for ((d, a), b) in d.iter_mut().zip(a).zip(b) {
        *d = a ^ b;
    }
    d
}

/// A live storage node that may receive shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// The node.
    pub node: NodeId,
    /// Its subnet; `None` (unknown or loopback) never counts as a shared subnet.
    pub subnet: Option<Subnet>,
}

/// Why shards could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// Fewer eligible distinct nodes than shards to place.
    #[error("{need} shards need {need} distinct nodes, only {have} are eligible")]
    NotEnoughNodes {
        /// Shards to place.
        need: usize,
        /// Eligible nodes (candidates not already holding a shard of the block).
        have: usize,
    },
    /// A shard index was asked for twice.
    #[error("shard index {index} asked for twice")]
    DuplicateIndex {
        /// The index.
        index: u8,
    },
}

/// Places the shards `indices` of one block: for each index in order, the live candidate
/// closest (XOR of NodeId bytes) to [`shard_key`]`(data, block, index)` that holds no shard
/// of this block (`taken` lists the block's current holders) and, while enough distinct
/// subnets exist, shares no subnet with them; when there are fewer distinct subnets than
/// shards, subnets are reused as evenly as possible. Errors if fewer distinct nodes than
/// needed.
///
/// The result does not depend on the order of `candidates` (a node listed twice counts
/// once, with its first subnet).
pub fn place(
    data: &DataId,
    block: u64,
    indices: &[u8],
    candidates: &[Candidate],
    taken: &[NodeId],
) -> Result<Vec<NodeId>, PlaceError> {
    let mut asked = BTreeSet::new();
    if let Some(&index) = indices.iter().find(|&&i| !asked.insert(i)) {
        return Err(PlaceError::DuplicateIndex { index });
    }
    let mut subnet_of = BTreeMap::new();
    for c in candidates {
        subnet_of.entry(c.node).or_insert(c.subnet);
    }
    let taken: BTreeSet<NodeId> = taken.iter().copied().collect();
    // Shards of the block already on each subnet.
    let mut usage: BTreeMap<Subnet, usize> = BTreeMap::new();
    for subnet in taken
        .iter()
        .filter_map(|n| subnet_of.get(n).copied().flatten())
    {
        *usage.entry(subnet).or_default() += 1;
    }
    let mut eligible: Vec<Candidate> = subnet_of
        .iter()
        .filter(|(n, _)| !taken.contains(*n))
        .map(|(&node, &subnet)| Candidate { node, subnet })
        .collect();
    if eligible.len() < indices.len() {
        return Err(PlaceError::NotEnoughNodes {
            need: indices.len(),
            have: eligible.len(),
        });
    }
    let mut out = Vec::with_capacity(indices.len());
    for &index in indices {
        let key = shard_key(data, block, index);
        let use_of = |c: &Candidate| c.subnet.map_or(0, |s| usage.get(&s).copied().unwrap_or(0));
        // The least used subnets first (an unknown subnet is never shared), then distance.
        let best = eligible
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| (use_of(c), distance(&key, &c.node.0)))
            .map(|(pos, c)| (pos, *c));
        let Some((pos, chosen)) = best else {
            return Err(PlaceError::NotEnoughNodes {
                need: indices.len(),
                have: out.len(),
            });
        };
        out.push(chosen.node);
        if let Some(s) = chosen.subnet {
            *usage.entry(s).or_default() += 1;
        }
        eligible.swap_remove(pos);
    }
    Ok(out)
}

/// Probability that a holder corrupting a fraction `f` of its shards is caught within
/// `rounds` audit rounds of `s` audits each: `1 - (1 - f)^(s·rounds)` (a lower bound, as the
/// audits of a round are drawn without replacement).
pub fn detection_probability(f: f64, s: usize, rounds: u64) -> f64 {
    let f = f.clamp(0.0, 1.0);
    let draws = (s as f64) * (rounds as f64);
    1.0 - (1.0 - f).powf(draws)
}

/// Fewest audit rounds that catch a holder corrupting a fraction `f` of its shards with
/// probability at least `confidence`; `None` if no number of rounds does (`f = 0`, `s = 0`
/// or `confidence >= 1` with `f < 1`).
pub fn rounds_to_detect(f: f64, s: usize, confidence: f64) -> Option<u64> {
    if s == 0 || f.is_nan() || f <= 0.0 || confidence.is_nan() {
        return None;
    }
    if f >= 1.0 || confidence <= 0.0 {
        return Some(1);
    }
    if confidence >= 1.0 {
        return None;
    }
    // (1 - f)^(s·R) <= 1 - confidence  <=>  R >= ln(1 - confidence) / (s · ln(1 - f)).
    let r = ((1.0 - confidence).ln() / ((s as f64) * (1.0 - f).ln())).ceil();
    if !r.is_finite() || r >= u64::MAX as f64 {
        // 1 - f rounds to 1: too rare to catch in any countable number of rounds.
        return None;
    }
    let r = (r as u64).max(1);
    // Guard the float rounding at the boundary.
    Some(
        if r > 1 && detection_probability(f, s, r - 1) >= confidence {
            r - 1
        } else if detection_probability(f, s, r) < confidence {
            r + 1
        } else {
            r
        },
    )
}

/// How the planner paces its work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannerConfig {
    /// Time between audit rounds (also the base of the repair back-off).
    pub audit_period_ms: u64,
    /// Shards challenged per holder per round.
    pub audits_per_holder: usize,
    /// Consecutive unreachable rounds after which a holder is dead (at least 1).
    pub unreachable_strikes: u32,
    /// Most blocks given a repair (or an unrecoverable report) per poll (at least 1).
    pub repair_batch: usize,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            audit_period_ms: 10_000,
            audits_per_holder: 4,
            unreachable_strikes: 3,
            repair_batch: 64,
        }
    }
}

/// What came of one audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditOutcome {
    /// The holder proved it holds the shard.
    Passed,
    /// The holder answered but did not prove it.
    Failed(AuditFailure),
    /// The holder did not answer.
    Unreachable,
}

/// How an answered audit failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditFailure {
    /// The holder says it does not have the shard.
    Missing,
    /// The proof did not verify.
    BadProof(String),
    /// The holder refused to answer.
    Refused(String),
}

impl fmt::Display for AuditFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditFailure::Missing => f.write_str("shard missing"),
            AuditFailure::BadProof(why) => write!(f, "bad proof: {why}"),
            AuditFailure::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

/// Work for the node to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Challenge `holder` on shard `index` of `block` with `nonce`.
    Audit {
        /// The data item.
        data: DataId,
        /// The block.
        block: u64,
        /// The shard index.
        index: u8,
        /// The node challenged.
        holder: NodeId,
        /// The challenge (see [`crate::proof::prove`]).
        nonce: u64,
    },
    /// Rebuild these shards of a block from k survivors and store each on its target;
    /// `sources` are the block's live holders (index, node).
    Repair {
        /// The data item.
        data: DataId,
        /// The block.
        block: u64,
        /// Lost shard indices and the node each goes to.
        targets: Vec<(u8, NodeId)>,
        /// Live shards of the block and their holders.
        sources: Vec<(u8, NodeId)>,
    },
    /// The block has fewer than k live shards: nothing can rebuild it.
    Unrecoverable {
        /// The data item.
        data: DataId,
        /// The block.
        block: u64,
        /// Live shards left.
        live: usize,
    },
}

/// What the planner has seen of one holder.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HolderStats {
    /// Audits passed.
    pub passed: u64,
    /// Audits answered but failed.
    pub failed: u64,
    /// Audits not answered.
    pub unreachable: u64,
    /// The reason of the latest failure.
    pub last_failure: Option<String>,
    /// Consecutive rounds without an answer.
    pub strikes: u32,
    /// Declared dead: it holds nothing and receives nothing.
    pub dead: bool,
    /// Times it was declared dead (its unanswered rounds, counted once per death).
    pub deaths: u64,
}

/// Why a shard map was not tracked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    /// The erasure parameters are out of range.
    #[error("bad erasure parameters k={k} m={m}: need k >= 1, m >= 1, k + m <= 64")]
    BadCoding {
        /// Data shards per block.
        k: u8,
        /// Parity shards per block.
        m: u8,
    },
    /// A block has more holders than shards.
    #[error("block {block} lists {got} holders, more than k + m = {shards}")]
    RowLength {
        /// The block.
        block: u64,
        /// Holders listed.
        got: usize,
        /// `k + m`.
        shards: usize,
    },
}

/// A block with lost shards, as [`Planner::damaged`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedBlock {
    /// The data item.
    pub data: DataId,
    /// The block.
    pub block: u64,
    /// Indices of the lost shards.
    pub lost: Vec<u8>,
    /// Shards being rebuilt now.
    pub in_flight: usize,
    /// Failed repairs in a row.
    pub failures: u32,
    /// The reason of the latest failed repair.
    pub last_error: Option<String>,
    /// When the next repair may start.
    pub retry_at_ms: u64,
}

#[derive(Debug)]
struct Tracked {
    k: u8,
    map: Vec<Vec<Option<NodeId>>>,
}

#[derive(Debug, Default)]
struct NodeState {
    stats: HolderStats,
    /// Round of the latest strike, so a round adds at most one.
    struck_in: Option<u64>,
    /// Failed an audit: challenge every shard next round.
    suspect: bool,
}

#[derive(Debug, Default)]
struct BlockRepair {
    /// Targets of the repair under way, by shard index.
    in_flight: BTreeMap<u8, NodeId>,
    failures: u32,
    last_error: Option<String>,
    retry_at: u64,
    /// Nodes that lost a shard of this block: never targets for it.
    lost_from: BTreeSet<NodeId>,
    /// Targets of failed repairs: avoided while other nodes are eligible.
    refused: BTreeSet<NodeId>,
    reported_unrecoverable: bool,
}

type ShardRef = (DataId, u64, u8);

const MAX_BACKOFF_SHIFT: u32 = 6;

/// The audit and repair schedule of the data items this node looks after.
#[derive(Debug)]
pub struct Planner {
    cfg: PlannerConfig,
    rng: ChaCha20Rng,
    candidates: Vec<Candidate>,
    tracked: BTreeMap<DataId, Tracked>,
    /// Reverse index of the shard maps: the shards each node holds.
    holdings: BTreeMap<NodeId, BTreeSet<ShardRef>>,
    nodes: BTreeMap<NodeId, NodeState>,
    /// Blocks with lost shards.
    damaged: BTreeMap<(DataId, u64), BlockRepair>,
    /// Nodes known to keep some shard of a block on disk, whether or not the map names them
    /// (a node back after being declared dead, whose slots were refilled elsewhere): repair
    /// targets for that block only when too few other nodes are left.
    present: BTreeMap<(DataId, u64), BTreeSet<NodeId>>,
    round: u64,
    next_audit_ms: Option<u64>,
}

impl Planner {
    /// A planner with nothing tracked, its nonces and audit choices drawn from `seed`.
    pub fn new(cfg: PlannerConfig, seed: u64) -> Planner {
        Planner {
            cfg,
            rng: ChaCha20Rng::seed_from_u64(seed),
            candidates: Vec::new(),
            tracked: BTreeMap::new(),
            holdings: BTreeMap::new(),
            nodes: BTreeMap::new(),
            present: BTreeMap::new(),
            damaged: BTreeMap::new(),
            round: 0,
            next_audit_ms: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PlannerConfig {
        &self.cfg
    }

    /// Sets the current live storage nodes, the targets of repairs.
    pub fn set_candidates(&mut self, c: Vec<Candidate>) {
        self.candidates = c;
    }

    /// Tracks `data` with shard map `map` (`map[b][i]` = holder of shard `i` of block `b`),
    /// replacing an earlier map of the same data. Shards on dead nodes, on a node that already
    /// holds another shard of the block, or missing from a short row count as lost. Invalid
    /// maps are ignored (the earlier map stays): use [`Planner::try_track`] to see why.
    pub fn track(&mut self, data: DataId, k: u8, m: u8, map: Vec<Vec<NodeId>>) {
        // The error is observable through try_track; this form keeps the documented API.
        let _ignored = self.try_track(data, k, m, map);
    }

    /// [`Planner::track`], reporting maps it cannot track.
    pub fn try_track(
        &mut self,
        data: DataId,
        k: u8,
        m: u8,
        map: Vec<Vec<NodeId>>,
    ) -> Result<(), TrackError> {
        let shards = usize::from(k) + usize::from(m);
        if k == 0 || m == 0 || shards > MAX_SHARDS {
            return Err(TrackError::BadCoding { k, m });
        }
        if let Some((block, row)) = map.iter().enumerate().find(|(_, r)| r.len() > shards) {
            return Err(TrackError::RowLength {
                block: block as u64,
                got: row.len(),
                shards,
            });
        }
        self.untrack(&data);
        let mut rows = Vec::with_capacity(map.len());
        for (block, row) in (0u64..).zip(map) {
            let mut out: Vec<Option<NodeId>> = Vec::with_capacity(shards);
            for (index, node) in (0u8..).zip(&row) {
                let dead = self.nodes.get(node).is_some_and(|s| s.stats.dead);
                if dead || out.contains(&Some(*node)) {
                    out.push(None);
                    continue;
                }
                out.push(Some(*node));
                self.holdings
                    .entry(*node)
                    .or_default()
                    .insert((data, block, index));
                self.nodes.entry(*node).or_default();
            }
            out.resize(shards, None);
            if out.contains(&None) {
                self.damaged.entry((data, block)).or_default();
            }
            rows.push(out);
        }
        self.tracked.insert(data, Tracked { k, map: rows });
        Ok(())
    }

    /// Stops tracking `data`: no more audits or repairs of it.
    pub fn untrack(&mut self, data: &DataId) {
        let Some(t) = self.tracked.remove(data) else {
            return;
        };
        for (block, row) in (0u64..).zip(&t.map) {
            for (index, node) in (0u8..).zip(row) {
                if let Some(node) = node {
                    self.release(*node, &(*data, block, index));
                }
            }
        }
        self.damaged.retain(|(d, _), _| d != data);
        self.present.retain(|(d, _), _| d != data);
    }

    /// The nodes that keep some shard of each block of `data` on disk, as (block, node)
    /// pairs from a scan of what nodes say they hold (replacing what the previous scan
    /// said): a repair of a block passes them over while other nodes are eligible. Blocks
    /// past the data's end are ignored (the lists come from the network).
    pub fn set_present(&mut self, data: &DataId, present: impl IntoIterator<Item = (u64, NodeId)>) {
        let Some(blocks) = self.tracked.get(data).map(|t| t.map.len() as u64) else {
            return;
        };
        self.present.retain(|(d, _), _| d != data);
        for (block, node) in present {
            if block < blocks {
                self.present.entry((*data, block)).or_default().insert(node);
            }
        }
    }

    /// Drops one shard from a node's holdings.
    fn release(&mut self, node: NodeId, shard: &ShardRef) {
        if let Some(set) = self.holdings.get_mut(&node) {
            set.remove(shard);
            if set.is_empty() {
                self.holdings.remove(&node);
            }
        }
    }

    /// The shard map of `data`; `None` entries are shards lost (awaiting repair).
    pub fn shard_map(&self, data: &DataId) -> Option<&[Vec<Option<NodeId>>]> {
        self.tracked.get(data).map(|t| t.map.as_slice())
    }

    /// Marks shard `index` of `block` lost if `holder` still holds it.
    fn lose(&mut self, data: &DataId, block: u64, index: u8, holder: NodeId, now_ms: u64) {
        let Some(slot) = self
            .tracked
            .get_mut(data)
            .and_then(|t| t.map.get_mut(usize::try_from(block).ok()?))
            .and_then(|row| row.get_mut(usize::from(index)))
        else {
            return;
        };
        if *slot != Some(holder) {
            return;
        }
        *slot = None;
        self.release(holder, &(*data, block, index));
        let repair = self.damaged.entry((*data, block)).or_default();
        repair.lost_from.insert(holder);
        if repair.in_flight.is_empty() && repair.failures == 0 {
            repair.retry_at = repair.retry_at.max(now_ms);
        }
    }

    /// Declares `node` dead and every shard it holds lost.
    fn kill(&mut self, node: NodeId, now_ms: u64) {
        let state = self.nodes.entry(node).or_default();
        if !state.stats.dead {
            state.stats.deaths += 1;
        }
        state.stats.dead = true;
        state.suspect = false;
        let held = self.holdings.get(&node).cloned().unwrap_or_default();
        for (data, block, index) in held {
            self.lose(&data, block, index, node, now_ms);
        }
        // Repairs that failed while this node was dying (it was their target or one of the
        // k sources they read) failed for a reason that is now known and excluded from the
        // next plan: retry them at once instead of waiting out a back-off that can have
        // grown to minutes while the node was still counted alive.
        for repair in self.damaged.values_mut() {
            if repair.in_flight.is_empty() && repair.failures > 0 {
                repair.failures = 0;
                repair.retry_at = now_ms;
            }
        }
    }

    /// Takes the outcome of an [`Action::Audit`].
    pub fn on_audit(
        &mut self,
        data: &DataId,
        block: u64,
        index: u8,
        holder: NodeId,
        outcome: AuditOutcome,
        now_ms: u64,
    ) {
        if !self.tracked.contains_key(data) {
            return;
        }
        let round = self.round;
        let strikes_to_die = self.cfg.unreachable_strikes.max(1);
        let state = self.nodes.entry(holder).or_default();
        match outcome {
            AuditOutcome::Passed => {
                state.stats.passed += 1;
                state.stats.strikes = 0;
            }
            AuditOutcome::Failed(why) => {
                // An answer, so not a strike; but the holder must not keep the slot.
                state.stats.failed += 1;
                state.stats.last_failure = Some(why.to_string());
                state.stats.strikes = 0;
                state.suspect = !state.stats.dead;
                self.lose(data, block, index, holder, now_ms);
            }
            AuditOutcome::Unreachable => {
                state.stats.unreachable += 1;
                if state.struck_in != Some(round) {
                    state.struck_in = Some(round);
                    state.stats.strikes = state.stats.strikes.saturating_add(1);
                }
                if state.stats.strikes >= strikes_to_die && !state.stats.dead {
                    self.kill(holder, now_ms);
                }
            }
        }
    }

    /// The node is gone (no longer a candidate, or its connection lost for long): every shard
    /// it held is lost and it receives no more shards until [`Planner::on_node_up`].
    pub fn on_node_down(&mut self, node: NodeId, now_ms: u64) {
        self.kill(node, now_ms);
    }

    /// A dead node is back: it may receive shards again (it holds none until repairs place
    /// some on it).
    pub fn on_node_up(&mut self, node: NodeId) {
        if let Some(state) = self.nodes.get_mut(&node) {
            state.stats.dead = false;
            state.stats.strikes = 0;
            state.struck_in = None;
        }
    }

    /// A repair stored shard `index` of `block` on `holder`. Ignored if the slot is no longer
    /// lost, or if `holder` is dead or already holds another shard of the block.
    pub fn on_repaired(&mut self, data: &DataId, block: u64, index: u8, holder: NodeId) {
        let key = (*data, block);
        if let Some(repair) = self.damaged.get_mut(&key) {
            repair.in_flight.remove(&index);
        }
        let dead = self.nodes.get(&holder).is_some_and(|s| s.stats.dead);
        let Some(row) = self
            .tracked
            .get_mut(data)
            .and_then(|t| t.map.get_mut(usize::try_from(block).ok()?))
        else {
            return;
        };
        let lost = row.get(usize::from(index)) == Some(&None);
        if lost && !dead && !row.contains(&Some(holder)) {
            if let Some(slot) = row.get_mut(usize::from(index)) {
                *slot = Some(holder);
            }
            self.holdings
                .entry(holder)
                .or_default()
                .insert((*data, block, index));
            self.nodes.entry(holder).or_default();
        }
        let whole = !row.contains(&None);
        if let Some(repair) = self.damaged.get_mut(&key) {
            if whole && repair.in_flight.is_empty() {
                self.damaged.remove(&key);
            } else if repair.in_flight.is_empty() {
                // Progress: the rest of the block need not wait out an old back-off.
                repair.failures = 0;
            }
        }
    }

    /// A repair of shard `index` of `block` failed; the block is retried after a back-off,
    /// preferring another target.
    pub fn on_repair_failed(
        &mut self,
        data: &DataId,
        block: u64,
        index: u8,
        reason: &str,
        now_ms: u64,
    ) {
        let base = self.cfg.audit_period_ms.max(1);
        let Some(repair) = self.damaged.get_mut(&(*data, block)) else {
            return;
        };
        if let Some(target) = repair.in_flight.remove(&index) {
            repair.refused.insert(target);
        }
        repair.failures = repair.failures.saturating_add(1);
        repair.last_error = Some(reason.to_string());
        let shift = repair.failures.saturating_sub(1).min(MAX_BACKOFF_SHIFT);
        repair.retry_at = now_ms.saturating_add(base.saturating_mul(1 << shift));
    }

    /// The work due at `now_ms`: an audit round when one is due, then repairs.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.holdings.is_empty() && self.next_audit_ms.is_none_or(|t| now_ms >= t) {
            self.audit_round(&mut actions);
            self.next_audit_ms = Some(now_ms.saturating_add(self.cfg.audit_period_ms.max(1)));
        }
        self.plan_repairs(now_ms, &mut actions);
        actions
    }

    fn audit_round(&mut self, actions: &mut Vec<Action>) {
        self.round += 1;
        for (node, shards) in &self.holdings {
            let state = self.nodes.entry(*node).or_default();
            if state.stats.dead {
                continue;
            }
            let chosen: Vec<&ShardRef> = if state.suspect {
                state.suspect = false;
                shards.iter().collect()
            } else {
                shards
                    .iter()
                    .choose_multiple(&mut self.rng, self.cfg.audits_per_holder)
            };
            for &(data, block, index) in chosen {
                actions.push(Action::Audit {
                    data,
                    block,
                    index,
                    holder: *node,
                    nonce: self.rng.gen(),
                });
            }
        }
    }

    fn plan_repairs(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        let batch = self.cfg.repair_batch.max(1);
        let base = self.cfg.audit_period_ms.max(1);
        let mut issued = 0;
        let mut healed = Vec::new();
        for (&(data, block), repair) in self.damaged.iter_mut() {
            if issued >= batch {
                break;
            }
            if !repair.in_flight.is_empty() || repair.retry_at > now_ms {
                continue;
            }
            let Some(t) = self.tracked.get(&data) else {
                healed.push((data, block));
                continue;
            };
            let Some(row) = usize::try_from(block).ok().and_then(|b| t.map.get(b)) else {
                healed.push((data, block));
                continue;
            };
            let mut lost = Vec::new();
            let mut sources = Vec::new();
            for (index, node) in (0u8..).zip(row) {
                match node {
                    Some(n) => sources.push((index, *n)),
                    None => lost.push(index),
                }
            }
            if lost.is_empty() {
                healed.push((data, block));
                continue;
            }
            if sources.len() < usize::from(t.k) {
                if !repair.reported_unrecoverable {
                    repair.reported_unrecoverable = true;
                    actions.push(Action::Unrecoverable {
                        data,
                        block,
                        live: sources.len(),
                    });
                    issued += 1;
                }
                continue;
            }
            repair.reported_unrecoverable = false;
            let taken: Vec<NodeId> = sources.iter().map(|(_, n)| *n).collect();
            let kept = self.present.get(&(data, block));
            let keeps_one = |c: &Candidate| kept.is_some_and(|k| k.contains(&c.node));
            let nodes = &self.nodes;
            let alive = |c: &&Candidate| {
                !nodes.get(&c.node).is_some_and(|s| s.stats.dead)
                    && !repair.lost_from.contains(&c.node)
                    && !taken.contains(&c.node)
            };
            // Prefer nodes that never failed an audit nor a repair of this block, and that keep
            // no (superseded) shard of it on disk; fall back to them only when too few others
            // are left. A second copy on one node wastes its disk, but the map still names
            // the node once, so losing it loses one shard of the block.
            let flaky = |c: &Candidate| nodes.get(&c.node).is_some_and(|s| s.stats.failed > 0);
            let mut eligible = Vec::new();
            for tier in 0..4 {
                eligible = self
                    .candidates
                    .iter()
                    .filter(alive)
                    .filter(|c| match tier {
                        0 => !repair.refused.contains(&c.node) && !flaky(c) && !keeps_one(c),
                        1 => !repair.refused.contains(&c.node) && !keeps_one(c),
                        2 => !repair.refused.contains(&c.node),
                        _ => true,
                    })
                    .copied()
                    .collect::<Vec<Candidate>>();
                let distinct: BTreeSet<NodeId> = eligible.iter().map(|c| c.node).collect();
                if distinct.len() >= lost.len() {
                    break;
                }
            }
            let distinct: BTreeSet<NodeId> = eligible.iter().map(|c| c.node).collect();
            let want = lost.len().min(distinct.len());
            let placed = match lost.get(..want) {
                Some(indices) if want > 0 => place(&data, block, indices, &eligible, &taken),
                _ => Err(PlaceError::NotEnoughNodes {
                    need: lost.len(),
                    have: 0,
                }),
            };
            match placed {
                Ok(targets) => {
                    let targets: Vec<(u8, NodeId)> = lost.iter().copied().zip(targets).collect();
                    repair.in_flight = targets.iter().copied().collect();
                    actions.push(Action::Repair {
                        data,
                        block,
                        targets,
                        sources,
                    });
                    issued += 1;
                }
                Err(e) => {
                    // No node to rebuild onto: look again next period.
                    repair.last_error = Some(e.to_string());
                    repair.retry_at = now_ms.saturating_add(base);
                }
            }
        }
        for key in healed {
            self.damaged.remove(&key);
        }
    }

    /// Audit counts and state of every node seen, by node.
    pub fn holder_stats(&self) -> Vec<(NodeId, HolderStats)> {
        self.nodes
            .iter()
            .map(|(n, s)| (*n, s.stats.clone()))
            .collect()
    }

    /// The blocks with lost shards and where their repair stands.
    pub fn damaged(&self) -> Vec<DamagedBlock> {
        self.damaged
            .iter()
            .map(|(&(data, block), r)| {
                let lost = self
                    .shard_map(&data)
                    .and_then(|map| map.get(usize::try_from(block).ok()?))
                    .map(|row| {
                        (0u8..)
                            .zip(row)
                            .filter(|(_, n)| n.is_none())
                            .map(|(i, _)| i)
                            .collect()
                    })
                    .unwrap_or_default();
                DamagedBlock {
                    data,
                    block,
                    lost,
                    in_flight: r.in_flight.len(),
                    failures: r.failures,
                    last_error: r.last_error.clone(),
                    retry_at_ms: r.retry_at,
                }
            })
            .collect()
    }

    /// How many blocks have lost shards now, and how many of them have fewer than k live
    /// shards (what [`Planner::poll`] reports as [`Action::Unrecoverable`]), without listing
    /// them as [`Planner::damaged`] does.
    pub fn damaged_counts(&self) -> (usize, usize) {
        let unrecoverable = self
            .damaged
            .keys()
            .filter(|(data, block)| {
                self.tracked.get(data).is_some_and(|t| {
                    usize::try_from(*block)
                        .ok()
                        .and_then(|b| t.map.get(b))
                        .is_some_and(|row| row.iter().flatten().count() < usize::from(t.k))
                })
            })
            .count();
        (self.damaged.len(), unrecoverable)
    }

    /// The earliest `now_ms` at which [`Planner::poll`] has work (possibly in the past:
    /// poll now), or `None` if it has none until an input arrives.
    pub fn next_wake(&self) -> Option<u64> {
        let audit = (!self.holdings.is_empty()).then(|| self.next_audit_ms.unwrap_or(0));
        let repair = self
            .damaged
            .values()
            .filter(|r| r.in_flight.is_empty() && !r.reported_unrecoverable)
            .map(|r| r.retry_at)
            .min();
        match (audit, repair) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(i: u32) -> NodeId {
        NodeId(Hash::domain("planner test node", &i.to_le_bytes()).0)
    }

    fn did(name: &str) -> DataId {
        DataId(Hash::of(name.as_bytes()))
    }

    fn candidates(n: u32, subnet: impl Fn(u32) -> Option<Subnet>) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                node: node(i),
                subnet: subnet(i),
            })
            .collect()
    }

    fn cfg() -> PlannerConfig {
        PlannerConfig::default()
    }

    /// A shard map placed by `place` itself.
    fn placed_map(data: &DataId, blocks: u64, shards: u8, c: &[Candidate]) -> Vec<Vec<NodeId>> {
        let all: Vec<u8> = (0..shards).collect();
        (0..blocks)
            .map(|b| place(data, b, &all, c, &[]).unwrap())
            .collect()
    }

    /// Every block names each node at most once, and the reverse index matches the maps.
    fn check_invariants(p: &Planner) {
        let mut held: BTreeMap<NodeId, BTreeSet<ShardRef>> = BTreeMap::new();
        for (data, t) in &p.tracked {
            for (block, row) in (0u64..).zip(&t.map) {
                let live: Vec<NodeId> = row.iter().flatten().copied().collect();
                let distinct: BTreeSet<NodeId> = live.iter().copied().collect();
                assert_eq!(
                    live.len(),
                    distinct.len(),
                    "block {block} names a node twice"
                );
                for (index, n) in (0u8..).zip(row) {
                    if let Some(n) = n {
                        held.entry(*n).or_default().insert((*data, block, index));
                        assert!(!p.nodes[n].stats.dead, "a dead node holds a shard");
                    }
                }
            }
        }
        assert_eq!(held, p.holdings);
    }

    /// A scripted network answering the planner's actions.
    struct World {
        p: Planner,
        now: u64,
        /// (data, block, index, holder) whose audits fail.
        corrupt: BTreeSet<(DataId, u64, u8, NodeId)>,
        /// Nodes that fail every audit.
        liars: BTreeSet<NodeId>,
        /// Nodes that never answer.
        silent: BTreeSet<NodeId>,
        /// Repairs complete at once when true; otherwise they are left in flight.
        repair: bool,
        log: Vec<Action>,
    }

    impl World {
        fn new(p: Planner) -> World {
            World {
                p,
                now: 1_000,
                corrupt: BTreeSet::new(),
                liars: BTreeSet::new(),
                silent: BTreeSet::new(),
                repair: true,
                log: Vec::new(),
            }
        }

        /// One poll, every action answered, then time moves on by one audit period.
        fn step(&mut self) -> Vec<Action> {
            let actions = self.p.poll(self.now);
            for a in &actions {
                match a {
                    Action::Audit {
                        data,
                        block,
                        index,
                        holder,
                        ..
                    } => {
                        let outcome = if self.silent.contains(holder) {
                            AuditOutcome::Unreachable
                        } else if self.liars.contains(holder)
                            || self.corrupt.contains(&(*data, *block, *index, *holder))
                        {
                            AuditOutcome::Failed(AuditFailure::BadProof("root mismatch".into()))
                        } else {
                            AuditOutcome::Passed
                        };
                        self.p
                            .on_audit(data, *block, *index, *holder, outcome, self.now);
                    }
                    Action::Repair {
                        data,
                        block,
                        targets,
                        ..
                    } if self.repair => {
                        for (index, target) in targets {
                            self.p.on_repaired(data, *block, *index, *target);
                        }
                    }
                    _ => {}
                }
            }
            check_invariants(&self.p);
            self.log.extend(actions.iter().cloned());
            self.now += self.p.cfg.audit_period_ms;
            actions
        }

        fn holds(&self, data: &DataId, n: NodeId) -> usize {
            self.p
                .shard_map(data)
                .unwrap()
                .iter()
                .flatten()
                .filter(|h| **h == Some(n))
                .count()
        }
    }

    fn audits_of(actions: &[Action], who: NodeId) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Audit { holder, .. } if *holder == who))
            .count()
    }

    fn repairs(actions: &[Action]) -> Vec<&Action> {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Repair { .. }))
            .collect()
    }

    /// The targets of the one repair among `actions`.
    fn only_repair(actions: &[Action]) -> Vec<(u8, NodeId)> {
        match repairs(actions).as_slice() {
            [Action::Repair { targets, .. }] => targets.clone(),
            other => panic!("expected one repair: {other:?}"),
        }
    }

    #[test]
    fn keys_and_distance() {
        let d = did("x");
        assert_ne!(shard_key(&d, 0, 0), shard_key(&d, 0, 1));
        assert_ne!(shard_key(&d, 0, 0), shard_key(&d, 1, 0));
        let mut buf = d.as_bytes().to_vec();
        buf.extend_from_slice(&5u64.to_le_bytes());
        buf.push(3);
        assert_eq!(
            shard_key(&d, 5, 3),
            Hash::domain("cpchain shard placement v1", &buf).0
        );
        let a = node(1).0;
        let b = node(2).0;
        assert_eq!(distance(&a, &a), [0; 32]);
        assert_eq!(distance(&a, &b), distance(&b, &a));
        assert_eq!(distance(&distance(&a, &b), &b), a);
    }

    #[test]
    fn failure_reasons_display() {
        assert_eq!(AuditFailure::Missing.to_string(), "shard missing");
        assert_eq!(
            AuditFailure::BadProof("root mismatch".into()).to_string(),
            "bad proof: root mismatch"
        );
        assert_eq!(
            AuditFailure::Refused("no grant".into()).to_string(),
            "refused: no grant"
        );
    }

    #[test]
    fn placement_spreads_over_nodes_and_subnets() {
        let d = did("spread");
        let all: Vec<u8> = (0..14).collect();
        // 40 nodes on 20 subnets: 14 shards on 14 nodes and 14 subnets.
        let c = candidates(40, |i| Some(Subnet(u64::from(i % 20))));
        for block in 0..50 {
            let got = place(&d, block, &all, &c, &[]).unwrap();
            let nodes: BTreeSet<_> = got.iter().collect();
            assert_eq!(nodes.len(), 14);
            let subnets: BTreeSet<_> = got
                .iter()
                .map(|n| c.iter().find(|c| c.node == *n).unwrap().subnet)
                .collect();
            assert_eq!(subnets.len(), 14, "block {block}");
        }
        // Taken holders' subnets are avoided too.
        let taken = place(&d, 7, &all[..10], &c, &[]).unwrap();
        let rest = place(&d, 7, &all[10..], &c, &taken).unwrap();
        let subnet = |n: &NodeId| c.iter().find(|c| c.node == *n).unwrap().subnet;
        let used: BTreeSet<_> = taken.iter().chain(&rest).map(subnet).collect();
        assert_eq!(used.len(), 14);
        assert!(rest.iter().all(|n| !taken.contains(n)));
    }

    #[test]
    fn placement_reuses_few_subnets_evenly() {
        let d = did("even");
        let all: Vec<u8> = (0..6).collect();
        let c = candidates(15, |i| Some(Subnet(u64::from(i % 3))));
        for block in 0..20 {
            let got = place(&d, block, &all, &c, &[]).unwrap();
            let mut per: BTreeMap<Option<Subnet>, usize> = BTreeMap::new();
            for n in &got {
                *per.entry(c.iter().find(|c| c.node == *n).unwrap().subnet)
                    .or_default() += 1;
            }
            assert_eq!(per.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
        }
    }

    #[test]
    fn placement_in_one_unknown_subnet_still_succeeds() {
        let d = did("loopback");
        let c = candidates(12, |_| None);
        let all: Vec<u8> = (0..12).collect();
        let got = place(&d, 0, &all, &c, &[]).unwrap();
        assert_eq!(got.iter().collect::<BTreeSet<_>>().len(), 12);
        assert_eq!(
            place(&d, 0, &(0..13).collect::<Vec<_>>(), &c, &[]),
            Err(PlaceError::NotEnoughNodes { need: 13, have: 12 })
        );
        assert_eq!(
            place(&d, 0, &[1, 2, 1], &c, &[]),
            Err(PlaceError::DuplicateIndex { index: 1 })
        );
        assert_eq!(
            place(&d, 0, &all[..3], &c, &got[..10]),
            Err(PlaceError::NotEnoughNodes { need: 3, have: 2 })
        );
    }

    #[test]
    fn placement_is_deterministic_and_xor_closest() {
        let d = did("closest");
        let mut c = candidates(30, |_| None);
        let all: Vec<u8> = (0..5).collect();
        let first = place(&d, 3, &all, &c, &[]).unwrap();
        c.reverse();
        c.rotate_left(7);
        assert_eq!(place(&d, 3, &all, &c, &[]).unwrap(), first);
        // Each index gets the closest node not chosen before it.
        let mut left: Vec<NodeId> = c.iter().map(|c| c.node).collect();
        for (index, got) in all.iter().zip(&first) {
            let key = shard_key(&d, 3, *index);
            let best = *left.iter().min_by_key(|n| distance(&key, &n.0)).unwrap();
            assert_eq!(*got, best);
            left.retain(|n| *n != best);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn placement_properties(
            n in 1u32..40,
            subnets in 1u64..12,
            unknown_every in 0u32..5,
            taken_mask: u64,
            shards in 1u8..16,
            block: u64,
        ) {
            let d = did("prop");
            let c = candidates(n, |i| {
                (unknown_every == 0 || i % unknown_every != 0).then_some(Subnet(u64::from(i) % subnets))
            });
            let taken: Vec<NodeId> = (0..n).filter(|i| taken_mask >> (i % 64) & 1 == 1 && i % 3 == 0)
                .map(node).collect();
            let indices: Vec<u8> = (0..shards).collect();
            let eligible: Vec<&Candidate> = c.iter().filter(|c| !taken.contains(&c.node)).collect();
            match place(&d, block, &indices, &c, &taken) {
                Err(PlaceError::NotEnoughNodes { need, have }) => {
                    prop_assert!(eligible.len() < indices.len());
                    prop_assert_eq!((need, have), (indices.len(), eligible.len()));
                }
                Err(e) => prop_assert!(false, "{e}"),
                Ok(got) => {
                    prop_assert_eq!(got.len(), indices.len());
                    let distinct: BTreeSet<_> = got.iter().collect();
                    prop_assert_eq!(distinct.len(), got.len());
                    prop_assert!(got.iter().all(|g| !taken.contains(g)));
                    // With enough fresh subnets (or unknown ones), no subnet is shared.
                    let subnet = |x: &NodeId| c.iter().find(|c| c.node == *x).and_then(|c| c.subnet);
                    let taken_subnets: BTreeSet<Subnet> = taken.iter().filter_map(subnet).collect();
                    let fresh: BTreeSet<Subnet> = eligible.iter().filter_map(|c| c.subnet)
                        .filter(|s| !taken_subnets.contains(s)).collect();
                    let unknown = eligible.iter().filter(|c| c.subnet.is_none()).count();
                    if fresh.len() + unknown >= indices.len() {
                        let mut seen = taken_subnets.clone();
                        for g in &got {
                            if let Some(s) = subnet(g) {
                                prop_assert!(seen.insert(s), "subnet {s:?} shared");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn detection_math() {
        assert!((detection_probability(0.1, 4, 1) - 0.3439).abs() < 1e-9);
        assert_eq!(detection_probability(1.0, 4, 1), 1.0);
        assert_eq!(detection_probability(0.0, 4, 100), 0.0);
        assert_eq!(rounds_to_detect(0.1, 4, 0.99), Some(11));
        assert_eq!(rounds_to_detect(0.1, 4, 0.92), Some(6));
        assert_eq!(rounds_to_detect(0.01, 4, 0.99), Some(115));
        assert_eq!(rounds_to_detect(1.0, 4, 0.999_999), Some(1));
        assert_eq!(rounds_to_detect(0.0, 4, 0.5), None);
        assert_eq!(rounds_to_detect(0.5, 0, 0.5), None);
        assert_eq!(rounds_to_detect(0.5, 4, 1.0), None);
        assert_eq!(rounds_to_detect(1e-300, 4, 0.5), None);
    }

    proptest! {
        #[test]
        fn rounds_to_detect_is_the_least_sufficient(
            f in 0.001f64..1.0, s in 1usize..20, conf in 0.01f64..0.9999,
        ) {
            let r = rounds_to_detect(f, s, conf).unwrap();
            prop_assert!(detection_probability(f, s, r) >= conf);
            prop_assert!(r == 1 || detection_probability(f, s, r - 1) < conf);
        }
    }

    fn world(seed: u64, nodes: u32, data: &DataId, blocks: u64, k: u8, m: u8) -> World {
        let mut p = Planner::new(cfg(), seed);
        let c = candidates(nodes, |i| Some(Subnet(u64::from(i))));
        let map = placed_map(data, blocks, k + m, &c);
        p.set_candidates(c);
        p.track(*data, k, m, map);
        check_invariants(&p);
        World::new(p)
    }

    #[test]
    fn a_holder_failing_every_audit_is_caught_in_round_one_and_emptied() {
        let d = did("liar");
        let mut w = world(1, 12, &d, 30, 4, 2);
        let liar = node(5);
        let held = w.holds(&d, liar);
        assert!(held > 8, "the liar holds {held} shards");
        w.liars.insert(liar);

        let round1 = w.step();
        assert_eq!(audits_of(&round1, liar), 4);
        let stats =
            w.p.holder_stats()
                .into_iter()
                .find(|(n, _)| *n == liar)
                .unwrap()
                .1;
        assert_eq!(stats.failed, 4, "caught in the first round");
        assert_eq!(
            stats.last_failure.as_deref(),
            Some("bad proof: root mismatch")
        );
        assert!(!stats.dead, "it answers, so it is not dead");
        assert_eq!(
            w.holds(&d, liar),
            held - 4,
            "the failed shards left it at once"
        );

        // Round 2: the 4 lost shards are repaired elsewhere, and the suspect is swept.
        let round2 = w.step();
        assert_eq!(audits_of(&round2, liar), held - 4);
        let r2 = repairs(&round2);
        assert_eq!(r2.len(), 4);
        for a in r2 {
            let Action::Repair {
                targets, sources, ..
            } = a
            else {
                unreachable!()
            };
            assert!(targets.iter().all(|(_, t)| *t != liar));
            assert!(targets
                .iter()
                .all(|(_, t)| sources.iter().all(|(_, s)| s != t)));
            assert_eq!(sources.len(), 5);
        }
        assert_eq!(w.holds(&d, liar), 0, "the sweep took every shard from it");
        w.step();
        assert!(w.p.damaged().is_empty(), "{:?}", w.p.damaged());
        assert_eq!(w.holds(&d, liar), 0);
        assert!(w
            .p
            .shard_map(&d)
            .unwrap()
            .iter()
            .flatten()
            .all(Option::is_some));
        // A caught liar gets no shards of other blocks while honest nodes are left.
        let victim = node(7);
        assert!(w.holds(&d, victim) > 0);
        w.p.on_node_down(victim, w.now);
        let r = w.step();
        assert!(!repairs(&r).is_empty());
        for a in repairs(&r) {
            let Action::Repair { targets, .. } = a else {
                unreachable!()
            };
            assert!(targets.iter().all(|(_, t)| *t != liar && *t != victim));
        }
        assert_eq!(w.holds(&d, liar), 0);
    }

    /// A holder of 100 shards that corrupted 10 of them.
    fn ten_percent_world(seed: u64) -> (World, DataId, NodeId) {
        let d = did("ten percent");
        let x = node(0);
        let map: Vec<Vec<NodeId>> = (0..100u32)
            .map(|b| vec![x, node(1 + b % 10), node(11 + b % 7)])
            .collect();
        let mut p = Planner::new(cfg(), seed);
        p.set_candidates(candidates(30, |i| Some(Subnet(u64::from(i)))));
        p.track(d, 2, 1, map);
        let mut w = World::new(p);
        for b in (0..100).step_by(10) {
            w.corrupt.insert((d, b, 0, x));
        }
        (w, d, x)
    }

    fn rounds_until_caught(w: &mut World, x: NodeId, max: u64) -> Option<u64> {
        for round in 1..=max {
            w.step();
            if w.p.nodes[&x].stats.failed > 0 {
                return Some(round);
            }
        }
        None
    }

    #[test]
    fn a_ten_percent_corrupter_is_caught_within_the_documented_rounds() {
        let bound = rounds_to_detect(0.1, 4, 0.99).unwrap();
        assert_eq!(bound, 11);
        let (mut w, d, x) = ten_percent_world(42);
        let caught = rounds_until_caught(&mut w, x, bound).expect("caught within 11 rounds");
        // The sweep of the next round finds the rest; the poll after repairs them.
        w.step();
        w.step();
        assert_eq!(w.p.nodes[&x].stats.failed, 10, "caught in round {caught}");
        assert_eq!(w.holds(&d, x), 90);
        for b in (0..100usize).step_by(10) {
            let row = &w.p.shard_map(&d).unwrap()[b];
            assert!(row[0].is_some() && row[0] != Some(x), "block {b}: {row:?}");
        }
        assert!(w.p.damaged().is_empty());
    }

    #[test]
    fn audit_sampling_matches_the_detection_math() {
        // Over many seeds, the first-round catch rate is the hypergeometric 34.8% (≥ the
        // documented 34.4% bound) and nearly every corrupter is caught within 11 rounds.
        let seeds = 300;
        let (mut first, mut within) = (0, 0);
        for seed in 0..seeds {
            let (mut w, _, x) = ten_percent_world(seed);
            match rounds_until_caught(&mut w, x, 11) {
                Some(1) => {
                    first += 1;
                    within += 1;
                }
                Some(_) => within += 1,
                None => {}
            }
        }
        let rate = f64::from(first) / seeds as f64;
        assert!((0.26..0.44).contains(&rate), "first-round rate {rate}");
        assert!(within >= 294, "{within} of {seeds} caught within 11 rounds");
    }

    #[test]
    fn unreachable_strikes_kill_and_everything_is_rebuilt_elsewhere() {
        let d = did("silent");
        let mut w = world(3, 14, &d, 40, 4, 2);
        let u = node(2);
        let held = w.holds(&d, u);
        assert!(held > 0);
        w.silent.insert(u);
        w.step();
        w.step();
        let stats = |w: &World| w.p.nodes[&u].stats.clone();
        assert_eq!(stats(&w).strikes, 2, "one strike per round, not per audit");
        assert_eq!(stats(&w).unreachable, 8);
        assert!(!stats(&w).dead);
        assert_eq!(stats(&w).deaths, 0);
        assert_eq!(w.holds(&d, u), held);
        w.step();
        assert!(stats(&w).dead);
        assert_eq!(w.holds(&d, u), 0);
        let r = w.step();
        assert_eq!(
            stats(&w).deaths,
            1,
            "a death counts once, not per silent round"
        );
        assert_eq!(audits_of(&r, u), 0, "the dead are not audited");
        let rebuilt: usize = repairs(&r)
            .iter()
            .map(|a| {
                let Action::Repair {
                    data,
                    block,
                    targets,
                    sources,
                } = a
                else {
                    unreachable!()
                };
                let before: Vec<NodeId> = sources.iter().map(|(_, n)| *n).collect();
                for (_, t) in targets {
                    assert_ne!(*t, u);
                    assert!(
                        !before.contains(t),
                        "target already holds block {block} of {data}"
                    );
                }
                targets.len()
            })
            .sum();
        assert_eq!(rebuilt, held);
        assert!(w.p.damaged().is_empty());
        // A passing answer resets strikes.
        let v = node(3);
        w.silent.insert(v);
        w.step();
        assert_eq!(w.p.nodes[&v].stats.strikes, 1);
        w.silent.remove(&v);
        w.step();
        assert_eq!(w.p.nodes[&v].stats.strikes, 0);
    }

    #[test]
    fn too_few_live_shards_is_reported_once() {
        let d = did("doomed");
        let mut w = world(4, 6, &d, 3, 2, 1);
        let row = w.p.shard_map(&d).unwrap()[1].clone();
        w.p.on_node_down(row[0].unwrap(), w.now);
        w.p.on_node_down(row[2].unwrap(), w.now);
        let a = w.step();
        let doomed: Vec<&Action> = a
            .iter()
            .filter(|a| matches!(a, Action::Unrecoverable { .. }))
            .collect();
        assert_eq!(
            doomed,
            [&Action::Unrecoverable {
                data: d,
                block: 1,
                live: 1
            }]
        );
        // Other blocks those nodes held are repaired; block 1 is not reported again.
        for _ in 0..3 {
            let a = w.step();
            assert!(!a.iter().any(|a| matches!(a, Action::Unrecoverable { .. })));
            assert!(!a
                .iter()
                .any(|a| matches!(a, Action::Repair { block: 1, .. })));
        }
        // Block 1 is still damaged and unrecoverable now; the rest were rebuilt.
        assert_eq!(w.p.damaged_counts(), (1, 1));
        assert_eq!(w.p.damaged().len(), 1);
    }

    /// One block of 3 + 2 shards on 10 nodes whose repairs the test carries out itself, with
    /// the holder of shard `index` just gone down. Returns the data, the world and that node.
    fn one_holder_down(name: &str, seed: u64, index: usize) -> (DataId, World, NodeId) {
        let d = did(name);
        let mut w = world(seed, 10, &d, 1, 3, 2);
        w.repair = false;
        let victim = w.p.shard_map(&d).unwrap()[0][index].unwrap();
        w.p.on_node_down(victim, w.now);
        (d, w, victim)
    }

    #[test]
    fn in_flight_repairs_are_not_duplicated_and_failures_back_off() {
        let (d, mut w, _) = one_holder_down("flight", 5, 4);
        let targets = only_repair(&w.step());
        assert_eq!(targets.len(), 1);
        let (index, target) = targets[0];
        assert_eq!(index, 4);
        for _ in 0..3 {
            assert!(repairs(&w.step()).is_empty(), "re-issued while in flight");
        }
        assert_eq!(w.p.next_wake(), Some(w.now), "only the audit round is due");

        // The repair fails: nothing until the back-off (one period) passes.
        let t = w.now;
        w.p.on_repair_failed(&d, 0, 4, "target refused the shard", t);
        assert_eq!(
            w.p.damaged()[0].last_error.as_deref(),
            Some("target refused the shard")
        );
        assert!(repairs(&w.p.poll(t + 9_999)).is_empty());
        let targets = only_repair(&w.p.poll(t + 10_000));
        assert_ne!(targets[0].1, target, "the failed target is avoided");
        // A second failure doubles the wait.
        w.p.on_repair_failed(&d, 0, 4, "again", t + 10_000);
        assert_eq!(w.p.damaged()[0].retry_at_ms, t + 30_000);
        assert!(repairs(&w.p.poll(t + 29_999)).is_empty());
        let (i, n) = only_repair(&w.p.poll(t + 30_000))[0];
        w.p.on_repaired(&d, 0, i, n);
        assert!(w.p.damaged().is_empty());
        assert_eq!(w.p.shard_map(&d).unwrap()[0][4], Some(n));
        check_invariants(&w.p);
    }

    #[test]
    fn a_death_cuts_short_the_back_off_of_repairs_it_made_fail() {
        let (d, mut w, victim) = one_holder_down("dying", 7, 0);
        let (index, target) = only_repair(&w.step())[0];
        // The target is dying too: its repairs time out, and the back-off grows.
        let t = w.now;
        w.p.on_repair_failed(&d, 0, index, "timed out", t);
        let (again, _) = only_repair(&w.p.poll(t + 10_000))[0];
        w.p.on_repair_failed(&d, 0, again, "timed out", t + 10_000);
        assert_eq!(w.p.damaged()[0].retry_at_ms, t + 30_000);
        // Once the target is known dead, the block is retried at once, elsewhere.
        w.p.on_node_down(target, t + 11_000);
        assert_eq!(w.p.damaged()[0].retry_at_ms, t + 11_000);
        let targets = only_repair(&w.p.poll(t + 11_000));
        assert!(targets.iter().all(|(_, n)| *n != target && *n != victim));
        check_invariants(&w.p);
    }

    #[test]
    fn repairs_are_batched() {
        let d = did("batch");
        let mut p = Planner::new(
            PlannerConfig {
                repair_batch: 3,
                ..cfg()
            },
            6,
        );
        let c = candidates(12, |_| None);
        // Node 0 holds shard 0 of all 10 blocks.
        let map: Vec<Vec<NodeId>> = (0..10)
            .map(|b| vec![node(0), node(1 + b % 7), node(8)])
            .collect();
        p.set_candidates(c);
        p.track(d, 1, 2, map);
        p.on_node_down(node(0), 0);
        let lost = p.damaged().len();
        assert_eq!(lost, 10);
        let mut seen = BTreeSet::new();
        for poll in 0..4 {
            let a = p.poll(poll);
            let r = repairs(&a);
            assert_eq!(r.len(), 3.min(lost - seen.len()), "poll {poll}");
            for a in r {
                let Action::Repair { block, .. } = a else {
                    unreachable!()
                };
                assert!(seen.insert(*block), "block {block} repaired twice");
            }
        }
        assert_eq!(seen.len(), lost);
    }

    #[test]
    fn fewer_spare_nodes_than_lost_shards_repairs_what_fits() {
        let d = did("tight");
        let mut p = Planner::new(cfg(), 9);
        p.set_candidates(candidates(5, |_| None));
        p.track(d, 2, 2, vec![(0..4).map(node).collect()]);
        p.on_node_down(node(2), 0);
        p.on_node_down(node(3), 0);
        // Two shards lost, one spare node (4): rebuild one now.
        let a = p.poll(0);
        let r = repairs(&a);
        let [Action::Repair {
            targets, sources, ..
        }] = r.as_slice()
        else {
            panic!("{a:?}")
        };
        assert_eq!(targets.as_slice(), [(2, node(4))]);
        assert_eq!(sources.as_slice(), [(0, node(0)), (1, node(1))]);
        p.on_repaired(&d, 0, 2, node(4));
        // No node left for shard 3: nothing is issued and the block waits a period.
        assert!(repairs(&p.poll(1)).is_empty());
        assert_eq!(p.damaged()[0].lost, [3]);
        assert_eq!(p.damaged()[0].retry_at_ms, 10_001);
        check_invariants(&p);
    }

    #[test]
    fn nodes_that_failed_audits_receive_shards_only_as_a_last_resort() {
        let (d1, d2) = (did("first"), did("second"));
        let (a, b, c) = (node(0), node(1), node(2));
        let cands = candidates(6, |_| None);
        let spare: Vec<Candidate> = cands.iter().filter(|x| x.node != c).copied().collect();
        // The node the repair of shard 2 would pick if nothing held it back.
        let liar = place(&d1, 0, &[2], &spare, &[a, b]).unwrap()[0];
        let others: Vec<NodeId> = (3..6).map(node).filter(|n| *n != liar).collect();
        for only_liar_left in [false, true] {
            let mut p = Planner::new(cfg(), 10);
            p.set_candidates(if only_liar_left {
                cands
                    .iter()
                    .filter(|x| [a, b, c, liar].contains(&x.node))
                    .copied()
                    .collect()
            } else {
                cands.clone()
            });
            p.track(d1, 2, 1, vec![vec![a, b, c]]);
            p.track(d2, 2, 1, vec![vec![liar, others[0], others[1]]]);
            let failed = AuditOutcome::Failed(AuditFailure::Missing);
            p.on_audit(&d2, 0, 0, liar, failed, 0);
            p.on_node_down(c, 0);
            let a1 = p.poll(0);
            let r: Vec<&Action> = repairs(&a1)
                .into_iter()
                .filter(|x| matches!(x, Action::Repair { data, .. } if *data == d1))
                .collect();
            let [Action::Repair { targets, .. }] = r.as_slice() else {
                panic!("{a1:?}")
            };
            assert_eq!(targets[0].1 == liar, only_liar_left, "{targets:?}");
        }
    }

    #[test]
    fn track_replaces_and_untrack_forgets() {
        let d = did("track");
        let mut p = Planner::new(cfg(), 7);
        assert_eq!(p.next_wake(), None);
        assert!(p.poll(0).is_empty());
        p.track(d, 2, 1, vec![vec![node(1), node(2), node(3)]]);
        assert_eq!(p.next_wake(), Some(0));
        let a = p.poll(5);
        assert_eq!(a.len(), 3, "one audit per holder of its only shard");
        assert_eq!(p.next_wake(), Some(10_005));
        // Replacing: a short row and a doubled node count as lost.
        p.track(d, 2, 1, vec![vec![node(4), node(4)]]);
        assert_eq!(p.shard_map(&d).unwrap(), [vec![Some(node(4)), None, None]]);
        assert!(p.holdings.keys().eq([&node(4)]));
        assert_eq!(p.next_wake(), Some(0), "the lost shards are due for repair");
        // Invalid maps change nothing.
        assert_eq!(
            p.try_track(d, 0, 1, vec![]),
            Err(TrackError::BadCoding { k: 0, m: 1 })
        );
        assert!(matches!(
            p.try_track(d, 1, 1, vec![vec![node(1); 3]]),
            Err(TrackError::RowLength {
                block: 0,
                got: 3,
                shards: 2
            })
        ));
        assert_eq!(p.shard_map(&d).unwrap().len(), 1);
        p.untrack(&d);
        assert!(p.shard_map(&d).is_none());
        assert!(p.holdings.is_empty() && p.damaged.is_empty());
        assert_eq!(p.next_wake(), None);
        // Outcomes for untracked data are ignored.
        p.on_audit(&d, 0, 0, node(4), AuditOutcome::Unreachable, 0);
        assert_eq!(p.nodes[&node(4)].stats.unreachable, 0);
    }

    #[test]
    fn late_results_do_not_touch_the_new_holder() {
        let d = did("late");
        let mut w = world(8, 10, &d, 1, 2, 1);
        let old = w.p.shard_map(&d).unwrap()[0][0].unwrap();
        w.p.on_node_down(old, w.now);
        w.step();
        let new = w.p.shard_map(&d).unwrap()[0][0].unwrap();
        assert_ne!(new, old);
        // A stale failure report about the old holder leaves the new one in place.
        w.p.on_audit(
            &d,
            0,
            0,
            old,
            AuditOutcome::Failed(AuditFailure::Missing),
            w.now,
        );
        assert_eq!(w.p.shard_map(&d).unwrap()[0][0], Some(new));
        // A repair report naming a node that already holds the block is refused.
        let other = w.p.shard_map(&d).unwrap()[0][1].unwrap();
        w.p.on_node_down(new, w.now);
        w.p.on_repaired(&d, 0, 0, other);
        assert_eq!(w.p.shard_map(&d).unwrap()[0][0], None);
        // So is one naming a dead node.
        w.p.on_repaired(&d, 0, 0, old);
        assert_eq!(w.p.shard_map(&d).unwrap()[0][0], None);
        check_invariants(&w.p);
        // A node back up can hold shards again.
        w.p.on_node_up(old);
        w.p.on_repaired(&d, 0, 0, old);
        assert_eq!(w.p.shard_map(&d).unwrap()[0][0], Some(old));
        check_invariants(&w.p);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Poll,
        Outcome(u8),
        Down(u32),
        Up(u32),
        RepairOk,
        RepairWrongNode(u32),
        RepairFail,
        Candidates(u64),
        /// A new coordinator takes over: it tracks the map its scan found (lost slots held
        /// by nobody) and hears which blocks every live node keeps shards of.
        Retrack,
    }

    /// What a scan hears: the blocks each live node keeps a shard of.
    fn scanned(
        disk: &BTreeMap<u64, BTreeSet<NodeId>>,
        down: &BTreeSet<NodeId>,
    ) -> BTreeMap<u64, BTreeSet<NodeId>> {
        disk.iter()
            .map(|(b, ns)| {
                (
                    *b,
                    ns.iter().filter(|n| !down.contains(n)).copied().collect(),
                )
            })
            .collect()
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Poll),
            4 => (0u8..3).prop_map(Op::Outcome),
            1 => (0u32..16).prop_map(Op::Down),
            1 => (0u32..16).prop_map(Op::Up),
            3 => Just(Op::RepairOk),
            1 => (0u32..16).prop_map(Op::RepairWrongNode),
            1 => Just(Op::RepairFail),
            1 => any::<u64>().prop_map(Op::Candidates),
            1 => Just(Op::Retrack),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the network answers, no block ever names a node twice, the dead hold
        /// nothing, and repairs never target a node that holds the block or is dead.
        #[test]
        fn no_block_ever_maps_two_shards_to_one_node(
            seed: u64,
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let d = did("chaos");
            let mut p = Planner::new(PlannerConfig { repair_batch: 4, ..cfg() }, seed);
            let c = candidates(16, |i| (i % 5 != 0).then_some(Subnet(u64::from(i % 4))));
            p.set_candidates(c.clone());
            let placed = placed_map(&d, 6, 5, &c);
            // What each node keeps on disk, whatever the map says (a node declared dead
            // keeps its shards), and what the coordinator's scans have told the planner.
            let mut disk: BTreeMap<u64, BTreeSet<NodeId>> = (0u64..)
                .zip(&placed)
                .map(|(b, row)| (b, row.iter().copied().collect()))
                .collect();
            let mut noted: BTreeMap<u64, BTreeSet<NodeId>> = BTreeMap::new();
            let mut down: BTreeSet<NodeId> = BTreeSet::new();
            p.track(d, 3, 2, placed);
            let mut now = 0u64;
            let mut audits: Vec<Action> = Vec::new();
            let mut pending: Vec<(u64, u8, NodeId)> = Vec::new();
            for op in ops {
                match op {
                    Op::Poll => {
                        now += 3_000;
                        for a in p.poll(now) {
                            match a {
                                Action::Repair { block, targets, sources, .. } => {
                                    let row = &p.shard_map(&d).unwrap()[block as usize];
                                    for (i, t) in &targets {
                                        prop_assert!(row[*i as usize].is_none());
                                        prop_assert!(!row.contains(&Some(*t)));
                                        prop_assert!(!p.nodes.get(t).is_some_and(|s| s.stats.dead));
                                        prop_assert!(sources.iter().all(|(_, s)| s != t));
                                        // A node keeping a shard of the block is a target
                                        // only when no other candidate was free.
                                        if noted.get(&block).is_some_and(|n| n.contains(t)) {
                                            let r = p.damaged.get(&(d, block));
                                            let spare = p.candidates.iter().filter(|x| {
                                                !row.contains(&Some(x.node))
                                                    && !r.is_some_and(|r| r.refused.contains(&x.node))
                                                    && !noted.get(&block).is_some_and(|n| n.contains(&x.node))
                                                    && !p.nodes.get(&x.node).is_some_and(|s| s.stats.dead)
                                                    && !r.is_some_and(|r| r.lost_from.contains(&x.node))
                                            }).count();
                                            let lost = row.iter().filter(|x| x.is_none()).count();
                                            prop_assert!(spare < lost, "repair target {t:?} keeps a shard of block {block} though {spare} nodes were free for {lost} lost shards");
                                        }
                                        pending.push((block, *i, *t));
                                    }
                                }
                                a @ Action::Audit { .. } => audits.push(a),
                                Action::Unrecoverable { .. } => {}
                            }
                        }
                    }
                    Op::Outcome(kind) => {
                        if let Some(Action::Audit { block, index, holder, .. }) = audits.pop() {
                            let outcome = match kind {
                                0 => AuditOutcome::Passed,
                                1 => AuditOutcome::Failed(AuditFailure::Missing),
                                _ => AuditOutcome::Unreachable,
                            };
                            p.on_audit(&d, block, index, holder, outcome, now);
                        }
                    }
                    Op::Down(n) => {
                        p.on_node_down(node(n), now);
                        down.insert(node(n));
                    }
                    Op::Up(n) => {
                        // Back: the next scan hears what every live node keeps.
                        p.on_node_up(node(n));
                        down.remove(&node(n));
                        noted = scanned(&disk, &down);
                        p.set_present(&d, noted.iter().flat_map(|(b, ns)| ns.iter().map(|n| (*b, *n))));
                    }
                    Op::RepairOk => {
                        if let Some((b, i, t)) = pending.pop() {
                            p.on_repaired(&d, b, i, t);
                            disk.entry(b).or_default().insert(t);
                        }
                    }
                    Op::RepairWrongNode(n) => {
                        if let Some((b, i, _)) = pending.pop() {
                            p.on_repaired(&d, b, i, node(n));
                        }
                    }
                    Op::RepairFail => {
                        if let Some((b, i, _)) = pending.pop() {
                            p.on_repair_failed(&d, b, i, "lost connection", now);
                        }
                    }
                    Op::Candidates(mask) => {
                        p.set_candidates(c.iter().filter(|x| mask >> (x.node.0[0] % 64) & 1 == 1).copied().collect());
                    }
                    Op::Retrack => {
                        let nobody = NodeId([0; 32]);
                        let map: Vec<Vec<Option<NodeId>>> = p.shard_map(&d).unwrap().to_vec();
                        let full = map.iter().map(|r| r.iter().map(|x| x.unwrap_or(nobody)).collect()).collect();
                        p.track(d, 3, 2, full);
                        for (b, row) in (0u64..).zip(&map) {
                            for (i, x) in (0u8..).zip(row) {
                                if x.is_none() {
                                    p.on_audit(&d, b, i, nobody, AuditOutcome::Failed(AuditFailure::Missing), now);
                                }
                            }
                        }
                        noted = scanned(&disk, &down);
                        // Lists name blocks past the data's end too (a lying peer): ignored.
                        let far = noted.iter().flat_map(|(b, ns)| ns.iter().map(|n| (*b, *n)));
                        p.set_present(&d, far.chain([(1 << 40, node(0))]));
                        prop_assert!(p.present.keys().all(|(_, b)| *b < 6));
                        pending.clear();
                    }
                }
                check_invariants(&p);
            }
        }
    }
}
