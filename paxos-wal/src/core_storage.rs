//! `paxos-core`'s [`Storage`] over the WAL and the hard-state file
//! (feature `paxos-core`, on by default).
//!
//! Log keys are zxids (`Zxid::as_u64`), payloads are entry data, and an
//! entry's kind is the record's tag (tagged: [`EntryKind::Config`]). The kernel's
//! hard state (accepted and current epoch) lives in a [`HardStateStore`]
//! beside the log. Writes follow the kernel's `Ready` order; a `sync` makes
//! the log durable (group commit: every append since the last sync shares one
//! flush) and *then* writes a saved hard state. That order matters: a
//! `current_epoch` that reached the disk before the entries it vouches for
//! would let a replica that crashed in between win an election with a
//! history it does not hold.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use paxos_core::{
    Entry, EntryKind, Epoch, HardState as CoreHardState, MetaKey, Storage, StorageError, Zxid,
};

use crate::{HardStateRecord, HardStateStore, OpenReport, Wal, WalError, WalOptions};

/// File name of the hard state inside a [`WalStorage`] directory.
pub const HARD_STATE_FILE: &str = "hardstate";
/// Subdirectory holding the log segments inside a [`WalStorage`] directory.
pub const LOG_DIR: &str = "log";
/// The hard-state file's spare field that keeps the kernel's *recovering*
/// flag (`Storage::recovering`, non-zero when set); reserved:
/// [`WalStorage::set_extra`] refuses it.
pub const RECOVERING_FIELD: usize = crate::HARD_STATE_EXTRA_FIELDS - 1;

/// A replica's durable state: the WAL for entries and a two-slot file for
/// the hard state. Implements [`paxos_core::Storage`].
///
/// ```
/// use bytes::Bytes;
/// use paxos_core::{Entry, Epoch, Storage, Zxid};
/// use paxos_wal::{WalOptions, WalStorage};
///
/// let dir = std::env::temp_dir().join(format!("wal-storage-doc-{}", std::process::id()));
/// let options = WalOptions { segment_bytes: 1 << 20, ..WalOptions::default() };
/// let (mut storage, _report) = WalStorage::open(&dir, options.clone()).unwrap();
/// let z = Zxid::new(Epoch(1), 1);
/// storage.append(&[Entry::command(z, Bytes::from_static(b"put k v"))]).unwrap();
/// storage.sync().unwrap();
/// drop(storage);
/// let (storage, _) = WalStorage::open(&dir, options).unwrap();
/// assert_eq!(storage.last_zxid(), Some(z));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
#[derive(Debug)]
pub struct WalStorage {
    wal: Arc<Wal>,
    hard: HardStateStore,
    /// A hard state saved since the last sync; written after the log flush.
    pending_hard: Option<CoreHardState>,
    /// A recovering flag saved since the last sync; written with the hard state.
    pending_recovering: Option<bool>,
    /// The hard-state file did not exist when this storage was opened.
    hard_state_created: bool,
    dir: PathBuf,
}

/// The hard-state file's spare field that holds a [`MetaKey`]: the election
/// round in field 0 and the compaction mark in field 1, where the reference
/// node kept them before the node layer existed (so data directories stay
/// readable).
fn meta_field(key: MetaKey) -> usize {
    key.slot()
}

/// The entry kind a record's tag stands for: tagged records are membership
/// changes ([`EntryKind::Config`]), the rest commands.
fn kind_of(tagged: bool) -> EntryKind {
    if tagged {
        EntryKind::Config
    } else {
        EntryKind::Command
    }
}

/// A WAL error as a storage error, keeping it as the source.
fn io(e: WalError) -> StorageError {
    StorageError::io("write-ahead log", e)
}

/// A failed write: [`Refused`](StorageError::Refused) when the log handle is
/// still usable (the disk refused, nothing held was damaged: a full disk),
/// [`Io`](StorageError::Io) once the handle is poisoned (a failed flush).
fn write_error(wal: &Wal, what: &str, e: WalError) -> StorageError {
    if wal.is_poisoned() {
        StorageError::io(format!("{what} (log handle poisoned)"), e)
    } else {
        StorageError::refused(what.to_string(), e)
    }
}

fn to_core(hs: HardStateRecord) -> Result<CoreHardState, StorageError> {
    let epoch = |v: u64, what: &str| {
        u32::try_from(v).map(Epoch).map_err(|_| {
            StorageError::Corrupt(format!("hard state: {what} {v} does not fit an epoch"))
        })
    };
    Ok(CoreHardState {
        accepted_epoch: epoch(hs.accepted_epoch, "accepted epoch")?,
        current_epoch: epoch(hs.current_epoch, "current epoch")?,
    })
}

impl WalStorage {
    /// Opens (or creates) the storage in `dir`: the log under `dir/log`, the
    /// hard state in `dir/hardstate`. The report says what recovery found.
    pub fn open(
        dir: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<(WalStorage, OpenReport), WalError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(crate::error::io_err("create storage dir", &dir))?;
        let (wal, report) = Wal::open(dir.join(LOG_DIR), options)?;
        let hard_state_created = !dir.join(HARD_STATE_FILE).exists();
        let hard = HardStateStore::open(dir.join(HARD_STATE_FILE))?;
        if to_core(hard.get()).is_err() {
            // Epochs above u32 cannot have been written by the kernel: the
            // file is not ours, or damaged in a way its CRC did not catch.
            return Err(WalError::HardStateCorrupted {
                path: dir.join(HARD_STATE_FILE),
            });
        }
        Ok((
            WalStorage {
                wal: Arc::new(wal),
                hard,
                pending_hard: None,
                pending_recovering: None,
                hard_state_created,
                dir,
            },
            report,
        ))
    }

    /// The underlying log.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// A shared handle on the log, so that another thread can run
    /// [`Wal::sync`] while this storage keeps serving reads. A caller that
    /// syncs elsewhere must not report entries persisted before that sync
    /// returns, and must call [`Storage::sync`] itself for a batch that saved
    /// a hard state ([`has_pending_hard_state`](Self::has_pending_hard_state)):
    /// only that writes it.
    pub fn wal_handle(&self) -> Arc<Wal> {
        Arc::clone(&self.wal)
    }

    /// The directory this storage lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a saved hard state (or recovering flag) waits for the next
    /// [`Storage::sync`].
    pub fn has_pending_hard_state(&self) -> bool {
        self.pending_hard.is_some() || self.pending_recovering.is_some()
    }

    /// Whether the hard-state file did not exist when this storage was
    /// opened: a new node, or a node whose data directory (or just its
    /// hard-state file) was lost. A driver that knows the node belongs to an
    /// existing cluster should then start the replica recovering
    /// (`Replica::mark_recovering`), unless the flag is already set
    /// ([`Storage::recovering`]).
    pub fn hard_state_created(&self) -> bool {
        self.hard_state_created
    }

    /// One of the hard-state file's spare `u64` fields (index below
    /// [`HARD_STATE_EXTRA_FIELDS`](crate::HARD_STATE_EXTRA_FIELDS)), 0 when
    /// never written. The reference node keeps its election round there.
    pub fn extra(&self, index: usize) -> Option<u64> {
        self.hard.get().extra.get(index).copied()
    }

    /// Durably sets a spare field of the hard-state file (synced on return),
    /// keeping the epochs as they are.
    pub fn set_extra(&mut self, index: usize, value: u64) -> Result<(), StorageError> {
        if index == RECOVERING_FIELD {
            return Err(StorageError::Unsupported(format!(
                "hard state extra field {index} is reserved for the recovering flag"
            )));
        }
        let mut stored = self.hard.get();
        let Some(slot) = stored.extra.get_mut(index) else {
            return Err(StorageError::Unsupported(format!(
                "hard state has no extra field {index}"
            )));
        };
        *slot = value;
        self.hard.set(&stored).map_err(io)
    }

    /// The last zxid of an epoch, searched by the gapless counter: the
    /// entries of `epoch` from `first` on are consecutive, so the last one is
    /// the largest counter `c` whose zxid the log holds.
    fn epoch_end(&self, first: Zxid) -> Result<Zxid, StorageError> {
        let reader = self.wal.reader();
        let holds = |c: u32| -> Result<bool, StorageError> {
            reader
                .get(Zxid::new(first.epoch(), c).as_u64())
                .map(|r| r.is_some())
                .map_err(io)
        };
        let (mut lo, mut hi) = (first.counter(), u32::MAX);
        // Invariant: `lo` is held; every counter above `hi` is not.
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if holds(mid)? {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        Ok(Zxid::new(first.epoch(), lo))
    }
}

impl Storage for WalStorage {
    fn hard_state(&self) -> CoreHardState {
        if let Some(hs) = self.pending_hard {
            return hs;
        }
        // `open` refused a file whose epochs do not fit, and `sync` writes
        // only kernel epochs, so the conversion cannot fail here.
        to_core(self.hard.get()).unwrap_or_default()
    }

    fn first_zxid(&self) -> Option<Zxid> {
        self.wal.first_key().map(Zxid)
    }

    fn last_zxid(&self) -> Option<Zxid> {
        self.wal.last_key().map(Zxid)
    }

    fn epoch_ends(&self) -> Result<Vec<Zxid>, StorageError> {
        let mut ends = Vec::new();
        let Some(mut first) = self.first_zxid() else {
            return Ok(ends);
        };
        let last = self.last_zxid().unwrap_or(first);
        // One iteration per epoch present in the log (at most 2^32).
        loop {
            let end = self.epoch_end(first)?;
            ends.push(end);
            if end >= last {
                break;
            }
            let Some(next_epoch) = end.epoch().next() else {
                break;
            };
            let reader = self.wal.reader();
            let next = reader.iter_from(Zxid::new(next_epoch, 0).as_u64()).next();
            match next {
                Some(Ok(rec)) => first = Zxid(rec.key),
                Some(Err(e)) => return Err(io(e)),
                None => break,
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
        if let Some(first) = self.first_zxid() {
            if from < first {
                return Err(StorageError::Compacted(from));
            }
        }
        let reader = self.wal.reader();
        let mut bytes = 0usize;
        for (n, rec) in reader.iter_from(from.as_u64()).enumerate() {
            if n >= max_entries {
                break;
            }
            let rec = rec.map_err(io)?;
            if n > 0 && bytes + rec.payload.len() > max_bytes {
                break;
            }
            bytes += rec.payload.len();
            out.push(Entry {
                zxid: Zxid(rec.key),
                kind: kind_of(rec.tagged),
                data: Bytes::copy_from_slice(rec.payload),
            });
        }
        Ok(())
    }

    /// Answered from the log's set of tagged keys, which recovery rebuilt in
    /// its scan and appends and truncations keep: only the config records
    /// are read, under one read guard (so the set and the records agree).
    fn config_entries(&self) -> Result<Vec<Entry>, StorageError> {
        let reader = self.wal.reader();
        let mut out = Vec::with_capacity(reader.tagged_keys().len());
        for &key in reader.tagged_keys() {
            let rec = reader
                .record(key)
                .map_err(io)?
                .filter(|r| r.tagged)
                .ok_or_else(|| {
                    StorageError::Corrupt(format!(
                        "config entry {:?} is listed, but the log holds no tagged record there",
                        Zxid(key)
                    ))
                })?;
            out.push(Entry {
                zxid: Zxid(rec.key),
                kind: EntryKind::Config,
                data: Bytes::copy_from_slice(rec.payload),
            });
        }
        Ok(out)
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        if let (Some(first), Some(last)) = (entries.first(), self.last_zxid()) {
            if first.zxid <= last {
                return Err(StorageError::OutOfOrder {
                    zxid: first.zxid,
                    last: Some(last),
                });
            }
        }
        // The kind travels as the record's tag: no copy of the payloads.
        self.wal
            .append_batch_tagged(
                entries
                    .iter()
                    .map(|e| (e.zxid.as_u64(), e.is_config(), &e.data[..])),
            )
            .map(|_| ())
            .map_err(|e| write_error(&self.wal, "appending entries", e))
    }

    fn truncate_suffix(&mut self, after: Zxid) -> Result<(), StorageError> {
        tracing::info!(dir = %self.dir.display(), ?after, "truncating log suffix");
        self.wal
            .truncate_suffix(after.as_u64())
            .map_err(|e| write_error(&self.wal, "truncating the log's suffix", e))
    }

    fn truncate_prefix(&mut self, upto: Zxid) -> Result<(), StorageError> {
        // The WAL drops whole segments below its argument, so entries up to
        // `upto` (and possibly fewer) go.
        let removed = self
            .wal
            .truncate_prefix(upto.as_u64().saturating_add(1))
            .map_err(|e| write_error(&self.wal, "dropping the log's prefix", e))?;
        if removed > 0 {
            tracing::debug!(?upto, removed, "log prefix truncated");
        }
        Ok(())
    }

    fn save_hard_state(&mut self, hs: CoreHardState) -> Result<(), StorageError> {
        // Durable at the next sync, after the log it vouches for.
        self.pending_hard = Some(hs);
        Ok(())
    }

    fn recovering(&self) -> bool {
        match self.pending_recovering {
            Some(r) => r,
            None => self
                .hard
                .get()
                .extra
                .get(RECOVERING_FIELD)
                .is_some_and(|v| *v != 0),
        }
    }

    fn save_recovering(&mut self, recovering: bool) -> Result<(), StorageError> {
        // Like the hard state: durable at the next sync, after the log (a
        // cleared flag vouches for the history synced from the leader).
        self.pending_recovering = Some(recovering);
        Ok(())
    }

    fn meta(&self, key: MetaKey) -> u64 {
        self.extra(meta_field(key)).unwrap_or(0)
    }

    fn save_meta(&mut self, key: MetaKey, value: u64) -> Result<(), StorageError> {
        self.set_extra(meta_field(key), value)
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        self.wal.sync().map_err(io)?;
        if self.pending_hard.is_some() || self.pending_recovering.is_some() {
            let mut stored = self.hard.get();
            if let Some(hs) = self.pending_hard {
                stored.accepted_epoch = u64::from(hs.accepted_epoch.0);
                stored.current_epoch = u64::from(hs.current_epoch.0);
            }
            if let (Some(r), Some(slot)) = (
                self.pending_recovering,
                stored.extra.get_mut(RECOVERING_FIELD),
            ) {
                *slot = u64::from(r);
            }
            self.hard.set(&stored).map_err(io)?;
            self.pending_hard = None;
            self.pending_recovering = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(e: u32, c: u32) -> Entry {
        Entry {
            kind: Default::default(),
            zxid: Zxid::new(Epoch(e), c),
            data: Bytes::from(format!("{e}.{c}")),
        }
    }

    fn options() -> WalOptions {
        WalOptions {
            segment_bytes: 64 << 10,
            prepare_in_background: false,
            ..WalOptions::default()
        }
    }

    #[test]
    fn storage_survives_reopen_with_epoch_ends_and_hard_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = WalStorage::open(dir.path(), options()).unwrap();
            let batch: Vec<Entry> = (1..=50)
                .map(|c| entry(1, c))
                .chain((1..=7).map(|c| entry(3, c)))
                .chain((1..=300).map(|c| entry(4, c)))
                .collect();
            s.append(&batch).unwrap();
            s.save_hard_state(CoreHardState {
                accepted_epoch: Epoch(5),
                current_epoch: Epoch(4),
            })
            .unwrap();
            s.sync().unwrap();
            assert!(!s.has_pending_hard_state());
        }
        let (mut s, _) = WalStorage::open(dir.path(), options()).unwrap();
        assert_eq!(s.hard_state().accepted_epoch, Epoch(5));
        assert_eq!(s.hard_state().current_epoch, Epoch(4));
        assert_eq!(
            s.epoch_ends().unwrap(),
            vec![
                Zxid::new(Epoch(1), 50),
                Zxid::new(Epoch(3), 7),
                Zxid::new(Epoch(4), 300)
            ]
        );
        let mut out = Vec::new();
        s.entries(Zxid::new(Epoch(3), 6), 4, usize::MAX, &mut out)
            .unwrap();
        let got: Vec<Zxid> = out.iter().map(|e| e.zxid).collect();
        assert_eq!(
            got,
            vec![
                Zxid::new(Epoch(3), 6),
                Zxid::new(Epoch(3), 7),
                Zxid::new(Epoch(4), 1),
                Zxid::new(Epoch(4), 2)
            ]
        );
        assert_eq!(&out[0].data[..], b"3.6");
        // TRUNC: drop the epoch-4 suffix and continue the log in epoch 5.
        s.truncate_suffix(Zxid::new(Epoch(3), 7)).unwrap();
        s.append(&[entry(5, 1)]).unwrap();
        s.sync().unwrap();
        drop(s);
        let (s, _) = WalStorage::open(dir.path(), options()).unwrap();
        assert_eq!(
            s.epoch_ends().unwrap(),
            vec![
                Zxid::new(Epoch(1), 50),
                Zxid::new(Epoch(3), 7),
                Zxid::new(Epoch(5), 1)
            ]
        );
    }

    #[test]
    fn out_of_order_append_is_refused_and_byte_limit_is_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, _) = WalStorage::open(dir.path(), options()).unwrap();
        s.append(&[entry(1, 1), entry(1, 2), entry(1, 3)]).unwrap();
        assert!(matches!(
            s.append(&[entry(1, 2)]),
            Err(StorageError::OutOfOrder { .. })
        ));
        let mut out = Vec::new();
        // The first entry always comes whole; the byte limit stops the rest.
        s.entries(Zxid::new(Epoch(1), 1), 10, 1, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert!(s.epoch_ends().unwrap() == vec![Zxid::new(Epoch(1), 3)]);
    }

    #[test]
    fn hard_state_reaches_the_disk_only_with_the_sync_after_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let hs = CoreHardState {
            accepted_epoch: Epoch(3),
            current_epoch: Epoch(3),
        };
        {
            let (mut s, _) = WalStorage::open(dir.path(), options()).unwrap();
            s.append(&[entry(3, 1)]).unwrap();
            s.save_hard_state(hs).unwrap();
            // Reads see the write at once...
            assert_eq!(s.hard_state(), hs);
            assert!(s.has_pending_hard_state());
            // ...but a crash before the sync loses it (the handle is dropped
            // without syncing; the file keeps the old value).
        }
        let (mut s, _) = WalStorage::open(dir.path(), options()).unwrap();
        assert_eq!(s.hard_state(), CoreHardState::default());
        s.save_hard_state(hs).unwrap();
        s.sync().unwrap();
        assert!(!s.has_pending_hard_state());
        drop(s);
        let (s, _) = WalStorage::open(dir.path(), options()).unwrap();
        assert_eq!(s.hard_state(), hs);
    }

    #[test]
    fn extra_fields_persist_beside_the_epochs() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = WalStorage::open(dir.path(), options()).unwrap();
            s.save_hard_state(CoreHardState {
                accepted_epoch: Epoch(2),
                current_epoch: Epoch(1),
            })
            .unwrap();
            s.sync().unwrap();
            s.set_extra(0, 77).unwrap();
            assert!(s.set_extra(usize::MAX, 1).is_err());
        }
        let (s, _) = WalStorage::open(dir.path(), options()).unwrap();
        assert_eq!(s.extra(0), Some(77));
        assert_eq!(s.hard_state().accepted_epoch, Epoch(2));
        assert_eq!(s.extra(usize::MAX), None);
    }

    #[test]
    fn recovering_flag_is_durable_only_after_sync_and_reserved() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut s, _) = WalStorage::open(dir.path(), options()).unwrap();
            assert!(s.hard_state_created());
            assert!(!s.recovering());
            s.save_recovering(true).unwrap();
            assert!(s.recovering());
            assert!(s.has_pending_hard_state());
            // Dropped without a sync: the flag is lost with the crash.
        }
        {
            let (mut s, _) = WalStorage::open(dir.path(), options()).unwrap();
            assert!(!s.hard_state_created());
            assert!(!s.recovering());
            s.save_recovering(true).unwrap();
            s.sync().unwrap();
            assert!(s.set_extra(RECOVERING_FIELD, 0).is_err());
            s.set_extra(0, 9).unwrap();
        }
        {
            let (mut s, _) = WalStorage::open(dir.path(), options()).unwrap();
            assert!(s.recovering(), "the flag survives a restart");
            assert_eq!(s.extra(0), Some(9));
            s.append(&[entry(2, 1)]).unwrap();
            s.save_hard_state(CoreHardState {
                accepted_epoch: Epoch(2),
                current_epoch: Epoch(2),
            })
            .unwrap();
            s.save_recovering(false).unwrap();
            s.sync().unwrap();
        }
        let (s, _) = WalStorage::open(dir.path(), options()).unwrap();
        assert!(!s.recovering());
        assert_eq!(s.hard_state().current_epoch, Epoch(2));
        assert_eq!(s.last_zxid(), Some(Zxid::new(Epoch(2), 1)));
    }

    fn config(e: u32, c: u32) -> Entry {
        Entry {
            kind: EntryKind::Config,
            zxid: Zxid::new(Epoch(e), c),
            data: Bytes::from(format!("members {e}.{c}")),
        }
    }

    /// Every entry of the log, read through `entries` in one call.
    fn all_entries(s: &WalStorage) -> Vec<Entry> {
        let mut out = Vec::new();
        if let Some(first) = s.first_zxid() {
            s.entries(first, usize::MAX, usize::MAX, &mut out).unwrap();
        }
        out
    }

    /// What the trait's default `config_entries` (a read of the whole log)
    /// answers for the same storage: `Hooked` does not override it.
    fn config_entries_by_full_read(s: WalStorage) -> (Vec<Entry>, WalStorage) {
        struct NoHooks;
        impl paxos_core::StorageHooks for NoHooks {}
        let h = paxos_core::Hooked {
            inner: s,
            hooks: NoHooks,
        };
        let got = h.config_entries().unwrap();
        (got, h.inner)
    }

    /// Epoch 1: commands 1..=40 with config entries at counters 5, 17 and 40;
    /// epoch 2: a config entry first, then commands 2..=30.
    fn mixed_log() -> Vec<Entry> {
        let mut v: Vec<Entry> = (1..=40)
            .map(|c| {
                if [5, 17, 40].contains(&c) {
                    config(1, c)
                } else {
                    entry(1, c)
                }
            })
            .collect();
        v.push(config(2, 1));
        v.extend((2..=30).map(|c| entry(2, c)));
        v
    }

    /// `assert_eq!` for entries with large payloads: on a mismatch it shows
    /// positions and kinds rather than every payload byte.
    fn same(got: Vec<Entry>, want: Vec<Entry>, what: &str) {
        let ids = |v: &[Entry]| v.iter().map(|e| (e.zxid, e.kind)).collect::<Vec<_>>();
        assert_eq!(ids(&got), ids(&want), "{what}");
        assert!(got == want, "{what}: payloads differ");
    }

    fn configs_of(v: &[Entry]) -> Vec<Entry> {
        v.iter().filter(|e| e.is_config()).cloned().collect()
    }

    #[test]
    fn entry_kinds_round_trip_through_append_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = mixed_log();
        {
            let (mut s, _) = WalStorage::open(dir.path(), options()).unwrap();
            // One batch, then single entries.
            s.append(&log[..20]).unwrap();
            for e in &log[20..] {
                s.append(std::slice::from_ref(e)).unwrap();
            }
            assert_eq!(all_entries(&s), log, "read back before a sync");
            assert_eq!(s.config_entries().unwrap(), configs_of(&log));
            s.sync().unwrap();
        }
        let (s, report) = WalStorage::open(dir.path(), options()).unwrap();
        assert!(report.torn_tail.is_none() && report.damaged.is_none());
        assert_eq!(all_entries(&s), log, "kinds survive a reopen");
        let got = s.config_entries().unwrap();
        assert_eq!(got, configs_of(&log));
        assert_eq!(got.len(), 4);
        let (full, _) = config_entries_by_full_read(s);
        assert_eq!(full, got, "the index agrees with a read of the whole log");
    }

    #[test]
    fn config_entries_follow_suffix_and_prefix_truncation() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments and large payloads: the log spans many segments,
        // so a prefix truncation drops whole ones.
        let opts = WalOptions {
            segment_bytes: crate::MIN_SEGMENT_BYTES,
            ..options()
        };
        let pad = |mut e: Entry| {
            e.data = Bytes::from(vec![e.zxid.counter() as u8; 1500]);
            e
        };
        let log: Vec<Entry> = mixed_log().into_iter().map(pad).collect();
        let (mut s, _) = WalStorage::open(dir.path(), opts.clone()).unwrap();
        s.append(&log).unwrap();
        s.sync().unwrap();
        assert!(s.wal().segment_count() > 4);
        // TRUNC into epoch 1, after the config entry at 17: 40 and 2.1 go.
        s.truncate_suffix(Zxid::new(Epoch(1), 30)).unwrap();
        let kept: Vec<Entry> = log[..30].to_vec();
        same(
            s.config_entries().unwrap(),
            configs_of(&kept),
            "after the suffix cut",
        );
        // A new config entry after the cut is listed, the old ones are not.
        let next = config(3, 1);
        s.append(std::slice::from_ref(&next)).unwrap();
        s.sync().unwrap();
        let mut expect = configs_of(&kept);
        expect.push(next.clone());
        same(
            s.config_entries().unwrap(),
            expect.clone(),
            "after an append",
        );
        drop(s);
        let (mut s, _) = WalStorage::open(dir.path(), opts.clone()).unwrap();
        same(
            s.config_entries().unwrap(),
            expect.clone(),
            "after a reopen",
        );
        // Cleanup past the config entry at 5: whatever entries remain, the
        // listed configs are exactly those still in the log.
        s.truncate_prefix(Zxid::new(Epoch(1), 12)).unwrap();
        let first = s.first_zxid().unwrap();
        assert!(first > Zxid::new(Epoch(1), 5), "the segment with 1.5 went");
        let remaining: Vec<Entry> = expect.iter().filter(|e| e.zxid >= first).cloned().collect();
        same(
            s.config_entries().unwrap(),
            remaining.clone(),
            "after the prefix cut",
        );
        same(
            configs_of(&all_entries(&s)),
            remaining.clone(),
            "read through entries",
        );
        drop(s);
        let (s, _) = WalStorage::open(dir.path(), opts).unwrap();
        same(
            s.config_entries().unwrap(),
            remaining.clone(),
            "after the last reopen",
        );
        let (full, _) = config_entries_by_full_read(s);
        same(full, remaining, "by a full read");
    }
}
