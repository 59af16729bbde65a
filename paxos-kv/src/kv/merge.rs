//! The steps of a merge that differ from a split's: a group retiring into
//! an adjacent one ([`KvOp::Retire`]), and the adjacent group starting to
//! take the retiring group's range over ([`KvOp::Absorb`]). The batches
//! ([`KvOp::Ingest`]) and the end ([`KvOp::FinishMove`]) are a split's (see
//! `split.rs`).
//!
//! [`KvOp::Retire`]: super::KvOp::Retire
//! [`KvOp::Absorb`]: super::KvOp::Absorb
//! [`KvOp::Ingest`]: super::KvOp::Ingest
//! [`KvOp::FinishMove`]: super::KvOp::FinishMove
//!
//! A merge of group H into group G, whose ranges adjoin:
//!
//! 1. `Retire { into: G }` in H's log: H's whole range goes out to G and H
//!    owns nothing from then on; its keys stay in its map, frozen, and H
//!    is marked retired ([`KvStore::retired_into`]) for good.
//! 2. `Absorb { from: H, range }` in G's log, with H's former range: G
//!    records it as coming in and goes on serving its own range meanwhile.
//! 3. `Ingest` batches in G's log, H's frozen pairs in (position, key)
//!    order; the last one makes G's range the union of both.
//! 4. `FinishMove { child: G }` in H's log: H drops the frozen keys. H is
//!    then empty, owns nothing and takes part in no other move.
//!
//! Each step is refused unless it fits the store's state, so a duplicate
//! or a stale one is a no-op, and every decision depends only on the state
//! and the command.

use super::split::{refused, Incoming};
use super::{KvResult, KvStore};
use crate::shard::KeyRange;

/// `a` and `b` as one range: `b` alone if `a` is empty (a new group's first
/// range), else the union of two ranges that adjoin (an invariant of the
/// shard state, checked in `split.rs`).
pub(super) fn joined(a: KeyRange, b: KeyRange) -> KeyRange {
    if a.is_empty() {
        return b;
    }
    KeyRange {
        start: a.start.min(b.start),
        end: a.end.max(b.end),
    }
}

impl KvStore {
    /// The group this one was merged into, once [`KvOp::Retire`] applied
    /// (whether or not the keys have moved yet); `None` for a group that
    /// was never retired. A retired group owns no key and refuses every
    /// split and merge step but the [`KvOp::FinishMove`] that ends its own
    /// retirement.
    ///
    /// [`KvOp::Retire`]: super::KvOp::Retire
    /// [`KvOp::FinishMove`]: super::KvOp::FinishMove
    pub fn retired_into(&self) -> Option<u32> {
        self.shard.retired_into
    }

    /// [`KvOp::Retire`](super::KvOp::Retire): gives the whole range to
    /// `into` and retires the group.
    pub(super) fn retire(&mut self, into: u32) -> KvResult {
        let s = &mut self.shard;
        if let Some(before) = s.retired_into {
            return refused(format!("the group is already retired into group {before}"));
        }
        if let Some((c, r)) = &s.outgoing {
            return refused(format!(
                "a split is under way: range {r} still moves to group {c}"
            ));
        }
        if let Some(inc) = &s.incoming {
            return refused(format!(
                "range {} still comes in from group {}",
                inc.range, inc.from
            ));
        }
        if s.range.is_empty() {
            return refused("the group owns no range to give".into());
        }
        let range = s.range;
        s.outgoing = Some((into, range));
        s.range = KeyRange::EMPTY;
        s.retired_into = Some(into);
        KvResult::Retiring { into, range }
    }

    /// [`KvOp::Absorb`](super::KvOp::Absorb): starts taking `range` over
    /// from the retiring group `from`.
    pub(super) fn absorb(&mut self, from: u32, range: KeyRange) -> KvResult {
        let s = &mut self.shard;
        if let Some(into) = s.retired_into {
            return refused(format!("the group is retired into group {into}"));
        }
        if let Some((c, r)) = &s.outgoing {
            return refused(format!(
                "a split is under way: range {r} still moves to group {c}"
            ));
        }
        if let Some(inc) = &s.incoming {
            return refused(format!(
                "range {} already comes in from group {}",
                inc.range, inc.from
            ));
        }
        if range.is_empty() {
            return refused(format!("the range {range} to take over is empty"));
        }
        if s.range.is_empty() {
            return refused("the group owns no range for another to adjoin".into());
        }
        if range.start != s.range.end && range.end != s.range.start {
            return refused(format!(
                "the range {range} does not adjoin the group's range {}",
                s.range
            ));
        }
        s.incoming = Some(Incoming {
            from,
            range,
            cursor: None,
            moved: 0,
        });
        KvResult::Absorbing { from, range }
    }
}

#[cfg(test)]
mod tests {
    use crate::kv::test_util::*;
    use crate::kv::*;
    use crate::shard::{position, KeyRange};
    use bytes::Bytes;
    use paxos_core::StateMachine;

    /// A counter of zxids for one store.
    struct Log(u32);

    impl Log {
        fn apply(&mut self, s: &mut KvStore, c: &Bytes) -> KvResult {
            self.0 += 1;
            result(s.apply(z(self.0), c))
        }
    }

    fn is_refused(r: &KvResult) -> bool {
        matches!(r, KvResult::Refused { reason } if !reason.is_empty())
    }

    /// Applies `op` to `s` and checks it is refused and leaves no trace
    /// but the applied zxid (bytes 12 to 20 of the image).
    fn refuses(log: &mut Log, s: &mut KvStore, op: KvOp) {
        let before = image(s);
        let r = log.apply(s, &internal(op.clone()));
        assert!(is_refused(&r), "{op:?}: {r:?}");
        assert_eq!(image(s)[20..], before[20..], "{op:?} left a trace");
    }

    /// A store of `base` base groups owning `range`, with one key put in
    /// each of `keys` (value `v<i>`, session 1).
    fn store_with(base: u32, range: KeyRange, keys: &[Bytes], log: &mut Log) -> KvStore {
        let mut s = KvStore::new().with_shard(base, range);
        for (i, k) in keys.iter().enumerate() {
            let r = log.apply(&mut s, &put_key(1, i as u64 + 1, k, &format!("v{i}")));
            assert_eq!(r, KvResult::Done(None));
        }
        s
    }

    /// A whole merge of base group 1 (H) into base group 0 (G): H's keys
    /// are frozen at once, G serves its own keys throughout and H's once
    /// the last batch is in, H ends empty and retired, and no key is lost
    /// or doubled.
    #[test]
    fn a_merge_moves_the_retiring_groups_keys_through_the_absorbing_groups_log() {
        let base = 2;
        let (g_range, h_range) = (KeyRange::of_base_group(0), KeyRange::of_base_group(1));
        let g_keys = keys_in(g_range, base, "k", 50);
        let h_keys = keys_in(h_range, base, "k", 70);
        let (mut glog, mut hlog) = (Log(0), Log(0));
        let mut g = store_with(base, g_range, &g_keys, &mut glog);
        let mut h = store_with(base, h_range, &h_keys, &mut hlog);
        let mut expected = pairs_of(&g);
        expected.extend(pairs_of(&h));
        assert_eq!(expected.len(), 120);
        let h_seq = h.session_seq(b"", 1);

        // H retires into G.
        assert!(h.frozen_keys().is_empty() && h.retired_into().is_none());
        assert_eq!(
            hlog.apply(&mut h, &internal(KvOp::Retire { into: 0 })),
            KvResult::Retiring {
                into: 0,
                range: h_range
            }
        );
        assert_eq!(h.retired_into(), Some(0));
        assert_eq!(h.range(), KeyRange::EMPTY);
        assert_eq!(h.outgoing(), Some((0, h_range)));
        assert!(h.children().is_empty(), "a retirement is not a split");
        assert_eq!(h.len(), 70, "the frozen keys stay until the move ends");
        let frozen = h.frozen_keys();
        assert_eq!(frozen.len(), 70);
        assert!(frozen.windows(2).all(|w| w[0] < w[1]));
        assert!(frozen.iter().all(|(p, k)| *p == position(k, base)));
        // Writes to H's keys: refused in H (not recorded) and in G.
        let k0 = frozen[0].1.clone();
        assert!(!h.owns(&k0) && !g.owns(&k0));
        let late = put_key(1, 71, &k0, "late");
        assert_eq!(hlog.apply(&mut h, &late), KvResult::WrongGroup);
        assert_eq!(h.session_seq(b"", 1), h_seq, "not recorded");
        assert_eq!(
            glog.apply(&mut g, &put_key(2, 1, &k0, "early")),
            KvResult::WrongGroup
        );
        assert_eq!(g.session_seq(b"", 2), None, "no session opened");
        // A retiring group takes part in no other move; it still hands
        // out group ids.
        refuses(&mut hlog, &mut h, KvOp::Retire { into: 0 });
        refuses(&mut hlog, &mut h, KvOp::Retire { into: 5 });
        refuses(&mut hlog, &mut h, split_op(h_range.midpoint().unwrap(), 5));
        refuses(
            &mut hlog,
            &mut h,
            KvOp::Absorb {
                from: 0,
                range: g_range,
            },
        );
        assert_eq!(
            hlog.apply(&mut h, &internal(KvOp::AllocateGroup { floor: 2 })),
            KvResult::GroupAllocated { id: 2 }
        );

        // G starts taking H's range over and keeps serving its own.
        let absorb = internal(KvOp::Absorb {
            from: 1,
            range: h_range,
        });
        assert_eq!(
            glog.apply(&mut g, &absorb),
            KvResult::Absorbing {
                from: 1,
                range: h_range
            }
        );
        assert_eq!(g.range(), g_range);
        assert_eq!(
            g.incoming(),
            Some(&Incoming {
                from: 1,
                range: h_range,
                cursor: None,
                moved: 0
            })
        );
        assert!(is_refused(&glog.apply(&mut g, &absorb)), "a duplicate");
        refuses(&mut glog, &mut g, split_op(g_range.midpoint().unwrap(), 5));
        refuses(&mut glog, &mut g, KvOp::Retire { into: 1 });
        refuses(&mut glog, &mut g, KvOp::FinishMove { child: 1 });
        let own = g_keys[0].clone();
        let r = glog.apply(&mut g, &put_key(1, 51, &own, "during"));
        assert_eq!(r, KvResult::Done(Some(Bytes::from("v0"))));
        expected.insert(own.clone(), Bytes::from("during"));

        // The batches, with a stale one and one from another group.
        let chunks: Vec<&[(u128, Bytes)]> = frozen.chunks(25).collect();
        assert_eq!(chunks.len(), 3);
        let after = |c: &[(u128, Bytes)]| c.last().cloned();
        let b0 = internal(batch_of(&h, 1, None, chunks[0], false));
        let b1 = internal(batch_of(&h, 1, after(chunks[0]), chunks[1], false));
        let b2 = internal(batch_of(&h, 1, after(chunks[1]), chunks[2], true));
        refuses(&mut glog, &mut g, batch_of(&h, 3, None, chunks[0], false));
        refuses(
            &mut glog,
            &mut g,
            batch_of(&h, 1, after(chunks[0]), chunks[1], false),
        );
        // G's own keys are not the range coming in.
        let own_pairs: Vec<(u128, Bytes)> = g_keys
            .iter()
            .map(|k| (position(k, base), k.clone()))
            .take(1)
            .collect();
        let foreign = batch_of(&g, 1, None, &own_pairs, false);
        refuses(&mut glog, &mut g, foreign);
        assert_eq!(
            glog.apply(&mut g, &b0),
            KvResult::Ingested {
                moved: 25,
                done: false
            }
        );
        assert!(is_refused(&glog.apply(&mut g, &b0)));
        // Partway: H's keys taken in are not G's yet; G's own still are.
        assert!(!g.owns(&k0));
        assert_eq!(
            glog.apply(&mut g, &put_key(2, 1, &k0, "early")),
            KvResult::WrongGroup
        );
        let r = glog.apply(&mut g, &put_key(1, 52, &g_keys[1], "partway"));
        assert_eq!(r, KvResult::Done(Some(Bytes::from("v1"))));
        expected.insert(g_keys[1].clone(), Bytes::from("partway"));
        assert_eq!(
            glog.apply(&mut g, &b1),
            KvResult::Ingested {
                moved: 50,
                done: false
            }
        );
        assert_eq!(g.range(), g_range);
        assert!(!g.owns(&k0));
        assert_eq!(
            glog.apply(&mut g, &b2),
            KvResult::Ingested {
                moved: 70,
                done: true
            }
        );
        let whole = KeyRange {
            start: g_range.start,
            end: h_range.end,
        };
        assert_eq!(g.range(), whole);
        assert!(g.incoming().is_none() && g.outgoing().is_none());
        assert!(g.owns(&k0) && g.owns(&own));
        assert!(
            is_refused(&glog.apply(&mut g, &b2)),
            "done: nothing comes in"
        );
        assert_eq!(pairs_of(&g), expected, "every key of both groups, once");

        // H drops the frozen keys.
        refuses(&mut hlog, &mut h, KvOp::FinishMove { child: 1 });
        assert_eq!(
            hlog.apply(&mut h, &internal(KvOp::FinishMove { child: 0 })),
            KvResult::Done(None)
        );
        assert!(h.is_empty() && h.frozen_keys().is_empty());
        assert_eq!(h.digest(), 0);
        assert_eq!((h.range(), h.outgoing()), (KeyRange::EMPTY, None));
        assert!(h.incoming().is_none());
        assert_eq!(h.retired_into(), Some(0), "retired for good");
        assert!(!h.owns(&k0) && !h.owns(&own));
        // Retired: no move of any kind, ever; group ids still handed out.
        refuses(&mut hlog, &mut h, KvOp::FinishMove { child: 0 });
        refuses(&mut hlog, &mut h, KvOp::Retire { into: 0 });
        refuses(&mut hlog, &mut h, split_op(h_range.midpoint().unwrap(), 6));
        refuses(
            &mut hlog,
            &mut h,
            KvOp::Absorb {
                from: 0,
                range: g_range,
            },
        );
        refuses(&mut hlog, &mut h, batch_of(&g, 0, None, &[], true));
        assert_eq!(
            hlog.apply(&mut h, &internal(KvOp::AllocateGroup { floor: 0 })),
            KvResult::GroupAllocated { id: 3 }
        );
        assert_eq!(
            hlog.apply(&mut h, &put_key(1, 72, &k0, "x")),
            KvResult::WrongGroup
        );
        assert!(h.is_empty());

        // The keys are served where they now live; the writes H refused
        // open a session in G.
        let r = glog.apply(&mut g, &put_key(2, 1, &k0, "new"));
        assert_eq!(r, KvResult::Done(expected.get(&k0).cloned()));
        assert_eq!(g.session_seq(b"", 2), Some(1));
        // The state machine is consistent, and both restore.
        for s in [&g, &h] {
            let mut t = s.emptied();
            t.restore(s.applied(), &mut &image(s)[..]).unwrap();
            assert_eq!(image(&t), image(s));
            assert_eq!(t.retired_into(), s.retired_into());
        }
    }

    /// The range may come in from below too: G = base group 1 absorbs base
    /// group 0.
    #[test]
    fn a_group_absorbs_the_range_below_its_own() {
        let base = 2;
        let (g_range, h_range) = (KeyRange::of_base_group(1), KeyRange::of_base_group(0));
        let (mut glog, mut hlog) = (Log(0), Log(0));
        let mut g = store_with(base, g_range, &keys_in(g_range, base, "g", 10), &mut glog);
        let mut h = store_with(base, h_range, &keys_in(h_range, base, "h", 12), &mut hlog);
        let mut expected = pairs_of(&g);
        expected.extend(pairs_of(&h));
        hlog.apply(&mut h, &internal(KvOp::Retire { into: 1 }));
        let r = glog.apply(
            &mut g,
            &internal(KvOp::Absorb {
                from: 0,
                range: h_range,
            }),
        );
        assert!(matches!(r, KvResult::Absorbing { from: 0, .. }), "{r:?}");
        let frozen = h.frozen_keys();
        let r = glog.apply(&mut g, &internal(batch_of(&h, 0, None, &frozen, true)));
        assert_eq!(
            r,
            KvResult::Ingested {
                moved: 12,
                done: true
            }
        );
        assert_eq!(
            g.range(),
            KeyRange {
                start: h_range.start,
                end: g_range.end
            }
        );
        assert_eq!(pairs_of(&g), expected);
        hlog.apply(&mut h, &internal(KvOp::FinishMove { child: 1 }));
        assert!(h.is_empty());
    }

    /// A child merged back into its parent: the parent owns its whole
    /// range again, its record of the child stays (a history), and it can
    /// split again, over the range it once gave away.
    #[test]
    fn a_child_merges_back_into_its_parent_which_splits_again() {
        let base = 1;
        let whole = KeyRange::of_base_group(0);
        let at = whole.midpoint().unwrap();
        let upper = KeyRange {
            start: at,
            end: whole.end,
        };
        let (mut plog, mut clog) = (Log(0), Log(0));
        let mut parent = store_with(base, whole, &keys_in(whole, base, "k", 40), &mut plog);
        let original = pairs_of(&parent);
        // The split, whole.
        plog.apply(&mut parent, &internal(split_op(at, 7)));
        let mut child = KvStore::new().with_incoming(base, 0, upper);
        let frozen = parent.frozen_keys();
        clog.apply(
            &mut child,
            &internal(batch_of(&parent, 0, None, &frozen, true)),
        );
        plog.apply(&mut parent, &internal(KvOp::FinishMove { child: 7 }));
        assert_eq!(child.range(), upper);
        // The merge back.
        assert!(matches!(
            clog.apply(&mut child, &internal(KvOp::Retire { into: 0 })),
            KvResult::Retiring { into: 0, range } if range == upper
        ));
        assert!(matches!(
            plog.apply(
                &mut parent,
                &internal(KvOp::Absorb {
                    from: 7,
                    range: upper
                })
            ),
            KvResult::Absorbing { from: 7, .. }
        ));
        let frozen = child.frozen_keys();
        let (a, b) = frozen.split_at(frozen.len() / 2);
        plog.apply(&mut parent, &internal(batch_of(&child, 7, None, a, false)));
        let r = plog.apply(
            &mut parent,
            &internal(batch_of(&child, 7, a.last().cloned(), b, true)),
        );
        assert!(matches!(r, KvResult::Ingested { done: true, .. }), "{r:?}");
        clog.apply(&mut child, &internal(KvOp::FinishMove { child: 0 }));
        assert_eq!(parent.range(), whole);
        assert_eq!(pairs_of(&parent), original);
        assert!(child.is_empty() && child.retired_into() == Some(0));
        assert_eq!(parent.children(), &[split_child(7, upper)]);
        assert_eq!(parent.taken(), &[(7, upper)]);
        assert_eq!(child.taken(), &[(0, upper)]);
        assert_eq!(parent.shard.check(), Ok(()));
        // The old child's id stays taken; a new split may give away a
        // range that overlaps the one given before.
        let three_quarters = at + (whole.end - at) / 2;
        refuses(&mut plog, &mut parent, split_op(three_quarters, 7));
        let r = plog.apply(&mut parent, &internal(split_op(three_quarters, 8)));
        assert!(
            matches!(r, KvResult::SplitStarted { child: 8, .. }),
            "{r:?}"
        );
        assert_eq!(parent.shard.check(), Ok(()));
        let mut t = parent.emptied();
        t.restore(parent.applied(), &mut &image(&parent)[..])
            .unwrap();
        assert_eq!(image(&t), image(&parent));
    }

    /// The ambiguity the record of ranges taken over removes. Group G
    /// splits its upper half off to H, H later merges back into G. A
    /// replica of G left in the state from before the split (a clone
    /// taken then, as a replica restored from an old snapshot would be)
    /// owns H's range and takes nothing in, exactly like G once the merge
    /// is done; only `has_taken` tells them apart. G records the merge
    /// with its last batch, not with the absorb or an earlier batch, and
    /// H keeps its own record of taking the range from G by the split.
    #[test]
    fn a_merge_is_recorded_as_taken_which_a_replica_from_before_the_split_is_not() {
        let base = 1;
        let whole = KeyRange::of_base_group(0);
        let at = whole.midpoint().unwrap();
        let upper = KeyRange {
            start: at,
            end: whole.end,
        };
        let (mut glog, mut hlog) = (Log(0), Log(0));
        let mut g = store_with(base, whole, &keys_in(whole, base, "k", 40), &mut glog);
        let before_split = g.clone();

        // G splits H (group 7) off; H takes the upper half in.
        glog.apply(&mut g, &internal(split_op(at, 7)));
        let mut h = KvStore::new().with_incoming(base, 0, upper);
        let frozen = g.frozen_keys();
        hlog.apply(&mut h, &internal(batch_of(&g, 0, None, &frozen, true)));
        glog.apply(&mut g, &internal(KvOp::FinishMove { child: 7 }));
        assert_eq!(h.taken(), &[(0, upper)]);
        assert!(g.taken().is_empty());

        // H merges back into G.
        hlog.apply(&mut h, &internal(KvOp::Retire { into: 0 }));
        let absorb = KvOp::Absorb {
            from: 7,
            range: upper,
        };
        assert!(matches!(
            glog.apply(&mut g, &internal(absorb)),
            KvResult::Absorbing { from: 7, .. }
        ));
        assert!(!g.has_taken(7, upper), "absorbing is not having taken");
        let frozen = h.frozen_keys();
        let (a, b) = frozen.split_at(frozen.len() / 2);
        glog.apply(&mut g, &internal(batch_of(&h, 7, None, a, false)));
        assert!(!g.has_taken(7, upper) && g.taken().is_empty());
        let r = glog.apply(
            &mut g,
            &internal(batch_of(&h, 7, a.last().cloned(), b, true)),
        );
        assert!(matches!(r, KvResult::Ingested { done: true, .. }), "{r:?}");
        assert_eq!(g.taken(), &[(7, upper)]);
        assert!(g.has_taken(7, upper));
        assert!(!g.has_taken(0, upper) && !g.has_taken(7, whole));

        // The old replica and the merged G look alike to the check the
        // node used to make, but only G has taken H's range over.
        for s in [&g, &before_split] {
            assert!(s.incoming().is_none() && s.range().covers(&upper));
        }
        assert!(!before_split.has_taken(7, upper));
        assert!(before_split.taken().is_empty());

        // H, retired and emptied, keeps its record: a history.
        hlog.apply(&mut h, &internal(KvOp::FinishMove { child: 0 }));
        assert!(h.is_empty() && h.has_taken(0, upper));
        // Both records survive a snapshot.
        for s in [&g, &h] {
            let mut t = s.emptied();
            t.shard.taken.clear();
            t.restore(s.applied(), &mut &image(s)[..]).unwrap();
            assert_eq!(t.taken(), s.taken());
        }
    }

    /// Two merges into the same group are recorded in the order they
    /// finished: a range from above, then one from below.
    #[test]
    fn merges_are_recorded_in_the_order_they_finish() {
        let base = 4;
        let (r0, r1, r2) = (
            KeyRange::of_base_group(0),
            KeyRange::of_base_group(1),
            KeyRange::of_base_group(2),
        );
        let mut glog = Log(0);
        let mut g = store_with(base, r1, &keys_in(r1, base, "g", 5), &mut glog);
        for (from, range) in [(2, r2), (0, r0)] {
            let mut hlog = Log(0);
            let mut h = store_with(base, range, &keys_in(range, base, "h", 5), &mut hlog);
            hlog.apply(&mut h, &internal(KvOp::Retire { into: 1 }));
            glog.apply(&mut g, &internal(KvOp::Absorb { from, range }));
            let frozen = h.frozen_keys();
            glog.apply(&mut g, &internal(batch_of(&h, from, None, &frozen, true)));
        }
        assert_eq!(g.taken(), &[(2, r2), (0, r0)]);
        assert_eq!(
            g.range(),
            KeyRange {
                start: r0.start,
                end: r2.end
            }
        );
        assert_eq!(g.shard.check(), Ok(()));
    }

    /// Each step refused when it does not fit, leaving no trace.
    #[test]
    fn merge_steps_are_refused_unless_they_fit() {
        let base = 4;
        let r1 = KeyRange::of_base_group(1);
        let (r0, r2, r3) = (
            KeyRange::of_base_group(0),
            KeyRange::of_base_group(2),
            KeyRange::of_base_group(3),
        );
        let mut log = Log(0);
        let mut g = store_with(base, r1, &keys_in(r1, base, "k", 5), &mut log);
        // Not adjoining, overlapping, inside, empty or reversed ranges.
        for range in [
            r3,
            KeyRange {
                start: r2.start + 1,
                end: r2.end,
            },
            KeyRange {
                start: r0.start,
                end: r0.end - 1,
            },
            KeyRange {
                start: r1.start,
                end: r2.end,
            },
            KeyRange {
                start: r0.start,
                end: r1.start + 1,
            },
            r1,
            KeyRange {
                start: r1.end,
                end: r1.end,
            },
            KeyRange {
                start: r2.end,
                end: r2.start,
            },
            KeyRange {
                start: r1.start,
                end: r1.start,
            },
            KeyRange::EMPTY,
        ] {
            refuses(&mut log, &mut g, KvOp::Absorb { from: 2, range });
        }
        // While a split is under way: neither retire nor absorb.
        log.apply(&mut g, &internal(split_op(r1.midpoint().unwrap(), 9)));
        refuses(&mut log, &mut g, KvOp::Retire { into: 0 });
        refuses(&mut log, &mut g, KvOp::Absorb { from: 0, range: r0 });
        log.apply(&mut g, &internal(KvOp::FinishMove { child: 9 }));
        // The range above now begins at the split point: r2 no longer
        // adjoins; r0 does.
        refuses(&mut log, &mut g, KvOp::Absorb { from: 2, range: r2 });
        assert!(matches!(
            log.apply(&mut g, &internal(KvOp::Absorb { from: 0, range: r0 })),
            KvResult::Absorbing { .. }
        ));
        // While a range comes in: neither another absorb nor a retire.
        let upper = KeyRange {
            start: r1.midpoint().unwrap(),
            end: r1.end,
        };
        refuses(
            &mut log,
            &mut g,
            KvOp::Absorb {
                from: 9,
                range: upper,
            },
        );
        refuses(&mut log, &mut g, KvOp::Retire { into: 0 });
        // A new group taking its first range over neither retires nor
        // absorbs.
        let mut fresh = KvStore::new().with_incoming(base, 1, upper);
        let mut flog = Log(0);
        refuses(&mut flog, &mut fresh, KvOp::Retire { into: 1 });
        refuses(&mut flog, &mut fresh, KvOp::Absorb { from: 2, range: r2 });
        // A group owning nothing has nothing to give nor to adjoin.
        let mut empty = KvStore::new().with_shard(base, KeyRange::EMPTY);
        refuses(&mut flog, &mut empty, KvOp::Retire { into: 1 });
        refuses(&mut flog, &mut empty, KvOp::Absorb { from: 2, range: r2 });
        // Past the decoder, every one of them is refused alike.
        let before = image(&empty);
        for op in [
            KvOp::Retire { into: 1 },
            KvOp::Absorb { from: 2, range: r2 },
        ] {
            assert!(empty.apply_internal(&op).as_ref().is_some_and(is_refused));
        }
        assert_eq!(image(&empty), before);
    }
}
