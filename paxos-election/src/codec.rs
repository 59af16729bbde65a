//! The election's own wire codec.
//!
//! Every message is one fixed-size frame, big-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | wire version: 1, 2 or [`WIRE_VERSION`] (3) |
//! | 1 | 1 | kind: 1 = notification (others reserved) |
//! | 2 | 1 | sender state: 0 LOOKING, 1 FOLLOWING, 2 LEADING, 3 OBSERVING |
//! | 3 | 1 | flags: bit 0 has a vote, bit 1 locked, bit 2 abstain, bit 3 connected (versions 2 and 3), bit 4 nominated (version 3 only); other bits must be 0 |
//! | 4 | 8 | round |
//! | 12 | 8 | vote: leader node id (0 when there is no vote) |
//! | 20 | 4 | vote: leader's current epoch (0 when there is no vote) |
//! | 24 | 8 | vote: leader's last zxid (0 when there is no vote) |
//!
//! Bit 2 (*abstain*, a recovering voter whose notification must not be
//! counted) is a compatible extension of version 1: an older build refuses
//! the reserved bit and drops the whole notification, which is exactly
//! what it must do with an abstaining one (never count it); everything a
//! voting node sends is unchanged, byte for byte.
//!
//! Version 2 adds bit 3, *connected*: the vote's candidate heard from a
//! quorum when it stood ([`Vote::connected`]). A notification is written
//! in the lowest version that carries it: version 2 exactly when bit 3 is
//! set, so a vote without the claim is byte for byte what version 1
//! wrote, and a version 2 frame without bit 3 (or a version 1 frame with
//! it) is refused as non-canonical. An older build refuses version 2 with
//! its unsupported-version error and drops the notification; see
//! [`ElectionConfig::connectivity_rule`](crate::ElectionConfig) for
//! upgrading.
//!
//! Version 3 adds bit 4, *nominated*: the vote's candidate stands as the
//! nominee of a leader's hand-over ([`Vote::nominated`]). The same rule
//! applies: version 3 exactly when bit 4 is set (with or without bit 3),
//! so every notification without a nomination is byte for byte what
//! versions 1 and 2 wrote; a version 3 frame without bit 4, bit 4 in a
//! version 1 or 2 frame, and bit 4 without a vote are refused. Only
//! LOOKING votes carry the bit (a settled node announces its leader
//! without it), so version 3 frames exist only during an election that
//! follows a hand-over.
//!
//! During a rolling upgrade, an older build refuses a version 3 frame with
//! its unsupported-version error and drops it: it never sees the nominee's
//! vote, nor the vote of a newer voter that adopted it, and elects among
//! the votes it can read as if there had been no hand-over. Since the
//! nomination ranks below recency, either side only ever proposes (and the
//! lock quorum only ever elects) a candidate with the most recent history
//! among the votes it counts, so the hand-over still elects an up-to-date
//! leader, but maybe not the nominee: the older voters may form a quorum
//! around another candidate, which the newer ones then join through its
//! settled announcements (written in version 1 or 2). Once every node runs
//! this build, hand-overs elect the nominee whenever it is connected and
//! as recent as any voter.
//!
//! Decoding checks the length before reading anything, rejects anything
//! over [`MAX_MESSAGE_BYTES`] up front, accepts exactly one encoding per
//! message (reserved bits and absent-vote fields must be zero) and never
//! panics. Semantic checks (unknown node ids, impossible rounds) belong to
//! the elector, which drops such messages.

use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::{Epoch, NodeId, PeerState, Zxid};

use crate::{Notification, Vote};

/// The newest wire version this build writes and reads (it reads 1 to 3).
///
/// Every notification is written in the lowest version that carries it:
/// version 2 for a connected vote, version 3 for a nominated one (a leader
/// hand-over's nominee, see [`Vote::nominated`]). An older build drops a
/// version 3 frame as an unsupported version: during a rolling upgrade a
/// hand-over still elects a leader as up to date as the quorum that elects
/// it, but maybe not the nominee (the nominee gives its claim up after one
/// retry if its vote is not locked by then).
pub const WIRE_VERSION: u8 = 3;
/// The oldest wire version this build reads.
pub const MIN_WIRE_VERSION: u8 = 1;
/// The kind byte of a [`Notification`].
pub const KIND_NOTIFICATION: u8 = 1;
/// The encoded size of a [`Notification`].
pub const NOTIFICATION_BYTES: usize = 32;
/// No election message is longer; longer input is rejected before parsing.
pub const MAX_MESSAGE_BYTES: usize = 64;

const FLAG_HAS_VOTE: u8 = 0b01;
const FLAG_LOCKED: u8 = 0b10;
const FLAG_ABSTAIN: u8 = 0b100;
const FLAG_CONNECTED: u8 = 0b1000;
const FLAG_NOMINATED: u8 = 0b1_0000;
/// The version that carries the connected flag but not the nominated one.
const CONNECTED_VERSION: u8 = 2;
const HEADER_BYTES: usize = 2;

/// Why bytes could not be decoded as an election message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than the header or the body needs.
    #[error("election message truncated: {len} bytes, {need} needed")]
    Truncated {
        /// Bytes received.
        len: usize,
        /// Bytes the header or body needs.
        need: usize,
    },
    /// More bytes than any election message may have.
    #[error("election message of {len} bytes exceeds the {max_bytes}-byte bound")]
    TooLong {
        /// Bytes received.
        len: usize,
        /// [`MAX_MESSAGE_BYTES`].
        max_bytes: usize,
    },
    /// Bytes after the end of a complete message.
    #[error("election message of kind {kind} has {extra} trailing bytes")]
    TrailingBytes {
        /// The message kind.
        kind: u8,
        /// Bytes past the message's end.
        extra: usize,
    },
    /// A wire version this build does not speak.
    #[error(
        "unsupported election wire version {found} (this build speaks {MIN_WIRE_VERSION} to {WIRE_VERSION})"
    )]
    UnsupportedVersion {
        /// The version byte received.
        found: u8,
    },
    /// A message kind this version does not define.
    #[error("unknown election message kind {kind}")]
    UnknownKind {
        /// The kind byte received.
        kind: u8,
    },
    /// A state byte outside 0..=3.
    #[error("invalid peer state byte {state}")]
    InvalidState {
        /// The state byte received.
        state: u8,
    },
    /// Reserved flag bits set, or flags contradicting the body.
    #[error("invalid flags {flags:#04x}: {reason}")]
    InvalidFlags {
        /// The flags byte received.
        flags: u8,
        /// What is wrong with them.
        reason: &'static str,
    },
}

fn state_byte(state: PeerState) -> u8 {
    match state {
        PeerState::Looking => 0,
        PeerState::Following => 1,
        PeerState::Leading => 2,
        PeerState::Observing => 3,
    }
}

fn state_from_byte(state: u8) -> Result<PeerState, CodecError> {
    match state {
        0 => Ok(PeerState::Looking),
        1 => Ok(PeerState::Following),
        2 => Ok(PeerState::Leading),
        3 => Ok(PeerState::Observing),
        _ => Err(CodecError::InvalidState { state }),
    }
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

impl Notification {
    /// Appends the encoding ([`NOTIFICATION_BYTES`] bytes) to `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        let mut flags = 0;
        if self.vote.is_some() {
            flags |= FLAG_HAS_VOTE;
        }
        if self.locked {
            flags |= FLAG_LOCKED;
        }
        if self.abstain {
            flags |= FLAG_ABSTAIN;
        }
        if self.vote.is_some_and(|v| v.connected) {
            flags |= FLAG_CONNECTED;
        }
        if self.vote.is_some_and(|v| v.nominated) {
            flags |= FLAG_NOMINATED;
        }
        let (leader, epoch, zxid) = match self.vote {
            Some(v) => (v.leader.0, v.epoch.0, v.zxid.as_u64()),
            None => (0, 0, 0),
        };
        // The lowest version that carries the message.
        let version = if flags & FLAG_NOMINATED != 0 {
            WIRE_VERSION
        } else if flags & FLAG_CONNECTED != 0 {
            CONNECTED_VERSION
        } else {
            MIN_WIRE_VERSION
        };
        buf.put_u8(version);
        buf.put_u8(KIND_NOTIFICATION);
        buf.put_u8(state_byte(self.state));
        buf.put_u8(flags);
        buf.put_u64(self.round);
        buf.put_u64(leader);
        buf.put_u32(epoch);
        buf.put_u64(zxid);
    }

    /// The encoding as a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(NOTIFICATION_BYTES);
        self.encode(&mut buf);
        debug_assert_eq!(buf.len(), NOTIFICATION_BYTES, "notification size is fixed");
        buf.freeze()
    }

    /// Decodes one message; the whole of `bytes` must be that message.
    pub fn decode(bytes: &[u8]) -> Result<Notification, CodecError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(CodecError::TooLong {
                len: bytes.len(),
                max_bytes: MAX_MESSAGE_BYTES,
            });
        }
        if bytes.len() < HEADER_BYTES {
            return Err(CodecError::Truncated {
                len: bytes.len(),
                need: HEADER_BYTES,
            });
        }
        let version = bytes[0];
        if !(MIN_WIRE_VERSION..=WIRE_VERSION).contains(&version) {
            return Err(CodecError::UnsupportedVersion { found: version });
        }
        let kind = bytes[1];
        if kind != KIND_NOTIFICATION {
            return Err(CodecError::UnknownKind { kind });
        }
        if bytes.len() < NOTIFICATION_BYTES {
            return Err(CodecError::Truncated {
                len: bytes.len(),
                need: NOTIFICATION_BYTES,
            });
        }
        if bytes.len() > NOTIFICATION_BYTES {
            return Err(CodecError::TrailingBytes {
                kind,
                extra: bytes.len() - NOTIFICATION_BYTES,
            });
        }
        let state = state_from_byte(bytes[2])?;
        let flags = bytes[3];
        let connected = flags & FLAG_CONNECTED != 0;
        let nominated = flags & FLAG_NOMINATED != 0;
        let all = FLAG_HAS_VOTE | FLAG_LOCKED | FLAG_ABSTAIN | FLAG_CONNECTED | FLAG_NOMINATED;
        if flags & !all != 0 {
            return Err(CodecError::InvalidFlags {
                flags,
                reason: "reserved bits set",
            });
        }
        // Each version carries exactly the flags that need it: one
        // encoding per message.
        let refusal = match version {
            1 if connected => Some("connected flag in version 1 (version 2 carries it)"),
            1 | 2 if nominated => Some("nominated flag before version 3 (version 3 carries it)"),
            2 if !connected => Some("version 2 without the connected flag (version 1 carries it)"),
            3 if !nominated => {
                Some("version 3 without the nominated flag (version 1 or 2 carries it)")
            }
            _ => None,
        };
        if let Some(reason) = refusal {
            return Err(CodecError::InvalidFlags { flags, reason });
        }
        let round = be_u64(bytes, 4);
        let leader = be_u64(bytes, 12);
        let epoch = be_u32(bytes, 20);
        let zxid = be_u64(bytes, 24);
        let vote = if flags & FLAG_HAS_VOTE != 0 {
            Some(Vote {
                leader: NodeId(leader),
                epoch: Epoch(epoch),
                zxid: Zxid(zxid),
                connected,
                nominated,
            })
        } else {
            if connected {
                return Err(CodecError::InvalidFlags {
                    flags,
                    reason: "connected without a vote",
                });
            }
            if nominated {
                return Err(CodecError::InvalidFlags {
                    flags,
                    reason: "nominated without a vote",
                });
            }
            if leader != 0 || epoch != 0 || zxid != 0 {
                return Err(CodecError::InvalidFlags {
                    flags,
                    reason: "no vote flagged but vote fields are not zero",
                });
            }
            None
        };
        let locked = flags & FLAG_LOCKED != 0;
        if locked && vote.is_none() {
            return Err(CodecError::InvalidFlags {
                flags,
                reason: "locked without a vote",
            });
        }
        Ok(Notification {
            vote,
            round,
            state,
            locked,
            abstain: flags & FLAG_ABSTAIN != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Notification {
        Notification {
            vote: Some(Vote {
                leader: NodeId(3),
                epoch: Epoch(2),
                zxid: Zxid::new(Epoch(2), 9),
                connected: false,
                nominated: false,
            }),
            round: 41,
            state: PeerState::Following,
            locked: true,
            abstain: false,
        }
    }

    #[test]
    fn round_trips_and_has_fixed_size() {
        let n = sample();
        let b = n.to_bytes();
        assert_eq!(b.len(), NOTIFICATION_BYTES);
        assert_eq!(Notification::decode(&b), Ok(n));
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        let b = sample().to_bytes();
        for len in 0..b.len() {
            assert!(Notification::decode(&b[..len]).is_err(), "len {len}");
        }
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(
            Notification::decode(&long),
            Err(CodecError::TrailingBytes {
                kind: KIND_NOTIFICATION,
                extra: 1
            })
        );
        let huge = vec![MIN_WIRE_VERSION; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            Notification::decode(&huge),
            Err(CodecError::TooLong { .. })
        ));
    }

    #[test]
    fn rejects_bad_header_fields_and_flags() {
        let good = sample().to_bytes().to_vec();
        let with = |at: usize, v: u8| {
            let mut b = good.clone();
            b[at] = v;
            Notification::decode(&b)
        };
        assert_eq!(with(0, 4), Err(CodecError::UnsupportedVersion { found: 4 }));
        assert_eq!(with(0, 0), Err(CodecError::UnsupportedVersion { found: 0 }));
        assert_eq!(with(1, 9), Err(CodecError::UnknownKind { kind: 9 }));
        assert_eq!(with(2, 4), Err(CodecError::InvalidState { state: 4 }));
        assert!(matches!(
            with(3, 0b10_0000),
            Err(CodecError::InvalidFlags { .. })
        ));
        // The connected bit is reserved in version 1.
        assert!(matches!(
            with(3, FLAG_HAS_VOTE | FLAG_CONNECTED),
            Err(CodecError::InvalidFlags { .. })
        ));
        // The abstain bit round-trips and changes nothing else.
        let abstaining = Notification {
            abstain: true,
            ..sample()
        };
        let b = abstaining.to_bytes();
        assert_eq!(b[3], FLAG_HAS_VOTE | FLAG_LOCKED | FLAG_ABSTAIN);
        assert_eq!(b[4..], sample().to_bytes()[4..]);
        assert_eq!(Notification::decode(&b), Ok(abstaining));
        // Locked without a vote.
        assert!(matches!(
            with(3, FLAG_LOCKED),
            Err(CodecError::InvalidFlags { .. })
        ));
        // No vote but non-zero vote fields.
        assert!(matches!(with(3, 0), Err(CodecError::InvalidFlags { .. })));
        let none = Notification {
            vote: None,
            round: 1,
            state: PeerState::Looking,
            locked: false,
            abstain: false,
        };
        assert_eq!(Notification::decode(&none.to_bytes()), Ok(none));
    }

    #[test]
    fn a_connected_vote_is_written_in_version_2_and_only_there() {
        let mut n = sample();
        let v1 = n.to_bytes();
        assert_eq!(v1[0], 1, "a vote without the claim stays version 1");
        n.vote = n.vote.map(|v| v.with_connected(true));
        let v2 = n.to_bytes();
        assert_eq!(v2.len(), NOTIFICATION_BYTES);
        assert_eq!(v2[0], 2);
        assert_eq!(v2[3], FLAG_HAS_VOTE | FLAG_LOCKED | FLAG_CONNECTED);
        assert_eq!(v2[4..], v1[4..], "the body is unchanged");
        assert_eq!(Notification::decode(&v2), Ok(n));
        // Version 2 without the flag is not canonical.
        let mut b = v1.to_vec();
        b[0] = 2;
        assert!(matches!(
            Notification::decode(&b),
            Err(CodecError::InvalidFlags { .. })
        ));
        // The flag without a vote.
        let mut b = v2.to_vec();
        b[3] = FLAG_CONNECTED;
        b[12..].fill(0);
        assert!(matches!(
            Notification::decode(&b),
            Err(CodecError::InvalidFlags { .. })
        ));
    }

    fn reason(r: Result<Notification, CodecError>) -> &'static str {
        match r {
            Err(CodecError::InvalidFlags { reason, .. }) => reason,
            other => panic!("expected invalid flags, got {other:?}"),
        }
    }

    #[test]
    fn a_nominated_vote_is_written_in_version_3_and_only_there() {
        let plain = sample();
        let v1 = plain.to_bytes();
        for connected in [false, true] {
            let mut n = plain;
            n.vote = n
                .vote
                .map(|v| v.with_connected(connected).with_nominated(true));
            let v3 = n.to_bytes();
            assert_eq!(v3.len(), NOTIFICATION_BYTES);
            assert_eq!(v3[0], 3);
            let connected_bit = if connected { FLAG_CONNECTED } else { 0 };
            assert_eq!(
                v3[3],
                FLAG_HAS_VOTE | FLAG_LOCKED | connected_bit | FLAG_NOMINATED
            );
            assert_eq!(v3[4..], v1[4..], "the body is unchanged");
            assert_eq!(Notification::decode(&v3), Ok(n));
            // The bit in an older version is refused.
            for older in [1, 2] {
                let mut b = v3.to_vec();
                b[0] = older;
                assert!(Notification::decode(&b).is_err(), "version {older}");
            }
        }
        // Nominated in version 1 or 2 (each otherwise canonical there).
        let mut b = v1.to_vec();
        b[3] |= FLAG_NOMINATED;
        assert_eq!(
            reason(Notification::decode(&b)),
            "nominated flag before version 3 (version 3 carries it)"
        );
        let mut b = v1.to_vec();
        b[0] = 2;
        b[3] |= FLAG_CONNECTED | FLAG_NOMINATED;
        assert_eq!(
            reason(Notification::decode(&b)),
            "nominated flag before version 3 (version 3 carries it)"
        );
        // Version 3 without the bit, with or without the connected bit.
        for extra in [0, FLAG_CONNECTED] {
            let mut b = v1.to_vec();
            b[0] = 3;
            b[3] |= extra;
            assert_eq!(
                reason(Notification::decode(&b)),
                "version 3 without the nominated flag (version 1 or 2 carries it)"
            );
        }
        // The bit without a vote.
        let mut b = vec![3, KIND_NOTIFICATION, 0, FLAG_NOMINATED];
        b.resize(NOTIFICATION_BYTES, 0);
        assert_eq!(reason(Notification::decode(&b)), "nominated without a vote");
        // A settled or plain vote without the claim never uses version 3.
        assert_eq!(plain.to_bytes()[0], 1);
    }

    /// A version 2 frame as an older build wrote it (bytes spelled out)
    /// still decodes, and is written back byte for byte.
    #[test]
    fn an_older_builds_version_2_frame_is_unchanged() {
        let mut b = vec![
            2,
            KIND_NOTIFICATION,
            2,
            FLAG_HAS_VOTE | FLAG_LOCKED | FLAG_CONNECTED,
        ];
        b.extend_from_slice(&9u64.to_be_bytes());
        b.extend_from_slice(&4u64.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&Zxid::new(Epoch(3), 1).as_u64().to_be_bytes());
        let n = Notification::decode(&b).expect("a version 2 frame decodes");
        let v = n.vote.expect("has a vote");
        assert!(v.connected && !v.nominated);
        assert_eq!(n.to_bytes().as_ref(), &b[..]);
    }

    /// A version 1 frame as an older build wrote it (bytes spelled out,
    /// not produced by this encoder) still decodes.
    #[test]
    fn an_older_builds_frame_still_decodes() {
        let mut b = vec![1, KIND_NOTIFICATION, 0, FLAG_HAS_VOTE];
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&3u64.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(&Zxid::new(Epoch(2), 5).as_u64().to_be_bytes());
        let n = Notification::decode(&b).expect("a version 1 frame decodes");
        assert_eq!(n.round, 7);
        assert_eq!(n.state, PeerState::Looking);
        let v = n.vote.expect("has a vote");
        assert_eq!(
            (v.leader, v.epoch, v.connected),
            (NodeId(3), Epoch(2), false)
        );
        assert_eq!(
            n.to_bytes().as_ref(),
            &b[..],
            "and is written back unchanged"
        );
    }
}
