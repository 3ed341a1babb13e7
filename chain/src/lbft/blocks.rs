//! Deterministic block construction for LBFT 2.0: the proposer's sealed block and the
//! impeach block every honest validator builds identically.

use crypto_accel::{Hash, Keypair};

use crate::config::ChainConfig;
use crate::election::term_of;
use crate::tx::{Block, Tx};
use crate::types::{Address, BlockKind, Header, PROTOCOL_VERSION};

/// The genesis header of a networked chain: number 0, no parent, no proposer, no seal,
/// `timestamp_ms` fixed in the genesis file. Block 1 points to its hash; its state root is
/// zero (headers carry the pre-state root, and nothing precedes genesis).
pub fn genesis_header(cfg: &ChainConfig, timestamp_ms: u64) -> Header {
    Header {
        version: PROTOCOL_VERSION,
        chain_id: cfg.chain_id,
        number: 0,
        parent: Hash::ZERO,
        timestamp_ms,
        term: 0,
        proposer: Address::default(),
        kind: BlockKind::Normal,
        tx_root: Block::compute_tx_root(&[]),
        state_root: Hash::ZERO,
        seal: None,
    }
}

/// The impeach block for the height after `parent` (LBFT2 impeachment, step 1): timestamp =
/// parent timestamp + period + impeach timeout, empty seal, one penalty transaction on the
/// failed `proposer`, state root = the parent's post-state root. Every honest validator with
/// the same parent builds the same bytes, so no leader is needed.
pub fn impeach_block(
    cfg: &ChainConfig,
    parent: &Header,
    parent_post_root: Hash,
    proposer: Address,
) -> Block {
    let number = parent.number.saturating_add(1);
    let txs = vec![Tx::Penalty { proposer, number }];
    let header = Header {
        version: PROTOCOL_VERSION,
        chain_id: cfg.chain_id,
        number,
        parent: parent.hash(),
        timestamp_ms: parent
            .timestamp_ms
            .saturating_add(cfg.period_ms)
            .saturating_add(cfg.impeach_timeout_ms),
        term: term_of(cfg, number),
        proposer,
        kind: BlockKind::Impeach,
        tx_root: Block::compute_tx_root(&txs),
        state_root: parent_post_root,
        seal: None,
    };
    Block { header, txs }
}

/// A proposer's block for the height after `parent` (LBFT2 normal case, step 1): timestamp
/// = max(now, parent timestamp + period), sealed with `kp`.
pub fn propose(
    cfg: &ChainConfig,
    kp: &Keypair,
    parent: &Header,
    parent_post_root: Hash,
    txs: Vec<Tx>,
    now_ms: u64,
) -> Block {
    let number = parent.number.saturating_add(1);
    let mut header = Header {
        version: PROTOCOL_VERSION,
        chain_id: cfg.chain_id,
        number,
        parent: parent.hash(),
        timestamp_ms: now_ms.max(parent.timestamp_ms.saturating_add(cfg.period_ms)),
        term: term_of(cfg, number),
        proposer: Address::of(&kp.public()),
        kind: BlockKind::Normal,
        tx_root: Block::compute_tx_root(&txs),
        state_root: parent_post_root,
        seal: None,
    };
    header.seal_with(kp);
    Block { header, txs }
}
