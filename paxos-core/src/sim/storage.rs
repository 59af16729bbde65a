//! The simulated disk: reads see every write; a write becomes durable only
//! through a sync that covers it, and what no sync covered is lost when the
//! node crashes. It can also refuse writes while staying intact (a full
//! disk), which drives the node layer's stall path.

use std::collections::VecDeque;

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
}

/// The error a full simulated disk answers.
#[derive(Debug, thiserror::Error)]
#[error("simulated disk full")]
struct DiskFull;

impl SimStorage {
    pub(crate) fn from_durable(durable: MemStorage) -> SimStorage {
        SimStorage {
            volatile: durable.clone(),
            durable,
            pending: VecDeque::new(),
            next_op: 0,
            refuse_writes: false,
        }
    }

    /// The durable image.
    pub fn durable(&self) -> &MemStorage {
        &self.durable
    }

    /// A point a background sync started now covers: every write so far.
    pub(crate) fn sync_point(&self) -> u64 {
        self.next_op
    }

    /// Makes durable the writes made before `point` (a background sync that
    /// started when [`sync_point`](Self::sync_point) returned it). Writes
    /// made after it started stay volatile, as on a real disk.
    pub(crate) fn sync_upto(&mut self, point: u64) -> Result<(), StorageError> {
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
        self.pending.push_back((self.next_op, op));
        self.next_op += 1;
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
    fn sync(&mut self) -> Result<(), StorageError> {
        self.sync_upto(self.next_op)
    }
}
