//! Shared test fixtures.

use std::io::{self, Read, Write};

use bytes::Bytes;
use paxos_core::{Epoch, NodeId, StateMachine, Zxid};
use paxos_snapshot::SnapshotMeta;

/// A state machine holding a byte blob: each command is appended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Blob {
    pub(crate) data: Vec<u8>,
    pub(crate) applied: Zxid,
}

impl Blob {
    /// A blob of `len` pseudo-random bytes, applied up to `zxid`.
    pub(crate) fn filled(len: usize, seed: u64, zxid: Zxid) -> Blob {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let data = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Blob {
            data,
            applied: zxid,
        }
    }
}

impl StateMachine for Blob {
    fn apply(&mut self, zxid: Zxid, command: &Bytes) -> Bytes {
        self.data.extend_from_slice(command);
        self.applied = zxid;
        Bytes::new()
    }

    fn applied(&self) -> Zxid {
        self.applied
    }

    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&(self.data.len() as u64).to_le_bytes())?;
        // Odd-sized pieces exercise the writer's buffering.
        for piece in self.data.chunks(1000) {
            out.write_all(piece)?;
        }
        Ok(())
    }

    fn restore(&mut self, zxid: Zxid, input: &mut dyn Read) -> io::Result<()> {
        let mut len = [0u8; 8];
        input.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        let mut data = Vec::new();
        input.take(len).read_to_end(&mut data)?;
        if data.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "blob shorter than its length",
            ));
        }
        self.data = data;
        self.applied = zxid;
        Ok(())
    }
}

pub(crate) fn meta(zxid: Zxid) -> SnapshotMeta {
    SnapshotMeta {
        zxid,
        epoch: zxid.epoch(),
        voters: vec![NodeId(1), NodeId(2), NodeId(3)],
        // A whole membership, so that corruption tests flip its bytes too.
        membership: Some(paxos_core::Membership {
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            observers: vec![NodeId(4)],
            context: bytes::Bytes::from_static(b"4=127.0.0.1:7004"),
        }),
    }
}

pub(crate) fn z(epoch: u32, counter: u32) -> Zxid {
    Zxid::new(Epoch(epoch), counter)
}

use paxos_snapshot::{plan_sync, Decision, DiskLog, LeaderLog, PlannerConfig, SnapshotRef};

/// A leader history for planner tests: the whole log as zxids, and which
/// parts of it are retained where.
#[derive(Clone, Debug)]
pub(crate) struct Hist {
    pub(crate) entries: Vec<Zxid>,
    /// First index of the in-memory window (runs to the end).
    pub(crate) memory: Option<usize>,
    /// On-disk log: first index, last index, bytes.
    pub(crate) disk: Option<(usize, usize, u64)>,
    /// Snapshot: index of its last included entry, its size.
    pub(crate) snapshot: Option<(usize, Option<u64>)>,
}

/// A log of `(epoch, count)` runs, counters from 1.
pub(crate) fn log_of(runs: &[(u32, u32)]) -> Vec<Zxid> {
    runs.iter()
        .flat_map(|&(e, n)| (1..=n).map(move |c| z(e, c)))
        .collect()
}

impl Hist {
    /// Everything in memory, no disk, no snapshot.
    pub(crate) fn memory_only(entries: Vec<Zxid>) -> Hist {
        let memory = (!entries.is_empty()).then_some(0);
        Hist {
            entries,
            memory,
            disk: None,
            snapshot: None,
        }
    }

    pub(crate) fn last(&self) -> Zxid {
        self.entries.last().copied().unwrap_or(Zxid::ZERO)
    }

    /// First retained index (`len` when nothing is retained).
    pub(crate) fn retained(&self) -> usize {
        let n = self.entries.len();
        self.memory
            .unwrap_or(n)
            .min(self.disk.map_or(n, |(first, _, _)| first))
    }

    pub(crate) fn epoch_ends(&self) -> Vec<Zxid> {
        let mut ends: Vec<Zxid> = Vec::new();
        for &e in &self.entries[self.retained()..] {
            match ends.last_mut() {
                Some(last) if last.epoch() == e.epoch() => *last = e,
                _ => ends.push(e),
            }
        }
        ends
    }

    pub(crate) fn plan(&self, follower_last: Zxid, config: &PlannerConfig) -> Decision {
        let ends = self.epoch_ends();
        let r = self.retained();
        let leader = LeaderLog {
            last: self.last(),
            committed: self.last(),
            retained_first: self.entries.get(r).copied(),
            epoch_ends: &ends,
            log_from_start: r == 0,
            memory_first: self.memory.map(|i| self.entries[i]),
            disk: self.disk.map(|(first, last, bytes)| DiskLog {
                first: self.entries[first],
                last: self.entries[last],
                bytes,
            }),
            snapshot: self.snapshot.map(|(i, bytes)| SnapshotRef {
                zxid: self.entries[i],
                bytes,
            }),
        };
        plan_sync(follower_last, &leader, config)
    }
}
