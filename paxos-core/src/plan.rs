//! The kernel's own sync planning: used to validate the [`SyncPlanner`]'s
//! answer (a wrong plan must never cost safety) and to answer when none is
//! valid, and to serve a leader's history fetch.
//!
//! [`SyncPlanner`]: crate::SyncPlanner

use crate::sync::{FollowerPosition, LeaderHistory, SyncPlan};
use crate::Zxid;

/// Whether the history described by `h` (plus its known base) holds `z` as
/// a position a follower may continue from.
pub(crate) fn holds(h: &LeaderHistory<'_>, base: Option<Zxid>, z: Zxid) -> bool {
    if base == Some(z) {
        return true;
    }
    let Some(first) = h.first_retained else {
        return false;
    };
    if z < first || z.counter() == 0 {
        return false;
    }
    h.epoch_ends
        .binary_search_by_key(&z.epoch(), |e| e.epoch())
        .map(|i| z <= h.epoch_ends[i])
        .unwrap_or(false)
}

/// The highest position of `h` at or before `z`.
pub(crate) fn common_at_or_before(
    h: &LeaderHistory<'_>,
    base: Option<Zxid>,
    z: Zxid,
) -> Option<Zxid> {
    let mut best = base.filter(|b| *b <= z);
    let Some(first) = h.first_retained else {
        return best;
    };
    for (i, end) in h.epoch_ends.iter().enumerate() {
        let run_first = if i == 0 {
            first
        } else {
            Zxid::new(end.epoch(), 1)
        };
        if z >= run_first {
            best = best.max(Some(z.min(*end)));
        }
    }
    best
}

/// The kernel's plan: DIFF when the follower's last zxid is a position of
/// the history, TRUNC(+DIFF) to the last common position when it holds a
/// suffix the history lacks, SNAP when nothing common is retained.
pub(crate) fn builtin(
    f: FollowerPosition,
    h: &LeaderHistory<'_>,
    base: Option<Zxid>,
    force_snap: bool,
) -> SyncPlan {
    if force_snap {
        if let Some(s) = h.snapshot {
            let snap = SyncPlan::Snap { snapshot: s };
            if valid(f, h, base, snap) {
                return snap;
            }
        }
    }
    let fl = f.last_zxid;
    if holds(h, base, fl) || (fl == Zxid::ZERO && base == Some(Zxid::ZERO)) {
        return if fl == h.last {
            SyncPlan::UpToDate
        } else {
            SyncPlan::Diff { after: fl }
        };
    }
    match common_at_or_before(h, base, fl) {
        Some(t) if t == h.last => SyncPlan::Trunc { to: t },
        Some(t) => SyncPlan::TruncDiff { to: t },
        None => match h.snapshot {
            Some(s) => SyncPlan::Snap { snapshot: s },
            // No snapshot means the log was never compacted: it starts at
            // the beginning of time.
            None => SyncPlan::TruncDiff { to: Zxid::ZERO },
        },
    }
}

/// Whether `plan` truncates follower `f` below the highest position of
/// `h` at or before its last zxid (returned): the most of the history the
/// follower may share. Truncating to that point never costs safety: a
/// follower that holds it holds the history up to it (log matching) and
/// keeps exactly that; one that does not keeps less (what it holds at or
/// before the point), the DIFF's first batch does not follow its log and
/// is refused, and its sync restarts from where it then stands.
/// Truncating lower (ZooKeeper's rule truncates to ZERO when the leader
/// holds nothing of the follower's last epoch) drops entries it shares
/// with the leader, committed ones among them, from its durable log until
/// the DIFF brings them back: meanwhile a committed entry may be durable on
/// fewer than a quorum, and the follower's own guard (it keeps what it
/// knows committed) does not help after a restart, which forgets the
/// commit point. The leader refuses such a plan from its planner. Found by
/// the multi-group simulator with leader hand-overs and wiped disks
/// (`simulate --full --groups 16`, seeds 1047 and 21867).
pub(crate) fn truncates_below_common(
    f: FollowerPosition,
    h: &LeaderHistory<'_>,
    base: Option<Zxid>,
    plan: SyncPlan,
) -> Option<Zxid> {
    let (SyncPlan::Trunc { to } | SyncPlan::TruncDiff { to }) = plan else {
        return None;
    };
    common_at_or_before(h, base, f.last_zxid).filter(|shared| *shared > to)
}

/// Whether executing `plan` for follower `f` is safe and complete.
pub(crate) fn valid(
    f: FollowerPosition,
    h: &LeaderHistory<'_>,
    base: Option<Zxid>,
    plan: SyncPlan,
) -> bool {
    let fl = f.last_zxid;
    let is_pos = |z: Zxid| holds(h, base, z) || (z == Zxid::ZERO && base == Some(Zxid::ZERO));
    match plan {
        SyncPlan::UpToDate => fl == h.last && is_pos(fl),
        SyncPlan::Diff { after } => after == fl && is_pos(after),
        SyncPlan::Trunc { to } => to == h.last && to <= fl && is_pos(to),
        SyncPlan::TruncDiff { to } => to <= fl && is_pos(to),
        SyncPlan::Snap { snapshot } => {
            // Installing drops the follower's log: only when nothing it
            // holds beyond the snapshot belongs to the history.
            h.snapshot == Some(snapshot)
                && common_at_or_before(h, base, fl).is_none_or(|t| t <= snapshot)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Epoch;

    fn z(e: u32, c: u32) -> Zxid {
        Zxid::new(Epoch(e), c)
    }
    fn pos(last: Zxid) -> FollowerPosition {
        FollowerPosition {
            current_epoch: last.epoch(),
            last_zxid: last,
        }
    }

    #[test]
    fn builtin_plans_every_mode() {
        let ends = [z(1, 5), z(3, 4)];
        let h = LeaderHistory {
            first_retained: Some(z(1, 1)),
            last: z(3, 4),
            committed: z(3, 2),
            epoch_ends: &ends,
            snapshot: None,
            snapshot_bytes: None,
            log_bytes: None,
        };
        let base = Some(Zxid::ZERO);
        assert_eq!(builtin(pos(z(3, 4)), &h, base, false), SyncPlan::UpToDate);
        assert_eq!(
            builtin(pos(z(1, 3)), &h, base, false),
            SyncPlan::Diff { after: z(1, 3) }
        );
        assert_eq!(
            builtin(pos(Zxid::ZERO), &h, base, false),
            SyncPlan::Diff { after: Zxid::ZERO }
        );
        assert_eq!(
            builtin(pos(z(2, 7)), &h, base, false),
            SyncPlan::TruncDiff { to: z(1, 5) }
        );
        assert_eq!(
            builtin(pos(z(3, 9)), &h, base, false),
            SyncPlan::Trunc { to: z(3, 4) }
        );
        let ends2 = [z(3, 4)];
        let h2 = LeaderHistory {
            first_retained: Some(z(3, 2)),
            epoch_ends: &ends2,
            snapshot: Some(z(3, 1)),
            ..h
        };
        let base2 = Some(z(3, 1));
        assert_eq!(
            builtin(pos(z(1, 3)), &h2, base2, false),
            SyncPlan::Snap { snapshot: z(3, 1) }
        );
        assert_eq!(
            builtin(pos(z(3, 1)), &h2, base2, false),
            SyncPlan::Diff { after: z(3, 1) }
        );
        assert!(!valid(
            pos(z(3, 3)),
            &h2,
            base2,
            SyncPlan::Snap { snapshot: z(3, 1) }
        ));
        assert!(!valid(
            pos(z(1, 3)),
            &h,
            base,
            SyncPlan::Diff { after: z(1, 2) }
        ));
        assert!(valid(
            pos(z(2, 7)),
            &h,
            base,
            SyncPlan::TruncDiff { to: z(1, 5) }
        ));
    }
}
