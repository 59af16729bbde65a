//! A linearizability checker for histories of a key-value store.
//!
//! A [`History`] is what a test observed from the outside: every operation
//! ([`Operation`]) with the key it touched, what it asked ([`Command`]), when
//! it was invoked, and either when it completed and what it returned
//! ([`Output`]) or that its outcome is unknown (the call timed out or failed
//! in a way that does not say whether it took effect). [`check`] decides
//! whether some total order of the operations explains every result and
//! respects real time; [`Recorder`] builds a history from concurrent tasks.
//!
//! # The model
//!
//! The store is a map from keys to values, every key initially absent. The
//! operations and the results they may return are:
//!
//! | command | effect on the key's value `s` | results accepted |
//! |---|---|---|
//! | [`Command::Get`] | none | [`Output::Read`]`(v)` with `v == s` |
//! | [`Command::Put`]`{value}` | `s := Some(value)` | [`Output::Written`]`{previous}` with `previous == s`, or [`Output::Acknowledged`] |
//! | [`Command::Delete`] | `s := None` | [`Output::Written`]`{previous}` with `previous == s`, or [`Output::Acknowledged`] |
//! | [`Command::Cas`]`{expected, new}` | if `s == expected` then `s := Some(new)` | [`Output::Cas`]`{swapped, current}` with `current == s` and `swapped == (s == expected)`, or [`Output::Acknowledged`] meaning it swapped |
//!
//! A history is **linearizable** if there is a total order of its operations
//! (each operation "takes effect" at one instant) such that:
//!
//! - an operation that completed takes effect between its invocation and its
//!   completion: if `a` completed strictly before `b` was invoked, `a` comes
//!   first (two operations whose instants are equal count as concurrent);
//! - every completed operation returned what the sequential model returns at
//!   its place in the order;
//! - an operation with an unknown outcome ([`Outcome::Unknown`]) either takes
//!   effect at some instant after its invocation (with no upper bound, and
//!   whatever it would have returned is accepted) or never takes effect. A
//!   [`Command::Get`] with an unknown outcome therefore constrains nothing and
//!   is ignored.
//!
//! Instants are `u64` nanoseconds from any common origin. For the verdict to
//! mean something, an operation's recorded interval must contain its real
//! execution: record the invocation before sending and the completion after
//! the answer arrived (what [`Recorder`] does). A wider interval is always
//! safe: it can hide a violation but never invent one.
//!
//! # The search
//!
//! Every operation touches one key, so the history is split by key and each
//! key is checked alone (linearizability is local: a history is linearizable
//! if and only if its restriction to every object is). Per key, the checker
//! runs the Wing & Gong search with Lowe's just-in-time linearization: walk
//! the operations in order of invocation, linearize any operation that is
//! invoked before the earliest completion of the operations not yet
//! linearized and whose result the model accepts, backtrack when that earliest
//! completion is reached, and remember every (set of linearized operations,
//! value) configuration already explored so it is never explored twice
//! (the memoization of P. Lowe, "Testing for linearizability", and of the
//! porcupine and knossos checkers).
//!
//! Operations of unknown outcome are what makes the search large (each may be
//! linearized anywhere after its invocation), so three reductions apply to
//! them, each removing only linearizations that have an equivalent one left:
//! a write whose resulting value no operation could ever observe is dropped;
//! among those of the same effect not yet linearized, only the earliest
//! invoked is a candidate; and one is linearized only right before an
//! operation that observes the value (a read, a write reporting its previous
//! value, a compare-and-set). If the exact search runs out of steps, a
//! relaxed one, where operations of unknown outcome may be used any number of
//! times, gets the remaining steps: it is much smaller, and a history it
//! refutes is refuted.
//!
//! The search is exponential in the worst case, so it is bounded: at most
//! [`CheckConfig::max_steps_per_key`] steps (one step examines one entry of
//! the invocation/completion list) and [`CheckConfig::max_cache_bytes`] of
//! memoized configurations per key. When a bound is hit the verdict is
//! [`Verdict::Unknown`], never a guess. Histories as a key-value test
//! records them (every written value unique, a handful of clients, some
//! calls of unknown outcome) are decided quickly: thousands of operations
//! per key in well under the default bounds, refutations included (the
//! unit tests check 2000 operations, one in twenty of unknown outcome).
//! Many operations of unknown outcome writing few distinct values, under
//! high concurrency, are the hard case: refuting such a history can exhaust
//! the bounds.
//!
//! # The witness
//!
//! When a key is not linearizable, [`Violation`] explains why with a small
//! set of operations. Releasing an operation makes it less constraining: a
//! completed write released from its result takes effect within its interval
//! whatever it returned, released further it may take effect at any instant
//! after its invocation or never, and a released read is dropped. A history
//! that fails with some operations released fails as recorded too. The
//! witness is found by:
//!
//! 1. cutting the key's history to a window `[S, T]` of completion instants
//!    that still fails: operations completed before `S` are released to
//!    unknown outcome (reads dropped), those completed within it keep their
//!    results, those invoked by `T` but not completed by then become of
//!    unknown outcome, later ones are dropped (a failure of the window
//!    implies a failure of the whole). `S` is the latest start that fails,
//!    found by steps doubling back from the end then by halves (so the cost
//!    follows the size of the window, not of the history); `T` the earliest
//!    end that fails with it;
//! 2. releasing operations from their results by delta debugging (a chunk at
//!    a time, keeping each release after which the window still fails): what
//!    keeps its result is the *core* ([`Violation::core`]);
//! 3. releasing the released writes from their intervals the same way: those
//!    that must keep theirs are [`Violation::writes_in_interval`], and the
//!    writes of unknown outcome that could produce a value the core depends
//!    on are [`Violation::writes_anytime`] (the others cannot matter).
//!
//! When [`Violation::minimal`] is true, releasing any one operation of the
//! core, or any one write from its interval, makes the witness linearizable.
//! A stale read, for example, is explained by the read alone (core) and the
//! write it missed (within its interval).
//!
//! ```
//! use bytes::Bytes;
//! use paxos_testkit::linearizability::{check, CheckConfig, Command, History, Operation, Outcome, Output, Verdict};
//!
//! let key = Bytes::from_static(b"k");
//! let mut h = History::new();
//! // Client 1 writes "a" between t=0 and t=10; client 2 then reads nothing.
//! h.push(Operation::completed(1, key.clone(), Command::Put { value: Bytes::from_static(b"a") }, 0, 10, Output::Acknowledged)).unwrap();
//! h.push(Operation::completed(2, key.clone(), Command::Get, 20, 30, Output::Read(None))).unwrap();
//! let report = check(&h, &CheckConfig::default());
//! match &report.verdict {
//!     Verdict::NotLinearizable(v) => {
//!         assert_eq!((v.core.len(), v.writes_in_interval.len()), (1, 1), "{v}");
//!     }
//!     other => panic!("a stale read must be caught: {other:?}"),
//! }
//! ```

// What a test records (history, recorder) and what a check answers (report);
// then the checker in its three steps: a key's operations turned into what
// the search sees (prepare), the search (search), and, for a key that fails,
// the small witness (witness).
mod history;
mod prepare;
mod recorder;
mod report;
mod search;
mod witness;

pub use history::{Command, History, HistoryError, OpId, Operation, Outcome, Output};
pub use recorder::{Invocation, Recorder};
pub use report::{CheckConfig, Report, Verdict, Violation};

use bytes::Bytes;
use std::collections::BTreeMap;

use prepare::{KeyOps, Role};
use search::{decide, SearchResult};

/// Checks `history` for linearizability against the key-value model of the
/// [module documentation](self#the-model). Keys are checked in byte order and
/// the check stops at the first key found not linearizable.
pub fn check(history: &History, config: &CheckConfig) -> Report {
    let mut by_key: BTreeMap<&Bytes, Vec<usize>> = BTreeMap::new();
    for (i, op) in history.ops.iter().enumerate() {
        by_key.entry(&op.key).or_default().push(i);
    }
    let mut report = Report {
        verdict: Verdict::Linearizable,
        keys_checked: 0,
        steps: 0,
        witness_steps: 0,
    };
    let mut undecided = None;
    for (key, indices) in by_key {
        report.keys_checked += 1;
        let key_ops = KeyOps::new(history, indices);
        let view = key_ops.view(|_| Role::Full);
        let outcome = decide(&view, config.max_steps_per_key, config.max_cache_bytes);
        report.steps += outcome.steps;
        tracing::debug!(
            key = ?key,
            ops = key_ops.indices.len(),
            steps = outcome.steps,
            result = ?outcome.result,
            "linearizability of one key"
        );
        match outcome.result {
            SearchResult::Linearizable => {}
            SearchResult::OutOfBudget => {
                if undecided.is_none() {
                    undecided = Some(Verdict::Unknown {
                        key: key.clone(),
                        operations: key_ops.indices.len(),
                        steps: outcome.steps,
                    });
                }
            }
            SearchResult::NotLinearizable => {
                let (violation, steps) = key_ops.witness(history, key, config);
                report.witness_steps = steps;
                report.verdict = Verdict::NotLinearizable(Box::new(violation));
                return report;
            }
        }
    }
    if let Some(u) = undecided {
        report.verdict = u;
    }
    report
}

#[cfg(test)]
mod tests;
