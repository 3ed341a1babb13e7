//! `bench chain`: main-chain block execution of data-registration transactions, end to end
//! on one core. K blocks (default 5) of 10,000 signed `RegisterData` transactions from
//! distinct senders are built and signed outside the timed region; then, per block: (a)
//! batch signature verification (`State::push_signatures` into a `VerifyBatch`, verified by
//! a 1-thread `CpuBatchVerifier`), (b) `State::apply_block` (execution, state root, diff),
//! (c) `ChainStore::commit` (one redb transaction, fsynced). Headline: transactions per
//! second over (a)+(b)+(c), target ≥ 40,000 tx/s. For context: the same pipeline with a
//! 2-thread verifier, and with sender keys taken from a cache of decompressed keys (what
//! `push_signatures` spends most of its time on).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context};
use chain::{
    AccessPolicy, Address, Block, BlockKind, Certificate, ChainConfig, ChainStore, Header,
    IntervalRange, KeyCache, SignedTx, State, StoreConfig, Tx, TxPayload, VoteKind, CPC,
    PROTOCOL_VERSION,
};
use clap::Args;
use crypto_accel::{
    BatchVerifier, CpuBatchVerifier, CpuVerifierConfig, DataId, Hash, Keypair, VerifyBatch,
};

use crate::measure::{holds, si};

/// Target end-to-end rate on one core.
const TARGET_TPS: f64 = 40_000.0;

/// Options of `bench chain`.
#[derive(Debug, Args)]
pub struct ChainArgs {
    /// Blocks to execute per pipeline.
    #[arg(long, default_value_t = 5)]
    blocks: usize,
    /// Transactions per block (each from its own sender).
    #[arg(long, default_value_t = 10_000)]
    txs: usize,
    /// Parent of the temporary store directories (default: `target/`, the build's disk).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Repetitions of each pipeline (fresh store each, interleaved); the table shows the
    /// repetition with the median total time.
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

/// The prepared chain: configuration, genesis, and blocks with certificates.
struct Prepared {
    cfg: ChainConfig,
    genesis: Vec<(Address, u128)>,
    blocks: Vec<(Block, Certificate)>,
    block_bytes: usize,
    diff_bytes: usize,
}

fn keypair(tag: u8, i: u64) -> Keypair {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    s[8] = tag;
    Keypair::from_seed(s)
}

/// Builds and signs every block, executing them once on a scratch state for their roots.
fn prepare(a: &ChainArgs) -> anyhow::Result<Prepared> {
    let senders: Vec<Keypair> = (0..a.txs as u64).map(|i| keypair(1, i)).collect();
    let proposer = keypair(2, 0);
    let validators: Vec<Keypair> = (0..4).map(|i| keypair(3, i)).collect();
    let cfg = ChainConfig::mainnet_like(
        0xbe,
        validators
            .iter()
            .map(|k| Address::of(&k.public()))
            .collect(),
        vec![Address::of(&proposer.public())],
        Address::of(&keypair(4, 0).public()),
    );
    let genesis: Vec<(Address, u128)> = senders
        .iter()
        .map(|k| (Address::of(&k.public()), 1_000 * CPC))
        .collect();
    let mut state = State::genesis(&cfg, &genesis);
    let mut blocks = Vec::with_capacity(a.blocks);
    let mut block_bytes = 0;
    let mut diff_bytes = 0;
    for b in 0..a.blocks as u64 {
        let txs: Vec<Tx> = senders
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let n = b * a.txs as u64 + i as u64;
                Tx::Signed(SignedTx::sign(
                    k,
                    cfg.chain_id,
                    b,
                    CPC / 1_000,
                    TxPayload::RegisterData {
                        id: DataId(Hash::of(&n.to_le_bytes())),
                        merkle_root: Hash::of(&n.to_be_bytes()),
                        size: 1 << 20,
                        k: 4,
                        m: 2,
                        intervals: IntervalRange { start: 0, end: 16 },
                        policy: AccessPolicy::GrantBased,
                    },
                ))
            })
            .collect();
        let number = state.height() + 1;
        let mut header = Header {
            version: PROTOCOL_VERSION,
            chain_id: cfg.chain_id,
            number,
            parent: state.last_hash(),
            timestamp_ms: 10_000 * number,
            term: state.term(),
            proposer: Address::of(&proposer.public()),
            kind: BlockKind::Normal,
            tx_root: Block::compute_tx_root(&txs),
            state_root: state.root(),
            seal: None,
        };
        header.seal_with(&proposer);
        let block = Block { header, txs };
        let hash = block.hash();
        let cert =
            Certificate::signed_by(&validators, cfg.chain_id, VoteKind::Commit, number, 0, hash);
        let r = state
            .apply_block(&cfg, &block)
            .context("preparing the benchmark chain")?;
        block_bytes += crypto_accel::Encode::to_bytes(&block).len();
        diff_bytes += r.diff.bytes.len();
        blocks.push((block, cert));
    }
    Ok(Prepared {
        cfg,
        genesis,
        blocks,
        block_bytes,
        diff_bytes,
    })
}

/// Seconds spent per block in verification, state and commit.
#[derive(Debug, Clone, Copy, Default)]
struct Split {
    /// Of which `push_signatures` (building the signed messages into the batch).
    push: f64,
    verify: f64,
    state: f64,
    commit: f64,
}

impl Split {
    fn total(&self) -> f64 {
        self.verify + self.state + self.commit
    }
}

/// Runs the whole pipeline on a fresh store with a `threads`-thread verifier.
/// One measured configuration.
#[derive(Debug, Clone, Copy)]
struct Pipeline {
    /// Verifier threads.
    threads: usize,
    /// Take sender keys from a cache of decompressed keys instead of `push_signatures`
    /// (which decompresses every sender key, about 5 µs each).
    cached_keys: bool,
}

impl Pipeline {
    fn title(&self) -> String {
        format!(
            "**Verifier on {} thread{}{}**",
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            if self.cached_keys {
                ", sender keys from the node's KeyCache (warmed before the run)"
            } else {
                ""
            }
        )
    }
}

fn pipeline(p: &Prepared, how: Pipeline, parent: &Path) -> anyhow::Result<Vec<Split>> {
    let threads = how.threads;
    let v = CpuBatchVerifier::new(CpuVerifierConfig {
        threads,
        ..CpuVerifierConfig::default()
    })?;
    let dir = tempfile::Builder::new()
        .prefix("bench-chain-")
        .tempdir_in(parent)
        .with_context(|| format!("temp dir in {}", parent.display()))?;
    let store_cfg = StoreConfig {
        // No snapshot inside the measured blocks; restart cost is not part of this run.
        snapshot_every: 0,
        ..StoreConfig::default()
    };
    let (mut store, mut state) = ChainStore::open_with(dir.path(), &p.cfg, &p.genesis, store_cfg)?;
    let mut batch = VerifyBatch::new();
    // A node's key cache has seen its accounts before: warm it outside the timed region.
    let mut keys = KeyCache::new(
        std::num::NonZeroUsize::new(p.genesis.len().max(1)).context("empty genesis")?,
    );
    if how.cached_keys {
        for (addr, _) in &p.genesis {
            keys.get(addr)?;
        }
    }
    let mut out = Vec::with_capacity(p.blocks.len());
    for (block, cert) in &p.blocks {
        let t0 = Instant::now();
        batch.clear();
        if how.cached_keys {
            State::push_signatures_cached(block, p.cfg.chain_id, &mut batch, &mut keys)?;
        } else {
            State::push_signatures(block, p.cfg.chain_id, &mut batch)?;
        }
        let tp = Instant::now();
        let report = v.verify(&batch);
        let t1 = Instant::now();
        ensure!(report.all_valid(), "a benchmark signature failed");
        let receipt = state.apply_block(&p.cfg, block)?;
        let t2 = Instant::now();
        store.commit(block, cert, &receipt, &state)?;
        let t3 = Instant::now();
        out.push(Split {
            push: (tp - t0).as_secs_f64(),
            verify: (t1 - t0).as_secs_f64(),
            state: (t2 - t1).as_secs_f64(),
            commit: (t3 - t2).as_secs_f64(),
        });
    }
    drop(store);
    // Reopen once: the store must give back the state it was handed.
    let (store, reopened) = ChainStore::open_with(
        dir.path(),
        &p.cfg,
        &p.genesis,
        StoreConfig {
            snapshot_every: 0,
            ..StoreConfig::default()
        },
    )?;
    ensure!(
        reopened.root() == state.root() && store.head().number == p.blocks.len() as u64,
        "reopened store disagrees with the executed state"
    );
    Ok(out)
}

fn pct(x: f64, total: f64) -> String {
    format!("{:.0}%", 100.0 * x / total.max(1e-12))
}

/// Runs `bench chain` and returns the markdown report.
pub fn run(a: &ChainArgs) -> anyhow::Result<String> {
    ensure!(
        a.blocks >= 1 && a.txs >= 1,
        "--blocks and --txs must be positive"
    );
    let parent = a.dir.clone().unwrap_or_else(|| PathBuf::from("target"));
    std::fs::create_dir_all(&parent)?;
    eprintln!("bench chain: signing {} transactions…", a.blocks * a.txs);
    let p = prepare(a)?;
    let mut s = String::new();
    writeln!(
        s,
        "Block execution: {} blocks of {} signed `RegisterData` txs from {} senders; per block \
         (a) batch signature verification (`push_signatures` + `CpuBatchVerifier`), (b) \
         `apply_block` (execution + state root + diff), (c) `ChainStore::commit` (one redb \
         transaction, fsync). Encoded block {:.2} MiB, state diff {:.2} MiB per block; store \
         in `{}`.\n",
        a.blocks,
        a.txs,
        a.txs,
        p.block_bytes as f64 / a.blocks as f64 / (1 << 20) as f64,
        p.diff_bytes as f64 / a.blocks as f64 / (1 << 20) as f64,
        parent.display()
    )?;
    let reps = a.reps.max(1);
    // The first pipeline is the headline: what a node does (keys decompressed once, in its
    // KeyCache), on one core.
    let pipelines = [
        Pipeline {
            threads: 1,
            cached_keys: true,
        },
        Pipeline {
            threads: 1,
            cached_keys: false,
        },
        Pipeline {
            threads: 2,
            cached_keys: true,
        },
    ];
    let mut runs: Vec<Vec<Vec<Split>>> = vec![Vec::new(); pipelines.len()];
    for rep in 0..reps {
        // Alternate the order so no pipeline always runs first.
        let mut order: Vec<usize> = (0..pipelines.len()).collect();
        if rep % 2 == 1 {
            order.reverse();
        }
        for i in order {
            eprintln!("bench chain: rep {}, {:?}…", rep + 1, pipelines[i]);
            runs[i].push(pipeline(&p, pipelines[i], &parent)?);
        }
    }
    let mut headline = 0.0;
    for (i, mut all) in runs.into_iter().enumerate() {
        let how = pipelines[i];
        let total = |x: &Vec<Split>| x.iter().map(Split::total).sum::<f64>();
        all.sort_by(|x, y| total(x).total_cmp(&total(y)));
        let rates: Vec<String> = all
            .iter()
            .map(|x| si((a.txs * x.len()) as f64 / total(x)))
            .collect();
        let splits = all.swap_remove(all.len() / 2);
        writeln!(
            s,
            "{}, execution and commit on one thread (median of {reps} runs; all runs: {} \
             tx/s):\n",
            how.title(),
            rates.join(", ")
        )?;
        writeln!(
            s,
            "| block | verify ms (push) | state ms | commit ms | total ms | tx/s |\n\
             |---|---|---|---|---|---|"
        )?;
        let mut sum = Split::default();
        for (i, x) in splits.iter().enumerate() {
            writeln!(
                s,
                "| {} | {:.1} ({:.1}) | {:.1} | {:.1} | {:.1} | {} |",
                i + 1,
                x.verify * 1e3,
                x.push * 1e3,
                x.state * 1e3,
                x.commit * 1e3,
                x.total() * 1e3,
                si(a.txs as f64 / x.total())
            )?;
            sum.push += x.push;
            sum.verify += x.verify;
            sum.state += x.state;
            sum.commit += x.commit;
        }
        let tps = (a.txs * splits.len()) as f64 / sum.total();
        writeln!(
            s,
            "| **all** | {:.1} ({}; push {:.1}) | {:.1} ({}) | {:.1} ({}) | {:.1} | **{}** |\n",
            sum.verify * 1e3,
            pct(sum.verify, sum.total()),
            sum.push * 1e3,
            sum.state * 1e3,
            pct(sum.state, sum.total()),
            sum.commit * 1e3,
            pct(sum.commit, sum.total()),
            sum.total() * 1e3,
            si(tps)
        )?;
        if i == 0 {
            headline = tps;
        }
    }
    writeln!(
        s,
        "Headline: {} tx/s end to end on one core (verification, state and durable commit); \
         target ≥ {}: {}.",
        si(headline),
        si(TARGET_TPS),
        holds(headline >= TARGET_TPS)
    )?;
    Ok(s)
}
