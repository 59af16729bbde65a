//! TLS on the client port: only clients with a certificate from the cluster
//! CA, valid now and naming a principal, are served; a read-only principal
//! reads but cannot write; every refusal reaches the client library as a
//! clear error, and the node keeps serving legitimate clients afterwards.
//! Every wait is bounded.

use bytes::Bytes;
use paxos_kv::client::{Client, ClientError};
use paxos_kv::client_proto::ReadMode;
use paxos_kv::kv::KvResult;
use paxos_kv::tls::{ClientSecurity, ClientTlsConfig};
use paxos_net_quic::certs::{ClientRole, ClusterCa, Validity};
use paxos_testkit::cluster::{ClusterSpec, LocalCluster, BENCH_CLIENT, READER_CLIENT};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::io::AsyncReadExt;

/// Generous bound on any single call (the machine may be loaded).
const WAIT: Duration = Duration::from_secs(20);

fn one_node(dir: &Path) -> ClusterSpec {
    let mut spec = ClusterSpec::new(
        1,
        dir.to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    // Short, so that the silent-connection case finishes quickly.
    spec.client_handshake_timeout_ms = 1_000;
    spec
}

fn read_pem(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).expect("PEM file")
}

/// Session ids of the legitimate clients, one per client (a session's
/// sequence restarts with each new `Client`).
static NEXT_SESSION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);

/// A put and a read-back by the legitimate read-write client.
async fn legit_put_get(cluster: &LocalCluster, key: &str) {
    let session = NEXT_SESSION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let client = Client::new(
        cluster.client_addrs(),
        cluster.client_security(),
        session,
        WAIT,
    );
    let value = Bytes::from(format!("value of {key}"));
    let r = client
        .put(Bytes::from(key.to_string()), value.clone())
        .await
        .expect("the legitimate client writes");
    assert!(matches!(r, KvResult::Done(_)), "{r:?}");
    let got = client
        .get(Bytes::from(key.to_string()), ReadMode::Linearizable)
        .await
        .expect("the legitimate client reads");
    assert_eq!(got, Some(value));
}

/// A put with `security` must fail with a TLS error containing `expect`.
async fn refused(addrs: Vec<SocketAddr>, security: ClientSecurity, expect: &str) {
    let client = Client::new(addrs.clone(), security.clone(), 99, WAIT);
    match client
        .put(Bytes::from_static(b"intruder"), Bytes::from_static(b"x"))
        .await
    {
        Err(ClientError::Tls(e)) => assert!(e.contains(expect), "expected {expect:?} in {e:?}"),
        other => panic!("expected a TLS refusal ({expect}), got {other:?}"),
    }
    match Client::status_of(addrs[0], &security, WAIT).await {
        Err(ClientError::Tls(e)) => assert!(e.contains(expect), "expected {expect:?} in {e:?}"),
        other => panic!("expected a TLS refusal of status ({expect}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_a_valid_certificate_from_the_cluster_ca_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::start(one_node(dir.path())).expect("cluster starts");
    cluster
        .wait_for_leader(WAIT)
        .await
        .expect("a leader is elected");
    let addrs = cluster.client_addrs();
    let certs = cluster.certs_dir();
    let ca_pem = read_pem(&certs, "ca.pem");
    assert_eq!(cluster.client_security().principal(), BENCH_CLIENT);
    legit_put_get(&cluster, "first").await;

    // No certificate at all.
    let none = ClientTlsConfig::without_certificate(&ca_pem).expect("config");
    refused(addrs.clone(), none.into(), "client certificate is required").await;
    legit_put_get(&cluster, "after-no-certificate").await;

    // A certificate from another CA (the client trusts the cluster's CA, so
    // it is the node that refuses).
    let other_ca = ClusterCa::generate("other").expect("CA");
    let stranger = other_ca
        .issue_client("mallory", ClientRole::ReadWrite)
        .expect("client cert");
    let stranger =
        ClientTlsConfig::from_pem(&ca_pem, &stranger.cert_pem, &stranger.key_pem).expect("config");
    refused(
        addrs.clone(),
        stranger.into(),
        "not signed by the cluster CA",
    )
    .await;
    legit_put_get(&cluster, "after-other-ca").await;

    // An expired certificate from the cluster's own CA.
    let ca = ClusterCa::from_pem(&ca_pem, &read_pem(&certs, "ca.key.pem")).expect("the CA");
    let past = SystemTime::now() - Duration::from_secs(30 * 86_400);
    let expired = ca
        .issue_client_with(
            "late",
            ClientRole::ReadWrite,
            Validity {
                not_before: past - Duration::from_secs(86_400),
                not_after: past,
            },
        )
        .expect("client cert");
    let expired =
        ClientTlsConfig::from_pem(&ca_pem, &expired.cert_pem, &expired.key_pem).expect("config");
    refused(addrs.clone(), expired.into(), "expired").await;
    legit_put_get(&cluster, "after-expired").await;

    // A node's certificate (right CA, valid, but no principal).
    let node = ClientTlsConfig::from_pem_any_certificate(
        &ca_pem,
        &read_pem(&certs, "node-1.pem"),
        &read_pem(&certs, "node-1.key.pem"),
    )
    .expect("config");
    refused(addrs.clone(), node.into(), "names no client principal").await;
    legit_put_get(&cluster, "after-node-certificate").await;

    // A client added later with the same CA is served.
    let late = ca
        .issue_client("carol", ClientRole::ReadWrite)
        .expect("client cert");
    let late = ClientTlsConfig::from_pem(&ca_pem, &late.cert_pem, &late.key_pem).expect("config");
    assert_eq!(late.principal(), "carol");
    let carol = Client::new(addrs.clone(), late, 11, WAIT);
    carol
        .put(Bytes::from_static(b"carol"), Bytes::from_static(b"here"))
        .await
        .expect("a client issued later by the same CA writes");

    // The node said why, with the peer's address, in its log.
    let log = std::fs::read_to_string(cluster.log_path(1)).expect("node log");
    assert!(log.contains("client connection refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_principal_reads_but_cannot_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::start(one_node(dir.path())).expect("cluster starts");
    cluster
        .wait_for_leader(WAIT)
        .await
        .expect("a leader is elected");
    legit_put_get(&cluster, "shared").await;

    let reader_tls = cluster
        .client_security_for(READER_CLIENT)
        .expect("reader config");
    assert_eq!(reader_tls.principal(), READER_CLIENT);
    let reader = Client::new(cluster.client_addrs(), reader_tls.clone(), 21, WAIT);
    assert_eq!(reader.principal(), READER_CLIENT);
    // It reads what others wrote, linearizably and stale, and sees status.
    let got = reader
        .get(Bytes::from_static(b"shared"), ReadMode::Linearizable)
        .await
        .expect("a read-only principal reads");
    assert_eq!(got, Some(Bytes::from_static(b"value of shared")));
    assert!(reader
        .get(Bytes::from_static(b"shared"), ReadMode::Stale)
        .await
        .expect("stale read")
        .is_some());
    let status = Client::status_of(cluster.client_addrs()[0], &reader_tls, WAIT)
        .await
        .expect("a read-only principal reads status");
    assert!(status.contains("\"pid\""), "{status}");

    // Its writes are refused, every kind, and nothing is written.
    match reader
        .put(
            Bytes::from_static(b"shared"),
            Bytes::from_static(b"overwritten"),
        )
        .await
    {
        Err(ClientError::Forbidden(e)) => {
            assert!(e.contains(READER_CLIENT) && e.contains("ro"), "{e}")
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert!(matches!(
        reader.delete(Bytes::from_static(b"shared")).await,
        Err(ClientError::Forbidden(_))
    ));
    assert!(matches!(
        reader
            .cas(Bytes::from_static(b"new"), None, Bytes::from_static(b"v"))
            .await,
        Err(ClientError::Forbidden(_))
    ));
    // The connection stays usable for reads after a refused write.
    let got = reader
        .get(Bytes::from_static(b"shared"), ReadMode::Linearizable)
        .await
        .expect("still reads");
    assert_eq!(got, Some(Bytes::from_static(b"value of shared")));
    legit_put_get(&cluster, "after-read-only").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_silent_connections_are_refused_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = LocalCluster::start(one_node(dir.path())).expect("cluster starts");
    cluster
        .wait_for_leader(WAIT)
        .await
        .expect("a leader is elected");
    let addr = cluster.client_addrs()[0];

    // A plaintext client against the TLS port is told so.
    refused(
        vec![addr],
        ClientSecurity::InsecurePlaintext,
        "this port speaks TLS",
    )
    .await;
    // Even a request whose first byte (its length, 22) is the TLS handshake
    // record type.
    let plain = Client::new(vec![addr], ClientSecurity::InsecurePlaintext, 3, WAIT);
    match plain
        .get(Bytes::from_static(b"greeting"), ReadMode::Stale)
        .await
    {
        Err(ClientError::Tls(e)) => assert!(e.contains("this port speaks TLS"), "{e}"),
        other => panic!("expected the node to ask for TLS, got {other:?}"),
    }
    legit_put_get(&cluster, "after-plaintext").await;

    // A connection that never starts its handshake is closed after the
    // handshake timeout (1 s here), while others are served meanwhile.
    let mut silent = tokio::net::TcpStream::connect(addr)
        .await
        .expect("TCP connect");
    legit_put_get(&cluster, "while-silent").await;
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(WAIT, silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the silent connection is closed by the node: {closed:?}"
    );
    // The node logs it right after closing the socket.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(cluster.log_path(1)).expect("node log");
        if log.contains("no TLS handshake within") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    legit_put_get(&cluster, "after-silent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_cluster_serves_anonymous_clients_and_warns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = one_node(dir.path());
    spec.insecure_plaintext_clients = true;
    let cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_for_leader(WAIT)
        .await
        .expect("a leader is elected");
    assert_eq!(cluster.client_security().principal(), "anonymous");
    legit_put_get(&cluster, "plain").await;
    // A TLS client cannot talk to it: the port answers its handshake with
    // a plaintext error at once (the client neither times out nor asks
    // again), and the client says why that might be.
    let tls = ClientTlsConfig::from_dir(&cluster.certs_dir(), BENCH_CLIENT).expect("config");
    let client = Client::new(cluster.client_addrs(), tls, 5, WAIT);
    match client
        .put(Bytes::from_static(b"k"), Bytes::from_static(b"v"))
        .await
    {
        Err(ClientError::Tls(e)) => assert!(e.contains("--insecure-plaintext-clients"), "{e}"),
        Err(e) => panic!("a TLS client at a plaintext port was not told so: {e}"),
        Ok(r) => panic!("a TLS client was served by a plaintext port: {r:?}"),
    }
    // The port goes on serving plaintext clients.
    legit_put_get(&cluster, "plain-after-tls").await;
    let log = std::fs::read_to_string(cluster.log_path(1)).expect("node log");
    assert!(log.contains("--insecure-plaintext-clients"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_over_the_limit_is_told_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = one_node(dir.path());
    spec.max_client_connections = 2;
    let cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_for_leader(WAIT)
        .await
        .expect("a leader is elected");
    let addrs = cluster.client_addrs();
    // Two clients hold a connection each (a read opens it).
    let first = Client::new(addrs.clone(), cluster.client_security(), 31, WAIT);
    let second = Client::new(addrs.clone(), cluster.client_security(), 32, WAIT);
    for c in [&first, &second] {
        c.get(Bytes::from_static(b"k"), ReadMode::Stale)
            .await
            .expect("served");
    }
    // The third is told why, over TLS.
    match Client::status_of(addrs[0], &cluster.client_security(), WAIT).await {
        Err(ClientError::Node(e)) => assert!(e.contains("too many client connections"), "{e}"),
        other => panic!("expected the limit's error, got {other:?}"),
    }
    // The two connections in keep working.
    for c in [&first, &second] {
        c.get(Bytes::from_static(b"k"), ReadMode::Stale)
            .await
            .expect("still served");
    }
}
