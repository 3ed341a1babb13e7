//! Primitives every cpchain crate shares, and the accelerated crypto kernels.
//!
//! Primitives: [`Hash`] (BLAKE3-256) and the content ids [`ChunkId`] and [`DataId`]; ed25519
//! [`Keypair`] / [`PublicKey`] / [`Signature`] with domain-separated signing ([`SigDomain`]:
//! chain id and [`MessageKind`] are part of the signed bytes); the canonical binary encoding
//! ([`Encode`], [`Decode`], [`Reader`]) that bounds every length on decode.
//!
//! Kernels: [`BatchVerifier`] (ed25519 batch verification that names the bad items; CPU
//! backend on a named rayon pool), [`Aead`] (AES-256-GCM or ChaCha20-Poly1305 per encryption
//! interval, nonces derived from stream and block index), [`Erasure`] (Reed–Solomon k + m,
//! SIMD), [`MerkleTree`] (BLAKE3, inclusion proofs).
//!
//! Feature flags: none yet; a `cuda` feature adding GPU backends comes with the CUDA issue.
//! The CPU backends are always built and are the reference every other backend must match.

mod aead;
mod batch;
mod codec;
mod erasure;
mod error;
mod hash;
mod keys;
mod merkle;

pub use aead::{
    block_nonce, kek_for_upload, Aead, AeadAlgo, IntervalKey, MAX_STREAM, TAG_LEN, WRAPPED_KEY_LEN,
};
pub use batch::{
    dalek_verify_batch_raw, verify_each, BatchVerifier, CpuBatchVerifier, CpuVerifierConfig,
    VerifyBatch, VerifyJob, VerifyReport,
};
pub use codec::{put_bytes, CodecResult, Decode, Encode, Reader};
pub use erasure::{Erasure, ShardHeader, SHARD_HEADER_LEN};
pub use error::{CodecError, CryptoError, CryptoResult};
pub use hash::{cmp32, ChunkId, DataId, Hash, HASH_LEN};
pub use keys::{Keypair, MessageKind, PublicKey, SigDomain, Signature, DOMAIN_PREFIX_LEN};
pub use merkle::{MerkleProof, MerkleTree};
