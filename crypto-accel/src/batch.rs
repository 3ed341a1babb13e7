//! Batch ed25519 verification that reports *which* items are bad.
//!
//! A batch is stored flat (keys, signatures, one message arena with offsets) so a backend can
//! ship it to an accelerator in one transfer; submission ([`BatchVerifier::submit`]) is
//! separate from completion ([`VerifyJob::wait`]) so a GPU backend can overlap transfers with
//! work.
//!
//! The CPU backend checks the batch equation `Σ zᵢ·(sᵢ·B − Rᵢ − hᵢ·Aᵢ) = 0` of our own, in
//! two steps. *Preparing* decompresses every Rᵢ, checks every sᵢ and hashes every
//! hᵢ = H(Rᵢ‖Aᵢ‖Mᵢ); it is about a third of the work and is spread over the pool in small
//! pieces, so both threads finish it together however unevenly the machine runs them. The
//! *equations* (one multiscalar multiplication per piece of the batch, dalek's Pippenger)
//! then run on the prepared items. A failing piece is bisected with the same prepared items,
//! so finding one bad signature in 1024 costs about 2·log2(piece) small multiplications, not
//! a one-by-one pass, and an item whose R is not a curve point or whose s is not canonical is
//! reported at once without any equation.
//!
//! The weights zᵢ are 128-bit values drawn from a BLAKE3 stream keyed by a hash of every
//! item's hᵢ and sᵢ: unpredictable to whoever made the signatures, and the same on every node
//! for the same batch. Batch and single verification agree on every honestly made signature,
//! and an R of small order is refused while preparing, as strict verification refuses it.
//! Like every ed25519 batch equation (dalek's included), ours may still accept an adversarial
//! signature whose R or A carries a torsion component that strict single verification
//! rejects: whether it passes depends on its weight and on which items share its equation,
//! so whoever assembles a batch can try variants until one passes (about 1 in 8), and nodes
//! that split the same batch differently (by load or thread count) may disagree about it.
//! Consensus code must therefore not let such a verdict decide alone what is valid on chain.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha512};

use crate::error::{CryptoError, CryptoResult};
use crate::keys::{PublicKey, SigDomain, Signature};

/// A batch of (public key, signed message, signature) items stored contiguously.
#[derive(Debug, Clone, Default)]
pub struct VerifyBatch {
    keys: Vec<VerifyingKey>,
    sigs: Vec<ed25519_dalek::Signature>,
    /// `msg_ends[i]` is where message `i` ends in `arena`; it starts where `i - 1` ended.
    msg_ends: Vec<usize>,
    arena: Vec<u8>,
}

impl VerifyBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `items` items and `msg_bytes` bytes of messages.
    pub fn with_capacity(items: usize, msg_bytes: usize) -> Self {
        VerifyBatch {
            keys: Vec::with_capacity(items),
            sigs: Vec::with_capacity(items),
            msg_ends: Vec::with_capacity(items),
            arena: Vec::with_capacity(msg_bytes),
        }
    }

    /// Adds a signature over `msg` in `domain`; the domain prefix is written into the arena.
    pub fn push(&mut self, key: &PublicKey, domain: SigDomain, msg: &[u8], sig: &Signature) {
        domain.signed_bytes_into(msg, &mut self.arena);
        self.finish_push(key, sig);
    }

    /// Adds a signature over bytes that already carry their domain prefix.
    pub fn push_raw(&mut self, key: &PublicKey, signed: &[u8], sig: &Signature) {
        self.arena.extend_from_slice(signed);
        self.finish_push(key, sig);
    }

    fn finish_push(&mut self, key: &PublicKey, sig: &Signature) {
        self.keys.push(*key.verifying_key());
        self.sigs.push(ed25519_dalek::Signature::from_bytes(&sig.0));
        self.msg_ends.push(self.arena.len());
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are no items.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Removes every item, keeping the allocations for reuse.
    pub fn clear(&mut self) {
        self.keys.clear();
        self.sigs.clear();
        self.msg_ends.clear();
        self.arena.clear();
    }

    /// The signed bytes of item `i`.
    pub fn message(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.msg_ends[i - 1] };
        &self.arena[start..self.msg_ends[i]]
    }

    /// Checks items `range` with dalek's own batch equation (the benchmark baseline).
    fn dalek_verify_range(&self, range: Range<usize>) -> bool {
        let msgs: Vec<&[u8]> = range.clone().map(|i| self.message(i)).collect();
        ed25519_dalek::verify_batch(&msgs, &self.sigs[range.clone()], &self.keys[range]).is_ok()
    }

    /// Checks item `i` alone with strict single verification.
    fn verify_one(&self, i: usize) -> bool {
        self.keys[i]
            .verify_strict(self.message(i), &self.sigs[i])
            .is_ok()
    }

    /// Prepares items `range` (see [`Prepared`]) and returns their digest, which feeds the
    /// weights.
    fn prepare_piece(&self, range: Range<usize>) -> PreparedPiece {
        let mut piece = PreparedPiece {
            r: Vec::with_capacity(range.len()),
            s: Vec::with_capacity(range.len()),
            h: Vec::with_capacity(range.len()),
            unusable: Vec::new(),
            digest: [0; 32],
        };
        let mut digest = blake3::Hasher::new();
        for i in range {
            let sig = &self.sigs[i];
            let mut hash = Sha512::new();
            hash.update(sig.r_bytes());
            hash.update(self.keys[i].as_bytes());
            hash.update(self.message(i));
            let hram: [u8; 64] = hash.finalize().into();
            digest.update(&hram);
            digest.update(sig.s_bytes());
            // A small-order R (the identity, say) satisfies the equation for every weight
            // when s = h·a, yet strict verification rejects it: unusable, as strict says.
            let r = CompressedEdwardsY(*sig.r_bytes())
                .decompress()
                .filter(|_| !small_order_encoding(sig.r_bytes()));
            let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(*sig.s_bytes()));
            match (r, s) {
                (Some(r), Some(s)) => {
                    piece.r.push(r);
                    piece.s.push(s);
                    piece.h.push(Scalar::from_bytes_mod_order_wide(&hram));
                }
                _ => {
                    // Contributes nothing to any equation; reported invalid as it is.
                    piece.r.push(EdwardsPoint::default());
                    piece.s.push(Scalar::ZERO);
                    piece.h.push(Scalar::ZERO);
                    piece.unusable.push(i);
                }
            }
        }
        piece.digest = *digest.finalize().as_bytes();
        piece
    }
}

/// Whether `enc` encodes a point of small order (one of the eight torsion points), however
/// it is written: those are the points whose y-coordinate is one of theirs, and y = 0 and
/// y = 1 may also be written as p and p + 1. A table lookup, where `is_small_order` costs
/// three doublings per item (4% of a batch).
fn small_order_encoding(enc: &[u8; 32]) -> bool {
    static YS: std::sync::OnceLock<Vec<[u8; 32]>> = std::sync::OnceLock::new();
    let ys = YS.get_or_init(|| {
        let mut ys: Vec<[u8; 32]> = curve25519_dalek::constants::EIGHT_TORSION
            .iter()
            .map(|t| {
                let mut y = t.compress().to_bytes();
                y[31] &= 0x7f;
                y
            })
            .collect();
        let mut p = [0xffu8; 32];
        p[0] = 0xed;
        p[31] = 0x7f;
        let mut p1 = p;
        p1[0] = 0xee;
        ys.extend([p, p1]);
        ys.sort_unstable();
        ys.dedup();
        ys
    });
    let mut y = *enc;
    y[31] &= 0x7f;
    ys.contains(&y)
}

/// Items prepared per piece of the preparing step. Fixed, so an item's weight does not
/// depend on how many threads prepared its batch.
const PREP_PIECE: usize = 32;

/// Key-derivation context of the weight seed.
const WEIGHT_CONTEXT: &str = "cpchain 2026 ed25519 batch weights v1";

/// One piece of a batch, prepared.
struct PreparedPiece {
    r: Vec<EdwardsPoint>,
    s: Vec<Scalar>,
    h: Vec<Scalar>,
    unusable: Vec<usize>,
    digest: [u8; 32],
}

/// What every equation over a batch needs, computed once per batch: each item's R
/// decompressed, its s, its h = H(R‖A‖M) reduced, and the seed of the weights.
struct Prepared {
    r: Vec<EdwardsPoint>,
    s: Vec<Scalar>,
    h: Vec<Scalar>,
    /// Items whose R is not a curve point (or has small order) or whose s is not canonical,
    /// ascending: invalid under strict verification, and left out of every equation.
    unusable: Vec<usize>,
    seed: [u8; 32],
}

impl Prepared {
    /// Prepares `batch`, in pieces spread over the current rayon pool when `parallel`.
    fn new(batch: &VerifyBatch, parallel: bool) -> Self {
        use rayon::prelude::*;
        let n = batch.len();
        let pieces = n.div_ceil(PREP_PIECE);
        let piece = |p: usize| batch.prepare_piece(p * PREP_PIECE..((p + 1) * PREP_PIECE).min(n));
        let parts: Vec<PreparedPiece> = if parallel {
            // One piece per rayon job. Left to itself rayon cuts the range into about two
            // runs per thread and cuts further only what gets stolen, so a thread that
            // finishes early could idle while the other works through a run of 8 pieces
            // that nobody can take from it (with 2 threads and 1024 items, a tenth of the
            // batch's time).
            (0..pieces)
                .into_par_iter()
                .with_max_len(1)
                .map(piece)
                .collect()
        } else {
            (0..pieces).map(piece).collect()
        };
        let mut prep = Prepared {
            r: Vec::with_capacity(n),
            s: Vec::with_capacity(n),
            h: Vec::with_capacity(n),
            unusable: Vec::new(),
            seed: [0; 32],
        };
        let mut seed = blake3::Hasher::new_derive_key(WEIGHT_CONTEXT);
        seed.update(&(n as u64).to_le_bytes());
        for part in parts {
            prep.r.extend(part.r);
            prep.s.extend(part.s);
            prep.h.extend(part.h);
            prep.unusable.extend(part.unusable);
            seed.update(&part.digest);
        }
        prep.seed = *seed.finalize().as_bytes();
        prep
    }

    /// Whether item `i` takes part in equations (see `unusable`).
    fn usable(&self, i: usize) -> bool {
        self.unusable.binary_search(&i).is_err()
    }

    /// Whether `Σ zᵢ·(sᵢ·B − Rᵢ − hᵢ·Aᵢ)` over `range` is the identity.
    fn equation_holds(&self, batch: &VerifyBatch, range: Range<usize>) -> bool {
        let mut stream = blake3::Hasher::new_keyed(&self.seed).finalize_xof();
        stream.set_position(16 * range.start as u64);
        let mut z = Vec::with_capacity(range.len());
        let mut zh = Vec::with_capacity(range.len());
        let mut b = Scalar::ZERO;
        for i in range.clone() {
            let mut wide = [0u8; 32];
            stream.fill(&mut wide[..16]);
            let zi = Scalar::from_bytes_mod_order(wide);
            b += zi * self.s[i];
            zh.push(zi * self.h[i]);
            z.push(zi);
        }
        let scalars = std::iter::once(-b).chain(z).chain(zh);
        let points = std::iter::once(ED25519_BASEPOINT_POINT)
            .chain(self.r[range.clone()].iter().copied())
            .chain(batch.keys[range].iter().map(VerifyingKey::to_edwards));
        EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
    }

    /// Verifies items `range` and appends the indices of the bad usable ones to `invalid`:
    /// an equation first, bisection on failure, single checks at the leaves. When the left
    /// half of a failing range passes, the right half is known to fail and is split without
    /// being checked again.
    fn bisect(&self, batch: &VerifyBatch, range: Range<usize>, invalid: &mut Vec<usize>) {
        // (range, known to contain a bad item)
        let mut stack = vec![(range, false)];
        while let Some((r, known_bad)) = stack.pop() {
            if r.len() <= SINGLE_LEAF {
                invalid.extend(r.filter(|&i| self.usable(i) && !batch.verify_one(i)));
                continue;
            }
            if !known_bad && self.equation_holds(batch, r.clone()) {
                continue;
            }
            let mid = r.start + r.len() / 2;
            if self.equation_holds(batch, r.start..mid) {
                // The bad item must be on the right.
                stack.push((mid..r.end, true));
            } else {
                // Right half first on the stack so indices come out in ascending order.
                stack.push((mid..r.end, false));
                stack.push((r.start..mid, true));
            }
        }
    }
}

/// Ranges this small are checked one by one: a batch of two costs about as much as two
/// single checks, and singles need no bisection.
const SINGLE_LEAF: usize = 2;

/// Which items of a batch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of items checked.
    pub len: usize,
    /// Indices of the items whose signature did not verify, ascending.
    pub invalid: Vec<usize>,
}

impl VerifyReport {
    /// True when every item verified.
    pub fn all_valid(&self) -> bool {
        self.invalid.is_empty()
    }

    /// Whether item `i` verified.
    pub fn is_valid(&self, i: usize) -> bool {
        i < self.len && self.invalid.binary_search(&i).is_err()
    }
}

/// A submitted batch; [`VerifyJob::wait`] blocks until its report is ready.
#[derive(Debug)]
pub struct VerifyJob {
    rx: mpsc::Receiver<(VerifyBatch, VerifyReport)>,
}

impl VerifyJob {
    /// Waits for the result; gives the batch back so its buffers can be reused.
    pub fn wait(self) -> CryptoResult<(VerifyBatch, VerifyReport)> {
        self.rx.recv().map_err(|_| CryptoError::BadBatch {
            reason: "verifier stopped before finishing the batch".into(),
        })
    }
}

/// Something that verifies batches of ed25519 signatures.
pub trait BatchVerifier: Send + Sync {
    /// Short backend name for logs and metrics (`"cpu"`, `"cuda"`).
    fn name(&self) -> &'static str;

    /// Verifies `batch` on the calling thread's behalf and returns the report.
    fn verify(&self, batch: &VerifyBatch) -> VerifyReport;

    /// Starts verifying `batch` and returns at once.
    fn submit(&self, batch: VerifyBatch) -> VerifyJob;
}

/// Configuration of the CPU backend.
#[derive(Debug, Clone)]
pub struct CpuVerifierConfig {
    /// Threads in the verifier's own rayon pool (0 = one per core).
    pub threads: usize,
    /// Most items per batch equation. The multiscalar step gets cheaper per item as batches
    /// grow (callgrind: 256-item chunks cost 15% more than one 1024-item batch), so a batch
    /// is split into as few equations as keep every thread busy.
    pub chunk: usize,
}

impl Default for CpuVerifierConfig {
    fn default() -> Self {
        CpuVerifierConfig {
            threads: 0,
            chunk: 1024,
        }
    }
}

/// The CPU backend: our batch equation (see the module docs) on a named rayon pool
/// (`cpchain-sigverify-N`).
///
/// A batch is split over the pool's threads only while the pool has threads to spare: with
/// as many batches in flight as threads, each batch stays one equation on one thread, because
/// splitting an equation costs work (two 512-item equations take 7% more instructions than
/// one of 1024) and buys latency nobody gets when every thread is busy anyway.
#[derive(Debug, Clone)]
pub struct CpuBatchVerifier {
    pool: Arc<rayon::ThreadPool>,
    chunk: usize,
    /// Batches being verified right now (by `verify` or `submit`).
    active: Arc<AtomicUsize>,
}

/// Counts a batch as in flight (queued or running) until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(n))
    }

    /// Batches in flight now, this one included.
    fn now(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl CpuBatchVerifier {
    /// A verifier with its own thread pool.
    pub fn new(cfg: CpuVerifierConfig) -> CryptoResult<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads)
            .thread_name(|i| format!("cpchain-sigverify-{i}"))
            .build()
            .map_err(|e| CryptoError::BadBatch {
                reason: format!("cannot start verifier threads: {e}"),
            })?;
        Ok(CpuBatchVerifier {
            pool: Arc::new(pool),
            chunk: cfg.chunk.max(SINGLE_LEAF + 1),
            active: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Threads in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Verifies `batch`, counted in flight by `counted` since it was handed to us (a
    /// submitted batch counts while it waits in the queue, so the first of two batches
    /// submitted together already sees the second and does not split).
    fn run(&self, batch: &VerifyBatch, counted: &InFlight) -> VerifyReport {
        use rayon::prelude::*;
        let n = batch.len();
        if n <= SINGLE_LEAF {
            let invalid = (0..n).filter(|&i| !batch.verify_one(i)).collect();
            return VerifyReport { len: n, invalid };
        }
        let in_flight = counted.now();
        let chunk = piece_len(n, self.chunk, self.threads(), in_flight);
        if chunk >= n && (in_flight == 1 || self.pool.current_thread_index().is_some()) {
            // One equation, and either the pool is idle or we are already on one of its
            // threads: no reason to hop.
            let prep = Prepared::new(batch, false);
            let mut invalid = Vec::new();
            prep.bisect(batch, 0..n, &mut invalid);
            return VerifyReport {
                len: n,
                invalid: merge(prep.unusable, invalid),
            };
        }
        let starts: Vec<usize> = (0..n).step_by(chunk).collect();
        self.pool.install(|| {
            let prep = Prepared::new(batch, true);
            let invalid: Vec<usize> = starts
                .par_iter()
                .flat_map_iter(|&s| {
                    let mut bad = Vec::new();
                    prep.bisect(batch, s..(s + chunk).min(n), &mut bad);
                    bad
                })
                .collect();
            VerifyReport {
                len: n,
                invalid: merge(prep.unusable, invalid),
            }
        })
    }
}

/// The ascending union of two lists of item indices.
fn merge(mut a: Vec<usize>, b: Vec<usize>) -> Vec<usize> {
    a.extend(b);
    a.sort_unstable();
    a.dedup();
    a
}

impl BatchVerifier for CpuBatchVerifier {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn verify(&self, batch: &VerifyBatch) -> VerifyReport {
        self.run(batch, &InFlight::enter(&self.active))
    }

    fn submit(&self, batch: VerifyBatch) -> VerifyJob {
        let (tx, rx) = mpsc::sync_channel(1);
        let me = self.clone();
        let counted = InFlight::enter(&self.active);
        self.pool.spawn(move || {
            let report = me.run(&batch, &counted);
            drop(counted);
            // The receiver may have been dropped; then nobody wants the answer.
            let _ = tx.send((batch, report));
        });
        VerifyJob { rx }
    }
}

/// Items per piece when a batch of `n` is split into equal equations of at most `chunk`
/// items for a pool of `threads` with `in_flight` batches (this one included) running: the
/// piece count is a multiple of the threads this batch may use, which are the pool's threads
/// shared among the batches in flight.
fn piece_len(n: usize, chunk: usize, threads: usize, in_flight: usize) -> usize {
    let share = threads.max(1).div_ceil(in_flight.max(1));
    let pieces = n.div_ceil(chunk).max(share).div_ceil(share) * share;
    n.div_ceil(pieces.min(n).max(1)).max(1)
}

/// Verifies every item one by one with strict single verification: the reference the batch
/// backends are tested and benchmarked against.
pub fn verify_each(batch: &VerifyBatch) -> VerifyReport {
    VerifyReport {
        len: batch.len(),
        invalid: (0..batch.len()).filter(|&i| !batch.verify_one(i)).collect(),
    }
}

/// Raw dalek batch verification of the whole batch in one equation, without bisection: the
/// baseline our backends are benchmarked against. True when every item verifies.
pub fn dalek_verify_batch_raw(batch: &VerifyBatch) -> bool {
    batch.dalek_verify_range(0..batch.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Keypair, MessageKind};

    /// `n` items signed by `keys` distinct keys, each signature then passed to `spoil`.
    fn signed(n: usize, keys: usize, spoil: impl Fn(usize, &mut Signature)) -> VerifyBatch {
        let d = SigDomain::new(7, MessageKind::TEST);
        let mut b = VerifyBatch::new();
        for i in 0..n {
            let kp = Keypair::from_seed([(i % keys) as u8; 32]);
            let msg = format!("message {i}");
            let mut sig = kp.sign(d, msg.as_bytes());
            spoil(i, &mut sig);
            b.push(&kp.public(), d, msg.as_bytes(), &sig);
        }
        b
    }

    fn batch(n: usize, bad: &[usize]) -> VerifyBatch {
        signed(n, 251, |i, sig| {
            if bad.contains(&i) {
                sig.0[3] ^= 0x40;
            }
        })
    }

    #[test]
    fn finds_exactly_the_bad_items() {
        let v = CpuBatchVerifier::new(CpuVerifierConfig {
            threads: 2,
            chunk: 64,
        })
        .unwrap();
        for bad in [
            vec![],
            vec![0],
            vec![299],
            vec![5, 6, 7, 150, 298],
            vec![63, 64],
        ] {
            let b = batch(300, &bad);
            let r = v.verify(&b);
            assert_eq!(r.invalid, bad, "bad set {bad:?}");
            assert_eq!(r, verify_each(&b));
            let (_, r2) = v.submit(b).wait().unwrap();
            assert_eq!(r2.invalid, bad);
        }
    }

    /// Items made bad in each way the preparing step and the equations must tell apart.
    fn mixed_batch() -> (VerifyBatch, Vec<usize>) {
        let d = SigDomain::new(7, MessageKind::TEST);
        // The first y whose encoding is not a curve point.
        let not_a_point = (2u8..)
            .map(|y| {
                let mut b = [0u8; 32];
                b[0] = y;
                b
            })
            .find(|b| CompressedEdwardsY(*b).decompress().is_none())
            .unwrap();
        let mut b = VerifyBatch::new();
        let mut bad = Vec::new();
        for i in 0..200usize {
            let kp = Keypair::from_seed([(i % 13) as u8; 32]);
            let msg = format!("mixed {i}");
            let mut sig = kp.sign(d, msg.as_bytes());
            match i % 41 {
                // R is not a curve point.
                5 => sig.0[..32].copy_from_slice(&not_a_point),
                // s is not canonical (above the group order).
                17 => sig.0[32..].copy_from_slice(&[0xff; 32]),
                // s is canonical but wrong.
                29 => sig.0[33] ^= 0x01,
                // R is the identity (small order) and s = h·a: the batch equation holds for
                // every weight, strict verification refuses it.
                37 => {
                    let mut id = [0u8; 32];
                    id[0] = 1;
                    let a =
                        ed25519_dalek::SigningKey::from_bytes(&[(i % 13) as u8; 32]).to_scalar();
                    let mut h = Sha512::new();
                    h.update(id);
                    h.update(kp.public().as_bytes());
                    h.update(d.signed_bytes(msg.as_bytes()));
                    let h = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
                    sig.0[..32].copy_from_slice(&id);
                    sig.0[32..].copy_from_slice((h * a).as_bytes());
                }
                _ => {}
            }
            if matches!(i % 41, 5 | 17 | 29 | 37) {
                bad.push(i);
            }
            b.push(&kp.public(), d, msg.as_bytes(), &sig);
        }
        (b, bad)
    }

    #[test]
    fn malformed_signatures_are_reported_without_hiding_others() {
        let (b, bad) = mixed_batch();
        assert_eq!(verify_each(&b).invalid, bad);
        let prep = Prepared::new(&b, false);
        // Malformed ones are found by preparing alone and left out of the equations...
        assert_eq!(
            prep.unusable,
            vec![5, 17, 37, 46, 58, 78, 87, 99, 119, 128, 140, 160, 169, 181]
        );
        // ...so an equation over a range whose only bad items are malformed holds.
        assert!(prep.equation_holds(&b, 0..20));
        assert!(!prep.equation_holds(&b, 0..30));
        for (threads, chunk) in [(1, 1024), (2, 1024), (2, 64), (2, 7)] {
            let v = CpuBatchVerifier::new(CpuVerifierConfig { threads, chunk }).unwrap();
            assert_eq!(
                v.verify(&b).invalid,
                bad,
                "{threads} threads, chunk {chunk}"
            );
        }
    }

    #[test]
    fn small_order_encodings_are_told_apart_by_table_exactly_as_by_doubling() {
        use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
        let mut encodings: Vec<[u8; 32]> = Vec::new();
        // Every torsion point, both sign bits; the non-canonical p and p + 1, both signs.
        for t in EIGHT_TORSION {
            let e = t.compress().to_bytes();
            encodings.push(e);
            let mut flipped = e;
            flipped[31] ^= 0x80;
            encodings.push(flipped);
        }
        for low in [0xed, 0xee, 0xef] {
            let mut y = [0xffu8; 32];
            y[0] = low;
            y[31] = 0x7f;
            encodings.push(y);
            y[31] = 0xff;
            encodings.push(y);
        }
        // Points of large and of mixed order.
        for i in 1..200u64 {
            let p = ED25519_BASEPOINT_POINT * Scalar::from(i * 7919);
            encodings.push(p.compress().to_bytes());
            encodings.push((p + EIGHT_TORSION[(i % 8) as usize]).compress().to_bytes());
        }
        let mut small = 0;
        for e in encodings {
            if let Some(p) = CompressedEdwardsY(e).decompress() {
                assert_eq!(small_order_encoding(&e), p.is_small_order(), "{e:02x?}");
                small += usize::from(p.is_small_order());
            }
        }
        assert!(small >= 16, "only {small} small-order encodings were tried");
    }

    #[test]
    fn weights_do_not_depend_on_how_the_batch_was_prepared() {
        let (b, _) = mixed_batch();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let par = pool.install(|| Prepared::new(&b, true));
        let seq = Prepared::new(&b, false);
        assert_eq!(par.seed, seq.seed);
        assert_eq!(par.unusable, seq.unusable);
        // A different batch gets different weights.
        let other = batch(200, &[]);
        assert_ne!(Prepared::new(&other, false).seed, seq.seed);
        // An equation over a prefix uses the same weights as the whole: a sub-range of good
        // items holds however it is cut.
        let good = Prepared::new(&other, false);
        for r in [0..200, 3..150, 64..65, 199..200] {
            assert!(good.equation_holds(&other, r.clone()), "{r:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever items are spoiled, and however, the report is exactly the one-by-one one.
        #[test]
        fn report_matches_one_by_one(
            spoil in proptest::collection::vec((0usize..150, 0usize..64, 0u8..8), 0..6),
            chunk in 3usize..200,
            threads in 1usize..3,
        ) {
            let b = signed(150, 37, |i, sig| {
                for &(at, byte, bit) in &spoil {
                    if at == i {
                        sig.0[byte] ^= 1 << bit;
                    }
                }
            });
            let v = CpuBatchVerifier::new(CpuVerifierConfig { threads, chunk }).unwrap();
            proptest::prop_assert_eq!(v.verify(&b), verify_each(&b));
        }
    }

    #[test]
    fn batches_split_only_while_threads_are_spare() {
        // Idle pool of 2: a 1024-item batch is two equations of 512.
        assert_eq!(piece_len(1024, 1024, 2, 1), 512);
        // Two batches in flight on 2 threads: each stays one equation.
        assert_eq!(piece_len(1024, 1024, 2, 2), 1024);
        assert_eq!(piece_len(1024, 1024, 2, 5), 1024);
        // Large batches still split at `chunk`, into a multiple of the spare threads.
        assert_eq!(piece_len(50_000, 1024, 2, 1), 50_000usize.div_ceil(50));
        assert_eq!(piece_len(50_000, 1024, 2, 3), 50_000usize.div_ceil(49));
        assert_eq!(piece_len(3000, 1024, 4, 2), 750);
        // Degenerate sizes.
        assert_eq!(piece_len(1, 1024, 2, 1), 1);
        assert_eq!(piece_len(0, 1024, 2, 1), 1);
    }

    #[test]
    fn concurrent_submissions_report_exactly_the_bad_items() {
        let v = CpuBatchVerifier::new(CpuVerifierConfig {
            threads: 2,
            chunk: 128,
        })
        .unwrap();
        let bads = [vec![], vec![17], vec![0, 255], vec![100, 101, 102]];
        let jobs: Vec<_> = bads.iter().map(|b| v.submit(batch(256, b))).collect();
        for (job, bad) in jobs.into_iter().zip(&bads) {
            let (_, r) = job.wait().unwrap();
            assert_eq!(&r.invalid, bad);
        }
        std::thread::scope(|s| {
            for bad in &bads {
                let v = &v;
                s.spawn(move || assert_eq!(&v.verify(&batch(300, bad)).invalid, bad));
            }
        });
        assert_eq!(v.active.load(Ordering::Acquire), 0);
    }

    #[test]
    fn wrong_domain_is_invalid_and_empty_batch_is_fine() {
        let v = CpuBatchVerifier::new(CpuVerifierConfig::default()).unwrap();
        assert!(v.verify(&VerifyBatch::new()).all_valid());
        let kp = Keypair::from_seed([1; 32]);
        let sig = kp.sign(SigDomain::new(1, MessageKind::TRANSACTION), b"m");
        let mut b = VerifyBatch::new();
        b.push(
            &kp.public(),
            SigDomain::new(2, MessageKind::TRANSACTION),
            b"m",
            &sig,
        );
        b.push(
            &kp.public(),
            SigDomain::new(1, MessageKind::TRANSACTION),
            b"m",
            &sig,
        );
        let r = v.verify(&b);
        assert_eq!(r.invalid, vec![0]);
        assert!(r.is_valid(1) && !r.is_valid(0) && !r.is_valid(2));
        assert!(!dalek_verify_batch_raw(&b));
    }
}
