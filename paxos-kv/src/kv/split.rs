//! Which keys a group owns, and the operations that move a range of them
//! to a new group (a split) or a whole group's range to an adjacent group
//! (a merge, whose own steps are in `merge.rs`).
//!
//! A split runs in three steps, each a command in a replicated log:
//!
//! 1. [`KvOp::Split`] in the parent's log: the parent's range ends at the
//!    split point, the upper part is recorded as outgoing and in the list
//!    of children ([`Child`]), with the membership the command gives the
//!    new group. Its keys stay in the parent's map, frozen: no write
//!    reaches them ([`KvResult::WrongGroup`]) and the node serves no read
//!    of them.
//! 2. [`KvOp::Ingest`] batches in the child's log: the frozen pairs
//!    ([`KvStore::frozen_keys`]), in increasing (position, key) order.
//!    Each batch names the pair the previous one ended with; one that does
//!    not continue the child's cursor is refused, so duplicates and stale
//!    batches from an old leader are harmless. The child owns nothing
//!    until the final batch, which hands it the range and records it as
//!    taken over from the parent ([`KvStore::has_taken`]).
//! 3. [`KvOp::FinishMove`] in the parent's log: the frozen keys are
//!    dropped.
//!
//! A merge of group H into the adjacent group G runs the same way, with
//! [`KvOp::Retire`] in H's log in place of the split (H's whole range goes
//! out, and H is retired for good) and [`KvOp::Absorb`] in G's log before
//! the batches (G records the range coming in and goes on serving its own;
//! the final batch makes its range the union of both, and records H's
//! range as taken over from H).
//!
//! Invariants (checked again when a snapshot is restored): a range comes
//! in only to a group that owns nothing or whose own range it adjoins,
//! and never while one goes out; a range going out by a split starts where
//! the group's own range ends and is the last child recorded; a retired
//! group owns nothing, takes nothing in, and has at most its former range
//! going out, to the group it retired into; children have distinct ids and
//! non-empty ranges, and so do the ranges recorded as taken over; a
//! child's membership either names at least one voter and no node twice,
//! or is empty (a child recorded by a build that did not keep
//! memberships); every key of the map lies in the group's range, the
//! outgoing one, or the incoming one up to the cursor.
//!
//! The children are a history, not a map of who owns what now: a group
//! that split may later absorb the range it gave away (its child merged
//! back into it) and split again, so a child's range may lie inside the
//! group's range, and two children's ranges may overlap. Nothing orders
//! them beyond the order they were recorded in.
//!
//! Every check and every change here depends only on the store's state and
//! the command, so all replicas answer alike.

use super::command::check_membership;
use super::merge::joined;
use super::{KvOp, KvResult, KvStore, ShardedMap, MAX_SPLIT_MEMBERS};
use crate::shard::{position, KeyRange};
use bytes::Bytes;

/// A range this group is taking over from another group through
/// [`KvOp::Ingest`] batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Incoming {
    /// The group the range comes from.
    pub from: u32,
    /// The positions taken over.
    pub range: KeyRange,
    /// (position, key) of the last pair taken in (`None` before the first
    /// pair).
    pub cursor: Option<(u128, Bytes)>,
    /// How many pairs were taken in.
    pub moved: u64,
}

/// A group made by a split of this one, as [`KvOp::Split`] recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Child {
    /// The new group's id.
    pub id: u32,
    /// The positions given to it.
    pub range: KeyRange,
    /// Node ids of the new group's first voters, as the split named them.
    /// Empty only for a child restored from a format 4 snapshot (written
    /// before splits carried a membership); the node then makes that child
    /// with the split group's current members.
    pub voters: Vec<u64>,
    /// Node ids of the new group's first observers (never also voters);
    /// empty when `voters` is.
    pub observers: Vec<u64>,
}

/// The replicated shard state of a store (see [`KvStore::range`] and the
/// other accessors).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ShardState {
    /// The group count the cluster was created with: keys' positions
    /// depend on it.
    pub(super) base_groups: u32,
    /// The positions this group owns now.
    pub(super) range: KeyRange,
    /// A range given away whose keys are still in the map, with its child.
    pub(super) outgoing: Option<(u32, KeyRange)>,
    /// A range being taken over.
    pub(super) incoming: Option<Incoming>,
    /// Every split made, in order.
    pub(super) children: Vec<Child>,
    /// The next group id [`KvOp::AllocateGroup`] hands out (at least).
    pub(super) next_group: u32,
    /// The group this one was merged into ([`KvOp::Retire`]): once set,
    /// never cleared.
    pub(super) retired_into: Option<u32>,
    /// Every range this group finished taking over, with the group it came
    /// from, in the order the final batches were applied: a split's child
    /// records its parent's range, a merge's absorbing group the retired
    /// group's. Only the final [`KvOp::Ingest`] batch adds to it, and at
    /// most [`MAX_CHILDREN`] entries are kept (the oldest goes first).
    pub(super) taken: Vec<(u32, KeyRange)>,
}

impl Default for ShardState {
    fn default() -> Self {
        ShardState {
            base_groups: 1,
            range: KeyRange::of_base_group(0),
            outgoing: None,
            incoming: None,
            children: Vec::new(),
            next_group: 0,
            retired_into: None,
            taken: Vec::new(),
        }
    }
}

/// Most children a snapshot may list, and most ranges a group keeps a
/// record of having taken over.
pub(super) const MAX_CHILDREN: usize = 1_000_000;

impl ShardState {
    /// Whether a key at position `p` may sit in the map in this state.
    pub(super) fn may_hold(&self, p: u128, key: &[u8]) -> bool {
        self.range.contains(p)
            || self.outgoing.as_ref().is_some_and(|(_, r)| r.contains(p))
            || self.incoming.as_ref().is_some_and(|inc| {
                inc.range.contains(p)
                    && inc
                        .cursor
                        .as_ref()
                        .is_some_and(|(cp, ck)| (p, key) <= (*cp, &ck[..]))
            })
    }

    /// Checks the invariants listed in the module docs that do not involve
    /// the keys; the reason if one does not hold.
    pub(super) fn check(&self) -> Result<(), String> {
        let reversed = |r: &KeyRange| r.start > r.end;
        if self.base_groups == 0 {
            return Err("base_groups is 0".into());
        }
        if reversed(&self.range) {
            return Err(format!("range {} is reversed", self.range));
        }
        if let Some(into) = self.retired_into {
            if !self.range.is_empty() {
                return Err(format!(
                    "the group retired into group {into} but owns {}",
                    self.range
                ));
            }
            if let Some(inc) = &self.incoming {
                return Err(format!(
                    "the group retired into group {into} but takes {} over",
                    inc.range
                ));
            }
            if let Some((to, out)) = &self.outgoing {
                if *to != into {
                    return Err(format!(
                        "the group retired into group {into} but its range goes to group {to}"
                    ));
                }
                if out.is_empty() {
                    return Err(format!("the range {out} given to group {to} is empty"));
                }
            }
        } else if let Some((child, out)) = &self.outgoing {
            if out.is_empty() || self.range.is_empty() || out.start != self.range.end {
                return Err(format!(
                    "outgoing range {out} does not follow the group's range {}",
                    self.range
                ));
            }
            if self
                .children
                .last()
                .is_none_or(|c| c.id != *child || c.range != *out)
            {
                return Err(format!(
                    "outgoing range {out} of group {child} is not the last split recorded"
                ));
            }
            if self.incoming.is_some() {
                return Err("a range both comes in and goes out".into());
            }
        }
        if let Some(inc) = &self.incoming {
            if inc.range.is_empty() {
                return Err(format!("incoming range {} is empty", inc.range));
            }
            // Owning a range while taking another in: a merge, whose range
            // adjoins the group's own (below or above it).
            if !self.range.is_empty()
                && inc.range.start != self.range.end
                && inc.range.end != self.range.start
            {
                return Err(format!(
                    "the group owns {} while it takes {} over, which does not adjoin it",
                    self.range, inc.range
                ));
            }
            if let Some((p, _)) = &inc.cursor {
                if !inc.range.contains(*p) {
                    return Err(format!(
                        "incoming cursor {p:#x} is outside the incoming range {}",
                        inc.range
                    ));
                }
            }
        }
        let mut ids = std::collections::HashSet::with_capacity(self.children.len());
        for Child {
            id,
            range: r,
            voters,
            observers,
        } in &self.children
        {
            if !ids.insert(*id) {
                return Err(format!("group {id} is recorded as a child twice"));
            }
            if r.is_empty() {
                return Err(format!("the range {r} given to group {id} is empty"));
            }
            if voters.len() > MAX_SPLIT_MEMBERS || observers.len() > MAX_SPLIT_MEMBERS {
                return Err(format!(
                    "group {id} has more than {MAX_SPLIT_MEMBERS} voters or observers"
                ));
            }
            // Both lists empty: a child recorded without its membership.
            if !(voters.is_empty() && observers.is_empty()) {
                check_membership(voters, observers)
                    .map_err(|e| format!("the membership of group {id}: {e}"))?;
            }
        }
        if self.taken.len() > MAX_CHILDREN {
            return Err(format!(
                "{} ranges taken over exceed the maximum {MAX_CHILDREN}",
                self.taken.len()
            ));
        }
        // The same range may be taken over more than once, from different
        // groups (a child merged back into its parent, which split the
        // range off again to a new child that merged back too), so ranges
        // need not be distinct; each one was an incoming range, which is
        // never empty.
        for (from, r) in &self.taken {
            if r.is_empty() {
                return Err(format!(
                    "the range {r} taken over from group {from} is empty"
                ));
            }
        }
        Ok(())
    }
}

/// A refusal, with its reason.
pub(super) fn refused(reason: String) -> KvResult {
    KvResult::Refused {
        reason: Bytes::from(reason),
    }
}

/// The store's refusal of a split that names a child the group already
/// split off (the split was proposed twice, and the first one committed):
/// callers that retried a split take it as done.
pub fn already_child(child: u32) -> String {
    format!("group {child} is already a child of this group")
}

impl KvStore {
    /// This store as a base group's initial state: the cluster has
    /// `base_groups` base groups (0 counts as 1) and this group owns
    /// `range` (usually [`KeyRange::of_base_group`]). Replaces any shard
    /// state; meant for a fresh store, before it applies or restores
    /// anything.
    pub fn with_shard(mut self, base_groups: u32, range: KeyRange) -> KvStore {
        self.shard = ShardState {
            base_groups: base_groups.max(1),
            range,
            ..ShardState::default()
        };
        self
    }

    /// This store as a new group's initial state: it owns nothing and
    /// takes `range` over from group `from` ([`KvOp::Ingest`]). Replaces
    /// any shard state; meant for a fresh store.
    pub fn with_incoming(mut self, base_groups: u32, from: u32, range: KeyRange) -> KvStore {
        self.shard = ShardState {
            base_groups: base_groups.max(1),
            range: KeyRange::EMPTY,
            incoming: Some(Incoming {
                from,
                range,
                cursor: None,
                moved: 0,
            }),
            ..ShardState::default()
        };
        self
    }

    /// The cluster's base group count, which keys' positions depend on
    /// ([`position`]).
    pub fn base_groups(&self) -> u32 {
        self.shard.base_groups
    }

    /// The positions this group owns now (empty while a new group takes
    /// its first range over, and once the group is retired).
    pub fn range(&self) -> KeyRange {
        self.shard.range
    }

    /// Whether this group owns `key` now: it takes writes to it, and the
    /// node serves reads of it.
    pub fn owns(&self, key: &[u8]) -> bool {
        let range = self.shard.range;
        let base = self.shard.base_groups;
        if base <= 1 && range == KeyRange::of_base_group(0) {
            // A single group that never split owns every key (no hash on
            // the write path of the common case).
            return true;
        }
        range.contains(position(key, base))
    }

    /// A range given away by a split or a retirement whose keys are still
    /// here, frozen, with the group it went to.
    pub fn outgoing(&self) -> Option<(u32, KeyRange)> {
        self.shard.outgoing
    }

    /// The range this group is taking over, if it is.
    pub fn incoming(&self) -> Option<&Incoming> {
        self.shard.incoming.as_ref()
    }

    /// Every split this group made, in order, with the range and the
    /// first membership each child was given.
    pub fn children(&self) -> &[Child] {
        &self.shard.children
    }

    /// Every range this group finished taking over, as (the group it came
    /// from, the range), in the order it finished them: the parent's range
    /// for a split's child, the retired group's for a merge. See
    /// [`KvStore::has_taken`].
    pub fn taken(&self) -> &[(u32, KeyRange)] {
        &self.shard.taken
    }

    /// Whether this group finished taking `range` over from group `from`:
    /// the final [`KvOp::Ingest`] batch of exactly that move was applied
    /// here (an entry of [`KvStore::taken`] equal to `(from, range)`).
    ///
    /// This is the replicated record a node needs before the group the
    /// range came from may drop its frozen keys. Owning the range is not
    /// enough: a replica left behind (restored from a snapshot taken
    /// before this group split the range off, say) owns it too, without
    /// having taken anything in.
    ///
    /// False for a move finished before the store was restored from a
    /// snapshot of format 6 or older (which kept no such record), and for
    /// a move so old that a million later ones pushed it out of the
    /// record (which keeps the newest million).
    pub fn has_taken(&self, from: u32, range: KeyRange) -> bool {
        self.shard.taken.contains(&(from, range))
    }

    /// The next group id [`KvOp::AllocateGroup`] hands out, at least.
    pub fn next_group(&self) -> u32 {
        self.shard.next_group
    }

    /// The keys frozen by a split or a retirement (those of the outgoing
    /// range), with their positions, sorted by (position, key): the order
    /// the group taking them over takes them in. Empty when no range goes
    /// out. A pass over the whole map.
    pub fn frozen_keys(&self) -> Vec<(u128, Bytes)> {
        let Some((_, out)) = self.shard.outgoing else {
            return Vec::new();
        };
        let base = self.shard.base_groups;
        let mut keys: Vec<(u128, Bytes)> = self
            .map
            .iter()
            .map(|(k, _)| (position(k, base), k.clone()))
            .filter(|(p, _)| out.contains(*p))
            .collect();
        keys.sort_unstable();
        keys
    }

    /// Applies an internal operation (sessions play no part); `None` if
    /// `op` is not one.
    pub(super) fn apply_internal(&mut self, op: &KvOp) -> Option<KvResult> {
        Some(match op {
            KvOp::AllocateGroup { floor } => self.allocate_group(*floor),
            KvOp::Split {
                at,
                child,
                voters,
                observers,
            } => self.split(*at, *child, voters, observers),
            KvOp::Ingest {
                from,
                after,
                pairs,
                last,
            } => self.ingest(*from, after.as_ref(), pairs, *last),
            KvOp::FinishMove { child } => self.finish_move(*child),
            KvOp::Retire { into } => self.retire(*into),
            KvOp::Absorb { from, range } => self.absorb(*from, *range),
            KvOp::Put { .. } | KvOp::Delete { .. } | KvOp::Cas { .. } | KvOp::OpenSession => {
                return None
            }
        })
    }

    fn allocate_group(&mut self, floor: u32) -> KvResult {
        let id = self.shard.next_group.max(floor);
        let Some(next) = id.checked_add(1) else {
            return refused("every group id has been allocated".into());
        };
        self.shard.next_group = next;
        KvResult::GroupAllocated { id }
    }

    fn split(&mut self, at: u128, child: u32, voters: &[u64], observers: &[u64]) -> KvResult {
        let s = &mut self.shard;
        // First, whatever the state: a split proposed twice (a retry whose
        // first attempt committed) is told so, not refused for the move
        // the first one started.
        if s.children.iter().any(|c| c.id == child) {
            return refused(already_child(child));
        }
        if let Some(into) = s.retired_into {
            return refused(format!("the group is retired into group {into}"));
        }
        if let Some((c, r)) = &s.outgoing {
            return refused(format!(
                "a split is under way: range {r} still moves to group {c}"
            ));
        }
        if s.incoming.is_some() {
            return refused("the group still takes its range over".into());
        }
        if !(s.range.start < at && at < s.range.end) {
            return refused(format!(
                "split point {at:#x} is not strictly inside the range {}",
                s.range
            ));
        }
        // The decoder refuses these; checked again so that the store never
        // records a membership its own invariants reject.
        if voters.len() > MAX_SPLIT_MEMBERS || observers.len() > MAX_SPLIT_MEMBERS {
            return refused(format!(
                "the new group's membership exceeds {MAX_SPLIT_MEMBERS} voters or observers"
            ));
        }
        if let Err(e) = check_membership(voters, observers) {
            return refused(format!("the new group's membership: {e}"));
        }
        let given = KeyRange {
            start: at,
            end: s.range.end,
        };
        s.range.end = at;
        s.outgoing = Some((child, given));
        s.children.push(Child {
            id: child,
            range: given,
            voters: voters.to_vec(),
            observers: observers.to_vec(),
        });
        KvResult::SplitStarted {
            child,
            range: given,
        }
    }

    fn ingest(
        &mut self,
        from: u32,
        after: Option<&(u128, Bytes)>,
        pairs: &[(Bytes, Bytes)],
        last: bool,
    ) -> KvResult {
        let base = self.shard.base_groups;
        let Some(inc) = self.shard.incoming.as_mut() else {
            return refused("no range is coming in".into());
        };
        if inc.from != from {
            return refused(format!(
                "the range comes from group {}, not {from}",
                inc.from
            ));
        }
        if inc.cursor.as_ref() != after {
            return refused("the batch does not follow the last pair taken in".into());
        }
        // Every check before any change: a refused batch leaves no trace.
        let mut prev: Option<(u128, &[u8])> = after.map(|(p, k)| (*p, &k[..]));
        for (k, _) in pairs {
            let p = position(k, base);
            if !inc.range.contains(p) {
                return refused(format!(
                    "a key at position {p:#x} is outside the incoming range {}",
                    inc.range
                ));
            }
            if prev.is_some_and(|q| q >= (p, &k[..])) {
                return refused("the pairs are not in increasing (position, key) order".into());
            }
            prev = Some((p, &k[..]));
        }
        if let Some((p, k)) = prev.filter(|_| !pairs.is_empty()) {
            inc.cursor = Some((p, Bytes::copy_from_slice(k)));
        }
        inc.moved = inc.moved.saturating_add(pairs.len() as u64);
        let moved = inc.moved;
        if last {
            // A new group's first range, or a merge's: the union of the
            // group's range and the adjoining one taken in.
            let (inc_from, inc_range) = (inc.from, inc.range);
            self.shard.range = joined(self.shard.range, inc_range);
            self.shard.incoming = None;
            record_taken(&mut self.shard.taken, (inc_from, inc_range));
        }
        // Copied out of the command: a slice would pin the whole frame.
        for (k, v) in pairs {
            self.insert(Bytes::copy_from_slice(k), Bytes::copy_from_slice(v));
        }
        KvResult::Ingested { moved, done: last }
    }

    fn finish_move(&mut self, child: u32) -> KvResult {
        let out = match self.shard.outgoing {
            Some((c, out)) if c == child => out,
            Some((c, _)) => {
                return refused(format!("the range going out is group {c}'s, not {child}'s"))
            }
            None => return refused("no range is going out".into()),
        };
        let base = self.shard.base_groups;
        let frozen: Vec<Bytes> = self
            .map
            .iter()
            .filter(|(k, _)| out.contains(position(k, base)))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &frozen {
            self.remove(k);
        }
        self.shard.outgoing = None;
        KvResult::Done(None)
    }
}

/// Appends `entry` to the record of ranges taken over, keeping at most
/// [`MAX_CHILDREN`] entries: past the bound, the oldest ones are dropped,
/// so that a snapshot stays readable. Reaching it takes a million moves
/// into one group, and a node only asks about the move it is finishing,
/// which is the newest entry.
fn record_taken(taken: &mut Vec<(u32, KeyRange)>, entry: (u32, KeyRange)) {
    if taken.len() >= MAX_CHILDREN {
        let excess = taken.len() + 1 - MAX_CHILDREN;
        taken.drain(..excess);
    }
    taken.push(entry);
}

/// Checks that every key of `map` may sit in a store in `state`.
pub(super) fn check_keys(state: &ShardState, map: &ShardedMap) -> Result<(), String> {
    for (k, _) in map.iter() {
        let p = position(k, state.base_groups);
        if !state.may_hold(p, k) {
            return Err(format!(
                "a key at position {p:#x} is outside the ranges this group holds (range {}, \
                 base_groups {}): written by another group, or for another group count?",
                state.range, state.base_groups
            ));
        }
    }
    Ok(())
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

    #[test]
    fn allocate_counts_up_from_the_floor_and_ignores_sessions() {
        let mut s = KvStore::new();
        let mut log = Log(0);
        let alloc = |floor| internal(KvOp::AllocateGroup { floor });
        assert_eq!(
            log.apply(&mut s, &alloc(4)),
            KvResult::GroupAllocated { id: 4 }
        );
        assert_eq!(
            log.apply(&mut s, &alloc(4)),
            KvResult::GroupAllocated { id: 5 }
        );
        assert_eq!(
            log.apply(&mut s, &alloc(10)),
            KvResult::GroupAllocated { id: 10 }
        );
        assert_eq!(
            log.apply(&mut s, &alloc(2)),
            KvResult::GroupAllocated { id: 11 }
        );
        assert_eq!(s.next_group(), 12);
        // Sessions play no part, whatever the command names.
        let named = cmd_as(b"alice", 9, 1, KvOp::AllocateGroup { floor: 0 });
        assert_eq!(
            log.apply(&mut s, &named),
            KvResult::GroupAllocated { id: 12 }
        );
        assert_eq!(
            log.apply(&mut s, &named),
            KvResult::GroupAllocated { id: 13 }
        );
        let assigned = cmd(
            ASSIGNED_SESSION_BIT | 77,
            1,
            KvOp::AllocateGroup { floor: 0 },
        );
        assert_eq!(
            log.apply(&mut s, &assigned),
            KvResult::GroupAllocated { id: 14 }
        );
        assert_eq!(s.session_count(), 0);
        // The last id is handed out; past it, refused and nothing changes.
        assert_eq!(
            log.apply(&mut s, &alloc(u32::MAX - 1)),
            KvResult::GroupAllocated { id: u32::MAX - 1 }
        );
        assert!(is_refused(&log.apply(&mut s, &alloc(0))));
        assert!(is_refused(&log.apply(&mut s, &alloc(u32::MAX))));
        assert_eq!(s.next_group(), u32::MAX);
    }

    #[test]
    fn split_is_refused_unless_it_fits_and_records_the_child() {
        let base = 4;
        let whole = KeyRange::of_base_group(2);
        let mut s = KvStore::new().with_shard(base, whole);
        let mut log = Log(0);
        let split = |at, child| internal(split_op(at, child));
        let before = image(&s);
        for at in [
            0,
            whole.start - 1,
            whole.start,
            whole.end,
            whole.end + 1,
            u128::MAX,
        ] {
            assert!(is_refused(&log.apply(&mut s, &split(at, 9))), "{at:#x}");
        }
        // Refused: nothing but the applied zxid (bytes 12 to 20) changed.
        assert_eq!(image(&s)[20..], before[20..]);
        assert_eq!(s.range(), whole);
        assert!(s.children().is_empty() && s.outgoing().is_none());
        let at = whole.midpoint().unwrap();
        let given = KeyRange {
            start: at,
            end: whole.end,
        };
        assert_eq!(
            log.apply(&mut s, &split(at, 9)),
            KvResult::SplitStarted {
                child: 9,
                range: given
            }
        );
        assert_eq!(
            s.range(),
            KeyRange {
                start: whole.start,
                end: at
            }
        );
        assert_eq!(s.outgoing(), Some((9, given)));
        assert_eq!(s.children(), &[split_child(9, given)]);
        // One split at a time; a duplicate of it is refused too.
        let quarter = whole.start + (at - whole.start) / 2;
        assert!(is_refused(&log.apply(&mut s, &split(quarter, 10))));
        assert!(is_refused(&log.apply(&mut s, &split(at, 9))));
        assert_eq!(
            log.apply(&mut s, &internal(KvOp::FinishMove { child: 9 })),
            KvResult::Done(None)
        );
        // A child id already used is refused, even once the move is over.
        assert!(is_refused(&log.apply(&mut s, &split(quarter, 9))));
        // The old split point is now the range's end: not inside.
        assert!(is_refused(&log.apply(&mut s, &split(at, 10))));
        assert!(matches!(
            log.apply(&mut s, &split(quarter, 10)),
            KvResult::SplitStarted { child: 10, .. }
        ));
        assert_eq!(s.children().len(), 2);
        assert_eq!(
            s.range(),
            KeyRange {
                start: whole.start,
                end: quarter
            }
        );
        // A group still taking its range over does not split.
        let mut child = KvStore::new().with_incoming(base, 2, given);
        let mut clog = Log(0);
        assert!(is_refused(
            &clog.apply(&mut child, &split(given.midpoint().unwrap(), 11))
        ));
        assert!(child.children().is_empty());
    }

    /// The child is recorded with the membership the command names, in
    /// its order; a membership that is not a valid one is refused and
    /// leaves no trace, whether it reaches the store as bytes (the decoder
    /// refuses it: a no-op) or as an operation.
    #[test]
    fn a_split_records_the_childs_membership_and_refuses_a_bad_one() {
        let whole = KeyRange::of_base_group(0);
        let at = whole.midpoint().unwrap();
        let given = KeyRange {
            start: at,
            end: whole.end,
        };
        let mut s = KvStore::new().with_shard(1, whole);
        let mut log = Log(0);
        let with = |voters: Vec<u64>, observers: Vec<u64>| KvOp::Split {
            at,
            child: 6,
            voters,
            observers,
        };
        let before = image(&s);
        for (voters, observers) in [
            (vec![], vec![]),
            (vec![], vec![2]),
            (vec![1, 1], vec![]),
            (vec![1], vec![2, 1]),
            (vec![1; MAX_SPLIT_MEMBERS + 1], vec![]),
        ] {
            let op = with(voters, observers);
            // As bytes: malformed, a no-op.
            let r = s.apply(z(log.0 + 1), &internal(op.clone()));
            log.0 += 1;
            assert_eq!(&r[..], &[crate::kv::MALFORMED], "{op:?}");
            // As an operation (past the decoder): refused.
            let r = s.apply_internal(&op);
            assert!(r.as_ref().is_some_and(is_refused), "{op:?}: {r:?}");
            assert_eq!(image(&s)[20..], before[20..], "{op:?} left a trace");
        }
        // Too many observers, past the decoder.
        let r = s.apply_internal(&with(vec![1], (2..MAX_SPLIT_MEMBERS as u64 + 3).collect()));
        assert!(r.as_ref().is_some_and(is_refused), "{r:?}");
        assert!(s.children().is_empty() && s.outgoing().is_none());
        assert_eq!(s.range(), whole);
        // A valid one, in no particular order, is kept exactly.
        assert_eq!(
            log.apply(&mut s, &internal(with(vec![30, 10, 20], vec![5, 40]))),
            KvResult::SplitStarted {
                child: 6,
                range: given
            }
        );
        assert_eq!(
            s.children(),
            &[Child {
                id: 6,
                range: given,
                voters: vec![30, 10, 20],
                observers: vec![5, 40],
            }]
        );
        assert_eq!(s.shard.check(), Ok(()));
        // A duplicate of the split with another membership (a second
        // proposal after the group's members changed) is refused: the
        // first one recorded stays.
        assert!(is_refused(
            &log.apply(&mut s, &internal(with(vec![10], vec![])))
        ));
        assert_eq!(s.children()[0].voters, [30, 10, 20]);
    }

    /// A whole move: a parent with keys in both halves splits, the child
    /// takes the frozen keys in over several batches (with duplicates and
    /// batches out of order refused), the parent drops them, and no key is
    /// lost or doubled.
    #[test]
    fn a_split_moves_the_upper_half_through_the_childs_log() {
        let base = 2;
        let whole = KeyRange::of_base_group(1);
        let at = whole.midpoint().unwrap();
        let lower = KeyRange {
            start: whole.start,
            end: at,
        };
        let upper = KeyRange {
            start: at,
            end: whole.end,
        };
        let mut parent = KvStore::new().with_shard(base, whole);
        let mut plog = Log(0);
        let low_keys = keys_in(lower, base, "k", 60);
        let high_keys = keys_in(upper, base, "k", 70);
        let mut seq = 0;
        for (i, k) in low_keys.iter().chain(&high_keys).enumerate() {
            seq += 1;
            let r = plog.apply(&mut parent, &put_key(1, seq, k, &format!("v{i}")));
            assert_eq!(r, KvResult::Done(None));
        }
        // A key of base group 0 is not this group's.
        let elsewhere = keys_in(KeyRange::of_base_group(0), base, "k", 1);
        seq += 1;
        assert_eq!(
            plog.apply(&mut parent, &put_key(1, seq, &elsewhere[0], "x")),
            KvResult::WrongGroup
        );
        assert_eq!(parent.session_seq(b"", 1), Some(seq - 1), "not recorded");
        seq -= 1;
        let original = pairs_of(&parent);
        let original_digest = parent.digest();
        assert_eq!(original.len(), 130);

        // The split.
        assert!(parent.frozen_keys().is_empty());
        let r = plog.apply(&mut parent, &internal(split_op(at, 5)));
        assert_eq!(
            r,
            KvResult::SplitStarted {
                child: 5,
                range: upper
            }
        );
        let frozen = parent.frozen_keys();
        assert_eq!(frozen.len(), high_keys.len());
        assert!(
            frozen.windows(2).all(|w| w[0] < w[1]),
            "sorted by (position, key)"
        );
        assert!(frozen
            .iter()
            .all(|(p, k)| *p == position(k, base) && upper.contains(*p)));
        assert_eq!(parent.len(), 130, "frozen keys stay until the move ends");

        // Frozen keys take no write at the parent; its other keys do.
        for (i, (_, k)) in frozen.iter().take(3).enumerate() {
            let r = plog.apply(&mut parent, &put_key(1, seq + 1, k, "late"));
            assert_eq!(r, KvResult::WrongGroup, "frozen write {i}");
        }
        let del = cmd(
            1,
            seq + 1,
            KvOp::Delete {
                key: frozen[0].1.clone(),
            },
        );
        assert_eq!(plog.apply(&mut parent, &del), KvResult::WrongGroup);
        assert_eq!(parent.session_seq(b"", 1), Some(seq));
        assert_eq!(pairs_of(&parent), original);
        assert!(!parent.owns(&frozen[0].1) && parent.owns(&low_keys[0]));

        // The child takes them in.
        let mut child = KvStore::new().with_incoming(base, 1, upper);
        let mut clog = Log(0);
        assert_eq!(child.range(), KeyRange::EMPTY);
        assert!(!child.owns(&frozen[0].1));
        let r = clog.apply(&mut child, &put_key(2, 1, &frozen[0].1, "early"));
        assert_eq!(r, KvResult::WrongGroup);
        assert_eq!(
            child.session_count(),
            0,
            "a refused first write opens no session"
        );
        assert!(child.is_empty());

        let chunks: Vec<&[(u128, Bytes)]> = frozen.chunks(25).collect();
        assert_eq!(chunks.len(), 3);
        let cursor_after = |c: &[(u128, Bytes)]| c.last().cloned();
        let b0 = internal(batch_of(&parent, 1, None, chunks[0], false));
        let b1 = internal(batch_of(
            &parent,
            1,
            cursor_after(chunks[0]),
            chunks[1],
            false,
        ));
        let b2 = internal(batch_of(
            &parent,
            1,
            cursor_after(chunks[1]),
            chunks[2],
            true,
        ));
        // Out of order: the second batch before the first.
        let untouched = image(&child);
        assert!(is_refused(&clog.apply(&mut child, &b1)));
        assert_eq!(
            image(&child)[20..],
            untouched[20..],
            "a refused batch leaves no trace"
        );
        assert_eq!(
            clog.apply(&mut child, &b0),
            KvResult::Ingested {
                moved: 25,
                done: false
            }
        );
        // A duplicate of the first (an old leader's copy, say): refused.
        assert!(is_refused(&clog.apply(&mut child, &b0)));
        assert_eq!(child.len(), 25);
        assert_eq!(child.incoming().map(|i| i.moved), Some(25));
        assert_eq!(
            child.incoming().and_then(|i| i.cursor.clone()),
            cursor_after(chunks[0])
        );
        // Another source, pairs out of order or outside the range: refused.
        let wrong_from = internal(batch_of(
            &parent,
            3,
            cursor_after(chunks[0]),
            chunks[1],
            false,
        ));
        assert!(is_refused(&clog.apply(&mut child, &wrong_from)));
        let mut reversed = chunks[1].to_vec();
        reversed.reverse();
        let unsorted = internal(batch_of(
            &parent,
            1,
            cursor_after(chunks[0]),
            &reversed,
            false,
        ));
        assert!(is_refused(&clog.apply(&mut child, &unsorted)));
        let outside: Vec<(u128, Bytes)> = low_keys
            .iter()
            .map(|k| (position(k, base), k.clone()))
            .take(2)
            .collect();
        let foreign = internal(batch_of(
            &parent,
            1,
            cursor_after(chunks[0]),
            &outside,
            false,
        ));
        assert!(is_refused(&clog.apply(&mut child, &foreign)));
        // A batch that repeats the cursor's own pair: refused.
        let mut overlapping = vec![chunks[0][24].clone()];
        overlapping.extend_from_slice(chunks[1]);
        let overlap = internal(batch_of(
            &parent,
            1,
            cursor_after(chunks[0]),
            &overlapping,
            false,
        ));
        assert!(is_refused(&clog.apply(&mut child, &overlap)));
        assert_eq!(child.len(), 25);
        // An empty batch that follows the cursor is harmless.
        let empty = internal(batch_of(&parent, 1, cursor_after(chunks[0]), &[], false));
        assert_eq!(
            clog.apply(&mut child, &empty),
            KvResult::Ingested {
                moved: 25,
                done: false
            }
        );

        assert_eq!(
            clog.apply(&mut child, &b1),
            KvResult::Ingested {
                moved: 50,
                done: false
            }
        );
        // Still owns nothing before the last batch.
        let r = clog.apply(&mut child, &put_key(2, 1, &frozen[0].1, "early"));
        assert_eq!(r, KvResult::WrongGroup);
        assert_eq!(child.range(), KeyRange::EMPTY);
        assert_eq!(
            clog.apply(&mut child, &b2),
            KvResult::Ingested {
                moved: 70,
                done: true
            }
        );
        assert!(
            is_refused(&clog.apply(&mut child, &b2)),
            "done: nothing comes in"
        );
        assert_eq!(child.range(), upper);
        assert!(child.incoming().is_none());
        assert!(child.owns(&frozen[0].1));
        assert_eq!(child.len(), 70);

        // The parent drops exactly the frozen keys.
        assert!(is_refused(
            &plog.apply(&mut parent, &internal(KvOp::FinishMove { child: 6 }))
        ));
        assert_eq!(parent.len(), 130);
        let r = plog.apply(&mut parent, &internal(KvOp::FinishMove { child: 5 }));
        assert_eq!(r, KvResult::Done(None));
        assert!(is_refused(
            &plog.apply(&mut parent, &internal(KvOp::FinishMove { child: 5 }))
        ));
        assert!(parent.outgoing().is_none());
        assert!(parent.frozen_keys().is_empty());
        assert_eq!(parent.range(), lower);
        assert_eq!(parent.children(), &[split_child(5, upper)]);
        let (kept, moved) = (pairs_of(&parent), pairs_of(&child));
        assert!(kept.keys().all(|k| lower.contains(position(k, base))));
        assert_eq!(kept.len(), 60);
        let mut union = kept.clone();
        union.extend(moved.clone());
        assert_eq!(union, original, "no key lost, none doubled");
        assert_eq!(parent.digest() ^ child.digest(), original_digest);
        // The keys are served where they now live.
        let r = clog.apply(&mut child, &put_key(2, 1, &frozen[0].1, "new"));
        assert_eq!(r, KvResult::Done(moved.get(&frozen[0].1).cloned()));
        seq += 1;
        let r = plog.apply(&mut parent, &put_key(1, seq, &frozen[1].1, "new"));
        assert_eq!(r, KvResult::WrongGroup);
        let r = plog.apply(&mut parent, &put_key(1, seq, &low_keys[0], "new"));
        assert!(matches!(r, KvResult::Done(Some(_))));
        // Both stores restore from their own snapshots.
        for s in [&parent, &child] {
            let mut t = s.emptied();
            t.restore(s.applied(), &mut &image(s)[..]).unwrap();
            assert_eq!(image(&t), image(s));
        }
    }

    /// Deduplication comes first: a write applied before the split is still
    /// answered from the session, a later one is refused and not recorded,
    /// a first write of a new session opens nothing.
    #[test]
    fn sessions_around_a_split() {
        let whole = KeyRange::of_base_group(0);
        let at = whole.midpoint().unwrap();
        let upper = KeyRange {
            start: at,
            end: whole.end,
        };
        let mut s = KvStore::new().with_shard(1, whole);
        let mut log = Log(0);
        let high = keys_in(upper, 1, "h", 2);
        let first = put_key(7, 1, &high[0], "v");
        assert_eq!(log.apply(&mut s, &first), KvResult::Done(None));
        assert_eq!(
            log.apply(&mut s, &put_key(8, 1, &high[1], "w")),
            KvResult::Done(None)
        );
        log.apply(&mut s, &internal(split_op(at, 1)));
        let sessions = s.session_count();
        // The retry of the applied write gets its answer.
        assert_eq!(log.apply(&mut s, &first), KvResult::Done(None));
        // A later write of the same session: refused, sequence unchanged;
        // its retry is refused alike (not answered as a duplicate).
        let second = put_key(7, 2, &high[0], "v2");
        assert_eq!(log.apply(&mut s, &second), KvResult::WrongGroup);
        assert_eq!(s.session_seq(b"", 7), Some(1));
        assert_eq!(log.apply(&mut s, &second), KvResult::WrongGroup);
        // A late duplicate below the session's last is still stale.
        log.apply(
            &mut s,
            &put_key(
                8,
                2,
                &keys_in(KeyRange { start: 0, end: at }, 1, "l", 1)[0],
                "x",
            ),
        );
        assert_eq!(
            log.apply(&mut s, &put_key(8, 1, &high[1], "w")),
            KvResult::StaleSequence { last: 2 }
        );
        // An unknown session: its first write opens nothing here; any other
        // is expired, as before.
        assert_eq!(
            log.apply(&mut s, &put_key(9, 1, &high[0], "x")),
            KvResult::WrongGroup
        );
        assert_eq!(s.session_seq(b"", 9), None);
        assert_eq!(
            log.apply(&mut s, &put_key(10, 3, &high[0], "x")),
            KvResult::SessionExpired { session: 10 }
        );
        assert_eq!(s.session_count(), sessions);
        assert_eq!(
            value(&s, std::str::from_utf8(&high[0]).unwrap()).as_deref(),
            Some("v")
        );
        // Opening a session is keyless: served during the move.
        assert!(matches!(
            log.apply(&mut s, &cmd(0, 0, KvOp::OpenSession)),
            KvResult::SessionOpened { .. }
        ));
        // Session 9's first write, sent on to the child once it owns the
        // range, opens the session there.
        let mut child = KvStore::new().with_incoming(1, 0, upper);
        let mut clog = Log(0);
        let frozen = s.frozen_keys();
        clog.apply(&mut child, &internal(batch_of(&s, 0, None, &frozen, true)));
        assert_eq!(
            clog.apply(&mut child, &put_key(9, 1, &high[0], "x")),
            KvResult::Done(Some(Bytes::from("v")))
        );
        assert_eq!(child.session_seq(b"", 9), Some(1));
    }

    /// The child records the range as taken over from its parent with its
    /// last batch, and not before: not when it is created, not after a
    /// batch that is not the last, and not for a last batch it refuses.
    /// A duplicate of the last batch adds nothing, and the parent has
    /// taken nothing over.
    #[test]
    fn a_childs_last_batch_records_the_range_taken_from_its_parent() {
        let base = 2;
        let whole = KeyRange::of_base_group(1);
        let at = whole.midpoint().unwrap();
        let upper = KeyRange {
            start: at,
            end: whole.end,
        };
        let mut plog = Log(0);
        let mut parent = KvStore::new().with_shard(base, whole);
        for (i, k) in keys_in(whole, base, "k", 30).iter().enumerate() {
            plog.apply(&mut parent, &put_key(1, i as u64 + 1, k, "v"));
        }
        plog.apply(&mut parent, &internal(split_op(at, 5)));
        let frozen = parent.frozen_keys();
        let (a, b) = frozen.split_at(frozen.len() / 2);
        assert!(!a.is_empty() && !b.is_empty());

        let mut child = KvStore::new().with_incoming(base, 1, upper);
        let mut clog = Log(0);
        assert!(child.taken().is_empty() && !child.has_taken(1, upper));
        let r = clog.apply(&mut child, &internal(batch_of(&parent, 1, None, a, false)));
        assert!(matches!(r, KvResult::Ingested { done: false, .. }), "{r:?}");
        assert!(child.taken().is_empty() && !child.has_taken(1, upper));
        // A last batch that does not follow the cursor, or names another
        // source: refused, nothing recorded.
        for bad in [
            batch_of(&parent, 1, None, b, true),
            batch_of(&parent, 3, a.last().cloned(), b, true),
        ] {
            assert!(is_refused(&clog.apply(&mut child, &internal(bad))));
            assert!(child.taken().is_empty());
        }
        let last = internal(batch_of(&parent, 1, a.last().cloned(), b, true));
        assert!(matches!(
            clog.apply(&mut child, &last),
            KvResult::Ingested { done: true, .. }
        ));
        assert_eq!(child.taken(), &[(1, upper)]);
        assert!(child.has_taken(1, upper));
        // An exact match only: another source, or another range.
        assert!(!child.has_taken(0, upper) && !child.has_taken(5, upper));
        assert!(!child.has_taken(1, whole));
        assert!(!child.has_taken(
            1,
            KeyRange {
                start: at + 1,
                end: whole.end
            }
        ));
        // A duplicate of the last batch is refused and adds nothing.
        assert!(is_refused(&clog.apply(&mut child, &last)));
        assert_eq!(child.taken(), &[(1, upper)]);
        assert_eq!(child.emptied().taken(), child.taken());
        assert_eq!(child.shard.check(), Ok(()));

        // The parent took nothing over, before or after the move ends.
        assert!(parent.taken().is_empty() && !parent.has_taken(1, upper));
        plog.apply(&mut parent, &internal(KvOp::FinishMove { child: 5 }));
        assert!(parent.taken().is_empty());
    }

    /// The record keeps at most [`MAX_CHILDREN`] entries: a last batch
    /// past the bound drops the oldest one and appends its own.
    #[test]
    fn the_record_of_ranges_taken_drops_the_oldest_past_the_bound() {
        use super::MAX_CHILDREN;
        let range = KeyRange::of_base_group(0);
        let mut s = KvStore::new().with_incoming(1, 7, range);
        let old = KeyRange { start: 1, end: 2 };
        s.shard.taken = (0..MAX_CHILDREN as u32).map(|i| (i, old)).collect();
        assert_eq!(s.shard.check(), Ok(()));
        let last = internal(batch_of(&s, 7, None, &[], true));
        let r = Log(0).apply(&mut s, &last);
        assert_eq!(
            r,
            KvResult::Ingested {
                moved: 0,
                done: true
            }
        );
        let taken = s.taken();
        assert_eq!(taken.len(), MAX_CHILDREN);
        assert_eq!(taken[0], (1, old), "the oldest entry went");
        assert_eq!(taken[MAX_CHILDREN - 1], (7, range));
        assert!(s.has_taken(7, range) && !s.has_taken(0, old));
        assert_eq!(s.shard.check(), Ok(()));
        // One more than the bound is not a state a store can be in.
        s.shard.taken.push((8, old));
        assert!(s
            .shard
            .check()
            .is_err_and(|e| e.contains("exceed the maximum")));
    }

    #[test]
    fn emptied_keeps_the_shard_state() {
        let whole = KeyRange::of_base_group(3);
        let mut s = KvStore::new().with_shard(5, whole);
        Log(0).apply(&mut s, &internal(split_op(whole.midpoint().unwrap(), 8)));
        let e = s.emptied();
        assert!(e.is_empty() && e.session_count() == 0);
        assert_eq!(
            (
                e.base_groups(),
                e.range(),
                e.outgoing(),
                e.children(),
                e.next_group()
            ),
            (
                s.base_groups(),
                s.range(),
                s.outgoing(),
                s.children(),
                s.next_group()
            )
        );
        assert_eq!(
            KvStore::new().with_shard(0, whole).base_groups(),
            1,
            "0 counts as 1"
        );
    }
}
