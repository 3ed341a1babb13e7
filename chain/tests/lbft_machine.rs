//! Unit tests of the LBFT 2.0 state machine, driven by hand: quorum counting, one PREPARE
//! per height, the impeach block, VALIDATE relay, evidence, timers, illicit blocks, bounds.

use chain::{
    impeach_block, propose, Address, Block, BlockKind, Certificate, ChainConfig, Header, Input,
    LbftParams, Message, Output, Phase, Schedule, TimerKind, Tx, Validator, Vote, VoteKind,
};
use crypto_accel::{verify_each, Hash, Keypair};

const T0: u64 = 100_000;

struct Setup {
    cfg: ChainConfig,
    keys: Vec<Keypair>,
    proposer: Keypair,
    genesis: Header,
    root: Hash,
}

fn setup(n: usize) -> Setup {
    let keys: Vec<Keypair> = (0..n)
        .map(|i| Keypair::from_seed([i as u8 + 1; 32]))
        .collect();
    let proposer = Keypair::from_seed([200; 32]);
    let mut cfg = ChainConfig::mainnet_like(
        9,
        keys.iter().map(|k| Address::of(&k.public())).collect(),
        vec![Address::of(&proposer.public())],
        Address::default(),
    );
    cfg.seats = 1;
    cfg.view_len = 100;
    cfg.period_ms = 1_000;
    cfg.impeach_timeout_ms = 2_000;
    cfg.max_clock_skew_ms = 200;
    let genesis = chain::genesis_header(&cfg, T0);
    Setup {
        cfg,
        keys,
        proposer,
        genesis,
        root: Hash::of(b"genesis post-state"),
    }
}

impl Setup {
    fn validator(&self, i: usize) -> Validator {
        let mut v = Validator::new(
            self.cfg.clone(),
            self.keys[i].clone(),
            LbftParams::default(),
            self.genesis.clone(),
            self.root,
            Schedule::bootstrap(&self.cfg, vec![]),
        );
        drive(&mut v, Input::Tick(T0 + self.cfg.period_ms));
        v
    }

    fn follower(&self) -> Validator {
        let mut v = Validator::follower(
            self.cfg.clone(),
            LbftParams::default(),
            self.genesis.clone(),
            self.root,
            Schedule::bootstrap(&self.cfg, vec![]),
        );
        drive(&mut v, Input::Tick(T0 + self.cfg.period_ms));
        v
    }

    fn block(&self, salt: u64) -> Block {
        propose(
            &self.cfg,
            &self.proposer,
            &self.genesis,
            self.root,
            vec![],
            T0 + self.cfg.period_ms + salt,
        )
    }

    fn vote(&self, i: usize, kind: VoteKind, block: Hash) -> Vote {
        self.vote_in(i, kind, 0, block)
    }

    fn vote_in(&self, i: usize, kind: VoteKind, round: u32, block: Hash) -> Vote {
        Vote::sign(&self.keys[i], self.cfg.chain_id, kind, 1, round, block)
    }

    fn cert(&self, signers: &[usize], kind: VoteKind, block: Hash) -> Certificate {
        let mut sigs: Vec<_> = signers
            .iter()
            .map(|&i| {
                let v = self.vote(i, kind, block);
                (v.validator, v.sig)
            })
            .collect();
        sigs.sort_by_key(|(a, _)| *a);
        Certificate {
            number: 1,
            round: 0,
            block,
            kind,
            sigs,
        }
    }
}

/// Steps the machine, answering signature checks (strict single verification), body checks
/// (always fine) and execution (root = hash of the block) at once; returns the other outputs.
fn drive(v: &mut Validator, input: Input) -> Vec<Output> {
    let mut pending = vec![input];
    let mut seen = Vec::new();
    while let Some(i) = pending.pop() {
        for o in v.step(i) {
            match o {
                Output::Verify { req, batch, ids } => {
                    assert_eq!(ids.len(), batch.len());
                    pending.push(Input::Verified {
                        req,
                        report: verify_each(&batch),
                    });
                }
                Output::Check { req, .. } => pending.push(Input::Checked { req, ok: true }),
                Output::Insert(b, c) => {
                    pending.push(Input::Executed {
                        number: b.header.number,
                        post_state_root: Hash::of(b.hash().as_bytes()),
                    });
                    seen.push(Output::Insert(b, c));
                }
                o => seen.push(o),
            }
        }
    }
    seen
}

fn votes(outs: &[Output], kind: VoteKind) -> Vec<Vote> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Broadcast(Message::Vote(v)) if v.kind == kind => Some(v.clone()),
            _ => None,
        })
        .collect()
}

fn inserts(outs: &[Output]) -> Vec<(Block, Certificate)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Insert(b, c) => Some((b.clone(), c.clone())),
            _ => None,
        })
        .collect()
}

fn validates(outs: &[Output]) -> usize {
    outs.iter()
        .filter(|o| matches!(o, Output::Broadcast(Message::Validate(..))))
        .count()
}

#[test]
fn first_tick_sets_the_timers() {
    let s = setup(4);
    let mut v = Validator::new(
        s.cfg.clone(),
        s.keys[0].clone(),
        LbftParams::default(),
        s.genesis.clone(),
        s.root,
        Schedule::bootstrap(&s.cfg, vec![]),
    );
    let now = T0 + 10;
    let outs = v.step(Input::Tick(now));
    let timers: Vec<(TimerKind, u64)> = outs
        .iter()
        .filter_map(|o| match o {
            Output::SetTimer { kind, at_ms } => Some((*kind, *at_ms)),
            _ => None,
        })
        .collect();
    assert!(timers.contains(&(TimerKind::Resend, now + LbftParams::default().resend_ms)));
    // The height must be final by parent timestamp + period + impeach timeout.
    assert!(timers.contains(&(
        TimerKind::Round {
            number: 1,
            round: 0
        },
        T0 + 1_000 + 2_000
    )));
    // A second tick sets nothing new; a stale timer is ignored.
    assert!(v.step(Input::Tick(now + 1)).is_empty());
    assert!(v
        .step(Input::Timeout(TimerKind::Round {
            number: 7,
            round: 0
        }))
        .is_empty());
    assert_eq!(v.phase(), Phase::Idle);
}

#[test]
fn quorum_is_exactly_2f_plus_1_distinct_validators() {
    let s = setup(4);
    assert_eq!(s.cfg.quorum(), 3);
    let mut v = s.validator(0);
    let b = s.block(0);
    let h = b.hash();
    let outs = drive(&mut v, Input::Proposal(b));
    assert_eq!(votes(&outs, VoteKind::Prepare).len(), 1);
    assert_eq!(v.phase(), Phase::Prepare);
    // One more PREPARE (2 of 3): no COMMIT. Duplicates and outsiders do not count.
    assert!(votes(
        &drive(&mut v, Input::Vote(s.vote(1, VoteKind::Prepare, h))),
        VoteKind::Commit
    )
    .is_empty());
    assert!(drive(&mut v, Input::Vote(s.vote(1, VoteKind::Prepare, h))).is_empty());
    let outsider = Keypair::from_seed([99; 32]);
    let ov = Vote::sign(&outsider, s.cfg.chain_id, VoteKind::Prepare, 1, 0, h);
    assert!(drive(&mut v, Input::Vote(ov)).is_empty());
    // A vote for another block does not count for this one.
    assert!(drive(
        &mut v,
        Input::Vote(s.vote(2, VoteKind::Prepare, Hash::of(b"other")))
    )
    .is_empty());
    // A vote signed for another chain fails verification.
    let wrong_chain = Vote::sign(&s.keys[3], s.cfg.chain_id + 1, VoteKind::Prepare, 1, 0, h);
    assert!(drive(&mut v, Input::Vote(wrong_chain)).is_empty());
    assert_eq!(v.stats().non_validator, 1);
    assert_eq!(v.stats().bad_signature, 1);
    assert!(v.stats().duplicate >= 1);
    assert_eq!(v.phase(), Phase::Prepare);
    // The third distinct validator: P-certificate → COMMIT.
    let outs = drive(&mut v, Input::Vote(s.vote(3, VoteKind::Prepare, h)));
    assert_eq!(votes(&outs, VoteKind::Commit).len(), 1);
    assert_eq!(v.phase(), Phase::Commit);
    // 2 of 3 COMMITs: nothing; the third: insert + VALIDATE with exactly 2f+1 signatures.
    assert!(inserts(&drive(&mut v, Input::Vote(s.vote(1, VoteKind::Commit, h)))).is_empty());
    let outs = drive(&mut v, Input::Vote(s.vote(2, VoteKind::Commit, h)));
    let ins = inserts(&outs);
    assert_eq!(ins.len(), 1);
    let (blk, cert) = &ins[0];
    assert_eq!(blk.hash(), h);
    assert_eq!(cert.kind, VoteKind::Commit);
    assert_eq!(cert.sigs.len(), 3);
    assert!(cert.sigs.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(validates(&outs), 1);
    assert_eq!(v.height(), 2);
    assert_eq!(v.phase(), Phase::Idle);
}

#[test]
fn at_most_one_prepare_per_height() {
    let s = setup(4);
    let mut v = s.validator(0);
    let (b1, b2) = (s.block(0), s.block(5));
    assert_ne!(b1.hash(), b2.hash());
    assert_eq!(
        votes(
            &drive(&mut v, Input::Proposal(b1.clone())),
            VoteKind::Prepare
        )
        .len(),
        1
    );
    // The proposer equivocates: the second valid block gets no PREPARE.
    assert!(votes(
        &drive(&mut v, Input::Proposal(b2.clone())),
        VoteKind::Prepare
    )
    .is_empty());
    assert!(drive(&mut v, Input::Proposal(b1)).is_empty());
    // But a P-certificate for the other block is still honoured (one commit-type vote).
    for i in 1..=3 {
        drive(&mut v, Input::Vote(s.vote(i, VoteKind::Prepare, b2.hash())));
    }
    assert_eq!(v.phase(), Phase::Commit);
}

#[test]
fn impeach_block_is_identical_everywhere_golden() {
    let s = setup(4);
    let p = Address::of(&s.proposer.public());
    let want = impeach_block(&s.cfg, &s.genesis, s.root, p);
    assert_eq!(want.header.kind, BlockKind::Impeach);
    assert_eq!(want.header.timestamp_ms, T0 + 1_000 + 2_000);
    assert_eq!(want.header.seal, None);
    assert_eq!(
        want.txs,
        vec![Tx::Penalty {
            proposer: p,
            number: 1
        }]
    );
    assert_eq!(want.header.tx_root, Block::compute_tx_root(&want.txs));
    assert_eq!(want.header.state_root, s.root);
    assert_eq!(want.header.parent, s.genesis.hash());
    assert_eq!(want.header.proposer, p);
    // Golden: pinned so that any change of the construction is deliberate.
    assert_eq!(
        want.hash().to_hex(),
        "c28c1c240f1d29aedeffea343ca484801a62215dcf476b786de52fb17ce98731",
        "impeach block construction changed"
    );
    // Every validator's timer expiry yields an IMPEACH PREPARE for that same block.
    let mut all = Vec::new();
    for i in 0..4 {
        let mut v = s.validator(i);
        assert_eq!(v.impeach_candidate().map(Block::hash), Some(want.hash()));
        let outs = drive(
            &mut v,
            Input::Timeout(TimerKind::Round {
                number: 1,
                round: 0,
            }),
        );
        let ip = votes(&outs, VoteKind::ImpeachPrepare);
        assert_eq!(ip.len(), 1);
        assert_eq!(ip[0].block, want.hash());
        assert_eq!(v.phase(), Phase::ImpeachPrepare);
        all.push((v, ip[0].clone()));
    }
    // 2f+1 IMPEACH PREPAREs → IMPEACH COMMIT; 2f+1 of those → insert + IMPEACH VALIDATE.
    let ips: Vec<Vote> = all.iter().map(|(_, v)| v.clone()).collect();
    let (v0, _) = &mut all[0];
    let outs = drive(v0, Input::Vote(ips[1].clone()));
    assert!(votes(&outs, VoteKind::ImpeachCommit).is_empty());
    let outs = drive(v0, Input::Vote(ips[2].clone()));
    assert_eq!(votes(&outs, VoteKind::ImpeachCommit).len(), 1);
    assert_eq!(v0.phase(), Phase::ImpeachCommit);
    drive(
        v0,
        Input::Vote(s.vote(1, VoteKind::ImpeachCommit, want.hash())),
    );
    let outs = drive(
        v0,
        Input::Vote(s.vote(2, VoteKind::ImpeachCommit, want.hash())),
    );
    let ins = inserts(&outs);
    assert_eq!(ins.len(), 1);
    assert_eq!(ins[0].0, want);
    assert_eq!(ins[0].1.kind, VoteKind::ImpeachCommit);
    assert_eq!(validates(&outs), 1);
}

#[test]
fn impeach_committed_never_commits_and_committed_never_impeaches() {
    let s = setup(4);
    let b = s.block(0);
    // Impeach-committed validator ignores a later P-certificate.
    let mut v = s.validator(0);
    let imp = v.impeach_candidate().map(Block::hash).unwrap();
    drive(
        &mut v,
        Input::Timeout(TimerKind::Round {
            number: 1,
            round: 0,
        }),
    );
    for i in 1..=2 {
        drive(
            &mut v,
            Input::Vote(s.vote(i, VoteKind::ImpeachPrepare, imp)),
        );
    }
    assert_eq!(v.phase(), Phase::ImpeachCommit);
    drive(&mut v, Input::Proposal(b.clone()));
    let mut outs = Vec::new();
    for i in 1..=3 {
        outs.extend(drive(
            &mut v,
            Input::Vote(s.vote(i, VoteKind::Prepare, b.hash())),
        ));
    }
    assert!(votes(&outs, VoteKind::Commit).is_empty());
    assert_eq!(v.phase(), Phase::ImpeachCommit);
    // A committed validator does not start impeachment on timer expiry.
    let mut w = s.validator(0);
    drive(&mut w, Input::Proposal(b.clone()));
    for i in 1..=2 {
        drive(&mut w, Input::Vote(s.vote(i, VoteKind::Prepare, b.hash())));
    }
    assert_eq!(w.phase(), Phase::Commit);
    assert_eq!(w.locked(), Some((b.hash(), 0)));
    // Its round ends: round 1, where the lock makes it PREPARE the same block again.
    let outs = drive(
        &mut w,
        Input::Timeout(TimerKind::Round {
            number: 1,
            round: 0,
        }),
    );
    assert!(votes(&outs, VoteKind::ImpeachPrepare).is_empty());
    let p = votes(&outs, VoteKind::Prepare);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].round, p[0].block), (1, b.hash()));
    assert_eq!((w.round(), w.phase()), (1, Phase::Prepare));
}

/// The single-round split stall: a validator locked on the proposed block in round 0
/// learns, only after round 1 ended, of a round-1 P-certificate for the impeach block. A
/// P-certificate from a round at or above its lock round moves it in the next round, and
/// 2f+1 commit-type votes of one round finalise with that round in the certificate.
#[test]
fn a_higher_p_certificate_unlocks_and_the_height_finishes() {
    let s = setup(4);
    let b = s.block(0);
    let mut v = s.validator(0);
    let imp = v.impeach_candidate().map(Block::hash).unwrap();
    drive(&mut v, Input::Proposal(b.clone()));
    for i in 1..=2 {
        drive(&mut v, Input::Vote(s.vote(i, VoteKind::Prepare, b.hash())));
    }
    assert_eq!(v.locked(), Some((b.hash(), 0)));
    // Rounds 1 and 2: the lock makes it PREPARE b again.
    for r in 0..2 {
        let outs = drive(
            &mut v,
            Input::Timeout(TimerKind::Round {
                number: 1,
                round: r,
            }),
        );
        let p = votes(&outs, VoteKind::Prepare);
        assert_eq!((p[0].round, p[0].block), (r + 1, b.hash()));
    }
    // The round-1 P-certificate for the impeach block arrives late: no vote in round 1.
    let mut outs = Vec::new();
    for i in 1..=3 {
        outs.extend(drive(
            &mut v,
            Input::Vote(s.vote_in(i, VoteKind::ImpeachPrepare, 1, imp)),
        ));
    }
    assert!(votes(&outs, VoteKind::ImpeachCommit).is_empty());
    assert_eq!(v.stats().evidence, 0);
    // Round 3: the round-1 P-certificate (round 1 ≥ lock round 0) switches it, and it is
    // relayed.
    let outs = drive(
        &mut v,
        Input::Timeout(TimerKind::Round {
            number: 1,
            round: 2,
        }),
    );
    let ip = votes(&outs, VoteKind::ImpeachPrepare);
    assert_eq!(ip.len(), 1);
    assert_eq!((ip[0].round, ip[0].block), (3, imp));
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Broadcast(Message::PCertificate(p)) if p.len() == 3)));
    let mut outs = Vec::new();
    for i in 1..=2 {
        outs.extend(drive(
            &mut v,
            Input::Vote(s.vote_in(i, VoteKind::ImpeachPrepare, 3, imp)),
        ));
    }
    assert_eq!(votes(&outs, VoteKind::ImpeachCommit).len(), 1);
    assert_eq!(v.locked(), Some((imp, 3)));
    let mut outs = Vec::new();
    for i in 1..=2 {
        outs.extend(drive(
            &mut v,
            Input::Vote(s.vote_in(i, VoteKind::ImpeachCommit, 3, imp)),
        ));
    }
    let ins = inserts(&outs);
    assert_eq!(ins.len(), 1);
    assert_eq!(ins[0].0.hash(), imp);
    assert_eq!(ins[0].1.round, 3);
}

/// PREPARE and IMPEACH PREPARE of one validator in one round are a double vote; in two
/// rounds they are not.
#[test]
fn prepare_types_conflict_within_a_round_only() {
    let s = setup(4);
    let b = s.block(0);
    let mut v = s.validator(0);
    let imp = v.impeach_candidate().map(Block::hash).unwrap();
    drive(
        &mut v,
        Input::Vote(s.vote_in(1, VoteKind::Prepare, 0, b.hash())),
    );
    drive(
        &mut v,
        Input::Vote(s.vote_in(1, VoteKind::ImpeachPrepare, 1, imp)),
    );
    assert_eq!(v.stats().evidence, 0);
    let outs = drive(
        &mut v,
        Input::Vote(s.vote_in(1, VoteKind::ImpeachPrepare, 0, imp)),
    );
    assert_eq!(v.stats().evidence, 1);
    assert!(outs.iter().any(|o| matches!(o, Output::Evidence(_))));
}

#[test]
fn validate_is_checked_inserted_and_relayed_once() {
    let s = setup(4);
    let b = s.block(0);
    let h = b.hash();
    let mut f = s.follower();
    assert!(!f.is_validator());
    // Too few signatures, a forged signature, a wrong kind: rejected.
    let short = s.cert(&[0, 1], VoteKind::Commit, h);
    assert!(drive(&mut f, Input::Validate(b.clone(), short)).is_empty());
    let mut forged = s.cert(&[0, 1, 2], VoteKind::Commit, h);
    forged.sigs[1].1 .0[7] ^= 1;
    assert!(drive(&mut f, Input::Validate(b.clone(), forged)).is_empty());
    let wrong_kind = s.cert(&[0, 1, 2], VoteKind::Prepare, h);
    assert!(drive(&mut f, Input::Validate(b.clone(), wrong_kind)).is_empty());
    assert_eq!(f.height(), 1);
    assert_eq!(f.stats().bad_signature, 1);
    // A valid one: insert and relay once; the same again is old news.
    let good = s.cert(&[1, 2, 3], VoteKind::Commit, h);
    let outs = drive(&mut f, Input::Validate(b.clone(), good.clone()));
    assert_eq!(inserts(&outs).len(), 1);
    assert_eq!(validates(&outs), 1);
    assert_eq!(f.height(), 2);
    assert!(drive(&mut f, Input::Validate(b, good)).is_empty());
}

#[test]
fn double_vote_is_evidence() {
    let s = setup(4);
    let mut v = s.validator(0);
    let (x, y) = (Hash::of(b"x"), Hash::of(b"y"));
    assert!(drive(&mut v, Input::Vote(s.vote(2, VoteKind::Commit, x))).is_empty());
    let outs = drive(&mut v, Input::Vote(s.vote(2, VoteKind::Commit, y)));
    let ev: Vec<_> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Evidence(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].a.block, ev[0].b.block), (x, y));
    assert_eq!(ev[0].a.validator, ev[0].b.validator);
    // Reported once; a PREPARE and an IMPEACH PREPARE of one validator in two rounds are
    // not a double vote.
    let outs = drive(
        &mut v,
        Input::Vote(s.vote(2, VoteKind::Commit, Hash::of(b"z"))),
    );
    assert!(!outs.iter().any(|o| matches!(o, Output::Evidence(_))));
    drive(&mut v, Input::Vote(s.vote(3, VoteKind::Prepare, x)));
    let outs = drive(
        &mut v,
        Input::Vote(s.vote_in(3, VoteKind::ImpeachPrepare, 1, y)),
    );
    assert!(!outs.iter().any(|o| matches!(o, Output::Evidence(_))));
    assert_eq!(v.stats().evidence, 1);
}

#[test]
fn illicit_block_from_the_proposer_starts_impeachment() {
    let s = setup(4);
    let mut v = s.validator(0);
    let mut b = s.block(0);
    b.header.timestamp_ms = T0 + 1_000 - 3 * s.cfg.max_clock_skew_ms;
    b.header.seal_with(&s.proposer);
    let outs = drive(&mut v, Input::Proposal(b));
    assert_eq!(votes(&outs, VoteKind::ImpeachPrepare).len(), 1);
    assert_eq!(v.phase(), Phase::ImpeachPrepare);
    assert_eq!(v.stats().illicit, 1);
}

#[test]
fn wrong_turn_and_forged_seal_are_dropped_without_impeachment() {
    let s = setup(4);
    let mut v = s.validator(0);
    // Sealed by someone whose turn it is not.
    let other = Keypair::from_seed([77; 32]);
    let b = propose(&s.cfg, &other, &s.genesis, s.root, vec![], T0 + 1_000);
    assert!(drive(&mut v, Input::Proposal(b)).is_empty());
    // The scheduled proposer's name with a forged seal.
    let mut b = s.block(0);
    b.header.seal = Some(crypto_accel::Signature([3; 64]));
    assert!(drive(&mut v, Input::Proposal(b)).is_empty());
    // Wrong chain id.
    let mut b = s.block(1);
    b.header.chain_id += 1;
    b.header.seal_with(&s.proposer);
    assert!(drive(&mut v, Input::Proposal(b)).is_empty());
    assert_eq!(v.phase(), Phase::Idle);
    // The honest block still gets its PREPARE.
    assert_eq!(
        votes(
            &drive(&mut v, Input::Proposal(s.block(2))),
            VoteKind::Prepare
        )
        .len(),
        1
    );
}

#[test]
fn future_messages_are_buffered_within_the_window_only() {
    let s = setup(4);
    let mut v = s.validator(0);
    let window = LbftParams::default().max_future_heights;
    let near = Vote::sign(
        &s.keys[1],
        s.cfg.chain_id,
        VoteKind::Prepare,
        2,
        0,
        Hash::of(b"n"),
    );
    let far = Vote::sign(
        &s.keys[1],
        s.cfg.chain_id,
        VoteKind::Prepare,
        2 + window,
        0,
        Hash::of(b"f"),
    );
    assert!(drive(&mut v, Input::Vote(near)).is_empty());
    assert_eq!(v.buffered(), 1);
    assert!(drive(&mut v, Input::Vote(far)).is_empty());
    assert_eq!(v.buffered(), 1);
    assert_eq!(v.stats().future_dropped, 1);
    // Old heights are dropped.
    let mut f = s.follower();
    let b = s.block(0);
    let c = s.cert(&[0, 1, 2], VoteKind::Commit, b.hash());
    drive(&mut f, Input::Validate(b.clone(), c.clone()));
    assert!(drive(&mut f, Input::Validate(b, c)).is_empty());
    assert!(f.stats().old >= 1);
}
