//! paxos-snapshot (being built).
