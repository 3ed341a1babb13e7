//! The manifest of one piece of sealed data: everything a holder of the owner's key needs to
//! find, verify and decrypt it, and the identity ([`DataId`]) the chain registers.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crypto_accel::{
    put_bytes, AeadAlgo, ChunkId, CodecError, CodecResult, DataId, Decode, Encode, Hash,
    MerkleTree, PublicKey, Reader, WRAPPED_KEY_LEN,
};

use crate::pipeline::{PipelineError, PipelineResult};

const MANIFEST_MAGIC: &[u8; 4] = b"CPMF";
const MANIFEST_VERSION: u8 = 1;
/// Most blocks one manifest may list (1 MiB blocks: 16 TiB).
pub const MAX_BLOCKS: usize = 1 << 24;
/// Largest block size accepted.
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;

/// The shard ids of one data block, in code order (k data, then m parity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockEntry {
    /// Content ids of the block's k + m shards.
    pub shards: Vec<ChunkId>,
}

impl BlockEntry {
    /// Merkle root over the block's shard ids.
    pub fn root(&self) -> Hash {
        let leaves: Vec<Hash> = self.shards.iter().map(|c| c.0).collect();
        MerkleTree::from_leaves(&leaves).root()
    }
}

/// Everything about one sealed data item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The owner, whose key wraps the interval keys.
    pub owner: PublicKey,
    /// Exact plaintext length in bytes.
    pub length: u64,
    /// Plaintext bytes per data block (the last block may be shorter).
    pub block_size: u32,
    /// Data shards per block.
    pub k: u8,
    /// Parity shards per block.
    pub m: u8,
    /// The AEAD that sealed the blocks.
    pub algo: AeadAlgo,
    /// Blocks per encryption interval: every interval has its own key.
    pub interval_blocks: u32,
    /// Stream number within the data item (0 for files).
    pub stream: u32,
    /// Random per-upload salt of the key-encryption key.
    pub salt: [u8; 32],
    /// Each interval's key, wrapped for the owner.
    pub interval_keys: Vec<[u8; WRAPPED_KEY_LEN]>,
    /// The blocks, in order.
    pub blocks: Vec<BlockEntry>,
    /// Merkle root over the block roots: what the chain records.
    pub root: Hash,
}

impl Manifest {
    /// The Merkle root the block list implies.
    pub fn computed_root(&self) -> Hash {
        let roots: Vec<Hash> = self.blocks.iter().map(BlockEntry::root).collect();
        MerkleTree::from_leaves(&roots).root()
    }

    /// The data id: a hash over the owner, shape and root (not over the wrapped keys, which
    /// are re-wrapped as access is granted).
    pub fn data_id(&self) -> DataId {
        let mut b = Vec::with_capacity(96);
        self.owner.encode(&mut b);
        self.length.encode(&mut b);
        self.block_size.encode(&mut b);
        self.k.encode(&mut b);
        self.m.encode(&mut b);
        self.algo.encode(&mut b);
        self.interval_blocks.encode(&mut b);
        self.stream.encode(&mut b);
        self.root.encode(&mut b);
        DataId(Hash::domain("cpchain data id v1", &b))
    }

    /// Number of encryption intervals the blocks span.
    pub fn interval_count(&self) -> usize {
        self.blocks
            .len()
            .div_ceil(self.interval_blocks.max(1) as usize)
    }

    /// The encryption intervals as the chain registers them: `0..interval_count()`.
    pub fn interval_range(&self) -> chain::IntervalRange {
        chain::IntervalRange {
            start: 0,
            end: self.interval_count() as u64,
        }
    }

    /// Plaintext length of block `b`.
    pub fn block_len(&self, b: usize) -> usize {
        let start = b as u64 * u64::from(self.block_size);
        (self.length.saturating_sub(start)).min(u64::from(self.block_size)) as usize
    }

    /// Checks internal consistency: block count and size match the length, every block has
    /// k + m shards, one wrapped key per interval, and the root matches the shard ids.
    pub fn check(&self) -> PipelineResult<()> {
        let bad = |reason: String| Err(PipelineError::ManifestInvalid { reason });
        if self.k == 0 || self.m == 0 || usize::from(self.k) + usize::from(self.m) > 256 {
            return bad(format!("coding parameters {}+{}", self.k, self.m));
        }
        if self.block_size == 0 || self.block_size > MAX_BLOCK_SIZE || self.interval_blocks == 0 {
            return bad("block size or interval length out of range".into());
        }
        let expect_blocks = self.length.div_ceil(u64::from(self.block_size)).max(1);
        if self.blocks.len() as u64 != expect_blocks {
            return bad(format!(
                "{} blocks listed, length {} needs {expect_blocks}",
                self.blocks.len(),
                self.length
            ));
        }
        let n = usize::from(self.k) + usize::from(self.m);
        if let Some(b) = self.blocks.iter().position(|b| b.shards.len() != n) {
            return bad(format!("block {b} does not list {n} shards"));
        }
        if self.interval_keys.len() != self.interval_count() {
            return bad(format!(
                "{} interval keys for {} intervals",
                self.interval_keys.len(),
                self.interval_count()
            ));
        }
        if self.computed_root() != self.root {
            return Err(PipelineError::RootMismatch);
        }
        Ok(())
    }
}

impl Encode for Manifest {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MANIFEST_MAGIC);
        out.push(MANIFEST_VERSION);
        self.owner.encode(out);
        self.length.encode(out);
        self.block_size.encode(out);
        self.k.encode(out);
        self.m.encode(out);
        self.algo.encode(out);
        self.interval_blocks.encode(out);
        self.stream.encode(out);
        self.salt.encode(out);
        (self.interval_keys.len() as u32).encode(out);
        for k in &self.interval_keys {
            k.encode(out);
        }
        (self.blocks.len() as u32).encode(out);
        for b in &self.blocks {
            let mut ids = Vec::with_capacity(b.shards.len() * 32);
            for id in &b.shards {
                id.encode(&mut ids);
            }
            put_bytes(out, &ids);
        }
        self.root.encode(out);
    }
}

impl Decode for Manifest {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        if &r.array::<4>()? != MANIFEST_MAGIC {
            return Err(CodecError::Invalid {
                what: "manifest",
                reason: "missing CPMF magic",
            });
        }
        r.version("manifest", MANIFEST_VERSION)?;
        let owner = PublicKey::decode(r)?;
        let length = r.u64()?;
        let block_size = r.u32()?;
        let k = r.u8()?;
        let m = r.u8()?;
        // Refused here, not only by `check`: the block list below is bounded by k + m.
        if k == 0 || m == 0 {
            return Err(CodecError::Invalid {
                what: "manifest",
                reason: "no data or no parity shards",
            });
        }
        let algo = AeadAlgo::decode(r)?;
        let interval_blocks = r.u32()?;
        let stream = r.u32()?;
        let salt = r.array()?;
        let interval_keys = r.vec("interval keys", MAX_BLOCKS, WRAPPED_KEY_LEN, |r| r.array())?;
        // Every block lists exactly k + m shard ids, so a block takes at least that many
        // bytes of input and the list is never allocated for more blocks than the input
        // holds (a count of empty blocks used to cost 24 bytes of memory per 4 of input).
        let list_len = 32 * (usize::from(k) + usize::from(m));
        let blocks = r.vec("blocks", MAX_BLOCKS, 4 + list_len, |r| {
            let ids = r.bytes("block shard list", 256 * 32)?;
            if ids.len() != list_len {
                return Err(CodecError::Invalid {
                    what: "block shard list",
                    reason: "not k + m shard ids",
                });
            }
            let mut ir = Reader::new(ids);
            let shards = (0..ids.len() / 32)
                .map(|_| ChunkId::decode(&mut ir))
                .collect::<CodecResult<Vec<_>>>()?;
            Ok(BlockEntry { shards })
        })?;
        let root = Hash::decode(r)?;
        Ok(Manifest {
            owner,
            length,
            block_size,
            k,
            m,
            algo,
            interval_blocks,
            stream,
            salt,
            interval_keys,
            blocks,
            root,
        })
    }
}

/// Manifests kept as files named by data id, written atomically (temp file, fsync, rename,
/// directory fsync) so a crash never leaves a half-written manifest.
#[derive(Debug, Clone)]
pub struct ManifestDir {
    dir: PathBuf,
}

/// Largest manifest file read back (a 64 TiB upload's manifest is under this).
const MAX_MANIFEST_FILE: u64 = 1 << 30;

impl ManifestDir {
    /// Opens (creating) the directory.
    pub fn open(dir: impl AsRef<Path>) -> PipelineResult<ManifestDir> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| PipelineError::io("create manifest dir", &dir, e))?;
        Ok(ManifestDir { dir })
    }

    fn path(&self, id: &DataId) -> PathBuf {
        self.dir.join(format!("{id}.manifest"))
    }

    /// The data ids of every manifest in the directory (names that are not a manifest are
    /// skipped), sorted.
    pub fn ids(&self) -> PipelineResult<Vec<DataId>> {
        let mut ids = Vec::new();
        let rd = fs::read_dir(&self.dir)
            .map_err(|e| PipelineError::io("list manifests", &self.dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| PipelineError::io("list manifests", &self.dir, e))?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.strip_suffix(".manifest"))
                .and_then(|s| DataId::from_hex(s).ok())
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Whether the manifest of `id` is stored here (its file name is its content hash).
    pub fn contains(&self, id: &DataId) -> bool {
        self.path(id).is_file()
    }

    /// Stores `m` durably under its data id.
    pub fn save(&self, m: &Manifest) -> PipelineResult<DataId> {
        let id = m.data_id();
        let path = self.path(&id);
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let bytes = m.to_bytes();
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| PipelineError::io("write manifest", &path, e))?;
        Ok(id)
    }

    /// Loads and fully checks the manifest of `id`: it must decode, be consistent, and hash
    /// to `id`.
    pub fn load(&self, id: &DataId) -> PipelineResult<Manifest> {
        let path = self.path(id);
        let len = match fs::metadata(&path) {
            Ok(md) => md.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PipelineError::UnknownData { id: *id })
            }
            Err(e) => return Err(PipelineError::io("read manifest", &path, e)),
        };
        if len > MAX_MANIFEST_FILE {
            return Err(PipelineError::ManifestInvalid {
                reason: format!("manifest file is {len} bytes"),
            });
        }
        let bytes = fs::read(&path).map_err(|e| PipelineError::io("read manifest", &path, e))?;
        let m = Manifest::from_bytes(&bytes).map_err(|e| PipelineError::ManifestInvalid {
            reason: e.to_string(),
        })?;
        m.check()?;
        if m.data_id() != *id {
            return Err(PipelineError::DataIdMismatch {
                expected: *id,
                got: m.data_id(),
            });
        }
        Ok(m)
    }

    /// Removes the manifest of `id`; false if there was none.
    pub fn remove(&self, id: &DataId) -> PipelineResult<bool> {
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(PipelineError::io("remove manifest", &path, e)),
        }
    }
}
