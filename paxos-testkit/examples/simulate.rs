//! Runs the deterministic simulator over many seeds with random faults.
//!
//! ```text
//! cargo run --release -p paxos-testkit --example simulate -- --seeds 100 --steps 20000
//! cargo run --release -p paxos-testkit --example simulate -- --seed 42 --steps 20000
//! cargo run --release -p paxos-testkit --example simulate -- --full --seeds 100
//! cargo run --release -p paxos-testkit --example simulate -- --wipes --seeds 100
//! PAXOS_SIM_WIPES=1 cargo xtask sim
//! ```
//!
//! By default the nodes use the simulator's test-only elector and planner;
//! `--full` runs the toolkit's own `paxos-election` and `paxos-snapshot`.
//!
//! Each seed runs `steps` events under random faults (drops, duplicates,
//! delays, partitions, crashes), then stops the faults and measures how
//! long the cluster takes to commit again. A failure prints its seed, and
//! `--seed S` replays it exactly. `--wipes` (or `PAXOS_SIM_WIPES=1` in the
//! environment) adds wiping crashes to the mix: a voter loses its whole
//! disk and restarts recovering. `--lease-reads` serves reads from leader
//! leases (the read check then also covers the lease rules).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use paxos_core::sim::{Sim, SimConfig, SimStats, Violation};
use paxos_election::{ElectionConfig, FastElection};
use paxos_snapshot::{PlannerConfig, ZabPlanner};

fn full_sim(cfg: SimConfig) -> Sim<FastElection> {
    let seed = cfg.seed;
    Sim::new(
        cfg,
        Box::new(move |id, c| {
            FastElection::new(ElectionConfig {
                id,
                voters: c.voters.clone(),
                observers: c.observers.clone(),
                seed: seed.wrapping_mul(1_000_003) ^ id.0,
                ..ElectionConfig::default()
            })
            .expect("valid election config")
        }),
        Box::new(|| Box::new(ZabPlanner::new(PlannerConfig::default()))),
    )
}

/// Runs one seed; returns the recovery time or the violation (with the
/// cluster's state when `describe`), and the run's counters.
fn run_one(
    full: bool,
    wipes: bool,
    lease: bool,
    seed: u64,
    steps: u64,
    describe: bool,
) -> (Result<Duration, String>, SimStats) {
    fn go<E: paxos_core::Elector + std::fmt::Debug>(
        mut sim: Sim<E>,
        steps: u64,
        describe: bool,
    ) -> (Result<Duration, String>, SimStats) {
        let r = sim.run_steps_then_recover(steps).map_err(|v: Violation| {
            if describe {
                format!("{v}\n{}", sim.describe())
            } else {
                v.to_string()
            }
        });
        (r, sim.stats().clone())
    }
    let mut cfg = SimConfig::chaos(seed);
    cfg.wipes = wipes;
    cfg.replica.lease_reads |= lease;
    if full {
        go(full_sim(cfg), steps, describe)
    } else {
        go(Sim::with_test_components(cfg), steps, describe)
    }
}

fn parse(args: &[String], name: &str) -> Option<u64> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).and_then(|v| v.parse().ok())
}

fn main() -> ExitCode {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "usage: simulate [--seeds N] [--steps M] [--seed S] [--first F] [--full] [--wipes] [--lease-reads]"
        );
        return ExitCode::SUCCESS;
    }
    let steps = parse(&args, "--steps").unwrap_or(20_000);
    let full = args.iter().any(|a| a == "--full");
    let wipes = args.iter().any(|a| a == "--wipes")
        || std::env::var("PAXOS_SIM_WIPES").is_ok_and(|v| v == "1");
    let lease = args.iter().any(|a| a == "--lease-reads");
    let seeds: Vec<u64> = match parse(&args, "--seed") {
        Some(s) => vec![s],
        None => {
            let first = parse(&args, "--first").unwrap_or(0);
            let n = parse(&args, "--seeds").unwrap_or(20);
            (first..first + n).collect()
        }
    };
    let started = Instant::now();
    let (mut failed, mut worst, mut total_acked, mut total_steps) =
        (Vec::new(), Duration::ZERO, 0u64, 0u64);
    let (mut truncs, mut snaps, mut fetches, mut crashes, mut reads) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut wiped, mut readmitted) = (0u64, 0u64);
    let (mut transfers, mut handed_off, mut nominee_won, mut aborted) = (0u64, 0u64, 0u64, 0u64);
    let (mut reconfigs, mut reconfigs_committed) = (0u64, 0u64);
    let (mut quiesces, mut wakes) = (0u64, 0u64);
    for (k, &seed) in seeds.iter().enumerate() {
        let (r, st) = run_one(full, wipes, lease, seed, steps, seeds.len() == 1);
        match r {
            Ok(d) => worst = worst.max(d),
            Err(v) => {
                println!("FAIL {v}");
                failed.push(seed);
            }
        }
        total_acked += st.acked;
        total_steps += st.steps;
        truncs += st.truncs;
        snaps += st.snap_installs;
        fetches += st.fetches;
        crashes += st.crashes;
        reads += st.reads;
        wiped += st.wipes;
        readmitted += st.readmissions;
        transfers += st.transfers;
        handed_off += st.handed_off;
        nominee_won += st.nominee_won;
        aborted += st.transfers_aborted;
        reconfigs += st.reconfigs;
        reconfigs_committed += st.reconfigs_committed;
        quiesces += st.quiesces;
        wakes += st.wakes;
        if seeds.len() > 1 && (k + 1) % 10 == 0 {
            eprint!("\r{}/{} seeds, {} failed", k + 1, seeds.len(), failed.len());
        }
    }
    if seeds.len() > 1 {
        eprintln!();
    }
    println!(
        "{} seeds x {} steps: {} failed; {} steps, {} commands acknowledged, {} linearizable reads checked, {} crashes, {} TRUNC, {} SNAP installs, {} fetches; worst recovery after faults stopped: {:?} (simulated); wall time {:.1?}",
        seeds.len(),
        steps,
        failed.len(),
        total_steps,
        total_acked,
        reads,
        crashes,
        truncs,
        snaps,
        fetches,
        worst,
        started.elapsed()
    );
    println!(
        "leader hand-overs: {transfers} asked, {handed_off} handed off ({nominee_won} won by the nominee), {aborted} aborted"
    );
    println!(
        "membership changes: {reconfigs} proposed, {reconfigs_committed} committed and acknowledged"
    );
    println!("quiescence: {quiesces} QUIESCE delivered, {wakes} wakes after a lost node or link");
    if wipes {
        println!("{wiped} voters wiped and restarted recovering, {readmitted} readmissions");
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failing seeds: {failed:?}");
        ExitCode::FAILURE
    }
}
