//! Opening the log: locking the directory, scanning every segment, cutting
//! a torn tail or handling damage, and proving the kept records durable
//! before the log trusts them. `Wal::open` reads as that procedure; each
//! step is a function below.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use memmap2::Mmap;
use parking_lot::{Mutex, RwLock};

use super::report::{DamagedRange, OpenReport, RewrittenTail, TornTail};
use super::segment::{msync_range, page_size, rewrite_in_place, zero_file_range, Segment};
use super::spare::SpareCtx;
use super::{
    fsync_dir, segment_path, Inner, RecoveryMode, SyncMethod, Wal, WalOptions, MAX_SEGMENT_BYTES,
    MIN_SEGMENT_BYTES, SEGMENT_ALIGN_BYTES,
};
use crate::error::{io_err, WalError};
use crate::faults::{self, FaultPlan, FaultPoint};
use crate::format::{
    raw_header, scan_segment, ScanStop, SegmentScan, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};

const LOCK_FILE: &str = "LOCK";
const LOCK_ATTEMPTS: u32 = 25;
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// The number in a file name `<prefix><16 hex digits><suffix>`.
fn parse_hex(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    let hex = name.strip_prefix(prefix)?.strip_suffix(suffix)?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Take the directory's lock file (`flock`, exclusive), so that no second
/// handle, in this process or another, opens the log while the result lives.
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
        let max_payload = options.checked_max_payload()?;
        // Own the directory before reading it.
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        let dir_file = File::open(&dir).map_err(io_err("open directory", &dir))?;
        let lock = lock_dir(&dir)?;
        let faults = options.fault_plan.clone();

        // Find the files, then the valid log among the segments. Until the
        // break is handled only leftover temporary files and surplus spares
        // are removed.
        let listing = list_dir(&dir)?;
        let ready = keep_spares(
            listing.spares,
            options.segment_bytes,
            options.max_spare_segments.max(1),
        )?;
        let mut scanned = scan_segments(&dir, &listing.seg_ids)?;
        // Refuse, or cut the log back to its valid prefix.
        let mut report = OpenReport::default();
        let removed = match scanned.brk.take() {
            Some(b) => cut_at_break(
                &mut scanned,
                b,
                options.recovery,
                faults.as_deref(),
                &mut report,
            )?,
            None => Vec::new(),
        };

        let mut wal = Wal {
            dir: dir.clone(),
            dir_file,
            _lock: lock,
            segment_bytes: options.segment_bytes,
            max_payload,
            sync_method: options.sync_method,
            max_spares: options.max_spare_segments.max(1),
            prefault_ahead: options.prefault_ahead_bytes,
            faults,
            spares: SpareCtx::new(
                &dir,
                options.segment_bytes,
                ready,
                listing.next_spare_no,
                options.fault_plan.clone(),
            ),
            preparer: None,
            sync_lock: Mutex::new(()),
            inner: RwLock::new(Inner::empty(listing.next_segment_id)),
        };
        wal.retire_removed(removed)?;
        // Trust nothing recovered until a flush after a write of it proved
        // it, then make the kept segments the log.
        let Proven {
            segments,
            records,
            rewritten,
            tagged_keys,
        } = prove_durable(scanned.found, scanned.evidence, wal.faults.as_deref())?;
        report.records = records;
        report.rewritten = rewritten;
        wal.inner.get_mut().tagged_keys = tagged_keys;
        // The directory entries of the kept segments (a roll whose directory
        // sync failed left one unproven) and the removals above.
        fsync_dir(&wal.dir_file, &dir, wal.faults.as_deref())?;
        wal.install_recovered(segments, &mut report)?;
        // Spare files and pre-faulting run in the background from here on.
        if options.prepare_in_background {
            wal.start_preparer()?;
        }
        tracing::info!(dir = %dir.display(), segments = report.segments, records = report.records,
            first_key = ?report.first_key, last_key = ?report.last_key, torn = report.torn_tail.is_some(),
            damaged = report.damaged.is_some(), "wal opened");
        Ok((wal, report))
    }

    /// Retire the segment files recovery cut off, last first (recycled as
    /// spares or deleted; the caller syncs the directory). Afterwards no
    /// file past the valid log is left in the directory as a segment.
    fn retire_removed(&self, removed: Vec<Found>) -> Result<(), WalError> {
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
            self.retire_file(id, &path)?;
        }
        Ok(())
    }

    /// Make the recovered segments the log (keys, durable key = last key)
    /// and write a fresh end marker, flushed, that proves everything
    /// recovered durable. Fills the counts and keys of `report`.
    fn install_recovered(
        &mut self,
        segments: Vec<Segment>,
        report: &mut OpenReport,
    ) -> Result<(), WalError> {
        let faults = self.faults.as_deref();
        let g = self.inner.get_mut();
        g.last_key = segments.iter().rev().find_map(|s| s.last_key);
        g.durable_key = g.last_key;
        g.segments = segments;
        report.segments = g.segments.len();
        report.first_key = g.first_key();
        report.last_key = g.last_key;
        let wm = g.durable_key.unwrap_or(0);
        if let Some(seg) = g.segments.last_mut() {
            let pos = seg.write_pos;
            seg.write_marker(wm, faults)?;
            seg.flush(
                pos,
                pos + RECORD_HEADER_BYTES,
                SyncMethod::MsyncRange,
                faults,
            )?;
        }
        Ok(())
    }
}

/// What the log directory holds, read before any segment is opened.
struct Listing {
    /// Segment file ids, ascending.
    seg_ids: Vec<u64>,
    /// Spare files (recycled or zero-filled), sorted by name.
    spares: Vec<PathBuf>,
    /// The id the next new segment gets: past every segment or recycled
    /// file seen.
    next_segment_id: u64,
    /// The number the next zero-filled spare gets: past every one seen.
    next_spare_no: u64,
}

/// The error for a file whose number has no successor: a later file would
/// need a number past `u64::MAX` (wrapping would reuse an existing name).
fn no_successor(path: PathBuf, what: &str) -> WalError {
    WalError::Io {
        op: "list directory",
        path,
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} {:#x} leaves no number for the next one", u64::MAX),
        ),
    }
}

/// List the directory: segment ids in order, spare files, and the numbers
/// the next segment and spare get. Removes leftover temporary files (a
/// zero-fill interrupted by a crash). Refuses a file whose number leaves no
/// successor.
fn list_dir(dir: &Path) -> Result<Listing, WalError> {
    let mut seg_ids = Vec::new();
    let mut spares = Vec::new();
    let mut max_id_seen: Option<u64> = None;
    let mut next_spare_no = 0u64;
    let entries = fs::read_dir(dir).map_err(io_err("list directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if let Some(id) = parse_hex(name, "", ".wal") {
            if id == u64::MAX {
                return Err(no_successor(path, "segment id"));
            }
            seg_ids.push(id);
            max_id_seen = max_id_seen.max(Some(id));
        } else if let Some(id) = parse_hex(name, "recycled-", ".seg") {
            if id == u64::MAX {
                return Err(no_successor(path, "segment id"));
            }
            max_id_seen = max_id_seen.max(Some(id));
            spares.push(path);
        } else if let Some(no) = parse_hex(name, "spare-", ".seg") {
            let Some(next) = no.checked_add(1) else {
                return Err(no_successor(path, "spare number"));
            };
            next_spare_no = next_spare_no.max(next);
            spares.push(path);
        } else if name.ends_with(".tmp") {
            fs::remove_file(&path).map_err(io_err("remove temporary file", &path))?;
        }
    }
    seg_ids.sort_unstable();
    spares.sort();
    Ok(Listing {
        seg_ids,
        spares,
        // No overflow: ids of u64::MAX were refused above.
        next_segment_id: max_id_seen.map_or(0, |m| m + 1),
        next_spare_no,
    })
}

/// Keep the spares of the configured size, at most `max_ready` of them,
/// and delete the rest: every file in the returned pool can become a
/// segment as it is.
fn keep_spares(
    spares: Vec<PathBuf>,
    seg_bytes: u64,
    max_ready: usize,
) -> Result<Vec<PathBuf>, WalError> {
    let mut ready = Vec::new();
    for p in spares {
        let len = fs::metadata(&p).map_err(io_err("stat spare", &p))?.len();
        if len == seg_bytes && ready.len() < max_ready {
            ready.push(p);
        } else {
            fs::remove_file(&p).map_err(io_err("remove spare", &p))?;
        }
    }
    Ok(ready)
}

/// Every segment mapped and scanned, and where the valid log ends.
struct Scanned {
    found: Vec<Found>,
    /// The first break, if the valid log ends before the last segment's
    /// data does.
    brk: Option<Break>,
    /// Last key of the valid prefix.
    last_key: Option<u64>,
    /// The highest watermark found anywhere (in the valid prefix or past
    /// it): every key up to it was durable once.
    evidence: u64,
}

/// Open, map and scan every segment in id order. Establishes the valid
/// prefix (records chained across segments, keys increasing), the first
/// break in it, and the highest watermark on disk. Changes nothing on disk.
fn scan_segments(dir: &Path, seg_ids: &[u64]) -> Result<Scanned, WalError> {
    let mut s = Scanned {
        found: Vec::with_capacity(seg_ids.len()),
        brk: None,
        last_key: None,
        evidence: 0,
    };
    for (i, &id) in seg_ids.iter().enumerate() {
        let path = segment_path(dir, id);
        let (file, len, map) = map_segment(path.clone(), s.last_key, s.evidence)?;
        let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
        let prev_key = if s.brk.is_none() { s.last_key } else { None };
        let scan = scan_segment(bytes, id, prev_key);
        s.evidence = s.evidence.max(scan.max_watermark);
        if s.brk.is_none() {
            let prev_crc = s.found.last().and_then(|f| f.scan.last_crc);
            let b = segment_break(i, len, bytes.len(), &scan, prev_crc);
            // The segment's valid records extend the prefix unless the
            // whole segment is out (bad header or broken chain).
            if b.as_ref().is_none_or(|b| !b.whole) {
                s.last_key = scan.last_key.or(s.last_key);
            }
            s.brk = b;
        }
        s.found.push(Found {
            id,
            path,
            file,
            map,
            scan,
        });
    }
    Ok(s)
}

/// Open one segment file and map it (no map when it is shorter than a
/// segment header). A file over the maximum segment size is corruption:
/// no version of this crate wrote it.
fn map_segment(
    path: PathBuf,
    last_key: Option<u64>,
    evidence: u64,
) -> Result<(File, u64, Option<Mmap>), WalError> {
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
    Ok((file, len, map))
}

/// Where, if anywhere, the valid log ends in segment `i` (whose file is
/// `file_len` bytes, `map_len` of them mapped), given its scan and the CRC
/// of the previous segment's last record.
fn segment_break(
    i: usize,
    file_len: u64,
    map_len: usize,
    scan: &SegmentScan,
    prev_crc: Option<u32>,
) -> Option<Break> {
    let Some(h) = scan.header else {
        let reason = match scan.stop {
            ScanStop::BadHeader(e) => format!("bad segment header: {e}"),
            _ => "bad segment header".to_string(),
        };
        // Segments are renamed into place fully sized, so a short or
        // odd-sized file is outside damage.
        let external = file_len < MIN_SEGMENT_BYTES || file_len % SEGMENT_ALIGN_BYTES != 0;
        return Some(Break {
            idx: i,
            offset: 0,
            reason,
            whole: true,
            external,
        });
    };
    if i > 0 && h.prev_last_crc != prev_crc {
        return Some(Break {
            idx: i,
            offset: 0,
            reason: "segment does not chain to the previous segment's last record".to_string(),
            whole: true,
            external: false,
        });
    }
    // No crash shortens a segment file: damage in a short one is outside
    // damage.
    let short = (map_len as u64) < h.segment_bytes;
    if let ScanStop::BadRecord(b) = scan.stop {
        Some(Break {
            idx: i,
            offset: scan.end_offset,
            reason: b.to_string(),
            whole: false,
            external: short,
        })
    } else if short && scan.end_offset + RECORD_HEADER_BYTES > map_len {
        Some(Break {
            idx: i,
            offset: scan.end_offset,
            reason: format!(
                "segment file is {map_len} bytes, its header says {}",
                h.segment_bytes
            ),
            whole: false,
            external: true,
        })
    } else if scan.beyond_end_offset > scan.end_offset + RECORD_HEADER_BYTES
        || scan.records_beyond > 0
    {
        Some(Break {
            idx: i,
            offset: scan.end_offset,
            reason: "valid records after the end of data".to_string(),
            whole: false,
            external: short,
        })
    } else {
        None
    }
}

/// Apply the recovery rule at the break. Damage that may hold durable data
/// fails the open in [`RecoveryMode::Strict`] (nothing changed); otherwise
/// the affected files are preserved when durable data is lost, the break
/// segment is zeroed from the break and synced, and the segments after it
/// (returned, for retiring) leave `scanned.found`. Afterwards the kept
/// segments end exactly at the valid prefix, and `report` says why.
fn cut_at_break(
    scanned: &mut Scanned,
    b: Break,
    mode: RecoveryMode,
    faults: Option<&FaultPlan>,
    report: &mut OpenReport,
) -> Result<Vec<Found>, WalError> {
    let (last_key, evidence) = (scanned.last_key, scanned.evidence);
    let found = &mut scanned.found;
    let lost_durable = b.external || evidence > last_key.unwrap_or(0);
    let bpath = found[b.idx].path.clone();
    if lost_durable && mode != RecoveryMode::KeepValidPrefix {
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
    let preserved = if lost_durable {
        preserve_damaged(&found[b.idx..])?
    } else {
        Vec::new()
    };
    // Cut: later segments go, the break segment is zeroed from the break
    // (or goes entirely), then everything is synced.
    let first_removed = if b.whole { b.idx } else { b.idx + 1 };
    let removed = found.split_off(first_removed);
    let mut bytes_zeroed = 0u64;
    if !b.whole {
        let f = &mut found[b.idx];
        bytes_zeroed = zero_from_break(f, b.offset, faults)?;
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
    Ok(removed)
}

/// Copy each of `damaged` to `<name>.damaged` and sync the copies, so the
/// bytes recovery is about to cut stay available for inspection.
fn preserve_damaged(damaged: &[Found]) -> Result<Vec<PathBuf>, WalError> {
    let mut preserved = Vec::new();
    for f in damaged {
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
    Ok(preserved)
}

/// Zero segment `f` from the break at `offset` past everything found after
/// it (and at least one end marker's worth) and flush that range, so no
/// record past the break can validate again. Returns the bytes zeroed.
fn zero_from_break(f: &Found, offset: usize, faults: Option<&FaultPlan>) -> Result<u64, WalError> {
    let end = (offset + RECORD_HEADER_BYTES)
        .max(f.scan.beyond_end_offset)
        .min(f.len());
    let Some(map) = f.map.as_ref() else {
        return Ok(0);
    };
    if end <= offset {
        return Ok(0);
    }
    zero_file_range(&f.file, &f.path, offset, end, faults)?;
    let r = faults::check(faults, FaultPoint::Flush).and_then(|()| msync_range(map, offset, end));
    let range = Some((offset as u64, end as u64));
    faults::flushed(faults, &f.file, range, r).map_err(|source| WalError::SyncFailed {
        path: f.path.clone(),
        source,
    })?;
    Ok((end - offset) as u64)
}

/// Turn the kept segments into the log's segments, each flushed, and each
/// record past the proven-durable watermark (`evidence`) written again and
/// flushed first. Returns the segments, their record count and what was
/// rewritten; afterwards every kept record is durable.
///
/// Everything recovered may still sit only in the page cache (the previous
/// process was killed before its sync). Records past the watermark are not
/// trusted merely because they are readable: after a failed flush the
/// kernel may have marked their pages clean without writing them, and a
/// flush of clean pages writes nothing and succeeds. So their bytes, as
/// the scan verified them, are written again over themselves first (the
/// pages become dirty), and only a flush after that proves them; if either
/// fails, `open` refuses (`WalError::UnprovenData`) and writes no marker.
fn prove_durable(
    found: Vec<Found>,
    evidence: u64,
    faults: Option<&FaultPlan>,
) -> Result<Proven, WalError> {
    let mut segments = Vec::with_capacity(found.len());
    let mut records = 0u64;
    let mut rewritten: Option<RewrittenTail> = None;
    let mut tagged_keys = BTreeSet::new();
    for mut f in found {
        let scanned_records = f.scan.records;
        // The scan's tagged keys are those of the valid prefix, which the
        // cut (if any) left exactly in place: no second read of the log.
        let scanned_tags = std::mem::take(&mut f.scan.tagged_keys);
        let Some(seg) = recovered_segment(f) else {
            debug_assert!(false, "kept segments have a valid header and a map");
            continue;
        };
        records += scanned_records;
        tagged_keys.extend(scanned_tags);
        if let Some(t) = prove_segment(&seg, evidence, faults)? {
            // Segments come in key order: the range grows at its end.
            match rewritten.as_mut() {
                Some(r) => {
                    r.last_key = t.last_key;
                    r.bytes += t.bytes;
                }
                None => rewritten = Some(t),
            }
        }
        segments.push(seg);
    }
    Ok(Proven {
        segments,
        records,
        rewritten,
        tagged_keys,
    })
}

/// The kept segments, proven durable, and what `open` reports of them.
struct Proven {
    segments: Vec<Segment>,
    /// Records in them.
    records: u64,
    /// What was written again to prove it.
    rewritten: Option<RewrittenTail>,
    /// Keys of their tagged records.
    tagged_keys: BTreeSet<u64>,
}

/// The segment as the log holds it, writing at the end of its valid
/// prefix; `None` without a header or map (never the case for a kept one).
fn recovered_segment(f: Found) -> Option<Segment> {
    let Found {
        id,
        path,
        file,
        map,
        scan,
    } = f;
    let (Some(map), Some(header)) = (map, scan.header) else {
        return None;
    };
    let write_pos = scan.end_offset.max(SEGMENT_HEADER_BYTES);
    let high_water = (write_pos + RECORD_HEADER_BYTES).min(map.len());
    Some(Segment {
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
    })
}

/// Flush one kept segment; when it holds records past `evidence`, write
/// them again (whole pages) before the flush and return what was
/// rewritten. Afterwards the segment's records are on disk.
fn prove_segment(
    seg: &Segment,
    evidence: u64,
    faults: Option<&FaultPlan>,
) -> Result<Option<RewrittenTail>, WalError> {
    // The scan verified the records below `write_pos`, so the header is
    // there; were it not, the rewrite still happens.
    let unproven = seg.find_at_or_after(evidence.saturating_add(1)).map(|off| {
        let key = raw_header(&seg.map, off).map_or(evidence.saturating_add(1), |h| h.key);
        (off, key)
    });
    let Some((off, first_unproven)) = unproven else {
        let r = faults::check(faults, FaultPoint::Flush).and_then(|()| seg.file.sync_data());
        faults::flushed(faults, &seg.file, None, r).map_err(|source| WalError::SyncFailed {
            path: seg.path.clone(),
            source,
        })?;
        return Ok(None);
    };
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
    // Whole pages, from the one holding the first unproven record (the
    // header too, when that is the segment's first page).
    let from = off - off % page_size();
    rewrite_in_place(&seg.file, &seg.map, from, seg.write_pos, faults)
        .map_err(|e| refuse("rewrite", e))?;
    let r = faults::check(faults, FaultPoint::Flush).and_then(|()| seg.file.sync_data());
    faults::flushed(faults, &seg.file, None, r).map_err(|e| refuse("flush", e))?;
    let bytes = (seg.write_pos - from) as u64;
    tracing::info!(path = %seg.path.display(), first_key = first_unproven,
        last_key = ?seg.last_key, proven_through = evidence, bytes,
        "records past the proven-durable watermark rewritten and flushed before being trusted");
    Ok(Some(RewrittenTail {
        proven_through: evidence,
        first_key: first_unproven,
        last_key: seg.last_key.unwrap_or(first_unproven),
        bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_opts() -> WalOptions {
        WalOptions {
            segment_bytes: MIN_SEGMENT_BYTES,
            prepare_in_background: false,
            ..WalOptions::default()
        }
    }

    /// Put a file of `len` zero bytes named `name` into `dir`.
    fn zero_file(dir: &Path, name: &str, len: u64) -> PathBuf {
        let path = dir.join(name);
        File::create(&path).unwrap().set_len(len).unwrap();
        path
    }

    #[test]
    fn segment_id_without_successor_is_refused() {
        // Recovery would number the next segment past the highest id seen;
        // u64::MAX has no successor (wrapping would reuse segment 0's name).
        for name in ["ffffffffffffffff.wal", "recycled-ffffffffffffffff.seg"] {
            let dir = tempfile::tempdir().unwrap();
            let path = zero_file(dir.path(), name, MIN_SEGMENT_BYTES);
            let err = Wal::open(dir.path(), tiny_opts()).unwrap_err();
            assert!(
                matches!(&err, WalError::Io { op: "list directory", path: p, .. } if *p == path),
                "{name}: {err}"
            );
            assert!(path.exists(), "{name}: the refused open changed nothing");
        }
    }

    #[test]
    fn spare_number_without_successor_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = zero_file(dir.path(), "spare-ffffffffffffffff.seg", MIN_SEGMENT_BYTES);
        let err = Wal::open(dir.path(), tiny_opts()).unwrap_err();
        assert!(
            matches!(&err, WalError::Io { op: "list directory", path: p, .. } if *p == path),
            "{err}"
        );
        assert!(path.exists(), "the refused open changed nothing");
    }
}
