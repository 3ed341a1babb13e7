//! Transaction execution over a [`Store`]: the same code runs on the journaled tables
//! (block execution) and on a throw-away overlay (`check_tx`). Each handler checks
//! everything before its first write where it can; a failure after a write is undone by the
//! caller (block rollback or dropped overlay).

use crypto_accel::DataId;

use super::records::{
    Account, ActivityKey, DataRecord, Funds, GrantKey, GrantRecord, HeightKey, Meta, UploadKey,
};
use super::table::{
    Accounts, ActivityIndex, ActivityTable, Candidates, DataTable, Economy, Equivocations, Grants,
    Impeachments, Locked, MetaTable, Proxies, RNodes, Store, Uploads,
};
use super::{Activity, Equivocation, TxOutcome};
use crate::config::ChainConfig;
use crate::contracts::{campaign, pdash};
use crate::error::{ChainError, ChainResult};
use crate::rewards::{SeasonPhase, Seasons};
use crate::rpt::{MAX_WEIGHT, MAX_WINDOW};
use crate::tx::{AccessPolicy, IntervalRange, RptWeight, SignedTx, TxPayload};
use crate::types::{Address, Amount, DoubleVote};

/// Share of a campaign deposit detained per impeachment: 1/10.
pub const IMPEACH_PENALTY_DIVISOR: u128 = 10;
/// Share of an RNode deposit detained for a punished double vote: 1/10 (plus the whole
/// campaign deposit).
pub const EQUIVOCATION_RNODE_DIVISOR: u128 = 10;
/// Most shards per stripe (GF(2^8) Reed–Solomon).
pub const MAX_SHARDS: u32 = 256;

/// Where a transaction executes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) cfg: &'a ChainConfig,
    /// Height of the block being executed.
    pub(crate) height: u64,
    /// Term of the block being executed.
    pub(crate) term: u64,
}

/// The meta record (present from genesis on).
pub(crate) fn meta<S: Store>(s: &S) -> Meta {
    s.get::<MetaTable>(&0).unwrap_or_else(Meta::initial)
}

/// Writes the meta record.
pub(crate) fn set_meta<S: Store>(s: &mut S, m: Meta) {
    s.set::<MetaTable>(0, m);
}

/// Takes `amount` from `addr`'s balance.
pub(crate) fn debit<S: Store>(s: &mut S, addr: Address, amount: Amount) -> ChainResult<()> {
    let mut a = s.get::<Accounts>(&addr).unwrap_or_default();
    if a.balance < amount {
        return Err(ChainError::InsufficientBalance {
            need: amount,
            have: a.balance,
        });
    }
    a.balance -= amount;
    s.set::<Accounts>(addr, a);
    Ok(())
}

/// Adds `amount` to `addr`'s balance.
pub(crate) fn credit<S: Store>(s: &mut S, addr: Address, amount: Amount) -> ChainResult<()> {
    if amount == 0 {
        return Ok(());
    }
    let mut a = s.get::<Accounts>(&addr).unwrap_or_default();
    a.balance = a
        .balance
        .checked_add(amount)
        .ok_or(ChainError::Overflow { what: "balance" })?;
    s.set::<Accounts>(addr, a);
    Ok(())
}

/// Adds to `addr`'s activity at `height` (the RPT inputs).
/// Most audits one `AuditReport` may carry.
pub const MAX_AUDITS_PER_REPORT: u64 = 100_000;

pub(crate) fn bump<S: Store>(s: &mut S, addr: Address, height: u64, f: impl FnOnce(&mut Activity)) {
    let key = ActivityKey { addr, height };
    let mut a = match s.get::<ActivityTable>(&key) {
        Some(a) => a,
        None => {
            s.set::<ActivityIndex>(HeightKey { height, addr }, height);
            Activity::default()
        }
    };
    f(&mut a);
    s.set::<ActivityTable>(key, a);
}

/// Fails unless `caller` is the contract owner.
pub(crate) fn owner_only(cx: &Ctx<'_>, caller: Address, function: &'static str) -> ChainResult<()> {
    if caller == cx.cfg.contract_owner {
        Ok(())
    } else {
        Err(ChainError::NotOwner { caller, function })
    }
}

fn positive(amount: Amount, what: &'static str) -> ChainResult<()> {
    if amount == 0 {
        Err(ChainError::ZeroAmount { what })
    } else {
        Ok(())
    }
}

/// Checks nonce and fee, charges the fee, counts the transaction, runs the payload.
pub(crate) fn exec_signed<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    tx: &SignedTx,
) -> ChainResult<TxOutcome> {
    let from = tx.from;
    let mut acct: Account = s.get::<Accounts>(&from).unwrap_or_default();
    if tx.nonce != acct.nonce {
        return Err(ChainError::BadNonce {
            expected: acct.nonce,
            got: tx.nonce,
        });
    }
    if acct.balance < tx.fee {
        return Err(ChainError::InsufficientBalance {
            need: tx.fee,
            have: acct.balance,
        });
    }
    acct.balance -= tx.fee;
    acct.nonce = acct
        .nonce
        .checked_add(1)
        .ok_or(ChainError::Overflow { what: "nonce" })?;
    s.set::<Accounts>(from, acct);
    bump(s, from, cx.height, |a| a.txs = a.txs.saturating_add(1));
    exec_payload(s, cx, from, &tx.payload)
}

fn exec_payload<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    p: &TxPayload,
) -> ChainResult<TxOutcome> {
    match p {
        TxPayload::Transfer { to, amount } => {
            debit(s, from, *amount)?;
            credit(s, *to, *amount)?;
        }
        TxPayload::RegisterData {
            id,
            merkle_root,
            size,
            k,
            m,
            intervals,
            policy,
        } => {
            if *k == 0 {
                return Err(ChainError::InvalidData { reason: "k is 0" });
            }
            if u32::from(*k) + u32::from(*m) > MAX_SHARDS {
                return Err(ChainError::InvalidData {
                    reason: "k + m above 256",
                });
            }
            if *size == 0 {
                return Err(ChainError::InvalidData {
                    reason: "size is 0",
                });
            }
            if !intervals.is_valid() {
                return Err(ChainError::InvalidData {
                    reason: "empty interval range",
                });
            }
            if s.get::<DataTable>(id).is_some() {
                return Err(ChainError::DataExists { id: *id });
            }
            s.set::<DataTable>(
                *id,
                DataRecord {
                    owner: from,
                    merkle_root: *merkle_root,
                    size: *size,
                    k: *k,
                    m: *m,
                    intervals: *intervals,
                    policy: *policy,
                    registered_at: cx.height,
                },
            );
            s.set::<Uploads>(
                UploadKey {
                    addr: from,
                    data: *id,
                },
                cx.height,
            );
            bump(s, from, cx.height, |a| {
                a.uploads = a.uploads.saturating_add(1)
            });
        }
        TxPayload::SetPolicy { id, policy } => {
            let mut d = owned_data(s, from, id, "set_policy")?;
            d.policy = *policy;
            s.set::<DataTable>(*id, d);
        }
        TxPayload::Grant {
            id,
            reader,
            intervals,
            expiry,
        } => grant(s, cx, from, id, *reader, *intervals, *expiry)?,
        TxPayload::Revoke { id, reader } => {
            owned_data(s, from, id, "revoke")?;
            let key = GrantKey {
                data: *id,
                reader: *reader,
            };
            let Some(mut g) = s.get::<Grants>(&key) else {
                return Err(ChainError::UnknownGrant {
                    id: *id,
                    reader: *reader,
                });
            };
            if g.revoked_at.is_some() {
                return Err(ChainError::AlreadyRevoked {
                    id: *id,
                    reader: *reader,
                });
            }
            g.revoked_at = Some(cx.height);
            s.set::<Grants>(key, g);
        }
        TxPayload::EconomyDeposit { amount } => economy_deposit(s, cx, from, *amount)?,
        TxPayload::EconomyWithdraw { amount } => economy_withdraw(s, cx, from, *amount)?,
        TxPayload::RNodeDeposit { amount } => {
            positive(*amount, "RNode deposit")?;
            let old = s.get::<RNodes>(&from).unwrap_or_default().0;
            let new = old.checked_add(*amount).ok_or(ChainError::Overflow {
                what: "RNode deposit",
            })?;
            if new < cx.cfg.rnode_min_deposit {
                return Err(ChainError::BelowMinimum {
                    pool: "RNode",
                    got: new,
                    min: cx.cfg.rnode_min_deposit,
                });
            }
            debit(s, from, *amount)?;
            s.set::<RNodes>(from, Funds(new));
        }
        TxPayload::RNodeWithdraw { amount } => {
            positive(*amount, "RNode withdrawal")?;
            if let Some(until) = s.get::<Locked>(&from) {
                if until >= cx.term {
                    return Err(ChainError::LockedWhileElected { addr: from, until });
                }
            }
            let old = s.get::<RNodes>(&from).unwrap_or_default().0;
            let left = old
                .checked_sub(*amount)
                .ok_or(ChainError::InsufficientBalance {
                    need: *amount,
                    have: old,
                })?;
            if left != 0 && left < cx.cfg.rnode_min_deposit {
                return Err(ChainError::BelowMinimum {
                    pool: "RNode",
                    got: left,
                    min: cx.cfg.rnode_min_deposit,
                });
            }
            if left == 0 {
                s.del::<RNodes>(&from);
            } else {
                s.set::<RNodes>(from, Funds(left));
            }
            credit(s, from, *amount)?;
        }
        TxPayload::RegisterProxyContract { proxy, real } => {
            owner_only(cx, from, "register_proxy_contract")?;
            s.set::<Proxies>(*proxy, *real);
        }
        TxPayload::UpdateRptWeight { weight, value } => {
            let (i, function) = match weight {
                RptWeight::Alpha => (0, "update_alpha"),
                RptWeight::Beta => (1, "update_beta"),
                RptWeight::Gamma => (2, "update_gamma"),
                RptWeight::Psi => (3, "update_psi"),
                RptWeight::Omega => (4, "update_omega"),
            };
            owner_only(cx, from, function)?;
            if *value > MAX_WEIGHT {
                return Err(ChainError::ParamOutOfBounds {
                    what: "rpt weight",
                    value: u64::from(*value),
                    max: u64::from(MAX_WEIGHT),
                });
            }
            let mut m = meta(s);
            m.weights[i] = *value;
            set_meta(s, m);
        }
        TxPayload::UpdateRptWindow { blocks } => {
            owner_only(cx, from, "update_window")?;
            if *blocks == 0 || *blocks > MAX_WINDOW {
                return Err(ChainError::ParamOutOfBounds {
                    what: "rpt window",
                    value: *blocks,
                    max: MAX_WINDOW,
                });
            }
            let mut m = meta(s);
            m.rpt_window = *blocks;
            set_meta(s, m);
        }
        TxPayload::ClaimCampaign {
            terms,
            deposit,
            cpu_nonce,
            memory_nonce,
            seed_number,
        } => campaign::claim(
            s,
            cx,
            from,
            *terms,
            *deposit,
            *cpu_nonce,
            *memory_nonce,
            *seed_number,
        )?,
        TxPayload::QuitCampaign => campaign::quit(s, cx, from)?,
        TxPayload::PunishCandidate { candidate } => campaign::punish(s, cx, from, *candidate)?,
        TxPayload::UpdateCpuDifficulty { bits } => campaign::update_cpu(s, cx, from, *bits)?,
        TxPayload::UpdateMemoryDifficulty { log2_kib } => {
            campaign::update_memory(s, cx, from, *log2_kib)?
        }
        TxPayload::ListItem {
            name,
            data,
            price,
            description,
            agent,
        } => return pdash::list(s, cx, from, name, *data, *price, description, *agent),
        TxPayload::DelistItem { item } => pdash::delist(s, from, *item)?,
        TxPayload::EscrowDeposit { amount } => pdash::escrow_deposit(s, from, *amount)?,
        TxPayload::EscrowWithdraw { amount } => pdash::escrow_withdraw(s, from, *amount)?,
        TxPayload::PlaceOrder { item, buyer_key } => {
            return pdash::place_order(s, cx, from, *item, *buyer_key)
        }
        TxPayload::CancelOrder { order } => pdash::cancel(s, cx, from, *order)?,
        TxPayload::SellerConfirm { order, sealed_key } => {
            pdash::seller_confirm(s, cx, from, *order, sealed_key)?
        }
        TxPayload::BuyerConfirm { order } => pdash::buyer_confirm(s, cx, from, *order)?,
        TxPayload::AgentRelease { order } => pdash::agent_release(s, cx, from, *order)?,
        TxPayload::Dispute { order } => pdash::dispute(s, cx, from, *order)?,
        TxPayload::AgentResolve { order, refund } => {
            pdash::agent_resolve(s, cx, from, *order, *refund)?
        }
        TxPayload::Evidence(dv) => return evidence(s, cx, from, dv),
        TxPayload::AuditReport {
            holder,
            passed,
            failed,
        } => {
            if *holder == from {
                return Err(ChainError::SelfReport);
            }
            let n = u64::from(*passed) + u64::from(*failed);
            if n == 0 || n > MAX_AUDITS_PER_REPORT {
                return Err(ChainError::ParamOutOfBounds {
                    what: "audits in one report",
                    value: n,
                    max: MAX_AUDITS_PER_REPORT,
                });
            }
            bump(s, *holder, cx.height, |a| {
                a.audits_passed = a.audits_passed.saturating_add(*passed);
                a.audits_failed = a.audits_failed.saturating_add(*failed);
            });
        }
    }
    Ok(TxOutcome::Applied)
}

fn owned_data<S: Store>(
    s: &S,
    caller: Address,
    id: &DataId,
    function: &'static str,
) -> ChainResult<DataRecord> {
    let d = s
        .get::<DataTable>(id)
        .ok_or(ChainError::UnknownData { id: *id })?;
    if d.owner != caller {
        return Err(ChainError::NotOwner { caller, function });
    }
    Ok(d)
}

fn grant<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    id: &DataId,
    reader: Address,
    intervals: IntervalRange,
    expiry: u64,
) -> ChainResult<()> {
    let d = owned_data(s, from, id, "grant")?;
    if d.policy != AccessPolicy::GrantBased {
        return Err(ChainError::GrantsDisabled { id: *id });
    }
    if !intervals.is_valid() || !d.intervals.covers(&intervals) {
        return Err(ChainError::IntervalOutOfRange {
            start: intervals.start,
            end: intervals.end,
        });
    }
    if expiry <= cx.height {
        return Err(ChainError::ExpiryInPast {
            expiry,
            height: cx.height,
        });
    }
    s.set::<Grants>(
        GrantKey { data: *id, reader },
        GrantRecord {
            intervals,
            expiry,
            granted_at: cx.height,
            revoked_at: None,
        },
    );
    Ok(())
}

fn economy_deposit<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    amount: Amount,
) -> ChainResult<()> {
    positive(amount, "economy deposit")?;
    let phase = Seasons::of(cx.cfg).phase(cx.height);
    if phase != SeasonPhase::Raising {
        return Err(ChainError::WrongPhase {
            op: "economy deposit",
            phase: phase.name(),
        });
    }
    let old = s.get::<Economy>(&from).unwrap_or_default().0;
    let new = old.checked_add(amount).ok_or(ChainError::Overflow {
        what: "economy deposit",
    })?;
    if new < cx.cfg.economy_min_deposit {
        return Err(ChainError::BelowMinimum {
            pool: "economy",
            got: new,
            min: cx.cfg.economy_min_deposit,
        });
    }
    let mut m = meta(s);
    m.economy_total = m
        .economy_total
        .checked_add(amount)
        .ok_or(ChainError::Overflow {
            what: "economy pool",
        })?;
    debit(s, from, amount)?;
    s.set::<Economy>(from, Funds(new));
    set_meta(s, m);
    Ok(())
}

fn economy_withdraw<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    amount: Amount,
) -> ChainResult<()> {
    positive(amount, "economy withdrawal")?;
    let phase = Seasons::of(cx.cfg).phase(cx.height);
    if phase == SeasonPhase::Locked {
        return Err(ChainError::WrongPhase {
            op: "economy withdrawal",
            phase: phase.name(),
        });
    }
    let old = s.get::<Economy>(&from).unwrap_or_default().0;
    let left = old
        .checked_sub(amount)
        .ok_or(ChainError::InsufficientBalance {
            need: amount,
            have: old,
        })?;
    if left != 0 && left < cx.cfg.economy_min_deposit {
        return Err(ChainError::BelowMinimum {
            pool: "economy",
            got: left,
            min: cx.cfg.economy_min_deposit,
        });
    }
    let mut m = meta(s);
    m.economy_total = m.economy_total.saturating_sub(amount);
    set_meta(s, m);
    if left == 0 {
        s.del::<Economy>(&from);
    } else {
        s.set::<Economy>(from, Funds(left));
    }
    credit(s, from, amount)
}

/// Detains `amount` into the campaign contract's detained funds.
pub(crate) fn detain<S: Store>(s: &mut S, amount: Amount) -> ChainResult<()> {
    if amount == 0 {
        return Ok(());
    }
    let mut m = meta(s);
    m.detained = m
        .detained
        .checked_add(amount)
        .ok_or(ChainError::Overflow { what: "detained" })?;
    set_meta(s, m);
    Ok(())
}

/// The penalty transaction of an impeach block: detains 1/10 of the proposer's campaign
/// deposit (nothing if it has none, e.g. a default proposer), records the impeachment and
/// counts a fault against its BM score.
pub(crate) fn penalize<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    proposer: Address,
    number: u64,
) -> ChainResult<TxOutcome> {
    let mut detained = 0;
    if let Some(mut c) = s.get::<Candidates>(&proposer) {
        detained = c.deposit / IMPEACH_PENALTY_DIVISOR;
        c.deposit -= detained;
        s.set::<Candidates>(proposer, c);
    }
    detain(s, detained)?;
    s.set::<Impeachments>(
        HeightKey {
            height: number,
            addr: proposer,
        },
        Funds(detained),
    );
    bump(s, proposer, cx.height, |a| {
        a.faults = a.faults.saturating_add(1)
    });
    Ok(TxOutcome::Penalized { proposer, detained })
}

/// Checks double-vote evidence (signatures are verified by the caller's batch).
pub fn check_evidence(cfg: &ChainConfig, dv: &DoubleVote) -> ChainResult<()> {
    let (a, b) = (&dv.a, &dv.b);
    if a.validator != b.validator {
        return Err(ChainError::BadEvidence {
            reason: "votes by different validators",
        });
    }
    if a.kind.is_prepare_type() != b.kind.is_prepare_type() {
        return Err(ChainError::BadEvidence {
            reason: "votes of different kinds",
        });
    }
    if a.number != b.number {
        return Err(ChainError::BadEvidence {
            reason: "votes at different heights",
        });
    }
    if a.round != b.round {
        return Err(ChainError::BadEvidence {
            reason: "votes in different rounds",
        });
    }
    if a.block == b.block {
        return Err(ChainError::BadEvidence {
            reason: "votes for the same block",
        });
    }
    if !cfg.validators.contains(&a.validator) {
        return Err(ChainError::NotValidator { addr: a.validator });
    }
    Ok(())
}

/// Punishes a double vote once per (validator, height): detains the whole campaign deposit
/// (ending the candidacy) and 1/10 of the RNode deposit, records it, counts a fault.
fn evidence<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    reporter: Address,
    dv: &DoubleVote,
) -> ChainResult<TxOutcome> {
    check_evidence(cx.cfg, dv)?;
    let validator = dv.a.validator;
    let key = HeightKey {
        height: dv.a.number,
        addr: validator,
    };
    if s.get::<Equivocations>(&key).is_some() {
        return Err(ChainError::AlreadyPunished {
            validator,
            number: dv.a.number,
        });
    }
    let mut detained: Amount = 0;
    if let Some(c) = s.get::<Candidates>(&validator) {
        detained = c.deposit;
        s.del::<Candidates>(&validator);
    }
    if let Some(Funds(r)) = s.get::<RNodes>(&validator) {
        let cut = r / EQUIVOCATION_RNODE_DIVISOR;
        if cut > 0 {
            s.set::<RNodes>(validator, Funds(r - cut));
            detained = detained.saturating_add(cut);
        }
    }
    detain(s, detained)?;
    s.set::<Equivocations>(
        key,
        Equivocation {
            kind: dv.a.kind,
            block_a: dv.a.block,
            block_b: dv.b.block,
            reporter,
            detained,
            recorded_at: cx.height,
        },
    );
    bump(s, validator, cx.height, |a| {
        a.faults = a.faults.saturating_add(1)
    });
    Ok(TxOutcome::Punished {
        validator,
        detained,
    })
}
