//! Recovering replicas (durable state lost): not counted by any leader
//! until one readmits them.
//!
//! Invariant: a leader readmits a follower only if its epoch was
//! established without it, the follower durably holds that epoch's history,
//! and other voters confirmed the epoch since (see `Replica::try_readmit`).
//!
//! Liveness: a leader whose epoch was established with the follower's
//! forgotten promise can never readmit it, and nothing else would end that
//! epoch while the group is healthy (a follower that lost its disk and came
//! back within an election timeout leaves every leader in place). Such a
//! leader hands its leadership to another voter that counts
//! (`Replica::hand_over_for_readmission`): the successor's epoch is
//! established without the recovering follower, which it then readmits.

use crate::message::{Envelope, Message};
use crate::ready::Event;
use crate::storage::Storage;
use crate::{NodeId, Time};

use super::leader::LPhase;
use super::progress::PPhase;
use super::{Replica, Role};
#[cfg(doc)]
use crate::Ready;

impl<S: Storage> Replica<S> {
    /// Marks this replica *recovering*: its durable state (log, hard state
    /// or both) was lost or damaged, so it may have forgotten promises and
    /// acknowledgements that other replicas counted. Call it right after
    /// [`Replica::new`], before the first [`ready`](Replica::ready), when
    /// the node is a member of an existing cluster and its data directory
    /// is empty or damaged (calling it later, or twice, is safe and only
    /// more conservative).
    ///
    /// A recovering replica:
    /// - never leads, and its elector must abstain
    ///   ([`Event::RecoveryStarted`], `Elector::set_voting(now, false)`);
    /// - follows a leader like any follower, but says so in FOLLOWERINFO,
    ///   and leaders count none of its promises or acknowledgements
    ///   (epoch establishment, NEWLEADER sync, commit, check-quorum, reads);
    /// - keeps the flag durably (the next `Ready`'s
    ///   [`recovering`](Ready::recovering)), so a restart mid-recovery
    ///   restarts it recovering;
    /// - is readmitted by an established leader that counted no
    ///   incarnation of it in establishing its epoch, once it durably holds
    ///   that leader's history (ACKNEWLEADER) and a quorum of the *other*
    ///   voters has since confirmed the leader; it then durably clears the
    ///   flag and reports [`Event::RecoveryComplete`]. A leader that did
    ///   count an earlier incarnation hands its leadership to another
    ///   counted voter, whose new epoch can readmit it.
    pub fn mark_recovering(&mut self) {
        if self.recovering && self.readmit.is_none() {
            return;
        }
        tracing::warn!(id = %self.id, "entering recovering: state was lost; not counted until readmitted");
        self.recovering = true;
        self.readmit = None;
        self.recovering_write = Some(true);
        // Before any LostLeader of the same batch: the elector must
        // abstain before it starts looking.
        self.out.events.insert(0, Event::RecoveryStarted);
        if !matches!(self.role, Role::Looking) {
            self.lose_leader("entering recovering");
        }
    }

    /// Whether this replica is recovering (see
    /// [`mark_recovering`](Replica::mark_recovering)); false again once the
    /// cleared flag is durable.
    pub fn is_recovering(&self) -> bool {
        self.recovering
    }

    /// Established leader: every recovering follower that is durably
    /// synced in this epoch (ACKNEWLEADER received) and that no quorum of
    /// this epoch counted gets a readmission round: the next heartbeat
    /// round, sent after its acknowledgement arrived. Sends that round now.
    pub(super) fn arm_readmissions(&mut self, now: Time) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if l.phase != LPhase::Broadcast {
            return;
        }
        let next = l.hb_round + 1;
        let mut armed = false;
        for (n, p) in l.peers.iter_mut() {
            if p.recovering
                && p.readmit_round.is_none()
                && p.phase == PPhase::Broadcast
                && !l.helped.contains(n)
            {
                tracing::info!(leader = %self.id, follower = %n, round = next, "recovering follower synced; confirming leadership before readmission");
                p.readmit_round = Some(next);
                armed = true;
            }
        }
        if armed {
            self.send_heartbeats(now);
        }
        self.hand_over_for_readmission(now);
    }

    /// Established leader: if a live recovering follower, synced in this
    /// epoch, helped establish it (an earlier incarnation's promise or
    /// acknowledgement was counted), this leader can never readmit it.
    /// Hands the leadership to the counted voter that holds the most of the
    /// log (heard within an election timeout): its epoch is established
    /// without the recovering follower (whose messages no discovery
    /// counts), so it can readmit it. Called on the follower's ACKNEWLEADER
    /// and again on every heartbeat acknowledgement, so a hand-over that
    /// could not start (no such voter) or was aborted is tried again.
    ///
    /// Safety is untouched: a transfer is an ordinary hand-over (the
    /// target must hold every entry before TAKEOVER, the election decides).
    /// With no counted voter to hand over to, the leader stays: a new
    /// election could not be won without the recovering follower anyway.
    pub(super) fn hand_over_for_readmission(&mut self, now: Time) {
        let me = self.id;
        let alive = self.config.election_timeout;
        let Role::Leading(l) = &self.role else {
            return;
        };
        if l.phase != LPhase::Broadcast || l.transfer.is_some() {
            return;
        }
        let heard = |p: &super::progress::Peer| {
            now.saturating_since(p.last_heard.max(l.resumed_at)) <= alive
        };
        let Some((&stuck, _)) = l.peers.iter().find(|(n, p)| {
            p.recovering && p.phase == PPhase::Broadcast && l.helped.contains(n) && heard(p)
        }) else {
            return;
        };
        let target = l
            .peers
            .iter()
            .filter(|(n, p)| {
                **n != me
                    && self.config.is_voter(**n)
                    && !p.recovering
                    && p.phase == PPhase::Broadcast
                    && heard(p)
            })
            .max_by_key(|(n, p)| (p.match_zxid, std::cmp::Reverse(**n)))
            .map(|(n, _)| *n);
        let Some(to) = target else {
            return;
        };
        let epoch = l.epoch;
        tracing::info!(leader = %me, follower = %stuck, %to, ?epoch, "a recovering follower helped establish this epoch and cannot be readmitted in it; handing the leadership over so that a new epoch can readmit it");
        if let Err(e) = self.transfer_leadership(now, to) {
            tracing::debug!(leader = %me, %to, error = %e, "hand-over for readmission not started");
        }
    }

    /// Readmits the recovering followers whose readmission round a quorum
    /// of counted voters (this leader and non-recovering followers in this
    /// epoch) has acknowledged.
    ///
    /// Invariant (why readmission is safe): a recovering follower `r`
    /// becomes counted only when
    /// 1. this leader's epoch `e` was established by quorums that counted
    ///    no incarnation of `r` (`helped`), so every decision of an earlier
    ///    epoch, including those `r` helped make before it lost its state,
    ///    is in this leader's history (those quorums intersect every earlier
    ///    decision's quorum in a replica that remembers it);
    /// 2. `r` durably holds that history and `current_epoch = e`
    ///    (ACKNEWLEADER is sent only after those writes are synced); and
    /// 3. a quorum of voters other than `r` acknowledged a heartbeat of `e`
    ///    sent after that ACKNEWLEADER arrived, so `e` was still the epoch
    ///    of a quorum then: a leader that lost its quorum to a newer epoch
    ///    (possibly one `r` promised before losing its state) readmits no one.
    ///
    /// From then on `r` is as good as a follower that never lost anything
    /// and joined epoch `e` at that point. The residual gap: a promise `r`
    /// made before losing its state to a leader of a *higher* epoch whose
    /// discovery is still running, outside every quorum this leader
    /// heard (possible with five or more voters). With
    /// [`Config::strict_readmission`] step 3 needs every voter not known to
    /// be recovering, which includes that other leader (it holds its higher
    /// epoch durably, so it never acknowledges this one): no gap, but no
    /// readmission while a voter is unreachable.
    ///
    /// Then, for a recovering follower this epoch can never readmit, tries
    /// the hand-over of [`hand_over_for_readmission`](Self::hand_over_for_readmission).
    pub(super) fn try_readmit(&mut self) {
        self.readmit_confirmed();
        let now = self.now;
        self.hand_over_for_readmission(now);
    }

    /// The readmissions proper of [`try_readmit`](Self::try_readmit) (its
    /// invariant says why each is safe).
    fn readmit_confirmed(&mut self) {
        let me = self.id;
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if l.phase != LPhase::Broadcast {
            return;
        }
        let epoch = l.epoch;
        let ready: Vec<NodeId> = l
            .peers
            .iter()
            .filter_map(|(n, p)| {
                let r = p.readmit_round?;
                let acked = |v: NodeId| {
                    v == me
                        || l.peers.get(&v).is_some_and(|q| {
                            !q.recovering
                                && matches!(q.phase, PPhase::Synced | PPhase::Broadcast)
                                && q.hb_acked >= r
                        })
                };
                let confirmed = if self.config.strict_readmission {
                    // Every voter not known to be recovering.
                    self.config
                        .voters
                        .iter()
                        .all(|v| acked(*v) || l.peers.get(v).is_some_and(|q| q.recovering))
                        && self.config.is_quorum(acked)
                } else {
                    self.config.is_quorum(acked)
                };
                (p.recovering && p.phase == PPhase::Broadcast && confirmed).then_some(*n)
            })
            .collect();
        for n in ready {
            assert!(
                !l.helped.contains(&n),
                "readmission: {n} helped establish epoch {epoch:?} and cannot be readmitted in it"
            );
            let Some(p) = l.peers.get_mut(&n) else {
                continue;
            };
            tracing::info!(leader = %me, follower = %n, ?epoch, "readmitting recovering follower: it counts again");
            p.recovering = false;
            p.readmit_round = None;
            p.readmitted = true;
            self.out.messages.push(Envelope {
                group: self.config.group,
                from: me,
                to: n,
                msg: Message::Readmit { epoch },
            });
        }
    }
}
