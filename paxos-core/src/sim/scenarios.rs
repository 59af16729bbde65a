//! Named fault scenarios, scripted on top of the simulator's random
//! schedule. Each checks the invariants after every step (like any run),
//! checks that it exercised the path it is named after, and ends by
//! stopping faults and measuring recovery (liveness).

use std::time::Duration;

use super::{Sim, SimConfig, SimStats, Violation};
use crate::election::Elector;
use crate::NodeId;

/// Builds a simulation from its parameters (chooses the elector and planner).
pub type MakeSim<'a, E> = &'a dyn Fn(SimConfig) -> Sim<E>;

/// The scenario names, in the order [`run`] knows them.
pub const NAMES: &[&str] = &[
    "leader_crash_mid_broadcast",
    "old_epoch_suffix_forces_trunc",
    "follower_behind_retention_forces_snap",
    "partitioned_old_leader",
    "duplicated_reordered_accepts",
    "full_cluster_restart",
    "epoch_counter_rollover",
];

/// Runs the scenario `name` with `seed` on simulations built by `mk`;
/// `None` if no scenario has that name.
pub fn run<E: Elector>(
    name: &str,
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Option<Result<SimStats, Violation>> {
    Some(match name {
        "leader_crash_mid_broadcast" => leader_crash_mid_broadcast(mk, seed),
        "old_epoch_suffix_forces_trunc" => old_epoch_suffix_forces_trunc(mk, seed),
        "follower_behind_retention_forces_snap" => follower_behind_retention_forces_snap(mk, seed),
        "partitioned_old_leader" => partitioned_old_leader(mk, seed),
        "duplicated_reordered_accepts" => duplicated_reordered_accepts(mk, seed),
        "full_cluster_restart" => full_cluster_restart(mk, seed),
        "epoch_counter_rollover" => epoch_counter_rollover(mk, seed),
        _ => return None,
    })
}

/// Runs the scenario `name` with the test-only elector and planner.
pub fn run_with_test_components(name: &str, seed: u64) -> Option<Result<SimStats, Violation>> {
    run(name, &Sim::with_test_components, seed)
}

fn fail<E: Elector>(sim: &Sim<E>, what: &str) -> Violation {
    sim.violation(format!("scenario: {what}"))
}

fn wait_leader<E: Elector>(sim: &mut Sim<E>, not: Option<NodeId>) -> Result<NodeId, Violation> {
    let ok = sim.run_until(Duration::from_secs(20), |s| {
        s.leader().is_some_and(|l| Some(l) != not)
    })?;
    match sim.leader() {
        Some(l) if ok => Ok(l),
        _ => Err(fail(sim, "no leader elected")),
    }
}

fn wait_acked<E: Elector>(sim: &mut Sim<E>, more_than: u64) -> Result<(), Violation> {
    if sim.run_until(Duration::from_secs(20), |s| s.stats().acked > more_than)? {
        Ok(())
    } else {
        Err(fail(sim, "commands stopped committing"))
    }
}

fn finish<E: Elector>(mut sim: Sim<E>) -> Result<SimStats, Violation> {
    sim.stop_faults();
    let bound = sim.cfg.liveness_bound;
    if !sim.run_until(bound, |s| s.stats().recovery.is_some())? {
        return Err(fail(&sim, "no commit after faults stopped"));
    }
    Ok(sim.stats().clone())
}

/// The leader crashes with ACCEPTs in flight; a new leader takes over and
/// every acknowledged entry survives.
pub fn leader_crash_mid_broadcast<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let l = wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 50)?;
    sim.propose_on(l, 20);
    sim.run_for(Duration::from_micros(500))?;
    sim.crash(l);
    let acked = sim.stats().acked;
    wait_leader(&mut sim, Some(l))?;
    wait_acked(&mut sim, acked + 20)?;
    sim.restart(l);
    sim.run_for(Duration::from_millis(500))?;
    finish(sim)
}

/// The zxid counter limit is set low: a leader that reaches it steps down,
/// a new epoch starts, and commands keep committing through several such
/// moves with every acknowledged entry kept.
pub fn epoch_counter_rollover<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut cfg = SimConfig {
        seed,
        ..SimConfig::default()
    };
    cfg.replica.max_epoch_counter = 40;
    let mut sim = mk(cfg);
    let l = wait_leader(&mut sim, None)?;
    let first_epoch = sim
        .replica(l)
        .map(|r| r.hard_state().current_epoch)
        .ok_or_else(|| fail(&sim, "no leader replica"))?;
    // 200 commands need at least five epochs of 40.
    wait_acked(&mut sim, 200)?;
    let l = wait_leader(&mut sim, None)?;
    let epoch = sim
        .replica(l)
        .map(|r| r.hard_state().current_epoch)
        .ok_or_else(|| fail(&sim, "no leader replica"))?;
    if epoch.0 < first_epoch.0 + 4 || sim.stats().epoch_rollovers < 4 {
        return Err(fail(
            &sim,
            &format!("epochs moved from {first_epoch:?} only to {epoch:?}"),
        ));
    }
    finish(sim)
}

/// An isolated leader appends entries that never commit; the majority
/// moves on; on return the old leader's suffix is truncated (TRUNC).
pub fn old_epoch_suffix_forces_trunc<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut cfg = SimConfig {
        seed,
        ..SimConfig::default()
    };
    cfg.snapshot_every = 0; // keep the whole log so TRUNC, not SNAP, applies
    let mut sim = mk(cfg);
    let l = wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 30)?;
    sim.isolate(l);
    sim.propose_on(l, 10);
    sim.run_for(Duration::from_millis(5))?;
    let acked = sim.stats().acked;
    wait_leader(&mut sim, Some(l))?;
    wait_acked(&mut sim, acked + 30)?;
    sim.heal();
    if !sim.run_until(Duration::from_secs(10), |s| s.stats().truncs > 0)? {
        return Err(fail(&sim, "the old leader's suffix was never truncated"));
    }
    finish(sim)
}

/// A follower is down while the log is cleaned past its position; on
/// return it is brought level with a snapshot (SNAP).
pub fn follower_behind_retention_forces_snap<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut cfg = SimConfig {
        seed,
        ..SimConfig::default()
    };
    cfg.snapshot_every = 10;
    cfg.replica.retention_entries = 5;
    cfg.replica.follower_pin_timeout = Duration::from_millis(300);
    let mut sim = mk(cfg);
    let l = wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    let f = sim
        .node_ids()
        .into_iter()
        .find(|n| *n != l)
        .ok_or_else(|| fail(&sim, "no follower"))?;
    sim.crash(f);
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 300)?;
    let installs = sim.stats().snap_installs;
    sim.restart(f);
    if !sim.run_until(Duration::from_secs(10), |s| {
        s.stats().snap_installs > installs
    })? {
        return Err(fail(
            &sim,
            "the lagging follower never installed a snapshot",
        ));
    }
    finish(sim)
}

/// The leader is cut off: check-quorum makes it step down, the majority
/// elects another, and the old leader rejoins as a follower.
pub fn partitioned_old_leader<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let l = wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    sim.isolate(l);
    let stepped = sim.run_until(Duration::from_secs(5), |s| {
        s.replica(l).is_some_and(|r| !r.is_leader())
    })?;
    if !stepped {
        return Err(fail(&sim, "the partitioned leader did not step down"));
    }
    let acked = sim.stats().acked;
    wait_leader(&mut sim, Some(l))?;
    wait_acked(&mut sim, acked + 20)?;
    sim.heal();
    sim.run_for(Duration::from_millis(500))?;
    finish(sim)
}

/// A network that duplicates, reorders and drops messages (ACCEPTs
/// included); entries still commit in order, exactly once.
pub fn duplicated_reordered_accepts<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut cfg = SimConfig {
        seed,
        ..SimConfig::default()
    };
    cfg.dup_prob = 0.4;
    cfg.drop_prob = 0.05;
    cfg.min_delay = Duration::from_micros(50);
    cfg.max_delay = Duration::from_millis(15);
    let mut sim = mk(cfg);
    wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 200)?;
    finish(sim)
}

/// Every node crashes at once, losing unsynced writes, and restarts: the
/// acknowledged history survives and the cluster commits again.
pub fn full_cluster_restart<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        ..SimConfig::default()
    });
    wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 100)?;
    for id in sim.node_ids() {
        sim.crash(id);
    }
    sim.run_for(Duration::from_millis(100))?;
    for id in sim.node_ids() {
        sim.restart(id);
    }
    let acked = sim.stats().acked;
    wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, acked + 50)?;
    finish(sim)
}
