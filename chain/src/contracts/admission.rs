//! Admission contract: the CPU and memory proofs a campaign claim must carry.
//!
//! Both proofs bind the candidate's address and the hash of a recent block (the seed), so
//! they cannot be precomputed far ahead or reused by another address.
//!
//! * **CPU**: `H("cpchain admission cpu v1"; addr ‖ nonce ‖ seed)` must have at least
//!   `cpu_difficulty` leading zero bits (expected work 2^difficulty hashes).
//! * **Memory**: a scrypt-like, data-dependent fill of `n = 32 · 2^memory_difficulty` 32-byte
//!   cells (2^memory_difficulty KiB): `B[0] = H(tag ‖ addr ‖ nonce ‖ seed)`,
//!   `B[i] = H(B[i−1] ‖ B[j])` with `j = u64(B[i−1]) mod i`; the proof hash is
//!   `H(B[n−1] ‖ B[u64(B[n−1]) mod n])` and must have [`MEMORY_TARGET_BITS`] leading zero bits.
//!   A prover tries about 2^MEMORY_TARGET_BITS nonces, each filling the whole buffer; the
//!   verifier fills it once. The buffer is capped at [`MAX_MEMORY_DIFFICULTY`] (1 MiB), so
//!   verification stays a few milliseconds.

use crypto_accel::Hash;

use crate::types::Address;

/// Default CPU difficulty (leading zero bits); tiny so tests are fast.
pub const DEFAULT_CPU_DIFFICULTY: u8 = 4;
/// Default memory difficulty (log2 KiB): a 1 KiB buffer.
pub const DEFAULT_MEMORY_DIFFICULTY: u8 = 0;
/// Highest CPU difficulty the owner may set.
pub const MAX_CPU_DIFFICULTY: u8 = 40;
/// Highest memory difficulty the owner may set (1 MiB buffer).
pub const MAX_MEMORY_DIFFICULTY: u8 = 10;
/// Leading zero bits the memory proof's final hash needs.
pub const MEMORY_TARGET_BITS: u8 = 2;

/// Leading zero bits of a hash.
pub fn leading_zero_bits(h: &Hash) -> u32 {
    let mut n = 0;
    for b in h.as_bytes() {
        if *b == 0 {
            n += 8;
        } else {
            return n + b.leading_zeros();
        }
    }
    n
}

/// The CPU proof hash.
pub fn cpu_hash(addr: &Address, nonce: u64, seed: &Hash) -> Hash {
    let mut b = [0u8; 72];
    b[..32].copy_from_slice(&addr.0);
    b[32..40].copy_from_slice(&nonce.to_le_bytes());
    b[40..].copy_from_slice(seed.as_bytes());
    Hash::domain("cpchain admission cpu v1", &b)
}

fn word(h: &Hash) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(w)
}

/// The memory proof hash (fills `32 · 2^log2_kib` cells; `log2_kib` is capped).
pub fn memory_hash(addr: &Address, nonce: u64, seed: &Hash, log2_kib: u8) -> Hash {
    let n = 32usize << log2_kib.min(MAX_MEMORY_DIFFICULTY);
    let mut cells: Vec<Hash> = Vec::with_capacity(n);
    cells.push(Hash::of_parts(&[
        b"cpchain admission memory v1",
        &addr.0,
        &nonce.to_le_bytes(),
        seed.as_bytes(),
    ]));
    for i in 1..n {
        let prev = cells[i - 1];
        let j = (word(&prev) % i as u64) as usize;
        let next = Hash::of_parts(&[prev.as_bytes(), cells[j].as_bytes()]);
        cells.push(next);
    }
    let last = cells[n - 1];
    let j = (word(&last) % n as u64) as usize;
    Hash::of_parts(&[last.as_bytes(), cells[j].as_bytes()])
}

/// Finds a CPU nonce for `addr` and `seed` (for candidates and tests).
pub fn solve_cpu(addr: &Address, seed: &Hash, difficulty: u8) -> u64 {
    (0..u64::MAX)
        .find(|n| leading_zero_bits(&cpu_hash(addr, *n, seed)) >= u32::from(difficulty))
        .unwrap_or(0)
}

/// Finds a memory nonce for `addr` and `seed` (for candidates and tests).
pub fn solve_memory(addr: &Address, seed: &Hash, log2_kib: u8) -> u64 {
    (0..u64::MAX)
        .find(|n| {
            leading_zero_bits(&memory_hash(addr, *n, seed, log2_kib))
                >= u32::from(MEMORY_TARGET_BITS)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_solve_and_verify() {
        let a = Address([7; 32]);
        let seed = Hash::of(b"seed");
        let n = solve_cpu(&a, &seed, 8);
        assert!(leading_zero_bits(&cpu_hash(&a, n, &seed)) >= 8);
        // Bound to the address and the seed.
        assert_ne!(
            cpu_hash(&a, n, &seed),
            cpu_hash(&Address([8; 32]), n, &seed)
        );
        assert_ne!(cpu_hash(&a, n, &seed), cpu_hash(&a, n, &Hash::of(b"other")));
        let m = solve_memory(&a, &seed, 2);
        assert!(leading_zero_bits(&memory_hash(&a, m, &seed, 2)) >= 2);
        assert_ne!(memory_hash(&a, m, &seed, 2), memory_hash(&a, m, &seed, 3));
        assert_eq!(leading_zero_bits(&Hash::ZERO), 256);
        assert_eq!(leading_zero_bits(&Hash([0x10; 32])), 3);
    }
}
