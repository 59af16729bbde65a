//! `LocalCluster::start` against ports taken by another process: a node
//! that cannot bind makes the whole cluster start again on fresh ports; a
//! node that fails for another reason is reported at once, with its log.

use paxos_kv::client::Client;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn one_node(dir: &Path) -> ClusterSpec {
    ClusterSpec::new(
        1,
        dir.to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_restarts_the_cluster_on_fresh_ports() {
    // Another process (this test) holds a port for both TCP and UDP.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
    let port = taken.local_addr().expect("local addr").port();
    let _taken_udp = UdpSocket::bind(("127.0.0.1", port));
    let free = {
        let probe = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        probe.local_addr().expect("local addr").port()
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = one_node(dir.path());
    // The first attempt's client port is the taken one.
    spec.first_attempt_ports = vec![free, port];
    let cluster = LocalCluster::start(spec).expect("the cluster starts on other ports");

    let addr = cluster.client_addrs()[0];
    assert_ne!(addr.port(), port, "the taken port is not used");
    let status = Client::status_of(addr, &cluster.client_security(), Duration::from_secs(5))
        .await
        .expect("the node answers");
    assert!(status.contains("\"pid\""), "{status}");
    let log = std::fs::read_to_string(cluster.log_path(1)).expect("node log");
    assert!(
        log.to_lowercase().contains("in use"),
        "the first attempt failed on the taken port: {log}"
    );
    // The port's owner was not disturbed.
    assert_eq!(taken.local_addr().expect("still bound").port(), port);
}

#[test]
fn a_node_failing_for_another_reason_is_reported_without_retrying() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = one_node(dir.path());
    spec.max_sessions = 0; // refused by the node at start-up
    let err = match LocalCluster::start(spec) {
        Ok(_) => panic!("a node configured with --max-sessions 0 must not start"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("exited during start-up"), "{err}");
    assert!(
        err.contains("max-sessions"),
        "the log tail is included: {err}"
    );
    let log = std::fs::read_to_string(dir.path().join("node-1.log")).expect("node log");
    assert_eq!(
        log.matches("max-sessions").count(),
        1,
        "one attempt only: {log}"
    );
}
