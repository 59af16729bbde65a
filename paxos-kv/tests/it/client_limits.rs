//! The node's client listener bounds its connections: one over the limit is
//! refused with an error frame while the others keep working, and a
//! connection that sends nothing for the idle timeout is closed while an
//! active one is not. Raw sockets speak the client protocol, as any client
//! would, so the node runs with `--insecure-plaintext-clients` (the limits
//! are the same with TLS; `tls.rs` covers the TLS refusal); every wait is
//! bounded.

use bytes::BytesMut;
use paxos_kv::client::{Client, ClientError};
use paxos_kv::client_proto::{next_frame, Request, Response};
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// Generous bound on any single wait (the machine may be loaded).
const WAIT: Duration = Duration::from_secs(20);

fn one_node(dir: &Path) -> ClusterSpec {
    let mut spec = ClusterSpec::new(
        1,
        dir.to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    spec.insecure_plaintext_clients = true;
    spec
}

/// A raw client connection.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u64,
}

/// What reading from a connection gave.
#[derive(Debug)]
enum Read {
    Frame(u64, Response),
    Closed,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> std::io::Result<Raw> {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        Ok(Raw {
            stream,
            buf: BytesMut::new(),
            next_id: 1,
        })
    }

    async fn read(&mut self) -> Read {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(frame) = next_frame(&mut self.buf).expect("a well-formed frame") {
                let (id, resp) = Response::decode(frame).expect("a decodable response");
                return Read::Frame(id, resp);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(_)) => {}
                Err(_) => panic!("nothing read within {WAIT:?}"),
            }
        }
    }

    /// Sends a status request and returns its answer, or `None` if the
    /// node closed the connection instead.
    async fn status(&mut self) -> Option<String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = BytesMut::new();
        Request::Status.encode_frame(id, &mut out);
        if self.stream.write_all(&out).await.is_err() {
            return None;
        }
        loop {
            match self.read().await {
                Read::Frame(got, Response::Status(s)) if got == id => return Some(s),
                Read::Frame(0, _) => {}
                Read::Frame(got, other) => panic!("unexpected answer {got}: {other:?}"),
                Read::Closed => return None,
            }
        }
    }

    /// Reads until the node closes the connection; returns the frames seen.
    async fn until_closed(&mut self) -> Vec<(u64, Response)> {
        let mut frames = Vec::new();
        loop {
            match self.read().await {
                Read::Frame(id, r) => frames.push((id, r)),
                Read::Closed => return frames,
            }
        }
    }
}

/// Connects and gets a status answer, retrying until the node listens.
async fn connect_ready(addr: SocketAddr) -> Raw {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(mut c) = Raw::connect(addr).await {
            if c.status().await.is_some() {
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("node at {addr} did not answer within {WAIT:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_limit_is_refused_while_others_keep_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = one_node(dir.path());
    spec.max_client_connections = 2;
    let cluster = LocalCluster::start(spec).expect("cluster starts");
    let addr = cluster.client_addrs()[0];

    // Two connections fill the limit (each answered, so each is counted).
    let mut first = connect_ready(addr).await;
    let mut second = connect_ready(addr).await;

    // The third is told why and closed.
    let mut third = Raw::connect(addr).await.expect("TCP connect");
    let frames = third.until_closed().await;
    assert!(
        matches!(&frames[..], [(0, Response::Error(e))] if e.contains("too many client connections")),
        "the refused connection gets one error frame, then EOF: {frames:?}"
    );
    // The client library surfaces the same error.
    match Client::status_of(addr, &cluster.client_security(), Duration::from_secs(5)).await {
        Err(ClientError::Node(e)) => assert!(e.contains("too many client connections"), "{e}"),
        other => panic!("expected the limit's error, got {other:?}"),
    }

    let log = std::fs::read_to_string(cluster.log_path(1)).expect("node log");
    assert!(log.contains("at the connection limit"), "{log}");

    // The connections already in keep working.
    assert!(first.status().await.is_some(), "first still served");
    assert!(second.status().await.is_some(), "second still served");

    // Closing one frees its place.
    drop(first);
    let deadline = Instant::now() + WAIT;
    let mut admitted = false;
    while !admitted && Instant::now() < deadline {
        let mut c = Raw::connect(addr).await.expect("TCP connect");
        admitted = c.status().await.is_some();
        if !admitted {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(admitted, "a place freed by a closed connection is reused");
    assert!(second.status().await.is_some(), "second still served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_an_active_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = one_node(dir.path());
    // Short for the test, yet far above the active connection's 50 ms gaps.
    spec.client_idle_timeout_ms = 2_000;
    let cluster = LocalCluster::start(spec).expect("cluster starts");
    let addr = cluster.client_addrs()[0];

    let mut idle = connect_ready(addr).await;
    let mut active = connect_ready(addr).await;
    let idle_closed = tokio::spawn(async move { idle.until_closed().await });

    // Keep `active` busy until the idle one is closed (bounded), then a
    // while longer: every request is answered.
    let deadline = Instant::now() + WAIT;
    let mut answered = 0u32;
    let mut after_close = 0u32;
    while after_close < 20 {
        assert!(
            Instant::now() < deadline,
            "the idle connection was not closed within {WAIT:?}"
        );
        assert!(
            active.status().await.is_some(),
            "the active connection was closed after {answered} answers"
        );
        answered += 1;
        if idle_closed.is_finished() {
            after_close += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let frames = idle_closed.await.expect("reader task");
    assert!(
        matches!(&frames[..], [(0, Response::Error(e))] if e.contains("no request")),
        "the idle connection is told why, then closed: {frames:?}"
    );

    // The node said so in its log (written before the socket was closed).
    let log = std::fs::read_to_string(cluster.log_path(1)).expect("node log");
    assert!(log.contains("client connection idle; closed"), "{log}");
}
