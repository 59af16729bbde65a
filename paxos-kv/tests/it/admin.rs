//! Cluster administration through `paxos-client admin` (issue 15): only a
//! principal with role `admin` may run it; a leader transfer under a steady
//! write load hands the leadership to the named voter and loses no
//! acknowledged write.

use bytes::Bytes;
use paxos_kv::auth::Role;
use paxos_kv::client::{Client, ClientError};
use paxos_kv::client_proto::{AdminChange, AdminRequest, NodeAddrs, ReadMode};
use paxos_kv::kv::KvResult;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster, READER_CLIENT};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// A steady writer of keys `{prefix}{k}` until `stop`: the keys it got
/// acknowledged, and the longest gap between two acknowledgements.
fn spawn_writer(
    writer: Client,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<Bytes>, Duration)> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut longest = Duration::ZERO;
        let mut last = Instant::now();
        // Bounded: at most 100 000 writes, and the test stops it.
        for k in 0..100_000u32 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let key = Bytes::from(format!("{prefix}{k}"));
            match writer.put(key.clone(), Bytes::from_static(b"v")).await {
                Ok(KvResult::Done(_)) => {
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                    acked.push(key);
                }
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) if e.is_outcome_unknown() => {}
                Err(e) => panic!("write failed: {e}"),
            }
        }
        (acked, longest)
    })
}

/// A cluster of `nodes` whose certificates include the admin principal
/// "ops".
fn admin_spec(nodes: u64, dir: &std::path::Path) -> ClusterSpec {
    let mut spec = ClusterSpec::new(
        nodes,
        dir.to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    spec.clients.push(("ops".into(), Role::Admin));
    spec
}

/// A client of every node with the admin role.
fn ops_client(cluster: &LocalCluster) -> Client {
    Client::new(
        cluster.client_addrs(),
        cluster.client_security_for("ops").expect("ops certificate"),
        1,
        WAIT,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_hands_the_leadership_over_under_load_and_nothing_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = admin_spec(3, dir.path());
    let cluster = LocalCluster::start(spec).expect("cluster starts");
    let leader = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let addrs = cluster.client_addrs();
    let ops = ops_client(&cluster);

    // Neither a read-write nor a read-only principal may administer.
    for security in [
        cluster.client_security(),
        cluster
            .client_security_for(READER_CLIENT)
            .expect("reader certificate"),
    ] {
        let c = Client::new(addrs.clone(), security, 2, WAIT);
        let err = c.admin(AdminRequest::Members).await.expect_err("refused");
        assert!(
            matches!(&err, ClientError::Forbidden(m) if m.contains("need role admin")),
            "{err:?}"
        );
    }

    let members: serde_json::Value =
        serde_json::from_str(&ops.admin(AdminRequest::Members).await.expect("members"))
            .expect("JSON");
    assert_eq!(members["voters"], serde_json::json!([1, 2, 3]), "{members}");
    let err = ops
        .admin(AdminRequest::TransferLeader { to: 9 })
        .await
        .expect_err("not a member");
    assert!(err.to_string().contains("not a member"), "{err}");

    // Steady writers while the leadership moves: writes that reach the
    // leader during the hand-over are refused, and must be retried by the
    // client, never failed (four writers, so that some do).
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = ["k", "l", "m", "n"]
        .into_iter()
        .enumerate()
        .map(|(i, prefix)| {
            let writer = Client::new(
                addrs.clone(),
                cluster.client_security(),
                10 + i as u64,
                WAIT,
            );
            spawn_writer(writer, prefix, stop.clone())
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let target = if leader == 1 { 2 } else { 1 };
    // A target silent for longer than an election timeout is refused with
    // a clear error (CI met this on a loaded machine): pause it to see so.
    cluster
        .signal(target, libc::SIGSTOP)
        .expect("pause the target");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = ops.admin(AdminRequest::TransferLeader { to: target }).await;
    cluster
        .signal(target, libc::SIGCONT)
        .expect("resume the target");
    let err = refused.expect_err("a silent target is refused");
    // Refused up front, or (when the leader's loop was starved and still
    // counted the target as heard) aborted because it did not catch up.
    assert!(
        err.to_string().contains("has not been heard from")
            || err.to_string().contains("did not catch up"),
        "{err}"
    );
    // The target must have joined the leader's epoch again; on a loaded
    // machine a node may also still be starting when the first two agree
    // on a leader, or another leader be elected meanwhile.
    let leader = all_in_sync(&cluster, &[1, 2, 3]).await;
    let target = if target == leader {
        if leader == 1 {
            2
        } else {
            1
        }
    } else {
        target
    };
    // A refusal because the target was not heard from lately is transient
    // (an operator would ask again); every other refusal fails the test.
    // A hand-over whose nominee then loses its election (on a loaded
    // machine another node may time out first: CI saw node 3 lead after a
    // hand-over to 1) is asked for again, as an operator would, up to
    // three times.
    let mut led = None;
    for _handover in 0..3 {
        let mut answer = None;
        for _ in 0..20 {
            match ops.admin(AdminRequest::TransferLeader { to: target }).await {
                Ok(json) => {
                    answer = Some(json);
                    break;
                }
                // So is an abort because the target did not catch up within
                // an election timeout (the leader leads again): on a loaded
                // machine a starved target falls that far behind.
                Err(e)
                    if e.to_string().contains("has not been heard from")
                        || e.to_string().contains("did not catch up") =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("transfer: {e}"),
            }
        }
        let answer: serde_json::Value =
            serde_json::from_str(&answer.expect("transfer accepted within 20 attempts"))
                .expect("JSON");
        if answer["note"] == "already the leader" {
            led = Some(target);
            break;
        }
        assert_eq!(answer["transferred"], true, "{answer}");
        assert_eq!(answer["to"], target, "{answer}");
        let now_leading = cluster.wait_for_leader(WAIT).await.expect("a leader");
        if now_leading == target {
            led = Some(now_leading);
            break;
        }
        led = Some(now_leading);
    }
    assert_eq!(led, Some(target), "the nominee leads");

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut longest = Duration::ZERO;
    for task in tasks {
        let (keys, gap) = task.await.expect("writer");
        assert!(!keys.is_empty());
        acked.extend(keys);
        longest = longest.max(gap);
    }
    println!(
        "{} writes acknowledged across the hand-over; longest gap between acknowledgements {longest:?}",
        acked.len()
    );
    // Asking the new leader to hand over to itself changes nothing.
    let answer: serde_json::Value = serde_json::from_str(
        &ops.admin(AdminRequest::TransferLeader { to: target })
            .await
            .expect("no-op transfer"),
    )
    .expect("JSON");
    assert_eq!(answer["transferred"], false, "{answer}");
    // Every acknowledged write is there.
    let reader = Client::new(addrs, cluster.client_security(), 4, WAIT);
    for key in &acked {
        let v = reader
            .get(key.clone(), ReadMode::Linearizable)
            .await
            .expect("read");
        assert_eq!(v.as_deref(), Some(&b"v"[..]), "acknowledged {key:?} lost");
    }
}

/// Replace two of three voters under a steady writer: an observer started
/// with `--observers` is promoted, a voter is removed and stopped, then a
/// second original voter is stopped: the group keeps committing only
/// because the promoted node counts, and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_promotes_an_observer_and_removes_a_voter_under_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = admin_spec(4, dir.path());
    spec.extra_node_args = vec!["--observers".into(), "4".into()];
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    let leader = cluster.wait_for_leader(WAIT).await.expect("a leader");
    assert_ne!(leader, 4, "an observer never leads");
    let addrs = cluster.client_addrs();
    let ops = ops_client(&cluster);
    let admin = |req| {
        let ops = &ops;
        async move {
            let json = ops.admin(req).await.expect("admin command");
            serde_json::from_str::<serde_json::Value>(&json).expect("JSON")
        }
    };
    let members = admin(AdminRequest::Members).await;
    assert_eq!(members["voters"], serde_json::json!([1, 2, 3]), "{members}");
    assert_eq!(members["observers"], serde_json::json!([4]), "{members}");
    let err = ops
        .admin(AdminRequest::Change {
            change: AdminChange::Promote,
            node: 2,
            addrs: None,
        })
        .await
        .expect_err("2 is no observer");
    assert!(err.to_string().contains("it is a voter"), "{err}");

    let writer = Client::new(addrs.clone(), cluster.client_security(), 3, WAIT);
    let stop = Arc::new(AtomicBool::new(false));
    let task = spawn_writer(writer, "m", stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A promotion is refused while too few voters would be in sync; let
    // every node join the leader's epoch first (a loaded machine may still
    // be starting one, or elect another leader meanwhile: the steps below
    // hold whichever original voter leads).
    let leader = all_in_sync(&cluster, &[1, 2, 3, 4]).await;
    let promoted = match ops
        .admin(AdminRequest::Change {
            change: AdminChange::Promote,
            node: 4,
            addrs: None,
        })
        .await
    {
        Ok(json) => serde_json::from_str::<serde_json::Value>(&json).expect("JSON"),
        // The client asked again after an attempt whose answer it did not
        // get (a leader change on the loaded machine: CI saw it once), and
        // that attempt had made the change: 4 is a voter.
        Err(e) if e.to_string().contains("it is a voter") => admin(AdminRequest::Members).await,
        Err(e) => panic!("admin command: {e:?}"),
    };
    assert_eq!(
        promoted["voters"],
        serde_json::json!([1, 2, 3, 4]),
        "{promoted}"
    );
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
    let removed = admin(AdminRequest::Change {
        change: AdminChange::Remove,
        node: others[0],
        addrs: None,
    })
    .await;
    assert_eq!(removed["observers"], serde_json::json!([]), "{removed}");
    cluster.kill(others[0]).expect("stop the removed node");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Voters now: the leader, others[1] and 4. Without 4 counting, losing
    // others[1] would leave no quorum.
    cluster
        .kill(others[1])
        .expect("stop a second original voter");
    let before = Instant::now();
    // The leader and the promoted node commit (asked again while they are
    // between leaders, if the leadership had moved to others[1]).
    let probe = Client::new(addrs.clone(), cluster.client_security(), 5, WAIT);
    crate::util::put_eventually(&probe, b"after", b"both gone", WAIT).await;
    println!(
        "committed with two original voters gone after {:?}",
        before.elapsed()
    );
    stop.store(true, Ordering::Relaxed);
    let (acked, _) = task.await.expect("writer");
    assert!(!acked.is_empty());
    for key in &acked {
        let v = probe
            .get(key.clone(), ReadMode::Linearizable)
            .await
            .expect("read");
        assert_eq!(v.as_deref(), Some(&b"v"[..]), "acknowledged {key:?} lost");
    }
    let members = admin(AdminRequest::Members).await;
    assert_eq!(
        members["voters"].as_array().map(|v| v.len()),
        Some(3),
        "{members}"
    );
}

/// Asks `req` until it is not refused with a transient "retry:" answer
/// (bounded: 120 attempts, 250 ms apart).
/// Waits until one node leads and reports every other node of `ids` in
/// sync; returns the leader. A leader change meanwhile starts the wait over
/// with the new leader, within [`WAIT`] in all.
async fn all_in_sync(cluster: &LocalCluster, ids: &[u64]) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = cluster.wait_for_leader(WAIT).await.expect("a leader");
        let mut missing = None;
        for &peer in ids.iter().filter(|&&p| p != leader) {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = cluster
                .wait_in_sync(leader, peer, left.min(Duration::from_secs(5)))
                .await
            {
                missing = Some(e);
                break;
            }
        }
        match missing {
            None => return leader,
            Some(e) if Instant::now() >= deadline => panic!("every node follows the leader: {e}"),
            Some(_) => {}
        }
    }
}

async fn admin_until_done(ops: &Client, req: AdminRequest) -> serde_json::Value {
    for _ in 0..120 {
        match ops.admin(req).await {
            Ok(json) => return serde_json::from_str(&json).expect("JSON"),
            Err(ClientError::Node(m)) if m.starts_with("retry:") => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("{req:?}: {e}"),
        }
    }
    panic!("{req:?} still refused after 120 attempts");
}

/// A new machine replaces a voter, as the README's procedure does it: it
/// starts with `--join` (the running nodes were never told of it), is
/// added as an observer with its addresses, promoted once caught up, and a
/// voter is removed. The newcomer then counts: with a second original
/// voter down the group still commits. Last, that voter restarts with its
/// original `--members` (which do not name the newcomer) and the leader is
/// stopped: the two survivors can only elect a leader and commit if the
/// restarted node learned the newcomer's address from its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_machine_joins_and_replaces_a_voter_under_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = admin_spec(3, dir.path());
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    let leader = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let addrs = cluster.client_addrs();
    let ops = ops_client(&cluster);
    let writer = Client::new(addrs.clone(), cluster.client_security(), 3, WAIT);
    let stop = Arc::new(AtomicBool::new(false));
    let task = spawn_writer(writer, "j", stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    // A node nobody has addresses for cannot be added.
    let err = ops
        .admin(AdminRequest::Change {
            change: AdminChange::AddObserver,
            node: 4,
            addrs: None,
        })
        .await
        .expect_err("no addresses");
    assert!(err.to_string().contains("no known addresses"), "{err}");

    let joined = cluster.join_node(4).expect("the new machine starts");
    let added = admin_until_done(
        &ops,
        AdminRequest::Change {
            change: AdminChange::AddObserver,
            node: 4,
            addrs: Some(NodeAddrs {
                peer: joined.peer,
                client: joined.client,
            }),
        },
    )
    .await;
    assert_eq!(added["observers"], serde_json::json!([4]), "{added}");
    // Promotion waits until 4 has caught up (the answer says "retry" till then).
    let promoted = admin_until_done(
        &ops,
        AdminRequest::Change {
            change: AdminChange::Promote,
            node: 4,
            addrs: None,
        },
    )
    .await;
    assert_eq!(
        promoted["voters"],
        serde_json::json!([1, 2, 3, 4]),
        "{promoted}"
    );
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
    let removed = admin_until_done(
        &ops,
        AdminRequest::Change {
            change: AdminChange::Remove,
            node: others[0],
            addrs: None,
        },
    )
    .await;
    assert_eq!(
        removed["voters"].as_array().map(|v| v.len()),
        Some(3),
        "{removed}"
    );
    cluster.kill(others[0]).expect("stop the replaced node");
    // Voters: the leader, others[1] and 4. With others[1] down, only the
    // newcomer makes a quorum.
    cluster
        .kill(others[1])
        .expect("stop a second original voter");
    // If the leadership moved to others[1] under load, the leader and the
    // newcomer elect first: the probe asks again while there is none.
    let probe = Client::new(addrs.clone(), cluster.client_security(), 5, WAIT);
    crate::util::put_eventually(&probe, b"after", b"joined", WAIT).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, _) = task.await.expect("writer");
    assert!(!acked.is_empty());

    // others[1] restarts knowing only the original members; the leader
    // stops. others[1] (the lower id, so the dialler) must reach 4.
    cluster
        .restart_without(others[1], &[4])
        .expect("restart with the original --members");
    // It must have heard from the leader since: until then it cannot know
    // which changes committed (its elector counts the membership it knows
    // committed).
    let target = cluster.statuses().await[&leader]["applied"]
        .as_u64()
        .expect("the leader's applied zxid");
    // It follows whichever node leads now: on a loaded machine the
    // newcomer may have been elected meanwhile (the two survivors of the
    // last step are still `leader`'s and this node's peers).
    let mut caught_up = false;
    for _ in 0..1000 {
        let st = cluster.statuses().await;
        let leading: Vec<u64> = st
            .iter()
            .filter(|(_, v)| v["role"] == "leader")
            .map(|(&id, _)| id)
            .collect();
        if st.get(&others[1]).is_some_and(|v| {
            v["role"] == "follower"
                && leading.len() == 1
                && v["leader"] == leading[0]
                && v["applied"].as_u64().is_some_and(|a| a >= target)
        }) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(caught_up, "the restarted node follows and catches up again");
    cluster.kill(leader).expect("stop the original leader");
    // The restarted node and the newcomer elect a leader and commit (asked
    // again while they are between leaders).
    let probe = Client::new(addrs, cluster.client_security(), 6, WAIT);
    crate::util::put_eventually(&probe, b"last", b"two left", WAIT).await;
    for key in acked.iter().chain([&Bytes::from_static(b"after")]) {
        let v = probe
            .get(key.clone(), ReadMode::Linearizable)
            .await
            .expect("read");
        assert!(v.is_some(), "acknowledged {key:?} lost");
    }
}

/// Removing the leader itself: it hands over first (the answer says
/// "retry", and the client library asks again, now of the new leader,
/// which makes the change); the group goes on without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_leader_hands_over_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = admin_spec(3, dir.path());
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    let leader = cluster.wait_for_leader(WAIT).await.expect("a leader");
    for peer in [1, 2, 3].into_iter().filter(|p| *p != leader) {
        cluster
            .wait_in_sync(leader, peer, WAIT)
            .await
            .expect("every node follows the leader");
    }
    let addrs = cluster.client_addrs();
    let ops = ops_client(&cluster);
    let removed = admin_until_done(
        &ops,
        AdminRequest::Change {
            change: AdminChange::Remove,
            node: leader,
            addrs: None,
        },
    )
    .await;
    let voters: Vec<u64> = removed["voters"]
        .as_array()
        .expect("voters")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert_eq!(voters.len(), 2, "{removed}");
    assert!(!voters.contains(&leader), "{removed}");
    cluster.kill(leader).expect("stop the removed node");
    let now_leading = cluster.wait_for_leader(WAIT).await.expect("a leader");
    assert_ne!(now_leading, leader);
    let c = Client::new(addrs, cluster.client_security(), 2, WAIT);
    c.put(Bytes::from_static(b"k"), Bytes::from_static(b"v"))
        .await
        .expect("the two left commit");
}
