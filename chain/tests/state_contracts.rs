//! Built-in contract tests: data registry and grants, RPT, economy and RNode pools,
//! campaign and admission, proxy register, PDash private trade, double-vote evidence.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod state_util;

use chain::contracts::admission::{
    cpu_hash, leading_zero_bits, memory_hash, solve_cpu, solve_memory, MEMORY_TARGET_BITS,
};
use chain::rewards::{mul_div, SeasonPhase, Seasons};
use chain::{
    AccessPolicy, ChainError, DoubleVote, IntervalRange, OrderState, RptWeight, State, TxOutcome,
    TxPayload, Vote, VoteKind, CPC, EQUIVOCATION_RNODE_DIVISOR,
};
use crypto_accel::{verify_each, Hash, Keypair, VerifyBatch};
use state_util::*;

fn owner_err(c: &Chain, i: usize, function: &'static str) -> ChainError {
    ChainError::NotOwner {
        caller: c.u(i),
        function,
    }
}

#[test]
fn data_registry_and_grants() {
    let mut c = Chain::new(3, 1_000);
    let (o, r) = (c.users[0].clone(), c.users[1].clone());
    let (oa, ra, other) = (c.u(0), c.u(1), c.u(2));
    let id = data_id(1);
    c.ok(&o, register(1, AccessPolicy::GrantBased));
    let d = c.state.data(&id).unwrap();
    assert_eq!((d.owner, d.k, d.m, d.registered_at), (oa, 4, 2, 1));
    assert_eq!(c.state.upload_history(&oa), vec![(id, 1)]);
    assert_eq!(c.state.data_contribution(&oa), 1);

    c.rejects(
        &r,
        register(1, AccessPolicy::Public),
        ChainError::DataExists { id },
    );
    let bad = |k: u16, m: u16, size: u64, start: u64, end: u64| TxPayload::RegisterData {
        id: data_id(9),
        merkle_root: Hash::ZERO,
        size,
        k,
        m,
        intervals: IntervalRange { start, end },
        policy: AccessPolicy::Public,
    };
    c.rejects(
        &o,
        bad(0, 2, 1, 0, 1),
        ChainError::InvalidData { reason: "k is 0" },
    );
    c.rejects(
        &o,
        bad(200, 57, 1, 0, 1),
        ChainError::InvalidData {
            reason: "k + m above 256",
        },
    );
    c.rejects(
        &o,
        bad(1, 0, 0, 0, 1),
        ChainError::InvalidData {
            reason: "size is 0",
        },
    );
    c.rejects(
        &o,
        bad(1, 0, 1, 3, 3),
        ChainError::InvalidData {
            reason: "empty interval range",
        },
    );

    let grant = |reader, start, end, expiry| TxPayload::Grant {
        id,
        reader,
        intervals: IntervalRange { start, end },
        expiry,
    };
    c.rejects(&r, grant(ra, 0, 5, 100), owner_err(&c, 1, "grant"));
    c.rejects(
        &o,
        TxPayload::Grant {
            id: data_id(77),
            reader: ra,
            intervals: IntervalRange { start: 0, end: 1 },
            expiry: 100,
        },
        ChainError::UnknownData { id: data_id(77) },
    );
    c.rejects(
        &o,
        grant(ra, 5, 11, 100),
        ChainError::IntervalOutOfRange { start: 5, end: 11 },
    );
    c.rejects(
        &o,
        grant(ra, 5, 5, 100),
        ChainError::IntervalOutOfRange { start: 5, end: 5 },
    );
    let h = c.state.height() + 1;
    c.rejects(
        &o,
        grant(ra, 0, 5, h),
        ChainError::ExpiryInPast {
            expiry: h,
            height: h,
        },
    );
    c.ok(&o, grant(ra, 2, 5, 50));
    // Interval and expiry boundaries: [2, 5) and height < 50.
    for (i, want) in [(1, false), (2, true), (4, true), (5, false)] {
        assert_eq!(c.state.may_read(&ra, &id, i, 10), want, "interval {i}");
    }
    assert!(c.state.may_read(&ra, &id, 2, 49));
    assert!(!c.state.may_read(&ra, &id, 2, 50));
    assert!(!c.state.may_read(&other, &id, 2, 10));
    // The owner reads every interval of the data, nothing outside it.
    assert!(c.state.may_read(&oa, &id, 0, 10_000));
    assert!(c.state.may_read(&oa, &id, 9, 10_000));
    assert!(!c.state.may_read(&oa, &id, 10, 0));
    assert!(!c.state.may_read(&oa, &data_id(77), 0, 0));
    // Some interval (what the manifest needs): the owner, a live grantee, nobody else.
    assert!(c.state.may_read_some(&oa, &id, 10_000));
    assert!(c.state.may_read_some(&ra, &id, 49));
    assert!(!c.state.may_read_some(&ra, &id, 50), "expired");
    assert!(!c.state.may_read_some(&other, &id, 10));
    assert!(!c.state.may_read_some(&oa, &data_id(77), 0));

    // Revocation.
    c.rejects(
        &o,
        TxPayload::Revoke { id, reader: other },
        ChainError::UnknownGrant { id, reader: other },
    );
    c.rejects(
        &r,
        TxPayload::Revoke { id, reader: ra },
        owner_err(&c, 1, "revoke"),
    );
    c.ok(&o, TxPayload::Revoke { id, reader: ra });
    assert!(!c.state.may_read(&ra, &id, 2, 10));
    assert!(!c.state.may_read_some(&ra, &id, 10), "revoked");
    assert_eq!(
        c.state.grant(&id, &ra).unwrap().revoked_at,
        Some(c.state.height())
    );
    c.rejects(
        &o,
        TxPayload::Revoke { id, reader: ra },
        ChainError::AlreadyRevoked { id, reader: ra },
    );
    // A fresh grant replaces the revoked one.
    c.ok(&o, grant(ra, 0, 10, 100));
    assert!(c.state.may_read(&ra, &id, 9, 99));

    // Policies.
    c.rejects(
        &r,
        TxPayload::SetPolicy {
            id,
            policy: AccessPolicy::Public,
        },
        owner_err(&c, 1, "set_policy"),
    );
    c.ok(
        &o,
        TxPayload::SetPolicy {
            id,
            policy: AccessPolicy::OwnerOnly,
        },
    );
    assert!(!c.state.may_read(&ra, &id, 9, 10));
    c.rejects(&o, grant(ra, 0, 1, 100), ChainError::GrantsDisabled { id });
    c.ok(
        &o,
        TxPayload::SetPolicy {
            id,
            policy: AccessPolicy::Public,
        },
    );
    assert!(c.state.may_read(&other, &id, 9, 10));
    assert!(!c.state.may_read(&other, &id, 10, 10));
}

#[test]
fn rpt_dimensions_weights_and_window() {
    let mut c = Chain::new(2, 1_000);
    let k = c.users[0].clone();
    let a = c.u(0);
    let base = c.state.get_rpt(&a);
    // 1,000,000 CPC: bitlen 20 → AB 100.
    assert_eq!(base.ab, 100);
    assert_eq!((base.tx, base.dc, base.pr, base.bm), (0, 0, 0, 0));
    assert_eq!(base.total, 100 * 50);
    // Three uploads in one block: 3 txs and 3 uploads.
    let txs = (0..3)
        .map(|i| c.sign(&k, i, register(i, AccessPolicy::Public)))
        .collect();
    c.apply(txs).unwrap();
    let r = c.state.get_rpt(&a);
    assert_eq!((r.tx, r.dc), (6, 30));
    assert_eq!(r.total, 100 * 50 + 6 * 15 + 30 * 15);
    // The proposer's BM grows by 10 per block.
    let p = addr(&c.proposer);
    assert_eq!(c.state.get_rpt(&p).bm, 10);
    c.empty_blocks(2);
    assert_eq!(c.state.get_rpt(&p).bm, 30);

    // Owner-only weight and window updates.
    let owner = c.owner.clone();
    c.rejects(
        &k,
        TxPayload::UpdateRptWeight {
            weight: RptWeight::Alpha,
            value: 1,
        },
        owner_err(&c, 0, "update_alpha"),
    );
    c.rejects(
        &k,
        TxPayload::UpdateRptWindow { blocks: 5 },
        owner_err(&c, 0, "update_window"),
    );
    c.rejects(
        &owner,
        TxPayload::UpdateRptWindow { blocks: 0 },
        ChainError::ParamOutOfBounds {
            what: "rpt window",
            value: 0,
            max: chain::rpt::MAX_WINDOW,
        },
    );
    c.rejects(
        &owner,
        TxPayload::UpdateRptWeight {
            weight: RptWeight::Beta,
            value: 1_001,
        },
        ChainError::ParamOutOfBounds {
            what: "rpt weight",
            value: 1_001,
            max: 1_000,
        },
    );
    for (w, v) in [
        (RptWeight::Alpha, 0),
        (RptWeight::Beta, 0),
        (RptWeight::Gamma, 0),
        (RptWeight::Psi, 100),
        (RptWeight::Omega, 7),
    ] {
        c.ok(
            &owner,
            TxPayload::UpdateRptWeight {
                weight: w,
                value: v,
            },
        );
    }
    assert_eq!(c.state.rpt_weights(), [0, 0, 0, 100, 7]);
    assert_eq!(c.state.get_rpt(&a).total, 30 * 100);
    // Shrink the window: the uploads at height 1 fall out once the window no longer holds it.
    c.ok(&owner, TxPayload::UpdateRptWindow { blocks: 3 });
    assert_eq!(c.state.rpt_window(), 3);
    assert_eq!(c.state.height(), 9);
    assert_eq!(c.state.get_rpt(&a).dc, 0);
    // At height 10 a window of 10 blocks reaches back to height 1 again.
    c.ok(&owner, TxPayload::UpdateRptWindow { blocks: 10 });
    assert_eq!(c.state.height(), 10);
    assert_eq!(c.state.get_rpt(&a).dc, 30);
    c.empty_blocks(1);
    assert_eq!(c.state.get_rpt(&a).dc, 0);
}

#[test]
fn economy_pool_seasons_and_basic_reward() {
    // 3650 blocks a year: raising 30, locked 840, settlement 30, season 900.
    let mut c = Chain::new(3, 3650);
    let s = Seasons::of(&c.cfg);
    assert_eq!((s.raising, s.locked, s.settlement), (30, 840, 30));
    let (k0, k1, k2) = (c.users[0].clone(), c.users[1].clone(), c.users[2].clone());
    let min = 20_000 * CPC;
    c.rejects(
        &k0,
        TxPayload::EconomyDeposit { amount: min - 1 },
        ChainError::BelowMinimum {
            pool: "economy",
            got: min - 1,
            min,
        },
    );
    c.rejects(
        &k0,
        TxPayload::EconomyDeposit { amount: 0 },
        ChainError::ZeroAmount {
            what: "economy deposit",
        },
    );
    c.ok(&k0, TxPayload::EconomyDeposit { amount: min });
    c.ok(&k1, TxPayload::EconomyDeposit { amount: 3 * min });
    c.ok(&k2, TxPayload::EconomyDeposit { amount: 2 * min });
    c.ok(&k2, TxPayload::EconomyWithdraw { amount: 2 * min });
    c.ok(&k0, TxPayload::EconomyDeposit { amount: 1 });
    c.rejects(
        &k0,
        TxPayload::EconomyWithdraw { amount: 2 },
        ChainError::BelowMinimum {
            pool: "economy",
            got: min - 1,
            min,
        },
    );
    assert_eq!(c.state.economy_total(), 4 * min + 1);
    // Locked phase: no deposits, no withdrawals.
    c.advance_to(30);
    assert_eq!(State::economy_phase(&c.cfg, 30), SeasonPhase::Locked);
    c.rejects(
        &k2,
        TxPayload::EconomyDeposit { amount: min },
        ChainError::WrongPhase {
            op: "economy deposit",
            phase: "locked",
        },
    );
    c.rejects(
        &k0,
        TxPayload::EconomyWithdraw { amount: min },
        ChainError::WrongPhase {
            op: "economy withdrawal",
            phase: "locked",
        },
    );
    // Settlement starts at 870: basic rewards ⌊R·d/D⌋ are minted.
    c.advance_to(870);
    let (b0, b1) = (c.state.balance(&c.u(0)), c.state.balance(&c.u(1)));
    let minted = c.state.minted();
    let r = c.apply(vec![]).unwrap();
    let season_r = 5_000_000 * CPC * 900 / 3650;
    let total = 4 * min + 1;
    let want0 = mul_div(season_r, min + 1, total).unwrap();
    let want1 = mul_div(season_r, 3 * min, total).unwrap();
    // Cross-check the 256-bit path against plain u128 arithmetic in CPC units.
    assert_eq!(want1 / CPC, (season_r / CPC) * 3 / 4);
    assert_eq!(c.state.balance(&c.u(0)), b0 + want0);
    assert_eq!(c.state.balance(&c.u(1)), b1 + want1);
    assert_eq!(r.basic_rewards, want0 + want1);
    assert_eq!(
        c.state.minted(),
        minted + want0 + want1 + r.maintenance_reward
    );
    // Withdrawals reopen in settlement; deposits wait for the next raising phase.
    c.ok(&k1, TxPayload::EconomyWithdraw { amount: 3 * min });
    c.rejects(
        &k2,
        TxPayload::EconomyDeposit { amount: min },
        ChainError::WrongPhase {
            op: "economy deposit",
            phase: "settlement",
        },
    );
    c.advance_to(900);
    c.ok(&k2, TxPayload::EconomyDeposit { amount: min });
    assert_eq!(c.state.economy_deposit(&c.u(2)), min);
}

fn proofs(c: &Chain, a: &chain::Address) -> (u64, u64, u64) {
    let seed_number = c.state.height();
    let seed = c.state.admission_seed(seed_number).unwrap();
    (
        solve_cpu(a, &seed, c.state.cpu_difficulty()),
        solve_memory(a, &seed, c.state.memory_difficulty()),
        seed_number,
    )
}

fn claim(terms: u64, deposit: u128, p: (u64, u64, u64)) -> TxPayload {
    TxPayload::ClaimCampaign {
        terms,
        deposit,
        cpu_nonce: p.0,
        memory_nonce: p.1,
        seed_number: p.2,
    }
}

#[test]
fn rnode_pool_campaign_and_admission() {
    let mut c = Chain::new(2, 1_000);
    let k = c.users[0].clone();
    let a = c.u(0);
    let owner = c.owner.clone();
    let dep = 5_000 * CPC;
    let p = proofs(&c, &a);
    c.rejects(
        &k,
        claim(1, dep, p),
        ChainError::NotRNode {
            addr: a,
            min: c.cfg.rnode_min_deposit,
        },
    );
    c.rejects(
        &k,
        TxPayload::RNodeDeposit {
            amount: 100_000 * CPC,
        },
        ChainError::BelowMinimum {
            pool: "RNode",
            got: 100_000 * CPC,
            min: 200_000 * CPC,
        },
    );
    c.ok(
        &k,
        TxPayload::RNodeDeposit {
            amount: 200_000 * CPC,
        },
    );
    assert!(c.state.is_rnode(&c.cfg, &a));
    let p = proofs(&c, &a);
    c.rejects(
        &k,
        claim(0, dep, p),
        ChainError::InvalidCampaign {
            reason: "terms must be 1..=10",
        },
    );
    c.rejects(
        &k,
        claim(11, dep, p),
        ChainError::InvalidCampaign {
            reason: "terms must be 1..=10",
        },
    );
    c.rejects(
        &k,
        claim(1, 999 * CPC, p),
        ChainError::BelowMinimum {
            pool: "campaign",
            got: 999 * CPC,
            min: 1_000 * CPC,
        },
    );
    let seed = c.state.admission_seed(p.2).unwrap();
    let diff = c.state.cpu_difficulty();
    let bad_cpu = (0..)
        .find(|n| leading_zero_bits(&cpu_hash(&a, *n, &seed)) < u32::from(diff))
        .unwrap();
    let got = leading_zero_bits(&cpu_hash(&a, bad_cpu, &seed));
    c.rejects(
        &k,
        claim(1, dep, (bad_cpu, p.1, p.2)),
        ChainError::BadCpuProof { need: diff, got },
    );
    let md = c.state.memory_difficulty();
    let bad_mem = (0..)
        .find(|n| {
            leading_zero_bits(&memory_hash(&a, *n, &seed, md)) < u32::from(MEMORY_TARGET_BITS)
        })
        .unwrap();
    let got = leading_zero_bits(&memory_hash(&a, bad_mem, &seed, md));
    c.rejects(
        &k,
        claim(1, dep, (p.0, bad_mem, p.2)),
        ChainError::BadMemoryProof {
            need: MEMORY_TARGET_BITS,
            got,
        },
    );
    c.rejects(
        &k,
        claim(1, dep, (p.0, p.1, 99)),
        ChainError::UnknownSeed { number: 99 },
    );
    // Proofs for one address do not serve another (with overwhelming probability at 4+2 bits
    // we pick the other user's failing case explicitly).
    c.ok(&k, claim(2, dep, p));
    let info = c.state.candidate_info_of(&a).unwrap();
    assert_eq!((info.deposit, info.start_term, info.end_term), (dep, 1, 3));
    assert_eq!(c.state.candidates_of(&c.cfg, 0), vec![]);
    assert_eq!(c.state.candidates_of(&c.cfg, 1), vec![a]);
    assert_eq!(c.state.candidates_of(&c.cfg, 2), vec![a]);
    assert_eq!(c.state.candidates_of(&c.cfg, 3), vec![]);
    let p = proofs(&c, &a);
    c.rejects(
        &k,
        claim(1, dep, p),
        ChainError::AlreadyCandidate { addr: a },
    );

    // Elected: RNode deposit and candidacy are locked through the term.
    c.state.set_committee(1, &[a]).unwrap();
    let mut b = c.block(vec![]);
    b.header.term = 1;
    c.apply_block(&b).unwrap();
    assert_eq!(c.state.committee(1), vec![a]);
    assert_eq!(c.state.locked_until(&a), Some(1));
    c.rejects(
        &k,
        TxPayload::RNodeWithdraw {
            amount: 200_000 * CPC,
        },
        ChainError::LockedWhileElected { addr: a, until: 1 },
    );
    c.rejects(
        &k,
        TxPayload::QuitCampaign,
        ChainError::LockedWhileElected { addr: a, until: 1 },
    );
    let mut b = c.block(vec![]);
    b.header.term = 2;
    c.apply_block(&b).unwrap();
    let bal = c.state.balance(&a);
    c.ok(&k, TxPayload::QuitCampaign);
    assert_eq!(c.state.balance(&a), bal + dep - CPC / 1000);
    assert_eq!(c.state.candidate_info_of(&a), None);
    c.rejects(
        &k,
        TxPayload::QuitCampaign,
        ChainError::NotCandidate { addr: a },
    );
    c.rejects(
        &k,
        TxPayload::RNodeWithdraw {
            amount: 100_000 * CPC,
        },
        ChainError::BelowMinimum {
            pool: "RNode",
            got: 100_000 * CPC,
            min: 200_000 * CPC,
        },
    );
    c.ok(
        &k,
        TxPayload::RNodeWithdraw {
            amount: 200_000 * CPC,
        },
    );
    assert_eq!(c.state.rnode_deposit(&a), 0);

    // Punish: owner-only, detains the deposit.
    let k1 = c.users[1].clone();
    let a1 = c.u(1);
    c.ok(
        &k1,
        TxPayload::RNodeDeposit {
            amount: 300_000 * CPC,
        },
    );
    let p = proofs(&c, &a1);
    c.ok(&k1, claim(1, dep, p));
    c.rejects(
        &k,
        TxPayload::PunishCandidate { candidate: a1 },
        owner_err(&c, 0, "punish_candidate"),
    );
    c.rejects(
        &owner,
        TxPayload::PunishCandidate { candidate: a },
        ChainError::NotCandidate { addr: a },
    );
    c.ok(&owner, TxPayload::PunishCandidate { candidate: a1 });
    assert_eq!(c.state.candidate_info_of(&a1), None);
    assert_eq!(c.state.detained(), dep);

    // Difficulty updates: owner-only, bounded, and they bind new claims.
    c.rejects(
        &k,
        TxPayload::UpdateCpuDifficulty { bits: 8 },
        owner_err(&c, 0, "update_cpu_difficulty"),
    );
    c.rejects(
        &k,
        TxPayload::UpdateMemoryDifficulty { log2_kib: 1 },
        owner_err(&c, 0, "update_memory_difficulty"),
    );
    c.rejects(
        &owner,
        TxPayload::UpdateCpuDifficulty { bits: 41 },
        ChainError::ParamOutOfBounds {
            what: "cpu difficulty",
            value: 41,
            max: 40,
        },
    );
    c.rejects(
        &owner,
        TxPayload::UpdateMemoryDifficulty { log2_kib: 11 },
        ChainError::ParamOutOfBounds {
            what: "memory difficulty",
            value: 11,
            max: 10,
        },
    );
    c.ok(&owner, TxPayload::UpdateCpuDifficulty { bits: 10 });
    c.ok(&owner, TxPayload::UpdateMemoryDifficulty { log2_kib: 2 });
    assert_eq!(
        (c.state.cpu_difficulty(), c.state.memory_difficulty()),
        (10, 2)
    );
    c.ok(
        &k,
        TxPayload::RNodeDeposit {
            amount: 200_000 * CPC,
        },
    );
    let p = proofs(&c, &a);
    c.ok(&k, claim(1, dep, p));
}

#[test]
fn proxy_register() {
    let mut c = Chain::new(1, 1_000);
    let (proxy, real) = (chain::Address([1; 32]), chain::Address([2; 32]));
    let k = c.users[0].clone();
    c.rejects(
        &k,
        TxPayload::RegisterProxyContract { proxy, real },
        owner_err(&c, 0, "register_proxy_contract"),
    );
    assert_eq!(c.state.get_real_contract(&proxy), None);
    let owner = c.owner.clone();
    c.ok(&owner, TxPayload::RegisterProxyContract { proxy, real });
    assert_eq!(c.state.get_real_contract(&proxy), Some(real));
    let real2 = chain::Address([3; 32]);
    c.ok(
        &owner,
        TxPayload::RegisterProxyContract { proxy, real: real2 },
    );
    assert_eq!(c.state.get_real_contract(&proxy), Some(real2));
}

struct Trade {
    c: Chain,
    seller: Keypair,
    buyer: Keypair,
    agent: Keypair,
    item: u64,
}

const PRICE: u128 = 100 * CPC;

fn trade_setup() -> Trade {
    let mut c = Chain::new(4, 1_000);
    let (seller, buyer, agent) = (c.users[0].clone(), c.users[1].clone(), c.users[2].clone());
    c.ok(&seller, register(1, AccessPolicy::GrantBased));
    // Step 1: list.
    let listing = TxPayload::ListItem {
        name: "temps".into(),
        data: data_id(1),
        price: PRICE,
        description: "hourly temperatures".into(),
        agent: addr(&agent),
    };
    c.rejects(
        &buyer,
        listing.clone(),
        ChainError::NotOwner {
            caller: addr(&buyer),
            function: "list_item",
        },
    );
    let r = c.ok(&seller, listing);
    assert_eq!(r.outcomes, vec![TxOutcome::Listed { item: 0 }]);
    // Step 2: browse.
    let l = c.state.item(0).unwrap();
    assert_eq!(
        (l.price, l.seller, l.name.as_str()),
        (PRICE, addr(&seller), "temps")
    );
    Trade {
        c,
        seller,
        buyer,
        agent,
        item: 0,
    }
}

fn order(t: &mut Trade) -> u64 {
    let (buyer, item) = (t.buyer.clone(), t.item);
    // Step 3: escrow; step 4: order with the buyer's key.
    t.c.ok(&buyer, TxPayload::EscrowDeposit { amount: PRICE });
    let r = t.c.ok(
        &buyer,
        TxPayload::PlaceOrder {
            item,
            buyer_key: [9; 32],
        },
    );
    let TxOutcome::Ordered { order } = r.outcomes[0] else {
        panic!("no order")
    };
    // Step 5: the seller sees the order and the locked price.
    let o = t.c.state.order(order).unwrap();
    assert_eq!(
        (o.state, o.price, o.buyer_key),
        (OrderState::Ordered, PRICE, [9; 32])
    );
    assert_eq!(t.c.state.escrow(&addr(&buyer)), 0);
    order
}

fn wrong_party(_t: &Trade, who: &Keypair, role: &'static str, order: u64) -> ChainError {
    ChainError::WrongParty {
        caller: addr(who),
        role,
        order,
    }
}

#[test]
fn private_trade_eight_steps_with_wrong_callers() {
    let mut t = trade_setup();
    let (s, b, ag) = (t.seller.clone(), t.buyer.clone(), t.agent.clone());
    let seller_before = t.c.state.balance(&addr(&s));
    t.c.rejects(
        &b,
        TxPayload::PlaceOrder {
            item: t.item,
            buyer_key: [0; 32],
        },
        ChainError::InsufficientBalance {
            need: PRICE,
            have: 0,
        },
    );
    let o = order(&mut t);
    // Step 6: seller confirms with the sealed key.
    let confirm = TxPayload::SellerConfirm {
        order: o,
        sealed_key: vec![1, 2, 3],
    };
    for k in [&b, &ag] {
        let e = wrong_party(&t, k, "seller", o);
        t.c.rejects(k, confirm.clone(), e);
    }
    t.c.rejects(
        &b,
        TxPayload::BuyerConfirm { order: o },
        ChainError::BadOrderState {
            order: o,
            state: "ordered",
            step: "confirm as buyer",
        },
    );
    t.c.ok(&s, confirm.clone());
    assert_eq!(t.c.state.order(o).unwrap().sealed_key, vec![1, 2, 3]);
    t.c.rejects(
        &s,
        confirm,
        ChainError::BadOrderState {
            order: o,
            state: "seller-confirmed",
            step: "confirm as seller",
        },
    );
    // Step 7: buyer confirms.
    for k in [&s, &ag] {
        let e = wrong_party(&t, k, "buyer", o);
        t.c.rejects(k, TxPayload::BuyerConfirm { order: o }, e);
    }
    t.c.rejects(
        &ag,
        TxPayload::AgentRelease { order: o },
        ChainError::BadOrderState {
            order: o,
            state: "seller-confirmed",
            step: "release",
        },
    );
    t.c.ok(&b, TxPayload::BuyerConfirm { order: o });
    // Step 8: agent releases.
    for k in [&s, &b] {
        let e = wrong_party(&t, k, "agent", o);
        t.c.rejects(k, TxPayload::AgentRelease { order: o }, e);
    }
    t.c.ok(&ag, TxPayload::AgentRelease { order: o });
    let fee = CPC / 1000;
    assert_eq!(t.c.state.balance(&addr(&s)), seller_before + PRICE - fee);
    let ord = t.c.state.order(o).unwrap();
    assert_eq!(ord.state, OrderState::Released);
    let trail: Vec<_> = ord.history.iter().map(|(st, _, who)| (*st, *who)).collect();
    assert_eq!(
        trail,
        vec![
            (OrderState::Ordered, addr(&b)),
            (OrderState::SellerConfirmed, addr(&s)),
            (OrderState::BuyerConfirmed, addr(&b)),
            (OrderState::Released, addr(&ag)),
        ]
    );
    // Settling counts as proxy work for the agent.
    assert_eq!(t.c.state.get_rpt(&addr(&ag)).pr, 10);
    t.c.rejects(
        &ag,
        TxPayload::AgentRelease { order: o },
        ChainError::BadOrderState {
            order: o,
            state: "released",
            step: "release",
        },
    );
    t.c.rejects(
        &ag,
        TxPayload::AgentRelease { order: 99 },
        ChainError::UnknownOrder { order: 99 },
    );
}

#[test]
fn private_trade_dispute_cancel_and_delist() {
    let mut t = trade_setup();
    let (s, b, ag) = (t.seller.clone(), t.buyer.clone(), t.agent.clone());
    // Dispute → refund.
    let o = order(&mut t);
    t.c.ok(
        &s,
        TxPayload::SellerConfirm {
            order: o,
            sealed_key: vec![7],
        },
    );
    let e = wrong_party(&t, &s, "buyer", o);
    t.c.rejects(&s, TxPayload::Dispute { order: o }, e);
    t.c.ok(&b, TxPayload::Dispute { order: o });
    let e = wrong_party(&t, &b, "agent", o);
    t.c.rejects(
        &b,
        TxPayload::AgentResolve {
            order: o,
            refund: true,
        },
        e,
    );
    t.c.ok(
        &ag,
        TxPayload::AgentResolve {
            order: o,
            refund: true,
        },
    );
    assert_eq!(t.c.state.order(o).unwrap().state, OrderState::Refunded);
    assert_eq!(t.c.state.escrow(&addr(&b)), PRICE);
    t.c.ok(&b, TxPayload::EscrowWithdraw { amount: PRICE });
    // Dispute → release to the seller.
    let o = order(&mut t);
    t.c.ok(
        &s,
        TxPayload::SellerConfirm {
            order: o,
            sealed_key: vec![7],
        },
    );
    t.c.ok(&b, TxPayload::Dispute { order: o });
    let before = t.c.state.balance(&addr(&s));
    t.c.ok(
        &ag,
        TxPayload::AgentResolve {
            order: o,
            refund: false,
        },
    );
    assert_eq!(t.c.state.balance(&addr(&s)), before + PRICE);
    assert_eq!(t.c.state.order(o).unwrap().state, OrderState::Released);
    // Cancel before the seller confirms.
    let o = order(&mut t);
    let e = wrong_party(&t, &s, "buyer", o);
    t.c.rejects(&s, TxPayload::CancelOrder { order: o }, e);
    t.c.ok(&b, TxPayload::CancelOrder { order: o });
    assert_eq!(t.c.state.escrow(&addr(&b)), PRICE);
    t.c.rejects(
        &s,
        TxPayload::SellerConfirm {
            order: o,
            sealed_key: vec![7],
        },
        ChainError::BadOrderState {
            order: o,
            state: "cancelled",
            step: "confirm as seller",
        },
    );
    t.c.rejects(
        &b,
        TxPayload::EscrowWithdraw { amount: PRICE + 1 },
        ChainError::InsufficientBalance {
            need: PRICE + 1,
            have: PRICE,
        },
    );
    // Delist: seller only; no new orders.
    t.c.rejects(
        &b,
        TxPayload::DelistItem { item: t.item },
        ChainError::NotOwner {
            caller: addr(&b),
            function: "delist_item",
        },
    );
    t.c.ok(&s, TxPayload::DelistItem { item: t.item });
    t.c.rejects(
        &b,
        TxPayload::PlaceOrder {
            item: t.item,
            buyer_key: [0; 32],
        },
        ChainError::ItemDelisted { item: t.item },
    );
    t.c.rejects(
        &b,
        TxPayload::PlaceOrder {
            item: 42,
            buyer_key: [0; 32],
        },
        ChainError::UnknownItem { item: 42 },
    );
}

fn double_vote(v: &Keypair, number: u64, a: Hash, b: Hash) -> DoubleVote {
    DoubleVote {
        a: Vote::sign(v, 7, VoteKind::Prepare, number, 0, a),
        b: Vote::sign(v, 7, VoteKind::Prepare, number, 0, b),
    }
}

#[test]
fn double_vote_evidence_punishes_once() {
    let mut c = Chain::new(1, 1_000);
    let reporter = c.users[0].clone();
    let v = c.validators[0].clone();
    let va = addr(&v);
    // Give the validator an RNode deposit so the punishment detains something.
    let fund = c.tx(
        &reporter,
        TxPayload::Transfer {
            to: va,
            amount: 300_000 * CPC,
        },
    );
    c.apply(vec![fund]).unwrap();
    let t = SignedTxHelper::sign(
        &c,
        &v,
        0,
        TxPayload::RNodeDeposit {
            amount: 250_000 * CPC,
        },
    );
    c.apply(vec![t]).unwrap();

    let (h1, h2) = (Hash::of(b"x"), Hash::of(b"y"));
    let ev = double_vote(&v, 5, h1, h2);
    let r = c.ok(&reporter, TxPayload::Evidence(Box::new(ev.clone())));
    let cut = 250_000 * CPC / EQUIVOCATION_RNODE_DIVISOR;
    assert_eq!(
        r.outcomes,
        vec![TxOutcome::Punished {
            validator: va,
            detained: cut
        }]
    );
    assert_eq!(c.state.rnode_deposit(&va), 250_000 * CPC - cut);
    let rec = c.state.equivocation(&va, 5).unwrap();
    assert_eq!((rec.block_a, rec.block_b, rec.reporter), (h1, h2, c.u(0)));
    // Once per (validator, height), whichever pair is shown.
    let ev2 = double_vote(&v, 5, h2, Hash::of(b"z"));
    c.rejects(
        &reporter,
        TxPayload::Evidence(Box::new(ev2)),
        ChainError::AlreadyPunished {
            validator: va,
            number: 5,
        },
    );
    // Non-conflicting evidence.
    let same = double_vote(&v, 6, h1, h1);
    c.rejects(
        &reporter,
        TxPayload::Evidence(Box::new(same)),
        ChainError::BadEvidence {
            reason: "votes for the same block",
        },
    );
    let mut kinds = double_vote(&v, 6, h1, h2);
    kinds.b = Vote::sign(&v, 7, VoteKind::Commit, 6, 0, h2);
    c.rejects(
        &reporter,
        TxPayload::Evidence(Box::new(kinds)),
        ChainError::BadEvidence {
            reason: "votes of different kinds",
        },
    );
    let mut heights = double_vote(&v, 6, h1, h2);
    heights.b = Vote::sign(&v, 7, VoteKind::Prepare, 7, 0, h2);
    c.rejects(
        &reporter,
        TxPayload::Evidence(Box::new(heights)),
        ChainError::BadEvidence {
            reason: "votes at different heights",
        },
    );
    let mut rounds = double_vote(&v, 6, h1, h2);
    rounds.b = Vote::sign(&v, 7, VoteKind::Prepare, 6, 1, h2);
    c.rejects(
        &reporter,
        TxPayload::Evidence(Box::new(rounds)),
        ChainError::BadEvidence {
            reason: "votes in different rounds",
        },
    );
    let mut two = double_vote(&v, 6, h1, h2);
    two.b = Vote::sign(&c.validators[1], 7, VoteKind::Prepare, 6, 0, h2);
    c.rejects(
        &reporter,
        TxPayload::Evidence(Box::new(two)),
        ChainError::BadEvidence {
            reason: "votes by different validators",
        },
    );
    let outsider = kp(55);
    c.rejects(
        &reporter,
        TxPayload::Evidence(Box::new(double_vote(&outsider, 6, h1, h2))),
        ChainError::NotValidator {
            addr: addr(&outsider),
        },
    );
    // Forged: the second vote's signature is by another key; the batch catches it.
    let mut forged = double_vote(&v, 6, h1, h2);
    forged.b.sig = Vote::sign(&c.validators[1], 7, VoteKind::Prepare, 6, 0, h2).sig;
    let t = c.tx(&reporter, TxPayload::Evidence(Box::new(forged)));
    let b = c.block(vec![t]);
    let mut batch = VerifyBatch::new();
    State::push_signatures(&b, 7, &mut batch).unwrap();
    assert_eq!(batch.len(), 3);
    let rep = verify_each(&batch);
    assert!(rep.is_valid(0) && rep.is_valid(1) && !rep.is_valid(2));
}

struct SignedTxHelper;
impl SignedTxHelper {
    fn sign(c: &Chain, k: &Keypair, nonce: u64, p: TxPayload) -> chain::SignedTx {
        c.sign(k, nonce, p)
    }
}

#[test]
fn audit_reports_raise_and_lower_the_holders_data_contribution() {
    let mut c = Chain::new(2, 1_000);
    let (reporter, holder) = (c.users[0].clone(), c.u(1));
    assert_eq!(c.state.get_rpt(&holder).dc, 0);
    c.ok(
        &reporter,
        TxPayload::AuditReport {
            holder,
            passed: 200,
            failed: 0,
        },
    );
    assert_eq!(c.state.get_rpt(&holder).dc, 10);
    c.ok(
        &reporter,
        TxPayload::AuditReport {
            holder,
            passed: 0,
            failed: 1,
        },
    );
    assert_eq!(c.state.get_rpt(&holder).dc, 0);
    // The reporter's own DC is untouched; nobody reports on itself; reports are bounded.
    assert_eq!(c.state.get_rpt(&c.u(0)).dc, 0);
    let me = c.u(0);
    c.rejects(
        &reporter,
        TxPayload::AuditReport {
            holder: me,
            passed: 1,
            failed: 0,
        },
        ChainError::SelfReport,
    );
    c.rejects(
        &reporter,
        TxPayload::AuditReport {
            holder,
            passed: 0,
            failed: 0,
        },
        ChainError::ParamOutOfBounds {
            what: "audits in one report",
            value: 0,
            max: 100_000,
        },
    );
}

#[test]
fn the_rnodes_closest_to_a_data_id_are_the_deposited_ones_by_xor_distance() {
    let mut c = Chain::new(6, 1_000);
    let target = [0x5au8; 32];
    assert!(c.state.rnodes_closest(&c.cfg, &target, 3).is_empty());
    // Users 0..5 stake, user 5 does not.
    for i in 0..5 {
        let k = c.users[i].clone();
        c.ok(
            &k,
            TxPayload::RNodeDeposit {
                amount: 200_000 * CPC,
            },
        );
    }
    let dist =
        |a: &chain::Address| -> Vec<u8> { a.0.iter().zip(&target).map(|(x, y)| x ^ y).collect() };
    let mut want: Vec<chain::Address> = (0..5).map(|i| c.u(i)).collect();
    want.sort_by_key(dist);
    assert_eq!(c.state.rnodes_closest(&c.cfg, &target, 3), want[..3]);
    assert_eq!(c.state.rnodes_closest(&c.cfg, &target, 9), want);
    assert!(!c.state.rnodes_closest(&c.cfg, &target, 9).contains(&c.u(5)));
    assert!(c.state.rnodes_closest(&c.cfg, &target, 0).is_empty());
}

#[test]
fn rnodes_are_listed_largest_deposit_first() {
    let mut c = Chain::new(6, 1_000);
    assert!(c.state.rnodes(&c.cfg, 10).is_empty());
    // Users 0..3 stake 200k, 300k and 200k CPC; the others do not.
    for (i, cpc) in [(0, 200_000), (1, 300_000), (2, 200_000)] {
        let k = c.users[i].clone();
        c.ok(&k, TxPayload::RNodeDeposit { amount: cpc * CPC });
    }
    let mut ties = vec![(c.u(0), 200_000 * CPC), (c.u(2), 200_000 * CPC)];
    ties.sort();
    let want = [vec![(c.u(1), 300_000 * CPC)], ties].concat();
    assert_eq!(c.state.rnodes(&c.cfg, 10), want);
    assert_eq!(c.state.rnodes(&c.cfg, 2), want[..2]);
}
