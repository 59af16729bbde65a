//! The sync planner (rules documented on [`plan_sync`]).

use paxos_core::{FollowerPosition, LeaderHistory, SyncPlan, SyncPlanner, Zxid};

/// The leader's on-disk log, as far as the planner needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLog {
    /// First zxid held on disk.
    pub first: Zxid,
    /// Last zxid held on disk.
    pub last: Zxid,
    /// Size of the on-disk log in bytes (`u64::MAX` when unknown: then the
    /// size rule allows a disk DIFF only when the limit is disabled).
    pub bytes: u64,
}

/// The leader's newest snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotRef {
    /// The last zxid the snapshot includes.
    pub zxid: Zxid,
    /// Its size in bytes, if known.
    pub bytes: Option<u64>,
}

/// The leader's history, summarised for [`plan_sync`].
///
/// Consistency the caller keeps: `epoch_ends` ascending, all in
/// `[retained_first, last]`, its last element `last` (when the log is not
/// empty); `memory` and `disk` inside `[retained_first, last]`.
#[derive(Clone, Copy, Debug)]
pub struct LeaderLog<'a> {
    /// The last zxid of the leader's history (`ZERO` when empty).
    pub last: Zxid,
    /// The highest zxid known committed (used for a fresh snapshot, R6).
    pub committed: Zxid,
    /// The first zxid still held in the log (disk or memory), `None` if the
    /// log holds no entries.
    pub retained_first: Option<Zxid>,
    /// For each epoch with entries in `[retained_first, last]`, the last zxid
    /// of that epoch, ascending.
    pub epoch_ends: &'a [Zxid],
    /// True when nothing of the history was ever compacted away: the log
    /// starts at the first entry of the history.
    pub log_from_start: bool,
    /// The first zxid of the in-memory committed window, which runs to
    /// `last`; `None` when there is no window.
    pub memory_first: Option<Zxid>,
    /// The on-disk log, if any.
    pub disk: Option<DiskLog>,
    /// The newest snapshot, if any.
    pub snapshot: Option<SnapshotRef>,
}

/// Tuning of the planner.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlannerConfig {
    /// Serve DIFFs from the on-disk log when the window is not enough
    /// (ZooKeeper's `txnLogSyncEnabled`).
    pub disk_diff: bool,
    /// A disk DIFF is allowed only if the disk log is at most this fraction
    /// of the snapshot's size (ZooKeeper's `snapshotSizeFactor`, 0.33). A
    /// negative value disables the limit; so does an unknown snapshot size.
    pub snapshot_size_fraction: f64,
    /// How many of the newest entries [`ZabPlanner`] treats as the in-memory
    /// committed window when translating `paxos-core`'s [`LeaderHistory`]
    /// (ZooKeeper's `commitLogCount`, 500). 0: no window.
    pub memory_window_entries: u64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            disk_diff: true,
            snapshot_size_fraction: 0.33,
            memory_window_entries: 500,
        }
    }
}

/// Cost rank of a plan's category: UpToDate 0, Trunc 1, Diff 2,
/// TruncDiff 3, Snap 4. Lower is cheaper.
pub fn cost_rank(plan: &SyncPlan) -> u8 {
    match plan {
        SyncPlan::UpToDate => 0,
        SyncPlan::Trunc { .. } => 1,
        SyncPlan::Diff { .. } => 2,
        SyncPlan::TruncDiff { .. } => 3,
        SyncPlan::Snap { .. } => 4,
    }
}

/// Where the entries of a DIFF come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The leader's in-memory committed window.
    Memory,
    /// The leader's on-disk log.
    Disk,
}

/// Which rule chose the plan (see [`plan_sync`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// R1: the follower's last zxid is the leader's last.
    Level,
    /// R2: the follower's last zxid is in the leader's history.
    Behind(Source),
    /// R3: the follower is ahead of the leader within the leader's last
    /// epoch (or the leader's history is empty).
    Ahead,
    /// R4: the follower holds entries the leader lacks; truncate to the
    /// last shared zxid of its epoch (or `ZERO`), then DIFF.
    Diverged(Source),
    /// R6: no DIFF is servable; send the newest snapshot.
    Snapshot,
    /// R6: no DIFF is servable and the newest snapshot does not connect
    /// to the log (or there is none): take a fresh one at the committed zxid.
    FreshSnapshot,
}

/// The planner's answer: the plan and the rule that chose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// What to send.
    pub plan: SyncPlan,
    /// Why.
    pub rule: Rule,
}

/// Plans the sync of a follower whose last zxid is `follower_last`.
///
/// Pure and total: every input gets exactly one plan, chosen by the rules
/// below, over this crate's own summary of the leader ([`LeaderLog`],
/// [`PlannerConfig`]). The plan in the [`Decision`] is `paxos-core`'s
/// [`SyncPlan`], the very value the kernel executes. [`ZabPlanner`] wraps
/// it behind `paxos-core`'s [`SyncPlanner`] seam.
///
/// # What the planner knows
///
/// The follower reports only its last zxid `F`. The leader knows its own
/// history: its last zxid `L`, and for the part still held in its log
/// (`[retained_first, L]`) the last zxid of every epoch, which together with
/// gapless counters says exactly which zxids it holds. Below
/// `retained_first` the history lives only in the snapshot and the planner
/// does not know which zxids it contains (unless the log starts at the very
/// beginning of history, [`LeaderLog::log_from_start`]).
///
/// Two protocol facts make the plan safe without seeing the follower's log:
/// 1. *Log matching*: if two logs hold the same zxid, they are identical up
///    to it (one leader per epoch, and an entry is accepted only after its
///    predecessor).
/// 2. *Gapless counters*: a log holding `(e, c)` holds `(e, 1..c)`.
///
/// So if the follower's last zxid is `(e, c)` and the leader holds `(e, k)`
/// with `k < c`, the follower holds `(e, k)` too and both logs agree up to
/// it. Nothing of the kind is known across an epoch boundary: the leader's
/// last entry of epoch `e - 1` may or may not be the follower's. Hence
/// ZooKeeper's rule, kept here: **TRUNC only to a zxid of the follower's own
/// epoch, never across an epoch boundary** (the empty log, `Zxid::ZERO`, is
/// the one exception: it is a prefix of every log).
///
/// # The rules, in the order they are tried
///
/// | # | condition | plan | ZooKeeper `syncFollower` |
/// |---|---|---|---|
/// | R1 | `F == L` (includes two empty logs) | `UpToDate` | "already in sync, empty DIFF" |
/// | R2 | `F` is in the leader's history (known), `F < L` | `Diff { after: F }` if servable (R5), else SNAP (R6) | "within committedLog range" / "use txnlog" |
/// | R3 | `F > L` and `L` is in `F`'s epoch, or `L` is `ZERO` | `Trunc { to: L }` | "newer than committedLog, send TRUNC to maxCommittedLog" |
/// | R4 | otherwise (`F` unknown to the leader): `T` = the leader's last zxid of `F`'s epoch below `F`, or `ZERO` if it holds none | `TruncDiff { to: T }` if servable (R5), else SNAP (R6) | "TRUNC to the previous proposal"; "cannot TRUNC across an epoch" |
/// | R5 | serving the entries after `X`: from the in-memory committed window if it holds every entry after `X`; else from the on-disk log if disk sync is enabled, the disk log holds every entry after `X`, reaches the window (or `L`) without a gap, and its size is at most `snapshot_size_fraction` x the snapshot's size | (source of the DIFF) | committedLog, then `getProposalsFromTxnLog(peer, sizeLimit)` and the `currentZxid < minCommittedLog` gap check |
/// | R6 | no DIFF is servable | `Snap { snapshot: S }` with the newest snapshot `S` if the log holds every entry after it, else a fresh snapshot at the committed zxid | "fall back to snapshot" |
///
/// Differences from ZooKeeper, all on the side of a cheaper plan that is
/// still correct by the two facts above:
/// - The window serves a DIFF starting right at its edge (the follower's
///   last zxid is the entry just before the window's first), where
///   ZooKeeper requires the follower's zxid inside the window.
/// - ZooKeeper refuses TRUNC when the *next* leader proposal after the
///   follower's zxid is of a later epoch (a limit of its learner's log
///   truncation); here the truncation point must be in the follower's
///   epoch, which is what correctness needs.
/// - A follower whose last zxid names no entry (a counter of 0 in a non-zero
///   epoch) is treated as unknown (R4), where ZooKeeper assumes it holds the
///   whole history before that epoch.
/// - An empty follower gets a DIFF from `ZERO` when the leader's log still
///   starts at the beginning of history and can serve it whole.
///
/// R4's TRUNC to `ZERO` drops entries the follower may share with the
/// leader, committed ones among them, from its durable log until the DIFF
/// brings them back; `paxos-core`'s leader therefore replaces a TRUNC below
/// its highest position at or before the follower's last zxid with its own
/// plan (TRUNC to that point; a follower that does not hold it refuses the
/// DIFF and is synced again from where it stands). The rule stays here as
/// ZooKeeper has it, for a host whose followers cannot truncate to a zxid
/// they do not hold.
pub fn plan_sync(follower_last: Zxid, leader: &LeaderLog<'_>, config: &PlannerConfig) -> Decision {
    debug_assert!(
        leader.epoch_ends.windows(2).all(|w| w[0] < w[1]),
        "epoch_ends must be strictly ascending"
    );
    let f = follower_last;
    let l = leader.last;
    let view = View { leader, config };

    // R1.
    if f == l {
        return Decision {
            plan: SyncPlan::UpToDate,
            rule: Rule::Level,
        };
    }
    // R2.
    if f < l && view.known_in_history(f) {
        return match view.serve_after(f, false) {
            Some(source) => Decision {
                plan: SyncPlan::Diff { after: f },
                rule: Rule::Behind(source),
            },
            None => view.snap(),
        };
    }
    // R3.
    if f > l && (l == Zxid::ZERO || l.epoch() == f.epoch()) {
        return Decision {
            plan: SyncPlan::Trunc { to: l },
            rule: Rule::Ahead,
        };
    }
    // R4: the last zxid of the follower's epoch the leader holds below `f`.
    let to = leader
        .epoch_ends
        .iter()
        .find(|end| end.epoch() == f.epoch() && **end < f)
        .copied()
        .unwrap_or(Zxid::ZERO);
    debug_assert!(
        to < l,
        "R3 handles a truncation point at the leader's last zxid"
    );
    match view.serve_after(to, false) {
        Some(source) => Decision {
            plan: SyncPlan::TruncDiff { to },
            rule: Rule::Diverged(source),
        },
        None => view.snap(),
    }
}

struct View<'a, 'b> {
    leader: &'b LeaderLog<'a>,
    config: &'b PlannerConfig,
}

impl View<'_, '_> {
    /// Whether `z` is known to be in the leader's history (`ZERO` always is).
    fn known_in_history(&self, z: Zxid) -> bool {
        if z == Zxid::ZERO {
            return true;
        }
        if z.counter() == 0 || z > self.leader.last {
            return false;
        }
        let Some(first) = self.leader.retained_first else {
            // Nothing retained: only `last` itself is known (handled by R1).
            return false;
        };
        if z >= first {
            self.leader
                .epoch_ends
                .iter()
                .any(|end| end.epoch() == z.epoch() && z <= *end)
        } else {
            // Below the log: known only by gapless counters in the first
            // retained entry's epoch.
            z.epoch() == first.epoch()
        }
    }

    /// The entry just before `z` in the leader's history, if the leader
    /// can tell (`z` must be a retained entry).
    fn pred(&self, z: Zxid) -> Option<Zxid> {
        if z.counter() > 1 {
            return Some(Zxid::new(z.epoch(), z.counter() - 1));
        }
        if let Some(end) = self
            .leader
            .epoch_ends
            .iter()
            .rev()
            .find(|end| end.epoch() < z.epoch())
        {
            return Some(*end);
        }
        (self.leader.log_from_start && Some(z) == self.leader.retained_first).then_some(Zxid::ZERO)
    }

    /// Whether a range starting at `first` holds every entry after `x`.
    /// For the leader's own snapshot (`snapshot`), a range starting at the
    /// first retained entry always does: the leader never cuts its log above
    /// its newest snapshot.
    fn starts_by(&self, first: Zxid, x: Zxid, snapshot: bool) -> bool {
        x >= first
            || self.pred(first) == Some(x)
            || (snapshot && Some(first) == self.leader.retained_first)
    }

    /// R5: where the entries after `x` (known in history, `< last`) come
    /// from. `snapshot`: `x` is the leader's snapshot, and no size limit
    /// applies (nothing cheaper is left).
    fn serve_after(&self, x: Zxid, snapshot: bool) -> Option<Source> {
        let leader = self.leader;
        if let Some(first) = leader.memory_first {
            if self.starts_by(first, x, snapshot) {
                return Some(Source::Memory);
            }
        }
        let disk = leader.disk?;
        if !self.config.disk_diff && !snapshot {
            return None;
        }
        if !self.starts_by(disk.first, x, snapshot) || x > disk.last {
            return None;
        }
        let reaches = disk.last >= leader.last
            || leader
                .memory_first
                .is_some_and(|first| self.starts_by(first, disk.last, false));
        if !reaches {
            return None;
        }
        if !snapshot {
            let fraction = self.config.snapshot_size_fraction;
            if let Some(snap_bytes) = leader.snapshot.and_then(|s| s.bytes) {
                // Floor of the product: exact integer comparison at the limit.
                let limit_bytes = (fraction * snap_bytes as f64) as u64;
                if fraction >= 0.0 && disk.bytes > limit_bytes {
                    return None;
                }
            }
        }
        Some(Source::Disk)
    }

    /// R6.
    fn snap(&self) -> Decision {
        if let Some(snapshot) = self.leader.snapshot {
            let s = snapshot.zxid;
            if s == self.leader.last
                || (s < self.leader.last && self.serve_after(s, true).is_some())
            {
                return Decision {
                    plan: SyncPlan::Snap { snapshot: s },
                    rule: Rule::Snapshot,
                };
            }
        }
        Decision {
            plan: SyncPlan::Snap {
                snapshot: self.leader.committed,
            },
            rule: Rule::FreshSnapshot,
        }
    }
}

/// [`plan_sync`] behind `paxos-core`'s [`SyncPlanner`] seam.
///
/// The translation of [`LeaderHistory`]: the retained log is the disk log
/// (`log_bytes` its size, unknown = `u64::MAX`), its newest
/// [`PlannerConfig::memory_window_entries`] entries the in-memory window,
/// and the log starts at the beginning of history iff there is no snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ZabPlanner {
    /// The planner's tuning.
    pub config: PlannerConfig,
}

impl ZabPlanner {
    /// A planner with the given tuning.
    pub fn new(config: PlannerConfig) -> Self {
        ZabPlanner { config }
    }

    /// Plans and says which rule applied (the seam returns only the plan).
    pub fn decide(&self, follower: FollowerPosition, history: &LeaderHistory<'_>) -> Decision {
        let memory_first = history
            .first_retained
            .and_then(|first| window_first(history, first, self.config.memory_window_entries));
        let leader = LeaderLog {
            last: history.last,
            committed: history.committed,
            retained_first: history.first_retained,
            epoch_ends: history.epoch_ends,
            log_from_start: history.snapshot.is_none(),
            memory_first,
            disk: history.first_retained.map(|first| DiskLog {
                first,
                last: history.last,
                bytes: history.log_bytes.unwrap_or(u64::MAX),
            }),
            snapshot: history.snapshot.map(|zxid| SnapshotRef {
                zxid,
                bytes: history.snapshot_bytes,
            }),
        };
        let decision = plan_sync(follower.last_zxid, &leader, &self.config);
        tracing::debug!(
            follower_last = %follower.last_zxid,
            leader_last = %history.last,
            plan = ?decision.plan,
            rule = ?decision.rule,
            "planned follower sync"
        );
        decision
    }
}

impl SyncPlanner for ZabPlanner {
    fn plan(&self, follower: FollowerPosition, history: &LeaderHistory<'_>) -> SyncPlan {
        self.decide(follower, history).plan
    }
}

/// The first zxid of the newest `entries` entries of the retained log.
fn window_first(history: &LeaderHistory<'_>, first: Zxid, entries: u64) -> Option<Zxid> {
    if entries == 0 {
        return None;
    }
    let mut left = entries;
    // Walk epochs from the newest; each contributes the counters it holds.
    for end in history.epoch_ends.iter().rev() {
        let start = if end.epoch() == first.epoch() {
            first.counter()
        } else {
            1
        };
        let held = u64::from(end.counter().saturating_sub(start)) + 1;
        if held >= left {
            let counter = u64::from(end.counter()) + 1 - left;
            return Some(Zxid::new(end.epoch(), counter as u32));
        }
        left -= held;
    }
    Some(first)
}
