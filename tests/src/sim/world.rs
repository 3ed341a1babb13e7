//! The simulated world: nodes, a seeded network with virtual time, and the checker.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::OnceLock;

use std::num::NonZeroUsize;

use chain::rewards::maintenance_reward;
use chain::{
    check_evidence, elect_committee, genesis_header, impeach_block, propose, proposer_of, term_of,
    term_seed, verify_item_id, AccessPolicy, Address, Amount, Block, BlockKind, BlockReceipt,
    Certificate, ChainConfig, DoubleVote, Header, Input, IntervalRange, KeyCache, LbftParams,
    Message, Output, Schedule, SignedTx, State, TimerKind, Tx, TxOutcome, TxPayload, Validator,
    Vote, VoteKind, CPC,
};
use crypto_accel::{
    verify_each, BatchVerifier, CpuBatchVerifier, CpuVerifierConfig, DataId, Hash, Keypair,
    MessageKind, SigDomain, Signature, VerifyBatch, VerifyReport,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::scenario::{Faulty, ProposerFault, Scenario, ValidatorFault};

/// Global time at which the simulation starts (local clocks may be skewed below it).
const T0: u64 = 10_000;
/// Period, impeach timeout and skew bound of the simulated chain.
const PERIOD_MS: u64 = 1_000;
const IMPEACH_TIMEOUT_MS: u64 = 1_000;
const MAX_SKEW_MS: u64 = 250;
const RESEND_MS: u64 = 300;
/// A transfer of this amount overspends any account, so the real executor rejects it.
const POISON_AMOUNT: u128 = u128::MAX;
/// Funded user keys that sign the transfers and data registrations in block bodies.
const USERS: usize = 8;
const USER_FUND: Amount = 1_000_000 * CPC;
/// Proposers pay the fees of the evidence they submit.
const PROPOSER_FUND: Amount = 1_000 * CPC;
/// Validators get enough to join the RNode pool (so a punished double vote detains funds).
const VALIDATOR_EXTRA: Amount = 1_000 * CPC;
const TX_FEE: Amount = CPC / 1_000;
/// Most RNode deposits and evidence transactions per block (bodies stay small).
const MAX_DEPOSITS_PER_BLOCK: usize = 2;
const MAX_EVIDENCE_PER_BLOCK: usize = 8;

/// What one run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Hash over every delivered event: same seed → same trace.
    pub trace: Hash,
    /// Safety, certificate, liveness and expectation failures (empty = pass).
    pub violations: Vec<String>,
    /// Whether a *safety* violation (two final blocks at one height) was seen.
    pub safety_violated: bool,
    /// Lowest height reached by an honest validator or the civilian.
    pub min_height: u64,
    /// Impeach blocks on the canonical chain.
    pub impeach_blocks: u64,
    /// Evidence outputs from honest validators.
    pub evidence: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Signatures actually verified (cache misses).
    pub sig_checks: u64,
    /// Virtual time at the end.
    pub end_ms: u64,
    /// Distinct (validator, height) double votes punished on the canonical chain.
    pub punished: u64,
    /// Signed transactions in canonical final blocks.
    pub final_txs: u64,
}

#[derive(Debug)]
enum Event {
    Deliver {
        to: usize,
        from: usize,
        msg: Rc<Message>,
    },
    Timer {
        node: usize,
        kind: TimerKind,
        at_local: u64,
    },
    /// A proposer's turn (or a re-send of its block).
    Propose {
        node: usize,
        number: u64,
    },
    Crash {
        node: usize,
    },
    Partition,
    Heal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Validator,
    Proposer,
    Civilian,
    Replayer,
}

#[derive(Debug)]
struct Node {
    role: Role,
    /// The protocol machine (absent for replayers and scripted byzantine validators).
    machine: Option<Validator>,
    key: Option<Keypair>,
    /// Counted in safety and liveness checks.
    honest: bool,
    vfault: Option<ValidatorFault>,
    pfault: Option<ProposerFault>,
    skew: i64,
    crashed: bool,
    timers: BTreeMap<TimerKind, u64>,
    /// The node's world state at its tip (every node that runs a machine keeps one).
    state: Option<State>,
    /// Double votes (validator, height) this node's state punished.
    punished: BTreeSet<(Address, u64)>,
    /// Proposer: the height whose turn was last scheduled, and the block sent.
    turn_seen: u64,
    sent_block: Option<Block>,
    /// Scripted byzantine validators: blocks / impeach hashes already voted for.
    voted: BTreeSet<Hash>,
    /// Replayer: what it heard.
    heard: Vec<Rc<Message>>,
    /// Partition side (0 = talks to everyone).
    side: u8,
    /// Twin partner's node index.
    twin_of: Option<usize>,
}

/// The shared CPU verifier (one thread: tests already run in parallel); `None` if its pool
/// cannot start, and then every batch is checked with `verify_each`.
fn verifier() -> Option<&'static CpuBatchVerifier> {
    static V: OnceLock<Option<CpuBatchVerifier>> = OnceLock::new();
    V.get_or_init(|| {
        CpuBatchVerifier::new(CpuVerifierConfig {
            threads: 1,
            chunk: 1024,
        })
        .ok()
    })
    .as_ref()
}

/// The simulated world of one seed.
struct World {
    sc: Scenario,
    /// Validators in this run.
    n: usize,
    rng: ChaCha8Rng,
    cfg: ChainConfig,
    candidates: Vec<(Address, u64)>,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Event>,
    nodes: Vec<Node>,
    /// Per link (from * len + to): drop probability, delay range, duplicate probability.
    links: Vec<(f64, u64, u64, f64)>,
    partitioned: bool,
    cache: HashMap<Hash, bool>,
    keys: BTreeMap<Address, crypto_accel::PublicKey>,
    trace: Hash,
    /// Canonical final blocks: number → (hash, kind, proposer, header).
    finals: BTreeMap<u64, (Hash, BlockKind, Address, Header)>,
    /// Post-state roots on honest nodes: number → (block hash, root, first node).
    roots: BTreeMap<u64, (Hash, Hash, usize)>,
    genesis: Header,
    genesis_root: Hash,
    violations: Vec<String>,
    safety_violated: bool,
    evidence: u64,
    delivered: u64,
    sig_checks: u64,
    users: Vec<Keypair>,
    vkeys: Vec<Keypair>,
    keys_cache: KeyCache,
    /// Evidence emitted by honest validators (one per validator and height), for proposers.
    evidence_pool: Vec<DoubleVote>,
    evidence_keys: BTreeSet<(Address, u64)>,
    /// Double votes punished on the canonical chain: (validator, height) → block number.
    punished: BTreeMap<(Address, u64), u64>,
    final_txs: u64,
    byzantine_validators: BTreeSet<Address>,
    /// Equivocated blocks → the honest nodes that were sent them.
    equivocation: BTreeMap<Hash, BTreeSet<usize>>,
    verbose: bool,
    faulty_proposer: Option<Address>,
}

fn key_for(seed: u64, what: &str, i: usize) -> Keypair {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&seed.to_le_bytes());
    b[8..].copy_from_slice(&(i as u64).to_le_bytes());
    Keypair::from_seed(Hash::domain(what, &b).0)
}

/// Runs one scenario with one seed.
pub fn run(sc: &Scenario, seed: u64) -> Outcome {
    let mut w = World::new(sc.clone(), seed);
    w.run();
    w.finish()
}

impl World {
    fn new(sc: Scenario, seed: u64) -> World {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = sc.n_for(seed);
        let f = (n - 1) / 3;
        let vkeys: Vec<Keypair> = (0..n).map(|i| key_for(seed, "sim validator", i)).collect();
        let pkeys: Vec<Keypair> = (0..sc.proposers)
            .map(|i| key_for(seed, "sim proposer", i))
            .collect();
        let validators: Vec<Address> = vkeys.iter().map(|k| Address::of(&k.public())).collect();
        let proposers: Vec<Address> = pkeys.iter().map(|k| Address::of(&k.public())).collect();
        let mut cfg =
            ChainConfig::mainnet_like(7, validators.clone(), proposers.clone(), Address::default());
        cfg.period_ms = PERIOD_MS;
        cfg.impeach_timeout_ms = IMPEACH_TIMEOUT_MS;
        cfg.max_clock_skew_ms = MAX_SKEW_MS;
        cfg.seats = sc.proposers;
        cfg.view_len = 2;
        // RPT with frequent ties, so the election's tie breaking is exercised.
        let candidates: Vec<(Address, u64)> = proposers
            .iter()
            .map(|a| (*a, rng.gen_range(50..53u64)))
            .collect();
        let genesis = genesis_header(&cfg, T0 - PERIOD_MS);
        let users: Vec<Keypair> = (0..USERS).map(|i| key_for(seed, "sim user", i)).collect();
        let mut balances: Vec<(Address, Amount)> = users
            .iter()
            .map(|k| (Address::of(&k.public()), USER_FUND))
            .collect();
        balances.extend(
            validators
                .iter()
                .map(|a| (*a, cfg.rnode_min_deposit + VALIDATOR_EXTRA)),
        );
        balances.extend(proposers.iter().map(|a| (*a, PROPOSER_FUND)));
        let genesis_state = State::genesis(&cfg, &balances);
        let genesis_root = genesis_state.root();
        let params = LbftParams {
            resend_ms: RESEND_MS,
            ..LbftParams::default()
        };
        let schedule = Schedule::bootstrap(&cfg, candidates.clone());
        let mk = |k: Option<&Keypair>| match k {
            Some(k) => Validator::new(
                cfg.clone(),
                k.clone(),
                params.clone(),
                genesis.clone(),
                genesis_root,
                schedule.clone(),
            ),
            None => Validator::follower(
                cfg.clone(),
                params.clone(),
                genesis.clone(),
                genesis_root,
                schedule.clone(),
            ),
        };
        let node = |role, machine: Option<Validator>, key, honest| Node {
            role,
            state: machine.as_ref().map(|_| genesis_state.clone()),
            punished: BTreeSet::new(),
            machine,
            key,
            honest,
            vfault: None,
            pfault: None,
            skew: 0,
            crashed: false,
            timers: BTreeMap::new(),
            turn_seen: 0,
            sent_block: None,
            voted: BTreeSet::new(),
            heard: Vec::new(),
            side: 0,
            twin_of: None,
        };
        let mut nodes = Vec::new();
        for k in &vkeys {
            nodes.push(node(
                Role::Validator,
                Some(mk(Some(k))),
                Some(k.clone()),
                true,
            ));
        }
        for k in &pkeys {
            nodes.push(node(Role::Proposer, Some(mk(None)), Some(k.clone()), true));
        }
        nodes.push(node(Role::Civilian, Some(mk(None)), None, true));
        // Byzantine validators.
        let mut byzantine_validators = BTreeSet::new();
        if let Some((fault, faulty)) = sc.validator_fault {
            let count = match faulty {
                Faulty::F => f,
                Faulty::FPlusOne => f + 1,
            };
            let mut idx: Vec<usize> = (0..n).collect();
            idx.shuffle(&mut rng);
            for &i in idx.iter().take(count) {
                byzantine_validators.insert(validators[i]);
                let nd = &mut nodes[i];
                nd.honest = false;
                nd.vfault = Some(fault);
                if matches!(fault, ValidatorFault::Forger | ValidatorFault::VoteAll) {
                    nd.machine = None;
                    nd.state = None;
                }
                if fault == ValidatorFault::Twins {
                    let twin = node(
                        Role::Validator,
                        Some(mk(Some(&vkeys[i]))),
                        Some(vkeys[i].clone()),
                        false,
                    );
                    nodes.push(twin);
                    let t = nodes.len() - 1;
                    nodes[t].vfault = Some(fault);
                    nodes[t].twin_of = Some(i);
                    nodes[i].twin_of = Some(t);
                }
            }
        }
        let mut faulty_proposer = None;
        if let Some(pf) = sc.proposer_fault {
            let i = rng.gen_range(0..sc.proposers);
            nodes[n + i].pfault = Some(pf);
            faulty_proposer = Some(proposers[i]);
        }
        if sc.replayer {
            nodes.push(node(Role::Replayer, None, None, false));
        }
        for nd in &mut nodes {
            nd.skew = rng.gen_range(-(sc.skew_ms as i64)..=sc.skew_ms as i64);
        }
        let len = nodes.len();
        let mut links = Vec::with_capacity(len * len);
        for _ in 0..len * len {
            let slow = if rng.gen_bool(sc.net.slow_links.clamp(0.0, 1.0)) {
                4
            } else {
                1
            };
            let drop = sc.net.drop * rng.gen_range(0.5..1.5);
            let dup = sc.net.duplicate * rng.gen_range(0.5..1.5);
            links.push((
                drop.clamp(0.0, 1.0),
                sc.net.delay_ms.0 * slow,
                sc.net.delay_ms.1 * slow,
                dup.clamp(0.0, 1.0),
            ));
        }
        let mut w = World {
            sc,
            n,
            rng,
            cfg,
            candidates,
            now: T0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            links,
            partitioned: false,
            cache: HashMap::new(),
            keys: BTreeMap::new(),
            trace: Hash::domain("sim trace", &seed.to_le_bytes()),
            finals: BTreeMap::new(),
            roots: BTreeMap::new(),
            genesis,
            genesis_root,
            violations: Vec::new(),
            safety_violated: false,
            evidence: 0,
            delivered: 0,
            sig_checks: 0,
            users,
            vkeys,
            keys_cache: KeyCache::new(NonZeroUsize::MIN.saturating_add(255)),
            evidence_pool: Vec::new(),
            evidence_keys: BTreeSet::new(),
            punished: BTreeMap::new(),
            final_txs: 0,
            byzantine_validators,
            equivocation: BTreeMap::new(),
            verbose: std::env::var("SIM_TRACE").is_ok(),
            faulty_proposer,
        };
        w.plan_faults();
        w
    }

    /// Schedules partitions, isolation and crashes from the seed.
    fn plan_faults(&mut self) {
        let len = self.nodes.len();
        let twins = self
            .nodes
            .iter()
            .any(|n| n.vfault == Some(ValidatorFault::Twins));
        if twins {
            // Honest validators split in two; each twin copy goes with one half; proposers
            // and the civilian talk to both sides.
            let mut honest: Vec<usize> = (0..self.n).filter(|&i| self.nodes[i].honest).collect();
            honest.shuffle(&mut self.rng);
            let half = honest.len() / 2;
            for (k, &i) in honest.iter().enumerate() {
                self.nodes[i].side = if k < half { 1 } else { 2 };
            }
            for i in 0..len {
                if let (Some(t), true) = (self.nodes[i].twin_of, i < self.n) {
                    self.nodes[i].side = 1;
                    self.nodes[t].side = 2;
                }
                // Proposers and the civilian sit with side 1; only the equivocating
                // proposer reaches both.
                if i >= self.n && self.nodes[i].twin_of.is_none() {
                    self.nodes[i].side = if self.nodes[i].pfault.is_some() { 0 } else { 1 };
                }
            }
            self.partitioned = true;
        } else if self.sc.partition {
            for i in 0..len {
                self.nodes[i].side = self.rng.gen_range(1..=2u8);
            }
            let start = T0 + self.rng.gen_range(0..5_000);
            let dur = self.rng.gen_range(200..6_000);
            self.push(start, Event::Partition);
            self.push(start + dur, Event::Heal);
        } else if self.sc.isolate {
            let victim = if self.rng.gen_bool(0.8) {
                self.rng.gen_range(0..self.n)
            } else {
                self.n + self.sc.proposers
            };
            for i in 0..len {
                self.nodes[i].side = if i == victim { 2 } else { 1 };
            }
            let start = T0 + self.rng.gen_range(0..4_000);
            let dur = self.rng.gen_range(500..8_000);
            self.push(start, Event::Partition);
            self.push(start + dur, Event::Heal);
        }
        for i in 0..self.n {
            if self.nodes[i].vfault == Some(ValidatorFault::Crash) {
                let at = T0 + self.rng.gen_range(0..3_000);
                self.push(at, Event::Crash { node: i });
            }
        }
    }

    fn push(&mut self, at: u64, ev: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn local(&self, node: usize) -> u64 {
        (self.now as i64 + self.nodes[node].skew).max(0) as u64
    }

    fn global(&self, node: usize, local: u64) -> u64 {
        ((local as i64 - self.nodes[node].skew).max(0) as u64).max(self.now)
    }

    fn run(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].machine.is_some() {
                self.feed(i, None);
                self.after_step(i);
            }
        }
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            if t > T0 + self.sc.max_time_ms {
                break;
            }
            self.now = t;
            self.handle(ev);
            if self.done() {
                break;
            }
        }
    }

    fn done(&self) -> bool {
        if self.sc.expect_violation {
            return self.safety_violated;
        }
        self.watched()
            .all(|i| self.height_of(i) > self.sc.target_height)
    }

    /// Honest validators and the civilian: the nodes liveness is checked on.
    fn watched(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|&i| {
            let n = &self.nodes[i];
            n.honest && matches!(n.role, Role::Validator | Role::Civilian)
        })
    }

    fn height_of(&self, i: usize) -> u64 {
        self.nodes[i].machine.as_ref().map_or(0, |m| m.height())
    }

    fn trace_event(&mut self, tag: u8, a: usize, b: usize, digest: &[u8]) {
        if self.verbose {
            eprintln!(
                "t={} ev{tag} node{a} from{b} {} | h={:?}",
                self.now - T0,
                hex8(digest),
                self.nodes
                    .iter()
                    .map(|n| n.machine.as_ref().map(|m| (m.height(), m.phase())))
                    .collect::<Vec<_>>()
            );
        }
        self.trace = Hash::of_parts(&[
            self.trace.as_bytes(),
            &self.now.to_le_bytes(),
            &[tag, a as u8, b as u8],
            digest,
        ]);
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Deliver { to, from, msg } => {
                if self.nodes[to].crashed {
                    return;
                }
                self.delivered += 1;
                let digest = digest(&msg);
                if self.verbose {
                    if let Message::Vote(v) = &*msg {
                        eprintln!(
                            "t={} deliver to{to} from{from} {:?} n{} {} by {}",
                            self.now - T0,
                            v.kind,
                            v.number,
                            hex8(&v.block.0),
                            hex8(&v.validator.0)
                        );
                    }
                }
                self.trace_event(1, to, from, &digest);
                self.deliver(to, msg);
            }
            Event::Timer {
                node,
                kind,
                at_local,
            } => {
                if self.nodes[node].crashed || self.nodes[node].timers.get(&kind) != Some(&at_local)
                {
                    return;
                }
                self.nodes[node].timers.remove(&kind);
                self.trace_event(2, node, 0, &at_local.to_le_bytes());
                self.feed(node, Some(Input::Timeout(kind)));
                self.after_step(node);
            }
            Event::Propose { node, number } => {
                if !self.nodes[node].crashed {
                    self.trace_event(3, node, 0, &number.to_le_bytes());
                    self.proposer_turn(node, number);
                }
            }
            Event::Crash { node } => {
                self.trace_event(4, node, 0, &[]);
                self.nodes[node].crashed = true;
            }
            Event::Partition => {
                self.trace_event(5, 0, 0, &[]);
                self.partitioned = true;
            }
            Event::Heal => {
                self.trace_event(6, 0, 0, &[]);
                self.partitioned = false;
            }
        }
    }

    fn deliver(&mut self, to: usize, msg: Rc<Message>) {
        let role = self.nodes[to].role;
        if role == Role::Replayer {
            self.replay(to, msg);
            return;
        }
        match self.nodes[to].vfault {
            Some(ValidatorFault::VoteAll) => self.vote_all(to, &msg),
            Some(ValidatorFault::Forger) => self.forge(to, &msg),
            _ => {
                self.feed(to, Some(Input::from((*msg).clone())));
                self.after_step(to);
            }
        }
    }

    // ---- driving a machine ----

    /// Ticks the machine, feeds `input`, and carries out every output (signature checks,
    /// body checks and execution are answered at once).
    fn feed(&mut self, node: usize, input: Option<Input>) {
        let local = self.local(node);
        let mut queue = vec![Input::Tick(local)];
        queue.extend(input);
        queue.reverse();
        while let Some(i) = queue.pop() {
            let Some(m) = self.nodes[node].machine.as_mut() else {
                return;
            };
            let outs = m.step(i);
            let mut follow = Vec::new();
            for o in outs {
                match o {
                    Output::Broadcast(msg) => self.broadcast_from(node, msg),
                    Output::SetTimer { kind, at_ms } => {
                        self.nodes[node].timers.insert(kind, at_ms);
                        let at = self.global(node, at_ms);
                        self.push(
                            at,
                            Event::Timer {
                                node,
                                kind,
                                at_local: at_ms,
                            },
                        );
                    }
                    Output::Verify { req, batch, ids } => {
                        let report = self.verify(&batch, &ids);
                        follow.push(Input::Verified { req, report });
                    }
                    Output::Check { req, block } => {
                        let ok = self.check_body(node, &block);
                        follow.push(Input::Checked { req, ok });
                    }
                    Output::Insert(block, cert) => {
                        let number = block.header.number;
                        self.on_insert(node, &block, &cert);
                        // A node that cannot apply a final block stalls (and, if honest, the
                        // checker has recorded why).
                        if let Some(root) = self.execute(node, &block) {
                            follow.push(Input::Executed {
                                number,
                                post_state_root: root,
                            });
                        }
                    }
                    Output::Evidence(dv) => self.on_evidence(node, &dv),
                }
            }
            // Answers are processed in order, before any other event.
            for f in follow.into_iter().rev() {
                queue.push(f);
            }
        }
    }

    /// Proposers: when a new height starts and it is their turn, schedule the proposal.
    fn after_step(&mut self, node: usize) {
        if self.nodes[node].role != Role::Proposer {
            return;
        }
        let Some(m) = self.nodes[node].machine.as_ref() else {
            return;
        };
        let h = m.height();
        if h <= self.nodes[node].turn_seen || m.post_state_root().is_none() {
            return;
        }
        let me = self.nodes[node]
            .key
            .as_ref()
            .map(|k| Address::of(&k.public()));
        let mine = m.proposer_for(h) == me && me.is_some();
        let at_local = m.tip().timestamp_ms + self.cfg.period_ms;
        self.nodes[node].turn_seen = h;
        let wrong_turn = self.nodes[node].pfault == Some(ProposerFault::WrongTurn);
        if mine || wrong_turn {
            let at = self.global(node, at_local);
            self.push(at, Event::Propose { node, number: h });
        }
    }

    fn proposer_turn(&mut self, node: usize, number: u64) {
        let Some(m) = self.nodes[node].machine.as_ref() else {
            return;
        };
        if m.height() != number {
            return;
        }
        let (Some(kp), Some(root)) = (self.nodes[node].key.clone(), m.post_state_root()) else {
            return;
        };
        if self.nodes[node].state.as_ref().map(State::root) != Some(root) {
            return;
        }
        let me = Address::of(&kp.public());
        let scheduled = m.proposer_for(number);
        let tip = m.tip().clone();
        let local = self.local(node);
        // A re-send of the block already sent at this height (never a second block).
        if let Some(b) = self.nodes[node].sent_block.clone() {
            if b.header.number == number {
                self.broadcast_from(node, Message::Proposal(b));
                self.push(self.now + RESEND_MS, Event::Propose { node, number });
                return;
            }
        }
        let fault = self.nodes[node].pfault;
        if scheduled != Some(me) {
            // WrongTurn: a block for someone else's height, sealed by us (or forged).
            let txs = signed(self.body(node, None, false));
            let mut b = propose(&self.cfg, &kp, &tip, root, txs, local);
            if self.rng.gen_bool(0.5) {
                if let Some(p) = scheduled {
                    b.header.proposer = p;
                    b.header.seal = Some(random_sig(&mut self.rng));
                }
            }
            self.broadcast_from(node, Message::Proposal(b));
            return;
        }
        match fault {
            Some(ProposerFault::Silent) => {}
            Some(ProposerFault::Equivocate) => {
                // Two valid blocks: B2 is B1's body plus one more transaction.
                let mut txs2 = self.body(node, None, false);
                let extra = self.user_tx(node, &txs2);
                let txs1 = signed(txs2.clone());
                txs2.push(extra);
                let b1 = propose(&self.cfg, &kp, &tip, root, txs1, local);
                let b2 = propose(&self.cfg, &kp, &tip, root, signed(txs2), local);
                self.equivocate(node, b1, b2);
            }
            Some(ProposerFault::Invalid) => {
                let variant = self.rng.gen_range(0..5u8);
                let mut txs = self.body(node, None, false);
                if variant == 4 {
                    // A well-signed overspend with the right nonce: only execution rejects it.
                    let to = Address([9; 32]);
                    let poison = self.sign_tx(
                        node,
                        &txs,
                        0,
                        TxPayload::Transfer {
                            to,
                            amount: POISON_AMOUNT,
                        },
                    );
                    txs.push(poison);
                }
                let mut b = propose(&self.cfg, &kp, &tip, root, signed(txs), local);
                match variant {
                    0 => b.header.seal = Some(random_sig(&mut self.rng)),
                    1 => {
                        b.header.timestamp_ms =
                            tip.timestamp_ms + self.cfg.period_ms - 3 * self.cfg.max_clock_skew_ms;
                        b.header.seal_with(&kp);
                    }
                    2 => {
                        b.header.timestamp_ms = local + 10 * self.cfg.max_clock_skew_ms;
                        b.header.seal_with(&kp);
                    }
                    3 => {
                        b.header.state_root = Hash::of(b"wrong state root");
                        b.header.seal_with(&kp);
                    }
                    _ => {}
                }
                self.broadcast_from(node, Message::Proposal(b));
            }
            None | Some(ProposerFault::WrongTurn) => {
                let honest = fault.is_none();
                let txs = signed(self.body(node, None, honest));
                let b = propose(&self.cfg, &kp, &tip, root, txs, local);
                self.nodes[node].sent_block = Some(b.clone());
                self.broadcast_from(node, Message::Proposal(b));
                self.push(self.now + RESEND_MS, Event::Propose { node, number });
            }
        }
    }

    /// Two blocks: B1 to one half of the honest validators, B2 to the other; byzantine
    /// validators (colluding) get both; everyone else gets nothing.
    fn equivocate(&mut self, node: usize, b1: Block, b2: Block) {
        let (h1, h2) = (b1.hash(), b2.hash());
        let m1 = Rc::new(Message::Proposal(b1));
        let m2 = Rc::new(Message::Proposal(b2));
        let twins = self.partitioned && self.nodes.iter().any(|n| n.twin_of.is_some());
        let mut honest: Vec<usize> = (0..self.n).filter(|&i| self.nodes[i].honest).collect();
        honest.shuffle(&mut self.rng);
        let half = honest.len().div_ceil(2);
        for i in 0..self.nodes.len() {
            if self.nodes[i].role != Role::Validator {
                continue;
            }
            let to_b1 = if twins {
                self.nodes[i].side == 1
            } else {
                honest
                    .iter()
                    .position(|&h| h == i)
                    .map(|p| p < half)
                    .unwrap_or(true)
            };
            let both = !twins && !self.nodes[i].honest;
            if to_b1 || both {
                self.equivocation.entry(h1).or_default().insert(i);
                self.send(node, i, m1.clone());
            }
            if !to_b1 || both {
                self.equivocation.entry(h2).or_default().insert(i);
                self.send(node, i, m2.clone());
            }
        }
    }

    // ---- block bodies: real signed transactions ----

    /// The next nonce of `a` on `node`'s state after the transactions of `body`.
    fn nonce_after(&self, node: usize, body: &[SignedTx], a: &Address) -> u64 {
        let base = self.nodes[node].state.as_ref().map_or(0, |s| s.nonce(a));
        base + body.iter().filter(|t| t.from == *a).count() as u64
    }

    /// A random user transaction (a transfer or a data registration) that applies after
    /// `body` on `node`'s state.
    fn user_tx(&mut self, node: usize, body: &[SignedTx]) -> SignedTx {
        let i = self.rng.gen_range(0..self.users.len());
        let payload = if self.rng.gen_bool(0.6) {
            let j = self.rng.gen_range(0..=self.users.len());
            let to = match self.users.get(j) {
                Some(k) => Address::of(&k.public()),
                None => Address([9; 32]),
            };
            TxPayload::Transfer {
                to,
                amount: self.rng.gen_range(1..1_000u128) * CPC,
            }
        } else {
            let mut id = [0u8; 32];
            self.rng.fill(&mut id[..]);
            TxPayload::RegisterData {
                id: DataId::from_bytes(id),
                merkle_root: Hash::of(&id),
                size: self.rng.gen_range(1..1u64 << 30),
                k: 4,
                m: 2,
                intervals: IntervalRange { start: 0, end: 10 },
                policy: if self.rng.gen_bool(0.5) {
                    AccessPolicy::Public
                } else {
                    AccessPolicy::GrantBased
                },
            }
        };
        self.sign_tx(node, body, i, payload)
    }

    fn sign_tx(&self, node: usize, body: &[SignedTx], user: usize, payload: TxPayload) -> SignedTx {
        let kp = &self.users[user];
        let nonce = self.nonce_after(node, body, &Address::of(&kp.public()));
        SignedTx::sign(kp, self.cfg.chain_id, nonce, TX_FEE, payload)
    }

    /// A body for the block after `node`'s tip: `k` transactions (the scenario's range when
    /// `None`). An honest proposer (`evidence`) first submits every pooled double vote its
    /// state has not punished; validators not yet in the RNode pool join it; users fill the
    /// rest. `State::select_valid` drops anything that would not apply, so the body is valid
    /// on the proposer's state.
    fn body(&mut self, node: usize, k: Option<usize>, evidence: bool) -> Vec<SignedTx> {
        let k = k.unwrap_or_else(|| {
            let (lo, hi) = self.sc.txs_per_block;
            self.rng.gen_range(lo..=hi.max(lo))
        });
        let Some(st) = self.nodes[node].state.as_ref() else {
            return Vec::new();
        };
        let mut txs: Vec<SignedTx> = Vec::with_capacity(k + 2);
        if let (true, Some(kp)) = (evidence, self.nodes[node].key.as_ref()) {
            let me = Address::of(&kp.public());
            let mut seen = BTreeSet::new();
            for dv in &self.evidence_pool {
                let key = (dv.a.validator, dv.a.number);
                if txs.len() >= MAX_EVIDENCE_PER_BLOCK
                    || st.equivocation(&key.0, key.1).is_some()
                    || !seen.insert(key)
                    || check_evidence(&self.cfg, dv).is_err()
                {
                    continue;
                }
                let nonce = st.nonce(&me) + txs.len() as u64;
                txs.push(SignedTx::sign(
                    kp,
                    self.cfg.chain_id,
                    nonce,
                    TX_FEE,
                    TxPayload::Evidence(Box::new(dv.clone())),
                ));
            }
        }
        let mut deposits = 0;
        for vk in &self.vkeys {
            let a = Address::of(&vk.public());
            if deposits >= MAX_DEPOSITS_PER_BLOCK || txs.len() >= k {
                break;
            }
            if st.rnode_deposit(&a) == 0 && st.nonce(&a) == 0 {
                deposits += 1;
                txs.push(SignedTx::sign(
                    vk,
                    self.cfg.chain_id,
                    0,
                    TX_FEE,
                    TxPayload::RNodeDeposit {
                        amount: self.cfg.rnode_min_deposit,
                    },
                ));
            }
        }
        while txs.len() < k {
            let t = self.user_tx(node, &txs);
            txs.push(t);
        }
        let Some(m) = self.nodes[node].machine.as_ref() else {
            return txs;
        };
        let term = term_of(&self.cfg, m.tip().number + 1);
        let Some(st) = self.nodes[node].state.as_mut() else {
            return txs;
        };
        let ok = st.select_valid(&self.cfg, term, &txs);
        if ok.len() == txs.len() {
            return txs;
        }
        ok.into_iter().map(|i| txs[i].clone()).collect()
    }

    // ---- the real state: body checks, execution and the state checks ----

    /// `Output::Check`: the block's transaction and evidence signatures (through the verdict
    /// cache), then `apply_block` on a copy of `node`'s state, which is at the parent.
    fn check_body(&mut self, node: usize, block: &Block) -> bool {
        if !self.body_sigs_ok(block) {
            return false;
        }
        let Some(st) = self.nodes[node].state.as_ref() else {
            return false;
        };
        let mut copy = st.clone();
        copy.apply_block(&self.cfg, block).is_ok()
    }

    /// Every signature `State::push_signatures_cached` asks for, each verified once per run.
    fn body_sigs_ok(&mut self, block: &Block) -> bool {
        let Some((batch, ids)) =
            State::body_signatures(block, self.cfg.chain_id, &mut self.keys_cache)
        else {
            return false;
        };
        self.verify(&batch, &ids).all_valid()
    }

    /// `Output::Insert`: applies the final block to `node`'s state and returns the real
    /// post-state root. On honest nodes, checks the receipt, supply and roots.
    fn execute(&mut self, node: usize, block: &Block) -> Option<Hash> {
        let mut st = self.nodes[node].state.take()?;
        let hd = &block.header;
        let before = (
            st.minted(),
            st.detained(),
            st.balance(&hd.proposer),
            st.total_supply(),
        );
        let honest = self.nodes[node].honest;
        let r = match st.apply_block(&self.cfg, block) {
            Ok(r) => r,
            Err(e) => {
                if honest {
                    self.violations.push(format!(
                        "STATE: node {node} cannot apply final block {}: {e}",
                        hd.number
                    ));
                }
                self.nodes[node].state = Some(st);
                return None;
            }
        };
        if honest {
            self.check_receipt(node, &st, block, &r, before);
        }
        // The committee of the next term is recorded before its first block (the writes
        // are committed with that block, so the root below is unchanged).
        if let Err(e) = st.record_next_committee(&self.cfg, &self.candidates, block) {
            self.violations.push(format!(
                "STATE: node {node} set_committee after {}: {e}",
                hd.number
            ));
        }
        let root = st.root();
        self.nodes[node].state = Some(st);
        if honest {
            let hash = block.hash();
            match self.roots.get(&hd.number) {
                Some((h, r0, first)) if *r0 != root => {
                    let same = if *h == hash {
                        "the same block"
                    } else {
                        "another block"
                    };
                    self.violations.push(format!(
                        "STATE: node {node} has root {root:?} at {}, node {first} {r0:?} ({same})",
                        hd.number
                    ));
                }
                Some(_) => {}
                None => {
                    self.roots.insert(hd.number, (hash, root, node));
                }
            }
        }
        Some(root)
    }

    /// Supply changes only by rewards; minted grows by exactly the block's maintenance
    /// reward (+ basic rewards), never for impeach blocks; penalties and punishments are
    /// recorded and detain exactly what they report; a double vote is punished once.
    fn check_receipt(
        &mut self,
        node: usize,
        st: &State,
        block: &Block,
        r: &BlockReceipt,
        (minted0, detained0, proposer_bal0, supply0): (Amount, Amount, Amount, Amount),
    ) {
        let hd = &block.header;
        let n = hd.number;
        let mut bad = Vec::new();
        let supply = st.total_supply();
        if supply != st.genesis_supply() + st.minted() {
            bad.push(format!(
                "total supply {supply} != genesis {} + minted {}",
                st.genesis_supply(),
                st.minted()
            ));
        }
        let want_reward = match hd.kind {
            BlockKind::Normal => maintenance_reward(&self.cfg, n),
            BlockKind::Impeach => 0,
        };
        if r.maintenance_reward != want_reward {
            bad.push(format!(
                "maintenance reward {} != {want_reward}",
                r.maintenance_reward
            ));
        }
        if st.minted() != minted0 + want_reward + r.basic_rewards {
            bad.push(format!(
                "minted grew by {}, block rewards {} + {}",
                st.minted() - minted0,
                want_reward,
                r.basic_rewards
            ));
        }
        if supply != supply0 + want_reward + r.basic_rewards {
            bad.push(format!("supply grew by {}", supply.wrapping_sub(supply0)));
        }
        let mut detained = 0;
        for (tx, o) in block.txs.iter().zip(&r.outcomes) {
            match (tx, o) {
                (
                    Tx::Penalty { proposer, .. },
                    TxOutcome::Penalized {
                        proposer: p,
                        detained: d,
                    },
                ) => {
                    detained += d;
                    if p != proposer || st.impeachment(p, n) != Some(*d) {
                        bad.push(format!("impeachment of {p:?} not recorded"));
                    }
                }
                (
                    Tx::Signed(t),
                    TxOutcome::Punished {
                        validator,
                        detained: d,
                    },
                ) => {
                    detained += d;
                    let TxPayload::Evidence(dv) = &t.payload else {
                        bad.push("punishment without evidence".into());
                        continue;
                    };
                    let key = (*validator, dv.a.number);
                    if !self.byzantine_validators.contains(validator) {
                        bad.push(format!("honest validator {validator:?} punished"));
                    }
                    if !self.nodes[node].punished.insert(key) {
                        bad.push(format!("double vote {key:?} punished twice"));
                    }
                    match st.equivocation(validator, dv.a.number) {
                        Some(e) if e.detained == *d && e.recorded_at == n => {}
                        e => bad.push(format!("double vote {key:?} recorded as {e:?}")),
                    }
                    match self.punished.get(&key) {
                        Some(h) if *h != n => bad.push(format!(
                            "double vote {key:?} punished at {n}, elsewhere at {h}"
                        )),
                        Some(_) => {}
                        None => {
                            self.punished.insert(key, n);
                        }
                    }
                }
                (Tx::Penalty { .. }, o) => bad.push(format!("penalty outcome {o:?}")),
                _ => {}
            }
        }
        if r.outcomes.len() != block.txs.len() {
            bad.push("one outcome per transaction".into());
        }
        if st.detained() != detained0 + detained {
            bad.push(format!(
                "detained grew by {}, outcomes say {detained}",
                st.detained() - detained0
            ));
        }
        if hd.kind == BlockKind::Impeach
            && (st.balance(&hd.proposer) != proposer_bal0 || r.fees != 0)
        {
            bad.push("impeached proposer was paid".into());
        }
        for b in bad {
            self.violations
                .push(format!("STATE: node {node} block {n} ({:?}): {b}", hd.kind));
        }
    }

    // ---- network ----

    fn blocked(&self, a: usize, b: usize) -> bool {
        if !self.partitioned {
            return false;
        }
        let (sa, sb) = (self.nodes[a].side, self.nodes[b].side);
        sa != 0 && sb != 0 && sa != sb
    }

    fn send(&mut self, from: usize, to: usize, msg: Rc<Message>) {
        if from == to || self.blocked(from, to) {
            return;
        }
        let len = self.nodes.len();
        let (drop, lo, hi, dup) = self.links[from * len + to];
        if self.rng.gen_bool(drop) {
            return;
        }
        let d = self.rng.gen_range(lo..=hi);
        self.push(
            self.now + d,
            Event::Deliver {
                to,
                from,
                msg: msg.clone(),
            },
        );
        if self.rng.gen_bool(dup) {
            let d2 = self.rng.gen_range(lo..=hi.saturating_mul(2));
            self.push(self.now + d2, Event::Deliver { to, from, msg });
        }
    }

    fn broadcast_from(&mut self, node: usize, msg: Message) {
        // A byzantine equivocating proposer does not relay VALIDATEs (in the twins control
        // it is the only bridge between the two sides).
        if self.nodes[node].pfault == Some(ProposerFault::Equivocate)
            && matches!(msg, Message::Validate(..))
        {
            return;
        }
        if self.nodes[node].vfault == Some(ValidatorFault::DoubleVote) {
            if let Message::Vote(v) = &msg {
                self.double_vote(node, v.clone());
                return;
            }
        }
        let msg = Rc::new(msg);
        for to in 0..self.nodes.len() {
            self.send(node, to, msg.clone());
        }
    }

    /// Sends `v` to a random half and a conflicting vote to the rest.
    fn double_vote(&mut self, node: usize, v: Vote) {
        let Some(kp) = self.nodes[node].key.clone() else {
            return;
        };
        let mut other = Hash([0; 32]);
        self.rng.fill(&mut other.0[..]);
        let v2 = Vote::sign(&kp, self.cfg.chain_id, v.kind, v.number, v.round, other);
        let a = Rc::new(Message::Vote(v));
        let b = Rc::new(Message::Vote(v2));
        for to in 0..self.nodes.len() {
            let m = if self.rng.gen_bool(0.5) { &a } else { &b };
            self.send(node, to, m.clone());
        }
    }

    // ---- scripted byzantine behaviour ----

    fn vote_all(&mut self, node: usize, msg: &Message) {
        let Some(kp) = self.nodes[node].key.clone() else {
            return;
        };
        let (number, round, block, kinds) = match msg {
            Message::Proposal(b) => (
                b.header.number,
                0,
                b.hash(),
                [VoteKind::Prepare, VoteKind::Commit],
            ),
            Message::Vote(v) if v.kind == VoteKind::ImpeachPrepare => (
                v.number,
                v.round,
                v.block,
                [VoteKind::ImpeachPrepare, VoteKind::ImpeachCommit],
            ),
            _ => return,
        };
        if !self.nodes[node].voted.insert(block) {
            return;
        }
        // Colluding with an equivocating proposer: votes for a block go only to the honest
        // validators that were sent that block (and to everyone else who is not honest).
        let targets = self.equivocation.get(&block).cloned();
        for kind in kinds {
            let v = Rc::new(Message::Vote(Vote::sign(
                &kp,
                self.cfg.chain_id,
                kind,
                number,
                round,
                block,
            )));
            for to in 0..self.nodes.len() {
                let skip = match &targets {
                    Some(t) => self.nodes[to].honest && !t.contains(&to),
                    None => false,
                };
                if !skip {
                    self.send(node, to, v.clone());
                }
            }
        }
    }

    fn forge(&mut self, node: usize, msg: &Message) {
        let Message::Proposal(b) = msg else {
            return;
        };
        let Some(kp) = self.nodes[node].key.clone() else {
            return;
        };
        // Once per height (forgers must not feed on each other's forgeries).
        let number = b.header.number;
        if !self.nodes[node]
            .voted
            .insert(Hash::of(&number.to_le_bytes()))
        {
            return;
        }
        let victims: Vec<Address> = self
            .cfg
            .validators
            .iter()
            .filter(|a| !self.byzantine_validators.contains(a))
            .copied()
            .collect();
        let mut fake = Hash([0; 32]);
        self.rng.fill(&mut fake.0[..]);
        // Forged votes in honest validators' names: random bytes, and our own valid
        // signature under their address.
        for (i, a) in victims.iter().enumerate() {
            for kind in [VoteKind::Prepare, VoteKind::Commit, VoteKind::ImpeachCommit] {
                let sig = if i % 2 == 0 {
                    random_sig(&mut self.rng)
                } else {
                    Vote::sign(&kp, self.cfg.chain_id, kind, number, 0, fake).sig
                };
                let v = Vote {
                    kind,
                    number,
                    round: 0,
                    block: fake,
                    validator: *a,
                    sig,
                };
                self.broadcast_from(node, Message::Vote(v));
            }
        }
        // A forged VALIDATE: a tampered block with a certificate of forged signatures.
        let mut fb = b.clone();
        fb.header.timestamp_ms += 1;
        let mut sigs: Vec<(Address, Signature)> = victims
            .iter()
            .map(|a| (*a, random_sig(&mut self.rng)))
            .collect();
        sigs.sort_by_key(|(a, _)| *a);
        let cert = Certificate {
            number,
            round: 0,
            block: fb.hash(),
            kind: VoteKind::Commit,
            sigs,
        };
        self.broadcast_from(node, Message::Validate(fb, cert));
        // A forged seal in the scheduled proposer's name.
        let mut pb = b.clone();
        pb.header.timestamp_ms += 2;
        pb.header.seal = Some(random_sig(&mut self.rng));
        self.broadcast_from(node, Message::Proposal(pb));
    }

    fn replay(&mut self, node: usize, msg: Rc<Message>) {
        if self.nodes[node].heard.len() < 512 {
            self.nodes[node].heard.push(msg);
        } else {
            let i = self.rng.gen_range(0..512);
            self.nodes[node].heard[i] = msg;
        }
        if self.rng.gen_bool(0.3) {
            let i = self.rng.gen_range(0..self.nodes[node].heard.len());
            let old = self.nodes[node].heard[i].clone();
            for to in 0..self.nodes.len() {
                self.send(node, to, old.clone());
            }
        }
    }

    // ---- signatures ----

    fn verify(&mut self, batch: &VerifyBatch, ids: &[Hash]) -> VerifyReport {
        if ids.len() == batch.len() && ids.iter().all(|id| self.cache.contains_key(id)) {
            return self.verify_cached(ids);
        }
        self.sig_checks += batch.len() as u64;
        let report = match verifier() {
            Some(v) => v.verify(batch),
            None => verify_each(batch),
        };
        if ids.len() == batch.len() {
            for (i, id) in ids.iter().enumerate() {
                self.cache.insert(*id, report.is_valid(i));
            }
        }
        report
    }

    /// Checks (address, domain-prefixed bytes, signature) items through the verdict cache;
    /// only a miss decodes keys and verifies.
    fn check_sigs(
        &mut self,
        items: &[(Address, Vec<u8>, Signature)],
    ) -> Result<VerifyReport, String> {
        let ids: Vec<Hash> = items
            .iter()
            .map(|(a, m, s)| verify_item_id(&a.0, s, m))
            .collect();
        let mut batch = VerifyBatch::new();
        if !ids.iter().all(|id| self.cache.contains_key(id)) {
            for (a, m, s) in items {
                let pk = match self.keys.get(a) {
                    Some(pk) => *pk,
                    None => {
                        let pk = a.public_key().map_err(|_| format!("bad key {a:?}"))?;
                        self.keys.insert(*a, pk);
                        pk
                    }
                };
                batch.push_raw(&pk, m, s);
            }
        } else {
            // All cached: `verify` answers from the cache without looking at the batch.
            return Ok(self.verify_cached(&ids));
        }
        Ok(self.verify(&batch, &ids))
    }

    fn verify_cached(&self, ids: &[Hash]) -> VerifyReport {
        let invalid = ids
            .iter()
            .enumerate()
            .filter(|(_, id)| self.cache.get(*id) != Some(&true))
            .map(|(i, _)| i)
            .collect();
        VerifyReport {
            len: ids.len(),
            invalid,
        }
    }

    /// Independently checks a certificate: distinct committee members, quorum, matching
    /// kind and block, every signature valid.
    fn check_certificate(&mut self, block: &Block, cert: &Certificate) -> Result<(), String> {
        let hash = block.hash();
        let kind_ok = matches!(
            (block.header.kind, cert.kind),
            (BlockKind::Normal, VoteKind::Commit) | (BlockKind::Impeach, VoteKind::ImpeachCommit)
        );
        let distinct: BTreeSet<Address> = cert.sigs.iter().map(|(a, _)| *a).collect();
        if !kind_ok
            || cert.block != hash
            || cert.number != block.header.number
            || distinct.len() != cert.sigs.len()
            || distinct.len() < self.cfg.quorum()
            || !distinct.iter().all(|a| self.cfg.validators.contains(a))
        {
            return Err(format!("malformed certificate at {}", block.header.number));
        }
        let d = SigDomain::new(self.cfg.chain_id, cert.kind.message_kind());
        let msg = Vote::signed_message(cert.number, cert.round, &hash);
        let mut items: Vec<(Address, Vec<u8>, Signature)> = cert
            .sigs
            .iter()
            .map(|(a, s)| (*a, d.signed_bytes(&msg), *s))
            .collect();
        if block.header.kind == BlockKind::Normal {
            let Some(seal) = block.header.seal else {
                return Err("normal block without seal".into());
            };
            let sd = SigDomain::new(self.cfg.chain_id, MessageKind::BLOCK_SEAL);
            items.push((
                block.header.proposer,
                sd.signed_bytes(hash.as_bytes()),
                seal,
            ));
        }
        let r = self.check_sigs(&items)?;
        if !r.all_valid() {
            return Err(format!(
                "certificate at {} has invalid signatures {:?}",
                block.header.number, r.invalid
            ));
        }
        Ok(())
    }

    // ---- the checker ----

    fn on_insert(&mut self, node: usize, block: &Block, cert: &Certificate) {
        let number = block.header.number;
        let hash = block.hash();
        self.trace_event(7, node, 0, hash.as_bytes());
        if !self.nodes[node].honest {
            return;
        }
        if let Err(e) = self.check_certificate(block, cert) {
            self.violations.push(format!("node {node}: {e}"));
        }
        match self.finals.get(&number) {
            Some((h, ..)) if *h != hash => {
                self.safety_violated = true;
                self.violations.push(format!(
                    "SAFETY: node {node} finalised {hash:?} at height {number}, another honest node {h:?}"
                ));
            }
            Some(_) => {}
            None => {
                if block.header.kind == BlockKind::Normal {
                    self.final_txs += block.txs.len() as u64;
                }
                self.finals.insert(
                    number,
                    (
                        hash,
                        block.header.kind,
                        block.header.proposer,
                        block.header.clone(),
                    ),
                );
            }
        }
    }

    fn on_evidence(&mut self, node: usize, dv: &chain::DoubleVote) {
        if !self.nodes[node].honest {
            return;
        }
        self.evidence += 1;
        let (a, b) = (&dv.a, &dv.b);
        let same = a.validator == b.validator
            && a.kind.is_prepare_type() == b.kind.is_prepare_type()
            && a.number == b.number
            && a.round == b.round;
        let items: Vec<(Address, Vec<u8>, Signature)> = [a, b]
            .iter()
            .map(|v| {
                let d = v.domain(self.cfg.chain_id);
                (v.validator, d.signed_bytes(&v.message()), v.sig)
            })
            .collect();
        let valid = self.check_sigs(&items).is_ok_and(|r| r.all_valid());
        if !same || a.block == b.block || !valid {
            self.violations
                .push(format!("node {node}: bogus evidence {dv:?}"));
        }
        if !self.byzantine_validators.contains(&a.validator) {
            self.violations.push(format!(
                "node {node}: evidence against honest validator {:?}",
                a.validator
            ));
        }
        // Gossiped to the proposers, who submit it as an `Evidence` transaction.
        if self.evidence_keys.insert((a.validator, a.number)) {
            self.evidence_pool.push(dv.clone());
        }
    }

    /// The proposer of `number` on the canonical chain (None if the term's seed block is
    /// unknown).
    fn scheduled(&self, number: u64) -> Option<Address> {
        let term = term_of(&self.cfg, number);
        let committee = if term == 0 {
            self.cfg.default_proposers.clone()
        } else {
            let last = term * self.cfg.term_len() - 1;
            let (h, ..) = self.finals.get(&last)?;
            elect_committee(&self.cfg, &self.candidates, term_seed(*h, term))
        };
        proposer_of(&committee, number, self.cfg.view_len)
    }

    fn finish(mut self) -> Outcome {
        if self.verbose {
            for (i, n) in self.nodes.iter().enumerate() {
                eprintln!(
                    "node {i} {:?} vfault {:?} pfault {:?}",
                    n.role, n.vfault, n.pfault
                );
                if std::env::var("SIM_TRACE").ok().as_deref() == Some(&i.to_string()) {
                    eprintln!("{:#?}", n.machine);
                }
            }
        }
        let min_height = self.watched().map(|i| self.height_of(i)).min().unwrap_or(0);
        let impeach_blocks = self
            .finals
            .values()
            .filter(|(_, k, ..)| *k == BlockKind::Impeach)
            .count() as u64;
        if !self.sc.expect_violation {
            for i in self.watched().collect::<Vec<_>>() {
                let h = self.height_of(i);
                if h <= self.sc.target_height {
                    let phase = self.nodes[i].machine.as_ref().map(|m| m.phase());
                    self.violations.push(format!(
                        "LIVENESS: node {i} ({:?}) stuck at height {h} in {phase:?} at t={}",
                        self.nodes[i].role,
                        self.now - T0
                    ));
                }
            }
            // Every final block's proposer field is the scheduled one; a silent or invalid
            // proposer's turns end in impeach blocks.
            let finals: Vec<(u64, BlockKind, Address)> = self
                .finals
                .iter()
                .map(|(n, (_, k, p, _))| (*n, *k, *p))
                .collect();
            for (n, kind, proposer) in finals {
                let Some(s) = self.scheduled(n) else { continue };
                if proposer != s {
                    self.violations.push(format!(
                        "height {n}: proposer {proposer:?}, scheduled {s:?}"
                    ));
                }
                let bad_turn = matches!(
                    self.sc.proposer_fault,
                    Some(ProposerFault::Silent | ProposerFault::Invalid)
                ) && Some(s) == self.faulty_proposer;
                if bad_turn && kind != BlockKind::Impeach {
                    self.violations.push(format!(
                        "height {n}: faulty proposer's turn ended in a {kind:?} block"
                    ));
                }
            }
            if self.sc.expect_no_impeach && impeach_blocks > 0 {
                self.violations
                    .push(format!("{impeach_blocks} impeach blocks on a calm network"));
            }
            // A double vote punished on the chain is recorded, at the same height, on every
            // honest node that got there.
            let mut missing = Vec::new();
            for (&(v, number), &at) in &self.punished {
                for i in self.watched() {
                    let Some(st) = self.nodes[i].state.as_ref() else {
                        continue;
                    };
                    if st.height() >= at
                        && st.equivocation(&v, number).map(|e| e.recorded_at) != Some(at)
                    {
                        missing.push(format!(
                            "STATE: node {i} lacks the punishment of {v:?} at {number} (block {at})"
                        ));
                    }
                }
            }
            self.violations.extend(missing);
            // Impeach blocks are exactly the deterministic construction (state root = the
            // real post-state root of the parent).
            let mut root = self.genesis_root;
            let mut parent = self.genesis.clone();
            for (n, (h, k, _, hd)) in self.finals.clone() {
                if n != parent.number + 1 {
                    break;
                }
                if k == BlockKind::Impeach {
                    if let Some(p) = self.scheduled(n) {
                        let want = impeach_block(&self.cfg, &parent, root, p);
                        if want.hash() != h {
                            self.violations
                                .push(format!("height {n}: impeach block is not deterministic"));
                        }
                    }
                }
                let Some((_, r, _)) = self.roots.get(&n) else {
                    break;
                };
                root = *r;
                parent = hd;
            }
        }
        Outcome {
            trace: self.trace,
            violations: self.violations,
            safety_violated: self.safety_violated,
            min_height,
            impeach_blocks,
            evidence: self.evidence,
            delivered: self.delivered,
            sig_checks: self.sig_checks,
            end_ms: self.now - T0,
            punished: self.punished.len() as u64,
            final_txs: self.final_txs,
        }
    }
}

fn signed(txs: Vec<SignedTx>) -> Vec<Tx> {
    txs.into_iter().map(Tx::Signed).collect()
}

fn random_sig(rng: &mut ChaCha8Rng) -> Signature {
    let mut s = [0u8; 64];
    rng.fill(&mut s[..]);
    Signature(s)
}

fn digest(m: &Message) -> Vec<u8> {
    // Cheap and unique enough for a trace: no re-hashing of blocks per delivery.
    let block = |b: &Block| {
        let mut d = b.header.number.to_le_bytes().to_vec();
        d.extend_from_slice(&b.header.timestamp_ms.to_le_bytes());
        d.extend_from_slice(&b.header.tx_root.0[..8]);
        d.extend_from_slice(&b.header.state_root.0[..8]);
        if let Some(s) = b.header.seal {
            d.extend_from_slice(&s.0[..8]);
        }
        d
    };
    match m {
        Message::Proposal(b) => block(b),
        Message::Vote(v) => v.sig.0.to_vec(),
        Message::PCertificate(votes) => votes.iter().flat_map(|v| v.sig.0[..8].to_vec()).collect(),
        Message::Validate(b, c) => {
            let mut d = block(b);
            d.extend(c.sigs.iter().flat_map(|(_, s)| s.0[..4].to_vec()));
            d
        }
        Message::Sync { number } => number.to_le_bytes().to_vec(),
    }
}

fn hex8(d: &[u8]) -> String {
    d.iter().take(4).map(|b| format!("{b:02x}")).collect()
}
