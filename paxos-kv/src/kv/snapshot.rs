//! The snapshot format of [`KvStore`]: the shard state, the map's pairs
//! sorted by key, then the session table from the least to the most
//! recently used, behind a magic and a version.
//!
//! Invariants: equal stores write identical bytes (pairs sorted, sessions
//! in recency order, so a restored store evicts exactly like the original);
//! a restore checks everything determinism rests on (the session bounds and
//! the base group count match this store's, the shard state is consistent
//! and every key lies in a range the group holds, recency order, counters
//! in range, no duplicate key or session, no trailing byte) and replaces
//! the state only once the whole snapshot has been read.

use super::command::{put_bytes, put_range};
use super::map::ShardedMap;
use super::sessions::{slot_bytes, SessionTable};
use super::split::{check_keys, Child, Incoming, ShardState, MAX_CHILDREN};
use super::{
    pair_hash, KvStore, ASSIGNED_SESSION_BIT, MAX_KEY_BYTES, MAX_PRINCIPAL_BYTES,
    MAX_SPLIT_MEMBERS, MAX_VALUE_BYTES,
};
use crate::shard::KeyRange;
use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::Zxid;
use std::io::{self, Read};

/// First bytes of a kv snapshot (format 2 onwards). Format 1 had no header
/// and began with the applied zxid.
const SNAPSHOT_MAGIC: [u8; 8] = *b"PXKVSNAP";
/// The snapshot layout written by this build:
/// `magic | version u32 | applied u64 | max_sessions u64 | max_session_bytes
/// u64 | next_assigned u64 | base_groups u32 | range | outgoing | incoming |
/// children | next_group u32 | retired_into | taken | pairs u64 | (key,
/// value)* |
/// sessions u64 | (principal, id u64, seq u64, touched u64, result)*` where
///
/// - a range is `start u128 | end u128`;
/// - `outgoing` is `0`, or `1 | child u32 | range`;
/// - `incoming` is `0`, or `1 | from u32 | range | cursor | moved u64`,
///   with `cursor` `0`, or `1 | position u128 | key`;
/// - `children` is `count u32 | (id u32 | range | voters | observers)*`,
///   at most 1 000 000 children, where `voters` and `observers` are each
///   `count u32 | id u64*`, at most [`MAX_SPLIT_MEMBERS`] ids;
/// - `retired_into` is `0`, or `1 | group u32` for a group merged into
///   that group;
/// - `taken` is `count u32 | (from u32 | range)*`, at most 1 000 000
///   entries, each a range the group finished taking over and the group
///   it came from, in the order the moves finished;
///
/// flags are one byte (0 or 1), pairs are sorted by key, sessions go from
/// least to most recently used, byte strings are `u32 length | bytes`, and
/// all integers are little-endian (a u128 as 16 bytes).
///
/// Format 3 added the byte bound and the sessions' principals; format 4
/// the shard state, from `base_groups` to `next_group`; format 5 the
/// children's memberships; format 6 `retired_into` (merges); format 7
/// `taken`. Formats 3 to 6 are still read. Format 3 has no shard state, so
/// the store keeps the one it was configured with
/// ([`KvStore::with_shard`]). Format 4 lists each child as `id u32 |
/// range` only: such a child is restored with empty voter and observer
/// lists, and the node makes it with the split group's current members.
/// Formats 4 and 5 have no `retired_into`: their group is restored as not
/// retired (no build that wrote them could retire a group). Formats 4 to
/// 6 have no `taken`: their group is restored with an empty record, so it
/// has no trace of the moves it finished before, and
/// [`KvStore::has_taken`] is false for them. A node restored that way
/// cannot tell that a merge it finished before the upgrade is done. Only
/// builds of a few days wrote format 6, and none was released.
const SNAPSHOT_VERSION: u32 = 7;
/// The oldest format this build reads.
const OLDEST_VERSION: u32 = 3;

impl KvStore {
    /// Writes the snapshot of the store to `out`.
    pub(super) fn write_snapshot(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.put_slice(&SNAPSHOT_MAGIC);
        buf.put_u32_le(SNAPSHOT_VERSION);
        buf.put_u64_le(self.applied.as_u64());
        buf.put_u64_le(self.sessions.max as u64);
        buf.put_u64_le(self.sessions.max_bytes as u64);
        buf.put_u64_le(self.sessions.next_assigned);
        write_shard(&mut buf, &self.shard);
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

    /// Replaces the store with the snapshot in `input`, taken at `zxid`;
    /// on any error the store is left as it was.
    pub(super) fn read_snapshot(&mut self, zxid: Zxid, input: &mut dyn io::Read) -> io::Result<()> {
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
                 formats {OLDEST_VERSION} to {SNAPSHOT_VERSION} only; rebuild this node's \
                 state from its peers"
            )));
        }
        let mut version = [0u8; 4];
        r.read_exact(&mut version)?;
        let version = u32::from_le_bytes(version);
        if !(OLDEST_VERSION..=SNAPSHOT_VERSION).contains(&version) {
            return Err(bad(format!(
                "format {version} is not supported (this build reads formats {OLDEST_VERSION} \
                 to {SNAPSHOT_VERSION})"
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
        let shard = if version >= 4 {
            let shard = read_shard(&mut r, version)?;
            if shard.base_groups != self.shard.base_groups {
                return Err(bad(format!(
                    "written with base_groups = {}, but this store is configured with {}; \
                     keys' positions depend on the cluster's base group count",
                    shard.base_groups, self.shard.base_groups
                )));
            }
            shard
        } else {
            // Format 3 knows no ranges: the configured ones stay.
            self.shard.clone()
        };
        shard.check().map_err(bad)?;
        let mut map = ShardedMap::default();
        let pairs = read_u64(&mut r)?;
        for _ in 0..pairs {
            let k = read_field(&mut r, MAX_KEY_BYTES)?;
            let v = read_field(&mut r, MAX_VALUE_BYTES)?;
            if map.insert(k, v).is_some() {
                return Err(bad("a key appears twice".into()));
            }
        }
        check_keys(&shard, &map).map_err(bad)?;
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
        self.shard = shard;
        Ok(())
    }
}

/// Writes the shard state in the format of this build (see
/// [`SNAPSHOT_VERSION`]).
fn write_shard(buf: &mut BytesMut, s: &ShardState) {
    buf.put_u32_le(s.base_groups);
    put_range(buf, &s.range);
    match &s.outgoing {
        None => buf.put_u8(0),
        Some((child, range)) => {
            buf.put_u8(1);
            buf.put_u32_le(*child);
            put_range(buf, range);
        }
    }
    match &s.incoming {
        None => buf.put_u8(0),
        Some(inc) => {
            buf.put_u8(1);
            buf.put_u32_le(inc.from);
            put_range(buf, &inc.range);
            match &inc.cursor {
                None => buf.put_u8(0),
                Some((p, key)) => {
                    buf.put_u8(1);
                    buf.put_u128_le(*p);
                    put_bytes(buf, key);
                }
            }
            buf.put_u64_le(inc.moved);
        }
    }
    buf.put_u32_le(s.children.len() as u32);
    for child in &s.children {
        buf.put_u32_le(child.id);
        put_range(buf, &child.range);
        for ids in [&child.voters, &child.observers] {
            buf.put_u32_le(ids.len() as u32);
            for id in ids {
                buf.put_u64_le(*id);
            }
        }
    }
    buf.put_u32_le(s.next_group);
    match s.retired_into {
        None => buf.put_u8(0),
        Some(into) => {
            buf.put_u8(1);
            buf.put_u32_le(into);
        }
    }
    buf.put_u32_le(s.taken.len() as u32);
    for (from, range) in &s.taken {
        buf.put_u32_le(*from);
        put_range(buf, range);
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("kv snapshot: {what}"))
}

fn read_array<const N: usize>(r: &mut dyn io::Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_u32(r: &mut dyn io::Read) -> io::Result<u32> {
    read_array(r).map(u32::from_le_bytes)
}

fn read_range(r: &mut dyn io::Read) -> io::Result<KeyRange> {
    let start = u128::from_le_bytes(read_array(r)?);
    let end = u128::from_le_bytes(read_array(r)?);
    Ok(KeyRange { start, end })
}

fn read_flag(r: &mut dyn io::Read, what: &str) -> io::Result<bool> {
    match read_array::<1>(r)?[0] {
        0 => Ok(false),
        1 => Ok(true),
        f => Err(bad(format!("{what} flag {f} is neither 0 nor 1"))),
    }
}

/// A child's list of node ids: `count u32 | id u64*`, at most
/// [`MAX_SPLIT_MEMBERS`] ids.
fn read_ids(r: &mut dyn io::Read, what: &str) -> io::Result<Vec<u64>> {
    let count = read_u32(r)? as usize;
    if count > MAX_SPLIT_MEMBERS {
        return Err(bad(format!(
            "{count} {what} exceed the maximum {MAX_SPLIT_MEMBERS}"
        )));
    }
    (0..count)
        .map(|_| read_array(r).map(u64::from_le_bytes))
        .collect()
}

/// The ranges a group took over: `count u32 | (from u32 | range)*`, at
/// most [`MAX_CHILDREN`] entries. Whether each range is empty is for
/// [`ShardState::check`].
fn read_taken(r: &mut dyn io::Read) -> io::Result<Vec<(u32, KeyRange)>> {
    let count = read_u32(r)? as usize;
    if count > MAX_CHILDREN {
        return Err(bad(format!(
            "{count} ranges taken over exceed the maximum {MAX_CHILDREN}"
        )));
    }
    // Grown as read: a count is not trusted with an allocation.
    let mut taken = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let from = read_u32(r)?;
        taken.push((from, read_range(r)?));
    }
    Ok(taken)
}

/// Reads the shard state of a snapshot of format `version` (4 to
/// [`SNAPSHOT_VERSION`]: the caller checked it). The caller checks the
/// result's invariants ([`ShardState::check`]).
fn read_shard(r: &mut dyn io::Read, version: u32) -> io::Result<ShardState> {
    let memberships = version >= 5;
    let base_groups = read_u32(r)?;
    let range = read_range(r)?;
    let outgoing = if read_flag(r, "outgoing")? {
        let child = read_u32(r)?;
        Some((child, read_range(r)?))
    } else {
        None
    };
    let incoming = if read_flag(r, "incoming")? {
        let from = read_u32(r)?;
        let range = read_range(r)?;
        let cursor = if read_flag(r, "cursor")? {
            let p = u128::from_le_bytes(read_array(r)?);
            let len = read_u32(r)? as usize;
            if len > MAX_KEY_BYTES {
                return Err(bad(format!(
                    "cursor key of {len} bytes exceeds the maximum {MAX_KEY_BYTES}"
                )));
            }
            let mut key = vec![0u8; len];
            r.read_exact(&mut key)?;
            Some((p, Bytes::from(key)))
        } else {
            None
        };
        let moved = u64::from_le_bytes(read_array(r)?);
        Some(Incoming {
            from,
            range,
            cursor,
            moved,
        })
    } else {
        None
    };
    let count = read_u32(r)? as usize;
    if count > MAX_CHILDREN {
        return Err(bad(format!(
            "{count} children exceed the maximum {MAX_CHILDREN}"
        )));
    }
    // Grown as read: a count is not trusted with an allocation.
    let mut children = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let id = read_u32(r)?;
        let range = read_range(r)?;
        // Format 4 kept no membership: the lists stay empty.
        let (voters, observers) = if memberships {
            (read_ids(r, "voters")?, read_ids(r, "observers")?)
        } else {
            (Vec::new(), Vec::new())
        };
        children.push(Child {
            id,
            range,
            voters,
            observers,
        });
    }
    let next_group = read_u32(r)?;
    let retired_into = if version >= 6 && read_flag(r, "retired")? {
        Some(read_u32(r)?)
    } else {
        None
    };
    // Formats 4 to 6 kept no record of the ranges taken over.
    let taken = if version >= 7 {
        read_taken(r)?
    } else {
        Vec::new()
    };
    Ok(ShardState {
        base_groups,
        range,
        outgoing,
        incoming,
        children,
        next_group,
        retired_into,
        taken,
    })
}

#[cfg(test)]
mod tests {
    use crate::kv::test_util::*;
    use crate::kv::*;
    use paxos_core::StateMachine;

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
        future[8..12].copy_from_slice(&8u32.to_le_bytes());
        let e = t.restore(z(1), &mut &future[..]).unwrap_err();
        assert!(e.to_string().contains("format 8"), "{e}");
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

    use super::super::split::{Incoming, ShardState};
    use crate::shard::KeyRange;
    use bytes::Bytes;

    /// The shard state as the accessors show it.
    fn shard_of(s: &KvStore) -> ShardState {
        ShardState {
            base_groups: s.base_groups(),
            range: s.range(),
            outgoing: s.outgoing(),
            incoming: s.incoming().cloned(),
            children: s.children().to_vec(),
            next_group: s.next_group(),
            retired_into: s.retired_into(),
            taken: s.taken().to_vec(),
        }
    }

    /// Restores `s`'s snapshot into a fresh store of the same base group
    /// count (whose own shard state differs) and checks it is `s` again.
    fn round_trip(s: &KvStore) -> KvStore {
        let img = image(s);
        let mut t = KvStore::new().with_shard(s.base_groups(), KeyRange::EMPTY);
        t.restore(s.applied(), &mut &img[..]).unwrap();
        assert_eq!(shard_of(&t), shard_of(s));
        assert_eq!(t.digest(), s.digest());
        assert_eq!(image(&t), img);
        t
    }

    #[test]
    fn every_shard_field_round_trips_in_every_state() {
        let base = 3;
        let whole = KeyRange::of_base_group(1);
        let at = whole.midpoint().unwrap();
        let upper = KeyRange {
            start: at,
            end: whole.end,
        };
        let mut parent = KvStore::new().with_shard(base, whole);
        let mut n = 0;
        let mut next = || {
            n += 1;
            z(n)
        };
        for (i, k) in keys_in(whole, base, "k", 40).iter().enumerate() {
            parent.apply(next(), &put_key(1, i as u64 + 1, k, "v"));
        }
        parent.apply(next(), &internal(KvOp::AllocateGroup { floor: 3 }));
        round_trip(&parent);
        parent.apply(next(), &internal(split_op(at, 3)));
        assert!(parent.outgoing().is_some());
        round_trip(&parent);

        let mut child = KvStore::new().with_incoming(base, 1, upper);
        let mut m = 0;
        let mut cnext = || {
            m += 1;
            z(m)
        };
        child.apply(cnext(), &put_key(1, 1, b"x", "v"));
        round_trip(&child);
        let frozen = parent.frozen_keys();
        let (first, rest) = frozen.split_at(frozen.len() / 2);
        child.apply(cnext(), &internal(batch_of(&parent, 1, None, first, false)));
        let cursor = child.incoming().and_then(|i| i.cursor.clone());
        assert!(cursor.is_some());
        // A restored child goes on with the next batch exactly like the
        // original.
        let mut restored = round_trip(&child);
        assert!(restored.taken().is_empty());
        let last = internal(batch_of(&parent, 1, cursor, rest, true));
        let zx = cnext();
        assert_eq!(child.apply(zx, &last), restored.apply(zx, &last));
        assert_eq!(child.range(), upper);
        assert_eq!(restored.taken(), &[(1, upper)]);
        assert!(round_trip(&child).has_taken(1, upper));
        parent.apply(next(), &internal(KvOp::FinishMove { child: 3 }));
        parent.apply(
            next(),
            &internal(KvOp::Split {
                at: whole.start + 7,
                child: 4,
                voters: vec![u64::MAX, 0],
                observers: Vec::new(),
            }),
        );
        assert_eq!(parent.children().len(), 2);
        assert_eq!(parent.children()[1].voters, [u64::MAX, 0]);
        round_trip(&parent);
    }

    #[test]
    fn a_format_3_snapshot_restores_into_the_configured_shard() {
        let base = 4;
        let whole = KeyRange::of_base_group(2);
        let mut s = KvStore::new().with_shard(base, whole);
        for (i, k) in keys_in(whole, base, "k", 20).iter().enumerate() {
            s.apply(z(i as u32 + 1), &put_key(1, i as u64 + 1, k, "v"));
        }
        let old = v3_image(&s);
        let mut t = KvStore::new().with_shard(base, whole);
        t.restore(s.applied(), &mut &old[..]).unwrap();
        assert_eq!(pairs_of(&t), pairs_of(&s));
        assert_eq!(t.session_seq(b"", 1), Some(20));
        assert_eq!(shard_of(&t), shard_of(&s));
        // Written again, it is in the current format, equal to the
        // original's.
        assert_eq!(image(&t), image(&s));
        // The default store (one base group) restores a format 3 snapshot
        // of a single-group cluster.
        let mut single = KvStore::new();
        for i in 0..10u32 {
            single.apply(z(i + 1), &put(1, u64::from(i) + 1, &format!("k{i}"), "v"));
        }
        let mut u = KvStore::new();
        u.restore(single.applied(), &mut &v3_image(&single)[..])
            .unwrap();
        assert_eq!(pairs_of(&u), pairs_of(&single));
        // Configured as another group, the keys are not its own: refused.
        let mut other = KvStore::new().with_shard(base, KeyRange::of_base_group(1));
        let e = other.restore(s.applied(), &mut &old[..]).unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        assert!(other.is_empty());
    }

    /// A format 4 snapshot (children without memberships) restores with
    /// empty voter and observer lists, in every state a split goes
    /// through, and is written again in the current format.
    #[test]
    fn a_format_4_snapshot_restores_children_without_memberships() {
        let base = 2;
        let whole = KeyRange::of_base_group(1);
        let at = whole.midpoint().unwrap();
        let upper = KeyRange {
            start: at,
            end: whole.end,
        };
        let lower = KeyRange {
            start: whole.start,
            end: at,
        };
        let mut parent = KvStore::new().with_shard(base, whole);
        let mut n = 0;
        let mut next = || {
            n += 1;
            z(n)
        };
        let keys = [keys_in(lower, base, "k", 15), keys_in(upper, base, "k", 15)].concat();
        for (i, k) in keys.iter().enumerate() {
            parent.apply(next(), &put_key(1, i as u64 + 1, k, "v"));
        }
        // No child yet: format 4 and 5 differ in the version only.
        let old = v4_image(&parent);
        let mut t = KvStore::new().with_shard(base, KeyRange::EMPTY);
        t.restore(parent.applied(), &mut &old[..]).unwrap();
        assert_eq!(image(&t), image(&parent));

        // A split under way, then finished and followed by another.
        parent.apply(next(), &internal(split_op(at, 3)));
        let mut stages = vec![parent.clone()];
        parent.apply(next(), &internal(KvOp::FinishMove { child: 3 }));
        parent.apply(next(), &internal(split_op(whole.start + 9, 4)));
        stages.push(parent.clone());
        // A child partway through taking its range in, with no child of
        // its own: its image has no membership to drop.
        let mut child = KvStore::new().with_incoming(base, 1, upper);
        let frozen = stages[0].frozen_keys();
        child.apply(
            z(1),
            &internal(batch_of(&stages[0], 1, None, &frozen[..5], false)),
        );
        stages.push(child);
        for s in &stages {
            let old = v4_image(s);
            assert_eq!(old[8..12], 4u32.to_le_bytes());
            let mut t = KvStore::new().with_shard(base, KeyRange::EMPTY);
            t.restore(s.applied(), &mut &old[..]).unwrap();
            let without: Vec<Child> = s
                .children()
                .iter()
                .map(|c| Child {
                    voters: Vec::new(),
                    observers: Vec::new(),
                    ..c.clone()
                })
                .collect();
            assert_eq!(
                shard_of(&t),
                ShardState {
                    children: without,
                    ..shard_of(s)
                }
            );
            assert_eq!(pairs_of(&t), pairs_of(s));
            assert_eq!(t.digest(), s.digest());
            // Written again: the current format, and it restores to the
            // same state.
            let again = image(&t);
            assert_eq!(again[8..12], super::SNAPSHOT_VERSION.to_le_bytes());
            round_trip(&t);
        }
        // The restored parent goes on like the original: its next split
        // records the membership it names.
        let mut t = KvStore::new().with_shard(base, KeyRange::EMPTY);
        t.restore(parent.applied(), &mut &v4_image(&parent)[..])
            .unwrap();
        t.apply(next(), &internal(KvOp::FinishMove { child: 4 }));
        let r = t.apply(next(), &internal(split_op(whole.start + 5, 5)));
        assert!(matches!(result(r), KvResult::SplitStarted { child: 5, .. }));
        assert_eq!(t.children()[1].voters, Vec::<u64>::new());
        assert_eq!(
            t.children()[2],
            split_child(
                5,
                KeyRange {
                    start: whole.start + 5,
                    end: whole.start + 9
                }
            )
        );
        round_trip(&t);
    }

    /// Two adjacent base groups of a cluster of `base`, with keys, and
    /// the stores of a merge of the upper (H, group 1) into the lower (G,
    /// group 0) at each step, in this order: H before it retires, H
    /// retiring, G absorbing before any batch, G partway, G done, H
    /// retired (its keys dropped). Each store has its own log's zxids.
    fn merge_stages(base: u32) -> Vec<KvStore> {
        let (g_range, h_range) = (KeyRange::of_base_group(0), KeyRange::of_base_group(1));
        let mut g = KvStore::new().with_shard(base, g_range);
        let mut h = KvStore::new().with_shard(base, h_range);
        let (mut gn, mut hn) = (0, 0);
        for (i, k) in keys_in(g_range, base, "k", 12).iter().enumerate() {
            gn += 1;
            g.apply(z(gn), &put_key(1, i as u64 + 1, k, "g"));
        }
        for (i, k) in keys_in(h_range, base, "k", 14).iter().enumerate() {
            hn += 1;
            h.apply(z(hn), &put_key(1, i as u64 + 1, k, "h"));
        }
        let mut stages = vec![h.clone()];
        hn += 1;
        h.apply(z(hn), &internal(KvOp::Retire { into: 0 }));
        stages.push(h.clone());
        gn += 1;
        let absorb = KvOp::Absorb {
            from: 1,
            range: h_range,
        };
        g.apply(z(gn), &internal(absorb));
        stages.push(g.clone());
        let frozen = h.frozen_keys();
        let (a, b) = frozen.split_at(5);
        gn += 1;
        g.apply(z(gn), &internal(batch_of(&h, 1, None, a, false)));
        assert!(g.incoming().is_some_and(|i| i.cursor.is_some()));
        stages.push(g.clone());
        gn += 1;
        g.apply(
            z(gn),
            &internal(batch_of(&h, 1, a.last().cloned(), b, true)),
        );
        assert_eq!(g.range().end, h_range.end);
        stages.push(g);
        hn += 1;
        h.apply(z(hn), &internal(KvOp::FinishMove { child: 0 }));
        assert!(h.is_empty() && h.retired_into() == Some(0));
        stages.push(h);
        stages
    }

    /// `s` without its record of the ranges it took over: what a snapshot
    /// of format 6 or older restores.
    fn without_taken(s: &KvStore) -> KvStore {
        let mut t = s.clone();
        t.shard.taken.clear();
        t
    }

    /// Every state a merge goes through round trips, a restored store goes
    /// on like the original, every store restores from format 6 and the
    /// stores that are not retired from format 5 too, all without the
    /// record of the range taken over.
    #[test]
    fn every_merge_state_round_trips() {
        let base = 2;
        let stages = merge_stages(base);
        for s in &stages {
            let t = round_trip(s);
            assert_eq!(t.retired_into(), s.retired_into());
            let forgot = without_taken(s);
            let v6 = v6_image(s);
            assert_eq!(v6[8..12], 6u32.to_le_bytes());
            let mut v = KvStore::new().with_shard(base, KeyRange::EMPTY);
            v.restore(s.applied(), &mut &v6[..]).unwrap();
            assert_eq!(shard_of(&v), shard_of(&forgot));
            assert_eq!(image(&v), image(&forgot));
            if s.retired_into().is_none() {
                let old = v5_image(s);
                assert_eq!(old[8..12], 5u32.to_le_bytes());
                let mut u = KvStore::new().with_shard(base, KeyRange::EMPTY);
                u.restore(s.applied(), &mut &old[..]).unwrap();
                assert_eq!(shard_of(&u), shard_of(&forgot));
                assert_eq!(image(&u), image(&forgot));
                // And format 4, which has no children here to strip.
                let older = v4_image(s);
                let mut w = KvStore::new().with_shard(base, KeyRange::EMPTY);
                w.restore(s.applied(), &mut &older[..]).unwrap();
                assert_eq!(image(&w), image(&forgot));
            }
        }
        // Only the absorbing group once done took anything over.
        let h_range = KeyRange::of_base_group(1);
        for (i, s) in stages.iter().enumerate() {
            let expected: &[(u32, KeyRange)] = if i == 4 { &[(1, h_range)] } else { &[] };
            assert_eq!(s.taken(), expected, "stage {i}");
        }
        // The retiring and retired stores write the flag and the group;
        // a flag other than 0 or 1 is refused.
        for (i, s) in stages.iter().enumerate() {
            let img = image(s);
            let at = retired_flag_at(&img);
            if matches!(i, 1 | 5) {
                assert_eq!(img[at..at + 5], [1, 0, 0, 0, 0]);
            } else {
                assert_eq!(img[at], 0);
            }
            let mut bad = img.clone();
            bad[at] = 2;
            let mut t = KvStore::new().with_shard(base, KeyRange::EMPTY);
            let e = t.restore(s.applied(), &mut &bad[..]).unwrap_err();
            assert!(e.to_string().contains("retired flag 2"), "{e}");
        }
        // The absorbing store partway, restored, takes the last batch in
        // exactly like the original.
        let mut g = stages[3].clone();
        let mut t = round_trip(&g);
        let h = &stages[1];
        let cursor = g.incoming().and_then(|i| i.cursor.clone());
        let rest: Vec<(u128, Bytes)> = h
            .frozen_keys()
            .into_iter()
            .filter(|pk| cursor.as_ref().is_some_and(|c| pk > c))
            .collect();
        let last = internal(batch_of(h, 1, cursor, &rest, true));
        let zx = z(100);
        assert_eq!(g.apply(zx, &last), t.apply(zx, &last));
        assert_eq!(image(&g), image(&t));
        assert_eq!(g.range(), stages[4].range());
    }

    /// Merge states no sequence of commands can reach are refused.
    #[test]
    fn inconsistent_merge_states_are_refused() {
        let base = 2;
        let stages = merge_stages(base);
        let (g_range, h_range) = (KeyRange::of_base_group(0), KeyRange::of_base_group(1));
        let refuse = |s: &KvStore, shard: ShardState, what: &str| {
            let mut bad = s.clone();
            bad.shard = shard;
            let img = image(&bad);
            let mut t = KvStore::new().with_shard(base, KeyRange::EMPTY);
            let e = t.restore(bad.applied(), &mut &img[..]).unwrap_err();
            assert!(e.to_string().contains(what), "{what}: {e}");
            assert!(t.is_empty() && t.retired_into().is_none());
        };
        let (retiring, retired) = (&stages[1], &stages[5]);
        let absorbing = &stages[3];
        // A retired group that owns a range, takes one in, or gives its
        // range to another group than the one it retired into.
        refuse(
            retired,
            ShardState {
                range: h_range,
                ..shard_of(retired)
            },
            "retired into group 0 but owns",
        );
        refuse(
            retired,
            ShardState {
                incoming: Some(Incoming {
                    from: 0,
                    range: g_range,
                    cursor: None,
                    moved: 0,
                }),
                ..shard_of(retired)
            },
            "retired into group 0 but takes",
        );
        refuse(
            retiring,
            ShardState {
                outgoing: Some((3, h_range)),
                ..shard_of(retiring)
            },
            "goes to group 3",
        );
        refuse(
            retiring,
            ShardState {
                outgoing: Some((0, KeyRange::EMPTY)),
                ..shard_of(retiring)
            },
            "is empty",
        );
        // Retired, yet holding keys: after FinishMove the group has none.
        refuse(
            retiring,
            ShardState {
                outgoing: None,
                ..shard_of(retiring)
            },
            "outside",
        );
        // Frozen keys without the retirement: the outgoing range is then a
        // split's, which must follow the group's range.
        refuse(
            retiring,
            ShardState {
                retired_into: None,
                ..shard_of(retiring)
            },
            "does not follow",
        );
        // An incoming range beside the group's own that does not adjoin
        // it, or overlaps it.
        for range in [
            KeyRange {
                start: h_range.start + 1,
                end: h_range.end,
            },
            KeyRange {
                start: g_range.end - 1,
                end: h_range.end,
            },
        ] {
            let mut shard = shard_of(absorbing);
            if let Some(inc) = shard.incoming.as_mut() {
                inc.range = range;
                inc.cursor = None;
            }
            refuse(absorbing, shard, "does not adjoin");
        }
        // A merge partway whose cursor is below keys it holds: those
        // cannot have been taken in.
        let mut shard = shard_of(absorbing);
        if let Some(inc) = shard.incoming.as_mut() {
            inc.cursor = Some((h_range.start, Bytes::new()));
        }
        refuse(absorbing, shard, "outside");
        // Retired with a range going out and a split's child recorded: a
        // history, accepted.
        let mut with_child = retiring.clone();
        with_child.shard.children = vec![split_child(
            4,
            KeyRange {
                start: h_range.start + 5,
                end: h_range.end,
            },
        )];
        round_trip(&with_child);
    }

    #[test]
    fn a_snapshot_of_another_base_group_count_is_refused() {
        let mut s = KvStore::new().with_shard(4, KeyRange::of_base_group(0));
        s.apply(z(1), &internal(KvOp::AllocateGroup { floor: 4 }));
        let img = image(&s);
        let mut t = KvStore::new().with_shard(8, KeyRange::of_base_group(0));
        let e = t.restore(s.applied(), &mut &img[..]).unwrap_err();
        assert!(e.to_string().contains("base_groups = 4"), "{e}");
        assert_eq!(t.next_group(), 0, "the store is left as it was");
        KvStore::new()
            .with_shard(4, KeyRange::EMPTY)
            .restore(s.applied(), &mut &img[..])
            .unwrap();
    }

    /// Shard states no sequence of commands can reach are refused, and so
    /// are keys outside every range the group holds.
    #[test]
    fn inconsistent_shard_states_are_refused() {
        let base = 1;
        let whole = KeyRange::of_base_group(0);
        let at = whole.midpoint().unwrap();
        let lower = KeyRange {
            start: whole.start,
            end: at,
        };
        let upper = KeyRange {
            start: at,
            end: whole.end,
        };
        let mut s = KvStore::new();
        let high = keys_in(upper, base, "h", 3);
        for (i, k) in high.iter().enumerate() {
            s.apply(z(i as u32 + 1), &put_key(1, i as u64 + 1, k, "v"));
        }
        let refuse = |shard: ShardState, what: &str| {
            let mut bad = s.clone();
            bad.shard = shard;
            let img = image(&bad);
            let mut t = KvStore::new();
            let e = t.restore(bad.applied(), &mut &img[..]).unwrap_err();
            assert!(e.to_string().contains(what), "{what}: {e}");
            assert!(t.is_empty());
        };
        let fine = shard_of(&s);
        let incoming = Incoming {
            from: 0,
            range: upper,
            cursor: None,
            moved: 0,
        };
        refuse(
            ShardState {
                incoming: Some(incoming.clone()),
                ..fine.clone()
            },
            "does not adjoin",
        );
        refuse(
            ShardState {
                range: KeyRange::EMPTY,
                incoming: Some(incoming.clone()),
                ..fine.clone()
            },
            "outside",
        );
        refuse(
            ShardState {
                range: lower,
                ..fine.clone()
            },
            "outside",
        );
        refuse(
            ShardState {
                range: KeyRange { start: 5, end: 4 },
                ..fine.clone()
            },
            "reversed",
        );
        refuse(
            ShardState {
                range: lower,
                outgoing: Some((
                    2,
                    KeyRange {
                        start: at + 1,
                        end: whole.end,
                    },
                )),
                children: vec![split_child(
                    2,
                    KeyRange {
                        start: at + 1,
                        end: whole.end,
                    },
                )],
                ..fine.clone()
            },
            "does not follow",
        );
        refuse(
            ShardState {
                range: lower,
                outgoing: Some((2, upper)),
                ..fine.clone()
            },
            "last split",
        );
        // Children whose ranges overlap each other and the group's own:
        // the history of a group whose children merged back into it.
        let mut history = s.clone();
        history.shard = ShardState {
            children: vec![split_child(2, upper), split_child(3, upper)],
            ..fine.clone()
        };
        KvStore::new()
            .restore(history.applied(), &mut &image(&history)[..])
            .unwrap();
        // The same children, but the keys are not the group's.
        refuse(
            ShardState {
                children: vec![split_child(2, upper), split_child(3, upper)],
                range: KeyRange { start: 0, end: 1 },
                ..fine.clone()
            },
            "outside",
        );
        refuse(
            ShardState {
                children: vec![
                    split_child(2, upper),
                    split_child(2, KeyRange { start: 1, end: 2 }),
                ],
                range: KeyRange::EMPTY,
                ..fine.clone()
            },
            "group 2 is recorded as a child twice",
        );
        // Memberships apply never records: observers without a voter, a
        // node named twice.
        let with_members = |voters: Vec<u64>, observers: Vec<u64>| ShardState {
            range: lower,
            outgoing: Some((2, upper)),
            children: vec![Child {
                voters,
                observers,
                ..split_child(2, upper)
            }],
            ..fine.clone()
        };
        refuse(with_members(Vec::new(), vec![1]), "no voter");
        refuse(with_members(vec![3, 3], Vec::new()), "node 3 twice");
        refuse(with_members(vec![1, 3], vec![2, 3]), "node 3 twice");
        // A list longer than the bound is refused as it is read.
        refuse(
            with_members(vec![1; MAX_SPLIT_MEMBERS + 1], Vec::new()),
            "voters exceed",
        );
        refuse(
            with_members(vec![1], (2..MAX_SPLIT_MEMBERS as u64 + 3).collect()),
            "observers exceed",
        );
        // Both lists empty: a child recorded before memberships were kept.
        let mut unrecorded = s.clone();
        unrecorded.shard = with_members(Vec::new(), Vec::new());
        let img = image(&unrecorded);
        KvStore::new()
            .restore(unrecorded.applied(), &mut &img[..])
            .unwrap();
        refuse(
            ShardState {
                base_groups: 0,
                ..fine.clone()
            },
            "base_groups",
        );
        // A range recorded as taken over is never empty: it was a range
        // coming in. The same range taken from two groups is a history,
        // accepted.
        for r in [KeyRange { start: 7, end: 7 }, KeyRange { start: 8, end: 7 }] {
            refuse(
                ShardState {
                    taken: vec![(4, upper), (3, r)],
                    ..fine.clone()
                },
                "taken over from group 3 is empty",
            );
        }
        let mut twice = s.clone();
        twice.shard.taken = vec![(4, upper), (5, upper)];
        round_trip(&twice);
        // A cursor below some key: that key cannot have been taken in.
        let p0 = crate::shard::position(&high[0], base);
        let mut low_cursor = incoming.clone();
        low_cursor.cursor = Some((upper.start, Bytes::new()));
        if p0 > upper.start {
            refuse(
                ShardState {
                    range: KeyRange::EMPTY,
                    incoming: Some(low_cursor),
                    ..fine.clone()
                },
                "outside",
            );
        }
        // A flag byte other than 0 or 1.
        let mut img = image(&s);
        let flag = 8 + 4 + 4 * 8 + 4 + 32;
        assert_eq!(img[flag], 0);
        img[flag] = 2;
        let e = KvStore::new()
            .restore(s.applied(), &mut &img[..])
            .unwrap_err();
        assert!(e.to_string().contains("flag"), "{e}");
    }

    /// The absorbing group of [`merge_stages`] once done, with a longer
    /// record of ranges taken over: an earlier one, the merge's, and the
    /// merge's range again from another group (a record may repeat a
    /// range: it is a history).
    fn with_history(base: u32) -> KvStore {
        let mut g = merge_stages(base).swap_remove(4);
        let h_range = KeyRange::of_base_group(1);
        let earlier = KeyRange {
            start: 5,
            end: u128::MAX,
        };
        g.shard.taken = vec![(9, earlier), (1, h_range), (u32::MAX, h_range)];
        g
    }

    /// The record of ranges taken over round trips, in order and entry by
    /// entry, with the encoding the format documents; a format 6 snapshot
    /// of the same store restores with an empty record, which is the case
    /// `has_taken` cannot answer: the restored group owns the range it
    /// took over, yet has no record of taking it.
    #[test]
    fn taken_ranges_round_trip_and_a_format_6_snapshot_restores_none() {
        let base = 2;
        let h_range = KeyRange::of_base_group(1);
        let g = with_history(base);
        let t = round_trip(&g);
        assert_eq!(t.taken(), g.taken());
        assert!(t.has_taken(1, h_range) && t.has_taken(u32::MAX, h_range));
        assert!(!t.has_taken(0, h_range) && !t.has_taken(1, KeyRange::of_base_group(0)));
        // The bytes: the count, then each entry's group and range.
        let img = image(&g);
        let at = taken_at(&img);
        let mut expected = 3u32.to_le_bytes().to_vec();
        for (from, r) in g.taken() {
            expected.extend_from_slice(&from.to_le_bytes());
            expected.extend_from_slice(&r.start.to_le_bytes());
            expected.extend_from_slice(&r.end.to_le_bytes());
        }
        assert_eq!(img[at..at + expected.len()], expected[..]);
        // The pair count follows.
        let pairs = at + expected.len();
        assert_eq!(img[pairs..pairs + 8], (g.len() as u64).to_le_bytes());

        // Format 6: no record, everything else as it was.
        let v6 = v6_image(&g);
        assert_eq!(v6.len(), img.len() - 3 * TAKEN_ENTRY_BYTES - 4);
        let mut u = KvStore::new().with_shard(base, KeyRange::EMPTY);
        u.restore(g.applied(), &mut &v6[..]).unwrap();
        assert!(u.taken().is_empty());
        assert_eq!(shard_of(&u), shard_of(&without_taken(&g)));
        assert_eq!(pairs_of(&u), pairs_of(&g));
        assert!(u.incoming().is_none() && u.range().covers(&h_range));
        assert!(!u.has_taken(1, h_range), "format 6 kept no record");
        // Written again, it is the current format with an empty record.
        let again = image(&u);
        assert_eq!(again[8..12], super::SNAPSHOT_VERSION.to_le_bytes());
        assert_eq!(again[taken_at(&again)..][..4], 0u32.to_le_bytes());
        round_trip(&u);
    }

    /// A record of ranges taken over that no store writes is refused with
    /// an error, never a panic, and the store is left as it was: a count
    /// past the bound, a count that does not match the entries, an empty
    /// or reversed range, and a snapshot cut anywhere in the field.
    #[test]
    fn corrupt_taken_fields_are_refused() {
        use super::super::split::MAX_CHILDREN;
        let base = 2;
        let g = with_history(base);
        let img = image(&g);
        let at = taken_at(&img);
        let end = at + 4 + 3 * TAKEN_ENTRY_BYTES;
        let refused = |bad: &[u8]| -> String {
            let mut t = KvStore::new().with_shard(base, KeyRange::EMPTY);
            let before = image(&t);
            let e = t.restore(g.applied(), &mut &bad[..]).unwrap_err();
            assert_eq!(image(&t), before, "a refused snapshot changes nothing");
            e.to_string()
        };
        let with_count = |count: u32| {
            let mut bad = img.clone();
            bad[at..at + 4].copy_from_slice(&count.to_le_bytes());
            bad
        };
        for count in [MAX_CHILDREN as u32 + 1, u32::MAX] {
            let e = refused(&with_count(count));
            assert!(e.contains("ranges taken over exceed the maximum"), "{e}");
        }
        // One entry more or fewer than written: the rest of the snapshot
        // is read out of step, and something does not fit.
        refused(&with_count(4));
        refused(&with_count(2));
        refused(&with_count(0));
        // The second entry's range: empty (start = end), reversed, or the
        // empty range of a group that owns nothing.
        let range_at = at + 4 + TAKEN_ENTRY_BYTES + 4;
        let h_range = KeyRange::of_base_group(1);
        for (start, end) in [
            (h_range.start, h_range.start),
            (h_range.end, h_range.start),
            (0, 0),
        ] {
            let mut bad = img.clone();
            bad[range_at..range_at + 16].copy_from_slice(&start.to_le_bytes());
            bad[range_at + 16..range_at + 32].copy_from_slice(&end.to_le_bytes());
            let e = refused(&bad);
            assert!(e.contains("taken over from group 1 is empty"), "{e}");
        }
        // Cut anywhere from the count to the last entry's end.
        for cut in at..end {
            refused(&img[..cut]);
        }
        // The image itself restores.
        round_trip(&g);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Stores in each shard state: a base group with a range going out,
        /// a new group partway through taking its range in, every step of
        /// a merge, and a group with a record of several ranges taken
        /// over.
        fn stores() -> Vec<KvStore> {
            let whole = KeyRange::of_base_group(0);
            let at = whole.midpoint().unwrap();
            let lower = KeyRange {
                start: whole.start,
                end: at,
            };
            let upper = KeyRange {
                start: at,
                end: whole.end,
            };
            let mut parent = KvStore::new().with_shard(2, whole);
            let keys = [keys_in(lower, 2, "k", 6), keys_in(upper, 2, "k", 6)].concat();
            for (i, k) in keys.iter().enumerate() {
                parent.apply(z(i as u32 + 1), &put_key(1, i as u64 + 1, k, "v"));
            }
            parent.apply(z(20), &internal(split_op(at, 2)));
            let mut child = KvStore::new().with_incoming(2, 0, upper);
            let frozen = parent.frozen_keys();
            child.apply(
                z(1),
                &internal(batch_of(&parent, 0, None, &frozen[..2], false)),
            );
            let mut all = vec![parent, child];
            all.extend(merge_stages(2));
            all.push(with_history(2));
            all
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]
            /// A damaged or cut snapshot never makes restore panic, and a
            /// refused one leaves the store as it was.
            #[test]
            fn damaged_snapshots_are_refused_without_panic(
                which in any::<prop::sample::Index>(),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                cut in any::<bool>(),
            ) {
                let all = stores();
                let s = &all[which.index(all.len())];
                let mut img = image(s);
                let i = at.index(img.len());
                if cut {
                    img.truncate(i);
                } else {
                    img[i] = byte;
                }
                let mut t = KvStore::new().with_shard(2, KeyRange::EMPTY);
                let before = image(&t);
                match t.restore(s.applied(), &mut &img[..]) {
                    Ok(()) => prop_assert!(!cut),
                    Err(_) => prop_assert_eq!(image(&t), before),
                }
            }

            /// The same, with the damage within the record of ranges taken
            /// over (a byte of it replaced, or the snapshot cut in it): a
            /// snapshot that still restores has only non-empty ranges in
            /// its record, and one of the same length.
            #[test]
            fn damaged_taken_fields_are_refused_without_panic(
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                cut in any::<bool>(),
            ) {
                let s = with_history(2);
                let mut img = image(&s);
                let start = taken_at(&img);
                let len = 4 + s.taken().len() * TAKEN_ENTRY_BYTES;
                let i = start + at.index(len);
                if cut {
                    img.truncate(i);
                } else {
                    img[i] = byte;
                }
                let mut t = KvStore::new().with_shard(2, KeyRange::EMPTY);
                let before = image(&t);
                match t.restore(s.applied(), &mut &img[..]) {
                    Ok(()) => {
                        prop_assert!(!cut);
                        prop_assert_eq!(t.taken().len(), s.taken().len());
                        prop_assert!(t.taken().iter().all(|(_, r)| !r.is_empty()));
                        prop_assert_eq!(pairs_of(&t), pairs_of(&s));
                    }
                    Err(_) => prop_assert_eq!(image(&t), before),
                }
            }
        }
    }
}
