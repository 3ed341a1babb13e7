//! LBFT 2.0 deterministic simulation: every scenario sweeps `SIM_SEEDS` seeds (default
//! 1,000) and must show no violation; the negative controls (f+1 byzantine validators) must
//! show a safety violation in nearly every seed.
//!
//! Replay: `SIM_SEED=<n> cargo test -p tests --test lbft_sim <scenario>`.
//! Big sweep: `SIM_SEEDS=100000 cargo test --release -p tests --test lbft_sim` (about 2.7 h
//! on 2 cores); in resumable ranges: `SIM_SEED_FROM=20000 SIM_SEEDS=10000 …`.

use tests::sim::{
    run, seeds_from_env, sweep, Faulty, NetFaults, ProposerFault, Scenario, Sweep, ValidatorFault,
};

const DEFAULT_SEEDS: u64 = 1_000;

fn report(sc: &Scenario, s: &Sweep) {
    eprintln!(
        "{}: {} seeds in {:.1?}: {} failures, {} safety violations, {} impeach blocks, {} evidence, {} punished, {} final txs, {} msgs, {} sig checks",
        sc.name,
        s.seeds,
        s.elapsed,
        s.failures.len(),
        s.safety_violations,
        s.impeach_blocks,
        s.evidence,
        s.punished,
        s.final_txs,
        s.delivered,
        s.sig_checks
    );
}

/// Sweeps `sc`; any violation fails the test with the seeds to replay.
fn check(sc: Scenario) -> Sweep {
    check_seeds(sc, DEFAULT_SEEDS)
}

/// As [`check`], with `default_seeds` unless `SIM_SEEDS` / `SIM_SEED` say otherwise.
fn check_seeds(sc: Scenario, default_seeds: u64) -> Sweep {
    let seeds = seeds_from_env(default_seeds);
    let s = sweep(&sc, &seeds);
    report(&sc, &s);
    for (seed, msg) in s.failures.iter().take(10) {
        eprintln!("SIM_SEED={seed} scenario {}: {msg}", sc.name);
    }
    assert!(
        s.failures.is_empty(),
        "{} of {} seeds failed; replay with SIM_SEED={} cargo test -p tests --test lbft_sim {} ({})",
        s.failures.len(),
        s.seeds,
        s.failures[0].0,
        sc.name,
        s.failures[0].1
    );
    s
}

/// Negative control: the checker must catch a safety violation in ≥ 95% of seeds.
fn expect_caught(sc: Scenario) {
    let seeds = seeds_from_env(DEFAULT_SEEDS);
    let s = sweep(&sc, &seeds);
    report(&sc, &s);
    let missed = s.seeds - s.safety_violations;
    assert!(
        missed * 20 <= s.seeds,
        "{}: the checker missed the violation in {missed} of {} seeds",
        sc.name,
        s.seeds
    );
}

fn sc(name: &'static str) -> Scenario {
    Scenario::base(name)
}

#[test]
fn normal() {
    let mut s = sc("normal");
    s.expect_no_impeach = true;
    let r = check(s);
    assert_eq!(r.impeach_blocks, 0);
}

#[test]
fn lossy() {
    let mut s = sc("lossy");
    s.net = NetFaults::LOSSY;
    check(s);
}

#[test]
fn partition_heal() {
    let mut s = sc("partition_heal");
    s.partition = true;
    check(s);
}

#[test]
fn isolate_heal_lossy() {
    let mut s = sc("isolate_heal_lossy");
    s.isolate = true;
    s.net = NetFaults::LOSSY;
    check(s);
}

#[test]
fn silent_proposer() {
    let mut s = sc("silent_proposer");
    s.proposer_fault = Some(ProposerFault::Silent);
    let r = check(s);
    assert!(r.impeach_blocks > 0);
}

#[test]
fn silent_proposer_lossy_crash_f() {
    let mut s = sc("silent_proposer_lossy_crash_f");
    s.proposer_fault = Some(ProposerFault::Silent);
    s.validator_fault = Some((ValidatorFault::Crash, Faulty::F));
    s.net = NetFaults::LOSSY;
    check(s);
}

#[test]
fn equivocating_proposer() {
    let mut s = sc("equivocating_proposer");
    s.proposer_fault = Some(ProposerFault::Equivocate);
    check(s);
}

#[test]
fn equivocating_proposer_vote_all_f() {
    let mut s = sc("equivocating_proposer_vote_all_f");
    s.proposer_fault = Some(ProposerFault::Equivocate);
    s.validator_fault = Some((ValidatorFault::VoteAll, Faulty::F));
    check(s);
}

#[test]
fn invalid_block() {
    let mut s = sc("invalid_block");
    s.proposer_fault = Some(ProposerFault::Invalid);
    let r = check(s);
    assert!(r.impeach_blocks > 0);
}

#[test]
fn wrong_turn() {
    let mut s = sc("wrong_turn");
    s.proposer_fault = Some(ProposerFault::WrongTurn);
    check(s);
}

#[test]
fn double_vote_f_lossy() {
    let mut s = sc("double_vote_f_lossy");
    s.validator_fault = Some((ValidatorFault::DoubleVote, Faulty::F));
    s.net = NetFaults::LOSSY;
    let r = check(s);
    assert!(r.evidence > 0, "double votes must produce evidence");
    assert!(
        r.punished > 0,
        "evidence must be submitted on chain and punish the double voters"
    );
}

/// Heavier bodies (20 signed transactions per block) with double voters on a lossy
/// network, on fewer seeds: execution, evidence submission and the state checks under load.
#[test]
fn heavy_bodies_double_vote_lossy() {
    let mut s = sc("heavy_bodies_double_vote_lossy");
    s.txs_per_block = (20, 20);
    s.validator_fault = Some((ValidatorFault::DoubleVote, Faulty::F));
    s.net = NetFaults::LOSSY;
    let r = check_seeds(s, 1000);
    assert!(
        r.final_txs >= r.seeds * 20,
        "bodies must carry the transactions"
    );
    assert!(r.punished > 0, "evidence must punish the double voters");
}

#[test]
fn forger_f() {
    let mut s = sc("forger_f");
    s.validator_fault = Some((ValidatorFault::Forger, Faulty::F));
    check(s);
}

#[test]
fn replay_partition_heal() {
    let mut s = sc("replay_partition_heal");
    s.replayer = true;
    s.partition = true;
    s.net = NetFaults::LOSSY;
    check(s);
}

#[test]
fn crash_f_partition_heal() {
    let mut s = sc("crash_f_partition_heal");
    s.validator_fault = Some((ValidatorFault::Crash, Faulty::F));
    s.partition = true;
    check(s);
}

#[test]
fn negative_vote_all_f_plus_1() {
    let mut s = sc("negative_vote_all_f_plus_1");
    s.proposer_fault = Some(ProposerFault::Equivocate);
    s.validator_fault = Some((ValidatorFault::VoteAll, Faulty::FPlusOne));
    s.expect_violation = true;
    expect_caught(s);
}

#[test]
fn negative_twins_f_plus_1() {
    let mut s = sc("negative_twins_f_plus_1");
    s.proposer_fault = Some(ProposerFault::Equivocate);
    s.validator_fault = Some((ValidatorFault::Twins, Faulty::FPlusOne));
    s.expect_violation = true;
    expect_caught(s);
}

/// Same seed → same trace (and same verdicts); another seed → another trace.
#[test]
fn same_seed_same_trace() {
    let mut a = sc("equivocating_lossy");
    a.net = NetFaults::LOSSY;
    a.proposer_fault = Some(ProposerFault::Equivocate);
    let mut b = sc("partition_double_vote");
    b.partition = true;
    b.validator_fault = Some((ValidatorFault::DoubleVote, Faulty::F));
    for s in [&a, &b] {
        for seed in 0..20 {
            let x = run(s, seed);
            let y = run(s, seed);
            assert_eq!(
                x.trace, y.trace,
                "SIM_SEED={seed} {}: trace differs",
                s.name
            );
            assert_eq!(x.violations, y.violations);
            let z = run(s, seed + 1000);
            assert_ne!(
                x.trace, z.trace,
                "different seeds should give different traces"
            );
        }
    }
}
