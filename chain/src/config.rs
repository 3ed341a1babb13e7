//! Chain parameters: identity, timing, committee sizes, economics. One [`ChainConfig`] is
//! fixed at genesis and shared by every node of a network.

use crate::types::{Address, Amount, CPC};

/// Parameters of one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainConfig {
    /// Chain id, part of every signature's domain.
    pub chain_id: u32,
    /// Target time between blocks (CPChain mainnet: 10 s).
    pub period_ms: u64,
    /// How long validators wait for a block or certificate before impeaching (mainnet 10 s).
    pub impeach_timeout_ms: u64,
    /// Largest clock skew tolerated on block timestamps.
    pub max_clock_skew_ms: u64,
    /// Proposer seats per term (mainnet 12; the white paper's default 21).
    pub seats: usize,
    /// Consecutive blocks each proposer makes in its turn (mainnet 3).
    pub view_len: u64,
    /// The validators committee (3f+1 members, nominated, fixed at genesis here).
    pub validators: Vec<Address>,
    /// Proposers used until the first election has candidates (bootstrap).
    pub default_proposers: Vec<Address>,
    /// Minimum economy pool deposit (20,000 CPC).
    pub economy_min_deposit: Amount,
    /// Minimum RNode pool deposit (200,000 CPC).
    pub rnode_min_deposit: Amount,
    /// Blocks per year, for the reward schedule (at a 10 s period: 3,153,600).
    pub blocks_per_year: u64,
    /// The address allowed to call owner-only contract functions (the "deployer").
    pub contract_owner: Address,
}

impl ChainConfig {
    /// Blocks per term: every seat proposes `view_len` blocks.
    pub fn term_len(&self) -> u64 {
        (self.seats as u64).saturating_mul(self.view_len)
    }

    /// Faulty validators tolerated: n = 3f + 1.
    pub fn f(&self) -> usize {
        self.validators.len().saturating_sub(1) / 3
    }

    /// Votes needed for a certificate: 2f + 1.
    pub fn quorum(&self) -> usize {
        2 * self.f() + 1
    }

    /// CPChain mainnet's shape with the given committees: 10 s period, 10 s impeach
    /// timeout, 12 seats, view 3.
    pub fn mainnet_like(
        chain_id: u32,
        validators: Vec<Address>,
        default_proposers: Vec<Address>,
        contract_owner: Address,
    ) -> Self {
        ChainConfig {
            chain_id,
            period_ms: 10_000,
            impeach_timeout_ms: 10_000,
            max_clock_skew_ms: 1_000,
            seats: 12,
            view_len: 3,
            validators,
            default_proposers,
            economy_min_deposit: 20_000 * CPC,
            rnode_min_deposit: 200_000 * CPC,
            blocks_per_year: 365 * 24 * 3600 / 10,
            contract_owner,
        }
    }
}
