//! The snapshot format of [`KvStore`]: the map's pairs sorted by key, then
//! the session table from the least to the most recently used, behind a
//! magic and a version.
//!
//! Invariants: equal stores write identical bytes (pairs sorted, sessions
//! in recency order, so a restored store evicts exactly like the original);
//! a restore checks everything determinism rests on (the session bounds
//! match this store's, recency order, counters in range, no duplicate key
//! or session, no trailing byte) and replaces the state only once the
//! whole snapshot has been read.

use super::command::put_bytes;
use super::map::ShardedMap;
use super::sessions::{slot_bytes, SessionTable};
use super::{
    pair_hash, KvStore, ASSIGNED_SESSION_BIT, MAX_KEY_BYTES, MAX_PRINCIPAL_BYTES, MAX_VALUE_BYTES,
};
use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::Zxid;
use std::io::{self, Read};

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
}
