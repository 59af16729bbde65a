//! Votes and the one message the election exchanges.

use std::cmp::Ordering;

use paxos_core::{Epoch, NodeId, PeerState, VoteInfo, Zxid};

/// A vote: a proposed leader with the recency of its history.
///
/// Votes are totally ordered by `(connected, epoch, zxid, leader)`, highest
/// wins: a candidate connected to a quorum is preferred to any other, then
/// the node with the most recent history, and the node id breaks ties.
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
}

impl Vote {
    /// A vote for `leader`, whose history is described by `info`, not
    /// claiming connectivity (see [`with_connected`](Self::with_connected)).
    pub const fn new(leader: NodeId, info: VoteInfo) -> Vote {
        Vote {
            leader,
            epoch: info.current_epoch,
            zxid: info.last_zxid,
            connected: false,
        }
    }

    /// The same vote with the connectivity claim set to `connected`.
    pub const fn with_connected(self, connected: bool) -> Vote {
        Vote { connected, ..self }
    }

    /// The recency part of the vote.
    pub const fn info(&self) -> VoteInfo {
        VoteInfo {
            current_epoch: self.epoch,
            last_zxid: self.zxid,
        }
    }

    fn key(&self) -> (bool, Epoch, Zxid, NodeId) {
        (self.connected, self.epoch, self.zxid, self.leader)
    }
}

impl Ord for Vote {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
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
    /// The sender abstains: a voter whose replica is recovering (it lost
    /// its durable state). Nobody counts, adopts or records this
    /// notification; it only asks for (and may carry) the sender's view,
    /// like an observer's.
    pub abstain: bool,
}
