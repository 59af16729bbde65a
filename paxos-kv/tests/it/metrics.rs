//! `--metrics-addr`: three node processes serve Prometheus metrics; the
//! leader's scrape shows the writes, the election and its peers, and
//! malformed requests get an error status without harming the node.

use bytes::Bytes;
use paxos_kv::client::Client;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes of a request the node reads at most (`metrics.rs`'s
/// `MAX_REQUEST_BYTES`).
const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// Sends `request` to `addr` and reads until the node closes. `Err` when
/// the connection failed or was reset.
async fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let io = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(request).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    };
    tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer",
            ))
        })
}

/// A scrape's status line, headers and body.
struct Scrape {
    status: String,
    head: String,
    body: String,
}

async fn scrape(addr: SocketAddr, request: &[u8]) -> std::io::Result<Scrape> {
    let raw = exchange(addr, request).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Ok(Scrape {
        status: head.lines().next().unwrap_or("").to_string(),
        head: head.to_string(),
        body: body.to_string(),
    })
}

async fn get_metrics(addr: SocketAddr) -> std::io::Result<Scrape> {
    scrape(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").await
}

/// The value of the sample `series` (name and labels, as printed).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split(' ').next()?.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_serves_prometheus_metrics_and_survives_malformed_scrapes() {
    // One port, free on every address now; node N listens on 127.0.0.N.
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let metrics_addr = |id: u64| -> SocketAddr {
        format!("127.0.0.{id}:{port}")
            .parse()
            .expect("a socket address")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    // A local snapshot every 10 entries, so that the snapshot counters move.
    spec.snapshot_every = 10;
    spec.extra_node_args = vec!["--metrics-addr".into(), format!("127.0.0.{{id}}:{port}")];
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    let client = Client::new(
        cluster.client_addrs(),
        cluster.client_security(),
        1,
        Duration::from_secs(5),
    );
    // The counters below are the leader's own: the writes must all go
    // through one leader. A leader change (an election on a loaded
    // machine) starts the writes over with the new leader, a few times.
    const WRITES: u32 = 20;
    const TRIES: u32 = 3;
    let mut leader = 0;
    for attempt in 1..=TRIES {
        leader = cluster
            .wait_for_leader(Duration::from_secs(30))
            .await
            .expect("a leader is elected");
        let mut failed = None;
        for i in 0..WRITES {
            if let Err(e) = client
                .put(Bytes::from(format!("k{i}")), Bytes::from_static(b"v"))
                .await
            {
                failed = Some(format!("put k{i}: {e}"));
                break;
            }
        }
        let still_leader = cluster
            .wait_for_leader(Duration::from_secs(30))
            .await
            .expect("a leader");
        if failed.is_none() && still_leader == leader {
            break;
        }
        assert!(
            attempt < TRIES,
            "the leader changed during each of {TRIES} rounds of writes (last: {leader} then \
             {still_leader}, {failed:?})"
        );
    }

    // The state-derived gauges are refreshed on the node's timer: scrape
    // until they show both peers.
    let addr = metrics_addr(leader);
    let peers: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != leader).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let s = get_metrics(addr)
            .await
            .expect("the leader answers a scrape");
        assert_eq!(s.status, "HTTP/1.1 200 OK", "{}", s.head);
        let ready = peers.iter().all(|p| {
            sample(&s.body, &format!("paxos_peer_lag_entries{{peer=\"{p}\"}}")).is_some()
                && sample(&s.body, &format!("paxos_peer_connected{{peer=\"{p}\"}}")) == Some(1.0)
        }) && sample(&s.body, "paxos_is_leader") == Some(1.0)
            // Snapshots are written on a thread of their own.
            && sample(&s.body, "paxos_snapshots_taken_total").is_some_and(|v| v >= 1.0);
        if ready {
            assert!(
                s.head.lines().any(|l| l
                    == "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
                "{}",
                s.head
            );
            break s.body;
        }
        assert!(
            Instant::now() < deadline,
            "peer gauges never appeared:\n{}",
            s.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let committed = sample(&body, "paxos_commit_latency_seconds_count").expect("commit latency");
    assert!(committed >= f64::from(WRITES), "{committed}\n{body}");
    let elections = sample(&body, "paxos_elections_total").expect("elections");
    assert!(elections >= 1.0, "{body}");
    assert!(
        sample(&body, "paxos_epoch_changes_total").is_some_and(|v| v >= 1.0),
        "{body}"
    );
    assert!(
        sample(&body, "paxos_applied_entries_total").is_some_and(|v| v >= f64::from(WRITES)),
        "{body}"
    );
    assert!(
        sample(
            &body,
            "paxos_client_requests_total{kind=\"write\",result=\"accepted\"}"
        )
        .is_some_and(|v| v >= f64::from(WRITES)),
        "{body}"
    );
    assert!(
        sample(&body, "paxos_wal_sync_duration_seconds_count").is_some_and(|v| v >= 1.0),
        "{body}"
    );
    assert!(
        sample(&body, "paxos_snapshot_taken_bytes_total").is_some_and(|v| v > 0.0),
        "{body}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    // A follower has no lag series (only the leader knows the progress).
    let follower = metrics_addr(peers[0]);
    let f = get_metrics(follower).await.expect("a follower answers");
    assert_eq!(f.status, "HTTP/1.1 200 OK");
    assert!(
        !f.body.contains("paxos_peer_lag_entries{"),
        "a follower reports lag:\n{}",
        f.body
    );

    // Requests that are not a scrape.
    let other = scrape(addr, b"GET / HTTP/1.1\r\n\r\n").await.expect("404");
    assert_eq!(other.status, "HTTP/1.1 404 Not Found");
    let post = scrape(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .await
        .expect("405");
    assert_eq!(post.status, "HTTP/1.1 405 Method Not Allowed");
    let garbage = scrape(addr, b"\x00\x01\xff\xfe garbage\r\n\r\n")
        .await
        .expect("400");
    assert_eq!(garbage.status, "HTTP/1.1 400 Bad Request");
    // A head that fills the whole read budget without ending.
    let mut long = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    long.resize(MAX_REQUEST_BYTES, b'a');
    let too_large = scrape(addr, &long).await.expect("431");
    assert_eq!(
        too_large.status,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    // Far more than that: the node answers and closes with bytes unread,
    // which may reach this side as a reset instead of the answer.
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(64 * MAX_REQUEST_BYTES, b'a');
    match scrape(addr, &huge).await {
        Ok(s) => assert!(
            s.status.is_empty() || s.status.starts_with("HTTP/1.1 431"),
            "{}",
            s.status
        ),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
    }
    // A partial head, then the client stops sending.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metr").await.expect("write");
    s.shutdown().await.expect("half-close");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the node answers a cut-off request")
        .expect("read");
    assert!(
        out.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // The node is alive and still serves.
    assert!(cluster.is_running(leader), "the leader process exited");
    let after = get_metrics(addr)
        .await
        .expect("a scrape after the bad ones");
    assert_eq!(after.status, "HTTP/1.1 200 OK");
    assert!(
        sample(&after.body, "paxos_commit_latency_seconds_count").is_some_and(|v| v >= committed),
        "{}",
        after.body
    );
}

/// With many groups the node-wide gauges count them: by role (the three
/// nodes' leaders add up to the number of groups, and each node's roles
/// to the groups it hosts), none recovering, and the election window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_many_groups_counts_them_by_role() {
    const GROUPS: f64 = 8.0;
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    spec.extra_node_args = vec![
        "--groups".into(),
        "8".into(),
        "--metrics-addr".into(),
        format!("127.0.0.{{id}}:{port}"),
    ];
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group elects a leader");
    let role = |body: &str, r: &str| sample(body, &format!("paxos_groups{{role=\"{r}\"}}"));
    // Refreshed on the node's timer, and leaders may still move: scrape
    // until the counts agree (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    let bodies = loop {
        let mut bodies = Vec::new();
        for id in 1..=3u64 {
            let addr: SocketAddr = format!("127.0.0.{id}:{port}").parse().expect("address");
            if let Ok(s) = get_metrics(addr).await {
                bodies.push(s.body);
            }
        }
        let agreed = bodies.len() == 3
            && bodies
                .iter()
                .map(|b| role(b, "leader").unwrap_or(0.0))
                .sum::<f64>()
                == GROUPS
            && bodies.iter().all(|b| {
                ["leader", "follower", "looking"]
                    .iter()
                    .map(|r| role(b, r).unwrap_or(-1.0))
                    .sum::<f64>()
                    == GROUPS
            });
        if agreed {
            break bodies;
        }
        assert!(
            Instant::now() < deadline,
            "the nodes' group gauges never agreed: {:?}",
            bodies
                .iter()
                .map(|b| b
                    .lines()
                    .filter(|l| l.starts_with("paxos_groups"))
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for b in &bodies {
        assert_eq!(sample(b, "paxos_groups_recovering"), Some(0.0), "{b}");
        assert!(sample(b, "paxos_groups_lagging").is_some(), "{b}");
        assert!(sample(b, "paxos_election_queue").is_some(), "{b}");
        assert!(
            sample(b, "paxos_election_window").is_some_and(|w| w >= 16.0),
            "{b}"
        );
    }
    cluster.stop();
}
