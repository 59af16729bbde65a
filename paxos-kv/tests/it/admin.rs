//! Cluster administration through `paxos-client admin` (issue 15): only a
//! principal with role `admin` may run it; a leader transfer under a steady
//! write load hands the leadership to the named voter and loses no
//! acknowledged write.

use bytes::Bytes;
use paxos_kv::auth::Role;
use paxos_kv::client::{Client, ClientError};
use paxos_kv::client_proto::{AdminRequest, ReadMode};
use paxos_kv::kv::KvResult;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster, READER_CLIENT};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_hands_the_leadership_over_under_load_and_nothing_is_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    spec.clients.push(("ops".into(), Role::Admin));
    let cluster = LocalCluster::start(spec).expect("cluster starts");
    let leader = cluster.wait_for_leader(WAIT).await.expect("a leader");
    let addrs = cluster.client_addrs();
    let ops = Client::new(
        addrs.clone(),
        cluster.client_security_for("ops").expect("ops certificate"),
        1,
        WAIT,
    );

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

    // A steady writer while the leadership moves.
    let writer = Client::new(addrs.clone(), cluster.client_security(), 3, WAIT);
    let stop = Arc::new(AtomicBool::new(false));
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut longest = Duration::ZERO;
            let mut last = Instant::now();
            // Bounded: at most 100 000 writes, and the test stops it.
            for k in 0..100_000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = Bytes::from(format!("k{k}"));
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
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let target = if leader == 1 { 2 } else { 1 };
    let answer: serde_json::Value = serde_json::from_str(
        &ops.admin(AdminRequest::TransferLeader { to: target })
            .await
            .expect("transfer"),
    )
    .expect("JSON");
    assert_eq!(answer["transferred"], true, "{answer}");
    assert_eq!(answer["to"], target, "{answer}");
    let now_leading = cluster.wait_for_leader(WAIT).await.expect("a leader");
    assert_eq!(now_leading, target, "the nominee leads");

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (acked, longest) = task.await.expect("writer");
    assert!(!acked.is_empty());
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
