//! # paxos-net-quic: a QUIC peer transport with mutual TLS
//!
//! Moves opaque frames ([`bytes::Bytes`]) between the nodes of a cluster,
//! named by [`PeerId`], over QUIC (quinn + rustls, ring crypto). It knows
//! nothing of Paxos: any replication stack (or anything else that needs
//! authenticated, ordered, per-peer message streams plus bulk transfers) can
//! use it alone.
//!
//! What it guarantees:
//!
//! - **One connection per pair of nodes**; the lower id dials, the higher id
//!   accepts (a connection dialled the other way is closed deterministically;
//!   see [`Transport`] and the `transport` module docs). Lost connections are
//!   redialled with exponential backoff and jitter; keep-alives and an idle
//!   timeout detect dead peers.
//! - **Mutual TLS**: every certificate chains to the cluster CA, carries both
//!   server and client usages and names its node (`node-<id>`). An accepted
//!   peer must name exactly one member in its certificate (checked inside the
//!   TLS handshake), and the id it claims in its hello must be that one; a
//!   dialled peer must be named `node-<dialled id>`. No plaintext mode.
//! - **Streams**: one long-lived ordered control stream per direction carries
//!   length-prefixed frames ([`frame`] module); every bulk payload
//!   ([`Transport::send_bulk`]) goes on its own lower-priority stream with
//!   its own flow-control window, so a snapshot never delays a heartbeat.
//! - **Bounded memory**: per-peer send queues are bounded in frames and in
//!   bytes, and refuse (and hand back) what does not fit
//!   ([`SendError::QueueFull`], [`SendError::QueueBytesFull`]), so a peer
//!   that is down holds at most `send_queue_bytes` of the sender's memory;
//!   the inbox is a bounded channel
//!   that pushes back on senders through QUIC flow control; frame lengths are
//!   checked before allocation; handshakes in flight are bounded in total and
//!   per IP address.
//! - **Bad input** from an authenticated peer is an error for that peer (its
//!   connection is closed with a [`CloseCode`], counted in
//!   [`PeerMetrics::protocol_errors`]), never a panic.
//! - **Observability**: [`Transport::peer_metrics`] and `tracing` events on
//!   connect, disconnect, reconnect and refused peers.
//!
//! Certificates: [`certs::generate_cluster`] writes a cluster CA and node
//! certificates as PEM files (in-memory: [`certs::generate_cluster_in_memory`]);
//! deployments load theirs with [`NodeIdentity::from_pem_files`] and
//! [`ClusterTrust::from_pem_file`].
//!
//! # Tuning and limits
//!
//! [`NetConfig::new`] holds production defaults (1200-byte initial packets
//! with path MTU discovery, 8 MiB stream windows, 1 s keep-alive, 10 s idle
//! timeout); [`NetConfig::loopback`] suits nodes on one machine (6000-byte
//! packets, 2 MiB windows, short timers). [`NetConfig::quinn_transport`]
//! documents every QUIC setting and why. Membership is fixed for a
//! transport's lifetime; frames already handed to a connection that dies are
//! lost (counted), as are frames sent to a node while it shuts down.
//! Small frames share the connection with bulk payloads: they are sent first
//! (stream priority) and have flow-control credit of their own, but on the
//! wire they can still queue behind bulk packets already in flight, so their
//! latency tail grows with the bulk window (the `transport` bench in
//! `paxos-bench` measures it).
//!
//! # Example: two nodes on loopback
//!
//! ```
//! use std::collections::BTreeMap;
//! use bytes::Bytes;
//! use paxos_net_quic::{certs, NetConfig, PeerId, Transport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (a, b) = (PeerId(1), PeerId(2));
//! let cluster = certs::generate_cluster_in_memory(&[a, b])?;
//! let any_port = "127.0.0.1:0".parse()?;
//!
//! // Node 2 binds first so node 1 can learn its port (real clusters use fixed
//! // ports). Node 2 never dials node 1 (the lower id dials), so node 1's
//! // address there only records membership.
//! let peers_of_b = BTreeMap::from([(a, any_port)]);
//! let cfg_b = NetConfig::loopback(cluster.nodes[1].clone(), cluster.trust(), any_port, peers_of_b);
//! let (node_b, mut inbox_b) = Transport::bind(cfg_b).await?;
//! let peers_of_a = BTreeMap::from([(b, node_b.local_addr()?)]);
//! let cfg_a = NetConfig::loopback(cluster.nodes[0].clone(), cluster.trust(), any_port, peers_of_a);
//! let (node_a, _inbox_a) = Transport::bind(cfg_a).await?;
//!
//! node_a.send(b, Bytes::from_static(b"hello"))?;
//! let (from, frame) = inbox_b.frames.recv().await.ok_or("inbox closed")?;
//! assert_eq!((from, &frame[..]), (a, &b"hello"[..]));
//!
//! node_a.shutdown().await;
//! node_b.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod backoff;
pub mod certs;
mod config;
mod error;
pub mod frame;
mod id;
mod metrics;
pub mod tls;
mod transport;

pub use certs::{ClusterTrust, NodeIdentity};
pub use config::{NetConfig, LOOPBACK_MTU_BYTES, REORDER_PACKET_THRESHOLD, REORDER_TIME_THRESHOLD};
pub use error::{CloseCode, NetError, SendError};
pub use id::PeerId;
pub use metrics::{EndpointMetrics, PathMetrics, PeerMetrics};
pub use transport::{Inbox, Transport, MAX_PEERS};
