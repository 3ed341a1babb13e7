//! A seeded, deterministic simulation of Kademlia lookups against adversarial routing
//! answers, with and without S/Kademlia disjoint lookup paths (Baumgart & Mies 2007).
//!
//! The model, and where it follows libp2p-kad 0.49 (what the node runs):
//!
//! - **Network.** `nodes` nodes with random 256-bit ids. Node `v`'s routing table holds, for
//!   every bucket `b` (peers sharing exactly `b` leading bits with `v`), up to `k` peers
//!   drawn at random from the true network; buckets are built lazily from the sorted id list
//!   (the peers of a bucket are one contiguous range of it) and cached.
//! - **Adversaries.** `round(adversarial_fraction × nodes)` nodes, capped at `nodes − 1` so
//!   at least one honest node holds the values. They collude: asked FIND_NODE for a key,
//!   every adversary answers with the `k` adversaries closest to the key (never itself and
//!   never an honest node), an eclipse attempt that makes each path's closest set look
//!   complete; asked for the value, they pretend not to have it.
//! - **Values.** The value of a key is held by the honest node truly closest to it (the
//!   *target*). A lookup succeeds when it sends a request to the target (which answers
//!   with the value: there are no timeouts or churn); the caller then finishes the query, as
//!   our node does with a quorum of one, so a lookup stops at its first success.
//! - **Initiator.** A random honest node other than the target (when the target is the only
//!   honest node, another node's routing table is used, as if a fresh honest node had joined
//!   at that id). It starts from the `k` closest peers in its own table. Answers never name
//!   the initiator (libp2p drops the requester from `closer_peers`).
//! - **One path** is libp2p-kad's `ClosestPeersIter`, step for step: at most `alpha`
//!   requests in flight; a response *makes progress* if the path knew fewer than `k` peers,
//!   or it names a new peer closer than the `k`-th closest known before it; after `alpha`
//!   responses in a row without progress the path is *stalled* and widens to `k` requests
//!   in flight (progress un-stalls it). A path finishes when its `k` closest non-failed
//!   peers have all answered, or when nothing is left to ask and nothing is in flight.
//! - **Disjoint paths** (`disjoint_paths = d > 1`, see [`PathSplit`]): `d` such paths, each
//!   with parallelism `alpha`, polled in turn; a peer is queried by at most one path and
//!   only the path that queried it learns its answer.
//! - **Time.** Every response takes a uniformly random 10–100 ticks (adversaries answer as
//!   fast as honest nodes); responses are delivered in time order, ties by send order.
//!
//! Randomness comes from ChaCha8 streams of one seed: the network, the lookups' keys and
//! initiators, and the latencies draw from separate streams, so two configurations that
//! differ only in `disjoint_paths` or `split` look up the same keys from the same
//! initiators on the same network.

use std::cmp::Reverse;
use std::collections::btree_map::{BTreeMap, Entry};
use std::collections::{BinaryHeap, HashMap};

use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A 256-bit node id or key, most significant word first; XOR distances use the same type,
/// so comparing two as arrays compares them as 256-bit numbers.
type Key = [u64; 4];

/// The largest network [`simulate`] accepts.
pub const MAX_NODES: usize = 1 << 22;
/// The largest bucket size [`simulate`] accepts.
pub const MAX_K: usize = 1024;
/// The most disjoint paths [`simulate`] accepts.
pub const MAX_PATHS: usize = 64;

/// Shortest simulated response time, in ticks.
const MIN_LATENCY: u64 = 10;
/// Longest simulated response time, in ticks.
const MAX_LATENCY: u64 = 100;

/// ChaCha stream of the network: ids and the adversary set.
const STREAM_NETWORK: u64 = 0;
/// ChaCha stream of the lookups' keys and initiators.
const STREAM_LOOKUPS: u64 = 1;
/// ChaCha stream of the response latencies.
const STREAM_LATENCY: u64 = 2;
/// First ChaCha stream of the routing tables (node `v` uses this plus `v`).
const STREAM_TABLES: u64 = 3;

/// How the initial peers are shared among disjoint paths, and what a path does with a peer
/// that another path has already queried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathSplit {
    /// libp2p-kad 0.49 `ClosestDisjointPeersIter` (`disjoint_query_paths(true)`, where the
    /// number of paths is the query parallelism): every path starts from the same `k`
    /// closest known peers; the first path to pick a peer queries it and alone receives
    /// its answer; another path picking it counts it as answered with no peers.
    #[default]
    Libp2p,
    /// The S/Kademlia paper's split: the initial peers are dealt to the paths round robin,
    /// and a path skips (counts as failed) a peer that another path has already queried.
    RoundRobin,
}

/// Parameters of one simulation run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Nodes in the network (at least 2, at most [`MAX_NODES`]).
    pub nodes: usize,
    /// Fraction of adversarial nodes, in `[0, 1]`; the count is rounded and capped at
    /// `nodes − 1`.
    pub adversarial_fraction: f64,
    /// Bucket size, answer size and the number of closest peers a path must hear from
    /// (Kademlia's `k`, libp2p's `K_VALUE`: 20).
    pub k: usize,
    /// Requests in flight per path (Kademlia's `α`, libp2p's `ALPHA_VALUE`: 3).
    pub alpha: usize,
    /// Disjoint lookup paths; 1 is plain Kademlia.
    pub disjoint_paths: usize,
    /// How disjoint paths share peers (ignored when `disjoint_paths` is 1).
    pub split: PathSplit,
    /// Lookups of random keys to run.
    pub lookups: usize,
    /// Seed of every random choice.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 2000,
            adversarial_fraction: 0.2,
            k: 20,
            alpha: 3,
            disjoint_paths: 1,
            split: PathSplit::Libp2p,
            lookups: 2000,
            seed: 0,
        }
    }
}

/// A configuration [`simulate`] refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimConfigError {
    /// `nodes` is below 2 or above [`MAX_NODES`].
    #[error("nodes must be in 2..={max}, got {nodes}")]
    Nodes {
        /// The configured value.
        nodes: usize,
        /// [`MAX_NODES`].
        max: usize,
    },
    /// `adversarial_fraction` is not a number in `[0, 1]`.
    #[error("adversarial_fraction must be in [0, 1], got {fraction}")]
    Fraction {
        /// The configured value.
        fraction: f64,
    },
    /// `k` is 0 or above [`MAX_K`].
    #[error("k must be in 1..={max}, got {k}")]
    K {
        /// The configured value.
        k: usize,
        /// [`MAX_K`].
        max: usize,
    },
    /// `alpha` is 0.
    #[error("alpha must be at least 1")]
    Alpha,
    /// `disjoint_paths` is 0 or above [`MAX_PATHS`].
    #[error("disjoint_paths must be in 1..={max}, got {paths}")]
    Paths {
        /// The configured value.
        paths: usize,
        /// [`MAX_PATHS`].
        max: usize,
    },
}

impl SimConfig {
    /// Checks every bound [`simulate`] relies on.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        if !(2..=MAX_NODES).contains(&self.nodes) {
            return Err(SimConfigError::Nodes {
                nodes: self.nodes,
                max: MAX_NODES,
            });
        }
        if !(0.0..=1.0).contains(&self.adversarial_fraction) {
            return Err(SimConfigError::Fraction {
                fraction: self.adversarial_fraction,
            });
        }
        if !(1..=MAX_K).contains(&self.k) {
            return Err(SimConfigError::K {
                k: self.k,
                max: MAX_K,
            });
        }
        if self.alpha == 0 {
            return Err(SimConfigError::Alpha);
        }
        if !(1..=MAX_PATHS).contains(&self.disjoint_paths) {
            return Err(SimConfigError::Paths {
                paths: self.disjoint_paths,
                max: MAX_PATHS,
            });
        }
        Ok(())
    }
}

/// What a simulation run measured. Totals are integers so that two runs compare exactly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimReport {
    /// Nodes in the network.
    pub nodes: usize,
    /// Adversarial nodes among them.
    pub adversaries: usize,
    /// Lookups run.
    pub lookups: usize,
    /// Lookups that queried the honest node closest to their key.
    pub succeeded: usize,
    /// Requests sent, over all lookups.
    pub queries: u64,
    /// Requests sent to adversaries, over all lookups.
    pub adversary_queries: u64,
    /// Sum over successful lookups of the target's hop: 1 if the initiator knew it, `h + 1`
    /// if a peer of hop `h` named it.
    pub success_hops: u64,
}

impl SimReport {
    /// Fraction of lookups that succeeded (0 when no lookup ran).
    pub fn success_rate(&self) -> f64 {
        ratio(self.succeeded as f64, self.lookups)
    }

    /// Mean requests sent per lookup.
    pub fn mean_queries(&self) -> f64 {
        ratio(self.queries as f64, self.lookups)
    }

    /// Mean requests sent to adversaries per lookup.
    pub fn mean_adversary_queries(&self) -> f64 {
        ratio(self.adversary_queries as f64, self.lookups)
    }

    /// Mean hop at which successful lookups reached the target.
    pub fn mean_hops(&self) -> f64 {
        ratio(self.success_hops as f64, self.succeeded)
    }
}

fn ratio(num: f64, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num / den as f64
    }
}

/// Runs `cfg.lookups` lookups of random keys on one seeded network and reports how many
/// reached the honest node that holds each key's value.
pub fn simulate(cfg: &SimConfig) -> Result<SimReport, SimConfigError> {
    cfg.validate()?;
    let mut net = Network::new(cfg);
    let mut pick = stream(cfg.seed, STREAM_LOOKUPS);
    let mut latency = stream(cfg.seed, STREAM_LATENCY);
    let mut report = SimReport {
        nodes: net.ids.len(),
        adversaries: net.adversaries.len(),
        lookups: cfg.lookups,
        ..SimReport::default()
    };
    let mut scratch = Scratch::default();
    for _ in 0..cfg.lookups {
        let key: Key = pick.gen();
        let target = net.closest_honest(&key);
        let initiator = net.pick_initiator(target, &mut pick);
        let outcome = run_lookup(
            cfg,
            &mut net,
            &key,
            initiator,
            target,
            &mut latency,
            &mut scratch,
        );
        report.queries += outcome.queries;
        report.adversary_queries += outcome.adversary_queries;
        if let Some(hop) = outcome.target_hop {
            report.succeeded += 1;
            report.success_hops += u64::from(hop);
        }
    }
    Ok(report)
}

fn stream(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

fn distance(a: &Key, b: &Key) -> Key {
    [a[0] ^ b[0], a[1] ^ b[1], a[2] ^ b[2], a[3] ^ b[3]]
}

/// Keeps the `n` closest of `(distance, node)` pairs, sorted closest first.
fn keep_closest(peers: &mut Vec<(Key, u32)>, n: usize) {
    if n == 0 {
        peers.clear();
        return;
    }
    if peers.len() > n {
        peers.select_nth_unstable(n);
        peers.truncate(n);
    }
    peers.sort_unstable();
}

/// The lowest and highest keys whose first `bits` bits equal those of `id`.
fn prefix_bounds(id: &Key, bits: usize) -> (Key, Key) {
    let mut lo = *id;
    let mut hi = *id;
    for (w, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
        let fixed = bits.saturating_sub(w * 64).min(64);
        let mask = if fixed == 0 {
            0
        } else {
            u64::MAX << (64 - fixed)
        };
        *l &= mask;
        *h |= !mask;
    }
    (lo, hi)
}

/// `id` with bit `bit` (0 = most significant) flipped.
fn flip_bit(id: &Key, bit: usize) -> Key {
    let mut out = *id;
    out[bit / 64] ^= 1 << (63 - bit % 64);
    out
}

/// The simulated network: sorted ids, who is adversarial, lazily built routing tables.
struct Network {
    /// Node ids, sorted; a node is its index here.
    ids: Vec<Key>,
    adversarial: Vec<bool>,
    /// Honest nodes, ascending.
    honest: Vec<u32>,
    adversaries: Vec<u32>,
    /// Routing table of each node, built on first use.
    tables: Vec<Option<Box<[u32]>>>,
    k: usize,
    seed: u64,
}

impl Network {
    fn new(cfg: &SimConfig) -> Self {
        let mut rng = stream(cfg.seed, STREAM_NETWORK);
        let mut ids: Vec<Key> = (0..cfg.nodes).map(|_| rng.gen()).collect();
        ids.sort_unstable();
        ids.dedup();
        let n = ids.len();
        let wanted = (cfg.adversarial_fraction * n as f64).round() as usize;
        let count = wanted.min(n.saturating_sub(1));
        let mut adversarial = vec![false; n];
        for i in index::sample(&mut rng, n, count) {
            adversarial[i] = true;
        }
        let (mut honest, mut adversaries) = (Vec::new(), Vec::new());
        for (i, &bad) in adversarial.iter().enumerate() {
            if bad {
                adversaries.push(i as u32);
            } else {
                honest.push(i as u32);
            }
        }
        Self {
            ids,
            adversarial,
            honest,
            adversaries,
            tables: vec![None; n],
            k: cfg.k,
            seed: cfg.seed,
        }
    }

    fn id(&self, v: u32) -> &Key {
        &self.ids[v as usize]
    }

    fn is_adversary(&self, v: u32) -> bool {
        self.adversarial[v as usize]
    }

    /// The honest node closest to `key` (there is always one: see [`Network::new`]).
    fn closest_honest(&self, key: &Key) -> u32 {
        self.honest
            .iter()
            .map(|&v| (distance(self.id(v), key), v))
            .min()
            .map_or(0, |(_, v)| v)
    }

    /// A random honest node other than `target`, or any other node if `target` is the only
    /// honest one.
    fn pick_initiator(&self, target: u32, rng: &mut ChaCha8Rng) -> u32 {
        if self.honest.len() >= 2 {
            let at = self.honest.binary_search(&target).unwrap_or(0);
            let mut i = rng.gen_range(0..self.honest.len() - 1);
            if i >= at {
                i += 1;
            }
            self.honest[i]
        } else {
            let mut v = rng.gen_range(0..self.ids.len() as u32 - 1);
            if v >= target {
                v += 1;
            }
            v
        }
    }

    /// The `k` adversaries closest to `key`, plus one so that each can leave itself out.
    fn colluding_answer(&self, key: &Key, out: &mut Vec<(Key, u32)>) {
        out.clear();
        out.extend(
            self.adversaries
                .iter()
                .map(|&v| (distance(self.id(v), key), v)),
        );
        keep_closest(out, self.k + 1);
    }

    /// The `k` peers closest to `key` in `v`'s routing table, leaving out `requester`.
    fn closest_known(&mut self, v: u32, key: &Key, requester: u32, out: &mut Vec<(Key, u32)>) {
        let slot = v as usize;
        if self.tables[slot].is_none() {
            self.tables[slot] = Some(self.build_table(v));
        }
        out.clear();
        if let Some(table) = self.tables[slot].as_deref() {
            out.extend(
                table
                    .iter()
                    .filter(|&&p| p != requester)
                    .map(|&p| (distance(&self.ids[p as usize], key), p)),
            );
        }
        keep_closest(out, self.k);
    }

    /// Up to `k` random peers from each bucket of `v`: bucket `b` holds the nodes that share
    /// exactly `b` leading bits with `v`, a contiguous range of the sorted ids.
    fn build_table(&self, v: u32) -> Box<[u32]> {
        let mut rng = stream(self.seed, STREAM_TABLES.wrapping_add(u64::from(v)));
        let own = *self.id(v);
        let range = |id: &Key, bits: usize| {
            let (lo, hi) = prefix_bounds(id, bits);
            let start = self.ids.partition_point(|x| *x < lo);
            let end = self.ids.partition_point(|x| *x <= hi);
            start..end
        };
        let mut table = Vec::new();
        for bucket in 0..256 {
            let peers = range(&flip_bit(&own, bucket), bucket + 1);
            if peers.len() <= self.k {
                table.extend(peers.map(|p| p as u32));
            } else {
                let start = peers.start;
                table.extend(
                    index::sample(&mut rng, peers.len(), self.k)
                        .into_iter()
                        .map(|i| (start + i) as u32),
                );
            }
            // Deeper buckets are empty once `v` is alone under its next prefix.
            if range(&own, bucket + 1).len() <= 1 {
                break;
            }
        }
        table.into_boxed_slice()
    }
}

/// Buffers reused across lookups.
#[derive(Default)]
struct Scratch {
    initial: Vec<(Key, u32)>,
    answer: Vec<(Key, u32)>,
    colluding: Vec<(Key, u32)>,
}

/// What one lookup did.
struct Outcome {
    queries: u64,
    adversary_queries: u64,
    /// The hop at which the target was queried, if it was.
    target_hop: Option<u32>,
}

/// One in-flight request: (arrival tick, send order, node, its distance to the key).
type InFlight = Reverse<(u64, u64, u32, Key)>;

fn run_lookup(
    cfg: &SimConfig,
    net: &mut Network,
    key: &Key,
    initiator: u32,
    target: u32,
    latency: &mut ChaCha8Rng,
    scratch: &mut Scratch,
) -> Outcome {
    net.closest_known(initiator, key, initiator, &mut scratch.initial);
    net.colluding_answer(key, &mut scratch.colluding);
    let mut lookup = Lookup::new(cfg, &scratch.initial);
    let mut in_flight: BinaryHeap<InFlight> = BinaryHeap::new();
    let mut outcome = Outcome {
        queries: 0,
        adversary_queries: 0,
        target_hop: None,
    };
    let (mut now, mut sent) = (0u64, 0u64);
    loop {
        while let Some(contact) = lookup.next() {
            outcome.queries += 1;
            if net.is_adversary(contact.node) {
                outcome.adversary_queries += 1;
            }
            if contact.node == target {
                // The target answers with the value; the caller finishes the query.
                outcome.target_hop = Some(contact.hop);
                return outcome;
            }
            let arrival = now + latency.gen_range(MIN_LATENCY..=MAX_LATENCY);
            in_flight.push(Reverse((arrival, sent, contact.node, contact.dist)));
            sent += 1;
        }
        if lookup.is_finished() {
            return outcome;
        }
        let Some(Reverse((at, _, node, dist))) = in_flight.pop() else {
            // Unreachable: a path that is not finished waits on a request in flight.
            return outcome;
        };
        now = at;
        if net.is_adversary(node) {
            scratch.answer.clear();
            scratch.answer.extend(
                scratch
                    .colluding
                    .iter()
                    .filter(|&&(_, p)| p != node && p != initiator)
                    .take(cfg.k),
            );
        } else {
            net.closest_known(node, key, initiator, &mut scratch.answer);
        }
        lookup.on_success(node, &dist, &scratch.answer);
    }
}

/// libp2p-kad's `PeerState`, less timeouts (no node is ever unresponsive here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerState {
    NotContacted,
    Waiting,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Peer {
    node: u32,
    state: PeerState,
    /// 1 for a peer the initiator knew, `h + 1` for one named by a peer of hop `h`.
    hop: u32,
}

/// libp2p-kad's iterator state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IterState {
    Iterating { no_progress: usize },
    Stalled,
    Finished,
}

/// A peer a path wants to query.
#[derive(Debug, Clone, Copy)]
struct Contact {
    node: u32,
    dist: Key,
    hop: u32,
}

/// What a path's `next` says.
#[derive(Debug, Clone, Copy)]
enum PathStep {
    Contact(Contact),
    Waiting,
    AtCapacity,
    Finished,
}

/// One lookup path: libp2p-kad 0.49 `ClosestPeersIter`, keyed by distance to the key.
#[derive(Debug)]
struct ClosestPeers {
    k: usize,
    alpha: usize,
    state: IterState,
    peers: BTreeMap<Key, Peer>,
    num_waiting: usize,
}

impl ClosestPeers {
    fn new(k: usize, alpha: usize, known: impl Iterator<Item = (Key, u32)>) -> Self {
        let peers = known
            .take(k)
            .map(|(dist, node)| {
                let state = PeerState::NotContacted;
                (
                    dist,
                    Peer {
                        node,
                        state,
                        hop: 1,
                    },
                )
            })
            .collect();
        Self {
            k,
            alpha,
            state: IterState::Iterating { no_progress: 0 },
            peers,
            num_waiting: 0,
        }
    }

    /// `ClosestPeersIter::on_success`: records the answer of a peer this path is waiting
    /// on and returns whether it was one.
    fn on_success(&mut self, dist: &Key, closer: &[(Key, u32)]) -> bool {
        if self.state == IterState::Finished {
            return false;
        }
        let hop = match self.peers.get_mut(dist) {
            Some(peer) if peer.state == PeerState::Waiting => {
                self.num_waiting -= 1;
                peer.state = PeerState::Succeeded;
                peer.hop
            }
            _ => return false,
        };
        // Progress: the path knew fewer than k peers, or a new peer is closer than the
        // k-th closest known before this answer.
        let cur_range = self
            .peers
            .keys()
            .nth(self.k - 1)
            .or_else(|| self.peers.keys().next_back())
            .copied()
            .unwrap_or(*dist);
        let mut progress = self.peers.len() < self.k;
        for &(d, node) in closer {
            let first_insert = match self.peers.entry(d) {
                Entry::Occupied(_) => false,
                Entry::Vacant(e) => {
                    e.insert(Peer {
                        node,
                        state: PeerState::NotContacted,
                        hop: hop + 1,
                    });
                    true
                }
            };
            progress = (first_insert && d < cur_range) || progress;
        }
        self.state = match self.state {
            IterState::Iterating { no_progress } => {
                let no_progress = if progress { 0 } else { no_progress + 1 };
                if no_progress >= self.alpha {
                    IterState::Stalled
                } else {
                    IterState::Iterating { no_progress }
                }
            }
            IterState::Stalled if progress => IterState::Iterating { no_progress: 0 },
            other => other,
        };
        true
    }

    /// `ClosestPeersIter::on_failure`.
    fn on_failure(&mut self, dist: &Key) -> bool {
        if self.state == IterState::Finished {
            return false;
        }
        match self.peers.get_mut(dist) {
            Some(peer) if peer.state == PeerState::Waiting => {
                self.num_waiting -= 1;
                peer.state = PeerState::Failed;
                true
            }
            _ => false,
        }
    }

    fn at_capacity(&self) -> bool {
        match self.state {
            IterState::Stalled => self.num_waiting >= self.k.max(self.alpha),
            IterState::Iterating { .. } => self.num_waiting >= self.alpha,
            IterState::Finished => true,
        }
    }

    /// `ClosestPeersIter::next`: the closest peer not yet contacted, unless the path is at
    /// capacity or done (its k closest non-failed peers have all answered).
    fn next(&mut self) -> PathStep {
        if self.state == IterState::Finished {
            return PathStep::Finished;
        }
        let mut answered = Some(0usize);
        let at_capacity = self.at_capacity();
        for (dist, peer) in self.peers.iter_mut() {
            match peer.state {
                PeerState::Waiting => {
                    if at_capacity {
                        return PathStep::AtCapacity;
                    }
                    // A closer peer is still pending: the path cannot finish yet.
                    answered = None;
                }
                PeerState::Succeeded => {
                    if let Some(count) = answered.as_mut() {
                        *count += 1;
                        if *count >= self.k {
                            self.state = IterState::Finished;
                            return PathStep::Finished;
                        }
                    }
                }
                PeerState::NotContacted => {
                    if at_capacity {
                        return PathStep::AtCapacity;
                    }
                    peer.state = PeerState::Waiting;
                    self.num_waiting += 1;
                    return PathStep::Contact(Contact {
                        node: peer.node,
                        dist: *dist,
                        hop: peer.hop,
                    });
                }
                PeerState::Failed => {}
            }
        }
        if self.num_waiting > 0 {
            PathStep::Waiting
        } else {
            self.state = IterState::Finished;
            PathStep::Finished
        }
    }

    fn is_finished(&self) -> bool {
        self.state == IterState::Finished
    }
}

/// Who queried a peer first, and whether it has answered.
#[derive(Debug, Clone, Copy)]
struct Claim {
    path: usize,
    answered: bool,
}

/// The lookup's paths: libp2p-kad 0.49 `ClosestDisjointPeersIter` (one path is plain
/// Kademlia, as the peers never collide), or the round-robin split.
#[derive(Debug)]
struct Lookup {
    paths: Vec<ClosestPeers>,
    split: PathSplit,
    /// The path `next` polls first.
    turn: usize,
    claims: HashMap<u32, Claim>,
}

impl Lookup {
    fn new(cfg: &SimConfig, initial: &[(Key, u32)]) -> Self {
        let d = cfg.disjoint_paths;
        let initial = &initial[..initial.len().min(cfg.k)];
        let paths = (0..d)
            .map(|i| match cfg.split {
                PathSplit::Libp2p => ClosestPeers::new(cfg.k, cfg.alpha, initial.iter().copied()),
                PathSplit::RoundRobin => {
                    ClosestPeers::new(cfg.k, cfg.alpha, initial.iter().copied().skip(i).step_by(d))
                }
            })
            .collect();
        Self {
            paths,
            split: cfg.split,
            turn: 0,
            claims: HashMap::new(),
        }
    }

    /// `ClosestDisjointPeersIter::next`: polls each path once, starting after the path
    /// polled first last time, and returns the first peer that no path has queried yet.
    fn next(&mut self) -> Option<Contact> {
        for _ in 0..self.paths.len() {
            let i = self.turn;
            self.turn = (self.turn + 1) % self.paths.len();
            let path = &mut self.paths[i];
            while let PathStep::Contact(contact) = path.next() {
                match self.claims.get(&contact.node) {
                    None => {
                        self.claims.insert(
                            contact.node,
                            Claim {
                                path: i,
                                answered: false,
                            },
                        );
                        return Some(contact);
                    }
                    // libp2p: wait for the other path's request, then count the peer as
                    // answered with nothing (its peers go to the path that asked).
                    Some(claim) if self.split == PathSplit::Libp2p => {
                        if claim.answered {
                            path.on_success(&contact.dist, &[]);
                        }
                    }
                    // S/Kademlia round robin: another path's peer is not used.
                    Some(_) => {
                        path.on_failure(&contact.dist);
                    }
                }
            }
        }
        None
    }

    /// `ClosestDisjointPeersIter::on_success`: the answer goes to the path that asked;
    /// under libp2p's split, paths waiting on the same peer hear it answered with nothing.
    fn on_success(&mut self, node: u32, dist: &Key, closer: &[(Key, u32)]) {
        let Some(claim) = self.claims.get_mut(&node) else {
            return;
        };
        if let Some(path) = self.paths.get_mut(claim.path) {
            if path.on_success(dist, closer) {
                claim.answered = true;
            }
        }
        if self.split == PathSplit::Libp2p {
            for (i, path) in self.paths.iter_mut().enumerate() {
                if i != claim.path {
                    path.on_success(dist, &[]);
                }
            }
        }
    }

    fn is_finished(&self) -> bool {
        self.paths.iter().all(ClosestPeers::is_finished)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(nodes: usize, fraction: f64, d: usize) -> SimConfig {
        SimConfig {
            nodes,
            adversarial_fraction: fraction,
            disjoint_paths: d,
            lookups: 50,
            seed: 7,
            ..SimConfig::default()
        }
    }

    fn common_prefix(a: &Key, b: &Key) -> usize {
        let d = distance(a, b);
        let mut bits = 0;
        for w in d {
            bits += w.leading_zeros() as usize;
            if w != 0 {
                break;
            }
        }
        bits
    }

    #[test]
    fn prefix_bounds_fix_leading_bits() {
        let id = [u64::MAX, 0, u64::MAX, 0];
        assert_eq!(prefix_bounds(&id, 0), ([0; 4], [u64::MAX; 4]));
        assert_eq!(prefix_bounds(&id, 256), (id, id));
        let (lo, hi) = prefix_bounds(&id, 68);
        assert_eq!(lo, [u64::MAX, 0, 0, 0]);
        assert_eq!(hi, [u64::MAX, (1u64 << 60) - 1, u64::MAX, u64::MAX]);
        assert_eq!(flip_bit(&[0; 4], 65), [0, 1 << 62, 0, 0]);
    }

    /// Every table entry sits in its bucket, and buckets of at most k nodes are complete.
    #[test]
    fn routing_tables_follow_buckets() {
        let c = cfg(300, 0.0, 1);
        let mut net = Network::new(&c);
        for v in [0u32, 17, 150, 299] {
            let table = net.build_table(v);
            let own = *net.id(v);
            let mut per_bucket = [0usize; 257];
            for &p in table.iter() {
                assert_ne!(p, v);
                per_bucket[common_prefix(&own, net.id(p))] += 1;
            }
            let mut truth = [0usize; 257];
            for (p, id) in net.ids.iter().enumerate() {
                if p != v as usize {
                    truth[common_prefix(&own, id)] += 1;
                }
            }
            for b in 0..257 {
                assert_eq!(per_bucket[b], truth[b].min(c.k), "node {v} bucket {b}");
            }
            let mut out = Vec::new();
            net.closest_known(v, &[0; 4], u32::MAX, &mut out);
            assert_eq!(out.len(), c.k);
            assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }

    #[test]
    fn adversaries_answer_with_adversaries_closest_to_the_key() {
        let net = Network::new(&cfg(200, 0.3, 1));
        assert_eq!(net.adversaries.len(), 60);
        let key = [1, 2, 3, 4];
        let mut answer = Vec::new();
        net.colluding_answer(&key, &mut answer);
        assert_eq!(answer.len(), 21);
        assert!(answer.iter().all(|&(_, p)| net.is_adversary(p)));
        let worst = answer[20].0;
        let closer_outside = net
            .adversaries
            .iter()
            .filter(|&&p| distance(net.id(p), &key) < worst)
            .count();
        assert_eq!(closer_outside, 20);
    }

    /// A path finishes once its k closest peers have answered, even while a farther one
    /// is still in flight.
    #[test]
    fn path_finishes_when_k_closest_answered() -> Result<(), String> {
        let known = [([0, 0, 0, 1], 1u32), ([0, 0, 0, 2], 2)];
        let mut path = ClosestPeers::new(2, 3, known.into_iter());
        let mut asked = Vec::new();
        while let PathStep::Contact(c) = path.next() {
            asked.push(c);
        }
        assert_eq!(asked.len(), 2);
        assert!(path.on_success(&asked[0].dist, &[([0, 0, 0, 9], 9)]));
        let PathStep::Contact(far) = path.next() else {
            return Err("the new peer is not asked".into());
        };
        assert_eq!((far.node, far.hop), (9, 2));
        assert!(path.on_success(&asked[1].dist, &[]));
        assert!(matches!(path.next(), PathStep::Finished));
        assert!(!path.on_success(&far.dist, &[]));
        Ok(())
    }

    /// Without progress for alpha answers, a path stalls and widens to k in flight.
    #[test]
    fn stalled_path_widens_to_k() {
        let known: Vec<(Key, u32)> = (0..30u32).map(|i| ([0, 0, 0, u64::from(i)], i)).collect();
        let mut path = ClosestPeers::new(20, 3, known.into_iter());
        let mut first = Vec::new();
        while let PathStep::Contact(c) = path.next() {
            first.push(c);
        }
        assert_eq!(first.len(), 3);
        for c in &first {
            assert!(path.on_success(&c.dist, &[]));
        }
        assert_eq!(path.state, IterState::Stalled);
        let mut widened = 0;
        while let PathStep::Contact(_) = path.next() {
            widened += 1;
        }
        // Iterating, it would have sent 3; stalled, it sends all 17 it has left (≤ k).
        assert_eq!(widened, 17);
    }

    /// Whatever the answers, no peer is queried twice, under either split.
    #[test]
    fn paths_never_share_a_peer() {
        for split in [PathSplit::Libp2p, PathSplit::RoundRobin] {
            let c = SimConfig {
                disjoint_paths: 3,
                split,
                ..SimConfig::default()
            };
            let key = |n: u32| [0, 0, 0, u64::from(n)];
            let initial: Vec<(Key, u32)> = (0..20).map(|n| (key(n), n)).collect();
            let mut lookup = Lookup::new(&c, &initial);
            let mut queried = std::collections::HashSet::new();
            let mut pending = std::collections::VecDeque::new();
            loop {
                while let Some(contact) = lookup.next() {
                    assert!(
                        queried.insert(contact.node),
                        "{split:?}: {} twice",
                        contact.node
                    );
                    pending.push_back(contact);
                }
                let Some(contact) = pending.pop_front() else {
                    break;
                };
                // Each answer names peers already queried and new ones.
                let n = contact.node;
                let answer: Vec<(Key, u32)> = [n / 2, n + 1, n + 7, 2 * n + 3]
                    .map(|p| (key(p), p))
                    .to_vec();
                lookup.on_success(n, &contact.dist, &answer);
            }
            assert!(lookup.is_finished(), "{split:?}");
            assert!(queried.len() > 20, "{split:?}: answers were followed");
        }
    }

    #[test]
    fn invalid_configs_are_refused() {
        let bad = [
            SimConfig {
                nodes: 1,
                ..SimConfig::default()
            },
            SimConfig {
                adversarial_fraction: f64::NAN,
                ..SimConfig::default()
            },
            SimConfig {
                adversarial_fraction: 1.5,
                ..SimConfig::default()
            },
            SimConfig {
                k: 0,
                ..SimConfig::default()
            },
            SimConfig {
                alpha: 0,
                ..SimConfig::default()
            },
            SimConfig {
                disjoint_paths: 0,
                ..SimConfig::default()
            },
        ];
        for c in bad {
            assert!(simulate(&c).is_err(), "{c:?}");
        }
    }
}
