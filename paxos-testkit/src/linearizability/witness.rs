//! The witness of a key found not linearizable: a window of its history
//! that still fails, shrunk by delta debugging.

use bytes::Bytes;

use super::history::{History, OpId, Outcome};
use super::prepare::{KeyOps, Role};
use super::report::{CheckConfig, Violation};
use super::search::{decide, SearchResult};

impl KeyOps {
    /// Builds the witness of a key found not linearizable; returns it and the
    /// steps spent.
    pub(super) fn witness(
        &self,
        history: &History,
        key: &Bytes,
        config: &CheckConfig,
    ) -> (Violation, u64) {
        let mut shrink = Shrink {
            ops: self,
            budget: config.max_witness_steps,
            max_steps: config.max_steps_per_key,
            max_cache_bytes: config.max_cache_bytes,
        };
        let n = self.indices.len();
        let invoked = |p: usize| history.ops[self.indices[p]].invoked_ns;
        let completed = |p: usize| match history.ops[self.indices[p]].outcome {
            Outcome::Completed { completed_ns, .. } => Some(completed_ns),
            Outcome::Unknown => None,
        };
        // The role of position p in the window from instant s to instant t:
        // completed within it, as recorded; completed before it, released
        // (of unknown outcome); pending at t, of unknown outcome; invoked
        // after t, left out.
        let window_role = |p: usize, s: u64, t: u64| match completed(p) {
            Some(c) if c < s => Role::Weak,
            Some(c) if c <= t => Role::Full,
            _ if invoked(p) <= t => Role::Weak,
            _ => Role::Drop,
        };
        let mut instants: Vec<u64> = (0..n).filter_map(completed).collect();
        instants.sort_unstable();
        instants.dedup();
        let Some(&last) = instants.last() else {
            // No completed operation: nothing can fail (not reached: such a
            // key is linearizable).
            return (
                Violation {
                    key: key.clone(),
                    core: Vec::new(),
                    writes_in_interval: Vec::new(),
                    writes_anytime: Vec::new(),
                    minimal: false,
                },
                0,
            );
        };
        let mut fails = |s: u64, t: u64| {
            let roles: Vec<Role> = (0..n).map(|p| window_role(p, s, t)).collect();
            shrink.fails(&roles) == Some(true)
        };

        // 1. The latest start: release everything completed before it. A
        // failing window still fails with an earlier start, so search from
        // the end with growing steps (a window of about twice the needed
        // size costs little), then by halves.
        let mut bad = instants.len() - 1;
        let good = if fails(instants[bad], last) {
            bad
        } else {
            let mut step = 1;
            let mut good = bad;
            // Bounded: `good` reaches 0 after about log2(len) probes.
            while good > 0 {
                bad = good;
                good = good.saturating_sub(step);
                step *= 2;
                if good > 0 && fails(instants[good], last) {
                    break;
                }
            }
            // Invariant: `good` fails (index 0 is the whole history, known
            // to fail), `bad` does not.
            while bad - good > 1 {
                let mid = good + (bad - good) / 2;
                if fails(instants[mid], last) {
                    good = mid;
                } else {
                    bad = mid;
                }
            }
            good
        };
        let start = instants[good];

        // 2. The earliest end: a failing window still fails with a later end
        // (operations completed after it are then pending or left out).
        let (mut lo, mut hi) = (good, instants.len() - 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if fails(start, instants[mid]) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let end = instants[hi];
        let mut roles: Vec<Role> = (0..n).map(|p| window_role(p, start, end)).collect();

        let mut minimal = false;
        if config.minimize_witness {
            // 2. Release operations from their recorded results: completed
            // writes then only take effect within their intervals.
            let core: Vec<usize> = (0..n)
                .filter(|&p| roles[p] == Role::Full && self.full[p].is_some_and(|o| o.known))
                .collect();
            let core_minimal = shrink.release(&mut roles, core, Role::Loose, false);
            // 3. Release those writes from their intervals too: they may
            // then take effect at any time after their invocation, or never.
            let bounded: Vec<usize> = (0..n).filter(|&p| roles[p] == Role::Loose).collect();
            let bounded_minimal = shrink.release(&mut roles, bounded, Role::Weak, true);
            minimal = core_minimal && bounded_minimal;
        }

        let view = self.view(|p| roles[p]);
        let mut witness = Violation {
            key: key.clone(),
            core: Vec::new(),
            writes_in_interval: Vec::new(),
            writes_anytime: Vec::new(),
            minimal,
        };
        for (p, op) in &view {
            let id = self.indices[*p];
            let entry = (OpId(id), history.ops[id].clone());
            match (roles[*p], op.known) {
                (Role::Full, true) => witness.core.push(entry),
                (_, true) => witness.writes_in_interval.push(entry),
                (_, false) => witness.writes_anytime.push(entry),
            }
        }
        for list in [
            &mut witness.core,
            &mut witness.writes_in_interval,
            &mut witness.writes_anytime,
        ] {
            list.sort_by_key(|(id, op)| (op.invoked_ns, *id));
        }
        (witness, config.max_witness_steps - shrink.budget)
    }
}

/// The searches of a witness, sharing one step budget.
struct Shrink<'a> {
    ops: &'a KeyOps,
    /// Steps left.
    budget: u64,
    max_steps: u64,
    max_cache_bytes: usize,
}

impl Shrink<'_> {
    /// Whether the view with these roles fails: `None` if undecided.
    fn fails(&mut self, roles: &[Role]) -> Option<bool> {
        if self.budget == 0 {
            return None;
        }
        let view = self.ops.view(|p| roles[p]);
        let out = decide(&view, self.max_steps.min(self.budget), self.max_cache_bytes);
        self.budget = self.budget.saturating_sub(out.steps);
        match out.result {
            SearchResult::NotLinearizable => Some(true),
            SearchResult::Linearizable => Some(false),
            SearchResult::OutOfBudget => None,
        }
    }

    /// Delta debugging: gives the positions of `set` the role `to`, a chunk
    /// at a time, keeping each change after which the view still fails
    /// (`roles` must fail on entry). Returns whether it ended with every
    /// single remaining position shown necessary (1-minimal). Releasing the
    /// whole set is tried only if `allow_empty`.
    fn release(
        &mut self,
        roles: &mut [Role],
        mut set: Vec<usize>,
        to: Role,
        allow_empty: bool,
    ) -> bool {
        let mut chunk = set.len().div_ceil(2).max(1);
        // Each pass shrinks the set or halves the chunk, and a pass with
        // chunks of one that shrinks nothing ends: the bound only guards it.
        for _ in 0..=(4 * roles.len() + 64) {
            if set.is_empty() {
                return true;
            }
            let mut shrunk = false;
            let mut undecided = false;
            let mut start = 0;
            while start < set.len() {
                let end = (start + chunk).min(set.len());
                if end - start == set.len() && !allow_empty {
                    start = end;
                    continue;
                }
                let mut trial = roles.to_vec();
                for &p in &set[start..end] {
                    trial[p] = to;
                }
                match self.fails(&trial) {
                    Some(true) => {
                        roles.copy_from_slice(&trial);
                        set.drain(start..end);
                        shrunk = true;
                    }
                    Some(false) => start = end,
                    None => {
                        undecided = true;
                        start = end;
                    }
                }
            }
            if undecided {
                return false;
            }
            if chunk == 1 && !shrunk {
                return true;
            }
            chunk = if shrunk {
                chunk.min(set.len().div_ceil(2)).max(1)
            } else {
                chunk.div_ceil(2)
            };
        }
        false
    }
}
