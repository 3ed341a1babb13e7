//! Seal/open pipeline: round trips, any-k-of-k+m recovery, and tamper detection (a flipped
//! byte in a shard or manifest gives an error or is repaired, never wrong plaintext).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crypto_accel::{AeadAlgo, ChunkId, CryptoError, Decode, Encode, Hash, Keypair, MerkleTree};
use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use storage_node::{
    open, rebuild_shards, seal, BlockEntry, ChunkStore, Manifest, MemoryShards, OpenParams,
    OpenReport, PipelineError, SealParams, ShardSource, StoreConfig, StoreSink,
};

fn params(k: u8, m: u8, block_size: u32, interval_blocks: u32) -> SealParams {
    SealParams {
        k,
        m,
        block_size,
        interval_blocks,
        ..SealParams::default()
    }
}

fn sample(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn seal_mem(data: &[u8], owner: &Keypair, p: &SealParams) -> (Manifest, MemoryShards) {
    let mut shards = MemoryShards::default();
    let m = seal(data, owner, p, &mut shards, &|_| {}).unwrap();
    (m, shards)
}

fn open_mem(
    m: &Manifest,
    owner: &Keypair,
    src: &dyn ShardSource,
) -> Result<(Vec<u8>, OpenReport), PipelineError> {
    let mut out = Vec::new();
    let r = open(m, owner, src, &mut out, &OpenParams::default(), &|_| {})?;
    Ok((out, r))
}

#[test]
fn round_trips_edge_sizes_and_intervals() {
    let owner = Keypair::from_seed([1; 32]);
    let p = params(4, 2, 4096, 3);
    for len in [
        0,
        1,
        3,
        4095,
        4096,
        4097,
        3 * 4096,
        3 * 4096 + 1,
        10 * 4096 + 17,
    ] {
        let data = sample(len, len as u64);
        let (m, shards) = seal_mem(&data, &owner, &p);
        assert_eq!(m.length, len as u64);
        assert_eq!(m.blocks.len(), len.div_ceil(4096).max(1));
        assert_eq!(m.interval_keys.len(), m.blocks.len().div_ceil(3));
        m.check().unwrap();
        let (out, r) = open_mem(&m, &owner, &shards).unwrap();
        assert_eq!(out, data, "length {len}");
        assert_eq!(r.bytes, len as u64);
        assert_eq!(r.blocks_reconstructed, 0);
        // The manifest survives its own encoding.
        assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
    }
}

#[test]
fn chacha_and_distinct_uploads() {
    let owner = Keypair::from_seed([2; 32]);
    let mut p = params(3, 2, 1000, 1);
    p.algo = AeadAlgo::ChaCha20Poly1305;
    let data = sample(5000, 9);
    let (m1, s1) = seal_mem(&data, &owner, &p);
    let (m2, _) = seal_mem(&data, &owner, &p);
    assert_eq!(open_mem(&m1, &owner, &s1).unwrap().0, data);
    // Fresh interval keys each upload: same plaintext, different ciphertext and data id.
    assert_ne!(m1.root, m2.root);
    assert_ne!(m1.data_id(), m2.data_id());
}

#[test]
fn small_last_block_is_not_padded_to_full_size() {
    let owner = Keypair::from_seed([3; 32]);
    let (m, shards) = seal_mem(b"tiny", &owner, &params(10, 4, 4 << 20, 64));
    let total: usize = shards.shards.values().map(Vec::len).sum();
    assert!(
        total < 14 * 64,
        "a 4-byte file took {total} bytes of shards"
    );
    assert_eq!(open_mem(&m, &owner, &shards).unwrap().0, b"tiny");
}

#[test]
fn any_k_of_every_block_reconstruct_and_k_minus_1_fails() {
    let owner = Keypair::from_seed([4; 32]);
    let (k, m_) = (5usize, 3usize);
    let data = sample(9 * 2000 + 5, 1);
    let (m, mut shards) = seal_mem(&data, &owner, &params(k as u8, m_ as u8, 2000, 4));
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    for b in &m.blocks {
        let mut idx: Vec<usize> = (0..k + m_).collect();
        for i in (1..idx.len()).rev() {
            idx.swap(i, rng.gen_range(0..=i));
        }
        for &i in &idx[..m_] {
            shards.shards.remove(&b.shards[i]).unwrap();
        }
    }
    let (out, r) = open_mem(&m, &owner, &shards).unwrap();
    assert_eq!(out, data);
    assert!(r.blocks_reconstructed > 0);
    // One more shard of block 3 gone: that block is unrecoverable, with a clear count.
    let victim = m.blocks[3]
        .shards
        .iter()
        .find(|id| shards.shards.contains_key(id))
        .copied()
        .unwrap();
    shards.shards.remove(&victim);
    match open_mem(&m, &owner, &shards) {
        Err(
            e @ PipelineError::Unrecoverable {
                block: 3,
                have,
                need,
                ..
            },
        ) => {
            assert_eq!((have, need), (k - 1, k));
            assert!(e.to_string().contains("4 of 5 shards reachable"), "{e}");
        }
        other => panic!("expected Unrecoverable, got {other:?}"),
    }
}

#[test]
fn flipped_byte_in_any_shard_is_caught_and_repaired() {
    let owner = Keypair::from_seed([5; 32]);
    let data = sample(3 * 512, 2);
    let (m, shards) = seal_mem(&data, &owner, &params(3, 1, 512, 2));
    let ids: Vec<ChunkId> = m.blocks.iter().flat_map(|b| b.shards.clone()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for id in ids {
        let len = shards.shards[&id].len();
        // Header, payload and tag positions all get hit across the ids.
        for pos in [
            0,
            5,
            7,
            31,
            32,
            len / 2,
            len - 16,
            len - 1,
            rng.gen_range(0..len),
        ] {
            let mut bad = MemoryShards {
                shards: shards.shards.clone(),
            };
            bad.shards.get_mut(&id).unwrap()[pos] ^= 1 << rng.gen_range(0..8);
            let (out, r) = open_mem(&m, &owner, &bad).unwrap();
            assert_eq!(
                out, data,
                "wrong plaintext after flipping byte {pos} of {id}"
            );
            // The flipped shard was rejected if it was needed (parity is only read when a
            // data shard is missing).
            let idx = m
                .blocks
                .iter()
                .flat_map(|b| &b.shards)
                .position(|x| *x == id)
                .unwrap();
            if idx % 4 < 3 {
                assert_eq!(r.shards_corrupt, 1);
            }
        }
    }
    // With the redundancy used up, a flipped shard is an error, not wrong bytes.
    let mut bad = MemoryShards {
        shards: shards.shards.clone(),
    };
    bad.shards.remove(&m.blocks[1].shards[3]);
    bad.shards.get_mut(&m.blocks[1].shards[0]).unwrap()[40] ^= 4;
    assert!(matches!(
        open_mem(&m, &owner, &bad),
        Err(PipelineError::Unrecoverable {
            block: 1,
            have: 2,
            need: 3,
            corrupt: 1
        })
    ));
}

/// Recomputes ids, roots and the data id after a shard is rewritten, as an attacker who
/// controls both the storage and the manifest could: the AEAD must still refuse.
#[test]
fn tampered_shard_with_matching_manifest_fails_decryption() {
    let owner = Keypair::from_seed([6; 32]);
    let data = sample(2000, 3);
    let (mut m, mut shards) = seal_mem(&data, &owner, &params(2, 1, 1000, 1));
    let old = m.blocks[1].shards[0];
    let mut s = shards.shards.remove(&old).unwrap();
    s[32 + 10] ^= 0x80; // ciphertext of data part 0 of block 1
    let new = ChunkId::of(&s);
    shards.shards.insert(new, s);
    m.blocks[1].shards[0] = new;
    let roots: Vec<Hash> = m.blocks.iter().map(BlockEntry::root).collect();
    m.root = MerkleTree::from_leaves(&roots).root();
    m.check().unwrap();
    match open_mem(&m, &owner, &shards) {
        Err(PipelineError::Crypto(CryptoError::DecryptFailed { block: 1 })) => {}
        other => panic!("expected DecryptFailed for block 1, got {other:?}"),
    }
}

#[test]
fn flipped_byte_anywhere_in_the_manifest_is_an_error() {
    let owner = Keypair::from_seed([7; 32]);
    let data = sample(3000, 4);
    let (m, shards) = seal_mem(&data, &owner, &params(2, 1, 1000, 2));
    let id = m.data_id();
    let bytes = m.to_bytes();
    for pos in 0..bytes.len() {
        let mut b = bytes.clone();
        b[pos] ^= 1 << (pos % 8);
        // The checks `ManifestDir::load` and `open` make, in order.
        let outcome = Manifest::from_bytes(&b)
            .map_err(|e| e.to_string())
            .and_then(|m2| {
                m2.check().map_err(|e| e.to_string())?;
                if m2.data_id() != id {
                    return Err("data id mismatch".into());
                }
                open_mem(&m2, &owner, &shards).map_err(|e| e.to_string())
            });
        assert!(
            outcome.is_err(),
            "flipping manifest byte {pos} went unnoticed"
        );
    }
}

#[test]
fn a_manifest_of_many_empty_blocks_is_refused_while_decoding() {
    let owner = Keypair::from_seed([7; 32]);
    let (m, _) = seal_mem(&sample(3000, 4), &owner, &params(2, 1, 1000, 2));
    let bytes = m.to_bytes();
    // Everything before the block list, then a million blocks of no shard ids: 4 bytes of
    // input each, which used to decode into 24 bytes of memory each before any check.
    let list = 4 + m.blocks.len() * (4 + 3 * 32);
    let head = &bytes[..bytes.len() - 32 - list];
    let mut forged = head.to_vec();
    let n: u32 = 1_000_000;
    forged.extend_from_slice(&n.to_le_bytes());
    forged.extend(std::iter::repeat_n(0u8, 4 * n as usize));
    forged.extend_from_slice(m.root.as_bytes());
    let e = Manifest::from_bytes(&forged).unwrap_err().to_string();
    assert!(e.contains("truncated") || e.contains("need"), "{e}");
    // One block whose list is short by an id is refused too, naming what is wrong.
    let mut short = head.to_vec();
    short.extend_from_slice(&1u32.to_le_bytes());
    short.extend_from_slice(&64u32.to_le_bytes());
    short.extend_from_slice(&[0; 64 + 32]);
    short.extend_from_slice(m.root.as_bytes());
    let e = Manifest::from_bytes(&short).unwrap_err().to_string();
    assert!(e.contains("not k + m shard ids"), "{e}");
}

#[test]
fn a_range_is_clamped_at_the_end_and_refused_past_it() {
    let owner = Keypair::from_seed([8; 32]);
    let data = sample(3000, 4);
    let (m, shards) = seal_mem(&data, &owner, &params(2, 1, 1000, 1));
    let ranged = |range| {
        let mut out = Vec::new();
        let p = OpenParams {
            range: Some(range),
            ..OpenParams::default()
        };
        open(&m, &owner, &shards, &mut out, &p, &|_| {}).map(|_| out)
    };
    assert_eq!(ranged((999, 1001)).unwrap(), data[999..1001]);
    assert_eq!(ranged((2500, u64::MAX)).unwrap(), data[2500..]);
    for start in [3000, 5000] {
        match ranged((start, u64::MAX)) {
            Err(e @ PipelineError::RangeOutside { .. }) => {
                assert!(e.to_string().contains("3000 bytes"), "{e}")
            }
            other => panic!("{start}: {other:?}"),
        }
    }
}

#[test]
fn wrong_key_is_refused() {
    let owner = Keypair::from_seed([8; 32]);
    let (m, shards) = seal_mem(b"secret readings", &owner, &params(2, 1, 1000, 1));
    let other = Keypair::from_seed([9; 32]);
    assert!(matches!(
        open_mem(&m, &other, &shards),
        Err(PipelineError::NotOwner { .. })
    ));
    // Even with the owner field forged to the other key, its wrapping key cannot unwrap.
    let mut forged = m.clone();
    forged.owner = other.public();
    assert!(matches!(
        open_mem(&forged, &other, &shards),
        Err(PipelineError::Crypto(CryptoError::DecryptFailed { .. }))
    ));
}

#[test]
fn bad_params_are_errors() {
    let owner = Keypair::from_seed([1; 32]);
    let mut sink = MemoryShards::default();
    for p in [
        params(0, 1, 10, 1),
        params(1, 0, 10, 1),
        params(2, 1, 0, 1),
        params(2, 1, 10, 0),
    ] {
        assert!(seal(&b"x"[..], &owner, &p, &mut sink, &|_| {}).is_err());
    }
}

#[test]
fn seal_into_store_and_open_after_disk_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let owner = Keypair::from_seed([10; 32]);
    let data = sample(5 * 8192 + 1, 5);
    let p = params(4, 2, 8192, 2);
    let m = {
        let store = ChunkStore::open(dir.path(), StoreConfig::default()).unwrap();
        let m = seal(&data[..], &owner, &p, &mut StoreSink::new(&store), &|_| {}).unwrap();
        store.close().unwrap();
        m
    };
    // Reopen (recovery path) and read everything back.
    let store = ChunkStore::open(dir.path(), StoreConfig::default()).unwrap();
    let (out, r) = open_mem(&m, &owner, &store).unwrap();
    assert_eq!(out, data);
    assert_eq!(r.shards_corrupt, 0);
    // Remove two shards of block 0: still readable from parity.
    store.delete(&m.blocks[0].shards[0]).unwrap();
    store.delete(&m.blocks[0].shards[1]).unwrap();
    let (out, r) = open_mem(&m, &owner, &store).unwrap();
    assert_eq!(out, data);
    assert_eq!(r.blocks_reconstructed, 1);
    store.close().unwrap();

    // Flip one byte of block 2's first data shard inside the segment file on disk.
    let victim = m.blocks[2].shards[0];
    let needle = {
        let store = ChunkStore::open(dir.path(), StoreConfig::default()).unwrap();
        let bytes = store.get(&victim).unwrap();
        store.close().unwrap();
        bytes
    };
    let mut flipped = false;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(pos) = bytes.windows(needle.len()).position(|w| w == &needle[..]) {
            bytes[pos + needle.len() / 2] ^= 0x10;
            std::fs::write(&path, &bytes).unwrap();
            flipped = true;
        }
    }
    assert!(flipped, "shard bytes not found in any store file");
    let store = ChunkStore::open(dir.path(), StoreConfig::default()).unwrap();
    assert!(
        store.get(&victim).is_err(),
        "store returned a corrupted shard"
    );
    let (out, r) = open_mem(&m, &owner, &store).unwrap();
    assert_eq!(out, data);
    assert_eq!(r.shards_corrupt, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_shapes_round_trip(
        len in 0usize..20_000,
        k in 1u8..8,
        m in 1u8..4,
        block in 64u32..5000,
        interval in 1u32..4,
        window in 0usize..4,
    ) {
        let owner = Keypair::from_seed([11; 32]);
        let data = sample(len, len as u64);
        let mut p = params(k, m, block, interval);
        p.window = window;
        let (man, shards) = seal_mem(&data, &owner, &p);
        let (out, _) = open_mem(&man, &owner, &shards).unwrap();
        prop_assert_eq!(out, data);
    }
}

#[test]
fn one_thread_pool_takes_the_sequential_path_and_agrees() {
    let owner = Keypair::from_seed([12; 32]);
    let data = sample(7 * 1000 + 3, 12);
    let p = params(3, 2, 1000, 2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (m, shards) = pool.install(|| seal_mem(&data, &owner, &p));
    assert_eq!(m.blocks.len(), 8);
    assert_eq!(m.interval_keys.len(), 4);
    assert_eq!(open_mem(&m, &owner, &shards).unwrap().0, data);
}

/// An input that fails after `ok` bytes.
struct FailingReader {
    ok: usize,
}

impl std::io::Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.ok == 0 {
            return Err(std::io::Error::other("disk on fire"));
        }
        let n = buf.len().min(self.ok);
        buf[..n].fill(7);
        self.ok -= n;
        Ok(n)
    }
}

/// A sink that refuses the put that would take it past `shards_left` shards. Counting shards
/// rather than puts makes it fail however the collector batches blocks (with several threads
/// the first put may already hold every block).
struct FailingSink {
    shards_left: usize,
}

impl storage_node::ShardSink for FailingSink {
    fn put(&mut self, shards: &mut Vec<storage_node::Shard>) -> Result<(), PipelineError> {
        if shards.len() > self.shards_left {
            return Err(PipelineError::BadParams("sink refused".into()));
        }
        self.shards_left -= shards.len();
        Ok(())
    }
    fn flush(&mut self) -> Result<(), PipelineError> {
        Ok(())
    }
}

#[test]
fn failures_in_any_stage_are_reported_without_hanging() {
    let owner = Keypair::from_seed([13; 32]);
    let p = params(2, 1, 1000, 4);
    for threads in [1, 2, 4] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            // The input fails part-way through.
            for ok in [0, 1, 999, 1000, 5500] {
                let r = seal(
                    FailingReader { ok },
                    &owner,
                    &p,
                    &mut MemoryShards::default(),
                    &|_| {},
                );
                assert!(
                    matches!(r, Err(PipelineError::Read(_))),
                    "{threads} threads, fail after {ok}: {r:?}"
                );
            }
            // The sink fails part-way through a long input (50 blocks × 3 shards).
            for shards_left in [0, 3, 40, 149] {
                let data = sample(50_000, 1);
                let r = seal(
                    &data[..],
                    &owner,
                    &p,
                    &mut FailingSink { shards_left },
                    &|_| {},
                );
                assert!(
                    matches!(&r, Err(PipelineError::BadParams(s)) if s == "sink refused"),
                    "{threads} threads, sink fails after {shards_left} shards: {r:?}"
                );
            }
        });
    }
}

#[test]
fn rebuild_restores_exact_shards_from_any_k_and_refuses_fewer() {
    let owner = Keypair::generate();
    // 3 blocks, the last one short.
    let data = sample(2 * 65_536 + 10_001, 21);
    let (m, shards) = seal_mem(&data, &owner, &params(4, 3, 65_536, 2));
    for (b, e) in m.blocks.iter().enumerate() {
        // Keep shards 1, 3, 5, 6 (any k = 4); rebuild 0, 2 and 4.
        let have: Vec<(u8, Vec<u8>)> = [1u8, 3, 5, 6]
            .iter()
            .map(|i| (*i, shards.shards[&e.shards[usize::from(*i)]].clone()))
            .collect();
        let rebuilt = rebuild_shards(&m, b, &have, &[0, 2, 4]).unwrap();
        for (i, bytes) in rebuilt {
            assert_eq!(
                ChunkId::of(&bytes),
                e.shards[usize::from(i)],
                "block {b} shard {i}"
            );
        }
        // A wrong shard among the inputs does not count; three good ones are not enough.
        let mut bad = have.clone();
        bad[0].1[40] ^= 1;
        assert!(matches!(
            rebuild_shards(&m, b, &bad, &[0]),
            Err(PipelineError::Unrecoverable {
                have: 3,
                need: 4,
                ..
            })
        ));
        assert!(rebuild_shards(&m, b, &have, &[7]).is_err());
    }
}
