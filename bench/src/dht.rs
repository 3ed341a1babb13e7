//! `bench dht`: put and get of a large file through a loopback cluster of real node
//! processes (4 validators that also store, 1 proposer, 12 storage nodes: the release
//! `cpchain` binary next to this one), against the local seal/open pipeline into and out
//! of a chunk store on the same disk, measured in the same run. Then time to first byte of
//! small gets (p50, p99).
//!
//! Both sides read the same generated input and hash the same output, so generation and
//! checking cost the same on each side; the data is checked byte for byte (by BLAKE3).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chain::AccessPolicy;
use crypto_accel::Keypair;
use storage_node::node::client::ApiClient;
use storage_node::node::config::{load_key, Role};
use storage_node::node::devnet::{prepare, start_all, stop_all, DevnetParams};
use storage_node::node::dfs::Dfs;
use storage_node::{open, seal, ChunkStore, OpenParams, SealParams, StoreConfig, StoreSink};

use crate::load::CpuMark;

/// Arguments of `bench dht`.
#[derive(Debug, clap::Args)]
pub struct DhtArgs {
    /// Bytes to put and get.
    #[arg(long, default_value_t = 1 << 30)]
    size: u64,
    /// Storage nodes besides the validators.
    #[arg(long, default_value_t = 12)]
    storage: usize,
    /// Small gets timed for time to first byte.
    #[arg(long, default_value_t = 60)]
    ttfb_gets: usize,
}

/// Deterministic pseudo-random bytes, `len` of them: byte `i` comes from splitmix64 of
/// `i / 8`, so the stream is the same whatever sizes it is read in.
struct Gen {
    pos: u64,
    len: u64,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Read for Gen {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // One splitmix per 8 output bytes (not per byte): the generator must cost little
        // next to the pipelines it feeds, or it caps the local baselines and flatters the
        // network's ratios.
        let n = (buf.len() as u64).min(self.len - self.pos) as usize;
        let mut out = &mut buf[..n];
        while !out.is_empty() {
            let word = splitmix(self.pos / 8).to_le_bytes();
            let skip = (self.pos % 8) as usize;
            let take = (8 - skip).min(out.len());
            out[..take].copy_from_slice(&word[skip..skip + take]);
            out = &mut out[take..];
            self.pos += take as u64;
        }
        Ok(n)
    }
}

fn gen(len: u64) -> Gen {
    Gen { pos: 0, len }
}

/// Hashes what is written.
struct HashSink(blake3::Hasher);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn expected_hash(len: u64) -> Result<blake3::Hash> {
    let mut h = blake3::Hasher::new();
    let mut g = gen(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = g.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize())
}

fn mib_s(bytes: u64, s: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / s.max(1e-9)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[(((v.len() - 1) as f64) * p).round() as usize]
}

/// Runs the benchmark; returns the report body (markdown).
pub fn run(a: &DhtArgs) -> Result<String> {
    let binary = crate::load::cpchain_binary()?;
    let want = expected_hash(a.size)?;
    let owner = Keypair::generate();

    // Baseline: the local pipeline into and out of a chunk store in the same temp dir.
    let dir = tempfile::tempdir()?;
    let params = SealParams::default();
    let me = [std::process::id()];
    let (seal_s, open_s, seal_cpu, open_cpu) = {
        let store = ChunkStore::open(dir.path().join("local"), StoreConfig::default())?;
        let c = CpuMark::now(&me);
        let t = Instant::now();
        let m = seal(
            gen(a.size),
            &owner,
            &params,
            &mut StoreSink::new(&store),
            &|_| {},
        )?;
        let seal_s = t.elapsed().as_secs_f64();
        let seal_cpu = c.seconds();
        let mut out = HashSink(blake3::Hasher::new());
        let c = CpuMark::now(&me);
        let t = Instant::now();
        open(
            &m,
            &owner,
            &store,
            &mut out,
            &OpenParams::default(),
            &|_| {},
        )?;
        let open_s = t.elapsed().as_secs_f64();
        let open_cpu = c.seconds();
        if out.0.finalize() != want {
            bail!("the local pipeline returned different bytes");
        }
        store.close()?;
        std::fs::remove_dir_all(dir.path().join("local"))?;
        (seal_s, open_s, seal_cpu, open_cpu)
    };
    eprintln!(
        "local: seal {:.0} MiB/s, open {:.0} MiB/s",
        mib_s(a.size, seal_s),
        mib_s(a.size, open_s)
    );

    let mut file = prepare(&DevnetParams {
        validators: 4,
        proposers: 1,
        storage: a.storage,
        period_ms: 500,
        impeach_timeout_ms: 2_000,
        data_dir: dir.path().join("devnet"),
        view_len: 3,
        max_block_txs: 1_000,
        binary,
    })?;
    let mut children = start_all(&mut file)?;
    let result = (|| -> Result<String> {
        let api = file
            .nodes
            .iter()
            .find(|n| n.role == Role::Validator)
            .map(|n| n.api.clone())
            .context("no validator")?;
        let watch = ApiClient::with_timeout(&api, Duration::from_secs(10));
        let t = Instant::now();
        while watch.status().map(|s| s.height).unwrap_or(0) < 2 {
            if t.elapsed() > Duration::from_secs(120) {
                bail!("the devnet did not start in 120 s");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let faucet = load_key(&file.faucet_key)?;
        let n = usize::from(params.k) + usize::from(params.m);
        let dfs = Dfs::connect(&api, faucet, n, Duration::from_secs(60))?;
        let storage_nodes = dfs.peers()?.len();
        eprintln!(
            "cluster up ({storage_nodes} storage nodes): putting {} MiB",
            a.size >> 20
        );
        // The client (this process) and every node process: what a put and a get cost the
        // machine, less noisy than their wall time on shared cores.
        let mut all: Vec<u32> = file.nodes.iter().map(|n| n.pid).collect();
        all.push(std::process::id());
        let c = CpuMark::now(&all);
        let put = dfs.put(gen(a.size), &params, AccessPolicy::GrantBased, &|_| {})?;
        let put_cpu = c.seconds();
        let put_s = put.upload_s + put.register_s;
        eprintln!(
            "network put: {:.0} MiB/s ({:.1} s upload, {:.1} s register+commit)",
            mib_s(a.size, put_s),
            put.upload_s,
            put.register_s
        );
        let mut out = HashSink(blake3::Hasher::new());
        let c = CpuMark::now(&all);
        let got = dfs.get(&put.data, &mut out, None, &|_| {})?;
        let get_cpu = c.seconds();
        if out.0.finalize() != want {
            bail!("the network get returned different bytes");
        }
        eprintln!(
            "network get: {:.0} MiB/s, first byte {:.0} ms",
            mib_s(a.size, got.total_s),
            got.first_byte_s * 1000.0
        );
        let mut ttfb = Vec::with_capacity(a.ttfb_gets);
        for _ in 0..a.ttfb_gets {
            let r = dfs.get(&put.data, std::io::sink(), Some((0, 1 << 20)), &|_| {})?;
            ttfb.push(r.first_byte_s * 1000.0);
        }
        let (p50, p99) = (pct(&mut ttfb, 0.5), pct(&mut ttfb, 0.99));
        let (seal_r, open_r) = (mib_s(a.size, seal_s), mib_s(a.size, open_s));
        let (put_r, get_r) = (mib_s(a.size, put_s), mib_s(a.size, got.total_s));
        Ok(format!(
            "Cluster: 4 validators (also storing) + 1 proposer + {} storage node processes on \
             loopback ({storage_nodes} storage nodes found); {} MiB, k+m = {}+{}, 1 MiB blocks.\n\n\
             | what | rate (MiB/s) | ratio |\n|---|---:|---:|\n\
             | local seal into the chunk store (baseline) | {seal_r:.0} | 1.00 |\n\
             | network put (seal, upload, register, commit, DHT record) | {put_r:.0} | **{:.2}** of local seal (target ≥ 0.40) |\n\
             | local open from the chunk store (baseline) | {open_r:.0} | 1.00 |\n\
             | network get (locate, fetch k + a delayed hedge, verify, decrypt) | {get_r:.0} | **{:.2}** of local open (target ≥ 0.50) |\n\n\
             CPU seconds (user + system, all threads; the client and all node processes for \
             the network cases): local seal {seal_cpu:.2}, network put {put_cpu:.2} \
             ({:.2}×); local open {open_cpu:.2}, network get {get_cpu:.2} ({:.2}×).\n\n\
             Put: {:.1} s sealing and uploading ({} uploads moved to another node), {:.1} s \
             registering on chain, committing on {} holders and publishing the record. \
             Get: {} blocks rebuilt from parity (hedge), {} slow shards passed over, {} shards missing.\n\n\
             Time to first byte of a 1 MiB ranged get (warm client, record lookup + manifest + \
             first block), {} gets: p50 {p50:.0} ms, p99 {p99:.0} ms; of the whole {} MiB get: \
             {:.0} ms (record found after {:.0} ms, manifest after {:.0} ms).\n",
            a.storage,
            a.size >> 20,
            params.k,
            params.m,
            put_r / seal_r,
            get_r / open_r,
            put_cpu / seal_cpu,
            get_cpu / open_cpu,
            put.upload_s,
            put.retries,
            put.register_s,
            put.holders,
            got.open.blocks_reconstructed,
            got.shards_slow,
            got.shards_unreachable(),
            a.ttfb_gets,
            a.size >> 20,
            got.first_byte_s * 1000.0,
            got.locate_s * 1000.0,
            got.manifest_s * 1000.0,
        ))
    })();
    stop_all(&mut children, Duration::from_secs(10));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte `i` of the stream, the slow way.
    fn byte(i: u64) -> u8 {
        splitmix(i / 8).to_le_bytes()[(i % 8) as usize]
    }

    #[test]
    fn the_stream_is_the_same_whatever_the_read_sizes() {
        let len = 1_000u64;
        let want: Vec<u8> = (0..len).map(byte).collect();
        for sizes in [&[1usize][..], &[3, 5, 7], &[8], &[13, 1, 64], &[4096]] {
            let mut g = gen(len);
            let mut got = Vec::new();
            let mut i = 0;
            loop {
                let mut buf = vec![0u8; sizes[i % sizes.len()]];
                i += 1;
                let n = g.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            assert_eq!(got, want, "read sizes {sizes:?}");
        }
    }
}
