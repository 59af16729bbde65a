//! Seeded simulations on 3, 5 and 7 nodes. A failure names its seed; replay
//! it with `ELECTION_SEED=<seed> cargo test -p paxos-election -- <test>`.

use std::time::Duration;

use paxos_core::{NodeId, PeerState, Time};

use crate::sim::{Faults, Sim, SimConfig};

/// Seeds to run: `ELECTION_SEED` alone if set, else `0..count`
/// (`ELECTION_SEEDS` overrides the count, for long runs).
fn seeds(count: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("ELECTION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n = std::env::var("ELECTION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(count);
    (0..n).collect()
}

/// Chaos, then a stable (majority-)connected phase: safety throughout,
/// and a leader among the connected within the bound.
fn chaos_then_stable(cfg: SimConfig) -> Result<(Duration, Sim), String> {
    let seed = cfg.seed;
    let mut sim = Sim::new(cfg);
    sim.start_all();
    let chaos_end = Time::ZERO + sim.cfg.chaos_time;
    sim.run_until(chaos_end, true, |_| false);
    let set = sim.stabilise();
    let start = sim.now;
    let bound = start + sim.cfg.stable_bound;
    let elected = sim.run_until(bound, false, |s| s.elected_among(&set).is_some());
    sim.check_final();
    if !sim.violations.is_empty() {
        return Err(format!("seed {seed}: {:?}", sim.violations));
    }
    if !elected {
        return Err(format!(
            "seed {seed}: no leader among {set:?} within {:?} of stability",
            sim.cfg.stable_bound
        ));
    }
    if sim.decided.is_empty() {
        return Err(format!("seed {seed}: nothing was ever decided"));
    }
    Ok((sim.now - start, sim))
}

fn run_many(name: &str, count: u64, make: impl Fn(u64) -> SimConfig) {
    let mut failures = Vec::new();
    let mut worst = Duration::ZERO;
    let mut rounds = 0;
    let (mut msgs, mut dropped, mut crashes, mut partitions) = (0, 0, 0, 0);
    for seed in seeds(count) {
        match chaos_then_stable(make(seed)) {
            Ok((t, sim)) => {
                worst = worst.max(t);
                rounds += sim.decided.len();
                msgs += sim.delivered;
                dropped += sim.dropped;
                crashes += sim.crashes;
                partitions += sim.partitions;
            }
            Err(e) => failures.push(e),
        }
    }
    println!(
        "{name}: worst time to a stable leader {worst:?}; {rounds} decided rounds, \
         {msgs} messages delivered, {dropped} dropped, {crashes} crashes, {partitions} partitions"
    );
    assert!(
        failures.is_empty(),
        "{name} failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn three_nodes_under_chaos() {
    run_many("3 nodes", 400, |seed| SimConfig::new(3, seed));
}

#[test]
fn five_nodes_under_chaos() {
    run_many("5 nodes", 300, |seed| SimConfig::new(5, seed));
}

#[test]
fn seven_nodes_under_chaos() {
    run_many("7 nodes", 200, |seed| SimConfig::new(7, seed));
}

#[test]
fn only_a_majority_connected_after_chaos() {
    for n in [3, 5, 7] {
        run_many(&format!("{n} nodes, majority only"), 150, |seed| {
            SimConfig {
                majority_only: true,
                ..SimConfig::new(n, seed)
            }
        });
    }
}

#[test]
fn observers_learn_the_leader_and_are_never_elected() {
    run_many("5 voters + 2 observers", 150, |seed| SimConfig {
        observers: 2,
        ..SimConfig::new(5, seed)
    });
}

#[test]
fn zero_settle_wait_stays_safe() {
    // Without a settle wait, nodes lock on whatever quorum they see first:
    // more split locks, still one leader per round.
    run_many("5 nodes, no settle wait", 150, |seed| {
        let mut cfg = SimConfig::new(5, seed);
        cfg.election.settle_wait = Duration::ZERO;
        cfg
    });
}

#[test]
fn bad_input_never_changes_the_outcome() {
    for seed in seeds(60) {
        let clean = chaos_then_stable(SimConfig::new(5, seed));
        let dirty = chaos_then_stable(SimConfig {
            inject_bad_input: true,
            ..SimConfig::new(5, seed)
        });
        let (clean, dirty) = match (clean, dirty) {
            (Ok(c), Ok(d)) => (c.1, d.1),
            (c, d) => panic!("seed {seed}: {:?} / {:?}", c.err(), d.err()),
        };
        assert!(dirty.bad_inputs > 0, "seed {seed}: nothing was injected");
        assert_eq!(
            clean.decisions, dirty.decisions,
            "seed {seed}: bad input changed the decisions"
        );
        assert_eq!(clean.delivered, dirty.delivered, "seed {seed}");
    }
}

/// A follower restarts while a leader runs: it joins that leader, in the
/// leader's round, and nobody else starts a round or changes state.
fn restarted_node_joins(n: usize, seed: u64, persisted: bool) -> Result<(), String> {
    let mut cfg = SimConfig::new(n, seed);
    cfg.chaos = Faults::stable();
    let mut sim = Sim::new(cfg);
    sim.start_all();
    let all: Vec<NodeId> = sim.nodes.iter().map(|n| n.id).collect();
    let bound = sim.now + Duration::from_secs(30);
    if !sim.run_until(bound, false, |s| s.elected_among(&all).is_some()) {
        return Err(format!("seed {seed}: no initial leader"));
    }
    let leader = sim.elected_among(&all).ok_or("leader vanished")?;
    let leader_round = sim
        .decisions
        .iter()
        .rev()
        .find(|(_, id, _)| *id == leader)
        .map(|(_, _, d)| d.round)
        .ok_or("the leader never decided")?;
    let followers: Vec<usize> = (0..n).filter(|&i| sim.nodes[i].id != leader).collect();
    let f = followers[sim.rng.below(followers.len() as u64) as usize];
    let fid = sim.nodes[f].id;
    let before: Vec<(u64, PeerState)> = sim
        .nodes
        .iter()
        .map(|n| (n.elector.round(), n.elector.state()))
        .collect();
    let decisions_before = sim.decisions.len();
    sim.nodes[f].up = false;
    let down_until = sim.now + Duration::from_millis(100 + sim.rng.below(400));
    sim.run_until(down_until, false, |_| false);
    sim.restart(f, persisted);
    let bound = sim.now + Duration::from_secs(10);
    let mut disturbed = None;
    let joined = sim.run_until(bound, false, |s| {
        for (i, node) in s.nodes.iter().enumerate() {
            if i != f && (node.elector.round(), node.elector.state()) != before[i] {
                disturbed.get_or_insert(format!("{:?} moved from {:?}", node.id, before[i]));
            }
        }
        s.nodes[f].elector.leader() == Some(leader)
    });
    if let Some(d) = disturbed {
        return Err(format!(
            "seed {seed}: the restart disturbed the cluster: {d}"
        ));
    }
    if !joined {
        return Err(format!("seed {seed}: {fid:?} did not join {leader:?}"));
    }
    let new: Vec<_> = sim.decisions[decisions_before..].to_vec();
    if new.len() != 1
        || new[0].1 != fid
        || new[0].2.leader != leader
        || new[0].2.round != leader_round
    {
        return Err(format!(
            "seed {seed}: expected one decision by {fid:?} for {leader:?} in round {leader_round}, got {new:?}"
        ));
    }
    sim.check_final();
    if !sim.violations.is_empty() {
        return Err(format!("seed {seed}: {:?}", sim.violations));
    }
    Ok(())
}

#[test]
fn restarted_node_joins_the_running_leader_without_a_new_round() {
    let mut failures = Vec::new();
    for n in [3, 5, 7] {
        for seed in seeds(40) {
            for persisted in [true, false] {
                if let Err(e) = restarted_node_joins(n, seed, persisted) {
                    failures.push(format!("{n} nodes, persisted round {persisted}: {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A group's tie-break salt decides among equally recent candidates: with
/// equal histories and no faults, salt 0 elects the highest id every time,
/// and each other salt elects the id its salted order ranks first, so that
/// over many groups (one salt each) every node leads its share.
#[test]
fn the_tiebreak_salt_spreads_leaders_among_equal_candidates() {
    let mut wins = std::collections::BTreeMap::<NodeId, u32>::new();
    for salt in 0..=60u64 {
        let mut cfg = SimConfig::new(3, salt);
        cfg.chaos = Faults::stable();
        cfg.election.tiebreak = salt;
        let mut sim = Sim::new(cfg);
        let info = sim.nodes[0].info;
        for n in &mut sim.nodes {
            n.info = info;
            n.looking_info = info;
        }
        sim.start_all();
        let set: Vec<NodeId> = sim.nodes.iter().map(|n| n.id).collect();
        let bound = sim.now + Duration::from_secs(10);
        assert!(
            sim.run_until(bound, false, |s| s.elected_among(&set).is_some()),
            "salt {salt}: no leader"
        );
        let leader = sim.elected_among(&set).expect("elected");
        sim.check_final();
        assert!(
            sim.violations.is_empty(),
            "salt {salt}: {:?}",
            sim.violations
        );
        let expected = set
            .iter()
            .copied()
            .max_by_key(|&id| paxos_election::Vote::new(id, info).ranked(salt))
            .expect("three candidates");
        assert_eq!(leader, expected, "salt {salt}");
        if salt == 0 {
            assert_eq!(leader, NodeId(3), "salt 0 keeps the node-id order");
        } else {
            *wins.entry(leader).or_default() += 1;
        }
    }
    // 60 salts over three equal nodes: each leads a share (20 on average).
    assert_eq!(wins.len(), 3, "{wins:?}");
    assert!(wins.values().all(|&w| w >= 10), "{wins:?}");
}

#[test]
fn a_salted_tiebreak_stays_safe_and_live_under_chaos() {
    run_many("3 nodes, salted tie-break", 200, |seed| {
        let mut cfg = SimConfig::new(3, seed);
        cfg.election.tiebreak = seed + 1;
        cfg
    });
    run_many("5 nodes, salted tie-break", 100, |seed| {
        let mut cfg = SimConfig::new(5, seed);
        cfg.election.tiebreak = seed + 1;
        cfg
    });
}
