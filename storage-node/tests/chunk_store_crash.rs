//! Crash test: `kill -9` a process writing to the chunk store at random moments, then check
//! that every acknowledged put survived with its exact bytes and no acknowledged delete came
//! back. Each backend gets its own directory, reused across all its kills, so recovery also
//! runs on stores that earlier recoveries repaired. Every other round the child runs with
//! `--unsynced` (`submit_unsynced` batches + `sync()` barriers, ACK only after the barrier), so
//! both write paths are killed on the same, repeatedly recovered store.
//!
//! Replay a failure with `CRASH_SEED=<seed printed on failure> cargo test --test chunk_store_crash`
//! (kill timing still varies from run to run, the seeds fix keys, sizes and kill delays).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crypto_accel::ChunkId;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use storage_node::torture::{chunk_bytes, chunk_id};
use storage_node::{BackendChoice, ChunkStore, StoreConfig, StoreError};

const KILLS_PER_BACKEND: usize = 50;
const THREADS: u64 = 4;
const MAX_SIZE: u32 = 256 << 10;
/// After each round the parent deletes chunks beyond this many, so verification stays fast.
const KEEP: usize = 150;
/// How far (per thread) unreported puts may lie beyond the highest reported index: a batch of
/// up to 4 chunks by default; unsynced mode writes up to 4 batches of 8 chunks before a
/// barrier reports them.
const UNREPORTED_PER_THREAD: u64 = 8;
const UNREPORTED_PER_THREAD_UNSYNCED: u64 = 40;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Stored, with contents hashing to this.
    Present(ChunkId),
    /// Must never be seen again.
    Absent,
}

/// Prints the seed if the test panics.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("CRASH_SEED={}", self.0);
        }
    }
}

fn base_seed(salt: u64) -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(s) => s.trim().parse().expect("CRASH_SEED must be a u64"),
        Err(_) => rand::random::<u64>() ^ salt,
    }
}

#[test]
fn kill_9_portable() {
    crash_loop("portable", BackendChoice::Portable, base_seed(1));
}

#[test]
fn kill_9_io_uring() {
    let probe = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        backend: BackendChoice::IoUring,
        ..StoreConfig::default()
    };
    if let Err(StoreError::IoUringUnavailable { reason }) = ChunkStore::open(probe.path(), cfg) {
        eprintln!("skipping: io_uring unavailable here ({reason})");
        return;
    }
    crash_loop("io-uring", BackendChoice::IoUring, base_seed(2));
}

/// The two loops take turns: a child spawned by one test briefly inherits (until its `exec`)
/// every descriptor the test process has open, including the other test's `LOCK` file, which
/// would make that test's next child find its store locked.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn crash_loop(flag: &str, backend: BackendChoice, seed: u64) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let _guard = SeedGuard(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut model: HashMap<ChunkId, Expect> = HashMap::new();
    let started = Instant::now();
    let (mut acks, mut dels, mut finished) = (0usize, 0usize, 0usize);
    let mut unsynced_acks = 0usize;
    for round in 0..KILLS_PER_BACKEND {
        let run_seed: u64 = rng.gen();
        let delay = Duration::from_millis(rng.gen_range(1..=60));
        let unsynced = round % 2 == 1;
        let mut child = Command::new(env!("CARGO_BIN_EXE_chunkstore-torture"));
        if unsynced {
            child.arg("--unsynced");
        }
        let mut child = child
            .arg(dir.path())
            .args(["--backend", flag, "--seed", &run_seed.to_string()])
            .args([
                "--threads",
                &THREADS.to_string(),
                "--max-size",
                &MAX_SIZE.to_string(),
            ])
            .args(["--count", "5000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        // Only whole lines were reported: the last one may be cut by the kill.
        let complete = stdout.rfind('\n').map_or("", |end| &stdout[..end]);
        let (mut acked, mut tried, mut deleted) = (HashSet::new(), HashSet::new(), HashSet::new());
        let mut max_index = 0u64;
        for line in complete.lines() {
            let (what, index) = line.split_once(' ').unwrap_or((line, "0"));
            let index: u64 = index
                .parse()
                .unwrap_or_else(|_| panic!("bad line {line:?}"));
            max_index = max_index.max(index);
            match what {
                "ACK" => acked.insert(index),
                "TRYDEL" => tried.insert(index),
                "DEL" => deleted.insert(index),
                "DONE" => {
                    finished += 1;
                    true
                }
                _ => panic!("unexpected line {line:?} from the torture process"),
            };
        }
        if out.status.code().is_some_and(|c| c != 0) {
            panic!(
                "torture process failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        acks += acked.len();
        dels += deleted.len();
        if unsynced {
            unsynced_acks += acked.len();
        }

        let store = open(dir.path(), backend);
        let mut unknown = Vec::new();
        for &i in &acked {
            let key = chunk_id(run_seed, i);
            if deleted.contains(&i) {
                model.insert(key, Expect::Absent);
            } else if tried.contains(&i) {
                unknown.push(i); // delete in flight: either outcome is fine, then it must stick
            } else {
                model.insert(
                    key,
                    Expect::Present(ChunkId::of(&chunk_bytes(run_seed, i, MAX_SIZE))),
                );
            }
        }
        // Puts in flight when the child died (and any not yet reported): present with the
        // right bytes or absent; whichever recovery chose must hold from now on.
        let window = if unsynced {
            UNREPORTED_PER_THREAD_UNSYNCED
        } else {
            UNREPORTED_PER_THREAD
        };
        unknown.extend((0..max_index + window * THREADS).filter(|i| !acked.contains(i)));
        for i in unknown {
            let key = chunk_id(run_seed, i);
            let expect = if store.contains(&key) {
                Expect::Present(ChunkId::of(&chunk_bytes(run_seed, i, MAX_SIZE)))
            } else {
                Expect::Absent
            };
            model.insert(key, expect);
        }
        verify(&store, &model, round);

        // Trim the store (in-process, fully acknowledged) so later rounds stay fast.
        let mut present: Vec<ChunkId> = model
            .iter()
            .filter(|(_, e)| matches!(e, Expect::Present(_)))
            .map(|(k, _)| *k)
            .collect();
        present.sort();
        present.shuffle(&mut rng);
        for key in present.iter().skip(KEEP) {
            assert!(store.delete(key).unwrap());
            model.insert(*key, Expect::Absent);
        }
        store.close().unwrap();
    }
    // A last look after a clean reopen.
    let store = open(dir.path(), backend);
    verify(&store, &model, KILLS_PER_BACKEND);
    eprintln!(
        "{flag}: {KILLS_PER_BACKEND} kills in {:?}: {acks} acked puts ({unsynced_acks} via \
         unsynced batches + sync), {dels} acked deletes, {finished} runs finished before the \
         kill, {} keys tracked",
        started.elapsed(),
        model.len()
    );
    assert!(acks > 0, "the torture process never acknowledged anything");
    assert!(
        unsynced_acks > 0,
        "the unsynced torture runs never acknowledged anything"
    );
}

fn open(dir: &Path, backend: BackendChoice) -> ChunkStore {
    let cfg = StoreConfig {
        backend,
        segment_bytes: 1 << 20,
        ..StoreConfig::default()
    };
    ChunkStore::open(dir, cfg).unwrap_or_else(|e| panic!("reopen after kill: {e}"))
}

fn verify(store: &ChunkStore, model: &HashMap<ChunkId, Expect>, round: usize) {
    let mut present = 0u64;
    for (key, expect) in model {
        match expect {
            Expect::Present(hash) => {
                present += 1;
                let got = store.get(key).unwrap_or_else(|e| {
                    panic!("round {round}: acknowledged chunk {key} lost: {e}")
                });
                assert_eq!(
                    ChunkId::of(&got),
                    *hash,
                    "round {round}: chunk {key} has wrong bytes"
                );
            }
            Expect::Absent => {
                assert!(
                    !store.contains(key),
                    "round {round}: deleted chunk {key} came back"
                );
            }
        }
    }
    // Nothing else is in the store (no resurrected or phantom chunks).
    assert_eq!(
        store.stats().chunks,
        present,
        "round {round}: unexpected chunks in the store"
    );
}
