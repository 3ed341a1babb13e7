//! The `bench` binary: end-to-end benchmark runs that measure each headline ratio against
//! its baseline *in the same run*, on the same machine, with interleaved repetitions.
//!
//! Subcommands: `verify` (ed25519 batch verification against raw dalek), `kernels` (AEAD,
//! BLAKE3, Reed–Solomon rates), `store` (chunk store against `std::fs`), `seal` (seal/open
//! pipeline against its kernels alone) and `chain` (block execution: batch verification,
//! state, durable commit). Every run prints a markdown report headed by the machine and the
//! date; `--out FILE` appends it to a results file.

mod chain;
#[cfg(feature = "store")]
mod dht;
mod kernels;
#[cfg(feature = "store")]
mod load;
mod machine;
mod measure;
mod routing;
mod storage;
mod verify;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// cpchain benchmarks: every headline number is a ratio against a baseline from the same run.
#[derive(Debug, Parser)]
#[command(name = "bench", about, long_about = None)]
struct Cli {
    /// Append the markdown report to this file as well as printing it.
    #[arg(long, global = true, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// ed25519: our BatchVerifier (1 and 2 threads) against raw dalek batch verification.
    Verify(verify::VerifyArgs),
    /// AEAD, BLAKE3 and Reed–Solomon kernel rates.
    Kernels(kernels::KernelArgs),
    /// Chunk store put/get against std::fs write+fsync, io_uring and portable backends.
    Store(storage::StoreArgs),
    /// Seal/open pipeline against its kernels alone, and seal into the store against std::fs.
    Seal(storage::SealArgs),
    /// Main-chain block execution: batch verification, state transition, durable commit.
    Chain(chain::ChainArgs),
    /// Lookup success against adversarial routing answers, with and without disjoint paths.
    Routing(routing::RoutingArgs),
    /// End to end: a devnet of node processes under a target transaction rate.
    #[cfg(feature = "store")]
    Load(load::LoadArgs),
    /// Data layer end to end: put and get through a loopback cluster against the local
    /// pipeline, and time to first byte.
    #[cfg(feature = "store")]
    Dht(dht::DhtArgs),
    /// A fixed amount of verification work, for callgrind.
    #[command(hide = true)]
    ProfileVerify(verify::ProfileArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (title, body) = match &cli.cmd {
        Cmd::Verify(a) => ("bench verify", verify::run(a)?),
        Cmd::Kernels(a) => ("bench kernels", kernels::run(a)?),
        Cmd::Store(a) => ("bench store", storage::run_store(a)?),
        Cmd::Seal(a) => ("bench seal", storage::run_seal(a)?),
        Cmd::Chain(a) => ("bench chain", chain::run(a)?),
        Cmd::Routing(a) => ("bench routing", routing::run(a)?),
        Cmd::ProfileVerify(a) => ("bench profile-verify", verify::profile(a)?),
        #[cfg(feature = "store")]
        Cmd::Load(a) => ("bench load", load::run(a)?),
        #[cfg(feature = "store")]
        Cmd::Dht(a) => ("bench dht", dht::run(a)?),
    };
    let report = format!("{}{body}", machine::header(title));
    println!("{report}");
    if let Some(path) = &cli.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{report}").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
