//! The shard transfer protocol `/cpchain/shard/3`: one request, one response, each a
//! length-prefixed frame of the canonical encoding. Shard bytes travel here, never through
//! Kademlia records (whose store is synchronous and capped at 64 KiB).
//!
//! Upload: the client streams `Put`s while it seals (the holder keeps them as *pending*),
//! registers the data on chain, then sends every holder a `Commit` with the manifest. The
//! holder checks the manifest against the chain (registered, same root and owner) and
//! confirms the pending shards the manifest lists; pending shards that no commit claims are
//! deleted after a grace period, which a long upload renews with its new shards or, for a
//! node that had none of them lately, with `KeepPending`. Reads (`Get`, `GetManifest`) are served only when the chain
//! gives the reader a right to the data. The reader is the peer that sends the request: a
//! peer's libp2p identity is its ed25519 chain key, and noise authenticates that key on every
//! connection, so a read needs no signature of its own and cannot be replayed (protocol 1
//! carried a signed, timestamped authorisation per request). `Audit` asks for a proof of
//! possession (see [`crate::proof`]).
//!
//! Bulk transfers may leave libp2p for a *data connection*: `OpenSession` hands the holder,
//! over the noise-authenticated stream, a fresh 32-byte key; the holder answers with a TCP
//! port and a single-use token. The client connects there, sends the token, and from then
//! on both sides exchange the same encoded requests and responses as AES-256-GCM frames under
//! that key (nonces: direction and frame counter), except that a shard's own bytes (a read's
//! answer, an upload) follow a sealed frame announcing their length, unsealed: shards are
//! ciphertext and content-addressed. A client may ask for any answer sealed whole, and
//! upload sealed `Put`s, to keep shards sealed in transit. The holder treats the connection
//! as the peer that opened the session. The frame format is in
//! `storage_node::node::dataplane`. (Protocol 2
//! sealed shard bytes on data connections too; its data connections do not interoperate
//! with protocol 3's, so the protocol name changed and peers of different versions do not
//! negotiate the shard protocol at all.)

use crypto_accel::{put_bytes, ChunkId, CodecError, CodecResult, DataId, Decode, Encode, Reader};

/// Protocol name.
pub const SHARD_PROTOCOL: &str = "/cpchain/shard/3";
/// Largest shard accepted (a 256 MiB block over k = 10 is 25.6 MiB).
pub const MAX_SHARD_BYTES: usize = 32 << 20;
/// Largest encoded manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 48 << 20;
/// Largest reason string.
pub const MAX_REASON: usize = 1024;
/// Most (block, index) pairs in one `Held` answer.
pub const MAX_HELD: usize = 1 << 20;
/// Length of a data-connection token.
pub const SESSION_TOKEN_LEN: usize = 16;

/// Largest request frame.
pub const MAX_REQUEST_FRAME: usize = MAX_MANIFEST_BYTES + 4096;
/// Largest response frame.
pub const MAX_RESPONSE_FRAME: usize = MAX_MANIFEST_BYTES + 4096;

const VERSION: u8 = 1;

/// A request to a storage node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardRequest {
    /// Keep this shard (pending until a commit claims it). Its id is its BLAKE3 hash.
    Put {
        /// Header and sealed payload.
        bytes: Vec<u8>,
    },
    /// The data is registered on chain: confirm the pending shards this manifest lists.
    Commit {
        /// The encoded manifest.
        manifest: Vec<u8>,
        /// Whether the DHT record names this node as a manifest holder. Informational for
        /// the holder: every node that accepts a commit keeps the manifest and serves it to
        /// readers (a shard holder rebuilds its index from it at start), so a node named
        /// here keeps it even when it holds no shard of the data.
        keep_manifest: bool,
    },
    /// Read shard `id`, which the reader says is part of block `block` of `data` (the
    /// block's interval is what the chain must grant the reader).
    Get {
        /// The shard.
        id: ChunkId,
        /// The data it belongs to.
        data: DataId,
        /// The block it belongs to.
        block: u64,
    },
    /// Read the manifest of `data` (the chain must give the reader a right to some part of
    /// it: owner, public data, or a live grant).
    GetManifest {
        /// The data.
        data: DataId,
    },
    /// Prove possession of shard `id`: answer segment `nonce % segments`.
    Audit {
        /// The shard.
        id: ChunkId,
        /// The challenge.
        nonce: u64,
    },
    /// Which shards of `data` do you hold?
    Held {
        /// The data.
        data: DataId,
    },
    /// Open a data connection keyed with `key` (chosen by the client at random for this one
    /// connection; it travels only inside the noise channel).
    OpenSession {
        /// AES-256-GCM key of the data connection.
        key: [u8; 32],
    },
    /// The sender is still uploading, though it had nothing new for this node lately: keep
    /// its pending shards as if one had just come (a long upload spreads over many nodes,
    /// and a node may go minutes without a shard of it).
    KeepPending,
}

/// A storage node's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardResponse {
    /// The shard is kept (pending until committed); to `KeepPending`, the sender's pending
    /// shards are.
    Stored,
    /// The commit was accepted; this many shards of it are held here.
    Committed {
        /// Shards of the data confirmed on this node.
        confirmed: u32,
    },
    /// The shard's bytes.
    Shard(Vec<u8>),
    /// The encoded manifest.
    Manifest(Vec<u8>),
    /// An encoded [`crate::proof::AuditProof`].
    Proof(Vec<u8>),
    /// (block, index) of every shard of the data held here.
    Held(Vec<(u64, u8)>),
    /// Not held here.
    NotFound,
    /// Refused, with the reason (no right on chain, bad signature, quota full…).
    Refused(String),
    /// The node failed (its store, its chain view…).
    Failed(String),
    /// Where to open the data connection: this node's IP (the one the client reached) at
    /// `port`, presenting `token` once, within 30 seconds.
    Session {
        /// TCP port of the holder's data listener.
        port: u16,
        /// Single-use token that binds the connection to the session.
        token: [u8; SESSION_TOKEN_LEN],
    },
}

impl ShardRequest {
    /// An upper bound on the encoded length, for sizing a buffer before encoding into it.
    pub fn encoded_len_bound(&self) -> usize {
        // Version, tag, a length prefix, and room for the fixed-size fields of any variant.
        const FIXED: usize = 2 + 4 + 128;
        FIXED
            + match self {
                ShardRequest::Put { bytes } => bytes.len(),
                ShardRequest::Commit { manifest, .. } => manifest.len(),
                _ => 0,
            }
    }
}

impl Encode for ShardRequest {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        match self {
            ShardRequest::Put { bytes } => {
                out.push(0);
                put_bytes(out, bytes);
            }
            ShardRequest::Commit {
                manifest,
                keep_manifest,
            } => {
                out.push(1);
                put_bytes(out, manifest);
                keep_manifest.encode(out);
            }
            ShardRequest::Get { id, data, block } => {
                out.push(2);
                id.encode(out);
                data.encode(out);
                block.encode(out);
            }
            ShardRequest::GetManifest { data } => {
                out.push(3);
                data.encode(out);
            }
            ShardRequest::Audit { id, nonce } => {
                out.push(4);
                id.encode(out);
                nonce.encode(out);
            }
            ShardRequest::Held { data } => {
                out.push(5);
                data.encode(out);
            }
            ShardRequest::OpenSession { key } => {
                out.push(6);
                key.encode(out);
            }
            ShardRequest::KeepPending => out.push(7),
        }
    }
}

impl Decode for ShardRequest {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        r.version("shard request", VERSION)?;
        Ok(match r.u8()? {
            0 => ShardRequest::Put {
                bytes: r.bytes("shard", MAX_SHARD_BYTES)?.to_vec(),
            },
            1 => ShardRequest::Commit {
                manifest: r.bytes("manifest", MAX_MANIFEST_BYTES)?.to_vec(),
                keep_manifest: r.bool()?,
            },
            2 => ShardRequest::Get {
                id: ChunkId::decode(r)?,
                data: DataId::decode(r)?,
                block: r.u64()?,
            },
            3 => ShardRequest::GetManifest {
                data: DataId::decode(r)?,
            },
            4 => ShardRequest::Audit {
                id: ChunkId::decode(r)?,
                nonce: r.u64()?,
            },
            5 => ShardRequest::Held {
                data: DataId::decode(r)?,
            },
            6 => ShardRequest::OpenSession { key: r.array()? },
            7 => ShardRequest::KeepPending,
            t => {
                return Err(CodecError::BadTag {
                    what: "shard request",
                    tag: u64::from(t),
                })
            }
        })
    }
}

/// Tag of [`ShardResponse::Shard`] in the encoding (shared by encode, decode and
/// [`ShardResponse::from_vec`]'s fast path).
const RESPONSE_SHARD: u8 = 2;

impl ShardResponse {
    /// Decodes an owned buffer; a `Shard` answer keeps the buffer (its 6 header bytes
    /// shifted out) instead of copying the shard into a new allocation.
    pub fn from_vec(mut b: Vec<u8>) -> CodecResult<Self> {
        if b.len() >= 6 && b[0] == VERSION && b[1] == RESPONSE_SHARD {
            let len = u32::from_le_bytes([b[2], b[3], b[4], b[5]]) as usize;
            if len == b.len() - 6 && len <= MAX_SHARD_BYTES {
                b.drain(..6);
                return Ok(ShardResponse::Shard(b));
            }
        }
        Self::from_bytes(&b)
    }
}

fn reason(r: &mut Reader<'_>) -> CodecResult<String> {
    Ok(String::from_utf8_lossy(r.bytes("reason", MAX_REASON)?).into_owned())
}

fn put_reason(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(MAX_REASON);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    put_bytes(out, &s.as_bytes()[..end]);
}

impl Encode for ShardResponse {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(VERSION);
        match self {
            ShardResponse::Stored => out.push(0),
            ShardResponse::Committed { confirmed } => {
                out.push(1);
                confirmed.encode(out);
            }
            ShardResponse::Shard(b) => {
                out.push(RESPONSE_SHARD);
                put_bytes(out, b);
            }
            ShardResponse::Manifest(b) => {
                out.push(3);
                put_bytes(out, b);
            }
            ShardResponse::Proof(b) => {
                out.push(4);
                put_bytes(out, b);
            }
            ShardResponse::Held(v) => {
                out.push(5);
                (v.len() as u32).encode(out);
                for (b, i) in v {
                    b.encode(out);
                    i.encode(out);
                }
            }
            ShardResponse::NotFound => out.push(6),
            ShardResponse::Refused(s) => {
                out.push(7);
                put_reason(out, s);
            }
            ShardResponse::Failed(s) => {
                out.push(8);
                put_reason(out, s);
            }
            ShardResponse::Session { port, token } => {
                out.push(9);
                port.encode(out);
                token.encode(out);
            }
        }
    }
}

impl Decode for ShardResponse {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        r.version("shard response", VERSION)?;
        Ok(match r.u8()? {
            0 => ShardResponse::Stored,
            1 => ShardResponse::Committed {
                confirmed: r.u32()?,
            },
            RESPONSE_SHARD => ShardResponse::Shard(r.bytes("shard", MAX_SHARD_BYTES)?.to_vec()),
            3 => ShardResponse::Manifest(r.bytes("manifest", MAX_MANIFEST_BYTES)?.to_vec()),
            4 => ShardResponse::Proof(r.bytes("audit proof", 64 << 10)?.to_vec()),
            5 => {
                ShardResponse::Held(r.vec("held shards", MAX_HELD, 9, |r| Ok((r.u64()?, r.u8()?)))?)
            }
            6 => ShardResponse::NotFound,
            7 => ShardResponse::Refused(reason(r)?),
            8 => ShardResponse::Failed(reason(r)?),
            9 => ShardResponse::Session {
                port: r.u16()?,
                token: r.array()?,
            },
            t => {
                return Err(CodecError::BadTag {
                    what: "shard response",
                    tag: u64::from(t),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn requests() -> Vec<ShardRequest> {
        let t = ChunkId::of(b"x");
        vec![
            ShardRequest::Put {
                bytes: vec![1, 2, 3],
            },
            ShardRequest::Commit {
                manifest: vec![4; 100],
                keep_manifest: true,
            },
            ShardRequest::Get {
                id: t,
                data: DataId::from_bytes([3; 32]),
                block: 5,
            },
            ShardRequest::GetManifest {
                data: DataId::from_bytes([3; 32]),
            },
            ShardRequest::Audit { id: t, nonce: 77 },
            ShardRequest::Held {
                data: DataId::from_bytes([1; 32]),
            },
            ShardRequest::OpenSession { key: [9; 32] },
            ShardRequest::KeepPending,
        ]
    }

    #[test]
    fn the_length_bound_covers_every_request() {
        let mut all = requests();
        all.push(ShardRequest::Put {
            bytes: vec![7; 100_000],
        });
        for r in all {
            assert!(r.to_bytes().len() <= r.encoded_len_bound(), "{r:?}");
        }
    }

    fn responses() -> Vec<ShardResponse> {
        vec![
            ShardResponse::Stored,
            ShardResponse::Committed { confirmed: 3 },
            ShardResponse::Shard(vec![1; 10]),
            ShardResponse::Manifest(vec![2; 10]),
            ShardResponse::Proof(vec![3; 10]),
            ShardResponse::Held(vec![(1, 2), (3, 4)]),
            ShardResponse::NotFound,
            ShardResponse::Refused("no grant".into()),
            ShardResponse::Failed("disk".into()),
            ShardResponse::Session {
                port: 40_123,
                token: [5; SESSION_TOKEN_LEN],
            },
        ]
    }

    #[test]
    fn round_trips_and_truncations() {
        for q in requests() {
            let b = q.to_bytes();
            assert_eq!(ShardRequest::from_bytes(&b).ok(), Some(q));
            for cut in 0..b.len() {
                assert!(ShardRequest::from_bytes(&b[..cut]).is_err());
            }
        }
        for s in responses() {
            let b = s.to_bytes();
            assert_eq!(ShardResponse::from_bytes(&b).ok(), Some(s.clone()));
            assert_eq!(ShardResponse::from_vec(b.clone()).ok(), Some(s));
            for cut in 0..b.len() {
                assert!(ShardResponse::from_bytes(&b[..cut]).is_err());
                assert!(ShardResponse::from_vec(b[..cut].to_vec()).is_err());
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(ShardResponse::from_vec(longer).is_err());
        }
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let s = "é".repeat(MAX_REASON);
        let b = ShardResponse::Refused(s).to_bytes();
        let r = ShardResponse::from_bytes(&b);
        assert!(
            matches!(&r, Ok(ShardResponse::Refused(s)) if s.len() <= MAX_REASON && s.len() > 1000),
            "{r:?}"
        );
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ShardRequest::from_bytes(&b);
            let _ = ShardResponse::from_bytes(&b);
            prop_assert_eq!(
                ShardResponse::from_vec(b.clone()).ok(),
                ShardResponse::from_bytes(&b).ok()
            );
        }

        #[test]
        fn a_held_count_larger_than_the_input_is_refused(n in 1u32..u32::MAX) {
            let mut b = vec![VERSION, 5];
            b.extend_from_slice(&n.to_le_bytes());
            prop_assert!(ShardResponse::from_bytes(&b).is_err());
        }
    }
}
