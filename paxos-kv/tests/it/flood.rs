//! Floods against one node (issue 12, point 4): the node's anonymous
//! memory stays under a stated bound and other clients keep being served.
//!
//! - Sessions: one 1 MiB value, then many sessions each failing a
//!   compare-and-set on it, whose remembered result holds the value. The
//!   session table is bounded in bytes (here `--max-session-mib 16`), so the
//!   growth stays near that bound instead of 1 MiB per session.
//! - Trickled frames: many authenticated connections each announce a
//!   2 MiB frame and send a few bytes of it. A connection's buffer grows
//!   with what arrived, not with the claim.
//! - An oversize length prefix: refused and closed at once.
//! - A client that asks and never reads: answers to it are bounded in bytes
//!   per connection, so answers holding since-overwritten 1 MiB values do
//!   not pile up (the excess is dropped; that client times out).
//!
//! Memory is the node's `RssAnon` (heap and anonymous maps; the WAL's
//! file-backed pages are left out).

use bytes::{BufMut, Bytes, BytesMut};
use paxos_kv::client::{Client, Session};
use paxos_kv::client_proto::{ReadMode, Request};
use paxos_kv::kv::KvOp;
use paxos_kv::tls::{ClientSecurity, ClientTlsConfig};
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;
/// Sessions failing a compare-and-set on a 1 MiB value.
const CAS_SESSIONS: u64 = 200;
/// The session table's bound in this test.
const SESSION_MIB: u64 = 16;
/// Connections trickling a frame.
const TRICKLERS: usize = 600;

fn rss_anon(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("RssAnon in /proc/PID/status");
    kib * 1024
}

async fn served(client: &Client, key: &'static str) {
    let mut s = Session::assigned();
    client
        .write_in(
            &mut s,
            KvOp::Put {
                key: Bytes::from_static(key.as_bytes()),
                value: Bytes::from_static(b"ok"),
            },
        )
        .await
        .expect("a legitimate write is served");
    let v = client
        .get(Bytes::from_static(key.as_bytes()), ReadMode::Linearizable)
        .await
        .expect("a legitimate read is served");
    assert_eq!(v.as_deref(), Some(&b"ok"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_keep_the_node_within_its_memory_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::new(
        1,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    spec.max_session_mib = SESSION_MIB as usize;
    let cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster.wait_for_leader(WAIT).await.expect("a leader");
    let pid = cluster.pid(1).expect("the node runs");
    let security = cluster.client_security();
    let client = Client::new(cluster.client_addrs(), security.clone(), 1, WAIT);
    served(&client, "warm-up").await;
    let base = rss_anon(pid);

    // Sessions failing a compare-and-set on a large value.
    let big = Bytes::from(vec![b'v'; MIB as usize]);
    client
        .put(Bytes::from_static(b"big"), big)
        .await
        .expect("the large value is written");
    for i in 0..CAS_SESSIONS {
        let mut s = Session::new(10_000 + i);
        client
            .write_in(
                &mut s,
                KvOp::Cas {
                    key: Bytes::from_static(b"big"),
                    expected: None,
                    new: Bytes::from_static(b"x"),
                },
            )
            .await
            .expect("the compare-and-set is answered");
    }
    served(&client, "after-sessions").await;
    let after_sessions = rss_anon(pid);
    let grown = after_sessions.saturating_sub(base);
    eprintln!(
        "session flood: RssAnon {} -> {} MiB ({CAS_SESSIONS} sessions x 1 MiB results, bound {SESSION_MIB} MiB)",
        base / MIB,
        after_sessions / MIB
    );
    // The table's bound, the value itself, and twice that for the
    // allocator and the WAL's write buffers: far below 200 MiB.
    assert!(
        grown < 3 * SESSION_MIB * MIB + 32 * MIB,
        "the node grew by {} MiB",
        grown / MIB
    );

    // Connections that announce a 2 MiB frame and trickle a few bytes.
    let ClientSecurity::Tls(tls) = security.clone() else {
        panic!("the cluster speaks TLS");
    };
    let tls: ClientTlsConfig = tls;
    let addr = cluster.client_addrs()[0];
    let mut tricklers = Vec::with_capacity(TRICKLERS);
    for _ in 0..TRICKLERS {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut s = tls
            .connector()
            .connect(ClientTlsConfig::server_name(), tcp)
            .await
            .expect("TLS handshake");
        let mut frame = BytesMut::new();
        frame.put_u32_le(2 * 1024 * 1024 - 1);
        frame.put_slice(&[0u8; 100]);
        s.write_all(&frame).await.expect("trickle");
        s.flush().await.expect("flush");
        tricklers.push(s);
    }
    served(&client, "during-trickle").await;
    let during = rss_anon(pid);
    let per_conn = during.saturating_sub(after_sessions) / TRICKLERS as u64;
    eprintln!(
        "trickle flood: {TRICKLERS} connections each announcing 2 MiB: RssAnon {} -> {} MiB, {} KiB per connection",
        after_sessions / MIB,
        during / MIB,
        per_conn / 1024
    );
    // A connection's TLS state and buffers, not its 2 MiB claim.
    assert!(
        per_conn < 256 * 1024,
        "{} KiB per trickling connection",
        per_conn / 1024
    );
    drop(tricklers);

    // An oversize length prefix is refused and the connection closed.
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut s = tls
        .connector()
        .connect(ClientTlsConfig::server_name(), tcp)
        .await
        .expect("TLS handshake");
    s.write_all(&u32::MAX.to_le_bytes()).await.expect("write");
    s.flush().await.expect("flush");
    let mut reply = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut reply)).await;
    assert!(read.is_ok(), "the node closes the connection");
    assert!(
        String::from_utf8_lossy(&reply).contains("bad frame"),
        "the node says why: {reply:?}"
    );
    served(&client, "after-oversize").await;

    // A client that asks for a large value again and again and never reads
    // the answers, while the value is overwritten each time: every queued
    // answer would keep its own 1 MiB value alive.
    let before_deaf = rss_anon(pid);
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut deaf = tls
        .connector()
        .connect(ClientTlsConfig::server_name(), tcp)
        .await
        .expect("TLS handshake");
    // (The default session was evicted by the session flood.)
    let mut overwriter = Session::assigned();
    for i in 0..DEAF_ROUNDS {
        client
            .write_in(
                &mut overwriter,
                KvOp::Put {
                    key: Bytes::from_static(b"big"),
                    value: Bytes::from(vec![b'a' + (i % 26) as u8; MIB as usize]),
                },
            )
            .await
            .expect("overwrite");
        let mut frame = BytesMut::new();
        Request::Get {
            key: Bytes::from_static(b"big"),
            mode: ReadMode::Stale,
        }
        .encode_frame(i + 1, &mut frame);
        deaf.write_all(&frame).await.expect("ask");
        deaf.flush().await.expect("flush");
    }
    served(&client, "with-a-deaf-client").await;
    let with_deaf = rss_anon(pid);
    eprintln!(
        "deaf client: {DEAF_ROUNDS} answers of distinct 1 MiB values never read: RssAnon {} -> {} MiB",
        before_deaf / MIB,
        with_deaf / MIB
    );
    assert!(
        with_deaf.saturating_sub(before_deaf) < 48 * MIB,
        "the node grew by {} MiB",
        with_deaf.saturating_sub(before_deaf) / MIB
    );
    drop(deaf);
}

/// Requests of the client that never reads.
const DEAF_ROUNDS: u64 = 150;
