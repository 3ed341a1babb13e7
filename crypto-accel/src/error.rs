use thiserror::Error;

/// Result alias for this crate.
pub type CryptoResult<T> = Result<T, CryptoError>;

/// Everything that can go wrong in `crypto-accel`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    /// Decoding canonical bytes failed.
    #[error("decode error: {0}")]
    Codec(#[from] CodecError),
    /// A hex string had the wrong length or characters.
    #[error("bad {what}: expected {expected} hex characters")]
    BadHex { what: &'static str, expected: usize },
    /// Bytes are not a valid ed25519 public key.
    #[error("invalid ed25519 public key")]
    BadPublicKey,
    /// A signature did not verify.
    #[error("signature check failed")]
    BadSignature,
    /// AEAD decryption failed: wrong key, wrong context, or tampered ciphertext/tag.
    #[error("decryption failed: wrong key or tampered ciphertext (block {block})")]
    DecryptFailed { block: u64 },
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Rng,
    /// Erasure-code parameters are outside what the code supports.
    #[error("bad erasure parameters k={k} m={m}: need 1 <= k, 1 <= m, k + m <= 256")]
    BadErasureParams { k: usize, m: usize },
    /// Fewer than k shards of a block were available.
    #[error("unrecoverable: {have} of {need} shards reachable")]
    NotEnoughShards { have: usize, need: usize },
    /// A shard's frame or size does not fit the block it claims to belong to.
    #[error("malformed shard: {reason}")]
    BadShard { reason: String },
    /// A Merkle proof did not lead to the expected root.
    #[error("merkle proof does not match the root")]
    BadProof,
    /// Batch verification was given inconsistent inputs.
    #[error("bad verify batch: {reason}")]
    BadBatch { reason: String },
}

/// Errors of the canonical binary codec. Every decoder bounds every length, so corrupt or
/// hostile input yields one of these instead of a panic or a huge allocation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// The input ended before the value did.
    #[error("input truncated: needed {need} more bytes, {have} left")]
    Truncated { need: usize, have: usize },
    /// A length prefix exceeds its bound.
    #[error("{what} too long: {len} > {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// Bytes remained after a complete value.
    #[error("{n} trailing bytes after the value")]
    Trailing { n: usize },
    /// An enum tag or flag byte had no meaning.
    #[error("bad {what} tag {tag}")]
    BadTag { what: &'static str, tag: u64 },
    /// The encoding version is newer than this build understands.
    #[error("unsupported {what} encoding version {got} (this build reads up to {max})")]
    UnsupportedVersion {
        what: &'static str,
        got: u8,
        max: u8,
    },
    /// A value decoded but breaks an invariant of its type.
    #[error("invalid {what}: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
}
