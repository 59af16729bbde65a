//! Replica configuration: membership, timeouts and limits.
//!
//! The voters and observers are a [`Config`] value that the replica reads at
//! every quorum decision; nothing in the kernel assumes the set is fixed.

use std::time::Duration;

use crate::{GroupId, NodeId};

/// Why a [`Config`] was refused by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The configuration names no voter.
    #[error("configuration has no voter")]
    NoVoters,
    /// A node is listed twice (as voter and observer, or twice in one list).
    #[error("node {0} is listed twice in the configuration")]
    Duplicate(NodeId),
    /// A limit that must be positive is zero.
    #[error("configuration field `{0}` must be positive")]
    ZeroLimit(&'static str),
    /// The heartbeat interval is not shorter than the election timeout.
    #[error(
        "heartbeat interval {heartbeat:?} must be shorter than the election timeout {election:?}"
    )]
    HeartbeatTooSlow {
        /// The heartbeat interval.
        heartbeat: Duration,
        /// The election timeout.
        election: Duration,
    },
}

/// Default of [`Config::max_epoch_counter`]: 2^32 - 2^24, so a leader moves
/// to a new epoch with 16 M counter values to spare (about 3 minutes at
/// 100 000 writes/s; the move itself takes an election).
pub const DEFAULT_MAX_EPOCH_COUNTER: u32 = u32::MAX - (1 << 24);

/// Membership, timeouts and limits of one replica of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The replication group every message names.
    pub group: GroupId,
    /// The voting members; quorums are majorities of this list.
    pub voters: Vec<NodeId>,
    /// Non-voting learners: they receive committed entries, never count.
    pub observers: Vec<NodeId>,
    /// How often a leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// A follower that has not heard its leader for this long looks for a
    /// new one; a leader that has not heard a quorum for this long steps
    /// down (check-quorum).
    pub election_timeout: Duration,
    /// How long the leader waits for one follower's sync step (ack of
    /// NEWEPOCH, DIFF, NEWLEADER) before restarting that follower's sync.
    /// A snapshot transfer and install is timed by
    /// [`snapshot_progress_timeout`](Config::snapshot_progress_timeout)
    /// instead.
    pub sync_timeout: Duration,
    /// How long the leader lets a follower's snapshot transfer and install
    /// go without a progress report (SNAPPROGRESS: more bytes received, or
    /// the install still running) before restarting that follower's sync;
    /// the restarted transfer resumes at the follower's last reported
    /// offset. Independent of the election and sync timeouts, so a
    /// snapshot larger than a link carries in one timeout still completes.
    pub snapshot_progress_timeout: Duration,
    /// Maximum ACCEPT (or sync DIFF) messages in flight per follower.
    pub pipeline_window: usize,
    /// Maximum entries in one ACCEPT or DIFF.
    pub max_batch_entries: usize,
    /// Maximum payload bytes in one ACCEPT or DIFF (one entry larger than
    /// this still travels alone).
    pub max_batch_bytes: usize,
    /// Maximum payload bytes of committed entries handed out in one `Ready`.
    pub max_apply_bytes: usize,
    /// Payload bytes of durable entries kept in memory until they are
    /// handed out to be applied (the oldest go first past it): the read
    /// that follows a commit, and a follower's catch-up from recent
    /// entries, then take clones instead of reading the storage. 0 keeps
    /// none. Default 256 KiB; a node of many groups pays it per group only
    /// for entries durable and not yet applied, which an idle group has
    /// none of.
    pub apply_cache_bytes: usize,
    /// Maximum payload bytes of ACCEPT or DIFF read for one follower
    /// between two inputs of the replica (a message, a timeout, a
    /// proposal), however many `Ready`s are taken in between; at least one
    /// message still goes. The pipeline window fills over the following
    /// turns, as acknowledgements come. Without
    /// it a leader catching a far-behind follower up read, checked and
    /// encoded a whole window (64 MiB with the defaults) in one turn, and
    /// on a slow or busy machine that turn outlasted the election timeout:
    /// the leader missed its heartbeats, lost its quorum, was elected
    /// again and started the same burst over.
    pub max_send_bytes_per_input: usize,
    /// Entries kept below the cleanup point so that a briefly lagging
    /// follower still gets DIFF rather than SNAP.
    pub retention_entries: u64,
    /// A follower not heard from for this long no longer pins the log: the
    /// log may be cleaned past its applied point, and it gets SNAP on return.
    pub follower_pin_timeout: Duration,
    /// Largest encoded message, in bytes; larger proposals are refused.
    pub max_message_bytes: usize,
    /// The highest zxid counter a leader proposes in one epoch. A leader
    /// whose counter has reached it steps down instead of proposing, so that
    /// the next election starts a new epoch, whose counter starts again at
    /// one, long before the 32-bit counter would run out; the refused proposal
    /// is handed back as [`ProposeError::EpochExhausted`](crate::ProposeError).
    /// Default [`DEFAULT_MAX_EPOCH_COUNTER`]; a test lowers it to reach the
    /// limit. At least 1.
    pub max_epoch_counter: u32,
    /// Serve reads from a leader lease instead of a quorum round. Off by
    /// default; see [`Replica::read_index`](crate::Replica::read_index).
    pub lease_reads: bool,
    /// The bound on clock drift between replicas assumed by lease reads:
    /// the lease lasts `election_timeout - lease_clock_drift` after a
    /// quorum's acknowledgement.
    pub lease_clock_drift: Duration,
    /// Readmit a recovering follower only once *every* voter that the
    /// leader does not know to be recovering (not just a quorum) confirmed
    /// the leader after the follower was synced. Off by default. It closes
    /// the one gap of the quorum rule (a promise the follower made, before
    /// losing its state, to a leader of a higher epoch that is still in
    /// discovery outside this leader's quorums; possible with five or more
    /// voters), at the cost of leaving the follower recovering while any
    /// voter is unreachable. See
    /// [`Replica::mark_recovering`](crate::Replica::mark_recovering).
    pub strict_readmission: bool,
    /// Quiesce the group after it has been idle this long: every live
    /// member holds the leader's last entry, which is committed and
    /// applied, and nothing is in flight (no proposal, read, hand-over,
    /// membership change or catch-up). The leader then sends QUIESCE and
    /// stops heartbeating and checking its quorum; a follower holding
    /// the commit point stops its election timer. The next message of the
    /// leader, a proposal, a read or [`Replica::wake`](crate::Replica::wake)
    /// ends it. A follower can no longer notice by itself that its leader
    /// died: its host must call `wake` when it loses the leader's node (the
    /// reference node does on a lost connection), and a node's election
    /// messages wake it too. `None` (the default): never.
    pub quiesce_after: Option<Duration>,
}

impl Config {
    /// A configuration with the given voters and sensible defaults
    /// (heartbeat 50 ms, election timeout 500 ms, snapshot progress
    /// timeout 5 s, window 64, batches of 1024 entries or 1 MiB, messages
    /// up to 16 MiB).
    pub fn new(group: GroupId, voters: Vec<NodeId>) -> Config {
        Config {
            group,
            voters,
            observers: Vec::new(),
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: Duration::from_millis(500),
            sync_timeout: Duration::from_millis(500),
            snapshot_progress_timeout: Duration::from_secs(5),
            pipeline_window: 64,
            max_batch_entries: 1024,
            max_batch_bytes: 1 << 20,
            max_apply_bytes: 4 << 20,
            apply_cache_bytes: 256 << 10,
            max_send_bytes_per_input: 4 << 20,
            retention_entries: 10_000,
            follower_pin_timeout: Duration::from_secs(60),
            max_message_bytes: 16 << 20,
            max_epoch_counter: DEFAULT_MAX_EPOCH_COUNTER,
            lease_reads: false,
            lease_clock_drift: Duration::from_millis(50),
            strict_readmission: false,
            quiesce_after: None,
        }
    }

    /// Checks the configuration's internal consistency.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.voters.is_empty() {
            return Err(ConfigError::NoVoters);
        }
        let mut all: Vec<NodeId> = self.voters.iter().chain(&self.observers).copied().collect();
        all.sort();
        if let Some(w) = all.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::Duplicate(w[0]));
        }
        for (name, v) in [
            ("pipeline_window", self.pipeline_window),
            ("max_batch_entries", self.max_batch_entries),
            ("max_batch_bytes", self.max_batch_bytes),
            ("max_apply_bytes", self.max_apply_bytes),
            ("max_send_bytes_per_input", self.max_send_bytes_per_input),
            ("max_message_bytes", self.max_message_bytes),
            ("max_epoch_counter", self.max_epoch_counter as usize),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        if self.snapshot_progress_timeout.is_zero() {
            return Err(ConfigError::ZeroLimit("snapshot_progress_timeout"));
        }
        if self.heartbeat_interval >= self.election_timeout {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat: self.heartbeat_interval,
                election: self.election_timeout,
            });
        }
        Ok(())
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Whether `id` is an observer.
    pub fn is_observer(&self, id: NodeId) -> bool {
        self.observers.contains(&id)
    }

    /// Whether `id` is a member at all.
    pub fn is_member(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_observer(id)
    }

    /// The size of a quorum of voters (a strict majority).
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whether the voters for which `acked` holds form a quorum.
    pub fn is_quorum(&self, mut acked: impl FnMut(NodeId) -> bool) -> bool {
        self.voters.iter().filter(|v| acked(**v)).count() >= self.quorum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_refuses_inconsistent_configs() {
        let ok = Config::new(GroupId(0), vec![NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.quorum(), 2);
        assert!(ok.is_quorum(|n| n != NodeId(1)));
        assert!(!ok.is_quorum(|n| n == NodeId(1)));
        let mut dup = ok.clone();
        dup.observers.push(NodeId(2));
        assert_eq!(dup.validate(), Err(ConfigError::Duplicate(NodeId(2))));
        let mut empty = ok.clone();
        empty.voters.clear();
        assert_eq!(empty.validate(), Err(ConfigError::NoVoters));
        let mut slow = ok;
        slow.heartbeat_interval = slow.election_timeout;
        assert!(matches!(
            slow.validate(),
            Err(ConfigError::HeartbeatTooSlow { .. })
        ));
    }
}
