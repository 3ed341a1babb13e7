//! Authenticated encryption of data blocks, one key per encryption interval.
//!
//! Nonces are never random: they are derived from (stream, block index, part), and every
//! interval key is fresh, so a nonce can never repeat under a key. `part` lets a block be
//! sealed as several independently authenticated parts (one per erasure data shard).

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::codec::{CodecResult, Decode, Encode, Reader};
use crate::error::{CodecError, CryptoError, CryptoResult};

/// Bytes an AEAD tag adds.
pub const TAG_LEN: usize = 16;
/// Largest stream number a nonce can carry (24 bits).
pub const MAX_STREAM: u32 = (1 << 24) - 1;
/// Length of a wrapped interval key (ciphertext and tag).
pub const WRAPPED_KEY_LEN: usize = 32 + TAG_LEN;

/// Which AEAD algorithm seals the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AeadAlgo {
    /// AES-256-GCM (fastest with AES-NI / VAES).
    #[default]
    Aes256Gcm,
    /// ChaCha20-Poly1305 (constant-time without AES hardware).
    ChaCha20Poly1305,
}

impl AeadAlgo {
    fn ring(self) -> &'static aead::Algorithm {
        match self {
            AeadAlgo::Aes256Gcm => &aead::AES_256_GCM,
            AeadAlgo::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }

    /// Parses `aes-256-gcm` or `chacha20-poly1305`.
    pub fn from_name(s: &str) -> Option<AeadAlgo> {
        match s {
            "aes-256-gcm" | "aes" => Some(AeadAlgo::Aes256Gcm),
            "chacha20-poly1305" | "chacha" => Some(AeadAlgo::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        match self {
            AeadAlgo::Aes256Gcm => "aes-256-gcm",
            AeadAlgo::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }
}

impl Encode for AeadAlgo {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self {
            AeadAlgo::Aes256Gcm => 1,
            AeadAlgo::ChaCha20Poly1305 => 2,
        });
    }
}

impl Decode for AeadAlgo {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        match r.u8()? {
            1 => Ok(AeadAlgo::Aes256Gcm),
            2 => Ok(AeadAlgo::ChaCha20Poly1305),
            t => Err(CodecError::BadTag {
                what: "aead algorithm",
                tag: u64::from(t),
            }),
        }
    }
}

/// A 256-bit symmetric key for one encryption interval. Zeroed on drop; `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct IntervalKey([u8; 32]);

impl IntervalKey {
    /// A fresh random key from the operating system.
    pub fn generate() -> CryptoResult<IntervalKey> {
        let mut k = [0u8; 32];
        rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, &mut k)
            .map_err(|_| CryptoError::Rng)?;
        Ok(IntervalKey(k))
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> IntervalKey {
        IntervalKey(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Encrypts this key under a key-encryption key for interval `interval`. The KEK must be
    /// unique per upload (see [`kek_for_upload`]) so that the interval number alone makes the
    /// nonce unique.
    pub fn wrap(&self, kek: &[u8; 32], interval: u64) -> CryptoResult<[u8; WRAPPED_KEY_LEN]> {
        let aead = Aead::new(AeadAlgo::Aes256Gcm, &IntervalKey(*kek))?;
        let mut out = [0u8; WRAPPED_KEY_LEN];
        out[..32].copy_from_slice(&self.0);
        let (body, tag) = out.split_at_mut(32);
        let t = aead.seal_in_place(wrap_nonce(interval), b"cpchain interval key", body)?;
        tag.copy_from_slice(&t);
        Ok(out)
    }

    /// Reverses [`IntervalKey::wrap`]; fails on a wrong KEK, interval or tampered bytes.
    pub fn unwrap_from(
        wrapped: &[u8; WRAPPED_KEY_LEN],
        kek: &[u8; 32],
        interval: u64,
    ) -> CryptoResult<IntervalKey> {
        let aead = Aead::new(AeadAlgo::Aes256Gcm, &IntervalKey(*kek))?;
        let mut buf = *wrapped;
        aead.open_in_place(wrap_nonce(interval), b"cpchain interval key", &mut buf)
            .map_err(|_| CryptoError::DecryptFailed { block: interval })?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&buf[..32]);
        buf.fill(0);
        Ok(IntervalKey(k))
    }
}

/// The key-encryption key for one upload: derived from the owner's secret and a random
/// per-upload salt stored in the manifest.
pub fn kek_for_upload(owner_secret: &[u8; 32], salt: &[u8; 32]) -> [u8; 32] {
    *blake3::keyed_hash(owner_secret, salt).as_bytes()
}

fn wrap_nonce(interval: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&interval.to_le_bytes());
    n[8..].copy_from_slice(b"wrap");
    n
}

impl Drop for IntervalKey {
    fn drop(&mut self) {
        self.0.fill(0);
    }
}

impl fmt::Debug for IntervalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IntervalKey(…)")
    }
}

/// The 96-bit nonce for part `part` of block `block` of stream `stream`: block (8 bytes LE),
/// stream (3 bytes LE), part (1 byte). Injective, so distinct inputs never share a nonce.
pub fn block_nonce(stream: u32, block: u64, part: u8) -> CryptoResult<[u8; 12]> {
    if stream > MAX_STREAM {
        return Err(CryptoError::BadShard {
            reason: format!("stream {stream} exceeds the nonce's 24-bit stream field"),
        });
    }
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&block.to_le_bytes());
    n[8..11].copy_from_slice(&stream.to_le_bytes()[..3]);
    n[11] = part;
    Ok(n)
}

/// A keyed AEAD instance for one encryption interval.
pub struct Aead {
    algo: AeadAlgo,
    key: LessSafeKey,
}

impl fmt::Debug for Aead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aead")
            .field("algo", &self.algo)
            .finish_non_exhaustive()
    }
}

impl Aead {
    /// Keys `algo` with `key`.
    pub fn new(algo: AeadAlgo, key: &IntervalKey) -> CryptoResult<Aead> {
        let key = UnboundKey::new(algo.ring(), &key.0).map_err(|_| CryptoError::BadShard {
            reason: format!("{} rejected a 32-byte key", algo.name()),
        })?;
        Ok(Aead {
            algo,
            key: LessSafeKey::new(key),
        })
    }

    /// The algorithm in use.
    pub fn algo(&self) -> AeadAlgo {
        self.algo
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> CryptoResult<[u8; TAG_LEN]> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .map_err(|_| CryptoError::BadShard {
                reason: "input too large for one AEAD message".into(),
            })?;
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        Ok(t)
    }

    /// Decrypts `buf` = ciphertext ‖ tag in place; on success the first `len - 16` bytes
    /// are plaintext. Any change to ciphertext, tag, nonce or aad is an error.
    pub fn open_in_place(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8]) -> CryptoResult<()> {
        let block = u64::from_le_bytes([
            nonce[0], nonce[1], nonce[2], nonce[3], nonce[4], nonce[5], nonce[6], nonce[7],
        ]);
        self.key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), buf)
            .map(|_| ())
            .map_err(|_| CryptoError::DecryptFailed { block })
    }

    /// Encrypts a copy of `plaintext`: returns ciphertext ‖ tag.
    pub fn seal(&self, nonce: [u8; 12], aad: &[u8], plaintext: &[u8]) -> CryptoResult<Vec<u8>> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place(nonce, aad, &mut out)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts ciphertext ‖ tag into a fresh buffer.
    pub fn open(&self, nonce: [u8; 12], aad: &[u8], sealed: &[u8]) -> CryptoResult<Vec<u8>> {
        let mut buf = sealed.to_vec();
        if buf.len() < TAG_LEN {
            return Err(CryptoError::DecryptFailed { block: 0 });
        }
        self.open_in_place(nonce, aad, &mut buf)?;
        buf.truncate(buf.len() - TAG_LEN);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nonces_are_injective_and_bounded() {
        assert_ne!(block_nonce(1, 2, 0).unwrap(), block_nonce(2, 1, 0).unwrap());
        assert_ne!(block_nonce(0, 0, 1).unwrap(), block_nonce(0, 0, 0).unwrap());
        assert!(block_nonce(MAX_STREAM + 1, 0, 0).is_err());
    }

    #[test]
    fn wrap_round_trip_and_wrong_kek() {
        let k = IntervalKey::generate().unwrap();
        let kek = kek_for_upload(&[1; 32], &[2; 32]);
        let w = k.wrap(&kek, 5).unwrap();
        assert_eq!(IntervalKey::unwrap_from(&w, &kek, 5).unwrap(), k);
        assert!(IntervalKey::unwrap_from(&w, &kek, 6).is_err());
        assert!(IntervalKey::unwrap_from(&w, &kek_for_upload(&[1; 32], &[3; 32]), 5).is_err());
        assert_eq!(format!("{k:?}"), "IntervalKey(…)");
    }

    proptest! {
        #[test]
        fn tamper_anywhere_is_an_error(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
            chacha: bool,
        ) {
            let algo = if chacha { AeadAlgo::ChaCha20Poly1305 } else { AeadAlgo::Aes256Gcm };
            let key = IntervalKey::from_bytes([9; 32]);
            let a = Aead::new(algo, &key).unwrap();
            let n = block_nonce(3, 4, 5).unwrap();
            let mut sealed = a.seal(n, b"aad", &data).unwrap();
            prop_assert_eq!(a.open(n, b"aad", &sealed).unwrap(), data.clone());
            // Wrong key, nonce and aad all fail.
            let other = Aead::new(algo, &IntervalKey::from_bytes([8; 32])).unwrap();
            prop_assert!(other.open(n, b"aad", &sealed).is_err());
            prop_assert!(a.open(block_nonce(3, 4, 6).unwrap(), b"aad", &sealed).is_err());
            prop_assert!(a.open(n, b"aae", &sealed).is_err());
            let i = flip.index(sealed.len());
            sealed[i] ^= 1 << bit;
            prop_assert!(a.open(n, b"aad", &sealed).is_err());
        }
    }
}
