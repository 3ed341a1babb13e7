use std::fmt;
use std::str::FromStr;

use crate::error::{CryptoError, CryptoResult};

/// Length in bytes of every [`Hash`] and content id.
pub const HASH_LEN: usize = 32;

/// A BLAKE3-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; HASH_LEN]);

/// Orders two 32-byte strings lexicographically, as `a[..].cmp(&b[..])` does, but as four
/// big-endian words compared inline: the ordered maps of the chain state are keyed by
/// hashes and addresses, and there the libc `memcmp` call per comparison was a quarter of
/// a block's execution (callgrind, `bench chain`).
#[inline]
pub fn cmp32(a: &[u8; 32], b: &[u8; 32]) -> std::cmp::Ordering {
    let word = |x: &[u8; 32], i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&x[i * 8..i * 8 + 8]);
        u64::from_be_bytes(w)
    };
    for i in 0..4 {
        match word(a, i).cmp(&word(b, i)) {
            std::cmp::Ordering::Equal => {}
            o => return o,
        }
    }
    std::cmp::Ordering::Equal
}

impl Ord for Hash {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        cmp32(&self.0, &other.0)
    }
}

impl PartialOrd for Hash {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Hash {
    /// The all-zero hash, used as "no parent" in hash chains.
    pub const ZERO: Hash = Hash([0; HASH_LEN]);

    /// Hashes `bytes` with plain BLAKE3.
    pub fn of(bytes: &[u8]) -> Hash {
        Hash(*blake3::hash(bytes).as_bytes())
    }

    /// Hashes `parts` as if concatenated, without copying them.
    pub fn of_parts(parts: &[&[u8]]) -> Hash {
        let mut h = blake3::Hasher::new();
        for p in parts {
            h.update(p);
        }
        Hash(*h.finalize().as_bytes())
    }

    /// Hashes `bytes` under a domain `context` (BLAKE3 key derivation mode), so that hashes of
    /// different kinds of object can never collide with each other.
    pub fn domain(context: &str, bytes: &[u8]) -> Hash {
        let mut h = blake3::Hasher::new_derive_key(context);
        h.update(bytes);
        Hash(*h.finalize().as_bytes())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> CryptoResult<Hash> {
        let mut out = [0u8; HASH_LEN];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| CryptoError::BadHex {
            what: "hash",
            expected: HASH_LEN * 2,
        })?;
        Ok(Hash(out))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({}…)", &self.to_hex()[..12])
    }
}

impl FromStr for Hash {
    type Err = CryptoError;
    fn from_str(s: &str) -> CryptoResult<Hash> {
        Hash::from_hex(s)
    }
}

macro_rules! content_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub Hash);

        impl $name {
            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
                self.0.as_bytes()
            }
            /// Wraps raw bytes.
            pub fn from_bytes(bytes: [u8; HASH_LEN]) -> Self {
                Self(Hash(bytes))
            }
            /// Lower-case hex, 64 characters.
            pub fn to_hex(&self) -> String {
                self.0.to_hex()
            }
            /// Parses 64 hex characters.
            pub fn from_hex(s: &str) -> CryptoResult<Self> {
                let mut out = [0u8; HASH_LEN];
                hex::decode_to_slice(s.trim(), &mut out).map_err(|_| CryptoError::BadHex {
                    what: $what,
                    expected: HASH_LEN * 2,
                })?;
                Ok(Self(Hash(out)))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({}…)"), &self.0.to_hex()[..12])
            }
        }

        impl FromStr for $name {
            type Err = CryptoError;
            fn from_str(s: &str) -> CryptoResult<Self> {
                Self::from_hex(s)
            }
        }
    };
}

content_id!(
    /// Content address of one shard: the BLAKE3 hash of its framed bytes.
    ChunkId,
    "chunk id"
);

impl ChunkId {
    /// The content address of `bytes`.
    pub fn of(bytes: &[u8]) -> ChunkId {
        ChunkId(Hash::of(bytes))
    }

    /// The content address of `parts` concatenated.
    pub fn of_parts(parts: &[&[u8]]) -> ChunkId {
        ChunkId(Hash::of_parts(parts))
    }
}

content_id!(
    /// Identity of one piece of uploaded data (a file or a stream), committed to by the
    /// chain: derived from its owner, length, coding parameters and Merkle root.
    DataId,
    "data id"
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The word-wise order is the byte order, also when long prefixes are shared.
        #[test]
        fn cmp32_is_byte_order(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), shared in 0usize..=32) {
            let mut b2 = b;
            b2[..shared].copy_from_slice(&a[..shared]);
            for y in [b, b2, a] {
                prop_assert_eq!(cmp32(&a, &y), a[..].cmp(&y[..]));
                prop_assert_eq!(Hash(a).cmp(&Hash(y)), a[..].cmp(&y[..]));
                prop_assert_eq!(DataId(Hash(a)).partial_cmp(&DataId(Hash(y))), Some(a[..].cmp(&y[..])));
            }
        }
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let h = Hash::of(b"abc");
        assert_eq!(Hash::from_hex(&h.to_hex()).unwrap(), h);
        assert_eq!(
            h.to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert!(Hash::from_hex("zz").is_err());
        assert!(ChunkId::from_hex(&"0".repeat(63)).is_err());
        let c: ChunkId = h.to_hex().parse().unwrap();
        assert_eq!(c.0, h);
    }

    #[test]
    fn parts_equal_concatenation_and_domains_differ() {
        assert_eq!(Hash::of_parts(&[b"ab", b"c"]), Hash::of(b"abc"));
        assert_ne!(Hash::domain("a", b"x"), Hash::domain("b", b"x"));
        assert_ne!(Hash::domain("a", b"x"), Hash::of(b"x"));
    }
}
