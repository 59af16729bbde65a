//! Integration tests of paxos-snapshot (one binary, one module per area).
#![allow(clippy::print_stdout)]

mod common;
mod format;
mod plan_model;
mod plan_rules;
mod reader_fuzz;
mod store;
mod transfer;
