//! What the kernel hands its caller: the [`Ready`] batch of messages,
//! writes, commits and events, and the small types that travel in it.
//!
//! These live apart from the replica so that the storage seam
//! ([`Storage::write_ready`](crate::Storage::write_ready)) can name a
//! `Ready` without depending on the replica's internals.

use bytes::Bytes;

use crate::election::{PeerState, VoteInfo};
use crate::membership::Membership;
use crate::message::{Entry, Envelope, HardState, SnapChunk};
use crate::storage::StorageError;
use crate::{Epoch, NodeId, Zxid};
#[cfg(doc)]
use crate::{Replica, Storage};

/// What a replica recovered at start, besides its storage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The state machine's applied zxid (`StateMachine::applied`).
    pub applied: Zxid,
    /// The zxid of the newest durable local snapshot, if any.
    pub snapshot: Option<Zxid>,
    /// The membership in force at that snapshot, as recorded with it
    /// ([`Replica::membership_at`]); `None` when there is no snapshot (or
    /// it recorded none): the membership of the [`Config`](crate::Config)
    /// given to [`Replica::new`] is then the one at the beginning of time.
    pub membership: Option<Membership>,
}

/// Why a proposal was refused; the command is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This replica is not an established leader.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this replica follows, if any.
        leader: Option<NodeId>,
        /// The refused command.
        data: Bytes,
    },
    /// The command cannot fit in one message.
    #[error("command of {} bytes exceeds the limit of {max_bytes} bytes", data.len())]
    TooLarge {
        /// The largest command accepted.
        max_bytes: usize,
        /// The refused command.
        data: Bytes,
    },
    /// The epoch's 32-bit counter is exhausted; a new election is needed.
    #[error("zxid counter exhausted in epoch {epoch:?}")]
    EpochExhausted {
        /// The exhausted epoch.
        epoch: Epoch,
        /// The refused command.
        data: Bytes,
    },
    /// The leader is handing its leadership to `to` and proposes nothing
    /// meanwhile; retry on the new leader.
    #[error("leadership is being handed to {to}")]
    Transferring {
        /// The nominated successor.
        to: NodeId,
        /// The refused command.
        data: Bytes,
    },
}

impl ProposeError {
    /// The refused command.
    pub fn into_data(self) -> Bytes {
        match self {
            ProposeError::NotLeader { data, .. }
            | ProposeError::TooLarge { data, .. }
            | ProposeError::EpochExhausted { data, .. }
            | ProposeError::Transferring { data, .. } => data,
        }
    }
}

/// Why [`Replica::transfer_leadership`](crate::Replica::transfer_leadership)
/// refused to start a hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// This replica is not an established leader.
    #[error("not an established leader (leader hint: {leader:?})")]
    NotLeader {
        /// The leader this replica follows, if any.
        leader: Option<NodeId>,
    },
    /// The leader is already the target.
    #[error("{0} already leads")]
    AlreadyLeader(NodeId),
    /// The target is not a voter of the configuration in force.
    #[error("{0} is not a voter")]
    NotAVoter(NodeId),
    /// The target is recovering (it lost its durable state) and may not
    /// lead until readmitted.
    #[error("{0} is recovering and may not lead")]
    TargetRecovering(NodeId),
    /// The target has not answered within an election timeout.
    #[error("{0} has not been heard from within the election timeout")]
    TargetUnreachable(NodeId),
    /// A hand-over is already in progress.
    #[error("a hand-over to {to} is already in progress")]
    InProgress {
        /// Its target.
        to: NodeId,
    },
}

/// Why a read could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadIndexError {
    /// No established leader is known.
    #[error("no established leader to confirm the read")]
    NoLeader,
    /// Too many reads are pending.
    #[error("too many pending reads")]
    Busy,
}

/// A confirmed linearizable read: serve it once applied up to `zxid`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's context from [`Replica::read_index`].
    pub ctx: Bytes,
    /// The read point.
    pub zxid: Zxid,
}

/// Snapshot work for the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotRequest {
    /// Stream the local snapshot taken at `snapshot` to `to`, starting at
    /// byte `offset`, through [`Replica::send_snapshot_chunk`]. Asked of a
    /// leader for a lagging follower, and of a follower for its
    /// leader-elect, whose fetch in discovery its log no longer covers.
    Send {
        /// The follower.
        to: NodeId,
        /// The snapshot's zxid.
        snapshot: Zxid,
        /// First byte to send.
        offset: u64,
    },
    /// Write this chunk; after the last one, restore the state machine
    /// from the snapshot, make it durable, and call
    /// [`Replica::snapshot_installed`] (report progress meanwhile with
    /// [`Replica::snapshot_progress`]). Asked of a follower synced by
    /// snapshot, and of a leader-elect fetching a follower's snapshot in
    /// discovery.
    Write {
        /// The leader that sent it.
        from: NodeId,
        /// The chunk.
        chunk: SnapChunk,
    },
}

/// Things the caller must act on besides messages and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The replica has no leader: call `Elector::start_looking(now, vote)`.
    LostLeader(VoteInfo),
    /// The membership in force changed (a membership-change entry was
    /// appended, or dropped by a TRUNC, or a snapshot was installed): call
    /// `Elector::reconfigure` with it. Quorums use it already.
    MembershipChanged {
        /// The membership now in force.
        membership: Membership,
        /// The membership-change entry that set it (`None`: the base's,
        /// from a snapshot or the start-up configuration).
        zxid: Option<Zxid>,
    },
    /// The leader handed its leadership to this replica and stepped down
    /// (TAKEOVER): call `Elector::start_looking_nominated(now, vote)`. In
    /// every other respect it is [`Event::LostLeader`].
    HandedOver(VoteInfo),
    /// This leader handed its leadership to `to` (TAKEOVER sent) and
    /// stepped down; an [`Event::LostLeader`] follows.
    HandedOff {
        /// The nominated successor.
        to: NodeId,
    },
    /// A hand-over this leader started did not complete (the target did
    /// not catch up within an election timeout, or left); it proposes
    /// again.
    TransferAborted {
        /// The target.
        to: NodeId,
    },
    /// The replica is established: call `Elector::settle(now, state, leader, epoch)`.
    Settled {
        /// Leading, Following or Observing.
        state: PeerState,
        /// The leader.
        leader: NodeId,
        /// The leader's epoch.
        epoch: Epoch,
    },
    /// A read could not be confirmed (leadership lost); retry elsewhere.
    ReadAborted {
        /// The caller's context.
        ctx: Bytes,
    },
    /// A storage read failed; the replica skipped the work and will retry.
    StorageFailed(StorageError),
    /// The replica is *recovering* (started so by
    /// [`Replica::mark_recovering`] or by a recovering flag found in
    /// storage): call `Elector::set_voting(now, false)` before acting on a
    /// following [`Event::LostLeader`]. Comes before that event in the same
    /// `Ready`.
    RecoveryStarted,
    /// Recovery is complete and the cleared flag is durable: the replica
    /// counts again. Call `Elector::set_voting(now, true)`.
    RecoveryComplete {
        /// The leader that readmitted this replica.
        leader: NodeId,
        /// That leader's epoch, in which this replica holds its history.
        epoch: Epoch,
    },
}

/// A follower's progress as its leader sees it ([`Replica::peer_progress`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    /// The follower or observer.
    pub id: NodeId,
    /// The highest zxid it holds durable, as far as the leader knows.
    pub matched: Zxid,
    /// The highest zxid it reported applied.
    pub applied: Zxid,
    /// Whether it is an observer (never counted in quorums).
    pub observer: bool,
    /// Whether it is synced and receiving ACCEPTs (not in discovery or sync).
    pub in_broadcast: bool,
    /// Whether it is recovering (not counted in any quorum until readmitted).
    pub recovering: bool,
}

/// Identifies a [`Ready`] for [`Replica::persisted`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Persisted {
    pub(crate) seq: u64,
}

/// Everything the replica wants done, polled in one batch by
/// [`Replica::ready`]. Act on it in this order:
///
/// 1. send [`messages`](Ready::messages) (they need nothing persisted);
/// 2. apply the writes to storage ([`Storage::write_ready`]): truncate after
///    `truncate_after`, append `entries`, save `hard_state`, drop the prefix
///    up to `compact_to`; then sync;
/// 3. send [`persisted_messages`](Ready::persisted_messages) (only once the
///    writes of this and every earlier `Ready` are durable), then call
///    [`Replica::persisted`] with [`persist_marker`](Ready::persist_marker);
/// 4. apply [`committed`](Ready::committed) to the state machine in order
///    and report with [`Replica::applied`];
/// 5. serve [`read_states`](Ready::read_states) once applied up to their zxid;
/// 6. handle [`snapshot_requests`](Ready::snapshot_requests) and
///    [`events`](Ready::events).
#[derive(Debug, Default)]
#[must_use = "a Ready carries messages and writes that must be acted on"]
pub struct Ready {
    /// Messages that may be sent now.
    pub messages: Vec<Envelope>,
    /// Drop every log entry after this zxid (before appending).
    pub truncate_after: Option<Zxid>,
    /// Entries to append.
    pub entries: Vec<Entry>,
    /// Hard state to save.
    pub hard_state: Option<HardState>,
    /// The recovering flag to save ([`Storage::save_recovering`]), with
    /// the hard state: `Some(true)` when the replica starts recovering,
    /// `Some(false)` when it is readmitted (recovery completes once this is
    /// durable, see [`Event::RecoveryComplete`]).
    pub recovering: Option<bool>,
    /// The storage may drop entries up to this zxid (after appending).
    pub compact_to: Option<Zxid>,
    /// Messages to send only after this `Ready`'s writes are synced.
    pub persisted_messages: Vec<Envelope>,
    /// Committed entries to apply, in order.
    pub committed: Vec<Entry>,
    /// Confirmed reads.
    pub read_states: Vec<ReadState>,
    /// Snapshot work.
    pub snapshot_requests: Vec<SnapshotRequest>,
    /// Events for the caller (election, aborted reads).
    pub events: Vec<Event>,
    pub(crate) seq: u64,
}

impl Ready {
    /// Whether the writes need a sync before `persisted_messages` go out.
    pub fn needs_sync(&self) -> bool {
        self.truncate_after.is_some()
            || !self.entries.is_empty()
            || self.hard_state.is_some()
            || self.recovering.is_some()
    }

    /// The marker to pass to [`Replica::persisted`] once this `Ready`'s
    /// writes are durable.
    pub fn persist_marker(&self) -> Persisted {
        Persisted { seq: self.seq }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && !self.needs_sync()
            && self.compact_to.is_none()
            && self.persisted_messages.is_empty()
            && self.committed.is_empty()
            && self.read_states.is_empty()
            && self.snapshot_requests.is_empty()
            && self.events.is_empty()
    }
}
