//! The simulated state machine: it applies nothing but checks, entry by
//! entry, that every replica applies one canonical sequence (agreement and
//! prefix order), recording the first violation for the simulator.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use bytes::Bytes;

use crate::{NodeId, StateMachine, Zxid};

/// The canonical sequence: (zxid, hash of the command) in apply order.
pub(crate) type Canonical = Rc<RefCell<Vec<(Zxid, u64)>>>;

/// FNV-1a: stable across platforms and runs.
pub(crate) fn hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// One replica's state machine (see the module documentation).
#[derive(Debug)]
pub(crate) struct SimMachine {
    pub(crate) node: NodeId,
    canonical: Canonical,
    /// Canonical entries applied.
    pub(crate) len: usize,
    pub(crate) last: Zxid,
    /// The first violation seen.
    pub(crate) violation: Option<String>,
}

impl SimMachine {
    pub(crate) fn new(node: NodeId, canonical: Canonical, len: usize, last: Zxid) -> SimMachine {
        SimMachine {
            node,
            canonical,
            len,
            last,
            violation: None,
        }
    }

    fn violate(&mut self, what: String) {
        self.violation.get_or_insert(what);
    }
}

impl StateMachine for SimMachine {
    fn apply(&mut self, zxid: Zxid, command: &Bytes) -> Bytes {
        let h = hash(command);
        if zxid <= self.last {
            let what = format!("node {}: applied {zxid:?} after {:?}", self.node, self.last);
            self.violate(what);
            return Bytes::new();
        }
        let k = self.len;
        let mut canonical = self.canonical.borrow_mut();
        if k < canonical.len() {
            if canonical[k] != (zxid, h) {
                let what = format!(
                    "agreement/prefix: node {} applied {zxid:?} at position {k}, canonical has {:?}",
                    self.node, canonical[k].0
                );
                drop(canonical);
                self.violate(what);
                return Bytes::new();
            }
        } else {
            canonical.push((zxid, h));
        }
        self.len += 1;
        self.last = zxid;
        Bytes::new()
    }

    fn applied(&self) -> Zxid {
        self.last
    }

    fn snapshot(&self, out: &mut dyn io::Write) -> io::Result<()> {
        out.write_all(&self.last.0.to_le_bytes())?;
        out.write_all(&(self.len as u64).to_le_bytes())
    }

    fn restore(&mut self, zxid: Zxid, input: &mut dyn io::Read) -> io::Result<()> {
        let mut b = [0u8; 16];
        input.read_exact(&mut b)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(&b[8..16]);
        self.len = usize::try_from(u64::from_le_bytes(word))
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "length out of range"))?;
        self.last = zxid;
        Ok(())
    }
}
