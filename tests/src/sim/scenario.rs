//! Scenarios: network faults, byzantine roles and what the checker expects.

/// Network behaviour; every link gets its own values around these (seeded).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetFaults {
    /// Probability that a message on a link is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// One-way delay range in ms (random delays also reorder messages).
    pub delay_ms: (u64, u64),
    /// Fraction of links that are 4× slower.
    pub slow_links: f64,
}

impl NetFaults {
    /// A calm LAN.
    pub const CALM: NetFaults = NetFaults {
        drop: 0.0,
        duplicate: 0.0,
        delay_ms: (2, 40),
        slow_links: 0.0,
    };
    /// Loss, duplication, reordering and slow links.
    pub const LOSSY: NetFaults = NetFaults {
        drop: 0.15,
        duplicate: 0.1,
        delay_ms: (1, 120),
        slow_links: 0.2,
    };
}

/// What a faulty proposer does on its turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProposerFault {
    /// Never proposes.
    Silent,
    /// Sends two valid blocks to the two halves of the honest validators (both to
    /// byzantine validators).
    Equivocate,
    /// Sends an invalid block: bad seal, early or future timestamp, wrong state root or a
    /// body the executor rejects (chosen per turn).
    Invalid,
    /// Proposes honestly on its turns, and also blocks for other proposers' heights (own
    /// seal, or a forged seal in the scheduled proposer's name).
    WrongTurn,
}

/// What a byzantine validator does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidatorFault {
    /// Crashes at a random time early in the run.
    Crash,
    /// Runs the protocol but sends every vote to half the nodes and a conflicting vote of
    /// the same kind and height to the other half.
    DoubleVote,
    /// Sends forged votes, seals and certificates in other validators' names.
    Forger,
    /// Signs PREPARE and COMMIT (and the impeach pair) for every block it sees.
    VoteAll,
    /// Twins: two honest machines sharing this validator's key, each in one half of a
    /// partition that lasts the whole run.
    Twins,
}

/// How many validators misbehave, relative to f (n = 3f+1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Faulty {
    /// Exactly f: safety and liveness must hold.
    F,
    /// f+1: beyond the fault bound (negative controls).
    FPlusOne,
}

/// One simulated scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name (the test's name, for `SIM_SEED=<n> cargo test ... <name>`).
    pub name: &'static str,
    /// Committee sizes (3f+1); seed `s` runs with `sizes[s % len]`.
    pub sizes: &'static [usize],
    /// Proposer seats (and proposer nodes).
    pub proposers: usize,
    /// Honest nodes must reach this height.
    pub target_height: u64,
    /// Virtual time limit.
    pub max_time_ms: u64,
    /// Network faults.
    pub net: NetFaults,
    /// Largest absolute per-node clock skew.
    pub skew_ms: u64,
    /// A random partition of all nodes that later heals.
    pub partition: bool,
    /// A random validator or the civilian is isolated for a while, then healed.
    pub isolate: bool,
    /// One random proposer misbehaves this way on all its turns.
    pub proposer_fault: Option<ProposerFault>,
    /// This many random validators misbehave this way.
    pub validator_fault: Option<(ValidatorFault, Faulty)>,
    /// An outsider replays old messages.
    pub replayer: bool,
    /// Negative control: the checker must find a safety violation.
    pub expect_violation: bool,
    /// No impeach block may appear (calm network, honest proposers).
    pub expect_no_impeach: bool,
    /// Signed transactions per proposed body (inclusive range; pooled evidence and a faulty
    /// proposer's extra transactions come on top).
    pub txs_per_block: (usize, usize),
}

impl Scenario {
    /// A calm network with honest proposers and validators, n = 4 and n = 7 alternating.
    pub fn base(name: &'static str) -> Scenario {
        Scenario {
            name,
            sizes: &[4, 7],
            proposers: 3,
            target_height: 6,
            max_time_ms: 120_000,
            net: NetFaults::CALM,
            skew_ms: 80,
            partition: false,
            isolate: false,
            proposer_fault: None,
            validator_fault: None,
            replayer: false,
            expect_violation: false,
            expect_no_impeach: false,
            txs_per_block: (1, 3),
        }
    }

    /// The committee size seed `seed` runs with.
    pub fn n_for(&self, seed: u64) -> usize {
        match self.sizes.len() {
            0 => 4,
            l => self.sizes[(seed % l as u64) as usize],
        }
    }
}
