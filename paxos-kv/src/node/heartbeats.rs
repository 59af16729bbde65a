//! Heartbeats coalesced per node pair (many groups only).
//!
//! Every awake group's leader heartbeats each follower every heartbeat
//! interval, and each follower answers. As envelopes those are 46 and 38
//! bytes (a 26-byte header naming group, sender and receiver, which the
//! connection already says) plus the batch's 5 bytes of framing: with a
//! thousand awake groups, about 300 KB/s on each link, more than a lossy
//! path's congestion window lets through (measured in the chaos suite's
//! `lossy-links` with 1 000 groups: ~160 KB/s at 5% loss and 50 ms).
//!
//! A node's heartbeats and acknowledgements to one peer in one turn go out
//! instead as one inner frame of its batch: `TAG_HEARTBEATS | entries`,
//! each entry `kind (u8) | group | epoch | round [| commit]`, the numbers
//! as LEB128 varints (commit only in a heartbeat): 6 to 20 bytes an entry.
//! The receiver turns each entry back into the envelope it stands for,
//! with the authenticated peer as sender, and hands it to its group like
//! any other: the kernel sees the same messages, only the wire is smaller.

use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::{Epoch, Message, Zxid};

/// Tag of an inner frame of coalesced heartbeats.
pub(super) const TAG_HEARTBEATS: u8 = 5;

const KIND_HEARTBEAT: u8 = 0;
const KIND_ACK: u8 = 1;

/// Bytes of a heartbeats frame after which the host sends it (the batch
/// bound applies to the frame as a whole).
pub(super) const FLUSH_BYTES: usize = 256 * 1024;

/// A malformed heartbeats frame (from a peer: never trusted).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum HeartbeatsError {
    /// An entry ends before its last field.
    #[error("entry {entry} is cut short")]
    Truncated {
        /// Index of the entry.
        entry: usize,
    },
    /// A varint runs over ten bytes or past 64 bits.
    #[error("entry {entry}: a number is longer than 64 bits")]
    Overlong {
        /// Index of the entry.
        entry: usize,
    },
    /// The entry's kind is neither a heartbeat nor an acknowledgement.
    #[error("entry {entry}: unknown kind {kind}")]
    UnknownKind {
        /// Index of the entry.
        entry: usize,
        /// The kind byte.
        kind: u8,
    },
    /// An epoch over 32 bits.
    #[error("entry {entry}: epoch {epoch} out of range")]
    EpochOutOfRange {
        /// Index of the entry.
        entry: usize,
        /// The value sent.
        epoch: u64,
    },
}

/// The heartbeats and acknowledgements bound for one peer, encoded as they
/// come (no allocation per message once the buffer has grown).
#[derive(Default)]
pub(super) struct HeartbeatBatch {
    buf: BytesMut,
}

impl HeartbeatBatch {
    /// Appends `msg` of `group` if it is a heartbeat or an
    /// acknowledgement; returns whether it was taken.
    pub(super) fn push(&mut self, group: u64, msg: &Message) -> bool {
        let (kind, epoch, round, commit) = match msg {
            Message::Heartbeat {
                epoch,
                commit,
                round,
            } => (KIND_HEARTBEAT, epoch, *round, Some(commit)),
            Message::HeartbeatAck { epoch, round } => (KIND_ACK, epoch, *round, None),
            _ => return false,
        };
        if self.buf.is_empty() {
            self.buf.put_u8(TAG_HEARTBEATS);
        }
        self.buf.put_u8(kind);
        put_varint(&mut self.buf, group);
        put_varint(&mut self.buf, u64::from(epoch.0));
        put_varint(&mut self.buf, round);
        if let Some(commit) = commit {
            put_varint(&mut self.buf, commit.0);
        }
        true
    }

    /// Bytes encoded so far.
    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The frame to send (empty if nothing was pushed); the batch is empty
    /// again afterwards.
    pub(super) fn take(&mut self) -> Option<Bytes> {
        (!self.buf.is_empty()).then(|| self.buf.split().freeze())
    }
}

/// The entries of a heartbeats frame's body (after the tag), as (group,
/// message) pairs, all checked before any is returned.
pub(super) fn decode(mut body: &[u8]) -> Result<Vec<(u64, Message)>, HeartbeatsError> {
    // Each entry takes at least four bytes: a bound on the count.
    let mut out = Vec::with_capacity(body.len() / 4);
    // Bounded: every entry consumes at least one byte.
    while !body.is_empty() {
        let entry = out.len();
        let kind = body[0];
        body = &body[1..];
        let mut next = || take_varint(&mut body, entry);
        let group = next()?;
        let epoch = next()?;
        let round = next()?;
        let epoch = u32::try_from(epoch)
            .map(Epoch)
            .map_err(|_| HeartbeatsError::EpochOutOfRange { entry, epoch })?;
        let msg = match kind {
            KIND_HEARTBEAT => Message::Heartbeat {
                epoch,
                commit: Zxid(next()?),
                round,
            },
            KIND_ACK => Message::HeartbeatAck { epoch, round },
            kind => return Err(HeartbeatsError::UnknownKind { entry, kind }),
        };
        out.push((group, msg));
    }
    Ok(out)
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn take_varint(body: &mut &[u8], entry: usize) -> Result<u64, HeartbeatsError> {
    let mut v = 0u64;
    // At most ten bytes carry 64 bits.
    for i in 0..10 {
        let Some((&b, rest)) = body.split_first() else {
            return Err(HeartbeatsError::Truncated { entry });
        };
        *body = rest;
        let bits = u64::from(b & 0x7f);
        if i == 9 && bits > 1 {
            return Err(HeartbeatsError::Overlong { entry });
        }
        v |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(HeartbeatsError::Overlong { entry })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(msgs: &[(u64, Message)]) -> Vec<(u64, Message)> {
        let mut batch = HeartbeatBatch::default();
        for (g, m) in msgs {
            assert!(batch.push(*g, m));
        }
        let frame = batch.take().expect("a frame");
        assert_eq!(frame[0], TAG_HEARTBEATS);
        assert!(batch.take().is_none(), "taken: empty again");
        decode(&frame[1..]).expect("decodes")
    }

    #[test]
    fn heartbeats_and_acks_come_back_as_sent_and_other_messages_are_not_taken() {
        let msgs = vec![
            (
                0,
                Message::Heartbeat {
                    epoch: Epoch(3),
                    commit: Zxid::new(Epoch(3), 17),
                    round: 9,
                },
            ),
            (
                9_999,
                Message::HeartbeatAck {
                    epoch: Epoch(u32::MAX),
                    round: u64::MAX,
                },
            ),
            (
                u64::MAX,
                Message::Heartbeat {
                    epoch: Epoch(0),
                    commit: Zxid(u64::MAX),
                    round: 0,
                },
            ),
        ];
        assert_eq!(round_trip(&msgs), msgs);
        let mut batch = HeartbeatBatch::default();
        assert!(!batch.push(
            1,
            &Message::Commit {
                epoch: Epoch(1),
                commit: Zxid::new(Epoch(1), 1)
            }
        ));
        assert!(batch.take().is_none());
    }

    #[test]
    fn an_entry_is_several_times_smaller_than_its_envelope() {
        let mut batch = HeartbeatBatch::default();
        let hb = Message::Heartbeat {
            epoch: Epoch(2),
            commit: Zxid::new(Epoch(2), 40_000),
            round: 1_000_000,
        };
        batch.push(4_000, &hb);
        let envelope = paxos_core::Codec::encoded_len(&paxos_core::Envelope {
            group: paxos_core::GroupId(4_000),
            from: paxos_core::NodeId(1),
            to: paxos_core::NodeId(2),
            msg: hb,
        });
        // One tag byte, then the entry.
        let entry = batch.len() - 1;
        assert!(
            entry * 3 <= envelope,
            "entry {entry} B, envelope {envelope} B"
        );
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_entry_named() {
        assert_eq!(decode(&[]), Ok(vec![]));
        assert_eq!(
            decode(&[KIND_ACK, 1, 2]),
            Err(HeartbeatsError::Truncated { entry: 0 })
        );
        assert_eq!(
            decode(&[KIND_ACK, 1, 2, 3, 7, 0, 0, 0]),
            Err(HeartbeatsError::UnknownKind { entry: 1, kind: 7 })
        );
        let mut overlong = vec![KIND_ACK];
        overlong.extend([0xff; 10]);
        assert_eq!(
            decode(&overlong),
            Err(HeartbeatsError::Overlong { entry: 0 })
        );
        // 2^32 as an epoch.
        assert_eq!(
            decode(&[KIND_ACK, 0, 0x80, 0x80, 0x80, 0x80, 0x10, 0]),
            Err(HeartbeatsError::EpochOutOfRange {
                entry: 0,
                epoch: 1 << 32
            })
        );
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(e, c, r)| Message::Heartbeat {
                epoch: Epoch(e),
                commit: Zxid(c),
                round: r,
            }),
            (any::<u32>(), any::<u64>()).prop_map(|(e, r)| Message::HeartbeatAck {
                epoch: Epoch(e),
                round: r
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The CI twin of a fuzz target over `decode`: any bytes give
        /// entries or an error, never a panic; and whatever was encoded
        /// comes back.
        #[test]
        fn any_body_decodes_or_is_refused(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&body);
        }

        #[test]
        fn encoded_batches_round_trip(
            msgs in proptest::collection::vec((any::<u64>(), message()), 1..64)
        ) {
            prop_assert_eq!(round_trip(&msgs), msgs);
        }
    }
}
