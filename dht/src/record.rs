//! The improved DHT record: for every data block, who holds which shard, and the slot for the
//! key material needed to read it.
//!
//! A data item's record is split into pages of [`BLOCKS_PER_PAGE`] blocks, each stored under
//! its own Kademlia key ([`DataRecord::key`]) and small enough for kad's record store
//! ([`MAX_RECORD_BYTES`]). A page names its holders once in a node table of at most 255
//! entries, and each block's row holds `k + m` one-byte indices into that table
//! ([`NO_HOLDER`] for a shard that is lost). Page 0 also lists the holders of the manifest.
//! Each encryption interval the page touches has an [`IntervalSlot`] for the PRE capsule of
//! the interval's data key. Pages travel signed ([`SignedPage`]) by their publisher: the
//! data's owner when it is put, its coordinator (an RNode) after a repair. Nodes and readers
//! keep, among the pages of allowed publishers, the one with the highest `version`, which is
//! the publisher's clock in Unix milliseconds (at most [`MAX_VERSION_AHEAD_MS`] ahead).
//!
//! With 255 nodes, 2048 rows of 14 shards take about 36 KiB, which leaves room for about 90
//! capsules of 256 bytes; wider codes need longer encryption intervals (the encoder refuses
//! pages over the limit rather than producing records kad would drop).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use crypto_accel::{
    put_bytes, CodecError, CodecResult, DataId, Decode, Encode, Hash, Keypair, MessageKind,
    PublicKey, Reader, SigDomain, Signature,
};

/// Blocks described by one page of a data record.
pub const BLOCKS_PER_PAGE: u64 = 2048;
/// Largest encoded record (kad's MemoryStore caps records at 64 KiB).
pub const MAX_RECORD_BYTES: usize = 60 * 1024;
/// Row entry of a shard that has no holder (lost, awaiting repair).
pub const NO_HOLDER: u8 = 0xff;
/// Most entries of a page's node table (indices are bytes and 0xff means no holder).
pub const MAX_NODES: usize = 255;
/// Most manifest holders listed on page 0.
pub const MAX_MANIFEST_HOLDERS: usize = 16;
/// Most shards per block, `k + m`.
pub const MAX_SHARDS: usize = 64;
/// Largest PRE capsule an interval slot holds.
pub const MAX_CAPSULE_LEN: usize = 1024;
/// Most blocks a data item may have, so that its page count fits a `u32`.
pub const MAX_TOTAL_BLOCKS: u64 = u32::MAX as u64 * BLOCKS_PER_PAGE;

const RECORD_MAGIC: &[u8; 4] = b"CPDR";
const RECORD_VERSION: u8 = 1;
/// Bytes of the fixed part: magic, version, data, record version, k, m, total_blocks,
/// interval_blocks, page and the four list lengths.
const FIXED_LEN: usize = 4 + 1 + 32 + 8 + 1 + 1 + 8 + 4 + 4 + 4 * 4;

/// A node's identity: its ed25519 public key (same bytes as the chain's Address and the
/// libp2p peer id's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Encode for NodeId {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
}

impl Decode for NodeId {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(NodeId(r.array()?))
    }
}

/// An IP subnet bucket: IPv4 /24 or IPv6 /48 (v4 and v6 never collide).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Subnet(pub u64);

impl Subnet {
    /// The subnet bucket of `ip`. An IPv4-mapped IPv6 address counts as its IPv4 address.
    pub fn of(ip: IpAddr) -> Subnet {
        let v4 = |a: Ipv4Addr| {
            let [a, b, c, _] = a.octets();
            Subnet((4 << 56) | u64::from_be_bytes([0, 0, 0, 0, 0, a, b, c]))
        };
        match ip {
            IpAddr::V4(a) => v4(a),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(mapped) => v4(mapped),
                None => {
                    let o = a.octets();
                    Subnet(
                        (6 << 56) | u64::from_be_bytes([0, 0, o[0], o[1], o[2], o[3], o[4], o[5]]),
                    )
                }
            },
        }
    }
}

/// Errors of building, changing and decoding data records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The erasure parameters are outside what a record describes.
    #[error("bad erasure parameters k={k} m={m}: need k >= 1, m >= 1, k + m <= 64")]
    BadCoding {
        /// Data shards per block.
        k: u8,
        /// Parity shards per block.
        m: u8,
    },
    /// An encryption interval must hold at least one block.
    #[error("interval_blocks must be at least 1")]
    ZeroInterval,
    /// The data item has more blocks than pages can address.
    #[error("{total} blocks exceed the limit of {max}", max = MAX_TOTAL_BLOCKS)]
    TooManyBlocks {
        /// The block count given.
        total: u64,
    },
    /// The page number lies beyond the data item's last block.
    #[error("page {page} does not exist: the data item has {pages} pages")]
    PageOutOfRange {
        /// The page number.
        page: u32,
        /// Pages of the data item.
        pages: u32,
    },
    /// The page has a different number of rows than blocks it covers.
    #[error("page {page} has {got} rows, its blocks need {expected}")]
    RowCount {
        /// The page number.
        page: u32,
        /// Rows present.
        got: usize,
        /// Blocks the page covers.
        expected: usize,
    },
    /// A block's row does not have `k + m` entries.
    #[error("block {block} has {got} shard entries, expected k + m = {expected}")]
    RowLength {
        /// The block.
        block: u64,
        /// Entries present.
        got: usize,
        /// `k + m`.
        expected: usize,
    },
    /// A row names an index past the node table.
    #[error("block {block} names holder index {index} beyond the {nodes}-entry node table")]
    HolderIndex {
        /// The block.
        block: u64,
        /// The index.
        index: u8,
        /// Entries of the node table.
        nodes: usize,
    },
    /// Two shards of one block would sit on one node.
    #[error("block {block} would hold two shards on node {node}")]
    DuplicateHolder {
        /// The block.
        block: u64,
        /// The node named twice.
        node: NodeId,
    },
    /// A shard index is not below `k + m`.
    #[error("shard index {index} out of range: blocks have {shards} shards")]
    ShardIndex {
        /// The index.
        index: u8,
        /// `k + m`.
        shards: usize,
    },
    /// A block is not on this page.
    #[error("block {block} is not on this page (blocks {first}..{end})")]
    BlockOutOfPage {
        /// The block.
        block: u64,
        /// First block of the page.
        first: u64,
        /// One past the page's last block.
        end: u64,
    },
    /// The node table would need more than 255 entries.
    #[error("the page's node table would exceed {max} nodes", max = MAX_NODES)]
    TableFull,
    /// The node table lists a node twice.
    #[error("node {node} appears twice in the node table")]
    DuplicateNode {
        /// The node.
        node: NodeId,
    },
    /// The manifest holder list is malformed.
    #[error("bad manifest holders: {reason}")]
    ManifestHolders {
        /// What is wrong.
        reason: &'static str,
    },
    /// The capsule slots do not match the intervals the page touches.
    #[error("bad capsule slots: {reason}")]
    Capsules {
        /// What is wrong.
        reason: &'static str,
    },
    /// The encoded record would exceed [`MAX_RECORD_BYTES`].
    #[error("record of {size} bytes exceeds the {max} byte limit", max = MAX_RECORD_BYTES)]
    TooLarge {
        /// Encoded size.
        size: usize,
    },
    /// The bytes are not a well-formed encoding.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl RecordError {
    /// A fixed description, for [`CodecError::Invalid`].
    fn reason(&self) -> &'static str {
        match self {
            RecordError::BadCoding { .. } => "bad erasure parameters",
            RecordError::ZeroInterval => "zero interval_blocks",
            RecordError::TooManyBlocks { .. } => "too many blocks",
            RecordError::PageOutOfRange { .. } => "page beyond total_blocks",
            RecordError::RowCount { .. } => "row count does not match the page",
            RecordError::RowLength { .. } => "row length is not k + m",
            RecordError::HolderIndex { .. } => "holder index beyond the node table",
            RecordError::DuplicateHolder { .. } => "two shards of a block on one node",
            RecordError::ShardIndex { .. } => "shard index out of range",
            RecordError::BlockOutOfPage { .. } => "block not on the page",
            RecordError::TableFull => "node table over 255 entries",
            RecordError::DuplicateNode { .. } => "node listed twice",
            RecordError::ManifestHolders { reason } | RecordError::Capsules { reason } => reason,
            RecordError::TooLarge { .. } => "record over MAX_RECORD_BYTES",
            RecordError::Codec(_) => "malformed encoding",
        }
    }
}

/// The PRE capsule slot of one encryption interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalSlot {
    /// The encryption interval: blocks `interval * interval_blocks ..` of the data item.
    pub interval: u64,
    /// The PRE capsule of the interval's data key (at most 1024 bytes), once issued.
    pub capsule: Option<Vec<u8>>,
}

/// One page of the record of a data item: blocks `[first_block, first_block + holders.len())`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataRecord {
    /// The data item.
    pub data: DataId,
    /// Bumped on every repair; readers keep the highest.
    pub version: u64,
    /// Data shards per block.
    pub k: u8,
    /// Parity shards per block.
    pub m: u8,
    /// Blocks of the whole data item.
    pub total_blocks: u64,
    /// Blocks per encryption interval.
    pub interval_blocks: u32,
    /// This page's number.
    pub page: u32,
    /// The holder table (at most 255 entries, no node twice).
    pub nodes: Vec<NodeId>,
    /// Indices into `nodes` of the manifest's holders (only on page 0, at most 16).
    pub manifest_holders: Vec<u8>,
    /// Per block of this page: `k + m` indices into `nodes`, [`NO_HOLDER`] for a lost shard.
    pub holders: Vec<Vec<u8>>,
    /// One slot per encryption interval this page touches, in order.
    pub capsules: Vec<IntervalSlot>,
}

impl DataRecord {
    /// The Kademlia key of page `page` of `data`'s record.
    pub fn key(data: &DataId, page: u32) -> [u8; 32] {
        let mut buf = [0u8; 36];
        buf[..32].copy_from_slice(data.as_bytes());
        buf[32..].copy_from_slice(&page.to_le_bytes());
        Hash::domain("cpchain dht record v1", &buf).0
    }

    /// Pages of a data item of `total_blocks` blocks: `ceil(total / BLOCKS_PER_PAGE)`, at
    /// least 1 (saturating at `u32::MAX` past [`MAX_TOTAL_BLOCKS`]).
    pub fn pages(total_blocks: u64) -> u32 {
        u32::try_from(total_blocks.div_ceil(BLOCKS_PER_PAGE).max(1)).unwrap_or(u32::MAX)
    }

    /// Blocks on page `page` of a data item of `total_blocks` blocks (0 past the end).
    pub fn blocks_on_page(total_blocks: u64, page: u32) -> u64 {
        let first = u64::from(page) * BLOCKS_PER_PAGE;
        total_blocks.saturating_sub(first).min(BLOCKS_PER_PAGE)
    }

    /// The first block this page describes.
    pub fn first_block(&self) -> u64 {
        u64::from(self.page) * BLOCKS_PER_PAGE
    }

    /// One past the last block this page describes.
    pub fn end_block(&self) -> u64 {
        self.first_block() + self.holders.len() as u64
    }

    /// Shards per block, `k + m`.
    pub fn shards(&self) -> usize {
        usize::from(self.k) + usize::from(self.m)
    }

    /// The encryption interval of `block`.
    pub fn interval_of(&self, block: u64) -> u64 {
        block / u64::from(self.interval_blocks.max(1))
    }

    fn row_index(&self, block: u64) -> Result<usize, RecordError> {
        let out = || RecordError::BlockOutOfPage {
            block,
            first: self.first_block(),
            end: self.end_block(),
        };
        let i = block.checked_sub(self.first_block()).ok_or_else(out)?;
        let i = usize::try_from(i).map_err(|_| out())?;
        if i >= self.holders.len() {
            return Err(out());
        }
        Ok(i)
    }

    /// The holder of shard `index` of `block`, if the block is on this page and the shard is
    /// not lost.
    pub fn holder(&self, block: u64, index: u8) -> Option<NodeId> {
        let row = self.holders.get(self.row_index(block).ok()?)?;
        match *row.get(usize::from(index))? {
            NO_HOLDER => None,
            i => self.nodes.get(usize::from(i)).copied(),
        }
    }

    /// Sets (or, with `None`, clears) the holder of shard `index` of `block`, adding `node`
    /// to the node table as needed. When the table is full, nodes no block names any more
    /// are dropped first. Refuses a node that already holds another shard of the block.
    pub fn set_holder(
        &mut self,
        block: u64,
        index: u8,
        node: Option<NodeId>,
    ) -> Result<(), RecordError> {
        let r = self.row_index(block)?;
        let shards = self.shards();
        let slot = usize::from(index);
        if slot >= shards {
            return Err(RecordError::ShardIndex { index, shards });
        }
        let Some(node) = node else {
            if let Some(e) = self.holders.get_mut(r).and_then(|row| row.get_mut(slot)) {
                *e = NO_HOLDER;
            }
            return Ok(());
        };
        let row = self.holders.get(r).map(Vec::as_slice).unwrap_or_default();
        let named_elsewhere = row.iter().enumerate().any(|(j, &i)| {
            j != slot && i != NO_HOLDER && self.nodes.get(usize::from(i)) == Some(&node)
        });
        if named_elsewhere {
            return Err(RecordError::DuplicateHolder { block, node });
        }
        let i = match self.nodes.iter().position(|n| *n == node) {
            Some(i) => i,
            None => {
                if self.nodes.len() >= MAX_NODES {
                    self.compact_nodes((r, slot))?;
                }
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        let i = u8::try_from(i).map_err(|_| RecordError::TableFull)?;
        if let Some(e) = self.holders.get_mut(r).and_then(|row| row.get_mut(slot)) {
            *e = i;
        }
        Ok(())
    }

    /// Drops the nodes no row entry (other than `skip`, about to be overwritten) and no
    /// manifest holder names, and renumbers the rest. Changes nothing if that frees no room.
    fn compact_nodes(&mut self, skip: (usize, usize)) -> Result<(), RecordError> {
        let mut used = [false; MAX_NODES];
        let entries = self.holders.iter().enumerate().flat_map(|(r, row)| {
            row.iter()
                .enumerate()
                .filter(move |&(s, _)| (r, s) != skip)
                .map(|(_, &i)| i)
        });
        for i in entries.chain(self.manifest_holders.iter().copied()) {
            if let Some(u) = used.get_mut(usize::from(i)) {
                *u = true;
            }
        }
        let mut remap = [NO_HOLDER; 256];
        let mut kept = Vec::with_capacity(self.nodes.len());
        for (i, node) in self.nodes.iter().enumerate() {
            if used.get(i).copied().unwrap_or(false) {
                remap[i] = u8::try_from(kept.len()).map_err(|_| RecordError::TableFull)?;
                kept.push(*node);
            }
        }
        if kept.len() >= MAX_NODES {
            return Err(RecordError::TableFull);
        }
        for (r, row) in self.holders.iter_mut().enumerate() {
            for (s, e) in row.iter_mut().enumerate() {
                *e = if (r, s) == skip {
                    NO_HOLDER
                } else {
                    remap[usize::from(*e)]
                };
            }
        }
        for e in &mut self.manifest_holders {
            *e = remap[usize::from(*e)];
        }
        self.nodes = kept;
        Ok(())
    }

    /// Fills the capsule slot of `interval` (which this page must touch).
    pub fn set_capsule(&mut self, interval: u64, capsule: Vec<u8>) -> Result<(), RecordError> {
        if capsule.len() > MAX_CAPSULE_LEN {
            return Err(RecordError::Capsules {
                reason: "capsule over 1024 bytes",
            });
        }
        let slot = self
            .capsules
            .iter_mut()
            .find(|s| s.interval == interval)
            .ok_or(RecordError::Capsules {
                reason: "the page does not touch that interval",
            })?;
        slot.capsule = Some(capsule);
        Ok(())
    }

    /// Builds the pages of a data item from a full shard map (`map[b][i]` = holder of shard
    /// `i` of block `b`), with empty capsule slots.
    pub fn pages_from_map(
        data: DataId,
        version: u64,
        k: u8,
        m: u8,
        interval_blocks: u32,
        map: &[Vec<NodeId>],
        manifest_holders: &[NodeId],
    ) -> Result<Vec<DataRecord>, RecordError> {
        let partial: Vec<Vec<Option<NodeId>>> = map
            .iter()
            .map(|r| r.iter().copied().map(Some).collect())
            .collect();
        Self::pages_from_partial_map(
            data,
            version,
            k,
            m,
            interval_blocks,
            &partial,
            manifest_holders,
        )
    }

    /// [`DataRecord::pages_from_map`] where `None` marks a lost shard (recorded as
    /// [`NO_HOLDER`], e.g. awaiting repair).
    pub fn pages_from_partial_map(
        data: DataId,
        version: u64,
        k: u8,
        m: u8,
        interval_blocks: u32,
        map: &[Vec<Option<NodeId>>],
        manifest_holders: &[NodeId],
    ) -> Result<Vec<DataRecord>, RecordError> {
        check_coding(k, m)?;
        if interval_blocks == 0 {
            return Err(RecordError::ZeroInterval);
        }
        let total_blocks = map.len() as u64;
        if total_blocks > MAX_TOTAL_BLOCKS {
            return Err(RecordError::TooManyBlocks {
                total: total_blocks,
            });
        }
        if manifest_holders.len() > MAX_MANIFEST_HOLDERS {
            return Err(RecordError::ManifestHolders {
                reason: "more than 16",
            });
        }
        // No blocks still makes one (empty) page, which carries the manifest holders.
        let mut chunks: Vec<&[Vec<Option<NodeId>>]> =
            map.chunks(BLOCKS_PER_PAGE as usize).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        let mut pages = Vec::with_capacity(chunks.len());
        for (page, rows) in (0u32..).zip(chunks) {
            let mut rec = DataRecord {
                data,
                version,
                k,
                m,
                total_blocks,
                interval_blocks,
                page,
                nodes: Vec::new(),
                manifest_holders: Vec::new(),
                holders: Vec::with_capacity(rows.len()),
                capsules: Vec::new(),
            };
            if page == 0 {
                for node in manifest_holders {
                    if rec.nodes.contains(node) {
                        return Err(RecordError::ManifestHolders {
                            reason: "a node listed twice",
                        });
                    }
                    let i = rec.table_index(*node)?;
                    rec.manifest_holders.push(i);
                }
            }
            for (b, row) in (rec.first_block()..).zip(rows) {
                if row.len() != rec.shards() {
                    return Err(RecordError::RowLength {
                        block: b,
                        got: row.len(),
                        expected: rec.shards(),
                    });
                }
                let mut out = Vec::with_capacity(row.len());
                for (j, node) in row.iter().enumerate() {
                    let Some(node) = node else {
                        out.push(NO_HOLDER);
                        continue;
                    };
                    if row.get(..j).unwrap_or_default().contains(&Some(*node)) {
                        return Err(RecordError::DuplicateHolder {
                            block: b,
                            node: *node,
                        });
                    }
                    out.push(rec.table_index(*node)?);
                }
                rec.holders.push(out);
            }
            rec.capsules = rec
                .touched_intervals()
                .map(|interval| IntervalSlot {
                    interval,
                    capsule: None,
                })
                .collect();
            rec.validate()?;
            pages.push(rec);
        }
        Ok(pages)
    }

    /// Index of `node` in the table, appending it if absent.
    fn table_index(&mut self, node: NodeId) -> Result<u8, RecordError> {
        let i = match self.nodes.iter().position(|n| *n == node) {
            Some(i) => i,
            None if self.nodes.len() < MAX_NODES => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
            None => return Err(RecordError::TableFull),
        };
        u8::try_from(i).map_err(|_| RecordError::TableFull)
    }

    /// The encryption intervals the page's blocks fall in, in order.
    fn touched_intervals(&self) -> impl Iterator<Item = u64> {
        let ib = u64::from(self.interval_blocks.max(1));
        let first = self.first_block();
        let (lo, count) = match self.holders.len() as u64 {
            0 => (0, 0),
            n => (first / ib, (first + n - 1) / ib - first / ib + 1),
        };
        (lo..).take(usize::try_from(count).unwrap_or(usize::MAX))
    }

    /// Length of the canonical encoding, without encoding.
    pub fn encoded_len(&self) -> usize {
        let rows: usize = self.holders.iter().map(Vec::len).sum();
        let capsules: usize = self
            .capsules
            .iter()
            .map(|s| 8 + 1 + s.capsule.as_ref().map_or(0, |c| 4 + c.len()))
            .sum();
        FIXED_LEN + 32 * self.nodes.len() + self.manifest_holders.len() + rows + capsules
    }

    /// Checks every invariant the decoder enforces, including the size limit.
    pub fn validate(&self) -> Result<(), RecordError> {
        check_coding(self.k, self.m)?;
        if self.interval_blocks == 0 {
            return Err(RecordError::ZeroInterval);
        }
        if self.total_blocks > MAX_TOTAL_BLOCKS {
            return Err(RecordError::TooManyBlocks {
                total: self.total_blocks,
            });
        }
        let pages = Self::pages(self.total_blocks);
        if self.page >= pages {
            return Err(RecordError::PageOutOfRange {
                page: self.page,
                pages,
            });
        }
        let expected = Self::blocks_on_page(self.total_blocks, self.page) as usize;
        if self.holders.len() != expected {
            return Err(RecordError::RowCount {
                page: self.page,
                got: self.holders.len(),
                expected,
            });
        }
        if self.nodes.len() > MAX_NODES {
            return Err(RecordError::TableFull);
        }
        let mut sorted = self.nodes.clone();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(RecordError::DuplicateNode { node: w[0] });
        }
        if self.manifest_holders.len() > MAX_MANIFEST_HOLDERS {
            return Err(RecordError::ManifestHolders {
                reason: "more than 16",
            });
        }
        if self.page != 0 && !self.manifest_holders.is_empty() {
            return Err(RecordError::ManifestHolders {
                reason: "listed on a page other than 0",
            });
        }
        for (j, &i) in self.manifest_holders.iter().enumerate() {
            if usize::from(i) >= self.nodes.len() {
                return Err(RecordError::ManifestHolders {
                    reason: "index beyond the node table",
                });
            }
            if self
                .manifest_holders
                .get(..j)
                .unwrap_or_default()
                .contains(&i)
            {
                return Err(RecordError::ManifestHolders {
                    reason: "a node listed twice",
                });
            }
        }
        for (block, row) in (self.first_block()..).zip(&self.holders) {
            self.check_row(block, row)?;
        }
        let touched = self.touched_intervals();
        let slots = self.capsules.iter().map(|s| s.interval);
        if !slots.eq(touched) {
            return Err(RecordError::Capsules {
                reason: "slots are not exactly the intervals the page touches",
            });
        }
        if self.capsules.iter().any(|s| {
            s.capsule
                .as_ref()
                .is_some_and(|c| c.len() > MAX_CAPSULE_LEN)
        }) {
            return Err(RecordError::Capsules {
                reason: "capsule over 1024 bytes",
            });
        }
        let size = self.encoded_len();
        if size > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge { size });
        }
        Ok(())
    }

    fn check_row(&self, block: u64, row: &[u8]) -> Result<(), RecordError> {
        if row.len() != self.shards() {
            return Err(RecordError::RowLength {
                block,
                got: row.len(),
                expected: self.shards(),
            });
        }
        let mut seen = [false; MAX_NODES];
        for &index in row {
            if index == NO_HOLDER {
                continue;
            }
            let (Some(node), Some(s)) = (
                self.nodes.get(usize::from(index)),
                seen.get_mut(usize::from(index)),
            ) else {
                return Err(RecordError::HolderIndex {
                    block,
                    index,
                    nodes: self.nodes.len(),
                });
            };
            if *s {
                return Err(RecordError::DuplicateHolder { block, node: *node });
            }
            *s = true;
        }
        Ok(())
    }

    /// The canonical encoding, after checking every invariant and the size limit.
    pub fn to_record_bytes(&self) -> Result<Vec<u8>, RecordError> {
        self.validate()?;
        Ok(self.to_bytes())
    }
}

fn check_coding(k: u8, m: u8) -> Result<(), RecordError> {
    if k == 0 || m == 0 || usize::from(k) + usize::from(m) > MAX_SHARDS {
        return Err(RecordError::BadCoding { k, m });
    }
    Ok(())
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    u32::try_from(n).unwrap_or(u32::MAX).encode(out);
}

impl Encode for DataRecord {
    fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(RECORD_MAGIC);
        out.push(RECORD_VERSION);
        self.data.encode(out);
        self.version.encode(out);
        self.k.encode(out);
        self.m.encode(out);
        self.total_blocks.encode(out);
        self.interval_blocks.encode(out);
        self.page.encode(out);
        put_len(out, self.nodes.len());
        for n in &self.nodes {
            n.encode(out);
        }
        put_bytes(out, &self.manifest_holders);
        // Rows have k + m entries each, so they carry no length of their own.
        put_len(out, self.holders.len());
        for row in &self.holders {
            out.extend_from_slice(row);
        }
        put_len(out, self.capsules.len());
        for slot in &self.capsules {
            slot.interval.encode(out);
            match &slot.capsule {
                None => out.push(0),
                Some(c) => {
                    out.push(1);
                    put_bytes(out, c);
                }
            }
        }
    }
}

impl Decode for DataRecord {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        if r.array::<4>()? != *RECORD_MAGIC {
            return Err(CodecError::BadTag {
                what: "dht record magic",
                tag: 0,
            });
        }
        r.version("dht record", RECORD_VERSION)?;
        let data = DataId::decode(r)?;
        let version = r.u64()?;
        let k = r.u8()?;
        let m = r.u8()?;
        let shards = usize::from(k) + usize::from(m);
        if k == 0 || m == 0 || shards > MAX_SHARDS {
            return Err(invalid(&RecordError::BadCoding { k, m }));
        }
        let total_blocks = r.u64()?;
        let interval_blocks = r.u32()?;
        let page = r.u32()?;
        let nodes = r.vec("dht record nodes", MAX_NODES, 32, NodeId::decode)?;
        let manifest_holders = r
            .bytes("dht record manifest holders", MAX_MANIFEST_HOLDERS)?
            .to_vec();
        let holders = r.vec("dht record rows", BLOCKS_PER_PAGE as usize, shards, |r| {
            Ok(r.take(shards)?.to_vec())
        })?;
        let capsules = r.vec("dht record capsules", BLOCKS_PER_PAGE as usize, 9, |r| {
            let interval = r.u64()?;
            let capsule = match r.u8()? {
                0 => None,
                1 => Some(r.bytes("capsule", MAX_CAPSULE_LEN)?.to_vec()),
                t => {
                    return Err(CodecError::BadTag {
                        what: "capsule slot",
                        tag: u64::from(t),
                    })
                }
            };
            Ok(IntervalSlot { interval, capsule })
        })?;
        let rec = DataRecord {
            data,
            version,
            k,
            m,
            total_blocks,
            interval_blocks,
            page,
            nodes,
            manifest_holders,
            holders,
            capsules,
        };
        rec.validate().map_err(|e| invalid(&e))?;
        Ok(rec)
    }
}

/// How far ahead of a node's clock a page's `version` may be. Versions are the publisher's
/// clock in Unix milliseconds, so a new coordinator's pages supersede its predecessor's
/// without knowing how many it published; the bound keeps anyone from pinning a page with a
/// version nobody can pass.
pub const MAX_VERSION_AHEAD_MS: u64 = 10 * 60 * 1000;

/// The version a publisher gives a new page: its clock, but always past `last` (the newest
/// version it published or saw for the page).
pub fn next_version(now_ms: u64, last: u64) -> u64 {
    now_ms.max(last.saturating_add(1))
}

const SIGNED_MAGIC: &[u8; 4] = b"CPSP";
const SIGNED_VERSION: u8 = 1;

/// A record page as it is stored in the DHT: the page's encoding, signed by the node or user
/// that published it (the data's owner when it is put, its coordinator after a repair).
/// Who may publish is for the reader to decide (see [`SignedPage::open`]); the signature
/// binds the page to that key and to the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPage {
    /// The page.
    pub page: DataRecord,
    /// The publisher's key.
    pub writer: NodeId,
    sig: Signature,
    page_bytes: Vec<u8>,
}

impl SignedPage {
    /// Signs `page` for chain `chain_id` with `key`.
    pub fn sign(page: DataRecord, key: &Keypair, chain_id: u32) -> SignedPage {
        let page_bytes = page.to_bytes();
        let sig = key.sign(
            SigDomain::new(chain_id, MessageKind::DHT_RECORD),
            &page_bytes,
        );
        SignedPage {
            page,
            writer: NodeId(*key.public().as_bytes()),
            sig,
            page_bytes,
        }
    }

    /// Decodes a stored page and checks its signature for chain `chain_id`, and that its
    /// version is at most [`MAX_VERSION_AHEAD_MS`] ahead of `now_ms`. Says what is wrong
    /// otherwise.
    pub fn open(bytes: &[u8], chain_id: u32, now_ms: u64) -> Result<SignedPage, String> {
        let mut r = Reader::new(bytes);
        let parsed = (|| -> CodecResult<(NodeId, Signature, Vec<u8>)> {
            if r.array::<4>()? != *SIGNED_MAGIC {
                return Err(CodecError::BadTag {
                    what: "signed dht record magic",
                    tag: 0,
                });
            }
            r.version("signed dht record", SIGNED_VERSION)?;
            let writer = NodeId::decode(&mut r)?;
            let sig = Signature(r.array()?);
            let page = r.bytes("dht record page", MAX_RECORD_BYTES)?.to_vec();
            r.finish()?;
            Ok((writer, sig, page))
        })();
        let (writer, sig, page_bytes) = parsed.map_err(|e| format!("a garbled record: {e}"))?;
        let key = PublicKey::from_bytes(writer.0)
            .map_err(|_| format!("record writer {writer} is not a public key"))?;
        key.verify(
            SigDomain::new(chain_id, MessageKind::DHT_RECORD),
            &page_bytes,
            &sig,
        )
        .map_err(|_| format!("the signature of record writer {writer} does not verify"))?;
        let page = DataRecord::from_bytes(&page_bytes).map_err(|e| format!("{e}"))?;
        if page.version > now_ms.saturating_add(MAX_VERSION_AHEAD_MS) {
            return Err(format!(
                "record version {} is more than {} s ahead of this clock ({now_ms})",
                page.version,
                MAX_VERSION_AHEAD_MS / 1000
            ));
        }
        Ok(SignedPage {
            page,
            writer,
            sig,
            page_bytes,
        })
    }
}

impl Encode for SignedPage {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(SIGNED_MAGIC);
        out.push(SIGNED_VERSION);
        self.writer.encode(out);
        out.extend_from_slice(&self.sig.0);
        put_bytes(out, &self.page_bytes);
    }
}

fn invalid(e: &RecordError) -> CodecError {
    CodecError::Invalid {
        what: "dht record",
        reason: e.reason(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv6Addr;

    fn node(i: u32) -> NodeId {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b[31] = 0x5a;
        NodeId(b)
    }

    fn data() -> DataId {
        DataId(Hash::of(b"data item"))
    }

    /// A map of `blocks` blocks whose shard `i` of block `b` sits on node `(b + i) % nodes`.
    fn map(blocks: usize, shards: usize, nodes: u32) -> Vec<Vec<NodeId>> {
        (0..blocks)
            .map(|b| (0..shards).map(|i| node((b + i) as u32 % nodes)).collect())
            .collect()
    }

    #[test]
    fn partial_maps_record_lost_shards_as_no_holder() {
        let n = |b: u8| NodeId([b; 32]);
        let map = vec![vec![Some(n(1)), None, Some(n(2)), None], vec![None; 4]];
        let pages = DataRecord::pages_from_partial_map(
            DataId::from_bytes([5; 32]),
            2,
            2,
            2,
            1,
            &map,
            &[n(1)],
        )
        .unwrap();
        assert_eq!(pages.len(), 1);
        let p = &pages[0];
        assert_eq!(p.holder(0, 0), Some(n(1)));
        assert_eq!(p.holder(0, 1), None);
        assert_eq!(p.holder(0, 2), Some(n(2)));
        assert_eq!(p.holder(1, 3), None);
        let back = DataRecord::from_bytes(&p.to_bytes()).unwrap();
        assert_eq!(&back, p);
    }

    #[test]
    fn subnets() {
        let a = Subnet::of(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        let b = Subnet::of(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 200)));
        let c = Subnet::of(IpAddr::V4(Ipv4Addr::new(10, 1, 3, 3)));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped = Subnet::of(IpAddr::V6(Ipv4Addr::new(10, 1, 2, 9).to_ipv6_mapped()));
        assert_eq!(a, mapped);
        let v6a = Subnet::of("2001:db8:1:ffff::1".parse::<IpAddr>().unwrap());
        let v6b = Subnet::of("2001:db8:1:0::2".parse::<IpAddr>().unwrap());
        let v6c = Subnet::of("2001:db8:2::1".parse::<IpAddr>().unwrap());
        assert_eq!(v6a, v6b);
        assert_ne!(v6a, v6c);
        // The v6 prefix that spells the same bytes as a v4 /24 is another bucket.
        let v6 = Subnet::of(IpAddr::V6(Ipv6Addr::new(0x0a01, 0x0200, 0, 0, 0, 0, 0, 1)));
        assert_ne!(v6, a);
        assert_ne!(
            Subnet::of(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            Subnet::of(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        );
    }

    #[test]
    fn keys_and_pages() {
        assert_eq!(DataRecord::pages(0), 1);
        assert_eq!(DataRecord::pages(1), 1);
        assert_eq!(DataRecord::pages(2048), 1);
        assert_eq!(DataRecord::pages(2049), 2);
        assert_eq!(DataRecord::pages(MAX_TOTAL_BLOCKS), u32::MAX);
        assert_eq!(DataRecord::pages(u64::MAX), u32::MAX);
        let d = data();
        assert_ne!(DataRecord::key(&d, 0), DataRecord::key(&d, 1));
        assert_ne!(
            DataRecord::key(&d, 0),
            DataRecord::key(&DataId(Hash::of(b"other")), 0)
        );
        let mut buf = d.as_bytes().to_vec();
        buf.extend_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            DataRecord::key(&d, 7),
            Hash::domain("cpchain dht record v1", &buf).0
        );
    }

    #[test]
    fn pages_from_map_splits_and_reads_back() {
        let m = map(5000, 6, 40);
        let manifest = [node(100), node(3)];
        let pages = DataRecord::pages_from_map(data(), 3, 4, 2, 100, &m, &manifest).unwrap();
        assert_eq!(pages.len(), 3);
        assert_eq!(
            pages.iter().map(|p| p.holders.len()).collect::<Vec<_>>(),
            [2048, 2048, 904]
        );
        for p in &pages {
            for b in p.first_block()..p.end_block() {
                for i in 0..6u8 {
                    assert_eq!(p.holder(b, i), Some(m[b as usize][i as usize]));
                }
            }
            assert_eq!(p.holder(p.end_block(), 0), None);
            assert_eq!(p.holder(p.first_block(), 6), None);
            let bytes = p.to_record_bytes().unwrap();
            assert_eq!(DataRecord::from_bytes(&bytes).unwrap(), *p);
        }
        assert_eq!(pages[0].manifest_holders, [0, 1]);
        assert_eq!(pages[0].nodes[..2], manifest);
        assert!(pages[1].manifest_holders.is_empty());
        // Page 1 covers blocks 2048..4096: intervals 20..=40.
        let iv: Vec<u64> = pages[1].capsules.iter().map(|s| s.interval).collect();
        assert_eq!(iv, (20..=40).collect::<Vec<_>>());
        assert!(pages[1].capsules.iter().all(|s| s.capsule.is_none()));

        let empty = DataRecord::pages_from_map(data(), 0, 4, 2, 1, &[], &manifest).unwrap();
        assert_eq!(empty.len(), 1);
        assert!(empty[0].holders.is_empty() && empty[0].capsules.is_empty());
        assert_eq!(
            DataRecord::from_bytes(&empty[0].to_bytes()).unwrap(),
            empty[0]
        );
    }

    #[test]
    fn pages_from_map_rejects_bad_maps() {
        let d = data();
        let e = |r: Result<Vec<DataRecord>, RecordError>| r.unwrap_err();
        assert_eq!(
            e(DataRecord::pages_from_map(d, 0, 0, 2, 1, &[], &[])),
            RecordError::BadCoding { k: 0, m: 2 }
        );
        assert_eq!(
            e(DataRecord::pages_from_map(d, 0, 40, 25, 1, &[], &[])),
            RecordError::BadCoding { k: 40, m: 25 }
        );
        assert_eq!(
            e(DataRecord::pages_from_map(d, 0, 2, 1, 0, &[], &[])),
            RecordError::ZeroInterval
        );
        let mut m = map(10, 3, 9);
        m[4].pop();
        assert_eq!(
            e(DataRecord::pages_from_map(d, 0, 2, 1, 1, &m, &[])),
            RecordError::RowLength {
                block: 4,
                got: 2,
                expected: 3
            }
        );
        let mut m = map(10, 3, 9);
        m[7][2] = m[7][0];
        assert!(matches!(
            e(DataRecord::pages_from_map(d, 0, 2, 1, 1, &m, &[])),
            RecordError::DuplicateHolder { block: 7, .. }
        ));
        // 300 distinct nodes on one page do not fit a byte index.
        let m: Vec<Vec<NodeId>> = (0..100)
            .map(|b| (0..3).map(|i| node(b * 3 + i)).collect())
            .collect();
        assert_eq!(
            e(DataRecord::pages_from_map(d, 0, 2, 1, 1, &m, &[])),
            RecordError::TableFull
        );
        let many: Vec<NodeId> = (0..17).map(node).collect();
        assert!(matches!(
            e(DataRecord::pages_from_map(
                d,
                0,
                2,
                1,
                1,
                &map(3, 3, 9),
                &many
            )),
            RecordError::ManifestHolders { .. }
        ));
        // 40 shards per block: 2048 rows alone are 80 KiB.
        let m = map(2048, 40, 250);
        assert!(matches!(
            e(DataRecord::pages_from_map(d, 0, 30, 10, 2048, &m, &[])),
            RecordError::TooLarge { .. }
        ));
    }

    /// The page the size limit is designed for: 2048 blocks of 10 + 4 shards over 255 nodes,
    /// a 256-byte capsule for every 32-block interval.
    fn full_page(interval_blocks: u32) -> DataRecord {
        let m = map(4096, 14, 255);
        let manifest: Vec<NodeId> = (0..16).map(node).collect();
        let mut p = DataRecord::pages_from_map(data(), 1, 10, 4, interval_blocks, &m, &manifest)
            .unwrap()
            .remove(1);
        let intervals: Vec<u64> = p.capsules.iter().map(|s| s.interval).collect();
        for i in intervals {
            p.capsule_fill(i);
        }
        p
    }

    impl DataRecord {
        fn capsule_fill(&mut self, interval: u64) {
            self.set_capsule(interval, vec![interval as u8; 256])
                .unwrap();
        }
    }

    #[test]
    fn a_full_page_fits_the_record_limit() {
        let p = full_page(32);
        assert_eq!(p.holders.len(), 2048);
        assert_eq!(p.nodes.len(), 255);
        assert_eq!(p.capsules.len(), 64);
        let bytes = p.to_record_bytes().unwrap();
        assert_eq!(bytes.len(), p.encoded_len());
        assert!(bytes.len() <= MAX_RECORD_BYTES, "{} bytes", bytes.len());
        assert_eq!(DataRecord::from_bytes(&bytes).unwrap(), p);

        // One capsule per block does not fit: both the encoder and the decoder refuse it.
        let p = full_page(1);
        let size = p.encoded_len();
        assert_eq!(p.to_record_bytes(), Err(RecordError::TooLarge { size }));
        assert!(matches!(
            DataRecord::from_bytes(&p.to_bytes()),
            Err(CodecError::Invalid { .. })
        ));
    }

    fn small() -> DataRecord {
        DataRecord::pages_from_map(data(), 1, 2, 2, 4, &map(10, 4, 6), &[node(0)])
            .unwrap()
            .remove(0)
    }

    /// Encodes `rec` as is (encode does not validate) and expects the decoder to refuse it.
    fn refused(rec: &DataRecord) -> CodecError {
        DataRecord::from_bytes(&rec.to_bytes()).unwrap_err()
    }

    #[test]
    fn decode_rejects_broken_records() {
        let good = small();
        assert_eq!(DataRecord::from_bytes(&good.to_bytes()).unwrap(), good);
        type Mutation = Box<dyn Fn(&mut DataRecord)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("k zero", Box::new(|r| r.k = 0)),
            ("m zero", Box::new(|r| r.m = 0)),
            ("k + m > 64", Box::new(|r| (r.k, r.m) = (60, 5))),
            ("short row", Box::new(|r| r.holders[3].truncate(3))),
            ("index past table", Box::new(|r| r.holders[2][1] = 6)),
            (
                "duplicate in row",
                Box::new(|r| r.holders[2][1] = r.holders[2][0]),
            ),
            ("page beyond total", Box::new(|r| r.page = 1)),
            ("too few rows", Box::new(|r| r.total_blocks = 11)),
            ("too many rows", Box::new(|r| r.total_blocks = 9)),
            ("zero interval", Box::new(|r| r.interval_blocks = 0)),
            (
                "missing capsule slot",
                Box::new(|r| {
                    r.capsules.pop();
                }),
            ),
            (
                "wrong capsule slot",
                Box::new(|r| r.capsules[0].interval = 9),
            ),
            ("duplicate node", Box::new(|r| r.nodes[1] = r.nodes[0])),
            (
                "manifest past table",
                Box::new(|r| r.manifest_holders = vec![7]),
            ),
            (
                "manifest twice",
                Box::new(|r| r.manifest_holders = vec![0, 0]),
            ),
            (
                "too many blocks",
                Box::new(|r| r.total_blocks = MAX_TOTAL_BLOCKS + 1),
            ),
        ];
        for (what, mutate) in cases {
            let mut r = good.clone();
            mutate(&mut r);
            assert!(r.validate().is_err(), "{what}: validate");
            assert!(r.to_record_bytes().is_err(), "{what}: to_record_bytes");
            let _ = refused(&r);
        }
        // Over 2048 rows is refused from the length prefix, before the rows are read.
        let mut r = good.clone();
        r.total_blocks = 3000;
        r.holders = vec![vec![NO_HOLDER; 4]; 2049];
        assert!(matches!(refused(&r), CodecError::TooLong { .. }));
        // Manifest holders off page 0.
        let mut p1 = DataRecord::pages_from_map(data(), 1, 2, 2, 4, &map(3000, 4, 6), &[])
            .unwrap()
            .remove(1);
        p1.manifest_holders = vec![0];
        assert!(matches!(refused(&p1), CodecError::Invalid { .. }));
        // Bad magic and a newer encoding version.
        let mut bytes = good.to_bytes();
        bytes[0] ^= 1;
        assert!(DataRecord::from_bytes(&bytes).is_err());
        let mut bytes = good.to_bytes();
        bytes[4] = RECORD_VERSION + 1;
        assert!(matches!(
            DataRecord::from_bytes(&bytes),
            Err(CodecError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn signed_pages_open_only_unaltered_on_their_chain_and_clock() {
        let key = Keypair::from_seed([3; 32]);
        let mut page = small();
        page.version = 1_000_000;
        let signed = SignedPage::sign(page.clone(), &key, 7);
        let bytes = signed.to_bytes();
        let opened = SignedPage::open(&bytes, 7, 1_000_000).unwrap();
        assert_eq!(opened.page, page);
        assert_eq!(opened.writer, NodeId(*key.public().as_bytes()));
        // Another chain.
        assert!(SignedPage::open(&bytes, 8, 1_000_000)
            .unwrap_err()
            .contains("signature"));
        // Any byte changed anywhere: refused, never a different page.
        for at in 0..bytes.len() {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            assert!(SignedPage::open(&b, 7, 1_000_000).is_err(), "byte {at}");
        }
        // Cut short or with bytes after it.
        assert!(SignedPage::open(&bytes[..bytes.len() - 1], 7, 1_000_000).is_err());
        let mut long = bytes.clone();
        long.push(0);
        assert!(SignedPage::open(&long, 7, 1_000_000).is_err());
        // A version too far ahead of the reader's clock.
        page.version = u64::MAX;
        let pinned = SignedPage::sign(page, &key, 7).to_bytes();
        assert!(SignedPage::open(&pinned, 7, 1_000)
            .unwrap_err()
            .contains("ahead"));
        assert!(SignedPage::open(&bytes, 7, 1_000_000 - MAX_VERSION_AHEAD_MS).is_ok());
        assert!(SignedPage::open(&bytes, 7, 999_999 - MAX_VERSION_AHEAD_MS).is_err());
    }

    #[test]
    fn versions_follow_the_clock_and_never_repeat() {
        assert_eq!(next_version(5_000, 0), 5_000);
        assert_eq!(next_version(5_000, 5_000), 5_001);
        assert_eq!(next_version(4_000, 9_000), 9_001);
        assert_eq!(next_version(0, u64::MAX), u64::MAX);
    }

    #[test]
    fn set_holder_keeps_rows_valid() {
        let mut r = small();
        let b = 5;
        let before = r.holder(b, 1).unwrap();
        r.set_holder(b, 1, None).unwrap();
        assert_eq!(r.holder(b, 1), None);
        assert_eq!(r.holders[5][1], NO_HOLDER);
        // A new node joins the table.
        r.set_holder(b, 1, Some(node(77))).unwrap();
        assert_eq!(r.holder(b, 1), Some(node(77)));
        assert_eq!(r.nodes.last(), Some(&node(77)));
        // A node holding another shard of the block is refused; the same slot is fine.
        let other = r.holder(b, 0).unwrap();
        assert_eq!(
            r.set_holder(b, 1, Some(other)),
            Err(RecordError::DuplicateHolder {
                block: b,
                node: other
            })
        );
        r.set_holder(b, 1, Some(node(77))).unwrap();
        assert_ne!(before, node(77));
        assert!(matches!(
            r.set_holder(10, 0, Some(node(1))),
            Err(RecordError::BlockOutOfPage { .. })
        ));
        assert!(matches!(
            r.set_holder(0, 4, Some(node(1))),
            Err(RecordError::ShardIndex { .. })
        ));
        r.validate().unwrap();
    }

    #[test]
    fn a_full_table_drops_nodes_no_longer_named() {
        // 10 blocks of 4 shards, all on distinct nodes: 40 nodes named, 215 stale ones.
        let m: Vec<Vec<NodeId>> = (0..10)
            .map(|b| (0..4).map(|i| node(b * 4 + i)).collect())
            .collect();
        let mut r = DataRecord::pages_from_map(data(), 1, 2, 2, 4, &m, &[node(0)])
            .unwrap()
            .remove(0);
        for i in 0..215 {
            r.nodes.push(node(1000 + i));
        }
        assert_eq!(r.nodes.len(), 255);
        r.validate().unwrap();
        r.set_holder(3, 2, Some(node(5000))).unwrap();
        assert_eq!(r.holder(3, 2), Some(node(5000)));
        assert_eq!(
            r.nodes.len(),
            40,
            "39 still named, the replaced one dropped, one new"
        );
        for b in 0..10u64 {
            for i in 0..4u8 {
                let want = if (b, i) == (3, 2) {
                    node(5000)
                } else {
                    node(b as u32 * 4 + u32::from(i))
                };
                assert_eq!(r.holder(b, i), Some(want));
            }
        }
        assert_eq!(r.nodes[usize::from(r.manifest_holders[0])], node(0));
        r.validate().unwrap();

        // When every table entry is named, there is no room and nothing changes.
        let m: Vec<Vec<NodeId>> = (0..64)
            .map(|b| (0..4).map(|i| node(b * 4 + i)).collect())
            .collect();
        let mut r = DataRecord::pages_from_map(data(), 1, 2, 2, 4, &m[..63], &[])
            .unwrap()
            .remove(0);
        r.total_blocks = 64;
        // Block 63 falls in interval 15, whose slot block 60 already made.
        r.holders.push(vec![NO_HOLDER; 4]);
        for i in 0..3 {
            r.set_holder(63, i, Some(node(252 + u32::from(i)))).unwrap();
        }
        assert_eq!(r.nodes.len(), 255);
        let before = r.clone();
        assert_eq!(
            r.set_holder(63, 3, Some(node(999))),
            Err(RecordError::TableFull)
        );
        assert_eq!(r, before);
        // Replacing a slot whose node is named nowhere else frees its entry.
        r.set_holder(62, 3, Some(node(999))).unwrap();
        assert_eq!(r.holder(62, 3), Some(node(999)));
        r.validate().unwrap();
    }

    fn arb_record() -> impl Strategy<Value = DataRecord> {
        (
            1u8..=8,
            1u8..=6,
            0u32..3,
            0usize..40,
            1u32..50,
            proptest::collection::btree_set(any::<[u8; 32]>(), 1..30),
            any::<u64>(),
            any::<[u8; 32]>(),
        )
            .prop_flat_map(|(k, m, page, rows, ib, nodes, version, data)| {
                let rows = if page == 0 { rows } else { rows.max(1) };
                let nodes: Vec<NodeId> = nodes.into_iter().map(NodeId).collect();
                let n = nodes.len();
                let shards = usize::from(k) + usize::from(m);
                let row = proptest::collection::vec(
                    prop_oneof![Just(NO_HOLDER), (0..n).prop_map(|i| i as u8)],
                    shards,
                );
                let first = u64::from(page) * BLOCKS_PER_PAGE;
                let ivs = if rows == 0 {
                    0
                } else {
                    let ib = u64::from(ib);
                    ((first + rows as u64 - 1) / ib - first / ib + 1) as usize
                };
                let capsules = proptest::collection::vec(
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                    ivs,
                );
                let manifest = if page == 0 {
                    proptest::sample::subsequence(
                        (0..n.min(16) as u8).collect::<Vec<_>>(),
                        0..=n.min(16),
                    )
                    .boxed()
                } else {
                    Just(Vec::new()).boxed()
                };
                (
                    Just((k, m, page, ib, nodes, version, data, first)),
                    proptest::collection::vec(row, rows),
                    capsules,
                    manifest,
                )
            })
            .prop_map(
                |((k, m, page, ib, nodes, version, data, first), rows, capsules, manifest)| {
                    let holders: Vec<Vec<u8>> = rows
                        .into_iter()
                        .map(|mut row| {
                            // Two shards of a block never share a node.
                            for j in 0..row.len() {
                                if row[j] != NO_HOLDER && row[..j].contains(&row[j]) {
                                    row[j] = NO_HOLDER;
                                }
                            }
                            row
                        })
                        .collect();
                    let first_iv = first / u64::from(ib);
                    let capsules = capsules
                        .into_iter()
                        .zip(first_iv..)
                        .map(|(capsule, interval)| IntervalSlot { interval, capsule })
                        .collect();
                    DataRecord {
                        data: DataId(Hash(data)),
                        version,
                        k,
                        m,
                        total_blocks: first + holders.len() as u64,
                        interval_blocks: ib,
                        page,
                        nodes,
                        manifest_holders: manifest,
                        holders,
                        capsules,
                    }
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn records_round_trip(rec in arb_record()) {
            rec.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let bytes = rec.to_record_bytes().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(bytes.len(), rec.encoded_len());
            prop_assert_eq!(DataRecord::from_bytes(&bytes)?, rec);
        }

        #[test]
        fn truncations_are_errors(rec in arb_record()) {
            let bytes = rec.to_bytes();
            for cut in 0..bytes.len() {
                prop_assert!(DataRecord::from_bytes(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn random_signed_pages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = SignedPage::open(&bytes, 1, 0);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            if let Ok(rec) = DataRecord::from_bytes(&bytes) {
                prop_assert!(rec.validate().is_ok());
            }
        }

        #[test]
        fn corrupted_records_never_panic(rec in arb_record(), at: prop::sample::Index, x in 1u8..) {
            let mut bytes = rec.to_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= x;
            if let Ok(r) = DataRecord::from_bytes(&bytes) {
                prop_assert!(r.validate().is_ok());
                for b in r.first_block()..r.end_block() {
                    for i in 0..r.shards() as u8 {
                        let _ = r.holder(b, i);
                    }
                }
            }
        }
    }
}
