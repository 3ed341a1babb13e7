//! The writer thread: owns the active segment, forms group commits, rotates and compacts.
//!
//! **Pipelined sync.** A group that needs durability is written, then its `fdatasync` is
//! started without waiting for it (tokio-uring: a spawned `sync_data` on the shared file;
//! portable: a helper thread calling `sync_data`). While that sync runs, requests that arrive
//! are staged and written into the next batch (`Writer::next`), bounded by `max_batch_bytes`.
//! When the sync completes its batch's index updates are published and its callers answered;
//! then the next batch's sync starts. So a batch is only ever acknowledged after an
//! `fdatasync` that *started after its write completed* has finished, acknowledgements stay
//! in queue order (one sync in flight at most, batches completed in order), and everything
//! that needs a quiet log (rotation, compaction, `Compact`, shutdown) first waits for the sync
//! in flight (`settle`). Staging consults the in-flight batch's overlay, so presence checks
//! see keys whose records are written but not yet published.
//!
//! **Unsynced puts.** A batch holding only unsynced puts is acknowledged (and indexed) as soon
//! as it is written, with no sync; it still waits behind a sync in flight so that index
//! updates apply in log order. A batch containing anything else (a synced put, a delete, a
//! `Sync` barrier) is synced as a whole before any of it is acknowledged. Once
//! `WRITE_BEHIND_BYTES` are written without a sync, a *write-behind* sync with nothing
//! waiting on it is started, so write-back overlaps further writes instead of piling up for
//! rotation or the caller's barrier; unsynced batches are not held back by it (there is
//! nothing of it to publish first), batches that need a sync are.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};

use crypto_accel::ChunkId;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};
use tokio_uring::buf::{BoundedBuf, Slice};

use super::config::{Backend, StoreConfig};
use super::error::{StoreError, StoreResult};
use super::record::{RecordHeader, RecordKind, HEADER_LEN};
use super::segment::{sync_dir, walk, Segment};
use super::{CompactReport, Location, Shared};

/// io_uring (like `writev`) rejects more than `IOV_MAX` = 1024 buffers in one call.
const IOV_MAX: usize = 1024;
/// io_uring backend: groups of at least this many bytes are written with `pwrite` instead.
const URING_WRITE_MAX_GROUP: u64 = 4 << 20;

/// Portable backend: payloads below this are copied into one staging buffer with their
/// headers (one `pwrite` for many small records); larger ones are written in place.
const STAGE_BELOW: usize = 16 << 10;
/// Unsynced puts: once this many bytes are written without a sync, an `fdatasync` is started
/// in the background (nobody waits on it) so write-back keeps pace with bulk ingest.
const WRITE_BEHIND_BYTES: u64 = 32 << 20;

/// Once this many bytes of unsynced puts are written (one bulk group, or many small puts),
/// their write-back is started at once (`sync_file_range(SYNC_FILE_RANGE_WRITE)` on Linux):
/// the disk then works while the caller seals the next group, instead of receiving
/// everything at the next write-behind sync or barrier (seal into the store: 0.66-0.73 ->
/// 0.85-1.02 of `std::fs` write+fsync in an A/B). Synced groups need no kick: their
/// fdatasync follows.
const KICK_WRITEBACK_BYTES: u64 = 1 << 20;

/// Starts write-back of `len` bytes at `offset` without waiting for it (Linux; elsewhere a
/// no-op). Durability still comes only from `fdatasync`; this only moves the disk work earlier.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return;
    };
    // SAFETY: a plain syscall on a file descriptor we own; no memory is passed.
    // A failure only means write-back starts later (at the next fdatasync), so it is ignored.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

/// A request to the writer thread.
pub(crate) enum Request {
    Put {
        items: Vec<(ChunkId, Vec<u8>)>,
        /// crc32c of each payload, computed by the submitting thread.
        crcs: Vec<u32>,
        /// Acknowledge only once durable (`submit`), or once written (`submit_unsynced`).
        durable: bool,
        reply: oneshot::Sender<StoreResult<()>>,
    },
    /// Durability barrier: answered once everything queued before it is durable.
    Sync {
        reply: oneshot::Sender<StoreResult<()>>,
    },
    Delete {
        id: ChunkId,
        reply: oneshot::Sender<StoreResult<bool>>,
    },
    Compact {
        reply: oneshot::Sender<StoreResult<CompactReport>>,
    },
}

impl Request {
    fn payload_bytes(&self) -> usize {
        match self {
            Request::Put { items, .. } => items.iter().map(|(_, d)| d.len()).sum(),
            Request::Delete { .. } => HEADER_LEN,
            Request::Sync { .. } | Request::Compact { .. } => 0,
        }
    }
}

/// Bookkeeping for one segment file (the writer's view; readers use `Location::seg`).
#[derive(Debug)]
pub(crate) struct SegMeta {
    pub seg: Arc<Segment>,
    /// Bytes in the file (for the active segment: including bytes staged but not yet written).
    pub size: u64,
    /// Bytes of put records the index still points to.
    pub live: u64,
    /// Bytes of tombstone records.
    pub tomb: u64,
}

impl SegMeta {
    pub fn new(seg: Arc<Segment>, size: u64) -> SegMeta {
        SegMeta {
            seg,
            size,
            live: 0,
            tomb: 0,
        }
    }

    /// Bytes compaction would certainly free: dead puts and torn/damaged space.
    fn garbage(&self) -> u64 {
        self.size.saturating_sub(self.live + self.tomb)
    }

    fn garbage_ratio(&self) -> f64 {
        if self.size == 0 {
            0.0
        } else {
            self.garbage() as f64 / self.size as f64
        }
    }
}

/// Everything recovery hands to the writer.
pub(crate) struct WriterInit {
    pub shared: Arc<Shared>,
    pub cfg: StoreConfig,
    pub segments: BTreeMap<u64, SegMeta>,
    pub next_seq: u64,
    pub live_payload: u64,
}

/// Index changes that become visible once the batch is durable.
enum Update {
    Insert {
        id: ChunkId,
        seg: u64,
        offset: u64,
        len: u32,
        moved_from: Option<(u64, u64)>,
    },
    Remove {
        id: ChunkId,
    },
}

enum Reply {
    /// A put or a sync barrier.
    Done(oneshot::Sender<StoreResult<()>>),
    Delete(oneshot::Sender<StoreResult<bool>>, bool),
}

impl Reply {
    fn succeed(self) {
        match self {
            Reply::Done(tx) => {
                let _ = tx.send(Ok(()));
            }
            Reply::Delete(tx, existed) => {
                let _ = tx.send(Ok(existed));
            }
        }
    }

    fn fail(self, reason: &str) {
        let err = StoreError::Failed {
            reason: reason.to_owned(),
        };
        match self {
            Reply::Done(tx) => {
                let _ = tx.send(Err(err));
            }
            Reply::Delete(tx, _) => {
                let _ = tx.send(Err(err));
            }
        }
    }
}

/// Records staged for the active segment plus what to do once they are durable.
#[derive(Default)]
struct Batch {
    /// Buffers not yet written; `bufs[0]` goes to offset `start` of the active segment.
    bufs: Vec<Vec<u8>>,
    start: u64,
    bytes: u64,
    /// Bytes this batch has written so far (bounds what piles up behind a sync in flight).
    written: u64,
    /// Some reply may only be sent after an `fdatasync` (a synced put, a delete, a barrier).
    needs_sync: bool,
    updates: Vec<Update>,
    replies: Vec<Reply>,
    /// Buffers already written, freed only after the replies so that returning large
    /// allocations to the allocator stays off the acknowledgement path.
    spent: Vec<Vec<u8>>,
    /// Presence of keys changed by this batch (not yet in the index).
    overlay: HashMap<ChunkId, bool>,
}

impl Batch {
    fn new(start: u64) -> Batch {
        Batch {
            start,
            ..Batch::default()
        }
    }

    fn push(&mut self, buf: Vec<u8>) {
        // Never stage empty buffers: nothing to write, and io_uring's vectored write
        // bookkeeping is simpler without them.
        if !buf.is_empty() {
            self.bytes += buf.len() as u64;
            self.bufs.push(buf);
        }
    }
}

#[derive(Clone, Copy)]
enum Goal {
    /// `compact()` and idle compaction: segments above the garbage ratio.
    Threshold,
    /// A put found the store full: any segment with garbage, until this many bytes are free.
    Space(u64),
}

/// How the active segment is written.
enum ActiveIo {
    Portable,
    /// Shared with the task running a sync in flight.
    Uring(Rc<tokio_uring::fs::File>),
}

/// An `fdatasync` of the active segment that was started and not yet awaited.
enum SyncHandle {
    /// Portable backend: answered by the [`SyncThread`].
    Thread(oneshot::Receiver<io::Result<()>>),
    /// io_uring backend: a task on the writer's runtime.
    Uring(tokio::task::JoinHandle<io::Result<()>>),
}

impl SyncHandle {
    fn poll_done(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            SyncHandle::Thread(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| Err(io::Error::other("sync thread stopped")))),
            SyncHandle::Uring(task) => Pin::new(task)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|e| Err(io::Error::other(e)))),
        }
    }

    async fn wait(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_done(cx)).await
    }
}

/// A segment to `fdatasync` and where to send the result.
type SyncJob = (Arc<Segment>, oneshot::Sender<io::Result<()>>);

/// Portable backend: a helper thread that runs `fdatasync` while the writer thread goes on
/// writing the next batch. At most one sync is ever queued (the writer keeps one in flight).
struct SyncThread {
    tx: Option<std::sync::mpsc::SyncSender<SyncJob>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl SyncThread {
    fn spawn() -> io::Result<SyncThread> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<SyncJob>(1);
        let handle = std::thread::Builder::new()
            .name("chunkstore-sync".into())
            .spawn(move || {
                for (seg, reply) in rx {
                    let _ = reply.send(seg.file.sync_data());
                }
            })?;
        Ok(SyncThread {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    fn start(&self, seg: Arc<Segment>) -> SyncHandle {
        let (reply, rx) = oneshot::channel();
        // If the thread is gone, `reply` is dropped and the handle reports an error.
        if let Some(tx) = &self.tx {
            let _ = tx.send((seg, reply));
        }
        SyncHandle::Thread(rx)
    }
}

impl Drop for SyncThread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A written batch whose `fdatasync` is running: published and answered once it completes.
struct InFlight {
    sync: SyncHandle,
    seg: Arc<Segment>,
    updates: Vec<Update>,
    replies: Vec<Reply>,
    overlay: HashMap<ChunkId, bool>,
    spent: Vec<Vec<u8>>,
}

/// What woke the writer while a sync was in flight.
enum Event {
    Synced(io::Result<()>),
    Request(Option<Request>),
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    cfg: StoreConfig,
    segments: BTreeMap<u64, SegMeta>,
    active_id: u64,
    active: Arc<Segment>,
    io: ActiveIo,
    /// Portable backend only.
    sync_thread: Option<SyncThread>,
    next_seq: u64,
    disk_bytes: u64,
    live_payload: u64,
    /// Bytes written to the active segment since the last `fdatasync` started.
    dirty: bool,
    /// Bytes written since the last `fdatasync` started (drives write-behind).
    unsynced_bytes: u64,
    /// Offset in the active segment from which write-back has not been started yet.
    kick_from: u64,
    /// Set after a write or sync error: the on-disk tail is unknown, so stop writing.
    failed: Option<String>,
    staging: Vec<u8>,
    /// The batch whose sync is running, if any.
    inflight: Option<InFlight>,
    /// Written records waiting for the sync in flight to finish before their own completes.
    next: Batch,
}

impl Writer {
    pub fn new(init: WriterInit, backend: Backend) -> StoreResult<Writer> {
        let WriterInit {
            shared,
            cfg,
            segments,
            next_seq,
            live_payload,
        } = init;
        let (active_id, active) = segments
            .iter()
            .next_back()
            .map(|(id, m)| (*id, Arc::clone(&m.seg)))
            .ok_or(StoreError::BadConfig("store has no active segment"))?;
        let io = ActiveIo::open(backend, &active)?;
        let sync_thread = match backend {
            Backend::Portable => Some(
                SyncThread::spawn()
                    .map_err(|e| StoreError::io("spawn sync thread for", &shared.dir, e))?,
            ),
            Backend::IoUring => None,
        };
        let disk_bytes = segments.values().map(|m| m.size).sum();
        let w = Writer {
            shared,
            cfg,
            segments,
            active_id,
            active,
            io,
            sync_thread,
            next_seq,
            disk_bytes,
            live_payload,
            dirty: false,
            unsynced_bytes: 0,
            kick_from: 0,
            failed: None,
            staging: Vec::new(),
            inflight: None,
            next: Batch::default(),
        };
        w.publish();
        Ok(w)
    }

    /// The writer loop: take what is queued (up to `max_batch_bytes`), write it, start its
    /// sync; while the sync runs, write what arrives next; acknowledge in order as syncs
    /// complete. Ends when every sender is gone and the queue is drained.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Request>) -> StoreResult<()> {
        // Idle compaction runs once the queue empties after some work (not at startup).
        let mut worked = false;
        loop {
            let first = if self.inflight.is_some() {
                if self.next.written >= self.cfg.max_batch_bytes as u64 {
                    // Enough piled up behind the sync in flight: let it finish first.
                    let _ = self.settle().await;
                    self.advance().await;
                    continue;
                }
                let event = {
                    let Some(f) = self.inflight.as_mut() else {
                        continue;
                    };
                    std::future::poll_fn(|cx| {
                        if let Poll::Ready(res) = f.sync.poll_done(cx) {
                            return Poll::Ready(Event::Synced(res));
                        }
                        rx.poll_recv(cx).map(Event::Request)
                    })
                    .await
                };
                match event {
                    Event::Synced(res) => {
                        if let Some(f) = self.inflight.take() {
                            let _ = self.finish(f, res);
                        }
                        self.advance().await;
                        continue;
                    }
                    Event::Request(Some(r)) => r,
                    Event::Request(None) => break,
                }
            } else {
                match rx.try_recv() {
                    Ok(r) => r,
                    Err(TryRecvError::Empty) => {
                        if std::mem::take(&mut worked) {
                            self.idle_compaction().await;
                        }
                        match rx.recv().await {
                            Some(r) => r,
                            None => break,
                        }
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            };
            let mut bytes = first.payload_bytes();
            let mut group = vec![first];
            while bytes < self.cfg.max_batch_bytes
                && !matches!(group.last(), Some(Request::Compact { .. }))
            {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.payload_bytes();
                        group.push(r);
                    }
                    Err(_) => break,
                }
            }
            self.process(group).await;
            self.advance().await;
            worked = true;
        }
        self.shutdown().await
    }

    async fn shutdown(mut self) -> StoreResult<()> {
        let mut batch = std::mem::take(&mut self.next);
        let synced = if self.failed.is_none() {
            // Settles the sync in flight first, then syncs whatever is written after it.
            self.commit(&mut batch).await
        } else {
            let _ = self.settle().await;
            Ok(())
        };
        if let Some(reason) = self.failed.clone() {
            for reply in batch.replies.drain(..) {
                reply.fail(&reason);
            }
        }
        // Joins the helper thread (nothing is in flight any more).
        drop(self.sync_thread.take());
        if let ActiveIo::Uring(file) = std::mem::replace(&mut self.io, ActiveIo::Portable) {
            let path = self.active.path.clone();
            // The file is only shared while a sync is in flight, and none is.
            if let Ok(file) = Rc::try_unwrap(file) {
                file.close()
                    .await
                    .map_err(|e| StoreError::io("close segment", path, e))?;
            }
        }
        synced?;
        match self.failed {
            Some(reason) => Err(StoreError::Failed { reason }),
            None => Ok(()),
        }
    }

    /// Stages and writes a group into `self.next` (which may already hold records written
    /// while a sync was in flight). Completing it is up to [`Writer::advance`].
    async fn process(&mut self, group: Vec<Request>) {
        let mut batch = std::mem::take(&mut self.next);
        batch.start = self.active_size();
        for req in group {
            match req {
                Request::Put {
                    items,
                    crcs,
                    durable,
                    reply,
                } => {
                    if let Some(err) = self.refuse() {
                        let _ = reply.send(Err(err));
                        continue;
                    }
                    match self.stage_put(&mut batch, items, crcs).await {
                        Ok(None) => {
                            batch.needs_sync |= durable;
                            batch.replies.push(Reply::Done(reply));
                        }
                        Ok(Some(rejected)) => {
                            let _ = reply.send(Err(rejected));
                        }
                        Err(e) => {
                            self.fail(&mut batch, &e);
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Request::Delete { id, reply } => {
                    if let Some(err) = self.refuse() {
                        let _ = reply.send(Err(err));
                        continue;
                    }
                    match self.stage_delete(&mut batch, id).await {
                        Ok(existed) => {
                            batch.needs_sync = true;
                            batch.replies.push(Reply::Delete(reply, existed));
                        }
                        Err(e) => {
                            self.fail(&mut batch, &e);
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Request::Sync { reply } => {
                    if let Some(err) = self.refuse() {
                        let _ = reply.send(Err(err));
                        continue;
                    }
                    batch.needs_sync = true;
                    batch.replies.push(Reply::Done(reply));
                }
                Request::Compact { reply } => {
                    if let Some(err) = self.refuse() {
                        let _ = reply.send(Err(err));
                        continue;
                    }
                    let res = match self.commit(&mut batch).await {
                        Ok(()) => self.compact(Goal::Threshold).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = &res {
                        self.fail(&mut batch, e);
                    }
                    let _ = reply.send(res);
                    batch = Batch::new(self.active_size());
                }
            }
        }
        if let Err(e) = self.flush(&mut batch).await {
            self.fail(&mut batch, &e);
        }
        self.next = batch;
    }

    /// Completes `self.next` once no sync is in flight ahead of it: starts its sync if it
    /// needs one and wrote something since the last sync began, otherwise publishes and
    /// answers it at once (unsynced puts; requests that wrote nothing new). A write-behind
    /// sync in flight (no updates, no replies) only holds back batches that need a sync.
    async fn advance(&mut self) {
        if let Some(f) = &self.inflight {
            let write_behind = f.replies.is_empty() && f.updates.is_empty();
            if !write_behind || self.next.needs_sync {
                return;
            }
        }
        let mut batch = std::mem::take(&mut self.next);
        if let Some(reason) = self.failed.clone() {
            for reply in batch.replies.drain(..) {
                reply.fail(&reason);
            }
        } else if batch.needs_sync && self.dirty {
            self.start_sync(batch).await;
        } else {
            self.complete(&mut batch);
            if self.inflight.is_none() && self.unsynced_bytes >= WRITE_BEHIND_BYTES {
                // Bulk unsynced writes: start flushing them now, in the background, so that
                // rotation and the caller's barrier find little left to write back.
                self.start_sync(Batch::default()).await;
            }
        }
    }

    /// Starts an `fdatasync` of the active segment covering everything written so far and
    /// parks the (fully written) batch until it completes.
    async fn start_sync(&mut self, mut batch: Batch) {
        let seg = Arc::clone(&self.active);
        let sync = match (&self.io, &self.sync_thread) {
            (ActiveIo::Uring(file), _) => {
                let file = Rc::clone(file);
                SyncHandle::Uring(tokio_uring::spawn(async move { file.sync_data().await }))
            }
            (ActiveIo::Portable, Some(t)) => t.start(Arc::clone(&seg)),
            (ActiveIo::Portable, None) => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(seg.file.sync_data());
                SyncHandle::Thread(rx)
            }
        };
        self.dirty = false;
        self.unsynced_bytes = 0;
        self.inflight = Some(InFlight {
            sync,
            seg,
            updates: std::mem::take(&mut batch.updates),
            replies: std::mem::take(&mut batch.replies),
            overlay: std::mem::take(&mut batch.overlay),
            spent: std::mem::take(&mut batch.spent),
        });
        if matches!(self.io, ActiveIo::Uring(_)) {
            // Let the spawned task push its fsync into the ring now, ahead of the next
            // group's writes; otherwise it would only be queued behind them.
            tokio::task::yield_now().await;
        }
    }

    /// Waits for the sync in flight, if any, and completes its batch.
    async fn settle(&mut self) -> StoreResult<()> {
        let Some(mut f) = self.inflight.take() else {
            return Ok(());
        };
        let res = f.sync.wait().await;
        self.finish(f, res)
    }

    /// Publishes and answers a batch whose sync has completed (or fails it).
    fn finish(&mut self, f: InFlight, res: io::Result<()>) -> StoreResult<()> {
        let InFlight {
            seg,
            updates,
            replies,
            spent,
            ..
        } = f;
        if let Err(e) = res {
            let err = StoreError::io("fdatasync segment", &seg.path, e);
            let reason = self.failed.get_or_insert_with(|| err.to_string()).clone();
            for reply in replies {
                reply.fail(&reason);
            }
            return Err(err);
        }
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        self.apply(updates);
        self.publish();
        for reply in replies {
            reply.succeed();
        }
        drop(spent);
        Ok(())
    }

    /// Whether `id` is stored, counting records staged in `batch` or waiting on the sync in
    /// flight (written, not yet in the index).
    fn present(&self, batch: &Batch, index: &HashMap<ChunkId, Location>, id: &ChunkId) -> bool {
        batch
            .overlay
            .get(id)
            .or_else(|| self.inflight.as_ref().and_then(|f| f.overlay.get(id)))
            .copied()
            .unwrap_or_else(|| index.contains_key(id))
    }

    fn refuse(&self) -> Option<StoreError> {
        self.failed.as_ref().map(|reason| StoreError::Failed {
            reason: reason.clone(),
        })
    }

    /// Stages the new records of a put. `Ok(Some(err))` rejects this request alone (full).
    async fn stage_put(
        &mut self,
        batch: &mut Batch,
        items: Vec<(ChunkId, Vec<u8>)>,
        crcs: Vec<u32>,
    ) -> StoreResult<Option<StoreError>> {
        let mut fresh = Vec::with_capacity(items.len());
        let mut need = 0u64;
        {
            let index = self
                .shared
                .index
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let mut seen = HashSet::new();
            for ((id, data), crc) in items.into_iter().zip(crcs) {
                let present = self.present(batch, &index, &id);
                // Put is idempotent: a key already stored keeps its first bytes.
                if present || !seen.insert(id) {
                    continue;
                }
                need += HEADER_LEN as u64 + data.len() as u64;
                fresh.push((id, data, crc));
            }
        }
        if fresh.is_empty() {
            return Ok(None);
        }
        let short = need.saturating_sub(self.free());
        if short > 0 && self.reclaimable() >= short {
            // Only when compaction can actually free enough: otherwise every refused put would
            // rewrite data for nothing. Make what is staged durable first: compaction appends
            // to the same segment.
            self.commit(batch).await?;
            self.compact(Goal::Space(need)).await?;
            batch.start = self.active_size();
        }
        if need > self.free() {
            return Ok(Some(StoreError::Full {
                need,
                free: self.free(),
                capacity: self.cfg.capacity_bytes,
            }));
        }
        for (id, data, crc) in fresh {
            // Sizes were checked against `max_chunk_bytes: u32` when submitted.
            let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            let header = RecordHeader::put_with_crc(self.take_seq()?, id, len, crc);
            let offset = self.make_room(batch, header.record_len()).await?;
            batch.push(header.encode().to_vec());
            batch.push(data);
            batch.updates.push(Update::Insert {
                id,
                seg: self.active_id,
                offset,
                len: header.len,
                moved_from: None,
            });
            batch.overlay.insert(id, true);
            self.grow_active(header.record_len(), 0);
        }
        Ok(None)
    }

    /// Stages a tombstone if the key exists. Tombstones are exempt from the capacity check:
    /// deleting must stay possible when the store is full.
    async fn stage_delete(&mut self, batch: &mut Batch, id: ChunkId) -> StoreResult<bool> {
        let present = {
            let index = self
                .shared
                .index
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            self.present(batch, &index, &id)
        };
        if !present {
            return Ok(false);
        }
        let header = RecordHeader::tombstone(self.take_seq()?, id);
        self.make_room(batch, header.record_len()).await?;
        batch.push(header.encode().to_vec());
        batch.updates.push(Update::Remove { id });
        batch.overlay.insert(id, false);
        self.grow_active(header.record_len(), header.record_len());
        Ok(true)
    }

    /// The next record's sequence number.
    fn take_seq(&mut self) -> StoreResult<u64> {
        let seq = self.next_seq;
        self.next_seq = seq.checked_add(1).ok_or_else(|| StoreError::Damaged {
            reason: "record sequence numbers are exhausted".into(),
        })?;
        Ok(seq)
    }

    fn active_size(&self) -> u64 {
        self.segments.get(&self.active_id).map_or(0, |m| m.size)
    }

    fn grow_active(&mut self, bytes: u64, tomb: u64) {
        if let Some(m) = self.segments.get_mut(&self.active_id) {
            m.size += bytes;
            m.tomb += tomb;
        }
        self.disk_bytes += bytes;
    }

    fn free(&self) -> u64 {
        self.cfg.capacity_bytes.saturating_sub(self.disk_bytes)
    }

    fn reclaimable(&self) -> u64 {
        self.segments.values().map(SegMeta::garbage).sum()
    }

    /// Rotates first if a record of `len` bytes does not fit in the active segment; returns
    /// the offset the record will have. A record larger than a whole segment gets one alone.
    async fn make_room(&mut self, batch: &mut Batch, len: u64) -> StoreResult<u64> {
        let size = self.active_size();
        if size > 0 && size.saturating_add(len) > self.cfg.segment_bytes {
            self.rotate(batch).await?;
        }
        Ok(self.active_size())
    }

    /// Seals the active segment (written and synced in full, unsynced puts included) and
    /// starts the next one. The new file's name is made durable with a directory fsync before
    /// anything in it is acknowledged.
    async fn rotate(&mut self, batch: &mut Batch) -> StoreResult<()> {
        self.flush(batch).await?;
        // Waits for the sync in flight too, so the old file is no longer shared.
        self.sync().await?;
        let id = self
            .active_id
            .checked_add(1)
            .filter(|id| *id <= super::segment::MAX_SEGMENT_ID)
            .ok_or_else(|| StoreError::Damaged {
                reason: format!(
                    "segment {} is the last a 12-digit name can number",
                    self.active_id
                ),
            })?;
        let seg = Arc::new(Segment::create(&self.shared.dir, id)?);
        sync_dir(&self.shared.dir)?;
        let io = ActiveIo::open(self.backend(), &seg)?;
        let old = std::mem::replace(&mut self.io, io);
        if let ActiveIo::Uring(file) = old {
            let path = self.active.path.clone();
            if let Ok(file) = Rc::try_unwrap(file) {
                file.close()
                    .await
                    .map_err(|e| StoreError::io("close segment", path, e))?;
            }
        }
        self.segments.insert(id, SegMeta::new(Arc::clone(&seg), 0));
        self.active = seg;
        self.active_id = id;
        batch.start = 0;
        self.kick_from = 0;
        self.publish();
        Ok(())
    }

    fn backend(&self) -> Backend {
        match self.io {
            ActiveIo::Portable => Backend::Portable,
            ActiveIo::Uring(_) => Backend::IoUring,
        }
    }

    /// Writes the staged buffers (no sync).
    async fn flush(&mut self, batch: &mut Batch) -> StoreResult<()> {
        if batch.bufs.is_empty() {
            return Ok(());
        }
        let bufs = std::mem::take(&mut batch.bufs);
        let seg = Arc::clone(&self.active);
        self.dirty = true;
        self.unsynced_bytes += batch.bytes;
        let (res, bufs) = match &self.io {
            ActiveIo::Uring(file) if batch.needs_sync && batch.bytes < URING_WRITE_MAX_GROUP => {
                write_uring(file, bufs, batch.start).await
            }
            // Large groups (bulk ingest) and unsynced groups (shards a holder receives) are
            // written with pwrite from this thread even on the io_uring backend: ext4 punts
            // buffered io_uring writes to io-wq kernel workers, which copied 1.5-3x slower
            // than a direct pwrite in our measurements (a 1 GiB network put spent 14% of the
            // machine in io-wq workers); io_uring keeps the small synced groups, where its
            // vectored submission and the overlapped fdatasync win.
            _ => (
                write_portable(&seg.file, &bufs, batch.start, &mut self.staging),
                bufs,
            ),
        };
        if !batch.replies.is_empty() {
            batch.spent.extend(bufs);
        }
        res.map_err(|e| StoreError::io("write segment", &seg.path, e))?;
        batch.start += batch.bytes;
        if batch.needs_sync {
            // Its fdatasync follows at once and writes everything back.
            self.kick_from = batch.start;
        } else if batch.start.saturating_sub(self.kick_from) >= KICK_WRITEBACK_BYTES {
            let from = self.kick_from.min(batch.start);
            start_writeback(&seg.file, from, batch.start - from);
            self.kick_from = batch.start;
        }
        batch.written += batch.bytes;
        batch.bytes = 0;
        Ok(())
    }

    /// Waits for the sync in flight, then one `fdatasync` of the active segment if anything
    /// was written since that one started.
    async fn sync(&mut self) -> StoreResult<()> {
        self.settle().await?;
        if !self.dirty {
            return Ok(());
        }
        let res = match &self.io {
            ActiveIo::Portable => self.active.file.sync_data(),
            ActiveIo::Uring(file) => file.sync_data().await,
        };
        res.map_err(|e| StoreError::io("fdatasync segment", &self.active.path, e))?;
        self.dirty = false;
        self.unsynced_bytes = 0;
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes and syncs the batch, then publishes its index changes and acknowledges it.
    async fn commit(&mut self, batch: &mut Batch) -> StoreResult<()> {
        let res = match self.flush(batch).await {
            Ok(()) => self.sync().await,
            Err(e) => Err(e),
        };
        if let Err(e) = res {
            self.fail(batch, &e);
            return Err(e);
        }
        self.complete(batch);
        batch.start = self.active_size();
        Ok(())
    }

    /// Publishes a written (and, where needed, synced) batch's index changes and answers it.
    fn complete(&mut self, batch: &mut Batch) {
        self.apply(std::mem::take(&mut batch.updates));
        batch.overlay.clear();
        batch.needs_sync = false;
        batch.written = 0;
        self.publish();
        for reply in batch.replies.drain(..) {
            reply.succeed();
        }
        batch.spent.clear();
    }

    /// Stops all writing after an I/O error and fails everything waiting in `batch`. A batch
    /// whose sync is in flight is left alone: it completes (or fails) on its own sync.
    fn fail(&mut self, batch: &mut Batch, err: &StoreError) {
        let reason = self.failed.get_or_insert_with(|| err.to_string()).clone();
        for reply in batch.replies.drain(..) {
            reply.fail(&reason);
        }
        batch.bufs.clear();
        batch.spent.clear();
        batch.bytes = 0;
        batch.written = 0;
        batch.needs_sync = false;
        batch.updates.clear();
        batch.overlay.clear();
    }

    fn apply(&mut self, updates: Vec<Update>) {
        if updates.is_empty() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let mut index = shared.index.write().unwrap_or_else(PoisonError::into_inner);
        for update in updates {
            let old = match update {
                Update::Insert {
                    id,
                    seg,
                    offset,
                    len,
                    moved_from,
                } => {
                    if let Some((from_seg, from_off)) = moved_from {
                        let still_there = index
                            .get(&id)
                            .is_some_and(|l| l.seg.id == from_seg && l.offset == from_off);
                        if !still_there {
                            continue;
                        }
                    }
                    let Some(meta) = self.segments.get_mut(&seg) else {
                        continue;
                    };
                    meta.live += HEADER_LEN as u64 + u64::from(len);
                    self.live_payload += u64::from(len);
                    let loc = Location {
                        seg: Arc::clone(&meta.seg),
                        offset,
                        len,
                    };
                    index.insert(id, loc)
                }
                Update::Remove { id } => index.remove(&id),
            };
            if let Some(old) = old {
                if let Some(meta) = self.segments.get_mut(&old.seg.id) {
                    meta.live = meta
                        .live
                        .saturating_sub(HEADER_LEN as u64 + u64::from(old.len));
                }
                self.live_payload = self.live_payload.saturating_sub(u64::from(old.len));
            }
        }
    }

    fn publish(&self) {
        let s = &self.shared;
        s.disk_bytes.store(self.disk_bytes, Ordering::Relaxed);
        s.live_bytes.store(self.live_payload, Ordering::Relaxed);
        s.segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
        s.garbage_bytes.store(self.reclaimable(), Ordering::Relaxed);
    }

    /// With nothing queued, compacts at most one segment above the garbage ratio.
    async fn idle_compaction(&mut self) {
        if self.failed.is_some() {
            return;
        }
        let ratio = self.cfg.compact_garbage_ratio;
        let candidate = self
            .segments
            .iter()
            .find(|(id, m)| **id != self.active_id && m.garbage() > 0 && m.garbage_ratio() > ratio)
            .map(|(id, _)| *id);
        if let Some(id) = candidate {
            let mut report = CompactReport::default();
            if let Err(e) = self.compact_segment(id, &mut report).await {
                self.fail(&mut Batch::default(), &e);
            }
            self.publish();
        }
    }

    /// Compacts segments oldest first: older segments go first so that tombstones in later
    /// ones find nothing left to shadow and can be dropped.
    async fn compact(&mut self, goal: Goal) -> StoreResult<CompactReport> {
        let before = self.disk_bytes;
        let ratio = self.cfg.compact_garbage_ratio;
        let wanted = |m: &SegMeta| match goal {
            Goal::Threshold => m.garbage() > 0 && m.garbage_ratio() > ratio,
            Goal::Space(_) => m.garbage() > 0,
        };
        // The active segment is never rewritten in place: seal it so it can be compacted too.
        if self.segments.get(&self.active_id).is_some_and(wanted) {
            self.rotate(&mut Batch::new(self.active_size())).await?;
        }
        let candidates: Vec<u64> = self
            .segments
            .iter()
            .filter(|(id, m)| **id != self.active_id && wanted(m))
            .map(|(id, _)| *id)
            .collect();
        let mut report = CompactReport::default();
        for id in candidates {
            if let Goal::Space(need) = goal {
                if need <= self.free() {
                    break;
                }
            }
            self.compact_segment(id, &mut report).await?;
        }
        report.bytes_reclaimed = before.saturating_sub(self.disk_bytes);
        self.publish();
        Ok(report)
    }

    /// Rewrites the live records of sealed segment `id` into the active segment, syncs them,
    /// points the index at the copies, then unlinks the old file and fsyncs the directory.
    ///
    /// Tombstones: a tombstone for `k` in segment S only matters while an older segment still
    /// holds a put of `k`, because recovery replays segments in order and that put would come
    /// back. So a tombstone is copied forward iff `k` is not live now (a live `k` means a later
    /// put already supersedes both) and some segment older than S still contains a put of `k`.
    /// Older segments are only ever unlinked after a directory fsync, and new puts only go to
    /// the newest segment, so the answer cannot change behind our back. Copies keep their
    /// original headers (seq included) and land after everything already written, so replaying
    /// old original and new copy in log order yields the same state.
    async fn compact_segment(&mut self, id: u64, report: &mut CompactReport) -> StoreResult<()> {
        if id == self.active_id {
            return Ok(());
        }
        // Decisions below read the index: nothing may be waiting to be published.
        self.settle().await?;
        let Some(seg) = self.segments.get(&id).map(|m| Arc::clone(&m.seg)) else {
            return Ok(());
        };
        // Which records of the segment still matter, in file order.
        let mut keep: Vec<(ChunkId, u64, RecordKind, u32)> = Vec::new();
        let mut dead_tombs: HashSet<ChunkId> = HashSet::new();
        {
            let index = self
                .shared
                .index
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            walk(&seg, false, |h, off, _| match h.kind {
                RecordKind::Put => {
                    if index
                        .get(&h.id)
                        .is_some_and(|l| l.seg.id == id && l.offset == off)
                    {
                        keep.push((h.id, off, h.kind, h.len));
                    }
                }
                RecordKind::Tombstone => {
                    if !index.contains_key(&h.id) {
                        dead_tombs.insert(h.id);
                        keep.push((h.id, off, h.kind, 0));
                    }
                }
            })?;
        }
        let mut shadowed: HashSet<ChunkId> = HashSet::new();
        if !dead_tombs.is_empty() {
            for meta in self.segments.range(..id).map(|(_, m)| m) {
                walk(&meta.seg, false, |h, _, _| {
                    if h.kind == RecordKind::Put && dead_tombs.contains(&h.id) {
                        shadowed.insert(h.id);
                    }
                })?;
                if shadowed.len() == dead_tombs.len() {
                    break;
                }
            }
        }
        let mut batch = Batch::new(self.active_size());
        for (key, off, kind, len) in keep {
            if kind == RecordKind::Tombstone && !shadowed.contains(&key) {
                report.tombstones_dropped += 1;
                continue;
            }
            let rec_len = HEADER_LEN as u64 + u64::from(len);
            let new_off = self.make_room(&mut batch, rec_len).await?;
            let mut buf = vec![0u8; usize::try_from(rec_len).unwrap_or(usize::MAX)];
            seg.file
                .read_exact_at(&mut buf, off)
                .map_err(|e| StoreError::io("read segment for compaction", &seg.path, e))?;
            batch.push(buf);
            if kind == RecordKind::Put {
                batch.updates.push(Update::Insert {
                    id: key,
                    seg: self.active_id,
                    offset: new_off,
                    len,
                    moved_from: Some((id, off)),
                });
                self.grow_active(rec_len, 0);
                report.records_moved += 1;
            } else {
                self.grow_active(rec_len, rec_len);
                report.tombstones_kept += 1;
            }
            if batch.bytes >= self.cfg.max_batch_bytes as u64 {
                self.flush(&mut batch).await?;
            }
        }
        self.commit(&mut batch).await?;
        // The copies are durable and indexed; now the old file can go.
        if let Some(meta) = self.segments.remove(&id) {
            self.disk_bytes = self.disk_bytes.saturating_sub(meta.size);
        }
        std::fs::remove_file(&seg.path)
            .map_err(|e| StoreError::io("unlink compacted segment", &seg.path, e))?;
        sync_dir(&self.shared.dir)?;
        report.segments_compacted += 1;
        self.publish();
        Ok(())
    }
}

impl ActiveIo {
    fn open(backend: Backend, seg: &Segment) -> StoreResult<ActiveIo> {
        match backend {
            Backend::Portable => Ok(ActiveIo::Portable),
            Backend::IoUring => {
                // A second descriptor for the same open file: io_uring owns this one, readers
                // keep using `seg.file`.
                let dup = seg
                    .file
                    .try_clone()
                    .map_err(|e| StoreError::io("dup segment fd", &seg.path, e))?;
                let file = tokio_uring::fs::File::from_std(dup);
                Ok(ActiveIo::Uring(Rc::new(file)))
            }
        }
    }
}

/// `writev` through io_uring, at most `IOV_MAX` buffers per call, resuming after short writes.
/// The payload buffers are handed to the kernel as they are: no staging copy. The buffers come
/// back with the result, so the caller decides when to free them.
async fn write_uring(
    file: &tokio_uring::fs::File,
    bufs: Vec<Vec<u8>>,
    mut pos: u64,
) -> (io::Result<()>, Vec<Vec<u8>>) {
    let mut done = Vec::with_capacity(bufs.len());
    let mut rest: Vec<Slice<Vec<u8>>> = bufs.into_iter().map(BoundedBuf::slice_full).collect();
    rest.reverse(); // pop from the back = take in order
    while !rest.is_empty() {
        let take = rest.len().min(IOV_MAX);
        let chunk: Vec<Slice<Vec<u8>>> = rest.drain(rest.len() - take..).rev().collect();
        let want: usize = chunk.iter().map(|s| s.len()).sum();
        let (res, chunk) = file.writev_at(chunk, pos).await;
        let mut n = match res {
            Ok(n) => n,
            Err(e) => {
                done.extend(chunk.into_iter().chain(rest).map(Slice::into_inner));
                return (Err(e), done);
            }
        };
        if n == 0 && want > 0 {
            done.extend(chunk.into_iter().chain(rest).map(Slice::into_inner));
            let err = io::Error::new(io::ErrorKind::WriteZero, "segment write made no progress");
            return (Err(err), done);
        }
        pos += n as u64;
        // Fully written buffers are done; a short write puts the remainder back, in order.
        let mut leftover = Vec::new();
        for s in chunk {
            let len = s.len();
            if n >= len {
                n -= len;
                done.push(s.into_inner());
            } else {
                let begin = s.begin() + n;
                let end = s.end();
                leftover.push(s.into_inner().slice(begin..end));
                n = 0;
            }
        }
        leftover.reverse();
        rest.extend(leftover);
    }
    (Ok(()), done)
}

/// `pwrite` per buffer; small records are gathered in `staging` first so a group of small
/// chunks costs a few syscalls, while large payloads are written from where they are.
fn write_portable(
    file: &std::fs::File,
    bufs: &[Vec<u8>],
    mut pos: u64,
    staging: &mut Vec<u8>,
) -> io::Result<()> {
    staging.clear();
    let mut staged_at = pos;
    for buf in bufs {
        if buf.len() < STAGE_BELOW {
            if staging.is_empty() {
                staged_at = pos;
            }
            staging.extend_from_slice(buf);
            if staging.len() >= 1 << 20 {
                file.write_all_at(staging, staged_at)?;
                staging.clear();
            }
        } else {
            if !staging.is_empty() {
                file.write_all_at(staging, staged_at)?;
                staging.clear();
            }
            file.write_all_at(buf, pos)?;
        }
        pos += buf.len() as u64;
    }
    if !staging.is_empty() {
        file.write_all_at(staging, staged_at)?;
        staging.clear();
    }
    if staging.capacity() > 4 << 20 {
        *staging = Vec::new();
    }
    Ok(())
}
