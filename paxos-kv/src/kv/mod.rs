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
//!
//! # Key ranges and splits
//!
//! A store is one group's state, and a group owns a range of key positions
//! ([`crate::shard::position`], [`KvStore::range`]). A put, delete or
//! compare-and-set of a key outside it is answered
//! [`KvResult::WrongGroup`] and not applied. The check comes after the
//! session's deduplication (a retry of a write applied before a split
//! still gets its remembered answer) and before anything is recorded: the
//! session's sequence does not advance, and a command that would open a
//! client-named session (sequence 1) does not open it, so that the same
//! write, sent again to the group that owns the key, opens the session
//! there, and a copy that commits here later is refused again (as long
//! as the group does not own the key again: see merges below). A writer
//! that does not know whether a write was applied must retry it in the
//! same group and session until the answer is definite, the remembered
//! result or `WrongGroup` (this group did not apply it), before it sends
//! it to the new owner in another session: a write applied here just
//! before the split moved with the key, and sending it elsewhere at once
//! could apply it twice.
//!
//! Internal operations ([`KvOp::is_internal`]), proposed by the nodes,
//! split a group's range and move the keys to the new group through that
//! group's own log (see [`KvOp::Split`] and the steps it starts), or merge
//! a group into an adjacent one (below). They
//! take no session, are never deduplicated by one, and are refused
//! ([`KvResult::Refused`]) when they do not fit the store's state, which
//! makes their duplicates no-ops.
//!
//! # Merges
//!
//! The reverse of a split removes a group H by moving its whole range to
//! an adjacent group G: H retires ([`KvOp::Retire`]: it owns nothing from
//! then on, and [`KvStore::retired_into`] stays set for good), G takes the
//! range in through its own log ([`KvOp::Absorb`], then [`KvOp::Ingest`]
//! batches) while it goes on serving its own keys, and H drops the keys
//! ([`KvOp::FinishMove`]). The final batch of every move, a split's or a
//! merge's, records in the taking group's state which range it took over
//! and from which group ([`KvStore::has_taken`]): owning the range does not
//! tell a finished merge from a replica left in the state from before the
//! range was split off. Two things a writer must know:
//!
//! - A write H answered [`KvResult::WrongGroup`] was not applied there, as
//!   for a split. But once G owns the range, the range G gave away by an
//!   earlier split may be its own again (a child merged back into its
//!   parent): a copy of a write that G refused as `WrongGroup` and that
//!   commits in G only after the merge is applied, if its session in G
//!   has not moved past its sequence. The client advances a session's
//!   sequence on every attempt, so any later write of the same session in
//!   G closes that window; a writer that leaves a session idle must not
//!   have a copy of a refused write still in flight that long.
//! - Once H has dropped its keys it serves nothing more (a node removes
//!   it): a write whose outcome in H is unknown can no longer be settled
//!   by retrying it there, and must be treated like one that timed out.

mod command;
mod map;
mod merge;
mod sessions;
mod snapshot;
mod split;
#[cfg(test)]
mod test_util;

pub use command::{
    KvCodecError, KvCommand, KvOp, KvResult, ASSIGNED_SESSION_BIT, COMMAND_FORMAT,
    MAX_INGEST_PAIRS, MAX_KEY_BYTES, MAX_PRINCIPAL_BYTES, MAX_REASON_BYTES, MAX_SPLIT_MEMBERS,
    MAX_VALUE_BYTES,
};
pub use sessions::{
    KvConfigError, DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSION_BYTES, MAX_SESSIONS_LIMIT,
    MIN_MAX_SESSION_BYTES, SESSION_OVERHEAD_BYTES,
};
pub use split::{already_child, Child, Incoming};

use bytes::Bytes;
use map::ShardedMap;
use paxos_core::{StateMachine, Zxid};
use sessions::SessionTable;
use split::ShardState;
use std::io;

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
    /// The key range this group owns and the splits it is part of.
    shard: ShardState,
}

impl Default for KvStore {
    fn default() -> Self {
        KvStore {
            map: ShardedMap::default(),
            sessions: SessionTable::new(DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSION_BYTES),
            applied: Zxid::ZERO,
            digest: 0,
            shard: ShardState::default(),
        }
    }
}

/// A hash of one pair for the store's digest, 16 bytes at a time: each
/// block goes through a folded 128-bit multiply (the mixing step of
/// wyhash and foldhash), the state in both factors so that no fixed block
/// zeroes it. Not a defence against chosen pairs (neither was FNV-1a): the
/// digest tells replicas that diverged by accident. Fixed constants, so
/// every replica and every run of this build gives the same digest for the
/// same pairs. Both lengths
/// are mixed in first, so `("ab", "c")` and `("a", "bc")` differ, and so
/// do a value and the same value with zero bytes after it (the last block
/// of each part is padded with zeros).
///
/// It replaces FNV-1a byte by byte, one dependent multiply per byte: in a
/// profile of the e2e bench (256 groups, 100 B values) the digest was most
/// of `KvStore::insert`, a node's largest single symbol.
fn pair_hash(key: &[u8], value: &[u8]) -> u64 {
    const P: [u64; 4] = [
        0x243f_6a88_85a3_08d3,
        0x1319_8a2e_0370_7344,
        0xa409_3822_299f_31d0,
        0x082e_fa98_ec4e_6c89,
    ];
    fn fold(a: u64, b: u64) -> u64 {
        let r = u128::from(a) * u128::from(b);
        (r as u64) ^ ((r >> 64) as u64)
    }
    fn word(bytes: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w[..bytes.len()].copy_from_slice(bytes);
        u64::from_le_bytes(w)
    }
    let mut h = fold(key.len() as u64 ^ P[0], value.len() as u64 ^ P[1]);
    for part in [key, value] {
        let mut blocks = part.chunks_exact(16);
        for b in &mut blocks {
            h = fold(
                word(&b[..8]) ^ P[2] ^ h,
                word(&b[8..]) ^ P[3] ^ h.rotate_left(32),
            );
        }
        let rest = blocks.remainder();
        if !rest.is_empty() {
            let (lo, hi) = rest.split_at(rest.len().min(8));
            h = fold(word(lo) ^ P[2] ^ h, word(hi) ^ P[3] ^ h.rotate_left(32));
        }
    }
    fold(h ^ P[0], P[1])
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

    /// An empty store configured like this one: where a snapshot is
    /// restored before it replaces the live state. It has the same session
    /// bounds and the same shard state (base group count, range, moves
    /// under way, children, group counter, retirement, ranges taken
    /// over), no key and no
    /// session. A snapshot of format 4 or later replaces the shard state
    /// (and must have the same base group count); one of format 3 has none
    /// and keeps this one.
    pub fn emptied(&self) -> KvStore {
        KvStore {
            sessions: SessionTable::new(self.sessions.max, self.sessions.max_bytes),
            shard: self.shard.clone(),
            ..KvStore::default()
        }
    }

    /// Reads a key (served by the node after a read-index round, or
    /// stale), whether this group owns it or not: the node checks
    /// [`KvStore::owns`] before it serves a client, and reads the frozen
    /// keys' values to move them.
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
            KvOp::OpenSession
            | KvOp::AllocateGroup { .. }
            | KvOp::Split { .. }
            | KvOp::Ingest { .. }
            | KvOp::FinishMove { .. }
            | KvOp::Retire { .. }
            | KvOp::Absorb { .. } => {
                unreachable!("invariant: apply handles keyless operations before keyed ones")
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
        // Internal operations take no session: applied before any session
        // handling, whatever the command's principal, client and sequence.
        if let Some(r) = self.apply_internal(&cmd.op) {
            return r.to_bytes();
        }
        if cmd.op == KvOp::OpenSession {
            return self.open_assigned(&cmd.principal, zxid);
        }
        // Whether the written key is this group's (every operation left
        // has a key).
        let owned = cmd.op.key().is_some_and(|key| self.owns(key));
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
            // A first command for a key elsewhere opens nothing: the
            // session is opened by the group the write goes to instead.
            None if cmd.seq == 1 && !owned => return KvResult::WrongGroup.to_bytes(),
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
        if !owned {
            // Not applied and not recorded: the session's sequence stays
            // where it was, so the write can be sent to the owner instead.
            return KvResult::WrongGroup.to_bytes();
        }
        let result = self.execute(cmd.op).to_bytes();
        self.sessions.record(slot, cmd.seq, result.clone(), zxid);
        result
    }

    fn applied(&self) -> Zxid {
        self.applied
    }

    fn snapshot(&self, out: &mut dyn io::Write) -> io::Result<()> {
        self.write_snapshot(out)
    }

    fn restore(&mut self, zxid: Zxid, input: &mut dyn io::Read) -> io::Result<()> {
        self.read_snapshot(zxid, input)
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use bytes::{BufMut, BytesMut};

    /// The digest's pair hash tells apart pairs that share their bytes:
    /// moved across the key/value boundary, padded with zeros (the last
    /// block of each part is), of every length around the block sizes, and
    /// many distinct pairs give distinct hashes.
    #[test]
    fn pair_hashes_differ_for_pairs_that_share_their_bytes() {
        let mut seen = std::collections::HashMap::new();
        let mut add = |k: Vec<u8>, v: Vec<u8>| {
            let h = pair_hash(&k, &v);
            if let Some(other) = seen.insert(h, (k.clone(), v.clone())) {
                assert_eq!(other, (k, v), "two pairs share hash {h:#x}");
            }
        };
        // Every split of the same bytes between key and value, every length
        // from empty to three blocks, zeros and not.
        for fill in [0u8, 0xab] {
            for len in 0..=48usize {
                let bytes: Vec<u8> = (0..len)
                    .map(|i| if fill == 0 { 0 } else { fill ^ i as u8 })
                    .collect();
                for at in 0..=len {
                    add(bytes[..at].to_vec(), bytes[at..].to_vec());
                }
            }
        }
        // A value and the same value followed by zero bytes.
        for extra in 1..=16 {
            let mut v = b"value".to_vec();
            v.resize(5 + extra, 0);
            add(b"key".to_vec(), v);
        }
        // Keys of the e2e bench's shape with 100-byte values.
        for i in 0..100_000u32 {
            add(format!("key-{i}").into_bytes(), vec![(i % 251) as u8; 100]);
        }
        assert!(seen.len() > 100_000);
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
    fn malformed_commands_are_deterministic_noops() {
        let mut s = KvStore::new();
        let r = s.apply(z(1), &Bytes::from_static(b"\x01\x02"));
        assert_eq!(&r[..], &[MALFORMED]);
        assert!(s.is_empty());
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

    mod props {
        use super::*;
        use crate::shard::KeyRange;
        use proptest::prelude::*;

        /// Any bytes at all, or a well-formed command with arbitrary ids,
        /// sequences, principals and operations (internal ones included).
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
            let well_formed =
                (principal, client, seq, arb_op()).prop_map(|(p, client, seq, op)| {
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

        /// A step of a history: a command as generated, or one of the
        /// steps of a split or a merge made to fit the store's state when
        /// it runs (so that moves do happen, not only refusals). The
        /// store plays either side of a merge: it may retire (and then
        /// finish), or absorb a range beside its own (and then take it in).
        #[derive(Clone, Debug)]
        enum Step {
            Raw(Bytes),
            /// Split at the midpoint of the range, for `child`, with this
            /// membership (not always a valid one).
            SplitHalf {
                child: u32,
                voters: Vec<u64>,
                observers: Vec<u64>,
            },
            /// The next ingest batch of these keys (those in the incoming
            /// range and past the cursor), sorted unless `shuffled`.
            IngestNext {
                keys: Vec<Bytes>,
                shuffled: bool,
                last: bool,
            },
            /// Finish the move under way.
            Finish,
            /// Retire into `into`.
            Retire {
                into: u32,
            },
            /// Absorb from `from` the range of `width` positions that
            /// adjoins the store's range above it (or below, if `below`),
            /// cut at the ends of the position space.
            AbsorbBeside {
                from: u32,
                width: u128,
                below: bool,
            },
        }

        /// A split's membership: mostly a valid one, sometimes lists of
        /// ids from a small space that may be empty or share an id (such a
        /// split does not decode: a no-op).
        fn membership() -> impl Strategy<Value = (Vec<u64>, Vec<u64>)> {
            let ids = || prop::collection::vec(0..6u64, 0..4);
            prop_oneof![3 => arb_membership(), 1 => (ids(), ids())]
        }

        fn step() -> impl Strategy<Value = Step> {
            let key = prop::collection::vec(any::<u8>(), 0..3).prop_map(Bytes::from);
            prop_oneof![
                8 => command().prop_map(Step::Raw),
                1 => (0..4u32, membership()).prop_map(|(child, (voters, observers))| {
                    Step::SplitHalf { child, voters, observers }
                }),
                2 => (prop::collection::vec(key, 0..6), prop::bool::weighted(0.1), any::<bool>())
                    .prop_map(|(keys, shuffled, last)| Step::IngestNext { keys, shuffled, last }),
                1 => Just(Step::Finish),
                1 => (0..4u32).prop_map(|into| Step::Retire { into }),
                1 => (
                    0..4u32,
                    prop_oneof![Just(1u128 << 63), Just(1u128 << 64), Just(2u128 << 64), 0..4u128],
                    any::<bool>(),
                )
                    .prop_map(|(from, width, below)| Step::AbsorbBeside { from, width, below }),
            ]
        }

        /// The command a step stands for, given the store's state now.
        fn resolve(s: &KvStore, step: &Step) -> Bytes {
            match step {
                Step::Raw(c) => c.clone(),
                Step::SplitHalf {
                    child,
                    voters,
                    observers,
                } => internal(KvOp::Split {
                    at: s.range().midpoint().unwrap_or(0),
                    child: *child,
                    voters: voters.clone(),
                    observers: observers.clone(),
                }),
                Step::IngestNext {
                    keys,
                    shuffled,
                    last,
                } => {
                    let (from, range, after) = match s.incoming() {
                        Some(i) => (i.from, i.range, i.cursor.clone()),
                        None => (0, KeyRange::EMPTY, None),
                    };
                    let base = s.base_groups();
                    let mut keyed: Vec<(u128, Bytes)> = keys
                        .iter()
                        .map(|k| (crate::shard::position(k, base), k.clone()))
                        .filter(|pk| range.contains(pk.0) && after.as_ref().is_none_or(|a| pk > a))
                        .collect();
                    keyed.sort();
                    keyed.dedup();
                    if *shuffled {
                        keyed.reverse();
                    }
                    let pairs = keyed.into_iter().map(|(_, k)| (k.clone(), k)).collect();
                    internal(KvOp::Ingest {
                        from,
                        after,
                        pairs,
                        last: *last,
                    })
                }
                Step::Finish => internal(KvOp::FinishMove {
                    child: s.outgoing().map_or(0, |(c, _)| c),
                }),
                Step::Retire { into } => internal(KvOp::Retire { into: *into }),
                Step::AbsorbBeside { from, width, below } => {
                    let r = s.range();
                    let range = if *below {
                        KeyRange {
                            start: r.start.saturating_sub(*width),
                            end: r.start,
                        }
                    } else {
                        KeyRange {
                            start: r.end,
                            end: r.end.saturating_add(*width),
                        }
                    };
                    internal(KvOp::Absorb { from: *from, range })
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]
            /// `apply` never panics on any command, and two replicas that
            /// apply the same commands (one restored from the other's
            /// snapshot midway) end with equal state and answers. The
            /// shard invariants hold throughout.
            #[test]
            fn apply_never_panics_and_replicas_agree(
                steps in prop::collection::vec(step(), 1..60),
                max_sessions in 1usize..6,
                cut in any::<prop::sample::Index>(),
                start in 0..3u8,
                fresh in any::<bool>(),
            ) {
                let bound = MIN_MAX_SESSION_BYTES;
                let fresh_store = || KvStore::with_session_limits(max_sessions, bound).unwrap();
                let upper = KeyRange {
                    start: 1 << 63,
                    end: 1 << 64,
                };
                // A single group, a base group of two, or a new group
                // taking the upper half of group 0 over.
                let configure = |s: KvStore| match start {
                    0 => s,
                    1 => s.with_shard(2, KeyRange::of_base_group(1)),
                    _ => s.with_incoming(1, 0, upper),
                };
                let mut a = configure(fresh_store());
                let mut b = configure(fresh_store());
                let cut = cut.index(steps.len());
                for (i, st) in steps.iter().enumerate() {
                    let zx = z(i as u32 + 1);
                    if i == cut {
                        let img = image(&a);
                        b = if fresh {
                            fresh_store().with_shard(a.base_groups(), KeyRange::EMPTY)
                        } else {
                            a.emptied()
                        };
                        b.restore(a.applied(), &mut &img[..]).unwrap();
                    }
                    let c = resolve(&a, st);
                    let ra = a.apply(zx, &c);
                    let rb = b.apply(zx, &c);
                    prop_assert_eq!(&ra, &rb);
                    prop_assert!(ra[..] == [MALFORMED] || KvResult::decode(ra.clone()).is_ok());
                    prop_assert!(a.session_count() <= max_sessions);
                    prop_assert!(a.session_bytes() <= bound);
                    prop_assert_eq!(a.shard.check(), Ok(()));
                    prop_assert_eq!(split::check_keys(&a.shard, &a.map), Ok(()));
                }
                prop_assert_eq!(a.digest(), b.digest());
                prop_assert_eq!(&a.shard, &b.shard);
                prop_assert_eq!(image(&a), image(&b));
            }
        }
    }
}
