//! Per-key preparation: a key's operations interned into what the search
//! sees (a precondition and an effect on a small value), and the views of
//! them that the search and the witness run on.

use bytes::Bytes;
use std::collections::{HashMap, HashSet};

use super::history::{Command, History, Outcome, Output};

/// Interned value: 0 is "absent", `n > 0` is the `n`-th distinct value.
pub(super) type Val = u32;
pub(super) const ABSENT: Val = 0;

/// What must hold of the value for an operation to take effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pre {
    /// Nothing.
    Any,
    /// The value must be exactly this.
    Equals(Val),
    /// No value works (the recorded result contradicts itself).
    Never,
}

/// What an operation does to the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Eff {
    Keep,
    Set(Val),
    /// Set `new` if the value is `expected` (compare-and-set of unknown outcome).
    CasSet {
        expected: Val,
        new: Val,
    },
}

/// One operation as the search sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct SearchOp {
    pub(super) pre: Pre,
    pub(super) eff: Eff,
    pub(super) invoked_ns: u64,
    /// Completion instant; `u64::MAX` when unknown.
    pub(super) completed_ns: u64,
    /// Whether it completed (it must be linearized) or is of unknown outcome
    /// (it may be linearized at the end, which is the same as never).
    pub(super) known: bool,
}

impl SearchOp {
    /// Whether the operation's outcome depends on the value it finds.
    pub(super) fn observes(&self) -> bool {
        matches!(self.pre, Pre::Equals(_)) || matches!(self.eff, Eff::CasSet { .. })
    }

    /// The value after the operation from `value`, if its result is
    /// accepted.
    pub(super) fn apply(&self, value: Val) -> Option<Val> {
        match self.pre {
            Pre::Any => {}
            Pre::Equals(v) if v == value => {}
            Pre::Equals(_) | Pre::Never => return None,
        }
        Some(match self.eff {
            Eff::Keep => value,
            Eff::Set(v) => v,
            Eff::CasSet { expected, new } => {
                if value == expected {
                    new
                } else {
                    value
                }
            }
        })
    }
}

/// How an operation enters one search (a "view" of the key's history), from
/// the most to the least constrained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    /// As recorded.
    Full,
    /// A completed write that takes effect within its interval, whatever it
    /// returned; a read is left out. (An operation of unknown outcome is
    /// [`Role::Weak`] instead.)
    Loose,
    /// A write of unknown outcome; a read is left out.
    Weak,
    /// Left out.
    Drop,
}

/// A key's operations, interned once.
pub(super) struct KeyOps {
    /// Indices into the history, in history order.
    pub(super) indices: Vec<usize>,
    /// The operation as recorded (`None`: constrains nothing, an unknown get).
    pub(super) full: Vec<Option<SearchOp>>,
    /// The operation as a [`Role::Loose`] write (`None` for a read).
    pub(super) loose: Vec<Option<SearchOp>>,
    /// The operation as a write of unknown outcome (`None` for a read).
    pub(super) weak: Vec<Option<SearchOp>>,
}

impl KeyOps {
    pub(super) fn new(history: &History, indices: Vec<usize>) -> KeyOps {
        let mut values: HashMap<Bytes, Val> = HashMap::new();
        let mut intern = |v: Option<&Bytes>| -> Val {
            match v {
                None => ABSENT,
                Some(b) => {
                    let next = Val::try_from(values.len() + 1).unwrap_or(Val::MAX);
                    *values.entry(b.clone()).or_insert(next)
                }
            }
        };
        let mut full = Vec::with_capacity(indices.len());
        let mut loose = Vec::with_capacity(indices.len());
        let mut weak = Vec::with_capacity(indices.len());
        for &i in &indices {
            let op = &history.ops[i];
            let eff = match &op.command {
                Command::Get => Eff::Keep,
                Command::Put { value } => Eff::Set(intern(Some(value))),
                Command::Delete => Eff::Set(ABSENT),
                Command::Cas { expected, new } => Eff::CasSet {
                    expected: intern(expected.as_ref()),
                    new: intern(Some(new)),
                },
            };
            let released = SearchOp {
                pre: Pre::Any,
                eff,
                invoked_ns: op.invoked_ns,
                completed_ns: u64::MAX,
                known: false,
            };
            let released = (eff != Eff::Keep).then_some(released);
            weak.push(released);
            loose.push(match &op.outcome {
                Outcome::Completed { completed_ns, .. } => released.map(|o| SearchOp {
                    completed_ns: *completed_ns,
                    known: true,
                    ..o
                }),
                Outcome::Unknown => released,
            });
            let recorded = match &op.outcome {
                Outcome::Unknown => released,
                Outcome::Completed {
                    completed_ns,
                    output,
                } => {
                    let (pre, eff) = match (eff, output) {
                        (Eff::Keep, Output::Read(v)) => {
                            (Pre::Equals(intern(v.as_ref())), Eff::Keep)
                        }
                        (Eff::Set(v), Output::Written { previous }) => {
                            (Pre::Equals(intern(previous.as_ref())), Eff::Set(v))
                        }
                        (Eff::Set(v), Output::Acknowledged) => (Pre::Any, Eff::Set(v)),
                        (Eff::CasSet { expected, new }, Output::Acknowledged) => {
                            (Pre::Equals(expected), Eff::Set(new))
                        }
                        (Eff::CasSet { expected, new }, Output::Cas { swapped, current }) => {
                            let current = intern(current.as_ref());
                            match (*swapped, current == expected) {
                                (true, true) => (Pre::Equals(current), Eff::Set(new)),
                                (false, false) => (Pre::Equals(current), Eff::Keep),
                                // Swapped although the value found differs
                                // from the expected one, or the reverse.
                                _ => (Pre::Never, Eff::Keep),
                            }
                        }
                        // Histories are validated, so no other pair occurs;
                        // if one did, no value would explain it.
                        _ => (Pre::Never, Eff::Keep),
                    };
                    Some(SearchOp {
                        pre,
                        eff,
                        invoked_ns: op.invoked_ns,
                        completed_ns: *completed_ns,
                        known: true,
                    })
                }
            };
            full.push(recorded);
        }
        KeyOps {
            indices,
            full,
            loose,
            weak,
        }
    }

    /// The operations of a view (position `p` of `indices` has role
    /// `role(p)`), without the writes of unknown outcome that cannot matter,
    /// with their positions.
    pub(super) fn view(&self, role: impl Fn(usize) -> Role) -> Vec<(usize, SearchOp)> {
        let mut ops: Vec<(usize, SearchOp)> = (0..self.indices.len())
            .filter_map(|p| match role(p) {
                Role::Full => self.full[p].map(|o| (p, o)),
                Role::Loose => self.loose[p].map(|o| (p, o)),
                Role::Weak => self.weak[p].map(|o| (p, o)),
                Role::Drop => None,
            })
            .collect();
        prune_unobservable(&mut ops);
        ops
    }
}

/// Removes the operations of unknown outcome that no operation of `ops`
/// could observe: a write whose resulting value is never required by the
/// precondition of a completed operation, directly or through a chain of
/// compare-and-sets whose result is not constrained (of unknown outcome, or
/// released). Any linearization that used such a write stays one without
/// it: until the next unconditional write the value stays outside the
/// required set (a compare-and-set can only move it to another value outside
/// it), so no operation with a precondition runs there, and that write
/// erases the difference. The verdict does not change.
fn prune_unobservable(ops: &mut Vec<(usize, SearchOp)>) {
    let mut needed: HashSet<Val> = ops
        .iter()
        .filter_map(|(_, o)| match o.pre {
            Pre::Equals(v) => Some(v),
            Pre::Any | Pre::Never => None,
        })
        .collect();
    // Fixed point: a compare-and-set that may produce a needed value makes
    // its expected value needed too. Each round adds a value or stops, so at
    // most one round per operation.
    for _ in 0..=ops.len() {
        let mut grew = false;
        for (_, o) in ops.iter() {
            if let Eff::CasSet { expected, new } = o.eff {
                if needed.contains(&new) && needed.insert(expected) {
                    grew = true;
                }
            }
        }
        if !grew {
            break;
        }
    }
    ops.retain(|(_, o)| {
        o.known
            || match o.eff {
                Eff::Keep => false,
                Eff::Set(v) => needed.contains(&v),
                Eff::CasSet { new, .. } => needed.contains(&new),
            }
    });
}
