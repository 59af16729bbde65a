//! The replica's view of its log: an in-memory index of which zxids are
//! held (runs of consecutive counters, one per epoch), the entries not yet
//! durable, and the storage writes pending for the next `Ready`.

use std::collections::VecDeque;

use crate::membership::Membership;
use crate::message::Entry;
use crate::storage::{Storage, StorageError};
use crate::{Epoch, Zxid};

/// The memberships of the retained log: the one in force at its base, and
/// each membership-change entry after it. The last one is in force (a
/// change takes effect when it is appended, committed or not).
#[derive(Clone, Debug)]
pub(crate) struct Configs {
    base: Membership,
    entries: Vec<(Zxid, Membership)>,
    /// The membership in force changed since [`take_changed`](Self::take_changed).
    changed: bool,
}

impl Configs {
    fn new(base: Membership) -> Configs {
        Configs {
            base,
            entries: Vec::new(),
            changed: false,
        }
    }

    /// The membership in force and the zxid of the entry that set it
    /// (`None` for the base's).
    pub(crate) fn current(&self) -> (&Membership, Option<Zxid>) {
        match self.entries.last() {
            Some((z, m)) => (m, Some(*z)),
            None => (&self.base, None),
        }
    }

    /// The membership in force after the entry at `z` (at or after the
    /// base).
    pub(crate) fn at(&self, z: Zxid) -> &Membership {
        self.entries
            .iter()
            .rev()
            .find(|(c, _)| *c <= z)
            .map_or(&self.base, |(_, m)| m)
    }

    /// The zxid of the newest membership-change entry at or before `z`.
    pub(crate) fn zxid_at(&self, z: Zxid) -> Option<Zxid> {
        self.entries.iter().rev().map(|(c, _)| *c).find(|c| *c <= z)
    }

    /// The newest membership-change entry after `commit`, if any: a change
    /// not yet committed.
    pub(crate) fn pending_after(&self, commit: Zxid) -> Option<Zxid> {
        self.entries.last().map(|(z, _)| *z).filter(|z| *z > commit)
    }

    /// Whether the membership in force changed since the last call.
    pub(crate) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    fn push(&mut self, z: Zxid, m: Membership) {
        debug_assert!(
            self.entries.last().is_none_or(|(l, _)| *l < z),
            "membership-change entries arrive in zxid order"
        );
        self.entries.push((z, m));
        self.changed = true;
    }

    fn truncate_after(&mut self, to: Zxid) {
        let before = self.entries.len();
        self.entries.retain(|(z, _)| *z <= to);
        self.changed |= self.entries.len() != before;
    }

    fn reset(&mut self, base: Membership) {
        let before = self.current().0.clone();
        self.entries.clear();
        self.base = base;
        self.changed |= self.base != before;
    }

    fn compact(&mut self, upto: Zxid) {
        let keep = self.entries.partition_point(|(z, _)| *z <= upto);
        if keep > 0 {
            let mut folded: Vec<(Zxid, Membership)> = self.entries.drain(..keep).collect();
            if let Some((_, m)) = folded.pop() {
                self.base = m;
            }
        }
    }
}

/// Decodes a membership-change entry read from storage.
fn stored_membership(e: &Entry) -> Result<Membership, StorageError> {
    Membership::decode(&e.data).map_err(|err| {
        StorageError::Corrupt(format!(
            "membership-change entry {:?} does not decode: {err}",
            e.zxid
        ))
    })
}

/// A run of consecutive counters within one epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    epoch: u32,
    first: u32,
    last: u32,
}

/// Which zxids the log holds, as runs; O(epochs) memory.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogIndex {
    runs: VecDeque<Run>,
}

impl LogIndex {
    fn find(&self, epoch: u32) -> Result<usize, usize> {
        self.runs.binary_search_by_key(&epoch, |r| r.epoch)
    }

    pub(crate) fn first(&self) -> Option<Zxid> {
        self.runs
            .front()
            .map(|r| Zxid::new(Epoch(r.epoch), r.first))
    }

    pub(crate) fn last(&self) -> Option<Zxid> {
        self.runs.back().map(|r| Zxid::new(Epoch(r.epoch), r.last))
    }

    pub(crate) fn holds(&self, z: Zxid) -> bool {
        match self.find(z.epoch().0) {
            Ok(i) => {
                let r = self.runs[i];
                r.first <= z.counter() && z.counter() <= r.last
            }
            Err(_) => false,
        }
    }

    /// The first held zxid strictly greater than `z`.
    pub(crate) fn next_after(&self, z: Zxid) -> Option<Zxid> {
        let i = match self.find(z.epoch().0) {
            Ok(i) => {
                let r = self.runs[i];
                if z.counter() < r.last {
                    return Some(Zxid::new(Epoch(r.epoch), z.counter().max(r.first - 1) + 1));
                }
                i + 1
            }
            Err(i) => i,
        };
        self.runs.get(i).map(|r| Zxid::new(Epoch(r.epoch), r.first))
    }

    /// The highest held zxid less than or equal to `z`.
    pub(crate) fn at_or_before(&self, z: Zxid) -> Option<Zxid> {
        let i = match self.find(z.epoch().0) {
            Ok(i) => {
                let r = self.runs[i];
                if z.counter() >= r.first {
                    return Some(Zxid::new(Epoch(r.epoch), z.counter().min(r.last)));
                }
                i
            }
            Err(i) => i,
        };
        if i == 0 {
            return None;
        }
        let r = self.runs[i - 1];
        Some(Zxid::new(Epoch(r.epoch), r.last))
    }

    /// The held zxid immediately before held `z`, if held.
    pub(crate) fn prev_of(&self, z: Zxid) -> Option<Zxid> {
        if z.counter() == 0 {
            return self.at_or_before(Zxid(z.0.saturating_sub(1)));
        }
        self.at_or_before(Zxid(z.0 - 1))
    }

    /// Whether appending `z` keeps the log gapless: the same epoch's next
    /// counter, or counter 1 of a later epoch; anything on an empty index.
    pub(crate) fn continues(&self, z: Zxid) -> bool {
        match self.runs.back() {
            None => z.counter() >= 1,
            Some(r) if r.epoch == z.epoch().0 => Some(z.counter()) == r.last.checked_add(1),
            Some(r) => z.epoch().0 > r.epoch && z.counter() == 1,
        }
    }

    pub(crate) fn push(&mut self, z: Zxid) {
        assert!(
            self.continues(z),
            "log continuity: {z:?} cannot follow {:?}",
            self.last()
        );
        match self.runs.back_mut() {
            Some(r) if r.epoch == z.epoch().0 => r.last = z.counter(),
            _ => self.runs.push_back(Run {
                epoch: z.epoch().0,
                first: z.counter(),
                last: z.counter(),
            }),
        }
    }

    /// Drops every zxid greater than `z`.
    pub(crate) fn truncate_after(&mut self, z: Zxid) {
        while let Some(r) = self.runs.back_mut() {
            if r.epoch > z.epoch().0 {
                self.runs.pop_back();
            } else if r.epoch == z.epoch().0 {
                r.last = r.last.min(z.counter());
                if r.last < r.first {
                    self.runs.pop_back();
                }
                break;
            } else {
                break;
            }
        }
    }

    /// Drops every zxid less than or equal to `z`.
    pub(crate) fn truncate_prefix(&mut self, z: Zxid) {
        while let Some(r) = self.runs.front_mut() {
            if r.epoch < z.epoch().0 {
                self.runs.pop_front();
            } else if r.epoch == z.epoch().0 {
                r.first = r.first.max(z.counter().saturating_add(1));
                if r.first > r.last || z.counter() == u32::MAX {
                    self.runs.pop_front();
                }
                break;
            } else {
                break;
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.runs.clear();
    }

    /// The held zxid `n` entries before held `z` (`z` itself for 0), or
    /// `None` if fewer than `n` entries precede it.
    pub(crate) fn back_n(&self, z: Zxid, mut n: u64) -> Option<Zxid> {
        let i = self.find(z.epoch().0).ok()?;
        let mut counter = z.counter();
        let mut idx = i;
        loop {
            let r = self.runs[idx];
            let avail = u64::from(counter - r.first);
            if n <= avail {
                return Some(Zxid::new(Epoch(r.epoch), counter - n as u32));
            }
            n -= avail + 1;
            if idx == 0 {
                return None;
            }
            idx -= 1;
            counter = self.runs[idx].last;
        }
    }

    pub(crate) fn epoch_ends(&self) -> Vec<Zxid> {
        self.runs
            .iter()
            .map(|r| Zxid::new(Epoch(r.epoch), r.last))
            .collect()
    }

    pub(crate) fn from_storage<S: Storage>(s: &S) -> Result<LogIndex, StorageError> {
        let mut idx = LogIndex::default();
        let Some(first) = s.first_zxid() else {
            return Ok(idx);
        };
        for (k, end) in s.epoch_ends()?.into_iter().enumerate() {
            let start = if k == 0 { first.counter() } else { 1 };
            // Read from disk: a log whose epoch boundaries contradict its
            // first entry is damaged, and is reported rather than trusted.
            if start > end.counter() {
                return Err(StorageError::Corrupt(format!(
                    "the log's epoch {} ends at {end:?}, before its first entry {first:?}",
                    end.epoch().0
                )));
            }
            idx.runs.push_back(Run {
                epoch: end.epoch().0,
                first: start,
                last: end.counter(),
            });
        }
        Ok(idx)
    }
}

const UNSENT: u64 = u64::MAX;

/// The log as the replica sees it.
pub(crate) struct Log<S> {
    pub(crate) storage: S,
    pub(crate) index: LogIndex,
    /// The known predecessor of the first held entry (or the history's end
    /// when no entry is held): `Zxid::ZERO` for a log never compacted,
    /// the snapshot's zxid after an install. `None` when unknown.
    pub(crate) base: Option<Zxid>,
    /// Entries not yet durable, each with the number of the `Ready` that
    /// handed it out (`UNSENT` if none yet).
    unstable: VecDeque<(Entry, u64)>,
    /// Durable entries just before `unstable` (contiguous with it), kept
    /// until handed out to be applied ([`Log::applying`]) or pushed out by
    /// `recent_max_bytes`: reads find them without the storage.
    recent: VecDeque<Entry>,
    /// Payload bytes in `recent`.
    recent_bytes: usize,
    /// The bound on `recent_bytes` (`Config::apply_cache_bytes`).
    recent_max_bytes: usize,
    pending_truncate: Option<Zxid>,
    pending_compact: Option<Zxid>,
    /// The memberships of the retained log.
    pub(crate) configs: Configs,
}

/// Why entries could not be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// `after` is not a position the log can continue from.
    NotHeld,
    /// The storage failed.
    Storage(StorageError),
}

impl<S: Storage> Log<S> {
    /// The log over `storage`; `snapshot` is the newest local snapshot and
    /// `base` the membership in force at it (or, without one, at the
    /// beginning of time).
    pub(crate) fn new(
        storage: S,
        snapshot: Option<Zxid>,
        base: Membership,
    ) -> Result<Log<S>, StorageError> {
        let index = LogIndex::from_storage(&storage)?;
        let mut configs = Configs::new(base);
        for e in storage.config_entries()? {
            let m = stored_membership(&e)?;
            if configs.entries.last().is_some_and(|(l, _)| *l >= e.zxid) {
                return Err(StorageError::Corrupt(format!(
                    "membership-change entries out of order at {:?}",
                    e.zxid
                )));
            }
            configs.entries.push((e.zxid, m));
        }
        let mut log = Log {
            storage,
            index,
            base: None,
            unstable: VecDeque::new(),
            recent: VecDeque::new(),
            recent_bytes: 0,
            recent_max_bytes: 0,
            pending_truncate: None,
            pending_compact: None,
            configs,
        };
        match snapshot {
            None => log.base = Some(Zxid::ZERO),
            Some(s) => match log.index.first() {
                None => log.base = Some(s),
                Some(f) if f > s => log.base = Some(s),
                Some(_) if log.index.holds(s) => {}
                Some(_) => {
                    tracing::warn!(snapshot = ?s, "log inconsistent with snapshot; dropping the log");
                    let base = log.configs.base.clone();
                    log.reset_to(s, base);
                }
            },
        }
        // Entries at or before the snapshot are in the snapshot's
        // membership already.
        if let Some(s) = snapshot {
            log.configs.entries.retain(|(z, _)| *z > s);
        }
        log.configs.changed = false;
        Ok(log)
    }

    /// Sets the bound on durable entries kept in memory
    /// (`Config::apply_cache_bytes`); 0 keeps none.
    pub(crate) fn set_recent_max_bytes(&mut self, max: usize) {
        self.recent_max_bytes = max;
        self.trim_recent();
    }

    /// Drops kept entries from the front (`front`) or the back while
    /// `drop` says so, keeping `recent_bytes` in step (bounded by the
    /// entries kept).
    fn drop_recent(&mut self, front: bool, mut drop: impl FnMut(&Entry, usize) -> bool) {
        loop {
            let end = if front {
                self.recent.front()
            } else {
                self.recent.back()
            };
            match end {
                Some(e) if drop(e, self.recent_bytes) => {}
                _ => return,
            }
            let e = if front {
                self.recent.pop_front()
            } else {
                self.recent.pop_back()
            };
            if let Some(e) = e {
                self.recent_bytes -= e.data.len();
            }
        }
    }

    /// Drops the oldest kept entries while over the bound.
    fn trim_recent(&mut self) {
        let max = self.recent_max_bytes;
        self.drop_recent(true, |_, bytes| bytes > max);
    }

    /// Entries up to `z` were handed out to be applied: no read after a
    /// commit needs them again (a lagging follower's catch-up reads the
    /// storage).
    pub(crate) fn applying(&mut self, z: Zxid) {
        self.drop_recent(true, |e, _| e.zxid <= z);
    }

    /// The last zxid of the history: last entry, else the base.
    pub(crate) fn last(&self) -> Zxid {
        self.index.last().or(self.base).unwrap_or(Zxid::ZERO)
    }

    /// Whether the log can continue after `z`.
    pub(crate) fn is_position(&self, z: Zxid) -> bool {
        self.index.holds(z) || self.base == Some(z)
    }

    /// Highest position (held zxid or base) at or before `z`.
    pub(crate) fn position_at_or_before(&self, z: Zxid) -> Option<Zxid> {
        self.index.at_or_before(z).or(self.base.filter(|b| *b <= z))
    }

    /// Appends `e`; a membership change takes effect now. Its membership
    /// must have been validated by the caller (a leader proposes only
    /// valid ones; a follower checks what a leader sends).
    pub(crate) fn append(&mut self, e: Entry) {
        if e.is_config() {
            let m = Membership::decode(&e.data).unwrap_or_else(|err| {
                panic!(
                    "invariant: a membership-change entry is validated before it is appended ({:?}: {err})",
                    e.zxid
                )
            });
            self.configs.push(e.zxid, m);
        }
        self.index.push(e.zxid);
        self.unstable.push_back((e, UNSENT));
    }

    /// Drops every entry after `to` (which must be a position).
    pub(crate) fn truncate_after(&mut self, to: Zxid) {
        self.configs.truncate_after(to);
        self.index.truncate_after(to);
        while self.unstable.back().is_some_and(|(e, _)| e.zxid > to) {
            self.unstable.pop_back();
        }
        self.drop_recent(false, |e, _| e.zxid > to);
        self.pending_truncate = Some(self.pending_truncate.map_or(to, |t| t.min(to)));
    }

    /// Drops the whole log; the history now ends at the snapshot `s`,
    /// whose membership is `membership`.
    pub(crate) fn reset_to(&mut self, s: Zxid, membership: Membership) {
        self.configs.reset(membership);
        self.index.clear();
        self.unstable.clear();
        self.recent.clear();
        self.recent_bytes = 0;
        self.base = Some(s);
        self.pending_truncate = Some(Zxid::ZERO);
        self.pending_compact = None;
    }

    /// Drops entries up to `upto` (held, durable).
    pub(crate) fn compact(&mut self, upto: Zxid) {
        debug_assert!(self.index.holds(upto), "compaction point must be held");
        self.configs.compact(upto);
        self.index.truncate_prefix(upto);
        self.applying(upto);
        self.base = Some(upto);
        self.pending_compact = Some(upto);
    }

    /// The last zxid whose entry (and every earlier one) is durable.
    pub(crate) fn durable_last(&self) -> Zxid {
        match self.unstable.front() {
            None => self.last(),
            Some((e, _)) => self
                .index
                .prev_of(e.zxid)
                .or(self.base)
                .unwrap_or(Zxid::ZERO),
        }
    }

    /// Hands out the pending writes as part of `Ready` number `seq`.
    pub(crate) fn take_writes(
        &mut self,
        seq: u64,
        entries: &mut Vec<Entry>,
    ) -> (Option<Zxid>, Option<Zxid>) {
        let mut fresh = 0usize;
        for (_, s) in self.unstable.iter_mut().rev() {
            if *s != UNSENT {
                break;
            }
            *s = seq;
            fresh += 1;
        }
        let start = self.unstable.len() - fresh;
        entries.reserve(fresh);
        entries.extend(self.unstable.range(start..).map(|(e, _)| e.clone()));
        (self.pending_truncate.take(), self.pending_compact.take())
    }

    pub(crate) fn has_unsent(&self) -> bool {
        self.pending_truncate.is_some()
            || self.pending_compact.is_some()
            || self.unstable.back().is_some_and(|(_, s)| *s == UNSENT)
    }

    /// The writes of every `Ready` up to `seq` are durable.
    pub(crate) fn persisted(&mut self, seq: u64) {
        while self.unstable.front().is_some_and(|(_, s)| *s <= seq) {
            if let Some((e, _)) = self.unstable.pop_front() {
                if self.recent_max_bytes > 0 {
                    self.recent_bytes += e.data.len();
                    self.recent.push_back(e);
                }
            }
        }
        self.trim_recent();
    }

    /// Reads the entries following position `after`, up to `upto`
    /// inclusive, within the limits, into `out`.
    pub(crate) fn read(
        &self,
        after: Zxid,
        upto: Zxid,
        max_entries: usize,
        max_bytes: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), ReadError> {
        if !self.is_position(after) {
            return Err(ReadError::NotHeld);
        }
        let Some(start) = self.index.next_after(after) else {
            return Ok(());
        };
        if start > upto {
            return Ok(());
        }
        let out_start = out.len();
        // The entries held in memory: the durable ones kept, then those not
        // yet durable (contiguous). The storage serves what comes before.
        let memory_from = self
            .recent
            .front()
            .or(self.unstable.front().map(|(e, _)| e))
            .map(|e| e.zxid);
        let mut bytes = 0usize;
        if memory_from.is_none_or(|u| start < u) {
            let n0 = out.len();
            self.storage
                .entries(start, max_entries, max_bytes, out)
                .map_err(ReadError::Storage)?;
            // Keep only what is held and before the entries in memory: the
            // storage may still hold a suffix whose truncation is pending
            // (above `upto`, or at or above the first entry in memory).
            let mut keep = n0;
            let mut prev = after;
            for (i, e) in out.iter().enumerate().skip(n0) {
                let z = e.zxid;
                if z <= prev || z > upto || memory_from.is_some_and(|u| z >= u) {
                    break;
                }
                debug_assert!(
                    self.index.holds(z),
                    "storage returned {z:?} the index does not hold"
                );
                bytes += e.data.len();
                keep = i + 1;
                prev = z;
            }
            out.truncate(keep);
        }
        let got = out.len() - out_start;
        if got < max_entries && (got == 0 || bytes < max_bytes) {
            let next = match out.last() {
                Some(e) if out.len() > out_start => self.index.next_after(e.zxid),
                _ => Some(start),
            };
            if let (Some(next), Some(u)) = (next, memory_from) {
                if next >= u {
                    let memory = self
                        .recent
                        .iter()
                        .chain(self.unstable.iter().map(|(e, _)| e));
                    // Bounded by the entries in memory.
                    for e in memory.skip_while(|e| e.zxid < next) {
                        let n = out.len() - out_start;
                        if n >= max_entries
                            || e.zxid > upto
                            || (n > 0 && bytes + e.data.len() > max_bytes)
                        {
                            break;
                        }
                        bytes += e.data.len();
                        out.push(e.clone());
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn z(e: u32, c: u32) -> Zxid {
        Zxid::new(Epoch(e), c)
    }

    fn read_all(log: &Log<crate::MemStorage>, after: Zxid) -> Vec<u32> {
        let mut out = Vec::new();
        log.read(after, z(9, 9), usize::MAX, usize::MAX, &mut out)
            .expect("a position of the log");
        out.iter().map(|e| e.zxid.counter()).collect()
    }

    /// Durable entries are kept in memory until handed out to be applied.
    /// The storage under this log is left empty on purpose: whatever a
    /// read takes from it is missing from the answer.
    #[test]
    fn durable_entries_are_read_from_memory_until_handed_out_to_apply() {
        let mut log =
            Log::new(crate::MemStorage::new(), None, Membership::default()).expect("an empty log");
        log.set_recent_max_bytes(1 << 20);
        for c in 1..=4 {
            log.append(Entry::command(z(1, c), Bytes::from(vec![c as u8; 10])));
        }
        let mut written = Vec::new();
        log.take_writes(1, &mut written);
        assert_eq!(written.len(), 4);
        log.persisted(1);
        assert_eq!(log.durable_last(), z(1, 4));
        assert_eq!(read_all(&log, Zxid::ZERO), [1, 2, 3, 4], "all from memory");

        // Handed out to apply: the storage serves them (and has nothing
        // here), the rest still comes from memory, and a read never skips
        // from the storage's part into memory's.
        log.applying(z(1, 2));
        assert_eq!(read_all(&log, Zxid::ZERO), Vec::<u32>::new());
        assert_eq!(read_all(&log, z(1, 2)), [3, 4]);

        // A new entry not yet durable follows the kept ones.
        log.append(Entry::command(z(1, 5), Bytes::from_static(b"e")));
        assert_eq!(read_all(&log, z(1, 2)), [3, 4, 5]);

        // Past the bound the oldest kept entries go first.
        log.set_recent_max_bytes(10);
        assert_eq!(read_all(&log, z(1, 3)), [4, 5]);
        assert_eq!(read_all(&log, z(1, 2)), Vec::<u32>::new());

        // A truncation drops kept entries above it.
        log.truncate_after(z(1, 3));
        assert_eq!(read_all(&log, z(1, 3)), Vec::<u32>::new());
        log.append(Entry::command(z(2, 1), Bytes::from_static(b"f")));
        assert_eq!(read_all(&log, z(1, 3)), [z(2, 1).counter()]);

        // With no bound, nothing is kept.
        let mut log =
            Log::new(crate::MemStorage::new(), None, Membership::default()).expect("an empty log");
        log.append(Entry::command(z(1, 1), Bytes::from_static(b"a")));
        log.take_writes(1, &mut written);
        log.persisted(1);
        assert_eq!(read_all(&log, Zxid::ZERO), Vec::<u32>::new());
    }

    #[test]
    fn index_navigates_runs() {
        let mut idx = LogIndex::default();
        for c in 1..=3 {
            idx.push(z(1, c));
        }
        for c in 1..=2 {
            idx.push(z(3, c));
        }
        assert!(idx.holds(z(1, 2)) && !idx.holds(z(2, 1)) && !idx.holds(z(1, 4)));
        assert_eq!(idx.next_after(Zxid::ZERO), Some(z(1, 1)));
        assert_eq!(idx.next_after(z(1, 3)), Some(z(3, 1)));
        assert_eq!(idx.next_after(z(2, 7)), Some(z(3, 1)));
        assert_eq!(idx.next_after(z(3, 2)), None);
        assert_eq!(idx.at_or_before(z(2, 9)), Some(z(1, 3)));
        assert_eq!(idx.prev_of(z(3, 1)), Some(z(1, 3)));
        assert_eq!(idx.back_n(z(3, 2), 2), Some(z(1, 3)));
        assert_eq!(idx.back_n(z(3, 2), 5), None);
        assert!(!idx.continues(z(3, 4)) && idx.continues(z(4, 1)) && !idx.continues(z(4, 2)));
        idx.truncate_after(z(1, 2));
        assert_eq!(idx.last(), Some(z(1, 2)));
        idx.truncate_prefix(z(1, 1));
        assert_eq!(idx.first(), Some(z(1, 2)));
        assert_eq!(idx.epoch_ends(), vec![z(1, 2)]);
    }
}
