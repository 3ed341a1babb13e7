//! Crash test of the block store: the `chainstore-torture` child commits a deterministic
//! chain and is killed with SIGKILL after a random delay, over and over. After every kill
//! the store is reopened here and must hold every acknowledged block, its state must equal
//! an in-memory replay from genesis, and the next child must resume from its head with the
//! same block sequence.
//!
//! Rounds: `CHAINSTORE_CRASH_ROUNDS` (default 60). Seed: `CRASH_SEED` (default: from the
//! clock); a failure prints `CRASH_SEED=…` to replay it, e.g.
//! `CRASH_SEED=123 CHAINSTORE_CRASH_ROUNDS=500 cargo test -p chain --test store_crash`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../src/bin/chainstore_torture.rs"]
mod torture;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chain::{ChainStore, State, StoreConfig};
use crypto_accel::{verify_each, Hash, VerifyBatch};
use torture::SplitMix;

const BIN: &str = env!("CARGO_BIN_EXE_chainstore-torture");

/// Prints the seed if the test panics.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("CRASH_SEED={}", self.0);
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[derive(Debug, Default)]
struct ChildRun {
    resumed: Option<u64>,
    committed: Vec<(u64, String)>,
}

fn parse(lines: &[String]) -> ChildRun {
    let mut run = ChildRun::default();
    for l in lines {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.as_slice() {
            ["RESUMED", n] => run.resumed = Some(n.parse().unwrap()),
            ["COMMITTED", n, root] => run.committed.push((n.parse().unwrap(), root.to_string())),
            _ => panic!("unexpected child line {l:?}"),
        }
    }
    run
}

#[test]
fn kill9_at_random_points_then_resume() {
    let seed = env_u64("CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let _guard = SeedGuard(seed);
    let rounds = env_u64("CHAINSTORE_CRASH_ROUNDS").unwrap_or(60);
    let mut rng = SplitMix(seed);
    let chain_seed = rng.next_u64();
    let snapshot_every = 1 + rng.below(8);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("store_crash_{seed}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let s = torture::setup(chain_seed);
    let store_cfg = StoreConfig {
        snapshot_every,
        ..StoreConfig::default()
    };

    // The in-memory replay from genesis of every stored block, extended round by round.
    let mut replay = State::genesis(&s.cfg, &s.genesis);
    let mut roots: Vec<Hash> = vec![replay.root()];
    let mut head = 0u64;
    let mut acknowledged = 0usize;
    let mut unacknowledged = 0usize;
    let started = Instant::now();
    for round in 0..rounds {
        let mut child = Command::new(BIN)
            .arg(&dir)
            .arg(chain_seed.to_string())
            .arg(u64::MAX.to_string())
            .arg(snapshot_every.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn chainstore-torture");
        let stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(5 + rng.below(150)));
        child.kill().expect("kill child");
        let status = child.wait().expect("wait child");
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the child ended on its own: {status}"
        );
        let run = parse(&reader.join().expect("reader thread"));

        // The child resumed from the head, and acknowledged consecutive blocks.
        if let Some(r) = run.resumed {
            assert_eq!(
                r, head,
                "round {round}: child resumed at {r}, head was {head}"
            );
        } else {
            assert!(run.committed.is_empty());
        }
        for (i, (n, _)) in run.committed.iter().enumerate() {
            assert_eq!(
                *n,
                head + 1 + i as u64,
                "round {round}: non-consecutive commit"
            );
        }
        let last_ack = run.committed.last().map_or(head, |(n, _)| *n);

        let (store, state) = ChainStore::open_with(&dir, &s.cfg, &s.genesis, store_cfg.clone())
            .unwrap_or_else(|e| panic!("round {round}: reopen failed: {e}"));
        let h = store.head();
        assert!(
            h.number >= last_ack,
            "round {round}: acknowledged block {last_ack} lost (head {})",
            h.number
        );
        // At most the one block whose commit returned but was not printed yet.
        assert!(
            h.number <= last_ack + 1,
            "round {round}: head {} from nowhere",
            h.number
        );
        acknowledged += run.committed.len();
        unacknowledged += (h.number - last_ack) as usize;

        // Extend the replay with the newly stored blocks; each must be the block the
        // deterministic generator makes after the replayed state.
        let mut batch = VerifyBatch::new();
        for n in replay.height() + 1..=h.number {
            let block = store.block(n).unwrap().expect("stored block");
            let cert = store.certificate(n).unwrap().expect("stored certificate");
            let (want_block, want_cert) = torture::next_block(&s, chain_seed, &replay);
            assert_eq!(
                block, want_block,
                "round {round}: block {n} is not the sequence's"
            );
            assert_eq!(cert, want_cert, "round {round}: certificate {n}");
            batch.clear();
            State::push_signatures(&block, s.cfg.chain_id, &mut batch).unwrap();
            assert!(verify_each(&batch).all_valid());
            let r = replay.apply_block(&s.cfg, &block).unwrap();
            assert_eq!(
                Some(r.diff),
                store.diff(n).unwrap(),
                "round {round}: diff {n}"
            );
            assert_eq!(store.block_by_hash(&block.hash()).unwrap(), Some(block));
            roots.push(replay.root());
        }
        assert_eq!(state.height(), h.number);
        assert_eq!(
            state.root(),
            replay.root(),
            "round {round}: root differs from replay"
        );
        assert_eq!(h.state_root, replay.root());
        assert_eq!(
            state.snapshot(),
            replay.snapshot(),
            "round {round}: state differs from replay"
        );
        for (n, root) in &run.committed {
            assert_eq!(
                &roots[*n as usize].to_hex(),
                root,
                "round {round}: printed root of block {n}"
            );
        }
        head = h.number;
        drop(store);
    }

    // A fresh replay from genesis of the final store, independent of the incremental one.
    let (store, state) = ChainStore::open_with(&dir, &s.cfg, &s.genesis, store_cfg).unwrap();
    let mut fresh = State::genesis(&s.cfg, &s.genesis);
    let mut from = 1;
    while from <= head {
        let range = store.blocks_range(from, head).unwrap();
        assert!(!range.is_empty());
        for (b, c) in &range {
            assert_eq!(c.block, b.hash());
            fresh.apply_block(&s.cfg, b).unwrap();
        }
        from += range.len() as u64;
    }
    assert_eq!(fresh.snapshot(), state.snapshot());
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "store_crash: {rounds} kill -9 rounds, {head} blocks ({acknowledged} acknowledged, \
         {unacknowledged} committed but not yet acknowledged when killed), snapshot every \
         {snapshot_every}, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(head > 0, "no block was ever committed");
}
