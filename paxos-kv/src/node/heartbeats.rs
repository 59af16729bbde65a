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
//! instead as one inner frame of its batch (`TAG_HEARTBEATS`), its numbers
//! LEB128 varints, in two forms:
//!
//! - In full, `kind (u8) | group | epoch | round [| commit]` (commit only in
//!   a heartbeat): 6 to 20 bytes.
//! - As the next of the one sent before: a heartbeat of the same epoch and
//!   commit point as the previous one to that peer for that group, whose
//!   round is one more (the steady state of an awake group without
//!   writes), or an acknowledgement likewise. These go in runs,
//!   `kind | count | (group gap, low byte of the round) * count`, the groups
//!   ascending, each as its distance from the one before: about 2 bytes a
//!   group.
//!
//! The receiver keeps, per peer and hosted group, the last heartbeat and
//! acknowledgement it took, and turns a "next" back into the message it
//! stands for: that one with the round one more. It does so only if the
//! low byte matches; otherwise (a frame lost with a full queue or a broken
//! connection, a restarted receiver) it drops the entry and asks the
//! sender, in its own next frame, for the group's next one in full
//! (`ASK_FULL | kind | group`), which the sender honours by forgetting
//! what it sent. A rebuilt message carries the epoch and commit point of
//! one the peer did send (a commit point, once true, stays true) and a
//! round matched by its low byte: it claims nothing the peer did not say,
//! and at worst it is late, which the protocol tolerates. The kernel sees
//! the same messages, only the wire is smaller.

use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::{Epoch, Message, Zxid};

/// Tag of an inner frame of coalesced heartbeats.
pub(super) const TAG_HEARTBEATS: u8 = 5;

const KIND_HEARTBEAT: u8 = 0;
const KIND_ACK: u8 = 1;
const KIND_HEARTBEAT_RUN: u8 = 2;
const KIND_ACK_RUN: u8 = 3;
const KIND_ASK_FULL: u8 = 4;

/// Bytes of a heartbeats frame after which the host sends it (the batch
/// bound applies to the frame as a whole).
pub(super) const FLUSH_BYTES: usize = 256 * 1024;

/// Which of the two messages an entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Beat {
    /// A leader's heartbeat.
    Heartbeat,
    /// A follower's acknowledgement of one.
    Ack,
}

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
    /// The entry's kind is none of those above.
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
    /// A run's group gaps add up past the largest group id.
    #[error("entry {entry}: group id past 2^64")]
    GroupOverflow {
        /// Index of the entry.
        entry: usize,
    },
}

/// Groups past this id are not remembered (their heartbeats always go in
/// full): the shared log's own bound on a node's groups.
const MAX_REMEMBERED_GROUP: u64 = 1 << 16;

/// Per-group slots indexed by group id: every heartbeat and
/// acknowledgement looks its group up here on both sides, and a node's
/// groups are numbered from 0, so a vector (no hashing) serves. It grows
/// to the largest group stored, at most [`MAX_REMEMBERED_GROUP`]; the
/// receiver stores only groups it hosts.
struct ByGroup<V> {
    slots: Vec<Option<V>>,
    len: usize,
}

impl<V> Default for ByGroup<V> {
    fn default() -> Self {
        ByGroup {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<V> ByGroup<V> {
    fn index(group: u64) -> Option<usize> {
        if group >= MAX_REMEMBERED_GROUP {
            return None;
        }
        usize::try_from(group).ok()
    }

    /// Stores `v` for `group` (nothing past the bound); returns what was
    /// there.
    fn insert(&mut self, group: u64, v: V) -> Option<V> {
        let i = Self::index(group)?;
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        let old = self.slots[i].replace(v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    fn get_mut(&mut self, group: u64) -> Option<&mut V> {
        self.slots.get_mut(Self::index(group)?)?.as_mut()
    }

    fn remove(&mut self, group: u64) -> Option<V> {
        let old = self.slots.get_mut(Self::index(group)?)?.take();
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    fn contains_key(&self, group: u64) -> bool {
        Self::index(group)
            .and_then(|i| self.slots.get(i))
            .is_some_and(Option::is_some)
    }
}

/// The last heartbeat (epoch, round, commit) and acknowledgement (epoch,
/// round) for each group, sent to or taken from one peer.
#[derive(Default)]
pub(super) struct Memory {
    heartbeats: ByGroup<(Epoch, u64, Zxid)>,
    acks: ByGroup<(Epoch, u64)>,
}

impl Memory {
    fn forget(&mut self, beat: Beat, group: u64) {
        match beat {
            Beat::Heartbeat => {
                self.heartbeats.remove(group);
            }
            Beat::Ack => {
                self.acks.remove(group);
            }
        }
    }
}

/// The heartbeats and acknowledgements bound for one peer, encoded as they
/// come (no allocation per message once the buffers have grown), and what
/// was last sent of each group.
#[derive(Default)]
pub(super) struct HeartbeatBatch {
    /// The tag, full entries and requests for full entries, in order.
    buf: BytesMut,
    /// (group, round) of the heartbeats and acknowledgements that follow
    /// the last sent of their group; encoded as runs when taken.
    next_heartbeats: Vec<(u64, u64)>,
    next_acks: Vec<(u64, u64)>,
    sent: Memory,
}

impl HeartbeatBatch {
    /// Appends `msg` of `group` if it is a heartbeat or an
    /// acknowledgement; returns whether it was taken.
    pub(super) fn push(&mut self, group: u64, msg: &Message) -> bool {
        match *msg {
            Message::Heartbeat {
                epoch,
                commit,
                round,
            } => {
                let last = self.sent.heartbeats.insert(group, (epoch, round, commit));
                if last.is_some_and(|(e, r, c)| {
                    e == epoch && c == commit && r.checked_add(1) == Some(round)
                }) {
                    self.next_heartbeats.push((group, round));
                } else {
                    self.put_full(KIND_HEARTBEAT, group, epoch, round);
                    put_varint(&mut self.buf, commit.0);
                }
            }
            Message::HeartbeatAck { epoch, round } => {
                let last = self.sent.acks.insert(group, (epoch, round));
                if last.is_some_and(|(e, r)| e == epoch && r.checked_add(1) == Some(round)) {
                    self.next_acks.push((group, round));
                } else {
                    self.put_full(KIND_ACK, group, epoch, round);
                }
            }
            _ => return false,
        }
        true
    }

    fn put_full(&mut self, kind: u8, group: u64, epoch: Epoch, round: u64) {
        self.tag();
        self.buf.put_u8(kind);
        put_varint(&mut self.buf, group);
        put_varint(&mut self.buf, u64::from(epoch.0));
        put_varint(&mut self.buf, round);
    }

    fn tag(&mut self) {
        if self.buf.is_empty() {
            self.buf.put_u8(TAG_HEARTBEATS);
        }
    }

    /// Asks the peer to send `group`'s next `beat` in full (ours could not
    /// be rebuilt from what we took before).
    pub(super) fn ask_full(&mut self, beat: Beat, group: u64) {
        self.tag();
        self.buf.put_u8(KIND_ASK_FULL);
        self.buf.put_u8(match beat {
            Beat::Heartbeat => KIND_HEARTBEAT,
            Beat::Ack => KIND_ACK,
        });
        put_varint(&mut self.buf, group);
    }

    /// The peer asked for `group`'s next `beat` in full.
    pub(super) fn forget(&mut self, beat: Beat, group: u64) {
        self.sent.forget(beat, group);
    }

    /// Bytes encoded so far (the runs counted at their usual 2 bytes an
    /// entry).
    pub(super) fn len(&self) -> usize {
        self.buf.len() + 2 * (self.next_heartbeats.len() + self.next_acks.len())
    }

    /// The frame to send (`None` if nothing was pushed); the batch is
    /// empty again afterwards (what was sent is remembered).
    pub(super) fn take(&mut self) -> Option<Bytes> {
        if self.next_heartbeats.is_empty() && self.next_acks.is_empty() {
            return (!self.buf.is_empty()).then(|| self.buf.split().freeze());
        }
        self.tag();
        put_run(&mut self.buf, KIND_HEARTBEAT_RUN, &mut self.next_heartbeats);
        put_run(&mut self.buf, KIND_ACK_RUN, &mut self.next_acks);
        Some(self.buf.split().freeze())
    }
}

/// What a heartbeats frame from a peer amounts to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Decoded {
    /// The messages, as (group, message), in the frame's order.
    pub(super) messages: Vec<(u64, Message)>,
    /// Entries that could not be rebuilt: ask the peer for these in full.
    pub(super) ask_full: Vec<(Beat, u64)>,
    /// The peer asks for these in full: forget what was sent of them.
    pub(super) forget: Vec<(Beat, u64)>,
}

/// One parsed entry, before the receiver's memory is consulted.
enum Entry {
    Full(u64, Message),
    Next(Beat, u64, u8),
    AskFull(Beat, u64),
}

/// Decodes a heartbeats frame's body (after the tag) from a peer whose
/// earlier entries `memory` holds, and updates it. Only groups `hosted`
/// says this node hosts are remembered (what the peer can make this node
/// keep is bounded by the groups it hosts); the frame is checked whole
/// before `memory` changes.
pub(super) fn decode(
    body: &[u8],
    memory: &mut Memory,
    hosted: impl Fn(u64) -> bool,
) -> Result<Decoded, HeartbeatsError> {
    let entries = parse(body)?;
    let mut out = Decoded {
        messages: Vec::with_capacity(entries.len()),
        ..Decoded::default()
    };
    for entry in entries {
        match entry {
            Entry::Full(group, msg) => {
                if hosted(group) {
                    match msg {
                        Message::Heartbeat {
                            epoch,
                            commit,
                            round,
                        } => {
                            memory.heartbeats.insert(group, (epoch, round, commit));
                        }
                        Message::HeartbeatAck { epoch, round } => {
                            memory.acks.insert(group, (epoch, round));
                        }
                        _ => {}
                    }
                }
                out.messages.push((group, msg));
            }
            Entry::Next(beat, group, low) => {
                let rebuilt = match beat {
                    Beat::Heartbeat => memory.heartbeats.get_mut(group).and_then(|m| {
                        let round = m.1.checked_add(1).filter(|r| *r as u8 == low)?;
                        m.1 = round;
                        Some(Message::Heartbeat {
                            epoch: m.0,
                            commit: m.2,
                            round,
                        })
                    }),
                    Beat::Ack => memory.acks.get_mut(group).and_then(|m| {
                        let round = m.1.checked_add(1).filter(|r| *r as u8 == low)?;
                        m.1 = round;
                        Some(Message::HeartbeatAck { epoch: m.0, round })
                    }),
                };
                match rebuilt {
                    Some(msg) => out.messages.push((group, msg)),
                    None if hosted(group) => out.ask_full.push((beat, group)),
                    None => {}
                }
            }
            Entry::AskFull(beat, group) => out.forget.push((beat, group)),
        }
    }
    Ok(out)
}

fn parse(mut body: &[u8]) -> Result<Vec<Entry>, HeartbeatsError> {
    // Each entry takes at least two bytes: a bound on the count.
    let mut out = Vec::with_capacity(body.len() / 2);
    // Bounded: every entry, and every element of a run, consumes at least
    // one byte.
    while let Some((&kind, rest)) = body.split_first() {
        body = rest;
        let entry = out.len();
        match kind {
            KIND_HEARTBEAT | KIND_ACK => {
                let group = take_varint(&mut body, entry)?;
                let epoch = take_varint(&mut body, entry)?;
                let round = take_varint(&mut body, entry)?;
                let epoch = u32::try_from(epoch)
                    .map(Epoch)
                    .map_err(|_| HeartbeatsError::EpochOutOfRange { entry, epoch })?;
                let msg = if kind == KIND_HEARTBEAT {
                    Message::Heartbeat {
                        epoch,
                        commit: Zxid(take_varint(&mut body, entry)?),
                        round,
                    }
                } else {
                    Message::HeartbeatAck { epoch, round }
                };
                out.push(Entry::Full(group, msg));
            }
            KIND_HEARTBEAT_RUN | KIND_ACK_RUN => {
                let beat = if kind == KIND_HEARTBEAT_RUN {
                    Beat::Heartbeat
                } else {
                    Beat::Ack
                };
                let count = take_varint(&mut body, entry)?;
                let mut group = 0u64;
                for i in 0..count {
                    let entry = entry + i as usize;
                    let gap = take_varint(&mut body, entry)?;
                    let Some((&low, rest)) = body.split_first() else {
                        return Err(HeartbeatsError::Truncated { entry });
                    };
                    body = rest;
                    group = group
                        .checked_add(gap)
                        .ok_or(HeartbeatsError::GroupOverflow { entry })?;
                    out.push(Entry::Next(beat, group, low));
                }
            }
            KIND_ASK_FULL => {
                let beat = match body.split_first() {
                    None => return Err(HeartbeatsError::Truncated { entry }),
                    Some((&KIND_HEARTBEAT, rest)) => {
                        body = rest;
                        Beat::Heartbeat
                    }
                    Some((&KIND_ACK, rest)) => {
                        body = rest;
                        Beat::Ack
                    }
                    Some((&kind, _)) => return Err(HeartbeatsError::UnknownKind { entry, kind }),
                };
                out.push(Entry::AskFull(beat, take_varint(&mut body, entry)?));
            }
            kind => return Err(HeartbeatsError::UnknownKind { entry, kind }),
        }
    }
    Ok(out)
}

/// Encodes `run` (group, round) as a run entry of `kind`, groups
/// ascending, and empties it (keeping its capacity); nothing if empty.
fn put_run(buf: &mut BytesMut, kind: u8, run: &mut Vec<(u64, u64)>) {
    if run.is_empty() {
        return;
    }
    // Stable: a group twice in one turn keeps its order.
    if !run.is_sorted_by_key(|&(g, _)| g) {
        run.sort_by_key(|&(g, _)| g);
    }
    buf.put_u8(kind);
    put_varint(buf, run.len() as u64);
    let mut prev = 0;
    for &(group, round) in run.iter() {
        put_varint(buf, group - prev);
        buf.put_u8(round as u8);
        prev = group;
    }
    run.clear();
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
    use std::collections::HashMap;

    fn hb(epoch: u32, round: u64, commit: u64) -> Message {
        Message::Heartbeat {
            epoch: Epoch(epoch),
            commit: Zxid(commit),
            round,
        }
    }

    fn ack(epoch: u32, round: u64) -> Message {
        Message::HeartbeatAck {
            epoch: Epoch(epoch),
            round,
        }
    }

    /// One turn's messages through `batch` and the receiver's `memory`.
    fn turn(batch: &mut HeartbeatBatch, memory: &mut Memory, msgs: &[(u64, Message)]) -> Decoded {
        for (g, m) in msgs {
            assert!(batch.push(*g, m));
        }
        let frame = batch.take().expect("a frame");
        assert_eq!(frame[0], TAG_HEARTBEATS);
        assert!(batch.take().is_none(), "taken: empty again");
        decode(&frame[1..], memory, |_| true).expect("decodes")
    }

    /// The messages of a frame as decoded, grouped by group in the order
    /// they came (a frame puts full entries before runs).
    fn by_group(msgs: &[(u64, Message)]) -> Vec<(u64, Message)> {
        let mut v = msgs.to_vec();
        v.sort_by_key(|(g, _)| *g);
        v
    }

    #[test]
    fn heartbeats_and_acks_come_back_as_sent_and_other_messages_are_not_taken() {
        let msgs = vec![
            (0, hb(3, 9, Zxid::new(Epoch(3), 17).0)),
            (9_999, ack(u32::MAX, u64::MAX)),
            (u64::MAX, hb(0, 0, u64::MAX)),
        ];
        let mut memory = Memory::default();
        let got = turn(&mut HeartbeatBatch::default(), &mut memory, &msgs);
        assert_eq!(got.messages, msgs);
        assert!(got.ask_full.is_empty() && got.forget.is_empty());
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
        let hb = hb(2, 1_000_000, Zxid::new(Epoch(2), 40_000).0);
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
    fn an_idle_group_s_next_heartbeat_and_ack_take_about_two_bytes_each() {
        let (mut leader, mut follower) = (HeartbeatBatch::default(), HeartbeatBatch::default());
        let (mut at_follower, mut at_leader) = (Memory::default(), Memory::default());
        let commit = Zxid::new(Epoch(7), 123_456).0;
        let groups: Vec<u64> = (0..1_000).map(|g| g * 3).collect();
        let mut full_bytes = 0;
        for round in 41..45 {
            let beats: Vec<_> = groups.iter().map(|&g| (g, hb(7, round, commit))).collect();
            let acks: Vec<_> = groups.iter().map(|&g| (g, ack(7, round))).collect();
            for (g, m) in &beats {
                leader.push(*g, m);
            }
            for (g, m) in &acks {
                follower.push(*g, m);
            }
            let (hb_frame, ack_frame) = (leader.take().unwrap(), follower.take().unwrap());
            let bytes = hb_frame.len() + ack_frame.len();
            let got = decode(&hb_frame[1..], &mut at_follower, |_| true).unwrap();
            assert_eq!(by_group(&got.messages), beats, "round {round}");
            let got = decode(&ack_frame[1..], &mut at_leader, |_| true).unwrap();
            assert_eq!(by_group(&got.messages), acks, "round {round}");
            if round == 41 {
                full_bytes = bytes;
            } else {
                // A group gap of 3 and the round's low byte, for each of
                // the two messages, and a few bytes of framing.
                assert!(
                    bytes <= 2 * 2 * groups.len() + 16,
                    "round {round}: {bytes} B"
                );
            }
        }
        assert!(full_bytes >= 5 * 2 * groups.len(), "full: {full_bytes} B");
    }

    #[test]
    fn a_changed_commit_point_or_epoch_or_a_skipped_round_goes_in_full() {
        let mut batch = HeartbeatBatch::default();
        let mut memory = Memory::default();
        turn(&mut batch, &mut memory, &[(5, hb(1, 1, 10))]);
        for (msg, full) in [
            (hb(1, 2, 10), false),
            (hb(1, 3, 11), true),
            (hb(2, 4, 11), true),
            (hb(2, 6, 11), true),
            (hb(2, 7, 11), false),
        ] {
            batch.push(5, &msg);
            let was_full = batch.buf.len() > 1;
            assert_eq!(was_full, full, "{msg:?}");
            let frame = batch.take().unwrap();
            let got = decode(&frame[1..], &mut memory, |_| true).unwrap();
            assert_eq!(got.messages, vec![(5, msg)]);
        }
    }

    #[test]
    fn a_lost_frame_gets_no_message_made_up_and_the_sender_is_asked_for_a_full_one() {
        let mut batch = HeartbeatBatch::default();
        let mut memory = Memory::default();
        turn(&mut batch, &mut memory, &[(9, hb(3, 1, 50))]);
        // Round 2 leaves as a "next" and is lost (a full queue).
        batch.push(9, &hb(3, 2, 50));
        let _lost = batch.take().unwrap();
        // Round 3 is a "next" of round 2, which the receiver never took:
        // it must not be taken as round 2.
        batch.push(9, &hb(3, 3, 50));
        let frame = batch.take().unwrap();
        let got = decode(&frame[1..], &mut memory, |_| true).unwrap();
        assert!(got.messages.is_empty(), "{:?}", got.messages);
        assert_eq!(got.ask_full, vec![(Beat::Heartbeat, 9)]);
        // The request travels back in the receiver's own frame.
        let mut reply = HeartbeatBatch::default();
        for (beat, g) in got.ask_full {
            reply.ask_full(beat, g);
        }
        let frame = reply.take().unwrap();
        let asked = decode(&frame[1..], &mut Memory::default(), |_| true).unwrap();
        assert_eq!(asked.forget, vec![(Beat::Heartbeat, 9)]);
        for (beat, g) in asked.forget {
            batch.forget(beat, g);
        }
        let got = turn(&mut batch, &mut memory, &[(9, hb(3, 4, 50))]);
        assert_eq!(got.messages, vec![(9, hb(3, 4, 50))]);
        // And the one after is a "next" again.
        let got = turn(&mut batch, &mut memory, &[(9, hb(3, 5, 50))]);
        assert_eq!(got.messages, vec![(9, hb(3, 5, 50))]);
        assert!(got.ask_full.is_empty());
    }

    #[test]
    fn a_peer_cannot_make_the_receiver_remember_groups_it_does_not_host() {
        let mut batch = HeartbeatBatch::default();
        let mut memory = Memory::default();
        for g in 0..100 {
            batch.push(g, &hb(1, 1, 1));
        }
        let frame = batch.take().unwrap();
        let got = decode(&frame[1..], &mut memory, |g| g < 10).unwrap();
        // Passed on (the host drops what it does not host), not kept.
        assert_eq!(got.messages.len(), 100);
        assert_eq!(memory.heartbeats.len(), 10);
        for g in 0..100 {
            batch.push(g, &hb(1, 2, 1));
        }
        let frame = batch.take().unwrap();
        let got = decode(&frame[1..], &mut memory, |g| g < 10).unwrap();
        assert_eq!(got.messages.len(), 10);
        assert!(got.ask_full.is_empty(), "no request for unhosted groups");
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_entry_named() {
        let mut m = Memory::default();
        let mut decode = |body: &[u8]| decode(body, &mut m, |_| true).map(|d| d.messages);
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
        // A run of three with two elements.
        assert_eq!(
            decode(&[KIND_ACK_RUN, 3, 1, 0, 1, 0]),
            Err(HeartbeatsError::Truncated { entry: 2 })
        );
        // Gaps past 2^64.
        let mut over = vec![KIND_HEARTBEAT_RUN, 2];
        over.extend([
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0,
        ]);
        over.extend([2, 0]);
        assert_eq!(
            decode(&over),
            Err(HeartbeatsError::GroupOverflow { entry: 1 })
        );
        assert_eq!(
            decode(&[KIND_ASK_FULL, 9, 0]),
            Err(HeartbeatsError::UnknownKind { entry: 0, kind: 9 })
        );
    }

    #[test]
    fn a_malformed_frame_changes_nothing_remembered() {
        let mut memory = Memory::default();
        let mut batch = HeartbeatBatch::default();
        turn(&mut batch, &mut memory, &[(1, hb(1, 1, 1))]);
        // A valid full entry for group 2, then garbage.
        let mut body = vec![KIND_HEARTBEAT, 2, 1, 1, 1];
        body.push(99);
        assert!(decode(&body, &mut memory, |_| true).is_err());
        assert!(!memory.heartbeats.contains_key(2));
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(e, c, r)| hb(e, r, c)),
            (any::<u32>(), any::<u64>()).prop_map(|(e, r)| ack(e, r)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes give entries or an error, never a panic, whatever
        /// the receiver remembers.
        #[test]
        fn any_body_decodes_or_is_refused(
            body in proptest::collection::vec(any::<u8>(), 0..256),
            known in proptest::collection::vec((0u64..8, any::<u32>(), any::<u64>()), 0..8),
        ) {
            let mut memory = Memory::default();
            for (g, e, r) in known {
                memory.heartbeats.insert(g, (Epoch(e), r, Zxid(r)));
                memory.acks.insert(g, (Epoch(e), r));
            }
            let _ = decode(&body, &mut memory, |g| g < 8);
        }

        #[test]
        fn encoded_batches_round_trip(
            msgs in proptest::collection::vec((any::<u64>(), message()), 1..64)
        ) {
            // A fresh pair: every entry is a group's first, so in full.
            let got = turn(&mut HeartbeatBatch::default(), &mut Memory::default(), &msgs);
            prop_assert_eq!(got.messages, msgs);
        }

        /// A model of a link that loses frames: turns of heartbeats and
        /// acknowledgements of a few groups (rounds mostly one more, now
        /// and then a new commit point, epoch or a skipped round), each
        /// frame lost or not, the receiver's requests for full entries
        /// carried back or lost too. Every message the receiver takes is
        /// exactly one sent in that frame; a group is heard in every delivered
        /// frame after one in which it was heard, and again once its
        /// request for a full entry got back.
        #[test]
        fn over_a_lossy_link_nothing_is_made_up_and_every_group_is_heard_again(
            steps in proptest::collection::vec(
                (proptest::collection::vec((0u64..6, 0u8..10), 1..6), any::<bool>(), any::<bool>()),
                1..80,
            )
        ) {
            let mut sender = HeartbeatBatch::default();
            let mut receiver = Memory::default();
            let mut state: HashMap<u64, (u32, u64, u64)> = HashMap::new();
            // Whether a group's next delivered message must be heard: its
            // first is (in full), and so is every one after a delivered
            // one that was heard, or after its request got back.
            let mut in_step: HashMap<u64, bool> = HashMap::new();
            for (groups, lost, reply_lost) in steps {
                let mut sent: Vec<(u64, Message)> = Vec::new();
                for (g, change) in groups {
                    if sent.iter().any(|(s, _)| *s == g) {
                        continue;
                    }
                    let s = state.entry(g).or_insert((1, 0, 0));
                    match change {
                        0 => s.2 += 1,
                        1 => s.0 += 1,
                        2 => s.1 += 1,
                        _ => {}
                    }
                    s.1 += 1;
                    let msg = if g % 2 == 0 { hb(s.0, s.1, s.2) } else { ack(s.0, s.1) };
                    sender.push(g, &msg);
                    sent.push((g, msg));
                }
                let frame = sender.take().expect("a frame");
                if lost {
                    for (g, _) in &sent {
                        in_step.insert(*g, false);
                    }
                    continue;
                }
                let got = decode(&frame[1..], &mut receiver, |g| g < 6).expect("decodes");
                for (g, m) in &got.messages {
                    prop_assert!(sent.contains(&(*g, m.clone())), "made up {:?} of {}", m, g);
                }
                for (g, _) in &sent {
                    let heard = got.messages.iter().any(|(h, _)| h == g);
                    if in_step.get(g).copied().unwrap_or(true) {
                        prop_assert!(heard, "group {} not heard", g);
                    }
                    in_step.insert(*g, heard);
                }
                if !reply_lost {
                    let mut reply = HeartbeatBatch::default();
                    for &(beat, g) in &got.ask_full {
                        reply.ask_full(beat, g);
                    }
                    if let Some(frame) = reply.take() {
                        let asked = decode(&frame[1..], &mut Memory::default(), |g| g < 6).expect("decodes");
                        for (beat, g) in asked.forget {
                            sender.forget(beat, g);
                            in_step.insert(g, true);
                        }
                    }
                }
            }
        }
    }
}
