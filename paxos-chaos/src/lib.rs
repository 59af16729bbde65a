//! The chaos suite: real `paxos-node` processes on real disks, each in a
//! network namespace of its own, under faults: kills, pauses, partitions,
//! lossy and slow links, damaged and full disks, clock jumps.
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod net;
