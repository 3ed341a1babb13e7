//! The engine: the shell around the pure LBFT core. It owns the validator machine, the
//! state, the chain store and the mempool on one thread; turns timers into inputs; sends
//! the machine's messages through the network; verifies signature batches with the
//! [`BatchVerifier`] (caching verdicts); executes and durably commits final blocks; builds
//! blocks in this node's proposer turns; and catches up from peers in block ranges.
//!
//! Everything reaches the engine as an [`EngineEvent`] on one bounded channel; API queries
//! are closures run between events, so readers always see a consistent state.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chain::{
    propose, term_of, Address, Block, BlockKind, Certificate, ChainConfig, ChainStore, Input,
    KeyCache, LbftParams, Message, Output, Schedule, SignedTx, State, StoreConfig, TimerKind, Tx,
    TxPayload, Validator,
};
use crypto_accel::{
    BatchVerifier, CpuBatchVerifier, CpuVerifierConfig, Decode, Encode, Hash, Keypair, Reader,
    VerifyBatch, VerifyReport,
};
use libp2p::PeerId;
use tokio::sync::mpsc::UnboundedSender;

use super::config::{now_ms, Genesis, NodeConfig, Role};
use super::mempool::{Mempool, MempoolConfig};
use super::net::{NetCmd, NetEvent, NetStats, TOPIC_BLOCKS, TOPIC_TXS};
use super::sizer::BlockSizer;
use super::view::Rejected;

/// Most transactions in one gossiped batch.
pub const MAX_GOSSIP_TXS: usize = 20_000;
/// Most blocks one sync answer carries.
pub const SYNC_RANGE: u64 = 64;
/// Verdicts cached before the cache is cleared.
const MAX_VERDICTS: usize = 1 << 20;
/// Final transactions indexed by hash for the API.
const TX_INDEX: usize = 1 << 20;
/// Recent blocks' summaries kept for the API.
const RECENT_BLOCKS: usize = 256;

/// A sync request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncReq {
    /// "What is your last final block?"
    Head,
    /// "Send final blocks `from`, `from + 1`, … (at most `count`)."
    Range {
        /// First block.
        from: u64,
        /// Most blocks wanted.
        count: u64,
    },
}

impl Encode for SyncReq {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SyncReq::Head => 0u8.encode(out),
            SyncReq::Range { from, count } => {
                1u8.encode(out);
                from.encode(out);
                count.encode(out);
            }
        }
    }
}

impl Decode for SyncReq {
    fn decode(r: &mut Reader<'_>) -> crypto_accel::CodecResult<Self> {
        match r.u8()? {
            0 => Ok(SyncReq::Head),
            1 => Ok(SyncReq::Range {
                from: r.u64()?,
                count: r.u64()?,
            }),
            t => Err(crypto_accel::CodecError::BadTag {
                what: "sync request",
                tag: u64::from(t),
            }),
        }
    }
}

/// A sync answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResp {
    /// The peer's last final block number.
    Head(u64),
    /// Final blocks with their certificates, in order.
    Blocks(Vec<(Block, Certificate)>),
}

impl Encode for SyncResp {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            SyncResp::Head(n) => {
                0u8.encode(out);
                n.encode(out);
            }
            SyncResp::Blocks(bs) => {
                1u8.encode(out);
                (bs.len() as u32).encode(out);
                for (b, c) in bs {
                    b.encode(out);
                    c.encode(out);
                }
            }
        }
    }
}

impl Decode for SyncResp {
    fn decode(r: &mut Reader<'_>) -> crypto_accel::CodecResult<Self> {
        match r.u8()? {
            0 => Ok(SyncResp::Head(r.u64()?)),
            1 => {
                let n = r.len("sync blocks", SYNC_RANGE as usize)?;
                let mut bs = Vec::with_capacity(n.min(r.remaining() / 100));
                for _ in 0..n {
                    bs.push((Block::decode(r)?, Certificate::decode(r)?));
                }
                Ok(SyncResp::Blocks(bs))
            }
            t => Err(crypto_accel::CodecError::BadTag {
                what: "sync response",
                tag: u64::from(t),
            }),
        }
    }
}

/// "Block `number` with `hash` is final": what the blocks topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// Height.
    pub number: u64,
    /// Block hash.
    pub hash: Hash,
}

impl Encode for Announce {
    fn encode(&self, out: &mut Vec<u8>) {
        self.number.encode(out);
        self.hash.encode(out);
    }
}

impl Decode for Announce {
    fn decode(r: &mut Reader<'_>) -> crypto_accel::CodecResult<Self> {
        Ok(Announce {
            number: r.u64()?,
            hash: Hash::decode(r)?,
        })
    }
}

/// Encodes a batch of transactions for gossip.
pub fn encode_tx_batch(txs: &[SignedTx]) -> Vec<u8> {
    let mut out = Vec::with_capacity(txs.len() * 160 + 4);
    (txs.len() as u32).encode(&mut out);
    for t in txs {
        Tx::Signed(t.clone()).encode(&mut out);
    }
    out
}

/// Decodes a gossiped batch (at most [`MAX_GOSSIP_TXS`], the whole buffer consumed).
pub fn decode_tx_batch(bytes: &[u8]) -> crypto_accel::CodecResult<Vec<SignedTx>> {
    let mut r = Reader::new(bytes);
    let n = r.len("tx batch", MAX_GOSSIP_TXS)?;
    // Reserve no more than the bytes left could hold (a signed tx takes ≥ 100 bytes).
    let mut v = Vec::with_capacity(n.min(r.remaining() / 100));
    for _ in 0..n {
        match Tx::decode(&mut r)? {
            Tx::Signed(t) => v.push(t),
            Tx::Penalty { .. } => {
                return Err(crypto_accel::CodecError::Invalid {
                    what: "tx batch",
                    reason: "penalties are not gossiped",
                })
            }
        }
    }
    r.finish()?;
    Ok(v)
}

/// Decodes `bytes` as one `T`, all of them consumed.
pub(crate) fn decode_all<T: Decode>(bytes: &[u8]) -> crypto_accel::CodecResult<T> {
    let mut r = Reader::new(bytes);
    let v = T::decode(&mut r)?;
    r.finish()?;
    Ok(v)
}

/// A closure run on the engine thread between events.
pub type Query = Box<dyn FnOnce(&mut Engine) + Send>;

/// What the engine reacts to.
pub enum EngineEvent {
    /// From the network.
    Net(NetEvent),
    /// Transactions submitted through the API (canonical bytes each), answered per tx.
    Submit {
        /// Encoded transactions.
        txs: Vec<Vec<u8>>,
        /// Where the per-transaction results go.
        reply: SyncSender<Vec<Result<Hash, Rejected>>>,
    },
    /// A read-only query.
    Query(Query),
    /// Stop.
    Shutdown,
}

impl std::fmt::Debug for EngineEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineEvent::Net(e) => write!(f, "Net({e:?})"),
            EngineEvent::Submit { txs, .. } => write!(f, "Submit({} txs)", txs.len()),
            EngineEvent::Query(_) => f.write_str("Query"),
            EngineEvent::Shutdown => f.write_str("Shutdown"),
        }
    }
}

impl From<NetEvent> for EngineEvent {
    fn from(e: NetEvent) -> Self {
        EngineEvent::Net(e)
    }
}

/// A final block's summary kept for the API and explorer.
#[derive(Debug, Clone)]
pub struct BlockSummary {
    /// The block.
    pub block: Arc<Block>,
    /// Signers of its certificate.
    pub signers: Vec<Address>,
}

/// Counters the API reads.
#[derive(Debug, Default, Clone)]
pub struct EngineStats {
    /// Transactions committed since start.
    pub committed_txs: u64,
    /// Impeach blocks committed since start.
    pub impeachments: u64,
    /// Submissions rejected since start.
    pub rejected_txs: u64,
    /// Commit latency samples (s) since the last metrics read.
    pub latencies: Vec<f64>,
    /// Verify batch sizes since the last metrics read.
    pub batch_sizes: Vec<usize>,
}

/// A proposed block whose body applied cleanly: the state after it and its receipt.
struct Checked {
    block: Hash,
    pre_root: Hash,
    post: State,
    receipt: chain::BlockReceipt,
}

const PENDING_COMMITTEE: &str = "next_committee";

/// Writes the committee elected after block `number` (durably, before the block is
/// committed).
fn save_pending_committee(
    dir: &std::path::Path,
    number: u64,
    hash: &Hash,
    term: u64,
    members: &[Address],
) -> Result<()> {
    let mut text = format!("{number} {} {term}", hash.to_hex());
    for m in members {
        text.push(' ');
        text.push_str(&m.to_hex());
    }
    text.push('\n');
    super::config::write_atomic(&dir.join(PENDING_COMMITTEE), text.as_bytes(), 0o644)
}

/// The committee elected after the head block, if the head is a term's last block and
/// the election was saved for it (the chain store only gets it with the next block).
fn load_pending_committee(
    dir: &std::path::Path,
    head: u64,
    head_hash: &Hash,
) -> Result<Option<(u64, Vec<Address>)>> {
    let path = dir.join(PENDING_COMMITTEE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let bad = || anyhow::anyhow!("{} is damaged", path.display());
    let mut it = text.split_whitespace();
    let number: u64 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
    let hash = it
        .next()
        .and_then(|x| Hash::from_hex(x).ok())
        .ok_or_else(bad)?;
    let term: u64 = it.next().and_then(|x| x.parse().ok()).ok_or_else(bad)?;
    if number != head || hash != *head_hash {
        return Ok(None);
    }
    let members = it
        .map(|a| Address::from_hex(a).ok_or_else(bad))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some((term, members)))
}

/// The engine (see the module docs).
pub struct Engine {
    /// Node config.
    pub node: NodeConfig,
    /// Chain parameters.
    pub cfg: ChainConfig,
    key: Keypair,
    /// This node's address.
    pub addr: Address,
    /// The LBFT machine.
    pub machine: Validator,
    /// State after the last executed block.
    pub state: State,
    /// Durable blocks.
    pub store: ChainStore,
    /// Pending transactions.
    pub mempool: Mempool,
    verifier: CpuBatchVerifier,
    verdicts: HashMap<Hash, bool>,
    keys: KeyCache,
    checked: Option<Checked>,
    timers: BTreeMap<TimerKind, u64>,
    net: UnboundedSender<NetCmd>,
    /// Network counters.
    pub net_stats: Arc<NetStats>,
    /// libp2p peer id.
    pub peer_id: PeerId,
    candidates: Vec<(Address, u64)>,
    turn_seen: u64,
    propose_at: Option<(u64, u64)>,
    sent_block: Option<Block>,
    /// Sizes our proposals from how fast our earlier ones became final.
    sizer: BlockSizer,
    /// Best head heard from peers.
    pub best_peer_height: u64,
    sync_inflight: Option<Instant>,
    /// When this storage node last sent its RNode deposit (`[storage] stake`).
    stake_sent: Option<Instant>,
    last_housekeeping: Instant,
    /// Recent final blocks, newest last.
    pub recent: VecDeque<BlockSummary>,
    /// Final transaction hash → block number (bounded, newest kept).
    pub tx_index: HashMap<Hash, u64>,
    tx_order: VecDeque<Hash>,
    /// Counters.
    pub stats: EngineStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.node.name)
            .field("height", &self.store.head().number)
            .finish()
    }
}

impl Engine {
    /// Opens the store (replaying it), builds the machine at its head.
    pub fn open(
        node: NodeConfig,
        genesis: &Genesis,
        key: Keypair,
        net: UnboundedSender<NetCmd>,
        net_stats: Arc<NetStats>,
        peer_id: PeerId,
    ) -> Result<Engine> {
        let cfg = genesis.chain_config()?;
        let balances = genesis.balances()?;
        let gh = genesis.header(&cfg);
        let (store, state) = ChainStore::open_with_genesis(
            node.data_dir.join("chain"),
            &cfg,
            &balances,
            StoreConfig::default(),
            &gh,
        )
        .map_err(|e| {
            let dir = node.data_dir.join("chain");
            let hint = match e {
                chain::ChainError::StoreCorrupt { .. }
                | chain::ChainError::StoreMismatch { .. } => {
                    format!(
                        " (to start this node's chain over, remove {} and restart: the chain \
                         syncs again from peers, and the node's shards, kept beside it, stay)",
                        dir.display()
                    )
                }
                chain::ChainError::StoreIo { ref reason, .. }
                    if reason.contains("already open") =>
                {
                    " (another node is running with this data directory)".to_string()
                }
                _ => String::new(),
            };
            anyhow::anyhow!("opening the chain store in {}: {e}{hint}", dir.display())
        })?;
        let head = store.head();
        let tip = if head.number == 0 {
            gh
        } else {
            store
                .block(head.number)
                .context("reading the head block")?
                .context("the head block is missing from the store")?
                .header
        };
        let mut state = state;
        if let Some((term, members)) =
            load_pending_committee(&node.data_dir, head.number, &head.hash)?
        {
            state
                .set_committee(term, &members)
                .context("restoring the elected committee")?;
        }
        let candidates = Self::candidates_from(&cfg, &state);
        let term = term_of(&cfg, head.number.saturating_add(1));
        let committee = if term == 0 {
            cfg.default_proposers.clone()
        } else {
            let c = state.committee(term);
            if c.is_empty() {
                cfg.default_proposers.clone()
            } else {
                c
            }
        };
        let schedule = Schedule::new(term, committee, candidates.clone());
        let params = LbftParams {
            resend_ms: 500,
            ..LbftParams::default()
        };
        let machine = if node.has(Role::Validator) {
            Validator::new(
                cfg.clone(),
                key.clone(),
                params,
                tip,
                state.root(),
                schedule,
            )
        } else {
            Validator::follower(cfg.clone(), params, tip, state.root(), schedule)
        };
        if node.has(Role::Validator) && !machine.is_validator() {
            anyhow::bail!(
                "config says validator, but {} is not in the genesis validators",
                Address::of(&key.public())
            );
        }
        let mempool = Mempool::new(MempoolConfig {
            max_txs: node.mempool.max_txs,
            max_bytes: node.mempool.max_bytes,
            ..MempoolConfig::default()
        });
        let verifier = CpuBatchVerifier::new(CpuVerifierConfig::default())
            .context("starting the signature verifier")?;
        let (max_block_txs, impeach_timeout_ms) =
            (node.mempool.max_block_txs, cfg.impeach_timeout_ms);
        let mut recent = VecDeque::new();
        let from = head.number.saturating_sub(RECENT_BLOCKS as u64 - 1).max(1);
        for n in from..=head.number {
            if let (Ok(Some(b)), Ok(Some(c))) = (store.block(n), store.certificate(n)) {
                recent.push_back(BlockSummary {
                    block: Arc::new(b),
                    signers: c.sigs.iter().map(|(a, _)| *a).collect(),
                });
            }
        }
        Ok(Engine {
            addr: Address::of(&key.public()),
            node,
            cfg,
            key,
            machine,
            state,
            store,
            mempool,
            verifier,
            verdicts: HashMap::new(),
            keys: KeyCache::default(),
            checked: None,
            timers: BTreeMap::new(),
            net,
            net_stats,
            peer_id,
            candidates,
            turn_seen: 0,
            propose_at: None,
            sent_block: None,
            sizer: BlockSizer::new(max_block_txs, impeach_timeout_ms),
            best_peer_height: head.number,
            sync_inflight: None,
            stake_sent: None,
            last_housekeeping: Instant::now(),
            recent,
            tx_index: HashMap::new(),
            tx_order: VecDeque::new(),
            stats: EngineStats::default(),
        })
    }

    fn candidates_from(cfg: &ChainConfig, state: &State) -> Vec<(Address, u64)> {
        let next_term = state.term().saturating_add(1);
        state
            .candidates_of(cfg, next_term)
            .into_iter()
            .map(|a| (a, state.get_rpt(&a).total))
            .collect()
    }

    /// Tells the network layer who the current term's elected proposers are.
    fn announce_elected(&self) {
        let term = term_of(&self.cfg, self.store.head().number.saturating_add(1));
        let _ = self.net.send(NetCmd::Elected(self.state.committee(term)));
    }

    /// Runs until [`EngineEvent::Shutdown`] or until every sender is gone.
    pub fn run(mut self, rx: Receiver<EngineEvent>) {
        self.announce_elected();
        self.feed(None);
        loop {
            let now = now_ms();
            let next_timer = self.timers.values().min().copied();
            let next = [next_timer, self.propose_at.map(|p| p.1)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + 200);
            let wait = next.saturating_sub(now).clamp(1, 200);
            match rx.recv_timeout(Duration::from_millis(wait)) {
                Ok(EngineEvent::Shutdown) => break,
                Ok(ev) => {
                    self.handle(ev);
                    // Drain what is queued, batching gossiped transactions.
                    let mut txs = Vec::new();
                    for _ in 0..4096 {
                        match rx.try_recv() {
                            Ok(EngineEvent::Shutdown) => return,
                            Ok(EngineEvent::Net(NetEvent::Gossip {
                                topic: TOPIC_TXS,
                                data,
                                ..
                            })) => {
                                if !self.node.has(Role::Proposer) {
                                    continue;
                                }
                                if let Ok(mut v) = decode_tx_batch(&data) {
                                    txs.append(&mut v);
                                }
                                if txs.len() >= MAX_GOSSIP_TXS {
                                    self.add_txs(std::mem::take(&mut txs), false);
                                }
                            }
                            Ok(ev) => self.handle(ev),
                            Err(_) => break,
                        }
                    }
                    if !txs.is_empty() {
                        self.add_txs(txs, false);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.fire_timers();
            if self.last_housekeeping.elapsed() >= Duration::from_millis(500) {
                self.last_housekeeping = Instant::now();
                self.housekeeping();
            }
        }
    }

    fn handle(&mut self, ev: EngineEvent) {
        match ev {
            EngineEvent::Net(NetEvent::Consensus { data, .. }) => {
                match decode_all::<Message>(&data) {
                    Ok(m) => self.on_message(m),
                    Err(e) => tracing::debug!("bad consensus frame: {e}"),
                }
            }
            EngineEvent::Net(NetEvent::Gossip { topic, data, .. }) => {
                if topic == TOPIC_BLOCKS {
                    // "Block `number` with hash … is final": fetch what we lack from a
                    // validator (bodies travel by request, not through the mesh).
                    match decode_all::<Announce>(&data) {
                        Ok(a) => {
                            self.note_peer_height(a.number);
                            if a.number >= self.machine.height() {
                                self.request_blocks(Duration::from_millis(1_000));
                            }
                        }
                        Err(e) => tracing::debug!("bad block announcement: {e}"),
                    }
                } else if self.node.has(Role::Proposer) {
                    // Only proposers build blocks; the others need no mempool of gossip
                    // (validators check every body's signatures anyway).
                    if let Ok(txs) = decode_tx_batch(&data) {
                        self.add_txs(txs, false);
                    }
                }
            }
            EngineEvent::Net(NetEvent::SyncRequest { id, data }) => {
                let resp = match decode_all::<SyncReq>(&data) {
                    Ok(SyncReq::Head) => SyncResp::Head(self.store.head().number),
                    Ok(SyncReq::Range { from, count }) => {
                        let to = from.saturating_add(count.min(SYNC_RANGE)).saturating_sub(1);
                        // Within what one answer frame carries (framing and lengths aside).
                        let budget = super::net::MAX_SYNC_RESPONSE - (1 << 20);
                        SyncResp::Blocks(
                            self.store
                                .blocks_range_within(from, to, budget)
                                .unwrap_or_default(),
                        )
                    }
                    Err(_) => SyncResp::Blocks(Vec::new()),
                };
                let _ = self.net.send(NetCmd::SyncRespond {
                    id,
                    data: resp.to_bytes(),
                });
            }
            EngineEvent::Net(NetEvent::SyncResponse { from, data }) => {
                match decode_all::<SyncResp>(&data) {
                    Ok(SyncResp::Head(n)) => self.note_peer_height(n),
                    // A range answer starts at the height this node asked from; blocks that
                    // start past it (say, sent as the answer to the head probe on connecting)
                    // were not asked for, and would only fill the future-height buffer.
                    Ok(SyncResp::Blocks(bs))
                        if bs
                            .first()
                            .is_some_and(|(b, _)| b.header.number > self.machine.height()) =>
                    {
                        tracing::debug!("blocks from {from} that were not asked for: ignored")
                    }
                    Ok(SyncResp::Blocks(bs)) => {
                        self.sync_inflight = None;
                        if bs.is_empty() {
                            // The peer has nothing past our tip: whatever height was claimed
                            // is not backed by blocks (a later announcement claims it again
                            // if it was real).
                            self.best_peer_height = self
                                .best_peer_height
                                .min(self.machine.height().saturating_sub(1));
                        }
                        let more = bs.len() as u64 == SYNC_RANGE;
                        for (b, c) in bs {
                            if b.header.number >= self.machine.height() {
                                self.feed(Some(Input::Validate(b, c)));
                            }
                        }
                        if more || self.best_peer_height >= self.machine.height() {
                            self.request_blocks(Duration::ZERO);
                        }
                    }
                    Err(e) => tracing::debug!("bad sync answer from {from}: {e}"),
                }
            }
            EngineEvent::Net(NetEvent::Connected(p)) => {
                let _ = self.net.send(NetCmd::SyncRequest {
                    peer: Some(p),
                    data: SyncReq::Head.to_bytes(),
                });
            }
            EngineEvent::Submit { txs, reply } => {
                let mut out: Vec<Option<Result<Hash, Rejected>>> = vec![None; txs.len()];
                let mut decoded = Vec::with_capacity(txs.len());
                let mut idx = Vec::with_capacity(txs.len());
                for (i, b) in txs.iter().enumerate() {
                    match decode_all::<Tx>(b) {
                        Ok(Tx::Signed(t)) => {
                            decoded.push(t);
                            idx.push(i);
                        }
                        Ok(Tx::Penalty { .. }) => {
                            out[i] = Some(Err(Rejected::Invalid(
                                "penalty transactions are made by validators, not submitted".into(),
                            )))
                        }
                        Err(e) => out[i] = Some(Err(Rejected::Malformed(e.to_string()))),
                    }
                }
                let results = self.add_txs(decoded, true);
                for (i, r) in idx.into_iter().zip(results) {
                    out[i] = Some(r);
                }
                let out: Vec<Result<Hash, Rejected>> = out
                    .into_iter()
                    .map(|r| r.unwrap_or(Err(Rejected::Malformed("not processed".into()))))
                    .collect();
                self.stats.rejected_txs += out.iter().filter(|r| r.is_err()).count() as u64;
                let _ = reply.send(out);
            }
            EngineEvent::Query(q) => q(self),
            EngineEvent::Shutdown => {}
        }
    }

    /// Adds transactions to the mempool; gossips the accepted ones when they came from
    /// this node's API.
    fn add_txs(&mut self, txs: Vec<SignedTx>, gossip: bool) -> Vec<Result<Hash, Rejected>> {
        if txs.is_empty() {
            return Vec::new();
        }
        let copies = if gossip { txs.clone() } else { Vec::new() };
        if self.stats.batch_sizes.len() < 100_000 {
            self.stats.batch_sizes.push(txs.len());
        }
        // Submissions are verified now (the sender hears why a bad one is refused);
        // relayed ones only when this node builds a block with them.
        let results = if gossip {
            self.mempool
                .add_batch(txs, &self.state, &self.cfg, &self.verifier)
        } else {
            self.mempool.add_batch_deferred(txs, &self.state, &self.cfg)
        };
        if gossip {
            let ok: Vec<SignedTx> = copies
                .into_iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|(t, _)| t)
                .collect();
            for chunk in ok.chunks(MAX_GOSSIP_TXS) {
                let _ = self.net.send(NetCmd::Publish {
                    topic: TOPIC_TXS,
                    data: encode_tx_batch(chunk),
                });
            }
        }
        results
    }

    fn on_message(&mut self, m: Message) {
        if let Message::Validate(b, _) = &m {
            self.note_peer_height(b.header.number);
        }
        self.feed(Some(m.into()));
    }

    /// Takes a peer's word that block `n` exists. The word is not authenticated
    /// (announcements, head answers, unverified proposals), so a height no chain could have
    /// reached yet by our clock does not make this node "syncing": it only earns one range
    /// request now and then, which brings blocks if the claim was true (our clock may be
    /// wrong) and nothing if it was not.
    fn note_peer_height(&mut self, n: u64) {
        let tip = self.machine.tip();
        let possible = plausible_height(tip.number, tip.timestamp_ms, now_ms(), self.cfg.period_ms);
        if n > possible {
            tracing::debug!("a peer claims block {n}; by our clock at most {possible} can exist");
            self.request_blocks(Duration::from_secs(10));
            return;
        }
        self.best_peer_height = self.best_peer_height.max(n);
    }

    fn fire_timers(&mut self) {
        let now = now_ms();
        let due: Vec<TimerKind> = self
            .timers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in due {
            self.timers.remove(&k);
            let before = (
                self.machine.height(),
                self.machine.round(),
                self.machine.phase(),
            );
            self.feed(Some(Input::Timeout(k)));
            // A round timer that changed the round or the phase is the abnormal path
            // (no block, or no certificate, in time): say so, it explains latency spikes.
            if let TimerKind::Round { number, round } = k {
                let after = (self.machine.round(), self.machine.phase());
                if number == before.0 && after != (before.1, before.2) {
                    tracing::info!(
                        "#{number}: round {round} timed out in phase {:?}; now round {} in \
                         phase {:?}",
                        before.2,
                        after.0,
                        after.1
                    );
                }
            }
        }
        if let Some((number, at)) = self.propose_at {
            if at <= now {
                self.propose_at = None;
                self.proposer_turn(number);
            }
        }
    }

    /// Asks a validator for the final blocks from our height on, unless a request younger
    /// than `patience` is still unanswered.
    fn request_blocks(&mut self, patience: Duration) {
        if self.sync_inflight.is_some_and(|t| t.elapsed() < patience) {
            return;
        }
        self.sync_inflight = Some(Instant::now());
        let _ = self.net.send(NetCmd::SyncRequest {
            peer: None,
            data: SyncReq::Range {
                from: self.machine.height(),
                count: SYNC_RANGE,
            }
            .to_bytes(),
        });
    }

    /// `[storage] stake`: deposits the RNode minimum once this node is caught up and not
    /// staked yet (again every [`STAKE_RETRY`] until the deposit is final).
    fn stake_if_needed(&mut self) {
        if !self.node.storage.stake || !self.node.has(Role::Storage) {
            return;
        }
        if self.state.is_rnode(&self.cfg, &self.addr)
            || self.best_peer_height >= self.machine.height()
            || self.net_stats.peers.load(Ordering::Relaxed) == 0
            || self.stake_sent.is_some_and(|t| t.elapsed() < STAKE_RETRY)
        {
            return;
        }
        self.stake_sent = Some(Instant::now());
        let amount = self
            .cfg
            .rnode_min_deposit
            .saturating_sub(self.state.rnode_deposit(&self.addr));
        let balance = self.state.account(&self.addr).balance;
        if balance < amount.saturating_add(STAKE_FEE) {
            tracing::warn!(
                "[storage] stake: the balance ({} CPC) cannot pay the RNode deposit ({} CPC) \
                 and its fee; peers will not let this node repair",
                super::client::format_cpc(balance),
                super::client::format_cpc(amount)
            );
            return;
        }
        let tx = SignedTx::sign(
            &self.key,
            self.cfg.chain_id,
            self.state.nonce(&self.addr),
            STAKE_FEE,
            TxPayload::RNodeDeposit { amount },
        );
        // Published here on every try: only proposers build blocks, and a first relay that
        // reached none (none subscribed yet) would leave the deposit in this node's pool,
        // where a retry is a duplicate that the pool does not relay again.
        let _ = self.net.send(NetCmd::Publish {
            topic: TOPIC_TXS,
            data: encode_tx_batch(std::slice::from_ref(&tx)),
        });
        match self.add_txs(vec![tx], false).pop() {
            Some(Ok(h)) => tracing::info!(
                "[storage] stake: RNode deposit of {} CPC sent ({h})",
                super::client::format_cpc(amount)
            ),
            Some(Err(e)) => tracing::debug!("[storage] stake: our pool holds the deposit: {e:?}"),
            None => {}
        }
    }

    fn housekeeping(&mut self) {
        self.stake_if_needed();
        let h = self.machine.height();
        let behind = self.best_peer_height >= h;
        if behind {
            self.request_blocks(Duration::from_secs(2));
        }
        // Ask for heads now and then, so a node that missed announcements learns it is
        // behind.
        if behind || h.is_multiple_of(8) {
            let _ = self.net.send(NetCmd::SyncRequest {
                peer: None,
                data: SyncReq::Head.to_bytes(),
            });
        }
    }

    /// Steps the machine with `input` (after a clock tick) and performs its outputs until
    /// no follow-up inputs remain.
    fn feed(&mut self, input: Option<Input>) {
        let mut queue: VecDeque<Input> = VecDeque::new();
        queue.push_back(Input::Tick(now_ms()));
        queue.extend(input);
        while let Some(i) = queue.pop_front() {
            let outs = self.machine.step(i);
            let mut follow = Vec::new();
            for o in outs {
                match o {
                    Output::Broadcast(msg) => self.broadcast(&msg),
                    Output::SetTimer { kind, at_ms } => {
                        self.timers.insert(kind, at_ms);
                    }
                    Output::Verify { req, batch, ids } => {
                        let report = self.verify(&batch, &ids);
                        follow.push(Input::Verified { req, report });
                    }
                    Output::Check { req, block } => {
                        let ok = self.check_body(&block);
                        follow.push(Input::Checked { req, ok });
                    }
                    Output::Insert(block, cert) => {
                        let number = block.header.number;
                        match self.execute(&block, &cert) {
                            Ok(root) => {
                                follow.push(Input::Executed {
                                    number,
                                    post_state_root: root,
                                });
                                let c = Self::candidates_from(&self.cfg, &self.state);
                                if c != self.candidates {
                                    self.candidates = c.clone();
                                    follow.push(Input::Candidates(c));
                                }
                            }
                            Err(e) => {
                                tracing::error!("cannot execute final block {number}: {e:#}");
                            }
                        }
                    }
                    Output::Evidence(dv) => {
                        tracing::warn!("double vote by {} at {}", dv.a.validator, dv.a.number);
                        if let Ok(t) = self.evidence_tx(dv) {
                            let _ = self.add_txs(vec![t], true);
                        }
                    }
                }
            }
            for f in follow.into_iter().rev() {
                queue.push_front(f);
            }
        }
        self.after_step();
    }

    fn evidence_tx(&self, dv: chain::DoubleVote) -> Result<SignedTx> {
        let nonce = self
            .mempool
            .pending_nonce(&self.addr, self.state.nonce(&self.addr));
        Ok(SignedTx::sign(
            &self.key,
            self.cfg.chain_id,
            nonce,
            0,
            TxPayload::Evidence(Box::new(dv)),
        ))
    }

    fn broadcast(&mut self, msg: &Message) {
        if let Message::Validate(b, _) = msg {
            // Committee members decide on their own certificates, and whoever lacks the
            // block fetches it with its certificate by range: the mesh carries only a
            // 40-byte announcement, not megabytes of body to every peer several times.
            let a = Announce {
                number: b.header.number,
                hash: b.hash(),
            };
            let _ = self.net.send(NetCmd::Publish {
                topic: TOPIC_BLOCKS,
                data: a.to_bytes(),
            });
            return;
        }
        let bytes = msg.to_bytes();
        let _ = self.net.send(NetCmd::ToCommittee(Arc::new(bytes)));
    }

    fn verify(&mut self, batch: &VerifyBatch, ids: &[Hash]) -> VerifyReport {
        if ids.len() == batch.len() && ids.iter().all(|id| self.verdicts.contains_key(id)) {
            return VerifyReport {
                len: ids.len(),
                invalid: ids
                    .iter()
                    .enumerate()
                    .filter(|(_, id)| self.verdicts.get(*id) != Some(&true))
                    .map(|(i, _)| i)
                    .collect(),
            };
        }
        if self.stats.batch_sizes.len() < 100_000 {
            self.stats.batch_sizes.push(batch.len());
        }
        let report = self.verifier.verify(batch);
        if ids.len() == batch.len() {
            if self.verdicts.len() + ids.len() > MAX_VERDICTS {
                self.verdicts.clear();
            }
            for (i, id) in ids.iter().enumerate() {
                self.verdicts.insert(*id, report.is_valid(i));
            }
        }
        report
    }

    /// Whether a proposed body's signatures verify and it applies on the current state.
    fn check_body(&mut self, block: &Block) -> bool {
        let t = Instant::now();
        let ok = self.check_body_inner(block);
        if t.elapsed() > Duration::from_millis(100) {
            tracing::info!(
                "checked #{} ({} txs) in {:?}",
                block.header.number,
                block.txs.len(),
                t.elapsed()
            );
        }
        ok
    }

    fn check_body_inner(&mut self, block: &Block) -> bool {
        let Some((batch, ids)) = State::body_signatures(block, self.cfg.chain_id, &mut self.keys)
        else {
            return false;
        };
        if !self.verify(&batch, &ids).all_valid() {
            return false;
        }
        let mut copy = self.state.clone();
        match copy.apply_block(&self.cfg, block) {
            Ok(receipt) => {
                // Kept so that executing this block once it is final costs nothing more.
                self.checked = Some(Checked {
                    block: block.hash(),
                    pre_root: self.state.root(),
                    post: copy,
                    receipt,
                });
                true
            }
            Err(_) => false,
        }
    }

    /// Applies a final block, records the next committee at a term's end, commits it
    /// durably and updates the mempool and indexes. Returns the post-state root.
    fn execute(&mut self, block: &Block, cert: &Certificate) -> Result<Hash> {
        let t = Instant::now();
        let r = self.execute_inner(block, cert);
        if t.elapsed() > Duration::from_millis(100) {
            tracing::info!(
                "executed #{} ({} txs) in {:?}",
                block.header.number,
                block.txs.len(),
                t.elapsed()
            );
        }
        r
    }

    fn execute_inner(&mut self, block: &Block, cert: &Certificate) -> Result<Hash> {
        let hd = &block.header;
        let reuse = self
            .checked
            .take()
            .filter(|c| c.block == block.hash() && c.pre_root == self.state.root());
        let receipt = match reuse {
            Some(c) => {
                self.state = c.post;
                c.receipt
            }
            None => self
                .state
                .apply_block(&self.cfg, block)
                .context("applying")?,
        };
        self.state
            .record_next_committee(&self.cfg, &self.candidates, block)
            .context("recording the next committee")?;
        let next = hd.number.saturating_add(1);
        if next.is_multiple_of(self.cfg.term_len().max(1)) {
            // The election's writes reach the chain store only with the next block: keep
            // them beside it, so a node killed in between restarts with the same state.
            let term = next / self.cfg.term_len().max(1);
            let elected = self.state.committee(term);
            save_pending_committee(
                &self.node.data_dir,
                hd.number,
                &block.hash(),
                term,
                &elected,
            )?;
            let _ = self.net.send(NetCmd::Elected(elected));
        }
        self.store
            .commit(block, cert, &receipt, &self.state)
            .context("committing to the chain store")?;
        let expired = self.mempool.expirations();
        self.mempool.on_block(block, &self.state, &self.cfg);
        if self.mempool.expirations() > expired {
            tracing::info!(
                "dropped {} transactions that waited {} blocks behind a nonce gap",
                self.mempool.expirations() - expired,
                self.mempool.config().stranded_blocks
            );
        }
        self.sizer.finalized(
            hd.number,
            hd.proposer == self.addr && hd.kind != BlockKind::Impeach,
            Instant::now(),
        );
        let now = now_ms();
        let latency = now.saturating_sub(hd.timestamp_ms) as f64 / 1000.0;
        if self.stats.latencies.len() < 100_000 {
            self.stats.latencies.push(latency);
        }
        let signed = block
            .txs
            .iter()
            .filter(|t| matches!(t, Tx::Signed(_)))
            .count();
        self.stats.committed_txs += signed as u64;
        if hd.kind == BlockKind::Impeach {
            self.stats.impeachments += 1;
            tracing::warn!(
                "impeach block {} (proposer {} failed)",
                hd.number,
                hd.proposer
            );
        }
        for t in &block.txs {
            let h = t.hash();
            self.tx_index.insert(h, hd.number);
            self.tx_order.push_back(h);
            if self.tx_order.len() > TX_INDEX {
                if let Some(old) = self.tx_order.pop_front() {
                    self.tx_index.remove(&old);
                }
            }
        }
        self.recent.push_back(BlockSummary {
            block: Arc::new(block.clone()),
            signers: cert.sigs.iter().map(|(a, _)| *a).collect(),
        });
        if self.recent.len() > RECENT_BLOCKS {
            self.recent.pop_front();
        }
        if hd.number.is_multiple_of(10) || signed > 0 {
            tracing::info!(
                "final #{} {} txs={} latency={:.2}s mempool={}",
                hd.number,
                &block.hash().to_hex()[..12],
                signed,
                latency,
                self.mempool.len()
            );
        }
        Ok(self.state.root())
    }

    /// Proposers: when a new height starts and it is our turn, schedule the proposal.
    fn after_step(&mut self) {
        if !self.node.has(Role::Proposer) {
            return;
        }
        let h = self.machine.height();
        if h <= self.turn_seen || self.machine.post_state_root().is_none() {
            return;
        }
        self.turn_seen = h;
        if self.machine.proposer_for(h) == Some(self.addr) {
            let at = self
                .machine
                .tip()
                .timestamp_ms
                .saturating_add(self.cfg.period_ms);
            self.propose_at = Some((h, at));
        }
    }

    fn proposer_turn(&mut self, number: u64) {
        let t = Instant::now();
        self.proposer_turn_inner(number);
        if t.elapsed() > Duration::from_millis(100) {
            tracing::info!("proposer turn #{number} took {:?}", t.elapsed());
        }
    }

    fn proposer_turn_inner(&mut self, number: u64) {
        if self.machine.height() != number {
            return;
        }
        let Some(root) = self.machine.post_state_root() else {
            return;
        };
        if self.state.root() != root {
            return;
        }
        if let Some(b) = self.sent_block.clone() {
            if b.header.number == number {
                // Re-send while the height is undecided (lost messages, late peers).
                self.send_proposal(b);
                self.resend_later(number);
                return;
            }
        }
        let term = term_of(&self.cfg, number);
        let cap = self.sizer.cap();
        let mut txs = self.mempool.select(cap, 16 << 20);
        let selected = txs.len();
        self.verify_selected(&mut txs);
        let ok = self.state.select_valid(&self.cfg, term, &txs);
        if ok.len() != txs.len() {
            let keep: std::collections::HashSet<usize> = ok.into_iter().collect();
            let mut i = 0;
            txs.retain(|_| {
                let k = keep.contains(&i);
                i += 1;
                k
            });
        }
        let txs: Vec<Tx> = txs.into_iter().map(Tx::Signed).collect();
        let tip = self.machine.tip().clone();
        let b = propose(&self.cfg, &self.key, &tip, root, txs, now_ms());
        if cap < self.node.mempool.max_block_txs && selected >= cap {
            tracing::info!(
                "proposing #{number} with {} txs: capped at {cap}, what our recent blocks \
                 show can be final in half the round timer",
                b.txs.len()
            );
        } else {
            tracing::debug!("proposing #{number} with {} txs", b.txs.len());
        }
        self.sizer.proposed(number, b.txs.len(), Instant::now());
        self.sent_block = Some(b.clone());
        self.send_proposal(b);
        self.resend_later(number);
    }

    /// Schedules a re-send of our proposal for `number` while that height is undecided. A
    /// lone validator decides it inside `send_proposal`, and [`Self::after_step`] may then
    /// have scheduled our turn at the next height: that must not be overwritten (on a
    /// one-node chain every second block was impeached).
    fn resend_later(&mut self, number: u64) {
        if self.machine.height() == number {
            self.propose_at = Some((number, now_ms() + 500));
        }
    }

    /// Verifies, in one batch, the selected transactions whose signatures were deferred;
    /// drops (and forgets) the bad ones.
    fn verify_selected(&mut self, txs: &mut Vec<SignedTx>) {
        let mut batch = VerifyBatch::new();
        let mut owners: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        let mut bad: std::collections::HashSet<usize> = std::collections::HashSet::new();
        for (i, t) in txs.iter().enumerate() {
            if self.mempool.is_verified(&Tx::Signed(t.clone()).hash()) {
                continue;
            }
            let start = batch.len();
            if State::push_tx_signatures_cached(t, self.cfg.chain_id, &mut batch, &mut self.keys)
                .is_err()
            {
                bad.insert(i);
                continue;
            }
            owners.push((i, start..batch.len()));
        }
        if !batch.is_empty() {
            let report = self.verifier.verify(&batch);
            for (i, r) in owners {
                if !r.clone().all(|k| report.is_valid(k)) {
                    bad.insert(i);
                }
            }
        }
        if bad.is_empty() {
            return;
        }
        tracing::warn!(
            "dropping {} relayed transactions with bad signatures",
            bad.len()
        );
        let mut i = 0;
        txs.retain(|t| {
            let keep = !bad.contains(&i);
            if !keep {
                self.mempool.remove(&Tx::Signed(t.clone()).hash());
            }
            i += 1;
            keep
        });
    }

    fn send_proposal(&mut self, b: Block) {
        let msg = Message::Proposal(b);
        let _ = self
            .net
            .send(NetCmd::ToValidators(Arc::new(msg.to_bytes())));
        if self.machine.is_validator() {
            self.feed(Some(msg.into()));
        }
    }

    /// This node's key (for the API's own transactions, e.g. evidence).
    pub fn key(&self) -> &Keypair {
        &self.key
    }

    /// Peers connected now.
    pub fn peers(&self) -> usize {
        self.net_stats.peers.load(Ordering::Relaxed)
    }
}

/// How long a sent RNode deposit has to become final before it is sent again.
const STAKE_RETRY: Duration = Duration::from_secs(10);
/// Fee of the deposit `[storage] stake` sends (the CLI's default fee).
const STAKE_FEE: chain::Amount = super::client::DEFAULT_FEE_AMOUNT;

/// The highest block number a peer could truthfully claim at `now_ms`, given our tip: a
/// block follows its parent by at least a period, so the chain gains at most one block per
/// period (twice that, plus some, is allowed here for clock skew and impeached rounds).
fn plausible_height(tip_number: u64, tip_ms: u64, now_ms: u64, period_ms: u64) -> u64 {
    let periods = now_ms.saturating_sub(tip_ms) / period_ms.max(1);
    tip_number
        .saturating_add(periods.saturating_mul(2))
        .saturating_add(PLAUSIBLE_SLACK_BLOCKS)
}

/// Blocks a peer may claim past our tip before any time has passed (see
/// [`plausible_height`]).
const PLAUSIBLE_SLACK_BLOCKS: u64 = 16;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn claimed_heights_are_bounded_by_the_time_since_our_tip() {
        // Just after our tip: only the slack.
        assert_eq!(plausible_height(100, 1_000, 1_000, 500), 116);
        // Ten periods later: up to twenty more blocks.
        assert_eq!(plausible_height(100, 1_000, 6_000, 500), 136);
        // A node that was down a day may learn of a day of blocks.
        assert!(plausible_height(100, 0, 86_400_000, 1_000) >= 100 + 86_400);
        // A tip stamped in the future, a zero period, huge values: no overflow.
        assert_eq!(plausible_height(100, 9_000, 1_000, 500), 116);
        assert_eq!(plausible_height(100, 0, 10, 0), 136);
        assert_eq!(plausible_height(u64::MAX, 0, u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn pending_committee_is_restored_only_for_the_block_it_follows() {
        let dir = tempfile::tempdir().unwrap();
        let h = Hash([7; 32]);
        let members = vec![Address([1; 32]), Address([2; 32])];
        assert!(load_pending_committee(dir.path(), 9, &h).unwrap().is_none());
        save_pending_committee(dir.path(), 9, &h, 4, &members).unwrap();
        assert_eq!(
            load_pending_committee(dir.path(), 9, &h).unwrap(),
            Some((4, members.clone()))
        );
        // Another head (the next block was committed, or a different block 9): not applied.
        assert!(load_pending_committee(dir.path(), 10, &h)
            .unwrap()
            .is_none());
        assert!(load_pending_committee(dir.path(), 9, &Hash([8; 32]))
            .unwrap()
            .is_none());
        // An empty committee round-trips; a damaged file is an error, not a guess.
        save_pending_committee(dir.path(), 9, &h, 4, &[]).unwrap();
        assert_eq!(
            load_pending_committee(dir.path(), 9, &h).unwrap(),
            Some((4, Vec::new()))
        );
        std::fs::write(dir.path().join(PENDING_COMMITTEE), "9 zz 4\n").unwrap();
        assert!(load_pending_committee(dir.path(), 9, &h).is_err());
    }
}
