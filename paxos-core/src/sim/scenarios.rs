//! Named fault scenarios, scripted on top of the simulator's random
//! schedule. Each checks the invariants after every step (like any run),
//! checks that it exercised the path it is named after, and ends by
//! stopping faults and measuring recovery (liveness).

use std::time::Duration;

use super::{Sim, SimConfig, SimStats, Violation};
use crate::election::Elector;
use crate::{ChangeError, Membership, NodeId, Zxid};

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
    "recovering_voter_blocks_stale_leader",
    "lease_hold_off_after_restart",
    "slow_snapshot_transfer_and_install",
    "lost_snapshot_chunk_resumes",
    "snapshot_sync_end_lost",
    "quorum_loss_5",
    "quorum_loss_3",
    "constrained_election",
    "constrained_election_compacted",
    "constrained_election_slow_snapshot",
    "chained",
    "replace_a_voter",
    "leader_hands_over_then_is_removed",
    "change_during_a_partition",
    "restart_after_changes_then_leader_lost",
    "removal_committed_unseen_then_leader_lost",
    "change_across_epochs",
    "concurrent_add_and_remove_same_node",
    "remove_from_two_node_cluster_while_other_fails",
    "member_down_during_change",
    "change_racing_leader_crash",
    "rejoin_after_hand_over_crashed",
    "rejoin_after_hand_over_isolated",
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
        "recovering_voter_blocks_stale_leader" => recovering_voter_blocks_stale_leader(mk, seed),
        "lease_hold_off_after_restart" => lease_hold_off_after_restart(mk, seed, false),
        "slow_snapshot_transfer_and_install" => slow_snapshot_transfer_and_install(mk, seed),
        "lost_snapshot_chunk_resumes" => lost_snapshot_chunk_resumes(mk, seed),
        "snapshot_sync_end_lost" => snapshot_sync_end_lost(mk, seed),
        "quorum_loss_5" => quorum_loss(mk, seed, 5),
        "quorum_loss_3" => quorum_loss(mk, seed, 3),
        "constrained_election" => constrained_election(mk, seed, HubCatchUp::Diff),
        "constrained_election_compacted" => constrained_election(mk, seed, HubCatchUp::Snapshot),
        "constrained_election_slow_snapshot" => {
            constrained_election(mk, seed, HubCatchUp::SlowLossySnapshot)
        }
        "chained" => chained(mk, seed),
        "replace_a_voter" => replace_a_voter(mk, seed),
        "leader_hands_over_then_is_removed" => leader_hands_over_then_is_removed(mk, seed),
        "change_during_a_partition" => change_during_a_partition(mk, seed),
        "restart_after_changes_then_leader_lost" => {
            restart_after_changes_then_leader_lost(mk, seed)
        }
        "removal_committed_unseen_then_leader_lost" => {
            removal_committed_unseen_then_leader_lost(mk, seed)
        }
        "change_across_epochs" => change_across_epochs(mk, seed),
        "concurrent_add_and_remove_same_node" => concurrent_add_and_remove_same_node(mk, seed),
        "remove_from_two_node_cluster_while_other_fails" => {
            remove_from_two_node_cluster_while_other_fails(mk, seed)
        }
        "member_down_during_change" => member_down_during_change(mk, seed),
        "change_racing_leader_crash" => change_racing_leader_crash(mk, seed),
        "rejoin_after_hand_over_crashed" => rejoin_after_hand_over(mk, seed, Away::Crashed),
        "rejoin_after_hand_over_isolated" => rejoin_after_hand_over(mk, seed, Away::Isolated),
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

/// [`finish`], then every live voter must follow the leader within
/// [`Sim::rejoin_bound`] ([`Sim::check_rejoined`]).
fn finish_rejoined<E: Elector>(mut sim: Sim<E>) -> Result<SimStats, Violation> {
    sim.stop_faults();
    let bound = sim.cfg.liveness_bound;
    if !sim.run_until(bound, |s| s.stats().recovery.is_some())? {
        return Err(fail(&sim, "no commit after faults stopped"));
    }
    sim.check_rejoined()?;
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

/// The three roles of the recovering scenarios: the leader `a` that
/// commits `x` with `b` while `c` is cut off.
struct Commit3 {
    a: NodeId,
    b: NodeId,
    c: NodeId,
    x: Zxid,
}

/// Three voters: `a` leads and commits `x` with `b` while `c` is
/// partitioned, so `c` lacks `x`.
fn commit_without_c<E: Elector>(sim: &mut Sim<E>) -> Result<Commit3, Violation> {
    let a = wait_leader(sim, None)?;
    wait_acked(sim, 20)?;
    let others: Vec<NodeId> = sim.node_ids().into_iter().filter(|n| *n != a).collect();
    let [b, c] = others[..] else {
        return Err(fail(sim, "needs exactly three voters"));
    };
    sim.isolate(c);
    let acked = sim.stats().acked;
    wait_acked(sim, acked + 10)?;
    let x = sim
        .last_acked()
        .ok_or_else(|| fail(sim, "nothing acknowledged"))?;
    if sim.replica(c).is_some_and(|r| r.holds(x)) {
        return Err(fail(sim, "the partitioned voter holds x"));
    }
    if !sim.replica(b).is_some_and(|r| r.holds(x)) {
        return Err(fail(sim, "the follower that acknowledged x lacks it"));
    }
    Ok(Commit3 { a, b, c, x })
}

/// A (leader) commits x with B while C is partitioned; B loses its whole
/// disk and restarts *recovering*, A crashes, C comes back. B and C must
/// not elect a leader (it would lack x): the cluster stays unavailable.
/// Once A returns, a leader holding x is elected, B is synced and
/// readmitted, and commits resume; no acknowledged write is lost.
pub fn recovering_voter_blocks_stale_leader<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let Commit3 { a, b, c, x } = commit_without_c(&mut sim)?;
    sim.wipe(b, true);
    sim.crash(a);
    sim.restart(b);
    sim.heal();
    // B and C alone: no leader may be established (it would lack x; the
    // invariant checks after every step would also catch that).
    if sim.run_until(Duration::from_secs(3), |s| s.leader().is_some())? {
        return Err(fail(
            &sim,
            "a leader was established without the holder of x",
        ));
    }
    if !sim.is_recovering(b) {
        return Err(fail(&sim, "the wiped voter is not recovering"));
    }
    // B restarts mid-recovery: the flag is on its disk now, so it comes
    // back recovering without being told again.
    sim.crash(b);
    sim.restart(b);
    if !sim.replica(b).is_some_and(|r| r.is_recovering()) {
        return Err(fail(&sim, "the recovering flag did not survive a restart"));
    }
    if sim.run_until(Duration::from_millis(500), |s| s.leader().is_some())? {
        return Err(fail(&sim, "a leader was established after B restarted"));
    }
    sim.restart(a);
    let l = wait_leader(&mut sim, None)?;
    if !sim.replica(l).is_some_and(|r| r.holds(x)) {
        return Err(fail(&sim, "the new leader lacks x"));
    }
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 10)?;
    if !sim.run_until(Duration::from_secs(10), |s| !s.is_recovering(b))? {
        return Err(fail(&sim, "the recovering voter was never readmitted"));
    }
    if !sim.replica(b).is_some_and(|r| r.holds(x)) {
        return Err(fail(&sim, "the readmitted voter lacks x"));
    }
    // B counts again: with C down, A and B commit.
    sim.crash(c);
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 10)?;
    finish(sim)
}

/// The same history, but B restarts empty *without* the recovering flag
/// (the old behaviour): B and C elect a leader that lacks x. Returns the
/// violations the simulator reported (durability as soon as B's disk is
/// gone, then leader completeness once the leader lacking x is
/// established), or an error if the attack did not show.
pub fn wiped_voter_without_recovering<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<Vec<Violation>, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let Commit3 { a, b, x, .. } = commit_without_c(&mut sim)?;
    sim.wipe(b, false);
    sim.crash(a);
    sim.restart(b);
    sim.heal();
    let mut seen = Vec::new();
    let end = sim.now() + Duration::from_secs(5);
    // Bounded: each step advances the queue; stop at the deadline.
    for _ in 0..1_000_000 {
        if sim.now() > end {
            break;
        }
        if let Err(v) = sim.step() {
            seen.push(v);
        }
        if let Some(l) = sim.leader() {
            if !sim.replica(l).is_some_and(|r| r.holds(x)) {
                return Ok(seen);
            }
        }
    }
    Err(fail(&sim, "no leader lacking x was elected"))
}

/// Lease reads: leader L holds a lease on follower F's acknowledgements;
/// the third voter G cannot reach L. F crashes and restarts at once, and L
/// is partitioned. F must not help elect a new leader until L's lease has
/// expired, so every lease read L serves meanwhile is still linearizable.
/// With `skip_hold_off` (test-only) the rule is off and the simulator's
/// read check reports the stale read.
pub fn lease_hold_off_after_restart<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
    skip_hold_off: bool,
) -> Result<SimStats, Violation> {
    let mut cfg = SimConfig {
        seed,
        unsafe_skip_lease_hold_off: skip_hold_off,
        ..SimConfig::default()
    };
    cfg.replica.lease_reads = true;
    // G falls behind while cut off: keep the log so that it syncs by DIFF
    // at once (a SNAP could outlast the lease and hide the stale read).
    cfg.snapshot_every = 0;
    cfg.replica.retention_entries = 1 << 20;
    // An ordered network: a reordered NEWLEADER costs a sync timeout, which
    // could also outlast the lease.
    cfg.min_delay = Duration::from_micros(500);
    cfg.max_delay = cfg.min_delay;
    let mut sim = mk(cfg);
    let l = wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    let others: Vec<NodeId> = sim.node_ids().into_iter().filter(|n| *n != l).collect();
    let [f, g] = others[..] else {
        return Err(fail(&sim, "needs exactly three voters"));
    };
    // G loses L and keeps looking; L leads on F's acknowledgements. The
    // client pauses so that G does not fall behind (a long sync could
    // outlast the lease and hide the stale read).
    sim.set_client_batch(0);
    sim.run_for(Duration::from_millis(20))?;
    sim.cut(l, g);
    sim.run_for(Duration::from_millis(300))?;
    if sim.leader() != Some(l) {
        return Err(fail(&sim, "the leader did not keep its quorum with F"));
    }
    let reads = sim.stats().reads;
    sim.crash(f);
    sim.restart(f);
    sim.isolate(l);
    sim.set_client_batch(2);
    // Lease reads on L for longer than its lease lasts, while F and G may
    // elect a leader and commit.
    let mut served_on_lease = 0u64;
    for _ in 0..150 {
        let before = sim.stats().reads;
        sim.read_on(l);
        sim.run_for(Duration::from_millis(2))?;
        served_on_lease += sim.stats().reads - before;
    }
    if sim.stats().reads == reads || served_on_lease == 0 {
        return Err(fail(&sim, "the partitioned leader served no lease read"));
    }
    let acked = sim.stats().acked;
    sim.heal();
    wait_acked(&mut sim, acked + 10)?;
    finish(sim)
}

/// A configuration where a follower that was down comes back behind the
/// retention window (so it needs SNAP), with a paced snapshot transfer.
fn snap_config(seed: u64, chunk_interval: Duration, install: Duration) -> SimConfig {
    let mut cfg = SimConfig {
        seed,
        ..SimConfig::default()
    };
    cfg.snapshot_every = 10;
    cfg.replica.retention_entries = 5;
    cfg.replica.follower_pin_timeout = Duration::from_millis(300);
    cfg.snap_chunk_interval = chunk_interval;
    cfg.snap_install_time = install;
    // Ordered links, like the node's control stream that carries the
    // chunks: a DIFF overtaking another restarts a sync (ACCEPTNACK), which
    // would blur what these scenarios count.
    cfg.min_delay = Duration::from_millis(1);
    cfg.max_delay = cfg.min_delay;
    cfg
}

/// Takes a follower down while `entries` commit, so that it needs SNAP.
fn lag_a_follower<E: Elector>(
    sim: &mut Sim<E>,
    entries: u64,
    wipe: bool,
) -> Result<NodeId, Violation> {
    let l = wait_leader(sim, None)?;
    wait_acked(sim, 20)?;
    let f = sim
        .node_ids()
        .into_iter()
        .find(|n| *n != l)
        .ok_or_else(|| fail(sim, "no follower"))?;
    if wipe {
        sim.wipe(f, true);
    } else {
        sim.crash(f);
    }
    let acked = sim.stats().acked;
    wait_acked(sim, acked + entries)?;
    Ok(f)
}

/// Waits until `f` installed a snapshot and follows in broadcast.
fn wait_snap_synced<E: Elector>(
    sim: &mut Sim<E>,
    f: NodeId,
    installs: u64,
    within: Duration,
) -> Result<(), Violation> {
    let ok = sim.run_until(within, |s| {
        s.stats().snap_installs > installs
            && s.replica(f)
                .is_some_and(|r| r.established_epoch().is_some())
    })?;
    if ok {
        Ok(())
    } else {
        Err(fail(
            sim,
            &format!(
                "follower {f} not synced by snapshot within {within:?}: {:?}",
                sim.stats()
            ),
        ))
    }
}

/// A slow link (each snapshot chunk takes longer than the sync and
/// election timeouts) and a slow install (several election timeouts): the
/// follower's progress reports keep the transfer alive, so the leader
/// never restarts it, and the follower is synced.
pub fn slow_snapshot_transfer_and_install<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let cfg = snap_config(seed, Duration::from_millis(250), Duration::from_secs(1));
    let mut sim = mk(cfg);
    let f = lag_a_follower(&mut sim, 400, false)?;
    let installs = sim.stats().snap_installs;
    sim.restart(f);
    wait_snap_synced(&mut sim, f, installs, Duration::from_secs(20))?;
    if sim.stats().snap_restarts != 0 {
        return Err(fail(
            &sim,
            &format!(
                "snapshot transfer restarted {} times",
                sim.stats().snap_restarts
            ),
        ));
    }
    finish(sim)
}

/// One snapshot chunk is lost mid-transfer: the follower's progress stops
/// at the gap, the leader times the transfer out after the progress
/// timeout and resumes it from the follower's offset, not from 0.
pub fn lost_snapshot_chunk_resumes<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let cfg = snap_config(seed, Duration::from_millis(20), Duration::ZERO);
    let mut sim = mk(cfg);
    let f = lag_a_follower(&mut sim, 400, false)?;
    // A transfer resumes only with the same snapshot: keep the leader's
    // (writes go on; the log just is not compacted meanwhile).
    sim.set_snapshot_every(0);
    let installs = sim.stats().snap_installs;
    sim.drop_next("SNAP", f, 3, 1);
    sim.restart(f);
    wait_snap_synced(&mut sim, f, installs, Duration::from_secs(20))?;
    let st = sim.stats();
    if st.dropped_on_purpose != 1 || st.snap_resumes == 0 {
        return Err(fail(
            &sim,
            &format!("the lost chunk was not resumed past offset 0: {st:?}"),
        ));
    }
    finish(sim)
}

/// A wiped, recovering follower is synced by SNAP, and both messages that
/// end its sync after SNAPINSTALLED (NEWLEADER, then UPTODATE) are lost
/// once: each is sent again, and the follower reaches broadcast (where a
/// recovering follower can be readmitted) without a second snapshot.
pub fn snapshot_sync_end_lost<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let cfg = snap_config(seed, Duration::from_millis(20), Duration::from_millis(300));
    let mut sim = mk(cfg);
    let f = lag_a_follower(&mut sim, 400, true)?;
    let installs = sim.stats().snap_installs;
    sim.drop_next("NEWLEADER", f, 0, 1);
    sim.drop_next("UPTODATE", f, 0, 1);
    sim.restart(f);
    wait_snap_synced(&mut sim, f, installs, Duration::from_secs(10))?;
    let st = sim.stats().clone();
    if st.dropped_on_purpose != 2 || st.snap_restarts != 0 || st.snap_installs != installs + 1 {
        return Err(fail(
            &sim,
            &format!("sync end not recovered without a new snapshot: {st:?}"),
        ));
    }
    finish(sim)
}

// ----- partial connectivity (OmniPaxos, EuroSys'23) -------------------------

/// How long after a partial-connectivity fault starts the cluster must
/// commit new proposals again. The failure these scenarios were written
/// for took no write for the whole fault (12 s on real processes).
pub const PARTIAL_FAULT_BOUND: Duration = Duration::from_secs(10);

/// Cuts every link that does not touch `hub` (both directions): `hub`
/// reaches every node, every other node reaches only `hub`.
fn hub_only<E: Elector>(sim: &mut Sim<E>, hub: NodeId) {
    let ids = sim.node_ids();
    for (k, a) in ids.iter().enumerate() {
        for b in &ids[k + 1..] {
            if *a != hub && *b != hub {
                sim.cut(*a, *b);
            }
        }
    }
}

/// Runs until more than `more_than` commands are acknowledged, failing
/// with `what` if that takes longer than [`PARTIAL_FAULT_BOUND`].
fn commits_under_fault<E: Elector>(
    sim: &mut Sim<E>,
    more_than: u64,
    what: &str,
) -> Result<(), Violation> {
    if sim.run_until(PARTIAL_FAULT_BOUND, |s| s.stats().acked > more_than)? {
        Ok(())
    } else {
        Err(fail(
            sim,
            &format!(
                "{what}: no write committed within {PARTIAL_FAULT_BOUND:?} of the fault \
                 (leader {:?}, {:?})",
                sim.leader(),
                sim.stats()
            ),
        ))
    }
}

/// The first voter other than `not`.
fn other_voter<E: Elector>(sim: &Sim<E>, not: NodeId) -> Result<NodeId, Violation> {
    sim.node_ids()
        .into_iter()
        .find(|n| *n != not)
        .ok_or_else(|| fail(sim, "no second voter"))
}

/// Quorum loss: the leader and every follower but one (the hub) reach
/// only the hub, which reaches everyone. The leader loses its quorum; the
/// hub is the only node connected to a quorum, so (with five voters) it
/// must be elected and commit, and, isolated in turn, step down by
/// check-quorum. With three voters the leader keeps its quorum through the
/// hub, and writes must simply go on.
pub fn quorum_loss<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
    voters: usize,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        voters,
        ..SimConfig::default()
    });
    let l = wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    let hub = other_voter(&sim, l)?;
    hub_only(&mut sim, hub);
    let acked = sim.stats().acked;
    commits_under_fault(&mut sim, acked + 20, "quorum loss")?;
    if voters >= 5 {
        if sim.leader() != Some(hub) {
            return Err(fail(
                &sim,
                &format!(
                    "the leader is {:?}, not the only quorum-connected node {hub}",
                    sim.leader()
                ),
            ));
        }
        // The hub, followed on its own word by nodes that reach only it,
        // still steps down by check-quorum once it loses its quorum.
        sim.isolate(hub);
        let stepped = sim.run_until(Duration::from_secs(5), |s| {
            s.replica(hub).is_some_and(|r| !r.is_leader())
        })?;
        if !stepped {
            return Err(fail(&sim, "the isolated hub did not step down"));
        }
    }
    sim.heal();
    finish(sim)
}

/// How the hub of [`constrained_election`] gets the newer history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubCatchUp {
    /// The nodes keep their logs: the hub fetches the newer entries by DIFF.
    Diff,
    /// The nodes take snapshots and keep a short log, so while the hub is
    /// cut off every up-to-date node compacts its log past the hub's
    /// position: no DIFF can bring the hub level, and it must fetch a
    /// follower's snapshot (then the entries after it) before it leads.
    Snapshot,
    /// As `Snapshot`, over a paced link with a slow install (together
    /// longer than discovery's timeout), and one chunk to the hub lost:
    /// progress keeps the hub's discovery alive, and the lost chunk is
    /// asked for again from the offset the hub holds.
    SlowLossySnapshot,
}

/// Constrained election: the hub falls behind while cut off, then the
/// up-to-date nodes lose every link but the one to the hub, and the old
/// leader is cut off entirely. The only quorum-connected node (the hub)
/// has an older log than the others; it must be elected anyway, fetch the
/// newer history in discovery, and commit.
///
/// See [`HubCatchUp`] for how the hub gets the newer history.
pub fn constrained_election<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
    catch_up: HubCatchUp,
) -> Result<SimStats, Violation> {
    let mut cfg = SimConfig {
        seed,
        voters: 5,
        ..SimConfig::default()
    };
    let compacted = catch_up != HubCatchUp::Diff;
    if compacted {
        cfg.snapshot_every = 10;
        cfg.replica.retention_entries = 5;
    } else {
        cfg.snapshot_every = 0;
        cfg.replica.retention_entries = 1 << 20;
    }
    if catch_up == HubCatchUp::SlowLossySnapshot {
        // About 7 chunks, 100 ms apart, and a 600 ms install: together
        // longer than discovery's timeout (two election timeouts).
        cfg.snap_chunk_bytes = 256;
        cfg.snap_chunk_interval = Duration::from_millis(100);
        cfg.snap_install_time = Duration::from_millis(600);
    }
    let mut sim = mk(cfg);
    let l = wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    let hub = other_voter(&sim, l)?;
    sim.isolate(hub);
    let hub_last = sim
        .replica(hub)
        .map(|r| r.last_zxid())
        .ok_or_else(|| fail(&sim, "the hub is down"))?;
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + if compacted { 60 } else { 30 })?;
    let x = sim
        .last_acked()
        .ok_or_else(|| fail(&sim, "nothing acknowledged"))?;
    if sim.replica(hub).is_some_and(|r| r.holds(x)) {
        return Err(fail(&sim, "the cut-off hub holds the newest entry"));
    }
    if compacted {
        // Every node the hub can fetch from has compacted its log past
        // the hub's position.
        for n in sim.node_ids() {
            let first = sim.replica(n).and_then(|r| r.first_retained());
            if n != hub && n != l && first.is_none_or(|f| f <= hub_last) {
                return Err(fail(
                    &sim,
                    &format!(
                        "node {n}'s log (from {first:?}) still covers the hub's last entry \
                         {hub_last:?}"
                    ),
                ));
            }
        }
    }
    // One step: the new topology replaces the old one before any event.
    sim.heal();
    hub_only(&mut sim, hub);
    sim.isolate(l);
    let acked = sim.stats().acked;
    let fetched = sim.stats().snap_fetches;
    if catch_up == HubCatchUp::SlowLossySnapshot {
        sim.drop_next("SNAP", hub, 2, 1);
    }
    commits_under_fault(&mut sim, acked + 20, "constrained election")?;
    if sim.leader() != Some(hub) {
        return Err(fail(
            &sim,
            &format!(
                "the leader is {:?}, not the only quorum-connected node {hub}",
                sim.leader()
            ),
        ));
    }
    if !sim.replica(hub).is_some_and(|r| r.holds(x)) {
        return Err(fail(&sim, "the hub leads without the newest entry"));
    }
    if compacted && sim.stats().snap_fetches == fetched {
        return Err(fail(
            &sim,
            "the hub caught up without installing a snapshot",
        ));
    }
    if catch_up == HubCatchUp::SlowLossySnapshot {
        let st = sim.stats();
        if st.dropped_on_purpose != 1 || st.snap_resumes == 0 {
            return Err(fail(
                &sim,
                &format!("the hub's lost snapshot chunk was not resumed: {st:?}"),
            ));
        }
    }
    sim.heal();
    finish(sim)
}

/// Chained: three voters, only the link between the leader and one
/// follower is down (the other follower reaches both). Writes must go on
/// and leadership must not flip-flop: once the cluster commits again, at
/// most one more leadership is established while the fault holds.
pub fn chained<E: Elector>(mk: MakeSim<'_, E>, seed: u64) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        voters: 3,
        ..SimConfig::default()
    });
    let l = wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    let f = other_voter(&sim, l)?;
    sim.cut(l, f);
    let acked = sim.stats().acked;
    commits_under_fault(&mut sim, acked + 20, "chained")?;
    let leaders = sim.stats().leaders;
    let acked = sim.stats().acked;
    sim.run_for(Duration::from_secs(5))?;
    let changes = sim.stats().leaders - leaders;
    if changes > 1 {
        return Err(fail(
            &sim,
            &format!("leadership changed {changes} times while the chained fault held"),
        ));
    }
    if sim.stats().acked <= acked {
        return Err(fail(&sim, "writes stopped while the chained fault held"));
    }
    sim.heal();
    finish(sim)
}

/// Waits until the leader's membership satisfies `done` and no change is
/// pending on it (committed).
fn wait_membership<E: Elector>(
    sim: &mut Sim<E>,
    done: impl Fn(&Membership) -> bool,
) -> Result<(), Violation> {
    let ok = sim.run_until(Duration::from_secs(20), |s| {
        s.leader()
            .and_then(|l| s.replica(l))
            .is_some_and(|r| done(r.membership()) && r.membership_change_pending().is_none())
    })?;
    if ok {
        Ok(())
    } else {
        Err(fail(sim, "the membership change did not commit"))
    }
}

/// The membership in force on `id` (the leader, when it is up).
fn membership_on<E: Elector>(sim: &Sim<E>, id: NodeId) -> Result<Membership, Violation> {
    sim.replica(id)
        .map(|r| r.membership().clone())
        .ok_or_else(|| fail(sim, "leader down"))
}

/// Makes observer `x` a voter.
fn promote(m: &mut Membership, x: NodeId) {
    m.observers.retain(|o| *o != x);
    m.voters.push(x);
}

fn with(m: &Membership, f: impl FnOnce(&mut Membership)) -> Membership {
    let mut m = m.clone();
    f(&mut m);
    m
}

/// Promotes the simulation's observer (node 100), then removes a follower
/// that is not it and stops that follower; returns the removed node.
fn replace_follower_by_observer<E: Elector>(sim: &mut Sim<E>) -> Result<NodeId, Violation> {
    let newcomer = NodeId(100);
    change_and_commit(sim, |m| promote(m, newcomer), |m| m.is_voter(newcomer))?;
    let l = wait_leader(sim, None)?;
    let old = sim
        .node_ids()
        .into_iter()
        .find(|n| *n != l && *n != newcomer)
        .ok_or_else(|| fail(sim, "no follower to replace"))?;
    change_and_commit(
        sim,
        |m| m.voters.retain(|v| *v != old),
        |m| !m.is_member(old),
    )?;
    sim.crash(old);
    Ok(old)
}

/// Replace a voter under load: an observer is promoted, then a follower is
/// removed and stopped; commands keep committing, and every acknowledged
/// one survives.
pub fn replace_a_voter<E: Elector>(mk: MakeSim<'_, E>, seed: u64) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        observers: 1,
        ..SimConfig::default()
    });
    wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    replace_follower_by_observer(&mut sim)?;
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 20)?;
    finish(sim)
}

/// A leader may not remove itself: it hands over, and the new leader
/// removes it; the group goes on without it.
pub fn leader_hands_over_then_is_removed<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        voters: 5,
        ..SimConfig::default()
    });
    let l = wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    let m = membership_on(&sim, l)?;
    let without_l = with(&m, |m| m.voters.retain(|v| *v != l));
    sim.reconfigure(l, without_l)?;
    sim.run_for(Duration::from_millis(50))?;
    if sim.replica(l).is_some_and(|r| !r.membership().is_voter(l)) {
        return Err(fail(&sim, "the leader removed itself"));
    }
    // Hand over, asking again (each other voter in turn) while the
    // hand-over is refused or given up: a target not yet in sync, or one
    // that did not catch up in time.
    let others: Vec<NodeId> = m.voters.iter().copied().filter(|v| *v != l).collect();
    let mut handed = false;
    for attempt in 0..20 {
        if sim.leader() != Some(l) {
            break;
        }
        sim.transfer_leadership(l, others[attempt % others.len()])?;
        if sim.run_until(Duration::from_secs(2), |s| {
            s.leader().is_some_and(|x| x != l)
        })? {
            handed = true;
            break;
        }
    }
    if !handed && sim.leader().is_none_or(|x| x == l) {
        return Err(fail(&sim, "the leader never handed over"));
    }
    change_and_commit(
        &mut sim,
        |m| m.voters.retain(|v| *v != l),
        |m| !m.is_member(l),
    )?;
    sim.crash(l);
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 20)?;
    finish(sim)
}

/// The leader proposes a change and is cut off at once: the change commits
/// or is dropped, but the group agrees on one membership, elects a leader
/// under it, and loses no acknowledged command.
pub fn change_during_a_partition<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        voters: 5,
        ..SimConfig::default()
    });
    let l = wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    let m = membership_on(&sim, l)?;
    let gone = m
        .voters
        .iter()
        .copied()
        .find(|v| *v != l)
        .ok_or_else(|| fail(&sim, "no follower"))?;
    sim.reconfigure(l, with(&m, |m| m.voters.retain(|v| *v != gone)))?;
    sim.isolate(l);
    let acked = sim.stats().acked;
    wait_leader(&mut sim, Some(l))?;
    wait_acked(&mut sim, acked + 20)?;
    sim.heal();
    sim.run_for(Duration::from_millis(500))?;
    finish(sim)
}

// ----- membership change: the remaining cases of issue 15 -------------------

/// Whether `a` and `b` give every node the same role (the order of the
/// lists does not matter).
fn same_roles(a: &Membership, b: &Membership) -> bool {
    let sorted = |v: &[NodeId]| {
        let mut v = v.to_vec();
        v.sort_unstable();
        v
    };
    sorted(&a.voters) == sorted(&b.voters) && sorted(&a.observers) == sorted(&b.observers)
}

/// Asks `leader` for the membership `to`; whether the kernel accepted it.
/// [`Sim::reconfigure`] logs a refusal and counts nothing, so a proposal
/// was accepted exactly when the count of proposed changes moved.
fn try_reconfigure<E: Elector>(
    sim: &mut Sim<E>,
    leader: NodeId,
    to: Membership,
) -> Result<bool, Violation> {
    Ok(matches!(sim.try_reconfigure(leader, to)?, Some(Ok(_))))
}

/// Proposes on the leader `l` the change `edit(l, ..)` makes to its
/// membership, asking again (up to 50 times, 100 ms apart, following the
/// leadership) while it is refused: a leader whose starting history is
/// not committed yet, or a follower not yet in sync. Returns the leader
/// that proposed it and the membership it changed; no event has run since
/// the proposal.
fn propose_change<E: Elector>(
    sim: &mut Sim<E>,
    edit: impl Fn(NodeId, &mut Membership),
) -> Result<(NodeId, Membership), Violation> {
    for _ in 0..50 {
        let l = wait_leader(sim, None)?;
        let m = membership_on(sim, l)?;
        if try_reconfigure(sim, l, with(&m, |m| edit(l, m)))? {
            return Ok((l, m));
        }
        sim.run_for(Duration::from_millis(100))?;
    }
    Err(fail(
        sim,
        "the leader refused the membership change every time",
    ))
}

/// [`propose_change`] of `edit`, then waits until the leader's membership
/// satisfies `done` with no change pending. Returns the proposer.
fn change_and_commit<E: Elector>(
    sim: &mut Sim<E>,
    edit: impl Fn(&mut Membership),
    done: impl Fn(&Membership) -> bool,
) -> Result<NodeId, Violation> {
    let (l, _) = propose_change(sim, |_, m| edit(m))?;
    wait_membership(sim, done)?;
    Ok(l)
}

/// Waits until the group settled on one membership: a leader with no
/// change pending, and every member of its membership up and holding that
/// membership, committed as far as it knows. Returns the leader and the
/// membership.
fn wait_agreed<E: Elector>(sim: &mut Sim<E>) -> Result<(NodeId, Membership), Violation> {
    let agreed = |s: &Sim<E>| -> Option<(NodeId, Membership)> {
        let l = s.leader()?;
        let lr = s.replica(l)?;
        if lr.membership_change_pending().is_some() {
            return None;
        }
        let m = lr.membership().clone();
        let all_agree = m.voters.iter().chain(&m.observers).all(|n| {
            s.replica(*n).is_some_and(|r| {
                same_roles(r.membership(), &m) && same_roles(r.committed_membership(), &m)
            })
        });
        all_agree.then_some((l, m))
    };
    if !sim.run_until(Duration::from_secs(20), |s| agreed(s).is_some())? {
        let view: Vec<String> = sim
            .node_ids()
            .into_iter()
            .map(|n| match sim.replica(n) {
                Some(r) => format!(
                    "{n}: {:?} committed {:?} leader {:?} in epoch {:?}, last {:?}, commit {:?}",
                    r.membership(),
                    r.committed_membership(),
                    r.leader(),
                    r.established_epoch(),
                    r.last_zxid(),
                    r.commit_zxid()
                ),
                None => format!("{n}: down"),
            })
            .collect();
        let progress = sim
            .leader()
            .and_then(|l| sim.replica(l))
            .map(|r| r.peer_progress());
        return Err(fail(
            sim,
            &format!(
                "the members never agreed on one membership: {}; leader's peers: {progress:?}",
                view.join("; ")
            ),
        ));
    }
    agreed(sim).ok_or_else(|| fail(sim, "agreement vanished"))
}

/// A change reaches one follower only: the leader `l` appends it and is
/// cut off from everyone but follower `f`, then both are cut off. The
/// other three voters elect a leader without the entry and commit a
/// conflicting change (the observer is promoted, where the stale entry
/// removed a voter). When `l` and `f` return, the stale entry is
/// truncated on both, every member holds the new leader's membership, no
/// acknowledged command is lost, and commands keep committing.
pub fn change_across_epochs<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut cfg = SimConfig {
        seed,
        voters: 5,
        observers: 1,
        ..SimConfig::default()
    };
    // No snapshots: a truncated entry must be gone from the log, not
    // hidden under a snapshot that covers its zxid.
    cfg.snapshot_every = 0;
    let mut sim = mk(cfg);
    wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    let observer = NodeId(100);
    // The leader may refuse while its starting history or a follower is
    // not in sync yet: ask again a little later.
    let mut proposed = None;
    for _ in 0..50 {
        let l = wait_leader(&mut sim, None)?;
        let m = membership_on(&sim, l)?;
        let others: Vec<NodeId> = m.voters.iter().copied().filter(|v| *v != l).collect();
        let [f, _, _, gone] = others[..] else {
            return Err(fail(&sim, "needs exactly five voters"));
        };
        if try_reconfigure(&mut sim, l, with(&m, |m| m.voters.retain(|v| *v != gone)))? {
            proposed = Some((l, f, gone));
            break;
        }
        sim.run_for(Duration::from_millis(100))?;
    }
    let (l, f, gone) =
        proposed.ok_or_else(|| fail(&sim, "the leader refused to remove a voter every time"))?;
    // Before any message is delivered: only `f` hears from `l`.
    for n in sim.node_ids() {
        if n != l && n != f {
            sim.cut(l, n);
        }
    }
    let stale = sim
        .replica(l)
        .and_then(|r| r.membership_change_pending())
        .ok_or_else(|| fail(&sim, "the change is not pending on the leader"))?;
    if !sim.run_until(Duration::from_secs(1), |s| {
        s.replica(f).is_some_and(|r| r.holds(stale))
    })? {
        return Err(fail(&sim, "the follower never received the change"));
    }
    sim.isolate(l);
    sim.isolate(f);
    for n in sim.node_ids() {
        if n != l && n != f && sim.replica(n).is_some_and(|r| r.holds(stale)) {
            return Err(fail(&sim, &format!("node {n} received the change too")));
        }
    }
    if sim.stats().reconfigs_committed != 0 {
        return Err(fail(&sim, "the change committed with two of five voters"));
    }
    let acked = sim.stats().acked;
    let n = wait_leader(&mut sim, Some(l))?;
    if n == f {
        return Err(fail(&sim, "the isolated follower was elected"));
    }
    wait_acked(&mut sim, acked + 20)?;
    let leader = change_and_commit(
        &mut sim,
        |m| promote(m, observer),
        |m| m.is_voter(observer) && m.is_voter(gone),
    )?;
    if leader == l || leader == f {
        return Err(fail(&sim, "the conflicting change came from the old side"));
    }
    // The two sides hold conflicting memberships now.
    for side in [l, f] {
        let r = sim
            .replica(side)
            .ok_or_else(|| fail(&sim, "an isolated node is down"))?;
        if r.membership().is_voter(gone) || !r.holds(stale) {
            return Err(fail(
                &sim,
                &format!("node {side} lost the stale change while cut off"),
            ));
        }
    }
    let before_heal = sim
        .last_acked()
        .ok_or_else(|| fail(&sim, "nothing acknowledged"))?;
    sim.heal();
    let (_, agreed) = wait_agreed(&mut sim)?;
    if !agreed.is_voter(observer) || !agreed.is_voter(gone) || agreed.voters.len() != 6 {
        return Err(fail(
            &sim,
            &format!("the group agreed on {agreed:?}, not the new leader's membership"),
        ));
    }
    for n in sim.node_ids() {
        let r = sim
            .replica(n)
            .ok_or_else(|| fail(&sim, &format!("node {n} is down")))?;
        if r.holds(stale) {
            return Err(fail(
                &sim,
                &format!("node {n} still holds the stale change {stale:?}"),
            ));
        }
        if !r.holds(before_heal) {
            return Err(fail(
                &sim,
                &format!("node {n} lacks {before_heal:?}, acknowledged before the heal"),
            ));
        }
    }
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 20)?;
    finish(sim)
}

/// Two changes of one node back to back: while the first is pending the
/// second is refused (one change at a time) and leaves no trace; once the
/// first committed, the second is accepted and commits. Done twice: the
/// observer is promoted then removed, then added back as an observer and
/// removed again.
pub fn concurrent_add_and_remove_same_node<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        observers: 1,
        ..SimConfig::default()
    });
    let x = NodeId(100);
    let promote = |m: &mut Membership| promote(m, x);
    let remove = |m: &mut Membership| {
        m.voters.retain(|v| *v != x);
        m.observers.retain(|o| *o != x);
    };
    let add_observer = |m: &mut Membership| m.observers.push(x);
    wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    for as_observer in [false, true] {
        let proposals = sim.stats().reconfigs;
        let (l, _) = propose_change(&mut sim, |_, m| {
            if as_observer {
                add_observer(m)
            } else {
                promote(m)
            }
        })?;
        let r = sim
            .replica(l)
            .ok_or_else(|| fail(&sim, "the leader is down"))?;
        let pending = r
            .membership_change_pending()
            .ok_or_else(|| fail(&sim, "the first change is not pending"))?;
        if !r.is_leader() || r.transferring_to().is_some() {
            return Err(fail(&sim, "the proposer lost its leadership at once"));
        }
        let in_force = r.membership().clone();
        // Back to back: no event has run since the first was proposed. The
        // one-at-a-time rule refuses the second, naming the first.
        match sim.try_reconfigure(l, with(&in_force, remove))? {
            Some(Err(ChangeError::InProgress(z))) if z == pending => {}
            Some(Ok(_)) => {
                return Err(fail(
                    &sim,
                    "a second change was accepted while the first was pending",
                ))
            }
            other => {
                return Err(fail(
                    &sim,
                    &format!(
                        "the second change was answered {other:?}, not InProgress({pending:?})"
                    ),
                ))
            }
        }
        let r = sim
            .replica(l)
            .ok_or_else(|| fail(&sim, "the leader is down"))?;
        if r.membership_change_pending() != Some(pending) || !same_roles(r.membership(), &in_force)
        {
            return Err(fail(&sim, "the refused change moved the membership"));
        }
        wait_membership(&mut sim, |m| {
            if as_observer {
                m.is_observer(x)
            } else {
                m.is_voter(x)
            }
        })?;
        let l = change_and_commit(&mut sim, remove, |m| !m.is_member(x))?;
        if sim.stats().reconfigs != proposals + 2 {
            return Err(fail(
                &sim,
                &format!(
                    "{} changes proposed in the round, not the first and the retried second",
                    sim.stats().reconfigs - proposals
                ),
            ));
        }
        let (_, m) = wait_agreed(&mut sim)?;
        if m.is_member(x) {
            return Err(fail(
                &sim,
                &format!("{x} is still a member after {l} removed it"),
            ));
        }
    }
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 20)?;
    finish(sim)
}

/// Two voters: the leader removes the other, which crashes `k` steps into
/// the change, for several `k` (each its own run from `seed`). The change
/// takes effect on the leader as it appends it, so the leader alone is a
/// quorum of the new membership: it commits and the leader keeps
/// committing alone (if it did not commit, nothing may be acknowledged
/// until the other returns). No acknowledged command is lost (the
/// simulator's checks), no two nodes lead one epoch, and once the other
/// restarts the members agree and commands commit.
pub fn remove_from_two_node_cluster_while_other_fails<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let run = |k: u64| {
        remove_from_two_nodes_crashing_at(mk, seed, k).map_err(|mut v| {
            v.what = format!("crash {k} steps into the change: {}", v.what);
            v
        })
    };
    let mut last = run(0)?;
    for k in 1..8 {
        last = run(k)?;
    }
    Ok(last)
}

fn remove_from_two_nodes_crashing_at<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
    k: u64,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        voters: 2,
        ..SimConfig::default()
    });
    // Two leaders in one epoch fail the run (the simulator checks it
    // after every step).
    if !sim.run_until(Duration::from_secs(20), |s| {
        s.leader().is_some() && s.stats().acked > 20
    })? {
        return Err(fail(&sim, "two voters never elected and committed"));
    }
    let (l, _) = propose_change(&mut sim, |l, m| m.voters.retain(|v| *v == l))?;
    let o = other_voter(&sim, l)?;
    let change = sim
        .replica(l)
        .and_then(|r| r.membership_change_pending())
        .ok_or_else(|| fail(&sim, "the change is not pending"))?;
    for _ in 0..k {
        sim.step()?;
    }
    sim.crash(o);
    let acked = sim.stats().acked;
    let committed = sim.run_until(Duration::from_secs(5), |s| {
        s.replica(l).is_some_and(|r| r.commit_zxid() >= change)
    })?;
    if committed {
        // The leader is a quorum of {leader} alone.
        if !sim.run_until(Duration::from_secs(5), |s| s.stats().acked > acked + 20)? {
            return Err(fail(
                &sim,
                "the leader alone stopped committing after removing the other voter",
            ));
        }
    } else {
        // Not committed: the old membership still counts the crashed
        // voter, so nothing new may have been acknowledged.
        if sim.stats().acked > acked {
            return Err(fail(
                &sim,
                "commands were acknowledged while the removal was undecided",
            ));
        }
    }
    let leaderships = sim.stats().leaders;
    sim.restart(o);
    let (leader, agreed) = wait_agreed(&mut sim)?;
    if committed && (agreed.is_member(o) || leader != l) {
        return Err(fail(
            &sim,
            &format!("after the removal committed the group settled on {agreed:?} led by {leader}"),
        ));
    }
    if !agreed.is_member(o) && sim.replica(o).is_some_and(|r| r.is_leader()) {
        return Err(fail(&sim, "the removed voter leads"));
    }
    let acked = sim.stats().acked;
    if !sim.run_until(Duration::from_secs(20), |s| s.stats().acked > acked + 20)? {
        return Err(fail(&sim, "commands stopped committing after the restart"));
    }
    // The removed voter, back with its old view, does not disturb the
    // leader that removed it.
    if committed && (sim.leader() != Some(l) || sim.stats().leaders != leaderships) {
        return Err(fail(
            &sim,
            &format!(
                "the removed voter's return moved the leadership: leader {:?}, {} new",
                sim.leader(),
                sim.stats().leaders - leaderships
            ),
        ));
    }
    finish(sim)
}

/// Five voters, one follower down: an observer is added, then promoted;
/// both changes commit with the live voters. The crashed follower then
/// restarts and learns the new membership.
pub fn member_down_during_change<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        voters: 5,
        observers: 1,
        ..SimConfig::default()
    });
    let x = NodeId(100);
    wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    // Set-up: the observer leaves, so that it can be added.
    change_and_commit(
        &mut sim,
        |m| m.observers.retain(|o| *o != x),
        |m| !m.is_member(x),
    )?;
    let l = wait_leader(&mut sim, None)?;
    let down = other_voter(&sim, l)?;
    sim.crash(down);
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 10)?;
    change_and_commit(&mut sim, |m| m.observers.push(x), |m| m.is_observer(x))?;
    let promoted = change_and_commit(&mut sim, |m| promote(m, x), |m| m.is_voter(x))?;
    if sim.is_up(down) {
        return Err(fail(&sim, "the crashed follower came back too early"));
    }
    let target = membership_on(&sim, promoted)?;
    if target.voters.len() != 6 {
        return Err(fail(&sim, &format!("unexpected membership {target:?}")));
    }
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 20)?;
    sim.restart(down);
    if !sim.run_until(Duration::from_secs(20), |s| {
        s.replica(down).is_some_and(|r| {
            same_roles(r.membership(), &target) && same_roles(r.committed_membership(), &target)
        })
    })? {
        return Err(fail(
            &sim,
            "the restarted follower never learned the new membership",
        ));
    }
    let (_, agreed) = wait_agreed(&mut sim)?;
    if !same_roles(&agreed, &target) {
        return Err(fail(&sim, &format!("the group moved on to {agreed:?}")));
    }
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 20)?;
    finish(sim)
}

/// The leader proposes a change (promoting the observer of three voters)
/// and crashes `k` steps later, for `k` from 0 to 12, each its own run
/// from `seed`; it restarts once the others elected a leader and
/// committed. The simulator's checks hold after every step, and the group
/// settles on one membership (with the change or without it) and keeps
/// committing.
pub fn change_racing_leader_crash<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let run = |k: u64, lost: bool| {
        change_then_leader_crash_at(mk, seed, k, lost).map_err(|mut v| {
            let how = if lost {
                ", its messages in flight lost"
            } else {
                ""
            };
            v.what = format!("leader crash {k} steps after the change{how}: {}", v.what);
            v
        })
    };
    let mut last = run(0, false)?;
    for k in 0..=12 {
        for lost in [false, true] {
            if k > 0 || lost {
                last = run(k, lost)?;
            }
        }
    }
    Ok(last)
}

/// One run of [`change_racing_leader_crash`]: the leader crashes `k`
/// steps after proposing; if `lost`, the messages it sent that are still
/// in flight are lost with it (it is cut off as it crashes, and the
/// network heals as it restarts).
fn change_then_leader_crash_at<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
    k: u64,
    lost: bool,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        observers: 1,
        ..SimConfig::default()
    });
    let x = NodeId(100);
    wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    let promote = |m: &mut Membership| promote(m, x);
    let (l, m) = propose_change(&mut sim, |_, m| promote(m))?;
    let promoted = with(&m, promote);
    for _ in 0..k {
        sim.step()?;
    }
    if lost {
        sim.isolate(l);
    }
    sim.crash(l);
    let acked = sim.stats().acked;
    wait_leader(&mut sim, Some(l))?;
    wait_acked(&mut sim, acked + 20)?;
    sim.heal();
    sim.restart(l);
    let (_, agreed) = wait_agreed(&mut sim)?;
    if !same_roles(&agreed, &m) && !same_roles(&agreed, &promoted) {
        return Err(fail(
            &sim,
            &format!("the group settled on {agreed:?}, neither before nor after the change"),
        ));
    }
    if k == 0 && lost && !same_roles(&agreed, &m) {
        // The entry never left the leader: nobody else can have adopted it.
        return Err(fail(
            &sim,
            &format!("a change that reached no one took effect: {agreed:?}"),
        ));
    }
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 20)?;
    finish(sim)
}

/// A voter replaced under a node that then restarts: voters 1, 2, 3 become
/// the leader, a follower Y and the promoted observer 100 (the third
/// original voter removed and stopped). Y and the leader go down together,
/// and Y alone comes back, knowing from its log only that the changes were
/// appended, not that they committed (no snapshot covers them). Y and 100
/// are a quorum of the membership in force and must elect a leader and
/// commit; Y must not count votes under its log's base membership, whose
/// other voters are gone.
pub fn restart_after_changes_then_leader_lost<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut cfg = SimConfig {
        seed,
        observers: 1,
        ..SimConfig::default()
    };
    // No snapshot may record the committed membership for Y.
    cfg.snapshot_every = 0;
    let mut sim = mk(cfg);
    wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    let newcomer = NodeId(100);
    replace_follower_by_observer(&mut sim)?;
    let l = wait_leader(&mut sim, None)?;
    let m = membership_on(&sim, l)?;
    let y = m
        .voters
        .iter()
        .copied()
        .find(|v| *v != l && *v != newcomer)
        .ok_or_else(|| fail(&sim, "no original follower left"))?;
    // Y has learned that the removal committed.
    let removed_at = sim
        .replica(l)
        .map(|r| r.commit_zxid())
        .ok_or_else(|| fail(&sim, "leader down"))?;
    if !sim.run_until(Duration::from_secs(10), |s| {
        s.replica(y).is_some_and(|r| r.commit_zxid() >= removed_at)
    })? {
        return Err(fail(&sim, "the follower never learned the commit point"));
    }
    sim.crash(y);
    sim.crash(l);
    sim.restart(y);
    let acked = sim.stats().acked;
    wait_leader(&mut sim, Some(l))?;
    wait_acked(&mut sim, acked + 20)?;
    sim.restart(l);
    finish(sim)
}

/// Four voters after the observer's promotion: the leader L removes a
/// follower X and commits the removal, and is lost at once (cut off, then
/// crashed), before any survivor hears that the removal committed; X is
/// shut down as an operator does with a removed machine. The two
/// survivors are a quorum of the membership in force (L, Y and the
/// newcomer, committed) and must elect a leader and commit, although as
/// far as they know the four-voter membership, of which only they are
/// up, is the one committed.
pub fn removal_committed_unseen_then_leader_lost<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        observers: 1,
        ..SimConfig::default()
    });
    let newcomer = NodeId(100);
    wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    change_and_commit(&mut sim, |m| promote(m, newcomer), |m| m.is_voter(newcomer))?;
    wait_agreed(&mut sim)?;
    let (l, _) = propose_change(&mut sim, |l, m| {
        if let Some(x) = m.voters.iter().copied().find(|v| *v != l && *v != newcomer) {
            m.voters.retain(|v| *v != x);
        }
    })?;
    let Some(x) = sim
        .replica(l)
        .and_then(|r| r.membership_change_pending().map(|_| r))
        .and_then(|r| {
            r.committed_membership()
                .voters
                .iter()
                .copied()
                .find(|v| !r.membership().is_member(*v))
        })
    else {
        return Err(fail(&sim, "the removal is not pending on the leader"));
    };
    // The step in which L commits the removal is its last.
    if !sim.run_until(Duration::from_secs(10), |s| {
        s.replica(l)
            .is_some_and(|r| !r.committed_membership().is_member(x))
    })? {
        return Err(fail(&sim, "the removal never committed"));
    }
    sim.isolate(l);
    sim.crash(l);
    sim.crash(x);
    let unseen = sim
        .node_ids()
        .into_iter()
        .filter(|n| *n != l && *n != x)
        .all(|n| {
            sim.replica(n)
                .is_some_and(|r| r.committed_membership().is_member(x))
        });
    if !unseen {
        return Err(fail(&sim, "a survivor already knew the removal committed"));
    }
    let acked = sim.stats().acked;
    wait_leader(&mut sim, Some(l))?;
    wait_acked(&mut sim, acked + 20)?;
    sim.heal();
    sim.restart(l);
    finish(sim)
}

/// How the voter of [`rejoin_after_hand_over`] is away during the hand-over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Away {
    /// Crashed, restarted after the hand-over.
    Crashed,
    /// Cut off from both others, reconnected after the hand-over.
    Isolated,
}

/// Three voters: C is away (crashed or cut off) while the leader A hands
/// over to B; once B leads and commits, C comes back and must follow B
/// within [`Sim::rejoin_bound`], although A and B took B as leader from
/// TAKEOVER rather than from an election C could join.
pub fn rejoin_after_hand_over<E: Elector>(
    mk: MakeSim<'_, E>,
    seed: u64,
    away: Away,
) -> Result<SimStats, Violation> {
    let mut sim = mk(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let a = wait_leader(&mut sim, None)?;
    wait_acked(&mut sim, 20)?;
    let others: Vec<NodeId> = sim
        .config
        .voters
        .iter()
        .copied()
        .filter(|v| *v != a)
        .collect();
    let (b, c) = match others.as_slice() {
        [b, c] => (*b, *c),
        _ => return Err(fail(&sim, "three voters expected")),
    };
    match away {
        Away::Crashed => sim.crash(c),
        Away::Isolated => sim.isolate(c),
    }
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 20)?;
    // Ask again while the hand-over is refused or given up (B not yet in
    // sync, or not caught up in time).
    for _ in 0..20 {
        if sim.leader() == Some(b) {
            break;
        }
        if sim.leader() == Some(a) {
            sim.transfer_leadership(a, b)?;
        }
        sim.run_until(Duration::from_secs(2), |s| s.leader() == Some(b))?;
    }
    if sim.leader() != Some(b) || sim.stats().handed_off == 0 {
        return Err(fail(&sim, "the leader never handed over to B"));
    }
    let acked = sim.stats().acked;
    wait_acked(&mut sim, acked + 20)?;
    match away {
        Away::Crashed => sim.restart(c),
        Away::Isolated => sim.heal(),
    }
    let bound = sim.rejoin_bound();
    let follows = |s: &Sim<E>| {
        s.replica(c)
            .is_some_and(|r| r.leader() == Some(b) && r.established_epoch().is_some())
    };
    if !sim.run_until(bound, follows)? {
        let state = sim.replica(c).map(|r| (r.leader(), r.established_epoch()));
        return Err(fail(
            &sim,
            &format!("{c} back after a hand-over from {a} to {b} does not follow {b} within {bound:?} (leader, established epoch: {state:?}; leader now {:?})", sim.leader()),
        ));
    }
    finish_rejoined(sim)
}
