//! The reference state machine: a key-value map with put, delete and
//! compare-and-set, deduplicated per client session so that a retried command
//! (after a failover, say) takes effect at most once, with a bounded session
//! table.
//!
//! # Commands and sessions
//!
//! A command is `session id | sequence | op`. A session has at most one write
//! outstanding at a time and numbers its writes with increasing sequence
//! numbers (gaps allowed: a write that failed on the client side is skipped).
//! For every session in its table the store remembers the highest sequence
//! applied, the result it gave, and the log position (zxid) of the last
//! command that named the session. For a session **in the table**:
//!
//! - the same sequence as the last applied one is a retry: it is answered
//!   with the remembered result and not applied again;
//! - a lower sequence is a late duplicate of a write the session has moved
//!   past: refused with [`KvResult::StaleSequence`], not applied;
//! - a higher sequence is applied and becomes the session's last.
//!
//! # Session expiry (deterministic)
//!
//! The table holds at most `max_sessions` sessions (default
//! [`DEFAULT_MAX_SESSIONS`]). Opening a session when it is full evicts the
//! least recently used one: the session whose last command has the lowest
//! zxid. Expiry depends only on the replicated log, never on a clock, so
//! every replica evicts the same sessions at the same log positions (which
//! is why `max_sessions` must be the same on every node of a cluster; a
//! snapshot records it and a node configured differently refuses to restore
//! it). Snapshots keep the table in recency order, so a restored store
//! evicts exactly as the original would have.
//!
//! A session is opened in one of two ways:
//!
//! - **Client-named**: the client picks the id; the session's first command
//!   has sequence 1 and opens it. Use ids below 2^63.
//! - **Cluster-assigned**: the client sends [`KvOp::OpenSession`]; the store
//!   answers [`KvResult::SessionOpened`] with a fresh id (`2^63 | n`, `n`
//!   counting up from 1 in the replicated state, so an id is never handed
//!   out twice). The open counts as the session's sequence 1, so its first
//!   write has sequence 2. A retried open that commits twice opens two
//!   sessions; the unused one is simply evicted in time.
//!
//! A command for a session **not in the table** (never opened, or evicted)
//! is applied only if its sequence is 1 (it opens a client-named session);
//! any other sequence is refused with [`KvResult::SessionExpired`] and not
//! applied. The writer must then open a new session with a fresh id
//! ([`crate::client::Client`] switches to a cluster-assigned one); the write
//! that was refused may or may not have been applied by an earlier attempt,
//! exactly like a write that timed out.
//!
//! # The at-most-once rule
//!
//! Every `(session, sequence)` takes effect at most once:
//!
//! - **Cluster-assigned sessions, unconditionally**: their writes all have
//!   sequences of 2 or more, so once such a session is evicted every later
//!   copy of any of its writes is refused, and its id is never reused.
//! - **Client-named sessions, with two conditions**: a copy of the session's
//!   first command (sequence 1) must not commit after the session was
//!   evicted, which needs `max_sessions` other sessions to become active in
//!   between (it would then open the session afresh and apply again); and
//!   the writer must never reuse an id after [`KvResult::SessionExpired`].
//!
//! Commands that do not decode are applied as no-ops on every replica alike.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use paxos_core::{StateMachine, Zxid};
use std::collections::HashMap;
use std::io::{self, Read};

/// Largest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Sessions a store keeps by default before it evicts the least recently
/// used one.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
/// Largest session table a store accepts (the table indexes with `u32`).
pub const MAX_SESSIONS_LIMIT: usize = 1 << 28;
/// The bit set in every cluster-assigned session id (see the module docs).
/// A client-named session id never has it: a command that would open one
/// is refused when decoded ([`KvCodecError::ReservedSessionId`]).
pub const ASSIGNED_SESSION_BIT: u64 = 1 << 63;
/// Longest principal name a command carries, in bytes.
pub const MAX_PRINCIPAL_BYTES: usize = 128;
/// Bytes the session table may hold by default (remembered results,
/// principal names and a fixed cost per session, see
/// [`KvStore::session_bytes`]) before it evicts the least recently used
/// session.
pub const DEFAULT_MAX_SESSION_BYTES: usize = 64 << 20;
/// The smallest byte bound a session table accepts: one session with the
/// largest result fits, with room to spare.
pub const MIN_MAX_SESSION_BYTES: usize = 4 << 20;
/// The fixed cost charged per session in the byte count (slot, index
/// entry, list links), an estimate of what a slot really takes.
pub const SESSION_OVERHEAD_BYTES: usize = 96;
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

/// A store configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvConfigError {
    /// The session table must hold between 1 and [`MAX_SESSIONS_LIMIT`]
    /// sessions.
    #[error("max_sessions {given} is out of range (1..={max})")]
    MaxSessions {
        /// The value given.
        given: usize,
        /// The largest value accepted.
        max: usize,
    },
    /// The session table's byte bound must leave room for the largest
    /// result.
    #[error("max_session_bytes {given} is below the minimum {min}")]
    MaxSessionBytes {
        /// The value given.
        given: usize,
        /// The smallest value accepted.
        min: usize,
    },
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
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

/// "No slot" in the session list.
const NIL: u32 = u32::MAX;

/// One session in the table, linked into the recency list.
#[derive(Clone, Debug)]
struct SessionSlot {
    /// The principal owning the session (a copy: it pins no frame).
    principal: Bytes,
    id: u64,
    /// The highest sequence applied.
    seq: u64,
    /// The zxid of the last command that named the session.
    touched: Zxid,
    /// The encoded result of `seq`.
    result: Bytes,
    /// Neighbour towards the least recently used end.
    prev: u32,
    /// Neighbour towards the most recently used end.
    next: u32,
}

/// The session table: a map from session id to slot plus a doubly linked
/// list of the slots in recency order (by zxid of the last command that
/// named the session), so that lookup, touch and eviction are O(1) and, once
/// the table is full, allocation-free (an evicted slot is reused).
#[derive(Clone, Debug)]
struct SessionTable {
    max: usize,
    /// The bound on `bytes`.
    max_bytes: usize,
    /// What the table holds, as [`KvStore::session_bytes`] counts it.
    bytes: usize,
    index: HashMap<(Bytes, u64), u32, foldhash::fast::FixedState>,
    slots: Vec<SessionSlot>,
    /// Least recently used: evicted next (`NIL` when empty).
    head: u32,
    /// Most recently used (`NIL` when empty).
    tail: u32,
    /// The counter of cluster-assigned ids: the next one is
    /// `ASSIGNED_SESSION_BIT | next_assigned`.
    next_assigned: u64,
    /// Sessions evicted since this store was created or restored (local
    /// statistic, not part of the replicated state).
    evicted: u64,
    /// Slots emptied by eviction, reused before the vector grows.
    free: Vec<u32>,
}

/// What one session counts against the table's byte bound.
fn slot_bytes(principal: &[u8], result: &[u8]) -> usize {
    SESSION_OVERHEAD_BYTES + principal.len() + result.len()
}

impl SessionTable {
    fn new(max: usize, max_bytes: usize) -> SessionTable {
        assert!(
            (1..=MAX_SESSIONS_LIMIT).contains(&max) && max_bytes >= MIN_MAX_SESSION_BYTES,
            "invariant: the session bounds were checked when the store was configured"
        );
        SessionTable {
            max,
            max_bytes,
            bytes: 0,
            index: HashMap::default(),
            slots: Vec::new(),
            head: NIL,
            tail: NIL,
            next_assigned: 1,
            evicted: 0,
            free: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn slot(&self, i: u32) -> &SessionSlot {
        &self.slots[i as usize]
    }

    fn slot_mut(&mut self, i: u32) -> &mut SessionSlot {
        &mut self.slots[i as usize]
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = (self.slot(i).prev, self.slot(i).next);
        if prev == NIL {
            self.head = next;
        } else {
            self.slot_mut(prev).next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.slot_mut(next).prev = prev;
        }
    }

    fn push_back(&mut self, i: u32) {
        let tail = self.tail;
        {
            let s = self.slot_mut(i);
            s.prev = tail;
            s.next = NIL;
        }
        if tail == NIL {
            self.head = i;
        } else {
            self.slot_mut(tail).next = i;
        }
        self.tail = i;
    }

    /// Looks `(principal, id)` up and, if present, makes it the most
    /// recently used as of `zxid`.
    fn touch(&mut self, principal: &Bytes, id: u64, zxid: Zxid) -> Option<u32> {
        let i = *self.index.get(&(principal.clone(), id))?;
        debug_assert!(
            self.slot(i).touched < zxid,
            "sessions are touched in log order"
        );
        if self.tail != i {
            self.unlink(i);
            self.push_back(i);
        }
        self.slot_mut(i).touched = zxid;
        Some(i)
    }

    /// Removes the least recently used session (not `keep`); false if
    /// there is none to remove.
    fn evict_one(&mut self, keep: u32, zxid: Zxid) -> bool {
        let victim = self.head;
        if victim == NIL || victim == keep {
            return false;
        }
        self.unlink(victim);
        let slot = self.slot_mut(victim);
        let principal = std::mem::take(&mut slot.principal);
        let result = std::mem::take(&mut slot.result);
        let (id, seq) = (slot.id, slot.seq);
        self.bytes -= slot_bytes(&principal, &result);
        self.index.remove(&(principal, id));
        self.free.push(victim);
        self.evicted += 1;
        tracing::debug!(session = id, last_seq = seq, ?zxid, "session evicted");
        true
    }

    /// Evicts the least recently used sessions, never `keep`, until the
    /// table is within its byte bound. Bounded by the table's length.
    fn shrink_to_bytes(&mut self, keep: u32, zxid: Zxid) {
        for _ in 0..=self.len() {
            if self.bytes <= self.max_bytes || !self.evict_one(keep, zxid) {
                break;
            }
        }
    }

    /// Replaces a session's remembered sequence and result, then evicts
    /// others if the table is over its byte bound.
    fn record(&mut self, i: u32, seq: u64, result: Bytes, zxid: Zxid) {
        let s = self.slot_mut(i);
        let before = slot_bytes(&s.principal, &s.result);
        let after = slot_bytes(&s.principal, &result);
        s.seq = seq;
        s.result = result;
        self.bytes = self.bytes - before + after;
        self.shrink_to_bytes(i, zxid);
    }

    /// Adds a session as the most recently used, evicting the least
    /// recently used ones while the table is full (in count or in bytes).
    /// `None` if `(principal, id)` is already in the table (the caller
    /// refuses the command: no state changes).
    fn open(
        &mut self,
        principal: Bytes,
        id: u64,
        seq: u64,
        zxid: Zxid,
        result: Bytes,
    ) -> Option<u32> {
        let key = (principal, id);
        if self.index.contains_key(&key) {
            return None;
        }
        let cost = slot_bytes(&key.0, &result);
        for _ in 0..=self.len() {
            let full = self.len() >= self.max || self.bytes + cost > self.max_bytes;
            if !full || !self.evict_one(NIL, zxid) {
                break;
            }
        }
        self.bytes += cost;
        let slot = SessionSlot {
            principal: key.0.clone(),
            id,
            seq,
            touched: zxid,
            result,
            prev: NIL,
            next: NIL,
        };
        let i = if let Some(i) = self.free.pop() {
            *self.slot_mut(i) = slot;
            i
        } else {
            let i = u32::try_from(self.slots.len())
                .ok()
                .filter(|&i| i != NIL)
                .unwrap_or_else(|| panic!("invariant: at most MAX_SESSIONS_LIMIT slots"));
            self.slots.push(slot);
            i
        };
        self.index.insert(key, i);
        self.push_back(i);
        debug_assert!(self.len() <= self.max, "the table stays within its bound");
        Some(i)
    }

    /// Slots from the least to the most recently used.
    fn iter_oldest_first(&self) -> impl Iterator<Item = &SessionSlot> {
        let mut i = self.head;
        std::iter::from_fn(move || {
            if i == NIL {
                return None;
            }
            let s = self.slot(i);
            i = s.next;
            Some(s)
        })
    }
}

type Shard = HashMap<Bytes, Bytes, foldhash::fast::RandomState>;

/// Shards of [`ShardedMap`]: a clone shares them all, and the first write to
/// a shard afterwards copies 1/256 of the map.
const SHARDS: usize = 256;

/// The store's keys and values: hashed, not ordered, in copy-on-write
/// shards.
///
/// Hashed: applying a write is one hash lookup (a B-tree of millions of
/// keys cost a dozen key comparisons and cache misses per write, the node's
/// largest CPU cost in a profile of the e2e bench). Sharded behind `Arc`s:
/// cloning the map for a snapshot is O(shards) instead of a pass over every
/// key on the node's loop (a million keys took a pause of a few hundred
/// milliseconds), the copying is spread over the writes that follow, one
/// shard at a time, and a growing map resizes one small shard at a time.
#[derive(Debug, Clone)]
struct ShardedMap {
    /// Picks a key's shard; the same for the life of the map.
    router: foldhash::fast::RandomState,
    shards: Vec<std::sync::Arc<Shard>>,
    len: usize,
}

impl Default for ShardedMap {
    fn default() -> Self {
        ShardedMap {
            router: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS)
                .map(|_| std::sync::Arc::new(Shard::default()))
                .collect(),
            len: 0,
        }
    }
}

impl ShardedMap {
    fn shard_of(&self, key: &[u8]) -> usize {
        use std::hash::BuildHasher;
        (self.router.hash_one(key) >> 56) as usize % SHARDS
    }

    fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.shards[self.shard_of(key)].get(key)
    }

    fn insert(&mut self, key: Bytes, value: Bytes) -> Option<Bytes> {
        let i = self.shard_of(&key);
        let prev = std::sync::Arc::make_mut(&mut self.shards[i]).insert(key, value);
        if prev.is_none() {
            self.len += 1;
        }
        prev
    }

    fn remove(&mut self, key: &[u8]) -> Option<Bytes> {
        let i = self.shard_of(key);
        if !self.shards[i].contains_key(key) {
            return None;
        }
        let prev = std::sync::Arc::make_mut(&mut self.shards[i]).remove(key);
        if prev.is_some() {
            self.len -= 1;
        }
        prev
    }

    fn len(&self) -> usize {
        self.len
    }

    fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

/// The replicated key-value map. Cloning it is cheap (a few hundred shared
/// shards, plus the session table); the node clones it to write a snapshot
/// off its loop.
#[derive(Debug, Clone)]
pub struct KvStore {
    /// Hashed, copy-on-write shards; snapshots sort the keys, so their
    /// bytes stay deterministic.
    map: ShardedMap,
    /// Per session: the highest sequence applied, its result, and recency.
    sessions: SessionTable,
    applied: Zxid,
    /// Order-independent digest of the map: the XOR of a hash of every pair,
    /// kept up to date on every change so replicas can be compared cheaply.
    digest: u64,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore {
            map: ShardedMap::default(),
            sessions: SessionTable::new(DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSION_BYTES),
            applied: Zxid::ZERO,
            digest: 0,
        }
    }
}

/// FNV-1a over a key and a value, with the key's length mixed in so that
/// `("ab", "c")` and `("a", "bc")` differ.
fn pair_hash(key: &[u8], value: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let len = (key.len() as u64).to_le_bytes();
    for b in len.iter().chain(key).chain(value) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl KvStore {
    /// An empty store with a table of [`DEFAULT_MAX_SESSIONS`] sessions.
    pub fn new() -> KvStore {
        KvStore::default()
    }

    /// An empty store whose session table holds at most `max_sessions`
    /// sessions (and [`DEFAULT_MAX_SESSION_BYTES`]). Every replica of a
    /// cluster must use the same value.
    pub fn with_max_sessions(max_sessions: usize) -> Result<KvStore, KvConfigError> {
        KvStore::with_session_limits(max_sessions, DEFAULT_MAX_SESSION_BYTES)
    }

    /// An empty store whose session table holds at most `max_sessions`
    /// sessions and `max_session_bytes` bytes (see
    /// [`KvStore::session_bytes`]). Both are part of the state machine's
    /// definition: every replica of a cluster must use the same values.
    pub fn with_session_limits(
        max_sessions: usize,
        max_session_bytes: usize,
    ) -> Result<KvStore, KvConfigError> {
        if !(1..=MAX_SESSIONS_LIMIT).contains(&max_sessions) {
            return Err(KvConfigError::MaxSessions {
                given: max_sessions,
                max: MAX_SESSIONS_LIMIT,
            });
        }
        if max_session_bytes < MIN_MAX_SESSION_BYTES {
            return Err(KvConfigError::MaxSessionBytes {
                given: max_session_bytes,
                min: MIN_MAX_SESSION_BYTES,
            });
        }
        Ok(KvStore {
            sessions: SessionTable::new(max_sessions, max_session_bytes),
            ..KvStore::default()
        })
    }

    /// An empty store configured like this one (same session bounds): where
    /// a snapshot is restored before it replaces the live state.
    pub fn emptied(&self) -> KvStore {
        KvStore {
            sessions: SessionTable::new(self.sessions.max, self.sessions.max_bytes),
            ..KvStore::default()
        }
    }

    /// Reads a key (served by the node after a read-index round, or stale).
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.map.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// A digest of the whole map, equal on two replicas holding equal maps.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Sessions in the table now.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The bound of the session table.
    pub fn max_sessions(&self) -> usize {
        self.sessions.max
    }

    /// Sessions evicted since this store was created or last restored (a
    /// local statistic, not part of the snapshot).
    pub fn sessions_evicted(&self) -> u64 {
        self.sessions.evicted
    }

    /// What the session table holds, in bytes: for every session its
    /// remembered result, its principal's name and
    /// [`SESSION_OVERHEAD_BYTES`]. Never above the configured bound.
    pub fn session_bytes(&self) -> usize {
        self.sessions.bytes
    }

    /// The byte bound of the session table.
    pub fn max_session_bytes(&self) -> usize {
        self.sessions.max_bytes
    }

    /// A session's last applied sequence, if the session of `principal` is
    /// in the table.
    pub fn session_seq(&self, principal: &[u8], session: u64) -> Option<u64> {
        self.sessions
            .index
            .get(&(Bytes::copy_from_slice(principal), session))
            .map(|&i| self.sessions.slot(i).seq)
    }

    /// The sessions in the table from the next to be evicted to the most
    /// recently used, each with the zxid of the last command naming it.
    pub fn sessions_by_recency(&self) -> impl Iterator<Item = (u64, Zxid)> + '_ {
        self.sessions.iter_oldest_first().map(|s| (s.id, s.touched))
    }

    fn insert(&mut self, key: Bytes, value: Bytes) -> Option<Bytes> {
        self.digest ^= pair_hash(&key, &value);
        let prev = self.map.insert(key.clone(), value);
        if let Some(p) = &prev {
            self.digest ^= pair_hash(&key, p);
        }
        prev
    }

    fn remove(&mut self, key: &Bytes) -> Option<Bytes> {
        let prev = self.map.remove(key);
        if let Some(p) = &prev {
            self.digest ^= pair_hash(key, p);
        }
        prev
    }

    /// Records `zxid` as applied without looking at its command: the
    /// operator's way past a committed entry that made `apply` panic (every
    /// replica must skip the same entries). Answers as for a command that
    /// does not decode.
    pub fn skip(&mut self, zxid: Zxid) -> Bytes {
        assert!(zxid > self.applied, "entries are applied in zxid order");
        self.applied = zxid;
        Bytes::from_static(&[MALFORMED])
    }

    /// Iterates over all pairs, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.map.iter()
    }

    fn execute(&mut self, op: KvOp) -> KvResult {
        // Keys and values are copied out of the command: the command's bytes
        // are a slice of a network frame (a client read buffer or a batch of
        // entries from the leader), and a stored slice would keep the whole
        // frame alive for as long as the key lives.
        match op {
            KvOp::Put { key, value } => KvResult::Done(
                self.insert(Bytes::copy_from_slice(&key), Bytes::copy_from_slice(&value)),
            ),
            KvOp::Delete { key } => KvResult::Done(self.remove(&key)),
            KvOp::Cas { key, expected, new } => {
                let current = self.map.get(&key).cloned();
                if current == expected {
                    self.insert(Bytes::copy_from_slice(&key), Bytes::copy_from_slice(&new));
                    KvResult::Cas {
                        swapped: true,
                        current,
                    }
                } else {
                    KvResult::Cas {
                        swapped: false,
                        current,
                    }
                }
            }
            KvOp::OpenSession => {
                unreachable!("invariant: apply opens sessions before it executes operations")
            }
        }
    }

    /// Opens a cluster-assigned session for `principal` (the open counts
    /// as its sequence 1). Deterministic on every replica, and it cannot
    /// fail on anything a client sent: ids are counted, never reused, and
    /// no client-named session holds one (decode refuses them).
    fn open_assigned(&mut self, principal: &Bytes, zxid: Zxid) -> Bytes {
        let n = self.sessions.next_assigned;
        if n >= ASSIGNED_SESSION_BIT {
            // 2^63 opens: unreachable in practice, refused rather than wrapped.
            tracing::error!(?zxid, "every cluster-assigned session id has been used");
            return Bytes::from_static(&[MALFORMED]);
        }
        self.sessions.next_assigned = n + 1;
        let session = ASSIGNED_SESSION_BIT | n;
        let result = KvResult::SessionOpened { session }.to_bytes();
        let owner = Bytes::copy_from_slice(principal);
        if self
            .sessions
            .open(owner, session, 1, zxid, result.clone())
            .is_none()
        {
            // Only a corrupt snapshot could hold an id not yet handed out
            // (restore refuses those); refuse the open, identically everywhere.
            tracing::error!(
                session,
                ?zxid,
                "assigned session id already in the table; open refused"
            );
            return Bytes::from_static(&[MALFORMED]);
        }
        result
    }
}

/// Tag of a result that reports a command the store could not decode.
const MALFORMED: u8 = 0xff;

/// First bytes of a kv snapshot (format 2 onwards). Format 1 had no header
/// and began with the applied zxid.
const SNAPSHOT_MAGIC: [u8; 8] = *b"PXKVSNAP";
/// The snapshot layout written and read by this build:
/// `magic | version u32 | applied u64 | max_sessions u64 | max_session_bytes
/// u64 | next_assigned u64 | pairs u64 | (key, value)* | sessions u64 |
/// (principal, id u64, seq u64, touched u64, result)*` with sessions from
/// least to most recently used, and byte strings as `u32 length | bytes`,
/// all integers little-endian. Format 3 added the byte bound and the
/// sessions' principals.
const SNAPSHOT_VERSION: u32 = 3;

impl StateMachine for KvStore {
    fn apply(&mut self, zxid: Zxid, command: &Bytes) -> Bytes {
        assert!(zxid > self.applied, "entries are applied in zxid order");
        self.applied = zxid;
        let cmd = match KvCommand::decode(command.clone()) {
            Ok(c) => c,
            // A command that does not decode is applied as a no-op on every
            // replica alike (determinism), and the client is told.
            Err(_) => return Bytes::from_static(&[MALFORMED]),
        };
        if cmd.op == KvOp::OpenSession {
            return self.open_assigned(&cmd.principal, zxid);
        }
        let slot = match self.sessions.touch(&cmd.principal, cmd.client, zxid) {
            Some(i) => {
                let last = self.sessions.slot(i).seq;
                if cmd.seq == last {
                    // A retry of the command applied last: same answer, no effect.
                    return self.sessions.slot(i).result.clone();
                }
                if cmd.seq < last {
                    return KvResult::StaleSequence { last }.to_bytes();
                }
                i
            }
            // The first command of a client-named session opens it (decode
            // refused ids in the assigned range, so this cannot collide).
            None if cmd.seq == 1 => {
                let owner = Bytes::copy_from_slice(&cmd.principal);
                match self.sessions.open(owner, cmd.client, 0, zxid, Bytes::new()) {
                    Some(i) => i,
                    None => return Bytes::from_static(&[MALFORMED]),
                }
            }
            // Unknown and not a first command: evicted (or never opened).
            // Applying it could apply a write twice; refuse.
            None => {
                return KvResult::SessionExpired {
                    session: cmd.client,
                }
                .to_bytes()
            }
        };
        let result = self.execute(cmd.op).to_bytes();
        self.sessions.record(slot, cmd.seq, result.clone(), zxid);
        result
    }

    fn applied(&self) -> Zxid {
        self.applied
    }

    fn snapshot(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.put_slice(&SNAPSHOT_MAGIC);
        buf.put_u32_le(SNAPSHOT_VERSION);
        buf.put_u64_le(self.applied.as_u64());
        buf.put_u64_le(self.sessions.max as u64);
        buf.put_u64_le(self.sessions.max_bytes as u64);
        buf.put_u64_le(self.sessions.next_assigned);
        buf.put_u64_le(self.map.len() as u64);
        let mut pairs: Vec<(&Bytes, &Bytes)> = self.map.iter().collect();
        pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (k, v) in pairs {
            put_bytes(&mut buf, k);
            put_bytes(&mut buf, v);
            if buf.len() >= 64 * 1024 {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        buf.put_u64_le(self.sessions.len() as u64);
        // Least recently used first: restoring in this order rebuilds the
        // same recency list, hence the same future evictions.
        for s in self.sessions.iter_oldest_first() {
            put_bytes(&mut buf, &s.principal);
            buf.put_u64_le(s.id);
            buf.put_u64_le(s.seq);
            buf.put_u64_le(s.touched.as_u64());
            put_bytes(&mut buf, &s.result);
            if buf.len() >= 64 * 1024 {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        out.write_all(&buf)
    }

    fn restore(&mut self, zxid: Zxid, input: &mut dyn io::Read) -> io::Result<()> {
        let bad = |what: String| {
            io::Error::new(io::ErrorKind::InvalidData, format!("kv snapshot: {what}"))
        };
        let mut r = io::BufReader::with_capacity(64 * 1024, input);
        let read_u64 = |r: &mut dyn io::Read| -> io::Result<u64> {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            Ok(u64::from_le_bytes(b))
        };
        let read_field = |r: &mut dyn io::Read, max: usize| -> io::Result<Bytes> {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)?;
            let len = u32::from_le_bytes(b) as usize;
            if len > max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("kv snapshot: field of {len} bytes exceeds the maximum {max}"),
                ));
            }
            let mut v = vec![0u8; len];
            r.read_exact(&mut v)?;
            Ok(Bytes::from(v))
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if magic != SNAPSHOT_MAGIC {
            return Err(bad(format!(
                "no format header: written by an older build (format 1), and this build reads \
                 format {SNAPSHOT_VERSION} only; rebuild this node's state from its peers"
            )));
        }
        let mut version = [0u8; 4];
        r.read_exact(&mut version)?;
        let version = u32::from_le_bytes(version);
        if version != SNAPSHOT_VERSION {
            return Err(bad(format!(
                "format {version} is not supported (this build reads format {SNAPSHOT_VERSION})"
            )));
        }
        let applied = Zxid(read_u64(&mut r)?);
        if applied != zxid {
            return Err(bad(format!(
                "zxid {applied:?} in the data differs from the snapshot's {zxid:?}"
            )));
        }
        let max = read_u64(&mut r)?;
        if max != self.sessions.max as u64 {
            return Err(bad(format!(
                "written with max_sessions = {max}, but this store is configured with {}; \
                 every node of a cluster must use the same max_sessions",
                self.sessions.max
            )));
        }
        let max_bytes = read_u64(&mut r)?;
        if max_bytes != self.sessions.max_bytes as u64 {
            return Err(bad(format!(
                "written with max_session_bytes = {max_bytes}, but this store is configured \
                 with {}; every node of a cluster must use the same max_session_bytes",
                self.sessions.max_bytes
            )));
        }
        let next_assigned = read_u64(&mut r)?;
        if next_assigned == 0 || next_assigned > ASSIGNED_SESSION_BIT {
            return Err(bad(format!(
                "assigned-session counter {next_assigned} out of range"
            )));
        }
        let mut map = ShardedMap::default();
        let pairs = read_u64(&mut r)?;
        for _ in 0..pairs {
            let k = read_field(&mut r, MAX_KEY_BYTES)?;
            let v = read_field(&mut r, MAX_VALUE_BYTES)?;
            if map.insert(k, v).is_some() {
                return Err(bad("a key appears twice".into()));
            }
        }
        let mut sessions = SessionTable::new(self.sessions.max, self.sessions.max_bytes);
        sessions.next_assigned = next_assigned;
        let n = read_u64(&mut r)?;
        if n > self.sessions.max as u64 {
            return Err(bad(format!(
                "{n} sessions exceed max_sessions = {}",
                self.sessions.max
            )));
        }
        let mut previous = Zxid::ZERO;
        for _ in 0..n {
            let principal = read_field(&mut r, MAX_PRINCIPAL_BYTES)?;
            let id = read_u64(&mut r)?;
            let seq = read_u64(&mut r)?;
            let touched = Zxid(read_u64(&mut r)?);
            let result = read_field(&mut r, MAX_VALUE_BYTES + 16)?;
            // Check what recency order and determinism rest on.
            if touched <= previous || touched > applied {
                return Err(bad(format!(
                    "session {id}: last use {touched:?} is out of order (previous {previous:?}, \
                     applied {applied:?})"
                )));
            }
            if seq == 0 {
                return Err(bad(format!("session {id}: sequence 0")));
            }
            // An assigned id the counter has not reached would collide with
            // a later open.
            if id & ASSIGNED_SESSION_BIT != 0 && id & !ASSIGNED_SESSION_BIT >= next_assigned {
                return Err(bad(format!(
                    "session {id:#x} is beyond the assigned-session counter {next_assigned}"
                )));
            }
            previous = touched;
            let cost = slot_bytes(&principal, &result);
            if sessions.bytes + cost > sessions.max_bytes {
                return Err(bad(format!(
                    "the session table exceeds max_session_bytes = {}",
                    sessions.max_bytes
                )));
            }
            if sessions.open(principal, id, seq, touched, result).is_none() {
                return Err(bad(format!("session {id} appears twice")));
            }
        }
        let mut extra = [0u8; 1];
        if r.read(&mut extra)? != 0 {
            return Err(bad("trailing bytes after the session table".into()));
        }
        // Only a fully read snapshot replaces the state.
        self.digest = map.iter().fold(0, |d, (k, v)| d ^ pair_hash(k, v));
        self.map = map;
        self.sessions = sessions;
        self.applied = applied;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::Epoch;

    fn z(n: u32) -> Zxid {
        Zxid::new(Epoch(1), n)
    }

    fn cmd(client: u64, seq: u64, op: KvOp) -> Bytes {
        KvCommand {
            principal: Bytes::new(),
            client,
            seq,
            op,
        }
        .to_bytes()
    }

    fn put(client: u64, seq: u64, k: &str, v: &str) -> Bytes {
        cmd(
            client,
            seq,
            KvOp::Put {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::copy_from_slice(v.as_bytes()),
            },
        )
    }

    fn result(b: Bytes) -> KvResult {
        KvResult::decode(b).expect("the store returns decodable results")
    }

    fn value(s: &KvStore, k: &str) -> Option<String> {
        s.get(k.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn a_clone_is_a_frozen_copy_while_the_original_goes_on() {
        let mut s = KvStore::new();
        let mut n = 0u32;
        for i in 0..2000u64 {
            n += 1;
            s.apply(z(n), &put(1, i + 1, &format!("k{i}"), "v1"));
        }
        let frozen = s.clone();
        let frozen_image = image(&frozen);
        let frozen_digest = frozen.digest();
        // Overwrite half, delete a quarter, add new keys: every shard is
        // written after the clone.
        for i in 0..1000u64 {
            n += 1;
            s.apply(z(n), &put(1, 2001 + i, &format!("k{i}"), "v2"));
        }
        for i in 1000..1500u64 {
            n += 1;
            s.apply(
                z(n),
                &cmd(
                    1,
                    2001 + i,
                    KvOp::Delete {
                        key: Bytes::from(format!("k{i}")),
                    },
                ),
            );
        }
        for i in 0..500u64 {
            n += 1;
            s.apply(z(n), &put(1, 3501 + i, &format!("new{i}"), "v3"));
        }
        assert_eq!(image(&frozen), frozen_image, "the clone did not change");
        assert_eq!(frozen.digest(), frozen_digest);
        assert_eq!(frozen.len(), 2000);
        assert_eq!(frozen.get(b"k0").map(|v| &v[..]), Some(&b"v1"[..]));
        assert_eq!(s.len(), 2000 - 500 + 500);
        assert_eq!(s.get(b"k0").map(|v| &v[..]), Some(&b"v2"[..]));
        assert_eq!(s.get(b"k1200"), None);
        assert_eq!(frozen.get(b"k1200").map(|v| &v[..]), Some(&b"v1"[..]));
        // The live store restores from its own image to an equal store.
        let mut t = KvStore::new();
        t.restore(s.applied(), &mut &image(&s)[..]).unwrap();
        assert_eq!(t.digest(), s.digest());
        assert_eq!(image(&t), image(&s));
    }

    fn image(s: &KvStore) -> Vec<u8> {
        let mut out = Vec::new();
        s.snapshot(&mut out).expect("snapshot to memory");
        out
    }

    #[test]
    fn replayed_command_is_answered_but_not_reapplied() {
        let mut s = KvStore::new();
        s.apply(z(1), &put(7, 1, "a", "1"));
        s.apply(z(2), &put(8, 1, "a", "2"));
        // Client 7 retries its first put after a failover: no effect.
        let r = s.apply(z(3), &put(7, 1, "a", "1"));
        assert_eq!(result(r), KvResult::Done(None));
        assert_eq!(value(&s, "a").as_deref(), Some("2"));
        // Client 7 moves on; a late duplicate of an older write is refused.
        s.apply(z(4), &put(7, 2, "b", "1"));
        s.apply(z(5), &put(7, 3, "c", "1"));
        let r = s.apply(z(6), &put(7, 2, "b", "late"));
        assert_eq!(result(r), KvResult::StaleSequence { last: 3 });
        assert_eq!(value(&s, "b").as_deref(), Some("1"));
    }

    #[test]
    fn cas_swaps_only_on_match() {
        let mut s = KvStore::new();
        let cas = |seq, expected: Option<&str>, new: &str| {
            cmd(
                1,
                seq,
                KvOp::Cas {
                    key: Bytes::from_static(b"k"),
                    expected: expected.map(|e| Bytes::copy_from_slice(e.as_bytes())),
                    new: Bytes::copy_from_slice(new.as_bytes()),
                },
            )
        };
        let r1 = result(s.apply(z(1), &cas(1, None, "x")));
        assert_eq!(
            r1,
            KvResult::Cas {
                swapped: true,
                current: None
            }
        );
        let r2 = result(s.apply(z(2), &cas(2, Some("y"), "z")));
        assert_eq!(
            r2,
            KvResult::Cas {
                swapped: false,
                current: Some(Bytes::from_static(b"x"))
            }
        );
        assert_eq!(value(&s, "k").as_deref(), Some("x"));
    }

    #[test]
    fn snapshot_round_trips_and_rejects_truncation() {
        let mut s = KvStore::new();
        for i in 1..=100u32 {
            s.apply(
                z(i),
                &put(
                    u64::from(i % 3),
                    u64::from((i - 1) / 3 + 1),
                    &format!("k{i}"),
                    "v",
                ),
            );
        }
        let image = image(&s);
        let mut t = KvStore::new();
        t.restore(s.applied(), &mut &image[..]).unwrap();
        assert_eq!(t.len(), 100);
        assert_eq!(t.session_count(), 3);
        assert_eq!(t.applied(), s.applied());
        assert_eq!(
            t.sessions_by_recency().collect::<Vec<_>>(),
            s.sessions_by_recency().collect::<Vec<_>>()
        );
        assert_eq!(t.digest(), s.digest());
        assert_ne!(s.digest(), 0);
        let mut u = KvStore::new();
        assert!(u
            .restore(s.applied(), &mut &image[..image.len() - 3])
            .is_err());
        assert!(u.is_empty(), "a failed restore keeps the previous state");
    }

    #[test]
    fn malformed_commands_are_deterministic_noops() {
        let mut s = KvStore::new();
        let r = s.apply(z(1), &Bytes::from_static(b"\x01\x02"));
        assert_eq!(&r[..], &[MALFORMED]);
        assert!(s.is_empty());
    }

    #[test]
    fn session_table_stays_within_its_bound_evicting_the_least_recently_used() {
        let mut s = KvStore::with_max_sessions(3).unwrap();
        let mut n = 0;
        let mut next = || {
            n += 1;
            z(n)
        };
        for client in 1..=3 {
            s.apply(next(), &put(client, 1, "k", "v"));
        }
        // Session 1 writes again: session 2 is now the least recently used.
        s.apply(next(), &put(1, 2, "k", "v"));
        s.apply(next(), &put(4, 1, "k", "v"));
        assert_eq!(s.session_count(), 3);
        assert_eq!(
            s.session_seq(b"", 2),
            None,
            "the least recently used is evicted"
        );
        assert_eq!(s.session_seq(b"", 1), Some(2));
        assert_eq!(s.session_seq(b"", 3), Some(1));
        assert_eq!(s.session_seq(b"", 4), Some(1));
        assert_eq!(s.sessions_evicted(), 1);
        // Many more sessions: the bound holds throughout.
        for client in 100..1100 {
            s.apply(next(), &put(client, 1, "k", "v"));
            assert!(s.session_count() <= 3);
        }
        assert_eq!(
            s.sessions_by_recency()
                .map(|(id, _)| id)
                .collect::<Vec<_>>(),
            vec![1097, 1098, 1099]
        );
        assert!(KvStore::with_max_sessions(0).is_err());
        assert!(KvStore::with_max_sessions(MAX_SESSIONS_LIMIT + 1).is_err());
    }

    #[test]
    fn evicted_sessions_late_duplicate_is_refused_not_reapplied() {
        let mut s = KvStore::with_max_sessions(2).unwrap();
        s.apply(z(1), &put(7, 1, "a", "first"));
        s.apply(z(2), &put(7, 2, "a", "second"));
        // Two other sessions push session 7 out; one overwrites its key.
        s.apply(z(3), &put(8, 1, "a", "other"));
        s.apply(z(4), &put(9, 1, "x", "2"));
        assert_eq!(s.session_seq(b"", 7), None);
        // A late copy of session 7's write 2 (a client retry that took a
        // slow path) commits now: refused, not applied again.
        let r = result(s.apply(z(5), &put(7, 2, "a", "second")));
        assert_eq!(r, KvResult::SessionExpired { session: 7 });
        // And a new write of session 7 is refused too (its outcome would be
        // indistinguishable from a duplicate's).
        let r = result(s.apply(z(6), &put(7, 3, "b", "new")));
        assert_eq!(r, KvResult::SessionExpired { session: 7 });
        assert_eq!(value(&s, "a").as_deref(), Some("other"), "not re-applied");
        assert_eq!(value(&s, "b"), None);
        assert_eq!(
            s.session_seq(b"", 7),
            None,
            "a refused command opens nothing"
        );
    }

    #[test]
    fn cluster_assigned_sessions_never_resurrect() {
        let mut s = KvStore::with_max_sessions(2).unwrap();
        let open = cmd(0, 0, KvOp::OpenSession);
        let KvResult::SessionOpened { session: a } = result(s.apply(z(1), &open)) else {
            panic!("open answers SessionOpened");
        };
        assert_ne!(a & ASSIGNED_SESSION_BIT, 0);
        // Its first write is sequence 2 (the open was 1).
        assert_eq!(
            result(s.apply(z(2), &put(a, 2, "k", "1"))),
            KvResult::Done(None)
        );
        // A retried open that commits twice opens a second, distinct session.
        let KvResult::SessionOpened { session: b } = result(s.apply(z(3), &open)) else {
            panic!("open answers SessionOpened");
        };
        let KvResult::SessionOpened { session: c } = result(s.apply(z(4), &open)) else {
            panic!("open answers SessionOpened");
        };
        assert!(a != b && b != c && a != c, "ids are never reused");
        assert_eq!(s.session_seq(b"", a), None, "a was the least recently used");
        // Every later copy of any of a's writes is refused.
        for seq in [2, 3] {
            assert_eq!(
                result(s.apply(z(4 + seq as u32), &put(a, seq, "k", "dup"))),
                KvResult::SessionExpired { session: a }
            );
        }
        assert_eq!(value(&s, "k").as_deref(), Some("1"));
    }

    #[test]
    fn restored_store_evicts_exactly_like_the_original() {
        let mut s = KvStore::with_max_sessions(4).unwrap();
        let mut n = 0u32;
        let mut apply_both = Vec::new();
        // A history with interleaved sessions, assigned opens and retries.
        for i in 0..40u64 {
            n += 1;
            let c = match i % 5 {
                0 => cmd(0, 0, KvOp::OpenSession),
                k => put(10 + k, 1 + i / 5, &format!("k{i}"), "v"),
            };
            s.apply(z(n), &c);
        }
        let img = image(&s);
        let mut t = KvStore::with_max_sessions(4).unwrap();
        t.restore(s.applied(), &mut &img[..]).unwrap();
        assert_eq!(image(&t), img, "a restored store snapshots identically");
        // The same continuation on both: every result and eviction agrees.
        for i in 0..60u64 {
            n += 1;
            let c = match i % 4 {
                0 => cmd(0, 0, KvOp::OpenSession),
                1 => put(100 + i, 1, "x", "v"),
                2 => put(11 + (i % 3), 9 + i, "y", "v"),
                _ => put(10 + (i % 7), 3, "z", "late"),
            };
            let (rs, rt) = (s.apply(z(n), &c), t.apply(z(n), &c));
            assert_eq!(rs, rt, "command {i} answered alike");
            apply_both.push(result(rs));
            assert_eq!(
                s.sessions_by_recency().collect::<Vec<_>>(),
                t.sessions_by_recency().collect::<Vec<_>>()
            );
        }
        assert_eq!(s.digest(), t.digest());
        assert_eq!(image(&s), image(&t));
        // The continuation did exercise eviction and expiry.
        assert!(s.sessions_evicted() > 0);
        assert!(apply_both
            .iter()
            .any(|r| matches!(r, KvResult::SessionExpired { .. })));
    }

    #[test]
    fn restore_refuses_an_old_format_a_new_version_and_another_bound() {
        let mut s = KvStore::with_max_sessions(8).unwrap();
        s.apply(z(1), &put(1, 1, "k", "v"));
        let img = image(&s);
        // Format 1 began with the applied zxid, no header.
        let mut old = Vec::new();
        old.extend_from_slice(&z(1).as_u64().to_le_bytes());
        old.extend_from_slice(&0u64.to_le_bytes());
        old.extend_from_slice(&0u64.to_le_bytes());
        let mut t = KvStore::with_max_sessions(8).unwrap();
        let e = t.restore(z(1), &mut &old[..]).unwrap_err();
        assert!(e.to_string().contains("format 1"), "{e}");
        let mut future = img.clone();
        future[8..12].copy_from_slice(&4u32.to_le_bytes());
        let e = t.restore(z(1), &mut &future[..]).unwrap_err();
        assert!(e.to_string().contains("format 4"), "{e}");
        let mut previous = img.clone();
        previous[8..12].copy_from_slice(&2u32.to_le_bytes());
        let e = t.restore(z(1), &mut &previous[..]).unwrap_err();
        assert!(e.to_string().contains("format 2"), "{e}");
        let mut other = KvStore::with_max_sessions(9).unwrap();
        let e = other.restore(z(1), &mut &img[..]).unwrap_err();
        assert!(e.to_string().contains("max_sessions"), "{e}");
        let mut trailing = img.clone();
        trailing.push(0);
        let e = t.restore(z(1), &mut &trailing[..]).unwrap_err();
        assert!(e.to_string().contains("trailing"), "{e}");
        assert!(t.is_empty() && other.is_empty());
        t.restore(z(1), &mut &img[..]).unwrap();
        assert_eq!(value(&t, "k").as_deref(), Some("v"));
    }

    /// The attack of issue 12: a client names a session with the top bit
    /// set, the id the cluster will assign next; the next `OpenSession`
    /// then found the id taken and asserted inside `apply`, on every
    /// replica, and again on every replay of the committed entry.
    #[test]
    fn a_client_named_id_in_the_assigned_range_cannot_crash_apply() {
        let mut s = KvStore::new();
        let KvResult::SessionOpened { session: n } =
            result(s.apply(z(1), &cmd(0, 0, KvOp::OpenSession)))
        else {
            panic!("open answers SessionOpened");
        };
        let forged = n + 1;
        assert_ne!(forged & ASSIGNED_SESSION_BIT, 0);
        let r = s.apply(z(2), &put(forged, 1, "k", "v"));
        assert_eq!(
            &r[..],
            &[MALFORMED],
            "a client-named id with the top bit is refused"
        );
        assert_eq!(value(&s, "k"), None);
        let KvResult::SessionOpened { session: next } =
            result(s.apply(z(3), &cmd(0, 0, KvOp::OpenSession)))
        else {
            panic!("open answers SessionOpened");
        };
        assert_eq!(next, forged, "the next assigned id is handed out normally");
    }

    fn cmd_as(principal: &'static [u8], client: u64, seq: u64, op: KvOp) -> Bytes {
        KvCommand {
            principal: Bytes::from_static(principal),
            client,
            seq,
            op,
        }
        .to_bytes()
    }

    fn put_op(k: &str, v: &str) -> KvOp {
        KvOp::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
    }

    /// One principal can neither use nor poison another's sessions: the
    /// same id names two sessions, and an assigned id used by another
    /// principal is unknown to it.
    #[test]
    fn sessions_belong_to_their_principal() {
        let mut s = KvStore::new();
        assert_eq!(
            result(s.apply(z(1), &cmd_as(b"alice", 7, 1, put_op("a", "1")))),
            KvResult::Done(None)
        );
        // Mallory names alice's session with a high sequence: in alice's
        // table it would poison her next write; here it is mallory's own,
        // unknown session.
        assert_eq!(
            result(s.apply(z(2), &cmd_as(b"mallory", 7, 99, put_op("a", "x")))),
            KvResult::SessionExpired { session: 7 }
        );
        // Alice's retry of sequence 1 is still answered from her session.
        assert_eq!(
            result(s.apply(z(3), &cmd_as(b"alice", 7, 1, put_op("a", "1")))),
            KvResult::Done(None)
        );
        assert_eq!(s.session_seq(b"alice", 7), Some(1));
        assert_eq!(s.session_seq(b"mallory", 7), None);
        let KvResult::SessionOpened { session } =
            result(s.apply(z(4), &cmd_as(b"alice", 0, 0, KvOp::OpenSession)))
        else {
            panic!("open answers SessionOpened");
        };
        assert_eq!(
            result(s.apply(z(5), &cmd_as(b"mallory", session, 2, put_op("b", "x")))),
            KvResult::SessionExpired { session },
            "an assigned session is its opener's only"
        );
        assert_eq!(
            result(s.apply(z(6), &cmd_as(b"alice", session, 2, put_op("b", "1")))),
            KvResult::Done(None)
        );
        assert_eq!(value(&s, "a").as_deref(), Some("1"));
        assert_eq!(value(&s, "b").as_deref(), Some("1"));
    }

    /// Issue 12's flood: one large value, then many sessions each failing a
    /// compare-and-set, whose result holds the value. The table's bytes stay
    /// within the bound, evicting the least recently used sessions.
    #[test]
    fn the_session_table_is_bounded_in_bytes() {
        let bound = MIN_MAX_SESSION_BYTES;
        let mut s = KvStore::with_session_limits(100_000, bound).unwrap();
        let big = Bytes::from(vec![7u8; MAX_VALUE_BYTES]);
        let mut n = 1;
        s.apply(
            z(n),
            &cmd_as(
                b"a",
                1,
                1,
                KvOp::Put {
                    key: Bytes::from_static(b"k"),
                    value: big.clone(),
                },
            ),
        );
        for client in 2..200u64 {
            n += 1;
            let r = result(s.apply(
                z(n),
                &cmd_as(
                    b"a",
                    client,
                    1,
                    KvOp::Cas {
                        key: Bytes::from_static(b"k"),
                        expected: None,
                        new: Bytes::from_static(b"x"),
                    },
                ),
            ));
            assert!(matches!(r, KvResult::Cas { swapped: false, .. }));
            assert!(
                s.session_bytes() <= bound,
                "{} > {bound}",
                s.session_bytes()
            );
        }
        assert!(
            s.session_count() < 10,
            "{} sessions kept",
            s.session_count()
        );
        assert!(s.sessions_evicted() > 190);
        // The most recent session is still answered from the table.
        assert_eq!(s.session_seq(b"a", 199), Some(1));
        // A restored copy counts the same bytes and evicts alike.
        let img = image(&s);
        let mut t = KvStore::with_session_limits(100_000, bound).unwrap();
        t.restore(s.applied(), &mut &img[..]).unwrap();
        assert_eq!(t.session_bytes(), s.session_bytes());
        assert_eq!(image(&t), img);
        let mut other = KvStore::with_session_limits(100_000, bound + 1).unwrap();
        let e = other.restore(s.applied(), &mut &img[..]).unwrap_err();
        assert!(e.to_string().contains("max_session_bytes"), "{e}");
        assert!(KvStore::with_session_limits(10, MIN_MAX_SESSION_BYTES - 1).is_err());
    }

    #[test]
    fn stored_keys_and_values_do_not_share_the_commands_buffer() {
        let mut s = KvStore::new();
        let c = cmd_as(b"a", 1, 1, put_op("key", "value"));
        s.apply(z(1), &c);
        let stored = s.get(b"key").unwrap();
        let frame = c.as_ptr_range();
        assert!(
            !frame.contains(&stored.as_ptr()),
            "the value was copied out"
        );
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

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Any bytes at all, or a well-formed command with arbitrary ids,
        /// sequences, principals, keys and values.
        fn command() -> impl Strategy<Value = Bytes> {
            let principal = prop_oneof![Just(&b""[..]), Just(&b"alice"[..]), Just(&b"bob"[..])];
            let client = prop_oneof![
                0..4u64,
                Just(ASSIGNED_SESSION_BIT | 1),
                Just(ASSIGNED_SESSION_BIT | 2),
                Just(ASSIGNED_SESSION_BIT | 3),
                any::<u64>(),
            ];
            let seq = prop_oneof![0..5u64, any::<u64>()];
            let key = prop::collection::vec(any::<u8>(), 0..3).prop_map(Bytes::from);
            let value = prop_oneof![
                prop::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from),
                (0..MAX_VALUE_BYTES).prop_map(|n| Bytes::from(vec![1u8; n % 300_000])),
            ];
            let op = prop_oneof![
                (key.clone(), value.clone()).prop_map(|(key, value)| KvOp::Put { key, value }),
                key.clone().prop_map(|key| KvOp::Delete { key }),
                (key, prop::option::of(value.clone()), value)
                    .prop_map(|(key, expected, new)| KvOp::Cas { key, expected, new }),
                Just(KvOp::OpenSession),
            ];
            let well_formed = (principal, client, seq, op).prop_map(|(p, client, seq, op)| {
                let mut b = BytesMut::new();
                b.put_u8(COMMAND_FORMAT);
                b.put_u8(p.len() as u8);
                b.put_slice(p);
                b.put_u64_le(client);
                b.put_u64_le(seq);
                // Encode without the decoder's checks (ids in the assigned
                // range with sequence 1 included).
                let c = KvCommand {
                    principal: Bytes::new(),
                    client: 0,
                    seq: 0,
                    op,
                }
                .to_bytes();
                b.put_slice(&c[18..]);
                b.freeze()
            });
            prop_oneof![
                6 => well_formed.clone(),
                1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from),
                1 => (well_formed, any::<prop::sample::Index>(), any::<u8>()).prop_map(
                    |(c, i, b)| {
                        let mut v = c.to_vec();
                        let i = i.index(v.len());
                        v[i] = b;
                        Bytes::from(v)
                    }
                ),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            /// `apply` never panics on any command, and two replicas that
            /// apply the same commands (one restored from the other's
            /// snapshot midway) end with equal state and answers.
            #[test]
            fn apply_never_panics_and_replicas_agree(
                cmds in prop::collection::vec(command(), 1..60),
                max_sessions in 1usize..6,
                cut in any::<prop::sample::Index>(),
            ) {
                let bound = MIN_MAX_SESSION_BYTES;
                let mut a = KvStore::with_session_limits(max_sessions, bound).unwrap();
                let mut b = KvStore::with_session_limits(max_sessions, bound).unwrap();
                let cut = cut.index(cmds.len());
                for (i, c) in cmds.iter().enumerate() {
                    let zx = z(i as u32 + 1);
                    if i == cut {
                        let img = image(&a);
                        b = a.emptied();
                        b.restore(a.applied(), &mut &img[..]).unwrap();
                    }
                    let ra = a.apply(zx, c);
                    let rb = b.apply(zx, c);
                    prop_assert_eq!(&ra, &rb);
                    prop_assert!(a.session_count() <= max_sessions);
                    prop_assert!(a.session_bytes() <= bound);
                }
                prop_assert_eq!(a.digest(), b.digest());
                prop_assert_eq!(image(&a), image(&b));
            }
        }
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
