//! DPoR election: each term the proposers committee is elected from the campaign candidates
//! by reputation (RPT) and a random seed taken from chain history, deterministically, so every
//! node that has the same chain computes the same committee. Seats propose in turn, each for
//! `view_len` consecutive heights.

use std::collections::BTreeMap;

use crypto_accel::Hash;

use crate::config::ChainConfig;
use crate::types::Address;

/// The seed of term `term`: a hash of the last block of the previous term (the white
/// paper's "random seed"), bound to the term number.
pub fn term_seed(prev_term_last_hash: Hash, term: u64) -> Hash {
    let mut b = [0u8; 40];
    b[..32].copy_from_slice(prev_term_last_hash.as_bytes());
    b[32..].copy_from_slice(&term.to_le_bytes());
    Hash::domain("cpchain dpor term seed v1", &b)
}

/// A seed-derived hash of `addr` under `what` (tie breaking or seat order).
fn keyed(what: &str, seed: &Hash, addr: &Address) -> Hash {
    let mut b = [0u8; 64];
    b[..32].copy_from_slice(seed.as_bytes());
    b[32..].copy_from_slice(&addr.0);
    Hash::domain(what, &b)
}

/// Elects up to `seats` proposers from `candidates` (address, RPT): the highest RPT win, ties
/// broken by a seed-derived hash of the address; the winners are then ordered by a
/// seed-derived shuffle. Duplicate addresses count once (with their highest RPT).
pub fn elect(candidates: &[(Address, u64)], seed: Hash, seats: usize) -> Vec<Address> {
    let mut best: BTreeMap<Address, u64> = BTreeMap::new();
    for (a, rpt) in candidates {
        let e = best.entry(*a).or_insert(*rpt);
        *e = (*e).max(*rpt);
    }
    let mut ranked: Vec<(u64, Hash, Address)> = best
        .into_iter()
        .map(|(a, rpt)| (rpt, keyed("cpchain dpor tie v1", &seed, &a), a))
        .collect();
    // Highest RPT first; among equal RPT the smaller tie hash first.
    ranked.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    ranked.truncate(seats);
    let mut order: Vec<(Hash, Address)> = ranked
        .into_iter()
        .map(|(_, _, a)| (keyed("cpchain dpor seat v1", &seed, &a), a))
        .collect();
    order.sort();
    order.into_iter().map(|(_, a)| a).collect()
}

/// [`elect`] with the bootstrap rule: with no candidates, the default proposers.
pub fn elect_committee(
    cfg: &ChainConfig,
    candidates: &[(Address, u64)],
    seed: Hash,
) -> Vec<Address> {
    let c = elect(candidates, seed, cfg.seats);
    if c.is_empty() {
        cfg.default_proposers.clone()
    } else {
        c
    }
}

/// The term height `number` belongs to (genesis is in term 0).
pub fn term_of(cfg: &ChainConfig, number: u64) -> u64 {
    number / cfg.term_len().max(1)
}

/// Who proposes height `number`: each seat proposes `view_len` consecutive heights, seats in
/// committee order, wrapping when the committee has fewer members than seats. `None` for
/// an empty committee.
pub fn proposer_of(committee: &[Address], number: u64, view_len: u64) -> Option<Address> {
    if committee.is_empty() {
        return None;
    }
    let slot = number / view_len.max(1);
    let idx = (slot % committee.len() as u64) as usize;
    committee.get(idx).copied()
}

/// The proposer schedule a node follows: the committee of the current term, and the
/// candidates the next term is elected from. When the last block of a term becomes final,
/// [`Schedule::on_final`] elects the next committee with [`term_seed`] of that block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    term: u64,
    committee: Vec<Address>,
    candidates: Vec<(Address, u64)>,
}

impl Schedule {
    /// The schedule at term `term` with its elected `committee`.
    pub fn new(term: u64, committee: Vec<Address>, candidates: Vec<(Address, u64)>) -> Self {
        Schedule {
            term,
            committee,
            candidates,
        }
    }

    /// Bootstrap: term 0 is run by the default proposers.
    pub fn bootstrap(cfg: &ChainConfig, candidates: Vec<(Address, u64)>) -> Self {
        Schedule::new(0, cfg.default_proposers.clone(), candidates)
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The current committee, in seat order.
    pub fn committee(&self) -> &[Address] {
        &self.committee
    }

    /// Replaces the candidates (RPT as of the end of the current term; the engine reads
    /// them from the state before the term's last block is final).
    pub fn set_candidates(&mut self, candidates: Vec<(Address, u64)>) {
        self.candidates = candidates;
    }

    /// The proposer of `number`, if it is in the current term.
    pub fn proposer(&self, cfg: &ChainConfig, number: u64) -> Option<Address> {
        if term_of(cfg, number) != self.term {
            return None;
        }
        proposer_of(&self.committee, number, cfg.view_len)
    }

    /// Block `number` with hash `hash` is final: at a term's end, elect the next committee.
    pub fn on_final(&mut self, cfg: &ChainConfig, number: u64, hash: Hash) {
        let next = term_of(cfg, number + 1);
        if next != self.term {
            self.committee = elect_committee(cfg, &self.candidates, term_seed(hash, next));
            self.term = next;
        }
    }
}
