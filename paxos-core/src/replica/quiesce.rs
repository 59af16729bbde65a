//! Quiescence: an idle group stops its timers (see
//! [`Config::quiesce_after`](crate::Config::quiesce_after)).
//!
//! A node hosting thousands of groups cannot afford heartbeats and
//! election timers for each of them while most are idle. The leader of a
//! group that has been idle for `quiesce_after` (every live member holds
//! its last entry, committed and applied, nothing in flight) sends QUIESCE
//! and stops heartbeating and checking its quorum; a follower that holds
//! the commit point it names stops its election timer. Neither changes
//! what is accepted or committed: only timers stop, so safety is
//! untouched. Liveness needs the host: a quiesced follower cannot notice
//! that its leader died, so the host wakes it ([`Replica::wake`]) when it
//! loses the leader's node; a node's election messages wake it too (the
//! node layer does that), and so does any message of its leader.
//!
//! A woken leader heartbeats at once and counts its check-quorum from the
//! wake for the peers it has not heard since (not from the quiet time,
//! which would make it step down at once); its read leases are untouched:
//! they come from acknowledgements only, so after a quiet spell longer
//! than a lease the first read confirms with a quorum round.

use crate::message::Message;
use crate::storage::Storage;
use crate::{NodeId, Time, Zxid};

use super::progress::PPhase;
use super::{FPhase, LPhase, Replica, Role};

impl<S: Storage> Replica<S> {
    /// Whether this replica's group is quiesced (its leader stopped
    /// heartbeating, or as a follower it stopped its election timer).
    pub fn is_quiesced(&self) -> bool {
        match &self.role {
            Role::Leading(l) => l.quiesced,
            Role::Following(f) => f.quiesced,
            Role::Looking => false,
        }
    }

    /// Ends quiescence: a leader heartbeats at once, a follower starts its
    /// election timer from `now`. Harmless when not quiesced. Call it when
    /// the node of this group's leader (or, for a leader, of any member)
    /// is lost, and before acting for a client.
    pub fn wake(&mut self, now: Time) {
        // Only a quiesced replica changes (its clock reading included), so
        // waking an active group leaves its run exactly as it was.
        match &mut self.role {
            Role::Leading(l) => {
                if l.quiesced {
                    self.now = now;
                    l.quiet_since = None;
                    l.quiesced = false;
                    l.resumed_at = now;
                    l.hb_due = now;
                    tracing::debug!(id = %self.id, "woken: heartbeats resume");
                }
            }
            Role::Following(f) => {
                if f.quiesced {
                    self.now = now;
                    f.quiesced = false;
                    f.last_heard = now;
                    tracing::debug!(id = %self.id, leader = %f.leader, "woken: election timer restarts");
                }
            }
            Role::Looking => {}
        }
    }

    /// The host lost the node of this replica's leader: nothing at all was
    /// heard from it for an election timeout, on any group. A quiesced
    /// follower (whose own election timer is stopped) looks for a leader at
    /// once rather than waking and waiting out a second timeout; any other
    /// replica is only woken (a follower still hearing its leader's
    /// messages keeps it). Safety is untouched: looking is always allowed.
    pub fn leader_node_lost(&mut self, now: Time, node: NodeId) {
        let quiet_follower =
            matches!(&self.role, Role::Following(f) if f.quiesced && f.leader == node);
        if quiet_follower {
            self.now = now;
            self.lose_leader("the leader's node is silent (host heartbeats)");
        } else {
            self.wake(now);
        }
    }

    /// Whether the group is idle now, as the leader sees it: established
    /// and in broadcast, nothing proposed beyond the commit point, nothing
    /// in flight, and every peer heard lately holding, acknowledging and
    /// having applied the last entry (a quorum of voters among them; a
    /// peer not heard for an election timeout is down and does not hold
    /// quiescence back: it wakes the leader when it comes back).
    fn idle(&self, now: Time) -> bool {
        let Role::Leading(l) = &self.role else {
            return false;
        };
        let last = self.log.last();
        if l.phase != LPhase::Broadcast
            || l.transfer.is_some()
            || !l.reads.is_empty()
            || self.membership_change_pending().is_some()
            || self.commit != last
            || self.applied != last
        {
            return false;
        }
        let alive = self.config.election_timeout;
        let mut caught_up: Vec<NodeId> = vec![self.id];
        for (&n, p) in &l.peers {
            if now.saturating_since(p.last_heard) > alive {
                continue;
            }
            let done = p.phase == PPhase::Broadcast
                && p.match_zxid == last
                && p.inflight.is_empty()
                && p.commit_sent >= last
                && p.applied >= last
                && !p.recovering
                && p.readmit_round.is_none()
                && !p.readmitted;
            if !done {
                return false;
            }
            caught_up.push(n);
        }
        self.config.is_quorum(|v| caught_up.contains(&v))
    }

    /// At a heartbeat: quiesce if the group has been idle long enough.
    /// Returns whether it is quiesced (no heartbeat is then sent).
    pub(super) fn maybe_quiesce(&mut self, now: Time) -> bool {
        let Some(after) = self.config.quiesce_after else {
            return false;
        };
        let idle = self.idle(now);
        let Role::Leading(l) = &mut self.role else {
            return false;
        };
        if !idle {
            l.quiet_since = None;
            return false;
        }
        let since = *l.quiet_since.get_or_insert(now);
        if now.saturating_since(since) < after {
            return false;
        }
        l.quiesced = true;
        let epoch = l.epoch;
        let commit = self.commit;
        let peers: Vec<NodeId> = l.peers.keys().copied().collect();
        tracing::debug!(id = %self.id, ?commit, "group idle: quiescing");
        for n in peers {
            self.send(n, Message::Quiesce { epoch, commit });
        }
        true
    }

    /// A follower's QUIESCE from its leader: stop the election timer if
    /// this follower holds the commit point it names.
    pub(super) fn on_quiesce(&mut self, from: NodeId, epoch: crate::Epoch, commit: Zxid) {
        let last = self.log.last();
        let Role::Following(f) = &mut self.role else {
            return;
        };
        if f.leader == from && f.epoch == epoch && f.phase == FPhase::Broadcast && last == commit {
            f.quiesced = true;
        }
    }
}
