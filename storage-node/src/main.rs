//! The `cpchain` command-line interface: keys, local put/get through the seal/open pipeline,
//! and a self-checking demo.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use crypto_accel::{AeadAlgo, DataId, Keypair};
use indicatif::{ProgressBar, ProgressStyle};
use storage_node::{
    node, open, seal, BackendChoice, ChunkStore, Manifest, ManifestDir, OpenParams, SealParams,
    StoreConfig, StoreSink,
};

/// cpchain: encrypted, erasure-coded data storage anchored on a thin chain.
#[derive(Debug, Parser)]
#[command(name = "cpchain", version, about, long_about = None)]
struct Cli {
    /// Directory holding the key, the chunk store and manifests
    /// [default: $CPCHAIN_HOME or ~/.cpchain]
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Chunk store I/O backend.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    backend: BackendArg,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BackendArg {
    /// io_uring where the kernel allows it, else portable.
    Auto,
    /// io_uring (tokio-uring); fails if unavailable.
    IoUring,
    /// std::fs on a writer thread.
    Portable,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a local multi-node network on loopback (one process per node) and run it
    /// until Ctrl-C.
    Devnet {
        /// Validators (n = 3f + 1).
        #[arg(long, default_value_t = 4)]
        validators: usize,
        /// Proposer candidates.
        #[arg(long, default_value_t = 3)]
        proposers: usize,
        /// Storage nodes.
        #[arg(long, default_value_t = 12)]
        storage: usize,
        /// Block period in milliseconds.
        #[arg(long, default_value_t = 1_000)]
        period_ms: u64,
        /// Impeach timeout in milliseconds [default: 2 × period, at least 1 s].
        #[arg(long)]
        impeach_timeout_ms: Option<u64>,
        /// Blocks per proposer turn.
        #[arg(long, default_value_t = 3)]
        view_len: u64,
        /// Most transactions per block.
        #[arg(long, default_value_t = 20_000)]
        max_block_txs: usize,
        /// Where node data goes [default: a new directory under the system temp dir].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Write a commented node config, a key and (without --genesis) a one-node genesis
    /// into DIR.
    Init {
        /// Directory for node.toml, node.key and genesis.toml.
        dir: PathBuf,
        /// Join an existing network with this genesis file instead.
        #[arg(long)]
        genesis: Option<PathBuf>,
        /// Block period of a new one-node network, ms.
        #[arg(long, default_value_t = 1_000)]
        period_ms: u64,
    },
    /// Show a node's status.
    Status {
        /// The node's API [default: the local devnet or node, else http://127.0.0.1:8645].
        #[arg(long, env = "CPCHAIN_API", value_name = "URL")]
        api: Option<String>,
    },
    /// Sign and submit a transaction to a node.
    Tx {
        /// The node's API [default: the local devnet or node, else http://127.0.0.1:8645].
        #[arg(long, env = "CPCHAIN_API", value_name = "URL")]
        api: Option<String>,
        /// Signing key file [default: the key in --home].
        #[arg(long)]
        key: Option<PathBuf>,
        /// Seconds to wait for the transaction to be final (0: print its hash and return).
        #[arg(long, default_value_t = 30, value_name = "S")]
        wait_s: u64,
        #[command(subcommand)]
        cmd: node::client::TxCmd,
    },
    /// Run a node.
    Node {
        /// The node's config file (see `cpchain init`).
        #[arg(long, default_value = "node.toml")]
        config: PathBuf,
    },
    /// Manage the node's ed25519 key.
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// Seal FILE, spread its shards over the network's storage nodes, register it on chain
    /// and print its data id (`--local`: into this machine's store only).
    Put {
        /// The file to store ("-" for standard input).
        file: PathBuf,
        #[command(flatten)]
        seal: SealArgs,
        #[command(flatten)]
        net: NetArgs,
        /// Who may read it (recorded on chain).
        #[arg(long, value_enum, default_value = "grants")]
        policy: node::client::PolicyArg,
    },
    /// Fetch DATA_ID from the network (`--local`: from this machine's store), verify,
    /// decrypt and write it out.
    Get {
        /// The data id printed by `put`.
        data_id: String,
        /// Where to write the plaintext [default: standard output].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Only bytes A to B (exclusive), e.g. `--range 0-1048576`.
        #[arg(long, value_parser = parse_range)]
        range: Option<(u64, u64)>,
        /// Test hook: start knowing no holder, so every block is found by a second lookup.
        #[arg(long, hide = true)]
        test_blind_start: bool,
        #[command(flatten)]
        net: NetArgs,
    },
    /// List the data items stored here.
    Ls,
    /// Delete DATA_ID's shards and manifest, reclaiming their space.
    Rm {
        /// The data id.
        data_id: String,
    },
    /// Show chunk store usage.
    Stats,
    /// Seal a sample, delete m shards of every block, open it, check the bytes, print rates.
    Demo {
        /// Sample size, e.g. 256MiB, 1GiB.
        #[arg(long, default_value = "256MiB", value_parser = parse_size)]
        size: u64,
        #[command(flatten)]
        seal: SealArgs,
    },
}

/// How `put` and `get` reach the network.
#[derive(Debug, clap::Args)]
struct NetArgs {
    /// Use this machine's chunk store (under --home) instead of the network.
    #[arg(long)]
    local: bool,
    /// A node's API [default: the local devnet or node, else http://127.0.0.1:8645].
    #[arg(long, env = "CPCHAIN_NODE", value_name = "URL")]
    node: Option<String>,
    /// Key file of the owner or reader [default: the key in --home].
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Seconds to wait for enough storage nodes to be found.
    #[arg(long, default_value_t = 10)]
    discover_s: u64,
    /// Keep shard bytes encrypted in transit too. By default they travel between holders and
    /// clients as they are stored (the owner's ciphertext, checked against its content id):
    /// an eavesdropper on the path sees the ciphertext and, from its hash, which shards move.
    /// Costs about a quarter more CPU on a get.
    #[arg(long, conflicts_with = "local")]
    sealed_transfers: bool,
}

impl NetArgs {
    /// A network client through the node's API, as `key`, once `min_storage` storage nodes
    /// are known (or `wait` passes).
    fn connect(&self, key: Keypair, min_storage: usize, wait: u64) -> Result<node::dfs::Dfs> {
        let mut dfs = node::dfs::Dfs::connect(
            &self.api(),
            key,
            min_storage,
            std::time::Duration::from_secs(wait),
        )?;
        if self.sealed_transfers {
            dfs.keep_shards_sealed();
        }
        Ok(dfs)
    }

    fn key(&self, home: &Path) -> Result<Keypair> {
        match &self.key {
            Some(k) => node::config::load_key(k),
            None => load_key(home),
        }
    }

    fn api(&self) -> String {
        api_or_local(&self.node)
    }
}

/// The API given, else the local devnet's or node's (see `node::devnet::local_node_api`).
fn api_or_local(api: &Option<String>) -> String {
    api.clone().unwrap_or_else(node::devnet::local_node_api)
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("'{s}' is not a range: use A-B, e.g. 0-1048576"))?;
    let a = parse_size(a)?;
    let b = parse_size(b)?;
    if b < a {
        return Err(format!("range {s} ends before it starts"));
    }
    Ok((a, b))
}

#[derive(Debug, Subcommand)]
enum KeysCmd {
    /// Create a new key (refuses to overwrite one without --force).
    New {
        /// Replace an existing key. Data sealed under the old key becomes unreadable.
        #[arg(long)]
        force: bool,
    },
    /// Print the public key.
    Show,
}

#[derive(Debug, clap::Args)]
struct SealArgs {
    /// Data shards per block.
    #[arg(short = 'k', long, default_value_t = 10)]
    data_shards: u8,
    /// Parity shards per block (any m may be lost).
    #[arg(short = 'm', long, default_value_t = 4)]
    parity_shards: u8,
    /// Plaintext bytes per block.
    #[arg(long, default_value = "1MiB", value_parser = parse_size)]
    block_size: u64,
    /// Blocks per encryption interval (each interval has its own key).
    #[arg(long, default_value_t = 64)]
    interval_blocks: u32,
    /// AEAD: aes-256-gcm or chacha20-poly1305.
    #[arg(long, default_value = "aes-256-gcm")]
    aead: String,
}

impl SealArgs {
    fn params(&self) -> Result<SealParams> {
        let algo = AeadAlgo::from_name(&self.aead).with_context(|| {
            format!(
                "unknown AEAD '{}': use aes-256-gcm or chacha20-poly1305",
                self.aead
            )
        })?;
        let block_size = u32::try_from(self.block_size)
            .ok()
            .filter(|&b| b > 0 && b <= storage_node::MAX_BLOCK_SIZE)
            .with_context(|| {
                format!(
                    "block size must be between 1 byte and {} MiB",
                    storage_node::MAX_BLOCK_SIZE >> 20
                )
            })?;
        Ok(SealParams {
            k: self.data_shards,
            m: self.parity_shards,
            block_size,
            interval_blocks: self.interval_blocks,
            algo,
            ..SealParams::default()
        })
    }
}

/// Parses sizes like `4096`, `64KiB`, `256MiB`, `1GiB` (also KB/MB/GB as powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size: use e.g. 4096, 64KiB, 256MiB, 1GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("unknown size unit '{u}': use KiB, MiB or GiB")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what went wrong, with its causes, and what to do.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn home_dir(cli: &Cli) -> Result<PathBuf> {
    if let Some(h) = &cli.home {
        return Ok(h.clone());
    }
    if let Some(h) = std::env::var_os("CPCHAIN_HOME") {
        return Ok(PathBuf::from(h));
    }
    match std::env::var_os("HOME") {
        Some(h) => Ok(PathBuf::from(h).join(".cpchain")),
        None => bail!("cannot find a home directory: pass --home DIR or set CPCHAIN_HOME"),
    }
}

fn store_config(cli: &Cli) -> StoreConfig {
    StoreConfig {
        backend: match cli.backend {
            BackendArg::Auto => BackendChoice::Auto,
            BackendArg::IoUring => BackendChoice::IoUring,
            BackendArg::Portable => BackendChoice::Portable,
        },
        ..StoreConfig::default()
    }
}

fn key_path(home: &Path) -> PathBuf {
    home.join("key")
}

fn load_key(home: &Path) -> Result<Keypair> {
    let path = key_path(home);
    if !path.exists() {
        bail!(
            "no key at {}: run `cpchain keys new` first (or pass --home)",
            path.display()
        );
    }
    node::config::load_key(&path)
}

fn write_key(home: &Path, kp: &Keypair, force: bool) -> Result<()> {
    let path = key_path(home);
    if path.exists() && !force {
        bail!(
            "a key already exists at {}; pass --force to replace it (data sealed under it becomes unreadable)",
            path.display()
        );
    }
    node::config::write_atomic(
        &path,
        format!("{}\n", hex::encode(kp.seed())).as_bytes(),
        0o600,
    )
}

fn bytes_bar(len: Option<u64>, msg: &'static str) -> ProgressBar {
    let bar = match len {
        Some(l) => ProgressBar::new(l),
        None => ProgressBar::no_length(),
    };
    let style = ProgressStyle::with_template(
        "{msg:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(msg);
    bar
}

fn parse_data_id(s: &str) -> Result<DataId> {
    DataId::from_hex(s).map_err(|_| {
        anyhow::anyhow!(
            "'{s}' is not a data id: expected the 64 hex characters `cpchain put` printed"
        )
    })
}

/// `cpchain get` against the network: to a temporary name then renamed, so a failed get
/// never leaves a partial file that looks complete.
fn net_get(
    net: &NetArgs,
    reader: Keypair,
    id: &DataId,
    output: Option<&Path>,
    range: Option<(u64, u64)>,
    blind: bool,
) -> Result<()> {
    let mut dfs = net.connect(reader, 1, net.discover_s.min(3))?;
    if blind {
        dfs.start_gets_blind();
    }
    let bar = bytes_bar(None, "fetching");
    let report = match output {
        None => dfs.get(
            id,
            BufWriter::with_capacity(OUT_BUF, io::stdout()),
            range,
            &|n| bar.set_position(n),
        )?,
        Some(p) if p.as_os_str() == "-" => dfs.get(
            id,
            BufWriter::with_capacity(OUT_BUF, io::stdout()),
            range,
            &|n| bar.set_position(n),
        )?,
        Some(out) => write_output(out, |w| dfs.get(id, w, range, &|n| bar.set_position(n)))?,
    };
    bar.finish_and_clear();
    eprintln!(
        "fetched {} at {:.0} MiB/s, first byte after {:.0} ms ({} blocks rebuilt, {} shards missing, {} slow shards passed over, {} rejected)",
        human(report.open.bytes),
        mib_per_s(report.open.bytes, report.total_s),
        report.first_byte_s * 1000.0,
        report.open.blocks_reconstructed,
        report.shards_unreachable(),
        report.shards_slow,
        report.open.shards_corrupt
    );
    if report.relocations > 0 {
        eprintln!(
            "more lookups of the data: {} (every known holder of some block had failed; \
             its shards may have moved since the get began, by repair say)",
            report.relocations
        );
    }
    if report.shards_wrong > 0 {
        eprintln!(
            "{} shards came with wrong bytes and were asked for again, sealed: {} then came \
             intact (changed on the way); the sealed ask did not mend the rest (refused, wrong \
             again or unanswered: damaged on their holder's disk, say), and other shards or \
             holders stood in for them",
            report.shards_wrong, report.shards_wrong_recovered
        );
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Command::Devnet {
            validators,
            proposers,
            storage,
            period_ms,
            impeach_timeout_ms,
            view_len,
            max_block_txs,
            data_dir,
        } => {
            let data_dir = match data_dir {
                Some(d) => d.clone(),
                None => std::env::temp_dir().join(format!(
                    "cpchain-devnet-{}",
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                )),
            };
            return node::devnet::run(node::devnet::DevnetParams {
                validators: *validators,
                proposers: *proposers,
                storage: *storage,
                period_ms: *period_ms,
                impeach_timeout_ms: impeach_timeout_ms
                    .unwrap_or_else(|| period_ms.saturating_mul(2).max(1_000)),
                data_dir,
                view_len: *view_len,
                max_block_txs: *max_block_txs,
                binary: std::env::current_exe().context("locating the cpchain binary")?,
            });
        }
        Command::Init {
            dir,
            genesis,
            period_ms,
        } => {
            let p = node::config::init(dir, genesis.as_deref(), *period_ms)?;
            println!(
                "wrote {}; start it with: cpchain node --config {}",
                p.display(),
                p.display()
            );
            return Ok(());
        }
        Command::Node { config } => return node::run::run(config),
        Command::Status { api } => {
            return node::client::run_status(&api_or_local(api));
        }
        _ => {}
    }
    let home = home_dir(&cli)?;
    match &cli.cmd {
        Command::Devnet { .. }
        | Command::Init { .. }
        | Command::Node { .. }
        | Command::Status { .. } => {}
        Command::Tx {
            api,
            key,
            wait_s,
            cmd,
        } => {
            let kp = match key {
                Some(k) => node::config::load_key(k)?,
                None => load_key(&home)?,
            };
            let wait = std::time::Duration::from_secs(*wait_s);
            node::client::run_tx(&api_or_local(api), &kp, cmd.clone(), wait)?;
        }
        Command::Keys {
            cmd: KeysCmd::New { force },
        } => {
            let kp = Keypair::generate();
            write_key(&home, &kp, *force)?;
            println!("{}", kp.public());
            eprintln!("key written to {}", key_path(&home).display());
        }
        Command::Keys { cmd: KeysCmd::Show } => println!("{}", load_key(&home)?.public()),
        Command::Put {
            file,
            seal: args,
            net,
            policy,
        } => {
            let params = args.params()?;
            let owner = net.key(&home)?;
            let (input, len): (Box<dyn Read + Send>, Option<u64>) = if file.as_os_str() == "-" {
                (Box::new(io::stdin()), None)
            } else {
                let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
                let len = f.metadata().map(|m| m.len()).ok();
                (Box::new(BufReader::with_capacity(1 << 20, f)), len)
            };
            if !net.local {
                let need = usize::from(params.k) + usize::from(params.m);
                let dfs = net.connect(owner, need, net.discover_s)?;
                let bar = bytes_bar(len, "uploading");
                let r = dfs.put(input, &params, (*policy).into(), &|n| bar.set_position(n))?;
                bar.finish_and_clear();
                eprintln!(
                    "stored {} in {} blocks on {} storage nodes: sealed and uploaded at {:.0} MiB/s \
                     ({} uploads moved to another node), registered and committed in {:.1} s",
                    human(r.bytes),
                    r.blocks,
                    r.holders,
                    mib_per_s(r.bytes, r.upload_s),
                    r.retries,
                    r.register_s
                );
                println!("{}", r.data);
                return Ok(());
            }
            let store = ChunkStore::open(home.join("store"), store_config(&cli))?;
            let manifests = ManifestDir::open(home.join("manifests"))?;
            let bar = bytes_bar(len, "sealing");
            let t = Instant::now();
            let manifest = seal(input, &owner, &params, &mut StoreSink::new(&store), &|n| {
                bar.set_position(n)
            })?;
            bar.finish_and_clear();
            let id = manifests.save(&manifest)?;
            eprintln!(
                "sealed {} in {} blocks ({}+{} shards each) at {:.0} MiB/s into {}",
                human(manifest.length),
                manifest.blocks.len(),
                manifest.k,
                manifest.m,
                mib_per_s(manifest.length, t.elapsed().as_secs_f64()),
                home.join("store").display()
            );
            println!("{id}");
            store.close()?;
        }
        Command::Get {
            data_id,
            output,
            range,
            test_blind_start,
            net,
        } => {
            let id = parse_data_id(data_id)?;
            let owner = net.key(&home)?;
            if !net.local {
                return net_get(
                    net,
                    owner,
                    &id,
                    output.as_deref(),
                    *range,
                    *test_blind_start,
                );
            }
            if *test_blind_start {
                bail!("--test-blind-start is for gets over the network, not --local");
            }
            let Some(output) = output else {
                bail!("--local needs -o FILE (or -o - for standard output)");
            };
            let manifests = ManifestDir::open(home.join("manifests"))?;
            let manifest = manifests.load(&id)?;
            let store = ChunkStore::open(home.join("store"), store_config(&cli))?;
            let bar = bytes_bar(Some(manifest.length), "opening");
            let t = Instant::now();
            let report = if output.as_os_str() == "-" {
                open(
                    &manifest,
                    &owner,
                    &store,
                    BufWriter::with_capacity(OUT_BUF, io::stdout()),
                    &OpenParams {
                        range: *range,
                        ..OpenParams::default()
                    },
                    &|n| bar.set_position(n),
                )?
            } else {
                write_output(output, |w| {
                    Ok(open(
                        &manifest,
                        &owner,
                        &store,
                        w,
                        &OpenParams {
                            range: *range,
                            ..OpenParams::default()
                        },
                        &|n| bar.set_position(n),
                    )?)
                })?
            };
            bar.finish_and_clear();
            eprintln!(
                "opened {} at {:.0} MiB/s ({} blocks rebuilt, {} shards missing, {} rejected)",
                human(report.bytes),
                mib_per_s(report.bytes, t.elapsed().as_secs_f64()),
                report.blocks_reconstructed,
                report.shards_missing,
                report.shards_corrupt
            );
        }
        Command::Ls => {
            let manifests = ManifestDir::open(home.join("manifests"))?;
            let mut n = 0;
            for id in manifests.ids()? {
                match manifests.load(&id) {
                    Ok(m) => println!(
                        "{id}  {:>10}  {} blocks  {}+{}",
                        human(m.length),
                        m.blocks.len(),
                        m.k,
                        m.m
                    ),
                    Err(e) => println!("{id}  damaged: {e}"),
                }
                n += 1;
            }
            eprintln!("{n} data items");
        }
        Command::Rm { data_id } => {
            let id = parse_data_id(data_id)?;
            let manifests = ManifestDir::open(home.join("manifests"))?;
            let manifest = manifests.load(&id)?;
            let store = ChunkStore::open(home.join("store"), store_config(&cli))?;
            let mut deleted = 0;
            for b in &manifest.blocks {
                for s in &b.shards {
                    deleted += u64::from(store.delete(s)?);
                }
            }
            manifests.remove(&id)?;
            let c = store.compact()?;
            eprintln!("deleted {deleted} shards; compaction: {c:?}");
            store.close()?;
        }
        Command::Stats => {
            let store = ChunkStore::open(home.join("store"), store_config(&cli))?;
            let s = store.stats();
            println!("backend      {}", store.backend());
            println!("chunks       {}", s.chunks);
            println!("live bytes   {}", human(s.live_bytes));
            println!("disk bytes   {}", human(s.disk_bytes));
            println!("capacity     {}", human(s.capacity_bytes));
            println!("segments     {}", s.segments);
            store.close()?;
        }
        Command::Demo { size, seal: args } => demo(&cli, *size, &args.params()?)?,
    }
    Ok(())
}

fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn mib_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
}

/// A writer that only hashes what it is given.
struct HashWriter(blake3::Hasher, u64);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn demo(cli: &Cli, size: u64, params: &SealParams) -> Result<()> {
    use rand::{RngCore, SeedableRng};
    let dir = tempfile_dir()?;
    println!(
        "cpchain demo: {} sample, {}+{} erasure code, {} blocks, {}",
        human(size),
        params.k,
        params.m,
        human(u64::from(params.block_size)),
        params.algo.name()
    );
    println!("working in {}", dir.display());
    // 1. A sample file of pseudo-random bytes, hashed as it is written.
    let sample = dir.join("sample.bin");
    let mut expect = blake3::Hasher::new();
    {
        let mut rng = rand::rngs::StdRng::seed_from_u64(size);
        let mut w = BufWriter::with_capacity(
            1 << 20,
            File::create(&sample).with_context(|| format!("creating {}", sample.display()))?,
        );
        let mut buf = vec![0u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            expect.update(&buf[..n]);
            w.write_all(&buf[..n])?;
            left -= n as u64;
        }
        w.flush()?;
    }
    let owner = Keypair::generate();
    let store = ChunkStore::open(dir.join("store"), store_config(cli))?;
    println!("chunk store backend: {}", store.backend());

    // 2. Seal into the store.
    let bar = bytes_bar(Some(size), "sealing");
    let t = Instant::now();
    let input = BufReader::with_capacity(1 << 20, File::open(&sample)?);
    let manifest: Manifest = seal(input, &owner, params, &mut StoreSink::new(&store), &|n| {
        bar.set_position(n)
    })?;
    let seal_s = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let stats = store.stats();
    println!(
        "sealed   {} -> {} shards ({} on disk) in {:.2} s: {:.0} MiB/s, durable (group commits: {})",
        human(size),
        stats.chunks,
        human(stats.disk_bytes),
        seal_s,
        mib_per_s(size, seal_s),
        stats.syncs
    );
    println!("data id  {}", manifest.data_id());

    // 3. Lose m shards of every block (a different random set per block).
    let mut rng = rand::rngs::StdRng::seed_from_u64(size ^ 0x5eed);
    let n = usize::from(params.k) + usize::from(params.m);
    let mut lost = 0;
    for b in &manifest.blocks {
        let mut idx: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            idx.swap(i, (rng.next_u32() as usize) % (i + 1));
        }
        for &i in &idx[..usize::from(params.m)] {
            if !store.delete(&b.shards[i])? {
                bail!("shard {i} of a block was missing before the demo deleted it");
            }
            lost += 1;
        }
    }
    println!("deleted  {lost} shards ({} of every block's {n})", params.m);

    // 4. Open from the k survivors and compare.
    let bar = bytes_bar(Some(size), "opening");
    let t = Instant::now();
    let mut out = HashWriter(blake3::Hasher::new(), 0);
    let report = open(
        &manifest,
        &owner,
        &store,
        &mut out,
        &OpenParams::default(),
        &|n| bar.set_position(n),
    )?;
    let open_s = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    println!(
        "opened   {} in {:.2} s: {:.0} MiB/s ({} blocks rebuilt from parity, {} shards missing)",
        human(report.bytes),
        open_s,
        mib_per_s(report.bytes, open_s),
        report.blocks_reconstructed,
        report.shards_missing
    );
    if out.1 != size || out.0.finalize() != expect.finalize() {
        bail!("round trip FAILED: the opened bytes differ from the sample");
    }
    println!(
        "verified round trip: {} identical bytes (BLAKE3 {})",
        out.1,
        expect.finalize().to_hex()
    );
    store.close()?;
    fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(())
}

/// Output buffer of `get`: smaller than a block's parts (a 1 MiB block at k = 10 has parts
/// of 100 KiB), which `BufWriter` then passes straight through instead of copying them,
/// while small writes (the edges of a ranged get) are still gathered.
const OUT_BUF: usize = 64 << 10;

/// Runs `get` writing to `out`. A regular file (or a new one) is written under a temporary
/// name and renamed once `get` succeeds, so a failed get never leaves a partial file that
/// looks complete; anything else that exists (a device such as `/dev/null`, a FIFO) is
/// written in place, never replaced.
fn write_output<T>(out: &Path, get: impl FnOnce(BufWriter<File>) -> Result<T>) -> Result<T> {
    let special = fs::metadata(out).is_ok_and(|m| !m.is_file() && !m.is_dir());
    if special {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(out)
            .with_context(|| format!("opening {}", out.display()))?;
        return get(BufWriter::with_capacity(OUT_BUF, f));
    }
    let tmp = out.with_extension("cpchain-partial");
    let f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    match get(BufWriter::with_capacity(OUT_BUF, f)) {
        Ok(r) => {
            fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
            Ok(r)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A fresh directory for the demo, under the system temp dir.
fn tempfile_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for _ in 0..16 {
        let d = base.join(format!("cpchain-demo-{:016x}", rand::random::<u64>()));
        match fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
        }
    }
    bail!("could not create a demo directory under {}", base.display())
}
