//! The block and state store: finalized blocks, their certificates and state diffs in an
//! embedded [redb](https://docs.rs/redb) database, one durable transaction per block.
//!
//! **Layout** (one file `chain.redb` in the store directory). Every value is framed as
//! `check[8] ‖ payload`, where `check` is the first 8 bytes of BLAKE3 over the payload, so a
//! damaged value is reported as [`ChainError::StoreCorrupt`] before it is decoded:
//!
//! | table       | key                | payload                                         |
//! |-------------|--------------------|-------------------------------------------------|
//! | `meta`      | `"identity"`       | format `u32` ‖ chain id `u32` ‖ genesis root    |
//! | `meta`      | `"head"`           | number `u64` ‖ block hash ‖ state root after it |
//! | `blocks`    | number `u64`       | [`Block`] (canonical encoding)                  |
//! | `certs`     | number `u64`       | [`Certificate`]                                 |
//! | `diffs`     | number `u64`       | [`StateDiff`] of that block (0 = genesis)       |
//! | `hashes`    | block hash `[32]`  | number `u64`                                    |
//! | `snapshots` | number `u64`       | [`State::snapshot`] after that block (latest)   |
//!
//! [`ChainStore::commit`] writes the block, certificate, diff, hash index, head and (every
//! [`StoreConfig::snapshot_every`] blocks) a snapshot in ONE write transaction committed with
//! [`redb::Durability::Immediate`]: when it returns, the block survives a crash. On
//! [`ChainStore::open`] the latest snapshot is loaded (or the genesis state rebuilt), the
//! later diffs are replayed with [`State::apply_diff`], and the resulting root must equal
//! the head's.

use std::path::{Path, PathBuf};

use crypto_accel::{Decode, Encode, Hash};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, TableDefinition, WriteTransaction,
};

use crate::config::ChainConfig;
use crate::error::{ChainError, ChainResult};
use crate::state::{BlockReceipt, State, StateDiff};
use crate::tx::Block;
use crate::types::{Address, Amount, Certificate, Header};

/// Version of the on-disk layout; a store written by another version is refused.
pub const STORE_FORMAT: u32 = 1;

/// File name of the database inside the store directory.
pub const STORE_FILE: &str = "chain.redb";

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const BLOCKS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("blocks");
const CERTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("certs");
const DIFFS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("diffs");
const HASHES: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("hashes");
const SNAPSHOTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("snapshots");

const KEY_IDENTITY: &str = "identity";
const KEY_HEAD: &str = "head";
const CHECK_LEN: usize = 8;

/// Tuning of a [`ChainStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// Write a full state snapshot with every block whose number is a multiple of this
    /// (0 = never; restart then replays every diff from genesis).
    pub snapshot_every: u64,
    /// Most blocks one [`ChainStore::blocks_range`] call returns.
    pub max_range_blocks: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            snapshot_every: 1_000,
            max_range_blocks: 256,
        }
    }
}

/// The last committed block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Its height (0 = genesis only).
    pub number: u64,
    /// Its header hash (the genesis hash at height 0).
    pub hash: Hash,
    /// The state root after it.
    pub state_root: Hash,
}

impl Head {
    fn to_bytes(self) -> Vec<u8> {
        let mut b = Vec::with_capacity(72);
        self.number.encode(&mut b);
        self.hash.encode(&mut b);
        self.state_root.encode(&mut b);
        b
    }

    fn from_bytes(b: &[u8]) -> ChainResult<Head> {
        let mut r = crypto_accel::Reader::new(b);
        let h = Head {
            number: r.u64()?,
            hash: Hash::decode(&mut r)?,
            state_root: Hash::decode(&mut r)?,
        };
        r.finish()?;
        Ok(h)
    }
}

/// Finalized blocks, certificates and state diffs on disk (see the module docs).
#[derive(Debug)]
pub struct ChainStore {
    db: Database,
    dir: PathBuf,
    cfg: StoreConfig,
    chain_id: u32,
    head: Head,
}

fn io<E: std::fmt::Display>(op: &'static str) -> impl FnOnce(E) -> ChainError {
    move |e| ChainError::StoreIo {
        op,
        reason: e.to_string(),
    }
}

fn corrupt(what: &'static str, reason: impl Into<String>) -> ChainError {
    ChainError::StoreCorrupt {
        what,
        reason: reason.into(),
    }
}

fn check_of(payload: &[u8]) -> [u8; CHECK_LEN] {
    let h = Hash::of(payload);
    let mut c = [0u8; CHECK_LEN];
    c.copy_from_slice(&h.as_bytes()[..CHECK_LEN]);
    c
}

/// Frames `payload` as `check ‖ payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CHECK_LEN + payload.len());
    v.extend_from_slice(&check_of(payload));
    v.extend_from_slice(payload);
    v
}

fn frame_encoded<T: Encode>(x: &T) -> Vec<u8> {
    let mut v = vec![0u8; CHECK_LEN];
    x.encode(&mut v);
    let c = check_of(&v[CHECK_LEN..]);
    v[..CHECK_LEN].copy_from_slice(&c);
    v
}

/// Checks a framed value and returns its payload.
fn unframe<'a>(what: &'static str, v: &'a [u8]) -> ChainResult<&'a [u8]> {
    if v.len() < CHECK_LEN {
        return Err(corrupt(
            what,
            format!("value of {} bytes is too short", v.len()),
        ));
    }
    let (c, payload) = v.split_at(CHECK_LEN);
    if c != check_of(payload) {
        return Err(corrupt(what, "checksum mismatch"));
    }
    Ok(payload)
}

fn decode_framed<T: Decode>(what: &'static str, v: &[u8]) -> ChainResult<T> {
    T::from_bytes(unframe(what, v)?).map_err(|e| corrupt(what, e.to_string()))
}

fn read_head(rtx: &ReadTransaction) -> ChainResult<Option<Head>> {
    let t = match rtx.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(io("open meta table")(e)),
    };
    let Some(v) = t.get(KEY_HEAD).map_err(io("read head"))? else {
        return Ok(None);
    };
    let p = unframe("head", v.value())?;
    Head::from_bytes(p)
        .map(Some)
        .map_err(|e| corrupt("head", e.to_string()))
}

impl ChainStore {
    /// Opens (or creates) the store in directory `path` for the chain `cfg` with the given
    /// genesis balances, with the default [`StoreConfig`]. Returns the store and the state
    /// after its last committed block.
    pub fn open(
        path: impl AsRef<Path>,
        cfg: &ChainConfig,
        genesis: &[(Address, Amount)],
    ) -> ChainResult<(ChainStore, State)> {
        Self::open_with(path, cfg, genesis, StoreConfig::default())
    }

    /// [`ChainStore::open`] with explicit tuning.
    pub fn open_with(
        path: impl AsRef<Path>,
        cfg: &ChainConfig,
        genesis: &[(Address, Amount)],
        store_cfg: StoreConfig,
    ) -> ChainResult<(ChainStore, State)> {
        Self::open_inner(path, cfg, genesis, store_cfg, None)
    }

    /// [`ChainStore::open_with`] for a chain whose block 1 points to `genesis_header`
    /// (see [`crate::genesis_header`]) rather than to the genesis state's hash, as the
    /// networked node's chains do.
    pub fn open_with_genesis(
        path: impl AsRef<Path>,
        cfg: &ChainConfig,
        genesis: &[(Address, Amount)],
        store_cfg: StoreConfig,
        genesis_header: &Header,
    ) -> ChainResult<(ChainStore, State)> {
        Self::open_inner(path, cfg, genesis, store_cfg, Some(genesis_header.hash()))
    }

    fn open_inner(
        path: impl AsRef<Path>,
        cfg: &ChainConfig,
        genesis: &[(Address, Amount)],
        store_cfg: StoreConfig,
        genesis_hash: Option<Hash>,
    ) -> ChainResult<(ChainStore, State)> {
        let dir = path.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io("create store directory"))?;
        let db = Database::create(dir.join(STORE_FILE)).map_err(io("open database"))?;
        let (genesis_state, genesis_diff) = State::genesis_with_diff(cfg, genesis);
        let identity = {
            let mut b = Vec::with_capacity(40);
            STORE_FORMAT.encode(&mut b);
            cfg.chain_id.encode(&mut b);
            genesis_diff.root.encode(&mut b);
            b
        };
        let rtx = db.begin_read().map_err(io("begin read"))?;
        let head = read_head(&rtx)?;
        let mut store = ChainStore {
            db,
            dir,
            cfg: store_cfg,
            chain_id: cfg.chain_id,
            head: Head {
                number: 0,
                hash: genesis_hash.unwrap_or_else(|| genesis_state.last_hash()),
                state_root: genesis_state.root(),
            },
        };
        let Some(head) = head else {
            drop(rtx);
            store.init(&identity, &genesis_diff)?;
            return Ok((store, genesis_state));
        };
        store.check_identity(&rtx, &identity)?;
        // What the head's hash is while no block is stored: the genesis header's, for a
        // chain whose block 1 points to it (a node stopped before its first block).
        let genesis_head = store.head.hash;
        let state = store.load_state(&rtx, head, genesis_state, genesis_head)?;
        store.head = head;
        Ok((store, state))
    }

    /// Writes the identity, the genesis diff and the genesis head to a new store.
    fn init(&mut self, identity: &[u8], genesis_diff: &StateDiff) -> ChainResult<()> {
        let wtx = self.begin_write()?;
        {
            let mut meta = wtx.open_table(META).map_err(io("open meta table"))?;
            meta.insert(KEY_IDENTITY, frame(identity).as_slice())
                .map_err(io("write identity"))?;
            meta.insert(KEY_HEAD, frame(&self.head.to_bytes()).as_slice())
                .map_err(io("write head"))?;
            let mut diffs = wtx.open_table(DIFFS).map_err(io("open diffs table"))?;
            diffs
                .insert(0, frame_encoded(genesis_diff).as_slice())
                .map_err(io("write genesis diff"))?;
            let mut hashes = wtx.open_table(HASHES).map_err(io("open hashes table"))?;
            hashes
                .insert(
                    self.head.hash.as_bytes().as_slice(),
                    frame(&0u64.to_le_bytes()).as_slice(),
                )
                .map_err(io("write hash index"))?;
            // Create the remaining tables so readers never meet a missing one.
            wtx.open_table(BLOCKS).map_err(io("open blocks table"))?;
            wtx.open_table(CERTS).map_err(io("open certs table"))?;
            wtx.open_table(SNAPSHOTS)
                .map_err(io("open snapshots table"))?;
        }
        wtx.commit().map_err(io("commit"))
    }

    fn check_identity(&self, rtx: &ReadTransaction, identity: &[u8]) -> ChainResult<()> {
        let t = rtx.open_table(META).map_err(io("open meta table"))?;
        let Some(v) = t.get(KEY_IDENTITY).map_err(io("read identity"))? else {
            return Err(corrupt("identity", "missing"));
        };
        let stored = unframe("identity", v.value())?;
        if stored.len() != identity.len() {
            return Err(corrupt("identity", "wrong length"));
        }
        if stored[..4] != identity[..4] {
            return Err(ChainError::StoreMismatch {
                what: "format version",
            });
        }
        if stored[4..8] != identity[4..8] {
            let mut got = [0u8; 4];
            got.copy_from_slice(&stored[4..8]);
            return Err(ChainError::WrongChain {
                expected: self.chain_id,
                got: u32::from_le_bytes(got),
            });
        }
        if stored[8..] != identity[8..] {
            return Err(ChainError::StoreMismatch {
                what: "genesis (another genesis allocation or configuration)",
            });
        }
        Ok(())
    }

    /// The state at `head`: the latest snapshot at or below it (or genesis) plus the later
    /// diffs; its root and last hash must be the head's (`genesis_head` at height 0).
    fn load_state(
        &self,
        rtx: &ReadTransaction,
        head: Head,
        genesis: State,
        genesis_head: Hash,
    ) -> ChainResult<State> {
        let snaps = rtx
            .open_table(SNAPSHOTS)
            .map_err(io("open snapshots table"))?;
        let mut state = genesis;
        let latest = snaps
            .range(..=head.number)
            .map_err(io("read snapshots"))?
            .next_back();
        if let Some(entry) = latest {
            let (k, v) = entry.map_err(io("read snapshot"))?;
            let snap: StateDiff = decode_framed("snapshot", v.value())?;
            if snap.number != k.value() {
                return Err(corrupt("snapshot", "number does not match its key"));
            }
            state = State::from_snapshot(&snap).map_err(|e| corrupt("snapshot", e.to_string()))?;
            if state.height() != snap.number {
                return Err(corrupt("snapshot", "height does not match its key"));
            }
        }
        let diffs = rtx.open_table(DIFFS).map_err(io("open diffs table"))?;
        let from = state.height().saturating_add(1);
        if from <= head.number {
            for entry in diffs.range(from..=head.number).map_err(io("read diffs"))? {
                let (k, v) = entry.map_err(io("read diff"))?;
                let n = k.value();
                if n != state.height().saturating_add(1) {
                    return Err(corrupt("diff", format!("diff {n} missing or out of order")));
                }
                let diff: StateDiff = decode_framed("diff", v.value())?;
                if diff.number != n {
                    return Err(corrupt(
                        "diff",
                        format!("diff under key {n} is for {}", diff.number),
                    ));
                }
                state
                    .apply_diff(&diff)
                    .map_err(|e| corrupt("diff", format!("block {n}: {e}")))?;
            }
        }
        if state.height() != head.number {
            return Err(corrupt(
                "diff",
                format!("diffs end at {}, head is {}", state.height(), head.number),
            ));
        }
        if state.root() != head.state_root {
            return Err(corrupt(
                "head",
                format!(
                    "replayed root {} differs from the head's {}",
                    state.root(),
                    head.state_root
                ),
            ));
        }
        if state.height() == 0 && genesis_head != head.hash {
            return Err(ChainError::StoreMismatch {
                what: "genesis header (another genesis time or configuration)",
            });
        }
        if state.height() > 0 && state.last_hash() != head.hash {
            return Err(corrupt(
                "head",
                "replayed last block hash differs from the head's",
            ));
        }
        Ok(state)
    }

    fn begin_write(&self) -> ChainResult<WriteTransaction> {
        let mut wtx = self.db.begin_write().map_err(io("begin write"))?;
        wtx.set_durability(Durability::Immediate)
            .map_err(io("set durability"))?;
        Ok(wtx)
    }

    /// Durably stores a finalized block: the block, its certificate, its state diff (from
    /// `receipt`), the hash index, the new head and, when due, a snapshot of `state` (the
    /// state after the block), all in one transaction fsynced before this returns. The block
    /// must follow the head and `receipt`/`cert`/`state` must belong to it.
    pub fn commit(
        &mut self,
        block: &Block,
        cert: &Certificate,
        receipt: &BlockReceipt,
        state: &State,
    ) -> ChainResult<()> {
        let h = &block.header;
        let number = self.head.number.saturating_add(1);
        if h.number != number {
            return Err(ChainError::BadBlockNumber {
                expected: number,
                got: h.number,
            });
        }
        if h.chain_id != self.chain_id {
            return Err(ChainError::WrongChain {
                expected: self.chain_id,
                got: h.chain_id,
            });
        }
        if h.parent != self.head.hash {
            return Err(ChainError::StoreMismatch {
                what: "block parent is not the head",
            });
        }
        let hash = block.hash();
        let diff = &receipt.diff;
        if receipt.number != number || receipt.block_hash != hash || diff.number != number {
            return Err(ChainError::StoreMismatch {
                what: "receipt is not for this block",
            });
        }
        if cert.number != number || cert.block != hash {
            return Err(ChainError::StoreMismatch {
                what: "certificate is not for this block",
            });
        }
        if diff.prev_root != self.head.state_root || h.state_root != self.head.state_root {
            return Err(ChainError::DiffMismatch {
                expected: self.head.state_root,
                got: diff.prev_root,
            });
        }
        if state.root() != diff.root || state.height() != number {
            return Err(ChainError::StoreMismatch {
                what: "state is not the state after this block",
            });
        }
        let head = Head {
            number,
            hash,
            state_root: diff.root,
        };
        let snapshot =
            self.cfg.snapshot_every != 0 && number.is_multiple_of(self.cfg.snapshot_every);
        let wtx = self.begin_write()?;
        {
            let mut blocks = wtx.open_table(BLOCKS).map_err(io("open blocks table"))?;
            blocks
                .insert(number, frame_encoded(block).as_slice())
                .map_err(io("write block"))?;
            let mut certs = wtx.open_table(CERTS).map_err(io("open certs table"))?;
            certs
                .insert(number, frame_encoded(cert).as_slice())
                .map_err(io("write certificate"))?;
            let mut diffs = wtx.open_table(DIFFS).map_err(io("open diffs table"))?;
            diffs
                .insert(number, frame_encoded(diff).as_slice())
                .map_err(io("write diff"))?;
            let mut hashes = wtx.open_table(HASHES).map_err(io("open hashes table"))?;
            hashes
                .insert(
                    hash.as_bytes().as_slice(),
                    frame(&number.to_le_bytes()).as_slice(),
                )
                .map_err(io("write hash index"))?;
            if snapshot {
                let mut snaps = wtx
                    .open_table(SNAPSHOTS)
                    .map_err(io("open snapshots table"))?;
                // Only the newest snapshot is kept: the diffs allow replay from any point.
                snaps
                    .retain(|_, _| false)
                    .map_err(io("drop old snapshots"))?;
                snaps
                    .insert(number, frame_encoded(&state.snapshot()).as_slice())
                    .map_err(io("write snapshot"))?;
            }
            let mut meta = wtx.open_table(META).map_err(io("open meta table"))?;
            meta.insert(KEY_HEAD, frame(&head.to_bytes()).as_slice())
                .map_err(io("write head"))?;
        }
        wtx.commit().map_err(io("commit"))?;
        self.head = head;
        Ok(())
    }

    /// The last committed block.
    pub fn head(&self) -> Head {
        self.head
    }

    /// The directory holding the database.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The tuning this store runs with.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    fn get_framed<T: Decode>(
        &self,
        def: TableDefinition<'_, u64, &[u8]>,
        what: &'static str,
        number: u64,
    ) -> ChainResult<Option<T>> {
        let rtx = self.db.begin_read().map_err(io("begin read"))?;
        let t = rtx.open_table(def).map_err(io("open table"))?;
        let Some(v) = t.get(number).map_err(io("read"))? else {
            return Ok(None);
        };
        decode_framed(what, v.value()).map(Some)
    }

    /// Block `number` (1..=head), if stored.
    pub fn block(&self, number: u64) -> ChainResult<Option<Block>> {
        let b: Option<Block> = self.get_framed(BLOCKS, "block", number)?;
        match b {
            Some(b) if b.header.number != number => Err(corrupt(
                "block",
                format!("block under key {number} has number {}", b.header.number),
            )),
            b => Ok(b),
        }
    }

    /// The block with header hash `hash`, if stored.
    pub fn block_by_hash(&self, hash: &Hash) -> ChainResult<Option<Block>> {
        let number = {
            let rtx = self.db.begin_read().map_err(io("begin read"))?;
            let t = rtx.open_table(HASHES).map_err(io("open hashes table"))?;
            let Some(v) = t.get(hash.as_bytes().as_slice()).map_err(io("read"))? else {
                return Ok(None);
            };
            // Stores made before the genesis entry was framed hold it as 8 bare zero bytes.
            if v.value() == [0u8; 8] {
                return Ok(None);
            }
            let p = unframe("hash index", v.value())?;
            let a: [u8; 8] = p
                .try_into()
                .map_err(|_| corrupt("hash index", "value is not a block number"))?;
            u64::from_le_bytes(a)
        };
        if number == 0 {
            // The genesis hash names no stored block.
            return Ok(None);
        }
        match self.block(number)? {
            Some(b) if b.hash() == *hash => Ok(Some(b)),
            Some(_) => Err(corrupt("hash index", "points at a block of another hash")),
            None => Err(corrupt("hash index", "points at a missing block")),
        }
    }

    /// The certificate that finalized block `number`, if stored.
    pub fn certificate(&self, number: u64) -> ChainResult<Option<Certificate>> {
        let c: Option<Certificate> = self.get_framed(CERTS, "certificate", number)?;
        match c {
            Some(c) if c.number != number => Err(corrupt(
                "certificate",
                format!("certificate under key {number} is for {}", c.number),
            )),
            c => Ok(c),
        }
    }

    /// The state diff of block `number` (0 = genesis), if stored.
    pub fn diff(&self, number: u64) -> ChainResult<Option<StateDiff>> {
        let d: Option<StateDiff> = self.get_framed(DIFFS, "diff", number)?;
        match d {
            Some(d) if d.number != number => Err(corrupt(
                "diff",
                format!("diff under key {number} is for {}", d.number),
            )),
            d => Ok(d),
        }
    }

    /// Blocks `from..=to` with their certificates, for sync: at most
    /// [`StoreConfig::max_range_blocks`], fewer if the head comes first; empty if
    /// `from > to` or `from` is past the head. Block 0 (genesis) is not stored.
    pub fn blocks_range(&self, from: u64, to: u64) -> ChainResult<Vec<(Block, Certificate)>> {
        self.blocks_range_within(from, to, usize::MAX)
    }

    /// [`ChainStore::blocks_range`], stopping before the blocks and certificates read would
    /// exceed `max_bytes` as stored (which bounds their encoding in an answer): always at
    /// least one block, so a long range of large blocks is answered in parts rather than
    /// with a frame too big to send.
    pub fn blocks_range_within(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> ChainResult<Vec<(Block, Certificate)>> {
        let from = from.max(1);
        let to = to
            .min(self.head.number)
            .min(from.saturating_add(self.cfg.max_range_blocks.saturating_sub(1)));
        if from > to || self.cfg.max_range_blocks == 0 {
            return Ok(Vec::new());
        }
        let rtx = self.db.begin_read().map_err(io("begin read"))?;
        let blocks = rtx.open_table(BLOCKS).map_err(io("open blocks table"))?;
        let certs = rtx.open_table(CERTS).map_err(io("open certs table"))?;
        let mut out = Vec::with_capacity(usize::try_from(to - from + 1).unwrap_or(0));
        let mut bytes = 0usize;
        for number in from..=to {
            let b = blocks.get(number).map_err(io("read block"))?;
            let c = certs.get(number).map_err(io("read certificate"))?;
            let (Some(b), Some(c)) = (b, c) else {
                return Err(corrupt(
                    "block",
                    format!("block {number} below the head is missing"),
                ));
            };
            bytes = bytes.saturating_add(b.value().len() + c.value().len());
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            let b: Block = decode_framed("block", b.value())?;
            let c: Certificate = decode_framed("certificate", c.value())?;
            if b.header.number != number || c.number != number {
                return Err(corrupt(
                    "block",
                    format!("entry {number} holds another height"),
                ));
            }
            out.push((b, c));
        }
        Ok(out)
    }
}
