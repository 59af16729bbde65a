//! Linearizable reads: read-index (a heartbeat round a quorum confirms) and
//! lease reads, for the leader's clients and on behalf of followers.
//!
//! Invariant: a read answers at the commit point it arrived at, only once a
//! quorum of counted voters confirmed the leader after that (or a lease
//! from one still runs); pending reads are bounded and aborted on step-down.

use bytes::Bytes;

use crate::message::Message;
use crate::ready::{ReadIndexError, ReadState};
use crate::storage::Storage;
use crate::{NodeId, Time, Zxid};

use super::follower::FPhase;
use super::leader::LPhase;
use super::{Replica, Role};
#[cfg(doc)]
use crate::{Config, Event, Ready};

/// Pending read-index requests kept at most.
const MAX_PENDING_READS: usize = 4096;

#[derive(Debug)]
pub(super) struct PendingRead {
    pub(super) ctx: Bytes,
    pub(super) zxid: Zxid,
    pub(super) round: u64,
    pub(super) from: Option<NodeId>,
}

impl<S: Storage> Replica<S> {
    /// Starts a linearizable read. The answer comes as a [`ReadState`] in
    /// a later [`Ready`] (serve it once applied up to its zxid), or as
    /// [`Event::ReadAborted`].
    ///
    /// By default the leader confirms its leadership with a heartbeat round
    /// acknowledged by a quorum. With [`Config::lease_reads`] it answers at
    /// once while a quorum acknowledged a heartbeat sent less than
    /// `election_timeout - lease_clock_drift` ago. That is safe only if
    /// clocks drift apart by less than `lease_clock_drift` over an election
    /// timeout *and* the elector never lets a follower follow another
    /// leader within the election timeout of hearing from this one.
    ///
    /// `now` is the time of the read: a lease is judged then, not at the
    /// last input (a leader paused for longer than its lease may get a read
    /// as its first input after the pause).
    pub fn read_index(&mut self, now: Time, ctx: Bytes) -> Result<(), ReadIndexError> {
        self.now = now;
        match &self.role {
            Role::Leading(l) if l.phase == LPhase::Broadcast => self.leader_read(ctx, None),
            Role::Following(f) if f.phase == FPhase::Broadcast => {
                let (leader, epoch) = (f.leader, f.epoch);
                self.send(leader, Message::ReadIndexRequest { epoch, ctx });
                Ok(())
            }
            _ => Err(ReadIndexError::NoLeader),
        }
    }

    pub(super) fn leader_read(
        &mut self,
        ctx: Bytes,
        from: Option<NodeId>,
    ) -> Result<(), ReadIndexError> {
        let now = self.now;
        let me = self.id;
        let lease_for = self
            .config
            .election_timeout
            .saturating_sub(self.config.lease_clock_drift);
        let lease = self.config.lease_reads;
        let Role::Leading(l) = &mut self.role else {
            return Err(ReadIndexError::NoLeader);
        };
        let zxid = self.commit;
        let single = self.config.voters.len() == 1;
        // No lease while handing over: the leader may step down any moment.
        let lease_ok = lease
            && l.transfer.is_none()
            && self.config.is_quorum(|n| {
                n == me
                    || l.peers.get(&n).is_some_and(|p| {
                        !p.recovering && p.lease_from + lease_for > now && p.lease_from > l.started
                    })
            });
        if single || lease_ok {
            let epoch = l.epoch;
            match from {
                None => self.out.read_states.push(ReadState { ctx, zxid }),
                Some(f) => self.send(
                    f,
                    Message::ReadIndexResponse {
                        epoch,
                        ctx,
                        zxid: Some(zxid),
                    },
                ),
            }
            return Ok(());
        }
        if l.reads.len() >= MAX_PENDING_READS {
            return Err(ReadIndexError::Busy);
        }
        l.reads.push_back(PendingRead {
            ctx,
            zxid,
            round: l.hb_round + 1,
            from,
        });
        self.send_heartbeats(now);
        Ok(())
    }

    pub(super) fn resolve_reads(&mut self) {
        let me = self.id;
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let epoch = l.epoch;
        let mut done = Vec::new();
        while let Some(r) = l.reads.front() {
            let round = r.round;
            let ok = self.config.is_quorum(|n| {
                n == me
                    || l.peers
                        .get(&n)
                        .is_some_and(|p| !p.recovering && p.hb_acked >= round)
            });
            if !ok {
                break;
            }
            if let Some(r) = l.reads.pop_front() {
                done.push(r);
            }
        }
        for r in done {
            match r.from {
                None => self.out.read_states.push(ReadState {
                    ctx: r.ctx,
                    zxid: r.zxid,
                }),
                Some(f) => self.send(
                    f,
                    Message::ReadIndexResponse {
                        epoch,
                        ctx: r.ctx,
                        zxid: Some(r.zxid),
                    },
                ),
            }
        }
    }
}
