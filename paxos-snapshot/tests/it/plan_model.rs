//! The planner against a brute-force model over whole logs.
//!
//! The generator builds a leader log and a follower log that shares a
//! prefix with it and then forks (respecting the two protocol facts the
//! planner relies on: one entry per zxid, gapless counters per epoch), and
//! a random arrangement of the leader's window, disk log and snapshot. The
//! model knows both logs; it tries every candidate plan in cost order and
//! keeps the first that (a) turns the follower's log into exactly the
//! leader's, (b) names only zxids the leader can know, (c) truncates only
//! within the follower's epoch (or to zero), and (d) can be served from
//! the leader's window/disk. The planner, which sees only the follower's
//! last zxid, must choose that same plan.

use std::collections::BTreeSet;

use paxos_core::{SyncPlan, Zxid};
use paxos_snapshot::{cost_rank, PlannerConfig};
use proptest::prelude::*;

use crate::common::{z, Hist};

#[derive(Clone, Debug)]
struct Case {
    hist: Hist,
    follower: Vec<Zxid>,
    config: PlannerConfig,
}

fn last_of(log: &[Zxid]) -> Zxid {
    log.last().copied().unwrap_or(Zxid::ZERO)
}

/// Position of `x` in the leader log (`-1` for ZERO), if held.
fn idx(leader: &[Zxid], x: Zxid) -> Option<i64> {
    if x == Zxid::ZERO {
        return Some(-1);
    }
    leader.iter().position(|e| *e == x).map(|i| i as i64)
}

fn apply(plan: SyncPlan, follower: &[Zxid], leader: &[Zxid]) -> Option<Vec<Zxid>> {
    let truncate = |to: Zxid| -> Option<Vec<Zxid>> {
        if to == Zxid::ZERO {
            return Some(Vec::new());
        }
        let at = follower.iter().position(|e| *e == to)?;
        Some(follower[..=at].to_vec())
    };
    let diff = |mut log: Vec<Zxid>, after: Zxid| -> Option<Vec<Zxid>> {
        // The follower's log must end exactly at `after`, which the leader holds.
        if last_of(&log) != after {
            return None;
        }
        let start = (idx(leader, after)? + 1) as usize;
        log.extend_from_slice(&leader[start..]);
        Some(log)
    };
    match plan {
        SyncPlan::UpToDate => Some(follower.to_vec()),
        SyncPlan::Trunc { to } => truncate(to),
        SyncPlan::Diff { after } => diff(follower.to_vec(), after),
        SyncPlan::TruncDiff { to } => diff(truncate(to)?, to),
        SyncPlan::Snap { snapshot } => {
            let log = if snapshot == Zxid::ZERO {
                Vec::new()
            } else {
                leader[..=(idx(leader, snapshot)? as usize)].to_vec()
            };
            diff(log, snapshot)
        }
    }
}

fn model(case: &Case) -> SyncPlan {
    let leader = &case.hist.entries;
    let follower = &case.follower;
    let n = leader.len() as i64;
    let r = case.hist.retained() as i64;
    let f = last_of(follower);
    let l = last_of(leader);
    let cfg = &case.config;

    // What the leader can name: zero, its last zxid, retained entries, and
    // entries of the first retained entry's epoch (gapless counters).
    let knowable = |x: Zxid| -> bool {
        if x == Zxid::ZERO || x == l {
            return true;
        }
        match idx(leader, x) {
            Some(i) if i >= r => true,
            Some(_) => r < n && x.epoch() == leader[r as usize].epoch(),
            None => false,
        }
    };
    // Whether the entries after position `i` can be sent.
    let servable = |i: i64, snapshot: bool| -> bool {
        let m = case.hist.memory.map(|m| m as i64);
        if m.is_some_and(|m| i + 1 >= m) {
            return true;
        }
        let Some((d0, d1, bytes)) = case.hist.disk else {
            return false;
        };
        let (d0, d1) = (d0 as i64, d1 as i64);
        if !(cfg.disk_diff || snapshot) || i + 1 < d0 || i > d1 {
            return false;
        }
        if !(d1 == n - 1 || m.is_some_and(|m| d1 + 1 >= m)) {
            return false;
        }
        if !snapshot && cfg.snapshot_size_fraction >= 0.0 {
            if let Some((_, Some(snap_bytes))) = case.hist.snapshot {
                return bytes <= (cfg.snapshot_size_fraction * snap_bytes as f64) as u64;
            }
        }
        true
    };
    let correct = |plan: SyncPlan| apply(plan, follower, leader).as_deref() == Some(&leader[..]);

    if correct(SyncPlan::UpToDate) {
        return SyncPlan::UpToDate;
    }
    let mut targets: Vec<Zxid> = leader.iter().rev().copied().collect();
    targets.push(Zxid::ZERO);
    let certain = |t: Zxid| t == Zxid::ZERO || t.epoch() == f.epoch();
    for &t in &targets {
        let plan = SyncPlan::Trunc { to: t };
        if correct(plan) && certain(t) && knowable(t) {
            return plan;
        }
    }
    let diff = SyncPlan::Diff { after: f };
    if correct(diff) && knowable(f) && idx(leader, f).is_some_and(|i| servable(i, false)) {
        return diff;
    }
    for &t in &targets {
        let plan = SyncPlan::TruncDiff { to: t };
        if t != f
            && correct(plan)
            && certain(t)
            && knowable(t)
            && idx(leader, t).is_some_and(|i| servable(i, false))
        {
            return plan;
        }
    }
    if let Some((si, _)) = case.hist.snapshot {
        if si as i64 == n - 1 || servable(si as i64, true) {
            return SyncPlan::Snap {
                snapshot: leader[si],
            };
        }
    }
    SyncPlan::Snap { snapshot: l }
}

prop_compose! {
    fn leader_log()(runs in proptest::collection::btree_map(1u32..9, 1u32..5, 0..4)) -> Vec<Zxid> {
        runs.into_iter().flat_map(|(e, n)| (1..=n).map(move |c| z(e, c))).collect()
    }
}

fn case() -> impl Strategy<Value = Case> {
    leader_log()
        .prop_flat_map(|leader| {
            let n = leader.len();
            (
                Just(leader),
                0..=n,                                                // fork point
                0u32..3, // entries continuing the fork point's epoch
                proptest::collection::vec((1u32..12, 1u32..4), 0..3), // new-epoch runs
                0..=n,   // memory first (n: none)
                (0..=n, 0..=n, 0u64..200), // disk first, last (first > last: none), bytes
                (0..=n, proptest::option::of(50u64..400)), // snapshot index (n: none), bytes
                any::<bool>(), // disk diff
                prop_oneof![Just(0.33f64), Just(-1.0), Just(1.0)],
            )
        })
        .prop_map(
            |(
                leader,
                fork,
                extend,
                runs,
                mem,
                (d0, d1, dbytes),
                (si, sbytes),
                disk_diff,
                fraction,
            )| {
                let n = leader.len();
                let epochs: BTreeSet<u32> = leader.iter().map(|e| e.epoch().0).collect();
                let mut follower = leader[..fork].to_vec();
                // Continue the epoch of the fork point only where the leader has no
                // next counter (else the zxids would collide).
                if let Some(&last) = follower.last() {
                    let leader_continues = leader
                        .get(fork)
                        .is_some_and(|next| next.epoch() == last.epoch());
                    if !leader_continues {
                        for k in 1..=extend {
                            follower.push(z(last.epoch().0, last.counter() + k));
                        }
                    }
                }
                for (epoch, count) in runs {
                    let after = last_of(&follower).epoch().0;
                    if epoch > after && !epochs.contains(&epoch) {
                        follower.extend((1..=count).map(|c| z(epoch, c)));
                    }
                }
                let memory = (mem < n).then_some(mem);
                let disk = (d0 <= d1 && d1 < n).then_some((d0, d1, dbytes));
                let mut hist = Hist {
                    entries: leader,
                    memory,
                    disk,
                    snapshot: None,
                };
                let r = hist.retained();
                // The leader never cuts its log above its newest snapshot: a
                // snapshot sits at or after the entry before the first retained
                // one; with nothing compacted it is optional.
                hist.snapshot = if n == 0 {
                    None
                } else if r == 0 {
                    (si < n).then_some((si, sbytes))
                } else {
                    Some((si.clamp(r - 1, n - 1), sbytes))
                };
                Case {
                    hist,
                    follower,
                    config: PlannerConfig {
                        disk_diff,
                        snapshot_size_fraction: fraction,
                        memory_window_entries: 0,
                    },
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn planner_matches_brute_force_model(case in case()) {
        let f = last_of(&case.follower);
        let decision = case.hist.plan(f, &case.config);
        let expected = model(&case);
        prop_assert_eq!(decision.plan, expected, "rule {:?}", decision.rule);
        // And the plan really brings the follower level.
        let result = apply(decision.plan, &case.follower, &case.hist.entries);
        prop_assert_eq!(result.as_deref(), Some(&case.hist.entries[..]));
    }
}

#[test]
fn model_generator_covers_every_plan_category() {
    // Guard against a generator that never reaches some category.
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let mut seen = BTreeSet::new();
    for _ in 0..3000 {
        let Ok(tree) = strategy.new_tree(&mut runner) else {
            continue;
        };
        seen.insert(cost_rank(&model(&tree.current())));
    }
    assert_eq!(seen, (0..=4).collect::<BTreeSet<u8>>());
}
