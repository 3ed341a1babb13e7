//! Audits and repair of the data a storage node coordinates.
//!
//! Every data item has one coordinator: the live RNode (a storage node holding the RNode
//! deposit) whose key is XOR-closest to the data id among those that keep its manifest
//! (every holder does, so when the coordinator dies the next closest takes over); repaired
//! shards go to RNodes too. The coordinator learns the shard map by asking every storage node
//! what it holds, feeds it to the pure [`Planner`], and carries out what `poll` decides:
//! audit challenges (a random 1 KiB segment with its BLAKE3 path, checked against the
//! shard's content id), and repairs (fetch k surviving shards, rebuild the lost ones,
//! store and commit them on new nodes chosen by XOR distance, publish a new version of the
//! DHT record). Results are kept for `/storage` and `/metrics`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crypto_accel::{ChunkId, DataId, Decode, Encode};
use dht::planner::{Action, AuditFailure, AuditOutcome, Candidate, Planner, PlannerConfig};
use dht::record::{DataRecord, NodeId, SignedPage, Subnet};
use dht::wire::{ShardRequest, ShardResponse};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use super::config::now_ms;
use super::dfs::{RECORD_QUORUM, RECORD_WINDOW};
use super::lock;
use super::net::{NetCmd, NetStats};
use super::storage::StorageService;
use crate::manifest::Manifest;

/// How often the coordinator re-reads which data it coordinates and who holds what.
const RESCAN: Duration = Duration::from_secs(15);
/// The soonest a rescan follows the previous one when a dead node connects again.
const EARLY_RESCAN: Duration = Duration::from_secs(2);
/// How long a node runs before it coordinates anything (it learns its peers first).
const STARTUP_GRACE: Duration = Duration::from_secs(20);
/// The placeholder holder of a shard nobody reports (never a real key: not a curve point
/// anyone holds the secret of).
const NOBODY: NodeId = NodeId([0; 32]);
/// How long an audit, probe or holdings query may take.
const QUICK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often audit results go on chain (they count in the holders' RPT).
const REPORT_EVERY: Duration = Duration::from_secs(30);
/// Blocks a poll may hand out for repair at once. Each round trip of a repair (fetch k
/// survivors, store, commit) costs about the same whether it carries one block or many, so
/// rounds are wide; [`REPAIR_WAVE_BYTES`] bounds what one wave holds in memory.
const REPAIR_BATCH: usize = 32;
/// Most shard bytes one repair wave fetches (k survivors per block): 32 blocks of 1 MiB
/// fit in one wave; blocks of 64 MiB go one at a time.
const REPAIR_WAVE_BYTES: u64 = 64 << 20;
/// How long a node's answer to "do you keep this manifest?" is trusted.
const KEEPER_TTL: Duration = Duration::from_secs(600);
/// How long a repair transfer may take.
const REPAIR_TIMEOUT: Duration = Duration::from_secs(10);

/// Data items whose superseded shards one pass of `release_superseded` looks for (their
/// record pages are looked up together: see `Coordinator::newest_pages`).
const RELEASE_ITEMS: usize = 16;
/// Record pages a scan looks up to fill the maps of data it takes over (see
/// [`seed_from_record`]); data needing more waits for a later scan.
const SEED_PAGES_PER_SCAN: usize = 8 * RECORD_WINDOW;
/// A record lookup that has [`RECORD_QUORUM`] copies of every page stops after this long.
const RECORD_GRACE: Duration = Duration::from_secs(1);

/// Most records published per second for maps that moved outside repairs (a takeover finds
/// many items at once; each publish looks up the newest version first).
const PUBLISH_PER_CHECK: usize = 8;

/// Most shards one release pass audits (and so may release).
const RELEASE_AUDITS: usize = 256;

/// One holder as the coordinator sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HolderView {
    /// Node id (hex key).
    pub node: String,
    /// Audits passed.
    pub passed: u64,
    /// Audits failed (bad proof, missing shard, refusal).
    pub failed: u64,
    /// Audits unanswered.
    pub unreachable: u64,
    /// The last failure's reason.
    pub last_failure: Option<String>,
    /// Declared dead (every shard it held is being repaired).
    pub dead: bool,
}

/// The coordinator's counters and holder table.
#[derive(Debug, Default)]
pub struct CoordinatorStats {
    /// Data items coordinated here.
    pub data_items: AtomicU64,
    /// Audits sent.
    pub audits: AtomicU64,
    /// Audits passed.
    pub audits_passed: AtomicU64,
    /// Audits failed.
    pub audits_failed: AtomicU64,
    /// Audits not answered (the holder unreachable, or failing to read its disk).
    pub audits_unreachable: AtomicU64,
    /// Shards rebuilt and stored elsewhere.
    pub shards_repaired: AtomicU64,
    /// Bytes fetched and stored by repair.
    pub repair_bytes: AtomicU64,
    /// Times a block was found unrecoverable (fewer than k live shards), since start.
    pub unrecoverable: AtomicU64,
    /// Blocks with lost shards now.
    pub damaged_now: AtomicU64,
    /// Blocks with fewer than k live shards now.
    pub unrecoverable_now: AtomicU64,
    /// Per holder.
    pub holders: Mutex<Vec<HolderView>>,
    /// The most recent failures, newest last (bounded).
    pub failures: Mutex<Vec<String>>,
}

/// One block's repair: where its lost shards go, where its survivors are, what came back.
struct RepairJob {
    data: DataId,
    block: u64,
    targets: Vec<(u8, NodeId)>,
    sources: Vec<(u8, NodeId)>,
    have: Vec<(u8, Vec<u8>)>,
    why: Vec<String>,
}

/// Runs the coordinator on its own thread until the network command channel closes.
pub fn spawn(
    service: Arc<StorageService>,
    chain: super::handle::EngineHandle,
    key: crypto_accel::Keypair,
    chain_id: u32,
    net: UnboundedSender<NetCmd>,
    net_stats: Arc<NetStats>,
    cfg: &super::config::StorageSection,
) -> anyhow::Result<()> {
    let (audit_period_ms, release_superseded_after_ms) =
        (cfg.audit_period_ms, cfg.release_superseded_after_ms);
    let me = *key.public().as_bytes();
    let stats = Arc::clone(&service.coord);
    std::thread::Builder::new()
        .name("cpchain-coord".into())
        .spawn(move || {
            let mut c = Coordinator {
                planner: Planner::new(
                    PlannerConfig {
                        audit_period_ms,
                        // Blocks repaired per poll: each costs k concurrent reads, and a
                        // holder serves a bounded number of streams at once.
                        repair_batch: REPAIR_BATCH,
                        ..PlannerConfig::default()
                    },
                    u64::from_le_bytes([me[0], me[1], me[2], me[3], me[4], me[5], me[6], me[7]])
                        ^ now_ms(),
                ),
                service,
                me: NodeId(me),
                net,
                net_stats,
                stats,
                manifests: HashMap::new(),
                versions: HashMap::new(),
                published: HashMap::new(),
                last_map_check: Instant::now(),
                release_after: (release_superseded_after_ms > 0)
                    .then(|| Duration::from_millis(release_superseded_after_ms)),
                superseded: HashMap::new(),
                last_release: Instant::now(),
                release_cursor: 0,
                keepers: HashMap::new(),
                last_scan: None,
                scans: 0,
                back: HashSet::new(),
                dead_logged: HashSet::new(),
                started: Instant::now(),
                chain,
                key,
                chain_id,
                reported: HashMap::new(),
                last_report: Instant::now(),
            };
            c.run();
        })?;
    Ok(())
}

enum Pending {
    Wait(tokio::sync::oneshot::Receiver<Result<Vec<u8>, String>>),
    Done(Result<ShardResponse, String>),
}

struct Coordinator {
    planner: Planner,
    service: Arc<StorageService>,
    me: NodeId,
    net: UnboundedSender<NetCmd>,
    net_stats: Arc<NetStats>,
    stats: Arc<CoordinatorStats>,
    manifests: HashMap<DataId, Manifest>,
    versions: HashMap<DataId, u64>,
    /// The shard map each data item's record was last published with (or, until this node
    /// publishes one, the map it found when it began coordinating the item: a takeover does
    /// not republish everything at once, nor a first map with holes a slow answer left).
    published: HashMap<DataId, Vec<Vec<Option<NodeId>>>>,
    last_map_check: Instant,
    /// How long a shard kept here must have been another node's before it goes (`None`:
    /// kept forever).
    release_after: Option<Duration>,
    /// Shards kept here whose slot another node holds: since when that was first seen, and
    /// which node (the clock starts again if the slot moves on).
    superseded: HashMap<(DataId, u64, u8), (Instant, NodeId)>,
    last_release: Instant,
    /// Where in the held data items the next release pass starts.
    release_cursor: usize,
    /// Whether a node keeps a data item's manifest, and until when that answer is trusted.
    keepers: HashMap<(DataId, NodeId), (bool, Instant)>,
    last_scan: Option<Instant>,
    /// Scans run so far (dead, disconnected nodes are probed only every few scans).
    scans: u64,
    /// Nodes declared dead that are connected again and already had their early rescan.
    back: HashSet<NodeId>,
    /// Holders declared dead, as last logged.
    dead_logged: HashSet<NodeId>,
    started: Instant,
    chain: super::handle::EngineHandle,
    key: crypto_accel::Keypair,
    chain_id: u32,
    /// (passed, failed) per holder already reported on chain.
    reported: HashMap<NodeId, (u64, u64)>,
    last_report: Instant,
}

impl Coordinator {
    fn run(&mut self) {
        loop {
            if self.net.is_closed() {
                return;
            }
            let due = self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN);
            let early = self.last_scan.is_some_and(|t| t.elapsed() >= EARLY_RESCAN)
                && self.dead_node_reconnected();
            if due || early {
                self.service.expire_pending(now_ms());
                self.scan();
                self.last_scan = Some(Instant::now());
            }
            let actions = self.planner.poll(now_ms());
            let mut changed: HashSet<DataId> = HashSet::new();
            let (audits, rest): (Vec<Action>, Vec<Action>) = actions
                .into_iter()
                .partition(|a| matches!(a, Action::Audit { .. }));
            self.audits(audits);
            let mut repairs = Vec::new();
            for a in rest {
                match a {
                    Action::Audit { .. } => {}
                    Action::Repair { .. } => repairs.push(a),
                    Action::Unrecoverable { data, block, live } => {
                        self.stats.unrecoverable.fetch_add(1, Ordering::Relaxed);
                        self.note(format!(
                            "data {data} block {block}: unrecoverable, {live} shards live"
                        ));
                    }
                }
            }
            changed.extend(self.repairs(repairs));
            // Whatever else moved the map since the last record (a scan finding a restarted
            // node's shards again, a node declared dead): readers go by the record, so it
            // must say where the shards are now. Compared once a second, not every tick.
            if self.last_map_check.elapsed() >= Duration::from_secs(1) {
                self.last_map_check = Instant::now();
                let stale = self.manifests.keys().filter(|d| {
                    self.planner
                        .shard_map(d)
                        .is_some_and(|m| self.published.get(*d).is_none_or(|p| p.as_slice() != m))
                });
                changed.extend(stale.take(PUBLISH_PER_CHECK));
            }
            for d in changed {
                self.publish(&d);
            }
            if let Some(after) = self.release_after {
                // Passes a quarter of the wait apart (each looks at `RELEASE_ITEMS` items in
                // turn, so with many items a shard is seen less often than that).
                let every = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
                if self.last_release.elapsed() >= every && self.started.elapsed() >= STARTUP_GRACE {
                    self.release_superseded(after);
                    self.last_release = Instant::now();
                }
            }
            if self.last_report.elapsed() >= REPORT_EVERY {
                self.report();
                self.last_report = Instant::now();
            }
            self.refresh_view();
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn note(&self, s: String) {
        tracing::warn!("{s}");
        let mut f = lock(&self.stats.failures);
        f.push(s);
        let n = f.len();
        if n > 100 {
            f.drain(..n - 100);
        }
    }

    /// Live storage nodes (this one included), by node id.
    fn candidates(&self) -> (Vec<Candidate>, HashMap<NodeId, PeerId>) {
        let now = now_ms();
        let known = self
            .net_stats
            .storage
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default();
        let mut peers = HashMap::new();
        let mut c = vec![Candidate {
            node: self.me,
            subnet: None,
        }];
        for (p, k) in known {
            // A peer not seen for ten minutes is no longer offered new shards.
            if !k.connected && now.saturating_sub(k.seen_ms) > 600_000 {
                continue;
            }
            peers.insert(NodeId(k.node), p);
            c.push(Candidate {
                node: NodeId(k.node),
                subnet: k.subnet.map(Subnet),
            });
        }
        (c, peers)
    }

    /// Whether `node` keeps the manifest of `data`, asked with `GetManifest`. A yes is
    /// trusted for [`KEEPER_TTL`]; a no, or no answer (taken as yes: two coordinators cost
    /// more than a late one), for a minute.
    fn keeps_manifest(&mut self, data: DataId, node: NodeId) -> bool {
        if let Some((v, _)) = self.keepers.get(&(data, node)) {
            return *v;
        }
        let answer = self
            .request_many(
                vec![(node, ShardRequest::GetManifest { data })],
                QUICK_TIMEOUT,
            )
            .pop();
        // Holders say "not found" before checking access, so a refusal means it keeps it.
        let (keeps, ttl) = match answer {
            Some(Ok(ShardResponse::Manifest(_) | ShardResponse::Refused(_))) => (true, KEEPER_TTL),
            // It may get the manifest soon (a repair): ask again in a minute.
            Some(Ok(ShardResponse::NotFound)) => (false, Duration::from_secs(60)),
            _ => (true, Duration::from_secs(60)),
        };
        self.keepers
            .insert((data, node), (keeps, Instant::now() + ttl));
        keeps
    }

    /// Sends every request at once and waits for all answers (each `Err` after `timeout`):
    /// one unreachable node costs one timeout, not one per request.
    fn request_many(
        &self,
        reqs: Vec<(NodeId, ShardRequest)>,
        timeout: Duration,
    ) -> Vec<Result<ShardResponse, String>> {
        let (_, peers) = self.candidates();
        let mut waiting = Vec::with_capacity(reqs.len());
        let me = crypto_accel::PublicKey::from_bytes(self.me.0).ok();
        for (node, req) in reqs {
            if node == self.me {
                let r = self.service.handle(req, me.as_ref(), now_ms());
                waiting.push(Pending::Done(Ok(r)));
                continue;
            }
            let Some(peer) = peers.get(&node).copied() else {
                waiting.push(Pending::Done(Err("unknown storage node".into())));
                continue;
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let sent = self.net.send(NetCmd::ShardRequest {
                peer,
                data: req.to_bytes(),
                reply: tx,
            });
            waiting.push(match sent {
                Ok(()) => Pending::Wait(rx),
                Err(_) => Pending::Done(Err("the network stopped".into())),
            });
        }
        let t = Instant::now();
        loop {
            let mut open = 0;
            for w in waiting.iter_mut() {
                if let Pending::Wait(rx) = w {
                    match rx.try_recv() {
                        Ok(r) => {
                            *w = Pending::Done(r.and_then(|b| {
                                ShardResponse::from_bytes(&b).map_err(|e| e.to_string())
                            }))
                        }
                        Err(tokio::sync::oneshot::error::TryRecvError::Empty) => open += 1,
                        Err(_) => *w = Pending::Done(Err("the network dropped the request".into())),
                    }
                }
            }
            if open == 0 || t.elapsed() > timeout {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        waiting
            .into_iter()
            .map(|w| match w {
                Pending::Done(r) => r,
                Pending::Wait(_) => Err("no answer in time".into()),
            })
            .collect()
    }

    /// The nodes the planner declared dead, split into those a connection leads to now
    /// (back, probably restarted) and the rest.
    fn dead_nodes(&self) -> (HashSet<NodeId>, HashSet<NodeId>) {
        let connected: HashSet<NodeId> = self
            .net_stats
            .storage
            .lock()
            .map(|k| {
                k.values()
                    .filter(|s| s.connected)
                    .map(|s| NodeId(s.node))
                    .collect()
            })
            .unwrap_or_default();
        self.planner
            .holder_stats()
            .into_iter()
            .filter(|(_, s)| s.dead)
            .map(|(n, _)| n)
            .partition(|n| connected.contains(n))
    }

    /// Whether a node the planner declared dead has connected again since the last check
    /// (a restart): its shards should count as held, and be audited, without waiting for
    /// the next regular scan. Each return is reported once.
    fn dead_node_reconnected(&mut self) -> bool {
        let (back, _) = self.dead_nodes();
        let new = back.iter().any(|n| !self.back.contains(n));
        self.back = back;
        new
    }

    /// Finds the data this node coordinates and asks every storage node what it holds:
    /// new data is tracked; shards found again (a node came back) count as held; data now
    /// closer to another live node is handed over (no longer audited or repaired here).
    fn scan(&mut self) {
        let (cands, _) = self.candidates();
        // A node the planner declared dead and that no connection leads to costs a full
        // timeout per probe (its QUIC address never answers): look for it every fourth scan
        // only, so repairs are not held up by the nodes whose loss they are repairing.
        self.scans += 1;
        let dead: HashSet<NodeId> = if self.scans % 4 == 1 {
            HashSet::new()
        } else {
            self.dead_nodes().1
        };
        let others: Vec<NodeId> = cands
            .iter()
            .map(|c| c.node)
            .filter(|n| *n != self.me && !dead.contains(n))
            .collect();
        let probe = || ShardRequest::Held {
            data: DataId::from_bytes([0; 32]),
        };
        let answers = self.request_many(
            others.iter().map(|n| (*n, probe())).collect(),
            QUICK_TIMEOUT,
        );
        let reachable: HashSet<NodeId> = others
            .iter()
            .zip(&answers)
            .filter(|(_, r)| r.is_ok())
            .map(|(n, _)| *n)
            .collect();
        // Repairs go only to nodes that answered just now: a node that died before this
        // coordinator ever audited it is not known dead to its planner, and every shard
        // placed on it would cost a timeout and a retry.
        // Only RNodes (storage nodes holding the deposit) coordinate and take repaired
        // shards: anyone can start a node that answers and then drops what it is given, but
        // not without staking; and holders let only RNodes read shards for repair.
        let live: Vec<Candidate> = cands
            .iter()
            .filter(|c| c.node == self.me || reachable.contains(&c.node))
            .filter(|c| self.service.staked(&chain::Address(c.node.0)))
            .copied()
            .collect();
        self.planner.set_candidates(live.clone());
        // The coordinator of a data item is the XOR-closest RNode that answers (see
        // `coordinates`): a dead coordinator is passed over at the next scan.
        let mut mine: HashSet<DataId> = HashSet::new();
        if live.iter().any(|c| c.node == self.me) {
            self.keepers.retain(|_, (_, until)| *until > Instant::now());
            let (me, nodes): (NodeId, Vec<NodeId>) =
                (self.me, live.iter().map(|c| c.node).collect());
            for d in self.service.manifest_ids() {
                if coordinates(me, &d, &nodes, &mut |n| self.keeps_manifest(d, n)) {
                    mine.insert(d);
                }
            }
        }
        let gone: Vec<DataId> = self
            .manifests
            .keys()
            .filter(|d| !mine.contains(d))
            .copied()
            .collect();
        for d in gone {
            tracing::info!("data {d}: another node is closer now; no longer coordinating it");
            self.planner.untrack(&d);
            self.manifests.remove(&d);
            self.published.remove(&d);
        }
        self.stats
            .data_items
            .store(mine.len() as u64, Ordering::Relaxed);
        // A node that just started does not know its peers yet: coordinating now would
        // mistake shards it cannot see for lost ones.
        if self.started.elapsed() < STARTUP_GRACE {
            return;
        }
        let failed: HashSet<NodeId> = self
            .planner
            .holder_stats()
            .into_iter()
            .filter(|(_, s)| s.failed > 0)
            .map(|(n, _)| n)
            .collect();
        // Data taken over here, with the map its scan found, the nodes that answered it and
        // which nodes keep some shard of each block: tracked once all are scanned.
        let mut fresh = Vec::new();
        for d in mine {
            let Some(m) = self
                .manifests
                .get(&d)
                .cloned()
                .or_else(|| self.service.manifest(&d))
            else {
                continue;
            };
            let n = usize::from(m.k) + usize::from(m.m);
            let mut map: Vec<Vec<Option<NodeId>>> = vec![vec![None; n]; m.blocks.len()];
            let mut heard: HashSet<NodeId> = HashSet::new();
            let asked: Vec<&Candidate> = cands
                .iter()
                .filter(|c| c.node == self.me || reachable.contains(&c.node))
                .collect();
            let lists = self.request_many(
                asked
                    .iter()
                    .map(|c| (c.node, ShardRequest::Held { data: d }))
                    .collect(),
                QUICK_TIMEOUT,
            );
            // Which nodes keep a shard of each block, mapped or not (see `Planner::set_present`).
            let mut present: Vec<(u64, NodeId)> = Vec::new();
            for (c, r) in asked.iter().zip(lists) {
                let Ok(ShardResponse::Held(list)) = r else {
                    continue;
                };
                heard.insert(c.node);
                self.planner.on_node_up(c.node);
                present.extend(list.iter().map(|(b, _)| (*b, c.node)));
                if failed.contains(&c.node) {
                    continue;
                }
                for (b, i) in list {
                    let row = map.get_mut(b as usize);
                    if let Some(row) = row {
                        if row.contains(&Some(c.node)) {
                            continue;
                        }
                        if let Some(slot) = row.get_mut(usize::from(i)) {
                            slot.get_or_insert(c.node);
                        }
                    }
                }
            }
            if heard.len() * 2 < cands.len() {
                tracing::debug!(
                    "data {d}: only {} of {} nodes answered",
                    heard.len(),
                    cands.len()
                );
                continue;
            }
            if self.manifests.contains_key(&d) {
                for (b, row) in map.iter().enumerate() {
                    for (i, x) in row.iter().enumerate() {
                        if let Some(node) = x {
                            self.planner.on_repaired(&d, b as u64, i as u8, *node);
                        }
                    }
                }
                self.planner.set_present(&d, present);
                continue;
            }
            fresh.push((d, m, map, heard, present));
        }
        // A holder that did not answer (restarting, or cut off for a moment) keeps the slots
        // the newest record gives it, and is audited like any holder: dead after its strikes,
        // and only then rebuilt elsewhere. Rebuilding its shards at once would cost traffic
        // and leave it with copies to release when it is back. Only pages of blocks with a
        // hole are looked up, [`SEED_PAGES_PER_SCAN`] a scan: data needing more is taken over
        // at a later scan (the first item always goes).
        let mut wanted: Vec<(DataId, u32)> = Vec::new();
        let mut taken = Vec::new();
        let mut deferred = 0usize;
        for (d, m, map, heard, present) in fresh {
            let unheard: HashSet<NodeId> = cands
                .iter()
                .map(|c| c.node)
                .filter(|n| !heard.contains(n) && !failed.contains(n))
                .collect();
            let pages: std::collections::BTreeSet<u32> = match unheard.is_empty() {
                true => Default::default(),
                false => (0u64..)
                    .zip(&map)
                    .filter(|(_, row)| row.iter().any(Option::is_none))
                    .map(|(b, _)| page_of(b))
                    .collect(),
            };
            if !wanted.is_empty() && wanted.len() + pages.len() > SEED_PAGES_PER_SCAN {
                deferred += 1;
                continue;
            }
            wanted.extend(pages.into_iter().map(|p| (d, p)));
            taken.push((d, m, map, heard, unheard, present));
        }
        if deferred > 0 {
            tracing::info!(
                "{deferred} data items wait for the next scan to be taken over (their record \
                 pages are looked up {SEED_PAGES_PER_SCAN} a scan)"
            );
        }
        let pages = match wanted.is_empty() {
            true => HashMap::new(),
            false => self.newest_pages(&wanted),
        };
        for (d, m, mut map, heard, unheard, present) in taken {
            let n = usize::from(m.k) + usize::from(m.m);
            let located = map.iter().flatten().filter(|x| x.is_some()).count();
            let record = |b: u64, i: u8| {
                let r = pages.get(&(d, page_of(b))).filter(|r| r.shards() == n)?;
                r.holder(b, i)
            };
            let seeded = seed_from_record(&mut map, record, &unheard);
            // Shards nobody reports are lost: track them as held by no one.
            let full: Vec<Vec<NodeId>> = map
                .iter()
                .map(|r| r.iter().map(|x| x.unwrap_or(NOBODY)).collect())
                .collect();
            self.planner.track(d, m.k, m.m, full);
            self.planner.set_present(&d, present);
            for (b, r) in map.iter().enumerate() {
                for (i, x) in r.iter().enumerate() {
                    if x.is_none() {
                        self.planner.on_audit(
                            &d,
                            b as u64,
                            i as u8,
                            NOBODY,
                            AuditOutcome::Failed(AuditFailure::Missing),
                            now_ms(),
                        );
                    }
                }
            }
            // A complete map found here is published (soon, a few items a second): holders
            // follow the record when they release superseded copies, and the record must
            // then name the holders this planner audits. A map with holes is not (a slow
            // answer must not blank a good record); it goes out once repairs change it.
            if let Some(found) = self.planner.shard_map(&d) {
                if found.iter().flatten().any(Option::is_none) {
                    self.published.insert(d, found.to_vec());
                }
            }
            let looked = wanted.iter().any(|(x, _)| *x == d);
            let found = pages.keys().any(|(x, _)| *x == d);
            let also = match (seeded, looked, found) {
                (0, false, _) => String::new(),
                (0, true, true) => "; the newest record gives no missing shard to them".into(),
                (0, true, false) => "; no record of it found to say what they hold".into(),
                (n, ..) => format!(
                    "; the newest record gives {n} more to those that did not (they keep \
                     them unless audits fail)"
                ),
            };
            tracing::info!(
                "coordinating data {d}: {} blocks, {located} shards located on the {} of {} \
                 nodes that answered{also}",
                m.blocks.len(),
                heard.len(),
                cands.len()
            );
            self.manifests.insert(d, m);
        }
    }

    fn shard_id(&self, data: &DataId, block: u64, index: u8) -> Option<ChunkId> {
        self.manifests
            .get(data)?
            .blocks
            .get(block as usize)?
            .shards
            .get(usize::from(index))
            .copied()
    }

    /// Sends a round's challenges at once and feeds the verdicts to the planner.
    fn audits(&mut self, actions: Vec<Action>) {
        let mut sent = Vec::new();
        let mut reqs = Vec::new();
        for a in actions {
            let Action::Audit {
                data,
                block,
                index,
                holder,
                nonce,
            } = a
            else {
                continue;
            };
            let Some(id) = self.shard_id(&data, block, index) else {
                continue;
            };
            reqs.push((holder, ShardRequest::Audit { id, nonce }));
            sent.push((data, block, index, holder, nonce, id));
        }
        if reqs.is_empty() {
            return;
        }
        let answers = self.request_many(reqs, QUICK_TIMEOUT);
        for ((data, block, index, holder, nonce, id), r) in sent.into_iter().zip(answers) {
            self.stats.audits.fetch_add(1, Ordering::Relaxed);
            let outcome = match r {
                Ok(ShardResponse::Proof(b)) => match check_proof(&id, nonce, &b) {
                    Ok(()) => AuditOutcome::Passed,
                    Err(e) => AuditOutcome::Failed(AuditFailure::BadProof(e)),
                },
                Ok(ShardResponse::NotFound) => AuditOutcome::Failed(AuditFailure::Missing),
                Ok(ShardResponse::Refused(r)) => AuditOutcome::Failed(AuditFailure::Refused(r)),
                Ok(ShardResponse::Failed(_)) | Err(_) => AuditOutcome::Unreachable,
                Ok(_) => AuditOutcome::Failed(AuditFailure::Refused("unexpected answer".into())),
            };
            match &outcome {
                AuditOutcome::Passed => {
                    self.stats.audits_passed.fetch_add(1, Ordering::Relaxed);
                }
                AuditOutcome::Failed(f) => {
                    self.stats.audits_failed.fetch_add(1, Ordering::Relaxed);
                    self.note(format!(
                        "audit of {} on shard {index} of block {block} of {data}: {f}",
                        hex::encode(holder.0)
                    ));
                }
                AuditOutcome::Unreachable => {
                    self.stats
                        .audits_unreachable
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            self.planner
                .on_audit(&data, block, index, holder, outcome, now_ms());
        }
    }

    /// Carries out a poll's repairs in waves of at most [`REPAIR_WAVE_BYTES`] fetched.
    /// Returns the data whose map changed.
    fn repairs(&mut self, actions: Vec<Action>) -> HashSet<DataId> {
        let jobs: Vec<RepairJob> = actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Repair {
                    data,
                    block,
                    targets,
                    sources,
                } if self.manifests.contains_key(&data) => Some(RepairJob {
                    data,
                    block,
                    targets,
                    sources,
                    have: Vec::new(),
                    why: Vec::new(),
                }),
                _ => None,
            })
            .collect();
        let mut changed = HashSet::new();
        let mut wave = Vec::new();
        let mut wave_bytes = 0u64;
        for job in jobs {
            let fetch = self.manifests.get(&job.data).map_or(0, |m| {
                u64::from(m.block_size).div_ceil(u64::from(m.k.max(1))) * u64::from(m.k)
            });
            if !wave.is_empty() && wave_bytes + fetch > REPAIR_WAVE_BYTES {
                changed.extend(self.repair_wave(std::mem::take(&mut wave)));
                wave_bytes = 0;
            }
            wave_bytes += fetch;
            wave.push(job);
        }
        if !wave.is_empty() {
            changed.extend(self.repair_wave(wave));
        }
        changed
    }

    /// One wave: every block's survivors are fetched at once (k per block, then the others
    /// where some failed), the lost shards rebuilt, all of them stored at once, and each
    /// target committed once.
    fn repair_wave(&mut self, mut jobs: Vec<RepairJob>) -> HashSet<DataId> {
        let mut changed = HashSet::new();
        let started = Instant::now();
        let mut fetched = 0u64;
        for wave in 0..2 {
            let mut asked = Vec::new();
            let mut reqs = Vec::new();
            for (j, job) in jobs.iter().enumerate() {
                let k = self
                    .manifests
                    .get(&job.data)
                    .map_or(0, |m| usize::from(m.k));
                if job.have.len() >= k {
                    continue;
                }
                let wanted = if wave == 0 {
                    &job.sources[..k.min(job.sources.len())]
                } else {
                    &job.sources[k.min(job.sources.len())..]
                };
                for (i, node) in wanted {
                    let Some(id) = self.shard_id(&job.data, job.block, *i) else {
                        continue;
                    };
                    // The holder checks the read against this node's peer identity.
                    reqs.push((
                        *node,
                        ShardRequest::Get {
                            id,
                            data: job.data,
                            block: job.block,
                        },
                    ));
                    asked.push((j, *i, *node, id));
                }
            }
            if reqs.is_empty() {
                break;
            }
            let answers = self.request_many(reqs, REPAIR_TIMEOUT);
            for ((j, i, node, id), r) in asked.into_iter().zip(answers) {
                let job = &mut jobs[j];
                match r {
                    Ok(ShardResponse::Shard(b)) if ChunkId::of(&b) == id => {
                        fetched += b.len() as u64;
                        job.have.push((i, b));
                    }
                    Ok(ShardResponse::Shard(_)) => {
                        job.why.push(format!("shard {i} from {node}: wrong bytes"))
                    }
                    Ok(ShardResponse::Refused(r)) => {
                        job.why.push(format!("shard {i} from {node}: refused: {r}"))
                    }
                    Ok(ShardResponse::NotFound) => {
                        job.why.push(format!("shard {i} from {node}: not held"))
                    }
                    Ok(_) => job
                        .why
                        .push(format!("shard {i} from {node}: unexpected answer")),
                    Err(e) => job.why.push(format!("shard {i} from {node}: {e}")),
                }
            }
        }
        self.stats
            .repair_bytes
            .fetch_add(fetched, Ordering::Relaxed);
        let fetch_s = started.elapsed().as_secs_f64();
        // Rebuild, then store everything at once.
        let mut puts = Vec::new();
        let mut placed = Vec::new();
        for job in &jobs {
            let Some(m) = self.manifests.get(&job.data) else {
                continue;
            };
            let wanted: Vec<u8> = job.targets.iter().map(|t| t.0).collect();
            match crate::pipeline::rebuild_shards(m, job.block as usize, &job.have, &wanted) {
                Ok(rebuilt) => {
                    for ((i, bytes), (_, target)) in rebuilt.into_iter().zip(&job.targets) {
                        placed.push((job.data, job.block, i, *target, bytes.len() as u64));
                        puts.push((*target, ShardRequest::Put { bytes }));
                    }
                }
                Err(e) => {
                    let msg = format!(
                        "repair of block {} of {}: {e}; {}",
                        job.block,
                        job.data,
                        job.why.join("; ")
                    );
                    for (i, _) in &job.targets {
                        self.planner
                            .on_repair_failed(&job.data, job.block, *i, &msg, now_ms());
                    }
                    self.note(msg);
                }
            }
        }
        let rebuild_s = started.elapsed().as_secs_f64() - fetch_s;
        let stored = self.request_many(puts, REPAIR_TIMEOUT);
        let store_s = started.elapsed().as_secs_f64() - fetch_s - rebuild_s;
        let mut commits: HashMap<(NodeId, DataId), bool> = HashMap::new();
        for (p, r) in placed.iter().zip(&stored) {
            if matches!(r, Ok(ShardResponse::Stored)) {
                commits.insert((p.3, p.0), false);
            }
        }
        let keys: Vec<(NodeId, DataId)> = commits.keys().copied().collect();
        let reqs: Vec<(NodeId, ShardRequest)> = keys
            .iter()
            .filter_map(|(node, data)| {
                let m = self.manifests.get(data)?;
                Some((
                    *node,
                    ShardRequest::Commit {
                        manifest: m.to_bytes(),
                        keep_manifest: false,
                    },
                ))
            })
            .collect();
        let answers = self.request_many(reqs, REPAIR_TIMEOUT);
        for (key, r) in keys.iter().zip(answers) {
            if matches!(r, Ok(ShardResponse::Committed { .. })) {
                commits.insert(*key, true);
            }
        }
        tracing::info!(
            "repair round: {} blocks, {} shards placed, {:.1} MiB fetched in {fetch_s:.2} s, \
             rebuilt in {rebuild_s:.2} s, stored in {store_s:.2} s, committed in {:.2} s",
            jobs.len(),
            placed.len(),
            fetched as f64 / f64::from(1u32 << 20),
            started.elapsed().as_secs_f64() - fetch_s - rebuild_s - store_s,
        );
        for ((data, block, i, target, len), r) in placed.into_iter().zip(stored) {
            let ok = matches!(r, Ok(ShardResponse::Stored))
                && commits.get(&(target, data)).copied().unwrap_or(false);
            if ok {
                self.planner.on_repaired(&data, block, i, target);
                self.stats.shards_repaired.fetch_add(1, Ordering::Relaxed);
                self.stats.repair_bytes.fetch_add(len, Ordering::Relaxed);
                changed.insert(data);
            } else {
                self.planner.on_repair_failed(
                    &data,
                    block,
                    i,
                    "the target did not store it",
                    now_ms(),
                );
            }
        }
        changed
    }

    /// Puts the audits run since the last report on chain, one `AuditReport` per holder:
    /// failures lower the holder's Data Contribution (RPT).
    fn report(&mut self) {
        use super::view::NodeApi;
        let me = chain::Address(self.me.0);
        let mut nonce = self.chain.account(&me).pending_nonce;
        let fee = super::client::DEFAULT_FEE_AMOUNT;
        let mut txs = Vec::new();
        let mut sent = Vec::new();
        for (node, st) in self.planner.holder_stats() {
            if node == NOBODY || node == self.me {
                continue;
            }
            // Going offline counts: each time a holder is declared dead (three rounds of
            // audits unanswered) is one failed audit on chain. Counting every unanswered
            // audit as failed would punish a short outage like lost data.
            let failed = st.failed.saturating_add(st.deaths);
            let (p0, f0) = self.reported.get(&node).copied().unwrap_or((0, 0));
            let (dp, df) = (st.passed.saturating_sub(p0), failed.saturating_sub(f0));
            if dp + df == 0 {
                continue;
            }
            let clamp =
                |x: u64| u32::try_from(x.min(chain::MAX_AUDITS_PER_REPORT / 2)).unwrap_or(0);
            let payload = chain::TxPayload::AuditReport {
                holder: chain::Address(node.0),
                passed: clamp(dp),
                failed: clamp(df),
            };
            let tx = chain::SignedTx::sign(&self.key, self.chain_id, nonce, fee, payload);
            nonce += 1;
            txs.push(chain::Tx::Signed(tx).to_bytes());
            sent.push((node, (st.passed, failed)));
        }
        if txs.is_empty() {
            return;
        }
        let results = self.chain.submit_batch(txs);
        for ((node, counts), r) in sent.into_iter().zip(results) {
            match r {
                Ok(_) => {
                    self.reported.insert(node, counts);
                }
                // At shutdown the engine stops first; these counts are not reported.
                Err(super::view::Rejected::Busy(why)) if why.contains("shutting down") => {
                    tracing::debug!("audits of {node} not reported: {why}")
                }
                Err(e) => tracing::warn!("reporting audits of {node} on chain: {e}"),
            }
        }
    }

    /// Publishes a new version of the data's DHT record from the planner's map.
    fn publish(&mut self, data: &DataId) {
        let (Some(m), Some(map)) = (self.manifests.get(data), self.planner.shard_map(data)) else {
            return;
        };
        // The clock, so pages published by this node outrank its predecessor's; and past
        // the newest page anyone allowed published, in case that publisher's clock is ahead.
        let last = match self.versions.get(data) {
            Some(&v) => v,
            None => self.newest_version(data),
        };
        let v = dht::record::next_version(now_ms(), last);
        self.versions.insert(*data, v);
        let built = DataRecord::pages_from_partial_map(
            *data,
            v,
            m.k,
            m.m,
            m.interval_blocks,
            map,
            &[self.me],
        );
        // Recorded whether or not the pages could be built: a failure is tried again when
        // the map moves, not on every tick.
        self.published.insert(*data, map.to_vec());
        match built {
            Ok(pages) => {
                for p in pages {
                    let key = DataRecord::key(&p.data, p.page);
                    let signed = SignedPage::sign(p, &self.key, self.chain_id);
                    let _ = self.net.send(NetCmd::PutRecord {
                        key,
                        value: signed.to_bytes(),
                        version: signed.page.version,
                        owner: chain::Address::of(&m.owner),
                    });
                }
            }
            Err(e) => self.note(format!("record of {data}: {e}")),
        }
    }

    /// The newest version of page 0 of `data`'s record in the DHT among pages whose
    /// publisher may publish them (0 when none is found within [`QUICK_TIMEOUT`]).
    fn newest_version(&self, data: &DataId) -> u64 {
        let copies = self
            .record_copies(vec![DataRecord::key(data, 0)])
            .pop()
            .unwrap_or_default();
        newest_allowed_version(&copies, self.chain_id, now_ms(), data, &mut |p| {
            self.may_publish(p)
        })
    }

    /// The newest page of each `(data, page)` of `wanted` in the DHT among pages whose
    /// publisher may publish them, looked up [`RECORD_WINDOW`] at once (see
    /// [`Self::record_copies`]; a page none is found for is left out).
    fn newest_pages(&self, wanted: &[(DataId, u32)]) -> HashMap<(DataId, u32), DataRecord> {
        let mut copies = Vec::with_capacity(wanted.len());
        for window in wanted.chunks(RECORD_WINDOW) {
            copies.extend(
                self.record_copies(window.iter().map(|(d, p)| DataRecord::key(d, *p)).collect()),
            );
        }
        let now_ms = now_ms();
        let mut pages = HashMap::new();
        for ((d, p), copies) in wanted.iter().zip(copies) {
            let newest = newest_allowed(&copies, self.chain_id, now_ms, d, &mut |s| {
                s.page.page == *p && self.may_publish(s)
            });
            if let Some(s) = newest {
                pages.insert((*d, *p), s.page);
            }
        }
        pages
    }

    /// Whether the chain lets `p`'s publisher publish it.
    fn may_publish(&self, p: &SignedPage) -> bool {
        matches!(
            super::net::may_publish(&self.chain, &p.writer, &p.page),
            super::net::Publisher::Allowed { .. }
        )
    }

    /// The copies of each record `keys` names that the DHT gives, all looked up at once:
    /// every copy found until each lookup ends, or [`QUICK_TIMEOUT`] passes, or every key
    /// has [`RECORD_QUORUM`] copies and [`RECORD_GRACE`] has passed (a lookup waits out
    /// the dial of every close node that died; the newest version is among the first copies
    /// but for a node that missed an update).
    fn record_copies(&self, keys: Vec<[u8; 32]>) -> Vec<Vec<Vec<u8>>> {
        let mut waiting: Vec<Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>> = keys
            .into_iter()
            .map(|key| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                self.net
                    .send(NetCmd::GetRecord { key, reply: tx })
                    .ok()
                    .map(|()| rx)
            })
            .collect();
        let mut out = vec![Vec::new(); waiting.len()];
        let t = Instant::now();
        loop {
            for (slot, w) in out.iter_mut().zip(waiting.iter_mut()) {
                let Some(rx) = w else { continue };
                loop {
                    match rx.try_recv() {
                        Ok(v) => slot.push(v),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            *w = None;
                            break;
                        }
                    }
                }
            }
            let open = waiting.iter().any(Option::is_some);
            let quorum = out.iter().all(|v| v.len() >= RECORD_QUORUM);
            if !open || t.elapsed() >= QUICK_TIMEOUT || (quorum && t.elapsed() >= RECORD_GRACE) {
                return out;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Deletes shards kept here whose slot the data's map (the planner's, for data
    /// coordinated here, else the newest allowed record) has given to another node for at
    /// least `after`, once that node passes an audit for the shard: what a node declared
    /// dead keeps after its shards were rebuilt elsewhere. A block whose map misses any
    /// holder keeps every copy. A pass looks at [`RELEASE_ITEMS`] data items, in turn.
    fn release_superseded(&mut self, after: Duration) {
        let mut items = self.service.held_data();
        items.sort_unstable();
        self.superseded
            .retain(|(d, _, _), _| items.binary_search(d).is_ok());
        if items.is_empty() {
            return;
        }
        let start = self.release_cursor % items.len();
        let batch: Vec<DataId> = items
            .iter()
            .cycle()
            .skip(start)
            .take(RELEASE_ITEMS.min(items.len()))
            .copied()
            .collect();
        self.release_cursor = start + batch.len();
        let held: Vec<(DataId, Vec<(u64, u8)>)> =
            batch.iter().map(|d| (*d, self.service.held(d))).collect();
        // Record pages of the blocks held, for data another node coordinates.
        let wanted: Vec<(DataId, u32)> = held
            .iter()
            .filter(|(d, _)| self.planner.shard_map(d).is_none())
            .flat_map(|(d, h)| {
                let pages: std::collections::BTreeSet<u32> =
                    h.iter().map(|(b, _)| page_of(*b)).collect();
                pages.into_iter().map(|p| (*d, p))
            })
            .collect();
        let pages = self.newest_pages(&wanted);
        let now = Instant::now();
        let mut due = Vec::new();
        for (d, h) in &held {
            let row_of = |b: u64| -> Option<Vec<Option<NodeId>>> {
                match self.planner.shard_map(d) {
                    Some(map) => map.get(usize::try_from(b).ok()?).cloned(),
                    None => {
                        let r = pages.get(&(*d, page_of(b)))?;
                        let shards = u8::try_from(r.shards()).ok()?;
                        Some((0..shards).map(|i| r.holder(b, i)).collect())
                    }
                }
            };
            let gone = superseded(self.me, h, row_of);
            let moved: HashSet<(u64, u8)> = gone.iter().map(|(b, i, _)| (*b, *i)).collect();
            for &(b, i) in h.iter().filter(|x| !moved.contains(x)) {
                self.superseded.remove(&(*d, b, i));
            }
            let mut mine = None;
            for (b, i, holder) in gone {
                let seen = self.superseded.entry((*d, b, i)).or_insert((now, holder));
                if seen.1 != holder {
                    *seen = (now, holder);
                }
                if now.duration_since(seen.0) < after || due.len() >= RELEASE_AUDITS {
                    continue;
                }
                let m = mine.get_or_insert_with(|| self.service.manifest(d));
                let id = m.as_ref().and_then(|m| {
                    m.blocks
                        .get(usize::try_from(b).ok()?)?
                        .shards
                        .get(usize::from(i))
                        .copied()
                });
                if let Some(id) = id {
                    due.push((*d, b, i, holder, id));
                }
            }
        }
        if due.is_empty() {
            return;
        }
        // The copy goes only once its slot's holder proves it has the shard. Meanwhile this
        // node neither reads nor audits it for anyone: the holder cannot pass by relaying.
        let ids: Vec<ChunkId> = due.iter().map(|x| x.4).collect();
        self.service.set_releasing(&ids, true);
        let mut asked = Vec::new();
        let mut reqs = Vec::new();
        for (d, b, i, holder, id) in due {
            let nonce = rand::random::<u64>();
            reqs.push((holder, ShardRequest::Audit { id, nonce }));
            asked.push((d, b, i, holder, id, nonce));
        }
        let answers = self.request_many(reqs, QUICK_TIMEOUT);
        let mut releases = Vec::new();
        for ((d, b, i, holder, id, nonce), r) in asked.into_iter().zip(answers) {
            let proven =
                matches!(r, Ok(ShardResponse::Proof(p)) if check_proof(&id, nonce, &p).is_ok());
            if proven {
                releases.push((d, b, i, holder, id));
            }
        }
        for (d, b, i, holder, id) in releases {
            match self.service.release(&d, b, i, id) {
                Ok(true) => {
                    self.superseded.remove(&(d, b, i));
                    tracing::info!(
                        "released shard {i} of block {b} of {d}: {holder} holds it now (audited)"
                    );
                }
                Ok(false) => {
                    self.superseded.remove(&(d, b, i));
                }
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
        self.service.set_releasing(&ids, false);
    }

    fn refresh_view(&mut self) {
        let stats = self.planner.holder_stats();
        // An operator follows deaths and returns in the log.
        for (n, s) in &stats {
            if *n == NOBODY || s.dead == self.dead_logged.contains(n) {
                continue;
            }
            if s.dead {
                tracing::warn!(
                    "holder {n} declared dead ({} audit rounds unanswered): its shards of \
                     the data coordinated here are being rebuilt elsewhere",
                    s.strikes
                );
                self.dead_logged.insert(*n);
            } else {
                tracing::info!("holder {n} answers again");
                self.dead_logged.remove(n);
            }
        }
        let v: Vec<HolderView> = stats
            .into_iter()
            .filter(|(n, _)| *n != NOBODY)
            .map(|(n, s)| HolderView {
                node: hex::encode(n.0),
                passed: s.passed,
                failed: s.failed,
                unreachable: s.unreachable,
                last_failure: s.last_failure.clone(),
                dead: s.dead,
            })
            .collect();
        *lock(&self.stats.holders) = v;
        let (damaged, unrecoverable) = self.planner.damaged_counts();
        let set = |a: &AtomicU64, n: usize| a.store(n as u64, Ordering::Relaxed);
        set(&self.stats.damaged_now, damaged);
        set(&self.stats.unrecoverable_now, unrecoverable);
    }
}

/// Whether `me` coordinates `data` among the live RNodes `live`: it is the XOR-closest of
/// them to the data id, passing over closer ones that `keeps` says do not keep the data's
/// manifest. Those joined, or staked, after the put and cannot coordinate the data; if every
/// holder deferred to them, nobody would.
fn coordinates(
    me: NodeId,
    data: &DataId,
    live: &[NodeId],
    keeps: &mut dyn FnMut(NodeId) -> bool,
) -> bool {
    let mut order = live.to_vec();
    order.sort_by_key(|n| dht::planner::distance(&n.0, data.as_bytes()));
    for n in order {
        if n == me {
            return true;
        }
        if keeps(n) {
            return false;
        }
    }
    false
}

/// Whether `proof` (as it came over the wire) answers challenge `nonce` for shard `id`.
fn check_proof(id: &ChunkId, nonce: u64, proof: &[u8]) -> Result<(), String> {
    let p = dht::proof::AuditProof::from_bytes(proof).map_err(|e| e.to_string())?;
    dht::proof::verify(id, nonce, &p).map_err(|e| e.to_string())
}

/// Fills the holes of a taken-over data item's `map` with the holder `record` gives each
/// slot, where that holder is one of `unheard` (candidates that did not answer the scan and
/// have not failed an audit here: one that answered without listing the shard lost it) and
/// holds no other slot of the block. Returns how many slots were filled.
fn seed_from_record(
    map: &mut [Vec<Option<NodeId>>],
    record: impl Fn(u64, u8) -> Option<NodeId>,
    unheard: &HashSet<NodeId>,
) -> usize {
    let mut seeded = 0;
    for (b, row) in (0u64..).zip(map.iter_mut()) {
        for i in 0..row.len() {
            if row[i].is_some() {
                continue;
            }
            let Some(h) = u8::try_from(i).ok().and_then(|i| record(b, i)) else {
                continue;
            };
            if !unheard.contains(&h) || row.contains(&Some(h)) {
                continue;
            }
            row[i] = Some(h);
            seeded += 1;
        }
    }
    seeded
}

/// The record page that holds `block`'s row.
fn page_of(block: u64) -> u32 {
    u32::try_from(block / dht::record::BLOCKS_PER_PAGE).unwrap_or(u32::MAX)
}

/// Of the shards `held` here, as (block, index), the ones the map gives to another node:
/// (block, index, that node). `row_of` gives a block's row of holders (`None` for a lost
/// shard), if known. A block whose row is unknown or misses a holder keeps every copy: this
/// one may be what rebuilds it.
fn superseded(
    me: NodeId,
    held: &[(u64, u8)],
    row_of: impl Fn(u64) -> Option<Vec<Option<NodeId>>>,
) -> Vec<(u64, u8, NodeId)> {
    let mut out = Vec::new();
    let mut rows: HashMap<u64, Option<Vec<Option<NodeId>>>> = HashMap::new();
    for &(b, i) in held {
        let row = rows.entry(b).or_insert_with(|| row_of(b));
        let Some(row) = row else {
            continue;
        };
        if row.is_empty() || row.iter().any(Option::is_none) {
            continue;
        }
        if let Some(Some(x)) = row.get(usize::from(i)) {
            if *x != me {
                out.push((b, i, *x));
            }
        }
    }
    out
}

/// The newest among `copies` (signed pages as a record lookup found them) of pages of `data`
/// that open for `chain_id` at `now` and that `allowed` accepts (their publisher, say).
fn newest_allowed(
    copies: &[Vec<u8>],
    chain_id: u32,
    now: u64,
    data: &DataId,
    allowed: &mut dyn FnMut(&SignedPage) -> bool,
) -> Option<SignedPage> {
    copies
        .iter()
        .filter_map(|c| SignedPage::open(c, chain_id, now).ok())
        .filter(|p| p.page.data == *data && allowed(p))
        .max_by_key(|p| p.page.version)
}

/// The version of [`newest_allowed`]'s page; 0 when there is none. A coordinator that takes
/// over publishes past it, so its pages outrank its predecessor's even when the
/// predecessor's clock ran ahead of its own.
fn newest_allowed_version(
    copies: &[Vec<u8>],
    chain_id: u32,
    now: u64,
    data: &DataId,
    allowed: &mut dyn FnMut(&SignedPage) -> bool,
) -> u64 {
    newest_allowed(copies, chain_id, now, data, allowed).map_or(0, |p| p.page.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_accel::{Hash, Keypair};

    #[test]
    fn only_copies_whose_slot_a_whole_row_gives_another_node_are_superseded() {
        let (me, x, y) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]));
        let rows: HashMap<u64, Vec<Option<NodeId>>> = [
            // Block 0: slot 1 is x's now, slot 0 still this node's.
            (0, vec![Some(me), Some(x), Some(y)]),
            // Block 1: a lost slot; nothing of it goes.
            (1, vec![Some(x), None, Some(y)]),
            // Block 2: this node's own slot.
            (2, vec![Some(x), Some(me), Some(y)]),
        ]
        .into_iter()
        .collect();
        let held = [(0, 0), (0, 1), (1, 0), (2, 1), (3, 0)];
        let got = superseded(me, &held, |b| rows.get(&b).cloned());
        // Block 3 has no known row: kept.
        assert_eq!(got, vec![(0, 1, x)]);
        // An empty row (a record page without the block) keeps everything.
        assert!(superseded(me, &held, |_| Some(vec![])).is_empty());
    }

    #[test]
    fn a_takeover_keeps_the_record_holders_that_did_not_answer() {
        let (a, b, c, d) = (
            NodeId([1; 32]),
            NodeId([2; 32]),
            NodeId([3; 32]),
            NodeId([4; 32]),
        );
        // What the record says: block 0 on a, b, c; block 1 on b, c, d.
        let rec = |blk: u64, i: u8| {
            let rows = [[a, b, c], [b, c, d]];
            rows.get(usize::try_from(blk).ok()?)?
                .get(usize::from(i))
                .copied()
        };
        // The scan heard a (block 0, slot 0) and c, who listed only block 1's slot 1: c
        // lost shard 2 of block 0. b did not answer; d did not either, but failed an audit
        // here or is no candidate: it is not among the unheard.
        let mut map = vec![vec![Some(a), None, None], vec![None, Some(c), None]];
        let unheard: HashSet<NodeId> = [b].into_iter().collect();
        let n = seed_from_record(&mut map, rec, &unheard);
        assert_eq!(n, 2);
        assert_eq!(
            map,
            vec![vec![Some(a), Some(b), None], vec![Some(b), Some(c), None]],
            "b keeps its slots; c's lost shard and d's stay holes"
        );
        // A holder already mapped in the row (a copy it listed under another slot) is not
        // given a second slot of the block.
        let mut map = vec![vec![Some(b), None, None]];
        let unheard: HashSet<NodeId> = [b, c].into_iter().collect();
        assert_eq!(seed_from_record(&mut map, rec, &unheard), 1);
        assert_eq!(map, vec![vec![Some(b), None, Some(c)]]);
        // No record: nothing filled.
        let mut map = vec![vec![None; 3]];
        assert_eq!(seed_from_record(&mut map, |_, _| None, &unheard), 0);
    }

    #[test]
    fn exactly_one_holder_coordinates_even_when_a_closer_rnode_lacks_the_manifest() {
        let data = DataId(Hash([9; 32]));
        let mut nodes: Vec<NodeId> = (1..=5u8)
            .map(|i| NodeId([i.wrapping_mul(37); 32]))
            .collect();
        nodes.sort_by_key(|n| dht::planner::distance(&n.0, data.as_bytes()));
        // Who elects itself, when `keepers` keep the manifest (each node asks the others).
        let elected = |keepers: &[NodeId]| -> Vec<NodeId> {
            keepers
                .iter()
                .copied()
                .filter(|&me| coordinates(me, &data, &nodes, &mut |n| keepers.contains(&n)))
                .collect()
        };
        // Everyone keeps it: the closest coordinates.
        assert_eq!(elected(&nodes), vec![nodes[0]]);
        // The two closest staked after the put and keep nothing: the next one coordinates,
        // not nobody (every holder deferring to the closest was the deadlock).
        assert_eq!(elected(&nodes[2..]), vec![nodes[2]]);
        // A node that is not live coordinates nothing.
        let stranger = NodeId([200; 32]);
        assert!(!coordinates(stranger, &data, &nodes, &mut |_| true));
    }

    #[test]
    fn a_coordinator_taking_over_publishes_past_its_predecessors_newest_allowed_page() {
        let chain_id = 5;
        let now = 2_000_000_000_000;
        let data = DataId(Hash([1; 32]));
        let (owner, before, stranger) = (
            Keypair::from_seed([1; 32]),
            Keypair::from_seed([2; 32]),
            Keypair::from_seed([3; 32]),
        );
        let page = |data: DataId, version: u64, k: &Keypair, chain: u32| {
            let p = DataRecord::pages_from_map(
                data,
                version,
                1,
                1,
                1,
                &[vec![NodeId([7; 32]), NodeId([8; 32])]],
                &[],
            )
            .unwrap()
            .remove(0);
            SignedPage::sign(p, k, chain).to_bytes()
        };
        let mut allowed = |p: &SignedPage| {
            p.writer == NodeId(*owner.public().as_bytes())
                || p.writer == NodeId(*before.public().as_bytes())
        };
        // The predecessor's clock ran 3 minutes ahead of ours.
        let ahead = now + 3 * 60 * 1000;
        let copies = vec![
            page(data, now - 10, &owner, chain_id),
            page(data, ahead, &before, chain_id),
            // Newer, but nobody allowed, another chain, another data item, or too far
            // ahead of the clock to open.
            page(data, ahead + 1, &stranger, chain_id),
            page(data, ahead + 2, &before, chain_id + 1),
            page(DataId(Hash([2; 32])), ahead + 3, &before, chain_id),
            page(data, u64::MAX, &before, chain_id),
            vec![0xff; 40],
        ];
        let newest = newest_allowed_version(&copies, chain_id, now, &data, &mut allowed);
        assert_eq!(newest, ahead);
        let mine = dht::record::next_version(now, newest);
        assert!(
            mine > ahead,
            "the new coordinator's page outranks its predecessor's"
        );
        assert_eq!(
            newest_allowed_version(&[], chain_id, now, &data, &mut allowed),
            0
        );
    }
}
