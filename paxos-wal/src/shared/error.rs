//! The shared log's error type.

use crate::WalError;

/// What can go wrong in a [`SharedLog`](super::SharedLog).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedError {
    /// The underlying write-ahead log failed (see [`WalError`] for what each
    /// kind leaves behind; after a failed flush the handle is fatal).
    #[error("shared log: {0}")]
    Wal(#[from] WalError),
    /// A record's payload does not hold a valid shared-log record: damage
    /// the record checksum did not catch, or a log written by something
    /// else. Nothing from it is served.
    #[error("shared log record at lsn {lsn} is invalid: {reason}")]
    BadRecord {
        /// The record's log sequence number.
        lsn: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The index names a record the log does not hold as described (a
    /// missing record, or one of another group or key): the log and the
    /// index disagree, so the read is refused.
    #[error("group {group} key {key}: the log record at lsn {lsn} does not match ({reason})")]
    IndexMismatch {
        /// The group read.
        group: u64,
        /// The key read.
        key: u64,
        /// Where the index said the entry is.
        lsn: u64,
        /// What was found instead.
        reason: String,
    },
    /// An entry key is not above the group's last key.
    #[error("group {group}: key {key} is not above the group's last key {last:?}")]
    KeyNotIncreasing {
        /// The group.
        group: u64,
        /// The refused key.
        key: u64,
        /// The group's last key.
        last: Option<u64>,
    },
    /// Opening one more group would pass the bound on groups.
    #[error("group {group} would be group number {max} + 1: at most {max} groups share one log")]
    TooManyGroups {
        /// The group refused.
        group: u64,
        /// The bound ([`MAX_GROUPS`](super::MAX_GROUPS)).
        max: usize,
    },
    /// A group state is larger than [`MAX_META_BYTES`](super::MAX_META_BYTES).
    #[error("group {group}: state of {len} bytes exceeds {max} bytes")]
    MetaTooLarge {
        /// The group.
        group: u64,
        /// The state's length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A group's saved state does not decode as the state its handle
    /// writes (`GroupStorage`): damaged, or written by something else.
    #[error("group {group}: saved state is invalid: {reason}")]
    BadGroupState {
        /// The group.
        group: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// Records staged by write combining could not be written to the file
    /// (see [`SharedLog::flush`](super::SharedLog::flush)): the index holds
    /// records the log does not, so the handle refuses everything from now
    /// on. Reopen the log: it recovers its last durable state.
    #[error("shared log is fatal: {reason}")]
    Unflushed {
        /// Which records and why.
        reason: String,
    },
    /// The log has used up its sequence numbers (2^63 records).
    #[error("the shared log has no sequence number left after {last}")]
    LsnExhausted {
        /// The last sequence number used.
        last: u64,
    },
}
