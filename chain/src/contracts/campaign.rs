//! Campaign contract (`claim_campaign`, `quit_campaign`, `punish_candidate`) and the owner's
//! admission difficulty updates.
//!
//! A claim needs an RNode (≥ `rnode_min_deposit` in the RNode pool), a deposit of at least
//! [`MIN_CAMPAIGN_DEPOSIT`], 1..=[`MAX_CAMPAIGN_TERMS`] terms, and both admission proofs over
//! the hash of a block at most [`SEED_MAX_AGE`] blocks old. Candidacy covers the terms
//! `term+1 .. term+1+terms` (the election for the next term reads it). Quitting returns the
//! deposit, unless the candidate is elected for the current or a later term.

use super::admission::{
    cpu_hash, leading_zero_bits, memory_hash, MAX_CPU_DIFFICULTY, MAX_MEMORY_DIFFICULTY,
    MEMORY_TARGET_BITS,
};
use crate::error::{ChainError, ChainResult};
use crate::state::exec::{credit, debit, detain, meta, owner_only, set_meta, Ctx};
use crate::state::records::Candidate;
use crate::state::table::{BlockHashes, Candidates, Locked, RNodes, Store};
use crate::types::{Address, Amount, CPC};

/// Smallest campaign deposit.
pub const MIN_CAMPAIGN_DEPOSIT: Amount = 1_000 * CPC;
/// Most terms one claim covers.
pub const MAX_CAMPAIGN_TERMS: u64 = 10;
/// Oldest admission seed block accepted, in blocks before the current one; also how many
/// recent block hashes the state keeps.
pub const SEED_MAX_AGE: u64 = 256;

#[allow(clippy::too_many_arguments)]
pub(crate) fn claim<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    terms: u64,
    deposit: Amount,
    cpu_nonce: u64,
    memory_nonce: u64,
    seed_number: u64,
) -> ChainResult<()> {
    if s.get::<RNodes>(&from).unwrap_or_default().0 < cx.cfg.rnode_min_deposit {
        return Err(ChainError::NotRNode {
            addr: from,
            min: cx.cfg.rnode_min_deposit,
        });
    }
    if s.get::<Candidates>(&from).is_some() {
        return Err(ChainError::AlreadyCandidate { addr: from });
    }
    if terms == 0 || terms > MAX_CAMPAIGN_TERMS {
        return Err(ChainError::InvalidCampaign {
            reason: "terms must be 1..=10",
        });
    }
    if deposit < MIN_CAMPAIGN_DEPOSIT {
        return Err(ChainError::BelowMinimum {
            pool: "campaign",
            got: deposit,
            min: MIN_CAMPAIGN_DEPOSIT,
        });
    }
    let fresh = seed_number < cx.height && cx.height - seed_number <= SEED_MAX_AGE;
    let seed = match s.get::<BlockHashes>(&seed_number) {
        Some(h) if fresh => h,
        _ => {
            return Err(ChainError::UnknownSeed {
                number: seed_number,
            })
        }
    };
    let m = meta(s);
    let got = leading_zero_bits(&cpu_hash(&from, cpu_nonce, &seed));
    if got < u32::from(m.cpu_difficulty) {
        return Err(ChainError::BadCpuProof {
            need: m.cpu_difficulty,
            got,
        });
    }
    let got = leading_zero_bits(&memory_hash(
        &from,
        memory_nonce,
        &seed,
        m.memory_difficulty,
    ));
    if got < u32::from(MEMORY_TARGET_BITS) {
        return Err(ChainError::BadMemoryProof {
            need: MEMORY_TARGET_BITS,
            got,
        });
    }
    let start = cx
        .term
        .checked_add(1)
        .ok_or(ChainError::Overflow { what: "term" })?;
    let end = start
        .checked_add(terms)
        .ok_or(ChainError::Overflow { what: "term" })?;
    debit(s, from, deposit)?;
    s.set::<Candidates>(
        from,
        Candidate {
            deposit,
            start_term: start,
            end_term: end,
            claimed_at: cx.height,
        },
    );
    Ok(())
}

pub(crate) fn quit<S: Store>(s: &mut S, cx: &Ctx<'_>, from: Address) -> ChainResult<()> {
    let c = s
        .get::<Candidates>(&from)
        .ok_or(ChainError::NotCandidate { addr: from })?;
    if let Some(until) = s.get::<Locked>(&from) {
        if until >= cx.term {
            return Err(ChainError::LockedWhileElected { addr: from, until });
        }
    }
    s.del::<Candidates>(&from);
    credit(s, from, c.deposit)
}

pub(crate) fn punish<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    candidate: Address,
) -> ChainResult<()> {
    owner_only(cx, from, "punish_candidate")?;
    let c = s
        .get::<Candidates>(&candidate)
        .ok_or(ChainError::NotCandidate { addr: candidate })?;
    s.del::<Candidates>(&candidate);
    detain(s, c.deposit)
}

pub(crate) fn update_cpu<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    bits: u8,
) -> ChainResult<()> {
    owner_only(cx, from, "update_cpu_difficulty")?;
    if bits > MAX_CPU_DIFFICULTY {
        return Err(ChainError::ParamOutOfBounds {
            what: "cpu difficulty",
            value: u64::from(bits),
            max: u64::from(MAX_CPU_DIFFICULTY),
        });
    }
    let mut m = meta(s);
    m.cpu_difficulty = bits;
    set_meta(s, m);
    Ok(())
}

pub(crate) fn update_memory<S: Store>(
    s: &mut S,
    cx: &Ctx<'_>,
    from: Address,
    log2_kib: u8,
) -> ChainResult<()> {
    owner_only(cx, from, "update_memory_difficulty")?;
    if log2_kib > MAX_MEMORY_DIFFICULTY {
        return Err(ChainError::ParamOutOfBounds {
            what: "memory difficulty",
            value: u64::from(log2_kib),
            max: u64::from(MAX_MEMORY_DIFFICULTY),
        });
    }
    let mut m = meta(s);
    m.memory_difficulty = log2_kib;
    set_meta(s, m);
    Ok(())
}
