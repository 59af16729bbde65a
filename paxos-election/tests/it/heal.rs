//! A partition heals: how long, in simulated time, until every node follows
//! one leader again. The old leader is isolated for 5 s; meanwhile the rest
//! elects another leader, and the old one stays LOOKING, re-sending its vote
//! with backoff into the void. After the heal nobody sends to it (settled
//! nodes only answer), so its next retry decides when it rejoins.

use std::time::Duration;

use paxos_core::{NodeId, PeerState, Time};
use paxos_election::ElectionConfig;

use crate::sim::{Faults, Sim, SimConfig, TICK};

const ISOLATION: Duration = Duration::from_secs(5);

/// The longest the rejoin may take with `election`: one retry gap of the
/// looking node (`ElectionConfig::max_resend_interval`), a message to the
/// settled nodes and their answers (each at most the stable network's
/// largest delay), and the tick at which the simulator checks.
fn heal_bound(election: &ElectionConfig) -> Duration {
    election.max_resend_interval() + 2 * Faults::stable().delay_max + TICK
}

/// Simulated time from the heal to every node following one leader.
fn isolate_leader_then_heal(
    n: usize,
    seed: u64,
    election: &ElectionConfig,
) -> Result<Duration, String> {
    let mut cfg = SimConfig::new(n, seed);
    cfg.chaos = Faults::stable();
    cfg.election = election.clone();
    let mut sim = Sim::new(cfg);
    sim.start_all();
    let all: Vec<NodeId> = sim.nodes.iter().map(|n| n.id).collect();
    let bound = sim.now + Duration::from_secs(30);
    if !sim.run_until(bound, false, |s| s.elected_among(&all).is_some()) {
        return Err(format!("seed {seed}: no initial leader"));
    }
    let old = sim.elected_among(&all).ok_or("leader vanished")?;
    let i = sim
        .nodes
        .iter()
        .position(|n| n.id == old)
        .ok_or("no such node")?;
    sim.nodes[i].group = 1;
    let heal_at = sim.now + ISOLATION;
    sim.run_until(heal_at, false, |_| false);
    let rest: Vec<NodeId> = all.iter().copied().filter(|&id| id != old).collect();
    if sim.elected_among(&rest).is_none() {
        return Err(format!(
            "seed {seed}: the majority elected nobody while {old:?} was away"
        ));
    }
    if sim.nodes[i].elector.state() != PeerState::Looking {
        return Err(format!(
            "seed {seed}: the isolated {old:?} did not step down"
        ));
    }
    for node in &mut sim.nodes {
        node.group = 0;
    }
    let healed = sim.now;
    let limit: Time = healed + Duration::from_secs(60);
    if !sim.run_until(limit, false, |s| s.elected_among(&all).is_some()) {
        return Err(format!(
            "seed {seed}: no common leader within 60 s of the heal"
        ));
    }
    sim.check_final();
    if !sim.violations.is_empty() {
        return Err(format!("seed {seed}: {:?}", sim.violations));
    }
    Ok(sim.now - healed)
}

#[test]
fn an_isolated_leader_rejoins_within_one_retry_gap_of_the_heal() {
    let election = ElectionConfig::default();
    let bound = heal_bound(&election);
    let mut failures = Vec::new();
    for n in [3, 5] {
        let mut times = Vec::new();
        for seed in 0..40 {
            match isolate_leader_then_heal(n, seed, &election) {
                Ok(t) => {
                    if t > bound {
                        failures.push(format!("{n} nodes, seed {seed}: {t:?} > {bound:?}"));
                    }
                    times.push(t);
                }
                Err(e) => failures.push(format!("{n} nodes: {e}")),
            }
        }
        times.sort();
        if let (Some(median), Some(worst)) = (times.get(times.len() / 2), times.last()) {
            println!(
                "{n} nodes, leader isolated {ISOLATION:?}: heal to a common leader, median {median:?}, \
                 worst {worst:?} ({} seeds, bound {bound:?})",
                times.len()
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The requirement: every node back in service within 2 s of a heal at
    // the defaults. The election may take at most half of that, leaving the
    // rest to the transport's reconnect and the replica's sync.
    assert!(
        bound <= Duration::from_secs(1),
        "at the defaults a looking node may stay silent for {bound:?} after a heal"
    );
}
