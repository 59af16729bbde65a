//! Replica behaviour on a hand-driven cluster (no faults, messages handed
//! over directly): discovery, fetch, TRUNC, broadcast, reads, step-down,
//! observers, persistence gating.
//!
//! The cluster drives each replica through the node layer
//! ([`paxos_core::node::Node`]), which owns the loop over the kernel's
//! `Ready` (write, sync, release, apply); the tests read the kernel's state
//! through `Node::replica`. Tests that look at a raw `Ready` (what the
//! kernel asks, before any pipeline) drive a lone `Replica` step by step
//! and say why.

use std::cell::Cell;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use paxos_core::node::{
    Installed, Node, NodeConfig, NodeEvent, ProposeRejected, Rejection, Transmit,
};
use paxos_core::sim::TestPlanner;
use paxos_core::{
    ChangeError, Config, Decision, Elector, Entry, Envelope, Epoch, Event, FollowerPosition,
    GroupId, HardState, LeaderHistory, MemStorage, Membership, Message, NodeId, PeerState,
    ProposeError, Recovered, Replica, SnapChunk, StartError, StateMachine, Storage, StorageError,
    SyncPlan, SyncPlanner, Time, TransferError, VoteInfo, Zxid,
};

fn z(e: u32, c: u32) -> Zxid {
    Zxid::new(Epoch(e), c)
}

fn entry(zx: Zxid) -> Entry {
    Entry {
        kind: Default::default(),
        zxid: zx,
        data: Bytes::from(format!("cmd-{zx:?}")),
    }
}

fn storage_with(hs: HardState, zxids: &[Zxid]) -> MemStorage {
    let mut s = MemStorage::new();
    s.save_hard_state(hs).unwrap();
    s.append(&zxids.iter().map(|z| entry(*z)).collect::<Vec<_>>())
        .unwrap();
    s
}

/// An elector that decides only when the test appoints a leader
/// ([`Cluster::decide`]): the tests choose who leads, and a replica that
/// loses its leader waits for the next appointment.
struct Appointed {
    id: NodeId,
    ballot: Rc<Cell<Option<Decision>>>,
}

impl Elector for Appointed {
    type Message = Infallible;

    fn id(&self) -> NodeId {
        self.id
    }

    fn start_looking(&mut self, _now: Time, _me: VoteInfo) {}

    fn settle(&mut self, _now: Time, _state: PeerState, _leader: NodeId, _epoch: Epoch) {}

    fn handle_message(&mut self, _now: Time, _from: NodeId, msg: Infallible) {
        match msg {}
    }

    fn handle_timeout(&mut self, _now: Time) {}

    fn poll_timeout(&self) -> Option<Time> {
        None
    }

    fn poll_transmit(&mut self) -> Option<(NodeId, Infallible)> {
        None
    }

    fn poll_decision(&mut self) -> Option<Decision> {
        self.ballot.take()
    }
}

/// A state machine that records the zxids it applied, in order.
struct Recorder {
    applied: Zxid,
    log: Vec<Zxid>,
}

impl Recorder {
    /// A state machine restored (or staged) at `applied`.
    fn at(applied: Zxid) -> Recorder {
        Recorder {
            applied,
            log: Vec::new(),
        }
    }
}

impl StateMachine for Recorder {
    fn apply(&mut self, zxid: Zxid, _command: &Bytes) -> Bytes {
        self.applied = zxid;
        self.log.push(zxid);
        Bytes::new()
    }

    fn applied(&self) -> Zxid {
        self.applied
    }

    fn snapshot(&self, _out: &mut dyn std::io::Write) -> std::io::Result<()> {
        Ok(())
    }

    fn restore(&mut self, zxid: Zxid, _input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.applied = zxid;
        Ok(())
    }
}

type TestNode = Node<MemStorage, Appointed, Recorder, u32>;

struct Cluster {
    now: Time,
    nodes: Vec<TestNode>,
    /// Each node's elector's next decision.
    ballots: Vec<Rc<Cell<Option<Decision>>>>,
    queue: VecDeque<Envelope>,
    cut: Vec<NodeId>,
    events: Vec<(NodeId, NodeEvent<u32>)>,
    sent: Vec<Envelope>,
    /// Each turn's share of `sent`: (node, first index, end index).
    turns: Vec<(NodeId, usize, usize)>,
}

impl Cluster {
    fn new(config: Config, storages: Vec<MemStorage>) -> Cluster {
        let n = storages.len();
        Cluster::with_recovered(config, storages, vec![Recovered::default(); n])
    }

    fn with_recovered(
        config: Config,
        storages: Vec<MemStorage>,
        recovered: Vec<Recovered>,
    ) -> Cluster {
        Cluster::build(config, storages, recovered, NodeConfig::default(), |_| {})
    }

    /// A cluster whose node layers use `node_cfg`; `prepare` sees each
    /// replica before its node is composed (to mark it recovering, as a
    /// restart that found a damaged log would).
    fn build(
        config: Config,
        storages: Vec<MemStorage>,
        recovered: Vec<Recovered>,
        node_cfg: NodeConfig,
        prepare: impl FnMut(&mut Replica<MemStorage>),
    ) -> Cluster {
        Cluster::build_with(config, storages, recovered, node_cfg, prepare, &|| {
            Box::new(TestPlanner)
        })
    }

    /// [`Cluster::build`] with the sync planner `planner` makes.
    fn build_with(
        config: Config,
        storages: Vec<MemStorage>,
        recovered: Vec<Recovered>,
        node_cfg: NodeConfig,
        mut prepare: impl FnMut(&mut Replica<MemStorage>),
        planner: &dyn Fn() -> Box<dyn SyncPlanner + Send>,
    ) -> Cluster {
        let ids: Vec<NodeId> = config
            .voters
            .iter()
            .chain(&config.observers)
            .copied()
            .collect();
        let mut nodes = Vec::new();
        let mut ballots = Vec::new();
        for (id, (s, rec)) in ids.iter().zip(storages.into_iter().zip(recovered)) {
            let sm = Recorder::at(rec.applied);
            let mut replica =
                Replica::new(*id, config.clone(), s, planner(), rec, Time::ZERO).unwrap();
            prepare(&mut replica);
            let ballot = Rc::new(Cell::new(None));
            let elector = Appointed {
                id: *id,
                ballot: ballot.clone(),
            };
            nodes.push(Node::new(replica, elector, sm, node_cfg.clone()).unwrap());
            ballots.push(ballot);
        }
        Cluster {
            now: Time::ZERO,
            nodes,
            ballots,
            queue: VecDeque::new(),
            cut: Vec::new(),
            events: Vec::new(),
            sent: Vec::new(),
            turns: Vec::new(),
        }
    }

    fn idx(&self, id: NodeId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.replica().id() == id)
            .unwrap()
    }

    /// The zxids node `id` applied, in order.
    fn applied(&self, id: NodeId) -> &[Zxid] {
        &self.nodes[self.idx(id)].state_machine().log
    }

    /// Appoints `leader` on every node not cut off; the decision is taken
    /// at the nodes' next turn.
    fn decide(&mut self, leader: NodeId) {
        for (n, ballot) in self.nodes.iter().zip(&self.ballots) {
            if !self.cut.contains(&n.replica().id()) {
                ballot.set(Some(Decision {
                    leader,
                    round: 1,
                    epoch_hint: Epoch::ZERO,
                }));
            }
        }
    }

    /// One turn of node `i`: it processes its inputs, every background
    /// sync it asks for completes at once, and its frames and events are
    /// collected (frames are queued, not delivered).
    fn drive(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        let id = n.replica().id();
        let first = self.sent.len();
        n.process(now).unwrap();
        while let Some(sync) = n.poll_sync() {
            n.storage_mut().sync().unwrap();
            n.handle_sync_done(now, sync, Ok(())).unwrap();
            n.process(now).unwrap();
        }
        while let Some(t) = n.poll_transmit() {
            match t {
                Transmit::Core(env) => {
                    self.sent.push(env.clone());
                    self.queue.push_back(env);
                }
                Transmit::Election(_, msg) => match msg {},
            }
        }
        while let Some(ev) = n.poll_event() {
            self.events.push((id, ev));
        }
        if self.sent.len() > first {
            self.turns.push((id, first, self.sent.len()));
        }
    }

    /// Delivers until quiet (bounded).
    fn pump(&mut self) {
        for _ in 0..10_000 {
            for i in 0..self.nodes.len() {
                self.drive(i);
            }
            let Some(env) = self.queue.pop_front() else {
                return;
            };
            if self.cut.contains(&env.to) || self.cut.contains(&env.from) {
                continue;
            }
            let i = self.idx(env.to);
            let now = self.now;
            self.nodes[i].handle_message(now, env);
        }
        panic!("cluster did not quiesce");
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for i in 0..self.nodes.len() {
            if !self.cut.contains(&self.nodes[i].replica().id()) {
                let now = self.now;
                self.nodes[i].handle_timeout(now);
            }
        }
        self.pump();
    }

    /// Proposes `data` at node `i` through its node layer.
    fn propose(
        &mut self,
        i: usize,
        data: Bytes,
        token: u32,
    ) -> Result<Zxid, Rejection<ProposeRejected, u32>> {
        let now = self.now;
        self.nodes[i].propose(now, data, token)
    }

    /// How many times node `id` answered the read `token`.
    fn read_ready(&self, id: NodeId, token: u32) -> usize {
        self.events
            .iter()
            .filter(|(n, e)| {
                *n == id && matches!(e, NodeEvent::ReadReady { token: t } if *t == token)
            })
            .count()
    }
}

fn mem(n: usize) -> Vec<MemStorage> {
    (0..n).map(|_| MemStorage::new()).collect()
}

fn three() -> Config {
    Config::new(GroupId(0), vec![NodeId(1), NodeId(2), NodeId(3)])
}

#[test]
fn elect_sync_and_commit_in_order_everywhere() {
    let mut c = Cluster::new(three(), mem(3));
    c.decide(NodeId(1));
    c.pump();
    assert!(c.nodes[0].is_leader());
    let mut zs = Vec::new();
    for k in 0..10u8 {
        zs.push(c.propose(0, Bytes::from(vec![k]), k.into()).unwrap());
    }
    c.pump();
    c.advance(Duration::from_millis(60)); // heartbeat carries the commit point
    for id in [NodeId(1), NodeId(2), NodeId(3)] {
        assert_eq!(
            c.applied(id),
            &zs[..],
            "every replica applies the same sequence"
        );
    }
    assert_eq!(zs[0], z(1, 1));
    for n in &c.nodes {
        assert_eq!(
            n.replica().hard_state(),
            HardState {
                accepted_epoch: Epoch(1),
                current_epoch: Epoch(1)
            }
        );
    }
}

#[test]
fn leader_reports_each_followers_progress() {
    let mut c = Cluster::new(three(), mem(3));
    c.decide(NodeId(1));
    c.pump();
    assert!(
        c.nodes[1].replica().peer_progress().is_empty(),
        "only a leader reports progress"
    );
    let mut last = Zxid::ZERO;
    for k in 0..5u8 {
        last = c.propose(0, Bytes::from(vec![k]), k.into()).unwrap();
    }
    c.pump();
    c.advance(Duration::from_millis(60));
    let progress = c.nodes[0].replica().peer_progress();
    let ids: Vec<NodeId> = progress.iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![NodeId(2), NodeId(3)]);
    for p in &progress {
        assert_eq!(p.matched, last, "{p:?} holds every entry");
        assert!(p.in_broadcast && !p.observer, "{p:?}");
    }
}

#[test]
fn a_follower_refuses_proposals_and_hands_the_command_back() {
    let mut c = Cluster::new(three(), mem(3));
    c.decide(NodeId(1));
    c.pump();
    let Err(Rejection {
        error: ProposeRejected::Kernel(err),
        token,
    }) = c.propose(1, Bytes::from_static(b"x"), 4)
    else {
        panic!("a follower accepted a proposal");
    };
    assert_eq!(token, 4, "the caller's token comes back");
    assert!(matches!(
        err,
        ProposeError::NotLeader {
            leader: Some(NodeId(1)),
            ..
        }
    ));
    assert_eq!(err.into_data(), Bytes::from_static(b"x"));
}

#[test]
fn leader_fetches_the_quorums_most_recent_history_first() {
    let hs1 = HardState {
        accepted_epoch: Epoch(1),
        current_epoch: Epoch(1),
    };
    // n2 holds more of epoch 1 than n1; n1 is elected anyway.
    let s1 = storage_with(hs1, &[z(1, 1), z(1, 2), z(1, 3)]);
    let s2 = storage_with(hs1, &[z(1, 1), z(1, 2), z(1, 3), z(1, 4), z(1, 5)]);
    let mut c = Cluster::new(three(), vec![s1, s2, MemStorage::new()]);
    c.cut.push(NodeId(3)); // the quorum is {n1, n2}
    c.decide(NodeId(1));
    c.pump();
    assert!(c
        .sent
        .iter()
        .any(|e| matches!(e.msg, Message::FetchHistory { .. })));
    let n1 = c.nodes[0].replica();
    assert!(n1.is_leader());
    assert_eq!(n1.last_zxid(), z(1, 5), "the leader adopted n2's suffix");
    assert_eq!(n1.commit_zxid(), z(1, 5), "the synced history is committed");
    assert!(n1.storage().get(z(1, 5)).is_some());
}

/// n1 is elected with (1,1)..(1,3); n2 holds up to (1,7) but compacted its
/// log into a snapshot at (1,5). n2 cannot serve the fetch by DIFF, so n1
/// asks for its snapshot.
fn leader_elect_behind_a_compacted_follower() -> Cluster {
    let hs1 = HardState {
        accepted_epoch: Epoch(1),
        current_epoch: Epoch(1),
    };
    let s1 = storage_with(hs1, &[z(1, 1), z(1, 2), z(1, 3)]);
    let s2 = storage_with(hs1, &[z(1, 6), z(1, 7)]);
    let snap = Recovered {
        applied: z(1, 5),
        snapshot: Some(z(1, 5)),
        membership: None,
    };
    let mut c = Cluster::with_recovered(
        three(),
        vec![s1, s2, MemStorage::new()],
        vec![Recovered::default(), snap, Recovered::default()],
    );
    c.cut.push(NodeId(3)); // the quorum is {n1, n2}
    c.decide(NodeId(1));
    c.pump();
    assert!(c
        .sent
        .iter()
        .any(|e| matches!(e.msg, Message::FetchReply { unable: true, .. })));
    assert!(c.sent.iter().any(|e| e.to == NodeId(2)
        && matches!(
            e.msg,
            Message::FetchSnapshot {
                snapshot: Zxid::ZERO,
                offset: 0,
                ..
            }
        )));
    c
}

fn chunk(snapshot: Zxid) -> SnapChunk {
    let data = Bytes::from_static(b"state");
    SnapChunk {
        snapshot_zxid: snapshot,
        offset: 0,
        total_len: data.len() as u64,
        crc32: 0,
        fingerprint: 0,
        data,
        last: true,
    }
}

/// Whether `ev` is work on a snapshot transfer (the kernel's snapshot
/// requests, as the node layer hands them on).
fn is_snapshot_work(ev: &NodeEvent<u32>) -> bool {
    matches!(
        ev,
        NodeEvent::SendSnapshot { .. } | NodeEvent::SnapshotChunk { .. }
    )
}

#[test]
fn a_leader_elect_takes_a_compacted_followers_snapshot_then_its_suffix() {
    let mut c = leader_elect_behind_a_compacted_follower();
    // n2's driver is asked to stream its snapshot to n1.
    let req = c
        .events
        .iter()
        .find(|(n, ev)| *n == NodeId(2) && is_snapshot_work(ev));
    assert!(
        matches!(
            req,
            Some((
                _,
                NodeEvent::SendSnapshot {
                    to: NodeId(1),
                    snapshot,
                    offset: 0
                }
            )) if *snapshot == z(1, 5)
        ),
        "{req:?}"
    );
    assert!(
        !c.nodes[1].send_snapshot_chunk(NodeId(1), chunk(z(1, 4))),
        "only the snapshot asked for is sent"
    );
    assert!(c.nodes[1].send_snapshot_chunk(NodeId(1), chunk(z(1, 5))));
    c.pump();
    // n1's driver writes it; nothing is proposed before it is installed.
    assert!(c.events.iter().any(|(n, ev)| *n == NodeId(1)
        && matches!(ev, NodeEvent::SnapshotChunk { from: NodeId(2), chunk } if chunk.snapshot_zxid == z(1, 5))));
    assert!(!c.nodes[0].is_leader());
    assert!(!c
        .sent
        .iter()
        .any(|e| matches!(e.msg, Message::NewLeader { .. })));
    let now = c.now;
    c.nodes[0].snapshot_progress(now, z(1, 5), 5, true);
    let membership = c.nodes[1].membership_at(z(1, 5));
    assert_eq!(
        c.nodes[0].install_snapshot(now, z(1, 5), Recorder::at(z(1, 5)), membership),
        Installed::Replaced,
        "the snapshot asked for replaces the state"
    );
    c.pump();
    // Then the entries after the snapshot, by DIFF, and n1 leads.
    let n1 = c.nodes[0].replica();
    assert!(n1.is_leader());
    assert_eq!(n1.last_zxid(), z(1, 7));
    assert_eq!(n1.commit_zxid(), z(1, 7));
    assert!(n1.storage().get(z(1, 7)).is_some());
    assert!(n1.storage().get(z(1, 3)).is_none(), "log reset");
    assert_eq!(n1.hard_state().current_epoch, Epoch(2));
    // The state machine continues after the snapshot.
    c.advance(Duration::from_millis(60));
    assert_eq!(c.applied(NodeId(1)), &[z(1, 6), z(1, 7)]);
}

#[test]
fn a_leader_elect_refuses_a_snapshot_that_does_not_cover_its_log() {
    let mut c = leader_elect_behind_a_compacted_follower();
    let now = c.now;
    // A faulty peer streams a snapshot below n1's last zxid: installing it
    // would drop (1,3), so n1 gives up its discovery instead.
    c.nodes[0].handle_message(
        now,
        Envelope {
            group: GroupId(0),
            from: NodeId(2),
            to: NodeId(1),
            msg: Message::Snap {
                epoch: Epoch(2),
                round: 0,
                chunk: chunk(z(1, 2)),
            },
        },
    );
    c.pump();
    assert!(c.nodes[0].replica().leader().is_none(), "n1 stepped down");
    assert!(!c
        .events
        .iter()
        .any(|(n, ev)| *n == NodeId(1) && matches!(ev, NodeEvent::SnapshotChunk { .. })));
    assert_eq!(
        c.nodes[0].replica().last_zxid(),
        z(1, 3),
        "n1's log is intact"
    );
}

#[test]
fn uncommitted_old_suffix_is_truncated() {
    let hs2 = HardState {
        accepted_epoch: Epoch(2),
        current_epoch: Epoch(2),
    };
    let hs1 = HardState {
        accepted_epoch: Epoch(1),
        current_epoch: Epoch(1),
    };
    let s1 = storage_with(hs2, &[z(1, 1), z(1, 2), z(2, 1)]);
    let s2 = storage_with(hs2, &[z(1, 1), z(1, 2), z(2, 1)]);
    // n3 kept an epoch-1 suffix that never committed.
    let s3 = storage_with(hs1, &[z(1, 1), z(1, 2), z(1, 3), z(1, 4)]);
    let mut c = Cluster::new(three(), vec![s1, s2, s3]);
    c.decide(NodeId(1));
    c.pump();
    assert!(c
        .sent
        .iter()
        .any(|e| matches!(e.msg, Message::Trunc { to, .. } if to == z(1, 2))));
    let log3: Vec<Zxid> = {
        let mut out = Vec::new();
        c.nodes[2]
            .storage()
            .entries(z(1, 1), 100, usize::MAX, &mut out)
            .unwrap();
        out.into_iter().map(|e| e.zxid).collect()
    };
    assert_eq!(log3, vec![z(1, 1), z(1, 2), z(2, 1)]);
}

/// A leader catching up a far-behind follower sends it at most
/// `max_send_bytes_per_input` of DIFF in one turn (plus the one batch that
/// crosses the bound), and the rest over the following turns. It used to
/// read and send a whole pipeline window in one turn (64 MiB with the
/// defaults), which on a slow or busy machine outlasted the election
/// timeout: the leader missed its heartbeats, lost its quorum, was elected
/// again and repeated the burst (the paxos-kv test
/// `a_wiped_follower_catches_up_a_large_state_with_one_transfer_while_writes_go_on`
/// went through 140 epochs that way).
#[test]
fn a_far_behind_follower_is_caught_up_a_bounded_burst_per_turn() {
    const ENTRIES: u32 = 96;
    const ENTRY_BYTES: usize = 256 * 1024;
    let hs = HardState {
        accepted_epoch: Epoch(1),
        current_epoch: Epoch(1),
    };
    let big = |c: u32| Entry {
        kind: Default::default(),
        zxid: z(1, c),
        data: Bytes::from(vec![c as u8; ENTRY_BYTES]),
    };
    let log = || {
        let mut s = MemStorage::new();
        s.save_hard_state(hs).unwrap();
        s.append(&(1..=ENTRIES).map(big).collect::<Vec<_>>())
            .unwrap();
        s
    };
    let config = three();
    let bound = config.max_send_bytes_per_input;
    let batch = config.max_batch_bytes;
    assert!(
        (ENTRIES as usize) * ENTRY_BYTES > 4 * bound,
        "the follower's gap must span several turns' bounds"
    );
    let mut c = Cluster::new(config, vec![log(), log(), MemStorage::new()]);
    c.decide(NodeId(1));
    c.pump();
    let diff_bytes = |e: &Envelope| match &e.msg {
        Message::Diff { entries, .. } => entries.iter().map(|e| e.data.len()).sum::<usize>(),
        _ => 0,
    };
    let mut most = 0usize;
    let mut total = 0usize;
    for &(id, first, end) in &c.turns {
        if id != NodeId(1) {
            continue;
        }
        let turn: usize = c.sent[first..end]
            .iter()
            .filter(|e| e.to == NodeId(3))
            .map(diff_bytes)
            .sum();
        most = most.max(turn);
        total += turn;
    }
    assert!(
        most <= bound + batch,
        "one turn sent {most} bytes of DIFF to the follower (bound {bound} plus one batch)"
    );
    assert!(
        total >= (ENTRIES as usize) * ENTRY_BYTES,
        "the whole gap was sent ({total} bytes)"
    );
    assert_eq!(
        c.nodes[2].replica().last_zxid(),
        z(1, ENTRIES),
        "the follower caught up over the following turns"
    );
}

/// Whether `t` is a follower's acknowledgement of an accepted entry.
fn is_accepted(t: &Transmit<Infallible>) -> bool {
    matches!(t, Transmit::Core(env) if matches!(env.msg, Message::Accepted { .. }))
}

#[test]
fn acks_wait_for_persistence() {
    // Every follower batch goes through the background sync, which this
    // test completes by hand: what the kernel gave as a persisted message
    // cannot leave before it.
    let mut c = Cluster::build(
        three(),
        mem(3),
        vec![Recovered::default(); 3],
        NodeConfig {
            inline_sync_bytes: 0,
            ..NodeConfig::default()
        },
        |_| {},
    );
    c.decide(NodeId(1));
    c.pump();
    let now = c.now;
    let n2 = &mut c.nodes[1];
    n2.handle_message(
        now,
        Envelope {
            group: GroupId(0),
            from: NodeId(1),
            to: NodeId(2),
            msg: Message::Accept {
                epoch: Epoch(1),
                prev: Zxid::ZERO,
                commit: Zxid::ZERO,
                entries: vec![entry(z(1, 1))],
            },
        },
    );
    n2.process(now).unwrap();
    assert_eq!(
        n2.storage().last_zxid(),
        Some(z(1, 1)),
        "the entry is written at once"
    );
    let sync = n2.poll_sync().expect("the written entry needs a sync");
    let mut before = Vec::new();
    while let Some(t) = n2.poll_transmit() {
        before.push(t);
    }
    assert!(
        !before.iter().any(is_accepted),
        "acknowledged before the sync: {before:?}"
    );
    n2.storage_mut().sync().unwrap();
    n2.handle_sync_done(now, sync, Ok(())).unwrap();
    n2.process(now).unwrap();
    let mut after = Vec::new();
    while let Some(t) = n2.poll_transmit() {
        after.push(t);
    }
    assert!(
        after.iter().any(|t| matches!(t, Transmit::Core(env)
            if matches!(env.msg, Message::Accepted { durable, .. } if durable == z(1, 1)))),
        "the acknowledgement follows the sync: {after:?}"
    );
}

#[test]
fn leader_without_a_quorum_steps_down() {
    let mut c = Cluster::new(three(), mem(3));
    c.decide(NodeId(1));
    c.pump();
    assert!(c.nodes[0].is_leader());
    // Every replica starts by looking: only a later loss counts.
    c.events.clear();
    c.cut = vec![NodeId(2), NodeId(3)];
    for _ in 0..30 {
        c.advance(Duration::from_millis(50));
    }
    assert!(!c.nodes[0].is_leader());
    assert!(c
        .events
        .iter()
        .any(|(id, e)| *id == NodeId(1) && matches!(e, NodeEvent::LostLeader)));
    assert!(c.propose(0, Bytes::from_static(b"late"), 1).is_err());
}

#[test]
fn read_index_confirms_with_a_quorum_round() {
    let mut c = Cluster::new(three(), mem(3));
    c.decide(NodeId(1));
    c.pump();
    let zx = c.propose(0, Bytes::from_static(b"w"), 1).unwrap();
    c.pump();
    let now = c.now;
    c.nodes[0].read(now, 0, 10).unwrap();
    c.drive(0);
    assert_eq!(
        c.read_ready(NodeId(1), 10),
        0,
        "not before a quorum answered"
    );
    assert_eq!(c.nodes[0].pending_reads(), 1);
    c.pump();
    assert_eq!(c.read_ready(NodeId(1), 10), 1, "answered once");
    assert!(c.nodes[0].state_machine().applied() >= zx);
    // A follower's read goes through the leader, whose read point covers
    // the committed write.
    let now = c.now;
    c.nodes[1].read(now, 0, 11).unwrap();
    assert!(c.nodes[2].read(now, 0, 12).is_ok());
    c.pump();
    let point = c.sent.iter().find_map(|e| match &e.msg {
        Message::ReadIndexResponse { zxid, .. } if e.to == NodeId(2) => Some(*zxid),
        _ => None,
    });
    assert!(
        matches!(point, Some(Some(p)) if p >= zx),
        "read point {point:?} below the committed write {zx:?}"
    );
    assert_eq!(c.read_ready(NodeId(2), 11), 1);
    assert_eq!(c.read_ready(NodeId(3), 12), 1);
}

#[test]
fn lease_reads_answer_at_once_while_the_lease_holds() {
    let mut cfg = three();
    cfg.lease_reads = true;
    let mut c = Cluster::new(cfg, mem(3));
    c.decide(NodeId(1));
    c.pump();
    c.advance(Duration::from_millis(60)); // a heartbeat round acknowledged
    let now = c.now;
    c.nodes[0].read(now, 0, 1).unwrap();
    // One turn of the leader, no frame delivered.
    c.drive(0);
    assert_eq!(c.read_ready(NodeId(1), 1), 1, "served from the lease");
}

/// A leader paused (SIGSTOP, a long GC, a stalled VM) gets a read as its
/// first input after the pause: the lease must be judged at the read's
/// time, not at the time of the last input before the pause, or the old
/// leader serves a value the next leader has overwritten meanwhile.
#[test]
fn a_lease_is_judged_at_the_time_of_the_read() {
    let mut cfg = three();
    cfg.lease_reads = true;
    let mut c = Cluster::new(cfg, mem(3));
    c.decide(NodeId(1));
    c.pump();
    c.advance(Duration::from_millis(60)); // a heartbeat round acknowledged
    let leader = c.nodes[0].replica();
    assert_eq!(
        c.nodes[0].state_machine().applied(),
        leader.commit_zxid(),
        "the leader applied all it committed: only the lease can hold a read back"
    );
    // Ten seconds later, with nothing in between, a read arrives.
    c.now += Duration::from_secs(10);
    let later = c.now;
    c.nodes[0].read(later, 0, 1).unwrap();
    // One turn of the leader at that time, no timer fired, no frame delivered.
    c.drive(0);
    assert_eq!(
        c.read_ready(NodeId(1), 1),
        0,
        "a lease acknowledged ten seconds ago must not serve a read"
    );
    assert_eq!(c.nodes[0].pending_reads(), 1);
}

#[test]
fn observers_learn_committed_entries_but_never_count() {
    let mut cfg = three();
    cfg.observers = vec![NodeId(9)];
    let mut c = Cluster::new(cfg, mem(4));
    c.cut = vec![NodeId(3)];
    c.decide(NodeId(1));
    c.pump();
    assert!(c.nodes[0].is_leader());
    // With n2 also gone, leader + observer are not a quorum.
    c.cut = vec![NodeId(2), NodeId(3)];
    let zx = c.propose(0, Bytes::from_static(b"o"), 1).unwrap();
    c.pump();
    assert!(
        c.nodes[0].replica().commit_zxid() < zx,
        "an observer's ack must not commit"
    );
    c.cut = vec![NodeId(3)];
    for _ in 0..20 {
        if c.applied(NodeId(9)).contains(&zx) {
            break;
        }
        c.advance(Duration::from_millis(100));
    }
    assert!(c.nodes[0].replica().commit_zxid() >= zx);
    assert!(
        c.applied(NodeId(9)).contains(&zx),
        "the observer applies committed entries"
    );
}

/// Kernel-level: the assertions are on the raw `Ready` (the flag is among
/// the writes, and the kernel's events come in the order abstain, then
/// look), which the node layer consumes.
#[test]
fn a_replica_marked_recovering_persists_the_flag_and_abstains_before_looking() {
    let mut r = Replica::new(
        NodeId(3),
        three(),
        MemStorage::new(),
        Box::new(TestPlanner),
        Recovered::default(),
        Time::ZERO,
    )
    .unwrap();
    r.mark_recovering();
    assert!(r.is_recovering());
    let rd = r.ready();
    assert_eq!(rd.recovering, Some(true), "the flag is persisted");
    assert!(
        matches!(
            rd.events[..],
            [Event::RecoveryStarted, Event::LostLeader(_)]
        ),
        "abstain before looking: {:?}",
        rd.events
    );
    // The one write this test needs, by hand.
    r.storage_mut().write_ready(&rd).unwrap();
    r.storage_mut().sync().unwrap();
    r.persisted(Time::ZERO, rd.persist_marker());
    assert!(r.storage().recovering());
}

#[test]
fn a_recovering_follower_is_not_counted_until_readmitted() {
    let n3 = 2;
    let mut c = Cluster::build(
        three(),
        mem(3),
        vec![Recovered::default(); 3],
        NodeConfig::default(),
        |r| {
            if r.id() == NodeId(3) {
                r.mark_recovering();
            }
        },
    );
    assert!(c.nodes[n3].replica().is_recovering());
    c.drive(n3);
    assert!(c.nodes[n3].storage().recovering(), "the flag is durable");
    // Leader 1 with node 2 cut off: node 3 alone must not make a quorum.
    c.cut = vec![NodeId(2)];
    c.decide(NodeId(1));
    c.pump();
    c.advance(Duration::from_millis(60));
    assert!(
        !c.nodes[0].is_leader(),
        "a recovering follower completed the leader's quorum"
    );
    // Node 2 joins: established without node 3, which is then synced and
    // readmitted once node 2 confirms a later heartbeat.
    c.cut.clear();
    c.decide(NodeId(1));
    c.pump();
    assert!(c.nodes[0].is_leader());
    for _ in 0..5 {
        c.advance(Duration::from_millis(60));
    }
    assert!(
        !c.nodes[n3].replica().is_recovering(),
        "node 3 was never readmitted"
    );
    assert!(
        !c.nodes[n3].storage().recovering(),
        "the cleared flag is durable"
    );
    assert!(c.events.iter().any(|(id, e)| *id == NodeId(3)
        && matches!(e, NodeEvent::RecoveryComplete { leader, .. } if *leader == NodeId(1))));
    // Node 3 counts again: with node 2 gone, 1 and 3 commit.
    c.cut = vec![NodeId(2)];
    let zx = c.propose(0, Bytes::from_static(b"after"), 1).unwrap();
    c.pump();
    assert!(c.nodes[0].replica().commit_zxid() >= zx);
}

/// Kernel-level: a lone replica restarted from storage; the assertions
/// are on the events of its raw `Ready`, before any pipeline.
#[test]
fn the_recovering_flag_in_storage_survives_a_restart() {
    let mut s = MemStorage::new();
    s.save_recovering(true).unwrap();
    let mut r = Replica::new(
        NodeId(2),
        three(),
        s,
        Box::new(TestPlanner),
        Recovered::default(),
        Time::ZERO,
    )
    .unwrap();
    assert!(r.is_recovering());
    let rd = r.ready();
    assert!(matches!(
        rd.events[..],
        [Event::RecoveryStarted, Event::LostLeader(_)]
    ));
    // Told it leads, it refuses and looks again.
    r.handle_leader_decision(
        Time::ZERO,
        Decision {
            leader: NodeId(2),
            round: 1,
            epoch_hint: Epoch::ZERO,
        },
    );
    assert!(!r.is_leader() && r.leader().is_none());
    assert!(matches!(r.ready().events[..], [Event::LostLeader(_)]));
}

/// Kernel-level: lone replicas; the assertions are on the kernel's timer
/// and on the events of its raw `Ready`, before any pipeline.
#[test]
fn with_lease_reads_a_restarted_voter_holds_off_one_election_timeout() {
    let mut cfg = three();
    cfg.lease_reads = true;
    let hs = HardState {
        accepted_epoch: Epoch(1),
        current_epoch: Epoch(1),
    };
    let start = Time::ZERO + Duration::from_secs(5);
    let mut r = Replica::new(
        NodeId(2),
        cfg.clone(),
        storage_with(hs, &[z(1, 1)]),
        Box::new(TestPlanner),
        Recovered::default(),
        start,
    )
    .unwrap();
    let until = start + cfg.election_timeout;
    assert_eq!(r.hold_off_until(), Some(until));
    assert!(
        r.ready().events.is_empty(),
        "no election before the hold-off ends"
    );
    assert_eq!(r.poll_timeout(), Some(until));
    // A decision meanwhile is ignored, and so is a NEWEPOCH.
    let d = Decision {
        leader: NodeId(1),
        round: 1,
        epoch_hint: Epoch(1),
    };
    r.handle_leader_decision(start, d);
    assert_eq!(r.leader(), None);
    r.handle_timeout(until);
    assert!(matches!(r.ready().events[..], [Event::LostLeader(_)]));
    assert_eq!(r.hold_off_until(), None);
    // A replica that never promised an epoch starts at once.
    let mut fresh = Replica::new(
        NodeId(3),
        cfg,
        MemStorage::new(),
        Box::new(TestPlanner),
        Recovered::default(),
        start,
    )
    .unwrap();
    assert_eq!(fresh.hold_off_until(), None);
    assert!(matches!(fresh.ready().events[..], [Event::LostLeader(_)]));
}

#[test]
fn strict_readmission_waits_for_every_voter() {
    for strict in [false, true] {
        let mut cfg = Config::new(GroupId(0), (1..=5).map(NodeId).collect());
        cfg.strict_readmission = strict;
        let mut c = Cluster::build(
            cfg,
            mem(5),
            vec![Recovered::default(); 5],
            NodeConfig::default(),
            |r| {
                if r.id() == NodeId(5) {
                    r.mark_recovering();
                }
            },
        );
        let n5 = c.idx(NodeId(5));
        c.cut = vec![NodeId(4)];
        c.decide(NodeId(1));
        c.pump();
        assert!(c.nodes[0].is_leader());
        for _ in 0..5 {
            c.advance(Duration::from_millis(60));
        }
        assert_eq!(
            c.nodes[n5].replica().is_recovering(),
            strict,
            "strict {strict}: readmitted without node 4?"
        );
        c.cut.clear();
        c.decide(NodeId(1));
        for _ in 0..5 {
            c.advance(Duration::from_millis(60));
        }
        assert!(
            !c.nodes[n5].replica().is_recovering(),
            "strict {strict}: never readmitted"
        );
    }
}

/// A storage whose answers a damaged disk could have shaped.
struct Damaged {
    inner: MemStorage,
    hard_state: HardState,
    epoch_ends: Vec<Zxid>,
}

impl Storage for Damaged {
    fn hard_state(&self) -> HardState {
        self.hard_state
    }
    fn first_zxid(&self) -> Option<Zxid> {
        self.inner.first_zxid()
    }
    fn last_zxid(&self) -> Option<Zxid> {
        self.inner.last_zxid()
    }
    fn epoch_ends(&self) -> Result<Vec<Zxid>, StorageError> {
        Ok(self.epoch_ends.clone())
    }
    fn entries(
        &self,
        from: Zxid,
        max_entries: usize,
        max_bytes: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        self.inner.entries(from, max_entries, max_bytes, out)
    }
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.inner.append(entries)
    }
    fn truncate_suffix(&mut self, after: Zxid) -> Result<(), StorageError> {
        self.inner.truncate_suffix(after)
    }
    fn truncate_prefix(&mut self, upto: Zxid) -> Result<(), StorageError> {
        self.inner.truncate_prefix(upto)
    }
    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.inner.save_hard_state(hs)
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        self.inner.sync()
    }
}

fn start(s: Damaged) -> Result<Replica<Damaged>, StartError> {
    Replica::new(
        NodeId(1),
        three(),
        s,
        Box::new(TestPlanner),
        Recovered::default(),
        Time::ZERO,
    )
}

#[test]
fn a_hard_state_read_from_disk_with_current_above_accepted_is_an_error_not_a_panic() {
    let s = Damaged {
        inner: MemStorage::new(),
        hard_state: HardState {
            accepted_epoch: Epoch(2),
            current_epoch: Epoch(5),
        },
        epoch_ends: Vec::new(),
    };
    let err = start(s).expect_err("an impossible hard state must not start a replica");
    assert!(
        matches!(err, StartError::Storage(StorageError::Corrupt(ref m)) if m.contains("current epoch")),
        "{err}"
    );
}

#[test]
fn epoch_ends_that_contradict_the_first_entry_are_an_error_not_a_panic() {
    let mut inner = MemStorage::new();
    inner
        .append(&[Entry {
            kind: Default::default(),
            zxid: Zxid::new(Epoch(1), 5),
            data: Bytes::from_static(b"x"),
        }])
        .unwrap();
    // The log starts at counter 5 of epoch 1 but claims epoch 1 ended at 3.
    let s = Damaged {
        inner,
        hard_state: HardState {
            accepted_epoch: Epoch(1),
            current_epoch: Epoch(1),
        },
        epoch_ends: vec![Zxid::new(Epoch(1), 3)],
    };
    let err = start(s).expect_err("inconsistent epoch boundaries must not start a replica");
    assert!(
        matches!(err, StartError::Storage(StorageError::Corrupt(_))),
        "{err}"
    );
}

#[test]
fn storage_io_errors_keep_their_source() {
    use std::error::Error as _;
    let e = StorageError::io(
        "appending",
        std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left"),
    );
    let source = e.source().expect("the io error is kept as the source");
    assert!(source.downcast_ref::<std::io::Error>().is_some());
    assert!(!e.is_retryable());
    let r = StorageError::refused(
        "appending",
        std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left"),
    );
    assert!(r.is_retryable() && r.source().is_some());
}

/// Found by the simulator (seed 25903): after a restart, n3's elector
/// decided for n1 from an old round while n1, recovering, followed n3.
/// Each sent the other FOLLOWERINFO every heartbeat, and a follower took
/// any message from the node it follows as a sign of life, so neither ever
/// timed out and no one led. Only what a leader sends keeps a follower.
#[test]
fn two_replicas_following_each_other_both_time_out() {
    let cfg = three();
    let mut a = Replica::new(
        NodeId(1),
        cfg.clone(),
        MemStorage::new(),
        Box::new(TestPlanner),
        Recovered::default(),
        Time::ZERO,
    )
    .unwrap();
    let mut b = Replica::new(
        NodeId(3),
        cfg.clone(),
        MemStorage::new(),
        Box::new(TestPlanner),
        Recovered::default(),
        Time::ZERO,
    )
    .unwrap();
    let decide = |leader: u64| Decision {
        leader: NodeId(leader),
        round: 1,
        epoch_hint: Epoch::ZERO,
    };
    a.handle_leader_decision(Time::ZERO, decide(3));
    b.handle_leader_decision(Time::ZERO, decide(1));
    assert_eq!((a.leader(), b.leader()), (Some(NodeId(3)), Some(NodeId(1))));
    let step = cfg.heartbeat_interval;
    let end = Time::ZERO + cfg.election_timeout * 3;
    let mut now = Time::ZERO;
    let (mut a_lost, mut b_lost) = (false, false);
    // Bounded: three election timeouts in heartbeat steps.
    while now < end && !(a_lost && b_lost) {
        now += step;
        a.handle_timeout(now);
        b.handle_timeout(now);
        let (ra, rb) = (a.ready(), b.ready());
        for (rd, to) in [(ra, &mut b), (rb, &mut a)] {
            for env in rd.messages.into_iter().chain(rd.persisted_messages) {
                if env.to == to.id() {
                    to.handle_message(now, env);
                }
            }
        }
        a_lost |= a.leader().is_none();
        b_lost |= b.leader().is_none();
    }
    assert!(
        a_lost && b_lost,
        "a follower kept following a node that only sends it follower messages"
    );
}

/// Leader transfer: proposals stop, the target catches up, TAKEOVER goes to
/// every member and the old leader steps down at once; the target is told
/// it is the nominee. A hand-over whose target cannot catch up is aborted
/// after an election timeout and proposals resume.
#[test]
fn a_leader_hands_over_to_a_caught_up_voter_or_gives_up() {
    let mut c = Cluster::new(three(), mem(3));
    c.decide(NodeId(1));
    c.pump();
    assert!(c.nodes[0].is_leader());
    for k in 0..5u8 {
        c.propose(0, Bytes::from(vec![k]), k.into()).unwrap();
    }
    c.pump();
    let now = c.now;
    assert_eq!(
        c.nodes[0].transfer_leadership(now, NodeId(1)),
        Err(TransferError::AlreadyLeader(NodeId(1)))
    );
    assert_eq!(
        c.nodes[0].transfer_leadership(now, NodeId(9)),
        Err(TransferError::NotAVoter(NodeId(9)))
    );
    assert!(matches!(
        c.nodes[1].transfer_leadership(now, NodeId(3)),
        Err(TransferError::NotLeader { .. })
    ));
    // n2 misses the last entry: the hand-over waits for it.
    c.cut = vec![NodeId(2)];
    let last = c.propose(0, Bytes::from_static(b"last"), 99).unwrap();
    c.pump();
    let now = c.now;
    c.nodes[0].transfer_leadership(now, NodeId(2)).unwrap();
    assert_eq!(
        c.nodes[0].transfer_leadership(now, NodeId(3)),
        Err(TransferError::InProgress { to: NodeId(2) })
    );
    assert!(matches!(
        c.propose(0, Bytes::from_static(b"refused"), 100),
        Err(Rejection {
            error: ProposeRejected::Kernel(ProposeError::Transferring { to: NodeId(2), .. }),
            ..
        })
    ));
    c.pump();
    assert!(
        c.nodes[0].is_leader(),
        "no hand-over before the target caught up"
    );
    c.cut.clear();
    for _ in 0..10 {
        c.advance(Duration::from_millis(20));
        if !c.nodes[0].is_leader() {
            break;
        }
    }
    assert!(!c.nodes[0].is_leader(), "the leader stepped down");
    assert!(c.nodes[1].replica().storage().get(last).is_some());
    assert!(c
        .events
        .iter()
        .any(|(n, e)| *n == NodeId(1) && matches!(e, NodeEvent::HandedOff { to: NodeId(2) })));
    assert!(c.sent.iter().any(|e| e.to == NodeId(3)
        && e.msg
            == Message::TakeOver {
                epoch: Epoch(1),
                to: NodeId(2)
            }));
    // Every member takes the nominee at once, without waiting for an
    // election, and the nominee starts its epoch.
    c.pump();
    for n in &c.nodes {
        assert_eq!(
            n.replica().leader(),
            Some(NodeId(2)),
            "{} follows the nominee",
            n.replica().id()
        );
    }
    assert!(c.nodes[1].is_leader());
    assert_eq!(c.nodes[1].replica().hard_state().current_epoch, Epoch(2));
    assert!(c.nodes[1].replica().commit_zxid() >= last);

    // A target that cannot catch up: given up after an election timeout.
    c.cut = vec![NodeId(3)];
    c.propose(1, Bytes::from_static(b"n3 misses this"), 101)
        .unwrap();
    c.pump();
    let now = c.now;
    c.nodes[1].transfer_leadership(now, NodeId(3)).unwrap();
    // Past the election timeout (500 ms by default).
    for _ in 0..30 {
        c.advance(Duration::from_millis(20));
    }
    assert!(
        c.events
            .iter()
            .any(|(n, e)| *n == NodeId(2)
                && matches!(e, NodeEvent::TransferAborted { to: NodeId(3) }))
    );
    assert!(c.nodes[1].is_leader());
    assert_eq!(c.nodes[1].replica().transferring_to(), None);
    c.propose(1, Bytes::from_static(b"again"), 102).unwrap();
}

fn members(voters: &[u64], observers: &[u64]) -> Membership {
    Membership {
        voters: voters.iter().map(|v| NodeId(*v)).collect(),
        observers: observers.iter().map(|o| NodeId(*o)).collect(),
        ..Membership::default()
    }
}

/// Voters n1 to n3 and observer n9, n1 leading, one write committed.
fn three_and_an_observer_led_by_n1() -> Cluster {
    let mut cfg = three();
    cfg.observers = vec![NodeId(9)];
    let mut c = Cluster::new(cfg, mem(4));
    c.decide(NodeId(1));
    c.pump();
    assert!(c.nodes[0].is_leader());
    c.propose(0, Bytes::from_static(b"a"), 1).unwrap();
    c.pump();
    c
}

/// Cuts node `n` off for longer than an election timeout; n1 still leads.
fn unheard_for_an_election_timeout(c: &mut Cluster, n: u64) {
    c.cut = vec![NodeId(n)];
    for _ in 0..6 {
        c.advance(Duration::from_millis(100));
    }
    assert!(c.nodes[0].is_leader());
}

/// A membership change's refusal, without its token.
fn refused(r: Result<Zxid, Rejection<ChangeError, u32>>) -> Result<Zxid, ChangeError> {
    r.map_err(|r| r.error)
}

/// A node becomes a voter only while in sync with the leader: an observer
/// cut off (or a node not yet a member, never synced) is refused, so the
/// group never counts a voter that does not know it votes. Before the
/// rule, promoting the cut observer was accepted (3 of the 4 new voters in
/// sync made a quorum): it then neither voted nor stood, and with one more
/// voter lost no quorum could elect the leader that would tell it (the
/// multi-group simulator's seed 60593 stalled so).
#[test]
fn a_node_becomes_a_voter_only_while_in_sync_with_the_leader() {
    let mut c = three_and_an_observer_led_by_n1();
    let now = c.now;
    assert_eq!(
        refused(c.nodes[0].propose_membership(now, members(&[1, 2, 3, 10], &[9]), 2)),
        Err(ChangeError::NewVoterNotInSync(NodeId(10))),
        "a node that is not a member yet is added as an observer first"
    );
    unheard_for_an_election_timeout(&mut c, 9);
    let now = c.now;
    assert_eq!(
        refused(c.nodes[0].propose_membership(now, members(&[1, 2, 3, 9], &[]), 3)),
        Err(ChangeError::NewVoterNotInSync(NodeId(9)))
    );
    // Heard again (it lost its leader meanwhile and follows n1 again) and
    // in sync: promoted.
    c.cut.clear();
    c.advance(Duration::from_millis(100));
    c.decide(NodeId(1));
    c.pump();
    let now = c.now;
    c.nodes[0]
        .propose_membership(now, members(&[1, 2, 3, 9], &[]), 4)
        .expect("an observer in sync is promoted");
}

/// A single-server change: refused unless it is one node's role, proposed
/// by an established leader, alone, and leaves a quorum in sync; once
/// appended it is in force everywhere and the promoted observer counts.
#[test]
fn a_promoted_observer_counts_as_soon_as_the_change_is_appended() {
    let mut c = three_and_an_observer_led_by_n1();
    let now = c.now;
    assert!(matches!(
        refused(c.nodes[1].propose_membership(now, members(&[1, 2, 3, 9], &[]), 2)),
        Err(ChangeError::NotLeader { .. })
    ));
    assert_eq!(
        refused(c.nodes[0].propose_membership(now, members(&[1, 2, 3], &[9]), 2)),
        Err(ChangeError::Unchanged)
    );
    assert_eq!(
        refused(c.nodes[0].propose_membership(now, members(&[1, 2, 3, 9, 10], &[]), 2)),
        Err(ChangeError::NotSingle(2))
    );
    assert_eq!(
        refused(c.nodes[0].propose_membership(now, members(&[2, 3], &[1, 9]), 2)),
        Err(ChangeError::RemovesLeader)
    );
    assert!(matches!(
        refused(c.nodes[0].propose_membership(now, members(&[1, 2, 3, 9], &[9]), 2)),
        Err(ChangeError::Invalid(_))
    ));
    // n2 unheard for an election timeout: removing n3 would leave {n1, n2}
    // with only n1 in sync, no quorum.
    unheard_for_an_election_timeout(&mut c, 2);
    let now = c.now;
    assert_eq!(
        refused(c.nodes[0].propose_membership(now, members(&[1, 2], &[9]), 2)),
        Err(ChangeError::WouldLoseQuorum {
            healthy: 1,
            needed: 2
        })
    );
    // n2 lost its leader meanwhile: it follows n1 again.
    c.cut.clear();
    c.advance(Duration::from_millis(100));
    c.decide(NodeId(1));
    c.pump();
    let now = c.now;
    let z = c.nodes[0]
        .propose_membership(now, members(&[1, 2, 3, 9], &[]), 3)
        .unwrap();
    assert_eq!(
        refused(c.nodes[0].propose_membership(now, members(&[1, 2, 3], &[9]), 4)),
        Err(ChangeError::InProgress(z))
    );
    c.pump();
    c.advance(Duration::from_millis(60));
    for n in &c.nodes {
        assert_eq!(
            n.replica().membership(),
            &members(&[1, 2, 3, 9], &[]),
            "{} has the change",
            n.replica().id()
        );
    }
    assert!(c.events.iter().any(|(n, e)| *n == NodeId(1)
        && matches!(e, NodeEvent::Written { token: 3, zxid, .. } if *zxid == z)));
    assert!(c.events.iter().any(|(n, e)| *n == NodeId(9)
        && matches!(e, NodeEvent::MembershipChanged { zxid: Some(at), .. } if *at == z)));
    // Four voters: the leader and n9 alone are no quorum; with n3, n9's
    // acknowledgement makes one (without it, two of four would not).
    c.cut = vec![NodeId(2), NodeId(3)];
    let x = c.propose(0, Bytes::from_static(b"x"), 5).unwrap();
    c.pump();
    assert!(c.nodes[0].replica().commit_zxid() < x);
    c.cut = vec![NodeId(2)];
    for _ in 0..20 {
        if c.nodes[0].replica().commit_zxid() >= x {
            break;
        }
        c.advance(Duration::from_millis(100));
    }
    assert!(c.nodes[0].replica().commit_zxid() >= x, "n9 now counts");
    assert_eq!(c.nodes[0].replica().membership_change_pending(), None);
}

/// A lone follower of node 1, established in epoch 1 (NEWEPOCH, NEWLEADER,
/// UPTODATE handed over by hand, every `Ready` persisted at once).
fn follower_established_in_epoch_one() -> Replica<MemStorage> {
    let cfg = three();
    let mut f = Replica::new(
        NodeId(2),
        cfg,
        MemStorage::new(),
        Box::new(TestPlanner),
        Recovered::default(),
        Time::ZERO,
    )
    .unwrap();
    let leader = NodeId(1);
    let env = |msg| Envelope {
        group: GroupId::default(),
        from: leader,
        to: NodeId(2),
        msg,
    };
    let decide = Decision {
        leader,
        round: 1,
        epoch_hint: Epoch::ZERO,
    };
    f.handle_leader_decision(Time::ZERO, decide);
    let e1 = Epoch(1);
    for msg in [
        Message::NewEpoch {
            epoch: e1,
            round: 0,
            established: false,
        },
        Message::NewLeader {
            epoch: e1,
            last_zxid: Zxid::ZERO,
        },
        Message::UpToDate {
            epoch: e1,
            commit: Zxid::ZERO,
        },
    ] {
        f.handle_message(Time::ZERO, env(msg));
        let rd = f.ready();
        f.persisted(Time::ZERO, rd.persist_marker());
    }
    assert_eq!(f.established_epoch(), Some(e1), "established in epoch 1");
    f
}

/// Found by the simulator's rejoin check (`simulate --full --seed 536`):
/// a follower established in epoch 1 whose leader went on to lead epoch 2
/// without it (its TAKEOVER lost) was kept "following" for ever by that
/// leader's answers to its forwarded reads, which carry epoch 2. A message
/// of another epoch does not show that the leader still leads ours: the
/// follower must ask to join the newer epoch (FOLLOWERINFO) or look again,
/// and never stay established in the dead epoch.
#[test]
fn a_follower_whose_leader_moved_to_a_newer_epoch_does_not_stay_in_the_old_one() {
    let newer = |i: u64| {
        [
            Message::ReadIndexResponse {
                epoch: Epoch(2),
                ctx: Bytes::from(i.to_be_bytes().to_vec()),
                zxid: Some(Zxid::ZERO),
            },
            Message::Heartbeat {
                epoch: Epoch(2),
                commit: Zxid::ZERO,
                round: i,
            },
        ]
    };
    for kind in 0..2 {
        let mut f = follower_established_in_epoch_one();
        let cfg = three();
        let end = Time::ZERO + cfg.election_timeout * 3;
        let mut now = Time::ZERO;
        let mut i = 0;
        let mut asked_to_join = false;
        // Bounded: three election timeouts in heartbeat steps.
        while now < end && f.established_epoch() == Some(Epoch(1)) {
            now += cfg.heartbeat_interval;
            i += 1;
            let msg = newer(i)[kind].clone();
            f.handle_message(
                now,
                Envelope {
                    group: GroupId::default(),
                    from: NodeId(1),
                    to: NodeId(2),
                    msg,
                },
            );
            f.handle_timeout(now);
            let rd = f.ready();
            asked_to_join |= rd
                .messages
                .iter()
                .any(|e| matches!(e.msg, Message::FollowerInfo { .. }));
            f.persisted(now, rd.persist_marker());
        }
        assert_ne!(
            f.established_epoch(),
            Some(Epoch(1)),
            "message kind {kind}: still established in epoch 1 after three election timeouts of epoch-2 messages"
        );
        assert!(
            asked_to_join || f.leader().is_none(),
            "message kind {kind}: neither asked to join the newer epoch nor looked for a leader"
        );
    }
}

/// Found by the simulator's rejoin check (`simulate --full --seed 229`):
/// a duplicate of the NEWEPOCH a follower had already taken arrived after
/// NEWLEADER. The follower promised again, which forgot NEWLEADER, so it
/// ignored the UPTODATE that followed and every ACCEPT, while it went on
/// acknowledging heartbeats: the leader counted it synced and never sent
/// NEWLEADER again, and the follower stayed in sync for ever. A copy of
/// the round it already took changes nothing.
#[test]
fn a_duplicate_newepoch_after_newleader_does_not_undo_the_sync() {
    let cfg = three();
    let mut f = Replica::new(
        NodeId(2),
        cfg,
        MemStorage::new(),
        Box::new(TestPlanner),
        Recovered::default(),
        Time::ZERO,
    )
    .unwrap();
    let env = |msg| Envelope {
        group: GroupId::default(),
        from: NodeId(1),
        to: NodeId(2),
        msg,
    };
    f.handle_leader_decision(
        Time::ZERO,
        Decision {
            leader: NodeId(1),
            round: 1,
            epoch_hint: Epoch::ZERO,
        },
    );
    let e1 = Epoch(1);
    let newepoch = Message::NewEpoch {
        epoch: e1,
        round: 1,
        established: false,
    };
    let mut sent = Vec::new();
    for msg in [
        newepoch.clone(),
        Message::NewLeader {
            epoch: e1,
            last_zxid: Zxid::ZERO,
        },
        newepoch,
        Message::UpToDate {
            epoch: e1,
            commit: Zxid::ZERO,
        },
    ] {
        f.handle_message(Time::ZERO, env(msg));
        let rd = f.ready();
        sent.extend(rd.persisted_messages.iter().map(|e| e.msg.name()));
        f.persisted(Time::ZERO, rd.persist_marker());
    }
    assert_eq!(
        f.established_epoch(),
        Some(e1),
        "the UPTODATE after a duplicate NEWEPOCH must establish the follower (sent {sent:?})"
    );
}

/// Found by chaos `flapping --seed 960151 --groups 1000` (group 433): a
/// follower holding (1,1), committed, and (2,1) of a later epoch that
/// never committed, synced by a leader whose history is (1,1), (3,1). The
/// leader holds nothing of epoch 2, so the production planner
/// (`paxos-snapshot`, ZooKeeper's rule: never TRUNC across an epoch
/// boundary) asks for TRUNC to ZERO and a DIFF of the whole history. The
/// follower refused a TRUNC below its commit point and looked for another
/// leader, again and again: the group never settled. A committed entry is
/// in every later leader's history, so the follower keeps its committed
/// prefix (it truncates after its commit point instead) and takes the
/// DIFF over it; nothing committed is dropped, even for a moment.
#[test]
fn a_trunc_below_the_commit_point_keeps_the_committed_prefix_and_syncs() {
    let mut f = Replica::new(
        NodeId(2),
        three(),
        MemStorage::new(),
        Box::new(TestPlanner),
        Recovered::default(),
        Time::ZERO,
    )
    .unwrap();
    let mut round = 0u64;
    let drive = |f: &mut Replica<MemStorage>, from: u64, msgs: Vec<Message>| {
        for msg in msgs {
            f.handle_message(
                Time::ZERO,
                Envelope {
                    group: GroupId::default(),
                    from: NodeId(from),
                    to: NodeId(2),
                    msg,
                },
            );
            let rd = f.ready();
            f.storage_mut().write_ready(&rd).unwrap();
            f.persisted(Time::ZERO, rd.persist_marker());
        }
    };
    let mut follow = |f: &mut Replica<MemStorage>, leader: u64| {
        round += 1;
        f.handle_leader_decision(
            Time::ZERO,
            Decision {
                leader: NodeId(leader),
                round,
                epoch_hint: Epoch::ZERO,
            },
        );
    };
    // Epoch 1 (leader n1): (1,1) committed.
    follow(&mut f, 1);
    let e1 = Epoch(1);
    drive(
        &mut f,
        1,
        vec![
            Message::NewEpoch {
                epoch: e1,
                round: 0,
                established: false,
            },
            Message::NewLeader {
                epoch: e1,
                last_zxid: Zxid::ZERO,
            },
            Message::UpToDate {
                epoch: e1,
                commit: Zxid::ZERO,
            },
            Message::Accept {
                epoch: e1,
                prev: Zxid::ZERO,
                commit: Zxid::ZERO,
                entries: vec![entry(z(1, 1))],
            },
            Message::Commit {
                epoch: e1,
                commit: z(1, 1),
            },
        ],
    );
    assert_eq!(f.commit_zxid(), z(1, 1));
    // Epoch 2 (leader n3): (2,1) appended, never committed.
    follow(&mut f, 3);
    let e2 = Epoch(2);
    drive(
        &mut f,
        3,
        vec![
            Message::NewEpoch {
                epoch: e2,
                round: 0,
                established: false,
            },
            Message::NewLeader {
                epoch: e2,
                last_zxid: z(1, 1),
            },
            Message::UpToDate {
                epoch: e2,
                commit: z(1, 1),
            },
            Message::Accept {
                epoch: e2,
                prev: z(1, 1),
                commit: z(1, 1),
                entries: vec![entry(z(2, 1))],
            },
        ],
    );
    assert_eq!(f.last_zxid(), z(2, 1));
    assert_eq!(f.established_epoch(), Some(e2));
    // Epoch 4 (leader n1, whose history is (1,1), (3,1)).
    follow(&mut f, 1);
    let e4 = Epoch(4);
    drive(
        &mut f,
        1,
        vec![
            Message::NewEpoch {
                epoch: e4,
                round: 0,
                established: false,
            },
            Message::Trunc {
                epoch: e4,
                round: 0,
                to: Zxid::ZERO,
            },
            Message::Diff {
                epoch: e4,
                prev: Zxid::ZERO,
                entries: vec![entry(z(1, 1)), entry(z(3, 1))],
            },
            Message::NewLeader {
                epoch: e4,
                last_zxid: z(3, 1),
            },
            Message::UpToDate {
                epoch: e4,
                commit: z(3, 1),
            },
        ],
    );
    assert_eq!(f.leader(), Some(NodeId(1)), "follows the leader of epoch 4");
    assert_eq!(f.established_epoch(), Some(e4), "synced in epoch 4");
    assert_eq!(f.last_zxid(), z(3, 1));
    assert_eq!(f.commit_zxid(), z(3, 1));
    let mut held = Vec::new();
    f.storage()
        .entries(z(1, 1), 10, usize::MAX, &mut held)
        .unwrap();
    let held: Vec<Zxid> = held.iter().map(|e| e.zxid).collect();
    assert_eq!(held, vec![z(1, 1), z(3, 1)], "the leader's history");
}

/// A new leader proposes no membership change until its state machine has
/// applied its whole starting history (etcd's rule: a leader's first
/// change waits for its log as of the election to be applied). The
/// application checks its own state before a change (the reference
/// service refuses one while a split it applied is moving keys); a change
/// accepted while an older entry was committed but not applied could
/// commit right after that entry, before the application ever saw it.
/// Applying is bounded per turn, so a long history from an older epoch
/// takes several turns after the epoch is established.
#[test]
fn a_new_leader_changes_no_membership_before_its_history_is_applied() {
    let hs1 = HardState {
        accepted_epoch: Epoch(1),
        current_epoch: Epoch(1),
    };
    let history: Vec<Zxid> = (1..=1_000).map(|c| z(1, c)).collect();
    let last = *history.last().expect("a history");
    let mut cfg = three();
    // One entry per `Ready`: a turn applies at most the node's bound of
    // rounds, far fewer than the history holds.
    cfg.max_apply_bytes = 1;
    let storages = (0..3).map(|_| storage_with(hs1, &history)).collect();
    let mut c = Cluster::new(cfg, storages);
    c.decide(NodeId(1));
    let mut refusals = 0;
    for _ in 0..100_000 {
        for i in 0..c.nodes.len() {
            c.drive(i);
        }
        let leader = c.nodes[0].replica();
        let (commit, applied) = (leader.commit_zxid(), leader.applied_zxid());
        if applied >= last {
            break;
        }
        if c.nodes[0].is_leader() && commit >= last {
            let now = c.now;
            assert_eq!(
                refused(c.nodes[0].propose_membership(now, members(&[1, 2, 3], &[9]), 1)),
                Err(ChangeError::HistoryNotApplied {
                    applied,
                    history_end: last
                }),
                "committed to {commit:?}, applied to {applied:?}"
            );
            refusals += 1;
        }
        if let Some(env) = c.queue.pop_front() {
            let i = c.idx(env.to);
            let now = c.now;
            c.nodes[i].handle_message(now, env);
        }
    }
    assert!(
        refusals > 0,
        "the history was applied in the turn that committed it: the test shows nothing"
    );
    assert_eq!(c.nodes[0].replica().applied_zxid(), last);
    c.pump();
    let now = c.now;
    let z = c.nodes[0]
        .propose_membership(now, members(&[1, 2, 3], &[9]), 2)
        .expect("the history is applied: the change is proposed");
    assert!(z > last);
}

/// Node `leader` makes an epoch with the others while `late` is cut off,
/// then `late` joins it; with ZooKeeper's planner rule
/// ([`NeverAcrossAnEpoch`]). Returns the TRUNC points sent to `late`, and
/// the cluster.
fn truncations_when_joining(
    storages: Vec<MemStorage>,
    leader: NodeId,
    late: NodeId,
) -> (Vec<Zxid>, Cluster) {
    let mut c = Cluster::build_with(
        three(),
        storages,
        vec![Recovered::default(); 3],
        NodeConfig::default(),
        |_| {},
        &|| Box::new(NeverAcrossAnEpoch),
    );
    c.cut = vec![late];
    c.decide(leader);
    c.pump();
    assert!(c.nodes[c.idx(leader)].is_leader());
    c.cut.clear();
    c.decide(leader);
    c.pump();
    let truncs = c
        .sent
        .iter()
        .filter_map(|e| match e.msg {
            Message::Trunc { to, .. } if e.to == late => Some(to),
            _ => None,
        })
        .collect();
    (truncs, c)
}

/// ZooKeeper's rule for a follower whose last zxid the leader does not
/// hold (paxos-snapshot's R4): TRUNC only within the follower's last
/// epoch, else to ZERO; a DIFF from a position the leader holds.
struct NeverAcrossAnEpoch;
impl SyncPlanner for NeverAcrossAnEpoch {
    fn plan(&self, f: FollowerPosition, h: &LeaderHistory<'_>) -> SyncPlan {
        let fl = f.last_zxid;
        let held = |z: Zxid| {
            z == Zxid::ZERO
                || h.epoch_ends
                    .iter()
                    .any(|e| e.epoch() == z.epoch() && z.counter() >= 1 && z <= *e)
        };
        if fl == h.last {
            return SyncPlan::UpToDate;
        }
        if fl < h.last && held(fl) {
            return SyncPlan::Diff { after: fl };
        }
        let to = h
            .epoch_ends
            .iter()
            .find(|e| e.epoch() == fl.epoch() && **e < fl)
            .copied()
            .unwrap_or(Zxid::ZERO);
        SyncPlan::TruncDiff { to }
    }
}

/// Found by the multi-group simulator (seed 1130, 16 groups, full stack,
/// with leader hand-overs): a follower whose last entries are of an epoch
/// the new leader holds none of (its own proposals as the leader of epoch
/// 2, never replicated) was sent TRUNC to ZERO, and dropped the epoch-1
/// entries it shared with the leader, committed ones included (its commit
/// point was lost in a restart, so its own guard did not keep them).
/// Until the DIFF put them back, a committed entry was durable on one
/// voter only. Both took the same history with epoch 2 (its current
/// epoch is the one whose history the leader adopted): they share every
/// entry the leader holds of the epochs before, so the truncation keeps
/// them.
#[test]
fn a_follower_of_the_adopted_epoch_keeps_that_epochs_history_when_truncated() {
    let hs2 = HardState {
        accepted_epoch: Epoch(2),
        current_epoch: Epoch(2),
    };
    let history: Vec<Zxid> = (1..=12).map(|c| z(1, c)).collect();
    // n1 led epoch 2 and logged three proposals nobody else got.
    let mut with_own = history.clone();
    with_own.extend([z(2, 1), z(2, 2), z(2, 3)]);
    let s1 = storage_with(hs2, &with_own);
    let s2 = storage_with(hs2, &history);
    let s3 = MemStorage::new();
    // n2 and n3 make epoch 3 without n1, then n1 joins it.
    let (truncs, c) = truncations_when_joining(vec![s1, s2, s3], NodeId(2), NodeId(1));
    assert_eq!(
        truncs,
        vec![z(1, 12)],
        "n1 drops its own epoch-2 proposals only, not the epoch-1 history it shares"
    );
    assert_eq!(c.nodes[0].replica().last_zxid(), z(1, 12));
}

/// Found by the multi-group simulator with wiped disks (`simulate --full
/// --groups 16 --wipes --seed 21867`, group 9): the new leader adopted the
/// history of epoch 2 (ending at 1.16, no proposal of its own epoch) while
/// a follower had taken the history of epoch 3, a later epoch that never
/// established (1.16 then the epoch-2 proposals its leader held, never
/// committed). The follower's last epoch is one the leader holds nothing
/// of, and ZooKeeper's rule sent it TRUNC to ZERO; it shares 1.1 to 1.16,
/// and the leader's highest position at or before its last zxid is 1.16.
#[test]
fn a_follower_of_a_later_unestablished_epoch_keeps_the_history_it_shares() {
    let hs = |e| HardState {
        accepted_epoch: Epoch(e),
        current_epoch: Epoch(e),
    };
    let history: Vec<Zxid> = (1..=16).map(|c| z(1, c)).collect();
    let mut later = history.clone();
    later.extend((1..=12).map(|c| z(2, c)));
    let s1 = storage_with(hs(2), &history);
    let s2 = storage_with(hs(2), &history);
    let s3 = storage_with(hs(3), &later);
    let (truncs, c) = truncations_when_joining(vec![s1, s2, s3], NodeId(1), NodeId(3));
    assert_eq!(
        truncs,
        vec![z(1, 16)],
        "n3 drops the uncommitted epoch-2 proposals only"
    );
    assert_eq!(c.nodes[2].replica().last_zxid(), z(1, 16));
}
