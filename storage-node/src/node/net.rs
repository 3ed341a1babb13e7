//! The libp2p side of a node: TCP and QUIC transports with noise and yamux, identify, ping,
//! Kademlia for discovery, gossipsub for transactions and VALIDATE'd blocks, and two
//! request-response protocols of our own: `/cpchain/consensus/1` (direct LBFT messages to
//! committee members) and `/cpchain/sync/1` (heads and block ranges for catch-up).
//!
//! The swarm runs on a tokio task; the engine talks to it through [`NetCmd`] and hears from
//! it through [`NetEvent`]. Frames are length-prefixed and bounded before anything is
//! allocated; payloads are decoded by the engine with the canonical codec.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chain::Address;
use dht::record::{DataRecord, NodeId, SignedPage};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{gossipsub, identify, identity, kad, noise, ping, tcp, yamux};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::config::now_ms;
use super::storage::ChainView;

/// Largest consensus frame (a proposal of `MAX_BLOCK_TXS` transactions fits).
pub const MAX_CONSENSUS_FRAME: usize = 64 << 20;
/// Largest sync request frame.
pub const MAX_SYNC_REQUEST: usize = 1 << 10;
/// Largest sync response frame.
pub const MAX_SYNC_RESPONSE: usize = 128 << 20;
/// Largest gossip message.
pub const MAX_GOSSIP: usize = 32 << 20;

/// Gossip topic for transaction batches.
pub const TOPIC_TXS: &str = "cpchain/txs/1";
/// Gossip topic for VALIDATE'd blocks.
pub const TOPIC_BLOCKS: &str = "cpchain/blocks/1";

/// Length-prefixed frames with separate bounds for requests and responses.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_request: usize,
    max_response: usize,
}

impl FrameCodec {
    /// A codec bounding request frames to `max_request` bytes and responses to
    /// `max_response` bytes.
    pub fn new(max_request: usize, max_response: usize) -> Self {
        FrameCodec {
            max_request,
            max_response,
        }
    }
}

async fn read_frame<T>(io: &mut T, max: usize) -> io::Result<Vec<u8>>
where
    T: futures::AsyncRead + Unpin + Send,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    // Grown as the bytes come, not allocated at the length the peer claims: 256 streams
    // that each announce 48 MiB and send nothing more would otherwise hold 12 GiB for the
    // price of 1 KiB sent.
    let mut buf = Vec::with_capacity(len.min(FRAME_PREALLOC));
    (&mut *io).take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

/// Bytes of a frame allocated before any arrive: a shard of a 1 MiB block fits at once;
/// larger frames (manifests, big blocks' shards) grow as they come.
pub const FRAME_PREALLOC: usize = 1 << 20;

async fn write_frame<T>(io: &mut T, data: &[u8], max: usize) -> io::Result<()>
where
    T: futures::AsyncWrite + Unpin + Send,
{
    if data.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds the {max}-byte limit", data.len()),
        ));
    }
    io.write_all(&(data.len() as u32).to_le_bytes()).await?;
    io.write_all(data).await?;
    io.close().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_request).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, self.max_request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, self.max_response).await
    }
}

/// The node's libp2p behaviours.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // the derive's generated event enum has none
pub struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossip: gossipsub::Behaviour,
    consensus: request_response::Behaviour<FrameCodec>,
    sync: request_response::Behaviour<FrameCodec>,
    shard: request_response::Behaviour<FrameCodec>,
}

/// A shard protocol request handed to the storage workers: answer with
/// [`NetCmd::ShardRespond`] and the same `id`.
#[derive(Debug)]
pub struct ShardJob {
    /// Correlation id.
    pub id: u64,
    /// The requesting peer's ed25519 key (noise-authenticated), if its identity is one.
    pub from: Option<crypto_accel::PublicKey>,
    /// The encoded [`dht::wire::ShardRequest`].
    pub data: Vec<u8>,
}

/// What the network tells the engine.
#[derive(Debug)]
pub enum NetEvent {
    /// A direct consensus frame from a peer.
    Consensus {
        /// Sender.
        from: PeerId,
        /// Encoded `chain::Message`.
        data: Vec<u8>,
    },
    /// A gossiped frame.
    Gossip {
        /// Propagation source.
        from: PeerId,
        /// [`TOPIC_TXS`] or [`TOPIC_BLOCKS`].
        topic: &'static str,
        /// Payload.
        data: Vec<u8>,
    },
    /// A peer's sync request; answer with [`NetCmd::SyncRespond`] and the same `id`.
    SyncRequest {
        /// Correlation id.
        id: u64,
        /// Encoded request.
        data: Vec<u8>,
    },
    /// The answer to our sync request.
    SyncResponse {
        /// The peer that answered.
        from: PeerId,
        /// Encoded response.
        data: Vec<u8>,
    },
    /// A peer connected (the engine may ask it for its head).
    Connected(PeerId),
}

/// What the engine asks the network to do.
#[derive(Debug)]
pub enum NetCmd {
    /// Send a consensus frame to every connected committee member (validators and
    /// proposers).
    ToCommittee(Arc<Vec<u8>>),
    /// Send a consensus frame to the connected validators only (proposals).
    ToValidators(Arc<Vec<u8>>),
    /// Publish on a gossip topic.
    Publish {
        /// Topic name.
        topic: &'static str,
        /// Payload.
        data: Vec<u8>,
    },
    /// Send a sync request to `peer`, or to a connected committee peer (round robin).
    SyncRequest {
        /// Target.
        peer: Option<PeerId>,
        /// Encoded request.
        data: Vec<u8>,
    },
    /// Answer a sync request.
    SyncRespond {
        /// The request's id.
        id: u64,
        /// Encoded response.
        data: Vec<u8>,
    },
    /// Answer a shard protocol request.
    ShardRespond {
        /// The request's id.
        id: u64,
        /// Encoded response.
        data: Vec<u8>,
    },
    /// Announce in the DHT that this node holds shards of a data item (a provider record
    /// under the data's record key).
    Provide(crypto_accel::DataId),
    /// Send a shard protocol request to another storage node (audits, repair).
    ShardRequest {
        /// Target.
        peer: PeerId,
        /// Encoded [`dht::wire::ShardRequest`].
        data: Vec<u8>,
        /// The encoded response, or why none came.
        reply: tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>,
    },
    /// Put a DHT record (a [`dht::record::DataRecord`] page) into Kademlia.
    PutRecord {
        /// Record key.
        key: [u8; 32],
        /// The signed page, encoded.
        value: Vec<u8>,
        /// The page's version.
        version: u64,
        /// The owner of the page's data (the page counts for it in the kept bytes).
        owner: Address,
    },
    /// The proposers elected for the current term: their direct consensus frames are not
    /// counted against [`OUTSIDER_FRAMES_PER_S`] (the genesis committee's never are).
    Elected(Vec<Address>),
    /// Look a record page up in Kademlia: each copy found, as stored (a signed page), as
    /// soon as it is found; the channel closes when the lookup ends. Dropping the receiver
    /// ends the lookup at its next copy.
    GetRecord {
        /// Record key.
        key: [u8; 32],
        /// Where the copies go.
        reply: RecordsReply,
    },
}

/// A storage node this node knows of (from identify).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownStorage {
    /// Its ed25519 key (node id).
    pub node: [u8; 32],
    /// Its subnet bucket, `None` on loopback.
    pub subnet: Option<u64>,
    /// Whether a connection is open now.
    pub connected: bool,
    /// When it was last connected (ms since the epoch).
    pub seen_ms: u64,
}

#[derive(Debug, Clone, Copy)]
enum CmdKind {
    Validators,
    Other,
}

/// Counters the API reads.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Connected peers.
    pub peers: AtomicUsize,
    /// Inbound events dropped because the engine's queue was full.
    pub dropped: AtomicUsize,
    /// Listen addresses with `/p2p/<peer id>`.
    pub listen: std::sync::Mutex<Vec<String>>,
    /// Storage nodes seen, by peer id.
    pub storage: std::sync::Mutex<HashMap<PeerId, KnownStorage>>,
}

/// Most peers of one IP subnet (IPv4 /24, IPv6 /48) in one k-bucket: a single operator (or
/// attacker) on one subnet cannot fill a bucket (S/Kademlia). Loopback is exempt, so a
/// devnet on one machine works.
pub const MAX_PEERS_PER_SUBNET_PER_BUCKET: usize = 2;

/// The IP address in a multiaddr, if it has one.
pub fn ip_of(a: &Multiaddr) -> Option<std::net::IpAddr> {
    a.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    })
}

/// The subnet bucket of a multiaddr's IP: `None` for loopback or no IP (exempt from the cap).
pub fn subnet_of(a: &Multiaddr) -> Option<u64> {
    use libp2p::multiaddr::Protocol;
    a.iter().find_map(|p| match p {
        Protocol::Ip4(ip) if !ip.is_loopback() => {
            let o = ip.octets();
            Some(u64::from(u32::from_be_bytes([0, o[0], o[1], o[2]])))
        }
        Protocol::Ip6(ip) if !ip.is_loopback() => {
            let s = ip.segments();
            Some((1u64 << 63) | (u64::from(s[0]) << 32) | (u64::from(s[1]) << 16) | u64::from(s[2]))
        }
        _ => None,
    })
}

/// Kademlia under `/cpchain/kad/1`, hardened: lookups over disjoint paths, records and
/// provider announcements filtered by the node (only well-formed DHT records are kept,
/// newest version wins), routing-table inserts made by the node (subject to the subnet
/// cap), and a store sized for many data items.
pub fn hardened_kad(peer: PeerId, mode: kad::Mode) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut cfg = kad::Config::new(StreamProtocol::new("/cpchain/kad/1"));
    cfg.set_query_timeout(Duration::from_secs(30))
        .disjoint_query_paths(true)
        .set_record_filtering(kad::StoreInserts::FilterBoth)
        .set_kbucket_inserts(kad::BucketInserts::Manual)
        .set_record_ttl(None)
        .set_provider_record_ttl(Some(Duration::from_secs(48 * 3600)));
    let mut k = kad::Behaviour::with_config(peer, record_store(peer), cfg);
    k.set_mode(Some(mode));
    k
}

/// A `[network] bootstrap` entry as a multiaddr.
pub fn bootstrap_addr(b: &str) -> Result<Multiaddr> {
    b.parse()
        .with_context(|| format!("bootstrap address `{b}` is not a multiaddr"))
}

/// Providers kept per key: Kademlia's replication factor (a reader needs only a few).
const MAX_PROVIDERS_PER_KEY: usize = 20;

/// Addresses kept per provider announcement (the provider chooses the list; a storage node
/// needs one or two).
const MAX_PROVIDER_ADDRS: usize = 2;

/// Kad's store of records and provider announcements, sized for many data items. Anyone
/// may announce providers, so the provider map is bounded as a whole: 65,536 keys of at
/// most 20 providers with 2 addresses each stay near 200 MB in the worst case (64
/// providers of 8 addresses each allowed gigabytes).
fn record_store(peer: PeerId) -> kad::store::MemoryStore {
    kad::store::MemoryStore::with_config(
        peer,
        kad::store::MemoryStoreConfig {
            max_records: MAX_RECORDS_KEPT,
            max_value_bytes: 64 << 10,
            max_providers_per_key: MAX_PROVIDERS_PER_KEY,
            max_provided_keys: 1 << 16,
        },
    )
}

/// The shard protocol behaviour (`/cpchain/shard/3`): `Full` on storage nodes, `Outbound`
/// elsewhere (clients, validators auditing nothing).
pub fn shard_behaviour(support: ProtocolSupport) -> request_response::Behaviour<FrameCodec> {
    request_response::Behaviour::with_codec(
        FrameCodec::new(dht::wire::MAX_REQUEST_FRAME, dht::wire::MAX_RESPONSE_FRAME),
        [(StreamProtocol::new(dht::wire::SHARD_PROTOCOL), support)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(60))
            .with_max_concurrent_streams(256),
    )
}

/// Identify under `/cpchain/id/1`: peers learn each other's listen addresses, key and
/// protocols (a storage node is one that serves the shard protocol).
pub fn identify_behaviour(key: &identity::Keypair) -> identify::Behaviour {
    identify::Behaviour::new(identify::Config::new("/cpchain/id/1".into(), key.public()))
}

/// Routing-table admission with a per-bucket subnet cap. A peer counts in one subnet (the
/// first it was admitted with) and leaves when the routing table evicts it, so what this
/// keeps is bounded by the routing table, whatever addresses peers announce.
#[derive(Debug, Default)]
pub struct SubnetGuard {
    members: HashMap<(u32, u64), HashSet<PeerId>>,
    at: HashMap<PeerId, (u32, u64)>,
    /// When each peer was admitted ([`SubnetGuard::reconcile`] leaves young ones alone).
    since: HashMap<PeerId, Instant>,
}

/// How long an admitted peer may stay out of the routing table before its place is freed:
/// a peer offered to a full bucket waits there as pending while the bucket's oldest entry
/// is pinged, and kad says nothing when it is then dropped.
pub const PENDING_GRACE: Duration = Duration::from_secs(60);

impl SubnetGuard {
    /// Whether `peer` at `addr` may enter the bucket it falls in relative to `local`;
    /// records it when it may. A peer takes one place, in the subnet it first came with.
    pub fn admit(&mut self, local: &PeerId, peer: &PeerId, addr: &Multiaddr) -> bool {
        let Some(net) = subnet_of(addr) else {
            return true;
        };
        let d = kad::KBucketKey::from(*local).distance(&kad::KBucketKey::from(*peer));
        let key = (d.ilog2().unwrap_or(0), net);
        if self.at.contains_key(peer) {
            // Its one place is taken; its other addresses (a multi-homed host announces
            // private and public ones) come with it and take no other.
            return true;
        }
        let set = self.members.entry(key).or_default();
        if set.len() >= MAX_PEERS_PER_SUBNET_PER_BUCKET {
            return false;
        }
        set.insert(*peer);
        self.at.insert(*peer, key);
        self.since.insert(*peer, Instant::now());
        true
    }

    /// Frees the places of peers admitted more than [`PENDING_GRACE`] before `now` that are
    /// not in the routing table (`in_table`): pending entries kad dropped without an event.
    pub fn reconcile(&mut self, in_table: &HashSet<PeerId>, now: Instant) {
        let stale: Vec<PeerId> = self
            .since
            .iter()
            .filter(|(p, at)| {
                !in_table.contains(*p) && now.saturating_duration_since(**at) > PENDING_GRACE
            })
            .map(|(p, _)| *p)
            .collect();
        for p in stale {
            self.forget(&p);
        }
    }

    /// Offers `peer` at `addr` to the routing table if [`SubnetGuard::admit`] lets it in,
    /// freeing its place again if the table refuses it (its bucket is full).
    pub fn add_address(
        &mut self,
        kad: &mut kad::Behaviour<kad::store::MemoryStore>,
        local: &PeerId,
        peer: &PeerId,
        addr: Multiaddr,
    ) {
        if self.admit(local, peer, &addr)
            && matches!(kad.add_address(peer, addr), kad::RoutingUpdate::Failed)
        {
            self.forget(peer);
        }
    }

    /// Frees `peer`'s place (the routing table dropped it).
    pub fn forget(&mut self, peer: &PeerId) {
        self.since.remove(peer);
        if let Some(key) = self.at.remove(peer) {
            if let Some(set) = self.members.get_mut(&key) {
                set.remove(peer);
                if set.is_empty() {
                    self.members.remove(&key);
                }
            }
        }
    }

    /// Peers recorded (for tests and metrics).
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether no peer is recorded.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

/// Whether a gossip message is worth relaying: it must decode as what its topic carries
/// (an announcement; a batch of signed transactions). Signatures and state are the engine's
/// to check; this keeps undecodable bytes, up to the 32 MiB frame limit, from crossing the
/// mesh. (Gossipsub would also count a rejection against the sender, but peer scoring is
/// not enabled.)
pub fn gossip_verdict(topic: Option<&str>, data: &[u8]) -> gossipsub::MessageAcceptance {
    use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
    let ok = match topic {
        Some(TOPIC_BLOCKS) => super::engine::decode_all::<super::engine::Announce>(data).is_ok(),
        Some(TOPIC_TXS) => super::engine::decode_tx_batch(data).is_ok(),
        _ => return Ignore,
    };
    if ok {
        Accept
    } else {
        Reject
    }
}

/// Block-range requests served per peer per second (a node catching up keeps one in flight,
/// spread over the validators; 64 a second is 4,096 blocks a second from each). Head
/// requests, cheap to answer, are not counted.
pub const SYNC_REQUESTS_PER_PEER_PER_S: u32 = 64;

/// Per-peer request counting over one-second windows.
#[derive(Debug)]
pub struct RateLimit {
    per_s: u32,
    seen: HashMap<PeerId, (Instant, u32)>,
}

impl RateLimit {
    /// At most `per_s` requests per peer in any one-second window.
    pub fn new(per_s: u32) -> RateLimit {
        RateLimit {
            per_s,
            seen: HashMap::new(),
        }
    }

    /// Counts a request of `peer` at `now`; false when it is over the limit.
    pub fn allow(&mut self, peer: &PeerId, now: Instant) -> bool {
        if self.seen.len() >= 4096 {
            self.seen.retain(|_, (start, _)| {
                now.saturating_duration_since(*start) < Duration::from_secs(1)
            });
        }
        let (start, n) = self.seen.entry(*peer).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *n = 0;
        }
        *n += 1;
        *n <= self.per_s
    }
}

/// Direct consensus frames one peer outside the genesis committee may send per second.
/// Proposers elected later are such peers and send one proposal per block; anyone else has
/// no business sending consensus frames, and each costs the engine a decode and signature
/// checks in the queue it shares with blocks and votes.
pub const OUTSIDER_FRAMES_PER_PEER_PER_S: u32 = 16;
/// Direct consensus frames all peers outside the genesis committee together may send per
/// second: many identities cannot flood the engine either.
pub const OUTSIDER_FRAMES_PER_S: u32 = 64;

/// Counts direct consensus frames from outside the genesis committee.
#[derive(Debug)]
pub struct OutsiderFrames {
    per_peer: RateLimit,
    all: RateLimit,
    everyone: PeerId,
    /// The proposers elected for the current term, whose frames are not counted.
    elected: HashSet<PeerId>,
}

impl OutsiderFrames {
    /// The limits above.
    pub fn new(local: PeerId) -> Self {
        OutsiderFrames {
            per_peer: RateLimit::new(OUTSIDER_FRAMES_PER_PEER_PER_S),
            all: RateLimit::new(OUTSIDER_FRAMES_PER_S),
            everyone: local,
            elected: HashSet::new(),
        }
    }

    /// Counts a frame from `peer` at `now`; false when it is over either limit.
    pub fn allow(&mut self, peer: &PeerId, now: Instant) -> bool {
        self.per_peer.allow(peer, now) && self.all.allow(&self.everyone, now)
    }

    /// The proposers elected for the current term (replacing the last term's).
    pub fn set_elected(&mut self, elected: impl IntoIterator<Item = PeerId>) {
        self.elected = elected.into_iter().collect();
    }

    /// Whether a consensus frame from `peer` at `now` is let through: always from the
    /// genesis `committee` and the current term's elected proposers, within the limits
    /// (and counted) from anyone else.
    pub fn admit(&mut self, committee: &HashSet<PeerId>, peer: &PeerId, now: Instant) -> bool {
        committee.contains(peer) || self.elected.contains(peer) || self.allow(peer, now)
    }
}

/// Addresses of one peer taken from its identify message (it chooses them).
pub const MAX_IDENTIFY_ADDRS: usize = 8;

/// Whether a page may be kept here (see [`make_room_for_news`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    /// Kept: room was made (evicting what [`RecordBytes::make_room`] chose).
    Made,
    /// A page at least as new is kept under its key already.
    Stale,
    /// No room: the bytes kept for its owner, or in all, are at their bound.
    Full,
}

/// Makes room for a page of `version`, `len` bytes, for data of `owner` under `key`, unless
/// a page at least as new is kept there or the kept bytes are at their bound.
fn make_room_for_news(
    store: &mut kad::store::MemoryStore,
    kept: &mut RecordBytes,
    chain_id: u32,
    key: &kad::RecordKey,
    (len, version, owner): (usize, u64, &Address),
) -> Room {
    use kad::store::RecordStore;
    if let Some(old) = store.get(key) {
        // A kept page passed the gate; its clock bound no longer matters.
        if let Ok(o) = SignedPage::open(&old.value, chain_id, u64::MAX) {
            if o.page.version >= version {
                return Room::Stale;
            }
        }
    }
    let Some(evict) = kept.make_room(key, len, owner) else {
        tracing::debug!("not keeping a DHT record: the bytes kept for it are at their bound");
        return Room::Full;
    };
    if !evict.is_empty() {
        tracing::debug!(
            "evicting {} DHT record pages of the owner with the most kept here",
            evict.len()
        );
    }
    for k in &evict {
        store.remove(k);
        kept.forget(k);
    }
    Room::Made
}

/// Keeps a DHT record page that [`RecordGate::check`] let through (of `version`, for data of
/// `owner`), unless a page at least as new is kept under its key already (or the kept bytes
/// are at their bound).
pub fn accept_record(
    store: &mut kad::store::MemoryStore,
    kept: &mut RecordBytes,
    chain_id: u32,
    record: kad::Record,
    (version, owner): (u64, Address),
) {
    use kad::store::RecordStore;
    let (key, len) = (record.key.clone(), record.value.len());
    if make_room_for_news(store, kept, chain_id, &key, (len, version, &owner)) != Room::Made {
        return;
    }
    match store.put(record) {
        Ok(()) => kept.note(key, len, owner),
        Err(e) => tracing::debug!("keeping a DHT record: {e}"),
    }
}

/// Where a lookup's record copies go, one by one.
pub type RecordsReply = tokio::sync::mpsc::UnboundedSender<Vec<u8>>;
/// A page the gate let through, with its version and its data's owner.
type KeptPage = (kad::Record, (u64, Address));

/// Copies of a record page a lookup keeps (kad asks up to its replication factor).
const MAX_RECORD_COPIES: usize = 32;

/// Record pages whose publisher is being looked up on chain at once; more are dropped (the
/// publisher stores its page on other nodes too, and republishes).
const MAX_RECORD_CHECKS: usize = 32;
/// Pages waiting for the chain to make up its mind at once (see [`RECORD_CHECK_TRIES`]):
/// pages nobody may publish end here, so a flood of them fills this and not the above.
const MAX_RECORD_RETRIES: usize = 4;
/// Looks at the chain this many times, [`RECORD_CHECK_RETRY`] apart, while it cannot tell
/// (the data's registration, or the publisher's deposit, may be in a block this node has
/// not applied yet).
const RECORD_CHECK_TRIES: u32 = 4;
const RECORD_CHECK_RETRY: Duration = Duration::from_secs(3);

/// Decides which DHT record pages a node keeps. A page must be signed for this chain (see
/// [`SignedPage`]) and stored under its own key; its data must be registered on chain with
/// the page's erasure code and no more blocks than the data has bytes; and its publisher
/// must be the data's owner or a storage node holding the RNode deposit (coordinators
/// publish new versions after repairs). Anyone could otherwise replace the record of any
/// data with one naming holders that do not exist.
#[derive(Clone)]
pub struct RecordGate {
    chain_id: u32,
    chain: Arc<dyn ChainView>,
    checking: Arc<tokio::sync::Semaphore>,
    retrying: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for RecordGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordGate")
            .field("chain_id", &self.chain_id)
            .finish()
    }
}

/// What the chain says of a page's publisher (see [`may_publish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publisher {
    /// It may publish the page; the data belongs to `owner`.
    Allowed {
        /// The data's owner on chain.
        owner: Address,
    },
    /// The page does not match the data's registration.
    Refused,
    /// The chain cannot tell yet: it did not answer, the data is not registered here yet,
    /// or the writer is neither the owner nor (yet) a coordinator.
    Undecided,
}

/// Whether `writer` may publish `page`.
pub fn may_publish(chain: &dyn ChainView, writer: &NodeId, page: &DataRecord) -> Publisher {
    let Some(reg) = chain.data(&page.data) else {
        return Publisher::Undecided;
    };
    let blocks = page.total_blocks;
    if u16::from(page.k) != reg.k
        || u16::from(page.m) != reg.m
        || blocks > reg.size.max(1)
        || blocks > crate::manifest::MAX_BLOCKS as u64
    {
        return Publisher::Refused;
    }
    let who = Address(writer.0);
    if reg.owner == who || chain.may_coordinate(&who, &page.data) == Some(true) {
        return Publisher::Allowed { owner: reg.owner };
    }
    Publisher::Undecided
}

impl RecordGate {
    /// The gate of a node on chain `chain_id` that follows the chain through `chain`.
    pub fn new(chain_id: u32, chain: Arc<dyn ChainView>) -> RecordGate {
        RecordGate {
            chain_id,
            chain,
            checking: Arc::new(tokio::sync::Semaphore::new(MAX_RECORD_CHECKS)),
            retrying: Arc::new(tokio::sync::Semaphore::new(MAX_RECORD_RETRIES)),
        }
    }

    /// Checks an inbound page: the signature here, the publisher on a blocking thread. A
    /// page that passes is sent on `keep` with its version.
    fn check(&self, record: kad::Record, keep: &UnboundedSender<KeptPage>) {
        let signed = match SignedPage::open(&record.value, self.chain_id, now_ms()) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("refusing a DHT record: {e}");
                return;
            }
        };
        let (data, page) = (signed.page.data, signed.page.page);
        if record.key.as_ref() != DataRecord::key(&data, page).as_slice() {
            tracing::debug!("refusing a DHT record stored under another key");
            return;
        }
        let Ok(permit) = Arc::clone(&self.checking).try_acquire_owned() else {
            tracing::debug!("dropping a DHT record: {MAX_RECORD_CHECKS} already being checked");
            return;
        };
        let (chain, keep, retrying) = (
            Arc::clone(&self.chain),
            keep.clone(),
            Arc::clone(&self.retrying),
        );
        tokio::task::spawn_blocking(move || {
            let mut verdict = may_publish(&*chain, &signed.writer, &signed.page);
            drop(permit);
            if verdict == Publisher::Undecided {
                let Ok(_retry) = retrying.try_acquire_owned() else {
                    tracing::debug!("dropping a record of {data}: {MAX_RECORD_RETRIES} pages already wait for the chain");
                    return;
                };
                for _ in 1..RECORD_CHECK_TRIES {
                    std::thread::sleep(RECORD_CHECK_RETRY);
                    verdict = may_publish(&*chain, &signed.writer, &signed.page);
                    if verdict != Publisher::Undecided {
                        break;
                    }
                }
            }
            match verdict {
                Publisher::Allowed { owner } => {
                    let _ = keep.send((record, (signed.page.version, owner)));
                }
                Publisher::Refused => tracing::debug!(
                    "refusing a record of {data} from {}: it does not match the registration",
                    signed.writer
                ),
                Publisher::Undecided => tracing::debug!(
                    "dropping a record of {data} from {}: not its owner nor an RNode, as far as this node knows",
                    signed.writer
                ),
            }
        });
    }
}

/// Bytes of DHT record values kept at most (records never expire and anyone may store
/// one: without this, 65,536 pages of 60 KiB could take 4 GiB of every node's memory).
pub const MAX_RECORD_BYTES_KEPT: usize = 256 << 20;

/// Bytes of DHT record values kept at most for the data of one owner: one owner's pages
/// (its own, or the ones coordinators publish for its data) cannot take the whole store.
pub const MAX_RECORD_BYTES_PER_OWNER: usize = 64 << 20;

/// Every kept page counts as at least this many bytes, so the byte bounds bound the number
/// of pages too: [`MAX_RECORD_BYTES_KEPT`] / this is the store's page limit, and tiny pages
/// cannot fill it while leaving the bytes unused.
pub const RECORD_CHARGE_MIN: usize = 4 << 10;

/// Peers a page is published to when this node has no room to keep it (kad's own
/// replication factor).
const RECORD_REPLICATION: usize = 20;

/// Pages kept at most (kad's own store limit).
pub const MAX_RECORDS_KEPT: usize = MAX_RECORD_BYTES_KEPT / RECORD_CHARGE_MIN;

/// The bytes a page of `len` bytes counts as.
fn record_charge(len: usize) -> usize {
    len.max(RECORD_CHARGE_MIN)
}

/// The sizes of the DHT records kept, for [`MAX_RECORD_BYTES_KEPT`] and
/// [`MAX_RECORD_BYTES_PER_OWNER`].
///
/// Every page counts for the owner of its data, whoever published it (the owner, or a
/// coordinator after a repair). When the store is full, a page makes room by evicting pages
/// of the owner that has the most kept here, as long as that owner would still have more
/// than the newcomer's owner after the page is kept: shares move toward equal and never
/// swap back and forth, and a few owners that fill the store early cannot keep everyone
/// else's pages out. The biggest owner itself makes room with its own pages. Among an
/// owner's pages the one whose key is farthest from this node goes first (the nodes closest
/// to a key are the ones lookups ask).
#[derive(Debug)]
pub struct RecordBytes {
    /// This node, for the distance to a page's key.
    local: kad::KBucketKey<PeerId>,
    /// Every kept page: the owner of its data, and its charge (see [`record_charge`]).
    pages: HashMap<kad::RecordKey, (Address, usize)>,
    total: usize,
    owners: HashMap<Address, OwnerPages>,
}

/// One owner's kept pages.
#[derive(Debug, Default)]
struct OwnerPages {
    bytes: usize,
    /// By distance from this node (unique: XOR with one key is one-to-one).
    keys: std::collections::BTreeMap<kad::KBucketDistance, kad::RecordKey>,
}

impl RecordBytes {
    /// The account of the records kept by node `local`.
    pub fn new(local: PeerId) -> RecordBytes {
        RecordBytes {
            local: kad::KBucketKey::from(local),
            pages: HashMap::new(),
            total: 0,
            owners: HashMap::new(),
        }
    }

    /// How far `key` is from this node.
    fn distance(&self, key: &kad::RecordKey) -> kad::KBucketDistance {
        self.local.distance(&kad::KBucketKey::new(key.to_vec()))
    }

    /// Bytes that `owner`'s pages count as here.
    fn owner_bytes(&self, owner: &Address) -> usize {
        self.owners.get(owner).map_or(0, |o| o.bytes)
    }

    /// Whether `len` bytes may be kept under `key` (replacing what is there) for data of
    /// `owner`, and if so the pages to evict first to make room (often none). `None` when
    /// the page may not be kept.
    pub fn make_room(
        &self,
        key: &kad::RecordKey,
        len: usize,
        owner: &Address,
    ) -> Option<Vec<kad::RecordKey>> {
        let charge = record_charge(len);
        let (old_owner, old) = self
            .pages
            .get(key)
            .map_or((None, 0), |(o, c)| (Some(o), *c));
        // What the page's owner will have kept here with it.
        let replaced = if old_owner == Some(owner) { old } else { 0 };
        let after = self.owner_bytes(owner) - replaced + charge;
        if after > MAX_RECORD_BYTES_PER_OWNER {
            return None;
        }
        let mut over = (self.total - old + charge).saturating_sub(MAX_RECORD_BYTES_KEPT);
        let mut evict = Vec::new();
        let mut taken: HashMap<&Address, usize> = HashMap::new();
        while over > 0 {
            // The owner with the most left after the evictions planned so far.
            let (big, left) = self
                .owners
                .iter()
                .map(|(a, p)| (a, p.bytes - taken.get(a).copied().unwrap_or(0)))
                .max_by_key(|(a, left)| (*left, **a))?;
            // The biggest owner makes room with its own pages (a new version of one that
            // grew, say); anyone else only while the biggest keeps more than it will.
            if big != owner && left <= after {
                return None;
            }
            let far = self
                .owners
                .get(big)?
                .keys
                .values()
                .rev()
                .find(|k| *k != key && !evict.contains(*k))?;
            let c = self.pages.get(far).map_or(0, |(_, c)| *c);
            *taken.entry(big).or_default() += c;
            over = over.saturating_sub(c);
            evict.push(far.clone());
        }
        Some(evict)
    }

    /// Records that `len` bytes are now kept under `key`, for data of `owner`.
    pub fn note(&mut self, key: kad::RecordKey, len: usize, owner: Address) {
        self.forget(&key);
        let charge = record_charge(len);
        self.pages.insert(key.clone(), (owner, charge));
        self.total += charge;
        let d = self.distance(&key);
        let pages = self.owners.entry(owner).or_default();
        pages.bytes += charge;
        pages.keys.insert(d, key);
    }

    /// Records that nothing is kept under `key` any more.
    pub fn forget(&mut self, key: &kad::RecordKey) {
        let Some((o, old)) = self.pages.remove(key) else {
            return;
        };
        self.total -= old;
        let d = self.distance(key);
        if let Some(pages) = self.owners.get_mut(&o) {
            pages.bytes -= old;
            pages.keys.remove(&d);
            if pages.keys.is_empty() {
                self.owners.remove(&o);
            }
        }
    }
}

/// Storage nodes remembered at most; past this, ones gone for [`STORAGE_FORGET_MS`] are
/// forgotten, and while it is still full no new one is taken.
pub const MAX_KNOWN_STORAGE: usize = 4096;
/// How long a disconnected storage node is remembered once the map is full.
pub const STORAGE_FORGET_MS: u64 = 10 * 60 * 1000;

/// Records (or refreshes) a storage node, keeping the map bounded.
fn remember_storage(map: &mut HashMap<PeerId, KnownStorage>, peer: PeerId, k: KnownStorage) {
    if map.len() >= MAX_KNOWN_STORAGE && !map.contains_key(&peer) {
        let now = k.seen_ms;
        map.retain(|_, o| o.connected || now.saturating_sub(o.seen_ms) < STORAGE_FORGET_MS);
        if map.len() >= MAX_KNOWN_STORAGE {
            tracing::debug!("not remembering storage node {peer}: {MAX_KNOWN_STORAGE} known");
            return;
        }
    }
    map.insert(peer, k);
}

fn known_storage(stats: &NetStats) -> std::sync::MutexGuard<'_, HashMap<PeerId, KnownStorage>> {
    super::lock(&stats.storage)
}

/// The libp2p peer id of an address (the same ed25519 key), if the bytes are a valid key.
pub fn peer_id_of(addr: &Address) -> Option<PeerId> {
    let pk = identity::ed25519::PublicKey::try_from_bytes(&addr.0).ok()?;
    Some(identity::PublicKey::from(pk).to_peer_id())
}

/// The ed25519 key inside a peer id, if the peer's identity is an ed25519 key (ours always
/// are: a node's or a client's libp2p identity is its chain key).
pub fn key_of_peer(p: &PeerId) -> Option<[u8; 32]> {
    let mh: &libp2p::multihash::Multihash<64> = p.as_ref();
    let pk = identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
    Some(pk.try_into_ed25519().ok()?.to_bytes())
}

/// A running swarm, before its loop is spawned.
pub struct Net {
    swarm: Swarm<Behaviour>,
    committee: HashSet<PeerId>,
    validators: HashSet<PeerId>,
    bootstrap: Vec<Multiaddr>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("peer_id", self.swarm.local_peer_id())
            .finish()
    }
}

impl Net {
    /// Builds the swarm for `seed` (the node's ed25519 seed), listening on `listen`.
    /// `committee` are the validators and proposers, who get direct consensus frames.
    pub fn new(
        seed: [u8; 32],
        listen: &[String],
        bootstrap: &[String],
        committee: &[Address],
        validators: &[Address],
        subscribe_txs: bool,
        storage: bool,
    ) -> Result<Net> {
        let mut seed = seed;
        let key = identity::Keypair::ed25519_from_bytes(&mut seed)
            .context("deriving the libp2p identity")?;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .context("TCP transport")?
            .with_quic()
            .with_behaviour(|key| {
                let peer = key.public().to_peer_id();
                let gossip_cfg = gossipsub::ConfigBuilder::default()
                    .max_transmit_size(MAX_GOSSIP)
                    .heartbeat_interval(Duration::from_millis(500))
                    // Nothing is relayed before it decodes (see `gossip_verdict`).
                    .validate_messages()
                    // Payloads authenticate themselves (signed transactions, certified
                    // blocks): per-message signatures would only hash every byte again.
                    .validation_mode(gossipsub::ValidationMode::None)
                    .message_id_fn(|m: &gossipsub::Message| {
                        gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
                    })
                    .build()
                    .map_err(|e| io::Error::other(e.to_string()))?;
                let gossip = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Anonymous,
                    gossip_cfg,
                )
                .map_err(io::Error::other)?;
                let kad = hardened_kad(peer, kad::Mode::Server);
                let rr_cfg = request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(30))
                    .with_max_concurrent_streams(1024);
                let consensus = request_response::Behaviour::with_codec(
                    FrameCodec {
                        max_request: MAX_CONSENSUS_FRAME,
                        max_response: 16,
                    },
                    [(
                        StreamProtocol::new("/cpchain/consensus/1"),
                        ProtocolSupport::Full,
                    )],
                    rr_cfg.clone(),
                );
                let sync = request_response::Behaviour::with_codec(
                    FrameCodec {
                        max_request: MAX_SYNC_REQUEST,
                        max_response: MAX_SYNC_RESPONSE,
                    },
                    [(
                        StreamProtocol::new("/cpchain/sync/1"),
                        ProtocolSupport::Full,
                    )],
                    rr_cfg.clone(),
                );
                let shard = shard_behaviour(if storage {
                    ProtocolSupport::Full
                } else {
                    ProtocolSupport::Outbound
                });
                Ok(Behaviour {
                    identify: identify_behaviour(key),
                    ping: ping::Behaviour::default(),
                    kad,
                    gossip,
                    consensus,
                    sync,
                    shard,
                })
            })
            .map_err(|e| anyhow::anyhow!("building behaviours: {e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        swarm.behaviour_mut().kad.set_mode(Some(kad::Mode::Server));
        // Only block builders (proposers) want the transaction flood; others publish to it
        // (through fanout) without receiving it.
        let topics: &[&str] = if subscribe_txs {
            &[TOPIC_TXS, TOPIC_BLOCKS]
        } else {
            &[TOPIC_BLOCKS]
        };
        for t in topics.iter().copied() {
            swarm
                .behaviour_mut()
                .gossip
                .subscribe(&gossipsub::IdentTopic::new(t))
                .map_err(|e| anyhow::anyhow!("subscribing to {t}: {e}"))?;
        }
        for l in listen {
            let a: Multiaddr = l
                .parse()
                .with_context(|| format!("listen address `{l}` is not a multiaddr"))?;
            swarm
                .listen_on(a)
                .with_context(|| format!("listening on {l}"))?;
        }
        let bootstrap = bootstrap
            .iter()
            .map(|b| bootstrap_addr(b))
            .collect::<Result<Vec<_>>>()?;
        let me = *swarm.local_peer_id();
        let peers = |v: &[Address]| -> HashSet<PeerId> {
            v.iter()
                .filter_map(peer_id_of)
                .filter(|p| *p != me)
                .collect()
        };
        Ok(Net {
            swarm,
            committee: peers(committee),
            validators: peers(validators),
            bootstrap,
        })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    fn provide(&mut self, d: crypto_accel::DataId) {
        let key = kad::RecordKey::new(&dht::record::DataRecord::key(&d, 0));
        if let Err(e) = self.swarm.behaviour_mut().kad.start_providing(key) {
            tracing::warn!("announcing data {d} in the DHT: {e}");
        }
    }

    /// Runs the swarm until `cmds` closes: forwards events to `events` (dropping, and
    /// counting, what does not fit), executes commands.
    pub async fn run<E: From<NetEvent> + Send>(
        mut self,
        mut cmds: UnboundedReceiver<NetCmd>,
        events: SyncSender<E>,
        stats: Arc<NetStats>,
        shard_jobs: Option<SyncSender<ShardJob>>,
        provide: Vec<crypto_accel::DataId>,
        records: RecordGate,
    ) {
        let (keep_tx, mut keep_rx) = tokio::sync::mpsc::unbounded_channel::<KeptPage>();
        for d in provide {
            self.provide(d);
        }
        let local = *self.swarm.local_peer_id();
        let mut guard = SubnetGuard::default();
        let mut shard_pending: HashMap<u64, ResponseChannel<Vec<u8>>> = HashMap::new();
        let mut shard_out: HashMap<
            OutboundRequestId,
            tokio::sync::oneshot::Sender<Result<Vec<u8>, String>>,
        > = HashMap::new();
        for a in std::mem::take(&mut self.bootstrap) {
            if let Some(libp2p::multiaddr::Protocol::P2p(p)) = a.iter().last() {
                self.swarm.behaviour_mut().kad.add_address(&p, a.clone());
            }
            if let Err(e) = self.swarm.dial(a.clone()) {
                tracing::warn!("dialing bootstrap {a}: {e}");
            }
        }
        let mut pending: HashMap<u64, ResponseChannel<Vec<u8>>> = HashMap::new();
        let mut sync_limit = RateLimit::new(SYNC_REQUESTS_PER_PEER_PER_S);
        let mut outsiders = OutsiderFrames::new(*self.swarm.local_peer_id());
        let mut record_bytes = RecordBytes::new(*self.swarm.local_peer_id());
        // Record lookups under way: the copies found so far, and who waits for them.
        // Copies sent so far, the asker.
        let mut record_gets: HashMap<kad::QueryId, (usize, RecordsReply)> = HashMap::new();
        let mut next_id = 0u64;
        let mut rr = 0usize;
        let mut outbound_sync: HashMap<OutboundRequestId, PeerId> = HashMap::new();
        let mut redial = tokio::time::interval(Duration::from_secs(2));
        let mut kad_boot = tokio::time::interval(Duration::from_secs(30));
        let send = |ev: NetEvent| {
            if events.try_send(E::from(ev)).is_err() {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        };
        loop {
            tokio::select! {
                Some((record, page)) = keep_rx.recv() => {
                    accept_record(
                        self.swarm.behaviour_mut().kad.store_mut(),
                        &mut record_bytes,
                        records.chain_id,
                        record,
                        page,
                    );
                }
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return };
                    let cmd_kind = if matches!(cmd, NetCmd::ToValidators(_)) {
                        CmdKind::Validators
                    } else {
                        CmdKind::Other
                    };
                    match cmd {
                        NetCmd::ToCommittee(data) | NetCmd::ToValidators(data) => {
                            let set = if matches!(cmd_kind, CmdKind::Validators) {
                                &self.validators
                            } else {
                                &self.committee
                            };
                            let peers: Vec<PeerId> = set
                                .iter()
                                .filter(|p| self.swarm.is_connected(p))
                                .copied()
                                .collect();
                            for p in peers {
                                self.swarm
                                    .behaviour_mut()
                                    .consensus
                                    .send_request(&p, data.to_vec());
                            }
                        }
                        NetCmd::Publish { topic, data } => {
                            let t = gossipsub::IdentTopic::new(topic);
                            if let Err(e) = self.swarm.behaviour_mut().gossip.publish(t, data) {
                                tracing::debug!("publish on {topic}: {e}");
                            }
                        }
                        NetCmd::SyncRequest { peer, data } => {
                            let target = peer.or_else(|| {
                                // Validators hold every final block; anyone else may lag.
                                let connected = |set: &HashSet<PeerId>| -> Vec<PeerId> {
                                    set.iter()
                                        .filter(|p| self.swarm.is_connected(p))
                                        .copied()
                                        .collect()
                                };
                                let mut c = connected(&self.validators);
                                if c.is_empty() {
                                    c = connected(&self.committee);
                                }
                                c.sort();
                                rr = rr.wrapping_add(1);
                                c.get(rr % c.len().max(1)).copied()
                            });
                            if let Some(p) = target {
                                let id = self.swarm.behaviour_mut().sync.send_request(&p, data);
                                outbound_sync.insert(id, p);
                            }
                        }
                        NetCmd::SyncRespond { id, data } => {
                            if let Some(ch) = pending.remove(&id) {
                                let _ = self.swarm.behaviour_mut().sync.send_response(ch, data);
                            }
                        }
                        NetCmd::ShardRespond { id, data } => {
                            if let Some(ch) = shard_pending.remove(&id) {
                                let _ = self.swarm.behaviour_mut().shard.send_response(ch, data);
                            }
                        }
                        NetCmd::Provide(d) => self.provide(d),
                        NetCmd::ShardRequest { peer, data, reply } => {
                            let id = self.swarm.behaviour_mut().shard.send_request(&peer, data);
                            shard_out.insert(id, reply);
                        }
                        NetCmd::Elected(v) => {
                            outsiders.set_elected(v.iter().filter_map(peer_id_of));
                        }
                        NetCmd::GetRecord { key, reply } => {
                            let q = self.swarm.behaviour_mut().kad.get_record(kad::RecordKey::new(&key));
                            record_gets.insert(q, (0, reply));
                        }
                        NetCmd::PutRecord { key, value, version, owner } => {
                            let rec = kad::Record::new(kad::RecordKey::new(&key), value);
                            // Kad keeps what it publishes in the local store: publish only a
                            // page newer than the one kept here; kept within the bounds, or
                            // (no room here) published to the closest peers only.
                            let (k, len) = (rec.key.clone(), rec.value.len());
                            let kad = &mut self.swarm.behaviour_mut().kad;
                            match make_room_for_news(kad.store_mut(), &mut record_bytes, records.chain_id, &k, (len, version, &owner)) {
                                Room::Stale => {
                                    tracing::debug!("not publishing record page version {version}: a newer one is kept");
                                }
                                Room::Made => match kad.put_record(rec, kad::Quorum::One) {
                                    Ok(_) => record_bytes.note(k, len, owner),
                                    Err(e) => tracing::warn!("putting a DHT record: {e}"),
                                },
                                Room::Full => {
                                    let target = kad::KBucketKey::new(k.to_vec());
                                    let peers: Vec<PeerId> = kad
                                        .get_closest_local_peers(&target)
                                        .take(RECORD_REPLICATION)
                                        .map(|p| *p.preimage())
                                        .collect();
                                    tracing::debug!("publishing record page version {version} to {} peers without keeping it: no room here", peers.len());
                                    kad.put_record_to(rec, peers.into_iter(), kad::Quorum::One);
                                }
                            }
                        }
                    }
                }
                _ = redial.tick() => {
                    let missing: Vec<PeerId> = self
                        .committee
                        .iter()
                        .filter(|p| !self.swarm.is_connected(p))
                        .copied()
                        .collect();
                    for p in missing {
                        // Kademlia supplies the addresses it knows for the peer.
                        let _ = self.swarm.dial(p);
                    }
                }
                _ = kad_boot.tick() => {
                    let kad = &mut self.swarm.behaviour_mut().kad;
                    let _ = kad.bootstrap();
                    let in_table: HashSet<PeerId> = kad
                        .kbuckets()
                        .flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>())
                        .collect();
                    guard.reconcile(&in_table, Instant::now());
                }
                ev = self.swarm.select_next_some() => match ev {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        let full = format!("{address}/p2p/{}", self.swarm.local_peer_id());
                        tracing::info!("listening on {full}");
                        super::lock(&stats.listen).push(full);
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, num_established, .. } => {
                        stats.peers.store(self.swarm.connected_peers().count(), Ordering::Relaxed);
                        if num_established.get() == 1 {
                            send(NetEvent::Connected(peer_id));
                        }
                        if let Some(k) = known_storage(&stats).get_mut(&peer_id) {
                            k.connected = true;
                            k.seen_ms = super::config::now_ms();
                        }
                    }
                    SwarmEvent::ConnectionClosed { peer_id, num_established, .. } => {
                        stats.peers.store(self.swarm.connected_peers().count(), Ordering::Relaxed);
                        if num_established == 0 {
                            if let Some(k) = known_storage(&stats).get_mut(&peer_id) {
                                k.connected = false;
                            }
                        }
                    }
                    SwarmEvent::Behaviour(ev) => match ev {
                        BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                            let stores = info
                                .protocols
                                .iter()
                                .any(|p| p.as_ref() == dht::wire::SHARD_PROTOCOL);
                            if let (true, Ok(key)) = (stores, info.public_key.clone().try_into_ed25519()) {
                                remember_storage(&mut known_storage(&stats), peer_id, KnownStorage {
                                    node: key.to_bytes(),
                                    subnet: info.listen_addrs.iter().find_map(subnet_of),
                                    connected: true,
                                    seen_ms: super::config::now_ms(),
                                });
                            }
                            for a in info.listen_addrs.into_iter().take(MAX_IDENTIFY_ADDRS) {
                                guard.add_address(&mut self.swarm.behaviour_mut().kad, &local, &peer_id, a);
                            }
                        }
                        BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                            id,
                            result: kad::QueryResult::GetRecord(r),
                            step,
                            ..
                        }) => {
                            // Each copy goes to the asker as it comes: a lookup that waits for
                            // every close node waits out the dial of any that died, longer
                            // than its asker waits. An asker that stopped listening, or has
                            // all the copies it may get, ends it.
                            let mut done = step.last || r.is_err();
                            if let (Ok(kad::GetRecordOk::FoundRecord(p)), Some((sent, reply))) = (&r, record_gets.get_mut(&id)) {
                                *sent += 1;
                                done |= reply.send(p.record.value.clone()).is_err() || *sent >= MAX_RECORD_COPIES;
                            }
                            if done {
                                record_gets.remove(&id);
                                if !step.last {
                                    if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                                        q.finish();
                                    }
                                }
                            }
                        }
                        BehaviourEvent::Kad(kad::Event::RoutingUpdated { old_peer: Some(gone), .. }) => {
                            guard.forget(&gone);
                        }
                        BehaviourEvent::Kad(kad::Event::RoutablePeer { peer, address })
                        | BehaviourEvent::Kad(kad::Event::PendingRoutablePeer { peer, address })
                        => {
                            guard.add_address(&mut self.swarm.behaviour_mut().kad, &local, &peer, address);
                        }
                        BehaviourEvent::Kad(kad::Event::InboundRequest { request }) => match request {
                            kad::InboundRequest::PutRecord { record: Some(r), .. } => {
                                records.check(r, &keep_tx);
                            }
                            kad::InboundRequest::AddProvider { record: Some(mut r) } => {
                                use kad::store::RecordStore;
                                // The provider chooses its address list: keep a few.
                                r.addresses.truncate(MAX_PROVIDER_ADDRS);
                                let _ = self.swarm.behaviour_mut().kad.store_mut().add_provider(r);
                            }
                            _ => {}
                        },
                        BehaviourEvent::Shard(request_response::Event::Message {
                            message: request_response::Message::Response { request_id, response },
                            ..
                        }) => {
                            if let Some(r) = shard_out.remove(&request_id) {
                                let _ = r.send(Ok(response));
                            }
                        }
                        BehaviourEvent::Shard(request_response::Event::OutboundFailure { request_id, error, .. }) => {
                            if let Some(r) = shard_out.remove(&request_id) {
                                let _ = r.send(Err(error.to_string()));
                            }
                        }
                        BehaviourEvent::Shard(request_response::Event::Message {
                            peer,
                            message: request_response::Message::Request { request, channel, .. },
                            ..
                        }) => {
                            let Some(jobs) = &shard_jobs else { continue };
                            next_id = next_id.wrapping_add(1);
                            // Checked as a chain key (a weak, small-order key reads nothing).
                            let from = key_of_peer(&peer)
                                .and_then(|k| crypto_accel::PublicKey::from_bytes(k).ok());
                            match jobs.try_send(ShardJob { id: next_id, from, data: request }) {
                                Ok(()) => {
                                    shard_pending.insert(next_id, channel);
                                }
                                Err(_) => {
                                    use crypto_accel::Encode;
                                    let busy = dht::wire::ShardResponse::Failed(
                                        "the storage node is busy; retry".into(),
                                    );
                                    let _ = self.swarm.behaviour_mut().shard.send_response(channel, busy.to_bytes());
                                }
                            }
                        }
                        BehaviourEvent::Gossip(gossipsub::Event::Message { propagation_source, message_id, message }) => {
                            let topic = if message.topic == gossipsub::IdentTopic::new(TOPIC_TXS).hash() {
                                Some(TOPIC_TXS)
                            } else if message.topic == gossipsub::IdentTopic::new(TOPIC_BLOCKS).hash() {
                                Some(TOPIC_BLOCKS)
                            } else {
                                None
                            };
                            let verdict = gossip_verdict(topic, &message.data);
                            let accepted = verdict == gossipsub::MessageAcceptance::Accept;
                            // Every message gets a verdict: without one it is never relayed.
                            let _ = self.swarm.behaviour_mut().gossip.report_message_validation_result(
                                &message_id,
                                &propagation_source,
                                verdict,
                            );
                            if let (Some(topic), true) = (topic, accepted) {
                                send(NetEvent::Gossip { from: propagation_source, topic, data: message.data });
                            }
                        }
                        BehaviourEvent::Consensus(request_response::Event::Message {
                            peer,
                            message: request_response::Message::Request { request, channel, .. },
                            ..
                        }) => {
                            if !outsiders.admit(&self.committee, &peer, Instant::now()) {
                                tracing::debug!("consensus frame from {peer} (outside the committee) over the limit");
                                drop(channel);
                                continue;
                            }
                            // Ack at once; the frame is processed asynchronously.
                            let _ = self.swarm.behaviour_mut().consensus.send_response(channel, Vec::new());
                            send(NetEvent::Consensus { from: peer, data: request });
                        }
                        BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => match message {
                            request_response::Message::Request { request, channel, .. } => {
                                // Each answer may cost the engine a 128 MiB read and encode:
                                // a peer asking faster than any catch-up needs is not served.
                                let range = !matches!(
                                    super::engine::decode_all(&request),
                                    Ok(super::engine::SyncReq::Head)
                                );
                                if range && !sync_limit.allow(&peer, Instant::now()) {
                                    tracing::debug!("sync request from {peer} over the rate limit");
                                    drop(channel);
                                    continue;
                                }
                                next_id = next_id.wrapping_add(1);
                                pending.insert(next_id, channel);
                                // Bound the answers we owe: drop the oldest beyond 1,024.
                                if pending.len() > 1024 {
                                    if let Some(k) = pending.keys().min().copied() {
                                        pending.remove(&k);
                                    }
                                }
                                send(NetEvent::SyncRequest { id: next_id, data: request });
                            }
                            request_response::Message::Response { request_id, response } => {
                                outbound_sync.remove(&request_id);
                                send(NetEvent::SyncResponse { from: peer, data: response });
                            }
                        },
                        BehaviourEvent::Sync(request_response::Event::OutboundFailure { request_id, error, .. }) => {
                            if let Some(p) = outbound_sync.remove(&request_id) {
                                tracing::debug!("sync request to {p} failed: {error}");
                            }
                        }
                        _ => {}
                    },
                    _ => {}
                },
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crypto_accel::DataId;

    /// A chain with one registered data item, its owner and one RNode.
    struct Chain {
        data: DataId,
        owner: Address,
        rnode: Address,
        answers: bool,
    }

    impl ChainView for Chain {
        fn data(&self, id: &DataId) -> Option<chain::DataRecord> {
            (self.answers && *id == self.data).then_some(chain::DataRecord {
                owner: self.owner,
                merkle_root: crypto_accel::Hash([0; 32]),
                size: 1,
                k: 4,
                m: 2,
                intervals: chain::IntervalRange { start: 0, end: 1 },
                policy: chain::AccessPolicy::GrantBased,
                registered_at: 1,
            })
        }
        fn may_read(&self, _: &Address, _: &DataId, _: u64) -> bool {
            false
        }
        fn may_read_some(&self, _: &Address, _: &DataId) -> bool {
            false
        }
        fn is_rnode(&self, who: &Address) -> Option<bool> {
            self.answers.then_some(*who == self.rnode)
        }
    }

    #[test]
    fn only_owners_and_rnodes_publish_records_of_registered_data() {
        let node = |b: u8| NodeId([b; 32]);
        let data = DataId(crypto_accel::Hash([9; 32]));
        // Registered with k = 4, m = 2: the test chain's page needs k + m = 6 entries.
        let page = |data: DataId, blocks: usize| {
            let row: Vec<NodeId> = (10..16).map(node).collect();
            DataRecord::pages_from_map(data, 5, 4, 2, 1, &vec![row; blocks], &[])
                .unwrap()
                .remove(0)
        };
        let mut c = Chain {
            data,
            owner: Address([1; 32]),
            rnode: Address([2; 32]),
            answers: true,
        };
        let good = page(data, 1);
        let allowed = Publisher::Allowed {
            owner: Address([1; 32]),
        };
        assert_eq!(may_publish(&c, &node(1), &good), allowed);
        assert_eq!(may_publish(&c, &node(2), &good), allowed);
        // Anyone else: perhaps an RNode whose deposit this node has not seen yet.
        assert_eq!(may_publish(&c, &node(3), &good), Publisher::Undecided);
        // Data this node has not seen registered: nobody, yet.
        let unknown = page(DataId(crypto_accel::Hash([8; 32])), 1);
        assert_eq!(may_publish(&c, &node(1), &unknown), Publisher::Undecided);
        assert_eq!(may_publish(&c, &node(2), &unknown), Publisher::Undecided);
        // More blocks than the data has bytes (1): refused, whoever signs.
        assert_eq!(
            may_publish(&c, &node(1), &page(data, 2)),
            Publisher::Refused
        );
        // Another erasure code than the registration's.
        let mut other = good.clone();
        other.k = 3;
        other.m = 3;
        assert_eq!(may_publish(&c, &node(1), &other), Publisher::Refused);
        // A chain that does not answer decides nothing.
        c.answers = false;
        assert_eq!(may_publish(&c, &node(2), &good), Publisher::Undecided);
    }

    #[test]
    fn a_kept_record_page_is_replaced_only_by_a_newer_one() {
        use crypto_accel::Encode;
        use kad::store::RecordStore;
        let key = crypto_accel::Keypair::from_seed([4; 32]);
        let data = DataId(crypto_accel::Hash([5; 32]));
        let page = |version: u64| {
            let mut p = DataRecord::pages_from_map(
                data,
                version,
                1,
                1,
                1,
                &[vec![NodeId([6; 32]), NodeId([7; 32])]],
                &[],
            )
            .unwrap()
            .remove(0);
            p.version = version;
            let bytes = SignedPage::sign(p, &key, 3).to_bytes();
            kad::Record::new(kad::RecordKey::new(&DataRecord::key(&data, 0)), bytes)
        };
        let local = PeerId::random();
        let mut store = kad::store::MemoryStore::new(local);
        let mut kept = RecordBytes::new(local);
        let rk = kad::RecordKey::new(&DataRecord::key(&data, 0));
        let version_kept = |store: &kad::store::MemoryStore| {
            SignedPage::open(&store.get(&rk).unwrap().value, 3, u64::MAX)
                .unwrap()
                .page
                .version
        };
        accept_record(&mut store, &mut kept, 3, page(20), (20, Address([1; 32])));
        assert_eq!(version_kept(&store), 20);
        accept_record(&mut store, &mut kept, 3, page(10), (10, Address([1; 32])));
        assert_eq!(version_kept(&store), 20);
        accept_record(&mut store, &mut kept, 3, page(30), (30, Address([1; 32])));
        assert_eq!(version_kept(&store), 30);
    }

    fn addr(a: u8, b: u8) -> Multiaddr {
        format!("/ip4/{a}.{b}.7.9/tcp/4001").parse().unwrap()
    }

    #[test]
    fn known_storage_nodes_stay_bounded_and_long_gone_ones_make_room() {
        let mut m = HashMap::new();
        let node = |connected, seen_ms| KnownStorage {
            node: [0; 32],
            subnet: None,
            connected,
            seen_ms,
        };
        let now = STORAGE_FORGET_MS * 10;
        for i in 0..MAX_KNOWN_STORAGE {
            // Half connected, half gone long ago.
            let gone = i % 2 == 0;
            remember_storage(
                &mut m,
                PeerId::random(),
                node(!gone, if gone { 0 } else { now }),
            );
        }
        assert_eq!(m.len(), MAX_KNOWN_STORAGE);
        // A new one makes the long-gone ones go.
        let newcomer = PeerId::random();
        remember_storage(&mut m, newcomer, node(true, now));
        assert_eq!(m.len(), MAX_KNOWN_STORAGE / 2 + 1);
        assert!(m.contains_key(&newcomer));
        // Full of connected nodes: a new one is not taken, a known one is refreshed.
        while m.len() < MAX_KNOWN_STORAGE {
            remember_storage(&mut m, PeerId::random(), node(true, now));
        }
        remember_storage(&mut m, PeerId::random(), node(true, now + 1));
        assert_eq!(m.len(), MAX_KNOWN_STORAGE);
        remember_storage(&mut m, newcomer, node(true, now + 5));
        assert_eq!(m[&newcomer].seen_ms, now + 5);
    }

    #[test]
    fn gossip_is_relayed_only_when_it_decodes_as_its_topic_says() {
        use crypto_accel::Encode;
        use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
        let announce = super::super::engine::Announce {
            number: 7,
            hash: crypto_accel::Hash::of(b"block 7"),
        }
        .to_bytes();
        assert_eq!(gossip_verdict(Some(TOPIC_BLOCKS), &announce), Accept);
        assert_eq!(gossip_verdict(Some(TOPIC_BLOCKS), &announce[..30]), Reject);
        let mut long = announce.clone();
        long.push(0);
        assert_eq!(gossip_verdict(Some(TOPIC_BLOCKS), &long), Reject);
        assert_eq!(
            gossip_verdict(Some(TOPIC_BLOCKS), &vec![0xAB; 1 << 20]),
            Reject
        );
        let kp = crypto_accel::Keypair::from_seed([3; 32]);
        let tx = chain::SignedTx::sign(
            &kp,
            7,
            0,
            1,
            chain::TxPayload::Transfer {
                to: chain::Address([9; 32]),
                amount: 5,
            },
        );
        let batch = super::super::engine::encode_tx_batch(&[tx]);
        assert_eq!(gossip_verdict(Some(TOPIC_TXS), &batch), Accept);
        assert_eq!(
            gossip_verdict(Some(TOPIC_TXS), &batch[..batch.len() - 1]),
            Reject
        );
        assert_eq!(gossip_verdict(Some(TOPIC_TXS), &announce), Reject);
        assert_eq!(gossip_verdict(None, &batch), Ignore);
    }

    #[test]
    fn kept_record_bytes_are_bounded_and_replacements_count_once() {
        let mut k = RecordBytes::new(PeerId::random());
        let key = |i: u32| kad::RecordKey::new(&i.to_le_bytes());
        let owner = |i: u32| Address([(i % 251) as u8; 32]);
        let page = 60 << 10;
        let fits = |k: &RecordBytes, i: u32, len: usize, o: &Address| {
            k.make_room(&key(i), len, o).is_some_and(|e| e.is_empty())
        };
        let per_owner = MAX_RECORD_BYTES_PER_OWNER / page;
        let fit = MAX_RECORD_BYTES_KEPT / page;
        // Owners fill their budgets one after another until the store is full.
        for i in 0..fit as u32 {
            let o = owner(i / per_owner as u32);
            assert!(fits(&k, i, page, &o), "page {i}");
            k.note(key(i), page, o);
        }
        // Full: a new version of a kept page still fits without evicting anything.
        assert!(fits(&k, 0, page, &owner(0)));
        k.note(key(0), page / 2, owner(0));
        assert_eq!(k.total, fit * page - page / 2);
        assert!(fits(&k, u32::MAX, page / 2, &owner(200)));
        // One owner's budget, in a store with room to spare.
        let mut fresh = RecordBytes::new(PeerId::random());
        for i in 0..per_owner as u32 {
            fresh.note(key(i), page, owner(0));
        }
        assert!(fresh.total + page <= MAX_RECORD_BYTES_KEPT);
        assert!(fresh.make_room(&key(u32::MAX), page, &owner(0)).is_none());
        assert!(fits(&fresh, u32::MAX, page, &owner(1)));
        assert!(fits(&fresh, 0, page, &owner(0)));
        // A page that moves to another owner leaves the first one's count.
        let before = k.owner_bytes(&owner(0));
        k.note(key(2), page, owner(7));
        assert_eq!(k.owner_bytes(&owner(0)), before - page);
        // Tiny pages count as RECORD_CHARGE_MIN: the byte bound bounds the page count.
        let mut tiny = RecordBytes::new(PeerId::random());
        tiny.note(key(1), 10, owner(1));
        assert_eq!(tiny.total, RECORD_CHARGE_MIN);
        tiny.forget(&key(1));
        assert_eq!((tiny.total, tiny.owners.len(), tiny.pages.len()), (0, 0, 0));
    }

    #[test]
    fn a_full_record_store_evicts_the_biggest_owners_farthest_pages_for_a_smaller_owner() {
        let mut k = RecordBytes::new(PeerId::random());
        let key = |i: u32| kad::RecordKey::new(&i.to_le_bytes());
        let owner = |i: u8| Address([i; 32]);
        let page = 64 << 10;
        let per_owner = (MAX_RECORD_BYTES_PER_OWNER / page) as u32;
        // Four owners fill the store with their whole budgets.
        for i in 0..4 * per_owner {
            let o = owner((i / per_owner) as u8);
            let evict = k.make_room(&key(i), page, &o).unwrap();
            assert!(evict.is_empty());
            k.note(key(i), page, o);
        }
        assert_eq!(k.total, MAX_RECORD_BYTES_KEPT);
        // A fifth owner's page evicts one of the biggest owner's pages (the ties go to the
        // greatest address, owner 3), the one farthest from this node.
        let evict = k.make_room(&key(1 << 20), page, &owner(9)).unwrap();
        assert_eq!(evict.len(), 1);
        assert_eq!(k.pages[&evict[0]].0, owner(3));
        let distance = |r: &kad::RecordKey| k.local.distance(&kad::KBucketKey::new(r.to_vec()));
        let farthest = k.owners[&owner(3)]
            .keys
            .values()
            .map(distance)
            .max()
            .unwrap();
        assert_eq!(distance(&evict[0]), farthest);
        // A page of the smallest charge still needs one eviction, however small.
        assert_eq!(k.make_room(&key(1 << 20), 10, &owner(9)).unwrap().len(), 1);
        // The newcomer keeps gaining until it would hold more than the owner it takes from:
        // shares meet in the middle and never swap back and forth.
        let mut fifth = 0u32;
        while let Some(evict) = k.make_room(&key((1 << 20) + fifth), page, &owner(9)) {
            if evict.iter().any(|e| k.pages[e].0 == owner(9)) {
                // The newcomer is the biggest now: it makes room with its own pages.
                break;
            }
            for e in &evict {
                k.forget(e);
            }
            k.note(key((1 << 20) + fifth), page, owner(9));
            fifth += 1;
            assert!(k.total <= MAX_RECORD_BYTES_KEPT);
        }
        let shares: Vec<usize> = (0..4).map(|o| k.owner_bytes(&owner(o))).collect();
        let newcomer = k.owner_bytes(&owner(9));
        assert!(
            shares.iter().all(|s| newcomer <= *s + page),
            "{shares:?} vs {newcomer}"
        );
        assert!(
            shares.iter().all(|s| *s <= newcomer + page),
            "{shares:?} vs {newcomer}"
        );
        // No owner can take from one that would then keep less than it: the smallest
        // share gets nothing from the biggest, which makes room with its own pages only.
        let all: Vec<Address> = [0, 1, 2, 3, 9].map(owner).to_vec();
        let least = *all.iter().min_by_key(|o| k.owner_bytes(o)).unwrap();
        assert!(k.make_room(&key(2 << 20), page, &least).is_none());
        let most = *all.iter().max_by_key(|o| (k.owner_bytes(o), **o)).unwrap();
        let evict = k.make_room(&key(3 << 20), page, &most).unwrap();
        assert_eq!(evict.len(), 1);
        assert_eq!(k.pages[&evict[0]].0, most);
    }

    #[test]
    fn the_biggest_owner_in_a_full_store_grows_a_page_by_evicting_its_own() {
        let mut k = RecordBytes::new(PeerId::random());
        let key = |i: u32| kad::RecordKey::new(&i.to_le_bytes());
        let page = 32 << 10;
        let pages = (MAX_RECORD_BYTES_KEPT / page) as u32;
        // Five owners fill the store (each under its own bound).
        for i in 0..pages {
            k.note(key(i), page, Address([(i * 5 / pages) as u8; 32]));
        }
        assert_eq!(k.total, MAX_RECORD_BYTES_KEPT);
        let big = *k
            .owners
            .iter()
            .max_by_key(|(a, p)| (p.bytes, **a))
            .unwrap()
            .0;
        // A repair's new version of one of the biggest owner's pages, twice the size: it
        // evicts another of that owner's pages, never the page it replaces nor anyone else's.
        let grown = k.owners[&big].keys.values().next().unwrap().clone();
        let evict = k.make_room(&grown, 2 * page, &big).unwrap();
        assert_eq!(evict.len(), 1);
        assert!(evict[0] != grown && k.pages[&evict[0]].0 == big);
    }

    #[test]
    fn a_page_accepted_into_a_full_store_takes_the_place_of_the_evicted_one() {
        use kad::store::RecordStore;
        let local = PeerId::random();
        let mut store = record_store(local);
        let mut kept = RecordBytes::new(local);
        let key = |i: u32| kad::RecordKey::new(&i.to_le_bytes());
        let rec = |i: u32| kad::Record::new(key(i), vec![1; 10]);
        // Tiny pages (each counts as RECORD_CHARGE_MIN): four owners fill kad's page limit.
        let per_owner = (MAX_RECORD_BYTES_PER_OWNER / RECORD_CHARGE_MIN) as u32;
        for i in 0..4 * per_owner {
            let o = Address([(i / per_owner) as u8; 32]);
            accept_record(&mut store, &mut kept, 3, rec(i), (1, o));
        }
        assert_eq!(store.records().count(), MAX_RECORDS_KEPT);
        let before: HashSet<kad::RecordKey> = store.records().map(|r| r.key.clone()).collect();
        accept_record(
            &mut store,
            &mut kept,
            3,
            rec(u32::MAX),
            (1, Address([9; 32])),
        );
        let after: HashSet<kad::RecordKey> = store.records().map(|r| r.key.clone()).collect();
        assert_eq!(after.len(), MAX_RECORDS_KEPT);
        assert!(after.contains(&key(u32::MAX)));
        let gone: Vec<_> = before.difference(&after).collect();
        assert_eq!(gone.len(), 1);
        assert!(!kept.pages.contains_key(gone[0]));
        assert_eq!(kept.total, MAX_RECORD_BYTES_KEPT);
    }

    #[test]
    fn consensus_frames_from_outside_the_committee_are_limited_per_peer_and_in_all() {
        let mut o = OutsiderFrames::new(PeerId::random());
        let t = Instant::now();
        let peers: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
        let per = OUTSIDER_FRAMES_PER_PEER_PER_S as usize;
        assert_eq!((0..per + 5).filter(|_| o.allow(&peers[0], t)).count(), per);
        // Frames refused per peer do not use up the shared budget.
        let rest = OUTSIDER_FRAMES_PER_S as usize - per;
        let passed = peers[1..]
            .iter()
            .flat_map(|p| std::iter::repeat_n(p, per))
            .filter(|p| o.allow(p, t))
            .count();
        assert_eq!(passed, rest);
        // A second later the budgets are back.
        assert!(o.allow(&peers[9], t + Duration::from_secs(1)));
    }

    #[test]
    fn the_committee_and_this_terms_elected_proposers_pass_without_limit() {
        let mut o = OutsiderFrames::new(PeerId::random());
        let t = Instant::now();
        let (validator, proposer, outsider) =
            (PeerId::random(), PeerId::random(), PeerId::random());
        let committee = HashSet::from([validator]);
        o.set_elected([proposer]);
        let many = 10 * OUTSIDER_FRAMES_PER_S as usize;
        assert!((0..many).all(|_| o.admit(&committee, &validator, t)));
        assert!((0..many).all(|_| o.admit(&committee, &proposer, t)));
        // Their frames used none of the outsiders' budgets, per peer or in all.
        let per = OUTSIDER_FRAMES_PER_PEER_PER_S as usize;
        assert_eq!(
            (0..per + 5)
                .filter(|_| o.admit(&committee, &outsider, t))
                .count(),
            per
        );
        let others: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
        let passed = others
            .iter()
            .flat_map(|p| std::iter::repeat_n(p, per))
            .filter(|p| o.admit(&committee, p, t))
            .count();
        assert_eq!(passed, OUTSIDER_FRAMES_PER_S as usize - per);
        // The next term elects someone else: last term's proposer is an outsider again
        // (a second later, when the budgets are back).
        o.set_elected([outsider]);
        assert!(o.admit(&committee, &outsider, t), "elected now");
        let t = t + Duration::from_secs(1);
        assert_eq!(
            (0..per + 5)
                .filter(|_| o.admit(&committee, &proposer, t))
                .count(),
            per
        );
    }

    #[test]
    fn sync_requests_are_limited_per_peer_per_second() {
        let mut l = RateLimit::new(3);
        let (a, b) = (PeerId::random(), PeerId::random());
        let t = Instant::now();
        assert!((0..3).all(|_| l.allow(&a, t)));
        assert!(!l.allow(&a, t + Duration::from_millis(500)));
        assert!(l.allow(&b, t), "another peer has its own budget");
        assert!(
            l.allow(&a, t + Duration::from_secs(1)),
            "a new second, a new budget"
        );
        // Many peers: old windows are dropped, the map stays bounded.
        for i in 0..10_000u64 {
            l.allow(&PeerId::random(), t + Duration::from_secs(2 + i / 1000));
        }
        assert!(l.seen.len() <= 4096 + 1000);
    }

    #[test]
    fn the_subnet_guard_caps_each_subnet_keeps_one_per_peer_and_frees_evicted_peers() {
        let mut g = SubnetGuard::default();
        let local = PeerId::random();
        // Loopback counts for nothing.
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        assert!(g.admit(&local, &PeerId::random(), &lo));
        assert!(g.is_empty());
        // One peer announcing five hundred subnets holds one place (its other addresses
        // come with it: a multi-homed host announces private and public ones).
        let greedy = PeerId::random();
        assert!(g.admit(&local, &greedy, &addr(10, 0)));
        for i in 1..=250u8 {
            assert!(g.admit(&local, &greedy, &addr(10, i)));
            assert!(g.admit(&local, &greedy, &addr(11, i)));
        }
        assert_eq!(g.len(), 1);
        assert_eq!(g.members.len(), 1);
        // Its subnet still counts it: one more peer of its bucket fits there (cap 2), the
        // next does not.
        let d = |p: &PeerId| kad::KBucketKey::from(local).distance(&kad::KBucketKey::from(*p));
        let same_bucket: Vec<PeerId> = std::iter::repeat_with(PeerId::random)
            .filter(|p| d(p).ilog2() == d(&greedy).ilog2())
            .take(2)
            .collect();
        assert!(g.admit(&local, &same_bucket[0], &addr(10, 0)));
        assert!(!g.admit(&local, &same_bucket[1], &addr(10, 0)));
        g.forget(&same_bucket[0]);
        // The per-subnet cap holds within a bucket: peers far from `local` share bucket 255
        // almost always; count those admitted in one subnet.
        let peers: Vec<PeerId> = (0..64).map(|_| PeerId::random()).collect();
        let mut by_bucket: HashMap<u32, usize> = HashMap::new();
        for p in &peers {
            let d = kad::KBucketKey::from(local).distance(&kad::KBucketKey::from(*p));
            if g.admit(&local, p, &addr(20, 1)) {
                *by_bucket.entry(d.ilog2().unwrap_or(0)).or_default() += 1;
            }
        }
        assert!(by_bucket
            .values()
            .all(|n| *n <= MAX_PEERS_PER_SUBNET_PER_BUCKET));
        // An evicted peer frees its place for another.
        let admitted: Vec<PeerId> = peers
            .iter()
            .filter(|p| g.at.contains_key(*p))
            .copied()
            .collect();
        let before = g.len();
        for p in &admitted {
            g.forget(p);
        }
        assert_eq!(g.len(), before - admitted.len());
        g.forget(&greedy);
        assert!(g.is_empty() && g.members.is_empty());
        assert!(g.admit(&local, &peers[0], &addr(20, 1)));
        // A peer kad never took (pending, then dropped without an event) keeps its place
        // for a grace period, then loses it; one in the table keeps it.
        assert!(g.admit(&local, &peers[1], &addr(30, 1)));
        let table = HashSet::from([peers[0]]);
        g.reconcile(&table, Instant::now());
        assert_eq!(g.len(), 2);
        g.reconcile(
            &table,
            Instant::now() + PENDING_GRACE + Duration::from_secs(1),
        );
        assert_eq!(g.len(), 1);
        assert!(g.at.contains_key(&peers[0]) && g.since.len() == 1);
    }
}
