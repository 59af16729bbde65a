//! Model test of the shared log: random writes over a few groups (entries,
//! both truncations, states, removals), syncs, compactions and reopens,
//! compared after every step with a `BTreeMap` per group.

use std::collections::BTreeMap;

use paxos_wal::shared::{Op, SharedLog};
use paxos_wal::MIN_SEGMENT_BYTES;
use proptest::prelude::*;

use crate::small_opts;

#[derive(Debug, Clone)]
enum Step {
    /// `n` entries for group `g`, keys advancing by `gap` from its last.
    Append {
        g: u64,
        n: u8,
        gap: u8,
        len: u16,
    },
    /// Entries for several groups in one batch.
    Mixed {
        groups: Vec<u64>,
        len: u16,
    },
    /// Keep the first `keep` of the group's entries (by position).
    TruncSuffix {
        g: u64,
        keep: u8,
    },
    /// Drop the first `drop` of the group's entries (by position).
    TruncPrefix {
        g: u64,
        drop: u8,
    },
    Meta {
        g: u64,
        len: u8,
    },
    Remove {
        g: u64,
    },
    Sync,
    /// Writes what is staged (with combining on; a no-op otherwise).
    Flush,
    Compact,
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    let g = 0u64..5;
    prop_oneof![
        6 => (g.clone(), 1u8..12, 1u8..4, 0u16..400).prop_map(|(g, n, gap, len)| Step::Append { g, n, gap, len }),
        3 => (proptest::collection::vec(0u64..5, 1..6), 0u16..200).prop_map(|(groups, len)| Step::Mixed { groups, len }),
        2 => (g.clone(), 0u8..20).prop_map(|(g, keep)| Step::TruncSuffix { g, keep }),
        2 => (g.clone(), 0u8..20).prop_map(|(g, drop)| Step::TruncPrefix { g, drop }),
        2 => (g.clone(), 0u8..60).prop_map(|(g, len)| Step::Meta { g, len }),
        1 => g.prop_map(|g| Step::Remove { g }),
        2 => Just(Step::Sync),
        1 => Just(Step::Flush),
        2 => Just(Step::Compact),
        1 => Just(Step::Reopen),
    ]
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Group {
    entries: BTreeMap<u64, (bool, Vec<u8>)>,
    meta: Option<Vec<u8>>,
}

fn payload(g: u64, key: u64, len: u16) -> Vec<u8> {
    (0..len)
        .map(|i| (g as u8) ^ (key as u8).wrapping_mul(13) ^ (i as u8))
        .collect()
}

/// What the log holds, with groups that hold nothing left out (those
/// need not survive a reopen).
fn observed(log: &SharedLog) -> BTreeMap<u64, Group> {
    let mut out = BTreeMap::new();
    for g in log.groups() {
        let mut grp = Group {
            meta: log.meta(g),
            ..Group::default()
        };
        log.read(g, 0, usize::MAX, usize::MAX, |e| {
            grp.entries.insert(e.key, (e.tagged, e.payload.to_vec()));
        })
        .unwrap();
        assert_eq!(log.first_key(g), grp.entries.keys().next().copied());
        assert_eq!(log.last_key(g), grp.entries.keys().last().copied());
        let tagged: Vec<u64> = grp
            .entries
            .iter()
            .filter(|e| e.1 .0)
            .map(|e| *e.0)
            .collect();
        assert_eq!(log.tagged_keys(g), tagged);
        if !grp.entries.is_empty() || grp.meta.is_some() {
            out.insert(g, grp);
        }
    }
    out
}

fn expected(model: &BTreeMap<u64, Group>) -> BTreeMap<u64, Group> {
    model
        .iter()
        .filter(|(_, g)| !g.entries.is_empty() || g.meta.is_some())
        .map(|(k, v)| (*k, v.clone()))
        .collect()
}

/// With `combine`, the log stages batches (`set_combine_writes`), and the
/// model is compared only every third write (a read flushes what it
/// needs), so that batches of several groups pile up staged in between.
fn run(steps: Vec<Step>, combine: bool) {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_opts(MIN_SEGMENT_BYTES);
    let open = |opts: &paxos_wal::WalOptions| {
        let log = SharedLog::open(dir.path(), opts.clone()).unwrap().0;
        log.set_combine_writes(combine);
        log
    };
    let mut log = Some(open(&opts));
    let mut model: BTreeMap<u64, Group> = BTreeMap::new();
    let mut next_tag = 0u64;
    for (i, step) in steps.into_iter().enumerate() {
        let l = log.as_ref().unwrap();
        let compare = !combine
            || i % 3 == 2
            || matches!(
                step,
                Step::Sync | Step::Flush | Step::Compact | Step::Reopen
            );
        match step {
            Step::Append { g, n, gap, len } => {
                let grp = model.entry(g).or_default();
                let mut key = grp.entries.keys().last().copied().unwrap_or(0);
                let mut owned = Vec::new();
                for _ in 0..n {
                    key += u64::from(gap);
                    next_tag += 1;
                    owned.push((key, next_tag % 7 == 0, payload(g, key, len)));
                }
                let ops: Vec<Op<'_>> = owned
                    .iter()
                    .map(|(key, tagged, p)| Op::Entry {
                        group: g,
                        key: *key,
                        tagged: *tagged,
                        payload: p,
                    })
                    .collect();
                l.write(&ops).unwrap();
                for (k, t, p) in owned {
                    grp.entries.insert(k, (t, p));
                }
            }
            Step::Mixed { groups, len } => {
                let mut owned = Vec::new();
                let mut last: BTreeMap<u64, u64> = BTreeMap::new();
                for g in groups {
                    let k = last
                        .get(&g)
                        .copied()
                        .or_else(|| model.get(&g).and_then(|m| m.entries.keys().last().copied()))
                        .unwrap_or(0)
                        + 1;
                    last.insert(g, k);
                    owned.push((g, k, payload(g, k, len)));
                }
                let ops: Vec<Op<'_>> = owned
                    .iter()
                    .map(|(g, k, p)| Op::Entry {
                        group: *g,
                        key: *k,
                        tagged: false,
                        payload: p,
                    })
                    .collect();
                l.write(&ops).unwrap();
                for (g, k, p) in owned {
                    model.entry(g).or_default().entries.insert(k, (false, p));
                }
            }
            Step::TruncSuffix { g, keep } => {
                let grp = model.entry(g).or_default();
                let after = grp
                    .entries
                    .keys()
                    .nth(usize::from(keep).saturating_sub(1))
                    .copied()
                    .filter(|_| keep > 0)
                    .unwrap_or(0);
                l.truncate_suffix(g, after).unwrap();
                grp.entries.retain(|k, _| *k <= after);
            }
            Step::TruncPrefix { g, drop } => {
                let grp = model.entry(g).or_default();
                let upto = grp
                    .entries
                    .keys()
                    .nth(usize::from(drop))
                    .copied()
                    .unwrap_or(u64::MAX);
                l.truncate_prefix(g, upto).unwrap();
                grp.entries.retain(|k, _| *k > upto);
            }
            Step::Meta { g, len } => {
                let state: Vec<u8> = (0..len).map(|b| b ^ (i as u8)).collect();
                l.save_meta(g, &state).unwrap();
                model.entry(g).or_default().meta = Some(state);
            }
            Step::Remove { g } => {
                let held = l.contains_group(g);
                assert_eq!(l.remove_group(g).unwrap(), held);
                model.remove(&g);
            }
            Step::Sync => {
                assert_eq!(l.sync().unwrap(), l.last_lsn());
            }
            Step::Flush => {
                l.flush().unwrap();
                assert_eq!(l.wal().last_key(), l.last_lsn());
            }
            Step::Compact => {
                let r = l.compact().unwrap();
                for w in r.holders.windows(2) {
                    assert!(w[0].lsn < w[1].lsn, "holders oldest first: {r:?}");
                }
            }
            Step::Reopen => {
                log.take().unwrap().close().unwrap();
                log = Some(open(&opts));
            }
        }
        if compare {
            let l = log.as_ref().unwrap();
            assert_eq!(observed(l), expected(&model), "after step {i}");
        }
    }
    log.take().unwrap().close().unwrap();
    let (l, report) = SharedLog::open(dir.path(), opts).unwrap();
    assert!(report.wal.torn_tail.is_none());
    assert_eq!(observed(&l), expected(&model), "after the final reopen");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn shared_log_matches_a_per_group_model(steps in proptest::collection::vec(step(), 1..60)) {
        run(steps, false);
    }

    #[test]
    fn shared_log_combining_writes_matches_a_per_group_model(steps in proptest::collection::vec(step(), 1..60)) {
        run(steps, true);
    }
}
