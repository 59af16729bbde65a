//! Runs the deterministic simulator over many seeds with random faults.
//!
//! ```text
//! cargo run --release -p paxos-testkit --example simulate -- --seeds 100 --steps 20000
//! cargo run --release -p paxos-testkit --example simulate -- --seed 42 --steps 20000
//! cargo run --release -p paxos-testkit --example simulate -- --full --seeds 100
//! cargo run --release -p paxos-testkit --example simulate -- --wipes --seeds 100
//! cargo run --release -p paxos-testkit --example simulate -- --groups 16 --seeds 200 --steps 6000
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
//! `--check-rejoin` also fails a run in which a live voter does not follow
//! the leader within 15 election timeouts of recovery (off by default in
//! sweeps while a few known stragglers remain; the tests run it).
//!
//! `--groups G` runs the multi-group simulator instead: G groups on every
//! host, sharing each host's write-ahead log and the network between hosts
//! (host crashes cut the shared log's unsynced tail, in every group at
//! once). It takes `--full`, `--lease-reads` and `--wipes` (a host crash
//! sometimes loses the host's whole disk; its groups restart recovering).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use paxos_core::sim::{MultiConfig, MultiSim, Sim, SimConfig, SimStats, Violation};
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
                // Odd seeds break election ties by a salted order (as a
                // host of many groups does), even ones by node id.
                tiebreak: if seed % 2 == 1 { seed } else { 0 },
                ..ElectionConfig::default()
            })
            .expect("valid election config")
        }),
        Box::new(|| Box::new(ZabPlanner::new(PlannerConfig::default()))),
    )
}

fn full_multi(cfg: MultiConfig) -> MultiSim<FastElection> {
    let seed = cfg.seed;
    MultiSim::new(
        cfg,
        Box::new(move |id, c| {
            FastElection::new(ElectionConfig {
                id,
                voters: c.voters.clone(),
                observers: c.observers.clone(),
                seed: seed.wrapping_mul(1_000_003) ^ id.0 ^ c.group.0.wrapping_mul(0x9E37_79B9),
                // Each group its own tie-break order, as paxos-node does.
                tiebreak: c.group.0,
                ..ElectionConfig::default()
            })
            .expect("valid election config")
        }),
        Box::new(|| Box::new(ZabPlanner::new(PlannerConfig::default()))),
    )
    .expect("a configuration the multi-group simulator models")
}

/// What one multi-group seed did.
#[derive(Default)]
struct MultiRun {
    steps: u64,
    acked: u64,
    min_group_acked: u64,
    reads: u64,
    host_crashes: u64,
    lost_writes: u64,
    partial_tails: u64,
    link_resets: u64,
    snap_installs: u64,
    truncs: u64,
    transfers: u64,
    reconfigs: u64,
    quiesces: u64,
    wakes: u64,
    host_wipes: u64,
}

/// Runs one multi-group seed; returns the worst recovery across groups or
/// the violation (with the failing group's state when `describe`).
fn run_multi(
    full: bool,
    wipes: bool,
    lease: bool,
    groups: usize,
    seed: u64,
    steps: u64,
    describe: bool,
) -> (Result<Duration, String>, MultiRun) {
    fn go<E: paxos_core::Elector + std::fmt::Debug + 'static>(
        mut sim: MultiSim<E>,
        steps: u64,
        describe: bool,
    ) -> (Result<Duration, String>, MultiRun) {
        let r = sim.run_steps_then_recover(steps).map_err(|v: Violation| {
            // "group G: ..." for a safety violation, "liveness: groups
            // [G, ...] ..." for groups that did not recover.
            let group = v
                .what
                .strip_prefix("group ")
                .and_then(|w| w.split(':').next())
                .or_else(|| {
                    v.what
                        .strip_prefix("liveness: groups [")
                        .and_then(|w| w.split([',', ']']).next())
                })
                .and_then(|g| g.trim().parse::<usize>().ok());
            match group {
                Some(g) if describe => format!(
                    "{v}
{}",
                    sim.describe(g)
                ),
                _ => v.to_string(),
            }
        });
        let n = sim.acked_per_group().len();
        let per_group: Vec<&SimStats> = (0..n).map(|g| sim.group_stats(g)).collect();
        let st = sim.stats();
        let run = MultiRun {
            steps: st.steps,
            acked: per_group.iter().map(|s| s.acked).sum(),
            min_group_acked: per_group.iter().map(|s| s.acked).min().unwrap_or(0),
            reads: per_group.iter().map(|s| s.reads).sum(),
            host_crashes: st.host_crashes,
            lost_writes: st.lost_writes,
            partial_tails: st.partial_tails,
            link_resets: st.link_resets,
            snap_installs: per_group.iter().map(|s| s.snap_installs).sum(),
            truncs: per_group.iter().map(|s| s.truncs).sum(),
            transfers: per_group.iter().map(|s| s.transfers).sum(),
            reconfigs: per_group.iter().map(|s| s.reconfigs).sum(),
            quiesces: per_group.iter().map(|s| s.quiesces).sum(),
            wakes: per_group.iter().map(|s| s.wakes).sum(),
            host_wipes: st.host_wipes,
        };
        (r, run)
    }
    let mut cfg = MultiConfig::chaos_with_changes(seed, groups);
    cfg.base.replica.lease_reads |= lease;
    cfg.base.wipes = wipes;
    if full {
        go(full_multi(cfg), steps, describe)
    } else {
        let sim = MultiSim::with_test_components(cfg)
            .expect("a configuration the multi-group simulator models");
        go(sim, steps, describe)
    }
}

/// The `--groups` sweep.
fn multi_main(
    full: bool,
    wipes: bool,
    lease: bool,
    groups: usize,
    seeds: &[u64],
    steps: u64,
) -> ExitCode {
    let started = Instant::now();
    let (mut failed, mut worst) = (Vec::new(), Duration::ZERO);
    let mut total = MultiRun {
        min_group_acked: u64::MAX,
        ..MultiRun::default()
    };
    for (k, &seed) in seeds.iter().enumerate() {
        let (r, run) = run_multi(full, wipes, lease, groups, seed, steps, seeds.len() == 1);
        match r {
            Ok(d) => worst = worst.max(d),
            Err(v) => {
                println!("FAIL {v}");
                failed.push(seed);
            }
        }
        total.steps += run.steps;
        total.acked += run.acked;
        total.min_group_acked = total.min_group_acked.min(run.min_group_acked);
        total.reads += run.reads;
        total.host_crashes += run.host_crashes;
        total.lost_writes += run.lost_writes;
        total.partial_tails += run.partial_tails;
        total.link_resets += run.link_resets;
        total.snap_installs += run.snap_installs;
        total.truncs += run.truncs;
        total.transfers += run.transfers;
        total.reconfigs += run.reconfigs;
        total.quiesces += run.quiesces;
        total.wakes += run.wakes;
        total.host_wipes += run.host_wipes;
        if seeds.len() > 1 && (k + 1) % 10 == 0 {
            eprint!("\r{}/{} seeds, {} failed", k + 1, seeds.len(), failed.len());
        }
    }
    if seeds.len() > 1 {
        eprintln!();
    }
    println!(
        "{} seeds x {} steps x {groups} groups: {} failed; {} steps, {} commands acknowledged (fewest in one group of one seed: {}), {} linearizable reads checked, {} host crashes ({} wiping the disk) losing {} unsynced writes ({} cut inside the tail), {} connection resets, {} TRUNC, {} SNAP installs, {} leader hand-overs and {} membership changes asked, {} groups gone quiet and {} host wakes; worst recovery of any group after faults stopped: {:?} (simulated); wall time {:.1?}",
        seeds.len(),
        steps,
        failed.len(),
        total.steps,
        total.acked,
        total.min_group_acked,
        total.reads,
        total.host_crashes,
        total.host_wipes,
        total.lost_writes,
        total.partial_tails,
        total.link_resets,
        total.truncs,
        total.snap_installs,
        total.transfers,
        total.reconfigs,
        total.quiesces,
        total.wakes,
        worst,
        started.elapsed()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failing seeds: {failed:?}");
        ExitCode::FAILURE
    }
}

/// Runs one seed; returns the recovery time or the violation (with the
/// cluster's state when `describe`), and the run's counters.
fn run_one(
    full: bool,
    wipes: bool,
    lease: bool,
    rejoin: bool,
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
    cfg.check_rejoin = rejoin;
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
            "usage: simulate [--seeds N] [--steps M] [--seed S] [--first F] [--full] [--wipes] [--lease-reads] [--check-rejoin] [--groups G]"
        );
        return ExitCode::SUCCESS;
    }
    let steps = parse(&args, "--steps").unwrap_or(20_000);
    let full = args.iter().any(|a| a == "--full");
    let wipes = args.iter().any(|a| a == "--wipes")
        || std::env::var("PAXOS_SIM_WIPES").is_ok_and(|v| v == "1");
    let lease = args.iter().any(|a| a == "--lease-reads");
    let rejoin = args.iter().any(|a| a == "--check-rejoin");
    let seeds: Vec<u64> = match parse(&args, "--seed") {
        Some(s) => vec![s],
        None => {
            let first = parse(&args, "--first").unwrap_or(0);
            let n = parse(&args, "--seeds").unwrap_or(20);
            (first..first + n).collect()
        }
    };
    if let Some(groups) = parse(&args, "--groups") {
        let groups = usize::try_from(groups).unwrap_or(usize::MAX).max(1);
        return multi_main(full, wipes, lease, groups, &seeds, steps);
    }
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
        let (r, st) = run_one(full, wipes, lease, rejoin, seed, steps, seeds.len() == 1);
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
