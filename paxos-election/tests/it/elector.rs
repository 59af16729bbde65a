//! Deterministic unit behaviour of one elector, driven by hand.

use std::time::Duration;

use paxos_core::{Decision, Elector, Epoch, NodeId, PeerState, Time, VoteInfo, Zxid};
use paxos_election::{ConfigError, ElectionConfig, FastElection, Notification, Vote, Weighted};

fn ids(v: &[u64]) -> Vec<NodeId> {
    v.iter().copied().map(NodeId).collect()
}

fn info(epoch: u32, counter: u32) -> VoteInfo {
    VoteInfo {
        current_epoch: Epoch(epoch),
        last_zxid: Zxid::new(Epoch(epoch), counter),
    }
}

fn vote(leader: u64, epoch: u32, counter: u32) -> Vote {
    Vote::new(NodeId(leader), info(epoch, counter))
}

fn elector(id: u64, voters: &[u64]) -> FastElection {
    FastElection::new(ElectionConfig {
        id: NodeId(id),
        voters: ids(voters),
        seed: id,
        ..ElectionConfig::default()
    })
    .expect("valid config")
}

/// An elector with the connectivity rule off: the base protocol's
/// mechanics exactly as wire version 1 ran them (the rule changes who may
/// be locked, not how votes, rounds and locks move; `connectivity.rs`
/// tests the rule itself).
fn legacy(id: u64, voters: &[u64]) -> FastElection {
    FastElection::new(ElectionConfig {
        id: NodeId(id),
        voters: ids(voters),
        seed: id,
        connectivity_rule: false,
        ..ElectionConfig::default()
    })
    .expect("valid config")
}

fn looking(v: Option<Vote>, round: u64, locked: bool) -> Notification {
    Notification {
        vote: v,
        round,
        state: PeerState::Looking,
        locked,
        abstain: false,
    }
}

fn drain(e: &mut FastElection) -> Vec<(NodeId, Notification)> {
    std::iter::from_fn(|| e.poll_transmit()).collect()
}

const SETTLE: Duration = Duration::from_millis(50);

fn at(ms: u64) -> Time {
    Time::ZERO + Duration::from_millis(ms)
}

#[test]
fn a_single_voter_elects_itself_at_once() {
    // Every voter (itself) holds its vote: nothing to wait for.
    let mut e = elector(1, &[1]);
    e.start_looking(at(0), info(1, 3));
    assert_eq!(
        e.poll_decision(),
        Some(Decision {
            leader: NodeId(1),
            round: 1,
            epoch_hint: Epoch(1)
        })
    );
    assert_eq!(e.state(), PeerState::Leading);
    assert_eq!(e.poll_timeout(), None, "no timers once settled");
}

#[test]
fn a_quorum_without_every_reachable_voter_settles_first() {
    // Voter 3 has not answered and nothing says it is down: its vote may
    // be better, so the quorum {1, 2} is held for the settle wait.
    let mut e = legacy(1, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 4));
    e.handle_message(at(1), NodeId(2), looking(Some(vote(1, 1, 4)), 1, false));
    assert_eq!(e.lock(), None);
    assert_eq!(e.poll_timeout(), Some(at(1) + SETTLE));
    e.handle_timeout(at(51));
    assert_eq!(e.lock(), Some((1, vote(1, 1, 4))));
}

#[test]
fn every_voter_holding_the_proposal_locks_it_at_once() {
    let mut e = legacy(1, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 4));
    e.handle_message(at(1), NodeId(2), looking(Some(vote(1, 1, 4)), 1, false));
    assert_eq!(e.lock(), None, "voter 3 may still bring a better vote");
    e.handle_message(at(2), NodeId(3), looking(Some(vote(1, 1, 4)), 1, false));
    assert_eq!(
        e.lock(),
        Some((1, vote(1, 1, 4))),
        "no voter is left to bring a better vote"
    );
    assert!(
        drain(&mut e).iter().any(|(_, n)| n.locked),
        "the lock is announced"
    );
}

#[test]
fn a_voter_the_host_cannot_reach_is_not_waited_for() {
    let mut e = legacy(1, &[1, 2, 3]);
    e.set_reachable(at(0), NodeId(3), false);
    e.start_looking(at(0), info(1, 4));
    e.handle_message(at(1), NodeId(2), looking(Some(vote(1, 1, 4)), 1, false));
    assert_eq!(
        e.lock(),
        Some((1, vote(1, 1, 4))),
        "every reachable voter holds the proposal"
    );
    // A voter that holds a worse vote is still waited for: the better one
    // must reach it first.
    let mut e = legacy(1, &[1, 2, 3, 4, 5]);
    e.set_reachable(at(0), NodeId(5), false);
    e.start_looking(at(0), info(1, 4));
    e.handle_message(at(1), NodeId(2), looking(Some(vote(1, 1, 4)), 1, false));
    e.handle_message(at(1), NodeId(3), looking(Some(vote(1, 1, 4)), 1, false));
    e.handle_message(at(1), NodeId(4), looking(Some(vote(4, 1, 1)), 1, false));
    assert_eq!(e.lock(), None, "voter 4 does not hold it yet");
    assert_eq!(e.poll_timeout(), Some(at(1) + SETTLE));
    e.handle_message(at(2), NodeId(4), looking(Some(vote(1, 1, 4)), 1, false));
    assert_eq!(e.lock(), Some((1, vote(1, 1, 4))));
}

#[test]
fn a_word_of_unreachability_while_waiting_ends_the_wait() {
    let mut e = legacy(1, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 4));
    e.handle_message(at(1), NodeId(2), looking(Some(vote(1, 1, 4)), 1, false));
    assert_eq!(e.poll_timeout(), Some(at(1) + SETTLE));
    e.set_reachable(at(10), NodeId(3), false);
    assert_eq!(
        e.lock(),
        Some((1, vote(1, 1, 4))),
        "locked on the host's word"
    );
}

#[test]
fn a_voter_reachable_again_is_waited_for_again() {
    let mut e = legacy(1, &[1, 2, 3]);
    e.set_reachable(at(0), NodeId(3), false);
    e.set_reachable(at(0), NodeId(3), true);
    // Words about non-members and about itself are ignored.
    e.set_reachable(at(0), NodeId(9), false);
    e.set_reachable(at(0), NodeId(1), false);
    e.start_looking(at(0), info(1, 4));
    e.handle_message(at(1), NodeId(2), looking(Some(vote(1, 1, 4)), 1, false));
    assert_eq!(e.lock(), None);
    assert_eq!(e.poll_timeout(), Some(at(1) + SETTLE));
}

#[test]
fn looking_node_votes_for_itself_and_broadcasts() {
    let mut e = elector(2, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 4));
    let out = drain(&mut e);
    assert_eq!(out.len(), 2);
    for (to, n) in &out {
        assert_ne!(*to, NodeId(2));
        assert_eq!(*n, looking(Some(vote(2, 1, 4)), 1, false));
    }
}

#[test]
fn better_vote_is_adopted_and_rebroadcast_worse_is_answered() {
    let mut e = legacy(1, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 4));
    drain(&mut e);
    e.handle_message(at(1), NodeId(2), looking(Some(vote(2, 1, 2)), 1, false));
    assert_eq!(
        e.proposal(),
        Some(vote(1, 1, 4)),
        "a worse vote is not adopted"
    );
    assert_eq!(
        drain(&mut e),
        vec![(NodeId(2), looking(Some(vote(1, 1, 4)), 1, false))],
        "only the sender of the worse vote is told ours"
    );
    // A locked sender is not answered (it cannot adopt).
    e.handle_message(at(1), NodeId(2), looking(Some(vote(2, 1, 2)), 1, true));
    assert!(drain(&mut e).is_empty());
    e.handle_message(at(2), NodeId(3), looking(Some(vote(3, 1, 9)), 1, false));
    assert_eq!(e.proposal(), Some(vote(3, 1, 9)));
    let out = drain(&mut e);
    assert_eq!(out.len(), 2, "re-broadcast to both peers");
    assert!(out.iter().all(|(_, n)| n.vote == Some(vote(3, 1, 9))));
}

#[test]
fn a_better_vote_during_the_settle_wait_cancels_the_lock() {
    let mut e = legacy(1, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 4));
    e.handle_message(at(1), NodeId(2), looking(Some(vote(1, 1, 4)), 1, false));
    assert_eq!(
        e.poll_timeout(),
        Some(at(1) + SETTLE),
        "quorum holds: settle"
    );
    e.handle_message(at(20), NodeId(3), looking(Some(vote(3, 2, 1)), 1, false));
    e.handle_timeout(at(51));
    assert_eq!(e.lock(), None, "the better vote cancelled the settle");
    assert_eq!(e.proposal(), Some(vote(3, 2, 1)));
    assert_eq!(e.poll_decision(), None);
}

#[test]
fn a_locked_node_keeps_its_vote_and_decides_on_a_quorum_of_locks() {
    let mut e = legacy(1, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 4));
    e.handle_message(at(1), NodeId(2), looking(Some(vote(1, 1, 4)), 1, false));
    e.handle_timeout(at(51));
    assert_eq!(e.lock(), Some((1, vote(1, 1, 4))));
    let out = drain(&mut e);
    assert!(out.iter().any(|(_, n)| n.locked), "the lock is announced");
    // A better vote no longer moves us; we answer with our lock.
    e.handle_message(at(52), NodeId(3), looking(Some(vote(3, 2, 1)), 1, false));
    assert_eq!(e.proposal(), Some(vote(1, 1, 4)));
    let out = drain(&mut e);
    assert_eq!(
        out,
        vec![(NodeId(3), looking(Some(vote(1, 1, 4)), 1, true))]
    );
    assert_eq!(e.poll_decision(), None);
    e.handle_message(at(53), NodeId(2), looking(Some(vote(1, 1, 4)), 1, true));
    let d = e.poll_decision().expect("a quorum locked our vote");
    assert_eq!((d.leader, d.round), (NodeId(1), 1));
    assert_eq!(e.state(), PeerState::Leading);
}

#[test]
fn newer_rounds_are_joined_and_older_ones_answered() {
    let mut e = legacy(1, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 4));
    drain(&mut e);
    e.handle_message(at(1), NodeId(2), looking(Some(vote(2, 1, 2)), 7, false));
    assert_eq!(e.round(), 7);
    assert_eq!(e.proposal(), Some(vote(1, 1, 4)), "best of ours and theirs");
    assert_eq!(drain(&mut e).len(), 2);
    e.handle_message(at(2), NodeId(3), looking(Some(vote(3, 9, 9)), 5, true));
    assert_eq!(e.round(), 7);
    assert_eq!(
        e.proposal(),
        Some(vote(1, 1, 4)),
        "an older round's vote is ignored"
    );
    assert_eq!(
        drain(&mut e),
        vec![(NodeId(3), looking(Some(vote(1, 1, 4)), 7, false))],
        "the laggard is told our round"
    );
}

fn report(state: PeerState, leader: u64, round: u64, locked: bool) -> Notification {
    Notification {
        vote: Some(vote(leader, 3, 8)),
        round,
        state,
        locked,
        abstain: false,
    }
}

#[test]
fn a_settled_node_answers_a_looking_peer_with_its_leader() {
    let mut e = elector(2, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 1));
    e.settle(at(1), PeerState::Following, NodeId(1), Epoch(3));
    drain(&mut e);
    e.handle_message(at(2), NodeId(3), looking(Some(vote(3, 1, 1)), 9, false));
    let out = drain(&mut e);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, NodeId(3));
    assert_eq!(out[0].1.state, PeerState::Following);
    assert_eq!(out[0].1.vote.map(|v| v.leader), Some(NodeId(1)));
    // Settling on a leader we did not elect is not a lock.
    assert!(!out[0].1.locked);
    // Settled peers' reports draw no answer.
    e.handle_message(at(3), NodeId(3), report(PeerState::Following, 1, 1, true));
    assert!(drain(&mut e).is_empty());
}

#[test]
fn a_restarted_node_joins_the_running_leader_in_its_round() {
    let mut e = elector(3, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 1));
    e.handle_message(at(1), NodeId(2), report(PeerState::Following, 1, 4, true));
    assert_eq!(e.poll_decision(), None, "the leader itself has not spoken");
    e.handle_message(at(2), NodeId(1), report(PeerState::Leading, 1, 4, true));
    let d = e
        .poll_decision()
        .expect("a quorum follows a leader that leads");
    assert_eq!((d.leader, d.round), (NodeId(1), 4));
    assert_eq!(e.state(), PeerState::Following);
    assert_eq!(e.round(), 4, "our clock catches up, never goes back");
}

/// A leader that no round elected (one taken from a hand-over's
/// TAKEOVER) is joined on a quorum of reports too, but announced unlocked:
/// no round decided it, so our word must not count as a lock.
#[test]
fn a_leader_that_was_not_elected_is_joined_without_a_lock() {
    let mut e = elector(3, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 1));
    e.handle_message(at(1), NodeId(2), report(PeerState::Following, 1, 4, false));
    e.handle_message(at(2), NodeId(1), report(PeerState::Leading, 1, 4, false));
    assert_eq!(e.poll_decision().map(|d| d.leader), Some(NodeId(1)));
    let said = drain(&mut e);
    assert!(!said.is_empty());
    assert!(said
        .iter()
        .all(|(_, n)| n.state == PeerState::Following && !n.locked));
}

#[test]
fn observers_ask_the_voters_and_never_vote_or_lead() {
    let cfg = |id| ElectionConfig {
        id: NodeId(id),
        voters: ids(&[1, 2, 3]),
        observers: ids(&[4]),
        ..ElectionConfig::default()
    };
    let mut o = FastElection::new(cfg(4)).expect("valid");
    o.start_looking(at(0), info(9, 9));
    let out = drain(&mut o);
    assert_eq!(out.iter().map(|p| p.0).collect::<Vec<_>>(), ids(&[1, 2, 3]));
    assert!(
        out.iter().all(|(_, n)| n.vote.is_none()),
        "observers vote for nobody"
    );
    // A voter answers the observer but does not count it.
    let mut v = FastElection::new(cfg(1)).expect("valid");
    v.start_looking(at(0), info(1, 1));
    drain(&mut v);
    v.handle_message(at(1), NodeId(4), out[0].1);
    assert_eq!(drain(&mut v).len(), 1);
    // A vote for the observer is received (node 2's view may make node 4 a
    // voter), but ours is better: we now hear from a quorum, and node 4's
    // candidate never said it did.
    v.handle_message(at(2), NodeId(2), looking(Some(vote(4, 9, 9)), 1, true));
    assert_eq!(v.proposal().map(|p| p.leader), Some(NodeId(1)));
    assert_eq!(v.lock(), None);
    // The observer settles on what a quorum of voters follows.
    o.handle_message(at(3), NodeId(2), report(PeerState::Following, 1, 2, true));
    o.handle_message(at(4), NodeId(1), report(PeerState::Leading, 1, 2, true));
    assert_eq!(o.poll_decision().map(|d| d.leader), Some(NodeId(1)));
    assert_eq!(o.state(), PeerState::Observing);
    drain(&mut o);
    // A settled observer answers a looking voter: in the voter's view of
    // the membership it may be a voter (during a change), whose report
    // counts.
    o.handle_message(at(5), NodeId(3), looking(Some(vote(3, 1, 1)), 3, false));
    let answer = drain(&mut o);
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].1.state, PeerState::Observing);
    assert_eq!(answer[0].1.vote.map(|v| v.leader), Some(NodeId(1)));
}

#[test]
fn weighted_quorum_counts_weights_and_zero_weight_never_leads() {
    let weights = || {
        Weighted::new([
            (NodeId(1), 3),
            (NodeId(2), 1),
            (NodeId(3), 1),
            (NodeId(4), 0),
        ])
    };
    let cfg = |id| ElectionConfig {
        id: NodeId(id),
        voters: ids(&[1, 2, 3, 4]),
        ..ElectionConfig::default()
    };
    // Node 1 alone outweighs the rest.
    let mut heavy = FastElection::with_quorum(cfg(1), weights().expect("valid")).expect("valid");
    heavy.start_looking(at(0), info(1, 1));
    heavy.handle_timeout(at(50));
    assert_eq!(heavy.poll_decision().map(|d| d.leader), Some(NodeId(1)));
    // Zero weight: proposes nobody, and nobody may propose it.
    let mut zero = FastElection::with_quorum(cfg(4), weights().expect("valid")).expect("valid");
    zero.start_looking(at(0), info(9, 9));
    assert_eq!(zero.proposal(), None);
    zero.handle_message(at(1), NodeId(2), looking(Some(vote(4, 9, 9)), 1, false));
    assert_eq!(
        zero.proposal(),
        None,
        "a vote for a zero-weight node is dropped"
    );
    zero.handle_message(at(1), NodeId(2), looking(Some(vote(2, 1, 1)), 1, false));
    assert_eq!(zero.proposal(), Some(vote(2, 1, 1)));
    // 2 and 3 together are not a quorum.
    let mut light = FastElection::with_quorum(cfg(2), weights().expect("valid")).expect("valid");
    light.start_looking(at(0), info(5, 5));
    light.handle_message(at(1), NodeId(3), looking(Some(vote(2, 5, 5)), 1, true));
    light.handle_timeout(at(60));
    assert_eq!(light.lock(), None);
    assert_eq!(light.poll_decision(), None);
}

#[test]
fn a_stalled_lock_moves_to_the_next_round_with_backoff() {
    let mut e = FastElection::new(ElectionConfig {
        id: NodeId(1),
        voters: ids(&[1, 2, 3, 4]),
        stuck_retries: 2,
        connectivity_rule: false,
        ..ElectionConfig::default()
    })
    .expect("valid");
    e.start_looking(at(0), info(1, 5));
    e.handle_message(at(1), NodeId(2), looking(Some(vote(1, 1, 5)), 1, false));
    e.handle_message(at(1), NodeId(3), looking(Some(vote(1, 1, 5)), 1, false));
    e.handle_timeout(at(51));
    assert_eq!(e.lock(), Some((1, vote(1, 1, 5))));
    // No other lock ever arrives (say 2 and 3 locked another vote).
    let mut deadlines = Vec::new();
    for _ in 0..2 {
        let t = e.poll_timeout().expect("looking keeps a retry timer");
        deadlines.push(t);
        e.handle_timeout(t);
    }
    assert_eq!(e.round(), 2, "two retries after locking: next round");
    assert_eq!(e.lock(), None);
    assert!(
        deadlines[1] - deadlines[0] >= Duration::from_millis(400),
        "backoff doubles"
    );
}

#[test]
fn bad_configs_are_refused() {
    let base = ElectionConfig {
        id: NodeId(1),
        voters: ids(&[1, 2, 3]),
        ..ElectionConfig::default()
    };
    let bad = |c: ElectionConfig| FastElection::new(c).err();
    assert_eq!(
        bad(ElectionConfig {
            voters: vec![],
            ..base.clone()
        }),
        Some(ConfigError::NoVoters)
    );
    assert_eq!(
        bad(ElectionConfig {
            id: NodeId(9),
            ..base.clone()
        }),
        Some(ConfigError::NotAMember { id: NodeId(9) })
    );
    assert_eq!(
        bad(ElectionConfig {
            observers: ids(&[2]),
            ..base.clone()
        }),
        Some(ConfigError::DuplicateNode { id: NodeId(2) })
    );
    assert!(matches!(
        bad(ElectionConfig {
            base_timeout: Duration::ZERO,
            ..base.clone()
        }),
        Some(ConfigError::BadTimeouts { .. })
    ));
    assert!(matches!(
        bad(ElectionConfig {
            initial_round: u64::MAX,
            ..base.clone()
        }),
        Some(ConfigError::RoundOutOfRange { .. })
    ));
    assert!(matches!(
        bad(ElectionConfig {
            connectivity_window: Duration::from_millis(100),
            ..base.clone()
        }),
        Some(ConfigError::ConnectivityWindowTooShort { .. })
    ));
    // Off, the window is not used.
    assert!(FastElection::new(ElectionConfig {
        connectivity_window: Duration::ZERO,
        connectivity_rule: false,
        ..base.clone()
    })
    .is_ok());
    let w = Weighted::new([(NodeId(1), 1)]).expect("valid");
    assert_eq!(
        FastElection::with_quorum(base, w).err(),
        Some(ConfigError::QuorumMismatch)
    );
}

#[test]
fn reordered_old_messages_do_not_restart_the_settle_wait() {
    let mut e = legacy(2, &[1, 2, 3]);
    e.start_looking(at(0), info(1, 1));
    // Node 3 has the better vote; we adopt it and {2, 3} hold it.
    e.handle_message(at(1), NodeId(3), looking(Some(vote(3, 1, 9)), 1, false));
    assert_eq!(e.poll_timeout(), Some(at(1) + SETTLE));
    // Late copies of node 3's older messages: a worse vote of this round
    // and its report from before it started looking.
    e.handle_message(at(2), NodeId(3), looking(Some(vote(1, 1, 1)), 1, false));
    e.handle_message(at(3), NodeId(3), report(PeerState::Following, 1, 0, true));
    assert_eq!(
        e.poll_timeout(),
        Some(at(1) + SETTLE),
        "the settle wait runs on"
    );
    e.handle_timeout(at(51));
    assert_eq!(e.lock(), Some((1, vote(3, 1, 9))));
}
