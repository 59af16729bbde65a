//! Integration tests of paxos-testkit: the full protocol (paxos-core's
//! kernel with paxos-election and paxos-snapshot) under the simulator.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod full;
