//! `paxos-wal`: an mmap-backed, CRC-checked, segmented write-ahead redo log
//! keyed by a strictly increasing `u64`, with group commit, prefix and suffix
//! truncation, torn-write recovery, and a small hard-state file.
//!
//! It is the storage half of the paxos toolkit, but it knows nothing about
//! consensus: use it alone wherever you need an append-only log of byte
//! records that must survive crashes (a replication log, a state machine's
//! redo log, a queue). The keys are the caller's (for Paxos, the zxid):
//! strictly increasing, never 0. Memory use is the mapped segments (page
//! cache, reclaimable) plus a sparse index of 16 bytes per 4 KiB of log.
//!
//! ```
//! use paxos_wal::{Wal, WalOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let opts = WalOptions { segment_bytes: 64 << 10, ..WalOptions::default() };
//! let (wal, report) = Wal::open(dir.path(), opts.clone())?;
//! assert_eq!(report.last_key, None);
//!
//! // Group commit: many appends, one flush.
//! wal.append(1, b"first")?;
//! wal.append_batch([(2, &b"second"[..]), (3, &b"third"[..])])?;
//! assert_eq!(wal.sync()?, Some(3));
//!
//! // Reads borrow from the map.
//! {
//!     let reader = wal.reader();
//!     let keys: Vec<u64> = reader.iter_from(2).map(|r| r.map(|r| r.key)).collect::<Result<_, _>>()?;
//!     assert_eq!(keys, [2, 3]);
//!     assert_eq!(reader.get(1)?, Some(&b"first"[..]));
//! }
//!
//! // TRUNC: drop an uncommitted suffix durably.
//! wal.truncate_suffix(2)?;
//! wal.close()?;
//!
//! let (wal, report) = Wal::open(dir.path(), opts)?;
//! assert_eq!((report.first_key, report.last_key), (Some(1), Some(2)));
//! assert!(report.torn_tail.is_none() && report.damaged.is_none());
//! assert_eq!(wal.get(3)?, None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Layout and durability
//!
//! The log is a directory of fixed-size segment files (`<id as 16 hex>.wal`,
//! default 64 MiB), each preallocated, zero-filled ahead of need by a
//! background thread (or recycled from a segment freed by
//! [`Wal::truncate_prefix`]), and mapped read-only with `memmap2`.
//! Zero-filled or recycled blocks are already written, so a sync flushes
//! data pages only, with no extent conversion in the file system journal.
//! Files are never shrunk. The byte format is in [`format`](mod@format).
//!
//! Records are written with positioned writes (`pwritev`: one call per
//! batch, headers staged, large payloads straight from the caller's slices)
//! and read through the map, which shares the page cache with the file, so
//! a record is readable as soon as its append returns. Storing into the map
//! instead would be one copy fewer, but on ext4 every sync then pays a write
//! fault on the re-protected tail page whose file-system work cost about
//! 200 us per sync here (measured against `pwrite` + `fdatasync`, which
//! keeps the sync at the disk's own speed). The background thread also
//! reads the active segment's pages in a few MiB ahead of the writer
//! (`MADV_POPULATE_READ`), so a write of part of a page never waits for a
//! read from disk.
//!
//! [`Wal::append`] and [`Wal::append_batch`] write into the page cache;
//! [`Wal::sync`] flushes the dirty byte range once (`msync`, outside the
//! log's lock, so appends go on meanwhile) and returns the highest durable
//! key. A record is durable only after the `sync` covering it returns.
//! ENOSPC or EIO when creating a segment, or EIO writing an append, comes
//! back as an error and leaves the log as it was.
//!
//! # After a failed flush
//!
//! When `msync`/`fdatasync` fails, Linux may mark the dirty pages clean
//! without having written them (the problem PostgreSQL met in 2018,
//! "fsyncgate"): a retried flush then has nothing to write and succeeds,
//! and reads through the page cache, even by a process started later
//! without a reboot, still show data the disk does not hold. The rule here:
//! **nothing is treated as durable, or written down as durable, unless a
//! flush that covered it *after it was last written* succeeded.** Hence:
//!
//! - any flush error (a sync, the end marker, a truncation, a roll's
//!   directory sync) is fatal for the handle: later calls fail with
//!   [`WalError::Poisoned`], so no retry on it can report success; the
//!   durable key stays at the last successful sync, and every watermark the
//!   handle wrote is at most that key;
//! - on open, the records past the highest watermark found on disk (the
//!   *unproven tail*) are not trusted because they are readable. Their bytes,
//!   as the scan verified them, are written again over themselves, which
//!   makes their pages dirty, and only the flush after that (and a
//!   directory sync) proves them; [`OpenReport::rewritten`] and a `tracing`
//!   event say what was rewritten. If the rewrite or its flush fails,
//!   `open` refuses with [`WalError::UnprovenData`], naming the file and
//!   the key range, and writes no marker, so nothing claims them durable;
//! - the same holds for the hard-state file: [`HardStateStore::open`]
//!   writes both slots again and flushes them before trusting the value,
//!   or refuses.
//!
//! Rewriting rather than cutting the unproven tail is deliberate: a sync's
//! watermark reaches the disk only with the next batch or marker, so the
//! last acknowledged batch is always past the on-disk watermark, and cutting
//! there would drop records the caller was told were durable. Keeping the
//! records past the last successful sync once they are truly on disk is
//! safe for a consensus log: they were never acknowledged, as after any
//! crash in which they happened to reach the disk.
//!
//! # Recovery
//!
//! Mapped pages reach the disk in any order, so after a crash the unsynced
//! tail may hold garbage with valid-looking records after it. Each record
//! therefore carries the *proven-durable watermark* (`synced_through`: the
//! highest key whose sync had returned when it was written), and the end
//! marker after the last record carries the latest one. On open, every
//! segment is scanned to the first zero length or bad record, and also
//! beyond it, for any valid record or marker and its watermark. Then:
//!
//! - nothing proves a record past the end of the valid prefix durable: it is
//!   a **torn tail**, cut off (zeroed and synced; later segments removed) and
//!   reported in [`OpenReport::torn_tail`] and a `tracing` warning;
//! - a watermark proves keys past the valid prefix durable: data that may
//!   have been acknowledged is damaged. With [`RecoveryMode::Strict`] (the
//!   default) `open` fails with [`WalError::Corrupted`] naming file and
//!   offset, changing nothing; with [`RecoveryMode::KeepValidPrefix`] it
//!   copies the affected files to `*.damaged`, keeps the valid prefix, and
//!   reports the lost key range in [`OpenReport::damaged`] so the replica
//!   can refetch it from its peers.
//!
//! A synced record is never dropped silently. A successful [`Wal::sync`]
//! writes its watermark into an end marker in the page cache at once (not
//! flushed), so a process killed right after a sync still leaves the proof
//! that its last batch was synced, and damage found there later is
//! corruption, not a torn tail. One limit remains: after a *power cut*
//! that lost that marker (before the next `sync` or [`Wal::close`] flushed
//! it), damage to the very last synced batch cannot be told apart from a
//! torn write; it is reported as a torn tail.
//!
//! # Record tags
//!
//! A record can carry one flag, its *tag*: [`Wal::append_tagged`] and
//! [`Wal::append_batch_tagged`] write it, [`Record::tagged`] reads it back,
//! and [`Wal::tagged_keys`] lists the keys of the tagged records the log
//! holds (rebuilt by the recovery scan, kept by appends and truncations).
//! The tag lives in a bit of the record's length field that no length uses,
//! under the record's CRC; untagged records keep the exact bytes of earlier
//! builds (details, and what an older build does with a tagged record, in
//! [`format`](mod@format)). Tags are meant to be rare: `paxos-core`'s
//! membership changes use them, among a log of commands.
//!
//! # Hard state
//!
//! [`HardStateStore`] keeps `accepted_epoch`, `current_epoch` and
//! [`HARD_STATE_EXTRA_FIELDS`] more `u64`s in two CRC-checked slots written
//! alternately; each update is durable on return and a torn update leaves
//! the previous value.
//!
//! # Threads
//!
//! One writer at a time and any number of concurrent readers; see [`Wal`].
//!
//! # Many groups in one log (feature `shared`)
//!
//! A node hosting thousands of replication groups should not pay one log
//! and one flush per group. [`shared::SharedLog`] (feature `shared`, on by
//! default) keeps them all in one `Wal` keyed by a global sequence number:
//! each record names its group and key in a 17-byte header, each group
//! gets an in-memory index of its keys (16 bytes per entry; an idle group
//! costs about 140 bytes), and one [`shared::SharedLog::sync`] makes a
//! batch of every group's writes durable. Recovery rebuilds all the
//! indexes in one pass; [`shared::SharedLog::compact`] frees the segments
//! no group needs and names the groups that hold the rest. With
//! `paxos-core`, [`shared::GroupStorage`] is one group's `Storage`.
#![warn(missing_docs)]

mod error;
mod faults;
pub mod format;
mod hard_state;
mod wal;

pub use error::WalError;
#[doc(hidden)]
pub use faults::{FaultPlan, FaultPoint};
pub use format::{scan_segment, SegmentScan};
pub use hard_state::{HardStateRecord, HardStateStore, HARD_STATE_EXTRA_FIELDS};
pub use wal::{
    DamagedRange, OpenReport, Record, RecoveryMode, RewrittenTail, SyncMethod, TornTail, Wal,
    WalIter, WalOptions, WalReader, DEFAULT_SEGMENT_BYTES, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES,
};

#[cfg(feature = "shared")]
pub mod shared;

#[cfg(feature = "paxos-core")]
mod core_storage;
#[cfg(feature = "paxos-core")]
pub use core_storage::{WalStorage, HARD_STATE_FILE, LOG_DIR, RECOVERING_FIELD};
