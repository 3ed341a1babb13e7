//! `chunkstore-torture`: writes and deletes chunks in a [`ChunkStore`] from several threads and
//! reports on stdout what the store acknowledged, so a parent process can `kill -9` it at a
//! random moment and check that every acknowledged operation survived.
//!
//! Output lines (each flushed before the next operation starts):
//! `ACK <i>` after `put` of chunk `i` returned Ok (for batches: each index of the batch),
//! `TRYDEL <i>` before deleting chunk `i`, `DEL <i>` after that delete returned Ok,
//! `DONE` when all `--count` chunks were written.
//!
//! With `--unsynced` every thread writes batches with `submit_unsynced` (at most
//! [`MAX_TICKETS`] outstanding) and calls `sync()` every few batches; the `ACK` lines of those
//! batches are printed only after `sync()` returned, so they mean "durable" as in the default
//! mode. Chunks written since the last barrier are never reported.
//!
//! Chunk `i` has key `ChunkId::of_parts(["torture", seed, i])` and contents [`chunk_bytes`].

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use storage_node::torture::{chunk_bytes, chunk_id, mix};
use storage_node::{BackendChoice, ChunkStore, StoreConfig};

#[derive(Parser, Debug)]
#[command(about = "Crash-test load generator for the chunk store")]
struct Args {
    /// Store directory.
    dir: PathBuf,
    /// Write backend.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    backend: BackendArg,
    /// Seed of chunk keys, sizes and contents.
    #[arg(long)]
    seed: u64,
    /// Writer threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
    /// Chunks to write before exiting.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Largest chunk in bytes.
    #[arg(long, default_value_t = 256 << 10, value_parser = clap::value_parser!(u32).range(1..=(16 << 20)))]
    max_size: u32,
    /// Segment size in bytes (small values exercise rotation and compaction).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    segment_bytes: u64,
    /// Write with `submit_unsynced` batches and `sync()` barriers (ACK after the barrier).
    #[arg(long)]
    unsynced: bool,
}

/// Unsynced mode: most tickets a thread keeps outstanding.
const MAX_TICKETS: usize = 4;
/// Unsynced mode: most chunks in one batch, and most batches between barriers. The crash
/// test bounds how far unreported chunks can lie beyond the reported ones with these.
const MAX_BATCH: u64 = 8;
const MAX_BATCHES_PER_SYNC: u64 = 4;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    Auto,
    IoUring,
    Portable,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("chunkstore-torture: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let cfg = StoreConfig {
        segment_bytes: args.segment_bytes,
        max_chunk_bytes: args.max_size,
        compact_garbage_ratio: 0.3,
        backend: match args.backend {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::IoUring => BackendChoice::IoUring,
            BackendArg::Portable => BackendChoice::Portable,
        },
        ..StoreConfig::default()
    };
    let store = ChunkStore::open(&args.dir, cfg)
        .with_context(|| format!("opening store {}", args.dir.display()))?;
    let out = Mutex::new(std::io::stdout());
    let say = |line: String| -> anyhow::Result<()> {
        let mut out = out
            .lock()
            .map_err(|_| anyhow::anyhow!("stdout lock poisoned"))?;
        writeln!(out, "{line}")?;
        out.flush()?;
        Ok(())
    };
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..args.threads)
            .map(|t| {
                let store = store.clone();
                let say = &say;
                s.spawn(move || worker(&store, args, t, say))
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("worker thread panicked"))??;
        }
        Ok(())
    })?;
    store.close()?;
    say("DONE".into())
}

fn worker(
    store: &ChunkStore,
    args: &Args,
    t: u64,
    say: &impl Fn(String) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if args.unsynced {
        return unsynced_worker(store, args, t, say);
    }
    let mut live: Vec<u64> = Vec::new();
    let mut i = t;
    while i < args.count {
        // Thread 0 submits small batches; the others put one chunk at a time.
        let batch: Vec<u64> = if t == 0 {
            (0..1 + mix(args.seed, i) % 4)
                .map(|k| i + k * args.threads)
                .collect()
        } else {
            vec![i]
        };
        let items = batch
            .iter()
            .filter(|&&j| j < args.count)
            .map(|&j| {
                (
                    chunk_id(args.seed, j),
                    chunk_bytes(args.seed, j, args.max_size),
                )
            })
            .collect::<Vec<_>>();
        let n = items.len() as u64;
        store.submit(items)?.wait()?;
        for &j in batch.iter().take(n as usize) {
            say(format!("ACK {j}"))?;
            live.push(j);
        }
        i += n * args.threads;
        churn(store, args, t, mix(args.seed ^ 0xde1e7e, i), &mut live, say)?;
    }
    Ok(())
}

/// Between writes: deletes one acknowledged chunk a third of the time (durably, announced
/// before and after) and lets thread 0 compact now and then, both driven by `r`.
fn churn(
    store: &ChunkStore,
    args: &Args,
    t: u64,
    r: u64,
    live: &mut Vec<u64>,
    say: &impl Fn(String) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if r.is_multiple_of(3) && !live.is_empty() {
        let victim = live.swap_remove((r / 3) as usize % live.len());
        say(format!("TRYDEL {victim}"))?;
        store.delete(&chunk_id(args.seed, victim))?;
        say(format!("DEL {victim}"))?;
    }
    if t == 0 && r.is_multiple_of(17) {
        store.compact()?;
    }
    Ok(())
}

/// `--unsynced`: batches through `submit_unsynced`, a `sync()` barrier every few batches,
/// `ACK` only after the barrier; deletes (synced) and compactions in between.
fn unsynced_worker(
    store: &ChunkStore,
    args: &Args,
    t: u64,
    say: &impl Fn(String) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut live: Vec<u64> = Vec::new();
    let mut i = t;
    while i < args.count {
        let r = mix(args.seed ^ 0x5ca1ab1e, i);
        let batches = 1 + r % MAX_BATCHES_PER_SYNC;
        let mut tickets = VecDeque::new();
        let mut written = Vec::new();
        for b in 0..batches {
            let size = 1 + mix(args.seed, i ^ (b << 40)) % MAX_BATCH;
            let batch: Vec<u64> = (0..size)
                .map(|k| i + k * args.threads)
                .filter(|&j| j < args.count)
                .collect();
            if batch.is_empty() {
                break;
            }
            let items = batch
                .iter()
                .map(|&j| {
                    (
                        chunk_id(args.seed, j),
                        chunk_bytes(args.seed, j, args.max_size),
                    )
                })
                .collect();
            tickets.push_back(store.submit_unsynced(items)?);
            if tickets.len() > MAX_TICKETS {
                if let Some(oldest) = tickets.pop_front() {
                    oldest.wait()?;
                }
            }
            i += batch.len() as u64 * args.threads;
            written.extend(batch);
        }
        for ticket in tickets {
            ticket.wait()?;
        }
        store.sync()?;
        for &j in &written {
            say(format!("ACK {j}"))?;
        }
        live.extend(written);
        churn(store, args, t, r, &mut live, say)?;
    }
    Ok(())
}
