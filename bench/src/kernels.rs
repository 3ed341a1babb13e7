//! `bench kernels`: single-thread rates of the data-path kernels in GB/s (10^9 bytes/s):
//! AEAD seal/open, BLAKE3, Reed–Solomon encode and reconstruct. Reed–Solomon rates count
//! the k data shards' bytes (the user data coded), not the parity.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::ensure;
use clap::Args;
use crypto_accel::{block_nonce, Aead, AeadAlgo, Erasure, Hash, IntervalKey, TAG_LEN};

use crate::measure::{interleaved, min_max, Case};

/// Options of `bench kernels`.
#[derive(Debug, Args)]
pub struct KernelArgs {
    /// Measurement time in seconds, shared by all cases and repetitions (warm-up excluded).
    #[arg(long, default_value_t = 30.0)]
    secs: f64,
    /// Interleaved repetitions; medians are taken over them.
    #[arg(long, default_value_t = 7)]
    reps: usize,
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn size_name(n: usize) -> String {
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else {
        format!("{} KiB", n / KIB)
    }
}

/// Bytes that are not all alike, so nothing can shortcut on zeros.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(167).wrapping_add(salt) ^ (i >> 9) as u8)
        .collect()
}

fn aead_cases(algo: AeadAlgo, size: usize) -> anyhow::Result<Vec<Case<'static>>> {
    let key = IntervalKey::from_bytes([0x42; 32]);
    let seal_key = Aead::new(algo, &key)?;
    let open_key = Aead::new(algo, &key)?;
    let nonce = block_nonce(1, 7, 0)?;
    let aad = b"cpchain bench";
    let mut seal_buf = pattern(size, 1);
    // A valid ciphertext ‖ tag, copied in fresh (untimed) before each timed open.
    let mut sealed = pattern(size, 2);
    let tag = seal_key.seal_in_place(nonce, aad, &mut sealed)?;
    sealed.extend_from_slice(&tag);
    let mut open_buf = sealed.clone();
    ensure!(open_buf.len() == size + TAG_LEN, "sealed length");
    let sz = size_name(size);
    Ok(vec![
        Case::new(
            format!("{} seal {sz}", algo.name()),
            size as f64,
            move || {
                black_box(seal_key.seal_in_place(nonce, aad, black_box(&mut seal_buf))?);
                Ok(())
            },
        ),
        Case::timed(
            format!("{} open {sz}", algo.name()),
            size as f64,
            move || {
                open_buf.copy_from_slice(&sealed);
                let t = Instant::now();
                open_key.open_in_place(nonce, aad, black_box(&mut open_buf))?;
                Ok(t.elapsed())
            },
        ),
    ])
}

fn blake3_case(size: usize) -> Case<'static> {
    let data = pattern(size, 3);
    Case::new(
        format!("blake3 {}", size_name(size)),
        size as f64,
        move || {
            black_box(Hash::of(black_box(&data)));
            Ok(())
        },
    )
}

fn rs_cases(k: usize, m: usize, shard: usize) -> anyhow::Result<Vec<Case<'static>>> {
    let code = Erasure::new(k, m)?;
    let data: Vec<Vec<u8>> = (0..k).map(|i| pattern(shard, i as u8)).collect();
    let mut parity: Vec<Vec<u8>> = vec![vec![0u8; shard]; m];
    code.encode_sep(&data, &mut parity)?;
    // All k + m shards; the first m data shards go missing each time (the costly case: data,
    // not parity, has to be rebuilt).
    let mut slots: Vec<(Vec<u8>, bool)> = data
        .iter()
        .chain(parity.iter())
        .map(|s| (s.clone(), true))
        .collect();
    let expect: Vec<Hash> = data.iter().map(|d| Hash::of(d)).collect();
    let recon = Erasure::new(k, m)?;
    let mut check = true;
    let bytes = (k * shard) as f64;
    let sz = size_name(shard);
    Ok(vec![
        Case::new(
            format!("RS {k}+{m} encode, {sz} shards"),
            bytes,
            move || {
                code.encode_sep(black_box(&data), &mut parity)?;
                Ok(())
            },
        ),
        Case::new(
            format!("RS {k}+{m} reconstruct {m} missing, {sz} shards"),
            bytes,
            move || {
                for s in slots.iter_mut().take(m) {
                    s.1 = false;
                }
                recon.reconstruct(black_box(&mut slots), true)?;
                if check {
                    // Once: the rebuilt shards are the originals.
                    for (i, s) in slots.iter().take(k).enumerate() {
                        ensure!(Hash::of(&s.0) == expect[i], "shard {i} rebuilt wrong");
                    }
                    check = false;
                }
                Ok(())
            },
        ),
    ])
}

/// Runs every kernel and returns the markdown report body.
pub fn run(a: &KernelArgs) -> anyhow::Result<String> {
    let mut cases = Vec::new();
    for algo in [AeadAlgo::Aes256Gcm, AeadAlgo::ChaCha20Poly1305] {
        for size in [64 * KIB, MIB] {
            cases.extend(aead_cases(algo, size)?);
        }
    }
    for size in [4 * KIB, 64 * KIB, MIB] {
        cases.push(blake3_case(size));
    }
    for (k, m) in [(10, 4), (4, 2)] {
        for shard in [256 * KIB, MIB] {
            cases.extend(rs_cases(k, m, shard)?);
        }
    }
    let slice = Duration::from_secs_f64(a.secs / (a.reps.max(1) * cases.len()) as f64);
    eprintln!(
        "kernels: {} reps x {} cases x {:.0} ms",
        a.reps,
        cases.len(),
        slice.as_secs_f64() * 1e3
    );
    let s = interleaved(&mut cases, a.reps, slice, Duration::from_millis(200))?;

    let mut md = String::new();
    writeln!(
        md,
        "One thread. GB/s = 10^9 bytes/s of input (RS: of the k data shards). Median of {} \
         interleaved repetitions of {:.0} ms; open excludes copying the ciphertext in.\n",
        a.reps,
        slice.as_secs_f64() * 1e3
    )?;
    writeln!(md, "| kernel | GB/s (median) | min – max |")?;
    writeln!(md, "|---|---:|---:|")?;
    for (i, name) in s.names.iter().enumerate() {
        let (lo, hi) = min_max(&s.rates[i]);
        writeln!(
            md,
            "| {name} | {:.2} | {:.2} – {:.2} |",
            s.median(i) / 1e9,
            lo / 1e9,
            hi / 1e9
        )?;
    }
    writeln!(md)?;
    Ok(md)
}
