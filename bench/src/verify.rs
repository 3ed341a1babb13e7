//! `bench verify`: ed25519 batch verification. Baseline: one raw dalek `verify_batch` over
//! the whole batch on one thread. Headlines: our `CpuBatchVerifier` on 1 thread against that
//! baseline (target ≥ 0.95), and on 2 threads against 1 thread (target ≥ 1.8). A batch with
//! exactly one bad signature must report exactly that index.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use anyhow::ensure;
use clap::Args;
use crypto_accel::{
    dalek_verify_batch_raw, verify_each, BatchVerifier, CpuBatchVerifier, CpuVerifierConfig,
    Keypair, MessageKind, SigDomain, Signature, VerifyBatch,
};

use crate::measure::{holds, interleaved, min_max, quantile, si, tight_pairs, Case};

/// Options of `bench verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Signatures per batch.
    #[arg(long, default_value_t = 1024)]
    items: usize,
    /// Measurement time in seconds, shared by all cases and repetitions (warm-up excluded).
    #[arg(long, default_value_t = 40.0)]
    secs: f64,
    /// Interleaved repetitions; medians are taken over them.
    #[arg(long, default_value_t = 11)]
    reps: usize,
    /// Items per batch equation in our verifier (default: the verifier's own default).
    #[arg(long)]
    chunk: Option<usize>,
    /// Bytes per signed message (before the domain prefix).
    #[arg(long, default_value_t = 64)]
    msg_len: usize,
    /// Also sweep the batch-equation size: raw dalek per-signature rate for batches of
    /// 64..=items, and our 1-thread verifier with each chunk size (diagnoses the 1t ratio).
    #[arg(long)]
    sweep: bool,
    /// Back-to-back pairs per headline ratio (see `measure::tight_pairs`).
    #[arg(long, default_value_t = 301)]
    pairs: usize,
}

/// The signed items of one batch, kept in forms every verifier under test can take.
struct Items {
    good: VerifyBatch,
    bad: VerifyBatch,
    bad_index: usize,
    /// (public key, signed bytes, signature) for ring.
    raw: Vec<([u8; 32], Vec<u8>, [u8; 64])>,
}

fn make_items(n: usize, msg_len: usize) -> Items {
    let d = SigDomain::new(1, MessageKind::TEST);
    let bad_index = n * 3 / 7;
    let mut good = VerifyBatch::with_capacity(n, n * (msg_len + 15));
    let mut bad = VerifyBatch::with_capacity(n, n * (msg_len + 15));
    let mut raw = Vec::with_capacity(n);
    for i in 0..n {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        seed[8] = 0xb5;
        let kp = Keypair::from_seed(seed);
        let mut msg = vec![0u8; msg_len];
        for (j, b) in msg.iter_mut().enumerate() {
            *b = (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8;
        }
        let sig: Signature = kp.sign(d, &msg);
        good.push(&kp.public(), d, &msg, &sig);
        if i == bad_index {
            // A well-formed signature over other bytes: the whole batch equation must run
            // before it fails, unlike a signature whose R does not even decompress.
            let mut other = msg.clone();
            if let Some(b) = other.first_mut() {
                *b ^= 1;
            } else {
                other.push(1);
            }
            bad.push(&kp.public(), d, &other, &sig);
        } else {
            bad.push(&kp.public(), d, &msg, &sig);
        }
        raw.push((*kp.public().as_bytes(), d.signed_bytes(&msg), sig.0));
    }
    Items {
        good,
        bad,
        bad_index,
        raw,
    }
}

fn split_halves(b: &VerifyBatch, raw: &[([u8; 32], Vec<u8>, [u8; 64])]) -> [VerifyBatch; 2] {
    let mid = b.len() / 2;
    let mut halves = [VerifyBatch::new(), VerifyBatch::new()];
    for (i, (pk, signed, sig)) in raw.iter().enumerate() {
        // Keys were valid when the batch was made, so this cannot fail; skip defensively.
        if let Ok(pk) = crypto_accel::PublicKey::from_bytes(*pk) {
            halves[usize::from(i >= mid)].push_raw(&pk, signed, &Signature(*sig));
        }
    }
    halves
}

const RAW: &str = "raw dalek verify_batch, 1 thread (baseline)";
const OURS1: &str = "ours, 1 thread";
const OURS2: &str = "ours, 2 threads";
const OURS1_BAD: &str = "ours, 1 thread, 1 bad sig";
const OURS2_BAD: &str = "ours, 2 threads, 1 bad sig";
const STREAM1: &str = "ours, 1 thread, stream (2 batches in flight)";
const STREAM2: &str = "ours, 2 threads, stream (2 batches in flight)";
const RAW2: &str = "raw dalek, 2 threads (2 halves on rayon)";
const EACH_DALEK: &str = "one-by-one dalek verify_strict";
const EACH_RING: &str = "one-by-one ring";

/// Options of the hidden `profile-verify` subcommand: a fixed amount of work for one case,
/// to run under `valgrind --tool=callgrind` (instruction counts do not suffer from noise).
#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// `raw`, `ours1`, `ours2`, `ours1-bad`, `each` or `ring`.
    #[arg(long)]
    case: String,
    /// Signatures per batch.
    #[arg(long, default_value_t = 1024)]
    items: usize,
    /// Items per batch equation in our verifier.
    #[arg(long)]
    chunk: Option<usize>,
    /// Verifications to run (0 = set-up only, to subtract).
    #[arg(long, default_value_t = 3)]
    iters: usize,
}

/// Runs one case `iters` times and returns a one-line note.
pub fn profile(a: &ProfileArgs) -> anyhow::Result<String> {
    let items = make_items(a.items, 64);
    let chunk = a.chunk.unwrap_or(CpuVerifierConfig::default().chunk);
    let threads = if a.case == "ours2" { 2 } else { 1 };
    let v = CpuBatchVerifier::new(CpuVerifierConfig { threads, chunk })?;
    let keys: Vec<ed25519_dalek::VerifyingKey> = items
        .raw
        .iter()
        .map(|(pk, _, _)| ed25519_dalek::VerifyingKey::from_bytes(pk))
        .collect::<Result<_, _>>()?;
    let sigs: Vec<ed25519_dalek::Signature> = items
        .raw
        .iter()
        .map(|(_, _, s)| ed25519_dalek::Signature::from_bytes(s))
        .collect();
    let msgs: Vec<&[u8]> = (0..items.bad.len()).map(|i| items.bad.message(i)).collect();
    for _ in 0..a.iters {
        let ok = match a.case.as_str() {
            "raw" => dalek_verify_batch_raw(black_box(&items.good)),
            "ours1" | "ours2" => v.verify(black_box(&items.good)).all_valid(),
            "ours1-bad" => v.verify(black_box(&items.bad)).invalid == [items.bad_index],
            "each" => verify_each(black_box(&items.good)).all_valid(),
            "proto1-bad" => proto_verify(&keys, &sigs, &msgs, chunk) == [items.bad_index],
            "ring" => items.raw.iter().all(|(pk, msg, sig)| {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk)
                    .verify(msg, sig)
                    .is_ok()
            }),
            other => anyhow::bail!("unknown case {other}"),
        };
        ensure!(ok, "{} gave the wrong verdict", a.case);
    }
    Ok(format!(
        "profile-verify: {} x {} on {} items, chunk {chunk}\n",
        a.iters, a.case, a.items
    ))
}

/// A prototype of the bisection proposed for `crypto-accel` (see the report): when a failing
/// range's left half passes, its right half is known to fail and is split without being
/// checked again. One thread, chunks of `chunk`; returns the invalid indices.
fn proto_verify(
    keys: &[ed25519_dalek::VerifyingKey],
    sigs: &[ed25519_dalek::Signature],
    msgs: &[&[u8]],
    chunk: usize,
) -> Vec<usize> {
    let batch_ok = |r: std::ops::Range<usize>| {
        ed25519_dalek::verify_batch(&msgs[r.clone()], &sigs[r.clone()], &keys[r]).is_ok()
    };
    let mut invalid = Vec::new();
    let mut s = 0;
    while s < keys.len() {
        let r = s..(s + chunk).min(keys.len());
        s = r.end;
        // (range, known to contain a failure)
        let mut stack = vec![(r, false)];
        while let Some((r, known_bad)) = stack.pop() {
            if r.len() <= 2 {
                invalid.extend(r.filter(|&i| keys[i].verify_strict(msgs[i], &sigs[i]).is_err()));
                continue;
            }
            if !known_bad && batch_ok(r.clone()) {
                continue;
            }
            let mid = r.start + r.len() / 2;
            let (left, right) = (r.start..mid, mid..r.end);
            if left.len() <= 2 || !batch_ok(left.clone()) {
                stack.push((right, false));
                stack.push((left, true));
            } else {
                stack.push((right, true));
            }
        }
    }
    invalid
}

/// Runs the comparison and returns the markdown report body.
pub fn run(a: &VerifyArgs) -> anyhow::Result<String> {
    ensure!(a.items >= 2, "--items must be at least 2");
    let n = a.items;
    let items = make_items(n, a.msg_len);
    let halves = split_halves(&items.good, &items.raw);
    let chunk = a.chunk.unwrap_or(CpuVerifierConfig::default().chunk);
    let v1 = CpuBatchVerifier::new(CpuVerifierConfig { threads: 1, chunk })?;
    let v2 = CpuBatchVerifier::new(CpuVerifierConfig { threads: 2, chunk })?;
    let pool2 = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;

    // Correctness first: every verifier agrees, and the bad index is found exactly.
    ensure!(
        dalek_verify_batch_raw(&items.good),
        "raw dalek rejects a good batch"
    );
    ensure!(
        !dalek_verify_batch_raw(&items.bad),
        "raw dalek accepts a bad batch"
    );
    ensure!(verify_each(&items.good).all_valid(), "verify_each rejects");
    for v in [&v1, &v2] {
        ensure!(v.verify(&items.good).all_valid(), "our verifier rejects");
        let r = v.verify(&items.bad);
        ensure!(
            r.invalid == vec![items.bad_index],
            "our verifier ({} threads) reported {:?}, expected [{}]",
            v.threads(),
            r.invalid,
            items.bad_index
        );
    }

    let nf = n as f64;
    let bad_ok = |r: crypto_accel::VerifyReport| -> anyhow::Result<()> {
        ensure!(
            r.invalid == [items.bad_index],
            "wrong report {:?}",
            r.invalid
        );
        Ok(())
    };
    let mut cases = vec![
        Case::new(RAW, nf, || {
            ensure!(
                dalek_verify_batch_raw(black_box(&items.good)),
                "raw rejects"
            );
            Ok(())
        }),
        Case::new(OURS1, nf, || {
            ensure!(v1.verify(black_box(&items.good)).all_valid(), "1t rejects");
            Ok(())
        }),
        Case::new(OURS2, nf, || {
            ensure!(v2.verify(black_box(&items.good)).all_valid(), "2t rejects");
            Ok(())
        }),
        stream_case(STREAM1, &v1, &items.good),
        stream_case(STREAM2, &v2, &items.good),
        Case::new(OURS1_BAD, nf, || bad_ok(v1.verify(black_box(&items.bad)))),
        Case::new(OURS2_BAD, nf, || bad_ok(v2.verify(black_box(&items.bad)))),
        Case::new(RAW2, nf, || {
            let (x, y) = pool2.join(
                || dalek_verify_batch_raw(&halves[0]),
                || dalek_verify_batch_raw(&halves[1]),
            );
            ensure!(x && y, "raw halves reject");
            Ok(())
        }),
        Case::new(EACH_DALEK, nf, || {
            ensure!(
                verify_each(black_box(&items.good)).all_valid(),
                "each rejects"
            );
            Ok(())
        }),
        Case::new(EACH_RING, nf, || {
            for (pk, msg, sig) in &items.raw {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk)
                    .verify(black_box(msg), sig)
                    .map_err(|_| anyhow::anyhow!("ring rejects"))?;
            }
            Ok(())
        }),
    ];
    let slice = Duration::from_secs_f64(a.secs / (a.reps.max(1) * cases.len()) as f64);
    eprintln!(
        "verify: {n} items, chunk {chunk}, {} reps x {} cases x {:.0} ms",
        a.reps,
        cases.len(),
        slice.as_secs_f64() * 1e3
    );
    let s = interleaved(&mut cases, a.reps, slice, Duration::from_millis(500))?;
    // The headline ratios again, from back-to-back pairs of single batches.
    let mut tight = Vec::new();
    for (what, num, den, target) in [
        ("ours 1 thread / raw dalek batch", OURS1, RAW, Some(0.95)),
        (
            "ours 2 threads / ours 1 thread, one batch at a time",
            OURS2,
            OURS1,
            Some(1.8),
        ),
        (
            "stream, 2 in flight: ours 2 threads / 1 thread",
            STREAM2,
            STREAM1,
            Some(1.8),
        ),
        ("raw dalek 2 threads / 1 thread", RAW2, RAW, None),
    ] {
        eprintln!("verify: {} back-to-back pairs for {what}", a.pairs);
        let r = tight_pairs(&mut cases, s.index(den)?, s.index(num)?, a.pairs.max(1))?;
        tight.push((
            what,
            target,
            quantile(&r, 0.5),
            quantile(&r, 0.25),
            quantile(&r, 0.75),
        ));
    }
    drop(cases);

    let mut md = String::new();
    let raw_med = s.median(s.index(RAW)?);
    writeln!(
        md,
        "{n} signatures per batch, {}-byte messages, distinct keys; our chunk = {chunk}; \
         median of {} interleaved repetitions of {:.0} ms each.\n",
        a.msg_len,
        a.reps,
        slice.as_secs_f64() * 1e3
    )?;
    writeln!(md, "| case | sigs/s (median) | min – max | vs baseline |")?;
    writeln!(md, "|---|---:|---:|---:|")?;
    for (i, name) in s.names.iter().enumerate() {
        let (lo, hi) = min_max(&s.rates[i]);
        writeln!(
            md,
            "| {name} | {} | {} – {} | {:.2}× |",
            si(s.median(i)),
            si(lo),
            si(hi),
            s.median(i) / raw_med
        )?;
    }
    let (o1, o2, raw) = (s.index(OURS1)?, s.index(OURS2)?, s.index(RAW)?);
    let r1 = s.paired_ratio(o1, raw);
    let r2 = s.paired_ratio(o2, o1);
    let rs = s.paired_ratio(s.index(STREAM2)?, s.index(STREAM1)?);
    let rbad = s.paired_ratio(s.index(OURS1_BAD)?, o1);
    writeln!(md)?;
    writeln!(
        md,
        "Ratios per repetition (cases side by side in each round of slices), median:\n"
    )?;
    writeln!(md, "| headline ratio | measured | target | holds |")?;
    writeln!(md, "|---|---:|---:|---|")?;
    writeln!(
        md,
        "| ours 1 thread / raw dalek batch | {r1:.3} | ≥ 0.95 | {} |",
        holds(r1 >= 0.95)
    )?;
    writeln!(
        md,
        "| ours 2 threads / ours 1 thread | {r2:.3} | ≥ 1.8 | {} |",
        holds(r2 >= 1.8)
    )?;
    writeln!(
        md,
        "| stream of {n}-item batches, 2 in flight: ours 2 threads / 1 thread | {rs:.3} | ≥ 1.8 | {} |",
        holds(rs >= 1.8)
    )?;
    writeln!(
        md,
        "| ours 1 thread, 1 bad / all good (index {} found exactly) | {rbad:.3} | — | — |",
        items.bad_index
    )?;
    writeln!(
        md,
        "| raw dalek 2 threads / 1 thread (what 2 cores give here) | {:.3} | — | — |",
        s.paired_ratio(s.index(RAW2)?, raw)
    )?;
    writeln!(md)?;
    writeln!(
        md,
        "The same ratios from {} back-to-back pairs of single iterations each (order \
         alternating), so both sides of a ratio run within milliseconds of each other:\n",
        a.pairs.max(1)
    )?;
    writeln!(md, "| ratio | median | p25 – p75 | target | holds |")?;
    writeln!(md, "|---|---:|---:|---:|---|")?;
    for (what, target, med, p25, p75) in &tight {
        let (t, h) = match *target {
            Some(t) => (format!("≥ {t}"), holds(*med >= t).to_string()),
            None => ("—".into(), "—".into()),
        };
        writeln!(
            md,
            "| {what} | {med:.3} | {p25:.3} – {p75:.3} | {t} | {h} |"
        )?;
    }
    writeln!(md)?;
    if a.sweep {
        md.push_str(&sweep(a, &items)?);
    }
    Ok(md)
}

/// Two copies of `good` submitted at once and both awaited: the throughput of a verifier fed
/// a stream (a node's mempool and block checks), where a busy pool keeps each batch one
/// equation. The copies are made untimed.
fn stream_case<'a>(name: &str, v: &'a CpuBatchVerifier, good: &'a VerifyBatch) -> Case<'a> {
    Case::timed(name, 2.0 * good.len() as f64, move || {
        let (a, b) = (good.clone(), good.clone());
        let t = std::time::Instant::now();
        let (ja, jb) = (v.submit(a), v.submit(b));
        let (ra, rb) = (ja.wait()?.1, jb.wait()?.1);
        let took = t.elapsed();
        ensure!(ra.all_valid() && rb.all_valid(), "stream rejects");
        Ok(took)
    })
}

/// Per-signature rate of one raw dalek batch equation by batch size, and of our 1-thread
/// verifier by chunk size, over the same `items`.
fn sweep(a: &VerifyArgs, items: &Items) -> anyhow::Result<String> {
    let n = items.good.len();
    let mut sizes = vec![];
    let mut c = 32;
    while c < n {
        sizes.push(c);
        c *= 2;
    }
    sizes.push(n);
    // Sub-batches of each size, covering the same items in turn.
    let mut cases = Vec::new();
    for &size in &sizes {
        let parts: Vec<VerifyBatch> = items
            .raw
            .chunks(size)
            .filter(|c| c.len() == size)
            .map(|c| {
                let mut b = VerifyBatch::with_capacity(size, size * (a.msg_len + 15));
                for (pk, signed, sig) in c {
                    if let Ok(pk) = crypto_accel::PublicKey::from_bytes(*pk) {
                        b.push_raw(&pk, signed, &Signature(*sig));
                    }
                }
                b
            })
            .collect();
        let total = (parts.len() * size) as f64;
        cases.push(Case::new(
            format!("raw dalek, batches of {size}"),
            total,
            move || {
                for p in &parts {
                    ensure!(dalek_verify_batch_raw(black_box(p)), "raw rejects");
                }
                Ok(())
            },
        ));
        let v = CpuBatchVerifier::new(CpuVerifierConfig {
            threads: 1,
            chunk: size,
        })?;
        let good = &items.good;
        cases.push(Case::new(
            format!("ours 1 thread, chunk {size}"),
            n as f64,
            move || {
                ensure!(v.verify(black_box(good)).all_valid(), "ours rejects");
                Ok(())
            },
        ));
    }
    // The hop onto a 1-thread pool alone (what `pool.install` costs our 1-thread verifier).
    let pool1 = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let good = &items.good;
    cases.push(Case::new(
        format!("raw dalek, batch of {n} via 1-thread pool.install"),
        n as f64,
        move || {
            ensure!(
                pool1.install(|| dalek_verify_batch_raw(black_box(good))),
                "raw rejects"
            );
            Ok(())
        },
    ));
    let reps = a.reps.max(3);
    let slice = Duration::from_secs_f64(a.secs / (reps * cases.len()) as f64);
    eprintln!("sweep: {reps} reps x {} cases", cases.len());
    let s = interleaved(&mut cases, reps, slice, Duration::from_millis(300))?;
    let base = s.median(s.index(&format!("raw dalek, batches of {n}"))?);
    let mut md = String::new();
    writeln!(md, "Batch-size sweep (1 thread; rate per signature):\n")?;
    writeln!(md, "| case | sigs/s (median) | vs raw batch of {n} |")?;
    writeln!(md, "|---|---:|---:|")?;
    for (i, name) in s.names.iter().enumerate() {
        writeln!(
            md,
            "| {name} | {} | {:.3} |",
            si(s.median(i)),
            s.median(i) / base
        )?;
    }
    writeln!(md)?;
    Ok(md)
}
