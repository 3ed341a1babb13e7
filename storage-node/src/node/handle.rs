//! [`EngineHandle`]: the engine's [`NodeApi`] for the HTTP API. Reads run as closures on
//! the engine thread (so they see one consistent state) with a timeout; submissions go
//! through the engine's mempool and are answered per transaction.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::time::Duration;

use chain::{AccessPolicy, Address, Block, BlockKind, Tx, TxPayload};
use crypto_accel::{DataId, Hash};

use super::config::Role;
use super::engine::{BlockSummary, Engine, EngineEvent};
use super::storage::{ChainView, StorageService, COORDINATOR_CANDIDATES};
use super::view::*;

impl ChainView for EngineHandle {
    fn data(&self, id: &DataId) -> Option<chain::DataRecord> {
        let id = *id;
        self.query(move |e| e.state.data(&id)).flatten()
    }

    fn may_read(&self, reader: &Address, id: &DataId, interval: u64) -> bool {
        let (r, id) = (*reader, *id);
        self.query(move |e| e.state.may_read(&r, &id, interval, e.store.head().number))
            .unwrap_or(false)
    }

    fn may_read_some(&self, reader: &Address, id: &DataId) -> bool {
        let (r, id) = (*reader, *id);
        self.query(move |e| e.state.may_read_some(&r, &id, e.store.head().number))
            .unwrap_or(false)
    }

    fn is_rnode(&self, who: &Address) -> Option<bool> {
        let who = *who;
        self.query(move |e| e.state.is_rnode(&e.cfg, &who))
    }

    fn may_coordinate(&self, who: &Address, data: &DataId) -> Option<bool> {
        let (who, data) = (*who, *data);
        self.query(move |e| {
            e.state
                .rnodes_closest(&e.cfg, data.as_bytes(), COORDINATOR_CANDIDATES)
                .contains(&who)
        })
    }
}

/// How long an API read waits for the engine.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle on a running engine.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: SyncSender<EngineEvent>,
    storage: Option<std::sync::Arc<StorageService>>,
}

impl EngineHandle {
    /// A handle sending to the engine's queue.
    pub fn new(tx: SyncSender<EngineEvent>) -> Self {
        EngineHandle { tx, storage: None }
    }

    /// Adds the storage role's view to `/status` and `/metrics`.
    pub fn with_storage(mut self, s: std::sync::Arc<StorageService>) -> Self {
        self.storage = Some(s);
        self
    }

    fn query<T: Send + 'static>(&self, f: impl FnOnce(&Engine) -> T + Send + 'static) -> Option<T> {
        self.query_mut(move |e| f(e))
    }

    fn query_mut<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Engine) -> T + Send + 'static,
    ) -> Option<T> {
        let (rtx, rrx) = sync_channel(1);
        let q = Box::new(move |e: &mut Engine| {
            let _ = rtx.send(f(e));
        });
        self.tx.send(EngineEvent::Query(q)).ok()?;
        rrx.recv_timeout(QUERY_TIMEOUT).ok()
    }

    /// Submits encoded transactions; one result per transaction.
    pub fn submit_batch(&self, txs: Vec<Vec<u8>>) -> Vec<Result<Hash, Rejected>> {
        let n = txs.len();
        let (rtx, rrx) = sync_channel(1);
        let busy = |why: &str| vec![Err(Rejected::Busy(why.into())); n];
        match self.tx.try_send(EngineEvent::Submit { txs, reply: rtx }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return busy("the node's queue is full; retry later"),
            Err(TrySendError::Disconnected(_)) => return busy("the node is shutting down"),
        }
        rrx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| busy("the node did not answer in time"))
    }
}

/// The registry entry of `id` as the API shows it.
fn data_view(e: &Engine, id: &DataId, d: &chain::DataRecord) -> DataView {
    DataView {
        id: id.to_hex(),
        owner: d.owner.to_hex(),
        coordinators: e
            .state
            .rnodes_closest(&e.cfg, id.as_bytes(), COORDINATOR_CANDIDATES)
            .iter()
            .map(Address::to_hex)
            .collect(),
        merkle_root: d.merkle_root.to_hex(),
        size: d.size,
        k: d.k,
        m: d.m,
        intervals_start: d.intervals.start,
        intervals_end: d.intervals.end,
        policy: match d.policy {
            AccessPolicy::OwnerOnly => "owner-only".into(),
            AccessPolicy::GrantBased => "grants".into(),
            AccessPolicy::Public => "public".into(),
        },
        registered_at: d.registered_at,
    }
}

fn amount(a: chain::Amount) -> String {
    a.to_string()
}

fn call_name(p: &TxPayload) -> (&'static str, String) {
    match p {
        TxPayload::Transfer { to, amount: a } => ("transfer", format!("{} to {}", amount(*a), to)),
        TxPayload::RegisterData { id, size, .. } => {
            ("register_data", format!("data {} ({size} bytes)", id))
        }
        TxPayload::Grant { id, reader, .. } => ("grant", format!("{} to {}", id, reader)),
        TxPayload::Revoke { id, reader } => ("revoke", format!("{} from {}", id, reader)),
        TxPayload::ClaimCampaign { .. } => ("claim_campaign", String::new()),
        TxPayload::Evidence(dv) => ("evidence", format!("double vote by {}", dv.a.validator)),
        TxPayload::AuditReport {
            holder,
            passed,
            failed,
        } => (
            "audit_report",
            format!("{holder}: {passed} audits passed, {failed} failed"),
        ),
        other => {
            let dbg = format!("{other:?}");
            let name = dbg
                .split([' ', '{', '('])
                .next()
                .unwrap_or("call")
                .to_string();
            ("call", name)
        }
    }
}

fn tx_view(t: &Tx, block: Option<u64>) -> TxView {
    match t {
        Tx::Signed(s) => {
            let (call, summary) = call_name(&s.payload);
            TxView {
                hash: t.hash().to_hex(),
                kind: "signed".into(),
                from: Some(s.from.to_hex()),
                nonce: Some(s.nonce),
                fee: Some(amount(s.fee)),
                call: call.into(),
                summary,
                block,
                dropped: None,
            }
        }
        Tx::Penalty { proposer, number } => TxView {
            hash: t.hash().to_hex(),
            kind: "penalty".into(),
            from: None,
            nonce: None,
            fee: None,
            call: "penalty".into(),
            summary: format!("impeached {proposer} at {number}"),
            block,
            dropped: None,
        },
    }
}

fn block_view(b: &Block, signers: &[Address], with_txs: bool) -> BlockView {
    let h = &b.header;
    BlockView {
        number: h.number,
        hash: b.hash().to_hex(),
        parent: h.parent.to_hex(),
        timestamp_ms: h.timestamp_ms,
        term: h.term,
        proposer: h.proposer.to_hex(),
        kind: match h.kind {
            BlockKind::Normal => "normal".into(),
            BlockKind::Impeach => "impeach".into(),
        },
        state_root: h.state_root.to_hex(),
        tx_root: h.tx_root.to_hex(),
        tx_count: b.txs.len(),
        signers: signers.iter().map(Address::to_hex).collect(),
        txs: if with_txs {
            b.txs.iter().map(|t| tx_view(t, Some(h.number))).collect()
        } else {
            Vec::new()
        },
    }
}

/// The view (proposer turn) within its term that height `number` falls in.
fn view_of(cfg: &chain::ChainConfig, number: u64) -> u64 {
    (number % cfg.term_len().max(1)) / cfg.view_len.max(1)
}

fn status_of(e: &Engine) -> StatusView {
    let tip = e.machine.tip();
    let next = e.machine.height();
    StatusView {
        name: e.node.name.clone(),
        roles: e
            .node
            .roles
            .iter()
            .map(|r| Role::name(*r).to_string())
            .collect(),
        chain_id: e.cfg.chain_id,
        address: e.addr.to_hex(),
        peer_id: e.peer_id.to_string(),
        height: tip.number,
        head_hash: tip.hash().to_hex(),
        head_timestamp_ms: tip.timestamp_ms,
        term: chain::term_of(&e.cfg, next),
        view: view_of(&e.cfg, next),
        next_proposer: e.machine.proposer_for(next).map(|a| a.to_hex()),
        phase: format!("{:?}", e.machine.phase()).to_lowercase(),
        round: e.machine.round(),
        peers: e.peers(),
        mempool: e.mempool.len(),
        impeachments: e.stats.impeachments,
        period_ms: e.cfg.period_ms,
        syncing: e.best_peer_height > tip.number.saturating_add(1),
        listen: e
            .net_stats
            .listen
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default(),
        storage: None,
    }
}

impl NodeApi for EngineHandle {
    fn status(&self) -> StatusView {
        let mut v = self.query(status_of).unwrap_or_default();
        v.storage = self.storage.as_ref().map(|s| s.view());
        v
    }

    fn account(&self, address: &Address) -> AccountView {
        let a = *address;
        self.query(move |e| {
            let acct = e.state.account(&a);
            AccountView {
                address: a.to_hex(),
                balance: amount(acct.balance),
                nonce: acct.nonce,
                pending_nonce: e.mempool.pending_nonce(&a, acct.nonce),
                rnode_deposit: amount(e.state.rnode_deposit(&a)),
                rnode: e.state.is_rnode(&e.cfg, &a),
                economy_deposit: amount(e.state.economy_deposit(&a)),
            }
        })
        .unwrap_or_default()
    }

    fn block(&self, number: u64) -> anyhow::Result<Option<BlockView>> {
        self.query(move |e| -> anyhow::Result<Option<BlockView>> {
            let Some(b) = e.store.block(number)? else {
                return Ok(None);
            };
            let signers: Vec<Address> = e
                .store
                .certificate(number)?
                .map(|c| c.sigs.iter().map(|(a, _)| *a).collect())
                .unwrap_or_default();
            Ok(Some(block_view(&b, &signers, true)))
        })
        .unwrap_or_else(|| Err(anyhow::anyhow!("the node did not answer in time")))
    }

    fn recent_blocks(&self, limit: usize) -> anyhow::Result<Vec<BlockView>> {
        self.query(move |e| {
            e.recent
                .iter()
                .rev()
                .take(limit)
                .map(|s: &BlockSummary| block_view(&s.block, &s.signers, false))
                .collect()
        })
        .ok_or_else(|| anyhow::anyhow!("the node did not answer in time"))
    }

    fn tx(&self, hash: &Hash) -> anyhow::Result<Option<TxView>> {
        let h = *hash;
        self.query(move |e| -> anyhow::Result<Option<TxView>> {
            if let Some(t) = e.mempool.get(&h) {
                return Ok(Some(tx_view(&Tx::Signed(t.clone()), None)));
            }
            // Dropped, unless the same transaction was sent again and is final now.
            let Some(n) = e.tx_index.get(&h).copied() else {
                return Ok(e.mempool.dropped(&h).map(|(t, why)| TxView {
                    dropped: Some(why.to_string()),
                    ..tx_view(&Tx::Signed(t.clone()), None)
                }));
            };
            let Some(b) = e.store.block(n)? else {
                return Ok(None);
            };
            Ok(b.txs
                .iter()
                .find(|t| t.hash() == h)
                .map(|t| tx_view(t, Some(n))))
        })
        .unwrap_or_else(|| Err(anyhow::anyhow!("the node did not answer in time")))
    }

    fn recent_txs(&self, limit: usize) -> anyhow::Result<Vec<TxView>> {
        self.query(move |e| {
            let mut out = Vec::new();
            for s in e.recent.iter().rev() {
                for t in s.block.txs.iter().rev() {
                    if out.len() >= limit {
                        return out;
                    }
                    out.push(tx_view(t, Some(s.block.header.number)));
                }
            }
            out
        })
        .ok_or_else(|| anyhow::anyhow!("the node did not answer in time"))
    }

    fn data(&self, id: &DataId) -> Option<DataView> {
        let id = *id;
        self.query(move |e| e.state.data(&id).map(|d| data_view(e, &id, &d)))
            .flatten()
    }

    fn owned_data(&self, owner: &Address, limit: usize) -> OwnedDataView {
        let owner = *owner;
        self.query(move |e| {
            let mut ids = e.state.upload_history(&owner);
            // Newest first; ids break ties so the order is the same on every call.
            ids.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            OwnedDataView {
                owner: owner.to_hex(),
                total: ids.len(),
                data: ids
                    .iter()
                    .filter_map(|(id, _)| e.state.data(id).map(|d| data_view(e, id, &d)))
                    .take(limit)
                    .collect(),
            }
        })
        .unwrap_or_else(|| OwnedDataView {
            owner: owner.to_hex(),
            ..OwnedDataView::default()
        })
    }

    fn grant(&self, id: &DataId, reader: &Address) -> Option<GrantView> {
        let (id, reader) = (*id, *reader);
        self.query(move |e| {
            e.state.grant(&id, &reader).map(|g| GrantView {
                data: id.to_hex(),
                reader: reader.to_hex(),
                intervals_start: g.intervals.start,
                intervals_end: g.intervals.end,
                expiry: g.expiry,
                granted_at: g.granted_at,
                revoked_at: g.revoked_at,
            })
        })
        .flatten()
    }

    fn rnodes(&self) -> Vec<RNodeView> {
        self.query(|e| {
            let term = e.state.term().saturating_add(1);
            let candidates: std::collections::HashSet<chain::Address> =
                e.state.candidates_of(&e.cfg, term).into_iter().collect();
            e.state
                .rnodes(&e.cfg, MAX_RNODES_SHOWN)
                .into_iter()
                .map(|(a, deposit)| RNodeView {
                    address: a.to_hex(),
                    deposit: amount(deposit),
                    rpt: e.state.get_rpt(&a).total,
                    candidate: candidates.contains(&a),
                })
                .collect()
        })
        .unwrap_or_default()
    }

    fn candidates(&self) -> Vec<CandidateView> {
        self.query(|e| {
            let term = e.state.term().saturating_add(1);
            let mut v: Vec<CandidateView> = e
                .state
                .candidates_of(&e.cfg, term)
                .into_iter()
                .filter_map(|a| {
                    let c = e.state.candidate_info_of(&a)?;
                    Some(CandidateView {
                        address: a.to_hex(),
                        deposit: amount(c.deposit),
                        start_term: c.start_term,
                        end_term: c.end_term,
                        rpt: e.state.get_rpt(&a).total,
                    })
                })
                .collect();
            // Default proposers run the chain until candidates campaign: show them too.
            for a in &e.cfg.default_proposers {
                if !v.iter().any(|c| c.address == a.to_hex()) {
                    v.push(CandidateView {
                        address: a.to_hex(),
                        deposit: "0".into(),
                        start_term: 0,
                        end_term: 0,
                        rpt: e.state.get_rpt(a).total,
                    });
                }
            }
            v
        })
        .unwrap_or_default()
    }

    fn rpt(&self, address: &Address) -> RptView {
        let a = *address;
        self.query(move |e| {
            let r = e.state.get_rpt(&a);
            RptView {
                address: a.to_hex(),
                total: r.total,
                ab: r.ab,
                tx: r.tx,
                pr: r.pr,
                dc: r.dc,
                bm: r.bm,
            }
        })
        .unwrap_or_default()
    }

    fn committee(&self) -> CommitteeView {
        self.query(|e| {
            let next = e.machine.height();
            CommitteeView {
                term: chain::term_of(&e.cfg, next),
                view: view_of(&e.cfg, next),
                view_len: e.cfg.view_len,
                proposers: e
                    .machine
                    .schedule()
                    .committee()
                    .iter()
                    .map(Address::to_hex)
                    .collect(),
                validators: e.cfg.validators.iter().map(Address::to_hex).collect(),
                next_proposer: e.machine.proposer_for(next).map(|a| a.to_hex()),
            }
        })
        .unwrap_or_default()
    }

    fn impeachments(&self, limit: usize) -> Vec<ImpeachView> {
        self.query(move |e| {
            e.recent
                .iter()
                .rev()
                .filter(|s| s.block.header.kind == BlockKind::Impeach)
                .take(limit)
                .map(|s| ImpeachView {
                    number: s.block.header.number,
                    proposer: s.block.header.proposer.to_hex(),
                    timestamp_ms: s.block.header.timestamp_ms,
                })
                .collect()
        })
        .unwrap_or_default()
    }

    fn submit_many(&self, txs: Vec<Vec<u8>>) -> Vec<Result<Hash, Rejected>> {
        self.submit_batch(txs)
    }

    fn submit(&self, tx_bytes: &[u8]) -> Result<Hash, Rejected> {
        self.submit_batch(vec![tx_bytes.to_vec()])
            .into_iter()
            .next()
            .unwrap_or(Err(Rejected::Busy("no answer".into())))
    }

    fn held(&self, data: &DataId) -> Option<Vec<(u64, u8)>> {
        self.storage.as_ref().map(|s| s.held(data))
    }

    fn metrics(&self) -> MetricsView {
        // Drains the samples: each scrape sees those taken since the previous one.
        self.query_mut(|e| MetricsView {
            height: e.machine.tip().number,
            committed_txs: e.stats.committed_txs,
            mempool: e.mempool.len(),
            peers: e.peers(),
            impeachments: e.stats.impeachments,
            rejected_txs: e.stats.rejected_txs,
            dropped_txs: e.mempool.dropped_invalid(),
            commit_latencies_s: std::mem::take(&mut e.stats.latencies),
            verify_batch_sizes: std::mem::take(&mut e.stats.batch_sizes),
            storage: None,
        })
        .map(|mut m| {
            m.storage = self.storage.as_ref().map(|s| s.view());
            m
        })
        .unwrap_or_default()
    }
}
