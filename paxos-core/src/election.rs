//! The election seam: how a replica learns who leads.
//!
//! `paxos-core` does not elect. An [`Elector`] (for example
//! `paxos-election`'s fast leader election) runs beside the replica; the
//! caller forwards its messages and timers, and hands each [`Decision`] to the
//! replica. The replica, in turn, tells the caller when it has lost its
//! leader, and the caller calls [`Elector::start_looking`] with the
//! replica's [`VoteInfo`]. Nothing here depends on any particular election
//! algorithm, so the dependency graph stays acyclic: `paxos-election`
//! depends on `paxos-core`, never the other way round.

use crate::{Epoch, NodeId, Time, Zxid};

/// What a replica offers when it stands for election: its history's recency.
///
/// Votes are ordered by `(current_epoch, last_zxid, node id)`, highest wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VoteInfo {
    /// The epoch whose leader's history the replica has taken (ZAB NEWLEADER).
    pub current_epoch: Epoch,
    /// The last zxid in the replica's log.
    pub last_zxid: Zxid,
}

/// A node's participation state, as an election announces it to its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// Looking for a leader.
    Looking,
    /// Following an established leader.
    Following,
    /// Leading.
    Leading,
    /// A non-voting learner.
    Observing,
}

/// The outcome of an election round: who should lead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The elected node.
    pub leader: NodeId,
    /// The election round that decided.
    pub round: u64,
    /// The epoch the winner's vote carried; the leader's new epoch will be
    /// higher than every accepted epoch of its quorum, not this one.
    pub epoch_hint: Epoch,
}

/// A sans-IO leader election component.
///
/// The caller owns the clock and the network: it feeds messages and
/// timeouts in, drains [`poll_transmit`](Elector::poll_transmit) and
/// [`poll_decision`](Elector::poll_decision) after every input, and arms a
/// timer for [`poll_timeout`](Elector::poll_timeout).
pub trait Elector {
    /// The election's own message type (it travels in its own codec).
    type Message: Clone + std::fmt::Debug;

    /// This node's id.
    fn id(&self) -> NodeId;

    /// Start (or restart) looking for a leader, voting first for ourselves
    /// with `me`.
    fn start_looking(&mut self, now: Time, me: VoteInfo);

    /// Like [`start_looking`](Elector::start_looking), for a replica whose
    /// leader handed it the leadership (TAKEOVER): it stands as the
    /// nominee, and an elector that supports hand-overs prefers its vote to
    /// any other vote of equal recency, so the hand-over picks it rather
    /// than another up-to-date voter. The default ignores the nomination
    /// (the election then picks among the up-to-date voters as usual).
    fn start_looking_nominated(&mut self, now: Time, me: VoteInfo) {
        self.start_looking(now, me);
    }

    /// The membership changed: count and answer these voters and
    /// observers from now on. A node that is not among `voters` no longer
    /// stands. The node layer passes the membership committed as far as
    /// this node knows (see [`Event::MembershipChanged`] for the one in
    /// force, which the kernel's quorums use).
    ///
    /// The default does nothing, which stays safe (the kernel counts its
    /// quorums under the membership in force, whatever the elector
    /// decides) but may leave the elector waiting for removed voters or
    /// deaf to new ones: implement it.
    ///
    /// [`Event::MembershipChanged`]: crate::Event::MembershipChanged
    fn reconfigure(&mut self, now: Time, voters: &[NodeId], observers: &[NodeId]) {
        let _ = (now, voters, observers);
    }

    /// Like [`reconfigure`](Elector::reconfigure), with the voters of a
    /// newer membership this node holds in force but does not know to be
    /// committed (`pending`, empty when there is none): from now on a
    /// quorum of `voters` *or* a quorum of `pending` decides, and the votes
    /// of both sets count. The node layer calls this rather than
    /// `reconfigure`.
    ///
    /// Why both: a leader may commit a change and be lost before any
    /// survivor hears of the commit. If the change removed a voter that was
    /// then shut down, the survivors are a quorum of the membership in
    /// force (the committed one) but not of the one they know committed,
    /// and counting only the latter, no election could ever decide. The
    /// committed one is still needed: a lagging node's stale change, or a
    /// newcomer not yet told that it votes, would keep elections counted
    /// only under the membership in force from deciding.
    ///
    /// The default ignores `pending` (the caller passes its members among
    /// `observers` too), which keeps the behaviour of an elector written
    /// before this method existed.
    fn reconfigure_with_pending(
        &mut self,
        now: Time,
        voters: &[NodeId],
        pending: &[NodeId],
        observers: &[NodeId],
    ) {
        let _ = pending;
        self.reconfigure(now, voters, observers);
    }

    /// The replica has settled: it follows or leads `leader` in `epoch`.
    /// From now on the elector answers LOOKING peers with that leader.
    fn settle(&mut self, now: Time, state: PeerState, leader: NodeId, epoch: Epoch);

    /// A message from a peer.
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Self::Message);

    /// The deadline of [`poll_timeout`](Elector::poll_timeout) has passed.
    fn handle_timeout(&mut self, now: Time);

    /// The next deadline at which [`handle_timeout`](Elector::handle_timeout)
    /// must be called. Changes after any input.
    fn poll_timeout(&self) -> Option<Time>;

    /// The next message to send.
    fn poll_transmit(&mut self) -> Option<(NodeId, Self::Message)>;

    /// A decision, once per decided round.
    fn poll_decision(&mut self) -> Option<Decision>;

    /// The election round this elector is in, for electors whose rounds
    /// must survive a restart (one vote per round): the node layer makes a
    /// new round durable before any message of it is sent. `None` (the
    /// default) for electors without such rounds.
    fn round(&self) -> Option<u64> {
        None
    }

    /// Whether this node's votes may count. A voter whose replica is
    /// *recovering* ([`Event::RecoveryStarted`](crate::Event::RecoveryStarted))
    /// must abstain: it still learns who leads, like an observer, but it
    /// neither stands nor lets peers count its vote, until
    /// [`Event::RecoveryComplete`](crate::Event::RecoveryComplete).
    ///
    /// The default does nothing. That stays safe, because the kernel never
    /// counts a recovering replica in any quorum (discovery, sync, commit,
    /// check-quorum, reads), so an elector that ignores this can only elect
    /// leaders that then fail to establish; implement it to spare those
    /// elections.
    fn set_voting(&mut self, now: Time, voting: bool) {
        let _ = (now, voting);
    }

    /// The host's word on whether it can reach `node`: `false` once it
    /// heard nothing from that node for an election timeout, `true` when
    /// it hears it again. An elector may use it to stop waiting for the
    /// votes of unreachable nodes; it must never count it as a vote.
    ///
    /// The default does nothing, which is always safe: the word only saves
    /// time.
    fn set_reachable(&mut self, now: Time, node: NodeId, reachable: bool) {
        let _ = (now, node, reachable);
    }
}
