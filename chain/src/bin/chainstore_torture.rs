//! `chainstore-torture`: the child process of the block-store crash test
//! (`chain/tests/store_crash.rs`). It opens a [`ChainStore`], then builds, verifies, applies
//! and commits a deterministic chain one block at a time, printing
//! `COMMITTED <number> <state root hex>` after each commit has returned (so the block is
//! durable). The parent kills it with SIGKILL at a random moment and checks the store.
//!
//! Blocks are a pure function of the chain seed and the state before them (transfers,
//! `RegisterData` and grants from 16 funded users, all signed), so a run that resumes from
//! the stored head continues exactly the sequence an uninterrupted run would make.
//!
//! Usage: `chainstore-torture <dir> <chain seed> <until height> <snapshot every>`.

use std::collections::HashMap;
use std::io::Write;

use chain::{
    AccessPolicy, Address, Amount, Block, BlockKind, Certificate, ChainConfig, ChainStore, Header,
    IntervalRange, SignedTx, State, StoreConfig, Tx, TxPayload, VoteKind, CPC, PROTOCOL_VERSION,
};
use crypto_accel::{verify_each, DataId, Hash, Keypair, VerifyBatch};

/// Funded users sending the transactions.
pub const USERS: usize = 16;
/// Most transactions per block.
pub const MAX_TXS: u64 = 6;
/// Each user's genesis balance.
pub const FUND: Amount = 1_000_000 * CPC;
/// Fee of every transaction.
pub const FEE: Amount = CPC / 1_000;

/// The keys, configuration and genesis of the torture chain.
#[derive(Debug)]
pub struct Setup {
    /// Chain parameters.
    pub cfg: ChainConfig,
    /// Genesis balances.
    pub genesis: Vec<(Address, Amount)>,
    /// The funded users.
    pub users: Vec<Keypair>,
    /// The only proposer.
    pub proposer: Keypair,
    /// Four validators signing every certificate.
    pub validators: Vec<Keypair>,
    index: HashMap<Address, usize>,
}

fn key(seed: u64, role: u8, i: u8) -> Keypair {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&seed.to_le_bytes());
    s[8] = role;
    s[9] = i;
    Keypair::from_seed(s)
}

/// The torture chain of `seed`.
pub fn setup(seed: u64) -> Setup {
    let users: Vec<Keypair> = (0..USERS as u8).map(|i| key(seed, 1, i)).collect();
    let proposer = key(seed, 2, 0);
    let validators: Vec<Keypair> = (0..4).map(|i| key(seed, 3, i)).collect();
    let owner = key(seed, 4, 0);
    let cfg = ChainConfig::mainnet_like(
        0x7000 | (seed as u32 & 0xff),
        validators
            .iter()
            .map(|k| Address::of(&k.public()))
            .collect(),
        vec![Address::of(&proposer.public())],
        Address::of(&owner.public()),
    );
    let genesis = users
        .iter()
        .map(|k| (Address::of(&k.public()), FUND))
        .collect();
    let index = users
        .iter()
        .enumerate()
        .map(|(i, k)| (Address::of(&k.public()), i))
        .collect();
    Setup {
        cfg,
        genesis,
        users,
        proposer,
        validators,
        index,
    }
}

/// splitmix64: a tiny deterministic generator (no dependency, same stream everywhere).
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// The data id registered by transaction `j` of block `number`.
pub fn data_id(seed: u64, number: u64, j: u64) -> DataId {
    let mut b = [0u8; 24];
    b[..8].copy_from_slice(&seed.to_le_bytes());
    b[8..16].copy_from_slice(&number.to_le_bytes());
    b[16..].copy_from_slice(&j.to_le_bytes());
    DataId(Hash::domain("chainstore torture data", &b))
}

/// The next block after `state` and the validators' certificate for it.
pub fn next_block(s: &Setup, seed: u64, state: &State) -> (Block, Certificate) {
    let number = state.height() + 1;
    let mut rng = SplitMix(seed ^ number.wrapping_mul(0xa076_1d64_78bd_642f));
    let mut nonces: HashMap<Address, u64> = HashMap::new();
    let mut txs = Vec::new();
    let chain_id = s.cfg.chain_id;
    for j in 0..rng.below(MAX_TXS + 1) {
        let from = rng.below(USERS as u64) as usize;
        let mut signer = from;
        let payload = match rng.below(10) {
            0..=4 => TxPayload::Transfer {
                to: Address::of(&s.users[rng.below(USERS as u64) as usize].public()),
                amount: (1 + u128::from(rng.below(1_000))) * CPC / 100,
            },
            r => {
                let grant = if r >= 8 && number > 1 {
                    (0..4).find_map(|_| {
                        let m = 1 + rng.below(number - 1);
                        let id = data_id(seed, m, rng.below(MAX_TXS));
                        let d = state.data(&id)?;
                        let owner = *s.index.get(&d.owner)?;
                        Some((id, owner))
                    })
                } else {
                    None
                };
                match grant {
                    Some((id, owner)) => {
                        signer = owner;
                        let start = rng.below(8);
                        TxPayload::Grant {
                            id,
                            reader: Address::of(
                                &s.users[rng.below(USERS as u64) as usize].public(),
                            ),
                            intervals: IntervalRange {
                                start,
                                end: start + 1 + rng.below(8),
                            },
                            expiry: number + 1 + rng.below(100),
                        }
                    }
                    None => TxPayload::RegisterData {
                        id: data_id(seed, number, j),
                        merkle_root: Hash::of(&rng.next_u64().to_le_bytes()),
                        size: 1 + rng.below(1 << 30),
                        k: 4,
                        m: 2,
                        intervals: IntervalRange { start: 0, end: 16 },
                        policy: AccessPolicy::GrantBased,
                    },
                }
            }
        };
        let kp = &s.users[signer];
        let a = Address::of(&kp.public());
        let nonce = nonces.entry(a).or_insert_with(|| state.nonce(&a));
        txs.push(Tx::Signed(SignedTx::sign(
            kp, chain_id, *nonce, FEE, payload,
        )));
        *nonce += 1;
    }
    let mut header = Header {
        version: PROTOCOL_VERSION,
        chain_id,
        number,
        parent: state.last_hash(),
        timestamp_ms: 1_000 * number,
        term: state.term(),
        proposer: Address::of(&s.proposer.public()),
        kind: BlockKind::Normal,
        tx_root: Block::compute_tx_root(&txs),
        state_root: state.root(),
        seal: None,
    };
    header.seal_with(&s.proposer);
    let block = Block { header, txs };
    let hash = block.hash();
    let cert = Certificate::signed_by(&s.validators, chain_id, VoteKind::Commit, number, 0, hash);
    (block, cert)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, what: &str) -> Result<T, String> {
    args.get(i)
        .ok_or_else(|| format!("missing argument {i}: {what}"))?
        .parse()
        .map_err(|_| format!("argument {i} ({what}) does not parse"))
}

#[allow(dead_code)] // The crash test includes this file as a module for its generator.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let dir: String = arg(&args, 1, "store directory")?;
    let seed: u64 = arg(&args, 2, "chain seed")?;
    let until: u64 = arg(&args, 3, "until height")?;
    let snapshot_every: u64 = arg(&args, 4, "snapshot every")?;
    let s = setup(seed);
    let store_cfg = StoreConfig {
        snapshot_every,
        ..StoreConfig::default()
    };
    let (mut store, mut state) = ChainStore::open_with(&dir, &s.cfg, &s.genesis, store_cfg)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "RESUMED {}", store.head().number)?;
    out.flush()?;
    let mut batch = VerifyBatch::new();
    while state.height() < until {
        let (block, cert) = next_block(&s, seed, &state);
        batch.clear();
        State::push_signatures(&block, s.cfg.chain_id, &mut batch)?;
        if !verify_each(&batch).all_valid() {
            return Err("generated block has a bad signature".into());
        }
        let receipt = state.apply_block(&s.cfg, &block)?;
        store.commit(&block, &cert, &receipt, &state)?;
        writeln!(out, "COMMITTED {} {}", block.header.number, state.root())?;
        out.flush()?;
    }
    writeln!(out, "DONE {}", state.height())?;
    out.flush()?;
    Ok(())
}
