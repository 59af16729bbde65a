//! The append path: records staged into one positioned write per segment,
//! segment rolls, and the group-commit sync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::io::AsRawFd;
use std::sync::Arc;

use memmap2::Mmap;

use super::segment::{flush_jobs, Segment};
use super::{fsync_dir, segment_path, Inner, Wal, ZEROS};
use crate::error::WalError;
use crate::faults::{self, FaultPoint};
use crate::format::{
    align_up, encode_marker, encode_record_header, len_field, record_crc_parts, SegmentHeader,
    INDEX_STRIDE_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};

/// Payloads up to this size are copied next to their record headers into
/// one staging buffer; larger ones are written straight from the caller's
/// slice (one `pwritev` either way).
const INLINE_PAYLOAD_MAX: usize = 1024;
/// Slices per `pwritev` call (Linux's `IOV_MAX`).
const MAX_IOVECS: usize = 1024;

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

/// Bytes written at the start of a record's payload, ahead of the body the
/// caller lends: at most [`RecordPrefix::MAX`] bytes, held inline (no
/// allocation per record).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordPrefix {
    bytes: [u8; RecordPrefix::MAX],
    len: u8,
}

impl RecordPrefix {
    /// The largest prefix.
    pub(crate) const MAX: usize = 32;
    /// No prefix.
    pub(crate) const EMPTY: RecordPrefix = RecordPrefix {
        bytes: [0; RecordPrefix::MAX],
        len: 0,
    };

    #[cfg_attr(not(feature = "shared"), allow(dead_code))]
    /// The prefix of exactly these bytes (`N` is checked against
    /// [`RecordPrefix::MAX`] at compile time).
    pub(crate) fn from_array<const N: usize>(bytes: [u8; N]) -> RecordPrefix {
        const { assert!(N <= RecordPrefix::MAX) };
        let mut p = RecordPrefix::EMPTY;
        p.bytes[..N].copy_from_slice(&bytes);
        p.len = N as u8;
        p
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
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
    /// Keys of the tagged records staged (empty, unallocated, for the
    /// usual batch without tags).
    tagged_keys: Vec<u64>,
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
            tagged_keys: Vec::new(),
        }
    }

    fn restart(&mut self, start: usize) {
        self.buf.clear();
        self.parts.clear();
        self.records.clear();
        self.start = start;
        self.len = 0;
        self.header_first_key = None;
        self.tagged_keys.clear();
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

    /// Encode one record after the ones already staged. Its payload is
    /// `prefix` (copied into the staging buffer) followed by `payload`.
    fn stage(
        &mut self,
        segment_id: u64,
        key: u64,
        tagged: bool,
        watermark: u64,
        prefix: &[u8],
        payload: &'p [u8],
    ) {
        let len = RECORD_HEADER_BYTES + prefix.len() + payload.len();
        let size = align_up(len);
        let off = self.start + self.len;
        // Lengths fit 31 bits: a record fits a segment of at most 1 GiB.
        let field = len_field(len as u32, tagged);
        let crc = record_crc_parts(segment_id, field, key, watermark, prefix, payload);
        let mut header = [0u8; RECORD_HEADER_BYTES];
        encode_record_header(&mut header, field, crc, key, watermark);
        if tagged {
            self.tagged_keys.push(key);
        }
        self.push_staged(&header);
        self.push_staged(prefix);
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

impl Wal {
    /// Start a new segment whose first record will be `first_key`.
    fn roll(&self, g: &mut Inner, first_key: u64) -> Result<(), WalError> {
        let id = g.next_segment_id;
        // Never reached by a log numbered from 0; a directory holding a
        // segment numbered just below `u64::MAX` would get here.
        let Some(next_id) = id.checked_add(1) else {
            return Err(WalError::Io {
                op: "install segment",
                path: self.dir.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("segment id {id:#x} is the last one: no id for the segment after it"),
                ),
            });
        };
        let spare = self.take_spare()?;
        let path = segment_path(&self.dir, id);
        if let Err(source) = fs::rename(&spare, &path) {
            let _ = fs::remove_file(&spare);
            return Err(WalError::Io {
                op: "install segment",
                path,
                source,
            });
        }
        g.next_segment_id = next_id;
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
        payload_len: usize,
    ) -> Result<(), WalError> {
        if key == 0 || last_key.is_some_and(|l| key <= l) {
            return Err(WalError::KeyNotIncreasing { key, last_key });
        }
        if payload_len > self.max_payload {
            return Err(WalError::PayloadTooLarge {
                len: payload_len,
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
        let write_pos = seg.write_pos;
        g.tagged_keys.extend(batch.tagged_keys.iter().copied());
        batch.restart(write_pos);
        g.last_key = Some(last_key);
        g.mark_dirty(id, dirty_off);
        Ok(())
    }

    /// Append one record, written into the segment file's page cache; durable
    /// only after the next [`sync`](Self::sync) returns.
    ///
    /// Errors: the key is 0 or not above [`last_key`](Self::last_key), the
    /// payload is over the maximum, a new segment cannot be created (e.g.
    /// ENOSPC: the log is unchanged), a write fails, or the handle is fatal.
    pub fn append(&self, key: u64, payload: &[u8]) -> Result<(), WalError> {
        self.append_records(std::iter::once((key, false, payload)))
            .map(|_| ())
    }

    /// [`append`](Self::append) with the record's tag: a flag stored in the
    /// record (covered by its checksum, see [`format`](mod@crate::format)),
    /// read back in [`Record::tagged`](crate::Record::tagged) and listed by
    /// [`tagged_keys`](Self::tagged_keys).
    pub fn append_tagged(&self, key: u64, tagged: bool, payload: &[u8]) -> Result<(), WalError> {
        self.append_records(std::iter::once((key, tagged, payload)))
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
        self.append_records(
            records
                .into_iter()
                .map(|(key, payload)| (key, false, payload)),
        )
    }

    /// [`append_batch`](Self::append_batch) of `(key, tagged, payload)`:
    /// each record with its tag (see [`append_tagged`](Self::append_tagged)).
    /// Tags are meant to be rare: the log keeps every tagged key it holds in
    /// memory ([`tagged_keys`](Self::tagged_keys)).
    pub fn append_batch_tagged<'p, I>(&self, records: I) -> Result<usize, WalError>
    where
        I: IntoIterator<Item = (u64, bool, &'p [u8])>,
    {
        self.append_records(records.into_iter())
    }

    fn append_records<'p, I>(&self, records: I) -> Result<usize, WalError>
    where
        I: Iterator<Item = (u64, bool, &'p [u8])>,
    {
        self.append_prefixed(
            records.map(|(key, tagged, payload)| (key, tagged, RecordPrefix::EMPTY, payload)),
        )
    }

    /// Append records whose payload is a small `prefix` (staged next to the
    /// record header, so the caller needs no buffer of its own for it)
    /// followed by a borrowed body. Same rules and errors as
    /// [`append_batch_tagged`](Self::append_batch_tagged); the payload limit
    /// applies to prefix and body together. Used by the shared log, whose
    /// record headers travel this way.
    pub(crate) fn append_prefixed<'p, I>(&self, records: I) -> Result<usize, WalError>
    where
        I: Iterator<Item = (u64, bool, RecordPrefix, &'p [u8])>,
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
        for (key, tagged, prefix, payload) in records {
            let prefix = prefix.as_slice();
            if let Err(e) = self.check_record(last_key, key, prefix.len() + payload.len()) {
                result = Err(e);
                break;
            }
            let size = align_up(RECORD_HEADER_BYTES + prefix.len() + payload.len());
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
            batch.stage(seg.id, key, tagged, wm, prefix, payload);
            last_key = Some(key);
            n += 1;
        }
        let written = self.write_batch(&mut g, &mut batch);
        g.scratch = batch.into_scratch();
        written?;
        result.map(|()| n)
    }

    /// Segment bytes a record of `payload_len` bytes takes (header and
    /// padding included).
    pub(crate) fn record_bytes(payload_len: usize) -> usize {
        align_up(RECORD_HEADER_BYTES + payload_len)
    }

    /// Bytes the active segment can still take without a roll (0 when the
    /// log has no segment yet or the handle is fatal): a batch of records
    /// whose [`record_bytes`](Self::record_bytes) sum to at most this is
    /// written with one positioned write and never creates a segment.
    pub(crate) fn active_room(&self) -> usize {
        let g = self.inner.read();
        if g.poisoned.is_some() {
            return 0;
        }
        g.segments
            .last()
            .map_or(0, |s| s.len().saturating_sub(s.write_pos))
    }

    /// The largest payload a record may carry.
    pub(crate) fn max_payload(&self) -> usize {
        self.max_payload
    }

    pub(super) fn flush_dirty(&self, g: &Inner, from: (u64, usize)) -> Result<(), WalError> {
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
}

#[cfg(test)]
mod tests {
    use std::fs::{File, OpenOptions};
    use std::os::unix::fs::FileExt;

    use crate::format::SegmentHeader;
    use crate::{Wal, WalError, WalOptions, MIN_SEGMENT_BYTES};

    #[test]
    fn roll_past_the_last_segment_id_fails_and_keeps_the_log() {
        // A valid, empty segment whose id leaves exactly one id, u64::MAX,
        // which is never used: the roll that would need it fails cleanly.
        let dir = tempfile::tempdir().unwrap();
        let id = u64::MAX - 1;
        let header = SegmentHeader {
            segment_id: id,
            first_key: 1,
            segment_bytes: MIN_SEGMENT_BYTES,
            prev_last_crc: None,
        };
        let path = dir.path().join(format!("{id:016x}.wal"));
        File::create(&path)
            .unwrap()
            .set_len(MIN_SEGMENT_BYTES)
            .unwrap();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&header.encode(), 0).unwrap();
        drop(f);
        let (wal, report) = Wal::open(
            dir.path(),
            WalOptions {
                segment_bytes: MIN_SEGMENT_BYTES,
                prepare_in_background: false,
                ..WalOptions::default()
            },
        )
        .unwrap();
        assert_eq!(report.segments, 1);
        wal.append(1, b"one").unwrap();
        let big = vec![7u8; MIN_SEGMENT_BYTES as usize / 2];
        wal.append(2, &big).unwrap();
        let err = wal.append(3, &big).unwrap_err();
        assert!(
            matches!(
                &err,
                WalError::Io {
                    op: "install segment",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            !wal.is_poisoned(),
            "nothing was written: the log stays usable"
        );
        assert_eq!(wal.last_key(), Some(2));
        assert_eq!(wal.sync().unwrap(), Some(2));
        assert_eq!(wal.segment_count(), 1);
    }
}
