//! The hard-state store: a small file with two CRC-checked slots written
//! alternately, so that a torn update leaves the previous value readable.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{io_err, WalError};
use crate::faults::{self, FaultPlan, FaultPoint};

/// Number of extra `u64` fields a [`HardStateRecord`] carries besides the epochs.
pub const HARD_STATE_EXTRA_FIELDS: usize = 16;

const SLOT_MAGIC: [u8; 8] = *b"PXWALHS1";
/// Each slot sits in its own 512-byte sector.
const SLOT_STRIDE_BYTES: u64 = 512;
const SLOT_BYTES: usize = 8 + 8 + 8 + 8 + 8 * HARD_STATE_EXTRA_FIELDS + 4;
const FILE_BYTES: u64 = 2 * SLOT_STRIDE_BYTES;

/// One record of the hard-state file: the two epochs as plain `u64`s and
/// spare fields, as the file stores them. (The kernel's
/// `paxos_core::HardState` is the typed view; `WalStorage` converts, and
/// refuses an epoch that does not fit.) Usable without the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardStateRecord {
    /// The highest epoch this replica promised (Paxos promise, ZAB NEWEPOCH).
    pub accepted_epoch: u64,
    /// The epoch whose leader's history this replica took (ZAB NEWLEADER).
    pub current_epoch: u64,
    /// Room for more state (e.g. a committed key); zero when unused.
    pub extra: [u64; HARD_STATE_EXTRA_FIELDS],
}

impl HardStateRecord {
    fn encode(&self, seq: u64) -> [u8; SLOT_BYTES] {
        let mut b = [0u8; SLOT_BYTES];
        b[0..8].copy_from_slice(&SLOT_MAGIC);
        b[8..16].copy_from_slice(&seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.accepted_epoch.to_le_bytes());
        b[24..32].copy_from_slice(&self.current_epoch.to_le_bytes());
        for (i, v) in self.extra.iter().enumerate() {
            b[32 + 8 * i..40 + 8 * i].copy_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&b[..SLOT_BYTES - 4]);
        b[SLOT_BYTES - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; SLOT_BYTES]) -> Option<(u64, HardStateRecord)> {
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let mut c = [0u8; 4];
        c.copy_from_slice(&b[SLOT_BYTES - 4..]);
        if b[0..8] != SLOT_MAGIC || u32::from_le_bytes(c) != crc32fast::hash(&b[..SLOT_BYTES - 4]) {
            return None;
        }
        let mut extra = [0u64; HARD_STATE_EXTRA_FIELDS];
        for (i, v) in extra.iter_mut().enumerate() {
            *v = u64_at(32 + 8 * i);
        }
        Some((
            u64_at(8),
            HardStateRecord {
                accepted_epoch: u64_at(16),
                current_epoch: u64_at(24),
                extra,
            },
        ))
    }
}

/// A durable [`HardStateRecord`] in one small file.
///
/// Each [`set`](Self::set) writes the slot *not* holding the current value,
/// with a sequence number one higher, and `fdatasync`s before returning; on
/// open the valid slot with the highest sequence number wins. A crash during
/// `set` therefore leaves either the old or the new value, never garbage.
/// A failed flush makes the store fatal (like the log): reopen it. `open`
/// writes both slots again and flushes them before trusting what it read
/// (after a failed flush the page cache may show a slot the disk does not
/// hold), and refuses with [`WalError::UnprovenData`] if that fails.
///
/// ```
/// use paxos_wal::{HardStateRecord, HardStateStore};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("hardstate");
/// let mut store = HardStateStore::open(&path)?;
/// assert_eq!(store.get(), HardStateRecord::default());
/// store.set(&HardStateRecord { accepted_epoch: 3, current_epoch: 2, ..HardStateRecord::default() })?;
/// drop(store);
/// assert_eq!(HardStateStore::open(&path)?.get().accepted_epoch, 3);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct HardStateStore {
    path: PathBuf,
    file: File,
    state: HardStateRecord,
    seq: u64,
    poisoned: Option<String>,
    faults: Option<Arc<FaultPlan>>,
}

impl HardStateStore {
    /// Open (or create, durably) the hard-state file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WalError> {
        Self::open_with_faults(path, None)
    }

    /// [`open`](Self::open) with a fault-injection plan (tests only).
    #[doc(hidden)]
    pub fn open_with_faults(
        path: impl AsRef<Path>,
        faults: Option<Arc<FaultPlan>>,
    ) -> Result<Self, WalError> {
        let path = path.as_ref().to_path_buf();
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open hard-state file", &path))?;
        let len = file
            .metadata()
            .map_err(io_err("stat hard-state file", &path))?
            .len();
        // Both slots as the page cache shows them (zeros past the end).
        let mut image = [0u8; FILE_BYTES as usize];
        let shown = len.min(FILE_BYTES) as usize;
        file.read_exact_at(&mut image[..shown], 0)
            .map_err(io_err("read hard-state file", &path))?;
        let mut best: Option<(u64, HardStateRecord)> = None;
        let mut any_nonzero = false;
        for slot in 0..2usize {
            let mut b = [0u8; SLOT_BYTES];
            let off = slot * SLOT_STRIDE_BYTES as usize;
            b.copy_from_slice(&image[off..off + SLOT_BYTES]);
            any_nonzero |= b.iter().any(|&x| x != 0);
            if let Some((seq, st)) = HardStateRecord::decode(&b) {
                if best.is_none_or(|(s, _)| seq > s) {
                    best = Some((seq, st));
                }
            }
        }
        let (seq, state) = match best {
            Some(b) => b,
            None if !any_nonzero => (0, HardStateRecord::default()),
            None => return Err(WalError::HardStateCorrupted { path }),
        };
        // `set` numbers the next slot `seq + 1`. No run of updates gets to
        // u64::MAX; a file that claims it was not written by this store.
        if seq == u64::MAX {
            return Err(WalError::Io {
                op: "read hard-state file",
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "slot sequence number is u64::MAX: no number left for the next update",
                ),
            });
        }
        // What the page cache shows is not proven to be on disk: after a
        // failed flush (of this process or of one before it, without a
        // reboot) the kernel may have marked the page clean without writing
        // it, and a flush would then write nothing and succeed. So the slots
        // are written again over themselves and flushed before the value is
        // trusted; if that fails, the open is refused.
        if any_nonzero {
            let refuse = |op: &'static str, source: std::io::Error| {
                tracing::error!(path = %path.display(), op, error = %source,
                    "cannot prove the hard state durable; refusing to open");
                WalError::UnprovenData {
                    path: path.clone(),
                    what: format!("the hard state (slot sequence {seq})"),
                    op,
                    source,
                }
            };
            faults::check(faults.as_deref(), FaultPoint::Write)
                .and_then(|()| {
                    faults::will_write(faults.as_deref(), &file, 0, shown);
                    file.write_all_at(&image[..shown], 0)
                })
                .map_err(|e| refuse("rewrite", e))?;
            let r =
                faults::check(faults.as_deref(), FaultPoint::Flush).and_then(|()| file.sync_data());
            faults::flushed(faults.as_deref(), &file, None, r).map_err(|e| refuse("flush", e))?;
        }
        if len < FILE_BYTES || !existed {
            file.set_len(FILE_BYTES)
                .map_err(io_err("size hard-state file", &path))?;
            file.sync_all().map_err(|source| WalError::SyncFailed {
                path: path.clone(),
                source,
            })?;
            if let Some(parent) = path.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                let d = File::open(parent).map_err(io_err("open directory", parent))?;
                d.sync_all().map_err(|source| WalError::SyncFailed {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
        }
        tracing::debug!(path = %path.display(), seq, ?state, "hard state opened");
        Ok(HardStateStore {
            path,
            file,
            state,
            seq,
            poisoned: None,
            faults,
        })
    }

    /// The current (durable) value.
    pub fn get(&self) -> HardStateRecord {
        self.state
    }

    /// Replace the value; durable when this returns `Ok`.
    pub fn set(&mut self, state: &HardStateRecord) -> Result<(), WalError> {
        if let Some(reason) = &self.poisoned {
            return Err(WalError::Poisoned {
                reason: reason.clone(),
            });
        }
        let seq = self.seq + 1;
        let off = (seq % 2) * SLOT_STRIDE_BYTES;
        let slot = state.encode(seq);
        faults::will_write(self.faults.as_deref(), &self.file, off, slot.len());
        self.file
            .write_all_at(&slot, off)
            .map_err(io_err("write hard-state slot", &self.path))?;
        let flushed = faults::check(self.faults.as_deref(), FaultPoint::Flush)
            .and_then(|()| self.file.sync_data());
        let flushed = faults::flushed(self.faults.as_deref(), &self.file, None, flushed);
        if let Err(source) = flushed {
            self.poisoned = Some(format!(
                "fdatasync of {} failed: {source}",
                self.path.display()
            ));
            tracing::error!(path = %self.path.display(), error = %source, "hard-state flush failed; store is fatal");
            return Err(WalError::SyncFailed {
                path: self.path.clone(),
                source,
            });
        }
        self.seq = seq;
        self.state = *state;
        tracing::debug!(path = %self.path.display(), seq, "hard state updated");
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_update_keeps_previous_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hs");
        let mut s = HardStateStore::open(&p).unwrap();
        let a = HardStateRecord {
            accepted_epoch: 1,
            current_epoch: 1,
            ..HardStateRecord::default()
        };
        let mut b = a;
        b.accepted_epoch = 2;
        b.extra[3] = 77;
        s.set(&a).unwrap();
        s.set(&b).unwrap();
        assert_eq!(HardStateStore::open(&p).unwrap().get(), b);
        // Simulate a torn third write: the slot it would use (seq 3 -> slot 1) holds garbage.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[0xAB; 40], SLOT_STRIDE_BYTES).unwrap();
        drop(f);
        assert_eq!(
            HardStateStore::open(&p).unwrap().get(),
            b,
            "valid slot survives a torn write of the other"
        );
        // Now also tear the slot holding b: no valid slot is left, and the
        // store refuses to invent a value.
        let f = OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[0xCD; 8], 16).unwrap();
        drop(f);
        assert!(matches!(
            HardStateStore::open(&p),
            Err(WalError::HardStateCorrupted { .. })
        ));
    }

    #[test]
    fn failed_flush_poisons_store() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hs");
        let plan = Arc::new(FaultPlan::default());
        let mut s = HardStateStore::open_with_faults(&p, Some(plan.clone())).unwrap();
        let a = HardStateRecord {
            accepted_epoch: 5,
            ..HardStateRecord::default()
        };
        s.set(&a).unwrap();
        plan.fail_flush_in(1);
        let b = HardStateRecord {
            accepted_epoch: 6,
            ..HardStateRecord::default()
        };
        assert!(matches!(s.set(&b), Err(WalError::SyncFailed { .. })));
        assert_eq!(
            s.get(),
            a,
            "a failed set does not change the in-memory value"
        );
        assert!(matches!(s.set(&b), Err(WalError::Poisoned { .. })));
    }

    #[test]
    fn exhausted_sequence_number_is_refused_on_open() {
        // A slot whose sequence number is u64::MAX (no crash or update makes
        // one: it takes 2^64 updates) leaves no number for the next update;
        // a store that wrapped it would write a slot that loses to the old
        // one on the next open.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hs");
        let image = HardStateRecord {
            accepted_epoch: 9,
            ..HardStateRecord::default()
        }
        .encode(u64::MAX);
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&p)
            .unwrap();
        f.set_len(FILE_BYTES).unwrap();
        f.write_all_at(&image, SLOT_STRIDE_BYTES).unwrap();
        drop(f);
        let err = HardStateStore::open(&p).unwrap_err();
        assert!(
            matches!(
                &err,
                WalError::Io {
                    op: "read hard-state file",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("sequence"), "{err}");
    }
}
