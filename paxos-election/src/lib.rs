//! paxos-election (being built).
