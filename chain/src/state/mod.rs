//! The world state and its transition: accounts, the data registry with grants, the economy
//! and RNode pools, the six built-in contracts, rewards, and the state root.
//!
//! **Execution.** [`State::apply_block`] checks the header against the state (chain id,
//! next height, pre-state root, term), executes every transaction on journaled tables and
//! pays the rewards; any invalid transaction rejects the whole block and rolls every write
//! back. Signatures are not checked here: [`State::push_signatures`] puts them into a
//! [`VerifyBatch`] the caller verifies first (on a pool or an accelerator).
//!
//! **State root.** A hash chain over per-block diffs:
//! `root(N) = H("cpchain state root v1"; root(N−1) ‖ N ‖ H(diff(N)))`, with
//! `root(−1) = 0` and `diff(0)` the genesis contents. `diff(N)` lists every `(table, key)`
//! written by block N (sorted, deduplicated) with its new value or a deletion, so by
//! induction the root commits to the whole state and to how it was reached, at O(changes)
//! per block. Limits: no inclusion proofs (a light client cannot prove one entry), and two
//! histories reaching the same contents have different roots. Writes made between blocks
//! ([`State::set_committee`]) are committed with the next block.
//!
//! **Persistence.** Each block yields its [`StateDiff`] (in the [`BlockReceipt`]); a store
//! writes it atomically with the block and on restart replays the diffs on the genesis
//! state with [`State::apply_diff`], or loads a [`State::snapshot`].

pub(crate) mod exec;
pub(crate) mod records;
pub(crate) mod table;

use crypto_accel::{DataId, Hash, VerifyBatch};

use crate::config::ChainConfig;
use crate::contracts::SEED_MAX_AGE;
use crate::error::{ChainError, ChainResult};
use crate::keycache::KeyCache;
use crate::rewards::{basic_reward, maintenance_reward, SeasonPhase, Seasons};
use crate::rpt::{self, Rpt, MAX_WINDOW};
use crate::tx::{Block, SignedTx, Tx, TxPayload};
use crate::types::{Address, Amount, BlockKind, MAX_VALIDATORS, PROTOCOL_VERSION};

use exec::{bump, credit, exec_signed, meta, penalize, set_meta, Ctx};
pub use exec::{
    check_evidence, EQUIVOCATION_RNODE_DIVISOR, IMPEACH_PENALTY_DIVISOR, MAX_AUDITS_PER_REPORT,
};
pub use records::{
    Account, Activity, Candidate, DataRecord, Equivocation, GrantRecord, Listing, Order, OrderState,
};
use records::{ActivityKey, Committee, GrantKey, HeightKey, Meta, UploadKey};
pub use table::{DiffEntry, StateDiff, MAX_DIFF_BYTES};
use table::{Overlay, Store, Tables};

/// What one transaction did, beyond its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOutcome {
    /// Applied.
    Applied,
    /// A PDash listing was created.
    Listed {
        /// Listing id.
        item: u64,
    },
    /// A PDash order was placed.
    Ordered {
        /// Order id.
        order: u64,
    },
    /// Double-vote evidence punished a validator.
    Punished {
        /// The validator.
        validator: Address,
        /// Amount detained.
        detained: Amount,
    },
    /// An impeach block's penalty.
    Penalized {
        /// The impeached proposer.
        proposer: Address,
        /// Amount detained.
        detained: Amount,
    },
}

/// The result of applying one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockReceipt {
    /// Height.
    pub number: u64,
    /// Header hash.
    pub block_hash: Hash,
    /// Fees paid to the proposer.
    pub fees: Amount,
    /// Maintenance reward minted to the proposer.
    pub maintenance_reward: Amount,
    /// Economy pool basic rewards minted at this block (settlement start only).
    pub basic_rewards: Amount,
    /// One outcome per transaction, in order.
    pub outcomes: Vec<TxOutcome>,
    /// The state changes, for the store; `diff.root` is the new state root.
    pub diff: StateDiff,
}

/// The world state.
#[derive(Debug, Clone)]
pub struct State {
    tables: Tables,
    root: Hash,
}

impl State {
    /// The state after genesis: `balances` credited (duplicates add up).
    pub fn genesis(cfg: &ChainConfig, balances: &[(Address, Amount)]) -> State {
        Self::genesis_with_diff(cfg, balances).0
    }

    /// The genesis state and its diff (what a store writes first).
    pub fn genesis_with_diff(
        cfg: &ChainConfig,
        balances: &[(Address, Amount)],
    ) -> (State, StateDiff) {
        let mut t = Tables::default();
        let mut supply: Amount = 0;
        let mut seed = Vec::with_capacity(8 + balances.len() * 48);
        seed.extend_from_slice(&cfg.chain_id.to_le_bytes());
        for (a, amount) in balances {
            let mut acct = t.get::<table::Accounts>(a).unwrap_or_default();
            acct.balance = acct.balance.saturating_add(*amount);
            t.set::<table::Accounts>(*a, acct);
            supply = supply.saturating_add(*amount);
            seed.extend_from_slice(&a.0);
            seed.extend_from_slice(&amount.to_le_bytes());
        }
        let genesis_hash = Hash::domain("cpchain genesis v1", &seed);
        t.set::<table::BlockHashes>(0, genesis_hash);
        let mut m = Meta::initial();
        m.genesis_supply = supply;
        m.last_hash = genesis_hash;
        set_meta(&mut t, m);
        let diff = t.commit(0, Hash::ZERO);
        let root = diff.root;
        (State { tables: t, root }, diff)
    }

    /// Root committing to the whole state (see the module docs).
    pub fn root(&self) -> Hash {
        self.root
    }

    fn meta(&self) -> Meta {
        meta(&self.tables)
    }

    /// Height of the last applied block (0 after genesis).
    pub fn height(&self) -> u64 {
        self.meta().height
    }

    /// Term of the last applied block.
    pub fn term(&self) -> u64 {
        self.meta().term
    }

    /// Hash of the last applied block (a genesis hash at height 0).
    pub fn last_hash(&self) -> Hash {
        self.meta().last_hash
    }

    /// Adds every transaction signature (and every evidence vote signature) of `block` to
    /// `batch`; fails if a signer address is not a valid key.
    pub fn push_signatures(
        block: &Block,
        chain_id: u32,
        batch: &mut VerifyBatch,
    ) -> ChainResult<()> {
        for tx in &block.txs {
            if let Tx::Signed(st) = tx {
                Self::push_tx_signatures(st, chain_id, batch)?;
            }
        }
        Ok(())
    }

    /// As [`State::push_signatures`], with sender keys from `keys` (what a node does: it
    /// decompresses each sender's key once, not once per transaction).
    pub fn push_signatures_cached(
        block: &Block,
        chain_id: u32,
        batch: &mut VerifyBatch,
        keys: &mut KeyCache,
    ) -> ChainResult<()> {
        for tx in &block.txs {
            if let Tx::Signed(st) = tx {
                if !st.push_verify_cached(chain_id, batch, keys) {
                    return Err(ChainError::BadSender { addr: st.from });
                }
                Self::push_evidence_signatures(st, chain_id, batch)?;
            }
        }
        Ok(())
    }

    /// Adds one transaction's signatures (sender, and evidence votes) to `batch`.
    pub fn push_tx_signatures(
        tx: &SignedTx,
        chain_id: u32,
        batch: &mut VerifyBatch,
    ) -> ChainResult<()> {
        if !tx.push_verify(chain_id, batch) {
            return Err(ChainError::BadSender { addr: tx.from });
        }
        Self::push_evidence_signatures(tx, chain_id, batch)
    }

    /// Every signature of `block`'s body in one batch (as [`State::push_signatures_cached`])
    /// with the verdict-cache id of each item ([`crate::verify_item_id`], in push order:
    /// sender, then an evidence transaction's two votes), the same ids the LBFT machine
    /// gives them, so a verdict cached from the proposal check is reused. `None` when a
    /// sender's key does not decode.
    pub fn body_signatures(
        block: &Block,
        chain_id: u32,
        keys: &mut KeyCache,
    ) -> Option<(VerifyBatch, Vec<Hash>)> {
        let mut batch = VerifyBatch::new();
        Self::push_signatures_cached(block, chain_id, &mut batch, keys).ok()?;
        let mut ids = Vec::with_capacity(batch.len());
        for tx in &block.txs {
            let Tx::Signed(t) = tx else { continue };
            let mut signers = vec![(t.from, t.sig)];
            if let TxPayload::Evidence(dv) = &t.payload {
                signers.push((dv.a.validator, dv.a.sig));
                signers.push((dv.b.validator, dv.b.sig));
            }
            for (a, sig) in signers {
                if ids.len() >= batch.len() {
                    return None;
                }
                ids.push(crate::verify_item_id(&a.0, &sig, batch.message(ids.len())));
            }
        }
        (ids.len() == batch.len()).then_some((batch, ids))
    }

    /// As [`State::push_tx_signatures`], with the sender's key from `keys` (a mempool sees
    /// the same senders again and again).
    pub fn push_tx_signatures_cached(
        tx: &SignedTx,
        chain_id: u32,
        batch: &mut VerifyBatch,
        keys: &mut KeyCache,
    ) -> ChainResult<()> {
        if !tx.push_verify_cached(chain_id, batch, keys) {
            return Err(ChainError::BadSender { addr: tx.from });
        }
        Self::push_evidence_signatures(tx, chain_id, batch)
    }

    /// Adds the two vote signatures of an evidence transaction, if `tx` is one.
    fn push_evidence_signatures(
        tx: &SignedTx,
        chain_id: u32,
        batch: &mut VerifyBatch,
    ) -> ChainResult<()> {
        if let TxPayload::Evidence(dv) = &tx.payload {
            for v in [&dv.a, &dv.b] {
                let pk = v
                    .validator
                    .public_key()
                    .map_err(|_| ChainError::BadSender { addr: v.validator })?;
                batch.push(&pk, v.domain(chain_id), &v.message(), &v.sig);
            }
        }
        Ok(())
    }

    /// Checks one transaction against the current state as if it were the first of the
    /// next block, without applying it (signatures excluded).
    pub fn check_tx(&self, cfg: &ChainConfig, tx: &SignedTx) -> ChainResult<()> {
        let m = self.meta();
        let cx = Ctx {
            cfg,
            height: m.height.saturating_add(1),
            term: m.term,
        };
        let mut ov = Overlay::new(&self.tables);
        exec_signed(&mut ov, &cx, tx).map(|_| ())
    }

    /// For a proposer: the indices of `txs` that apply in sequence at the next height in
    /// `term` (invalid ones skipped). The state is left unchanged.
    pub fn select_valid(&mut self, cfg: &ChainConfig, term: u64, txs: &[SignedTx]) -> Vec<usize> {
        let m = self.meta();
        let cx = Ctx {
            cfg,
            height: m.height.saturating_add(1),
            term: term.max(m.term),
        };
        let start = self.tables.savepoint();
        let mut ok = Vec::with_capacity(txs.len());
        for (i, tx) in txs.iter().enumerate() {
            let sp = self.tables.savepoint();
            match exec_signed(&mut self.tables, &cx, tx) {
                Ok(_) => ok.push(i),
                Err(_) => self.tables.rollback_to(&sp),
            }
        }
        self.tables.rollback_to(&start);
        ok
    }

    /// Checks and applies one block (signatures already verified) and its rewards. On any
    /// error the state is unchanged.
    pub fn apply_block(&mut self, cfg: &ChainConfig, block: &Block) -> ChainResult<BlockReceipt> {
        let h = &block.header;
        if h.version != PROTOCOL_VERSION {
            return Err(ChainError::Version {
                got: h.version,
                ours: PROTOCOL_VERSION,
            });
        }
        if h.chain_id != cfg.chain_id {
            return Err(ChainError::WrongChain {
                expected: cfg.chain_id,
                got: h.chain_id,
            });
        }
        let m = self.meta();
        let next = m.height.saturating_add(1);
        if h.number != next {
            return Err(ChainError::BadBlockNumber {
                expected: next,
                got: h.number,
            });
        }
        if h.state_root != self.root {
            return Err(ChainError::StateRootMismatch {
                expected: self.root,
                got: h.state_root,
            });
        }
        if h.term < m.term {
            return Err(ChainError::TermWentBack {
                current: m.term,
                got: h.term,
            });
        }
        let sp = self.tables.savepoint();
        match self.execute(cfg, block) {
            Ok(mut r) => {
                let diff = self.tables.commit(h.number, self.root);
                self.root = diff.root;
                r.diff = diff;
                Ok(r)
            }
            Err(e) => {
                self.tables.rollback_to(&sp);
                Err(e)
            }
        }
    }

    fn execute(&mut self, cfg: &ChainConfig, block: &Block) -> ChainResult<BlockReceipt> {
        let h = &block.header;
        let cx = Ctx {
            cfg,
            height: h.number,
            term: h.term,
        };
        let mut m = self.meta();
        if h.term > m.term {
            let old: Vec<u64> = self
                .tables
                .committees
                .range(..h.term)
                .map(|(k, _)| *k)
                .collect();
            for t in old {
                self.tables.del::<table::Committees>(&t);
            }
            m.term = h.term;
            set_meta(&mut self.tables, m);
        }
        let mut outcomes = Vec::with_capacity(block.txs.len());
        let mut fees: Amount = 0;
        let mut reward: Amount = 0;
        match h.kind {
            BlockKind::Normal => {
                for tx in &block.txs {
                    let Tx::Signed(st) = tx else {
                        return Err(ChainError::MalformedBlock {
                            kind: "normal",
                            reason: "penalty transaction in a normal block",
                        });
                    };
                    outcomes.push(exec_signed(&mut self.tables, &cx, st)?);
                    fees = fees
                        .checked_add(st.fee)
                        .ok_or(ChainError::Overflow { what: "fees" })?;
                }
                reward = maintenance_reward(cfg, h.number);
                credit(&mut self.tables, h.proposer, fees)?;
                credit(&mut self.tables, h.proposer, reward)?;
                self.mint(reward)?;
                bump(&mut self.tables, h.proposer, h.number, |a| {
                    a.proposed = a.proposed.saturating_add(1)
                });
            }
            BlockKind::Impeach => match block.txs.as_slice() {
                [Tx::Penalty { proposer, number }] => {
                    if *proposer != h.proposer || *number != h.number {
                        return Err(ChainError::PenaltyMismatch {
                            proposer: *proposer,
                            number: *number,
                        });
                    }
                    outcomes.push(penalize(&mut self.tables, &cx, *proposer, *number)?);
                }
                _ => {
                    return Err(ChainError::MalformedBlock {
                        kind: "impeach",
                        reason: "must carry exactly one penalty transaction",
                    })
                }
            },
        }
        let basic_rewards = self.settle_economy(cfg, h.number)?;
        self.prune_activity(h.number);
        let hash = block.hash();
        self.tables.set::<table::BlockHashes>(h.number, hash);
        if let Some(old) = h.number.checked_sub(SEED_MAX_AGE + 1) {
            self.tables.del::<table::BlockHashes>(&old);
        }
        let mut m = self.meta();
        m.height = h.number;
        m.last_hash = hash;
        set_meta(&mut self.tables, m);
        Ok(BlockReceipt {
            number: h.number,
            block_hash: hash,
            fees,
            maintenance_reward: reward,
            basic_rewards,
            outcomes,
            diff: StateDiff {
                number: h.number,
                prev_root: self.root,
                root: self.root,
                count: 0,
                bytes: Vec::new(),
            },
        })
    }

    fn mint(&mut self, amount: Amount) -> ChainResult<()> {
        let mut m = self.meta();
        m.minted = m
            .minted
            .checked_add(amount)
            .ok_or(ChainError::Overflow { what: "minted" })?;
        set_meta(&mut self.tables, m);
        Ok(())
    }

    /// At the first block of a settlement phase, pays every depositor ⌊R·d/D⌋.
    fn settle_economy(&mut self, cfg: &ChainConfig, number: u64) -> ChainResult<Amount> {
        let seasons = Seasons::of(cfg);
        if !seasons.is_settlement_start(number) {
            return Ok(0);
        }
        let total = self.meta().economy_total;
        let r = seasons.season_reward(cfg);
        let pay: Vec<(Address, Amount)> = self
            .tables
            .economy
            .iter()
            .map(|(a, d)| (*a, basic_reward(r, d.0, total)))
            .collect();
        let mut sum: Amount = 0;
        for (a, x) in pay {
            credit(&mut self.tables, a, x)?;
            sum = sum.saturating_add(x);
        }
        self.mint(sum)?;
        Ok(sum)
    }

    /// Drops activity that no window can reach any more (height − MAX_WINDOW).
    fn prune_activity(&mut self, number: u64) {
        let Some(old) = number.checked_sub(MAX_WINDOW) else {
            return;
        };
        let lo = HeightKey {
            height: old,
            addr: Address([0; 32]),
        };
        let hi = HeightKey {
            height: old,
            addr: Address([0xff; 32]),
        };
        let keys: Vec<HeightKey> = self
            .tables
            .activity_index
            .range(lo..=hi)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            self.tables.del::<table::ActivityIndex>(&k);
            self.tables.del::<table::ActivityTable>(&ActivityKey {
                addr: k.addr,
                height: k.height,
            });
        }
    }

    /// After `block` (just applied): if it ends its term, elect the next term's proposers
    /// from `candidates` with the block's hash as seed ([`crate::elect_committee`],
    /// [`crate::term_seed`]) and record them, so the committee is known before the next
    /// term's first block (the writes commit with that block; the root is unchanged).
    /// Every node does this with the same candidates, so all record the same committee.
    pub fn record_next_committee(
        &mut self,
        cfg: &ChainConfig,
        candidates: &[(Address, u64)],
        block: &Block,
    ) -> ChainResult<()> {
        let next = block.header.number.saturating_add(1);
        let tl = cfg.term_len().max(1);
        if !next.is_multiple_of(tl) {
            return Ok(());
        }
        let term = next / tl;
        let committee =
            crate::elect_committee(cfg, candidates, crate::term_seed(block.hash(), term));
        self.set_committee(term, &committee)
    }

    /// Records the proposers elected for `term` and locks their RNode deposits and
    /// candidacies through that term. Every node must call it at the same point (before
    /// the first block of `term`); the writes are committed with the next block.
    pub fn set_committee(&mut self, term: u64, members: &[Address]) -> ChainResult<()> {
        if members.len() > MAX_VALIDATORS {
            return Err(ChainError::ParamOutOfBounds {
                what: "committee size",
                value: members.len() as u64,
                max: MAX_VALIDATORS as u64,
            });
        }
        for a in members {
            let until = self.tables.get::<table::Locked>(a).unwrap_or(0).max(term);
            self.tables.set::<table::Locked>(*a, until);
        }
        self.tables
            .set::<table::Committees>(term, Committee(members.to_vec()));
        Ok(())
    }

    /// The committee recorded for `term` (empty if none).
    pub fn committee(&self, term: u64) -> Vec<Address> {
        self.tables
            .committees
            .get(&term)
            .map(|c| c.0.clone())
            .unwrap_or_default()
    }

    /// The last term `addr` is elected for, if any.
    pub fn locked_until(&self, addr: &Address) -> Option<u64> {
        self.tables.locked.get(addr).copied()
    }

    /// An account (default if never touched).
    pub fn account(&self, addr: &Address) -> Account {
        self.tables.accounts.get(addr).copied().unwrap_or_default()
    }

    /// A balance.
    pub fn balance(&self, addr: &Address) -> Amount {
        self.account(addr).balance
    }

    /// The next nonce of `addr`.
    pub fn nonce(&self, addr: &Address) -> u64 {
        self.account(addr).nonce
    }

    /// A data registration.
    pub fn data(&self, id: &DataId) -> Option<DataRecord> {
        self.tables.data.get(id).copied()
    }

    /// The grant of `id` to `reader`, revoked or not.
    pub fn grant(&self, id: &DataId, reader: &Address) -> Option<GrantRecord> {
        self.tables
            .grants
            .get(&GrantKey {
                data: *id,
                reader: *reader,
            })
            .copied()
    }

    /// Whether `reader` may read interval `interval` of `id` at `height`: the interval
    /// must lie in the data's range; then the owner always may, anyone may under a public
    /// policy, and under a grant-based policy a reader whose unrevoked grant covers the
    /// interval and has `height < expiry`.
    pub fn may_read(&self, reader: &Address, id: &DataId, interval: u64, height: u64) -> bool {
        self.read_right(reader, id, Some(interval), height)
    }

    /// Whether `reader` may read some interval of `id` at `height` (what reading the data's
    /// manifest needs): the owner, anyone under a public policy, or a reader with an
    /// unrevoked, unexpired grant under a grant-based policy.
    pub fn may_read_some(&self, reader: &Address, id: &DataId, height: u64) -> bool {
        self.read_right(reader, id, None, height)
    }

    /// [`State::may_read`] for `Some(interval)`, [`State::may_read_some`] for `None`.
    fn read_right(
        &self,
        reader: &Address,
        id: &DataId,
        interval: Option<u64>,
        height: u64,
    ) -> bool {
        let Some(d) = self.tables.data.get(id) else {
            return false;
        };
        if interval.is_some_and(|i| !d.intervals.contains(i)) {
            return false;
        }
        if d.owner == *reader {
            return true;
        }
        match d.policy {
            crate::tx::AccessPolicy::Public => true,
            crate::tx::AccessPolicy::OwnerOnly => false,
            crate::tx::AccessPolicy::GrantBased => self.grant(id, reader).is_some_and(|g| {
                g.revoked_at.is_none()
                    && height < g.expiry
                    && interval.is_none_or(|i| g.intervals.contains(i))
            }),
        }
    }

    /// Register contract: the data `addr` registered, with heights.
    pub fn upload_history(&self, addr: &Address) -> Vec<(DataId, u64)> {
        let lo = UploadKey {
            addr: *addr,
            data: DataId::from_bytes([0; 32]),
        };
        let hi = UploadKey {
            addr: *addr,
            data: DataId::from_bytes([0xff; 32]),
        };
        self.tables
            .uploads
            .range(lo..=hi)
            .map(|(k, h)| (k.data, *h))
            .collect()
    }

    /// Register contract: how many pieces of data `addr` registered.
    pub fn data_contribution(&self, addr: &Address) -> u64 {
        self.upload_history(addr).len() as u64
    }

    /// Economy pool deposit of `addr`.
    pub fn economy_deposit(&self, addr: &Address) -> Amount {
        self.tables.economy.get(addr).map_or(0, |f| f.0)
    }

    /// Economy pool total D.
    pub fn economy_total(&self) -> Amount {
        self.meta().economy_total
    }

    /// The economy season phase at `height`.
    pub fn economy_phase(cfg: &ChainConfig, height: u64) -> SeasonPhase {
        Seasons::of(cfg).phase(height)
    }

    /// RNode pool deposit of `addr`.
    pub fn rnode_deposit(&self, addr: &Address) -> Amount {
        self.tables.rnodes.get(addr).map_or(0, |f| f.0)
    }

    /// Whether `addr` holds at least the RNode minimum.
    pub fn is_rnode(&self, cfg: &ChainConfig, addr: &Address) -> bool {
        self.rnode_deposit(addr) >= cfg.rnode_min_deposit
    }

    /// Every RNode (a holder of at least the RNode minimum) with its deposit.
    fn staked_rnodes<'a>(
        &'a self,
        cfg: &'a ChainConfig,
    ) -> impl Iterator<Item = (Address, Amount)> + 'a {
        self.tables
            .rnodes
            .iter()
            .filter(|(_, f)| f.0 >= cfg.rnode_min_deposit)
            .map(|(a, f)| (*a, f.0))
    }

    /// Up to `n` RNodes (holders of at least the RNode minimum) with their deposits,
    /// largest deposit first (ties by address).
    pub fn rnodes(&self, cfg: &ChainConfig, n: usize) -> Vec<(Address, Amount)> {
        let mut v: Vec<(Address, Amount)> = self.staked_rnodes(cfg).collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// The `n` RNodes whose addresses are XOR-closest to `target` (a data id), closest
    /// first: the storage nodes that may coordinate that data.
    pub fn rnodes_closest(&self, cfg: &ChainConfig, target: &[u8; 32], n: usize) -> Vec<Address> {
        let dist = |a: &Address| -> [u8; 32] { std::array::from_fn(|i| a.0[i] ^ target[i]) };
        let mut v: Vec<([u8; 32], Address)> = self
            .staked_rnodes(cfg)
            .map(|(a, _)| (dist(&a), a))
            .collect();
        let n = n.min(v.len());
        if n == 0 {
            return Vec::new();
        }
        v.select_nth_unstable(n - 1);
        v.truncate(n);
        v.sort_unstable();
        v.into_iter().map(|(_, a)| a).collect()
    }

    /// Proxy register `get_real_contract`.
    pub fn get_real_contract(&self, proxy: &Address) -> Option<Address> {
        self.tables.proxies.get(proxy).copied()
    }

    /// RPT contract `get_rpt`: `addr`'s reputation at the current height over the window.
    pub fn get_rpt(&self, addr: &Address) -> Rpt {
        let m = self.meta();
        let lo = m.height.saturating_sub(m.rpt_window).saturating_add(1);
        let mut sum = Activity::default();
        for (_, a) in self.tables.activity.range(
            ActivityKey {
                addr: *addr,
                height: lo,
            }..=ActivityKey {
                addr: *addr,
                height: m.height,
            },
        ) {
            sum.add(a);
        }
        let holdings = self.balance(addr).saturating_add(self.rnode_deposit(addr));
        rpt::score(holdings, &sum, &m.weights)
    }

    /// RPT weights α, β, γ, ψ, ω (per hundred).
    pub fn rpt_weights(&self) -> [u32; 5] {
        self.meta().weights
    }

    /// RPT window in blocks.
    pub fn rpt_window(&self) -> u64 {
        self.meta().rpt_window
    }

    /// Campaign `candidates_of`: candidates for `term` that are still RNodes, sorted.
    pub fn candidates_of(&self, cfg: &ChainConfig, term: u64) -> Vec<Address> {
        self.tables
            .candidates
            .iter()
            .filter(|(a, c)| c.start_term <= term && term < c.end_term && self.is_rnode(cfg, a))
            .map(|(a, _)| *a)
            .collect()
    }

    /// Campaign `candidate_info_of`.
    pub fn candidate_info_of(&self, addr: &Address) -> Option<Candidate> {
        self.tables.candidates.get(addr).copied()
    }

    /// Admission CPU difficulty (leading zero bits).
    pub fn cpu_difficulty(&self) -> u8 {
        self.meta().cpu_difficulty
    }

    /// Admission memory difficulty (log2 KiB).
    pub fn memory_difficulty(&self) -> u8 {
        self.meta().memory_difficulty
    }

    /// The hash of block `number` if still kept as an admission seed.
    pub fn admission_seed(&self, number: u64) -> Option<Hash> {
        self.tables.block_hashes.get(&number).copied()
    }

    /// A PDash listing.
    pub fn item(&self, id: u64) -> Option<Listing> {
        self.tables.items.get(&id).cloned()
    }

    /// A PDash order with its audit trail.
    pub fn order(&self, id: u64) -> Option<Order> {
        self.tables.orders.get(&id).cloned()
    }

    /// Unlocked PDash escrow of `addr`.
    pub fn escrow(&self, addr: &Address) -> Amount {
        self.tables.escrow.get(addr).map_or(0, |f| f.0)
    }

    /// The punished double vote of `validator` at `number`.
    pub fn equivocation(&self, validator: &Address, number: u64) -> Option<Equivocation> {
        self.tables
            .equivocations
            .get(&HeightKey {
                height: number,
                addr: *validator,
            })
            .copied()
    }

    /// The amount detained when `proposer` was impeached at `number`, if it was.
    pub fn impeachment(&self, proposer: &Address, number: u64) -> Option<Amount> {
        self.tables
            .impeachments
            .get(&HeightKey {
                height: number,
                addr: *proposer,
            })
            .map(|f| f.0)
    }

    /// Supply created by rewards since genesis.
    pub fn minted(&self) -> Amount {
        self.meta().minted
    }

    /// Supply created at genesis.
    pub fn genesis_supply(&self) -> Amount {
        self.meta().genesis_supply
    }

    /// Funds detained by penalties.
    pub fn detained(&self) -> Amount {
        self.meta().detained
    }

    /// Every unit in existence, summed over balances, pools, deposits, escrow, open orders
    /// and detained funds (O(state)); equals `genesis_supply() + minted()` on a valid chain.
    pub fn total_supply(&self) -> Amount {
        let t = &self.tables;
        let mut s: Amount = self.meta().detained;
        for (_, a) in t.accounts.iter() {
            s = s.saturating_add(a.balance);
        }
        for f in [&t.economy, &t.rnodes, &t.escrow] {
            for (_, x) in f.iter() {
                s = s.saturating_add(x.0);
            }
        }
        for (_, c) in t.candidates.iter() {
            s = s.saturating_add(c.deposit);
        }
        for (_, o) in t.orders.iter() {
            if matches!(
                o.state,
                OrderState::Ordered
                    | OrderState::SellerConfirmed
                    | OrderState::BuyerConfirmed
                    | OrderState::Disputed
            ) {
                s = s.saturating_add(o.price);
            }
        }
        s
    }

    /// Replays a block's diff (restart from a store). The diff must follow this state's
    /// root and be internally consistent; the state then has the diff's root.
    pub fn apply_diff(&mut self, diff: &StateDiff) -> ChainResult<()> {
        if diff.prev_root != self.root {
            return Err(ChainError::DiffMismatch {
                expected: self.root,
                got: diff.prev_root,
            });
        }
        if !diff.is_consistent() {
            return Err(ChainError::DiffMismatch {
                expected: diff.root,
                got: diff.prev_root,
            });
        }
        self.tables.apply_entries(&diff.entries()?)?;
        self.root = diff.root;
        Ok(())
    }

    /// Every entry of the state as one diff carrying the current root (a snapshot).
    pub fn snapshot(&self) -> StateDiff {
        self.tables.snapshot(self.height(), self.root)
    }

    /// Loads a [`State::snapshot`].
    pub fn from_snapshot(snap: &StateDiff) -> ChainResult<State> {
        let mut t = Tables::default();
        t.apply_entries(&snap.entries()?)?;
        Ok(State {
            tables: t,
            root: snap.root,
        })
    }
}
