//! The identity of a peer inside one cluster.

use std::fmt;

/// A node's identity inside one cluster, as named by its certificate
/// (`node-<id>` DNS subject alternative name).
///
/// This crate keeps its own id type so it does not depend on any consensus
/// kernel; a stack built on `paxos-core` maps `NodeId(n)` to `PeerId(n)`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PeerId(pub u64);

impl PeerId {
    /// The DNS name a certificate for this node carries: `node-<id>`.
    pub fn dns_name(self) -> String {
        format!("node-{}", self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

impl From<u64> for PeerId {
    fn from(raw: u64) -> Self {
        PeerId(raw)
    }
}
