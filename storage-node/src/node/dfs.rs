//! The network data client behind `cpchain put` and `cpchain get`.
//!
//! The client runs its own short-lived libp2p peer (Kademlia in client mode, identify, the
//! shard protocol) bootstrapped from a local node, and talks to the chain through that node's
//! HTTP API.
//!
//! Put: seal locally (the foundation pipeline) while uploading: each block's k + m shards
//! are placed on distinct storage nodes by XOR distance to hash(placement id, block, i)
//! ([`dht::planner::place`]; the placement id is derived from the upload's random salt
//! because the data id, which commits to every shard, exists only after the last block);
//! uploads run in parallel with a bounded number in flight, and a refused or failed upload
//! moves to the next-closest node. Then the data id, root and policy are registered on
//! chain, every holder gets a `Commit` with the manifest, and the DHT record pages
//! ([`dht::record::DataRecord`]) are put into Kademlia.
//!
//! Get: read the record (falling back to provider records), fetch the manifest from a
//! holder, then stream blocks: for each block ask k holders at once, and one more (parity)
//! if the block is still short after twice the recent shard latency (the hedge); use the
//! first k good shards; a failure moves on to the next untried shard. A block whose known
//! holders all failed is asked again of any new holders a second lookup names (repair may
//! have moved its shards since the get began). Every shard is checked against its content id
//! and every block authenticated before a byte is written.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chain::{AccessPolicy, Address, Tx, TxPayload};
use crypto_accel::{ChunkId, DataId, Decode, Encode, Hash, Keypair, ShardHeader};
use dht::planner::{place, Candidate};
use dht::record::{DataRecord, NodeId, SignedPage, Subnet};
use dht::wire::{ShardRequest, ShardResponse};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, kad, noise, tcp, yamux, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::client::ApiClient;
use super::config::now_ms;
use super::dataplane::{DataClient, SessionOffer};
use super::lock;
use super::net::{hardened_kad, identify_behaviour, ip_of, shard_behaviour, subnet_of, FrameCodec};
use super::storage::TtlCache;
use super::view::DataView;
use crate::manifest::Manifest;
use crate::pipeline::{
    open, seal_with_salt, OpenParams, OpenReport, PipelineError, PipelineResult, SealParams, Shard,
    ShardSink, ShardSource,
};

/// Uploads in flight at once.
const PUT_CONCURRENCY: usize = 64;
/// Blocks fetched ahead of the one being written, at most.
const GET_WINDOW: usize = 64;
/// Blocks a get asks for at first. The window then grows by one per finished block (it
/// doubles every round trip) up to [`GET_WINDOW`]: holders answer a connection's requests in
/// order, so asking for all 64 blocks at once queued the first block's shards behind the
/// others' and the first byte came only after most of the window had arrived.
const GET_WINDOW_START: usize = 4;
/// Nodes that keep the manifest besides the shard holders (closest to the data id).
const MANIFEST_HOLDERS: usize = 3;
/// Copies of a record read before a lookup ends (the newest version among them wins): the
/// record lives on the ~20 nodes closest to its key, so waiting for all of them would cost a
/// full query per get for little.
pub(crate) const RECORD_QUORUM: usize = 3;
/// Record pages looked up at once.
pub(crate) const RECORD_WINDOW: usize = 32;
/// Other nodes a failed upload tries before giving up on the shard.
const PUT_RETRIES: usize = 4;

#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // the derive's generated event enum has none
struct ClientBehaviour {
    identify: identify::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    shard: request_response::Behaviour<FrameCodec>,
}

/// A storage node the client found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoragePeer {
    /// libp2p peer id.
    pub peer: PeerId,
    /// Its ed25519 key: its node id in DHT records.
    pub node: NodeId,
    /// Its subnet, when not loopback.
    pub subnet: Option<Subnet>,
}

enum Cmd {
    Request {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, String>>,
    },
    Peers(oneshot::Sender<Vec<StoragePeer>>),
    Routing(oneshot::Sender<usize>),
    PutRecord {
        key: [u8; 32],
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    GetRecord {
        key: [u8; 32],
        reply: RecordsReply,
    },
    GetProviders {
        key: [u8; 32],
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    /// Looks `peer` up in the DHT (its addresses may have changed, or never been known);
    /// answers once the lookup ends, at once when already connected.
    FindPeer {
        peer: PeerId,
        reply: oneshot::Sender<()>,
    },
    /// The IP address of our connection to `peer` (where its data listener is).
    PeerIp {
        peer: PeerId,
        reply: oneshot::Sender<Option<IpAddr>>,
    },
}

/// The way to the network task and to the holders' data connections.
#[derive(Clone)]
struct Link {
    cmds: mpsc::UnboundedSender<Cmd>,
    plane: Arc<DataClient>,
}

impl Link {
    fn send(&self, cmd: Cmd) -> Result<(), mpsc::error::SendError<Cmd>> {
        self.cmds.send(cmd)
    }
}

/// The signed pages a record lookup found, opened (signature and clock checked) once.
type RecordsReply = oneshot::Sender<Vec<SignedPage>>;

/// Who may hold each shard: `[block][index]` → peers to ask, in order.
type Holders = Vec<Vec<Vec<PeerId>>>;

/// Where a data item's shards are, as a get first learns it.
#[derive(Debug)]
enum Located {
    /// From the DHT record: per block, per shard index, the holders.
    Record(Holders),
    /// No record: the data's providers, to be asked which shards they hold once the
    /// manifest says which shards there are.
    Providers(Vec<PeerId>),
}

struct SwarmTask {
    swarm: Swarm<ClientBehaviour>,
    storage: HashMap<PeerId, StoragePeer>,
    requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, String>>>,
    puts: HashMap<kad::QueryId, oneshot::Sender<Result<(), String>>>,
    gets: HashMap<kad::QueryId, (Vec<SignedPage>, RecordsReply)>,
    providers: HashMap<kad::QueryId, (HashSet<PeerId>, oneshot::Sender<Vec<PeerId>>)>,
    finds: HashMap<kad::QueryId, (PeerId, oneshot::Sender<()>)>,
    /// The remote IP of the latest connection to each peer.
    ips: HashMap<PeerId, IpAddr>,
    /// The chain whose signed record pages count towards a lookup's quorum.
    chain_id: u32,
}

impl SwarmTask {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        let mut dial = tokio::time::interval(Duration::from_millis(300));
        loop {
            tokio::select! {
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.command(cmd);
                }
                _ = dial.tick() => self.dial_known(),
                ev = self.swarm.select_next_some() => self.event(ev),
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        let b = self.swarm.behaviour_mut();
        match cmd {
            Cmd::Request { peer, data, reply } => {
                let id = b.shard.send_request(&peer, data);
                self.requests.insert(id, reply);
            }
            Cmd::Peers(reply) => {
                let _ = reply.send(self.storage.values().copied().collect());
            }
            Cmd::Routing(reply) => {
                let n = b.kad.kbuckets().map(|k| k.num_entries()).sum();
                let _ = reply.send(n);
            }
            Cmd::PutRecord { key, value, reply } => {
                let rec = kad::Record::new(kad::RecordKey::new(&key), value);
                match b.kad.put_record(rec, kad::Quorum::One) {
                    Ok(q) => {
                        self.puts.insert(q, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Cmd::GetRecord { key, reply } => {
                let q = b.kad.get_record(kad::RecordKey::new(&key));
                self.gets.insert(q, (Vec::new(), reply));
            }
            Cmd::GetProviders { key, reply } => {
                let q = b.kad.get_providers(kad::RecordKey::new(&key));
                self.providers.insert(q, (HashSet::new(), reply));
            }
            Cmd::PeerIp { peer, reply } => {
                let _ = reply.send(self.ips.get(&peer).copied());
            }
            Cmd::FindPeer { peer, reply } => {
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(());
                } else {
                    let q = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                    self.finds.insert(q, (peer, reply));
                }
            }
        }
    }

    /// Small networks: connect to every peer the routing table knows, so identify tells
    /// which of them store shards. (Bounded: at most 256 connections.)
    fn dial_known(&mut self) {
        let mut known = Vec::new();
        for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
            for e in bucket.iter() {
                known.push(*e.node.key.preimage());
            }
        }
        let connected = self.swarm.connected_peers().count();
        for p in known.into_iter().take(256usize.saturating_sub(connected)) {
            if !self.swarm.is_connected(&p) {
                let _ = self.swarm.dial(p);
            }
        }
    }

    fn event(&mut self, ev: SwarmEvent<ClientBehaviourEvent>) {
        if let SwarmEvent::ConnectionEstablished {
            peer_id, endpoint, ..
        } = &ev
        {
            if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                self.ips.insert(*peer_id, ip);
            }
        }
        let SwarmEvent::Behaviour(ev) = ev else {
            return;
        };
        match ev {
            ClientBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                for a in &info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, a.clone());
                }
                let stores = info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == dht::wire::SHARD_PROTOCOL);
                let key = info.public_key.clone().try_into_ed25519().ok();
                if let (true, Some(key)) = (stores, key) {
                    let subnet = info.listen_addrs.iter().find_map(subnet_of).map(Subnet);
                    self.storage.insert(
                        peer_id,
                        StoragePeer {
                            peer: peer_id,
                            node: NodeId(key.to_bytes()),
                            subnet,
                        },
                    );
                }
            }
            ClientBehaviourEvent::Kad(kad::Event::RoutablePeer { peer, address })
            | ClientBehaviourEvent::Kad(kad::Event::PendingRoutablePeer { peer, address }) => {
                self.swarm.behaviour_mut().kad.add_address(&peer, address);
            }
            ClientBehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            }) => match result {
                kad::QueryResult::PutRecord(r) => {
                    if let Some(reply) = self.puts.remove(&id) {
                        let _ = reply.send(r.map(|_| ()).map_err(|e| e.to_string()));
                    }
                }
                kad::QueryResult::GetRecord(r) => {
                    let mut enough = false;
                    if let Ok(kad::GetRecordOk::FoundRecord(p)) = r {
                        // Only pages signed for this chain count towards the quorum: a few
                        // hostile nodes near the key must not end the lookup with garbage.
                        match SignedPage::open(&p.record.value, self.chain_id, now_ms()) {
                            Ok(page) => {
                                if let Some((v, _)) = self.gets.get_mut(&id) {
                                    v.push(page);
                                    enough = v.len() >= RECORD_QUORUM;
                                }
                            }
                            Err(e) => tracing::debug!("ignoring a record page: {e}"),
                        }
                    }
                    if step.last || enough {
                        if let Some((v, reply)) = self.gets.remove(&id) {
                            let _ = reply.send(v);
                        }
                        if !step.last {
                            if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                                q.finish();
                            }
                        }
                    }
                }
                kad::QueryResult::GetClosestPeers(r) => {
                    let peers = match r {
                        Ok(ok) => ok.peers,
                        Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                    };
                    let wanted = self.finds.get(&id).map(|(p, _)| *p);
                    for info in peers {
                        if Some(info.peer_id) == wanted {
                            for a in info.addrs {
                                self.swarm.behaviour_mut().kad.add_address(&info.peer_id, a);
                            }
                        }
                    }
                    if step.last {
                        if let Some((peer, reply)) = self.finds.remove(&id) {
                            let _ = self.swarm.dial(peer);
                            let _ = reply.send(());
                        }
                    }
                }
                kad::QueryResult::GetProviders(r) => {
                    if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = r {
                        if let Some((v, _)) = self.providers.get_mut(&id) {
                            v.extend(providers);
                        }
                    }
                    if step.last {
                        if let Some((v, reply)) = self.providers.remove(&id) {
                            let _ = reply.send(v.into_iter().collect());
                        }
                    }
                }
                _ => {}
            },
            ClientBehaviourEvent::Shard(request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            }) => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
            ClientBehaviourEvent::Shard(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                if let Some(reply) = self.requests.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            _ => {}
        }
    }
}

/// A connection to a cpchain network for data: the client's own peer plus a node's API.
pub struct Dfs {
    rt: tokio::runtime::Runtime,
    cmds: Link,
    key: Keypair,
    chain_id: u32,
    api: ApiClient,
    /// Whether a key may publish record pages of a data item, as the chain said lately.
    publishers: TtlCache<(DataId, NodeId)>,
    /// Whether a storage node is an RNode, as the chain said lately.
    rnodes: TtlCache<NodeId>,
    /// Test hook (see [`Dfs::start_gets_blind`]).
    blind: bool,
}

/// How long a client trusts the chain's word on who may publish a data item's record.
const PUBLISHER_TTL: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Dfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dfs")
            .field("api", &self.api.base())
            .finish()
    }
}

/// What a put did.
#[derive(Debug, Clone)]
pub struct PutReport {
    /// The registered data id.
    pub data: DataId,
    /// Plaintext bytes.
    pub bytes: u64,
    /// Blocks.
    pub blocks: usize,
    /// Distinct storage nodes holding shards.
    pub holders: usize,
    /// Uploads that had to move to another node.
    pub retries: u64,
    /// Seconds sealing and uploading.
    pub upload_s: f64,
    /// Seconds registering, committing and publishing the record.
    pub register_s: f64,
}

/// What a get did.
#[derive(Debug, Clone)]
pub struct GetReport {
    /// The pipeline's account (bytes, rebuilt blocks, missing and rejected shards). Its
    /// `shards_missing` counts the [`shards_slow`](Self::shards_slow) too: see
    /// [`GetReport::shards_unreachable`].
    pub open: OpenReport,
    /// Seconds until the first plaintext byte was written.
    pub first_byte_s: f64,
    /// Seconds to read the DHT record (or providers): where the shards are.
    pub locate_s: f64,
    /// Seconds until the manifest was fetched and checked (from the start).
    pub manifest_s: f64,
    /// Seconds in all.
    pub total_s: f64,
    /// Shards not waited for because k others of their block had already come (the hedge
    /// asked a parity shard and it won) while their request was still out and had not
    /// failed: a slow holder, or one whose host is down and whose connection attempt had
    /// not timed out yet (a refused or failed request counts as missing).
    pub shards_slow: u64,
    /// Shards that some holder sent with bytes that did not match their content id
    /// (changed on the way, or rotten on the holder's disk); the holder was then asked once
    /// more with the answer sealed. Counted once per shard however often it came wrong.
    pub shards_wrong: u64,
    /// Of those, the shards a sealed ask brought back intact (changed on the way, then).
    pub shards_wrong_recovered: u64,
    /// Times the data was located again because every known holder of a block failed
    /// (repair may have moved shards since the get began).
    pub relocations: u8,
}

impl GetReport {
    /// Shards the get wanted but no holder gave: missing, refused or unreachable, and not
    /// merely slower than the parity that replaced them.
    pub fn shards_unreachable(&self) -> u64 {
        self.open.shards_missing.saturating_sub(self.shards_slow)
    }
}

/// The libp2p peer id of a node id (the same ed25519 key).
fn peer_of(n: &NodeId) -> Option<PeerId> {
    super::net::peer_id_of(&Address(n.0))
}

fn node_of(p: &StoragePeer) -> Candidate {
    Candidate {
        node: p.node,
        subnet: p.subnet,
    }
}

/// The newest of the record pages `pages` (opened as the lookup found them) that is of
/// `data` and whose publisher `allowed` accepts.
fn newest_page(
    pages: &[SignedPage],
    data: &DataId,
    allowed: &mut dyn FnMut(&NodeId) -> bool,
) -> Option<DataRecord> {
    pages
        .iter()
        .filter(|s| s.page.data == *data && allowed(&s.writer))
        .max_by_key(|s| s.page.version)
        .map(|s| s.page.clone())
}

/// Who may publish record pages of one data item, as the API node's chain says: its owner
/// or one of the RNodes that may coordinate it. Answers are cached for [`PUBLISHER_TTL`].
struct Publishers<'a> {
    api: &'a ApiClient,
    cache: &'a TtlCache<(DataId, NodeId)>,
    data: DataId,
    /// (owner, coordinators), once asked; `None` inside when the API could not say.
    allowed: Option<Option<(NodeId, Vec<NodeId>)>>,
}

impl<'a> Publishers<'a> {
    fn new(api: &'a ApiClient, cache: &'a TtlCache<(DataId, NodeId)>, data: &DataId) -> Self {
        Publishers {
            api,
            cache,
            data: *data,
            allowed: None,
        }
    }

    fn may_publish(&mut self, writer: &NodeId) -> bool {
        if let Some(v) = self.cache.get(&(self.data, *writer)) {
            return v;
        }
        let (api, data) = (self.api, self.data);
        let allowed = self.allowed.get_or_insert_with(|| {
            match api.get_json::<DataView>(&format!("/data/{data}")) {
                Ok(d) => {
                    let node = |hex: &str| Address::from_hex(hex).map(|a| NodeId(a.0));
                    let owner = node(&d.owner)?;
                    let coordinators = d.coordinators.iter().filter_map(|c| node(c)).collect();
                    Some((owner, coordinators))
                }
                Err(e) => {
                    tracing::debug!("asking who may publish the record of {data}: {e}");
                    None
                }
            }
        });
        // Not remembered when the API could not say (it may not have applied the
        // registration yet): the next read asks again.
        let Some((owner, coordinators)) = allowed else {
            return false;
        };
        let v = owner == writer || coordinators.contains(writer);
        self.cache.insert((data, *writer), v);
        v
    }
}

/// Refuses, before anything is sealed or uploaded, an input of `len` bytes whose manifest
/// could not travel in one commit frame ([`dht::wire::MAX_MANIFEST_BYTES`]): each block
/// lists k + m shard ids of 32 bytes.
pub fn check_manifest_fits(len: u64, params: &SealParams) -> Result<()> {
    let blocks = len.div_ceil(u64::from(params.block_size.max(1)));
    let per_block = 4 + 32 * (u64::from(params.k) + u64::from(params.m));
    let least = blocks.saturating_mul(per_block);
    if least > dht::wire::MAX_MANIFEST_BYTES as u64 {
        let most = dht::wire::MAX_MANIFEST_BYTES as u64 / per_block;
        bail!(
            "{len} bytes make {blocks} blocks of {} bytes, and a manifest lists at most about \
             {most} blocks of {}+{} shards: put it in parts, or with larger blocks (--block-size)",
            params.block_size,
            params.k,
            params.m
        );
    }
    Ok(())
}

impl Dfs {
    /// Keeps shard bytes sealed in transit on data connections too (see
    /// [`super::dataplane`]): an eavesdropper on the path then sees neither the ciphertext
    /// nor which shards move, for about a quarter more CPU on a get.
    pub fn keep_shards_sealed(&mut self) {
        self.cmds.plane = Arc::new(DataClient::sealed());
    }

    /// Connects through the node whose API is at `api`: reads its status (chain id, p2p
    /// addresses), starts a client peer, and waits until `min_storage` storage nodes are
    /// known (or `wait` passes).
    pub fn connect(api: &str, key: Keypair, min_storage: usize, wait: Duration) -> Result<Dfs> {
        let api = ApiClient::new(api);
        // Every error of the client names the node's URL or comes from its answer.
        let status = api.status()?;
        if status.listen.is_empty() {
            bail!(
                "the node at {} reports no p2p addresses (is it an older build?)",
                api.base()
            );
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("cpchain-client")
            .build()
            .context("starting the async runtime")?;
        let (tx, rx) = mpsc::unbounded_channel();
        // The client's peer identity is the user's chain key: storage nodes check reads
        // against the key noise authenticated, so no read carries a signature of its own.
        let mut seed = key.seed();
        let kp = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)
            .context("deriving the libp2p identity from the key")?;
        // The swarm spawns its connection tasks on the runtime it is built and dialled in.
        let _runtime = rt.enter();
        let swarm = {
            libp2p::SwarmBuilder::with_existing_identity(kp)
                .with_tokio()
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )
                .context("TCP transport")?
                .with_behaviour(|key| {
                    let peer = key.public().to_peer_id();
                    ClientBehaviour {
                        identify: identify_behaviour(key),
                        kad: hardened_kad(peer, kad::Mode::Client),
                        shard: shard_behaviour(ProtocolSupport::Outbound),
                    }
                })
                .map_err(|e| anyhow!("building behaviours: {e}"))?
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
                .build()
        };
        let mut task = SwarmTask {
            swarm,
            storage: HashMap::new(),
            requests: HashMap::new(),
            puts: HashMap::new(),
            gets: HashMap::new(),
            providers: HashMap::new(),
            finds: HashMap::new(),
            ips: HashMap::new(),
            chain_id: status.chain_id,
        };
        for a in &status.listen {
            let Ok(addr) = a.parse::<Multiaddr>() else {
                continue;
            };
            if addr
                .iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::QuicV1))
            {
                continue;
            }
            if let Some(libp2p::multiaddr::Protocol::P2p(p)) = addr.iter().last() {
                task.swarm.behaviour_mut().kad.add_address(&p, addr.clone());
            }
            let _ = task.swarm.dial(addr);
        }
        let _ = task.swarm.behaviour_mut().kad.bootstrap();
        rt.spawn(task.run(rx));
        drop(_runtime);
        let dfs = Dfs {
            rt,
            cmds: Link {
                cmds: tx,
                plane: Arc::new(DataClient::default()),
            },
            key,
            chain_id: status.chain_id,
            api,
            publishers: TtlCache::new(PUBLISHER_TTL),
            rnodes: TtlCache::new(PUBLISHER_TTL),
            blind: false,
        };
        // Wait for enough storage nodes and a routing table that stopped growing (the
        // Kademlia bootstrap has run), or `wait`.
        let t = Instant::now();
        let (mut last, mut stable) = (0usize, 0u32);
        loop {
            let n = dfs.peers()?.len();
            let r = dfs.routing()?;
            stable = if r == last && r > 0 { stable + 1 } else { 0 };
            last = r;
            if (n >= min_storage && stable >= 3) || t.elapsed() > wait {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(dfs)
    }

    /// Sends the network task the command `make` builds around a reply channel and waits
    /// for the reply.
    fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T> {
        let mut replies = self.ask_all([make])?;
        replies
            .pop()
            .ok_or_else(|| anyhow!("the client's network task stopped"))
    }

    /// Sends every command `makes` builds before waiting for any reply, so they run at
    /// once; the replies in order.
    fn ask_all<T, F>(&self, makes: impl IntoIterator<Item = F>) -> Result<Vec<T>>
    where
        F: FnOnce(oneshot::Sender<T>) -> Cmd,
    {
        let stopped = || anyhow!("the client's network task stopped");
        let mut waiting = Vec::new();
        for make in makes {
            let (tx, rx) = oneshot::channel();
            self.cmds.send(make(tx)).map_err(|_| stopped())?;
            waiting.push(rx);
        }
        waiting
            .into_iter()
            .map(|rx| rx.blocking_recv().map_err(|_| stopped()))
            .collect()
    }

    fn routing(&self) -> Result<usize> {
        self.ask(Cmd::Routing)
    }

    /// The storage nodes found so far.
    pub fn peers(&self) -> Result<Vec<StoragePeer>> {
        let mut v = self.ask(Cmd::Peers)?;
        v.sort_by_key(|p| p.node);
        Ok(v)
    }

    /// The storage nodes a put places `n` shards per block on: RNodes (storage nodes holding
    /// the deposit) when there are at least `n`, since anyone can start a node that accepts
    /// shards and drops them, but not without staking. A network with fewer RNodes (one
    /// whose nodes have not staked yet) still stores data, on every storage node it has.
    fn placement_peers(&self, n: usize) -> Result<Vec<StoragePeer>> {
        let peers = self.peers()?;
        let staked: Vec<StoragePeer> = peers
            .iter()
            .filter(|p| self.is_rnode(&p.node))
            .cloned()
            .collect();
        if staked.len() >= n {
            return Ok(staked);
        }
        tracing::warn!(
            "only {} of {} storage nodes are RNodes, {n} needed: placing on all of them",
            staked.len(),
            peers.len()
        );
        Ok(peers)
    }

    /// Whether `node` holds the RNode deposit, as the API node's chain says (cached).
    fn is_rnode(&self, node: &NodeId) -> bool {
        if let Some(v) = self.rnodes.get(node) {
            return v;
        }
        match self.api.account(&Address(node.0)) {
            Ok(a) => {
                self.rnodes.insert(*node, a.rnode);
                a.rnode
            }
            Err(e) => {
                tracing::debug!("asking whether {node} is an RNode: {e}");
                false
            }
        }
    }

    fn request_blocking(&self, peer: PeerId, req: &ShardRequest) -> Result<ShardResponse> {
        let cmds = self.cmds.clone();
        self.rt.block_on(request(&cmds, peer, req))
    }

    /// Seals `input` and stores it on the network under `policy`; `progress` gets the
    /// plaintext bytes uploaded so far.
    pub fn put<R: Read + Send>(
        &self,
        input: R,
        params: &SealParams,
        policy: AccessPolicy,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<PutReport> {
        let n = usize::from(params.k) + usize::from(params.m);
        if n > dht::record::MAX_SHARDS {
            bail!(
                "{}+{} is {n} shards per block; the network's records name at most {} holders \
                 per block, so use fewer data and parity shards",
                params.k,
                params.m,
                dht::record::MAX_SHARDS
            );
        }
        let peers = self.placement_peers(n)?;
        if peers.len() < n {
            bail!(
                "{} storage nodes reachable, {n} needed to place {}+{} shards on distinct nodes",
                peers.len(),
                params.k,
                params.m
            );
        }
        let mut salt = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
        let placement = DataId::from_bytes(*Hash::domain("cpchain placement v1", &salt).as_bytes());
        let t = Instant::now();
        let mut sink = NetSink {
            rt: self.rt.handle().clone(),
            cmds: self.cmds.clone(),
            placement,
            peers: Arc::new(peers.clone()),
            permits: Arc::new(Semaphore::new(PUT_CONCURRENCY)),
            shared: Arc::new(Mutex::new(PutShared::default())),
        };
        // Until every holder has the commit.
        let keepalive = KeepAlive::start(
            self.rt.handle(),
            self.cmds.clone(),
            Arc::clone(&sink.shared),
            (KEEPALIVE_CHECK, KEEPALIVE_IDLE),
        );
        let manifest = seal_with_salt(input, &self.key, params, salt, &mut sink, progress)?;
        let upload_s = t.elapsed().as_secs_f64();
        let shared = lock(&sink.shared);
        if let Some(e) = shared.errors.first() {
            bail!(
                "uploading failed: {e} ({} shards failed)",
                shared.errors.len()
            );
        }
        let mut map: Vec<Vec<NodeId>> = Vec::with_capacity(manifest.blocks.len());
        for (b, e) in manifest.blocks.iter().enumerate() {
            let mut row = Vec::with_capacity(n);
            for (i, c) in e.shards.iter().enumerate() {
                match shared.placed.get(c) {
                    Some(node) => row.push(*node),
                    None => bail!("shard {i} of block {b} was never stored"),
                }
            }
            map.push(row);
        }
        let retries = shared.retries;
        drop(shared);
        let t2 = Instant::now();
        let data = manifest.data_id();
        let manifest_bytes = manifest.to_bytes();
        // Checked before the chain takes a fee for data no holder could ever commit (an
        // input of known length was checked before sealing: see `check_manifest_fits`).
        if manifest_bytes.len() > dht::wire::MAX_MANIFEST_BYTES {
            bail!(
                "the manifest of {} blocks takes {} bytes, more than the {} a commit carries; \
                 put it in parts, or with larger blocks",
                manifest.blocks.len(),
                manifest_bytes.len(),
                dht::wire::MAX_MANIFEST_BYTES
            );
        }
        self.register(&manifest, policy)?;
        // Manifest holders: the nodes closest to the data id, besides the shard holders.
        let mut by_dist: Vec<&StoragePeer> = peers.iter().collect();
        by_dist.sort_by_key(|p| dht::planner::distance(&p.node.0, data.as_bytes()));
        let keepers: Vec<NodeId> = by_dist
            .iter()
            .take(MANIFEST_HOLDERS)
            .map(|p| p.node)
            .collect();
        let mut targets: HashSet<NodeId> = map.iter().flatten().copied().collect();
        targets.extend(keepers.iter().copied());
        let holders = map.iter().flatten().copied().collect::<HashSet<_>>().len();
        let commits: Vec<(NodeId, PeerId)> = targets
            .iter()
            .filter_map(|n| peer_of(n).map(|p| (*n, p)))
            .collect();
        // Which shards each node stored: after its commit it must hold every one of them.
        let mut placed_on: HashMap<NodeId, Vec<(u64, u8)>> = HashMap::new();
        for (b, row) in map.iter().enumerate() {
            for (i, node) in row.iter().enumerate() {
                let at = (b as u64, i as u8);
                placed_on.entry(*node).or_default().push(at);
            }
        }
        let cmds = self.cmds.clone();
        let results = self.rt.block_on(async {
            let futs = commits.iter().map(|(node, peer)| {
                let req = ShardRequest::Commit {
                    manifest: manifest_bytes.clone(),
                    keep_manifest: keepers.contains(node),
                };
                let stored = placed_on.get(node).map_or(&[][..], Vec::as_slice);
                commit_with_retry(&cmds, *peer, req, data, stored)
            });
            futures::future::join_all(futs).await
        });
        for r in results {
            r?;
        }
        drop(keepalive);
        let pages = DataRecord::pages_from_map(
            data,
            dht::record::next_version(now_ms(), 0),
            manifest.k,
            manifest.m,
            manifest.interval_blocks,
            &map,
            &keepers,
        )
        .context("building the DHT record")?;
        for p in pages {
            let key = DataRecord::key(&p.data, p.page);
            self.put_record(
                key,
                SignedPage::sign(p, &self.key, self.chain_id).to_bytes(),
            )?;
        }
        Ok(PutReport {
            data,
            bytes: manifest.length,
            blocks: manifest.blocks.len(),
            holders,
            retries,
            upload_s,
            register_s: t2.elapsed().as_secs_f64(),
        })
    }

    fn register(&self, m: &Manifest, policy: AccessPolicy) -> Result<()> {
        let from = Address::of(&self.key.public());
        let nonce = self.api.account(&from)?.pending_nonce;
        let payload = TxPayload::RegisterData {
            id: m.data_id(),
            merkle_root: m.root,
            size: m.length,
            k: u16::from(m.k),
            m: u16::from(m.m),
            intervals: m.interval_range(),
            policy,
        };
        let fee = super::client::DEFAULT_FEE_AMOUNT;
        let tx = chain::SignedTx::sign(&self.key, self.chain_id, nonce, fee, payload);
        let hash = self
            .api
            .submit(&Tx::Signed(tx).to_bytes())
            .context("registering the data on chain")?;
        let t = Instant::now();
        loop {
            if let Ok(v) = self
                .api
                .get_json::<super::view::TxView>(&format!("/txs/{}", hash.to_hex()))
            {
                if v.block.is_some() {
                    return Ok(());
                }
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the registration {} was not final within 60 s",
                    hash.to_hex()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn put_record(&self, key: [u8; 32], value: Vec<u8>) -> Result<()> {
        self.ask(|reply| Cmd::PutRecord { key, value, reply })?
            .map_err(|e| anyhow!("publishing the DHT record: {e}"))
    }

    /// The values found under each of `keys`, the lookups in flight at once.
    fn get_records(&self, keys: &[[u8; 32]]) -> Result<Vec<Vec<SignedPage>>> {
        self.ask_all(
            keys.iter()
                .map(|&key| move |reply| Cmd::GetRecord { key, reply }),
        )
    }

    fn get_providers(&self, key: [u8; 32]) -> Result<Vec<PeerId>> {
        self.ask(|reply| Cmd::GetProviders { key, reply })
    }

    /// The newest record pages of `data`, if the DHT has them. Only pages signed for this
    /// chain by the data's owner or by an RNode count: anyone can store a page in the DHT,
    /// and a node that kept a forged one hands it out like any other.
    pub fn record(&self, data: &DataId) -> Result<Option<Vec<DataRecord>>> {
        let mut writers = Publishers::new(&self.api, &self.publishers, data);
        let mut newest = |pages: &[SignedPage]| -> Option<DataRecord> {
            newest_page(pages, data, &mut |w| writers.may_publish(w))
        };
        let first_page = self.get_records(&[DataRecord::key(data, 0)])?;
        let Some(first) = first_page.first().and_then(|v| newest(v)) else {
            return Ok(None);
        };
        let pages = DataRecord::pages(first.total_blocks);
        if u64::from(pages) > crate::manifest::MAX_BLOCKS as u64 / dht::record::BLOCKS_PER_PAGE {
            // More blocks than any manifest may have: a bogus record.
            return Ok(None);
        }
        // The other pages are looked up RECORD_WINDOW at a time, not one round trip each.
        let mut out = vec![first];
        let rest: Vec<u32> = (1..pages).collect();
        for window in rest.chunks(RECORD_WINDOW) {
            let keys: Vec<[u8; 32]> = window.iter().map(|p| DataRecord::key(data, *p)).collect();
            for values in self.get_records(&keys)? {
                match newest(&values) {
                    Some(r) => out.push(r),
                    None => return Ok(None),
                }
            }
        }
        Ok(Some(out))
    }

    /// Where the shards of `data` are: from the DHT record, or else from the providers'
    /// own lists. `holders[b][i]` lists who may hold shard i of block b.
    fn locate(&self, data: &DataId) -> Result<(Vec<PeerId>, Located)> {
        if let Some(pages) = self.record(data)? {
            let mut manifest_peers = Vec::new();
            let mut holders = Vec::new();
            for page in &pages {
                // Each node's peer id once per page (a conversion decompresses the key):
                // rows name nodes by index, thousands of times.
                let peers: Vec<Option<PeerId>> = page.nodes.iter().map(peer_of).collect();
                let peer_at = |i: u8| peers.get(usize::from(i)).copied().flatten();
                manifest_peers.extend(page.manifest_holders.iter().filter_map(|i| peer_at(*i)));
                for row in &page.holders {
                    holders.push(
                        row.iter()
                            .map(|i| peer_at(*i).map(|p| vec![p]).unwrap_or_default())
                            .collect(),
                    );
                }
            }
            // Every holder keeps the manifest too.
            let mut all: Vec<PeerId> = holders.iter().flatten().flatten().copied().collect();
            all.sort();
            all.dedup();
            manifest_peers.extend(all);
            return Ok((manifest_peers, Located::Record(holders)));
        }
        let providers = self.get_providers(DataRecord::key(data, 0))?;
        if providers.is_empty() {
            bail!("data {data} is not in the DHT (no record and no provider)");
        }
        Ok((providers.clone(), Located::Providers(providers)))
    }

    /// Per block, per shard index, the holders of the shards `m` lists.
    fn holders(&self, located: Located, m: &Manifest) -> Holders {
        let providers = match located {
            Located::Record(h) => return h,
            Located::Providers(p) => p,
        };
        // Anyone may announce themselves a provider, and a `Held` list names blocks and
        // indices of its sender's choosing: only those the (authenticated) manifest has are
        // kept, so what this allocates is bounded by the manifest.
        let n = usize::from(m.k) + usize::from(m.m);
        let mut holders: Holders = vec![vec![Vec::new(); n]; m.blocks.len()];
        let data = m.data_id();
        for p in &providers {
            if let Ok(ShardResponse::Held(list)) =
                self.request_blocking(*p, &ShardRequest::Held { data })
            {
                place_held(&mut holders, *p, &list);
            }
        }
        holders
    }

    fn fetch_manifest(&self, data: &DataId, from: &[PeerId]) -> Result<Manifest> {
        let mut why = Vec::new();
        for p in from {
            match self.request_blocking(*p, &ShardRequest::GetManifest { data: *data }) {
                Ok(ShardResponse::Manifest(b)) => match Manifest::from_bytes(&b) {
                    Ok(m) if m.data_id() == *data && m.check().is_ok() => return Ok(m),
                    _ => why.push(format!("{p}: sent a manifest that does not match {data}")),
                },
                Ok(ShardResponse::Refused(r)) => {
                    bail!("refused by storage node {p}: {r}")
                }
                Ok(other) => why.push(format!("{p}: {}", describe(&other))),
                Err(e) => why.push(format!("{p}: {e}")),
            }
        }
        bail!(
            "no storage node sent the manifest of {data}: {}",
            if why.is_empty() {
                "no holder is reachable".to_string()
            } else {
                why.join("; ")
            }
        )
    }

    /// Test hook: gets start knowing no holder, so the blocks asked for before a second
    /// lookup fail with nobody to ask and are asked again of the holders it names: the path
    /// a get takes when repair moved shards after it began, made certain.
    pub fn start_gets_blind(&mut self) {
        self.blind = true;
    }

    /// Fetches, verifies, decrypts and writes `data` (or the byte range `range`) to `out`.
    pub fn get<W: Write + Send>(
        &self,
        data: &DataId,
        out: W,
        range: Option<(u64, u64)>,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<GetReport> {
        let t = Instant::now();
        let (manifest_peers, holders) = self.locate(data)?;
        let locate_s = t.elapsed().as_secs_f64();
        let m = self.fetch_manifest(data, &manifest_peers)?;
        let manifest_s = t.elapsed().as_secs_f64();
        let holders = if self.blind {
            let n = usize::from(m.k) + usize::from(m.m);
            vec![vec![Vec::new(); n]; m.blocks.len()]
        } else {
            self.holders(holders, &m)
        };
        // Used when every known holder of a block failed: repair may have moved shards.
        let relocate = || -> Result<Holders> {
            let (_, located) = self.locate(data)?;
            Ok(self.holders(located, &m))
        };
        let span = range.map(|(a, b)| block_span(&m, a, b));
        let source = NetSource::start(
            self.rt.handle(),
            self.cmds.clone(),
            &m,
            holders,
            span,
            &relocate,
        );
        let first = Arc::new(Mutex::new(None::<f64>));
        let first2 = Arc::clone(&first);
        let writer = FirstByte {
            inner: out,
            start: t,
            first: first2,
        };
        let params = OpenParams {
            range,
            ..Default::default()
        };
        let r = open(&m, &self.key, &source, writer, &params, progress);
        source.stop();
        // Fetches still in flight are no longer waited for; what they find is not counted.
        let (shards_slow, shards_wrong, shards_wrong_recovered, lookups) = {
            let s = lock(&source.state.0);
            (
                s.slow,
                s.wrong.len() as u64,
                s.wrong_recovered.len() as u64,
                s.lookups.clone(),
            )
        };
        let report = r.map_err(|e| match e {
            PipelineError::Unrecoverable {
                block, have, need, ..
            } => anyhow!(
                "unrecoverable: {have} of {need} shards reachable for block {block} \
                 ({} placed, {need} needed){}{}",
                usize::from(m.k) + usize::from(m.m),
                match shards_wrong {
                    0 => String::new(),
                    n => format!("; {n} shards came from their holders with wrong bytes"),
                },
                lookups.describe()
            ),
            e => anyhow::Error::from(e),
        })?;
        let first_byte_s = lock(&first).unwrap_or_else(|| t.elapsed().as_secs_f64());
        Ok(GetReport {
            open: report,
            first_byte_s,
            locate_s,
            manifest_s,
            total_s: t.elapsed().as_secs_f64(),
            shards_slow,
            shards_wrong,
            shards_wrong_recovered,
            relocations: lookups.made,
        })
    }
}

/// Records `peer` as a holder of each (block, index) of its `Held` list that `holders` has
/// a place for; the rest of the list (a provider's word only) is ignored.
fn place_held(holders: &mut Holders, peer: PeerId, list: &[(u64, u8)]) {
    for &(b, i) in list {
        let row = usize::try_from(b).ok().and_then(|b| holders.get_mut(b));
        if let Some(slot) = row.and_then(|r| r.get_mut(usize::from(i))) {
            if !slot.contains(&peer) {
                slot.push(peer);
            }
        }
    }
}

fn block_span(m: &Manifest, a: u64, b: u64) -> (u64, u64) {
    let bs = u64::from(m.block_size.max(1));
    (a / bs, b.saturating_sub(1) / bs + 1)
}

struct FirstByte<W> {
    inner: W,
    start: Instant,
    first: Arc<Mutex<Option<f64>>>,
}

impl<W: Write> Write for FirstByte<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.is_empty() {
            let mut f = lock(&self.first);
            if f.is_none() {
                *f = Some(self.start.elapsed().as_secs_f64());
            }
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn describe(r: &ShardResponse) -> String {
    match r {
        ShardResponse::Refused(s) => format!("refused: {s}"),
        ShardResponse::Failed(s) => format!("failed: {s}"),
        ShardResponse::NotFound => "not held there".into(),
        _ => "unexpected answer".into(),
    }
}

/// Sends one shard request to `peer`: over a data connection when the holder offers one
/// (encoded straight into its frame), else over the libp2p shard protocol.
async fn request(link: &Link, peer: PeerId, req: &ShardRequest) -> Result<ShardResponse> {
    ask(link, peer, req, false).await
}

/// [`request`] with the answer sealed whole on a data connection (see
/// [`super::dataplane::REQUEST_SEALED`]); libp2p answers are always sealed by noise.
async fn request_sealed(link: &Link, peer: PeerId, req: &ShardRequest) -> Result<ShardResponse> {
    ask(link, peer, req, true).await
}

/// Asks `peer` over a data connection (sealed whole if `sealed`, else as the client's
/// connections do), or over libp2p when the holder offers none.
async fn ask(link: &Link, peer: PeerId, req: &ShardRequest, sealed: bool) -> Result<ShardResponse> {
    match link.plane.conn(peer, || open_session(link, peer)).await {
        Some(conn) => {
            let conn = if sealed { conn.sealed() } else { conn };
            conn.request(req).await.map_err(|e| anyhow!("{peer}: {e}"))
        }
        None => ask_over_libp2p(link, peer, req).await,
    }
}

async fn ask_over_libp2p(link: &Link, peer: PeerId, req: &ShardRequest) -> Result<ShardResponse> {
    let bytes = over_libp2p(link, peer, req.to_bytes()).await?;
    ShardResponse::from_vec(bytes).map_err(|e| anyhow!("{peer} answered garbage: {e}"))
}

/// Uploads `shard` to `peer`: over a data connection, unsealed after its announcement (see
/// [`super::dataplane`]), else as a `Put` over libp2p.
async fn put_shard(
    link: &Link,
    peer: PeerId,
    id: &ChunkId,
    shard: &Arc<Vec<u8>>,
) -> Result<ShardResponse> {
    match link.plane.conn(peer, || open_session(link, peer)).await {
        Some(conn) => conn
            .put(id, Arc::clone(shard))
            .await
            .map_err(|e| anyhow!("{peer}: {e}")),
        None => {
            let req = ShardRequest::Put {
                bytes: shard.to_vec(),
            };
            ask_over_libp2p(link, peer, &req).await
        }
    }
}

async fn over_libp2p(link: &Link, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>> {
    let (tx, rx) = oneshot::channel();
    link.send(Cmd::Request {
        peer,
        data,
        reply: tx,
    })
    .map_err(|_| anyhow!("the client's network task stopped"))?;
    rx.await
        .map_err(|_| anyhow!("the client's network task stopped"))?
        .map_err(|e| anyhow!("{peer}: {e}"))
}

/// Asks `peer` over libp2p for a data session (see [`super::dataplane`]).
async fn open_session(link: &Link, peer: PeerId) -> Result<SessionOffer, String> {
    let key = DataClient::session_key()?;
    let req = ShardRequest::OpenSession { key }.to_bytes();
    let bytes = over_libp2p(link, peer, req)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let (port, token) = match ShardResponse::from_bytes(&bytes) {
        Ok(ShardResponse::Session { port, token }) => (port, token),
        Ok(other) => return Err(describe(&other)),
        Err(e) => return Err(format!("a garbled session answer: {e}")),
    };
    let (tx, rx) = oneshot::channel();
    link.send(Cmd::PeerIp { peer, reply: tx })
        .map_err(|_| "the client's network task stopped".to_string())?;
    let ip = rx
        .await
        .ok()
        .flatten()
        .ok_or_else(|| format!("no address known for {peer}"))?;
    Ok(SessionOffer {
        addr: SocketAddr::new(ip, port),
        key,
        token,
    })
}

/// Commits the manifest of `data` on `peer`, which stored the shards `stored` (block,
/// index): after the commit it must hold every one of them. One it lost (a restart before
/// the commit, an uncommitted shard expired: see [`super::storage::PENDING_TTL_MS`]) fails
/// the put, rather than a record naming a holder that has nothing.
async fn commit_with_retry(
    cmds: &Link,
    peer: PeerId,
    req: ShardRequest,
    data: DataId,
    stored: &[(u64, u8)],
) -> Result<()> {
    // A node may be a block behind the registration: retry for a while.
    let t = Instant::now();
    loop {
        match request(cmds, peer, &req).await {
            Ok(ShardResponse::Committed { .. }) if stored.is_empty() => return Ok(()),
            Ok(ShardResponse::Committed { .. }) => {
                return check_held(cmds, peer, data, stored).await;
            }
            Ok(ShardResponse::Refused(r)) if r.contains("not registered") => {}
            Ok(other) => bail!("committing on {peer}: {}", describe(&other)),
            Err(e) => bail!("committing on {peer}: {e}"),
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("committing on {peer}: the node did not see the registration within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asks `peer` which shards of `data` it holds; every one of `stored` must be among them.
async fn check_held(cmds: &Link, peer: PeerId, data: DataId, stored: &[(u64, u8)]) -> Result<()> {
    let held = match request(cmds, peer, &ShardRequest::Held { data }).await {
        Ok(ShardResponse::Held(v)) => v.into_iter().collect::<HashSet<(u64, u8)>>(),
        Ok(other) => bail!("asking {peer} what it holds: {}", describe(&other)),
        Err(e) => bail!("asking {peer} what it holds: {e}"),
    };
    let lost: Vec<&(u64, u8)> = stored.iter().filter(|s| !held.contains(s)).collect();
    match lost.first() {
        None => Ok(()),
        Some((b, i)) => bail!(
            "{peer} committed but holds only {} of the {} shards stored there (shard {i} of \
             block {b} is missing: the node restarted, the upload sent it nothing new for \
             {} min or took over {} min, or the node does not keep what it acknowledges)",
            stored.len() - lost.len(),
            stored.len(),
            super::storage::PENDING_TTL_MS / 60_000,
            super::storage::PENDING_MAX_MS / 60_000
        ),
    }
}

#[derive(Default)]
struct PutShared {
    placed: HashMap<ChunkId, NodeId>,
    errors: Vec<String>,
    retries: u64,
    /// Per node that stored a shard of the upload, when it last stored one (or last heard
    /// that the upload goes on).
    last_sent: HashMap<PeerId, Instant>,
}

/// A node that stored shards of an upload and had nothing new for this long is told that
/// the upload goes on (`KeepPending`), well within [`super::storage::PENDING_TTL_MS`].
const KEEPALIVE_IDLE: Duration = Duration::from_secs(4 * 60);
/// How often the upload looks for such nodes.
const KEEPALIVE_CHECK: Duration = Duration::from_secs(30);

/// Keeps an upload's pending shards alive on the nodes it placed them on while it goes on
/// (see [`KEEPALIVE_IDLE`]); stops when dropped.
struct KeepAlive(tokio::task::JoinHandle<()>);

impl KeepAlive {
    /// Every `check`, tells the nodes idle for `idle` (in production [`KEEPALIVE_CHECK`]
    /// and [`KEEPALIVE_IDLE`]).
    fn start(
        rt: &tokio::runtime::Handle,
        cmds: Link,
        shared: Arc<Mutex<PutShared>>,
        (check, idle): (Duration, Duration),
    ) -> Self {
        KeepAlive(rt.spawn(async move {
            loop {
                tokio::time::sleep(check).await;
                let idle: Vec<PeerId> = lock(&shared)
                    .last_sent
                    .iter()
                    .filter(|(_, t)| t.elapsed() >= idle)
                    .map(|(p, _)| *p)
                    .collect();
                let asks = idle.iter().map(|p| {
                    let cmds = &cmds;
                    async move { (*p, request(cmds, *p, &ShardRequest::KeepPending).await) }
                });
                for (p, r) in futures::future::join_all(asks).await {
                    match r {
                        Ok(ShardResponse::Stored) => {
                            lock(&shared).last_sent.insert(p, Instant::now());
                        }
                        Ok(other) => {
                            tracing::debug!("the upload goes on, told {p}: {}", describe(&other))
                        }
                        Err(e) => tracing::debug!("the upload goes on, told {p}: {e}"),
                    }
                }
            }
        }))
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct NetSink {
    rt: tokio::runtime::Handle,
    cmds: Link,
    placement: DataId,
    peers: Arc<Vec<StoragePeer>>,
    permits: Arc<Semaphore>,
    shared: Arc<Mutex<PutShared>>,
}

impl ShardSink for NetSink {
    fn put(&mut self, shards: &mut Vec<Shard>) -> PipelineResult<()> {
        let mut blocks: HashMap<u64, Vec<(u8, ChunkId, Vec<u8>)>> = HashMap::new();
        for (id, bytes) in shards.drain(..) {
            let (h, _) = ShardHeader::parse(&bytes)?;
            blocks
                .entry(h.block)
                .or_default()
                .push((h.index, id, bytes));
        }
        let candidates: Vec<Candidate> = self.peers.iter().map(node_of).collect();
        for (block, items) in blocks {
            let indices: Vec<u8> = items.iter().map(|x| x.0).collect();
            let targets = place(&self.placement, block, &indices, &candidates, &[])
                .map_err(|e| PipelineError::BadParams(format!("placing block {block}: {e}")))?;
            let taken: Arc<Mutex<Vec<NodeId>>> = Arc::new(Mutex::new(targets.clone()));
            for ((index, id, bytes), target) in items.into_iter().zip(targets) {
                let permit = self
                    .rt
                    .block_on(Arc::clone(&self.permits).acquire_owned())
                    .map_err(|_| PipelineError::BadParams("upload queue closed".into()))?;
                let (cmds, shared, peers, taken) = (
                    self.cmds.clone(),
                    Arc::clone(&self.shared),
                    Arc::clone(&self.peers),
                    Arc::clone(&taken),
                );
                let placement = self.placement;
                self.rt.spawn(async move {
                    let _permit = permit;
                    let shard = Arc::new(bytes);
                    let mut target = target;
                    let mut tried = vec![target];
                    for attempt in 0..=PUT_RETRIES {
                        let peer = peers.iter().find(|p| p.node == target).map(|p| p.peer);
                        let outcome = match peer {
                            Some(p) => put_shard(&cmds, p, &id, &shard).await,
                            None => Err(anyhow!("unknown node")),
                        };
                        match outcome {
                            Ok(ShardResponse::Stored) => {
                                let mut sh = lock(&shared);
                                sh.placed.insert(id, target);
                                if let Some(p) = peer {
                                    sh.last_sent.insert(p, Instant::now());
                                }
                                return;
                            }
                            Ok(other) => tracing::debug!("put on {target:?}: {}", describe(&other)),
                            Err(e) => tracing::debug!("put on {target:?}: {e}"),
                        }
                        if attempt == PUT_RETRIES {
                            break;
                        }
                        // Move to the next-closest node that holds nothing of this block.
                        let cands: Vec<Candidate> = peers
                            .iter()
                            .filter(|p| !tried.contains(&p.node))
                            .map(node_of)
                            .collect();
                        let busy: Vec<NodeId> = lock(&taken).clone();
                        match place(&placement, block, &[index], &cands, &busy) {
                            Ok(v) if !v.is_empty() => {
                                target = v[0];
                                tried.push(target);
                                lock(&taken).push(target);
                                lock(&shared).retries += 1;
                            }
                            _ => break,
                        }
                    }
                    lock(&shared)
                        .errors
                        .push(format!("shard {index} of block {block}: no node stored it"));
                });
            }
        }
        if let Some(e) = lock(&self.shared).errors.first() {
            return Err(PipelineError::BadParams(format!("upload failed: {e}")));
        }
        Ok(())
    }

    fn flush(&mut self) -> PipelineResult<()> {
        let all = self
            .rt
            .block_on(Arc::clone(&self.permits).acquire_many_owned(PUT_CONCURRENCY as u32))
            .map_err(|_| PipelineError::BadParams("upload queue closed".into()))?;
        drop(all);
        if let Some(e) = lock(&self.shared).errors.first() {
            return Err(PipelineError::BadParams(format!("upload failed: {e}")));
        }
        Ok(())
    }
}

enum Slot {
    Pending,
    Ready(Vec<u8>),
    /// Every holder asked failed. The block may still be asked again if the data is
    /// located again and the shard has holders not asked yet.
    Failed,
    /// Handed to the pipeline, or dropped once its block was complete.
    Taken,
}

#[derive(Default)]
struct BlockState {
    /// Per shard index: arrived and verified.
    ready: Vec<bool>,
    /// Shards handed to the pipeline.
    taken: usize,
    /// Requests in flight.
    outstanding: usize,
    /// Indices not asked yet (next to ask last).
    untried: Vec<u8>,
    /// Indices whose holders could not be reached (not "not held", not refused): asked
    /// again after [`retry_delay`] and a DHT lookup of the holders, if the block still
    /// lacks shards once every other index was tried.
    deferred: Vec<u8>,
    /// Per shard index: times it was deferred.
    attempts: Vec<u8>,
    /// (shard index, holder) pairs asked so far.
    asked: HashSet<(u8, PeerId)>,
    /// The [`SourceState::located`] generation of holders this block was last asked with.
    located: u32,
    /// Nothing more will arrive.
    done: bool,
}

/// What the fetcher does after a shard request ended.
#[derive(Debug, PartialEq)]
enum After {
    Nothing,
    /// Ask the next untried index (the request failed).
    Next,
    /// The block is short and only unreachable holders are left: ask these indices again
    /// after the pause.
    Retry(Duration, Vec<u8>),
}

impl BlockState {
    /// Shards of the block that arrived and verified.
    fn have(&self) -> usize {
        self.ready.iter().filter(|r| **r).count()
    }

    /// Books the end of a request for shard `index`: `ok` when it arrived and verified,
    /// `unreachable` when no holder answered at all. Returns whether the index was deferred
    /// for a retry, and what to do next. While a retry waits it counts as outstanding, so
    /// nobody declares the block done; [`BlockState::retry_due`] ends the wait.
    fn finish(&mut self, index: u8, ok: bool, unreachable: bool, k: usize) -> (bool, After) {
        self.outstanding = self.outstanding.saturating_sub(1);
        let i = usize::from(index);
        let mut deferred = false;
        if ok {
            if let Some(r) = self.ready.get_mut(i) {
                *r = true;
            }
        } else if unreachable && self.attempts.get(i).is_some_and(|a| *a < SHARD_RETRIES) {
            self.attempts[i] += 1;
            self.deferred.push(index);
            deferred = true;
        }
        if self.done || self.have() >= k {
            return (deferred, After::Nothing);
        }
        if !ok && !self.untried.is_empty() {
            return (deferred, After::Next);
        }
        if self.untried.is_empty() && self.outstanding == 0 {
            if self.deferred.is_empty() {
                self.done = true;
                return (deferred, After::Nothing);
            }
            let most = self
                .deferred
                .iter()
                .filter_map(|i| self.attempts.get(usize::from(*i)))
                .max()
                .copied()
                .unwrap_or(1);
            self.outstanding += 1;
            return (
                deferred,
                After::Retry(retry_delay(most), std::mem::take(&mut self.deferred)),
            );
        }
        (deferred, After::Nothing)
    }

    /// A retry's pause is over: `indices` become askable again.
    fn retry_due(&mut self, indices: &[u8]) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.untried.extend(indices.iter().rev());
    }

    /// The block failed short and the data was located again, giving `rows` (per shard
    /// index, its holders now): reopens the block for every missing shard that has a holder
    /// not asked yet, and returns those indices (each to be asked once, lowest first). An
    /// empty answer leaves the block failed.
    fn reopen(&mut self, rows: &[Vec<PeerId>]) -> Vec<u8> {
        let fresh: Vec<u8> = (0..self.ready.len())
            .filter(|&i| !self.ready[i])
            .filter_map(|i| u8::try_from(i).ok())
            .filter(|&i| {
                rows.get(usize::from(i))
                    .is_some_and(|row| row.iter().any(|p| !self.asked.contains(&(i, *p))))
            })
            .collect();
        if fresh.is_empty() || self.outstanding > 0 {
            return Vec::new();
        }
        self.done = false;
        self.deferred.clear();
        self.untried = fresh.iter().rev().copied().collect();
        for &i in &fresh {
            if let Some(a) = self.attempts.get_mut(usize::from(i)) {
                *a = 0;
            }
        }
        fresh
    }
}

/// The lookups a get made after its first (see [`RELOCATIONS`]).
#[derive(Debug, Default, Clone)]
struct Lookups {
    made: u8,
    /// Those that named a holder not known before.
    found: u8,
    /// Those that failed, and the last one's error.
    failed: u8,
    last_error: Option<String>,
}

impl Lookups {
    /// For an error message: what the lookups did, or nothing if none was made.
    fn describe(&self) -> String {
        if self.made == 0 {
            return String::new();
        }
        let mut out = format!(
            "; {} more lookups of the data ({} named new holders",
            self.made, self.found
        );
        if let Some(e) = &self.last_error {
            out += &format!(", {} failed, the last with: {e}", self.failed);
        }
        out + ")"
    }
}

/// Clears [`SourceState::relocating`] when dropped, and wakes whoever waits for it.
struct Relocating<'a>(&'a (Mutex<SourceState>, Condvar));

impl Drop for Relocating<'_> {
    fn drop(&mut self) {
        let (m, cv) = self.0;
        let mut s = lock(m);
        s.relocating = false;
        s.relocated_at = Some(Instant::now());
        cv.notify_all();
    }
}

/// `old` with the holders `new` names added in front of each cell's (the newest word
/// first), shaped `blocks` × `n` whatever shape `new` has; `None` when `new` adds nobody.
/// Nothing known is dropped: a lookup may find an older record version, or fall back to
/// providers that know less than the record did.
fn merge_holders(old: &Holders, new: &Holders, blocks: usize, n: usize) -> Option<Holders> {
    let cell = |h: &Holders, b: usize, i: usize| -> Vec<PeerId> {
        h.get(b).and_then(|r| r.get(i)).cloned().unwrap_or_default()
    };
    let mut added = false;
    let merged = (0..blocks)
        .map(|b| {
            (0..n)
                .map(|i| {
                    let was = cell(old, b, i);
                    let mut now: Vec<PeerId> = Vec::with_capacity(was.len() + 1);
                    for p in cell(new, b, i) {
                        if !now.contains(&p) {
                            added |= !was.contains(&p);
                            now.push(p);
                        }
                    }
                    for p in was {
                        if !now.contains(&p) {
                            now.push(p);
                        }
                    }
                    now
                })
                .collect()
        })
        .collect();
    added.then_some(merged)
}

/// Times a get may read the record (or providers) again to find holders of a block whose
/// known holders all failed: the coordinator may have moved shards, by repair, since the get
/// began, and a record written moments ago may reach a reader only on a later lookup.
const RELOCATIONS: u8 = 3;

/// The least time between two such lookups.
const RELOCATE_GAP: Duration = Duration::from_secs(1);

/// How many times a shard whose holder is unreachable is asked again. A holder that just
/// restarted, or whose address the client has not learnt yet, answers on the next try.
const SHARD_RETRIES: u8 = 3;

/// The longest a retry waits for the DHT lookups of unreachable holders.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);

/// The wait before retry `n` (1-based) of unreachable holders: 0.25 s, 0.5 s, 1 s.
fn retry_delay(n: u8) -> Duration {
    Duration::from_millis(250 << n.saturating_sub(1).min(4))
}

#[derive(Default)]
struct SourceState {
    slots: HashMap<ChunkId, Slot>,
    blocks: HashMap<u64, BlockState>,
    stopped: bool,
    /// Moving average of how long a shard request takes (ms), for the hedge's delay.
    latency_ms: f64,
    /// Shards a block needs.
    k: usize,
    /// Holders already looked up in the DHT during this get (one lookup each).
    looked_up: HashSet<PeerId>,
    /// Blocks the fetcher may have in flight now (grows to [`GET_WINDOW`]).
    window: usize,
    /// Shards passed over because k others of their block came first (see
    /// [`GetReport::shards_slow`]).
    slow: u64,
    /// Shards some holder sent with wrong bytes (see [`GetReport::shards_wrong`]).
    wrong: HashSet<ChunkId>,
    /// Of those, the ones a sealed ask then brought back intact.
    wrong_recovered: HashSet<ChunkId>,
    /// Per block, per shard index, who may hold the shard, as last located.
    holders: Arc<Holders>,
    /// Generation of `holders`: times a new lookup changed them.
    located: u32,
    /// Lookups made after the first, and when the last one ended.
    lookups: Lookups,
    relocated_at: Option<Instant>,
    /// A lookup is running (on some thread waiting in `fetch`).
    relocating: bool,
}

/// The hedge: when a block still lacks shards this long after its k requests went out, one
/// more (parity) is asked. Twice the recent shard latency, at least [`HEDGE_MIN`]: a hedge
/// that always fires at once costs a tenth more transfers and a decode per block.
fn hedge_delay(latency_ms: f64) -> Duration {
    Duration::from_secs_f64((2.0 * latency_ms / 1000.0).max(HEDGE_MIN.as_secs_f64()))
}

/// The hedge never waits less than this.
const HEDGE_MIN: Duration = Duration::from_millis(20);

/// Shards prefetched from the network for [`open`]: the fetcher keeps a window of blocks in
/// flight, k shards each plus a hedged (k+1)-th when the block is slow (see [`hedge_delay`]);
/// `fetch` waits for a shard, or answers "missing" once its block has k good shards without
/// it or every holder failed; a block whose holders all failed is first asked again of the
/// holders a new lookup names (see [`RELOCATIONS`]).
struct NetSource<'a> {
    state: Arc<(Mutex<SourceState>, Condvar)>,
    where_: HashMap<ChunkId, (u64, u8)>,
    ids: Vec<Arc<[ChunkId]>>,
    window: Arc<Semaphore>,
    rt: tokio::runtime::Handle,
    cmds: Link,
    data: DataId,
    /// Shards per block (k + m).
    n: usize,
    /// Locates the data again: the holders as the DHT has them now.
    relocate: &'a (dyn Fn() -> Result<Holders> + Sync),
}

impl<'a> NetSource<'a> {
    fn start(
        rt: &tokio::runtime::Handle,
        cmds: Link,
        m: &Manifest,
        holders: Holders,
        span: Option<(u64, u64)>,
        relocate: &'a (dyn Fn() -> Result<Holders> + Sync),
    ) -> NetSource<'a> {
        let k = usize::from(m.k);
        let n = k + usize::from(m.m);
        let state = Arc::new((
            Mutex::new(SourceState {
                k,
                window: GET_WINDOW_START,
                holders: Arc::new(holders),
                ..Default::default()
            }),
            Condvar::new(),
        ));
        let mut where_ = HashMap::new();
        for (b, e) in m.blocks.iter().enumerate() {
            for (i, c) in e.shards.iter().enumerate() {
                where_.insert(*c, (b as u64, i as u8));
            }
        }
        let window = Arc::new(Semaphore::new(GET_WINDOW_START));
        let ids: Vec<Arc<[ChunkId]>> = m
            .blocks
            .iter()
            .map(|e| e.shards.as_slice().into())
            .collect();
        let (lo, hi) = span.unwrap_or((0, m.blocks.len() as u64));
        let blocks: Vec<(u64, Arc<[ChunkId]>)> = (lo..hi.min(m.blocks.len() as u64))
            .map(|b| (b, Arc::clone(&ids[b as usize])))
            .collect();
        let data = m.data_id();
        let (st, win, cmds2) = (Arc::clone(&state), Arc::clone(&window), cmds.clone());
        rt.spawn(async move {
            let cmds = cmds2;
            for (b, ids) in blocks {
                let Ok(permit) = Arc::clone(&win).acquire_owned().await else {
                    return;
                };
                permit.forget();
                {
                    let mut s = lock(&st.0);
                    if s.stopped {
                        return;
                    }
                    // Data shards first (no decoding), then parity: k at once, one more if
                    // the block is slow (the hedge).
                    let order: Vec<u8> = (0..n).filter_map(|i| u8::try_from(i).ok()).collect();
                    let located = s.located;
                    s.blocks.insert(
                        b,
                        BlockState {
                            ready: vec![false; n],
                            attempts: vec![0; n],
                            untried: order.into_iter().rev().collect(),
                            located,
                            ..Default::default()
                        },
                    );
                    for c in ids.iter() {
                        s.slots.insert(*c, Slot::Pending);
                    }
                }
                for _ in 0..k {
                    spawn_fetch(&st, &cmds, data, b, &ids);
                }
                let delay = hedge_delay(lock(&st.0).latency_ms);
                let (st, cmds, ids) = (Arc::clone(&st), cmds.clone(), Arc::clone(&ids));
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let slow = lock(&st.0)
                        .blocks
                        .get(&b)
                        .is_some_and(|bs| !bs.done && bs.have() < k);
                    if slow {
                        spawn_fetch(&st, &cmds, data, b, &ids);
                    }
                });
            }
        });
        NetSource {
            state,
            where_,
            ids,
            window,
            rt: rt.clone(),
            cmds,
            data,
            n,
            relocate,
        }
    }

    fn stop(&self) {
        let (m, cv) = &*self.state;
        lock(m).stopped = true;
        self.window.close();
        cv.notify_all();
    }
}

/// Asks for the next untried shard of `block` (must run inside the client's runtime).
fn spawn_fetch(
    st: &Arc<(Mutex<SourceState>, Condvar)>,
    cmds: &Link,
    data: DataId,
    block: u64,
    ids: &Arc<[ChunkId]>,
) {
    let (index, who) = {
        let mut s = lock(&st.0);
        if s.stopped {
            // The get is over; nobody wants more shards.
            return;
        }
        let holders = Arc::clone(&s.holders);
        let Some(bs) = s.blocks.get_mut(&block) else {
            return;
        };
        if bs.done {
            return;
        }
        let index = match bs.untried.pop() {
            Some(i) => i,
            None => {
                if bs.outstanding == 0 && bs.deferred.is_empty() {
                    bs.done = true;
                    st.1.notify_all();
                }
                return;
            }
        };
        bs.outstanding += 1;
        let mut who: Vec<PeerId> = holders
            .get(block as usize)
            .and_then(|r| r.get(usize::from(index)))
            .cloned()
            .unwrap_or_default();
        // Holders not asked yet first (after a new lookup, the ones it added).
        who.sort_by_key(|p| bs.asked.contains(&(index, *p)));
        bs.asked.extend(who.iter().map(|p| (index, *p)));
        (index, who)
    };
    let Some(id) = ids.get(usize::from(index)).copied() else {
        return;
    };
    let (st, cmds, ids) = (Arc::clone(st), cmds.clone(), Arc::clone(ids));
    tokio::spawn(async move {
        let mut got = None;
        // Only transport errors (nobody answered) are worth asking again.
        let mut unreachable = !who.is_empty();
        let asked = Instant::now();
        let req = ShardRequest::Get { id, data, block };
        for peer in &who {
            match request(&cmds, *peer, &req).await {
                Ok(ShardResponse::Shard(b)) if ChunkId::of(&b) == id => {
                    got = Some(b);
                    break;
                }
                // Wrong bytes: altered on the way (shards travel unsealed), or rotten on
                // the holder's disk (unsealed answers skip its checksum). Asked once more
                // sealed whole, which rules out both; wrong again is the holder's answer.
                Ok(ShardResponse::Shard(_)) => {
                    tracing::warn!("{peer} sent wrong bytes for shard {index} of block {block}");
                    // It answered: not a holder to wait for and ask again later.
                    unreachable = false;
                    lock(&st.0).wrong.insert(id);
                    match request_sealed(&cmds, *peer, &req).await {
                        Ok(ShardResponse::Shard(b)) if ChunkId::of(&b) == id => {
                            lock(&st.0).wrong_recovered.insert(id);
                            got = Some(b);
                            break;
                        }
                        Ok(other) => {
                            tracing::warn!("{peer} asked again, sealed: {}", describe(&other))
                        }
                        Err(e) => tracing::debug!("{peer} asked again, sealed: {e}"),
                    }
                }
                Ok(ShardResponse::Refused(r)) => {
                    unreachable = false;
                    tracing::warn!("{peer} refused: {r}")
                }
                Ok(other) => {
                    unreachable = false;
                    tracing::debug!("shard {index} of block {block}: {}", describe(&other))
                }
                Err(e) => tracing::debug!("shard {index} of block {block}: {e}"),
            }
        }
        let after = {
            let mut s = lock(&st.0);
            let ok = got.is_some();
            if ok {
                let ms = asked.elapsed().as_secs_f64() * 1000.0;
                s.latency_ms = if s.latency_ms == 0.0 {
                    ms
                } else {
                    0.9 * s.latency_ms + 0.1 * ms
                };
            }
            let k = s.k;
            let (deferred, after) = match s.blocks.get_mut(&block) {
                Some(bs) => bs.finish(index, ok, unreachable, k),
                None => (false, After::Nothing),
            };
            if let Some(slot) = s.slots.get_mut(&id) {
                *slot = match got {
                    Some(b) => Slot::Ready(b),
                    None if deferred => Slot::Pending,
                    None => Slot::Failed,
                };
            }
            st.1.notify_all();
            after
        };
        if let After::Next = after {
            spawn_fetch(&st, &cmds, data, block, &ids);
        }
        if let After::Retry(delay, indices) = after {
            tokio::time::sleep(delay).await;
            let peers: Vec<PeerId> = {
                let mut s = lock(&st.0);
                let holders = Arc::clone(&s.holders);
                let row = holders.get(block as usize);
                let mut new = Vec::new();
                for i in &indices {
                    for p in row
                        .and_then(|r| r.get(usize::from(*i)))
                        .into_iter()
                        .flatten()
                    {
                        if s.looked_up.insert(*p) {
                            new.push(*p);
                        }
                    }
                }
                new
            };
            let mut lookups = Vec::new();
            for peer in peers {
                let (tx, rx) = oneshot::channel();
                if cmds.send(Cmd::FindPeer { peer, reply: tx }).is_ok() {
                    lookups.push(rx);
                }
            }
            // The lookups run side by side; a dead holder's may not end soon.
            let deadline = tokio::time::Instant::now() + LOOKUP_WAIT;
            for rx in lookups {
                let _ = tokio::time::timeout_at(deadline, rx).await;
            }
            if let Some(bs) = lock(&st.0).blocks.get_mut(&block) {
                bs.retry_due(&indices);
            }
            for _ in &indices {
                spawn_fetch(&st, &cmds, data, block, &ids);
            }
        }
    });
}

impl ShardSource for NetSource<'_> {
    /// Only shards whose hash equals their id become `Ready` (see `spawn_fetch`).
    fn checks_ids(&self) -> bool {
        true
    }

    fn fetch(&self, id: &ChunkId) -> PipelineResult<Option<Vec<u8>>> {
        let Some(&(block, index)) = self.where_.get(id) else {
            return Ok(None);
        };
        let (m, cv) = &*self.state;
        let mut s = lock(m);
        loop {
            if s.stopped {
                return Ok(None);
            }
            match s.slots.get(id) {
                Some(Slot::Ready(_)) => {
                    let Some(Slot::Ready(b)) = s.slots.insert(*id, Slot::Taken) else {
                        return Ok(None);
                    };
                    let k = s.k;
                    let mut finished = false;
                    if let Some(bs) = s.blocks.get_mut(&block) {
                        bs.taken += 1;
                        finished = bs.taken == k;
                    }
                    if finished {
                        self.finish_block(&mut s, block);
                    }
                    return Ok(Some(b));
                }
                Some(Slot::Taken) => return Ok(None),
                // A failed shard is waited for like a pending one: its block may be asked
                // again (see `reopen`), and the pipeline asks for each shard only once.
                Some(slot @ (Slot::Pending | Slot::Failed)) => {
                    let pending = matches!(slot, Slot::Pending);
                    if let Some(bs) = s.blocks.get(&block) {
                        // Still on its way from a holder that has not failed it: passing
                        // it over below makes it slow, not missing.
                        let slow =
                            pending && bs.attempts.get(usize::from(index)).is_some_and(|a| *a == 0);
                        if bs.done {
                            let reopened;
                            (s, reopened) = self.reopen(s, block);
                            if reopened {
                                continue;
                            }
                            return Ok(None);
                        }
                        // The pipeline asks in index order: if enough later shards are
                        // already here to finish the block, do not wait for this one
                        // (the hedge).
                        let later = bs
                            .ready
                            .iter()
                            .skip(usize::from(index) + 1)
                            .filter(|r| **r)
                            .count();
                        if later >= s.k.saturating_sub(bs.taken) {
                            if slow {
                                s.slow += 1;
                            }
                            return Ok(None);
                        }
                    }
                }
                // Not scheduled yet (beyond the window): wait for the fetcher.
                None => {}
            }
            s = cv
                .wait_timeout(s, Duration::from_millis(200))
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

impl NetSource<'_> {
    /// `block` is done: complete, or every holder asked failed. If it is short, asks again
    /// for its missing shards that have holders not asked yet, locating the data again
    /// (at most [`RELOCATIONS`] times per get, one lookup at a time) when the holders known
    /// now have nothing new. Returns the guard and whether the block is open again.
    fn reopen<'g>(
        &'g self,
        mut s: MutexGuard<'g, SourceState>,
        block: u64,
    ) -> (MutexGuard<'g, SourceState>, bool) {
        let (m, cv) = &*self.state;
        let Some(ids) = self.ids.get(block as usize) else {
            return (s, false);
        };
        loop {
            let (k, located, stopped) = (s.k, s.located, s.stopped);
            let Some(bs) = s.blocks.get_mut(&block) else {
                return (s, false);
            };
            if stopped || bs.have() >= k {
                return (s, false);
            }
            if !bs.done {
                return (s, true);
            }
            if bs.outstanding > 0 {
                // Not reached: a block is done only when nothing is in flight.
                return (s, false);
            }
            if bs.located < located {
                bs.located = located;
                let holders = Arc::clone(&s.holders);
                let rows = holders.get(block as usize).map_or(&[][..], Vec::as_slice);
                let Some(bs) = s.blocks.get_mut(&block) else {
                    return (s, false);
                };
                let fresh = bs.reopen(rows);
                if fresh.is_empty() {
                    continue;
                }
                // As many asked at once as the block lacks; a failure asks the next.
                let asks = fresh.len().min(k.saturating_sub(bs.have()));
                for c in fresh.iter().filter_map(|i| ids.get(usize::from(*i))) {
                    if let Some(slot @ Slot::Failed) = s.slots.get_mut(c) {
                        *slot = Slot::Pending;
                    }
                }
                drop(s);
                tracing::info!(
                    "block {block}: asking again for {} shards that new holders may have",
                    fresh.len()
                );
                let _rt = self.rt.enter();
                for _ in 0..asks {
                    spawn_fetch(&self.state, &self.cmds, self.data, block, ids);
                }
                return (lock(m), true);
            }
            if s.relocating {
                s = cv
                    .wait_timeout(s, Duration::from_millis(200))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
                continue;
            }
            if s.lookups.made >= RELOCATIONS {
                return (s, false);
            }
            s.relocating = true;
            s.lookups.made += 1;
            let pause = s
                .relocated_at
                .map_or(Duration::ZERO, |t| RELOCATE_GAP.saturating_sub(t.elapsed()));
            let old = Arc::clone(&s.holders);
            drop(s);
            // Clears `relocating` however the lookup ends, a panic included: the other
            // threads waiting for it would otherwise wait forever.
            let ending = Relocating(&self.state);
            std::thread::sleep(pause);
            let found = (self.relocate)();
            let merged = match found {
                Ok(h) => Ok(merge_holders(&old, &h, self.ids.len(), self.n)),
                Err(e) => Err(e),
            };
            s = lock(m);
            match merged {
                Ok(Some(h)) => {
                    s.holders = Arc::new(h);
                    s.located += 1;
                    s.lookups.found += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    s.lookups.failed += 1;
                    s.lookups.last_error = Some(format!("{e:#}"));
                }
            }
            drop(s);
            drop(ending);
            s = lock(m);
        }
    }

    fn finish_block(&self, s: &mut SourceState, block: u64) {
        if let Some(bs) = s.blocks.get_mut(&block) {
            if !bs.done {
                bs.done = true;
                bs.untried.clear();
            }
        }
        // Drop whatever else of the block arrived; free a window slot, and one more while
        // the window grows.
        if let Some(ids) = self.ids.get(block as usize) {
            for c in ids.iter() {
                if let Some(Slot::Ready(_)) = s.slots.get(c) {
                    s.slots.insert(*c, Slot::Taken);
                }
            }
        }
        let grow = usize::from(s.window < GET_WINDOW);
        s.window += grow;
        self.window.add_permits(1 + grow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_whose_manifest_cannot_be_committed_is_refused_before_sealing() {
        let p = SealParams::default();
        // 1 GiB in 1 MiB blocks: 1024 blocks, a manifest of under half a MiB.
        check_manifest_fits(1 << 30, &p).unwrap();
        // 1 TiB in 4 KiB blocks: 2^28 blocks of 14 ids each, far past 48 MiB.
        let small = SealParams {
            block_size: 4096,
            ..SealParams::default()
        };
        let e = check_manifest_fits(1 << 40, &small)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("268435456 blocks") && e.contains("in parts"),
            "{e}"
        );
        // Right at the limit's edge: the largest count that fits passes, one more block fails.
        let per = 4 + 32 * 14;
        let most = dht::wire::MAX_MANIFEST_BYTES as u64 / per;
        check_manifest_fits(most * 4096, &small).unwrap();
        assert!(check_manifest_fits((most + 1) * 4096, &small).is_err());
    }

    #[test]
    fn readers_take_the_newest_page_of_an_allowed_publisher_only() {
        let data = DataId(Hash([5; 32]));
        let (owner, rnode, stranger) = (
            Keypair::from_seed([1; 32]),
            Keypair::from_seed([2; 32]),
            Keypair::from_seed([3; 32]),
        );
        let chain_id = 9;
        let now = 1_000_000_000;
        let page = |data: DataId, version: u64, holder: u8| {
            let mut p = DataRecord::pages_from_map(
                data,
                version,
                1,
                1,
                1,
                &[vec![NodeId([holder; 32]), NodeId([holder + 1; 32])]],
                &[],
            )
            .unwrap()
            .remove(0);
            p.version = version;
            p
        };
        let signed = |p: DataRecord, k: &Keypair| SignedPage::sign(p, k, chain_id).to_bytes();
        let mut allowed = |w: &NodeId| {
            *w == NodeId(*owner.public().as_bytes()) || *w == NodeId(*rnode.public().as_bytes())
        };
        let genuine = signed(page(data, now - 10, 10), &owner);
        let mut values = vec![
            genuine.clone(),
            // A stranger's page, newer.
            signed(page(data, now, 20), &stranger),
            // The owner's key named, but the signature is the stranger's.
            {
                let mut b = signed(page(data, now + 1, 30), &stranger);
                b[5..37].copy_from_slice(owner.public().as_bytes());
                b
            },
            // Another chain.
            SignedPage::sign(page(data, now + 2, 40), &owner, chain_id + 1).to_bytes(),
            // Another data item.
            signed(page(DataId(Hash([6; 32])), now + 3, 50), &owner),
            // Pinned far ahead of the clock.
            signed(page(data, u64::MAX, 60), &owner),
            // Garbage.
            vec![0xff; 100],
        ];
        // What a lookup keeps: the pages that open for this chain and clock.
        let opened = |values: &[Vec<u8>]| -> Vec<SignedPage> {
            values
                .iter()
                .filter_map(|v| SignedPage::open(v, chain_id, now).ok())
                .collect()
        };
        assert_eq!(
            opened(&values).len(),
            3,
            "the genuine, the stranger's, another data's"
        );
        let got = newest_page(&opened(&values), &data, &mut allowed).unwrap();
        assert_eq!(got.nodes[0], NodeId([10; 32]));
        // An RNode's newer page (a coordinator after a repair) wins.
        values.push(signed(page(data, now - 5, 70), &rnode));
        let got = newest_page(&opened(&values), &data, &mut allowed).unwrap();
        assert_eq!(got.nodes[0], NodeId([70; 32]));
        // Nothing allowed: no record (the reader falls back to providers).
        assert!(newest_page(&opened(&values), &data, &mut |_| false).is_none());
    }

    /// A block of `n` shards needing `k`, with the first `asked` indices in flight.
    fn block(n: u8, asked: u8) -> BlockState {
        BlockState {
            ready: vec![false; usize::from(n)],
            attempts: vec![0; usize::from(n)],
            untried: (asked..n).rev().collect(),
            outstanding: usize::from(asked),
            ..Default::default()
        }
    }

    #[test]
    fn a_held_list_places_only_shards_the_manifest_has() {
        let mut h: Holders = vec![vec![Vec::new(); 14]; 3];
        let p = PeerId::random();
        // In range, twice (placed once), past the last index, past the last block, and the
        // block a hostile provider would pick to make a client allocate or overflow.
        let list = [
            (1, 13),
            (1, 13),
            (1, 14),
            (3, 0),
            (u64::MAX, 0),
            (1 << 40, 2),
        ];
        place_held(&mut h, p, &list);
        assert_eq!(h.len(), 3);
        assert!(h.iter().all(|r| r.len() == 14));
        assert_eq!(h[1][13], vec![p]);
        let placed: usize = h.iter().flatten().map(Vec::len).sum();
        assert_eq!(placed, 1);
    }

    #[test]
    fn an_unreachable_holder_is_not_retried_while_the_block_has_other_shards() {
        let mut b = block(14, 10);
        // Shard 3's holder is down: ask the next untried index instead; 3 waits.
        assert_eq!(b.finish(3, false, true, 10), (true, After::Next));
        assert_eq!(b.deferred, vec![3]);
        for i in (0..10).filter(|i| *i != 3) {
            assert_eq!(b.finish(i, true, false, 10), (false, After::Nothing));
        }
        // The replacement arrives: k shards, no retry, block not failed.
        assert_eq!(b.untried.pop(), Some(10));
        b.outstanding += 1;
        assert_eq!(b.finish(10, true, false, 10), (false, After::Nothing));
        assert!(!b.done);
    }

    #[test]
    fn a_short_block_retries_its_unreachable_holders_with_growing_pauses_then_gives_up() {
        // k = 2 of 3; shard 0 arrives, 1 and 2 have holders that do not answer.
        let mut b = block(3, 3);
        b.untried.clear();
        assert_eq!(b.finish(0, true, false, 2), (false, After::Nothing));
        assert_eq!(b.finish(1, false, true, 2), (true, After::Nothing));
        let (_, after) = b.finish(2, false, true, 2);
        assert_eq!(after, After::Retry(retry_delay(1), vec![1, 2]));
        assert!(!b.done, "a pending retry keeps the block open");
        assert_eq!(b.outstanding, 1, "the pause counts as outstanding");
        for round in 2..=SHARD_RETRIES {
            b.retry_due(&[1, 2]);
            assert_eq!(b.untried, vec![2, 1]);
            b.untried.clear();
            b.outstanding += 2;
            b.finish(1, false, true, 2);
            let (_, after) = b.finish(2, false, true, 2);
            assert_eq!(after, After::Retry(retry_delay(round), vec![1, 2]));
        }
        // Retries spent: the block fails.
        b.retry_due(&[1, 2]);
        b.untried.clear();
        b.outstanding += 2;
        assert_eq!(b.finish(1, false, true, 2), (false, After::Nothing));
        assert_eq!(b.finish(2, false, true, 2), (false, After::Nothing));
        assert!(b.done);
        assert!(retry_delay(1) < retry_delay(2) && retry_delay(2) < retry_delay(3));
    }

    #[test]
    fn a_failed_block_is_reopened_only_for_missing_shards_with_holders_not_asked_yet() {
        let (old, new) = (PeerId::random(), PeerId::random());
        // k = 2 of 4; shard 0 arrives, the holders of 1, 2 and 3 answer "not held".
        let mut b = block(4, 4);
        b.untried.clear();
        b.asked.extend((0..4).map(|i| (i, old)));
        b.finish(0, true, false, 2);
        for i in 1..4 {
            b.finish(i, false, false, 2);
        }
        assert!(b.done && b.have() == 1);
        // The same holders, located again: nothing new to ask.
        let same = vec![vec![old]; 4];
        assert!(b.reopen(&same).is_empty());
        assert!(b.done, "still failed");
        // Repair moved shards 0 and 2 (0 already arrived) and 3 (kept by the old holder
        // too): the missing shards with a holder not asked yet are asked again, lowest
        // first, each with its retries back.
        b.attempts[3] = SHARD_RETRIES;
        let moved = vec![vec![new], vec![old], vec![old, new], vec![new]];
        assert_eq!(b.reopen(&moved), vec![2, 3]);
        assert!(!b.done);
        assert_eq!(b.untried, vec![3, 2]);
        assert_eq!(b.attempts[3], 0);
        // Once asked, they are not new any more.
        b.asked.extend([(2, new), (3, new)]);
        b.untried.clear();
        b.outstanding += 2;
        b.finish(2, false, false, 2);
        b.finish(3, false, false, 2);
        assert!(b.done);
        assert!(b.reopen(&moved).is_empty());
        // A row list shorter than the block (a bogus record) reopens nothing it lacks.
        assert!(b.reopen(&moved[..1]).is_empty());
    }

    #[test]
    fn a_new_lookup_adds_holders_in_front_and_drops_none() {
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let old: Holders = vec![vec![vec![a], vec![b]], vec![vec![a], vec![]]];
        // A poorer answer (block 1 unknown to it) that moved block 0's first shard to c.
        let new: Holders = vec![vec![vec![c], vec![b]]];
        let merged = merge_holders(&old, &new, 2, 2).unwrap();
        assert_eq!(
            merged,
            vec![vec![vec![c, a], vec![b]], vec![vec![a], vec![]]]
        );
        // Nobody new: nothing to do.
        assert!(merge_holders(&merged, &new, 2, 2).is_none());
        assert!(merge_holders(&merged, &Vec::new(), 2, 2).is_none());
        // Shaped by the manifest whatever the answer's shape: a hostile record's extra
        // blocks and indices are not kept.
        let big: Holders = vec![vec![vec![c]; 50]; 10];
        let m = merge_holders(&old, &big, 2, 2).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|r| r.len() == 2));
    }

    /// A network of shard holders for [`NetSource`] tests, answering the client's commands
    /// as its swarm task would: each peer holds the shards listed for it and answers "not
    /// held" for the rest; peers not listed do not answer at all. No data connections.
    fn fake_network(
        rt: &tokio::runtime::Runtime,
        held: HashMap<PeerId, HashMap<ChunkId, Vec<u8>>>,
    ) -> Link {
        slow_fake_network(rt, held, HashMap::new())
    }

    /// [`fake_network`] where each peer in `slow` answers that much later.
    fn slow_fake_network(
        rt: &tokio::runtime::Runtime,
        held: HashMap<PeerId, HashMap<ChunkId, Vec<u8>>>,
        slow: HashMap<PeerId, Duration>,
    ) -> Link {
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
        rt.spawn(async move {
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    Cmd::Request { peer, data, reply } => {
                        let Some(h) = held.get(&peer) else {
                            let _ = reply.send(Err("connection refused".into()));
                            continue;
                        };
                        let answer = match ShardRequest::from_bytes(&data) {
                            Ok(ShardRequest::Get { id, .. }) => match h.get(&id) {
                                Some(b) => ShardResponse::Shard(b.clone()),
                                None => ShardResponse::NotFound,
                            },
                            Ok(ShardRequest::KeepPending) if !h.is_empty() => ShardResponse::Stored,
                            _ => ShardResponse::Refused("not in this test".into()),
                        };
                        match slow.get(&peer) {
                            Some(&d) => {
                                tokio::spawn(async move {
                                    tokio::time::sleep(d).await;
                                    let _ = reply.send(Ok(answer.to_bytes()));
                                });
                            }
                            None => {
                                let _ = reply.send(Ok(answer.to_bytes()));
                            }
                        }
                    }
                    Cmd::FindPeer { reply, .. } => {
                        let _ = reply.send(());
                    }
                    Cmd::PeerIp { reply, .. } => {
                        let _ = reply.send(None);
                    }
                    _ => {}
                }
            }
        });
        Link {
            cmds: tx,
            plane: Arc::new(DataClient::default()),
        }
    }

    /// 16 blocks of 2 + 1 shards, sealed in memory: the data, its manifest, its shards.
    fn sealed_sample(owner: &Keypair) -> (Vec<u8>, Manifest, HashMap<ChunkId, Vec<u8>>) {
        let params = SealParams {
            k: 2,
            m: 1,
            block_size: 1024,
            ..Default::default()
        };
        let data: Vec<u8> = (0..16 * 1024 - 100).map(|i| (i * 7 % 251) as u8).collect();
        let mut mem = crate::pipeline::MemoryShards::default();
        let m = crate::pipeline::seal(&data[..], owner, &params, &mut mem, &|_| {}).unwrap();
        (data, m, mem.shards)
    }

    use super::super::test_runtime as runtime;

    /// Opens `m` as `owner` through a [`NetSource`] over `link` that starts from `holders`:
    /// the pipeline's result, the bytes it wrote, and the source (stopped) for its counts.
    fn open_through<'a>(
        rt: &tokio::runtime::Runtime,
        link: Link,
        (m, owner): (&Manifest, &Keypair),
        holders: Holders,
        relocate: &'a (dyn Fn() -> Result<Holders> + Sync),
    ) -> (PipelineResult<OpenReport>, Vec<u8>, NetSource<'a>) {
        let source = NetSource::start(rt.handle(), link, m, holders, None, relocate);
        let mut out = Vec::new();
        let r = open(m, owner, &source, &mut out, &OpenParams::default(), &|_| {});
        source.stop();
        (r, out, source)
    }

    #[test]
    fn a_get_asks_the_holders_a_new_lookup_names_and_keeps_those_it_knew() {
        let rt = runtime();
        let owner = Keypair::from_seed([7; 32]);
        let (data, m, shards) = sealed_sample(&owner);
        let (gone, moved, stayed) = (PeerId::random(), PeerId::random(), PeerId::random());
        // Repair moved block 0's shards from `gone` (down) to `moved`; the rest stay.
        let block0: HashSet<ChunkId> = m.blocks[0].shards.iter().copied().collect();
        let (b0, rest): (HashMap<_, _>, HashMap<_, _>) =
            shards.into_iter().partition(|(id, _)| block0.contains(id));
        let link = fake_network(&rt, HashMap::from([(moved, b0), (stayed, rest)]));
        let blocks = m.blocks.len();
        let first: Holders = (0..blocks)
            .map(|b| vec![vec![if b == 0 { gone } else { stayed }]; 3])
            .collect();
        // The new lookup knows only where block 0 went (a poorer answer than the first):
        // blocks fetched after it must still find `stayed`.
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let relocate = || -> Result<Holders> {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut h = vec![vec![Vec::new(); 3]; blocks];
            h[0] = vec![vec![moved]; 3];
            Ok(h)
        };
        let (r, out, source) = open_through(&rt, link, (&m, &owner), first, &relocate);
        assert!(r.is_ok(), "{:?}", r.err());
        assert!(out == data, "different bytes");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        let l = lock(&source.state.0).lookups.clone();
        assert_eq!((l.made, l.found, l.failed), (1, 1, 0));
    }

    #[test]
    fn a_slow_holder_passed_over_by_the_hedge_is_slow_not_missing() {
        let rt = runtime();
        let owner = Keypair::from_seed([8; 32]);
        let (data, m, shards) = sealed_sample(&owner);
        let (laggard, quick, gone) = (PeerId::random(), PeerId::random(), PeerId::random());
        // Every block's first data shard sits on a holder that answers only after the get
        // is over; the hedge (after at least 20 ms) asks the parity shard of `quick`, which
        // holds the rest. Block 1's first shard is said to be on a holder that is down.
        let firsts: HashSet<ChunkId> = m.blocks.iter().map(|b| b.shards[0]).collect();
        let (late, rest): (HashMap<_, _>, HashMap<_, _>) =
            shards.into_iter().partition(|(id, _)| firsts.contains(id));
        let link = slow_fake_network(
            &rt,
            HashMap::from([(laggard, late), (quick, rest)]),
            HashMap::from([(laggard, Duration::from_secs(120))]),
        );
        let blocks = m.blocks.len();
        let holders: Holders = (0..blocks)
            .map(|b| {
                vec![
                    vec![if b == 1 { gone } else { laggard }],
                    vec![quick],
                    vec![quick],
                ]
            })
            .collect();
        let relocate = || -> Result<Holders> { Ok(Vec::new()) };
        let (r, out, source) = open_through(&rt, link, (&m, &owner), holders, &relocate);
        let open_report = r.unwrap();
        assert!(out == data, "different bytes");
        let slow = lock(&source.state.0).slow;
        let report = GetReport {
            open: open_report,
            first_byte_s: 0.0,
            locate_s: 0.0,
            manifest_s: 0.0,
            total_s: 0.0,
            shards_slow: slow,
            shards_wrong: 0,
            shards_wrong_recovered: 0,
            relocations: 0,
        };
        let all = blocks as u64;
        assert_eq!(report.open.blocks_reconstructed, all);
        assert_eq!(report.open.shards_missing, all);
        assert_eq!(
            report.shards_slow,
            all - 1,
            "every block but the one whose holder is down"
        );
        assert_eq!(report.shards_unreachable(), 1);
    }

    #[test]
    fn an_upload_tells_the_nodes_it_had_nothing_new_for_that_it_goes_on() {
        let rt = runtime();
        let (busy, quiet, gone) = (PeerId::random(), PeerId::random(), PeerId::random());
        let shard = HashMap::from([(ChunkId::of(b"s"), b"s".to_vec())]);
        let link = fake_network(&rt, HashMap::from([(busy, shard.clone()), (quiet, shard)]));
        let shared = Arc::new(Mutex::new(PutShared::default()));
        // Long beside the checks, so a slow machine cannot make the busy node due too.
        let idle = Duration::from_secs(3);
        let start = Instant::now();
        let long_ago = start.checked_sub(idle).unwrap();
        lock(&shared).last_sent =
            HashMap::from([(busy, start), (quiet, long_ago), (gone, long_ago)]);
        let keep = KeepAlive::start(
            rt.handle(),
            link,
            Arc::clone(&shared),
            (Duration::from_millis(50), idle),
        );
        std::thread::sleep(Duration::from_millis(300));
        let told = |p: &PeerId| lock(&shared).last_sent[p] > start;
        // The quiet node was told (and answered); the busy one had news lately; the one
        // that does not answer stays due.
        assert!(told(&quiet) && !told(&busy) && !told(&gone));
        drop(keep);
        // Due again, but nobody tells it any more.
        lock(&shared).last_sent.insert(quiet, long_ago);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!told(&quiet), "stopped when dropped");
    }

    #[test]
    fn a_get_gives_up_after_its_lookups_and_says_what_they_did() {
        let rt = runtime();
        let owner = Keypair::from_seed([8; 32]);
        let (_, m, shards) = sealed_sample(&owner);
        let (gone, stayed) = (PeerId::random(), PeerId::random());
        let block0: HashSet<ChunkId> = m.blocks[0].shards.iter().copied().collect();
        let rest: HashMap<_, _> = shards
            .into_iter()
            .filter(|(id, _)| !block0.contains(id))
            .collect();
        let link = fake_network(&rt, HashMap::from([(stayed, rest)]));
        let blocks = m.blocks.len();
        let first: Holders = (0..blocks)
            .map(|b| vec![vec![if b == 0 { gone } else { stayed }]; 3])
            .collect();
        // Block 0 is lost: the first lookup fails, the others name the same holders.
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let same = first.clone();
        let relocate = || -> Result<Holders> {
            match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => bail!("no route to the record"),
                _ => Ok(same.clone()),
            }
        };
        let t = Instant::now();
        let (r, _, source) = open_through(&rt, link, (&m, &owner), first, &relocate);
        assert!(
            matches!(r, Err(PipelineError::Unrecoverable { block: 0, .. })),
            "{r:?}"
        );
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::SeqCst),
            usize::from(RELOCATIONS)
        );
        assert!(
            t.elapsed() >= RELOCATE_GAP * u32::from(RELOCATIONS - 1),
            "lookups are spaced"
        );
        let l = lock(&source.state.0).lookups.clone();
        assert_eq!(
            l.describe(),
            "; 3 more lookups of the data (0 named new holders, 1 failed, the last with: \
             no route to the record)"
        );
    }

    #[test]
    fn a_holder_that_answers_no_is_not_retried() {
        let mut b = block(3, 3);
        b.untried.clear();
        b.finish(0, true, false, 2);
        // "Not held" or refused: an answer, so asking again changes nothing.
        assert_eq!(b.finish(1, false, false, 2), (false, After::Nothing));
        assert_eq!(b.finish(2, false, false, 2), (false, After::Nothing));
        assert!(b.done);
        assert!(b.deferred.is_empty());
    }

    #[test]
    fn a_retried_shard_that_arrives_completes_the_block() {
        let mut b = block(3, 3);
        b.untried.clear();
        b.finish(0, true, false, 2);
        b.finish(1, false, false, 2);
        let (_, after) = b.finish(2, false, true, 2);
        assert_eq!(after, After::Retry(retry_delay(1), vec![2]));
        b.retry_due(&[2]);
        assert_eq!(b.untried.pop(), Some(2));
        b.outstanding += 1;
        assert_eq!(b.finish(2, true, false, 2), (false, After::Nothing));
        assert!(
            !b.done,
            "complete, not failed: the pipeline takes the shards"
        );
        assert_eq!(b.ready, vec![true, false, true]);
    }
}
