//! The shard transfer protocol `/cpchain/shard/1`: one request, one response, each a
//! length-prefixed frame of the canonical encoding. Shard bytes travel here, never through
//! Kademlia records (whose store is synchronous and capped at 64 KiB).
//!
//! Upload: the client streams `Put`s while it seals (the holder keeps them as *pending*),
//! registers the data on chain, then sends every holder a `Commit` with the manifest. The
//! holder checks the manifest against the chain (registered, same root and owner) and
//! confirms the pending shards the manifest lists; pending shards that no commit claims are
//! deleted after a grace period. Reads (`Get`, `GetManifest`) carry a [`ReadAuth`] signed by
//! the reader and are served only when the chain gives the reader a right to the data.
//! `Audit` asks for a proof of possession (see [`crate::proof`]).

use crypto_accel::{
    put_bytes, ChunkId, CodecError, CodecResult, DataId, Decode, Encode, Keypair, MessageKind,
    PublicKey, Reader, SigDomain, Signature,
};

/// Protocol name.
pub const SHARD_PROTOCOL: &str = "/cpchain/shard/1";
/// Largest shard accepted (a 256 MiB block over k = 10 is 25.6 MiB).
pub const MAX_SHARD_BYTES: usize = 32 << 20;
/// Largest encoded manifest accepted.
pub const MAX_MANIFEST_BYTES: usize = 48 << 20;
/// Largest reason string.
pub const MAX_REASON: usize = 1024;
/// Most (block, index) pairs in one `Held` answer.
pub const MAX_HELD: usize = 1 << 20;
/// Largest request frame.
pub const MAX_REQUEST_FRAME: usize = MAX_MANIFEST_BYTES + 4096;
/// Largest response frame.
pub const MAX_RESPONSE_FRAME: usize = MAX_MANIFEST_BYTES + 4096;
/// How far a read authorisation's timestamp may be from the holder's clock.
pub const AUTH_SKEW_MS: u64 = 120_000;

const VERSION: u8 = 1;

/// A reader's signed request to read from one holder: binds the reader's key, the data, the
/// block, the holder, the time and the target shard (zero for the manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAuth {
    /// The reader's public key (its chain address).
    pub reader: PublicKey,
    /// The data read.
    pub data: DataId,
    /// The block read (its interval is what the chain must grant).
    pub block: u64,
    /// The holder asked (its node key), so the request cannot be replayed elsewhere.
    pub holder: [u8; 32],
    /// The reader's clock, ms since the Unix epoch.
    pub at_ms: u64,
    /// Signature over everything above and the target.
    pub sig: Signature,
}

impl ReadAuth {
    fn signed_fields(
        reader: &PublicKey,
        data: &DataId,
        block: u64,
        holder: &[u8; 32],
        at_ms: u64,
        target: &ChunkId,
    ) -> Vec<u8> {
        let mut b = Vec::with_capacity(32 * 4 + 16);
        reader.encode(&mut b);
        data.encode(&mut b);
        block.encode(&mut b);
        b.extend_from_slice(holder);
        at_ms.encode(&mut b);
        target.encode(&mut b);
        b
    }

    /// Signs a read of `target` (a shard id, or [`ChunkId`] of zeros for the manifest).
    pub fn sign(
        key: &Keypair,
        chain_id: u32,
        data: DataId,
        block: u64,
        holder: [u8; 32],
        at_ms: u64,
        target: &ChunkId,
    ) -> ReadAuth {
        let reader = key.public();
        let msg = Self::signed_fields(&reader, &data, block, &holder, at_ms, target);
        let sig = key.sign(domain(chain_id), &msg);
        ReadAuth {
            reader,
            data,
            block,
            holder,
            at_ms,
            sig,
        }
    }

    /// Checks the signature, that the request is for `holder`, and that it is fresh at
    /// `now_ms`. The chain check (may the reader read?) is the caller's.
    pub fn check(
        &self,
        chain_id: u32,
        holder: &[u8; 32],
        now_ms: u64,
        target: &ChunkId,
    ) -> Result<(), String> {
        if &self.holder != holder {
            return Err("the request is signed for another storage node".into());
        }
        if self.at_ms.abs_diff(now_ms) > AUTH_SKEW_MS {
            return Err(format!(
                "the request's timestamp is {} s from this node's clock (limit {} s)",
                self.at_ms.abs_diff(now_ms) / 1000,
                AUTH_SKEW_MS / 1000
            ));
        }
        let msg = Self::signed_fields(
            &self.reader,
            &self.data,
            self.block,
            &self.holder,
            self.at_ms,
            target,
        );
        self.reader
            .verify(domain(chain_id), &msg, &self.sig)
            .map_err(|_| "bad signature on the read request".to_string())
    }
}

fn domain(chain_id: u32) -> SigDomain {
    SigDomain {
        chain_id,
        kind: MessageKind::SHARD_REQUEST,
    }
}

impl Encode for ReadAuth {
    fn encode(&self, out: &mut Vec<u8>) {
        self.reader.encode(out);
        self.data.encode(out);
        self.block.encode(out);
        out.extend_from_slice(&self.holder);
        self.at_ms.encode(out);
        self.sig.encode(out);
    }
}

impl Decode for ReadAuth {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(ReadAuth {
            reader: PublicKey::decode(r)?,
            data: DataId::decode(r)?,
            block: r.u64()?,
            holder: r.array()?,
            at_ms: r.u64()?,
            sig: Signature::decode(r)?,
        })
    }
}

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
    /// Read a shard.
    Get {
        /// The shard.
        id: ChunkId,
        /// The reader's authorisation.
        auth: ReadAuth,
    },
    /// Read the manifest of `auth.data`.
    GetManifest {
        /// The reader's authorisation (target: zero id, block 0).
        auth: ReadAuth,
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
}

/// A storage node's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardResponse {
    /// The shard is kept (pending until committed).
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
            ShardRequest::Get { id, auth } => {
                out.push(2);
                id.encode(out);
                auth.encode(out);
            }
            ShardRequest::GetManifest { auth } => {
                out.push(3);
                auth.encode(out);
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
                auth: ReadAuth::decode(r)?,
            },
            3 => ShardRequest::GetManifest {
                auth: ReadAuth::decode(r)?,
            },
            4 => ShardRequest::Audit {
                id: ChunkId::decode(r)?,
                nonce: r.u64()?,
            },
            5 => ShardRequest::Held {
                data: DataId::decode(r)?,
            },
            t => {
                return Err(CodecError::BadTag {
                    what: "shard request",
                    tag: u64::from(t),
                })
            }
        })
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
                out.push(2);
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
            2 => ShardResponse::Shard(r.bytes("shard", MAX_SHARD_BYTES)?.to_vec()),
            3 => ShardResponse::Manifest(r.bytes("manifest", MAX_MANIFEST_BYTES)?.to_vec()),
            4 => ShardResponse::Proof(r.bytes("audit proof", 64 << 10)?.to_vec()),
            5 => {
                ShardResponse::Held(r.vec("held shards", MAX_HELD, 9, |r| Ok((r.u64()?, r.u8()?)))?)
            }
            6 => ShardResponse::NotFound,
            7 => ShardResponse::Refused(reason(r)?),
            8 => ShardResponse::Failed(reason(r)?),
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

    fn auth(key: &Keypair, at: u64, target: &ChunkId) -> ReadAuth {
        ReadAuth::sign(key, 7, DataId::from_bytes([3; 32]), 5, [9; 32], at, target)
    }

    #[test]
    fn read_auth_binds_holder_time_target_and_chain() {
        let key = Keypair::generate();
        let t = ChunkId::of(b"shard");
        let a = auth(&key, 1_000_000, &t);
        assert!(a.check(7, &[9; 32], 1_000_000, &t).is_ok());
        assert!(a.check(7, &[8; 32], 1_000_000, &t).is_err());
        assert!(a.check(8, &[9; 32], 1_000_000, &t).is_err());
        assert!(a
            .check(7, &[9; 32], 1_000_000 + AUTH_SKEW_MS + 1, &t)
            .is_err());
        assert!(a
            .check(7, &[9; 32], 1_000_000, &ChunkId::of(b"other"))
            .is_err());
        let mut b = a.clone();
        b.block = 6;
        assert!(b.check(7, &[9; 32], 1_000_000, &t).is_err());
    }

    fn requests() -> Vec<ShardRequest> {
        let key = Keypair::generate();
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
                auth: auth(&key, 5, &t),
            },
            ShardRequest::GetManifest {
                auth: auth(&key, 5, &ChunkId::from_bytes([0; 32])),
            },
            ShardRequest::Audit { id: t, nonce: 77 },
            ShardRequest::Held {
                data: DataId::from_bytes([1; 32]),
            },
        ]
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
            assert_eq!(ShardResponse::from_bytes(&b).ok(), Some(s));
            for cut in 0..b.len() {
                assert!(ShardResponse::from_bytes(&b[..cut]).is_err());
            }
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
        }

        #[test]
        fn a_held_count_larger_than_the_input_is_refused(n in 1u32..u32::MAX) {
            let mut b = vec![VERSION, 5];
            b.extend_from_slice(&n.to_le_bytes());
            prop_assert!(ShardResponse::from_bytes(&b).is_err());
        }
    }
}
