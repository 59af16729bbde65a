//! The end-to-end bench's membership phase: a 3-node cluster under a steady
//! load at half the peak while an operator replaces a voter by a new
//! machine (`--join`, add-observer, promote, remove), grows to 5 voters and
//! hands the leadership over, as the README's procedures do. It reports
//! writes/s second by second, the lowest rate in any one-second window of
//! each change (from its first step to half a second after its last)
//! against the steady rate before them, and the longest gap between
//! commits (up to a second after its last step); then the time a new
//! member takes to catch up with a given amount of state.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use paxos_bench::loadgen::{self, LoadResult, LoadSpec, Workload};
use paxos_kv::auth::Role;
use paxos_kv::client::{Client, ClientError};
use paxos_kv::client_proto::{AdminChange, AdminRequest, NodeAddrs};
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use serde_json::{json, Value};

/// The admin principal of the phase's clusters.
const OPS: &str = "ops";
/// Longest an admin command is asked again while the cluster answers
/// "retry:" (a promotion waits for the newcomer to catch up).
const ADMIN_PATIENCE: Duration = Duration::from_secs(300);

/// Asks `req` until it is not refused with a transient "retry:" answer.
async fn admin_until_done(admin: &Client, req: AdminRequest) -> Result<Value> {
    let started = Instant::now();
    // Bounded by ADMIN_PATIENCE (and by the count).
    for _ in 0..10_000 {
        match admin.admin(req).await {
            Ok(json) => return serde_json::from_str(&json).context("admin answer is not JSON"),
            Err(ClientError::Node(m)) if m.starts_with("retry:") => {
                if started.elapsed() > ADMIN_PATIENCE {
                    bail!("{req:?} still refused after {ADMIN_PATIENCE:?}: {m}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => bail!("{req:?}: {e}"),
        }
    }
    bail!("{req:?} still refused after 10 000 attempts")
}

/// Starts machine `id` with `--join`, adds it as an observer with its
/// addresses and promotes it; returns (time to add, time from added to
/// promoted: its catch-up).
async fn join_and_promote(
    cluster: &mut LocalCluster,
    admin: &Client,
    id: u64,
) -> Result<(Duration, Duration)> {
    let started = Instant::now();
    let m = cluster.join_node(id)?;
    admin_until_done(
        admin,
        AdminRequest::Change {
            change: AdminChange::AddObserver,
            node: id,
            addrs: Some(NodeAddrs {
                peer: m.peer,
                client: m.client,
            }),
        },
    )
    .await?;
    let added = started.elapsed();
    let promoted = admin_until_done(
        admin,
        AdminRequest::Change {
            change: AdminChange::Promote,
            node: id,
            addrs: None,
        },
    )
    .await?;
    let is_voter = promoted["voters"]
        .as_array()
        .is_some_and(|v| v.iter().any(|x| x == id));
    if !is_voter {
        bail!("{id} is no voter after its promotion: {promoted}");
    }
    Ok((added, started.elapsed() - added))
}

/// One change of the phase: what, and when (seconds since the load
/// started).
struct Change {
    what: String,
    from_s: f64,
    to_s: f64,
    detail: Value,
}

/// The lowest rate of acknowledgements in any one-second window that
/// overlaps `[from_s, to_s]` (windows start every 100 ms).
fn lowest_one_second_rate(r: &LoadResult, from_s: f64, to_s: f64) -> f64 {
    let times = &r.ack_times_us;
    let end_us = r.elapsed.as_micros() as u64;
    let mut lowest = f64::INFINITY;
    let mut start = ((from_s - 0.9).max(0.0) * 1e6) as u64;
    let last_start = ((to_s * 1e6) as u64).min(end_us.saturating_sub(1_000_000));
    // Bounded: one step per 100 ms of the window.
    while start <= last_start {
        let lo = times.partition_point(|t| *t < start);
        let hi = times.partition_point(|t| *t < start + 1_000_000);
        lowest = lowest.min((hi - lo) as f64);
        start += 100_000;
    }
    if lowest.is_finite() {
        lowest
    } else {
        // The window is shorter than the run allows: its own rate.
        let lo = times.partition_point(|t| *t < (from_s * 1e6) as u64);
        let hi = times.partition_point(|t| *t <= (to_s * 1e6) as u64);
        (hi - lo) as f64 / (to_s - from_s).max(1e-3)
    }
}

/// Runs the phase on a fresh 3-node cluster under `work`; `peak` is the
/// 3-node peak writes/s measured at `concurrency` clients.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn membership_changes(
    work: &Path,
    bin: &Path,
    run_id: u64,
    value_bytes: usize,
    peak: f64,
    concurrency: usize,
    quick: bool,
) -> Result<Value> {
    let rate = (peak / 2.0).max(100.0);
    println!(
        "== membership changes: 3 nodes under a steady load of {rate:.0} writes/s (half the peak), {concurrency} clients"
    );
    let mut spec = ClusterSpec::new(3, work.join("cluster-membership"), bin.to_path_buf());
    spec.clients.push((OPS.into(), Role::Admin));
    let mut cluster = LocalCluster::start(spec)?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let admin = Client::new(
        cluster.client_addrs(),
        cluster.client_security_for(OPS)?,
        (run_id << 20) | 0xFFFFD,
        Duration::from_secs(10),
    );
    let steady = Duration::from_secs(if quick { 2 } else { 4 });
    let pause = Duration::from_secs(if quick { 1 } else { 3 });
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = LoadSpec::new(
        cluster.client_addrs(),
        cluster.client_security(),
        Workload::Writes,
        concurrency,
        value_bytes,
        Duration::from_secs(900),
        run_id,
    );
    load.rate = Some(rate);
    load.stop = Some(stop.clone());
    load.timeout = Duration::from_secs(10);
    // The new nodes' addresses are learned by the client from redirects
    // only if it knows them: it is given the original three, which stay
    // reachable or redirect to the leader.
    let started = Instant::now();
    let task = tokio::spawn(loadgen::run(load));
    let at = |t: Instant| t.duration_since(started).as_secs_f64();
    tokio::time::sleep(steady).await;
    let steady_end = at(Instant::now());
    let mut changes = Vec::new();

    // Replace a follower by a new machine.
    let from = Instant::now();
    let (added, caught_up) = join_and_promote(&mut cluster, &admin, 4).await?;
    let gone = cluster
        .ids()
        .into_iter()
        .find(|n| *n != leader && *n != 4)
        .context("a follower to replace")?;
    admin_until_done(
        &admin,
        AdminRequest::Change {
            change: AdminChange::Remove,
            node: gone,
            addrs: None,
        },
    )
    .await?;
    cluster.kill(gone)?;
    changes.push(Change {
        what: format!("replace voter {gone} by new machine 4"),
        from_s: at(from),
        to_s: at(Instant::now()),
        detail: json!({
            "add_ms": added.as_secs_f64() * 1e3,
            "catch_up_to_promotion_ms": caught_up.as_secs_f64() * 1e3,
        }),
    });
    println!(
        "replaced {gone} by 4: added in {added:?}, caught up and promoted {caught_up:?} later"
    );
    tokio::time::sleep(pause).await;

    // Grow from 3 to 5 voters.
    let from = Instant::now();
    let mut steps = Vec::new();
    for id in [5, 6] {
        let (added, caught_up) = join_and_promote(&mut cluster, &admin, id).await?;
        steps.push(json!({"node": id, "add_ms": added.as_secs_f64() * 1e3,
            "catch_up_to_promotion_ms": caught_up.as_secs_f64() * 1e3}));
    }
    let members = admin_until_done(&admin, AdminRequest::Members).await?;
    let voters = members["voters"].as_array().map_or(0, Vec::len);
    if voters != 5 {
        bail!("after growing, {voters} voters: {members}");
    }
    changes.push(Change {
        what: "grow from 3 to 5 voters (new machines 5 and 6)".into(),
        from_s: at(from),
        to_s: at(Instant::now()),
        detail: json!({ "steps": steps }),
    });
    println!("grew to 5 voters: {}", members["voters"]);
    tokio::time::sleep(pause).await;

    // Hand the leadership to a newcomer.
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let to = if leader == 4 { 5 } else { 4 };
    let from = Instant::now();
    let answer = admin_until_done(&admin, AdminRequest::TransferLeader { to }).await?;
    if answer["transferred"] != true {
        bail!("the hand-over to {to} did not happen: {answer}");
    }
    // The old leader answers once it has handed over; the change ends when
    // the nominee leads.
    let now_leading = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    if now_leading != to {
        bail!("{now_leading} leads after the hand-over to {to}");
    }
    changes.push(Change {
        what: format!("leader transfer {leader} -> {to}"),
        from_s: at(from),
        to_s: at(Instant::now()),
        detail: answer,
    });
    println!("handed the leadership from {leader} to {to}");
    tokio::time::sleep(pause).await;
    stop.store(true, Ordering::Relaxed);
    let r = task.await.context("load task")?;

    // Every acknowledged write reads back (a sample, linearizable).
    crate::check_sample(&cluster, &r).await?;

    let steady_rate = {
        let lo = r.ack_times_us.partition_point(|t| *t < 1_000_000);
        let hi = r
            .ack_times_us
            .partition_point(|t| *t < (steady_end * 1e6) as u64);
        (hi - lo) as f64 / (steady_end - 1.0).max(1e-3)
    };
    let mut per_second = r.acks_per(Duration::from_secs(1));
    // The last second is cut short by the end of the run: leave it out.
    if r.elapsed.as_secs_f64().fract() < 0.9 && per_second.len() > r.elapsed.as_secs() as usize {
        per_second.truncate(r.elapsed.as_secs() as usize);
    }
    println!("steady rate {steady_rate:.0} writes/s; writes/s second by second: {per_second:?}");
    let mut rows = Vec::new();
    for c in &changes {
        // A change's effect on commits may show just after its last step
        // (a killed member's connections, an election): look 1 s past it.
        let lowest = lowest_one_second_rate(&r, c.from_s, c.to_s + 0.5);
        let gap_ms =
            r.longest_gap_us((c.from_s * 1e6) as u64, ((c.to_s + 1.0) * 1e6) as u64) as f64 / 1e3;
        println!(
            "{}: {:.2} s; lowest one-second rate {lowest:.0} writes/s ({:.0}% of steady); longest gap between commits {gap_ms:.1} ms",
            c.what,
            c.to_s - c.from_s,
            lowest / steady_rate.max(1e-9) * 100.0
        );
        rows.push(json!({
            "what": c.what,
            "from_s": c.from_s,
            "to_s": c.to_s,
            "seconds": c.to_s - c.from_s,
            "lowest_one_second_rate": lowest,
            "lowest_vs_steady": lowest / steady_rate.max(1e-9),
            "longest_commit_gap_ms": gap_ms,
            "detail": c.detail,
        }));
    }
    Ok(json!({
        "kind": "membership changes",
        "nodes": 3,
        "target_rate": rate,
        "concurrency": concurrency,
        "steady_rate": steady_rate,
        "writes_per_second": per_second,
        "changes": rows,
        "acked_writes": r.ok,
        "errors": r.errors,
    }))
}

/// Loads about `mib` MiB of state into a fresh 3-node cluster, then starts
/// a new machine and adds it as an observer: the time until it has applied
/// everything the leader had applied when it was added.
pub(crate) async fn catch_up(work: &Path, bin: &Path, run_id: u64, mib: u64) -> Result<Value> {
    const VALUE: usize = 4096;
    println!("== catch-up: a new member of a 3-node cluster holding {mib} MiB");
    let mut spec = ClusterSpec::new(3, work.join("cluster-catchup"), bin.to_path_buf());
    spec.clients.push((OPS.into(), Role::Admin));
    // Snapshots every 100 000 entries, as a cluster that has run a while
    // compacts its log: a newcomer then needs the snapshot, then the log.
    spec.snapshot_every = 100_000;
    let mut cluster = LocalCluster::start(spec)?;
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let want = mib << 20;
    let mut loaded = 0u64;
    let load_started = Instant::now();
    // Bounded: at most 3000 rounds of 2 s.
    for round in 0..3000u64 {
        if loaded >= want {
            break;
        }
        let r = loadgen::run(LoadSpec::new(
            cluster.client_addrs(),
            cluster.client_security(),
            Workload::Writes,
            64,
            VALUE,
            Duration::from_secs(2),
            (run_id << 12) | round,
        ))
        .await;
        loaded += r.ok * VALUE as u64;
    }
    println!(
        "loaded {} MiB in {:?}",
        loaded >> 20,
        load_started.elapsed()
    );
    let admin = Client::new(
        cluster.client_addrs(),
        cluster.client_security_for(OPS)?,
        (run_id << 20) | 0xFFFFD,
        Duration::from_secs(10),
    );
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let target = cluster.statuses().await[&leader]["applied"]
        .as_u64()
        .context("the leader's applied zxid")?;
    let started = Instant::now();
    let m = cluster.join_node(4)?;
    admin_until_done(
        &admin,
        AdminRequest::Change {
            change: AdminChange::AddObserver,
            node: 4,
            addrs: Some(NodeAddrs {
                peer: m.peer,
                client: m.client,
            }),
        },
    )
    .await?;
    // Bounded: 30 minutes of polls every 100 ms.
    let mut caught_up = None;
    for _ in 0..18_000 {
        let st = cluster.statuses().await;
        if st
            .get(&4)
            .and_then(|v| v["applied"].as_u64())
            .is_some_and(|a| a >= target)
        {
            caught_up = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let caught_up = caught_up.context("the new member did not catch up within 30 minutes")?;
    let installs = cluster.statuses().await[&4]["snapshot_installs"].as_u64();
    println!(
        "new member caught up with {} MiB in {caught_up:?} (snapshot installs: {installs:?})",
        loaded >> 20
    );
    Ok(json!({
        "kind": "catch-up",
        "state_mib": loaded >> 20,
        "catch_up_ms": caught_up.as_secs_f64() * 1e3,
        "snapshot_installs": installs,
    }))
}
