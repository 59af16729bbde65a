//! Project automation for the paxos toolkit, in the xtask pattern: plain Rust
//! instead of shell scripts, run as `cargo xtask <command>` (the alias lives in
//! `.cargo/config.toml`).
//!
//! Commands:
//! - `bench`: every benchmark of the workspace, then one table of headline figures.
//! - `sim`: the deterministic simulator over as many seeds as asked.
//! - `ci`: what `.ci/run` checks (format, lints, tests).
//! - `cluster`: a local 3-node key-value cluster to try by hand.
//! - `chaos`: random fault schedules on real node processes, networks and
//!   disks (the paxos-chaos crate), with a summary table.
//! - `protoc`: the path of the protoc that `bench` hands to cargo.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod chaos;
mod cluster;
mod sim;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "paxos toolkit automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmarks of every crate and print the headline figures.
    Bench(bench::BenchArgs),
    /// Run the deterministic simulator of paxos-core over many seeds.
    Sim {
        /// How many seeds to run.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// Steps per seed.
        #[arg(long, default_value_t = 20_000)]
        steps: u64,
        /// Run only this seed (replays a failure exactly).
        #[arg(long)]
        seed: Option<u64>,
        /// Simulate the full stack: paxos-election and paxos-snapshot instead
        /// of the simulator's test elector and planner.
        #[arg(long)]
        full: bool,
        /// Run the multi-group simulator: this many groups on every host,
        /// sharing each host's log, network and crashes.
        #[arg(long)]
        groups: Option<u64>,
    },
    /// Run the checks CI runs: fmt, clippy (also with the kernel bench's
    /// raft-rs baseline), tests.
    Ci,
    /// Run random fault schedules on real node processes (kills, pauses,
    /// partitions, lossy links, disk faults, clock jumps) and print a
    /// table; a failure prints its replay command. Arguments go to
    /// `paxos-chaos` (`--minutes N --seed S --scenario NAME --list`).
    Chaos {
        /// Arguments for paxos-chaos.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the path of the protoc that `bench` hands to cargo: `$PROTOC`
    /// when set, else the one shipped in the `protoc-bin-vendored` crate.
    Protoc,
    /// Start a local cluster of reference nodes on loopback to try by hand.
    Cluster {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Peer ports are BASE+id, client ports BASE+1000+id.
        #[arg(long, default_value_t = 7000)]
        base_port: u16,
        /// Paxos groups each node hosts (keys are spread over them).
        #[arg(long, default_value_t = 1)]
        groups: u32,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Sim {
            seeds,
            steps,
            seed,
            full,
            groups,
        } => sim::run(seeds, steps, seed, full, groups),
        Command::Cluster {
            nodes,
            base_port,
            groups,
        } => cluster::run(nodes, base_port, groups),
        Command::Chaos { args } => chaos::run(&args),
        Command::Protoc => {
            println!("{}", bench::protoc()?.display());
            Ok(())
        }
        Command::Ci => {
            util::cargo(&["fmt", "--all", "--check"], &[])?;
            util::cargo(
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
                &[],
            )?;
            let protoc = bench::protoc()?.display().to_string();
            util::cargo(
                &[
                    "clippy",
                    "-p",
                    "paxos-bench",
                    "--all-targets",
                    "--features",
                    "raft-baseline",
                    "--",
                    "-D",
                    "warnings",
                ],
                &[("PROTOC", protoc)],
            )?;
            util::cargo(&["test", "--workspace"], &[])
        }
    }
}
