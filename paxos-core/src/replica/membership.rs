//! Membership change: single-server changes carried as log entries.
//!
//! A change names the whole new [`Membership`]; it may differ from the one
//! in force by one node's role only (added or removed as a voter or an
//! observer, promoted or demoted). It takes effect on every replica when
//! the entry is appended, committed or not, and it is undone if a TRUNC
//! drops the entry. Quorums are always those of the membership in force.
//!
//! Invariants:
//! - one change at a time: a leader proposes one only once every earlier
//!   change is committed, and only once its epoch is established (its whole
//!   starting history committed under its own epoch: the rule that keeps
//!   two single-server changes from diverging across epochs), and once its
//!   state machine applied that history (so an application that checks
//!   its own state before a change has seen every older entry);
//! - any majority of a membership and any majority of one that differs
//!   from it by one voter intersect;
//! - a leader-elect that adopted a history whose membership differs from
//!   the one it collected its discovery quorum under proceeds only if that
//!   quorum is also one of the adopted membership (else it steps down);
//! - a leader never removes itself: it hands over first;
//! - a membership from a peer or a disk is decoded and validated before it
//!   is appended; a leader sending a malformed one is abandoned.

use crate::membership::{Membership, MembershipError};
use crate::message::{Entry, EntryKind};
use crate::ready::Event;
use crate::storage::Storage;
use crate::{NodeId, Zxid};

use super::leader::LPhase;
use super::progress::PPhase;
use super::{Replica, Role};

/// One node's role change between two memberships.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MembershipChange {
    /// A new voter.
    AddVoter(NodeId),
    /// A new observer.
    AddObserver(NodeId),
    /// An observer becomes a voter.
    Promote(NodeId),
    /// A voter becomes an observer.
    Demote(NodeId),
    /// A voter leaves.
    RemoveVoter(NodeId),
    /// An observer leaves.
    RemoveObserver(NodeId),
}

impl MembershipChange {
    /// The node whose role changes.
    pub fn node(self) -> NodeId {
        match self {
            MembershipChange::AddVoter(n)
            | MembershipChange::AddObserver(n)
            | MembershipChange::Promote(n)
            | MembershipChange::Demote(n)
            | MembershipChange::RemoveVoter(n)
            | MembershipChange::RemoveObserver(n) => n,
        }
    }

    /// The single change from `from` to `to`, if they differ by exactly
    /// one node's role (the order of the lists does not matter).
    pub fn between(from: &Membership, to: &Membership) -> Result<MembershipChange, ChangeError> {
        let mut changes = Vec::new();
        let all: Vec<NodeId> = {
            let mut v: Vec<NodeId> = from
                .voters
                .iter()
                .chain(&from.observers)
                .chain(&to.voters)
                .chain(&to.observers)
                .copied()
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        for n in all {
            let c = match (
                from.is_voter(n),
                from.is_observer(n),
                to.is_voter(n),
                to.is_observer(n),
            ) {
                (true, _, true, _) | (_, true, _, true) => continue,
                (false, false, true, _) => MembershipChange::AddVoter(n),
                (false, false, _, true) => MembershipChange::AddObserver(n),
                (_, true, true, _) => MembershipChange::Promote(n),
                (true, _, _, true) => MembershipChange::Demote(n),
                (true, _, false, false) => MembershipChange::RemoveVoter(n),
                (_, true, false, false) => MembershipChange::RemoveObserver(n),
                (false, false, false, false) => continue,
            };
            changes.push(c);
        }
        match changes[..] {
            [] => Err(ChangeError::Unchanged),
            [c] => Ok(c),
            _ => Err(ChangeError::NotSingle(changes.len())),
        }
    }
}

/// Why a membership change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// This replica is not an established leader.
    #[error("not an established leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this replica follows, if any.
        leader: Option<NodeId>,
    },
    /// An earlier change is not committed yet.
    #[error("the change at {0:?} is not committed yet; one change at a time")]
    InProgress(Zxid),
    /// A hand-over is in progress.
    #[error("a leader transfer to {0} is in progress")]
    Transferring(NodeId),
    /// The new membership is not a valid configuration.
    #[error("invalid membership: {0}")]
    Invalid(#[from] MembershipError),
    /// The new membership equals the one in force.
    #[error("the membership is unchanged")]
    Unchanged,
    /// More than one node's role changes.
    #[error("{0} nodes change role; change one node at a time")]
    NotSingle(usize),
    /// The change would remove or demote the leader itself.
    #[error("the leader cannot remove or demote itself; transfer the leadership first")]
    RemovesLeader,
    /// Fewer voters of the new membership than a quorum are in sync with
    /// the leader: the change could leave no quorum able to act.
    #[error("only {healthy} voters of the new membership are in sync with the leader; a quorum needs {needed}")]
    WouldLoseQuorum {
        /// Voters of the new membership in sync with the leader (itself
        /// included).
        healthy: usize,
        /// A quorum of the new membership.
        needed: usize,
    },
    /// The node the change makes a voter is not in sync with the leader
    /// (a new member, or an observer behind, recovering or silent). Until
    /// it held the change, it would neither vote nor stand, and the group
    /// would count on a voter that cannot act: with one more voter lost,
    /// no quorum could elect the leader that would bring it the change.
    /// Add it as an observer, let it catch up, then promote it.
    #[error("node {0} would become a voter while not in sync with the leader; add it as an observer, let it catch up, then promote it")]
    NewVoterNotInSync(NodeId),
    /// The epoch's counter is spent.
    #[error("zxid counter exhausted; the next leader can make the change")]
    EpochExhausted,
    /// The leader's state machine has not applied its starting history
    /// yet (committed, but applying is bounded per turn): a change waits
    /// for it, so the application sees every earlier entry before it
    /// decides on a change. Transient: ask again.
    #[error("the leader has applied its history to {applied:?} of {history_end:?}; the change waits until it is applied")]
    HistoryNotApplied {
        /// Applied so far.
        applied: Zxid,
        /// The end of the history the leader started its epoch with.
        history_end: Zxid,
    },
}

impl<S: Storage> Replica<S> {
    /// The membership in force (the newest membership-change entry of the
    /// log, committed or not, else the base's).
    pub fn membership(&self) -> &Membership {
        self.log.configs.current().0
    }

    /// The membership in force after the entry at `zxid`: record it with a
    /// snapshot taken at `zxid` ([`Recovered::membership`] and
    /// [`Replica::snapshot_installed`] give it back).
    ///
    /// [`Recovered::membership`]: crate::Recovered::membership
    pub fn membership_at(&self, zxid: Zxid) -> Membership {
        self.log.configs.at(zxid).clone()
    }

    /// The membership in force at the commit point as this replica knows
    /// it: what its elector should count (see `Node`'s use of it). After a
    /// restart, before a leader tells it the commit point, that is the
    /// newest change it knew committed before
    /// ([`note_committed_config`](Self::note_committed_config)).
    pub fn committed_membership(&self) -> &Membership {
        self.log
            .configs
            .at(self.commit.max(self.committed_config_hint))
    }

    /// The zxid of the newest membership-change entry at or below the
    /// commit point (`None`: none in the log; the base is in force). Keep
    /// it durably, and give it back after a restart with
    /// [`note_committed_config`](Self::note_committed_config).
    pub fn committed_config_zxid(&self) -> Option<Zxid> {
        self.log.configs.zxid_at(self.commit)
    }

    /// At start-up: the membership-change entry at `zxid` was known
    /// committed before the restart (kept by the caller from
    /// [`committed_config_zxid`](Self::committed_config_zxid)). The
    /// replica's elector view counts the membership it names until a
    /// leader brings the commit point; without it, a restarted node whose
    /// log holds changes it cannot know committed would count the voters
    /// of its log's base, who may be gone, and never decide an election.
    pub fn note_committed_config(&mut self, zxid: Zxid) {
        if zxid > self.committed_config_hint {
            tracing::info!(id = %self.id, ?zxid, "membership change known committed before the restart");
            self.committed_config_hint = zxid;
        }
    }

    /// The uncommitted membership change, if one is in flight.
    pub fn membership_change_pending(&self) -> Option<Zxid> {
        self.log.configs.pending_after(self.commit)
    }

    /// Leader: proposes the membership `to`, which must differ from the one
    /// in force by one node's role ([`MembershipChange::between`]), or by
    /// its [`context`](Membership::context) alone. It
    /// takes effect here at once (quorums count the new voters from now
    /// on) and on each replica as it appends it. Returns the entry's zxid;
    /// the change is done once it commits.
    pub fn propose_membership(&mut self, to: Membership) -> Result<Zxid, ChangeError> {
        to.validate()?;
        let leader_hint = self.leader();
        let me = self.id;
        let Role::Leading(l) = &mut self.role else {
            return Err(ChangeError::NotLeader {
                leader: leader_hint,
            });
        };
        if l.phase != LPhase::Broadcast || self.commit < l.history_end {
            // Not yet established, or its starting history not yet known
            // committed: an older uncommitted change may still be decided.
            return Err(ChangeError::NotLeader { leader: None });
        }
        if self.applied < l.history_end {
            // Committed, not yet applied: the application decides on a
            // change (the reference service refuses one during a split)
            // from its applied state, which must hold every entry of the
            // older epochs (etcd's leader waits the same way).
            return Err(ChangeError::HistoryNotApplied {
                applied: self.applied,
                history_end: l.history_end,
            });
        }
        if let Some(t) = l.transfer {
            return Err(ChangeError::Transferring(t.to));
        }
        if let Some(z) = self.log.configs.pending_after(self.commit) {
            return Err(ChangeError::InProgress(z));
        }
        let from = self.log.configs.current().0;
        // The same members with another context (the application's data,
        // such as addresses) is a change of its own that moves no quorum.
        let change = if from.same_members(&to) {
            if from.context == to.context {
                return Err(ChangeError::Unchanged);
            }
            None
        } else {
            Some(MembershipChange::between(from, &to)?)
        };
        if change.is_some_and(|c| c.node() == me) && !to.is_voter(me) {
            return Err(ChangeError::RemovesLeader);
        }
        // The new membership takes effect at once: it must have a quorum of
        // voters that are in sync with us now (a voter added while behind,
        // or one removed while others are down, could leave no quorum that
        // can act, and then no leader could even sync the newcomer).
        let now = self.now;
        let timeout = self.config.election_timeout;
        let in_sync = |v: &NodeId| {
            *v == me
                || l.peers.get(v).is_some_and(|p| {
                    p.phase == PPhase::Broadcast
                        && !p.recovering
                        && now.saturating_since(p.last_heard) <= timeout
                })
        };
        // A node made a voter must itself be in sync (see the error).
        if let Some(MembershipChange::AddVoter(n) | MembershipChange::Promote(n)) = change {
            if !in_sync(&n) {
                return Err(ChangeError::NewVoterNotInSync(n));
            }
        }
        let healthy = to.voters.iter().filter(|v| in_sync(v)).count();
        let needed = to.voters.len() / 2 + 1;
        if healthy < needed {
            return Err(ChangeError::WouldLoseQuorum { healthy, needed });
        }
        let epoch = l.epoch;
        let Some(counter) = l
            .counter
            .checked_add(1)
            .filter(|&c| c <= self.config.max_epoch_counter)
        else {
            return Err(ChangeError::EpochExhausted);
        };
        l.counter = counter;
        let zxid = Zxid::new(epoch, counter);
        tracing::info!(id = %me, ?zxid, ?change, voters = ?to.voters, observers = ?to.observers, context_bytes = to.context.len(), "membership change proposed");
        self.log.append(Entry {
            zxid,
            kind: EntryKind::Config,
            data: to.encode(),
        });
        self.sync_membership();
        Ok(zxid)
    }

    /// Whether every membership-change entry of `entries` decodes to a
    /// valid membership (checked before a batch from a peer is appended).
    pub(super) fn memberships_valid(entries: &[Entry]) -> Result<(), (Zxid, MembershipError)> {
        for e in entries.iter().filter(|e| e.is_config()) {
            Membership::decode(&e.data).map_err(|err| (e.zxid, err))?;
        }
        Ok(())
    }

    /// Applies a change of the membership in force (an append, a TRUNC, a
    /// snapshot install) to the configuration the quorums use, tells the
    /// caller, and, on a leader, stops tracking removed members.
    pub(super) fn sync_membership(&mut self) {
        if !self.log.configs.take_changed() {
            return;
        }
        let (m, zxid) = self.log.configs.current();
        let m = m.clone();
        self.config.voters = m.voters.clone();
        self.config.observers = m.observers.clone();
        let me = self.id;
        tracing::info!(id = %me, ?zxid, voters = ?m.voters, observers = ?m.observers, "membership in force changed");
        if !m.is_member(me) {
            tracing::warn!(id = %me, "this node is no longer a member: it stops taking part once the change commits");
        } else if !m.is_voter(me) {
            tracing::info!(id = %me, "this node does not vote in the membership in force: it never stands for election");
        }
        if let Role::Leading(l) = &mut self.role {
            l.peers.retain(|n, _| m.is_member(*n));
            for (n, p) in l.peers.iter_mut() {
                p.observer = m.is_observer(*n);
            }
        }
        self.out.events.push(Event::MembershipChanged {
            membership: m,
            zxid,
        });
    }
}
