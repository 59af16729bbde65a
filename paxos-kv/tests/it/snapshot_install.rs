//! A follower that missed far more than the leader keeps in its log window
//! catches up by snapshot (SNAP): the install runs off the node's loop and
//! the follower converges to the leader's state.

use bytes::Bytes;
use paxos_kv::client::Client;
use paxos_kv::client_proto::ReadMode;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_installs_a_snapshot_and_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    spec.segment_mib = 1;
    spec.snapshot_every = 100;
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader is elected");
    let follower = cluster
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    cluster.kill(follower).expect("kill the follower");

    // Far more than the leader's in-memory window (500 entries), and more
    // log bytes than a third of the snapshot: a DIFF is not allowed.
    let live: Vec<_> = cluster
        .members()
        .iter()
        .filter(|(&id, _)| id != follower)
        .map(|(_, m)| m.client)
        .collect();
    let client = Client::new(live, cluster.client_security(), 1, Duration::from_secs(10));
    let value = Bytes::from(vec![b'v'; 2048]);
    let keys = 1_200;
    for i in 0..keys {
        client
            .put(Bytes::from(format!("key/{i}")), value.clone())
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
    }

    cluster.start_node(follower).expect("restart the follower");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = cluster.statuses().await;
        let done = st.len() == 3 && {
            let first = &st[&leader];
            st.values()
                .all(|v| v["applied"] == first["applied"] && v["digest"] == first["digest"])
                && first["keys"].as_u64() == Some(keys)
        };
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence within 60 s: {:#}",
            serde_json::json!(st)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(cluster.log_path(follower)).expect("follower log");
    assert!(
        log.contains("snapshot installed; state replaced"),
        "the follower caught up by snapshot: {log}"
    );
    let c = Client::new(
        vec![cluster.members()[&follower].client],
        cluster.client_security(),
        2,
        Duration::from_secs(5),
    );
    let got = c
        .get(Bytes::from(format!("key/{}", keys - 1)), ReadMode::Stale)
        .await
        .expect("stale read on the follower");
    assert_eq!(got, Some(value));
}
