//! `paxos-bench`: the benchmarks of the paxos toolkit.
//!
//! The benches themselves live in `benches/` (one per crate, run together by
//! `cargo xtask bench`) and in the `paxos-e2e` binary (local clusters of
//! [`paxos_kv`] nodes under load). This library holds what they share:
//!
//! - [`loadgen`]: the closed-loop load generator that drives a cluster
//!   through `paxos_kv`'s client;
//! - `compare` (feature `compare`): the same load against etcd and
//!   ZooKeeper, for side-by-side figures.
#![warn(missing_docs)]

#[cfg(feature = "compare")]
pub mod compare;
pub mod loadgen;
