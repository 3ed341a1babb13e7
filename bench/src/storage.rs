//! `bench store` and `bench seal`: the storage node's chunk store and seal/open pipeline,
//! each against its baseline measured in the same run.
//!
//! `store`: chunk store put/get throughput and p50/p99 latency against `std::fs` (one file
//! per shard, write + fsync), 64 KiB and 1 MiB shards, 1 and 64 concurrent writers, io_uring
//! and portable backends, in a temp dir on the same disk. Headline: 64 KiB puts with 64
//! concurrent writers against one-at-a-time `std::fs` write+fsync (target ≥ 3×).
//!
//! `seal`: the seal pipeline in memory on one thread against 1/Σ(1/rate_i) of its kernels
//! measured alone in the same run on the same shapes (AEAD over the data, RS encode, BLAKE3
//! over all k+m framed shards), target ≥ 0.8; open likewise (BLAKE3 over k shards, AEAD
//! open); seal into the chunk store against `std::fs` sequential write+fsync of the same
//! bytes (target ≥ 0.8).
//!
//! Both need the `store` feature (on by default).

use clap::Args;

/// Options of `bench store`.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Parent of the temporary directories (default: `target/` under the current directory,
    /// so it is on the same disk as the build).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Measurement time in seconds, shared by all configurations and repetitions.
    #[arg(long, default_value_t = 60.0)]
    pub secs: f64,
    /// Interleaved repetitions.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

/// Options of `bench seal`.
#[derive(Debug, Args)]
pub struct SealArgs {
    /// Parent of the temporary directories (default: `target/`).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Bytes of data sealed per iteration, in MiB.
    #[arg(long, default_value_t = 64)]
    pub mib: usize,
    /// Measurement time in seconds, shared by all cases and repetitions.
    #[arg(long, default_value_t = 60.0)]
    pub secs: f64,
    /// Interleaved repetitions.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Plaintext bytes per block, in KiB (default: the pipeline's default).
    #[arg(long)]
    pub block_kib: Option<u32>,
}

#[cfg(feature = "store")]
pub use imp::{run_seal, run_store};

#[cfg(not(feature = "store"))]
/// Runs `bench store`.
pub fn run_store(_a: &StoreArgs) -> anyhow::Result<String> {
    anyhow::bail!("`bench store` needs the `store` feature (the storage-node crate)")
}

#[cfg(not(feature = "store"))]
/// Runs `bench seal`.
pub fn run_seal(_a: &SealArgs) -> anyhow::Result<String> {
    anyhow::bail!("`bench seal` needs the `store` feature (the storage-node crate)")
}

#[cfg(feature = "store")]
mod imp {
    use std::fmt::Write as _;
    use std::hint::black_box;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use anyhow::{ensure, Context};
    use crypto_accel::{
        block_nonce, Aead, AeadAlgo, ChunkId, Erasure, Hash, IntervalKey, Keypair,
        SHARD_HEADER_LEN, TAG_LEN,
    };
    use storage_node::{
        open, seal, BackendChoice, ChunkStore, CountingSink, MemoryShards, OpenParams, SealParams,
        StoreConfig, StoreSink,
    };

    use super::{SealArgs, StoreArgs};
    use crate::measure::{holds, interleaved, median, si, Case};

    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    /// Most bytes one measurement slice may write, so a fast disk does not fill up.
    const SLICE_BYTE_CAP: u64 = 2 << 30;

    fn pattern(len: usize, salt: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(167).wrapping_add(salt) ^ (i >> 9) as u8)
            .collect()
    }

    fn parent_dir(dir: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
        let p = dir.clone().unwrap_or_else(|| PathBuf::from("target"));
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }

    fn pct(sorted: &[Duration], q: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let i = ((sorted.len() - 1) as f64 * q).round() as usize;
        sorted[i.min(sorted.len() - 1)]
    }

    fn ms(d: Duration) -> String {
        format!("{:.2}", d.as_secs_f64() * 1e3)
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Target {
        Store(BackendChoice),
        StdFs,
    }

    impl Target {
        fn name(self) -> &'static str {
            match self {
                Target::Store(BackendChoice::IoUring) => "chunk store, io_uring",
                Target::Store(BackendChoice::Portable) => "chunk store, portable",
                Target::Store(BackendChoice::Auto) => "chunk store, auto",
                Target::StdFs => "std::fs file per shard, write+fsync",
            }
        }
    }

    /// One slice: `writers` threads put `shard`-byte chunks for `dur`, then read them back
    /// for `dur / 2`. Returns (put ops/s, put latencies, get ops/s, get latencies).
    fn slice(
        parent: &Path,
        target: Target,
        shard: usize,
        writers: usize,
        dur: Duration,
    ) -> anyhow::Result<(f64, Vec<Duration>, f64, Vec<Duration>)> {
        let tmp = tempfile::Builder::new()
            .prefix("bench-store-")
            .tempdir_in(parent)?;
        let store = match target {
            Target::Store(backend) => Some(ChunkStore::open(
                tmp.path().join("store"),
                StoreConfig {
                    backend,
                    capacity_bytes: 64 << 30,
                    ..StoreConfig::default()
                },
            )?),
            Target::StdFs => None,
        };
        let payloads: Vec<Vec<u8>> = (0..writers).map(|w| pattern(shard, w as u8)).collect();
        let cap_per_writer = SLICE_BYTE_CAP / writers as u64;
        let id_of = |w: usize, seq: u64| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(w as u64).to_le_bytes());
            b[8..16].copy_from_slice(&seq.to_le_bytes());
            ChunkId::from_bytes(b)
        };
        let path_of = |w: usize, seq: u64| tmp.path().join(format!("{w}-{seq}"));
        // Put phase.
        let start = Instant::now();
        let results: Vec<anyhow::Result<(u64, Vec<Duration>)>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..writers)
                .map(|w| {
                    let (store, payload) = (&store, &payloads[w]);
                    let (id_of, path_of) = (&id_of, &path_of);
                    s.spawn(move || -> anyhow::Result<(u64, Vec<Duration>)> {
                        let mut lat = Vec::new();
                        let mut seq = 0u64;
                        while start.elapsed() < dur && seq * (shard as u64) < cap_per_writer {
                            let t = Instant::now();
                            match store {
                                Some(st) => st.put(id_of(w, seq), payload.clone())?,
                                None => {
                                    let mut f = std::fs::File::create(path_of(w, seq))?;
                                    f.write_all(payload)?;
                                    f.sync_all()?;
                                }
                            }
                            lat.push(t.elapsed());
                            seq += 1;
                        }
                        Ok((seq, lat))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("writer panicked")))
                })
                .collect()
        });
        let put_secs = start.elapsed().as_secs_f64();
        let mut counts = Vec::with_capacity(writers);
        let mut put_lat = Vec::new();
        for r in results {
            let (n, l) = r?;
            counts.push(n);
            put_lat.extend(l);
        }
        let puts: u64 = counts.iter().sum();
        // Get phase: every reader cycles through what its writer stored.
        let get_dur = dur / 2;
        let start = Instant::now();
        let results: Vec<anyhow::Result<(u64, Vec<Duration>)>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..writers)
                .map(|w| {
                    let (store, n) = (&store, counts[w].max(1));
                    let (id_of, path_of) = (&id_of, &path_of);
                    s.spawn(move || -> anyhow::Result<(u64, Vec<Duration>)> {
                        let mut lat = Vec::new();
                        let mut i = 0u64;
                        while start.elapsed() < get_dur {
                            let seq = (i * 7919) % n;
                            let t = Instant::now();
                            let got = match store {
                                Some(st) => st.get(&id_of(w, seq))?,
                                None => std::fs::read(path_of(w, seq))?,
                            };
                            lat.push(t.elapsed());
                            ensure!(got.len() == shard, "short read");
                            black_box(got);
                            i += 1;
                        }
                        Ok((i, lat))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("reader panicked")))
                })
                .collect()
        });
        let get_secs = start.elapsed().as_secs_f64();
        let mut gets = 0;
        let mut get_lat = Vec::new();
        for r in results {
            let (n, l) = r?;
            gets += n;
            get_lat.extend(l);
        }
        if let Some(st) = store {
            st.close()?;
        }
        Ok((
            puts as f64 / put_secs,
            put_lat,
            gets as f64 / get_secs,
            get_lat,
        ))
    }

    /// Runs `bench store`.
    pub fn run_store(a: &StoreArgs) -> anyhow::Result<String> {
        let parent = parent_dir(&a.dir)?;
        let targets = [
            Target::Store(BackendChoice::IoUring),
            Target::Store(BackendChoice::Portable),
            Target::StdFs,
        ];
        let mut configs = Vec::new();
        for shard in [64 * KIB, MIB] {
            for writers in [1usize, 64] {
                for t in targets {
                    configs.push((t, shard, writers));
                }
            }
        }
        let reps = a.reps.max(1);
        // Each slice is a put phase plus a get phase half as long.
        let dur = Duration::from_secs_f64(a.secs / (reps * configs.len()) as f64 / 1.5);
        eprintln!(
            "store: {reps} reps x {} configs x {:.0} ms puts in {}",
            configs.len(),
            dur.as_secs_f64() * 1e3,
            parent.display()
        );
        let mut put_rates = vec![Vec::new(); configs.len()];
        let mut get_rates = vec![Vec::new(); configs.len()];
        let mut put_lats = vec![Vec::new(); configs.len()];
        let mut get_lats = vec![Vec::new(); configs.len()];
        for rep in 0..reps {
            let order: Vec<usize> = if rep % 2 == 0 {
                (0..configs.len()).collect()
            } else {
                (0..configs.len()).rev().collect()
            };
            for i in order {
                let (t, shard, writers) = configs[i];
                let (pr, pl, gr, gl) = slice(&parent, t, shard, writers, dur)?;
                put_rates[i].push(pr);
                get_rates[i].push(gr);
                put_lats[i].extend(pl);
                get_lats[i].extend(gl);
                eprint!(".");
            }
        }
        eprintln!();
        let mut md = String::new();
        writeln!(
            md,
            "Temp dirs under `{}`. Puts are durable when acknowledged (store: group commit; \
             std::fs: one file per shard, write_all + sync_all). Rates: median of {reps} \
             interleaved slices of {:.0} ms; latencies pooled over them. Gets read back the \
             slice's own shards (page cache warm).\n",
            parent.display(),
            dur.as_secs_f64() * 1e3
        )?;
        writeln!(
            md,
            "| target | shard | writers | puts/s | put MB/s | put p50 ms | put p99 ms | gets/s | get MB/s | get p50 ms | get p99 ms |"
        )?;
        writeln!(
            md,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        )?;
        for (i, (t, shard, writers)) in configs.iter().enumerate() {
            put_lats[i].sort_unstable();
            get_lats[i].sort_unstable();
            let (p, g) = (median(&put_rates[i]), median(&get_rates[i]));
            writeln!(
                md,
                "| {} | {} KiB | {writers} | {} | {:.0} | {} | {} | {} | {:.0} | {} | {} |",
                t.name(),
                shard / KIB,
                si(p),
                p * *shard as f64 / 1e6,
                ms(pct(&put_lats[i], 0.5)),
                ms(pct(&put_lats[i], 0.99)),
                si(g),
                g * *shard as f64 / 1e6,
                ms(pct(&get_lats[i], 0.5)),
                ms(pct(&get_lats[i], 0.99)),
            )?;
        }
        let find = |t: Target, shard: usize, writers: usize| -> anyhow::Result<f64> {
            configs
                .iter()
                .position(|c| *c == (t, shard, writers))
                .map(|i| median(&put_rates[i]))
                .ok_or_else(|| anyhow::anyhow!("missing config"))
        };
        let base = find(Target::StdFs, 64 * KIB, 1)?;
        writeln!(md)?;
        writeln!(md, "| headline ratio | measured | target | holds |")?;
        writeln!(md, "|---|---:|---:|---|")?;
        for b in [BackendChoice::IoUring, BackendChoice::Portable] {
            let r = find(Target::Store(b), 64 * KIB, 64)? / base;
            writeln!(
                md,
                "| 64 KiB puts, 64 writers, {} / std::fs one at a time | {r:.2} | ≥ 3 | {} |",
                Target::Store(b).name(),
                holds(r >= 3.0)
            )?;
        }
        writeln!(md)?;
        Ok(md)
    }

    /// Per-block kernel cases with the pipeline's shapes: (name, case) for seal or open.
    fn kernel_cases(p: &SealParams, open_side: bool) -> anyhow::Result<Vec<Case<'static>>> {
        let (k, m) = (usize::from(p.k), usize::from(p.m));
        let block = p.block_size as usize;
        let part = block.div_ceil(k);
        let framed = SHARD_HEADER_LEN + part + TAG_LEN;
        let key = IntervalKey::from_bytes([7; 32]);
        let aead = Aead::new(p.algo, &key)?;
        let hdr = [0u8; SHARD_HEADER_LEN];
        let units = block as f64;
        let mut cases = Vec::new();
        if open_side {
            let mut sealed: Vec<Vec<u8>> = Vec::with_capacity(k);
            for i in 0..k {
                let mut b = pattern(part, i as u8);
                let tag = aead.seal_in_place(block_nonce(0, 0, i as u8)?, &hdr, &mut b)?;
                b.extend_from_slice(&tag);
                sealed.push(b);
            }
            let mut work = sealed.clone();
            cases.push(Case::timed(
                "kernel alone: AEAD open k parts",
                units,
                move || {
                    for (w, s) in work.iter_mut().zip(&sealed) {
                        w.copy_from_slice(s);
                    }
                    let t = Instant::now();
                    for (i, w) in work.iter_mut().enumerate() {
                        aead.open_in_place(block_nonce(0, 0, i as u8)?, &hdr, w)?;
                    }
                    Ok(t.elapsed())
                },
            ));
            let shards: Vec<Vec<u8>> = (0..k).map(|i| pattern(framed, i as u8)).collect();
            cases.push(Case::new(
                "kernel alone: BLAKE3 k shards",
                units,
                move || {
                    for s in &shards {
                        black_box(ChunkId::of(s));
                    }
                    Ok(())
                },
            ));
        } else {
            let mut parts: Vec<Vec<u8>> = (0..k).map(|i| pattern(part, i as u8)).collect();
            cases.push(Case::new(
                "kernel alone: AEAD seal k parts",
                units,
                move || {
                    for (i, b) in parts.iter_mut().enumerate() {
                        black_box(aead.seal_in_place(block_nonce(0, 0, i as u8)?, &hdr, b)?);
                    }
                    Ok(())
                },
            ));
            let code = Erasure::new(k, m)?;
            let data: Vec<Vec<u8>> = (0..k).map(|i| pattern(part + TAG_LEN, i as u8)).collect();
            let mut parity = vec![vec![0u8; part + TAG_LEN]; m];
            cases.push(Case::new("kernel alone: RS encode", units, move || {
                code.encode_sep(&data, &mut parity)?;
                Ok(())
            }));
            let shards: Vec<Vec<u8>> = (0..k + m).map(|i| pattern(framed, i as u8)).collect();
            cases.push(Case::new(
                "kernel alone: BLAKE3 k+m shards",
                units,
                move || {
                    for s in &shards {
                        black_box(Hash::of(s));
                    }
                    Ok(())
                },
            ));
        }
        Ok(cases)
    }

    /// Runs `bench seal`.
    pub fn run_seal(a: &SealArgs) -> anyhow::Result<String> {
        let parent = parent_dir(&a.dir)?;
        let mut params = SealParams {
            algo: AeadAlgo::Aes256Gcm,
            ..SealParams::default()
        };
        if let Some(kib) = a.block_kib {
            params.block_size = kib << 10;
        }
        let (k, m) = (usize::from(params.k), usize::from(params.m));
        let data = pattern(a.mib * MIB, 9);
        let bytes = data.len() as f64;
        let owner = Keypair::from_seed([3; 32]);
        let pool1 = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
        let no_progress = |_: u64| {};
        // Shards kept in memory for the open cases, from one seal done now.
        let mut mem = MemoryShards::default();
        let manifest = seal(&data[..], &owner, &params, &mut mem, &no_progress)?;
        let stored_bytes: u64 = mem.shards.values().map(|s| s.len() as u64).sum();
        let mut check = Vec::with_capacity(data.len());
        open(
            &manifest,
            &owner,
            &mem,
            &mut check,
            &OpenParams::default(),
            &no_progress,
        )?;
        ensure!(check == data, "open did not give back the sealed data");
        drop(check);

        let mut cases = Vec::new();
        {
            let (data, owner, params, pool1) = (&data, &owner, &params, &pool1);
            cases.push(Case::new(
                "seal pipeline, 1 thread, in memory",
                bytes,
                move || {
                    pool1.install(|| {
                        seal(
                            &data[..],
                            owner,
                            params,
                            &mut CountingSink::default(),
                            &no_progress,
                        )
                        .map(drop)
                        .map_err(anyhow::Error::from)
                    })?;
                    Ok(())
                },
            ));
            cases.push(Case::new(
                "seal pipeline, default pool, in memory",
                bytes,
                move || {
                    seal(
                        &data[..],
                        owner,
                        params,
                        &mut CountingSink::default(),
                        &no_progress,
                    )?;
                    Ok(())
                },
            ));
        }
        let kseal = kernel_cases(&params, false)?;
        let seal_names: Vec<String> = kseal.iter().map(|c| c.name.clone()).collect();
        cases.extend(kseal);
        {
            let (manifest, owner, mem, pool1) = (&manifest, &owner, &mem, &pool1);
            cases.push(Case::new(
                "open pipeline, 1 thread, in memory",
                bytes,
                move || {
                    pool1.install(|| {
                        open(
                            manifest,
                            owner,
                            mem,
                            std::io::sink(),
                            &OpenParams::default(),
                            &no_progress,
                        )
                        .map(drop)
                        .map_err(anyhow::Error::from)
                    })?;
                    Ok(())
                },
            ));
        }
        let kopen = kernel_cases(&params, true)?;
        let open_names: Vec<String> = kopen.iter().map(|c| c.name.clone()).collect();
        cases.extend(kopen);
        // Disk: seal into a fresh chunk store vs the same bytes written sequentially to one
        // file with std::fs and fsync'd. Opening and removing the directories is untimed.
        {
            let (data, owner, params, parent) = (&data, &owner, &params, &parent);
            for (name, backend) in [
                (
                    "seal into chunk store (io_uring), default pool",
                    BackendChoice::IoUring,
                ),
                (
                    "seal into chunk store (portable), default pool",
                    BackendChoice::Portable,
                ),
            ] {
                cases.push(Case::timed(name, bytes, move || {
                    let tmp = tempfile::Builder::new()
                        .prefix("bench-seal-")
                        .tempdir_in(parent)?;
                    let cfg = StoreConfig {
                        backend,
                        ..StoreConfig::default()
                    };
                    let store = ChunkStore::open(tmp.path(), cfg)?;
                    let t = Instant::now();
                    {
                        let mut sink = StoreSink::new(&store);
                        seal(&data[..], owner, params, &mut sink, &no_progress)?;
                    }
                    let el = t.elapsed();
                    store.close()?;
                    Ok(el)
                }));
            }
            let block = 4 * MIB;
            let buf = pattern(block, 5);
            cases.push(Case::timed(
                "std::fs sequential write+fsync of the stored bytes",
                bytes,
                move || {
                    let tmp = tempfile::Builder::new()
                        .prefix("bench-seal-fs-")
                        .tempdir_in(parent)?;
                    let t = Instant::now();
                    let mut f = std::fs::File::create(tmp.path().join("all"))?;
                    let mut left = stored_bytes as usize;
                    while left > 0 {
                        let n = left.min(block);
                        f.write_all(&buf[..n])?;
                        left -= n;
                    }
                    f.sync_all()?;
                    Ok(t.elapsed())
                },
            ));
        }
        let reps = a.reps.max(1);
        let slice = Duration::from_secs_f64(a.secs / (reps * cases.len()) as f64);
        eprintln!(
            "seal: {} MiB, {k}+{m}, {} MiB blocks, {reps} reps x {} cases x {:.0} ms",
            a.mib,
            params.block_size as usize / MIB,
            cases.len(),
            slice.as_secs_f64() * 1e3
        );
        let s = interleaved(&mut cases, reps, slice, Duration::from_millis(300))?;
        drop(cases);

        let mut md = String::new();
        writeln!(
            md,
            "{} MiB of data, {k}+{m}, {} MiB blocks, {}; stored bytes (all k+m framed shards) \
             = {:.2}× the data. Rates are per byte of *data*; medians of {reps} interleaved \
             repetitions of {:.0} ms. Kernels alone run on one thread with the pipeline's \
             per-block shapes.\n",
            a.mib,
            params.block_size as usize / MIB,
            params.algo.name(),
            stored_bytes as f64 / bytes,
            slice.as_secs_f64() * 1e3
        )?;
        writeln!(md, "| case | GB/s of data (median) |")?;
        writeln!(md, "|---|---:|")?;
        for (i, name) in s.names.iter().enumerate() {
            writeln!(md, "| {name} | {:.2} |", s.median(i) / 1e9)?;
        }
        // Composite kernel rate per repetition, paired with the pipeline of that repetition.
        let composite = |names: &[String], rep: usize| -> anyhow::Result<f64> {
            let mut inv = 0.0;
            for n in names {
                inv += 1.0 / s.rates[s.index(n)?][rep];
            }
            Ok(1.0 / inv)
        };
        let ratio_vs = |pipe: &str, names: &[String]| -> anyhow::Result<(f64, f64)> {
            let pi = s.index(pipe)?;
            let mut r = Vec::new();
            let mut c = Vec::new();
            for rep in 0..s.rates[pi].len() {
                let comp = composite(names, rep)?;
                c.push(comp);
                r.push(s.rates[pi][rep] / comp);
            }
            Ok((median(&r), median(&c)))
        };
        let (rs, cs) = ratio_vs("seal pipeline, 1 thread, in memory", &seal_names)?;
        let (ro, co) = ratio_vs("open pipeline, 1 thread, in memory", &open_names)?;
        let fs_idx = s.index("std::fs sequential write+fsync of the stored bytes")?;
        let rd = s.paired_ratio(
            s.index("seal into chunk store (io_uring), default pool")?,
            fs_idx,
        );
        let rp = s.paired_ratio(
            s.index("seal into chunk store (portable), default pool")?,
            fs_idx,
        );
        writeln!(md)?;
        writeln!(md, "| headline ratio | measured | target | holds |")?;
        writeln!(md, "|---|---:|---:|---|")?;
        writeln!(
            md,
            "| seal pipeline 1 thread / kernels alone 1/Σ(1/rate) ({:.2} GB/s) | {rs:.3} | ≥ 0.8 | {} |",
            cs / 1e9,
            holds(rs >= 0.8)
        )?;
        writeln!(
            md,
            "| open pipeline 1 thread / kernels alone 1/Σ(1/rate) ({:.2} GB/s) | {ro:.3} | ≥ 0.8 | {} |",
            co / 1e9,
            holds(ro >= 0.8)
        )?;
        writeln!(
            md,
            "| seal into chunk store (io_uring) / std::fs sequential write+fsync of the same bytes | {rd:.3} | ≥ 0.8 | {} |",
            holds(rd >= 0.8)
        )?;
        writeln!(
            md,
            "| seal into chunk store (portable) / std::fs sequential write+fsync of the same bytes | {rp:.3} | ≥ 0.8 | {} |",
            holds(rp >= 0.8)
        )?;
        writeln!(md)?;
        Ok(md)
    }
}
