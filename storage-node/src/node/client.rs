//! The client side of the node's HTTP API: [`ApiClient`] (blocking, ureq) and the
//! `cpchain status` / `cpchain tx …` commands built on it.
//!
//! Transactions are built and signed locally with the user's key: the client fetches the
//! chain id from `/status` and the sender's pending nonce from `/accounts/{addr}`, signs a
//! [`chain::SignedTx`] and posts the canonical encoding of [`chain::Tx::Signed`] to
//! `POST /txs`.

use std::io::Read;
use std::time::Duration;

use anyhow::Context;
use chain::{AccessPolicy, Address, Amount, IntervalRange, SignedTx, Tx, TxPayload, CPC};
use crypto_accel::{DataId, Encode, Hash, Keypair};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::api::{MAX_BATCH_BODY, MAX_BATCH_TXS};
use super::view::{AccountView, OwnedDataView, StatusView, TxView};

/// Largest response body the client reads, in bytes.
pub const MAX_RESPONSE: u64 = 64 * 1024 * 1024;
/// Default fee of `cpchain tx …`, in CPC.
pub const DEFAULT_FEE: &str = "0.001";
/// [`DEFAULT_FEE`] in base units: the fee of the transactions nodes and clients send on
/// their own (registrations, audit reports, stake deposits).
pub const DEFAULT_FEE_AMOUNT: chain::Amount = chain::CPC / 1000;

/// What went wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No HTTP answer: connection refused, DNS, timeout, ...
    #[error(
        "cannot reach node at {url}: {reason} (is a node running there? `cpchain devnet` \
         starts a local network; --api URL names another node)"
    )]
    Unreachable {
        /// The URL requested.
        url: String,
        /// Transport error.
        reason: String,
    },
    /// The node answered with an error body.
    #[error("{reason} (HTTP {status}, {code})")]
    Server {
        /// HTTP status.
        status: u16,
        /// The body's `error` code.
        code: String,
        /// The body's `reason`.
        reason: String,
    },
    /// The node answered something this client does not understand.
    #[error("unexpected answer from {url}: {reason}")]
    BadResponse {
        /// The URL requested.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
}

/// Result alias of [`ApiClient`] calls.
pub type ClientResult<T> = Result<T, ClientError>;

/// Why one transaction of a batch was refused (`{"error", "reason"}` of its slot).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SubmitError {
    /// Machine-readable code (`malformed`, `invalid`, `duplicate`, `busy`, `bad_hex`, ...).
    pub error: String,
    /// Human-readable reason.
    pub reason: String,
}

/// The JSON error body every failing route answers with.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
    reason: String,
}

/// `{"hash": "..."}`: an accepted submission.
#[derive(Debug, Deserialize)]
struct HashBody {
    hash: String,
}

/// One slot of a batch answer.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BatchSlot {
    Ok(HashBody),
    Err(SubmitError),
}

/// A blocking client of one node's HTTP API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    agent: ureq::Agent,
}

impl ApiClient {
    /// A client of the node at `base` (e.g. `http://127.0.0.1:8545`; `http://` is assumed
    /// when no scheme is given), with a 5 s connect and 120 s overall timeout.
    pub fn new(base: &str) -> Self {
        Self::with_timeout(base, Duration::from_secs(120))
    }

    /// As [`ApiClient::new`] with an overall per-request timeout.
    pub fn with_timeout(base: &str, timeout: Duration) -> Self {
        let base = base.trim().trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout(timeout)
            .build();
        ApiClient { base, agent }
    }

    /// The base URL requests go to.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn read_json<T: DeserializeOwned>(url: &str, resp: ureq::Response) -> ClientResult<T> {
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_RESPONSE)
            .read_to_end(&mut body)
            .map_err(|e| ClientError::BadResponse {
                url: url.to_string(),
                reason: format!("reading the body: {e}"),
            })?;
        serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse {
            url: url.to_string(),
            reason: format!("decoding JSON: {e}"),
        })
    }

    fn answer<T: DeserializeOwned>(
        url: &str,
        r: Result<ureq::Response, ureq::Error>,
    ) -> ClientResult<T> {
        match r {
            Ok(resp) => Self::read_json(url, resp),
            Err(ureq::Error::Status(status, resp)) => {
                match Self::read_json::<ErrorBody>(url, resp) {
                    Ok(b) => Err(ClientError::Server {
                        status,
                        code: b.error,
                        reason: b.reason,
                    }),
                    Err(_) => Err(ClientError::Server {
                        status,
                        code: "http".to_string(),
                        reason: format!("the node answered HTTP {status} for {url}"),
                    }),
                }
            }
            Err(ureq::Error::Transport(t)) => Err(ClientError::Unreachable {
                url: url.to_string(),
                reason: transport_reason(&t),
            }),
        }
    }

    /// `GET path` decoded as JSON.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> ClientResult<T> {
        let url = self.url(path);
        Self::answer(&url, self.agent.get(&url).call())
    }

    /// The node's status.
    pub fn status(&self) -> ClientResult<StatusView> {
        self.get_json("/status")
    }

    /// An account.
    pub fn account(&self, address: &Address) -> ClientResult<AccountView> {
        self.get_json(&format!("/accounts/{}", address.to_hex()))
    }

    /// The data `owner` registered: the total, and the newest `limit` (at most the API's
    /// 200), newest first.
    pub fn owned_data(&self, owner: &Address, limit: usize) -> ClientResult<OwnedDataView> {
        self.get_json(&format!("/accounts/{}/data?limit={limit}", owner.to_hex()))
    }

    /// Submits one canonical-encoded signed transaction; its hash once accepted.
    pub fn submit(&self, tx_bytes: &[u8]) -> ClientResult<Hash> {
        let url = self.url("/txs");
        let r = self
            .agent
            .post(&url)
            .set("Content-Type", "application/octet-stream")
            .send_bytes(tx_bytes);
        let body: HashBody = Self::answer(&url, r)?;
        parse_hash(&url, &body.hash)
    }

    /// Submits many transactions through `POST /txs/batch` (split into requests within the
    /// server's limits); one result per transaction, in order.
    pub fn submit_batch(&self, txs: &[Vec<u8>]) -> ClientResult<Vec<Result<Hash, SubmitError>>> {
        let url = self.url("/txs/batch");
        // Leave room for the JSON framing: quotes and commas per item, and the wrapper.
        let budget = MAX_BATCH_BODY - 1024;
        let mut out = Vec::with_capacity(txs.len());
        let mut start = 0;
        while start < txs.len() {
            let mut end = start;
            let mut bytes = 0usize;
            while end < txs.len() && end - start < MAX_BATCH_TXS {
                let cost = txs[end].len() * 2 + 3;
                if end > start && bytes + cost > budget {
                    break;
                }
                bytes += cost;
                end += 1;
            }
            let hex: Vec<String> = txs[start..end].iter().map(hex::encode).collect();
            let r = self
                .agent
                .post(&url)
                .send_json(serde_json::json!({ "txs": hex }));
            let slots: Vec<BatchSlot> = Self::answer(&url, r)?;
            if slots.len() != end - start {
                return Err(ClientError::BadResponse {
                    url,
                    reason: format!("{} results for {} transactions", slots.len(), end - start),
                });
            }
            for s in slots {
                out.push(match s {
                    BatchSlot::Ok(h) => Ok(parse_hash(&url, &h.hash)?),
                    BatchSlot::Err(e) => Err(e),
                });
            }
            start = end;
        }
        Ok(out)
    }
}

fn parse_hash(url: &str, s: &str) -> ClientResult<Hash> {
    Hash::from_hex(s).map_err(|_| ClientError::BadResponse {
        url: url.to_string(),
        reason: format!("{s:?} is not a hash"),
    })
}

/// What went wrong on the way to the node, without the URL (which ureq's own text starts
/// with, and [`ClientError::Unreachable`] names already).
fn transport_reason(t: &ureq::Transport) -> String {
    let mut reason = t.kind().to_string();
    if let Some(m) = t.message() {
        reason.push_str(": ");
        reason.push_str(m);
    }
    if let Some(src) = std::error::Error::source(t) {
        reason.push_str(": ");
        reason.push_str(&src.to_string());
    }
    reason
}

/// `n` and its noun, singular or plural: `1 block`, `14 blocks`.
pub fn count(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `b` bytes in binary units: `512 B`, `1.5 MiB`, `2.0 GiB`.
pub fn human(b: u64) -> String {
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

/// At most the first 80 characters of `s` (an echo of user input in an error), marked when
/// cut.
pub fn clip(s: &str) -> String {
    let mut c: String = s.chars().take(80).collect();
    if c.len() < s.len() {
        c.push('…');
    }
    c
}

/// [`parse_cpc`] for amounts that move funds, where 0 would only spend a fee.
fn parse_cpc_moved(s: &str) -> Result<Amount, String> {
    match parse_cpc(s)? {
        0 => Err(format!(
            "{:?}: the amount must be more than 0 CPC",
            s.trim()
        )),
        a => Ok(a),
    }
}

/// Parses a CPC amount with up to 18 decimals (`1.5`, `0.001`, `1000`) into base units.
pub fn parse_cpc(s: &str) -> Result<Amount, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a CPC amount (e.g. 1.5)");
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > 18 {
        return Err(format!("{s:?} has more than 18 decimals"));
    }
    let too_big = || format!("{s:?} is too large");
    let int: Amount = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_big())?
    };
    let mut f: Amount = 0;
    for i in 0..18 {
        let d = frac.as_bytes().get(i).map_or(0, |b| Amount::from(b - b'0'));
        f = f * 10 + d;
    }
    int.checked_mul(CPC)
        .and_then(|v| v.checked_add(f))
        .ok_or_else(too_big)
}

pub use chain::format_cpc;

pub fn parse_address_arg(s: &str) -> Result<Address, String> {
    let t = s.trim();
    Address::from_hex(t.strip_prefix("0x").unwrap_or(t))
        .ok_or_else(|| format!("{:?} is not an address (64 hex characters)", clip(s)))
}

fn parse_data_id_arg(s: &str) -> Result<DataId, String> {
    let t = s.trim();
    DataId::from_hex(t.strip_prefix("0x").unwrap_or(t))
        .map_err(|_| format!("{:?} is not a data id (64 hex characters)", clip(s)))
}

fn parse_hash_arg(s: &str) -> Result<Hash, String> {
    let t = s.trim();
    Hash::from_hex(t.strip_prefix("0x").unwrap_or(t))
        .map_err(|_| format!("{s:?} is not a hash (64 hex characters)"))
}

/// Parses `START..END` (end exclusive) into an interval range.
fn parse_intervals(s: &str) -> Result<IntervalRange, String> {
    let bad = || format!("{s:?} is not an interval range START..END");
    let (a, b) = s.trim().split_once("..").ok_or_else(bad)?;
    let r = IntervalRange {
        start: a.trim().parse().map_err(|_| bad())?,
        end: b.trim().parse().map_err(|_| bad())?,
    };
    if !r.is_valid() {
        return Err(format!("{s:?} is empty: START must be below END"));
    }
    Ok(r)
}

/// Access policy argument of `cpchain tx register`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PolicyArg {
    /// Only the owner may read.
    OwnerOnly,
    /// The owner and readers with a live grant.
    Grants,
    /// Anyone.
    Public,
}

impl From<PolicyArg> for AccessPolicy {
    fn from(p: PolicyArg) -> Self {
        match p {
            PolicyArg::OwnerOnly => AccessPolicy::OwnerOnly,
            PolicyArg::Grants => AccessPolicy::GrantBased,
            PolicyArg::Public => AccessPolicy::Public,
        }
    }
}

/// Options every `cpchain tx …` command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct TxOpts {
    /// Fee paid to the block's proposer, in CPC.
    #[arg(long, default_value = DEFAULT_FEE, value_parser = parse_cpc)]
    pub fee: Amount,
    /// Nonce to use instead of the account's pending nonce from the node.
    #[arg(long)]
    pub nonce: Option<u64>,
}

/// `cpchain tx …`: build, sign and submit one transaction.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TxCmd {
    /// Send CPC to an address.
    Transfer {
        /// Recipient address (hex).
        #[arg(value_parser = parse_address_arg)]
        to: Address,
        /// Amount in CPC, e.g. 1.5.
        #[arg(value_parser = parse_cpc_moved)]
        amount: Amount,
        #[command(flatten)]
        opts: TxOpts,
    },
    /// Deposit CPC into the RNode pool (a storage node needs the RNode minimum, 200,000 CPC
    /// by default, before peers let it read shards without a grant for audits and repair).
    RnodeDeposit {
        /// Amount in CPC.
        #[arg(value_parser = parse_cpc_moved)]
        amount: Amount,
        #[command(flatten)]
        opts: TxOpts,
    },
    /// Withdraw CPC from the RNode pool (refused while elected).
    RnodeWithdraw {
        /// Amount in CPC.
        #[arg(value_parser = parse_cpc_moved)]
        amount: Amount,
        #[command(flatten)]
        opts: TxOpts,
    },
    /// Record a data id in the data registry, owned by the sender.
    Register {
        /// Data id (hex).
        #[arg(long, value_parser = parse_data_id_arg)]
        id: DataId,
        /// Merkle root over the shards (hex).
        #[arg(long, value_parser = parse_hash_arg)]
        merkle_root: Hash,
        /// Plaintext size in bytes.
        #[arg(long)]
        size: u64,
        /// Data shards per stripe.
        #[arg(long)]
        k: u16,
        /// Parity shards per stripe.
        #[arg(long)]
        m: u16,
        /// Encryption intervals the data spans, START..END (end exclusive).
        #[arg(long, value_parser = parse_intervals)]
        intervals: IntervalRange,
        /// Who may read it.
        #[arg(long, value_enum, default_value = "grants")]
        policy: PolicyArg,
        #[command(flatten)]
        opts: TxOpts,
    },
    /// Grant a reader access to intervals of owned data until a height.
    Grant {
        /// Data id (hex).
        #[arg(long, value_parser = parse_data_id_arg)]
        id: DataId,
        /// Reader address (hex).
        #[arg(long, value_parser = parse_address_arg)]
        reader: Address,
        /// Intervals granted, START..END (end exclusive).
        #[arg(long, value_parser = parse_intervals)]
        intervals: IntervalRange,
        /// First height at which the grant no longer holds.
        #[arg(long)]
        expiry: u64,
        #[command(flatten)]
        opts: TxOpts,
    },
    /// Revoke a reader's grant.
    Revoke {
        /// Data id (hex).
        #[arg(long, value_parser = parse_data_id_arg)]
        id: DataId,
        /// Reader address (hex).
        #[arg(long, value_parser = parse_address_arg)]
        reader: Address,
        #[command(flatten)]
        opts: TxOpts,
    },
    /// Claim a proposer candidacy (campaign contract), solving the admission proofs over
    /// the node's head block.
    Campaign {
        /// Terms to run for, starting with the next term (1..=10).
        #[arg(long, default_value_t = 1)]
        terms: u64,
        /// Deposit locked until quit, in CPC.
        #[arg(long, default_value = "1000", value_parser = parse_cpc)]
        deposit: Amount,
        /// CPU proof difficulty the chain currently requires (leading zero bits).
        #[arg(long, default_value_t = chain::contracts::admission::DEFAULT_CPU_DIFFICULTY)]
        cpu_difficulty: u8,
        /// Memory proof difficulty the chain currently requires (log2 KiB).
        #[arg(long, default_value_t = chain::contracts::admission::DEFAULT_MEMORY_DIFFICULTY)]
        memory_difficulty: u8,
        #[command(flatten)]
        opts: TxOpts,
    },
}

/// Builds the payload of `cmd` (campaign claims solve their proofs here, seeded by the
/// node's head) and returns it with the command's options.
fn payload(from: &Address, status: &StatusView, cmd: TxCmd) -> anyhow::Result<(TxPayload, TxOpts)> {
    Ok(match cmd {
        TxCmd::Transfer { to, amount, opts } => (TxPayload::Transfer { to, amount }, opts),
        TxCmd::RnodeDeposit { amount, opts } => (TxPayload::RNodeDeposit { amount }, opts),
        TxCmd::RnodeWithdraw { amount, opts } => (TxPayload::RNodeWithdraw { amount }, opts),
        TxCmd::Register {
            id,
            merkle_root,
            size,
            k,
            m,
            intervals,
            policy,
            opts,
        } => (
            TxPayload::RegisterData {
                id,
                merkle_root,
                size,
                k,
                m,
                intervals,
                policy: policy.into(),
            },
            opts,
        ),
        TxCmd::Grant {
            id,
            reader,
            intervals,
            expiry,
            opts,
        } => (
            TxPayload::Grant {
                id,
                reader,
                intervals,
                expiry,
            },
            opts,
        ),
        TxCmd::Revoke { id, reader, opts } => (TxPayload::Revoke { id, reader }, opts),
        TxCmd::Campaign {
            terms,
            deposit,
            cpu_difficulty,
            memory_difficulty,
            opts,
        } => {
            use chain::contracts::admission::{
                solve_cpu, solve_memory, MAX_CPU_DIFFICULTY, MAX_MEMORY_DIFFICULTY,
            };
            anyhow::ensure!(
                cpu_difficulty <= MAX_CPU_DIFFICULTY,
                "CPU difficulty {cpu_difficulty} is above the maximum {MAX_CPU_DIFFICULTY} (no \
                 proof could be found in time); use the admission contract's current value"
            );
            anyhow::ensure!(
                memory_difficulty <= MAX_MEMORY_DIFFICULTY,
                "memory difficulty {memory_difficulty} is above the maximum {MAX_MEMORY_DIFFICULTY}"
            );
            let seed = Hash::from_hex(&status.head_hash).map_err(|_| {
                anyhow::anyhow!("the node's head hash {:?} is not a hash", status.head_hash)
            })?;
            let cpu_nonce = solve_cpu(from, &seed, cpu_difficulty);
            let memory_nonce = solve_memory(from, &seed, memory_difficulty);
            (
                TxPayload::ClaimCampaign {
                    terms,
                    deposit,
                    cpu_nonce,
                    memory_nonce,
                    seed_number: status.height,
                },
                opts,
            )
        }
    })
}

/// Builds and signs the transaction of `cmd` against the node's chain id and the sender's
/// pending nonce; returns it with its canonical bytes.
pub fn build_tx(
    client: &ApiClient,
    key: &Keypair,
    cmd: TxCmd,
) -> anyhow::Result<(SignedTx, Vec<u8>)> {
    let from = Address::of(&key.public());
    let status = client.status()?;
    let (payload, opts) = payload(&from, &status, cmd)?;
    let nonce = match opts.nonce {
        Some(n) => n,
        None => client.account(&from)?.pending_nonce,
    };
    let tx = SignedTx::sign(key, status.chain_id, nonce, opts.fee, payload);
    let bytes = Tx::Signed(tx.clone()).to_bytes();
    Ok((tx, bytes))
}

/// `cpchain tx …`: builds, signs and submits the transaction; prints its hash, then waits
/// up to `wait` for it to be final (says in which block). An error if the node drops it, or
/// if it is not final in time (it may still be included then).
pub fn run_tx(api: &str, key: &Keypair, cmd: TxCmd, wait: Duration) -> anyhow::Result<()> {
    let client = ApiClient::new(api);
    let (tx, bytes) = build_tx(&client, key, cmd)?;
    let hash = client
        .submit(&bytes)
        .context("the node did not accept the transaction")?;
    println!("{}", hash.to_hex());
    tracing::debug!(
        "submitted tx {} from {} nonce {}",
        hash.to_hex(),
        tx.from,
        tx.nonce
    );
    if wait.is_zero() {
        return Ok(());
    }
    let start = std::time::Instant::now();
    loop {
        // What the last poll failed with, if it did.
        let last_error = match client.get_json::<TxView>(&format!("/txs/{}", hash.to_hex())) {
            Ok(TxView { block: Some(b), .. }) => {
                eprintln!("final in block {b}");
                return Ok(());
            }
            Ok(TxView {
                dropped: Some(why), ..
            }) => anyhow::bail!(
                "the transaction will not be included: {why} (the node dropped it and nothing \
                 was spent; its nonce {} is free for the next one)",
                tx.nonce
            ),
            Ok(_) => None,
            Err(ClientError::Server { status: 404, .. }) => anyhow::bail!(
                "the node no longer holds the transaction (pushed out by higher fees, or left \
                 waiting too long behind a missing nonce): send it again"
            ),
            // A busy or restarting node: the transaction may still go through.
            Err(e) => Some(e),
        };
        if start.elapsed() >= wait {
            // An error, so scripts can tell it from "final"; it may still be included.
            if let Some(e) = last_error {
                anyhow::bail!(
                    "not known to be final after {} s: the node stopped answering ({e}); the \
                     transaction may still be included",
                    wait.as_secs()
                );
            }
            let next = client.account(&tx.from).map(|a| a.nonce).ok();
            anyhow::bail!(
                "not final after {} s: still pending{}; it may yet be included (--wait-s to \
                 wait longer, 0 not to wait)",
                wait.as_secs(),
                match next {
                    Some(n) if n < tx.nonce => format!(
                        ", behind nonce {n} of this account, which no block has included yet"
                    ),
                    _ => String::new(),
                }
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `cpchain status`: prints the node's status.
pub fn run_status(api: &str) -> anyhow::Result<()> {
    let client = ApiClient::new(api);
    let s = client.status()?;
    let roles = if s.roles.is_empty() {
        "-".to_string()
    } else {
        s.roles.join(", ")
    };
    print_out(|o| {
        writeln!(o, "node        {} ({roles})", s.name)?;
        writeln!(o, "chain id    {}", s.chain_id)?;
        writeln!(o, "address     {}", s.address)?;
        writeln!(o, "peer id     {}", s.peer_id)?;
        writeln!(
            o,
            "height      {}{}",
            s.height,
            if s.syncing { " (syncing)" } else { "" }
        )?;
        writeln!(o, "head        {}", s.head_hash)?;
        writeln!(o, "term/view   {} / {}", s.term, s.view)?;
        writeln!(
            o,
            "next        {}",
            s.next_proposer.as_deref().unwrap_or("-")
        )?;
        writeln!(o, "lbft        {} round {}", s.phase, s.round)?;
        writeln!(o, "peers       {}", s.peers)?;
        writeln!(o, "mempool     {}", s.mempool)?;
        writeln!(o, "impeached   {}", s.impeachments)?;
        writeln!(o, "period      {} ms", s.period_ms)?;
        if let Some(st) = &s.storage {
            writeln!(
                o,
                "storage     {} shards of {} data items ({} uncommitted); disk {} used, {} free",
                st.shards,
                st.data_items,
                st.pending,
                human(st.disk_used),
                human(st.disk_free)
            )?;
            writeln!(
                o,
                "served      {} shards, {} reads refused; audits answered {}, missing {}; {} superseded shards released",
                st.served, st.refused, st.audits_answered, st.audits_missing, st.shards_released
            )?;
            writeln!(
                o,
                "coordinate  {} data items: audits {} sent, {} passed, {} failed, {} unanswered; {} shards repaired ({})",
                st.coordinated,
                st.audits_sent,
                st.audits_passed,
                st.audits_failed,
                st.audits_unreachable,
                st.shards_repaired,
                human(st.repair_bytes)
            )?;
            writeln!(
                o,
                "damaged     {} now ({} unrecoverable now; {} found unrecoverable since start)",
                count(st.damaged_blocks_now, "block"),
                st.unrecoverable_blocks_now,
                st.unrecoverable_blocks
            )?;
            for f in st.recent_failures.iter().rev().take(5) {
                writeln!(o, "  earlier   {f}")?;
            }
        }
        Ok(())
    })
}

/// Runs `print` on the locked standard output, for what a user may pipe on
/// (`cpchain status | head -1`). A reader that went away (EPIPE) is no error: the rest of
/// the output is dropped quietly and the command goes on, where `println!` would panic.
pub fn print_out(
    print: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match print(&mut out).and_then(|()| std::io::Write::flush(&mut out)) {
        Err(e) if is_epipe(&e) => Ok(()),
        r => r.context("writing to standard output"),
    }
}

/// Whether the reader of our output went away (EPIPE; Rust ignores SIGPIPE, so a write
/// fails instead of killing the process).
pub fn is_epipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cpc_amounts() {
        assert_eq!(parse_cpc("1").unwrap(), CPC);
        assert_eq!(parse_cpc("1.5").unwrap(), CPC + CPC / 2);
        assert_eq!(parse_cpc("0.001").unwrap(), CPC / 1000);
        assert_eq!(parse_cpc(DEFAULT_FEE).unwrap(), DEFAULT_FEE_AMOUNT);
        assert_eq!(parse_cpc(".5").unwrap(), CPC / 2);
        assert_eq!(parse_cpc("2.").unwrap(), 2 * CPC);
        assert_eq!(parse_cpc("0.000000000000000001").unwrap(), 1);
        for bad in [
            "",
            ".",
            "-1",
            "1.2.3",
            "abc",
            "1e3",
            "0.0000000000000000001",
            " 1 2",
        ] {
            assert!(parse_cpc(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_cpc("999999999999999999999999999999999999999").is_err());
        assert_eq!(parse_cpc("0").unwrap(), 0);
        for zero in ["0", "0.0", " .000 "] {
            let e = parse_cpc_moved(zero).unwrap_err();
            assert!(e.contains("more than 0 CPC"), "{zero:?}: {e}");
        }
        assert_eq!(parse_cpc_moved("0.5").unwrap(), CPC / 2);
        assert_eq!(format_cpc(CPC + CPC / 2), "1.5");
        assert_eq!(format_cpc(7 * CPC), "7");
        assert_eq!(format_cpc(1), "0.000000000000000001");
    }

    #[test]
    fn intervals_and_args() {
        assert_eq!(
            parse_intervals("2..5").unwrap(),
            IntervalRange { start: 2, end: 5 }
        );
        assert!(parse_intervals("5..5").is_err());
        assert!(parse_intervals("5").is_err());
        assert!(parse_address_arg(&format!("0x{}", "ab".repeat(32))).is_ok());
        assert!(parse_address_arg("abc").is_err());
    }

    #[test]
    fn base_url_gets_a_scheme() {
        assert_eq!(ApiClient::new("127.0.0.1:1/").base(), "http://127.0.0.1:1");
        assert_eq!(ApiClient::new("https://x").base(), "https://x");
    }

    #[test]
    fn unreachable_node_is_one_clear_line() {
        // Port 1 on loopback refuses connections.
        let err = run_status("127.0.0.1:1").unwrap_err();
        let line = format!("{err:#}");
        assert!(
            line.starts_with("cannot reach node at http://127.0.0.1:1/status:"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    proptest! {
        #[test]
        fn cpc_roundtrip(units in any::<u64>(), whole in 0u64..1_000_000) {
            let a = Amount::from(whole) * CPC + Amount::from(units) % CPC;
            prop_assert_eq!(parse_cpc(&format_cpc(a)).unwrap(), a);
        }
    }
}
