//! `paxos-chaos`: runs the chaos suite's scenarios against real node
//! processes (what `cargo xtask chaos` calls).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use paxos_chaos::scenario::{RunOptions, Scenario};
use paxos_chaos::schedule::{run_schedule, ScheduleOptions};

/// Random fault schedules on real processes, networks and disks.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Run for this many minutes (a run that has started is finished).
    /// Default 5; with exactly one --scenario and no --minutes, one run.
    #[arg(long)]
    minutes: Option<f64>,
    /// Seed of the schedule; with one --scenario, the seed of that run
    /// (what a failure report prints).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only this scenario (repeatable). With exactly one and no
    /// --minutes, replays one run.
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// The paxos-node binary (default: next to this one).
    #[arg(long)]
    node_binary: Option<PathBuf>,
    /// Run on loopback only (skip the scenarios that need namespaces).
    #[arg(long)]
    loopback_only: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
    /// Write the summary table (Markdown) to this file too.
    #[arg(long)]
    table: Option<PathBuf>,
    /// At most this many runs.
    #[arg(long, default_value_t = 100_000)]
    max_runs: u64,
    /// Paxos groups every node hosts (`paxos-node run --groups`); with
    /// more than 1, the workload's keys spread over the groups and every
    /// recovery check needs a write committed in every group.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    groups: u32,
}

/// Runs `work` on `rt` until it finishes or the process is asked to stop
/// (Ctrl-C, SIGTERM). On a signal the work is dropped, and with it the run's
/// cluster and network: their `Drop` stops the nodes, deletes the
/// namespaces and the link faults. Without this, a signal's default action
/// ended the process without any of that, and the nodes kept running.
fn interruptible<F: std::future::Future>(
    rt: &tokio::runtime::Runtime,
    work: F,
) -> Result<F::Output> {
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            out = work => Ok(out),
            _ = tokio::signal::ctrl_c() => bail!("interrupted (SIGINT): the run's nodes, namespaces and link faults were cleaned up"),
            _ = term.recv() => bail!("terminated (SIGTERM): the run's nodes, namespaces and link faults were cleaned up"),
        }
    })
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PAXOS_CHAOS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut out = std::io::stdout().lock();
    if args.list {
        for s in Scenario::ALL {
            writeln!(out, "{s}")?;
        }
        return Ok(());
    }
    let mut only = Vec::new();
    for name in &args.scenarios {
        match Scenario::from_name(name) {
            Some(s) => only.push(s),
            None => bail!("no scenario {name:?}; `paxos-chaos --list` names them"),
        }
    }
    let node_binary = match args.node_binary {
        Some(p) => p,
        None => paxos_chaos::harness::node_binary()?,
    };
    let run_options = RunOptions {
        node_binary,
        loopback_only: args.loopback_only,
        keep_failed: true,
        groups: args.groups,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // One named scenario and an explicit seed: replay exactly that run.
    let replay = only.len() == 1 && args.minutes.is_none();
    let summary = if replay {
        let report = interruptible(
            &rt,
            paxos_chaos::scenario::run(only[0], args.seed, &run_options),
        )?;
        let mut s = paxos_chaos::schedule::Summary::default();
        s.add(&report);
        writeln!(
            out,
            "{} seed {} ({} groups, {:.1} s): {}{}",
            report.scenario,
            report.seed,
            report.groups,
            report.elapsed.as_secs_f64(),
            if report.skipped.is_some() {
                "skipped"
            } else if report.passed() {
                "passed"
            } else {
                "FAILED"
            },
            if report.notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", report.notes.join("; "))
            }
        )?;
        s
    } else {
        let duration = Duration::from_secs_f64((args.minutes.unwrap_or(5.0) * 60.0).max(0.0));
        let bar = indicatif::ProgressBar::new(duration.as_secs());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{bar:40}] {pos}/{len} s {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let started = std::time::Instant::now();
        let options = ScheduleOptions {
            duration,
            seed: args.seed,
            only,
            max_runs: args.max_runs,
        };
        let summary = interruptible(
            &rt,
            run_schedule(&options, &run_options, |r, s| {
                bar.set_position(started.elapsed().as_secs().min(duration.as_secs()));
                let runs: u32 = s.rows.values().map(|r| r.runs).sum();
                bar.set_message(format!(
                    "{runs} runs, {} failed; last {} {}",
                    s.failures.len(),
                    r.scenario,
                    if r.skipped.is_some() {
                        "skipped"
                    } else if r.passed() {
                        "ok"
                    } else {
                        "FAILED"
                    }
                ));
                if r.failed() {
                    bar.println(format!(
                        "FAILED {} seed {}:\n{}  replay: {}",
                        r.scenario,
                        r.seed,
                        r.problems(),
                        r.replay_command()
                    ));
                }
            }),
        )?;
        bar.finish_and_clear();
        summary
    };
    let table = summary.table();
    writeln!(out, "{table}")?;
    if let Some(p) = &args.table {
        std::fs::write(p, &table)?;
    }
    for f in &summary.failures {
        writeln!(
            out,
            "\nFAILED {} seed {}:\n{}  replay: {}",
            f.scenario,
            f.seed,
            f.problems(),
            f.replay_command()
        )?;
    }
    if !summary.passed() {
        bail!("{} failing runs", summary.failures.len());
    }
    Ok(())
}
