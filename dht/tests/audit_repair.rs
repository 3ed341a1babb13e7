//! End to end through the pure DHT pieces: real erasure-coded shards on simulated storage
//! nodes, audits answered with BLAKE3 path proofs sent through their codec, repairs rebuilt
//! from k survivors, and the data record pages kept in step with the planner's shard map.
//!
//! Byzantine holders: one flips a bit in every shard it holds, one deletes some of its
//! shards, one goes silent; with k = 3 of 6 every block survives even all three. A negative control runs the same network with a verifier that
//! accepts every proof and shows the corruption then goes unnoticed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use crypto_accel::{ChunkId, DataId, Decode, Encode, Erasure, Hash};
use dht::planner::{place, Action, AuditFailure, AuditOutcome, Candidate, Planner, PlannerConfig};
use dht::proof::{prove, verify, AuditProof};
use dht::record::{DataRecord, NodeId, Subnet};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const K: u8 = 3;
const M: u8 = 3;
const BLOCKS: u64 = 12;
const NODES: u32 = 16;
const PERIOD: u64 = 10_000;

fn node(i: u32) -> NodeId {
    NodeId(Hash::domain("audit repair test node", &i.to_le_bytes()).0)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verifier {
    Real,
    /// Accepts every answer without checking it.
    Blind,
}

struct Network {
    data: DataId,
    erasure: Erasure,
    /// Content id of every shard: `ids[b][i]`.
    ids: Vec<Vec<ChunkId>>,
    /// What each node stores.
    stores: BTreeMap<NodeId, BTreeMap<ChunkId, Vec<u8>>>,
    silent: BTreeSet<NodeId>,
    planner: Planner,
    pages: Vec<DataRecord>,
    verifier: Verifier,
    now: u64,
    unrecoverable: Vec<Action>,
}

impl Network {
    fn new(seed: u64, verifier: Verifier) -> Network {
        let data = DataId(Hash::of(b"sensor stream 7"));
        let erasure = Erasure::new(usize::from(K), usize::from(M)).unwrap();
        let candidates: Vec<Candidate> = (0..NODES)
            .map(|i| Candidate {
                node: node(i),
                subnet: Some(Subnet::of(IpAddr::V4(Ipv4Addr::new(10, 0, i as u8, 1)))),
            })
            .collect();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut stores: BTreeMap<NodeId, BTreeMap<ChunkId, Vec<u8>>> = BTreeMap::new();
        let mut ids = Vec::new();
        let mut map = Vec::new();
        let all: Vec<u8> = (0..K + M).collect();
        for b in 0..BLOCKS {
            let len = rng.gen_range(5_000..40_000);
            let block: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let shards = erasure.split(0, b, &block).unwrap();
            let holders = place(&data, b, &all, &candidates, &[]).unwrap();
            ids.push(shards.iter().map(|s| ChunkId::of(s)).collect());
            for (shard, holder) in shards.into_iter().zip(&holders) {
                stores
                    .entry(*holder)
                    .or_default()
                    .insert(ChunkId::of(&shard), shard);
            }
            map.push(holders);
        }
        let pages = DataRecord::pages_from_map(data, 1, K, M, 4, &map, &[node(0)]).unwrap();
        let mut planner = Planner::new(
            PlannerConfig {
                audit_period_ms: PERIOD,
                ..PlannerConfig::default()
            },
            seed,
        );
        planner.set_candidates(candidates);
        planner.track(data, K, M, map);
        Network {
            data,
            erasure,
            ids,
            stores,
            silent: BTreeSet::new(),
            planner,
            pages,
            verifier,
            now: 0,
            unrecoverable: Vec::new(),
        }
    }

    fn held_by(&self, n: NodeId) -> Vec<(u64, u8)> {
        let mut out = Vec::new();
        for (b, row) in (0u64..).zip(self.planner.shard_map(&self.data).unwrap()) {
            for (i, h) in (0u8..).zip(row) {
                if *h == Some(n) {
                    out.push((b, i));
                }
            }
        }
        out
    }

    /// The holder's answer to an audit, as the shard protocol would carry it.
    fn answer(&self, block: u64, index: u8, holder: NodeId, nonce: u64) -> AuditOutcome {
        if self.silent.contains(&holder) {
            return AuditOutcome::Unreachable;
        }
        let id = self.ids[block as usize][usize::from(index)];
        let Some(shard) = self.stores.get(&holder).and_then(|s| s.get(&id)) else {
            return AuditOutcome::Failed(AuditFailure::Missing);
        };
        let wire = prove(shard, nonce).unwrap().to_bytes();
        let proof = match AuditProof::from_bytes(&wire) {
            Ok(p) => p,
            Err(e) => return AuditOutcome::Failed(AuditFailure::BadProof(e.to_string())),
        };
        match (self.verifier, verify(&id, nonce, &proof)) {
            (Verifier::Blind, _) | (Verifier::Real, Ok(())) => AuditOutcome::Passed,
            (Verifier::Real, Err(e)) => AuditOutcome::Failed(AuditFailure::BadProof(e.to_string())),
        }
    }

    /// Rebuilds the target shards from sources whose bytes still match their ids.
    fn repair(&mut self, block: u64, targets: &[(u8, NodeId)], sources: &[(u8, NodeId)]) {
        let ids = &self.ids[block as usize];
        let mut slots: Vec<Option<&[u8]>> = vec![None; usize::from(K + M)];
        for (i, n) in sources {
            if self.silent.contains(n) {
                continue;
            }
            let id = ids[usize::from(*i)];
            if let Some(s) = self.stores.get(n).and_then(|s| s.get(&id)) {
                if ChunkId::of(s) == id {
                    slots[usize::from(*i)] = Some(s);
                }
            }
        }
        let rebuilt = if slots.iter().flatten().count() >= usize::from(K) {
            self.erasure
                .join(&slots)
                .and_then(|bytes| self.erasure.split(0, block, &bytes))
                .ok()
        } else {
            None
        };
        for (i, target) in targets {
            match &rebuilt {
                Some(shards) => {
                    let shard = shards[usize::from(*i)].clone();
                    assert_eq!(ChunkId::of(&shard), ids[usize::from(*i)], "rebuilt shard");
                    self.stores
                        .entry(*target)
                        .or_default()
                        .insert(ChunkId::of(&shard), shard);
                    self.planner.on_repaired(&self.data, block, *i, *target);
                }
                None => self.planner.on_repair_failed(
                    &self.data,
                    block,
                    *i,
                    "fewer than k good sources",
                    self.now,
                ),
            }
        }
    }

    /// Brings the record pages in line with the shard map, bumping the version on change,
    /// and checks they survive their codec.
    fn sync_record(&mut self) {
        let map = self.planner.shard_map(&self.data).unwrap().to_vec();
        for page in &mut self.pages {
            let mut changed = false;
            for b in page.first_block()..page.end_block() {
                for i in 0..K + M {
                    let want = map[b as usize][usize::from(i)];
                    if page.holder(b, i) != want {
                        page.set_holder(b, i, want).unwrap();
                        changed = true;
                    }
                }
            }
            if changed {
                page.version += 1;
            }
            let bytes = page.to_record_bytes().unwrap();
            assert_eq!(&DataRecord::from_bytes(&bytes).unwrap(), page);
        }
    }

    fn round(&mut self) {
        let actions = self.planner.poll(self.now);
        for a in actions {
            match a {
                Action::Audit {
                    data,
                    block,
                    index,
                    holder,
                    nonce,
                } => {
                    let outcome = self.answer(block, index, holder, nonce);
                    self.planner
                        .on_audit(&data, block, index, holder, outcome, self.now);
                }
                Action::Repair {
                    block,
                    targets,
                    sources,
                    ..
                } => self.repair(block, &targets, &sources),
                a @ Action::Unrecoverable { .. } => self.unrecoverable.push(a),
            }
        }
        self.sync_record();
        self.now += PERIOD;
    }

    /// Every shard the map names is stored, intact, on its holder; no node twice per block.
    fn check_map_is_true(&self) {
        for (b, row) in self
            .planner
            .shard_map(&self.data)
            .unwrap()
            .iter()
            .enumerate()
        {
            let live: Vec<NodeId> = row.iter().flatten().copied().collect();
            assert_eq!(
                live.len(),
                live.iter().collect::<BTreeSet<_>>().len(),
                "block {b} names a node twice"
            );
            for (i, h) in row.iter().enumerate() {
                let h = h.unwrap_or_else(|| panic!("block {b} shard {i} still lost"));
                let id = self.ids[b][i];
                let s = &self.stores[&h][&id];
                assert_eq!(ChunkId::of(s), id, "block {b} shard {i} on {h}");
            }
        }
    }
}

/// Flips one bit in every shard `n` stores.
fn corrupt_all(net: &mut Network, n: NodeId) -> usize {
    let store = net.stores.get_mut(&n).unwrap();
    for shard in store.values_mut() {
        let at = shard.len() / 2;
        shard[at] ^= 0x10;
    }
    store.len()
}

/// Deletes every other shard `n` stores; returns how many.
fn delete_half(net: &mut Network, n: NodeId) -> usize {
    let store = net.stores.get_mut(&n).unwrap();
    let gone: Vec<ChunkId> = store.keys().step_by(2).copied().collect();
    for id in &gone {
        store.remove(id);
    }
    gone.len()
}

/// The three byzantine holders: the ones holding most shards, so each matters.
fn byzantine(net: &Network) -> (NodeId, NodeId, NodeId) {
    let mut by_load: Vec<(usize, NodeId)> = (0..NODES)
        .map(|i| (net.held_by(node(i)).len(), node(i)))
        .collect();
    by_load.sort();
    let n = by_load.len();
    (by_load[n - 1].1, by_load[n - 2].1, by_load[n - 3].1)
}

#[test]
fn corrupt_deleting_and_silent_holders_are_caught_and_repaired() {
    for seed in [1u64, 2, 3] {
        let mut net = Network::new(seed, Verifier::Real);
        net.check_map_is_true();
        let (flipper, deleter, sleeper) = byzantine(&net);
        assert!(corrupt_all(&mut net, flipper) >= 4);
        let deleted = delete_half(&mut net, deleter);
        assert!(deleted >= 2);
        net.silent.insert(sleeper);
        let sleeper_held = net.held_by(sleeper).len();

        // Round 1 catches the bit flipper (every audit fails); round 2 sweeps it; three
        // silent rounds kill the sleeper; the rest are repairs and catching the deleter.
        for _ in 0..30 {
            net.round();
        }
        assert!(
            net.planner.damaged().is_empty(),
            "seed {seed}: {:?}",
            net.planner.damaged()
        );
        assert!(
            net.held_by(flipper).is_empty(),
            "seed {seed}: flipper kept shards"
        );
        assert!(
            net.held_by(sleeper).is_empty(),
            "seed {seed}: sleeper kept shards"
        );
        let stats: BTreeMap<NodeId, _> = net.planner.holder_stats().into_iter().collect();
        assert!(stats[&flipper].failed >= 1);
        assert!(stats[&flipper]
            .last_failure
            .as_deref()
            .is_some_and(|f| f.starts_with("bad proof: ")));
        assert!(!stats[&flipper].dead);
        assert!(stats[&sleeper].dead);
        assert!(stats[&sleeper].unreachable >= 3);
        assert!(sleeper_held > 0);
        // The deleter keeps only what it still has; every deleted shard was found.
        for (b, i) in net.held_by(deleter) {
            let id = net.ids[b as usize][usize::from(i)];
            assert!(net.stores[&deleter].contains_key(&id));
        }
        assert_eq!(
            stats[&deleter].last_failure.as_deref(),
            Some("shard missing")
        );
        assert!(net.unrecoverable.is_empty());
        net.check_map_is_true();
        // The record pages say the same as the map and were bumped by the repairs.
        let page = &net.pages[0];
        assert!(page.version > 1);
        for b in 0..BLOCKS {
            for i in 0..K + M {
                assert_eq!(
                    page.holder(b, i),
                    net.planner.shard_map(&net.data).unwrap()[b as usize][usize::from(i)]
                );
            }
        }
    }
}

#[test]
fn a_blind_verifier_lets_corruption_stand() {
    let mut net = Network::new(1, Verifier::Blind);
    let (flipper, _, _) = byzantine(&net);
    let held = net.held_by(flipper).len();
    corrupt_all(&mut net, flipper);
    for _ in 0..10 {
        net.round();
    }
    // Without proof checks the flipper keeps every slot, holding bytes that match nothing.
    assert_eq!(net.held_by(flipper).len(), held);
    let (b, i) = net.held_by(flipper)[0];
    let id = net.ids[b as usize][usize::from(i)];
    assert_ne!(ChunkId::of(&net.stores[&flipper][&id]), id);
}
