//! The log itself: segments, appends, group-commit sync, reads, truncation and
//! recovery.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use memmap2::Mmap;
use parking_lot::{Condvar, Mutex, RwLock, RwLockReadGuard};

use crate::error::{io_err, WalError};
use crate::faults::{self, FaultPlan, FaultPoint};
use crate::format::{
    align_up, encode_marker, encode_record_header, raw_header, record_crc, scan_segment, ScanStop,
    SegmentHeader, SegmentScan, INDEX_STRIDE_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};

/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Largest accepted segment size: 1 GiB.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// Smallest accepted segment size: 8 KiB.
pub const MIN_SEGMENT_BYTES: u64 = 8 << 10;
const SEGMENT_ALIGN_BYTES: u64 = 4096;
const LOCK_FILE: &str = "LOCK";
const LOCK_ATTEMPTS: u32 = 25;
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(20);
const ZERO_CHUNK_BYTES: usize = 1 << 20;
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
/// Payloads up to this size are copied next to their record headers into
/// one staging buffer; larger ones are written straight from the caller's
/// slice (one `pwritev` either way).
const INLINE_PAYLOAD_MAX: usize = 1024;
/// Slices per `pwritev` call (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;
/// Zeros for record padding and for zeroing ranges.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
/// How long a roll waits for the background preparer before zero-filling a
/// segment itself.
const SPARE_WAIT_MAX: Duration = Duration::from_secs(30);

/// What `open` does when it finds damage inside the proven-durable part of
/// the log (see the crate docs on recovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Fail with [`WalError::Corrupted`], naming file and offset. Nothing is
    /// changed on disk.
    #[default]
    Strict,
    /// Keep the valid prefix, cut the rest (after copying each affected
    /// segment file to `<name>.damaged`), and report the damaged key range in
    /// [`OpenReport::damaged`] so the caller can refetch it from peers.
    KeepValidPrefix,
}

/// How [`Wal::sync`] makes the dirty range durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMethod {
    /// `msync(MS_SYNC)` of exactly the dirty byte range (the default; it
    /// measured at least as fast as `fdatasync` in `benches/wal.rs`).
    #[default]
    MsyncRange,
    /// `fdatasync` of each dirty segment file.
    Fdatasync,
}

/// Options for [`Wal::open`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size of each segment file; a multiple of 4 KiB in
    /// [`MIN_SEGMENT_BYTES`]..=[`MAX_SEGMENT_BYTES`]. Default 64 MiB. Existing
    /// segments keep the size they were created with.
    pub segment_bytes: u64,
    /// Largest accepted payload; `None` means the largest that fits in one
    /// segment. Must fit in one segment.
    pub max_payload_bytes: Option<usize>,
    /// What to do with damage inside the proven-durable part of the log.
    pub recovery: RecoveryMode,
    /// How `sync` flushes.
    pub sync_method: SyncMethod,
    /// Zero-fill the next segment in a background thread, ahead of need
    /// (default true). When false, a roll with no spare segment zero-fills
    /// one inline.
    pub prepare_in_background: bool,
    /// Spare segment files kept ready (recycled by `truncate_prefix` or
    /// zero-filled ahead); default 4. The background preparer zero-fills a
    /// new one only when none is ready, so a log whose prefix is truncated
    /// runs on recycled files and writes no zeros.
    pub max_spare_segments: usize,
    /// How far ahead of the writer the background thread reads the active
    /// segment's pages into the page cache and maps them
    /// (`MADV_POPULATE_READ`), so appends never wait for a read of a partly
    /// written page and readers take no page faults; default 8 MiB, 0
    /// disables. Needs `prepare_in_background`.
    pub prefault_ahead_bytes: usize,
    /// Fault injection for tests.
    #[doc(hidden)]
    pub fault_plan: Option<Arc<FaultPlan>>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_payload_bytes: None,
            recovery: RecoveryMode::Strict,
            sync_method: SyncMethod::MsyncRange,
            prepare_in_background: true,
            max_spare_segments: 4,
            prefault_ahead_bytes: 8 << 20,
            fault_plan: None,
        }
    }
}

/// A torn tail that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file where the valid data ends.
    pub path: PathBuf,
    /// Offset where the valid data ends.
    pub offset: u64,
    /// What was found there.
    pub reason: String,
    /// Bytes zeroed in that segment.
    pub bytes_zeroed: u64,
    /// Later segment files removed (recycled or deleted).
    pub segments_removed: usize,
}

/// Damage inside the proven-durable part of the log, kept open in
/// [`RecoveryMode::KeepValidPrefix`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    /// The damaged segment file.
    pub path: PathBuf,
    /// Offset of the first damaged byte range (0: the header).
    pub offset: u64,
    /// What is wrong.
    pub reason: String,
    /// Last key of the kept valid prefix (`None`: nothing kept).
    pub after_key: Option<u64>,
    /// The log proved every key up to this one durable: keys in
    /// `(after_key, through_key]` that the replica held are lost and must be
    /// refetched. Not above `after_key` when the damage is outside damage
    /// (a segment file shorter than created) whose extent nothing records:
    /// then everything after `after_key` must be treated as lost.
    pub through_key: u64,
    /// Copies of the affected segment files, kept for inspection.
    pub preserved_copies: Vec<PathBuf>,
}

/// What [`Wal::open`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenReport {
    /// Live segment files after recovery.
    pub segments: usize,
    /// Records in the log after recovery.
    pub records: u64,
    /// First key after recovery.
    pub first_key: Option<u64>,
    /// Last key after recovery.
    pub last_key: Option<u64>,
    /// A torn tail (not proven durable) that was cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// Damage kept open under [`RecoveryMode::KeepValidPrefix`], if any.
    pub damaged: Option<DamagedRange>,
    /// Records past the proven-durable watermark that recovery kept: it
    /// wrote them again and flushed them before trusting them (see the
    /// crate docs on failed flushes). `None` when everything was proven.
    pub rewritten: Option<RewrittenTail>,
}

/// Records that nothing on disk proved durable when the log was opened (no
/// watermark covered them), which recovery wrote again over themselves and
/// flushed before treating them as durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrittenTail {
    /// The highest key a watermark on disk proved durable (0: none).
    pub proven_through: u64,
    /// First key rewritten.
    pub first_key: u64,
    /// Last key rewritten (the log's last key).
    pub last_key: u64,
    /// Bytes written again (whole pages from the first rewritten record).
    pub bytes: u64,
}

/// A record borrowed from the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's key.
    pub key: u64,
    /// The payload, borrowed from the mapped segment.
    pub payload: &'a [u8],
}

struct Segment {
    id: u64,
    path: PathBuf,
    /// Shared with an in-flight [`Wal::sync`], which flushes without the
    /// log's lock.
    file: Arc<File>,
    /// Read-only: every byte is written with `pwrite` (see the crate docs on
    /// the write path) and read back through this map. Shared like `file`.
    map: Arc<Mmap>,
    header: SegmentHeader,
    first_key: Option<u64>,
    last_key: Option<u64>,
    last_crc: Option<u32>,
    /// Where the next record goes.
    write_pos: usize,
    /// Offset past everything this incarnation of the segment may have
    /// written (records and marker): zeroing up to here erases every record.
    high_water: usize,
    index: Vec<(u64, u32)>,
    last_indexed: Option<usize>,
    /// Pages below this offset were handed to the preparer for pre-faulting.
    populated_to: usize,
}

impl Segment {
    fn len(&self) -> usize {
        self.map.len()
    }

    /// Offset of the first record with a key >= `key` in this segment.
    fn find_at_or_after(&self, key: u64) -> Option<usize> {
        if self.last_key.is_none_or(|l| l < key) {
            return None;
        }
        let i = self.index.partition_point(|&(k, _)| k <= key);
        let mut off = if i == 0 {
            SEGMENT_HEADER_BYTES
        } else {
            self.index[i - 1].1 as usize
        };
        // Bounded: every step advances by at least a record header.
        while off < self.write_pos {
            let h = raw_header(&self.map, off)?;
            if (h.len as usize) < RECORD_HEADER_BYTES {
                debug_assert!(false, "record chain below write_pos is intact");
                return None;
            }
            if h.key >= key {
                return Some(off);
            }
            off += align_up(h.len as usize);
        }
        None
    }

    /// Read and verify the record at `off`; returns it and its aligned size.
    fn record_at(&self, off: usize) -> Result<(Record<'_>, usize), WalError> {
        let bad = || WalError::ReadCorruption {
            path: self.path.clone(),
            offset: off as u64,
        };
        let h = raw_header(&self.map, off).ok_or_else(bad)?;
        let len = h.len as usize;
        if len < RECORD_HEADER_BYTES || off + len > self.write_pos {
            return Err(bad());
        }
        let payload = &self.map[off + RECORD_HEADER_BYTES..off + len];
        if record_crc(self.id, h.len, h.key, h.watermark, payload) != h.crc {
            return Err(bad());
        }
        Ok((
            Record {
                key: h.key,
                payload,
            },
            align_up(len),
        ))
    }

    /// Write `bytes` at `off` through the file. The page cache is shared
    /// with the map, so readers see the bytes at once.
    fn write_at(
        &self,
        off: usize,
        bytes: &[u8],
        faults: Option<&FaultPlan>,
    ) -> Result<(), WalError> {
        debug_assert!(
            off + bytes.len() <= self.len(),
            "writes stay inside the segment"
        );
        faults::check(faults, FaultPoint::Write)
            .and_then(|()| {
                faults::will_write(faults, &self.file, off as u64, bytes.len());
                self.file.write_all_at(bytes, off as u64)
            })
            .map_err(|source| WalError::WriteFailed {
                path: self.path.clone(),
                offset: off as u64,
                source,
            })
    }

    fn write_header(&self, faults: Option<&FaultPlan>) -> Result<(), WalError> {
        self.write_at(0, &self.header.encode(), faults)
    }

    /// Write the end marker (carrying `watermark`) at the write position.
    fn write_marker(&mut self, watermark: u64, faults: Option<&FaultPlan>) -> Result<(), WalError> {
        let pos = self.write_pos;
        if pos + RECORD_HEADER_BYTES <= self.len() {
            let mut marker = [0u8; RECORD_HEADER_BYTES];
            encode_marker(&mut marker, self.id, watermark);
            self.write_at(pos, &marker, faults)?;
            self.high_water = self.high_water.max(pos + RECORD_HEADER_BYTES);
        }
        Ok(())
    }

    /// Zero `from..to` through the file.
    fn zero(&self, from: usize, to: usize, faults: Option<&FaultPlan>) -> Result<(), WalError> {
        zero_file_range(&self.file, &self.path, from, to, faults)
    }

    fn flush(
        &self,
        start: usize,
        end: usize,
        method: SyncMethod,
        faults: Option<&FaultPlan>,
    ) -> Result<(), WalError> {
        self.flush_job(start, end).run(method, faults)
    }

    /// What flushing `start..end` of this segment needs, detached from the
    /// log's lock.
    fn flush_job(&self, start: usize, end: usize) -> FlushJob {
        FlushJob {
            file: Arc::clone(&self.file),
            map: Arc::clone(&self.map),
            path: self.path.clone(),
            start,
            end: end.min(self.len()),
        }
    }
}

/// A flush of one segment's dirty range, run by [`Wal::sync`] without the
/// log's lock.
struct FlushJob {
    file: Arc<File>,
    map: Arc<Mmap>,
    path: PathBuf,
    start: usize,
    end: usize,
}

impl FlushJob {
    fn run(&self, method: SyncMethod, faults: Option<&FaultPlan>) -> Result<(), WalError> {
        if self.end <= self.start {
            return Ok(());
        }
        let (r, range) = match method {
            SyncMethod::MsyncRange => (
                faults::check(faults, FaultPoint::Flush)
                    .and_then(|()| msync_range(&self.map, self.start, self.end)),
                Some((self.start as u64, self.end as u64)),
            ),
            SyncMethod::Fdatasync => (
                faults::check(faults, FaultPoint::Flush).and_then(|()| self.file.sync_data()),
                None,
            ),
        };
        let r = faults::flushed(faults, &self.file, range, r);
        r.map_err(|source| WalError::SyncFailed {
            path: self.path.clone(),
            source,
        })
    }
}

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
    /// Staging buffers of the last batch, kept for reuse.
    scratch: (Vec<u8>, Vec<(u64, usize, u32)>),
}

impl Inner {
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

    fn get(&self, key: u64) -> Result<Option<&[u8]>, WalError> {
        match self.locate(key) {
            Some((i, off)) => {
                let (rec, _) = self.segments[i].record_at(off)?;
                Ok((rec.key == key).then_some(rec.payload))
            }
            None => Ok(None),
        }
    }
}

/// State shared with the background preparer thread.
struct SpareCtx {
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

/// `msync(MS_SYNC)` of the pages holding `start..end` of a mapped segment.
/// The map is read-only, but `msync` of a shared mapping writes back the
/// file's dirty pages in the range however they were dirtied.
/// Flush jobs for every dirty byte from `from` (segment id, offset) on.
fn flush_jobs(g: &Inner, from: (u64, usize)) -> Vec<FlushJob> {
    g.segments
        .iter()
        .filter(|s| s.id >= from.0)
        .map(|s| {
            let start = if s.id == from.0 { from.1 } else { 0 };
            s.flush_job(start, s.high_water)
        })
        .collect()
}

fn msync_range(map: &Mmap, start: usize, end: usize) -> io::Result<()> {
    debug_assert!(
        start < end && end <= map.len(),
        "msync range inside the map"
    );
    // The map starts on a page boundary; 4 KiB divides every page size.
    let page = page_size();
    let from = start - start % page;
    // SAFETY: `from..end` lies inside the live mapping, and `from` is page
    // aligned as msync requires; msync reads no memory of ours.
    let rc = unsafe {
        libc::msync(
            map.as_ptr().add(from) as *mut libc::c_void,
            end - from,
            libc::MS_SYNC,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Zero `from..to` of a segment file with positioned writes.
fn zero_file_range(
    file: &File,
    path: &Path,
    from: usize,
    to: usize,
    faults: Option<&FaultPlan>,
) -> Result<(), WalError> {
    let mut off = from;
    // Bounded: each step zeroes up to ZEROS.len() bytes of a finite range.
    while off < to {
        let n = (to - off).min(ZEROS.len());
        faults::check(faults, FaultPoint::Write)
            .and_then(|()| {
                faults::will_write(faults, file, off as u64, n);
                file.write_all_at(&ZEROS[..n], off as u64)
            })
            .map_err(|source| WalError::WriteFailed {
                path: path.to_path_buf(),
                offset: off as u64,
                source,
            })?;
        off += n;
    }
    Ok(())
}

/// Write `from..to` of a mapped segment file again with the bytes the map
/// shows, so that those pages are dirty and the next flush really writes
/// them (a page the kernel marked clean after a failed writeback would
/// otherwise be skipped by the flush).
fn rewrite_in_place(
    file: &File,
    map: &Mmap,
    from: usize,
    to: usize,
    faults: Option<&FaultPlan>,
) -> io::Result<()> {
    let to = to.min(map.len());
    let mut buf = Vec::with_capacity(ZERO_CHUNK_BYTES.min(to.saturating_sub(from)));
    let mut off = from;
    // Bounded: each pass rewrites up to a chunk of a finite range.
    while off < to {
        let n = (to - off).min(ZERO_CHUNK_BYTES);
        buf.clear();
        buf.extend_from_slice(&map[off..off + n]);
        faults::check(faults, FaultPoint::Write)?;
        faults::will_write(faults, file, off as u64, n);
        file.write_all_at(&buf, off as u64)?;
        off += n;
    }
    Ok(())
}

/// `pwritev` all of `slices` at `offset`, resuming after short writes.
fn pwritev_all(file: &File, mut slices: &mut [IoSlice<'_>], mut offset: u64) -> io::Result<()> {
    // Bounded: every pass writes at least one byte of a finite total.
    while !slices.is_empty() {
        let n = slices.len().min(MAX_IOVECS);
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: IoSlice is ABI-compatible with iovec on Unix, the slices
        // borrow live memory for the duration of the call, and `n` is at
        // most their count.
        let rc = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                slices.as_ptr().cast::<libc::iovec>(),
                n as libc::c_int,
                off,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero));
        }
        offset += rc as u64;
        IoSlice::advance_slices(&mut slices, rc as usize);
    }
    Ok(())
}

/// One piece of a batch write: a stretch of the staging buffer, or a
/// payload borrowed from the caller.
enum Part<'p> {
    Staged(usize, usize),
    Borrowed(&'p [u8]),
}

/// Records encoded for one positioned write at the end of the active
/// segment: headers (and small payloads, padding and the end marker) in a
/// staging buffer, large payloads borrowed, so no payload is copied twice.
struct Batch<'p> {
    buf: Vec<u8>,
    parts: Vec<Part<'p>>,
    /// Per record: key, offset in the segment, CRC.
    records: Vec<(u64, usize, u32)>,
    /// Offset of the batch in the segment (the segment's write position).
    start: usize,
    /// Aligned bytes of the records (not counting the marker).
    len: usize,
    /// The segment was emptied and gets a header for this first key.
    header_first_key: Option<u64>,
}

impl<'p> Batch<'p> {
    fn new(scratch: (Vec<u8>, Vec<(u64, usize, u32)>), start: usize) -> Batch<'p> {
        let (mut buf, mut records) = scratch;
        buf.clear();
        records.clear();
        Batch {
            buf,
            parts: Vec::new(),
            records,
            start,
            len: 0,
            header_first_key: None,
        }
    }

    fn restart(&mut self, start: usize) {
        self.buf.clear();
        self.parts.clear();
        self.records.clear();
        self.start = start;
        self.len = 0;
        self.header_first_key = None;
    }

    fn push_staged(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let s = self.buf.len();
        self.buf.extend_from_slice(bytes);
        let e = self.buf.len();
        match self.parts.last_mut() {
            Some(Part::Staged(_, end)) if *end == s => *end = e,
            _ => self.parts.push(Part::Staged(s, e)),
        }
    }

    /// Encode one record after the ones already staged.
    fn stage(&mut self, segment_id: u64, key: u64, watermark: u64, payload: &'p [u8]) {
        let len = RECORD_HEADER_BYTES + payload.len();
        let size = align_up(len);
        let off = self.start + self.len;
        let crc = record_crc(segment_id, len as u32, key, watermark, payload);
        let mut header = [0u8; RECORD_HEADER_BYTES];
        encode_record_header(&mut header, len as u32, crc, key, watermark);
        self.push_staged(&header);
        if payload.len() <= INLINE_PAYLOAD_MAX {
            self.push_staged(payload);
        } else {
            self.parts.push(Part::Borrowed(payload));
        }
        self.push_staged(&ZEROS[..size - len]);
        self.records.push((key, off, crc));
        self.len += size;
    }

    fn into_scratch(self) -> (Vec<u8>, Vec<(u64, usize, u32)>) {
        (self.buf, self.records)
    }
}

impl SpareCtx {
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
            st.busy = true;
            let no = st.next_spare_no;
            st.next_spare_no += 1;
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

fn parse_hex(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let hex = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn fsync_dir(dir_file: &File, dir: &Path, faults: Option<&FaultPlan>) -> Result<(), WalError> {
    faults::check(faults, FaultPoint::Flush)
        .and_then(|()| dir_file.sync_all())
        .map_err(|source| WalError::SyncFailed {
            path: dir.to_path_buf(),
            source,
        })
}

fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open lock file", &path))?;
    // A process forked by another thread holds a copy of a just-closed
    // handle's descriptor until it execs: retry briefly before refusing.
    for attempt in 0..LOCK_ATTEMPTS {
        // SAFETY: plain syscall on an open descriptor we own.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(f);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(WalError::Io {
                op: "lock",
                path,
                source: e,
            });
        }
        if attempt + 1 < LOCK_ATTEMPTS {
            std::thread::sleep(LOCK_RETRY_PAUSE);
        }
    }
    Err(WalError::Locked { path })
}

/// A segment file found on open, with its scan.
struct Found {
    id: u64,
    path: PathBuf,
    file: File,
    map: Option<Mmap>,
    scan: SegmentScan,
}

impl Found {
    fn len(&self) -> usize {
        self.map.as_ref().map_or(0, |m| m.len())
    }
}

/// Where the valid log ends on open.
struct Break {
    idx: usize,
    offset: usize,
    reason: String,
    /// The segment at `idx` contributes nothing and is removed entirely.
    whole: bool,
    /// Damage no crash can cause (a segment file shorter than it was
    /// created): corruption whatever the watermarks say.
    external: bool,
}

impl Wal {
    /// Open (or create) the log in `dir`, recovering it as described in the
    /// crate docs. The directory is locked against a second handle.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal, OpenReport), WalError> {
        let dir = dir.as_ref().to_path_buf();
        let seg_bytes = options.segment_bytes;
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&seg_bytes)
            || seg_bytes % SEGMENT_ALIGN_BYTES != 0
        {
            return Err(WalError::InvalidOptions(format!(
                "segment_bytes {seg_bytes} must be a multiple of 4096 in {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}"
            )));
        }
        let capacity = seg_bytes as usize - SEGMENT_HEADER_BYTES - RECORD_HEADER_BYTES;
        let max_payload = options.max_payload_bytes.unwrap_or(capacity);
        if max_payload > capacity {
            return Err(WalError::InvalidOptions(format!(
                "max_payload_bytes {max_payload} does not fit a segment of {seg_bytes} bytes (at most {capacity})"
            )));
        }
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let dir_file = File::open(&dir).map_err(io_err("open directory", &dir))?;
        let lock = lock_dir(&dir)?;
        let faults = options.fault_plan.clone();

        // List the directory.
        let mut seg_ids = Vec::new();
        let mut spares = Vec::new();
        let mut max_id_seen: Option<u64> = None;
        let mut next_spare_no = 0u64;
        let entries = fs::read_dir(&dir).map_err(io_err("list directory", &dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("list directory", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            if let Some(id) = parse_hex(name, "", ".wal") {
                seg_ids.push(id);
                max_id_seen = max_id_seen.max(Some(id));
            } else if let Some(id) = parse_hex(name, "recycled-", ".seg") {
                max_id_seen = max_id_seen.max(Some(id));
                spares.push(path);
            } else if let Some(no) = parse_hex(name, "spare-", ".seg") {
                next_spare_no = next_spare_no.max(no + 1);
                spares.push(path);
            } else if name.ends_with(".tmp") {
                fs::remove_file(&path).map_err(io_err("remove temporary file", &path))?;
            }
        }
        seg_ids.sort_unstable();
        spares.sort();
        // Keep only spares of the configured size, at most max_spare_segments.
        let mut ready = Vec::new();
        for p in spares {
            let len = fs::metadata(&p).map_err(io_err("stat spare", &p))?.len();
            if len == seg_bytes && ready.len() < options.max_spare_segments.max(1) {
                ready.push(p);
            } else {
                fs::remove_file(&p).map_err(io_err("remove spare", &p))?;
            }
        }

        // Map and scan every segment, finding where the valid log ends.
        let mut found: Vec<Found> = Vec::with_capacity(seg_ids.len());
        let mut brk: Option<Break> = None;
        let mut last_key: Option<u64> = None;
        let mut evidence = 0u64;
        for (i, &id) in seg_ids.iter().enumerate() {
            let path = segment_path(&dir, id);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io_err("open segment", &path))?;
            let len = file
                .metadata()
                .map_err(io_err("stat segment", &path))?
                .len();
            if len > MAX_SEGMENT_BYTES {
                return Err(WalError::Corrupted {
                    path,
                    offset: 0,
                    reason: format!("segment file of {len} bytes exceeds the maximum segment size"),
                    last_good_key: last_key,
                    proven_durable_key: evidence,
                });
            }
            let map = if len as usize >= SEGMENT_HEADER_BYTES {
                // SAFETY: the directory is locked, so no other handle of this
                // crate changes the file, and it is never shrunk while mapped.
                Some(unsafe { Mmap::map(&file) }.map_err(io_err("map segment", &path))?)
            } else {
                None
            };
            let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
            let scan = scan_segment(bytes, id, if brk.is_none() { last_key } else { None });
            evidence = evidence.max(scan.max_watermark);
            if brk.is_none() {
                let prev_crc = found.last().and_then(|f: &Found| f.scan.last_crc);
                match (&scan.stop, scan.header) {
                    (_, None) => {
                        let reason = match scan.stop {
                            ScanStop::BadHeader(e) => format!("bad segment header: {e}"),
                            _ => "bad segment header".to_string(),
                        };
                        // Segments are renamed into place fully sized, so a
                        // short or odd-sized file is outside damage.
                        let external = len < MIN_SEGMENT_BYTES || len % SEGMENT_ALIGN_BYTES != 0;
                        brk = Some(Break {
                            idx: i,
                            offset: 0,
                            reason,
                            whole: true,
                            external,
                        });
                    }
                    (_, Some(h)) if i > 0 && h.prev_last_crc != prev_crc => {
                        brk = Some(Break {
                            idx: i,
                            offset: 0,
                            reason: "segment does not chain to the previous segment's last record"
                                .to_string(),
                            whole: true,
                            external: false,
                        });
                    }
                    (stop, Some(h)) => {
                        last_key = scan.last_key.or(last_key);
                        // No crash shortens a segment file: damage in a short
                        // one is outside damage.
                        let short = (bytes.len() as u64) < h.segment_bytes;
                        if let ScanStop::BadRecord(b) = stop {
                            brk = Some(Break {
                                idx: i,
                                offset: scan.end_offset,
                                reason: b.to_string(),
                                whole: false,
                                external: short,
                            });
                        } else if short && scan.end_offset + RECORD_HEADER_BYTES > bytes.len() {
                            brk = Some(Break {
                                idx: i,
                                offset: scan.end_offset,
                                reason: format!(
                                    "segment file is {} bytes, its header says {}",
                                    bytes.len(),
                                    h.segment_bytes
                                ),
                                whole: false,
                                external: true,
                            });
                        } else if scan.beyond_end_offset > scan.end_offset + RECORD_HEADER_BYTES
                            || scan.records_beyond > 0
                        {
                            brk = Some(Break {
                                idx: i,
                                offset: scan.end_offset,
                                reason: "valid records after the end of data".to_string(),
                                whole: false,
                                external: short,
                            });
                        }
                    }
                }
            }
            found.push(Found {
                id,
                path,
                file,
                map,
                scan,
            });
        }

        let mut report = OpenReport::default();
        let keep_prefix = options.recovery == RecoveryMode::KeepValidPrefix;
        let mut removed: Vec<Found> = Vec::new();
        if let Some(b) = brk {
            let lost_durable = b.external || evidence > last_key.unwrap_or(0);
            let bpath = found[b.idx].path.clone();
            if lost_durable && !keep_prefix {
                tracing::error!(path = %bpath.display(), offset = b.offset, reason = %b.reason,
                    last_good_key = ?last_key, proven_durable_key = evidence, "corruption in durable part of the log");
                return Err(WalError::Corrupted {
                    path: bpath,
                    offset: b.offset as u64,
                    reason: b.reason,
                    last_good_key: last_key,
                    proven_durable_key: evidence,
                });
            }
            let mut preserved = Vec::new();
            if lost_durable {
                for f in &found[b.idx..] {
                    let mut name = f.path.clone().into_os_string();
                    name.push(".damaged");
                    let copy = PathBuf::from(name);
                    fs::copy(&f.path, &copy).map_err(io_err("preserve damaged segment", &copy))?;
                    File::open(&copy)
                        .and_then(|c| c.sync_all())
                        .map_err(|source| WalError::SyncFailed {
                            path: copy.clone(),
                            source,
                        })?;
                    preserved.push(copy);
                }
            }
            // Cut: later segments go, the break segment is zeroed from the
            // break (or goes entirely), then everything is synced.
            let first_removed = if b.whole { b.idx } else { b.idx + 1 };
            removed = found.split_off(first_removed);
            let mut bytes_zeroed = 0u64;
            if !b.whole {
                let f = &mut found[b.idx];
                let len = f.len();
                let end = (b.offset + RECORD_HEADER_BYTES)
                    .max(f.scan.beyond_end_offset)
                    .min(len);
                if let Some(map) = f.map.as_ref() {
                    if end > b.offset {
                        zero_file_range(&f.file, &f.path, b.offset, end, faults.as_deref())?;
                        bytes_zeroed = (end - b.offset) as u64;
                        let r = faults::check(faults.as_deref(), FaultPoint::Flush)
                            .and_then(|()| msync_range(map, b.offset, end));
                        let range = Some((b.offset as u64, end as u64));
                        faults::flushed(faults.as_deref(), &f.file, range, r).map_err(
                            |source| WalError::SyncFailed {
                                path: f.path.clone(),
                                source,
                            },
                        )?;
                    }
                }
                f.scan.end_offset = b.offset;
            }
            let segments_removed = removed.len();
            if lost_durable {
                tracing::error!(path = %bpath.display(), offset = b.offset, reason = %b.reason, after_key = ?last_key,
                    through_key = evidence, "damaged durable records; keeping the valid prefix");
                report.damaged = Some(DamagedRange {
                    path: bpath,
                    offset: b.offset as u64,
                    reason: b.reason,
                    after_key: last_key,
                    through_key: evidence,
                    preserved_copies: preserved,
                });
            } else {
                tracing::warn!(path = %bpath.display(), offset = b.offset, reason = %b.reason, bytes_zeroed,
                    segments_removed, "torn tail cut off");
                report.torn_tail = Some(TornTail {
                    path: bpath,
                    offset: b.offset as u64,
                    reason: b.reason,
                    bytes_zeroed,
                    segments_removed,
                });
            }
        }

        let spares = Arc::new(SpareCtx {
            dir: dir.clone(),
            segment_bytes: seg_bytes,
            want_ready: 1,
            faults: faults.clone(),
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
        });
        let mut wal = Wal {
            dir: dir.clone(),
            dir_file,
            _lock: lock,
            segment_bytes: seg_bytes,
            max_payload,
            sync_method: options.sync_method,
            max_spares: options.max_spare_segments.max(1),
            prefault_ahead: options.prefault_ahead_bytes,
            faults,
            spares,
            preparer: None,
            sync_lock: Mutex::new(()),
            inner: RwLock::new(Inner {
                segments: Vec::new(),
                next_segment_id: max_id_seen.map_or(0, |m| m + 1),
                last_key: None,
                durable_key: None,
                dirty_from: None,
                marker_unflushed: false,
                poisoned: None,
                scratch: (Vec::new(), Vec::new()),
            }),
        };
        for f in removed.into_iter().rev() {
            let Found {
                id,
                path,
                file,
                map,
                ..
            } = f;
            drop(map);
            drop(file);
            wal.retire_file(id, &path)?;
        }

        // Everything recovered may still sit only in the page cache (the
        // previous process was killed before its sync): make it durable
        // before treating it as such. Records past the proven-durable
        // watermark (`evidence`) are not trusted merely because they are
        // readable: after a failed flush the kernel may have marked their
        // pages clean without writing them, and a flush of clean pages
        // writes nothing and succeeds. So their bytes, as the scan verified
        // them, are written again over themselves first (the pages become
        // dirty), and only a flush after that proves them; if either fails,
        // `open` refuses (`WalError::UnprovenData`) and writes no marker.
        let mut segments = Vec::with_capacity(found.len());
        let mut rewritten: Option<RewrittenTail> = None;
        for f in found {
            let Found {
                id,
                path,
                file,
                map,
                scan,
            } = f;
            let (Some(map), Some(header)) = (map, scan.header) else {
                debug_assert!(false, "kept segments have a valid header and a map");
                continue;
            };
            let write_pos = scan.end_offset.max(SEGMENT_HEADER_BYTES);
            let high_water = (write_pos + RECORD_HEADER_BYTES).min(map.len());
            report.records += scan.records;
            let seg = Segment {
                id,
                path,
                file: Arc::new(file),
                map: Arc::new(map),
                header,
                first_key: scan.first_key,
                last_key: scan.last_key,
                last_crc: scan.last_crc,
                write_pos,
                high_water,
                last_indexed: scan.index.last().map(|&(_, o)| o as usize),
                populated_to: 0,
                index: scan.index,
            };
            let faults = wal.faults.as_deref();
            // The scan verified the records below `write_pos`, so the header
            // is there; were it not, the rewrite still happens.
            let unproven = seg.find_at_or_after(evidence.saturating_add(1)).map(|off| {
                let key = raw_header(&seg.map, off).map_or(evidence.saturating_add(1), |h| h.key);
                (off, key)
            });
            if let Some((off, first_unproven)) = unproven {
                let what = || {
                    format!(
                        "keys {first_unproven}..={} (proven durable through {evidence})",
                        seg.last_key.unwrap_or(first_unproven)
                    )
                };
                let refuse = |op: &'static str, source: io::Error| {
                    let what = what();
                    tracing::error!(path = %seg.path.display(), %what, op, error = %source,
                        "cannot prove records past the durable watermark durable; refusing to open");
                    WalError::UnprovenData {
                        path: seg.path.clone(),
                        what,
                        op,
                        source,
                    }
                };
                // Whole pages, from the one holding the first unproven record
                // (the header too, when that is the segment's first page).
                let from = off - off % page_size();
                rewrite_in_place(&seg.file, &seg.map, from, seg.write_pos, faults)
                    .map_err(|e| refuse("rewrite", e))?;
                let r =
                    faults::check(faults, FaultPoint::Flush).and_then(|()| seg.file.sync_data());
                faults::flushed(faults, &seg.file, None, r).map_err(|e| refuse("flush", e))?;
                let bytes = (seg.write_pos - from) as u64;
                tracing::info!(path = %seg.path.display(), first_key = first_unproven,
                    last_key = ?seg.last_key, proven_through = evidence, bytes,
                    "records past the proven-durable watermark rewritten and flushed before being trusted");
                let t = rewritten.get_or_insert(RewrittenTail {
                    proven_through: evidence,
                    first_key: first_unproven,
                    last_key: first_unproven,
                    bytes: 0,
                });
                t.last_key = seg.last_key.unwrap_or(first_unproven);
                t.bytes += bytes;
            } else {
                let r =
                    faults::check(faults, FaultPoint::Flush).and_then(|()| seg.file.sync_data());
                faults::flushed(faults, &seg.file, None, r).map_err(|source| {
                    WalError::SyncFailed {
                        path: seg.path.clone(),
                        source,
                    }
                })?;
            }
            segments.push(seg);
        }
        report.rewritten = rewritten;
        // The directory entries of the kept segments (a roll whose directory
        // sync failed left one unproven) and the removals above.
        fsync_dir(&wal.dir_file, &dir, wal.faults.as_deref())?;
        {
            let g = wal.inner.get_mut();
            g.last_key = segments.iter().rev().find_map(|s| s.last_key);
            g.durable_key = g.last_key;
            g.segments = segments;
            report.segments = g.segments.len();
            report.first_key = g.first_key();
            report.last_key = g.last_key;
            // A fresh marker proves everything recovered durable.
            let wm = g.durable_key.unwrap_or(0);
            if let Some(seg) = g.segments.last_mut() {
                let pos = seg.write_pos;
                seg.write_marker(wm, wal.faults.as_deref())?;
                seg.flush(
                    pos,
                    pos + RECORD_HEADER_BYTES,
                    SyncMethod::MsyncRange,
                    wal.faults.as_deref(),
                )?;
            }
        }
        if options.prepare_in_background {
            let ctx = Arc::clone(&wal.spares);
            let handle = std::thread::Builder::new()
                .name("paxos-wal-prepare".to_string())
                .spawn(move || ctx.preparer_loop())
                .map_err(io_err("spawn segment preparer", &dir))?;
            wal.preparer = Some(handle);
        }
        tracing::info!(dir = %dir.display(), segments = report.segments, records = report.records,
            first_key = ?report.first_key, last_key = ?report.last_key, torn = report.torn_tail.is_some(),
            damaged = report.damaged.is_some(), "wal opened");
        Ok((wal, report))
    }

    /// Recycle a segment file as a spare (if the pool has room and the size
    /// is right) or delete it. The caller syncs the directory.
    fn retire_file(&self, id: u64, path: &Path) -> Result<(), WalError> {
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
    fn take_spare(&self) -> Result<PathBuf, WalError> {
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
        let no = st.next_spare_no;
        st.next_spare_no += 1;
        drop(st);
        ctx.create_spare(no, false)?.ok_or_else(|| WalError::Io {
            op: "create segment",
            path: ctx.dir.clone(),
            source: io::Error::other("an unpaced zero-fill never gives up"),
        })
    }

    fn kick_preparer(&self) {
        if self.preparer.is_some() {
            let mut st = self.spares.state.lock();
            st.failed = false;
            self.spares.cv.notify_all();
        }
    }

    /// Start a new segment whose first record will be `first_key`.
    fn roll(&self, g: &mut Inner, first_key: u64) -> Result<(), WalError> {
        let spare = self.take_spare()?;
        let id = g.next_segment_id;
        let path = segment_path(&self.dir, id);
        if let Err(source) = fs::rename(&spare, &path) {
            let _ = fs::remove_file(&spare);
            return Err(WalError::Io {
                op: "install segment",
                path,
                source,
            });
        }
        g.next_segment_id = id + 1;
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .and_then(|file| {
                // SAFETY: the directory is locked, and segment files are never shrunk.
                let map = unsafe { Mmap::map(&file) }?;
                if map.len() as u64 != self.segment_bytes {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "spare segment is {} bytes, expected {}",
                            map.len(),
                            self.segment_bytes
                        ),
                    ));
                }
                Ok((file, map))
            });
        let (file, map) = match opened {
            Ok(fm) => fm,
            Err(source) => {
                // Not part of the log yet: remove it so recovery never sees it.
                let _ = fs::remove_file(&path);
                return Err(WalError::Io {
                    op: "open new segment",
                    path,
                    source,
                });
            }
        };
        if let Err(e) = fsync_dir(&self.dir_file, &self.dir, self.faults.as_deref()) {
            g.poisoned = Some(e.to_string());
            return Err(e);
        }
        let header = SegmentHeader {
            segment_id: id,
            first_key,
            segment_bytes: map.len() as u64,
            prev_last_crc: g.segments.last().and_then(|s| s.last_crc),
        };
        let mut seg = Segment {
            id,
            path,
            file: Arc::new(file),
            map: Arc::new(map),
            header,
            first_key: None,
            last_key: None,
            last_crc: None,
            write_pos: SEGMENT_HEADER_BYTES,
            high_water: SEGMENT_HEADER_BYTES,
            index: Vec::new(),
            last_indexed: None,
            populated_to: 0,
        };
        let faults = self.faults.as_deref();
        let wm = g.durable_key.unwrap_or(0);
        let mut written = seg
            .write_header(faults)
            .and_then(|()| seg.write_marker(wm, faults));
        // End the previous segment's data explicitly: a recycled file holds
        // old bytes after it.
        if let (Ok(()), Some(prev)) = (&written, g.segments.last_mut()) {
            let (pid, pos) = (prev.id, prev.write_pos);
            written = prev.write_marker(wm, faults);
            g.mark_dirty(pid, pos);
        }
        if let Err(e) = written {
            // The new file is in the directory with a partial start; a reopen
            // cuts it as a torn tail.
            tracing::error!(error = %e, segment = id, "writing a new segment's start failed; handle is fatal");
            g.poisoned = Some(e.to_string());
            return Err(e);
        }
        g.mark_dirty(id, 0);
        tracing::info!(segment = id, first_key, path = %seg.path.display(), "segment rolled");
        g.segments.push(seg);
        if let Some(seg) = g.segments.last_mut() {
            self.maybe_populate(seg);
        }
        self.kick_preparer();
        Ok(())
    }

    /// Check one record against the log's rules before staging it.
    fn check_record(
        &self,
        last_key: Option<u64>,
        key: u64,
        payload: &[u8],
    ) -> Result<(), WalError> {
        if key == 0 || last_key.is_some_and(|l| key <= l) {
            return Err(WalError::KeyNotIncreasing { key, last_key });
        }
        if payload.len() > self.max_payload {
            return Err(WalError::PayloadTooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        Ok(())
    }

    /// Write a staged batch (its records and a fresh end marker, in one
    /// `pwritev`) at the write position of the active segment and, once it is
    /// written, make its records part of the log. On a failed write nothing
    /// of the batch is appended.
    fn write_batch(&self, g: &mut Inner, batch: &mut Batch<'_>) -> Result<(), WalError> {
        let (Some(&(first_key, _, _)), Some(&(last_key, _, last_crc))) =
            (batch.records.first(), batch.records.last())
        else {
            return Ok(());
        };
        let faults = self.faults.as_deref();
        let wm = g.durable_key.unwrap_or(0);
        let last = g.segments.len() - 1;
        let seg = &mut g.segments[last];
        assert_eq!(
            seg.write_pos, batch.start,
            "a batch is staged at the active segment's write position"
        );
        let mut dirty_off = batch.start;
        let mut fatal = None;
        let written = (|| {
            if let Some(first) = batch.header_first_key {
                // An emptied segment gets the header for its new first record.
                seg.header.first_key = first;
                if let Err(e) = seg.write_header(faults) {
                    fatal = Some(e.to_string());
                    return Err(e);
                }
                dirty_off = 0;
            }
            let end = batch.start + batch.len;
            if end + RECORD_HEADER_BYTES <= seg.len() {
                let mut marker = [0u8; RECORD_HEADER_BYTES];
                encode_marker(&mut marker, seg.id, wm);
                batch.push_staged(&marker);
            }
            let mut slices: Vec<IoSlice<'_>> = batch
                .parts
                .iter()
                .map(|p| match *p {
                    Part::Staged(s, e) => IoSlice::new(&batch.buf[s..e]),
                    Part::Borrowed(b) => IoSlice::new(b),
                })
                .collect();
            let r = faults::check(faults, FaultPoint::Write).and_then(|()| {
                let total = slices.iter().map(|s| s.len()).sum();
                faults::will_write(faults, &seg.file, batch.start as u64, total);
                pwritev_all(&seg.file, &mut slices, batch.start as u64)
            });
            if let Err(source) = r {
                // The write may have overwritten the end marker: put it back,
                // so the log in the file still ends at the write position.
                if let Err(e) = seg.write_marker(wm, faults) {
                    fatal = Some(e.to_string());
                }
                return Err(WalError::WriteFailed {
                    path: seg.path.clone(),
                    offset: batch.start as u64,
                    source,
                });
            }
            Ok(())
        })();
        let id = seg.id;
        if dirty_off == 0 {
            g.mark_dirty(id, 0);
        }
        if let Err(e) = written {
            if let Some(reason) = fatal {
                tracing::error!(error = %reason, "wal write failed; handle is fatal");
                g.poisoned = Some(reason);
            }
            batch.restart(batch.start);
            return Err(e);
        }
        let seg = &mut g.segments[last];
        for &(key, off, _) in &batch.records {
            if seg
                .last_indexed
                .is_none_or(|l| off >= l + INDEX_STRIDE_BYTES)
            {
                // Offsets fit u32: segment sizes are capped well below 4 GiB.
                seg.index.push((key, off as u32));
                seg.last_indexed = Some(off);
            }
        }
        seg.first_key.get_or_insert(first_key);
        seg.last_key = Some(last_key);
        seg.last_crc = Some(last_crc);
        seg.write_pos = batch.start + batch.len;
        let marker_end = (seg.write_pos + RECORD_HEADER_BYTES).min(seg.len());
        seg.high_water = seg.high_water.max(marker_end);
        self.maybe_populate(seg);
        batch.restart(seg.write_pos);
        g.last_key = Some(last_key);
        g.mark_dirty(id, dirty_off);
        Ok(())
    }

    /// Hand the next stretch of the active segment to the preparer thread
    /// for pre-faulting, when the writer gets close to its end.
    fn maybe_populate(&self, seg: &mut Segment) {
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

    /// Append one record, written into the segment file's page cache; durable
    /// only after the next [`sync`](Self::sync) returns.
    ///
    /// Errors: the key is 0 or not above [`last_key`](Self::last_key), the
    /// payload is over the maximum, a new segment cannot be created (e.g.
    /// ENOSPC: the log is unchanged), a write fails, or the handle is fatal.
    pub fn append(&self, key: u64, payload: &[u8]) -> Result<(), WalError> {
        self.append_batch(std::iter::once((key, payload)))
            .map(|_| ())
    }

    /// Append records in order, under one lock acquisition and with one
    /// positioned write per segment touched (group the records of a batch
    /// here rather than appending them one by one). On error, the records
    /// before the failing one may stay appended ([`last_key`](Self::last_key)
    /// tells); the count appended is returned on success.
    pub fn append_batch<'p, I>(&self, records: I) -> Result<usize, WalError>
    where
        I: IntoIterator<Item = (u64, &'p [u8])>,
    {
        let mut g = self.inner.write();
        g.check_poison()?;
        let start = g.segments.last().map_or(0, |s| s.write_pos);
        let scratch = std::mem::take(&mut g.scratch);
        let mut batch = Batch::new(scratch, start);
        let wm = g.durable_key.unwrap_or(0);
        let mut last_key = g.last_key;
        let mut n = 0;
        let mut result = Ok(());
        for (key, payload) in records {
            if let Err(e) = self.check_record(last_key, key, payload) {
                result = Err(e);
                break;
            }
            let size = align_up(RECORD_HEADER_BYTES + payload.len());
            let fits = g
                .segments
                .last()
                .is_some_and(|s| batch.start + batch.len + size <= s.len());
            if !fits {
                // Finish the active segment with what is staged, then roll.
                if let Err(e) = self.write_batch(&mut g, &mut batch) {
                    result = Err(e);
                    break;
                }
                if let Err(e) = self.roll(&mut g, key) {
                    result = Err(e);
                    break;
                }
                let start = g.segments.last().map_or(0, |s| s.write_pos);
                batch.restart(start);
            }
            let last = g.segments.len() - 1;
            let seg = &g.segments[last];
            assert!(
                batch.start + batch.len + size <= seg.len(),
                "a record of at most max_payload fits an empty segment"
            );
            if batch.records.is_empty() && seg.first_key.is_none() && seg.header.first_key != key {
                batch.header_first_key = Some(key);
            }
            batch.stage(seg.id, key, wm, payload);
            last_key = Some(key);
            n += 1;
        }
        let written = self.write_batch(&mut g, &mut batch);
        g.scratch = batch.into_scratch();
        written?;
        result.map(|()| n)
    }

    fn flush_dirty(&self, g: &Inner, from: (u64, usize)) -> Result<(), WalError> {
        for job in flush_jobs(g, from) {
            job.run(self.sync_method, self.faults.as_deref())?;
        }
        Ok(())
    }

    /// Make everything appended so far durable with one flush of the dirty
    /// range (group commit), and return the highest durable key.
    ///
    /// The flush runs without the log's lock: appends (and readers) go on
    /// while it waits for the disk, and land in the next sync's range. Syncs
    /// are serialized with each other (and with
    /// [`truncate_suffix`](Self::truncate_suffix)).
    ///
    /// A flush error is fatal for this handle ([`WalError::SyncFailed`], then
    /// [`WalError::Poisoned`]): reopen the log, which recovers its last
    /// durable state.
    pub fn sync(&self) -> Result<Option<u64>, WalError> {
        let _serial = self.sync_lock.lock();
        let (jobs, target) = {
            let mut g = self.inner.write();
            g.check_poison()?;
            let Some(from) = g.dirty_from.take() else {
                return Ok(g.durable_key);
            };
            (flush_jobs(&g, from), g.last_key)
        };
        let r = jobs
            .iter()
            .try_for_each(|j| j.run(self.sync_method, self.faults.as_deref()));
        let mut g = self.inner.write();
        if let Err(e) = r {
            tracing::error!(error = %e, "wal flush failed; handle is fatal");
            g.poisoned = Some(e.to_string());
            return Err(e);
        }
        debug_assert!(
            g.durable_key <= target,
            "only syncs advance durable_key, and they are serialized"
        );
        g.durable_key = target;
        // The new watermark goes into the file at once, in an end marker
        // written into the page cache (not flushed: the next batch
        // overwrites it, and the next flush or `close` takes it to the
        // disk). Without it, a process killed now (SIGKILL: the page cache
        // survives) left no proof that this batch was synced, and damage
        // found in it later read as a torn tail and was cut silently,
        // though the batch may have been acknowledged. One small write
        // into a page this flush just wrote.
        g.marker_unflushed = true;
        let faults = self.faults.as_deref();
        let wm = target.unwrap_or(0);
        if let Some(seg) = g.segments.last_mut() {
            if let Err(e) = seg.write_marker(wm, faults) {
                // As for any failed marker write: the handle is fatal. The
                // flush above succeeded, but the caller is told it did not
                // (conservative: nothing is acknowledged on a failed call).
                tracing::error!(error = %e, "writing the end marker after a sync failed; handle is fatal");
                g.poisoned = Some(e.to_string());
                return Err(e);
            }
        }
        Ok(target)
    }

    /// Delete whole segments all of whose keys are below `key` (the part of
    /// the log every replica has applied). The segment holding the last
    /// record is always kept, so records below `key` may remain readable;
    /// [`first_key`](Self::first_key) tells what is left. Freed files are
    /// recycled as spare segments (up to `max_spare_segments`) or deleted.
    /// Returns the number of segments removed.
    ///
    /// The removal is made durable by the next segment roll (or by
    /// [`close`](Self::close)), not by a directory fsync of its own: a crash
    /// before that brings the removed segments back as an older prefix, which
    /// is harmless, and keeps this call off the disk's critical path.
    pub fn truncate_prefix(&self, key: u64) -> Result<usize, WalError> {
        let mut g = self.inner.write();
        g.check_poison()?;
        let mut removed = 0;
        // Bounded by the number of segments.
        while g.segments.len() > 1 && g.segments[1].header.first_key <= key {
            let (id, path) = (g.segments[0].id, g.segments[0].path.clone());
            self.retire_file(id, &path)?;
            g.segments.remove(0);
            removed += 1;
        }
        if removed > 0 {
            // No directory fsync here: if the renames or unlinks are lost in
            // a crash, the old segments come back as a longer (still
            // chained, still valid) prefix, which is harmless. A recycled
            // file is only written after the next roll's directory fsync,
            // which makes these removals durable first.
            tracing::info!(key, removed, first_key = ?g.first_key(), "prefix truncated");
        }
        Ok(removed)
    }

    /// Remove every record with a key above `key`, durably: later segments
    /// are deleted (directory synced), the rest of the segment is zeroed and
    /// everything is flushed, so no crash can bring a removed record back.
    /// On return everything left in the log is durable.
    pub fn truncate_suffix(&self, key: u64) -> Result<(), WalError> {
        let _serial = self.sync_lock.lock();
        let mut g = self.inner.write();
        g.check_poison()?;
        if g.last_key.is_none_or(|l| l <= key) {
            return Ok(());
        }
        let r = self.truncate_suffix_locked(&mut g, key);
        if let Err(e) = &r {
            if matches!(
                e,
                WalError::SyncFailed { .. } | WalError::WriteFailed { .. }
            ) {
                g.poisoned = Some(e.to_string());
            }
        }
        r
    }

    fn truncate_suffix_locked(&self, g: &mut Inner, key: u64) -> Result<(), WalError> {
        let mut removed = 0;
        // Bounded by the number of segments.
        while g.segments.len() > 1 && g.segments.last().is_some_and(|s| s.header.first_key > key) {
            let (id, path) = g
                .segments
                .last()
                .map(|s| (s.id, s.path.clone()))
                .unwrap_or_default();
            self.retire_file(id, &path)?;
            g.segments.pop();
            removed += 1;
        }
        if removed > 0 {
            fsync_dir(&self.dir_file, &self.dir, self.faults.as_deref())?;
        }
        let last = g.segments.len() - 1;
        let seg = &mut g.segments[last];
        let cut = seg
            .find_at_or_after(key.saturating_add(1))
            .unwrap_or(seg.write_pos);
        // Find the last record before the cut (for the CRC chain and keys).
        let mut prev: Option<(usize, u64, u32)> = None;
        let mut off = SEGMENT_HEADER_BYTES;
        let i = seg.index.partition_point(|&(_, o)| (o as usize) < cut);
        if i > 0 {
            off = seg.index[i - 1].1 as usize;
        }
        while off < cut {
            let Some(h) = raw_header(&seg.map, off) else {
                break;
            };
            if (h.len as usize) < RECORD_HEADER_BYTES {
                debug_assert!(false, "record chain below write_pos is intact");
                break;
            }
            prev = Some((off, h.key, h.crc));
            off += align_up(h.len as usize);
        }
        let zero_end = seg.high_water.max(cut + RECORD_HEADER_BYTES).min(seg.len());
        seg.zero(cut, zero_end, self.faults.as_deref())?;
        seg.index.truncate(i);
        seg.last_indexed = seg.index.last().map(|&(_, o)| o as usize);
        seg.write_pos = cut;
        seg.last_key = prev.map(|p| p.1);
        seg.last_crc = prev.map(|p| p.2);
        if seg.last_key.is_none() {
            seg.first_key = None;
        }
        let id = seg.id;
        let new_last = g.segments.iter().rev().find_map(|s| s.last_key);
        g.last_key = new_last;
        g.mark_dirty(id, cut);
        let from = g.dirty_from.unwrap_or((id, cut));
        // high_water still covers the zeroed range: flush it all.
        {
            let seg = &mut g.segments[last];
            seg.high_water = zero_end;
        }
        self.flush_dirty(g, from)?;
        let seg = &mut g.segments[last];
        seg.high_water = cut;
        g.dirty_from = None;
        g.durable_key = new_last;
        g.marker_unflushed = true;
        tracing::info!(key, removed_segments = removed, last_key = ?new_last, "suffix truncated");
        Ok(())
    }

    /// A read guard: records borrowed from the map, without copies. Writers
    /// wait while it is alive.
    pub fn reader(&self) -> WalReader<'_> {
        WalReader {
            guard: self.inner.read(),
        }
    }

    /// Copy out the payload of `key`, if present (checksum verified).
    pub fn get(&self, key: u64) -> Result<Option<Vec<u8>>, WalError> {
        Ok(self.inner.read().get(key)?.map(<[u8]>::to_vec))
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

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether an earlier flush failure made this handle fatal.
    pub fn is_poisoned(&self) -> bool {
        self.inner.read().poisoned.is_some()
    }

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

    fn shutdown_preparer(&mut self) {
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
        let no = {
            let mut st = self.spares.state.lock();
            let no = st.next_spare_no;
            st.next_spare_no += 1;
            no
        };
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
        self.guard.get(key)
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
