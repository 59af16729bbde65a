//! The connectivity rule: candidates say whether they heard from a quorum,
//! connected candidates rank first and only their votes are locked, a
//! node locks the vote its candidate locked, and a node follows a
//! connected leader that reports its own election.

use std::time::Duration;

use paxos_core::{Elector, Epoch, NodeId, PeerState, Time, VoteInfo, Zxid};
use paxos_election::{ElectionConfig, FastElection, Notification, Vote, Weighted};

fn ids(v: &[u64]) -> Vec<NodeId> {
    v.iter().copied().map(NodeId).collect()
}

fn info(epoch: u32, counter: u32) -> VoteInfo {
    VoteInfo {
        current_epoch: Epoch(epoch),
        last_zxid: Zxid::new(Epoch(epoch), counter),
    }
}

fn vote(leader: u64, epoch: u32, counter: u32, connected: bool) -> Vote {
    Vote::new(NodeId(leader), info(epoch, counter)).with_connected(connected)
}

fn config(id: u64, voters: &[u64]) -> ElectionConfig {
    ElectionConfig {
        id: NodeId(id),
        voters: ids(voters),
        seed: id,
        ..ElectionConfig::default()
    }
}

fn elector(id: u64, voters: &[u64]) -> FastElection {
    FastElection::new(config(id, voters)).expect("valid config")
}

fn msg(state: PeerState, v: Option<Vote>, round: u64, locked: bool) -> Notification {
    Notification {
        vote: v,
        round,
        state,
        locked,
        abstain: false,
    }
}

fn drain(e: &mut FastElection) -> Vec<(NodeId, Notification)> {
    std::iter::from_fn(|| e.poll_transmit()).collect()
}

fn at(ms: u64) -> Time {
    Time::ZERO + Duration::from_millis(ms)
}

#[test]
fn a_connected_candidate_outranks_any_unconnected_one() {
    assert!(vote(1, 1, 1, true) > vote(2, 9, 9, false));
    assert!(vote(2, 9, 9, true) > vote(1, 1, 1, true));
    assert!(vote(2, 1, 1, false) > vote(1, 1, 1, false));
}

#[test]
fn a_node_stands_connected_once_it_heard_a_quorum() {
    let voters = [1, 2, 3, 4, 5];
    let mut e = elector(1, &voters);
    e.start_looking(at(0), info(1, 4));
    let out = drain(&mut e);
    assert_eq!(out.len(), 4);
    assert!(out
        .iter()
        .all(|(_, n)| n.vote == Some(vote(1, 1, 4, false))));
    // Node 2 is new to us: it is answered at once so that it hears us too.
    e.handle_message(at(1), NodeId(2), msg(PeerState::Looking, None, 1, false));
    assert_eq!(
        drain(&mut e).iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        ids(&[2])
    );
    assert!(!e.quorum_connected(at(1)), "two of five");
    // Once the link is known, a message that needs no answer (it holds
    // our vote) gets none.
    e.handle_message(
        at(1),
        NodeId(2),
        msg(PeerState::Looking, Some(vote(1, 1, 4, false)), 1, false),
    );
    assert!(drain(&mut e).is_empty());
    // With node 3 we reach three of five: we stand again, connected.
    e.handle_message(at(2), NodeId(3), msg(PeerState::Looking, None, 1, false));
    assert!(e.quorum_connected(at(2)));
    assert_eq!(e.proposal(), Some(vote(1, 1, 4, true)));
    let out = drain(&mut e);
    assert_eq!(out.len(), 4, "the better vote of ours goes to every peer");
    assert!(out.iter().all(|(_, n)| n.vote == Some(vote(1, 1, 4, true))));
    // Links not heard from within the window lapse.
    let window = ElectionConfig::default().connectivity_window;
    assert!(e.quorum_connected(at(1) + window));
    assert!(!e.quorum_connected(at(2) + window + Duration::from_millis(1)));
    // A new looking period measures connectivity afresh.
    e.start_looking(at(3), info(1, 4));
    assert!(!e.quorum_connected(at(3)));
}

#[test]
fn abstaining_voters_do_not_make_a_quorum_connected() {
    let mut e = elector(1, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 4));
    let abstaining = Notification {
        abstain: true,
        ..msg(PeerState::Looking, None, 1, false)
    };
    e.handle_message(at(1), NodeId(2), abstaining);
    assert!(!e.quorum_connected(at(1)));
    e.handle_message(at(2), NodeId(3), msg(PeerState::Looking, None, 1, false));
    assert!(e.quorum_connected(at(2)));
}

/// A voter of weight zero never stands, so it can see a quorum hold a
/// vote without being connected itself: it must not lock a vote whose
/// candidate was not connected (with the rule off, it does).
#[test]
fn an_unconnected_vote_is_never_locked() {
    for rule in [true, false] {
        let w = Weighted::new([
            (NodeId(1), 1),
            (NodeId(2), 1),
            (NodeId(3), 1),
            (NodeId(4), 0),
        ])
        .expect("valid");
        let mut e = FastElection::with_quorum(
            ElectionConfig {
                connectivity_rule: rule,
                ..config(4, &[1, 2, 3, 4])
            },
            w,
        )
        .expect("valid");
        e.start_looking(at(0), info(1, 1));
        let v = vote(3, 9, 9, false);
        for from in [1, 2, 3] {
            e.handle_message(
                at(1),
                NodeId(from),
                msg(PeerState::Looking, Some(v), 1, false),
            );
        }
        assert_eq!(e.proposal(), Some(v));
        e.handle_timeout(at(60));
        assert_eq!(e.lock().is_some(), !rule, "rule {rule}");
    }
}

/// A node that reaches only the hub locks the hub's vote when the hub
/// (the candidate) says it locked it: it cannot see the quorum itself.
#[test]
fn a_node_locks_the_vote_its_candidate_locked() {
    for rule in [true, false] {
        let mut e = FastElection::new(ElectionConfig {
            connectivity_rule: rule,
            ..config(2, &[1, 2, 3, 4, 5])
        })
        .expect("valid");
        e.start_looking(at(0), info(1, 9));
        let hub = vote(1, 1, 4, true);
        e.handle_message(
            at(1),
            NodeId(1),
            msg(PeerState::Looking, Some(hub), 1, false),
        );
        assert_eq!(e.proposal(), Some(hub), "the connected vote wins");
        assert_eq!(e.lock(), None);
        e.handle_message(
            at(60),
            NodeId(1),
            msg(PeerState::Looking, Some(hub), 1, true),
        );
        assert_eq!(e.lock().is_some(), rule, "rule {rule}");
        // Another node's lock on the same vote is not the candidate's word.
        let mut other = elector(2, &[1, 2, 3, 4, 5]);
        other.start_looking(at(0), info(1, 9));
        other.handle_message(
            at(1),
            NodeId(3),
            msg(PeerState::Looking, Some(hub), 1, true),
        );
        assert_eq!(other.lock(), None);
    }
}

/// A node that reaches only the leader follows it when the leader reports
/// that it was elected as a connected candidate, without a quorum of
/// followers' reports.
#[test]
fn a_node_follows_a_connected_leader_that_reports_its_election() {
    let leading = |v: Vote, locked: bool| msg(PeerState::Leading, Some(v), 1, locked);
    let mut e = elector(2, &[1, 2, 3, 4, 5]);
    e.start_looking(at(0), info(1, 9));
    // Not elected (a bare settle), or elected unconnected: not followed.
    e.handle_message(at(1), NodeId(1), leading(vote(1, 1, 4, true), false));
    e.handle_message(at(2), NodeId(1), leading(vote(1, 1, 4, false), true));
    assert_eq!(e.poll_decision(), None);
    e.handle_message(at(3), NodeId(1), leading(vote(1, 1, 4, true), true));
    let d = e
        .poll_decision()
        .expect("the leader vouches for its election");
    assert_eq!((d.leader, d.round), (NodeId(1), 1));
    assert_eq!(e.state(), PeerState::Following);
    // With the rule off, one report is not enough.
    let mut legacy = FastElection::new(ElectionConfig {
        connectivity_rule: false,
        ..config(2, &[1, 2, 3, 4, 5])
    })
    .expect("valid");
    legacy.start_looking(at(0), info(1, 9));
    legacy.handle_message(at(3), NodeId(1), leading(vote(1, 1, 4, true), true));
    assert_eq!(legacy.poll_decision(), None);
}

/// The hub topology of the quorum-loss case, electors only: node 1 reaches
/// everyone, the others reach only node 1, and node 5 has the most recent
/// history. Node 1, the only node connected to a quorum, is elected and
/// everyone follows it. With the rule off nobody is ever elected (only the
/// hub sees a quorum hold the best vote, so only it locks).
fn hub_election(rule: bool) -> [Option<NodeId>; 5] {
    let voters = [1, 2, 3, 4, 5];
    let mut nodes: Vec<FastElection> = voters
        .iter()
        .map(|&i| {
            FastElection::new(ElectionConfig {
                connectivity_rule: rule,
                ..config(i, &voters)
            })
            .expect("valid")
        })
        .collect();
    let linked = |a: NodeId, b: NodeId| a == NodeId(1) || b == NodeId(1);
    let mut now = at(0);
    for (k, n) in nodes.iter_mut().enumerate() {
        n.start_looking(now, info(1, 10 + k as u32));
    }
    let mut decided = [None; 5];
    // 10 s of simulated time in 1 ms steps.
    for _step in 0..10_000 {
        let mut wire = Vec::new();
        for n in nodes.iter_mut() {
            while let Some((to, m)) = n.poll_transmit() {
                if linked(n.id(), to) {
                    wire.push((n.id(), to, m.to_bytes()));
                }
            }
        }
        now += Duration::from_millis(1);
        for (from, to, bytes) in wire {
            let m = Notification::decode(&bytes).expect("well-formed");
            nodes[(to.0 - 1) as usize].handle_message(now, from, m);
        }
        for (k, n) in nodes.iter_mut().enumerate() {
            if let Some(d) = n.poll_decision() {
                let state = if d.leader == n.id() {
                    PeerState::Leading
                } else {
                    PeerState::Following
                };
                n.settle(now, state, d.leader, d.epoch_hint);
                decided[k] = Some(d.leader);
            }
            if n.poll_timeout().is_some_and(|t| t <= now) {
                n.handle_timeout(now);
            }
        }
        if decided.iter().all(Option::is_some) {
            break;
        }
    }
    decided
}

#[test]
fn the_hub_is_elected_when_only_it_reaches_a_quorum() {
    assert_eq!(hub_election(true), [Some(NodeId(1)); 5]);
    assert_eq!(hub_election(false), [None; 5]);
}
