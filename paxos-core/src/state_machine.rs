//! The state-machine seam: what the replicated log is applied to.

use bytes::Bytes;
use std::io;

use crate::Zxid;

/// A deterministic state machine fed with committed entries in log order.
///
/// Snapshots stream: [`snapshot`](StateMachine::snapshot) writes the state to
/// any `io::Write` and [`restore`](StateMachine::restore) reads it back from
/// any `io::Read`, so no snapshot has to fit in memory. `paxos-snapshot`
/// wraps these streams in its checksummed file format and chunked transfer.
pub trait StateMachine {
    /// Applies one committed command and returns its result for the client.
    /// Called exactly once per committed entry, in zxid order.
    fn apply(&mut self, zxid: Zxid, command: &Bytes) -> Bytes;

    /// Passes over a committed entry without applying it: the operator's
    /// way past an entry that makes [`apply`](StateMachine::apply) panic
    /// (every replica must skip the same entries). Must advance
    /// [`applied`](StateMachine::applied) to `zxid`. The default applies an
    /// empty command, which a state machine must already take (commands
    /// come from clients and are never trusted); override it to answer
    /// differently.
    fn skip(&mut self, zxid: Zxid) -> Bytes {
        self.apply(zxid, &Bytes::new())
    }

    /// The zxid of the last applied entry (`Zxid::ZERO` if none).
    fn applied(&self) -> Zxid;

    /// Writes the whole state, as of [`applied`](StateMachine::applied), to `out`.
    fn snapshot(&self, out: &mut dyn io::Write) -> io::Result<()>;

    /// Replaces the whole state with the one read from `input`, which was
    /// written by [`snapshot`](StateMachine::snapshot) at `zxid`.
    fn restore(&mut self, zxid: Zxid, input: &mut dyn io::Read) -> io::Result<()>;
}
