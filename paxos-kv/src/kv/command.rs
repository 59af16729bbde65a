//! The command format: what a client's write looks like in the replicated
//! log (`KvCommand`, `KvOp`), what applying it answers (`KvResult`), and
//! their byte encodings.
//!
//! Invariants: the decoders never panic on any input (they answer
//! [`KvCodecError`]); a command starts with [`COMMAND_FORMAT`], and its
//! decoder refuses another format, trailing bytes, fields over
//! [`MAX_KEY_BYTES`] / [`MAX_VALUE_BYTES`] / [`MAX_PRINCIPAL_BYTES`], and a
//! client-named session id in the assigned range
//! ([`ASSIGNED_SESSION_BIT`]); decoded keys and values are zero-copy
//! slices of the input.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The bit set in every cluster-assigned session id (see the `kv` module
/// docs).
/// A client-named session id never has it: a command that would open one
/// is refused when decoded ([`KvCodecError::ReservedSessionId`]).
pub const ASSIGNED_SESSION_BIT: u64 = 1 << 63;
/// Longest principal name a command carries, in bytes.
pub const MAX_PRINCIPAL_BYTES: usize = 128;
/// First byte of every encoded command: the command format.
pub const COMMAND_FORMAT: u8 = 2;

/// A write to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    /// Set `key` to `value`.
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Remove `key`.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Set `key` to `new` only if its current value is `expected`
    /// (`None`: only if the key is absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must hold (or `None` for absent).
        expected: Option<Bytes>,
        /// The value to set.
        new: Bytes,
    },
    /// Open a cluster-assigned session: answered with
    /// [`KvResult::SessionOpened`]. The command's `client` and `seq` are
    /// ignored (send 0). Not deduplicated: each commit opens a new session.
    OpenSession,
}

/// A command as it is replicated: an operation inside a client session.
///
/// Sessions belong to principals: the store keys its session table by
/// `(principal, client)`, so one principal can neither use nor disturb
/// another's sessions. The node checks that `principal` is the name the
/// connection authenticated as before it proposes the command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvCommand {
    /// The authenticated principal that issued the command (empty for an
    /// anonymous client of a node that serves plaintext clients), at most
    /// [`MAX_PRINCIPAL_BYTES`].
    pub principal: Bytes,
    /// The session (client) that issued it.
    pub client: u64,
    /// The session's sequence number; increasing per session, 1 for the
    /// first command of a client-named session.
    pub seq: u64,
    /// The operation.
    pub op: KvOp,
}

/// What applying a command returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvResult {
    /// Put or delete done; carries the previous value, if any.
    Done(Option<Bytes>),
    /// The command's sequence is below the session's last applied one: a
    /// late duplicate, or a session with two writes in flight. Not applied.
    StaleSequence {
        /// The session's last applied sequence.
        last: u64,
    },
    /// Compare-and-set: whether it swapped, and the value found.
    Cas {
        /// True if the value was replaced.
        swapped: bool,
        /// The value found before the operation.
        current: Option<Bytes>,
    },
    /// [`KvOp::OpenSession`] opened this session; its first write uses
    /// sequence 2.
    SessionOpened {
        /// The new session's id (has [`ASSIGNED_SESSION_BIT`] set).
        session: u64,
    },
    /// The command names a session that is not in the table (evicted, or
    /// never opened) with a sequence other than 1. Not applied: the writer
    /// must open a new session. An earlier attempt of the same write may
    /// have been applied before the session was evicted.
    SessionExpired {
        /// The session named by the command.
        session: u64,
    },
}

/// A malformed command or result encoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvCodecError {
    /// The input ended inside a field (at the byte offset given).
    #[error("kv encoding truncated at byte {0}")]
    Truncated(usize),
    /// An unknown operation or result tag.
    #[error("unknown kv tag {0}")]
    UnknownTag(u8),
    /// A key or value longer than allowed.
    #[error("kv field of {len} bytes exceeds the maximum {max}")]
    TooLong {
        /// Length found.
        len: usize,
        /// Maximum allowed.
        max: usize,
    },
    /// The command was encoded in another command format.
    #[error(
        "kv command format {found} is not supported (this build reads format {COMMAND_FORMAT})"
    )]
    Format {
        /// The format byte found.
        found: u8,
    },
    /// A command would open a client-named session whose id has
    /// [`ASSIGNED_SESSION_BIT`] set: those ids are the cluster's to assign.
    #[error("session id {0:#x} is reserved for cluster-assigned sessions; client-named ids must be below 2^63")]
    ReservedSessionId(u64),
    /// Bytes follow the command.
    #[error("{0} bytes after the end of the kv command")]
    Trailing(usize),
}

pub(super) fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u32_le(b.len() as u32);
    buf.put_slice(b);
}

fn get_bytes(src: &mut Bytes, max: usize, total: usize) -> Result<Bytes, KvCodecError> {
    if src.remaining() < 4 {
        return Err(KvCodecError::Truncated(total - src.remaining()));
    }
    let len = src.get_u32_le() as usize;
    if len > max {
        return Err(KvCodecError::TooLong { len, max });
    }
    if src.remaining() < len {
        return Err(KvCodecError::Truncated(total - src.remaining()));
    }
    Ok(src.split_to(len))
}

fn get_opt_bytes(src: &mut Bytes, max: usize, total: usize) -> Result<Option<Bytes>, KvCodecError> {
    if src.remaining() < 1 {
        return Err(KvCodecError::Truncated(total));
    }
    match src.get_u8() {
        0 => Ok(None),
        1 => get_bytes(src, max, total).map(Some),
        t => Err(KvCodecError::UnknownTag(t)),
    }
}

fn put_opt_bytes(buf: &mut BytesMut, b: Option<&Bytes>) {
    match b {
        None => buf.put_u8(0),
        Some(b) => {
            buf.put_u8(1);
            put_bytes(buf, b);
        }
    }
}

impl KvCommand {
    /// Encodes the command into `buf`: `format u8 | principal (u8 length |
    /// bytes) | client u64 | seq u64 | op`.
    ///
    /// # Panics
    /// If `principal` is longer than [`MAX_PRINCIPAL_BYTES`] (a caller's
    /// bug: principal names are checked where they are configured).
    pub fn encode(&self, buf: &mut BytesMut) {
        assert!(
            self.principal.len() <= MAX_PRINCIPAL_BYTES,
            "invariant: principal names are at most MAX_PRINCIPAL_BYTES"
        );
        buf.put_u8(COMMAND_FORMAT);
        buf.put_u8(self.principal.len() as u8);
        buf.put_slice(&self.principal);
        buf.put_u64_le(self.client);
        buf.put_u64_le(self.seq);
        match &self.op {
            KvOp::Put { key, value } => {
                buf.put_u8(1);
                put_bytes(buf, key);
                put_bytes(buf, value);
            }
            KvOp::Delete { key } => {
                buf.put_u8(2);
                put_bytes(buf, key);
            }
            KvOp::Cas { key, expected, new } => {
                buf.put_u8(3);
                put_bytes(buf, key);
                put_opt_bytes(buf, expected.as_ref());
                put_bytes(buf, new);
            }
            KvOp::OpenSession => buf.put_u8(4),
        }
    }

    /// Encodes the command into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(32 + self.principal.len() + self.size_hint());
        self.encode(&mut buf);
        buf.freeze()
    }

    fn size_hint(&self) -> usize {
        match &self.op {
            KvOp::Put { key, value } => key.len() + value.len() + 8,
            KvOp::Delete { key } => key.len() + 4,
            KvOp::Cas { key, expected, new } => {
                key.len() + new.len() + expected.as_ref().map_or(0, |e| e.len()) + 13
            }
            KvOp::OpenSession => 0,
        }
    }

    /// The principal named by an encoded command, without decoding the
    /// rest (the node's check against the connection's identity).
    pub fn peek_principal(src: &[u8]) -> Result<&[u8], KvCodecError> {
        match src {
            [] => Err(KvCodecError::Truncated(0)),
            [f, ..] if *f != COMMAND_FORMAT => Err(KvCodecError::Format { found: *f }),
            [_, len, rest @ ..] => {
                let len = usize::from(*len);
                if len > MAX_PRINCIPAL_BYTES {
                    return Err(KvCodecError::TooLong {
                        len,
                        max: MAX_PRINCIPAL_BYTES,
                    });
                }
                rest.get(..len).ok_or(KvCodecError::Truncated(2))
            }
            [_] => Err(KvCodecError::Truncated(1)),
        }
    }

    /// The key an encoded command writes (`None` for one without a key,
    /// such as opening a session): what a node hosting many groups routes
    /// by. Decodes the command (zero-copy), so a malformed one is an error.
    pub fn key_of(src: &Bytes) -> Result<Option<Bytes>, KvCodecError> {
        Ok(match KvCommand::decode(src.clone())?.op {
            KvOp::Put { key, .. } | KvOp::Delete { key } | KvOp::Cas { key, .. } => Some(key),
            KvOp::OpenSession => None,
        })
    }

    /// Decodes a command; keys and values are zero-copy slices of `src`.
    pub fn decode(mut src: Bytes) -> Result<KvCommand, KvCodecError> {
        let total = src.len();
        let principal_len = Self::peek_principal(&src)?.len();
        src.advance(2);
        let principal = src.split_to(principal_len);
        if src.remaining() < 17 {
            return Err(KvCodecError::Truncated(total - src.remaining()));
        }
        let client = src.get_u64_le();
        let seq = src.get_u64_le();
        let op = match src.get_u8() {
            1 => KvOp::Put {
                key: get_bytes(&mut src, MAX_KEY_BYTES, total)?,
                value: get_bytes(&mut src, MAX_VALUE_BYTES, total)?,
            },
            2 => KvOp::Delete {
                key: get_bytes(&mut src, MAX_KEY_BYTES, total)?,
            },
            3 => KvOp::Cas {
                key: get_bytes(&mut src, MAX_KEY_BYTES, total)?,
                expected: get_opt_bytes(&mut src, MAX_VALUE_BYTES, total)?,
                new: get_bytes(&mut src, MAX_VALUE_BYTES, total)?,
            },
            4 => KvOp::OpenSession,
            t => return Err(KvCodecError::UnknownTag(t)),
        };
        if src.has_remaining() {
            return Err(KvCodecError::Trailing(src.remaining()));
        }
        // Sequence 1 opens a client-named session (see the module docs);
        // an id with the top bit would collide with an assigned one.
        if seq == 1 && client & ASSIGNED_SESSION_BIT != 0 && op != KvOp::OpenSession {
            return Err(KvCodecError::ReservedSessionId(client));
        }
        Ok(KvCommand {
            principal,
            client,
            seq,
            op,
        })
    }
}

impl KvResult {
    /// Encodes the result.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        match self {
            KvResult::Done(prev) => {
                buf.put_u8(1);
                put_opt_bytes(&mut buf, prev.as_ref());
            }
            KvResult::Cas { swapped, current } => {
                buf.put_u8(2);
                buf.put_u8(u8::from(*swapped));
                put_opt_bytes(&mut buf, current.as_ref());
            }
            KvResult::StaleSequence { last } => {
                buf.put_u8(3);
                buf.put_u64_le(*last);
            }
            KvResult::SessionOpened { session } => {
                buf.put_u8(4);
                buf.put_u64_le(*session);
            }
            KvResult::SessionExpired { session } => {
                buf.put_u8(5);
                buf.put_u64_le(*session);
            }
        }
        buf.freeze()
    }

    /// Decodes a result.
    pub fn decode(mut src: Bytes) -> Result<KvResult, KvCodecError> {
        let total = src.len();
        if src.remaining() < 1 {
            return Err(KvCodecError::Truncated(0));
        }
        let tag = src.get_u8();
        match tag {
            1 => Ok(KvResult::Done(get_opt_bytes(
                &mut src,
                MAX_VALUE_BYTES,
                total,
            )?)),
            2 => {
                if src.remaining() < 1 {
                    return Err(KvCodecError::Truncated(1));
                }
                let swapped = src.get_u8() != 0;
                Ok(KvResult::Cas {
                    swapped,
                    current: get_opt_bytes(&mut src, MAX_VALUE_BYTES, total)?,
                })
            }
            3..=5 => {
                if src.remaining() < 8 {
                    return Err(KvCodecError::Truncated(1));
                }
                let n = src.get_u64_le();
                Ok(match tag {
                    3 => KvResult::StaleSequence { last: n },
                    4 => KvResult::SessionOpened { session: n },
                    _ => KvResult::SessionExpired { session: n },
                })
            }
            t => Err(KvCodecError::UnknownTag(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::test_util::*;

    #[test]
    fn commands_with_trailing_bytes_or_another_format_are_refused() {
        let mut c = BytesMut::from(&cmd_as(b"a", 1, 1, put_op("k", "v"))[..]);
        c.put_u8(0);
        assert_eq!(
            KvCommand::decode(c.freeze()),
            Err(KvCodecError::Trailing(1))
        );
        let mut c = BytesMut::from(&cmd_as(b"a", 1, 1, put_op("k", "v"))[..]);
        c[0] = 1;
        assert_eq!(
            KvCommand::decode(c.freeze()),
            Err(KvCodecError::Format { found: 1 })
        );
        assert_eq!(
            KvCommand::peek_principal(&cmd_as(b"alice", 1, 1, put_op("k", "v"))),
            Ok(&b"alice"[..])
        );
    }

    #[test]
    fn new_result_variants_round_trip() {
        for r in [
            KvResult::SessionOpened {
                session: ASSIGNED_SESSION_BIT | 5,
            },
            KvResult::SessionExpired { session: 42 },
            KvResult::StaleSequence { last: 9 },
        ] {
            assert_eq!(KvResult::decode(r.to_bytes()), Ok(r));
        }
        let c = KvCommand {
            principal: Bytes::from_static(b"alice"),
            client: 0,
            seq: 0,
            op: KvOp::OpenSession,
        };
        assert_eq!(KvCommand::decode(c.to_bytes()), Ok(c));
    }
}
