//! Integration tests of the reference node: real processes, real QUIC, real
//! WAL on disk.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod admin;
mod client_limits;
mod clock_faults;
mod cluster;
mod cluster_start;
mod disk_faults;
mod flood;
mod groups;
mod heal;
mod linearizable;
mod metrics;
mod outcome;
mod principals;
mod rejoin;
mod sessions;
mod snapshot_catchup;
mod snapshot_install;
mod tls;
mod util;
