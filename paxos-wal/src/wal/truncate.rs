//! Truncation: dropping whole segments from the front (applied prefix) and
//! removing an uncommitted suffix durably.

use super::{fsync_dir, Inner, Wal};
use crate::error::WalError;
use crate::format::{align_up, raw_header, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

impl Wal {
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
            // The tagged keys of the removed segments go with them: every
            // key below the first one left (none left: no record at all).
            match g.first_key() {
                Some(first) => g.tagged_keys = g.tagged_keys.split_off(&first),
                None => g.tagged_keys.clear(),
            }
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
            if let Some(seg) = g.segments.pop() {
                // Its records are out of the log from here on.
                g.tagged_keys.split_off(&seg.header.first_key);
            }
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
        // Keys above `key` are gone (zeroed, flushed below).
        g.tagged_keys.split_off(&key.saturating_add(1));
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
}
