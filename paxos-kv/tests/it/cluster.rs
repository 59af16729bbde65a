//! Three node processes on loopback: writes, a SIGKILLed leader, more
//! writes, the dead node restarted; every node must converge to the same
//! state with nothing acknowledged lost.

use bytes::Bytes;
use paxos_kv::client::Client;
use paxos_kv::client_proto::ReadMode;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn spec(dir: &std::path::Path) -> ClusterSpec {
    let mut spec = ClusterSpec::new(
        3,
        dir.to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    // Small segments and frequent snapshots so that the test crosses segment
    // rolls, prefix truncation and snapshot-based catch-up.
    spec.segment_mib = 1;
    spec.snapshot_every = 150;
    spec
}

async fn write_keys(client: &Client, prefix: &str, n: usize) -> Vec<(Bytes, Bytes)> {
    let mut acked = Vec::new();
    for i in 0..n {
        let key = Bytes::from(format!("{prefix}/{i}"));
        let value = Bytes::from(format!("value-{prefix}-{i}"));
        client
            .put(key.clone(), value.clone())
            .await
            .unwrap_or_else(|e| panic!("put {prefix}/{i} failed: {e}"));
        acked.push((key, value));
    }
    acked
}

/// Waits until every running node reports the same applied zxid and digest.
async fn wait_converged(
    cluster: &LocalCluster,
    nodes: usize,
    timeout: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    let mut last = serde_json::Value::Null;
    while Instant::now() < deadline {
        let st = cluster.statuses().await;
        if st.len() == nodes {
            let first = st.values().next().cloned().unwrap_or_default();
            let same = st
                .values()
                .all(|v| v["applied"] == first["applied"] && v["digest"] == first["digest"]);
            if same && first["applied"].as_u64().unwrap_or(0) > 0 {
                return first;
            }
        }
        last = serde_json::json!(st);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nodes did not converge within {timeout:?}; last statuses: {last:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_survive_a_killed_leader_and_converge() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = LocalCluster::start(spec(dir.path())).expect("cluster starts");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader is elected");

    // Write through one node only: followers redirect to the leader.
    let first = cluster.members()[&1].client;
    let client = Client::new(
        vec![first],
        cluster.client_security(),
        1,
        Duration::from_secs(5),
    );
    let mut acked = write_keys(&client, "before", 200).await;

    // Kill the leader without warning; the others elect and go on.
    cluster.kill(leader).expect("kill leader");
    let survivors: Vec<_> = cluster
        .members()
        .iter()
        .filter(|(&id, _)| id != leader)
        .map(|(_, m)| m.client)
        .collect();
    let client = Client::new(
        survivors,
        cluster.client_security(),
        2,
        Duration::from_secs(5),
    );
    acked.extend(write_keys(&client, "after", 300).await);
    let new_leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a new leader");
    assert_ne!(new_leader, leader, "the killed node cannot lead");

    // Bring the dead node back: it catches up (DIFF or SNAP) and converges.
    cluster.start_node(leader).expect("restart");
    let status = wait_converged(&cluster, 3, Duration::from_secs(60)).await;
    assert_eq!(
        status["keys"].as_u64(),
        Some(acked.len() as u64),
        "{status:#}"
    );

    // Every acknowledged write is on every node, with its exact value.
    for (&id, m) in cluster.members() {
        let c = Client::new(
            vec![m.client],
            cluster.client_security(),
            100 + id,
            Duration::from_secs(5),
        );
        for (key, value) in &acked {
            let got = c
                .get(key.clone(), ReadMode::Stale)
                .await
                .expect("stale read");
            assert_eq!(got.as_ref(), Some(value), "node {id} lost {key:?}");
        }
    }
    // And a linearizable read through the restarted node sees the last write.
    let c = Client::new(
        vec![cluster.members()[&leader].client],
        cluster.client_security(),
        999,
        Duration::from_secs(5),
    );
    let (key, value) = acked.last().expect("writes");
    assert_eq!(
        c.get(key.clone(), ReadMode::Linearizable)
            .await
            .expect("read"),
        Some(value.clone())
    );
}
