//! The storage role: keeps shards for the DHT and answers the shard protocol
//! ([`dht::wire`]).
//!
//! Shards arrive with `Put` and are kept in the chunk store as *pending*. A `Commit` brings
//! the manifest: the node checks it against the chain (the data id is registered with the
//! same Merkle root and owner), saves it, and confirms every pending shard it lists; the
//! shard → (data, block, index) index is rebuilt at start from the saved manifests and the
//! chunk store, so a restarted node serves what it held. Pending shards that no commit
//! claims are deleted once their uploader has sent this node nothing new for
//! [`PENDING_TTL_MS`], and at the latest [`PENDING_MAX_MS`] after they came: a long upload
//! keeps what it placed here while it goes on. Reads are served only to a reader whose
//! key (the requesting peer's noise-authenticated identity) holds a right on chain (owner,
//! public data or a live grant), to other storage nodes (repair) and to this node itself;
//! refusals say why.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chain::Address;
use crypto_accel::{ChunkId, DataId, Decode, Encode, PublicKey};
use dht::wire::{ShardRequest, ShardResponse};
use serde::{Deserialize, Serialize};

use super::lock;
use crate::manifest::{Manifest, ManifestDir};
use crate::store::{ChunkRegion, ChunkStore, StoreConfig, StoreError};

/// Most uncommitted shards kept at once, whatever their size (the byte quota alone would
/// let tiny shards fill memory with bookkeeping).
pub const MAX_PENDING_SHARDS: usize = 1 << 20;

/// How long an uncommitted shard is kept after its uploader's last new shard here (or after
/// it came, when the uploader is not known: an anonymous peer, or a restart in between).
pub const PENDING_TTL_MS: u64 = 10 * 60 * 1000;
/// The longest an uncommitted shard is kept however its uploader goes on: an upload (and
/// its commit) must end within this. The price of long uploads: a peer that never commits
/// can hold pending space this long (six times [`PENDING_TTL_MS`]) by putting one new
/// shard, however small, every ten minutes, so the extension holds only while the node's
/// uncommitted shards take at most half of [`PENDING_QUOTA`]; past that, every pending
/// shard expires [`PENDING_TTL_MS`] after it came, as if its uploader had stopped.
pub const PENDING_MAX_MS: u64 = 60 * 60 * 1000;
/// Whether an upload last heard of at `since` (ms) has been silent longer than
/// [`PENDING_TTL_MS`] at `now_ms`: its pending shards expire.
fn idle_too_long(now_ms: u64, since: u64) -> bool {
    now_ms.saturating_sub(since) > PENDING_TTL_MS
}

/// Most bytes of uncommitted shards a node keeps (beyond it `Put` is refused).
pub const PENDING_QUOTA: u64 = 8 << 30;
/// How long an access decision is reused.
const ACCESS_TTL: Duration = Duration::from_secs(2);
/// Access answers cached at most.
const ACCESS_CACHE: usize = 100_000;
/// How long a storage peer's stake, as read from the chain, is trusted.
const STAKE_TTL: Duration = Duration::from_secs(10);

/// What the storage role needs from the chain the node follows.
pub trait ChainView: Send + Sync {
    /// The registration of `id`, if any.
    fn data(&self, id: &DataId) -> Option<chain::DataRecord>;
    /// Whether `reader` may read interval `interval` of `id` at the current head.
    fn may_read(&self, reader: &Address, id: &DataId, interval: u64) -> bool;
    /// Whether `reader` may read some interval of `id` at the current head (the manifest).
    fn may_read_some(&self, reader: &Address, id: &DataId) -> bool;
    /// Whether `who` holds the RNode deposit at the current head; `None` if the chain did
    /// not answer in time.
    fn is_rnode(&self, who: &Address) -> Option<bool>;
    /// Whether `who` is one of the [`COORDINATOR_CANDIDATES`] RNodes XOR-closest to `data`,
    /// the ones that may coordinate it (and so publish its DHT record); `None` if the chain
    /// did not answer in time.
    fn may_coordinate(&self, who: &Address, data: &DataId) -> Option<bool> {
        let _ = data;
        self.is_rnode(who)
    }
}

/// RNodes that may coordinate a data item: the ones XOR-closest to its id. Its coordinator
/// is the closest that answers, so this many would have to be down at once before a repair
/// could not be published.
pub const COORDINATOR_CANDIDATES: usize = 8;

/// Deliberate misbehaviour, for tests of audits, repair and puts only (`[storage] fault`).
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
    /// Acknowledges every uploaded shard without keeping it (as a node that restarts
    /// between a put's upload and its commit would); honest otherwise.
    ForgetUploads,
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
    /// Superseded shards deleted (their slot is another node's; see
    /// [`StorageService::release`]).
    pub released: AtomicU64,
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
    /// Superseded shards deleted (their slot went to another node while this one was away).
    #[serde(default)]
    pub shards_released: u64,
    /// Data items this node coordinates (audits and repair).
    pub coordinated: u64,
    /// Audits this node sent as coordinator.
    pub audits_sent: u64,
    /// Of which passed.
    pub audits_passed: u64,
    /// Of which failed (missing shard, bad proof, refusal).
    pub audits_failed: u64,
    /// Of which not answered.
    #[serde(default)]
    pub audits_unreachable: u64,
    /// Shards this node rebuilt and placed on other nodes.
    pub shards_repaired: u64,
    /// Bytes moved by those repairs.
    pub repair_bytes: u64,
    /// Times a block was found with fewer than k live shards, since start.
    pub unrecoverable_blocks: u64,
    /// Coordinated blocks with lost shards now (being repaired).
    #[serde(default)]
    pub damaged_blocks_now: u64,
    /// Of which with fewer than k live shards now.
    #[serde(default)]
    pub unrecoverable_blocks_now: u64,
    /// Holders of coordinated data, with their audit record.
    pub holders: Vec<super::coordinator::HolderView>,
    /// Recent audit failures and repair problems, newest last.
    pub recent_failures: Vec<String>,
}

/// (reader, data, interval): an access decision's key.
type AccessKey = (Address, DataId, Scope);

/// Yes/no answers of the chain, each reused for `ttl`, at most [`ACCESS_CACHE`] kept: when
/// full, stale answers go first, and only a flood of fresh ones empties the cache.
#[derive(Debug)]
pub(crate) struct TtlCache<K> {
    map: Mutex<HashMap<K, (bool, Instant)>>,
    ttl: Duration,
}

impl<K: std::hash::Hash + Eq> TtlCache<K> {
    pub(crate) fn new(ttl: Duration) -> Self {
        TtlCache {
            map: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// The answer for `key`, if one younger than the ttl is kept.
    pub(crate) fn get(&self, key: &K) -> Option<bool> {
        lock(&self.map)
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(ok, _)| *ok)
    }

    pub(crate) fn insert(&self, key: K, ok: bool) {
        let mut cache = lock(&self.map);
        if cache.len() >= ACCESS_CACHE {
            cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if cache.len() >= ACCESS_CACHE {
                cache.clear();
            }
        }
        cache.insert(key, (ok, Instant::now()));
    }
}

/// What a read covers: one encryption interval of the data, or (its manifest) any part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Scope {
    Interval(u64),
    Any,
}

struct Pending {
    at_ms: u64,
    len: u64,
    /// Who uploaded it, when known.
    uploader: Option<[u8; 32]>,
}

/// A storage node's shard service. Thread-safe; `handle` may run on several threads.
pub struct StorageService {
    me: [u8; 32],
    peers: std::sync::OnceLock<Arc<super::net::NetStats>>,
    store: ChunkStore,
    manifests: ManifestDir,
    chain: Arc<dyn ChainView>,
    fault: Fault,
    index: Mutex<HashMap<ChunkId, Held>>,
    /// (block, index) of the confirmed shards held here, by data item: what `Held` answers
    /// without scanning every shard of every item.
    by_data: Mutex<HashMap<DataId, BTreeSet<(u64, u8)>>>,
    pending: Mutex<HashMap<ChunkId, Pending>>,
    pending_bytes: AtomicU64,
    /// Per uploader, when it last put a new shard here (see [`PENDING_TTL_MS`]).
    last_put: Mutex<HashMap<[u8; 32], u64>>,
    /// Shards [`StorageService::expire_pending`] has chosen to delete and is deleting: a
    /// commit does not confirm them and a put is asked to retry until the delete is done.
    /// Locks nest in the order `index`, `pending`, `expiring`, `last_put`.
    expiring: Mutex<HashSet<ChunkId>>,
    /// Shards this node is about to release, while their new holders are audited: neither
    /// read nor audited for anyone meanwhile, so a new holder cannot pass its audit by
    /// relaying the challenge (or a read) to this node.
    releasing: Mutex<HashSet<ChunkId>>,
    access: TtlCache<AccessKey>,
    /// Whether storage peers are staked, by address (see `staked`).
    stake_cache: TtlCache<Address>,
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

/// How long a free-space reading is reused.
const DISK_FREE_TTL: Duration = Duration::from_secs(10);

/// Free bytes for unprivileged writers on the file system of `path` (`statvfs`). The
/// store's own capacity accounting is the authoritative limit; this is informational. (It
/// used to run `df`: a child process forked while the store was being dropped briefly held
/// a copy of the store's lock, and a reopen in that window failed with "locked".)
fn fs_free(path: &Path) -> Option<u64> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

impl StorageService {
    /// Opens (or creates) the shard store and manifests under `dir` and rebuilds the index.
    /// `me` is this node's own key: its coordinator reads its own shards for repair.
    pub fn open(
        dir: &Path,
        me: [u8; 32],
        chain: Arc<dyn ChainView>,
        fault: Fault,
    ) -> Result<StorageService> {
        let store = ChunkStore::open(dir.join("shards"), StoreConfig::default())
            .with_context(|| format!("opening the shard store in {}", dir.display()))?;
        let manifests = ManifestDir::open(dir.join("manifests"))
            .with_context(|| format!("opening manifests in {}", dir.display()))?;
        let s = StorageService {
            me,
            peers: std::sync::OnceLock::new(),
            store,
            manifests,
            chain,
            fault,
            index: Mutex::new(HashMap::new()),
            by_data: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            pending_bytes: AtomicU64::new(0),
            last_put: Mutex::new(HashMap::new()),
            expiring: Mutex::new(HashSet::new()),
            releasing: Mutex::new(HashSet::new()),
            access: TtlCache::new(ACCESS_TTL),
            stake_cache: TtlCache::new(STAKE_TTL),
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
        // Shards no saved manifest claims were uploaded and never committed before the
        // restart: pending again from now, so they expire (and free their space) unless a
        // commit still comes.
        let now = super::config::now_ms();
        let orphans: Vec<(ChunkId, u64)> = {
            let index = lock(&self.index);
            self.store
                .chunks()
                .into_iter()
                .filter(|(c, _)| !index.contains_key(c))
                .collect()
        };
        let mut pending = lock(&self.pending);
        for (c, len) in &orphans {
            pending.insert(
                *c,
                Pending {
                    at_ms: now,
                    len: *len,
                    uploader: None,
                },
            );
            self.pending_bytes.fetch_add(*len, Ordering::Relaxed);
        }
        tracing::info!(
            "storage: {n} shards held, {} uncommitted (expire unless committed)",
            orphans.len()
        );
        Ok(())
    }

    /// Records every shard of `m` that the store holds; returns how many.
    fn index_manifest(&self, m: &Manifest) -> u64 {
        let id = m.data_id();
        let mut index = lock(&self.index);
        let expiring = lock(&self.expiring);
        let mut held = BTreeSet::new();
        for (b, e) in m.blocks.iter().enumerate() {
            for (i, c) in e.shards.iter().enumerate() {
                if self.store.contains(c) && !expiring.contains(c) {
                    index.insert(
                        *c,
                        Held {
                            data: id,
                            block: b as u64,
                            index: i as u8,
                            interval: b as u64 / u64::from(m.interval_blocks.max(1)),
                        },
                    );
                    held.insert((b as u64, i as u8));
                }
            }
        }
        drop(expiring);
        let n = held.len() as u64;
        // Under the index lock (order: index, then by_data), so a release between the two
        // cannot be undone here.
        if n > 0 {
            lock(&self.by_data).insert(id, held);
        }
        drop(index);
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

    /// Deletes shard `index` of `block` of `data`, which this node keeps but the data's map
    /// gives to another node (see the coordinator's `release_superseded`); returns whether
    /// it was here. The manifest stays: other shards of the item may still be this node's.
    pub fn release(&self, data: &DataId, block: u64, index: u8, c: ChunkId) -> Result<bool> {
        {
            let mut idx = lock(&self.index);
            let ours = idx
                .get(&c)
                .is_some_and(|h| h.data == *data && h.block == block && h.index == index);
            if !ours {
                return Ok(false);
            }
            idx.remove(&c);
            let mut by = lock(&self.by_data);
            if let Some(set) = by.get_mut(data) {
                set.remove(&(block, index));
                if set.is_empty() {
                    by.remove(data);
                }
            }
            // A commit that lists it while it is being deleted does not confirm it.
            lock(&self.expiring).insert(c);
        }
        let r = self.store.delete(&c);
        lock(&self.expiring).remove(&c);
        r.with_context(|| format!("deleting superseded shard {c}"))?;
        self.counters.released.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Marks shards about to be released (`true`) or no longer (`false`): see `releasing`.
    pub fn set_releasing(&self, ids: &[ChunkId], on: bool) {
        let mut r = lock(&self.releasing);
        for id in ids {
            if on {
                r.insert(*id);
            } else {
                r.remove(id);
            }
        }
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
        lock(&self.by_data)
            .get(data)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Answers one request from `from`: the ed25519 key of the requesting peer (its libp2p
    /// identity, which noise authenticates), or `None` when the peer's identity is not an
    /// ed25519 key (such a peer may store and be audited, but not read).
    pub fn handle(
        &self,
        req: ShardRequest,
        from: Option<&PublicKey>,
        now_ms: u64,
    ) -> ShardResponse {
        self.serve(req, from, now_ms).0
    }

    /// Answers one request; also returns the data id a successful `Commit` confirmed (to be
    /// announced in the DHT).
    pub fn serve(
        &self,
        req: ShardRequest,
        from: Option<&PublicKey>,
        now_ms: u64,
    ) -> (ShardResponse, Option<DataId>) {
        let resp = match req {
            ShardRequest::Commit { manifest, .. } => match Manifest::from_bytes(&manifest) {
                Ok(m) => {
                    let (r, fresh) = self.commit(&m);
                    // Announced as a provider on the first confirmation only.
                    let id = (fresh && matches!(r, ShardResponse::Committed { .. }))
                        .then(|| m.data_id());
                    return (r, id);
                }
                Err(e) => ShardResponse::Refused(format!("the manifest does not decode: {e}")),
            },
            ShardRequest::Put { bytes } => self.put(bytes, from, now_ms),
            ShardRequest::Get { id, data, block } => self.get(id, &data, block, from),
            ShardRequest::GetManifest { data } => self.get_manifest(&data, from),
            ShardRequest::Audit { id, nonce } => self.audit(id, nonce, from),
            ShardRequest::Held { data } => {
                let mut v = self.held(&data);
                v.truncate(dht::wire::MAX_HELD);
                ShardResponse::Held(v)
            }
            ShardRequest::KeepPending => self.keep_uploading(from, now_ms),
            ShardRequest::OpenSession { .. } => {
                ShardResponse::Refused("this node offers no data connections".into())
            }
        };
        (resp, None)
    }

    fn put(&self, bytes: Vec<u8>, from: Option<&PublicKey>, now_ms: u64) -> ShardResponse {
        self.put_as(ChunkId::of(&bytes), bytes, from, now_ms)
    }

    /// A `Put` of shard `expected` whose bytes arrived unsealed (see
    /// [`super::dataplane`]): stored only if they hash to `expected`, so that bytes altered
    /// on the way are refused rather than kept while the owner believes the shard placed.
    pub fn put_expecting(
        &self,
        expected: ChunkId,
        bytes: Vec<u8>,
        from: Option<&PublicKey>,
        now_ms: u64,
    ) -> ShardResponse {
        let id = ChunkId::of(&bytes);
        if id != expected {
            return ShardResponse::Failed(format!(
                "the bytes received are not shard {expected} (altered on the way?); \
                 nothing stored"
            ));
        }
        self.put_as(id, bytes, from, now_ms)
    }

    /// Stores `bytes`, whose content id is `id`, as an uncommitted shard uploaded by `from`.
    fn put_as(
        &self,
        id: ChunkId,
        bytes: Vec<u8>,
        from: Option<&PublicKey>,
        now_ms: u64,
    ) -> ShardResponse {
        let uploader = from.map(|k| *k.as_bytes());
        if self.fault == Fault::ForgetUploads {
            return ShardResponse::Stored;
        }
        if lock(&self.index).contains_key(&id) {
            return ShardResponse::Stored;
        }
        if lock(&self.expiring).contains(&id) {
            return ShardResponse::Failed(format!(
                "shard {id} is being deleted here (it stayed uncommitted too long); put it again"
            ));
        }
        if lock(&self.pending).len() >= MAX_PENDING_SHARDS {
            return ShardResponse::Refused(format!(
                "this node already keeps {MAX_PENDING_SHARDS} uncommitted shards"
            ));
        }
        let len = bytes.len() as u64;
        // Reserve the bytes before writing, so concurrent puts cannot overshoot the quota
        // between a check and an update.
        let before = self.pending_bytes.fetch_add(len, Ordering::Relaxed);
        if before.saturating_add(len) > PENDING_QUOTA {
            self.pending_bytes.fetch_sub(len, Ordering::Relaxed);
            return ShardResponse::Refused(format!(
                "this node already keeps {PENDING_QUOTA} bytes of uncommitted shards"
            ));
        }
        if let Err(e) = self
            .store
            .submit_unsynced(vec![(id, bytes)])
            .and_then(|t| t.wait())
        {
            self.pending_bytes.fetch_sub(len, Ordering::Relaxed);
            return ShardResponse::Failed(format!("storing the shard: {e}"));
        }
        let mut p = lock(&self.pending);
        // An expiry that chose this shard while it was being written (the store keeps one
        // copy of a chunk, so the write may have been a no-op on the doomed copy).
        let doomed = lock(&self.expiring).contains(&id);
        let stored = self.store.contains(&id);
        if doomed || !stored {
            if stored {
                // Our write may have landed after the delete: keep it pending (and counted)
                // so that it expires rather than sits on disk unaccounted for. Failed, so
                // not the uploader going on (it will put the shard elsewhere).
                self.keep_pending(&mut p, id, now_ms, len, None);
            } else {
                self.pending_bytes.fetch_sub(len, Ordering::Relaxed);
            }
            return ShardResponse::Failed(format!(
                "shard {id} was being deleted here (it stayed uncommitted too long); put it again"
            ));
        }
        self.counters.puts.fetch_add(1, Ordering::Relaxed);
        self.keep_pending(&mut p, id, now_ms, len, uploader);
        ShardResponse::Stored
    }

    /// The uploader `from` goes on, with nothing new for this node: its pending shards are
    /// kept as if one had just come. `NotFound` when nothing of its is pending here (or
    /// it was idle too long: then its shards are due to expire, and are not brought back).
    fn keep_uploading(&self, from: Option<&PublicKey>, now_ms: u64) -> ShardResponse {
        let Some(k) = from else {
            return ShardResponse::NotFound;
        };
        let mut last = lock(&self.last_put);
        match last.get_mut(k.as_bytes()) {
            Some(t) if !idle_too_long(now_ms, *t) => {
                *t = (*t).max(now_ms);
                ShardResponse::Stored
            }
            _ => ShardResponse::NotFound,
        }
    }

    /// Records a put of `len` bytes (already reserved in `pending_bytes`) by `uploader` as
    /// pending. Put twice while pending, a shard is counted once and keeps its first put's
    /// time, and the repeat does not count as the uploader going on: only new shards keep
    /// an upload's shards from expiring.
    fn keep_pending(
        &self,
        p: &mut HashMap<ChunkId, Pending>,
        id: ChunkId,
        now_ms: u64,
        len: u64,
        uploader: Option<[u8; 32]>,
    ) {
        if let std::collections::hash_map::Entry::Vacant(e) = p.entry(id) {
            e.insert(Pending {
                at_ms: now_ms,
                len,
                uploader,
            });
            if let Some(u) = uploader {
                let mut last = lock(&self.last_put);
                let t = last.entry(u).or_insert(now_ms);
                *t = (*t).max(now_ms);
            }
        } else {
            self.pending_bytes.fetch_sub(len, Ordering::Relaxed);
        }
    }

    /// Confirms the shards `m` lists that are stored here; the flag says whether anything
    /// changed (a replayed commit, or a retry after a lost answer, is answered from memory:
    /// no syncs, no manifest rewrite, no new provider announcement).
    fn commit(&self, m: &Manifest) -> (ShardResponse, bool) {
        if let Err(e) = m.check() {
            let why = format!("the manifest is inconsistent: {e}");
            return (ShardResponse::Refused(why), false);
        }
        let id = m.data_id();
        let Some(reg) = self.chain.data(&id) else {
            let why = format!("data {id} is not registered on chain (as of this node's head)");
            return (ShardResponse::Refused(why), false);
        };
        if reg.merkle_root != m.root || reg.owner != Address::of(&m.owner) {
            let why = format!("the manifest's root or owner differs from data {id}'s registration");
            return (ShardResponse::Refused(why), false);
        }
        let listed: Vec<ChunkId> = m
            .blocks
            .iter()
            .flat_map(|b| b.shards.iter().copied())
            .collect();
        if self.manifests.contains(&id) {
            let index = lock(&self.index);
            let news = listed
                .iter()
                .any(|c| !index.contains_key(c) && self.store.contains(c));
            drop(index);
            if !news {
                let n = lock(&self.by_data).get(&id).map_or(0, BTreeSet::len);
                let confirmed = u32::try_from(n).unwrap_or(u32::MAX);
                return (ShardResponse::Committed { confirmed }, false);
            }
        }
        // Durability first: the shards, then the manifest that makes them count.
        if let Err(e) = self.store.sync() {
            let why = format!("syncing the shard store: {e}");
            return (ShardResponse::Failed(why), false);
        }
        if let Err(e) = self.manifests.save(m) {
            return (
                ShardResponse::Failed(format!("saving the manifest: {e}")),
                false,
            );
        }
        {
            let mut p = lock(&self.pending);
            for c in &listed {
                if let Some(x) = p.remove(c) {
                    self.pending_bytes.fetch_sub(x.len, Ordering::Relaxed);
                }
            }
        }
        let n = self.index_manifest(m);
        let confirmed = u32::try_from(n).unwrap_or(u32::MAX);
        (ShardResponse::Committed { confirmed }, true)
    }

    /// Whether the reader `from` may read `scope` of `data`: storage nodes may (repair),
    /// others need a right on chain.
    fn allowed(&self, from: Option<&PublicKey>, data: &DataId, scope: Scope) -> Result<(), String> {
        let Some(from) = from else {
            return Err(
                "the requesting peer's identity is not an ed25519 key; reads are \
                        checked against the chain key a peer's identity is"
                    .into(),
            );
        };
        if from.as_bytes() == &self.me {
            return Ok(());
        }
        let reader = Address::of(from);
        // Storage nodes read without a grant (audits, repair), but a peer is one only if it
        // says so (identify) *and* has stake on chain: saying so alone is free.
        if self.is_storage_node(from.as_bytes()) && self.staked(&reader) {
            return Ok(());
        }
        let key = (reader, *data, scope);
        let ok = match self.access.get(&key) {
            Some(ok) => ok,
            None => {
                let ok = match scope {
                    Scope::Interval(i) => self.chain.may_read(&reader, data, i),
                    Scope::Any => self.chain.may_read_some(&reader, data),
                };
                self.access.insert(key, ok);
                ok
            }
        };
        if ok {
            Ok(())
        } else {
            Err(refusal(&reader, data, scope))
        }
    }

    /// Whether `who` holds the RNode deposit (asked of the chain, cached briefly).
    pub(crate) fn staked(&self, who: &Address) -> bool {
        if let Some(ok) = self.stake_cache.get(who) {
            return ok;
        }
        // No answer (a busy engine) refuses this read but is not remembered.
        let Some(ok) = self.chain.is_rnode(who) else {
            return false;
        };
        self.stake_cache.insert(*who, ok);
        ok
    }

    /// Appends shard `id` to `out`; `Ok(false)` when it is not held (or a fault hides it).
    fn read_shard_into(
        &self,
        id: &ChunkId,
        out: &mut Vec<u8>,
        room: usize,
    ) -> Result<bool, StoreError> {
        if self.fault == Fault::Delete {
            return Ok(false);
        }
        let start = out.len();
        match self.store.get_into_with_room(id, out, room) {
            Ok(()) => {
                if self.fault == Fault::BitFlip && out.len() > start {
                    if let Some(x) = out.last_mut() {
                        *x ^= 1;
                    }
                }
                Ok(true)
            }
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn read_shard(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        Ok(self.read_shard_into(id, &mut out, 0)?.then_some(out))
    }

    fn get(
        &self,
        id: ChunkId,
        data: &DataId,
        block: u64,
        from: Option<&PublicKey>,
    ) -> ShardResponse {
        let mut out = Vec::new();
        match self.get_into(id, data, block, from, &mut out, 0) {
            None => ShardResponse::Shard(out),
            Some(r) => r,
        }
    }

    /// Serves a read of shard `id` of block `block` of `data` for `from` by appending the
    /// shard's bytes to `out` (a data connection builds its answer frame around them):
    /// `None` when they were appended, else the answer to send instead (`out` unchanged).
    /// At least `room` bytes of spare capacity are left after the shard for a trailer.
    pub fn get_into(
        &self,
        id: ChunkId,
        data: &DataId,
        block: u64,
        from: Option<&PublicKey>,
        out: &mut Vec<u8>,
        room: usize,
    ) -> Option<ShardResponse> {
        if let Err(no) = self.may_read(id, data, block, from) {
            return Some(no);
        }
        let start = out.len();
        match self.read_shard_into(&id, out, room) {
            Ok(true) => {
                self.count_served(out.len() - start);
                None
            }
            Ok(false) => Some(ShardResponse::NotFound),
            Err(e) => Some(ShardResponse::Failed(format!("reading shard {id}: {e}"))),
        }
    }

    /// Serves a read of shard `id` of block `block` of `data` for `from` as the shard's
    /// place in the store, for a data connection to send without copying it through this
    /// process; `Err` is the answer to send instead. The store's checksum of the bytes is
    /// not checked on this path: the reader checks them against their content id, and
    /// audits (which read through the checksum) catch a holder whose disk rots. `Ok(None)`
    /// means read the shard with [`StorageService::get_into`]: a node that injects faults
    /// must serve the bytes it altered.
    pub fn get_region(
        &self,
        id: ChunkId,
        data: &DataId,
        block: u64,
        from: Option<&PublicKey>,
    ) -> Result<Option<ChunkRegion>, ShardResponse> {
        if self.fault != Fault::None {
            return Ok(None);
        }
        self.may_read(id, data, block, from)?;
        match self.store.region(&id) {
            Ok(r) => {
                self.count_served(r.len());
                Ok(Some(r))
            }
            Err(StoreError::NotFound { .. }) => Err(ShardResponse::NotFound),
            Err(e) => Err(ShardResponse::Failed(format!("reading shard {id}: {e}"))),
        }
    }

    /// Counts one shard of `bytes` served to a reader.
    fn count_served(&self, bytes: usize) {
        self.counters.served.fetch_add(1, Ordering::Relaxed);
        self.counters
            .served_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Whether `from` may read shard `id` as part of block `block` of `data`; `Err` is the
    /// answer to send instead.
    fn may_read(
        &self,
        id: ChunkId,
        data: &DataId,
        block: u64,
        from: Option<&PublicKey>,
    ) -> Result<(), ShardResponse> {
        if lock(&self.releasing).contains(&id) {
            return Err(ShardResponse::Failed(format!(
                "shard {id} is being handed over"
            )));
        }
        let Some(h) = lock(&self.index).get(&id).copied() else {
            return Err(ShardResponse::NotFound);
        };
        if h.data != *data || h.block != block {
            // Say no more than the requester claimed: not where the shard really belongs.
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(ShardResponse::Refused(format!(
                "shard {id} is not part of block {block} of data {data}"
            )));
        }
        if let Err(why) = self.allowed(from, data, Scope::Interval(h.interval)) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return Err(ShardResponse::Refused(why));
        }
        Ok(())
    }

    fn get_manifest(&self, data: &DataId, from: Option<&PublicKey>) -> ShardResponse {
        // Unknown data costs no access check (a question to the chain engine): data ids
        // are public, so saying "not here" tells nothing.
        if !self.manifests.contains(data) {
            return ShardResponse::NotFound;
        }
        if let Err(why) = self.allowed(from, data, Scope::Any) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return ShardResponse::Refused(why);
        }
        match self.manifests.load(data) {
            Ok(m) => ShardResponse::Manifest(m.to_bytes()),
            Err(crate::pipeline::PipelineError::UnknownData { .. }) => ShardResponse::NotFound,
            Err(e) => ShardResponse::Failed(format!("loading the manifest: {e}")),
        }
    }

    fn audit(&self, id: ChunkId, nonce: u64, from: Option<&PublicKey>) -> ShardResponse {
        if lock(&self.releasing).contains(&id) {
            return ShardResponse::Failed(format!("shard {id} is being handed over"));
        }
        if !lock(&self.index).contains_key(&id) {
            self.counters.audits_missing.fetch_add(1, Ordering::Relaxed);
            return ShardResponse::NotFound;
        }
        // Coordinators, who audit, are RNodes. Anyone else could read a shard 1 KiB at a
        // time through the proofs, without a grant. `Failed`, not `Refused`: an auditor
        // whose deposit this node has not seen yet must not count the answer against us.
        if !from.is_some_and(|k| self.staked(&Address::of(k))) {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            return ShardResponse::Failed(
                "audits are answered to RNodes (storage nodes with the deposit) only".into(),
            );
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

    /// Deletes the uncommitted shards whose uploader sent nothing new here for
    /// [`PENDING_TTL_MS`], or that came over [`PENDING_MAX_MS`] ago; returns how many
    /// expired. What expires is decided under the index and pending locks, so a commit or a
    /// put racing with it neither loses a shard it was just told is kept nor is counted twice.
    pub fn expire_pending(&self, now_ms: u64) -> usize {
        let (expired, doomed) = {
            let index = lock(&self.index);
            let mut pending = lock(&self.pending);
            let mut expiring = lock(&self.expiring);
            let mut last = lock(&self.last_put);
            let idle = |t: u64| idle_too_long(now_ms, t);
            // Past half the quota, going on no longer keeps anything: pending space is
            // then kept for uploads that commit within the ten minutes.
            let crowded = self.pending_bytes.load(Ordering::Relaxed) > PENDING_QUOTA / 2;
            let old: Vec<ChunkId> = pending
                .iter()
                .filter(|(_, p)| {
                    let going = p.uploader.filter(|_| !crowded);
                    let active = going
                        .and_then(|u| last.get(&u).copied())
                        .map_or(p.at_ms, |t| t.max(p.at_ms));
                    idle(active) || now_ms.saturating_sub(p.at_ms) > PENDING_MAX_MS
                })
                .map(|(c, _)| *c)
                .collect();
            // An uploader idle that long keeps nothing alive any more.
            last.retain(|_, t| !idle(*t));
            drop(last);
            let mut doomed = Vec::new();
            for c in &old {
                if let Some(p) = pending.remove(c) {
                    self.pending_bytes.fetch_sub(p.len, Ordering::Relaxed);
                }
                // Confirmed by another item's commit meanwhile: kept.
                if !index.contains_key(c) && expiring.insert(*c) {
                    doomed.push(*c);
                }
            }
            (old.len(), doomed)
        };
        for c in &doomed {
            if let Err(e) = self.store.delete(c) {
                tracing::warn!("deleting expired shard {c}: {e}");
            }
        }
        {
            let mut expiring = lock(&self.expiring);
            for c in &doomed {
                expiring.remove(c);
            }
        }
        self.counters
            .pending_expired
            .fetch_add(expired as u64, Ordering::Relaxed);
        expired
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
            shards_released: self.counters.released.load(Ordering::Relaxed),
            coordinated: self.coord.data_items.load(Ordering::Relaxed),
            audits_sent: self.coord.audits.load(Ordering::Relaxed),
            audits_passed: self.coord.audits_passed.load(Ordering::Relaxed),
            audits_failed: self.coord.audits_failed.load(Ordering::Relaxed),
            shards_repaired: self.coord.shards_repaired.load(Ordering::Relaxed),
            repair_bytes: self.coord.repair_bytes.load(Ordering::Relaxed),
            audits_unreachable: self.coord.audits_unreachable.load(Ordering::Relaxed),
            unrecoverable_blocks: self.coord.unrecoverable.load(Ordering::Relaxed),
            damaged_blocks_now: self.coord.damaged_now.load(Ordering::Relaxed),
            unrecoverable_blocks_now: self.coord.unrecoverable_now.load(Ordering::Relaxed),
            holders: lock(&self.coord.holders).clone(),
            recent_failures: lock(&self.coord.failures).clone(),
        }
    }
}

fn refusal(reader: &Address, data: &DataId, scope: Scope) -> String {
    let what = match scope {
        Scope::Interval(i) => format!("interval {i} of"),
        Scope::Any => "any part of".to_string(),
    };
    format!(
        "{reader} holds no right on chain to read {what} data {data} \
         (neither its owner nor a live grant)"
    )
}

/// Answers one encoded shard request from `from`; `plane` opens data sessions. A committed
/// data item is announced in the DHT through `net`.
fn respond(
    service: &StorageService,
    plane: Option<&super::dataplane::DataServer>,
    req: &[u8],
    from: Option<&PublicKey>,
    net: &tokio::sync::mpsc::UnboundedSender<super::net::NetCmd>,
) -> ShardResponse {
    respond_to(service, plane, ShardRequest::from_bytes(req), from, net)
}

fn respond_to(
    service: &StorageService,
    plane: Option<&super::dataplane::DataServer>,
    req: Result<ShardRequest, crypto_accel::CodecError>,
    from: Option<&PublicKey>,
    net: &tokio::sync::mpsc::UnboundedSender<super::net::NetCmd>,
) -> ShardResponse {
    let (resp, committed) = match (req, plane) {
        (Ok(ShardRequest::OpenSession { key }), Some(p)) => {
            (p.open_session(from.copied(), key), None)
        }
        // Without a data plane `serve` refuses `OpenSession` itself.
        (Ok(req), _) => service.serve(req, from, super::config::now_ms()),
        (Err(e), _) => (
            ShardResponse::Refused(format!("malformed request: {e}")),
            None,
        ),
    };
    if let Some(d) = committed {
        let _ = net.send(super::net::NetCmd::Provide(d));
    }
    resp
}

/// What a data connection of this node answers: the storage service, as the peer that
/// opened the session (sessions are opened over libp2p only).
struct DataAnswer {
    service: Arc<StorageService>,
    net: tokio::sync::mpsc::UnboundedSender<super::net::NetCmd>,
}

impl super::dataplane::Answer for DataAnswer {
    fn answer(
        &self,
        req: &[u8],
        from: Option<&PublicKey>,
        unsealed: bool,
        out: &mut Vec<u8>,
    ) -> Option<ChunkRegion> {
        let req = ShardRequest::from_bytes(req);
        if let Ok(ShardRequest::Get { id, data, block }) = &req {
            if unsealed {
                match self.service.get_region(*id, data, *block, from) {
                    // The shard goes from the page cache to the socket (see `dataplane`).
                    Ok(Some(region)) => return Some(region),
                    Err(resp) => {
                        super::dataplane::put_answer(&resp, out);
                        return None;
                    }
                    Ok(None) => {}
                }
            }
            // The shard's bytes go straight from the store into the answer frame, with room
            // left so that neither the kind byte nor the AEAD tag makes it grow (and move).
            let room = 1 + crypto_accel::TAG_LEN;
            match self.service.get_into(*id, data, *block, from, out, room) {
                None => out.push(super::dataplane::ANSWER_SHARD),
                Some(resp) => super::dataplane::put_answer(&resp, out),
            }
            return None;
        }
        let resp = respond_to(&self.service, None, req, from, &self.net);
        super::dataplane::put_answer(&resp, out);
        None
    }

    fn put(&self, id: ChunkId, shard: Vec<u8>, from: Option<&PublicKey>, out: &mut Vec<u8>) {
        let resp = self
            .service
            .put_expecting(id, shard, from, super::config::now_ms());
        super::dataplane::put_answer(&resp, out);
    }
}

/// Starts the data listener on `ip:port` (see [`super::dataplane`]).
pub fn start_data_plane(
    service: &Arc<StorageService>,
    ip: std::net::IpAddr,
    port: u16,
    net: tokio::sync::mpsc::UnboundedSender<super::net::NetCmd>,
) -> Result<Arc<super::dataplane::DataServer>> {
    super::dataplane::DataServer::start(
        ip,
        port,
        Arc::new(DataAnswer {
            service: Arc::clone(service),
            net,
        }),
    )
}

/// Starts `n` threads answering shard requests; returns the queue the network feeds. A
/// committed data item is announced in the DHT (provider record); `plane`, when running,
/// answers `OpenSession`.
pub fn spawn_workers(
    service: &Arc<StorageService>,
    n: usize,
    net: tokio::sync::mpsc::UnboundedSender<super::net::NetCmd>,
    plane: Option<Arc<super::dataplane::DataServer>>,
) -> Result<std::sync::mpsc::SyncSender<super::net::ShardJob>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<super::net::ShardJob>(1024);
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n.max(1) {
        let (rx, service, net, plane) = (
            Arc::clone(&rx),
            Arc::clone(service),
            net.clone(),
            plane.clone(),
        );
        std::thread::Builder::new()
            .name(format!("cpchain-shard-{i}"))
            .spawn(move || loop {
                let job = match lock(&rx).recv() {
                    Ok(j) => j,
                    Err(_) => return,
                };
                let resp = respond(
                    &service,
                    plane.as_deref(),
                    &job.data,
                    job.from.as_ref(),
                    &net,
                );
                if net
                    .send(super::net::NetCmd::ShardRespond {
                        id: job.id,
                        data: resp.to_bytes(),
                    })
                    .is_err()
                {
                    return;
                }
            })
            .context("starting a shard worker")?;
    }
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::net::{KnownStorage, NetStats};
    use crate::pipeline::{seal, MemoryShards, SealParams};
    use chain::{AccessPolicy, DataRecord};
    use crypto_accel::{Hash, Keypair};
    use dht::proof::AuditProof;
    use std::ops::Range;

    const NOW: u64 = 1_700_000_000_000;
    /// A minute, in the milliseconds the service's clocks count.
    const MIN: u64 = 60 * 1000;
    const BLOCK: u32 = 4096;

    /// The chain as the storage role sees it: registrations, grants by interval range, and
    /// RNodes ([`auditor`] among them).
    struct FakeChain {
        data: Mutex<HashMap<DataId, DataRecord>>,
        grants: Mutex<HashMap<(Address, DataId), Range<u64>>>,
        rnodes: Mutex<HashSet<Address>>,
    }

    impl Default for FakeChain {
        fn default() -> Self {
            FakeChain {
                data: Mutex::default(),
                grants: Mutex::default(),
                rnodes: Mutex::new(HashSet::from([Address::of(&auditor().public())])),
            }
        }
    }

    impl FakeChain {
        fn register(&self, m: &Manifest) {
            self.register_as(m, m.root, Address::of(&m.owner));
        }

        fn register_as(&self, m: &Manifest, root: Hash, owner: Address) {
            let rec = DataRecord {
                owner,
                merkle_root: root,
                size: m.length,
                k: u16::from(m.k),
                m: u16::from(m.m),
                intervals: m.interval_range(),
                policy: AccessPolicy::GrantBased,
                registered_at: 1,
            };
            lock(&self.data).insert(m.data_id(), rec);
        }

        fn grant(&self, reader: &Keypair, id: DataId, intervals: Range<u64>) {
            lock(&self.grants).insert((Address::of(&reader.public()), id), intervals);
        }
    }

    impl ChainView for FakeChain {
        fn data(&self, id: &DataId) -> Option<DataRecord> {
            lock(&self.data).get(id).copied()
        }

        fn may_read(&self, reader: &Address, id: &DataId, interval: u64) -> bool {
            let owner = lock(&self.data).get(id).map(|r| r.owner);
            owner == Some(*reader)
                || lock(&self.grants)
                    .get(&(*reader, *id))
                    .is_some_and(|r| r.contains(&interval))
        }

        fn may_read_some(&self, reader: &Address, id: &DataId) -> bool {
            let owner = lock(&self.data).get(id).map(|r| r.owner);
            owner == Some(*reader)
                || lock(&self.grants)
                    .get(&(*reader, *id))
                    .is_some_and(|r| !r.is_empty())
        }

        fn is_rnode(&self, who: &Address) -> Option<bool> {
            Some(lock(&self.rnodes).contains(who))
        }
    }

    /// Three blocks (the last one short) sealed at 4+2, one block per interval.
    struct Sealed {
        owner: Keypair,
        manifest: Manifest,
        shards: HashMap<ChunkId, Vec<u8>>,
    }

    fn sealed() -> Sealed {
        sealed_with_seed(1)
    }

    /// [`sealed`] for another owner (so other shards).
    fn sealed_with_seed(seed: u8) -> Sealed {
        let owner = Keypair::from_seed([seed; 32]);
        let params = SealParams {
            k: 4,
            m: 2,
            block_size: BLOCK,
            interval_blocks: 1,
            window: 1,
            ..SealParams::default()
        };
        let data: Vec<u8> = (0..2 * BLOCK as usize + 1000)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut sink = MemoryShards::default();
        let manifest = seal(&data[..], &owner, &params, &mut sink, &|_| {}).unwrap();
        assert_eq!(manifest.blocks.len(), 3);
        assert_eq!(sink.shards.len(), 3 * 6);
        Sealed {
            owner,
            manifest,
            shards: sink.shards,
        }
    }

    impl Sealed {
        fn id(&self) -> DataId {
            self.manifest.data_id()
        }

        fn shard_id(&self, block: u64, index: u8) -> ChunkId {
            self.manifest.blocks[block as usize].shards[usize::from(index)]
        }

        fn bytes(&self, block: u64, index: u8) -> Vec<u8> {
            self.shards[&self.shard_id(block, index)].clone()
        }

        fn put(&self, s: &StorageService, pairs: &[(u64, u8)]) {
            for &(b, i) in pairs {
                let r = s.handle(
                    ShardRequest::Put {
                        bytes: self.bytes(b, i),
                    },
                    None,
                    NOW,
                );
                assert_eq!(r, ShardResponse::Stored, "put of shard ({b}, {i})");
            }
        }

        fn commit(&self, s: &StorageService) -> (ShardResponse, Option<DataId>) {
            commit_manifest(s, &self.manifest)
        }
    }

    fn commit_manifest(s: &StorageService, m: &Manifest) -> (ShardResponse, Option<DataId>) {
        s.serve(
            ShardRequest::Commit {
                manifest: m.to_bytes(),
                keep_manifest: true,
            },
            None,
            NOW,
        )
    }

    /// Uncommitted shards.
    fn pending(s: &StorageService) -> u64 {
        lock(&s.pending).len() as u64
    }

    fn node_key() -> Keypair {
        Keypair::from_seed([9; 32])
    }

    /// Opens the service on `dir` (a reopen right after a drop must work at once: nothing
    /// may keep the store's lock alive past the drop).
    fn open(dir: &Path, chain: &Arc<FakeChain>, fault: Fault) -> StorageService {
        let chain: Arc<dyn ChainView> = Arc::clone(chain) as Arc<dyn ChainView>;
        StorageService::open(dir, *node_key().public().as_bytes(), chain, fault)
            .unwrap_or_else(|e| panic!("opening {}: {e:#}", dir.display()))
    }

    /// A `Get` of shard (block, index) of `d` from the peer whose key is `reader`'s.
    fn get_as(s: &StorageService, d: &Sealed, reader: &Keypair, b: u64, i: u8) -> ShardResponse {
        let req = ShardRequest::Get {
            id: d.shard_id(b, i),
            data: d.id(),
            block: b,
        };
        s.handle(req, Some(&reader.public()), NOW)
    }

    fn get_manifest_as(s: &StorageService, data: DataId, reader: &Keypair) -> ShardResponse {
        s.handle(
            ShardRequest::GetManifest { data },
            Some(&reader.public()),
            NOW,
        )
    }

    fn refusal_text(r: &ShardResponse) -> &str {
        match r {
            ShardResponse::Refused(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// The coordinator that audits in these tests: an RNode on every [`FakeChain`].
    fn auditor() -> Keypair {
        Keypair::from_seed([77; 32])
    }

    fn audit(s: &StorageService, id: ChunkId, nonce: u64) -> ShardResponse {
        s.handle(
            ShardRequest::Audit { id, nonce },
            Some(&auditor().public()),
            NOW,
        )
    }

    fn proof_of(r: ShardResponse) -> AuditProof {
        match r {
            ShardResponse::Proof(p) => AuditProof::from_bytes(&p).unwrap(),
            other => panic!("expected a proof, got {other:?}"),
        }
    }

    /// Every (block, index) of the sealed data.
    fn all_pairs() -> Vec<(u64, u8)> {
        (0..3u64)
            .flat_map(|b| (0..6u8).map(move |i| (b, i)))
            .collect()
    }

    /// A subset in no particular order: two blocks partly, one fully.
    const SOME: [(u64, u8); 10] = [
        (2, 5),
        (0, 5),
        (1, 3),
        (2, 0),
        (0, 0),
        (2, 3),
        (1, 1),
        (2, 1),
        (2, 4),
        (2, 2),
    ];

    fn sorted(pairs: &[(u64, u8)]) -> Vec<(u64, u8)> {
        let mut v = pairs.to_vec();
        v.sort_unstable();
        v
    }

    /// A fresh node (honest, on an empty chain) that was sent `pairs` of freshly sealed
    /// data: pending, nothing registered.
    fn uploaded(dir: &Path, pairs: &[(u64, u8)]) -> (Arc<FakeChain>, StorageService, Sealed) {
        let chain = Arc::new(FakeChain::default());
        let s = open(dir, &chain, Fault::None);
        let d = sealed();
        d.put(&s, pairs);
        (chain, s, d)
    }

    /// A node holding `pairs` of freshly sealed data, committed.
    fn committed(dir: &Path, pairs: &[(u64, u8)]) -> (Arc<FakeChain>, StorageService, Sealed) {
        let (chain, s, d) = uploaded(dir, pairs);
        chain.register(&d.manifest);
        let confirmed = u32::try_from(pairs.len()).unwrap();
        assert_eq!(
            d.commit(&s),
            (ShardResponse::Committed { confirmed }, Some(d.id()))
        );
        (chain, s, d)
    }

    #[test]
    fn commit_waits_for_registration_then_confirms_the_shards_put() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, s, d) = uploaded(dir.path(), &SOME);
        assert_eq!(pending(&s), SOME.len() as u64);
        assert!(s.held(&d.id()).is_empty(), "pending shards are not held");
        assert_eq!(
            audit(&s, d.shard_id(0, 0), 1),
            ShardResponse::NotFound,
            "a pending shard is not audited"
        );

        let (r, committed) = d.commit(&s);
        assert!(
            refusal_text(&r).contains("not registered"),
            "unexpected refusal: {r:?}"
        );
        assert_eq!(committed, None);
        assert!(s.held(&d.id()).is_empty());
        assert!(
            s.manifest_ids().is_empty(),
            "a refused manifest is not kept"
        );

        chain.register(&d.manifest);
        assert_eq!(
            d.commit(&s),
            (
                ShardResponse::Committed {
                    confirmed: SOME.len() as u32
                },
                Some(d.id())
            )
        );
        assert_eq!(s.held(&d.id()), sorted(&SOME));
        assert_eq!(
            s.handle(ShardRequest::Held { data: d.id() }, None, NOW),
            ShardResponse::Held(sorted(&SOME))
        );
        assert_eq!(s.held_data(), vec![d.id()]);
        assert_eq!(s.manifest_ids(), vec![d.id()]);
        assert_eq!(
            (
                lock(&s.index).len() as u64,
                lock(&s.by_data).len(),
                pending(&s)
            ),
            (SOME.len() as u64, 1, 0)
        );

        // A shard put again once confirmed is not pending again.
        d.put(&s, &SOME[..1]);
        assert_eq!(pending(&s), 0);
        // Another item's data is unknown.
        assert!(s.held(&DataId::from_bytes([5; 32])).is_empty());
    }

    #[test]
    fn commit_confirms_only_listed_shards_in_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Arc::new(FakeChain::default());
        let s = open(dir.path(), &chain, Fault::None);
        let d = sealed();
        let other = sealed(); // same owner and bytes, fresh salt: a different item
        assert_ne!(d.id(), other.id());
        d.put(&s, &[(0, 0), (1, 1)]);
        other.put(&s, &[(2, 2)]);
        chain.register(&d.manifest);
        assert_eq!(d.commit(&s).0, ShardResponse::Committed { confirmed: 2 });
        assert_eq!(s.held(&d.id()), vec![(0, 0), (1, 1)]);
        assert!(s.held(&other.id()).is_empty());
        assert_eq!(pending(&s), 1, "the other item's shard stays pending");

        // The same commit again (a replay, or a retry after a lost answer): the same answer,
        // and no second provider announcement.
        assert_eq!(
            d.commit(&s),
            (ShardResponse::Committed { confirmed: 2 }, None)
        );

        // A repair puts one more shard and commits again: all three are confirmed, and the
        // node announces itself again.
        d.put(&s, &[(2, 5)]);
        assert_eq!(
            d.commit(&s),
            (ShardResponse::Committed { confirmed: 3 }, Some(d.id()))
        );
        assert_eq!(s.held(&d.id()), vec![(0, 0), (1, 1), (2, 5)]);
    }

    #[test]
    fn restart_rebuilds_the_index_from_saved_manifests() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, s, d) = committed(dir.path(), &SOME);
        let before = s.held(&d.id());
        drop(s);

        let s = open(dir.path(), &chain, Fault::None);
        assert_eq!(s.held(&d.id()), before);
        assert_eq!(s.held_data(), vec![d.id()]);
        assert_eq!(lock(&s.index).len() as u64, SOME.len() as u64);
        for &(b, i) in &SOME {
            match get_as(&s, &d, &d.owner, b, i) {
                ShardResponse::Shard(bytes) => {
                    assert_eq!(ChunkId::of(&bytes), d.shard_id(b, i));
                    assert_eq!(bytes, d.bytes(b, i));
                }
                other => panic!("shard ({b}, {i}): {other:?}"),
            }
        }
        assert_eq!(
            get_as(&s, &d, &d.owner, 1, 0),
            ShardResponse::NotFound,
            "a shard never put is not found"
        );
        assert_eq!(
            get_manifest_as(&s, d.id(), &d.owner),
            ShardResponse::Manifest(d.manifest.to_bytes())
        );
        assert_eq!(s.counters.served.load(Ordering::Relaxed), SOME.len() as u64);
    }

    #[test]
    fn a_released_shard_is_gone_for_good_and_the_rest_stay() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, s, d) = committed(dir.path(), &SOME);
        let (b, i) = SOME[0];
        let c = d.shard_id(b, i);
        // While it is being handed over, nobody reads or audits it here.
        s.set_releasing(&[c], true);
        assert!(matches!(audit(&s, c, 3), ShardResponse::Failed(_)));
        assert!(matches!(
            get_as(&s, &d, &d.owner, b, i),
            ShardResponse::Failed(_)
        ));
        assert!(s.release(&d.id(), b, i, c).unwrap());
        s.set_releasing(&[c], false);
        assert!(!s.held(&d.id()).contains(&(b, i)));
        assert_eq!(s.held(&d.id()).len(), SOME.len() - 1);
        assert!(!s.store.contains(&d.shard_id(b, i)));
        assert_eq!(get_as(&s, &d, &d.owner, b, i), ShardResponse::NotFound);
        assert_eq!(s.counters.released.load(Ordering::Relaxed), 1);
        // Not here any more, never here, or another item's: nothing to do.
        assert!(!s.release(&d.id(), b, i, c).unwrap());
        assert!(!s.release(&d.id(), 1, 0, d.shard_id(1, 0)).unwrap());
        assert!(!s.release(&DataId::from_bytes([7; 32]), b, i, c).unwrap());
        // Another shard, named as (b, i): not the shard indexed there.
        let (b2, i2) = SOME[1];
        assert!(!s.release(&d.id(), b, i, d.shard_id(b2, i2)).unwrap());
        // A restart does not bring it back (the manifest still lists it).
        drop(s);
        let s = open(dir.path(), &chain, Fault::None);
        assert_eq!(s.held(&d.id()).len(), SOME.len() - 1);
        assert!(!s.held(&d.id()).contains(&(b, i)));
    }

    #[test]
    fn reads_are_checked_against_the_requesting_peers_key_and_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, s, d) = committed(dir.path(), &all_pairs());
        let stranger = Keypair::from_seed([2; 32]);
        let reader = Keypair::from_seed([3; 32]);
        chain.grant(&reader, d.id(), 0..2);

        // The owner and a reader with a grant covering the block's interval read.
        assert_eq!(
            get_as(&s, &d, &d.owner, 2, 4),
            ShardResponse::Shard(d.bytes(2, 4))
        );
        assert_eq!(
            get_as(&s, &d, &reader, 1, 0),
            ShardResponse::Shard(d.bytes(1, 0))
        );

        // A stranger is told it has no right on chain.
        let r = get_as(&s, &d, &stranger, 0, 0);
        let why = refusal_text(&r);
        assert!(why.contains("no right on chain"), "{why}");
        assert!(
            why.contains(&Address::of(&stranger.public()).to_string()),
            "{why}"
        );
        // The grant covers intervals 0 and 1, not block 2's.
        let r = get_as(&s, &d, &reader, 2, 0);
        assert!(refusal_text(&r).contains("interval 2"), "{r:?}");

        // A peer whose identity is not an ed25519 key reads nothing.
        let get = |id, data, block| ShardRequest::Get { id, data, block };
        let r = s.handle(get(d.shard_id(0, 1), d.id(), 0), None, NOW);
        assert!(refusal_text(&r).contains("not an ed25519 key"), "{r:?}");

        // The grantee of block 1 asking for block 2's shard under block 1's name.
        let r = s.handle(
            get(d.shard_id(2, 0), d.id(), 1),
            Some(&reader.public()),
            NOW,
        );
        let why = refusal_text(&r);
        assert!(why.contains("is not part of block 1"), "{r:?}");
        assert!(
            !why.contains("block 2"),
            "the refusal must not say where the shard belongs: {r:?}"
        );
        // And under another data id.
        let other = DataId::from_bytes([4; 32]);
        let r = s.handle(
            get(d.shard_id(0, 0), other, 0),
            Some(&d.owner.public()),
            NOW,
        );
        let why = refusal_text(&r);
        assert!(why.contains(&format!("of data {other}")), "{r:?}");
        assert!(!why.contains(&d.id().to_string()), "{r:?}");

        assert_eq!(s.counters.refused.load(Ordering::Relaxed), 5);
        assert_eq!(s.counters.served.load(Ordering::Relaxed), 2);

        // Manifests: the owner and the grantee read it, a stranger and a peer without an
        // ed25519 identity do not; unknown data is not found.
        let want = ShardResponse::Manifest(d.manifest.to_bytes());
        assert_eq!(get_manifest_as(&s, d.id(), &d.owner), want);
        assert_eq!(get_manifest_as(&s, d.id(), &reader), want);
        let r = get_manifest_as(&s, d.id(), &stranger);
        let why = refusal_text(&r);
        assert!(why.contains("no right on chain to read any part"), "{r:?}");
        let r = s.handle(ShardRequest::GetManifest { data: d.id() }, None, NOW);
        assert!(refusal_text(&r).contains("not an ed25519 key"), "{r:?}");
        let elsewhere = sealed_with_seed(5);
        chain.register_as(
            &elsewhere.manifest,
            elsewhere.manifest.root,
            Address::of(&d.owner.public()),
        );
        assert_eq!(
            get_manifest_as(&s, elsewhere.id(), &d.owner),
            ShardResponse::NotFound,
            "registered but not kept here"
        );
    }

    #[test]
    fn unknown_shards_are_not_found_whoever_asks() {
        let dir = tempfile::tempdir().unwrap();
        let (_chain, s, d) = committed(dir.path(), &[(0, 0)]);
        assert_eq!(get_as(&s, &d, &d.owner, 0, 1), ShardResponse::NotFound);
        assert_eq!(audit(&s, d.shard_id(0, 1), 3), ShardResponse::NotFound);
    }

    #[test]
    fn storage_nodes_read_without_a_grant() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, s, d) = committed(dir.path(), &[(1, 2)]);
        let peer = Keypair::from_seed([6; 32]);
        let ask = || get_as(&s, &d, &peer, 1, 2);
        let r = ask();
        assert!(refusal_text(&r).contains("no right on chain"), "{r:?}");
        // The node itself (its coordinator repairing) reads what it holds.
        assert_eq!(
            get_as(&s, &d, &node_key(), 1, 2),
            ShardResponse::Shard(d.bytes(1, 2))
        );

        let stats = Arc::new(NetStats::default());
        lock(&stats.storage).insert(
            libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id(),
            KnownStorage {
                node: *peer.public().as_bytes(),
                subnet: None,
                connected: true,
                seen_ms: 0,
            },
        );
        s.set_peers(stats);
        // Saying it is a storage node (identify) is not enough: it needs stake on chain.
        let r = ask();
        assert!(refusal_text(&r).contains("no right on chain"), "{r:?}");
        lock(&chain.rnodes).insert(Address::of(&peer.public()));
        // (The unstaked answer is cached for a few seconds.)
        lock(&s.stake_cache.map).clear();
        assert_eq!(ask(), ShardResponse::Shard(d.bytes(1, 2)));
    }

    #[test]
    fn audits_are_answered_to_rnodes_only() {
        let dir = tempfile::tempdir().unwrap();
        let (_chain, s, d) = committed(dir.path(), &SOME);
        let id = d.shard_id(2, 5);
        let stranger = Keypair::from_seed([78; 32]);
        for from in [None, Some(&stranger.public())] {
            let r = s.handle(ShardRequest::Audit { id, nonce: 1 }, from, NOW);
            match r {
                ShardResponse::Failed(why) => assert!(why.contains("RNodes"), "{why}"),
                other => panic!("a proof for a non-RNode: {other:?}"),
            }
        }
        dht::proof::verify(&id, 1, &proof_of(audit(&s, id, 1))).unwrap();
    }

    #[test]
    fn audits_prove_held_shards_and_catch_faults() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, s, d) = committed(dir.path(), &SOME);
        let nonces = [0, 1, 2, 7, 12_345, u64::MAX];
        for &(b, i) in &SOME {
            let id = d.shard_id(b, i);
            for nonce in nonces {
                let p = proof_of(audit(&s, id, nonce));
                dht::proof::verify(&id, nonce, &p).unwrap();
                // Negative control: the proof does not pass for another shard.
                assert!(dht::proof::verify(&d.shard_id(1, 0), nonce, &p).is_err());
            }
        }
        assert_eq!(
            s.counters.audits_answered.load(Ordering::Relaxed),
            (SOME.len() * nonces.len()) as u64
        );
        assert_eq!(
            audit(&s, ChunkId::of(b"not a shard"), 5),
            ShardResponse::NotFound
        );
        assert_eq!(s.counters.audits_missing.load(Ordering::Relaxed), 1);
        drop(s);

        // A node that flips bits answers with proofs that do not verify.
        let s = open(dir.path(), &chain, Fault::BitFlip);
        assert_eq!(s.held(&d.id()), sorted(&SOME));
        for &(b, i) in &SOME {
            let id = d.shard_id(b, i);
            for nonce in nonces {
                let p = proof_of(audit(&s, id, nonce));
                assert!(
                    dht::proof::verify(&id, nonce, &p).is_err(),
                    "a flipped shard ({b}, {i}) passed audit {nonce}"
                );
            }
        }
        match get_as(&s, &d, &d.owner, 2, 0) {
            ShardResponse::Shard(bytes) => assert_ne!(ChunkId::of(&bytes), d.shard_id(2, 0)),
            other => panic!("{other:?}"),
        }
        drop(s);

        // A node that deletes holds nothing and answers nothing.
        let s = open(dir.path(), &chain, Fault::Delete);
        assert!(s.held(&d.id()).is_empty());
        assert_eq!(
            s.handle(ShardRequest::Held { data: d.id() }, None, NOW),
            ShardResponse::Held(Vec::new())
        );
        assert_eq!(audit(&s, d.shard_id(0, 0), 1), ShardResponse::NotFound);
        assert_eq!(get_as(&s, &d, &d.owner, 0, 0), ShardResponse::NotFound);
        drop(s);

        // The faults were in the answers only: an honest restart still holds everything.
        let s = open(dir.path(), &chain, Fault::None);
        let id = d.shard_id(0, 5);
        dht::proof::verify(&id, 9, &proof_of(audit(&s, id, 9))).unwrap();
    }

    #[test]
    fn commit_refuses_a_manifest_that_differs_from_the_registration() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, s, d) = uploaded(dir.path(), &SOME);
        let stranger = Keypair::from_seed([2; 32]);

        // Registered with another root.
        chain.register_as(
            &d.manifest,
            Hash::of(b"another root"),
            Address::of(&d.owner.public()),
        );
        let (r, id) = d.commit(&s);
        assert!(refusal_text(&r).contains("root or owner differs"), "{r:?}");
        assert_eq!(id, None);
        // Registered by another owner.
        chain.register_as(
            &d.manifest,
            d.manifest.root,
            Address::of(&stranger.public()),
        );
        let (r, id) = d.commit(&s);
        assert!(refusal_text(&r).contains("root or owner differs"), "{r:?}");
        assert_eq!(id, None);
        assert!(s.held(&d.id()).is_empty());
        assert!(s.manifest_ids().is_empty());
        assert_eq!(pending(&s), SOME.len() as u64);

        chain.register(&d.manifest);
        // A manifest whose shard list does not hash to its root.
        let mut m = d.manifest.clone();
        m.blocks[1].shards.swap(0, 1);
        let r = commit_manifest(&s, &m).0;
        assert!(refusal_text(&r).contains("inconsistent"), "{r:?}");
        // One whose root was changed (and with it the data id, so nothing is registered).
        let mut m = d.manifest.clone();
        m.root = Hash::of(b"another root");
        let r = commit_manifest(&s, &m).0;
        assert!(refusal_text(&r).contains("inconsistent"), "{r:?}");
        // Bytes that are no manifest.
        let (r, id) = s.serve(
            ShardRequest::Commit {
                manifest: vec![1, 2, 3],
                keep_manifest: true,
            },
            None,
            NOW,
        );
        assert!(refusal_text(&r).contains("does not decode"), "{r:?}");
        assert_eq!(id, None);
        assert!(s.held(&d.id()).is_empty());

        // The registration matches: committed.
        assert_eq!(
            d.commit(&s),
            (
                ShardResponse::Committed {
                    confirmed: SOME.len() as u32
                },
                Some(d.id())
            )
        );
    }

    #[test]
    fn uncommitted_shards_expire() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, s, d) = uploaded(dir.path(), &[(0, 0), (0, 1)]);
        // Putting a pending shard again later does not restart its clock.
        let again = ShardRequest::Put {
            bytes: d.bytes(0, 0),
        };
        assert_eq!(
            s.handle(again, None, NOW + PENDING_TTL_MS / 2),
            ShardResponse::Stored
        );
        assert_eq!(s.expire_pending(NOW + PENDING_TTL_MS), 0);
        assert_eq!(s.expire_pending(NOW + PENDING_TTL_MS + 1), 2);
        assert_eq!(pending(&s), 0);
        assert_eq!(s.pending_bytes.load(Ordering::Relaxed), 0);
        assert!(!s.store.contains(&d.shard_id(0, 0)));
        chain.register(&d.manifest);
        assert_eq!(
            d.commit(&s).0,
            ShardResponse::Committed { confirmed: 0 },
            "expired shards are gone"
        );
        assert!(s.held(&d.id()).is_empty());
        // A committed shard does not expire.
        d.put(&s, &[(1, 1)]);
        assert_eq!(d.commit(&s).0, ShardResponse::Committed { confirmed: 1 });
        assert_eq!(s.expire_pending(u64::MAX), 0);
        assert_eq!(s.held(&d.id()), vec![(1, 1)]);
    }

    #[test]
    fn an_upload_that_goes_on_keeps_its_shards_until_it_pauses_or_its_hour_is_up() {
        let dir = tempfile::tempdir().unwrap();
        let (_chain, s, d) = uploaded(dir.path(), &[]);
        let (uploader, other) = (Keypair::from_seed([40; 32]), Keypair::from_seed([41; 32]));
        // Over libp2p (`handle`), or over a data connection (`put_expecting`).
        let put = |(b, i): (u64, u8), who: Option<&Keypair>, at: u64, plane: bool| {
            let (bytes, key) = (d.bytes(b, i), who.map(|k| k.public()));
            let r = if plane {
                s.put_expecting(d.shard_id(b, i), bytes, key.as_ref(), at)
            } else {
                s.handle(ShardRequest::Put { bytes }, key.as_ref(), at)
            };
            assert_eq!(r, ShardResponse::Stored);
        };
        let is_pending = |(b, i): (u64, u8)| lock(&s.pending).contains_key(&d.shard_id(b, i));
        // A long upload, a new shard every 9 minutes (over both paths). Beside it two
        // anonymous shards, 9 minutes apart, and one of another uploader that stops.
        put((0, 0), Some(&uploader), NOW, false);
        put((0, 1), None, NOW, false);
        put((0, 2), Some(&other), NOW, true);
        let mut expired = 0;
        for (n, i) in (1..=6).zip(3u8..) {
            let at = NOW + 9 * MIN * n;
            put((u64::from(i) / 6, i % 6), Some(&uploader), at, n % 2 == 0);
            if n == 1 {
                put((2, 5), None, at, false);
            }
            expired += s.expire_pending(at + 1);
            if n == 2 {
                // At 18 minutes: the first anonymous shard and the stopped upload are gone;
                // the going upload keeps even its first shard, the later anonymous one
                // its own 10 minutes.
                assert_eq!(expired, 2);
                assert!(is_pending((0, 0)) && is_pending((2, 5)));
                assert!(!is_pending((0, 1)) && !is_pending((0, 2)));
            }
        }
        assert_eq!(expired, 3, "the later anonymous shard went at 19 minutes");
        // Putting an old shard again is not going on.
        put((0, 0), Some(&uploader), NOW + 60 * MIN, false);
        // Its hour is up for the first shard however the upload goes on; the others wait.
        assert_eq!(s.expire_pending(NOW + 60 * MIN), 0);
        assert_eq!(s.expire_pending(NOW + 60 * MIN + 1), 1);
        assert!(!is_pending((0, 0)));
        assert_eq!(pending(&s), 6);
        // Ten minutes after its last new shard (at 54 minutes), the upload's shards expire.
        assert_eq!(s.expire_pending(NOW + 64 * MIN), 0);
        assert_eq!(s.expire_pending(NOW + 64 * MIN + 1), 6);
        assert_eq!(pending(&s), 0);
        assert_eq!(s.pending_bytes.load(Ordering::Relaxed), 0);
        assert!(lock(&s.last_put).is_empty(), "idle uploaders are forgotten");
        // A crowded node keeps no shard past its ten minutes, going on or not.
        let later = NOW + 100 * MIN;
        put((1, 5), Some(&uploader), later, false);
        put((2, 0), Some(&uploader), later + 9 * MIN, false);
        s.pending_bytes
            .fetch_add(PENDING_QUOTA / 2, Ordering::Relaxed);
        assert_eq!(s.expire_pending(later + 10 * MIN + 1), 1);
        s.pending_bytes
            .fetch_sub(PENDING_QUOTA / 2, Ordering::Relaxed);
        assert!(is_pending((2, 0)) && !is_pending((1, 5)));
    }

    #[test]
    fn an_upload_with_nothing_new_for_a_node_keeps_its_shards_there_by_saying_it_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (_chain, s, d) = uploaded(dir.path(), &[]);
        let (uploader, stranger) = (Keypair::from_seed([42; 32]), Keypair::from_seed([43; 32]));
        let keep = |who: Option<&Keypair>, at: u64| {
            s.handle(
                ShardRequest::KeepPending,
                who.map(|k| k.public()).as_ref(),
                at,
            )
        };
        let req = ShardRequest::Put {
            bytes: d.bytes(0, 0),
        };
        assert_eq!(
            s.handle(req, Some(&uploader.public()), NOW),
            ShardResponse::Stored
        );
        // Only the uploader of pending shards can keep them; anonymous or not, others
        // are told nothing of theirs is here.
        assert_eq!(keep(None, NOW + 4 * MIN), ShardResponse::NotFound);
        assert_eq!(
            keep(Some(&stranger), NOW + 4 * MIN),
            ShardResponse::NotFound
        );
        assert_eq!(keep(Some(&uploader), NOW + 8 * MIN), ShardResponse::Stored);
        assert_eq!(s.expire_pending(NOW + 17 * MIN), 0, "kept at 8 minutes");
        assert_eq!(keep(Some(&uploader), NOW + 16 * MIN), ShardResponse::Stored);
        assert_eq!(s.expire_pending(NOW + 26 * MIN), 0);
        // Silent for over ten minutes: too late, nothing is brought back.
        assert_eq!(
            keep(Some(&uploader), NOW + 26 * MIN + 1),
            ShardResponse::NotFound
        );
        assert_eq!(s.expire_pending(NOW + 26 * MIN + 1), 1);
        assert_eq!(pending(&s), 0);
    }

    #[test]
    fn a_shard_being_expired_is_neither_confirmed_nor_taken_again_and_nothing_is_counted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, s, d) = uploaded(dir.path(), &[(0, 0), (0, 1)]);
        chain.register(&d.manifest);
        let doomed = d.shard_id(0, 0);
        // As `expire_pending` leaves it between choosing the shard and deleting it.
        {
            let mut pending = lock(&s.pending);
            let p = pending.remove(&doomed).unwrap();
            s.pending_bytes.fetch_sub(p.len, Ordering::Relaxed);
            lock(&s.expiring).insert(doomed);
        }
        // A commit racing with the delete confirms only the other shard.
        assert_eq!(d.commit(&s).0, ShardResponse::Committed { confirmed: 1 });
        assert_eq!(s.held(&d.id()), vec![(0, 1)]);
        assert_eq!(s.pending_bytes.load(Ordering::Relaxed), 0);
        // A put racing with it is asked to put again, not told "stored".
        let r = s.handle(
            ShardRequest::Put {
                bytes: d.bytes(0, 0),
            },
            None,
            NOW,
        );
        assert!(
            matches!(&r, ShardResponse::Failed(why) if why.contains("put it again")),
            "{r:?}"
        );
        assert_eq!(s.pending_bytes.load(Ordering::Relaxed), 0);
        // The expiry finishes; nothing is pending, so a second run finds nothing and the
        // byte count stays at zero (it wrapped past 2^64 when a commit and an expiry both
        // subtracted one shard).
        s.store.delete(&doomed).unwrap();
        lock(&s.expiring).remove(&doomed);
        assert_eq!(s.expire_pending(u64::MAX), 0);
        assert_eq!(s.pending_bytes.load(Ordering::Relaxed), 0);
        // Put again afterwards: stored, pending, and confirmed by the next commit.
        d.put(&s, &[(0, 0)]);
        assert_eq!(d.commit(&s).0, ShardResponse::Committed { confirmed: 2 });
        assert_eq!(s.held(&d.id()), vec![(0, 0), (0, 1)]);
    }

    #[test]
    fn shards_left_uncommitted_by_a_restart_expire_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let (chain, s, d) = uploaded(dir.path(), &[(0, 0), (0, 1), (2, 3)]);
        chain.register(&d.manifest);
        drop(s);
        // Restarted before the commit: the shards are pending again, from the restart on.
        let s = open(dir.path(), &chain, Fault::None);
        assert_eq!(pending(&s), 3);
        let put_bytes: u64 = [(0, 0), (0, 1), (2, 3)]
            .iter()
            .map(|&(b, i)| d.bytes(b, i).len() as u64)
            .sum();
        assert!(s.pending_bytes.load(Ordering::Relaxed) >= put_bytes);
        let restarted = now_ms_for_tests();
        assert_eq!(s.expire_pending(restarted), 0, "not before their time");
        // A commit that still comes confirms them.
        assert_eq!(d.commit(&s).0, ShardResponse::Committed { confirmed: 3 });
        assert_eq!(pending(&s), 0);
        drop(s);
        // Committed shards are not pending after a restart; unclaimed ones expire.
        let s = open(dir.path(), &chain, Fault::None);
        assert_eq!(pending(&s), 0);
        let other = sealed_with_seed(2);
        other.put(&s, &[(1, 0)]);
        drop(s);
        let s = open(dir.path(), &chain, Fault::None);
        assert_eq!(pending(&s), 1);
        assert_eq!(s.expire_pending(u64::MAX), 1);
        assert!(!s.store.contains(&other.shard_id(1, 0)));
        assert_eq!(s.held(&d.id()), vec![(0, 0), (0, 1), (2, 3)]);
    }

    fn now_ms_for_tests() -> u64 {
        super::super::config::now_ms()
    }
}
