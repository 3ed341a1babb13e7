//! Property tests of the consensus message wire codec: every variant round-trips, random
//! bytes never panic, every truncation and every bad version or tag is an error, and hostile
//! length prefixes are refused before anything is allocated for them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chain::{
    impeach_block, propose, Address, Block, BlockKind, Certificate, ChainConfig, DoubleVote,
    Header, Message, SignedTx, Tx, TxPayload, Vote, VoteKind, MAX_MESSAGE_BYTES, MAX_VALIDATORS,
    PROTOCOL_VERSION,
};
use crypto_accel::{CodecError, DataId, Hash, Keypair};
use proptest::prelude::*;

const KINDS: [VoteKind; 4] = [
    VoteKind::Prepare,
    VoteKind::Commit,
    VoteKind::ImpeachPrepare,
    VoteKind::ImpeachCommit,
];

fn keys() -> Vec<Keypair> {
    (1..=4u8).map(|i| Keypair::from_seed([i; 32])).collect()
}

fn cfg(keys: &[Keypair]) -> ChainConfig {
    ChainConfig::mainnet_like(
        7,
        keys.iter().map(|k| Address::of(&k.public())).collect(),
        vec![Address::of(&keys[0].public())],
        Address::default(),
    )
}

fn parent(number: u64, ts: u64) -> Header {
    Header {
        version: PROTOCOL_VERSION,
        chain_id: 7,
        number,
        parent: Hash::of(&number.to_le_bytes()),
        timestamp_ms: ts,
        term: 0,
        proposer: Address::default(),
        kind: BlockKind::Normal,
        tx_root: Block::compute_tx_root(&[]),
        state_root: Hash::ZERO,
        seal: None,
    }
}

/// A signed payload of one of the shapes a block carries, variable-length ones included.
fn arb_payload() -> impl Strategy<Value = TxPayload> {
    let addr = any::<[u8; 32]>().prop_map(Address);
    prop_oneof![
        (addr.clone(), any::<u128>()).prop_map(|(to, amount)| TxPayload::Transfer { to, amount }),
        (
            "\\PC{0,16}",
            any::<[u8; 32]>(),
            any::<u128>(),
            "\\PC{0,40}",
            addr
        )
            .prop_map(|(name, d, price, description, agent)| TxPayload::ListItem {
                name,
                data: DataId(Hash(d)),
                price,
                description,
                agent,
            }),
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(order, sealed_key)| TxPayload::SellerConfirm { order, sealed_key }),
        (0usize..4, any::<u64>(), any::<[u8; 32]>()).prop_map(|(k, n, b)| {
            let kp = Keypair::from_seed([9; 32]);
            let a = Vote::sign(&kp, 7, KINDS[k], n, 0, Hash(b));
            let b = Vote::sign(&kp, 7, KINDS[k], n, 0, Hash::of(&b));
            TxPayload::Evidence(Box::new(DoubleVote { a, b }))
        }),
        Just(TxPayload::QuitCampaign),
    ]
}

fn arb_block() -> impl Strategy<Value = Block> {
    let txs = prop::collection::vec(
        (0usize..4, any::<u64>(), any::<u128>(), arb_payload()),
        0..4,
    );
    (any::<bool>(), 0u64..1_000_000, 0u64..1 << 40, txs).prop_map(|(impeach, n, ts, txs)| {
        let keys = keys();
        let cfg = cfg(&keys);
        let p = parent(n, ts);
        let root = Hash::of(&ts.to_le_bytes());
        if impeach {
            return impeach_block(&cfg, &p, root, Address::of(&keys[1].public()));
        }
        let txs = txs
            .into_iter()
            .map(|(k, nonce, fee, payload)| {
                Tx::Signed(SignedTx::sign(&keys[k], 7, nonce, fee, payload))
            })
            .collect();
        propose(&cfg, &keys[0], &p, root, txs, ts)
    })
}

fn arb_vote() -> impl Strategy<Value = Vote> {
    (
        0usize..4,
        0usize..4,
        any::<u64>(),
        0u32..8,
        any::<[u8; 32]>(),
    )
        .prop_map(|(k, kind, n, round, b)| {
            Vote::sign(&keys()[k], 7, KINDS[kind], n, round, Hash(b))
        })
}

fn arb_certificate(block: Hash) -> impl Strategy<Value = Certificate> {
    (1usize..=4, any::<bool>(), any::<u64>(), 0u32..8).prop_map(move |(n, imp, number, round)| {
        let kind = if imp {
            VoteKind::ImpeachCommit
        } else {
            VoteKind::Commit
        };
        Certificate::signed_by(&keys()[..n], 7, kind, number, round, block)
    })
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        arb_block().prop_map(Message::Proposal),
        arb_vote().prop_map(Message::Vote),
        arb_block().prop_flat_map(|b| {
            let h = b.hash();
            (Just(b), arb_certificate(h)).prop_map(|(b, c)| Message::Validate(b, c))
        }),
        prop::collection::vec(arb_vote(), 0..6).prop_map(Message::PCertificate),
        any::<u64>().prop_map(|number| Message::Sync { number }),
    ]
}

fn tag(m: &Message) -> u8 {
    match m {
        Message::Proposal(_) => 1,
        Message::Vote(_) => 2,
        Message::Validate(..) => 3,
        Message::PCertificate(_) => 4,
        Message::Sync { .. } => 5,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn every_variant_round_trips(m in arb_message()) {
        let b = m.to_bytes();
        prop_assert_eq!(b[0], 1, "version byte");
        prop_assert_eq!(b[1], tag(&m), "tag byte");
        prop_assert_eq!(Message::from_bytes(&b)?, m.clone());
        // The trait path and the inherent path agree.
        prop_assert_eq!(crypto_accel::Encode::to_bytes(&m), b.clone());
        prop_assert_eq!(<Message as crypto_accel::Decode>::from_bytes(&b)?, m);
    }

    #[test]
    fn every_truncation_errors(m in arb_message()) {
        let b = m.to_bytes();
        for cut in 0..b.len() {
            prop_assert!(Message::from_bytes(&b[..cut]).is_err(), "prefix of {} of {} decoded", cut, b.len());
        }
    }

    #[test]
    fn trailing_bytes_error(m in arb_message(), extra in prop::collection::vec(any::<u8>(), 1..16)) {
        let mut b = m.to_bytes();
        b.extend_from_slice(&extra);
        prop_assert_eq!(
            Message::from_bytes(&b),
            Err(CodecError::Trailing { n: extra.len() })
        );
    }

    #[test]
    fn bad_version_or_tag_errors(m in arb_message(), v in any::<u8>(), t in any::<u8>()) {
        let good = m.to_bytes();
        if v != 1 {
            let mut b = good.clone();
            b[0] = v;
            let is_unsupported = matches!(
                Message::from_bytes(&b),
                Err(CodecError::UnsupportedVersion { got, .. }) if got == v
            );
            prop_assert!(is_unsupported);
        }
        let mut b = good.clone();
        b[1] = t;
        let got = Message::from_bytes(&b);
        if t == 0 || t > 5 {
            let is_bad_tag = matches!(got, Err(CodecError::BadTag { tag, .. }) if tag == u64::from(t));
            prop_assert!(is_bad_tag);
        } else if t != tag(&m) {
            // Another variant's tag over this body: the body does not parse as that variant
            // (a P-certificate's votes read as a header could match only by a chance far
            // below one in a million, so for it the claim is "not the same message").
            if matches!(m, Message::PCertificate(_)) {
                prop_assert_ne!(got, Ok(m));
            } else {
                prop_assert!(got.is_err(), "tag {} over {:?} decoded", t, tag(&m));
            }
        }
    }

    #[test]
    fn random_bytes_never_panic(v in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = Message::from_bytes(&v);
        // And behind a valid version and each tag, where the body parsers are reached.
        for t in 1..=5u8 {
            let mut b = vec![1, t];
            b.extend_from_slice(&v);
            let _ = Message::from_bytes(&b);
        }
    }
}

#[test]
fn hostile_lengths_are_refused_without_allocating() {
    // A P-certificate claiming u32::MAX votes: over the bound.
    let mut b = vec![1, 4];
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Message::from_bytes(&b),
        Err(CodecError::TooLong {
            what: "p-certificate votes",
            ..
        })
    ));
    // Within the bound but more votes than the input could hold: refused before reserving.
    let mut b = vec![1, 4];
    b.extend_from_slice(&(MAX_VALIDATORS as u32).to_le_bytes());
    b.extend_from_slice(&[0; 200]);
    assert!(matches!(
        Message::from_bytes(&b),
        Err(CodecError::Truncated { .. })
    ));
    // A proposal whose block claims u32::MAX transactions.
    let keys = keys();
    let cfg = cfg(&keys);
    let block = propose(&cfg, &keys[0], &parent(1, 1_000), Hash::ZERO, vec![], 5_000);
    let mut b = Message::Proposal(block.clone()).to_bytes();
    let n = b.len();
    b[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Message::from_bytes(&b),
        Err(CodecError::TooLong {
            what: "block transactions",
            ..
        })
    ));
    // A VALIDATE whose certificate claims u32::MAX signatures.
    let cert = Certificate::signed_by(&keys, 7, VoteKind::Commit, 2, 0, block.hash());
    let mut b = Message::Validate(block, cert.clone()).to_bytes();
    let at = b.len() - cert.sigs.len() * 96 - 4;
    b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        Message::from_bytes(&b),
        Err(CodecError::TooLong {
            what: "certificate signatures",
            ..
        })
    ));
}

#[test]
fn full_p_certificate_fits_and_one_more_vote_does_not() {
    let keys = keys();
    let v = Vote::sign(&keys[0], 7, VoteKind::Prepare, 3, 1, Hash::of(b"x"));
    let full = Message::PCertificate(vec![v.clone(); MAX_VALIDATORS]);
    let b = full.to_bytes();
    assert!(b.len() <= MAX_MESSAGE_BYTES);
    assert_eq!(Message::from_bytes(&b).unwrap(), full);
    let over = Message::PCertificate(vec![v; MAX_VALIDATORS + 1]);
    assert!(matches!(
        Message::from_bytes(&over.to_bytes()),
        Err(CodecError::TooLong { .. })
    ));
}

#[test]
fn empty_and_short_frames_error() {
    assert!(matches!(
        Message::from_bytes(&[]),
        Err(CodecError::Truncated { .. })
    ));
    assert!(matches!(
        Message::from_bytes(&[1]),
        Err(CodecError::Truncated { .. })
    ));
    assert!(matches!(
        Message::from_bytes(&[0, 5, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(CodecError::UnsupportedVersion { got: 0, .. })
    ));
    assert_eq!(
        Message::from_bytes(&[1, 5, 9, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
        Message::Sync { number: 9 }
    );
}
