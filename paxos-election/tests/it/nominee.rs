//! Leader hand-over: the nominee (`start_looking_nominated`) wins over
//! voters of equal recency, never over a more recent history.

use std::time::Duration;

use paxos_core::{Elector, Epoch, NodeId, PeerState, Time, VoteInfo, Zxid};
use paxos_election::{ElectionConfig, FastElection, Notification, Vote};

use crate::sim::{Faults, Sim, SimConfig};

/// Delays up to 20 ms (well under the 50 ms settle wait), duplicates and
/// reordering, no loss and no node faults: every vote reaches everyone
/// before anyone can lock.
fn jittery() -> Faults {
    Faults {
        drop_per_mille: 0,
        dup_per_mille: 50,
        delay_min: Duration::from_micros(100),
        delay_max: Duration::from_millis(20),
        slow_per_mille: 0,
        slow_max: Duration::ZERO,
        crash_per_mille: 0,
        restart_per_mille: 0,
        partition_per_mille: 0,
        heal_per_mille: 0,
    }
}

fn history(epoch: u32, counter: u32) -> VoteInfo {
    VoteInfo {
        current_epoch: Epoch(epoch),
        last_zxid: Zxid::new(Epoch(epoch), counter),
    }
}

/// Elects a first leader, then every node looks again at the same instant
/// (in a seeded order), as after a TAKEOVER: node `nominee` (an index)
/// nominated, with the histories `infos`. Returns the leader all nodes
/// settle on.
fn hand_over(
    n: usize,
    seed: u64,
    rule: bool,
    net: &Faults,
    nominee: usize,
    infos: &[VoteInfo],
) -> Result<NodeId, String> {
    hand_over_with(n, seed, rule, net, nominee, infos, &[], &[])
}

/// [`hand_over`], with the nodes of index `older` modelling an older build
/// (they drop version 3 frames) and those of index `down` crashed for the
/// hand-over; the leader is the one every other node settles on.
#[allow(clippy::too_many_arguments)]
fn hand_over_with(
    n: usize,
    seed: u64,
    rule: bool,
    net: &Faults,
    nominee: usize,
    infos: &[VoteInfo],
    older: &[usize],
    down: &[usize],
) -> Result<NodeId, String> {
    let mut cfg = SimConfig::new(n, seed);
    cfg.chaos = net.clone();
    cfg.election.connectivity_rule = rule;
    let mut sim = Sim::new(cfg);
    sim.older_builds = older.iter().map(|&i| sim.nodes[i].id).collect();
    sim.start_all();
    let all: Vec<NodeId> = sim.nodes.iter().map(|n| n.id).collect();
    let bound = sim.now + Duration::from_secs(30);
    if !sim.run_until(bound, true, |s| s.elected_among(&all).is_some()) {
        return Err(format!("seed {seed}: no first leader"));
    }
    // Let the first election's messages land: a leader's answer still in
    // flight would make a looking peer follow it again.
    let quiet = sim.now + Duration::from_millis(200);
    sim.run_until(quiet, true, |_| false);
    let first = sim.decisions.len();
    for (node, info) in sim.nodes.iter_mut().zip(infos) {
        node.info = *info;
    }
    for &i in down {
        sim.nodes[i].up = false;
    }
    let all: Vec<NodeId> = sim.nodes.iter().filter(|n| n.up).map(|n| n.id).collect();
    let mut order: Vec<usize> = (0..n).filter(|i| !down.contains(i)).collect();
    for k in (1..order.len()).rev() {
        let j = sim.rng.below(k as u64 + 1) as usize;
        order.swap(k, j);
    }
    for i in order {
        if i == nominee {
            sim.start_looking_nominated(i);
        } else {
            sim.start_looking(i);
        }
    }
    let bound = sim.now + Duration::from_secs(30);
    let elected = sim.run_until(bound, true, |s| {
        s.decisions.len() > first && s.elected_among(&all).is_some()
    });
    sim.check_final();
    if !sim.violations.is_empty() {
        return Err(format!("seed {seed}: {:?}", sim.violations));
    }
    if !elected {
        return Err(format!("seed {seed}: no leader after the hand-over"));
    }
    sim.elected_among(&all)
        .ok_or_else(|| format!("seed {seed}: no common leader"))
}

const SEEDS: u64 = 100;

fn nominee_wins_ties(n: usize) {
    // Equal histories: without the nomination the highest id would win;
    // the lowest id is nominated.
    let infos = vec![history(4, 9); n];
    let mut failures = Vec::new();
    for rule in [true, false] {
        for (name, net) in [("stable", Faults::stable()), ("jittery", jittery())] {
            for seed in 0..SEEDS {
                match hand_over(n, seed, rule, &net, 0, &infos) {
                    Ok(NodeId(1)) => {}
                    Ok(l) => failures.push(format!(
                        "{name}, rule {rule}, seed {seed}: {l:?} won instead of the nominee"
                    )),
                    Err(e) => failures.push(format!("{name}, rule {rule}: {e}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_nominee_wins_among_three_equally_recent_voters() {
    nominee_wins_ties(3);
}

#[test]
fn the_nominee_wins_among_five_equally_recent_voters() {
    nominee_wins_ties(5);
}

fn older_nominee_loses(n: usize) {
    // The nominee (node 1) is one entry behind; node 2 alone holds the most
    // recent history, the others are as old as the nominee.
    let mut infos = vec![history(4, 8); n];
    infos[1] = history(4, 9);
    let mut failures = Vec::new();
    for rule in [true, false] {
        for (name, net) in [("stable", Faults::stable()), ("jittery", jittery())] {
            for seed in 0..SEEDS / 2 {
                match hand_over(n, seed, rule, &net, 0, &infos) {
                    Ok(NodeId(2)) => {}
                    Ok(l) => failures.push(format!(
                        "{name}, rule {rule}, seed {seed}: {l:?} won over the most recent voter"
                    )),
                    Err(e) => failures.push(format!("{name}, rule {rule}: {e}")),
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_nominee_with_an_older_history_loses_to_the_most_recent_voter() {
    older_nominee_loses(3);
    older_nominee_loses(5);
}

/// During a rolling upgrade the nominee's claim must not stall the
/// election: with voters 1 and 2 of the new build (1 nominated), 3 and 4
/// of an older one that drops version 3 frames, and 5 down, neither side
/// alone is a quorum. The nominee gives its claim up after a retry and the
/// five-node group still elects one leader, as recent as everyone.
#[test]
fn older_builds_that_cannot_read_the_nomination_still_elect_a_leader() {
    let infos = vec![history(4, 9); 5];
    let mut failures = Vec::new();
    for rule in [true, false] {
        for seed in 0..SEEDS / 2 {
            match hand_over_with(5, seed, rule, &jittery(), 0, &infos, &[2, 3], &[4]) {
                Ok(_) => {}
                Err(e) => failures.push(format!("rule {rule}: {e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// Deterministic behaviour of one elector, driven by hand.

fn ids(v: &[u64]) -> Vec<NodeId> {
    v.iter().copied().map(NodeId).collect()
}

fn vote(leader: u64, epoch: u32, counter: u32) -> Vote {
    Vote::new(NodeId(leader), history(epoch, counter))
}

fn config(id: u64, voters: &[u64], rule: bool) -> ElectionConfig {
    ElectionConfig {
        id: NodeId(id),
        voters: ids(voters),
        seed: id,
        connectivity_rule: rule,
        ..ElectionConfig::default()
    }
}

fn elector(id: u64, voters: &[u64], rule: bool) -> FastElection {
    FastElection::new(config(id, voters, rule)).expect("valid config")
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
fn the_nomination_ranks_after_connectivity_and_recency_before_the_id() {
    let nominee = vote(1, 4, 9).with_nominated(true);
    assert!(nominee > vote(3, 4, 9), "wins a tie of recency");
    assert!(nominee < vote(3, 4, 10), "loses to a more recent history");
    assert!(nominee < vote(3, 5, 1), "loses to a newer epoch");
    assert!(
        nominee < vote(3, 4, 1).with_connected(true),
        "an unconnected nominee loses to any connected vote"
    );
    assert!(nominee.with_connected(true) > vote(3, 4, 9).with_connected(true));
    assert!(
        vote(2, 4, 9).with_nominated(true) > nominee,
        "the id breaks ties of nominees"
    );
}

#[test]
fn the_nominee_stands_nominated_and_keeps_its_vote_against_a_tie() {
    for rule in [true, false] {
        let mut e = elector(1, &[1, 2, 3], rule);
        e.start_looking_nominated(at(0), history(4, 9));
        assert!(e.is_nominated());
        let own = vote(1, 4, 9).with_nominated(true);
        assert_eq!(e.proposal(), Some(own));
        let out = drain(&mut e);
        assert_eq!(out.len(), 2);
        for (_, n) in &out {
            assert_eq!(n.vote, Some(own));
            assert_eq!(n.to_bytes()[0], 3, "a nominated vote is version 3");
        }
        // An equally recent peer with a higher id, equally (un)connected:
        // the nominee keeps its own vote.
        e.handle_message(
            at(1),
            NodeId(3),
            msg(PeerState::Looking, Some(vote(3, 4, 9)), 1, false),
        );
        let p = e.proposal().expect("a proposal");
        assert_eq!((p.leader, p.nominated), (NodeId(1), true), "rule {rule}");
        // A more recent peer (as connected as we now are) wins.
        e.handle_message(
            at(2),
            NodeId(2),
            msg(
                PeerState::Looking,
                Some(vote(2, 4, 10).with_connected(rule)),
                1,
                false,
            ),
        );
        assert_eq!(
            e.proposal().map(|p| p.leader),
            Some(NodeId(2)),
            "rule {rule}"
        );
        assert!(
            !e.proposal().is_some_and(|p| p.nominated),
            "the adopted vote is not nominated"
        );
    }
}

#[test]
fn an_adopted_nominated_vote_keeps_the_peers_flag() {
    for rule in [true, false] {
        let mut e = elector(3, &[1, 2, 3], rule);
        e.start_looking(at(0), history(4, 9));
        assert!(!e.is_nominated());
        assert_eq!(e.proposal().map(|p| p.nominated), Some(false));
        drain(&mut e);
        let theirs = vote(1, 4, 9).with_nominated(true).with_connected(rule);
        e.handle_message(
            at(1),
            NodeId(1),
            msg(PeerState::Looking, Some(theirs), 1, false),
        );
        assert_eq!(e.proposal(), Some(theirs), "rule {rule}");
        assert!(!e.is_nominated(), "adopting is not claiming");
        let out = drain(&mut e);
        assert!(out
            .iter()
            .any(|(_, n)| n.vote == Some(theirs) && n.to_bytes()[0] == 3));
    }
}

#[test]
fn the_claim_ends_with_the_looking_period() {
    let mut e = elector(1, &[1, 2, 3], true);
    e.start_looking_nominated(at(0), history(4, 9));
    assert!(e.proposal().is_some_and(|p| p.nominated));
    e.start_looking(at(1), history(4, 9));
    assert!(!e.is_nominated());
    assert!(
        e.proposal().is_some_and(|p| !p.nominated),
        "a plain look drops it"
    );
    e.start_looking_nominated(at(2), history(4, 9));
    e.settle(at(3), PeerState::Following, NodeId(2), Epoch(4));
    assert!(!e.is_nominated(), "settling ends it");
    e.start_looking(at(4), history(4, 9));
    assert!(e.proposal().is_some_and(|p| !p.nominated));
}

#[test]
fn observers_and_abstaining_voters_never_claim_a_nomination() {
    let observer = ElectionConfig {
        id: NodeId(4),
        voters: ids(&[1, 2, 3]),
        observers: ids(&[4]),
        ..ElectionConfig::default()
    };
    let abstaining = ElectionConfig {
        voting: false,
        ..config(2, &[1, 2, 3], true)
    };
    for cfg in [observer, abstaining] {
        let mut e = FastElection::new(cfg).expect("valid");
        e.start_looking_nominated(at(0), history(4, 9));
        assert!(!e.is_nominated());
        assert_eq!(e.proposal(), None);
        assert!(drain(&mut e).iter().all(|(_, n)| n.vote.is_none()));
    }
    // A nominee that starts abstaining (it lost its state) gives it up,
    // and does not claim it again when it votes again.
    let mut e = elector(1, &[1, 2, 3], true);
    e.start_looking_nominated(at(0), history(4, 9));
    e.set_voting(at(1), false);
    assert!(!e.is_nominated());
    e.set_voting(at(2), true);
    assert!(!e.is_nominated());
    assert!(e.proposal().is_some_and(|p| !p.nominated));
}

#[test]
fn the_elected_nominee_is_announced_without_the_flag() {
    let mut e = elector(1, &[1, 2, 3], false);
    e.start_looking_nominated(at(0), history(4, 9));
    drain(&mut e);
    let own = vote(1, 4, 9).with_nominated(true);
    e.handle_message(
        at(1),
        NodeId(2),
        msg(PeerState::Looking, Some(own), 1, false),
    );
    e.handle_message(
        at(2),
        NodeId(2),
        msg(PeerState::Looking, Some(own), 1, true),
    );
    // A quorum holds it: locked after the settle wait, then decided with
    // node 2's lock.
    let deadline = e.poll_timeout().expect("the settle wait");
    e.handle_timeout(deadline);
    assert_eq!(e.poll_decision().map(|d| d.leader), Some(NodeId(1)));
    assert!(!e.is_nominated());
    drain(&mut e);
    e.handle_message(
        deadline,
        NodeId(3),
        msg(PeerState::Looking, Some(vote(3, 4, 9)), 2, false),
    );
    let out = drain(&mut e);
    assert_eq!(out.len(), 1);
    let n = out[0].1;
    assert_eq!(n.state, PeerState::Leading);
    assert_eq!(
        n.vote,
        Some(vote(1, 4, 9)),
        "announced without the nomination"
    );
    assert_eq!(n.to_bytes()[0], 1, "readable by every build");
}

#[test]
fn locks_count_by_candidate_whatever_the_nomination() {
    // Node 2 locked the nominee's vote; node 3 locked it too, and the
    // nominee (node 1) reports that it was elected (announcing its vote
    // without the flag). Three locks of five: a decision, although no
    // quorum of settled nodes follows node 1 yet.
    let mut e = elector(2, &[1, 2, 3, 4, 5], false);
    e.start_looking(at(0), history(4, 9));
    let nominated = vote(1, 4, 9).with_nominated(true);
    for (t, from) in [(1, 1), (2, 3), (3, 4)] {
        e.handle_message(
            at(t),
            NodeId(from),
            msg(PeerState::Looking, Some(nominated), 1, false),
        );
    }
    let deadline = e.poll_timeout().expect("the settle wait");
    e.handle_timeout(deadline);
    assert_eq!(e.lock(), Some((1, nominated)));
    e.handle_message(
        deadline,
        NodeId(3),
        msg(PeerState::Looking, Some(nominated), 1, true),
    );
    assert_eq!(e.poll_decision(), None);
    e.handle_message(
        deadline,
        NodeId(1),
        msg(PeerState::Leading, Some(vote(1, 4, 9)), 1, true),
    );
    assert_eq!(
        e.poll_decision().map(|d| (d.leader, d.round)),
        Some((NodeId(1), 1))
    );
}

#[test]
fn an_unlocked_nominee_gives_its_claim_up_at_its_first_retry() {
    let mut e = elector(1, &[1, 2, 3], false);
    e.start_looking_nominated(at(0), history(4, 9));
    assert_eq!(e.round(), 1);
    drain(&mut e);
    // Nobody answers (say they cannot read version 3).
    let retry = e.poll_timeout().expect("a retry deadline");
    e.handle_timeout(retry);
    assert!(!e.is_nominated());
    assert_eq!(e.round(), 2, "stands again in a new round");
    assert_eq!(e.proposal(), Some(vote(1, 4, 9)));
    let out = drain(&mut e);
    assert!(out
        .iter()
        .all(|(_, n)| n.round == 2 && n.to_bytes()[0] == 1));
}
