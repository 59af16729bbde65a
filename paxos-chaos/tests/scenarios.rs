//! Every chaos scenario, once each with a fixed seed, on real `paxos-node`
//! processes (the binary cargo built next to this test). A scenario this
//! machine cannot run (no network namespaces, no tmpfs) is skipped with a
//! printed reason; one that runs must pass: linearizable history, every
//! acknowledged write read back, one state on every replica, and progress
//! within the stated time after each fault.
//!
//! The scenarios run one at a time (each starts three or five nodes).

#![allow(clippy::print_stdout)]

use paxos_chaos::scenario::{run, RunOptions, Scenario};
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn check(scenario: Scenario) {
    check_with(scenario, 1);
}

fn check_with(scenario: Scenario, groups: u32) {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let options = RunOptions {
        node_binary: paxos_chaos::harness::node_binary().expect("the paxos-node binary"),
        loopback_only: false,
        keep_failed: true,
        groups,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let seed = 1;
    let report = rt.block_on(run(scenario, seed, &options));
    if let Some(why) = &report.skipped {
        println!("SKIPPED {scenario}: {why}");
        return;
    }
    println!(
        "{scenario} ({} groups): {:?} calls, {} faults, recoveries {:?}, {:.1} s; {}",
        report.groups,
        report.counts,
        report.faults,
        report.recoveries,
        report.elapsed.as_secs_f64(),
        report.notes.join("; ")
    );
    assert!(
        report.passed(),
        "{scenario} seed {seed} ({} groups) failed:\n{}replay: {}",
        report.groups,
        report.problems(),
        report.replay_command()
    );
}

macro_rules! scenario_tests {
    ($($name:ident => $s:expr,)*) => {
        $(
            #[test]
            fn $name() {
                check($s);
            }
        )*
    };
}

scenario_tests! {
    kill_leader => Scenario::KillLeader,
    kill_follower => Scenario::KillFollower,
    kill_majority => Scenario::KillMajority,
    kill_all => Scenario::KillAll,
    pause_leader => Scenario::PauseLeader,
    pause_leader_with_lease_reads => Scenario::PauseLeaderLease,
    isolate_leader => Scenario::IsolateLeader,
    partition_minority => Scenario::PartitionMinority,
    partition_majority => Scenario::PartitionMajority,
    bridge => Scenario::Bridge,
    one_way_loss => Scenario::OneWay,
    flapping_partitions => Scenario::Flapping,
    lossy_links => Scenario::LossyLinks,
    quorum_loss => Scenario::QuorumLoss,
    constrained_election => Scenario::ConstrainedElection,
    constrained_election_after_compaction => Scenario::ConstrainedCompacted,
    chained => Scenario::Chained,
    wipe_follower => Scenario::WipeFollower,
    corrupt_follower => Scenario::CorruptFollower,
    disk_full => Scenario::DiskFull,
    slow_disk_leader => Scenario::SlowDiskLeader,
    clock_jump => Scenario::ClockJump,
    replace_killed_follower => Scenario::ReplaceKilledFollower,
    grow_and_shrink => Scenario::GrowAndShrink,
    transfer_under_load => Scenario::TransferUnderLoad,
    split_merge => Scenario::SplitMerge,
}

/// A node's death with nodes of many groups: every group must commit
/// again after the kill and after the restart, and the restarted node must
/// follow or lead every group. A short run (tens of seconds); `cargo xtask
/// chaos --groups N` runs every scenario so.
#[test]
fn kill_leader_with_many_groups() {
    check_with(Scenario::KillLeader, 100);
}

/// Every scenario has a test above.
#[test]
fn every_scenario_has_a_test() {
    let here = include_str!("scenarios.rs");
    for s in Scenario::ALL {
        let needle = format!("Scenario::{s:?},");
        assert!(here.contains(&needle), "no test runs {s}");
    }
}
