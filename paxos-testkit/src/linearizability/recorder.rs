//! Recording a history from concurrent tasks, with real instants.

use bytes::Bytes;
use parking_lot::Mutex;
use std::time::Instant;

use super::history::{Command, History, HistoryError, OpId, Operation, Outcome, Output};

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
    pub(super) id: u64,
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
    pub(super) recorder: u64,
    pub(super) index: usize,
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
