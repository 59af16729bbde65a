//! Leader transfer: an established leader hands its leadership to a named
//! voter. It stops proposing, waits until the target holds every entry it
//! has durably, then tells every member (TAKEOVER) and steps down at once,
//! so its lease ends before anyone looks for a new leader; the target
//! stands as the nominee of the election that follows.
//!
//! Invariants: nothing is proposed while a hand-over is in progress; the
//! TAKEOVER leaves only when the target's durable log ends at the leader's
//! last zxid, so the nominee's history is the most recent of the group; a
//! hand-over that does not complete within an election timeout is aborted
//! and the leader proposes again.

use crate::message::Message;
use crate::ready::{Event, TransferError};
use crate::storage::Storage;
use crate::{NodeId, Time};

use super::leader::LPhase;
use super::progress::PPhase;
use super::{Replica, Role};

/// A hand-over in progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Transfer {
    /// The nominated successor.
    pub(super) to: NodeId,
    /// When the hand-over is given up if the target has not caught up.
    pub(super) deadline: Time,
}

impl<S: Storage> Replica<S> {
    /// Leader: hands the leadership to the voter `to`. From now on the
    /// leader refuses proposals ([`ProposeError::Transferring`]) and serves
    /// no lease reads; once `to` holds every entry durably, the leader sends
    /// TAKEOVER to every member and steps down ([`Event::HandedOff`], then
    /// [`Event::LostLeader`]), and
    /// `to` stands for election as the nominee ([`Event::HandedOver`]). If
    /// `to` has not caught up within an election timeout the hand-over is
    /// aborted ([`Event::TransferAborted`]) and proposals resume.
    ///
    /// The election decides: a nominee that loses connectivity meanwhile
    /// may not win, and another up-to-date voter leads instead.
    ///
    /// [`ProposeError::Transferring`]: crate::ProposeError::Transferring
    pub fn transfer_leadership(&mut self, now: Time, to: NodeId) -> Result<(), TransferError> {
        self.now = now;
        let leader = self.leader();
        let id = self.id;
        let timeout = self.config.election_timeout;
        let is_voter = self.config.is_voter(to);
        let Role::Leading(l) = &mut self.role else {
            return Err(TransferError::NotLeader { leader });
        };
        if l.phase != LPhase::Broadcast {
            return Err(TransferError::NotLeader { leader: None });
        }
        if to == id {
            return Err(TransferError::AlreadyLeader(to));
        }
        if !is_voter {
            return Err(TransferError::NotAVoter(to));
        }
        if let Some(t) = l.transfer {
            return Err(TransferError::InProgress { to: t.to });
        }
        let Some(p) = l.peers.get(&to) else {
            return Err(TransferError::TargetUnreachable(to));
        };
        if p.recovering {
            return Err(TransferError::TargetRecovering(to));
        }
        // Counted from the last wake if the group was quiesced (nothing
        // is heard while quiet); a dead target then times the hand-over out.
        if now.saturating_since(p.last_heard.max(l.resumed_at)) > timeout {
            return Err(TransferError::TargetUnreachable(to));
        }
        tracing::info!(%id, %to, epoch = ?l.epoch, "leader transfer: proposals stop until the target has caught up");
        l.transfer = Some(Transfer {
            to,
            deadline: now + timeout,
        });
        self.advance_transfer();
        Ok(())
    }

    /// Leader: the target of the hand-over in progress, if any.
    pub fn transferring_to(&self) -> Option<NodeId> {
        match &self.role {
            Role::Leading(l) => l.transfer.map(|t| t.to),
            _ => None,
        }
    }

    /// After a TAKEOVER for `epoch` (sent or received): take `to` as the
    /// leader, as if an election had decided it (the elector runs its own
    /// round meanwhile and, preferring the nominee, normally agrees).
    pub(super) fn follow_nominee(&mut self, epoch: crate::Epoch, to: NodeId) {
        let now = self.now;
        self.handle_leader_decision(
            now,
            crate::Decision {
                leader: to,
                round: 0,
                epoch_hint: epoch,
            },
        );
    }

    /// Hands over once the target has caught up; aborts past the deadline.
    pub(super) fn advance_transfer(&mut self) {
        let now = self.now;
        let last = self.log.last();
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let Some(t) = l.transfer else {
            return;
        };
        let caught_up = l
            .peers
            .get(&t.to)
            .is_some_and(|p| p.phase == PPhase::Broadcast && !p.recovering && p.match_zxid == last);
        if !caught_up {
            // Lost ACCEPTs to the target would wait for the sync timeout
            // to be sent again, past the hand-over's deadline: go back to
            // what it holds once they are a heartbeat old.
            let hb = self.config.heartbeat_interval;
            if let Some(p) = l.peers.get_mut(&t.to).filter(|p| {
                p.phase == PPhase::Broadcast
                    && p.inflight
                        .front()
                        .is_some_and(|(_, sent)| now.saturating_since(*sent) > hb)
            }) {
                p.inflight.clear();
                p.next_prev = p.match_zxid;
            }
            if now >= t.deadline {
                l.transfer = None;
                tracing::warn!(id = %self.id, to = %t.to, ?last, "leader transfer aborted: the target did not catch up within the election timeout; proposing again");
                self.out.events.push(Event::TransferAborted { to: t.to });
            }
            return;
        }
        let epoch = l.epoch;
        tracing::info!(id = %self.id, to = %t.to, ?epoch, ?last, "leader transfer: the target holds every entry; handing over");
        let members: Vec<NodeId> = self
            .config
            .voters
            .iter()
            .chain(&self.config.observers)
            .copied()
            .filter(|n| *n != self.id)
            .collect();
        for n in members {
            self.send(n, Message::TakeOver { epoch, to: t.to });
        }
        self.out.events.push(Event::HandedOff { to: t.to });
        self.lose_leader("handed the leadership over");
        // Follow the nominee at once rather than wait for an election: the
        // nominee and every member that got TAKEOVER do likewise, so the
        // new epoch starts within a round trip. Discovery is safe whoever
        // leads; if the nominee fails, followers time out and elect.
        self.follow_nominee(epoch, t.to);
    }
}
