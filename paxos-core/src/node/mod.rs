//! The node layer: a [`Replica`], an [`Elector`] and a [`StateMachine`]
//! composed into one sans-IO node that owns the persistence pipeline.
//!
//! The kernel's [`Ready`] says what must be done and in which order; this
//! layer decides *when*: it writes each `Ready` to [`Storage`] at once,
//! batches the syncs (one background sync in flight, covering every write
//! made before it was asked for: group commit), syncs a hard state or a
//! truncation inline after everything before it, holds back and retries
//! writes a full disk refuses, persists the election round before any vote
//! of it leaves, applies committed entries, answers proposals and
//! linearizable reads, and says when a local snapshot is due. The reference
//! node (`paxos-kv`) runs it under tokio; the simulator ([`crate::sim`])
//! runs the same code under simulated time, network and disks, so every
//! simulated seed exercises the production pipeline.
//!
//! Like `quinn-proto`, the layer does no IO of its own apart from the
//! narrow [`Storage`] trait (writes, inline syncs and [`MetaKey`] values),
//! reads no clock (time is an argument) and never blocks:
//!
//! - inputs: [`Node::handle_message`], [`Node::handle_election_message`],
//!   [`Node::handle_timeout`], [`Node::propose`], [`Node::read`],
//!   [`Node::handle_sync_done`], and the snapshot calls;
//! - then [`Node::process`], which drains the elector and the kernel
//!   until neither moves;
//! - outputs: [`Node::poll_transmit`] (frames to send),
//!   [`Node::poll_sync`] (a background sync to run; report it with
//!   `handle_sync_done`), [`Node::poll_event`] (answers and work for the
//!   caller) and [`Node::poll_timeout`] (when to call `handle_timeout`).
//!
//! The crate's front page drives three nodes this way.

mod pipeline;

pub use pipeline::SyncId;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

use crate::election::{Decision, Elector, PeerState};
use crate::membership::Membership;
use crate::message::{Entry, EntryKind, Envelope};
use crate::ready::{
    Event, Persisted, ProposeError, ReadIndexError, Ready, SnapshotRequest, TransferError,
};
use crate::replica::ChangeError;
use crate::replica::Replica;
use crate::state_machine::StateMachine;
use crate::storage::{MetaKey, Storage, StorageError};
use crate::{Epoch, NodeId, SnapChunk, Time, Zxid};
use pipeline::{Pipeline, Route, SyncGroup};

/// Rounds of [`Node::process`] at most per call (each drains the elector
/// and one `Ready`); the kernel's windows bound the work of each.
const MAX_PROCESS_ROUNDS: usize = 64;

/// An elector message with its receiver.
type Addressed<M> = (NodeId, M);

/// The most elector messages held while a new election round waits for a
/// background sync (a round sends a few per peer; more are dropped like
/// lost packets and sent again on the elector's timer).
const MAX_HELD_ELECTION_MESSAGES: usize = 256;

/// The node layer's settings. The defaults suit the reference node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// A follower whose batch holds at most this many payload bytes syncs
    /// inline instead of on the background sync (a short round trip beats
    /// a thread hop when the batch is small); 0 never does.
    pub inline_sync_bytes: usize,
    /// Ask for a local snapshot every this many applied entries (0: never).
    pub snapshot_every: u64,
    /// Proposals waiting for their commit, at most.
    pub max_pending_writes: usize,
    /// Bytes of the commands waiting for their commit, at most.
    pub max_pending_write_bytes: usize,
    /// Linearizable reads waiting, at most.
    pub max_pending_reads: usize,
    /// Bytes the caller declared for waiting reads, at most.
    pub max_pending_read_bytes: usize,
    /// A read not served within this time is failed ([`ReadFailure::TimedOut`]).
    pub read_timeout: Duration,
    /// Committed entries not to apply (the operator's way past an entry
    /// that makes the state machine panic); [`StateMachine::skip`] is
    /// called instead.
    pub skip_entries: Vec<Zxid>,
    /// First pause before a refused storage write is tried again.
    pub stall_backoff_min: Duration,
    /// Longest pause between two tries of a refused storage write.
    pub stall_backoff_max: Duration,
    /// Where this incarnation's read ids start. A read forwarded to the
    /// leader is matched with its answer by id, and an answer can outlive
    /// the process that asked (in flight, or queued in a transport while
    /// the node restarted): ids must not repeat across incarnations, or a
    /// restarted node's read takes an old answer and may be stale. Give
    /// each start a different value (a random number; the simulator uses
    /// the incarnation count shifted into the upper bits).
    pub read_ids_from: u64,
}

impl Default for NodeConfig {
    fn default() -> NodeConfig {
        NodeConfig {
            inline_sync_bytes: 2048,
            snapshot_every: 0,
            max_pending_writes: 64 * 1024,
            max_pending_write_bytes: 256 << 20,
            max_pending_reads: 16 * 1024,
            max_pending_read_bytes: 16 << 20,
            read_timeout: Duration::from_secs(2),
            skip_entries: Vec::new(),
            stall_backoff_min: Duration::from_millis(10),
            stall_backoff_max: Duration::from_secs(1),
            read_ids_from: 1,
        }
    }
}

/// A frame for the caller to send.
#[derive(Clone, Debug)]
pub enum Transmit<M> {
    /// A kernel message (its envelope names the receiver).
    Core(Envelope),
    /// An elector message for a peer.
    Election(NodeId, M),
}

/// Why a linearizable read failed; the client should retry (elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadFailure {
    /// Not served within [`NodeConfig::read_timeout`].
    #[error("read timed out")]
    TimedOut,
    /// Leadership changed before the read was confirmed.
    #[error("leadership changed")]
    LeadershipChanged,
    /// The kernel could not confirm the read.
    #[error("read aborted")]
    Aborted,
}

/// An answer or a piece of work for the caller, from [`Node::poll_event`].
#[derive(Debug)]
pub enum NodeEvent<C> {
    /// A proposal committed and was applied: the state machine's answer.
    Written {
        /// The caller's token given to [`Node::propose`].
        token: C,
        /// Where it committed.
        zxid: Zxid,
        /// What [`StateMachine::apply`] returned.
        result: Bytes,
    },
    /// Another leader's command committed where this proposal stood: it
    /// did not happen (retrying is safe).
    Superseded {
        /// The proposal's token.
        token: C,
    },
    /// Leadership changed before this proposal committed: it may or may not
    /// commit later (a retry with the same session and sequence is applied
    /// at most once).
    OutcomeUnknown {
        /// The proposal's token.
        token: C,
    },
    /// A linearizable read may be served now from [`Node::state_machine`].
    ReadReady {
        /// The token given to [`Node::read`].
        token: C,
    },
    /// A linearizable read failed.
    ReadFailed {
        /// The read's token.
        token: C,
        /// Why.
        reason: ReadFailure,
    },
    /// Stream the local snapshot `snapshot` to `to` from byte `offset`:
    /// hand its chunks to [`Node::send_snapshot_chunk`], paced.
    SendSnapshot {
        /// The receiver.
        to: NodeId,
        /// The snapshot (its zxid).
        snapshot: Zxid,
        /// Where to start.
        offset: u64,
    },
    /// A snapshot chunk arrived: store it, report with
    /// [`Node::snapshot_progress`], and install the snapshot once whole
    /// ([`Node::install_snapshot`]).
    SnapshotChunk {
        /// The sender.
        from: NodeId,
        /// The chunk.
        chunk: SnapChunk,
    },
    /// Enough entries were applied: take a local snapshot of
    /// [`Node::state_machine`] at its applied zxid *when you take it* (more
    /// entries may have been applied since this event was queued) and
    /// report that zxid with [`Node::snapshot_taken`], or
    /// [`Node::snapshot_failed`].
    SnapshotDue,
    /// This node lost its leader: outgoing snapshot streams can stop.
    LostLeader,
    /// The membership in force changed (the layer has told the elector).
    /// Record [`Node::membership_at`] with every snapshot you take.
    MembershipChanged {
        /// The membership now in force.
        membership: Membership,
        /// The membership-change entry that set it (`None`: a snapshot's
        /// or the start-up configuration's).
        zxid: Option<Zxid>,
    },
    /// This leader handed its leadership to `to` and stepped down (a
    /// [`NodeEvent::LostLeader`] follows): the hand-over asked with
    /// [`Node::transfer_leadership`] took place. Whether `to` then wins the
    /// election shows in the next [`NodeEvent::Settled`].
    HandedOff {
        /// The nominated successor.
        to: NodeId,
    },
    /// The hand-over asked with [`Node::transfer_leadership`] was given up
    /// (the target did not catch up within an election timeout); this node
    /// leads and proposes again.
    TransferAborted {
        /// The target.
        to: NodeId,
    },
    /// Readmitted after recovering: the caller may record that it is a
    /// member again (the kernel's flag is durable already).
    RecoveryComplete {
        /// The leader that readmitted this node.
        leader: NodeId,
        /// Its epoch.
        epoch: Epoch,
    },
    /// An election decided (for statistics; the layer has acted on it).
    ElectionDecided(Decision),
    /// The replica established itself under a leader (or as one); the
    /// layer has told the elector.
    Settled {
        /// Leading, following or observing.
        state: PeerState,
        /// The leader.
        leader: NodeId,
        /// Its epoch.
        epoch: Epoch,
    },
    /// A storage read failed; the kernel skipped the work and retries.
    StorageReadFailed(StorageError),
}

/// What [`Node::install_snapshot`] did with a received snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a taken snapshot must stay the caller's durable snapshot"]
pub enum Installed {
    /// Taken: the log was reset to the snapshot and its state replaced the
    /// live state machine.
    Replaced,
    /// Taken: the log was reset to the snapshot, but the state machine had
    /// already applied that far and was kept. The snapshot must still stay
    /// the caller's newest durable snapshot, because the log entries up to
    /// it are gone.
    AlreadyApplied,
    /// Not taken: the kernel no longer expected this snapshot (leadership
    /// moved, or another snapshot is awaited). Nothing changed; the staged
    /// state may be dropped.
    NotExpected,
}

impl Installed {
    /// Whether the kernel took the snapshot (its log now starts after it),
    /// so the caller must keep it as its durable snapshot.
    pub fn taken(self) -> bool {
        !matches!(self, Installed::NotExpected)
    }
}

/// Why [`Node::propose`] refused a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeRejected {
    /// The kernel refused it (not the leader, too large, epoch exhausted).
    #[error(transparent)]
    Kernel(#[from] ProposeError),
    /// Too many proposals wait for their commit ([`NodeConfig::max_pending_writes`]
    /// or its byte bound); retry later.
    #[error("busy: {pending} proposals ({bytes} bytes) waiting")]
    Busy {
        /// Proposals waiting.
        pending: usize,
        /// Their bytes.
        bytes: usize,
    },
}

/// Why [`Node::read`] refused a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadRejected {
    /// No leader to confirm it with; `leader` is a hint.
    #[error("no leader here (hint: {leader:?})")]
    NotLeader {
        /// The leader this node follows, if any.
        leader: Option<NodeId>,
    },
    /// Too many reads wait; retry later.
    #[error("busy: too many reads waiting")]
    Busy,
}

/// A refused request: the reason and the caller's token, handed back.
#[derive(Debug)]
pub struct Rejection<E, C> {
    /// Why.
    pub error: E,
    /// The token the caller gave.
    pub token: C,
}

/// A failure that stops the node: the process should restart and recover
/// from disk (a failed flush may leave the medium in any state).
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// A storage operation failed in a way that leaves the handle unusable.
    #[error("{what} failed; the node must restart and recover from disk: {source}")]
    Storage {
        /// What was being done.
        what: &'static str,
        /// The storage's error.
        #[source]
        source: StorageError,
    },
    /// The state machine panicked on a committed entry: every restart
    /// would replay it. Skip it with [`NodeConfig::skip_entries`] after
    /// looking at it.
    #[error("the state machine panicked applying committed entry {zxid} ({message})")]
    ApplyPanicked {
        /// The entry.
        zxid: Zxid,
        /// The panic's message.
        message: String,
    },
}

/// What the node layer counted, for status pages and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Proposals accepted by the kernel.
    pub proposals: u64,
    /// Committed entries applied (or skipped).
    pub applied: u64,
    /// Syncs completed (inline and background).
    pub syncs: u64,
    /// Inline syncs among them.
    pub inline_syncs: u64,
    /// Election decisions acted on.
    pub elections: u64,
    /// Times the storage refused a write and the node stalled.
    pub storage_stalls: u64,
    /// Snapshots installed into the live state.
    pub snapshot_installs: u64,
    /// `Ready`s that dropped a log prefix.
    pub compactions: u64,
}

/// A read waiting for its confirmation.
struct PendingRead<C> {
    token: C,
    bytes: usize,
    deadline: Time,
}

/// One node: replica, elector and state machine, with the persistence
/// pipeline and the bookkeeping of proposals and reads. `C` is the
/// caller's token for a request (a reply channel, a request id).
pub struct Node<S: Storage, E: Elector, M: StateMachine, C> {
    replica: Replica<S>,
    elector: E,
    sm: M,
    cfg: NodeConfig,
    pipeline: Pipeline,
    /// The election round last made durable.
    election_round: u64,
    /// The compaction mark last made durable.
    compaction_mark: u64,
    /// The newest local snapshot (taken or installed).
    latest_snapshot: Option<Zxid>,
    applied_since_snapshot: u64,
    snapshot_due: bool,
    /// [`Node::purge_log`] waits for the snapshot it asked for.
    purge_pending: bool,
    /// Kernel messages to send, in order (moved in whole batches).
    core_out: VecDeque<Envelope>,
    /// Elector messages to send, in order.
    election_out: VecDeque<(NodeId, E::Message)>,
    /// When the election round was written as a record of the log
    /// (`Storage::state_in_log`) and is not yet durable: the number of the
    /// background sync that makes it so, and the elector's messages held
    /// until then, in order (at most [`MAX_HELD_ELECTION_MESSAGES`]).
    election_held: Option<(u64, Vec<Addressed<E::Message>>)>,
    events: VecDeque<NodeEvent<C>>,
    /// Proposed commands by zxid, with their tokens.
    /// Proposals in zxid order (commits come in that order too).
    pending_writes: VecDeque<(Zxid, EntryKind, Bytes, C)>,
    pending_write_bytes: usize,
    /// The state machine's answers for the batch being applied (reused).
    apply_results: Vec<Bytes>,
    /// Reads waiting for their read-index round, by read id.
    pending_reads: HashMap<u64, PendingRead<C>>,
    /// Confirmed reads waiting for apply to reach their zxid.
    waiting_reads: VecDeque<(Zxid, PendingRead<C>)>,
    pending_read_bytes: usize,
    next_read: u64,
    next_read_sweep: Time,
    stats: NodeStats,
    /// Set by a fatal error: the node takes no more input.
    failed: Option<NodeError>,
    /// The membership the elector was last given (the committed one), and
    /// the pending voters given with it.
    elector_membership: Option<(Membership, Vec<NodeId>)>,
    /// The newest committed membership change kept in storage
    /// ([`MetaKey::CommittedConfig`]), as a raw zxid.
    committed_config: u64,
}

impl<S: Storage, E: Elector, M: StateMachine, C> Node<S, E, M, C> {
    /// Composes a node. The elector must be fresh (its round is taken from
    /// storage's [`MetaKey::ElectionRound`] by the caller when it is
    /// built); the state machine holds what the replica was told it
    /// recovered ([`crate::Recovered`]).
    pub fn new(replica: Replica<S>, elector: E, sm: M, cfg: NodeConfig) -> Result<Self, NodeError> {
        let mut replica = replica;
        let election_round = replica.storage().meta(MetaKey::ElectionRound);
        let compaction_mark = replica.storage().meta(MetaKey::CompactionMark);
        let committed_config = replica.storage().meta(MetaKey::CommittedConfig);
        if committed_config > 0 {
            replica.note_committed_config(Zxid(committed_config));
        }
        // A state machine that starts past zero was restored from a snapshot.
        let latest_snapshot = Some(sm.applied()).filter(|&z| z > Zxid::ZERO);
        let next_read = cfg.read_ids_from.max(1);
        Ok(Node {
            replica,
            elector,
            sm,
            cfg,
            pipeline: Pipeline::default(),
            election_round,
            compaction_mark,
            committed_config,
            latest_snapshot,
            applied_since_snapshot: 0,
            snapshot_due: false,
            purge_pending: false,
            core_out: VecDeque::new(),
            election_out: VecDeque::new(),
            election_held: None,
            events: VecDeque::new(),
            pending_writes: VecDeque::new(),
            apply_results: Vec::new(),
            pending_write_bytes: 0,
            pending_reads: HashMap::new(),
            waiting_reads: VecDeque::new(),
            pending_read_bytes: 0,
            next_read,
            next_read_sweep: Time::ZERO,
            stats: NodeStats::default(),
            failed: None,
            elector_membership: None,
        })
    }

    // ----- accessors -----

    /// The replica.
    pub fn replica(&self) -> &Replica<S> {
        &self.replica
    }

    /// The elector.
    pub fn elector(&self) -> &E {
        &self.elector
    }

    /// The state machine (serve stale reads and [`NodeEvent::ReadReady`] from it).
    pub fn state_machine(&self) -> &M {
        &self.sm
    }

    /// The storage (reads).
    pub fn storage(&self) -> &S {
        self.replica.storage()
    }

    /// The storage, mutably: for a caller's background sync of a storage
    /// it cannot share across threads (the simulator, tests). Writing
    /// through it bypasses the pipeline.
    pub fn storage_mut(&mut self) -> &mut S {
        self.replica.storage_mut()
    }

    /// Whether this node is the established leader.
    pub fn is_leader(&self) -> bool {
        self.replica.is_leader()
    }

    /// The counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Whether the storage refuses writes and the node is stalled.
    pub fn is_stalled(&self) -> bool {
        self.pipeline.stall.is_some()
    }

    /// Proposals waiting for their commit.
    pub fn pending_writes(&self) -> usize {
        self.pending_writes.len()
    }

    /// Reads waiting (for confirmation or apply).
    pub fn pending_reads(&self) -> usize {
        self.pending_reads.len() + self.waiting_reads.len()
    }

    /// Whether a background sync is in flight.
    pub fn is_syncing(&self) -> bool {
        self.pipeline.syncing.is_some()
    }

    // ----- inputs -----

    /// A kernel message from a peer (the caller checked the sender).
    pub fn handle_message(&mut self, now: Time, env: Envelope) {
        self.replica.handle_message(now, env);
    }

    /// An elector message from `from`. It also wakes a quiesced group: a
    /// node looking for a leader may have lost the one this node follows.
    pub fn handle_election_message(&mut self, now: Time, from: NodeId, msg: E::Message) {
        self.replica.wake(now);
        self.elector.handle_message(now, from, msg);
    }

    /// Ends the group's quiescence (see
    /// [`Config::quiesce_after`](crate::Config::quiesce_after)): call it
    /// when the node of the group's leader, or as leader of any member, is
    /// lost. Harmless otherwise.
    pub fn wake(&mut self, now: Time) {
        self.replica.wake(now);
    }

    /// The host heard nothing from `node` for an election timeout: a
    /// quiesced follower of it looks for a leader at once, any other
    /// replica is woken ([`Replica::leader_node_lost`]).
    pub fn leader_node_lost(&mut self, now: Time, node: NodeId) {
        self.replica.leader_node_lost(now, node);
    }

    /// The host's word on whether it can reach `node` (see
    /// [`Elector::set_reachable`]): a looking elector need not wait for the
    /// vote of a node the host cannot reach. Does not wake the group.
    pub fn set_peer_reachable(&mut self, now: Time, node: NodeId, reachable: bool) {
        self.elector.set_reachable(now, node, reachable);
    }

    /// Whether the group is quiesced (no timers of its own run).
    pub fn is_quiesced(&self) -> bool {
        self.replica.is_quiesced()
    }

    /// A client's request reaches the leader: it ends quiescence first.
    fn wake_leader(&mut self, now: Time) {
        if self.replica.is_leader() {
            self.replica.wake(now);
        }
    }

    /// Timers: the kernel's, the elector's, the stall's retry and the read
    /// sweep. Call at [`poll_timeout`](Self::poll_timeout) (calling early
    /// is harmless).
    pub fn handle_timeout(&mut self, now: Time) {
        if self.replica.poll_timeout().is_some_and(|t| t <= now) {
            self.replica.handle_timeout(now);
        }
        if self.elector.poll_timeout().is_some_and(|t| t <= now) {
            self.elector.handle_timeout(now);
        }
        self.expire_reads(now);
        if let Err(e) = self.retry_stalled(now) {
            self.fail(e);
        }
    }

    /// Proposes a command; `token` comes back in a [`NodeEvent`] once its
    /// fate is known, or at once with the refusal.
    pub fn propose(
        &mut self,
        now: Time,
        data: Bytes,
        token: C,
    ) -> Result<Zxid, Rejection<ProposeRejected, C>> {
        self.wake_leader(now);
        if self.pending_writes.len() >= self.cfg.max_pending_writes
            || self.pending_write_bytes + data.len() > self.cfg.max_pending_write_bytes
        {
            return Err(Rejection {
                error: ProposeRejected::Busy {
                    pending: self.pending_writes.len(),
                    bytes: self.pending_write_bytes,
                },
                token,
            });
        }
        match self.replica.propose(data.clone()) {
            Ok(zxid) => {
                self.stats.proposals += 1;
                self.pending_write_bytes += data.len();
                self.pending_writes
                    .push_back((zxid, EntryKind::Command, data, token));
                Ok(zxid)
            }
            Err(e) => Err(Rejection {
                error: e.into(),
                token,
            }),
        }
    }

    /// Leader: proposes the membership `to` (one node's role changed; see
    /// [`Replica::propose_membership`]). `token` comes back in
    /// [`NodeEvent::Written`] (with an empty result) once the change
    /// commits, or as for a command if leadership changes first.
    pub fn propose_membership(
        &mut self,
        now: Time,
        to: Membership,
        token: C,
    ) -> Result<Zxid, Rejection<ChangeError, C>> {
        self.wake_leader(now);
        let data = to.encode();
        match self.replica.propose_membership(to) {
            Ok(zxid) => {
                self.pending_write_bytes += data.len();
                self.pending_writes
                    .push_back((zxid, EntryKind::Config, data, token));
                Ok(zxid)
            }
            Err(error) => Err(Rejection { error, token }),
        }
    }

    /// The membership in force after `zxid`: record it with a snapshot
    /// taken at `zxid`.
    pub fn membership_at(&self, zxid: Zxid) -> Membership {
        self.replica.membership_at(zxid)
    }

    /// Leader: hands the leadership to the voter `to` (see
    /// [`Replica::transfer_leadership`]): proposals are refused
    /// ([`ProposeError::Transferring`]) until [`NodeEvent::HandedOff`] or
    /// [`NodeEvent::TransferAborted`]. Call [`process`](Node::process) after.
    pub fn transfer_leadership(&mut self, now: Time, to: NodeId) -> Result<(), TransferError> {
        self.wake_leader(now);
        self.replica.transfer_leadership(now, to)
    }

    /// Starts a linearizable read; [`NodeEvent::ReadReady`] says when the
    /// state machine may answer it. `bytes` is what the caller holds for it
    /// (the key), counted against [`NodeConfig::max_pending_read_bytes`].
    pub fn read(
        &mut self,
        now: Time,
        bytes: usize,
        token: C,
    ) -> Result<(), Rejection<ReadRejected, C>> {
        if self.pending_reads() >= self.cfg.max_pending_reads
            || self.pending_read_bytes + bytes > self.cfg.max_pending_read_bytes
        {
            return Err(Rejection {
                error: ReadRejected::Busy,
                token,
            });
        }
        self.wake_leader(now);
        let rid = self.next_read;
        let ctx = Bytes::copy_from_slice(&rid.to_le_bytes());
        match self.replica.read_index(now, ctx) {
            Ok(()) => {
                self.next_read = self.next_read.wrapping_add(1).max(1);
                self.pending_read_bytes += bytes;
                let deadline = now + self.cfg.read_timeout;
                self.pending_reads.insert(
                    rid,
                    PendingRead {
                        token,
                        bytes,
                        deadline,
                    },
                );
                Ok(())
            }
            Err(ReadIndexError::NoLeader) => Err(Rejection {
                error: ReadRejected::NotLeader {
                    leader: self.replica.leader(),
                },
                token,
            }),
            Err(ReadIndexError::Busy) => Err(Rejection {
                error: ReadRejected::Busy,
                token,
            }),
        }
    }

    /// The background sync `id` (from [`poll_sync`](Self::poll_sync))
    /// returned. An error is fatal: after a failed flush the medium may
    /// hold anything, and only a restart's recovery can tell.
    pub fn handle_sync_done(
        &mut self,
        now: Time,
        id: SyncId,
        result: Result<(), StorageError>,
    ) -> Result<(), NodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if let Err(source) = result {
            return Err(self.fail(NodeError::Storage {
                what: "the background sync",
                source,
            }));
        }
        match self.pipeline.syncing.take() {
            Some((g, group)) if g == id => {
                self.stats.syncs += 1;
                self.release(now, group);
                if self.election_held.as_ref().is_some_and(|(n, _)| *n <= id.0) {
                    self.release_election();
                }
            }
            other => {
                // An inline flush already covered and released this one.
                self.pipeline.syncing = other;
                return Ok(());
            }
        }
        let fresh = self.pipeline.group();
        let group = std::mem::replace(&mut self.pipeline.queued, fresh);
        if group.is_empty() && !self.pipeline.queued_needs_sync {
            self.pipeline.recycle(group);
            return Ok(());
        }
        if std::mem::take(&mut self.pipeline.queued_needs_sync) {
            self.pipeline.start(group);
        } else {
            self.release(now, group);
        }
        Ok(())
    }

    /// Hands the kernel the next chunk of an outgoing snapshot; `false`
    /// when the kernel no longer wants this transfer (stop it).
    pub fn send_snapshot_chunk(&mut self, to: NodeId, chunk: SnapChunk) -> bool {
        self.replica.send_snapshot_chunk(to, chunk)
    }

    /// Reports how much of the snapshot being received is held, and
    /// whether it is being installed (the leader then waits).
    pub fn snapshot_progress(
        &mut self,
        now: Time,
        snapshot: Zxid,
        received: u64,
        installing: bool,
    ) {
        self.replica
            .snapshot_progress(now, snapshot, received, installing);
    }

    /// A received snapshot is durable and `staged` holds its state. If the
    /// kernel still expects this snapshot (leadership may have moved
    /// meanwhile) it takes it: its log now continues after `zxid`, and
    /// `staged` replaces the live state machine unless that had already
    /// applied as far. `membership` is the one recorded with the snapshot
    /// ([`Node::membership_at`] where it was taken). See [`Installed`] for
    /// what the caller keeps.
    pub fn install_snapshot(
        &mut self,
        now: Time,
        zxid: Zxid,
        staged: M,
        membership: Membership,
    ) -> Installed {
        let before = self.replica.applied_zxid();
        if !self.replica.snapshot_installed(now, zxid, membership) {
            tracing::warn!(id = %self.replica.id(), ?zxid, "snapshot no longer expected; state kept");
            return Installed::NotExpected;
        }
        self.latest_snapshot = Some(self.latest_snapshot.map_or(zxid, |z| z.max(zxid)));
        if before < zxid {
            self.sm = staged;
            self.applied_since_snapshot = 0;
            self.stats.snapshot_installs += 1;
            tracing::info!(id = %self.replica.id(), ?zxid, "snapshot installed; state replaced");
            self.serve_reads();
            Installed::Replaced
        } else {
            tracing::info!(id = %self.replica.id(), ?zxid, applied = ?before, "snapshot installed; the state had applied as far and is kept");
            Installed::AlreadyApplied
        }
    }

    /// The local snapshot asked for by [`NodeEvent::SnapshotDue`] is
    /// durable: the log may be cut up to `zxid`.
    pub fn snapshot_taken(&mut self, zxid: Zxid) {
        self.snapshot_due = false;
        self.latest_snapshot = Some(self.latest_snapshot.map_or(zxid, |z| z.max(zxid)));
        self.replica.snapshot_taken(zxid);
        if std::mem::take(&mut self.purge_pending) {
            self.replica.compact_log_now();
        }
    }

    /// The host wants this group's old log entries gone (a shared log's
    /// segment is kept only for them: a quiet group written to long ago
    /// holds back every segment written since). Asks for a local snapshot
    /// ([`NodeEvent::SnapshotDue`]) if the state machine has applied past
    /// the newest one, and once it is taken (at once if none is needed)
    /// cuts the log as far as it safely can, without the usual retention
    /// ([`Replica::compact_log_now`]). Returns whether a snapshot was
    /// asked for.
    pub fn purge_log(&mut self) -> bool {
        let applied = self.sm.applied();
        if self.latest_snapshot.is_some_and(|z| z >= applied) {
            self.replica.compact_log_now();
            return false;
        }
        self.purge_pending = true;
        if self.snapshot_due {
            // The snapshot under way serves.
            return false;
        }
        tracing::info!(id = %self.replica.id(), ?applied, latest = ?self.latest_snapshot, "snapshot asked for to let the log go");
        self.snapshot_due = true;
        self.applied_since_snapshot = 0;
        self.events.push_back(NodeEvent::SnapshotDue);
        true
    }

    /// Changes how often a local snapshot is asked for (0: never).
    pub fn set_snapshot_every(&mut self, every: u64) {
        self.cfg.snapshot_every = every;
    }

    /// The local snapshot failed; another is asked for after as many
    /// entries again.
    pub fn snapshot_failed(&mut self) {
        self.snapshot_due = false;
        self.purge_pending = false;
    }

    // ----- the driving loop -----

    /// Drains the elector and the kernel until neither has anything to do,
    /// running the persistence pipeline on each `Ready`. Call after inputs,
    /// then poll the outputs.
    pub fn process(&mut self, now: Time) -> Result<(), NodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        for _ in 0..MAX_PROCESS_ROUNDS {
            self.keep_committed_config();
            self.sync_elector(now);
            let mut moved = false;
            let mut round_durable = true;
            if let Some(round) = self.elector.round().filter(|&r| r != self.election_round) {
                // Durable before any vote of the new round leaves: synced
                // now, or, when the storage keeps it as a record of its log,
                // covered by the next background sync with the votes held
                // until then (one flush for every group entering a round).
                let deferred = self.replica.storage().state_in_log();
                let storage = self.replica.storage_mut();
                let written = if deferred {
                    storage.write_meta(MetaKey::ElectionRound, round)
                } else {
                    storage.save_meta(MetaKey::ElectionRound, round)
                };
                match written {
                    Ok(()) => {
                        self.election_round = round;
                        if deferred {
                            self.hold_election_until_synced();
                        }
                    }
                    Err(e) if e.is_retryable() => {
                        // A full disk: no vote of this round may leave. They
                        // are dropped like lost packets (the elector sends
                        // again on its timer) and the write is retried then.
                        round_durable = false;
                        tracing::warn!(id = %self.replica.id(), round, error = %e,
                            "election round not persisted (disk full?); holding this node's votes back");
                    }
                    Err(source) => {
                        return Err(self.fail(NodeError::Storage {
                            what: "persisting the election round",
                            source,
                        }))
                    }
                }
            }
            while let Some((to, msg)) = self.elector.poll_transmit() {
                if !round_durable {
                    continue;
                }
                match &mut self.election_held {
                    // Past the bound they are dropped like lost packets:
                    // the elector sends again on its timer.
                    Some((_, held)) if held.len() >= MAX_HELD_ELECTION_MESSAGES => {}
                    Some((_, held)) => held.push((to, msg)),
                    None => self.election_out.push_back((to, msg)),
                }
            }
            while let Some(decision) = self.elector.poll_decision() {
                self.stats.elections += 1;
                tracing::info!(id = %self.replica.id(), leader = %decision.leader, round = decision.round, "election decided");
                self.replica.handle_leader_decision(now, decision);
                self.events.push_back(NodeEvent::ElectionDecided(decision));
                moved = true;
            }
            if self.replica.has_ready() {
                let ready = self.replica.ready();
                if !ready.is_empty() {
                    self.handle_ready(now, ready)?;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        Ok(())
    }

    /// Keeps the newest committed membership change in storage (rare: once
    /// per change), so that a restart counts it before a leader speaks. A
    /// refused write (a full disk) is only logged: it is a hint for
    /// liveness, asked again at the next change.
    fn keep_committed_config(&mut self) {
        let Some(z) = self
            .replica
            .committed_config_zxid()
            .filter(|z| z.as_u64() > self.committed_config)
        else {
            return;
        };
        // Asked once per change, whatever the outcome.
        self.committed_config = z.as_u64();
        if let Err(error) = self
            .replica
            .storage_mut()
            .save_meta(MetaKey::CommittedConfig, z.as_u64())
        {
            tracing::warn!(id = %self.replica.id(), zxid = ?z, %error,
                "could not keep the committed membership change; a restart counts its log's older membership until a leader speaks");
        }
    }

    /// Keeps the elector on the membership committed as far as this node
    /// knows: its voters count. Not the one in force: an uncommitted change
    /// a lagging node still holds (to be dropped by the next leader's TRUNC)
    /// would make it wait for votes the others never give, so it could
    /// never decide on the leader that would sync it. Every other member of
    /// the membership in force is given as an observer: the elector talks
    /// to it (a newcomer must learn who leads, or the kernel's quorum,
    /// which counts the membership in force, could not form). The kernel
    /// counts every quorum itself, whatever the elector decides.
    fn sync_elector(&mut self, now: Time) {
        let committed = self.replica.committed_membership();
        let in_force = self.replica.membership();
        let me = self.replica.id();
        // A change this node holds, not yet committed, that takes away its
        // vote: it may not stand (its kernel refuses to lead outside the
        // membership in force, and as the holder of the newest history it
        // would be elected again and again while everyone waited for it).
        // It stays an observer in its own view, so it still locks for the
        // peers that count it, and stands again if the change is dropped.
        let counted = |n: NodeId| committed.is_voter(n) && (n != me || in_force.is_voter(me));
        // The voters of a newer membership in force, not known committed:
        // they decide too (see `Elector::reconfigure_with_pending`).
        let mut pending: Vec<NodeId> = Vec::new();
        if !committed.same_members(in_force) {
            pending.clone_from(&in_force.voters);
            pending.sort_unstable();
            let mut known = committed.voters.clone();
            known.sort_unstable();
            if pending == known {
                pending.clear();
            }
        }
        // Checked without building anything: this runs in every round of
        // every `process` (per group, per turn, on a node of many).
        if let Some((given, given_pending)) = &self.elector_membership {
            let voters_match = given.voters.iter().copied().eq(committed
                .voters
                .iter()
                .copied()
                .filter(|&v| counted(v)));
            let observers_match = in_force
                .voters
                .iter()
                .chain(&in_force.observers)
                .chain(&committed.observers)
                .filter(|n| !counted(**n))
                .all(|n| given.is_observer(*n))
                && given
                    .observers
                    .iter()
                    .all(|o| committed.is_observer(*o) || in_force.is_member(*o));
            if voters_match && observers_match && *given_pending == pending {
                return;
            }
        }
        let voters: Vec<NodeId> = committed
            .voters
            .iter()
            .copied()
            .filter(|&v| counted(v))
            .collect();
        let mut observers: Vec<NodeId> = committed.observers.clone();
        let stood_down = committed.is_voter(me) && !voters.contains(&me);
        for n in in_force
            .voters
            .iter()
            .chain(&in_force.observers)
            .chain(stood_down.then_some(&me))
        {
            if !voters.contains(n) && !observers.contains(n) {
                observers.push(*n);
            }
        }
        let m = Membership {
            voters,
            observers,
            ..Membership::default()
        };
        tracing::info!(id = %self.replica.id(), voters = ?m.voters, pending = ?pending, observers = ?m.observers, "the elector follows the committed membership (and the one in force, if newer)");
        self.elector
            .reconfigure_with_pending(now, &m.voters, &pending, &m.observers);
        self.elector_membership = Some((m, pending));
    }

    // ----- outputs -----

    /// The next frame to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit<E::Message>> {
        // The two protocols are independent: their relative order does not
        // matter, each one's own order is kept.
        if let Some((to, msg)) = self.election_out.pop_front() {
            return Some(Transmit::Election(to, msg));
        }
        self.core_out.pop_front().map(Transmit::Core)
    }

    /// A background sync to run: make every write so far durable (the log;
    /// hard states are synced inline), then report with
    /// [`handle_sync_done`](Self::handle_sync_done). At most one is in
    /// flight; writes go on meanwhile.
    #[must_use]
    pub fn poll_sync(&mut self) -> Option<SyncId> {
        self.pipeline.requested.take()
    }

    /// The next answer or piece of work.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<NodeEvent<C>> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next needed.
    pub fn poll_timeout(&self) -> Option<Time> {
        let mut next: Option<Time> = None;
        let mut take = |t: Option<Time>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        take(self.replica.poll_timeout());
        take(self.elector.poll_timeout());
        take(self.pipeline.poll_timeout());
        if !self.pending_reads.is_empty() || !self.waiting_reads.is_empty() {
            take(Some(self.next_read_sweep));
        }
        next
    }

    // ----- internals -----

    fn fail(&mut self, e: NodeError) -> NodeError {
        tracing::error!(id = %self.replica.id(), error = %e, "node stopped");
        self.failed = Some(e.clone());
        e
    }

    fn handle_ready(&mut self, now: Time, mut ready: Ready) -> Result<(), NodeError> {
        let marker = ready.persist_marker();
        self.core_out.extend(ready.messages.drain(..));
        let waiting = std::mem::take(&mut ready.persisted_messages);
        let committed = std::mem::take(&mut ready.committed);
        let read_states = std::mem::take(&mut ready.read_states);
        let snapshot_requests = std::mem::take(&mut ready.snapshot_requests);
        let events = std::mem::take(&mut ready.events);
        self.persist(now, ready, marker, waiting)?;

        let mut results = std::mem::take(&mut self.apply_results);
        results.clear();
        let applied = self.apply_batch(&committed, &mut results);
        for (e, result) in committed.iter().zip(results.drain(..)) {
            self.answer_write(e, result);
        }
        self.apply_results = results;
        applied?;
        if let Some(last) = committed.last() {
            self.replica.applied(last.zxid);
        }
        let last_applied = committed.last().map(|e| e.zxid);
        for rs in read_states {
            let rid = read_id(&rs.ctx);
            if let Some(read) = rid.and_then(|r| self.pending_reads.remove(&r)) {
                self.waiting_reads.push_back((rs.zxid, read));
            }
        }
        self.serve_reads();
        for req in snapshot_requests {
            match req {
                SnapshotRequest::Send {
                    to,
                    snapshot,
                    offset,
                } => self.events.push_back(NodeEvent::SendSnapshot {
                    to,
                    snapshot,
                    offset,
                }),
                SnapshotRequest::Write { from, chunk } => self
                    .events
                    .push_back(NodeEvent::SnapshotChunk { from, chunk }),
            }
        }
        for ev in events {
            self.on_event(now, ev);
        }
        if last_applied.is_some() {
            self.maybe_snapshot();
        }
        Ok(())
    }

    /// Writes `ready` and routes it through the pipeline.
    fn persist(
        &mut self,
        now: Time,
        ready: Ready,
        marker: Persisted,
        waiting: Vec<Envelope>,
    ) -> Result<(), NodeError> {
        let writes = ready.needs_sync() || ready.compact_to.is_some();
        if ready.compact_to.is_some() {
            self.stats.compactions += 1;
        }
        if self.pipeline.stall.is_some() {
            // The disk refused an earlier write: this one waits behind it
            // (in order), and so does everything waiting for it.
            self.hold(ready, marker, waiting);
            return Ok(());
        }
        if writes && !self.write_or_stall(now, &ready)? {
            self.hold(ready, marker, waiting);
            return Ok(());
        }
        let small = self.small_follower_batch(&ready);
        let state_in_log = self.replica.storage().state_in_log();
        match self.pipeline.route(&ready, small, state_in_log) {
            Route::Inline => {
                self.pipeline.queued.push((marker, waiting));
                self.pipeline.queued_needs_sync = true;
                self.flush_now(now)?;
            }
            Route::Queue => {
                self.pipeline.queued_needs_sync |= ready.needs_sync();
                self.pipeline.queued.push((marker, waiting));
            }
            Route::Background => {
                let mut group = self.pipeline.group();
                group.push((marker, waiting));
                self.pipeline.start(group);
            }
            Route::Release => {
                // Behind whatever is queued (nothing is in flight here).
                let fresh = self.pipeline.group();
                let mut group = std::mem::replace(&mut self.pipeline.queued, fresh);
                group.push((marker, waiting));
                self.release(now, group);
            }
        }
        Ok(())
    }

    /// Whether `ready` is a small follower batch worth syncing inline.
    fn small_follower_batch(&self, ready: &Ready) -> bool {
        if self.cfg.inline_sync_bytes == 0 || self.replica.is_leader() {
            return false;
        }
        let mut bytes = 0usize;
        for e in &ready.entries {
            bytes += e.data.len();
            if bytes > self.cfg.inline_sync_bytes {
                return false;
            }
        }
        true
    }

    /// Applies `ready`'s writes (no sync). `Ok(false)` if the storage
    /// refused them but is intact: the node stalls.
    fn write_or_stall(&mut self, now: Time, ready: &Ready) -> Result<bool, NodeError> {
        match self.write(ready) {
            Ok(()) => Ok(true),
            Err(e) if e.is_retryable() => {
                tracing::error!(id = %self.replica.id(), error = %e,
                    "storage write refused (disk full?): not acknowledging anything written from now on; retrying with backoff");
                self.pipeline.stall(now, self.cfg.stall_backoff_min);
                self.stats.storage_stalls += 1;
                Ok(false)
            }
            Err(source) => Err(self.fail(NodeError::Storage {
                what: "a storage write",
                source,
            })),
        }
    }

    /// Applies a `Ready`'s writes to storage, recording the compaction mark
    /// first when the prefix is to go past it.
    fn write(&mut self, ready: &Ready) -> Result<(), StorageError> {
        if let Some(c) = ready
            .compact_to
            .filter(|c| c.as_u64() > self.compaction_mark)
        {
            // Before the prefix goes: starting from this log will need a
            // snapshot at or above `c`. The newest snapshot covers every
            // compaction until the next one, so this is one durable write
            // per snapshot, not per batch.
            let mark = self.latest_snapshot.map_or(c, |z| z.max(c)).as_u64();
            self.replica
                .storage_mut()
                .save_meta(MetaKey::CompactionMark, mark)?;
            self.compaction_mark = mark;
        }
        self.replica.storage_mut().write_ready(ready)
    }

    fn hold(&mut self, ready: Ready, marker: Persisted, waiting: Vec<Envelope>) {
        let Some(stall) = self.pipeline.stall.as_mut() else {
            panic!("invariant: a Ready is held only while the pipeline is stalled");
        };
        stall.held.push_back((ready, marker, waiting));
    }

    /// While stalled, retries the held writes in order once the backoff
    /// has passed; when all went in, syncs them and releases what waited.
    fn retry_stalled(&mut self, now: Time) -> Result<(), NodeError> {
        match &self.pipeline.stall {
            Some(stall) if now >= stall.retry_at => {}
            _ => return Ok(()),
        }
        // Bounded by the held queue, which the kernel's windows bound.
        loop {
            let Some(stall) = self.pipeline.stall.as_mut() else {
                return Ok(());
            };
            let Some((mut ready, marker, waiting)) = stall.held.pop_front() else {
                break;
            };
            // A failed batch may have gone in partly (up to a segment roll
            // that failed): without a truncation first, append only the rest.
            if ready.truncate_after.is_none() {
                let last = self.replica.storage().last_zxid();
                ready.entries.retain(|e| Some(e.zxid) > last);
            }
            match self.write(&ready) {
                Ok(()) => self.pipeline.queued.push((marker, waiting)),
                Err(e) if e.is_retryable() => {
                    let max = self.cfg.stall_backoff_max;
                    let id = self.replica.id();
                    let Some(stall) = self.pipeline.stall.as_mut() else {
                        return Ok(());
                    };
                    stall.held.push_front((ready, marker, waiting));
                    stall.attempts += 1;
                    stall.backoff = (stall.backoff * 2).min(max);
                    stall.retry_at = now + stall.backoff;
                    if stall.attempts % 20 == 0 {
                        tracing::warn!(%id, error = %e, attempts = stall.attempts,
                            stalled_ms = now.saturating_since(stall.since).as_millis() as u64,
                            "storage still refuses writes; retrying");
                    }
                    return Ok(());
                }
                Err(source) => {
                    return Err(self.fail(NodeError::Storage {
                        what: "a held storage write",
                        source,
                    }))
                }
            }
        }
        if let Some(stall) = self.pipeline.stall.take() {
            tracing::info!(id = %self.replica.id(), attempts = stall.attempts,
                stalled_ms = now.saturating_since(stall.since).as_millis() as u64,
                "storage takes writes again; syncing what waited");
        }
        self.pipeline.queued_needs_sync = true;
        self.flush_now(now)
    }

    /// Syncs inline (log first, then the hard state), releasing the sync in
    /// flight and everything queued too: this sync covers their writes. The
    /// in-flight sync's own completion is then ignored.
    fn flush_now(&mut self, now: Time) -> Result<(), NodeError> {
        let mut group = match self.pipeline.syncing.take() {
            Some((_, g)) => g,
            None => self.pipeline.group(),
        };
        // A sync asked for but not yet taken by the caller is covered too.
        self.pipeline.requested = None;
        group.append(&mut self.pipeline.queued);
        self.pipeline.queued_needs_sync = false;
        if let Err(source) = self.replica.storage_mut().sync() {
            return Err(self.fail(NodeError::Storage {
                what: "an inline sync",
                source,
            }));
        }
        self.stats.syncs += 1;
        self.stats.inline_syncs += 1;
        self.release(now, group);
        // Every write so far is durable, the election round with them.
        self.release_election();
        Ok(())
    }

    /// The election round was just written as a record of the log: the
    /// elector's messages wait for a background sync that covers it (one
    /// started now if none is in flight, else the next one).
    fn hold_election_until_synced(&mut self) {
        let needed = if self.pipeline.syncing.is_none() {
            let group = self.pipeline.group();
            self.pipeline.start(group).0
        } else {
            self.pipeline.queued_needs_sync = true;
            self.pipeline.last_sync + 1
        };
        match &mut self.election_held {
            Some((n, _)) => *n = (*n).max(needed),
            None => self.election_held = Some((needed, Vec::new())),
        }
    }

    /// The election round is durable: the held messages leave, in order.
    fn release_election(&mut self) {
        if let Some((_, held)) = self.election_held.take() {
            self.election_out.extend(held);
        }
    }

    /// The writes of `group` are durable: send what waited, tell the kernel.
    fn release(&mut self, now: Time, mut group: SyncGroup) {
        let mut last = None;
        for (marker, msgs) in group.drain(..) {
            self.core_out.extend(msgs);
            last = Some(marker);
        }
        self.pipeline.recycle(group);
        if let Some(marker) = last {
            self.replica.persisted(now, marker);
        }
    }

    /// Applies a batch of committed entries in order (skipping those the
    /// operator named), their answers pushed to `results`, under one panic
    /// guard: a panic of the state machine stops the node with an error
    /// naming the entry (it is committed, so a restart would replay it);
    /// the entries before it are applied and answered.
    fn apply_batch(
        &mut self,
        committed: &[Entry],
        results: &mut Vec<Bytes>,
    ) -> Result<(), NodeError> {
        let sm = &mut self.sm;
        let skip = &self.cfg.skip_entries;
        let mut at = Zxid::ZERO;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for e in committed {
                at = e.zxid;
                let result = if e.is_config() {
                    // The kernel acts on membership changes; the state
                    // machine only moves past them.
                    sm.skip(e.zxid)
                } else if !skip.is_empty() && skip.contains(&e.zxid) {
                    tracing::warn!(zxid = %e.zxid, bytes = e.data.len(), "committed entry skipped as the operator asked");
                    sm.skip(e.zxid)
                } else {
                    sm.apply(e.zxid, &e.data)
                };
                results.push(result);
            }
        }));
        self.stats.applied += results.len() as u64;
        self.applied_since_snapshot += results.len() as u64;
        match outcome {
            Ok(()) => Ok(()),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into());
                Err(self.fail(NodeError::ApplyPanicked { zxid: at, message }))
            }
        }
    }

    /// Answers the proposal committed as `e`, if this node proposed it.
    /// Proposals and commits both run in zxid order, so only the front of
    /// the queue is looked at.
    fn answer_write(&mut self, e: &Entry, result: Bytes) {
        while let Some((zxid, _, _, _)) = self.pending_writes.front() {
            if *zxid > e.zxid {
                return;
            }
            let Some((zxid, kind, data, token)) = self.pending_writes.pop_front() else {
                return;
            };
            self.pending_write_bytes -= data.len();
            if zxid == e.zxid && kind == e.kind && data == e.data {
                self.events.push_back(NodeEvent::Written {
                    token,
                    zxid,
                    result,
                });
                return;
            }
            // Another command committed at (or past) this proposal's zxid.
            self.events.push_back(NodeEvent::Superseded { token });
            if zxid == e.zxid {
                return;
            }
        }
    }

    /// Answers confirmed reads whose zxid is applied. Read points come back
    /// in increasing order, so only the front is looked at.
    fn serve_reads(&mut self) {
        let applied = self.replica.applied_zxid();
        while self
            .waiting_reads
            .front()
            .is_some_and(|(z, _)| *z <= applied)
        {
            if let Some((_, read)) = self.waiting_reads.pop_front() {
                self.pending_read_bytes -= read.bytes;
                self.events
                    .push_back(NodeEvent::ReadReady { token: read.token });
            }
        }
    }

    /// Fails reads whose round never came back or whose apply point is not
    /// reached in time, so both queues stay bounded in time as in size.
    fn expire_reads(&mut self, now: Time) {
        if now < self.next_read_sweep {
            return;
        }
        self.next_read_sweep = now + self.cfg.read_timeout / 4;
        let expired: Vec<u64> = self
            .pending_reads
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(&rid, _)| rid)
            .collect();
        for rid in expired {
            if let Some(read) = self.pending_reads.remove(&rid) {
                self.fail_read(read, ReadFailure::TimedOut);
            }
        }
        let mut kept = VecDeque::with_capacity(self.waiting_reads.len());
        for (z, read) in std::mem::take(&mut self.waiting_reads) {
            if read.deadline > now {
                kept.push_back((z, read));
            } else {
                self.fail_read(read, ReadFailure::TimedOut);
            }
        }
        self.waiting_reads = kept;
    }

    fn fail_read(&mut self, read: PendingRead<C>, reason: ReadFailure) {
        self.pending_read_bytes -= read.bytes;
        self.events.push_back(NodeEvent::ReadFailed {
            token: read.token,
            reason,
        });
    }

    fn maybe_snapshot(&mut self) {
        // Replicas apply the same entries at about the same time: a
        // per-node offset (up to 7/16 of the interval) keeps them from all
        // pausing for a snapshot at once.
        let every = self.cfg.snapshot_every;
        let offset = self.replica.id().0 % 8 * (every / 16);
        if every == 0 || self.applied_since_snapshot < every + offset || self.snapshot_due {
            return;
        }
        self.snapshot_due = true;
        self.applied_since_snapshot = 0;
        self.events.push_back(NodeEvent::SnapshotDue);
    }

    fn on_event(&mut self, now: Time, ev: Event) {
        let id = self.replica.id();
        match ev {
            Event::MembershipChanged { membership, zxid } => {
                tracing::info!(%id, ?zxid, voters = ?membership.voters, observers = ?membership.observers, "membership in force changed");
                self.events
                    .push_back(NodeEvent::MembershipChanged { membership, zxid });
            }
            Event::HandedOff { to } => {
                self.events.push_back(NodeEvent::HandedOff { to });
            }
            Event::TransferAborted { to } => {
                self.events.push_back(NodeEvent::TransferAborted { to });
            }
            Event::LostLeader(vote) | Event::HandedOver(vote) => {
                if matches!(ev, Event::HandedOver(_)) {
                    tracing::info!(%id, ?vote, "the leader handed over to us; looking as the nominee");
                    self.elector.start_looking_nominated(now, vote);
                } else {
                    tracing::info!(%id, ?vote, "lost the leader; looking");
                    self.elector.start_looking(now, vote);
                }
                // Proposals in flight may or may not commit (a new leader
                // may carry them on): their outcome is unknown.
                for (_, _, _, token) in self.pending_writes.drain(..) {
                    self.events.push_back(NodeEvent::OutcomeUnknown { token });
                }
                self.pending_write_bytes = 0;
                let reads: Vec<PendingRead<C>> =
                    self.pending_reads.drain().map(|(_, r)| r).collect();
                for read in reads {
                    self.fail_read(read, ReadFailure::LeadershipChanged);
                }
                self.events.push_back(NodeEvent::LostLeader);
            }
            Event::Settled {
                state,
                leader,
                epoch,
            } => {
                tracing::info!(%id, ?state, %leader, ?epoch, "settled");
                self.elector.settle(now, state, leader, epoch);
                self.events.push_back(NodeEvent::Settled {
                    state,
                    leader,
                    epoch,
                });
            }
            Event::ReadAborted { ctx } => {
                if let Some(read) = read_id(&ctx).and_then(|r| self.pending_reads.remove(&r)) {
                    self.fail_read(read, ReadFailure::Aborted);
                }
            }
            Event::RecoveryStarted => {
                tracing::warn!(%id, "recovering: not voting until an established leader readmits this node");
                self.elector.set_voting(now, false);
            }
            Event::RecoveryComplete { leader, epoch } => {
                tracing::info!(%id, %leader, ?epoch, "readmitted: voting again");
                self.elector.set_voting(now, true);
                self.events
                    .push_back(NodeEvent::RecoveryComplete { leader, epoch });
            }
            Event::StorageFailed(e) => {
                tracing::error!(%id, error = %e, "storage read failed; the kernel retries");
                self.events.push_back(NodeEvent::StorageReadFailed(e));
            }
        }
    }
}

impl<S: Storage, E: Elector, M: StateMachine, C> std::fmt::Debug for Node<S, E, M, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("replica", &self.replica)
            .field("stalled", &self.pipeline.stall.is_some())
            .field(
                "syncing",
                &self.pipeline.syncing.as_ref().map(|(id, _)| *id),
            )
            .field("pending_writes", &self.pending_writes.len())
            .field("pending_reads", &self.pending_reads())
            .finish()
    }
}

fn read_id(ctx: &Bytes) -> Option<u64> {
    let b: [u8; 8] = ctx.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}
