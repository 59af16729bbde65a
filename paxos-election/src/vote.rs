//! Votes and the one message the election exchanges.

use std::cmp::Ordering;

use paxos_core::{Epoch, NodeId, PeerState, VoteInfo, Zxid};

/// A vote: a proposed leader with the recency of its history.
///
/// Votes are totally ordered by `(connected, epoch, zxid, nominated,
/// leader)`, highest wins: a candidate connected to a quorum is preferred
/// to any other, then the node with the most recent history; among equally
/// connected and equally recent candidates the nominee of a leader's
/// hand-over wins, and the node id breaks the remaining ties. That is the
/// order of `Ord`; an elector configured with a
/// [`tiebreak`](crate::ElectionConfig::tiebreak) salt breaks the last tie
/// by a salted hash of the node id instead ([`Vote::ranked`]).
///
/// The nomination ranks *after* connectivity and recency on purpose:
///
/// - After recency, so that a hand-over never elects a node behind another
///   voter: the nomination only chooses among the up-to-date candidates,
///   as the node id would otherwise (the kernel hands over only to a
///   caught-up voter, so in the normal case the nominee is among them).
/// - After connectivity, so that the connectivity rule keeps its meaning:
///   a nominee that cannot reach a quorum stands unconnected, loses to any
///   connected vote and, being unconnected, is never locked. Ranked before
///   connectivity, its unlockable vote would beat every lockable one, so
///   voters that adopted it could lock nothing in the round: a nominee cut
///   off right after the hand-over would stall the election instead of
///   losing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vote {
    /// The proposed leader.
    pub leader: NodeId,
    /// The proposed leader's `current_epoch`.
    pub epoch: Epoch,
    /// The proposed leader's last zxid.
    pub zxid: Zxid,
    /// The proposed leader said, when it stood in this round, that it had
    /// recently heard from a quorum of voting voters (itself included).
    /// Under the connectivity rule only such a vote can be locked, so a
    /// node that cannot reach a quorum never wins (see the crate docs).
    pub connected: bool,
    /// The proposed leader stood as the nominee of a leader's hand-over
    /// ([`Elector::start_looking_nominated`](paxos_core::Elector::start_looking_nominated)):
    /// it wins over votes of equal connectivity and recency. Only a
    /// looking vote carries it; a settled node announces its leader without
    /// it.
    pub nominated: bool,
}

impl Vote {
    /// A vote for `leader`, whose history is described by `info`, claiming
    /// neither connectivity (see [`with_connected`](Self::with_connected))
    /// nor a nomination (see [`with_nominated`](Self::with_nominated)).
    pub const fn new(leader: NodeId, info: VoteInfo) -> Vote {
        Vote {
            leader,
            epoch: info.current_epoch,
            zxid: info.last_zxid,
            connected: false,
            nominated: false,
        }
    }

    /// The same vote with the connectivity claim set to `connected`.
    pub const fn with_connected(self, connected: bool) -> Vote {
        Vote { connected, ..self }
    }

    /// The same vote with the nomination claim set to `nominated`.
    pub const fn with_nominated(self, nominated: bool) -> Vote {
        Vote { nominated, ..self }
    }

    /// The recency part of the vote.
    pub const fn info(&self) -> VoteInfo {
        VoteInfo {
            current_epoch: self.epoch,
            last_zxid: self.zxid,
        }
    }

    /// Whether `other` proposes the same candidate with the same history
    /// and connectivity, whatever either says about a nomination. Locks
    /// are counted by this relation: a settled node announces the vote it
    /// elected without the nomination, and its lock must still count with
    /// those of the voters that locked the nominated vote.
    pub(crate) fn same_candidate(&self, other: &Vote) -> bool {
        self.with_nominated(false) == other.with_nominated(false)
    }

    /// The vote's place in the order an elector with tie-break salt `salt`
    /// uses (see [`ElectionConfig::tiebreak`](crate::ElectionConfig::tiebreak)):
    /// `(connected, epoch, zxid, nominated, rank, leader)`, where `rank` is
    /// the node id for salt 0 and a salted hash of it otherwise (the id
    /// after it keeps the order total should two ids hash alike).
    pub fn ranked(&self, salt: u64) -> (bool, Epoch, Zxid, bool, u64, NodeId) {
        (
            self.connected,
            self.epoch,
            self.zxid,
            self.nominated,
            tiebreak_rank(salt, self.leader),
            self.leader,
        )
    }
}

/// A node id's rank among equally good candidates under tie-break salt
/// `salt`: the id itself for 0, else a mix of both (splitmix64's
/// finaliser), so that each salt orders the ids differently.
fn tiebreak_rank(salt: u64, id: NodeId) -> u64 {
    if salt == 0 {
        return id.0;
    }
    let mut z = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(id.0);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Ord for Vote {
    fn cmp(&self, other: &Self) -> Ordering {
        self.ranked(0).cmp(&other.ranked(0))
    }
}

impl PartialOrd for Vote {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The election's only message: a node's current vote and state.
///
/// A LOOKING node sends its proposal for its current `round`; a node that
/// has settled (FOLLOWING, LEADING, OBSERVING) sends the leader it settled on
/// and the round in which that leader was elected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Notification {
    /// The proposed (LOOKING) or current (settled) leader; `None` while an
    /// observer, or a voter that may not lead, has no candidate yet.
    pub vote: Option<Vote>,
    /// The sender's election round (LOOKING) or the round that elected its
    /// leader (settled).
    pub round: u64,
    /// The sender's state.
    pub state: PeerState,
    /// The sender will not change its vote in `round` any more: it has
    /// locked it after a quorum held it for the settle wait, or it knows the
    /// vote was elected in `round`. A decision needs a quorum of locks.
    pub locked: bool,
    /// The sender abstains: its replica is recovering (it lost its
    /// durable state). Nobody counts, adopts or records this notification,
    /// whatever the receiver's view of the sender's role; it only asks for
    /// (and may carry) the sender's view.
    pub abstain: bool,
}
