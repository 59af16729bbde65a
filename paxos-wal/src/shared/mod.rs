//! One write-ahead log shared by many groups (feature `shared`, on by
//! default): one flush makes a batch of many groups' records durable.
//!
//! A node hosting thousands of replication groups cannot afford a log, a
//! flush and a file set per group. [`SharedLog`] multiplexes them over one
//! [`Wal`]: every record gets a global, strictly increasing *log sequence
//! number* (LSN, the `Wal` key), and its payload starts with a
//! [`HEADER_BYTES`]-byte header naming its [`RecordKind`], group and key
//! (see [`decode_record`]). The kinds are: an entry (tagged or not: the tag
//! lives in the kind, so `paxos-core`'s membership entries keep it), a
//! suffix truncation, a prefix truncation, a group's state (*meta*: a small
//! byte string replaced as a whole; `GroupStorage` keeps a group's hard
//! state, recovering flag and meta slots there) and a group's removal.
//!
//! ```
//! use paxos_wal::shared::{Op, SharedLog};
//! use paxos_wal::WalOptions;
//!
//! let dir = tempfile::tempdir()?;
//! let opts = WalOptions { segment_bytes: 64 << 10, ..WalOptions::default() };
//! let (log, _report) = SharedLog::open(dir.path(), opts.clone())?;
//! // One batch (one positioned write) for two groups, then one flush.
//! log.write(&[
//!     Op::Entry { group: 1, key: 10, tagged: false, payload: b"a" },
//!     Op::Entry { group: 2, key: 10, tagged: true, payload: b"b" },
//!     Op::Meta { group: 2, state: b"term 3" },
//! ])?;
//! log.append(1, 11, b"c")?;
//! let durable_lsn = log.sync()?;
//! assert_eq!(durable_lsn, Some(4));
//! // Each group has its own keys; truncations append a record.
//! log.truncate_suffix(1, 10)?;
//! assert_eq!(log.last_key(1), Some(10));
//! log.sync()?;
//! drop(log);
//!
//! // Reopening rebuilds every group's index in one pass over the log.
//! let (log, report) = SharedLog::open(dir.path(), opts)?;
//! assert_eq!(report.groups, 2);
//! assert_eq!(log.get(1, 10)?, Some(b"a".to_vec()));
//! assert_eq!(log.get(1, 11)?, None);
//! assert_eq!(log.tagged_keys(2), [10]);
//! assert_eq!(log.meta(2), Some(b"term 3".to_vec()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Memory
//!
//! Each group keeps, in memory, its keys with their LSNs (a `VecDeque` of
//! `(key, lsn)`: **16 bytes per entry held**, up to twice that while the
//! deque has growth room; truncations give most of a much larger capacity
//! back) and its latest state (its bytes, at most [`MAX_META_BYTES`], and
//! its LSN). A group with an empty log costs its hash-table slot (72 bytes
//! plus control bytes) and its state's heap copy: about 140 bytes with
//! `GroupStorage`'s 35-byte state (measured by `tests/shared_mem.rs`). At
//! most [`MAX_GROUPS`] groups share one log; one more is refused with
//! [`SharedError::TooManyGroups`]. The `Wal` underneath adds its own sparse
//! index (16 bytes per 4 KiB of log) and its maps.
//!
//! # Durability and recovery
//!
//! [`SharedLog::sync`] is the `Wal`'s group commit: one flush covers every
//! record appended before it, of every group, and returns the durable LSN.
//! It can run on its own thread while appends continue. A crash loses the
//! unsynced tail of the *whole* log at once (the `Wal`'s torn-tail rules),
//! so every group keeps at least what the last successful sync covered, and
//! each group's state is the one some prefix of the log leads to. Within a
//! group, records take effect in LSN order: a state (meta) record written
//! after some entries is never durable without them.
//!
//! # Combining writes
//!
//! Each [`SharedLog::write`] is one positioned write (a system call). A
//! host that writes for many groups in one pass of its loop can turn on
//! [`SharedLog::set_combine_writes`]: a batch that fits the active segment
//! is then encoded into a buffer in memory (readable through this handle at
//! once) and reaches the file with the next [`SharedLog::flush`],
//! [`SharedLog::sync`], or read of a record still in the buffer, all
//! staged batches in one positioned write. The buffer is bounded
//! ([`MAX_STAGED_BYTES`], [`MAX_STAGED_RECORDS`]: a batch past either
//! flushes what is staged first). Durability is unchanged (a sync covers
//! every batch written before it); a crash loses staged batches as it
//! loses unsynced ones. A batch that needs a new segment is written at
//! once, as without combining, so a full disk still refuses that write
//! ([`crate::WalError`]s that leave the log intact) rather than a later
//! flush. A flush that fails leaves batches the index has taken out of the
//! file: the handle is then fatal ([`SharedError::Unflushed`]), as after a
//! failed sync; reopen the log.
//!
//! [`SharedLog::open`] rebuilds every group's index in one pass over the
//! log, applying records in LSN order (truncations drop what came before
//! them; the latest state wins). A record whose payload is not a valid
//! shared-log record, or an entry whose key does not follow its group's
//! last key, stops the open with [`SharedError::BadRecord`] naming its LSN;
//! a record that fails its checksum in the synced part of the log stops it
//! with the `Wal`'s [`WalError::Corrupted`] (see [`RecoveryMode`]).
//!
//! # Reclaiming space
//!
//! A group's prefix truncation drops its entries from the index at once
//! (and appends a record saying so); it never waits for the other groups.
//! The space comes back with [`SharedLog::compact`]: a segment is deleted
//! when no group still needs anything in it. Entries are needed until
//! their group truncates them; a group's live state record is needed too,
//! but `compact` writes it again at the end of the log (and syncs) rather
//! than let an idle group hold an old segment. What `compact` cannot move
//! is a group's oldest retained entry: the [`CompactReport`] lists the
//! groups whose entries sit in sealed segments, oldest first, so that the
//! caller can ask them to snapshot and truncate. Truncation records need no
//! keeping: they only drop records older than themselves, which go first.
//!
//! # Threads
//!
//! `SharedLog` is `Send + Sync` (share it in an `Arc`): the index sits
//! behind a `parking_lot::RwLock`, writes hold it exclusively across their
//! one positioned write (so readers of any group wait that long), reads
//! share it, and [`sync`](SharedLog::sync) does not take it.
//!
//! [`Wal`]: crate::Wal
//! [`WalError::Corrupted`]: crate::WalError::Corrupted
//! [`RecoveryMode`]: crate::RecoveryMode

mod error;
#[cfg(feature = "paxos-core")]
mod group;
mod record;

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::wal::RecordPrefix;
use crate::{OpenReport, Wal, WalOptions};

pub use error::SharedError;
#[cfg(feature = "paxos-core")]
pub use group::{GroupStorage, GROUP_STATE_BYTES};
pub use record::{decode_record, RecordHeader, RecordKind, HEADER_BYTES};

/// The most groups one [`SharedLog`] holds.
pub const MAX_GROUPS: usize = 65_536;
/// The largest group state ([`Op::Meta`]).
pub const MAX_META_BYTES: usize = 1024;
/// The most groups a [`CompactReport`] names as holding space back.
pub const MAX_HOLDERS_REPORTED: usize = 64;

/// Marks a tagged entry in the index: LSNs stay below 2^63.
const TAG_BIT: u64 = 1 << 63;

/// Most bytes (as written in the segment) held in the combining buffer; a
/// batch that would pass it flushes what is staged first.
pub const MAX_STAGED_BYTES: usize = 1 << 20;

/// Most records held in the combining buffer.
pub const MAX_STAGED_RECORDS: usize = 8192;

/// One write to a [`SharedLog`]; a batch of them goes in one call of
/// [`SharedLog::write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// Appends an entry to `group`: `key` must be above the group's last
    /// key. `tagged` is kept and read back (membership changes use it).
    Entry {
        /// The group.
        group: u64,
        /// The entry's key within the group.
        key: u64,
        /// The entry's tag.
        tagged: bool,
        /// The entry's bytes.
        payload: &'a [u8],
    },
    /// Drops the group's entries with keys above `after`.
    TruncateSuffix {
        /// The group.
        group: u64,
        /// The last key kept.
        after: u64,
    },
    /// Drops the group's entries with keys up to `upto`, inclusive.
    TruncatePrefix {
        /// The group.
        group: u64,
        /// The last key dropped.
        upto: u64,
    },
    /// Replaces the group's state (at most [`MAX_META_BYTES`]).
    Meta {
        /// The group.
        group: u64,
        /// The new state.
        state: &'a [u8],
    },
    /// Drops the group: its entries and its state. A later write to the
    /// same group starts it afresh.
    RemoveGroup {
        /// The group.
        group: u64,
    },
}

impl<'a> Op<'a> {
    fn header(&self) -> RecordHeader {
        let (kind, group, key) = match *self {
            Op::Entry {
                group, key, tagged, ..
            } => {
                let kind = if tagged {
                    RecordKind::TaggedEntry
                } else {
                    RecordKind::Entry
                };
                (kind, group, key)
            }
            Op::TruncateSuffix { group, after } => (RecordKind::TruncateSuffix, group, after),
            Op::TruncatePrefix { group, upto } => (RecordKind::TruncatePrefix, group, upto),
            Op::Meta { group, .. } => (RecordKind::Meta, group, 0),
            Op::RemoveGroup { group } => (RecordKind::RemoveGroup, group, 0),
        };
        RecordHeader { kind, group, key }
    }

    fn body(&self) -> &'a [u8] {
        match *self {
            Op::Entry { payload, .. } => payload,
            Op::Meta { state, .. } => state,
            _ => &[],
        }
    }
}

/// An entry read from a [`SharedLog`], borrowed from the log's map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// The entry's key in its group.
    pub key: u64,
    /// Whether it was written tagged.
    pub tagged: bool,
    /// Its bytes.
    pub payload: &'a [u8],
}

/// What [`SharedLog::open`] found.
#[derive(Debug)]
pub struct SharedOpenReport {
    /// What the underlying `Wal`'s recovery found (torn tail, damage).
    pub wal: OpenReport,
    /// Records replayed.
    pub records: u64,
    /// Groups holding entries or a state after the replay.
    pub groups: usize,
}

/// A group whose oldest retained entry keeps a sealed segment alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The group.
    pub group: u64,
    /// Its oldest retained entry's key.
    pub first_key: u64,
    /// That entry's LSN (the report lists holders by it, oldest first).
    pub lsn: u64,
}

/// What [`SharedLog::compact`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Segment files deleted (or recycled).
    pub segments_removed: usize,
    /// Group states written again so their old segments could go.
    pub metas_rewritten: usize,
    /// The LSN below which the log was cut (0: nothing was cut).
    pub reclaimed_below: u64,
    /// Groups whose retained entries sit in sealed segments, oldest first
    /// (at most [`MAX_HOLDERS_REPORTED`]): ask them to snapshot and
    /// truncate their prefix.
    pub holders: Vec<Holder>,
    /// Segment files kept after this pass, the active one included.
    pub segments: usize,
    /// Where the oldest segment kept ends (the first LSN of the next one;
    /// `None` when only the active segment is left): the holders with an
    /// LSN below it are those that keep it.
    pub oldest_segment_end: Option<u64>,
}

/// One group's part of the index.
#[derive(Debug, Default)]
struct GroupIndex {
    /// `(key, lsn)` of the entries held, keys strictly increasing; the LSN
    /// carries [`TAG_BIT`] for a tagged entry.
    entries: VecDeque<(u64, u64)>,
    /// LSN of the live state record, 0 when the group has none.
    meta_lsn: u64,
    /// The live state (empty when none).
    meta: Box<[u8]>,
}

impl GroupIndex {
    /// The position of the first entry with key >= `key`.
    fn position(&self, key: u64) -> usize {
        match self.dense_position(key) {
            Some(i) => i,
            None => self.entries.partition_point(|&(k, _)| k < key),
        }
    }

    /// The position of the first entry with key > `key`.
    fn position_after(&self, key: u64) -> usize {
        match self.dense_position(key) {
            Some(i) => i + 1,
            None => self.entries.partition_point(|&(k, _)| k <= key),
        }
    }

    /// The position of the entry with exactly `key`, found without a
    /// search when the keys from it to the newest are consecutive (a
    /// consensus log's keys are zxids: consecutive within an epoch, and
    /// reads mostly ask for the newest entries); `None` otherwise. Keys
    /// strictly increase, so a match at the computed slot is the only one.
    fn dense_position(&self, key: u64) -> Option<usize> {
        let &(last, _) = self.entries.back()?;
        let back = usize::try_from(last.checked_sub(key)?).ok()?;
        let i = self.entries.len().checked_sub(1)?.checked_sub(back)?;
        (self.entries.get(i)?.0 == key).then_some(i)
    }

    /// Gives most of a large, mostly empty capacity back after a truncation.
    fn shrink(&mut self) {
        if self.entries.capacity() > 64 && self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }
}

/// How to put one applied change back (a failed write).
#[derive(Debug)]
enum Undo {
    Created(u64),
    Pushed(u64),
    CutSuffix(u64, Vec<(u64, u64)>),
    CutPrefix(u64, Vec<(u64, u64)>),
    Meta(u64, u64, Box<[u8]>),
    Removed(u64, GroupIndex),
}

#[derive(Debug)]
struct State {
    groups: HashMap<u64, GroupIndex>,
    /// The LSN the next record gets.
    next_lsn: u64,
    /// Per change of the write in progress: the op's index and its undo
    /// (kept between writes for its capacity).
    undo: Vec<(usize, Undo)>,
}

impl State {
    /// The group, created if new (within the bound).
    fn group_mut(
        &mut self,
        group: u64,
        op: usize,
        undo: &mut Option<&mut Vec<(usize, Undo)>>,
    ) -> Result<&mut GroupIndex, SharedError> {
        let len = self.groups.len();
        match self.groups.entry(group) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                if len >= MAX_GROUPS {
                    return Err(SharedError::TooManyGroups {
                        group,
                        max: MAX_GROUPS,
                    });
                }
                if let Some(u) = undo {
                    u.push((op, Undo::Created(group)));
                }
                Ok(e.insert(GroupIndex::default()))
            }
        }
    }

    /// Applies one record at `lsn` to the index (validated first: nothing
    /// changes on error), noting how to undo it when `undo` is given.
    fn apply(
        &mut self,
        lsn: u64,
        op: usize,
        h: RecordHeader,
        body: &[u8],
        mut undo: Option<&mut Vec<(usize, Undo)>>,
    ) -> Result<(), SharedError> {
        let group = h.group;
        match h.kind {
            RecordKind::RemoveGroup => {
                if let Some(g) = self.groups.remove(&group) {
                    if let Some(u) = undo {
                        u.push((op, Undo::Removed(group, g)));
                    }
                }
                return Ok(());
            }
            RecordKind::Meta if body.len() > MAX_META_BYTES => {
                return Err(SharedError::MetaTooLarge {
                    group,
                    len: body.len(),
                    max: MAX_META_BYTES,
                });
            }
            RecordKind::Entry | RecordKind::TaggedEntry => {
                let last = self
                    .groups
                    .get(&group)
                    .and_then(|g| g.entries.back())
                    .map(|e| e.0);
                if last.is_some_and(|l| h.key <= l) {
                    return Err(SharedError::KeyNotIncreasing {
                        group,
                        key: h.key,
                        last,
                    });
                }
            }
            _ => {}
        }
        let g = self.group_mut(group, op, &mut undo)?;
        match h.kind {
            RecordKind::Entry | RecordKind::TaggedEntry => {
                let tag = if h.kind == RecordKind::TaggedEntry {
                    TAG_BIT
                } else {
                    0
                };
                g.entries.push_back((h.key, lsn | tag));
                if let Some(u) = undo {
                    u.push((op, Undo::Pushed(group)));
                }
            }
            RecordKind::TruncateSuffix => {
                let at = g.position_after(h.key);
                if at < g.entries.len() {
                    let cut: Vec<(u64, u64)> = g.entries.drain(at..).collect();
                    g.shrink();
                    if let Some(u) = undo {
                        u.push((op, Undo::CutSuffix(group, cut)));
                    }
                }
            }
            RecordKind::TruncatePrefix => {
                let at = g.position_after(h.key);
                if at > 0 {
                    let cut: Vec<(u64, u64)> = g.entries.drain(..at).collect();
                    g.shrink();
                    if let Some(u) = undo {
                        u.push((op, Undo::CutPrefix(group, cut)));
                    }
                }
            }
            RecordKind::Meta => {
                let old_lsn = std::mem::replace(&mut g.meta_lsn, lsn);
                let old = std::mem::replace(&mut g.meta, body.into());
                if let Some(u) = undo {
                    u.push((op, Undo::Meta(group, old_lsn, old)));
                }
            }
            RecordKind::RemoveGroup => {}
        }
        Ok(())
    }

    /// Undoes the changes of ops `from..` of the write in progress, newest
    /// first.
    fn rollback(&mut self, undo: &mut Vec<(usize, Undo)>, from: usize) {
        // Bounded by the changes of one write.
        while undo.last().is_some_and(|(op, _)| *op >= from) {
            let Some((_, u)) = undo.pop() else { break };
            match u {
                Undo::Created(group) => {
                    self.groups.remove(&group);
                }
                Undo::Removed(group, g) => {
                    self.groups.insert(group, g);
                }
                Undo::Pushed(group) => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.entries.pop_back();
                    }
                }
                Undo::CutSuffix(group, cut) => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.entries.extend(cut);
                    }
                }
                Undo::CutPrefix(group, cut) => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        for e in cut.into_iter().rev() {
                            g.entries.push_front(e);
                        }
                    }
                }
                Undo::Meta(group, lsn, bytes) => {
                    if let Some(g) = self.groups.get_mut(&group) {
                        g.meta_lsn = lsn;
                        g.meta = bytes;
                    }
                }
            }
        }
    }
}

/// Many groups' logs in one [`Wal`]; see the [module
/// docs](self).
pub struct SharedLog {
    wal: Wal,
    state: RwLock<State>,
    /// One compaction at a time.
    compacting: Mutex<()>,
    /// Whether batches that fit the active segment are staged
    /// ([`SharedLog::set_combine_writes`]).
    combine: AtomicBool,
    /// Batches written to the index but not yet to the file. Lock order:
    /// `state`, then `staged`, then the `Wal`'s own locks.
    staged: Mutex<Staged>,
    /// The first staged LSN (`u64::MAX` when nothing is staged): a read of
    /// a record at or above it flushes first.
    staged_from: AtomicU64,
    /// A flush failed: the index holds records the file does not.
    unflushed: AtomicBool,
}

/// The combining buffer: whole `Wal` payloads (shared-log header and body)
/// back to back, each with its LSN.
#[derive(Default)]
struct Staged {
    buf: Vec<u8>,
    /// Per record: its LSN and the end of its payload in `buf`.
    records: Vec<(u64, usize)>,
    /// Segment bytes the staged records take once written.
    bytes: usize,
    /// Why the handle is fatal, once a flush failed.
    failed: Option<String>,
}

impl std::fmt::Debug for SharedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.read();
        f.debug_struct("SharedLog")
            .field("dir", &self.wal.dir())
            .field("groups", &st.groups.len())
            .field("next_lsn", &st.next_lsn)
            .finish()
    }
}

impl SharedLog {
    /// Opens (or creates) the shared log in `dir` and rebuilds every
    /// group's index in one pass over it.
    ///
    /// Errors: the `Wal`'s (a locked directory, corruption in its synced
    /// part, IO), [`SharedError::BadRecord`] for a record that is not a
    /// valid shared-log record or does not follow its group's keys, and
    /// [`SharedError::TooManyGroups`].
    pub fn open(
        dir: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<(SharedLog, SharedOpenReport), SharedError> {
        let (wal, report) = Wal::open(dir, options)?;
        let mut state = State {
            groups: HashMap::new(),
            next_lsn: wal.last_key().map_or(1, |l| l + 1),
            undo: Vec::new(),
        };
        let mut records = 0u64;
        {
            let reader = wal.reader();
            for rec in reader.iter_from(0) {
                let rec = rec?;
                let lsn = rec.key;
                if rec.tagged {
                    return Err(SharedError::BadRecord {
                        lsn,
                        reason: "the shared log never writes tagged WAL records".into(),
                    });
                }
                let (h, body) = decode_record(lsn, rec.payload)?;
                state.apply(lsn, 0, h, body, None).map_err(|e| match e {
                    e @ SharedError::TooManyGroups { .. } => e,
                    other => SharedError::BadRecord {
                        lsn,
                        reason: other.to_string(),
                    },
                })?;
                records += 1;
            }
        }
        let groups = state.groups.len();
        tracing::info!(
            dir = %wal.dir().display(),
            records,
            groups,
            next_lsn = state.next_lsn,
            "shared log recovered"
        );
        Ok((
            SharedLog {
                wal,
                state: RwLock::new(state),
                compacting: Mutex::new(()),
                combine: AtomicBool::new(false),
                staged: Mutex::new(Staged::default()),
                staged_from: AtomicU64::new(u64::MAX),
                unflushed: AtomicBool::new(false),
            },
            SharedOpenReport {
                wal: report,
                records,
                groups,
            },
        ))
    }

    /// Writes `ops` in order, as one batch (one positioned write per segment
    /// touched), and returns the LSN of the last one (`None` for no ops).
    /// The records are readable at once and durable after the next
    /// [`sync`](Self::sync).
    ///
    /// The batch is checked first (keys, state sizes, the bound on groups):
    /// if an op is refused, nothing is written. If the `Wal` fails partway
    /// (a segment that cannot be created), the ops before the failure may
    /// stay written; the index holds exactly what the log holds.
    ///
    /// With [`set_combine_writes`](Self::set_combine_writes) on, a batch
    /// that fits the active segment is staged in memory instead and
    /// reaches the file with the next [`flush`](Self::flush) or sync (see
    /// the [module docs](self#combining-writes)).
    pub fn write(&self, ops: &[Op<'_>]) -> Result<Option<u64>, SharedError> {
        if ops.is_empty() {
            return Ok(None);
        }
        let mut st = self.state.write();
        self.write_locked(&mut st, ops)
    }

    /// Turns write combining on or off (off when opened). Turning it off
    /// does not flush: the next flush, sync or read does.
    pub fn set_combine_writes(&self, on: bool) {
        self.combine.store(on, Ordering::Relaxed);
        tracing::info!(dir = %self.wal.dir().display(), on, "shared log write combining");
    }

    /// Writes every staged batch to the file, in one positioned write (a
    /// no-op when nothing is staged). Durable only after a sync.
    ///
    /// Errors: [`SharedError::Unflushed`] when this or an earlier flush
    /// failed (the handle is fatal: reopen the log).
    pub fn flush(&self) -> Result<(), SharedError> {
        let mut staged = self.staged.lock();
        self.flush_locked(&mut staged)
    }

    fn flush_locked(&self, staged: &mut Staged) -> Result<(), SharedError> {
        if let Some(reason) = &staged.failed {
            return Err(SharedError::Unflushed {
                reason: reason.clone(),
            });
        }
        if staged.records.is_empty() {
            return Ok(());
        }
        let Staged { buf, records, .. } = &*staged;
        let written =
            self.wal
                .append_prefixed(records.iter().enumerate().map(|(i, &(lsn, end))| {
                    let start = i.checked_sub(1).map_or(0, |p| records[p].1);
                    (lsn, false, RecordPrefix::EMPTY, &buf[start..end])
                }));
        let count = records.len();
        let (first, last) = (records[0].0, records[count - 1].0);
        staged.buf.clear();
        staged.records.clear();
        staged.bytes = 0;
        match written {
            Ok(n) if n == count => {
                self.staged_from.store(u64::MAX, Ordering::Release);
                Ok(())
            }
            other => {
                let reason = match other {
                    Ok(n) => format!("{n} of {count} staged records were written"),
                    Err(e) => e.to_string(),
                };
                let reason =
                    format!("writing the staged records at lsn {first}..={last} failed: {reason}");
                tracing::error!(dir = %self.wal.dir().display(), %reason,
                    "shared log flush failed; the handle is fatal (reopen the log)");
                staged.failed = Some(reason.clone());
                self.unflushed.store(true, Ordering::Release);
                // Reads of these records (and later ones) now meet the
                // failure through `flush`; older ones are still served.
                self.staged_from.store(first, Ordering::Release);
                Err(SharedError::Unflushed { reason })
            }
        }
    }

    /// Stages `ops` (already applied to the index at LSNs from `first`)
    /// when combining is on and they fit the buffer and the active segment
    /// after what is staged; returns whether it did. When they do not fit,
    /// flushes what is staged, so that the caller's direct write follows it.
    fn stage(&self, first: u64, ops: &[Op<'_>]) -> Result<bool, SharedError> {
        if !self.combine.load(Ordering::Relaxed) {
            // Batches staged while combining was on still go first.
            if self.staged_from.load(Ordering::Acquire) != u64::MAX {
                self.flush()?;
            }
            return Ok(false);
        }
        let max_payload = self.wal.max_payload();
        let mut bytes = 0usize;
        for op in ops {
            let len = HEADER_BYTES + op.body().len();
            if len > max_payload {
                // The direct write refuses it with the `Wal`'s error.
                bytes = usize::MAX;
                break;
            }
            bytes = bytes.saturating_add(Wal::record_bytes(len));
        }
        let mut staged = self.staged.lock();
        if let Some(reason) = &staged.failed {
            return Err(SharedError::Unflushed {
                reason: reason.clone(),
            });
        }
        let fits = |s: &Staged| {
            s.records.len() + ops.len() <= MAX_STAGED_RECORDS
                && s.bytes.saturating_add(bytes) <= MAX_STAGED_BYTES
                && s.bytes.saturating_add(bytes) <= self.wal.active_room()
        };
        if !fits(&staged) {
            self.flush_locked(&mut staged)?;
            if !fits(&staged) {
                return Ok(false);
            }
        }
        if staged.records.is_empty() {
            self.staged_from.store(first, Ordering::Release);
        }
        for (i, op) in ops.iter().enumerate() {
            staged.buf.extend_from_slice(&op.header().encode());
            staged.buf.extend_from_slice(op.body());
            let end = staged.buf.len();
            staged.records.push((first + i as u64, end));
        }
        staged.bytes += bytes;
        Ok(true)
    }

    fn write_locked(&self, st: &mut State, ops: &[Op<'_>]) -> Result<Option<u64>, SharedError> {
        let first = st.next_lsn;
        let count = ops.len() as u64;
        if first.checked_add(count).is_none_or(|end| end > TAG_BIT) {
            return Err(SharedError::LsnExhausted { last: first - 1 });
        }
        let mut undo = std::mem::take(&mut st.undo);
        undo.clear();
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = st.apply(first + i as u64, i, op.header(), op.body(), Some(&mut undo)) {
                st.rollback(&mut undo, 0);
                st.undo = undo;
                return Err(e);
            }
        }
        match self.stage(first, ops) {
            Ok(true) => {
                st.next_lsn = first + count;
                undo.clear();
                st.undo = undo;
                return Ok(Some(first + count - 1));
            }
            Ok(false) => {}
            Err(e) => {
                st.rollback(&mut undo, 0);
                st.undo = undo;
                return Err(e);
            }
        }
        let written = self
            .wal
            .append_prefixed(ops.iter().enumerate().map(|(i, op)| {
                (
                    first + i as u64,
                    false,
                    RecordPrefix::from_array(op.header().encode()),
                    op.body(),
                )
            }));
        let result = match written {
            Ok(n) => {
                st.next_lsn = first + n as u64;
                Ok(Some(first + n as u64 - 1))
            }
            Err(e) => {
                // Keep what reached the log (a batch split over a roll may
                // land in part), undo the rest.
                let landed = self
                    .wal
                    .last_key()
                    .map_or(0, |l| l.saturating_add(1).saturating_sub(first));
                let landed = landed.min(count);
                st.rollback(&mut undo, landed as usize);
                st.next_lsn = first + landed;
                Err(e.into())
            }
        };
        undo.clear();
        st.undo = undo;
        result
    }

    /// Appends one entry to `group` (see [`Op::Entry`]); returns its LSN.
    pub fn append(&self, group: u64, key: u64, payload: &[u8]) -> Result<u64, SharedError> {
        self.write_one(Op::Entry {
            group,
            key,
            tagged: false,
            payload,
        })
    }

    /// Drops `group`'s entries above `after` (a record, durable at the next
    /// sync); returns its LSN.
    pub fn truncate_suffix(&self, group: u64, after: u64) -> Result<u64, SharedError> {
        self.write_one(Op::TruncateSuffix { group, after })
    }

    /// Drops `group`'s entries up to `upto` from its index at once (a
    /// record, durable at the next sync); the space returns with
    /// [`compact`](Self::compact). Returns the record's LSN.
    pub fn truncate_prefix(&self, group: u64, upto: u64) -> Result<u64, SharedError> {
        self.write_one(Op::TruncatePrefix { group, upto })
    }

    /// Replaces `group`'s state (durable at the next sync); returns its LSN.
    pub fn save_meta(&self, group: u64, state: &[u8]) -> Result<u64, SharedError> {
        self.write_one(Op::Meta { group, state })
    }

    /// Drops `group` (a record, durable at the next sync). Returns `false`,
    /// writing nothing, when the log holds no such group.
    pub fn remove_group(&self, group: u64) -> Result<bool, SharedError> {
        let mut st = self.state.write();
        if !st.groups.contains_key(&group) {
            return Ok(false);
        }
        self.write_locked(&mut st, &[Op::RemoveGroup { group }])?;
        Ok(true)
    }

    fn write_one(&self, op: Op<'_>) -> Result<u64, SharedError> {
        let mut st = self.state.write();
        let lsn = self.write_locked(&mut st, &[op])?;
        Ok(lsn.unwrap_or_default())
    }

    /// Makes every record written so far durable, for all groups, with one
    /// flush, and returns the durable LSN. May run on another thread while
    /// writes go on (they land in the next sync). A failed flush is fatal
    /// for the log handle (see [`crate::WalError::SyncFailed`]).
    pub fn sync(&self) -> Result<Option<u64>, SharedError> {
        self.flush()?;
        Ok(self.wal.sync()?)
    }

    /// Registers `group` with an empty log if the log holds no such group
    /// (within [`MAX_GROUPS`]); returns whether it was new. Nothing is
    /// written: a group that never gets a record is gone after a reopen.
    pub fn register_group(&self, group: u64) -> Result<bool, SharedError> {
        let mut st = self.state.write();
        if st.groups.contains_key(&group) {
            return Ok(false);
        }
        st.group_mut(group, 0, &mut None)?;
        Ok(true)
    }

    /// The payload of `group`'s entry at `key`, copied out (checksum
    /// verified, header checked against the index).
    pub fn get(&self, group: u64, key: u64) -> Result<Option<Vec<u8>>, SharedError> {
        let mut out = None;
        self.read(group, key, 1, usize::MAX, |e| {
            if e.key == key {
                out = Some(e.payload.to_vec());
            }
        })?;
        Ok(out)
    }

    /// Calls `visit` for `group`'s consecutive entries from key `from`
    /// (inclusive), stopping after `max_entries`, or before the entry that
    /// would take the payload bytes past `max_bytes` (the first entry is
    /// always visited whole). Returns the number visited. Each record's
    /// checksum is verified and its header checked against the index
    /// ([`SharedError::IndexMismatch`] otherwise). Writers wait while it
    /// runs: keep `visit` short.
    pub fn read(
        &self,
        group: u64,
        from: u64,
        max_entries: usize,
        max_bytes: usize,
        mut visit: impl FnMut(EntryRef<'_>),
    ) -> Result<usize, SharedError> {
        let st = self.state.read();
        let Some(g) = st.groups.get(&group) else {
            return Ok(0);
        };
        let mut reader = self.wal.reader();
        let mut bytes = 0usize;
        let mut n = 0;
        for &(key, tl) in g.entries.range(g.position(from)..) {
            if n >= max_entries {
                break;
            }
            let lsn = tl & !TAG_BIT;
            let tagged = tl & TAG_BIT != 0;
            let mismatch = |reason: String| SharedError::IndexMismatch {
                group,
                key,
                lsn,
                reason,
            };
            if lsn >= self.staged_from.load(Ordering::Acquire) {
                // Staged: to the file first (the reader's guard would keep
                // the flush out).
                drop(reader);
                self.flush()?;
                reader = self.wal.reader();
            }
            let rec = reader
                .record(lsn)?
                .ok_or_else(|| mismatch("the log holds no such record".into()))?;
            let (h, body) = decode_record(lsn, rec.payload)?;
            let want = if tagged {
                RecordKind::TaggedEntry
            } else {
                RecordKind::Entry
            };
            if h.group != group || h.key != key || h.kind != want {
                return Err(mismatch(format!(
                    "found {:?} of group {} key {}",
                    h.kind, h.group, h.key
                )));
            }
            if n > 0 && bytes.saturating_add(body.len()) > max_bytes {
                break;
            }
            bytes = bytes.saturating_add(body.len());
            visit(EntryRef {
                key,
                tagged,
                payload: body,
            });
            n += 1;
        }
        Ok(n)
    }

    /// `group`'s first key held.
    pub fn first_key(&self, group: u64) -> Option<u64> {
        let st = self.state.read();
        st.groups.get(&group)?.entries.front().map(|e| e.0)
    }

    /// `group`'s last key held.
    pub fn last_key(&self, group: u64) -> Option<u64> {
        let st = self.state.read();
        st.groups.get(&group)?.entries.back().map(|e| e.0)
    }

    /// `group`'s largest key below `bound`.
    pub fn last_key_below(&self, group: u64, bound: u64) -> Option<u64> {
        let st = self.state.read();
        let g = st.groups.get(&group)?;
        g.position(bound)
            .checked_sub(1)
            .and_then(|i| g.entries.get(i))
            .map(|e| e.0)
    }

    /// `group`'s smallest key at or above `from`.
    pub fn first_key_from(&self, group: u64, from: u64) -> Option<u64> {
        let st = self.state.read();
        let g = st.groups.get(&group)?;
        g.entries.get(g.position(from)).map(|e| e.0)
    }

    /// Number of entries `group` holds.
    pub fn len(&self, group: u64) -> usize {
        let st = self.state.read();
        st.groups.get(&group).map_or(0, |g| g.entries.len())
    }

    /// Keys of `group`'s tagged entries, ascending (a scan of its index in
    /// memory, no IO).
    pub fn tagged_keys(&self, group: u64) -> Vec<u64> {
        let st = self.state.read();
        st.groups.get(&group).map_or_else(Vec::new, |g| {
            g.entries
                .iter()
                .filter(|e| e.1 & TAG_BIT != 0)
                .map(|e| e.0)
                .collect()
        })
    }

    /// `group`'s latest state, `None` when it never saved one.
    pub fn meta(&self, group: u64) -> Option<Vec<u8>> {
        let st = self.state.read();
        let g = st.groups.get(&group)?;
        (g.meta_lsn != 0).then(|| g.meta.to_vec())
    }

    /// Whether the log holds (or has registered) `group`.
    pub fn contains_group(&self, group: u64) -> bool {
        self.state.read().groups.contains_key(&group)
    }

    /// The groups held, ascending.
    pub fn groups(&self) -> Vec<u64> {
        let st = self.state.read();
        let mut v: Vec<u64> = st.groups.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Number of groups held.
    pub fn group_count(&self) -> usize {
        self.state.read().groups.len()
    }

    /// The LSN of the last record written (durable or not, staged or not).
    pub fn last_lsn(&self) -> Option<u64> {
        let next = self.state.read().next_lsn;
        next.checked_sub(1).filter(|&l| l > 0)
    }

    /// The highest LSN made durable by a sync (or by recovery).
    pub fn durable_lsn(&self) -> Option<u64> {
        self.wal.durable_key()
    }

    /// Number of live segment files.
    pub fn segment_count(&self) -> usize {
        self.wal.segment_count()
    }

    /// Whether an earlier failure (a sync, or a flush of staged records)
    /// made the log handle fatal.
    pub fn is_poisoned(&self) -> bool {
        self.wal.is_poisoned() || self.unflushed.load(Ordering::Acquire)
    }

    /// The underlying log (for its statistics; writing to it directly
    /// would break the shared log's records). Staged records are not in it
    /// until a [`flush`](Self::flush).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Reclaims the segments no group needs: writes again the live state of
    /// every group whose state record sits in them, syncs, and cuts the log
    /// below the oldest entry any group still holds (at a segment
    /// boundary). Returns what it did and the groups whose entries keep
    /// sealed segments alive, oldest first. Writes go on meanwhile, except
    /// while the states are written.
    pub fn compact(&self) -> Result<CompactReport, SharedError> {
        let _one = self.compacting.lock();
        let firsts = self.wal.segment_first_keys();
        let mut report = CompactReport::default();
        {
            let mut st = self.state.write();
            let floor = st
                .groups
                .values()
                .filter_map(|g| g.entries.front().map(|e| e.1 & !TAG_BIT))
                .min()
                .unwrap_or(u64::MAX);
            // The newest segment boundary at or below the floor: everything
            // before it can go once the states there are moved.
            let cut = firsts.iter().copied().filter(|&f| f <= floor).max();
            if let (Some(cut), Some(&oldest)) = (cut, firsts.first()) {
                if cut > oldest {
                    let moved: Vec<(u64, Box<[u8]>)> = st
                        .groups
                        .iter()
                        .filter(|(_, g)| g.meta_lsn != 0 && g.meta_lsn < cut)
                        .map(|(&id, g)| (id, g.meta.clone()))
                        .collect();
                    let ops: Vec<Op<'_>> = moved
                        .iter()
                        .map(|(group, state)| Op::Meta {
                            group: *group,
                            state,
                        })
                        .collect();
                    self.write_locked(&mut st, &ops)?;
                    report.metas_rewritten = ops.len();
                    report.reclaimed_below = cut;
                }
            }
        }
        if report.reclaimed_below > 0 {
            // The moved states (and every truncation record) are durable
            // before the segments holding the old ones go.
            self.sync()?;
            report.segments_removed = self.wal.truncate_prefix(report.reclaimed_below)?;
        }
        let kept = self.wal.segment_first_keys();
        report.segments = kept.len();
        report.oldest_segment_end = kept.get(1).copied();
        let active = kept.last().copied().unwrap_or(u64::MAX);
        let st = self.state.read();
        let mut holders: Vec<Holder> = st
            .groups
            .iter()
            .filter_map(|(&group, g)| {
                let &(first_key, tl) = g.entries.front()?;
                let lsn = tl & !TAG_BIT;
                (lsn < active).then_some(Holder {
                    group,
                    first_key,
                    lsn,
                })
            })
            .collect();
        holders.sort_unstable_by_key(|h| h.lsn);
        holders.truncate(MAX_HOLDERS_REPORTED);
        report.holders = holders;
        if report.segments_removed > 0 || !report.holders.is_empty() {
            tracing::debug!(
                removed = report.segments_removed,
                rewritten = report.metas_rewritten,
                holders = report.holders.len(),
                "shared log compacted"
            );
        }
        Ok(report)
    }

    /// Syncs, then closes the log (see [`Wal::close`](crate::Wal::close)).
    pub fn close(self) -> Result<(), SharedError> {
        self.flush()?;
        Ok(self.wal.close()?)
    }
}
