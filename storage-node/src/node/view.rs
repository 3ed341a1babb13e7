//! What a running node answers about itself and its chain: the contract between the engine
//! (which owns the state) and the HTTP API / explorer / CLI client (which only read it and
//! submit transactions).
//!
//! Every view is plain JSON-serialisable data; hashes, addresses and ids are lowercase hex.

use serde::{Deserialize, Serialize};

/// The node's own state: what `GET /status` returns.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusView {
    /// Node name from its config.
    pub name: String,
    /// Roles: "validator", "proposer", "civilian", "storage".
    pub roles: Vec<String>,
    /// Chain id.
    pub chain_id: u32,
    /// Address (hex public key) of this node's key.
    pub address: String,
    /// libp2p peer id.
    pub peer_id: String,
    /// Number of the last final block.
    pub height: u64,
    /// Hash of the last final block.
    pub head_hash: String,
    /// Timestamp (ms since the Unix epoch) of the last final block.
    pub head_timestamp_ms: u64,
    /// Current term.
    pub term: u64,
    /// View within the term (block index / view length).
    pub view: u64,
    /// Proposer scheduled for the next height.
    pub next_proposer: Option<String>,
    /// LBFT phase of the height being decided ("idle", "prepare", ...).
    pub phase: String,
    /// LBFT round of the height being decided.
    pub round: u32,
    /// Connected peers.
    pub peers: usize,
    /// Transactions waiting in the mempool.
    pub mempool: usize,
    /// Impeach blocks seen since genesis.
    pub impeachments: u64,
    /// Block period (ms).
    pub period_ms: u64,
    /// True while the node is catching up with peers.
    pub syncing: bool,
    /// libp2p listen addresses, each ending in `/p2p/<peer id>` (what clients dial).
    #[serde(default)]
    pub listen: Vec<String>,
    /// The storage role's view (storage nodes only).
    #[serde(default)]
    pub storage: Option<super::storage::StorageView>,
}

/// An account: `GET /accounts/{address}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccountView {
    /// Hex address.
    pub address: String,
    /// Spendable balance in base units (1 CPC = 10^18), as a decimal string.
    pub balance: String,
    /// Next nonce the chain expects.
    pub nonce: u64,
    /// Next nonce counting transactions waiting in this node's mempool.
    pub pending_nonce: u64,
    /// RNode deposit (base units, decimal string).
    pub rnode_deposit: String,
    /// Whether the deposit makes the account an RNode (a storage node that may read shards
    /// for repair and publish DHT records).
    #[serde(default)]
    pub rnode: bool,
    /// Economy pool deposit (base units, decimal string).
    pub economy_deposit: String,
}

/// A transaction as shown by the API.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TxView {
    /// Transaction hash (hex).
    pub hash: String,
    /// "signed" or "penalty".
    pub kind: String,
    /// Sender (signed transactions).
    pub from: Option<String>,
    /// Nonce (signed transactions).
    pub nonce: Option<u64>,
    /// Fee in base units (decimal string).
    pub fee: Option<String>,
    /// Payload kind, e.g. "transfer", "register_data", "grant".
    pub call: String,
    /// Human-readable payload summary.
    pub summary: String,
    /// Block that includes it, once final.
    pub block: Option<u64>,
    /// Why the node dropped it from its pool unincluded, if it did: it could no longer
    /// apply, so no block will include it.
    #[serde(default)]
    pub dropped: Option<String>,
}

/// A block as shown by the API.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlockView {
    /// Height.
    pub number: u64,
    /// Block hash (hex).
    pub hash: String,
    /// Parent hash (hex).
    pub parent: String,
    /// Timestamp (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// Term.
    pub term: u64,
    /// Proposer (for an impeach block: the impeached proposer).
    pub proposer: String,
    /// "normal" or "impeach".
    pub kind: String,
    /// Pre-state root (hex).
    pub state_root: String,
    /// Transactions root (hex).
    pub tx_root: String,
    /// Number of transactions.
    pub tx_count: usize,
    /// Validators whose signatures are in the certificate.
    pub signers: Vec<String>,
    /// Transactions (only in `GET /blocks/{n}`; empty in lists).
    pub txs: Vec<TxView>,
}

/// A data registry entry: `GET /data/{id}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DataView {
    /// Data id (hex).
    pub id: String,
    /// Owner.
    pub owner: String,
    /// The RNodes that may coordinate it (audits, repairs) and so publish its DHT record:
    /// the ones whose keys are XOR-closest to its id, closest first.
    #[serde(default)]
    pub coordinators: Vec<String>,
    /// Merkle root over the shards.
    pub merkle_root: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Data shards.
    pub k: u16,
    /// Parity shards.
    pub m: u16,
    /// First encryption interval.
    pub intervals_start: u64,
    /// End of the encryption intervals (exclusive).
    pub intervals_end: u64,
    /// Access policy, e.g. "owner-only", "grants".
    pub policy: String,
    /// Height of the block that registered it.
    #[serde(default)]
    pub registered_at: u64,
}

/// The data an address registered: `GET /accounts/{address}/data`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnedDataView {
    /// The owner.
    pub owner: String,
    /// How many data items it registered in all.
    pub total: usize,
    /// The newest of them, newest first (at most the request's `limit`).
    pub data: Vec<DataView>,
}

/// A grant: `GET /data/{id}/grants/{reader}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantView {
    /// Data id.
    pub data: String,
    /// Reader.
    pub reader: String,
    /// First interval granted.
    pub intervals_start: u64,
    /// End of the granted intervals (exclusive).
    pub intervals_end: u64,
    /// First height at which the grant no longer holds.
    pub expiry: u64,
    /// Height it was granted at.
    pub granted_at: u64,
    /// Height it was revoked at.
    pub revoked_at: Option<u64>,
}

/// A proposer candidate (RNode) with its RPT: `GET /candidates`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CandidateView {
    /// Address.
    pub address: String,
    /// Campaign deposit (base units, decimal string).
    pub deposit: String,
    /// First term of candidacy.
    pub start_term: u64,
    /// End term (exclusive).
    pub end_term: u64,
    /// RPT in hundredths.
    pub rpt: u64,
}

/// RNodes `GET /rnodes` lists at most (each costs an RPT computation).
pub const MAX_RNODES_SHOWN: usize = 256;

/// An RNode (a holder of the RNode deposit: it may store, audit and repair data, and
/// campaign): `GET /rnodes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RNodeView {
    /// Address.
    pub address: String,
    /// RNode pool deposit (base units, decimal string).
    pub deposit: String,
    /// RPT in hundredths.
    pub rpt: u64,
    /// Whether it is a proposer candidate for the next term.
    pub candidate: bool,
}

/// RPT of an address with its five components: `GET /rpt/{address}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RptView {
    /// Address.
    pub address: String,
    /// Weighted total in hundredths.
    pub total: u64,
    /// Account balance score.
    pub ab: u64,
    /// Transactions score.
    pub tx: u64,
    /// Proxy reputation score.
    pub pr: u64,
    /// Data contribution score.
    pub dc: u64,
    /// Blockchain maintenance score.
    pub bm: u64,
}

/// The current committees: `GET /committee`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CommitteeView {
    /// Current term.
    pub term: u64,
    /// View within the term.
    pub view: u64,
    /// Blocks per view.
    pub view_len: u64,
    /// Proposers committee of the term, in turn order.
    pub proposers: Vec<String>,
    /// Validators committee.
    pub validators: Vec<String>,
    /// Proposer scheduled for the next height.
    pub next_proposer: Option<String>,
}

/// An impeachment (impeach block): shown by the explorer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImpeachView {
    /// Height of the impeach block.
    pub number: u64,
    /// The impeached proposer.
    pub proposer: String,
    /// Timestamp (ms).
    pub timestamp_ms: u64,
}

/// Why a submitted transaction was not accepted (returned to its sender with HTTP 4xx/503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The body is not a canonical signed transaction (or too large).
    #[error("malformed transaction: {0}")]
    Malformed(String),
    /// Wrong chain id, bad signature, insufficient balance, stale nonce, ...
    #[error("invalid transaction: {0}")]
    Invalid(String),
    /// Already in the mempool or already final.
    #[error("duplicate transaction")]
    Duplicate,
    /// The node cannot take it now (its mempool is full and the fee displaces nothing, its
    /// queue is full, it is shutting down): retry later.
    #[error("busy: {0}")]
    Busy(String),
}

impl Rejected {
    /// Short machine-readable name, used as `"error"` in JSON bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Rejected::Malformed(_) => "malformed",
            Rejected::Invalid(_) => "invalid",
            Rejected::Duplicate => "duplicate",
            Rejected::Busy(_) => "busy",
        }
    }
}

/// Counters and gauges the engine exports for `/metrics` (the API owns the Prometheus
/// registry and reads these on each scrape).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsView {
    /// Height of the last final block.
    pub height: u64,
    /// Transactions committed since start.
    pub committed_txs: u64,
    /// Mempool size.
    pub mempool: usize,
    /// Connected peers.
    pub peers: usize,
    /// Impeach blocks since start.
    pub impeachments: u64,
    /// Transactions rejected at submission since start.
    pub rejected_txs: u64,
    /// Transactions the mempool dropped after admitting them (they could no longer apply),
    /// since start.
    pub dropped_txs: u64,
    /// Commit latency samples (seconds, proposal timestamp → local finality) taken since
    /// the previous scrape; the API feeds them into a histogram.
    pub commit_latencies_s: Vec<f64>,
    /// Signature-batch sizes verified since the previous scrape.
    pub verify_batch_sizes: Vec<usize>,
    /// The storage role's counters (storage nodes only).
    pub storage: Option<super::storage::StorageView>,
}

/// Read access to a node and transaction submission: implemented by the engine, used by
/// the HTTP API. Methods are cheap (they read shared snapshots) and never block on
/// consensus.
pub trait NodeApi: Send + Sync + 'static {
    /// The node's status.
    fn status(&self) -> StatusView;
    /// An account (a never-seen address is an empty account).
    fn account(&self, address: &chain::Address) -> AccountView;
    /// A final block with its transactions.
    fn block(&self, number: u64) -> anyhow::Result<Option<BlockView>>;
    /// The newest `limit` final blocks, newest first, without transaction lists.
    fn recent_blocks(&self, limit: usize) -> anyhow::Result<Vec<BlockView>>;
    /// A transaction by hash: final (with its block) or pending (block = None).
    fn tx(&self, hash: &crypto_accel::Hash) -> anyhow::Result<Option<TxView>>;
    /// The newest `limit` final transactions, newest first.
    fn recent_txs(&self, limit: usize) -> anyhow::Result<Vec<TxView>>;
    /// A data registry entry.
    fn data(&self, id: &crypto_accel::DataId) -> Option<DataView>;
    /// The data `owner` registered: how many in all, and the newest `limit`, newest first.
    fn owned_data(&self, owner: &chain::Address, limit: usize) -> OwnedDataView;
    /// The grant of `id` to `reader`.
    fn grant(&self, id: &crypto_accel::DataId, reader: &chain::Address) -> Option<GrantView>;
    /// Current proposer candidates with their RPT.
    fn candidates(&self) -> Vec<CandidateView>;
    /// The RNodes with the largest deposits (at most [`MAX_RNODES_SHOWN`]), with their RPT.
    fn rnodes(&self) -> Vec<RNodeView>;
    /// RPT of an address.
    fn rpt(&self, address: &chain::Address) -> RptView;
    /// Committees, term and view.
    fn committee(&self) -> CommitteeView;
    /// Impeach blocks, newest first.
    fn impeachments(&self, limit: usize) -> Vec<ImpeachView>;
    /// Submits a canonical-encoded signed transaction; returns its hash once it is in the
    /// mempool (and gossiped), or why not.
    fn submit(&self, tx_bytes: &[u8]) -> Result<crypto_accel::Hash, Rejected>;
    /// Submits many encoded transactions at once (one mempool batch, one signature batch,
    /// one gossip message); one result per transaction, in order.
    fn submit_many(&self, txs: Vec<Vec<u8>>) -> Vec<Result<crypto_accel::Hash, Rejected>> {
        txs.iter().map(|t| self.submit(t)).collect()
    }
    /// Metrics snapshot (drains the latency and batch-size samples).
    fn metrics(&self) -> MetricsView;
    /// The (block, index) of every shard of `data` held here; `None` without the storage
    /// role.
    fn held(&self, data: &crypto_accel::DataId) -> Option<Vec<(u64, u8)>> {
        let _ = data;
        None
    }
}
