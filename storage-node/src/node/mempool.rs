//! The mempool: signed transactions waiting for a block, bounded in count and bytes.
//!
//! Transactions are kept per sender in nonce order. Admission ([`Mempool::add_batch`])
//! runs the cheap checks first (size, duplicates, nonce window, balance, and the full
//! state check for a sender's next transaction), then verifies every surviving signature in
//! one [`BatchVerifier`] call, and inserts the good ones in submission order.
//!
//! - **Replace-by-fee:** a transaction with the (sender, nonce) of a pending one replaces it
//!   only with a strictly higher fee.
//! - **Backpressure:** at `max_txs` or `max_bytes` a new transaction may evict pending
//!   transactions that are the last of their sender's queue (evicting anything else would
//!   leave a nonce gap) and pay strictly less, lowest fee first; otherwise it is refused
//!   with [`Rejected::Busy`]. The pool never grows past its limits.
//! - **Selection** ([`Mempool::select`]): highest fee first across senders, each sender's
//!   transactions contiguous and in order from its chain nonce.
//!
//! The pool tracks each sender's chain nonce as of the last [`Mempool::add_batch`] or
//! [`Mempool::on_block`]; the engine calls `on_block` for every final block. Admission
//! cannot foresee every failure (a transfer funded by another pending transaction, a
//! balance lowered by a penalty), so a proposer still filters the selection through
//! [`chain::State::select_valid`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::ops::Range;

use chain::{Address, Amount, Block, ChainConfig, SignedTx, State, Tx, TxPayload};
use crypto_accel::{BatchVerifier, Encode, Hash, VerifyBatch, VerifyReport};

use super::view::Rejected;

/// Encoded bytes of a signed transaction besides its payload: tag 1, sender 32, nonce 8,
/// fee 16, signature 64.
const TX_OVERHEAD_BYTES: usize = 1 + 32 + 8 + 16 + 64;

/// Limits of a [`Mempool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MempoolConfig {
    /// Most transactions held.
    pub max_txs: usize,
    /// Most encoded transaction bytes held.
    pub max_bytes: usize,
    /// Most transactions held for one sender.
    pub max_per_account: usize,
    /// How far past a sender's next pending nonce a transaction may be.
    pub max_nonce_gap: u64,
    /// Blocks a transaction may wait behind a nonce gap (it cannot execute until the gap is
    /// filled) before it is dropped. Without this, an overload that refused some senders'
    /// earlier nonces leaves their later ones stranded in a full pool, blocks come out
    /// empty and every new submission is refused as busy.
    pub stranded_blocks: u64,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        MempoolConfig {
            max_txs: 200_000,
            max_bytes: 256 * 1024 * 1024,
            max_per_account: 10_000,
            max_nonce_gap: 1_000,
            stranded_blocks: 120,
        }
    }
}

/// Why the mempool refused a transaction: the label of its rejection counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The payload or the encoded transaction is over its size limit.
    Oversized,
    /// The same transaction (by hash) is already pending.
    Duplicate,
    /// The nonce is below the sender's chain nonce.
    StaleNonce,
    /// The nonce is too far past the sender's next pending nonce.
    NonceGap,
    /// The sender address is not a valid ed25519 key.
    BadSender,
    /// A signature did not verify (forged, or signed for another chain id).
    BadSignature,
    /// The sender's balance cannot pay the fee and value of its pending transactions.
    InsufficientBalance,
    /// The state check of a sender's next transaction failed.
    InvalidCall,
    /// A replacement did not pay a strictly higher fee.
    Underpriced,
    /// The sender already has `max_per_account` pending transactions.
    AccountFull,
    /// The pool is full and the fee evicts nothing.
    PoolFull,
}

impl RejectReason {
    /// Every reason, in counter order.
    pub const ALL: [RejectReason; 11] = [
        RejectReason::Oversized,
        RejectReason::Duplicate,
        RejectReason::StaleNonce,
        RejectReason::NonceGap,
        RejectReason::BadSender,
        RejectReason::BadSignature,
        RejectReason::InsufficientBalance,
        RejectReason::InvalidCall,
        RejectReason::Underpriced,
        RejectReason::AccountFull,
        RejectReason::PoolFull,
    ];

    /// Short label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::Duplicate => "duplicate",
            RejectReason::StaleNonce => "stale_nonce",
            RejectReason::NonceGap => "nonce_gap",
            RejectReason::BadSender => "bad_sender",
            RejectReason::BadSignature => "bad_signature",
            RejectReason::InsufficientBalance => "insufficient_balance",
            RejectReason::InvalidCall => "invalid_call",
            RejectReason::Underpriced => "underpriced",
            RejectReason::AccountFull => "account_full",
            RejectReason::PoolFull => "pool_full",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Rejections counted by reason since the pool was made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectCounts {
    counts: [u64; RejectReason::ALL.len()],
}

impl RejectCounts {
    /// Rejections for `reason`.
    pub fn get(&self, reason: RejectReason) -> u64 {
        self.counts[reason.index()]
    }

    /// All rejections.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// (reason, count) for every reason.
    pub fn iter(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        RejectReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    fn bump(&mut self, reason: RejectReason) {
        let c = &mut self.counts[reason.index()];
        *c = c.saturating_add(1);
    }
}

/// A refusal before it is counted and turned into the sender's [`Rejected`].
struct Refusal {
    reason: RejectReason,
    detail: String,
}

fn refuse(reason: RejectReason, detail: String) -> Refusal {
    Refusal { reason, detail }
}

#[derive(Debug, Clone)]
struct Entry {
    tx: SignedTx,
    hash: Hash,
    /// Encoded size of the transaction.
    bytes: usize,
    /// Fee plus the value the payload moves out of the sender's balance.
    spend: Amount,
    /// Arrival order: ties in fee go to the earlier transaction.
    seq: u64,
    /// Whether its signature was verified on arrival (see [`Mempool::add_batch_deferred`]).
    verified: bool,
    /// The pool's height (last final block seen) when it arrived.
    added_at: u64,
}

#[derive(Debug, Default)]
struct Queue {
    /// The sender's chain nonce as last seen.
    base: u64,
    txs: BTreeMap<u64, Entry>,
    /// Sum of `spend` over `txs`.
    spend: Amount,
}

impl Queue {
    /// The eviction key of this queue's last transaction.
    fn tail(&self, addr: Address) -> Option<TailKey> {
        self.txs.last_key_value().map(|(n, e)| (e.tx.fee, addr, *n))
    }
}

/// (fee, sender, nonce) of a transaction that is the last of its sender's queue.
type TailKey = (Amount, Address, u64);

/// A transaction that passed the cheap checks, waiting for its signature verdict.
struct Candidate {
    idx: usize,
    entry: Entry,
    items: Range<usize>,
}

/// Pending transactions; see the module docs.
#[derive(Debug)]
pub struct Mempool {
    cfg: MempoolConfig,
    accounts: HashMap<Address, Queue>,
    by_hash: HashMap<Hash, (Address, u64)>,
    /// Every queue's last transaction, lowest fee first: the eviction candidates.
    tails: BTreeSet<TailKey>,
    len: usize,
    bytes: usize,
    next_seq: u64,
    rejected: RejectCounts,
    evicted: u64,
    /// Stranded transactions dropped (see [`MempoolConfig::stranded_blocks`]).
    expired: u64,
    /// Number of the last final block seen.
    height: u64,
    /// Decompressed sender keys.
    keys: chain::KeyCache,
    /// The latest transactions dropped because they could no longer apply, with why
    /// (at most [`DROPPED_KEPT`], oldest out first).
    dropped: VecDeque<(Hash, SignedTx, String)>,
    /// Transactions dropped because they could no longer apply, in all.
    dropped_invalid: u64,
}

/// A sender's next transaction that waits this many blocks is checked against the chain
/// again, and again every as many blocks (see [`Mempool::on_block`]).
const HEAD_RECHECK_BLOCKS: u64 = 10;

/// Dropped transactions remembered for [`Mempool::dropped`] (transactions are at most
/// 64 KiB, so at most 16 MiB).
const DROPPED_KEPT: usize = 256;

/// The value `payload` moves out of the sender's balance when it applies (besides the fee).
fn payload_spend(payload: &TxPayload) -> Amount {
    match payload {
        TxPayload::Transfer { amount, .. }
        | TxPayload::EconomyDeposit { amount }
        | TxPayload::RNodeDeposit { amount }
        | TxPayload::EscrowDeposit { amount } => *amount,
        TxPayload::ClaimCampaign { deposit, .. } => *deposit,
        _ => 0,
    }
}

impl Mempool {
    /// An empty pool with the given limits.
    pub fn new(cfg: MempoolConfig) -> Self {
        Mempool {
            cfg,
            accounts: HashMap::new(),
            by_hash: HashMap::new(),
            tails: BTreeSet::new(),
            len: 0,
            bytes: 0,
            next_seq: 0,
            rejected: RejectCounts::default(),
            evicted: 0,
            expired: 0,
            height: 0,
            keys: chain::KeyCache::default(),
            dropped: VecDeque::new(),
            dropped_invalid: 0,
        }
    }

    /// A transaction this pool dropped without its being included, because it could no
    /// longer apply (it never will), and why; only the latest few are remembered.
    pub fn dropped(&self, hash: &Hash) -> Option<(&SignedTx, &str)> {
        self.dropped
            .iter()
            .find(|(h, _, _)| h == hash)
            .map(|(_, t, why)| (t, why.as_str()))
    }

    /// Transactions dropped because they could no longer apply, in all.
    pub fn dropped_invalid(&self) -> u64 {
        self.dropped_invalid
    }

    /// The pool's limits.
    pub fn config(&self) -> &MempoolConfig {
        &self.cfg
    }

    /// Transactions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Encoded bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether the transaction with this hash is pending.
    pub fn contains(&self, hash: &Hash) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// The pending transaction with this hash.
    pub fn get(&self, hash: &Hash) -> Option<&SignedTx> {
        let (addr, nonce) = self.by_hash.get(hash)?;
        self.accounts.get(addr)?.txs.get(nonce).map(|e| &e.tx)
    }

    /// The sender's next nonce counting its pending transactions contiguous from
    /// `state_nonce` (what a wallet should sign next).
    pub fn pending_nonce(&self, addr: &Address, state_nonce: u64) -> u64 {
        let mut next = state_nonce;
        if let Some(q) = self.accounts.get(addr) {
            // Fast path (the usual case): the queue starts at the chain nonce with no gap.
            if let (Some((&lo, _)), Some((&hi, _))) =
                (q.txs.first_key_value(), q.txs.last_key_value())
            {
                if lo == state_nonce && hi - lo + 1 == q.txs.len() as u64 {
                    return hi.saturating_add(1);
                }
            }
            for n in q.txs.range(state_nonce..).map(|(n, _)| *n) {
                if n != next {
                    break;
                }
                next = next.saturating_add(1);
            }
        }
        next
    }

    /// Rejections counted by reason.
    pub fn rejections(&self) -> &RejectCounts {
        &self.rejected
    }

    /// Transactions evicted to make room for higher-fee ones.
    pub fn evictions(&self) -> u64 {
        self.evicted
    }

    /// Transactions dropped after waiting too long behind a nonce gap.
    pub fn expirations(&self) -> u64 {
        self.expired
    }

    /// Admits `txs` against `state` (the latest final state), verifying every signature
    /// that survives the cheap checks in one call to `verifier`. Returns one result per
    /// transaction, in order: its hash, or why it was refused. A transaction admitted here
    /// may be evicted by a later, higher-fee one of the same batch.
    pub fn add_batch(
        &mut self,
        txs: Vec<SignedTx>,
        state: &State,
        cfg: &ChainConfig,
        verifier: &dyn BatchVerifier,
    ) -> Vec<Result<Hash, Rejected>> {
        self.add_batch_with(txs, state, cfg, Some(verifier))
    }

    /// As [`Mempool::add_batch`] but without verifying signatures now: for transactions
    /// relayed by peers to a block builder, which verifies the ones it selects
    /// ([`Mempool::is_verified`]) only when it builds a block and drops bad ones with
    /// [`Mempool::remove`]. Every other check runs as usual.
    pub fn add_batch_deferred(
        &mut self,
        txs: Vec<SignedTx>,
        state: &State,
        cfg: &ChainConfig,
    ) -> Vec<Result<Hash, Rejected>> {
        self.add_batch_with(txs, state, cfg, None)
    }

    /// Whether the pending transaction `hash` had its signature verified.
    pub fn is_verified(&self, hash: &Hash) -> bool {
        self.by_hash
            .get(hash)
            .and_then(|(a, n)| self.accounts.get(a)?.txs.get(n))
            .is_some_and(|e| e.verified)
    }

    /// Removes a pending transaction (e.g. one whose deferred signature check failed).
    /// Later nonces of its sender stay pending until the gap is filled or they expire by
    /// eviction.
    pub fn remove(&mut self, hash: &Hash) -> bool {
        let Some((addr, nonce)) = self.by_hash.get(hash).copied() else {
            return false;
        };
        self.remove_entry(&addr, nonce).is_some()
    }

    fn add_batch_with(
        &mut self,
        txs: Vec<SignedTx>,
        state: &State,
        cfg: &ChainConfig,
        verifier: Option<&dyn BatchVerifier>,
    ) -> Vec<Result<Hash, Rejected>> {
        let mut out: Vec<Result<Hash, Rejected>> = Vec::with_capacity(txs.len());
        let mut cands: Vec<Candidate> = Vec::with_capacity(txs.len());
        let mut batch = VerifyBatch::with_capacity(txs.len(), txs.len().saturating_mul(160));
        let mut seen: HashSet<Hash> = HashSet::with_capacity(txs.len());
        let mut in_batch: HashMap<Address, u64> = HashMap::new();

        for (idx, tx) in txs.into_iter().enumerate() {
            let checked = self.precheck(tx, state, cfg, &seen, &in_batch);
            let entry = match checked {
                Ok(e) => e,
                Err(r) => {
                    out.push(Err(self.count(r)));
                    continue;
                }
            };
            let start = batch.len();
            if State::push_tx_signatures_cached(&entry.tx, cfg.chain_id, &mut batch, &mut self.keys)
                .is_err()
            {
                // Items pushed before the failure are verified and ignored: no candidate
                // owns them.
                let r = refuse(
                    RejectReason::BadSender,
                    format!(
                        "sender {} (or an evidence voter) is not a valid ed25519 key",
                        entry.tx.from
                    ),
                );
                out.push(Err(self.count(r)));
                continue;
            }
            seen.insert(entry.hash);
            let c = in_batch.entry(entry.tx.from).or_insert(0);
            *c = c.saturating_add(1);
            // Placeholder, overwritten after verification.
            out.push(Ok(entry.hash));
            cands.push(Candidate {
                idx,
                entry,
                items: start..batch.len(),
            });
        }

        let report = match verifier {
            Some(v) if !batch.is_empty() => v.verify(&batch),
            _ => VerifyReport {
                len: batch.len(),
                invalid: Vec::new(),
            },
        };
        let verified = verifier.is_some();

        for c in cands {
            // A report shorter than the batch (a faulty backend) fails the missing items.
            let sig_ok = c.items.clone().all(|i| report.is_valid(i));
            let res = if sig_ok {
                let mut entry = c.entry;
                entry.verified = verified;
                self.insert(entry, state)
            } else {
                Err(refuse(
                    RejectReason::BadSignature,
                    format!(
                        "signature does not verify for chain id {} (forged, altered, or \
                         signed for another chain)",
                        cfg.chain_id
                    ),
                ))
            };
            let res = res.map_err(|r| self.count(r));
            if let Some(slot) = out.get_mut(c.idx) {
                *slot = res;
            }
        }
        out
    }

    /// Counts a refusal and turns it into what the sender is told.
    fn count(&mut self, r: Refusal) -> Rejected {
        self.rejected.bump(r.reason);
        match r.reason {
            RejectReason::Oversized => Rejected::Malformed(r.detail),
            RejectReason::Duplicate => Rejected::Duplicate,
            RejectReason::AccountFull | RejectReason::PoolFull => Rejected::Busy(r.detail),
            RejectReason::StaleNonce
            | RejectReason::NonceGap
            | RejectReason::BadSender
            | RejectReason::BadSignature
            | RejectReason::InsufficientBalance
            | RejectReason::InvalidCall
            | RejectReason::Underpriced => Rejected::Invalid(r.detail),
        }
    }

    /// The checks that need no signature: size, duplicates, nonce window, balance, and the
    /// full state check when the transaction is its sender's next.
    fn precheck(
        &self,
        tx: SignedTx,
        state: &State,
        cfg: &ChainConfig,
        seen: &HashSet<Hash>,
        in_batch: &HashMap<Address, u64>,
    ) -> Result<Entry, Refusal> {
        let wrapped = Tx::Signed(tx);
        let bytes = wrapped.to_bytes().len();
        let hash = wrapped.hash();
        let Tx::Signed(tx) = wrapped else {
            return Err(refuse(
                RejectReason::Oversized,
                "not a signed transaction".into(),
            ));
        };
        let payload = bytes.saturating_sub(TX_OVERHEAD_BYTES);
        if payload > chain::MAX_PAYLOAD_BYTES {
            return Err(refuse(
                RejectReason::Oversized,
                format!(
                    "payload is {payload} bytes, over the {} byte limit",
                    chain::MAX_PAYLOAD_BYTES
                ),
            ));
        }
        if self.by_hash.contains_key(&hash) || seen.contains(&hash) {
            return Err(refuse(
                RejectReason::Duplicate,
                format!("transaction {hash} is already pending"),
            ));
        }
        let acct = state.account(&tx.from);
        if tx.nonce < acct.nonce {
            return Err(refuse(
                RejectReason::StaleNonce,
                format!(
                    "nonce {} is below the account's next nonce {}",
                    tx.nonce, acct.nonce
                ),
            ));
        }
        // Loose here (this batch's earlier transactions may fill the gap); exact on insert.
        let queued = self.accounts.get(&tx.from).map_or(0, |q| q.txs.len()) as u64;
        let batched = in_batch.get(&tx.from).copied().unwrap_or(0);
        let reach = acct
            .nonce
            .saturating_add(queued)
            .saturating_add(batched)
            .saturating_add(self.cfg.max_nonce_gap);
        if tx.nonce > reach {
            return Err(refuse(
                RejectReason::NonceGap,
                format!(
                    "nonce {} is more than {} past the account's next pending nonce",
                    tx.nonce, self.cfg.max_nonce_gap
                ),
            ));
        }
        let spend = tx.fee.saturating_add(payload_spend(&tx.payload));
        if spend > acct.balance {
            return Err(refuse(
                RejectReason::InsufficientBalance,
                format!(
                    "fee plus value {} CPC exceeds the balance {} CPC",
                    chain::format_cpc(spend),
                    chain::format_cpc(acct.balance)
                ),
            ));
        }
        if tx.nonce == acct.nonce {
            if let Err(e) = state.check_tx(cfg, &tx) {
                return Err(refuse(RejectReason::InvalidCall, e.to_string()));
            }
        }
        Ok(Entry {
            tx,
            hash,
            bytes,
            spend,
            seq: 0,
            verified: false,
            added_at: 0,
        })
    }

    /// The checks against the pool (replacement, gap, per-account and pool limits), then
    /// the insertion, evicting if needed.
    fn insert(&mut self, mut entry: Entry, state: &State) -> Result<Hash, Refusal> {
        let from = entry.tx.from;
        let nonce = entry.tx.nonce;
        let acct = state.account(&from);
        self.prune_account(&from, acct.nonce);

        let (replaced_fee, replaced_bytes, replaced_spend, queued, queued_spend) =
            match self.accounts.get(&from) {
                Some(q) => {
                    let old = q.txs.get(&nonce);
                    (
                        old.map(|e| e.tx.fee),
                        old.map_or(0, |e| e.bytes),
                        old.map_or(0, |e| e.spend),
                        q.txs.len(),
                        q.spend,
                    )
                }
                None => (None, 0, 0, 0, 0),
            };
        if self.by_hash.contains_key(&entry.hash) {
            return Err(refuse(
                RejectReason::Duplicate,
                format!("transaction {} is already pending", entry.hash),
            ));
        }
        match replaced_fee {
            Some(old) if entry.tx.fee <= old => {
                return Err(refuse(
                    RejectReason::Underpriced,
                    format!(
                        "nonce {nonce} is already pending with fee {old}; a replacement must \
                         pay more, got {}",
                        entry.tx.fee
                    ),
                ));
            }
            Some(_) => {}
            None => {
                let next = self.pending_nonce(&from, acct.nonce);
                if nonce > next.saturating_add(self.cfg.max_nonce_gap) {
                    return Err(refuse(
                        RejectReason::NonceGap,
                        format!(
                            "nonce {nonce} is more than {} past the account's next pending \
                             nonce {next}",
                            self.cfg.max_nonce_gap
                        ),
                    ));
                }
                if queued >= self.cfg.max_per_account {
                    return Err(refuse(
                        RejectReason::AccountFull,
                        format!(
                            "account already has {queued} pending transactions (limit {})",
                            self.cfg.max_per_account
                        ),
                    ));
                }
            }
        }
        let total_spend = queued_spend
            .saturating_sub(replaced_spend)
            .saturating_add(entry.spend);
        if total_spend > acct.balance {
            return Err(refuse(
                RejectReason::InsufficientBalance,
                format!(
                    "pending transactions of this account would spend {total_spend}, balance is {}",
                    acct.balance
                ),
            ));
        }

        let adds = usize::from(replaced_fee.is_none());
        let need_count = (self.len + adds).saturating_sub(self.cfg.max_txs);
        let need_bytes = (self.bytes.saturating_sub(replaced_bytes) + entry.bytes)
            .saturating_sub(self.cfg.max_bytes);
        if need_count > 0 || need_bytes > 0 {
            let Some(plan) = self.plan_eviction(&from, entry.tx.fee, need_count, need_bytes) else {
                return Err(refuse(
                    RejectReason::PoolFull,
                    format!(
                        "mempool holds {} transactions in {} bytes (limits {} and {}) and no \
                         evictable transaction pays less than {}",
                        self.len, self.bytes, self.cfg.max_txs, self.cfg.max_bytes, entry.tx.fee
                    ),
                ));
            };
            for (addr, n) in plan {
                if self.remove_entry(&addr, n).is_some() {
                    self.evicted = self.evicted.saturating_add(1);
                }
            }
        }

        entry.seq = self.next_seq;
        entry.added_at = self.height;
        self.next_seq = self.next_seq.saturating_add(1);
        let hash = entry.hash;
        self.insert_entry(from, acct.nonce, entry);
        Ok(hash)
    }

    /// Which tails to evict, lowest fee first, so `need_count` more transactions and
    /// `need_bytes` more bytes fit; every victim pays strictly less than `fee` and none is
    /// the sender's own (that could open a gap before the new transaction). `None` if the
    /// room cannot be made.
    fn plan_eviction(
        &self,
        sender: &Address,
        fee: Amount,
        mut need_count: usize,
        mut need_bytes: usize,
    ) -> Option<Vec<(Address, u64)>> {
        let mut plan = Vec::new();
        // Transactions that become tails once the planned victims after them are gone.
        let mut exposed: BTreeSet<TailKey> = BTreeSet::new();
        let mut tails = self.tails.iter().peekable();
        while need_count > 0 || need_bytes > 0 {
            let take_tail = match (tails.peek(), exposed.first()) {
                (Some(a), Some(b)) => *a <= b,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return None,
            };
            let next = if take_tail {
                tails.next().copied()
            } else {
                exposed.pop_first()
            };
            let (vfee, addr, nonce) = next?;
            if vfee >= fee {
                return None;
            }
            if addr == *sender {
                continue;
            }
            let Some(q) = self.accounts.get(&addr) else {
                continue;
            };
            let Some(victim) = q.txs.get(&nonce) else {
                continue;
            };
            plan.push((addr, nonce));
            need_count = need_count.saturating_sub(1);
            need_bytes = need_bytes.saturating_sub(victim.bytes);
            if let Some((pn, pe)) = q.txs.range(..nonce).next_back() {
                exposed.insert((pe.tx.fee, addr, *pn));
            }
        }
        Some(plan)
    }

    /// Up to `max_txs` transactions of at most `max_bytes` encoded bytes for the next block:
    /// the highest-fee ready transaction first (earlier arrival on ties), each sender's
    /// transactions in nonce order from its chain nonce with no gaps. A sender whose next
    /// transaction does not fit in the remaining bytes contributes nothing further.
    pub fn select(&self, max_txs: usize, max_bytes: usize) -> Vec<SignedTx> {
        // (fee, earlier first, sender, nonce)
        let mut heap: BinaryHeap<(Amount, Reverse<u64>, Address, u64)> = self
            .accounts
            .iter()
            .filter_map(|(a, q)| {
                q.txs
                    .get(&q.base)
                    .map(|e| (e.tx.fee, Reverse(e.seq), *a, q.base))
            })
            .collect();
        let mut out = Vec::new();
        let mut used = 0usize;
        while out.len() < max_txs {
            let Some((_, _, addr, nonce)) = heap.pop() else {
                break;
            };
            let Some(q) = self.accounts.get(&addr) else {
                continue;
            };
            let Some(e) = q.txs.get(&nonce) else {
                continue;
            };
            if used.saturating_add(e.bytes) > max_bytes {
                continue;
            }
            used += e.bytes;
            out.push(e.tx.clone());
            if let Some(next) = nonce.checked_add(1) {
                if let Some(n) = q.txs.get(&next) {
                    heap.push((n.tx.fee, Reverse(n.seq), addr, next));
                }
            }
        }
        out
    }

    /// After `block` is final and `state` is the state after it: drops the transactions it
    /// included, every pending transaction whose nonce is now below its sender's chain
    /// nonce (included elsewhere under another hash, or superseded), and every transaction
    /// that has waited behind a nonce gap for `stranded_blocks` blocks. Sweeps every pending
    /// sender, so a missed block is caught up too.
    ///
    /// A sender the block moved on has a new next transaction, which was checked against
    /// the chain only if it was already next when it arrived: it is checked now, and
    /// dropped if it cannot apply (a campaign for too many terms, say), since no block
    /// would ever include it and every later nonce of its sender would wait behind it for
    /// good. See [`Mempool::dropped`].
    pub fn on_block(&mut self, block: &Block, state: &State, cfg: &ChainConfig) {
        self.height = self.height.max(block.header.number);
        let mut moved = HashSet::new();
        for tx in &block.txs {
            if let Tx::Signed(t) = tx {
                moved.insert(t.from);
                if let Some((addr, nonce)) = self.by_hash.get(&tx.hash()).copied() {
                    self.remove_entry(&addr, nonce);
                }
            }
        }
        let senders: Vec<Address> = self.accounts.keys().copied().collect();
        for addr in senders {
            let nonce = state.nonce(&addr);
            self.prune_account(&addr, nonce);
            // A next transaction can also stop applying while its sender does nothing (the
            // chain moved on under it: a campaign's seed block grew too old, say): one that
            // has waited is checked again every HEAD_RECHECK_BLOCKS blocks.
            let Some(next) = self.accounts.get(&addr).and_then(|q| q.txs.get(&nonce)) else {
                continue;
            };
            let waited = self.height.saturating_sub(next.added_at);
            if moved.contains(&addr)
                || (waited >= HEAD_RECHECK_BLOCKS && waited % HEAD_RECHECK_BLOCKS == 0)
            {
                self.drop_if_it_cannot_apply(&addr, nonce, state, cfg);
            }
        }
    }

    /// Drops `addr`'s next transaction (of `nonce`, its chain nonce) if it cannot apply to
    /// `state` (see [`Self::dropped`]).
    fn drop_if_it_cannot_apply(
        &mut self,
        addr: &Address,
        nonce: u64,
        state: &State,
        cfg: &ChainConfig,
    ) {
        let Some(e) = self.accounts.get(addr).and_then(|q| q.txs.get(&nonce)) else {
            return;
        };
        let Err(why) = state.check_tx(cfg, &e.tx) else {
            return;
        };
        if let Some(e) = self.remove_entry(addr, nonce) {
            tracing::info!(
                "dropping transaction {} of {addr} (nonce {nonce}): {why}",
                e.hash.to_hex()
            );
            self.dropped_invalid = self.dropped_invalid.saturating_add(1);
            if self.dropped.len() == DROPPED_KEPT {
                self.dropped.pop_front();
            }
            self.dropped.push_back((e.hash, e.tx, why.to_string()));
        }
    }

    /// Drops `addr`'s transactions below `state_nonce` and those stranded too long behind a
    /// gap, and records `state_nonce` as the chain nonce.
    fn prune_account(&mut self, addr: &Address, state_nonce: u64) {
        let ready_end = self.pending_nonce(addr, state_nonce);
        let cutoff = self.height.saturating_sub(self.cfg.stranded_blocks);
        let (stale, stranded): (Vec<u64>, Vec<u64>) = match self.accounts.get_mut(addr) {
            Some(q) => {
                q.base = state_nonce;
                let stale = q.txs.range(..state_nonce).map(|(n, _)| *n).collect();
                let stranded = if self.height > self.cfg.stranded_blocks {
                    q.txs
                        .range(ready_end..)
                        .filter(|(_, e)| e.added_at <= cutoff)
                        .map(|(n, _)| *n)
                        .collect()
                } else {
                    Vec::new()
                };
                (stale, stranded)
            }
            None => return,
        };
        for n in stale {
            self.remove_entry(addr, n);
        }
        for n in stranded {
            if self.remove_entry(addr, n).is_some() {
                self.expired = self.expired.saturating_add(1);
            }
        }
    }

    /// Inserts `entry` (replacing any transaction with its nonce), keeping every index.
    fn insert_entry(&mut self, addr: Address, base: u64, entry: Entry) {
        let nonce = entry.tx.nonce;
        if self
            .accounts
            .get(&addr)
            .is_some_and(|q| q.txs.contains_key(&nonce))
        {
            self.remove_entry(&addr, nonce);
        }
        let q = self.accounts.entry(addr).or_default();
        q.base = base;
        let old_tail = q.tail(addr);
        self.by_hash.insert(entry.hash, (addr, nonce));
        self.len += 1;
        self.bytes += entry.bytes;
        q.spend = q.spend.saturating_add(entry.spend);
        q.txs.insert(nonce, entry);
        let new_tail = q.tail(addr);
        if old_tail != new_tail {
            if let Some(t) = old_tail {
                self.tails.remove(&t);
            }
            if let Some(t) = new_tail {
                self.tails.insert(t);
            }
        }
    }

    /// Removes one transaction, keeping every index.
    fn remove_entry(&mut self, addr: &Address, nonce: u64) -> Option<Entry> {
        let q = self.accounts.get_mut(addr)?;
        let old_tail = q.tail(*addr);
        let e = q.txs.remove(&nonce)?;
        q.spend = q.spend.saturating_sub(e.spend);
        let new_tail = q.tail(*addr);
        let empty = q.txs.is_empty();
        if old_tail != new_tail {
            if let Some(t) = old_tail {
                self.tails.remove(&t);
            }
            if let Some(t) = new_tail {
                self.tails.insert(t);
            }
        }
        if empty {
            self.accounts.remove(addr);
        }
        self.by_hash.remove(&e.hash);
        self.len = self.len.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(e.bytes);
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use chain::{BlockKind, Header, CPC, PROTOCOL_VERSION};
    use crypto_accel::{CpuBatchVerifier, CpuVerifierConfig, Keypair, Signature, VerifyJob};
    use proptest::prelude::*;

    use super::*;

    /// The CPU verifier, counting calls and items.
    struct Counting {
        inner: CpuBatchVerifier,
        calls: AtomicUsize,
        items: AtomicUsize,
    }

    impl Counting {
        fn new() -> Self {
            Counting {
                inner: CpuBatchVerifier::new(CpuVerifierConfig {
                    threads: 1,
                    chunk: 64,
                })
                .unwrap(),
                calls: AtomicUsize::new(0),
                items: AtomicUsize::new(0),
            }
        }
    }

    impl BatchVerifier for Counting {
        fn name(&self) -> &'static str {
            "counting-cpu"
        }
        fn verify(&self, batch: &VerifyBatch) -> VerifyReport {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.items.fetch_add(batch.len(), Ordering::SeqCst);
            self.inner.verify(batch)
        }
        fn submit(&self, batch: VerifyBatch) -> VerifyJob {
            self.inner.submit(batch)
        }
    }

    const FUND: Amount = 1_000_000 * CPC;

    struct World {
        cfg: ChainConfig,
        state: State,
        users: Vec<Keypair>,
        poor: Keypair,
        proposer: Keypair,
        v: Counting,
    }

    fn kp(i: u8) -> Keypair {
        Keypair::from_seed([i; 32])
    }

    fn addr(k: &Keypair) -> Address {
        Address::of(&k.public())
    }

    impl World {
        fn new(users: u8) -> World {
            let users: Vec<Keypair> = (1..=users).map(kp).collect();
            let proposer = kp(101);
            let validators: Vec<Address> = (200..=203).map(|i| addr(&kp(i))).collect();
            let cfg =
                ChainConfig::mainnet_like(7, validators, vec![addr(&proposer)], addr(&kp(100)));
            let mut balances: Vec<(Address, Amount)> =
                users.iter().map(|k| (addr(k), FUND)).collect();
            let poor = kp(150);
            balances.push((addr(&poor), 10));
            let state = State::genesis(&cfg, &balances);
            World {
                cfg,
                state,
                users,
                poor,
                proposer,
                v: Counting::new(),
            }
        }

        fn u(&self, i: usize) -> Address {
            addr(&self.users[i])
        }

        /// A transfer of 1 unit from user `i` to user 0.
        fn tx(&self, i: usize, nonce: u64, fee: Amount) -> SignedTx {
            self.tx_by(&self.users[i], nonce, fee)
        }

        fn tx_by(&self, k: &Keypair, nonce: u64, fee: Amount) -> SignedTx {
            SignedTx::sign(
                k,
                self.cfg.chain_id,
                nonce,
                fee,
                TxPayload::Transfer {
                    to: self.u(0),
                    amount: 1,
                },
            )
        }

        fn add(&self, pool: &mut Mempool, txs: Vec<SignedTx>) -> Vec<Result<Hash, Rejected>> {
            pool.add_batch(txs, &self.state, &self.cfg, &self.v)
        }

        fn add1(&self, pool: &mut Mempool, tx: SignedTx) -> Result<Hash, Rejected> {
            self.add(pool, vec![tx]).pop().unwrap()
        }

        /// Applies a block of `txs` (which must all apply) and tells the pool.
        fn commit(&mut self, pool: &mut Mempool, txs: Vec<SignedTx>) {
            let txs: Vec<Tx> = txs.into_iter().map(Tx::Signed).collect();
            let header = Header {
                version: PROTOCOL_VERSION,
                chain_id: self.cfg.chain_id,
                number: self.state.height() + 1,
                parent: self.state.last_hash(),
                timestamp_ms: 1_000 * (self.state.height() + 1),
                term: self.state.term(),
                proposer: addr(&self.proposer),
                kind: BlockKind::Normal,
                tx_root: Block::compute_tx_root(&txs),
                state_root: self.state.root(),
                seal: None,
            };
            let block = Block { header, txs };
            self.state.apply_block(&self.cfg, &block).unwrap();
            pool.on_block(&block, &self.state, &self.cfg);
        }

        /// Whether `txs` apply in sequence on the current state.
        fn applies(&self, txs: &[SignedTx]) -> bool {
            let mut s = self.state.clone();
            s.select_valid(&self.cfg, self.state.term(), txs).len() == txs.len()
        }
    }

    fn pool(max_txs: usize, max_bytes: usize, max_per_account: usize, gap: u64) -> Mempool {
        Mempool::new(MempoolConfig {
            max_txs,
            max_bytes,
            max_per_account,
            max_nonce_gap: gap,
            ..MempoolConfig::default()
        })
    }

    fn invalid_reason(r: &Result<Hash, Rejected>) -> String {
        match r {
            Err(Rejected::Invalid(s)) => s.clone(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn nonces_of(txs: &[SignedTx], a: Address) -> Vec<u64> {
        txs.iter()
            .filter(|t| t.from == a)
            .map(|t| t.nonce)
            .collect()
    }

    #[test]
    fn nonces_come_out_in_order_from_the_chain_nonce() {
        let w = World::new(2);
        let mut p = Mempool::new(MempoolConfig::default());
        // Submitted backwards, in separate batches (within the gap).
        for n in [3u64, 2, 1, 0] {
            w.add1(&mut p, w.tx(1, n, 10)).unwrap();
        }
        assert_eq!(p.pending_nonce(&w.u(1), 0), 4);
        let sel = p.select(100, usize::MAX);
        assert_eq!(nonces_of(&sel, w.u(1)), vec![0, 1, 2, 3]);
        assert!(w.applies(&sel));
    }

    #[test]
    fn a_gap_stops_the_account_in_select() {
        let w = World::new(2);
        let mut p = Mempool::new(MempoolConfig::default());
        for r in w.add(&mut p, vec![w.tx(1, 0, 10), w.tx(1, 2, 50)]) {
            r.unwrap();
        }
        assert_eq!(p.len(), 2);
        assert_eq!(p.pending_nonce(&w.u(1), 0), 1);
        let sel = p.select(100, usize::MAX);
        assert_eq!(nonces_of(&sel, w.u(1)), vec![0]);
        // Nothing is ready for an account whose chain nonce is not pending.
        let mut p = Mempool::new(MempoolConfig::default());
        w.add1(&mut p, w.tx(1, 1, 10)).unwrap();
        assert!(p.select(100, usize::MAX).is_empty());
    }

    #[test]
    fn a_transaction_that_cannot_apply_is_dropped_once_it_is_next() {
        let mut w = World::new(2);
        let mut p = Mempool::new(MempoolConfig::default());
        // Only the contract owner may set the RPT window.
        let (user, chain_id) = (w.users[1].clone(), w.cfg.chain_id);
        let bad = |nonce| {
            SignedTx::sign(
                &user,
                chain_id,
                nonce,
                10,
                TxPayload::UpdateRptWindow { blocks: 5 },
            )
        };
        // Next in line, it is refused at once.
        assert!(invalid_reason(&w.add1(&mut p, bad(0))).contains("update_window"));
        // Behind nonce 0 it is not checked against the chain yet; nonce 2 waits behind it.
        w.add1(&mut p, w.tx(1, 0, 10)).unwrap();
        let bad_hash = w.add1(&mut p, bad(1)).unwrap();
        w.add1(&mut p, w.tx(1, 2, 10)).unwrap();
        assert_eq!(p.pending_nonce(&w.u(1), 0), 3);
        w.commit(&mut p, vec![w.tx(1, 0, 10)]);
        // Now next, it is checked and dropped, and the node can say why.
        assert!(!p.contains(&bad_hash));
        let (t, why) = p.dropped(&bad_hash).unwrap();
        assert_eq!(t, &bad(1));
        assert!(why.contains("update_window"), "{why}");
        assert_eq!(p.dropped_invalid(), 1);
        // The sender's next nonce is the dropped one again: a new transaction fills it and
        // the one that waited goes with it.
        assert_eq!(p.pending_nonce(&w.u(1), 1), 1);
        w.add1(&mut p, w.tx(1, 1, 10)).unwrap();
        let sel = p.select(100, usize::MAX);
        assert_eq!(nonces_of(&sel, w.u(1)), vec![1, 2]);
        assert!(w.applies(&sel));
    }

    #[test]
    fn a_next_transaction_the_chain_moved_past_is_dropped_after_a_while() {
        let mut w = World::new(3);
        let mut p = Mempool::new(MempoolConfig::default());
        let register = |k: &Keypair, nonce| {
            SignedTx::sign(
                k,
                w.cfg.chain_id,
                nonce,
                10,
                TxPayload::RegisterData {
                    id: crypto_accel::DataId(Hash::of(b"one id")),
                    merkle_root: Hash::of(b"root"),
                    size: 1 << 20,
                    k: 4,
                    m: 2,
                    intervals: chain::IntervalRange { start: 0, end: 10 },
                    policy: chain::AccessPolicy::OwnerOnly,
                },
            )
        };
        // User 1's registration is valid when it arrives; user 2 then registers the same id
        // first, so user 1's can never apply, though user 1 does nothing more.
        let (first, second) = (register(&w.users[2], 0), register(&w.users[1], 0));
        let hash = w.add1(&mut p, second.clone()).unwrap();
        w.commit(&mut p, vec![first]);
        assert!(p.contains(&hash), "checked again only after a while");
        for _ in 1..HEAD_RECHECK_BLOCKS {
            w.commit(&mut p, vec![]);
        }
        assert!(!p.contains(&hash));
        let (t, why) = p.dropped(&hash).unwrap();
        assert_eq!(t, &second);
        assert!(why.contains("already"), "{why}");
    }

    #[test]
    fn fee_priority_across_accounts_keeps_nonce_order() {
        let w = World::new(4);
        let mut p = Mempool::new(MempoolConfig::default());
        let txs = vec![
            w.tx(1, 0, 1),
            w.tx(1, 1, 100), // high fee, but behind a low-fee nonce
            w.tx(2, 0, 5),
            w.tx(3, 0, 3),
            w.tx(3, 1, 4),
        ];
        for r in w.add(&mut p, txs) {
            r.unwrap();
        }
        let order: Vec<(Address, u64)> = p
            .select(100, usize::MAX)
            .iter()
            .map(|t| (t.from, t.nonce))
            .collect();
        assert_eq!(
            order,
            vec![
                (w.u(2), 0),
                (w.u(3), 0),
                (w.u(3), 1),
                (w.u(1), 0),
                (w.u(1), 1)
            ]
        );
        // Limits: by count, and by bytes (one transfer is 170 bytes).
        assert_eq!(p.select(2, usize::MAX).len(), 2);
        let one = Tx::Signed(w.tx(1, 0, 1)).to_bytes().len();
        let sel = p.select(100, 2 * one + one / 2);
        assert_eq!(sel.len(), 2);
        assert!(w.applies(&sel));
    }

    #[test]
    fn replace_by_fee_needs_a_strictly_higher_fee() {
        let w = World::new(2);
        let mut p = Mempool::new(MempoolConfig::default());
        let first = w.add1(&mut p, w.tx(1, 0, 10)).unwrap();
        let bytes = p.bytes();
        // Same fee, another payload: refused with the reason.
        let same_fee = SignedTx::sign(
            &w.users[1],
            7,
            0,
            10,
            TxPayload::Transfer {
                to: w.u(1),
                amount: 2,
            },
        );
        let r = w.add1(&mut p, same_fee);
        assert!(
            invalid_reason(&r).contains("replacement must pay more"),
            "{r:?}"
        );
        assert!(invalid_reason(&w.add1(&mut p, w.tx(1, 0, 9))).contains("fee 10"));
        assert_eq!(p.rejections().get(RejectReason::Underpriced), 2);
        // Higher fee replaces.
        let second = w.add1(&mut p, w.tx(1, 0, 11)).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p.bytes(), bytes);
        assert!(!p.contains(&first));
        assert!(p.contains(&second));
        assert_eq!(p.get(&second).unwrap().fee, 11);
        assert_eq!(p.select(10, usize::MAX)[0].fee, 11);
    }

    #[test]
    fn duplicates_are_refused_across_and_within_batches() {
        let w = World::new(2);
        let mut p = Mempool::new(MempoolConfig::default());
        let t = w.tx(1, 0, 10);
        let rs = w.add(&mut p, vec![t.clone(), t.clone()]);
        assert!(rs[0].is_ok());
        assert_eq!(rs[1], Err(Rejected::Duplicate));
        assert_eq!(w.add1(&mut p, t), Err(Rejected::Duplicate));
        assert_eq!(p.len(), 1);
        assert_eq!(p.rejections().get(RejectReason::Duplicate), 2);
    }

    #[test]
    fn stale_nonces_are_refused() {
        let mut w = World::new(2);
        let mut p = Mempool::new(MempoolConfig::default());
        let t0 = w.tx(1, 0, 10);
        w.commit(&mut p, vec![t0]);
        let r = w.add1(&mut p, w.tx(1, 0, 20));
        assert!(
            invalid_reason(&r).contains("below the account's next nonce 1"),
            "{r:?}"
        );
        assert_eq!(p.rejections().get(RejectReason::StaleNonce), 1);
    }

    #[test]
    fn nonces_too_far_ahead_are_refused() {
        let w = World::new(2);
        let mut p = pool(100, 1 << 20, 100, 3);
        // Next pending nonce 0, gap 3: nonce 3 is the furthest allowed.
        w.add1(&mut p, w.tx(1, 3, 10)).unwrap();
        let r = w.add1(&mut p, w.tx(1, 4, 10));
        assert!(invalid_reason(&r).contains("more than 3 past"), "{r:?}");
        // Pending transactions move the window.
        for r in w.add(&mut p, vec![w.tx(1, 0, 1), w.tx(1, 1, 1), w.tx(1, 2, 1)]) {
            r.unwrap();
        }
        assert_eq!(p.pending_nonce(&w.u(1), 0), 4);
        w.add1(&mut p, w.tx(1, 7, 10)).unwrap();
        assert!(w.add1(&mut p, w.tx(1, 8, 10)).is_err());
        assert_eq!(p.rejections().get(RejectReason::NonceGap), 2);
    }

    #[test]
    fn one_bad_signature_among_a_hundred_is_named_in_one_verifier_call() {
        let w = World::new(10);
        let mut p = Mempool::new(MempoolConfig::default());
        let mut txs: Vec<SignedTx> = (0..101).map(|i| w.tx(i % 10, (i / 10) as u64, 5)).collect();
        // Altered after signing: the signature no longer covers the fee.
        txs[57].fee = 6;
        let rs = w.add(&mut p, txs);
        assert_eq!(w.v.calls.load(Ordering::SeqCst), 1);
        assert_eq!(w.v.items.load(Ordering::SeqCst), 101);
        for (i, r) in rs.iter().enumerate() {
            if i == 57 {
                assert!(
                    invalid_reason(r).contains("signature does not verify"),
                    "{r:?}"
                );
            } else {
                assert!(r.is_ok(), "{i}: {r:?}");
            }
        }
        assert_eq!(p.len(), 100);
        assert_eq!(p.rejections().get(RejectReason::BadSignature), 1);
        // Account 7's nonce 5 is missing, so its later nonces wait.
        let sel = p.select(1_000, usize::MAX);
        assert_eq!(nonces_of(&sel, w.u(7)), vec![0, 1, 2, 3, 4]);
        assert_eq!(sel.len(), 96); // 100 admitted, account 7's nonces 6..=9 wait
        assert!(w.applies(&sel));
    }

    #[test]
    fn another_chains_signature_is_refused() {
        let w = World::new(2);
        let mut p = Mempool::new(MempoolConfig::default());
        let t = SignedTx::sign(
            &w.users[1],
            8,
            0,
            10,
            TxPayload::Transfer {
                to: w.u(0),
                amount: 1,
            },
        );
        let r = w.add1(&mut p, t);
        assert!(invalid_reason(&r).contains("chain id 7"), "{r:?}");
        assert!(p.is_empty());
    }

    #[test]
    fn bad_sender_key_is_refused_without_verifying() {
        let w = World::new(2);
        let mut p = Mempool::new(MempoolConfig::default());
        // y = 2 is not on the curve: the address is no public key.
        let mut bogus = [0u8; 32];
        bogus[0] = 2;
        let from = Address(bogus);
        assert!(from.public_key().is_err());
        // Give it funds via a state that knows it, so only the key check fails.
        let state = State::genesis(&w.cfg, &[(from, FUND)]);
        let t = SignedTx {
            from,
            nonce: 0,
            fee: 1,
            payload: TxPayload::QuitCampaign,
            sig: Signature([0; 64]),
        };
        let r = p.add_batch(vec![t], &state, &w.cfg, &w.v).pop().unwrap();
        assert!(matches!(r, Err(Rejected::Invalid(_))), "{r:?}");
        let rej = p.rejections();
        assert_eq!(
            rej.get(RejectReason::BadSender) + rej.get(RejectReason::InvalidCall),
            1
        );
    }

    #[test]
    fn insufficient_balance_is_refused() {
        let w = World::new(2);
        let mut p = Mempool::new(MempoolConfig::default());
        // The poor account holds 10 units: fee 11 cannot be paid.
        let r = w.add1(&mut p, w.tx_by(&w.poor, 0, 11));
        assert!(
            invalid_reason(&r).contains("exceeds the balance 0.00000000000000001 CPC"),
            "{r:?}"
        );
        // 4 + 1 fits, twice does not: pending spend is cumulative.
        w.add1(&mut p, w.tx_by(&w.poor, 0, 4)).unwrap();
        let r = w.add1(&mut p, w.tx_by(&w.poor, 1, 5));
        assert!(invalid_reason(&r).contains("would spend 11"), "{r:?}");
        assert_eq!(p.rejections().get(RejectReason::InsufficientBalance), 2);
        // The state check of the next transaction names the contract failure.
        let r = w.add1(
            &mut p,
            SignedTx::sign(&w.users[1], 7, 0, 1, TxPayload::QuitCampaign),
        );
        assert!(matches!(r, Err(Rejected::Invalid(_))), "{r:?}");
        assert_eq!(p.rejections().get(RejectReason::InvalidCall), 1);
    }

    #[test]
    fn oversized_payload_is_malformed() {
        let w = World::new(2);
        let mut p = Mempool::new(MempoolConfig::default());
        let t = SignedTx::sign(
            &w.users[1],
            7,
            0,
            1,
            TxPayload::ListItem {
                name: String::new(),
                data: crypto_accel::DataId(Hash::ZERO),
                price: 1,
                description: "x".repeat(chain::MAX_PAYLOAD_BYTES),
                agent: w.u(0),
            },
        );
        let r = w.add1(&mut p, t);
        assert!(
            matches!(&r, Err(Rejected::Malformed(s)) if s.contains("over the 16384 byte limit")),
            "{r:?}"
        );
        assert_eq!(w.v.calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn full_pool_evicts_the_cheapest_tail_or_reports_busy() {
        let w = World::new(5);
        let mut p = pool(3, 1 << 20, 100, 10);
        // Account 1: nonce 0 fee 1 (not a tail), nonce 1 fee 9 (tail). Account 2: fee 4.
        let a0 = w.add1(&mut p, w.tx(1, 0, 1)).unwrap();
        let a1 = w.add1(&mut p, w.tx(1, 1, 9)).unwrap();
        let b0 = w.add1(&mut p, w.tx(2, 0, 4)).unwrap();
        // Fee 4 evicts nothing (not strictly higher): busy.
        let r = w.add1(&mut p, w.tx(3, 0, 4));
        assert!(
            matches!(&r, Err(Rejected::Busy(s)) if s.contains("pays less than 4")),
            "{r:?}"
        );
        // Fee 5 evicts the cheapest tail, account 2's, not account 1's cheaper nonce 0.
        let c0 = w.add1(&mut p, w.tx(3, 0, 5)).unwrap();
        assert_eq!(p.len(), 3);
        assert!(p.contains(&a0) && p.contains(&a1) && p.contains(&c0));
        assert!(!p.contains(&b0));
        assert_eq!(p.evictions(), 1);
        // Fee 10 evicts account 3's tail (5), then account 1's tail (9) would be next.
        w.add1(&mut p, w.tx(4, 0, 10)).unwrap();
        assert!(!p.contains(&c0));
        // A sender never evicts its own queue: account 1 at fee 100 finds no other victim
        // cheaper than 100 except account 4 (10).
        w.add1(&mut p, w.tx(1, 2, 100)).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p.select(10, usize::MAX).len(), 3);
        assert!(w.applies(&p.select(10, usize::MAX)));
        assert_eq!(p.rejections().get(RejectReason::PoolFull), 1);
    }

    #[test]
    fn bytes_are_bounded_and_make_room_by_eviction() {
        let w = World::new(5);
        let one = Tx::Signed(w.tx(1, 0, 1)).to_bytes().len();
        let mut p = pool(100, 2 * one + one / 2, 100, 10);
        w.add1(&mut p, w.tx(1, 0, 3)).unwrap();
        w.add1(&mut p, w.tx(2, 0, 3)).unwrap();
        assert_eq!(p.bytes(), 2 * one);
        assert!(matches!(
            w.add1(&mut p, w.tx(3, 0, 3)),
            Err(Rejected::Busy(_))
        ));
        w.add1(&mut p, w.tx(3, 0, 4)).unwrap();
        assert_eq!(p.len(), 2);
        assert!(p.bytes() <= p.config().max_bytes);
        // A transaction bigger than the whole pool is busy, never admitted.
        let big = SignedTx::sign(
            &w.users[4],
            7,
            0,
            1_000,
            TxPayload::SellerConfirm {
                order: 1,
                sealed_key: vec![0; 500],
            },
        );
        let r = w.add1(&mut p, big);
        assert!(
            matches!(r, Err(Rejected::Busy(_)) | Err(Rejected::Invalid(_))),
            "{r:?}"
        );
        assert!(p.bytes() <= p.config().max_bytes);
    }

    #[test]
    fn an_account_cannot_fill_the_pool() {
        let w = World::new(2);
        let mut p = pool(100, 1 << 20, 3, 10);
        for n in 0..3 {
            w.add1(&mut p, w.tx(1, n, 1)).unwrap();
        }
        let r = w.add1(&mut p, w.tx(1, 3, 1));
        assert!(
            matches!(&r, Err(Rejected::Busy(s)) if s.contains("limit 3")),
            "{r:?}"
        );
        // A replacement is not an extra transaction.
        w.add1(&mut p, w.tx(1, 2, 2)).unwrap();
        assert_eq!(p.rejections().get(RejectReason::AccountFull), 1);
    }

    #[test]
    fn on_block_drops_included_and_stale_transactions() {
        let mut w = World::new(3);
        let mut p = Mempool::new(MempoolConfig::default());
        let txs: Vec<SignedTx> = (0..4).map(|n| w.tx(1, n, 2)).collect();
        for r in w.add(&mut p, txs.clone()) {
            r.unwrap();
        }
        let other = w.add1(&mut p, w.tx(2, 0, 1)).unwrap();
        // The block includes 1's nonces 0 and 1, plus a different nonce 2 (higher fee,
        // signed elsewhere): the pool's nonce 2 is now stale.
        let elsewhere = w.tx(1, 2, 7);
        w.commit(&mut p, vec![txs[0].clone(), txs[1].clone(), elsewhere]);
        assert_eq!(p.len(), 2);
        assert!(p.contains(&other));
        assert_eq!(p.pending_nonce(&w.u(1), w.state.nonce(&w.u(1))), 4);
        let sel = p.select(10, usize::MAX);
        assert_eq!(nonces_of(&sel, w.u(1)), vec![3]);
        assert!(w.applies(&sel));
        w.commit(&mut p, sel);
        assert!(p.is_empty());
        assert_eq!(p.bytes(), 0);
    }

    #[test]
    fn transactions_stranded_behind_a_gap_expire_and_the_pool_recovers() {
        let mut w = World::new(3);
        let mut p = Mempool::new(MempoolConfig {
            max_txs: 4,
            stranded_blocks: 3,
            ..MempoolConfig::default()
        });
        // Sender 1's nonce 0 never arrived (refused as busy in an overload): nonces 1..=3
        // wait behind the gap; sender 2's nonce 0 is ready.
        for n in 1..=3 {
            w.add1(&mut p, w.tx(1, n, 1)).unwrap();
        }
        w.add1(&mut p, w.tx(2, 0, 1)).unwrap();
        // Full: sender 2's next (same fee) is refused, and blocks carry only what is ready.
        assert!(matches!(
            w.add1(&mut p, w.tx(2, 1, 1)),
            Err(Rejected::Busy(_))
        ));
        let sel = p.select(10, usize::MAX);
        assert_eq!(sel.len(), 1);
        w.commit(&mut p, sel);
        assert_eq!(p.len(), 3);
        assert_eq!(p.expirations(), 0);
        // Empty blocks go by; after 3 blocks the stranded ones are dropped.
        for _ in 0..3 {
            w.commit(&mut p, Vec::new());
        }
        assert_eq!(p.len(), 0, "stranded transactions expire");
        assert_eq!(p.expirations(), 3);
        // A gap-free queue never expires, however long it waits.
        let mut q = Mempool::new(MempoolConfig {
            stranded_blocks: 2,
            ..MempoolConfig::default()
        });
        w.add1(&mut q, w.tx(2, 1, 1)).unwrap();
        for _ in 0..5 {
            w.commit(&mut q, Vec::new());
        }
        assert_eq!(q.len(), 1);
        assert_eq!(q.expirations(), 0);
        // The sender refills its gap later: accepted.
        w.add1(&mut p, w.tx(1, 0, 1)).unwrap();
        assert_eq!(p.pending_nonce(&w.u(1), w.state.nonce(&w.u(1))), 1);
    }

    #[test]
    fn rejection_counters_name_every_reason() {
        let c = RejectCounts::default();
        let labels: Vec<&str> = c.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(labels.len(), RejectReason::ALL.len());
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        assert_eq!(c.total(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Sender, nonce offset from its pending nonce (−1 is stale or a replacement),
        /// fee, corrupt the signature.
        Add(usize, i8, u8, bool),
        /// Select with these limits and commit the selection as a block.
        Commit(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..4, -1i8..4, 1u8..20, prop::bool::weighted(0.1))
                .prop_map(|(s, d, f, bad)| Op::Add(s, d, f, bad)),
            1 => (0usize..8, 0usize..2_000).prop_map(|(n, b)| Op::Commit(n, b)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

        #[test]
        fn random_use_stays_bounded_and_selections_apply(
            ops in prop::collection::vec(op(), 1..50),
            max_txs in 1usize..10,
            max_bytes in 200usize..2_000,
        ) {
            let mut w = World::new(4);
            let mut p = pool(max_txs, max_bytes, 4, 2);
            for op in ops {
                match op {
                    Op::Add(s, d, fee, bad) => {
                        let a = w.u(s);
                        let next = p.pending_nonce(&a, w.state.nonce(&a));
                        let nonce = (next as i64 + i64::from(d)).max(0) as u64;
                        let mut t = w.tx(s, nonce, Amount::from(fee));
                        if bad {
                            t.sig.0[0] ^= 1;
                        }
                        let r = w.add1(&mut p, t.clone());
                        if bad {
                            prop_assert!(r.is_err());
                        }
                        if let Ok(h) = r {
                            prop_assert!(p.contains(&h));
                        }
                    }
                    Op::Commit(n, b) => {
                        let sel = p.select(n, b);
                        prop_assert!(sel.len() <= n);
                        let size: usize = sel.iter().map(|t| Tx::Signed(t.clone()).to_bytes().len()).sum();
                        prop_assert!(size <= b);
                        prop_assert!(w.applies(&sel), "selection does not apply");
                        w.commit(&mut p, sel);
                    }
                }
                prop_assert!(p.len() <= max_txs);
                prop_assert!(p.bytes() <= max_bytes);
                // The indices agree with the queues.
                let all = p.select(usize::MAX, usize::MAX);
                prop_assert!(w.applies(&all));
                let total: usize = p.accounts.values().map(|q| q.txs.len()).sum();
                prop_assert_eq!(total, p.len());
                prop_assert_eq!(p.by_hash.len(), p.len());
                prop_assert_eq!(p.tails.len(), p.accounts.len());
                let bytes: usize = p.accounts.values().flat_map(|q| q.txs.values()).map(|e| e.bytes).sum();
                prop_assert_eq!(bytes, p.bytes());
                for q in p.accounts.values() {
                    prop_assert!(q.txs.len() <= 4);
                    prop_assert!(q.txs.keys().all(|n| *n >= q.base));
                }
            }
        }
    }
}
