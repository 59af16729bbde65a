//! Session expiry as a user meets it: a node whose session table is tiny
//! evicts an idle session; that session's next write fails with
//! `SessionExpired` and is not applied, and the same `Session` then carries
//! on under a fresh cluster-assigned id.

use bytes::Bytes;
use paxos_kv::client::{Client, ClientError, Session};
use paxos_kv::client_proto::ReadMode;
use paxos_kv::kv::{KvOp, ASSIGNED_SESSION_BIT};
use paxos_kv::tls::ClientSecurity;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use std::path::PathBuf;
use std::time::Duration;

fn put(k: &str, v: &str) -> KvOp {
    KvOp::Put {
        key: Bytes::copy_from_slice(k.as_bytes()),
        value: Bytes::copy_from_slice(v.as_bytes()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_session_fails_its_write_then_continues_in_a_new_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::new(
        1,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    spec.max_sessions = 2;
    let cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader is elected");
    let client = Client::new(
        cluster.client_addrs(),
        cluster.client_security(),
        1,
        Duration::from_secs(5),
    );

    let mut a = Session::new(10);
    client
        .write_in(&mut a, put("a", "1"))
        .await
        .expect("first write of a");
    // Two other sessions become more recent: session 10 is evicted.
    for id in [11, 12] {
        let mut s = Session::new(id);
        client
            .write_in(&mut s, put("other", "x"))
            .await
            .expect("write of another session");
    }
    let err = client
        .write_in(&mut a, put("a", "2"))
        .await
        .expect_err("the evicted session's write is refused");
    assert!(
        matches!(
            err,
            ClientError::SessionExpired {
                session: 10,
                seq: 2
            }
        ),
        "{err}"
    );
    assert_eq!(a.id(), None, "the expired id is dropped, never reused");
    let got = client
        .get(Bytes::from_static(b"a"), ReadMode::Linearizable)
        .await
        .expect("read");
    assert_eq!(
        got.as_deref(),
        Some(&b"1"[..]),
        "the refused write was not applied"
    );

    // The same session object goes on: the cluster assigns a fresh id.
    client
        .write_in(&mut a, put("a", "3"))
        .await
        .expect("the next write opens a new session");
    let id = a.id().expect("an assigned id");
    assert_ne!(id & ASSIGNED_SESSION_BIT, 0, "{id:#x} is cluster-assigned");
    let got = client
        .get(Bytes::from_static(b"a"), ReadMode::Linearizable)
        .await
        .expect("read");
    assert_eq!(got.as_deref(), Some(&b"3"[..]));

    let status = cluster.statuses().await;
    let node = status.values().next().expect("the node answers status");
    assert_eq!(node["sessions"].as_u64(), Some(2), "{node:#}");
}

/// A node that answers `status` as a single-group node and closes the
/// connection on any other request, after reading it: a write sent to it
/// has an unknown outcome.
async fn node_that_drops_writes() -> std::net::SocketAddr {
    use paxos_kv::client_proto::{next_frame, Request, Response};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        // Bounded: the test's client makes a few connections at most.
        for _ in 0..16 {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = bytes::BytesMut::new();
                for _ in 0..16 {
                    if conn.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    while let Ok(Some(frame)) = next_frame(&mut buf) {
                        match Request::decode(frame) {
                            Ok((id, Request::Status)) => {
                                let mut out = bytes::BytesMut::new();
                                Response::Status(r#"{"id":1,"role":"leader"}"#.into())
                                    .encode_frame(id, &mut out);
                                if conn.write_all(&out).await.is_err() {
                                    return;
                                }
                            }
                            _ => return,
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_session_whose_first_write_failed_moves_to_an_assigned_one() {
    // The node reads the write and drops the connection: its outcome is
    // unknown (every attempt goes the same way).
    let node = node_that_drops_writes().await;
    let client = Client::new(
        vec![node],
        ClientSecurity::InsecurePlaintext,
        1,
        Duration::from_millis(500),
    );
    let mut s = Session::new(77);
    let err = client
        .write_in(&mut s, put("k", "v"))
        .await
        .expect_err("no node to write to");
    assert!(err.is_outcome_unknown(), "{err}");
    // The first write's fate is unknown: if it never commits the cluster
    // does not know session 77, so the session does not send write 2 there.
    assert_eq!(
        s.id(),
        None,
        "the next write opens a cluster-assigned session"
    );
}

/// A write that never left the client (no node reachable, so the client
/// could not even learn the cluster's groups) leaves the session as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_was_never_sent_keeps_the_named_session() {
    // A loopback port nobody listens on: every attempt is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a loopback port");
    let client = Client::new(
        vec![dead],
        ClientSecurity::InsecurePlaintext,
        1,
        Duration::from_millis(500),
    );
    let mut s = Session::new(77);
    let err = client
        .write_in(&mut s, put("k", "v"))
        .await
        .expect_err("no node to write to");
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert_eq!(s.id(), Some(77));
}
