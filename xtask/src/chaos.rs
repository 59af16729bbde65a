//! `cargo xtask chaos`: builds the node and the chaos runner in release mode
//! and runs random fault schedules on real processes (see the paxos-chaos
//! crate). Arguments after `chaos` go to the runner unchanged:
//! `--minutes N`, `--seed S`, `--scenario NAME` (repeatable; one scenario
//! with a seed and no `--minutes` replays one run), `--list`,
//! `--loopback-only`, `--table FILE`, `--groups N` (every node hosts N
//! Paxos groups: `cargo xtask chaos --minutes 5 --groups 1000`).

use anyhow::{bail, Context, Result};
use std::process::Command;

use crate::util::{cargo, target_dir};

/// Builds and runs the chaos runner with `args`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    cargo(
        &[
            "build",
            "--release",
            "-p",
            "paxos-kv",
            "--bin",
            "paxos-node",
            "-p",
            "paxos-chaos",
            "--bin",
            "paxos-chaos",
        ],
        &[],
    )?;
    let bin = target_dir().join("release");
    let status = Command::new(bin.join("paxos-chaos"))
        .arg("--node-binary")
        .arg(bin.join("paxos-node"))
        .args(args)
        .status()
        .context("starting paxos-chaos")?;
    if !status.success() {
        bail!("paxos-chaos failed ({status})");
    }
    Ok(())
}
