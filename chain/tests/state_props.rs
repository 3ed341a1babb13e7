//! Property tests: `apply_block` against a reference model of transfers, nonces and fees;
//! payload, transaction, block and diff codecs round-trip; random bytes never panic.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod state_util;

use std::collections::BTreeMap;

use chain::{
    AccessPolicy, Address, Block, ChainError, DoubleVote, IntervalRange, RptWeight, SignedTx,
    State, StateDiff, Tx, TxPayload, Vote, VoteKind, CPC,
};
use crypto_accel::{DataId, Decode, Encode, Hash, Signature};
use proptest::prelude::*;
use state_util::*;

/// The reference model: balances and nonces only.
#[derive(Clone)]
struct Model {
    bal: BTreeMap<Address, u128>,
    nonce: BTreeMap<Address, u64>,
}

impl Model {
    /// Applies a block of (sender, nonce, fee, to, amount); None if any is invalid.
    fn apply(
        &self,
        txs: &[(Address, u64, u128, Address, u128)],
        proposer: Address,
        reward: u128,
    ) -> Option<Model> {
        let mut m = self.clone();
        let mut fees = 0;
        for &(from, n, fee, to, amount) in txs {
            let nn = m.nonce.get(&from).copied().unwrap_or(0);
            if n != nn {
                return None;
            }
            let b = m.bal.get(&from).copied().unwrap_or(0);
            if b < fee + amount {
                return None;
            }
            *m.bal.entry(from).or_default() -= fee + amount;
            *m.bal.entry(to).or_default() += amount;
            m.nonce.insert(from, nn + 1);
            fees += fee;
        }
        *m.bal.entry(proposer).or_default() += fees + reward;
        Some(m)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn apply_block_matches_reference_model(
        blocks in prop::collection::vec(
            prop::collection::vec((0usize..4, 0u64..3, 0u128..3, 0usize..5, 0u128..600_000), 0..5),
            1..6,
        )
    ) {
        let mut c = Chain::new(4, 1_000_000);
        let keys: Vec<_> = c.users.clone();
        let mut addrs: Vec<Address> = keys.iter().map(addr).collect();
        addrs.push(addr(&c.owner));
        let proposer = addr(&c.proposer);
        let mut model = Model { bal: BTreeMap::new(), nonce: BTreeMap::new() };
        for a in &addrs {
            model.bal.insert(*a, FUND);
        }
        for spec in blocks {
            let mut txs = Vec::new();
            let mut mtxs = Vec::new();
            for (s, dn, fee, to, amount) in spec {
                let from = addrs[s];
                // Mostly the right nonce, sometimes off by one or two.
                let base = model.nonce.get(&from).copied().unwrap_or(0)
                    + mtxs.iter().filter(|t: &&(Address, u64, u128, Address, u128)| t.0 == from).count() as u64;
                let n = if dn == 0 || dn == 1 { base } else { base + 1 };
                let fee = fee * CPC;
                let amount = amount * CPC;
                txs.push(SignedTx::sign(&keys[s], c.cfg.chain_id, n, fee, TxPayload::Transfer { to: addrs[to], amount }));
                mtxs.push((from, n, fee, addrs[to], amount));
            }
            let reward = chain::rewards::maintenance_reward(&c.cfg, c.state.height() + 1);
            let want = model.apply(&mtxs, proposer, reward);
            let root = c.state.root();
            let got = c.apply(txs);
            match (want, got) {
                (Some(m), Ok(_)) => model = m,
                (None, Err(e)) => {
                    prop_assert!(matches!(e, ChainError::BadNonce { .. } | ChainError::InsufficientBalance { .. }), "{e}");
                    prop_assert_eq!(c.state.root(), root);
                }
                (w, g) => prop_assert!(false, "model {:?} vs state {:?}", w.is_some(), g.err()),
            }
            for a in addrs.iter().chain([&proposer]) {
                prop_assert_eq!(c.state.balance(a), model.bal.get(a).copied().unwrap_or(0));
                prop_assert_eq!(c.state.nonce(a), model.nonce.get(a).copied().unwrap_or(0));
            }
        }
    }
}

fn arb_addr() -> impl Strategy<Value = Address> {
    any::<[u8; 32]>().prop_map(Address)
}

fn arb_hash() -> impl Strategy<Value = Hash> {
    any::<[u8; 32]>().prop_map(Hash)
}

fn arb_vote() -> impl Strategy<Value = Vote> {
    (
        0u8..4,
        any::<u64>(),
        arb_hash(),
        arb_addr(),
        any::<[u8; 32]>(),
    )
        .prop_map(|(k, n, b, v, s)| {
            let kind = [
                VoteKind::Prepare,
                VoteKind::Commit,
                VoteKind::ImpeachPrepare,
                VoteKind::ImpeachCommit,
            ][k as usize];
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&s);
            Vote {
                kind,
                number: n,
                round: (n % 5) as u32,
                block: b,
                validator: v,
                sig: Signature(sig),
            }
        })
}

fn arb_payload() -> impl Strategy<Value = TxPayload> {
    let policy = prop_oneof![
        Just(AccessPolicy::OwnerOnly),
        Just(AccessPolicy::GrantBased),
        Just(AccessPolicy::Public)
    ];
    let range = (any::<u64>(), any::<u64>()).prop_map(|(start, end)| IntervalRange { start, end });
    let id = any::<[u8; 32]>().prop_map(|b| DataId(Hash(b)));
    let amt = any::<u128>();
    let weight = prop_oneof![
        Just(RptWeight::Alpha),
        Just(RptWeight::Beta),
        Just(RptWeight::Gamma),
        Just(RptWeight::Psi),
        Just(RptWeight::Omega)
    ];
    prop_oneof![
        (arb_addr(), amt).prop_map(|(to, amount)| TxPayload::Transfer { to, amount }),
        (
            id.clone(),
            arb_hash(),
            any::<u64>(),
            any::<u16>(),
            any::<u16>(),
            range.clone(),
            policy.clone()
        )
            .prop_map(|(id, merkle_root, size, k, m, intervals, policy)| {
                TxPayload::RegisterData {
                    id,
                    merkle_root,
                    size,
                    k,
                    m,
                    intervals,
                    policy,
                }
            }),
        (id.clone(), policy).prop_map(|(id, policy)| TxPayload::SetPolicy { id, policy }),
        (id.clone(), arb_addr(), range, any::<u64>()).prop_map(
            |(id, reader, intervals, expiry)| TxPayload::Grant {
                id,
                reader,
                intervals,
                expiry
            }
        ),
        (id.clone(), arb_addr()).prop_map(|(id, reader)| TxPayload::Revoke { id, reader }),
        amt.prop_map(|amount| TxPayload::EconomyDeposit { amount }),
        amt.prop_map(|amount| TxPayload::EconomyWithdraw { amount }),
        amt.prop_map(|amount| TxPayload::RNodeDeposit { amount }),
        amt.prop_map(|amount| TxPayload::RNodeWithdraw { amount }),
        (arb_addr(), arb_addr())
            .prop_map(|(proxy, real)| TxPayload::RegisterProxyContract { proxy, real }),
        (weight, any::<u32>())
            .prop_map(|(weight, value)| TxPayload::UpdateRptWeight { weight, value }),
        any::<u64>().prop_map(|blocks| TxPayload::UpdateRptWindow { blocks }),
        (any::<u64>(), amt, any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(terms, deposit, cpu_nonce, memory_nonce, seed_number)| TxPayload::ClaimCampaign {
                terms,
                deposit,
                cpu_nonce,
                memory_nonce,
                seed_number
            }
        ),
        Just(TxPayload::QuitCampaign),
        arb_addr().prop_map(|candidate| TxPayload::PunishCandidate { candidate }),
        any::<u8>().prop_map(|bits| TxPayload::UpdateCpuDifficulty { bits }),
        any::<u8>().prop_map(|log2_kib| TxPayload::UpdateMemoryDifficulty { log2_kib }),
        ("\\PC{0,16}", id, amt, "\\PC{0,64}", arb_addr()).prop_map(
            |(name, data, price, description, agent)| TxPayload::ListItem {
                name,
                data,
                price,
                description,
                agent
            }
        ),
        any::<u64>().prop_map(|item| TxPayload::DelistItem { item }),
        amt.prop_map(|amount| TxPayload::EscrowDeposit { amount }),
        amt.prop_map(|amount| TxPayload::EscrowWithdraw { amount }),
        (any::<u64>(), any::<[u8; 32]>())
            .prop_map(|(item, buyer_key)| TxPayload::PlaceOrder { item, buyer_key }),
        any::<u64>().prop_map(|order| TxPayload::CancelOrder { order }),
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..512))
            .prop_map(|(order, sealed_key)| TxPayload::SellerConfirm { order, sealed_key }),
        any::<u64>().prop_map(|order| TxPayload::BuyerConfirm { order }),
        any::<u64>().prop_map(|order| TxPayload::AgentRelease { order }),
        any::<u64>().prop_map(|order| TxPayload::Dispute { order }),
        (any::<u64>(), any::<bool>())
            .prop_map(|(order, refund)| TxPayload::AgentResolve { order, refund }),
        (arb_vote(), arb_vote())
            .prop_map(|(a, b)| TxPayload::Evidence(Box::new(DoubleVote { a, b }))),
        (any::<[u8; 32]>(), any::<u32>(), any::<u32>()).prop_map(|(h, passed, failed)| {
            TxPayload::AuditReport {
                holder: Address(h),
                passed,
                failed,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn payload_and_tx_codecs_round_trip(p in arb_payload(), from in arb_addr(), nonce: u64, fee: u128) {
        let bytes = p.to_bytes();
        prop_assert_eq!(TxPayload::from_bytes(&bytes)?, p.clone());
        let tx = Tx::Signed(SignedTx { from, nonce, fee, payload: p, sig: Signature([3; 64]) });
        prop_assert_eq!(Tx::from_bytes(&tx.to_bytes())?, tx.clone());
        // Every strict prefix fails cleanly.
        let tb = tx.to_bytes();
        for cut in [0, 1, tb.len() / 2, tb.len() - 1] {
            prop_assert!(Tx::from_bytes(&tb[..cut]).is_err());
        }
    }

    #[test]
    fn random_bytes_never_panic(v in prop::collection::vec(any::<u8>(), 0..700)) {
        let _ = TxPayload::from_bytes(&v);
        let _ = Tx::from_bytes(&v);
        let _ = Block::from_bytes(&v);
        if let Ok(d) = StateDiff::from_bytes(&v) {
            let _ = d.entries();
            let _ = State::from_snapshot(&d);
        }
        let d = StateDiff { number: 1, prev_root: Hash::ZERO, root: Hash::ZERO, count: 3, bytes: v.clone() };
        let _ = d.entries();
        let _ = State::from_snapshot(&d);
        let mut tagged = vec![2u8];
        tagged.extend_from_slice(&v);
        let _ = TxPayload::from_bytes(&tagged);
    }
}

#[test]
fn bounded_fields_are_rejected_before_allocation() {
    // A sealed key claiming 4 GiB.
    let mut b = vec![24u8];
    b.extend_from_slice(&7u64.to_le_bytes());
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        TxPayload::from_bytes(&b),
        Err(crypto_accel::CodecError::TooLong { .. })
    ));
    // Names must be UTF-8.
    let p = TxPayload::ListItem {
        name: "a".into(),
        data: DataId(Hash::ZERO),
        price: 1,
        description: String::new(),
        agent: Address::default(),
    };
    let mut bytes = p.to_bytes();
    bytes[5] = 0xff;
    assert!(matches!(
        TxPayload::from_bytes(&bytes),
        Err(crypto_accel::CodecError::Invalid { .. })
    ));
    assert!(matches!(
        TxPayload::from_bytes(&[0]),
        Err(crypto_accel::CodecError::BadTag { .. })
    ));
    assert!(matches!(
        TxPayload::from_bytes(&[31]),
        Err(crypto_accel::CodecError::BadTag { .. })
    ));
}
