//! The end-to-end benchmark: local clusters of `paxos-node` processes on
//! loopback, each node with its WAL on disk and fsync on, driven by the
//! closed-loop load generator; then a failover under load (the leader killed
//! with SIGKILL) with a check that no acknowledged write was lost.
//!
//! Results go to `<results>/e2e.json` (headline figures for `cargo xtask
//! bench`), `<results>/e2e-full.json` (every run) and `<results>/e2e-report.html`
//! (a self-contained page with SVG plots). `--quick` is the CI smoke run: one
//! 3-node cluster, short runs, the same correctness checks.
//!
//! Clients speak TLS with a client certificate, as any client must.
//! `--plaintext-baseline` also starts a cluster of the same size with
//! `--insecure-plaintext-clients` and runs every write point on it right
//! beside the same point over TLS, each going first in turn (the idle
//! cluster only heartbeats meanwhile): the figures "TLS cost" put the two
//! side by side.
//!
//! The groups phase (`--groups 1,16,...`; `paxos-e2e --only groups` runs it
//! alone) measures nodes hosting many Paxos groups: writes/s with the
//! groups' leaders spread over the nodes and all on one node, CPU per
//! write, the idle cost of a group and the recovery of every group after
//! a kill; see `e2e/groups.rs`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Parser;
use paxos_bench::loadgen::{self, LoadResult, LoadSpec, Workload};
use paxos_kv::auth::Role;
use paxos_kv::client::Client;
use paxos_kv::client_proto::{AdminRequest, ReadMode};
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../e2e/groups.rs"]
mod groups;
#[path = "../e2e/membership.rs"]
mod membership;
#[path = "../e2e/split.rs"]
mod split;

/// The group counts of the groups phase unless `--groups` says otherwise.
const DEFAULT_GROUP_COUNTS: &str = "1,16,256,4096,10000";

#[derive(Parser, Debug)]
#[command(
    name = "paxos-e2e",
    about = "End-to-end benchmark of the reference key-value cluster"
)]
struct Args {
    /// CI smoke run: 3 nodes, short runs, same checks.
    #[arg(long)]
    quick: bool,
    /// Also measure etcd and ZooKeeper (needs the `compare` feature and their binaries).
    #[arg(long)]
    compare: bool,
    /// Cluster sizes.
    #[arg(long, value_delimiter = ',', default_value = "3,5")]
    nodes: Vec<u64>,
    /// Client concurrency levels.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256,512")]
    concurrency: Vec<usize>,
    /// Value sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    values: Vec<usize>,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Tokio worker threads of the load generator (every system's clients);
    /// 0 runs it on one thread. On a machine whose cores the cluster under
    /// test shares, one thread spends far less on cross-thread wake-ups:
    /// 3 nodes at 256 clients measured about 108k writes/s driven from one
    /// thread against 80k from two workers.
    #[arg(long, default_value_t = 0)]
    client_threads: usize,
    /// Also measure every write point against a cluster whose client ports
    /// speak plain TCP (`--insecure-plaintext-clients`), beside TLS.
    #[arg(long)]
    plaintext_baseline: bool,
    /// State loaded before a new member joins, for the catch-up figure
    /// (MiB; 0 skips it). `--quick` uses 16.
    #[arg(long, default_value_t = 1024)]
    catchup_mib: u64,
    /// Group counts of the groups phase (nodes hosting many Paxos groups,
    /// `paxos-node run --groups G`), comma-separated; empty or `none`
    /// skips the phase. `--quick` runs 1 and 16 unless given.
    #[arg(long, default_value = DEFAULT_GROUP_COUNTS)]
    groups: String,
    /// Seconds of the groups phase's idle-cost window.
    #[arg(long, default_value_t = 10.0)]
    groups_idle_seconds: f64,
    /// Longest wait, in seconds, for every group to have a leader (after a
    /// start or a kill) in the groups phase; a count that takes longer is
    /// reported as not elected.
    #[arg(long, default_value_t = 120)]
    groups_elect_bound: u64,
    /// More arguments for every node of the groups phase, e.g.
    /// `--groups-node-arg=--inline-sync-bytes=0` (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    groups_node_arg: Vec<String>,
    /// Keys in the group that the split phase splits, one cluster per
    /// size, comma-separated (`--only split`).
    #[arg(long, default_value = "100000,1000000")]
    split_keys: String,
    /// Run only this phase: `groups` skips the write points, the transfer,
    /// failover, membership, catch-up and comparison phases; `split` runs
    /// the split phase alone (it runs only so), its results in
    /// `e2e-split.json`.
    #[arg(long, value_enum)]
    only: Option<Phase>,
    /// Where results go (default: $PAXOS_BENCH_RESULTS or target/bench-results).
    #[arg(long)]
    results: Option<PathBuf>,
}

/// A phase that can be run alone (`--only`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Many groups per node.
    Groups,
    /// How long a split takes to move a large group's keys.
    Split,
}

/// The group counts named by `--groups` (empty: skip the phase).
fn group_counts(arg: &str) -> Result<Vec<u32>> {
    let arg = arg.trim();
    if arg.is_empty() || arg == "none" {
        return Ok(Vec::new());
    }
    arg.split(',')
        .map(|g| {
            g.trim()
                .parse::<u32>()
                .ok()
                .filter(|&g| (1..=paxos_kv::node::MAX_GROUPS).contains(&g))
                .with_context(|| {
                    format!(
                        "--groups: {g:?} is not a group count (1 to {})",
                        paxos_kv::node::MAX_GROUPS
                    )
                })
        })
        .collect()
}

#[derive(Debug, Clone)]
struct Run {
    nodes: u64,
    workload: &'static str,
    value_bytes: usize,
    concurrency: usize,
    result: LoadResult,
    /// CPU microseconds per acknowledged operation: (the cluster's node
    /// processes, this load generator).
    cpu_us_per_op: (f64, f64),
}

impl Run {
    fn to_json(&self) -> Value {
        json!({
            "nodes": self.nodes,
            "workload": self.workload,
            "value_bytes": self.value_bytes,
            "concurrency": self.concurrency,
            "ops": self.result.ok,
            "errors": self.result.errors,
            "seconds": self.result.elapsed.as_secs_f64(),
            "ops_per_sec": self.result.throughput(),
            "p50_us": self.result.quantile_us(0.5),
            "p99_us": self.result.quantile_us(0.99),
            "p999_us": self.result.quantile_us(0.999),
            "node_cpu_us_per_op": self.cpu_us_per_op.0,
            "client_cpu_us_per_op": self.cpu_us_per_op.1,
        })
    }
}

fn node_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let dir = exe.parent().context("executable has no directory")?;
    let bin = dir.join("paxos-node");
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p paxos-kv --bins`",
            bin.display()
        );
    }
    Ok(bin)
}

fn results_dir(args: &Args) -> PathBuf {
    if let Some(r) = &args.results {
        return r.clone();
    }
    if let Ok(r) = std::env::var("PAXOS_BENCH_RESULTS") {
        return PathBuf::from(r);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results")
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.nodes = vec![3];
        args.concurrency = vec![16, 128];
        args.values = vec![100];
        args.seconds = 2.0;
        args.catchup_mib = args.catchup_mib.min(16);
        if args.groups == DEFAULT_GROUP_COUNTS {
            args.groups = "1,16".into();
        }
        args.groups_idle_seconds = args.groups_idle_seconds.min(3.0);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = if args.client_threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.client_threads)
            .enable_all()
            .build()?
    };
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let results = results_dir(&args);
    std::fs::create_dir_all(&results).with_context(|| format!("creating {}", results.display()))?;
    let work = tempfile::Builder::new()
        .prefix("paxos-e2e-")
        .tempdir_in(std::env::temp_dir())
        .context("creating a work directory")?;
    let bin = node_binary()?;
    let duration = Duration::from_secs_f64(args.seconds);
    let mut runs: Vec<Run> = Vec::new();
    let mut plaintext_runs: Vec<Run> = Vec::new();
    let mut failovers: Vec<Value> = Vec::new();
    let mut run_id = 1u64;
    if args.only == Some(Phase::Split) {
        let sizes = args
            .split_keys
            .split(',')
            .map(|n| {
                n.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| (1..=100_000_000).contains(&n))
                    .with_context(|| format!("--split-keys: {n:?} is not a key count (1 to 10^8)"))
            })
            .collect::<Result<Vec<u64>>>()?;
        let opts = split::SplitOptions {
            sizes,
            bound: Duration::from_secs(args.groups_elect_bound.max(1)),
        };
        let phase = split::split_phase(work.path(), &bin, run_id, &opts).await?;
        let path = results.join("e2e-split.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&phase)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("results: {}", path.display());
        let lost: u64 = phase["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r["lost"].as_u64().unwrap_or(0))
            .sum();
        if lost > 0 {
            bail!("{lost} keys written before a split did not read back after it");
        }
        return Ok(());
    }
    let group_counts = group_counts(&args.groups)?;
    let only_groups = args.only == Some(Phase::Groups);
    let nodes: &[u64] = if only_groups { &[] } else { &args.nodes };

    for &n in nodes {
        println!("== {n} nodes");
        let mut spec = ClusterSpec::new(n, work.path().join(format!("cluster-{n}")), bin.clone());
        spec.clients.push((ADMIN_CLIENT.into(), Role::Admin));
        let cluster = LocalCluster::start(spec)?;
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
        println!("leader: node {leader}");
        // Warm the WAL files and the connections before measuring.
        warm_up(&cluster, run_id).await;
        run_id += 1;
        let plain = if args.plaintext_baseline {
            let mut spec = ClusterSpec::new(
                n,
                work.path().join(format!("cluster-{n}-plaintext")),
                bin.clone(),
            );
            spec.insecure_plaintext_clients = true;
            let plain = LocalCluster::start(spec)?;
            let leader = plain.wait_for_leader(Duration::from_secs(20)).await?;
            println!("plaintext baseline cluster: leader node {leader}");
            warm_up(&plain, run_id).await;
            run_id += 1;
            Some(plain)
        } else {
            None
        };
        for &value_bytes in &args.values {
            // Every write level, then reads at the highest concurrency.
            let reads_at = *args.concurrency.last().unwrap_or(&16);
            let points = args
                .concurrency
                .iter()
                .map(|&c| (Workload::Writes, c))
                .chain(std::iter::once((Workload::Reads, reads_at)));
            for (index, (workload, concurrency)) in points.enumerate() {
                let kind = match workload {
                    Workload::Writes => "writes",
                    Workload::Reads => "reads",
                };
                // With the plaintext baseline, the two runs of a write point
                // take turns going first: a run leaves write-back work on the
                // shared disk that slows the run after it.
                let baseline = plain.as_ref();
                let plain_first = baseline.is_some() && index % 2 == 1;
                let mut order = vec![(&cluster, false)];
                if let Some(p) = baseline {
                    order.insert(usize::from(!plain_first), (p, true));
                }
                for (target, is_plain) in order {
                    let cpu_before = (target.cpu_time(), own_cpu_time());
                    let r = loadgen::run(LoadSpec::new(
                        target.client_addrs(),
                        target.client_security(),
                        workload,
                        concurrency,
                        value_bytes,
                        duration,
                        run_id,
                    ))
                    .await;
                    run_id += 1;
                    let ops = r.ok.max(1) as f64;
                    let cpu_us_per_op = (
                        target.cpu_time().saturating_sub(cpu_before.0).as_secs_f64() * 1e6 / ops,
                        own_cpu_time().saturating_sub(cpu_before.1).as_secs_f64() * 1e6 / ops,
                    );
                    print_run(
                        match (is_plain, workload) {
                            (false, _) => kind,
                            (true, Workload::Writes) => "plain",
                            (true, Workload::Reads) => "plain reads",
                        },
                        n,
                        value_bytes,
                        concurrency,
                        &r,
                    );
                    println!(
                        "        CPU per op: nodes {:.1} us, load generator {:.1} us",
                        cpu_us_per_op.0, cpu_us_per_op.1
                    );
                    if workload == Workload::Writes {
                        check_sample(target, &r).await?;
                    }
                    let run = Run {
                        nodes: n,
                        workload: kind,
                        value_bytes,
                        concurrency,
                        result: r,
                        cpu_us_per_op,
                    };
                    if is_plain {
                        plaintext_runs.push(run);
                    } else {
                        runs.push(run);
                    }
                }
            }
        }
        drop(plain);
        if n == 3 {
            let t = transfer(
                &cluster,
                run_id,
                duration,
                *args.values.first().unwrap_or(&100),
            )
            .await?;
            run_id += 1;
            failovers.push(t);
            let f = failover(
                cluster,
                run_id,
                duration,
                *args.values.first().unwrap_or(&100),
            )
            .await?;
            run_id += 1;
            failovers.push(f);
            // Membership changes under half the peak of the first value
            // size, at the concurrency of that peak.
            let value_bytes = *args.values.first().unwrap_or(&100);
            let peak = runs
                .iter()
                .filter(|r| r.workload == "writes" && r.nodes == 3 && r.value_bytes == value_bytes)
                .max_by(|a, b| a.result.throughput().total_cmp(&b.result.throughput()));
            if let Some(peak) = peak {
                let m = membership::membership_changes(
                    work.path(),
                    &bin,
                    run_id,
                    value_bytes,
                    peak.result.throughput(),
                    peak.concurrency,
                    args.quick,
                )
                .await?;
                run_id += 1;
                failovers.push(m);
            }
            if args.catchup_mib > 0 {
                let c = membership::catch_up(work.path(), &bin, run_id, args.catchup_mib).await?;
                run_id += 1;
                failovers.push(c);
            }
        }
    }

    let mut groups_result = None;
    if !group_counts.is_empty() {
        let opts = groups::GroupsOptions {
            counts: group_counts,
            window: duration,
            idle: Duration::from_secs_f64(args.groups_idle_seconds.max(0.5)),
            elect_bound: Duration::from_secs(args.groups_elect_bound.max(1)),
            node_args: args.groups_node_arg.clone(),
        };
        groups_result = Some(groups::groups_phase(work.path(), &bin, run_id, &opts).await?);
    } else if only_groups {
        bail!("--only groups with no group counts (--groups)");
    }

    let mut compare_rows: Vec<Value> = Vec::new();
    if args.compare && !only_groups {
        compare_rows = compare(&args, work.path()).await;
    }

    write_results(
        &results,
        &runs,
        &plaintext_runs,
        &failovers,
        &compare_rows,
        groups_result.as_ref(),
    )?;
    let lost: u64 = failovers
        .iter()
        .map(|f| f["lost_writes"].as_u64().unwrap_or(0))
        .sum();
    if lost > 0 {
        bail!("{lost} acknowledged writes were lost");
    }
    Ok(())
}

/// CPU time this process (the load generator) has used so far.
fn own_cpu_time() -> Duration {
    paxos_testkit::cluster::process_cpu_time(std::process::id()).unwrap_or_default()
}

fn print_run(kind: &str, n: u64, value_bytes: usize, concurrency: usize, r: &LoadResult) {
    println!(
        "{kind:>6} nodes={n} value={value_bytes}B clients={concurrency:>4}: {:>9.0} ops/s  p50 {:>7.0} us  p99 {:>7.0} us  p99.9 {:>7.0} us  errors {}",
        r.throughput(),
        r.quantile_us(0.5),
        r.quantile_us(0.99),
        r.quantile_us(0.999),
        r.errors
    );
}

async fn warm_up(cluster: &LocalCluster, run_id: u64) {
    let _ = loadgen::run(LoadSpec::new(
        cluster.client_addrs(),
        cluster.client_security(),
        Workload::Writes,
        64,
        1024,
        Duration::from_secs(1),
        run_id,
    ))
    .await;
}

/// Reads back a sample of a run's acknowledged writes (linearizable reads).
async fn check_sample(cluster: &LocalCluster, r: &LoadResult) -> Result<()> {
    let client = Client::new(
        cluster.client_addrs(),
        cluster.client_security(),
        u64::MAX - 1,
        Duration::from_secs(5),
    );
    let step = (r.acked.len() / 50).max(1);
    for (key, value) in r.acked.iter().step_by(step) {
        let got = client.get(key.clone(), ReadMode::Linearizable).await?;
        if got.as_ref() != Some(value) {
            // Say where the value is (and is not) before failing.
            let mut seen = Vec::new();
            for (id, m) in cluster.members() {
                let c = Client::new(
                    vec![m.client],
                    cluster.client_security(),
                    u64::MAX - 3,
                    Duration::from_secs(2),
                );
                let stale = c.get(key.clone(), ReadMode::Stale).await;
                seen.push(format!("node {id}: {stale:?}"));
            }
            bail!(
                "acknowledged write of {key:?} reads back as {got:?} (stale reads: {}; statuses: {:?})",
                seen.join("; "),
                cluster.statuses().await
            );
        }
    }
    Ok(())
}

/// Kills the leader under load and measures the time until a write commits
/// again; then checks every acknowledged write.
/// The principal the bench administers its cluster with.
const ADMIN_CLIENT: &str = "ops";

/// The load of the transfer and failover phases: 32 writers, with a
/// request timeout that rides through an election.
fn writers_under_a_fault(
    cluster: &LocalCluster,
    value_bytes: usize,
    duration: Duration,
    run_id: u64,
) -> LoadSpec {
    let mut spec = LoadSpec::new(
        cluster.client_addrs(),
        cluster.client_security(),
        Workload::Writes,
        32,
        value_bytes,
        duration,
        run_id,
    );
    spec.timeout = Duration::from_secs(10);
    spec
}

/// A leader transfer under load: 32 writers run while the leader hands
/// over to a follower; a probe writing one command at a time records the
/// longest gap between its acknowledgements around the hand-over.
async fn transfer(
    cluster: &LocalCluster,
    run_id: u64,
    duration: Duration,
    value_bytes: usize,
) -> Result<Value> {
    println!("== leader transfer: 3 nodes, under load");
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let target = cluster
        .ids()
        .into_iter()
        .find(|n| *n != leader)
        .context("a follower")?;
    let addrs = cluster.client_addrs();
    let run_for = duration.max(Duration::from_secs(3));
    let load = tokio::spawn(loadgen::run(writers_under_a_fault(
        cluster,
        value_bytes,
        run_for,
        run_id,
    )));
    let probe = Client::new(
        addrs.clone(),
        cluster.client_security(),
        (run_id << 20) | 0xFFFFE,
        Duration::from_secs(5),
    );
    let admin = Client::new(
        addrs,
        cluster.client_security_for(ADMIN_CLIENT)?,
        (run_id << 20) | 0xFFFFD,
        Duration::from_secs(5),
    );
    let window = run_for / 3;
    tokio::time::sleep(window).await;
    // The probe writes from one window before the hand-over to one after.
    let probing = tokio::spawn(async move {
        let started = Instant::now();
        let mut last = Instant::now();
        let mut longest = Duration::ZERO;
        let mut acked = 0u64;
        // Bounded by the count and the time.
        for n in 0..1_000_000u64 {
            if started.elapsed() > window * 2 {
                break;
            }
            let key = Bytes::from(format!("transfer-probe/{run_id}/{n}"));
            if probe.put(key, Bytes::from_static(b"p")).await.is_ok() {
                longest = longest.max(last.elapsed());
                last = Instant::now();
                acked += 1;
            }
        }
        (longest, acked)
    });
    tokio::time::sleep(window / 2).await;
    let asked = Instant::now();
    let answer = admin
        .admin(AdminRequest::TransferLeader { to: target })
        .await
        .context("leader transfer")?;
    let handed_over = asked.elapsed();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let (longest_gap, probe_acks) = probing.await.context("probe task")?;
    let load = load.await.context("load task")?;
    println!(
        "leader {leader} handed over to {target} in {handed_over:?} ({answer}); now leading: {new_leader}; \
         longest gap between a probe's commits {longest_gap:?} ({probe_acks} probe writes); {} writes acknowledged",
        load.ok
    );
    Ok(json!({
        "kind": "leader transfer",
        "nodes": 3,
        "from": leader,
        "to": target,
        "new_leader": new_leader,
        "hand_over_ms": handed_over.as_secs_f64() * 1e3,
        "longest_commit_gap_ms": longest_gap.as_secs_f64() * 1e3,
        "probe_writes": probe_acks,
        "acked_writes": load.ok,
    }))
}

async fn failover(
    mut cluster: LocalCluster,
    run_id: u64,
    duration: Duration,
    value_bytes: usize,
) -> Result<Value> {
    println!("== failover: 3 nodes, leader killed with SIGKILL under load");
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let addrs = cluster.client_addrs();
    let load = tokio::spawn(loadgen::run(writers_under_a_fault(
        &cluster,
        value_bytes,
        duration.max(Duration::from_secs(3)),
        run_id,
    )));
    tokio::time::sleep(duration.max(Duration::from_secs(3)) / 3).await;
    // A probe writes with a short timeout until a write commits again. Its
    // session is opened before the kill, so that writes it loses during the
    // failover are mere gaps in a session the cluster knows.
    let probe = Arc::new(Client::new(
        addrs
            .iter()
            .copied()
            .filter(|a| *a != cluster.members()[&leader].client)
            .collect(),
        cluster.client_security(),
        (run_id << 20) | 0xFFFFF,
        Duration::from_millis(200),
    ));
    probe
        .put(
            Bytes::from(format!("failover-probe/{run_id}/open")),
            Bytes::from_static(b"p"),
        )
        .await
        .context("opening the failover probe's session")?;
    cluster.kill(leader)?;
    let killed_at = Instant::now();
    let mut recovered = None;
    for n in 0..200u64 {
        let key = Bytes::from(format!("failover-probe/{run_id}/{n}"));
        if probe.put(key, Bytes::from_static(b"p")).await.is_ok() {
            recovered = Some(killed_at.elapsed());
            break;
        }
    }
    let load = load.await.context("load task")?;
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let failover_ms = recovered.map(|d| d.as_secs_f64() * 1e3);
    println!(
        "leader {leader} killed; new leader {new_leader}; first commit after {:?} ms; {} writes acknowledged during the run",
        failover_ms, load.ok
    );
    // Every acknowledged write must be readable from the new leader.
    let checker = Arc::new(Client::new(
        addrs.clone(),
        cluster.client_security(),
        u64::MAX - 2,
        Duration::from_secs(5),
    ));
    let acked = Arc::new(load.acked.clone());
    let lost = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let unverified = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    let workers = 32usize;
    for w in 0..workers {
        let (checker, acked, lost, unverified) = (
            checker.clone(),
            acked.clone(),
            lost.clone(),
            unverified.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for (key, value) in acked.iter().skip(w).step_by(workers) {
                // A read error is not a loss: retry, and count what never
                // answered separately.
                let mut outcome = None;
                for _ in 0..3 {
                    if let Ok(v) = checker.get(key.clone(), ReadMode::Linearizable).await {
                        outcome = Some(v);
                        break;
                    }
                }
                let counter = match outcome {
                    Some(Some(v)) if v == *value => continue,
                    Some(_) => &lost,
                    None => &unverified,
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.context("check task")?;
    }
    let lost = lost.load(std::sync::atomic::Ordering::Relaxed);
    let unverified = unverified.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "checked {} acknowledged writes: {lost} lost, {unverified} could not be read",
        acked.len()
    );
    if unverified > 0 {
        bail!("{unverified} acknowledged writes could not be read back after the failover");
    }
    // Bring the killed node back and let it catch up.
    cluster.start_node(leader)?;
    Ok(json!({
        "kind": "failover",
        "nodes": 3,
        "killed_leader": leader,
        "new_leader": new_leader,
        "failover_ms": failover_ms,
        "acked_writes": acked.len(),
        "lost_writes": lost,
        "election_timeout_ms": 300,
        "heartbeat_ms": 50,
    }))
}

#[cfg(feature = "compare")]
async fn compare(args: &Args, work: &Path) -> Vec<Value> {
    use paxos_bench::compare::{run_comparison, CompareOptions};
    let mut opts = CompareOptions::new(work.join("compare"));
    opts.concurrency = args.concurrency.clone();
    opts.value_bytes = args.values.clone();
    opts.duration = Duration::from_secs_f64(args.seconds);
    match run_comparison(opts).await {
        Ok(report) => {
            for s in &report.skipped {
                println!("{} skipped: {}", s.system.name(), s.reason);
            }
            report
                .rows
                .iter()
                .map(|row| {
                    print_run(
                        row.system.name(),
                        3,
                        row.value_bytes,
                        row.concurrency,
                        &row.result,
                    );
                    json!({
                        "system": row.system.name(),
                        "nodes": 3,
                        "value_bytes": row.value_bytes,
                        "concurrency": row.concurrency,
                        "ops_per_sec": row.result.throughput(),
                        "p50_us": row.result.quantile_us(0.5),
                        "p99_us": row.result.quantile_us(0.99),
                        "p999_us": row.result.quantile_us(0.999),
                        "lost_writes": row.lost,
                    })
                })
                .collect()
        }
        Err(e) => {
            println!("comparison failed: {e:#}");
            Vec::new()
        }
    }
}

#[cfg(not(feature = "compare"))]
async fn compare(_args: &Args, _work: &Path) -> Vec<Value> {
    println!(
        "--compare needs the `compare` feature: `cargo xtask bench --compare` builds it \
         (with a vendored protoc; the servers: apt-get install etcd-server zookeeper)"
    );
    Vec::new()
}

fn write_results(
    results: &Path,
    runs: &[Run],
    plaintext_runs: &[Run],
    failovers: &[Value],
    compare: &[Value],
    groups_phase: Option<&Value>,
) -> Result<()> {
    // Headline figures for the xtask table: peak writes/s per cluster size and
    // value size, with p99 at the peak, and the failover.
    let mut figures = Vec::new();
    let mut keys: Vec<(u64, usize)> = runs
        .iter()
        .filter(|r| r.workload == "writes")
        .map(|r| (r.nodes, r.value_bytes))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for (nodes, value_bytes) in keys {
        let best = runs
            .iter()
            .filter(|r| r.workload == "writes" && r.nodes == nodes && r.value_bytes == value_bytes)
            .max_by(|a, b| a.result.throughput().total_cmp(&b.result.throughput()));
        if let Some(best) = best {
            let mut fig = json!({
                "name": format!("{nodes} nodes, {value_bytes} B writes, {} clients", best.concurrency),
                "value": best.result.throughput(),
                "unit": "writes/s",
            });
            if let Some(base) = compare.iter().find(|c| {
                c["system"] == "etcd"
                    && c["value_bytes"] == value_bytes
                    && c["concurrency"] == best.concurrency
            }) {
                fig["baseline_name"] = json!("etcd");
                fig["baseline"] = base["ops_per_sec"].clone();
            }
            figures.push(fig);
            figures.push(json!({
                "name": format!("{nodes} nodes, {value_bytes} B writes p99 at peak"),
                "value": best.result.quantile_us(0.99) / 1e3,
                "unit": "ms",
            }));
            // The latency target is read at half of the peak throughput: the
            // measured level whose throughput is nearest to it.
            let half = best.result.throughput() / 2.0;
            let near_half = runs
                .iter()
                .filter(|r| {
                    r.workload == "writes" && r.nodes == nodes && r.value_bytes == value_bytes
                })
                .min_by(|a, b| {
                    (a.result.throughput() - half)
                        .abs()
                        .total_cmp(&(b.result.throughput() - half).abs())
                });
            if let Some(r) = near_half {
                figures.push(json!({
                    "name": format!(
                        "{nodes} nodes, {value_bytes} B writes p99 near half peak ({} clients, {:.0} writes/s)",
                        r.concurrency,
                        r.result.throughput()
                    ),
                    "value": r.result.quantile_us(0.99) / 1e3,
                    "unit": "ms",
                }));
            }
        }
    }
    // Side by side at the same concurrency and value size: 3 nodes against
    // etcd and ZooKeeper.
    for r in runs
        .iter()
        .filter(|r| r.workload == "writes" && r.nodes == 3)
    {
        for c in compare
            .iter()
            .filter(|c| c["value_bytes"] == r.value_bytes && c["concurrency"] == r.concurrency)
        {
            figures.push(json!({
                "name": format!(
                    "3 nodes, {} B writes, {} clients, vs {}",
                    r.value_bytes,
                    r.concurrency,
                    c["system"].as_str().unwrap_or("?")
                ),
                "value": r.result.throughput(),
                "unit": "writes/s",
                "baseline_name": c["system"],
                "baseline": c["ops_per_sec"],
            }));
        }
    }
    // TLS beside plaintext at the same point.
    for p in plaintext_runs {
        if let Some(r) = runs.iter().find(|r| {
            r.workload == p.workload
                && r.nodes == p.nodes
                && r.value_bytes == p.value_bytes
                && r.concurrency == p.concurrency
        }) {
            figures.push(json!({
                "name": format!(
                    "TLS cost: {} nodes, {} B {}, {} clients, TLS vs plaintext",
                    r.nodes, r.value_bytes, r.workload, r.concurrency
                ),
                "value": r.result.throughput(),
                "unit": "ops/s",
                "baseline_name": "plaintext",
                "baseline": p.result.throughput(),
            }));
            figures.push(json!({
                "name": format!(
                    "TLS cost: {} nodes, {} B {}, {} clients, node CPU per operation",
                    r.nodes, r.value_bytes, r.workload, r.concurrency
                ),
                "value": r.cpu_us_per_op.0,
                "unit": "us",
                "baseline_name": "plaintext",
                "baseline": p.cpu_us_per_op.0,
            }));
        }
    }
    for r in runs.iter().filter(|r| r.workload == "reads") {
        figures.push(json!({
            "name": format!("{} nodes, linearizable reads, {} clients", r.nodes, r.concurrency),
            "value": r.result.throughput(),
            "unit": "reads/s",
        }));
    }
    for c in compare {
        figures.push(json!({
            "name": format!("{} 3 nodes, {} B writes, {} clients", c["system"].as_str().unwrap_or("?"), c["value_bytes"], c["concurrency"]),
            "value": c["ops_per_sec"],
            "unit": "writes/s",
        }));
    }
    for f in failovers.iter().filter(|f| f["kind"] == "leader transfer") {
        figures.push(json!({
            "name": "leader transfer under load: longest gap between commits",
            "value": f["longest_commit_gap_ms"],
            "unit": "ms",
        }));
    }
    for f in failovers
        .iter()
        .filter(|f| f["kind"] == "membership changes")
    {
        for c in f["changes"].as_array().into_iter().flatten() {
            figures.push(json!({
                "name": format!("{}: lowest one-second writes/s vs steady", c["what"].as_str().unwrap_or("?")),
                "value": c["lowest_one_second_rate"],
                "unit": "writes/s",
                "baseline_name": "steady rate before the changes",
                "baseline": f["steady_rate"],
            }));
            figures.push(json!({
                "name": format!("{}: longest gap between commits", c["what"].as_str().unwrap_or("?")),
                "value": c["longest_commit_gap_ms"],
                "unit": "ms",
            }));
        }
    }
    for f in failovers.iter().filter(|f| f["kind"] == "catch-up") {
        figures.push(json!({
            "name": format!("new member catches up with {} MiB of state", f["state_mib"]),
            "value": f["catch_up_ms"],
            "unit": "ms",
        }));
    }
    for f in failovers.iter().filter(|f| f["kind"] == "failover") {
        figures.push(json!({
            "name": "failover: kill -9 leader to first commit",
            "value": f["failover_ms"],
            "unit": "ms",
        }));
        figures.push(json!({
            "name": "failover: acknowledged writes lost",
            "value": f["lost_writes"],
            "unit": "writes",
        }));
    }
    if let Some(g) = groups_phase {
        figures.extend(groups::figures(g));
    }
    let headline = json!({ "bench": "e2e", "figures": figures });
    std::fs::write(
        results.join("e2e.json"),
        serde_json::to_string_pretty(&headline)?,
    )?;
    let full = json!({
        "runs": runs.iter().map(Run::to_json).collect::<Vec<_>>(),
        "plaintext_runs": plaintext_runs.iter().map(Run::to_json).collect::<Vec<_>>(),
        "failovers": failovers,
        "compare": compare,
        "groups": groups_phase,
    });
    std::fs::write(
        results.join("e2e-full.json"),
        serde_json::to_string_pretty(&full)?,
    )?;
    let html = report_html(runs, failovers, compare, groups_phase);
    let path = results.join("e2e-report.html");
    std::fs::write(&path, html)?;
    println!("report: {}", path.display());
    Ok(())
}

/// A polyline chart as inline SVG: one series per (label, points).
fn svg_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
    fixed_y_max: Option<f64>,
) -> String {
    let (w, h, m) = (640.0, 360.0, 60.0);
    let tx = |x: f64| if log_x { x.max(1.0).log2() } else { x };
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    if all.is_empty() {
        return String::new();
    }
    let x_min = all.iter().map(|p| tx(p.0)).fold(f64::INFINITY, f64::min);
    let x_max = all
        .iter()
        .map(|p| tx(p.0))
        .fold(f64::NEG_INFINITY, f64::max)
        .max(x_min + 1e-9);
    let y_max =
        fixed_y_max.unwrap_or_else(|| all.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1);
    let x_lo = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_hi = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let sx = |x: f64| m + (tx(x) - x_min) / (x_max - x_min) * (w - 2.0 * m);
    let sy = |y: f64| h - m - y / y_max * (h - 2.0 * m);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' style='background:#fff;border:1px solid #ccc'>\
         <text x='{}' y='20' text-anchor='middle' font-size='14'>{title}</text>\
         <line x1='{m}' y1='{}' x2='{}' y2='{}' stroke='#000'/><line x1='{m}' y1='{m}' x2='{m}' y2='{}' stroke='#000'/>\
         <text x='{}' y='{}' text-anchor='middle' font-size='12'>{x_label}</text>\
         <text x='14' y='{}' font-size='12' transform='rotate(-90 14 {})' text-anchor='middle'>{y_label}</text>\
         <text x='{}' y='{}' font-size='10' text-anchor='end'>{:.0}</text>",
        w / 2.0,
        h - m,
        w - m,
        h - m,
        h - m,
        w / 2.0,
        h - 15.0,
        h / 2.0,
        h / 2.0,
        m - 4.0,
        m + 4.0,
        y_max
    );
    s.push_str(&format!(
        "<text x='{m}' y='{}' font-size='10' text-anchor='middle'>{x_lo:.1}</text>\
         <text x='{}' y='{}' font-size='10' text-anchor='middle'>{x_hi:.1}</text>\
         <text x='{}' y='{}' font-size='10' text-anchor='end'>0</text>",
        h - m + 12.0,
        w - m,
        h - m + 12.0,
        m - 4.0,
        h - m
    ));
    for (i, (label, pts)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        s.push_str(&format!(
            "<polyline fill='none' stroke='{c}' stroke-width='2' points='{}'/>",
            path.join(" ")
        ));
        for &(x, y) in pts {
            s.push_str(&format!(
                "<circle cx='{:.1}' cy='{:.1}' r='3' fill='{c}'/>",
                sx(x),
                sy(y)
            ));
            if series.len() < 4 && pts.len() < 10 {
                s.push_str(&format!(
                    "<text x='{:.1}' y='{:.1}' font-size='9' text-anchor='middle'>{x:.0}</text>",
                    sx(x),
                    h - m + 12.0
                ));
            }
        }
        s.push_str(&format!(
            "<text x='{}' y='{}' font-size='11' fill='{c}'>{label}</text>",
            w - m - 150.0,
            m + 14.0 * i as f64
        ));
    }
    s.push_str("</svg>");
    s
}

fn report_html(
    runs: &[Run],
    failovers: &[Value],
    compare: &[Value],
    groups_phase: Option<&Value>,
) -> String {
    let mut throughput_series = Vec::new();
    let mut groups: Vec<(u64, usize)> = runs
        .iter()
        .filter(|r| r.workload == "writes")
        .map(|r| (r.nodes, r.value_bytes))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    for &(n, v) in &groups {
        let pts: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.workload == "writes" && r.nodes == n && r.value_bytes == v)
            .map(|r| (r.concurrency as f64, r.result.throughput()))
            .collect();
        throughput_series.push((format!("paxos {n} nodes {v} B"), pts));
    }
    let mut systems: Vec<(String, u64)> = compare
        .iter()
        .map(|c| {
            (
                c["system"].as_str().unwrap_or("?").to_string(),
                c["value_bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    systems.sort();
    systems.dedup();
    for (sys, v) in systems {
        let pts: Vec<(f64, f64)> = compare
            .iter()
            .filter(|c| c["system"] == sys.as_str() && c["value_bytes"] == v)
            .map(|c| {
                (
                    c["concurrency"].as_f64().unwrap_or(0.0),
                    c["ops_per_sec"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
        throughput_series.push((format!("{sys} 3 nodes {v} B"), pts));
    }
    // Latency distribution (CDF) of each write run of the first group.
    let mut cdf_series = Vec::new();
    if let Some(&(n, v)) = groups.first() {
        for r in runs
            .iter()
            .filter(|r| r.workload == "writes" && r.nodes == n && r.value_bytes == v)
        {
            let l = &r.result.latencies_us;
            if l.is_empty() {
                continue;
            }
            let pts: Vec<(f64, f64)> = (0..=100)
                .map(|i| {
                    let q = f64::from(i) / 100.0;
                    let idx = ((l.len() - 1) as f64 * q) as usize;
                    (f64::from(l[idx]) / 1e3, q * 100.0)
                })
                .collect();
            cdf_series.push((format!("{} clients", r.concurrency), pts));
        }
    }
    let mut table = String::from(
        "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th>system</th><th>nodes</th><th>workload</th><th>value B</th><th>clients</th><th>ops/s</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>errors</th></tr>",
    );
    for r in runs {
        table.push_str(&format!(
            "<tr><td>paxos</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td></tr>",
            r.nodes,
            r.workload,
            r.value_bytes,
            r.concurrency,
            r.result.throughput(),
            r.result.quantile_us(0.5) / 1e3,
            r.result.quantile_us(0.99) / 1e3,
            r.result.quantile_us(0.999) / 1e3,
            r.result.errors
        ));
    }
    for c in compare {
        table.push_str(&format!(
            "<tr><td>{}</td><td>3</td><td>writes</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td></td></tr>",
            c["system"].as_str().unwrap_or("?"),
            c["value_bytes"],
            c["concurrency"],
            c["ops_per_sec"].as_f64().unwrap_or(0.0),
            c["p50_us"].as_f64().unwrap_or(0.0) / 1e3,
            c["p99_us"].as_f64().unwrap_or(0.0) / 1e3,
            c["p999_us"].as_f64().unwrap_or(0.0) / 1e3,
        ));
    }
    table.push_str("</table>");
    let failover_text: Vec<String> = failovers
        .iter()
        .filter(|f| f["kind"] != "membership changes")
        .map(|f| format!("<pre>{}</pre>", f))
        .collect();
    // Membership changes: writes/s second by second, each change drawn as
    // a bar over its duration at the steady rate.
    let mut membership_html = String::new();
    for f in failovers
        .iter()
        .filter(|f| f["kind"] == "membership changes")
    {
        let steady = f["steady_rate"].as_f64().unwrap_or(0.0);
        let mut series = vec![(
            "writes/s".to_string(),
            f["writes_per_second"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, v)| (i as f64 + 0.5, v.as_f64().unwrap_or(0.0)))
                .collect::<Vec<_>>(),
        )];
        let mut rows = String::from(
            "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th>change</th><th>from s</th><th>seconds</th><th>lowest 1-s writes/s</th><th>vs steady</th><th>longest gap between commits ms</th></tr>",
        );
        for c in f["changes"].as_array().into_iter().flatten() {
            let (a, b) = (
                c["from_s"].as_f64().unwrap_or(0.0),
                c["to_s"].as_f64().unwrap_or(0.0),
            );
            series.push((
                c["what"].as_str().unwrap_or("?").to_string(),
                vec![(a, steady * 1.05), (b.max(a + 0.05), steady * 1.05)],
            ));
            rows.push_str(&format!(
                "<tr><td>{}</td><td>{a:.1}</td><td>{:.2}</td><td>{:.0}</td><td>{:.0}%</td><td>{:.1}</td></tr>",
                c["what"].as_str().unwrap_or("?"),
                b - a,
                c["lowest_one_second_rate"].as_f64().unwrap_or(0.0),
                c["lowest_vs_steady"].as_f64().unwrap_or(0.0) * 100.0,
                c["longest_commit_gap_ms"].as_f64().unwrap_or(0.0),
            ));
        }
        rows.push_str("</table>");
        membership_html.push_str(&format!(
            "<p>Steady load of {:.0} writes/s asked ({} clients), {steady:.0} measured before the changes.</p>{}{}",
            f["target_rate"].as_f64().unwrap_or(0.0),
            f["concurrency"],
            svg_chart("writes/s during membership changes", "seconds", "writes/s", &series, false, None),
            rows
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>paxos toolkit end-to-end benchmark</title></head>\
         <body style='font-family:sans-serif'><h1>End-to-end benchmark</h1>\
         <p>Nodes are separate processes on loopback, WAL on disk with fsync, QUIC with mutual TLS between nodes; \
         closed-loop clients over TCP.</p>{}<h2>Throughput against concurrency</h2>{}\
         <h2>Write latency distribution</h2>{}<h2>Membership changes under load</h2>{}<h2>Failover and catch-up</h2>{}{}</body></html>",
        table,
        svg_chart("writes/s against clients", "clients (log scale)", "ops/s", &throughput_series, true, None),
        svg_chart("write latency CDF", "latency (ms)", "percentile", &cdf_series, false, Some(100.0)),
        membership_html,
        failover_text.join(""),
        groups_phase.map_or_else(String::new, |g| format!(
            "<h2>Many groups per node</h2><p>3 nodes, fsync on, {} B writes, {} closed-loop clients; \
             ratios against one group per node in the same run.</p>{}",
            g["value_bytes"],
            g["clients"],
            groups::html(g)
        ))
    )
}
