//! `cargo xtask sim`: the deterministic simulator of paxos-core over as many
//! seeds as asked, with a progress bar. Seeds run in chunks through the
//! `simulate` example (built once, in release); a failing seed is printed
//! with the command that replays it exactly.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::process::Command;

use crate::util::{cargo, target_dir, workspace_root};

/// Runs `seeds` seeds of `steps` steps (or the single `seed`); with
/// `groups`, the multi-group simulator (that many groups on shared hosts).
pub(crate) fn run(
    seeds: u64,
    steps: u64,
    seed: Option<u64>,
    full: bool,
    groups: Option<u64>,
) -> Result<()> {
    cargo(
        &[
            "build",
            "--release",
            "-p",
            "paxos-testkit",
            "--example",
            "simulate",
        ],
        &[],
    )?;
    let bin = target_dir()
        .join("release")
        .join("examples")
        .join("simulate");
    let mut base = vec!["--steps".to_string(), steps.to_string()];
    if full {
        base.push("--full".into());
    }
    if let Some(g) = groups {
        base.push("--groups".into());
        base.push(g.to_string());
    }
    if let Some(s) = seed {
        let status = Command::new(&bin)
            .current_dir(workspace_root())
            .args(&base)
            .args(["--seed", &s.to_string()])
            .status()
            .context("running the simulator")?;
        if !status.success() {
            bail!("seed {s} failed");
        }
        return Ok(());
    }
    let chunk = (seeds / 100).clamp(1, 50);
    let bar = ProgressBar::new(seeds);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} seeds {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut failed: Vec<String> = Vec::new();
    let mut first = 0u64;
    while first < seeds {
        let n = chunk.min(seeds - first);
        let out = Command::new(&bin)
            .current_dir(workspace_root())
            .args(&base)
            .args(["--first", &first.to_string(), "--seeds", &n.to_string()])
            .output()
            .context("running the simulator")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines().filter(|l| l.starts_with("FAIL")) {
            bar.println(line);
            failed.push(line.to_string());
        }
        if !out.status.success() && failed.is_empty() {
            bail!(
                "the simulator failed without naming a seed:\n{}{}",
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        first += n;
        bar.inc(n);
        bar.set_message(format!("{} failed", failed.len()));
    }
    bar.finish();
    println!("{seeds} seeds x {steps} steps: {} failed", failed.len());
    // The bar's own lines do not show when the output is not a terminal
    // (CI's log): the failures are listed again here.
    for line in &failed {
        println!("{line}");
    }
    if !failed.is_empty() {
        println!(
            "replay one with: {}cargo xtask sim --steps {steps} --seed <SEED>{}{}",
            if std::env::var_os("PAXOS_SIM_WIPES").is_some() {
                "PAXOS_SIM_WIPES=1 "
            } else {
                ""
            },
            if full { " --full" } else { "" },
            groups.map_or(String::new(), |g| format!(" --groups {g}"))
        );
        bail!("{} seeds failed", failed.len());
    }
    Ok(())
}
