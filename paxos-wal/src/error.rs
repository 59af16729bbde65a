//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An IO call failed (ENOSPC, EIO, permissions...), or a file holds a
    /// number no further file or update can follow (`InvalidData`: a
    /// segment id or spare number at the end of the `u64` range, a
    /// hard-state sequence of `u64::MAX`). Unless the variant below says
    /// otherwise, the log is unchanged and still usable.
    #[error("{op} failed on {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `msync`/`fdatasync`/`fsync` failed. The handle is now fatal: the kernel
    /// may have dropped the dirty pages, so nothing written since the last
    /// successful sync can be trusted. Reopen the log to continue from its
    /// last durable state.
    #[error("flushing {path} failed, the log handle is now fatal: {source}")]
    SyncFailed {
        /// The file or directory whose flush failed.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A positioned write into a segment file failed (EIO...). An append
    /// that fails this way appends none of the records of that write and
    /// leaves the log usable; a failed write while rolling to a new segment,
    /// truncating or updating the end marker makes the handle fatal (as
    /// [`WalError::SyncFailed`] does).
    #[error("writing {path} at offset {offset} failed: {source}")]
    WriteFailed {
        /// The segment file.
        path: PathBuf,
        /// Where the write started.
        offset: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An earlier flush failed; this handle refuses every further operation.
    #[error("log handle is fatal after an earlier flush failure ({reason}); reopen the log")]
    Poisoned {
        /// The original failure.
        reason: String,
    },
    /// The key is 0 (reserved) or not above the last key of the log.
    #[error("key {key} is not above the last key {last_key:?} (keys are strictly increasing and never 0)")]
    KeyNotIncreasing {
        /// The rejected key.
        key: u64,
        /// The log's last key.
        last_key: Option<u64>,
    },
    /// The payload is larger than the configured maximum.
    #[error("payload of {len} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge {
        /// Payload length.
        len: usize,
        /// The configured maximum (which always fits in one segment).
        max: usize,
    },
    /// The options are inconsistent (e.g. a segment too small for a record).
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// Another handle (in this or another process) holds the directory.
    #[error("log directory {path} is locked by another handle")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// Recovery found damage inside the proven-durable part of the log: data
    /// that may have been acknowledged is unreadable. Open with
    /// [`RecoveryMode::KeepValidPrefix`](crate::RecoveryMode::KeepValidPrefix)
    /// to keep the valid prefix and refetch the damaged keys from a peer.
    #[error("corruption in {path} at offset {offset}: {reason}; valid prefix ends at key {last_good_key:?}, keys up to {proven_durable_key} were durable")]
    Corrupted {
        /// The damaged segment file.
        path: PathBuf,
        /// Byte offset of the first damaged record (0: the header).
        offset: u64,
        /// What is wrong.
        reason: String,
        /// Last key of the valid prefix.
        last_good_key: Option<u64>,
        /// Highest key the log proves was durable.
        proven_durable_key: u64,
    },
    /// Recovery found data that nothing on disk proves durable (log records
    /// past the last proven-durable watermark, or the hard-state file) and
    /// could not make it durable: writing it again or flushing that write
    /// failed. Reading it proves nothing (after a failed flush the kernel
    /// may have marked its pages clean without writing them), so the open is
    /// refused and nothing claiming it durable was written. Retry once the
    /// disk is healthy, or move the directory aside and refetch from peers.
    #[error("cannot prove {what} in {path} durable: {op} failed: {source}")]
    UnprovenData {
        /// The file concerned.
        path: PathBuf,
        /// Which data (key range, or the hard state).
        what: String,
        /// The call that failed (`rewrite` or `flush`).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A record read back from the map failed its checksum (damage after open).
    #[error("record at {path} offset {offset} fails its checksum")]
    ReadCorruption {
        /// The segment file.
        path: PathBuf,
        /// Offset of the record.
        offset: u64,
    },
    /// Neither slot of a hard-state file is valid, though the file is not new.
    #[error("hard-state file {path} has no valid slot")]
    HardStateCorrupted {
        /// The hard-state file.
        path: PathBuf,
    },
}

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> WalError {
    let path = path.into();
    move |source| WalError::Io { op, path, source }
}
