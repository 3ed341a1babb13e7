//! `bench load`: starts a devnet of real node processes (release `cpchain` binary next to
//! this one), funds sender accounts, then submits pre-signed transfers at a target rate for
//! a fixed time and measures what the chain commits: TPS over time (from block timestamps),
//! submit → final latency (p50/p99, from sampled senders' on-chain nonces), rejected
//! submissions by reason, node CPU (from /proc) and peak RSS. Writes a table and an SVG
//! plot of TPS and latency over time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chain::{Address, SignedTx, Tx, TxPayload, CPC};
use crypto_accel::{Encode, Keypair};
use rayon::prelude::*;
use storage_node::node::client::ApiClient;
use storage_node::node::config::{load_key, Role};
use storage_node::node::devnet::{prepare, start_all, stop_all, DevnetParams};

/// Arguments of `bench load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Target submission rate, tx/s.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Submission time, seconds.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Block period of the devnet, ms.
    #[arg(long, default_value_t = 500)]
    period_ms: u64,
    /// Sender accounts (transactions are spread over them round robin).
    #[arg(long, default_value_t = 400)]
    senders: usize,
    /// Validators.
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Proposers.
    #[arg(long, default_value_t = 3)]
    proposers: usize,
    /// Most transactions per block.
    #[arg(long, default_value_t = 30_000)]
    max_block_txs: usize,
    /// Keep the devnet (configs, chain stores, node logs) in this directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Where to write the SVG plot.
    #[arg(long, default_value = "bench/results/load.svg")]
    plot: PathBuf,
}

/// CPU used by a set of processes from a starting mark on.
pub(crate) struct CpuMark {
    pids: Vec<u32>,
    ticks: Vec<u64>,
}

impl CpuMark {
    /// The CPU `pids` have used so far.
    pub(crate) fn now(pids: &[u32]) -> CpuMark {
        CpuMark {
            pids: pids.to_vec(),
            ticks: pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect(),
        }
    }

    /// CPU seconds (user + system, all threads) the processes used since the mark; a process
    /// that has exited counts nothing rather than a negative amount.
    pub(crate) fn seconds(&self) -> f64 {
        const USER_HZ: f64 = 100.0;
        self.pids
            .iter()
            .zip(&self.ticks)
            .map(|(p, t0)| cpu_ticks(*p).unwrap_or(0).saturating_sub(*t0) as f64 / USER_HZ)
            .sum()
    }
}

/// User + system CPU of a process (all its threads), in clock ticks (`USER_HZ`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn encode(t: SignedTx) -> Vec<u8> {
    Tx::Signed(t).to_bytes()
}

/// The release `cpchain` binary next to this one (end-to-end benchmarks run node processes).
pub(crate) fn cpchain_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating bench")?;
    exe.parent()
        .map(|d| d.join("cpchain"))
        .filter(|p| p.exists())
        .context("no cpchain binary next to bench: run `cargo build --release --bin cpchain`")
}

/// Runs the benchmark; returns the report body (markdown).
pub fn run(a: &LoadArgs) -> Result<String> {
    let binary = cpchain_binary()?;
    let dir = tempfile::tempdir()?;
    let data_dir = a
        .data_dir
        .clone()
        .unwrap_or_else(|| dir.path().join("devnet"));
    let mut file = prepare(&DevnetParams {
        validators: a.validators,
        proposers: a.proposers,
        storage: 0,
        period_ms: a.period_ms,
        impeach_timeout_ms: (a.period_ms * 4).max(2_000),
        data_dir,
        view_len: 3,
        max_block_txs: a.max_block_txs,
        binary,
    })?;
    let mut children = start_all(&mut file)?;
    let result = drive(a, &file);
    stop_all(&mut children, Duration::from_secs(10));
    result
}

fn drive(a: &LoadArgs, file: &storage_node::node::devnet::DevnetFile) -> Result<String> {
    let watch = ApiClient::with_timeout(&file.nodes[0].api, Duration::from_secs(10));
    let targets: Vec<ApiClient> = file
        .nodes
        .iter()
        .filter(|n| n.role == Role::Proposer)
        .map(|n| ApiClient::with_timeout(&n.api, Duration::from_secs(30)))
        .collect();
    let start = Instant::now();
    while watch.status().map(|s| s.height).unwrap_or(0) < 2 {
        if start.elapsed() > Duration::from_secs(90) {
            bail!("devnet did not start in 90 s");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = watch.status()?;
    let chain_id = status.chain_id;
    let faucet = load_key(&file.faucet_key)?;
    eprintln!("devnet up; funding {} senders", a.senders);
    let senders: Vec<Keypair> = (0..a.senders).map(|_| Keypair::generate()).collect();
    let fund: Vec<Vec<u8>> = senders
        .iter()
        .enumerate()
        .map(|(i, k)| {
            encode(SignedTx::sign(
                &faucet,
                chain_id,
                i as u64,
                CPC / 1000,
                TxPayload::Transfer {
                    to: Address::of(&k.public()),
                    amount: 1_000_000 * CPC,
                },
            ))
        })
        .collect();
    targets[0].submit_batch(&fund)?;
    let last = Address::of(&senders[a.senders - 1].public());
    let t = Instant::now();
    while !watch
        .account(&last)
        .map(|x| x.balance != "0")
        .unwrap_or(false)
    {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("funding transfers were not committed in 60 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let total = (a.rate * a.duration) as usize;
    eprintln!("signing {total} transfers…");
    let sink = Address::of(&Keypair::generate().public());
    let txs: Vec<Vec<u8>> = (0..total)
        .into_par_iter()
        .map(|i| {
            let s = i % a.senders;
            let nonce = (i / a.senders) as u64;
            encode(SignedTx::sign(
                &senders[s],
                chain_id,
                nonce,
                1,
                TxPayload::Transfer {
                    to: sink,
                    amount: 1,
                },
            ))
        })
        .collect();
    let pids: Vec<u32> = file.nodes.iter().map(|n| n.pid).collect();
    let cpu0 = CpuMark::now(&pids);
    let h0 = watch.status()?.height;
    eprintln!("submitting at {} tx/s for {} s", a.rate, a.duration);
    // Submission thread: every 100 ms, rate/10 transactions to the proposers round robin.
    let per_tick = (a.rate / 10).max(1) as usize;
    let t0 = Instant::now();
    let (submit_times_tx, submit_times_rx) = std::sync::mpsc::channel::<(usize, f64)>();
    let (rej_tx, rej_rx) = std::sync::mpsc::channel::<(String, u64)>();
    std::thread::scope(|scope| -> Result<String> {
        let txs = &txs;
        let targets = &targets;
        scope.spawn(move || {
            let mut next = 0usize;
            let mut tick = 0u64;
            while next < txs.len() {
                let due = t0 + Duration::from_millis(100 * tick);
                if let Some(w) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
                let end = (next + per_tick).min(txs.len());
                let _ = submit_times_tx.send((end, t0.elapsed().as_secs_f64()));
                let target = &targets[tick as usize % targets.len()];
                match target.submit_batch(&txs[next..end]) {
                    Ok(rs) => {
                        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                        for r in rs.into_iter().filter_map(|r| r.err()) {
                            *counts.entry(r.error).or_default() += 1;
                        }
                        for (k, v) in counts {
                            let _ = rej_tx.send((k, v));
                        }
                    }
                    Err(e) => {
                        let _ = rej_tx.send((format!("request failed: {e}"), (end - next) as u64));
                    }
                }
                next = end;
                tick += 1;
            }
        });
        // Observer: sampled senders' nonces → commit times; RSS peaks.
        let sample: Vec<usize> = (0..a.senders).step_by((a.senders / 16).max(1)).collect();
        let mut committed_at: Vec<Vec<f64>> = vec![Vec::new(); a.senders];
        let mut peak_rss = vec![0u64; pids.len()];
        let deadline = Duration::from_secs(a.duration + 20);
        // Final blocks seen so far, by number: the API lists only the newest 200, so it is
        // read every few seconds and at the end (a run can make more than 200 blocks).
        let mut seen: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let record_blocks = |seen: &mut BTreeMap<u64, (u64, u64)>| -> Result<()> {
            let page =
                watch.get_json::<Vec<storage_node::node::view::BlockView>>("/blocks?limit=200")?;
            for b in page.into_iter().filter(|b| b.number > h0) {
                seen.insert(b.number, (b.timestamp_ms, b.tx_count as u64));
            }
            Ok(())
        };
        let mut last_page = Instant::now();
        while t0.elapsed() < deadline {
            if last_page.elapsed() > Duration::from_secs(5) {
                // A failed read is retried on the next round; the final read must succeed.
                let _ = record_blocks(&mut seen);
                last_page = Instant::now();
            }
            let now = t0.elapsed().as_secs_f64();
            for &s in &sample {
                if let Ok(acct) = watch.account(&Address::of(&senders[s].public())) {
                    let n = acct.nonce as usize;
                    while committed_at[s].len() < n {
                        committed_at[s].push(now);
                    }
                }
            }
            for (i, p) in pids.iter().enumerate() {
                peak_rss[i] = peak_rss[i].max(rss_kib(*p).unwrap_or(0));
            }
            let done = sample
                .iter()
                .all(|s| committed_at[*s].len() as u64 >= (total / a.senders) as u64);
            if done && t0.elapsed() > Duration::from_secs(a.duration) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let cpu_s = cpu0.seconds();
        // Submit time of each tx index (batch granularity).
        let submits: Vec<(usize, f64)> = submit_times_rx.try_iter().collect();
        // Transactions handed to the APIs before the observer stopped (an overloaded API
        // answers slower than the 100 ms ticks, so the submitter can fall behind the plan).
        let submitted = submits.last().map_or(0, |x| x.0);
        let submit_time = |i: usize| -> f64 {
            // The batch whose end is the first > i.
            let k = submits.partition_point(|(end, _)| *end <= i);
            submits.get(k).map(|x| x.1).unwrap_or(f64::NAN)
        };
        let mut lat = Vec::new();
        let mut lat_by_sec: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for &s in &sample {
            for (nonce, t) in committed_at[s].iter().enumerate() {
                let i = nonce * a.senders + s;
                let st = submit_time(i);
                if st.is_finite() {
                    lat.push(t - st);
                    lat_by_sec.entry(st as u64).or_default().push(t - st);
                }
            }
        }
        let mut rejected: BTreeMap<String, u64> = BTreeMap::new();
        for (k, v) in rej_rx.try_iter() {
            *rejected.entry(k).or_default() += v;
        }
        // Committed TPS from block timestamps.
        record_blocks(&mut seen)?;
        if let (Some(lo), Some(hi)) = (seen.keys().next(), seen.keys().next_back()) {
            let missing = (hi - lo + 1) as usize - seen.len();
            anyhow::ensure!(
                missing == 0 && *lo == h0 + 1,
                "the block list has gaps ({missing} missing from {lo}..={hi}, expected from {})",
                h0 + 1
            );
        }
        let mut per_sec: BTreeMap<u64, u64> = BTreeMap::new();
        let mut first_ts = u64::MAX;
        let mut last_ts = 0;
        let mut committed = 0u64;
        for &(ts, n) in seen.values() {
            first_ts = first_ts.min(ts);
            last_ts = last_ts.max(ts);
            committed += n;
            *per_sec.entry(ts / 1000).or_default() += n;
        }
        let span = (last_ts.saturating_sub(first_ts)) as f64 / 1000.0;
        let tps = if span > 0.0 {
            committed as f64 / span
        } else {
            0.0
        };
        // Sustained: the best 60 s (or duration) window of per-second counts.
        let secs: Vec<u64> = per_sec.values().copied().collect();
        let w = (a.duration as usize).min(secs.len()).max(1);
        let sustained = secs
            .windows(w)
            .map(|x| x.iter().sum::<u64>() as f64 / w as f64)
            .fold(0.0, f64::max);
        let p50 = pct(&mut lat.clone(), 0.50);
        let p99 = pct(&mut lat.clone(), 0.99);
        let max_rss = peak_rss.iter().max().copied().unwrap_or(0);
        write_plot(&a.plot, &per_sec, &lat_by_sec, a.rate)?;
        let mut out = String::new();
        out.push_str(&format!(
            "{} validators + {} proposers as processes on loopback, {} ms blocks, {} senders, target {} tx/s for {} s (signed transfers, submitted in 100 ms batches to the proposers' APIs)\n\n",
            a.validators, a.proposers, a.period_ms, a.senders, a.rate, a.duration
        ));
        out.push_str("| metric | value |\n|---|---|\n");
        out.push_str(&format!(
            "| committed tx/s over the run (block timestamps, {span:.1} s) | {tps:.0} |\n"
        ));
        out.push_str(&format!(
            "| committed tx/s, best {w} s window | {sustained:.0} |\n"
        ));
        out.push_str(&format!(
            "| committed / submitted by the end of the run (of {total} planned) | {committed} / {submitted} |\n"
        ));
        out.push_str(&format!(
            "| submit → final latency p50 / p99 ({} sampled txs, 100 ms polling) | {p50:.2} s / {p99:.2} s |\n",
            lat.len()
        ));
        out.push_str(&format!(
            "| node CPU (all processes) | {:.2} cores over {elapsed:.0} s |\n",
            cpu_s / elapsed
        ));
        out.push_str(&format!(
            "| peak RSS of the largest node | {} MiB |\n",
            max_rss / 1024
        ));
        let rej: Vec<String> = rejected.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        out.push_str(&format!(
            "| rejected submissions (reported to the sender) | {} |\n",
            if rej.is_empty() {
                "none".into()
            } else {
                rej.join(", ")
            }
        ));
        out.push_str(&format!("\nplot: {}\n", a.plot.display()));
        Ok(out)
    })
}

fn write_plot(
    path: &PathBuf,
    tps: &BTreeMap<u64, u64>,
    lat: &BTreeMap<u64, Vec<f64>>,
    rate: u64,
) -> Result<()> {
    let (w, h, m) = (800.0, 360.0, 50.0);
    // Both series on one time axis of `span` seconds from their own first second (block
    // timestamps vs submit times): seconds without blocks leave gaps, not a squeezed axis.
    let first_last = |keys: Vec<u64>| {
        (
            keys.first().copied().unwrap_or(0),
            keys.last().copied().unwrap_or(0),
        )
    };
    let (t0, t1) = first_last(tps.keys().copied().collect());
    let (lt0, lt1) = first_last(lat.keys().copied().collect());
    let span = (t1 - t0).max(lt1 - lt0).max(1) as f64;
    let ymax = (tps.values().copied().max().unwrap_or(0).max(rate) as f64 * 1.1).max(1.0);
    let x = |i: f64| m + i * (w - 2.0 * m) / span;
    let y = |v: f64| h - m - v * (h - 2.0 * m) / ymax;
    let pts: Vec<String> = tps
        .iter()
        .map(|(s, c)| format!("{:.1},{:.1}", x((s - t0) as f64), y(*c as f64)))
        .collect();
    let lmax = lat
        .values()
        .filter_map(|v| {
            let mut v = v.clone();
            let p = pct(&mut v, 0.99);
            p.is_finite().then_some(p)
        })
        .fold(0.5_f64, f64::max)
        * 1.1;
    let ly = |v: f64| h - m - v * (h - 2.0 * m) / lmax;
    let lpts: Vec<String> = lat
        .iter()
        .map(|(s, v)| {
            let mut v = v.clone();
            format!("{:.1},{:.1}", x((s - lt0) as f64), ly(pct(&mut v, 0.99)))
        })
        .collect();
    let svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{m}" y="20">committed tx/s per second (blue, left axis, max {ymax:.0}) and p99 submit→final latency per submit second (red, right axis, max {lmax:.2} s); target {rate} tx/s (dashed)</text>
<line x1="{m}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/>
<line x1="{m}" y1="{m}" x2="{m}" y2="{b}" stroke="black"/>
<line x1="{m}" y1="{ty:.1}" x2="{r}" y2="{ty:.1}" stroke="gray" stroke-dasharray="4"/>
<polyline fill="none" stroke="#1f5fbf" stroke-width="2" points="{pts}"/>
<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{lpts}"/>
<text x="{m}" y="{lab}">time (s): 0 to {span:.0}, from the first block (blue) and the first submission (red)</text>
</svg>
"##,
        b = h - m,
        r = w - m,
        ty = y(rate as f64),
        pts = pts.join(" "),
        lpts = lpts.join(" "),
        lab = h - 15.0,
    );
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}
