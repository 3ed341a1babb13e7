//! The durable chunk store: shards on local disk, append-only and crash-safe.
//!
//! **Layout.** A store is a directory of append-only segment files `seg-000000000001.log`, …
//! (numbers are never reused) plus a `LOCK` file held with `flock` so only one process opens
//! it. Each segment is a sequence of records: a 64-byte header (magic, kind Put/Tombstone,
//! store-wide sequence number, key, payload length, payload crc32c, header crc32c; see
//! `record.rs`) followed by the payload. An in-memory index maps each live [`ChunkId`] to its
//! segment, offset and length. Keys are opaque: the store does not assume a key is the hash of
//! its payload (callers check content hashes); its own crc32c guards every payload, and a read
//! whose checksum fails returns [`StoreError::Corrupt`], never wrong bytes.
//!
//! **Group commit.** All writes go through one writer thread that owns the newest ("active")
//! segment. Callers send owned buffers over a bounded queue; the writer takes everything
//! queued (up to `max_batch_bytes`), writes the whole group, calls `fdatasync` once, and only
//! then answers every request in the group. A put or delete is acknowledged only once its bytes
//! are durable, and many concurrent small writers share one sync. The sync is pipelined: while
//! group N's `fdatasync` runs, the writer already writes the requests that arrived meanwhile;
//! N is acknowledged when its sync completes, then the next group's sync starts (an ack only
//! ever follows a sync that began after the group's write finished; see `writer.rs`). That is
//! why io_uring is the
//! default backend: our disk measurements (FACTS.md) show no bandwidth gain for large
//! sequential writes, but io_uring submits a whole group as vectored writes straight from the
//! callers' buffers, with no staging copy, followed by one sync. A portable `std::fs` backend
//! (pwrite + fdatasync) is chosen at run time when io_uring is unavailable.
//!
//! **Unsynced bulk puts.** [`ChunkStore::submit_unsynced`] queues puts that go through the
//! same batching, capacity, idempotence and index logic but are acknowledged once *written*
//! (in the page cache), with no `fdatasync` of their own; [`ChunkStore::sync`] is the
//! durability barrier: it returns once every put and delete queued before it is durable
//! (requests are handled in queue order, so the barrier's sync covers them). Bulk ingest pays
//! one sync per file instead of one per group, as a plain `write` + `fsync` would; the caller
//! acknowledges its own client only after `sync` returns. A group that also holds a synced
//! put, a delete or a barrier is synced as a whole. Written buffers are freed once written, so
//! memory is bounded by the queue plus the caller's outstanding tickets. Crash semantics:
//! after `kill -9` the page cache survives, so unsynced but written records are still there
//! and recovery keeps them (and makes them durable with its `fsync`). After power loss they
//! may be lost, or only partly on disk, anywhere after the last completed sync of the active
//! segment (rotation always syncs a sealed segment in full first, so only the active segment
//! can be affected). Recovery handles that like a torn tail: it truncates at a damaged header
//! or where nothing valid follows, and keeps a record with a bad payload as `Corrupt` when a
//! valid record follows it. So data not covered by a completed `sync` (or a synced put) may
//! vanish, or read back as `Corrupt` (delete it and put it again, as for media damage: a
//! repeated put of a stored key is a no-op); data acknowledged after a sync never does,
//! because everything before a completed sync point is intact.
//!
//! **Recovery.** `open` rebuilds the index by replaying segments in order. Sealed (non-last)
//! segments were fully synced before the next one was created, so only their headers are read.
//! The last segment may end in a group that was being written when the process died; nothing
//! in that group was acknowledged as durable, because that waits for the sync (unsynced puts
//! promise nothing until a barrier, see above). So the last
//! segment is read in full, with payload checksums, and truncated at the first record whose
//! header is invalid or whose payload is short, or at the first of the records failing their
//! checksum that nothing valid follows. A checksum failure *followed* by valid records is
//! damage inside the log, not a torn tail (a process crash leaves a clean prefix; a torn tail
//! from power loss is at most one unacknowledged group): that record stays indexed, so reads of
//! it return `Corrupt`, and everything after it is kept. (A damaged *header* inside the last
//! segment still truncates there: record boundaries after it cannot be trusted.)
//!
//! **Space.** Deletes append tombstones. [`ChunkStore::compact`] (and the writer when idle, or
//! when a put would exceed `capacity_bytes`) copies the live records of segments with enough
//! garbage into the active segment and unlinks the old files; see `writer.rs` for why
//! tombstones stay effective across compaction and restart.

mod config;
mod error;
mod record;
mod segment;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use crypto_accel::ChunkId;
use tokio::sync::{mpsc, oneshot};

pub use config::{Backend, BackendChoice, StoreConfig};
pub use error::{StoreError, StoreResult};

use record::{RecordHeader, RecordKind, HEADER_LEN};
use segment::{list_segments, sync_dir, walk, DirLock, Segment, WalkEnd};
use writer::{Request, SegMeta, Writer, WriterInit};

/// Where a live chunk's record sits. Holding the `Arc` keeps the file open for a reader even
/// if compaction unlinks it meanwhile.
#[derive(Clone, Debug)]
pub(crate) struct Location {
    seg: Arc<Segment>,
    offset: u64,
    len: u32,
}

/// State shared by the handles and the writer thread.
#[derive(Debug)]
pub(crate) struct Shared {
    dir: PathBuf,
    index: RwLock<HashMap<ChunkId, Location>>,
    live_bytes: AtomicU64,
    disk_bytes: AtomicU64,
    garbage_bytes: AtomicU64,
    segments: AtomicU64,
    syncs: AtomicU64,
}

/// A snapshot of the store's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStats {
    /// Number of live chunks.
    pub chunks: u64,
    /// Payload bytes of the live chunks.
    pub live_bytes: u64,
    /// Total size of the segment files (what counts against the capacity).
    pub disk_bytes: u64,
    /// Bytes compaction could reclaim (dead records, torn tails of damaged segments).
    pub garbage_bytes: u64,
    /// The configured capacity.
    pub capacity_bytes: u64,
    /// Number of segment files.
    pub segments: u64,
    /// The write backend in use.
    pub backend: Backend,
    /// Number of `fdatasync` calls on segments since open (group commit keeps it low).
    pub syncs: u64,
}

/// What one compaction run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Segment files rewritten and unlinked.
    pub segments_compacted: u64,
    /// Live records copied forward.
    pub records_moved: u64,
    /// Tombstones dropped because nothing older could resurrect their key.
    pub tombstones_dropped: u64,
    /// Tombstones copied forward because an older segment still holds their key.
    pub tombstones_kept: u64,
    /// Decrease of disk use over the run.
    pub bytes_reclaimed: u64,
}

/// What `open` found and repaired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: u64,
    /// Records replayed.
    pub records: u64,
    /// Bytes cut from the end of the last segment (an unacknowledged torn tail).
    pub truncated_bytes: u64,
    /// Sealed segments with a damaged record: `(file name, offset, reason)`; the rest of
    /// such a segment is ignored and counted as garbage.
    pub damaged: Vec<(String, u64, &'static str)>,
}

/// A pending put: resolves once the chunks are durable (for [`ChunkStore::submit_unsynced`]:
/// once written and indexed), or the put failed.
#[derive(Debug)]
pub struct PutTicket {
    rx: oneshot::Receiver<StoreResult<()>>,
}

impl PutTicket {
    /// Blocks until the put is durable (unsynced: written). Not for async contexts (it would
    /// block the executor, and tokio panics on it there): use [`PutTicket::wait_async`].
    pub fn wait(self) -> StoreResult<()> {
        self.rx.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Waits until the put is durable (unsynced: written).
    pub async fn wait_async(self) -> StoreResult<()> {
        self.rx.await.unwrap_or(Err(StoreError::Closed))
    }
}

/// A handle to an open chunk store; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct ChunkStore {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: RwLock<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<StoreResult<()>>>>,
    backend: Backend,
    max_chunk_bytes: u32,
    capacity_bytes: u64,
    recovery: RecoveryReport,
    // Dropped after the writer has been joined (fields drop after `Drop::drop`).
    _lock: DirLock,
}

impl fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkStore")
            .field("dir", &self.inner.shared.dir)
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

impl ChunkStore {
    /// Opens (creating if needed) the store in `dir`, recovers its index and starts the writer.
    pub fn open(dir: impl AsRef<Path>, cfg: StoreConfig) -> StoreResult<ChunkStore> {
        cfg.validate()?;
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io("create directory", &dir, e))?;
        let lock = DirLock::acquire(&dir)?;
        let recovered = recover(&dir)?;

        let shared = Arc::new(Shared {
            dir: dir.clone(),
            index: RwLock::new(recovered.index),
            live_bytes: AtomicU64::new(0),
            disk_bytes: AtomicU64::new(0),
            garbage_bytes: AtomicU64::new(0),
            segments: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        });
        let init = WriterInit {
            shared: Arc::clone(&shared),
            cfg: cfg.clone(),
            segments: recovered.segments,
            next_seq: recovered.next_seq,
            live_payload: recovered.live_payload,
        };
        let (tx, rx) = mpsc::channel(cfg.queue_depth.get());
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let choice = cfg.backend;
        let handle = std::thread::Builder::new()
            .name("chunkstore-writer".into())
            .spawn(move || writer_thread(init, choice, rx, ready_tx))
            .map_err(|e| StoreError::io("spawn writer thread for", &dir, e))?;
        let backend = match ready_rx.recv() {
            Ok(Ok(backend)) => backend,
            Ok(Err(e)) => {
                let _ = handle.join();
                return Err(e);
            }
            Err(_) => {
                let _ = handle.join();
                return Err(StoreError::Failed {
                    reason: "writer thread died while starting".into(),
                });
            }
        };
        Ok(ChunkStore {
            inner: Arc::new(Inner {
                shared,
                tx: RwLock::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                backend,
                max_chunk_bytes: cfg.max_chunk_bytes,
                capacity_bytes: cfg.capacity_bytes,
                recovery: recovered.report,
                _lock: lock,
            }),
        })
    }

    /// Stores one chunk and blocks until it is durable. For non-async callers (see `submit`).
    pub fn put(&self, id: ChunkId, data: Vec<u8>) -> StoreResult<()> {
        self.submit(vec![(id, data)])?.wait()
    }

    /// Queues chunks for the next group commit; blocks only while the queue is full.
    ///
    /// For plain threads (rayon workers, the CLI): tokio panics if this blocks inside an async
    /// context, so async code uses [`ChunkStore::submit_async`]. A key already stored is
    /// acknowledged without being rewritten (its first bytes stay).
    pub fn submit(&self, items: Vec<(ChunkId, Vec<u8>)>) -> StoreResult<PutTicket> {
        self.enqueue_put(items, true)
    }

    /// Queues chunks for the next group commit, waiting asynchronously while the queue is full.
    pub async fn submit_async(&self, items: Vec<(ChunkId, Vec<u8>)>) -> StoreResult<PutTicket> {
        self.enqueue_put_async(items, true).await
    }

    /// Enqueues puts that are written to the log and indexed, but NOT fsynced: the ticket
    /// resolves once written. Durable only after a later [`ChunkStore::sync`] returns. For bulk
    /// ingest where the caller acknowledges its own client only after `sync()`. Blocks only
    /// while the queue is full (plain threads only, like [`ChunkStore::submit`]).
    pub fn submit_unsynced(&self, items: Vec<(ChunkId, Vec<u8>)>) -> StoreResult<PutTicket> {
        self.enqueue_put(items, false)
    }

    /// [`ChunkStore::submit_unsynced`] for async callers.
    pub async fn submit_unsynced_async(
        &self,
        items: Vec<(ChunkId, Vec<u8>)>,
    ) -> StoreResult<PutTicket> {
        self.enqueue_put_async(items, false).await
    }

    /// Durability barrier: returns once every put/delete enqueued before it (synced or not)
    /// is durable. Blocks; async code uses [`ChunkStore::sync_async`].
    pub fn sync(&self) -> StoreResult<()> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(Request::Sync { reply })
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Durability barrier for async callers (see [`ChunkStore::sync`]).
    pub async fn sync_async(&self) -> StoreResult<()> {
        let (reply, rx) = oneshot::channel();
        let tx = self.sender()?;
        tx.send(Request::Sync { reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.unwrap_or(Err(StoreError::Closed))
    }

    fn enqueue_put(&self, items: Vec<(ChunkId, Vec<u8>)>, durable: bool) -> StoreResult<PutTicket> {
        self.check_sizes(&items)?;
        let crcs = payload_crcs(&items);
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(Request::Put {
                items,
                crcs,
                durable,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        Ok(PutTicket { rx })
    }

    async fn enqueue_put_async(
        &self,
        items: Vec<(ChunkId, Vec<u8>)>,
        durable: bool,
    ) -> StoreResult<PutTicket> {
        self.check_sizes(&items)?;
        let crcs = payload_crcs(&items);
        let (reply, rx) = oneshot::channel();
        let tx = self.sender()?;
        tx.send(Request::Put {
            items,
            crcs,
            durable,
            reply,
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        Ok(PutTicket { rx })
    }

    /// Reads a chunk, verifying its checksum; `Corrupt` rather than wrong bytes.
    pub fn get(&self, id: &ChunkId) -> StoreResult<Vec<u8>> {
        let mut out = Vec::new();
        self.get_into(id, &mut out)?;
        Ok(out)
    }

    /// Appends a chunk to `out`, verifying its checksum (a network answer is built around
    /// the bytes in place). On an error `out` is as it was.
    pub fn get_into(&self, id: &ChunkId, out: &mut Vec<u8>) -> StoreResult<()> {
        self.get_into_with_room(id, out, 0)
    }

    /// [`ChunkStore::get_into`], leaving at least `room` bytes of spare capacity after the
    /// chunk, so that a caller appending a trailer (a kind byte, an AEAD tag) neither grows
    /// nor moves `out` — without a second index lookup to learn the chunk's size first.
    pub fn get_into_with_room(
        &self,
        id: &ChunkId,
        out: &mut Vec<u8>,
        room: usize,
    ) -> StoreResult<()> {
        let loc = self.location(id)?;
        let start = out.len();
        let r = read_record(&loc, id, out, room);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }

    /// Where chunk `id`'s payload lies on disk, for sending it without a copy through this
    /// process ([`ChunkRegion::send_to`]). The record's header is read and checked against
    /// the index, but **the payload's checksum is not**: this is for callers whose reader
    /// checks the bytes itself (a shard's content id). Holding the region keeps its segment
    /// file open even if compaction unlinks it meanwhile.
    pub fn region(&self, id: &ChunkId) -> StoreResult<ChunkRegion> {
        let loc = self.location(id)?;
        read_header(&loc, id)?;
        // A segment cut short (damage) is refused here, before anything is sent, rather
        // than in the middle of a send.
        let end = loc.offset + HEADER_LEN as u64 + u64::from(loc.len);
        if loc.seg.file_len()? < end {
            return Err(record_corrupt(&loc, id, "record truncated"));
        }
        Ok(ChunkRegion {
            at: loc.offset + HEADER_LEN as u64,
            len: loc.len,
            seg: loc.seg,
        })
    }

    /// Where the live record of chunk `id` is.
    fn location(&self, id: &ChunkId) -> StoreResult<Location> {
        self.inner
            .shared
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
            .ok_or(StoreError::NotFound { id: *id })
    }

    /// Whether a chunk is stored (durably, unless it came from a put not yet covered by
    /// [`ChunkStore::sync`]).
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.inner
            .shared
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(id)
    }

    /// Every stored chunk with the length of its record on disk (a snapshot).
    pub fn chunks(&self) -> Vec<(ChunkId, u64)> {
        self.inner
            .shared
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, loc)| (*id, u64::from(loc.len)))
            .collect()
    }

    /// Deletes a chunk durably (a group-committed tombstone); `false` if it was absent.
    pub fn delete(&self, id: &ChunkId) -> StoreResult<bool> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(Request::Delete { id: *id, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Rewrites segments whose garbage exceeds `compact_garbage_ratio` and unlinks the old files.
    pub fn compact(&self) -> StoreResult<CompactReport> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(Request::Compact { reply })
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }

    /// Current counters.
    pub fn stats(&self) -> StoreStats {
        let s = &self.inner.shared;
        StoreStats {
            chunks: s.index.read().unwrap_or_else(PoisonError::into_inner).len() as u64,
            live_bytes: s.live_bytes.load(Ordering::Relaxed),
            disk_bytes: s.disk_bytes.load(Ordering::Relaxed),
            garbage_bytes: s.garbage_bytes.load(Ordering::Relaxed),
            capacity_bytes: self.inner.capacity_bytes,
            segments: s.segments.load(Ordering::Relaxed),
            backend: self.inner.backend,
            syncs: s.syncs.load(Ordering::Relaxed),
        }
    }

    /// The write backend chosen at open (log it: `Auto` may have fallen back to portable).
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// What recovery found when this store was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// Finishes queued requests and stops the writer. Other clones can still read; their
    /// writes fail with `Closed`. Dropping the last handle does the same, ignoring errors.
    pub fn close(self) -> StoreResult<()> {
        self.inner.stop()
    }

    fn sender(&self) -> StoreResult<mpsc::Sender<Request>> {
        self.inner
            .tx
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(StoreError::Closed)
    }

    fn check_sizes(&self, items: &[(ChunkId, Vec<u8>)]) -> StoreResult<()> {
        let max = self.inner.max_chunk_bytes;
        match items.iter().find(|(_, d)| d.len() as u64 > u64::from(max)) {
            Some((_, d)) => Err(StoreError::TooLarge {
                len: d.len() as u64,
                max,
            }),
            None => Ok(()),
        }
    }
}

impl Inner {
    fn stop(&self) -> StoreResult<()> {
        drop(
            self.tx
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match handle.map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(res)) => res,
            Some(Err(_)) => Err(StoreError::Failed {
                reason: "writer thread panicked".into(),
            }),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Payload checksums, computed on the submitting thread: the single writer thread would
/// otherwise spend its time on them instead of writing (many submitters checksum in parallel).
fn payload_crcs(items: &[(ChunkId, Vec<u8>)]) -> Vec<u32> {
    items.iter().map(|(_, d)| crc32c::crc32c(d)).collect()
}

/// Spare room past a record that a read may fill (and then drop) rather than zeroing the
/// record's bytes first.
const SPARE_READ_SLACK: usize = 64 << 10;

/// A stored chunk's payload in its segment file (see [`ChunkStore::region`]).
#[derive(Debug, Clone)]
pub struct ChunkRegion {
    seg: Arc<Segment>,
    at: u64,
    len: u32,
}

impl ChunkRegion {
    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes the payload to `out` (a blocking socket) with `sendfile`: the bytes go from
    /// the page cache to the socket without passing through this process. Every call is
    /// given the time left until `deadline` (a reader that drains slowly cannot stretch the
    /// send); a file that ends early is an error, never short output passed off as whole.
    pub fn send_to(
        &self,
        out: &std::net::TcpStream,
        deadline: std::time::Instant,
    ) -> std::io::Result<()> {
        let mut at = self.at;
        let end = self.at + u64::from(self.len);
        while at < end {
            out.set_write_timeout(Some(time_left(deadline)?))?;
            let want = usize::try_from(end - at).unwrap_or(usize::MAX);
            match rustix::fs::sendfile(out, &self.seg.file, Some(&mut at), want) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => {}
                // A blocking socket with a send timeout reports the timeout as EAGAIN.
                Err(rustix::io::Errno::AGAIN) => return Err(std::io::ErrorKind::TimedOut.into()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// The time left until `deadline`, as a socket timeout: a `TimedOut` error once it has
/// passed (a zero timeout would mean "none" to the socket).
pub(crate) fn time_left(deadline: std::time::Instant) -> std::io::Result<std::time::Duration> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        return Err(std::io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// Reads one record's header and checks it against the index.
fn read_header(loc: &Location, id: &ChunkId) -> StoreResult<RecordHeader> {
    let mut hb = [0u8; HEADER_LEN];
    loc.seg
        .file
        .read_exact_at(&mut hb, loc.offset)
        .map_err(|e| record_io_err(loc, id, e))?;
    let header = RecordHeader::decode(&hb, u64::from(loc.len))
        .map_err(|e| record_corrupt(loc, id, e.as_str()))?;
    if header.kind != RecordKind::Put || header.id != *id || header.len != loc.len {
        return Err(record_corrupt(loc, id, "header does not match the index"));
    }
    Ok(header)
}

fn record_corrupt(loc: &Location, id: &ChunkId, what: &str) -> StoreError {
    StoreError::Corrupt {
        id: *id,
        reason: format!(
            "{what} at {} offset {}",
            segment_file_name(&loc.seg),
            loc.offset
        ),
    }
}

fn record_io_err(loc: &Location, id: &ChunkId, e: std::io::Error) -> StoreError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        record_corrupt(loc, id, "record truncated")
    } else {
        StoreError::io("read segment", &loc.seg.path, e)
    }
}

/// Reads and checks one record, appending its payload to `out`: header fields must match
/// the index, payload its crc32c.
fn read_record(loc: &Location, id: &ChunkId, out: &mut Vec<u8>, room: usize) -> StoreResult<()> {
    let io_err = |e: std::io::Error| record_io_err(loc, id, e);
    let header = read_header(loc, id)?;
    let start = out.len();
    let len = loc.len as usize;
    let at = loc.offset + HEADER_LEN as u64;
    out.reserve_exact(len + room);
    if out.capacity() - start > len + room + SPARE_READ_SLACK {
        // A large reused buffer: reading into all its spare room would copy far more than
        // the record, so zero just the record's bytes and read exactly them.
        out.resize(start + len, 0);
        loc.seg
            .file
            .read_exact_at(&mut out[start..], at)
            .map_err(io_err)?;
    } else {
        // Read into spare capacity: no zeroing of bytes about to be overwritten. The read
        // may run a little past the record (into the spare room); that tail is dropped.
        let mut at = at;
        while out.len() < start + len {
            let n = rustix::io::pread(&loc.seg.file, rustix::buffer::spare_capacity(out), at)
                .map_err(|e| io_err(e.into()))?;
            if n == 0 {
                return Err(io_err(std::io::ErrorKind::UnexpectedEof.into()));
            }
            at += n as u64;
        }
        out.truncate(start + len);
    }
    if crc32c::crc32c(&out[start..]) != header.payload_crc {
        return Err(record_corrupt(loc, id, "payload checksum mismatch"));
    }
    Ok(())
}

fn segment_file_name(seg: &Segment) -> String {
    seg.path.file_name().map_or_else(
        || seg.path.display().to_string(),
        |n| n.to_string_lossy().into(),
    )
}

struct Recovered {
    index: HashMap<ChunkId, Location>,
    segments: BTreeMap<u64, SegMeta>,
    next_seq: u64,
    live_payload: u64,
    report: RecoveryReport,
}

/// Rebuilds the index by replaying every segment in order (see the module docs for the rule).
fn recover(dir: &Path) -> StoreResult<Recovered> {
    let mut ids = list_segments(dir)?;
    if ids.is_empty() {
        Segment::create(dir, 1)?;
        sync_dir(dir)?;
        ids.push(1);
    }
    let mut index: HashMap<ChunkId, Location> = HashMap::new();
    let mut segments: BTreeMap<u64, SegMeta> = BTreeMap::new();
    let mut report = RecoveryReport {
        segments: ids.len() as u64,
        ..RecoveryReport::default()
    };
    let mut max_seq = 0u64;
    let mut live_payload = 0u64;
    let last_id = ids.last().copied().unwrap_or(1);
    let mut damaged = Vec::new();
    for id in ids {
        let seg = Arc::new(Segment::open(dir, id)?);
        let last = id == last_id;
        segments.insert(id, SegMeta::new(Arc::clone(&seg), 0));
        let end = walk(&seg, last, |h, offset, payload_ok| {
            report.records += 1;
            if !payload_ok {
                // Damage inside the log (valid records follow): keep the record indexed so
                // reads report it as corrupt instead of silently losing it.
                damaged.push((segment_file_name(&seg), offset, "payload checksum mismatch"));
            }
            max_seq = max_seq.max(h.seq);
            let old = match h.kind {
                RecordKind::Put => {
                    if let Some(m) = segments.get_mut(&id) {
                        m.live += h.record_len();
                    }
                    live_payload += u64::from(h.len);
                    let loc = Location {
                        seg: Arc::clone(&seg),
                        offset,
                        len: h.len,
                    };
                    index.insert(h.id, loc)
                }
                RecordKind::Tombstone => {
                    if let Some(m) = segments.get_mut(&id) {
                        m.tomb += h.record_len();
                    }
                    index.remove(&h.id)
                }
            };
            if let Some(old) = old {
                if let Some(m) = segments.get_mut(&old.seg.id) {
                    m.live = m
                        .live
                        .saturating_sub(HEADER_LEN as u64 + u64::from(old.len));
                }
                live_payload = live_payload.saturating_sub(u64::from(old.len));
            }
        })?;
        let size = match end {
            WalkEnd::Clean { len } => len,
            WalkEnd::Invalid {
                valid_len,
                file_len,
                reason: _,
            } if last => {
                // Torn tail: this group was never acknowledged as durable (acks wait for its
                // fdatasync; unsynced puts wait for a later barrier), so cutting it off loses
                // nothing anyone was promised.
                seg.file
                    .set_len(valid_len)
                    .map_err(|e| StoreError::io("truncate torn tail of", &seg.path, e))?;
                report.truncated_bytes += file_len - valid_len;
                valid_len
            }
            WalkEnd::Invalid {
                valid_len,
                file_len,
                reason,
            } => {
                // A sealed segment was fully synced, so this is media damage, not a torn
                // write. Keep serving the rest of the store; the tail is garbage.
                report
                    .damaged
                    .push((segment_file_name(&seg), valid_len, reason));
                file_len
            }
        };
        if last {
            // Whatever recovery exposes must be durable, even bytes that were only in the
            // page cache when the previous process died.
            seg.file
                .sync_all()
                .map_err(|e| StoreError::io("fsync segment", &seg.path, e))?;
        }
        if let Some(m) = segments.get_mut(&id) {
            m.size = size;
        }
    }
    report.damaged.extend(damaged);
    Ok(Recovered {
        index,
        segments,
        next_seq: max_seq.checked_add(1).ok_or_else(|| StoreError::Damaged {
            reason: format!("a record claims sequence number {max_seq}, the last there is"),
        })?,
        live_payload,
        report,
    })
}

fn writer_thread(
    init: WriterInit,
    choice: BackendChoice,
    rx: mpsc::Receiver<Request>,
    ready: std::sync::mpsc::SyncSender<StoreResult<Backend>>,
) -> StoreResult<()> {
    match choice {
        BackendChoice::Portable => run_portable(init, rx, ready),
        BackendChoice::IoUring | BackendChoice::Auto => match uring_runtime() {
            Ok(rt) => rt.block_on(run_writer(init, Backend::IoUring, rx, ready)),
            Err(reason) if choice == BackendChoice::IoUring => {
                let _ = ready.send(Err(StoreError::IoUringUnavailable { reason }));
                Ok(())
            }
            Err(_) => run_portable(init, rx, ready),
        },
    }
}

fn run_portable(
    init: WriterInit,
    rx: mpsc::Receiver<Request>,
    ready: std::sync::mpsc::SyncSender<StoreResult<Backend>>,
) -> StoreResult<()> {
    // A bare current-thread runtime: the portable writer only awaits its queue.
    match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt.block_on(run_writer(init, Backend::Portable, rx, ready)),
        Err(e) => {
            let _ = ready.send(Err(StoreError::io(
                "start writer runtime in",
                &init.shared.dir,
                e,
            )));
            Ok(())
        }
    }
}

async fn run_writer(
    init: WriterInit,
    backend: Backend,
    rx: mpsc::Receiver<Request>,
    ready: std::sync::mpsc::SyncSender<StoreResult<Backend>>,
) -> StoreResult<()> {
    match Writer::new(init, backend) {
        Ok(w) => {
            let _ = ready.send(Ok(backend));
            w.run(rx).await
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            Ok(())
        }
    }
}

/// Builds a tokio-uring runtime and pushes one no-op through the ring. Any failure (io_uring
/// disabled by sysctl or seccomp, old kernel, memlock limits) is reported, never a panic.
fn uring_runtime() -> Result<tokio_uring::Runtime, String> {
    let attempt = std::panic::catch_unwind(|| {
        let rt = tokio_uring::Runtime::new(&tokio_uring::builder()).map_err(|e| e.to_string())?;
        rt.block_on(tokio_uring::no_op())
            .map_err(|e| e.to_string())?;
        Ok(rt)
    });
    attempt.unwrap_or_else(|_| Err("io_uring setup panicked".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_deadline_is_a_timeout_never_a_zero_socket_timeout() {
        let now = std::time::Instant::now();
        let err = time_left(now).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        let left = time_left(now + std::time::Duration::from_secs(60)).unwrap();
        assert!(left > std::time::Duration::ZERO && left <= std::time::Duration::from_secs(60));
    }

    #[test]
    fn a_record_claiming_the_last_sequence_number_is_reported_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        // A tombstone whose header (checksum included) is valid but whose sequence number
        // leaves none for the next record: the store would have wrapped to 0 and let later
        // records sort before older ones.
        let h = RecordHeader::tombstone(u64::MAX, ChunkId::of(b"x"));
        std::fs::write(dir.path().join(segment::segment_name(1)), h.encode()).unwrap();
        match ChunkStore::open(dir.path(), StoreConfig::default()) {
            Err(StoreError::Damaged { reason }) => {
                assert!(reason.contains("sequence number"), "{reason}")
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("opened a store whose sequence numbers are exhausted"),
        }
    }

    #[test]
    fn the_last_segment_a_name_can_number_is_not_rotated_past() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path()
                .join(segment::segment_name(segment::MAX_SEGMENT_ID)),
            b"",
        )
        .unwrap();
        let cfg = StoreConfig {
            segment_bytes: 64 << 10,
            ..StoreConfig::default()
        };
        let store = ChunkStore::open(dir.path(), cfg).unwrap();
        // Fill the segment until the store must start the next one.
        let mut refused = None;
        for n in 0..8u8 {
            if let Err(e) = store.put(ChunkId::of(&[n]), vec![n; 40 << 10]) {
                refused = Some(e);
                break;
            }
        }
        match refused {
            Some(StoreError::Damaged { reason }) => {
                assert!(reason.contains("12-digit"), "{reason}")
            }
            Some(StoreError::Failed { reason }) => assert!(reason.contains("12-digit"), "{reason}"),
            other => panic!("expected a refusal naming the segment limit, got {other:?}"),
        }
        drop(store);
        // Everything acknowledged is still there after a reopen.
        let store = ChunkStore::open(dir.path(), StoreConfig::default()).unwrap();
        assert!(store.get(&ChunkId::of(&[0])).is_ok());
    }
}
