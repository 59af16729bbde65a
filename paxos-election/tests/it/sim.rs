//! A deterministic simulator of the election alone: seeded randomness,
//! simulated time, a network that drops, delays, duplicates and partitions,
//! nodes that crash and restart, and a thin model of the replica around each
//! elector (it settles on decisions, detects a lost leader, and a leader
//! steps down without a quorum).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use bytes::Bytes;
use paxos_core::{Decision, Elector, Epoch, NodeId, PeerState, Time, VoteInfo, Zxid};
use paxos_election::{
    ElectionConfig, FastElection, Majority, Notification, QuorumSystem, Vote, MAX_ROUND,
};

/// splitmix64, independent of the crate's private one.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
    pub fn per_mille(&mut self, p: u64) -> bool {
        self.below(1000) < p
    }
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let lo_n = lo.as_nanos() as u64;
        let hi_n = hi.as_nanos() as u64;
        Duration::from_nanos(lo_n + self.below(hi_n.saturating_sub(lo_n) + 1))
    }
}

/// Network and node faults of the chaos phase.
#[derive(Clone, Debug)]
pub struct Faults {
    pub drop_per_mille: u64,
    pub dup_per_mille: u64,
    pub delay_min: Duration,
    pub delay_max: Duration,
    /// Messages that take much longer (reordering).
    pub slow_per_mille: u64,
    pub slow_max: Duration,
    /// Per 20 ms tick.
    pub crash_per_mille: u64,
    pub restart_per_mille: u64,
    pub partition_per_mille: u64,
    pub heal_per_mille: u64,
}

impl Faults {
    pub fn chaos() -> Faults {
        Faults {
            drop_per_mille: 100,
            dup_per_mille: 50,
            delay_min: Duration::from_micros(100),
            delay_max: Duration::from_millis(20),
            slow_per_mille: 30,
            slow_max: Duration::from_millis(400),
            crash_per_mille: 20,
            restart_per_mille: 50,
            partition_per_mille: 15,
            heal_per_mille: 20,
        }
    }

    /// The stable phase: no loss, short bounded delays, no node faults.
    pub fn stable() -> Faults {
        Faults {
            drop_per_mille: 0,
            dup_per_mille: 20,
            delay_min: Duration::from_micros(100),
            delay_max: Duration::from_millis(2),
            slow_per_mille: 0,
            slow_max: Duration::ZERO,
            crash_per_mille: 0,
            restart_per_mille: 0,
            partition_per_mille: 0,
            heal_per_mille: 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub voters: usize,
    pub observers: usize,
    pub seed: u64,
    pub chaos: Faults,
    pub chaos_time: Duration,
    /// After chaos, only a (random) majority is connected; the rest is
    /// partitioned away (but up).
    pub majority_only: bool,
    /// How long the stable phase may take to elect; exceeding it is a
    /// liveness violation.
    pub stable_bound: Duration,
    /// Feed each node bad input (unknown ids, impossible rounds, malformed
    /// bytes) from a separate random stream.
    pub inject_bad_input: bool,
    /// Restarted nodes resume their persisted round (the documented use).
    pub persist_round: bool,
    pub election: ElectionConfig,
    /// Failure detection: a lost leader (or a leader's lost quorum) is
    /// noticed after a random time in `[detect, 2 * detect]`.
    pub detect: Duration,
}

impl SimConfig {
    pub fn new(voters: usize, seed: u64) -> SimConfig {
        SimConfig {
            voters,
            observers: 0,
            seed,
            chaos: Faults::chaos(),
            chaos_time: Duration::from_secs(3),
            majority_only: false,
            stable_bound: Duration::from_secs(60),
            inject_bad_input: false,
            persist_round: true,
            election: ElectionConfig::default(),
            detect: Duration::from_millis(300),
        }
    }
}

pub struct SimNode {
    pub id: NodeId,
    pub elector: FastElection,
    pub up: bool,
    /// The replica's history.
    pub info: VoteInfo,
    /// What the node passed to its last `start_looking`.
    pub looking_info: VoteInfo,
    pub persisted_round: u64,
    pub restarts: u64,
    pub group: u8,
    unhealthy_since: Option<Time>,
    detect_after: Duration,
}

enum Event {
    Deliver {
        from: NodeId,
        to: NodeId,
        bytes: Bytes,
    },
    Tick,
}

pub const TICK: Duration = Duration::from_millis(20);

pub struct Sim {
    pub cfg: SimConfig,
    pub now: Time,
    pub nodes: Vec<SimNode>,
    pub rng: Rng,
    bad_rng: Rng,
    faults: Faults,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    events: BTreeMap<usize, Event>,
    next_seq: u64,
    next_event_slot: usize,
    pub quorum: Majority,
    pub max_epoch: u32,
    /// Every decision, in order: (time, node, decision).
    pub decisions: Vec<(Time, NodeId, Decision)>,
    /// Round -> the leader decided in it.
    pub decided: BTreeMap<u64, NodeId>,
    /// Round -> genuine locks seen: (node, vote, the node's looking info,
    /// whether the node was connected to a quorum when it locked).
    pub locks: BTreeMap<u64, BTreeSet<(NodeId, Vote, VoteInfo, bool)>>,
    pub violations: Vec<String>,
    pub delivered: u64,
    pub dropped: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub bad_inputs: u64,
    /// Nodes that model an older build: they drop every frame of a wire
    /// version above 2 (as unsupported) before decoding it.
    pub older_builds: BTreeSet<NodeId>,
    /// Frames those nodes dropped so.
    pub unsupported_dropped: u64,
}

fn voter_ids(n: usize) -> Vec<NodeId> {
    (1..=n as u64).map(NodeId).collect()
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let voters = voter_ids(cfg.voters);
        let observers: Vec<NodeId> = (cfg.voters as u64 + 1..=(cfg.voters + cfg.observers) as u64)
            .map(NodeId)
            .collect();
        let mut nodes = Vec::new();
        for id in voters.iter().chain(observers.iter()).copied() {
            // Histories: a few epochs, many ties, so the order matters.
            let epoch = Epoch(1 + rng.below(2) as u32);
            let info = VoteInfo {
                current_epoch: epoch,
                last_zxid: Zxid::new(epoch, 1 + rng.below(4) as u32),
            };
            let elector = FastElection::new(ElectionConfig {
                id,
                voters: voters.clone(),
                observers: observers.clone(),
                seed: cfg.seed ^ id.0.wrapping_mul(0x1000_0000_01b3),
                ..cfg.election.clone()
            })
            .expect("the simulator builds valid configs");
            let detect_after = rng.between(cfg.detect, cfg.detect * 2);
            nodes.push(SimNode {
                id,
                elector,
                up: true,
                info,
                looking_info: info,
                persisted_round: 0,
                restarts: 0,
                group: 0,
                unhealthy_since: None,
                detect_after,
            });
        }
        let faults = cfg.chaos.clone();
        let bad_rng = Rng::new(cfg.seed ^ 0xBAD_BAD);
        let quorum = Majority::new(voters).expect("non-empty voters");
        let mut sim = Sim {
            cfg,
            now: Time::ZERO,
            nodes,
            rng,
            bad_rng,
            faults,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_seq: 0,
            next_event_slot: 0,
            quorum,
            max_epoch: 2,
            decisions: Vec::new(),
            decided: BTreeMap::new(),
            locks: BTreeMap::new(),
            violations: Vec::new(),
            delivered: 0,
            dropped: 0,
            crashes: 0,
            partitions: 0,
            bad_inputs: 0,
            older_builds: BTreeSet::new(),
            unsupported_dropped: 0,
        };
        sim.schedule(Time::ZERO + TICK, Event::Tick);
        sim
    }

    fn idx(&self, id: NodeId) -> usize {
        (id.0 - 1) as usize
    }

    fn schedule(&mut self, at: Time, ev: Event) {
        let slot = self.next_event_slot;
        self.next_event_slot += 1;
        self.events.insert(slot, ev);
        self.queue.push(Reverse((at, self.next_seq, slot)));
        self.next_seq += 1;
    }

    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        let (x, y) = (&self.nodes[self.idx(a)], &self.nodes[self.idx(b)]);
        x.up && y.up && x.group == y.group
    }

    /// Every node starts looking at time zero.
    pub fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start_looking(i);
        }
    }

    pub fn start_looking(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        n.looking_info = n.info;
        n.unhealthy_since = None;
        let info = n.info;
        n.elector.start_looking(now, info);
        self.after_input(i);
    }

    /// Like [`start_looking`](Self::start_looking), for the nominee of a
    /// leader's hand-over.
    pub fn start_looking_nominated(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        n.looking_info = n.info;
        n.unhealthy_since = None;
        let info = n.info;
        n.elector.start_looking_nominated(now, info);
        self.after_input(i);
    }

    fn after_input(&mut self, i: usize) {
        let now = self.now;
        self.nodes[i].persisted_round = self.nodes[i].elector.round();
        if let Some((round, vote)) = self.nodes[i].elector.lock() {
            let id = self.nodes[i].id;
            // Whether the locker was connected is read when the lock is
            // first seen, i.e. in the input that made it.
            let connected = self.nodes[i].elector.quorum_connected(now);
            let set = self.locks.entry(round).or_default();
            if !set.iter().any(|(l, v, _, _)| *l == id && *v == vote) {
                set.insert((id, vote, self.nodes[i].looking_info, connected));
            }
        }
        while let Some((to, msg)) = self.nodes[i].elector.poll_transmit() {
            let from = self.nodes[i].id;
            self.send(from, to, msg);
        }
        if let Some(d) = self.nodes[i].elector.poll_decision() {
            let id = self.nodes[i].id;
            self.decisions.push((now, id, d));
            match self.decided.get(&d.round) {
                Some(l) if *l != d.leader => self.violations.push(format!(
                    "round {}: {id:?} decided {:?} but {l:?} was decided before",
                    d.round, d.leader
                )),
                _ => {
                    self.decided.insert(d.round, d.leader);
                }
            }
            let state = if d.leader == id {
                PeerState::Leading
            } else if self.quorum.is_voter(id) {
                PeerState::Following
            } else {
                PeerState::Observing
            };
            let n = &mut self.nodes[i];
            if state == PeerState::Leading {
                self.max_epoch += 1;
                let e = Epoch(self.max_epoch);
                n.info = VoteInfo {
                    current_epoch: e,
                    last_zxid: Zxid::new(e, 0),
                };
            }
            n.unhealthy_since = None;
            n.elector.settle(now, state, d.leader, d.epoch_hint);
            assert!(n.elector.poll_transmit().is_none(), "settle sends nothing");
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: Notification) {
        if !self.connected(from, to) {
            return;
        }
        if self.rng.per_mille(self.faults.drop_per_mille) {
            self.dropped += 1;
            return;
        }
        let copies = if self.rng.per_mille(self.faults.dup_per_mille) {
            2
        } else {
            1
        };
        let bytes = msg.to_bytes();
        for _ in 0..copies {
            let delay = if self.rng.per_mille(self.faults.slow_per_mille) {
                self.rng
                    .between(self.faults.delay_max, self.faults.slow_max)
            } else {
                self.rng
                    .between(self.faults.delay_min, self.faults.delay_max)
            };
            let at = self.now + delay;
            self.schedule(
                at,
                Event::Deliver {
                    from,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// Feeds node `i` one piece of bad input from the separate random
    /// stream. The elector must drop it without any trace.
    fn inject_bad(&mut self, i: usize) {
        if !self.bad_rng.per_mille(300) {
            return;
        }
        self.bad_inputs += 1;
        let now = self.now;
        let total = self.nodes.len() as u64;
        let members = total;
        let target_round = self.nodes[i].elector.round();
        let me = self.nodes[i].id;
        let r = &mut self.bad_rng;
        let some_vote = |r: &mut Rng, leader: u64| Vote {
            leader: NodeId(leader),
            epoch: Epoch(r.below(5) as u32),
            zxid: Zxid(r.next_u64()),
            connected: r.below(2) == 0,
            nominated: r.below(4) == 0,
        };
        let known = NodeId(1 + r.below(members));
        let (from, msg) = match r.below(7) {
            0 => {
                // Unknown sender.
                let v = {
                    let l = 1 + r.below(members);
                    some_vote(r, l)
                };
                (
                    NodeId(members + 1 + r.below(1000)),
                    Notification {
                        vote: Some(v),
                        round: target_round,
                        state: PeerState::Looking,
                        locked: r.below(2) == 0,
                        abstain: false,
                    },
                )
            }
            1 => {
                // Impossibly far ahead.
                let v = {
                    let l = 1 + r.below(self.cfg.voters as u64);
                    some_vote(r, l)
                };
                let round = target_round + self.cfg.election.max_round_lead + 1 + r.below(1000);
                (
                    known,
                    Notification {
                        vote: Some(v),
                        round,
                        state: PeerState::Looking,
                        locked: false,
                        abstain: false,
                    },
                )
            }
            2 => {
                // Beyond the round space.
                let v = {
                    let l = 1 + r.below(self.cfg.voters as u64);
                    some_vote(r, l)
                };
                (
                    known,
                    Notification {
                        vote: Some(v),
                        round: MAX_ROUND + r.below(1 << 20),
                        state: PeerState::Leading,
                        locked: true,
                        abstain: false,
                    },
                )
            }
            3 => {
                // A lock without a vote. (A member's vote for a node we do
                // not know is no bad input: its view lags ours, and it is
                // answered without its vote; see the elector's unit tests.)
                (
                    known,
                    Notification {
                        vote: None,
                        round: target_round,
                        state: PeerState::Looking,
                        locked: true,
                        abstain: false,
                    },
                )
            }
            4 => {
                // Claims to lead for another node.
                let leader = 1 + r.below(self.cfg.voters as u64);
                let from = NodeId(if leader == known.0 {
                    leader % (self.cfg.voters as u64) + 1
                } else {
                    known.0
                });
                (
                    from,
                    Notification {
                        vote: Some(some_vote(r, leader)),
                        round: target_round,
                        state: PeerState::Leading,
                        locked: true,
                        abstain: false,
                    },
                )
            }
            5 => {
                // From ourselves.
                (
                    me,
                    Notification {
                        vote: Some(some_vote(r, me.0.min(self.cfg.voters as u64))),
                        round: target_round,
                        state: PeerState::Looking,
                        locked: true,
                        abstain: false,
                    },
                )
            }
            _ => {
                // Malformed bytes: never reach the elector.
                // (A random decodable message could be valid, so nothing
                // that decodes is fed to the elector.)
                let len = r.below(40) as usize;
                let bytes: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
                let _ = Notification::decode(&bytes);
                return;
            }
        };
        let n = &mut self.nodes[i];
        let before = format!("{:?}", n.elector);
        n.elector.handle_message(now, from, msg);
        let after = format!("{:?}", n.elector);
        if before != after {
            self.violations
                .push(format!("bad input from {from:?} changed {me:?}: {msg:?}"));
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, bytes: Bytes) {
        if !self.connected(from, to) {
            return;
        }
        let i = self.idx(to);
        if self.cfg.inject_bad_input {
            self.inject_bad(i);
        }
        if self.older_builds.contains(&to) && bytes.first().is_some_and(|v| *v > 2) {
            self.unsupported_dropped += 1;
            return;
        }
        let msg = match Notification::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                self.violations
                    .push(format!("our own encoding failed to decode: {e}"));
                return;
            }
        };
        self.delivered += 1;
        let now = self.now;
        self.nodes[i].elector.handle_message(now, from, msg);
        self.after_input(i);
    }

    fn crash(&mut self, i: usize) {
        self.crashes += 1;
        self.nodes[i].up = false;
    }

    pub fn restart(&mut self, i: usize, persisted: bool) {
        let n = &mut self.nodes[i];
        n.restarts += 1;
        let voters = voter_ids(self.cfg.voters);
        let observers: Vec<NodeId> = (self.cfg.voters as u64 + 1
            ..=(self.cfg.voters + self.cfg.observers) as u64)
            .map(NodeId)
            .collect();
        n.elector = FastElection::new(ElectionConfig {
            id: n.id,
            voters,
            observers,
            seed: self.cfg.seed ^ n.id.0.wrapping_mul(0x1000_0000_01b3) ^ (n.restarts << 40),
            initial_round: if persisted { n.persisted_round } else { 0 },
            ..self.cfg.election.clone()
        })
        .expect("the simulator builds valid configs");
        n.up = true;
        self.start_looking(i);
    }

    fn detect_window(&mut self) -> Duration {
        let d = self.cfg.detect;
        self.rng.between(d, d * 2)
    }

    /// The replica model and the fault schedule, every [`TICK`].
    fn tick(&mut self, chaos: bool) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                continue;
            }
            let healthy = self.healthy(i);
            if healthy {
                self.nodes[i].unhealthy_since = None;
                if self.nodes[i].elector.state() == PeerState::Leading {
                    self.leader_progress(i);
                }
                continue;
            }
            let since = *self.nodes[i].unhealthy_since.get_or_insert(now);
            if now - since >= self.nodes[i].detect_after {
                self.nodes[i].detect_after = self.detect_window();
                self.start_looking(i);
            }
        }
        if chaos {
            self.chaos_step();
        }
    }

    fn healthy(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        match n.elector.state() {
            PeerState::Looking => true,
            PeerState::Following | PeerState::Observing => match n.elector.leader() {
                Some(l) => {
                    let li = self.idx(l);
                    self.connected(n.id, l)
                        && self.nodes[li].elector.state() == PeerState::Leading
                        && self.nodes[li].elector.leader() == Some(l)
                }
                None => false,
            },
            PeerState::Leading => {
                let me = n.id;
                let mut ids = self.quorum.voters().iter().copied().filter(|&v| {
                    v == me
                        || (self.connected(me, v)
                            && self.nodes[self.idx(v)].elector.leader() == Some(me))
                });
                self.quorum.is_quorum(&mut ids)
            }
        }
    }

    /// A healthy leader appends; connected followers take its history.
    fn leader_progress(&mut self, i: usize) {
        let info = &mut self.nodes[i].info;
        if let Some(z) = info.last_zxid.next_in_epoch() {
            info.last_zxid = z;
        }
        let info = *info;
        let me = self.nodes[i].id;
        for j in 0..self.nodes.len() {
            if j != i
                && self.connected(me, self.nodes[j].id)
                && self.nodes[j].elector.leader() == Some(me)
                && self.rng.per_mille(750)
            {
                self.nodes[j].info = info;
            }
        }
    }

    fn chaos_step(&mut self) {
        let n = self.nodes.len() as u64;
        let down = self.nodes.iter().filter(|n| !n.up).count();
        if self.rng.per_mille(self.faults.crash_per_mille) && down * 2 < self.nodes.len() {
            let i = self.rng.below(n) as usize;
            if self.nodes[i].up {
                self.crash(i);
            }
        }
        if self.rng.per_mille(self.faults.restart_per_mille) {
            let i = self.rng.below(n) as usize;
            if !self.nodes[i].up {
                let persisted = self.cfg.persist_round;
                self.restart(i, persisted);
            }
        }
        if self.rng.per_mille(self.faults.partition_per_mille) {
            self.partitions += 1;
            for k in 0..self.nodes.len() {
                self.nodes[k].group = self.rng.below(2) as u8;
            }
        }
        if self.rng.per_mille(self.faults.heal_per_mille) {
            for k in 0..self.nodes.len() {
                self.nodes[k].group = 0;
            }
        }
        // The host's word on a peer's reachability (what a node of many
        // groups tells its electors after a crash or a partition), and one
        // time in ten a wrong one: a word only ever saves waiting, so no
        // word may make two decisions of a round differ.
        if self.rng.per_mille(100) {
            let i = self.rng.below(n) as usize;
            let k = self.rng.below(n) as usize;
            if i != k && self.nodes[i].up {
                let truth = self.nodes[k].up && self.connected(self.nodes[i].id, self.nodes[k].id);
                let word = truth != self.rng.per_mille(100);
                self.tell_reachable(i, k, word);
            }
        }
    }

    fn tell_reachable(&mut self, i: usize, k: usize, reachable: bool) {
        let (now, peer) = (self.now, self.nodes[k].id);
        self.nodes[i].elector.set_reachable(now, peer, reachable);
        self.after_input(i);
    }

    /// Every up node told the truth about every peer (the stable phase's
    /// host: no wrong word outlives the faults).
    fn tell_the_truth(&mut self) {
        for i in 0..self.nodes.len() {
            for k in 0..self.nodes.len() {
                if i != k && self.nodes[i].up {
                    let truth =
                        self.nodes[k].up && self.connected(self.nodes[i].id, self.nodes[k].id);
                    self.tell_reachable(i, k, truth);
                }
            }
        }
    }

    /// Runs until `until` or until `stop` says so (checked every tick).
    /// Returns whether `stop` fired.
    pub fn run_until(
        &mut self,
        until: Time,
        chaos: bool,
        mut stop: impl FnMut(&Sim) -> bool,
    ) -> bool {
        self.faults = if chaos {
            self.cfg.chaos.clone()
        } else {
            Faults::stable()
        };
        if !chaos {
            self.tell_the_truth();
        }
        // Bound the number of steps: ~ messages per tick times ticks.
        let ticks = (until - self.now).as_nanos() / TICK.as_nanos() + 2;
        let max_steps = (ticks as u64) * 2_000;
        for _ in 0..max_steps {
            let next_ev = self.queue.peek().map(|Reverse((t, _, _))| *t);
            let next_timer = self
                .nodes
                .iter()
                .filter(|n| n.up)
                .filter_map(|n| n.elector.poll_timeout())
                .min();
            let t = match (next_ev, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => return false,
                },
            };
            if t > until {
                self.now = until;
                return false;
            }
            self.now = self.now.max(t);
            if next_timer.is_some_and(|nt| nt <= t) {
                for i in 0..self.nodes.len() {
                    let due = self.nodes[i].up
                        && self.nodes[i]
                            .elector
                            .poll_timeout()
                            .is_some_and(|d| d <= self.now);
                    if due {
                        let now = self.now;
                        self.nodes[i].elector.handle_timeout(now);
                        self.after_input(i);
                    }
                }
                continue;
            }
            let Some(Reverse((_, _, slot))) = self.queue.pop() else {
                continue;
            };
            match self.events.remove(&slot) {
                Some(Event::Deliver { from, to, bytes }) => self.deliver(from, to, bytes),
                Some(Event::Tick) => {
                    self.tick(chaos);
                    let next = self.now + TICK;
                    self.schedule(next, Event::Tick);
                    if stop(self) {
                        return true;
                    }
                }
                None => {}
            }
        }
        self.violations
            .push(format!("step bound reached at {:?}", self.now));
        false
    }

    /// Ends the chaos: every node up; everyone connected, or only a random
    /// majority of voters (with a random share of observers).
    /// Returns the connected set.
    pub fn stabilise(&mut self) -> Vec<NodeId> {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                let persisted = self.cfg.persist_round;
                self.restart(i, persisted);
            }
        }
        let v = self.cfg.voters;
        let mut connected: Vec<NodeId> = Vec::new();
        if self.cfg.majority_only {
            let mut order: Vec<usize> = (0..v).collect();
            for k in (1..order.len()).rev() {
                let j = self.rng.below(k as u64 + 1) as usize;
                order.swap(k, j);
            }
            let majority = v / 2 + 1;
            for (rank, &i) in order.iter().enumerate() {
                self.nodes[i].group = if rank < majority { 0 } else { 1 };
            }
            for i in v..self.nodes.len() {
                self.nodes[i].group = self.rng.below(2) as u8;
            }
        } else {
            for n in &mut self.nodes {
                n.group = 0;
            }
        }
        for n in &self.nodes {
            if n.group == 0 {
                connected.push(n.id);
            }
        }
        connected
    }

    /// Every node of `set` settled on one leader of `set` that leads.
    pub fn elected_among(&self, set: &[NodeId]) -> Option<NodeId> {
        let first = self.nodes[self.idx(set[0])].elector.leader()?;
        if !set.contains(&first) {
            return None;
        }
        let all = set
            .iter()
            .all(|id| self.nodes[self.idx(*id)].elector.leader() == Some(first));
        let leads = self.nodes[self.idx(first)].elector.state() == PeerState::Leading;
        (all && leads).then_some(first)
    }

    /// The end-of-run checks: for every decided round, the nodes that locked
    /// the winner in that round form a quorum, and the winner's history is
    /// at least each of theirs.
    pub fn check_final(&mut self) {
        for (&round, &leader) in &self.decided {
            let lockers: Vec<&(NodeId, Vote, VoteInfo, bool)> = self
                .locks
                .get(&round)
                .map(|s| s.iter().filter(|(_, v, _, _)| v.leader == leader).collect())
                .unwrap_or_default();
            let mut ids = lockers
                .iter()
                .map(|(id, _, _, _)| *id)
                .collect::<BTreeSet<_>>()
                .into_iter();
            if !self.quorum.is_quorum(&mut ids) {
                self.violations.push(format!(
                    "round {round}: {leader:?} decided without a quorum of locks ({lockers:?})"
                ));
            }
            // The vote order ranks a connected candidate first: a locker
            // that was not connected may lock a connected winner with an
            // older history (discovery brings the winner up to date).
            for (id, vote, info, connected) in &lockers {
                if vote.info() < *info && (*connected || !vote.connected) {
                    self.violations.push(format!(
                        "round {round}: leader {leader:?} with {vote:?} is behind locker {id:?} with {info:?}"
                    ));
                }
            }
        }
        // A node locks at most one vote per round.
        for (round, set) in &self.locks {
            let mut by_node: BTreeMap<NodeId, Vote> = BTreeMap::new();
            for (id, v, _, _) in set {
                if let Some(prev) = by_node.insert(*id, *v) {
                    if prev != *v {
                        self.violations.push(format!(
                            "round {round}: {id:?} locked both {prev:?} and {v:?}"
                        ));
                    }
                }
            }
        }
    }
}
