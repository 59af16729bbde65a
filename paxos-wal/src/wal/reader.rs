//! Reads: records borrowed from the map under a read guard, and the
//! log's key getters.

use std::collections::BTreeSet;
use std::path::Path;

use parking_lot::RwLockReadGuard;

use super::{Inner, Wal};
use crate::error::WalError;
use crate::format::SEGMENT_HEADER_BYTES;

/// A record borrowed from the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's key.
    pub key: u64,
    /// Whether the record was appended tagged
    /// ([`Wal::append_batch_tagged`]).
    pub tagged: bool,
    /// The payload, borrowed from the mapped segment.
    pub payload: &'a [u8],
}

impl Wal {
    /// A read guard: records borrowed from the map, without copies. Writers
    /// wait while it is alive.
    pub fn reader(&self) -> WalReader<'_> {
        WalReader {
            guard: self.inner.read(),
        }
    }

    /// Copy out the payload of `key`, if present (checksum verified). Its
    /// tag is in [`WalReader::record`] and [`tagged_keys`](Self::tagged_keys).
    pub fn get(&self, key: u64) -> Result<Option<Vec<u8>>, WalError> {
        Ok(self.inner.read().record(key)?.map(|r| r.payload.to_vec()))
    }

    /// Keys of the tagged records the log holds, ascending (a copy; see
    /// [`WalReader::tagged_keys`] to borrow them).
    pub fn tagged_keys(&self) -> Vec<u64> {
        self.inner.read().tagged_keys.iter().copied().collect()
    }

    /// First key in the log.
    pub fn first_key(&self) -> Option<u64> {
        self.inner.read().first_key()
    }

    /// Last key appended (durable or not).
    pub fn last_key(&self) -> Option<u64> {
        self.inner.read().last_key
    }

    /// Highest key made durable by a completed `sync` (or by recovery).
    pub fn durable_key(&self) -> Option<u64> {
        self.inner.read().durable_key
    }

    /// Number of live segment files.
    pub fn segment_count(&self) -> usize {
        self.inner.read().segments.len()
    }

    /// The first key each live segment was started for, oldest first: the
    /// boundaries [`truncate_prefix`](Self::truncate_prefix) cuts at (a
    /// segment goes once the next one starts at or below its argument).
    pub fn segment_first_keys(&self) -> Vec<u64> {
        self.inner
            .read()
            .segments
            .iter()
            .map(|s| s.header.first_key)
            .collect()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an earlier flush failure made this handle fatal.
    pub fn is_poisoned(&self) -> bool {
        self.inner.read().poisoned.is_some()
    }
}

/// A read guard over the log; see [`Wal::reader`].
pub struct WalReader<'a> {
    guard: RwLockReadGuard<'a, Inner>,
}

impl std::fmt::Debug for WalReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalReader")
            .field("last_key", &self.guard.last_key)
            .finish()
    }
}

impl<'a> WalReader<'a> {
    /// The payload of `key`, borrowed from the map (checksum verified).
    pub fn get(&self, key: u64) -> Result<Option<&[u8]>, WalError> {
        self.guard.record(key).map(|r| r.map(|r| r.payload))
    }

    /// The record of `key` (payload borrowed from the map, tag included),
    /// checksum verified.
    pub fn record(&self, key: u64) -> Result<Option<Record<'_>>, WalError> {
        self.guard.record(key)
    }

    /// Keys of the tagged records the log holds, ascending. Each names a
    /// record [`record`](Self::record) returns while this reader lives.
    pub fn tagged_keys(&self) -> &BTreeSet<u64> {
        &self.guard.tagged_keys
    }

    /// Iterate over records with keys >= `key`, in key order, borrowing from
    /// the map. Each record's checksum is verified; a mismatch yields an
    /// error and ends the iteration.
    pub fn iter_from(&self, key: u64) -> WalIter<'_> {
        let pos = self.guard.locate(key);
        WalIter {
            inner: &self.guard,
            pos,
            done: pos.is_none(),
        }
    }

    /// First key in the log.
    pub fn first_key(&self) -> Option<u64> {
        self.guard.first_key()
    }

    /// Last key appended.
    pub fn last_key(&self) -> Option<u64> {
        self.guard.last_key
    }

    /// Highest durable key.
    pub fn durable_key(&self) -> Option<u64> {
        self.guard.durable_key
    }
}

/// Iterator over records from a key onwards; see [`WalReader::iter_from`].
pub struct WalIter<'a> {
    inner: &'a Inner,
    pos: Option<(usize, usize)>,
    done: bool,
}

impl std::fmt::Debug for WalIter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalIter").field("pos", &self.pos).finish()
    }
}

impl<'a> Iterator for WalIter<'a> {
    type Item = Result<Record<'a>, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let (mut si, mut off) = self.pos?;
        let segs = &self.inner.segments;
        // Bounded by the number of segments.
        while si < segs.len() && off >= segs[si].write_pos {
            si += 1;
            off = SEGMENT_HEADER_BYTES;
        }
        if si >= segs.len() {
            self.done = true;
            return None;
        }
        match segs[si].record_at(off) {
            Ok((rec, size)) => {
                self.pos = Some((si, off + size));
                Some(Ok(rec))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
