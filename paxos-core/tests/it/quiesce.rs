//! Quiescence (`Config::quiesce_after`): an idle group stops its timers and
//! its traffic, a write or a read wakes it, and a lost leader is still
//! replaced once the hosts notice the loss. Run in the simulator, with the
//! real node layer and kernel.

use std::time::Duration;

use paxos_core::sim::{Sim, SimConfig};

fn quiet_config(seed: u64) -> SimConfig {
    let mut cfg = SimConfig {
        seed,
        ..SimConfig::default()
    };
    cfg.replica.quiesce_after = Some(Duration::from_millis(300));
    cfg
}

/// Runs until every replica is quiesced (at most `bound` of simulated time).
fn run_until_quiet(sim: &mut Sim<paxos_core::sim::TestElector>, bound: Duration) -> bool {
    let step = Duration::from_millis(50);
    for _ in 0..(bound.as_millis() / step.as_millis()) {
        sim.run_for(step).expect("no violation");
        let ids = sim.node_ids();
        if ids
            .iter()
            .all(|&id| sim.replica(id).is_some_and(|r| r.is_quiesced()))
        {
            return true;
        }
    }
    false
}

/// A group that took writes for a second, then went quiet once its client
/// paused (asserted).
fn quiet_group(seed: u64) -> Sim<paxos_core::sim::TestElector> {
    let mut sim = Sim::with_test_components(quiet_config(seed));
    sim.run_for(Duration::from_secs(1)).expect("no violation");
    assert!(sim.stats().acked > 0, "seed {seed}: writes committed");
    sim.set_client_paused(true);
    assert!(
        run_until_quiet(&mut sim, Duration::from_secs(3)),
        "seed {seed}: the idle group quiesced: {}",
        sim.describe()
    );
    sim
}

#[test]
fn an_idle_group_goes_quiet_and_sends_nothing() {
    for seed in 0..5 {
        let mut sim = quiet_group(seed);
        for id in sim.node_ids() {
            let r = sim.replica(id).expect("up");
            assert_eq!(r.poll_timeout(), None, "seed {seed}: {id} has no timer");
        }
        let delivered = sim.stats().delivered;
        sim.run_for(Duration::from_secs(5)).expect("no violation");
        assert_eq!(
            sim.stats().delivered,
            delivered,
            "seed {seed}: a quiet group exchanges no messages"
        );
    }
}

#[test]
fn a_write_wakes_a_quiet_group_and_commits() {
    for seed in 0..5 {
        let mut sim = quiet_group(seed);
        let leader = sim.leader().expect("a leader");
        let acked = sim.stats().acked;
        assert_eq!(sim.propose_on(leader, 3), 3, "seed {seed}: proposed");
        sim.run_for(Duration::from_millis(300))
            .expect("no violation");
        assert_eq!(
            sim.stats().acked,
            acked + 3,
            "seed {seed}: the writes committed"
        );
        assert_eq!(
            sim.leader(),
            Some(leader),
            "seed {seed}: no election on waking"
        );
        // And it goes quiet again.
        assert!(
            run_until_quiet(&mut sim, Duration::from_secs(3)),
            "seed {seed}"
        );
    }
}

#[test]
fn a_quiet_groups_lost_leader_is_replaced() {
    for seed in 0..5 {
        let mut sim = quiet_group(seed);
        let old = sim.leader().expect("a leader");
        let acked = sim.stats().acked;
        sim.crash(old);
        sim.run_for(Duration::from_secs(2)).expect("no violation");
        let new = sim.leader().expect("a new leader once the hosts noticed");
        assert_ne!(new, old, "seed {seed}");
        sim.set_client_paused(false);
        sim.run_for(Duration::from_secs(1)).expect("no violation");
        assert!(
            sim.stats().acked > acked,
            "seed {seed}: writes commit again"
        );
        assert!(
            sim.stats().wakes > 0,
            "seed {seed}: the hosts woke the group"
        );
    }
}

/// When the hosts notice the leader's node is gone (an election timeout
/// of silence), its quiesced followers look for a leader at once: they do
/// not wake and wait out a second timeout first.
#[test]
fn the_followers_of_a_lost_quiet_leader_look_as_soon_as_the_host_notices() {
    for seed in 0..5 {
        let mut sim = quiet_group(seed);
        let old = sim.leader().expect("a leader");
        let followers: Vec<_> = sim.node_ids().into_iter().filter(|&n| n != old).collect();
        sim.crash(old);
        // The host notices after one election timeout (200 ms in the
        // simulator); a woken follower's own timer would need another.
        sim.run_for(Duration::from_millis(300))
            .expect("no violation");
        for f in followers {
            let leader = sim.replica(f).and_then(|r| r.leader());
            assert_ne!(
                leader,
                Some(old),
                "seed {seed}: {f} still follows the lost {old} after the host noticed"
            );
        }
    }
}

#[test]
fn without_quiescence_an_idle_group_keeps_heartbeating() {
    let mut sim = Sim::with_test_components(SimConfig::default());
    sim.run_for(Duration::from_secs(1)).expect("no violation");
    sim.set_client_paused(true);
    sim.run_for(Duration::from_secs(2)).expect("no violation");
    let delivered = sim.stats().delivered;
    sim.run_for(Duration::from_secs(1)).expect("no violation");
    assert!(sim.stats().delivered > delivered, "heartbeats flow");
    assert!(sim
        .node_ids()
        .iter()
        .all(|&id| !sim.replica(id).expect("up").is_quiesced()));
}

/// A follower loses its disk and comes straight back (`--rejoin`), before
/// anyone notices it was gone: the leader keeps its epoch, which may have
/// been established with the follower's forgotten promise (then it cannot
/// readmit it in that epoch). Whatever the case, the follower must be
/// readmitted: a replica left recovering for good never counts in a quorum
/// again.
fn wiped_follower_is_readmitted(quiesce: bool) {
    let mut stuck = Vec::new();
    for seed in 0..12 {
        let mut sim = if quiesce {
            quiet_group(seed)
        } else {
            let mut sim = Sim::with_test_components(SimConfig {
                seed,
                ..SimConfig::default()
            });
            sim.run_for(Duration::from_secs(1)).expect("no violation");
            sim
        };
        let leader = sim.leader().expect("a leader");
        let f = sim
            .node_ids()
            .into_iter()
            .find(|&n| n != leader)
            .expect("a follower");
        sim.wipe(f, true);
        sim.restart(f);
        sim.set_client_paused(false);
        let readmitted = sim
            .run_until(Duration::from_secs(10), |s| !s.is_recovering(f))
            .expect("no violation");
        if !readmitted {
            stuck.push((seed, sim.leader()));
        }
    }
    assert!(
        stuck.is_empty(),
        "wiped followers left recovering (seed, leader): {stuck:?}"
    );
}

#[test]
fn a_wiped_follower_of_a_quiet_group_is_readmitted() {
    wiped_follower_is_readmitted(true);
}

#[test]
fn a_wiped_follower_is_readmitted_without_quiescence() {
    wiped_follower_is_readmitted(false);
}
