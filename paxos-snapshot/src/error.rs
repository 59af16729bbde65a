//! The crate's error type.

use std::io;
use std::path::PathBuf;

use paxos_core::Zxid;

use crate::chunk::SnapshotId;

/// Everything that can go wrong reading, writing, storing or transferring a
/// snapshot. `file` names the file (or `<stream>` for an in-memory stream)
/// and `offset` the byte offset in it where the problem was found.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// An IO call failed.
    #[error("{op} failed on {}: {source}", file.display())]
    Io {
        /// What was being done (`"create"`, `"fsync"`, `"rename"`...).
        op: &'static str,
        /// The file or directory.
        file: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The file does not start with the snapshot magic.
    #[error("{} is not a snapshot file (bad magic at offset 0)", file.display())]
    BadMagic {
        /// The file.
        file: PathBuf,
    },
    /// The format version is not one this build reads.
    #[error("{}: unsupported snapshot format version {version}", file.display())]
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// The version found.
        version: u32,
    },
    /// A header field is out of range (chunk size, voter count).
    #[error("{}: invalid header at offset {offset}: {what}", file.display())]
    BadHeader {
        /// The file.
        file: PathBuf,
        /// Offset of the bad field.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The header checksum does not match.
    #[error("{}: header checksum mismatch at offset {offset}", file.display())]
    HeaderChecksum {
        /// The file.
        file: PathBuf,
        /// Offset of the stored checksum.
        offset: u64,
    },
    /// A chunk declares a length larger than the header allows.
    #[error("{}: chunk {index} at offset {offset} declares {len_bytes} bytes, more than the limit {max_bytes}", file.display())]
    ChunkTooLarge {
        /// The file.
        file: PathBuf,
        /// Offset of the chunk frame.
        offset: u64,
        /// Chunk number, from 0.
        index: u64,
        /// Declared length.
        len_bytes: u32,
        /// The header's chunk size.
        max_bytes: u32,
    },
    /// A chunk shorter than the header's chunk size is followed by another
    /// (only the last chunk may be short).
    #[error("{}: chunk {index} is short but not last (next frame at offset {offset})", file.display())]
    ShortChunk {
        /// The file.
        file: PathBuf,
        /// Offset of the frame that follows the short chunk.
        offset: u64,
        /// Number of the short chunk.
        index: u64,
    },
    /// A chunk's checksum does not match its contents.
    #[error("{}: checksum mismatch in chunk {index} at offset {offset}", file.display())]
    ChunkChecksum {
        /// The file.
        file: PathBuf,
        /// Offset of the chunk frame.
        offset: u64,
        /// Chunk number, from 0.
        index: u64,
    },
    /// The stream ended before the snapshot did.
    #[error("{}: truncated at offset {offset} (inside {inside})", file.display())]
    Truncated {
        /// The file.
        file: PathBuf,
        /// Offset where more bytes were expected.
        offset: u64,
        /// Which structure was cut (`"header"`, `"chunk"`, `"trailer"`).
        inside: &'static str,
    },
    /// The trailer is damaged or disagrees with the data read.
    #[error("{}: bad trailer at offset {offset}: {what}", file.display())]
    BadTrailer {
        /// The file.
        file: PathBuf,
        /// Offset of the trailer.
        offset: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// Bytes follow the trailer.
    #[error("{}: unexpected bytes after the trailer at offset {offset}", file.display())]
    TrailingBytes {
        /// The file.
        file: PathBuf,
        /// Offset of the first extra byte.
        offset: u64,
    },
    /// A read after the stream already failed.
    #[error("{}: stream already failed at offset {offset}", file.display())]
    Poisoned {
        /// The file.
        file: PathBuf,
        /// Offset of the first failure.
        offset: u64,
    },
    /// The state machine's restore did not consume the whole snapshot.
    #[error("{}: the state machine left {unread_bytes} snapshot bytes unread", file.display())]
    Unconsumed {
        /// The file.
        file: PathBuf,
        /// Bytes left.
        unread_bytes: u64,
    },
    /// The state machine failed to write or restore its state.
    #[error("state machine {op} at zxid {zxid:?} failed: {source}")]
    StateMachine {
        /// `"snapshot"` or `"restore"`.
        op: &'static str,
        /// The snapshot's zxid.
        zxid: Zxid,
        /// The error it returned.
        #[source]
        source: io::Error,
    },
    /// A transfer chunk belongs to another snapshot than the one in progress.
    #[error("foreign chunk at offset {offset}: expected snapshot {expected:?}, got {got:?}")]
    ForeignChunk {
        /// The snapshot being received.
        expected: SnapshotId,
        /// The snapshot the chunk names.
        got: SnapshotId,
        /// The chunk's offset.
        offset: u64,
    },
    /// A transfer chunk does not start where the previous one ended.
    #[error("out-of-order chunk of snapshot {snapshot:?}: expected offset {expected}, got {got}")]
    OutOfOrder {
        /// The snapshot being received.
        snapshot: SnapshotId,
        /// The next offset the receiver needs.
        expected: u64,
        /// The chunk's offset.
        got: u64,
    },
    /// A transfer chunk's checksum does not match its data.
    #[error("chunk of snapshot {snapshot:?} at offset {offset} failed its checksum")]
    TransferChecksum {
        /// The snapshot being received.
        snapshot: SnapshotId,
        /// The chunk's offset.
        offset: u64,
    },
    /// A transfer chunk's bounds disagree with the snapshot's length (too
    /// long, empty, or a `last` flag that does not end the file).
    #[error("chunk of snapshot {snapshot:?} at offset {offset} ({len_bytes} bytes) {what}")]
    BadChunkBounds {
        /// The snapshot being received.
        snapshot: SnapshotId,
        /// The chunk's offset.
        offset: u64,
        /// The chunk's length.
        len_bytes: u64,
        /// What is wrong.
        what: &'static str,
    },
    /// The received file does not match the snapshot it claims to be.
    #[error("received snapshot {snapshot:?} in {} is not the announced one: {what}", file.display())]
    IdentityMismatch {
        /// The announced snapshot.
        snapshot: SnapshotId,
        /// The received file.
        file: PathBuf,
        /// What differs.
        what: &'static str,
    },
    /// Install was asked for before the last chunk arrived.
    #[error(
        "snapshot {snapshot:?} is incomplete: {received_bytes} of {total_bytes} bytes received"
    )]
    Incomplete {
        /// The snapshot being received.
        snapshot: SnapshotId,
        /// Bytes received so far.
        received_bytes: u64,
        /// Its total length.
        total_bytes: u64,
    },
    /// Install was asked for with no transfer in progress.
    #[error("no snapshot transfer in progress")]
    NothingReceived,
    /// No snapshot at this zxid in the store.
    #[error("no snapshot at zxid {zxid:?} in {}", dir.display())]
    NotFound {
        /// The store's directory.
        dir: PathBuf,
        /// The zxid asked for.
        zxid: Zxid,
    },
}

impl SnapshotError {
    pub(crate) fn io(op: &'static str, file: impl Into<PathBuf>, source: io::Error) -> Self {
        SnapshotError::Io {
            op,
            file: file.into(),
            source,
        }
    }

    /// Recovers a `SnapshotError` carried inside an `io::Error` (as returned
    /// by [`SnapshotReader`](crate::SnapshotReader)'s `io::Read`), or wraps
    /// the `io::Error` as [`SnapshotError::Io`].
    pub fn from_io(err: io::Error, op: &'static str, file: impl Into<PathBuf>) -> Self {
        if err
            .get_ref()
            .is_some_and(|inner| inner.is::<SnapshotError>())
        {
            let kind = err.kind();
            return match err
                .into_inner()
                .map(|inner| inner.downcast::<SnapshotError>())
            {
                Some(Ok(inner)) => *inner,
                Some(Err(other)) => SnapshotError::io(op, file, io::Error::new(kind, other)),
                None => SnapshotError::io(op, file, io::Error::from(kind)),
            };
        }
        SnapshotError::io(op, file, err)
    }

    /// True for the errors that mean the data is damaged or not what was
    /// expected (as opposed to an IO failure).
    pub fn is_corruption(&self) -> bool {
        !matches!(
            self,
            SnapshotError::Io { .. }
                | SnapshotError::StateMachine { .. }
                | SnapshotError::NotFound { .. }
                | SnapshotError::Incomplete { .. }
                | SnapshotError::NothingReceived
        )
    }
}

impl From<SnapshotError> for io::Error {
    fn from(err: SnapshotError) -> io::Error {
        let kind = if err.is_corruption() {
            io::ErrorKind::InvalidData
        } else {
            io::ErrorKind::Other
        };
        io::Error::new(kind, err)
    }
}

/// Shorthand for this crate's results.
pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;
