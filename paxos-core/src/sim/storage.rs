//! The simulated disk: reads see every write; a write becomes durable only
//! through a sync that covers it, and what no sync covered is lost when the
//! node crashes. It can also refuse writes while staying intact (a full
//! disk), which drives the node layer's stall path.
//!
//! Several disks can share one host's write-ahead log ([`SharedLog`]):
//! their writes are then numbered in one order, a sync by any of them
//! covers every write of every one made before it started, and a host
//! crash keeps a prefix of that one order ([`SharedLog::crash`]).

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

use crate::message::{Entry, HardState};
use crate::storage::{MemStorage, MetaKey, Storage, StorageError};
use crate::Zxid;

/// One disk operation not yet synced, with its sequence number.
#[derive(Clone, Debug)]
enum DiskOp {
    Trunc(Zxid),
    Append(Vec<Entry>),
    Hs(HardState),
    Recovering(bool),
    Compact(Zxid),
    Meta(MetaKey, u64),
}

/// A simulated disk (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct SimStorage {
    volatile: MemStorage,
    durable: MemStorage,
    /// Writes not yet durable, in order, numbered from `next_op - len`.
    pending: VecDeque<(u64, DiskOp)>,
    next_op: u64,
    refuse_writes: bool,
    /// The host's shared log, when this disk is one group's view of it:
    /// writes are then numbered in the host's order.
    log: Option<SharedLog>,
    /// Report `Storage::state_in_log`: the hard state, the recovering flag
    /// and truncations are ordered with the entries here (every write is a
    /// numbered operation that only a covering sync makes durable), so
    /// either answer is true to this disk; `true` exercises the node
    /// layer's background path for them.
    state_in_log: bool,
}

/// Where a host's shared log stands: how many writes it has numbered, and
/// below which number every write is durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LogMarks {
    next: u64,
    synced: u64,
}

/// One simulated host's write-ahead log, shared by the disks of every
/// group the host runs ([`SharedLog::open`]).
///
/// The writes of all groups get numbers in one order, the order the log
/// would write them in. A sync started when [`written`](Self::written) was
/// `p` makes every write numbered below `p` durable, whichever group made
/// it. A crash keeps the writes below a cut point somewhere between
/// [`synced`](Self::synced) and `written`, in every group alike: what
/// survives is a prefix of the host's order.
#[derive(Clone, Debug, Default)]
pub struct SharedLog(Rc<Cell<LogMarks>>);

impl SharedLog {
    /// An empty log.
    pub fn new() -> SharedLog {
        SharedLog::default()
    }

    /// A group's disk on this log, starting from `durable` (what the group
    /// held when the host last went down).
    pub fn open(&self, durable: MemStorage) -> SimStorage {
        let mut disk = SimStorage::from_durable(durable);
        disk.log = Some(self.clone());
        disk
    }

    /// How many writes the log has numbered (the point a sync started now
    /// covers).
    pub fn written(&self) -> u64 {
        self.0.get().next
    }

    /// Every write numbered below this is durable.
    pub fn synced(&self) -> u64 {
        self.0.get().synced
    }

    /// Whether `disk` is one of this log's.
    pub fn holds(&self, disk: &SimStorage) -> bool {
        disk.log.as_ref().is_some_and(|l| Rc::ptr_eq(&l.0, &self.0))
    }

    /// The host crashes: a cut point is drawn between
    /// [`synced`](Self::synced) and [`written`](Self::written), and every
    /// disk in `groups` keeps exactly its writes numbered below it (see
    /// [`SimStorage::crash_at`]). Disks not on this log are left alone.
    /// Returns the cut point.
    pub fn crash(&self, rng: &mut crate::rng::Rng, groups: &mut [&mut SimStorage]) -> u64 {
        let marks = self.0.get();
        let cut = rng.range(marks.synced, marks.next);
        for disk in groups.iter_mut() {
            if self.holds(disk) {
                disk.crash_at(cut);
            }
        }
        // Nothing unsynced is left on the log: later writes start a fresh tail.
        self.0.set(LogMarks {
            next: marks.next,
            synced: marks.next,
        });
        cut
    }

    fn next_number(&self) -> u64 {
        let mut m = self.0.get();
        let n = m.next;
        m.next += 1;
        self.0.set(m);
        n
    }

    fn mark_synced(&self, point: u64) {
        let mut m = self.0.get();
        m.synced = m.synced.max(point.min(m.next));
        self.0.set(m);
    }
}

/// The error a full simulated disk answers.
#[derive(Debug, thiserror::Error)]
#[error("simulated disk full")]
struct DiskFull;

impl SimStorage {
    /// Whether this disk answers `Storage::state_in_log` with `true`.
    pub fn set_state_in_log(&mut self, on: bool) {
        self.state_in_log = on;
    }

    pub(crate) fn from_durable(durable: MemStorage) -> SimStorage {
        SimStorage {
            volatile: durable.clone(),
            durable,
            pending: VecDeque::new(),
            next_op: 0,
            refuse_writes: false,
            log: None,
            state_in_log: false,
        }
    }

    /// The durable image.
    pub fn durable(&self) -> &MemStorage {
        &self.durable
    }

    /// A point a background sync started now covers: every write so far
    /// (on a shared log, every write of every group of the host).
    pub fn sync_point(&self) -> u64 {
        match &self.log {
            Some(log) => log.written(),
            None => self.next_op,
        }
    }

    /// Makes durable the writes made before `point` (a background sync that
    /// started when [`sync_point`](Self::sync_point) returned it). Writes
    /// made after it started stay volatile, as on a real disk. On a shared
    /// log the writes of the other groups below `point` become durable too
    /// (their images catch up in [`settle`](Self::settle)).
    pub fn sync_upto(&mut self, point: u64) -> Result<(), StorageError> {
        if let Some(log) = &self.log {
            log.mark_synced(point);
        }
        self.apply_below(point)
    }

    /// On a shared log: brings the durable image up to what the host's
    /// syncs made durable, including syncs asked for by other groups. The
    /// image may lag behind until this is called, never ahead of it.
    pub fn settle(&mut self) -> Result<(), StorageError> {
        match self.log.as_ref().map(SharedLog::synced) {
            Some(point) => self.apply_below(point),
            None => Ok(()),
        }
    }

    /// The host crashes with its log cut at `cut`: the writes numbered
    /// below it are durable, every later one is lost. The disk is left as
    /// a restart finds it (its [`durable`](Self::durable) image).
    pub fn crash_at(&mut self, cut: u64) {
        if let Err(e) = self.apply_below(cut) {
            tracing::warn!(error = %e, "sim: a surviving write did not apply to the durable image");
        }
        self.pending.clear();
        self.volatile = self.durable.clone();
    }

    fn apply_below(&mut self, point: u64) -> Result<(), StorageError> {
        while self.pending.front().is_some_and(|(seq, _)| *seq < point) {
            if let Some((_, op)) = self.pending.pop_front() {
                apply(&mut self.durable, op)?;
            }
        }
        Ok(())
    }

    /// While set, every write is refused and leaves the disk as it was.
    pub(crate) fn set_refuse_writes(&mut self, refuse: bool) {
        self.refuse_writes = refuse;
    }

    fn write(&mut self, op: DiskOp) -> Result<(), StorageError> {
        if self.refuse_writes {
            return Err(StorageError::refused("simulated write", DiskFull));
        }
        apply(&mut self.volatile, op.clone())?;
        let seq = match &self.log {
            Some(log) => log.next_number(),
            None => {
                self.next_op += 1;
                self.next_op - 1
            }
        };
        self.pending.push_back((seq, op));
        Ok(())
    }
}

fn apply(disk: &mut MemStorage, op: DiskOp) -> Result<(), StorageError> {
    match op {
        DiskOp::Trunc(z) => disk.truncate_suffix(z),
        DiskOp::Append(e) => disk.append(&e),
        DiskOp::Hs(hs) => disk.save_hard_state(hs),
        DiskOp::Recovering(r) => disk.save_recovering(r),
        DiskOp::Compact(z) => disk.truncate_prefix(z),
        DiskOp::Meta(key, value) => disk.save_meta(key, value),
    }
}

impl Storage for SimStorage {
    fn hard_state(&self) -> HardState {
        self.volatile.hard_state()
    }
    fn first_zxid(&self) -> Option<Zxid> {
        self.volatile.first_zxid()
    }
    fn last_zxid(&self) -> Option<Zxid> {
        self.volatile.last_zxid()
    }
    fn epoch_ends(&self) -> Result<Vec<Zxid>, StorageError> {
        self.volatile.epoch_ends()
    }
    fn entries(
        &self,
        from: Zxid,
        max_entries: usize,
        max_bytes: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        self.volatile.entries(from, max_entries, max_bytes, out)
    }
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.write(DiskOp::Append(entries.to_vec()))
    }
    fn truncate_suffix(&mut self, after: Zxid) -> Result<(), StorageError> {
        self.write(DiskOp::Trunc(after))
    }
    fn truncate_prefix(&mut self, upto: Zxid) -> Result<(), StorageError> {
        self.write(DiskOp::Compact(upto))
    }
    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.write(DiskOp::Hs(hs))
    }
    fn recovering(&self) -> bool {
        self.volatile.recovering()
    }
    fn save_recovering(&mut self, recovering: bool) -> Result<(), StorageError> {
        self.write(DiskOp::Recovering(recovering))
    }
    fn meta(&self, key: MetaKey) -> u64 {
        self.volatile.meta(key)
    }
    fn save_meta(&mut self, key: MetaKey, value: u64) -> Result<(), StorageError> {
        if self.refuse_writes {
            return Err(StorageError::refused("simulated metadata write", DiskFull));
        }
        // Durable on return, like the hard-state file's synced write.
        self.volatile.save_meta(key, value)?;
        self.durable.save_meta(key, value)
    }
    fn write_meta(&mut self, key: MetaKey, value: u64) -> Result<(), StorageError> {
        if !self.state_in_log {
            return self.save_meta(key, value);
        }
        // A record of the log: durable only once a sync covers it.
        self.write(DiskOp::Meta(key, value))
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        self.sync_upto(self.sync_point())
    }
    fn state_in_log(&self) -> bool {
        self.state_in_log
    }
}
