//! The log itself: segments, appends, group-commit sync, reads, truncation and
//! recovery.
//!
//! - `options`: what a caller chooses; `report`: what `open` reports;
//! - `recovery`: `Wal::open`, step by step;
//! - `segment`: one segment file (map, index, positioned writes, flushes);
//! - `spare`: spare segment files and the background preparer;
//! - `write`: appends, rolls and the group-commit sync;
//! - `truncate`: prefix and suffix truncation; `reader`: reads.
//!
//! This file holds the handle, its locked state, and closing.

mod options;
mod reader;
mod recovery;
mod report;
mod segment;
mod spare;
mod truncate;
mod write;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};

use crate::error::WalError;
use crate::faults::{self, FaultPlan, FaultPoint};
use crate::format::RECORD_HEADER_BYTES;

pub use options::{
    RecoveryMode, SyncMethod, WalOptions, DEFAULT_SEGMENT_BYTES, MAX_SEGMENT_BYTES,
    MIN_SEGMENT_BYTES,
};
pub use reader::{Record, WalIter, WalReader};
pub use report::{DamagedRange, OpenReport, RewrittenTail, TornTail};
use segment::Segment;
use spare::SpareCtx;
#[cfg(feature = "shared")]
pub(crate) use write::RecordPrefix;

/// Segment sizes, and the offsets pre-faulting starts from, are multiples
/// of this.
const SEGMENT_ALIGN_BYTES: u64 = 4096;
/// Zeros for record padding and for zeroing ranges.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

struct Inner {
    segments: Vec<Segment>,
    next_segment_id: u64,
    last_key: Option<u64>,
    durable_key: Option<u64>,
    /// First unflushed position: (segment id, offset).
    dirty_from: Option<(u64, usize)>,
    /// The end marker holds a watermark newer than what is on disk.
    marker_unflushed: bool,
    poisoned: Option<String>,
    /// Keys of the tagged records in `segments`. Filled by the recovery scan
    /// and kept by appends and truncations; one entry per tagged record
    /// held, so it is bounded by the log's own size (a record takes at least
    /// a header on disk) and small when tags are rare, as intended.
    tagged_keys: BTreeSet<u64>,
    /// Staging buffers of the last batch, kept for reuse.
    scratch: (Vec<u8>, Vec<(u64, usize, u32)>),
}

impl Inner {
    /// No segments yet; the next one gets `next_segment_id`.
    fn empty(next_segment_id: u64) -> Inner {
        Inner {
            segments: Vec::new(),
            next_segment_id,
            last_key: None,
            durable_key: None,
            dirty_from: None,
            marker_unflushed: false,
            poisoned: None,
            tagged_keys: BTreeSet::new(),
            scratch: (Vec::new(), Vec::new()),
        }
    }

    fn check_poison(&self) -> Result<(), WalError> {
        match &self.poisoned {
            Some(reason) => Err(WalError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn mark_dirty(&mut self, id: u64, off: usize) {
        self.dirty_from = Some(match self.dirty_from {
            Some(d) if d <= (id, off) => d,
            _ => (id, off),
        });
    }

    /// Position of the first record with key >= `key`: (segment index, offset).
    fn locate(&self, key: u64) -> Option<(usize, usize)> {
        let i = self.segments.partition_point(|s| s.header.first_key <= key);
        let start = i.saturating_sub(1);
        self.segments
            .iter()
            .enumerate()
            .skip(start)
            .find_map(|(idx, s)| s.find_at_or_after(key).map(|off| (idx, off)))
    }

    fn first_key(&self) -> Option<u64> {
        self.segments.iter().find_map(|s| s.first_key)
    }

    fn record(&self, key: u64) -> Result<Option<Record<'_>>, WalError> {
        match self.locate(key) {
            Some((i, off)) => {
                let (rec, _) = self.segments[i].record_at(off)?;
                Ok((rec.key == key).then_some(rec))
            }
            None => Ok(None),
        }
    }
}

/// An open write-ahead log. See the [crate docs](crate) for the format, the
/// durability contract and recovery.
///
/// # Thread safety
///
/// `Wal` is `Send + Sync`; share it with `Arc`. Methods take `&self` and use
/// an internal `parking_lot::RwLock`:
/// - writers ([`append`](Self::append), [`append_batch`](Self::append_batch),
///   the truncations) take the lock exclusively, so there is one writer at a
///   time and it waits for open [`WalReader`]s to be dropped;
/// - [`sync`](Self::sync) holds an upgradable read lock while flushing, so
///   readers keep reading during the flush and only writers wait;
/// - readers ([`reader`](Self::reader), [`get`](Self::get), the key getters)
///   share the lock. A [`WalReader`] borrows records straight from the map,
///   so keep it short-lived on a busy log, and never call a writer method or
///   `sync` on a thread that holds one (that waits for itself forever).
pub struct Wal {
    dir: PathBuf,
    dir_file: File,
    _lock: File,
    segment_bytes: u64,
    max_payload: usize,
    sync_method: SyncMethod,
    max_spares: usize,
    prefault_ahead: usize,
    faults: Option<Arc<FaultPlan>>,
    spares: Arc<SpareCtx>,
    preparer: Option<JoinHandle<()>>,
    /// Serializes flushes: [`Wal::sync`] flushes outside `inner`, and the
    /// durable key may only advance over a range no other flush still owns.
    /// Lock order: `sync_lock`, then `inner`.
    sync_lock: Mutex<()>,
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.inner.read();
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("segments", &g.segments.len())
            .field("last_key", &g.last_key)
            .field("durable_key", &g.durable_key)
            .field("poisoned", &g.poisoned)
            .finish()
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.wal"))
}

fn fsync_dir(dir_file: &File, dir: &Path, faults: Option<&FaultPlan>) -> Result<(), WalError> {
    faults::check(faults, FaultPoint::Flush)
        .and_then(|()| dir_file.sync_all())
        .map_err(|source| WalError::SyncFailed {
            path: dir.to_path_buf(),
            source,
        })
}

impl Wal {
    /// Sync, flush the end marker, and close. Dropping a `Wal` does the same
    /// on a best-effort basis, without reporting errors.
    pub fn close(mut self) -> Result<(), WalError> {
        let r = self
            .sync()
            .and_then(|_| self.flush_marker())
            .and_then(|()| fsync_dir(&self.dir_file, &self.dir, self.faults.as_deref()));
        self.shutdown_preparer();
        r
    }

    fn flush_marker(&self) -> Result<(), WalError> {
        let _serial = self.sync_lock.lock();
        let mut g = self.inner.write();
        g.check_poison()?;
        if !g.marker_unflushed {
            return Ok(());
        }
        let wm = g.durable_key.unwrap_or(0);
        let faults = self.faults.as_deref();
        let written = g.segments.last_mut().map_or(Ok(()), |seg| {
            let pos = seg.write_pos;
            seg.write_marker(wm, faults)
                .and_then(|()| seg.flush(pos, pos + RECORD_HEADER_BYTES, self.sync_method, faults))
        });
        if let Err(e) = written {
            // Like a failed sync: a retry (by `Drop`, say) could report
            // success for pages the kernel left clean without writing.
            tracing::error!(error = %e, "flushing the end marker failed; handle is fatal");
            g.poisoned = Some(e.to_string());
            return Err(e);
        }
        g.marker_unflushed = false;
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if self.inner.get_mut().poisoned.is_none() {
            if let Err(e) = self.flush_marker() {
                tracing::warn!(error = %e, "flushing the end marker on drop failed");
            }
        }
        self.shutdown_preparer();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_end_marker_flush_poisons_the_handle() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Arc::new(FaultPlan::default());
        let opts = WalOptions {
            segment_bytes: 64 << 10,
            prepare_in_background: false,
            fault_plan: Some(Arc::clone(&plan)),
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open(dir.path(), opts).unwrap();
        wal.append(1, b"one").unwrap();
        assert_eq!(wal.sync().unwrap(), Some(1));
        plan.fail_flush_in(1);
        assert!(matches!(
            wal.flush_marker(),
            Err(WalError::SyncFailed { .. })
        ));
        assert!(
            wal.is_poisoned(),
            "a failed flush of the end marker is fatal"
        );
        assert!(matches!(wal.flush_marker(), Err(WalError::Poisoned { .. })));
        assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
    }
}
