//! Node configuration (`node.toml`), the network's genesis (`genesis.toml`) and key files.
//!
//! `cpchain init` writes both files with comments; every field has a default so a config
//! may be short. The genesis is shared by every node of a network: the chain id, timing,
//! committees and initial balances.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use chain::{Address, Amount, ChainConfig, Header, CPC};
use crypto_accel::Keypair;
use serde::{Deserialize, Serialize};

/// A node's role in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Member of the validators committee: votes in LBFT 2.0.
    Validator,
    /// Proposer candidate: seals blocks in its turn when elected (or a default proposer).
    Proposer,
    /// Follows the chain and checks VALIDATE certificates.
    Civilian,
    /// Stores shards for the DHT (used by the storage layer).
    Storage,
}

impl Role {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Validator => "validator",
            Role::Proposer => "proposer",
            Role::Civilian => "civilian",
            Role::Storage => "storage",
        }
    }
}

/// `node.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name shown in logs and `/status`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Roles of this node.
    #[serde(default = "default_roles")]
    pub roles: Vec<Role>,
    /// Data directory (chain store, peer key); relative paths are relative to the config
    /// file's directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The node's ed25519 key (hex seed); relative to the config file's directory.
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// The network's genesis file; relative to the config file's directory.
    #[serde(default = "default_genesis_file")]
    pub genesis_file: PathBuf,
    /// Networking.
    #[serde(default)]
    pub network: NetworkConfig,
    /// HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// Mempool and block building.
    #[serde(default)]
    pub mempool: MempoolSection,
    /// The storage role.
    #[serde(default)]
    pub storage: StorageSection,
}

/// `[storage]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    /// Threads answering the shard protocol.
    #[serde(default = "default_storage_workers")]
    pub workers: usize,
    /// Milliseconds between audit rounds of the data this node coordinates.
    #[serde(default = "default_audit_period_ms")]
    pub audit_period_ms: u64,
    /// Deliberate misbehaviour for tests of audits, repair and puts: "none", "delete",
    /// "bit-flip" or "forget-uploads". Never set this on a real node.
    #[serde(default)]
    pub fault: super::storage::Fault,
    /// Serve bulk shard transfers on data connections (see `node::dataplane`); when off,
    /// clients use the libp2p shard protocol alone.
    #[serde(default = "default_true")]
    pub data_plane: bool,
    /// TCP port of the data listener (0 = any free port; clients learn it per session). It
    /// binds the IP of the first `[network] listen` address.
    #[serde(default)]
    pub data_port: u16,
    /// Deposit the RNode minimum from this node's balance once it runs, unless it already
    /// holds it: peers let only staked storage nodes read shards without a grant (the reads
    /// of audits and repair), so an unstaked one cannot repair.
    #[serde(default)]
    pub stake: bool,
    /// Milliseconds a shard this node keeps must have been another node's in the data's map
    /// (and that node must pass an audit for it) before it is deleted; 0 keeps superseded
    /// shards forever. They are left behind by a node that was declared dead and came back
    /// after its shards were rebuilt elsewhere.
    #[serde(default = "default_release_superseded_after_ms")]
    pub release_superseded_after_ms: u64,
}

fn default_release_superseded_after_ms() -> u64 {
    900_000
}

fn default_true() -> bool {
    true
}

fn default_storage_workers() -> usize {
    4
}

fn default_audit_period_ms() -> u64 {
    10_000
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            workers: default_storage_workers(),
            audit_period_ms: default_audit_period_ms(),
            fault: Default::default(),
            data_plane: true,
            data_port: 0,
            stake: false,
            release_superseded_after_ms: default_release_superseded_after_ms(),
        }
    }
}

/// `[network]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Multiaddrs to listen on (TCP and QUIC).
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Peers to dial at start (multiaddrs ending in /p2p/<peer id>).
    #[serde(default)]
    pub bootstrap: Vec<String>,
}

/// `[api]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the HTTP API, explorer and metrics listen on.
    #[serde(default = "default_api_listen")]
    pub listen: String,
}

/// `[mempool]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MempoolSection {
    /// Most pending transactions.
    #[serde(default = "default_max_txs")]
    pub max_txs: usize,
    /// Most pending bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// Most transactions a proposer puts in one block.
    #[serde(default = "default_block_txs")]
    pub max_block_txs: usize,
}

fn default_name() -> String {
    "node".into()
}
fn default_roles() -> Vec<Role> {
    vec![Role::Civilian]
}
fn default_data_dir() -> PathBuf {
    "data".into()
}
fn default_key_file() -> PathBuf {
    "node.key".into()
}
fn default_genesis_file() -> PathBuf {
    "genesis.toml".into()
}
fn default_listen() -> Vec<String> {
    vec![
        "/ip4/127.0.0.1/tcp/0".into(),
        "/ip4/127.0.0.1/udp/0/quic-v1".into(),
    ]
}
fn default_api_listen() -> String {
    "127.0.0.1:8645".into()
}
fn default_max_txs() -> usize {
    200_000
}
fn default_max_bytes() -> usize {
    256 << 20
}
fn default_block_txs() -> usize {
    20_000
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: default_listen(),
            bootstrap: Vec::new(),
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_api_listen(),
        }
    }
}

impl Default for MempoolSection {
    fn default() -> Self {
        MempoolSection {
            max_txs: default_max_txs(),
            max_bytes: default_max_bytes(),
            max_block_txs: default_block_txs(),
        }
    }
}

/// Parses TOML `text` read from `path` (a `what` file), with a one-line error: where in the
/// file and what was wrong (toml's own message draws the line over several).
fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, what: &str, path: &Path) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let at = e.span().map(|s| {
            let before = text.get(..s.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {col}")
        });
        anyhow::anyhow!(
            "parsing {what} {}{}: {}",
            path.display(),
            at.unwrap_or_default(),
            e.message().trim()
        )
    })
}

impl NodeConfig {
    /// Reads and checks a config file; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<NodeConfig> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let mut cfg: NodeConfig = parse_toml(&text, "config", path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.data_dir, &mut cfg.key_file, &mut cfg.genesis_file] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if cfg.roles.is_empty() {
            bail!("config {}: `roles` is empty", path.display());
        }
        if cfg.mempool.max_block_txs == 0 || cfg.mempool.max_block_txs > chain::MAX_BLOCK_TXS {
            bail!(
                "config {}: mempool.max_block_txs must be 1..={}",
                path.display(),
                chain::MAX_BLOCK_TXS
            );
        }
        Ok(cfg)
    }

    /// True when the node has `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// The config as commented TOML (what `cpchain init` writes).
    pub fn to_commented_toml(&self) -> String {
        let roles = self
            .roles
            .iter()
            .map(|r| format!("\"{}\"", r.name()))
            .collect::<Vec<_>>()
            .join(", ");
        let list = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "# cpchain node configuration. Relative paths are relative to this file.\n\
             \n\
             # Shown in logs and GET /status.\n\
             name = \"{name}\"\n\
             # validator: votes in LBFT 2.0 (must be in the genesis validators);\n\
             # proposer: seals blocks in its turn; civilian: follows the chain;\n\
             # storage: stores shards for the DHT.\n\
             roles = [{roles}]\n\
             # Chain store and peer data.\n\
             data_dir = \"{data}\"\n\
             # This node's ed25519 key (hex seed, mode 0600). Its public key is its address\n\
             # and its libp2p peer id.\n\
             key_file = \"{key}\"\n\
             # The network's genesis (identical on every node).\n\
             genesis_file = \"{genesis}\"\n\
             \n\
             [network]\n\
             # TCP and QUIC listen addresses (port 0 = any free port).\n\
             listen = [{listen}]\n\
             # Peers to dial at start: multiaddrs ending in /p2p/<peer id>.\n\
             bootstrap = [{boot}]\n\
             \n\
             [api]\n\
             # HTTP API, explorer page (/), OpenAPI (/openapi.json), metrics (/metrics).\n\
             listen = \"{api}\"\n\
             \n\
             [mempool]\n\
             # Bounds: beyond them submissions get HTTP 503 \"busy\" (backpressure).\n\
             max_txs = {max_txs}\n\
             max_bytes = {max_bytes}\n\
             # Most transactions per block this node proposes.\n\
             max_block_txs = {block_txs}\n\
             \n\
             [storage]\n\
             # Threads answering the shard protocol (storage role).\n\
             workers = {workers}\n\
             # Milliseconds between audit rounds of the data this node coordinates.\n\
             audit_period_ms = {audit}\n\
             # Deliberate misbehaviour for tests only: \"none\", \"delete\", \"bit-flip\",\n\
             # \"forget-uploads\".\n\
             fault = \"{fault}\"\n\
             # Deposit the RNode minimum from this node's balance if it is not staked yet:\n\
             # peers let only staked storage nodes read without a grant (audits, repair).\n\
             stake = {stake}\n\
             # Delete a shard kept here once the data's map has given its slot to another\n\
             # node for this long (ms) and that node passes an audit for it; 0 = never.\n\
             release_superseded_after_ms = {release}\n",
            stake = self.storage.stake,
            release = self.storage.release_superseded_after_ms,
            workers = self.storage.workers,
            audit = self.storage.audit_period_ms,
            fault = match self.storage.fault {
                super::storage::Fault::None => "none",
                super::storage::Fault::Delete => "delete",
                super::storage::Fault::BitFlip => "bit-flip",
                super::storage::Fault::ForgetUploads => "forget-uploads",
            },
            name = self.name,
            data = self.data_dir.display(),
            key = self.key_file.display(),
            genesis = self.genesis_file.display(),
            listen = list(&self.network.listen),
            boot = list(&self.network.bootstrap),
            api = self.api.listen,
            max_txs = self.mempool.max_txs,
            max_bytes = self.mempool.max_bytes,
            block_txs = self.mempool.max_block_txs,
        )
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: default_name(),
            roles: default_roles(),
            data_dir: default_data_dir(),
            key_file: default_key_file(),
            genesis_file: default_genesis_file(),
            network: NetworkConfig::default(),
            api: ApiConfig::default(),
            mempool: MempoolSection::default(),
            storage: StorageSection::default(),
        }
    }
}

/// Largest `view_len` a genesis may set (blocks per seat per term).
pub const GENESIS_MAX_VIEW_LEN: u64 = 1_000_000;
/// Largest block period or impeach timeout a genesis may set: a day, in milliseconds.
pub const GENESIS_MAX_MS: u64 = 24 * 3600 * 1000;
/// Latest genesis timestamp accepted: 3000-01-01, in milliseconds since 1970.
pub const GENESIS_MAX_TIMESTAMP_MS: u64 = 32_503_680_000_000;

/// `genesis.toml`: what every node of one network agrees on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// Chain id (part of every signature's domain).
    pub chain_id: u32,
    /// Genesis timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Block period (ms).
    pub period_ms: u64,
    /// Impeach timeout (ms).
    pub impeach_timeout_ms: u64,
    /// Proposer seats per term.
    pub seats: usize,
    /// Blocks per proposer turn.
    pub view_len: u64,
    /// Validators committee (hex addresses).
    pub validators: Vec<String>,
    /// Default (bootstrap) proposers (hex addresses).
    pub proposers: Vec<String>,
    /// Contract owner (hex address).
    pub contract_owner: String,
    /// Initial balances: address and whole CPC.
    pub balances: Vec<GenesisBalance>,
}

/// One genesis allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisBalance {
    /// Hex address.
    pub address: String,
    /// Whole CPC.
    pub cpc: u64,
}

impl Genesis {
    /// Reads a genesis file.
    pub fn load(path: &Path) -> Result<Genesis> {
        let text = fs::read_to_string(path)
            .with_context(|| format!("reading genesis {}", path.display()))?;
        parse_toml(&text, "genesis", path)
    }

    /// Writes it (atomically) as TOML with a header comment.
    pub fn save(&self, path: &Path) -> Result<()> {
        let body = toml::to_string(self).context("encoding genesis")?;
        let text = format!(
            "# cpchain genesis: identical on every node of the network. Changing any field\n\
             # makes a different chain (stores refuse to open with another genesis).\n{body}"
        );
        write_atomic(path, text.as_bytes(), 0o644)
    }

    fn addr(s: &str, what: &str) -> Result<Address> {
        Address::from_hex(s).with_context(|| format!("genesis: {what} `{s}` is not 64 hex digits"))
    }

    /// The chain parameters.
    pub fn chain_config(&self) -> Result<ChainConfig> {
        let validators = self
            .validators
            .iter()
            .map(|s| Self::addr(s, "validator"))
            .collect::<Result<Vec<_>>>()?;
        let proposers = self
            .proposers
            .iter()
            .map(|s| Self::addr(s, "proposer"))
            .collect::<Result<Vec<_>>>()?;
        if validators.is_empty() || proposers.is_empty() {
            bail!("genesis: needs at least one validator and one proposer");
        }
        if self.period_ms == 0 || self.seats == 0 || self.view_len == 0 {
            bail!("genesis: period_ms, seats and view_len must be positive");
        }
        // Votes count once per address, so a validator listed twice would raise the quorum
        // past what the committee can sign.
        for list in [&validators, &proposers] {
            let mut seen = std::collections::BTreeSet::new();
            if let Some(dup) = list.iter().find(|a| !seen.insert(**a)) {
                bail!("genesis: {} is listed twice", dup.to_hex());
            }
        }
        // A certificate carries at most MAX_VALIDATORS signatures: with more validators no
        // block could ever be final.
        if validators.len() > chain::MAX_VALIDATORS {
            bail!(
                "genesis: {} validators, at most {} are possible",
                validators.len(),
                chain::MAX_VALIDATORS
            );
        }
        // Bounds that keep the chain's time and term arithmetic far from overflow.
        if self.seats > chain::MAX_VALIDATORS {
            bail!(
                "genesis: seats is {}, at most {} are possible",
                self.seats,
                chain::MAX_VALIDATORS
            );
        }
        if self.view_len > GENESIS_MAX_VIEW_LEN {
            bail!(
                "genesis: view_len is {}, at most {GENESIS_MAX_VIEW_LEN}",
                self.view_len
            );
        }
        if self.period_ms > GENESIS_MAX_MS || self.impeach_timeout_ms > GENESIS_MAX_MS {
            bail!("genesis: period_ms and impeach_timeout_ms must be at most {GENESIS_MAX_MS} (a day)");
        }
        if self.timestamp_ms > GENESIS_MAX_TIMESTAMP_MS {
            bail!(
                "genesis: timestamp_ms {} is past the year 3000 (milliseconds since 1970 expected)",
                self.timestamp_ms
            );
        }
        let owner = Self::addr(&self.contract_owner, "contract_owner")?;
        let mut cfg = ChainConfig::mainnet_like(self.chain_id, validators, proposers, owner);
        cfg.period_ms = self.period_ms;
        cfg.impeach_timeout_ms = self.impeach_timeout_ms;
        cfg.seats = self.seats;
        cfg.view_len = self.view_len;
        // Rewards follow the calendar, not the block count: scale the year to the period.
        cfg.blocks_per_year = (365 * 24 * 3600 * 1000 / self.period_ms).max(1);
        Ok(cfg)
    }

    /// Initial balances in base units.
    pub fn balances(&self) -> Result<Vec<(Address, Amount)>> {
        self.balances
            .iter()
            .map(|b| {
                Ok((
                    Self::addr(&b.address, "balance")?,
                    Amount::from(b.cpc) * CPC,
                ))
            })
            .collect()
    }

    /// The genesis header block 1 points to.
    pub fn header(&self, cfg: &ChainConfig) -> Header {
        chain::genesis_header(cfg, self.timestamp_ms)
    }
}

/// Writes `bytes` to `path` through a temporary file and rename, fsynced, with `mode`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))?;
    Ok(())
}

/// Reads a key file (64 hex digits of seed).
pub fn load_key(path: &Path) -> Result<Keypair> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no key file at {}: make one with `cpchain keys new` (or `cpchain init DIR` for a \
             node), or name another with --key",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading key {}", path.display())),
    };
    let mut seed = [0u8; 32];
    // A key file is 64 hex characters; anything else (binary included) is damaged.
    let text = std::str::from_utf8(&bytes).unwrap_or("");
    hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| {
        anyhow::anyhow!(
            "key file {} is damaged (expected 64 hex characters)",
            path.display()
        )
    })?;
    Ok(Keypair::from_seed(seed))
}

/// Writes a key file (mode 0600), refusing to overwrite an existing one.
pub fn save_key(path: &Path, kp: &Keypair) -> Result<()> {
    if path.exists() {
        bail!("a key already exists at {}", path.display());
    }
    write_atomic(
        path,
        format!("{}\n", hex::encode(kp.seed())).as_bytes(),
        0o600,
    )
}

/// `cpchain init DIR`: a new key, a single-node genesis making this node validator and
/// proposer (unless `genesis` names an existing file), and a commented `node.toml`.
pub fn init(
    dir: &Path,
    genesis: Option<&Path>,
    period_ms: u64,
    bootstrap: &[String],
) -> Result<Initialized> {
    let cfg_path = dir.join("node.toml");
    if cfg_path.exists() {
        bail!("{} already exists", cfg_path.display());
    }
    // A joiner's genesis is checked before anything is written, and kept by its absolute
    // path (the config's relative paths are relative to the config, not to where init ran).
    let genesis = match genesis {
        Some(g) => {
            let g = std::fs::canonicalize(g)
                .with_context(|| format!("genesis file {}", g.display()))?;
            Genesis::load(&g)?
                .chain_config()
                .with_context(|| format!("genesis file {}", g.display()))?;
            Some(g)
        }
        None => None,
    };
    for b in bootstrap {
        let a = super::net::bootstrap_addr(b)?;
        if !matches!(a.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
            bail!("bootstrap address `{b}` must end in /p2p/<peer id>");
        }
    }
    let kp = Keypair::generate();
    let addr = Address::of(&kp.public());
    let mut cfg = NodeConfig {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(default_name),
        ..NodeConfig::default()
    };
    cfg.network.bootstrap = bootstrap.to_vec();
    save_key(&dir.join(&cfg.key_file), &kp)?;
    match genesis {
        Some(g) => {
            cfg.genesis_file = g;
            cfg.roles = vec![Role::Civilian];
        }
        None => {
            cfg.roles = vec![Role::Validator, Role::Proposer];
            let g = Genesis {
                chain_id: 7,
                timestamp_ms: now_ms(),
                period_ms,
                impeach_timeout_ms: period_ms.saturating_mul(2).max(1_000),
                seats: 12,
                view_len: 3,
                validators: vec![addr.to_hex()],
                proposers: vec![addr.to_hex()],
                contract_owner: addr.to_hex(),
                balances: vec![GenesisBalance {
                    address: addr.to_hex(),
                    cpc: 1_000_000,
                }],
            };
            g.save(&dir.join(&cfg.genesis_file))?;
        }
    }
    write_atomic(&cfg_path, cfg.to_commented_toml().as_bytes(), 0o644)?;
    Ok(Initialized {
        config: cfg_path,
        address: addr,
    })
}

/// What [`init`] wrote.
#[derive(Debug)]
pub struct Initialized {
    /// The node's config file.
    pub config: PathBuf,
    /// The node's address (its key's public key).
    pub address: Address,
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn init_writes_a_config_that_loads() {
        let dir = tempfile::tempdir().unwrap();
        let p = init(dir.path(), None, 1_000, &[]).unwrap().config;
        let cfg = NodeConfig::load(&p).unwrap();
        assert!(cfg.has(Role::Validator) && cfg.has(Role::Proposer));
        let g = Genesis::load(&cfg.genesis_file).unwrap();
        let cc = g.chain_config().unwrap();
        assert_eq!(cc.validators.len(), 1);
        let kp = load_key(&cfg.key_file).unwrap();
        assert_eq!(cc.validators[0], Address::of(&kp.public()));
        assert!(
            init(dir.path(), None, 1_000, &[]).is_err(),
            "refuses to overwrite"
        );
    }

    #[test]
    fn a_joiner_is_checked_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first");
        let made = init(&first, None, 1_000, &[]).unwrap();
        let genesis = NodeConfig::load(&made.config).unwrap().genesis_file;
        let peer = format!("/ip4/127.0.0.1/tcp/4001/p2p/{}", libp2p::PeerId::random());
        let join = dir.path().join("join");
        let passwd = dir.path().join("passwd");
        std::fs::write(&passwd, "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        let bad: [(&Path, &[String], &str); 4] = [
            (&dir.path().join("none.toml"), &[], "none.toml"),
            (&passwd, &[], "passwd"),
            (&genesis, &["/ip4/127.0.0.1/tcp/4001".to_string()], "/p2p/"),
            (&genesis, &["not an address".to_string()], "not a multiaddr"),
        ];
        for (g, boot, says) in bad {
            let e = format!("{:#}", init(&join, Some(g), 1_000, boot).unwrap_err());
            assert!(e.contains(says), "{says}: {e}");
            assert!(!join.join("node.key").exists(), "{says}: wrote a key");
        }
        let made = init(&join, Some(&genesis), 1_000, std::slice::from_ref(&peer)).unwrap();
        let cfg = NodeConfig::load(&made.config).unwrap();
        assert_eq!(cfg.network.bootstrap, vec![peer]);
        assert_eq!(cfg.roles, vec![Role::Civilian]);
        assert!(cfg.genesis_file.is_absolute());
        let kp = load_key(&cfg.key_file).unwrap();
        assert_eq!(made.address, Address::of(&kp.public()));
    }

    #[test]
    fn a_genesis_with_values_past_the_chains_arithmetic_is_refused_with_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = init(dir.path(), None, 1_000, &[]).unwrap().config;
        let cfg = NodeConfig::load(&p).unwrap();
        let g = Genesis::load(&cfg.genesis_file).unwrap();
        assert!(g.chain_config().is_ok());
        type Spoil = fn(&mut Genesis);
        let cases: [(&str, Spoil); 7] = [
            ("validators", |g| {
                g.validators = (0..=chain::MAX_VALIDATORS)
                    .map(|i| {
                        let seed = [(i % 251) as u8, (i / 251) as u8, 1, 2, 3, 4, 5, 6];
                        let k = crypto_accel::Keypair::from_seed(
                            [seed, [0; 8], [0; 8], [0; 8]].concat().try_into().unwrap(),
                        );
                        chain::Address::of(&k.public()).to_hex()
                    })
                    .collect();
            }),
            ("listed twice", |g| {
                g.validators.push(g.validators[0].clone())
            }),
            ("seats", |g| g.seats = usize::MAX),
            ("view_len", |g| g.view_len = u64::MAX),
            ("period_ms", |g| g.period_ms = u64::MAX),
            ("impeach_timeout_ms", |g| g.impeach_timeout_ms = u64::MAX),
            ("timestamp_ms", |g| g.timestamp_ms = u64::MAX),
        ];
        for (field, spoil) in cases {
            let mut bad = g.clone();
            spoil(&mut bad);
            let e = format!("{:#}", bad.chain_config().unwrap_err());
            assert!(e.contains(field), "{field}: {e}");
        }
    }

    #[test]
    fn bad_configs_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        fs::write(&p, "roles = [\"king\"]\n").unwrap();
        assert!(NodeConfig::load(&p).is_err());
        fs::write(&p, "colour = 1\n").unwrap();
        let e = NodeConfig::load(&p).unwrap_err();
        assert!(format!("{e:#}").contains("colour"), "{e:#}");
        fs::write(&p, "roles = []\n").unwrap();
        assert!(NodeConfig::load(&p).is_err());
    }
}
