//! Integration tests of paxos-core: the simulator's scenarios and random
//! schedules, the codec's property tests, and single-replica behaviour.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod sim;
