//! Reputation (RPT, white paper 5.1.2): five dimensions, each scored 0–100 from chain data
//! over a window of recent blocks, combined with updatable weights. Integer arithmetic only.
//!
//! Scores, for an address at height `h` over the window `(h − window, h]`:
//! * **AB** (account balance) = `min(100, 5 · bitlen(⌊(balance + RNode deposit) / 1 CPC⌋))`,
//!   a log2 scale: 1 CPC → 5, 1,024 CPC → 55, ≥ 524,288 CPC → 100.
//! * **TX** (transactions) = `min(100, 2 · txs sent in the window)`.
//! * **PR** (proxy reputation) = `min(100, 10 · PDash trades settled as agent in the window)`.
//! * **DC** (data contribution) = `max(0, min(100, 10 · data registered + ⌊audits passed /
//!   20⌋) − 10 · audits failed)` over the window: uploads (register contract) and storage
//!   (audits of the node's shards reported on chain by data coordinators).
//! * **BM** (blockchain maintenance) = `max(0, min(100, 10 · normal blocks proposed) −
//!   50 · faults)`, faults being impeachments and punished double votes in the window.
//!
//! `RPT = α·AB + β·TX + γ·PR + ψ·DC + ω·BM` with weights per hundred (defaults 50, 15, 10,
//! 15, 10), so the total is in hundredths: 0..=10,000 with the default weights.

use crate::state::Activity;
use crate::types::{Amount, CPC};

/// Default weights α, β, γ, ψ, ω per hundred.
pub const DEFAULT_WEIGHTS: [u32; 5] = [50, 15, 10, 15, 10];
/// Default RPT window in blocks.
pub const DEFAULT_WINDOW: u64 = 100;
/// Longest RPT window; activity older than this is pruned from the state.
pub const MAX_WINDOW: u64 = 10_000;
/// Largest single weight.
pub const MAX_WEIGHT: u32 = 1_000;

/// One address's reputation and its five dimension scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rpt {
    /// Weighted total, in hundredths.
    pub total: u64,
    /// Account balance score.
    pub ab: u64,
    /// Transactions score.
    pub tx: u64,
    /// Proxy reputation score.
    pub pr: u64,
    /// Data contribution score.
    pub dc: u64,
    /// Blockchain maintenance score.
    pub bm: u64,
}

/// AB from the balance (plus RNode deposit) in base units.
pub fn ab_score(holdings: Amount) -> u64 {
    let cpc = holdings / CPC;
    let bitlen = u64::from(128 - cpc.leading_zeros());
    (5 * bitlen).min(100)
}

/// TX from transactions sent in the window.
pub fn tx_score(txs: u32) -> u64 {
    (2 * u64::from(txs)).min(100)
}

/// PR from proxy work in the window.
pub fn pr_score(proxy: u32) -> u64 {
    (10 * u64::from(proxy)).min(100)
}

/// DC from uploads and storage audits in the window.
pub fn dc_score(uploads: u32, audits_passed: u32, audits_failed: u32) -> u64 {
    (10 * u64::from(uploads) + u64::from(audits_passed) / 20)
        .min(100)
        .saturating_sub(10 * u64::from(audits_failed))
}

/// BM from blocks proposed and faults in the window.
pub fn bm_score(proposed: u32, faults: u32) -> u64 {
    (10 * u64::from(proposed))
        .min(100)
        .saturating_sub(50 * u64::from(faults))
}

/// Combines the scores of `holdings` and the window's summed `activity` with `weights`.
pub fn score(holdings: Amount, activity: &Activity, weights: &[u32; 5]) -> Rpt {
    let ab = ab_score(holdings);
    let tx = tx_score(activity.txs);
    let pr = pr_score(activity.proxy);
    let dc = dc_score(
        activity.uploads,
        activity.audits_passed,
        activity.audits_failed,
    );
    let bm = bm_score(activity.proposed, activity.faults);
    let total = [ab, tx, pr, dc, bm]
        .iter()
        .zip(weights)
        .map(|(s, w)| s * u64::from(*w))
        .sum();
    Rpt {
        total,
        ab,
        tx,
        pr,
        dc,
        bm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimension_tables() {
        for (cpc, want) in [
            (0, 0),
            (1, 5),
            (2, 10),
            (3, 10),
            (1024, 55),
            (524_287, 95),
            (524_288, 100),
            (10u128.pow(9), 100),
        ] {
            assert_eq!(ab_score(cpc * CPC), want, "{cpc} CPC");
        }
        assert_eq!(ab_score(CPC - 1), 0);
        for (n, want) in [(0, 0), (1, 2), (49, 98), (50, 100), (u32::MAX, 100)] {
            assert_eq!(tx_score(n), want);
        }
        for (n, want) in [(0, 0), (1, 10), (9, 90), (10, 100), (u32::MAX, 100)] {
            assert_eq!(pr_score(n), want);
            assert_eq!(dc_score(n, 0, 0), want);
        }
        // Storage: 20 passed audits are worth one upload; each failure costs as much as an
        // upload earns, and the score never goes below zero.
        for (u, p, f, want) in [
            (0, 0, 0, 0),
            (0, 19, 0, 0),
            (0, 200, 0, 10),
            (2, 200, 0, 30),
            (2, 200, 1, 20),
            (2, 200, 4, 0),
            (0, u32::MAX, 0, 100),
            (10, u32::MAX, 3, 70),
            (0, 0, u32::MAX, 0),
        ] {
            assert_eq!(
                dc_score(u, p, f),
                want,
                "{u} uploads, {p} passed, {f} failed"
            );
        }
        for (p, f, want) in [
            (0, 0, 0),
            (3, 0, 30),
            (10, 0, 100),
            (50, 0, 100),
            (10, 1, 50),
            (10, 2, 0),
            (3, 1, 0),
            (u32::MAX, u32::MAX, 0),
        ] {
            assert_eq!(bm_score(p, f), want, "p={p} f={f}");
        }
    }

    #[test]
    fn weights_combine() {
        let a = Activity {
            txs: 50,
            uploads: 10,
            proxy: 10,
            proposed: 10,
            faults: 0,
            ..Activity::default()
        };
        let r = score(524_288 * CPC, &a, &DEFAULT_WEIGHTS);
        assert_eq!(r.total, 10_000);
        let r = score(0, &a, &DEFAULT_WEIGHTS);
        assert_eq!(r.total, 5_000);
        let only_dc = Activity {
            uploads: 5,
            ..Activity::default()
        };
        let r = score(0, &only_dc, &DEFAULT_WEIGHTS);
        assert_eq!((r.dc, r.total), (50, 50 * 15));
        let r = score(0, &only_dc, &[0, 0, 0, 100, 0]);
        assert_eq!(r.total, 5_000);
        // A storage node failing audits loses Data Contribution.
        let failing = Activity {
            uploads: 5,
            audits_passed: 100,
            audits_failed: 2,
            ..Activity::default()
        };
        assert_eq!(score(0, &failing, &DEFAULT_WEIGHTS).dc, 35);
    }
}
