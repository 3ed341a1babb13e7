//! Data connections: bulk shard transfers outside libp2p.
//!
//! Over libp2p every shard byte is encrypted again by noise (ChaCha20-Poly1305, about
//! 1.5 GB/s per core here) and multiplexed by yamux; on the loopback benchmark those layers
//! took most of a get's CPU. Shards are already sealed by their owner and checked against
//! their content id by the reader, so the transport only has to keep requests and answers
//! private and authentic between two parties that libp2p has already authenticated.
//!
//! The client sends `OpenSession { key }` over the noise-authenticated shard protocol; the
//! key is fresh for this one connection. The holder remembers (key, requesting peer) under a
//! random single-use token for [`SESSION_TTL`] and answers with its data port and the token.
//! The client connects over plain TCP, writes the token, and then both sides exchange
//! frames: `len: u32 LE` then AES-256-GCM of an encoded `ShardRequest` (client to holder) or
//! `ShardResponse` (holder to client), with nonce = (direction, frame counter), so a frame
//! that is replayed, reordered, cut or altered fails to open and ends the connection. The
//! holder answers requests in order, as the peer that opened the session; a client pipelines
//! requests and matches answers by order.
//!
//! **Shard bodies travel unencrypted.** A frame carrying a shard (an answer to a read, or an
//! upload) is a sealed frame whose plaintext is only the shard's length (and, for an upload,
//! its content id) and a kind ([`ANSWER_SHARD_FOLLOWS`], [`REQUEST_SHARD_FOLLOWS`]); the
//! shard's bytes follow it on the wire as they are. A holder sends them with `sendfile`
//! straight from its page cache. Every other request and answer stays sealed. Sealing
//! shards again cost two AES-GCM passes and, on reads, two copies through user space per
//! byte: a quarter of a loopback get's CPU.
//!
//! What this gives up, and what it keeps:
//! - *Integrity is kept.* Shards are content-addressed. A reader checks each shard against
//!   its content id (BLAKE3), so bytes altered on the way are never used: the reader asks
//!   the same holder once more with the answer sealed whole (read through the store's
//!   checksum), then others. A holder stores an upload only if it hashes to the id sealed in
//!   its announcement, so altered bytes are refused at once, not kept while the owner
//!   believes the shard placed (and after its commit the owner asks each holder which shards
//!   it holds: every shard it stored must be there).
//! - *Confidentiality of the data is kept:* a shard is the owner's ciphertext, erasure-coded.
//! - *Given up, to an eavesdropper on the path:* the ciphertext itself (which every holder
//!   sees anyway, but which the holder's grant check would not hand to a stranger), and which
//!   shards a connection carries: a shard's BLAKE3 is its id, and the public records map ids
//!   to data. An observer could already see which holders a reader talks to and how much.
//!
//! A client that wants shard bytes sealed in transit too asks for it per request
//! ([`REQUEST_SEALED`]; `cpchain put/get --sealed-transfers`, [`DataClient::sealed`]): its
//! uploads go as sealed `Put`s and every answer it gets is sealed whole, at the old cost.
//!
//! (A node that injects faults for tests still sends its altered shards sealed, as
//! [`ANSWER_SHARD`].)

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crypto_accel::{block_nonce, Aead, AeadAlgo, ChunkId, Encode, IntervalKey, PublicKey, TAG_LEN};
use dht::wire::{
    ShardRequest, ShardResponse, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, SESSION_TOKEN_LEN,
};
use libp2p::PeerId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::lock;
use crate::store::ChunkRegion;

/// How long a session token waits for its connection.
pub const SESSION_TTL: Duration = Duration::from_secs(30);
/// Most tokens a holder keeps waiting at once.
pub const MAX_SESSIONS: usize = 4096;
/// Most data connections a holder serves at once (one thread each).
pub const MAX_CONNS: usize = 256;
/// A data connection with no request for this long is closed by the holder.
pub const IDLE: Duration = Duration::from_secs(120);
/// A started frame, request or answer, must be through within this.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(30);
/// The session token must arrive within this of connecting.
pub const TOKEN_DEADLINE: Duration = Duration::from_secs(5);
/// Largest frame body (ciphertext and tag) either side accepts.
pub const MAX_FRAME: usize = max(MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME) + TAG_LEN;
/// Data connections a client keeps to one holder.
pub const CONNS_PER_PEER: usize = 2;
/// Requests waiting on one connection before the client opens another to the same holder.
const BUSY: usize = 4;
/// How long a client answers from libp2p alone after a holder refused or failed a session.
const FALLBACK: Duration = Duration::from_secs(5);
/// How long a client waits for one answer on a data connection.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// Nonce stream of frames from client to holder.
const TO_HOLDER: u32 = 0;
/// Nonce stream of frames from holder to client.
const TO_CLIENT: u32 = 1;

/// One direction of a data connection: seals or opens its frames in order.
#[derive(Debug)]
pub struct FrameCipher {
    aead: Aead,
    stream: u32,
    next: u64,
}

impl FrameCipher {
    fn new(key: &[u8; 32], stream: u32) -> Result<FrameCipher> {
        let aead = Aead::new(AeadAlgo::Aes256Gcm, &IntervalKey::from_bytes(*key))
            .context("keying a data connection")?;
        Ok(FrameCipher {
            aead,
            stream,
            next: 0,
        })
    }

    /// The client's pair: (sealer of requests, opener of answers).
    pub fn client(key: &[u8; 32]) -> Result<(FrameCipher, FrameCipher)> {
        Ok((Self::new(key, TO_HOLDER)?, Self::new(key, TO_CLIENT)?))
    }

    /// The holder's pair: (sealer of answers, opener of requests).
    pub fn holder(key: &[u8; 32]) -> Result<(FrameCipher, FrameCipher)> {
        Ok((Self::new(key, TO_CLIENT)?, Self::new(key, TO_HOLDER)?))
    }

    fn nonce(&mut self) -> Result<[u8; 12]> {
        let n = block_nonce(self.stream, self.next, 0)?;
        self.next = self
            .next
            .checked_add(1)
            .context("a data connection ran out of nonces")?;
        Ok(n)
    }

    /// Seals `frame` in place: it holds 4 bytes of room for the length, then the plaintext;
    /// afterwards it is the whole wire frame.
    pub fn seal(&mut self, frame: &mut Vec<u8>) -> Result<()> {
        anyhow::ensure!(frame.len() >= 4, "a frame needs room for its length");
        let body = frame.len() - 4 + TAG_LEN;
        anyhow::ensure!(body <= MAX_FRAME, "a {body}-byte frame is over the limit");
        let nonce = self.nonce()?;
        let tag = self.aead.seal_in_place(nonce, &[], &mut frame[4..])?;
        frame.extend_from_slice(&tag);
        frame[..4].copy_from_slice(&(body as u32).to_le_bytes());
        Ok(())
    }

    /// Opens a frame body (ciphertext and tag, length already read) in place into its
    /// plaintext.
    pub fn open(&mut self, body: &mut Vec<u8>) -> Result<()> {
        let nonce = self.nonce()?;
        self.aead
            .open_in_place(nonce, &[], body)
            .map_err(|_| anyhow::anyhow!("a data frame failed authentication"))?;
        body.truncate(body.len() - TAG_LEN);
        Ok(())
    }
}

/// A frame body's length from its 4-byte prefix, bounded.
pub fn body_len(prefix: [u8; 4]) -> Result<usize> {
    let n = u32::from_le_bytes(prefix) as usize;
    anyhow::ensure!(
        (TAG_LEN..=MAX_FRAME).contains(&n),
        "a data frame of {n} bytes is out of bounds ({TAG_LEN}..={MAX_FRAME})"
    );
    Ok(n)
}

/// Last plaintext byte of a request frame: the rest is an encoded `ShardRequest`.
pub const REQUEST_ENCODED: u8 = 0;
/// Last plaintext byte of a request frame: the rest is the length (`u32` LE) and content id
/// (32 bytes) of a shard to store (a `Put`) whose raw bytes follow the frame on the wire,
/// unsealed. The holder stores them only if they hash to that id: bytes altered on the way
/// are refused, not kept as a shard the owner then believes placed.
pub const REQUEST_SHARD_FOLLOWS: u8 = 1;

/// Last plaintext byte of a request frame: the rest is an encoded `ShardRequest` whose
/// answer must be sealed whole, a shard included (a client that keeps shards sealed in
/// transit).
pub const REQUEST_SEALED: u8 = 2;

/// A request frame buffer holding the encoding of `req` and its kind byte
/// ([`REQUEST_SEALED`] when `sealed`, else [`REQUEST_ENCODED`]) after room for the length,
/// encoded in place (no intermediate buffer); sized so that neither the encoding nor the
/// seal's tag makes it grow.
pub fn frame_encoding(req: &ShardRequest, sealed: bool) -> Vec<u8> {
    let mut f = Vec::with_capacity(4 + req.encoded_len_bound() + 1 + TAG_LEN);
    f.extend_from_slice(&[0; 4]);
    req.encode(&mut f);
    f.push(if sealed {
        REQUEST_SEALED
    } else {
        REQUEST_ENCODED
    });
    f
}

/// Length of the plaintext of an upload announcement: length, content id, kind.
const UPLOAD_ANNOUNCEMENT: usize = 4 + 32 + 1;

/// `len` if a shard of that many bytes is within [`dht::wire::MAX_SHARD_BYTES`].
fn shard_len(len: usize) -> Result<usize, String> {
    if len > dht::wire::MAX_SHARD_BYTES {
        return Err(format!("a {len}-byte shard is over the limit"));
    }
    Ok(len)
}

/// A request frame buffer announcing shard `id` of `len` bytes to store, sent after it
/// unsealed.
fn put_frame(id: &ChunkId, len: usize) -> Result<Vec<u8>, String> {
    shard_len(len)?;
    let mut f = Vec::with_capacity(4 + UPLOAD_ANNOUNCEMENT + TAG_LEN);
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(&(len as u32).to_le_bytes());
    f.extend_from_slice(id.as_bytes());
    f.push(REQUEST_SHARD_FOLLOWS);
    Ok(f)
}

/// The content id and length of the shard an opened request announces, if it announces one.
fn upload_announced(body: &[u8]) -> Result<Option<(ChunkId, usize)>, String> {
    if body.last() != Some(&REQUEST_SHARD_FOLLOWS) {
        return Ok(None);
    }
    if body.len() != UPLOAD_ANNOUNCEMENT {
        return Err("a garbled upload announcement".into());
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&body[..4]);
    let n = shard_len(u32::from_le_bytes(len) as usize)?;
    let mut id = [0u8; 32];
    id.copy_from_slice(&body[4..36]);
    Ok(Some((ChunkId::from_bytes(id), n)))
}

// ---------------------------------------------------------------------------------------
// Holder side.

/// What a holder's data connection does with one decoded request.
pub trait Answer: Send + Sync + 'static {
    /// Answers `req` (an encoded `ShardRequest`) as peer `from`: either appends the answer
    /// (see [`put_answer`]) to `out`, or, only if `unsealed` allows it, returns the stored
    /// shard that is the answer, to be sent unsealed after its length (then `out` is left as
    /// it was).
    fn answer(
        &self,
        req: &[u8],
        from: Option<&PublicKey>,
        unsealed: bool,
        out: &mut Vec<u8>,
    ) -> Option<ChunkRegion>;

    /// Answers a `Put` of `shard` (received unsealed, announced as content id `id`) as peer
    /// `from`, appending the answer to `out`. Bytes that do not hash to `id` were altered on
    /// the way and must not be stored.
    fn put(&self, id: ChunkId, shard: Vec<u8>, from: Option<&PublicKey>, out: &mut Vec<u8>);
}

#[derive(Debug)]
struct Waiting {
    key: [u8; 32],
    from: Option<PublicKey>,
    until: Instant,
}

/// A holder's data listener and its sessions.
#[derive(Debug)]
pub struct DataServer {
    port: u16,
    sessions: Mutex<HashMap<[u8; SESSION_TOKEN_LEN], Waiting>>,
    conns: AtomicUsize,
}

impl DataServer {
    /// Listens on `ip:port` (0 = any free port) and serves data connections with `answer`
    /// on threads of their own.
    pub fn start(ip: IpAddr, port: u16, answer: Arc<dyn Answer>) -> Result<Arc<DataServer>> {
        let listener = TcpListener::bind((ip, port))
            .with_context(|| format!("binding the data listener to {ip}:{port}"))?;
        let port = listener.local_addr()?.port();
        let server = Arc::new(DataServer {
            port,
            sessions: Mutex::new(HashMap::new()),
            conns: AtomicUsize::new(0),
        });
        let me = Arc::clone(&server);
        std::thread::Builder::new()
            .name("cpchain-data-accept".into())
            .spawn(move || me.accept(listener, answer))
            .context("starting the data listener")?;
        tracing::info!("data connections on {ip}:{port}");
        Ok(server)
    }

    /// Registers a session for `from` keyed with `key`; the answer to `OpenSession`.
    pub fn open_session(&self, from: Option<PublicKey>, key: [u8; 32]) -> ShardResponse {
        let mut token = [0u8; SESSION_TOKEN_LEN];
        if rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut token).is_err() {
            return ShardResponse::Failed("no randomness for a session token".into());
        }
        let now = Instant::now();
        let mut s = lock(&self.sessions);
        if s.len() >= MAX_SESSIONS {
            s.retain(|_, w| w.until > now);
        }
        if s.len() >= MAX_SESSIONS {
            return ShardResponse::Failed("too many data sessions waiting; retry".into());
        }
        s.insert(
            token,
            Waiting {
                key,
                from,
                until: now + SESSION_TTL,
            },
        );
        ShardResponse::Session {
            port: self.port,
            token,
        }
    }

    /// Takes the session of `token` if it is waiting and not expired.
    fn take(&self, token: &[u8; SESSION_TOKEN_LEN]) -> Option<Waiting> {
        lock(&self.sessions)
            .remove(token)
            .filter(|w| w.until > Instant::now())
    }

    fn accept(self: Arc<Self>, listener: TcpListener, answer: Arc<dyn Answer>) {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("accepting a data connection: {e}");
                    continue;
                }
            };
            if self.conns.fetch_add(1, Ordering::AcqRel) >= MAX_CONNS {
                self.conns.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!("refusing a data connection: {MAX_CONNS} already open");
                continue;
            }
            let (me, answer) = (Arc::clone(&self), Arc::clone(&answer));
            let spawned = std::thread::Builder::new()
                .name("cpchain-data".into())
                .spawn(move || {
                    if let Err(e) = me.serve(stream, answer.as_ref()) {
                        tracing::debug!("data connection ended: {e:#}");
                    }
                    me.conns.fetch_sub(1, Ordering::AcqRel);
                });
            if let Err(e) = spawned {
                self.conns.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!("starting a data connection thread: {e}");
            }
        }
    }

    /// Serves one connection until the client closes it, it idles, or a frame is bad.
    fn serve(&self, mut stream: TcpStream, answer: &dyn Answer) -> Result<()> {
        stream.set_nodelay(true)?;
        let mut token = [0u8; SESSION_TOKEN_LEN];
        read_by(&stream, &mut token, Instant::now() + TOKEN_DEADLINE)
            .context("reading the session token")?;
        let w = self
            .take(&token)
            .context("unknown or expired session token")?;
        stream.set_read_timeout(Some(IDLE))?;
        let (mut sealer, mut opener) = FrameCipher::holder(&w.key)?;
        // Reused across answers (answers of one connection are mostly shards of one size,
        // so after the first its capacity fits them): no allocation per answer.
        let mut out = Vec::new();
        loop {
            // Idle between frames for up to IDLE (no read may pause longer); a length split
            // over reads must be complete within FRAME_DEADLINE. The usual frame costs no
            // more system calls than reading it.
            let mut prefix = [0u8; 4];
            match stream.read(&mut prefix) {
                Ok(0) => return Ok(()),
                Ok(4) => {}
                Ok(got) => {
                    read_by(&stream, &mut prefix[got..], Instant::now() + FRAME_DEADLINE)
                        .context("reading a frame")?;
                }
                Err(e) => return Err(e).context("waiting for a frame"),
            }
            let n = body_len(prefix)?;
            let deadline = Instant::now() + FRAME_DEADLINE;
            let mut body = read_vec_by(&stream, n, deadline).context("reading a frame")?;
            opener.open(&mut body)?;
            out.clear();
            out.extend_from_slice(&[0; 4]);
            let region = match upload_announced(&body).map_err(anyhow::Error::msg)? {
                Some((id, len)) => {
                    // The shard follows its frame and must be through by the same deadline.
                    let shard = read_vec_by(&stream, len, deadline).context("reading a shard")?;
                    answer.put(id, shard, w.from.as_ref(), &mut out);
                    None
                }
                None => {
                    let unsealed = match body.pop() {
                        Some(REQUEST_ENCODED) => true,
                        Some(REQUEST_SEALED) => false,
                        _ => anyhow::bail!("a request of unknown kind"),
                    };
                    answer.answer(&body, w.from.as_ref(), unsealed, &mut out)
                }
            };
            // The frame's reads changed the timeout: the next wait for a frame idles again.
            stream.set_read_timeout(Some(IDLE))?;
            drop(body);
            if let Some(r) = &region {
                out.truncate(4);
                put_follows(r.len(), &mut out).map_err(anyhow::Error::msg)?;
            }
            sealer.seal(&mut out)?;
            // A client that stops reading must not hold this thread: an answer, the shard
            // after it included, gets FRAME_DEADLINE to leave.
            let deadline = Instant::now() + FRAME_DEADLINE;
            Deadlined::new(&stream, deadline)
                .write_all(&out)
                .context("writing an answer")?;
            if let Some(r) = region {
                r.send_to(&stream, deadline).context("sending a shard")?;
            }
            if out.capacity() > 4 << 20 {
                out = Vec::new();
            }
        }
    }
}

/// A connection whose reads and writes must all end by `deadline`: each system call is
/// given the time left as its timeout, so bytes that trickle in (or out, to a client that
/// reads slowly) cannot stretch a frame past the deadline.
struct Deadlined<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl<'a> Deadlined<'a> {
    fn new(stream: &'a TcpStream, deadline: Instant) -> Deadlined<'a> {
        Deadlined { stream, deadline }
    }

    fn left(&self) -> std::io::Result<Duration> {
        crate::store::time_left(self.deadline)
    }
}

impl Read for Deadlined<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

impl Write for Deadlined<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        let mut s = self.stream;
        s.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fills `buf` from `stream`, failing once `deadline` passes however the bytes trickle in.
fn read_by(stream: &TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
    Deadlined::new(stream, deadline).read_exact(buf)
}

/// Reads exactly `n` bytes from `stream` into a new buffer, failing once `deadline` passes
/// however the bytes trickle in.
fn read_vec_by(stream: &TcpStream, n: usize, deadline: Instant) -> std::io::Result<Vec<u8>> {
    // Read into spare capacity: no zeroing of a buffer about to be overwritten; and at most
    // `FRAME_PREALLOC` of it before the bytes come (see `net::read_frame`).
    let mut buf = Vec::with_capacity(n.min(super::net::FRAME_PREALLOC));
    Deadlined::new(stream, deadline)
        .take(n as u64)
        .read_to_end(&mut buf)?;
    if buf.len() != n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(buf)
}

/// Last plaintext byte of an answer frame: the rest is an encoded `ShardResponse`.
pub const ANSWER_ENCODED: u8 = 0;
/// Last plaintext byte of an answer frame: the rest is the raw bytes of a `Shard` answer
/// (read by the holder straight into the frame, kept by the client without a copy).
pub const ANSWER_SHARD: u8 = 1;

/// Last plaintext byte of an answer frame: the rest is the length (`u32` LE) of a shard
/// whose raw bytes follow the frame on the wire, unsealed (see the module docs).
pub const ANSWER_SHARD_FOLLOWS: u8 = 2;

/// Appends `resp`, encoded, and its kind byte to `out`.
pub fn put_answer(resp: &ShardResponse, out: &mut Vec<u8>) {
    resp.encode(out);
    out.push(ANSWER_ENCODED);
}

/// Appends the plaintext of an answer announcing a `len`-byte unsealed shard to `out`: the
/// length, then [`ANSWER_SHARD_FOLLOWS`].
fn put_follows(len: usize, out: &mut Vec<u8>) -> Result<(), String> {
    out.extend_from_slice(&(shard_len(len)? as u32).to_le_bytes());
    out.push(ANSWER_SHARD_FOLLOWS);
    Ok(())
}

/// The length of the unsealed shard an opened answer announces, if it is such an
/// announcement.
fn follows(body: &[u8]) -> Result<Option<usize>, String> {
    match body {
        [l0, l1, l2, l3, ANSWER_SHARD_FOLLOWS] => {
            shard_len(u32::from_le_bytes([*l0, *l1, *l2, *l3]) as usize).map(Some)
        }
        [.., ANSWER_SHARD_FOLLOWS] => Err("a garbled shard announcement".into()),
        _ => Ok(None),
    }
}

/// Reads an opened answer frame (see [`ANSWER_ENCODED`], [`ANSWER_SHARD`]).
pub fn read_answer(mut body: Vec<u8>) -> Result<ShardResponse, String> {
    match body.pop() {
        Some(ANSWER_SHARD) if body.len() <= dht::wire::MAX_SHARD_BYTES => {
            Ok(ShardResponse::Shard(body))
        }
        Some(ANSWER_SHARD) => Err(format!("a {}-byte shard is over the limit", body.len())),
        Some(ANSWER_ENCODED) => {
            ShardResponse::from_vec(body).map_err(|e| format!("a garbled answer: {e}"))
        }
        Some(k) => Err(format!("an answer of unknown kind {k}")),
        None => Err("an empty answer".into()),
    }
}

// ---------------------------------------------------------------------------------------
// Client side.

type Reply = oneshot::Sender<Result<Vec<u8>, String>>;
/// A request frame, the unsealed shard it announces (an upload), and who waits for the
/// answer.
type Outgoing = (Vec<u8>, Option<Arc<Vec<u8>>>, Reply);

/// A client's handle on one data connection.
#[derive(Debug, Clone)]
pub struct Conn {
    tx: mpsc::UnboundedSender<Outgoing>,
    load: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    /// How long one answer may take before the connection is retired.
    wait: Duration,
    /// Whether shard bytes stay sealed in transit both ways (see the module docs).
    sealed: bool,
}

impl Conn {
    /// Connects to `addr`, presents `token` and starts the connection's task on the
    /// current tokio runtime.
    pub async fn open(
        addr: SocketAddr,
        key: [u8; 32],
        token: [u8; SESSION_TOKEN_LEN],
    ) -> Result<Conn> {
        let mut stream =
            tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
                .await
                .with_context(|| format!("connecting to {addr}: no answer in 3 s"))?
                .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.write_all(&token).await?;
        let ciphers = FrameCipher::client(&key)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Conn {
            tx,
            load: Arc::new(AtomicUsize::new(0)),
            closed: Arc::new(AtomicBool::new(false)),
            wait: ANSWER_WAIT,
            sealed: false,
        };
        tokio::spawn(run_conn(stream, ciphers, rx, Arc::clone(&conn.closed)));
        Ok(conn)
    }

    /// The same connection, keeping shard bytes sealed in transit both ways.
    pub fn sealed(mut self) -> Conn {
        self.sealed = true;
        self
    }

    /// Sends `req`, encoded straight into its frame, and waits for the answer.
    pub async fn request(&self, req: &ShardRequest) -> Result<ShardResponse, String> {
        let frame = frame_encoding(req, self.sealed);
        read_answer(self.request_raw(frame, None).await?)
    }

    /// Uploads shard `id`: sent unsealed after its announcement, or as a sealed `Put` on a
    /// sealed connection (a copy into the frame); waits for the answer.
    pub async fn put(&self, id: &ChunkId, shard: Arc<Vec<u8>>) -> Result<ShardResponse, String> {
        if self.sealed {
            let req = ShardRequest::Put {
                bytes: shard.to_vec(),
            };
            return self.request(&req).await;
        }
        let frame = put_frame(id, shard.len())?;
        read_answer(self.request_raw(frame, Some(shard)).await?)
    }

    /// Sends one request frame (4 bytes of room, then the plaintext) and the unsealed shard
    /// it announces, if any, and waits for the opened answer frame.
    async fn request_raw(
        &self,
        frame: Vec<u8>,
        shard: Option<Arc<Vec<u8>>>,
    ) -> Result<Vec<u8>, String> {
        let (tx, rx) = oneshot::channel();
        self.load.fetch_add(1, Ordering::AcqRel);
        let sent = self.tx.send((frame, shard, tx)).is_ok();
        let r = if sent {
            match tokio::time::timeout(self.wait, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err("the data connection closed".into()),
                Err(_) => {
                    // A holder that stalls (stopped, overloaded) would stall every request
                    // queued behind this one: retire the connection, later requests open
                    // another or fall back to libp2p.
                    self.closed.store(true, Ordering::Release);
                    Err(format!("no answer in {} ms", self.wait.as_millis()))
                }
            }
        } else {
            Err("the data connection closed".into())
        };
        self.load.fetch_sub(1, Ordering::AcqRel);
        r
    }

    /// The same connection with another answer timeout (tests of stalled holders).
    #[cfg(test)]
    fn with_answer_wait(mut self, wait: Duration) -> Conn {
        self.wait = wait;
        self
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.tx.is_closed()
    }

    fn load(&self) -> usize {
        self.load.load(Ordering::Acquire)
    }
}

async fn run_conn(
    stream: tokio::net::TcpStream,
    (mut sealer, mut opener): (FrameCipher, FrameCipher),
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    closed: Arc<AtomicBool>,
) {
    let (mut rd, mut wr) = stream.into_split();
    // Answers as read and opened (in order, so the reader owns the opener), a shard that
    // follows its frame unsealed already read after it.
    let (ftx, mut frames) = mpsc::unbounded_channel::<Result<Vec<u8>, String>>();
    let reader = tokio::spawn(async move {
        loop {
            let r = read_answer_frame(&mut rd, &mut opener).await;
            let end = r.is_err();
            if ftx.send(r).is_err() || end {
                return;
            }
        }
    });
    let mut waiting: VecDeque<Reply> = VecDeque::new();
    let why = loop {
        tokio::select! {
            req = rx.recv() => {
                let Some((mut frame, shard, reply)) = req else { break "closed by the client".to_string() };
                if let Err(e) = sealer.seal(&mut frame) {
                    let _ = reply.send(Err(format!("{e:#}")));
                    continue;
                }
                waiting.push_back(reply);
                // A holder that stops reading must not hold this connection (and the
                // shard) for good: the request, its shard included, gets FRAME_DEADLINE.
                let sent = tokio::time::timeout(FRAME_DEADLINE, async {
                    wr.write_all(&frame).await?;
                    if let Some(shard) = &shard {
                        wr.write_all(shard).await?;
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break format!("writing: {e}"),
                    Err(_) => break format!("writing: stalled for {} s", FRAME_DEADLINE.as_secs()),
                }
            }
            body = frames.recv() => {
                let body = match body {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => break e,
                    None => break "the reader stopped".to_string(),
                };
                match waiting.pop_front() {
                    Some(reply) => {
                        let _ = reply.send(Ok(body));
                    }
                    None => break "an answer nobody asked for".to_string(),
                }
            }
        }
    };
    closed.store(true, Ordering::Release);
    reader.abort();
    rx.close();
    let err = format!("data connection lost ({why})");
    for reply in waiting.drain(..) {
        let _ = reply.send(Err(err.clone()));
    }
    while let Ok((_, _, reply)) = rx.try_recv() {
        let _ = reply.send(Err(err.clone()));
    }
}

/// Reads and opens one answer frame; for an answer announcing an unsealed shard, reads the
/// shard after it and returns it as an [`ANSWER_SHARD`] answer.
async fn read_answer_frame(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    opener: &mut FrameCipher,
) -> Result<Vec<u8>, String> {
    let mut prefix = [0u8; 4];
    rd.read_exact(&mut prefix)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    let n = body_len(prefix).map_err(|e| format!("{e:#}"))?;
    let mut body = read_n(rd, n, 0).await?;
    opener.open(&mut body).map_err(|e| format!("{e:#}"))?;
    let Some(len) = follows(&body)? else {
        return Ok(body);
    };
    // Room for the kind byte: appending it moves nothing.
    let mut shard = read_n(rd, len, 1).await?;
    shard.push(ANSWER_SHARD);
    Ok(shard)
}

/// Reads exactly `n` bytes into a buffer with `room` bytes of spare capacity after them.
async fn read_n(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    n: usize,
    room: usize,
) -> Result<Vec<u8>, String> {
    // Read into spare capacity: no zeroing of a buffer about to be overwritten; and at most
    // `FRAME_PREALLOC` of it before the bytes come (see `net::read_frame`).
    let mut buf = Vec::with_capacity(n.min(super::net::FRAME_PREALLOC) + room);
    (&mut *rd)
        .take(n as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    if buf.len() != n {
        return Err("reading: the connection closed inside an answer".into());
    }
    Ok(buf)
}

#[derive(Debug, Default)]
struct PeerConns {
    conns: Vec<Conn>,
    /// Until when this holder is asked over libp2p only.
    fallback_until: Option<Instant>,
}

/// A client's data connections, by holder.
#[derive(Debug, Default)]
pub struct DataClient {
    peers: Mutex<HashMap<PeerId, Arc<tokio::sync::Mutex<PeerConns>>>>,
    /// Whether shard bytes stay sealed in transit (see the module docs).
    sealed: bool,
}

/// Where and how to connect to a holder: the result of `OpenSession`.
#[derive(Debug, Clone, Copy)]
pub struct SessionOffer {
    /// The holder's data listener.
    pub addr: SocketAddr,
    /// The key the client chose.
    pub key: [u8; 32],
    /// The holder's token.
    pub token: [u8; SESSION_TOKEN_LEN],
}

impl DataClient {
    /// A client whose connections keep shard bytes sealed in transit both ways: an
    /// eavesdropper sees neither the ciphertext nor the shards' ids (only sizes, timing and
    /// which holders), for about a quarter more CPU on a get.
    pub fn sealed() -> DataClient {
        DataClient {
            sealed: true,
            ..DataClient::default()
        }
    }

    /// A data connection to `peer` with room for one more request, opening one with
    /// `session` when none has room and fewer than [`CONNS_PER_PEER`] are open. `None` means
    /// ask over libp2p: the holder offers no data connections (or just failed one).
    pub async fn conn<F, Fut>(&self, peer: PeerId, session: F) -> Option<Conn>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<SessionOffer, String>>,
    {
        let state = Arc::clone(lock(&self.peers).entry(peer).or_default());
        let mut st = state.lock().await;
        st.conns.retain(|c| !c.is_closed());
        if st.fallback_until.is_some_and(|t| t > Instant::now()) {
            return None;
        }
        let best = st.conns.iter().min_by_key(|c| c.load()).cloned();
        if let Some(c) = &best {
            if c.load() < BUSY || st.conns.len() >= CONNS_PER_PEER {
                return best;
            }
        }
        let opened = match session().await {
            Ok(o) => Conn::open(o.addr, o.key, o.token)
                .await
                .map(|c| if self.sealed { c.sealed() } else { c })
                .map_err(|e| format!("{e:#}")),
            Err(e) => Err(e),
        };
        match opened {
            Ok(c) => {
                st.conns.push(c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::debug!("no data connection to {peer}: {e}");
                if best.is_none() {
                    st.fallback_until = Some(Instant::now() + FALLBACK);
                }
                best
            }
        }
    }

    /// A fresh random key for a session.
    pub fn session_key() -> Result<[u8; 32], String> {
        IntervalKey::generate()
            .map(|k| *k.as_bytes())
            .map_err(|e| format!("no randomness for a session key: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_accel::Decode;
    use dht::wire::ShardRequest;

    /// Answers `Get` of block b with a large shard of `200_000 + b` bytes `b`: for odd
    /// blocks from a chunk store (sent unsealed unless the request asks for it sealed), for
    /// even blocks sealed in the frame; a sealed `Put` by storing it under its hash;
    /// `Held` for [`STALL_ID`] after 600 ms; anything else with `Refused` naming the peer.
    struct Echo {
        store: crate::store::ChunkStore,
        _dir: tempfile::TempDir,
    }

    /// The data id whose `Held` request the test holder answers only after a stall.
    const STALL_ID: [u8; 32] = [0xEE; 32];

    fn stored(block: u64) -> crypto_accel::ChunkId {
        crypto_accel::ChunkId::of(&block.to_le_bytes())
    }

    fn echo() -> Echo {
        let dir = tempfile::tempdir().unwrap();
        let store =
            crate::store::ChunkStore::open(dir.path(), crate::store::StoreConfig::default())
                .unwrap();
        for b in (1..64u64).step_by(2) {
            store
                .put(stored(b), vec![b as u8; 200_000 + b as usize])
                .unwrap();
        }
        Echo { store, _dir: dir }
    }

    impl Answer for Echo {
        fn answer(
            &self,
            req: &[u8],
            from: Option<&PublicKey>,
            unsealed: bool,
            out: &mut Vec<u8>,
        ) -> Option<ChunkRegion> {
            let resp = match ShardRequest::from_bytes(req) {
                Ok(ShardRequest::Get { block, .. }) if block % 2 == 1 && unsealed => {
                    return Some(self.store.region(&stored(block)).unwrap());
                }
                Ok(ShardRequest::Get { block, .. }) if block % 2 == 1 => {
                    // Sealed whole, as a holder answers a client that keeps shards sealed.
                    self.store.get_into(&stored(block), out).unwrap();
                    out.push(ANSWER_SHARD);
                    return None;
                }
                Ok(ShardRequest::Get { block, .. }) => {
                    // Raw, as a faulty holder answers a read: the bytes, then the kind.
                    out.extend(std::iter::repeat_n(block as u8, 200_000 + block as usize));
                    out.push(ANSWER_SHARD);
                    return None;
                }
                Ok(ShardRequest::Put { bytes }) => {
                    let id = ChunkId::of(&bytes);
                    match self.store.put(id, bytes) {
                        Ok(()) => ShardResponse::Stored,
                        Err(e) => ShardResponse::Failed(e.to_string()),
                    }
                }
                Ok(ShardRequest::Held { data }) if *data.as_bytes() == STALL_ID => {
                    std::thread::sleep(Duration::from_millis(600));
                    ShardResponse::Held(Vec::new())
                }
                Ok(_) => ShardResponse::Refused(format!(
                    "as {}",
                    from.map(|k| hex::encode(k.as_bytes())).unwrap_or_default()
                )),
                Err(e) => ShardResponse::Refused(format!("malformed: {e}")),
            };
            put_answer(&resp, out);
            None
        }

        /// Stores the shard under its hash if that is the announced id, as a holder does.
        fn put(&self, id: ChunkId, shard: Vec<u8>, _: Option<&PublicKey>, out: &mut Vec<u8>) {
            let resp = if ChunkId::of(&shard) != id {
                ShardResponse::Failed("altered".into())
            } else {
                match self.store.put(id, shard) {
                    Ok(()) => ShardResponse::Stored,
                    Err(e) => ShardResponse::Failed(e.to_string()),
                }
            };
            put_answer(&resp, out);
        }
    }

    fn get(block: u64) -> ShardRequest {
        ShardRequest::Get {
            id: crypto_accel::ChunkId::of(b"x"),
            data: crypto_accel::DataId::from_bytes([1; 32]),
            block,
        }
    }

    /// A frame buffer holding `plaintext` after room for the length.
    fn frame_of(plaintext: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(4 + plaintext.len() + TAG_LEN);
        f.extend_from_slice(&[0; 4]);
        f.extend_from_slice(plaintext);
        f
    }

    fn server() -> Arc<DataServer> {
        server_for(Arc::new(echo()))
    }

    fn server_for(echo: Arc<Echo>) -> Arc<DataServer> {
        DataServer::start(IpAddr::from([127, 0, 0, 1]), 0, echo).unwrap()
    }

    fn offer(s: &DataServer, from: Option<PublicKey>) -> SessionOffer {
        let key = DataClient::session_key().unwrap();
        match s.open_session(from, key) {
            ShardResponse::Session { port, token } => SessionOffer {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                key,
                token,
            },
            other => panic!("{other:?}"),
        }
    }

    use super::super::test_runtime as rt;

    #[test]
    fn frames_open_only_in_order_and_unaltered() {
        let key = [7u8; 32];
        let (mut cs, mut co) = FrameCipher::client(&key).unwrap();
        let (mut hs, mut ho) = FrameCipher::holder(&key).unwrap();
        let mut f = frame_of(b"hello holder");
        cs.seal(&mut f).unwrap();
        let n = body_len(f[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, f.len() - 4);
        let mut body = f[4..].to_vec();
        ho.open(&mut body).unwrap();
        assert_eq!(body, b"hello holder");
        // A replay of the same frame fails (the counter moved on).
        let mut again = f[4..].to_vec();
        assert!(ho.open(&mut again).is_err());
        // An answer sealed by the holder opens on the client, not with the request opener.
        let (mut f1, mut f2) = (frame_of(b"one"), frame_of(b"two"));
        hs.seal(&mut f1).unwrap();
        hs.seal(&mut f2).unwrap();
        // Reordered: the second frame first fails.
        let mut b2 = f2[4..].to_vec();
        assert!(co.open(&mut b2).is_err());
        // A flipped bit anywhere fails.
        let (mut cs2, _) = FrameCipher::client(&key).unwrap();
        let (_, mut ho2) = FrameCipher::holder(&key).unwrap();
        let mut f3 = frame_of(b"payload");
        cs2.seal(&mut f3).unwrap();
        for i in 4..f3.len() {
            let mut b = f3[4..].to_vec();
            b[i - 4] ^= 1;
            let (_, mut fresh) = FrameCipher::holder(&key).unwrap();
            assert!(fresh.open(&mut b).is_err(), "flip at {i}");
        }
        let mut ok = f3[4..].to_vec();
        ho2.open(&mut ok).unwrap();
        // A wrong key fails.
        let (_, mut other) = FrameCipher::holder(&[8u8; 32]).unwrap();
        let mut b = frame_of(b"x");
        FrameCipher::client(&key).unwrap().0.seal(&mut b).unwrap();
        assert!(other.open(&mut b[4..].to_vec()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_frame_bodies_are_refused_without_panicking(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            prefix in proptest::prelude::any::<[u8; 4]>(),
        ) {
            let (_, mut opener) = FrameCipher::holder(&[9; 32]).unwrap();
            let mut b = body;
            proptest::prop_assert!(opener.open(&mut b).is_err());
            let _ = body_len(prefix);
        }
    }

    #[test]
    fn a_stalled_answer_retires_the_connection_and_the_next_request_opens_another() {
        let s = server();
        let peer = PeerId::random();
        let dc = DataClient::default();
        rt().block_on(async {
            let first = dc
                .conn(peer, || async { Ok(offer(&s, None)) })
                .await
                .unwrap();
            let short = first.clone().with_answer_wait(Duration::from_millis(100));
            let stall = ShardRequest::Held {
                data: crypto_accel::DataId::from_bytes(STALL_ID),
            };
            let e = short.request(&stall).await.unwrap_err();
            assert!(e.contains("no answer in 100 ms"), "{e}");
            assert!(first.is_closed(), "the stalled connection is retired");
            let next = dc
                .conn(peer, || async { Ok(offer(&s, None)) })
                .await
                .unwrap();
            assert!(!Arc::ptr_eq(&next.closed, &first.closed));
            assert!(matches!(
                next.request(&get(4)).await,
                Ok(ShardResponse::Shard(b)) if b.len() == 200_004
            ));
        });
    }

    #[test]
    fn uploads_travel_unsealed_between_sealed_frames_and_are_stored_by_their_hash() {
        let echo = Arc::new(echo());
        let s = server_for(Arc::clone(&echo));
        let o = offer(&s, None);
        rt().block_on(async {
            let c = Conn::open(o.addr, o.key, o.token).await.unwrap();
            let (one, two) = (Arc::new(vec![0x5A; 150_000]), Arc::new(vec![7; 10]));
            // Uploads pipelined with reads of both kinds: frames and ciphers stay in step.
            let (r3, r2) = (get(3), get(2));
            let (id1, id2) = (ChunkId::of(&one), ChunkId::of(&two));
            let (a, b, g1, g2) = tokio::join!(
                c.put(&id1, Arc::clone(&one)),
                c.put(&id2, Arc::clone(&two)),
                c.request(&r3),
                c.request(&r2),
            );
            assert_eq!(a, Ok(ShardResponse::Stored));
            assert_eq!(b, Ok(ShardResponse::Stored));
            assert_eq!(g1, Ok(ShardResponse::Shard(vec![3; 200_003])));
            assert_eq!(g2, Ok(ShardResponse::Shard(vec![2; 200_002])));
            assert_eq!(echo.store.get(&id1).unwrap(), *one);
            assert_eq!(echo.store.get(&id2).unwrap(), *two);
            // Bytes that are not the announced shard (altered on the way) are not kept.
            let other = Arc::new(vec![9; 500]);
            let r = c.put(&id1, Arc::clone(&other)).await;
            assert_eq!(r, Ok(ShardResponse::Failed("altered".into())));
            assert!(!echo.store.contains(&ChunkId::of(&other)));
            // Over the limit: refused before anything is sent; the connection goes on.
            let big = Arc::new(vec![0; dht::wire::MAX_SHARD_BYTES + 1]);
            let e = c.put(&id1, big).await.unwrap_err();
            assert!(e.contains("over the limit"), "{e}");
            assert!(c.request(&get(5)).await.is_ok());
        });
    }

    #[test]
    fn a_sealed_client_gets_every_shard_sealed_whole_and_uploads_sealed_puts() {
        let echo = Arc::new(echo());
        let s = server_for(Arc::clone(&echo));
        // On the wire: a sealed request for a shard the holder would otherwise send
        // unsealed comes back as one sealed frame holding the shard and its kind.
        let o = offer(&s, None);
        let mut raw = TcpStream::connect(o.addr).unwrap();
        raw.write_all(&o.token).unwrap();
        let (mut sealer, mut opener) = FrameCipher::client(&o.key).unwrap();
        let mut f = frame_encoding(&get(3), true);
        sealer.seal(&mut f).unwrap();
        raw.write_all(&f).unwrap();
        let mut prefix = [0u8; 4];
        raw.read_exact(&mut prefix).unwrap();
        let n = body_len(prefix).unwrap();
        assert_eq!(n, 200_003 + 1 + TAG_LEN);
        let mut body = vec![0u8; n];
        raw.read_exact(&mut body).unwrap();
        opener.open(&mut body).unwrap();
        assert_eq!(
            read_answer(body),
            Ok(ShardResponse::Shard(vec![3; 200_003]))
        );
        // Through the client: both kinds of shard, and an upload, on a sealed connection.
        let o = offer(&s, None);
        rt().block_on(async {
            let c = Conn::open(o.addr, o.key, o.token).await.unwrap().sealed();
            let r = c.request(&get(5)).await;
            assert_eq!(r, Ok(ShardResponse::Shard(vec![5; 200_005])));
            let r = c.request(&get(4)).await;
            assert_eq!(r, Ok(ShardResponse::Shard(vec![4; 200_004])));
            let shard = Arc::new(vec![0x33; 1234]);
            let id = ChunkId::of(&shard);
            assert_eq!(c.put(&id, shard).await, Ok(ShardResponse::Stored));
            assert!(echo.store.contains(&id));
        });
    }

    #[test]
    fn an_upload_cut_short_ends_the_connection_and_stores_nothing() {
        let echo = Arc::new(echo());
        let s = server_for(Arc::clone(&echo));
        let o = offer(&s, None);
        let chunks = echo.store.stats().chunks;
        let mut raw = TcpStream::connect(o.addr).unwrap();
        raw.write_all(&o.token).unwrap();
        let (mut sealer, _) = FrameCipher::client(&o.key).unwrap();
        let mut f = put_frame(&ChunkId::of(&[1; 1000]), 1000).unwrap();
        sealer.seal(&mut f).unwrap();
        raw.write_all(&f).unwrap();
        raw.write_all(&[1; 999]).unwrap();
        raw.shutdown(std::net::Shutdown::Write).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The holder hangs up without an answer.
        let mut buf = Vec::new();
        let _ = raw.read_to_end(&mut buf);
        assert!(buf.is_empty(), "answered {} bytes", buf.len());
        assert_eq!(echo.store.stats().chunks, chunks);
    }

    #[test]
    fn a_shard_announcement_is_exact_and_bounded() {
        let mut a = Vec::new();
        let k = ANSWER_SHARD_FOLLOWS;
        put_follows(1234, &mut a).unwrap();
        assert_eq!(follows(&a), Ok(Some(1234)));
        // The kinds of answers and requests are told apart.
        assert_eq!(upload_announced(&a), Ok(None));
        assert!(put_follows(dht::wire::MAX_SHARD_BYTES + 1, &mut Vec::new()).is_err());
        let id = ChunkId::of(b"x");
        assert!(put_frame(&id, dht::wire::MAX_SHARD_BYTES + 1).is_err());
        let up = put_frame(&id, 77).unwrap();
        assert_eq!(upload_announced(&up[4..]), Ok(Some((id, 77))));
        assert!(upload_announced(&up[5..]).is_err(), "short");
        let mut long = up[4..].to_vec();
        long.insert(0, 0);
        assert!(upload_announced(&long).is_err(), "long");
        let mut over = up[4..].to_vec();
        over[..4].copy_from_slice(&(dht::wire::MAX_SHARD_BYTES as u32 + 1).to_le_bytes());
        assert!(upload_announced(&over)
            .unwrap_err()
            .contains("over the limit"));
        let over = (dht::wire::MAX_SHARD_BYTES as u32 + 1).to_le_bytes();
        let e = follows(&[over[0], over[1], over[2], over[3], k]);
        assert!(e.unwrap_err().contains("over the limit"));
        // Too short, too long: garbled, not guessed at.
        assert!(follows(&[1, 2, k]).is_err());
        assert!(follows(&[1, 2, 3, 4, 5, k]).is_err());
        // Other kinds are not announcements.
        let mut enc = Vec::new();
        put_answer(&ShardResponse::NotFound, &mut enc);
        assert_eq!(follows(&enc), Ok(None));
        assert_eq!(follows(&[]), Ok(None));
        let up = put_frame(&id, 77).unwrap();
        assert_eq!(follows(&up[4..]), Ok(None));
        let req = frame_encoding(&get(1), false);
        assert_eq!(upload_announced(&req[4..]), Ok(None));
    }

    #[test]
    fn answers_say_how_to_read_them() {
        let mut raw = vec![7u8; 10];
        raw.push(ANSWER_SHARD);
        assert_eq!(read_answer(raw), Ok(ShardResponse::Shard(vec![7; 10])));
        let mut enc = Vec::new();
        put_answer(&ShardResponse::NotFound, &mut enc);
        assert_eq!(read_answer(enc), Ok(ShardResponse::NotFound));
        let mut garbled = vec![1, 2, 3];
        garbled.push(ANSWER_ENCODED);
        assert!(read_answer(garbled).is_err());
        assert!(read_answer(vec![1, 2, 9]).is_err());
        assert!(read_answer(Vec::new()).is_err());
        let mut big = vec![0u8; dht::wire::MAX_SHARD_BYTES + 1];
        big.push(ANSWER_SHARD);
        assert!(read_answer(big).is_err());
    }

    #[test]
    fn a_request_encoded_into_its_frame_is_the_same_frame_and_never_grows() {
        let req = ShardRequest::Put {
            bytes: vec![3; 100_000],
        };
        let mut f = frame_encoding(&req, false);
        let mut plain = req.to_bytes();
        plain.push(REQUEST_ENCODED);
        assert_eq!(f, frame_of(&plain));
        let (cap, ptr) = (f.capacity(), f.as_ptr());
        let (mut sealer, mut opener) = (
            FrameCipher::client(&[8; 32]).unwrap().0,
            FrameCipher::holder(&[8; 32]).unwrap().1,
        );
        sealer.seal(&mut f).unwrap();
        assert_eq!(
            (f.capacity(), f.as_ptr()),
            (cap, ptr),
            "the seal moved the frame"
        );
        let mut body = f[4..].to_vec();
        opener.open(&mut body).unwrap();
        assert_eq!(body, plain);
    }

    #[test]
    fn frame_lengths_are_bounded() {
        assert!(body_len(0u32.to_le_bytes()).is_err());
        assert!(body_len((TAG_LEN as u32 - 1).to_le_bytes()).is_err());
        assert!(body_len((MAX_FRAME as u32 + 1).to_le_bytes()).is_err());
        assert!(body_len(u32::MAX.to_le_bytes()).is_err());
        assert_eq!(body_len((TAG_LEN as u32).to_le_bytes()).unwrap(), TAG_LEN);
    }

    #[test]
    fn pipelined_requests_come_back_in_order_as_the_session_peer() {
        let s = server();
        let me = crypto_accel::Keypair::from_seed([3; 32]).public();
        let o = offer(&s, Some(me));
        rt().block_on(async {
            let c = Conn::open(o.addr, o.key, o.token).await.unwrap();
            let mut handles = Vec::new();
            for b in 0..40u64 {
                let c = c.clone();
                handles.push(tokio::spawn(async move { (b, c.request(&get(b)).await) }));
            }
            for h in handles {
                let (b, r) = h.await.unwrap();
                let resp = r.unwrap();
                assert_eq!(
                    resp,
                    ShardResponse::Shard(vec![b as u8; 200_000 + b as usize])
                );
            }
            let held = ShardRequest::Held {
                data: crypto_accel::DataId::from_bytes([1; 32]),
            };
            let r = c.request(&held).await.unwrap();
            assert_eq!(
                r,
                ShardResponse::Refused(format!("as {}", hex::encode(me.as_bytes())))
            );
        });
    }

    #[test]
    fn tokens_are_single_use_and_unknown_tokens_get_nothing() {
        let s = server();
        let o = offer(&s, None);
        rt().block_on(async {
            let c = Conn::open(o.addr, o.key, o.token).await.unwrap();
            assert!(c.request(&get(1)).await.is_ok());
            // The same token again: the holder closes the connection without an answer.
            let again = Conn::open(o.addr, o.key, o.token).await.unwrap();
            let e = again.request(&get(1)).await.unwrap_err();
            assert!(e.contains("data connection"), "{e}");
            // A made-up token, likewise.
            let forged = Conn::open(o.addr, o.key, [0; SESSION_TOKEN_LEN])
                .await
                .unwrap();
            assert!(forged.request(&get(1)).await.is_err());
            // The first connection still works.
            assert!(c.request(&get(2)).await.is_ok());
        });
    }

    #[test]
    fn a_connection_keyed_wrong_is_closed_and_its_requests_fail() {
        let s = server();
        let o = offer(&s, None);
        rt().block_on(async {
            let c = Conn::open(o.addr, [0x55; 32], o.token).await.unwrap();
            let e = c.request(&get(1)).await.unwrap_err();
            assert!(e.contains("data connection"), "{e}");
            assert!(c.is_closed());
        });
    }

    #[test]
    fn garbage_after_the_token_ends_the_connection_without_harm() {
        let s = server();
        let o = offer(&s, None);
        let mut raw = TcpStream::connect(o.addr).unwrap();
        raw.write_all(&o.token).unwrap();
        // A frame announcing 4 GiB: refused before any allocation; the holder hangs up.
        raw.write_all(&u32::MAX.to_le_bytes()).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(raw.read(&mut buf).unwrap_or(0), 0);
        // The server still serves others.
        let o2 = offer(&s, None);
        rt().block_on(async {
            let c = Conn::open(o2.addr, o2.key, o2.token).await.unwrap();
            assert!(c.request(&get(3)).await.is_ok());
        });
    }

    #[test]
    fn a_token_that_trickles_in_is_cut_off_at_its_deadline() {
        let s = server();
        let o = offer(&s, None);
        // One byte of the token a second: per-read timeouts alone would wait for all 32.
        let mut raw = TcpStream::connect(o.addr).unwrap();
        let t = Instant::now();
        let mut cut = None;
        for b in o.token {
            if raw.write_all(&[b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            let mut probe = [0u8; 1];
            raw.set_read_timeout(Some(Duration::from_millis(1)))
                .unwrap();
            if matches!(raw.read(&mut probe), Ok(0)) {
                cut = Some(t.elapsed());
                break;
            }
        }
        let cut = cut.expect("the holder waited for a token trickled over 32 s");
        assert!(
            cut < TOKEN_DEADLINE + Duration::from_secs(3),
            "cut after {cut:?}"
        );
        // The thread gives its slot back just after hanging up.
        let t = Instant::now();
        while s.conns.load(Ordering::Acquire) != 0 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the thread kept its slot"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_client_opens_a_second_connection_when_the_first_is_busy_and_falls_back_on_refusal() {
        let s = server();
        let peer = PeerId::random();
        let dc = DataClient::default();
        rt().block_on(async {
            let opens = AtomicUsize::new(0);
            let session = || async {
                opens.fetch_add(1, Ordering::Relaxed);
                Ok(offer(&s, None))
            };
            let a = dc.conn(peer, session).await.unwrap();
            // Idle: reused.
            let b = dc.conn(peer, session).await.unwrap();
            assert!(Arc::ptr_eq(&a.load, &b.load));
            a.load.fetch_add(BUSY, Ordering::Relaxed);
            let c = dc.conn(peer, session).await.unwrap();
            assert!(!Arc::ptr_eq(&a.load, &c.load));
            c.load.fetch_add(BUSY, Ordering::Relaxed);
            // Both busy, but at the limit: the least loaded is shared.
            let d = dc.conn(peer, session).await.unwrap();
            assert!(Arc::ptr_eq(&d.load, &a.load) || Arc::ptr_eq(&d.load, &c.load));
            assert_eq!(opens.load(Ordering::Relaxed), CONNS_PER_PEER);

            let other = PeerId::random();
            let refused = || async { Err::<SessionOffer, _>("refused".to_string()) };
            assert!(dc.conn(other, refused).await.is_none());
            // Within the fallback window nobody asks again.
            let never = || async { panic!("asked during the fallback window") };
            assert!(dc.conn(other, never).await.is_none());
        });
    }
}
