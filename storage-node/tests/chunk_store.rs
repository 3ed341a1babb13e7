//! Behaviour of the chunk store, run once per write backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crypto_accel::ChunkId;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use storage_node::{BackendChoice, ChunkStore, StoreConfig, StoreError};

fn id(n: u64) -> ChunkId {
    ChunkId::of_parts(&[b"chunk-store-test", &n.to_le_bytes()])
}

fn bytes(n: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    ChaCha8Rng::seed_from_u64(n).fill_bytes(&mut v);
    v
}

/// Opens a store, or `None` when the io_uring backend was asked for but the kernel refuses it
/// (the test is then skipped with a note, so CI containers without io_uring still pass).
fn open_with(
    dir: &Path,
    backend: BackendChoice,
    tweak: impl FnOnce(&mut StoreConfig),
) -> Option<ChunkStore> {
    let mut cfg = StoreConfig {
        backend,
        ..StoreConfig::default()
    };
    tweak(&mut cfg);
    match ChunkStore::open(dir, cfg) {
        Ok(s) => Some(s),
        Err(StoreError::IoUringUnavailable { reason }) => {
            eprintln!("skipping: io_uring unavailable here ({reason})");
            None
        }
        Err(e) => panic!("open {}: {e}", dir.display()),
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .collect();
    v.sort();
    v
}

const HEADER: u64 = 64;

/// What `region` sends over a loopback TCP connection.
fn send_region(region: &storage_node::ChunkRegion) -> Vec<u8> {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let region = region.clone();
    let sender = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        region.send_to(&sock, deadline).unwrap();
    });
    let mut got = Vec::new();
    std::net::TcpStream::connect(addr)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    sender.join().unwrap();
    got
}

macro_rules! backend_tests {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            fn open(dir: &Path) -> Option<ChunkStore> {
                open_with(dir, $backend, |_| {})
            }

            fn open_cfg(dir: &Path, tweak: impl FnOnce(&mut StoreConfig)) -> Option<ChunkStore> {
                open_with(dir, $backend, tweak)
            }

            #[test]
            fn put_get_round_trip() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                let sizes = [0usize, 1, 63, 4096, 65_536, 1 << 20];
                for (n, len) in sizes.iter().enumerate() {
                    store.put(id(n as u64), bytes(n as u64, *len)).unwrap();
                }
                for (n, len) in sizes.iter().enumerate() {
                    assert!(store.contains(&id(n as u64)));
                    assert_eq!(store.get(&id(n as u64)).unwrap(), bytes(n as u64, *len));
                }
                assert!(matches!(store.get(&id(99)), Err(StoreError::NotFound { id: x }) if x == id(99)));
                assert!(!store.contains(&id(99)));
                let st = store.stats();
                assert_eq!(st.chunks, sizes.len() as u64);
                assert_eq!(st.live_bytes, sizes.iter().sum::<usize>() as u64);
                assert_eq!(st.disk_bytes, st.live_bytes + HEADER * sizes.len() as u64);
                store.close().unwrap();
            }

            #[test]
            fn get_into_appends_after_what_is_there_and_keeps_it_on_errors() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                // Neighbours on both sides, so a read that ran past a record would show.
                for n in 0..3u64 {
                    store.put(id(n), bytes(n, 70_000 + n as usize)).unwrap();
                }
                // Exact room, a little spare room, and a large reused buffer.
                for spare in [0usize, 100, 4 << 20] {
                    let mut out = Vec::with_capacity(3 + 70_001 + spare);
                    out.extend_from_slice(b"hdr");
                    store.get_into(&id(1), &mut out).unwrap();
                    assert_eq!(&out[..3], b"hdr");
                    assert_eq!(&out[3..], &bytes(1, 70_001)[..], "spare {spare}");
                }
                let mut out = b"keep".to_vec();
                assert!(matches!(
                    store.get_into(&id(9), &mut out),
                    Err(StoreError::NotFound { .. })
                ));
                assert_eq!(out, b"keep");
                store.close().unwrap();
            }

            #[test]
            fn get_into_with_room_leaves_room_for_a_trailer_that_does_not_move_the_bytes() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                for n in 0..3u64 {
                    store.put(id(n), bytes(n, 100_000 + n as usize)).unwrap();
                }
                // A fresh buffer, one that already fits the chunk but not the trailer, and a
                // large reused one.
                for cap in [0usize, 4 + 100_001, 4 << 20] {
                    let mut out = Vec::with_capacity(cap);
                    out.extend_from_slice(&[0; 4]);
                    store.get_into_with_room(&id(1), &mut out, 17).unwrap();
                    assert_eq!(&out[4..], &bytes(1, 100_001)[..], "capacity {cap}");
                    let at = out.as_ptr();
                    out.extend_from_slice(&[7; 17]);
                    assert_eq!(out.as_ptr(), at, "the trailer moved the frame (capacity {cap})");
                }
                store.close().unwrap();
            }

            #[test]
            fn re_put_is_idempotent() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                store.put(id(1), b"first".to_vec()).unwrap();
                let disk = store.stats().disk_bytes;
                store.put(id(1), b"second".to_vec()).unwrap();
                // Same key twice in one batch is written once, too.
                store.submit(vec![(id(2), b"a".to_vec()), (id(2), b"b".to_vec())]).unwrap().wait().unwrap();
                assert_eq!(store.get(&id(1)).unwrap(), b"first");
                assert_eq!(store.get(&id(2)).unwrap(), b"a");
                assert_eq!(store.stats().disk_bytes, disk + HEADER + 1);
                assert_eq!(store.stats().chunks, 2);
            }

            #[test]
            fn restart_recovers_index() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open_cfg(dir.path(), |c| c.segment_bytes = 64 << 10) else { return };
                for n in 0..200 {
                    store.put(id(n), bytes(n, (n as usize * 37) % 5000)).unwrap();
                }
                let before = store.stats();
                assert!(before.segments > 5, "{before:?}");
                store.close().unwrap();
                let store = open_cfg(dir.path(), |c| c.segment_bytes = 64 << 10).unwrap();
                assert_eq!(store.recovery().truncated_bytes, 0);
                assert!(store.recovery().damaged.is_empty());
                let after = store.stats();
                assert_eq!((after.chunks, after.live_bytes, after.disk_bytes), (before.chunks, before.live_bytes, before.disk_bytes));
                for n in 0..200 {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, (n as usize * 37) % 5000), "chunk {n}");
                }
                // Appends continue after the recovered tail.
                store.put(id(1000), bytes(1000, 10)).unwrap();
                drop(store);
                let store = open(dir.path()).unwrap();
                assert_eq!(store.get(&id(1000)).unwrap(), bytes(1000, 10));
                assert_eq!(store.stats().chunks, 201);
            }

            #[test]
            fn delete_survives_restart() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                for n in 0..10 {
                    store.put(id(n), bytes(n, 1000)).unwrap();
                }
                assert!(store.delete(&id(3)).unwrap());
                assert!(!store.delete(&id(3)).unwrap());
                assert!(!store.delete(&id(77)).unwrap());
                assert!(matches!(store.get(&id(3)), Err(StoreError::NotFound { .. })));
                store.close().unwrap();
                let store = open(dir.path()).unwrap();
                assert!(!store.contains(&id(3)));
                assert_eq!(store.stats().chunks, 9);
                for n in (0..10).filter(|n| *n != 3) {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 1000));
                }
                // Deleted keys can be stored again.
                store.put(id(3), b"again".to_vec()).unwrap();
                drop(store);
                assert_eq!(open(dir.path()).unwrap().get(&id(3)).unwrap(), b"again");
            }

            #[test]
            fn delete_and_compact_reclaim_disk() {
                let dir = tempfile::tempdir().unwrap();
                let seg = |c: &mut StoreConfig| c.segment_bytes = 32 << 10;
                let Some(store) = open_cfg(dir.path(), seg) else { return };
                for n in 0..100 {
                    store.put(id(n), bytes(n, 3000)).unwrap();
                }
                let full = store.stats();
                for n in (0..100).filter(|n| n % 10 != 0) {
                    assert!(store.delete(&id(n)).unwrap());
                }
                // The writer also compacts on its own when idle, so the explicit run may find
                // little left to do; what matters is the disk use afterwards.
                let report = store.compact().unwrap();
                let after = store.stats();
                assert!(after.disk_bytes * 4 < full.disk_bytes, "{full:?} -> {after:?} ({report:?})");
                assert!(after.segments < full.segments);
                for n in (0..100).step_by(10) {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 3000));
                }
                store.close().unwrap();
                let store = open_cfg(dir.path(), seg).unwrap();
                assert_eq!(store.stats().chunks, 10);
                for n in 0..100 {
                    if n % 10 == 0 {
                        assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 3000));
                    } else {
                        assert!(!store.contains(&id(n)), "deleted chunk {n} came back");
                    }
                }
                // Deleting the rest and compacting again leaves almost nothing behind.
                for n in (0..100).step_by(10) {
                    store.delete(&id(n)).unwrap();
                }
                store.compact().unwrap();
                assert!(store.stats().disk_bytes < 1000, "{:?}", store.stats());
                drop(store);
                let store = open_cfg(dir.path(), seg).unwrap();
                assert_eq!(store.stats().chunks, 0);
            }

            #[test]
            fn full_store_refuses_then_recovers_after_deletes() {
                let dir = tempfile::tempdir().unwrap();
                let cfg = |c: &mut StoreConfig| {
                    c.capacity_bytes = 200 << 10;
                    c.segment_bytes = 32 << 10;
                };
                let Some(store) = open_cfg(dir.path(), cfg) else { return };
                let mut stored = Vec::new();
                let err = loop {
                    let n = stored.len() as u64;
                    match store.put(id(n), bytes(n, 4000)) {
                        Ok(()) => stored.push(n),
                        Err(e) => break e,
                    }
                };
                let StoreError::Full { need, free, capacity } = err else { panic!("expected Full, got {err}") };
                assert_eq!(capacity, 200 << 10);
                assert!(need > free);
                let msg = StoreError::Full { need, free, capacity }.to_string();
                assert!(msg.starts_with("store full") && msg.contains("capacity_bytes"), "{msg}");
                assert!(stored.len() >= 45, "only {} chunks fit", stored.len());
                assert!(store.stats().disk_bytes <= 200 << 10);
                for &n in &stored {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 4000));
                }
                // Deletes work while full; the next put compacts to make room.
                for &n in stored.iter().filter(|n| *n % 2 == 0) {
                    assert!(store.delete(&id(n)).unwrap());
                }
                for n in 1000..1010 {
                    store.put(id(n), bytes(n, 4000)).unwrap();
                }
                assert!(store.stats().disk_bytes <= (200 << 10) + (32 << 10));
                drop(store);
                let store = open_cfg(dir.path(), cfg).unwrap();
                for &n in &stored {
                    assert_eq!(store.contains(&id(n)), n % 2 == 1, "chunk {n}");
                }
                for n in 1000..1010 {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 4000));
                }
            }

            #[test]
            fn flipped_payload_byte_is_reported_corrupt() {
                let dir = tempfile::tempdir().unwrap();
                // One 4 KiB chunk per segment, so chunk 0 ends up in a sealed segment.
                let cfg = |c: &mut StoreConfig| c.segment_bytes = 6000;
                let Some(store) = open_cfg(dir.path(), cfg) else { return };
                for n in 0..3 {
                    store.put(id(n), bytes(n, 4096)).unwrap();
                }
                let segs = segment_files(dir.path());
                assert_eq!(segs.len(), 3);
                let f = OpenOptions::new().read(true).write(true).open(&segs[0]).unwrap();
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, HEADER + 1234).unwrap();
                f.write_all_at(&[b[0] ^ 0x10], HEADER + 1234).unwrap();
                let check = |store: &ChunkStore| {
                    match store.get(&id(0)) {
                        Err(StoreError::Corrupt { id: bad, reason }) => {
                            assert_eq!(bad, id(0));
                            assert!(reason.contains("checksum"), "{reason}");
                        }
                        other => panic!("expected Corrupt, got {other:?}"),
                    }
                    for n in 1..3 {
                        assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 4096));
                    }
                };
                check(&store);
                assert!(StoreError::Corrupt { id: id(0), reason: "x".into() }.to_string().contains(&id(0).to_hex()));
                store.close().unwrap();
                let store = open_cfg(dir.path(), cfg).unwrap();
                check(&store);
            }

            #[test]
            fn torn_tail_is_truncated() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                for n in 0..20 {
                    store.put(id(n), bytes(n, 3000)).unwrap();
                }
                store.close().unwrap();
                let seg = segment_files(dir.path()).pop().unwrap();
                let len = std::fs::metadata(&seg).unwrap().len();

                // Garbage after the last record (a torn header).
                let f = OpenOptions::new().append(true).open(&seg).unwrap();
                f.write_all_at(&[0xAB; 100], len).unwrap();
                drop(f);
                let store = open(dir.path()).unwrap();
                assert_eq!(store.recovery().truncated_bytes, 100);
                assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
                for n in 0..20 {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 3000));
                }
                store.close().unwrap();

                // A half-written last record (short payload).
                let f = OpenOptions::new().write(true).open(&seg).unwrap();
                f.set_len(len - 1000).unwrap();
                drop(f);
                let store = open(dir.path()).unwrap();
                assert_eq!(store.recovery().truncated_bytes, HEADER + 3000 - 1000);
                assert!(!store.contains(&id(19)));
                for n in 0..19 {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 3000));
                }
                // Writing continues at the cut, and the result reopens cleanly.
                store.put(id(19), bytes(19, 3000)).unwrap();
                store.close().unwrap();
                let store = open(dir.path()).unwrap();
                assert_eq!(store.recovery().truncated_bytes, 0);
                assert_eq!(store.get(&id(19)).unwrap(), bytes(19, 3000));

                // A bad payload checksum in the tail record is cut too.
                store.close().unwrap();
                let f = OpenOptions::new().read(true).write(true).open(&seg).unwrap();
                f.write_all_at(&[0x5A], len - 10).unwrap();
                drop(f);
                let store = open(dir.path()).unwrap();
                assert_eq!(store.recovery().truncated_bytes, HEADER + 3000);
                assert!(!store.contains(&id(19)));
                assert_eq!(store.stats().chunks, 19);
            }

            #[test]
            fn damage_inside_last_segment_keeps_later_records() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                for n in 0..10 {
                    store.put(id(n), bytes(n, 3000)).unwrap();
                }
                store.close().unwrap();
                let seg = segment_files(dir.path()).pop().unwrap();
                // Flip a payload byte of chunk 4 (records are 64 + 3000 bytes).
                let at = 4 * (HEADER + 3000) + HEADER + 17;
                let f = OpenOptions::new().read(true).write(true).open(&seg).unwrap();
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, at).unwrap();
                f.write_all_at(&[!b[0]], at).unwrap();
                drop(f);
                let store = open(dir.path()).unwrap();
                assert_eq!(store.recovery().truncated_bytes, 0);
                assert_eq!(store.recovery().damaged.len(), 1, "{:?}", store.recovery());
                assert!(matches!(store.get(&id(4)), Err(StoreError::Corrupt { id: x, .. }) if x == id(4)));
                for n in (0..10).filter(|n| *n != 4) {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 3000), "chunk {n}");
                }
                // The damaged chunk can be deleted and stored again.
                assert!(store.delete(&id(4)).unwrap());
                store.put(id(4), bytes(4, 3000)).unwrap();
                assert_eq!(store.get(&id(4)).unwrap(), bytes(4, 3000));
            }

            #[test]
            fn concurrent_writers_share_syncs() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                const THREADS: u64 = 64;
                const PER_THREAD: u64 = 20;
                std::thread::scope(|s| {
                    for t in 0..THREADS {
                        let store = store.clone();
                        s.spawn(move || {
                            for k in 0..PER_THREAD {
                                let n = t * 1000 + k;
                                store.put(id(n), bytes(n, 4096)).unwrap();
                            }
                        });
                    }
                });
                let st = store.stats();
                let puts = THREADS * PER_THREAD;
                assert_eq!(st.chunks, puts);
                eprintln!("{} puts, {} fdatasyncs ({})", puts, st.syncs, st.backend);
                assert!(st.syncs * 4 < puts, "group commit did not happen: {st:?}");
                for t in 0..THREADS {
                    for k in 0..PER_THREAD {
                        let n = t * 1000 + k;
                        assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 4096));
                    }
                }
            }

            #[test]
            fn a_region_sends_the_stored_bytes_even_after_compaction_unlinks_its_segment() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open_cfg(dir.path(), |c| c.segment_bytes = 32 << 10) else { return };
                for n in 0..60 {
                    store.put(id(n), bytes(n, 3000)).unwrap();
                }
                let regions: Vec<_> = (0..60)
                    .step_by(10)
                    .map(|n| (n, store.region(&id(n)).unwrap()))
                    .collect();
                let first_segments = segment_files(dir.path());
                for n in (0..60).filter(|n| n % 10 != 0) {
                    store.delete(&id(n)).unwrap();
                }
                store.compact().unwrap();
                assert!(
                    !segment_files(dir.path()).contains(&first_segments[0]),
                    "compaction kept the first segment"
                );
                for (n, r) in &regions {
                    assert_eq!(r.len(), 3000);
                    assert_eq!(send_region(r), bytes(*n, 3000), "chunk {n}");
                }
                assert!(matches!(store.region(&id(1)), Err(StoreError::NotFound { .. })));
            }

            #[test]
            fn reads_stay_correct_during_compaction() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open_cfg(dir.path(), |c| c.segment_bytes = 16 << 10) else { return };
                for n in 0..300 {
                    store.put(id(n), bytes(n, 1500)).unwrap();
                }
                let stop = Arc::new(AtomicBool::new(false));
                let readers: Vec<_> = (0..4)
                    .map(|r| {
                        let store = store.clone();
                        let stop = Arc::clone(&stop);
                        std::thread::spawn(move || {
                            let mut rng = ChaCha8Rng::seed_from_u64(r);
                            let mut reads = 0u64;
                            while !stop.load(Ordering::Relaxed) || reads < 100 {
                                // Multiples of 3 are never deleted.
                                let n = rng.gen_range(0..100) * 3;
                                assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 1500), "chunk {n}");
                                reads += 1;
                            }
                        })
                    })
                    .collect();
                for n in (0..300).filter(|n| n % 3 != 0) {
                    store.delete(&id(n)).unwrap();
                    if n % 50 == 1 {
                        store.compact().unwrap();
                    }
                }
                store.compact().unwrap();
                stop.store(true, Ordering::Relaxed);
                for r in readers {
                    r.join().unwrap();
                }
                assert_eq!(store.stats().chunks, 100);
            }

            #[test]
            fn second_open_is_locked() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                match ChunkStore::open(dir.path(), StoreConfig { backend: $backend, ..StoreConfig::default() }) {
                    Err(e @ StoreError::Locked { .. }) => assert!(e.to_string().contains("locked"), "{e}"),
                    other => panic!("expected Locked, got {other:?}"),
                }
                store.close().unwrap();
                open(dir.path()).unwrap();
            }

            #[test]
            fn oversized_chunk_is_refused() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open_cfg(dir.path(), |c| c.max_chunk_bytes = 1024) else { return };
                match store.put(id(1), vec![0; 1025]) {
                    Err(StoreError::TooLarge { len: 1025, max: 1024 }) => {}
                    other => panic!("expected TooLarge, got {other:?}"),
                }
                store.put(id(1), vec![7; 1024]).unwrap();
                assert_eq!(store.get(&id(1)).unwrap(), vec![7; 1024]);
            }

            #[test]
            fn async_submit_and_closed_handles() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(async {
                    let tickets: Vec<_> = {
                        let mut v = Vec::new();
                        for n in 0..10 {
                            v.push(store.submit_async(vec![(id(n), bytes(n, 100))]).await.unwrap());
                        }
                        v
                    };
                    for t in tickets {
                        t.wait_async().await.unwrap();
                    }
                });
                for n in 0..10 {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 100));
                }
                let other = store.clone();
                store.close().unwrap();
                assert!(matches!(other.put(id(50), vec![1]), Err(StoreError::Closed)));
                assert!(matches!(other.delete(&id(1)), Err(StoreError::Closed)));
                // Reads keep working on the remaining handle.
                assert_eq!(other.get(&id(1)).unwrap(), bytes(1, 100));
            }

            #[test]
            fn unsynced_puts_then_sync_round_trip() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                let len = |n: u64| (n as usize * 131) % 9000;
                let mut tickets = std::collections::VecDeque::new();
                for n in 0..200 {
                    tickets.push_back(store.submit_unsynced(vec![(id(n), bytes(n, len(n)))]).unwrap());
                    if tickets.len() > 4 {
                        tickets.pop_front().unwrap().wait().unwrap();
                    }
                }
                for t in tickets {
                    t.wait().unwrap();
                }
                // Written and indexed (readable) without a single fdatasync.
                assert_eq!(store.stats().syncs, 0, "{:?}", store.stats());
                for n in 0..200 {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, len(n)), "chunk {n}");
                }
                store.sync().unwrap();
                assert_eq!(store.stats().syncs, 1);
                // A barrier with nothing new to cover does not sync again.
                store.sync().unwrap();
                assert_eq!(store.stats().syncs, 1);
                let before = store.stats();
                assert_eq!(before.chunks, 200);
                store.close().unwrap();
                let store = open(dir.path()).unwrap();
                assert_eq!(store.recovery().truncated_bytes, 0);
                let after = store.stats();
                assert_eq!((after.chunks, after.live_bytes, after.disk_bytes), (before.chunks, before.live_bytes, before.disk_bytes));
                for n in 0..200 {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, len(n)), "chunk {n}");
                }
            }

            #[test]
            fn unsynced_puts_need_far_fewer_syncs() {
                let synced = {
                    let dir = tempfile::tempdir().unwrap();
                    let Some(store) = open(dir.path()) else { return };
                    for n in 0..200 {
                        store.put(id(n), bytes(n, 4096)).unwrap();
                    }
                    store.stats().syncs
                };
                let dir = tempfile::tempdir().unwrap();
                let store = open(dir.path()).unwrap();
                let tickets: Vec<_> = (0..200).map(|n| store.submit_unsynced(vec![(id(n), bytes(n, 4096))]).unwrap()).collect();
                for t in tickets {
                    t.wait().unwrap();
                }
                store.sync().unwrap();
                let unsynced = store.stats().syncs;
                eprintln!("200 puts: {synced} fdatasyncs synced, {unsynced} unsynced + sync()");
                assert!(synced >= 100, "{synced}");
                assert_eq!(unsynced, 1);
            }

            #[test]
            fn unsynced_puts_follow_store_rules() {
                let dir = tempfile::tempdir().unwrap();
                let cfg = |c: &mut StoreConfig| {
                    c.capacity_bytes = 100 << 10;
                    c.segment_bytes = 16 << 10;
                    c.max_chunk_bytes = 8 << 10;
                };
                let Some(store) = open_cfg(dir.path(), cfg) else { return };
                // Idempotent against unsynced and synced puts alike, also within one request.
                store.submit_unsynced(vec![(id(1), b"first".to_vec()), (id(1), b"dup".to_vec())]).unwrap().wait().unwrap();
                store.put(id(1), b"second".to_vec()).unwrap();
                store.submit_unsynced(vec![(id(1), b"third".to_vec())]).unwrap().wait().unwrap();
                assert_eq!(store.get(&id(1)).unwrap(), b"first");
                // Deletes see unsynced puts; size limits apply.
                assert!(store.delete(&id(1)).unwrap());
                assert!(matches!(store.submit_unsynced(vec![(id(2), vec![0; 9000])]), Err(StoreError::TooLarge { .. })));
                // Fill the store through unsynced puts, rotating many segments.
                let mut stored = Vec::new();
                let err = loop {
                    let n = 100 + stored.len() as u64;
                    match store.submit_unsynced(vec![(id(n), bytes(n, 3000))]).unwrap().wait() {
                        Ok(()) => stored.push(n),
                        Err(e) => break e,
                    }
                };
                assert!(matches!(err, StoreError::Full { .. }), "{err}");
                assert!(store.stats().segments > 4, "{:?}", store.stats());
                store.sync().unwrap();
                drop(store);
                let store = open_cfg(dir.path(), cfg).unwrap();
                assert!(!store.contains(&id(1)));
                for &n in &stored {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 3000), "chunk {n}");
                }
            }

            #[test]
            fn unsynced_async_and_sync_async() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
                rt.block_on(async {
                    let mut tickets = Vec::new();
                    for n in 0..20 {
                        tickets.push(store.submit_unsynced_async(vec![(id(n), bytes(n, 5000))]).await.unwrap());
                    }
                    for t in tickets {
                        t.wait_async().await.unwrap();
                    }
                    store.sync_async().await.unwrap();
                });
                assert_eq!(store.stats().syncs, 1);
                let other = store.clone();
                store.close().unwrap();
                assert!(matches!(other.sync(), Err(StoreError::Closed)));
                assert!(matches!(other.submit_unsynced(vec![(id(99), vec![1])]), Err(StoreError::Closed)));
                drop(other); // releases the directory lock
                let store = open(dir.path()).unwrap();
                for n in 0..20 {
                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 5000));
                }
            }

            /// Requests queued behind a batch whose sync is in flight must see that batch's
            /// keys (written, not yet indexed): a second put of the same key stays a no-op and
            /// a delete finds it.
            #[test]
            fn pipelined_batches_see_keys_in_flight() {
                let dir = tempfile::tempdir().unwrap();
                let Some(store) = open(dir.path()) else { return };
                std::thread::scope(|s| {
                    for t in 0..16u64 {
                        let store = store.clone();
                        s.spawn(move || {
                            for k in 0..30u64 {
                                let n = t * 1000 + k;
                                let a = store.submit(vec![(id(n), bytes(n, 2000))]).unwrap();
                                let b = if k % 2 == 0 {
                                    store.submit(vec![(id(n), bytes(n + 1, 2000))]).unwrap()
                                } else {
                                    store.submit_unsynced(vec![(id(n), bytes(n + 1, 2000))]).unwrap()
                                };
                                if k % 3 == 0 {
                                    assert!(store.delete(&id(n)).unwrap(), "delete of queued put {n}");
                                    a.wait().unwrap();
                                    b.wait().unwrap();
                                    assert!(!store.contains(&id(n)));
                                } else {
                                    a.wait().unwrap();
                                    b.wait().unwrap();
                                    assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 2000), "chunk {n}");
                                }
                            }
                        });
                    }
                });
                let st = store.stats();
                assert_eq!(st.chunks, 16 * 20);
                assert_eq!(st.disk_bytes, 16 * (30 * (HEADER + 2000) + 10 * HEADER));
                store.close().unwrap();
                let store = open(dir.path()).unwrap();
                assert_eq!(store.stats().chunks, 16 * 20);
                for t in 0..16u64 {
                    for k in (0..30u64).filter(|k| k % 3 != 0) {
                        let n = t * 1000 + k;
                        assert_eq!(store.get(&id(n)).unwrap(), bytes(n, 2000), "chunk {n}");
                    }
                }
            }
        }
    };
}

backend_tests!(portable, BackendChoice::Portable);
backend_tests!(io_uring, BackendChoice::IoUring);

#[test]
fn auto_backend_is_reported_and_formats_interoperate() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), BackendChoice::Auto, |_| {}).unwrap();
    eprintln!("auto chose {}", store.backend());
    assert_eq!(store.stats().backend, store.backend());
    store.put(id(1), bytes(1, 10)).unwrap();
    store.close().unwrap();
    let store = open_with(dir.path(), BackendChoice::Portable, |_| {}).unwrap();
    assert_eq!(store.get(&id(1)).unwrap(), bytes(1, 10));
}

#[test]
fn bad_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        compact_garbage_ratio: 0.0,
        ..StoreConfig::default()
    };
    assert!(matches!(
        ChunkStore::open(dir.path(), cfg),
        Err(StoreError::BadConfig(_))
    ));
}
