//! The per-node endpoint: dials, accepts, keeps one connection per peer and
//! moves frames.
//!
//! The connection rule, reconnects and the handshake are documented on
//! [`Transport`].
//!
//! # Tasks
//! One accept task for the endpoint, one driver task per peer. A driver owns
//! the peer's queues across reconnects; a session (one connection) runs the
//! control writer, the bulk writer, the control reader and the bulk acceptor
//! as futures inside the driver, so nothing outlives its connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, timeout};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::certs::{self, CertError};
use crate::config::NetConfig;
use crate::error::{CloseCode, NetError, SendError};
use crate::frame::{FrameDecoder, StreamHeader, StreamKind, BULK_PREFIX_BYTES, HEADER_BYTES};
use crate::metrics::{
    add, EndpointCounters, EndpointMetrics, PathMetrics, PeerCounters, PeerMetrics,
};
use crate::{tls, PeerId};

/// Send priority of the control stream: quinn sends higher priorities first,
/// so queued bulk data never goes out ahead of a pending control frame.
const CONTROL_PRIORITY: i32 = 10;
/// Send priority of bulk streams.
const BULK_PRIORITY: i32 = 0;
/// Frames at most this long are copied into the coalescing buffer; longer
/// ones are written as their own chunk without a copy.
const COALESCE_MAX_FRAME_BYTES: usize = 1024;
/// Upper bound on frames per write batch.
const BATCH_MAX_FRAMES: usize = 1024;
/// Upper bound on one read from the control stream.
const READ_CHUNK_BYTES: usize = 256 * 1024;
/// Upper bound on one read from a bulk stream.
const BULK_READ_CHUNK_BYTES: u64 = 1024 * 1024;
/// Accepted connections waiting for their driver (per peer).
const INBOUND_HANDOFF_SLOTS: usize = 4;
/// Most peers one transport holds (configured and added at run time).
pub const MAX_PEERS: usize = 4096;

/// What the application receives: frames and bulk payloads from peers.
#[derive(Debug)]
pub struct Inbox {
    /// Control frames, per peer in the order they were sent.
    /// Bounded by [`NetConfig::incoming_queue_frames`]; a full channel pushes
    /// back on the senders through QUIC flow control.
    pub frames: mpsc::Receiver<(PeerId, Bytes)>,
    /// Whole bulk payloads. Bounded by [`NetConfig::incoming_bulk_payloads`].
    pub bulk: mpsc::Receiver<(PeerId, Bytes)>,
}

struct PeerSlot {
    id: PeerId,
    /// Where to dial it (changed by [`Transport::add_peer`]).
    addr: Mutex<SocketAddr>,
    frames_tx: mpsc::Sender<Bytes>,
    bulk_tx: mpsc::Sender<Bytes>,
    inbound_tx: mpsc::Sender<Accepted>,
    counters: PeerCounters,
    /// The live connection, for path statistics.
    current: Mutex<Option<Connection>>,
}

/// The receiving ends of a peer's queues, owned by its driver task.
struct PeerQueues {
    frames_q: mpsc::Receiver<Bytes>,
    bulk_q: mpsc::Receiver<Bytes>,
    inbound_rx: mpsc::Receiver<Accepted>,
}

impl PeerSlot {
    fn new(cfg: &NetConfig, id: PeerId, addr: SocketAddr) -> (Arc<PeerSlot>, PeerQueues) {
        let (frames_tx, frames_q) = mpsc::channel(cfg.send_queue_frames);
        let (bulk_tx, bulk_q) = mpsc::channel(cfg.bulk_queue_payloads);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_HANDOFF_SLOTS);
        let slot = Arc::new(PeerSlot {
            id,
            addr: Mutex::new(addr),
            frames_tx,
            bulk_tx,
            inbound_tx,
            counters: PeerCounters::default(),
            current: Mutex::new(None),
        });
        (
            slot,
            PeerQueues {
                frames_q,
                bulk_q,
                inbound_rx,
            },
        )
    }

    fn snapshot(&self) -> PeerMetrics {
        let depth = |tx: &mpsc::Sender<Bytes>| (tx.max_capacity() - tx.capacity()) as u64;
        let path = self.current.lock().as_ref().map(PathMetrics::of);
        self.counters
            .snapshot(self.id, depth(&self.frames_tx), depth(&self.bulk_tx), path)
    }
}

struct Shared {
    id: PeerId,
    cfg: NetConfig,
    endpoint: quinn::Endpoint,
    /// Every peer, by id: those of [`NetConfig::peers`] and those added at
    /// run time ([`Transport::add_peer`]). Read on every send.
    peers: RwLock<HashMap<PeerId, Arc<PeerSlot>>>,
    /// The ids of `peers`, as the TLS verifier checks them.
    members: tls::Members,
    frames_in: mpsc::Sender<(PeerId, Bytes)>,
    bulk_in: mpsc::Sender<(PeerId, Bytes)>,
    counters: EndpointCounters,
    closing: AtomicBool,
    handshakes: Arc<Semaphore>,
    handshakes_per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection accepted and authenticated, with the peer's control stream
/// (hello already read), waiting for its driver.
struct Accepted {
    conn: Connection,
    ctrl: RecvStream,
}

/// An established connection with both control streams.
struct Session {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
}

/// A node's QUIC transport: send frames and bulk payloads to peers by id,
/// receive theirs through the [`Inbox`].
///
/// Create it inside a tokio runtime with [`Transport::bind`]; stop it with
/// [`Transport::shutdown`] to flush queued frames (dropping it aborts at once).
///
/// # One connection per pair
/// The node with the **lower id dials**; the higher id only accepts. A
/// connection dialled by the higher id (both sides dialling at once, or a
/// misconfigured peer) is closed by the acceptor with
/// [`CloseCode::WrongDirection`] right after the handshake, so every pair ends
/// with the connection dialled by the lower id, decided the same way on both
/// sides. When a new connection from the same (lower) peer arrives while one
/// is live (the peer restarted before the old connection timed out), the
/// **newest wins**: the old one is closed with [`CloseCode::Replaced`].
///
/// # Reconnects
/// The dialling side redials a lost connection after an exponentially growing
/// delay ([`NetConfig::backoff_initial_ms`] doubling up to
/// [`NetConfig::backoff_max_ms`], each drawn from `[d/2, d]`), reset after a
/// success. Keep-alives every [`NetConfig::keep_alive_ms`] and the idle
/// timeout [`NetConfig::idle_timeout_ms`] turn a silent peer into a reconnect.
///
/// # Handshake
/// 1. QUIC + TLS 1.3 with client certificates: each side verifies the other's
///    chain to the cluster CA; the acceptor requires the client certificate to
///    name exactly one member; the dialler requires `node-<dialled id>`.
/// 2. Each side opens its control stream with a [`StreamHeader`] claiming its
///    id; the acceptor refuses ([`CloseCode::IdMismatch`]) a claim that differs
///    from the certificate, before reading any frame.
///
/// # Delivery
/// Frames to one peer arrive in order and intact while a connection lasts.
/// Frames queued while disconnected are sent after the reconnect. Frames
/// already handed to a connection that dies are lost and counted
/// ([`PeerMetrics::lost_in_flight`]); a consensus protocol resends.
pub struct Transport {
    shared: Arc<Shared>,
    drivers: Vec<JoinHandle<()>>,
    accept_task: Option<JoinHandle<()>>,
    shutdown_tx: watch::Sender<bool>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node", &self.shared.id)
            .field("peers", &self.shared.members)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// Binds the UDP socket, starts accepting and dialling, and returns the
    /// transport with its inbox. Must be called inside a tokio runtime.
    pub async fn bind(cfg: NetConfig) -> Result<(Transport, Inbox), NetError> {
        cfg.validate()?;
        let id = cfg.node_id();
        let own_leaf = cfg
            .identity
            .chain()
            .first()
            .ok_or_else(|| NetError::Config {
                problem: "identity has no certificate".into(),
            })?;
        if !certs::cert_names(own_leaf, id) {
            return Err(NetError::Cert(CertError::WrongName {
                origin: "NetConfig::identity".into(),
                expected: id,
                expected_name: id.dns_name(),
            }));
        }
        let members = tls::Members::new(cfg.peers.keys().copied().collect());
        let transport = Arc::new(cfg.quinn_transport());

        let server_crypto = tls::server_crypto(&cfg.identity, &cfg.trust, members.clone())?;
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_crypto)
            .map_err(|e| NetError::Config {
                problem: format!("server TLS config unusable for QUIC: {e}"),
            })?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server
            .transport_config(transport.clone())
            // Cluster members have fixed addresses.
            .migration(false)
            // quinn's own bound on connection attempts buffered before we see them.
            .max_incoming(cfg.max_incoming_handshakes.saturating_mul(2));
        let client = tls::quinn_client_config(&cfg.identity, &cfg.trust, transport)?;

        let socket =
            std::net::UdpSocket::bind(cfg.listen_addr).map_err(|source| NetError::Bind {
                addr: cfg.listen_addr,
                source,
            })?;
        // Larger kernel buffers absorb bursts (a window of bulk data arrives
        // faster than one task drains it); the kernel caps them at
        // net.core.{r,w}mem_max, so failures are only logged.
        let udp_state =
            quinn::udp::UdpSocketState::new((&socket).into()).map_err(|source| NetError::Bind {
                addr: cfg.listen_addr,
                source,
            })?;
        if let Err(e) = udp_state.set_recv_buffer_size((&socket).into(), cfg.socket_buffer_bytes) {
            debug!(node = %id, error = %e, "could not set UDP receive buffer size");
        }
        if let Err(e) = udp_state.set_send_buffer_size((&socket).into(), cfg.socket_buffer_bytes) {
            debug!(node = %id, error = %e, "could not set UDP send buffer size");
        }
        let mut endpoint_cfg = quinn::EndpointConfig::default();
        endpoint_cfg
            .max_udp_payload_size(cfg.max_mtu_bytes)
            .map_err(|e| NetError::Config {
                problem: format!("max_mtu_bytes {}: {e}", cfg.max_mtu_bytes),
            })?;
        let mut endpoint = quinn::Endpoint::new(
            endpoint_cfg,
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| NetError::Bind {
            addr: cfg.listen_addr,
            source,
        })?;
        endpoint.set_default_client_config(client);

        let (frames_in, frames_rx) = mpsc::channel(cfg.incoming_queue_frames);
        let (bulk_in, bulk_rx) = mpsc::channel(cfg.incoming_bulk_payloads);
        let mut peers = HashMap::new();
        let mut driver_inputs = Vec::new();
        for (&peer, &addr) in &cfg.peers {
            let (slot, queues) = PeerSlot::new(&cfg, peer, addr);
            peers.insert(peer, slot.clone());
            driver_inputs.push((slot, queues));
        }
        let shared = Arc::new(Shared {
            id,
            handshakes: Arc::new(Semaphore::new(cfg.max_incoming_handshakes)),
            cfg,
            endpoint,
            peers: RwLock::new(peers),
            members,
            frames_in,
            bulk_in,
            counters: EndpointCounters::default(),
            closing: AtomicBool::new(false),
            handshakes_per_ip: Mutex::new(HashMap::new()),
        });
        let cfg_peers = shared.peers.read().len();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let drivers = driver_inputs
            .into_iter()
            .map(|(slot, queues)| {
                tokio::spawn(run_peer(shared.clone(), slot, queues, shutdown_rx.clone()))
            })
            .collect();
        let accept_task = Some(tokio::spawn(accept_loop(shared.clone())));
        let local = shared.endpoint.local_addr().ok();
        info!(node = %id, addr = ?local, peers = cfg_peers, "transport started");
        Ok((
            Transport {
                shared,
                drivers,
                accept_task,
                shutdown_tx,
            },
            Inbox {
                frames: frames_rx,
                bulk: bulk_rx,
            },
        ))
    }

    /// This node's id.
    pub fn node_id(&self) -> PeerId {
        self.shared.id
    }

    /// The bound UDP address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.endpoint.local_addr()
    }

    /// Queues a control frame for `peer` without waiting.
    ///
    /// Frames to one peer are delivered in order while a connection lasts;
    /// frames queued while disconnected go out after the reconnect; frames
    /// already handed to a connection that dies are lost (counted in
    /// [`PeerMetrics::lost_in_flight`]): consensus protocols resend.
    ///
    /// **When the queue is full** ([`NetConfig::send_queue_frames`]) the frame
    /// is refused and handed back in [`SendError::QueueFull`] and counted in
    /// [`PeerMetrics::dropped_full`]: drop-and-report, never unbounded memory,
    /// never blocking the caller's state machine.
    pub fn send(&self, peer: PeerId, frame: Bytes) -> Result<(), SendError> {
        let peers = self.shared.peers.read();
        let slot = self.slot_for(&peers, peer, &frame)?;
        let max = self.shared.cfg.max_frame_bytes;
        if frame.len() as u64 > u64::from(max) {
            return Err(SendError::TooLarge {
                peer,
                len_bytes: frame.len() as u64,
                max_bytes: u64::from(max),
                payload: frame,
            });
        }
        let max = self.shared.cfg.send_queue_bytes;
        try_queue(
            slot,
            &slot.frames_tx,
            &slot.counters.queued_bytes,
            max,
            frame,
        )
    }

    /// Queues a bulk payload (snapshot chunk, catch-up batch) for `peer`
    /// without waiting. Each payload travels on its own lower-priority stream,
    /// so it never delays control frames. Same full-queue policy as
    /// [`Transport::send`], with [`NetConfig::bulk_queue_payloads`] as bound.
    pub fn send_bulk(&self, peer: PeerId, payload: Bytes) -> Result<(), SendError> {
        let peers = self.shared.peers.read();
        let slot = self.slot_for(&peers, peer, &payload)?;
        let max = self.shared.cfg.max_bulk_bytes;
        if payload.len() as u64 > max {
            return Err(SendError::TooLarge {
                peer,
                len_bytes: payload.len() as u64,
                max_bytes: max,
                payload,
            });
        }
        let max = self.shared.cfg.bulk_queue_bytes;
        try_queue(
            slot,
            &slot.bulk_tx,
            &slot.counters.queued_bulk_bytes,
            max,
            payload,
        )
    }

    fn slot_for<'a>(
        &self,
        peers: &'a HashMap<PeerId, Arc<PeerSlot>>,
        peer: PeerId,
        payload: &Bytes,
    ) -> Result<&'a PeerSlot, SendError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(SendError::Closed {
                payload: payload.clone(),
            });
        }
        peers
            .get(&peer)
            .map(|s| &**s)
            .ok_or_else(|| SendError::UnknownPeer {
                peer,
                payload: payload.clone(),
            })
    }

    /// Adds the peer `id`, reachable at `addr`, at run time (a member added
    /// to the cluster after this node started), or changes where an
    /// existing peer is dialled. From now on `id` may connect with a
    /// certificate naming it, and frames to it are queued and sent like to
    /// any peer. Returns whether anything changed. Refused for this node's
    /// own id and past [`MAX_PEERS`] peers.
    ///
    /// A peer stays until the transport is dropped: the consensus layer
    /// ignores the messages of a node that is no longer a member.
    pub fn add_peer(&mut self, id: PeerId, addr: SocketAddr) -> Result<bool, NetError> {
        if id == self.shared.id {
            return Err(NetError::Config {
                problem: format!("{id} is this node; it cannot be its own peer"),
            });
        }
        let (slot, queues) = {
            let mut peers = self.shared.peers.write();
            if let Some(slot) = peers.get(&id) {
                let mut at = slot.addr.lock();
                if *at == addr {
                    return Ok(false);
                }
                info!(node = %self.shared.id, peer = %id, old = %*at, new = %addr, "peer address changed");
                *at = addr;
                return Ok(true);
            }
            if peers.len() >= MAX_PEERS {
                return Err(NetError::Config {
                    problem: format!("{} peers already; at most {MAX_PEERS}", peers.len()),
                });
            }
            let (slot, queues) = PeerSlot::new(&self.shared.cfg, id, addr);
            peers.insert(id, slot.clone());
            self.shared.members.add(id);
            (slot, queues)
        };
        info!(node = %self.shared.id, peer = %id, %addr, "peer added");
        self.drivers.push(tokio::spawn(run_peer(
            self.shared.clone(),
            slot,
            queues,
            self.shutdown_tx.subscribe(),
        )));
        Ok(true)
    }

    /// Counters of one peer, or `None` if `peer` is not a member.
    pub fn peer_metrics(&self, peer: PeerId) -> Option<PeerMetrics> {
        self.shared.peers.read().get(&peer).map(|s| s.snapshot())
    }

    /// Counters of every peer, by id.
    pub fn metrics(&self) -> Vec<PeerMetrics> {
        let mut all: Vec<_> = self
            .shared
            .peers
            .read()
            .values()
            .map(|s| s.snapshot())
            .collect();
        all.sort_by_key(|m| m.peer);
        all
    }

    /// Counters of refused connection attempts.
    pub fn endpoint_metrics(&self) -> EndpointMetrics {
        self.shared.counters.snapshot()
    }

    /// Whether a connection to `peer` is up now.
    pub fn is_connected(&self, peer: PeerId) -> bool {
        self.shared
            .peers
            .read()
            .get(&peer)
            .is_some_and(|s| s.counters.connected.load(Ordering::Relaxed))
    }

    /// Graceful shutdown: refuses new sends and new connections, writes every
    /// frame and bulk payload already queued to connected peers, waits (up to
    /// [`NetConfig::shutdown_flush_ms`]) for the peers to have read them, then
    /// closes every connection and the socket. Frames for peers that are not
    /// connected are counted as lost. Returns the final per-peer counters.
    pub async fn shutdown(mut self) -> Vec<PeerMetrics> {
        let shared = self.shared.clone();
        shared.closing.store(true, Ordering::Release);
        shared.endpoint.set_server_config(None);
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
        // Receivers only disappear when drivers exit; nothing to do if so.
        let _ = self.shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(shared.cfg.shutdown_flush_ms + 1_000);
        for handle in self.drivers.drain(..) {
            let abort = handle.abort_handle();
            if tokio::time::timeout_at(deadline, handle).await.is_err() {
                warn!(node = %shared.id, "shutdown flush timed out; aborting peer driver");
                abort.abort();
            }
        }
        shared
            .endpoint
            .close(CloseCode::Shutdown.varint(), b"shutdown");
        let _ = timeout(Duration::from_secs(1), shared.endpoint.wait_idle()).await;
        info!(node = %shared.id, "transport shut down");
        self.metrics()
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
        for d in self.drivers.drain(..) {
            d.abort();
        }
        self.shared
            .endpoint
            .close(CloseCode::Shutdown.varint(), b"dropped");
    }
}

/// Queues `payload` if the queue has a free slot and `queued` (its bytes,
/// taken off by the writer as it dequeues) stays within `max_bytes`.
fn try_queue(
    slot: &PeerSlot,
    tx: &mpsc::Sender<Bytes>,
    queued: &AtomicU64,
    max_bytes: u64,
    payload: Bytes,
) -> Result<(), SendError> {
    let len = payload.len() as u64;
    // Reserve first, so that concurrent senders never pass the bound
    // together (one may be refused that would have fitted: harmless).
    let before = queued.fetch_add(len, Ordering::AcqRel);
    if before.saturating_add(len) > max_bytes {
        queued.fetch_sub(len, Ordering::AcqRel);
        add(&slot.counters.dropped_full, 1);
        debug!(peer = %slot.id, queued_bytes = before, "send queue full (bytes); payload refused");
        return Err(SendError::QueueBytesFull {
            peer: slot.id,
            queued_bytes: before,
            len_bytes: len,
            max_bytes,
            payload,
        });
    }
    let sent = tx.try_send(payload);
    if sent.is_err() {
        queued.fetch_sub(len, Ordering::AcqRel);
    }
    match sent {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(payload)) => {
            add(&slot.counters.dropped_full, 1);
            debug!(peer = %slot.id, "send queue full; payload refused");
            Err(SendError::QueueFull {
                peer: slot.id,
                capacity: tx.max_capacity(),
                payload,
            })
        }
        Err(mpsc::error::TrySendError::Closed(payload)) => Err(SendError::Closed { payload }),
    }
}

// ---------------------------------------------------------------------------
// Accepting

/// Releases a per-IP handshake slot when the handshake ends.
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.shared.handshakes_per_ip.lock();
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(mut incoming) = shared.endpoint.accept().await {
        // Under pressure (half the handshake slots taken), make clients prove
        // their address with a QUIC Retry first, so spoofed source addresses
        // cannot take slots or dodge the per-address bound.
        let busy = shared.handshakes.available_permits() * 2 < shared.cfg.max_incoming_handshakes;
        if busy && !incoming.remote_address_validated() && incoming.may_retry() {
            match incoming.retry() {
                Ok(()) => continue,
                Err(e) => incoming = e.into_incoming(),
            }
        }
        let remote = incoming.remote_address();
        let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
            add(&shared.counters.refused_flood, 1);
            warn!(node = %shared.id, %remote, "refused connection attempt: too many handshakes in flight");
            incoming.refuse();
            continue;
        };
        let ip = remote.ip();
        {
            let mut map = shared.handshakes_per_ip.lock();
            let n = map.entry(ip).or_insert(0);
            if *n >= shared.cfg.max_handshakes_per_ip {
                drop(map);
                add(&shared.counters.refused_flood, 1);
                warn!(node = %shared.id, %remote, "refused connection attempt: too many handshakes from this address");
                incoming.refuse();
                continue;
            }
            *n += 1;
        }
        let slot = IpSlot {
            shared: shared.clone(),
            ip,
        };
        tokio::spawn(handshake(shared.clone(), incoming, permit, slot));
    }
}

/// Runs one incoming connection from its first packet to the hand-off to the
/// peer's driver. Holds a handshake permit (flood bound) throughout.
async fn handshake(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    _permit: OwnedSemaphorePermit,
    _ip: IpSlot,
) {
    let remote = incoming.remote_address();
    let refuse_handshake = |reason: String| {
        add(&shared.counters.refused_handshake, 1);
        warn!(node = %shared.id, %remote, %reason, "refused peer: handshake failed");
    };
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => return refuse_handshake(e.to_string()),
    };
    let conn = match timeout(
        Duration::from_millis(shared.cfg.connect_timeout_ms),
        connecting,
    )
    .await
    {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return refuse_handshake(e.to_string()),
        Err(_) => return refuse_handshake("handshake timed out".into()),
    };
    let refuse_peer = |code: CloseCode, reason: String| {
        add(&shared.counters.refused_peer, 1);
        warn!(node = %shared.id, %remote, ?code, %reason, "refused peer");
        conn.close(code.varint(), reason.as_bytes());
    };
    // The verifier already required exactly one member name; read it back.
    let Some(peer) = tls::connection_peer(&conn, &shared.members.get()) else {
        return refuse_peer(
            CloseCode::NotMember,
            "certificate names no single member".into(),
        );
    };
    if peer > shared.id {
        return refuse_peer(
            CloseCode::WrongDirection,
            format!("{peer} dialled {}: the lower id dials", shared.id),
        );
    }
    // The hello: the peer's control stream header, before any frame.
    let hello = timeout(Duration::from_millis(shared.cfg.hello_timeout_ms), async {
        let mut recv = conn.accept_uni().await.map_err(|e| e.to_string())?;
        let mut raw = [0u8; HEADER_BYTES];
        recv.read_exact(&mut raw).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((recv, raw))
    })
    .await;
    let (mut ctrl, raw) = match hello {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            return refuse_peer(CloseCode::Protocol, format!("no hello from {peer}: {e}"))
        }
        Err(_) => {
            return refuse_peer(
                CloseCode::HelloTimeout,
                format!("no hello from {peer} in time"),
            )
        }
    };
    let header = match StreamHeader::decode(&raw) {
        Ok(h) => h,
        Err(e) => {
            let _ = ctrl.stop(CloseCode::Protocol.varint());
            return refuse_peer(CloseCode::Protocol, format!("bad hello from {peer}: {e}"));
        }
    };
    if header.kind != StreamKind::Control {
        return refuse_peer(
            CloseCode::Protocol,
            format!("{peer} opened a {:?} stream first", header.kind),
        );
    }
    if header.sender != peer.0 {
        return refuse_peer(
            CloseCode::IdMismatch,
            format!(
                "peer claims node-{} but its certificate names {peer}",
                header.sender
            ),
        );
    }
    let Some(slot) = shared.peers.read().get(&peer).cloned() else {
        return refuse_peer(CloseCode::NotMember, format!("{peer} is not a member"));
    };
    debug!(node = %shared.id, %peer, %remote, "accepted connection");
    if let Err(e) = slot.inbound_tx.try_send(Accepted { conn, ctrl }) {
        let accepted = match e {
            mpsc::error::TrySendError::Full(a) | mpsc::error::TrySendError::Closed(a) => a,
        };
        accepted.conn.close(
            CloseCode::Replaced.varint(),
            b"too many pending connections",
        );
    }
}

// ---------------------------------------------------------------------------
// Per-peer driver

enum SessionEnd {
    Shutdown,
    Replaced(Accepted),
    Lost(String),
}

async fn run_peer(
    shared: Arc<Shared>,
    slot: Arc<PeerSlot>,
    queues: PeerQueues,
    mut shutdown: watch::Receiver<bool>,
) {
    let PeerQueues {
        mut frames_q,
        mut bulk_q,
        mut inbound_rx,
    } = queues;
    let slot = &*slot;
    let peer = slot.id;
    let dialer = shared.id < peer;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ shared.id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ peer.0;
    let mut backoff = Backoff::new(
        shared.cfg.backoff_initial_ms,
        shared.cfg.backoff_max_ms,
        seed,
    );
    let mut pending: Option<Accepted> = None;
    let mut established_before = false;
    'outer: loop {
        if *shutdown.borrow() {
            break;
        }
        let session = if dialer {
            let attempt = tokio::select! {
                _ = shutdown.changed() => break 'outer,
                r = dial(&shared, slot) => r,
            };
            match attempt {
                Ok(s) => s,
                Err(reason) => {
                    let delay = backoff.next_delay();
                    debug!(node = %shared.id, %peer, %reason, ?delay, "dial failed; backing off");
                    tokio::select! {
                        _ = shutdown.changed() => break 'outer,
                        _ = sleep(delay) => continue 'outer,
                    }
                }
            }
        } else {
            let accepted = match pending.take() {
                Some(a) => a,
                None => tokio::select! {
                    _ = shutdown.changed() => break 'outer,
                    a = inbound_rx.recv() => match a {
                        Some(a) => a,
                        None => break 'outer,
                    },
                },
            };
            match open_control(&shared, &accepted.conn).await {
                Ok(send) => Session {
                    conn: accepted.conn,
                    send,
                    recv: accepted.ctrl,
                },
                Err(reason) => {
                    debug!(node = %shared.id, %peer, %reason, "accepted connection died before it was used");
                    accepted
                        .conn
                        .close(CloseCode::Protocol.varint(), b"control stream failed");
                    continue 'outer;
                }
            }
        };
        backoff.reset();
        add(&slot.counters.connects, 1);
        if established_before {
            add(&slot.counters.reconnects, 1);
            info!(node = %shared.id, %peer, dialled = dialer, "reconnected");
        } else {
            info!(node = %shared.id, %peer, dialled = dialer, "connected");
        }
        established_before = true;
        slot.counters.connected.store(true, Ordering::Relaxed);
        *slot.current.lock() = Some(session.conn.clone());
        let end = run_session(
            &shared,
            slot,
            session,
            &mut frames_q,
            &mut bulk_q,
            &mut inbound_rx,
            &shutdown,
        )
        .await;
        slot.counters.connected.store(false, Ordering::Relaxed);
        *slot.current.lock() = None;
        add(&slot.counters.disconnects, 1);
        match end {
            SessionEnd::Shutdown => break 'outer,
            SessionEnd::Replaced(a) => {
                info!(node = %shared.id, %peer, "disconnected: replaced by a newer connection from the peer");
                pending = Some(a);
            }
            SessionEnd::Lost(reason) => {
                info!(node = %shared.id, %peer, %reason, "disconnected");
                if dialer {
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = shutdown.changed() => break 'outer,
                        _ = sleep(delay) => {}
                    }
                }
            }
        }
    }
    // Whatever is still queued can no longer be sent.
    let mut left = 0u64;
    frames_q.close();
    bulk_q.close();
    while let Ok(f) = frames_q.try_recv() {
        slot.counters
            .queued_bytes
            .fetch_sub(f.len() as u64, Ordering::AcqRel);
        left += 1;
    }
    while let Ok(p) = bulk_q.try_recv() {
        slot.counters
            .queued_bulk_bytes
            .fetch_sub(p.len() as u64, Ordering::AcqRel);
        left += 1;
    }
    if left > 0 {
        add(&slot.counters.lost_in_flight, left);
        warn!(node = %shared.id, %peer, frames = left, "shutdown: frames for an unconnected peer dropped");
    }
}

async fn open_control(shared: &Shared, conn: &Connection) -> Result<SendStream, String> {
    let mut send = conn.open_uni().await.map_err(|e| e.to_string())?;
    send.set_priority(CONTROL_PRIORITY)
        .map_err(|e| e.to_string())?;
    let header = StreamHeader {
        kind: StreamKind::Control,
        sender: shared.id.0,
    };
    send.write_all(&header.encode())
        .await
        .map_err(|e| e.to_string())?;
    Ok(send)
}

async fn dial(shared: &Shared, slot: &PeerSlot) -> Result<Session, String> {
    let peer = slot.id;
    let addr = *slot.addr.lock();
    let connecting = shared
        .endpoint
        .connect(addr, &peer.dns_name())
        .map_err(|e| e.to_string())?;
    let conn = timeout(
        Duration::from_millis(shared.cfg.connect_timeout_ms),
        connecting,
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    // rustls checked the server certificate against `node-<peer>`; make sure
    // it names no other member too.
    if tls::connection_peer(&conn, &shared.members.get()) != Some(peer) {
        add(&shared.counters.refused_peer, 1);
        warn!(node = %shared.id, %peer, "refused peer: its certificate names another member too");
        conn.close(
            CloseCode::NotMember.varint(),
            b"certificate names several members",
        );
        return Err("ambiguous server certificate".into());
    }
    let send = open_control(shared, &conn).await?;
    let hello = timeout(Duration::from_millis(shared.cfg.hello_timeout_ms), async {
        let mut recv = conn.accept_uni().await.map_err(|e| e.to_string())?;
        let mut raw = [0u8; HEADER_BYTES];
        recv.read_exact(&mut raw).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((recv, raw))
    })
    .await;
    let (recv, raw) = match hello {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            conn.close(CloseCode::Protocol.varint(), b"no hello");
            return Err(format!("no hello: {e}"));
        }
        Err(_) => {
            conn.close(CloseCode::HelloTimeout.varint(), b"no hello in time");
            return Err("no hello in time".into());
        }
    };
    match StreamHeader::decode(&raw) {
        Ok(StreamHeader {
            kind: StreamKind::Control,
            sender,
        }) if sender == peer.0 => Ok(Session { conn, send, recv }),
        other => {
            add(&shared.counters.refused_peer, 1);
            warn!(node = %shared.id, %peer, hello = ?other, "refused peer: bad hello from dialled peer");
            conn.close(CloseCode::IdMismatch.varint(), b"bad hello");
            Err(format!("bad hello {other:?}"))
        }
    }
}

enum WriterEnd {
    Flushed,
    Failed(String),
}

async fn run_session(
    shared: &Arc<Shared>,
    slot: &PeerSlot,
    session: Session,
    frames_q: &mut mpsc::Receiver<Bytes>,
    bulk_q: &mut mpsc::Receiver<Bytes>,
    inbound_rx: &mut mpsc::Receiver<Accepted>,
    shutdown: &watch::Receiver<bool>,
) -> SessionEnd {
    let Session {
        conn,
        mut send,
        recv,
    } = session;
    let writer = control_writer(shared, slot, &mut send, frames_q, shutdown.clone());
    let bulk_writer = bulk_writer(shared, slot, &conn, bulk_q, shutdown.clone());
    let reader = control_reader(shared, slot, &conn, recv);
    let bulk_reader = bulk_acceptor(shared, slot, &conn);
    tokio::pin!(writer, bulk_writer, reader, bulk_reader);
    let (mut writer_done, mut bulk_done, mut reader_done) = (false, false, false);
    let lost = loop {
        tokio::select! {
            end = &mut writer, if !writer_done => match end {
                WriterEnd::Flushed => writer_done = true,
                WriterEnd::Failed(e) => break format!("control stream: {e}"),
            },
            end = &mut bulk_writer, if !bulk_done => match end {
                WriterEnd::Flushed => bulk_done = true,
                WriterEnd::Failed(e) => break format!("bulk stream: {e}"),
            },
            end = &mut reader, if !reader_done => match end {
                Ok(()) => {
                    debug!(node = %shared.id, peer = %slot.id, "peer finished its control stream");
                    reader_done = true;
                }
                Err(e) => {
                    reader_done = true;
                    break e;
                }
            },
            e = &mut bulk_reader => break e,
            reason = conn.closed() => break reason.to_string(),
            accepted = inbound_rx.recv() => if let Some(a) = accepted {
                conn.close(CloseCode::Replaced.varint(), b"replaced by a newer connection");
                return SessionEnd::Replaced(a);
            },
        }
        if writer_done && bulk_done {
            conn.close(CloseCode::Shutdown.varint(), b"shutdown");
            return SessionEnd::Shutdown;
        }
    };
    // The connection is gone, but quinn still hands out control data that
    // arrived before the close (a peer that shut down right after its last
    // frames were acknowledged): deliver it before giving up the session.
    if !reader_done {
        let drain = Duration::from_millis(shared.cfg.shutdown_flush_ms);
        let _ = timeout(drain, &mut reader).await;
    }
    // No-op if the connection is already closed; otherwise the session ended
    // on a local stream failure and the peer should redial or be redialled.
    conn.close(CloseCode::Protocol.varint(), lost.as_bytes());
    SessionEnd::Lost(lost)
}

/// Writes queued control frames in batches until shutdown, then drains the
/// queue, finishes the stream and waits for the peer to have read it.
/// Never cancelled mid-write on shutdown (a cut frame would corrupt the stream).
async fn control_writer(
    shared: &Shared,
    slot: &PeerSlot,
    send: &mut SendStream,
    queue: &mut mpsc::Receiver<Bytes>,
    mut shutdown: watch::Receiver<bool>,
) -> WriterEnd {
    let max_batch = shared.cfg.write_batch_bytes;
    let mut coalesce = BytesMut::with_capacity(max_batch + 4 * BATCH_MAX_FRAMES);
    let mut chunks: Vec<Bytes> = Vec::with_capacity(16);
    loop {
        let first = if *shutdown.borrow() {
            None
        } else {
            tokio::select! {
                biased;
                f = queue.recv() => f,
                _ = shutdown.changed() => None,
            }
        };
        let draining = first.is_none();
        let (mut frames, mut bytes) = (0u64, 0u64);
        let mut next = first.or_else(|| queue.try_recv().ok());
        while let Some(f) = next {
            frames += 1;
            bytes += f.len() as u64;
            slot.counters
                .queued_bytes
                .fetch_sub(f.len() as u64, Ordering::AcqRel);
            // Checked by Transport::send against max_frame_bytes (a u32).
            coalesce.put_u32(f.len() as u32);
            if f.len() <= COALESCE_MAX_FRAME_BYTES {
                coalesce.extend_from_slice(&f);
            } else {
                chunks.push(coalesce.split().freeze());
                chunks.push(f);
            }
            if frames as usize >= BATCH_MAX_FRAMES || bytes as usize >= max_batch {
                break;
            }
            next = queue.try_recv().ok();
        }
        if frames > 0 {
            if !coalesce.is_empty() {
                chunks.push(coalesce.split().freeze());
            }
            let res = send.write_all_chunks(&mut chunks).await;
            chunks.clear();
            if let Err(e) = res {
                add(&slot.counters.lost_in_flight, frames);
                return WriterEnd::Failed(e.to_string());
            }
            add(&slot.counters.frames_sent, frames);
            add(&slot.counters.bytes_sent, bytes);
        } else if draining {
            // Queue empty and shutting down: finish and wait for the peer to
            // have read everything (bounded).
            let _ = send.finish();
            let flush = Duration::from_millis(shared.cfg.shutdown_flush_ms);
            match timeout(flush, send.stopped()).await {
                Ok(Ok(_)) => debug!(node = %shared.id, peer = %slot.id, "control stream flushed"),
                Ok(Err(e)) => {
                    debug!(node = %shared.id, peer = %slot.id, error = %e, "control stream flush unconfirmed")
                }
                Err(_) => {
                    warn!(node = %shared.id, peer = %slot.id, "control stream flush timed out")
                }
            }
            return WriterEnd::Flushed;
        }
    }
}

/// Sends each queued bulk payload on its own low-priority stream.
async fn bulk_writer(
    shared: &Shared,
    slot: &PeerSlot,
    conn: &Connection,
    queue: &mut mpsc::Receiver<Bytes>,
    mut shutdown: watch::Receiver<bool>,
) -> WriterEnd {
    loop {
        let draining = *shutdown.borrow();
        let payload = if draining {
            match queue.try_recv() {
                Ok(p) => p,
                Err(_) => return WriterEnd::Flushed,
            }
        } else {
            tokio::select! {
                biased;
                p = queue.recv() => match p {
                    Some(p) => p,
                    None => return WriterEnd::Flushed,
                },
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        // The transport is gone (dropped): nothing to flush for.
                        return WriterEnd::Flushed;
                    }
                    continue;
                }
            }
        };
        let len = payload.len() as u64;
        slot.counters
            .queued_bulk_bytes
            .fetch_sub(len, Ordering::AcqRel);
        match send_bulk_stream(shared, conn, payload, draining).await {
            Ok(()) => {
                add(&slot.counters.bulk_sent, 1);
                add(&slot.counters.bulk_bytes_sent, len);
            }
            Err(e) => {
                add(&slot.counters.lost_in_flight, 1);
                return WriterEnd::Failed(e);
            }
        }
    }
}

async fn send_bulk_stream(
    shared: &Shared,
    conn: &Connection,
    payload: Bytes,
    wait_read: bool,
) -> Result<(), String> {
    let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
    stream
        .set_priority(BULK_PRIORITY)
        .map_err(|e| e.to_string())?;
    let mut head = BytesMut::with_capacity(HEADER_BYTES + BULK_PREFIX_BYTES);
    head.extend_from_slice(
        &StreamHeader {
            kind: StreamKind::Bulk,
            sender: shared.id.0,
        }
        .encode(),
    );
    head.put_u64(payload.len() as u64);
    stream
        .write_all_chunks(&mut [head.freeze(), payload])
        .await
        .map_err(|e| e.to_string())?;
    stream.finish().map_err(|e| e.to_string())?;
    if wait_read {
        let flush = Duration::from_millis(shared.cfg.shutdown_flush_ms);
        let _ = timeout(flush, stream.stopped()).await;
    }
    Ok(())
}

/// Reads the peer's control stream and delivers its frames. `Ok` when the
/// peer finished the stream cleanly (it is shutting down).
async fn control_reader(
    shared: &Shared,
    slot: &PeerSlot,
    conn: &Connection,
    mut recv: RecvStream,
) -> Result<(), String> {
    let mut decoder = FrameDecoder::new(shared.cfg.max_frame_bytes);
    loop {
        let chunk = match recv.read_chunk(READ_CHUNK_BYTES, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => {
                return match decoder.finish() {
                    Ok(()) => Ok(()),
                    Err(e) => Err(protocol_error(
                        shared,
                        slot,
                        conn,
                        CloseCode::Protocol,
                        e.to_string(),
                    )),
                };
            }
            Err(e) => return Err(format!("control stream read: {e}")),
        };
        decoder.push(chunk);
        let (mut frames, mut bytes) = (0u64, 0u64);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    frames += 1;
                    bytes += frame.len() as u64;
                    // A dropped inbox means the application stopped listening:
                    // keep draining the stream so the peer is not stalled.
                    let _ = shared.frames_in.send((slot.id, frame)).await;
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = recv.stop(CloseCode::FrameTooLarge.varint());
                    return Err(protocol_error(
                        shared,
                        slot,
                        conn,
                        CloseCode::FrameTooLarge,
                        e.to_string(),
                    ));
                }
            }
        }
        add(&slot.counters.frames_received, frames);
        add(&slot.counters.bytes_received, bytes);
    }
}

/// Counts and logs malformed input from an authenticated peer and closes its
/// connection (it will reconnect); returns the reason.
fn protocol_error(
    shared: &Shared,
    slot: &PeerSlot,
    conn: &Connection,
    code: CloseCode,
    reason: String,
) -> String {
    add(&slot.counters.protocol_errors, 1);
    warn!(node = %shared.id, peer = %slot.id, ?code, %reason, "malformed input from peer; closing connection");
    conn.close(code.varint(), reason.as_bytes());
    reason
}

/// Accepts the peer's bulk streams and reads each payload; returns when the
/// connection fails or a stream breaks the protocol.
async fn bulk_acceptor(shared: &Arc<Shared>, slot: &PeerSlot, conn: &Connection) -> String {
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            stream = conn.accept_uni() => match stream {
                Ok(recv) => {
                    readers.spawn(read_bulk(shared.clone(), slot.id, recv));
                }
                Err(e) => return e.to_string(),
            },
            Some(done) = readers.join_next() => match done {
                Ok(Ok(())) => {}
                Ok(Err((code, reason))) => return protocol_error(shared, slot, conn, code, reason),
                Err(join) => {
                    debug_assert!(join.is_cancelled(), "invariant: bulk readers do not panic: {join}");
                }
            },
        }
    }
}

async fn read_bulk(
    shared: Arc<Shared>,
    peer: PeerId,
    mut recv: RecvStream,
) -> Result<(), (CloseCode, String)> {
    let mut head = [0u8; HEADER_BYTES + BULK_PREFIX_BYTES];
    if let Err(e) = recv.read_exact(&mut head).await {
        return match e {
            quinn::ReadExactError::FinishedEarly(_) => Err((
                CloseCode::Protocol,
                "bulk stream ended inside its header".into(),
            )),
            quinn::ReadExactError::ReadError(e) => {
                debug!(node = %shared.id, %peer, error = %e, "bulk stream aborted");
                Ok(())
            }
        };
    }
    let mut raw = [0u8; HEADER_BYTES];
    raw.copy_from_slice(&head[..HEADER_BYTES]);
    match StreamHeader::decode(&raw) {
        Ok(StreamHeader {
            kind: StreamKind::Bulk,
            sender,
        }) if sender == peer.0 => {}
        other => {
            let _ = recv.stop(CloseCode::Protocol.varint());
            return Err((
                CloseCode::Protocol,
                format!("bad bulk stream header {other:?}"),
            ));
        }
    }
    let mut len_raw = [0u8; BULK_PREFIX_BYTES];
    len_raw.copy_from_slice(&head[HEADER_BYTES..]);
    let len = u64::from_be_bytes(len_raw);
    if len > shared.cfg.max_bulk_bytes {
        let _ = recv.stop(CloseCode::BulkTooLarge.varint());
        return Err((
            CloseCode::BulkTooLarge,
            format!(
                "bulk payload of {len} bytes exceeds max_bulk_bytes {}",
                shared.cfg.max_bulk_bytes
            ),
        ));
    }
    // Keep the chunks quinn hands out (no copy, and memory grows only with
    // bytes actually received), then join them once at the end.
    let mut parts: Vec<Bytes> = Vec::new();
    let mut received = 0u64;
    while received < len {
        let want = (len - received).min(BULK_READ_CHUNK_BYTES) as usize;
        match recv.read_chunk(want, true).await {
            Ok(Some(chunk)) => {
                received += chunk.bytes.len() as u64;
                parts.push(chunk.bytes);
            }
            Ok(None) => {
                return Err((
                    CloseCode::Protocol,
                    format!("bulk stream ended after {received} of {len} bytes"),
                ))
            }
            Err(e) => {
                debug!(node = %shared.id, %peer, error = %e, "bulk stream aborted");
                return Ok(());
            }
        }
    }
    let body = if parts.len() == 1 {
        parts.pop().unwrap_or_default()
    } else {
        let mut joined = BytesMut::with_capacity(len as usize);
        for p in &parts {
            joined.extend_from_slice(p);
        }
        drop(parts);
        joined.freeze()
    };
    match recv.read_chunk(1, true).await {
        Ok(None) => {}
        Ok(Some(_)) => {
            let _ = recv.stop(CloseCode::Protocol.varint());
            return Err((CloseCode::Protocol, "bytes after the bulk payload".into()));
        }
        Err(e) => {
            debug!(node = %shared.id, %peer, error = %e, "bulk stream aborted after its payload");
            return Ok(());
        }
    }
    if let Some(slot) = shared.peers.read().get(&peer) {
        add(&slot.counters.bulk_received, 1);
        add(&slot.counters.bulk_bytes_received, len);
    }
    let _ = shared.bulk_in.send((peer, body)).await;
    Ok(())
}
