//! `bench routing`: lookup success against colluding adversaries that return wrong routing
//! answers, plain Kademlia (d = 1) against S/Kademlia disjoint paths (d > 1), from the
//! seeded simulation in `dht::routing_sim` (whose module docs state the model). Every cell
//! looks up the same keys from the same initiators on the same network; only the
//! adversarial fraction, d and the path split change.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::ensure;
use clap::Args;
use dht::routing_sim::{simulate, PathSplit, SimConfig, SimReport};

/// Options of `bench routing`.
#[derive(Debug, Args)]
pub struct RoutingArgs {
    /// Nodes in the simulated network.
    #[arg(long, default_value_t = 2000)]
    nodes: usize,
    /// Lookups of random keys per cell.
    #[arg(long, default_value_t = 2000)]
    lookups: usize,
    /// Seed of the network, the keys, the initiators and the latencies.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Bucket size k (also the answer size and how many closest peers a path waits for).
    #[arg(long, default_value_t = 20)]
    k: usize,
}

/// Adversarial fractions, one table row each: the 0–30%, then larger shares to show
/// where the attack starts to bite.
const FRACTIONS: [f64; 7] = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9];
/// Disjoint paths, one table column each; 3 is what libp2p runs with `disjoint_query_paths`
/// at its default parallelism.
const PATHS: [usize; 5] = [1, 2, 3, 4, 8];

/// The success rate, "100%" only when every lookup succeeded (never rounded up to it).
fn percent(r: &SimReport) -> String {
    if r.succeeded == r.lookups {
        "100%".to_string()
    } else {
        format!("{:.1}%", (1000.0 * r.success_rate()).floor() / 10.0)
    }
}

fn split_name(split: PathSplit) -> &'static str {
    match split {
        PathSplit::Libp2p => {
            "libp2p-kad 0.49 split (every path starts from the same k peers; what `disjoint_query_paths(true)` runs)"
        }
        PathSplit::RoundRobin => "S/Kademlia round-robin split (initial peers dealt to the paths)",
    }
}

/// Runs every (fraction, d, split) cell and returns the markdown report body.
pub fn run(a: &RoutingArgs) -> anyhow::Result<String> {
    let base = SimConfig {
        nodes: a.nodes,
        lookups: a.lookups,
        seed: a.seed,
        k: a.k,
        ..SimConfig::default()
    };
    let started = Instant::now();
    let mut out = String::new();
    writeln!(
        out,
        "Simulated Kademlia lookups: {} nodes with random 256-bit ids, k = {}, α = {} requests \
         in flight per path, {} lookups of random keys per cell, seed {}. Adversaries collude: \
         asked FIND_NODE they answer with the k adversaries closest to the key, and they never \
         return the value. A lookup succeeds when it queries the honest node closest to its \
         key (which holds the value). Cells: success rate, then mean requests per lookup \
         (of which to adversaries). Termination as libp2p-kad 0.49's `ClosestPeersIter`; \
         model in `dht/src/routing_sim.rs`.\n",
        a.nodes, base.k, base.alpha, a.lookups, a.seed
    )?;
    let mut headline: Vec<(PathSplit, usize, usize)> = Vec::new();
    let mut plain: Vec<SimReport> = Vec::new();
    for (s, split) in [PathSplit::Libp2p, PathSplit::RoundRobin]
        .into_iter()
        .enumerate()
    {
        writeln!(out, "**{}**\n", split_name(split))?;
        let header: Vec<String> = PATHS
            .iter()
            .map(|&d| {
                if d == 1 {
                    "d = 1 (plain)".to_string()
                } else {
                    format!("d = {d}")
                }
            })
            .collect();
        writeln!(out, "| adversaries | {} |", header.join(" | "))?;
        writeln!(out, "|---|{}", "---|".repeat(PATHS.len()))?;
        for (f, &fraction) in FRACTIONS.iter().enumerate() {
            let mut cells = Vec::new();
            let mut adversaries = 0;
            for &d in &PATHS {
                let cfg = SimConfig {
                    adversarial_fraction: fraction,
                    disjoint_paths: d,
                    split,
                    ..base.clone()
                };
                let r = simulate(&cfg)?;
                adversaries = r.adversaries;
                if d == 1 {
                    // One path never meets another: both splits must agree exactly.
                    if s == 0 {
                        plain.push(r.clone());
                    } else {
                        ensure!(plain.get(f) == Some(&r), "d = 1 differs between the splits");
                    }
                }
                if (fraction - 0.2).abs() < 1e-9 {
                    headline.push((split, d, r.succeeded));
                }
                cells.push(format!(
                    "{} · {:.1} ({:.1})",
                    percent(&r),
                    r.mean_queries(),
                    r.mean_adversary_queries()
                ));
            }
            writeln!(
                out,
                "| {:.0}% ({adversaries}) | {} |",
                100.0 * fraction,
                cells.join(" | ")
            )?;
        }
        writeln!(out)?;
    }
    let rate = |split: PathSplit, d: usize| {
        headline
            .iter()
            .find(|&&(s, dd, _)| s == split && dd == d)
            .map_or("?".to_string(), |&(_, _, n)| {
                format!("{n} of {}", a.lookups)
            })
    };
    writeln!(
        out,
        "Headline, 20% adversaries, lookups that found the value: plain Kademlia {}; \
         d = 3 (libp2p's `disjoint_query_paths(true)` at its default α = 3) {}; d = 4 {} with libp2p's split, {} with the \
         round-robin split.\n",
        rate(PathSplit::Libp2p, 1),
        rate(PathSplit::Libp2p, 3),
        rate(PathSplit::Libp2p, 4),
        rate(PathSplit::RoundRobin, 4),
    )?;
    writeln!(
        out,
        "{} cells in {:.1} s.",
        2 * FRACTIONS.len() * PATHS.len(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(out)
}
