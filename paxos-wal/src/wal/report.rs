//! What `Wal::open` reports about the recovery it did.

use std::path::PathBuf;

#[cfg(doc)]
use super::{RecoveryMode, Wal};

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
