//! One segment file as the open log holds it (file, read-only map, sparse
//! index), and the positioned writes and flushes done on segment files.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::reader::Record;
#[cfg(doc)]
use super::Wal;
use super::{Inner, SyncMethod, ZEROS};
use crate::error::WalError;
use crate::faults::{self, FaultPlan, FaultPoint};
use crate::format::{
    align_up, encode_marker, raw_header, record_crc, SegmentHeader, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};

/// Bytes written per call when rewriting a range in place.
pub(super) const ZERO_CHUNK_BYTES: usize = 1 << 20;

pub(super) struct Segment {
    pub(super) id: u64,
    pub(super) path: PathBuf,
    /// Shared with an in-flight [`Wal::sync`], which flushes without the
    /// log's lock.
    pub(super) file: Arc<File>,
    /// Read-only: every byte is written with `pwrite` (see the crate docs on
    /// the write path) and read back through this map. Shared like `file`.
    pub(super) map: Arc<Mmap>,
    pub(super) header: SegmentHeader,
    pub(super) first_key: Option<u64>,
    pub(super) last_key: Option<u64>,
    pub(super) last_crc: Option<u32>,
    /// Where the next record goes.
    pub(super) write_pos: usize,
    /// Offset past everything this incarnation of the segment may have
    /// written (records and marker): zeroing up to here erases every record.
    pub(super) high_water: usize,
    pub(super) index: Vec<(u64, u32)>,
    pub(super) last_indexed: Option<usize>,
    /// Pages below this offset were handed to the preparer for pre-faulting.
    pub(super) populated_to: usize,
}

impl Segment {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Offset of the first record with a key >= `key` in this segment.
    pub(super) fn find_at_or_after(&self, key: u64) -> Option<usize> {
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
    pub(super) fn record_at(&self, off: usize) -> Result<(Record<'_>, usize), WalError> {
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
        if record_crc(self.id, h.field, h.key, h.watermark, payload) != h.crc {
            return Err(bad());
        }
        Ok((
            Record {
                key: h.key,
                tagged: h.tagged,
                payload,
            },
            align_up(len),
        ))
    }

    /// Write `bytes` at `off` through the file. The page cache is shared
    /// with the map, so readers see the bytes at once.
    pub(super) fn write_at(
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

    pub(super) fn write_header(&self, faults: Option<&FaultPlan>) -> Result<(), WalError> {
        self.write_at(0, &self.header.encode(), faults)
    }

    /// Write the end marker (carrying `watermark`) at the write position.
    pub(super) fn write_marker(
        &mut self,
        watermark: u64,
        faults: Option<&FaultPlan>,
    ) -> Result<(), WalError> {
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
    pub(super) fn zero(
        &self,
        from: usize,
        to: usize,
        faults: Option<&FaultPlan>,
    ) -> Result<(), WalError> {
        zero_file_range(&self.file, &self.path, from, to, faults)
    }

    pub(super) fn flush(
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
    pub(super) fn flush_job(&self, start: usize, end: usize) -> FlushJob {
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
pub(super) struct FlushJob {
    file: Arc<File>,
    map: Arc<Mmap>,
    path: PathBuf,
    start: usize,
    end: usize,
}

impl FlushJob {
    pub(super) fn run(
        &self,
        method: SyncMethod,
        faults: Option<&FaultPlan>,
    ) -> Result<(), WalError> {
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

/// Flush jobs for every dirty byte from `from` (segment id, offset) on.
pub(super) fn flush_jobs(g: &Inner, from: (u64, usize)) -> Vec<FlushJob> {
    g.segments
        .iter()
        .filter(|s| s.id >= from.0)
        .map(|s| {
            let start = if s.id == from.0 { from.1 } else { 0 };
            s.flush_job(start, s.high_water)
        })
        .collect()
}

/// `msync(MS_SYNC)` of the pages holding `start..end` of a mapped segment.
/// The map is read-only, but `msync` of a shared mapping writes back the
/// file's dirty pages in the range however they were dirtied.
pub(super) fn msync_range(map: &Mmap, start: usize, end: usize) -> io::Result<()> {
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

pub(super) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// Zero `from..to` of a segment file with positioned writes.
pub(super) fn zero_file_range(
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
pub(super) fn rewrite_in_place(
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
