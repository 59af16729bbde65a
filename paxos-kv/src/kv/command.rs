//! The command format: what a client's write looks like in the replicated
//! log (`KvCommand`, `KvOp`), what applying it answers (`KvResult`), and
//! their byte encodings.
//!
//! Invariants: the decoders never panic on any input (they answer
//! [`KvCodecError`]); a command starts with [`COMMAND_FORMAT`], and its
//! decoder refuses another format, trailing bytes, fields over
//! [`MAX_KEY_BYTES`] / [`MAX_VALUE_BYTES`] / [`MAX_PRINCIPAL_BYTES`], and a
//! client-named session id in the assigned range
//! ([`ASSIGNED_SESSION_BIT`]), an ingest batch of more than
//! [`MAX_INGEST_PAIRS`] pairs, and a split whose membership is not a
//! valid one (no voter, a list over [`MAX_SPLIT_MEMBERS`], an id named
//! twice); decoded keys and values are zero-copy slices of the input.
//!
//! The operations that move key ranges between groups ([`KvOp::AllocateGroup`],
//! [`KvOp::Split`], [`KvOp::Ingest`], [`KvOp::FinishMove`], and for merges
//! [`KvOp::Retire`] and [`KvOp::Absorb`]) came after format 2 was fixed and
//! did not change it: their tags (5 to 10) are new, and a build that
//! predates them decodes such a command as malformed and applies it as a
//! no-op, so every node of a group must run a build that knows them before
//! any of them is proposed (tags 9 and 10 came later than 5 to 8: a build
//! that knows splits but not merges treats them as malformed too).

use crate::shard::KeyRange;
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
/// First byte of every encoded command: the command format. The range
/// moving operations (tags 5 to 10) were added within format 2: a build
/// that does not know them refuses them as malformed commands (no-ops).
pub const COMMAND_FORMAT: u8 = 2;
/// Most pairs one [`KvOp::Ingest`] batch may carry.
pub const MAX_INGEST_PAIRS: usize = 65_536;
/// Longest reason a [`KvResult::Refused`] carries, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Most voters, and separately most observers, a [`KvOp::Split`] may name
/// for the new group.
pub const MAX_SPLIT_MEMBERS: usize = 1024;

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
    /// Internal (proposed by a node, never by a client): hand out a group
    /// id, the larger of the store's counter and `floor`, and count past
    /// it. Answered with [`KvResult::GroupAllocated`].
    AllocateGroup {
        /// The smallest id to hand out (the node passes its base group
        /// count, so that new ids never name a base group).
        floor: u32,
    },
    /// Internal: give the positions from `at` to the end of this group's
    /// range to the new group `child`, whose first membership is
    /// `voters` and `observers`. Its keys stay here, frozen, until
    /// [`KvOp::FinishMove`]. Answered with [`KvResult::SplitStarted`] or
    /// [`KvResult::Refused`].
    ///
    /// The membership travels in the command so that every replica
    /// creates the child with the same members, whatever happens to this
    /// group's own membership afterwards: the proposing node copies this
    /// group's configuration at the time it proposes.
    Split {
        /// The first position given away; strictly inside the range.
        at: u128,
        /// The new group's id.
        child: u32,
        /// Node ids of the new group's voters: at least one, at most
        /// [`MAX_SPLIT_MEMBERS`].
        voters: Vec<u64>,
        /// Node ids of the new group's observers (non-voting members), at
        /// most [`MAX_SPLIT_MEMBERS`]; none of them also a voter.
        observers: Vec<u64>,
    },
    /// Internal: a batch of the pairs a new group takes over from `from`,
    /// in increasing (position, key) order, following the pair `after` (the
    /// last one of the previous batch; `None` for the first batch). A batch
    /// that does not follow the store's cursor is refused unapplied, which
    /// makes a duplicate or a stale batch harmless. Answered with
    /// [`KvResult::Ingested`] or [`KvResult::Refused`].
    Ingest {
        /// The group the range comes from.
        from: u32,
        /// (position, key) of the last pair of the previous batch.
        after: Option<(u128, Bytes)>,
        /// The pairs, at most [`MAX_INGEST_PAIRS`] (a longer batch does
        /// not decode). The whole command must also fit the log's entry
        /// size, so a batch is best cut by bytes too.
        pairs: Vec<(Bytes, Bytes)>,
        /// True for the final batch: the group then owns the range.
        last: bool,
    },
    /// Internal: the range given to `child` has been taken over; drop its
    /// keys here. Answered with [`KvResult::Done`]`(None)` or
    /// [`KvResult::Refused`].
    FinishMove {
        /// The group the range was given to.
        child: u32,
    },
    /// Internal: the first step of merging this group into the adjacent
    /// group `into`. This group gives its whole range away: the range is
    /// recorded as going out to `into` (its keys stay here, frozen, until
    /// [`KvOp::FinishMove`] names `into`), and the group is retired for
    /// good ([`KvStore::retired_into`](crate::kv::KvStore::retired_into)):
    /// it never owns a key again. Answered with [`KvResult::Retiring`] or
    /// [`KvResult::Refused`].
    Retire {
        /// The group that takes this group's range over.
        into: u32,
    },
    /// Internal: the second step of a merge, in the group that stays:
    /// start taking `range`, adjacent to this group's own, over from the
    /// retiring group `from` through [`KvOp::Ingest`] batches, while this
    /// group goes on serving its own range. The final batch makes this
    /// group's range the union of both. Answered with
    /// [`KvResult::Absorbing`] or [`KvResult::Refused`].
    Absorb {
        /// The retiring group the range comes from.
        from: u32,
        /// The positions taken over: the retiring group's whole range.
        range: KeyRange,
    },
}

impl KvOp {
    /// True for the operations a node proposes to move ranges between
    /// groups. They take no session (the command's `principal`, `client`
    /// and `seq` are not looked at), so the store cannot tell who sent one:
    /// a node must refuse a client's command for which this is true.
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            KvOp::AllocateGroup { .. }
                | KvOp::Split { .. }
                | KvOp::Ingest { .. }
                | KvOp::FinishMove { .. }
                | KvOp::Retire { .. }
                | KvOp::Absorb { .. }
        )
    }

    /// The key the operation writes (`None` for a keyless one: opening a
    /// session, or an internal operation).
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            KvOp::Put { key, .. } | KvOp::Delete { key } | KvOp::Cas { key, .. } => Some(key),
            KvOp::OpenSession
            | KvOp::AllocateGroup { .. }
            | KvOp::Split { .. }
            | KvOp::Ingest { .. }
            | KvOp::FinishMove { .. }
            | KvOp::Retire { .. }
            | KvOp::Absorb { .. } => None,
        }
    }
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
    /// [`KvOp::AllocateGroup`] handed out this group id.
    GroupAllocated {
        /// The new group's id.
        id: u32,
    },
    /// [`KvOp::Split`] gave `range` to `child`; its keys are frozen here
    /// until [`KvOp::FinishMove`].
    SplitStarted {
        /// The new group.
        child: u32,
        /// The positions given to it.
        range: KeyRange,
    },
    /// [`KvOp::Retire`] retired this group: its whole `range` now goes out
    /// to `into`, frozen here until [`KvOp::FinishMove`].
    Retiring {
        /// The group taking the range over.
        into: u32,
        /// The positions given away (the group's whole range).
        range: KeyRange,
    },
    /// [`KvOp::Absorb`] started taking `range` over from `from`.
    Absorbing {
        /// The retiring group the range comes from.
        from: u32,
        /// The positions coming in.
        range: KeyRange,
    },
    /// [`KvOp::Ingest`] took a batch in.
    Ingested {
        /// Pairs taken in so far, this batch included.
        moved: u64,
        /// True once the final batch is in: the group owns the range.
        done: bool,
    },
    /// An internal operation did not fit the store's state (a duplicate,
    /// a stale batch, a split already under way): not applied.
    Refused {
        /// Why, in words (at most [`MAX_REASON_BYTES`]).
        reason: Bytes,
    },
    /// The key is not in the range this group owns (it never did, it was
    /// given to another group by a split or a merge, or this group is still
    /// taking it over). Not applied, and the session's sequence is not
    /// recorded: the write can go to the group that owns the key.
    WrongGroup,
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
    /// A [`KvOp::Split`] names no voter for the new group.
    #[error("a split names no voter for the new group")]
    NoVoters,
    /// A [`KvOp::Split`] names a node twice (in one list, or as both a
    /// voter and an observer).
    #[error("a split names node {0} twice in the new group's membership")]
    DuplicateMember(u64),
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

/// Checks that `n` more bytes are there.
fn need(src: &Bytes, n: usize, total: usize) -> Result<(), KvCodecError> {
    if src.remaining() < n {
        return Err(KvCodecError::Truncated(total - src.remaining()));
    }
    Ok(())
}

fn get_u32(src: &mut Bytes, total: usize) -> Result<u32, KvCodecError> {
    need(src, 4, total)?;
    Ok(src.get_u32_le())
}

fn get_u64(src: &mut Bytes, total: usize) -> Result<u64, KvCodecError> {
    need(src, 8, total)?;
    Ok(src.get_u64_le())
}

/// A list of node ids, `count u32 | id u64*`, of at most `max` ids.
fn get_ids(src: &mut Bytes, max: usize, total: usize) -> Result<Vec<u64>, KvCodecError> {
    let count = get_u32(src, total)? as usize;
    if count > max {
        return Err(KvCodecError::TooLong { len: count, max });
    }
    need(src, count.saturating_mul(8), total)?;
    Ok((0..count).map(|_| src.get_u64_le()).collect())
}

fn put_ids(buf: &mut BytesMut, ids: &[u64]) {
    buf.put_u32_le(ids.len() as u32);
    for id in ids {
        buf.put_u64_le(*id);
    }
}

/// A u128 as 16 bytes little-endian (the low u64 first, then the high).
fn get_u128(src: &mut Bytes, total: usize) -> Result<u128, KvCodecError> {
    need(src, 16, total)?;
    Ok(src.get_u128_le())
}

/// A flag byte: 0 or 1, anything else is refused.
fn get_bool(src: &mut Bytes, total: usize) -> Result<bool, KvCodecError> {
    need(src, 1, total)?;
    match src.get_u8() {
        0 => Ok(false),
        1 => Ok(true),
        t => Err(KvCodecError::UnknownTag(t)),
    }
}

fn get_range(src: &mut Bytes, total: usize) -> Result<KeyRange, KvCodecError> {
    let start = get_u128(src, total)?;
    let end = get_u128(src, total)?;
    Ok(KeyRange { start, end })
}

pub(super) fn put_range(buf: &mut BytesMut, r: &KeyRange) {
    buf.put_u128_le(r.start);
    buf.put_u128_le(r.end);
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

/// The first operation tag of the node's own operations: every tag from
/// it up is internal ([`KvCommand::peek_is_internal`]).
const FIRST_INTERNAL_TAG: u8 = 5;

impl KvCommand {
    /// Encodes the command into `buf`: `format u8 | principal (u8 length |
    /// bytes) | client u64 | seq u64 | op`, where `op` is a tag and its
    /// fields: `1 key value` (put), `2 key` (delete), `3 key (u8 flag,
    /// [expected]) new` (compare-and-set), `4` (open a session), `5 floor
    /// u32` (allocate a group), `6 at u128 child u32 voters observers`
    /// (split; each list `count u32 | id u64*`), `7 from u32 (u8 flag,
    /// [position u128, key]) count u32 (key value)* last u8` (ingest), `8
    /// child u32` (finish a move), `9 into u32` (retire), `10 from u32
    /// start u128 end u128` (absorb). Byte strings are `u32 length | bytes`,
    /// integers little-endian (a u128 as 16 bytes).
    ///
    /// Encoding checks nothing about a split's membership: one that
    /// [`KvCommand::decode`] would refuse (no voter, too many ids, an id
    /// twice) is written as given and refused when decoded.
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
            KvOp::AllocateGroup { floor } => {
                buf.put_u8(5);
                buf.put_u32_le(*floor);
            }
            KvOp::Split {
                at,
                child,
                voters,
                observers,
            } => {
                buf.put_u8(6);
                buf.put_u128_le(*at);
                buf.put_u32_le(*child);
                put_ids(buf, voters);
                put_ids(buf, observers);
            }
            KvOp::Ingest {
                from,
                after,
                pairs,
                last,
            } => {
                buf.put_u8(7);
                buf.put_u32_le(*from);
                match after {
                    None => buf.put_u8(0),
                    Some((position, key)) => {
                        buf.put_u8(1);
                        buf.put_u128_le(*position);
                        put_bytes(buf, key);
                    }
                }
                buf.put_u32_le(pairs.len() as u32);
                for (k, v) in pairs {
                    put_bytes(buf, k);
                    put_bytes(buf, v);
                }
                buf.put_u8(u8::from(*last));
            }
            KvOp::FinishMove { child } => {
                buf.put_u8(8);
                buf.put_u32_le(*child);
            }
            KvOp::Retire { into } => {
                buf.put_u8(9);
                buf.put_u32_le(*into);
            }
            KvOp::Absorb { from, range } => {
                buf.put_u8(10);
                buf.put_u32_le(*from);
                put_range(buf, range);
            }
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
            KvOp::AllocateGroup { .. } | KvOp::FinishMove { .. } | KvOp::Retire { .. } => 4,
            KvOp::Absorb { .. } => 36,
            KvOp::Split {
                voters, observers, ..
            } => 28 + 8 * (voters.len() + observers.len()),
            KvOp::Ingest { after, pairs, .. } => {
                10 + after.as_ref().map_or(0, |(_, k)| 20 + k.len())
                    + pairs
                        .iter()
                        .map(|(k, v)| 8 + k.len() + v.len())
                        .sum::<usize>()
            }
        }
    }

    /// Whether an encoded command carries one of the node's own
    /// operations ([`KvOp::is_internal`]), read from its operation tag
    /// without decoding the rest (the client port refuses those from
    /// clients on every write). False for bytes too short to hold a tag
    /// (such a command is malformed, applied as a no-op).
    pub fn peek_is_internal(src: &[u8]) -> bool {
        let Ok(principal) = Self::peek_principal(src) else {
            return false;
        };
        // format, principal length, principal, client u64, seq u64, tag.
        src.get(2 + principal.len() + 16)
            .is_some_and(|&tag| tag >= FIRST_INTERNAL_TAG)
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
    /// such as opening a session or an internal operation): what a node
    /// hosting many groups routes by. Decodes the command (zero-copy), so a
    /// malformed one is an error.
    pub fn key_of(src: &Bytes) -> Result<Option<Bytes>, KvCodecError> {
        Ok(KvCommand::decode(src.clone())?.op.key().cloned())
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
            5 => KvOp::AllocateGroup {
                floor: get_u32(&mut src, total)?,
            },
            6 => decode_split(&mut src, total)?,
            7 => decode_ingest(&mut src, total)?,
            8 => KvOp::FinishMove {
                child: get_u32(&mut src, total)?,
            },
            9 => KvOp::Retire {
                into: get_u32(&mut src, total)?,
            },
            10 => KvOp::Absorb {
                from: get_u32(&mut src, total)?,
                range: get_range(&mut src, total)?,
            },
            t => return Err(KvCodecError::UnknownTag(t)),
        };
        if src.has_remaining() {
            return Err(KvCodecError::Trailing(src.remaining()));
        }
        // Sequence 1 opens a client-named session (see the module docs);
        // an id with the top bit would collide with an assigned one.
        // Internal operations and opens take no client-named session.
        if seq == 1
            && client & ASSIGNED_SESSION_BIT != 0
            && op != KvOp::OpenSession
            && !op.is_internal()
        {
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

/// The fields of [`KvOp::Split`] (after its tag), with the membership's
/// bounds checked.
fn decode_split(src: &mut Bytes, total: usize) -> Result<KvOp, KvCodecError> {
    let at = get_u128(src, total)?;
    let child = get_u32(src, total)?;
    let voters = get_ids(src, MAX_SPLIT_MEMBERS, total)?;
    let observers = get_ids(src, MAX_SPLIT_MEMBERS, total)?;
    check_membership(&voters, &observers)?;
    Ok(KvOp::Split {
        at,
        child,
        voters,
        observers,
    })
}

/// Checks a split's membership: at least one voter and no id named twice
/// across both lists (the list lengths are bounded by the decoder).
pub(super) fn check_membership(voters: &[u64], observers: &[u64]) -> Result<(), KvCodecError> {
    if voters.is_empty() {
        return Err(KvCodecError::NoVoters);
    }
    let mut seen = std::collections::HashSet::with_capacity(voters.len() + observers.len());
    match voters.iter().chain(observers).find(|id| !seen.insert(**id)) {
        Some(id) => Err(KvCodecError::DuplicateMember(*id)),
        None => Ok(()),
    }
}

/// The fields of [`KvOp::Ingest`] (after its tag).
fn decode_ingest(src: &mut Bytes, total: usize) -> Result<KvOp, KvCodecError> {
    let from = get_u32(src, total)?;
    let after = if get_bool(src, total)? {
        let position = get_u128(src, total)?;
        Some((position, get_bytes(src, MAX_KEY_BYTES, total)?))
    } else {
        None
    };
    let count = get_u32(src, total)? as usize;
    if count > MAX_INGEST_PAIRS {
        return Err(KvCodecError::TooLong {
            len: count,
            max: MAX_INGEST_PAIRS,
        });
    }
    // A pair takes at least 8 bytes: a count the input cannot hold is not
    // trusted with an allocation.
    let mut pairs = Vec::with_capacity(count.min(src.remaining() / 8));
    for _ in 0..count {
        let k = get_bytes(src, MAX_KEY_BYTES, total)?;
        let v = get_bytes(src, MAX_VALUE_BYTES, total)?;
        pairs.push((k, v));
    }
    let last = get_bool(src, total)?;
    Ok(KvOp::Ingest {
        from,
        after,
        pairs,
        last,
    })
}

impl KvResult {
    /// Encodes the result: a tag and its fields (`1 (u8 flag, [previous])`
    /// done, `2 swapped u8 (u8 flag, [current])` compare-and-set, `3 last
    /// u64` stale, `4 session u64` opened, `5 session u64` expired, `6 id
    /// u32` group allocated, `7 child u32 start u128 end u128` split
    /// started, `8 moved u64 done u8` ingested, `9 reason` refused, `10`
    /// wrong group, `11 into u32 start u128 end u128` retiring, `12 from
    /// u32 start u128 end u128` absorbing). A [`KvResult::Refused`] reason longer than
    /// [`MAX_REASON_BYTES`] is cut to that length.
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
            KvResult::GroupAllocated { id } => {
                buf.put_u8(6);
                buf.put_u32_le(*id);
            }
            KvResult::SplitStarted { child, range } => {
                buf.put_u8(7);
                buf.put_u32_le(*child);
                put_range(&mut buf, range);
            }
            KvResult::Ingested { moved, done } => {
                buf.put_u8(8);
                buf.put_u64_le(*moved);
                buf.put_u8(u8::from(*done));
            }
            KvResult::Refused { reason } => {
                buf.put_u8(9);
                put_bytes(&mut buf, &reason[..reason.len().min(MAX_REASON_BYTES)]);
            }
            KvResult::WrongGroup => buf.put_u8(10),
            KvResult::Retiring { into, range } => {
                buf.put_u8(11);
                buf.put_u32_le(*into);
                put_range(&mut buf, range);
            }
            KvResult::Absorbing { from, range } => {
                buf.put_u8(12);
                buf.put_u32_le(*from);
                put_range(&mut buf, range);
            }
        }
        buf.freeze()
    }

    /// Decodes a result; bytes after it are refused.
    pub fn decode(mut src: Bytes) -> Result<KvResult, KvCodecError> {
        let total = src.len();
        if src.remaining() < 1 {
            return Err(KvCodecError::Truncated(0));
        }
        let tag = src.get_u8();
        let result = match tag {
            1 => KvResult::Done(get_opt_bytes(&mut src, MAX_VALUE_BYTES, total)?),
            2 => {
                if src.remaining() < 1 {
                    return Err(KvCodecError::Truncated(1));
                }
                let swapped = src.get_u8() != 0;
                KvResult::Cas {
                    swapped,
                    current: get_opt_bytes(&mut src, MAX_VALUE_BYTES, total)?,
                }
            }
            3..=5 => {
                let n = get_u64(&mut src, total)?;
                match tag {
                    3 => KvResult::StaleSequence { last: n },
                    4 => KvResult::SessionOpened { session: n },
                    _ => KvResult::SessionExpired { session: n },
                }
            }
            6 => KvResult::GroupAllocated {
                id: get_u32(&mut src, total)?,
            },
            7 => KvResult::SplitStarted {
                child: get_u32(&mut src, total)?,
                range: get_range(&mut src, total)?,
            },
            8 => KvResult::Ingested {
                moved: get_u64(&mut src, total)?,
                done: get_bool(&mut src, total)?,
            },
            9 => KvResult::Refused {
                reason: get_bytes(&mut src, MAX_REASON_BYTES, total)?,
            },
            10 => KvResult::WrongGroup,
            11 => KvResult::Retiring {
                into: get_u32(&mut src, total)?,
                range: get_range(&mut src, total)?,
            },
            12 => KvResult::Absorbing {
                from: get_u32(&mut src, total)?,
                range: get_range(&mut src, total)?,
            },
            t => return Err(KvCodecError::UnknownTag(t)),
        };
        if src.has_remaining() {
            return Err(KvCodecError::Trailing(src.remaining()));
        }
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::test_util::*;

    #[test]
    fn the_internal_tag_is_read_without_decoding() {
        let cases = [
            (put_op("k", "v"), false),
            (KvOp::OpenSession, false),
            (KvOp::AllocateGroup { floor: 2 }, true),
            (KvOp::FinishMove { child: 9 }, true),
            (KvOp::Retire { into: 1 }, true),
        ];
        for (op, internal) in cases {
            assert_eq!(op.is_internal(), internal, "{op:?}");
            let c = cmd_as(b"alice", 3, 4, op);
            assert_eq!(KvCommand::peek_is_internal(&c), internal);
        }
        assert!(!KvCommand::peek_is_internal(&[]));
        assert!(!KvCommand::peek_is_internal(&[COMMAND_FORMAT, 0, 1, 2]));
    }

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

    #[test]
    fn internal_ops_and_their_results_round_trip() {
        let ops = [
            KvOp::AllocateGroup { floor: 7 },
            KvOp::Split {
                at: u128::MAX - 3,
                child: 70_000,
                voters: vec![3, 1, u64::MAX],
                observers: vec![0, 7],
            },
            KvOp::Split {
                at: 1,
                child: 0,
                voters: (0..MAX_SPLIT_MEMBERS as u64).collect(),
                observers: (0..MAX_SPLIT_MEMBERS as u64)
                    .map(|i| i + MAX_SPLIT_MEMBERS as u64)
                    .collect(),
            },
            KvOp::Ingest {
                from: 2,
                after: Some((1 << 100, Bytes::from_static(b"cursor"))),
                pairs: vec![
                    (Bytes::from_static(b"a"), Bytes::from_static(b"1")),
                    (Bytes::new(), Bytes::new()),
                ],
                last: true,
            },
            KvOp::Ingest {
                from: 0,
                after: None,
                pairs: Vec::new(),
                last: false,
            },
            KvOp::FinishMove { child: 9 },
            KvOp::Retire { into: u32::MAX },
            KvOp::Absorb {
                from: 4,
                range: KeyRange {
                    start: 1 << 64,
                    end: u128::MAX,
                },
            },
            // The decoder takes any range; the store refuses those that
            // do not fit.
            KvOp::Absorb {
                from: 0,
                range: KeyRange { start: 9, end: 2 },
            },
        ];
        for op in ops {
            assert!(op.is_internal() && op.key().is_none());
            // Internal operations take no session: a client-named id in the
            // assigned range with sequence 1 is not refused for them.
            let c = KvCommand {
                principal: Bytes::new(),
                client: ASSIGNED_SESSION_BIT | 1,
                seq: 1,
                op,
            };
            let b = c.to_bytes();
            assert_eq!(KvCommand::key_of(&b), Ok(None));
            assert_eq!(KvCommand::decode(b), Ok(c));
        }
        assert!(!put_op("k", "v").is_internal() && !KvOp::OpenSession.is_internal());
        for r in [
            KvResult::GroupAllocated { id: u32::MAX },
            KvResult::SplitStarted {
                child: 3,
                range: KeyRange {
                    start: 1,
                    end: u128::MAX,
                },
            },
            KvResult::Ingested {
                moved: 12,
                done: true,
            },
            KvResult::Retiring {
                into: 8,
                range: KeyRange {
                    start: 0,
                    end: 1 << 64,
                },
            },
            KvResult::Absorbing {
                from: u32::MAX,
                range: KeyRange {
                    start: u128::MAX - 1,
                    end: u128::MAX,
                },
            },
            KvResult::Refused {
                reason: Bytes::from_static(b"no"),
            },
            KvResult::WrongGroup,
        ] {
            assert_eq!(KvResult::decode(r.to_bytes()), Ok(r));
        }
        // A reason over the bound is cut, so the result still decodes.
        let long = KvResult::Refused {
            reason: Bytes::from(vec![b'x'; MAX_REASON_BYTES + 10]),
        };
        assert!(matches!(
            KvResult::decode(long.to_bytes()),
            Ok(KvResult::Refused { reason }) if reason.len() == MAX_REASON_BYTES
        ));
        let mut trailing = BytesMut::from(&KvResult::WrongGroup.to_bytes()[..]);
        trailing.put_u8(0);
        assert_eq!(
            KvResult::decode(trailing.freeze()),
            Err(KvCodecError::Trailing(1))
        );
    }

    #[test]
    fn ingest_decoding_is_bounded() {
        let batch = |count: u32| {
            let mut b = BytesMut::from(&cmd(0, 0, KvOp::FinishMove { child: 0 })[..18]);
            b.put_u8(7);
            b.put_u32_le(1);
            b.put_u8(0);
            b.put_u32_le(count);
            b
        };
        // A count over the bound is refused before any pair is read.
        for count in [MAX_INGEST_PAIRS as u32 + 1, u32::MAX] {
            assert_eq!(
                KvCommand::decode(batch(count).freeze()),
                Err(KvCodecError::TooLong {
                    len: count as usize,
                    max: MAX_INGEST_PAIRS
                })
            );
        }
        // A count within it that the input does not hold: truncated.
        assert!(matches!(
            KvCommand::decode(batch(MAX_INGEST_PAIRS as u32).freeze()),
            Err(KvCodecError::Truncated(_))
        ));
        // A key over the bound.
        let mut b = batch(1);
        b.put_u32_le(MAX_KEY_BYTES as u32 + 1);
        assert!(matches!(
            KvCommand::decode(b.freeze()),
            Err(KvCodecError::TooLong { .. })
        ));
        // A flag other than 0 or 1.
        let mut b = batch(0);
        b.put_u8(2);
        assert_eq!(
            KvCommand::decode(b.freeze()),
            Err(KvCodecError::UnknownTag(2))
        );
        let mut b = batch(0);
        b.put_u8(1);
        let c = KvCommand::decode(b.freeze()).unwrap();
        assert!(matches!(c.op, KvOp::Ingest { last: true, ref pairs, .. } if pairs.is_empty()));
    }

    /// A merge's operations and results decode only whole: every prefix
    /// is refused as truncated, a byte more as trailing.
    #[test]
    fn merge_encodings_refuse_prefixes_and_trailing_bytes() {
        let range = KeyRange {
            start: 3 << 64,
            end: 4 << 64,
        };
        for op in [KvOp::Retire { into: 5 }, KvOp::Absorb { from: 5, range }] {
            let enc = cmd(0, 0, op.clone());
            assert_eq!(KvCommand::decode(enc.clone()).map(|c| c.op), Ok(op));
            for i in 0..enc.len() {
                assert!(
                    matches!(
                        KvCommand::decode(enc.slice(..i)),
                        Err(KvCodecError::Truncated(_))
                    ),
                    "prefix of {i} bytes"
                );
            }
            let mut more = BytesMut::from(&enc[..]);
            more.put_u8(0);
            assert_eq!(
                KvCommand::decode(more.freeze()),
                Err(KvCodecError::Trailing(1))
            );
        }
        for r in [
            KvResult::Retiring { into: 5, range },
            KvResult::Absorbing { from: 5, range },
        ] {
            let enc = r.to_bytes();
            assert_eq!(enc.len(), 1 + 4 + 32);
            for i in 0..enc.len() {
                assert!(KvResult::decode(enc.slice(..i)).is_err(), "prefix {i}");
            }
            let mut more = BytesMut::from(&enc[..]);
            more.put_u8(0);
            assert_eq!(
                KvResult::decode(more.freeze()),
                Err(KvCodecError::Trailing(1))
            );
        }
        // Tags past the last one are unknown.
        assert_eq!(
            KvResult::decode(Bytes::from_static(&[13])),
            Err(KvCodecError::UnknownTag(13))
        );
        let mut b = BytesMut::from(&cmd(0, 0, KvOp::Retire { into: 0 })[..18]);
        b.put_u8(11);
        assert_eq!(
            KvCommand::decode(b.freeze()),
            Err(KvCodecError::UnknownTag(11))
        );
    }

    #[test]
    fn split_decoding_is_bounded_and_refuses_a_bad_membership() {
        // A split command with the raw lists given, counts included.
        let split = |voters: (u32, &[u64]), observers: (u32, &[u64])| {
            let mut b = BytesMut::from(&cmd(0, 0, KvOp::FinishMove { child: 0 })[..18]);
            b.put_u8(6);
            b.put_u128_le(5);
            b.put_u32_le(2);
            for (count, ids) in [voters, observers] {
                b.put_u32_le(count);
                for id in ids {
                    b.put_u64_le(*id);
                }
            }
            KvCommand::decode(b.freeze())
        };
        assert_eq!(
            split((2, &[1, 2]), (1, &[3])).map(|c| c.op),
            Ok(KvOp::Split {
                at: 5,
                child: 2,
                voters: vec![1, 2],
                observers: vec![3],
            })
        );
        // Counts over the bound are refused before any id is read.
        let over = MAX_SPLIT_MEMBERS as u32 + 1;
        for count in [over, u32::MAX] {
            let too_long = Err(KvCodecError::TooLong {
                len: count as usize,
                max: MAX_SPLIT_MEMBERS,
            });
            assert_eq!(split((count, &[]), (0, &[])), too_long);
            assert_eq!(split((1, &[1]), (count, &[])), too_long);
        }
        // A count within the bound that the input does not hold.
        assert!(matches!(
            split((MAX_SPLIT_MEMBERS as u32, &[1, 2]), (0, &[])),
            Err(KvCodecError::Truncated(_))
        ));
        assert!(matches!(
            split((1, &[1]), (2, &[2])),
            Err(KvCodecError::Truncated(_))
        ));
        // No voter, even with observers.
        assert_eq!(split((0, &[]), (0, &[])), Err(KvCodecError::NoVoters));
        assert_eq!(split((0, &[]), (1, &[4])), Err(KvCodecError::NoVoters));
        // An id twice: among the voters, among the observers, or in both.
        assert_eq!(
            split((3, &[1, 2, 1]), (0, &[])),
            Err(KvCodecError::DuplicateMember(1))
        );
        assert_eq!(
            split((1, &[1]), (2, &[9, 9])),
            Err(KvCodecError::DuplicateMember(9))
        );
        assert_eq!(
            split((2, &[1, 2]), (2, &[3, 2])),
            Err(KvCodecError::DuplicateMember(2))
        );
        // The encoder writes a bad membership as given; decode refuses it.
        for (voters, observers, e) in [
            (vec![], vec![], KvCodecError::NoVoters),
            (vec![4], vec![4], KvCodecError::DuplicateMember(4)),
            (
                vec![0; MAX_SPLIT_MEMBERS + 1],
                vec![],
                KvCodecError::TooLong {
                    len: MAX_SPLIT_MEMBERS + 1,
                    max: MAX_SPLIT_MEMBERS,
                },
            ),
        ] {
            let op = KvOp::Split {
                at: 5,
                child: 2,
                voters,
                observers,
            };
            assert_eq!(KvCommand::decode(cmd(0, 0, op)), Err(e));
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn arb_result() -> impl Strategy<Value = KvResult> {
            let bytes = prop::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from);
            prop_oneof![
                prop::option::of(bytes.clone()).prop_map(KvResult::Done),
                any::<u64>().prop_map(|last| KvResult::StaleSequence { last }),
                (any::<bool>(), prop::option::of(bytes.clone()))
                    .prop_map(|(swapped, current)| KvResult::Cas { swapped, current }),
                any::<u64>().prop_map(|session| KvResult::SessionOpened { session }),
                any::<u64>().prop_map(|session| KvResult::SessionExpired { session }),
                any::<u32>().prop_map(|id| KvResult::GroupAllocated { id }),
                (any::<u32>(), any::<u128>(), any::<u128>()).prop_map(|(child, start, end)| {
                    KvResult::SplitStarted {
                        child,
                        range: KeyRange { start, end },
                    }
                }),
                (any::<u64>(), any::<bool>())
                    .prop_map(|(moved, done)| KvResult::Ingested { moved, done }),
                (any::<u32>(), any::<u128>(), any::<u128>()).prop_map(|(into, start, end)| {
                    KvResult::Retiring {
                        into,
                        range: KeyRange { start, end },
                    }
                }),
                (any::<u32>(), any::<u128>(), any::<u128>()).prop_map(|(from, start, end)| {
                    KvResult::Absorbing {
                        from,
                        range: KeyRange { start, end },
                    }
                }),
                bytes.prop_map(|reason| KvResult::Refused { reason }),
                Just(KvResult::WrongGroup),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            /// The decoders answer any bytes without panicking.
            #[test]
            fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let b = Bytes::from(bytes);
                let _ = KvCommand::decode(b.clone());
                let _ = KvCommand::key_of(&b);
                let _ = KvCommand::peek_principal(&b);
                let _ = KvResult::decode(b);
            }

            /// Every command decodes to itself (but a client-named session
            /// id in the assigned range opened by a keyed write), a prefix
            /// of it does not decode, and a changed byte does not panic.
            #[test]
            fn commands_round_trip_and_damage_is_refused(
                op in arb_op(),
                client in prop_oneof![0..3u64, any::<u64>()],
                seq in 0..3u64,
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
            ) {
                let c = KvCommand {
                    principal: Bytes::from_static(b"p"),
                    client,
                    seq,
                    op,
                };
                let enc = c.to_bytes();
                let reserved = seq == 1
                    && client & ASSIGNED_SESSION_BIT != 0
                    && c.op.key().is_some();
                match KvCommand::decode(enc.clone()) {
                    Ok(d) => {
                        prop_assert!(!reserved);
                        prop_assert_eq!(KvCommand::key_of(&enc), Ok(c.op.key().cloned()));
                        prop_assert_eq!(d, c);
                    }
                    Err(e) => prop_assert_eq!(e, KvCodecError::ReservedSessionId(client)),
                }
                let i = at.index(enc.len());
                prop_assert!(KvCommand::decode(enc.slice(..i)).is_err());
                let mut v = enc.to_vec();
                v[i] = byte;
                let _ = KvCommand::decode(Bytes::from(v));
            }

            /// Every result decodes to itself; damage does not panic.
            #[test]
            fn results_round_trip_and_damage_is_refused(
                r in arb_result(),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
            ) {
                let enc = r.to_bytes();
                prop_assert_eq!(KvResult::decode(enc.clone()), Ok(r));
                let i = at.index(enc.len());
                prop_assert!(KvResult::decode(enc.slice(..i)).is_err());
                let mut v = enc.to_vec();
                v[i] = byte;
                let _ = KvResult::decode(Bytes::from(v));
            }
        }
    }
}
