//! The membership a configuration entry carries: who votes and who
//! observes. Encoded in the log (an [`EntryKind::Config`] entry), in
//! snapshots' metadata and on the wire; decoded from untrusted bytes with
//! every length checked first.
//!
//! Layout (little-endian): `voters u16 | observers u16 | ids u64 *`,
//! then, when the context is not empty, `context_len u32 | context`.

use bytes::{BufMut, Bytes, BytesMut};

#[cfg(doc)]
use crate::EntryKind;
use crate::NodeId;

/// Most members a configuration may name (voters and observers together).
pub const MAX_MEMBERS: usize = 1024;

/// Largest [`Membership::context`], in bytes.
pub const MAX_CONTEXT_BYTES: usize = 64 * 1024;

/// Largest encoding of a valid membership, in bytes.
pub const MAX_ENCODED_BYTES: usize = 4 + 8 * MAX_MEMBERS + 4 + MAX_CONTEXT_BYTES;

/// The members of a group: voters form quorums; observers learn committed
/// entries and never count.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Membership {
    /// The voting members.
    pub voters: Vec<NodeId>,
    /// The non-voting learners.
    pub observers: Vec<NodeId>,
    /// Bytes the application keeps with the configuration, opaque to the
    /// kernel and replicated with it (the reference service keeps its
    /// members' addresses here, so a member added at run time is reachable
    /// by every node). At most [`MAX_CONTEXT_BYTES`].
    pub context: Bytes,
}

/// Why bytes are not a valid [`Membership`], or why a membership is not
/// a valid configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// The bytes end early or have bytes left over.
    #[error("membership of {len} bytes is malformed: {what}")]
    Malformed {
        /// The input's length.
        len: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// No voter.
    #[error("a configuration needs at least one voter")]
    NoVoters,
    /// More members than [`MAX_MEMBERS`].
    #[error("{0} members exceed the limit of {MAX_MEMBERS}")]
    TooMany(usize),
    /// A context over [`MAX_CONTEXT_BYTES`].
    #[error("a context of {0} bytes exceeds the limit of {MAX_CONTEXT_BYTES}")]
    ContextTooLarge(usize),
    /// A node named twice (or both voter and observer).
    #[error("node {0} is named twice")]
    Duplicate(NodeId),
}

impl Membership {
    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Whether `id` observes.
    pub fn is_observer(&self, id: NodeId) -> bool {
        self.observers.contains(&id)
    }

    /// Whether `id` is a member at all.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_observer(id)
    }

    /// Whether the two name the same voters and observers (in any order),
    /// whatever their contexts.
    pub fn same_members(&self, other: &Membership) -> bool {
        if self.voters.len() != other.voters.len() || self.observers.len() != other.observers.len()
        {
            return false;
        }
        if self.voters == other.voters && self.observers == other.observers {
            // The usual answer, without sorting copies.
            return true;
        }
        let sorted = |v: &[NodeId]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v
        };
        sorted(&self.voters) == sorted(&other.voters)
            && sorted(&self.observers) == sorted(&other.observers)
    }

    /// Checks the membership is a usable configuration.
    pub fn validate(&self) -> Result<(), MembershipError> {
        if self.voters.is_empty() {
            return Err(MembershipError::NoVoters);
        }
        if self.context.len() > MAX_CONTEXT_BYTES {
            return Err(MembershipError::ContextTooLarge(self.context.len()));
        }
        let n = self.voters.len() + self.observers.len();
        if n > MAX_MEMBERS {
            return Err(MembershipError::TooMany(n));
        }
        let mut seen: Vec<NodeId> = self.voters.iter().chain(&self.observers).copied().collect();
        seen.sort_unstable();
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return Err(MembershipError::Duplicate(w[0]));
        }
        Ok(())
    }

    /// The encoding (see the module docs).
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(
            4 + 8 * (self.voters.len() + self.observers.len()) + 4 + self.context.len(),
        );
        b.put_u16_le(self.voters.len().min(MAX_MEMBERS) as u16);
        b.put_u16_le(self.observers.len().min(MAX_MEMBERS) as u16);
        for id in self
            .voters
            .iter()
            .take(MAX_MEMBERS)
            .chain(self.observers.iter().take(MAX_MEMBERS))
        {
            b.put_u64_le(id.0);
        }
        if !self.context.is_empty() {
            let context = &self.context[..self.context.len().min(MAX_CONTEXT_BYTES)];
            b.put_u32_le(context.len() as u32);
            b.put_slice(context);
        }
        b.freeze()
    }

    /// Decodes and validates an encoding.
    pub fn decode(b: &[u8]) -> Result<Membership, MembershipError> {
        let bad = |what| MembershipError::Malformed { len: b.len(), what };
        let header = b.get(..4).ok_or_else(|| bad("shorter than its header"))?;
        let voters = usize::from(u16::from_le_bytes([header[0], header[1]]));
        let observers = usize::from(u16::from_le_bytes([header[2], header[3]]));
        if voters + observers > MAX_MEMBERS {
            return Err(MembershipError::TooMany(voters + observers));
        }
        let ids_end = 4 + 8 * (voters + observers);
        if b.len() < ids_end {
            return Err(bad("shorter than its member counts say"));
        }
        let context = match b.len() - ids_end {
            0 => Bytes::new(),
            1..=3 => return Err(bad("a context length is cut short")),
            _ => {
                let mut l = [0u8; 4];
                l.copy_from_slice(&b[ids_end..ids_end + 4]);
                let len = u32::from_le_bytes(l) as usize;
                if len > MAX_CONTEXT_BYTES {
                    return Err(MembershipError::ContextTooLarge(len));
                }
                if len == 0 || b.len() - ids_end - 4 != len {
                    return Err(bad("the context length does not match the bytes left"));
                }
                Bytes::copy_from_slice(&b[ids_end + 4..])
            }
        };
        let id = |k: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[4 + 8 * k..12 + 8 * k]);
            NodeId(u64::from_le_bytes(a))
        };
        let m = Membership {
            voters: (0..voters).map(id).collect(),
            observers: (voters..voters + observers).map(id).collect(),
            context,
        };
        m.validate()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_input() {
        let plain = Membership {
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            observers: vec![NodeId(9)],
            ..Membership::default()
        };
        let with_context = Membership {
            context: Bytes::from_static(b"addresses"),
            ..plain.clone()
        };
        for m in [&plain, &with_context] {
            let b = m.encode();
            assert_eq!(Membership::decode(&b), Ok(m.clone()));
            // Cut anywhere but at the end of the ids, the bytes are refused
            // (cut there, a context is simply absent).
            for cut in 0..b.len() {
                let ids_end = 4 + 8 * 4;
                if cut != ids_end {
                    assert!(Membership::decode(&b[..cut]).is_err(), "cut at {cut}");
                }
            }
            let mut long = b.to_vec();
            long.push(0);
            assert!(Membership::decode(&long).is_err());
        }
        assert!(plain.same_members(&with_context));
        assert_ne!(plain, with_context);
        // A context length claim over the bound is refused before reading.
        let mut huge = plain.encode().to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            Membership::decode(&huge),
            Err(MembershipError::ContextTooLarge(u32::MAX as usize))
        );
        let dup = Membership {
            voters: vec![NodeId(1), NodeId(2)],
            observers: vec![NodeId(2)],
            ..Membership::default()
        };
        assert_eq!(
            Membership::decode(&dup.encode()),
            Err(MembershipError::Duplicate(NodeId(2)))
        );
        let none = Membership {
            voters: vec![],
            observers: vec![NodeId(1)],
            ..Membership::default()
        };
        assert_eq!(
            Membership::decode(&none.encode()),
            Err(MembershipError::NoVoters)
        );
        // A huge count claim is refused before anything is read.
        assert_eq!(
            Membership::decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(MembershipError::TooMany(131_070))
        );
    }
}
