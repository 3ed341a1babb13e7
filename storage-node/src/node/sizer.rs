//! How many transactions a proposer puts in its next block.
//!
//! A block must reach the validators, be checked by them and gather its certificates before
//! the round-0 timer fires, or the height goes through impeach rounds. Under a backlog a
//! fixed cap fails that: the backlog makes the next block as big as the cap allows, a big
//! block on a saturated machine outlasts the timer, the height is impeached and the backlog
//! grows (measured on the 2-core devnet: 30,000-transaction proposals turned a 10,000 tx/s
//! load into rounds of timeouts and p99 latencies of 25–37 s). So the proposer measures how
//! fast its own blocks went from proposal to final, in transactions per millisecond, and
//! sizes the next one to finish in half the timer; a proposal of ours that ended impeached
//! halves the estimate.

use std::time::Instant;

/// Weight of the newest measurement in the moving average.
const ALPHA: f64 = 0.3;

/// The proposer's block-size controller.
#[derive(Debug, Clone)]
pub struct BlockSizer {
    max: usize,
    floor: usize,
    budget_ms: f64,
    /// Transactions per millisecond from proposal to final (moving average).
    rate: Option<f64>,
    /// Our latest proposal: (height, transactions, when).
    pending: Option<(u64, usize, Instant)>,
}

impl BlockSizer {
    /// A controller for blocks of at most `max` transactions and a round-0 timer of
    /// `timeout_ms`.
    pub fn new(max: usize, timeout_ms: u64) -> BlockSizer {
        let max = max.max(1);
        BlockSizer {
            max,
            floor: (max / 16).max(500).min(max),
            budget_ms: (timeout_ms as f64 / 2.0).max(1.0),
            rate: None,
            pending: None,
        }
    }

    /// Transactions the next block may carry.
    pub fn cap(&self) -> usize {
        match self.rate {
            None => self.max,
            Some(r) => ((r * self.budget_ms) as usize).clamp(self.floor, self.max),
        }
    }

    /// We proposed `txs` transactions at height `number` at `at`.
    pub fn proposed(&mut self, number: u64, txs: usize, at: Instant) {
        self.pending = Some((number, txs, at));
    }

    /// Height `number` became final at `at`; `ours` when it is the block we proposed there
    /// (not an impeach block).
    pub fn finalized(&mut self, number: u64, ours: bool, at: Instant) {
        let Some((n, txs, sent)) = self.pending else {
            return;
        };
        if number < n {
            return;
        }
        self.pending = None;
        if number > n || !ours {
            // Our proposal never became final: it outlasted the timer (or was lost). Halve
            // the estimate so the next one is at most half as big.
            if txs >= self.floor {
                let r = txs as f64 / (2.0 * self.budget_ms);
                self.rate = Some(self.rate.map_or(r, |old| old.min(r)));
            }
            return;
        }
        // Small blocks say little about throughput (fixed latency dominates them).
        if txs < self.floor / 2 {
            return;
        }
        let ms = at.saturating_duration_since(sent).as_secs_f64() * 1e3;
        let r = txs as f64 / ms.max(1.0);
        self.rate = Some(match self.rate {
            None => r,
            Some(old) => old + ALPHA * (r - old),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn after(t: Instant, ms: u64) -> Instant {
        t + Duration::from_millis(ms)
    }

    #[test]
    fn starts_at_the_configured_cap_and_follows_measured_speed() {
        let t = Instant::now();
        let mut s = BlockSizer::new(30_000, 2_000);
        assert_eq!(s.cap(), 30_000);
        // 5,000 txs final 500 ms after proposal: 10 tx/ms, budget 1,000 ms.
        s.proposed(10, 5_000, t);
        s.finalized(10, true, after(t, 500));
        assert_eq!(s.cap(), 10_000);
        // Faster blocks raise the cap gradually, never above the configured maximum.
        for h in 11..60 {
            s.proposed(h, 20_000, t);
            s.finalized(h, true, after(t, 200));
        }
        assert_eq!(s.cap(), 30_000);
    }

    #[test]
    fn a_slow_machine_shrinks_blocks_down_to_the_floor() {
        let t = Instant::now();
        let mut s = BlockSizer::new(30_000, 2_000);
        for h in 1..40 {
            s.proposed(h, 4_000, t);
            s.finalized(h, true, after(t, 4_000));
        }
        // 1 tx/ms: the cap approaches 1,000, but never goes below the floor (1,875).
        assert_eq!(s.cap(), 1_875);
    }

    #[test]
    fn an_impeached_proposal_halves_the_cap() {
        let t = Instant::now();
        let mut s = BlockSizer::new(30_000, 2_000);
        s.proposed(5, 20_000, t);
        // Height 5 ended as an impeach block (not ours).
        s.finalized(5, false, after(t, 4_000));
        assert_eq!(s.cap(), 10_000);
        // Or the chain moved past it without our block.
        s.proposed(8, 10_000, t);
        s.finalized(9, true, after(t, 100));
        assert_eq!(s.cap(), 5_000);
    }

    #[test]
    fn small_blocks_and_other_heights_teach_nothing() {
        let t = Instant::now();
        let mut s = BlockSizer::new(30_000, 2_000);
        s.proposed(3, 100, t);
        s.finalized(3, true, after(t, 3_000));
        assert_eq!(s.cap(), 30_000);
        s.proposed(4, 5_000, t);
        // Earlier heights finalising do not count.
        s.finalized(3, true, after(t, 10_000));
        assert_eq!(s.cap(), 30_000);
        s.finalized(4, true, after(t, 1_000));
        assert_eq!(s.cap(), 5_000);
        // Nothing pending: nothing changes.
        s.finalized(5, true, after(t, 1));
        assert_eq!(s.cap(), 5_000);
    }

    #[test]
    fn tiny_configured_caps_are_respected() {
        let s = BlockSizer::new(100, 2_000);
        assert_eq!(s.cap(), 100);
        let mut s = BlockSizer::new(100, 2_000);
        let t = Instant::now();
        s.proposed(1, 100, t);
        s.finalized(1, true, after(t, 60_000));
        assert_eq!(s.cap(), 100);
    }
}
