//! `paxos-snapshot`: catch-up sync planning, a crash-safe snapshot file
//! format, and chunked snapshot transfer, for the paxos toolkit.
//!
//! Three parts, each usable alone:
//!
//! - **Sync planning** ([`plan_sync`], [`ZabPlanner`]): after an election,
//!   decide for each follower the cheapest correct way to bring it level
//!   with the leader: nothing, DIFF, TRUNC, TRUNC+DIFF or SNAP, following
//!   ZooKeeper's `LearnerHandler.syncFollower` rules (documented rule by
//!   rule on [`plan_sync`]). [`plan_sync`] is a pure function of this
//!   crate's summary of the leader's log that returns `paxos-core`'s
//!   [`SyncPlan`](paxos_core::SyncPlan); [`ZabPlanner`] implements
//!   `paxos-core`'s [`SyncPlanner`](paxos_core::SyncPlanner) seam.
//! - **Snapshot files** ([`SnapshotStore`], [`SnapshotWriter`],
//!   [`SnapshotReader`]): a header (magic, version, zxid, epoch, voters),
//!   the state machine's bytes in crc32-checked chunks, and a trailer with
//!   the total length and checksum. Writing and reading stream through one
//!   chunk buffer (1 MiB by default) whatever the snapshot's size; a file is
//!   written under a temporary name, fsynced, renamed and its directory
//!   fsynced, so a crash never leaves a torn snapshot. The store lists,
//!   verifies, restores, keeps the last K and says how far the log may be
//!   cut ([`SnapshotStore::log_cut_point`]).
//! - **Transfer** ([`SnapshotSender`], [`SnapshotReceiver`]): bounded
//!   chunks of `paxos-core`'s wire type [`SnapChunk`] (re-exported here),
//!   sealed with their own checksum and identity ([`seal_chunk`],
//!   [`SnapshotId`]); the receiver refuses corrupt, reordered or foreign chunks,
//!   resumes after a reconnect or restart, and installs atomically.
//!
//! Use it alone when you run your own replication and need ZooKeeper-style
//! follower catch-up, or just a streaming, checksummed, crash-safe snapshot
//! file for any state machine implementing
//! [`StateMachine`](paxos_core::StateMachine).
//!
//! # Example
//!
//! ```
//! use std::io::{self, Read, Write};
//! use bytes::Bytes;
//! use paxos_core::{Epoch, NodeId, StateMachine, SyncPlan, Zxid};
//! use paxos_snapshot::{plan_sync, LeaderLog, PlannerConfig, SnapshotStore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Plan a sync: the leader holds epoch 1 entries 1..=10 in memory; the
//! // follower stopped at 1.7, so it gets a DIFF of what follows.
//! let ends = [Zxid::new(Epoch(1), 10)];
//! let leader = LeaderLog {
//!     last: Zxid::new(Epoch(1), 10),
//!     committed: Zxid::new(Epoch(1), 10),
//!     retained_first: Some(Zxid::new(Epoch(1), 1)),
//!     epoch_ends: &ends,
//!     log_from_start: true,
//!     memory_first: Some(Zxid::new(Epoch(1), 1)),
//!     disk: None,
//!     snapshot: None,
//! };
//! let decision = plan_sync(Zxid::new(Epoch(1), 7), &leader, &PlannerConfig::default());
//! assert_eq!(decision.plan, SyncPlan::Diff { after: Zxid::new(Epoch(1), 7) });
//!
//! // A tiny state machine: a counter.
//! #[derive(Default)]
//! struct Counter { value: u64, applied: Zxid }
//! impl StateMachine for Counter {
//!     fn apply(&mut self, zxid: Zxid, _command: &Bytes) -> Bytes {
//!         self.value += 1;
//!         self.applied = zxid;
//!         Bytes::new()
//!     }
//!     fn applied(&self) -> Zxid { self.applied }
//!     fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
//!         out.write_all(&self.value.to_le_bytes())
//!     }
//!     fn restore(&mut self, zxid: Zxid, input: &mut dyn Read) -> io::Result<()> {
//!         let mut b = [0u8; 8];
//!         input.read_exact(&mut b)?;
//!         self.value = u64::from_le_bytes(b);
//!         self.applied = zxid;
//!         Ok(())
//!     }
//! }
//!
//! # let dir = tempfile::tempdir()?;
//! let store = SnapshotStore::open(dir.path())?;
//! let mut sm = Counter::default();
//! for c in 1..=3 {
//!     sm.apply(Zxid::new(Epoch(1), c), &Bytes::new());
//! }
//! let saved = store.save(&sm, Epoch(1), &[NodeId(1), NodeId(2), NodeId(3)])?;
//! assert_eq!(saved.zxid, Zxid::new(Epoch(1), 3));
//!
//! let mut restored = Counter::default();
//! let meta = store.restore(saved.zxid, &mut restored)?;
//! assert_eq!((restored.value, restored.applied), (3, saved.zxid));
//! assert_eq!(meta.voters.len(), 3);
//! assert_eq!(store.log_cut_point()?, Some(saved.zxid));
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod chunk;
mod error;
mod format;
mod plan;
mod store;
mod transfer;

pub use chunk::{chunk_crc, seal_chunk, SnapshotId};
pub use error::{Result, SnapshotError};
pub use format::{
    SnapshotEncoder, SnapshotMeta, SnapshotReader, SnapshotSummary, DEFAULT_CHUNK_BYTES,
    FORMAT_VERSION, MAGIC, MAX_CHUNK_BYTES, MAX_VOTERS, OLDEST_FORMAT_VERSION, TRAILER_BYTES,
};
pub use paxos_core::SnapChunk;
pub use plan::{
    cost_rank, plan_sync, Decision, DiskLog, LeaderLog, PlannerConfig, Rule, SnapshotRef, Source,
    ZabPlanner,
};
pub use store::{
    restore_state_machine, snapshot_file_name, write_state_machine, SnapshotStore, SnapshotWriter,
    StoredSnapshot,
};
pub use transfer::{snapshot_identity, Progress, SnapshotReceiver, SnapshotSender};
