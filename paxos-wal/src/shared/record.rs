//! The shared log's record header: what each WAL record's payload starts
//! with, and its decoder (total: any byte string decodes or is refused with
//! a reason, never a panic).

use super::error::SharedError;

/// Bytes of the header at the start of every shared-log record's payload:
/// kind (1), group (8, little-endian), key (8, little-endian).
pub const HEADER_BYTES: usize = 17;

/// What a shared-log record says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A log entry of `group` at `key`; the body is its payload.
    Entry,
    /// A log entry carrying the tag (`paxos-core` uses it for membership
    /// changes), otherwise as [`RecordKind::Entry`].
    TaggedEntry,
    /// The group's entries with keys above `key` are dropped. Empty body.
    TruncateSuffix,
    /// The group's entries with keys up to `key` (inclusive) are dropped.
    /// Empty body.
    TruncatePrefix,
    /// The group's durable state: the body replaces the previous one
    /// (`key` is 0). At most [`MAX_META_BYTES`](super::MAX_META_BYTES).
    Meta,
    /// The group is gone: its entries and state are dropped (`key` is 0).
    /// Empty body.
    RemoveGroup,
}

impl RecordKind {
    /// The byte stored for this kind.
    pub fn code(self) -> u8 {
        match self {
            RecordKind::Entry => 1,
            RecordKind::TaggedEntry => 2,
            RecordKind::TruncateSuffix => 3,
            RecordKind::TruncatePrefix => 4,
            RecordKind::Meta => 5,
            RecordKind::RemoveGroup => 6,
        }
    }

    /// The kind stored as `code`, if any.
    pub fn from_code(code: u8) -> Option<RecordKind> {
        Some(match code {
            1 => RecordKind::Entry,
            2 => RecordKind::TaggedEntry,
            3 => RecordKind::TruncateSuffix,
            4 => RecordKind::TruncatePrefix,
            5 => RecordKind::Meta,
            6 => RecordKind::RemoveGroup,
            _ => return None,
        })
    }
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordHeader {
    /// What the record says.
    pub kind: RecordKind,
    /// The group it is about.
    pub group: u64,
    /// The entry key, or the truncation bound (0 for the kinds without one).
    pub key: u64,
}

impl RecordHeader {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[0] = self.kind.code();
        out[1..9].copy_from_slice(&self.group.to_le_bytes());
        out[9..17].copy_from_slice(&self.key.to_le_bytes());
        out
    }
}

/// Splits the payload of the WAL record at `lsn` into its header and body,
/// checking what the header alone can tell: the length, the kind, an empty
/// body for the truncation and removal kinds, a zero key and a bounded body
/// for [`RecordKind::Meta`]. Errors are [`SharedError::BadRecord`] naming
/// `lsn`.
pub fn decode_record(lsn: u64, payload: &[u8]) -> Result<(RecordHeader, &[u8]), SharedError> {
    let bad = |reason: String| SharedError::BadRecord { lsn, reason };
    let Some((head, body)) = payload.split_first_chunk::<HEADER_BYTES>() else {
        return Err(bad(format!(
            "payload of {} bytes is shorter than the {HEADER_BYTES}-byte header",
            payload.len()
        )));
    };
    let kind = RecordKind::from_code(head[0])
        .ok_or_else(|| bad(format!("unknown record kind {}", head[0])))?;
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let header = RecordHeader {
        kind,
        group: u64_at(1),
        key: u64_at(9),
    };
    match kind {
        RecordKind::Entry | RecordKind::TaggedEntry => {}
        RecordKind::TruncateSuffix | RecordKind::TruncatePrefix | RecordKind::RemoveGroup => {
            if !body.is_empty() {
                return Err(bad(format!(
                    "{kind:?} record carries {} bytes of body (none expected)",
                    body.len()
                )));
            }
            if kind == RecordKind::RemoveGroup && header.key != 0 {
                return Err(bad(format!("{kind:?} record has key {}", header.key)));
            }
        }
        RecordKind::Meta => {
            if header.key != 0 {
                return Err(bad(format!("{kind:?} record has key {}", header.key)));
            }
            if body.len() > super::MAX_META_BYTES {
                return Err(bad(format!(
                    "meta record of {} bytes exceeds {} bytes",
                    body.len(),
                    super::MAX_META_BYTES
                )));
            }
        }
    }
    Ok((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_unknown_codes_are_refused() {
        for code in 0..=u8::MAX {
            match RecordKind::from_code(code) {
                Some(kind) => assert_eq!(kind.code(), code),
                None => {
                    let mut p = [0u8; HEADER_BYTES];
                    p[0] = code;
                    assert!(matches!(
                        decode_record(9, &p),
                        Err(SharedError::BadRecord { lsn: 9, .. })
                    ));
                }
            }
        }
        let h = RecordHeader {
            kind: RecordKind::TaggedEntry,
            group: 7,
            key: u64::MAX,
        };
        let mut p = h.encode().to_vec();
        p.extend_from_slice(b"body");
        assert_eq!(decode_record(1, &p).unwrap(), (h, &b"body"[..]));
    }
}
