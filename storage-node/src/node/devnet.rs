//! `cpchain devnet`: a local network on loopback, one OS process per node.
//!
//! Writes a genesis, keys and a config per node under the data directory, starts every
//! node as `cpchain node --config …`, waits until blocks are final, prints the API and
//! explorer URLs, and on Ctrl-C stops the nodes (SIGTERM, then SIGKILL after a grace
//! period). `devnet.json` in the data directory lists every node (role, address, ports,
//! pid) for scripts, tests and the load benchmark; `faucet.key` holds a funded key.

use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chain::Address;
use crypto_accel::Keypair;
use serde::{Deserialize, Serialize};

use super::config::{now_ms, save_key, write_atomic, Genesis, GenesisBalance, NodeConfig, Role};
use super::net::peer_id_of;

/// Shape of a devnet.
#[derive(Debug, Clone)]
pub struct DevnetParams {
    /// Validators (3f + 1).
    pub validators: usize,
    /// Proposer candidates (default proposers).
    pub proposers: usize,
    /// Storage nodes (civilians with the storage role).
    pub storage: usize,
    /// Block period (ms).
    pub period_ms: u64,
    /// Impeach timeout (ms).
    pub impeach_timeout_ms: u64,
    /// Where node data goes.
    pub data_dir: PathBuf,
    /// Blocks per proposer turn.
    pub view_len: u64,
    /// Most transactions per block.
    pub max_block_txs: usize,
    /// The `cpchain` binary the nodes run.
    pub binary: PathBuf,
}

/// One node of a devnet, as recorded in `devnet.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevnetNode {
    /// Name (`validator-0`, `proposer-1`, `storage-2`).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Hex address.
    pub address: String,
    /// libp2p peer id.
    pub peer_id: String,
    /// TCP multiaddr with peer id.
    pub multiaddr: String,
    /// HTTP API base URL.
    pub api: String,
    /// Config file.
    pub config: PathBuf,
    /// Process id of the running node (0 when not running).
    pub pid: u32,
}

/// `devnet.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevnetFile {
    /// Nodes.
    pub nodes: Vec<DevnetNode>,
    /// Funded key for clients and benchmarks.
    pub faucet_key: PathBuf,
    /// The `cpchain` binary the nodes run.
    pub binary: PathBuf,
    /// Block period (ms).
    pub period_ms: u64,
}

impl DevnetFile {
    /// Reads `devnet.json` from a devnet data directory.
    pub fn load(data_dir: &Path) -> Result<DevnetFile> {
        let p = data_dir.join("devnet.json");
        let t = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&t).with_context(|| format!("parsing {}", p.display()))
    }
}

/// Starts every node of `file` (recording their pids in it); returns (name, process) pairs
/// for [`stop_all`]. On an error the nodes already started are stopped.
pub fn start_all(file: &mut DevnetFile) -> Result<Vec<(String, Child)>> {
    let mut children = Vec::new();
    for n in file.nodes.iter_mut() {
        match start_node(&file.binary, n) {
            Ok(c) => {
                n.pid = c.id();
                children.push((n.name.clone(), c));
            }
            Err(e) => {
                stop_all(&mut children, Duration::from_secs(3));
                return Err(e);
            }
        }
    }
    Ok(children)
}

/// Where a running devnet (or node) leaves its API URL for clients on this machine.
pub fn local_node_file() -> PathBuf {
    std::env::temp_dir().join("cpchain-local-node")
}

/// The API of the node clients on this machine use by default (like kubo finding its
/// local daemon): the running devnet's, else `http://127.0.0.1:8645`.
pub fn local_node_api() -> String {
    fs::read_to_string(local_node_file())
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| s.starts_with("http"))
        .unwrap_or_else(|| "http://127.0.0.1:8645".to_string())
}

/// Records (or with `None` removes) the local node's API URL.
pub fn set_local_node(api: Option<&str>) {
    let f = local_node_file();
    let r = match api {
        Some(a) => write_atomic(&f, format!("{a}\n").as_bytes(), 0o644),
        None => fs::remove_file(&f).map_err(anyhow::Error::from),
    };
    if let Err(e) = r {
        tracing::debug!("local node file {}: {e}", f.display());
    }
}

/// Picks the devnet's ports. A port found free is only reserved once its node binds it,
/// seconds later; in between, any connection or port-0 listener on the machine (the nodes
/// already started make hundreds) may be handed it by the kernel, and a node then dies with
/// "address in use". So ports come from outside the kernel's ephemeral range, where the
/// kernel never hands out ports on its own, each checked free for TCP and UDP and never
/// given twice; the scan starts at a random place so devnets prepared side by side rarely
/// meet.
struct PortPicker {
    ranges: Vec<(u16, u16)>,
    at: usize,
    given: std::collections::HashSet<u16>,
}

impl PortPicker {
    fn new() -> PortPicker {
        let (lo, hi) = ephemeral_range().unwrap_or((32768, 60999));
        let mut ranges = Vec::new();
        if lo > 10_000 {
            ranges.push((10_000, lo - 1));
        }
        if hi < 65_000 {
            ranges.push((hi + 1, 65_000));
        }
        let mut p = PortPicker {
            ranges,
            at: 0,
            given: Default::default(),
        };
        let span = p.span().max(1) as u64;
        p.at = (rand::RngCore::next_u64(&mut rand::rngs::OsRng) % span) as usize;
        p
    }

    /// How many ports the ranges hold.
    fn span(&self) -> usize {
        self.ranges
            .iter()
            .map(|(a, b)| usize::from(b - a) + 1)
            .sum()
    }

    /// The port at position `i` of the ranges (taken as one sequence).
    fn port_at(&self, mut i: usize) -> Option<u16> {
        for (a, b) in &self.ranges {
            let len = usize::from(b - a) + 1;
            if i < len {
                return Some(a + i as u16);
            }
            i -= len;
        }
        None
    }

    /// A port free for both TCP and UDP on loopback, not given before.
    fn pick(&mut self) -> Result<u16> {
        let span = self.span();
        for _ in 0..span {
            let Some(port) = self.port_at(self.at) else {
                break;
            };
            self.at = (self.at + 1) % span;
            if self.given.contains(&port) {
                continue;
            }
            let free = TcpListener::bind(("127.0.0.1", port)).is_ok()
                && UdpSocket::bind(("127.0.0.1", port)).is_ok();
            if free {
                self.given.insert(port);
                return Ok(port);
            }
        }
        // No room outside the ephemeral range: let the kernel choose (the old way).
        for _ in 0..64 {
            let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            if UdpSocket::bind(("127.0.0.1", port)).is_ok() && self.given.insert(port) {
                return Ok(port);
            }
        }
        bail!("no free port on 127.0.0.1 for the devnet")
    }
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`).
fn ephemeral_range() -> Option<(u16, u16)> {
    let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
    let (lo, hi) = (it.next()??, it.next()??);
    (lo <= hi).then_some((lo, hi))
}

/// Writes genesis, keys and configs for a devnet; returns the node list (pids 0).
pub fn prepare(p: &DevnetParams) -> Result<DevnetFile> {
    if p.validators == 0 || p.proposers == 0 {
        bail!("a devnet needs at least one validator and one proposer");
    }
    if p.data_dir.join("devnet.json").exists() {
        bail!(
            "{} already holds a devnet: remove it or pick another --data-dir",
            p.data_dir.display()
        );
    }
    fs::create_dir_all(&p.data_dir)
        .with_context(|| format!("creating {}", p.data_dir.display()))?;
    let mut specs = Vec::new();
    for i in 0..p.validators {
        specs.push((format!("validator-{i}"), Role::Validator));
    }
    for i in 0..p.proposers {
        specs.push((format!("proposer-{i}"), Role::Proposer));
    }
    for i in 0..p.storage {
        specs.push((format!("storage-{i}"), Role::Storage));
    }
    let keys: Vec<Keypair> = specs.iter().map(|_| Keypair::generate()).collect();
    let faucet = Keypair::generate();
    let addr = |k: &Keypair| Address::of(&k.public());
    let mut balances: Vec<GenesisBalance> = keys
        .iter()
        .map(|k| GenesisBalance {
            address: addr(k).to_hex(),
            cpc: 1_000_000,
        })
        .collect();
    balances.push(GenesisBalance {
        address: addr(&faucet).to_hex(),
        cpc: 1_000_000_000,
    });
    let genesis = Genesis {
        chain_id: 7,
        timestamp_ms: now_ms(),
        period_ms: p.period_ms,
        impeach_timeout_ms: p.impeach_timeout_ms,
        seats: p.proposers,
        view_len: p.view_len,
        validators: specs
            .iter()
            .zip(&keys)
            .filter(|((_, r), _)| *r == Role::Validator)
            .map(|(_, k)| addr(k).to_hex())
            .collect(),
        proposers: specs
            .iter()
            .zip(&keys)
            .filter(|((_, r), _)| *r == Role::Proposer)
            .map(|(_, k)| addr(k).to_hex())
            .collect(),
        contract_owner: addr(&faucet).to_hex(),
        balances,
    };
    let genesis_path = p.data_dir.join("genesis.toml");
    genesis.save(&genesis_path)?;
    let faucet_key = p.data_dir.join("faucet.key");
    save_key(&faucet_key, &faucet)?;
    let mut nodes = Vec::new();
    let mut ports = Vec::new();
    let mut picker = PortPicker::new();
    for ((name, role), k) in specs.iter().zip(&keys) {
        let tcp = picker.pick()?;
        let udp = picker.pick()?;
        let api = picker.pick()?;
        let peer = peer_id_of(&addr(k)).context("deriving a peer id")?;
        ports.push((tcp, udp, api));
        nodes.push(DevnetNode {
            name: name.clone(),
            role: *role,
            address: addr(k).to_hex(),
            peer_id: peer.to_string(),
            multiaddr: format!("/ip4/127.0.0.1/tcp/{tcp}/p2p/{peer}"),
            api: format!("http://127.0.0.1:{api}"),
            config: p.data_dir.join(name).join("node.toml"),
            pid: 0,
        });
    }
    // Everyone dials the committee (validators and proposers); Kademlia finds the rest.
    let bootstrap: Vec<String> = nodes
        .iter()
        .filter(|n| n.role != Role::Storage)
        .map(|n| n.multiaddr.clone())
        .collect();
    for ((n, k), (tcp, udp, api)) in nodes.iter().zip(&keys).zip(&ports) {
        let dir = p.data_dir.join(&n.name);
        fs::create_dir_all(&dir)?;
        save_key(&dir.join("node.key"), k)?;
        let mut roles = vec![n.role];
        if n.role == Role::Storage {
            roles.insert(0, Role::Civilian);
        }
        // Validators store shards too: with 12 storage nodes that makes 16 holders, enough
        // for 10 + 4 shards on distinct nodes even after two nodes die.
        if n.role == Role::Validator {
            roles.push(Role::Storage);
        }
        let mut cfg = NodeConfig {
            name: n.name.clone(),
            roles,
            genesis_file: PathBuf::from("../genesis.toml"),
            ..NodeConfig::default()
        };
        cfg.network.listen = vec![
            format!("/ip4/127.0.0.1/tcp/{tcp}"),
            format!("/ip4/127.0.0.1/udp/{udp}/quic-v1"),
        ];
        cfg.network.bootstrap = bootstrap
            .iter()
            .filter(|b| **b != n.multiaddr)
            .cloned()
            .collect();
        cfg.api.listen = format!("127.0.0.1:{api}");
        // Storage nodes stake from their genesis balance, so peers let them repair.
        cfg.storage.stake = cfg.has(Role::Storage);
        cfg.mempool.max_block_txs = p.max_block_txs;
        write_atomic(&n.config, cfg.to_commented_toml().as_bytes(), 0o644)?;
    }
    let file = DevnetFile {
        nodes,
        faucet_key,
        binary: p.binary.clone(),
        period_ms: p.period_ms,
    };
    save(&p.data_dir, &file)?;
    Ok(file)
}

fn save(dir: &Path, f: &DevnetFile) -> Result<()> {
    let text = serde_json::to_string_pretty(f).context("encoding devnet.json")?;
    write_atomic(&dir.join("devnet.json"), text.as_bytes(), 0o644)
}

/// Starts one node process, logging to `node.log` next to its config.
pub fn start_node(binary: &Path, n: &DevnetNode) -> Result<Child> {
    let dir = n.config.parent().unwrap_or(Path::new("."));
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))
        .with_context(|| format!("opening {}/node.log", dir.display()))?;
    let err = log.try_clone()?;
    Command::new(binary)
        .arg("node")
        .arg("--config")
        .arg(&n.config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", n.name))
}

/// The height a node's API reports, if it answers.
pub fn height_of(api: &str) -> Option<u64> {
    let v: serde_json::Value = ureq::get(&format!("{api}/status"))
        .timeout(Duration::from_secs(2))
        .call()
        .ok()?
        .into_json()
        .ok()?;
    v.get("height")?.as_u64()
}

/// Sends SIGTERM to every child, waits up to `grace`, then SIGKILLs the rest.
pub fn stop_all(children: &mut [(String, Child)], grace: Duration) {
    for (_, c) in children.iter() {
        let _ = send_signal(c.id(), "TERM");
    }
    let start = Instant::now();
    for (name, c) in children.iter_mut() {
        loop {
            match c.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if start.elapsed() >= grace => {
                    eprintln!("{name} did not stop in {grace:?}: killing it");
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Sends `sig` (e.g. "TERM", "KILL", "STOP", "CONT") to `pid` with kill(1): the workspace
/// forbids `unsafe`, which `libc::kill` would need.
pub fn send_signal(pid: u32, sig: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg("-s")
        .arg(sig)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("kill -s {sig} {pid} failed")))
    }
}

/// A node of `file` that some process runs now, with that process's id: a devnet whose own
/// process was killed leaves its nodes running, and a node its operator started again by
/// hand runs outside any devnet process.
fn still_running(file: &DevnetFile) -> Option<(&DevnetNode, u32)> {
    let procs: Vec<(u32, String)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = fs::read(e.path().join("cmdline")).ok()?;
            // Arguments are NUL-separated.
            Some((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")))
        })
        .collect();
    file.nodes.iter().find_map(|n| {
        let config = n.config.to_string_lossy();
        procs
            .iter()
            .find(|(_, c)| c.contains(" node ") && c.contains(&*config))
            .map(|(pid, _)| (n, *pid))
    })
}

/// `cpchain devnet`: prepare (or, when the data directory holds one, resume) a devnet,
/// start it, wait for finality, print URLs, watch the nodes, run until Ctrl-C.
pub fn run(p: DevnetParams) -> Result<()> {
    let resuming = p.data_dir.join("devnet.json").exists();
    let mut file = if resuming {
        let mut f = DevnetFile::load(&p.data_dir)?;
        if let Some((n, pid)) = still_running(&f) {
            bail!(
                "{} of the devnet in {} still runs (pid {pid}): stop it first, or use that devnet",
                n.name,
                p.data_dir.display()
            );
        }
        // The nodes run this binary, which may have been rebuilt since.
        f.binary = p.binary.clone();
        // Paths a devnet made under a relative --data-dir, from wherever it is now.
        for n in f.nodes.iter_mut().filter(|n| n.config.is_relative()) {
            n.config = p.data_dir.join(&n.name).join("node.toml");
        }
        if f.faucet_key.is_relative() {
            f.faucet_key = p.data_dir.join("faucet.key");
        }
        println!(
            "devnet: resuming the {} nodes in {} (its genesis and node configs; the flags \
             that shape a new devnet are ignored)",
            f.nodes.len(),
            p.data_dir.display()
        );
        f
    } else {
        let f = prepare(&p)?;
        println!(
            "devnet: {} validators, {} proposers, {} storage nodes (the validators store \
             shards too: {} holders), {} ms blocks; data in {}",
            p.validators,
            p.proposers,
            p.storage,
            p.storage + p.validators,
            p.period_ms,
            p.data_dir.display()
        );
        f
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = stop.clone();
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async {
                    let mut term = match tokio::signal::unix::signal(
                        tokio::signal::unix::SignalKind::terminate(),
                    ) {
                        Ok(t) => t,
                        Err(_) => return,
                    };
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                });
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let mut children = start_all(&mut file)?;
    save(&p.data_dir, &file)?;
    let first = file
        .nodes
        .first()
        .map(|n| n.api.clone())
        .context("no nodes")?;
    print!("waiting for the first final blocks");
    let start = Instant::now();
    let mut reached = false;
    // A resumed chain answers with its stored height at once: wait for a block past it.
    let mut target = None;
    while start.elapsed() < Duration::from_secs(90)
        && !stop.load(std::sync::atomic::Ordering::SeqCst)
    {
        if let Some(h) = height_of(&first) {
            let t = *target.get_or_insert(if resuming { h + 1 } else { 2 });
            if h >= t {
                reached = true;
                break;
            }
        }
        let exited = children
            .iter_mut()
            .find_map(|(name, c)| match c.try_wait() {
                Ok(Some(st)) => Some((name.clone(), st)),
                _ => None,
            });
        if let Some((name, st)) = exited {
            stop_all(&mut children, Duration::from_secs(3));
            bail!(
                "{name} exited early ({st}); see {}/{name}/node.log",
                p.data_dir.display()
            );
        }
        print!(".");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        std::thread::sleep(Duration::from_millis(500));
    }
    println!();
    if !reached {
        stop_all(&mut children, Duration::from_secs(3));
        bail!(
            "no final block within 90 s; node logs are in {}",
            p.data_dir.display()
        );
    }
    println!(
        "blocks are final (height {}).",
        height_of(&first).unwrap_or(0)
    );
    println!("explorer:  {first}/");
    for n in &file.nodes {
        println!("  {:<12} {}  api {}", n.name, &n.address[..16], n.api);
    }
    println!("metrics:   {first}/metrics   openapi: {first}/openapi.json");
    println!(
        "faucet key: {}   (e.g. cpchain tx --api {first} --key {} transfer <ADDRESS> 10)",
        file.faucet_key.display(),
        file.faucet_key.display()
    );
    println!(
        "data:      cpchain put FILE --key {}   then   cpchain get DATA_ID -o OUT --key {}",
        file.faucet_key.display(),
        file.faucet_key.display()
    );
    set_local_node(Some(&first));
    println!(
        "Ctrl-C stops the network; `cpchain devnet --data-dir {}` starts it again.",
        p.data_dir.display()
    );
    let mut last = Instant::now();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        // A terminal's Ctrl-C reaches the nodes too: their exits then are no news.
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        report_exits(&mut children, &file);
        if last.elapsed() >= Duration::from_secs(10) {
            last = Instant::now();
            if let Some(h) = height_of(&first) {
                println!("height {h}");
            }
        }
    }
    if local_node_api() == first {
        set_local_node(None);
    }
    println!("stopping {} nodes…", children.len());
    stop_all(&mut children, Duration::from_secs(10));
    for n in file.nodes.iter_mut() {
        n.pid = 0;
    }
    save(&p.data_dir, &file)?;
    println!("stopped; data kept in {}", p.data_dir.display());
    Ok(())
}

/// Says which nodes exited since the last call (killed, crashed) and how to start each
/// again, and stops watching them: the network runs on without them.
fn report_exits(children: &mut Vec<(String, Child)>, file: &DevnetFile) {
    children.retain_mut(|(name, c)| match c.try_wait() {
        Ok(None) => true,
        Ok(Some(st)) => {
            let config = file
                .nodes
                .iter()
                .find(|n| n.name == *name)
                .map(|n| n.config.display().to_string())
                .unwrap_or_default();
            println!(
                "{name} exited ({st}); its log is beside {config}; start it again with \
                 `cpchain node --config {config}`"
            );
            false
        }
        Err(_) => false,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devnet_ports_are_distinct_free_and_outside_the_ephemeral_range() {
        let mut p = PortPicker::new();
        let eph = ephemeral_range();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..60 {
            let port = p.pick().unwrap();
            assert!(seen.insert(port), "port {port} given twice");
            if let (Some((lo, hi)), false) = (eph, p.ranges.is_empty()) {
                assert!(!(lo..=hi).contains(&port), "{port} is in {lo}-{hi}");
            }
        }
    }

    #[test]
    fn a_port_someone_holds_is_skipped() {
        let mut p = PortPicker::new();
        // Someone binds the port the scan would check next.
        let next = p.port_at(p.at).unwrap();
        let _held = TcpListener::bind(("127.0.0.1", next));
        assert_ne!(p.pick().unwrap(), next, "a port in use was given out");
    }
}
