//! The storage seam: what the kernel reads, and the writes the caller
//! applies from each [`Ready`](crate::Ready).
//!
//! The kernel never writes: it *reads* through [`Storage`] (hard state, log
//! bounds, entries, epoch boundaries) and *asks* for writes in each `Ready`.
//! The caller performs them with the write half of the trait, syncs, and
//! reports completion with [`Replica::persisted`](crate::Replica::persisted).
//! `paxos-wal` (a `u64`-keyed byte log plus a two-slot hard-state file)
//! implements this trait; [`MemStorage`] is the in-memory version.

use std::collections::VecDeque;
use std::fmt;

use crate::message::{Entry, HardState};
use crate::ready::Ready;
use crate::Zxid;

/// The error an implementation reports underneath a [`StorageError`]: an
/// `std::io::Error`, or the implementation's own error type.
pub type StorageSource = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A storage failure, as reported by an implementation.
///
/// The three IO kinds tell a caller what it may do next: after
/// [`Refused`](StorageError::Refused) the storage is intact and the same
/// write may be retried later (a full disk); after
/// [`Io`](StorageError::Io) the handle may be unusable and the process
/// should restart and recover from disk; [`Corrupt`](StorageError::Corrupt)
/// means what was read back cannot be trusted.
#[derive(Debug, Clone)]
pub enum StorageError {
    /// An entry was appended out of order.
    OutOfOrder {
        /// The appended entry.
        zxid: Zxid,
        /// The log's last zxid.
        last: Option<Zxid>,
    },
    /// The requested entry is no longer held (below the retained prefix).
    Compacted(Zxid),
    /// The medium refused a write but nothing held was damaged (ENOSPC
    /// when a segment is created, say): the write may be retried.
    Refused {
        /// What was being written.
        context: String,
        /// The underlying error.
        source: StorageSource,
    },
    /// An IO error of the underlying medium; the handle may be unusable.
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: StorageSource,
    },
    /// State read back from the medium is inconsistent (a damaged or
    /// foreign file), so it cannot be used as it is.
    Corrupt(String),
    /// The implementation cannot do what was asked (a feature it lacks).
    Unsupported(String),
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::OutOfOrder { zxid, last } => {
                write!(
                    f,
                    "append of {zxid:?} does not follow the last zxid {last:?}"
                )
            }
            StorageError::Compacted(z) => write!(f, "entry {z:?} is compacted away"),
            StorageError::Refused { context, source } => {
                write!(f, "storage refused a write ({context}): {source}")
            }
            StorageError::Io { context, source } => {
                write!(f, "storage io error ({context}): {source}")
            }
            StorageError::Corrupt(what) => write!(f, "stored state is inconsistent: {what}"),
            StorageError::Unsupported(what) => write!(f, "storage cannot do this: {what}"),
        }
    }
}

/// Written by hand rather than derived: the source is shared (so the error
/// stays `Clone`), and `source()` hands out the underlying error itself, so
/// a caller can downcast it (to `std::io::Error`, say).
impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Refused { source, .. } | StorageError::Io { source, .. } => {
                Some(&**source)
            }
            _ => None,
        }
    }
}

impl StorageError {
    /// An [`Io`](StorageError::Io) error with its context and source.
    pub fn io(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StorageError {
        StorageError::Io {
            context: context.into(),
            source: std::sync::Arc::new(source),
        }
    }

    /// A [`Refused`](StorageError::Refused) error with its context and source.
    pub fn refused(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StorageError {
        StorageError::Refused {
            context: context.into(),
            source: std::sync::Arc::new(source),
        }
    }

    /// Whether the storage is intact and the failed write may be retried
    /// later ([`Refused`](StorageError::Refused)).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Refused { .. })
    }
}

/// Two storage errors are equal when they are of the same kind and say the
/// same thing (sources are compared by their message).
impl PartialEq for StorageError {
    fn eq(&self, other: &StorageError) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for StorageError {}

/// The persistent state of one replica: hard state and the log.
///
/// Reads must reflect every write applied so far, synced or not. Writes are
/// applied by the caller, in the order the `Ready`s were returned, and
/// become durable at the next [`sync`](Storage::sync).
pub trait Storage {
    /// The hard state as last saved.
    fn hard_state(&self) -> HardState;

    /// The first zxid held in the log, `None` when it holds no entry.
    fn first_zxid(&self) -> Option<Zxid>;

    /// The last zxid held in the log, `None` when it holds no entry.
    fn last_zxid(&self) -> Option<Zxid>;

    /// For each epoch with entries in the log, the last zxid of that epoch,
    /// ascending. Read once when a replica starts.
    fn epoch_ends(&self) -> Result<Vec<Zxid>, StorageError>;

    /// Appends to `out` the consecutive entries starting at `from`
    /// (inclusive), stopping after `max_entries` entries or once
    /// `max_bytes` of payload is reached; the first entry is always
    /// returned whole even if larger. Appends nothing if `from` is past
    /// the last entry.
    fn entries(
        &self,
        from: Zxid,
        max_entries: usize,
        max_bytes: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError>;

    /// Appends entries (strictly increasing, after the last one), each
    /// with its [`EntryKind`](crate::EntryKind), which [`entries`] must
    /// give back.
    ///
    /// [`entries`]: Storage::entries
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError>;

    /// The membership-change entries ([`EntryKind::Config`]) held in the
    /// log, in order. Read once when a replica starts. The default reads
    /// the whole log through [`entries`](Storage::entries); a storage that
    /// indexes them as it recovers should answer from that index.
    ///
    /// [`EntryKind::Config`]: crate::EntryKind::Config
    fn config_entries(&self) -> Result<Vec<Entry>, StorageError> {
        let mut out = Vec::new();
        let (Some(first), Some(last)) = (self.first_zxid(), self.last_zxid()) else {
            return Ok(out);
        };
        let mut from = first;
        let mut batch = Vec::new();
        // Bounded: every round reads at least one entry and moves past it.
        loop {
            batch.clear();
            self.entries(from, 4096, 4 << 20, &mut batch)?;
            let Some(end) = batch.last().map(|e| e.zxid) else {
                return Ok(out);
            };
            out.extend(batch.drain(..).filter(Entry::is_config));
            if end >= last {
                return Ok(out);
            }
            from = Zxid(end.0 + 1);
        }
    }

    /// Drops every entry with zxid greater than `after` (TRUNC sync).
    fn truncate_suffix(&mut self, after: Zxid) -> Result<(), StorageError>;

    /// Drops every entry with zxid less than or equal to `upto` (cleanup
    /// after apply and snapshot). An implementation may keep more, never less.
    fn truncate_prefix(&mut self, upto: Zxid) -> Result<(), StorageError>;

    /// Saves the hard state (durable at the next sync).
    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError>;

    /// Whether the replica was marked *recovering* (its durable state was
    /// lost or damaged; see [`Replica::mark_recovering`](crate::Replica::mark_recovering))
    /// and has not been readmitted since, as last saved. Read once when a
    /// replica starts. The default, for storages that cannot keep the flag,
    /// is `false`.
    fn recovering(&self) -> bool {
        false
    }

    /// Saves the recovering flag (durable at the next sync, like the hard
    /// state, and never before the log writes of the same `Ready`). The
    /// default refuses: a storage that cannot keep the flag cannot host a
    /// recovering replica, because a restart would silently turn it back
    /// into a voter.
    fn save_recovering(&mut self, recovering: bool) -> Result<(), StorageError> {
        Err(StorageError::Unsupported(format!(
            "this storage cannot persist the recovering flag (wanted {recovering})"
        )))
    }

    /// A small durable value kept beside the hard state (see [`MetaKey`]),
    /// 0 when never saved. The default, for storages that cannot keep
    /// them, is 0.
    fn meta(&self, key: MetaKey) -> u64 {
        let _ = key;
        0
    }

    /// Saves a [`MetaKey`] value durably: it is on the medium when this
    /// returns (these change rarely: once per election round or per
    /// snapshot). The default refuses, so a node over a storage that cannot
    /// keep them stops with a clear error rather than forgetting a vote.
    fn save_meta(&mut self, key: MetaKey, value: u64) -> Result<(), StorageError> {
        Err(StorageError::Unsupported(format!(
            "this storage cannot persist {key:?} (wanted {value})"
        )))
    }

    /// Writes a [`MetaKey`] value that need only be durable at the next
    /// sync, for a storage whose state is in its log
    /// ([`state_in_log`](Storage::state_in_log)): a record ordered with the
    /// other writes, which any later sync makes durable (a crash keeps it
    /// exactly when it keeps the writes before it). The node layer then
    /// holds back what depends on the value (the votes of a new election
    /// round) until such a sync, instead of flushing the log once per
    /// value; a host of thousands of groups enters thousands of rounds at
    /// once after a failure. The default is [`save_meta`](Storage::save_meta),
    /// durable at once, which is stronger.
    fn write_meta(&mut self, key: MetaKey, value: u64) -> Result<(), StorageError> {
        self.save_meta(key, value)
    }

    /// Makes every previous write durable.
    fn sync(&mut self) -> Result<(), StorageError>;

    /// Whether the hard state, the recovering flag and suffix truncations
    /// are records of the log itself, in the order they were written with
    /// its entries, so that any sync of the log covers them and a crash
    /// keeps a prefix of them all (a log shared by many groups). The node
    /// layer then syncs them with the background sync, like entries,
    /// instead of inline (what waits for them is still released only after
    /// a sync that covers them). Default `false`: a separate hard-state
    /// file written at sync time, which needs the inline sync.
    fn state_in_log(&self) -> bool {
        false
    }

    /// Applies the writes of `ready` in the required order: suffix
    /// truncation, append, hard state, recovering flag, prefix cleanup.
    /// Does not sync.
    fn write_ready(&mut self, ready: &Ready) -> Result<(), StorageError> {
        if let Some(after) = ready.truncate_after {
            self.truncate_suffix(after)?;
        }
        if !ready.entries.is_empty() {
            self.append(&ready.entries)?;
        }
        if let Some(hs) = ready.hard_state {
            self.save_hard_state(hs)?;
        }
        if let Some(recovering) = ready.recovering {
            self.save_recovering(recovering)?;
        }
        if let Some(upto) = ready.compact_to {
            self.truncate_prefix(upto)?;
        }
        Ok(())
    }
}

/// What a [`Hooked`] storage does around the calls it passes on: fault
/// injection in tests, a slow disk in a chaos run.
pub trait StorageHooks {
    /// Called before every write (append, truncation, hard state, flag,
    /// meta value); an error refuses the write, which is then not made.
    fn before_write(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Called before every sync.
    fn before_sync(&self) {}
}

/// A storage that passes every call on to `inner`, calling `hooks` around
/// the writes and syncs.
#[derive(Debug)]
pub struct Hooked<S, H> {
    /// The storage the calls go to.
    pub inner: S,
    /// What is done around them.
    pub hooks: H,
}

impl<S: Storage, H: StorageHooks> Storage for Hooked<S, H> {
    fn hard_state(&self) -> HardState {
        self.inner.hard_state()
    }
    fn first_zxid(&self) -> Option<Zxid> {
        self.inner.first_zxid()
    }
    fn last_zxid(&self) -> Option<Zxid> {
        self.inner.last_zxid()
    }
    fn epoch_ends(&self) -> Result<Vec<Zxid>, StorageError> {
        self.inner.epoch_ends()
    }
    fn entries(
        &self,
        from: Zxid,
        max_entries: usize,
        max_bytes: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        self.inner.entries(from, max_entries, max_bytes, out)
    }
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        self.hooks.before_write()?;
        self.inner.append(entries)
    }
    fn truncate_suffix(&mut self, after: Zxid) -> Result<(), StorageError> {
        self.hooks.before_write()?;
        self.inner.truncate_suffix(after)
    }
    fn truncate_prefix(&mut self, upto: Zxid) -> Result<(), StorageError> {
        self.hooks.before_write()?;
        self.inner.truncate_prefix(upto)
    }
    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.hooks.before_write()?;
        self.inner.save_hard_state(hs)
    }
    fn recovering(&self) -> bool {
        self.inner.recovering()
    }
    fn save_recovering(&mut self, recovering: bool) -> Result<(), StorageError> {
        self.hooks.before_write()?;
        self.inner.save_recovering(recovering)
    }
    fn meta(&self, key: MetaKey) -> u64 {
        self.inner.meta(key)
    }
    fn save_meta(&mut self, key: MetaKey, value: u64) -> Result<(), StorageError> {
        self.hooks.before_write()?;
        self.inner.save_meta(key, value)
    }
    fn write_meta(&mut self, key: MetaKey, value: u64) -> Result<(), StorageError> {
        self.hooks.before_write()?;
        self.inner.write_meta(key, value)
    }
    fn state_in_log(&self) -> bool {
        self.inner.state_in_log()
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        self.hooks.before_sync();
        self.inner.sync()
    }
}

/// The small durable values the node layer ([`crate::node`]) keeps beside
/// the hard state through [`Storage::meta`] and [`Storage::save_meta`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetaKey {
    /// The election round last entered: a restarted node must never vote
    /// twice in one round (the elector's contract), so the round is durable
    /// before any vote of it leaves.
    ElectionRound,
    /// The log was compacted up to here: starting from this log needs a
    /// snapshot at or above it. Recorded before the prefix goes.
    CompactionMark,
    /// The newest membership-change entry this node knew committed: after
    /// a restart its elector counts that membership, not its log's base
    /// (a hint for liveness only; losing it costs nothing else).
    CommittedConfig,
}

impl MetaKey {
    /// Every key, in a fixed order (the index of a key in this array is the
    /// slot an implementation may store it in).
    pub const ALL: [MetaKey; 3] = [
        MetaKey::ElectionRound,
        MetaKey::CompactionMark,
        MetaKey::CommittedConfig,
    ];

    /// The key's slot: its index in [`MetaKey::ALL`].
    pub fn slot(self) -> usize {
        match self {
            MetaKey::ElectionRound => 0,
            MetaKey::CompactionMark => 1,
            MetaKey::CommittedConfig => 2,
        }
    }
}

/// An in-memory [`Storage`] for tests, simulations and users who persist
/// elsewhere. `sync` does nothing: everything is "durable" at once.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hs: HardState,
    recovering: bool,
    meta: [u64; MetaKey::ALL.len()],
    entries: VecDeque<Entry>,
}

impl MemStorage {
    /// An empty storage.
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Number of entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry at `zxid`, if held.
    pub fn get(&self, zxid: Zxid) -> Option<&Entry> {
        self.position(zxid).ok().map(|i| &self.entries[i])
    }

    fn position(&self, zxid: Zxid) -> Result<usize, usize> {
        // Counters are gapless within an epoch, so a zxid of the same epoch
        // as the last (or first) entry is found by arithmetic: O(1) for the
        // reads near the tail and cleanups near the head that dominate.
        let n = self.entries.len();
        if let (Some(first), Some(last)) = (self.entries.front(), self.entries.back()) {
            if zxid.epoch() == last.zxid.epoch() && zxid <= last.zxid {
                let back = (last.zxid.counter() - zxid.counter()) as usize;
                if back < n && self.entries[n - 1 - back].zxid == zxid {
                    return Ok(n - 1 - back);
                }
            }
            if zxid.epoch() == first.zxid.epoch() && zxid >= first.zxid {
                let fwd = (zxid.counter() - first.zxid.counter()) as usize;
                if fwd < n && self.entries[fwd].zxid == zxid {
                    return Ok(fwd);
                }
            }
        }
        self.entries.binary_search_by_key(&zxid, |e| e.zxid)
    }
}

impl Storage for MemStorage {
    fn hard_state(&self) -> HardState {
        self.hs
    }

    fn first_zxid(&self) -> Option<Zxid> {
        self.entries.front().map(|e| e.zxid)
    }

    fn last_zxid(&self) -> Option<Zxid> {
        self.entries.back().map(|e| e.zxid)
    }

    fn epoch_ends(&self) -> Result<Vec<Zxid>, StorageError> {
        let mut ends: Vec<Zxid> = Vec::new();
        for e in &self.entries {
            match ends.last_mut() {
                Some(last) if last.epoch() == e.zxid.epoch() => *last = e.zxid,
                _ => ends.push(e.zxid),
            }
        }
        Ok(ends)
    }

    fn entries(
        &self,
        from: Zxid,
        max_entries: usize,
        max_bytes: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        let start = match self.position(from) {
            Ok(i) => i,
            Err(i) if i == 0 && !self.entries.is_empty() => {
                return Err(StorageError::Compacted(from))
            }
            Err(i) => i,
        };
        let mut bytes = 0usize;
        for (n, e) in self.entries.range(start..).enumerate() {
            if n >= max_entries || (n > 0 && bytes + e.data.len() > max_bytes) {
                break;
            }
            bytes += e.data.len();
            out.push(e.clone());
        }
        Ok(())
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let mut last = self.last_zxid();
        for e in entries {
            if last.is_some_and(|l| l >= e.zxid) {
                return Err(StorageError::OutOfOrder { zxid: e.zxid, last });
            }
            last = Some(e.zxid);
        }
        self.entries.extend(entries.iter().cloned());
        Ok(())
    }

    fn truncate_suffix(&mut self, after: Zxid) -> Result<(), StorageError> {
        let keep = match self.position(after) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        self.entries.truncate(keep);
        Ok(())
    }

    fn truncate_prefix(&mut self, upto: Zxid) -> Result<(), StorageError> {
        let drop = match self.position(upto) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        self.entries.drain(..drop);
        Ok(())
    }

    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        self.hs = hs;
        Ok(())
    }

    fn recovering(&self) -> bool {
        self.recovering
    }

    fn save_recovering(&mut self, recovering: bool) -> Result<(), StorageError> {
        self.recovering = recovering;
        Ok(())
    }

    fn meta(&self, key: MetaKey) -> u64 {
        self.meta[key.slot()]
    }

    fn save_meta(&mut self, key: MetaKey, value: u64) -> Result<(), StorageError> {
        self.meta[key.slot()] = value;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Epoch;
    use bytes::Bytes;

    fn e(ep: u32, c: u32) -> Entry {
        Entry {
            kind: Default::default(),
            zxid: Zxid::new(Epoch(ep), c),
            data: Bytes::from(vec![c as u8; 4]),
        }
    }

    #[test]
    fn mem_storage_reads_truncates_and_refuses_disorder() {
        let mut s = MemStorage::new();
        s.append(&[e(1, 1), e(1, 2), e(1, 3), e(2, 1), e(2, 2)])
            .unwrap();
        assert_eq!(
            s.epoch_ends().unwrap(),
            vec![Zxid::new(Epoch(1), 3), Zxid::new(Epoch(2), 2)]
        );
        let mut out = Vec::new();
        s.entries(Zxid::new(Epoch(1), 2), 10, 8, &mut out).unwrap();
        assert_eq!(
            out.iter().map(|e| e.zxid).collect::<Vec<_>>(),
            vec![Zxid::new(Epoch(1), 2), Zxid::new(Epoch(1), 3)]
        );
        assert!(s.append(&[e(1, 9)]).is_err());
        s.truncate_suffix(Zxid::new(Epoch(1), 3)).unwrap();
        assert_eq!(s.last_zxid(), Some(Zxid::new(Epoch(1), 3)));
        s.truncate_prefix(Zxid::new(Epoch(1), 1)).unwrap();
        assert_eq!(s.first_zxid(), Some(Zxid::new(Epoch(1), 2)));
        assert_eq!(
            s.entries(Zxid::new(Epoch(1), 1), 1, 1, &mut out),
            Err(StorageError::Compacted(Zxid::new(Epoch(1), 1)))
        );
    }
}
