//! Spare segment files: zero-filled ahead of need by a background thread
//! or recycled from segments freed by truncation, so that a roll only
//! renames a ready file; and pre-faulting of the active segment's pages
//! ahead of the writer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::segment::{Segment, ZERO_CHUNK_BYTES};
use super::{Wal, SEGMENT_ALIGN_BYTES};
use crate::error::{io_err, WalError};
use crate::faults::{self, FaultPlan, FaultPoint};

/// Pause between zero-filled chunks in the background: at most about 1 GB/s
/// of the disk goes to preparing segments, and a sync waits for one chunk
/// at most.
const ZERO_FILL_PAUSE: Duration = Duration::from_micros(1000);
/// How long the background preparer waits for a segment recycled by
/// `truncate_prefix` before it zero-fills a new one.
const RECYCLE_GRACE: Duration = Duration::from_millis(100);
/// Buffer alignment for direct IO (the largest logical block size in use).
const DIRECT_ALIGN_BYTES: usize = 4096;
const POPULATE_QUEUE_MAX: usize = 4;
/// How long a roll waits for the background preparer before zero-filling a
/// segment itself.
const SPARE_WAIT_MAX: Duration = Duration::from_secs(30);

/// State shared with the background preparer thread.
pub(super) struct SpareCtx {
    dir: PathBuf,
    segment_bytes: u64,
    want_ready: usize,
    faults: Option<Arc<FaultPlan>>,
    state: Mutex<SpareState>,
    cv: Condvar,
}

/// A range of a segment mapping to pre-fault for writing, ahead of the
/// writer (as plain addresses: the preparer never touches the bytes).
#[derive(Debug, Clone, Copy)]
struct PopulateJob {
    addr: usize,
    len: usize,
}

struct SpareState {
    ready: Vec<PathBuf>,
    /// Pending pre-fault jobs, oldest first (bounded by POPULATE_QUEUE_MAX).
    populate: std::collections::VecDeque<PopulateJob>,
    /// MADV_POPULATE_READ is unsupported here: stop asking.
    populate_unsupported: bool,
    busy: bool,
    shutdown: bool,
    /// The last background attempt failed; wait for the next roll to retry.
    failed: bool,
    next_spare_no: u64,
}

impl SpareState {
    /// The number for the next zero-filled spare file; `None` once numbers
    /// run out (only a directory holding a spare numbered just below
    /// `u64::MAX` gets there).
    fn take_spare_no(&mut self) -> Option<u64> {
        let no = self.next_spare_no;
        self.next_spare_no = no.checked_add(1)?;
        Some(no)
    }
}

/// Bring the pages of `job` into the page cache and map them
/// (`MADV_POPULATE_READ`) ahead of the writer, so that its positioned writes
/// of partial pages never wait for a read from disk, and readers of fresh
/// records take no page faults. It never changes file or memory contents.
fn populate_read(job: PopulateJob) -> io::Result<()> {
    // SAFETY: madvise does not write the bytes of the range; if the range was
    // unmapped meanwhile the call fails (EFAULT/ENOMEM) or, were the
    // addresses reused, faults in pages of another mapping without changing
    // their contents.
    let rc = unsafe {
        libc::madvise(
            job.addr as *mut libc::c_void,
            job.len,
            libc::MADV_POPULATE_READ,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // Unsupported kernel or mapping: give up on pre-faulting.
        Some(libc::EINVAL) | Some(libc::EPERM) => Err(e),
        // Unmapped meanwhile, out of memory, or a signal: skip this job.
        _ => Ok(()),
    }
}

/// Turn `O_DIRECT` on or off for an open file; false if the file system
/// refuses it (tmpfs, for one).
fn set_direct_io(file: &File, on: bool) -> bool {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        libc::fcntl(fd, libc::F_SETFL, flags) == 0
    }
}

impl SpareCtx {
    /// The shared state for a log in `dir`, with `ready` spares on hand and
    /// the next zero-filled spare numbered `next_spare_no`.
    pub(super) fn new(
        dir: &Path,
        segment_bytes: u64,
        ready: Vec<PathBuf>,
        next_spare_no: u64,
        faults: Option<Arc<FaultPlan>>,
    ) -> Arc<SpareCtx> {
        Arc::new(SpareCtx {
            dir: dir.to_path_buf(),
            segment_bytes,
            want_ready: 1,
            faults,
            state: Mutex::new(SpareState {
                ready,
                populate: std::collections::VecDeque::new(),
                populate_unsupported: false,
                busy: false,
                shutdown: false,
                failed: false,
                next_spare_no,
            }),
            cv: Condvar::new(),
        })
    }

    /// The error for a spare file that cannot be numbered.
    fn numbers_exhausted(&self) -> WalError {
        WalError::Io {
            op: "create segment",
            path: self.dir.clone(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "spare file numbers are exhausted (a spare numbered just below u64::MAX exists)",
            ),
        }
    }

    /// Zero-fill a fresh spare segment file (preallocated, written, synced).
    ///
    /// `pace`: the background fill. It pauses after every chunk, so that it
    /// never occupies the disk for long stretches (a 64 MiB write in one go
    /// delayed the appender's syncs by tens of milliseconds), and gives up
    /// (`Ok(None)`, the partial file removed) as soon as a spare is ready
    /// without it (a segment recycled by `truncate_prefix`) or the log
    /// closes.
    fn create_spare(&self, no: u64, pace: bool) -> Result<Option<PathBuf>, WalError> {
        let tmp = self.dir.join(format!("spare-{no:016x}.tmp"));
        let done = self.dir.join(format!("spare-{no:016x}.seg"));
        let r = (|| -> io::Result<bool> {
            faults::check(self.faults.as_deref(), FaultPoint::Create)?;
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            // Zeros go around the page cache where the file system allows:
            // copying 64 MiB of zeros into the cache cost the node more CPU
            // than its log appends did.
            let direct = set_direct_io(&f, true);
            let len = i64::try_from(self.segment_bytes)
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: plain syscall on an open descriptor we own.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return Err(e);
                }
            }
            // Writing zeros turns unwritten extents into written ones, so a
            // later sync of data in this file needs no extent conversion.
            // The buffer is page aligned (and every chunk a multiple of
            // 4 KiB, as the segment size is) for direct IO.
            let mut raw = vec![0u8; ZERO_CHUNK_BYTES + DIRECT_ALIGN_BYTES];
            let skip = raw.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
            let zeros = &mut raw[skip..skip + ZERO_CHUNK_BYTES];
            let mut left = self.segment_bytes as usize;
            let mut direct_ok = direct;
            // Bounded: every pass writes up to a chunk of a finite length.
            while left > 0 {
                let n = left.min(ZERO_CHUNK_BYTES);
                match f.write_all(&zeros[..n]) {
                    Ok(()) => {
                        left -= n;
                        if pace && left > 0 {
                            std::thread::sleep(ZERO_FILL_PAUSE);
                            let st = self.state.lock();
                            if st.shutdown || st.ready.len() >= self.want_ready {
                                return Ok(false);
                            }
                        }
                    }
                    // A file system that takes O_DIRECT at open but refuses
                    // the write: go on through the page cache. Nothing was
                    // written by the refused call.
                    Err(e) if direct_ok && e.raw_os_error() == Some(libc::EINVAL) => {
                        direct_ok = false;
                        set_direct_io(&f, false);
                    }
                    Err(e) => return Err(e),
                }
            }
            f.sync_all()?;
            fs::rename(&tmp, &done)?;
            Ok(true)
        })();
        match r {
            Ok(true) => {
                tracing::debug!(path = %done.display(), "spare segment zero-filled");
                Ok(Some(done))
            }
            Ok(false) => {
                let _ = fs::remove_file(&tmp);
                tracing::debug!("background zero-fill given up: a spare is ready");
                Ok(None)
            }
            Err(source) => {
                let _ = fs::remove_file(&tmp);
                Err(WalError::Io {
                    op: "create segment",
                    path: tmp,
                    source,
                })
            }
        }
    }

    fn preparer_loop(self: Arc<Self>) {
        let mut st = self.state.lock();
        // When the current wait for a recycled segment ends.
        let mut grace: Option<std::time::Instant> = None;
        // Bounded by the shutdown flag; each iteration either waits or creates one file.
        loop {
            if st.shutdown {
                return;
            }
            if let Some(job) = st.populate.pop_front() {
                let r = parking_lot::MutexGuard::unlocked(&mut st, || populate_read(job));
                if r.is_err() {
                    st.populate_unsupported = true;
                    st.populate.clear();
                }
                continue;
            }
            if st.failed || st.ready.len() >= self.want_ready {
                grace = None;
                self.cv.wait(&mut st);
                continue;
            }
            // A log whose prefix is truncated frees a segment soon after it
            // rolls: give that a moment before writing 64 MiB of zeros.
            let now = std::time::Instant::now();
            let until = *grace.get_or_insert(now + RECYCLE_GRACE);
            if now < until {
                self.cv.wait_for(&mut st, until - now);
                continue;
            }
            grace = None;
            let Some(no) = st.take_spare_no() else {
                tracing::warn!(error = %self.numbers_exhausted(), "background segment preparation failed");
                st.failed = true;
                self.cv.notify_all();
                continue;
            };
            st.busy = true;
            let r = parking_lot::MutexGuard::unlocked(&mut st, || self.create_spare(no, true));
            st.busy = false;
            match r {
                Ok(Some(p)) => st.ready.push(p),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "background segment preparation failed");
                    st.failed = true;
                }
            }
            self.cv.notify_all();
        }
    }
}

impl Wal {
    /// Recycle a segment file as a spare (if the pool has room and the size
    /// is right) or delete it. The caller syncs the directory.
    pub(super) fn retire_file(&self, id: u64, path: &Path) -> Result<(), WalError> {
        let len = fs::metadata(path)
            .map_err(io_err("stat segment", path))?
            .len();
        let mut st = self.spares.state.lock();
        if len == self.segment_bytes && st.ready.len() < self.max_spares {
            let to = self.dir.join(format!("recycled-{id:016x}.seg"));
            fs::rename(path, &to).map_err(io_err("recycle segment", path))?;
            st.ready.push(to);
            self.spares.cv.notify_all();
        } else {
            fs::remove_file(path).map_err(io_err("delete segment", path))?;
        }
        Ok(())
    }

    /// A zero-filled or recycled spare file, waiting for the background
    /// preparer if it is busy, else creating one inline.
    pub(super) fn take_spare(&self) -> Result<PathBuf, WalError> {
        let ctx = &self.spares;
        let mut st = ctx.state.lock();
        let deadline = std::time::Instant::now() + SPARE_WAIT_MAX;
        // Bounded by the deadline.
        loop {
            if let Some(p) = st.ready.pop() {
                return Ok(p);
            }
            if !st.busy || std::time::Instant::now() >= deadline {
                break;
            }
            ctx.cv.wait_for(&mut st, Duration::from_millis(50));
        }
        let no = st.take_spare_no().ok_or_else(|| ctx.numbers_exhausted())?;
        drop(st);
        ctx.create_spare(no, false)?.ok_or_else(|| WalError::Io {
            op: "create segment",
            path: ctx.dir.clone(),
            source: io::Error::other("an unpaced zero-fill never gives up"),
        })
    }

    /// Start the background preparer thread, which keeps a spare segment
    /// ready and pre-faults the active segment ahead of the writer.
    pub(super) fn start_preparer(&mut self) -> Result<(), WalError> {
        let ctx = Arc::clone(&self.spares);
        let handle = std::thread::Builder::new()
            .name("paxos-wal-prepare".to_string())
            .spawn(move || ctx.preparer_loop())
            .map_err(io_err("spawn segment preparer", &self.dir))?;
        self.preparer = Some(handle);
        Ok(())
    }

    pub(super) fn kick_preparer(&self) {
        if self.preparer.is_some() {
            let mut st = self.spares.state.lock();
            st.failed = false;
            self.spares.cv.notify_all();
        }
    }

    /// Hand the next stretch of the active segment to the preparer thread
    /// for pre-faulting, when the writer gets close to its end.
    pub(super) fn maybe_populate(&self, seg: &mut Segment) {
        let chunk = self.prefault_ahead / 2;
        if self.preparer.is_none()
            || chunk == 0
            || seg.populated_to >= seg.len()
            || seg.write_pos + chunk <= seg.populated_to
        {
            return;
        }
        let start = seg
            .populated_to
            .max(seg.write_pos & !(SEGMENT_ALIGN_BYTES as usize - 1));
        let end = (seg.write_pos + self.prefault_ahead)
            .max(start + chunk)
            .min(seg.len());
        seg.populated_to = end;
        let mut st = self.spares.state.lock();
        if st.populate_unsupported || end <= start {
            return;
        }
        if st.populate.len() >= POPULATE_QUEUE_MAX {
            st.populate.pop_front();
        }
        let addr = seg.map.as_ptr() as usize + start;
        st.populate.push_back(PopulateJob {
            addr,
            len: end - start,
        });
        self.spares.cv.notify_all();
    }

    pub(super) fn shutdown_preparer(&mut self) {
        if let Some(h) = self.preparer.take() {
            self.spares.state.lock().shutdown = true;
            self.spares.cv.notify_all();
            if h.join().is_err() {
                tracing::error!("segment preparer thread panicked");
            }
        }
    }

    /// Test hook: zero-fill a spare segment now (as the background preparer
    /// would), so that later rolls find one ready.
    #[doc(hidden)]
    pub fn prepare_spare_now(&self) -> Result<(), WalError> {
        let no = self
            .spares
            .state
            .lock()
            .take_spare_no()
            .ok_or_else(|| self.spares.numbers_exhausted())?;
        let Some(p) = self.spares.create_spare(no, false)? else {
            return Ok(());
        };
        self.spares.state.lock().ready.push(p);
        Ok(())
    }

    /// Number of spare segment files ready for the next rolls.
    pub fn spare_segments(&self) -> usize {
        self.spares.state.lock().ready.len()
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;

    use crate::{Wal, WalError, WalOptions, MIN_SEGMENT_BYTES};

    #[test]
    fn spare_numbers_running_out_is_an_error() {
        // A spare numbered just below u64::MAX is accepted on open; the next
        // spare would need u64::MAX, whose successor does not exist.
        let dir = tempfile::tempdir().unwrap();
        let name = format!("spare-{:016x}.seg", u64::MAX - 1);
        File::create(dir.path().join(name))
            .unwrap()
            .set_len(MIN_SEGMENT_BYTES)
            .unwrap();
        let opts = WalOptions {
            segment_bytes: MIN_SEGMENT_BYTES,
            prepare_in_background: false,
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open(dir.path(), opts).unwrap();
        assert_eq!(wal.spare_segments(), 1);
        let err = wal.prepare_spare_now().unwrap_err();
        assert!(
            matches!(
                &err,
                WalError::Io {
                    op: "create segment",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(wal.spare_segments(), 1, "the pool is unchanged");
        // The ready spare still serves the first roll; the roll after it
        // needs a new spare and fails cleanly.
        wal.append(1, b"one").unwrap();
        assert_eq!(wal.segment_count(), 1);
        let half = vec![2u8; MIN_SEGMENT_BYTES as usize / 2];
        wal.append(2, &half).unwrap();
        let err = wal.append(3, &half).unwrap_err();
        assert!(
            matches!(
                &err,
                WalError::Io {
                    op: "create segment",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!wal.is_poisoned());
        assert_eq!(wal.sync().unwrap(), Some(2));
    }
}
