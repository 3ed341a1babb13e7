//! Supply creation: the maintenance reward per block and the economy pool's seasons and
//! basic reward (white paper 5.1.3). These are the only two ways supply grows.
//!
//! * Maintenance: 12.65, 9.51, 7.13, 5.39, 4.03 CPC per normal block in years 1–5, where the
//!   year index is `number / blocks_per_year` (block 1 .. blocks_per_year−1 is year 1), and
//!   nothing from year 6 on. The per-block figures are the white paper's (10 s period); a
//!   chain with another period keeps the per-block figures and scales the year by
//!   `blocks_per_year`. Impeach blocks pay nothing.
//! * Seasons: 90 days = 3 raising + 84 locked + 3 settlement, in blocks:
//!   `raising = settlement = max(1, blocks_per_year·3/365)`,
//!   `season = max(raising + settlement + 1, blocks_per_year·90/365)`,
//!   `locked = season − raising − settlement`. Season `s` covers heights
//!   `[s·season, (s+1)·season)`; the phase is `height mod season`.
//! * Basic reward: at the first block of each settlement phase every depositor receives
//!   `⌊R · d / D⌋` with `R = ⌊5,000,000 CPC · season / blocks_per_year⌋` (the yearly
//!   5,000,000·d/D prorated to one season), d its deposit and D the pool total; computed with
//!   a 256-bit intermediate product so it never overflows.

use crate::config::ChainConfig;
use crate::types::{Amount, CPC};

/// Maintenance reward per block in years 1–5, in hundredths of a CPC.
pub const MAINTENANCE_CENTI_CPC: [u128; 5] = [1265, 951, 713, 539, 403];

/// Yearly basic reward of the economy pool (5,000,000 CPC).
pub const BASIC_REWARD_PER_YEAR: Amount = 5_000_000 * CPC;

/// The maintenance reward of a normal block at height `number`.
pub fn maintenance_reward(cfg: &ChainConfig, number: u64) -> Amount {
    let year = number.checked_div(cfg.blocks_per_year).unwrap_or(u64::MAX);
    match usize::try_from(year)
        .ok()
        .and_then(|y| MAINTENANCE_CENTI_CPC.get(y))
    {
        Some(c) => c * (CPC / 100),
        None => 0,
    }
}

/// A phase of an economy pool season.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeasonPhase {
    /// Deposits and withdrawals open.
    Raising,
    /// Deposits locked.
    Locked,
    /// Rewards paid at its first block; withdrawals open.
    Settlement,
}

impl SeasonPhase {
    /// Name for errors.
    pub fn name(self) -> &'static str {
        match self {
            SeasonPhase::Raising => "raising",
            SeasonPhase::Locked => "locked",
            SeasonPhase::Settlement => "settlement",
        }
    }
}

/// Season lengths in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seasons {
    /// Raising phase length.
    pub raising: u64,
    /// Locked phase length.
    pub locked: u64,
    /// Settlement phase length.
    pub settlement: u64,
}

impl Seasons {
    /// The season shape for `cfg.blocks_per_year`.
    pub fn of(cfg: &ChainConfig) -> Seasons {
        let bpy = u128::from(cfg.blocks_per_year);
        let edge = u64::try_from(bpy * 3 / 365).unwrap_or(u64::MAX).max(1);
        let season = u64::try_from(bpy * 90 / 365)
            .unwrap_or(u64::MAX)
            .max(edge.saturating_mul(2).saturating_add(1));
        Seasons {
            raising: edge,
            locked: season.saturating_sub(edge.saturating_mul(2)),
            settlement: edge,
        }
    }

    /// Blocks per season.
    pub fn len(&self) -> u64 {
        self.raising
            .saturating_add(self.locked)
            .saturating_add(self.settlement)
    }

    /// Always false: a season has at least three blocks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The phase at `height`.
    pub fn phase(&self, height: u64) -> SeasonPhase {
        let pos = height % self.len().max(1);
        if pos < self.raising {
            SeasonPhase::Raising
        } else if pos < self.raising.saturating_add(self.locked) {
            SeasonPhase::Locked
        } else {
            SeasonPhase::Settlement
        }
    }

    /// Whether `height` is the first block of a settlement phase (rewards are paid there).
    pub fn is_settlement_start(&self, height: u64) -> bool {
        height % self.len().max(1) == self.raising.saturating_add(self.locked)
    }

    /// The basic reward shared by the pool per season (R).
    pub fn season_reward(&self, cfg: &ChainConfig) -> Amount {
        mul_div(
            BASIC_REWARD_PER_YEAR,
            u128::from(self.len()),
            u128::from(cfg.blocks_per_year.max(1)),
        )
        .unwrap_or(0)
    }
}

/// The basic reward of a depositor: ⌊R·d/D⌋ (0 when D = 0).
pub fn basic_reward(season_reward: Amount, deposit: Amount, total: Amount) -> Amount {
    mul_div(season_reward, deposit, total).unwrap_or(0)
}

/// ⌊a·b/c⌋ with a 256-bit intermediate; `None` if c = 0 or the quotient exceeds u128.
pub fn mul_div(a: u128, b: u128, c: u128) -> Option<u128> {
    if c == 0 {
        return None;
    }
    let (hi, lo) = mul_wide(a, b);
    if hi >= c {
        return None;
    }
    // Long division of the 256-bit (hi, lo) by c, one bit at a time; hi < c throughout.
    let mut rem = hi;
    let mut q: u128 = 0;
    for i in (0..128).rev() {
        let carry = rem >> 127;
        rem = (rem << 1) | ((lo >> i) & 1);
        q <<= 1;
        if carry == 1 || rem >= c {
            rem = rem.wrapping_sub(c);
            q |= 1;
        }
    }
    Some(q)
}

fn mul_wide(a: u128, b: u128) -> (u128, u128) {
    const M: u128 = u64::MAX as u128;
    let (a0, a1) = (a & M, a >> 64);
    let (b0, b1) = (b & M, b >> 64);
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 64) + (p01 & M) + (p10 & M);
    let lo = (p00 & M) | (mid << 64);
    let hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);
    (hi, lo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Address;

    fn cfg(bpy: u64) -> ChainConfig {
        let mut c = ChainConfig::mainnet_like(1, vec![], vec![], Address::default());
        c.blocks_per_year = bpy;
        c
    }

    #[test]
    fn maintenance_schedule_boundaries() {
        let c = cfg(1000);
        let centi = CPC / 100;
        let table = [
            (1, 1265),
            (999, 1265),
            (1000, 951),
            (1999, 951),
            (2000, 713),
            (3000, 539),
            (4000, 403),
            (4999, 403),
            (5000, 0),
            (u64::MAX, 0),
        ];
        for (n, want) in table {
            assert_eq!(maintenance_reward(&c, n), want * centi, "block {n}");
        }
        assert_eq!(maintenance_reward(&cfg(0), 5), 0);
    }

    #[test]
    fn seasons_in_blocks() {
        let s = Seasons::of(&cfg(365 * 24 * 360));
        assert_eq!(s.raising, 3 * 24 * 360);
        assert_eq!(s.settlement, 3 * 24 * 360);
        assert_eq!(s.len(), 90 * 24 * 360);
        assert_eq!(s.locked, 84 * 24 * 360);
        let s = Seasons::of(&cfg(3650)); // 10 blocks a day
        assert_eq!((s.raising, s.locked, s.settlement), (30, 840, 30));
        assert_eq!(s.phase(0), SeasonPhase::Raising);
        assert_eq!(s.phase(29), SeasonPhase::Raising);
        assert_eq!(s.phase(30), SeasonPhase::Locked);
        assert_eq!(s.phase(869), SeasonPhase::Locked);
        assert_eq!(s.phase(870), SeasonPhase::Settlement);
        assert!(s.is_settlement_start(870));
        assert_eq!(s.phase(899), SeasonPhase::Settlement);
        assert_eq!(s.phase(900), SeasonPhase::Raising);
        // R = 5,000,000 · 900 / 3650 CPC.
        assert_eq!(s.season_reward(&cfg(3650)), 5_000_000 * CPC * 900 / 3650);
        // Tiny years still give three non-empty phases.
        let s = Seasons::of(&cfg(10));
        assert!(s.raising >= 1 && s.locked >= 1 && s.settlement >= 1);
    }

    #[test]
    fn mul_div_is_exact_and_wide() {
        assert_eq!(mul_div(10, 20, 3), Some(66));
        assert_eq!(mul_div(1, 1, 0), None);
        let big = 1_000_000_000 * CPC; // 1e27
        assert_eq!(mul_div(big, big, big), Some(big));
        assert_eq!(mul_div(u128::MAX, u128::MAX, u128::MAX), Some(u128::MAX));
        assert_eq!(mul_div(u128::MAX, 2, 1), None);
        assert_eq!(
            basic_reward(1_000 * CPC, 20_000 * CPC, 80_000 * CPC),
            250 * CPC
        );
        assert_eq!(basic_reward(1, 1, 0), 0);
    }
}
