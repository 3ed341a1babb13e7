//! Journaled ordered tables, the per-block [`StateDiff`] and the read-through overlay used
//! to check transactions without touching the state.
//!
//! Every table is a `BTreeMap` plus an undo log. A write records the key and its old value,
//! so a failed block rolls back in O(writes) and a committed block yields its changed keys
//! (sorted, deduplicated) with their new values: the diff a store persists and the root
//! hashes.

use std::collections::BTreeMap;

use crypto_accel::{CodecError, CodecResult, Decode, Encode, Hash, Reader};

use crate::error::{ChainError, ChainResult};

/// Longest encoded state key.
const MAX_KEY_BYTES: usize = 256;
/// Longest encoded state value.
const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Largest encoded diff accepted on decode.
pub const MAX_DIFF_BYTES: usize = 1 << 30;

/// A table: ordered map plus undo log.
#[derive(Debug, Clone)]
pub(crate) struct Table<K, V> {
    map: BTreeMap<K, V>,
    undo: Vec<(K, Option<V>)>,
}

impl<K, V> Default for Table<K, V> {
    fn default() -> Self {
        Table {
            map: BTreeMap::new(),
            undo: Vec::new(),
        }
    }
}

impl<K: Ord + Clone, V: Clone> Table<K, V> {
    /// The value under `k`.
    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    /// Writes `v` under `k`, journaling the old value.
    pub(crate) fn set(&mut self, k: K, v: V) {
        let old = self.map.insert(k.clone(), v);
        self.undo.push((k, old));
    }

    /// Deletes `k`, journaling the old value.
    pub(crate) fn del(&mut self, k: &K) {
        if let Some(old) = self.map.remove(k) {
            self.undo.push((k.clone(), Some(old)));
        }
    }

    /// Entries with keys in `range`, in key order.
    pub(crate) fn range<R: std::ops::RangeBounds<K>>(
        &self,
        range: R,
    ) -> std::collections::btree_map::Range<'_, K, V> {
        self.map.range(range)
    }

    /// All entries in key order.
    pub(crate) fn iter(&self) -> std::collections::btree_map::Iter<'_, K, V> {
        self.map.iter()
    }
}

/// Type-erased journal operations, so the state can walk all tables in id order.
pub(crate) trait Journaled {
    /// Current undo-log length (a savepoint).
    fn mark(&self) -> usize;
    /// Undoes every write after savepoint `to`.
    fn rollback(&mut self, to: usize);
    /// Appends the changed entries (sorted by key) to `diff` and clears the journal.
    fn drain_into(&mut self, id: u8, diff: &mut DiffWriter);
    /// Applies one encoded entry, journaled (restart from a store).
    fn apply_raw(&mut self, key: &[u8], value: Option<&[u8]>) -> CodecResult<()>;
    /// Forgets journal entries after savepoint `to` without undoing them.
    fn forget(&mut self, to: usize);
    /// Appends every entry, encoded, for a snapshot.
    fn export(&self, id: u8, diff: &mut DiffWriter);
}

impl<K, V> Journaled for Table<K, V>
where
    K: Ord + Clone + Encode + Decode,
    V: Clone + Encode + Decode,
{
    fn mark(&self) -> usize {
        self.undo.len()
    }

    fn rollback(&mut self, to: usize) {
        while self.undo.len() > to {
            let Some((k, old)) = self.undo.pop() else {
                break;
            };
            match old {
                Some(v) => {
                    self.map.insert(k, v);
                }
                None => {
                    self.map.remove(&k);
                }
            }
        }
    }

    fn drain_into(&mut self, id: u8, diff: &mut DiffWriter) {
        if self.undo.is_empty() {
            return;
        }
        let mut keys: Vec<K> = self.undo.drain(..).map(|(k, _)| k).collect();
        keys.sort_unstable();
        keys.dedup();
        for k in &keys {
            diff.entry(id, k, self.map.get(k));
        }
    }

    fn apply_raw(&mut self, key: &[u8], value: Option<&[u8]>) -> CodecResult<()> {
        let k = K::from_bytes(key)?;
        match value {
            Some(v) => self.set(k, V::from_bytes(v)?),
            None => self.del(&k),
        }
        Ok(())
    }

    fn forget(&mut self, to: usize) {
        self.undo.truncate(to);
    }

    fn export(&self, id: u8, diff: &mut DiffWriter) {
        for (k, v) in &self.map {
            diff.entry(id, k, Some(v));
        }
    }
}

/// Builds the flat encoding of a [`StateDiff`].
#[derive(Debug, Default)]
pub(crate) struct DiffWriter {
    bytes: Vec<u8>,
    count: u32,
    scratch: Vec<u8>,
}

impl DiffWriter {
    fn entry<K: Encode, V: Encode>(&mut self, table: u8, k: &K, v: Option<&V>) {
        self.bytes.push(table);
        self.scratch.clear();
        k.encode(&mut self.scratch);
        crypto_accel::put_bytes(&mut self.bytes, &self.scratch);
        match v {
            None => self.bytes.push(0),
            Some(v) => {
                self.bytes.push(1);
                self.scratch.clear();
                v.encode(&mut self.scratch);
                crypto_accel::put_bytes(&mut self.bytes, &self.scratch);
            }
        }
        self.count = self.count.saturating_add(1);
    }

    pub(crate) fn finish(self, number: u64, prev_root: Hash) -> StateDiff {
        let root = chain_root(&prev_root, number, &self.bytes);
        StateDiff {
            number,
            prev_root,
            root,
            count: self.count,
            bytes: self.bytes,
        }
    }
}

/// root(N) = H("cpchain state root v1"; root(N−1) ‖ N ‖ H(diff bytes of N)).
pub(crate) fn chain_root(prev: &Hash, number: u64, diff_bytes: &[u8]) -> Hash {
    let mut b = [0u8; 72];
    b[..32].copy_from_slice(prev.as_bytes());
    b[32..40].copy_from_slice(&number.to_le_bytes());
    b[40..].copy_from_slice(Hash::of(diff_bytes).as_bytes());
    Hash::domain("cpchain state root v1", &b)
}

/// The state changes of one block, canonically encoded: every changed `(table, key)` once,
/// sorted by table id then key, with its new value or a deletion. A store writes it in one
/// transaction; [`crate::State::apply_diff`] replays it on restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDiff {
    /// Height of the block that made the changes (0 for genesis).
    pub number: u64,
    /// The state root before the block.
    pub prev_root: Hash,
    /// The state root after the block.
    pub root: Hash,
    /// Number of entries.
    pub count: u32,
    /// Entries: `table u8 ‖ key (u32-prefixed) ‖ 0 | 1 ‖ value (u32-prefixed, if 1)`.
    pub bytes: Vec<u8>,
}

/// One decoded diff entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffEntry<'a> {
    /// Table id.
    pub table: u8,
    /// Encoded key.
    pub key: &'a [u8],
    /// Encoded new value; `None` for a deletion.
    pub value: Option<&'a [u8]>,
}

impl StateDiff {
    /// The entries in order; stops at the first malformed one with an error.
    pub fn entries(&self) -> CodecResult<Vec<DiffEntry<'_>>> {
        let mut r = Reader::new(&self.bytes);
        // `count` comes from disk or the network: it sizes the allocation only as far as
        // the bytes could hold (an entry takes at least 3: table, key length, value flag).
        let mut out = Vec::with_capacity((self.count as usize).min(self.bytes.len() / 3));
        while r.remaining() > 0 {
            let table = r.u8()?;
            let key = r.bytes("state key", MAX_KEY_BYTES)?;
            let value = if r.bool()? {
                Some(r.bytes("state value", MAX_VALUE_BYTES)?)
            } else {
                None
            };
            out.push(DiffEntry { table, key, value });
        }
        if out.len() != self.count as usize {
            return Err(CodecError::Invalid {
                what: "state diff",
                reason: "entry count mismatch",
            });
        }
        Ok(out)
    }

    /// Whether `root` follows from `prev_root`, `number` and the bytes.
    pub fn is_consistent(&self) -> bool {
        chain_root(&self.prev_root, self.number, &self.bytes) == self.root
    }
}

impl Encode for StateDiff {
    fn encode(&self, out: &mut Vec<u8>) {
        self.number.encode(out);
        self.prev_root.encode(out);
        self.root.encode(out);
        self.count.encode(out);
        crypto_accel::put_bytes(out, &self.bytes);
    }
}

impl Decode for StateDiff {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(StateDiff {
            number: r.u64()?,
            prev_root: Hash::decode(r)?,
            root: Hash::decode(r)?,
            count: r.u32()?,
            bytes: r.bytes("state diff", MAX_DIFF_BYTES)?.to_vec(),
        })
    }
}

/// A table's static description: id, key and value types, where it lives.
pub(crate) trait TableDef {
    /// Key type.
    type K: Ord + Clone + Encode + Decode;
    /// Value type.
    type V: Clone + Encode + Decode;
    /// The table's table.
    fn table(t: &Tables) -> &Table<Self::K, Self::V>;
    /// The table, mutably.
    fn table_mut(t: &mut Tables) -> &mut Table<Self::K, Self::V>;
    /// The overlay's write cache for this table.
    fn cache(c: &Cache) -> &BTreeMap<Self::K, Option<Self::V>>;
    /// The overlay's write cache, mutably.
    fn cache_mut(c: &mut Cache) -> &mut BTreeMap<Self::K, Option<Self::V>>;
}

/// Point reads and writes, implemented by the journaled tables (block execution) and by the
/// read-through [`Overlay`] (checking a transaction without applying it).
pub(crate) trait Store {
    /// The value under `k`, cloned.
    fn get<T: TableDef>(&self, k: &T::K) -> Option<T::V>;
    /// Writes a value.
    fn set<T: TableDef>(&mut self, k: T::K, v: T::V);
    /// Deletes a key.
    fn del<T: TableDef>(&mut self, k: &T::K);
}

impl Store for Tables {
    fn get<T: TableDef>(&self, k: &T::K) -> Option<T::V> {
        T::table(self).get(k).cloned()
    }
    fn set<T: TableDef>(&mut self, k: T::K, v: T::V) {
        T::table_mut(self).set(k, v);
    }
    fn del<T: TableDef>(&mut self, k: &T::K) {
        T::table_mut(self).del(k);
    }
}

/// Writes buffered over read-only tables; dropped after a check.
#[derive(Debug)]
pub(crate) struct Overlay<'a> {
    base: &'a Tables,
    cache: Cache,
}

impl<'a> Overlay<'a> {
    /// An empty overlay over `base`.
    pub(crate) fn new(base: &'a Tables) -> Self {
        Overlay {
            base,
            cache: Cache::default(),
        }
    }
}

impl Store for Overlay<'_> {
    fn get<T: TableDef>(&self, k: &T::K) -> Option<T::V> {
        match T::cache(&self.cache).get(k) {
            Some(v) => v.clone(),
            None => T::table(self.base).get(k).cloned(),
        }
    }
    fn set<T: TableDef>(&mut self, k: T::K, v: T::V) {
        T::cache_mut(&mut self.cache).insert(k, Some(v));
    }
    fn del<T: TableDef>(&mut self, k: &T::K) {
        T::cache_mut(&mut self.cache).insert(k.clone(), None);
    }
}

macro_rules! tables {
    ($( $(#[$doc:meta])* $field:ident : $marker:ident = $id:literal, $k:ty => $v:ty; )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug)]
            pub(crate) struct $marker;

            impl TableDef for $marker {
                type K = $k;
                type V = $v;
                fn table(t: &Tables) -> &Table<$k, $v> {
                    &t.$field
                }
                fn table_mut(t: &mut Tables) -> &mut Table<$k, $v> {
                    &mut t.$field
                }
                fn cache(c: &Cache) -> &BTreeMap<$k, Option<$v>> {
                    &c.$field
                }
                fn cache_mut(c: &mut Cache) -> &mut BTreeMap<$k, Option<$v>> {
                    &mut c.$field
                }
            }
        )*

        /// Every state table.
        #[derive(Debug, Clone, Default)]
        pub(crate) struct Tables {
            $( pub(crate) $field: Table<$k, $v>, )*
        }

        /// The overlay's per-table write caches.
        #[derive(Debug, Default)]
        pub(crate) struct Cache {
            $( $field: BTreeMap<$k, Option<$v>>, )*
        }

        impl Tables {
            /// Every table with its id, in id order.
            pub(crate) fn journals_mut(&mut self) -> Vec<(u8, &mut dyn Journaled)> {
                vec![ $( ($id, &mut self.$field as &mut dyn Journaled), )* ]
            }

            /// Every table with its id, in id order.
            pub(crate) fn journals(&self) -> Vec<(u8, &dyn Journaled)> {
                vec![ $( ($id, &self.$field as &dyn Journaled), )* ]
            }
        }
    };
}

use super::records::*;
use crate::types::Address;
use crypto_accel::DataId;

tables! {
    /// Accounts: balance and nonce.
    accounts: Accounts = 1, Address => Account;
    /// Data registry.
    data: DataTable = 2, DataId => DataRecord;
    /// Access grants (and revocations).
    grants: Grants = 3, GrantKey => GrantRecord;
    /// Economy pool deposits.
    economy: Economy = 4, Address => Funds;
    /// RNode pool deposits.
    rnodes: RNodes = 5, Address => Funds;
    /// Campaign candidates.
    candidates: Candidates = 6, Address => Candidate;
    /// Proxy register: proxy → real contract.
    proxies: Proxies = 7, Address => Address;
    /// Register contract: upload history.
    uploads: Uploads = 8, UploadKey => Height;
    /// RPT activity per (address, height).
    activity: ActivityTable = 9, ActivityKey => Activity;
    /// Index of activity by height, for pruning.
    activity_index: ActivityIndex = 10, HeightKey => Height;
    /// Chain and contract parameters and counters.
    meta: MetaTable = 11, u8 => Meta;
    /// Proposers committee per term.
    committees: Committees = 12, u64 => Committee;
    /// Last term each address is elected for (RNode lock).
    locked: Locked = 13, Address => Height;
    /// PDash listings.
    items: Items = 14, u64 => Listing;
    /// PDash orders.
    orders: Orders = 15, u64 => Order;
    /// PDash buyer escrow (unlocked funds).
    escrow: Escrow = 16, Address => Funds;
    /// Punished double votes.
    equivocations: Equivocations = 17, HeightKey => Equivocation;
    /// Impeachments.
    impeachments: Impeachments = 18, HeightKey => Funds;
    /// Recent block hashes (admission seeds).
    block_hashes: BlockHashes = 19, u64 => Hash;
}

impl Tables {
    /// A savepoint: every table's journal length.
    pub(crate) fn savepoint(&self) -> Vec<usize> {
        self.journals().iter().map(|(_, j)| j.mark()).collect()
    }

    /// Undoes every write since `sp`.
    pub(crate) fn rollback_to(&mut self, sp: &[usize]) {
        for ((_, j), &m) in self.journals_mut().into_iter().zip(sp) {
            j.rollback(m);
        }
    }

    /// Drains the journals into a diff of block `number` following `prev_root`.
    pub(crate) fn commit(&mut self, number: u64, prev_root: Hash) -> StateDiff {
        let mut w = DiffWriter::default();
        for (id, j) in self.journals_mut() {
            j.drain_into(id, &mut w);
        }
        w.finish(number, prev_root)
    }

    /// Every entry as one diff (a snapshot); `root` is carried, not recomputed.
    pub(crate) fn snapshot(&self, number: u64, root: Hash) -> StateDiff {
        let mut w = DiffWriter::default();
        for (id, j) in self.journals() {
            j.export(id, &mut w);
        }
        let mut d = w.finish(number, Hash::ZERO);
        d.root = root;
        d
    }

    /// Applies encoded entries, all or nothing, leaving no journal behind them.
    pub(crate) fn apply_entries(&mut self, entries: &[DiffEntry<'_>]) -> ChainResult<()> {
        let sp = self.savepoint();
        let res = self.apply_entries_inner(entries);
        match res {
            Ok(()) => {
                for ((_, j), &m) in self.journals_mut().into_iter().zip(&sp) {
                    j.forget(m);
                }
                Ok(())
            }
            Err(e) => {
                self.rollback_to(&sp);
                Err(e)
            }
        }
    }

    fn apply_entries_inner(&mut self, entries: &[DiffEntry<'_>]) -> ChainResult<()> {
        let mut js = self.journals_mut();
        for e in entries {
            let Some((_, j)) = js.iter_mut().find(|(id, _)| *id == e.table) else {
                return Err(ChainError::UnknownTable { table: e.table });
            };
            j.apply_raw(e.key, e.value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(count: u32, bytes: Vec<u8>) -> StateDiff {
        StateDiff {
            number: 1,
            prev_root: Hash::ZERO,
            root: Hash::ZERO,
            count,
            bytes,
        }
    }

    #[test]
    fn a_diff_claiming_billions_of_entries_is_refused_without_allocating_for_them() {
        // Before: `Vec::with_capacity(u32::MAX)` of 40-byte entries, ~170 GB, aborted.
        assert!(diff(u32::MAX, vec![0; 30]).entries().is_err());
        assert!(diff(u32::MAX, Vec::new()).entries().is_err());
    }
}
