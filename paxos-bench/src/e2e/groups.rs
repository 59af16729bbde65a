//! The end-to-end bench's groups phase: what hosting many Paxos groups per
//! node costs and gives (issue 16, section 4). For each group count G, on a
//! fresh 3-node cluster (`paxos-node run --groups G`, fsync on, 100-byte
//! values):
//!
//! - the time from the processes answering to every group having a leader;
//! - the idle cost: CPU (% of one core) and resident memory of each node
//!   while its G groups do nothing, right after the election (or, if they
//!   do not all elect, while they try); per group, against the G=1 nodes
//!   of the same run and against the smallest many-group count (one group
//!   runs without the shared log and the batching of peer frames);
//! - aggregate writes/s and p99 at 512 closed-loop clients with the
//!   leaders spread evenly (group g led by node g%3+1, moved there with
//!   leader transfers) and then with every leader on one node, each beside
//!   the G=1 cluster of the same run; CPU microseconds per committed write
//!   on each node;
//! - then the node leading the most groups (all of them, after the
//!   one-node window) killed with SIGKILL, and the time until every group
//!   is led by a survivor and a write to every group has been
//!   acknowledged.
//!
//! The writers: logical client i writes to the groups g with
//! g = i (mod 512) (for fewer groups than clients, group i mod G), cycling
//! over them and over a few keys per group found with `group_of`. Every
//! group gets writes, and a client's write session (one session per group
//! written to) is opened in each of its groups once, by a warm-up pass
//! before the measured window: with keys drawn from every group, at 4096
//! groups most writes of a 5 s window would first open a session in a group
//! new to that client, and the figure would measure session opens.
//!
//! A group count whose cluster does not start, or does not elect a leader
//! in every group within the bound, is reported as such (the phase goes on
//! with the next count).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use paxos_bench::loadgen::{self, LoadResult};
use paxos_kv::auth::Role;
use paxos_kv::client::{Client, ClientError, Session};
use paxos_kv::client_proto::AdminRequest;
use paxos_kv::shard::group_of;
use paxos_kv::tls::ClientSecurity;
use paxos_testkit::cluster::{process_cpu_time, ClusterSpec, LocalCluster};
use serde_json::{json, Value};

/// The admin principal of the phase's clusters.
const OPS: &str = "ops";
/// Value size of every write.
const VALUE_BYTES: usize = 100;
/// Closed-loop clients of the measured windows.
const CLIENTS: usize = 512;
/// Connections the clients share (as the load generator does).
const CONNECTIONS: usize = 8;
/// Leader transfers in flight at once.
const TRANSFERS_IN_FLIGHT: usize = 64;
/// Rounds of leader moves (each re-reads where the leaders are).
const PLACEMENT_ROUNDS: usize = 6;
/// Attempts of one group's transfer within a round.
const TRANSFER_ATTEMPTS: usize = 3;
/// Workers writing the recovery keys.
const RECOVERY_WRITERS: usize = 64;
/// Timeout of one status request (a node with 10 000 groups under load
/// answers slowly).
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// What the phase runs.
#[derive(Debug, Clone)]
pub(crate) struct GroupsOptions {
    /// Group counts; 1 is added first if missing (every ratio needs it).
    pub counts: Vec<u32>,
    /// Length of each measured write window.
    pub window: Duration,
    /// Length of the idle-cost window.
    pub idle: Duration,
    /// Longest wait for every group to have a leader (after a start, and
    /// after the kill), and for the leader moves of one placement.
    pub elect_bound: Duration,
    /// More arguments for every node's `run` (for example
    /// `--inline-sync-bytes=0`), after `--groups G`.
    pub node_args: Vec<String>,
}

/// A node's summary status, for one group or many.
#[derive(Debug, Clone, Default)]
struct Summary {
    groups: u32,
    /// Groups this node leads (its leadership established).
    led: u64,
    looking: u64,
    /// The leader of each group as this node sees it.
    leaders: Vec<Option<u64>>,
}

impl Summary {
    /// From a status JSON: a many-group summary, or a single group's own
    /// status (`role`, `leader`).
    fn parse(v: &Value) -> Option<Summary> {
        if let Some(groups) = v["groups"].as_u64() {
            let leaders: Vec<Option<u64>> = v["group_leaders"]
                .as_array()?
                .iter()
                .map(Value::as_u64)
                .collect();
            return Some(Summary {
                groups: u32::try_from(groups).ok()?,
                led: v["led"].as_u64()?,
                looking: v["looking"].as_u64()?,
                leaders,
            });
        }
        let leader = v["leader"].as_u64();
        Some(Summary {
            groups: 1,
            led: u64::from(v["role"] == "leader"),
            looking: u64::from(leader.is_none()),
            leaders: vec![leader],
        })
    }
}

/// Every running node's summary (nodes that do not answer are left out).
async fn summaries(cluster: &LocalCluster, alive: &[u64]) -> BTreeMap<u64, Summary> {
    let security = cluster.client_security();
    let mut out = BTreeMap::new();
    for &id in alive {
        let Some(m) = cluster.members().get(&id) else {
            continue;
        };
        let Ok(s) = Client::status_of(m.client, &security, STATUS_TIMEOUT).await else {
            continue;
        };
        if let Some(summary) = serde_json::from_str::<Value>(&s)
            .ok()
            .as_ref()
            .and_then(Summary::parse)
        {
            out.insert(id, summary);
        }
    }
    out
}

/// Who leads each group: the node that says so of itself (`None`: nobody
/// claims it).
fn owners(groups: u32, st: &BTreeMap<u64, Summary>) -> Vec<Option<u64>> {
    let mut owner = vec![None; groups as usize];
    for (&id, s) in st {
        for (g, l) in s.leaders.iter().enumerate().take(groups as usize) {
            if *l == Some(id) {
                owner[g] = Some(id);
            }
        }
    }
    owner
}

/// How many groups each node leads, by [`owners`].
fn led_counts(owner: &[Option<u64>]) -> BTreeMap<u64, u64> {
    let mut led = BTreeMap::new();
    for o in owner.iter().flatten() {
        *led.entry(*o).or_insert(0) += 1;
    }
    led
}

/// Waits until every one of `groups` groups is led by a node of `alive`
/// (the nodes' own counts of the groups they lead add up to `groups`),
/// every node of `alive` answers and none is looking for a leader; returns
/// the time it took, or `None` after `bound`.
pub(crate) async fn wait_led(
    cluster: &LocalCluster,
    alive: &[u64],
    groups: u32,
    bound: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    // Bounded by the time (and the count: 50 ms apart at least).
    for _ in 0..1_000_000 {
        if started.elapsed() > bound {
            return None;
        }
        let st = summaries(cluster, alive).await;
        let led: u64 = st.values().map(|s| s.led).sum();
        if st.len() == alive.len()
            && led == u64::from(groups)
            && st.values().all(|s| s.looking == 0 && s.groups == groups)
        {
            let owner = owners(groups, &st);
            if owner.iter().all(|o| o.is_some_and(|o| alive.contains(&o))) {
                return Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Whether a refused transfer is worth asking again.
fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Node(m) => {
            m.starts_with("retry:")
                || m.starts_with("transfer refused")
                || m.contains("aborted")
                || m.contains("no leader")
        }
        // Timeouts and lost connections: the group is probably electing.
        _ => true,
    }
}

/// Moves the leader of each group g to `target(g)` with leader transfers
/// ([`TRANSFERS_IN_FLIGHT`] at once), re-reading the leaders between
/// rounds; returns the leaders per node at the end, how many groups are not
/// where they should be, the transfers asked and the time taken.
async fn place_leaders(
    cluster: &LocalCluster,
    admin: &Arc<Client>,
    groups: u32,
    target: impl Fn(u32) -> u64,
    bound: Duration,
) -> Placed {
    let started = Instant::now();
    let last_error: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let alive = cluster.ids();
    let mut asked = 0u64;
    let mut misplaced = usize::MAX;
    let mut idle_rounds = 0;
    let mut led = BTreeMap::new();
    for round in 0..=PLACEMENT_ROUNDS {
        let st = summaries(cluster, &alive).await;
        let owner = owners(groups, &st);
        led = led_counts(&owner);
        let pending: Vec<(u32, u64)> = (0..groups)
            .filter(|&g| owner[g as usize] != Some(target(g)))
            .map(|g| (g, target(g)))
            .collect();
        // Stop after two rounds in a row that moved nothing (leaders are
        // not holding, or a node does not take them).
        if pending.len() >= misplaced {
            idle_rounds += 1;
        } else {
            idle_rounds = 0;
        }
        let stuck = idle_rounds >= 2;
        misplaced = pending.len();
        if pending.is_empty() || stuck || round == PLACEMENT_ROUNDS || started.elapsed() > bound {
            break;
        }
        asked += pending.len() as u64;
        let pending = Arc::new(pending);
        let next = Arc::new(AtomicUsize::new(0));
        let deadline = started + bound;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..TRANSFERS_IN_FLIGHT.min(pending.len()) {
            let (pending, next, admin, last_error) = (
                pending.clone(),
                next.clone(),
                admin.clone(),
                last_error.clone(),
            );
            tasks.spawn(async move {
                // Bounded: each worker takes at most every pending group.
                for _ in 0..pending.len() {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(g, to)) = pending.get(i) else {
                        break;
                    };
                    for _ in 0..TRANSFER_ATTEMPTS {
                        if Instant::now() > deadline {
                            return;
                        }
                        let answer = admin.admin_in(g, AdminRequest::TransferLeader { to }).await;
                        let Err(e) = answer else {
                            break;
                        };
                        if let Ok(mut last) = last_error.lock() {
                            *last = Some(format!("group {g} to {to}: {e}"));
                        }
                        if !transient(&e) {
                            tracing::warn!(group = g, to, error = %e, "leader transfer refused");
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        // Let the last hand-overs show in every node's status.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let last_error = last_error.lock().ok().and_then(|mut l| l.take());
    Placed {
        led,
        misplaced,
        asked,
        took: started.elapsed(),
        last_error,
    }
}

/// The outcome of [`place_leaders`].
struct Placed {
    /// Groups led per node at the end.
    led: BTreeMap<u64, u64>,
    /// Groups whose leader is not where asked at the end.
    misplaced: usize,
    /// Transfers asked.
    asked: u64,
    took: Duration,
    /// The last refusal of a transfer, if any.
    last_error: Option<String>,
}

/// Where each group's leader should be.
type LeaderOf = Box<dyn Fn(u32) -> u64>;

/// The writers of one group count: clients, sessions, and the keys of
/// each group (cloned cheaply: shared parts).
#[derive(Clone)]
struct Writers {
    clients: Vec<Arc<Client>>,
    sessions: Arc<Vec<tokio::sync::Mutex<Session>>>,
    /// Each logical client's groups.
    plan: Arc<Vec<Vec<u32>>>,
    /// A few keys of each group.
    keys: Arc<Vec<Vec<Bytes>>>,
    value: Bytes,
}

impl Writers {
    fn new(cluster: &LocalCluster, groups: u32, run_id: u64) -> Result<Writers> {
        let clients = (0..CONNECTIONS)
            .map(|c| {
                Arc::new(Client::new(
                    cluster.client_addrs(),
                    cluster.client_security(),
                    (run_id << 24) | c as u64,
                    Duration::from_secs(10),
                ))
            })
            .collect();
        let sessions = (0..CLIENTS)
            .map(|i| tokio::sync::Mutex::new(Session::new((run_id << 24) | (1 << 23) | i as u64)))
            .collect();
        Ok(Writers {
            clients,
            sessions: Arc::new(sessions),
            plan: Arc::new(plan(groups)),
            keys: Arc::new(keys_per_group(groups, run_id)?),
            value: Bytes::from(vec![b'x'; VALUE_BYTES]),
        })
    }

    /// Writes once to each of every client's groups (opening its sessions
    /// there, and teaching the clients where the leaders are); returns the
    /// failures.
    async fn warm(&self, bound: Duration) -> u64 {
        let deadline = Instant::now() + bound;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..CLIENTS {
            let client = self.clients[i % self.clients.len()].clone();
            let (sessions, plan, keys, value) = (
                self.sessions.clone(),
                self.plan.clone(),
                self.keys.clone(),
                self.value.clone(),
            );
            tasks.spawn(async move {
                let mut failed = 0u64;
                let mut session = sessions[i].lock().await;
                for &g in &plan[i] {
                    let key = keys[g as usize][0].clone();
                    // Two attempts: a first write may meet a moved leader.
                    let mut ok = false;
                    for _ in 0..2 {
                        if Instant::now() > deadline {
                            break;
                        }
                        if client
                            .put_in(&mut session, key.clone(), value.clone())
                            .await
                            .is_ok()
                        {
                            ok = true;
                            break;
                        }
                    }
                    failed += u64::from(!ok);
                }
                failed
            });
        }
        let mut failed = 0;
        while let Some(r) = tasks.join_next().await {
            failed += r.unwrap_or(1);
        }
        failed
    }

    /// One closed-loop window of writes.
    async fn run(&self, window: Duration) -> LoadResult {
        let clients = self.clients.clone();
        let (sessions, plan, keys, value) = (
            self.sessions.clone(),
            self.plan.clone(),
            self.keys.clone(),
            self.value.clone(),
        );
        loadgen::closed_loop(CLIENTS, window, move |i, n| {
            let client = clients[i % clients.len()].clone();
            let (sessions, plan, keys, value) =
                (sessions.clone(), plan.clone(), keys.clone(), value.clone());
            async move {
                let mine = &plan[i];
                let g = mine[(n as usize) % mine.len()] as usize;
                let pool = &keys[g];
                let key = pool[(n as usize / mine.len()) % pool.len()].clone();
                let mut session = sessions[i].lock().await;
                client
                    .put_in(&mut session, key, value)
                    .await
                    .map(|_| None)
                    .map_err(|e| e.to_string())
            }
        })
        .await
    }
}

/// The groups each logical client writes to: group g goes to client
/// g mod [`CLIENTS`], and with fewer groups than clients client i writes to
/// group i mod `groups`.
fn plan(groups: u32) -> Vec<Vec<u32>> {
    (0..CLIENTS)
        .map(|i| {
            if (groups as usize) < CLIENTS {
                vec![(i % groups as usize) as u32]
            } else {
                (i..groups as usize)
                    .step_by(CLIENTS)
                    .map(|g| g as u32)
                    .collect()
            }
        })
        .collect()
}

/// A few keys of each of `groups` groups (more per group when there are
/// few groups, so that a single group still sees 2048 distinct keys).
fn keys_per_group(groups: u32, run_id: u64) -> Result<Vec<Vec<Bytes>>> {
    let per = (2048 / groups as usize).max(4);
    let mut keys: Vec<Vec<Bytes>> = vec![Vec::with_capacity(per); groups as usize];
    let mut missing = groups as usize;
    // Bounded: the hash spreads keys evenly, so this takes about
    // groups * (per + ln groups) tries; the bound is far above that.
    for j in 0..(groups as u64 * (per as u64 + 64)).max(1 << 16) * 8 {
        let key = Bytes::from(format!("g{run_id}/{j}"));
        let slot = &mut keys[group_of(&key, groups) as usize];
        if slot.len() < per {
            slot.push(key);
            if slot.len() == per {
                missing -= 1;
                if missing == 0 {
                    return Ok(keys);
                }
            }
        }
    }
    bail!("could not find {per} keys for each of {groups} groups")
}

/// Resident memory of process `pid` in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time of each running node so far.
fn cpu_times(cluster: &LocalCluster, alive: &[u64]) -> BTreeMap<u64, Duration> {
    alive
        .iter()
        .filter_map(|&id| Some((id, process_cpu_time(cluster.pid(id)?)?)))
        .collect()
}

/// One measured window: writes/s, latency, and each node's CPU per write.
async fn measure(
    cluster: &LocalCluster,
    writers: &Writers,
    window: Duration,
    led: &BTreeMap<u64, u64>,
    placement: &str,
    groups: u32,
) -> Value {
    let ids = cluster.ids();
    let warm_failures = writers.warm(Duration::from_secs(60)).await;
    let before = cpu_times(cluster, &ids);
    let r = writers.run(window).await;
    let after = cpu_times(cluster, &ids);
    let ops = r.ok.max(1) as f64;
    let nodes: Vec<Value> = ids
        .iter()
        .map(|id| {
            let cpu = match (before.get(id), after.get(id)) {
                (Some(b), Some(a)) => a.saturating_sub(*b).as_secs_f64() * 1e6 / ops,
                _ => f64::NAN,
            };
            json!({ "node": id, "leads": led.get(id).copied().unwrap_or(0), "cpu_us_per_write": cpu })
        })
        .collect();
    let total: f64 = nodes
        .iter()
        .filter_map(|n| n["cpu_us_per_write"].as_f64())
        .sum();
    println!(
        "  G={groups:>5} {placement:<9}: {:>8.0} writes/s  p50 {:>7.0} us  p99 {:>7.0} us  errors {}  (warm-up failures {warm_failures}); node CPU per write: {} us (total {total:.1})",
        r.throughput(),
        r.quantile_us(0.5),
        r.quantile_us(0.99),
        r.errors,
        nodes
            .iter()
            .map(|n| format!(
                "{}[{} led] {:.1}",
                n["node"],
                n["leads"],
                n["cpu_us_per_write"].as_f64().unwrap_or(f64::NAN)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    json!({
        "placement": placement,
        "writes_per_sec": r.throughput(),
        "ops": r.ok,
        "errors": r.errors,
        "warm_up_failures": warm_failures,
        "p50_us": r.quantile_us(0.5),
        "p99_us": r.quantile_us(0.99),
        "leaders_per_node": led.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "nodes": nodes,
        "node_cpu_us_per_write": total,
    })
}

/// Each node's CPU (% of one core) over `idle` and its resident memory.
async fn idle_cost(cluster: &LocalCluster, led: &BTreeMap<u64, u64>, idle: Duration) -> Value {
    let ids = cluster.ids();
    // Let the start-up's own work (elections, first syncs) settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_times(cluster, &ids);
    let t0 = Instant::now();
    tokio::time::sleep(idle).await;
    let after = cpu_times(cluster, &ids);
    let secs = t0.elapsed().as_secs_f64();
    let nodes: Vec<Value> = ids
        .iter()
        .map(|&id| {
            let cpu = match (before.get(&id), after.get(&id)) {
                (Some(b), Some(a)) => a.saturating_sub(*b).as_secs_f64() / secs * 100.0,
                _ => f64::NAN,
            };
            let rss = cluster.pid(id).and_then(rss_kib);
            json!({
                "node": id,
                "leads": led.get(&id).copied().unwrap_or(0),
                "cpu_pct": cpu,
                "rss_mib": rss.map(|k| k as f64 / 1024.0),
            })
        })
        .collect();
    let avg = |f: &str| {
        let v: Vec<f64> = nodes.iter().filter_map(|n| n[f].as_f64()).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let max = |f: &str| {
        nodes
            .iter()
            .filter_map(|n| n[f].as_f64())
            .fold(f64::NAN, f64::max)
    };
    json!({
        "seconds": secs,
        "nodes": nodes,
        "cpu_pct_avg": avg("cpu_pct"),
        "cpu_pct_max": max("cpu_pct"),
        "rss_mib_avg": avg("rss_mib"),
        "rss_mib_max": max("rss_mib"),
    })
}

/// What [`write_every_group`] found: when each group's write was
/// acknowledged (from the start it was given), how many groups were not
/// written by the deadline, and the attempts made.
struct WroteAll {
    acked: Vec<Duration>,
    failed: u64,
    attempts: u64,
}

impl WroteAll {
    /// The time by which a share `q` (0 to 1) of the groups was written,
    /// in milliseconds.
    fn at_ms(&self, q: f64) -> f64 {
        let i = ((self.acked.len() as f64 * q) as usize).min(self.acked.len().saturating_sub(1));
        self.acked.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }

    fn last_ms(&self) -> f64 {
        self.acked.last().map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }
}

/// One write to every group by [`RECOVERY_WRITERS`] workers (each group
/// through the session that the load's client for it opened), the times
/// taken from `from`, each group retried until `deadline`.
async fn write_every_group(
    client: Arc<Client>,
    writers: &Writers,
    groups: u32,
    from: Instant,
    deadline: Instant,
) -> WroteAll {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..RECOVERY_WRITERS.min(groups as usize) {
        let (client, next, sessions, keys, value) = (
            client.clone(),
            next.clone(),
            writers.sessions.clone(),
            writers.keys.clone(),
            writers.value.clone(),
        );
        tasks.spawn(async move {
            let mut failed = 0u64;
            let mut acked = Vec::new();
            let mut attempts = 0u64;
            // Bounded: each worker takes at most every group.
            for _ in 0..groups {
                let g = next.fetch_add(1, Ordering::Relaxed);
                if g >= groups as usize {
                    break;
                }
                let key = keys[g][0].clone();
                let mut ok = false;
                // Bounded by the count and the deadline (a group waits for
                // its election here: retried until the deadline).
                for _ in 0..100_000 {
                    if Instant::now() > deadline {
                        break;
                    }
                    attempts += 1;
                    let mut session = sessions[g % sessions.len()].lock().await;
                    if client
                        .put_in(&mut session, key.clone(), value.clone())
                        .await
                        .is_ok()
                    {
                        ok = true;
                        break;
                    }
                    drop(session);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if ok {
                    acked.push(from.elapsed());
                } else {
                    failed += 1;
                }
            }
            (acked, failed, attempts)
        });
    }
    let mut all = WroteAll {
        acked: Vec::with_capacity(groups as usize),
        failed: 0,
        attempts: 0,
    };
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok((a, f, n)) => {
                all.acked.extend(a);
                all.failed += f;
                all.attempts += n;
            }
            Err(_) => all.failed += 1,
        }
    }
    all.acked.sort_unstable();
    all
}

/// Kills the node leading the most groups and times the recovery: every
/// group led by a survivor, and (probed from the kill on, at the same
/// time) one write to every group acknowledged. The same writes on the
/// healthy cluster just before are the probe's baseline: writing every
/// group once takes time of its own (one Paxos round per group, at the
/// rate the cluster manages with that many groups).
async fn recovery(
    cluster: &mut LocalCluster,
    writers: &Writers,
    groups: u32,
    bound: Duration,
) -> Result<Value> {
    let ids = cluster.ids();
    let st = summaries(cluster, &ids).await;
    let led = led_counts(&owners(groups, &st));
    let (&victim, &victim_led) = led
        .iter()
        .max_by_key(|(_, n)| **n)
        .context("no node leads any group")?;
    let alive: Vec<u64> = ids.iter().copied().filter(|&i| i != victim).collect();
    let addrs: Vec<SocketAddr> = alive
        .iter()
        .filter_map(|id| cluster.members().get(id).map(|m| m.client))
        .collect();
    let security: ClientSecurity = cluster.client_security();
    let started = Instant::now();
    let healthy = write_every_group(
        Arc::new(Client::new(
            cluster.client_addrs(),
            security.clone(),
            u64::MAX - 8,
            Duration::from_secs(2),
        )),
        writers,
        groups,
        started,
        started + bound,
    )
    .await;
    cluster.kill(victim)?;
    let killed = Instant::now();
    // Probed from the kill on (not from when every group is led), while
    // the leaders are counted.
    let client = Arc::new(Client::new(
        addrs,
        security,
        u64::MAX - 7,
        Duration::from_secs(2),
    ));
    let probe = tokio::spawn({
        let writers = writers.clone();
        async move { write_every_group(client, &writers, groups, killed, killed + bound).await }
    });
    let all_led = wait_led(cluster, &alive, groups, bound).await;
    let Some(all_led) = all_led else {
        probe.abort();
        println!(
            "  recovery: node {victim} (leading {victim_led} groups) killed; not every group led within {bound:?}"
        );
        return Ok(json!({
            "killed": victim,
            "killed_led": victim_led,
            "all_led_ms": null,
            "all_written_ms": null,
            "note": format!("not every group led by a survivor within {} s", bound.as_secs()),
        }));
    };
    let wrote = probe.await.context("the recovery probe")?;
    println!(
        "  recovery: node {victim} (leading {victim_led} of {groups} groups) killed; every group led by a survivor after {:.0} ms; \
         a write to every group acknowledged after {:.0} ms (half after {:.0} ms, 90% after {:.0} ms; {} attempts; \
         {} groups not written within {} s); the same writes before the kill: {:.0} ms (half after {:.0} ms)",
        all_led.as_secs_f64() * 1e3,
        wrote.last_ms(),
        wrote.at_ms(0.5),
        wrote.at_ms(0.9),
        wrote.attempts,
        wrote.failed,
        bound.as_secs(),
        healthy.last_ms(),
        healthy.at_ms(0.5),
    );
    Ok(json!({
        "killed": victim,
        "killed_led": victim_led,
        "all_led_ms": all_led.as_secs_f64() * 1e3,
        "all_written_ms": (wrote.failed == 0).then_some(wrote.last_ms()),
        "half_written_ms": wrote.at_ms(0.5),
        "written_90_ms": wrote.at_ms(0.9),
        "write_attempts": wrote.attempts,
        "groups_not_written": wrote.failed,
        "healthy_all_written_ms": (healthy.failed == 0).then_some(healthy.last_ms()),
        "healthy_half_written_ms": healthy.at_ms(0.5),
    }))
}

/// Prints an idle-cost measurement.
fn print_idle(idle: &Value, what: &str) {
    let nodes = idle["nodes"].as_array().cloned().unwrap_or_default();
    println!(
        "  {what} over {:.0} s: CPU {} % of a core; RSS {} MiB",
        idle["seconds"].as_f64().unwrap_or(0.0),
        nodes
            .iter()
            .map(|n| format!(
                "{}[{} led] {:.1}",
                n["node"],
                n["leads"],
                n["cpu_pct"].as_f64().unwrap_or(f64::NAN)
            ))
            .collect::<Vec<_>>()
            .join(", "),
        nodes
            .iter()
            .map(|n| format!(
                "{} {:.1}",
                n["node"],
                n["rss_mib"].as_f64().unwrap_or(f64::NAN)
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// One group count on a fresh cluster, ending with the kill.
async fn one_count(
    work: &Path,
    bin: &Path,
    run_id: u64,
    groups: u32,
    opts: &GroupsOptions,
) -> Result<Value> {
    println!("== groups: {groups} per node, 3 nodes");
    let dir: PathBuf = work.join(format!("cluster-groups-{groups}"));
    let mut spec = ClusterSpec::new(3, dir.clone(), bin.to_path_buf());
    spec.clients.push((OPS.into(), Role::Admin));
    spec.extra_node_args = vec!["--groups".into(), groups.to_string()];
    // The node's own log filter, as a user runs it: the testkit's default
    // (`info` everywhere) logs every group's election, which at 10 000
    // groups is hundreds of thousands of lines per recovery and measurably
    // slows it.
    spec.log_filter = None;
    spec.extra_node_args.extend(opts.node_args.iter().cloned());
    let started = Instant::now();
    let cluster = match LocalCluster::start(spec) {
        Ok(c) => c,
        Err(e) => {
            println!("  did not start: {e:#}");
            return Ok(json!({ "groups": groups, "error": format!("did not start: {e:#}") }));
        }
    };
    let mut cluster = cluster;
    let start_ms = started.elapsed().as_secs_f64() * 1e3;
    let ids = cluster.ids();
    let Some(elected) = wait_led(&cluster, &ids, groups, opts.elect_bound).await else {
        let st = summaries(&cluster, &ids).await;
        let owner = owners(groups, &st);
        let led = led_counts(&owner);
        let unled = owner.iter().filter(|o| o.is_none()).count();
        let looking: u64 = st.values().map(|s| s.looking).sum();
        let note = format!(
            "did not elect within {} s ({unled} of {groups} groups without a leader, {looking} group replicas looking)",
            opts.elect_bound.as_secs()
        );
        println!("  {note}");
        // What hosting the groups costs meanwhile (their elections
        // included).
        let idle = idle_cost(&cluster, &led, opts.idle).await;
        print_idle(&idle, "while electing");
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(json!({
            "groups": groups,
            "start_ms": start_ms,
            "error": note,
            "idle": idle,
        }));
    };
    let st = summaries(&cluster, &ids).await;
    let led = led_counts(&owners(groups, &st));
    println!(
        "  started in {start_ms:.0} ms; every group led {:.0} ms later (leaders per node {led:?})",
        elected.as_secs_f64() * 1e3
    );
    let mut idle = idle_cost(&cluster, &led, opts.idle).await;
    // Whether the leaders held through the idle window (with many groups
    // on a loaded machine, elections may not settle).
    let st = summaries(&cluster, &ids).await;
    let owner = owners(groups, &st);
    let unled_after_idle = owner.iter().filter(|o| o.is_none()).count();
    let looking_after_idle: u64 = st.values().map(|s| s.looking).sum();
    idle["unled_groups_after"] = json!(unled_after_idle);
    idle["looking_after"] = json!(looking_after_idle);
    idle["leaders_per_node_after"] = json!(led_counts(&owner)
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect::<serde_json::Map<_, _>>());
    print_idle(&idle, "idle");
    println!(
        "  after the idle window: {unled_after_idle} groups without a leader, {looking_after_idle} group replicas looking (leaders per node {})",
        idle["leaders_per_node_after"]
    );
    if unled_after_idle > 0 || looking_after_idle > 0 {
        // The leaders did not hold: give the elections one more bound to
        // settle, else report the count as not settling.
        if wait_led(&cluster, &ids, groups, opts.elect_bound)
            .await
            .is_none()
        {
            let st = summaries(&cluster, &ids).await;
            let owner = owners(groups, &st);
            let unled = owner.iter().filter(|o| o.is_none()).count();
            let note = format!(
                "leaders did not hold: every group led {:.1} s after the start, then {unled} of {groups} groups without a leader {} s after the idle window",
                elected.as_secs_f64(),
                opts.elect_bound.as_secs()
            );
            println!("  {note}");
            drop(cluster);
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(json!({
                "groups": groups,
                "start_ms": start_ms,
                "elect_ms": elected.as_secs_f64() * 1e3,
                "idle": idle,
                "error": note,
            }));
        }
    }

    let writers = Writers::new(&cluster, groups, run_id)?;
    let admin = Arc::new(Client::new(
        cluster.client_addrs(),
        cluster.client_security_for(OPS)?,
        (run_id << 24) | 0xFFFFD,
        Duration::from_secs(10),
    ));
    let mut windows = Vec::new();
    if groups == 1 {
        // One group: one leader, wherever it is; it is the baseline of
        // both placements.
        windows.push(measure(&cluster, &writers, opts.window, &led, "single", groups).await);
    } else {
        let placements: [(&str, LeaderOf); 2] = [
            ("spread", Box::new(|g| u64::from(g % 3) + 1)),
            ("one node", Box::new(|_| 1)),
        ];
        for (placement, target) in placements {
            let p = place_leaders(&cluster, &admin, groups, target, opts.elect_bound).await;
            println!(
                "  leaders {placement}: {} transfers in {:.1} s; leaders per node {:?}; {} groups not where asked{}",
                p.asked,
                p.took.as_secs_f64(),
                p.led,
                p.misplaced,
                p.last_error
                    .as_ref()
                    .map_or_else(String::new, |e| format!(" (last refusal: {e})"))
            );
            let mut w = measure(&cluster, &writers, opts.window, &p.led, placement, groups).await;
            w["transfers"] = json!(p.asked);
            w["placement_ms"] = json!(p.took.as_secs_f64() * 1e3);
            w["misplaced_groups"] = json!(p.misplaced);
            w["last_transfer_refusal"] = json!(p.last_error);
            windows.push(w);
        }
    }
    let recovery = recovery(&mut cluster, &writers, groups, opts.elect_bound).await?;
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "groups": groups,
        "start_ms": start_ms,
        "elect_ms": elected.as_secs_f64() * 1e3,
        "idle": idle,
        "windows": windows,
        "recovery": recovery,
    }))
}

/// Runs the phase; returns its results (`kind`: "groups").
pub(crate) async fn groups_phase(
    work: &Path,
    bin: &Path,
    run_id: u64,
    opts: &GroupsOptions,
) -> Result<Value> {
    let mut counts = opts.counts.clone();
    counts.retain(|&g| g >= 1);
    counts.sort_unstable();
    counts.dedup();
    if counts.first() != Some(&1) {
        counts.insert(0, 1);
    }
    let mut rows = Vec::new();
    for (i, &g) in counts.iter().enumerate() {
        let row = one_count(work, bin, (run_id << 8) | i as u64, g, opts).await?;
        rows.push(row);
    }
    let summary = summarise(&rows);
    print_table(&rows, &summary);
    Ok(json!({
        "kind": "groups",
        "nodes": 3,
        "value_bytes": VALUE_BYTES,
        "clients": CLIENTS,
        "window_s": opts.window.as_secs_f64(),
        "idle_s": opts.idle.as_secs_f64(),
        "node_args": opts.node_args,
        "rows": rows,
        "summary": summary,
    }))
}

/// The window of `placement` in a row.
fn window<'a>(row: &'a Value, placement: &str) -> Option<&'a Value> {
    row["windows"]
        .as_array()?
        .iter()
        .find(|w| w["placement"] == placement)
}

/// Ratios against G=1, and the idle cost per group.
fn summarise(rows: &[Value]) -> Vec<Value> {
    let base = rows.iter().find(|r| r["groups"] == 1);
    let base_w = base.and_then(|b| window(b, "single"));
    let base_rate = base_w.and_then(|w| w["writes_per_sec"].as_f64());
    let base_idle = base.map(|b| &b["idle"]);
    // The smallest many-group count that ran: a second baseline for the
    // idle cost, on the same code path (one group runs without the
    // shared log and the batching of peer frames).
    let small = rows
        .iter()
        .find(|r| r["groups"].as_u64().is_some_and(|g| g > 1) && r["idle"].is_object());
    rows.iter()
        .map(|r| {
            let g = r["groups"].as_u64().unwrap_or(1);
            let rate = |p: &str| window(r, p).and_then(|w| w["writes_per_sec"].as_f64());
            let p99 = |p: &str| window(r, p).and_then(|w| w["p99_us"].as_f64());
            let (spread, one) = if g == 1 {
                (rate("single"), rate("single"))
            } else {
                (rate("spread"), rate("one node"))
            };
            let ratio = |x: Option<f64>| match (x, base_rate) {
                (Some(x), Some(b)) if b > 0.0 => Some(x / b),
                _ => None,
            };
            let per_group = |field: &str, scale: f64| match base_idle {
                Some(b) if g > 1 => match (r["idle"][field].as_f64(), b[field].as_f64()) {
                    (Some(x), Some(y)) => Some((x - y) / (g - 1) as f64 * scale),
                    _ => None,
                },
                _ => None,
            };
            let per_group_vs_small = |field: &str, scale: f64| {
                let s = small?;
                let gs = s["groups"].as_u64()?;
                if g <= gs {
                    return None;
                }
                let (x, y) = (r["idle"][field].as_f64()?, s["idle"][field].as_f64()?);
                Some((x - y) / (g - gs) as f64 * scale)
            };
            json!({
                "groups": g,
                "error": r["error"],
                "elect_ms": r["elect_ms"],
                "spread_writes_per_sec": spread,
                "spread_vs_g1": ratio(spread),
                "spread_p99_us": if g == 1 { p99("single") } else { p99("spread") },
                "one_node_writes_per_sec": one,
                "one_node_vs_g1": ratio(one),
                "one_node_p99_us": if g == 1 { p99("single") } else { p99("one node") },
                "spread_node_cpu_us_per_write": window(r, if g == 1 { "single" } else { "spread" }).map(|w| w["node_cpu_us_per_write"].clone()),
                "idle_cpu_pct_avg": r["idle"]["cpu_pct_avg"],
                "idle_rss_mib_avg": r["idle"]["rss_mib_avg"],
                "idle_cpu_pct_per_1000_groups": per_group("cpu_pct_avg", 1000.0),
                "idle_rss_kib_per_group": per_group("rss_mib_avg", 1024.0),
                "idle_cpu_pct_per_1000_groups_vs_smallest": per_group_vs_small("cpu_pct_avg", 1000.0),
                "idle_rss_kib_per_group_vs_smallest": per_group_vs_small("rss_mib_avg", 1024.0),
                "idle_smallest_many": small.map(|s| s["groups"].clone()),
                "recovery_all_led_ms": r["recovery"]["all_led_ms"],
                "recovery_all_written_ms": r["recovery"]["all_written_ms"],
            })
        })
        .collect()
}

fn fmt(v: &Value, digits: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:.digits$}"))
}

fn print_table(rows: &[Value], summary: &[Value]) {
    println!("== groups: 3 nodes, fsync on, {VALUE_BYTES} B writes, {CLIENTS} clients");
    println!(
        "{:>6} {:>8} {:>18} {:>8} {:>18} {:>8} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "groups",
        "elect ms",
        "spread w/s (xG1)",
        "p99 ms",
        "one-node w/s (xG1)",
        "p99 ms",
        "CPU us/w",
        "idle %cpu",
        "RSS MiB",
        "%cpu/1000g",
        "KiB/group"
    );
    for (row, s) in rows.iter().zip(summary) {
        if let Some(e) = row["error"].as_str() {
            println!("{:>6} {e}", s["groups"]);
            if row["idle"].is_object() {
                println!(
                    "       idle (while electing): {} % of a core and {} MiB per node; {} % per 1000 groups, {} KiB per group",
                    fmt(&s["idle_cpu_pct_avg"], 1),
                    fmt(&s["idle_rss_mib_avg"], 1),
                    fmt(&s["idle_cpu_pct_per_1000_groups"], 2),
                    fmt(&s["idle_rss_kib_per_group"], 1),
                );
            }
            continue;
        }
        let ms = |v: &Value| fmt(&json!(v.as_f64().map(|x| x / 1e3)), 1);
        println!(
            "{:>6} {:>8} {:>9} ({:>5}) {:>8} {:>9} ({:>5}) {:>8} {:>9} {:>9} {:>9} {:>11} {:>11}",
            s["groups"],
            fmt(&s["elect_ms"], 0),
            fmt(&s["spread_writes_per_sec"], 0),
            fmt(&s["spread_vs_g1"], 2),
            ms(&s["spread_p99_us"]),
            fmt(&s["one_node_writes_per_sec"], 0),
            fmt(&s["one_node_vs_g1"], 2),
            ms(&s["one_node_p99_us"]),
            fmt(&s["spread_node_cpu_us_per_write"], 1),
            fmt(&s["idle_cpu_pct_avg"], 1),
            fmt(&s["idle_rss_mib_avg"], 1),
            fmt(&s["idle_cpu_pct_per_1000_groups"], 2),
            fmt(&s["idle_rss_kib_per_group"], 1),
        );
        if !s["idle_cpu_pct_per_1000_groups_vs_smallest"].is_null() {
            println!(
                "       idle cost against {} groups: {} % of a core per 1000 groups, {} KiB per group",
                s["idle_smallest_many"],
                fmt(&s["idle_cpu_pct_per_1000_groups_vs_smallest"], 2),
                fmt(&s["idle_rss_kib_per_group_vs_smallest"], 1),
            );
        }
        if !row["recovery"].is_null() {
            println!(
                "       recovery (node {} leading {} groups killed): all led {} ms, a write in every group {} ms",
                row["recovery"]["killed"],
                row["recovery"]["killed_led"],
                fmt(&row["recovery"]["all_led_ms"], 0),
                fmt(&row["recovery"]["all_written_ms"], 0),
            );
        }
    }
}

/// The phase's headline figures (for `e2e.json`).
pub(crate) fn figures(phase: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let summary = phase["summary"].as_array().cloned().unwrap_or_default();
    let base = summary.iter().find(|s| s["groups"] == 1);
    for s in &summary {
        let g = s["groups"].as_u64().unwrap_or(0);
        let idle_figures = |out: &mut Vec<Value>, while_electing: bool| {
            if g <= 1 {
                return;
            }
            let how = if while_electing {
                " (while electing)"
            } else {
                ""
            };
            out.push(json!({
                "name": format!("{g} idle groups per node{how}: CPU per 1000 groups, against 1 group"),
                "value": s["idle_cpu_pct_per_1000_groups"],
                "unit": "% of a core",
            }));
            out.push(json!({
                "name": format!("{g} idle groups per node{how}: resident memory per group, against 1 group"),
                "value": s["idle_rss_kib_per_group"],
                "unit": "KiB",
            }));
            if let Some(small) = s["idle_smallest_many"].as_u64().filter(|&m| m < g) {
                out.push(json!({
                    "name": format!("{g} idle groups per node{how}: CPU per 1000 groups, against {small} groups"),
                    "value": s["idle_cpu_pct_per_1000_groups_vs_smallest"],
                    "unit": "% of a core",
                }));
                out.push(json!({
                    "name": format!("{g} idle groups per node{how}: resident memory per group, against {small} groups"),
                    "value": s["idle_rss_kib_per_group_vs_smallest"],
                    "unit": "KiB",
                }));
            }
        };
        if let Some(e) = s["error"].as_str() {
            out.push(
                json!({ "name": format!("{g} groups per node: {e}"), "value": null, "unit": "" }),
            );
            if !s["idle_cpu_pct_avg"].is_null() {
                idle_figures(&mut out, true);
            }
            continue;
        }
        idle_figures(&mut out, false);
        if g > 1 {
            for (p, key) in [
                ("leaders spread", "spread_writes_per_sec"),
                ("leaders on one node", "one_node_writes_per_sec"),
            ] {
                out.push(json!({
                    "name": format!("{g} groups per node, {p}: 100 B writes, 512 clients"),
                    "value": s[key],
                    "unit": "writes/s",
                    "baseline_name": "1 group",
                    "baseline": base.map(|b| b["spread_writes_per_sec"].clone()),
                }));
            }
            out.push(json!({
                "name": format!("{g} groups per node, leaders spread: p99"),
                "value": s["spread_p99_us"].as_f64().map(|x| x / 1e3),
                "unit": "ms",
                "baseline_name": "1 group",
                "baseline": base.and_then(|b| b["spread_p99_us"].as_f64()).map(|x| x / 1e3),
            }));
            out.push(json!({
                "name": format!("{g} groups per node, leaders spread: node CPU per write"),
                "value": s["spread_node_cpu_us_per_write"],
                "unit": "us",
                "baseline_name": "1 group",
                "baseline": base.map(|b| b["spread_node_cpu_us_per_write"].clone()),
            }));
        }
        if !s["recovery_all_led_ms"].is_null() || !s["recovery_all_written_ms"].is_null() {
            out.push(json!({
                "name": format!("{g} groups: node leading the most killed, to a write acknowledged in every group"),
                "value": s["recovery_all_written_ms"],
                "unit": "ms",
            }));
        }
    }
    out
}

/// An HTML table of the phase.
pub(crate) fn html(phase: &Value) -> String {
    let mut t = String::from(
        "<table border='1' cellpadding='4' style='border-collapse:collapse'><tr><th>groups</th><th>elect s</th>\
         <th>spread writes/s</th><th>vs G=1</th><th>p99 ms</th><th>one-node writes/s</th><th>vs G=1</th><th>p99 ms</th>\
         <th>node CPU us/write (spread)</th><th>idle CPU % (avg node)</th><th>idle RSS MiB (avg node)</th>\
         <th>idle CPU % per 1000 groups</th><th>idle RSS KiB per group</th><th>recovery: all led ms</th><th>recovery: all written ms</th></tr>",
    );
    for s in phase["summary"].as_array().into_iter().flatten() {
        if let Some(e) = s["error"].as_str() {
            // The idle columns hold what hosting the groups cost while
            // they tried to elect, when it was measured.
            t.push_str(&format!(
                "<tr><td>{}</td><td colspan='8'>{e}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td></td><td></td></tr>",
                s["groups"],
                fmt(&s["idle_cpu_pct_avg"], 1),
                fmt(&s["idle_rss_mib_avg"], 1),
                fmt(&s["idle_cpu_pct_per_1000_groups"], 2),
                fmt(&s["idle_rss_kib_per_group"], 1),
            ));
            continue;
        }
        let ms = |v: &Value| fmt(&json!(v.as_f64().map(|x| x / 1e3)), 2);
        t.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s["groups"],
            ms(&s["elect_ms"]),
            fmt(&s["spread_writes_per_sec"], 0),
            fmt(&s["spread_vs_g1"], 2),
            ms(&s["spread_p99_us"]),
            fmt(&s["one_node_writes_per_sec"], 0),
            fmt(&s["one_node_vs_g1"], 2),
            ms(&s["one_node_p99_us"]),
            fmt(&s["spread_node_cpu_us_per_write"], 1),
            fmt(&s["idle_cpu_pct_avg"], 1),
            fmt(&s["idle_rss_mib_avg"], 1),
            fmt(&s["idle_cpu_pct_per_1000_groups"], 2),
            fmt(&s["idle_rss_kib_per_group"], 1),
            fmt(&s["recovery_all_led_ms"], 0),
            fmt(&s["recovery_all_written_ms"], 0),
        ));
    }
    t.push_str("</table>");
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_group_hashes_to_it() {
        for groups in [1u32, 3, 16, 600] {
            let keys = keys_per_group(groups, 7).expect("keys");
            assert_eq!(keys.len(), groups as usize);
            for (g, pool) in keys.iter().enumerate() {
                assert_eq!(pool.len(), (2048 / groups as usize).max(4));
                for k in pool {
                    assert_eq!(group_of(k, groups) as usize, g);
                }
            }
        }
    }

    #[test]
    fn summaries_of_one_group_and_of_many() {
        let one = Summary::parse(&json!({"role": "follower", "leader": 2})).expect("one");
        assert_eq!((one.groups, one.looking), (1, 0));
        assert_eq!(one.leaders, vec![Some(2)]);
        let looking = Summary::parse(&json!({"role": "looking", "leader": null})).expect("one");
        assert_eq!(looking.looking, 1);
        let many = Summary::parse(&json!({
            "groups": 3, "led": 1, "looking": 1, "group_leaders": [1, null, 2]
        }))
        .expect("many");
        assert_eq!((many.groups, many.looking), (3, 1));
        let st = BTreeMap::from([(1, many.clone()), (2, many)]);
        // Node 1 claims group 0 and node 2 group 2; nobody claims group 1.
        assert_eq!(owners(3, &st), vec![Some(1), None, Some(2)]);
        assert_eq!(
            led_counts(&owners(3, &st)),
            BTreeMap::from([(1, 1), (2, 1)])
        );
    }

    #[test]
    fn writers_plan_covers_every_group_evenly() {
        for groups in [1u32, 16, 512, 4096, 10_000] {
            let plan = plan(groups);
            assert_eq!(plan.len(), CLIENTS);
            let mut writers = vec![0usize; groups as usize];
            for mine in &plan {
                assert!(!mine.is_empty());
                for &g in mine {
                    writers[g as usize] += 1;
                }
            }
            let (lo, hi) = (writers.iter().min(), writers.iter().max());
            assert!(lo >= Some(&1), "{groups} groups: a group without writers");
            // Clients per group differ by at most one.
            assert!(
                hi.zip(lo).is_some_and(|(h, l)| h - l <= 1),
                "{groups} groups: {lo:?}..{hi:?}"
            );
            // Groups per client differ by at most one.
            let sizes: Vec<usize> = plan.iter().map(Vec::len).collect();
            let (a, b) = (sizes.iter().min(), sizes.iter().max());
            assert!(b.zip(a).is_some_and(|(b, a)| b - a <= 1));
        }
    }
}
