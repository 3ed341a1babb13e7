//! Block store: round trips, restart with and without snapshots, corrupt values, foreign
//! stores and misuse of `commit`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../src/bin/chainstore_torture.rs"]
mod torture;

use std::path::{Path, PathBuf};

use chain::{
    Address, Block, BlockReceipt, Certificate, ChainError, ChainStore, State, StoreConfig, CPC,
    STORE_FILE,
};
use crypto_accel::{Encode, Hash};
use redb::{ReadableDatabase, TableDefinition};

const SEED: u64 = 42;

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("store_basic_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn cfg(snapshot_every: u64) -> StoreConfig {
    StoreConfig {
        snapshot_every,
        max_range_blocks: 4,
    }
}

type Committed = Vec<(Block, Certificate, BlockReceipt)>;

/// Opens a store and commits `n` more blocks of the torture chain; returns what it wrote
/// and the state after them.
fn build(dir: &Path, n: u64, store_cfg: StoreConfig) -> (ChainStore, State, Committed) {
    let s = torture::setup(SEED);
    let (mut store, mut state) = ChainStore::open_with(dir, &s.cfg, &s.genesis, store_cfg).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let (b, c) = torture::next_block(&s, SEED, &state);
        let r = state.apply_block(&s.cfg, &b).unwrap();
        store.commit(&b, &c, &r, &state).unwrap();
        out.push((b, c, r));
    }
    (store, state, out)
}

fn reopen(dir: &Path, store_cfg: StoreConfig) -> chain::ChainResult<(ChainStore, State)> {
    let s = torture::setup(SEED);
    ChainStore::open_with(dir, &s.cfg, &s.genesis, store_cfg)
}

#[test]
fn round_trip_of_blocks_certificates_and_diffs() {
    let dir = tmp("roundtrip");
    let (store, state, written) = build(&dir, 12, cfg(5));
    let head = store.head();
    assert_eq!(head.number, 12);
    assert_eq!(head.state_root, state.root());
    assert_eq!(head.hash, written[11].0.hash());
    for (b, c, r) in &written {
        let n = b.header.number;
        assert_eq!(store.block(n).unwrap().as_ref(), Some(b));
        assert_eq!(store.block_by_hash(&b.hash()).unwrap().as_ref(), Some(b));
        assert_eq!(store.certificate(n).unwrap().as_ref(), Some(c));
        assert_eq!(store.diff(n).unwrap().as_ref(), Some(&r.diff));
    }
    assert_eq!(store.block(0).unwrap(), None);
    assert_eq!(store.block(13).unwrap(), None);
    assert_eq!(store.certificate(13).unwrap(), None);
    assert_eq!(store.block_by_hash(&Hash::of(b"nothing")).unwrap(), None);
    // The genesis hash is indexed but names no stored block (it read as corrupt once).
    assert_eq!(
        store.block_by_hash(&written[0].0.header.parent).unwrap(),
        None
    );
    let s = torture::setup(SEED);
    let (_, genesis_diff) = State::genesis_with_diff(&s.cfg, &s.genesis);
    assert_eq!(store.diff(0).unwrap(), Some(genesis_diff));

    // Ranges: capped at max_range_blocks (4), clipped at the head, genesis excluded.
    let r = store.blocks_range(0, 100).unwrap();
    assert_eq!(
        r.iter().map(|(b, _)| b.header.number).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let r = store.blocks_range(10, 100).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[2].0, written[11].0);
    assert_eq!(r[2].1, written[11].1);
    assert!(store.blocks_range(13, 20).unwrap().is_empty());
    assert!(store.blocks_range(5, 4).unwrap().is_empty());
    // A byte budget answers in parts: one block at least, then only what fits.
    let one = store.blocks_range_within(1, 4, 1).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].0, written[0].0);
    let all = store.blocks_range_within(1, 4, usize::MAX).unwrap();
    assert_eq!(all.len(), 4);
    // Stored values carry an 8-byte checksum each; a third block is far larger than the
    // slack left for them.
    let enc = |i: usize| all[i].0.to_bytes().len() + all[i].1.to_bytes().len();
    let two = store
        .blocks_range_within(1, 4, enc(0) + enc(1) + 32)
        .unwrap();
    assert_eq!(two.len(), 2);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn restart_equals_replay_with_and_without_snapshots() {
    for (name, every, reopen_every) in [
        ("nosnap", 0, 0),
        ("snap3", 3, 3),
        ("snap1", 1, 1),
        ("snap4_then_none", 4, 0),
    ] {
        let dir = tmp(name);
        let (store, state, _) = build(&dir, 10, cfg(every));
        drop(store);
        let (store, reopened) = reopen(&dir, cfg(reopen_every)).unwrap();
        assert_eq!(store.head().number, 10, "{name}");
        assert_eq!(reopened.root(), state.root(), "{name}");
        assert_eq!(reopened.snapshot(), state.snapshot(), "{name}");
        // Resume: commit more on the reopened store, then reopen once more.
        drop(store);
        let (store, state, _) = build(&dir, 3, cfg(reopen_every));
        assert_eq!(store.head().number, 13, "{name}");
        drop(store);
        let (_, again) = reopen(&dir, cfg(every)).unwrap();
        assert_eq!(again.snapshot(), state.snapshot(), "{name}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn fresh_store_starts_at_genesis() {
    let dir = tmp("fresh");
    let s = torture::setup(SEED);
    let (store, state) = ChainStore::open(&dir, &s.cfg, &s.genesis).unwrap();
    assert_eq!(store.head().number, 0);
    assert_eq!(
        state.snapshot(),
        State::genesis(&s.cfg, &s.genesis).snapshot()
    );
    drop(store);
    let (store, again) = ChainStore::open(&dir, &s.cfg, &s.genesis).unwrap();
    assert_eq!(store.head().number, 0);
    assert_eq!(again.root(), state.root());
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_store_with_a_genesis_header_reopens_before_its_first_block() {
    // A node's chain points block 1 at a genesis header; stopped before block 1, it must
    // open again (it used to compare the genesis state's hash with the header's).
    let dir = tmp("fresh_header");
    let s = torture::setup(SEED);
    let header = chain::genesis_header(&s.cfg, 1_700_000_000_000);
    let open = || ChainStore::open_with_genesis(&dir, &s.cfg, &s.genesis, cfg(4), &header);
    let (store, state) = open().unwrap();
    assert_eq!(store.head().hash, header.hash());
    drop(store);
    let (store, again) = open().unwrap();
    assert_eq!((store.head().number, store.head().hash), (0, header.hash()));
    assert_eq!(again.root(), state.root());
    drop(store);
    // Another genesis header is another chain's store.
    let mut other = header.clone();
    other.timestamp_ms += 1;
    match ChainStore::open_with_genesis(&dir, &s.cfg, &s.genesis, cfg(4), &other) {
        Err(ChainError::StoreMismatch { what }) => assert!(what.contains("genesis header")),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a store opened under another genesis header"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn another_chain_id_or_genesis_is_refused() {
    let dir = tmp("foreign");
    let (store, _, _) = build(&dir, 2, cfg(0));
    drop(store);
    let s = torture::setup(SEED);
    let mut other = s.cfg.clone();
    other.chain_id += 1;
    let e = ChainStore::open(&dir, &other, &s.genesis).unwrap_err();
    assert_eq!(
        e,
        ChainError::WrongChain {
            expected: other.chain_id,
            got: s.cfg.chain_id
        }
    );
    let mut genesis = s.genesis.clone();
    genesis.push((Address([9; 32]), CPC));
    let e = ChainStore::open(&dir, &s.cfg, &genesis).unwrap_err();
    assert!(matches!(e, ChainError::StoreMismatch { .. }), "{e}");
    // The right chain still opens.
    assert_eq!(reopen(&dir, cfg(0)).unwrap().0.head().number, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn commit_must_follow_the_head() {
    let dir = tmp("misuse");
    let s = torture::setup(SEED);
    let (mut store, mut state, _) = build(&dir, 2, cfg(0));
    let (b, c) = torture::next_block(&s, SEED, &state);
    let mut scratch = state.clone();
    let r = scratch.apply_block(&s.cfg, &b).unwrap();
    // The state passed must be the one after the block.
    assert!(matches!(
        store.commit(&b, &c, &r, &state),
        Err(ChainError::StoreMismatch { .. })
    ));
    // A certificate for another block.
    let mut bad_cert = c.clone();
    bad_cert.block = Hash::of(b"other");
    assert!(matches!(
        store.commit(&b, &bad_cert, &r, &scratch),
        Err(ChainError::StoreMismatch { .. })
    ));
    // The same block twice.
    state = scratch;
    store.commit(&b, &c, &r, &state).unwrap();
    assert_eq!(
        store.commit(&b, &c, &r, &state),
        Err(ChainError::BadBlockNumber {
            expected: 4,
            got: 3
        })
    );
    assert_eq!(store.head().number, 3);
    drop(store);
    let (_, again) = reopen(&dir, cfg(0)).unwrap();
    assert_eq!(again.snapshot(), state.snapshot());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Overwrites one raw value of the store's database.
fn poke(dir: &Path, table: &str, key: u64, value: Option<&[u8]>) {
    let db = redb::Database::create(dir.join(STORE_FILE)).unwrap();
    let def: TableDefinition<'_, u64, &[u8]> = TableDefinition::new(table);
    let w = db.begin_write().unwrap();
    {
        let mut t = w.open_table(def).unwrap();
        match value {
            Some(v) => {
                t.insert(key, v).unwrap();
            }
            None => {
                t.remove(key).unwrap();
            }
        }
    }
    w.commit().unwrap();
}

fn raw(dir: &Path, table: &str, key: u64) -> Vec<u8> {
    let db = redb::Database::create(dir.join(STORE_FILE)).unwrap();
    let def: TableDefinition<'_, u64, &[u8]> = TableDefinition::new(table);
    let r = db.begin_read().unwrap();
    let t = r.open_table(def).unwrap();
    let v = t.get(key).unwrap().unwrap().value().to_vec();
    v
}

/// Frames a payload the way the store does (8-byte BLAKE3 check first).
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = Hash::of(payload).as_bytes()[..8].to_vec();
    v.extend_from_slice(payload);
    v
}

fn is_corrupt(e: &ChainError) -> bool {
    matches!(e, ChainError::StoreCorrupt { .. })
}

#[test]
fn corrupt_values_are_errors_not_panics() {
    let dir = tmp("corrupt");
    let (store, _, _) = build(&dir, 8, cfg(5));
    drop(store);

    // A flipped byte in a diff the restart replays (6..=8 after the snapshot at 5).
    let good = raw(&dir, "diffs", 7);
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    poke(&dir, "diffs", 7, Some(&bad));
    let e = reopen(&dir, cfg(5)).unwrap_err();
    assert!(is_corrupt(&e), "{e}");
    // A well-framed value that does not decode.
    poke(&dir, "diffs", 7, Some(&framed(&[0xff; 20])));
    let e = reopen(&dir, cfg(5)).unwrap_err();
    assert!(is_corrupt(&e), "{e}");
    // Too short to hold its check.
    poke(&dir, "diffs", 7, Some(&[1, 2, 3]));
    assert!(is_corrupt(&reopen(&dir, cfg(5)).unwrap_err()));
    // A diff of another height under this key (well formed, consistent in itself).
    poke(&dir, "diffs", 7, Some(&raw(&dir, "diffs", 6)));
    assert!(is_corrupt(&reopen(&dir, cfg(5)).unwrap_err()));
    // A missing diff.
    poke(&dir, "diffs", 7, None);
    assert!(is_corrupt(&reopen(&dir, cfg(5)).unwrap_err()));
    poke(&dir, "diffs", 7, Some(&good));
    let (store, _) = reopen(&dir, cfg(5)).unwrap();
    drop(store);

    // A corrupt snapshot.
    let snap = raw(&dir, "snapshots", 5);
    let mut bad = snap.clone();
    bad[20] ^= 0x40;
    poke(&dir, "snapshots", 5, Some(&bad));
    assert!(is_corrupt(&reopen(&dir, cfg(5)).unwrap_err()));
    poke(&dir, "snapshots", 5, Some(&snap));

    // A corrupt block and certificate: reads fail, the state still loads.
    let mut bad = raw(&dir, "blocks", 3);
    bad[30] ^= 0x01;
    poke(&dir, "blocks", 3, Some(&bad));
    poke(&dir, "certs", 4, Some(&framed(b"garbage")));
    let (store, _) = reopen(&dir, cfg(5)).unwrap();
    assert!(is_corrupt(&store.block(3).unwrap_err()));
    assert!(is_corrupt(&store.certificate(4).unwrap_err()));
    assert!(is_corrupt(&store.blocks_range(1, 8).unwrap_err()));
    assert!(store.block(2).unwrap().is_some());
    drop(store);

    // A corrupt head.
    {
        let db = redb::Database::create(dir.join(STORE_FILE)).unwrap();
        let def: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
        let w = db.begin_write().unwrap();
        w.open_table(def)
            .unwrap()
            .insert("head", framed(&[7; 10]).as_slice())
            .unwrap();
        w.commit().unwrap();
    }
    assert!(is_corrupt(&reopen(&dir, cfg(5)).unwrap_err()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_file_that_is_not_a_database_is_an_error() {
    let dir = tmp("garbage");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(STORE_FILE), vec![0xa5u8; 10_000]).unwrap();
    let e = reopen(&dir, cfg(0)).unwrap_err();
    assert!(matches!(e, ChainError::StoreIo { .. }), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
