//! Integration tests of paxos-net-quic: real QUIC connections on loopback.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs,
    unreachable_pub
)]

mod certs;
mod common;
mod decoder;
mod delivery;
mod dynamic;
mod security;
