//! What a check answers: the verdict, its witness and the work it took,
//! and the bounds it ran within.

use bytes::Bytes;
use std::fmt;

use super::history::{OpId, Operation, ShowValue};

/// Bounds of a [`check`](super::check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// Search steps allowed per key before giving up ([`Verdict::Unknown`]).
    pub max_steps_per_key: u64,
    /// Memory allowed per search for memoized configurations, in bytes (an
    /// estimate: each configuration's compacted linearized set plus a fixed
    /// overhead).
    pub max_cache_bytes: usize,
    /// Whether to shrink the witness of a violation (steps 2 and 3 of the
    /// [witness](super#the-witness) search; the window of step 1 is always
    /// found).
    pub minimize_witness: bool,
    /// Search steps allowed for building the witness, over all its searches.
    pub max_witness_steps: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            max_steps_per_key: 5_000_000,
            max_cache_bytes: 512 << 20,
            minimize_witness: true,
            max_witness_steps: 5_000_000,
        }
    }
}

/// Why a key's history is not linearizable: a small set of operations that
/// cannot all have returned what they did (the [witness](super#the-witness)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key.
    pub key: Bytes,
    /// The operations whose recorded results cannot all hold together, in
    /// order of invocation.
    pub core: Vec<(OpId, Operation)>,
    /// Other completed writes on the key that the core depends on, each taken
    /// to take effect between its invocation and its completion, whatever it
    /// returned.
    pub writes_in_interval: Vec<(OpId, Operation)>,
    /// Other writes on the key that could produce a value the core depends
    /// on, each allowed to take effect at any instant after its invocation,
    /// or never, whatever it returned.
    pub writes_anytime: Vec<(OpId, Operation)>,
    /// Whether the witness was shown minimal: releasing any one core
    /// operation from its result (a read dropped), or any one write of
    /// [`writes_in_interval`](Violation::writes_in_interval) from its
    /// interval, makes it linearizable. False if minimization was off or ran
    /// out of steps.
    pub minimal: bool,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {} is not linearizable; {} cannot have returned what {}:",
            ShowValue(Some(&self.key)),
            if self.core.len() == 1 {
                "this operation".to_string()
            } else {
                format!("these {} operations", self.core.len())
            },
            if self.core.len() == 1 {
                "it did"
            } else {
                "they did"
            }
        )?;
        for (id, op) in &self.core {
            write!(f, "\n  {id} {op}")?;
        }
        if !self.writes_in_interval.is_empty() {
            write!(
                f,
                "\ngiven that these writes took effect within their intervals (whatever they returned):"
            )?;
            for (id, op) in &self.writes_in_interval {
                write!(f, "\n  {id} {op}")?;
            }
        }
        if !self.writes_anytime.is_empty() {
            write!(
                f,
                "\neven if these writes took effect at any time after their invocation, or never:"
            )?;
            for (id, op) in &self.writes_anytime {
                write!(f, "\n  {id} {op}")?;
            }
        }
        if !self.minimal {
            write!(f, "\n(the witness may not be minimal)")?;
        }
        Ok(())
    }
}

/// The answer of [`check`](super::check).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Some order explains every key's history.
    Linearizable,
    /// No order explains this key's history.
    NotLinearizable(Box<Violation>),
    /// The search hit a bound before deciding this key (and no other key was
    /// found not linearizable).
    Unknown {
        /// The key that could not be decided.
        key: Bytes,
        /// The key's operation count.
        operations: usize,
        /// Steps spent on it.
        steps: u64,
    },
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("linearizable"),
            Verdict::NotLinearizable(v) => write!(f, "{v}"),
            Verdict::Unknown {
                key,
                operations,
                steps,
            } => write!(
                f,
                "undecided: key {} ({operations} operations) not decided within the bounds ({steps} steps spent)",
                ShowValue(Some(key))
            ),
        }
    }
}

/// A [`check`](super::check)'s verdict and the work it took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The answer.
    pub verdict: Verdict,
    /// Keys checked (all of them, unless one was not linearizable: the check
    /// stops at the first such key).
    pub keys_checked: usize,
    /// Search steps spent deciding, over the keys checked.
    pub steps: u64,
    /// Search steps spent building the witness.
    pub witness_steps: u64,
}
