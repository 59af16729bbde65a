//! Integration tests of `paxos-election`: codec properties, elector unit
//! behaviour, and a deterministic simulation of the election alone.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    unreachable_pub,
    missing_docs
)]

mod abstain;
mod connectivity;
mod elector;
mod heal;
mod membership;
mod nominee;
mod properties;
mod scenarios;
mod sim;
