//! The search: Wing & Gong with Lowe's just-in-time linearization and
//! memoized configurations, exact first and relaxed when out of steps.

use std::collections::{HashMap, HashSet};

use super::prepare::{Eff, SearchOp, Val, ABSENT};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SearchResult {
    Linearizable,
    NotLinearizable,
    OutOfBudget,
}

pub(super) struct SearchOutcome {
    pub(super) result: SearchResult,
    pub(super) steps: u64,
}

const NIL: usize = usize::MAX;

/// Decides a view within `max_steps`. The exact search comes first; if it
/// runs out of steps while operations of unknown outcome are present (they
/// are what multiplies the configurations), the relaxed search, where they
/// are reusable and which is much smaller, gets the rest of the steps: its
/// "not linearizable" is final, its "linearizable" decides nothing.
pub(super) fn decide(
    view: &[(usize, SearchOp)],
    max_steps: u64,
    max_cache_bytes: usize,
) -> SearchOutcome {
    if view.iter().all(|(_, o)| o.known) {
        return search(view, false, max_steps, max_cache_bytes);
    }
    let exact = search(view, false, max_steps / 2, max_cache_bytes);
    if exact.result != SearchResult::OutOfBudget {
        return exact;
    }
    let relaxed = search(
        view,
        true,
        max_steps.saturating_sub(exact.steps),
        max_cache_bytes,
    );
    SearchOutcome {
        result: match relaxed.result {
            SearchResult::NotLinearizable => SearchResult::NotLinearizable,
            SearchResult::Linearizable | SearchResult::OutOfBudget => SearchResult::OutOfBudget,
        },
        steps: exact.steps + relaxed.steps,
    }
}

/// The Wing & Gong / Lowe search over one key's operations.
///
/// Entries `2i` and `2i + 1` are the invocation and the completion of
/// operation `i`, in a doubly linked list sorted by instant (invocations
/// before completions at equal instants, so equal instants are concurrent).
///
/// Two reductions keep operations of unknown outcome, which may be
/// linearized anywhere after their invocation, from multiplying the
/// configurations. Both only remove linearizations that have an equivalent
/// one left:
///
/// - among those not yet linearized that have the same effect, only the
///   earliest invoked is a candidate (swapping two of them keeps a
///   linearization valid: the earlier one can go wherever the later one
///   went);
/// - one is linearized only right before an operation that observes the
///   value (a precondition, or a compare-and-set): one followed by a blind
///   write, or by nothing, changes nothing anyone sees and can be left out.
///
/// With `reuse_unknown`, an operation of unknown outcome may be linearized
/// any number of times (it stays a candidate after use): a relaxation whose
/// configurations do not count the unknown operations used, so it is much
/// smaller. A history it finds not linearizable is not linearizable; one it
/// finds linearizable may not be.
fn search(
    view: &[(usize, SearchOp)],
    reuse_unknown: bool,
    max_steps: u64,
    max_cache_bytes: usize,
) -> SearchOutcome {
    let ops: Vec<SearchOp> = view.iter().map(|(_, o)| *o).collect();
    let n = ops.len();
    let mut remaining_known = ops.iter().filter(|o| o.known).count();
    let mut steps = 0u64;
    if remaining_known == 0 {
        return SearchOutcome {
            result: SearchResult::Linearizable,
            steps,
        };
    }
    // Sort entries: by instant; invocations first; unknown completions last.
    let mut order: Vec<usize> = (0..2 * n).collect();
    order.sort_by_key(|&e| {
        let o = &ops[e / 2];
        if e % 2 == 0 {
            (o.invoked_ns, 0u8, e)
        } else {
            (o.completed_ns, if o.known { 1 } else { 2 }, e)
        }
    });
    // Linked list with a head sentinel at index 2n.
    let head = 2 * n;
    let mut next = vec![NIL; 2 * n + 1];
    let mut prev = vec![NIL; 2 * n + 1];
    // Operations of unknown outcome by effect, in order of invocation: the
    // class of each, its rank in the class, and how many of each class are
    // linearized (always the first ones).
    let mut by_effect: HashMap<Eff, Vec<usize>> = HashMap::new();
    for (i, o) in ops.iter().enumerate().filter(|(_, o)| !o.known) {
        by_effect.entry(o.eff).or_default().push(i);
    }
    let mut class = vec![usize::MAX; n];
    let mut rank = vec![0usize; n];
    for (c, members) in by_effect.values_mut().enumerate() {
        members.sort_by_key(|&i| (ops[i].invoked_ns, i));
        for (r, &i) in members.iter().enumerate() {
            class[i] = c;
            rank[i] = r;
        }
    }
    let mut used = vec![0usize; by_effect.len()];
    // When reusable, the earliest of a class can stand for all of it.
    let mut last = head;
    for &e in order
        .iter()
        .filter(|&&e| ops[e / 2].known || !reuse_unknown || rank[e / 2] == 0)
    {
        next[last] = e;
        prev[e] = last;
        last = e;
    }

    // Bit of each operation in the linearized set: completed operations
    // first, in invocation order, then those of unknown outcome. The set is
    // then mostly a run of full words (everything well before the frontier)
    // and a short tail, which is what a configuration stores.
    let mut bit = vec![0usize; n];
    let mut by_invocation: Vec<usize> = (0..n).collect();
    by_invocation.sort_by_key(|&i| (!ops[i].known, ops[i].invoked_ns, i));
    for (b, &i) in by_invocation.iter().enumerate() {
        bit[i] = b;
    }
    let mut linearized = Bitset::new(n);
    // A configuration: the linearized set, the value, and whether the last
    // operation linearized was of unknown outcome (the next must observe).
    let mut cache: HashSet<(Box<[u64]>, Val, bool)> = HashSet::new();
    let mut cache_bytes = 0usize;
    let mut stack: Vec<(usize, Val, bool)> = Vec::new();
    let mut value = ABSENT;
    let mut must_observe = false;
    let mut entry = next[head];

    loop {
        if remaining_known == 0 {
            return SearchOutcome {
                result: SearchResult::Linearizable,
                steps,
            };
        }
        if steps >= max_steps || cache_bytes >= max_cache_bytes {
            return SearchOutcome {
                result: SearchResult::OutOfBudget,
                steps,
            };
        }
        steps += 1;
        if entry != NIL && entry % 2 == 0 {
            // An invocation: try to linearize its operation here.
            let i = entry / 2;
            let op = &ops[i];
            let candidate = (op.known || reuse_unknown || rank[i] == used[class[i]])
                && (!must_observe || op.observes());
            if let Some(after) = op.apply(value).filter(|_| candidate) {
                // A reusable operation stays out of the set and in the list.
                let counted = op.known || !reuse_unknown;
                if counted {
                    linearized.set(bit[i]);
                }
                let observe_next = !op.known;
                let key = linearized.compact();
                let key_bytes = key.len() * 8 + CACHE_ENTRY_OVERHEAD_BYTES;
                if cache.insert((key, after, observe_next)) {
                    cache_bytes += key_bytes;
                    stack.push((i, value, must_observe));
                    value = after;
                    must_observe = observe_next;
                    if counted {
                        lift(&mut next, &mut prev, i);
                        if op.known {
                            remaining_known -= 1;
                        } else {
                            used[class[i]] += 1;
                        }
                    }
                    entry = next[head];
                    continue;
                }
                if counted {
                    linearized.clear(bit[i]);
                }
            }
            entry = next[entry];
        } else {
            // A completion of an operation not yet linearized (or, which
            // cannot happen while completed operations remain, the end of the
            // list): undo the last choice and try the next candidate.
            debug_assert!(
                entry != NIL,
                "the list ends with a completion while completed operations remain"
            );
            let Some((i, before, observe_before)) = stack.pop() else {
                return SearchOutcome {
                    result: SearchResult::NotLinearizable,
                    steps,
                };
            };
            value = before;
            must_observe = observe_before;
            if ops[i].known || !reuse_unknown {
                linearized.clear(bit[i]);
                unlift(&mut next, &mut prev, i);
                if ops[i].known {
                    remaining_known += 1;
                } else {
                    used[class[i]] -= 1;
                }
            }
            entry = next[2 * i];
        }
    }
}

/// Bytes a memoized configuration costs besides its set's words (the value,
/// the flag, the box and the hash table's slot): an estimate.
const CACHE_ENTRY_OVERHEAD_BYTES: usize = 48;

/// The set of linearized operations.
struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    fn new(bits: usize) -> Bitset {
        Bitset {
            words: vec![0; bits.div_ceil(64)],
        }
    }

    fn set(&mut self, b: usize) {
        self.words[b / 64] |= 1 << (b % 64);
    }

    fn clear(&mut self, b: usize) {
        self.words[b / 64] &= !(1 << (b % 64));
    }

    /// An encoding equal for equal sets: the number of leading full words,
    /// then the words from there to the last non-zero one.
    fn compact(&self) -> Box<[u64]> {
        let full = self.words.iter().take_while(|&&w| w == u64::MAX).count();
        let end = self
            .words
            .iter()
            .rposition(|&w| w != 0)
            .map_or(0, |p| p + 1);
        let tail = self.words.get(full..end.max(full)).unwrap_or(&[]);
        let mut key = Vec::with_capacity(1 + tail.len());
        key.push(full as u64);
        key.extend_from_slice(tail);
        key.into_boxed_slice()
    }
}

/// Takes operation `i`'s two entries out of the list.
fn lift(next: &mut [usize], prev: &mut [usize], i: usize) {
    for e in [2 * i, 2 * i + 1] {
        let (p, n) = (prev[e], next[e]);
        next[p] = n;
        if n != NIL {
            prev[n] = p;
        }
    }
}

/// Puts operation `i`'s two entries back (the reverse of [`lift`]).
fn unlift(next: &mut [usize], prev: &mut [usize], i: usize) {
    for e in [2 * i + 1, 2 * i] {
        let (p, n) = (prev[e], next[e]);
        next[p] = e;
        if n != NIL {
            prev[n] = e;
        }
    }
}
