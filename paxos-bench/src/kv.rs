//! The reference state machine: a key-value map with put, delete and
//! compare-and-set, deduplicated per client session so that a retried command
//! (after a failover, say) takes effect once.
//!
//! A command is `client id | sequence | op`. A session (client id) has at most
//! one write outstanding at a time and numbers its writes 1, 2, 3, ...; the
//! store remembers the highest sequence applied for every session and the
//! result it gave. A command with that same sequence is a retry: it is
//! answered with the remembered result and not applied again. A lower
//! sequence is a late duplicate of a write the session has moved past: it is
//! refused ([`KvResult::StaleSequence`]) and not applied.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use paxos_core::{StateMachine, Zxid};
use std::collections::{BTreeMap, HashMap};
use std::io;

/// Largest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

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
}

/// A command as it is replicated: an operation inside a client session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvCommand {
    /// The session (client) that issued it.
    pub client: u64,
    /// The client's sequence number; strictly increasing per client.
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
}

/// A malformed command or result encoding.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvCodecError {
    /// The input ended inside a field.
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
    /// Encodes the command into `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
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
        }
    }

    /// Encodes the command into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(32 + self.size_hint());
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
        }
    }

    /// Decodes a command; keys and values are zero-copy slices of `src`.
    pub fn decode(mut src: Bytes) -> Result<KvCommand, KvCodecError> {
        let total = src.len();
        if src.remaining() < 17 {
            return Err(KvCodecError::Truncated(0));
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
            t => return Err(KvCodecError::UnknownTag(t)),
        };
        Ok(KvCommand { client, seq, op })
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
        }
        buf.freeze()
    }

    /// Decodes a result.
    pub fn decode(mut src: Bytes) -> Result<KvResult, KvCodecError> {
        let total = src.len();
        if src.remaining() < 1 {
            return Err(KvCodecError::Truncated(0));
        }
        match src.get_u8() {
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
            3 => {
                if src.remaining() < 8 {
                    return Err(KvCodecError::Truncated(1));
                }
                Ok(KvResult::StaleSequence {
                    last: src.get_u64_le(),
                })
            }
            t => Err(KvCodecError::UnknownTag(t)),
        }
    }
}

/// The replicated key-value map. Cloning it is cheap per entry (keys and
/// values are reference-counted `Bytes`); the node clones it to write a
/// snapshot off its loop.
#[derive(Default, Debug, Clone)]
pub struct KvStore {
    map: BTreeMap<Bytes, Bytes>,
    /// Per client: the highest sequence applied and the encoded result it gave.
    sessions: HashMap<u64, (u64, Bytes)>,
    applied: Zxid,
    /// Order-independent digest of the map: the XOR of a hash of every pair,
    /// kept up to date on every change so replicas can be compared cheaply.
    digest: u64,
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
    /// An empty store.
    pub fn new() -> KvStore {
        KvStore::default()
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
        self.map.is_empty()
    }

    /// A digest of the whole map, equal on two replicas holding equal maps.
    pub fn digest(&self) -> u64 {
        self.digest
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

    /// Iterates over all pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.map.iter()
    }

    fn execute(&mut self, op: KvOp) -> KvResult {
        match op {
            KvOp::Put { key, value } => KvResult::Done(self.insert(key, value)),
            KvOp::Delete { key } => KvResult::Done(self.remove(&key)),
            KvOp::Cas { key, expected, new } => {
                let current = self.map.get(&key).cloned();
                if current == expected {
                    self.insert(key, new);
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
        }
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
        if let Some((seq, result)) = self.sessions.get(&cmd.client) {
            if cmd.seq == *seq {
                // A retry of the command applied last: same answer, no effect.
                return result.clone();
            }
            if cmd.seq < *seq {
                return KvResult::StaleSequence { last: *seq }.to_bytes();
            }
        }
        let result = self.execute(cmd.op).to_bytes();
        self.sessions.insert(cmd.client, (cmd.seq, result.clone()));
        result
    }

    fn applied(&self) -> Zxid {
        self.applied
    }

    fn snapshot(&self, out: &mut dyn io::Write) -> io::Result<()> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.put_u64_le(self.applied.as_u64());
        buf.put_u64_le(self.map.len() as u64);
        for (k, v) in &self.map {
            put_bytes(&mut buf, k);
            put_bytes(&mut buf, v);
            if buf.len() >= 64 * 1024 {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        buf.put_u64_le(self.sessions.len() as u64);
        for (client, (seq, result)) in &self.sessions {
            buf.put_u64_le(*client);
            buf.put_u64_le(*seq);
            put_bytes(&mut buf, result);
            if buf.len() >= 64 * 1024 {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        out.write_all(&buf)
    }

    fn restore(&mut self, zxid: Zxid, input: &mut dyn io::Read) -> io::Result<()> {
        let bad =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("kv snapshot: {what}"));
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
                    "kv snapshot: field too long",
                ));
            }
            let mut v = vec![0u8; len];
            r.read_exact(&mut v)?;
            Ok(Bytes::from(v))
        };
        let applied = Zxid(read_u64(&mut r)?);
        if applied != zxid {
            return Err(bad("zxid in the data differs from the snapshot's"));
        }
        let mut map = BTreeMap::new();
        let pairs = read_u64(&mut r)?;
        for _ in 0..pairs {
            let k = read_field(&mut r, MAX_KEY_BYTES)?;
            let v = read_field(&mut r, MAX_VALUE_BYTES)?;
            map.insert(k, v);
        }
        let mut sessions = HashMap::new();
        let n = read_u64(&mut r)?;
        for _ in 0..n {
            let client = read_u64(&mut r)?;
            let seq = read_u64(&mut r)?;
            let result = read_field(&mut r, MAX_VALUE_BYTES + 16)?;
            sessions.insert(client, (seq, result));
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

    fn put(client: u64, seq: u64, k: &str, v: &str) -> Bytes {
        KvCommand {
            client,
            seq,
            op: KvOp::Put {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::copy_from_slice(v.as_bytes()),
            },
        }
        .to_bytes()
    }

    #[test]
    fn replayed_command_is_answered_but_not_reapplied() {
        let mut s = KvStore::new();
        let z = |n| Zxid::new(Epoch(1), n);
        s.apply(z(1), &put(7, 1, "a", "1"));
        s.apply(z(2), &put(8, 1, "a", "2"));
        // Client 7 retries its first put after a failover: no effect.
        let r = s.apply(z(3), &put(7, 1, "a", "1"));
        assert_eq!(KvResult::decode(r), Ok(KvResult::Done(None)));
        assert_eq!(s.get(b"a").map(|v| &v[..]), Some(&b"2"[..]));
        // Client 7 moves on; a late duplicate of an older write is refused.
        s.apply(z(4), &put(7, 2, "b", "1"));
        s.apply(z(5), &put(7, 3, "c", "1"));
        let r = s.apply(z(6), &put(7, 2, "b", "late"));
        assert_eq!(KvResult::decode(r), Ok(KvResult::StaleSequence { last: 3 }));
        assert_eq!(s.get(b"b").map(|v| &v[..]), Some(&b"1"[..]));
    }

    #[test]
    fn cas_swaps_only_on_match() {
        let mut s = KvStore::new();
        let z = |n| Zxid::new(Epoch(1), n);
        let cas = |seq, expected: Option<&str>, new: &str| {
            KvCommand {
                client: 1,
                seq,
                op: KvOp::Cas {
                    key: Bytes::from_static(b"k"),
                    expected: expected.map(|e| Bytes::copy_from_slice(e.as_bytes())),
                    new: Bytes::copy_from_slice(new.as_bytes()),
                },
            }
            .to_bytes()
        };
        let r1 = KvResult::decode(s.apply(z(1), &cas(1, None, "x"))).unwrap();
        assert_eq!(
            r1,
            KvResult::Cas {
                swapped: true,
                current: None
            }
        );
        let r2 = KvResult::decode(s.apply(z(2), &cas(2, Some("y"), "z"))).unwrap();
        assert_eq!(
            r2,
            KvResult::Cas {
                swapped: false,
                current: Some(Bytes::from_static(b"x"))
            }
        );
        assert_eq!(s.get(b"k").map(|v| &v[..]), Some(&b"x"[..]));
    }

    #[test]
    fn snapshot_round_trips_and_rejects_truncation() {
        let mut s = KvStore::new();
        for i in 1..=100u32 {
            s.apply(
                Zxid::new(Epoch(1), i),
                &put(u64::from(i % 3), u64::from(i), &format!("k{i}"), "v"),
            );
        }
        let mut image = Vec::new();
        s.snapshot(&mut image).unwrap();
        let mut t = KvStore::new();
        t.restore(s.applied(), &mut &image[..]).unwrap();
        assert_eq!(t.len(), 100);
        assert_eq!(t.applied(), s.applied());
        assert_eq!(t.sessions, s.sessions);
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
        let r = s.apply(Zxid::new(Epoch(1), 1), &Bytes::from_static(b"\x01\x02"));
        assert_eq!(&r[..], &[MALFORMED]);
        assert!(s.is_empty());
    }
}
