//! Deterministic simulation of LBFT 2.0 (raft-rs `Network` style): validators, proposers,
//! a civilian and byzantine actors on a seeded network with virtual time, per-link loss,
//! delay, duplication and reordering, partitions, isolation and per-node clock skew.
//!
//! Everything random comes from one ChaCha RNG seeded with the run's seed, so the same seed
//! gives the same trace hash. Signature checks asked for by the machines are answered by
//! the harness with [`crypto_accel::CpuBatchVerifier`]; verdicts are cached by item id
//! within a run, so each distinct signature is verified exactly once.
//!
//! Every node that runs a machine keeps a real [`chain::State`] (genesis funds users,
//! validators and proposers). `Output::Check` verifies the body's transaction and evidence
//! signatures and applies the block to a copy of the node's state at the parent;
//! `Output::Insert` applies it for real and answers `Input::Executed` with the real root.
//! Honest proposers build bodies of real signed transactions (transfers, data
//! registrations, validators joining the RNode pool) with the right nonces, filtered by
//! `State::select_valid`, and submit the double votes honest validators reported as
//! `Evidence` transactions.
//!
//! The checker, at every insert: no two different blocks final at one height on honest
//! nodes; every final block carries ≥ 2f+1 distinct valid committee signatures (and a valid
//! seal for normal blocks); evidence only against byzantine validators and genuine; every
//! honest node applies the final block and has the same state root at that height; total
//! supply = genesis + minted, minted grows by exactly the maintenance reward (+ basic
//! rewards) and not at all for impeach blocks, whose proposer is paid nothing and whose
//! penalty is recorded; detained funds grow by exactly what penalties report; a double vote
//! is punished at most once per node, only for a byzantine validator, at the same height
//! everywhere. At the end: honest validators and the civilian reached the target height
//! (after any heal), every final block's proposer is the scheduled one, a silent or invalid
//! proposer's turns ended in impeach blocks, impeach blocks are the deterministic
//! construction, and every punishment on the chain is on every honest node that got there.
//!
//! Replay one seed: `SIM_SEED=<n> cargo test -p tests --test lbft_sim <scenario>`; sweep
//! more: `SIM_SEEDS=100000 cargo test --release -p tests --test lbft_sim`.

mod scenario;
mod world;

use std::time::{Duration, Instant};

pub use scenario::{Faulty, NetFaults, ProposerFault, Scenario, ValidatorFault};
pub use world::{run, Outcome};

/// What a sweep over many seeds found.
#[derive(Debug, Clone, Default)]
pub struct Sweep {
    /// Seeds run.
    pub seeds: u64,
    /// Seeds with a violation, with the first message.
    pub failures: Vec<(u64, String)>,
    /// Seeds with a safety violation.
    pub safety_violations: u64,
    /// Sum of impeach blocks, evidence, deliveries and signature checks over all seeds.
    pub impeach_blocks: u64,
    /// Evidence outputs.
    pub evidence: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Signatures verified.
    pub sig_checks: u64,
    /// Double votes punished on chain through evidence transactions.
    pub punished: u64,
    /// Signed transactions in final blocks.
    pub final_txs: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// The seeds to run: `SIM_SEED=<n>` runs just that one; otherwise `SIM_SEEDS` (default
/// `default_count`) seeds from `SIM_SEED_FROM` (default 0), so a long sweep can be run, or
/// resumed, in ranges.
pub fn seeds_from_env(default_count: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("SIM_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        return vec![s];
    }
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let n = var("SIM_SEEDS").unwrap_or(default_count);
    let from = var("SIM_SEED_FROM").unwrap_or(0);
    (from..from.saturating_add(n)).collect()
}

/// Runs `sc` for every seed in `seeds`.
pub fn sweep(sc: &Scenario, seeds: &[u64]) -> Sweep {
    let start = Instant::now();
    let mut s = Sweep::default();
    for &seed in seeds {
        let o = run(sc, seed);
        s.seeds += 1;
        s.impeach_blocks += o.impeach_blocks;
        s.evidence += o.evidence;
        s.delivered += o.delivered;
        s.sig_checks += o.sig_checks;
        s.punished += o.punished;
        s.final_txs += o.final_txs;
        if o.safety_violated {
            s.safety_violations += 1;
        }
        if let Some(v) = o.violations.first() {
            s.failures.push((seed, v.clone()));
        }
    }
    s.elapsed = start.elapsed();
    s
}
