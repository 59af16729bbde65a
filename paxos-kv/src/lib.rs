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
//!
//! A client of a running cluster (`cargo xtask cluster` starts one, and
//! prints its client addresses and the certificate directory, where
//! `admin` is the read-write client). Calls go
//! round the cluster to the leader, retry with the same session (a write
//! is applied at most once), and say when a write's outcome is unknown:
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use paxos_kv::client::Client;
//! use paxos_kv::client_proto::ReadMode;
//! use paxos_kv::tls::ClientTlsConfig;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! # let certs = std::path::Path::new("/tmp/paxos-cluster-1/certs");
//! let tls = ClientTlsConfig::from_dir(certs, "admin")?;
//! let addrs = vec!["127.0.0.1:8101".parse()?, "127.0.0.1:8102".parse()?];
//! let client = Client::new(addrs, tls, 42, Duration::from_secs(5));
//! client.put(Bytes::from_static(b"greeting"), Bytes::from_static(b"hello")).await?;
//! let v = client.get(Bytes::from_static(b"greeting"), ReadMode::Linearizable).await?;
//! assert_eq!(v.as_deref(), Some(&b"hello"[..]));
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod auth;
mod budget;
pub mod client;
pub mod client_proto;
pub mod identity;
pub mod kv;
pub mod node;
pub mod shard;
pub mod tls;
