//! A bounded cache of decompressed sender keys for signature checks.
//!
//! Turning an address (compressed ed25519 point) into a verifiable key costs a field
//! inversion and a square root, about a quarter of a batched verification; a node sees the
//! same senders block after block, so it decompresses each once.

use std::collections::HashMap;
use std::num::NonZeroUsize;

use crypto_accel::{CryptoResult, PublicKey};

use crate::types::Address;

/// Decompressed public keys of recently seen addresses, at most `2 × capacity` entries.
///
/// Two generations instead of an LRU list: lookups hit the current map, then the previous
/// one (promoting the entry); when the current map fills up it becomes the previous one and
/// the old previous one is dropped. O(1) per lookup and no per-entry bookkeeping.
#[derive(Debug)]
pub struct KeyCache {
    current: HashMap<Address, PublicKey>,
    previous: HashMap<Address, PublicKey>,
    capacity: usize,
}

impl KeyCache {
    /// A cache holding at least `capacity` recently used keys.
    pub fn new(capacity: NonZeroUsize) -> Self {
        KeyCache {
            current: HashMap::with_capacity(capacity.get()),
            previous: HashMap::new(),
            capacity: capacity.get(),
        }
    }

    /// The verifiable key of `addr`, decompressing it on a miss. Fails for bytes that are
    /// not a valid key (such results are not cached).
    pub fn get(&mut self, addr: &Address) -> CryptoResult<PublicKey> {
        if let Some(pk) = self.current.get(addr) {
            return Ok(*pk);
        }
        let pk = match self.previous.remove(addr) {
            Some(pk) => pk,
            None => addr.public_key()?,
        };
        if self.current.len() >= self.capacity {
            self.previous = std::mem::take(&mut self.current);
            self.current.reserve(self.capacity);
        }
        self.current.insert(*addr, pk);
        Ok(pk)
    }

    /// Entries held now (both generations).
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for KeyCache {
    /// Room for 65,536 recent senders (about 12 MiB).
    fn default() -> Self {
        KeyCache::new(NonZeroUsize::MIN.saturating_add(65_535))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_accel::Keypair;

    #[test]
    fn bounded_and_correct() {
        let mut c = KeyCache::new(NonZeroUsize::new(4).unwrap());
        let keys: Vec<Keypair> = (0..10u8).map(|i| Keypair::from_seed([i; 32])).collect();
        for _ in 0..3 {
            for k in &keys {
                let a = Address::of(&k.public());
                assert_eq!(c.get(&a).unwrap(), k.public());
                assert!(c.len() <= 8);
            }
        }
        // Invalid points are an error and are not cached.
        let mut bad = [0u8; 32];
        bad[0] = 1; // the identity: a small-order (weak) key
        assert!(c.get(&Address(bad)).is_err());
        assert!(c.len() <= 8);
    }
}
