//! A node of a cluster of 10 000 groups SIGKILLed and restarted (issue
//! 16): three nodes, every group led, acknowledged writes spread over the
//! groups, SIGKILL of the node leading the most groups, then every group
//! must commit a write again, the node is restarted and must follow or
//! lead every group, and every acknowledged write must read back.
//!
//! Ignored by default: it runs several 10 000-group processes (about 30 s
//! on two cores, far longer on a debug build). Run it on a release
//! build, alone (the binary path must be absolute: the test runs in the
//! crate's directory):
//!
//! ```sh
//! cargo build --release -p paxos-kv --bins
//! PAXOS_NODE_BIN=$PWD/target/release/paxos-node cargo test --release -p paxos-chaos \
//!     --test many_groups -- --ignored --nocapture
//! ```
//!
//! `PAXOS_CHAOS_GROUPS` changes the group count. The figures (time to
//! elect every group, to commit in every group after the kill, to rejoin
//! every group after the restart) are printed, never asserted; the bounds
//! below only end a run that stalls.

#![allow(clippy::print_stderr)]

use std::time::Instant;

use paxos_chaos::harness::{node_binary, ChaosCluster, ClusterOptions, NetMode};
use paxos_chaos::scenario::recovery_limit;

/// Acknowledged writes made before the kill.
const KEYS: u64 = 10_000;

#[test]
#[ignore = "minutes on two cores: run with --ignored on a release build (see the file's doc)"]
fn a_node_of_ten_thousand_groups_killed_and_restarted() {
    let groups: u32 = std::env::var("PAXOS_CHAOS_GROUPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut options = ClusterOptions::new(3, node_binary().expect("the paxos-node binary"));
    options.net = NetMode::Loopback;
    options.groups = groups;
    // Stops only a run that stalls: start-up of every group, elections of
    // the groups the dead node led, the restarted node's start-up.
    let bound = recovery_limit(groups) * 3;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let started = Instant::now();
        let mut c =
            tokio::task::block_in_place(|| ChaosCluster::start(options)).expect("cluster starts");
        let answered = started.elapsed();
        let led = match c.wait_all_groups_led(bound).await {
            Ok(led) => led,
            Err(e) => {
                let summaries = c.statuses().await;
                let kept = c.keep_dir();
                panic!(
                    "not every group elected a leader: {e:#}\nsummaries: {summaries:?}\nlogs and data kept in {}",
                    kept.display()
                );
            }
        };
        eprintln!(
            "{groups} groups: nodes answered after {:.1} s, every group led after {:.1} s; groups led per node {led:?}",
            answered.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let written = c.write_keys("before-kill", KEYS, bound).await;
        let acked = written.iter().filter(|w| w.acknowledged).count();
        eprintln!(
            "{acked} of {KEYS} writes acknowledged in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        assert!(acked > 0, "no write was acknowledged before the kill");

        let victim = c.leader(bound).await.expect("a leader");
        let before = c.statuses().await;
        let victim_led = before
            .get(&victim)
            .and_then(|v| v["led"].as_u64())
            .unwrap_or(0);
        c.cluster().kill(victim).expect("SIGKILL");
        let recovered = c
            .wait_progress(bound, "after the kill")
            .await
            .expect("every group commits a write again after the kill");
        eprintln!(
            "SIGKILL of node {victim}, which led {victim_led} of {groups} groups: every group committed a write again {:.2} s later",
            recovered.as_secs_f64()
        );

        c.restart(victim).expect("restart");
        let rejoined = c
            .wait_rejoined(victim, bound)
            .await
            .expect("the restarted node follows or leads every group");
        eprintln!(
            "node {victim} restarted: it follows or leads all {groups} groups {:.2} s after the restart",
            rejoined.as_secs_f64()
        );
        let after = c.statuses().await;
        for (id, v) in &after {
            let held = v["led"].as_u64().unwrap_or(0) + v["following"].as_u64().unwrap_or(0);
            eprintln!(
                "node {id}: led {} following {} looking {}",
                v["led"], v["following"], v["looking"]
            );
            assert_eq!(
                held,
                u64::from(groups),
                "node {id} does not follow or lead every group: {v}"
            );
        }
        c.wait_progress(bound, "after the restart")
            .await
            .expect("every group commits with the node back");

        let t = Instant::now();
        let problems = c.read_back(&written).await.expect("the read-back runs");
        eprintln!(
            "read back {} writes in {:.1} s: {} problems",
            written.len(),
            t.elapsed().as_secs_f64(),
            problems.len()
        );
        assert!(
            problems.is_empty(),
            "acknowledged writes lost or foreign values after the kill: {problems:?}"
        );
    });
}
