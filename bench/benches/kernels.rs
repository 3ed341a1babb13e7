//! Criterion benches for the crypto kernels: ed25519 batch verification (ours on 1 and 2
//! threads, raw dalek batch, one-by-one dalek and ring) in elements/s; AEAD seal/open,
//! BLAKE3 and Reed–Solomon encode/reconstruct in bytes/s. Measurement times are short so
//! the whole run takes a few minutes on 2 cores; use the `bench` binary for headline ratios.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use crypto_accel::{
    block_nonce, dalek_verify_batch_raw, verify_each, Aead, AeadAlgo, BatchVerifier,
    CpuBatchVerifier, CpuVerifierConfig, Erasure, Hash, IntervalKey, Keypair, MessageKind,
    SigDomain, VerifyBatch,
};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(167).wrapping_add(salt) ^ (i >> 9) as u8)
        .collect()
}

/// A batch of `n` good signatures with distinct keys over 64-byte messages, and the same
/// items as (public key, signed bytes, signature) for ring.
#[allow(clippy::type_complexity)]
fn signed_batch(n: usize) -> (VerifyBatch, Vec<([u8; 32], Vec<u8>, [u8; 64])>) {
    let d = SigDomain::new(1, MessageKind::TEST);
    let mut b = VerifyBatch::with_capacity(n, n * 80);
    let mut raw = Vec::with_capacity(n);
    for i in 0..n {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let kp = Keypair::from_seed(seed);
        let msg = pattern(64, i as u8);
        let sig = kp.sign(d, &msg);
        b.push(&kp.public(), d, &msg, &sig);
        raw.push((*kp.public().as_bytes(), d.signed_bytes(&msg), sig.0));
    }
    (b, raw)
}

fn ed25519(c: &mut Criterion) {
    let v1 = CpuBatchVerifier::new(CpuVerifierConfig {
        threads: 1,
        ..CpuVerifierConfig::default()
    })
    .unwrap();
    let v2 = CpuBatchVerifier::new(CpuVerifierConfig {
        threads: 2,
        ..CpuVerifierConfig::default()
    })
    .unwrap();
    let mut g = c.benchmark_group("ed25519");
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for n in [64usize, 1024, 16384] {
        let (batch, raw) = signed_batch(n);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("ours_1t", n), &batch, |b, batch| {
            b.iter(|| assert!(v1.verify(black_box(batch)).all_valid()))
        });
        g.bench_with_input(BenchmarkId::new("ours_2t", n), &batch, |b, batch| {
            b.iter(|| assert!(v2.verify(black_box(batch)).all_valid()))
        });
        g.bench_with_input(
            BenchmarkId::new("dalek_batch_raw", n),
            &batch,
            |b, batch| b.iter(|| assert!(dalek_verify_batch_raw(black_box(batch)))),
        );
        g.bench_with_input(BenchmarkId::new("dalek_each", n), &batch, |b, batch| {
            b.iter(|| assert!(verify_each(black_box(batch)).all_valid()))
        });
        g.bench_with_input(BenchmarkId::new("ring_each", n), &raw, |b, raw| {
            b.iter(|| {
                for (pk, msg, sig) in raw {
                    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, pk)
                        .verify(black_box(msg), sig)
                        .unwrap();
                }
            })
        });
    }
    g.finish();
}

fn aead(c: &mut Criterion) {
    let key = IntervalKey::from_bytes([0x42; 32]);
    let nonce = block_nonce(1, 7, 0).unwrap();
    let aad = b"cpchain bench";
    let mut g = c.benchmark_group("aead");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for algo in [AeadAlgo::Aes256Gcm, AeadAlgo::ChaCha20Poly1305] {
        let a = Aead::new(algo, &key).unwrap();
        for size in [64 * KIB, MIB] {
            g.throughput(Throughput::Bytes(size as u64));
            let mut buf = pattern(size, 1);
            g.bench_function(
                BenchmarkId::new(format!("{}/seal", algo.name()), size),
                |b| b.iter(|| black_box(a.seal_in_place(nonce, aad, black_box(&mut buf)).unwrap())),
            );
            let sealed = a.seal(nonce, aad, &pattern(size, 2)).unwrap();
            g.bench_function(
                BenchmarkId::new(format!("{}/open", algo.name()), size),
                |b| {
                    b.iter_batched_ref(
                        || sealed.clone(),
                        |buf| a.open_in_place(nonce, aad, black_box(buf)).unwrap(),
                        BatchSize::LargeInput,
                    )
                },
            );
        }
    }
    g.finish();
}

fn blake3(c: &mut Criterion) {
    let mut g = c.benchmark_group("blake3");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for size in [4 * KIB, 64 * KIB, MIB] {
        let data = pattern(size, 3);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| black_box(Hash::of(black_box(&data))))
        });
    }
    g.finish();
}

fn reed_solomon(c: &mut Criterion) {
    let mut g = c.benchmark_group("reed_solomon");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (k, m) in [(10usize, 4usize), (4, 2)] {
        let code = Erasure::new(k, m).unwrap();
        for shard in [256 * KIB, MIB] {
            // Throughput counts the k data shards' bytes.
            g.throughput(Throughput::Bytes((k * shard) as u64));
            let data: Vec<Vec<u8>> = (0..k).map(|i| pattern(shard, i as u8)).collect();
            let mut parity = vec![vec![0u8; shard]; m];
            g.bench_function(BenchmarkId::new(format!("{k}+{m}/encode"), shard), |b| {
                b.iter(|| code.encode_sep(black_box(&data), &mut parity).unwrap())
            });
            let mut slots: Vec<(Vec<u8>, bool)> = data
                .iter()
                .chain(parity.iter())
                .map(|s| (s.clone(), true))
                .collect();
            let id = BenchmarkId::new(format!("{k}+{m}/reconstruct_{m}_missing"), shard);
            g.bench_function(id, |b| {
                b.iter(|| {
                    for s in slots.iter_mut().take(m) {
                        s.1 = false;
                    }
                    code.reconstruct(black_box(&mut slots), true).unwrap()
                })
            });
            assert_eq!(slots[0].0, data[0], "reconstruct rebuilt the data");
        }
    }
    g.finish();
}

criterion_group!(kernels, ed25519, aead, blake3, reed_solomon);
criterion_main!(kernels);
