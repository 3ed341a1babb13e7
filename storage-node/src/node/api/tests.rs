//! The API against a fake node: a real server on 127.0.0.1:0 driven with ureq.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chain::{Address, SignedTx, Tx, TxPayload, CPC};
use crypto_accel::{DataId, Decode, Encode, Hash, Keypair, MessageKind, SigDomain};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;
use crate::node::client::{self, ApiClient, TxCmd, TxOpts};
use crate::node::view::*;

const CHAIN_ID: u32 = 42;
const HEIGHT: u64 = 30;
/// Reading this block fails inside the node (an internal error).
const BROKEN_BLOCK: u64 = 13;
/// A block that is an impeach block.
const IMPEACH_BLOCK: u64 = 10;
const PENDING_NONCE: u64 = 7;

fn data_id() -> DataId {
    DataId::from_bytes([1; 32])
}
fn reader() -> Address {
    Address([2; 32])
}
fn known_tx() -> Hash {
    Hash([3; 32])
}
fn account_addr() -> Address {
    Address([4; 32])
}

/// A node with a fixed little chain that records what is submitted to it.
#[derive(Default)]
struct FakeNode {
    submitted: Mutex<Vec<SignedTx>>,
    scrapes: AtomicU64,
}

fn block_view(n: u64) -> BlockView {
    BlockView {
        number: n,
        hash: Hash([n as u8; 32]).to_hex(),
        parent: Hash([n.saturating_sub(1) as u8; 32]).to_hex(),
        timestamp_ms: 1_700_000_000_000 + n * 1000,
        term: n / 12,
        proposer: Address([9; 32]).to_hex(),
        kind: if n == IMPEACH_BLOCK {
            "impeach"
        } else {
            "normal"
        }
        .into(),
        state_root: Hash::ZERO.to_hex(),
        tx_root: Hash::ZERO.to_hex(),
        tx_count: (n % 5) as usize,
        signers: vec![Address([9; 32]).to_hex()],
        txs: vec![],
    }
}

fn tx_view() -> TxView {
    TxView {
        hash: known_tx().to_hex(),
        kind: "signed".into(),
        from: Some(account_addr().to_hex()),
        nonce: Some(3),
        fee: Some("1000".into()),
        call: "transfer".into(),
        summary: "1 CPC to <script>alert(1)</script>".into(),
        block: Some(HEIGHT),
        dropped: None,
    }
}

impl NodeApi for FakeNode {
    fn status(&self) -> StatusView {
        StatusView {
            name: "fake".into(),
            roles: vec!["validator".into()],
            chain_id: CHAIN_ID,
            address: Address([9; 32]).to_hex(),
            peer_id: "12D3KooWfake".into(),
            height: HEIGHT,
            head_hash: Hash([HEIGHT as u8; 32]).to_hex(),
            head_timestamp_ms: 1_700_000_030_000,
            term: 2,
            view: 1,
            next_proposer: Some(Address([9; 32]).to_hex()),
            phase: "prepare".into(),
            round: 0,
            peers: 3,
            mempool: 5,
            impeachments: 1,
            period_ms: 1000,
            syncing: false,
            listen: vec!["/ip4/127.0.0.1/tcp/1/p2p/12D3KooWfake".into()],
            storage: None,
        }
    }
    fn account(&self, address: &Address) -> AccountView {
        AccountView {
            address: address.to_hex(),
            balance: (5 * CPC).to_string(),
            nonce: 6,
            pending_nonce: PENDING_NONCE,
            rnode_deposit: "0".into(),
            rnode: false,
            economy_deposit: "0".into(),
        }
    }
    fn block(&self, number: u64) -> anyhow::Result<Option<BlockView>> {
        if number == BROKEN_BLOCK {
            anyhow::bail!("disk on fire");
        }
        Ok((number <= HEIGHT).then(|| {
            let mut b = block_view(number);
            b.txs = vec![tx_view()];
            b
        }))
    }
    fn recent_blocks(&self, limit: usize) -> anyhow::Result<Vec<BlockView>> {
        Ok((0..=HEIGHT).rev().take(limit).map(block_view).collect())
    }
    fn tx(&self, hash: &Hash) -> anyhow::Result<Option<TxView>> {
        // What was submitted is final at once, except revocations, which it drops, and
        // transfers of 7 CPC, which stay pending.
        let sent = self.submitted.lock().unwrap().iter().find_map(|t| {
            let signed = Tx::Signed(t.clone());
            (signed.hash() == *hash).then(|| match t.payload {
                TxPayload::Revoke { .. } => TxView {
                    dropped: Some("no such grant".into()),
                    block: None,
                    ..tx_view()
                },
                TxPayload::Transfer { amount, .. } if amount == 7 * CPC => TxView {
                    block: None,
                    ..tx_view()
                },
                _ => tx_view(),
            })
        });
        Ok(sent.or_else(|| (*hash == known_tx()).then(tx_view)))
    }
    fn recent_txs(&self, limit: usize) -> anyhow::Result<Vec<TxView>> {
        Ok(vec![tx_view(); limit.min(3)])
    }
    fn data(&self, id: &DataId) -> Option<DataView> {
        (*id == data_id()).then(|| DataView {
            id: id.to_hex(),
            owner: account_addr().to_hex(),
            coordinators: vec![account_addr().to_hex()],
            merkle_root: Hash::ZERO.to_hex(),
            size: 1 << 20,
            k: 4,
            m: 2,
            intervals_start: 0,
            intervals_end: 4,
            policy: "grants".into(),
            registered_at: 21,
        })
    }
    fn owned_data(&self, owner: &Address, limit: usize) -> OwnedDataView {
        let mine = *owner == account_addr();
        OwnedDataView {
            owner: owner.to_hex(),
            total: usize::from(mine),
            data: self
                .data(&data_id())
                .filter(|_| mine)
                .into_iter()
                .take(limit)
                .collect(),
        }
    }
    fn grant(&self, id: &DataId, r: &Address) -> Option<GrantView> {
        (*id == data_id() && *r == reader()).then(|| GrantView {
            data: id.to_hex(),
            reader: r.to_hex(),
            intervals_start: 0,
            intervals_end: 2,
            expiry: 100,
            granted_at: 20,
            revoked_at: None,
        })
    }
    fn candidates(&self) -> Vec<CandidateView> {
        vec![CandidateView {
            address: Address([9; 32]).to_hex(),
            deposit: (1000 * CPC).to_string(),
            start_term: 1,
            end_term: 3,
            rpt: 4250,
        }]
    }
    fn rnodes(&self) -> Vec<RNodeView> {
        vec![RNodeView {
            address: Address([9; 32]).to_hex(),
            deposit: (200_000 * CPC).to_string(),
            rpt: 4250,
            candidate: true,
        }]
    }
    fn rpt(&self, address: &Address) -> RptView {
        RptView {
            address: address.to_hex(),
            total: 100,
            ..RptView::default()
        }
    }
    fn committee(&self) -> CommitteeView {
        CommitteeView {
            term: 2,
            view: 1,
            view_len: 3,
            proposers: vec![Address([9; 32]).to_hex()],
            validators: vec![Address([9; 32]).to_hex(), Address([8; 32]).to_hex()],
            next_proposer: Some(Address([9; 32]).to_hex()),
        }
    }
    fn impeachments(&self, limit: usize) -> Vec<ImpeachView> {
        vec![ImpeachView {
            number: IMPEACH_BLOCK,
            proposer: Address([9; 32]).to_hex(),
            timestamp_ms: 1_700_000_010_000,
        }]
        .into_iter()
        .take(limit)
        .collect()
    }
    /// Nonce 999 is a duplicate, 1000 finds the mempool full, fee 0 is invalid.
    fn submit(&self, tx_bytes: &[u8]) -> Result<Hash, Rejected> {
        let tx = Tx::from_bytes(tx_bytes).map_err(|e| Rejected::Malformed(e.to_string()))?;
        let hash = tx.hash();
        let Tx::Signed(s) = tx else {
            return Err(Rejected::Invalid("penalties are not submitted".into()));
        };
        match (s.nonce, s.fee) {
            (999, _) => Err(Rejected::Duplicate),
            (1000, _) => Err(Rejected::Busy("64 of 64 slots".into())),
            (_, 0) => Err(Rejected::Invalid("fee below the minimum".into())),
            _ => {
                self.submitted.lock().unwrap().push(s);
                Ok(hash)
            }
        }
    }
    fn held(&self, data: &DataId) -> Option<Vec<(u64, u8)>> {
        (*data == data_id()).then(|| vec![(0, 3), (1, 3)])
    }
    fn metrics(&self) -> MetricsView {
        let n = self.scrapes.fetch_add(1, Ordering::SeqCst) + 1;
        MetricsView {
            height: HEIGHT,
            committed_txs: 100 * n,
            mempool: 5,
            peers: 3,
            impeachments: 1,
            rejected_txs: 2 * n,
            dropped_txs: n,
            commit_latencies_s: vec![0.3, 1.2, f64::NAN],
            verify_batch_sizes: vec![64],
            storage: Some(crate::node::storage::StorageView {
                shards: 1400,
                audits_failed: 3,
                ..Default::default()
            }),
        }
    }
}

/// A served API on a background runtime, shut down on drop.
struct Server {
    rt: tokio::runtime::Runtime,
    base: String,
    node: Arc<FakeNode>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start() -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let node = Arc::new(FakeNode::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let api: Arc<dyn NodeApi> = node.clone();
        let task = rt.spawn(serve(listener, api, async {
            let _ = rx.await;
        }));
        Server {
            rt,
            base,
            node,
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn get(&self, path: &str) -> (u16, String) {
        send(agent().get(&self.url(path)), None)
    }

    fn post(&self, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
        send(
            agent()
                .post(&self.url(path))
                .set("Content-Type", content_type),
            Some(body),
        )
    }

    fn get_json(&self, path: &str) -> Value {
        let (code, body) = self.get(path);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build()
}

fn send(req: ureq::Request, body: Option<&[u8]>) -> (u16, String) {
    let r = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    match r {
        Ok(resp) => (resp.status(), resp.into_string().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap()),
        Err(e) => panic!("transport error: {e}"),
    }
}

/// Asserts `body` is `{"error": code, "reason": non-empty}` and returns the code.
fn error_code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"));
    assert_eq!(obj.len(), 2, "{body}");
    let reason = obj["reason"].as_str().unwrap();
    assert!(!reason.is_empty());
    obj["error"].as_str().unwrap().to_string()
}

fn expect_error(got: (u16, String), status: u16, code: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(error_code(&got.1), code, "{}", got.1);
}

fn signed_bytes(nonce: u64, fee: u128) -> Vec<u8> {
    let kp = Keypair::from_seed([5; 32]);
    let tx = SignedTx::sign(
        &kp,
        CHAIN_ID,
        nonce,
        fee,
        TxPayload::Transfer {
            to: reader(),
            amount: CPC,
        },
    );
    Tx::Signed(tx).to_bytes()
}

/// A concrete path for a route template, using ids the fake node knows.
fn concrete(path: &str) -> String {
    path.replace("{address}", &account_addr().to_hex())
        .replace("{number}", "1")
        .replace("{hash}", &known_tx().to_hex())
        .replace("{id}", &data_id().to_hex())
        .replace("{reader}", &reader().to_hex())
}

#[test]
fn every_get_route_answers() {
    let s = Server::start();
    for (method, path) in route_table() {
        if method != "get" {
            continue;
        }
        let (code, body) = s.get(&concrete(path));
        assert_eq!(code, 200, "GET {path}: {body}");
        if !matches!(path, "/" | "/explorer" | "/metrics") {
            let _: Value = serde_json::from_str(&body).unwrap();
        }
    }
}

#[test]
fn views_are_the_nodes() {
    let s = Server::start();
    let node = FakeNode::default();
    let status: StatusView = serde_json::from_value(s.get_json("/status")).unwrap();
    assert_eq!(status, node.status());
    let addr = account_addr();
    let acc: AccountView =
        serde_json::from_value(s.get_json(&format!("/accounts/0x{}", addr.to_hex()))).unwrap();
    assert_eq!(acc, node.account(&addr));
    let b: BlockView = serde_json::from_value(s.get_json("/blocks/5")).unwrap();
    assert_eq!(b, node.block(5).unwrap().unwrap());
    let bs: Vec<BlockView> = serde_json::from_value(s.get_json("/blocks")).unwrap();
    assert_eq!(bs.len(), DEFAULT_LIMIT);
    assert_eq!(bs[0].number, HEIGHT);
    let bs: Vec<BlockView> = serde_json::from_value(s.get_json("/blocks?limit=200")).unwrap();
    assert_eq!(bs.len(), HEIGHT as usize + 1);
    let bs: Vec<BlockView> = serde_json::from_value(s.get_json("/blocks?limit=3")).unwrap();
    assert_eq!(bs.len(), 3);
    let t: TxView =
        serde_json::from_value(s.get_json(&format!("/txs/{}", known_tx().to_hex()))).unwrap();
    assert_eq!(t, tx_view());
    let ts: Vec<TxView> = serde_json::from_value(s.get_json("/txs?limit=2")).unwrap();
    assert_eq!(ts.len(), 2);
    let d: DataView =
        serde_json::from_value(s.get_json(&format!("/data/{}", data_id().to_hex()))).unwrap();
    assert_eq!(Some(d), node.data(&data_id()));
    let o: OwnedDataView =
        serde_json::from_value(s.get_json(&format!("/accounts/{}/data", addr.to_hex()))).unwrap();
    assert_eq!(o, node.owned_data(&addr, DEFAULT_LIMIT));
    assert_eq!((o.total, o.data[0].registered_at), (1, 21));
    let o: OwnedDataView =
        serde_json::from_value(s.get_json(&format!("/accounts/{}/data", reader().to_hex())))
            .unwrap();
    assert_eq!((o.total, o.data.len()), (0, 0));
    let g: GrantView = serde_json::from_value(s.get_json(&format!(
        "/data/{}/grants/{}",
        data_id().to_hex(),
        reader().to_hex()
    )))
    .unwrap();
    assert_eq!(Some(g), node.grant(&data_id(), &reader()));
    let c: Vec<CandidateView> = serde_json::from_value(s.get_json("/candidates")).unwrap();
    assert_eq!(c, node.candidates());
    let rn: Vec<RNodeView> = serde_json::from_value(s.get_json("/rnodes")).unwrap();
    assert_eq!(rn, node.rnodes());
    let r: RptView =
        serde_json::from_value(s.get_json(&format!("/rpt/{}", addr.to_hex()))).unwrap();
    assert_eq!(r, node.rpt(&addr));
    let cm: CommitteeView = serde_json::from_value(s.get_json("/committee")).unwrap();
    assert_eq!(cm, node.committee());
    let im: Vec<ImpeachView> = serde_json::from_value(s.get_json("/impeachments?limit=5")).unwrap();
    assert_eq!(im, node.impeachments(5));
}

#[test]
fn errors_are_json() {
    let s = Server::start();
    expect_error(s.get("/accounts/xyz"), 400, "bad_hex");
    expect_error(
        s.get(&format!("/accounts/{}", "a".repeat(63))),
        400,
        "bad_hex",
    );
    expect_error(s.get("/rpt/00"), 400, "bad_hex");
    expect_error(s.get("/txs/zz"), 400, "bad_hex");
    expect_error(s.get("/data/1234"), 400, "bad_hex");
    expect_error(
        s.get(&format!("/data/{}/grants/nope", data_id().to_hex())),
        400,
        "bad_hex",
    );
    expect_error(s.get("/blocks/abc"), 400, "bad_number");
    expect_error(s.get("/blocks/-1"), 400, "bad_number");
    expect_error(s.get("/blocks/99999"), 404, "not_found");
    expect_error(s.get(&format!("/blocks/{BROKEN_BLOCK}")), 500, "internal");
    expect_error(
        s.get(&format!("/txs/{}", Hash([7; 32]).to_hex())),
        404,
        "not_found",
    );
    expect_error(
        s.get(&format!("/data/{}", Hash([7; 32]).to_hex())),
        404,
        "not_found",
    );
    expect_error(
        s.get(&format!(
            "/data/{}/grants/{}",
            data_id().to_hex(),
            Address([7; 32]).to_hex()
        )),
        404,
        "not_found",
    );
    for q in ["limit=0", "limit=201", "limit=abc", "limit=-3", "limit="] {
        expect_error(s.get(&format!("/blocks?{q}")), 400, "bad_limit");
        expect_error(s.get(&format!("/txs?{q}")), 400, "bad_limit");
        expect_error(s.get(&format!("/impeachments?{q}")), 400, "bad_limit");
        let owned = format!("/accounts/{}/data?{q}", account_addr().to_hex());
        expect_error(s.get(&owned), 400, "bad_limit");
    }
    expect_error(s.get("/nope"), 404, "not_found");
    expect_error(s.get("/blocks/1/extra"), 404, "not_found");
    expect_error(
        s.post("/status", "application/json", b"{}"),
        405,
        "method_not_allowed",
    );
    expect_error(s.get("/txs/batch"), 405, "method_not_allowed");
    // A percent-escape that is not UTF-8 fails path extraction.
    expect_error(s.get("/accounts/%ff"), 400, "bad_path");
}

#[test]
fn submit_one() {
    let s = Server::start();
    let bytes = signed_bytes(1, 10);
    let expect = Tx::from_bytes(&bytes).unwrap().hash().to_hex();
    for ct in [
        "application/octet-stream",
        "application/octet-stream; charset=binary",
    ] {
        let (code, body) = s.post("/txs", ct, &bytes);
        assert_eq!(code, 202, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap(),
            json!({ "hash": expect })
        );
    }
    let j = serde_json::to_vec(&json!({ "tx": hex::encode(&bytes) })).unwrap();
    let (code, body) = s.post("/txs", "application/json", &j);
    assert_eq!(code, 202, "{body}");
    let j = serde_json::to_vec(&json!({ "tx": format!("0x{}", hex::encode(&bytes)) })).unwrap();
    assert_eq!(s.post("/txs", "application/json", &j).0, 202);
    assert_eq!(s.node.submitted.lock().unwrap().len(), 4);

    expect_error(
        s.post("/txs", "application/octet-stream", b""),
        400,
        "malformed",
    );
    expect_error(
        s.post("/txs", "application/octet-stream", &[1, 2, 3]),
        400,
        "malformed",
    );
    let penalty = Tx::Penalty {
        proposer: reader(),
        number: 3,
    }
    .to_bytes();
    expect_error(
        s.post("/txs", "application/octet-stream", &penalty),
        400,
        "invalid",
    );
    expect_error(
        s.post("/txs", "application/octet-stream", &signed_bytes(2, 0)),
        400,
        "invalid",
    );
    expect_error(
        s.post("/txs", "application/octet-stream", &signed_bytes(999, 1)),
        409,
        "duplicate",
    );
    expect_error(
        s.post("/txs", "application/octet-stream", &signed_bytes(1000, 1)),
        503,
        "busy",
    );
    expect_error(
        s.post("/txs", "application/json", br#"{"tx": "zz"}"#),
        400,
        "bad_hex",
    );
    expect_error(
        s.post("/txs", "application/json", br#"{"tx": 5}"#),
        400,
        "bad_json",
    );
    expect_error(
        s.post("/txs", "application/json", b"not json"),
        400,
        "bad_json",
    );
    expect_error(
        s.post("/txs", "text/plain", &bytes),
        415,
        "unsupported_media_type",
    );
}

#[test]
fn oversized_bodies_are_413() {
    let s = Server::start();
    let big = vec![0u8; MAX_TX_BODY + 1];
    expect_error(
        s.post("/txs", "application/octet-stream", &big),
        413,
        "payload_too_large",
    );
    // Exactly at the limit is read (and then refused by the node as malformed).
    let at = vec![0u8; MAX_TX_BODY];
    expect_error(
        s.post("/txs", "application/octet-stream", &at),
        400,
        "malformed",
    );
    // A chunked body has no Content-Length: the streaming limit catches it.
    let r = agent()
        .post(&s.url("/txs"))
        .set("Content-Type", "application/octet-stream")
        .send(std::io::Cursor::new(vec![0u8; MAX_TX_BODY + 10]));
    let got = match r {
        Ok(resp) => (resp.status(), resp.into_string().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap()),
        Err(e) => panic!("transport error: {e}"),
    };
    expect_error(got, 413, "payload_too_large");
    // A huge declared length is refused before any of the body is read.
    {
        use std::io::{Read, Write};
        let addr = s.base.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            conn,
            "POST /txs/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 10000000000\r\nConnection: close\r\n\r\n{{"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(error_code(body), "payload_too_large");
    }
    // A JSON body whose hex is over the limit.
    let j = serde_json::to_vec(&json!({ "tx": "00".repeat(MAX_TX_BODY) })).unwrap();
    expect_error(
        s.post("/txs", "application/json", &j),
        413,
        "payload_too_large",
    );
    // Too many transactions in a batch.
    let many = vec!["00"; MAX_BATCH_TXS + 1];
    let j = serde_json::to_vec(&json!({ "txs": many })).unwrap();
    expect_error(
        s.post("/txs/batch", "application/json", &j),
        413,
        "payload_too_large",
    );
    // Two million empty strings: counted, not kept (only the first MAX_BATCH_TXS are
    // decoded), and the answer says how many there were.
    let mut j = b"{\"txs\": [".to_vec();
    for i in 0..2_000_000 {
        j.extend_from_slice(if i == 0 { b"\"\"" } else { b",\"\"" });
    }
    j.extend_from_slice(b"]}");
    assert!(j.len() <= MAX_BATCH_BODY);
    let (code, body) = s.post("/txs/batch", "application/json", &j);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("batch holds 2000000 transactions"), "{body}");
    expect_error(
        s.post("/txs/batch", "application/json", br#"{"txs": "00"}"#),
        400,
        "bad_json",
    );
}

#[test]
fn batch_answers_per_tx() {
    let s = Server::start();
    let good = signed_bytes(1, 10);
    let txs = vec![
        hex::encode(&good),
        "zz".to_string(),
        hex::encode(signed_bytes(999, 10)),
        hex::encode([1u8, 2, 3]),
        hex::encode(signed_bytes(1000, 10)),
    ];
    let j = serde_json::to_vec(&json!({ "txs": txs })).unwrap();
    let (code, body) = s.post("/txs/batch", "application/json", &j);
    assert_eq!(code, 200, "{body}");
    let v: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(v.len(), 5);
    assert_eq!(
        v[0],
        json!({ "hash": Tx::from_bytes(&good).unwrap().hash().to_hex() })
    );
    let codes: Vec<String> = v[1..].iter().map(|e| error_code(&e.to_string())).collect();
    assert_eq!(codes, ["bad_hex", "duplicate", "malformed", "busy"]);
    // Empty batch is fine; malformed batches are JSON errors.
    assert_eq!(
        s.post("/txs/batch", "application/json", br#"{"txs": []}"#),
        (200, "[]".to_string())
    );
    expect_error(
        s.post("/txs/batch", "application/json", b"[1,2]"),
        400,
        "bad_json",
    );
    expect_error(
        s.post("/txs/batch", "application/octet-stream", b"{}"),
        415,
        "unsupported_media_type",
    );
}

#[test]
fn openapi_covers_exactly_the_router() {
    let s = Server::start();
    let doc = s.get_json("/openapi.json");
    assert_eq!(doc, openapi());
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.insert((method.clone(), path.clone()));
            assert!(op["responses"].is_object(), "{method} {path}");
            // Every path parameter is declared.
            let declared: BTreeSet<String> = op["parameters"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .filter(|p| p["in"] == "path")
                        .map(|p| p["name"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            let in_path: BTreeSet<String> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
                .map(str::to_string)
                .collect();
            assert_eq!(declared, in_path, "{method} {path}");
        }
    }
    let served: BTreeSet<(String, String)> = route_table()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(served, documented);
    // Every $ref resolves.
    let text = doc.to_string();
    for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(doc["components"]["schemas"][name].is_object(), "{name}");
    }
    // And every served route really is routed (not the fallback).
    for (method, path) in route_table() {
        let url = concrete(path);
        let got = if method == "get" {
            s.get(&url)
        } else {
            s.post(&url, "application/json", b"{}")
        };
        if got.0 == 404 {
            assert_ne!(
                error_code(&got.1),
                "not_found",
                "{method} {path} is not routed"
            );
        }
    }
}

/// Parses OpenMetrics text into (sample name with labels, value); panics on a bad line.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    assert!(text.ends_with("# EOF\n"), "no EOF marker");
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("# UNIT ")
                    || line == "# EOF",
                "{line}"
            );
            continue;
        }
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let bare = name.split('{').next().unwrap();
        assert!(
            !bare.is_empty()
                && bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("{line}")),
        };
        out.push((name.to_string(), v));
    }
    out
}

#[test]
fn metrics_text_parses_and_has_every_metric() {
    let s = Server::start();
    let (code, first) = s.get("/metrics");
    assert_eq!(code, 200);
    let samples = parse_metrics(&first);
    let value = |samples: &[(String, f64)], name: &str| {
        samples
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .1
    };
    for name in [
        "cpchain_height",
        "cpchain_committed_txs_total",
        "cpchain_tps",
        "cpchain_commit_latency_seconds_count",
        "cpchain_mempool_txs",
        "cpchain_peers",
        "cpchain_impeachments_total",
        "cpchain_rejected_txs_total",
        "cpchain_dropped_txs_total",
        "cpchain_verify_batch_size_count",
    ] {
        value(&samples, name);
    }
    assert_eq!(value(&samples, "cpchain_height"), HEIGHT as f64);
    assert_eq!(value(&samples, "cpchain_storage_shards"), 1400.0);
    assert_eq!(value(&samples, "cpchain_storage_audits_failed_total"), 3.0);
    assert_eq!(value(&samples, "cpchain_storage_repair_bytes_total"), 0.0);
    assert!(first.contains("# TYPE cpchain_storage_shards_served counter"));
    assert!(first.contains("# TYPE cpchain_storage_disk_free_bytes gauge"));
    assert_eq!(value(&samples, "cpchain_committed_txs_total"), 100.0);
    // NaN latency samples are dropped.
    assert_eq!(value(&samples, "cpchain_commit_latency_seconds_count"), 2.0);
    assert_eq!(
        value(
            &samples,
            "cpchain_commit_latency_seconds_bucket{le=\"0.5\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "cpchain_commit_latency_seconds_bucket{le=\"10.0\"}"
        ),
        2.0
    );
    std::thread::sleep(Duration::from_millis(200));
    let (_, second) = s.get("/metrics");
    let samples = parse_metrics(&second);
    assert_eq!(value(&samples, "cpchain_committed_txs_total"), 200.0);
    assert_eq!(value(&samples, "cpchain_rejected_txs_total"), 4.0);
    assert_eq!(value(&samples, "cpchain_dropped_txs_total"), 2.0);
    assert_eq!(value(&samples, "cpchain_commit_latency_seconds_count"), 4.0);
    assert_eq!(value(&samples, "cpchain_verify_batch_size_count"), 2.0);
    // The node's storage totals did not move: the counters stay, not added twice.
    assert_eq!(value(&samples, "cpchain_storage_audits_failed_total"), 3.0);
    // 100 txs in ~0.2 s: well above 0, well below 100/0.2 = 500 plus slack.
    let tps = value(&samples, "cpchain_tps");
    assert!(tps > 10.0 && tps <= 600.0, "tps {tps}");
}

#[test]
fn tps_window_slides() {
    let t0 = Instant::now();
    let mut w = VecDeque::new();
    assert_eq!(tps(&mut w, t0, 0), 0.0);
    assert_eq!(tps(&mut w, t0 + Duration::from_secs(5), 500), 100.0);
    assert_eq!(tps(&mut w, t0 + Duration::from_secs(10), 1000), 100.0);
    // Now the window starts at t0+5 s (the newest sample at least 10 s old is t0+5).
    let r = tps(&mut w, t0 + Duration::from_secs(15), 3000);
    assert_eq!(r, 250.0);
    assert!(w.len() <= 3);
    for i in 0..(MAX_TPS_SAMPLES as u64 * 2) {
        tps(
            &mut w,
            t0 + Duration::from_secs(20) + Duration::from_micros(i),
            3000,
        );
    }
    assert!(w.len() <= MAX_TPS_SAMPLES);
}

#[test]
fn explorer_is_served_self_contained() {
    let s = Server::start();
    for path in ["/", "/explorer"] {
        let resp = agent().get(&s.url(path)).call().unwrap();
        assert!(resp.content_type().starts_with("text/html"));
        let body = resp.into_string().unwrap();
        assert!(body.contains("id=\"height\""));
        assert!(body.contains("id=\"error\""));
        // No external resources: scripts and styles are inline.
        assert!(!body.contains("<script src"));
        assert!(!body.contains("<link"));
        for url in body.split("http").skip(1) {
            assert!(
                url.starts_with("://www.w3.org/2000/svg"),
                "external reference: http{}",
                &url[..40.min(url.len())]
            );
        }
    }
}

/// Renders the explorer in headless Chromium (when installed) and reads `#height`.
#[test]
fn explorer_renders_in_a_headless_browser() {
    let browser = std::env::var("CPCHAIN_BROWSER").unwrap_or_else(|_| "chromium".into());
    let s = Server::start();
    let out = std::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(s.url("/explorer"))
        .output();
    let Ok(out) = out else {
        eprintln!("skipped: no {browser} (set CPCHAIN_BROWSER to a Chromium binary)");
        return;
    };
    let dom = String::from_utf8_lossy(&out.stdout);
    let height = dom
        .split("id=\"height\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or_else(|| panic!("no #height in the rendered page: {dom}"));
    assert_eq!(height, HEIGHT.to_string());
    assert!(dom.contains("impeach"), "impeach blocks are shown");
    // The chain's strings are text, never markup.
    assert!(!dom.contains("<script>alert(1)</script>"));
    assert!(dom.contains("&lt;script&gt;alert(1)"));
}

#[test]
fn shutdown_stops_the_server() {
    let mut s = Server::start();
    assert_eq!(s.get("/status").0, 200);
    s.stop.take().unwrap().send(()).unwrap();
    let task = s.task.take().unwrap();
    let res =
        s.rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await })
            .expect("serve did not return after shutdown")
            .unwrap();
    assert!(res.is_ok());
    assert!(agent().get(&s.url("/status")).call().is_err());
}

#[test]
fn the_client_waits_until_its_transaction_is_final_or_dropped() {
    let s = Server::start();
    let kp = Keypair::from_seed([6; 32]);
    let opts = TxOpts {
        fee: client::parse_cpc(client::DEFAULT_FEE).unwrap(),
        nonce: None,
    };
    let cmd = TxCmd::Transfer {
        to: reader(),
        amount: CPC,
        opts: opts.clone(),
    };
    client::run_tx(&s.base, &kp, cmd, Duration::from_secs(10)).unwrap();
    let cmd = TxCmd::Revoke {
        id: data_id(),
        reader: reader(),
        opts,
    };
    let err = format!(
        "{:#}",
        client::run_tx(&s.base, &kp, cmd, Duration::from_secs(10)).unwrap_err()
    );
    assert!(err.contains("will not be included: no such grant"), "{err}");
    assert!(
        err.contains(&format!("nonce {PENDING_NONCE} is free")),
        "{err}"
    );
    // Still pending when the wait ends: an error too (scripts must not take it for final).
    let cmd = TxCmd::Transfer {
        to: reader(),
        amount: 7 * CPC,
        opts: TxOpts {
            fee: CPC / 1000,
            nonce: None,
        },
    };
    let err = format!(
        "{:#}",
        client::run_tx(&s.base, &kp, cmd, Duration::from_secs(1)).unwrap_err()
    );
    assert!(err.contains("not final after 1 s: still pending"), "{err}");
}

#[test]
fn client_signs_and_submits() {
    let s = Server::start();
    let kp = Keypair::from_seed([6; 32]);
    let cmd = TxCmd::Transfer {
        to: reader(),
        amount: client::parse_cpc("1.5").unwrap(),
        opts: TxOpts {
            fee: client::parse_cpc(client::DEFAULT_FEE).unwrap(),
            nonce: None,
        },
    };
    client::run_tx(&s.base, &kp, cmd, Duration::ZERO).unwrap();
    let sent = s.node.submitted.lock().unwrap().pop().unwrap();
    assert_eq!(sent.from, Address::of(&kp.public()));
    assert_eq!(sent.nonce, PENDING_NONCE);
    assert_eq!(sent.fee, CPC / 1000);
    assert_eq!(
        sent.payload,
        TxPayload::Transfer {
            to: reader(),
            amount: CPC + CPC / 2
        }
    );
    let msg = SignedTx::signing_bytes(&sent.from, sent.nonce, sent.fee, &sent.payload);
    kp.public()
        .verify(
            SigDomain::new(CHAIN_ID, MessageKind::TRANSACTION),
            &msg,
            &sent.sig,
        )
        .unwrap();

    // The node's reason comes back in one line.
    let cmd = TxCmd::Revoke {
        id: data_id(),
        reader: reader(),
        opts: TxOpts {
            fee: 0,
            nonce: None,
        },
    };
    let err = format!(
        "{:#}",
        client::run_tx(&s.base, &kp, cmd, Duration::ZERO).unwrap_err()
    );
    assert!(err.contains("fee below the minimum"), "{err}");
    assert!(err.contains("HTTP 400"), "{err}");
    assert!(!err.contains('\n'));

    // A campaign claim solves its proofs over the node's head.
    let cmd = TxCmd::Campaign {
        terms: 2,
        deposit: 1000 * CPC,
        cpu_difficulty: 4,
        memory_difficulty: 0,
        opts: TxOpts {
            fee: 1,
            nonce: Some(11),
        },
    };
    client::run_tx(&s.base, &kp, cmd, Duration::ZERO).unwrap();
    let sent = s.node.submitted.lock().unwrap().pop().unwrap();
    assert_eq!(sent.nonce, 11);
    let TxPayload::ClaimCampaign {
        cpu_nonce,
        seed_number,
        ..
    } = sent.payload
    else {
        panic!("not a campaign claim: {:?}", sent.payload);
    };
    assert_eq!(seed_number, HEIGHT);
    let seed = Hash([HEIGHT as u8; 32]);
    let h = chain::contracts::admission::cpu_hash(&sent.from, cpu_nonce, &seed);
    assert!(chain::contracts::admission::leading_zero_bits(&h) >= 4);

    client::run_status(&s.base).unwrap();
}

#[test]
fn api_client_batches() {
    let s = Server::start();
    let c = ApiClient::new(&s.base);
    assert_eq!(c.status().unwrap().chain_id, CHAIN_ID);
    assert_eq!(c.account(&reader()).unwrap().pending_nonce, PENDING_NONCE);
    let txs = vec![signed_bytes(1, 1), vec![1, 2], signed_bytes(999, 1)];
    let r = c.submit_batch(&txs).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(
        r[0].as_ref().unwrap(),
        &Tx::from_bytes(&txs[0]).unwrap().hash()
    );
    assert_eq!(r[1].as_ref().unwrap_err().error, "malformed");
    assert_eq!(r[2].as_ref().unwrap_err().error, "duplicate");
    assert!(c.submit_batch(&[]).unwrap().is_empty());
    let e = c.submit(&[9]).unwrap_err();
    assert!(
        matches!(e, client::ClientError::Server { status: 400, .. }),
        "{e}"
    );
}

/// A JSON value of bounded depth with arbitrary strings and numbers.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        ".{0,40}".prop_map(Value::String),
        "[0-9a-f]{0,300}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![Just("tx".to_string()), Just("txs".to_string()), ".{0,8}"],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn assert_json_or_error(code: u16, body: &str) {
    if code >= 400 {
        error_code(body);
    } else {
        let _: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_submissions_never_break_the_server(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        value in any_json(),
        ct in prop_oneof![
            Just("application/octet-stream"),
            Just("application/json"),
            Just("text/plain"),
            Just("application/json; charset=utf-8"),
        ],
    ) {
        // One server per case is too slow; share it across cases.
        thread_local!(static SERVER: Server = Server::start());
        SERVER.with(|s| {
            let (code, body) = s.post("/txs", ct, &bytes);
            prop_assert!(code >= 400, "random bytes accepted: {}", body);
            assert_json_or_error(code, &body);
            let j = serde_json::to_vec(&value).unwrap();
            for path in ["/txs", "/txs/batch"] {
                let (code, body) = s.post(path, "application/json", &j);
                prop_assert!(code < 500, "{} {}", code, body);
                assert_json_or_error(code, &body);
                let (code, body) = s.post(path, ct, &bytes);
                prop_assert!(code < 500, "{} {}", code, body);
                assert_json_or_error(code, &body);
            }
            prop_assert_eq!(s.get("/status").0, 200);
            Ok(())
        })?;
    }

    #[test]
    fn random_paths_answer_json(
        a in "[a-zA-Z0-9._~%-]{0,70}",
        b in "[a-zA-Z0-9._~%-]{1,70}",
        q in "[a-zA-Z0-9=&%+-]{0,30}",
    ) {
        thread_local!(static SERVER: Server = Server::start());
        SERVER.with(|s| {
            for path in [
                format!("/accounts/{b}"),
                format!("/blocks/{b}"),
                format!("/blocks?{q}"),
                format!("/txs/{b}"),
                format!("/txs?{q}"),
                format!("/impeachments?{q}"),
                format!("/data/{b}"),
                format!("/data/{a}/grants/{b}"),
                format!("/rpt/{b}"),
                format!("/{a}/{b}"),
                format!("/{b}"),
            ] {
                let (code, body) = s.get(&path);
                // Block 13 is the fake node's deliberate internal error.
                prop_assert!(
                    code < 500 || (path.starts_with("/blocks/") && error_code(&body) == "internal"),
                    "{} {} {}", path, code, body
                );
                // Dot segments may normalise to the explorer or metrics pages.
                let page = body.starts_with("<!DOCTYPE html>") || body.starts_with("# HELP");
                if !(code == 200 && page) {
                    assert_json_or_error(code, &body);
                }
            }
            prop_assert_eq!(s.get("/status").0, 200);
            Ok(())
        })?;
    }
}
