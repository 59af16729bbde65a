//! The end-to-end bench's split phase: how long a split takes to move a
//! large group's keys to its new group (issue 16: groups added at run time
//! by splits; the keys go through the new group's own log as `Ingest`
//! batches, so the move is bounded by that log's write rate).
//!
//! For each size N, on a fresh 3-node cluster of 2 groups (fsync on,
//! 100-byte values): N keys of group 0 written by 64 closed-loop writers
//! (their rate, measured on the same cluster, is the baseline), then
//! group 0 split at its midpoint with `Client::split_group`, timed until
//! the new group owns its range (its final batch applied and the routing
//! shows it). Then every key is read back (linearizable reads, through
//! the routing the client learns): a key missing or with another value is
//! counted as lost.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use paxos_kv::auth::Role;
use paxos_kv::client::{Client, Session};
use paxos_kv::client_proto::ReadMode;
use paxos_kv::shard::{group_of, position, KeyRange};
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use serde_json::{json, Value};

use super::groups::wait_led;

/// The admin principal of the phase's clusters.
const OPS: &str = "ops";
/// Groups the cluster is created with (group 0 is split).
const GROUPS: u32 = 2;
/// Value size of every write.
const VALUE_BYTES: usize = 100;
/// Writers (and readers) at once.
const WORKERS: usize = 64;
/// Attempts of one write or read before it counts as failed.
const ATTEMPTS: usize = 50;

/// What the phase runs.
#[derive(Debug, Clone)]
pub(crate) struct SplitOptions {
    /// Keys in the group that is split, one cluster per size.
    pub sizes: Vec<u64>,
    /// Longest wait for the leaders, and for the move.
    pub bound: Duration,
}

/// `n` distinct keys that group 0 of [`GROUPS`] owns.
fn keys_of_group_0(n: u64, run_id: u64) -> Vec<Bytes> {
    let mut keys = Vec::with_capacity(n as usize);
    // Bounded: about half of the keys tried belong to group 0.
    for j in 0..n.saturating_mul(8).max(64) {
        if keys.len() as u64 == n {
            break;
        }
        let key = Bytes::from(format!("s{run_id}/{j:09}"));
        if group_of(&key, GROUPS) == 0 {
            keys.push(key);
        }
    }
    keys
}

/// Runs `WORKERS` tasks over `keys`, each calling `op` on the keys it takes
/// (every key once), up to [`ATTEMPTS`] tries each; returns the keys whose
/// every try failed.
async fn for_each_key<F, Fut>(keys: Arc<Vec<Bytes>>, op: F) -> u64
where
    F: Fn(usize, Bytes) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let (keys, next, op) = (keys.clone(), next.clone(), op.clone());
        tasks.spawn(async move {
            let mut failed = 0u64;
            // Bounded: the workers take every key once between them.
            for _ in 0..keys.len() {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(key) = keys.get(i) else { break };
                let mut ok = false;
                for attempt in 0..ATTEMPTS {
                    if op(w, key.clone()).await {
                        ok = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20 * (attempt as u64 + 1))).await;
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

async fn one_size(work: &Path, bin: &Path, run_id: u64, n: u64, opts: &SplitOptions) -> Value {
    println!("== split: {n} keys in the group split, 3 nodes, {GROUPS} groups");
    let dir = work.join(format!("cluster-split-{n}"));
    let mut spec = ClusterSpec::new(3, dir.clone(), bin.to_path_buf());
    spec.clients.push((OPS.into(), Role::Admin));
    spec.extra_node_args = vec!["--groups".into(), GROUPS.to_string()];
    spec.log_filter = None;
    let cluster = match LocalCluster::start(spec) {
        Ok(c) => c,
        Err(e) => {
            println!("  did not start: {e:#}");
            return json!({ "keys": n, "error": format!("did not start: {e:#}") });
        }
    };
    let ids = cluster.ids();
    if wait_led(&cluster, &ids, GROUPS, opts.bound).await.is_none() {
        println!("  no leader in every group within {:?}", opts.bound);
        return json!({ "keys": n, "error": "no leader in every group" });
    }
    let keys = Arc::new(keys_of_group_0(n, run_id));
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let client = Arc::new(Client::new(
        cluster.client_addrs(),
        cluster.client_security(),
        (run_id << 24) | 0xFFF0,
        Duration::from_secs(10),
    ));
    let sessions: Arc<Vec<tokio::sync::Mutex<Session>>> = Arc::new(
        (0..WORKERS)
            .map(|w| tokio::sync::Mutex::new(Session::new((run_id << 24) | w as u64)))
            .collect(),
    );
    let started = Instant::now();
    let unwritten = for_each_key(keys.clone(), {
        let (client, sessions, value) = (client.clone(), sessions.clone(), value.clone());
        move |w, key| {
            let (client, sessions, value) = (client.clone(), sessions.clone(), value.clone());
            async move {
                let mut session = sessions[w].lock().await;
                client.put_in(&mut session, key, value).await.is_ok()
            }
        }
    })
    .await;
    let write_s = started.elapsed().as_secs_f64();
    let write_rate = (n - unwritten) as f64 / write_s;
    println!(
        "  wrote {} keys in {write_s:.1} s ({write_rate:.0} writes/s, {WORKERS} writers); {unwritten} not written",
        n - unwritten
    );
    let admin = match cluster.client_security_for(OPS) {
        Ok(s) => Client::new(
            cluster.client_addrs(),
            s,
            (run_id << 24) | 0xFFF1,
            Duration::from_secs(10),
        ),
        Err(e) => return json!({ "keys": n, "error": format!("no admin client: {e:#}") }),
    };
    let started = Instant::now();
    let split = admin.split_group(0, Some(opts.bound)).await;
    let move_s = started.elapsed().as_secs_f64();
    let (child, answer) = match split {
        Ok(done) => done,
        Err(e) => {
            println!("  split failed after {move_s:.1} s: {e}");
            return json!({ "keys": n, "write_rate": write_rate, "error": format!("split: {e}") });
        }
    };
    // The new group's share of the keys: those in the range the split gave.
    let given = serde_json::from_str::<Value>(&answer)
        .ok()
        .and_then(|v| v["range_given"].as_str().and_then(KeyRange::from_hex));
    let moved = given.map_or(0, |r| {
        keys.iter()
            .filter(|k| r.contains(position(k, GROUPS)))
            .count() as u64
    });
    let move_rate = moved as f64 / move_s;
    println!(
        "  split of group 0: new group {child} owns its range after {move_s:.2} s; {moved} keys moved ({move_rate:.0} keys/s, {:.1} MB/s of values; {:.2}x the write rate)",
        move_rate * VALUE_BYTES as f64 / 1e6,
        move_rate / write_rate
    );
    let started = Instant::now();
    let lost = for_each_key(keys.clone(), {
        let (client, value) = (client.clone(), value.clone());
        move |_, key| {
            let (client, value) = (client.clone(), value.clone());
            async move {
                matches!(client.get(key, ReadMode::Linearizable).await, Ok(Some(v)) if v == value)
            }
        }
    })
    .await;
    println!(
        "  read back every key in {:.1} s: {lost} missing or wrong",
        started.elapsed().as_secs_f64()
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    json!({
        "keys": n,
        "value_bytes": VALUE_BYTES,
        "written": n - unwritten,
        "write_s": write_s,
        "write_rate": write_rate,
        "new_group": child,
        "moved": moved,
        "move_s": move_s,
        "move_rate": move_rate,
        "lost": lost,
    })
}

/// Runs the phase; returns its results (`kind`: "split").
pub(crate) async fn split_phase(
    work: &Path,
    bin: &Path,
    run_id: u64,
    opts: &SplitOptions,
) -> Result<Value> {
    if opts.sizes.is_empty() {
        bail!("the split phase needs at least one size (--split-keys)");
    }
    let mut rows = Vec::new();
    for (i, &n) in opts.sizes.iter().enumerate() {
        rows.push(one_size(work, bin, (run_id << 8) | i as u64, n, opts).await);
    }
    println!("== split: 3 nodes, fsync on, {VALUE_BYTES} B values");
    println!("keys       move s   keys/s moved   x write rate   lost");
    for r in &rows {
        if let Some(e) = r["error"].as_str() {
            println!("{:<10} {e}", r["keys"]);
            continue;
        }
        println!(
            "{:<10} {:>6.2}   {:>12.0}   {:>12.2}   {}",
            r["keys"],
            r["move_s"].as_f64().unwrap_or(0.0),
            r["move_rate"].as_f64().unwrap_or(0.0),
            r["move_rate"].as_f64().unwrap_or(0.0) / r["write_rate"].as_f64().unwrap_or(1.0),
            r["lost"],
        );
    }
    Ok(json!({ "kind": "split", "rows": rows }))
}
