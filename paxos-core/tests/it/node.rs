//! The node layer's own rules, checked on a three-node group driven by
//! hand: what waits for a sync, what a full disk holds back, what a
//! panicking state machine does. (The simulator runs the same layer under
//! random faults; these pin the rules down one at a time.)

use std::cell::Cell;
use std::rc::Rc;

use bytes::Bytes;
use paxos_core::node::{Node, NodeConfig, NodeError, NodeEvent, SyncId, Transmit};
use paxos_core::sim::{SimStorage, TestElectionMsg, TestElector, TestPlanner};
use paxos_core::{
    Config, GroupId, Hooked, MemStorage, Message, MetaKey, NodeId, Recovered, Replica,
    StateMachine, Storage, StorageError, StorageHooks, Time, Zxid,
};

/// A disk that can be made full: every write is then refused, intact.
type Disk = Hooked<MemStorage, FullFlag>;

/// While set, the disk is full.
struct FullFlag(Rc<Cell<bool>>);

#[derive(Debug, thiserror::Error)]
#[error("disk full (test)")]
struct Full;

impl StorageHooks for FullFlag {
    fn before_write(&self) -> Result<(), StorageError> {
        if self.0.get() {
            Err(StorageError::refused("test write", Full))
        } else {
            Ok(())
        }
    }
}

/// A state machine that counts, and panics on the command `poison`.
#[derive(Default)]
struct Counter {
    applied: Zxid,
    count: u64,
    skipped: Vec<Zxid>,
}

impl StateMachine for Counter {
    fn apply(&mut self, zxid: Zxid, command: &Bytes) -> Bytes {
        assert!(&command[..] != b"poison", "cannot apply poison");
        self.applied = zxid;
        self.count += 1;
        Bytes::from(self.count.to_string())
    }
    fn skip(&mut self, zxid: Zxid) -> Bytes {
        self.applied = zxid;
        self.skipped.push(zxid);
        Bytes::new()
    }
    fn applied(&self) -> Zxid {
        self.applied
    }
    fn snapshot(&self, _: &mut dyn std::io::Write) -> std::io::Result<()> {
        Ok(())
    }
    fn restore(&mut self, zxid: Zxid, _: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.applied = zxid;
        Ok(())
    }
}

type TestNode = Node<Disk, TestElector, Counter, u32>;

struct Group {
    nodes: Vec<TestNode>,
    full: Vec<Rc<Cell<bool>>>,
    /// Background syncs asked for and not yet completed, per node.
    syncs: Vec<Option<SyncId>>,
    /// Complete background syncs at once (else the test does).
    auto_sync: bool,
    /// Frames in flight: (from, transmit).
    frames: Vec<(NodeId, Transmit<TestElectionMsg>)>,
    events: Vec<(usize, NodeEvent<u32>)>,
    now: Time,
}

fn ids() -> Vec<NodeId> {
    vec![NodeId(1), NodeId(2), NodeId(3)]
}

impl Group {
    fn new(cfg: NodeConfig) -> Group {
        let config = Config::new(GroupId(0), ids());
        let mut nodes = Vec::new();
        let mut full = Vec::new();
        for id in ids() {
            let flag = Rc::new(Cell::new(false));
            let disk = Disk {
                inner: MemStorage::new(),
                hooks: FullFlag(flag.clone()),
            };
            let replica = Replica::new(
                id,
                config.clone(),
                disk,
                Box::new(TestPlanner),
                Recovered::default(),
                Time::ZERO,
            )
            .unwrap();
            let elector = TestElector::new(id, ids(), ids());
            nodes.push(Node::new(replica, elector, Counter::default(), cfg.clone()).unwrap());
            full.push(flag);
        }
        Group {
            nodes,
            full,
            syncs: vec![None; 3],
            auto_sync: true,
            frames: Vec::new(),
            events: Vec::new(),
            now: Time::ZERO,
        }
    }

    /// One round: timers, processing, outputs collected; then the frames
    /// of the round delivered. Time moves by 1 ms.
    fn round(&mut self) -> Result<(), NodeError> {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            n.handle_timeout(self.now);
            n.process(self.now)?;
            if let Some(s) = n.poll_sync() {
                assert!(
                    self.syncs[i].is_none(),
                    "the layer asked for a second background sync while one was in flight"
                );
                self.syncs[i] = Some(s);
            }
            if self.auto_sync {
                if let Some(s) = self.syncs[i].take() {
                    n.storage_mut().sync().unwrap();
                    n.handle_sync_done(self.now, s, Ok(()))?;
                    n.process(self.now)?;
                }
            }
            let from = n.replica().id();
            while let Some(t) = n.poll_transmit() {
                self.frames.push((from, t));
            }
            while let Some(ev) = n.poll_event() {
                self.events.push((i, ev));
            }
        }
        for (from, t) in std::mem::take(&mut self.frames) {
            match t {
                Transmit::Core(env) => {
                    let to = (env.to.0 - 1) as usize;
                    self.nodes[to].handle_message(self.now, env);
                }
                Transmit::Election(to, msg) => {
                    let to = (to.0 - 1) as usize;
                    self.nodes[to].handle_election_message(self.now, from, msg);
                }
            }
        }
        self.now += std::time::Duration::from_millis(1);
        Ok(())
    }

    fn rounds(&mut self, n: usize) {
        for _ in 0..n {
            self.round().unwrap();
        }
    }

    /// Runs until one node leads and both followers are in broadcast
    /// under it.
    fn leader(&mut self) -> usize {
        for _ in 0..20_000 {
            if let Some(i) = self.nodes.iter().position(|n| n.is_leader()) {
                let progress = self.nodes[i].replica().peer_progress();
                if progress.len() == 2 && progress.iter().all(|p| p.in_broadcast) {
                    return i;
                }
            }
            self.round().unwrap();
        }
        panic!("no established group in 20 s");
    }

    fn written(&self, token: u32) -> Option<Bytes> {
        self.events.iter().find_map(|(_, ev)| match ev {
            NodeEvent::Written {
                token: t, result, ..
            } if *t == token => Some(result.clone()),
            _ => None,
        })
    }
}

#[test]
fn a_write_is_answered_once_a_quorum_made_it_durable() {
    let mut g = Group::new(NodeConfig::default());
    let l = g.leader();
    g.nodes[l]
        .propose(g.now, Bytes::from_static(b"one"), 7)
        .unwrap();
    g.rounds(10);
    assert_eq!(g.written(7), Some(Bytes::from_static(b"1")));
}

#[test]
fn acknowledgements_wait_for_the_background_sync_and_one_sync_is_in_flight() {
    // No inline syncs: every follower batch goes through the background sync.
    let cfg = NodeConfig {
        inline_sync_bytes: 0,
        ..NodeConfig::default()
    };
    let mut g = Group::new(cfg);
    let l = g.leader();
    g.auto_sync = false;
    g.nodes[l]
        .propose(g.now, Bytes::from_static(b"a"), 1)
        .unwrap();
    for _ in 0..20 {
        g.round().unwrap();
        // The round asserts one background sync per node at most; no
        // follower may have acknowledged an entry its disk does not hold.
        for (i, n) in g.nodes.iter().enumerate() {
            if i != l {
                assert!(n.pending_writes() == 0, "followers hold no client writes");
            }
        }
    }
    assert_eq!(g.written(1), None, "answered before any sync completed");
    assert!(
        g.syncs.iter().filter(|s| s.is_some()).count() >= 2,
        "the leader and the followers wait on their background syncs"
    );
    // Writes made while the syncs are in flight wait for the next ones.
    g.nodes[l]
        .propose(g.now, Bytes::from_static(b"b"), 2)
        .unwrap();
    g.rounds(5);
    assert_eq!(g.written(2), None);
    // Complete the syncs in flight: the first write commits.
    g.auto_sync = true;
    g.rounds(20);
    assert!(g.written(1).is_some() && g.written(2).is_some());
}

#[test]
fn a_full_disk_on_a_follower_withholds_its_acknowledgements_until_it_has_room() {
    let mut g = Group::new(NodeConfig::default());
    let l = g.leader();
    let followers: Vec<usize> = (0..3).filter(|&i| i != l).collect();
    // Both followers' disks are full: nothing can commit.
    for &f in &followers {
        g.full[f].set(true);
    }
    g.nodes[l]
        .propose(g.now, Bytes::from_static(b"x"), 5)
        .unwrap();
    g.rounds(50);
    assert_eq!(g.written(5), None, "committed with no follower holding it");
    assert!(followers.iter().all(|&f| g.nodes[f].is_stalled()));
    assert!(followers
        .iter()
        .all(|&f| g.nodes[f].stats().storage_stalls == 1));
    // Room again: the held writes go in (after the backoff) and commit.
    for &f in &followers {
        g.full[f].set(false);
    }
    g.rounds(100);
    assert_eq!(g.written(5), Some(Bytes::from_static(b"1")));
    assert!(followers.iter().all(|&f| !g.nodes[f].is_stalled()));
}

#[test]
fn a_panicking_apply_stops_the_node_naming_the_entry_and_a_skip_gets_past_it() {
    let mut g = Group::new(NodeConfig::default());
    let l = g.leader();
    let z = g.nodes[l]
        .propose(g.now, Bytes::from_static(b"poison"), 9)
        .unwrap();
    let mut stopped = None;
    for _ in 0..50 {
        if let Err(e) = g.round() {
            stopped = Some(e);
            break;
        }
    }
    match stopped {
        Some(NodeError::ApplyPanicked { zxid, message }) => {
            assert_eq!(zxid, z);
            assert!(message.contains("cannot apply poison"), "{message}");
        }
        other => panic!("expected the node to stop on the poisoned entry, got {other:?}"),
    }
    // A stopped node stays stopped.
    let now = g.now;
    let i = g
        .nodes
        .iter_mut()
        .position(|n| n.process(now).is_err())
        .expect("one node stopped");
    assert!(g.nodes[i].process(g.now).is_err());

    // A fresh node told to skip the entry applies it as a no-op.
    let mut skipping = Group::new(NodeConfig {
        skip_entries: vec![Zxid::new(paxos_core::Epoch(1), 1)],
        ..NodeConfig::default()
    });
    let l = skipping.leader();
    let z = skipping.nodes[l]
        .propose(skipping.now, Bytes::from_static(b"poison"), 3)
        .unwrap();
    assert_eq!(
        z,
        Zxid::new(paxos_core::Epoch(1), 1),
        "the first entry of epoch 1"
    );
    skipping.rounds(100);
    assert_eq!(skipping.written(3), Some(Bytes::new()));
    assert!(skipping
        .nodes
        .iter()
        .all(|n| n.state_machine().skipped == vec![z]));
}

#[test]
fn frames_the_layer_sends_name_their_receiver() {
    let mut g = Group::new(NodeConfig::default());
    g.leader();
    g.rounds(5);
    // Every core frame delivered so far reached the node it named (the
    // harness indexes by it); a heartbeat or commit flows.
    let l = g.nodes.iter().position(|n| n.is_leader()).unwrap();
    g.nodes[l].process(g.now).unwrap();
    let mut saw = false;
    for _ in 0..100 {
        g.now += std::time::Duration::from_millis(5);
        g.nodes[l].handle_timeout(g.now);
        g.nodes[l].process(g.now).unwrap();
        while let Some(t) = g.nodes[l].poll_transmit() {
            if let Transmit::Core(env) = t {
                assert_ne!(env.to, g.nodes[l].replica().id());
                saw |= !matches!(env.msg, Message::FollowerInfo { .. });
            }
        }
        if saw {
            break;
        }
    }
    assert!(saw, "an established leader sends to its followers");
}

/// Drains `node`'s frames, checking that no elector message leaves before
/// the election round it belongs to is on the disk's durable image.
/// Returns how many elector messages left.
fn votes_sent(node: &mut Node<SimStorage, TestElector, Counter, u32>) -> usize {
    let mut sent = 0;
    while let Some(t) = node.poll_transmit() {
        if matches!(t, Transmit::Election(..)) {
            let entered = node.storage().meta(MetaKey::ElectionRound);
            let durable = node.storage().durable().meta(MetaKey::ElectionRound);
            assert!(
                durable >= entered,
                "a vote left in round {entered} while the disk held round {durable}"
            );
            sent += 1;
        }
    }
    sent
}

#[test]
fn a_round_kept_in_the_log_is_synced_with_the_log_and_holds_the_votes_until_then() {
    // A storage whose state is in its log (a shared log of many groups):
    // the round is a record that the next background sync covers, instead
    // of one flush per group per round.
    let mut disk = SimStorage::default();
    disk.set_state_in_log(true);
    let replica = Replica::new(
        NodeId(1),
        Config::new(GroupId(0), ids()),
        disk,
        Box::new(TestPlanner),
        Recovered::default(),
        Time::ZERO,
    )
    .unwrap();
    let elector = TestElector::new(NodeId(1), ids(), ids());
    let mut node: Node<SimStorage, TestElector, Counter, u32> =
        Node::new(replica, elector, Counter::default(), NodeConfig::default()).unwrap();
    let mut now = Time::ZERO;
    let mut sync = None;
    for _ in 0..10_000 {
        node.handle_timeout(now);
        node.process(now).unwrap();
        sync = sync.or(node.poll_sync());
        votes_sent(&mut node);
        if node.storage().meta(MetaKey::ElectionRound) > 0 {
            break;
        }
        now += std::time::Duration::from_millis(1);
    }
    let round = node.storage().meta(MetaKey::ElectionRound);
    assert!(round > 0, "the node never entered an election round");
    assert_eq!(
        node.storage().durable().meta(MetaKey::ElectionRound),
        0,
        "the round was flushed on its own rather than left to the background sync"
    );
    let sync = sync.expect("no background sync was asked for the new round");
    // The elector's timers fire meanwhile: its votes stay held.
    for _ in 0..200 {
        now += std::time::Duration::from_millis(1);
        node.handle_timeout(now);
        node.process(now).unwrap();
        assert_eq!(votes_sent(&mut node), 0, "a vote left before the sync");
    }
    node.storage_mut().sync().unwrap();
    node.handle_sync_done(now, sync, Ok(())).unwrap();
    node.process(now).unwrap();
    assert_eq!(node.storage().durable().meta(MetaKey::ElectionRound), round);
    assert!(
        votes_sent(&mut node) > 0,
        "the held votes did not leave once the round was durable"
    );
}

/// A quiet group's few entries stay below the retention however long it
/// waits, and in a log shared by many groups they keep every segment
/// written since. `purge_log` asks for a snapshot; once it is taken, the
/// next `Ready` cuts the log to it, retention or not. A node whose newest
/// snapshot already covers what it applied cuts at once.
#[test]
fn purge_log_snapshots_then_cuts_the_log_past_the_retention() {
    let mut g = Group::new(NodeConfig::default());
    let l = g.leader();
    for t in 0..5 {
        g.nodes[l]
            .propose(g.now, Bytes::from(format!("w{t}")), t)
            .unwrap();
    }
    g.rounds(20);
    let applied = g.nodes[l].state_machine().applied();
    assert!((0..3).all(|i| g.nodes[i].state_machine().applied() == applied));
    g.rounds(200);
    for n in &g.nodes {
        assert!(
            n.storage().first_zxid().is_some(),
            "retention keeps the entries without a purge"
        );
    }
    for i in 0..3 {
        g.events.clear();
        assert!(g.nodes[i].purge_log(), "node {i}: a snapshot is asked for");
        g.round().unwrap();
        assert!(
            g.events
                .iter()
                .any(|(j, ev)| *j == i && matches!(ev, NodeEvent::SnapshotDue)),
            "node {i}: SnapshotDue"
        );
        assert!(
            g.nodes[i].storage().first_zxid().is_some(),
            "node {i}: nothing cut before the snapshot is taken"
        );
        g.nodes[i].snapshot_taken(applied);
        g.rounds(3);
        assert_eq!(
            g.nodes[i].storage().first_zxid(),
            None,
            "node {i}: the log cut to the snapshot at {applied:?}"
        );
    }
    // Written again, then purged again: the snapshot covers nothing new
    // only once one is taken; with one that does, the cut is immediate.
    g.nodes[l]
        .propose(g.now, Bytes::from_static(b"again"), 9)
        .unwrap();
    g.rounds(20);
    let applied = g.nodes[l].state_machine().applied();
    g.nodes[l].snapshot_taken(applied);
    g.rounds(3);
    assert!(
        g.nodes[l].storage().first_zxid().is_some(),
        "retention again"
    );
    assert!(!g.nodes[l].purge_log(), "no new snapshot needed");
    g.rounds(3);
    assert_eq!(g.nodes[l].storage().first_zxid(), None);
    // The group goes on.
    g.nodes[l]
        .propose(g.now, Bytes::from_static(b"after"), 10)
        .unwrap();
    g.rounds(20);
    assert_eq!(g.written(10), Some(Bytes::from_static(b"7")));
}
