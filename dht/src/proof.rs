//! Audit proofs over the BLAKE3 tree of a shard.
//!
//! A shard's content id is the plain BLAKE3 hash of its bytes, and BLAKE3 is a Merkle tree
//! over 1 KiB chunks. An audit challenges a holder with a random `nonce`; the holder answers
//! with segment (chunk) number `nonce % segments(len)` and the chaining values of the sibling
//! subtrees on its path to the root. The verifier recomputes the root and compares it with
//! the content id, so the challenger needs nothing but the id.
//!
//! # Why the proof also carries the last segment
//!
//! The tree's shape, and so the challenged index, depends on `len`, which the verifier only
//! learns from the proof. A path checks only the subtrees it passes through: for a segment in
//! the complete left half of the tree, every `len` with the same left half gives the same
//! path. A holder that kept segment 0 and a few chaining values could then pick a `len` that
//! maps the nonce to segment 0 and pass without holding the shard. So every proof also opens
//! the last segment (when it is not the challenged one): its chunk counter and length are
//! hashed into its chaining value and the right edge of the tree must lead to the root, which
//! pins the number of segments and the last segment's length, hence `len`.
//!
//! Proving hashes every byte of the shard exactly once; verifying hashes at most two
//! segments and about `2·log2(len / 1 KiB)` parent nodes.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};
use blake3::Hasher;
use crypto_accel::{put_bytes, ChunkId, CodecError, CodecResult, Decode, Encode, Reader};

/// Bytes of one audited segment: one BLAKE3 chunk.
pub const SEGMENT_LEN: usize = 1024;
/// Largest shard a proof may describe (bounds the path length): 1 GiB.
pub const MAX_SHARD_LEN: u64 = 1 << 30;
/// Most sibling chaining values a decoded path may carry (a 1 GiB shard needs 20).
pub const MAX_SIBLINGS: usize = 64;

const SEG: u64 = SEGMENT_LEN as u64;
const PROOF_VERSION: u8 = 1;

/// Number of segments of a shard of `len` bytes: `ceil(len / 1024)`, 0 only for `len == 0`.
pub fn segments(len: u64) -> u64 {
    len.div_ceil(SEG)
}

/// The segment that `nonce` challenges in a shard of `len` bytes (0 for an empty shard).
pub fn segment_for(nonce: u64, len: u64) -> u64 {
    nonce.checked_rem(segments(len)).unwrap_or(0)
}

/// Length of segment `index` of a shard of `len` bytes (0 past the end).
fn segment_len(len: u64, index: u64) -> u64 {
    let start = index.saturating_mul(SEG);
    len.saturating_sub(start).min(SEG)
}

/// Errors of proving and verifying audit proofs.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    /// Shards are never empty; an empty one has nothing to audit.
    #[error("cannot audit an empty shard")]
    EmptyShard,
    /// The shard (or the length a proof claims) is larger than [`MAX_SHARD_LEN`].
    #[error("shard of {len} bytes exceeds the {max} byte audit limit", max = MAX_SHARD_LEN)]
    TooLong {
        /// The length given.
        len: u64,
    },
    /// The challenged segment does not have the length its index implies.
    #[error("segment {segment} should be {expected} bytes, proof has {got}")]
    WrongSegmentLength {
        /// Index of the segment.
        segment: u64,
        /// Length implied by the shard length.
        expected: u64,
        /// Length in the proof.
        got: u64,
    },
    /// A path has the wrong number of siblings for the tree shape.
    #[error("path to segment {segment} needs {expected} siblings, proof has {got}")]
    WrongPathLength {
        /// Index of the segment the path leads to.
        segment: u64,
        /// Depth of that segment in the tree.
        expected: usize,
        /// Siblings in the proof.
        got: usize,
    },
    /// The challenged segment is the last one, yet the proof also opens a last segment.
    #[error("the challenged segment is the last one, so the proof must not carry a tail")]
    UnexpectedTail,
    /// The challenged segment's path does not lead to the content id.
    #[error("the challenged segment does not hash to the content id")]
    RootMismatch,
    /// The last segment's path does not lead to the content id, so `len` is unproven.
    #[error("the last segment does not hash to the content id: shard length {len} unproven")]
    LengthUnproven {
        /// The length the proof claims.
        len: u64,
    },
}

/// The answer to an audit challenge: one segment of the shard and its BLAKE3 tree path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditProof {
    /// Length of the whole shard in bytes.
    pub len: u64,
    /// The challenged segment's bytes (1 to 1024).
    pub segment: Vec<u8>,
    /// Chaining values of the sibling subtrees on the challenged segment's path, leaf first.
    pub siblings: Vec<[u8; 32]>,
    /// The shard's last segment, which pins `len`; empty when it is the challenged segment.
    pub tail: Vec<u8>,
    /// Chaining values of the siblings on the last segment's path, leaf first.
    pub tail_siblings: Vec<[u8; 32]>,
}

impl Encode for AuditProof {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(PROOF_VERSION);
        self.len.encode(out);
        put_bytes(out, &self.segment);
        put_cvs(out, &self.siblings);
        put_bytes(out, &self.tail);
        put_cvs(out, &self.tail_siblings);
    }
}

fn put_cvs(out: &mut Vec<u8>, cvs: &[[u8; 32]]) {
    let n = u32::try_from(cvs.len()).unwrap_or(u32::MAX);
    n.encode(out);
    for cv in cvs {
        out.extend_from_slice(cv);
    }
}

impl Decode for AuditProof {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        r.version("audit proof", PROOF_VERSION)?;
        let len = r.u64()?;
        if len > MAX_SHARD_LEN {
            return Err(CodecError::Invalid {
                what: "audit proof",
                reason: "shard length over MAX_SHARD_LEN",
            });
        }
        let segment = r.bytes("audit segment", SEGMENT_LEN)?.to_vec();
        let siblings = r.vec("audit path", MAX_SIBLINGS, 32, |r| r.array())?;
        let tail = r.bytes("audit tail segment", SEGMENT_LEN)?.to_vec();
        let tail_siblings = r.vec("audit tail path", MAX_SIBLINGS, 32, |r| r.array())?;
        Ok(AuditProof {
            len,
            segment,
            siblings,
            tail,
            tail_siblings,
        })
    }
}

fn check_len(len: u64) -> Result<(), ProofError> {
    if len == 0 {
        return Err(ProofError::EmptyShard);
    }
    if len > MAX_SHARD_LEN {
        return Err(ProofError::TooLong { len });
    }
    Ok(())
}

/// Answers the challenge `nonce` for `shard`, hashing each byte of it once.
pub fn prove(shard: &[u8], nonce: u64) -> Result<AuditProof, ProofError> {
    let len = u64::try_from(shard.len()).map_err(|_| ProofError::TooLong { len: u64::MAX })?;
    check_len(len)?;
    let index = segment_for(nonce, len);
    let last = segments(len) - 1;
    let segment = slice(shard, index * SEG, segment_len(len, index))?.to_vec();
    let mut proof = AuditProof {
        len,
        segment,
        siblings: Vec::new(),
        tail: Vec::new(),
        tail_siblings: Vec::new(),
    };
    if last == 0 {
        // One chunk: it is the root, there are no siblings and nothing else to pin.
        return Ok(proof);
    }
    let mut paths = [Vec::new(), Vec::new()];
    collect_paths(shard, 0, len, [index, last], &mut paths)?;
    let [siblings, tail_siblings] = paths;
    proof.siblings = siblings;
    if index != last {
        proof.tail = slice(shard, last * SEG, segment_len(len, last))?.to_vec();
        proof.tail_siblings = tail_siblings;
    }
    Ok(proof)
}

/// `shard[start..start + len]`, as an error rather than a panic if it is out of range.
fn slice(shard: &[u8], start: u64, len: u64) -> Result<&[u8], ProofError> {
    let bad = || ProofError::TooLong {
        len: start.saturating_add(len),
    };
    let start = usize::try_from(start).map_err(|_| bad())?;
    let end = start
        .checked_add(usize::try_from(len).map_err(|_| bad())?)
        .ok_or_else(bad)?;
    shard.get(start..end).ok_or_else(bad)
}

/// The chaining value of the subtree `[start, start + len)` of `shard`. Pushes onto `paths[j]`
/// the chaining value of every sibling on the path to segment `targets[j]`, leaf first.
///
/// Subtrees holding no target are hashed in one go, so every byte is hashed exactly once.
/// `start` is a multiple of 1 KiB and `len` is 1..=max_subtree_len(start), because every split
/// follows `left_subtree_len` from the root (the recursion is at most 21 deep).
fn collect_paths(
    shard: &[u8],
    start: u64,
    len: u64,
    targets: [u64; 2],
    paths: &mut [Vec<[u8; 32]>; 2],
) -> Result<ChainingValue, ProofError> {
    let holds = |t: u64, from: u64, n: u64| (from..from + n).contains(&(t * SEG));
    if len <= SEG || !targets.iter().any(|&t| holds(t, start, len)) {
        return Ok(subtree_cv(slice(shard, start, len)?, start));
    }
    let left = left_subtree_len(len);
    let l = collect_paths(shard, start, left, targets, paths)?;
    let r = collect_paths(shard, start + left, len - left, targets, paths)?;
    for (&t, path) in targets.iter().zip(paths.iter_mut()) {
        if holds(t, start, left) {
            path.push(r);
        } else if holds(t, start + left, len - left) {
            path.push(l);
        }
    }
    Ok(merge_subtrees_non_root(&l, &r, Mode::Hash))
}

/// Non-root chaining value of a non-empty, aligned subtree.
fn subtree_cv(bytes: &[u8], offset: u64) -> ChainingValue {
    #[cfg(test)]
    tests::HASHED.with(|h| h.set(h.get() + bytes.len() as u64));
    let mut h = Hasher::new();
    h.set_input_offset(offset);
    h.update(bytes);
    h.finalize_non_root()
}

/// Sibling directions on the path to segment `index` of a `len`-byte tree, root first:
/// `true` when the sibling is the right subtree. `index < segments(len)`, `len ≤ MAX_SHARD_LEN`.
fn path_shape(len: u64, index: u64) -> Vec<bool> {
    let (mut start, mut size) = (0u64, len);
    let mut dirs = Vec::new();
    while size > SEG {
        let left = left_subtree_len(size);
        if index * SEG < start + left {
            dirs.push(true);
            size = left;
        } else {
            dirs.push(false);
            start += left;
            size -= left;
        }
    }
    dirs
}

/// Recomputes the root of a `len`-byte shard from segment `index` and its path.
fn path_root(
    len: u64,
    index: u64,
    segment: &[u8],
    siblings: &[[u8; 32]],
) -> Result<[u8; 32], ProofError> {
    let expected = segment_len(len, index);
    let got = segment.len() as u64;
    if got != expected {
        return Err(ProofError::WrongSegmentLength {
            segment: index,
            expected,
            got,
        });
    }
    let shape = path_shape(len, index);
    if shape.len() != siblings.len() {
        return Err(ProofError::WrongPathLength {
            segment: index,
            expected: shape.len(),
            got: siblings.len(),
        });
    }
    if shape.is_empty() {
        // A one-chunk shard: the chunk itself is the root.
        return Ok(*blake3::hash(segment).as_bytes());
    }
    let mut cv = subtree_cv(segment, index * SEG);
    let top = siblings.len() - 1;
    for (level, (sibling, sibling_is_right)) in siblings.iter().zip(shape.iter().rev()).enumerate()
    {
        let (l, r) = if *sibling_is_right {
            (&cv, sibling)
        } else {
            (sibling, &cv)
        };
        if level == top {
            return Ok(*merge_subtrees_root(l, r, Mode::Hash).as_bytes());
        }
        cv = merge_subtrees_non_root(l, r, Mode::Hash);
    }
    Ok(cv)
}

/// Checks that `proof` answers challenge `nonce` for the shard whose content id is `id`.
pub fn verify(id: &ChunkId, nonce: u64, proof: &AuditProof) -> Result<(), ProofError> {
    let len = proof.len;
    check_len(len)?;
    let index = segment_for(nonce, len);
    let last = segments(len) - 1;
    if path_root(len, index, &proof.segment, &proof.siblings)? != *id.as_bytes() {
        return Err(ProofError::RootMismatch);
    }
    if index == last {
        // The challenged segment is the last one and already pins `len`.
        if !proof.tail.is_empty() || !proof.tail_siblings.is_empty() {
            return Err(ProofError::UnexpectedTail);
        }
        return Ok(());
    }
    if path_root(len, last, &proof.tail, &proof.tail_siblings)? != *id.as_bytes() {
        return Err(ProofError::LengthUnproven { len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;

    thread_local! {
        /// Bytes fed to `subtree_cv` on this thread, to check that proving is one pass.
        pub(super) static HASHED: Cell<u64> = const { Cell::new(0) };
    }

    fn shard(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
            .collect()
    }

    /// Lengths around every tree-shape boundary up to 256 KiB.
    fn boundary_lengths() -> Vec<usize> {
        let mut v = vec![1, 2, 1023, 1024, 1025, 2047, 2048, 2049, 3072, 3073];
        for j in 1..=8 {
            let b = SEGMENT_LEN << j;
            v.extend([b - 1, b, b + 1, b + SEGMENT_LEN, b + SEGMENT_LEN + 1]);
        }
        v
    }

    #[test]
    fn segment_counts() {
        assert_eq!(segments(0), 0);
        assert_eq!(segments(1), 1);
        assert_eq!(segments(1024), 1);
        assert_eq!(segments(1025), 2);
        assert_eq!(segments(MAX_SHARD_LEN), 1 << 20);
        assert_eq!(segment_for(7, 0), 0);
        assert_eq!(segment_for(7, 3 * 1024), 1);
        assert_eq!(segment_for(u64::MAX, 1), 0);
    }

    #[test]
    fn proofs_verify_at_every_boundary_length() {
        for len in boundary_lengths() {
            let s = shard(len, len as u8);
            let id = ChunkId::of(&s);
            let n = segments(len as u64);
            // Every segment of small shards, a spread of them for large ones.
            let step = (n / 16).max(1);
            for nonce in (0..n).step_by(step as usize).chain([n - 1, n, u64::MAX]) {
                let p = prove(&s, nonce).unwrap();
                assert_eq!(verify(&id, nonce, &p), Ok(()), "len {len} nonce {nonce}");
                assert_eq!(
                    p.siblings.len(),
                    path_shape(len as u64, p_index(&p, nonce)).len()
                );
            }
        }
    }

    fn p_index(p: &AuditProof, nonce: u64) -> u64 {
        segment_for(nonce, p.len)
    }

    #[test]
    fn one_segment_shard_has_no_path() {
        let s = shard(1024, 1);
        let p = prove(&s, 99).unwrap();
        assert_eq!(p.segment, s);
        assert!(p.siblings.is_empty() && p.tail.is_empty() && p.tail_siblings.is_empty());
        assert_eq!(verify(&ChunkId::of(&s), 3, &p), Ok(()));
    }

    #[test]
    fn empty_and_oversized_shards_are_rejected() {
        assert_eq!(prove(&[], 0), Err(ProofError::EmptyShard));
        let p = AuditProof {
            len: 0,
            segment: vec![],
            siblings: vec![],
            tail: vec![],
            tail_siblings: vec![],
        };
        assert_eq!(
            verify(&ChunkId::of(b""), 0, &p),
            Err(ProofError::EmptyShard)
        );
        let p = AuditProof {
            len: MAX_SHARD_LEN + 1,
            ..p
        };
        assert_eq!(
            verify(&ChunkId::of(b""), 0, &p),
            Err(ProofError::TooLong {
                len: MAX_SHARD_LEN + 1
            })
        );
    }

    #[test]
    fn corrupted_byte_in_challenged_segment_fails() {
        let len = 100 * 1024 + 17;
        let s = shard(len, 9);
        let id = ChunkId::of(&s);
        for nonce in [0u64, 5, 57, 100] {
            let index = segment_for(nonce, len as u64) as usize;
            let mut bad = s.clone();
            bad[index * SEGMENT_LEN + 3] ^= 0x40;
            let p = prove(&bad, nonce).unwrap();
            assert_eq!(verify(&id, nonce, &p), Err(ProofError::RootMismatch));
        }
    }

    #[test]
    fn corrupted_byte_anywhere_fails() {
        let len = 37 * 1024 + 5;
        let s = shard(len, 2);
        let id = ChunkId::of(&s);
        for at in (0..len).step_by(997).chain([len - 1]) {
            let mut bad = s.clone();
            bad[at] ^= 1;
            for nonce in [0u64, 11, 36, 37] {
                let p = prove(&bad, nonce).unwrap();
                assert!(
                    verify(&id, nonce, &p).is_err(),
                    "flip at {at}, nonce {nonce}"
                );
            }
        }
    }

    #[test]
    fn tampered_proofs_fail() {
        let len = 9 * 1024 + 100;
        let s = shard(len, 3);
        let id = ChunkId::of(&s);
        let nonce = 4;
        let good = prove(&s, nonce).unwrap();
        assert_eq!(verify(&id, nonce, &good), Ok(()));

        for i in 0..good.siblings.len() {
            let mut p = good.clone();
            p.siblings[i][7] ^= 1;
            assert_eq!(verify(&id, nonce, &p), Err(ProofError::RootMismatch));
        }
        for i in 0..good.tail_siblings.len() {
            let mut p = good.clone();
            p.tail_siblings[i][0] ^= 0x80;
            assert_eq!(
                verify(&id, nonce, &p),
                Err(ProofError::LengthUnproven { len: len as u64 })
            );
        }
        let mut p = good.clone();
        p.segment[0] ^= 1;
        assert_eq!(verify(&id, nonce, &p), Err(ProofError::RootMismatch));
        let mut p = good.clone();
        p.tail[0] ^= 1;
        assert!(verify(&id, nonce, &p).is_err());
        let mut p = good.clone();
        p.siblings.pop();
        assert!(matches!(
            verify(&id, nonce, &p),
            Err(ProofError::WrongPathLength { .. })
        ));
        let mut p = good.clone();
        p.segment.push(0);
        assert!(matches!(
            verify(&id, nonce, &p),
            Err(ProofError::WrongSegmentLength { .. })
        ));
        for delta in [1i64, -1, 1024, -1024, 4096] {
            let mut p = good.clone();
            p.len = (len as i64 + delta) as u64;
            assert!(verify(&id, nonce, &p).is_err(), "len off by {delta}");
        }
        // A tail is only allowed when the challenged segment is not the last.
        let last_nonce = segments(len as u64) - 1;
        let mut p = prove(&s, last_nonce).unwrap();
        assert_eq!(verify(&id, last_nonce, &p), Ok(()));
        p.tail = good.segment.clone();
        assert_eq!(verify(&id, last_nonce, &p), Err(ProofError::UnexpectedTail));
    }

    /// The attack the tail exists for: a holder keeps only segment 0 and its path, and claims
    /// a length that maps the nonce to segment 0 while keeping the same left half of the tree.
    #[test]
    fn a_forged_length_cannot_redirect_the_challenge() {
        let s = shard(8 * 1024, 4);
        let id = ChunkId::of(&s);
        let kept = prove(&s, 0).unwrap();
        // Nonce 6 challenges segment 6 of 8, but segment 0 of a 6-segment shard, whose path
        // has the same shape as in the real 8-segment tree.
        let nonce = 6;
        let claimed = 6 * 1024;
        assert_eq!(segment_for(nonce, claimed), 0);
        let segment_root = path_root(claimed, 0, &kept.segment, &kept.siblings).unwrap();
        assert_eq!(
            segment_root,
            *id.as_bytes(),
            "the segment path alone is fooled"
        );

        // With the real last segment (index 7) the claim no longer fits; with the claimed
        // last segment (index 5) and the best path the holder can offer, neither.
        let mut forged = AuditProof {
            len: claimed,
            ..kept.clone()
        };
        assert!(verify(&id, nonce, &forged).is_err());
        forged.tail = s[5 * 1024..6 * 1024].to_vec();
        let real5 = prove(&s, 5).unwrap();
        forged.tail_siblings = vec![real5.siblings[0], real5.siblings[2]];
        assert_eq!(
            verify(&id, nonce, &forged),
            Err(ProofError::LengthUnproven { len: claimed })
        );
    }

    #[test]
    fn proof_for_one_nonce_fails_for_another_segment() {
        let len = 20 * 1024;
        let s = shard(len, 5);
        let id = ChunkId::of(&s);
        let p = prove(&s, 3).unwrap();
        assert_eq!(verify(&id, 3, &p), Ok(()));
        assert_eq!(
            verify(&id, 23, &p),
            Ok(()),
            "23 ≡ 3 mod 20 is the same segment"
        );
        for other in [0u64, 1, 2, 4, 12, 19] {
            assert!(verify(&id, other, &p).is_err(), "nonce {other}");
        }
    }

    #[test]
    fn proving_hashes_each_byte_once() {
        let len = 100 * 1024;
        let s = shard(len, 6);
        for nonce in [0u64, 1, 50, 99] {
            HASHED.with(|h| h.set(0));
            let p = prove(&s, nonce).unwrap();
            assert_eq!(HASHED.with(|h| h.get()), len as u64, "nonce {nonce}");
            assert_eq!(verify(&ChunkId::of(&s), nonce, &p), Ok(()));
        }
    }

    #[test]
    fn decode_bounds_lengths() {
        let mut out = vec![PROOF_VERSION];
        out.extend_from_slice(&4096u64.to_le_bytes());
        out.extend_from_slice(&(SEGMENT_LEN as u32 + 1).to_le_bytes());
        assert!(matches!(
            AuditProof::from_bytes(&out),
            Err(CodecError::TooLong { .. })
        ));
        let mut out = vec![PROOF_VERSION];
        out.extend_from_slice(&4096u64.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(MAX_SIBLINGS as u32 + 1).to_le_bytes());
        assert!(matches!(
            AuditProof::from_bytes(&out),
            Err(CodecError::TooLong { .. })
        ));
        let mut out = vec![PROOF_VERSION];
        out.extend_from_slice(&(MAX_SHARD_LEN + 1).to_le_bytes());
        assert!(matches!(
            AuditProof::from_bytes(&out),
            Err(CodecError::Invalid { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_shards_prove_and_verify(
            len in prop_oneof![1usize..4096, 1usize..300 * 1024,
                (1u32..9, -1i32..=1).prop_map(|(j, d)| ((1024i64 << j) + d as i64) as usize)],
            seed: u8,
            nonce: u64,
            other: u64,
        ) {
            let s = shard(len, seed);
            let id = ChunkId::of(&s);
            let p = prove(&s, nonce)?;
            prop_assert_eq!(verify(&id, nonce, &p), Ok(()));
            // Codec round trip of a real proof.
            prop_assert_eq!(&AuditProof::from_bytes(&p.to_bytes())?, &p);
            let (a, b) = (segment_for(nonce, len as u64), segment_for(other, len as u64));
            prop_assert_eq!(verify(&id, other, &p).is_ok(), a == b);
        }

        #[test]
        fn flipped_bit_is_caught_in_its_segment(
            len in 1usize..64 * 1024,
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
            k: u64,
        ) {
            let s = shard(len, 7);
            let id = ChunkId::of(&s);
            let mut bad = s.clone();
            let at = at.index(len);
            bad[at] ^= 1 << bit;
            // The holder is challenged on the segment that holds the flipped bit.
            let n = segments(len as u64);
            let nonce = (at / SEGMENT_LEN) as u64 + n * (k % 1_000_000);
            let p = prove(&bad, nonce)?;
            prop_assert!(verify(&id, nonce, &p).is_err());
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            if let Ok(p) = AuditProof::from_bytes(&bytes) {
                let _ = verify(&ChunkId::of(&bytes), 0, &p);
                prop_assert_eq!(AuditProof::from_bytes(&p.to_bytes())?, p);
            }
        }

        #[test]
        fn arbitrary_proofs_never_panic(
            len in 0u64..3 * MAX_SHARD_LEN,
            seg_len in 0usize..1100,
            siblings in 0usize..30,
            tail_len in 0usize..1100,
            nonce: u64,
        ) {
            let p = AuditProof {
                len,
                segment: vec![1; seg_len],
                siblings: vec![[2; 32]; siblings],
                tail: vec![3; tail_len],
                tail_siblings: vec![[4; 32]; siblings / 2],
            };
            prop_assert!(verify(&ChunkId::of(b"x"), nonce, &p).is_err());
        }

        #[test]
        fn truncations_are_errors(len in 1usize..20_000, nonce: u64) {
            let bytes = prove(&shard(len, 1), nonce)?.to_bytes();
            for cut in 0..bytes.len() {
                prop_assert!(AuditProof::from_bytes(&bytes[..cut]).is_err());
            }
        }
    }
}
