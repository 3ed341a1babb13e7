//! The node's HTTP API: JSON views of the chain, transaction submission, Prometheus metrics,
//! an OpenAPI description of itself and the block explorer page.
//!
//! Every handler only reads [`NodeApi`] snapshots or submits transactions through it; the
//! API holds no chain state of its own except the Prometheus registry. Every error is a JSON
//! body `{"error": "<code>", "reason": "<human text>"}`, including unknown routes, wrong
//! methods and bodies over the limits.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::handler::Handler;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::{Json, Router};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use serde_json::{json, Value};

use super::client::clip;
use super::view::{NodeApi, Rejected};

/// Largest body `POST /txs` accepts, in bytes.
pub const MAX_TX_BODY: usize = 64 * 1024;
/// Largest body `POST /txs/batch` accepts, in bytes.
pub const MAX_BATCH_BODY: usize = 32 * 1024 * 1024;
/// Most transactions one `POST /txs/batch` may carry.
pub const MAX_BATCH_TXS: usize = 10_000;
/// Default `limit` of list routes.
pub const DEFAULT_LIMIT: usize = 20;
/// Largest `limit` of list routes.
pub const MAX_LIMIT: usize = 200;
/// Width of the sliding window `cpchain_tps` is computed over.
pub const TPS_WINDOW: Duration = Duration::from_secs(10);
/// Most scrape samples kept for the TPS window (bounds memory under very frequent scrapes).
const MAX_TPS_SAMPLES: usize = 1024;
/// Upper bounds of the commit-latency histogram buckets, in seconds.
const LATENCY_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0];
/// Upper bounds of the signature-batch-size histogram buckets.
const BATCH_BUCKETS: [f64; 10] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0,
];

/// The explorer page, served at `/` and `/explorer`.
const EXPLORER_HTML: &str = include_str!("explorer.html");

/// Content type of the OpenMetrics text exposition `/metrics` answers with.
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An error answered as `{"error": code, "reason": reason}` with an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code, e.g. `not_found`, `bad_hex`, `malformed`.
    pub code: &'static str,
    /// Human-readable reason.
    pub reason: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            reason: reason.into(),
        }
    }

    fn not_found(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", reason)
    }

    fn bad_request(code: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, reason)
    }

    fn internal(what: &str, err: impl std::fmt::Display) -> Self {
        tracing::warn!("api: {what} failed: {err}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what} failed: {err}"),
        )
    }

    fn too_large(reason: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", reason)
    }

    /// The JSON body of this error.
    pub fn body(&self) -> Value {
        json!({ "error": self.code, "reason": self.reason })
    }
}

impl From<Rejected> for ApiError {
    fn from(r: Rejected) -> Self {
        let status = match r {
            Rejected::Malformed(_) | Rejected::Invalid(_) => StatusCode::BAD_REQUEST,
            Rejected::Duplicate => StatusCode::CONFLICT,
            Rejected::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, r.code(), r.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The Prometheus registry and the metrics fed from [`NodeApi::metrics`] on each scrape.
#[derive(Debug)]
struct Metrics {
    registry: Registry,
    height: Gauge,
    committed: Counter,
    tps: Gauge<f64, std::sync::atomic::AtomicU64>,
    latency: Histogram,
    mempool: Gauge,
    peers: Gauge,
    impeachments: Counter,
    rejected: Counter,
    dropped: Counter,
    verify_batch: Histogram,
    /// The storage role's metrics, in [`STORAGE_METRICS`] order (absent on nodes without
    /// the role: stay 0).
    storage: Vec<StorageMetric>,
    scrape: Mutex<ScrapeState>,
}

/// One storage metric: a level, or a total that only grows (named `…_total`).
#[derive(Debug)]
enum StorageMetric {
    Gauge(Gauge),
    Counter(Counter),
}

/// Whether a storage metric is a level (a Prometheus gauge) or a total since the node
/// started (a counter, named `…_total`, so `rate()` works on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Level,
    Total,
}

/// A storage metric: name suffix, help, kind, and how to read it from the view.
type StorageRead = (
    &'static str,
    &'static str,
    Kind,
    fn(&super::storage::StorageView) -> u64,
);

const STORAGE_METRICS: &[StorageRead] = &[
    ("shards", "Confirmed shards held", Kind::Level, |v| v.shards),
    (
        "pending_shards",
        "Uncommitted shards held",
        Kind::Level,
        |v| v.pending,
    ),
    (
        "data_items",
        "Data items with shards here",
        Kind::Level,
        |v| v.data_items,
    ),
    (
        "disk_used_bytes",
        "Bytes of the shard store's segment files",
        Kind::Level,
        |v| v.disk_used,
    ),
    (
        "disk_free_bytes",
        "Free bytes on the shard store's file system",
        Kind::Level,
        |v| v.disk_free,
    ),
    (
        "shards_served",
        "Shards served to readers and repairers",
        Kind::Total,
        |v| v.served,
    ),
    (
        "reads_refused",
        "Shard reads refused (no right on chain, bad signature)",
        Kind::Total,
        |v| v.refused,
    ),
    (
        "audits_answered",
        "Audit challenges answered with a proof",
        Kind::Total,
        |v| v.audits_answered,
    ),
    (
        "audits_missing",
        "Audit challenges for shards not held",
        Kind::Total,
        |v| v.audits_missing,
    ),
    (
        "coordinated_data_items",
        "Data items this node audits and repairs",
        Kind::Level,
        |v| v.coordinated,
    ),
    (
        "audits_sent",
        "Audits sent as coordinator",
        Kind::Total,
        |v| v.audits_sent,
    ),
    (
        "audits_passed",
        "Audits sent that passed",
        Kind::Total,
        |v| v.audits_passed,
    ),
    (
        "audits_failed",
        "Audits sent that failed (missing, bad proof, refused)",
        Kind::Total,
        |v| v.audits_failed,
    ),
    (
        "shards_released",
        "Superseded shards deleted (their slot went to another node)",
        Kind::Total,
        |v| v.shards_released,
    ),
    (
        "audits_unreachable",
        "Audits sent that were not answered",
        Kind::Total,
        |v| v.audits_unreachable,
    ),
    (
        "shards_repaired",
        "Shards rebuilt and placed on other nodes",
        Kind::Total,
        |v| v.shards_repaired,
    ),
    (
        "repair_bytes",
        "Bytes fetched and stored by repair",
        Kind::Total,
        |v| v.repair_bytes,
    ),
    (
        "unrecoverable_blocks",
        "Times a block was found with fewer than k live shards",
        Kind::Total,
        |v| v.unrecoverable_blocks,
    ),
    (
        "damaged_blocks",
        "Coordinated blocks with lost shards now",
        Kind::Level,
        |v| v.damaged_blocks_now,
    ),
    (
        "unrecoverable_blocks_now",
        "Coordinated blocks with fewer than k live shards now",
        Kind::Level,
        |v| v.unrecoverable_blocks_now,
    ),
];

/// What the previous scrapes saw: engine totals (counters advance by the difference) and
/// the (time, committed) samples of the TPS window.
#[derive(Debug, Default)]
struct ScrapeState {
    committed: u64,
    impeachments: u64,
    rejected: u64,
    dropped: u64,
    window: VecDeque<(Instant, u64)>,
    /// The storage counters' totals, in [`STORAGE_METRICS`] order (0 for gauges).
    storage: Vec<u64>,
}

/// Moves `counter` on by what the engine's `total` gained since the previous scrape saw
/// `seen`.
fn advance(counter: &Counter, total: u64, seen: &mut u64) {
    counter.inc_by(total.saturating_sub(*seen));
    *seen = total;
}

fn gauge_value<T: TryInto<i64>>(v: T) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            height: Gauge::default(),
            committed: Counter::default(),
            tps: Gauge::default(),
            latency: Histogram::new(LATENCY_BUCKETS),
            mempool: Gauge::default(),
            peers: Gauge::default(),
            impeachments: Counter::default(),
            rejected: Counter::default(),
            dropped: Counter::default(),
            verify_batch: Histogram::new(BATCH_BUCKETS),
            storage: STORAGE_METRICS
                .iter()
                .map(|(_, _, kind, _)| match kind {
                    Kind::Total => StorageMetric::Counter(Counter::default()),
                    Kind::Level => StorageMetric::Gauge(Gauge::default()),
                })
                .collect(),
            scrape: Mutex::new(ScrapeState::default()),
            registry: Registry::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "cpchain_height",
            "Number of the last final block",
            m.height.clone(),
        );
        registry.register(
            "cpchain_committed_txs",
            "Transactions committed since the node started",
            m.committed.clone(),
        );
        registry.register(
            "cpchain_tps",
            "Committed transactions per second over the last 10 s (or the last scrape interval if longer)",
            m.tps.clone(),
        );
        registry.register(
            "cpchain_commit_latency_seconds",
            "Proposal timestamp to local finality, per block",
            m.latency.clone(),
        );
        registry.register(
            "cpchain_mempool_txs",
            "Transactions waiting in the mempool",
            m.mempool.clone(),
        );
        registry.register("cpchain_peers", "Connected peers", m.peers.clone());
        registry.register(
            "cpchain_impeachments",
            "Impeach blocks since the node started",
            m.impeachments.clone(),
        );
        registry.register(
            "cpchain_rejected_txs",
            "Transactions rejected at submission since the node started",
            m.rejected.clone(),
        );
        registry.register(
            "cpchain_dropped_txs",
            "Transactions the mempool dropped after admitting them, because they could no longer apply",
            m.dropped.clone(),
        );
        registry.register(
            "cpchain_verify_batch_size",
            "Signatures per verified batch",
            m.verify_batch.clone(),
        );
        for ((name, help, _, _), metric) in STORAGE_METRICS.iter().zip(&m.storage) {
            let name = format!("cpchain_storage_{name}");
            match metric {
                StorageMetric::Gauge(g) => registry.register(name, *help, g.clone()),
                StorageMetric::Counter(c) => registry.register(name, *help, c.clone()),
            }
        }
        Metrics { registry, ..m }
    }

    /// Reads a snapshot from the engine into the metrics and encodes the registry.
    fn scrape(&self, api: &dyn NodeApi, now: Instant) -> Result<String, std::fmt::Error> {
        let view = api.metrics();
        // A poisoned lock only means an earlier scrape panicked mid-update; the totals
        // are still usable.
        let mut st = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.height.set(gauge_value(view.height));
        self.mempool.set(gauge_value(view.mempool));
        self.peers.set(gauge_value(view.peers));
        advance(&self.committed, view.committed_txs, &mut st.committed);
        advance(&self.impeachments, view.impeachments, &mut st.impeachments);
        advance(&self.rejected, view.rejected_txs, &mut st.rejected);
        advance(&self.dropped, view.dropped_txs, &mut st.dropped);
        for s in &view.commit_latencies_s {
            if s.is_finite() && *s >= 0.0 {
                self.latency.observe(*s);
            }
        }
        for n in &view.verify_batch_sizes {
            self.verify_batch.observe(*n as f64);
        }
        self.tps.set(tps(&mut st.window, now, view.committed_txs));
        if let Some(sv) = &view.storage {
            st.storage.resize(STORAGE_METRICS.len(), 0);
            for (((_, _, _, read), metric), seen) in STORAGE_METRICS
                .iter()
                .zip(&self.storage)
                .zip(st.storage.iter_mut())
            {
                let v = read(sv);
                match metric {
                    StorageMetric::Gauge(g) => {
                        g.set(gauge_value(v));
                    }
                    StorageMetric::Counter(c) => advance(c, v, seen),
                }
            }
        }
        drop(st);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Pushes a (time, committed) sample and returns the commit rate over the window: from the
/// newest sample at least [`TPS_WINDOW`] old (or the oldest kept) to `now`.
fn tps(window: &mut VecDeque<(Instant, u64)>, now: Instant, committed: u64) -> f64 {
    window.push_back((now, committed));
    while window.len() > MAX_TPS_SAMPLES {
        window.pop_front();
    }
    while window.len() > 2
        && window
            .get(1)
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= TPS_WINDOW)
    {
        window.pop_front();
    }
    match window.front() {
        Some((t0, c0)) => {
            let dt = now.saturating_duration_since(*t0).as_secs_f64();
            if dt > 0.0 {
                committed.saturating_sub(*c0) as f64 / dt
            } else {
                0.0
            }
        }
        None => 0.0,
    }
}

/// The router's state: the node and the metrics registry.
#[derive(Clone)]
struct AppState {
    api: Arc<dyn NodeApi>,
    metrics: Arc<Metrics>,
}

/// The router under construction with the (method, path) of every route added, so the
/// OpenAPI document can be checked against what is really served.
struct Routes {
    router: Router<AppState>,
    table: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn get<H, T>(mut self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.table.push(("get", path));
        self.router = self.router.route(path, axum::routing::get(handler));
        self
    }

    fn post<H, T>(mut self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.table.push(("post", path));
        self.router = self.router.route(path, axum::routing::post(handler));
        self
    }
}

fn routes() -> Routes {
    Routes {
        router: Router::new(),
        table: Vec::new(),
    }
    .get("/", explorer)
    .get("/explorer", explorer)
    .get("/openapi.json", openapi_json)
    .get("/metrics", metrics)
    .get("/status", status)
    .get("/accounts/{address}", account)
    .get("/accounts/{address}/data", owned_data)
    .get("/blocks", recent_blocks)
    .get("/blocks/{number}", block)
    .get("/txs", recent_txs)
    .post("/txs", submit)
    .post("/txs/batch", submit_batch)
    .get("/txs/{hash}", tx)
    .get("/data/{id}", data)
    .get("/data/{id}/grants/{reader}", grant)
    .get("/storage/held/{id}", held)
    .get("/candidates", candidates)
    .get("/rnodes", rnodes)
    .get("/rpt/{address}", rpt)
    .get("/committee", committee)
    .get("/impeachments", impeachments)
}

/// Every route the router serves, as (lowercase method, axum path) pairs.
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    routes().table
}

/// The API router over `api`, with its own Prometheus registry.
pub fn router(api: Arc<dyn NodeApi>) -> Router {
    let state = AppState {
        api,
        metrics: Arc::new(Metrics::new()),
    };
    routes()
        .router
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes (then finishes in-flight
/// requests and returns).
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<dyn NodeApi>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!("api: listening on http://{addr}");
    }
    axum::serve(listener, router(api))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {}", uri.path()))
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn explorer() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Html(EXPLORER_HTML))
}

async fn openapi_json() -> Json<Value> {
    Json(openapi())
}

async fn metrics(State(st): State<AppState>) -> ApiResult<Response> {
    let m = st.metrics.clone();
    let api = st.api.clone();
    // The engine's snapshot may take a lock; keep it off the async workers.
    let text = tokio::task::spawn_blocking(move || m.scrape(api.as_ref(), Instant::now()))
        .await
        .map_err(|e| ApiError::internal("metrics scrape", e))?
        .map_err(|e| ApiError::internal("metrics encoding", e))?;
    Ok(([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response())
}

async fn status(State(st): State<AppState>) -> Response {
    Json(st.api.status()).into_response()
}

/// The `limit` query parameter of list routes.
#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

fn limit(q: Result<Query<LimitQuery>, QueryRejection>) -> ApiResult<usize> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("bad_limit", e.body_text()))?;
    match q.limit {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "bad_limit",
            format!("limit must be between 1 and {MAX_LIMIT}, got {n}"),
        )),
    }
}

fn path_param<T>(p: Result<Path<T>, PathRejection>) -> ApiResult<T> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::bad_request("bad_path", e.body_text()))
}

fn strip_0x(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix("0x").unwrap_or(s)
}

fn parse_address(s: &str) -> ApiResult<chain::Address> {
    chain::Address::from_hex(strip_0x(s)).ok_or_else(|| {
        ApiError::bad_request(
            "bad_hex",
            format!("address must be 64 hex characters, got {:?}", clip(s)),
        )
    })
}

fn parse_hash(s: &str) -> ApiResult<crypto_accel::Hash> {
    crypto_accel::Hash::from_hex(strip_0x(s)).map_err(|_| {
        ApiError::bad_request(
            "bad_hex",
            format!("hash must be 64 hex characters, got {:?}", clip(s)),
        )
    })
}

fn parse_data_id(s: &str) -> ApiResult<crypto_accel::DataId> {
    crypto_accel::DataId::from_hex(strip_0x(s)).map_err(|_| {
        ApiError::bad_request(
            "bad_hex",
            format!("data id must be 64 hex characters, got {:?}", clip(s)),
        )
    })
}

async fn account(
    State(st): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let addr = parse_address(&path_param(p)?)?;
    Ok(Json(st.api.account(&addr)).into_response())
}

async fn owned_data(
    State(st): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let addr = parse_address(&path_param(p)?)?;
    let n = limit(q)?;
    Ok(Json(st.api.owned_data(&addr, n)).into_response())
}

async fn recent_blocks(
    State(st): State<AppState>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let n = limit(q)?;
    let blocks = st
        .api
        .recent_blocks(n)
        .map_err(|e| ApiError::internal("reading recent blocks", e))?;
    Ok(Json(blocks).into_response())
}

async fn block(
    State(st): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let raw = path_param(p)?;
    let number: u64 = raw.trim().parse().map_err(|_| {
        ApiError::bad_request(
            "bad_number",
            format!(
                "block number must be a decimal integer, got {:?}",
                clip(&raw)
            ),
        )
    })?;
    match st
        .api
        .block(number)
        .map_err(|e| ApiError::internal("reading a block", e))?
    {
        Some(b) => Ok(Json(b).into_response()),
        None => Err(ApiError::not_found(format!("no final block {number}"))),
    }
}

async fn recent_txs(
    State(st): State<AppState>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let n = limit(q)?;
    let txs = st
        .api
        .recent_txs(n)
        .map_err(|e| ApiError::internal("reading recent transactions", e))?;
    Ok(Json(txs).into_response())
}

async fn tx(
    State(st): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let hash = parse_hash(&path_param(p)?)?;
    match st
        .api
        .tx(&hash)
        .map_err(|e| ApiError::internal("reading a transaction", e))?
    {
        Some(t) => Ok(Json(t).into_response()),
        None => Err(ApiError::not_found(format!(
            "no transaction {}",
            hash.to_hex()
        ))),
    }
}

async fn data(
    State(st): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let id = parse_data_id(&path_param(p)?)?;
    match st.api.data(&id) {
        Some(d) => Ok(Json(d).into_response()),
        None => Err(ApiError::not_found(format!("no data {}", id.to_hex()))),
    }
}

async fn held(
    State(st): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let id = parse_data_id(&path_param(p)?)?;
    match st.api.held(&id) {
        Some(v) => {
            Ok(Json(serde_json::json!({ "data": id.to_hex(), "shards": v })).into_response())
        }
        None => Err(ApiError::not_found("this node has no storage role")),
    }
}

async fn grant(
    State(st): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Response> {
    let (id, reader) = path_param(p)?;
    let id = parse_data_id(&id)?;
    let reader = parse_address(&reader)?;
    match st.api.grant(&id, &reader) {
        Some(g) => Ok(Json(g).into_response()),
        None => Err(ApiError::not_found(format!(
            "no grant of data {} to {}",
            id.to_hex(),
            reader.to_hex()
        ))),
    }
}

async fn candidates(State(st): State<AppState>) -> Response {
    Json(st.api.candidates()).into_response()
}

async fn rnodes(State(st): State<AppState>) -> Response {
    Json(st.api.rnodes()).into_response()
}

async fn rpt(
    State(st): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let addr = parse_address(&path_param(p)?)?;
    Ok(Json(st.api.rpt(&addr)).into_response())
}

async fn committee(State(st): State<AppState>) -> Response {
    Json(st.api.committee()).into_response()
}

async fn impeachments(
    State(st): State<AppState>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let n = limit(q)?;
    Ok(Json(st.api.impeachments(n)).into_response())
}

/// Bytes of an over-limit body read and discarded before answering 413, so that a client
/// still writing its body reads the answer instead of a reset connection. Larger bodies
/// are cut off by closing the connection.
const MAX_DRAIN: usize = 1024 * 1024;

/// Reads the whole body, refusing more than `max` bytes with 413.
async fn read_body(headers: &HeaderMap, body: Body, max: usize) -> ApiResult<Vec<u8>> {
    let too_large = || ApiError::too_large(format!("request body is larger than {max} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > (max + MAX_DRAIN) as u64) {
        return Err(too_large());
    }
    let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(max).min(max));
    let mut buf = Vec::with_capacity(capacity);
    let mut seen = 0usize;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("bad_body", format!("reading the request body: {e}"))
        })?;
        seen = seen.saturating_add(chunk.len());
        if seen <= max {
            buf.extend_from_slice(&chunk);
        } else if seen > max + MAX_DRAIN {
            break;
        }
    }
    if seen > max {
        return Err(too_large());
    }
    Ok(buf)
}

/// What kind of body a submission carries, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Raw,
    Json,
}

fn body_kind(headers: &HeaderMap) -> ApiResult<BodyKind> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyKind::Raw);
    };
    let ct = ct.to_str().unwrap_or("");
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/octet-stream" => Ok(BodyKind::Raw),
        "application/json" => Ok(BodyKind::Json),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "content type {:?} is not application/octet-stream or application/json",
                clip(ct)
            ),
        )),
    }
}

/// JSON body of `POST /txs`.
#[derive(Debug, Deserialize)]
struct SubmitJson {
    tx: String,
}

/// JSON body of `POST /txs/batch`.
#[derive(Debug, Deserialize)]
struct BatchJson {
    txs: BoundedTxs,
}

/// The `txs` of a batch: at most [`MAX_BATCH_TXS`] strings kept, the rest only counted, so
/// a body of millions of empty strings (`"",` is 3 bytes, a `String` 24) costs no more
/// memory than a full batch.
#[derive(Debug)]
struct BoundedTxs {
    kept: Vec<String>,
    total: usize,
}

impl<'de> Deserialize<'de> for BoundedTxs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = BoundedTxs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of hex strings")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<BoundedTxs, A::Error> {
                let mut kept = Vec::new();
                let mut total = 0;
                while total < MAX_BATCH_TXS {
                    match seq.next_element::<String>()? {
                        Some(t) => kept.push(t),
                        None => return Ok(BoundedTxs { kept, total }),
                    }
                    total += 1;
                }
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    total += 1;
                }
                Ok(BoundedTxs { kept, total })
            }
        }
        d.deserialize_seq(Visit)
    }
}

fn decode_tx_hex(s: &str) -> ApiResult<Vec<u8>> {
    let s = strip_0x(s);
    if s.len() > MAX_TX_BODY * 2 {
        return Err(ApiError::too_large(format!(
            "transaction is larger than {MAX_TX_BODY} bytes"
        )));
    }
    hex::decode(s).map_err(|e| ApiError::bad_request("bad_hex", format!("transaction hex: {e}")))
}

fn bad_json(e: serde_json::Error) -> ApiError {
    ApiError::bad_request("bad_json", format!("request body: {e}"))
}

async fn submit(State(st): State<AppState>, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let kind = body_kind(&headers)?;
    let bytes = read_body(&headers, body, MAX_TX_BODY).await?;
    let tx = match kind {
        BodyKind::Raw => bytes,
        BodyKind::Json => {
            let j: SubmitJson = serde_json::from_slice(&bytes).map_err(bad_json)?;
            decode_tx_hex(&j.tx)?
        }
    };
    let api = st.api.clone();
    let hash = tokio::task::spawn_blocking(move || api.submit(&tx))
        .await
        .map_err(|e| ApiError::internal("submission", e))??;
    Ok((StatusCode::ACCEPTED, Json(json!({ "hash": hash.to_hex() }))).into_response())
}

async fn submit_batch(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    if body_kind(&headers)? != BodyKind::Json && headers.contains_key(header::CONTENT_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a batch is a JSON body {\"txs\": [\"<hex>\", ...]}",
        ));
    }
    let bytes = read_body(&headers, body, MAX_BATCH_BODY).await?;
    let batch: BatchJson = serde_json::from_slice(&bytes).map_err(bad_json)?;
    drop(bytes);
    if batch.txs.total > MAX_BATCH_TXS {
        return Err(ApiError::too_large(format!(
            "batch holds {} transactions; at most {MAX_BATCH_TXS}",
            batch.txs.total
        )));
    }
    let api = st.api.clone();
    let results = tokio::task::spawn_blocking(move || {
        // Decode every hex string, then submit the good ones in ONE call (one mempool
        // batch, one signature batch, one gossip message), keeping the order.
        let decoded: Vec<Result<Vec<u8>, ApiError>> =
            batch.txs.kept.iter().map(|h| decode_tx_hex(h)).collect();
        let good: Vec<Vec<u8>> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok().cloned())
            .collect();
        let mut submitted = api.submit_many(good).into_iter();
        decoded
            .into_iter()
            .map(|d| {
                let r = d.and_then(|_| {
                    submitted
                        .next()
                        .unwrap_or(Err(Rejected::Busy("no answer".into())))
                        .map_err(ApiError::from)
                });
                match r {
                    Ok(hash) => json!({ "hash": hash.to_hex() }),
                    Err(e) => e.body(),
                }
            })
            .collect::<Vec<Value>>()
    })
    .await
    .map_err(|e| ApiError::internal("batch submission", e))?;
    Ok(Json(results).into_response())
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": schema } }
    })
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn array_of(name: &str) -> Value {
    json!({ "type": "array", "items": schema_ref(name) })
}

fn hex_param(name: &str, what: &str) -> Value {
    json!({
        "name": name, "in": "path", "required": true,
        "description": format!("{what}: 64 hex characters (an optional 0x prefix is accepted)"),
        "schema": { "type": "string", "pattern": "^(0x)?[0-9a-fA-F]{64}$" }
    })
}

fn limit_param() -> Value {
    json!({
        "name": "limit", "in": "query", "required": false,
        "description": format!("How many items, newest first (default {DEFAULT_LIMIT})"),
        "schema": { "type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT }
    })
}

/// A GET operation answering `schema` with 200, plus the error responses every route has.
fn get_op(summary: &str, params: Vec<Value>, ok: Value, not_found: bool) -> Value {
    let mut responses = json!({
        "200": ok,
        "400": error_response("Bad parameter (bad_hex, bad_limit, bad_number, bad_path)"),
        "500": error_response("Internal error"),
    });
    if not_found {
        responses["404"] = error_response("No such item (not_found)");
    }
    json!({ "summary": summary, "parameters": params, "responses": responses })
}

fn str_prop(description: &str) -> Value {
    json!({ "type": "string", "description": description })
}

fn int_prop(description: &str) -> Value {
    json!({ "type": "integer", "minimum": 0, "description": description })
}

fn object(props: Value) -> Value {
    let required: Vec<Value> = props
        .as_object()
        .map(|m| m.keys().map(|k| Value::String(k.clone())).collect())
        .unwrap_or_default();
    json!({ "type": "object", "required": required, "properties": props })
}

fn nullable(mut v: Value) -> Value {
    v["nullable"] = Value::Bool(true);
    v
}

fn schemas() -> Value {
    let hexs = |d: &str| json!({ "type": "string", "pattern": "^[0-9a-f]{64}$", "description": d });
    let amount = |d: &str| json!({ "type": "string", "pattern": "^[0-9]+$", "description": format!("{d} in base units (1 CPC = 10^18), decimal string") });
    json!({
        "Error": object(json!({
            "error": str_prop("Machine-readable code, e.g. not_found, bad_hex, malformed, invalid, duplicate, busy"),
            "reason": str_prop("Human-readable reason"),
        })),
        "Status": object(json!({
            "name": str_prop("Node name"),
            "roles": { "type": "array", "items": { "type": "string" }, "description": "validator, proposer, civilian, storage" },
            "chain_id": int_prop("Chain id"),
            "address": hexs("Address of the node's key"),
            "peer_id": str_prop("libp2p peer id"),
            "height": int_prop("Number of the last final block"),
            "head_hash": hexs("Hash of the last final block"),
            "head_timestamp_ms": int_prop("Timestamp of the last final block (ms since the Unix epoch)"),
            "term": int_prop("Current term"),
            "view": int_prop("View within the term"),
            "next_proposer": nullable(hexs("Proposer scheduled for the next height")),
            "phase": str_prop("LBFT phase of the height being decided"),
            "round": int_prop("LBFT round of the height being decided"),
            "peers": int_prop("Connected peers"),
            "mempool": int_prop("Transactions waiting in the mempool"),
            "impeachments": int_prop("Impeach blocks seen since genesis"),
            "period_ms": int_prop("Block period (ms)"),
            "syncing": { "type": "boolean", "description": "True while catching up with peers" },
        })),
        "Account": object(json!({
            "address": hexs("Address"),
            "balance": amount("Spendable balance"),
            "nonce": int_prop("Next nonce the chain expects"),
            "pending_nonce": int_prop("Next nonce counting this node's mempool"),
            "rnode_deposit": amount("RNode deposit"),
            "rnode": { "type": "boolean", "description": "True when the deposit makes the account an RNode" },
            "economy_deposit": amount("Economy pool deposit"),
        })),
        "Tx": object(json!({
            "hash": hexs("Transaction hash"),
            "kind": { "type": "string", "enum": ["signed", "penalty"] },
            "from": nullable(hexs("Sender (signed transactions)")),
            "nonce": nullable(int_prop("Nonce (signed transactions)")),
            "fee": nullable(amount("Fee")),
            "call": str_prop("Payload kind, e.g. transfer, register_data, grant"),
            "summary": str_prop("Human-readable payload summary"),
            "block": nullable(int_prop("Block that includes it, once final")),
            "dropped": nullable(str_prop("Why the node dropped it from its pool unincluded \
                (it could no longer apply, so no block will include it)")),
        })),
        "Block": object(json!({
            "number": int_prop("Height"),
            "hash": hexs("Block hash"),
            "parent": hexs("Parent hash"),
            "timestamp_ms": int_prop("Timestamp (ms since the Unix epoch)"),
            "term": int_prop("Term"),
            "proposer": hexs("Proposer (for an impeach block: the impeached proposer)"),
            "kind": { "type": "string", "enum": ["normal", "impeach"] },
            "state_root": hexs("Pre-state root"),
            "tx_root": hexs("Transactions root"),
            "tx_count": int_prop("Number of transactions"),
            "signers": { "type": "array", "items": hexs("Validator"), "description": "Validators whose signatures are in the certificate" },
            "txs": { "type": "array", "items": schema_ref("Tx"), "description": "Transactions (only in GET /blocks/{number})" },
        })),
        "Data": object(json!({
            "id": hexs("Data id"),
            "owner": hexs("Owner"),
            "coordinators": { "type": "array", "items": hexs("RNode"), "description": "RNodes that may coordinate the data and publish its DHT record, XOR-closest first" },
            "merkle_root": hexs("Merkle root over the shards"),
            "size": int_prop("Plaintext size in bytes"),
            "k": int_prop("Data shards"),
            "m": int_prop("Parity shards"),
            "intervals_start": int_prop("First encryption interval"),
            "intervals_end": int_prop("End of the encryption intervals (exclusive)"),
            "policy": str_prop("Access policy, e.g. owner-only, grants"),
            "registered_at": int_prop("Height of the block that registered it"),
        })),
        "OwnedData": object(json!({
            "owner": hexs("Owner"),
            "total": int_prop("Data items the owner registered in all"),
            "data": { "type": "array", "items": schema_ref("Data"), "description": "The newest of them, newest first, at most limit" },
        })),
        "Grant": object(json!({
            "data": hexs("Data id"),
            "reader": hexs("Reader"),
            "intervals_start": int_prop("First interval granted"),
            "intervals_end": int_prop("End of the granted intervals (exclusive)"),
            "expiry": int_prop("First height at which the grant no longer holds"),
            "granted_at": int_prop("Height it was granted at"),
            "revoked_at": nullable(int_prop("Height it was revoked at")),
        })),
        "Candidate": object(json!({
            "address": hexs("Address"),
            "deposit": amount("Campaign deposit"),
            "start_term": int_prop("First term of candidacy"),
            "end_term": int_prop("End term (exclusive)"),
            "rpt": int_prop("RPT in hundredths"),
        })),
        "RNode": object(json!({
            "address": hexs("Address"),
            "deposit": amount("RNode pool deposit"),
            "rpt": int_prop("RPT in hundredths"),
            "candidate": { "type": "boolean", "description": "A proposer candidate for the next term" },
        })),
        "Rpt": object(json!({
            "address": hexs("Address"),
            "total": int_prop("Weighted total in hundredths"),
            "ab": int_prop("Account balance score"),
            "tx": int_prop("Transactions score"),
            "pr": int_prop("Proxy reputation score"),
            "dc": int_prop("Data contribution score"),
            "bm": int_prop("Blockchain maintenance score"),
        })),
        "Committee": object(json!({
            "term": int_prop("Current term"),
            "view": int_prop("View within the term"),
            "view_len": int_prop("Blocks per view"),
            "proposers": { "type": "array", "items": hexs("Proposer"), "description": "Proposers committee, in turn order" },
            "validators": { "type": "array", "items": hexs("Validator"), "description": "Validators committee" },
            "next_proposer": nullable(hexs("Proposer scheduled for the next height")),
        })),
        "Impeachment": object(json!({
            "number": int_prop("Height of the impeach block"),
            "proposer": hexs("The impeached proposer"),
            "timestamp_ms": int_prop("Timestamp (ms)"),
        })),
        "Submitted": object(json!({ "hash": hexs("Hash of the accepted transaction") })),
        "SubmitJson": object(json!({ "tx": str_prop("Canonical signed transaction bytes, hex") })),
        "BatchJson": object(json!({
            "txs": {
                "type": "array", "maxItems": MAX_BATCH_TXS,
                "items": str_prop("Canonical signed transaction bytes, hex"),
            },
        })),
        "BatchResult": {
            "oneOf": [schema_ref("Submitted"), schema_ref("Error")],
            "description": "Per transaction: its hash when accepted, else why not",
        },
    })
}

/// The OpenAPI 3.0 document describing every route of [`router`].
pub fn openapi() -> Value {
    let submit_errors = |ok: Value| {
        json!({
            "202": ok,
            "400": error_response("Malformed or invalid transaction, bad hex or JSON, or an unreadable body"),
            "409": error_response("Duplicate transaction"),
            "413": error_response(&format!("Body larger than {MAX_TX_BODY} bytes")),
            "415": error_response("Unsupported content type"),
            "503": error_response("Mempool full; retry later (busy)"),
            "500": error_response("Internal error"),
        })
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "cpchain node API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Read the CPChain main chain through one node and submit signed transactions. \
                Every error is {\"error\": code, \"reason\": text}; hashes, addresses and ids are lowercase hex.",
        },
        "paths": {
            "/": { "get": {
                "summary": "Block explorer page",
                "responses": { "200": { "description": "HTML page", "content": { "text/html": { "schema": { "type": "string" } } } } }
            }},
            "/explorer": { "get": {
                "summary": "Block explorer page (same as /)",
                "responses": { "200": { "description": "HTML page", "content": { "text/html": { "schema": { "type": "string" } } } } }
            }},
            "/openapi.json": { "get": {
                "summary": "This document",
                "responses": { "200": json_response("OpenAPI 3.0 document", json!({ "type": "object" })) }
            }},
            "/metrics": { "get": {
                "summary": "Prometheus / OpenMetrics text exposition",
                "responses": {
                    "200": { "description": "cpchain_height, cpchain_committed_txs_total, cpchain_tps, cpchain_commit_latency_seconds, cpchain_mempool_txs, cpchain_peers, cpchain_impeachments_total, cpchain_rejected_txs_total, cpchain_dropped_txs_total, cpchain_verify_batch_size, cpchain_storage_* (storage nodes)",
                             "content": { "application/openmetrics-text": { "schema": { "type": "string" } } } },
                    "500": error_response("Internal error"),
                }
            }},
            "/status": { "get": get_op("The node's status", vec![], json_response("Status", schema_ref("Status")), false) },
            "/accounts/{address}": { "get": get_op(
                "An account (a never-seen address is an empty account)",
                vec![hex_param("address", "Account address")],
                json_response("Account", schema_ref("Account")), false) },
            "/accounts/{address}/data": { "get": get_op(
                "The data an address registered (its uploads), newest first",
                vec![hex_param("address", "Owner address"), limit_param()],
                json_response("Owned data", schema_ref("OwnedData")), false) },
            "/blocks": { "get": get_op(
                "Newest final blocks, newest first, without transaction lists",
                vec![limit_param()],
                json_response("Blocks", array_of("Block")), false) },
            "/blocks/{number}": { "get": get_op(
                "A final block with its transactions",
                vec![json!({ "name": "number", "in": "path", "required": true, "description": "Block height",
                             "schema": { "type": "integer", "minimum": 0 } })],
                json_response("Block", schema_ref("Block")), true) },
            "/txs": {
                "get": get_op(
                    "Newest final transactions, newest first",
                    vec![limit_param()],
                    json_response("Transactions", array_of("Tx")), false),
                "post": {
                    "summary": "Submit one signed transaction",
                    "requestBody": {
                        "required": true,
                        "description": format!("Canonical signed transaction bytes (at most {MAX_TX_BODY} bytes of body)"),
                        "content": {
                            "application/octet-stream": { "schema": { "type": "string", "format": "binary" } },
                            "application/json": { "schema": schema_ref("SubmitJson") },
                        }
                    },
                    "responses": submit_errors(json_response("Accepted into the mempool", schema_ref("Submitted"))),
                },
            },
            "/txs/batch": { "post": {
                "summary": "Submit many signed transactions (load generation)",
                "requestBody": {
                    "required": true,
                    "description": format!("At most {MAX_BATCH_TXS} transactions and {MAX_BATCH_BODY} bytes"),
                    "content": { "application/json": { "schema": schema_ref("BatchJson") } },
                },
                "responses": {
                    "200": json_response("One result per transaction, in order", array_of("BatchResult")),
                    "400": error_response("Body is not a batch (bad_json) or could not be read (bad_body)"),
                    "413": error_response("Too many transactions or body too large"),
                    "415": error_response("Unsupported content type"),
                    "500": error_response("Internal error"),
                }
            }},
            "/txs/{hash}": { "get": get_op(
                "A transaction: final (with its block) or pending (block null)",
                vec![hex_param("hash", "Transaction hash")],
                json_response("Transaction", schema_ref("Tx")), true) },
            "/data/{id}": { "get": get_op(
                "A data registry entry",
                vec![hex_param("id", "Data id")],
                json_response("Data", schema_ref("Data")), true) },
            "/data/{id}/grants/{reader}": { "get": get_op(
                "The grant of a data id to a reader",
                vec![hex_param("id", "Data id"), hex_param("reader", "Reader address")],
                json_response("Grant", schema_ref("Grant")), true) },
            "/storage/held/{id}": { "get": get_op(
                "The shards of a data id this storage node holds, as [block, index] pairs",
                vec![hex_param("id", "Data id")],
                json_response("Held shards", serde_json::json!({
                    "type": "object",
                    "properties": {
                        "data": { "type": "string" },
                        "shards": { "type": "array", "items": {
                            "type": "array", "items": { "type": "integer" } } }
                    }
                })), true) },
            "/candidates": { "get": get_op(
                "Current proposer candidates (RNodes) with their RPT",
                vec![], json_response("Candidates", array_of("Candidate")), false) },
            "/rnodes": { "get": get_op(
                "RNodes (holders of the RNode deposit: they store, audit, repair and may \
                 campaign) with their RPT, largest deposit first, at most 256",
                vec![], json_response("RNodes", array_of("RNode")), false) },
            "/rpt/{address}": { "get": get_op(
                "RPT of an address with its five components",
                vec![hex_param("address", "Address")],
                json_response("RPT", schema_ref("Rpt")), false) },
            "/committee": { "get": get_op(
                "Committees, term and view",
                vec![], json_response("Committee", schema_ref("Committee")), false) },
            "/impeachments": { "get": get_op(
                "Impeach blocks, newest first",
                vec![limit_param()],
                json_response("Impeachments", array_of("Impeachment")), false) },
        },
        "components": { "schemas": schemas() },
    })
}

#[cfg(test)]
mod tests;
