//! The synchronisation seam: how the leader decides to bring a follower level.
//!
//! After discovery, the leader asks a [`SyncPlanner`] what to send each
//! follower. `paxos-snapshot` implements the planner with ZooKeeper's rules;
//! the kernel only executes the [`SyncPlan`] it is given.

use crate::{Epoch, Zxid};

/// Where a follower's log stands, as it reported in ACKEPOCH.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FollowerPosition {
    /// The epoch whose history the follower last took.
    pub current_epoch: Epoch,
    /// The last zxid in the follower's log (`Zxid::ZERO` for an empty log).
    pub last_zxid: Zxid,
}

/// The leader's side of the planning problem: its history, summarised.
#[derive(Clone, Copy, Debug)]
pub struct LeaderHistory<'a> {
    /// The first zxid still held in the leader's log, or `None` when the log
    /// holds no entries (everything is in the snapshot, or nothing exists).
    pub first_retained: Option<Zxid>,
    /// The last zxid of the leader's history (log or snapshot); `Zxid::ZERO`
    /// when the history is empty.
    pub last: Zxid,
    /// The highest zxid known committed.
    pub committed: Zxid,
    /// For each epoch with entries in the retained log, the last zxid of
    /// that epoch, in ascending order. With gapless counters this says
    /// exactly which zxids the leader holds: `z` is held iff some element
    /// `end` has `end.epoch() == z.epoch()`, `z.counter() >= 1`,
    /// `z <= end`, and `z >= first_retained`.
    pub epoch_ends: &'a [Zxid],
    /// The zxid of the leader's newest snapshot, if it has one.
    pub snapshot: Option<Zxid>,
    /// Size of the newest snapshot in bytes, if known.
    pub snapshot_bytes: Option<u64>,
    /// Approximate payload bytes of the retained log, if known.
    pub log_bytes: Option<u64>,
}

/// How to bring one follower level with the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncPlan {
    /// Already level: nothing to send.
    UpToDate,
    /// Send every entry with zxid greater than `after`.
    Diff {
        /// The last zxid the follower and the leader share.
        after: Zxid,
    },
    /// The follower drops every entry after `to`; nothing else is missing.
    Trunc {
        /// The last zxid the follower keeps.
        to: Zxid,
    },
    /// The follower drops every entry after `to`, then receives every
    /// entry after `to`.
    TruncDiff {
        /// The last zxid the follower keeps.
        to: Zxid,
    },
    /// Stream the snapshot taken at `snapshot`, then every entry after it.
    Snap {
        /// The zxid the snapshot includes up to.
        snapshot: Zxid,
    },
}

/// Chooses a [`SyncPlan`] for a follower.
pub trait SyncPlanner {
    /// Plans the sync of `follower` against the leader's `history`.
    fn plan(&self, follower: FollowerPosition, history: &LeaderHistory<'_>) -> SyncPlan;
}
