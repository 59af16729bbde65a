//! paxos-net-quic (being built).
