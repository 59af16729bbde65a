//! Identifiers shared by every crate of the toolkit.

use std::fmt;

/// A replica's identity inside one cluster. Never reused for another machine.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u64);

/// One replication group (one partition's redo log). `GroupId(0)` for a single group.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GroupId(pub u64);

/// A ballot: Paxos's proposal number, ZAB's epoch, Raft's term.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u32);

/// A log position: the epoch in the high 32 bits, a counter in the low 32.
///
/// The total order of zxids is the log order. The counter starts at 1 in
/// every epoch, so `Zxid::new(e, 0)` is never the id of an entry: it marks
/// "the beginning of epoch `e`" and is what [`Zxid::ZERO`] is for epoch 0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Zxid(pub u64);

impl Epoch {
    /// The epoch before any leader was ever established.
    pub const ZERO: Epoch = Epoch(0);

    /// The next epoch, or `None` if the 32-bit space is exhausted.
    pub fn next(self) -> Option<Epoch> {
        self.0.checked_add(1).map(Epoch)
    }
}

impl Zxid {
    /// The position before the first entry of an empty log.
    pub const ZERO: Zxid = Zxid(0);

    /// Builds a zxid from its epoch and its counter within that epoch.
    pub const fn new(epoch: Epoch, counter: u32) -> Zxid {
        Zxid(((epoch.0 as u64) << 32) | counter as u64)
    }

    /// The epoch part (high 32 bits).
    pub const fn epoch(self) -> Epoch {
        Epoch((self.0 >> 32) as u32)
    }

    /// The counter part (low 32 bits); 0 only for epoch-start markers.
    pub const fn counter(self) -> u32 {
        self.0 as u32
    }

    /// The raw `u64`, as stored in the WAL and on the wire.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The next zxid in the same epoch, or `None` if the counter would overflow.
    pub fn next_in_epoch(self) -> Option<Zxid> {
        self.counter()
            .checked_add(1)
            .map(|c| Zxid::new(self.epoch(), c))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}
impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "g{}", self.0)
    }
}
impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}
impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Debug for Zxid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch().0, self.counter())
    }
}
impl fmt::Display for Zxid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zxid_packs_epoch_high_and_counter_low() {
        let z = Zxid::new(Epoch(3), 7);
        assert_eq!(z.as_u64(), (3u64 << 32) | 7);
        assert_eq!(z.epoch(), Epoch(3));
        assert_eq!(z.counter(), 7);
        assert!(Zxid::new(Epoch(2), u32::MAX) < Zxid::new(Epoch(3), 1));
        assert_eq!(Zxid::new(Epoch(1), u32::MAX).next_in_epoch(), None);
        assert_eq!(Epoch(u32::MAX).next(), None);
        assert_eq!(format!("{z:?}"), "3.7");
    }
}
