//! `paxos-kv`: the reference replicated key-value service of the paxos
//! toolkit, and the toolkit's pieces composed into one running node.
//!
//! A cluster of `paxos-node` processes replicates a key-value map through
//! paxos-core's Multi-Paxos kernel, with paxos-election electing leaders,
//! paxos-wal persisting the log, paxos-net-quic carrying peer traffic and
//! paxos-snapshot catching up replicas that fell behind. Clients talk to it
//! over TLS with `paxos-client` or the [`client`] library.
//!
//! - [`kv`]: the state machine (put, delete, compare-and-set, with
//!   per-client sessions so that a retried command applies once).
//! - [`client_proto`]: the client protocol (pipelined, length-prefixed
//!   frames); [`client`]: the async client that goes round the cluster.
//! - [`auth`], [`tls`]: client principals and roles, and TLS on the client
//!   port; [`identity`]: what a node's data directory says it is.
//! - [`node`]: the node itself, the kernel driven by tokio (what the
//!   `paxos-node` binary runs).
//!
//! The state machine alone, applying a committed put and answering a read:
//!
//! ```
//! use bytes::Bytes;
//! use paxos_core::{Epoch, StateMachine, Zxid};
//! use paxos_kv::kv::{KvCommand, KvOp, KvResult, KvStore};
//!
//! let mut store = KvStore::new();
//! let put = KvCommand {
//!     principal: Bytes::from_static(b"alice"),
//!     client: 1,
//!     seq: 1,
//!     op: KvOp::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") },
//! };
//! let answer = store.apply(Zxid::new(Epoch(1), 1), &put.to_bytes());
//! // A first put finds no previous value.
//! assert_eq!(KvResult::decode(answer)?, KvResult::Done(None));
//! assert_eq!(store.get(b"k").map(|v| &v[..]), Some(&b"v"[..]));
//!
//! // The same command again (a client's retry) is answered, not reapplied.
//! let retry = store.apply(Zxid::new(Epoch(1), 2), &put.to_bytes());
//! assert_eq!(KvResult::decode(retry)?, KvResult::Done(None));
//! # Ok::<(), paxos_kv::kv::KvCodecError>(())
//! ```
#![deny(missing_docs)]

pub mod auth;
mod budget;
pub mod client;
pub mod client_proto;
pub mod identity;
pub mod kv;
pub mod node;
pub mod tls;
