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
use std::sync::Arc;
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

/// A 3-node cluster of [`GROUPS`] groups with an administrator `ops`,
/// every group led; with a client and an administration client.
async fn start_with_admin(dir: &std::path::Path) -> (LocalCluster, Client, Client) {
    let mut spec = spec(dir);
    spec.clients
        .push(("ops".into(), paxos_kv::auth::Role::Admin));
    let cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group elects a leader");
    let client = Client::with_session(
        cluster.client_addrs(),
        cluster.client_security(),
        Session::assigned(),
        Duration::from_secs(10),
    );
    let admin = Client::with_session(
        cluster.client_addrs(),
        cluster.client_security_for("ops").expect("ops certificate"),
        Session::assigned(),
        Duration::from_secs(10),
    );
    (cluster, client, admin)
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

/// Group `g`'s status at its leader, asking every node until one says it
/// leads it (bounded: leaders move while the nodes balance them).
async fn leader_status(
    cluster: &LocalCluster,
    security: &paxos_kv::tls::ClientSecurity,
    g: u32,
) -> Option<serde_json::Value> {
    for _ in 0..100 {
        for m in cluster.members().values() {
            let Ok(s) =
                Client::group_status_of(m.client, security, Duration::from_secs(2), g).await
            else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&s) else {
                continue;
            };
            if v["role"] == "leader" {
                return Some(v);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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

/// With the election admission squeezed to two groups at a time, every
/// group still elects at start, and again after the node leading the most
/// is killed: slots free as groups establish, and the waiting groups get
/// their turn (their elections run wherever a peer admitted them too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tight_election_admission_still_elects_every_group() {
    const MANY: u32 = 48;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = spec(dir.path());
    spec.extra_node_args = vec![
        "--groups".into(),
        MANY.to_string(),
        "--max-elections".into(),
        "2".into(),
    ];
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    let led = cluster
        .wait_all_groups_led(Duration::from_secs(90))
        .await
        .expect("every group elects a leader, two at a time");
    let (&victim, _) = led.iter().max_by_key(|(_, &n)| n).expect("three nodes");
    cluster.kill(victim).expect("kill");
    let led = cluster
        .wait_all_groups_led(Duration::from_secs(90))
        .await
        .expect("every group has a leader again after a node was killed");
    assert!(!led.contains_key(&victim));
    for (id, st) in cluster.statuses().await {
        assert_eq!(
            st["election_queue"].as_u64(),
            Some(0),
            "node {id}: no group waits once all are led: {st}"
        );
    }
    let client = Client::with_session(
        cluster.client_addrs(),
        cluster.client_security(),
        Session::assigned(),
        Duration::from_secs(5),
    );
    let mut session = Session::new(11);
    let acked = write_all(&client, &mut session, 0..100).await;
    read_back(&client, &acked).await;
    cluster.stop();
}

/// A membership change asked of a quiesced group goes through: the leader
/// has heard nothing from its followers while quiet, so the check that a
/// quorum of the new membership is in sync must wait for the wake's
/// heartbeats (answered "retry:", which the client retries) rather than
/// refuse the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_in_a_quiet_group_is_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = spec(dir.path());
    spec.extra_node_args
        .extend(["--quiesce-ms".into(), "200".into()]);
    spec.clients
        .push(("ops".into(), paxos_kv::auth::Role::Admin));
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group elects a leader");
    let security = cluster.client_security();
    let group = 1;
    let leader = leader_status(&cluster, &security, group)
        .await
        .expect("group 1 has a leader");
    let leader_id = leader["id"].as_u64().expect("the status names its node");
    let follower = cluster
        .members()
        .keys()
        .copied()
        .find(|&id| id != leader_id)
        .expect("a follower");
    // Idle for ten quiescence periods: the group is quiet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ops = cluster.client_security_for("ops").expect("ops certificate");
    let client = Client::new(cluster.client_addrs(), ops, 5, Duration::from_secs(10));
    let answer = client
        .admin_in(
            group,
            paxos_kv::client_proto::AdminRequest::Change {
                change: paxos_kv::client_proto::AdminChange::Demote,
                node: follower,
                addrs: None,
            },
        )
        .await;
    assert!(
        answer.is_ok(),
        "demoting {follower} in quiet group {group}: {answer:?}"
    );
    cluster.stop();
}

/// A node that loses its data directory and comes straight back with
/// `--rejoin` (before its peers notice it was gone) is readmitted in every
/// group: where the leader's epoch was established with the node's lost
/// promises, that leader cannot readmit it and hands the group over to the
/// third node, whose new epoch does. Before that hand-over existed, about
/// two groups in three stayed recovering for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_is_readmitted_in_every_group() {
    const MANY: u32 = 24;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = spec(dir.path());
    spec.extra_node_args = vec!["--groups".into(), MANY.to_string()];
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    let led = cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group elects a leader");
    // The node leading the fewest groups: it follows most of them, and the
    // leaders of those keep their epochs through its wipe.
    let victim = cluster
        .ids()
        .into_iter()
        .min_by_key(|id| led.get(id).copied().unwrap_or(0))
        .expect("three nodes");
    cluster.rejoin_node(victim).expect("rejoin");
    let mut last = None;
    for _ in 0..600 {
        let st = cluster.statuses().await;
        if let Some(v) = st.get(&victim) {
            let following = v["following"].as_u64().unwrap_or(0) + v["led"].as_u64().unwrap_or(0);
            if v["recovering"].as_u64() == Some(0) && following == u64::from(MANY) {
                last = None;
                break;
            }
            last = Some(v.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last.is_none(),
        "node {victim} not readmitted in every group after 60 s: {last:?}"
    );
    let client = Client::with_session(
        cluster.client_addrs(),
        cluster.client_security(),
        Session::assigned(),
        Duration::from_secs(5),
    );
    let mut session = Session::new(13);
    let acked = write_all(&client, &mut session, 0..50).await;
    read_back(&client, &acked).await;
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

/// Waits until the running nodes lead `want` groups each (bounded).
async fn wait_spread(
    cluster: &LocalCluster,
    want: u64,
    timeout: Duration,
) -> std::collections::BTreeMap<u64, u64> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = Default::default();
    while std::time::Instant::now() < deadline {
        if let Ok(led) = cluster.wait_all_groups_led(Duration::from_secs(5)).await {
            if led.values().all(|&n| n == want) {
                return led;
            }
            last = led;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("leaders not spread {want} per node within {timeout:?}: {last:?}");
}

/// Leaders spread evenly over the nodes, over the survivors when a node is
/// lost, and back over all of them once it returns (12 groups, 3 nodes,
/// `--balance-leaders`). It was ignored while a node away during a
/// hand-over could not rejoin until the next election (fixed in the
/// elector: a looking node joins a leader taken by hand-over on a quorum
/// of reports).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_are_spread_and_spread_again_after_a_failure_heals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = spec(dir.path());
    spec.extra_node_args = vec!["--groups".into(), "12".into(), "--balance-leaders".into()];
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    wait_spread(&cluster, 4, Duration::from_secs(60)).await;
    cluster.kill(2).expect("kill");
    let led = wait_spread(&cluster, 6, Duration::from_secs(60)).await;
    assert!(!led.contains_key(&2), "{led:?}");
    cluster.start_node(2).expect("restart");
    wait_spread(&cluster, 4, Duration::from_secs(60)).await;
    cluster.stop();
}

/// A client of many groups keeps one connection per node while group
/// leaders move: a "not the leader" answer says nothing against the node's
/// connection (it leads other groups), so the client follows the redirect
/// over the connections it holds. It used to close the connection on every
/// redirect and open another for the next attempt, a TCP and TLS handshake
/// per redirect: under an election storm the chaos harness's 256 probe
/// writers opened ~800 connections a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_keeps_its_connections_while_group_leaders_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = spec(dir.path());
    spec.clients
        .push(("ops".into(), paxos_kv::auth::Role::Admin));
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group elects a leader");
    let security = cluster.client_security();
    // One key per group.
    let mut keys: Vec<Option<u32>> = vec![None; GROUPS as usize];
    for i in 0..10_000u32 {
        let g = group_of(&key(i), GROUPS) as usize;
        if keys[g].is_none() {
            keys[g] = Some(i);
        }
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    let keys: Vec<u32> = keys
        .into_iter()
        .map(|k| k.expect("a key per group"))
        .collect();
    let client = Client::new(
        cluster.client_addrs(),
        security.clone(),
        77,
        Duration::from_secs(5),
    );
    let mut session = Session::new(77);
    for &i in &keys {
        write_all(&client, &mut session, i..i + 1).await;
    }
    // Every group's leader moves to another node (by an admin client of
    // its own, so that only the writer's connections are counted).
    let ops = cluster.client_security_for("ops").expect("ops certificate");
    let admin = Client::new(cluster.client_addrs(), ops, 78, Duration::from_secs(10));
    for g in 0..GROUPS {
        let leader = leader_status(&cluster, &security, g)
            .await
            .and_then(|v| v["id"].as_u64())
            .expect("the group has a leader");
        let to = cluster
            .ids()
            .into_iter()
            .find(|&id| id != leader)
            .expect("another node");
        admin
            .admin_in(
                g,
                paxos_kv::client_proto::AdminRequest::TransferLeader { to },
            )
            .await
            .unwrap_or_else(|e| panic!("group {g}: transfer to {to}: {e}"));
    }
    // The writer's routing now names the old leaders: each write is
    // redirected once.
    for &i in &keys {
        write_all(&client, &mut session, i..i + 1).await;
    }
    assert!(
        client.connections_opened() <= 3,
        "{} connections opened for 3 nodes",
        client.connections_opened()
    );
    cluster.stop();
}

/// The shared log's segment files under node `id`'s data directory.
fn shared_log_segments(cluster: &LocalCluster, id: u64) -> usize {
    let dir = cluster.data_dir(id).join("wal").join("log");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
        .count()
}

/// A group written once and then left alone must not hold the shared log's
/// old segments while the other groups write on (raft-engine's purge): a
/// node asks a group that holds the oldest segment back to snapshot and
/// cut its log, and the segment goes. Before, the quiet group's one entry
/// kept every segment written since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_group_does_not_hold_the_shared_log_s_old_segments() {
    const TWO: u32 = 2;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    spec.segment_mib = 1;
    spec.snapshot_every = 50;
    spec.extra_node_args = vec![
        "--groups".into(),
        TWO.to_string(),
        "--retention-entries".into(),
        "20".into(),
    ];
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group elects a leader");
    let client = Client::with_session(
        cluster.client_addrs(),
        cluster.client_security(),
        Session::assigned(),
        Duration::from_secs(5),
    );
    let in_group = |g: u32| {
        (0u32..)
            .find(|&i| group_of(&key(i), TWO) == g)
            .expect("a key")
    };
    let quiet = in_group(0);
    let mut session = Session::new(11);
    write_all(&client, &mut session, quiet..quiet + 1).await;
    // About 12 MiB in the other group: twelve segments of 1 MiB.
    let value = Bytes::from(vec![b'v'; 32 * 1024]);
    let busy: Vec<Bytes> = (0u32..)
        .map(key)
        .filter(|k| group_of(k, TWO) == 1)
        .take(384)
        .collect();
    for k in &busy {
        let mut attempts = 0;
        while let Err(e) = client.put(k.clone(), value.clone()).await {
            attempts += 1;
            assert!(attempts < 50, "put of {k:?} failed 50 times: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // Compaction passes run every 10 s on each node.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let counts = loop {
        let counts: Vec<usize> = cluster
            .ids()
            .into_iter()
            .map(|id| shared_log_segments(&cluster, id))
            .collect();
        if counts.iter().all(|&c| c <= 5) || std::time::Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        counts.iter().all(|&c| c <= 5),
        "shared log segments per node {counts:?} after 12 MiB in the busy group; \
         the quiet group's entry holds them"
    );
    // The quiet group still reads its write, and takes a new one.
    read_back(&client, &[quiet]).await;
    write_all(&client, &mut session, quiet + 1..quiet + 2).await;
    cluster.stop();
}

/// A node joins a cluster of many groups with one call per step, as
/// `paxos-client admin --all-groups` makes it: added as an observer in
/// every group, then promoted in every group; the same call again finds
/// every group done already (a rerun finishes what a failed run left);
/// every group then counts it a voter, and a write in every group still
/// commits; it leaves every group with one call too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_and_leaves_every_group_with_one_admin_call() {
    use paxos_kv::auth::Role;
    use paxos_kv::client_proto::{AdminChange, AdminRequest, NodeAddrs};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = spec(dir.path());
    spec.clients.push(("ops".into(), Role::Admin));
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group elects a leader");
    let ops = std::sync::Arc::new(Client::new(
        cluster.client_addrs(),
        cluster.client_security_for("ops").expect("ops certificate"),
        1,
        Duration::from_secs(5),
    ));
    let wait = Duration::from_secs(60);
    let joined = cluster.join_node(4).expect("the new machine starts");
    let change = |change, addrs| AdminRequest::Change {
        change,
        node: 4,
        addrs,
    };
    let addrs = Some(NodeAddrs {
        peer: joined.peer,
        client: joined.client,
    });
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = seen.clone();
    let added = ops
        .admin_in_every_group(
            change(AdminChange::AddObserver, addrs),
            4,
            wait,
            move |_, _| {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            },
        )
        .await
        .expect("groups learned");
    assert!(added.failed.is_empty(), "{:?}", added.failed);
    assert_eq!(added.done.len(), GROUPS as usize);
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), GROUPS);
    let promoted = ops
        .admin_in_every_group(change(AdminChange::Promote, None), 4, wait, |_, _| {})
        .await
        .expect("groups learned");
    assert!(promoted.failed.is_empty(), "{:?}", promoted.failed);
    for (g, json) in &promoted.done {
        let v: serde_json::Value = serde_json::from_str(json).expect("JSON");
        assert_eq!(
            v["voters"],
            serde_json::json!([1, 2, 3, 4]),
            "group {g}: {v}"
        );
    }
    let again = ops
        .admin_in_every_group(change(AdminChange::Promote, None), 4, wait, |_, _| {})
        .await
        .expect("groups learned");
    assert!(again.failed.is_empty(), "{:?}", again.failed);
    assert!(
        again.done.is_empty() && again.already.len() == GROUPS as usize,
        "a rerun finds every group already as asked: done {:?}, already {:?}",
        again.done,
        again.already
    );
    assert!(
        again.already.iter().all(|(_, a)| a.contains("voter")),
        "{:?}",
        again.already
    );
    let members = ops
        .admin_in_every_group(AdminRequest::Members, 4, wait, |_, _| {})
        .await
        .expect("groups learned");
    assert_eq!(members.done.len(), GROUPS as usize);
    for (g, json) in &members.done {
        let v: serde_json::Value = serde_json::from_str(json).expect("JSON");
        assert_eq!(
            v["voters"],
            serde_json::json!([1, 2, 3, 4]),
            "group {g}: {v}"
        );
    }
    let client = Client::with_session(
        cluster.client_addrs(),
        cluster.client_security(),
        Session::assigned(),
        Duration::from_secs(5),
    );
    let mut session = Session::new(21);
    let acked = write_all(&client, &mut session, 0..40).await;
    read_back(&client, &acked).await;
    let removed = ops
        .admin_in_every_group(change(AdminChange::Remove, None), 4, wait, |_, _| {})
        .await
        .expect("groups learned");
    assert!(removed.failed.is_empty(), "{:?}", removed.failed);
    for (g, json) in &removed.done {
        let v: serde_json::Value = serde_json::from_str(json).expect("JSON");
        assert_eq!(v["voters"], serde_json::json!([1, 2, 3]), "group {g}: {v}");
    }
    cluster.stop();
}

/// A new machine follows a group it was added to at once, whatever its
/// other groups (where it is no member yet) are doing, with every node
/// allowed one election at a time (`--max-elections 1`) and the machine
/// added to the highest group only. The admission never holds a group in
/// which the node does not vote (chaos `grow-and-shrink --groups 1000
/// --seed 208257` saw a joining node's group wait minutes for a slot
/// behind groups not yet added; that failure does not reproduce at this
/// scale: the chaos seed is its reproduction, this test guards the path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_follows_the_group_it_was_added_to_while_its_other_groups_look() {
    use paxos_kv::auth::Role;
    use paxos_kv::client_proto::{AdminChange, AdminRequest, NodeAddrs};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = spec(dir.path());
    spec.extra_node_args
        .extend(["--max-elections".to_string(), "1".to_string()]);
    spec.clients.push(("ops".into(), Role::Admin));
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group elects a leader");
    let ops = Client::new(
        cluster.client_addrs(),
        cluster.client_security_for("ops").expect("ops certificate"),
        1,
        Duration::from_secs(5),
    );
    let joined = cluster.join_node(4).expect("the new machine starts");
    let last = GROUPS - 1;
    let add = AdminRequest::Change {
        change: AdminChange::AddObserver,
        node: 4,
        addrs: Some(NodeAddrs {
            peer: joined.peer,
            client: joined.client,
        }),
    };
    let mut added = false;
    for _ in 0..100 {
        match ops.admin_in(last, add).await {
            Ok(_) => {
                added = true;
                break;
            }
            Err(e) => {
                println!("add in group {last}: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(added, "node 4 added as an observer of group {last}");
    let security = cluster.client_security();
    let mut status = serde_json::Value::Null;
    for _ in 0..300 {
        if let Ok(json) =
            Client::group_status_of(joined.client, &security, Duration::from_secs(2), last).await
        {
            status = serde_json::from_str(&json).expect("JSON");
            if status["leader"].is_u64() && status["epoch"].is_u64() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        status["leader"].is_u64() && status["epoch"].is_u64(),
        "node 4 follows group {last}'s leader within 30 s: {status}"
    );
    cluster.stop();
}

/// Kills node `id`, starts it again and waits until every group it and
/// the others host has a leader.
async fn restart(cluster: &mut LocalCluster, id: u64) {
    cluster.kill(id).expect("kill");
    cluster.start_node(id).expect("restart");
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group has a leader after the restart");
}

/// Whether every node hosts `n` groups, asked until they do (bounded:
/// 100 looks, 100 ms apart).
async fn wait_hosted(cluster: &LocalCluster, n: u32) -> bool {
    for _ in 0..100 {
        let st = cluster.statuses().await;
        if st
            .values()
            .all(|v| v["hosted"].as_u64() == Some(u64::from(n)))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A group split at run time (issue 16: groups added by an admin command):
/// under a concurrent writer, group G's upper half of keys moves to a new
/// group through its own log; every acknowledged write reads back through
/// a client that learned the ranges before the split (it is told "wrong
/// group" and learns them again) and through a new one; each node hosts
/// the new group, also after a restart (it is rebuilt from its origin and
/// log); and the new group splits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_splits_at_run_time_under_writes_and_keeps_every_acknowledged_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = spec(dir.path());
    spec.clients
        .push(("ops".into(), paxos_kv::auth::Role::Admin));
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group elects a leader");
    let security = cluster.client_security();
    let client = Arc::new(Client::with_session(
        cluster.client_addrs(),
        security.clone(),
        Session::assigned(),
        Duration::from_secs(10),
    ));
    let mut session = Session::new(11);
    let before = write_all(&client, &mut session, 0..400).await;
    let parent = group_of(&key(0), GROUPS);

    // A writer keeps writing while the split runs.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut session = Session::assigned();
            write_all(&client, &mut session, 1_000..1_400).await
        })
    };
    let admin = Client::with_session(
        cluster.client_addrs(),
        cluster.client_security_for("ops").expect("ops certificate"),
        Session::assigned(),
        Duration::from_secs(10),
    );
    let (child, answer) = admin
        .split_group(parent, Some(Duration::from_secs(60)))
        .await
        .expect("the split commits and the new group takes its keys over");
    assert!(child >= GROUPS, "a new id: {child} ({answer})");
    let during = writer.await.expect("writer");
    read_back(&client, &before).await;
    read_back(&client, &during).await;
    let fresh = Client::with_session(
        cluster.client_addrs(),
        security.clone(),
        Session::assigned(),
        Duration::from_secs(10),
    );
    read_back(&fresh, &before).await;
    read_back(&fresh, &during).await;

    // Every node hosts the new group; the parent and the child share the
    // parent's keys, none lost and none in both.
    let parent_keys = before
        .iter()
        .chain(&during)
        .filter(|&&i| group_of(&key(i), GROUPS) == parent)
        .count() as u64;
    let mut settled = false;
    for _ in 0..200 {
        let st = cluster.statuses().await;
        let hosted_everywhere = st
            .values()
            .all(|v| v["hosted"].as_u64() == Some(u64::from(GROUPS) + 1));
        let p = leader_status(&cluster, &security, parent).await;
        let c = leader_status(&cluster, &security, child).await;
        if let (true, Some(p), Some(c)) = (hosted_everywhere, p, c) {
            let (pk, ck) = (p["keys"].as_u64(), c["keys"].as_u64());
            if p["giving_away"].is_null() && c["taking_over"].is_null() {
                assert_eq!(
                    pk.zip(ck).map(|(a, b)| a + b),
                    Some(parent_keys),
                    "parent {p}\nchild {c}"
                );
                assert!(
                    pk > Some(0) && ck > Some(0),
                    "both halves hold keys: {pk:?} {ck:?}"
                );
                settled = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        settled,
        "the move finished on every node: {:?}",
        cluster.statuses().await
    );

    // A restarted node rebuilds the new group from its origin and its log.
    let victim = cluster.ids()[1];
    restart(&mut cluster, victim).await;
    let st = cluster.statuses().await;
    assert_eq!(
        st[&victim]["hosted"].as_u64(),
        Some(u64::from(GROUPS) + 1),
        "{}",
        st[&victim]
    );

    // The new group splits again, and everything still reads back.
    let (grandchild, _) = admin
        .split_group(child, Some(Duration::from_secs(60)))
        .await
        .expect("the new group splits too");
    assert!(grandchild > child);
    let after = write_all(&client, &mut session, 2_000..2_100).await;
    read_back(&client, &before).await;
    read_back(&client, &during).await;
    read_back(&client, &after).await;

    // A writer may not send the node's own split commands as writes.
    let forged = client
        .write(KvOp::FinishMove { child: grandchild })
        .await
        .expect_err("an internal command from a client is refused");
    assert!(matches!(forged, ClientError::Forbidden(_)), "{forged}");
    cluster.stop();
}

/// A node that cannot make a split's new group (its directory cannot be
/// created: a disk error, here a file in its way) tries again, and hosts
/// the group once the error is gone, without a restart; meanwhile the
/// other members carry the split through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_could_not_make_a_new_group_makes_it_once_it_can() {
    use paxos_kv::client_proto::AdminRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cluster, client, admin) = start_with_admin(dir.path()).await;
    let mut session = Session::new(12);
    let written = write_all(&client, &mut session, 0..200).await;
    let allocated = admin
        .admin_in(0, AdminRequest::AllocateGroup)
        .await
        .expect("an id");
    let child = serde_json::from_str::<serde_json::Value>(&allocated).expect("json")["group"]
        .as_u64()
        .expect("a group id") as u32;
    // Node 3 cannot make the group's directory: a file has its name.
    let blocker = cluster.data_dir(3).join("groups").join(child.to_string());
    std::fs::write(&blocker, b"in the way").expect("blocking file");
    let parent = group_of(&key(0), GROUPS);
    admin
        .admin_in(parent, AdminRequest::Split { child })
        .await
        .expect("the split commits");
    // Nodes 1 and 2 make the group; it takes its keys over without node 3.
    let mut moved = false;
    for _ in 0..300 {
        let st = cluster.statuses().await;
        let hosting = st
            .values()
            .filter(|v| v["hosted"].as_u64() == Some(u64::from(GROUPS) + 1))
            .count();
        if hosting >= 2 {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "nodes 1 and 2 host group {child}");
    let st = cluster.statuses().await;
    // A client that asks node 3 first learns from it a range no group
    // owns (node 3 does not host the new group); it learns the ranges
    // from the next node and reads every key the others serve.
    let mut addrs = cluster.client_addrs();
    addrs.rotate_left(2);
    let via_3 = Client::with_session(
        addrs,
        cluster.client_security(),
        Session::assigned(),
        Duration::from_secs(10),
    );
    read_back(&via_3, &written).await;
    assert!(
        st.values()
            .any(|v| v["hosted"].as_u64() == Some(u64::from(GROUPS))),
        "node 3 could not make group {child}: {st:?}"
    );
    // The disk is fine again: node 3 makes the group, no restart.
    std::fs::remove_file(&blocker).expect("unblock");
    assert!(
        wait_hosted(&cluster, GROUPS + 1).await,
        "node 3 makes group {child} once it can"
    );
    read_back(&client, &written).await;
    cluster.stop();
}

/// A membership change asked for while a split of the same group has been
/// proposed but not yet applied waits, as one asked for during the move
/// does: the new group starts with the members the split recorded, and
/// both groups' members stay put until the keys moved. The change is sent
/// a moment after the split, a few times (it may also land first, and then
/// the split waits for it instead); at no attempt may both commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_waits_for_a_split_that_is_proposed_but_not_applied() {
    use paxos_kv::client_proto::{AdminChange, AdminRequest, NodeAddrs};
    let dir = tempfile::tempdir().expect("tempdir");
    let (_cluster, _, admin) = start_with_admin(dir.path()).await;
    let admin = Arc::new(admin);
    // An observer that never runs: adding it commits at once (observers
    // do not count), and it changes the group's members.
    let ghost = AdminRequest::Change {
        change: AdminChange::AddObserver,
        node: 9,
        addrs: Some(NodeAddrs {
            peer: "127.0.0.1:9".parse().expect("addr"),
            client: "127.0.0.1:9".parse().expect("addr"),
        }),
    };
    let mut raced = 0;
    for (attempt, parent) in (1..GROUPS).enumerate() {
        let allocated = admin
            .admin_in(0, AdminRequest::AllocateGroup)
            .await
            .expect("an id");
        let child = serde_json::from_str::<serde_json::Value>(&allocated).expect("json")["group"]
            .as_u64()
            .expect("a group id") as u32;
        let split = {
            let admin = admin.clone();
            tokio::spawn(async move { admin.admin_in(parent, AdminRequest::Split { child }).await })
        };
        tokio::time::sleep(Duration::from_micros(500 * attempt as u64)).await;
        let change = admin.admin_in(parent, ghost).await;
        let split = split.await.expect("split task");
        // Where each committed in the parent's log (`epoch.counter`). The
        // client asks again while the node answers `retry:`, so a change
        // that had to wait commits after the move's last step
        // (`FinishMove`, in the parent's log); one that did not wait
        // commits right after the split, with nothing between them (no
        // one else writes here).
        let at = |answer: &Result<String, ClientError>| -> Option<(u64, u64)> {
            let json: serde_json::Value = serde_json::from_str(answer.as_ref().ok()?).ok()?;
            let (e, c) = json["committed"].as_str()?.split_once('.')?;
            Some((e.parse().ok()?, c.parse().ok()?))
        };
        let split_started = split.as_ref().is_ok_and(|a| a.contains("new_group"));
        if let (true, Some((se, sc)), Some((ce, cc))) = (split_started, at(&split), at(&change)) {
            assert!(
                !(se == ce && cc == sc + 1),
                "attempt {attempt}: group {parent}'s membership change committed at {ce}.{cc}, \
                 right after its split to group {child} at {se}.{sc}, before the keys moved"
            );
            if cc > sc {
                raced += 1;
            }
        }
        // Back to three voters for the next attempt.
        if change.is_ok() {
            let remove = AdminRequest::Change {
                change: AdminChange::Remove,
                node: 9,
                addrs: None,
            };
            let mut removed = false;
            for _ in 0..100 {
                match admin.admin_in(parent, remove).await {
                    Ok(_) => {
                        removed = true;
                        break;
                    }
                    Err(e) if e.to_string().contains("not a member") => {
                        removed = true;
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            assert!(removed, "the ghost observer leaves group {parent}");
        }
    }
    eprintln!("{raced} membership changes came after a split began and waited for it");
}

/// A group removed at run time (issue 16: groups removed by an admin
/// command): a group made by a split merges back into the group it came
/// from under a concurrent writer; every acknowledged write reads back,
/// every node stops hosting the removed group, also after a restart, and a
/// base group merges into its neighbour too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_merges_into_its_neighbour_at_run_time_and_keeps_every_acknowledged_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cluster, client, admin) = start_with_admin(dir.path()).await;
    let client = Arc::new(client);
    let mut session = Session::new(12);
    let before = write_all(&client, &mut session, 0..300).await;
    let parent = group_of(&key(0), GROUPS);
    let (child, _) = admin
        .split_group(parent, Some(Duration::from_secs(60)))
        .await
        .expect("split");
    let split = write_all(&client, &mut session, 300..400).await;

    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut session = Session::assigned();
            write_all(&client, &mut session, 1_000..1_300).await
        })
    };
    let into = admin
        .merge_group(child, None, Some(Duration::from_secs(60)))
        .await
        .expect("the new group merges back");
    assert_eq!(
        into, parent,
        "the neighbour below the child's range is its parent"
    );
    let during = writer.await.expect("writer");
    for keys in [&before, &split, &during] {
        read_back(&client, keys).await;
    }
    assert!(
        wait_hosted(&cluster, GROUPS).await,
        "every node dropped the merged group: {:?}",
        cluster.statuses().await
    );

    // A restart does not bring it back.
    let victim = cluster.ids()[2];
    restart(&mut cluster, victim).await;
    assert!(wait_hosted(&cluster, GROUPS).await);

    // A base group merges into its neighbour; group 0 is never removed.
    let removed = GROUPS - 1;
    let into = admin
        .merge_group(removed, None, Some(Duration::from_secs(60)))
        .await
        .expect("a base group merges");
    assert_eq!(into, removed - 1);
    let refused = admin
        .merge_group(0, None, None)
        .await
        .expect_err("group 0 stays");
    assert!(refused.to_string().contains("never removed"), "{refused}");
    let after = write_all(&client, &mut session, 2_000..2_200).await;
    for keys in [&before, &split, &during, &after] {
        read_back(&client, keys).await;
    }

    // Restarted twice (the first start drops the merged groups' records
    // and files, the second must still know them gone), a node comes back
    // with neither merged group.
    assert!(
        wait_hosted(&cluster, GROUPS - 1).await,
        "every node dropped group {removed}: {:?}",
        cluster.statuses().await
    );
    for _ in 0..2 {
        restart(&mut cluster, victim).await;
        let st = cluster.statuses().await;
        assert_eq!(
            st[&victim]["hosted"].as_u64(),
            Some(u64::from(GROUPS) - 1),
            "no merged group is made again: {}",
            st[&victim]
        );
    }
    for keys in [&before, &split, &during, &after] {
        read_back(&client, keys).await;
    }
    cluster.stop();
}

/// A node that is down while a group merges away never hears of the
/// merge's last steps from the group itself: its peers drop the group once
/// the keys moved, so its replica could never catch up, and before the fix
/// it kept the group (looking for a leader, its range named in its status)
/// for good. Found by the chaos scenario `split-merge` (a node SIGKILLed
/// during a merge). A peer that dropped the group tells it so, and the
/// node drops it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_while_a_group_merges_away_drops_it_once_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cluster, client, admin) = start_with_admin(dir.path()).await;
    let mut session = Session::new(13);
    let before = write_all(&client, &mut session, 0..200).await;
    let parent = group_of(&key(0), GROUPS);
    let (child, _) = admin
        .split_group(parent, Some(Duration::from_secs(60)))
        .await
        .expect("split");
    assert!(
        wait_hosted(&cluster, GROUPS + 1).await,
        "every node hosts the new group"
    );
    let split = write_all(&client, &mut session, 200..300).await;

    let victim = cluster.ids()[2];
    cluster.kill(victim).expect("kill");
    let into = admin
        .merge_group(child, None, Some(Duration::from_secs(60)))
        .await
        .expect("the new group merges back with one node down");
    assert_eq!(into, parent);
    assert!(
        wait_hosted(&cluster, GROUPS).await,
        "the running nodes drop the merged group: {:?}",
        cluster.statuses().await
    );
    cluster.start_node(victim).expect("restart");
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group has a leader after the restart");
    let hosted = wait_hosted(&cluster, GROUPS).await;
    let st = cluster.statuses().await;
    assert!(
        hosted,
        "node {victim}, down during the merge, drops group {child} once back: {}",
        st[&victim]
    );
    let after = write_all(&client, &mut session, 300..400).await;
    for keys in [&before, &split, &after] {
        read_back(&client, keys).await;
    }
    cluster.stop();
}

/// A group that splits, takes its new group back by a merge and splits
/// again at the same point gives the same range away twice. The first new
/// group's replica (inert on each node once merged away) still records
/// having taken that range from the parent; before the fix the parent's
/// leader took that record for the second split's and dropped the frozen
/// keys before the second new group had taken them: acknowledged writes
/// lost. Found by the chaos scenario `split-merge`. A split's last step now
/// waits for the record of the new group it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_that_splits_again_where_it_split_before_keeps_every_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cluster, client, admin) = start_with_admin(dir.path()).await;
    let mut session = Session::new(14);
    let before = write_all(&client, &mut session, 0..300).await;
    let parent = group_of(&key(0), GROUPS);
    let (first, _) = admin
        .split_group(parent, Some(Duration::from_secs(60)))
        .await
        .expect("first split");
    let into = admin
        .merge_group(first, None, Some(Duration::from_secs(60)))
        .await
        .expect("the new group merges back");
    assert_eq!(into, parent);
    assert!(
        wait_hosted(&cluster, GROUPS).await,
        "every node dropped group {first}"
    );
    let between = write_all(&client, &mut session, 300..400).await;
    let (second, _) = admin
        .split_group(parent, Some(Duration::from_secs(60)))
        .await
        .expect("the second split at the same point: the new group takes its keys over");
    assert!(second > first);
    for keys in [&before, &between] {
        read_back(&client, keys).await;
    }
    let security = cluster.client_security();
    let status = leader_status(&cluster, &security, second).await;
    assert!(
        status
            .as_ref()
            .and_then(|s| s["keys"].as_u64())
            .is_some_and(|k| k > 0),
        "the second new group holds the keys it took over: {status:?}"
    );
    cluster.stop();
}

/// Group H merges into G while G merges into F (G and H led from one node,
/// H's request just before G's, so that both pass the node's checks before
/// either retirement is applied). G retires before it took H's range over,
/// and a retired group takes nothing: before the fix H's keys stayed
/// frozen for good (unreadable, unwritable). The group that took G's range
/// over (F) adjoins H's range on G's side now, and takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_merging_into_one_that_merges_away_meanwhile_is_taken_by_its_taker() {
    use paxos_kv::client_proto::AdminRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cluster, client, admin) = start_with_admin(dir.path()).await;
    let mut session = Session::new(15);
    let before = write_all(&client, &mut session, 0..300).await;
    let (f, g, h) = (1u32, 2u32, 3u32);
    let security = cluster.client_security_for(READER_CLIENT).expect("reader");
    // Bounded: each pass moves one leader; leaders may move back while the
    // nodes balance them.
    let mut together = false;
    for _ in 0..20 {
        let lg = leader_status(&cluster, &security, g)
            .await
            .and_then(|v| v["id"].as_u64())
            .expect("G has a leader");
        let lh = leader_status(&cluster, &security, h)
            .await
            .and_then(|v| v["id"].as_u64())
            .expect("H has a leader");
        if lg == lh {
            together = true;
            break;
        }
        let _ = admin
            .admin_in(h, AdminRequest::TransferLeader { to: lg })
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(together, "groups {g} and {h} led from one node");
    // A client that learns the leaders now (no redirect to delay H's
    // request), and one connection to their node: the two requests
    // arrive in the order sent.
    let ops = Arc::new(Client::with_session(
        cluster.client_addrs(),
        cluster.client_security_for("ops").expect("ops certificate"),
        Session::assigned(),
        Duration::from_secs(10),
    ));
    ops.group_ids().await.expect("routing");
    let first = {
        let ops = ops.clone();
        tokio::spawn(async move { ops.admin_in(h, AdminRequest::Merge { into: g }).await })
    };
    tokio::time::sleep(Duration::from_micros(300)).await;
    let into_f = ops.admin_in(g, AdminRequest::Merge { into: f }).await;
    let into_g = match first.await.expect("first merge") {
        // G merged away before H's request was taken (the order this test
        // needs did not come up): a merge into a group no longer hosted is
        // refused, and the user asks for the group that took G over.
        Err(ClientError::Node(m)) if m.starts_with(&format!("group {g} is not hosted")) => {
            ops.admin_in(h, AdminRequest::Merge { into: f }).await
        }
        other => other,
    };
    assert!(
        into_g.is_ok() && into_f.is_ok(),
        "both merges are accepted (proposed at once, or H's retried until G absorbed it): \
         {into_g:?}, {into_f:?}"
    );
    assert!(
        wait_hosted(&cluster, GROUPS - 2).await,
        "both merged groups dropped on every node: {:?}",
        cluster.statuses().await
    );
    let after = write_all(&client, &mut session, 300..400).await;
    for keys in [&before, &after] {
        read_back(&client, keys).await;
    }
    cluster.stop();
}

/// A split asked again with the same new group id (the client's retry
/// after its first answer was lost to a leader change or a timeout) is
/// answered as done once the first one committed. Before, the retry was
/// refused ("group id N is (or was) a group's already") and the caller
/// took a split that happened for failed (chaos `split-merge`, seed
/// 988984: the harness gave the run up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_asked_again_after_it_committed_is_answered_as_done() {
    use paxos_kv::client_proto::AdminRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut cluster, client, admin) = start_with_admin(dir.path()).await;
    let mut session = Session::new(16);
    let before = write_all(&client, &mut session, 0..100).await;
    let parent = group_of(&key(0), GROUPS);
    let (child, first) = admin
        .split_group(parent, Some(Duration::from_secs(60)))
        .await
        .expect("split");
    let again = admin
        .admin_in(parent, AdminRequest::Split { child })
        .await
        .expect("the same split asked again is answered as done");
    let v: serde_json::Value = serde_json::from_str(&again).expect("JSON answer");
    assert_eq!(v["new_group"].as_u64(), Some(u64::from(child)), "{again}");
    assert_eq!(v["already_split"], true, "{again}");
    let given: serde_json::Value = serde_json::from_str(&first).expect("JSON answer");
    assert_eq!(v["range_given"], given["range_given"], "{again} / {first}");
    // Nothing happened twice: one new group, every key there.
    assert!(wait_hosted(&cluster, GROUPS + 1).await);
    read_back(&client, &before).await;
    cluster.stop();
}
