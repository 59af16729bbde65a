//! Errors of this crate.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::certs::CertError;
use crate::PeerId;

/// Errors setting up or running a [`Transport`](crate::Transport).
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is inconsistent.
    #[error("invalid transport configuration: {problem}")]
    Config {
        /// What is wrong.
        problem: String,
    },
    /// A certificate problem (loading, or our own certificate not naming us).
    #[error(transparent)]
    Cert(#[from] CertError),
    /// rustls refused a configuration step.
    #[error("TLS configuration ({context}): {source}")]
    Tls {
        /// Which step.
        context: &'static str,
        /// The rustls error.
        source: rustls::Error,
    },
    /// Binding the UDP socket failed.
    #[error("binding UDP socket {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why [`Transport::send`](crate::Transport::send) or
/// [`Transport::send_bulk`](crate::Transport::send_bulk) did not queue a payload.
/// Every variant hands the payload back.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The peer's bounded queue is full (the peer is slow or unreachable).
    /// Policy: drop-and-report. The caller's state machine decides (consensus
    /// protocols resend or resync); counted in [`PeerMetrics::dropped_full`](crate::PeerMetrics).
    #[error("send queue to {peer} is full ({capacity} entries)")]
    QueueFull {
        /// The peer.
        peer: PeerId,
        /// The queue capacity.
        capacity: usize,
        /// The payload that was not queued.
        payload: Bytes,
    },
    /// The queue to the peer holds its bound in bytes
    /// ([`NetConfig::send_queue_bytes`](crate::NetConfig::send_queue_bytes)
    /// or `bulk_queue_bytes`): the payload was not queued. Counted in
    /// [`PeerMetrics::dropped_full`](crate::PeerMetrics) like a full queue.
    #[error("send queue to {peer} holds {queued_bytes} bytes; {len_bytes} more would pass its bound of {max_bytes}")]
    QueueBytesFull {
        /// The peer.
        peer: PeerId,
        /// Bytes queued when the payload was refused.
        queued_bytes: u64,
        /// Bytes of the refused payload.
        len_bytes: u64,
        /// The queue's bound in bytes.
        max_bytes: u64,
        /// The payload that was not queued.
        payload: Bytes,
    },
    /// The payload is longer than the configured maximum.
    #[error("payload of {len_bytes} bytes to {peer} exceeds the maximum of {max_bytes} bytes")]
    TooLarge {
        /// The peer.
        peer: PeerId,
        /// The payload length.
        len_bytes: u64,
        /// The configured maximum.
        max_bytes: u64,
        /// The payload that was not queued.
        payload: Bytes,
    },
    /// The id is not a cluster member (or is ourselves).
    #[error("{peer} is not a peer of this node")]
    UnknownPeer {
        /// The id.
        peer: PeerId,
        /// The payload that was not queued.
        payload: Bytes,
    },
    /// The transport is shutting down.
    #[error("transport is shut down")]
    Closed {
        /// The payload that was not queued.
        payload: Bytes,
    },
}

impl SendError {
    /// Takes the payload back.
    pub fn into_payload(self) -> Bytes {
        match self {
            SendError::QueueFull { payload, .. }
            | SendError::QueueBytesFull { payload, .. }
            | SendError::TooLarge { payload, .. }
            | SendError::UnknownPeer { payload, .. }
            | SendError::Closed { payload } => payload,
        }
    }
}

/// Application close codes this crate puts on QUIC connections and streams;
/// a peer (or a test) reads them from the close frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Graceful shutdown.
    Shutdown = 0,
    /// A newer connection from the same peer replaced this one.
    Replaced = 1,
    /// The peer dialled though the rule says the lower id dials (tie-break).
    WrongDirection = 2,
    /// The id the peer claimed differs from the one in its certificate.
    IdMismatch = 3,
    /// Malformed stream header or stream usage (garbage).
    Protocol = 4,
    /// A control frame announced a length over `max_frame_bytes`.
    FrameTooLarge = 5,
    /// A bulk payload announced a length over `max_bulk_bytes`.
    BulkTooLarge = 6,
    /// The certificate names no single cluster member.
    NotMember = 7,
    /// The peer did not open its control stream in time.
    HelloTimeout = 8,
}

impl CloseCode {
    /// The QUIC varint of this code.
    pub fn varint(self) -> quinn::VarInt {
        quinn::VarInt::from_u32(self as u32)
    }

    /// The code for a received varint, if it is one of ours.
    pub fn from_varint(code: quinn::VarInt) -> Option<CloseCode> {
        Some(match code.into_inner() {
            0 => CloseCode::Shutdown,
            1 => CloseCode::Replaced,
            2 => CloseCode::WrongDirection,
            3 => CloseCode::IdMismatch,
            4 => CloseCode::Protocol,
            5 => CloseCode::FrameTooLarge,
            6 => CloseCode::BulkTooLarge,
            7 => CloseCode::NotMember,
            8 => CloseCode::HelloTimeout,
            _ => return None,
        })
    }
}
