//! Every planner rule and boundary, one case at a time.

use paxos_core::{Epoch, FollowerPosition, LeaderHistory, SyncPlan, SyncPlanner, Zxid};
use paxos_snapshot::{cost_rank, PlannerConfig, Rule, Source, ZabPlanner};

use crate::common::{log_of, z, Hist};

fn cfg() -> PlannerConfig {
    PlannerConfig::default()
}

/// Epoch 1 entries 1..=5, epoch 2 entries 1..=3.
fn two_epochs() -> Vec<Zxid> {
    log_of(&[(1, 5), (2, 3)])
}

#[test]
fn r1_empty_logs_are_level() {
    let d = Hist::memory_only(vec![]).plan(Zxid::ZERO, &cfg());
    assert_eq!((d.plan, d.rule), (SyncPlan::UpToDate, Rule::Level));
}

#[test]
fn r1_equal_zxids_are_level() {
    let d = Hist::memory_only(two_epochs()).plan(z(2, 3), &cfg());
    assert_eq!((d.plan, d.rule), (SyncPlan::UpToDate, Rule::Level));
}

#[test]
fn r1_equal_zxids_level_even_with_empty_log() {
    // Everything compacted into the snapshot: still level.
    let h = Hist {
        entries: log_of(&[(1, 3)]),
        memory: None,
        disk: None,
        snapshot: Some((2, Some(100))),
    };
    assert_eq!(h.plan(z(1, 3), &cfg()).plan, SyncPlan::UpToDate);
    // A follower behind an empty log can only get the snapshot.
    let d = h.plan(z(1, 2), &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (SyncPlan::Snap { snapshot: z(1, 3) }, Rule::Snapshot)
    );
}

#[test]
fn r2_diff_from_memory_window() {
    let d = Hist::memory_only(two_epochs()).plan(z(1, 4), &cfg());
    assert_eq!(d.plan, SyncPlan::Diff { after: z(1, 4) });
    assert_eq!(d.rule, Rule::Behind(Source::Memory));
}

#[test]
fn r2_diff_from_window_edge_across_epoch_boundary() {
    // Window starts at 2.1; the disk log says epoch 1 ended at 1.5, so a
    // follower at 1.5 needs exactly the window.
    let h = Hist {
        entries: two_epochs(),
        memory: Some(5),
        disk: Some((0, 7, 1_000_000)),
        snapshot: None,
    };
    let d = h.plan(
        z(1, 5),
        &PlannerConfig {
            disk_diff: false,
            ..cfg()
        },
    );
    assert_eq!(
        (d.plan, d.rule),
        (
            SyncPlan::Diff { after: z(1, 5) },
            Rule::Behind(Source::Memory)
        )
    );
}

#[test]
fn epoch_boundary_at_window_edge_without_older_log_is_snap() {
    // Only the window (from 2.1) is retained; the leader cannot tell what
    // preceded 2.1, so a follower at 1.5 gets the snapshot.
    let h = Hist {
        entries: two_epochs(),
        memory: Some(5),
        disk: None,
        snapshot: Some((4, Some(10))),
    };
    let d = h.plan(z(1, 5), &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (SyncPlan::Snap { snapshot: z(1, 5) }, Rule::Snapshot)
    );
    // A diverged follower in epoch 1 too: no TRUNC across the boundary.
    let d = h.plan(z(1, 7), &cfg());
    assert_eq!(d.plan, SyncPlan::Snap { snapshot: z(1, 5) });
}

#[test]
fn window_edge_inside_an_epoch_is_known_by_counter() {
    // Retained from 1.3; 1.2 precedes it by gapless counters.
    let h = Hist {
        entries: log_of(&[(1, 5)]),
        memory: Some(2),
        disk: None,
        snapshot: Some((1, Some(10))),
    };
    assert_eq!(
        h.plan(z(1, 2), &cfg()).plan,
        SyncPlan::Diff { after: z(1, 2) }
    );
    let d = h.plan(z(1, 1), &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (SyncPlan::Snap { snapshot: z(1, 2) }, Rule::Snapshot)
    );
}

#[test]
fn r5_diff_from_disk_when_behind_window() {
    let h = Hist {
        entries: two_epochs(),
        memory: Some(6),
        disk: Some((0, 7, 100)),
        snapshot: None,
    };
    let d = h.plan(z(1, 2), &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (
            SyncPlan::Diff { after: z(1, 2) },
            Rule::Behind(Source::Disk)
        )
    );
    let d = h.plan(
        z(1, 2),
        &PlannerConfig {
            disk_diff: false,
            ..cfg()
        },
    );
    assert_eq!(d.rule, Rule::FreshSnapshot);
}

#[test]
fn r5_disk_diff_size_limit_boundaries() {
    let with_disk_bytes = |bytes| Hist {
        entries: two_epochs(),
        memory: Some(6),
        disk: Some((0, 7, bytes)),
        snapshot: Some((0, Some(1000))),
    };
    let f = z(1, 3);
    // 0.33 * 1000 = 330: at the limit DIFF, one byte over SNAP.
    assert_eq!(
        with_disk_bytes(330).plan(f, &cfg()).rule,
        Rule::Behind(Source::Disk)
    );
    let d = with_disk_bytes(331).plan(f, &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (SyncPlan::Snap { snapshot: z(1, 1) }, Rule::Snapshot)
    );
    // A negative fraction disables the limit.
    let d = with_disk_bytes(u64::MAX).plan(
        f,
        &PlannerConfig {
            snapshot_size_fraction: -1.0,
            ..cfg()
        },
    );
    assert_eq!(d.rule, Rule::Behind(Source::Disk));
    // An unknown snapshot size disables it too.
    let mut h = with_disk_bytes(u64::MAX);
    h.snapshot = Some((0, None));
    assert_eq!(h.plan(f, &cfg()).rule, Rule::Behind(Source::Disk));
}

#[test]
fn r5_gap_between_disk_and_window_falls_back_to_snap() {
    // Disk holds 1.1..=1.4, window starts at 2.2: 1.5 and 2.1 are nowhere.
    let mut h = Hist {
        entries: two_epochs(),
        memory: Some(6),
        disk: Some((0, 3, 10)),
        snapshot: None,
    };
    let d = h.plan(z(1, 2), &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (SyncPlan::Snap { snapshot: z(2, 3) }, Rule::FreshSnapshot)
    );
    // A snapshot at 1.5 does not connect to the window either.
    h.snapshot = Some((4, Some(10)));
    assert_eq!(h.plan(z(1, 2), &cfg()).rule, Rule::FreshSnapshot);
    // A snapshot at 2.1 does.
    h.snapshot = Some((5, Some(10)));
    let d = h.plan(z(1, 2), &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (SyncPlan::Snap { snapshot: z(2, 1) }, Rule::Snapshot)
    );
    // Disk touching the window (ends at 2.1, window from 2.2) is no gap.
    h.disk = Some((0, 5, 1));
    assert_eq!(h.plan(z(1, 2), &cfg()).rule, Rule::Behind(Source::Disk));
}

#[test]
fn r3_follower_ahead_within_same_epoch_truncated_to_leader_last() {
    let d = Hist::memory_only(two_epochs()).plan(z(2, 5), &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (SyncPlan::Trunc { to: z(2, 3) }, Rule::Ahead)
    );
}

#[test]
fn r3_empty_leader_truncates_follower_to_zero() {
    let d = Hist::memory_only(vec![]).plan(z(1, 3), &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (SyncPlan::Trunc { to: Zxid::ZERO }, Rule::Ahead)
    );
}

#[test]
fn follower_ahead_in_later_epoch_is_never_truncated_across_epochs() {
    // The leader ends at 2.3, the follower at 3.2: what they share is
    // unknown, so everything is resent (whole log available) or SNAP.
    let h = Hist::memory_only(two_epochs());
    let d = h.plan(z(3, 2), &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (
            SyncPlan::TruncDiff { to: Zxid::ZERO },
            Rule::Diverged(Source::Memory)
        )
    );
    let compacted = Hist {
        entries: two_epochs(),
        memory: Some(2),
        disk: None,
        snapshot: Some((1, Some(10))),
    };
    let d = compacted.plan(z(3, 2), &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (SyncPlan::Snap { snapshot: z(1, 2) }, Rule::Snapshot)
    );
}

#[test]
fn r4_follower_below_leader_max_not_in_history_truncates_within_epoch() {
    // Leader: 1.1..1.3 then 2.1..2.3; follower: 1.1..1.5 (an old epoch-1
    // suffix). They share 1.3.
    let h = Hist::memory_only(log_of(&[(1, 3), (2, 3)]));
    let d = h.plan(z(1, 5), &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (
            SyncPlan::TruncDiff { to: z(1, 3) },
            Rule::Diverged(Source::Memory)
        )
    );
}

#[test]
fn r4_truncation_point_at_window_edge() {
    // Window from 2.1, disk from 1.1 tells that epoch 1 ended at 1.3.
    let h = Hist {
        entries: log_of(&[(1, 3), (2, 3)]),
        memory: Some(3),
        disk: Some((0, 5, 10)),
        snapshot: None,
    };
    let d = h.plan(
        z(1, 5),
        &PlannerConfig {
            disk_diff: false,
            ..cfg()
        },
    );
    assert_eq!(
        (d.plan, d.rule),
        (
            SyncPlan::TruncDiff { to: z(1, 3) },
            Rule::Diverged(Source::Memory)
        )
    );
}

#[test]
fn r4_follower_epoch_absent_from_leader_history() {
    // Leader: epochs 1 and 3; follower ended in epoch 2 (never committed).
    let h = Hist::memory_only(log_of(&[(1, 3), (3, 2)]));
    let d = h.plan(z(2, 4), &cfg());
    assert_eq!(d.plan, SyncPlan::TruncDiff { to: Zxid::ZERO });
    let compacted = Hist {
        entries: log_of(&[(1, 3), (3, 2)]),
        memory: Some(1),
        disk: None,
        snapshot: Some((0, None)),
    };
    assert_eq!(
        compacted.plan(z(2, 4), &cfg()).plan,
        SyncPlan::Snap { snapshot: z(1, 1) }
    );
}

#[test]
fn zxid_with_zero_counter_names_no_entry() {
    let h = Hist::memory_only(two_epochs());
    assert_eq!(
        h.plan(z(2, 0), &cfg()).plan,
        SyncPlan::TruncDiff { to: Zxid::ZERO }
    );
    assert_eq!(
        h.plan(z(3, 0), &cfg()).plan,
        SyncPlan::TruncDiff { to: Zxid::ZERO }
    );
}

#[test]
fn empty_follower() {
    // Whole history in the window: DIFF from zero.
    let d = Hist::memory_only(two_epochs()).plan(Zxid::ZERO, &cfg());
    assert_eq!(d.plan, SyncPlan::Diff { after: Zxid::ZERO });
    // Compacted history: SNAP.
    let h = Hist {
        entries: two_epochs(),
        memory: Some(3),
        disk: None,
        snapshot: Some((2, Some(50))),
    };
    let d = h.plan(Zxid::ZERO, &cfg());
    assert_eq!(
        (d.plan, d.rule),
        (SyncPlan::Snap { snapshot: z(1, 3) }, Rule::Snapshot)
    );
}

#[test]
fn cost_rank_orders_the_plan_categories() {
    let plans = [
        SyncPlan::UpToDate,
        SyncPlan::Diff { after: z(1, 1) },
        SyncPlan::Trunc { to: z(1, 2) },
        SyncPlan::TruncDiff { to: z(1, 3) },
        SyncPlan::Snap { snapshot: z(1, 4) },
    ];
    let ranks: Vec<u8> = plans.iter().map(cost_rank).collect();
    assert_eq!(ranks, vec![0, 2, 1, 3, 4]);
}

fn follower(last: Zxid) -> FollowerPosition {
    FollowerPosition {
        current_epoch: last.epoch(),
        last_zxid: last,
    }
}

#[test]
fn seam_translates_leader_history() {
    // Retained log 1.3..=1.5, 2.1..=2.2; snapshot at 1.2; 3-entry window
    // = 1.5, 2.1, 2.2.
    let ends = [z(1, 5), z(2, 2)];
    let history = LeaderHistory {
        first_retained: Some(z(1, 3)),
        last: z(2, 2),
        committed: z(2, 2),
        epoch_ends: &ends,
        snapshot: Some(z(1, 2)),
        snapshot_bytes: Some(1000),
        log_bytes: Some(500),
    };
    let planner = ZabPlanner::new(PlannerConfig {
        memory_window_entries: 3,
        ..PlannerConfig::default()
    });
    // In the window (its edge 1.4 included).
    assert_eq!(
        planner.plan(follower(z(1, 4)), &history),
        SyncPlan::Diff { after: z(1, 4) }
    );
    assert_eq!(
        planner.decide(follower(z(1, 4)), &history).rule,
        Rule::Behind(Source::Memory)
    );
    // Behind the window: the disk log (500 bytes) is over 0.33 x 1000.
    assert_eq!(
        planner.plan(follower(z(1, 3)), &history),
        SyncPlan::Snap { snapshot: z(1, 2) }
    );
    let lenient = ZabPlanner::new(PlannerConfig {
        memory_window_entries: 3,
        snapshot_size_fraction: 0.6,
        ..PlannerConfig::default()
    });
    assert_eq!(
        lenient.plan(follower(z(1, 3)), &history),
        SyncPlan::Diff { after: z(1, 3) }
    );
    assert_eq!(
        lenient.decide(follower(z(1, 3)), &history).rule,
        Rule::Behind(Source::Disk)
    );
    // 1.2 is known by counter and the disk log starts right after it.
    assert_eq!(
        lenient.plan(follower(z(1, 2)), &history),
        SyncPlan::Diff { after: z(1, 2) }
    );
    // Ahead in the same epoch; diverged within epoch 1.
    assert_eq!(
        planner.plan(follower(z(2, 9)), &history),
        SyncPlan::Trunc { to: z(2, 2) }
    );
    assert_eq!(
        planner.plan(follower(z(1, 8)), &history),
        SyncPlan::TruncDiff { to: z(1, 5) }
    );
    // Level.
    assert_eq!(
        planner.plan(follower(z(2, 2)), &history),
        SyncPlan::UpToDate
    );
    // Empty follower, history compacted: SNAP.
    assert_eq!(
        planner.plan(follower(Zxid::ZERO), &history),
        SyncPlan::Snap { snapshot: z(1, 2) }
    );
}

#[test]
fn seam_window_larger_than_log_and_zero_window() {
    let ends = [z(4, 3)];
    let history = LeaderHistory {
        first_retained: Some(z(4, 1)),
        last: z(4, 3),
        committed: z(4, 3),
        epoch_ends: &ends,
        snapshot: None,
        snapshot_bytes: None,
        log_bytes: None,
    };
    let big = ZabPlanner::default();
    assert_eq!(
        big.plan(follower(Zxid::ZERO), &history),
        SyncPlan::Diff { after: Zxid::ZERO }
    );
    let none = ZabPlanner::new(PlannerConfig {
        memory_window_entries: 0,
        ..PlannerConfig::default()
    });
    // No window: the disk log (unknown size, no snapshot to compare) serves.
    assert_eq!(
        none.decide(follower(z(4, 1)), &history).rule,
        Rule::Behind(Source::Disk)
    );
    assert_eq!(
        none.plan(
            FollowerPosition {
                current_epoch: Epoch(3),
                last_zxid: z(3, 7)
            },
            &history
        ),
        SyncPlan::TruncDiff { to: Zxid::ZERO }
    );
}
