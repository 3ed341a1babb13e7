//! The `cpchain` command-line interface: keys, local put/get through the seal/open pipeline,
//! and a self-checking demo.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use crypto_accel::{AeadAlgo, DataId, Keypair};
use indicatif::{ProgressBar, ProgressStyle};
use storage_node::node::client::{is_epipe, print_out};
use storage_node::{
    node, open, seal, BackendChoice, ChunkStore, Manifest, ManifestDir, OpenParams, PipelineError,
    SealParams, StoreConfig, StoreSink,
};

use node::client::{count, human};

/// `println!` that survives a closed standard output (see [`print_out`]); `?`s its error.
macro_rules! outln {
    ($($arg:tt)*) => {
        print_out(|o| writeln!(o, $($arg)*))?
    };
}

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
        /// A peer of the network to join, as a multiaddr ending in /p2p/<peer id> (a node
        /// logs its own at start: "listening on …"); repeat for more.
        #[arg(long, value_name = "MULTIADDR", requires = "genesis")]
        bootstrap: Vec<String>,
    },
    /// Show a node's status.
    Status {
        /// The node's API [default: $CPCHAIN_NODE, else the local devnet or node, else
        /// http://127.0.0.1:8645] (also --node).
        #[arg(long, alias = "node", env = "CPCHAIN_API", value_name = "URL")]
        api: Option<String>,
    },
    /// Sign and submit a transaction to a node.
    Tx {
        /// The node's API [default: $CPCHAIN_NODE, else the local devnet or node, else
        /// http://127.0.0.1:8645] (also --node).
        #[arg(long, alias = "node", env = "CPCHAIN_API", value_name = "URL")]
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
        /// Only bytes START to END (exclusive; clamped to the data's length), or START- for
        /// START to the end, e.g. `--range 0-1MiB`, `--range 1MiB-`.
        #[arg(long, value_name = "START-END", value_parser = parse_range)]
        range: Option<(u64, u64)>,
        /// Test hook: start knowing no holder, so every block is found by a second lookup.
        #[arg(long, hide = true)]
        test_blind_start: bool,
        #[command(flatten)]
        net: NetArgs,
    },
    /// List the data items in the local store, or with --net the data registered on chain
    /// by your key (or --owner), newest first.
    Ls {
        /// List what is registered on chain, through a node's API, instead of the local store.
        #[arg(long)]
        net: bool,
        /// List this address's data instead of your key's (implies --net).
        #[arg(long, value_name = "ADDRESS")]
        owner: Option<String>,
        /// Most items to list from the chain (1–200), newest first.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..=200))]
        limit: u16,
        /// A node's API [default: $CPCHAIN_NODE, else the local devnet or node, else
        /// http://127.0.0.1:8645] (also --node).
        #[arg(long, alias = "node", env = "CPCHAIN_API", value_name = "URL")]
        api: Option<String>,
        /// Key file whose data to list [default: the key in --home].
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
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
    /// A node's API [default: $CPCHAIN_NODE, else the local devnet or node, else
    /// http://127.0.0.1:8645] (also --node).
    #[arg(long, alias = "node", env = "CPCHAIN_API", value_name = "URL")]
    api: Option<String>,
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
        key_or_home(self.key.as_deref(), home)
    }

    fn api(&self) -> String {
        api_or_local(&self.api)
    }
}

/// The API given (`--api`, its alias `--node`, or `$CPCHAIN_API`), else `$CPCHAIN_NODE`
/// (the name data commands used first), else the local devnet's or node's (see
/// `node::devnet::local_node_api`).
fn api_or_local(api: &Option<String>) -> String {
    api.clone()
        .or_else(|| std::env::var("CPCHAIN_NODE").ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(node::devnet::local_node_api)
}

/// `START-END` (END exclusive) or `START-`: to the end of the data, as END = `u64::MAX`,
/// which `open` clamps to the data's length like any END (a START past the end is its
/// error, naming the length).
fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let usage = || format!("'{s}' is not a range: use START-END or START-, e.g. 0-1MiB or 1MiB-");
    let (a, b) = s.split_once('-').ok_or_else(usage)?;
    if a.trim().is_empty() {
        return Err(usage());
    }
    let a = parse_size(a)?;
    let b = if b.trim().is_empty() {
        u64::MAX
    } else {
        parse_size(b)?
    };
    if b < a {
        return Err(format!("range {s} ends before it starts"));
    }
    if b == a {
        return Err(format!("range {s} is empty: END is exclusive"));
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
    /// Print the public key (the address) of the key in --home, or of --key FILE.
    Show {
        /// A key file (a node's node.key, a devnet's faucet.key) instead of --home's.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
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
            // Written, not `eprintln!`, which panics when standard error is closed.
            let _ = writeln!(std::io::stderr(), "error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` and its causes on one line, each said once. Some errors print their source in their
/// own message and also return it from `source()`, so `{e:#}` would say it twice
/// (`Is a directory (os error 21): Is a directory (os error 21)`): a cause the line already
/// ends with is left out.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if line.ends_with(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
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

/// For the commands that only read this machine's store (`ls`, `stats`, `rm`): `home` must
/// exist already, or a mistyped --home would be created, empty, and listed as such.
fn local_home(home: &Path) -> Result<()> {
    if home.exists() && !home.is_dir() {
        bail!(
            "{} is not a directory: --home names the directory of the key and store",
            home.display()
        );
    }
    if !home.is_dir() {
        bail!(
            "{} does not exist: nothing was stored on this machine there (put --local and keys \
             new create it; --home or CPCHAIN_HOME choose another; data put on the network is \
             on its storage nodes, not here)",
            home.display()
        );
    }
    Ok(())
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

/// The key in the file `key` names, else the one in `home`.
fn key_or_home(key: Option<&Path>, home: &Path) -> Result<Keypair> {
    match key {
        Some(k) => node::config::load_key(k),
        None => load_key(home),
    }
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
            "'{}' is not a data id: expected the 64 hex characters `cpchain put` printed",
            node::client::clip(s)
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
    let report = write_to(output, |w| dfs.get(id, w, range, &|n| bar.set_position(n)))?;
    bar.finish_and_clear();
    let Some(report) = report else {
        return Ok(());
    };
    eprintln!(
        "fetched {} at {:.0} MiB/s, first byte after {:.0} ms ({} rebuilt, {} missing, {} passed over, {} rejected)",
        human(report.open.bytes),
        mib_per_s(report.open.bytes, report.total_s),
        report.first_byte_s * 1000.0,
        count(report.open.blocks_reconstructed, "block"),
        count(report.shards_unreachable(), "shard"),
        count(report.shards_slow, "slow shard"),
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
        let were = if report.shards_wrong == 1 {
            "was"
        } else {
            "were"
        };
        eprintln!(
            "{} came with wrong bytes and {} asked for again, sealed: {} then came \
             intact (changed on the way); the sealed ask did not mend the rest (refused, wrong \
             again or unanswered: damaged on their holder's disk, say), and other shards or \
             holders stood in for them",
            count(report.shards_wrong, "shard"),
            were,
            report.shards_wrong_recovered
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
                // Absolute, so the node configs it writes name their files from anywhere
                // (a devnet is resumed from whatever directory its operator is in).
                Some(d) => std::path::absolute(d)
                    .with_context(|| format!("resolving --data-dir {}", d.display()))?,
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
            bootstrap,
        } => {
            let made = node::config::init(dir, genesis.as_deref(), *period_ms, bootstrap)?;
            let p = made.config.display();
            outln!("wrote {p}; start it with: cpchain node --config {p}");
            outln!("node address {}", made.address);
            if genesis.is_some() && bootstrap.is_empty() {
                eprintln!(
                    "note: no --bootstrap peer: the node cannot find the network until [network] \
                     bootstrap in {p} names one (a multiaddr ending in /p2p/<peer id>, which a \
                     node logs at start: \"listening on …\")"
                );
            }
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
            let kp = key_or_home(key.as_deref(), &home)?;
            let wait = std::time::Duration::from_secs(*wait_s);
            node::client::run_tx(&api_or_local(api), &kp, cmd.clone(), wait)?;
        }
        Command::Keys {
            cmd: KeysCmd::New { force },
        } => {
            let kp = Keypair::generate();
            write_key(&home, &kp, *force)?;
            outln!("{}", kp.public());
            eprintln!("key written to {}", key_path(&home).display());
        }
        Command::Keys {
            cmd: KeysCmd::Show { key },
        } => {
            let public = key_or_home(key.as_deref(), &home)?.public();
            outln!("{public}");
        }
        Command::Put {
            file,
            seal: args,
            net,
            policy,
        } => {
            let params = args.params()?;
            let owner = net.key(&home)?;
            type Input = Box<dyn BufRead + Send>;
            let (mut input, len, name): (Input, Option<u64>, String) = if file.as_os_str() == "-" {
                let stdin = BufReader::with_capacity(1 << 20, io::stdin());
                (Box::new(stdin), None, "standard input".to_string())
            } else {
                let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
                let meta = f
                    .metadata()
                    .with_context(|| format!("reading the metadata of {}", file.display()))?;
                if meta.is_dir() {
                    bail!(
                        "{} is a directory: put stores one file (pack a directory first, e.g. with tar)",
                        file.display()
                    );
                }
                // A FIFO or device says 0 whatever it holds: no length for the progress bar.
                let len = meta.is_file().then_some(meta.len());
                let f = BufReader::with_capacity(1 << 20, f);
                (Box::new(f), len, file.display().to_string())
            };
            if !net.local {
                // The chain refuses to register empty data, and only once every shard is
                // uploaded: refused here, before any is. (Also for a pipe, whose length no
                // metadata tells: this waits for its first bytes.)
                if input
                    .fill_buf()
                    .with_context(|| format!("reading {name}"))?
                    .is_empty()
                {
                    bail!("{name} is empty: there is nothing to store");
                }
                if let Some(len) = len {
                    node::dfs::check_manifest_fits(len, &params)?;
                }
                let need = usize::from(params.k) + usize::from(params.m);
                let dfs = net.connect(owner, need, net.discover_s)?;
                let bar = bytes_bar(len, "uploading");
                let r = dfs.put(input, &params, (*policy).into(), &|n| bar.set_position(n))?;
                bar.finish_and_clear();
                eprintln!(
                    "stored {} in {} on {}: sealed and uploaded at {:.0} MiB/s \
                     ({} moved to another node), registered and committed in {:.1} s",
                    human(r.bytes),
                    count(r.blocks as u64, "block"),
                    count(r.holders as u64, "storage node"),
                    mib_per_s(r.bytes, r.upload_s),
                    count(r.retries, "upload"),
                    r.register_s
                );
                outln!("{}", r.data);
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
                "sealed {} in {} ({}+{} shards each) at {:.0} MiB/s into {}",
                human(manifest.length),
                count(manifest.blocks.len() as u64, "block"),
                manifest.k,
                manifest.m,
                mib_per_s(manifest.length, t.elapsed().as_secs_f64()),
                home.join("store").display()
            );
            outln!("{id}");
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
            if let Some(out) = output.as_deref().filter(|o| o.is_dir()) {
                bail!(
                    "{} is a directory: give -o the file to write, e.g. -o {}",
                    out.display(),
                    out.join("NAME").display()
                );
            }
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
            let manifests = ManifestDir::open(home.join("manifests"))?;
            let manifest = manifests.load(&id)?;
            let store = ChunkStore::open(home.join("store"), store_config(&cli))?;
            let bar = bytes_bar(Some(manifest.length), "opening");
            let t = Instant::now();
            let params = OpenParams {
                range: *range,
                ..OpenParams::default()
            };
            let report = write_to(output.as_deref(), |w| {
                Ok(open(&manifest, &owner, &store, w, &params, &|n| {
                    bar.set_position(n)
                })?)
            })?;
            bar.finish_and_clear();
            let Some(report) = report else {
                return Ok(());
            };
            eprintln!(
                "opened {} at {:.0} MiB/s ({} rebuilt, {} missing, {} rejected)",
                human(report.bytes),
                mib_per_s(report.bytes, t.elapsed().as_secs_f64()),
                count(report.blocks_reconstructed, "block"),
                count(report.shards_missing, "shard"),
                report.shards_corrupt
            );
        }
        Command::Ls {
            net,
            owner,
            limit,
            api,
            key,
        } if *net || owner.is_some() => {
            let owner = match owner {
                Some(a) => node::client::parse_address_arg(a).map_err(anyhow::Error::msg)?,
                None => chain::Address::of(&key_or_home(key.as_deref(), &home)?.public()),
            };
            let v = node::client::ApiClient::new(&api_or_local(api))
                .owned_data(&owner, usize::from(*limit))?;
            print_out(|o| {
                for d in &v.data {
                    writeln!(
                        o,
                        "{}  {:>10}  {}+{}  {:<10}  block {}",
                        d.id,
                        human(d.size),
                        d.k,
                        d.m,
                        d.policy,
                        d.registered_at
                    )?;
                }
                Ok(())
            })?;
            let shown = if v.data.len() < v.total {
                format!("the newest {} of ", v.data.len())
            } else {
                String::new()
            };
            let _ = writeln!(
                std::io::stderr(),
                "{shown}{} registered by {}",
                count(v.total as u64, "data item"),
                owner.to_hex()
            );
        }
        Command::Ls { key: Some(_), .. } => {
            bail!("--key names whose data to list on chain: add --net (or use --owner)")
        }
        Command::Ls { .. } => {
            local_home(&home)?;
            let manifests = ManifestDir::open(home.join("manifests"))?;
            let ids = manifests.ids()?;
            print_out(|o| {
                for id in &ids {
                    match manifests.load(id) {
                        Ok(m) => writeln!(
                            o,
                            "{id}  {:>10}  {:>10}  {}+{}",
                            human(m.length),
                            count(m.blocks.len() as u64, "block"),
                            m.k,
                            m.m
                        )?,
                        Err(e) => writeln!(o, "{id}  damaged: {e}")?,
                    }
                }
                Ok(())
            })?;
            eprintln!("{}", count(ids.len() as u64, "data item"));
        }
        Command::Rm { data_id } => {
            let id = parse_data_id(data_id)?;
            local_home(&home)?;
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
            eprintln!(
                "deleted {}; compaction: {} compacted, {} moved, {} reclaimed",
                count(deleted, "shard"),
                count(c.segments_compacted, "segment"),
                count(c.records_moved, "record"),
                human(c.bytes_reclaimed)
            );
            store.close()?;
        }
        Command::Stats => {
            local_home(&home)?;
            let store = ChunkStore::open(home.join("store"), store_config(&cli))?;
            let s = store.stats();
            print_out(|o| {
                writeln!(o, "backend      {}", store.backend())?;
                writeln!(o, "chunks       {}", s.chunks)?;
                writeln!(o, "live bytes   {}", human(s.live_bytes))?;
                writeln!(o, "disk bytes   {}", human(s.disk_bytes))?;
                writeln!(o, "capacity     {}", human(s.capacity_bytes))?;
                writeln!(o, "segments     {}", s.segments)
            })?;
            store.close()?;
        }
        Command::Demo { size, seal: args } => demo(&cli, *size, &args.params()?)?,
    }
    Ok(())
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
    let mut cleanup = RemoveOnDrop(Some(dir.clone()));
    outln!(
        "cpchain demo: {} sample, {}+{} erasure code, {} blocks, {}",
        human(size),
        params.k,
        params.m,
        human(u64::from(params.block_size)),
        params.algo.name()
    );
    outln!("working in {}", dir.display());
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
    outln!("chunk store backend: {}", store.backend());

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
    outln!(
        "sealed   {} -> {} shards ({} on disk) in {:.2} s: {:.0} MiB/s, durable (group commits: {})",
        human(size),
        stats.chunks,
        human(stats.disk_bytes),
        seal_s,
        mib_per_s(size, seal_s),
        stats.syncs
    );
    outln!("data id  {}", manifest.data_id());

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
    outln!("deleted  {lost} shards ({} of every block's {n})", params.m);

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
    outln!(
        "opened   {} in {:.2} s: {:.0} MiB/s ({} blocks rebuilt from parity, {} shards missing)",
        human(report.bytes),
        open_s,
        mib_per_s(report.bytes, open_s),
        report.blocks_reconstructed,
        report.shards_missing
    );
    if out.1 != size || out.0.finalize() != expect.finalize() {
        cleanup.keep();
        bail!(
            "round trip FAILED: the opened bytes differ from the sample (kept in {})",
            dir.display()
        );
    }
    outln!(
        "verified round trip: {} identical bytes (BLAKE3 {})",
        out.1,
        expect.finalize().to_hex()
    );
    store.close()?;
    cleanup.keep();
    fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(())
}

/// A path removed when dropped (a file, or a directory with all it holds) unless kept:
/// the demo's directory and a get's temporary file go whatever ends their work early (an
/// error, a panic).
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    /// Leaves the path alone: renamed, kept for a look, or removed with its own error check.
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = if p.is_dir() {
                fs::remove_dir_all(p)
            } else {
                fs::remove_file(p)
            };
        }
    }
}

/// A new file system entry made by `create` at `path_for(random)`, a name no one has: a
/// name that exists already is drawn again (up to 16 times), never reused.
fn create_unique<T>(
    path_for: impl Fn(u32) -> PathBuf,
    create: impl Fn(&Path) -> io::Result<T>,
) -> Result<(PathBuf, T)> {
    let mut tried = None;
    for _ in 0..16 {
        let p = path_for(rand::random());
        match create(&p) {
            Ok(t) => return Ok((p, t)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => tried = Some(p),
            Err(e) => return Err(e).with_context(|| format!("creating {}", p.display())),
        }
    }
    bail!(
        "could not create a new name like {}",
        tried.unwrap_or_default().display()
    )
}

/// Output buffer of `get`: smaller than a block's parts (a 1 MiB block at k = 10 has parts
/// of 100 KiB), which `BufWriter` then passes straight through instead of copying them,
/// while small writes (the edges of a ranged get) are still gathered.
const OUT_BUF: usize = 64 << 10;

/// Where `get` writes the plaintext.
type Output = Box<dyn Write + Send>;

/// Runs `get` writing to `out`: standard output for `None` or `-`, else the file (see
/// [`write_output`]). A reader of standard output that went away before the end
/// (`get ID -o - | head -c 100`) ends the get quietly, as [`print_out`] does: `None`.
fn write_to<T>(out: Option<&Path>, get: impl FnOnce(Output) -> Result<T>) -> Result<Option<T>> {
    if let Some(out) = out.filter(|o| o.as_os_str() != "-") {
        return write_output(out, get).map(Some);
    }
    // Only a failed write of the output counts, not (say) a peer's connection.
    let reader_gone = |e: &anyhow::Error| {
        e.chain()
            .any(|c| matches!(c.downcast_ref(), Some(PipelineError::Write(w)) if is_epipe(w)))
    };
    match get(Box::new(BufWriter::with_capacity(OUT_BUF, io::stdout()))) {
        Err(e) if reader_gone(&e) => Ok(None),
        r => r.map(Some),
    }
}

/// Runs `get` writing to `out`. A regular file (or a new one) is written under a temporary
/// name and renamed once `get` succeeds, so a failed get never leaves a partial file that
/// looks complete, nor the plaintext it held: the temporary file is removed whatever ends
/// the get early (an error, a failed rename, a panic). Anything else that exists (a device
/// such as `/dev/null`, a FIFO) is written in place, never replaced.
fn write_output<T>(out: &Path, get: impl FnOnce(Output) -> Result<T>) -> Result<T> {
    let special = fs::metadata(out).is_ok_and(|m| !m.is_file() && !m.is_dir());
    if special {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(out)
            .with_context(|| format!("opening {}", out.display()))?;
        return get(Box::new(BufWriter::with_capacity(OUT_BUF, f)));
    }
    let (tmp, f) = partial_file(out)?;
    let mut partial = RemoveOnDrop(Some(tmp.clone()));
    let r = get(Box::new(BufWriter::with_capacity(OUT_BUF, f)))?;
    fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    partial.keep();
    Ok(r)
}

/// A new temporary file next to `out` (so the rename stays on one file system), named for
/// it and unique: `.NAME.PID-RANDOM.cpchain-partial`. Two gets to `x.1` and `x.2`, or to
/// the same file, never share one, and no file of the user's is ever overwritten by it.
fn partial_file(out: &Path) -> Result<(PathBuf, File)> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    create_unique(
        |r| {
            out.with_file_name(format!(
                ".{name}.{}-{r:08x}.cpchain-partial",
                std::process::id()
            ))
        },
        |p| fs::OpenOptions::new().write(true).create_new(true).open(p),
    )
}

/// A fresh directory for the demo, under the system temp dir.
fn tempfile_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    let (d, ()) = create_unique(
        |r| base.join(format!("cpchain-demo-{r:08x}")),
        |p: &Path| fs::create_dir(p),
    )?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_get_that_fails_midway_leaves_neither_output_nor_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("plain.bin");
        let r: Result<()> = write_output(&out, |mut w| {
            w.write_all(b"half the plaintext")?;
            w.flush()?;
            bail!("block 2 is unrecoverable")
        });
        assert!(r.is_err());
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        // Two outputs that differ only in their extension get two temporary files.
        let (a, _) = partial_file(&dir.path().join("x.1")).unwrap();
        let (b, _) = partial_file(&dir.path().join("x.2")).unwrap();
        assert_ne!(a, b);
        // Success: the output holds every byte and nothing else is left.
        write_output(&out, |mut w| Ok(w.write_all(b"all of it")?)).unwrap();
        fs::remove_file(&a).unwrap();
        fs::remove_file(&b).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"all of it");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_cause_is_left_out_only_when_the_line_already_ends_with_it() {
        let io = io::Error::other("timed out");
        // The message repeats its source at its end: said once.
        let e = anyhow::Error::new(io).context("reading the shard: timed out");
        assert_eq!(one_line(&e), "reading the shard: timed out");
        // A cause the line mentions elsewhere is still said.
        let io = io::Error::other("timed out");
        let e = anyhow::Error::new(io).context("timed out once before; asking again");
        assert_eq!(
            one_line(&e),
            "timed out once before; asking again: timed out"
        );
    }
}
