//! BLAKE3 Merkle trees with inclusion proofs, for checking one shard against an on-chain
//! root and for storage audits.
//!
//! Leaves and inner nodes are hashed in different domains (a leaf can never pass for a
//! node), and an odd node is promoted unchanged rather than paired with itself, so no two
//! leaf lists share a root.

use crate::codec::{CodecResult, Decode, Encode, Reader};
use crate::error::{CryptoError, CryptoResult};
use crate::hash::Hash;

/// Longest proof accepted on decode: enough for 2^64 leaves.
const MAX_PROOF_DEPTH: usize = 64;

fn leaf_hash(leaf: &Hash) -> Hash {
    Hash::of_parts(&[&[0u8], leaf.as_bytes()])
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Hash::of_parts(&[&[1u8], left.as_bytes(), right.as_bytes()])
}

/// A Merkle tree over a list of leaf hashes, keeping every level for proofs.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// Builds the tree over `leaves`.
    pub fn from_leaves(leaves: &[Hash]) -> MerkleTree {
        let mut levels = vec![leaves.iter().map(leaf_hash).collect::<Vec<_>>()];
        while let Some(last) = levels.last().filter(|l| l.len() > 1) {
            let next = last
                .chunks(2)
                .map(|p| match p {
                    [l, r] => node_hash(l, r),
                    [single] => *single,
                    _ => Hash::ZERO,
                })
                .collect();
            levels.push(next);
        }
        MerkleTree { levels }
    }

    /// Number of leaves.
    pub fn len(&self) -> usize {
        self.levels.first().map_or(0, Vec::len)
    }

    /// True when built over no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The root; the empty tree has a fixed root of its own.
    pub fn root(&self) -> Hash {
        match self.levels.last().and_then(|l| l.first()) {
            Some(r) => *r,
            None => Hash::domain("cpchain merkle empty tree", b""),
        }
    }

    /// The inclusion proof of leaf `index`, if it exists.
    pub fn proof(&self, index: usize) -> Option<MerkleProof> {
        if index >= self.len() {
            return None;
        }
        let mut siblings = Vec::new();
        let mut i = index;
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(s) = level.get(i ^ 1) {
                siblings.push(*s);
            }
            i /= 2;
        }
        Some(MerkleProof {
            index: index as u64,
            leaf_count: self.len() as u64,
            siblings,
        })
    }
}

/// Proof that a leaf sits at `index` in a tree of `leaf_count` leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleProof {
    /// Position of the leaf.
    pub index: u64,
    /// Leaves in the tree.
    pub leaf_count: u64,
    /// Sibling hashes from the leaf level up (promoted levels have none).
    pub siblings: Vec<Hash>,
}

impl MerkleProof {
    /// The root this proof leads to from `leaf`.
    pub fn root_for(&self, leaf: &Hash) -> CryptoResult<Hash> {
        if self.index >= self.leaf_count {
            return Err(CryptoError::BadProof);
        }
        let mut h = leaf_hash(leaf);
        let (mut i, mut width) = (self.index, self.leaf_count);
        let mut sib = self.siblings.iter();
        while width > 1 {
            if i ^ 1 < width {
                let s = sib.next().ok_or(CryptoError::BadProof)?;
                h = if i % 2 == 0 {
                    node_hash(&h, s)
                } else {
                    node_hash(s, &h)
                };
            }
            i /= 2;
            width = width.div_ceil(2);
        }
        if sib.next().is_some() {
            return Err(CryptoError::BadProof);
        }
        Ok(h)
    }

    /// Checks that `leaf` is included under `root`.
    pub fn verify(&self, leaf: &Hash, root: &Hash) -> CryptoResult<()> {
        if &self.root_for(leaf)? == root {
            Ok(())
        } else {
            Err(CryptoError::BadProof)
        }
    }
}

impl Encode for MerkleProof {
    fn encode(&self, out: &mut Vec<u8>) {
        self.index.encode(out);
        self.leaf_count.encode(out);
        (self.siblings.len() as u32).encode(out);
        for s in &self.siblings {
            s.encode(out);
        }
    }
}

impl Decode for MerkleProof {
    fn decode(r: &mut Reader<'_>) -> CodecResult<Self> {
        Ok(MerkleProof {
            index: r.u64()?,
            leaf_count: r.u64()?,
            siblings: r.vec("merkle proof", MAX_PROOF_DEPTH, 32, Hash::decode)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| Hash::of(&(i as u64).to_le_bytes()))
            .collect()
    }

    #[test]
    fn every_proof_verifies_and_wrong_ones_fail() {
        for n in 1..=33 {
            let l = leaves(n);
            let t = MerkleTree::from_leaves(&l);
            let root = t.root();
            for (i, leaf) in l.iter().enumerate() {
                let p = t.proof(i).unwrap();
                p.verify(leaf, &root).unwrap();
                let p2 = MerkleProof::from_bytes(&p.to_bytes()).unwrap();
                assert_eq!(p2, p);
                // Wrong leaf, wrong index, tampered sibling: all fail.
                assert!(p.verify(&Hash::of(b"x"), &root).is_err());
                if n > 1 {
                    let mut q = p.clone();
                    q.index = ((i + 1) % n) as u64;
                    assert!(q.verify(leaf, &root).is_err());
                    let mut q = p.clone();
                    q.siblings[0].0[0] ^= 1;
                    assert!(q.verify(leaf, &root).is_err());
                }
            }
            assert!(t.proof(n).is_none());
        }
    }

    #[test]
    fn distinct_lists_distinct_roots() {
        let a = MerkleTree::from_leaves(&leaves(3)).root();
        let mut l4 = leaves(3);
        l4.push(l4[2]);
        assert_ne!(a, MerkleTree::from_leaves(&l4).root());
        assert_ne!(MerkleTree::from_leaves(&[]).root(), a);
        // A single leaf's root is not the leaf itself (leaf domain).
        let one = leaves(1);
        assert_ne!(MerkleTree::from_leaves(&one).root(), one[0]);
    }
}
