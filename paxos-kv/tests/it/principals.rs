//! Sessions belong to the principal that authenticated (issue 12, point 2):
//! one client can neither use nor poison another's sessions, nor name
//! another principal in its commands; each refusal is a clear error and the
//! node keeps serving the others.

use bytes::Bytes;
use paxos_kv::auth::Role;
use paxos_kv::client::{Client, ClientError, Session};
use paxos_kv::client_proto::ReadMode;
use paxos_kv::kv::{KvOp, KvResult, ASSIGNED_SESSION_BIT};
use paxos_testkit::cluster::{ClusterSpec, LocalCluster, BENCH_CLIENT};
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn put(k: &str, v: &str) -> KvOp {
    KvOp::Put {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_principal_can_neither_use_nor_poison_anothers_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::new(
        1,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    spec.clients.push(("mallory".into(), Role::ReadWrite));
    let cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_for_leader(WAIT)
        .await
        .expect("a leader is elected");
    let alice = Client::new(cluster.client_addrs(), cluster.client_security(), 7, WAIT);
    assert_eq!(alice.principal(), BENCH_CLIENT);
    let mallory_security = cluster
        .client_security_for("mallory")
        .expect("mallory's certificate");

    // Alice's client-named session 7, first write.
    let mut a7 = Session::new(7);
    let r = alice
        .write_in(&mut a7, put("a", "alice"))
        .await
        .expect("alice writes");
    assert_eq!(r, KvResult::Done(None));

    // Mallory names the same id with the same sequence: before sessions
    // were bound to principals, this was a retry of alice's write and got
    // alice's remembered result without being applied. Now it is
    // mallory's own session, applied.
    let mallory = Client::new(cluster.client_addrs(), mallory_security.clone(), 7, WAIT);
    let mut m7 = Session::new(7);
    let r = mallory
        .write_in(&mut m7, put("m", "mallory"))
        .await
        .expect("mallory writes in a session of her own");
    assert_eq!(r, KvResult::Done(None));
    let got = alice
        .get(Bytes::from_static(b"m"), ReadMode::Linearizable)
        .await
        .expect("read");
    assert_eq!(
        got.as_deref(),
        Some(&b"mallory"[..]),
        "mallory's write was applied"
    );

    // Alice's session goes on, unpoisoned: her next sequence applies.
    let r = alice
        .write_in(&mut a7, put("a", "alice 2"))
        .await
        .expect("alice goes on");
    assert!(matches!(r, KvResult::Done(Some(_))), "{r:?}");

    // Alice's cluster-assigned session: mallory cannot take it over. Naming
    // it as a new client-named session is refused at decode (its top bit
    // is the cluster's), before anything is proposed.
    let mut assigned = Session::assigned();
    alice
        .write_in(&mut assigned, put("b", "alice"))
        .await
        .expect("alice writes in an assigned session");
    let id = assigned.id().expect("opened");
    assert_ne!(id & ASSIGNED_SESSION_BIT, 0);
    let mut stolen = Session::new(id);
    let err = mallory
        .write_in(&mut stolen, put("b", "mallory"))
        .await
        .expect_err("mallory cannot open alice's assigned session");
    assert!(
        !err.is_outcome_unknown() && err.to_string().contains("reserved for cluster-assigned"),
        "{err:?}"
    );

    // A command naming another principal than the certificate's is refused.
    let forger = Client::new(cluster.client_addrs(), mallory_security, 8, WAIT)
        .claiming_principal(BENCH_CLIENT);
    let err = forger
        .write_in(&mut Session::new(7), put("a", "forged"))
        .await
        .expect_err("a forged principal is refused");
    assert!(
        matches!(&err, ClientError::Forbidden(m) if m.contains("authenticated as mallory")),
        "{err:?}"
    );

    // Nothing of mallory's reached alice's keys, and the node serves on.
    let a = alice
        .get(Bytes::from_static(b"a"), ReadMode::Linearizable)
        .await
        .expect("read");
    assert_eq!(a.as_deref(), Some(&b"alice 2"[..]));
    let b = alice
        .get(Bytes::from_static(b"b"), ReadMode::Linearizable)
        .await
        .expect("read");
    assert_eq!(b.as_deref(), Some(&b"alice"[..]));
    alice
        .write_in(&mut assigned, put("c", "still served"))
        .await
        .expect("alice's assigned session goes on");
}
