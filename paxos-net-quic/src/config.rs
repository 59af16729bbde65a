//! Transport configuration and the QUIC settings derived from it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::certs::{ClusterTrust, NodeIdentity};
use crate::error::NetError;
use crate::PeerId;

/// UDP payload size used by [`NetConfig::loopback`]. quinn hands the kernel
/// up to 10 datagrams per segmentation-offload (GSO) send and Linux refuses a
/// GSO send over 64 KiB, so 10 × 6000 bytes is about the largest packet that
/// keeps batching working; bigger packets are silently lost.
pub const LOOPBACK_MTU_BYTES: u16 = 6000;

/// Configuration of one node's [`Transport`](crate::Transport).
///
/// Every field is public; start from [`NetConfig::new`] (production
/// defaults) or [`NetConfig::loopback`] (tests and benchmarks on one machine)
/// and adjust.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// This node's TLS identity; its certificate must name this node.
    pub identity: NodeIdentity,
    /// The cluster CA certificates.
    pub trust: ClusterTrust,
    /// UDP address to bind (both for dialling and accepting).
    pub listen_addr: SocketAddr,
    /// The other members of the cluster and where to reach them. Membership is
    /// fixed for the transport's lifetime; only these ids may connect.
    pub peers: BTreeMap<PeerId, SocketAddr>,
    /// Largest control frame accepted or sent. Checked on the length prefix
    /// before any buffer is reserved.
    pub max_frame_bytes: u32,
    /// Largest bulk payload accepted or sent.
    pub max_bulk_bytes: u64,
    /// Per-peer bound of the control frame queue (frames). When full,
    /// [`Transport::send`](crate::Transport::send) returns the frame in an error.
    pub send_queue_frames: usize,
    /// Per-peer bound of the control frame queue in bytes (at least
    /// `max_frame_bytes`). A peer that is down holds at most this much of
    /// the sender's memory, whatever the frames' sizes.
    pub send_queue_bytes: u64,
    /// Per-peer bound of the bulk queue (payloads).
    pub bulk_queue_payloads: usize,
    /// Per-peer bound of the bulk queue in bytes (at least `max_bulk_bytes`).
    pub bulk_queue_bytes: u64,
    /// Bound of the shared incoming frame channel. When the application does
    /// not drain it, readers stop reading and QUIC flow control pushes back on
    /// the senders: memory stays bounded, nothing is dropped.
    pub incoming_queue_frames: usize,
    /// Bound of the incoming bulk channel (payloads).
    pub incoming_bulk_payloads: usize,
    /// First reconnect delay; doubles per failed attempt, with jitter.
    pub backoff_initial_ms: u64,
    /// Cap of the reconnect delay.
    pub backoff_max_ms: u64,
    /// Time allowed for a dial (QUIC + TLS handshake) to complete.
    pub connect_timeout_ms: u64,
    /// Time allowed, after the TLS handshake, for the peer to open its control
    /// stream with its hello header.
    pub hello_timeout_ms: u64,
    /// Keep-alive PING interval; keeps idle connections (and NAT bindings) up
    /// and detects dead peers together with `idle_timeout_ms`.
    pub keep_alive_ms: u64,
    /// A connection with no packets from the peer for this long is dead.
    /// Must exceed `keep_alive_ms` (several keep-alives are lost before death).
    pub idle_timeout_ms: u64,
    /// Bound on incoming connections between the first packet and the hello
    /// (TLS handshakes in flight). Over it, new attempts are refused at once.
    pub max_incoming_handshakes: usize,
    /// Bound on handshakes in flight from one IP address.
    pub max_handshakes_per_ip: usize,
    /// Concurrent bulk streams a peer may open towards us.
    pub max_bulk_streams: u32,
    /// Per-stream receive window (bytes of flow-control credit per stream).
    pub stream_window_bytes: u64,
    /// UDP payload size the network is known to carry (quinn's `min_mtu`):
    /// path MTU never drops below it, even when losses look like a black hole.
    /// 1200 (QUIC's minimum) is safe everywhere; raise it only when every path
    /// is known to carry more (loopback, jumbo frames).
    pub min_mtu_bytes: u16,
    /// Initial UDP payload size. 1200 is safe on every path; on loopback or
    /// jumbo-frame networks a larger value cuts per-packet costs.
    pub initial_mtu_bytes: u16,
    /// Upper bound for path MTU discovery.
    pub max_mtu_bytes: u16,
    /// Requested UDP socket send and receive buffer size (the kernel caps it
    /// at `net.core.rmem_max` / `wmem_max`). Bigger buffers avoid drops when
    /// a window of bulk data arrives in one burst.
    pub socket_buffer_bytes: usize,
    /// Control frames are coalesced into writes of up to this many bytes.
    pub write_batch_bytes: usize,
    /// Time graceful shutdown waits for queued frames to be delivered.
    pub shutdown_flush_ms: u64,
}

impl NetConfig {
    /// Production defaults for a node with `identity`, listening on `listen_addr`.
    pub fn new(
        identity: NodeIdentity,
        trust: ClusterTrust,
        listen_addr: SocketAddr,
        peers: BTreeMap<PeerId, SocketAddr>,
    ) -> NetConfig {
        NetConfig {
            identity,
            trust,
            listen_addr,
            peers,
            max_frame_bytes: 16 * 1024 * 1024,
            max_bulk_bytes: 256 * 1024 * 1024,
            send_queue_frames: 8192,
            send_queue_bytes: 128 * 1024 * 1024,
            bulk_queue_payloads: 16,
            bulk_queue_bytes: 512 * 1024 * 1024,
            incoming_queue_frames: 16384,
            incoming_bulk_payloads: 4,
            backoff_initial_ms: 50,
            backoff_max_ms: 5_000,
            connect_timeout_ms: 5_000,
            hello_timeout_ms: 5_000,
            keep_alive_ms: 1_000,
            idle_timeout_ms: 10_000,
            max_incoming_handshakes: 64,
            max_handshakes_per_ip: 8,
            max_bulk_streams: 4,
            stream_window_bytes: 8 * 1024 * 1024,
            min_mtu_bytes: 1200,
            initial_mtu_bytes: 1200,
            max_mtu_bytes: 1452,
            socket_buffer_bytes: 4 * 1024 * 1024,
            write_batch_bytes: 64 * 1024,
            shutdown_flush_ms: 3_000,
        }
    }

    /// Defaults for nodes on one machine (tests, benches): loopback's 64 KiB
    /// MTU lets QUIC use [`LOOPBACK_MTU_BYTES`] packets from the first one
    /// (and never fall back to 1200 when a loaded machine drops packets), and
    /// timers are short.
    pub fn loopback(
        identity: NodeIdentity,
        trust: ClusterTrust,
        listen_addr: SocketAddr,
        peers: BTreeMap<PeerId, SocketAddr>,
    ) -> NetConfig {
        NetConfig {
            min_mtu_bytes: LOOPBACK_MTU_BYTES,
            initial_mtu_bytes: LOOPBACK_MTU_BYTES,
            max_mtu_bytes: LOOPBACK_MTU_BYTES,
            // Sub-millisecond RTT: 2 MiB of credit per stream still allows
            // several GB/s, and keeps a burst well inside the UDP socket
            // buffer, so the receiver does not drop packets when it is
            // descheduled for a moment.
            stream_window_bytes: 2 * 1024 * 1024,
            backoff_initial_ms: 20,
            backoff_max_ms: 500,
            keep_alive_ms: 500,
            idle_timeout_ms: 5_000,
            ..NetConfig::new(identity, trust, listen_addr, peers)
        }
    }

    /// This node's id (from its identity).
    pub fn node_id(&self) -> PeerId {
        self.identity.id()
    }

    pub(crate) fn validate(&self) -> Result<(), NetError> {
        let bad = |problem: String| Err(NetError::Config { problem });
        if self.peers.contains_key(&self.node_id()) {
            return bad(format!(
                "peers must not contain this node ({})",
                self.node_id()
            ));
        }
        if self.max_frame_bytes == 0 || self.max_bulk_bytes == 0 {
            return bad("max_frame_bytes and max_bulk_bytes must be > 0".into());
        }
        if self.send_queue_bytes < u64::from(self.max_frame_bytes)
            || self.bulk_queue_bytes < self.max_bulk_bytes
        {
            return bad(format!(
                "send_queue_bytes ({}) must hold one max_frame_bytes ({}) frame and \
                 bulk_queue_bytes ({}) one max_bulk_bytes ({}) payload",
                self.send_queue_bytes,
                self.max_frame_bytes,
                self.bulk_queue_bytes,
                self.max_bulk_bytes
            ));
        }
        if self.send_queue_frames == 0
            || self.bulk_queue_payloads == 0
            || self.incoming_queue_frames == 0
            || self.incoming_bulk_payloads == 0
        {
            return bad("queue bounds must be > 0".into());
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return bad("need 0 < backoff_initial_ms <= backoff_max_ms".into());
        }
        if self.keep_alive_ms == 0 || self.idle_timeout_ms <= self.keep_alive_ms {
            return bad("need 0 < keep_alive_ms < idle_timeout_ms".into());
        }
        if self.connect_timeout_ms == 0 || self.hello_timeout_ms == 0 || self.shutdown_flush_ms == 0
        {
            return bad(
                "connect_timeout_ms, hello_timeout_ms and shutdown_flush_ms must be > 0".into(),
            );
        }
        if self.max_incoming_handshakes == 0 || self.max_handshakes_per_ip == 0 {
            return bad("handshake bounds must be > 0".into());
        }
        if self.max_bulk_streams == 0 {
            return bad("max_bulk_streams must be > 0".into());
        }
        if self.stream_window_bytes < 64 * 1024 {
            return bad("stream_window_bytes must be >= 64 KiB".into());
        }
        if self.min_mtu_bytes < 1200
            || self.initial_mtu_bytes < self.min_mtu_bytes
            || self.max_mtu_bytes < self.initial_mtu_bytes
            || self.max_mtu_bytes > 65_527
        {
            return bad(
                "need 1200 <= min_mtu_bytes <= initial_mtu_bytes <= max_mtu_bytes <= 65527".into(),
            );
        }
        if self.write_batch_bytes == 0 {
            return bad("write_batch_bytes must be > 0".into());
        }
        Ok(())
    }

    /// The QUIC transport settings; each is set deliberately:
    ///
    /// - **Streams**: no bidirectional streams (we never use them, so a peer
    ///   may not open any); unidirectional: 1 control + `max_bulk_streams`,
    ///   so a peer cannot make us hold more than that many stream buffers.
    /// - **Stream receive window** `stream_window_bytes` (8 MiB): enough credit
    ///   for one stream to fill a 10 Gbit/s path at ~6 ms RTT, and bounds what
    ///   one stream can buffer at the receiver.
    /// - **Connection receive window** = `stream_window_bytes × (max_bulk_streams + 2)`:
    ///   all bulk streams at full window still leave a full window for the
    ///   control stream, so bulk can never exhaust the connection-level credit
    ///   that consensus frames need.
    /// - **Send window** = the same: what we keep unacknowledged in flight per
    ///   connection; bounds memory per peer.
    /// - **Keep-alive / idle timeout**: see the config fields; the idle timeout
    ///   is what turns a dead peer into a reconnect.
    /// - **Initial RTT** 100 ms instead of 333 ms: cluster links are LAN/WAN,
    ///   not the open internet, so early loss recovery is quicker.
    /// - **MTU**: at least `min_mtu_bytes`, starting at `initial_mtu_bytes`, with path MTU discovery up to
    ///   `max_mtu_bytes`, which also bounds the UDP payload size the endpoint
    ///   accepts (on loopback large packets cut per-packet crypto and syscall
    ///   costs several fold).
    /// - **Congestion control**: Cubic (quinn's default, loss-based, fair with
    ///   TCP on shared links), initial window 10 packets of the initial MTU so
    ///   a large MTU also means a larger first flight.
    /// - **Loss detection tolerates reordering**: a packet counts as lost
    ///   once [`REORDER_PACKET_THRESHOLD`] later packets were acknowledged
    ///   (quinn's default: 3), or once [`REORDER_TIME_THRESHOLD`] round
    ///   trips passed after a later one was (default 9/8). On a link that
    ///   reorders (jitter), the defaults take reordered packets for lost
    ///   ones: spurious retransmissions, and each one shrinks the congestion
    ///   window.
    /// - **Datagrams**: disabled (unused), so no receive buffer is kept for them.
    pub fn quinn_transport(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        let window = self.stream_window_bytes;
        let conn_window = window.saturating_mul(u64::from(self.max_bulk_streams) + 2);
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(0))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(1 + self.max_bulk_streams))
            .stream_receive_window(varint(window))
            .receive_window(varint(conn_window))
            .send_window(conn_window)
            .keep_alive_interval(Some(Duration::from_millis(self.keep_alive_ms)))
            .max_idle_timeout(
                quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms)).ok(),
            )
            .initial_rtt(Duration::from_millis(100))
            .packet_threshold(REORDER_PACKET_THRESHOLD)
            .time_threshold(REORDER_TIME_THRESHOLD)
            .min_mtu(self.min_mtu_bytes)
            .initial_mtu(self.initial_mtu_bytes)
            .datagram_receive_buffer_size(None);
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.max_mtu_bytes);
        t.mtu_discovery_config(Some(mtu));
        let mut cubic = quinn::congestion::CubicConfig::default();
        cubic.initial_window(10 * u64::from(self.initial_mtu_bytes));
        t.congestion_controller_factory(Arc::new(cubic));
        t
    }
}

/// Later packets acknowledged before an unacknowledged one counts as lost
/// (see [`NetConfig::quinn_transport`]).
pub const REORDER_PACKET_THRESHOLD: u32 = 32;

/// Round trips after a later packet's acknowledgement before an
/// unacknowledged one counts as lost (see [`NetConfig::quinn_transport`]).
pub const REORDER_TIME_THRESHOLD: f32 = 1.5;

fn varint(v: u64) -> quinn::VarInt {
    quinn::VarInt::from_u64(v).unwrap_or(quinn::VarInt::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::generate_cluster_in_memory;

    fn base() -> NetConfig {
        let cluster = generate_cluster_in_memory(&[PeerId(1), PeerId(2)]).expect("certificates");
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
        NetConfig::new(
            cluster.nodes[0].clone(),
            cluster.trust(),
            addr,
            BTreeMap::from([(PeerId(2), addr)]),
        )
    }

    #[test]
    fn defaults_are_valid() {
        base().validate().expect("production defaults");
        let b = base();
        let lo = NetConfig::loopback(b.identity, b.trust, b.listen_addr, b.peers);
        lo.validate().expect("loopback defaults");
    }

    #[test]
    fn inconsistent_settings_are_refused() {
        type Tweak = Box<dyn Fn(&mut NetConfig)>;
        let cases: Vec<(&str, Tweak)> = vec![
            (
                "self in peers",
                Box::new(|c| {
                    c.peers.insert(PeerId(1), c.listen_addr);
                }),
            ),
            (
                "idle <= keep-alive",
                Box::new(|c| c.idle_timeout_ms = c.keep_alive_ms),
            ),
            ("zero queue", Box::new(|c| c.send_queue_frames = 0)),
            ("zero hello timeout", Box::new(|c| c.hello_timeout_ms = 0)),
            (
                "backoff max < initial",
                Box::new(|c| c.backoff_max_ms = c.backoff_initial_ms - 1),
            ),
            (
                "mtu order",
                Box::new(|c| c.max_mtu_bytes = c.initial_mtu_bytes - 1),
            ),
            ("tiny window", Box::new(|c| c.stream_window_bytes = 1024)),
        ];
        for (what, tweak) in cases {
            let mut c = base();
            tweak(&mut c);
            assert!(
                matches!(c.validate(), Err(NetError::Config { .. })),
                "{what} accepted"
            );
        }
    }
}
