//! Random schedules of scenarios for as long as asked, and the table that
//! sums them up (what `cargo xtask chaos` prints).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::scenario::{run, skip_reason, Report, RunOptions, Scenario};
use crate::workload::OpCounts;
use paxos_core::rng::Rng;

/// One row of the summary: every run of one scenario.
#[derive(Clone, Debug, Default)]
pub struct Row {
    /// Runs (skipped ones not counted).
    pub runs: u32,
    /// Runs that found a problem.
    pub failed: u32,
    /// Workload calls by outcome.
    pub counts: OpCounts,
    /// Faults injected.
    pub faults: u64,
    /// Safety violations.
    pub violations: u64,
    /// Acknowledged writes lost.
    pub lost: u64,
    /// Liveness failures.
    pub stalls: u64,
    /// Every recovery time measured.
    pub recoveries: Vec<Duration>,
    /// Wall time of every run, summed.
    pub elapsed: Duration,
}

/// The outcome of a schedule.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// One row per scenario that ran.
    pub rows: BTreeMap<Scenario, Row>,
    /// Every failed run, to replay.
    pub failures: Vec<Report>,
    /// Scenarios skipped, with the reason.
    pub skipped: BTreeMap<Scenario, String>,
}

impl Summary {
    /// Adds one run.
    pub fn add(&mut self, r: &Report) {
        if let Some(why) = &r.skipped {
            self.skipped.insert(r.scenario, why.clone());
            return;
        }
        let row = self.rows.entry(r.scenario).or_default();
        row.runs += 1;
        row.failed += u32::from(r.failed());
        row.counts += r.counts;
        row.faults += u64::from(r.faults);
        row.violations += r.violations.len() as u64;
        row.lost += r.lost.len() as u64;
        row.stalls += r.stalls.len() as u64 + u64::from(r.error.is_some());
        row.recoveries.extend(r.recoveries.iter().copied());
        row.elapsed += r.elapsed;
        if r.failed() {
            self.failures.push(r.clone());
        }
    }

    /// Whether no run failed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The table, as Markdown.
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| scenario | runs | ops ok | ops failed | ops unknown | faults | violations | writes lost | stalls | recovery median | recovery max | wall time |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let mut total = Row::default();
        for (s, row) in &self.rows {
            out.push_str(&format_row(s.name(), row));
            total.runs += row.runs;
            total.failed += row.failed;
            total.counts += row.counts;
            total.faults += row.faults;
            total.violations += row.violations;
            total.lost += row.lost;
            total.stalls += row.stalls;
            total.recoveries.extend(row.recoveries.iter().copied());
            total.elapsed += row.elapsed;
        }
        out.push_str(&format_row("**all**", &total));
        for (s, why) in &self.skipped {
            out.push_str(&format!("\nskipped {s}: {why}"));
        }
        out
    }
}

fn format_row(name: &str, row: &Row) -> String {
    let mut rec = row.recoveries.clone();
    rec.sort();
    let median = rec.get(rec.len() / 2).copied();
    let max = rec.last().copied();
    let secs =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2} s", d.as_secs_f64()));
    format!(
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} s |\n",
        row.runs,
        row.counts.ok,
        row.counts.failed,
        row.counts.unknown,
        row.faults,
        row.violations,
        row.lost,
        row.stalls,
        secs(median),
        secs(max),
        row.elapsed.as_secs_f64()
    )
}

/// What a schedule runs.
#[derive(Clone, Debug)]
pub struct ScheduleOptions {
    /// Stop starting new runs after this long.
    pub duration: Duration,
    /// Seed of the schedule (each run's seed is drawn from it).
    pub seed: u64,
    /// Only these scenarios (empty: all).
    pub only: Vec<Scenario>,
    /// At most this many runs.
    pub max_runs: u64,
}

/// Runs random scenarios until `options.duration` has passed (a run that
/// has started is finished), calling `progress` after each run.
pub async fn run_schedule(
    options: &ScheduleOptions,
    run_options: &RunOptions,
    mut progress: impl FnMut(&Report, &Summary),
) -> Summary {
    let started = Instant::now();
    let mut rng = Rng::new(options.seed);
    let pool: Vec<Scenario> = if options.only.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        options.only.clone()
    };
    let mut summary = Summary::default();
    // Scenarios this machine cannot run are reported once, not drawn.
    let runnable: Vec<Scenario> = pool
        .iter()
        .copied()
        .filter(|&s| match skip_reason(s, run_options) {
            Some(why) => {
                summary.skipped.insert(s, why);
                false
            }
            None => true,
        })
        .collect();
    if runnable.is_empty() {
        return summary;
    }
    // The first pass runs every scenario once, in order; later ones draw.
    for i in 0..options.max_runs {
        if started.elapsed() >= options.duration {
            break;
        }
        let scenario = if (i as usize) < runnable.len() {
            runnable[i as usize]
        } else {
            runnable[rng.below(runnable.len() as u64) as usize]
        };
        // Seeds short enough to type.
        let seed = rng.below(1_000_000);
        let report = run(scenario, seed, run_options).await;
        summary.add(&report);
        progress(&report, &summary);
    }
    summary
}
