//! The replica: a sans-IO state machine running discovery, sync and
//! broadcast (ZAB-shaped Multi-Paxos) for one group.
//!
//! See the crate documentation for the caller's contract.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::config::Config;
use crate::election::{Decision, PeerState, VoteInfo};
use crate::log::{Log, ReadError};
use crate::message::{Entry, Envelope, HardState, Message, SnapChunk};
use crate::ready::{
    Event, PeerProgress, Persisted, ProposeError, ReadIndexError, ReadState, Ready, Recovered,
    SnapshotRequest,
};
use crate::storage::{Storage, StorageError};
use crate::sync::{FollowerPosition, LeaderHistory, SyncPlan, SyncPlanner};
use crate::{plan, Epoch, NodeId, Time, Zxid};

/// Bytes an ACCEPT adds around one entry (header, fields, entry header).
const ACCEPT_OVERHEAD_BYTES: usize = 26 + 4 + 8 + 8 + 4 + 12;
/// Heartbeat send times kept for lease reads.
const HEARTBEAT_HISTORY: usize = 64;
/// Pending read-index requests kept at most.
const MAX_PENDING_READS: usize = 4096;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FPhase {
    /// Sent FOLLOWERINFO, waiting for NEWEPOCH.
    Discovery,
    /// Promised the leader's epoch; receiving TRUNC/DIFF/SNAP and NEWLEADER.
    Sync,
    /// Got UPTODATE.
    Broadcast,
}

#[derive(Debug)]
struct Follower {
    leader: NodeId,
    phase: FPhase,
    epoch: Epoch,
    round: u32,
    trunc_done: bool,
    newleader_seen: bool,
    installing: Option<Zxid>,
    snap_done: bool,
    /// The local snapshot this follower streams to its leader-elect, which
    /// asked for it (FETCHSNAP) because our log no longer covers its fetch.
    serving_snap: Option<Zxid>,
    /// When the last SNAPPROGRESS left (rate limit: one per heartbeat).
    progress_sent_at: Option<Time>,
    /// The history NEWLEADER named, once taken; ACKNEWLEADER is sent again
    /// every heartbeat interval until UPTODATE comes (it may be lost).
    newleader_last: Zxid,
    /// The `Ready` carrying the first ACKNEWLEADER: once it is persisted
    /// (that acknowledgement left), sending it again says nothing new.
    ack_ready_seq: u64,
    ack_resent_at: Time,
    last_heard: Time,
    info_sent_at: Time,
    applied_reported: Zxid,
    applied_reported_at: Time,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LPhase {
    /// Collecting FOLLOWERINFO (accepted epochs) from a quorum.
    CollectInfo,
    /// NEWEPOCH sent; collecting ACKEPOCH from a quorum.
    CollectAcks,
    /// Fetching the missing suffix from the follower with the most recent
    /// history: by DIFF, or, when that follower's log no longer covers our
    /// position, its snapshot and then the entries after it.
    Fetching,
    /// Syncing followers; waiting for a quorum of NEWLEADER acks.
    Sync,
    /// Established.
    Broadcast,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PPhase {
    /// NEWEPOCH sent (or about to be), waiting for ACKEPOCH.
    Promising,
    /// ACKEPOCH received during discovery; sync starts with the leader's.
    Acked,
    /// Streaming a snapshot; waiting for SNAPINSTALLED.
    Snap(Zxid),
    /// Streaming DIFFs up to the sync target.
    Syncing,
    /// NEWLEADER sent for a history ending at the zxid.
    NewLeaderSent(Zxid),
    /// NEWLEADER acknowledged; waiting for the leader's quorum.
    Synced,
    /// Receiving ACCEPTs.
    Broadcast,
}

#[derive(Debug)]
struct Peer {
    phase: PPhase,
    since: Time,
    round: u32,
    observer: bool,
    position: FollowerPosition,
    next_prev: Zxid,
    match_zxid: Zxid,
    inflight: VecDeque<(Zxid, Time)>,
    commit_sent: Zxid,
    applied: Zxid,
    last_heard: Time,
    hb_acked: u64,
    lease_from: Time,
    sync_failures: u32,
    /// A SNAPPROGRESS arrived for the transfer in flight: from then on only
    /// the follower's progress (not our sending) keeps it alive.
    snap_heard: bool,
    /// The bytes the follower last reported for the transfer in flight.
    snap_received: u64,
    /// The follower said it is recovering: none of its promises or acks
    /// count until it is readmitted.
    recovering: bool,
    /// Recovering and durably synced in this epoch: readmit it once a
    /// quorum of counted voters acked a heartbeat of this round or later.
    readmit_round: Option<u64>,
    /// Readmitted in this epoch: READMIT rides along every heartbeat (the
    /// message is idempotent and may be lost).
    readmitted: bool,
}

/// The leader-elect's fetch of a follower's snapshot in discovery.
#[derive(Clone, Copy, Debug)]
struct FetchSnap {
    /// The snapshot being received; `Zxid::ZERO` until its first chunk.
    snapshot: Zxid,
    /// Bytes of it our receiver holds from offset 0 (where a restarted
    /// transfer resumes).
    received: u64,
    /// The whole snapshot is in and our driver installs it.
    installing: bool,
}

#[derive(Debug)]
struct PendingRead {
    ctx: Bytes,
    zxid: Zxid,
    round: u64,
    from: Option<NodeId>,
}

#[derive(Debug)]
struct Leader {
    phase: LPhase,
    epoch: Epoch,
    infos: BTreeMap<NodeId, Epoch>,
    /// Senders of `infos` that said they are recovering (not counted).
    info_recovering: BTreeSet<NodeId>,
    /// Every peer counted in a quorum that established this epoch
    /// (FOLLOWERINFO, ACKEPOCH, ACKNEWLEADER). Such a peer cannot be
    /// readmitted by this leader: its forgotten promise helped build the
    /// epoch, so it must be synced by an epoch established without it.
    helped: BTreeSet<NodeId>,
    peers: BTreeMap<NodeId, Peer>,
    history_end: Zxid,
    started: Time,
    fetch_from: Option<NodeId>,
    fetch_sent_at: Time,
    /// Fetching by snapshot: `fetch_from`'s log no longer covers our
    /// position, so we take its snapshot, then the entries after it.
    fetch_snap: Option<FetchSnap>,
    /// When the fetch by snapshot last progressed (a chunk, a progress
    /// report of our own driver): discovery does not time out while it
    /// progresses, however long the transfer and the install take.
    fetch_progress_at: Time,
    counter: u32,
    hb_round: u64,
    hb_due: Time,
    hb_sent: VecDeque<(u64, Time)>,
    reads: VecDeque<PendingRead>,
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
        let log = Log::new(storage, recovered.snapshot)?;
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
            persisted_seq: 0,
        };
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
    ///   flag and reports [`Event::RecoveryComplete`].
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
    /// Leader: where each follower and observer stands (for status pages
    /// and lag monitoring); empty unless this replica leads.
    pub fn peer_progress(&self) -> Vec<PeerProgress> {
        let Role::Leading(l) = &self.role else {
            return Vec::new();
        };
        l.peers
            .iter()
            .map(|(&id, p)| PeerProgress {
                id,
                matched: p.match_zxid,
                applied: p.applied,
                observer: p.observer,
                in_broadcast: p.phase == PPhase::Broadcast,
                recovering: p.recovering,
            })
            .collect()
    }

    /// Leader: how many times a follower's snapshot transfer (or install)
    /// went a whole [`Config::snapshot_progress_timeout`] without progress
    /// and its sync was restarted, over this replica's lifetime.
    pub fn snapshot_transfer_restarts(&self) -> u64 {
        self.snap_restarts
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
                tracing::warn!(id = %self.id, "elected but not a voter; ignoring");
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
        if env.group != self.config.group || env.to != self.id || env.from == self.id {
            tracing::debug!(?env.group, ?env.to, "dropping misrouted message");
            return;
        }
        if !self.config.is_member(env.from) {
            tracing::debug!(from = %env.from, "dropping message from non-member");
            return;
        }
        let from = env.from;
        match &mut self.role {
            Role::Leading(l) => {
                if let Some(p) = l.peers.get_mut(&from) {
                    p.last_heard = now;
                }
                self.leader_step(from, env.msg);
            }
            Role::Following(f) => {
                if f.leader == from {
                    f.last_heard = now;
                }
                self.follower_step(from, env.msg);
            }
            Role::Looking => {}
        }
        self.advance_leader();
    }

    /// Time has passed the deadline of [`poll_timeout`](Replica::poll_timeout)
    /// (calling it early or late is harmless).
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = now;
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
                if now.saturating_since(f.last_heard) > timeout {
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
                if f.phase == FPhase::Sync && f.newleader_seen {
                    t = t.min(f.ack_resent_at + hb);
                }
                Some(t)
            }
            Role::Leading(l) => Some(l.hb_due),
        }
    }

    /// Proposes a command. Only an established leader accepts; the command
    /// is handed back otherwise. Returns the zxid it will commit at (if the
    /// leader stays in office).
    pub fn propose(&mut self, data: Bytes) -> Result<Zxid, ProposeError> {
        let max_bytes = self
            .config
            .max_message_bytes
            .saturating_sub(ACCEPT_OVERHEAD_BYTES);
        let leader_hint = self.leader();
        let Role::Leading(l) = &mut self.role else {
            return Err(ProposeError::NotLeader {
                leader: leader_hint,
                data,
            });
        };
        if l.phase != LPhase::Broadcast {
            return Err(ProposeError::NotLeader { leader: None, data });
        }
        if data.len() > max_bytes {
            return Err(ProposeError::TooLarge { max_bytes, data });
        }
        let epoch = l.epoch;
        let Some(counter) = l
            .counter
            .checked_add(1)
            .filter(|&c| c <= self.config.max_epoch_counter)
        else {
            // Step down with the counter spent: the next election starts a
            // new epoch. This leader holds the most recent history, so it is
            // likely elected again; nothing proposed so far is lost either
            // way (it is in this leader's log, and a quorum's if committed).
            self.lose_leader("zxid counter reached max_epoch_counter; moving to a new epoch");
            return Err(ProposeError::EpochExhausted { epoch, data });
        };
        l.counter = counter;
        let zxid = Zxid::new(l.epoch, counter);
        self.log.append(Entry { zxid, data });
        Ok(zxid)
    }

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

    /// The caller took a durable local snapshot of the state machine at
    /// `zxid` (at most the applied zxid). Enables log cleanup up to it and
    /// SNAP sync of lagging followers.
    pub fn snapshot_taken(&mut self, zxid: Zxid) {
        assert!(
            zxid <= self.applied,
            "snapshot {zxid:?} beyond applied {:?}",
            self.applied
        );
        self.snapshot = Some(self.snapshot.map_or(zxid, |s| s.max(zxid)));
    }

    /// Follower: the snapshot at `zxid` received from the leader is
    /// restored into the state machine and durable. The replica drops its
    /// log (a truncation in the next `Ready`) and continues after `zxid`.
    ///
    /// Leader-elect in discovery: the snapshot fetched from the follower
    /// whose log no longer covered our position is installed; the log is
    /// reset likewise and the fetch goes on with the entries after it.
    pub fn snapshot_installed(&mut self, now: Time, zxid: Zxid) {
        self.now = now;
        if matches!(self.role, Role::Leading(_)) {
            self.fetched_snapshot_installed(zxid);
            self.advance_leader();
            return;
        }
        let Role::Following(f) = &mut self.role else {
            return;
        };
        if f.installing != Some(zxid) {
            tracing::warn!(?zxid, installing = ?f.installing, "unexpected snapshot install; ignoring");
            return;
        }
        f.installing = None;
        f.snap_done = true;
        let (leader, epoch) = (f.leader, f.epoch);
        tracing::info!(id = %self.id, ?zxid, "snapshot installed; log reset");
        self.log.reset_to(zxid);
        self.snapshot = Some(zxid);
        self.commit = self.commit.max(zxid);
        self.applied = self.applied.max(zxid);
        self.apply_sent = self.apply_sent.max(zxid);
        self.send_persisted(leader, Message::SnapInstalled { epoch, zxid });
    }

    /// Leader-elect: a fetched snapshot is installed (see
    /// [`Replica::snapshot_installed`]).
    fn fetched_snapshot_installed(&mut self, zxid: Zxid) {
        let now = self.now;
        let last = self.log.last();
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let expected = l.phase == LPhase::Fetching
            && l.fetch_snap
                .is_some_and(|fs| fs.snapshot == zxid && zxid != Zxid::ZERO);
        let Some(from) = l.fetch_from.filter(|_| expected) else {
            tracing::warn!(id = %self.id, ?zxid, "unexpected snapshot install on a leader; ignoring");
            return;
        };
        if zxid <= last {
            // Checked on the first chunk; the log does not grow meanwhile.
            tracing::warn!(id = %self.id, ?zxid, ?last, "fetched snapshot does not cover our log; ignoring");
            return;
        }
        l.fetch_snap = None;
        l.fetch_sent_at = now;
        l.fetch_progress_at = now;
        // The snapshot holds only committed entries (a follower snapshots
        // what it applied), and everything we held is below it: what we
        // drop is either inside it or was never committed.
        tracing::info!(id = %self.id, ?zxid, %from, "fetched snapshot installed; log reset, fetching the entries after it");
        self.log.reset_to(zxid);
        self.snapshot = Some(zxid);
        self.commit = self.commit.max(zxid);
        self.applied = self.applied.max(zxid);
        self.apply_sent = self.apply_sent.max(zxid);
        self.send_fetch(from);
    }

    /// Follower: the snapshot `snapshot` being received from the leader
    /// (through [`SnapshotRequest::Write`]) has its first `received` bytes
    /// in place, and, if `installing`, is complete and being installed.
    /// Call it as chunks are taken (or refused: `received` is then what the
    /// receiver holds, which is where the leader resumes) and every
    /// heartbeat interval or so while the install runs. The leader keeps
    /// the transfer alive on these reports
    /// ([`Config::snapshot_progress_timeout`]); at most one report per
    /// heartbeat interval leaves, the others are dropped.
    ///
    /// Leader-elect fetching a follower's snapshot in discovery: the same
    /// calls; nothing is sent, but progress keeps discovery from timing
    /// out (for [`Config::snapshot_progress_timeout`] after each report)
    /// and `received` is where the transfer resumes if it must be asked
    /// for again.
    pub fn snapshot_progress(
        &mut self,
        now: Time,
        snapshot: Zxid,
        received: u64,
        installing: bool,
    ) {
        self.now = now;
        let hb = self.config.heartbeat_interval;
        if let Role::Leading(l) = &mut self.role {
            // Our own fetch of a follower's snapshot: progress keeps
            // discovery alive and says where a restart resumes.
            if let Some(fs) = l.fetch_snap.as_mut().filter(|fs| {
                l.phase == LPhase::Fetching && fs.snapshot == snapshot && snapshot != Zxid::ZERO
            }) {
                if installing || received > fs.received {
                    l.fetch_progress_at = now;
                    l.fetch_sent_at = now;
                }
                fs.received = received;
                fs.installing = installing;
            }
            return;
        }
        let Role::Following(f) = &mut self.role else {
            return;
        };
        if f.phase != FPhase::Sync || f.snap_done || f.installing != Some(snapshot) {
            return;
        }
        if f.progress_sent_at
            .is_some_and(|t| now.saturating_since(t) < hb)
        {
            return;
        }
        f.progress_sent_at = Some(now);
        let (leader, epoch, round) = (f.leader, f.epoch, f.round);
        self.send(
            leader,
            Message::SnapProgress {
                epoch,
                round,
                snapshot,
                received,
                installing,
            },
        );
    }

    /// Leader: one chunk of the snapshot a [`SnapshotRequest::Send`] asked
    /// for. Returns `false` (and sends nothing) if that follower no longer
    /// waits for this snapshot.
    ///
    /// Follower: the same for a snapshot its leader-elect asked for in
    /// discovery ([`Message::FetchSnapshot`]).
    pub fn send_snapshot_chunk(&mut self, to: NodeId, chunk: SnapChunk) -> bool {
        if let Role::Following(f) = &self.role {
            if f.leader != to
                || f.phase != FPhase::Sync
                || f.serving_snap != Some(chunk.snapshot_zxid)
            {
                return false;
            }
            let (epoch, round) = (f.epoch, f.round);
            self.send(
                to,
                Message::Snap {
                    epoch,
                    round,
                    chunk,
                },
            );
            return true;
        }
        let Role::Leading(l) = &mut self.role else {
            return false;
        };
        let epoch = l.epoch;
        let Some(p) = l.peers.get_mut(&to) else {
            return false;
        };
        if p.phase != PPhase::Snap(chunk.snapshot_zxid) {
            return false;
        }
        if !p.snap_heard {
            // A follower that never reported (an older build) is kept
            // alive by our sending, as before progress reports existed.
            p.since = self.now;
        }
        let round = p.round;
        self.send(
            to,
            Message::Snap {
                epoch,
                round,
                chunk,
            },
        );
        true
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
            || self.is_leader()
    }

    /// Takes everything the replica wants done. See [`Ready`].
    pub fn ready(&mut self) -> Ready {
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

    /// The leader's history as the planner sees it; `ends` must be
    /// `self.log.index.epoch_ends()` (the caller owns the vector the view
    /// borrows).
    fn history<'a>(&self, ends: &'a [Zxid]) -> LeaderHistory<'a> {
        LeaderHistory {
            first_retained: self.log.index.first(),
            last: self.log.last(),
            committed: self.commit,
            epoch_ends: ends,
            snapshot: self.snapshot,
            snapshot_bytes: None,
            log_bytes: None,
        }
    }

    fn plan_for(&self, pos: FollowerPosition, force_snap: bool) -> SyncPlan {
        let ends = self.log.index.epoch_ends();
        let h = self.history(&ends);
        let base = self.log.base;
        if !force_snap {
            let p = self.planner.plan(pos, &h);
            if plan::valid(pos, &h, base, p) {
                return p;
            }
            tracing::warn!(?pos, plan = ?p, "planner's plan is not executable; using the kernel's");
        }
        plan::builtin(pos, &h, base, force_snap)
    }

    // ----- role changes ----------------------------------------------------

    fn lose_leader(&mut self, why: &'static str) {
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
        self.out.events.push(Event::LostLeader(self.vote_info()));
    }

    fn become_follower(&mut self, now: Time, leader: NodeId) {
        if matches!(self.role, Role::Leading(_)) {
            self.lose_leader("another leader decided");
        }
        tracing::info!(id = %self.id, %leader, "following");
        self.role = Role::Following(Follower {
            leader,
            phase: FPhase::Discovery,
            epoch: Epoch::ZERO,
            round: 0,
            trunc_done: false,
            newleader_seen: false,
            installing: None,
            snap_done: false,
            serving_snap: None,
            progress_sent_at: None,
            newleader_last: Zxid::ZERO,
            ack_ready_seq: u64::MAX,
            ack_resent_at: now,
            last_heard: now,
            info_sent_at: now,
            applied_reported: Zxid::ZERO,
            applied_reported_at: now,
        });
        self.send_follower_info(leader);
    }

    fn send_follower_info(&mut self, leader: NodeId) {
        let msg = Message::FollowerInfo {
            accepted_epoch: self.hs.accepted_epoch,
            current_epoch: self.hs.current_epoch,
            last_zxid: self.log.last(),
            recovering: self.recovering,
        };
        self.send(leader, msg);
    }

    fn become_leader(&mut self, now: Time) {
        assert!(!self.recovering, "a recovering replica never leads");
        tracing::info!(id = %self.id, accepted = ?self.hs.accepted_epoch, "elected; discovery starts");
        let mut infos = BTreeMap::new();
        infos.insert(self.id, self.hs.accepted_epoch);
        self.role = Role::Leading(Box::new(Leader {
            phase: LPhase::CollectInfo,
            epoch: Epoch::ZERO,
            infos,
            info_recovering: BTreeSet::new(),
            helped: BTreeSet::new(),
            peers: BTreeMap::new(),
            history_end: Zxid::ZERO,
            started: now,
            fetch_from: None,
            fetch_sent_at: now,
            fetch_snap: None,
            fetch_progress_at: now,
            counter: 0,
            hb_round: 0,
            hb_due: now + self.config.heartbeat_interval,
            hb_sent: VecDeque::new(),
            reads: VecDeque::new(),
        }));
    }

    // ----- follower --------------------------------------------------------

    fn follower_step(&mut self, from: NodeId, msg: Message) {
        let Role::Following(f) = &mut self.role else {
            return;
        };
        if f.leader != from {
            tracing::debug!(id = %self.id, %from, msg = msg.name(), "message from a node we do not follow");
            return;
        }
        match msg {
            Message::NewEpoch {
                epoch,
                round,
                established,
            } => {
                let ok = if self.hs.accepted_epoch < epoch {
                    true
                } else if self.hs.accepted_epoch == epoch {
                    self.promised_to == Some((from, epoch)) || established
                } else {
                    false
                };
                if ok
                    && epoch > self.hs.accepted_epoch
                    && self.hold_until.is_some_and(|t| self.now < t)
                {
                    // Lease hold-off after a restart: no new promise yet.
                    // Not a refusal; the leader retries after its sync timeout.
                    tracing::debug!(id = %self.id, ?epoch, "NEWEPOCH during the lease hold-off; ignored");
                    return;
                }
                if !ok {
                    tracing::info!(id = %self.id, ?epoch, accepted = ?self.hs.accepted_epoch, "NEWEPOCH refused");
                    let accepted_epoch = self.hs.accepted_epoch;
                    self.send(
                        from,
                        Message::EpochRefused {
                            epoch,
                            accepted_epoch,
                        },
                    );
                    self.lose_leader("refused NEWEPOCH");
                    return;
                }
                if round < f.round && f.epoch == epoch {
                    return; // a stale round
                }
                f.phase = FPhase::Sync;
                f.epoch = epoch;
                f.round = round;
                f.trunc_done = false;
                f.newleader_seen = false;
                f.installing = None;
                f.snap_done = false;
                f.serving_snap = None;
                f.progress_sent_at = None;
                self.promised_to = Some((from, epoch));
                let hs = HardState {
                    accepted_epoch: epoch,
                    ..self.hs
                };
                self.set_hs(hs);
                tracing::debug!(id = %self.id, ?epoch, round, "promised epoch");
                let msg = Message::AckEpoch {
                    epoch,
                    round,
                    current_epoch: self.hs.current_epoch,
                    last_zxid: self.log.last(),
                };
                self.send_persisted(from, msg);
            }
            Message::Trunc { epoch, round, to } => {
                if f.phase != FPhase::Sync
                    || f.epoch != epoch
                    || f.round != round
                    || f.trunc_done
                    || f.newleader_seen
                    || f.installing.is_some()
                {
                    return;
                }
                f.trunc_done = true;
                if to >= self.log.last() {
                    return;
                }
                if to < self.commit {
                    // Only a faulty leader asks for this: a TRUNC never goes
                    // below a commit point. Refuse it rather than lose
                    // committed entries, and look for another leader.
                    tracing::error!(
                        id = %self.id,
                        %from,
                        ?to,
                        commit = ?self.commit,
                        "TRUNC below the commit point refused"
                    );
                    self.lose_leader("leader asked to drop committed entries");
                    return;
                }
                tracing::info!(id = %self.id, ?to, last = ?self.log.last(), "TRUNC: dropping uncommitted suffix");
                let to = self.log.position_at_or_before(to).unwrap_or(Zxid::ZERO);
                self.log.truncate_after(to);
            }
            Message::Diff {
                epoch,
                prev,
                entries,
            } => {
                if f.phase != FPhase::Sync || f.epoch != epoch || f.installing.is_some() {
                    return;
                }
                self.follower_append(from, epoch, prev, entries, None);
            }
            Message::Accept {
                epoch,
                prev,
                commit,
                entries,
            } => {
                let accepting = f.epoch == epoch
                    && (f.phase == FPhase::Broadcast
                        || (f.phase == FPhase::Sync && f.newleader_seen));
                if !accepting {
                    return;
                }
                self.follower_append(from, epoch, prev, entries, Some(commit));
            }
            Message::Snap {
                epoch,
                round,
                chunk,
            } => {
                if f.phase != FPhase::Sync
                    || f.epoch != epoch
                    || f.round != round
                    || f.newleader_seen
                {
                    return;
                }
                if f.snap_done || f.installing.is_some_and(|s| s != chunk.snapshot_zxid) {
                    return;
                }
                f.installing = Some(chunk.snapshot_zxid);
                self.out
                    .snapshot_requests
                    .push(SnapshotRequest::Write { from, chunk });
            }
            Message::NewLeader { epoch, last_zxid } => {
                if f.phase != FPhase::Sync || f.epoch != epoch || f.installing.is_some() {
                    return;
                }
                if self.log.last() != last_zxid {
                    tracing::debug!(id = %self.id, ours = ?self.log.last(), theirs = ?last_zxid, "NEWLEADER history mismatch");
                    return;
                }
                f.newleader_seen = true;
                f.newleader_last = last_zxid;
                f.ack_ready_seq = self.seq + 1;
                f.ack_resent_at = self.now;
                let hs = HardState {
                    current_epoch: epoch,
                    ..self.hs
                };
                self.set_hs(hs);
                self.send_persisted(from, Message::AckNewLeader { epoch, last_zxid });
            }
            Message::UpToDate { epoch, commit } => {
                if f.epoch != epoch || !f.newleader_seen || f.phase == FPhase::Broadcast {
                    return;
                }
                f.phase = FPhase::Broadcast;
                let state = if self.config.is_observer(self.id) {
                    PeerState::Observing
                } else {
                    PeerState::Following
                };
                tracing::info!(id = %self.id, leader = %from, ?epoch, "synced; broadcast");
                self.out.events.push(Event::Settled {
                    state,
                    leader: from,
                    epoch,
                });
                self.learn_commit(commit);
            }
            Message::Commit { epoch, commit } => {
                if f.epoch == epoch && f.newleader_seen {
                    self.learn_commit(commit);
                }
            }
            Message::Heartbeat {
                epoch,
                commit,
                round,
            } => {
                if f.epoch != epoch || f.phase == FPhase::Discovery {
                    return;
                }
                if f.newleader_seen {
                    self.learn_commit(commit);
                }
                self.send(from, Message::HeartbeatAck { epoch, round });
            }
            Message::ReadIndexResponse { ctx, zxid, .. } => match zxid {
                Some(zxid) => self.out.read_states.push(ReadState { ctx, zxid }),
                None => self.out.events.push(Event::ReadAborted { ctx }),
            },
            Message::Readmit { epoch } => {
                // Honoured only from the leader we follow, in its epoch,
                // once our copy of its history and current epoch are
                // durable (our ACKNEWLEADER said so; check our own view).
                if !self.recovering
                    || self.readmit.is_some()
                    || f.epoch != epoch
                    || f.phase != FPhase::Broadcast
                    || self.durable_hs.current_epoch != epoch
                {
                    return;
                }
                tracing::info!(id = %self.id, leader = %from, ?epoch, "readmitted by the leader; clearing the recovering flag");
                self.readmit = Some((from, epoch, None));
                self.recovering_write = Some(false);
            }
            Message::FetchHistory {
                epoch,
                current_epoch,
                last_zxid,
            } => {
                if f.epoch != epoch || f.phase != FPhase::Sync {
                    return;
                }
                self.serve_fetch(
                    from,
                    epoch,
                    FollowerPosition {
                        current_epoch,
                        last_zxid,
                    },
                );
            }
            Message::FetchSnapshot {
                epoch,
                snapshot,
                offset,
            } => {
                if f.epoch != epoch || f.phase != FPhase::Sync {
                    return;
                }
                let Some(s) = self.snapshot else {
                    tracing::warn!(id = %self.id, leader = %from, "snapshot fetch asked but no local snapshot; ignoring");
                    return;
                };
                let offset = if s == snapshot { offset } else { 0 };
                f.serving_snap = Some(s);
                tracing::info!(id = %self.id, leader = %from, snapshot = ?s, offset, "streaming our snapshot to the leader-elect");
                self.out.snapshot_requests.push(SnapshotRequest::Send {
                    to: from,
                    snapshot: s,
                    offset,
                });
            }
            other => {
                tracing::debug!(id = %self.id, msg = other.name(), "follower ignores message");
            }
        }
    }

    fn learn_commit(&mut self, commit: Zxid) {
        let c = commit.min(self.log.last());
        if c > self.commit {
            self.commit = c;
        }
    }

    /// Appends a DIFF or ACCEPT batch if it continues the log.
    fn follower_append(
        &mut self,
        from: NodeId,
        epoch: Epoch,
        prev: Zxid,
        entries: Vec<Entry>,
        commit: Option<Zxid>,
    ) {
        let last = self.log.last();
        // Well-formedness: strictly increasing after prev.
        let mut p = prev;
        for e in &entries {
            if e.zxid <= p {
                tracing::warn!(%from, "malformed batch: zxids not increasing");
                return;
            }
            p = e.zxid;
        }
        let batch_last = entries.last().map_or(prev, |e| e.zxid);
        if prev > last || !self.log.is_position(prev) {
            self.send(
                from,
                Message::AcceptNack {
                    epoch,
                    last_zxid: last,
                },
            );
            return;
        }
        if prev < last {
            // Overlap (a duplicate or a rewind): our log is a prefix of the
            // leader's history here, so skip what we hold.
            if batch_last <= last {
                if let Some(c) = commit {
                    self.learn_commit(c);
                }
                self.send_persisted(
                    from,
                    Message::Accepted {
                        epoch,
                        durable: last,
                    },
                );
                return;
            }
            if !entries.iter().any(|e| e.zxid == last) {
                self.send(
                    from,
                    Message::AcceptNack {
                        epoch,
                        last_zxid: last,
                    },
                );
                return;
            }
        }
        for e in entries {
            if e.zxid <= last {
                continue;
            }
            if !self.log.index.continues(e.zxid) {
                tracing::warn!(%from, zxid = ?e.zxid, "batch breaks log continuity");
                self.send(
                    from,
                    Message::AcceptNack {
                        epoch,
                        last_zxid: self.log.last(),
                    },
                );
                return;
            }
            self.log.append(e);
        }
        if let Some(c) = commit {
            self.learn_commit(c);
        }
        let durable = self.log.last();
        self.send_persisted(from, Message::Accepted { epoch, durable });
    }

    fn serve_fetch(&mut self, to: NodeId, epoch: Epoch, pos: FollowerPosition) {
        let ends = self.log.index.epoch_ends();
        let h = self.history(&ends);
        let last_zxid = self.log.last();
        let (trunc_to, prev) = match plan::builtin(pos, &h, self.log.base, false) {
            SyncPlan::UpToDate => (None, last_zxid),
            SyncPlan::Diff { after } => (None, after),
            SyncPlan::Trunc { to } | SyncPlan::TruncDiff { to } => (Some(to), to),
            SyncPlan::Snap { .. } => {
                self.send(
                    to,
                    Message::FetchReply {
                        epoch,
                        trunc_to: None,
                        prev: Zxid::ZERO,
                        entries: Vec::new(),
                        last_zxid,
                        unable: true,
                    },
                );
                return;
            }
        };
        let mut entries = Vec::new();
        if let Err(e) = self.log.read(
            prev,
            last_zxid,
            self.config.max_batch_entries,
            self.config.max_batch_bytes,
            &mut entries,
        ) {
            tracing::warn!(?e, "cannot serve fetch");
            return;
        }
        self.send(
            to,
            Message::FetchReply {
                epoch,
                trunc_to,
                prev,
                entries,
                last_zxid,
                unable: false,
            },
        );
    }

    // ----- leader ----------------------------------------------------------

    fn leader_step(&mut self, from: NodeId, msg: Message) {
        let observer = self.config.is_observer(from);
        let now = self.now;
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let epoch = l.epoch;
        match msg {
            Message::FollowerInfo {
                accepted_epoch,
                recovering,
                ..
            } => {
                if recovering {
                    tracing::info!(leader = %self.id, follower = %from, "follower is recovering; not counted until readmitted");
                }
                if l.phase == LPhase::CollectInfo {
                    l.infos.insert(from, accepted_epoch);
                    if recovering {
                        l.info_recovering.insert(from);
                    } else {
                        l.info_recovering.remove(&from);
                    }
                    return;
                }
                if accepted_epoch > epoch {
                    self.lose_leader("a follower promised a higher epoch");
                    return;
                }
                let established = l.phase >= LPhase::Fetching;
                let p = l
                    .peers
                    .entry(from)
                    .or_insert_with(|| Peer::new(now, observer));
                p.last_heard = now;
                p.restart(now);
                p.recovering = recovering;
                p.readmitted = false;
                let round = p.round;
                self.send(
                    from,
                    Message::NewEpoch {
                        epoch,
                        round,
                        established,
                    },
                );
            }
            Message::EpochRefused { accepted_epoch, .. } => {
                if accepted_epoch > epoch {
                    self.lose_leader("a follower refused our epoch");
                }
            }
            Message::AckEpoch {
                epoch: e,
                round,
                current_epoch,
                last_zxid,
            } => {
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e != epoch || p.round != round || p.phase != PPhase::Promising {
                    return;
                }
                p.position = FollowerPosition {
                    current_epoch,
                    last_zxid,
                };
                p.phase = PPhase::Acked;
                p.since = now;
                if l.phase >= LPhase::Sync {
                    self.start_sync(from);
                }
            }
            Message::FetchReply {
                epoch: e,
                trunc_to,
                prev,
                entries,
                last_zxid,
                unable,
            } => {
                if e != epoch || l.phase != LPhase::Fetching || l.fetch_from != Some(from) {
                    return;
                }
                if unable {
                    if l.fetch_snap.is_some() {
                        // A reply to a FETCH sent before we asked for the
                        // snapshot: the transfer answers that.
                        return;
                    }
                    // The follower compacted its log past our position:
                    // take its snapshot, then the entries after it.
                    tracing::info!(id = %self.id, %from, last = ?self.log.last(), "discovery: the follower's log no longer covers our position; fetching its snapshot");
                    l.fetch_snap = Some(FetchSnap {
                        snapshot: Zxid::ZERO,
                        received: 0,
                        installing: false,
                    });
                    l.fetch_sent_at = now;
                    l.fetch_progress_at = now;
                    self.send_fetch_snapshot(from);
                    return;
                }
                if l.fetch_snap.is_some() {
                    // A late reply to a FETCH sent before the snapshot was
                    // asked for; the snapshot replaces our log anyway.
                    return;
                }
                if let Some(t) = trunc_to {
                    if t < self.commit {
                        // A correct peer never answers this; refuse rather
                        // than drop committed entries.
                        tracing::error!(
                            id = %self.id,
                            %from,
                            to = ?t,
                            commit = ?self.commit,
                            "fetched history would drop committed entries; refused"
                        );
                        self.lose_leader("fetched history conflicts with the commit point");
                        return;
                    }
                    if t < self.log.last() {
                        tracing::info!(id = %self.id, to = ?t, "leader truncates to adopt the quorum's history");
                        let t = self.log.position_at_or_before(t).unwrap_or(Zxid::ZERO);
                        self.log.truncate_after(t);
                    }
                }
                if prev == self.log.last() {
                    for e in entries {
                        if !self.log.index.continues(e.zxid) {
                            break;
                        }
                        self.log.append(e);
                    }
                }
                let Role::Leading(l) = &mut self.role else {
                    return;
                };
                if self.log.last() == last_zxid {
                    tracing::info!(id = %self.id, last = ?last_zxid, "fetched the most recent history");
                    l.fetch_from = None;
                    self.begin_sync();
                } else {
                    l.fetch_sent_at = now;
                    self.send_fetch(from);
                }
            }
            Message::SnapProgress {
                epoch: e,
                round,
                snapshot,
                received,
                installing,
            } => {
                // Where a restart resumes (whatever the epoch: it is what
                // the follower's receiver holds); an install in progress
                // has handed its partial file on, so that starts over.
                if installing {
                    self.snap_resume.remove(&from);
                } else {
                    self.snap_resume.insert(from, (snapshot, received));
                }
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e != epoch {
                    return;
                }
                if p.round != round || p.phase != PPhase::Snap(snapshot) {
                    return;
                }
                if installing || received > p.snap_received || !p.snap_heard {
                    p.since = now;
                }
                p.snap_heard = true;
                p.snap_received = received;
            }
            Message::Snap {
                epoch: e, chunk, ..
            } => {
                if e != epoch || l.phase != LPhase::Fetching || l.fetch_from != Some(from) {
                    return;
                }
                let Some(fs) = l.fetch_snap.as_mut() else {
                    return;
                };
                let z = chunk.snapshot_zxid;
                if fs.installing {
                    return; // held already; the install runs
                }
                if fs.snapshot != z {
                    if fs.snapshot != Zxid::ZERO && chunk.offset != 0 {
                        return; // the rest of a transfer we no longer take
                    }
                    if z <= self.log.last() {
                        // Installing drops our log: only a snapshot past
                        // everything we hold keeps every entry we may
                        // have acknowledged (those are in the follower's
                        // history, so below its snapshot). Not the case:
                        // give up as before.
                        tracing::warn!(id = %self.id, %from, snapshot = ?z, last = ?self.log.last(), "the follower's snapshot does not cover our log");
                        self.lose_leader("cannot fetch the most recent history");
                        return;
                    }
                    fs.snapshot = z;
                    fs.received = 0;
                }
                l.fetch_progress_at = now;
                l.fetch_sent_at = now;
                self.out
                    .snapshot_requests
                    .push(SnapshotRequest::Write { from, chunk });
            }
            Message::SnapInstalled { epoch: e, zxid } => {
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e != epoch || p.phase != PPhase::Snap(zxid) {
                    return;
                }
                p.phase = PPhase::Syncing;
                p.since = now;
                p.next_prev = zxid;
                p.inflight.clear();
            }
            Message::Accepted { epoch: e, durable } => {
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e != epoch {
                    return;
                }
                match p.phase {
                    PPhase::Syncing
                    | PPhase::NewLeaderSent(_)
                    | PPhase::Synced
                    | PPhase::Broadcast => {}
                    _ => return,
                }
                p.since = now;
                if matches!(p.phase, PPhase::Synced | PPhase::Broadcast) {
                    p.match_zxid = p.match_zxid.max(durable);
                }
                while p.inflight.front().is_some_and(|(z, _)| *z <= durable) {
                    p.inflight.pop_front();
                }
            }
            Message::AcceptNack {
                epoch: e,
                last_zxid,
            } => {
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e != epoch {
                    return;
                }
                match p.phase {
                    PPhase::Broadcast
                        if self.log.is_position(last_zxid) && last_zxid <= self.log.last() =>
                    {
                        p.next_prev = last_zxid;
                        p.inflight.clear();
                    }
                    PPhase::Broadcast | PPhase::Syncing | PPhase::NewLeaderSent(_) => {
                        p.sync_failures += 1;
                        p.restart(now);
                        let round = p.round;
                        self.send(
                            from,
                            Message::NewEpoch {
                                epoch,
                                round,
                                established: true,
                            },
                        );
                    }
                    _ => {}
                }
            }
            Message::AckNewLeader {
                epoch: e,
                last_zxid,
            } => {
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e == epoch && p.phase == PPhase::Broadcast && l.phase == LPhase::Broadcast {
                    // Acknowledged again: our UPTODATE was lost.
                    let commit = self.commit;
                    tracing::debug!(leader = %self.id, follower = %from, "ACKNEWLEADER again; sending UPTODATE again");
                    self.send(from, Message::UpToDate { epoch, commit });
                    return;
                }
                if e != epoch || p.phase != PPhase::NewLeaderSent(last_zxid) {
                    return;
                }
                p.match_zxid = p.match_zxid.max(last_zxid);
                p.sync_failures = 0;
                if l.phase == LPhase::Broadcast {
                    p.phase = PPhase::Broadcast;
                    let commit = self.commit;
                    p.commit_sent = commit;
                    self.send(from, Message::UpToDate { epoch, commit });
                    self.arm_readmissions(now);
                } else {
                    p.phase = PPhase::Synced;
                }
            }
            Message::Applied { epoch: e, zxid } => {
                if let Some(p) = l.peers.get_mut(&from) {
                    if e == epoch {
                        p.applied = p.applied.max(zxid);
                    }
                }
            }
            Message::HeartbeatAck { epoch: e, round } => {
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e != epoch {
                    return;
                }
                if round > p.hb_acked {
                    p.hb_acked = round;
                    if let Some(&(_, sent)) = l.hb_sent.iter().find(|(r, _)| *r == round) {
                        p.lease_from = p.lease_from.max(sent);
                    }
                }
                self.resolve_reads();
                self.try_readmit();
            }
            Message::ReadIndexRequest { ctx, .. } => {
                if l.phase == LPhase::Broadcast {
                    if self.leader_read(ctx.clone(), Some(from)).is_err() {
                        self.send(
                            from,
                            Message::ReadIndexResponse {
                                epoch,
                                ctx,
                                zxid: None,
                            },
                        );
                    }
                } else {
                    self.send(
                        from,
                        Message::ReadIndexResponse {
                            epoch,
                            ctx,
                            zxid: None,
                        },
                    );
                }
            }
            other => {
                tracing::debug!(id = %self.id, msg = other.name(), "leader ignores message");
            }
        }
    }

    fn send_fetch(&mut self, to: NodeId) {
        let Role::Leading(l) = &self.role else { return };
        let msg = Message::FetchHistory {
            epoch: l.epoch,
            current_epoch: self.hs.current_epoch,
            last_zxid: self.log.last(),
        };
        self.send(to, msg);
    }

    fn send_fetch_snapshot(&mut self, to: NodeId) {
        let Role::Leading(l) = &self.role else { return };
        let Some(fs) = l.fetch_snap else { return };
        let (snapshot, offset) = if fs.installing {
            (Zxid::ZERO, 0)
        } else {
            (fs.snapshot, fs.received)
        };
        let msg = Message::FetchSnapshot {
            epoch: l.epoch,
            snapshot,
            offset,
        };
        self.send(to, msg);
    }

    /// Runs the leader's phase transitions that depend on quorums.
    fn advance_leader(&mut self) {
        for _ in 0..4 {
            let Role::Leading(l) = &mut self.role else {
                return;
            };
            let before = l.phase;
            match l.phase {
                LPhase::CollectInfo => {
                    let counted =
                        |n: NodeId| l.infos.contains_key(&n) && !l.info_recovering.contains(&n);
                    if !self.config.is_quorum(counted) {
                        return;
                    }
                    let helped: Vec<NodeId> = l
                        .infos
                        .keys()
                        .filter(|n| **n != self.id && !l.info_recovering.contains(n))
                        .copied()
                        .collect();
                    l.helped.extend(helped);
                    let max = l.infos.values().copied().max().unwrap_or(Epoch::ZERO);
                    let Some(e) = max.max(self.hs.accepted_epoch).next() else {
                        self.lose_leader("epoch space exhausted");
                        return;
                    };
                    l.epoch = e;
                    l.phase = LPhase::CollectAcks;
                    tracing::info!(id = %self.id, epoch = ?e, "discovery: proposing new epoch");
                    let now = self.now;
                    let infos: Vec<(NodeId, Epoch)> =
                        l.infos.iter().map(|(n, e)| (*n, *e)).collect();
                    let mut sends = Vec::new();
                    for (n, acc) in infos {
                        if n == self.id || acc >= e {
                            continue;
                        }
                        let observer = self.config.is_observer(n);
                        let recovering = l.info_recovering.contains(&n);
                        let p = l.peers.entry(n).or_insert_with(|| Peer::new(now, observer));
                        p.restart(now);
                        p.recovering = recovering;
                        sends.push((n, p.round));
                    }
                    for (n, round) in sends {
                        self.send(
                            n,
                            Message::NewEpoch {
                                epoch: e,
                                round,
                                established: false,
                            },
                        );
                    }
                    let hs = HardState {
                        accepted_epoch: e,
                        ..self.hs
                    };
                    self.set_hs(hs);
                    self.promised_to = Some((self.id, e));
                }
                LPhase::CollectAcks => {
                    let me = self.id;
                    let self_ok = self.durable_hs.accepted_epoch == l.epoch;
                    let acked = |n: NodeId| {
                        if n == me {
                            self_ok
                        } else {
                            l.peers
                                .get(&n)
                                .is_some_and(|p| p.phase == PPhase::Acked && !p.recovering)
                        }
                    };
                    if !self.config.is_quorum(acked) {
                        return;
                    }
                    let helped: Vec<NodeId> = l
                        .peers
                        .iter()
                        .filter(|(_, p)| p.phase == PPhase::Acked && !p.recovering)
                        .map(|(n, _)| *n)
                        .collect();
                    l.helped.extend(helped);
                    // The most recent history among the quorum's voters.
                    let mine = (self.hs.current_epoch, self.log.last());
                    let best = l
                        .peers
                        .iter()
                        .filter(|(n, p)| {
                            p.phase == PPhase::Acked && !p.recovering && self.config.is_voter(**n)
                        })
                        .map(|(n, p)| ((p.position.current_epoch, p.position.last_zxid), *n))
                        .max();
                    match best {
                        Some((pos, n)) if pos > mine => {
                            tracing::info!(id = %self.id, from = %n, ?pos, ?mine, "discovery: fetching the quorum's most recent history");
                            l.phase = LPhase::Fetching;
                            l.fetch_from = Some(n);
                            l.fetch_sent_at = self.now;
                            self.send_fetch(n);
                        }
                        _ => self.begin_sync(),
                    }
                }
                LPhase::Fetching => return,
                LPhase::Sync => {
                    let me = self.id;
                    let self_ok = self.durable_hs.current_epoch == l.epoch
                        && self.log.durable_last() >= l.history_end;
                    let synced = |n: NodeId| {
                        if n == me {
                            self_ok
                        } else {
                            l.peers
                                .get(&n)
                                .is_some_and(|p| p.phase == PPhase::Synced && !p.recovering)
                        }
                    };
                    if !self.config.is_quorum(synced) {
                        return;
                    }
                    let helped: Vec<NodeId> = l
                        .peers
                        .iter()
                        .filter(|(_, p)| p.phase == PPhase::Synced && !p.recovering)
                        .map(|(n, _)| *n)
                        .collect();
                    l.helped.extend(helped);
                    l.phase = LPhase::Broadcast;
                    let epoch = l.epoch;
                    let commit = l.history_end;
                    assert!(commit >= self.commit, "commit point must not go back");
                    self.commit = commit;
                    tracing::info!(id = %self.id, ?epoch, ?commit, "established; broadcast starts");
                    let mut ups = Vec::new();
                    for (n, p) in l.peers.iter_mut() {
                        if p.phase == PPhase::Synced {
                            p.phase = PPhase::Broadcast;
                            p.commit_sent = commit;
                            ups.push(*n);
                        }
                    }
                    for n in ups {
                        self.send(n, Message::UpToDate { epoch, commit });
                    }
                    self.out.events.push(Event::Settled {
                        state: PeerState::Leading,
                        leader: self.id,
                        epoch,
                    });
                    let now = self.now;
                    self.arm_readmissions(now);
                }
                LPhase::Broadcast => {
                    self.advance_commit();
                    return;
                }
            }
            let Role::Leading(l) = &self.role else { return };
            if l.phase == before {
                return;
            }
        }
    }

    fn begin_sync(&mut self) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        l.phase = LPhase::Sync;
        l.history_end = self.log.last();
        l.started = self.now;
        let epoch = l.epoch;
        tracing::info!(id = %self.id, ?epoch, history_end = ?l.history_end, "discovery done; syncing followers");
        let acked: Vec<NodeId> = l
            .peers
            .iter()
            .filter(|(_, p)| p.phase == PPhase::Acked)
            .map(|(n, _)| *n)
            .collect();
        let hs = HardState {
            current_epoch: epoch,
            ..self.hs
        };
        self.set_hs(hs);
        for n in acked {
            self.start_sync(n);
        }
    }

    fn start_sync(&mut self, n: NodeId) {
        let Role::Leading(l) = &self.role else { return };
        let Some(p) = l.peers.get(&n) else { return };
        let force = p.sync_failures >= 2 && self.snapshot.is_some();
        let pos = p.position;
        let plan = self.plan_for(pos, force);
        let now = self.now;
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let epoch = l.epoch;
        let Some(p) = l.peers.get_mut(&n) else { return };
        tracing::info!(leader = %self.id, follower = %n, ?pos, ?plan, "sync mode chosen");
        p.since = now;
        p.inflight.clear();
        let round = p.round;
        match plan {
            SyncPlan::UpToDate => {
                p.next_prev = pos.last_zxid;
                p.phase = PPhase::Syncing;
            }
            SyncPlan::Diff { after } => {
                p.next_prev = after;
                p.phase = PPhase::Syncing;
            }
            SyncPlan::Trunc { to } | SyncPlan::TruncDiff { to } => {
                p.next_prev = to;
                p.phase = PPhase::Syncing;
                self.send(n, Message::Trunc { epoch, round, to });
            }
            SyncPlan::Snap { snapshot } => {
                p.next_prev = snapshot;
                p.phase = PPhase::Snap(snapshot);
                let offset = match self.snap_resume.get(&n) {
                    Some(&(z, off)) if z == snapshot => off,
                    _ => 0,
                };
                p.snap_heard = false;
                p.snap_received = offset;
                if offset > 0 {
                    tracing::info!(leader = %self.id, follower = %n, ?snapshot, offset, "snapshot transfer resumed at the follower's offset");
                }
                self.out.snapshot_requests.push(SnapshotRequest::Send {
                    to: n,
                    snapshot,
                    offset,
                });
            }
        }
    }

    fn advance_commit(&mut self) {
        let Role::Leading(l) = &self.role else { return };
        let me = self.id;
        let mut acks: Vec<Zxid> = Vec::with_capacity(self.config.voters.len());
        for v in &self.config.voters {
            let z = if *v == me {
                if self.durable_hs.current_epoch == l.epoch {
                    self.log.durable_last()
                } else {
                    Zxid::ZERO
                }
            } else {
                match l.peers.get(v) {
                    Some(p)
                        if matches!(p.phase, PPhase::Synced | PPhase::Broadcast)
                            && !p.recovering =>
                    {
                        p.match_zxid
                    }
                    _ => Zxid::ZERO,
                }
            };
            acks.push(z);
        }
        acks.sort_unstable_by(|a, b| b.cmp(a));
        let q = self.config.quorum();
        let c = acks[q - 1].min(self.log.last());
        if c > self.commit {
            debug_assert!(self.log.index.holds(c), "commit point must be held");
            self.commit = c;
        }
    }

    fn leader_tick(&mut self, now: Time) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let timeout = self.config.election_timeout;
        let sync_timeout = self.config.sync_timeout;
        match l.phase {
            LPhase::CollectInfo | LPhase::CollectAcks | LPhase::Fetching => {
                // A fetch by snapshot may outlast discovery's timeout while
                // it progresses, as long as a quorum still answers us.
                let progress_timeout = self.config.snapshot_progress_timeout;
                let me = self.id;
                let heard = |n: NodeId| {
                    n == me
                        || l.peers.get(&n).is_some_and(|p| {
                            p.phase == PPhase::Acked
                                && !p.recovering
                                && now.saturating_since(p.last_heard) <= timeout
                        })
                };
                let snap_alive = l.fetch_snap.is_some()
                    && now.saturating_since(l.fetch_progress_at) <= progress_timeout
                    && self.config.is_quorum(heard);
                if now.saturating_since(l.started) > timeout * 2 && !snap_alive {
                    self.lose_leader("discovery timed out");
                    return;
                }
                if l.phase == LPhase::Fetching {
                    match l.fetch_snap {
                        None if now.saturating_since(l.fetch_sent_at) > sync_timeout => {
                            if let Some(n) = l.fetch_from {
                                l.fetch_sent_at = now;
                                self.send_fetch(n);
                            }
                        }
                        // No chunk nor progress for a while (a lost request
                        // or chunk): ask again, resuming at what we hold.
                        // An install of our own runs off the loop and
                        // reports progress, which is not the follower's to
                        // resend.
                        Some(fs)
                            if !fs.installing
                                && now.saturating_since(l.fetch_sent_at) > sync_timeout
                                && now.saturating_since(l.fetch_progress_at) > sync_timeout =>
                        {
                            if let Some(n) = l.fetch_from {
                                l.fetch_sent_at = now;
                                tracing::info!(id = %self.id, from = %n, snapshot = ?fs.snapshot, offset = fs.received, "snapshot fetch stalled; asking again");
                                self.send_fetch_snapshot(n);
                            }
                        }
                        _ => {}
                    }
                }
            }
            LPhase::Sync | LPhase::Broadcast => {
                let me = self.id;
                let heard = |n: NodeId| {
                    n == me
                        || l.peers.get(&n).is_some_and(|p| {
                            !p.recovering && now.saturating_since(p.last_heard) <= timeout
                        })
                };
                if now.saturating_since(l.started) > timeout && !self.config.is_quorum(heard) {
                    self.lose_leader("check-quorum: no quorum heard");
                    return;
                }
            }
        }
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        // Per-follower retries.
        let epoch = l.epoch;
        let established = l.phase >= LPhase::Fetching;
        let progress_timeout = self.config.snapshot_progress_timeout;
        let mut resend = Vec::new();
        let mut snap_restarts = 0;
        for (n, p) in l.peers.iter_mut() {
            let stale = if let PPhase::Snap(snapshot) = p.phase {
                let stale = now.saturating_since(p.since) > progress_timeout;
                if stale {
                    snap_restarts += 1;
                    tracing::warn!(
                        leader = %self.id,
                        follower = %n,
                        ?snapshot,
                        received = p.snap_received,
                        timeout = ?progress_timeout,
                        "snapshot transfer: no progress within the timeout; restarting the follower's sync"
                    );
                }
                stale
            } else {
                now.saturating_since(p.since) > sync_timeout
            };
            match p.phase {
                PPhase::Promising
                | PPhase::Snap(_)
                | PPhase::Syncing
                | PPhase::NewLeaderSent(_)
                    if stale =>
                {
                    if matches!(
                        p.phase,
                        PPhase::Snap(_) | PPhase::Syncing | PPhase::NewLeaderSent(_)
                    ) {
                        p.sync_failures += 1;
                    }
                    p.restart(now);
                    resend.push((*n, p.round));
                }
                PPhase::Broadcast
                    if p.inflight
                        .front()
                        .is_some_and(|(_, t)| now.saturating_since(*t) > sync_timeout) =>
                {
                    // Lost ACCEPTs: go back to what the follower holds.
                    p.inflight.clear();
                    p.next_prev = p.match_zxid;
                }
                _ => {}
            }
        }
        self.snap_restarts += snap_restarts;
        for (n, round) in resend {
            self.send(
                n,
                Message::NewEpoch {
                    epoch,
                    round,
                    established,
                },
            );
        }
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if now >= l.hb_due {
            l.hb_due = now + self.config.heartbeat_interval;
            self.send_heartbeats(now);
        }
    }

    fn send_heartbeats(&mut self, now: Time) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        l.hb_round += 1;
        let round = l.hb_round;
        l.hb_sent.push_back((round, now));
        while l.hb_sent.len() > HEARTBEAT_HISTORY {
            l.hb_sent.pop_front();
        }
        let epoch = l.epoch;
        let commit = self.commit;
        let targets: Vec<(NodeId, Zxid)> = l
            .peers
            .iter()
            .filter(|(_, p)| p.phase != PPhase::Promising)
            .map(|(n, p)| {
                let c = if matches!(p.phase, PPhase::Synced | PPhase::Broadcast) {
                    commit
                } else {
                    Zxid::ZERO
                };
                (*n, c)
            })
            .collect();
        let readmitted: Vec<NodeId> = l
            .peers
            .iter()
            .filter(|(_, p)| p.readmitted && p.phase == PPhase::Broadcast)
            .map(|(n, _)| *n)
            .collect();
        // NEWLEADER not acknowledged yet: it may be lost; the follower
        // takes it again idempotently (same history, same epoch).
        let newleader: Vec<(NodeId, Zxid)> = l
            .peers
            .iter()
            .filter_map(|(n, p)| match p.phase {
                PPhase::NewLeaderSent(z) if p.since < now => Some((*n, z)),
                _ => None,
            })
            .collect();
        for (n, last_zxid) in newleader {
            self.send(n, Message::NewLeader { epoch, last_zxid });
        }
        for (n, commit) in targets {
            self.send(
                n,
                Message::Heartbeat {
                    epoch,
                    commit,
                    round,
                },
            );
        }
        for n in readmitted {
            self.send(n, Message::Readmit { epoch });
        }
    }

    /// Established leader: every recovering follower that is durably
    /// synced in this epoch (ACKNEWLEADER received) and that no quorum of
    /// this epoch counted gets a readmission round: the next heartbeat
    /// round, sent after its acknowledgement arrived. Sends that round now.
    fn arm_readmissions(&mut self, now: Time) {
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
    fn try_readmit(&mut self) {
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

    fn leader_read(&mut self, ctx: Bytes, from: Option<NodeId>) -> Result<(), ReadIndexError> {
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
        let lease_ok = lease
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

    fn resolve_reads(&mut self) {
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

    /// Sends DIFF/NEWLEADER to syncing followers and ACCEPT/COMMIT to the
    /// others, within each follower's pipeline window.
    fn flush_peers(&mut self) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if l.phase < LPhase::Sync {
            return;
        }
        let epoch = l.epoch;
        let commit = self.commit;
        let last = self.log.last();
        let sync_target = if l.phase == LPhase::Sync {
            l.history_end
        } else {
            last
        };
        let window = self.config.pipeline_window;
        let (max_e, max_b) = (self.config.max_batch_entries, self.config.max_batch_bytes);
        let now = self.now;
        let mut restarts = Vec::new();
        let broadcast = l.phase == LPhase::Broadcast;
        for (n, p) in l.peers.iter_mut() {
            let (target, syncing) = match p.phase {
                PPhase::Syncing => (sync_target, true),
                PPhase::Broadcast if broadcast => (if p.observer { commit } else { last }, false),
                _ => continue,
            };
            let mut sent_commit = false;
            let mut guard = 0usize;
            while p.inflight.len() < window && p.next_prev < target && guard < window {
                guard += 1;
                let mut batch = Vec::new();
                match self.log.read(p.next_prev, target, max_e, max_b, &mut batch) {
                    Ok(()) => {}
                    Err(ReadError::NotHeld) => {
                        restarts.push(*n);
                        break;
                    }
                    Err(ReadError::Storage(e)) => {
                        self.out.events.push(Event::StorageFailed(e));
                        break;
                    }
                }
                let Some(bl) = batch.last().map(|e| e.zxid) else {
                    break;
                };
                let prev = p.next_prev;
                p.next_prev = bl;
                p.inflight.push_back((bl, now));
                let msg = if syncing {
                    Message::Diff {
                        epoch,
                        prev,
                        entries: batch,
                    }
                } else {
                    sent_commit = true;
                    p.commit_sent = commit;
                    Message::Accept {
                        epoch,
                        prev,
                        commit,
                        entries: batch,
                    }
                };
                self.out.messages.push(Envelope {
                    group: self.config.group,
                    from: self.id,
                    to: *n,
                    msg,
                });
            }
            if syncing && p.next_prev == target && !restarts.contains(n) {
                p.phase = PPhase::NewLeaderSent(target);
                p.since = now;
                self.out.messages.push(Envelope {
                    group: self.config.group,
                    from: self.id,
                    to: *n,
                    msg: Message::NewLeader {
                        epoch,
                        last_zxid: target,
                    },
                });
            } else if !syncing && !sent_commit && p.commit_sent < commit {
                p.commit_sent = commit;
                self.out.messages.push(Envelope {
                    group: self.config.group,
                    from: self.id,
                    to: *n,
                    msg: Message::Commit { epoch, commit },
                });
            }
        }
        for n in restarts {
            if let Some(p) = l.peers.get_mut(&n) {
                tracing::info!(leader = %self.id, follower = %n, "follower fell behind the log; resyncing");
                p.sync_failures = p.sync_failures.max(2);
                p.restart(now);
                let round = p.round;
                self.out.messages.push(Envelope {
                    group: self.config.group,
                    from: self.id,
                    to: n,
                    msg: Message::NewEpoch {
                        epoch,
                        round,
                        established: true,
                    },
                });
            }
        }
    }

    /// Emits the log prefix the storage may drop.
    fn maybe_compact(&mut self) {
        let Some(snap) = self.snapshot else { return };
        let mut pin = self.applied.min(snap).min(self.log.durable_last());
        if let Role::Leading(l) = &self.role {
            let now = self.now;
            let pin_timeout = self.config.follower_pin_timeout;
            for v in &self.config.voters {
                if *v == self.id {
                    continue;
                }
                match l.peers.get(v) {
                    Some(p) if now.saturating_since(p.last_heard) <= pin_timeout => {
                        pin = pin.min(p.applied);
                        // A follower receiving a snapshot continues with
                        // DIFF from it: keep that part of the log, however
                        // long the transfer takes.
                        if let PPhase::Snap(z) = p.phase {
                            pin = pin.min(z);
                        }
                    }
                    None if now.saturating_since(l.started) <= pin_timeout => pin = Zxid::ZERO,
                    _ => {}
                }
            }
        }
        let Some(pin) = self.log.index.at_or_before(pin) else {
            return;
        };
        let Some(c) = self.log.index.back_n(pin, self.config.retention_entries) else {
            return;
        };
        if self.log.index.first().is_some_and(|f| c >= f) && c <= snap {
            tracing::debug!(id = %self.id, upto = ?c, "log cleanup");
            self.log.compact(c);
        }
    }
}

impl Peer {
    fn new(now: Time, observer: bool) -> Peer {
        Peer {
            phase: PPhase::Promising,
            since: now,
            round: 0,
            observer,
            position: FollowerPosition {
                current_epoch: Epoch::ZERO,
                last_zxid: Zxid::ZERO,
            },
            next_prev: Zxid::ZERO,
            match_zxid: Zxid::ZERO,
            inflight: VecDeque::new(),
            commit_sent: Zxid::ZERO,
            applied: Zxid::ZERO,
            last_heard: now,
            hb_acked: 0,
            lease_from: Time::ZERO,
            sync_failures: 0,
            snap_heard: false,
            snap_received: 0,
            recovering: false,
            readmit_round: None,
            readmitted: false,
        }
    }

    /// Restarts this follower's sync from NEWEPOCH: forget what it holds.
    fn restart(&mut self, now: Time) {
        self.round += 1;
        self.phase = PPhase::Promising;
        self.since = now;
        self.match_zxid = Zxid::ZERO;
        self.inflight.clear();
        self.readmit_round = None;
    }
}

impl PartialOrd for LPhase {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for LPhase {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let rank = |p: &LPhase| match p {
            LPhase::CollectInfo => 0,
            LPhase::CollectAcks => 1,
            LPhase::Fetching => 2,
            LPhase::Sync => 3,
            LPhase::Broadcast => 4,
        };
        rank(self).cmp(&rank(other))
    }
}
