//! What a caller chooses when opening the log.

use std::sync::Arc;

use super::SEGMENT_ALIGN_BYTES;
#[cfg(doc)]
use super::{OpenReport, Wal};
use crate::error::WalError;
use crate::faults::FaultPlan;
use crate::format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Largest accepted segment size: 1 GiB.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// Smallest accepted segment size: 8 KiB.
pub const MIN_SEGMENT_BYTES: u64 = 8 << 10;

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

impl WalOptions {
    /// Check the options and return the largest accepted payload, which
    /// always fits in one segment.
    pub(super) fn checked_max_payload(&self) -> Result<usize, WalError> {
        let seg_bytes = self.segment_bytes;
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&seg_bytes)
            || seg_bytes % SEGMENT_ALIGN_BYTES != 0
        {
            return Err(WalError::InvalidOptions(format!(
                "segment_bytes {seg_bytes} must be a multiple of 4096 in {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}"
            )));
        }
        let capacity = seg_bytes as usize - SEGMENT_HEADER_BYTES - RECORD_HEADER_BYTES;
        let max_payload = self.max_payload_bytes.unwrap_or(capacity);
        if max_payload > capacity {
            return Err(WalError::InvalidOptions(format!(
                "max_payload_bytes {max_payload} does not fit a segment of {seg_bytes} bytes (at most {capacity})"
            )));
        }
        Ok(max_payload)
    }
}
