//! Integration tests of paxos-core: the simulator's scenarios and random
//! schedules, the codec's property tests, and replica behaviour on a
//! hand-driven cluster.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod codec;
mod multi;
mod node;
mod quiesce;
mod replica;
mod sim;
