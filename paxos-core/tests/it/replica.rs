//! Replica behaviour on a hand-driven cluster (no faults, messages handed
//! over directly): discovery, fetch, TRUNC, broadcast, reads, step-down,
//! observers, persistence gating.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use paxos_core::sim::TestPlanner;
use paxos_core::{
    Config, Decision, Entry, Envelope, Epoch, Event, GroupId, HardState, MemStorage, Message,
    NodeId, ProposeError, Ready, Recovered, Replica, SnapChunk, SnapshotRequest, StartError,
    Storage, StorageError, Time, Zxid,
};

fn z(e: u32, c: u32) -> Zxid {
    Zxid::new(Epoch(e), c)
}

fn entry(zx: Zxid) -> Entry {
    Entry {
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

struct Cluster {
    now: Time,
    reps: Vec<Replica<MemStorage>>,
    applied: Vec<Vec<Zxid>>,
    queue: VecDeque<Envelope>,
    cut: Vec<NodeId>,
    events: Vec<(NodeId, Event)>,
    sent: Vec<Envelope>,
    snapshot_requests: Vec<(NodeId, SnapshotRequest)>,
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
        let ids: Vec<NodeId> = config
            .voters
            .iter()
            .chain(&config.observers)
            .copied()
            .collect();
        let reps = ids
            .iter()
            .zip(storages.into_iter().zip(recovered))
            .map(|(id, (s, rec))| {
                Replica::new(
                    *id,
                    config.clone(),
                    s,
                    Box::new(TestPlanner),
                    rec,
                    Time::ZERO,
                )
                .unwrap()
            })
            .collect::<Vec<_>>();
        let n = reps.len();
        Cluster {
            now: Time::ZERO,
            reps,
            applied: vec![Vec::new(); n],
            queue: VecDeque::new(),
            cut: Vec::new(),
            events: Vec::new(),
            sent: Vec::new(),
            snapshot_requests: Vec::new(),
        }
    }

    fn idx(&self, id: NodeId) -> usize {
        self.reps.iter().position(|r| r.id() == id).unwrap()
    }

    fn decide(&mut self, leader: NodeId) {
        for r in &mut self.reps {
            if !self.cut.contains(&r.id()) {
                r.handle_leader_decision(
                    self.now,
                    Decision {
                        leader,
                        round: 1,
                        epoch_hint: Epoch::ZERO,
                    },
                );
            }
        }
    }

    fn handle_ready(&mut self, i: usize, rd: Ready) {
        let id = self.reps[i].id();
        self.sent.extend(rd.messages.iter().cloned());
        self.queue.extend(rd.messages.iter().cloned());
        let r = &mut self.reps[i];
        r.storage_mut().write_ready(&rd).unwrap();
        r.storage_mut().sync().unwrap();
        self.sent.extend(rd.persisted_messages.iter().cloned());
        self.queue.extend(rd.persisted_messages.iter().cloned());
        r.persisted(self.now, rd.persist_marker());
        if let Some(last) = rd.committed.last() {
            self.applied[i].extend(rd.committed.iter().map(|e| e.zxid));
            r.applied(last.zxid);
        }
        self.events.extend(rd.events.into_iter().map(|e| (id, e)));
        self.snapshot_requests
            .extend(rd.snapshot_requests.into_iter().map(|q| (id, q)));
    }

    /// Delivers until quiet (bounded).
    fn pump(&mut self) {
        for _ in 0..10_000 {
            for i in 0..self.reps.len() {
                let rd = self.reps[i].ready();
                if !rd.is_empty() {
                    self.handle_ready(i, rd);
                }
            }
            let Some(env) = self.queue.pop_front() else {
                return;
            };
            if self.cut.contains(&env.to) || self.cut.contains(&env.from) {
                continue;
            }
            let i = self.idx(env.to);
            let now = self.now;
            self.reps[i].handle_message(now, env);
        }
        panic!("cluster did not quiesce");
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        for i in 0..self.reps.len() {
            if !self.cut.contains(&self.reps[i].id()) {
                let now = self.now;
                self.reps[i].handle_timeout(now);
            }
        }
        self.pump();
    }
}

fn three() -> Config {
    Config::new(GroupId(0), vec![NodeId(1), NodeId(2), NodeId(3)])
}

#[test]
fn elect_sync_and_commit_in_order_everywhere() {
    let mut c = Cluster::new(
        three(),
        vec![MemStorage::new(), MemStorage::new(), MemStorage::new()],
    );
    c.decide(NodeId(1));
    c.pump();
    assert!(c.reps[0].is_leader());
    let mut zs = Vec::new();
    for k in 0..10u8 {
        zs.push(c.reps[0].propose(Bytes::from(vec![k])).unwrap());
    }
    c.pump();
    c.advance(Duration::from_millis(60)); // heartbeat carries the commit point
    for a in &c.applied {
        assert_eq!(a, &zs, "every replica applies the same sequence");
    }
    assert_eq!(zs[0], z(1, 1));
    for r in &c.reps {
        assert_eq!(
            r.hard_state(),
            HardState {
                accepted_epoch: Epoch(1),
                current_epoch: Epoch(1)
            }
        );
    }
}

#[test]
fn leader_reports_each_followers_progress() {
    let mut c = Cluster::new(
        three(),
        vec![MemStorage::new(), MemStorage::new(), MemStorage::new()],
    );
    c.decide(NodeId(1));
    c.pump();
    assert!(
        c.reps[1].peer_progress().is_empty(),
        "only a leader reports progress"
    );
    let mut last = Zxid::ZERO;
    for k in 0..5u8 {
        last = c.reps[0].propose(Bytes::from(vec![k])).unwrap();
    }
    c.pump();
    c.advance(Duration::from_millis(60));
    let progress = c.reps[0].peer_progress();
    let ids: Vec<NodeId> = progress.iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![NodeId(2), NodeId(3)]);
    for p in &progress {
        assert_eq!(p.matched, last, "{p:?} holds every entry");
        assert!(p.in_broadcast && !p.observer, "{p:?}");
    }
}

#[test]
fn a_follower_refuses_proposals_and_hands_the_command_back() {
    let mut c = Cluster::new(
        three(),
        vec![MemStorage::new(), MemStorage::new(), MemStorage::new()],
    );
    c.decide(NodeId(1));
    c.pump();
    let err = c.reps[1].propose(Bytes::from_static(b"x")).unwrap_err();
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
    assert!(c.reps[0].is_leader());
    assert_eq!(
        c.reps[0].last_zxid(),
        z(1, 5),
        "the leader adopted n2's suffix"
    );
    assert_eq!(
        c.reps[0].commit_zxid(),
        z(1, 5),
        "the synced history is committed"
    );
    assert!(c.reps[0].storage().get(z(1, 5)).is_some());
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

#[test]
fn a_leader_elect_takes_a_compacted_followers_snapshot_then_its_suffix() {
    let mut c = leader_elect_behind_a_compacted_follower();
    // n2's driver is asked to stream its snapshot to n1.
    let req = c.snapshot_requests.iter().find(|(n, _)| *n == NodeId(2));
    assert_eq!(
        req.map(|(_, q)| q),
        Some(&SnapshotRequest::Send {
            to: NodeId(1),
            snapshot: z(1, 5),
            offset: 0
        })
    );
    assert!(
        !c.reps[1].send_snapshot_chunk(NodeId(1), chunk(z(1, 4))),
        "only the snapshot asked for is sent"
    );
    assert!(c.reps[1].send_snapshot_chunk(NodeId(1), chunk(z(1, 5))));
    c.pump();
    // n1's driver writes it; nothing is proposed before it is installed.
    assert!(c.snapshot_requests.iter().any(|(n, q)| *n == NodeId(1)
        && matches!(q, SnapshotRequest::Write { from: NodeId(2), chunk } if chunk.snapshot_zxid == z(1, 5))));
    assert!(!c.reps[0].is_leader());
    assert!(!c
        .sent
        .iter()
        .any(|e| matches!(e.msg, Message::NewLeader { .. })));
    let now = c.now;
    c.reps[0].snapshot_progress(now, z(1, 5), 5, true);
    c.reps[0].snapshot_installed(now, z(1, 5));
    c.pump();
    // Then the entries after the snapshot, by DIFF, and n1 leads.
    assert!(c.reps[0].is_leader());
    assert_eq!(c.reps[0].last_zxid(), z(1, 7));
    assert_eq!(c.reps[0].commit_zxid(), z(1, 7));
    assert!(c.reps[0].storage().get(z(1, 7)).is_some());
    assert!(c.reps[0].storage().get(z(1, 3)).is_none(), "log reset");
    assert_eq!(c.reps[0].hard_state().current_epoch, Epoch(2));
    // The state machine continues after the snapshot.
    c.advance(Duration::from_millis(60));
    assert_eq!(c.applied[0], vec![z(1, 6), z(1, 7)]);
}

#[test]
fn a_leader_elect_refuses_a_snapshot_that_does_not_cover_its_log() {
    let mut c = leader_elect_behind_a_compacted_follower();
    let now = c.now;
    // A faulty peer streams a snapshot below n1's last zxid: installing it
    // would drop (1,3), so n1 gives up its discovery instead.
    c.reps[0].handle_message(
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
    assert!(c.reps[0].leader().is_none(), "n1 stepped down");
    assert!(!c
        .snapshot_requests
        .iter()
        .any(|(n, q)| *n == NodeId(1) && matches!(q, SnapshotRequest::Write { .. })));
    assert_eq!(c.reps[0].last_zxid(), z(1, 3), "n1's log is intact");
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
        c.reps[2]
            .storage()
            .entries(z(1, 1), 100, usize::MAX, &mut out)
            .unwrap();
        out.into_iter().map(|e| e.zxid).collect()
    };
    assert_eq!(log3, vec![z(1, 1), z(1, 2), z(2, 1)]);
}

#[test]
fn acks_wait_for_persistence() {
    let mut c = Cluster::new(
        three(),
        vec![MemStorage::new(), MemStorage::new(), MemStorage::new()],
    );
    c.decide(NodeId(1));
    // n2 gets NEWEPOCH: its ACKEPOCH must come only as a persisted message.
    c.pump();
    let r2 = &mut c.reps[1];
    r2.handle_message(
        c.now,
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
    let rd = r2.ready();
    assert_eq!(rd.entries.len(), 1);
    assert!(rd.needs_sync());
    assert!(rd
        .messages
        .iter()
        .all(|m| !matches!(m.msg, Message::Accepted { .. })));
    assert!(rd
        .persisted_messages
        .iter()
        .any(|m| matches!(m.msg, Message::Accepted { durable, .. } if durable == z(1, 1))));
    drop(rd);
}

#[test]
fn leader_without_a_quorum_steps_down() {
    let mut c = Cluster::new(
        three(),
        vec![MemStorage::new(), MemStorage::new(), MemStorage::new()],
    );
    c.decide(NodeId(1));
    c.pump();
    assert!(c.reps[0].is_leader());
    c.cut = vec![NodeId(2), NodeId(3)];
    for _ in 0..30 {
        c.advance(Duration::from_millis(50));
    }
    assert!(!c.reps[0].is_leader());
    assert!(c
        .events
        .iter()
        .any(|(id, e)| *id == NodeId(1) && matches!(e, Event::LostLeader(_))));
    assert!(c.reps[0].propose(Bytes::from_static(b"late")).is_err());
}

#[test]
fn read_index_confirms_with_a_quorum_round() {
    let mut c = Cluster::new(
        three(),
        vec![MemStorage::new(), MemStorage::new(), MemStorage::new()],
    );
    c.decide(NodeId(1));
    c.pump();
    let zx = c.reps[0].propose(Bytes::from_static(b"w")).unwrap();
    c.pump();
    let now = c.now;
    c.reps[0]
        .read_index(now, Bytes::from_static(b"r1"))
        .unwrap();
    let rd = c.reps[0].ready();
    assert!(rd.read_states.is_empty(), "not before a quorum answered");
    c.handle_ready(0, rd);
    let mut got = Vec::new();
    for _ in 0..100 {
        let Some(env) = c.queue.pop_front() else {
            break;
        };
        let i = c.idx(env.to);
        let now = c.now;
        c.reps[i].handle_message(now, env);
        for j in 0..3 {
            let rd = c.reps[j].ready();
            got.extend(rd.read_states.iter().cloned());
            c.handle_ready(j, rd);
        }
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].ctx, Bytes::from_static(b"r1"));
    assert!(got[0].zxid >= zx);
    // A follower's read goes through the leader.
    let now = c.now;
    c.reps[1]
        .read_index(now, Bytes::from_static(b"r2"))
        .unwrap();
    assert!(c.reps[2].read_index(now, Bytes::new()).is_ok());
}

#[test]
fn lease_reads_answer_at_once_while_the_lease_holds() {
    let mut cfg = three();
    cfg.lease_reads = true;
    let mut c = Cluster::new(
        cfg,
        vec![MemStorage::new(), MemStorage::new(), MemStorage::new()],
    );
    c.decide(NodeId(1));
    c.pump();
    c.advance(Duration::from_millis(60)); // a heartbeat round acknowledged
    let now = c.now;
    c.reps[0]
        .read_index(now, Bytes::from_static(b"lease"))
        .unwrap();
    let rd = c.reps[0].ready();
    assert_eq!(rd.read_states.len(), 1, "served from the lease");
    c.handle_ready(0, rd);
}

/// A leader paused (SIGSTOP, a long GC, a stalled VM) gets a read as its
/// first input after the pause: the lease must be judged at the read's
/// time, not at the time of the last input before the pause, or the old
/// leader serves a value the next leader has overwritten meanwhile.
#[test]
fn a_lease_is_judged_at_the_time_of_the_read() {
    let mut cfg = three();
    cfg.lease_reads = true;
    let mut c = Cluster::new(
        cfg,
        vec![MemStorage::new(), MemStorage::new(), MemStorage::new()],
    );
    c.decide(NodeId(1));
    c.pump();
    c.advance(Duration::from_millis(60)); // a heartbeat round acknowledged
                                          // Ten seconds later, with nothing in between, a read arrives.
    let later = c.now + Duration::from_secs(10);
    c.reps[0]
        .read_index(later, Bytes::from_static(b"after a pause"))
        .unwrap();
    let rd = c.reps[0].ready();
    assert!(
        rd.read_states.is_empty(),
        "a lease acknowledged ten seconds ago must not serve a read"
    );
    c.handle_ready(0, rd);
}

#[test]
fn observers_learn_committed_entries_but_never_count() {
    let mut cfg = three();
    cfg.observers = vec![NodeId(9)];
    let mut c = Cluster::new(
        cfg,
        vec![
            MemStorage::new(),
            MemStorage::new(),
            MemStorage::new(),
            MemStorage::new(),
        ],
    );
    c.cut = vec![NodeId(3)];
    c.decide(NodeId(1));
    c.pump();
    assert!(c.reps[0].is_leader());
    // With n2 also gone, leader + observer are not a quorum.
    c.cut = vec![NodeId(2), NodeId(3)];
    let zx = c.reps[0].propose(Bytes::from_static(b"o")).unwrap();
    c.pump();
    assert!(
        c.reps[0].commit_zxid() < zx,
        "an observer's ack must not commit"
    );
    c.cut = vec![NodeId(3)];
    for _ in 0..20 {
        if c.applied[c.idx(NodeId(9))].contains(&zx) {
            break;
        }
        c.advance(Duration::from_millis(100));
    }
    assert!(c.reps[0].commit_zxid() >= zx);
    let obs = c.idx(NodeId(9));
    assert!(
        c.applied[obs].contains(&zx),
        "the observer applies committed entries"
    );
}

#[test]
fn a_recovering_follower_is_not_counted_until_readmitted() {
    let mut c = Cluster::new(
        three(),
        vec![MemStorage::new(), MemStorage::new(), MemStorage::new()],
    );
    let n3 = c.idx(NodeId(3));
    c.reps[n3].mark_recovering();
    assert!(c.reps[n3].is_recovering());
    let rd = c.reps[n3].ready();
    assert_eq!(rd.recovering, Some(true), "the flag is persisted");
    assert!(
        matches!(
            rd.events[..],
            [Event::RecoveryStarted, Event::LostLeader(_)]
        ),
        "abstain before looking: {:?}",
        rd.events
    );
    c.handle_ready(n3, rd);
    assert!(c.reps[n3].storage().recovering());
    // Leader 1 with node 2 cut off: node 3 alone must not make a quorum.
    c.cut = vec![NodeId(2)];
    c.decide(NodeId(1));
    c.pump();
    c.advance(Duration::from_millis(60));
    assert!(
        !c.reps[0].is_leader(),
        "a recovering follower completed the leader's quorum"
    );
    // Node 2 joins: established without node 3, which is then synced and
    // readmitted once node 2 confirms a later heartbeat.
    c.cut.clear();
    c.decide(NodeId(1));
    c.pump();
    assert!(c.reps[0].is_leader());
    for _ in 0..5 {
        c.advance(Duration::from_millis(60));
    }
    assert!(!c.reps[n3].is_recovering(), "node 3 was never readmitted");
    assert!(
        !c.reps[n3].storage().recovering(),
        "the cleared flag is durable"
    );
    assert!(c.events.iter().any(|(id, e)| *id == NodeId(3)
        && matches!(e, Event::RecoveryComplete { leader, .. } if *leader == NodeId(1))));
    // Node 3 counts again: with node 2 gone, 1 and 3 commit.
    c.cut = vec![NodeId(2)];
    let zx = c.reps[0].propose(Bytes::from_static(b"after")).unwrap();
    c.pump();
    assert!(c.reps[0].commit_zxid() >= zx);
}

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
        let storages = (0..5).map(|_| MemStorage::new()).collect();
        let mut c = Cluster::new(cfg, storages);
        let n5 = c.idx(NodeId(5));
        c.reps[n5].mark_recovering();
        c.cut = vec![NodeId(4)];
        c.decide(NodeId(1));
        c.pump();
        assert!(c.reps[0].is_leader());
        for _ in 0..5 {
            c.advance(Duration::from_millis(60));
        }
        assert_eq!(
            c.reps[n5].is_recovering(),
            strict,
            "strict {strict}: readmitted without node 4?"
        );
        c.cut.clear();
        c.decide(NodeId(1));
        for _ in 0..5 {
            c.advance(Duration::from_millis(60));
        }
        assert!(
            !c.reps[n5].is_recovering(),
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
