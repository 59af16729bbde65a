//! The session table: per `(principal, session id)`, the highest sequence
//! applied, its encoded result and the zxid of the last command naming the
//! session, kept in a doubly linked recency list so that lookup, touch and
//! eviction are O(1).
//!
//! Invariants: the table never holds more than `max` sessions nor more
//! than `max_bytes` bytes (as [`slot_bytes`] counts them); eviction takes
//! the least recently used session, by log position only, so every replica
//! evicts the same sessions at the same zxids; cluster-assigned ids come
//! from a counter in the replicated state and are never handed out twice.

use bytes::Bytes;
use paxos_core::Zxid;
use std::collections::HashMap;

/// Sessions a store keeps by default before it evicts the least recently
/// used one.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;
/// Largest session table a store accepts (the table indexes with `u32`).
pub const MAX_SESSIONS_LIMIT: usize = 1 << 28;
/// Bytes the session table may hold by default (remembered results,
/// principal names and a fixed cost per session, see
/// [`KvStore::session_bytes`](super::KvStore::session_bytes)) before it
/// evicts the least recently used session.
pub const DEFAULT_MAX_SESSION_BYTES: usize = 64 << 20;
/// The smallest byte bound a session table accepts: one session with the
/// largest result fits, with room to spare.
pub const MIN_MAX_SESSION_BYTES: usize = 4 << 20;
/// The fixed cost charged per session in the byte count (slot, index
/// entry, list links), an estimate of what a slot really takes.
pub const SESSION_OVERHEAD_BYTES: usize = 96;

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

/// "No slot" in the session list.
const NIL: u32 = u32::MAX;

/// One session in the table, linked into the recency list.
#[derive(Clone, Debug)]
pub(super) struct SessionSlot {
    /// The principal owning the session (a copy: it pins no frame).
    pub(super) principal: Bytes,
    pub(super) id: u64,
    /// The highest sequence applied.
    pub(super) seq: u64,
    /// The zxid of the last command that named the session.
    pub(super) touched: Zxid,
    /// The encoded result of `seq`.
    pub(super) result: Bytes,
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
pub(super) struct SessionTable {
    pub(super) max: usize,
    /// The bound on `bytes`.
    pub(super) max_bytes: usize,
    /// What the table holds, as
    /// [`KvStore::session_bytes`](super::KvStore::session_bytes) counts it.
    pub(super) bytes: usize,
    pub(super) index: HashMap<(Bytes, u64), u32, foldhash::fast::FixedState>,
    slots: Vec<SessionSlot>,
    /// Least recently used: evicted next (`NIL` when empty).
    head: u32,
    /// Most recently used (`NIL` when empty).
    tail: u32,
    /// The counter of cluster-assigned ids: the next one is
    /// `ASSIGNED_SESSION_BIT | next_assigned`.
    pub(super) next_assigned: u64,
    /// Sessions evicted since this store was created or restored (local
    /// statistic, not part of the replicated state).
    pub(super) evicted: u64,
    /// Slots emptied by eviction, reused before the vector grows.
    free: Vec<u32>,
}

/// What one session counts against the table's byte bound.
pub(super) fn slot_bytes(principal: &[u8], result: &[u8]) -> usize {
    SESSION_OVERHEAD_BYTES + principal.len() + result.len()
}

impl SessionTable {
    pub(super) fn new(max: usize, max_bytes: usize) -> SessionTable {
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

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn slot(&self, i: u32) -> &SessionSlot {
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
    pub(super) fn touch(&mut self, principal: &Bytes, id: u64, zxid: Zxid) -> Option<u32> {
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
    pub(super) fn record(&mut self, i: u32, seq: u64, result: Bytes, zxid: Zxid) {
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
    pub(super) fn open(
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
    pub(super) fn iter_oldest_first(&self) -> impl Iterator<Item = &SessionSlot> {
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

#[cfg(test)]
mod tests {
    use crate::kv::test_util::*;
    use crate::kv::*;

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
}
