//! Fault injection for tests: make the Nth flush, write or segment creation
//! fail, and optionally model what the page cache and the disk hold, so that
//! a test can cut the power after a failed flush.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Page size of the page-cache model.
const MODEL_PAGE_BYTES: u64 = 4096;

/// Which IO call a fault hits.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// `msync`, `fdatasync` or `fsync` (fails with EIO).
    Flush,
    /// Creating or zero-filling a segment file (fails with ENOSPC).
    Create,
    /// A positioned write of records, a header, a marker or zeros into a
    /// segment file (fails with EIO).
    Write,
}

/// A test seam: counts calls per [`FaultPoint`] and fails the chosen one.
///
/// Not part of the stable API; used by this crate's tests.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct FaultPlan {
    flush_countdown: AtomicU64,
    create_countdown: AtomicU64,
    write_countdown: AtomicU64,
    /// `Some` once [`FaultPlan::model_page_cache`] was called.
    pages: Mutex<Option<PageModel>>,
}

/// What a power cut would lose, per file (by device and inode, so renames
/// do not matter): pages written since their last successful flush, and
/// pages a failed flush left clean in the cache without writing them (the
/// Linux behaviour behind PostgreSQL's "fsyncgate": a later flush has
/// nothing to write for them and reports success). Each page keeps the
/// content the disk still holds.
#[derive(Debug, Default)]
struct PageModel {
    files: HashMap<(u64, u64), FilePages>,
}

#[derive(Debug, Default)]
struct FilePages {
    dirty: BTreeMap<u64, Vec<u8>>,
    lost: BTreeMap<u64, Vec<u8>>,
}

fn file_id(file: &File) -> Option<(u64, u64)> {
    file.metadata().ok().map(|m| (m.dev(), m.ino()))
}

/// Pages overlapping `start..end`.
fn pages(start: u64, end: u64) -> std::ops::Range<u64> {
    start / MODEL_PAGE_BYTES..end.div_ceil(MODEL_PAGE_BYTES)
}

impl FaultPlan {
    /// Make the `n`th flush from now fail (1 = the next one). 0 disarms.
    pub fn fail_flush_in(&self, n: u64) {
        self.flush_countdown.store(n, Ordering::SeqCst);
    }

    /// Make the `n`th segment creation from now fail with ENOSPC. 0 disarms.
    pub fn fail_create_in(&self, n: u64) {
        self.create_countdown.store(n, Ordering::SeqCst);
    }

    /// Make the `n`th segment write from now fail with EIO. 0 disarms.
    pub fn fail_write_in(&self, n: u64) {
        self.write_countdown.store(n, Ordering::SeqCst);
    }

    /// Start modelling the page cache: from now on the plan remembers, for
    /// every page written through the log or the hard-state store, what the
    /// disk holds until a successful flush covers it, and a failed flush
    /// (injected or not) leaves its pages clean but unwritten, as Linux
    /// does. [`power_cut`](Self::power_cut) then puts the disk's content
    /// back. Call it before the files are written.
    pub fn model_page_cache(&self) {
        self.pages.lock().get_or_insert_with(PageModel::default);
    }

    /// Cut the power: every modelled page not proven on disk (written since
    /// its last successful flush, or left clean by a failed one) gets back
    /// the content the disk holds, in the files directly inside `dirs`.
    /// The model then starts afresh (the page cache is gone). Returns the
    /// number of pages put back. Close every handle first.
    pub fn power_cut(&self, dirs: &[&Path]) -> io::Result<usize> {
        let mut guard = self.pages.lock();
        let Some(model) = guard.as_mut() else {
            return Ok(0);
        };
        let mut restored = 0;
        for dir in dirs {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                let meta = std::fs::metadata(&path)?;
                if !meta.is_file() {
                    continue;
                }
                let Some(fp) = model.files.remove(&(meta.dev(), meta.ino())) else {
                    continue;
                };
                let f = OpenOptions::new().write(true).open(&path)?;
                for (page, disk) in fp.dirty.iter().chain(fp.lost.iter()) {
                    f.write_all_at(disk, page * MODEL_PAGE_BYTES)?;
                    restored += 1;
                }
                f.sync_all()?;
            }
        }
        *model = PageModel::default();
        Ok(restored)
    }

    /// `file` is about to be written at `off..off + len`.
    fn will_write(&self, file: &File, off: u64, len: u64) {
        let mut guard = self.pages.lock();
        let (Some(model), Some(id)) = (guard.as_mut(), file_id(file)) else {
            return;
        };
        let fp = model.files.entry(id).or_default();
        for page in pages(off, off + len) {
            if fp.dirty.contains_key(&page) {
                continue;
            }
            // A clean page holds what the disk holds, unless a failed flush
            // left it clean without writing it: then the disk keeps older
            // bytes.
            let disk = fp.lost.remove(&page).unwrap_or_else(|| {
                let mut buf = vec![0u8; MODEL_PAGE_BYTES as usize];
                let n = read_up_to(file, &mut buf, page * MODEL_PAGE_BYTES);
                buf.truncate(n);
                buf
            });
            fp.dirty.insert(page, disk);
        }
    }

    /// A flush of `file` (`range` = `None`: the whole file) returned.
    fn flushed(&self, file: &File, range: Option<(u64, u64)>, ok: bool) {
        let mut guard = self.pages.lock();
        let (Some(model), Some(id)) = (guard.as_mut(), file_id(file)) else {
            return;
        };
        let Some(fp) = model.files.get_mut(&id) else {
            return;
        };
        let covered: Vec<u64> = match range {
            Some((start, end)) => fp.dirty.range(pages(start, end)).map(|(&p, _)| p).collect(),
            None => fp.dirty.keys().copied().collect(),
        };
        for page in covered {
            if let Some(disk) = fp.dirty.remove(&page) {
                if !ok {
                    fp.lost.insert(page, disk);
                }
            }
        }
    }

    pub(crate) fn check(&self, point: FaultPoint) -> io::Result<()> {
        let (counter, errno) = match point {
            FaultPoint::Flush => (&self.flush_countdown, libc::EIO),
            FaultPoint::Create => (&self.create_countdown, libc::ENOSPC),
            FaultPoint::Write => (&self.write_countdown, libc::EIO),
        };
        let fire = counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                if n == 0 {
                    None
                } else {
                    Some(n - 1)
                }
            })
            .is_ok_and(|prev| prev == 1);
        if fire {
            Err(io::Error::from_raw_os_error(errno))
        } else {
            Ok(())
        }
    }
}

pub(crate) fn check(plan: Option<&FaultPlan>, point: FaultPoint) -> io::Result<()> {
    plan.map_or(Ok(()), |p| p.check(point))
}

/// Tell the page-cache model (if any) that `file` is about to be written at
/// `off..off + len`.
pub(crate) fn will_write(plan: Option<&FaultPlan>, file: &File, off: u64, len: usize) {
    if let Some(p) = plan {
        p.will_write(file, off, len as u64);
    }
}

/// Tell the page-cache model (if any) how a flush of `file` ended (`range`:
/// the byte range flushed, `None` for the whole file), and pass the result
/// on.
pub(crate) fn flushed<T>(
    plan: Option<&FaultPlan>,
    file: &File,
    range: Option<(u64, u64)>,
    result: io::Result<T>,
) -> io::Result<T> {
    if let Some(p) = plan {
        p.flushed(file, range, result.is_ok());
    }
    result
}

/// Read as much of `buf` as the file holds at `off` (0 past its end).
fn read_up_to(file: &File, buf: &mut [u8], off: u64) -> usize {
    let mut n = 0;
    // Bounded: every pass reads at least one byte or stops.
    while n < buf.len() {
        match file.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}
