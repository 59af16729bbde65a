//! Many groups per node (issue 16), on real processes: keys spread over the
//! groups by hash, the client routes each to its group's leader, a killed
//! node's groups elect again and nothing acknowledged is lost, and wrapping
//! a request in a group does not get it past the client port's checks.

use bytes::Bytes;
use paxos_kv::client::{Client, ClientError, Session};
use paxos_kv::client_proto::ReadMode;
use paxos_kv::kv::KvOp;
use paxos_kv::shard::group_of;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster, READER_CLIENT};
use std::path::PathBuf;
use std::time::Duration;

const GROUPS: u32 = 8;

fn spec(dir: &std::path::Path) -> ClusterSpec {
    let mut spec = ClusterSpec::new(
        3,
        dir.to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    spec.segment_mib = 4;
    spec.extra_node_args = vec!["--groups".into(), GROUPS.to_string()];
    spec
}

fn key(i: u32) -> Bytes {
    Bytes::from(format!("key-{i}"))
}

/// Writes keys `range` in `session`, retrying each (same session and
/// sequence) a bounded number of times; returns the keys acknowledged.
async fn write_all(
    client: &Client,
    session: &mut Session,
    range: std::ops::Range<u32>,
) -> Vec<u32> {
    let mut acked = Vec::new();
    for i in range {
        for attempt in 0..50 {
            match client
                .write_in(
                    session,
                    KvOp::Put {
                        key: key(i),
                        value: Bytes::from(format!("value-{i}")),
                    },
                )
                .await
            {
                Ok(_) => {
                    acked.push(i);
                    break;
                }
                Err(e) if attempt < 49 => {
                    tracing::debug!(i, error = %e, "write retried");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("write {i} failed 50 times: {e}"),
            }
        }
    }
    acked
}

async fn read_back(client: &Client, keys: &[u32]) {
    for &i in keys {
        let mut last = None;
        for _ in 0..50 {
            match client.get(key(i), ReadMode::Linearizable).await {
                Ok(v) => {
                    assert_eq!(
                        v.as_deref(),
                        Some(format!("value-{i}").as_bytes()),
                        "acknowledged key-{i} (group {}) reads back",
                        group_of(&key(i), GROUPS)
                    );
                    last = None;
                    break;
                }
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if let Some(e) = last {
            panic!("key-{i} could not be read: {e}");
        }
    }
}

/// Group `g`'s status at its leader, if a node says it leads it.
async fn leader_status(
    cluster: &LocalCluster,
    security: &paxos_kv::tls::ClientSecurity,
    g: u32,
) -> Option<serde_json::Value> {
    for m in cluster.members().values() {
        let Ok(s) = Client::group_status_of(m.client, security, Duration::from_secs(2), g).await
        else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(&s).ok()?;
        if v["role"] == "leader" {
            return Some(v);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_spread_over_groups_and_survive_a_killed_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = LocalCluster::start(spec(dir.path())).expect("cluster starts");
    let led = cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group elects a leader");
    assert_eq!(led.values().sum::<u64>(), u64::from(GROUPS), "{led:?}");
    let security = cluster.client_security();
    let client = Client::with_session(
        cluster.client_addrs(),
        security.clone(),
        Session::assigned(),
        Duration::from_secs(5),
    );
    assert_eq!(client.groups().await.expect("routing learned"), GROUPS);

    let mut session = Session::new(7);
    let acked = write_all(&client, &mut session, 0..200).await;
    read_back(&client, &acked).await;

    // Every group got keys, and each group's store holds exactly the keys
    // that hash to it.
    for g in 0..GROUPS {
        let expected = acked
            .iter()
            .filter(|&&i| group_of(&key(i), GROUPS) == g)
            .count();
        assert!(expected > 0, "group {g} got none of 200 keys");
        let v = leader_status(&cluster, &security, g)
            .await
            .unwrap_or_else(|| panic!("group {g} has a leader"));
        assert_eq!(v["keys"].as_u64(), Some(expected as u64), "group {g}: {v}");
    }

    // Kill the node that leads the most groups: its groups elect again
    // among the other two, and every acknowledged write is still there.
    let (&victim, _) = led.iter().max_by_key(|(_, &n)| n).expect("three nodes");
    cluster.kill(victim).expect("kill");
    let led = cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group has a leader again after a node was killed");
    assert!(!led.contains_key(&victim));
    let more = write_all(&client, &mut session, 200..300).await;
    read_back(&client, &acked).await;
    read_back(&client, &more).await;

    // The killed node comes back and catches up in every group.
    cluster.start_node(victim).expect("restart");
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("all groups led with the node back");
    let total = (acked.len() + more.len()) as u64;
    let mut caught_up = false;
    for _ in 0..100 {
        let st = cluster.statuses().await;
        if st.get(&victim).and_then(|v| v["keys"].as_u64()) == Some(total) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        caught_up,
        "the restarted node holds all {total} keys: {:?}",
        cluster.statuses().await.get(&victim)
    );
    cluster.stop();
}

/// A read-only principal's write wrapped in a group request is refused like
/// a plain one (the client wraps every request once the cluster has many
/// groups, so this is what a reader's `put` sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_request_does_not_get_past_the_role_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = LocalCluster::start(spec(dir.path())).expect("cluster starts");
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group elects a leader");
    let reader = cluster
        .client_security_for(READER_CLIENT)
        .expect("reader certificate");
    let client = Client::new(cluster.client_addrs(), reader, 9, Duration::from_secs(5));
    assert_eq!(client.groups().await.expect("routing learned"), GROUPS);
    match client.put(key(1), Bytes::from_static(b"v")).await {
        Err(ClientError::Forbidden(why)) => assert!(why.contains("rw"), "{why}"),
        other => panic!("a reader's write in a group was not refused: {other:?}"),
    }
    cluster.stop();
}
