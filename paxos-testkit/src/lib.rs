//! `paxos-testkit`: tools for testing a replicated key-value service built
//! with the paxos toolkit, from the outside.
//!
//! - [`linearizability`]: a checker that decides whether a recorded history
//!   of key-value operations is linearizable and, when it is not, points at
//!   a small set of operations that explains why; its [`Recorder`] builds
//!   such a history from concurrent tasks.
//! - [`cluster`]: a [`LocalCluster`] of `paxos-node` processes (from
//!   [`paxos_kv`]) on loopback or in network namespaces, with certificates,
//!   restarts, signals and status polling, for integration tests, the chaos
//!   suite and the end-to-end bench.
//!
//! A stale read caught by the checker:
//!
//! ```
//! use bytes::Bytes;
//! use paxos_testkit::linearizability::{check, CheckConfig, Command, History, Operation, Output, Verdict};
//!
//! let key = Bytes::from_static(b"k");
//! let mut history = History::new();
//! // Client 1 writes "a" between t=0 and t=10 ...
//! history.push(Operation::completed(1, key.clone(), Command::Put { value: Bytes::from_static(b"a") }, 0, 10, Output::Acknowledged))?;
//! // ... and client 2, invoked after that write completed, reads nothing.
//! history.push(Operation::completed(2, key.clone(), Command::Get, 20, 30, Output::Read(None)))?;
//! let report = check(&history, &CheckConfig::default());
//! assert!(matches!(report.verdict, Verdict::NotLinearizable(_)));
//!
//! // The same read, invoked before the write completed, may come first.
//! let mut history = History::new();
//! history.push(Operation::completed(1, key.clone(), Command::Put { value: Bytes::from_static(b"a") }, 0, 10, Output::Acknowledged))?;
//! history.push(Operation::completed(2, key, Command::Get, 5, 30, Output::Read(None)))?;
//! assert!(matches!(check(&history, &CheckConfig::default()).verdict, Verdict::Linearizable));
//! # Ok::<(), paxos_testkit::linearizability::HistoryError>(())
//! ```
//!
//! [`Recorder`]: linearizability::Recorder
//! [`LocalCluster`]: cluster::LocalCluster
#![deny(missing_docs)]

pub mod cluster;
pub mod linearizability;
