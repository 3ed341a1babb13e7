//! Shared helpers for the state tests: a small chain with funded keys that builds, signs,
//! batch-verifies and applies blocks.
#![allow(dead_code)]

use chain::{
    Address, Block, BlockKind, BlockReceipt, ChainConfig, ChainError, ChainResult, Header,
    SignedTx, State, Tx, TxPayload, CPC, PROTOCOL_VERSION,
};
use crypto_accel::{verify_each, DataId, Hash, Keypair, VerifyBatch};

pub fn kp(i: u8) -> Keypair {
    Keypair::from_seed([i; 32])
}

pub fn addr(k: &Keypair) -> Address {
    Address::of(&k.public())
}

pub const FUND: u128 = 1_000_000 * CPC;

pub struct Chain {
    pub cfg: ChainConfig,
    pub state: State,
    pub users: Vec<Keypair>,
    pub owner: Keypair,
    pub proposer: Keypair,
    pub validators: Vec<Keypair>,
    pub genesis_supply: u128,
}

impl Chain {
    /// `n` funded users (seeds 1..=n), an owner (seed 100), a proposer (seed 101) and four
    /// validators (seeds 200..=203); `blocks_per_year` as given.
    pub fn new(n: u8, blocks_per_year: u64) -> Chain {
        let users: Vec<Keypair> = (1..=n).map(kp).collect();
        let owner = kp(100);
        let proposer = kp(101);
        let validators: Vec<Keypair> = (200..=203).map(kp).collect();
        let mut cfg = ChainConfig::mainnet_like(
            7,
            validators.iter().map(addr).collect(),
            vec![addr(&proposer)],
            addr(&owner),
        );
        cfg.blocks_per_year = blocks_per_year;
        let mut balances: Vec<(Address, u128)> = users.iter().map(|k| (addr(k), FUND)).collect();
        balances.push((addr(&owner), FUND));
        let state = State::genesis(&cfg, &balances);
        Chain {
            cfg,
            state,
            users,
            owner,
            proposer,
            validators,
            genesis_supply: FUND * (u128::from(n) + 1),
        }
    }

    pub fn u(&self, i: usize) -> Address {
        addr(&self.users[i])
    }

    pub fn sign(&self, k: &Keypair, nonce: u64, payload: TxPayload) -> SignedTx {
        SignedTx::sign(k, self.cfg.chain_id, nonce, CPC / 1000, payload)
    }

    /// Signs with the sender's current nonce.
    pub fn tx(&self, k: &Keypair, payload: TxPayload) -> SignedTx {
        self.sign(k, self.state.nonce(&addr(k)), payload)
    }

    pub fn header(&self, kind: BlockKind, txs: &[Tx]) -> Header {
        Header {
            version: PROTOCOL_VERSION,
            chain_id: self.cfg.chain_id,
            number: self.state.height() + 1,
            parent: self.state.last_hash(),
            timestamp_ms: 1_000 * (self.state.height() + 1),
            term: self.state.term(),
            proposer: addr(&self.proposer),
            kind,
            tx_root: Block::compute_tx_root(txs),
            state_root: self.state.root(),
            seal: None,
        }
    }

    pub fn block(&self, txs: Vec<SignedTx>) -> Block {
        let txs: Vec<Tx> = txs.into_iter().map(Tx::Signed).collect();
        Block {
            header: self.header(BlockKind::Normal, &txs),
            txs,
        }
    }

    /// Verifies signatures in a batch, then applies.
    pub fn apply_block(&mut self, b: &Block) -> ChainResult<BlockReceipt> {
        let mut batch = VerifyBatch::new();
        State::push_signatures(b, self.cfg.chain_id, &mut batch)?;
        assert!(
            verify_each(&batch).all_valid(),
            "bad signature in test block"
        );
        let r = self.state.apply_block(&self.cfg, b)?;
        assert_eq!(
            self.state.total_supply(),
            self.state.genesis_supply() + self.state.minted(),
            "supply changed other than by rewards"
        );
        Ok(r)
    }

    pub fn apply(&mut self, txs: Vec<SignedTx>) -> ChainResult<BlockReceipt> {
        let b = self.block(txs);
        self.apply_block(&b)
    }

    /// One transaction in its own block; must succeed.
    pub fn ok(&mut self, k: &Keypair, payload: TxPayload) -> BlockReceipt {
        let t = self.tx(k, payload.clone());
        match self.apply(vec![t]) {
            Ok(r) => r,
            Err(e) => panic!("{payload:?} failed: {e}"),
        }
    }

    /// One transaction that must fail with `want`, in check_tx and in a block, leaving the
    /// state untouched.
    pub fn rejects(&mut self, k: &Keypair, payload: TxPayload, want: ChainError) {
        let t = self.tx(k, payload);
        self.rejects_tx(t, want);
    }

    pub fn rejects_tx(&mut self, t: SignedTx, want: ChainError) {
        let before = self.state.snapshot();
        let root = self.state.root();
        assert_eq!(
            self.state.check_tx(&self.cfg, &t),
            Err(want.clone()),
            "check_tx"
        );
        let b = self.block(vec![t]);
        assert_eq!(self.state.apply_block(&self.cfg, &b).err(), Some(want));
        assert_eq!(self.state.root(), root, "root changed by a rejected block");
        assert_eq!(
            self.state.snapshot(),
            before,
            "state changed by a rejected block"
        );
    }

    pub fn empty_blocks(&mut self, n: u64) {
        for _ in 0..n {
            self.apply(vec![]).expect("empty block");
        }
    }

    /// Applies empty blocks until the next block has height `h`.
    pub fn advance_to(&mut self, h: u64) {
        while self.state.height() + 1 < h {
            self.apply(vec![]).expect("empty block");
        }
    }

    pub fn impeach_block(&self, proposer: Address) -> Block {
        let number = self.state.height() + 1;
        let txs = vec![Tx::Penalty { proposer, number }];
        let mut header = self.header(BlockKind::Impeach, &txs);
        header.proposer = proposer;
        Block { header, txs }
    }
}

pub fn data_id(i: u64) -> DataId {
    DataId(Hash::of(&i.to_le_bytes()))
}

pub fn register(i: u64, policy: chain::AccessPolicy) -> TxPayload {
    TxPayload::RegisterData {
        id: data_id(i),
        merkle_root: Hash::of(b"root"),
        size: 1 << 20,
        k: 4,
        m: 2,
        intervals: chain::IntervalRange { start: 0, end: 10 },
        policy,
    }
}
