//! Simulator runs: calm cluster, named fault scenarios, random schedules.

use std::time::Duration;

use paxos_core::sim::{scenarios, Sim, SimConfig};

#[test]
fn calm_cluster_elects_and_commits() {
    let mut sim = Sim::with_test_components(SimConfig {
        seed: 1,
        ..SimConfig::default()
    });
    if let Err(v) = sim.run_for(Duration::from_secs(2)) {
        panic!("{v}");
    }
    let st = sim.stats().clone();
    assert_eq!(st.leaders, 1, "one leadership in a calm run: {st:?}");
    assert!(st.acked > 100, "commands must commit: {st:?}");
    assert_eq!(st.truncs, 0);
}

#[test]
fn same_seed_replays_exactly() {
    let run = |seed| {
        let mut sim = Sim::with_test_components(SimConfig::chaos(seed));
        let r = sim.run_steps_then_recover(3_000).map_err(|v| v.to_string());
        (r, sim.stats().clone(), sim.canonical_len())
    };
    assert_eq!(run(5), run(5));
}

fn scenario(name: &str) {
    for seed in 0..3 {
        match scenarios::run_with_test_components(name, seed)
            .unwrap_or_else(|| panic!("no scenario {name}"))
        {
            Ok(st) => println!("{name} seed {seed}: {st:?}"),
            Err(v) => panic!("{name}: {v}"),
        }
    }
}

#[test]
fn scenario_leader_crash_mid_broadcast() {
    scenario("leader_crash_mid_broadcast");
}

#[test]
fn scenario_old_epoch_suffix_forces_trunc() {
    scenario("old_epoch_suffix_forces_trunc");
}

#[test]
fn scenario_follower_behind_retention_forces_snap() {
    scenario("follower_behind_retention_forces_snap");
}

#[test]
fn scenario_partitioned_old_leader() {
    scenario("partitioned_old_leader");
}

#[test]
fn scenario_duplicated_reordered_accepts() {
    scenario("duplicated_reordered_accepts");
}

#[test]
fn scenario_full_cluster_restart() {
    scenario("full_cluster_restart");
}

/// A bounded set of random fault schedules (CI); `cargo xtask sim` runs more.
#[test]
fn random_schedules_keep_every_invariant() {
    let seeds: u64 = std::env::var("PAXOS_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let mut worst = Duration::ZERO;
    for seed in 0..seeds {
        let mut sim = Sim::with_test_components(SimConfig::chaos(seed));
        match sim.run_steps_then_recover(6_000) {
            Ok(d) => worst = worst.max(d),
            Err(v) => panic!("{v}"),
        }
    }
    println!("{seeds} random schedules passed; worst recovery {worst:?} simulated");
}
