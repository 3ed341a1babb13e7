//! The storage role: keeps shards for the DHT and answers the shard protocol
//! ([`dht::wire`]).
//!
//! Shards arrive with `Put` and are kept in the chunk store as *pending*. A `Commit` brings
//! the manifest: the node checks it against the chain (the data id is registered with the
//! same Merkle root and owner), saves it, and confirms every pending shard it lists; the
//! shard → (data, block, index) index is rebuilt at start from the saved manifests and the
//! chunk store, so a restarted node serves what it held. Pending shards that no commit
//! claims within [`PENDING_TTL_MS`] are deleted. Reads are served only to a reader who
//! signed the request for this node and holds a right on chain (owner or live grant);
//! refusals say why.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chain::Address;
use crypto_accel::{ChunkId, DataId, Decode, Encode};
use dht::wire::{ReadAuth, ShardRequest, ShardResponse};
use serde::{Deserialize, Serialize};

use super::lock;
use crate::manifest::{Manifest, ManifestDir};
use crate::store::{ChunkStore, StoreConfig, StoreError};

/// How long an uncommitted shard is kept.
pub const PENDING_TTL_MS: u64 = 10 * 60 * 1000;
/// Most bytes of uncommitted shards a node keeps (beyond it `Put` is refused).
pub const PENDING_QUOTA: u64 = 8 << 30;
/// How long an access decision is reused.
const ACCESS_TTL: Duration = Duration::from_secs(2);

/// What the storage role needs from the chain the node follows.
pub trait ChainView: Send + Sync {
    /// The registration of `id`, if any.
    fn data(&self, id: &DataId) -> Option<chain::DataRecord>;
    /// Whether `reader` may read interval `interval` of `id` at the current head.
    fn may_read(&self, reader: &Address, id: &DataId, interval: u64) -> bool;
}

/// Deliberate misbehaviour, for tests of audits and repair only (`[storage] fault`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Honest.
    #[default]
    None,
    /// Answers as if every shard had been deleted.
    Delete,
    /// Flips a bit in every shard it serves or proves.
    BitFlip,
}

/// Where a held shard belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    data: DataId,
    block: u64,
    index: u8,
    interval: u64,
}

/// Counters for `/metrics` and `cpchain status`.
#[derive(Debug, Default)]
pub struct StorageCounters {
    /// Shards received by `Put`.
    pub puts: AtomicU64,
    /// Shards served.
    pub served: AtomicU64,
    /// Bytes served.
    pub served_bytes: AtomicU64,
    /// Reads refused.
    pub refused: AtomicU64,
    /// Audit challenges answered with a proof.
    pub audits_answered: AtomicU64,
    /// Audit challenges for shards not held.
    pub audits_missing: AtomicU64,
    /// Uncommitted shards deleted.
    pub pending_expired: AtomicU64,
    /// Shards received by repair (a subset of `puts`, counted by the repairer's commit).
    pub repair_bytes_in: AtomicU64,
}

/// What an operator sees of the storage role.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StorageView {
    /// Confirmed shards held.
    pub shards: u64,
    /// Data items with at least one shard here.
    pub data_items: u64,
    /// Uncommitted shards.
    pub pending: u64,
    /// Bytes in the chunk store's segment files.
    pub disk_used: u64,
    /// Free space on the store's file system.
    pub disk_free: u64,
    /// Shards served.
    pub served: u64,
    /// Reads refused.
    pub refused: u64,
    /// Audit challenges answered.
    pub audits_answered: u64,
    /// Audit challenges for shards not held.
    pub audits_missing: u64,
    /// Data items this node coordinates (audits and repair).
    pub coordinated: u64,
    /// Audits this node sent as coordinator.
    pub audits_sent: u64,
    /// Of which passed.
    pub audits_passed: u64,
    /// Of which failed (missing shard, bad proof, refusal).
    pub audits_failed: u64,
    /// Shards this node rebuilt and placed on other nodes.
    pub shards_repaired: u64,
    /// Bytes moved by those repairs.
    pub repair_bytes: u64,
    /// Blocks found with fewer than k live shards.
    pub unrecoverable_blocks: u64,
    /// Holders of coordinated data, with their audit record.
    pub holders: Vec<super::coordinator::HolderView>,
    /// Recent audit failures and repair problems, newest last.
    pub recent_failures: Vec<String>,
}

/// (reader, data, interval): an access decision's key.
type AccessKey = (Address, DataId, u64);

struct Pending {
    at_ms: u64,
    len: u64,
}

/// A storage node's shard service. Thread-safe; `handle` may run on several threads.
pub struct StorageService {
    key: crypto_accel::Keypair,
    holder: [u8; 32],
    peers: std::sync::OnceLock<Arc<super::net::NetStats>>,
    chain_id: u32,
    store: ChunkStore,
    manifests: ManifestDir,
    chain: Arc<dyn ChainView>,
    fault: Fault,
    index: Mutex<HashMap<ChunkId, Held>>,
    by_data: Mutex<HashMap<DataId, u64>>,
    pending: Mutex<HashMap<ChunkId, Pending>>,
    pending_bytes: AtomicU64,
    access: Mutex<HashMap<AccessKey, (bool, Instant)>>,
    disk_free: Mutex<Option<(Instant, u64)>>,
    /// Counters.
    pub counters: StorageCounters,
    /// The coordinator's counters (audits sent, repairs).
    pub coord: Arc<super::coordinator::CoordinatorStats>,
}

impl std::fmt::Debug for StorageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageService")
            .field("dir", &self.store.dir())
            .finish()
    }
}

/// How long a free-space reading is reused (reading it runs `df`).
const DISK_FREE_TTL: Duration = Duration::from_secs(10);

/// Free bytes on the file system of `path`, as `df` reports them (no unsafe `statvfs`): the
/// store's own capacity accounting is the authoritative limit; this is informational.
fn fs_free(path: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .arg("-Pk")
        .arg(path)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let line = text.lines().nth(1)?;
    let avail: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(avail * 1024)
}

impl StorageService {
    /// Opens (or creates) the shard store and manifests under `dir` and rebuilds the index.
    pub fn open(
        dir: &Path,
        key: crypto_accel::Keypair,
        chain_id: u32,
        chain: Arc<dyn ChainView>,
        fault: Fault,
    ) -> Result<StorageService> {
        let store = ChunkStore::open(dir.join("shards"), StoreConfig::default())
            .with_context(|| format!("opening the shard store in {}", dir.display()))?;
        let manifests = ManifestDir::open(dir.join("manifests"))
            .with_context(|| format!("opening manifests in {}", dir.display()))?;
        let s = StorageService {
            holder: *key.public().as_bytes(),
            key,
            peers: std::sync::OnceLock::new(),
            chain_id,
            store,
            manifests,
            chain,
            fault,
            index: Mutex::new(HashMap::new()),
            by_data: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            pending_bytes: AtomicU64::new(0),
            access: Mutex::new(HashMap::new()),
            disk_free: Mutex::new(None),
            counters: StorageCounters::default(),
            coord: Arc::default(),
        };
        s.rebuild_index()?;
        Ok(s)
    }

    fn rebuild_index(&self) -> Result<()> {
        let mut n = 0u64;
        for id in self.manifests.ids()? {
            match self.manifests.load(&id) {
                Ok(m) => n += self.index_manifest(&m),
                Err(e) => tracing::warn!("skipping manifest {id}: {e}"),
            }
        }
        tracing::info!("storage: {n} shards held");
        Ok(())
    }

    /// Records every shard of `m` that the store holds; returns how many.
    fn index_manifest(&self, m: &Manifest) -> u64 {
        let id = m.data_id();
        let mut index = lock(&self.index);
        let mut n = 0;
        for (b, e) in m.blocks.iter().enumerate() {
            for (i, c) in e.shards.iter().enumerate() {
                if self.store.contains(c) {
                    index.insert(
                        *c,
                        Held {
                            data: id,
                            block: b as u64,
                            index: i as u8,
                            interval: b as u64 / u64::from(m.interval_blocks.max(1)),
                        },
                    );
                    n += 1;
                }
            }
        }
        drop(index);
        if n > 0 {
            lock(&self.by_data).insert(id, n);
        }
        n
    }

    /// Lets storage nodes this node knows read shards for audits and repair (shards are
    /// ciphertext; they reveal nothing without the interval keys).
    pub fn set_peers(&self, stats: Arc<super::net::NetStats>) {
        let _ = self.peers.set(stats);
    }

    fn is_storage_node(&self, key: &[u8; 32]) -> bool {
        self.peers.get().is_some_and(|s| {
            s.storage
                .lock()
                .map(|m| m.values().any(|k| &k.node == key))
                .unwrap_or(false)
        })
    }

    /// A read authorisation signed by this node (repair reads).
    pub fn node_auth(&self, data: DataId, block: u64, holder: [u8; 32], id: &ChunkId) -> ReadAuth {
        ReadAuth::sign(
            &self.key,
            self.chain_id,
            data,
            block,
            holder,
            super::config::now_ms(),
            id,
        )
    }

    /// Every data id whose manifest this node keeps.
    pub fn manifest_ids(&self) -> Vec<DataId> {
        self.manifests.ids().unwrap_or_else(|e| {
            tracing::warn!("{e}");
            Vec::new()
        })
    }

    /// The manifest of `id`, if kept here.
    pub fn manifest(&self, id: &DataId) -> Option<Manifest> {
        self.manifests.load(id).ok()
    }

    /// Data items with shards here (for provider records).
    pub fn held_data(&self) -> Vec<DataId> {
        lock(&self.by_data).keys().copied().collect()
    }

    /// (block, index) of every confirmed shard of `data` held here, sorted. A node
    /// configured to misbehave with `delete` reports nothing.
    pub fn held(&self, data: &DataId) -> Vec<(u64, u8)> {
        if self.fault == Fault::Delete {
            return Vec::new();
        }
        let mut v: Vec<(u64, u8)> = lock(&self.index)
            .values()
            .filter(|h| h.data == *data)
            .map(|h| (h.block, h.index))
            .collect();
        v.sort_unstable();
        v
    }

    /// Answers one request from the network.
    pub fn handle(&self, req: ShardRequest, now_ms: u64) -> ShardResponse {
        self.serve(req, now_ms).0
    }

    /// Answers one request; also returns the data id a successful `Commit` confirmed (to be
    /// announced in the DHT).
    pub fn serve(&self, req: ShardRequest, now_ms: u64) -> (ShardResponse, Option<DataId>) {
        let resp = match req {
            ShardRequest::Commit { manifest, .. } => match Manifest::from_bytes(&manifest) {
                Ok(m) => {
                    let r = self.commit(&m);
                    let id = matches!(r, ShardResponse::Committed { .. }).then(|| m.data_id());
                    return (r, id);
                }
                Err(e) => ShardResponse::Refused(format!("the manifest does not decode: {e}")),
            },
            ShardRequest::Put { bytes } => self.put(bytes, now_ms),
            ShardRequest::Get { id, auth } => self.get(id, &auth, now_ms),
            ShardRequest::GetManifest { auth } => self.get_manifest(&auth, now_ms),
            ShardRequest::Audit { id, nonce } => self.audit(id, nonce),
            ShardRequest::Held { data } => {
                let mut v = self.held(&data);
                v.truncate(dht::wire::MAX_HELD);
                ShardResponse::Held(v)
            }
        };
        (resp, None)
    }

    fn put(&self, bytes: Vec<u8>, now_ms: u64) -> ShardResponse {
        let id = ChunkId::of(&bytes);
        if lock(&self.index).contains_key(&id) {
            return ShardResponse::Stored;
        }
        let len = bytes.len() as u64;
        if self.pending_bytes.load(Ordering::Relaxed) + len > PENDING_QUOTA {
            return ShardResponse::Refused(format!(
                "this node already keeps {PENDING_QUOTA} bytes of uncommitted shards"
            ));
        }
        if let Err(e) = self
            .store
            .submit_unsynced(vec![(id, bytes)])
            .and_then(|t| t.wait())
        {
            return ShardResponse::Failed(format!("storing the shard: {e}"));
        }
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        let mut p = lock(&self.pending);
        if p.insert(id, Pending { at_ms: now_ms, len }).is_none() {
            self.pending_bytes.fetch_add(len, Ordering::Relaxed);
        }
        ShardResponse::Stored
    }

    fn commit(&self, m: &Manifest) -> ShardResponse {
        if let Err(e) = m.check() {
            return ShardResponse::Refused(format!("the manifest is inconsistent: {e}"));
        }
        let id = m.data_id();
        let Some(reg) = self.chain.data(&id) else {
            return ShardResponse::Refused(format!(
                "data {id} is not registered on chain (as of this node's head)"
            ));
        };
        if reg.merkle_root != m.root || reg.owner != Address::of(&m.owner) {
            return ShardResponse::Refused(format!(
                "the manifest's root or owner differs from data {id}'s registration"
            ));
        }
        // Durability first: the shards, then the manifest that makes them count.
        if let Err(e) = self.store.sync() {
            return ShardResponse::Failed(format!("syncing the shard store: {e}"));
        }
        if let Err(e) = self.manifests.save(m) {
            return ShardResponse::Failed(format!("saving the manifest: {e}"));
        }
        let listed: Vec<ChunkId> = m
            .blocks
            .iter()
            .flat_map(|b| b.shards.iter().copied())
            .collect();
        {
            let mut p = lock(&self.pending);
            for c in &listed {
                if let Some(x) = p.remove(c) {
                    self.pending_bytes.fetch_sub(x.len, Ordering::Relaxed);
                }
            }
        }
        let n = self.index_manifest(m);
        ShardResponse::Committed {
            confirmed: u32::try_from(n).unwrap_or(u32::MAX),
        }
    }

    fn allowed(&self, auth: &ReadAuth, interval: u64) -> Result<(), String> {
        if self.is_storage_node(auth.reader.as_bytes()) {
            return Ok(());
        }
        let reader = Address::of(&auth.reader);
        let key = (reader, auth.data, interval);
        if let Some((ok, at)) = lock(&self.access).get(&key) {
            if at.elapsed() < ACCESS_TTL {
                return if *ok {
                    Ok(())
                } else {
                    Err(refusal(&reader, &auth.data, interval))
                };
            }
        }
        let ok = self.chain.may_read(&reader, &auth.data, interval);
        let mut cache = lock(&self.access);
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(key, (ok, Instant::now()));
        if ok {
            Ok(())
        } else {
            Err(refusal(&reader, &auth.data, interval))
        }
    }

    fn read_shard(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        if self.fault == Fault::Delete {
            return Ok(None);
        }
        match self.store.get(id) {
            Ok(mut b) => {
                if self.fault == Fault::BitFlip {
                    if let Some(x) = b.last_mut() {
                        *x ^= 1;
                    }
                }
                Ok(Some(b))
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn get(&self, id: ChunkId, auth: &ReadAuth, now_ms: u64) -> ShardResponse {
        if let Err(why) = auth.check(self.chain_id, &self.holder, now_ms, &id) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return ShardResponse::Refused(why);
        }
        let Some(h) = lock(&self.index).get(&id).copied() else {
            return ShardResponse::NotFound;
        };
        if h.data != auth.data || h.block != auth.block {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return ShardResponse::Refused(format!(
                "shard {id} belongs to block {} of data {}, not to the block signed for",
                h.block, h.data
            ));
        }
        if let Err(why) = self.allowed(auth, h.interval) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return ShardResponse::Refused(why);
        }
        match self.read_shard(&id) {
            Ok(Some(b)) => {
                self.counters.served.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .served_bytes
                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                ShardResponse::Shard(b)
            }
            Ok(None) => ShardResponse::NotFound,
            Err(e) => ShardResponse::Failed(format!("reading shard {id}: {e}")),
        }
    }

    fn get_manifest(&self, auth: &ReadAuth, now_ms: u64) -> ShardResponse {
        let zero = ChunkId::from_bytes([0; 32]);
        if let Err(why) = auth.check(self.chain_id, &self.holder, now_ms, &zero) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return ShardResponse::Refused(why);
        }
        let m = match self.manifests.load(&auth.data) {
            Ok(m) => m,
            Err(crate::pipeline::PipelineError::UnknownData { .. }) => {
                return ShardResponse::NotFound
            }
            Err(e) => return ShardResponse::Failed(format!("loading the manifest: {e}")),
        };
        let interval = auth.block / u64::from(m.interval_blocks.max(1));
        if let Err(why) = self.allowed(auth, interval) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return ShardResponse::Refused(why);
        }
        ShardResponse::Manifest(m.to_bytes())
    }

    fn audit(&self, id: ChunkId, nonce: u64) -> ShardResponse {
        if !lock(&self.index).contains_key(&id) {
            self.counters.audits_missing.fetch_add(1, Ordering::Relaxed);
            return ShardResponse::NotFound;
        }
        match self.read_shard(&id) {
            Ok(Some(b)) => match dht::proof::prove(&b, nonce) {
                Ok(p) => {
                    self.counters
                        .audits_answered
                        .fetch_add(1, Ordering::Relaxed);
                    ShardResponse::Proof(p.to_bytes())
                }
                Err(e) => ShardResponse::Failed(format!("proving shard {id}: {e}")),
            },
            Ok(None) => {
                self.counters.audits_missing.fetch_add(1, Ordering::Relaxed);
                ShardResponse::NotFound
            }
            Err(e) => ShardResponse::Failed(format!("reading shard {id}: {e}")),
        }
    }

    /// Deletes uncommitted shards older than [`PENDING_TTL_MS`]; returns how many.
    pub fn expire_pending(&self, now_ms: u64) -> usize {
        let old: Vec<(ChunkId, u64)> = lock(&self.pending)
            .iter()
            .filter(|(_, p)| now_ms.saturating_sub(p.at_ms) > PENDING_TTL_MS)
            .map(|(c, p)| (*c, p.len))
            .collect();
        for (c, len) in &old {
            lock(&self.pending).remove(c);
            self.pending_bytes.fetch_sub(*len, Ordering::Relaxed);
            if !lock(&self.index).contains_key(c) {
                if let Err(e) = self.store.delete(c) {
                    tracing::warn!("deleting expired shard {c}: {e}");
                }
            }
        }
        self.counters
            .pending_expired
            .fetch_add(old.len() as u64, Ordering::Relaxed);
        old.len()
    }

    fn disk_free(&self) -> u64 {
        let mut c = lock(&self.disk_free);
        match *c {
            Some((at, v)) if at.elapsed() < DISK_FREE_TTL => v,
            _ => {
                let v = fs_free(self.store.dir()).unwrap_or(0);
                *c = Some((Instant::now(), v));
                v
            }
        }
    }

    /// The operator's view.
    pub fn view(&self) -> StorageView {
        let st = self.store.stats();
        StorageView {
            shards: lock(&self.index).len() as u64,
            data_items: lock(&self.by_data).len() as u64,
            pending: lock(&self.pending).len() as u64,
            disk_used: st.disk_bytes,
            disk_free: self.disk_free(),
            served: self.counters.served.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
            audits_answered: self.counters.audits_answered.load(Ordering::Relaxed),
            audits_missing: self.counters.audits_missing.load(Ordering::Relaxed),
            coordinated: self.coord.data_items.load(Ordering::Relaxed),
            audits_sent: self.coord.audits.load(Ordering::Relaxed),
            audits_passed: self.coord.audits_passed.load(Ordering::Relaxed),
            audits_failed: self.coord.audits_failed.load(Ordering::Relaxed),
            shards_repaired: self.coord.shards_repaired.load(Ordering::Relaxed),
            repair_bytes: self.coord.repair_bytes.load(Ordering::Relaxed),
            unrecoverable_blocks: self.coord.unrecoverable.load(Ordering::Relaxed),
            holders: lock(&self.coord.holders).clone(),
            recent_failures: lock(&self.coord.failures).clone(),
        }
    }
}

fn refusal(reader: &Address, data: &DataId, interval: u64) -> String {
    format!(
        "{reader} holds no right on chain to read interval {interval} of data {data} \
         (neither its owner nor a live grant)"
    )
}

/// Starts `n` threads answering shard requests; returns the queue the network feeds. A
/// committed data item is announced in the DHT (provider record).
pub fn spawn_workers(
    service: &Arc<StorageService>,
    n: usize,
    net: tokio::sync::mpsc::UnboundedSender<super::net::NetCmd>,
) -> Result<std::sync::mpsc::SyncSender<super::net::ShardJob>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<super::net::ShardJob>(1024);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n.max(1) {
        let (rx, service, net) = (Arc::clone(&rx), Arc::clone(service), net.clone());
        std::thread::Builder::new()
            .name(format!("cpchain-shard-{i}"))
            .spawn(move || loop {
                let job = match lock(&rx).recv() {
                    Ok(j) => j,
                    Err(_) => return,
                };
                let (resp, committed) = match ShardRequest::from_bytes(&job.data) {
                    Ok(req) => service.serve(req, super::config::now_ms()),
                    Err(e) => (
                        ShardResponse::Refused(format!("malformed request: {e}")),
                        None,
                    ),
                };
                if net
                    .send(super::net::NetCmd::ShardRespond {
                        id: job.id,
                        data: resp.to_bytes(),
                    })
                    .is_err()
                {
                    return;
                }
                if let Some(d) = committed {
                    let _ = net.send(super::net::NetCmd::Provide(d));
                }
            })
            .context("starting a shard worker")?;
    }
    Ok(tx)
}
