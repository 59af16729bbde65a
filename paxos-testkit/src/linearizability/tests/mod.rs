//! The checker's unit tests: hand-built histories with known verdicts,
//! the bounds, and properties against a brute-force reference.

use super::*;

mod bounds;
mod linearizable;
mod not_linearizable;
mod properties;

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
