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

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Instant;

/// The index of an operation in its [`History`] (the order of
/// [`History::push`] calls, starting at 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What an operation asked of its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Read the key's value.
    Get,
    /// Set the key to `value`.
    Put {
        /// The value written.
        value: Bytes,
    },
    /// Remove the key.
    Delete,
    /// Set the key to `new` if its value is `expected` (`None`: if absent).
    Cas {
        /// The value the key must hold for the swap.
        expected: Option<Bytes>,
        /// The value written if it swaps.
        new: Bytes,
    },
}

/// What a completed operation returned. Which outputs fit which command is in
/// the [module documentation](self#the-model).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A [`Command::Get`] read this value (`None`: absent).
    Read(Option<Bytes>),
    /// A [`Command::Put`] or [`Command::Delete`] took effect and reported the
    /// value it replaced (`None`: the key was absent).
    Written {
        /// The value before the write.
        previous: Option<Bytes>,
    },
    /// A write took effect and nothing more is known: a put or delete whose
    /// previous value was not reported, or a compare-and-set that swapped.
    Acknowledged,
    /// A [`Command::Cas`] completed.
    Cas {
        /// Whether it replaced the value.
        swapped: bool,
        /// The value it found (`None`: absent).
        current: Option<Bytes>,
    },
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It completed at `completed_ns` and returned `output`.
    Completed {
        /// Completion instant, nanoseconds from the history's origin.
        completed_ns: u64,
        /// What it returned.
        output: Output,
    },
    /// The caller does not know whether it took effect (timeout, lost
    /// connection, error after sending): it may take effect at any instant
    /// after its invocation, or never.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client (process) that issued it; shown in explanations only.
    pub client: u64,
    /// The key it touched.
    pub key: Bytes,
    /// What it asked.
    pub command: Command,
    /// Invocation instant, nanoseconds from the history's origin.
    pub invoked_ns: u64,
    /// How it ended.
    pub outcome: Outcome,
}

impl Operation {
    /// An operation that completed with `output`.
    pub fn completed(
        client: u64,
        key: Bytes,
        command: Command,
        invoked_ns: u64,
        completed_ns: u64,
        output: Output,
    ) -> Operation {
        Operation {
            client,
            key,
            command,
            invoked_ns,
            outcome: Outcome::Completed {
                completed_ns,
                output,
            },
        }
    }

    /// An operation whose outcome is unknown.
    pub fn unknown(client: u64, key: Bytes, command: Command, invoked_ns: u64) -> Operation {
        Operation {
            client,
            key,
            command,
            invoked_ns,
            outcome: Outcome::Unknown,
        }
    }

    /// Checks that the output fits the command and that the operation does
    /// not complete before it is invoked.
    fn validate(&self, id: OpId) -> Result<(), HistoryError> {
        let Outcome::Completed {
            completed_ns,
            output,
        } = &self.outcome
        else {
            return Ok(());
        };
        if *completed_ns < self.invoked_ns {
            return Err(HistoryError::CompletedBeforeInvoked {
                op: id,
                invoked_ns: self.invoked_ns,
                completed_ns: *completed_ns,
            });
        }
        let fits = matches!(
            (&self.command, output),
            (Command::Get, Output::Read(_))
                | (
                    Command::Put { .. } | Command::Delete,
                    Output::Written { .. } | Output::Acknowledged
                )
                | (
                    Command::Cas { .. },
                    Output::Cas { .. } | Output::Acknowledged
                )
        );
        if !fits {
            return Err(HistoryError::OutputMismatch {
                op: id,
                command: self.command.name(),
                output: output.name(),
            });
        }
        Ok(())
    }
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Get => "get",
            Command::Put { .. } => "put",
            Command::Delete => "delete",
            Command::Cas { .. } => "cas",
        }
    }
}

impl Output {
    fn name(&self) -> &'static str {
        match self {
            Output::Read(_) => "read",
            Output::Written { .. } => "written",
            Output::Acknowledged => "acknowledged",
            Output::Cas { .. } => "cas",
        }
    }
}

/// Shows a value as text when it is printable ASCII, else as escaped bytes.
struct ShowValue<'a>(Option<&'a Bytes>);

impl fmt::Display for ShowValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("absent"),
            Some(b) if b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') => {
                write!(f, "{:?}", String::from_utf8_lossy(b))
            }
            Some(b) => write!(f, "{b:?}"),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client)?;
        match &self.command {
            Command::Get => write!(f, "get")?,
            Command::Put { value } => write!(f, "put {}", ShowValue(Some(value)))?,
            Command::Delete => write!(f, "delete")?,
            Command::Cas { expected, new } => write!(
                f,
                "cas {} -> {}",
                ShowValue(expected.as_ref()),
                ShowValue(Some(new))
            )?,
        }
        match &self.outcome {
            Outcome::Unknown => write!(f, " [{} ns .. ?] outcome unknown", self.invoked_ns),
            Outcome::Completed {
                completed_ns,
                output,
            } => {
                write!(f, " [{} ns .. {} ns] ", self.invoked_ns, completed_ns)?;
                match output {
                    Output::Read(v) => write!(f, "read {}", ShowValue(v.as_ref())),
                    Output::Written { previous } => {
                        write!(f, "ok, previous {}", ShowValue(previous.as_ref()))
                    }
                    Output::Acknowledged => write!(f, "ok"),
                    Output::Cas { swapped, current } => write!(
                        f,
                        "{}, found {}",
                        if *swapped { "swapped" } else { "not swapped" },
                        ShowValue(current.as_ref())
                    ),
                }
            }
        }
    }
}

/// A history that cannot be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The operation's completion instant is before its invocation instant.
    #[error(
        "operation {op} completes at {completed_ns} ns, before its invocation at {invoked_ns} ns"
    )]
    CompletedBeforeInvoked {
        /// The operation.
        op: OpId,
        /// Its invocation instant.
        invoked_ns: u64,
        /// Its completion instant.
        completed_ns: u64,
    },
    /// The output is not one the command can return (a get that "wrote"...).
    #[error("operation {op}: a {command} cannot return a {output} result")]
    OutputMismatch {
        /// The operation.
        op: OpId,
        /// The command's kind.
        command: &'static str,
        /// The output's kind.
        output: &'static str,
    },
    /// A [`Recorder`] was asked to finish an operation it is not waiting for.
    #[error("operation {op} is not pending in this recorder")]
    NotPending {
        /// The operation.
        op: OpId,
    },
}

/// A validated history: operations in the order they were added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Operation>,
}

impl History {
    /// An empty history.
    pub fn new() -> History {
        History::default()
    }

    /// A history of `ops` (ids in order), checking every one.
    pub fn from_operations(ops: Vec<Operation>) -> Result<History, HistoryError> {
        for (i, op) in ops.iter().enumerate() {
            op.validate(OpId(i))?;
        }
        Ok(History { ops })
    }

    /// Adds an operation and returns its id.
    pub fn push(&mut self, op: Operation) -> Result<OpId, HistoryError> {
        let id = OpId(self.ops.len());
        op.validate(id)?;
        self.ops.push(op);
        Ok(id)
    }

    /// The operations, indexed by [`OpId`].
    pub fn operations(&self) -> &[Operation] {
        &self.ops
    }

    /// The operation `id`, if any.
    pub fn get(&self, id: OpId) -> Option<&Operation> {
        self.ops.get(id.0)
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of operations with an unknown outcome.
    pub fn unknown_count(&self) -> usize {
        self.ops
            .iter()
            .filter(|o| o.outcome == Outcome::Unknown)
            .count()
    }
}

/// Records a history from concurrent callers, with real instants.
///
/// Call [`invoke`](Recorder::invoke) just before sending a request and
/// [`complete`](Recorder::complete) (or [`unknown`](Recorder::unknown)) just
/// after its answer (or failure); instants are taken inside those calls, so
/// every recorded interval contains the real one. Operations never finished
/// are of unknown outcome in [`history`](Recorder::history).
#[derive(Debug)]
pub struct Recorder {
    /// Tells this recorder's invocations from another's.
    id: u64,
    origin: Instant,
    inner: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    ops: Vec<Operation>,
    /// `finished[i]`: operation `i` was completed or declared unknown.
    finished: Vec<bool>,
}

/// An operation invoked through a [`Recorder`] and not finished yet.
#[derive(Debug)]
#[must_use = "finish the operation with Recorder::complete or Recorder::unknown"]
pub struct Invocation {
    recorder: u64,
    index: usize,
}

impl Invocation {
    /// The id the operation has in the recorded history.
    pub fn id(&self) -> OpId {
        OpId(self.index)
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

static NEXT_RECORDER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Recorder {
    /// A recorder whose origin (instant 0) is now.
    pub fn new() -> Recorder {
        Recorder {
            id: NEXT_RECORDER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            origin: Instant::now(),
            inner: Mutex::new(Recorded::default()),
        }
    }

    /// Nanoseconds from the origin to now.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records the invocation of `command` on `key` by `client`, now.
    pub fn invoke(&self, client: u64, key: Bytes, command: Command) -> Invocation {
        let invoked_ns = self.now_ns();
        let mut inner = self.inner.lock();
        let index = inner.ops.len();
        inner
            .ops
            .push(Operation::unknown(client, key, command, invoked_ns));
        inner.finished.push(false);
        Invocation {
            recorder: self.id,
            index,
        }
    }

    /// Marks the invocation finished, or says why it cannot be.
    fn finish(&self, inner: &mut Recorded, invocation: &Invocation) -> Result<(), HistoryError> {
        let op = invocation.id();
        if invocation.recorder != self.id {
            return Err(HistoryError::NotPending { op });
        }
        match inner.finished.get_mut(invocation.index) {
            Some(done @ false) => {
                *done = true;
                Ok(())
            }
            _ => Err(HistoryError::NotPending { op }),
        }
    }

    /// Records that the operation completed now and returned `output`. If
    /// the output does not fit the command, the operation is left of unknown
    /// outcome and the error says why.
    pub fn complete(&self, invocation: Invocation, output: Output) -> Result<OpId, HistoryError> {
        let completed_ns = self.now_ns();
        let id = invocation.id();
        let mut inner = self.inner.lock();
        self.finish(&mut inner, &invocation)?;
        let Some(op) = inner.ops.get_mut(invocation.index) else {
            return Err(HistoryError::NotPending { op: id });
        };
        let done = Operation {
            outcome: Outcome::Completed {
                completed_ns: completed_ns.max(op.invoked_ns),
                output,
            },
            ..op.clone()
        };
        done.validate(id)?;
        *op = done;
        Ok(id)
    }

    /// Records that the operation's outcome is unknown (it timed out or
    /// failed without saying whether it took effect).
    pub fn unknown(&self, invocation: Invocation) -> Result<OpId, HistoryError> {
        let mut inner = self.inner.lock();
        self.finish(&mut inner, &invocation)?;
        Ok(invocation.id())
    }

    /// The history recorded so far (operations still pending are of unknown
    /// outcome).
    pub fn history(&self) -> History {
        // Every stored operation was validated when it was completed, and one
        // of unknown outcome needs no validation.
        History {
            ops: self.inner.lock().ops.clone(),
        }
    }
}

/// Bounds of a [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// Search steps allowed per key before giving up ([`Verdict::Unknown`]).
    pub max_steps_per_key: u64,
    /// Memory allowed per search for memoized configurations, in bytes (an
    /// estimate: each configuration's compacted linearized set plus a fixed
    /// overhead).
    pub max_cache_bytes: usize,
    /// Whether to shrink the witness of a violation (steps 2 and 3 of the
    /// [witness](self#the-witness) search; the window of step 1 is always
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
/// cannot all have returned what they did (the [witness](self#the-witness)).
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

/// The answer of [`check`].
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

/// A [`check`]'s verdict and the work it took.
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

// ---------------------------------------------------------------------------
// Per-key preparation.

/// Interned value: 0 is "absent", `n > 0` is the `n`-th distinct value.
type Val = u32;
const ABSENT: Val = 0;

/// What must hold of the value for an operation to take effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pre {
    /// Nothing.
    Any,
    /// The value must be exactly this.
    Equals(Val),
    /// No value works (the recorded result contradicts itself).
    Never,
}

/// What an operation does to the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Eff {
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
struct SearchOp {
    pre: Pre,
    eff: Eff,
    invoked_ns: u64,
    /// Completion instant; `u64::MAX` when unknown.
    completed_ns: u64,
    /// Whether it completed (it must be linearized) or is of unknown outcome
    /// (it may be linearized at the end, which is the same as never).
    known: bool,
}

impl SearchOp {
    /// Whether the operation's outcome depends on the value it finds.
    fn observes(&self) -> bool {
        matches!(self.pre, Pre::Equals(_)) || matches!(self.eff, Eff::CasSet { .. })
    }

    /// The value after the operation from `value`, if its result is
    /// accepted.
    fn apply(&self, value: Val) -> Option<Val> {
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
enum Role {
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
struct KeyOps {
    /// Indices into the history, in history order.
    indices: Vec<usize>,
    /// The operation as recorded (`None`: constrains nothing, an unknown get).
    full: Vec<Option<SearchOp>>,
    /// The operation as a [`Role::Loose`] write (`None` for a read).
    loose: Vec<Option<SearchOp>>,
    /// The operation as a write of unknown outcome (`None` for a read).
    weak: Vec<Option<SearchOp>>,
}

impl KeyOps {
    fn new(history: &History, indices: Vec<usize>) -> KeyOps {
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
    fn view(&self, role: impl Fn(usize) -> Role) -> Vec<(usize, SearchOp)> {
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

    /// Builds the witness of a key found not linearizable; returns it and the
    /// steps spent.
    fn witness(&self, history: &History, key: &Bytes, config: &CheckConfig) -> (Violation, u64) {
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

// ---------------------------------------------------------------------------
// The search.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SearchResult {
    Linearizable,
    NotLinearizable,
    OutOfBudget,
}

struct SearchOutcome {
    result: SearchResult,
    steps: u64,
}

const NIL: usize = usize::MAX;

/// Decides a view within `max_steps`. The exact search comes first; if it
/// runs out of steps while operations of unknown outcome are present (they
/// are what multiplies the configurations), the relaxed search, where they
/// are reusable and which is much smaller, gets the rest of the steps: its
/// "not linearizable" is final, its "linearizable" decides nothing.
fn decide(view: &[(usize, SearchOp)], max_steps: u64, max_cache_bytes: usize) -> SearchOutcome {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn v(s: Option<&str>) -> Option<Bytes> {
        s.map(b)
    }

    fn put(value: &str) -> Command {
        Command::Put { value: b(value) }
    }

    fn cas(expected: Option<&str>, new: &str) -> Command {
        Command::Cas {
            expected: v(expected),
            new: b(new),
        }
    }

    fn read(value: Option<&str>) -> Output {
        Output::Read(v(value))
    }

    fn written(previous: Option<&str>) -> Output {
        Output::Written {
            previous: v(previous),
        }
    }

    fn swapped(current: Option<&str>, swapped: bool) -> Output {
        Output::Cas {
            swapped,
            current: v(current),
        }
    }

    /// Builds histories tersely: `ok(client, key, command, invoked, completed, output)`.
    #[derive(Default)]
    struct Builder(History);

    impl Builder {
        fn ok(&mut self, c: u64, k: &str, cmd: Command, i: u64, d: u64, out: Output) -> OpId {
            self.0
                .push(Operation::completed(c, b(k), cmd, i, d, out))
                .expect("valid operation")
        }
        fn unknown(&mut self, c: u64, k: &str, cmd: Command, i: u64) -> OpId {
            self.0
                .push(Operation::unknown(c, b(k), cmd, i))
                .expect("valid operation")
        }
        fn verdict(&self) -> Verdict {
            check(&self.0, &CheckConfig::default()).verdict
        }
        fn violation(&self) -> Violation {
            match self.verdict() {
                Verdict::NotLinearizable(v) => *v,
                other => panic!("expected a violation, got {other}"),
            }
        }
    }

    fn ids(ops: &[(OpId, Operation)]) -> Vec<OpId> {
        ops.iter().map(|(id, _)| *id).collect()
    }

    // --- Linearizable histories -------------------------------------------

    #[test]
    fn empty_and_single_operations_are_linearizable() {
        assert_eq!(Builder::default().verdict(), Verdict::Linearizable);
        let mut h = Builder::default();
        h.ok(1, "k", Command::Get, 0, 1, read(None));
        assert_eq!(h.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn reads_overlapping_a_write_may_see_either_value_once_each_way() {
        let mut h = Builder::default();
        h.ok(1, "k", put("a"), 0, 100, written(None));
        h.ok(2, "k", Command::Get, 10, 20, read(None));
        h.ok(2, "k", Command::Get, 30, 40, read(Some("a")));
        h.ok(3, "k", Command::Get, 35, 120, read(Some("a")));
        h.ok(3, "k", Command::Get, 130, 140, read(Some("a")));
        assert_eq!(h.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn concurrent_writes_may_take_effect_in_either_order() {
        let mut h = Builder::default();
        h.ok(1, "k", put("a"), 0, 50, written(Some("b")));
        h.ok(2, "k", put("b"), 10, 60, written(None));
        h.ok(3, "k", Command::Get, 70, 80, read(Some("a")));
        h.ok(3, "k", Command::Delete, 90, 95, written(Some("a")));
        h.ok(3, "k", Command::Get, 96, 97, read(None));
        assert_eq!(h.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn operations_at_equal_instants_are_concurrent() {
        let mut h = Builder::default();
        // The read is invoked at the very instant the write completes, so it
        // may be ordered first.
        h.ok(1, "k", put("a"), 0, 10, Output::Acknowledged);
        h.ok(2, "k", Command::Get, 10, 20, read(None));
        assert_eq!(h.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        // Observed long after its invocation, even after a later write.
        let mut h = Builder::default();
        h.unknown(1, "k", put("a"), 0);
        h.ok(2, "k", put("b"), 10, 20, Output::Acknowledged);
        h.ok(2, "k", Command::Get, 30, 40, read(Some("b")));
        h.ok(2, "k", Command::Get, 1000, 1010, read(Some("a")));
        assert_eq!(h.verdict(), Verdict::Linearizable);
        // Never observed.
        let mut h = Builder::default();
        h.unknown(1, "k", put("a"), 0);
        h.ok(2, "k", Command::Get, 100, 110, read(None));
        h.unknown(1, "k", Command::Get, 120);
        assert_eq!(h.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn an_unknown_cas_swaps_only_if_it_finds_its_expected_value() {
        let mut h = Builder::default();
        h.ok(1, "k", put("a"), 0, 10, Output::Acknowledged);
        h.unknown(2, "k", cas(Some("a"), "b"), 20);
        h.ok(1, "k", Command::Get, 30, 40, read(Some("a")));
        h.ok(1, "k", Command::Get, 50, 60, read(Some("b")));
        assert_eq!(h.verdict(), Verdict::Linearizable);
        // It cannot swap from a value it did not expect.
        let mut h = Builder::default();
        h.ok(1, "k", put("x"), 0, 10, Output::Acknowledged);
        h.unknown(2, "k", cas(Some("a"), "b"), 20);
        h.ok(1, "k", Command::Get, 50, 60, read(Some("b")));
        assert!(!h.verdict().is_linearizable());
    }

    #[test]
    fn concurrent_cas_one_wins() {
        let mut h = Builder::default();
        h.ok(1, "k", cas(None, "a"), 0, 50, swapped(None, true));
        h.ok(2, "k", cas(None, "b"), 10, 40, swapped(Some("a"), false));
        h.ok(3, "k", cas(Some("a"), "c"), 20, 60, Output::Acknowledged);
        h.ok(3, "k", Command::Get, 70, 80, read(Some("c")));
        assert_eq!(h.verdict(), Verdict::Linearizable);
    }

    #[test]
    fn keys_are_independent() {
        let mut h = Builder::default();
        h.ok(1, "x", put("a"), 0, 10, Output::Acknowledged);
        h.ok(2, "y", Command::Get, 20, 30, read(None));
        h.ok(2, "x", Command::Get, 20, 30, read(Some("a")));
        h.ok(1, "y", put("a"), 40, 50, written(None));
        let report = check(&h.0, &CheckConfig::default());
        assert_eq!(report.verdict, Verdict::Linearizable);
        assert_eq!(report.keys_checked, 2);
    }

    // --- Histories that are not linearizable ------------------------------

    #[test]
    fn stale_read_after_a_completed_write() {
        let mut h = Builder::default();
        let w = h.ok(1, "k", put("a"), 0, 10, Output::Acknowledged);
        let r = h.ok(2, "k", Command::Get, 20, 30, read(None));
        let v = h.violation();
        assert_eq!(v.key, b("k"));
        assert_eq!(ids(&v.core), vec![r]);
        assert_eq!(ids(&v.writes_in_interval), vec![w]);
        assert!(v.writes_anytime.is_empty());
        assert!(v.minimal);
    }

    #[test]
    fn stale_read_of_an_overwritten_value() {
        let mut h = Builder::default();
        let a = h.ok(1, "k", put("a"), 0, 10, Output::Acknowledged);
        let bw = h.ok(1, "k", put("b"), 20, 30, Output::Acknowledged);
        let r = h.ok(2, "k", Command::Get, 40, 50, read(Some("a")));
        let v = h.violation();
        assert_eq!(ids(&v.core), vec![r], "{v}");
        assert_eq!(ids(&v.writes_in_interval), vec![a, bw], "{v}");
        assert!(v.minimal);
    }

    #[test]
    fn lost_compare_and_set() {
        // Sequential: the second cas found the key absent after the first
        // had set it.
        let mut h = Builder::default();
        let c1 = h.ok(1, "k", cas(None, "a"), 0, 10, swapped(None, true));
        let c2 = h.ok(2, "k", cas(None, "b"), 20, 30, swapped(None, true));
        let v = h.violation();
        assert_eq!(ids(&v.core), vec![c2], "{v}");
        assert_eq!(ids(&v.writes_in_interval), vec![c1], "{v}");
        // Concurrent: both claim to have swapped from absent.
        let mut h = Builder::default();
        let c1 = h.ok(1, "k", cas(None, "a"), 0, 30, Output::Acknowledged);
        let c2 = h.ok(2, "k", cas(None, "b"), 5, 35, swapped(None, true));
        assert_eq!(ids(&h.violation().core), vec![c1, c2]);
    }

    #[test]
    fn read_of_a_value_never_written() {
        let mut h = Builder::default();
        h.ok(1, "k", put("a"), 0, 10, Output::Acknowledged);
        let r = h.ok(2, "k", Command::Get, 20, 30, read(Some("zzz")));
        h.ok(1, "k", put("b"), 40, 50, written(Some("a")));
        let v = h.violation();
        assert_eq!(ids(&v.core), vec![r]);
        assert!(v.writes_in_interval.is_empty() && v.writes_anytime.is_empty());
        assert!(v.to_string().contains("zzz"), "{v}");
    }

    #[test]
    fn a_read_observes_a_write_that_then_disappears() {
        // The write's outcome is unknown, so it may take effect late, but it
        // cannot be undone once a read has seen it.
        let mut h = Builder::default();
        let w = h.unknown(1, "k", put("a"), 0);
        let r1 = h.ok(2, "k", Command::Get, 10, 20, read(Some("a")));
        let r2 = h.ok(2, "k", Command::Get, 30, 40, read(None));
        let v = h.violation();
        assert_eq!(ids(&v.core), vec![r1, r2]);
        assert_eq!(ids(&v.writes_anytime), vec![w]);
        // The same with a completed write still in flight.
        let mut h = Builder::default();
        let w = h.ok(1, "k", put("a"), 0, 100, Output::Acknowledged);
        let r1 = h.ok(2, "k", Command::Get, 10, 20, read(Some("a")));
        let r2 = h.ok(2, "k", Command::Get, 30, 40, read(None));
        let v = h.violation();
        assert_eq!(ids(&v.core), vec![r1, r2], "{v}");
        // Cut at the second read, the write is still in flight.
        assert_eq!(ids(&v.writes_anytime), vec![w], "{v}");
    }

    #[test]
    fn a_self_contradicting_cas_result_is_caught() {
        let mut h = Builder::default();
        let c = h.ok(1, "k", cas(Some("a"), "b"), 0, 10, swapped(None, true));
        assert_eq!(ids(&h.violation().core), vec![c]);
        let mut h = Builder::default();
        let c = h.ok(1, "k", cas(None, "b"), 0, 10, swapped(None, false));
        assert_eq!(ids(&h.violation().core), vec![c]);
    }

    #[test]
    fn the_witness_of_a_long_history_is_small() {
        // 60 writes and reads by 3 overlapping clients, all consistent, then
        // one stale read on the same key and unrelated traffic on another.
        let mut h = Builder::default();
        let mut last = None;
        let mut puts = Vec::new();
        for i in 0..60u64 {
            let t = 100 * i;
            let value = format!("v{i}");
            puts.push(h.ok(1, "k", put(&value), t, t + 150, Output::Acknowledged));
            h.ok(2, "k", Command::Get, t + 60, t + 70, read(last.as_deref()));
            h.ok(3, "other", put(&value), t, t + 10, Output::Acknowledged);
            last = Some(value);
        }
        let bad = h.ok(2, "k", Command::Get, 10_000, 10_010, read(Some("v3")));
        let v = h.violation();
        assert_eq!(v.key, b("k"));
        assert!(v.minimal, "{v}");
        // The read, the write of "v3" (or a read that saw it), and one write
        // that follows it in real time.
        assert!(ids(&v.core).contains(&bad), "{v}");
        let all: Vec<OpId> = [&v.core, &v.writes_in_interval, &v.writes_anytime]
            .into_iter()
            .flat_map(|l| ids(l))
            .collect();
        assert!((3..=4).contains(&all.len()), "{v}");
        assert!(all.iter().any(|id| puts[4..].contains(id)), "{v}");
        assert!(v.to_string().contains("\"v3\""), "{v}");
    }

    /// A history of `ops` operations on key "k0" as a key-value test records
    /// them: every written value unique, operations 20 ns apart and each
    /// recorded up to `window_ns` before and after its instant, one in
    /// `1000 / unknown_per_mille` of unknown outcome (half of those took
    /// effect). Linearizable by construction.
    fn unique_values_history(ops: u64, window_ns: u64, unknown_per_mille: u64) -> History {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut state: Option<Bytes> = None;
        let mut recent: Vec<Bytes> = Vec::new();
        let mut h = History::new();
        for i in 0..ops {
            let at = 1000 + 20 * i;
            let (invoked, completed) = (at - next(window_ns), at + next(window_ns));
            let value = b(&format!("u{i}"));
            let unknown = next(1000) < unknown_per_mille;
            let applies = !unknown || next(2) == 0;
            let before = state.clone();
            let (command, output) = match next(10) {
                0..=3 => (Command::Get, Output::Read(before)),
                4..=6 => {
                    if applies {
                        state = Some(value.clone());
                    }
                    (Command::Put { value }, Output::Written { previous: before })
                }
                7 | 8 => {
                    let expected = match next(3) {
                        0 => None,
                        _ => recent.get(next(4) as usize).cloned(),
                    };
                    let swapped = before == expected;
                    if swapped && applies {
                        state = Some(value.clone());
                    }
                    (
                        Command::Cas {
                            expected,
                            new: value,
                        },
                        Output::Cas {
                            swapped,
                            current: before,
                        },
                    )
                }
                _ => {
                    if applies {
                        state = None;
                    }
                    (Command::Delete, Output::Written { previous: before })
                }
            };
            if let Some(v) = &state {
                recent.insert(0, v.clone());
                recent.truncate(4);
            }
            let client = i % 5;
            let op = if unknown {
                Operation::unknown(client, b("k0"), command, invoked)
            } else {
                Operation::completed(client, b("k0"), command, invoked, completed, output)
            };
            h.push(op).expect("valid");
        }
        h
    }

    #[test]
    #[allow(clippy::print_stdout)]
    fn a_long_concurrent_history_is_decided_within_the_default_bounds() {
        // 2000 operations on one key, each overlapping about six others,
        // one in twenty of unknown outcome.
        let history = unique_values_history(2000, 60, 50);
        assert!(history.unknown_count() > 50);
        let report = check(&history, &CheckConfig::default());
        assert_eq!(report.verdict, Verdict::Linearizable);
        // A stale read appended at the end is found, with a small witness,
        // which takes exhausting every order of the history.
        let mut bad = history.clone();
        let end = bad
            .operations()
            .iter()
            .map(|o| o.invoked_ns)
            .max()
            .unwrap_or(0)
            + 1000;
        let mut add = |cmd: Command, at: u64, out: Output| {
            bad.push(Operation::completed(9, b("k0"), cmd, at, at + 1, out))
                .expect("valid")
        };
        let fresh = add(put("fresh"), end, Output::Acknowledged);
        let over = add(put("over"), end + 2, written(Some("fresh")));
        let stale = add(Command::Get, end + 4, read(Some("fresh")));
        let report = check(&bad, &CheckConfig::default());
        let Verdict::NotLinearizable(v) = &report.verdict else {
            panic!("a stale read must be found: {}", report.verdict)
        };
        assert!(v.minimal, "{v}");
        // The overwrite saw "fresh" before the read did: "fresh" took
        // effect before it (written once), and not again.
        assert_eq!(ids(&v.core), vec![over, stale], "{v}");
        assert!(v.writes_in_interval.is_empty(), "{v}");
        assert_eq!(ids(&v.writes_anytime), vec![fresh], "{v}");
        println!(
            "{} steps to refute, {} for the witness:\n{v}",
            report.steps, report.witness_steps
        );
    }

    // --- Bounds and errors ------------------------------------------------

    #[test]
    fn out_of_steps_or_memory_is_unknown_not_a_guess() {
        let mut h = Builder::default();
        h.ok(1, "k", put("a"), 0, 10, Output::Acknowledged);
        h.ok(2, "k", Command::Get, 20, 30, read(Some("a")));
        h.ok(2, "k", Command::Get, 40, 50, read(Some("a")));
        let steps = CheckConfig {
            max_steps_per_key: 2,
            ..CheckConfig::default()
        };
        let report = check(&h.0, &steps);
        assert!(
            matches!(&report.verdict, Verdict::Unknown { key, operations: 3, steps: 2 } if key == &b("k")),
            "{:?}",
            report.verdict
        );
        let memory = CheckConfig {
            max_cache_bytes: 0,
            ..CheckConfig::default()
        };
        assert!(matches!(
            check(&h.0, &memory).verdict,
            Verdict::Unknown { .. }
        ));
        // A violation on a later key still wins over an undecided key.
        h.ok(3, "z", Command::Get, 0, 1, read(Some("never")));
        let report = check(&h.0, &steps);
        assert!(matches!(report.verdict, Verdict::NotLinearizable(_)));
    }

    #[test]
    fn malformed_operations_are_refused() {
        let mut h = History::new();
        let late = Operation::completed(1, b("k"), Command::Get, 10, 5, read(None));
        assert_eq!(
            h.push(late),
            Err(HistoryError::CompletedBeforeInvoked {
                op: OpId(0),
                invoked_ns: 10,
                completed_ns: 5
            })
        );
        let wrong = Operation::completed(1, b("k"), Command::Get, 0, 5, Output::Acknowledged);
        assert!(matches!(
            History::from_operations(vec![wrong]),
            Err(HistoryError::OutputMismatch { op: OpId(0), .. })
        ));
        let wrong = Operation::completed(1, b("k"), put("a"), 0, 5, read(None));
        assert!(h.push(wrong).is_err());
        assert!(h.is_empty());
    }

    #[test]
    fn recorder_keeps_real_intervals_and_refuses_double_finishes() {
        let rec = Recorder::new();
        let other = Recorder::new();
        let w = rec.invoke(1, b("k"), put("a"));
        let r = rec.invoke(2, b("k"), Command::Get);
        let lost = rec.invoke(3, b("k"), put("b"));
        let _never_finished = rec.invoke(4, b("k"), Command::Delete);
        let foreign = other.invoke(1, b("k"), Command::Get);
        let bad = rec.invoke(5, b("k"), Command::Get);
        let w = rec.complete(w, written(None)).expect("fits");
        assert_eq!(rec.complete(r, read(Some("a"))), Ok(OpId(1)));
        assert_eq!(rec.unknown(lost), Ok(OpId(2)));
        assert_eq!(
            rec.complete(foreign, read(None)),
            Err(HistoryError::NotPending { op: OpId(0) })
        );
        assert!(matches!(
            rec.complete(bad, Output::Acknowledged),
            Err(HistoryError::OutputMismatch { op: OpId(4), .. })
        ));
        let forged = Invocation {
            recorder: rec.id,
            index: 0,
        };
        assert_eq!(
            rec.unknown(forged),
            Err(HistoryError::NotPending { op: OpId(0) })
        );
        let h = rec.history();
        assert_eq!(h.len(), 5);
        assert_eq!(h.unknown_count(), 3);
        let Some(Operation {
            invoked_ns,
            outcome: Outcome::Completed { completed_ns, .. },
            ..
        }) = h.get(w)
        else {
            panic!("the write completed: {h:?}")
        };
        assert!(invoked_ns <= completed_ns);
        assert!(History::from_operations(h.operations().to_vec()).is_ok());
        assert_eq!(
            check(&h, &CheckConfig::default()).verdict,
            Verdict::Linearizable
        );
    }

    // --- Properties -------------------------------------------------------

    /// An exhaustive search over every order of the operations (all keys at
    /// once), written directly from the model's definition: an independent
    /// reference for small histories.
    fn brute_force(ops: &[Operation]) -> bool {
        brute_force_loose(ops, &vec![false; ops.len()])
    }

    /// [`brute_force`] where `loose[i]` makes operation `i`'s result free (it
    /// still takes effect within its interval).
    fn brute_force_loose(ops: &[Operation], loose: &[bool]) -> bool {
        fn completion(op: &Operation) -> Option<u64> {
            match op.outcome {
                Outcome::Completed { completed_ns, .. } => Some(completed_ns),
                Outcome::Unknown => None,
            }
        }
        /// The key's value after `op` from `state`, if the result fits.
        fn step(op: &Operation, loose: bool, state: Option<&Bytes>) -> Option<Option<Bytes>> {
            let output = match &op.outcome {
                _ if loose => None,
                Outcome::Unknown => None,
                Outcome::Completed { output, .. } => Some(output),
            };
            let current = state.cloned();
            match (&op.command, output) {
                (Command::Get, None) => Some(current),
                (Command::Get, Some(Output::Read(v))) => (*v == current).then_some(current),
                (Command::Put { value }, None | Some(Output::Acknowledged)) => {
                    Some(Some(value.clone()))
                }
                (Command::Put { value }, Some(Output::Written { previous })) => {
                    (*previous == current).then(|| Some(value.clone()))
                }
                (Command::Delete, None | Some(Output::Acknowledged)) => Some(None),
                (Command::Delete, Some(Output::Written { previous })) => {
                    (*previous == current).then_some(None)
                }
                (Command::Cas { expected, new }, None) => Some(if current == *expected {
                    Some(new.clone())
                } else {
                    current
                }),
                (Command::Cas { expected, new }, Some(Output::Acknowledged)) => {
                    (current == *expected).then(|| Some(new.clone()))
                }
                (
                    Command::Cas { expected, new },
                    Some(Output::Cas {
                        swapped,
                        current: c,
                    }),
                ) => {
                    if *c != current || *swapped != (current == *expected) {
                        None
                    } else if *swapped {
                        Some(Some(new.clone()))
                    } else {
                        Some(current)
                    }
                }
                _ => None,
            }
        }
        fn dfs(
            ops: &[Operation],
            loose: &[bool],
            placed: &mut [bool],
            state: &mut BTreeMap<Bytes, Bytes>,
        ) -> bool {
            let done = ops
                .iter()
                .zip(placed.iter())
                .all(|(o, &p)| p || completion(o).is_none());
            if done {
                return true;
            }
            for i in 0..ops.len() {
                if placed[i] {
                    continue;
                }
                // Real time: no operation left unplaced completed before
                // this one was invoked.
                let blocked = (0..ops.len()).any(|j| {
                    !placed[j]
                        && j != i
                        && completion(&ops[j]).is_some_and(|c| c < ops[i].invoked_ns)
                });
                if blocked {
                    continue;
                }
                let key = &ops[i].key;
                let Some(after) = step(&ops[i], loose[i], state.get(key)) else {
                    continue;
                };
                let before = match after {
                    Some(v) => state.insert(key.clone(), v),
                    None => state.remove(key),
                };
                placed[i] = true;
                let ok = dfs(ops, loose, placed, state);
                placed[i] = false;
                match before {
                    Some(v) => state.insert(key.clone(), v),
                    None => state.remove(key),
                };
                if ok {
                    return true;
                }
            }
            false
        }
        dfs(
            ops,
            loose,
            &mut vec![false; ops.len()],
            &mut BTreeMap::new(),
        )
    }

    /// One generated operation: what it does, and how it overlaps.
    #[derive(Clone, Debug)]
    struct Gen {
        key: u8,
        kind: u8,
        value: u8,
        expected: u8,
        back: u64,
        forward: u64,
        /// 0: unknown outcome, took effect; 1: unknown, never took effect;
        /// otherwise completed.
        fate: u8,
        detailed: bool,
    }

    /// Generated operations, each recorded up to `overlap_ns` before and
    /// after its instant (operations are 20 ns apart).
    fn gen(overlap_ns: u64) -> impl Strategy<Value = Gen> {
        (
            prop_oneof![3 => Just(0u8), 1 => Just(1u8)],
            0u8..4,
            0u8..3,
            0u8..4,
            0..overlap_ns,
            0..overlap_ns,
            0u8..8,
            any::<bool>(),
        )
            .prop_map(
                |(key, kind, value, expected, back, forward, fate, detailed)| Gen {
                    key,
                    kind,
                    value,
                    expected,
                    back,
                    forward,
                    fate,
                    detailed,
                },
            )
    }

    /// A history produced by running the generated operations one after the
    /// other on a sequential model at instants 1000, 1020, ..., each
    /// recorded with an interval around its instant: linearizable by
    /// construction.
    fn sequential_history(gens: &[Gen]) -> Vec<Operation> {
        let mut state: BTreeMap<Bytes, Bytes> = BTreeMap::new();
        let mut ops = Vec::new();
        for (i, g) in gens.iter().enumerate() {
            let at = 1000 + 20 * i as u64;
            let key = b(&format!("k{}", g.key));
            let value = b(&format!("v{}", g.value));
            let expected = (g.expected > 0).then(|| b(&format!("v{}", g.expected - 1)));
            let command = match g.kind {
                0 => Command::Get,
                1 => Command::Put {
                    value: value.clone(),
                },
                2 => Command::Delete,
                _ => Command::Cas {
                    expected: expected.clone(),
                    new: value.clone(),
                },
            };
            let invoked_ns = at - g.back;
            let client = i as u64 % 4;
            if g.fate == 1 {
                ops.push(Operation::unknown(client, key, command, invoked_ns));
                continue;
            }
            let current = state.get(&key).cloned();
            let output = match &command {
                Command::Get => Output::Read(current.clone()),
                Command::Put { value } => {
                    state.insert(key.clone(), value.clone());
                    Output::Written {
                        previous: current.clone(),
                    }
                }
                Command::Delete => {
                    state.remove(&key);
                    Output::Written {
                        previous: current.clone(),
                    }
                }
                Command::Cas { expected, new } => {
                    let swapped = current == *expected;
                    if swapped {
                        state.insert(key.clone(), new.clone());
                    }
                    Output::Cas {
                        swapped,
                        current: current.clone(),
                    }
                }
            };
            let output = match output {
                Output::Written { .. } if !g.detailed => Output::Acknowledged,
                Output::Cas { swapped: true, .. } if !g.detailed => Output::Acknowledged,
                o => o,
            };
            if g.fate == 0 {
                ops.push(Operation::unknown(client, key, command, invoked_ns));
            } else {
                ops.push(Operation::completed(
                    client,
                    key,
                    command,
                    invoked_ns,
                    at + g.forward,
                    output,
                ));
            }
        }
        ops
    }

    /// One change to one operation of a history.
    fn mutate(ops: &mut [Operation], index: usize, kind: u8, value: u8, shift: u64) {
        let index = index % ops.len().max(1);
        let Some(key) = ops.get(index).map(|o| o.key.clone()) else {
            return;
        };
        // A value the key held at some point (absent, or one written), so
        // that most changes make subtle violations rather than reads of
        // values never written.
        let mut held: Vec<Option<Bytes>> = vec![None];
        for o in ops.iter().filter(|o| o.key == key) {
            match &o.command {
                Command::Put { value } | Command::Cas { new: value, .. } => {
                    held.push(Some(value.clone()))
                }
                Command::Get | Command::Delete => {}
            }
        }
        let new_value = held[usize::from(value) % held.len()].clone();
        let op = &mut ops[index];
        match (kind, &mut op.outcome) {
            // Change an observed value.
            (0, Outcome::Completed { output, .. }) => match output {
                Output::Read(v) => *v = new_value,
                Output::Written { previous } => *previous = new_value,
                Output::Cas { current, .. } => *current = new_value,
                Output::Acknowledged => {}
            },
            // Flip a compare-and-set's answer.
            (
                1,
                Outcome::Completed {
                    output: Output::Cas { swapped, .. },
                    ..
                },
            ) => *swapped = !*swapped,
            // Move the operation earlier, with a short interval.
            (2, Outcome::Completed { completed_ns, .. }) => {
                op.invoked_ns = op.invoked_ns.saturating_sub(shift);
                *completed_ns = op.invoked_ns + shift % 7;
            }
            // Forget the outcome.
            (3, outcome) => *outcome = Outcome::Unknown,
            // Move the operation later.
            (_, Outcome::Completed { completed_ns, .. }) => {
                op.invoked_ns += shift;
                *completed_ns += shift;
            }
            (_, Outcome::Unknown) => op.invoked_ns += shift,
        }
    }

    /// The operations of `all` on `key`, for [`brute_force_loose`]: those in
    /// `core` as recorded, those in `bounded` released from their results
    /// (reads dropped), every other one of unknown outcome (reads dropped).
    fn judged(
        all: &[Operation],
        key: &Bytes,
        core: &[OpId],
        bounded: &[OpId],
    ) -> (Vec<Operation>, Vec<bool>) {
        let mut ops = Vec::new();
        let mut loose = Vec::new();
        for (i, o) in all.iter().enumerate().filter(|(_, o)| o.key == *key) {
            if core.contains(&OpId(i)) {
                ops.push(o.clone());
                loose.push(false);
            } else if o.command == Command::Get {
                continue;
            } else if bounded.contains(&OpId(i)) {
                ops.push(o.clone());
                loose.push(true);
            } else {
                ops.push(Operation::unknown(
                    o.client,
                    o.key.clone(),
                    o.command.clone(),
                    o.invoked_ns,
                ));
                loose.push(false);
            }
        }
        (ops, loose)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn histories_of_a_sequential_model_are_linearizable(gens in prop::collection::vec(gen(60), 0..40)) {
            let history = History::from_operations(sequential_history(&gens)).expect("valid");
            let report = check(&history, &CheckConfig::default());
            prop_assert_eq!(&report.verdict, &Verdict::Linearizable, "{:#?}", history);
        }

        #[test]
        fn verdicts_match_an_exhaustive_search(
            gens in prop::collection::vec(gen(30), 1..8),
            mutations in prop::collection::vec((0usize..8, 0u8..5, 0u8..8, 0u64..80), 1..4),
        ) {
            let mut ops = sequential_history(&gens);
            prop_assert!(brute_force(&ops), "the reference rejects a sequential history: {:#?}", ops);
            for (index, kind, value, shift) in mutations {
                mutate(&mut ops, index, kind, value, shift);
            }
            let history = History::from_operations(ops.clone()).expect("valid");
            let expected = brute_force(&ops);
            let report = check(&history, &CheckConfig::default());
            match &report.verdict {
                Verdict::Linearizable => prop_assert!(expected, "checker accepts {:#?}", ops),
                Verdict::Unknown { .. } => prop_assert!(false, "undecided on {} operations", ops.len()),
                Verdict::NotLinearizable(v) => {
                    prop_assert!(!expected, "checker rejects {:#?}\n{}", ops, v);
                    prop_assert!(!v.core.is_empty());
                    for (id, op) in v.core.iter().chain(&v.writes_in_interval).chain(&v.writes_anytime) {
                        prop_assert_eq!(&op.key, &v.key);
                        prop_assert_eq!(Some(op), history.get(*id));
                    }
                    let core = ids(&v.core);
                    let bounded = ids(&v.writes_in_interval);
                    // The witness fails as stated...
                    let mut stated: Vec<Operation> = v.core.iter().map(|(_, o)| o.clone()).collect();
                    let mut loose = vec![false; stated.len()];
                    stated.extend(v.writes_in_interval.iter().map(|(_, o)| o.clone()));
                    loose.resize(stated.len(), true);
                    stated.extend(v.writes_anytime.iter().map(|(_, o)| {
                        Operation::unknown(o.client, o.key.clone(), o.command.clone(), o.invoked_ns)
                    }));
                    loose.resize(stated.len(), false);
                    prop_assert!(!brute_force_loose(&stated, &loose), "{}", v);
                    // ...and with every other operation on the key released.
                    let (all, loose) = judged(&ops, &v.key, &core, &bounded);
                    prop_assert!(!brute_force_loose(&all, &loose), "{}", v);
                    // Minimal: releasing any one core operation from its
                    // result, or any one bounded write from its interval,
                    // makes it linearizable.
                    prop_assert!(v.minimal, "{}", v);
                    for c in &core {
                        let rest: Vec<OpId> = core.iter().copied().filter(|x| x != c).collect();
                        let mut more = bounded.clone();
                        more.push(*c);
                        let (all, loose) = judged(&ops, &v.key, &rest, &more);
                        prop_assert!(brute_force_loose(&all, &loose), "releasing {} leaves a failure: {}", c, v);
                    }
                    for w in &bounded {
                        let rest: Vec<OpId> = bounded.iter().copied().filter(|x| x != w).collect();
                        let (all, loose) = judged(&ops, &v.key, &core, &rest);
                        prop_assert!(brute_force_loose(&all, &loose), "releasing {} leaves a failure: {}", w, v);
                    }
                }
            }
        }
    }
}
