//! The protocol's messages: one enum for discovery, sync, broadcast,
//! heartbeats and reads, carried in an [`Envelope`] that names the group.

use bytes::Bytes;

use crate::{Epoch, GroupId, NodeId, Zxid};

/// What a log entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum EntryKind {
    /// A client command for the state machine; opaque to the kernel.
    #[default]
    Command,
    /// A membership change: `data` is an encoded
    /// [`Membership`](crate::Membership), read by the kernel. The state
    /// machine never sees it (the node layer passes over it with
    /// [`StateMachine::skip`](crate::StateMachine::skip)).
    Config,
}

/// One log entry: its position, its kind and its payload.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    /// The entry's position in the log.
    pub zxid: Zxid,
    /// A command or a membership change.
    pub kind: EntryKind,
    /// The client command (opaque to the kernel), or the encoded
    /// membership.
    pub data: Bytes,
}

impl Entry {
    /// A client command at `zxid`.
    pub fn command(zxid: Zxid, data: Bytes) -> Entry {
        Entry {
            zxid,
            kind: EntryKind::Command,
            data,
        }
    }

    /// Whether this entry is a membership change.
    pub fn is_config(&self) -> bool {
        self.kind == EntryKind::Config
    }
}

/// The state a replica must persist (and sync) before sending the message
/// that depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct HardState {
    /// The highest epoch promised (Paxos promise, ZAB NEWEPOCH).
    pub accepted_epoch: Epoch,
    /// The epoch whose leader's history this replica has taken (ZAB NEWLEADER).
    pub current_epoch: Epoch,
}

/// One chunk of a snapshot streamed from the leader to a follower.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SnapChunk {
    /// The zxid the snapshot includes up to.
    pub snapshot_zxid: Zxid,
    /// Byte offset of `data` in the whole snapshot.
    pub offset: u64,
    /// Length of the whole snapshot in bytes.
    pub total_len: u64,
    /// The chunk's checksum as the sender's snapshot transfer computed it
    /// (`paxos-snapshot` covers the snapshot id, offset, length, last flag
    /// and data); the receiver verifies it before writing.
    pub crc32: u32,
    /// Identifies the snapshot file among files of the same zxid
    /// (`paxos-snapshot`'s trailer checksum); 0 when unused.
    pub fingerprint: u32,
    /// The chunk's bytes.
    pub data: Bytes,
    /// Whether this is the final chunk.
    pub last: bool,
}

/// A protocol message. Every message after discovery names the leader's
/// epoch; a replica drops messages of an epoch it did not promise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Follower to leader, first message after an election: its state.
    FollowerInfo {
        /// The follower's promised epoch.
        accepted_epoch: Epoch,
        /// The follower's current epoch.
        current_epoch: Epoch,
        /// The follower's last zxid.
        last_zxid: Zxid,
        /// The follower is *recovering*: it restarted with lost or damaged
        /// durable state, so its promises and acknowledgements must not be
        /// counted in any quorum until this leader readmits it
        /// ([`Message::Readmit`]). Travels in wire version 2 only.
        recovering: bool,
    },
    /// Leader to follower: promise not to accept anything below `epoch`.
    NewEpoch {
        /// The new epoch e'.
        epoch: Epoch,
        /// Sync round: increases each time the leader restarts this follower's sync.
        round: u32,
        /// Set once the leader holds a quorum of promises for `epoch`; a
        /// follower that already promised `epoch` may then rejoin without a
        /// new promise.
        established: bool,
    },
    /// Follower to leader: promise made (after persisting it).
    AckEpoch {
        /// The promised epoch.
        epoch: Epoch,
        /// The round of the NEWEPOCH answered.
        round: u32,
        /// The follower's current epoch.
        current_epoch: Epoch,
        /// The follower's last zxid.
        last_zxid: Zxid,
    },
    /// Follower to leader: NEWEPOCH refused, the follower promised higher.
    EpochRefused {
        /// The refused epoch.
        epoch: Epoch,
        /// The follower's promised epoch.
        accepted_epoch: Epoch,
    },
    /// Sync: drop every entry after `to`.
    Trunc {
        /// The leader's epoch.
        epoch: Epoch,
        /// The sync round this belongs to (applied at most once per round).
        round: u32,
        /// The last zxid kept.
        to: Zxid,
    },
    /// Sync: entries of the leader's history following `prev`.
    Diff {
        /// The leader's epoch.
        epoch: Epoch,
        /// The zxid preceding the first entry.
        prev: Zxid,
        /// The entries, in zxid order.
        entries: Vec<Entry>,
    },
    /// Sync: one snapshot chunk.
    Snap {
        /// The leader's epoch.
        epoch: Epoch,
        /// The sync round this belongs to.
        round: u32,
        /// The chunk.
        chunk: SnapChunk,
    },
    /// Follower to leader: how far the snapshot transfer of this sync round
    /// got. Sent as chunks are taken and, while the install runs (verify,
    /// store, restore), periodically. The leader keeps the transfer alive
    /// while reports show progress and, if it must restart the sync,
    /// resumes the transfer at `received`. Wire version 3 only.
    SnapProgress {
        /// The leader's epoch.
        epoch: Epoch,
        /// The sync round of the SNAP chunks.
        round: u32,
        /// The snapshot being received.
        snapshot: Zxid,
        /// Bytes of the snapshot the follower holds from offset 0 on.
        received: u64,
        /// The whole snapshot is in and its install is running.
        installing: bool,
    },
    /// Follower to leader: the snapshot at `zxid` is installed and durable.
    SnapInstalled {
        /// The leader's epoch.
        epoch: Epoch,
        /// The installed snapshot's zxid.
        zxid: Zxid,
    },
    /// Sync complete: the leader's history ends at `last_zxid`.
    NewLeader {
        /// The leader's epoch.
        epoch: Epoch,
        /// The last zxid of the history the follower must now hold.
        last_zxid: Zxid,
    },
    /// Follower to leader: history and `current_epoch` persisted.
    AckNewLeader {
        /// The leader's epoch.
        epoch: Epoch,
        /// The last zxid of the synced history.
        last_zxid: Zxid,
    },
    /// Leader to follower: the synced history is committed; broadcast starts.
    UpToDate {
        /// The leader's epoch.
        epoch: Epoch,
        /// The leader's commit point.
        commit: Zxid,
    },
    /// Phase 2: a batch of proposals following `prev`.
    Accept {
        /// The leader's epoch.
        epoch: Epoch,
        /// The zxid preceding the first entry.
        prev: Zxid,
        /// The leader's commit point.
        commit: Zxid,
        /// The entries, in zxid order.
        entries: Vec<Entry>,
    },
    /// Follower to leader: every entry up to `durable` is synced.
    Accepted {
        /// The leader's epoch.
        epoch: Epoch,
        /// The follower's durable zxid.
        durable: Zxid,
    },
    /// Follower to leader: an ACCEPT or DIFF did not follow the log.
    AcceptNack {
        /// The leader's epoch.
        epoch: Epoch,
        /// The follower's last zxid.
        last_zxid: Zxid,
    },
    /// Leader to follower: the commit point advanced (sent when idle).
    Commit {
        /// The leader's epoch.
        epoch: Epoch,
        /// The commit point.
        commit: Zxid,
    },
    /// Follower to leader: applied up to `zxid` (drives log cleanup).
    Applied {
        /// The leader's epoch.
        epoch: Epoch,
        /// The follower's applied zxid.
        zxid: Zxid,
    },
    /// Leader to follower: liveness, commit point, read-index round.
    Heartbeat {
        /// The leader's epoch.
        epoch: Epoch,
        /// The leader's commit point.
        commit: Zxid,
        /// The heartbeat round (read-index confirmation).
        round: u64,
    },
    /// Follower to leader: answer to a heartbeat.
    HeartbeatAck {
        /// The leader's epoch.
        epoch: Epoch,
        /// The round answered.
        round: u64,
    },
    /// Follower to leader: please confirm a read.
    ReadIndexRequest {
        /// The leader's epoch as the follower knows it.
        epoch: Epoch,
        /// The caller's context, returned unchanged.
        ctx: Bytes,
    },
    /// Leader to follower: the read may be served once applied up to `zxid`.
    ReadIndexResponse {
        /// The leader's epoch.
        epoch: Epoch,
        /// The caller's context.
        ctx: Bytes,
        /// The read point, or `None` if the leader could not confirm.
        zxid: Option<Zxid>,
    },
    /// Leader to a follower ahead of it in discovery: send me what I miss.
    FetchHistory {
        /// The leader's new epoch.
        epoch: Epoch,
        /// The leader's current epoch.
        current_epoch: Epoch,
        /// The leader's last zxid.
        last_zxid: Zxid,
    },
    /// Follower to leader: part of its history.
    FetchReply {
        /// The leader's new epoch.
        epoch: Epoch,
        /// If set, the leader must drop every entry after this first.
        trunc_to: Option<Zxid>,
        /// The zxid preceding the first entry.
        prev: Zxid,
        /// The entries.
        entries: Vec<Entry>,
        /// The follower's last zxid (the fetch is done when the leader reaches it).
        last_zxid: Zxid,
        /// The follower cannot serve the fetch (its log no longer covers it).
        unable: bool,
    },
    /// Leader-elect in discovery to the follower it fetches from, after
    /// that follower answered a FETCH with `unable` (its log was compacted
    /// past the leader's position): stream me your newest snapshot as SNAP
    /// chunks of this epoch; once I installed it I fetch the entries after
    /// it. The transfer resumes at `offset` when the follower's newest
    /// snapshot is still `snapshot`, else starts at 0. Wire version 4 only.
    FetchSnapshot {
        /// The leader's new epoch.
        epoch: Epoch,
        /// The snapshot the leader already holds part of (`Zxid::ZERO`
        /// when it holds none).
        snapshot: Zxid,
        /// Bytes of `snapshot` the leader's receiver holds from offset 0.
        offset: u64,
    },
    /// Leader to a recovering follower: you are synced to my history in
    /// `epoch` (your ACKNEWLEADER for it was durable) and a quorum of other
    /// voters confirmed my leadership after that; you may vote again once
    /// you have durably cleared your recovering flag. Wire version 2 only.
    Readmit {
        /// The leader's epoch.
        epoch: Epoch,
    },
    /// Leader to every member: it hands the leadership of `epoch` to the
    /// voter `to`, which holds every entry the leader has, and has stepped
    /// down. Receivers stop following at once and look for a leader; `to`
    /// stands as the nominee. Wire version 5 only.
    TakeOver {
        /// The epoch the sender led.
        epoch: Epoch,
        /// The nominated successor.
        to: NodeId,
    },
    /// Leader to follower: the group is idle, every member holds `commit`,
    /// and no heartbeats follow until something happens. A follower that
    /// holds `commit` stops its election timer (it is woken by the next
    /// message of its leader, or by its host when the leader's node is
    /// lost; see [`Config::quiesce_after`](crate::Config::quiesce_after)).
    /// Wire version 7 only.
    Quiesce {
        /// The leader's epoch.
        epoch: Epoch,
        /// The leader's commit point (its last entry).
        commit: Zxid,
    },
}

impl Message {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Message::FollowerInfo { .. } => "FOLLOWERINFO",
            Message::NewEpoch { .. } => "NEWEPOCH",
            Message::AckEpoch { .. } => "ACKEPOCH",
            Message::EpochRefused { .. } => "EPOCHREFUSED",
            Message::Trunc { .. } => "TRUNC",
            Message::Diff { .. } => "DIFF",
            Message::Snap { .. } => "SNAP",
            Message::SnapProgress { .. } => "SNAPPROGRESS",
            Message::SnapInstalled { .. } => "SNAPINSTALLED",
            Message::NewLeader { .. } => "NEWLEADER",
            Message::AckNewLeader { .. } => "ACKNEWLEADER",
            Message::UpToDate { .. } => "UPTODATE",
            Message::Accept { .. } => "ACCEPT",
            Message::Accepted { .. } => "ACCEPTED",
            Message::AcceptNack { .. } => "ACCEPTNACK",
            Message::Commit { .. } => "COMMIT",
            Message::Applied { .. } => "APPLIED",
            Message::Heartbeat { .. } => "HEARTBEAT",
            Message::HeartbeatAck { .. } => "HEARTBEATACK",
            Message::ReadIndexRequest { .. } => "READINDEX",
            Message::ReadIndexResponse { .. } => "READINDEXRESP",
            Message::FetchHistory { .. } => "FETCH",
            Message::FetchReply { .. } => "FETCHREPLY",
            Message::FetchSnapshot { .. } => "FETCHSNAP",
            Message::Readmit { .. } => "READMIT",
            Message::TakeOver { .. } => "TAKEOVER",
            Message::Quiesce { .. } => "QUIESCE",
        }
    }

    /// Whether only a node acting as leader (or leader-elect) sends this
    /// message. A follower takes only these as signs of its leader's life:
    /// a node that sends it follower messages is following someone itself.
    /// SNAP counts: a follower streams one only to a leader-elect that
    /// fetched it.
    pub fn is_from_leader(&self) -> bool {
        match self {
            Message::NewEpoch { .. }
            | Message::Trunc { .. }
            | Message::Diff { .. }
            | Message::Snap { .. }
            | Message::NewLeader { .. }
            | Message::UpToDate { .. }
            | Message::Accept { .. }
            | Message::Commit { .. }
            | Message::Heartbeat { .. }
            | Message::ReadIndexResponse { .. }
            | Message::FetchHistory { .. }
            | Message::FetchSnapshot { .. }
            | Message::Readmit { .. }
            | Message::TakeOver { .. }
            | Message::Quiesce { .. } => true,
            Message::FollowerInfo { .. }
            | Message::AckEpoch { .. }
            | Message::EpochRefused { .. }
            | Message::SnapProgress { .. }
            | Message::SnapInstalled { .. }
            | Message::AckNewLeader { .. }
            | Message::Accepted { .. }
            | Message::AcceptNack { .. }
            | Message::Applied { .. }
            | Message::HeartbeatAck { .. }
            | Message::ReadIndexRequest { .. }
            | Message::FetchReply { .. } => false,
        }
    }
}

/// A message with its routing: group, sender and receiver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The replication group.
    pub group: GroupId,
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The message.
    pub msg: Message,
}
