//! `paxos-bench`: the reference composition of the paxos toolkit, a replicated
//! key-value store, and the benchmarks that measure it.
//!
//! - [`kv`]: the key-value state machine (put, delete, compare-and-set, with
//!   per-client sessions so that retried commands apply once).
//! - [`client_proto`]: the client protocol (pipelined, length-prefixed frames).
//! - [`auth`], [`tls`]: client principals and roles, and TLS on the client
//!   port.
//!
//! ```
//! use bytes::Bytes;
//! use paxos_bench::kv::{KvCommand, KvOp, KvStore};
//! use paxos_core::{Epoch, StateMachine, Zxid};
//!
//! let mut store = KvStore::new();
//! let cmd = KvCommand { principal: Bytes::from_static(b"alice"), client: 1, seq: 1, op: KvOp::Put { key: Bytes::from_static(b"k"), value: Bytes::from_static(b"v") } };
//! store.apply(Zxid::new(Epoch(1), 1), &cmd.to_bytes());
//! assert_eq!(store.get(b"k").map(|v| &v[..]), Some(&b"v"[..]));
//! ```
#![warn(missing_docs)]

pub mod auth;
#[cfg(all(
    feature = "wal",
    feature = "net",
    feature = "election",
    feature = "snapshot"
))]
mod budget;
pub mod client;
pub mod client_proto;
#[cfg(all(
    feature = "wal",
    feature = "net",
    feature = "election",
    feature = "snapshot"
))]
pub mod cluster;
#[cfg(feature = "compare")]
pub mod compare;
#[cfg(feature = "wal")]
pub mod identity;
pub mod kv;
pub mod linearizability;
pub mod loadgen;
#[cfg(all(
    feature = "wal",
    feature = "net",
    feature = "election",
    feature = "snapshot"
))]
pub mod node;
pub mod tls;
