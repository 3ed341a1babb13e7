//! Execution-rate probe (prints, asserts nothing about speed): blocks of 10,000
//! `RegisterData` transactions from distinct senders, applied with the state root and diff.
//! Signatures are excluded (batch-verified separately), so the transactions carry dummy
//! signatures. Run in release for a meaningful figure:
//! `cargo test --release -p chain --test state_bench -- --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use chain::{
    AccessPolicy, Address, Block, BlockKind, ChainConfig, Header, IntervalRange, SignedTx, State,
    Tx, TxPayload, CPC, PROTOCOL_VERSION,
};
use crypto_accel::{DataId, Hash, Signature};

#[test]
fn register_data_execution_rate() {
    const TXS: usize = 10_000;
    const BLOCKS: u64 = 5;
    let senders: Vec<Address> = (0..TXS as u64)
        .map(|i| Address(*Hash::of(&i.to_le_bytes()).as_bytes()))
        .collect();
    let cfg = ChainConfig::mainnet_like(1, vec![], vec![], Address::default());
    let balances: Vec<(Address, u128)> = senders.iter().map(|a| (*a, 1_000 * CPC)).collect();
    let mut state = State::genesis(&cfg, &balances);
    let mut total = 0.0;
    for b in 0..BLOCKS {
        let txs: Vec<Tx> = senders
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let n = b * TXS as u64 + i as u64;
                Tx::Signed(SignedTx {
                    from: *a,
                    nonce: b,
                    fee: 1,
                    payload: TxPayload::RegisterData {
                        id: DataId(Hash::of(&n.to_le_bytes())),
                        merkle_root: Hash::of(b"root"),
                        size: 1 << 20,
                        k: 4,
                        m: 2,
                        intervals: IntervalRange { start: 0, end: 16 },
                        policy: AccessPolicy::GrantBased,
                    },
                    sig: Signature([0; 64]),
                })
            })
            .collect();
        let header = Header {
            version: PROTOCOL_VERSION,
            chain_id: 1,
            number: state.height() + 1,
            parent: state.last_hash(),
            timestamp_ms: 0,
            term: 0,
            proposer: Address::default(),
            kind: BlockKind::Normal,
            tx_root: Hash::ZERO,
            state_root: state.root(),
            seal: None,
        };
        let block = Block { header, txs };
        let t = Instant::now();
        let r = state
            .apply_block(&cfg, &block)
            .expect("bench block applies");
        let dt = t.elapsed().as_secs_f64();
        total += dt;
        println!(
            "block {}: {} txs in {:.1} ms = {:.0} tx/s; diff {} entries, {} KiB",
            r.number,
            TXS,
            dt * 1e3,
            TXS as f64 / dt,
            r.diff.count,
            r.diff.bytes.len() / 1024
        );
    }
    println!(
        "mean: {:.0} tx/s (state + root + diff, one core, signatures excluded)",
        (TXS as f64 * BLOCKS as f64) / total
    );
}
