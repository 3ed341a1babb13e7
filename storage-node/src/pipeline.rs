//! The seal/open pipeline: client-side encryption, erasure coding and content addressing.
//!
//! Seal: plaintext is read in blocks of `block_size`; each block is split into k parts that
//! are read straight into their shard buffers (no copy), each part is sealed in place with
//! the AEAD key of the block's encryption interval (nonce from stream, block and part; the
//! shard header is the associated data), m parity shards are computed over the sealed parts,
//! and every shard (header ‖ payload) is content-addressed with BLAKE3. Blocks of a window
//! are sealed in parallel on rayon while the next window is read, and shards go to a
//! [`ShardSink`] as each window completes, so memory stays bounded by the window whatever the
//! input size. The result is a [`Manifest`] whose Merkle root the chain registers.
//!
//! Open reverses it from any k shards per block: data shards are preferred (no decoding), every
//! fetched shard is checked against its content id and expected header, missing parts are
//! rebuilt by Reed–Solomon and checked again, then decrypted and authenticated.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crypto_accel::{
    block_nonce, kek_for_upload, Aead, AeadAlgo, ChunkId, CryptoError, DataId, Erasure, Hash,
    IntervalKey, Keypair, MerkleTree, ShardHeader, SHARD_HEADER_LEN, TAG_LEN, WRAPPED_KEY_LEN,
};
use rayon::prelude::*;

use crate::manifest::{BlockEntry, Manifest, MAX_BLOCKS, MAX_BLOCK_SIZE};
use crate::store::{ChunkStore, PutTicket, StoreError};

/// Result alias for the pipeline.
pub type PipelineResult<T> = Result<T, PipelineError>;

/// A content-addressed shard: its id and its framed bytes.
pub type Shard = (ChunkId, Vec<u8>);

/// Context string from which the owner's key-wrapping secret is derived.
const OWNER_WRAP_CONTEXT: &str = "cpchain owner interval-key wrapping v1";

/// Everything that can go wrong sealing or opening data.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Reading the plaintext input failed.
    #[error("reading the input failed: {0}")]
    Read(#[source] io::Error),
    /// Writing the plaintext output failed.
    #[error("writing the output failed: {0}")]
    Write(#[source] io::Error),
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A range asked of [`open`] starts at or past the end of the data.
    #[error("{}", range_outside(*.start, *.len))]
    RangeOutside {
        /// The range's first byte.
        start: u64,
        /// The data's length in bytes.
        len: u64,
    },
    /// A crypto kernel failed (wrong key or tampered ciphertext among others).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The chunk store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Fewer than k good shards of a block could be found.
    #[error(
        "unrecoverable: block {block}: {have} of {need} shards reachable \
         ({corrupt} failed their checks)"
    )]
    Unrecoverable {
        /// The block.
        block: u64,
        /// Good shards found.
        have: usize,
        /// Shards needed (k).
        need: usize,
        /// Shards found but rejected (hash, header or store checksum).
        corrupt: usize,
    },
    /// The manifest is malformed or inconsistent.
    #[error("manifest is invalid: {reason}")]
    ManifestInvalid {
        /// What is wrong.
        reason: String,
    },
    /// The manifest's shard ids do not hash to its root.
    #[error("manifest root does not match its shard list (manifest tampered with)")]
    RootMismatch,
    /// The manifest is not the one the data id names.
    #[error("manifest hashes to data id {got}, not the requested {expected}")]
    DataIdMismatch {
        /// The id asked for.
        expected: DataId,
        /// The id the manifest hashes to.
        got: DataId,
    },
    /// No manifest for this id is known locally.
    #[error("no data with id {id} is known here: check the id and the --home directory")]
    UnknownData {
        /// The id asked for.
        id: DataId,
    },
    /// The key in use is not the owner's.
    #[error(
        "data is owned by key {owner}, but the key in use is {key}: only the owner can \
         decrypt it for now (a grant or the public policy lets a reader fetch the encrypted \
         shards, but handing readers the data keys needs proxy re-encryption, not built yet)"
    )]
    NotOwner {
        /// The data's owner (hex).
        owner: String,
        /// The key that tried to open it (hex).
        key: String,
    },
    /// Sealing parameters are out of range.
    #[error("bad seal parameters: {0}")]
    BadParams(String),
}

impl PipelineError {
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> PipelineError {
        PipelineError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// How data is sealed.
#[derive(Debug, Clone)]
pub struct SealParams {
    /// Data shards per block.
    pub k: u8,
    /// Parity shards per block: any m may be lost.
    pub m: u8,
    /// Plaintext bytes per block.
    pub block_size: u32,
    /// Blocks per encryption interval (each interval gets a fresh key).
    pub interval_blocks: u32,
    /// The AEAD.
    pub algo: AeadAlgo,
    /// Stream number (0 for files).
    pub stream: u32,
    /// Blocks sealed concurrently; 0 = two per rayon thread. Bounds memory.
    pub window: usize,
}

impl Default for SealParams {
    fn default() -> Self {
        SealParams {
            k: 10,
            m: 4,
            // 1 MiB blocks (~100 KiB shards at 10+4): a block and its parity stay in a
            // core's L2 through all stages; measured faster than 4 MiB both in memory and
            // into the store (bench/RESULTS.md).
            block_size: 1 << 20,
            interval_blocks: 64,
            algo: AeadAlgo::Aes256Gcm,
            stream: 0,
            window: 0,
        }
    }
}

impl SealParams {
    fn check(&self) -> PipelineResult<Erasure> {
        if self.block_size == 0 || self.block_size > MAX_BLOCK_SIZE {
            return Err(PipelineError::BadParams(format!(
                "block size must be 1..={MAX_BLOCK_SIZE} bytes"
            )));
        }
        if self.interval_blocks == 0 {
            return Err(PipelineError::BadParams(
                "an interval must span at least one block".into(),
            ));
        }
        Ok(Erasure::new(usize::from(self.k), usize::from(self.m))?)
    }

    fn window(&self) -> usize {
        match self.window {
            0 => 2 * rayon::current_num_threads().max(1),
            w => w,
        }
    }
}

/// Where sealed shards go: the local chunk store, the network, or memory.
pub trait ShardSink {
    /// Accepts the shards of one window of blocks; may write asynchronously. A sink moves
    /// out the shards it keeps (`std::mem::take`, `drain`); buffers it leaves in `shards`
    /// are reused by the pipeline for the next window, so a sink that only copies or sends
    /// them makes sealing allocation-free.
    fn put(&mut self, shards: &mut Vec<Shard>) -> PipelineResult<()>;
    /// Returns once everything put so far is durable.
    fn flush(&mut self) -> PipelineResult<()>;
}

/// Where shards come from when opening.
pub trait ShardSource: Sync {
    /// The framed bytes of shard `id`; `Ok(None)` when it is not available.
    fn fetch(&self, id: &ChunkId) -> PipelineResult<Option<Vec<u8>>>;

    /// True when every shard `fetch` returns has already been hashed and found equal to the
    /// id it was fetched by, so open need not hash it again (a network source must check
    /// each shard before it can decide to ask another holder).
    fn checks_ids(&self) -> bool {
        false
    }
}

/// Keeps shards in memory (tests, benchmarks).
#[derive(Debug, Default)]
pub struct MemoryShards {
    /// The shards by id.
    pub shards: std::collections::HashMap<ChunkId, Vec<u8>>,
}

impl ShardSink for MemoryShards {
    fn put(&mut self, shards: &mut Vec<Shard>) -> PipelineResult<()> {
        self.shards.extend(shards.drain(..));
        Ok(())
    }
    fn flush(&mut self) -> PipelineResult<()> {
        Ok(())
    }
}

impl ShardSource for MemoryShards {
    fn fetch(&self, id: &ChunkId) -> PipelineResult<Option<Vec<u8>>> {
        Ok(self.shards.get(id).cloned())
    }
}

/// Drops shards, counting their bytes (benchmarks of the pipeline alone).
#[derive(Debug, Default)]
pub struct CountingSink {
    /// Shards accepted.
    pub shards: u64,
    /// Bytes accepted.
    pub bytes: u64,
}

impl ShardSink for CountingSink {
    fn put(&mut self, shards: &mut Vec<Shard>) -> PipelineResult<()> {
        self.shards += shards.len() as u64;
        self.bytes += shards.iter().map(|s| s.1.len() as u64).sum::<u64>();
        Ok(())
    }
    fn flush(&mut self) -> PipelineResult<()> {
        Ok(())
    }
}

/// Writes shards into a [`ChunkStore`] as one bulk ingest: each window is written to the log
/// unsynced, with a bounded number of windows in flight (so sealing overlaps the disk and
/// memory stays bounded), and [`ShardSink::flush`] is one durability barrier. That is what a
/// plain sequential write + one fsync of the same bytes costs, instead of an fdatasync per
/// window. Nothing is acknowledged to the user (manifest saved, data id printed) before
/// `flush` returns.
#[derive(Debug)]
pub struct StoreSink<'a> {
    store: &'a ChunkStore,
    pending: std::collections::VecDeque<PutTicket>,
    max_pending: usize,
}

impl<'a> StoreSink<'a> {
    /// A sink into `store` with at most four windows being written at once.
    pub fn new(store: &'a ChunkStore) -> Self {
        StoreSink {
            store,
            pending: Default::default(),
            max_pending: 4,
        }
    }
}

impl ShardSink for StoreSink<'_> {
    fn put(&mut self, shards: &mut Vec<Shard>) -> PipelineResult<()> {
        self.pending
            .push_back(self.store.submit_unsynced(std::mem::take(shards))?);
        while self.pending.len() > self.max_pending {
            if let Some(t) = self.pending.pop_front() {
                t.wait()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> PipelineResult<()> {
        while let Some(t) = self.pending.pop_front() {
            t.wait()?;
        }
        self.store.sync()?;
        Ok(())
    }
}

impl ShardSource for ChunkStore {
    fn fetch(&self, id: &ChunkId) -> PipelineResult<Option<Vec<u8>>> {
        match self.get(id) {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// One block read from the input: its k data shard buffers with the plaintext in place, and
/// m buffers of the same length for parity.
struct RawBlock {
    index: u64,
    len: usize,
    part_len: usize,
    parts: Vec<Vec<u8>>,
    parity: Vec<Vec<u8>>,
}

/// Shard buffers handed back by the sink, reused for the next blocks: fresh multi-hundred-KiB
/// allocations cost a page fault per 4 KiB and arrive cold in cache (measured: a quarter of
/// the seal rate).
#[derive(Default)]
struct BufPool {
    free: Vec<Vec<u8>>,
    max: usize,
}

impl BufPool {
    fn with_max(max: usize) -> Self {
        BufPool {
            free: Vec::with_capacity(max),
            max,
        }
    }

    /// An empty buffer with room for `cap` bytes.
    fn empty(&mut self, cap: usize) -> Vec<u8> {
        match self.free.pop() {
            Some(mut b) => {
                b.clear();
                b.reserve(cap);
                b
            }
            None => Vec::with_capacity(cap),
        }
    }

    /// A buffer of exactly `len` bytes whose contents the caller overwrites.
    fn filled(&mut self, len: usize) -> Vec<u8> {
        match self.free.pop() {
            Some(b) if b.len() == len => b,
            Some(mut b) => {
                b.clear();
                b.resize(len, 0);
                b
            }
            None => vec![0u8; len],
        }
    }

    fn give(&mut self, bufs: impl Iterator<Item = Vec<u8>>) {
        for b in bufs {
            if self.free.len() >= self.max {
                break;
            }
            self.free.push(b);
        }
    }
}

/// A sealed block: its shards and their ids, in code order.
struct SealedBlock {
    index: u64,
    len: usize,
    entry: BlockEntry,
    shards: Vec<Vec<u8>>,
}

fn header(
    p: &Manifest,
    block: u64,
    block_len: usize,
    part_len: usize,
    index: usize,
) -> ShardHeader {
    ShardHeader {
        k: p.k,
        m: p.m,
        index: index as u8,
        stream: p.stream,
        block,
        block_len: block_len as u32,
        payload_len: (part_len + TAG_LEN) as u32,
    }
}

/// Appends up to `n` bytes of input to `buf` (no zero-filling first); returns how many came.
fn read_up_to(r: &mut impl Read, buf: &mut Vec<u8>, n: usize) -> PipelineResult<usize> {
    let before = buf.len();
    loop {
        let want = (before + n - buf.len()) as u64;
        if want == 0 {
            break;
        }
        match r.by_ref().take(want).read_to_end(buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(PipelineError::Read(e)),
        }
    }
    Ok(buf.len() - before)
}

/// Reads the next block into k part buffers; `None` at the end of input (except that an
/// empty input still yields one empty block, so every data item has at least one).
fn read_block(
    r: &mut impl Read,
    (k, m): (usize, usize),
    block_size: usize,
    index: u64,
    pool: &mut BufPool,
) -> PipelineResult<Option<RawBlock>> {
    let part_len = block_size.div_ceil(k);
    let full = SHARD_HEADER_LEN + part_len + TAG_LEN;
    let mut parts = Vec::with_capacity(k);
    let mut len = 0;
    for _ in 0..k {
        let mut buf = pool.empty(full);
        buf.resize(SHARD_HEADER_LEN, 0);
        let want = part_len.min(block_size - len);
        let got = read_up_to(r, &mut buf, want)?;
        buf.resize(full, 0);
        len += got;
        parts.push(buf);
        if got < want {
            break;
        }
    }
    if len == 0 && index > 0 {
        pool.give(parts.into_iter());
        return Ok(None);
    }
    if len == block_size {
        let parity = (0..m).map(|_| pool.filled(full)).collect();
        return Ok(Some(RawBlock {
            index,
            len,
            part_len,
            parts,
            parity,
        }));
    }
    // A short last block: repack into k parts of ceil(len / k) so a small file does not
    // store k full-size parts of padding.
    let short = len.div_ceil(k).max(1);
    let mut flat = Vec::with_capacity(len);
    for p in &parts {
        let take = part_len.min(len - flat.len());
        flat.extend_from_slice(&p[SHARD_HEADER_LEN..SHARD_HEADER_LEN + take]);
    }
    let parts = (0..k)
        .map(|i| {
            let mut buf = vec![0u8; SHARD_HEADER_LEN + short + TAG_LEN];
            let s = (i * short).min(len);
            let e = ((i + 1) * short).min(len);
            buf[SHARD_HEADER_LEN..SHARD_HEADER_LEN + (e - s)].copy_from_slice(&flat[s..e]);
            buf
        })
        .collect();
    let parity = (0..m)
        .map(|_| vec![0u8; SHARD_HEADER_LEN + short + TAG_LEN])
        .collect();
    Ok(Some(RawBlock {
        index,
        len,
        part_len: short,
        parts,
        parity,
    }))
}

fn seal_block(
    raw: RawBlock,
    shape: &Manifest,
    erasure: &Erasure,
    aead: &Aead,
) -> PipelineResult<SealedBlock> {
    let RawBlock {
        index,
        len,
        part_len,
        parts,
        parity,
    } = raw;
    let (k, m) = (usize::from(shape.k), usize::from(shape.m));
    let mut shards = parts;
    let mut ids = Vec::with_capacity(k + m);
    // Each data part is sealed and hashed while it is still hot in cache, rather than
    // streaming the whole block through memory once per kernel.
    for (i, s) in shards.iter_mut().enumerate() {
        let h = header(shape, index, len, part_len, i).to_array();
        s[..SHARD_HEADER_LEN].copy_from_slice(&h);
        let nonce = block_nonce(shape.stream, index, i as u8)?;
        let (hdr, body) = s.split_at_mut(SHARD_HEADER_LEN);
        let (plain, tag) = body.split_at_mut(part_len);
        tag.copy_from_slice(&aead.seal_in_place(nonce, hdr, plain)?);
        ids.push(ChunkId::of(s));
    }
    for (i, mut s) in (k..k + m).zip(parity) {
        s[..SHARD_HEADER_LEN].copy_from_slice(&header(shape, index, len, part_len, i).to_array());
        shards.push(s);
    }
    {
        let (data, parity) = shards.split_at_mut(k);
        let data: Vec<&[u8]> = data.iter().map(|s| &s[SHARD_HEADER_LEN..]).collect();
        let mut parity: Vec<&mut [u8]> = parity
            .iter_mut()
            .map(|s| &mut s[SHARD_HEADER_LEN..])
            .collect();
        erasure.encode_sep(&data, &mut parity)?;
    }
    ids.extend(shards[k..].iter().map(|s| ChunkId::of(s)));
    Ok(SealedBlock {
        index,
        len,
        entry: BlockEntry { shards: ids },
        shards,
    })
}

/// Fresh interval keys as blocks reach new intervals, wrapped for the owner as they are made.
struct KeyRing {
    kek: [u8; 32],
    algo: AeadAlgo,
    interval_blocks: u64,
    wrapped: Vec<[u8; WRAPPED_KEY_LEN]>,
    current: Option<Arc<Aead>>,
}

impl KeyRing {
    /// The AEAD for block `index`; blocks must come in order.
    fn for_block(&mut self, index: u64) -> PipelineResult<Arc<Aead>> {
        if index >= MAX_BLOCKS as u64 {
            return Err(PipelineError::BadParams(format!(
                "input exceeds {MAX_BLOCKS} blocks; use a larger block size"
            )));
        }
        match &self.current {
            Some(a) if !index.is_multiple_of(self.interval_blocks) => Ok(Arc::clone(a)),
            _ => {
                let key = IntervalKey::generate()?;
                let interval = self.wrapped.len() as u64;
                self.wrapped.push(key.wrap(&self.kek, interval)?);
                let a = Arc::new(Aead::new(self.algo, &key)?);
                self.current = Some(Arc::clone(&a));
                Ok(a)
            }
        }
    }
}

/// Puts sealed blocks into the sink in block order, recording them in the manifest.
struct Collector<'s> {
    sink: &'s mut (dyn ShardSink + Send),
    progress: &'s (dyn Fn(u64) + Sync),
    blocks: Vec<BlockEntry>,
    length: u64,
    /// Blocks that finished out of order, waiting for their predecessors.
    early: std::collections::BTreeMap<u64, SealedBlock>,
    batch: Vec<Shard>,
}

impl Collector<'_> {
    /// Takes one sealed block; puts every block that is now in order. Returns the shard
    /// buffers the sink gave back.
    fn take(&mut self, b: SealedBlock) -> PipelineResult<Vec<Vec<u8>>> {
        self.early.insert(b.index, b);
        while let Some(b) = self.early.remove(&(self.blocks.len() as u64)) {
            self.batch
                .extend(b.entry.shards.iter().copied().zip(b.shards));
            self.length += b.len as u64;
            self.blocks.push(b.entry);
        }
        if self.batch.is_empty() {
            return Ok(Vec::new());
        }
        self.sink.put(&mut self.batch)?;
        (self.progress)(self.length);
        Ok(self.batch.drain(..).map(|(_, buf)| buf).collect())
    }
}

/// Seals everything `input` yields for `owner` and hands the shards to `sink`; returns the
/// manifest once every shard is durable in the sink. `progress` is called with the plaintext
/// bytes sealed so far.
///
/// On a rayon pool of one thread the stages run one after another on the calling thread.
/// Otherwise they stream: a reader thread fills a bounded queue of blocks, the pool seals
/// blocks as they arrive (`par_bridge`, no window barriers leaving a core idle), and a
/// collector thread puts them into the sink in order. Memory is bounded by the queues.
pub fn seal<R: Read + Send>(
    input: R,
    owner: &Keypair,
    params: &SealParams,
    sink: &mut (dyn ShardSink + Send),
    progress: &(dyn Fn(u64) + Sync),
) -> PipelineResult<Manifest> {
    let mut salt = [0u8; 32];
    rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut salt)
        .map_err(|_| CryptoError::Rng)?;
    seal_with_salt(input, owner, params, salt, sink, progress)
}

/// [`seal`] with a caller-chosen upload salt (fresh and random for every upload: it salts
/// the key-encryption key). The network client picks it first because shard placement is
/// derived from it before the data id exists.
pub fn seal_with_salt<R: Read + Send>(
    mut input: R,
    owner: &Keypair,
    params: &SealParams,
    salt: [u8; 32],
    sink: &mut (dyn ShardSink + Send),
    progress: &(dyn Fn(u64) + Sync),
) -> PipelineResult<Manifest> {
    let erasure = params.check()?;
    let window = params.window();
    let mut keys = KeyRing {
        kek: kek_for_upload(&owner.derive_symmetric(OWNER_WRAP_CONTEXT), &salt),
        algo: params.algo,
        interval_blocks: u64::from(params.interval_blocks),
        wrapped: Vec::new(),
        current: None,
    };
    let shape = Manifest {
        owner: owner.public(),
        length: 0,
        block_size: params.block_size,
        k: params.k,
        m: params.m,
        algo: params.algo,
        interval_blocks: params.interval_blocks,
        stream: params.stream,
        salt,
        interval_keys: Vec::new(),
        blocks: Vec::new(),
        root: Hash::ZERO,
    };
    let km = (usize::from(params.k), usize::from(params.m));
    let block_size = params.block_size as usize;
    let mut collector = Collector {
        sink,
        progress,
        blocks: Vec::new(),
        length: 0,
        early: Default::default(),
        batch: Vec::new(),
    };
    // Buffers circulate between the reader, the sealers, the sink and back.
    let mut pool = BufPool::with_max(2 * window * (km.0 + km.1));

    if rayon::current_num_threads() <= 1 {
        let mut index = 0;
        while let Some(raw) = read_block(&mut input, km, block_size, index, &mut pool)? {
            let full = raw.len == block_size;
            let aead = keys.for_block(index)?;
            let sealed = seal_block(raw, &shape, &erasure, &aead)?;
            pool.give(collector.take(sealed)?.into_iter());
            index += 1;
            if !full {
                break;
            }
        }
    } else {
        use std::sync::mpsc::{sync_channel, TrySendError};
        let (raw_tx, raw_rx) = sync_channel::<(RawBlock, Arc<Aead>)>(window);
        let (done_tx, done_rx) = sync_channel::<PipelineResult<SealedBlock>>(window);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(pool.max);
        let (input, pool, keys, collector) = (&mut input, &mut pool, &mut keys, &mut collector);
        std::thread::scope(|scope| -> PipelineResult<()> {
            let reader = scope.spawn(move || -> PipelineResult<()> {
                let mut index = 0;
                while let Some(raw) = read_block(input, km, block_size, index, pool)? {
                    let full = raw.len == block_size;
                    let aead = keys.for_block(index)?;
                    if raw_tx.send((raw, aead)).is_err() {
                        break; // a later stage failed; its error is reported there
                    }
                    while let Ok(b) = free_rx.try_recv() {
                        pool.give(std::iter::once(b));
                    }
                    index += 1;
                    if !full {
                        break;
                    }
                }
                drop(raw_tx);
                Ok(())
            });
            let collect = scope.spawn(move || -> PipelineResult<()> {
                for sealed in done_rx {
                    for buf in collector.take(sealed?)? {
                        if let Err(TrySendError::Disconnected(_)) = free_tx.try_send(buf) {
                            break;
                        }
                    }
                }
                Ok(())
            });
            // Seal on the caller's rayon pool as blocks arrive. Stops at the first failure
            // (or when the collector is gone), which closes the queues behind it.
            let _ =
                raw_rx
                    .into_iter()
                    .par_bridge()
                    .try_for_each_with(done_tx, |tx, (raw, aead)| {
                        let r = seal_block(raw, &shape, &erasure, &aead);
                        let failed = r.is_err();
                        match tx.send(r) {
                            Ok(()) if !failed => Ok(()),
                            _ => Err(()),
                        }
                    });
            let collected = join_stage(collect.join());
            let read = join_stage(reader.join());
            // The collector's error is the first cause when both failed (the reader then
            // only saw its queue close).
            collected.and(read)
        })?;
    }
    collector.sink.flush()?;
    let roots: Vec<Hash> = collector.blocks.iter().map(BlockEntry::root).collect();
    Ok(Manifest {
        length: collector.length,
        interval_keys: keys.wrapped,
        root: MerkleTree::from_leaves(&roots).root(),
        blocks: collector.blocks,
        ..shape
    })
}

/// The result of a pipeline thread; a panic in one is reported as an error, not re-raised.
fn join_stage(r: std::thread::Result<PipelineResult<()>>) -> PipelineResult<()> {
    r.unwrap_or_else(|_| {
        Err(PipelineError::BadParams(
            "a seal pipeline thread panicked (a bug; please report it)".into(),
        ))
    })
}

/// What opening found on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Plaintext bytes written.
    pub bytes: u64,
    /// Blocks that needed Reed–Solomon reconstruction.
    pub blocks_reconstructed: u64,
    /// Shards that could not be fetched.
    pub shards_missing: u64,
    /// Shards fetched but rejected by a hash, header or checksum check.
    pub shards_corrupt: u64,
}

/// Unwraps the interval keys of `m` with the owner's key.
fn interval_aeads(m: &Manifest, owner: &Keypair) -> PipelineResult<Vec<Aead>> {
    if owner.public() != m.owner {
        return Err(PipelineError::NotOwner {
            owner: m.owner.to_hex(),
            key: owner.public().to_hex(),
        });
    }
    let kek = kek_for_upload(&owner.derive_symmetric(OWNER_WRAP_CONTEXT), &m.salt);
    m.interval_keys
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let key = IntervalKey::unwrap_from(w, &kek, i as u64)?;
            Ok(Aead::new(m.algo, &key)?)
        })
        .collect()
}

/// Opens block `b`: its k data shards, decrypted in place (plaintext at
/// `[SHARD_HEADER_LEN..SHARD_HEADER_LEN + part_len]` of each), and what it took.
fn open_block(
    m: &Manifest,
    b: usize,
    erasure: &Erasure,
    aead: &Aead,
    source: &dyn ShardSource,
) -> PipelineResult<(Vec<Vec<u8>>, usize, OpenReport)> {
    let (k, n) = (usize::from(m.k), usize::from(m.k) + usize::from(m.m));
    let entry = &m.blocks[b];
    let len = m.block_len(b);
    let part_len = len.div_ceil(k).max(1);
    let shard_len = SHARD_HEADER_LEN + part_len + TAG_LEN;
    let mut report = OpenReport::default();
    let mut slots: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut good = 0;
    // Data shards first: if all k are good nothing needs decoding.
    for (i, id) in entry.shards.iter().enumerate() {
        if good == k {
            break;
        }
        let fetched = match source.fetch(id) {
            Ok(f) => f,
            Err(PipelineError::Store(StoreError::Corrupt { .. })) => {
                report.shards_corrupt += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(s) = fetched else {
            report.shards_missing += 1;
            continue;
        };
        let expect = header(m, b as u64, len, part_len, i).to_array();
        if s.len() != shard_len
            || s[..SHARD_HEADER_LEN] != expect
            || (!source.checks_ids() && ChunkId::of(&s) != *id)
        {
            report.shards_corrupt += 1;
            continue;
        }
        slots[i] = Some(s);
        good += 1;
    }
    if good < k {
        return Err(PipelineError::Unrecoverable {
            block: b as u64,
            have: good,
            need: k,
            corrupt: report.shards_corrupt as usize,
        });
    }
    let missing_data: Vec<usize> = (0..k).filter(|&i| slots[i].is_none()).collect();
    if !missing_data.is_empty() {
        report.blocks_reconstructed = 1;
        let mut bufs: Vec<(Vec<u8>, bool)> = slots
            .into_iter()
            .map(|s| match s {
                Some(s) => (s, true),
                None => (vec![0u8; shard_len], false),
            })
            .collect();
        reconstruct_checked(m, b, erasure, &mut bufs, &missing_data, true)?;
        slots = bufs.into_iter().map(|(s, _)| Some(s)).collect();
    }
    let mut parts: Vec<Vec<u8>> = slots.into_iter().take(k).flatten().collect();
    for (i, s) in parts.iter_mut().enumerate() {
        let nonce = block_nonce(m.stream, b as u64, i as u8)?;
        let (hdr, body) = s.split_at_mut(SHARD_HEADER_LEN);
        aead.open_in_place(nonce, hdr, body)?;
    }
    Ok((parts, part_len, report))
}

/// Rebuilds shards `wanted` of block `b` of `m` from `have` (shard index → framed bytes;
/// at least k of them, each checked against its id here). Returns the rebuilt shards, each
/// checked against the id the manifest lists. Used by repair: nothing is decrypted.
pub fn rebuild_shards(
    m: &Manifest,
    b: usize,
    have: &[(u8, Vec<u8>)],
    wanted: &[u8],
) -> PipelineResult<Vec<(u8, Vec<u8>)>> {
    let (k, n) = (usize::from(m.k), usize::from(m.k) + usize::from(m.m));
    let entry = m
        .blocks
        .get(b)
        .ok_or_else(|| PipelineError::ManifestInvalid {
            reason: format!("no block {b}"),
        })?;
    let len = m.block_len(b);
    let part_len = len.div_ceil(k).max(1);
    let shard_len = SHARD_HEADER_LEN + part_len + TAG_LEN;
    let mut bufs: Vec<(Vec<u8>, bool)> = (0..n).map(|_| (Vec::new(), false)).collect();
    let mut good = 0;
    for (i, s) in have {
        let i = usize::from(*i);
        if i < n && !bufs[i].1 && s.len() == shard_len && ChunkId::of(s) == entry.shards[i] {
            bufs[i] = (s.clone(), true);
            good += 1;
        }
    }
    if good < k {
        return Err(PipelineError::Unrecoverable {
            block: b as u64,
            have: good,
            need: k,
            corrupt: have.len().saturating_sub(good),
        });
    }
    for (s, present) in bufs.iter_mut() {
        if !*present {
            *s = vec![0u8; shard_len];
        }
    }
    let erasure = Erasure::new(k, n - k)?;
    let wanted_idx: Vec<usize> = wanted.iter().map(|w| usize::from(*w)).collect();
    if let Some(i) = wanted_idx.iter().find(|i| **i >= n) {
        return Err(PipelineError::BadParams(format!(
            "no shard {i} in a block of {n}"
        )));
    }
    reconstruct_checked(m, b, &erasure, &mut bufs, &wanted_idx, false)?;
    Ok(wanted
        .iter()
        .map(|w| (*w, bufs[usize::from(*w)].0.clone()))
        .collect())
}

/// Rebuilds the absent shards of block `b` in `bufs` (each `(framed bytes, present)`, all
/// of the block's shard length) by Reed–Solomon over the payloads, restores the headers of
/// the shards in `rebuilt` and checks each against the id the manifest lists.
fn reconstruct_checked(
    m: &Manifest,
    b: usize,
    erasure: &Erasure,
    bufs: &mut [(Vec<u8>, bool)],
    rebuilt: &[usize],
    data_only: bool,
) -> PipelineResult<()> {
    let len = m.block_len(b);
    let part_len = len.div_ceil(usize::from(m.k)).max(1);
    {
        let mut views: Vec<(&mut [u8], bool)> = bufs
            .iter_mut()
            .map(|(s, p)| (&mut s[SHARD_HEADER_LEN..], *p))
            .collect();
        erasure.reconstruct(&mut views, data_only)?;
    }
    for &i in rebuilt {
        let s = &mut bufs[i].0;
        s[..SHARD_HEADER_LEN].copy_from_slice(&header(m, b as u64, len, part_len, i).to_array());
        if Some(&ChunkId::of(s)) != m.blocks.get(b).and_then(|e| e.shards.get(i)) {
            return Err(CryptoError::BadShard {
                reason: format!("block {b}: rebuilt shard {i} does not match its id"),
            }
            .into());
        }
    }
    Ok(())
}

/// What [`PipelineError::RangeOutside`] says.
fn range_outside(start: u64, len: u64) -> String {
    match len {
        0 => "the data is empty (0 bytes): get it without a range".into(),
        1 => format!("range starts at byte {start}, past the end of the data (1 byte): START must be 0"),
        _ => format!(
            "range starts at byte {start}, past the end of the data ({len} bytes): START must be below {len}"
        ),
    }
}

/// Options for [`open`].
#[derive(Debug, Clone, Default)]
pub struct OpenParams {
    /// Blocks opened concurrently; 0 = two per rayon thread. Bounds memory.
    pub window: usize,
    /// Only the plaintext bytes `[a, b)` (`b` clamped to the data's length; `a` must be
    /// below it); `None` = all. Only the blocks the range touches are fetched.
    pub range: Option<(u64, u64)>,
}

/// Opens the data `m` describes with the owner's key, from any k shards per block, writing
/// the plaintext to `out` in order. Nothing unverified is ever written: a block is written
/// only after every shard used was checked and its parts authenticated.
pub fn open<W: Write + Send>(
    m: &Manifest,
    owner: &Keypair,
    source: &dyn ShardSource,
    mut out: W,
    params: &OpenParams,
    progress: &(dyn Fn(u64) + Sync),
) -> PipelineResult<OpenReport> {
    m.check()?;
    if let Some((start, _)) = params.range.filter(|(a, _)| *a >= m.length) {
        return Err(PipelineError::RangeOutside {
            start,
            len: m.length,
        });
    }
    let erasure = Erasure::new(usize::from(m.k), usize::from(m.m))?;
    let aeads = interval_aeads(m, owner)?;
    let window = match params.window {
        0 => 2 * rayon::current_num_threads().max(1),
        w => w,
    };
    let mut report = OpenReport::default();
    let bs = u64::from(m.block_size);
    let (a, b) = match params.range {
        Some((a, b)) => (a.min(m.length), b.min(m.length).max(a.min(m.length))),
        None => (0, m.length),
    };
    let (first, last) = if params.range.is_none() {
        (0, m.blocks.len())
    } else if a == b {
        (0, 0)
    } else {
        ((a / bs) as usize, ((b - 1) / bs) as usize + 1)
    };
    let open_window = |start: usize| {
        let end = (start + window).min(last);
        (start..end)
            .into_par_iter()
            .map(|b| {
                let interval = b / m.interval_blocks as usize;
                open_block(m, b, &erasure, &aeads[interval], source)
            })
            .collect::<PipelineResult<Vec<_>>>()
    };
    let mut start = first;
    let mut ready = if first < last {
        open_window(first)?
    } else {
        Vec::new()
    };
    while !ready.is_empty() {
        let next_start = start + ready.len();
        let write_window = |ready: Vec<(Vec<Vec<u8>>, usize, OpenReport)>, out: &mut W| {
            let mut acc = OpenReport::default();
            for (j, (parts, part_len, r)) in ready.into_iter().enumerate() {
                let block = start + j;
                // The block's bytes are [off, off + len) of the plaintext; write the part
                // inside [a, b).
                let mut off = block as u64 * bs;
                let mut left = m.block_len(block);
                for p in &parts {
                    let take = part_len.min(left);
                    let lo = a.max(off).min(off + take as u64);
                    let hi = b.min(off + take as u64).max(lo);
                    if hi > lo {
                        let s = SHARD_HEADER_LEN + (lo - off) as usize;
                        out.write_all(&p[s..s + (hi - lo) as usize])
                            .map_err(PipelineError::Write)?;
                        acc.bytes += hi - lo;
                    }
                    off += take as u64;
                    left -= take;
                }
                acc.blocks_reconstructed += r.blocks_reconstructed;
                acc.shards_missing += r.shards_missing;
                acc.shards_corrupt += r.shards_corrupt;
            }
            Ok::<_, PipelineError>(acc)
        };
        let (written, following) = rayon::join(
            || write_window(ready, &mut out),
            || {
                if next_start < last {
                    open_window(next_start)
                } else {
                    Ok(Vec::new())
                }
            },
        );
        let w = written?;
        report.bytes += w.bytes;
        report.blocks_reconstructed += w.blocks_reconstructed;
        report.shards_missing += w.shards_missing;
        report.shards_corrupt += w.shards_corrupt;
        progress(report.bytes);
        ready = following?;
        start = next_start;
    }
    out.flush().map_err(PipelineError::Write)?;
    Ok(report)
}
