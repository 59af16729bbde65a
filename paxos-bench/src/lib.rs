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
//!
//! The closed loop drives any system: here, four clients of a stand-in
//! that answers after 1 ms, for 50 ms.
//!
//! ```
//! use std::time::Duration;
//! use paxos_bench::loadgen::closed_loop;
//!
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let result = runtime.block_on(closed_loop(4, Duration::from_millis(50), |_client, _n| async {
//!     tokio::time::sleep(Duration::from_millis(1)).await;
//!     Ok(None) // a read: nothing to check for loss afterwards
//! }));
//! assert!(result.ok > 0 && result.errors == 0);
//! assert_eq!(result.latencies_us.len() as u64, result.ok);
//! println!("{:.0} ops/s, p99 {} us", result.throughput(), result.quantile_us(0.99));
//! ```
#![warn(missing_docs)]

#[cfg(feature = "compare")]
pub mod compare;
pub mod loadgen;
