//! The chaos suite: real `paxos-node` processes on real disks, each in a
//! network namespace of its own, under faults: kills, pauses, partitions,
//! lossy and slow links, damaged and full disks, clock jumps. Every run
//! checks that the recorded client history is linearizable, that every
//! acknowledged write reads back, that the replicas converge on one state,
//! and that the cluster makes progress again within a stated time.
//!
//! `cargo xtask chaos` runs random schedules of the [`scenario`]s; each is
//! also a test of this crate.
//!
//! ```no_run
//! use paxos_chaos::scenario::{run, RunOptions, Scenario};
//!
//! # async fn demo() -> anyhow::Result<()> {
//! let options = RunOptions {
//!     node_binary: paxos_chaos::harness::node_binary()?,
//!     loopback_only: false,
//!     keep_failed: true,
//!     groups: 1,
//! };
//! let report = run(Scenario::KillLeader, 7, &options).await;
//! if report.failed() {
//!     eprintln!("{}\nreplay: {}", report.problems(), report.replay_command());
//! }
//! # Ok(())
//! # }
//! ```

pub mod harness;
pub mod net;
pub mod scenario;
pub mod schedule;
pub mod workload;
