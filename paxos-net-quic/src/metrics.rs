//! Per-peer and per-transport counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::PeerId;

/// Live counters of one peer (atomics, updated by the transport's tasks).
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub(crate) frames_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) frames_received: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) bulk_sent: AtomicU64,
    pub(crate) bulk_bytes_sent: AtomicU64,
    pub(crate) bulk_received: AtomicU64,
    pub(crate) bulk_bytes_received: AtomicU64,
    pub(crate) dropped_full: AtomicU64,
    pub(crate) lost_in_flight: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) connected: AtomicBool,
    /// Bytes of the frames in the send queue now.
    pub(crate) queued_bytes: AtomicU64,
    /// Bytes of the payloads in the bulk queue now.
    pub(crate) queued_bulk_bytes: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// A snapshot of one peer's counters (see [`Transport::peer_metrics`](crate::Transport::peer_metrics)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMetrics {
    /// The peer.
    pub peer: PeerId,
    /// Control frames written to the peer's stream.
    pub frames_sent: u64,
    /// Payload bytes of those frames.
    pub bytes_sent: u64,
    /// Control frames received from the peer.
    pub frames_received: u64,
    /// Payload bytes of those frames.
    pub bytes_received: u64,
    /// Bulk payloads fully written.
    pub bulk_sent: u64,
    /// Bytes of those payloads.
    pub bulk_bytes_sent: u64,
    /// Bulk payloads received whole.
    pub bulk_received: u64,
    /// Bytes of those payloads.
    pub bulk_bytes_received: u64,
    /// Frames and bulk payloads refused because the queue was full (in
    /// frames or in bytes).
    pub dropped_full: u64,
    /// Frames and bulk payloads taken from the queue but lost because the
    /// connection died (or shutdown timed out) before they were written.
    pub lost_in_flight: u64,
    /// Connections established (dialled or accepted).
    pub connects: u64,
    /// Connections established after the first one.
    pub reconnects: u64,
    /// Connections lost or closed.
    pub disconnects: u64,
    /// Malformed input from this (authenticated) peer.
    pub protocol_errors: u64,
    /// Frames waiting in the send queue now.
    pub queue_depth: u64,
    /// Bulk payloads waiting in the bulk queue now.
    pub bulk_queue_depth: u64,
    /// Bytes of the frames waiting in the send queue now (bounded by
    /// `NetConfig::send_queue_bytes`).
    pub queue_bytes: u64,
    /// Bytes of the payloads waiting in the bulk queue now (bounded by
    /// `NetConfig::bulk_queue_bytes`).
    pub bulk_queue_bytes: u64,
    /// Whether a connection is up now.
    pub connected: bool,
    /// Live path figures of the current connection (`None` when disconnected).
    pub path: Option<PathMetrics>,
}

/// Figures of the current QUIC path to a peer (from quinn's statistics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathMetrics {
    /// Smoothed round-trip time, microseconds.
    pub rtt_us: u64,
    /// Current path MTU (largest UDP payload in use), bytes.
    pub mtu_bytes: u16,
    /// Congestion window, bytes.
    pub congestion_window_bytes: u64,
    /// Packets declared lost on this connection.
    pub lost_packets: u64,
    /// UDP datagrams sent on this connection.
    pub sent_datagrams: u64,
}

impl PathMetrics {
    pub(crate) fn of(conn: &quinn::Connection) -> PathMetrics {
        let stats = conn.stats();
        PathMetrics {
            rtt_us: stats.path.rtt.as_micros() as u64,
            mtu_bytes: stats.path.current_mtu,
            congestion_window_bytes: stats.path.cwnd,
            lost_packets: stats.path.lost_packets,
            sent_datagrams: stats.udp_tx.datagrams,
        }
    }
}

impl PeerCounters {
    pub(crate) fn snapshot(
        &self,
        peer: PeerId,
        queue_depth: u64,
        bulk_queue_depth: u64,
        path: Option<PathMetrics>,
    ) -> PeerMetrics {
        PeerMetrics {
            peer,
            frames_sent: self.frames_sent.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            frames_received: self.frames_received.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            bulk_sent: self.bulk_sent.load(Relaxed),
            bulk_bytes_sent: self.bulk_bytes_sent.load(Relaxed),
            bulk_received: self.bulk_received.load(Relaxed),
            bulk_bytes_received: self.bulk_bytes_received.load(Relaxed),
            dropped_full: self.dropped_full.load(Relaxed),
            lost_in_flight: self.lost_in_flight.load(Relaxed),
            connects: self.connects.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            queue_depth,
            bulk_queue_depth,
            queue_bytes: self.queued_bytes.load(Relaxed),
            bulk_queue_bytes: self.queued_bulk_bytes.load(Relaxed),
            connected: self.connected.load(Relaxed),
            path,
        }
    }
}

/// Transport-wide counters of connection attempts that never became a peer.
#[derive(Debug, Default)]
pub(crate) struct EndpointCounters {
    pub(crate) refused_flood: AtomicU64,
    pub(crate) refused_handshake: AtomicU64,
    pub(crate) refused_peer: AtomicU64,
}

/// A snapshot of the transport-wide counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointMetrics {
    /// Incoming attempts refused because too many handshakes were in flight
    /// (in total or from one IP address).
    pub refused_flood: u64,
    /// Incoming handshakes that failed (bad or foreign certificate, expired,
    /// not a member, timeout).
    pub refused_handshake: u64,
    /// Authenticated connections refused after the handshake (claimed id
    /// differs from the certificate, wrong dial direction, bad hello).
    pub refused_peer: u64,
}

impl EndpointCounters {
    pub(crate) fn snapshot(&self) -> EndpointMetrics {
        EndpointMetrics {
            refused_flood: self.refused_flood.load(Relaxed),
            refused_handshake: self.refused_handshake.load(Relaxed),
            refused_peer: self.refused_peer.load(Relaxed),
        }
    }
}
