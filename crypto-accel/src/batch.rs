//! Batch ed25519 verification that reports *which* items are bad.
//!
//! A batch is stored flat (keys, signatures, one message arena with offsets) so a backend can
//! ship it to an accelerator in one transfer; submission ([`BatchVerifier::submit`]) is
//! separate from completion ([`VerifyJob::wait`]) so a GPU backend can overlap transfers with
//! work. The CPU backend splits the batch over a named rayon pool, verifies each chunk with
//! dalek's batch equation, and bisects only the chunks that fail: one bad signature in 1024
//! costs about 2·log2(chunk) extra small batches, not a one-by-one pass.
//!
//! Batch and single verification agree on every honestly made signature. Like every ed25519
//! batch equation, dalek's may accept adversarial signatures with torsion components that
//! strict single verification rejects; consensus code decides with the report of one backend
//! on every node, so all honest nodes reach the same verdict.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;

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

    /// Checks items `range` with one batch equation.
    fn verify_range<'a>(&'a self, range: std::ops::Range<usize>, msgs: &mut Vec<&'a [u8]>) -> bool {
        msgs.clear();
        msgs.extend(range.clone().map(|i| self.message(i)));
        ed25519_dalek::verify_batch(msgs, &self.sigs[range.clone()], &self.keys[range]).is_ok()
    }

    /// Checks item `i` alone with strict single verification.
    fn verify_one(&self, i: usize) -> bool {
        self.keys[i]
            .verify_strict(self.message(i), &self.sigs[i])
            .is_ok()
    }

    /// Verifies items `range` and appends the indices of the bad ones to `invalid`:
    /// batch first, bisect on failure, single checks at the leaves. When the left half of a
    /// failing range passes, the right half is known to fail and is split without being
    /// checked again.
    fn verify_bisect(&self, range: std::ops::Range<usize>, invalid: &mut Vec<usize>) {
        let mut msgs = Vec::with_capacity(range.len());
        // (range, known to contain a bad item)
        let mut stack = vec![(range, false)];
        while let Some((r, known_bad)) = stack.pop() {
            if r.len() <= SINGLE_LEAF {
                invalid.extend(r.filter(|&i| !self.verify_one(i)));
                continue;
            }
            if !known_bad && self.verify_range(r.clone(), &mut msgs) {
                continue;
            }
            let mid = r.start + r.len() / 2;
            if self.verify_range(r.start..mid, &mut msgs) {
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

/// The CPU backend: dalek batch verification on a named rayon pool (`cpchain-sigverify-N`).
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
        let in_flight = counted.now();
        let chunk = piece_len(n, self.chunk, self.threads(), in_flight);
        if chunk >= n && (in_flight == 1 || self.pool.current_thread_index().is_some()) {
            // One equation, and either the pool is idle or we are already on one of its
            // threads: no reason to hop.
            let mut invalid = Vec::new();
            batch.verify_bisect(0..n, &mut invalid);
            return VerifyReport { len: n, invalid };
        }
        let starts: Vec<usize> = (0..n).step_by(chunk).collect();
        let mut invalid: Vec<usize> = self.pool.install(|| {
            starts
                .par_iter()
                .flat_map_iter(|&s| {
                    let mut bad = Vec::new();
                    batch.verify_bisect(s..(s + chunk).min(n), &mut bad);
                    bad
                })
                .collect()
        });
        invalid.sort_unstable();
        VerifyReport { len: n, invalid }
    }
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
    let mut msgs = Vec::with_capacity(batch.len());
    batch.verify_range(0..batch.len(), &mut msgs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Keypair, MessageKind};

    fn batch(n: usize, bad: &[usize]) -> VerifyBatch {
        let d = SigDomain::new(7, MessageKind::TEST);
        let mut b = VerifyBatch::new();
        for i in 0..n {
            let kp = Keypair::from_seed([(i % 251) as u8; 32]);
            let msg = format!("message {i}");
            let mut sig = kp.sign(d, msg.as_bytes());
            if bad.contains(&i) {
                sig.0[3] ^= 0x40;
            }
            b.push(&kp.public(), d, msg.as_bytes(), &sig);
        }
        b
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
