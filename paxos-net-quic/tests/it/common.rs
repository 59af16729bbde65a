//! Helpers: clusters of transports on loopback, raw quinn clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use paxos_net_quic::certs::{generate_cluster_in_memory, GeneratedCluster};
use paxos_net_quic::frame::{StreamHeader, StreamKind};
use paxos_net_quic::{ClusterTrust, Inbox, NetConfig, NodeIdentity, PeerId, Transport};

/// Upper bound on any wait in these tests (liveness, not a timing assertion).
pub const WAIT: Duration = Duration::from_secs(30);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn ids(raw: &[u64]) -> Vec<PeerId> {
    raw.iter().map(|&r| PeerId(r)).collect()
}

/// A loopback address no test listens on; used for lower-id peers, which are
/// never dialled (the lower id dials).
pub fn placeholder() -> SocketAddr {
    "127.0.0.1:9".parse().expect("static address")
}

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("static address")
}

/// Builds the config of `me`, given the addresses of the nodes above it.
pub fn config(
    cluster: &GeneratedCluster,
    me: PeerId,
    all: &[PeerId],
    addrs: &BTreeMap<PeerId, SocketAddr>,
) -> NetConfig {
    let peers = all
        .iter()
        .filter(|&&p| p != me)
        .map(|&p| (p, if p > me { addrs[&p] } else { placeholder() }))
        .collect();
    let listen = addrs.get(&me).copied().unwrap_or_else(any_port);
    NetConfig::loopback(
        cluster.node(me).expect("generated").clone(),
        cluster.trust(),
        listen,
        peers,
    )
}

pub struct Node {
    pub transport: Transport,
    pub inbox: Inbox,
    pub addr: SocketAddr,
}

/// Starts one transport per id, highest first so lower ids know the ports to dial.
pub async fn start_cluster(
    raw: &[u64],
    tweak: impl Fn(&mut NetConfig),
) -> (GeneratedCluster, BTreeMap<PeerId, Node>) {
    let all = ids(raw);
    let cluster = generate_cluster_in_memory(&all).expect("generate certificates");
    let mut addrs = BTreeMap::new();
    let mut nodes = BTreeMap::new();
    let mut order = all.clone();
    order.sort_by(|a, b| b.cmp(a));
    for me in order {
        let mut cfg = config(&cluster, me, &all, &addrs);
        tweak(&mut cfg);
        let (transport, inbox) = Transport::bind(cfg).await.expect("bind transport");
        let addr = transport.local_addr().expect("bound address");
        addrs.insert(me, addr);
        nodes.insert(
            me,
            Node {
                transport,
                inbox,
                addr,
            },
        );
    }
    (cluster, nodes)
}

/// Polls `cond` every 10 ms until it holds or [`WAIT`] passes.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends a frame, retrying (bounded) while the queue is full.
pub async fn send_retrying(t: &Transport, peer: PeerId, mut frame: Bytes) {
    for _ in 0..100_000 {
        match t.send(peer, frame) {
            Ok(()) => return,
            Err(paxos_net_quic::SendError::QueueFull { payload, .. }) => {
                frame = payload;
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            Err(e) => panic!("send to {peer} failed: {e}"),
        }
    }
    panic!("queue to {peer} stayed full");
}

/// A bare quinn client endpoint presenting `identity`, trusting `trust`.
pub fn raw_client(identity: &NodeIdentity, trust: &ClusterTrust) -> quinn::Endpoint {
    let cfg = paxos_net_quic::tls::quinn_client_config(
        identity,
        trust,
        Arc::new(quinn::TransportConfig::default()),
    )
    .expect("client config");
    let mut ep = quinn::Endpoint::client(any_port()).expect("client endpoint");
    ep.set_default_client_config(cfg);
    ep
}

/// Dials `server` (expecting it to be `server_id`) with a raw client.
pub async fn raw_connect(
    ep: &quinn::Endpoint,
    server: SocketAddr,
    server_id: PeerId,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let connecting = ep
        .connect(server, &server_id.dns_name())
        .expect("connect call");
    tokio::time::timeout(WAIT, connecting)
        .await
        .expect("handshake finished or failed in time")
}

/// Opens a control stream and writes a hello claiming `claimed`.
pub async fn send_hello(conn: &quinn::Connection, claimed: u64) -> Option<quinn::SendStream> {
    let mut s = conn.open_uni().await.ok()?;
    let header = StreamHeader {
        kind: StreamKind::Control,
        sender: claimed,
    };
    s.write_all(&header.encode()).await.ok()?;
    Some(s)
}

/// Waits (bounded) until the connection is closed and returns why.
pub async fn closed_reason(conn: &quinn::Connection) -> quinn::ConnectionError {
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("connection was closed by the server")
}

/// The application close code of a closed connection, if it was closed by the
/// peer's application.
pub fn app_code(err: &quinn::ConnectionError) -> Option<paxos_net_quic::CloseCode> {
    match err {
        quinn::ConnectionError::ApplicationClosed(close) => {
            paxos_net_quic::CloseCode::from_varint(close.error_code)
        }
        _ => None,
    }
}

/// Tiny deterministic PRNG for test data.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}
