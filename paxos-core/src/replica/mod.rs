//! The replica: a sans-IO state machine running discovery, sync and
//! broadcast (ZAB-shaped Multi-Paxos) for one group.
//!
//! See the crate documentation for the caller's contract. This file holds
//! the [`Replica`], its role state, the driving API and what all roles
//! share (sending, the hard state, stepping down); the submodules hold the
//! protocol by role (`follower`, `leader`, `progress`) and by concern
//! (`broadcast`, `reads`, `recovery`, `snapshot`).
//!
//! Invariants: the hard state's epochs never go down, and
//! `current_epoch <= accepted_epoch`; the commit point never goes back; a
//! recovering replica never leads.

mod broadcast;
mod follower;
mod leader;
mod membership;
pub use membership::{ChangeError, MembershipChange};
mod progress;
mod quiesce;
mod reads;
mod recovery;
mod snapshot;
mod transfer;

use std::collections::{BTreeMap, VecDeque};

use crate::config::Config;
use crate::election::{Decision, VoteInfo};
use crate::log::{Log, ReadError};
use crate::membership::Membership;
use crate::message::{Entry, Envelope, HardState, Message};
use crate::ready::{Event, Persisted, ReadState, Ready, Recovered};
use crate::storage::{Storage, StorageError};
use crate::sync::SyncPlanner;
use crate::{Epoch, NodeId, Time, Zxid};

use follower::{FPhase, Follower};
use leader::{LPhase, Leader};
/// Why [`Replica::new`] could not start a replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The configuration breaks a rule ([`Config::validate`]).
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::ConfigError),
    /// The storage could not be read, or what it holds is inconsistent.
    #[error("reading the replica's storage: {0}")]
    Storage(#[from] StorageError),
}

#[derive(Debug)]
enum Role {
    Looking,
    Following(Follower),
    Leading(Box<Leader>),
}

/// One replica of one group: a sans-IO Multi-Paxos state machine.
///
/// Inputs are the `handle_*` methods, [`propose`](Replica::propose),
/// [`read_index`](Replica::read_index) and the completions
/// ([`persisted`](Replica::persisted), [`applied`](Replica::applied),
/// [`snapshot_installed`](Replica::snapshot_installed),
/// [`snapshot_taken`](Replica::snapshot_taken)); outputs are polled with
/// [`ready`](Replica::ready) and [`poll_timeout`](Replica::poll_timeout).
pub struct Replica<S: Storage> {
    id: NodeId,
    config: Config,
    planner: Box<dyn SyncPlanner + Send>,
    log: Log<S>,
    hs: HardState,
    hs_dirty: bool,
    durable_hs: HardState,
    hs_pending: VecDeque<(u64, HardState)>,
    promised_to: Option<(NodeId, Epoch)>,
    snapshot: Option<Zxid>,
    commit: Zxid,
    /// A membership change known committed before a restart
    /// ([`Replica::note_committed_config`]).
    committed_config_hint: Zxid,
    applied: Zxid,
    apply_sent: Zxid,
    role: Role,
    now: Time,
    seq: u64,
    out: Ready,
    scratch: Vec<Entry>,
    /// See [`Replica::is_recovering`]. True until the cleared flag is durable.
    recovering: bool,
    /// A recovering-flag write for the next `Ready`.
    recovering_write: Option<bool>,
    /// The leader and epoch that readmitted us, and the `Ready` whose
    /// persistence (the cleared flag) completes the recovery.
    readmit: Option<(NodeId, Epoch, Option<u64>)>,
    /// Lease reads: until this time the replica neither votes (the elector
    /// is not started), nor leads, nor promises a new epoch.
    hold_until: Option<Time>,
    /// See [`Replica::snapshot_transfer_restarts`].
    snap_restarts: u64,
    /// Leader: where a transfer to each follower resumes, by the
    /// follower's last progress report (snapshot, bytes its receiver
    /// holds; no entry while it installs). Kept across this replica's
    /// epochs: a leader re-elected after losing its quorum resumes too.
    /// One entry per member at most.
    snap_resume: BTreeMap<NodeId, (Zxid, u64)>,
    /// Counts the inputs that may let the leader send more (a message, a
    /// timeout, a proposal): each follower's send bound
    /// ([`Config::max_send_bytes_per_input`]) starts over with a new one,
    /// however many `Ready`s are taken in between.
    inputs: u64,
    /// The next compaction ignores [`Config::retention_entries`] (see
    /// [`Replica::compact_log_now`]).
    compact_now: bool,
    /// The newest `Ready` reported persisted.
    persisted_seq: u64,
}

impl<S: Storage> std::fmt::Debug for Replica<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .field("hs", &self.hs)
            .field("last", &self.log.last())
            .field("commit", &self.commit)
            .field("applied", &self.applied)
            .field("role", &self.role)
            .finish()
    }
}

impl<S: Storage> Replica<S> {
    /// A replica over `storage`, looking for a leader. The first
    /// [`ready`](Replica::ready) carries [`Event::LostLeader`] so the caller
    /// starts its elector.
    pub fn new(
        id: NodeId,
        config: Config,
        storage: S,
        planner: Box<dyn SyncPlanner + Send>,
        recovered: Recovered,
        now: Time,
    ) -> Result<Replica<S>, StartError> {
        config.validate()?;
        let hs = storage.hard_state();
        let recovering = storage.recovering();
        // Read from disk: a damaged or hand-edited hard state is an error
        // the operator must see, not a crash.
        if hs.current_epoch > hs.accepted_epoch {
            return Err(StorageError::Corrupt(format!(
                "hard state: current epoch {:?} above accepted epoch {:?}",
                hs.current_epoch, hs.accepted_epoch
            ))
            .into());
        }
        let start_membership = Membership {
            voters: config.voters.clone(),
            observers: config.observers.clone(),
            ..Membership::default()
        };
        let base = match recovered.membership.clone() {
            Some(m) if recovered.snapshot.is_some() => {
                m.validate().map_err(|e| {
                    StorageError::Corrupt(format!("the snapshot's membership is invalid: {e}"))
                })?;
                m
            }
            _ => start_membership.clone(),
        };
        let mut log = Log::new(storage, recovered.snapshot, base)?;
        log.set_recent_max_bytes(config.apply_cache_bytes);
        let applied = recovered
            .applied
            .max(recovered.snapshot.unwrap_or(Zxid::ZERO));
        let mut r = Replica {
            id,
            config,
            planner,
            log,
            hs,
            hs_dirty: false,
            durable_hs: hs,
            hs_pending: VecDeque::new(),
            promised_to: None,
            snapshot: recovered.snapshot,
            commit: applied,
            committed_config_hint: Zxid::ZERO,
            applied,
            apply_sent: applied,
            role: Role::Looking,
            now,
            seq: 0,
            out: Ready::default(),
            scratch: Vec::new(),
            recovering,
            recovering_write: None,
            readmit: None,
            hold_until: None,
            snap_restarts: 0,
            snap_resume: BTreeMap::new(),
            inputs: 0,
            compact_now: false,
            persisted_seq: 0,
        };
        // The log's membership (its newest change, or the snapshot's) is
        // the one in force, whatever the start-up configuration said.
        let (m, zxid) = r.log.configs.current();
        if *m != start_membership {
            let m = m.clone();
            tracing::info!(id = %id, ?zxid, voters = ?m.voters, observers = ?m.observers, "membership from the log and snapshot");
            r.config.voters = m.voters.clone();
            r.config.observers = m.observers.clone();
            r.out.events.push(Event::MembershipChanged {
                membership: m,
                zxid,
            });
        }
        tracing::info!(id = %id, ?hs, last = ?r.log.last(), ?applied, recovering, "replica started");
        if recovering {
            tracing::warn!(id = %id, "entering recovering: state was lost; not counted until readmitted");
            r.out.events.push(Event::RecoveryStarted);
        }
        // Lease reads: a leader may hold a lease granted partly on this
        // replica's acknowledgements from before the restart, which the
        // restart made us forget. Stay out of elections and refuse new
        // epochs for one lease period (the election timeout bounds it) so
        // that lease has expired before any new leader can count us. A
        // replica that never promised an epoch never acknowledged a
        // heartbeat, so a fresh cluster starts at once.
        if r.config.lease_reads && hs.accepted_epoch > Epoch::ZERO {
            let until = now + r.config.election_timeout;
            tracing::info!(id = %id, ?until, "lease reads: holding off elections and new epochs after restart");
            r.hold_until = Some(until);
        } else {
            r.out.events.push(Event::LostLeader(r.vote_info()));
        }
        Ok(r)
    }

    /// Lease reads: the end of the hold-off after a restart, while it lasts
    /// (the replica neither votes, leads nor promises a new epoch before).
    pub fn hold_off_until(&self) -> Option<Time> {
        self.hold_until
    }

    /// Test-only: drops the lease hold-off after a restart (see
    /// [`hold_off_until`](Replica::hold_off_until)), which makes lease
    /// reads unsafe. Exists so the simulator can show the stale read the
    /// hold-off prevents.
    #[doc(hidden)]
    pub fn unsafe_skip_lease_hold_off(&mut self) {
        if self.hold_until.take().is_some() && matches!(self.role, Role::Looking) {
            self.out.events.push(Event::LostLeader(self.vote_info()));
        }
    }

    fn held_off(&self, now: Time) -> bool {
        self.hold_until.is_some_and(|t| now < t)
    }

    // ----- accessors -------------------------------------------------------

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }
    /// Replaces the configuration (membership change applied by the caller).
    pub fn set_config(&mut self, config: Config) {
        self.log.set_recent_max_bytes(config.apply_cache_bytes);
        self.config = config;
    }
    /// The storage (reads).
    pub fn storage(&self) -> &S {
        &self.log.storage
    }
    /// The storage, to apply the writes of a [`Ready`].
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.log.storage
    }
    /// The hard state, including changes not yet persisted.
    pub fn hard_state(&self) -> HardState {
        self.hs
    }
    /// The last zxid of this replica's history.
    pub fn last_zxid(&self) -> Zxid {
        self.log.last()
    }
    /// The highest zxid known committed.
    pub fn commit_zxid(&self) -> Zxid {
        self.commit
    }
    /// The applied zxid as last reported.
    pub fn applied_zxid(&self) -> Zxid {
        self.applied
    }
    /// Whether the history holds `z` (in the log, or covered by the snapshot).
    pub fn holds(&self, z: Zxid) -> bool {
        self.log.index.holds(z) || self.snapshot.is_some_and(|s| z <= s)
    }
    /// The first zxid the log still holds, or `None` for an empty log
    /// (everything compacted into the snapshot, or nothing yet). A peer
    /// behind it cannot be brought level by DIFF from this replica.
    pub fn first_retained(&self) -> Option<Zxid> {
        self.log.index.first()
    }
    /// What this replica would vote with.
    pub fn vote_info(&self) -> VoteInfo {
        VoteInfo {
            current_epoch: self.hs.current_epoch,
            last_zxid: self.log.last(),
        }
    }
    /// The leader this replica follows or is, once known.
    pub fn leader(&self) -> Option<NodeId> {
        match &self.role {
            Role::Looking => None,
            Role::Following(f) => Some(f.leader),
            Role::Leading(_) => Some(self.id),
        }
    }
    /// Whether this replica is an established leader (accepting proposals).
    pub fn is_leader(&self) -> bool {
        matches!(&self.role, Role::Leading(l) if l.phase == LPhase::Broadcast)
    }

    /// The epoch this replica leads or follows in, once established.
    pub fn established_epoch(&self) -> Option<Epoch> {
        match &self.role {
            Role::Leading(l) if l.phase == LPhase::Broadcast => Some(l.epoch),
            Role::Following(f) if f.phase == FPhase::Broadcast => Some(f.epoch),
            _ => None,
        }
    }

    // ----- inputs ----------------------------------------------------------

    /// The elector decided who leads.
    pub fn handle_leader_decision(&mut self, now: Time, d: Decision) {
        self.now = now;
        if self.held_off(now) {
            tracing::warn!(id = %self.id, leader = %d.leader, "decision during the lease hold-off after restart; ignoring");
            return;
        }
        if d.leader == self.id {
            if !self.config.is_voter(self.id) {
                // The elector must look again (its view of the voters may
                // lag the membership in force, which may drop this node):
                // a decision left standing would keep it, and every node
                // that follows it, waiting for ever.
                tracing::warn!(id = %self.id, "elected but not a voter; looking again");
                if !matches!(self.role, Role::Looking) {
                    self.lose_leader("elected but not a voter");
                } else {
                    self.out.events.push(Event::LostLeader(self.vote_info()));
                }
                return;
            }
            if self.recovering {
                tracing::warn!(id = %self.id, "elected while recovering; refusing to lead");
                if !matches!(self.role, Role::Looking) {
                    self.lose_leader("a recovering replica never leads");
                } else {
                    self.out.events.push(Event::LostLeader(self.vote_info()));
                }
                return;
            }
            if matches!(self.role, Role::Leading(_)) {
                return;
            }
            self.become_leader(now);
        } else {
            if let Role::Following(f) = &self.role {
                if f.leader == d.leader {
                    return;
                }
            }
            self.become_follower(now, d.leader);
        }
        self.advance_leader();
    }

    /// A message from a peer. Messages for another group or node are dropped.
    pub fn handle_message(&mut self, now: Time, env: Envelope) {
        self.now = now;
        self.inputs += 1;
        if env.group != self.config.group || env.to != self.id || env.from == self.id {
            tracing::debug!(?env.group, ?env.to, "dropping misrouted message");
            return;
        }
        // A member of the membership in force, of the committed one (an
        // uncommitted change this node holds may remove the very node that
        // now leads and must truncate it), or the leader this node follows
        // (one added by changes this node has not received yet). Whoever
        // else writes is ignored; a leader's quorums are its own to count.
        let follows = matches!(&self.role, Role::Following(f) if f.leader == env.from);
        if !self.config.is_member(env.from)
            && !self.committed_membership().is_member(env.from)
            && !follows
        {
            tracing::debug!(from = %env.from, "dropping message from non-member");
            return;
        }
        let from = env.from;
        match &mut self.role {
            Role::Leading(l) => {
                if let Some(p) = l.peers.get_mut(&from) {
                    p.last_heard = now;
                }
                // A peer that asks for something wakes a quiesced leader;
                // the last round's late acknowledgements do not.
                if l.quiesced
                    && !matches!(
                        env.msg,
                        Message::HeartbeatAck { .. } | Message::Applied { .. }
                    )
                {
                    self.wake(now);
                }
                self.leader_step(from, env.msg);
            }
            Role::Following(f) => {
                // Follower messages from the node we follow do not count:
                // it follows someone too (two nodes may each believe the
                // other leads, and would keep each other waiting). Nor do
                // leader messages of another epoch: they do not show that
                // it still leads ours (a reply to a forwarded read of a
                // newer epoch would keep us in a dead one for ever).
                let epoch = leader_message_epoch(&env.msg);
                let newer = f.leader == from
                    && env.msg.is_from_leader()
                    && f.phase != FPhase::Discovery
                    && !matches!(env.msg, Message::NewEpoch { .. })
                    && epoch.is_some_and(|e| e > f.epoch);
                let counts = match f.phase {
                    FPhase::Discovery => matches!(env.msg, Message::NewEpoch { .. }),
                    FPhase::Sync | FPhase::Broadcast => {
                        matches!(env.msg, Message::NewEpoch { .. }) || epoch == Some(f.epoch)
                    }
                };
                if f.leader == from && env.msg.is_from_leader() && counts {
                    f.last_heard = now;
                    f.quiesced = false;
                }
                if newer {
                    // Our leader leads an epoch we never promised: the one
                    // we follow in is over. Ask to join the new one, as a
                    // newly decided follower does; a NEWEPOCH answers with
                    // every check of a first promise.
                    let old = f.epoch;
                    tracing::info!(id = %self.id, leader = %from, ?old, new = ?epoch, msg = env.msg.name(), "the leader leads a newer epoch without us; asking to join it");
                    if let Message::ReadIndexResponse { ctx, zxid, .. } = env.msg {
                        // The answer stands: the leader confirmed its reign
                        // in its epoch, whatever ours.
                        match zxid {
                            Some(zxid) => self.out.read_states.push(ReadState { ctx, zxid }),
                            None => self.out.events.push(Event::ReadAborted { ctx }),
                        }
                    }
                    self.become_follower(now, from);
                    self.sync_membership();
                    self.advance_leader();
                    return;
                }
                if let Message::Quiesce { epoch, commit } = env.msg {
                    self.on_quiesce(from, epoch, commit);
                } else {
                    self.follower_step(from, env.msg);
                }
            }
            Role::Looking => {}
        }
        self.sync_membership();
        self.advance_leader();
    }

    /// Time has passed the deadline of [`poll_timeout`](Replica::poll_timeout)
    /// (calling it early or late is harmless).
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
        self.inputs += 1;
        let timeout = self.config.election_timeout;
        let hb = self.config.heartbeat_interval;
        let mut lose = None;
        let mut send_info = false;
        let mut send_applied = None;
        let mut resend_ack = None;
        if let Some(until) = self.hold_until {
            if now >= until {
                self.hold_until = None;
                tracing::info!(id = %self.id, "lease hold-off over; looking for a leader");
                if matches!(self.role, Role::Looking) {
                    self.out.events.push(Event::LostLeader(self.vote_info()));
                }
            }
        }
        match &mut self.role {
            Role::Looking => {}
            Role::Following(f) => {
                if !f.quiesced && now.saturating_since(f.last_heard) > timeout {
                    lose = Some("leader silent");
                } else {
                    if f.phase == FPhase::Discovery && now.saturating_since(f.info_sent_at) >= hb {
                        f.info_sent_at = now;
                        send_info = true;
                    }
                    if f.phase == FPhase::Broadcast
                        && self.applied > f.applied_reported
                        && now.saturating_since(f.applied_reported_at) >= hb
                    {
                        f.applied_reported = self.applied;
                        f.applied_reported_at = now;
                        send_applied = Some((f.leader, f.epoch));
                    }
                    // Synced but no UPTODATE yet: it may be lost, and
                    // nothing else would bring it again. Acknowledge
                    // NEWLEADER again, once the first acknowledgement's
                    // writes are durable (it has left).
                    if f.phase == FPhase::Sync
                        && f.newleader_seen
                        && self.persisted_seq >= f.ack_ready_seq
                        && now.saturating_since(f.ack_resent_at) >= hb
                    {
                        f.ack_resent_at = now;
                        resend_ack = Some((f.leader, f.epoch, f.newleader_last));
                    }
                }
            }
            Role::Leading(_) => {
                self.leader_tick(now);
            }
        }
        if send_info {
            if let Some(leader) = self.leader() {
                self.send_follower_info(leader);
            }
        }
        if let Some((leader, epoch)) = send_applied {
            let zxid = self.applied;
            self.send(leader, Message::Applied { epoch, zxid });
        }
        if let Some((leader, epoch, last_zxid)) = resend_ack {
            tracing::debug!(id = %self.id, %leader, ?epoch, "no UPTODATE yet; acknowledging NEWLEADER again");
            self.send(leader, Message::AckNewLeader { epoch, last_zxid });
        }
        if let Some(why) = lose {
            self.lose_leader(why);
        }
        self.sync_membership();
        self.advance_leader();
    }

    /// Same as [`handle_timeout`](Replica::handle_timeout), for callers that
    /// tick on a fixed period.
    pub fn tick(&mut self, now: Time) {
        self.handle_timeout(now);
    }

    /// The next time [`handle_timeout`](Replica::handle_timeout) must be
    /// called, if any. Changes after any input.
    pub fn poll_timeout(&self) -> Option<Time> {
        let hb = self.config.heartbeat_interval;
        match &self.role {
            Role::Looking => self.hold_until,
            Role::Following(f) if f.quiesced => {
                // Only the applied report can be due: no election timer.
                (f.phase == FPhase::Broadcast && self.applied > f.applied_reported)
                    .then(|| f.applied_reported_at + hb)
            }
            Role::Following(f) => {
                let mut t = f.last_heard
                    + self.config.election_timeout
                    + std::time::Duration::from_nanos(1);
                if f.phase == FPhase::Discovery {
                    t = t.min(f.info_sent_at + hb);
                }
                if f.phase == FPhase::Broadcast && self.applied > f.applied_reported {
                    t = t.min(f.applied_reported_at + hb);
                }
                // The resend waits for the first acknowledgement's writes
                // (handle_timeout does nothing before): asking for a timer
                // before `persisted` says so would spin the caller's loop.
                if f.phase == FPhase::Sync
                    && f.newleader_seen
                    && self.persisted_seq >= f.ack_ready_seq
                {
                    t = t.min(f.ack_resent_at + hb);
                }
                Some(t)
            }
            Role::Leading(l) if l.quiesced => None,
            Role::Leading(l) => Some(l.hb_due),
        }
    }

    // ----- completions -----------------------------------------------------

    /// The writes of the `Ready` marked `marker` (and of every earlier one)
    /// are durable.
    pub fn persisted(&mut self, now: Time, marker: Persisted) {
        self.now = now;
        self.persisted_seq = self.persisted_seq.max(marker.seq);
        self.log.persisted(marker.seq);
        while let Some(&(seq, hs)) = self.hs_pending.front() {
            if seq > marker.seq {
                break;
            }
            assert!(
                hs.accepted_epoch >= self.durable_hs.accepted_epoch
                    && hs.current_epoch >= self.durable_hs.current_epoch,
                "epoch monotonicity: durable hard state must never decrease"
            );
            self.durable_hs = hs;
            self.hs_pending.pop_front();
        }
        if let Some((leader, epoch, Some(seq))) = self.readmit {
            if seq <= marker.seq {
                assert!(
                    self.durable_hs.current_epoch >= epoch,
                    "readmission: the cleared flag is durable before the history of epoch {epoch:?}"
                );
                self.readmit = None;
                self.recovering = false;
                tracing::info!(id = %self.id, %leader, ?epoch, "leaving recovering: readmitted, counts again");
                self.out
                    .events
                    .push(Event::RecoveryComplete { leader, epoch });
            }
        }
        self.advance_leader();
    }

    /// The state machine has applied every committed entry up to `zxid`.
    pub fn applied(&mut self, zxid: Zxid) {
        debug_assert!(
            zxid <= self.commit,
            "applied {zxid:?} beyond commit {:?}",
            self.commit
        );
        self.applied = self.applied.max(zxid);
    }

    // ----- output ----------------------------------------------------------

    /// Whether [`ready`](Replica::ready) has anything to hand out. A cheap
    /// check; `ready` may still return an empty batch.
    pub fn has_ready(&self) -> bool {
        !self.out.is_empty()
            || self.hs_dirty
            || self.recovering_write.is_some()
            || self.log.has_unsent()
            || self.apply_sent < self.commit
            || self.compact_now
            || self.is_leader()
    }

    /// Takes everything the replica wants done. See [`Ready`].
    pub fn ready(&mut self) -> Ready {
        self.sync_membership();
        self.flush_peers();
        self.maybe_compact();
        self.seq += 1;
        let seq = self.seq;
        let mut r = std::mem::take(&mut self.out);
        r.seq = seq;
        let (trunc, compact) = self.log.take_writes(seq, &mut r.entries);
        r.truncate_after = trunc;
        r.compact_to = compact;
        if self.hs_dirty {
            self.hs_dirty = false;
            r.hard_state = Some(self.hs);
            self.hs_pending.push_back((seq, self.hs));
        }
        if let Some(flag) = self.recovering_write.take() {
            r.recovering = Some(flag);
            if !flag {
                if let Some((_, _, at)) = &mut self.readmit {
                    *at = Some(seq);
                }
            }
        }
        // Committed entries to apply, bounded in bytes.
        let target = self.commit.min(self.log.last());
        if self.apply_sent < target {
            let mut buf = std::mem::take(&mut self.scratch);
            buf.clear();
            match self.log.read(
                self.apply_sent,
                target,
                usize::MAX,
                self.config.max_apply_bytes,
                &mut buf,
            ) {
                Ok(()) => {
                    if let Some(last) = buf.last() {
                        self.apply_sent = last.zxid;
                        self.log.applying(last.zxid);
                    }
                    r.committed.append(&mut buf);
                }
                Err(ReadError::Storage(e)) => r.events.push(Event::StorageFailed(e)),
                Err(ReadError::NotHeld) => {
                    tracing::error!(apply_sent = ?self.apply_sent, "apply point not in the log");
                }
            }
            self.scratch = buf;
        }
        r
    }

    // ----- internals: sending --------------------------------------------

    fn envelope(&self, to: NodeId, msg: Message) -> Envelope {
        Envelope {
            group: self.config.group,
            from: self.id,
            to,
            msg,
        }
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        let env = self.envelope(to, msg);
        self.out.messages.push(env);
    }

    fn send_persisted(&mut self, to: NodeId, msg: Message) {
        let env = self.envelope(to, msg);
        self.out.persisted_messages.push(env);
    }

    fn set_hs(&mut self, hs: HardState) {
        assert!(
            hs.accepted_epoch >= self.hs.accepted_epoch
                && hs.current_epoch >= self.hs.current_epoch,
            "epoch monotonicity: {hs:?} would lower {:?}",
            self.hs
        );
        assert!(
            hs.current_epoch <= hs.accepted_epoch,
            "current epoch above accepted epoch"
        );
        if hs != self.hs {
            self.hs = hs;
            self.hs_dirty = true;
        }
    }

    // ----- role changes ----------------------------------------------------

    fn lose_leader(&mut self, why: &'static str) {
        self.lose_leader_as(why, false);
    }

    /// Stops leading or following and looks for a leader; `nominated` when
    /// the leader handed its leadership to us ([`Event::HandedOver`]).
    fn lose_leader_as(&mut self, why: &'static str, nominated: bool) {
        let old = std::mem::replace(&mut self.role, Role::Looking);
        if let Role::Leading(l) = old {
            tracing::info!(id = %self.id, epoch = ?l.epoch, why, "leader steps down");
            for r in l.reads {
                if let Some(from) = r.from {
                    self.send(
                        from,
                        Message::ReadIndexResponse {
                            epoch: l.epoch,
                            ctx: r.ctx,
                            zxid: None,
                        },
                    );
                } else {
                    self.out.events.push(Event::ReadAborted { ctx: r.ctx });
                }
            }
        } else {
            tracing::info!(id = %self.id, why, "lost leader; looking");
        }
        let vote = self.vote_info();
        self.out.events.push(if nominated {
            Event::HandedOver(vote)
        } else {
            Event::LostLeader(vote)
        });
    }
}

/// The epoch a leader's message speaks for (`None` for follower messages).
fn leader_message_epoch(msg: &Message) -> Option<Epoch> {
    match msg {
        Message::NewEpoch { epoch, .. }
        | Message::Trunc { epoch, .. }
        | Message::Diff { epoch, .. }
        | Message::Snap { epoch, .. }
        | Message::NewLeader { epoch, .. }
        | Message::UpToDate { epoch, .. }
        | Message::Accept { epoch, .. }
        | Message::Commit { epoch, .. }
        | Message::Heartbeat { epoch, .. }
        | Message::ReadIndexResponse { epoch, .. }
        | Message::FetchHistory { epoch, .. }
        | Message::FetchSnapshot { epoch, .. }
        | Message::Readmit { epoch }
        | Message::TakeOver { epoch, .. }
        | Message::Quiesce { epoch, .. } => Some(*epoch),
        _ => None,
    }
}
