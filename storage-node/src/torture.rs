//! Deterministic chunks for the chunk store's fault tests: the `chunkstore-torture` tool
//! writes them and `tests/chunk_store_crash.rs` checks them, so both must derive exactly the
//! same key and bytes from (seed, index). Kept here, once, for both.

use crypto_accel::ChunkId;

/// Key of chunk `i`.
pub fn chunk_id(seed: u64, i: u64) -> ChunkId {
    ChunkId::of_parts(&[b"torture", &seed.to_le_bytes(), &i.to_le_bytes()])
}

/// Contents of chunk `i`: 1 B to `max` bytes, log-uniformly, from a splitmix64 stream.
pub fn chunk_bytes(seed: u64, i: u64, max: u32) -> Vec<u8> {
    let r = mix(seed, i);
    let bits = 1 + (r % u64::from(32 - max.leading_zeros()));
    let len = (1 + (r >> 8) % (1u64 << bits)).min(u64::from(max));
    let mut state = r;
    let mut out = Vec::with_capacity(len as usize);
    while (out.len() as u64) < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let word = splitmix(state).to_le_bytes();
        let take = (len as usize - out.len()).min(8);
        out.extend_from_slice(&word[..take]);
    }
    out
}

/// A well-mixed 64-bit value for (seed, i).
pub fn mix(seed: u64, i: u64) -> u64 {
    splitmix(seed ^ splitmix(i.wrapping_add(0x5EED)))
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
