//! paxos-wal (being built).
