//! The wire codec of [`Envelope`]s.
//!
//! Layout (all integers little-endian, explicitly sized):
//!
//! ```text
//! version u8 | tag u8 | group u64 | from u64 | to u64 | fields...
//! entries:   count u32 | (zxid u64 | len u32 | bytes)*
//! bytes:     len u32 | bytes
//! option:    flag u8 (0 or 1) | value
//! ```
//!
//! Decoding checks every length against the remaining input and the
//! configured maximum *before* allocating, and hands entry payloads out as
//! zero-copy [`Bytes::slice`]s of the input.
//!
//! # Versions
//!
//! Version 2 ([`WIRE_VERSION`]) adds what recovering replicas need:
//! FOLLOWERINFO gains a trailing `flags u8` (bit 0: the sender is
//! recovering; other bits must be 0), and tag 23 is READMIT
//! (`epoch u32`). Version 3 ([`WIRE_VERSION`]) adds tag 24, SNAPPROGRESS
//! (`epoch u32 | round u32 | snapshot u64 | received u64 | flags u8`, flags
//! bit 0: installing; other bits must be 0). Version 4 adds tag 25,
//! FETCHSNAP (`epoch u32 | snapshot u64 | offset u64`): a leader-elect
//! asks the follower whose log no longer covers its fetch for a snapshot.
//! Version 5 adds tag 26, TAKEOVER (`epoch u32 | to u64`): a leader hands
//! its leadership to a caught-up voter. Version 6 marks membership-change
//! entries: the top bit of an entry's `len` (bit 31) says the entry is a
//! [`EntryKind::Config`]; the length is the lower 31 bits. A message is
//! written in version 6 exactly when it carries such an entry, and the bit
//! is refused in older versions. Version 7 adds tag 27, QUIESCE
//! (`epoch u32 | commit u64`): an idle group's leader stops heartbeating.
//!
//! The encoder writes the *lowest* version that can express a message
//! ([`Codec::version_of`]): everything but a recovering FOLLOWERINFO,
//! READMIT, SNAPPROGRESS, FETCHSNAP and TAKEOVER still goes out as version 1, byte for byte as
//! before, so a mixed cluster keeps working. The decoder reads versions
//! [`MIN_WIRE_VERSION`] to [`WIRE_VERSION`], and a tag only in the versions
//! that define it. An older build drops a newer frame as an unknown
//! version, which is safe: a leader that cannot read a recovering
//! follower's FOLLOWERINFO never syncs it, so never counts it, and one that
//! cannot read SNAPPROGRESS times a snapshot transfer out as before; a
//! follower that cannot read FETCHSNAP sends nothing, and the leader-elect
//! gives up its discovery after the timeout, as it gave up at once before;
//! a follower that cannot read TAKEOVER looks for a leader only once the
//! old leader's heartbeats stop, and then joins the nominee.

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::{Entry, EntryKind, Envelope, Message, SnapChunk};
use crate::{Epoch, GroupId, NodeId, Zxid};

/// The newest wire format version this codec writes and reads.
pub const WIRE_VERSION: u8 = 7;
/// The oldest wire format version this codec reads (and writes, for every
/// message that version can express).
pub const MIN_WIRE_VERSION: u8 = 1;
/// FOLLOWERINFO flags (version 2): the sender is recovering.
const FLAG_RECOVERING: u8 = 0b1;
/// SNAPPROGRESS flags (version 3): the install is running.
const FLAG_INSTALLING: u8 = 0b1;

/// Fixed size of an envelope header: version, tag, group, from, to.
const HEADER_BYTES: usize = 1 + 1 + 8 + 8 + 8;
/// Fixed size of one entry's header: zxid and length.
const ENTRY_HEADER_BYTES: usize = 8 + 4;

/// Why a message could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The message is larger than the configured maximum.
    #[error("message of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The message's size.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The input ended before a field did.
    #[error("truncated input: need {needed} bytes at offset {offset}, {remaining} remain")]
    Truncated {
        /// Bytes the field needs.
        needed: usize,
        /// Where the field starts.
        offset: usize,
        /// Bytes left in the input.
        remaining: usize,
    },
    /// The version byte is not one this codec reads.
    #[error("unknown wire version {0}")]
    UnknownVersion(u8),
    /// The message tag is unknown.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// A boolean or option flag is neither 0 nor 1.
    #[error("invalid flag byte {value} at offset {offset}")]
    InvalidFlag {
        /// The byte read.
        value: u8,
        /// Its offset.
        offset: usize,
    },
    /// An entry count cannot fit in the remaining input.
    #[error("entry count {count} at offset {offset} cannot fit in {remaining} remaining bytes")]
    BadCount {
        /// The count read.
        count: u32,
        /// Its offset.
        offset: usize,
        /// Bytes left after it.
        remaining: usize,
    },
    /// Bytes remain after the message ended.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A length does not fit this platform's `usize` or the u32 wire field.
    #[error("length {0} does not fit its wire field")]
    LengthOverflow(u64),
}

/// Encoder and decoder of [`Envelope`]s with a maximum message size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codec {
    max_message_bytes: usize,
}

impl Codec {
    /// A codec refusing messages larger than `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Codec {
        assert!(
            max_message_bytes >= HEADER_BYTES,
            "max_message_bytes must hold a header"
        );
        Codec { max_message_bytes }
    }

    /// The configured maximum.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// The wire version `msg` is written in: the lowest that can express
    /// it (see the module documentation).
    pub fn version_of(msg: &Message) -> u8 {
        match msg {
            Message::FollowerInfo {
                recovering: true, ..
            }
            | Message::Readmit { .. } => 2,
            Message::SnapProgress { .. } => 3,
            Message::FetchSnapshot { .. } => 4,
            Message::TakeOver { .. } => 5,
            Message::Quiesce { .. } => 7,
            Message::Diff { entries, .. }
            | Message::Accept { entries, .. }
            | Message::FetchReply { entries, .. }
                if entries.iter().any(Entry::is_config) =>
            {
                6
            }
            _ => MIN_WIRE_VERSION,
        }
    }

    /// The exact encoded size of `env`.
    pub fn encoded_len(env: &Envelope) -> usize {
        fn entries_len(e: &[Entry]) -> usize {
            4 + e
                .iter()
                .map(|e| ENTRY_HEADER_BYTES + e.data.len())
                .sum::<usize>()
        }
        HEADER_BYTES
            + match &env.msg {
                Message::FollowerInfo { recovering, .. } => {
                    4 + 4 + 8 + if *recovering { 1 } else { 0 }
                }
                Message::NewEpoch { .. } => 4 + 4 + 1,
                Message::AckEpoch { .. } => 4 + 4 + 4 + 8,
                Message::EpochRefused { .. } => 4 + 4,
                Message::Trunc { .. } => 4 + 4 + 8,
                Message::Diff { entries, .. } => 4 + 8 + entries_len(entries),
                Message::Snap { chunk, .. } => 4 + 4 + 8 + 8 + 8 + 4 + 4 + 4 + chunk.data.len() + 1,
                Message::SnapProgress { .. } => 4 + 4 + 8 + 8 + 1,
                Message::SnapInstalled { .. } => 4 + 8,
                Message::NewLeader { .. } => 4 + 8,
                Message::AckNewLeader { .. } => 4 + 8,
                Message::UpToDate { .. } => 4 + 8,
                Message::Accept { entries, .. } => 4 + 8 + 8 + entries_len(entries),
                Message::Accepted { .. } => 4 + 8,
                Message::AcceptNack { .. } => 4 + 8,
                Message::Commit { .. } => 4 + 8,
                Message::Applied { .. } => 4 + 8,
                Message::Heartbeat { .. } => 4 + 8 + 8,
                Message::HeartbeatAck { .. } => 4 + 8,
                Message::ReadIndexRequest { ctx, .. } => 4 + 4 + ctx.len(),
                Message::ReadIndexResponse { ctx, zxid, .. } => {
                    4 + 4 + ctx.len() + 1 + if zxid.is_some() { 8 } else { 0 }
                }
                Message::FetchHistory { .. } => 4 + 4 + 8,
                Message::FetchReply {
                    trunc_to, entries, ..
                } => {
                    4 + 1
                        + if trunc_to.is_some() { 8 } else { 0 }
                        + 8
                        + entries_len(entries)
                        + 8
                        + 1
                }
                Message::Readmit { .. } => 4,
                Message::FetchSnapshot { .. } => 4 + 8 + 8,
                Message::TakeOver { .. } => 4 + 8,
                Message::Quiesce { .. } => 4 + 8,
            }
    }

    /// Appends the encoding of `env` to `out` (a reusable buffer).
    pub fn encode(&self, env: &Envelope, out: &mut BytesMut) -> Result<(), CodecError> {
        let len = Codec::encoded_len(env);
        if len > self.max_message_bytes {
            return Err(CodecError::TooLarge {
                len,
                max: self.max_message_bytes,
            });
        }
        let start = out.len();
        out.reserve(len);
        let version = Codec::version_of(&env.msg);
        out.put_u8(version);
        out.put_u8(tag(&env.msg));
        out.put_u64_le(env.group.0);
        out.put_u64_le(env.from.0);
        out.put_u64_le(env.to.0);
        match &env.msg {
            Message::FollowerInfo {
                accepted_epoch,
                current_epoch,
                last_zxid,
                recovering,
            } => {
                out.put_u32_le(accepted_epoch.0);
                out.put_u32_le(current_epoch.0);
                out.put_u64_le(last_zxid.0);
                if version >= 2 {
                    out.put_u8(if *recovering { FLAG_RECOVERING } else { 0 });
                }
            }
            Message::NewEpoch {
                epoch,
                round,
                established,
            } => {
                out.put_u32_le(epoch.0);
                out.put_u32_le(*round);
                out.put_u8(u8::from(*established));
            }
            Message::AckEpoch {
                epoch,
                round,
                current_epoch,
                last_zxid,
            } => {
                out.put_u32_le(epoch.0);
                out.put_u32_le(*round);
                out.put_u32_le(current_epoch.0);
                out.put_u64_le(last_zxid.0);
            }
            Message::EpochRefused {
                epoch,
                accepted_epoch,
            } => {
                out.put_u32_le(epoch.0);
                out.put_u32_le(accepted_epoch.0);
            }
            Message::Trunc { epoch, round, to } => {
                out.put_u32_le(epoch.0);
                out.put_u32_le(*round);
                out.put_u64_le(to.0);
            }
            Message::Diff {
                epoch,
                prev,
                entries,
            } => {
                out.put_u32_le(epoch.0);
                out.put_u64_le(prev.0);
                put_entries(out, entries)?;
            }
            Message::Snap {
                epoch,
                round,
                chunk,
            } => {
                out.put_u32_le(epoch.0);
                out.put_u32_le(*round);
                out.put_u64_le(chunk.snapshot_zxid.0);
                out.put_u64_le(chunk.offset);
                out.put_u64_le(chunk.total_len);
                out.put_u32_le(chunk.crc32);
                out.put_u32_le(chunk.fingerprint);
                put_bytes(out, &chunk.data)?;
                out.put_u8(u8::from(chunk.last));
            }
            Message::SnapProgress {
                epoch,
                round,
                snapshot,
                received,
                installing,
            } => {
                out.put_u32_le(epoch.0);
                out.put_u32_le(*round);
                out.put_u64_le(snapshot.0);
                out.put_u64_le(*received);
                out.put_u8(if *installing { FLAG_INSTALLING } else { 0 });
            }
            Message::SnapInstalled { epoch, zxid: z }
            | Message::NewLeader {
                epoch,
                last_zxid: z,
            }
            | Message::AckNewLeader {
                epoch,
                last_zxid: z,
            }
            | Message::UpToDate { epoch, commit: z }
            | Message::Accepted { epoch, durable: z }
            | Message::AcceptNack {
                epoch,
                last_zxid: z,
            }
            | Message::Commit { epoch, commit: z }
            | Message::Applied { epoch, zxid: z } => {
                out.put_u32_le(epoch.0);
                out.put_u64_le(z.0);
            }
            Message::Accept {
                epoch,
                prev,
                commit,
                entries,
            } => {
                out.put_u32_le(epoch.0);
                out.put_u64_le(prev.0);
                out.put_u64_le(commit.0);
                put_entries(out, entries)?;
            }
            Message::Heartbeat {
                epoch,
                commit,
                round,
            } => {
                out.put_u32_le(epoch.0);
                out.put_u64_le(commit.0);
                out.put_u64_le(*round);
            }
            Message::HeartbeatAck { epoch, round } => {
                out.put_u32_le(epoch.0);
                out.put_u64_le(*round);
            }
            Message::ReadIndexRequest { epoch, ctx } => {
                out.put_u32_le(epoch.0);
                put_bytes(out, ctx)?;
            }
            Message::ReadIndexResponse { epoch, ctx, zxid } => {
                out.put_u32_le(epoch.0);
                put_bytes(out, ctx)?;
                put_opt(out, *zxid);
            }
            Message::FetchHistory {
                epoch,
                current_epoch,
                last_zxid,
            } => {
                out.put_u32_le(epoch.0);
                out.put_u32_le(current_epoch.0);
                out.put_u64_le(last_zxid.0);
            }
            Message::FetchReply {
                epoch,
                trunc_to,
                prev,
                entries,
                last_zxid,
                unable,
            } => {
                out.put_u32_le(epoch.0);
                put_opt(out, *trunc_to);
                out.put_u64_le(prev.0);
                put_entries(out, entries)?;
                out.put_u64_le(last_zxid.0);
                out.put_u8(u8::from(*unable));
            }
            Message::Readmit { epoch } => out.put_u32_le(epoch.0),
            Message::TakeOver { epoch, to } => {
                out.put_u32_le(epoch.0);
                out.put_u64_le(to.0);
            }
            Message::Quiesce { epoch, commit } => {
                out.put_u32_le(epoch.0);
                out.put_u64_le(commit.0);
            }
            Message::FetchSnapshot {
                epoch,
                snapshot,
                offset,
            } => {
                out.put_u32_le(epoch.0);
                out.put_u64_le(snapshot.0);
                out.put_u64_le(*offset);
            }
        }
        debug_assert_eq!(
            out.len() - start,
            len,
            "encoded_len must match the encoding"
        );
        Ok(())
    }

    /// Encodes `env` into a fresh buffer.
    pub fn encode_to_bytes(&self, env: &Envelope) -> Result<Bytes, CodecError> {
        let mut out = BytesMut::with_capacity(Codec::encoded_len(env));
        self.encode(env, &mut out)?;
        Ok(out.freeze())
    }

    /// Decodes one message that spans all of `input`. Payloads are slices of
    /// `input` (no copy).
    pub fn decode(&self, input: Bytes) -> Result<Envelope, CodecError> {
        if input.len() > self.max_message_bytes {
            return Err(CodecError::TooLarge {
                len: input.len(),
                max: self.max_message_bytes,
            });
        }
        let mut r = Reader {
            buf: input,
            pos: 0,
            version: 0,
        };
        let version = r.u8()?;
        if !(MIN_WIRE_VERSION..=WIRE_VERSION).contains(&version) {
            return Err(CodecError::UnknownVersion(version));
        }
        r.version = version;
        let tag = r.u8()?;
        let group = GroupId(r.u64()?);
        let from = NodeId(r.u64()?);
        let to = NodeId(r.u64()?);
        let msg = match tag {
            1 => Message::FollowerInfo {
                accepted_epoch: r.epoch()?,
                current_epoch: r.epoch()?,
                last_zxid: r.zxid()?,
                recovering: if version >= 2 {
                    let offset = r.pos;
                    let flags = r.u8()?;
                    if flags & !FLAG_RECOVERING != 0 {
                        return Err(CodecError::InvalidFlag {
                            value: flags,
                            offset,
                        });
                    }
                    flags & FLAG_RECOVERING != 0
                } else {
                    false
                },
            },
            2 => Message::NewEpoch {
                epoch: r.epoch()?,
                round: r.u32()?,
                established: r.flag()?,
            },
            3 => Message::AckEpoch {
                epoch: r.epoch()?,
                round: r.u32()?,
                current_epoch: r.epoch()?,
                last_zxid: r.zxid()?,
            },
            4 => Message::EpochRefused {
                epoch: r.epoch()?,
                accepted_epoch: r.epoch()?,
            },
            5 => Message::Trunc {
                epoch: r.epoch()?,
                round: r.u32()?,
                to: r.zxid()?,
            },
            6 => Message::Diff {
                epoch: r.epoch()?,
                prev: r.zxid()?,
                entries: r.entries()?,
            },
            7 => Message::Snap {
                epoch: r.epoch()?,
                round: r.u32()?,
                chunk: SnapChunk {
                    snapshot_zxid: r.zxid()?,
                    offset: r.u64()?,
                    total_len: r.u64()?,
                    crc32: r.u32()?,
                    fingerprint: r.u32()?,
                    data: r.bytes()?,
                    last: r.flag()?,
                },
            },
            8 => Message::SnapInstalled {
                epoch: r.epoch()?,
                zxid: r.zxid()?,
            },
            9 => Message::NewLeader {
                epoch: r.epoch()?,
                last_zxid: r.zxid()?,
            },
            10 => Message::AckNewLeader {
                epoch: r.epoch()?,
                last_zxid: r.zxid()?,
            },
            11 => Message::UpToDate {
                epoch: r.epoch()?,
                commit: r.zxid()?,
            },
            12 => Message::Accept {
                epoch: r.epoch()?,
                prev: r.zxid()?,
                commit: r.zxid()?,
                entries: r.entries()?,
            },
            13 => Message::Accepted {
                epoch: r.epoch()?,
                durable: r.zxid()?,
            },
            14 => Message::AcceptNack {
                epoch: r.epoch()?,
                last_zxid: r.zxid()?,
            },
            15 => Message::Commit {
                epoch: r.epoch()?,
                commit: r.zxid()?,
            },
            16 => Message::Applied {
                epoch: r.epoch()?,
                zxid: r.zxid()?,
            },
            17 => Message::Heartbeat {
                epoch: r.epoch()?,
                commit: r.zxid()?,
                round: r.u64()?,
            },
            18 => Message::HeartbeatAck {
                epoch: r.epoch()?,
                round: r.u64()?,
            },
            19 => Message::ReadIndexRequest {
                epoch: r.epoch()?,
                ctx: r.bytes()?,
            },
            20 => Message::ReadIndexResponse {
                epoch: r.epoch()?,
                ctx: r.bytes()?,
                zxid: r.opt_zxid()?,
            },
            21 => Message::FetchHistory {
                epoch: r.epoch()?,
                current_epoch: r.epoch()?,
                last_zxid: r.zxid()?,
            },
            22 => Message::FetchReply {
                epoch: r.epoch()?,
                trunc_to: r.opt_zxid()?,
                prev: r.zxid()?,
                entries: r.entries()?,
                last_zxid: r.zxid()?,
                unable: r.flag()?,
            },
            23 if version >= 2 => Message::Readmit { epoch: r.epoch()? },
            24 if version >= 3 => Message::SnapProgress {
                epoch: r.epoch()?,
                round: r.u32()?,
                snapshot: r.zxid()?,
                received: r.u64()?,
                installing: {
                    let offset = r.pos;
                    let flags = r.u8()?;
                    if flags & !FLAG_INSTALLING != 0 {
                        return Err(CodecError::InvalidFlag {
                            value: flags,
                            offset,
                        });
                    }
                    flags & FLAG_INSTALLING != 0
                },
            },
            25 if version >= 4 => Message::FetchSnapshot {
                epoch: r.epoch()?,
                snapshot: r.zxid()?,
                offset: r.u64()?,
            },
            26 if version >= 5 => Message::TakeOver {
                epoch: r.epoch()?,
                to: NodeId(r.u64()?),
            },
            27 if version >= 7 => Message::Quiesce {
                epoch: r.epoch()?,
                commit: r.zxid()?,
            },
            t => return Err(CodecError::UnknownTag(t)),
        };
        let rest = r.buf.len() - r.pos;
        if rest != 0 {
            return Err(CodecError::TrailingBytes(rest));
        }
        Ok(Envelope {
            group,
            from,
            to,
            msg,
        })
    }
}

fn tag(msg: &Message) -> u8 {
    match msg {
        Message::FollowerInfo { .. } => 1,
        Message::NewEpoch { .. } => 2,
        Message::AckEpoch { .. } => 3,
        Message::EpochRefused { .. } => 4,
        Message::Trunc { .. } => 5,
        Message::Diff { .. } => 6,
        Message::Snap { .. } => 7,
        Message::SnapInstalled { .. } => 8,
        Message::NewLeader { .. } => 9,
        Message::AckNewLeader { .. } => 10,
        Message::UpToDate { .. } => 11,
        Message::Accept { .. } => 12,
        Message::Accepted { .. } => 13,
        Message::AcceptNack { .. } => 14,
        Message::Commit { .. } => 15,
        Message::Applied { .. } => 16,
        Message::Heartbeat { .. } => 17,
        Message::HeartbeatAck { .. } => 18,
        Message::ReadIndexRequest { .. } => 19,
        Message::ReadIndexResponse { .. } => 20,
        Message::FetchHistory { .. } => 21,
        Message::FetchReply { .. } => 22,
        Message::Readmit { .. } => 23,
        Message::SnapProgress { .. } => 24,
        Message::FetchSnapshot { .. } => 25,
        Message::TakeOver { .. } => 26,
        Message::Quiesce { .. } => 27,
    }
}

fn put_len(out: &mut BytesMut, len: usize) -> Result<(), CodecError> {
    let len32 = u32::try_from(len).map_err(|_| CodecError::LengthOverflow(len as u64))?;
    out.put_u32_le(len32);
    Ok(())
}

fn put_bytes(out: &mut BytesMut, b: &Bytes) -> Result<(), CodecError> {
    put_len(out, b.len())?;
    out.put_slice(b);
    Ok(())
}

/// Bit 31 of an entry's length: the entry is a membership change
/// (version 6).
const ENTRY_CONFIG_BIT: u32 = 1 << 31;

fn put_entries(out: &mut BytesMut, entries: &[Entry]) -> Result<(), CodecError> {
    put_len(out, entries.len())?;
    for e in entries {
        out.put_u64_le(e.zxid.0);
        let len = u32::try_from(e.data.len())
            .ok()
            .filter(|l| l & ENTRY_CONFIG_BIT == 0)
            .ok_or(CodecError::LengthOverflow(e.data.len() as u64))?;
        let flag = if e.is_config() { ENTRY_CONFIG_BIT } else { 0 };
        out.put_u32_le(len | flag);
        out.put_slice(&e.data);
    }
    Ok(())
}

fn put_opt(out: &mut BytesMut, z: Option<Zxid>) {
    match z {
        Some(z) => {
            out.put_u8(1);
            out.put_u64_le(z.0);
        }
        None => out.put_u8(0),
    }
}

struct Reader {
    buf: Bytes,
    pos: usize,
    /// The frame's wire version (what its fields may hold).
    version: u8,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<&[u8], CodecError> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining {
            return Err(CodecError::Truncated {
                needed: n,
                offset: self.pos,
                remaining,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_le_bytes(a))
    }
    fn epoch(&mut self) -> Result<Epoch, CodecError> {
        self.u32().map(Epoch)
    }
    fn zxid(&mut self) -> Result<Zxid, CodecError> {
        self.u64().map(Zxid)
    }
    fn flag(&mut self) -> Result<bool, CodecError> {
        let offset = self.pos;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(CodecError::InvalidFlag { value, offset }),
        }
    }
    fn opt_zxid(&mut self) -> Result<Option<Zxid>, CodecError> {
        if self.flag()? {
            Ok(Some(self.zxid()?))
        } else {
            Ok(None)
        }
    }
    /// A length-prefixed byte string, as a zero-copy slice of the input.
    fn bytes(&mut self) -> Result<Bytes, CodecError> {
        let len = self.u32()? as usize;
        self.slice(len)
    }
    fn slice(&mut self, len: usize) -> Result<Bytes, CodecError> {
        let remaining = self.buf.len() - self.pos;
        if len > remaining {
            return Err(CodecError::Truncated {
                needed: len,
                offset: self.pos,
                remaining,
            });
        }
        let b = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(b)
    }
    fn entries(&mut self) -> Result<Vec<Entry>, CodecError> {
        let offset = self.pos;
        let count = self.u32()?;
        let remaining = self.buf.len() - self.pos;
        // Every entry takes at least its header: refuse counts the input
        // cannot hold before reserving anything.
        if (count as usize).saturating_mul(ENTRY_HEADER_BYTES) > remaining {
            return Err(CodecError::BadCount {
                count,
                offset,
                remaining,
            });
        }
        let mut entries = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let zxid = self.zxid()?;
            let at = self.pos;
            let raw = self.u32()?;
            let kind = if raw & ENTRY_CONFIG_BIT != 0 {
                if self.version < 6 {
                    return Err(CodecError::InvalidFlag {
                        value: (raw >> 24) as u8,
                        offset: at,
                    });
                }
                EntryKind::Config
            } else {
                EntryKind::Command
            };
            let data = self.slice((raw & !ENTRY_CONFIG_BIT) as usize)?;
            entries.push(Entry { zxid, kind, data });
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(msg: Message) -> Envelope {
        Envelope {
            group: GroupId(7),
            from: NodeId(1),
            to: NodeId(2),
            msg,
        }
    }

    #[test]
    fn accept_round_trips_with_zero_copy_payloads() {
        let codec = Codec::new(1 << 20);
        let e = env(Message::Accept {
            epoch: Epoch(3),
            prev: Zxid::new(Epoch(3), 4),
            commit: Zxid::new(Epoch(3), 2),
            entries: vec![Entry {
                kind: Default::default(),
                zxid: Zxid::new(Epoch(3), 5),
                data: Bytes::from_static(b"hello"),
            }],
        });
        let wire = codec.encode_to_bytes(&e).unwrap();
        assert_eq!(wire.len(), Codec::encoded_len(&e));
        let back = codec.decode(wire.clone()).unwrap();
        assert_eq!(back, e);
        if let Message::Accept { entries, .. } = back.msg {
            let p = entries[0].data.as_ptr() as usize;
            let base = wire.as_ptr() as usize;
            assert!(
                p >= base && p < base + wire.len(),
                "payload must alias the input"
            );
        }
    }

    #[test]
    fn version_2_only_when_needed_and_flags_checked() {
        let codec = Codec::new(1 << 10);
        let info = |recovering| {
            env(Message::FollowerInfo {
                accepted_epoch: Epoch(4),
                current_epoch: Epoch(3),
                last_zxid: Zxid::new(Epoch(3), 9),
                recovering,
            })
        };
        // A voter's FOLLOWERINFO is still the version 1 frame, byte for byte.
        let v1 = codec.encode_to_bytes(&info(false)).unwrap();
        assert_eq!(v1[0], 1);
        assert_eq!(v1.len(), HEADER_BYTES + 16);
        assert_eq!(codec.decode(v1.clone()).unwrap(), info(false));
        // A recovering one needs version 2 and its flags byte.
        let v2 = codec.encode_to_bytes(&info(true)).unwrap();
        assert_eq!(v2[0], 2);
        assert_eq!(v2.len(), HEADER_BYTES + 17);
        assert_eq!(codec.decode(v2.clone()).unwrap(), info(true));
        // Version 2 without the flags byte is truncated; reserved bits refused.
        assert!(matches!(
            codec.decode(v2.slice(..v2.len() - 1)),
            Err(CodecError::Truncated { .. })
        ));
        let mut bad = v2.to_vec();
        let last = bad.len() - 1;
        bad[last] = 0b11;
        assert!(matches!(
            codec.decode(Bytes::from(bad)),
            Err(CodecError::InvalidFlag { value: 0b11, .. })
        ));
        // READMIT exists in version 2 only.
        let readmit = env(Message::Readmit { epoch: Epoch(5) });
        let w = codec.encode_to_bytes(&readmit).unwrap();
        assert_eq!(w[0], 2);
        assert_eq!(codec.decode(w.clone()).unwrap(), readmit);
        let mut as_v1 = w.to_vec();
        as_v1[0] = 1;
        assert_eq!(
            codec.decode(Bytes::from(as_v1)),
            Err(CodecError::UnknownTag(23))
        );
        assert_eq!(
            codec.decode(Bytes::from_static(&[WIRE_VERSION + 1, 1])),
            Err(CodecError::UnknownVersion(WIRE_VERSION + 1))
        );
    }

    #[test]
    fn snap_progress_is_version_3_with_checked_flags() {
        let codec = Codec::new(1 << 10);
        let msg = |installing| {
            env(Message::SnapProgress {
                epoch: Epoch(4),
                round: 7,
                snapshot: Zxid::new(Epoch(3), 9),
                received: 5 << 30,
                installing,
            })
        };
        for installing in [false, true] {
            let w = codec.encode_to_bytes(&msg(installing)).unwrap();
            assert_eq!(w[0], 3);
            assert_eq!(w.len(), HEADER_BYTES + 25);
            assert_eq!(codec.decode(w.clone()).unwrap(), msg(installing));
            // Every proper prefix is truncated.
            for cut in 0..w.len() {
                assert!(matches!(
                    codec.decode(w.slice(..cut)),
                    Err(CodecError::Truncated { .. })
                ));
            }
            // Tag 24 does not exist before version 3.
            for v in [1u8, 2] {
                let mut old = w.to_vec();
                old[0] = v;
                assert_eq!(
                    codec.decode(Bytes::from(old)),
                    Err(CodecError::UnknownTag(24))
                );
            }
        }
        let mut bad = codec.encode_to_bytes(&msg(true)).unwrap().to_vec();
        let last = bad.len() - 1;
        bad[last] = 0b10;
        assert!(matches!(
            codec.decode(Bytes::from(bad)),
            Err(CodecError::InvalidFlag { value: 0b10, .. })
        ));
    }

    #[test]
    fn config_entries_are_version_6_and_refused_before() {
        let codec = Codec::new(1 << 10);
        let config = Entry {
            zxid: Zxid::new(Epoch(2), 3),
            kind: EntryKind::Config,
            data: Bytes::from_static(b"members"),
        };
        let command = Entry::command(Zxid::new(Epoch(2), 2), Bytes::from_static(b"cmd"));
        let msg = env(Message::Diff {
            epoch: Epoch(2),
            prev: Zxid::new(Epoch(2), 1),
            entries: vec![command.clone(), config],
        });
        let w = codec.encode_to_bytes(&msg).unwrap();
        assert_eq!(w[0], 6);
        assert_eq!(Codec::encoded_len(&msg), w.len());
        assert_eq!(codec.decode(w.clone()).unwrap(), msg);
        // The kind bit does not exist before version 6.
        for v in 1u8..6 {
            let mut old = w.to_vec();
            old[0] = v;
            assert!(matches!(
                codec.decode(Bytes::from(old)),
                Err(CodecError::InvalidFlag { .. })
            ));
        }
        // Commands alone keep version 1, byte for byte.
        let plain = env(Message::Diff {
            epoch: Epoch(2),
            prev: Zxid::new(Epoch(2), 1),
            entries: vec![command],
        });
        assert_eq!(codec.encode_to_bytes(&plain).unwrap()[0], 1);
    }

    /// `msg` is written in `version` with `body` bytes after the header,
    /// round-trips, reports every cut as truncated, and its `tag` is
    /// unknown in every older version.
    fn assert_new_in_version(msg: &Envelope, version: u8, tag: u8, body: usize) {
        let codec = Codec::new(1 << 10);
        let w = codec.encode_to_bytes(msg).unwrap();
        assert_eq!(w[0], version);
        assert_eq!(w.len(), HEADER_BYTES + body);
        assert_eq!(Codec::encoded_len(msg), w.len());
        assert_eq!(&codec.decode(w.clone()).unwrap(), msg);
        for cut in 0..w.len() {
            assert!(matches!(
                codec.decode(w.slice(..cut)),
                Err(CodecError::Truncated { .. })
            ));
        }
        for v in 1..version {
            let mut old = w.to_vec();
            old[0] = v;
            assert_eq!(
                codec.decode(Bytes::from(old)),
                Err(CodecError::UnknownTag(tag))
            );
        }
    }

    #[test]
    fn take_over_is_version_5() {
        // Tag 26 does not exist before version 5.
        let msg = env(Message::TakeOver {
            epoch: Epoch(7),
            to: NodeId(3),
        });
        assert_new_in_version(&msg, 5, 26, 12);
    }

    #[test]
    fn quiesce_is_version_7() {
        // Tag 27 does not exist before version 7: an older build drops it,
        // and its followers keep their election timers (it never quiesces).
        let msg = env(Message::Quiesce {
            epoch: Epoch(4),
            commit: Zxid::new(Epoch(4), 9),
        });
        assert_new_in_version(&msg, 7, 27, 12);
    }

    #[test]
    fn fetch_snapshot_is_version_4() {
        let codec = Codec::new(1 << 10);
        let msg = env(Message::FetchSnapshot {
            epoch: Epoch(6),
            snapshot: Zxid::new(Epoch(5), 40),
            offset: 3 << 20,
        });
        let w = codec.encode_to_bytes(&msg).unwrap();
        assert_eq!(w[0], 4);
        assert_eq!(w.len(), HEADER_BYTES + 20);
        assert_eq!(codec.decode(w.clone()).unwrap(), msg);
        for cut in 0..w.len() {
            assert!(matches!(
                codec.decode(w.slice(..cut)),
                Err(CodecError::Truncated { .. })
            ));
        }
        // Tag 25 does not exist before version 4.
        for v in [1u8, 2, 3] {
            let mut old = w.to_vec();
            old[0] = v;
            assert_eq!(
                codec.decode(Bytes::from(old)),
                Err(CodecError::UnknownTag(25))
            );
        }
        // Every other message keeps its version.
        let fetch = env(Message::FetchHistory {
            epoch: Epoch(6),
            current_epoch: Epoch(4),
            last_zxid: Zxid::new(Epoch(4), 2),
        });
        assert_eq!(codec.encode_to_bytes(&fetch).unwrap()[0], 1);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let codec = Codec::new(64);
        assert!(matches!(
            codec.decode(Bytes::new()),
            Err(CodecError::Truncated { .. })
        ));
        assert_eq!(
            codec.decode(Bytes::from_static(&[9, 1])),
            Err(CodecError::UnknownVersion(9))
        );
        let mut huge = vec![1u8, 6];
        huge.extend_from_slice(&[0; 24]);
        huge.extend_from_slice(&[0; 4 + 8]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            codec.decode(Bytes::from(huge)),
            Err(CodecError::BadCount { .. })
        ));
        assert!(matches!(
            codec.decode(Bytes::from(vec![1u8; 65])),
            Err(CodecError::TooLarge { len: 65, max: 64 })
        ));
        let big = env(Message::Diff {
            epoch: Epoch(1),
            prev: Zxid::ZERO,
            entries: vec![Entry {
                kind: Default::default(),
                zxid: Zxid::new(Epoch(1), 1),
                data: Bytes::from(vec![0u8; 100]),
            }],
        });
        assert!(matches!(
            codec.encode(&big, &mut BytesMut::new()),
            Err(CodecError::TooLarge { .. })
        ));
    }
}
