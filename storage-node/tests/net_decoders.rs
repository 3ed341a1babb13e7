//! Property tests of the node's own network decoders (the sync request/response codec and
//! the gossiped transaction batch): every value round-trips, random and mutated bytes never
//! panic, every truncation and every trailing byte is an error, hostile count prefixes are
//! refused before anything is reserved for them, and a penalty never rides in a gossip batch.
//!
//! The consensus `Message` codec is covered by `chain/tests/wire.rs`. The libp2p
//! `FrameCodec` is not tested here: it has no public constructor.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chain::{
    genesis_header, impeach_block, propose, Address, Block, Certificate, ChainConfig, Header,
    SignedTx, Tx, TxPayload, VoteKind,
};
use crypto_accel::{CodecError, DataId, Decode, Encode, Hash, Keypair};
use proptest::prelude::*;
use storage_node::node::engine::{
    decode_tx_batch, encode_tx_batch, SyncReq, SyncResp, MAX_GOSSIP_TXS, SYNC_RANGE,
};
use storage_node::node::net::{MAX_GOSSIP, MAX_SYNC_RESPONSE};

const CHAIN_ID: u32 = 7;

fn keys() -> Vec<Keypair> {
    (1..=4u8).map(|i| Keypair::from_seed([i; 32])).collect()
}

fn cfg(keys: &[Keypair]) -> ChainConfig {
    ChainConfig::mainnet_like(
        CHAIN_ID,
        keys.iter().map(|k| Address::of(&k.public())).collect(),
        vec![Address::of(&keys[0].public())],
        Address::default(),
    )
}

/// A payload of one of the shapes users sign, variable-length ones included.
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
        Just(TxPayload::QuitCampaign),
    ]
}

fn arb_signed_tx() -> impl Strategy<Value = SignedTx> {
    (0usize..4, any::<u64>(), any::<u128>(), arb_payload()).prop_map(|(k, nonce, fee, payload)| {
        SignedTx::sign(&keys()[k], CHAIN_ID, nonce, fee, payload)
    })
}

/// One step of a synced range: an impeach block, or a proposed block with these txs.
type Step = (bool, Vec<SignedTx>, usize, u32);

/// Final blocks `1..=len` on top of genesis, each with a commit (or impeach-commit)
/// certificate of 1..=4 signers on its hash, as a peer's sync answer carries them.
fn build_range(steps: Vec<Step>, genesis_ts: u64) -> Vec<(Block, Certificate)> {
    let keys = keys();
    let cfg = cfg(&keys);
    let mut parent: Header = genesis_header(&cfg, genesis_ts);
    let mut out = Vec::with_capacity(steps.len());
    for (impeach, txs, signers, round) in steps {
        let root = Hash::of(&parent.number.to_le_bytes());
        let (block, kind) = if impeach {
            let failed = Address::of(&keys[parent.number as usize % keys.len()].public());
            (
                impeach_block(&cfg, &parent, root, failed),
                VoteKind::ImpeachCommit,
            )
        } else {
            let txs = txs.into_iter().map(Tx::Signed).collect();
            let now = parent.timestamp_ms + cfg.period_ms;
            (
                propose(&cfg, &keys[0], &parent, root, txs, now),
                VoteKind::Commit,
            )
        };
        let cert = Certificate::signed_by(
            &keys[..signers],
            CHAIN_ID,
            kind,
            block.header.number,
            round,
            block.hash(),
        );
        parent = block.header.clone();
        out.push((block, cert));
    }
    out
}

fn arb_range() -> impl Strategy<Value = Vec<(Block, Certificate)>> {
    let step = (
        any::<bool>(),
        prop::collection::vec(arb_signed_tx(), 0..3),
        1usize..=4,
        0u32..4,
    );
    (prop::collection::vec(step, 0..5), 0u64..1 << 40)
        .prop_map(|(steps, ts)| build_range(steps, ts))
}

fn arb_sync_req() -> impl Strategy<Value = SyncReq> {
    prop_oneof![
        Just(SyncReq::Head),
        (any::<u64>(), any::<u64>()).prop_map(|(from, count)| SyncReq::Range { from, count }),
    ]
}

fn arb_sync_resp() -> impl Strategy<Value = SyncResp> {
    prop_oneof![
        any::<u64>().prop_map(SyncResp::Head),
        arb_range().prop_map(SyncResp::Blocks),
    ]
}

fn arb_batch() -> impl Strategy<Value = Vec<SignedTx>> {
    prop::collection::vec(arb_signed_tx(), 0..8)
}

/// A little-endian u32 count prefix.
fn count(n: u32) -> Vec<u8> {
    n.to_le_bytes().to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn sync_messages_round_trip(req in arb_sync_req(), resp in arb_sync_resp()) {
        let b = req.to_bytes();
        prop_assert_eq!(b.len(), if req == SyncReq::Head { 1 } else { 17 });
        prop_assert_eq!(SyncReq::from_bytes(&b)?, req);
        let b = resp.to_bytes();
        prop_assert_eq!(SyncResp::from_bytes(&b)?, resp);
    }

    #[test]
    fn tx_batch_round_trips(txs in arb_batch()) {
        let b = encode_tx_batch(&txs);
        prop_assert_eq!(&b[..4], &(txs.len() as u32).to_le_bytes()[..]);
        prop_assert_eq!(decode_tx_batch(&b)?, txs);
    }

    #[test]
    fn every_truncation_errors(req in arb_sync_req(), resp in arb_sync_resp(), txs in arb_batch()) {
        let b = req.to_bytes();
        for cut in 0..b.len() {
            prop_assert!(SyncReq::from_bytes(&b[..cut]).is_err(), "request prefix {}/{}", cut, b.len());
        }
        let b = resp.to_bytes();
        for cut in 0..b.len() {
            prop_assert!(SyncResp::from_bytes(&b[..cut]).is_err(), "response prefix {}/{}", cut, b.len());
        }
        let b = encode_tx_batch(&txs);
        for cut in 0..b.len() {
            prop_assert!(decode_tx_batch(&b[..cut]).is_err(), "batch prefix {}/{}", cut, b.len());
        }
    }

    #[test]
    fn trailing_bytes_error(
        req in arb_sync_req(),
        resp in arb_sync_resp(),
        txs in arb_batch(),
        extra in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let trailing = CodecError::Trailing { n: extra.len() };
        let mut b = req.to_bytes();
        b.extend_from_slice(&extra);
        prop_assert_eq!(SyncReq::from_bytes(&b), Err(trailing.clone()));
        let mut b = resp.to_bytes();
        b.extend_from_slice(&extra);
        prop_assert_eq!(SyncResp::from_bytes(&b), Err(trailing.clone()));
        let mut b = encode_tx_batch(&txs);
        b.extend_from_slice(&extra);
        prop_assert_eq!(decode_tx_batch(&b), Err(trailing));
    }

    #[test]
    fn bad_tags_error(req in arb_sync_req(), resp in arb_sync_resp(), t in 2u8..=255) {
        let mut b = req.to_bytes();
        b[0] = t;
        let is_bad_tag = matches!(
            SyncReq::from_bytes(&b),
            Err(CodecError::BadTag { what: "sync request", tag }) if tag == u64::from(t)
        );
        prop_assert!(is_bad_tag);
        let mut b = resp.to_bytes();
        b[0] = t;
        let is_bad_tag = matches!(
            SyncResp::from_bytes(&b),
            Err(CodecError::BadTag { what: "sync response", tag }) if tag == u64::from(t)
        );
        prop_assert!(is_bad_tag);
    }

    #[test]
    fn random_bytes_never_panic(v in prop::collection::vec(any::<u8>(), 0..600), n in 0u32..4) {
        let _ = SyncReq::from_bytes(&v);
        let _ = SyncResp::from_bytes(&v);
        let _ = decode_tx_batch(&v);
        // Behind each valid tag and a small count, where the body parsers are reached.
        for t in 0..=1u8 {
            let mut b = vec![t];
            b.extend_from_slice(&v);
            let _ = SyncReq::from_bytes(&b);
            let _ = SyncResp::from_bytes(&b);
        }
        let mut b = vec![1];
        b.extend_from_slice(&count(n));
        b.extend_from_slice(&v);
        let _ = SyncResp::from_bytes(&b);
        for tx_tag in 1..=2u8 {
            let mut b = count(n.max(1));
            b.push(tx_tag);
            b.extend_from_slice(&v);
            let _ = decode_tx_batch(&b);
        }
    }

    #[test]
    fn mutated_encodings_never_panic_and_stay_canonical(
        resp in arb_sync_resp(),
        txs in arb_batch(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        // A corrupted valid encoding either errors or decodes to a value whose canonical
        // encoding is exactly the corrupted bytes (no two encodings for one value).
        let mut b = resp.to_bytes();
        for (at, x) in &flips {
            let i = at.index(b.len());
            b[i] ^= x;
        }
        if let Ok(v) = SyncResp::from_bytes(&b) {
            prop_assert_eq!(v.to_bytes(), b);
        }
        let mut b = encode_tx_batch(&txs);
        for (at, x) in &flips {
            let i = at.index(b.len());
            b[i] ^= x;
        }
        if let Ok(v) = decode_tx_batch(&b) {
            prop_assert_eq!(encode_tx_batch(&v), b);
        }
    }

    #[test]
    fn penalty_in_gossip_batch_is_refused(
        txs in arb_batch(),
        at in any::<prop::sample::Index>(),
        proposer in any::<[u8; 32]>(),
        number in any::<u64>(),
    ) {
        // Hand-built, since `encode_tx_batch` only takes signed transactions.
        let mut all: Vec<Tx> = txs.into_iter().map(Tx::Signed).collect();
        let at = at.index(all.len() + 1);
        all.insert(at, Tx::Penalty { proposer: Address(proposer), number });
        let mut b = count(all.len() as u32);
        for t in &all {
            t.encode(&mut b);
        }
        prop_assert_eq!(
            decode_tx_batch(&b),
            Err(CodecError::Invalid {
                what: "tx batch",
                reason: "penalties are not gossiped",
            })
        );
    }
}

#[test]
fn hostile_sync_counts_are_refused_without_allocating() {
    // u32::MAX blocks claimed in a 5-byte answer: refused on the count alone (reserving
    // for it would abort the test process).
    let mut b = vec![1];
    b.extend_from_slice(&count(u32::MAX));
    assert_eq!(
        SyncResp::from_bytes(&b),
        Err(CodecError::TooLong {
            what: "sync blocks",
            len: u32::MAX as usize,
            max: SYNC_RANGE as usize,
        })
    );
    // One over the range.
    let mut b = vec![1];
    b.extend_from_slice(&count(SYNC_RANGE as u32 + 1));
    b.extend_from_slice(&[0; 64]);
    assert!(matches!(
        SyncResp::from_bytes(&b),
        Err(CodecError::TooLong {
            what: "sync blocks",
            ..
        })
    ));
    // Exactly the range, but no blocks behind the count: an error, and what the claim
    // makes the decoder reserve is bounded by the range.
    let mut b = vec![1];
    b.extend_from_slice(&count(SYNC_RANGE as u32));
    assert!(matches!(
        SyncResp::from_bytes(&b),
        Err(CodecError::Truncated { .. })
    ));
    assert!(SYNC_RANGE as usize * std::mem::size_of::<(Block, Certificate)>() <= MAX_SYNC_RESPONSE);
}

#[test]
fn hostile_counts_inside_synced_blocks_are_refused() {
    let keys = keys();
    let cfg = cfg(&keys);
    let g = genesis_header(&cfg, 1_000);
    let block = propose(&cfg, &keys[0], &g, Hash::ZERO, vec![], 20_000);
    let cert = Certificate::signed_by(&keys, CHAIN_ID, VoteKind::Commit, 1, 0, block.hash());
    let resp = SyncResp::Blocks(vec![(block.clone(), cert.clone())]);
    let good = resp.to_bytes();
    assert_eq!(SyncResp::from_bytes(&good).unwrap(), resp);

    // The block's (empty) transaction list is the last field before the certificate.
    let cert_len = cert.to_bytes().len();
    let at = good.len() - cert_len - 4;
    assert_eq!(&good[at..at + 4], &count(0)[..]);
    let mut b = good.clone();
    b[at..at + 4].copy_from_slice(&count(u32::MAX));
    assert!(matches!(
        SyncResp::from_bytes(&b),
        Err(CodecError::TooLong {
            what: "block transactions",
            ..
        })
    ));

    // The certificate's signature list is its last field: 96 bytes per signer.
    let at = good.len() - cert.sigs.len() * 96 - 4;
    assert_eq!(&good[at..at + 4], &count(cert.sigs.len() as u32)[..]);
    let mut b = good;
    b[at..at + 4].copy_from_slice(&count(u32::MAX));
    assert!(matches!(
        SyncResp::from_bytes(&b),
        Err(CodecError::TooLong {
            what: "certificate signatures",
            ..
        })
    ));
}

#[test]
fn full_sync_range_fits_and_one_more_block_does_not() {
    let range = build_range(vec![(false, vec![], 3, 0)], 1_000);
    let full = SyncResp::Blocks(vec![range[0].clone(); SYNC_RANGE as usize]);
    assert_eq!(SyncResp::from_bytes(&full.to_bytes()).unwrap(), full);
    let over = SyncResp::Blocks(vec![range[0].clone(); SYNC_RANGE as usize + 1]);
    assert!(matches!(
        SyncResp::from_bytes(&over.to_bytes()),
        Err(CodecError::TooLong {
            what: "sync blocks",
            ..
        })
    ));
}

#[test]
fn hostile_tx_batch_counts_are_refused_without_allocating() {
    // u32::MAX transactions claimed in a 4-byte batch: refused on the count alone.
    assert_eq!(
        decode_tx_batch(&count(u32::MAX)),
        Err(CodecError::TooLong {
            what: "tx batch",
            len: u32::MAX as usize,
            max: MAX_GOSSIP_TXS,
        })
    );
    assert!(matches!(
        decode_tx_batch(&count(MAX_GOSSIP_TXS as u32 + 1)),
        Err(CodecError::TooLong {
            what: "tx batch",
            ..
        })
    ));
    // Within the bound, nothing behind it: an error. The decoder reserves for the claimed
    // count before reading (it does not check the count against the bytes left), so bound
    // what such a claim can make it reserve: no more than a legitimate full-size gossip
    // message may occupy anyway.
    assert!(matches!(
        decode_tx_batch(&count(MAX_GOSSIP_TXS as u32)),
        Err(CodecError::Truncated { .. })
    ));
    assert!(MAX_GOSSIP_TXS * std::mem::size_of::<SignedTx>() <= MAX_GOSSIP);
    // A transaction whose payload claims u32::MAX bytes of sealed key.
    let tx = SignedTx::sign(
        &keys()[0],
        CHAIN_ID,
        1,
        1,
        TxPayload::SellerConfirm {
            order: 1,
            sealed_key: vec![],
        },
    );
    let good = encode_tx_batch(std::slice::from_ref(&tx));
    let sig_len = tx.sig.to_bytes().len();
    let at = good.len() - sig_len - 4;
    assert_eq!(&good[at..at + 4], &count(0)[..]);
    let mut b = good;
    b[at..at + 4].copy_from_slice(&count(u32::MAX));
    assert!(matches!(
        decode_tx_batch(&b),
        Err(CodecError::TooLong { .. })
    ));
}

#[test]
fn full_gossip_batch_fits_and_one_more_tx_does_not() {
    let tx = SignedTx::sign(
        &keys()[1],
        CHAIN_ID,
        3,
        10,
        TxPayload::Transfer {
            to: Address([5; 32]),
            amount: 42,
        },
    );
    let full = vec![tx.clone(); MAX_GOSSIP_TXS];
    assert_eq!(decode_tx_batch(&encode_tx_batch(&full)).unwrap(), full);
    let over = vec![tx; MAX_GOSSIP_TXS + 1];
    assert!(matches!(
        decode_tx_batch(&encode_tx_batch(&over)),
        Err(CodecError::TooLong {
            what: "tx batch",
            ..
        })
    ));
}

#[test]
fn empty_and_minimal_inputs() {
    assert!(matches!(
        SyncReq::from_bytes(&[]),
        Err(CodecError::Truncated { .. })
    ));
    assert!(matches!(
        SyncResp::from_bytes(&[]),
        Err(CodecError::Truncated { .. })
    ));
    assert!(matches!(
        decode_tx_batch(&[]),
        Err(CodecError::Truncated { .. })
    ));
    assert_eq!(SyncReq::from_bytes(&[0]).unwrap(), SyncReq::Head);
    assert_eq!(
        SyncResp::from_bytes(&[0, 9, 0, 0, 0, 0, 0, 0, 0]).unwrap(),
        SyncResp::Head(9)
    );
    assert_eq!(
        SyncResp::from_bytes(&[1, 0, 0, 0, 0]).unwrap(),
        SyncResp::Blocks(vec![])
    );
    assert_eq!(decode_tx_batch(&count(0)).unwrap(), vec![]);
    assert_eq!(encode_tx_batch(&[]), count(0));
    // A bad transaction tag inside a batch.
    let mut b = count(1);
    b.push(0);
    assert!(matches!(
        decode_tx_batch(&b),
        Err(CodecError::BadTag {
            what: "transaction",
            ..
        })
    ));
}

mod frames {
    //! The length-prefixed frames of `/cpchain/consensus/1` and `/cpchain/sync/1`.
    use futures::executor::block_on;
    use futures::io::Cursor;
    use libp2p::request_response::Codec;
    use libp2p::StreamProtocol;
    use proptest::prelude::*;
    use storage_node::node::net::FrameCodec;

    fn proto() -> StreamProtocol {
        StreamProtocol::new("/cpchain/test/1")
    }

    fn write_req(c: &mut FrameCodec, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let mut io = Cursor::new(Vec::new());
        block_on(c.write_request(&proto(), &mut io, data))?;
        Ok(io.into_inner())
    }

    fn read_req(c: &mut FrameCodec, bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let mut io = Cursor::new(bytes);
        block_on(c.read_request(&proto(), &mut io))
    }

    fn read_resp(c: &mut FrameCodec, bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let mut io = Cursor::new(bytes);
        block_on(c.read_response(&proto(), &mut io))
    }

    #[test]
    fn a_length_prefix_over_the_bound_is_refused_before_allocating() {
        let mut c = FrameCodec::new(1024, 64);
        // Claims 4 GiB; only the 4-byte prefix is present.
        let e = read_req(&mut c, u32::MAX.to_le_bytes().to_vec()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        let e = read_resp(&mut c, 65u32.to_le_bytes().to_vec()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
        // Writing an oversized frame is refused too.
        assert!(write_req(&mut c, vec![0; 1025]).is_err());
    }

    #[test]
    fn frames_past_the_preallocation_grow_and_short_ones_end_in_eof() {
        let mut c = FrameCodec::new(48 << 20, 64);
        // Larger than what is allocated before bytes arrive: grown as they come.
        let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        let wire = write_req(&mut c, big.clone()).unwrap();
        assert_eq!(read_req(&mut c, wire).unwrap(), big);
        // A 48 MiB claim followed by three bytes: an early end, not 48 MiB of zeroes.
        let mut short = (48u32 << 20).to_le_bytes().to_vec();
        short.extend_from_slice(b"abc");
        let e = read_req(&mut c, short).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn frames_round_trip(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut c = FrameCodec::new(2048, 2048);
            let wire = write_req(&mut c, data.clone()).unwrap();
            prop_assert_eq!(wire.len(), data.len() + 4);
            prop_assert_eq!(read_req(&mut c, wire).unwrap(), data);
        }

        #[test]
        fn truncated_frames_error(data in proptest::collection::vec(any::<u8>(), 1..512), cut in any::<prop::sample::Index>()) {
            let mut c = FrameCodec::new(1024, 1024);
            let wire = write_req(&mut c, data).unwrap();
            let keep = cut.index(wire.len() - 1);
            prop_assert!(read_req(&mut c, wire[..keep].to_vec()).is_err());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut c = FrameCodec::new(256, 256);
            let _ = read_req(&mut c, bytes.clone());
            let _ = read_resp(&mut c, bytes);
        }
    }
}
