//! Ledger tests: transfers, nonces, fees, block checks and atomicity, rewards and supply,
//! impeach blocks, diffs and snapshots.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod state_util;

use chain::{
    BlockKind, ChainError, State, StateDiff, Tx, TxOutcome, TxPayload, CPC,
    IMPEACH_PENALTY_DIVISOR, PROTOCOL_VERSION,
};
use crypto_accel::{Decode, Encode, Hash};
use state_util::*;

const FEE: u128 = CPC / 1000;

#[test]
fn transfer_pays_fee_and_reward_to_proposer() {
    let mut c = Chain::new(2, 1_000);
    let (a, b) = (c.u(0), c.u(1));
    let p = addr(&c.proposer);
    let r = c.ok(
        &c.users[0].clone(),
        TxPayload::Transfer {
            to: b,
            amount: 5 * CPC,
        },
    );
    assert_eq!(c.state.balance(&a), FUND - 5 * CPC - FEE);
    assert_eq!(c.state.balance(&b), FUND + 5 * CPC);
    assert_eq!(c.state.nonce(&a), 1);
    assert_eq!(r.fees, FEE);
    assert_eq!(r.maintenance_reward, 1265 * CPC / 100);
    assert_eq!(c.state.balance(&p), FEE + 1265 * CPC / 100);
    assert_eq!(c.state.minted(), 1265 * CPC / 100);
    assert_eq!(r.diff.root, c.state.root());
    // Transfer to oneself only costs the fee.
    c.ok(
        &c.users[0].clone(),
        TxPayload::Transfer {
            to: a,
            amount: 7 * CPC,
        },
    );
    assert_eq!(c.state.balance(&a), FUND - 5 * CPC - 2 * FEE);
}

#[test]
fn invalid_transactions_leave_state_untouched() {
    let mut c = Chain::new(2, 1_000);
    let k = c.users[0].clone();
    let b = c.u(1);
    // Wrong nonce, too high and replayed.
    let t = c.sign(&k, 5, TxPayload::Transfer { to: b, amount: 1 });
    c.rejects_tx(
        t,
        ChainError::BadNonce {
            expected: 0,
            got: 5,
        },
    );
    c.ok(&k, TxPayload::Transfer { to: b, amount: 1 });
    let t = c.sign(&k, 0, TxPayload::Transfer { to: b, amount: 1 });
    c.rejects_tx(
        t,
        ChainError::BadNonce {
            expected: 1,
            got: 0,
        },
    );
    // Amount above balance after the fee.
    let have = c.state.balance(&c.u(0)) - FEE;
    c.rejects(
        &k,
        TxPayload::Transfer {
            to: b,
            amount: have + 1,
        },
        ChainError::InsufficientBalance {
            need: have + 1,
            have,
        },
    );
    // A fee above the balance.
    let poor = kp(50);
    let t = chain::SignedTx::sign(&poor, 7, 0, 1, TxPayload::Transfer { to: b, amount: 0 });
    c.rejects_tx(t, ChainError::InsufficientBalance { need: 1, have: 0 });
}

#[test]
fn one_bad_transaction_rejects_the_whole_block() {
    let mut c = Chain::new(3, 1_000);
    let (k0, k1) = (c.users[0].clone(), c.users[1].clone());
    let to = c.u(2);
    let good1 = c.sign(&k0, 0, TxPayload::Transfer { to, amount: CPC });
    let good2 = c.sign(&k0, 1, TxPayload::Transfer { to, amount: CPC });
    let bad = c.sign(&k1, 3, TxPayload::Transfer { to, amount: CPC });
    let before = c.state.snapshot();
    let root = c.state.root();
    let b = c.block(vec![good1.clone(), bad, good2.clone()]);
    assert_eq!(
        c.state.apply_block(&c.cfg, &b).err(),
        Some(ChainError::BadNonce {
            expected: 0,
            got: 3
        })
    );
    assert_eq!(c.state.root(), root);
    assert_eq!(c.state.snapshot(), before);
    assert_eq!(c.state.balance(&to), FUND);
    // The same block without the bad transaction applies, in nonce order.
    let r = c.apply(vec![good1, good2]).unwrap();
    assert_eq!(r.outcomes, vec![TxOutcome::Applied; 2]);
    assert_eq!(c.state.balance(&to), FUND + 2 * CPC);
}

#[test]
fn header_checks() {
    let mut c = Chain::new(1, 1_000);
    let root = c.state.root();
    type Mutate = Box<dyn Fn(&mut chain::Header)>;
    let cases: Vec<(Mutate, ChainError)> = vec![
        (
            Box::new(|h| h.version = PROTOCOL_VERSION + 1),
            ChainError::Version {
                got: PROTOCOL_VERSION + 1,
                ours: PROTOCOL_VERSION,
            },
        ),
        (
            Box::new(|h| h.chain_id = 8),
            ChainError::WrongChain {
                expected: 7,
                got: 8,
            },
        ),
        (
            Box::new(|h| h.number = 2),
            ChainError::BadBlockNumber {
                expected: 1,
                got: 2,
            },
        ),
        (
            Box::new(|h| h.state_root = Hash::ZERO),
            ChainError::StateRootMismatch {
                expected: root,
                got: Hash::ZERO,
            },
        ),
    ];
    for (f, want) in cases {
        let mut b = c.block(vec![]);
        f(&mut b.header);
        assert_eq!(c.state.apply_block(&c.cfg, &b).err(), Some(want));
        assert_eq!(c.state.root(), root);
    }
    let mut b = c.block(vec![]);
    b.header.term = 3;
    c.apply_block(&b).unwrap();
    assert_eq!(c.state.term(), 3);
    let mut b = c.block(vec![]);
    b.header.term = 2;
    assert_eq!(
        c.state.apply_block(&c.cfg, &b).err(),
        Some(ChainError::TermWentBack { current: 3, got: 2 })
    );
}

#[test]
fn reward_schedule_years_and_supply() {
    // Five blocks a year: block 1..=4 in year 1, 5..=9 in year 2, …, 25.. after year 5.
    let mut c = Chain::new(1, 5);
    let want = [1265u128, 951, 713, 539, 403, 0];
    let mut minted = 0;
    for n in 1..=30u64 {
        let r = c.apply(vec![]).unwrap();
        let year = (n / 5) as usize;
        let expect = want[year.min(5)] * CPC / 100;
        assert_eq!(r.maintenance_reward, expect, "block {n}");
        minted += expect;
        assert_eq!(c.state.minted(), minted);
        assert_eq!(c.state.total_supply(), c.genesis_supply + minted);
    }
    assert_eq!(c.state.balance(&addr(&c.proposer)), minted);
}

#[test]
fn impeach_block_pays_nothing_and_records_the_penalty() {
    let mut c = Chain::new(1, 1_000);
    let p = addr(&c.proposer);
    let b = c.impeach_block(p);
    let r = c.apply_block(&b).unwrap();
    assert_eq!(r.maintenance_reward, 0);
    assert_eq!(r.fees, 0);
    assert_eq!(
        r.outcomes,
        vec![TxOutcome::Penalized {
            proposer: p,
            detained: 0
        }]
    );
    assert_eq!(c.state.balance(&p), 0);
    assert_eq!(c.state.minted(), 0);
    assert_eq!(c.state.impeachment(&p, 1), Some(0));
    // BM counts the fault.
    assert_eq!(c.state.get_rpt(&p).bm, 0);

    // Malformed impeach blocks.
    let root = c.state.root();
    let mut b = c.impeach_block(p);
    b.txs.push(b.txs[0].clone());
    assert!(matches!(
        c.state.apply_block(&c.cfg, &b),
        Err(ChainError::MalformedBlock {
            kind: "impeach",
            ..
        })
    ));
    let mut b = c.impeach_block(p);
    b.txs = vec![Tx::Penalty {
        proposer: c.u(0),
        number: 2,
    }];
    assert_eq!(
        c.state.apply_block(&c.cfg, &b).err(),
        Some(ChainError::PenaltyMismatch {
            proposer: c.u(0),
            number: 2
        })
    );
    let mut b = c.impeach_block(p);
    b.txs = vec![Tx::Penalty {
        proposer: p,
        number: 9,
    }];
    assert!(matches!(
        c.state.apply_block(&c.cfg, &b),
        Err(ChainError::PenaltyMismatch { number: 9, .. })
    ));
    let t = c.tx(&c.users[0], TxPayload::Transfer { to: p, amount: 1 });
    let mut b = c.impeach_block(p);
    b.txs = vec![Tx::Signed(t)];
    assert!(matches!(
        c.state.apply_block(&c.cfg, &b),
        Err(ChainError::MalformedBlock { .. })
    ));
    // A penalty in a normal block.
    let mut b = c.block(vec![]);
    b.txs = vec![Tx::Penalty {
        proposer: p,
        number: 2,
    }];
    b.header.kind = BlockKind::Normal;
    assert!(matches!(
        c.state.apply_block(&c.cfg, &b),
        Err(ChainError::MalformedBlock { kind: "normal", .. })
    ));
    assert_eq!(c.state.root(), root);
}

#[test]
fn impeachment_detains_a_tenth_of_the_campaign_deposit() {
    let mut c = Chain::new(1, 1_000);
    let k = c.users[0].clone();
    let a = c.u(0);
    state_util_campaign(&mut c, &k);
    let dep = c.state.candidate_info_of(&a).unwrap().deposit;
    let b = c.impeach_block(a);
    c.apply_block(&b).unwrap();
    let cut = dep / IMPEACH_PENALTY_DIVISOR;
    assert_eq!(c.state.candidate_info_of(&a).unwrap().deposit, dep - cut);
    assert_eq!(c.state.detained(), cut);
    assert_eq!(c.state.impeachment(&a, c.state.height()), Some(cut));
}

/// Makes `k` an RNode and a candidate with valid proofs.
fn state_util_campaign(c: &mut Chain, k: &crypto_accel::Keypair) {
    let a = addr(k);
    c.ok(
        k,
        TxPayload::RNodeDeposit {
            amount: 200_000 * CPC,
        },
    );
    let seed_number = c.state.height();
    let seed = c.state.admission_seed(seed_number).unwrap();
    let cpu = chain::contracts::admission::solve_cpu(&a, &seed, c.state.cpu_difficulty());
    let mem = chain::contracts::admission::solve_memory(&a, &seed, c.state.memory_difficulty());
    c.ok(
        k,
        TxPayload::ClaimCampaign {
            terms: 2,
            deposit: 10_000 * CPC,
            cpu_nonce: cpu,
            memory_nonce: mem,
            seed_number,
        },
    );
}

#[test]
fn check_tx_and_select_valid_do_not_change_state() {
    let mut c = Chain::new(2, 1_000);
    let k = c.users[0].clone();
    let b = c.u(1);
    let t0 = c.sign(&k, 0, TxPayload::Transfer { to: b, amount: 1 });
    let t1 = c.sign(&k, 1, TxPayload::Transfer { to: b, amount: 1 });
    let t_bad = c.sign(
        &k,
        2,
        TxPayload::Transfer {
            to: b,
            amount: 10 * FUND,
        },
    );
    let t2 = c.sign(&k, 2, TxPayload::Transfer { to: b, amount: 1 });
    let root = c.state.root();
    let snap = c.state.snapshot();
    assert_eq!(c.state.check_tx(&c.cfg, &t0), Ok(()));
    assert!(matches!(
        c.state.check_tx(&c.cfg, &t1),
        Err(ChainError::BadNonce { .. })
    ));
    let picked = c.state.select_valid(
        &c.cfg,
        0,
        &[t0.clone(), t1.clone(), t_bad, t2.clone(), t0.clone()],
    );
    assert_eq!(picked, vec![0, 1, 3]);
    assert_eq!(c.state.root(), root);
    assert_eq!(c.state.snapshot(), snap);
    c.apply(vec![t0, t1, t2]).unwrap();
}

#[test]
fn diffs_replay_to_the_same_state_and_snapshots_round_trip() {
    let mut c = Chain::new(3, 1_000);
    let (genesis, gdiff) = State::genesis_with_diff(&c.cfg, &[]);
    let _ = genesis;
    // Rebuild the real genesis with its diff.
    let users: Vec<_> = (0..3).map(|i| (c.u(i), FUND)).collect();
    let mut balances = users.clone();
    balances.push((addr(&c.owner), FUND));
    let (mut replay, g) = State::genesis_with_diff(&c.cfg, &balances);
    assert_ne!(g.root, gdiff.root);
    assert_eq!(replay.root(), c.state.root());
    let mut diffs: Vec<StateDiff> = Vec::new();
    for i in 0..3 {
        let k = c.users[i].clone();
        let r = c.ok(&k, register(i as u64, chain::AccessPolicy::Public));
        diffs.push(r.diff);
        let to = c.u((i + 1) % 3);
        let r = c.ok(&k, TxPayload::Transfer { to, amount: CPC });
        diffs.push(r.diff);
    }
    c.state.set_committee(1, &[c.u(0)]).unwrap();
    let mut b = c.block(vec![]);
    b.header.term = 1;
    diffs.push(c.apply_block(&b).unwrap().diff);
    for d in &diffs {
        assert!(d.is_consistent());
        let d2 = StateDiff::from_bytes(&d.to_bytes()).unwrap();
        assert_eq!(&d2, d);
        replay.apply_diff(&d2).unwrap();
    }
    assert_eq!(replay.root(), c.state.root());
    assert_eq!(replay.snapshot(), c.state.snapshot());
    assert_eq!(replay.committee(1), vec![c.u(0)]);
    // A diff out of order or tampered is refused and changes nothing.
    assert!(matches!(
        replay.apply_diff(&diffs[0]),
        Err(ChainError::DiffMismatch { .. })
    ));
    let snap = State::from_snapshot(&c.state.snapshot()).unwrap();
    assert_eq!(snap.root(), c.state.root());
    assert_eq!(snap.snapshot(), c.state.snapshot());
    assert_eq!(snap.total_supply(), c.state.total_supply());
    // Snapshot state keeps executing identically.
    let mut c2 = Chain::new(3, 1_000);
    c2.state = snap;
    let t = c.tx(
        &c.users[0],
        TxPayload::Transfer {
            to: c.u(1),
            amount: 1,
        },
    );
    let r1 = c.apply(vec![t.clone()]).unwrap();
    let r2 = c2.apply(vec![t]).unwrap();
    assert_eq!(r1.diff, r2.diff);
}

#[test]
fn state_root_is_deterministic_and_changes_with_every_write() {
    let mut a = Chain::new(2, 1_000);
    let mut b = Chain::new(2, 1_000);
    assert_eq!(a.state.root(), b.state.root());
    let t = a.tx(
        &a.users[0],
        TxPayload::Transfer {
            to: a.u(1),
            amount: 3,
        },
    );
    let ra = a.apply(vec![t.clone()]).unwrap();
    let rb = b.apply(vec![t]).unwrap();
    assert_eq!(ra.diff, rb.diff);
    assert_eq!(a.state.root(), b.state.root());
    let t = a.tx(
        &a.users[0],
        TxPayload::Transfer {
            to: a.u(1),
            amount: 3,
        },
    );
    a.apply(vec![t]).unwrap();
    let t = b.tx(
        &b.users[0],
        TxPayload::Transfer {
            to: b.u(1),
            amount: 4,
        },
    );
    b.apply(vec![t]).unwrap();
    assert_ne!(a.state.root(), b.state.root());
}
