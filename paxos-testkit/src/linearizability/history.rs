//! Histories: the operations a test observed, each with its key, command,
//! interval and outcome.

use bytes::Bytes;
use std::fmt;

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
/// the [module documentation](super#the-model).
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
    pub(super) fn validate(&self, id: OpId) -> Result<(), HistoryError> {
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
pub(super) struct ShowValue<'a>(pub(super) Option<&'a Bytes>);

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
    /// A [`Recorder`](super::Recorder) was asked to finish an operation it is not waiting for.
    #[error("operation {op} is not pending in this recorder")]
    NotPending {
        /// The operation.
        op: OpId,
    },
}

/// A validated history: operations in the order they were added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub(super) ops: Vec<Operation>,
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
