//! `cargo xtask bench`: runs every benchmark of `paxos-bench`, one after the
//! other (the machine is small and shared: never two at once), and ends with one
//! table of headline figures, each beside the baseline measured in the same run.
//!
//! Two kinds of benchmark feed the table:
//! - criterion benches: their `target/criterion/**/new/{benchmark,estimates}.json`
//!   files written during this run. Within a criterion group, a benchmark whose id
//!   starts with `baseline` is the reference for the others of its group.
//! - self-timed benches (their own `main`): a JSON file in the results directory,
//!   `{"bench": name, "figures": [{"name", "value", "unit", "baseline_name"?, "baseline"?}]}`.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::util::{target_dir, workspace_root};

/// Options of `cargo xtask bench`.
#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Short runs with small sizes (CI smoke run; figures are indicative only).
    #[arg(long)]
    quick: bool,
    /// Only the benches whose names are given (comma separated), e.g. `wal,codec`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also start etcd and ZooKeeper clusters and measure them beside ours
    /// (end-to-end bench only).
    #[arg(long)]
    compare: bool,
}

/// One figure of the headline table.
#[derive(Debug, Clone)]
struct Figure {
    bench: String,
    name: String,
    value: f64,
    unit: String,
    baseline: Option<(String, f64)>,
}

pub(crate) fn run(args: BenchArgs) -> Result<()> {
    let root = workspace_root();
    let results = target_dir().join("bench-results");
    let logs = results.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut benches = bench_targets(&root.join("paxos-bench/Cargo.toml"))?;
    if root.join("paxos-bench/src/bin/paxos-e2e.rs").exists() {
        benches.push("e2e".to_string());
    }
    if !args.only.is_empty() {
        benches.retain(|b| args.only.iter().any(|o| o == b));
        if benches.is_empty() {
            bail!("no benchmark matches {:?}", args.only);
        }
    }
    let started = SystemTime::now();
    let bar = ProgressBar::new(benches.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(500));
    let mut failed = Vec::new();
    for name in &benches {
        bar.set_message(format!(
            "running {name} (log: {})",
            logs.join(format!("{name}.log")).display()
        ));
        let ok = run_one(&root, &results, &logs, name, &args)?;
        if !ok {
            failed.push(name.clone());
            bar.println(format!(
                "bench {name} failed; last lines of its log:\n{}",
                tail(&logs.join(format!("{name}.log")), 30)
            ));
        }
        bar.inc(1);
    }
    bar.finish_with_message("done");

    let mut figures = criterion_figures(&target_dir().join("criterion"), started)?;
    figures.extend(json_figures(&results, &benches, started)?);
    print_table(&figures);
    write_summary(&results, &figures)?;
    if !failed.is_empty() {
        bail!("benchmarks failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The `[[bench]]` names declared in paxos-bench's manifest, in order.
fn bench_targets(manifest: &Path) -> Result<Vec<String>> {
    let text =
        fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let mut names = Vec::new();
    let mut in_bench = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_bench = line == "[[bench]]";
            continue;
        }
        if in_bench {
            if let Some(rest) = line.strip_prefix("name") {
                let value = rest.trim_start().trim_start_matches('=').trim();
                names.push(value.trim_matches('"').to_string());
            }
        }
    }
    Ok(names)
}

fn run_one(root: &Path, results: &Path, logs: &Path, name: &str, args: &BenchArgs) -> Result<bool> {
    let log_path = logs.join(format!("{name}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log_err = log.try_clone()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .env("PAXOS_BENCH_RESULTS", results)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    if args.quick {
        cmd.env("PAXOS_BENCH_QUICK", "1");
    }
    if name == "e2e" {
        // The end-to-end bench starts `paxos-node` processes: build the
        // binaries of paxos-kv and paxos-bench first (cargo puts them side by
        // side, where paxos-e2e looks), then run the bench's own binary.
        let mut build =
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string()));
        build
            .current_dir(root)
            .args([
                "build",
                "--release",
                "-p",
                "paxos-kv",
                "-p",
                "paxos-bench",
                "--bins",
            ])
            .stdin(Stdio::null())
            .stdout(fs::File::options().append(true).open(&log_path)?)
            .stderr(fs::File::options().append(true).open(&log_path)?);
        if args.compare {
            // The etcd client's build needs protoc.
            build
                .args(["--features", "paxos-bench/compare"])
                .env("PROTOC", protoc()?);
        }
        if !build
            .status()
            .context("could not start cargo build")?
            .success()
        {
            return Ok(false);
        }
        cmd = Command::new(target_dir().join("release").join("paxos-e2e"));
        cmd.current_dir(root)
            .env("PAXOS_BENCH_RESULTS", results)
            .stdin(Stdio::null())
            .stdout(fs::File::options().append(true).open(&log_path)?)
            .stderr(fs::File::options().append(true).open(&log_path)?);
        if args.quick {
            cmd.arg("--quick");
        }
        if args.compare {
            cmd.arg("--compare");
        }
    } else {
        cmd.args(["bench", "-p", "paxos-bench", "--bench", name]);
        if RAFT_BASELINE_BENCHES.contains(&name) {
            // raft-rs's build (raft-proto's build script) needs protoc.
            cmd.args(["--features", "raft-baseline"])
                .env("PROTOC", protoc()?);
        }
        cmd.arg("--");
        // Quick mode reaches every bench through PAXOS_BENCH_QUICK (set above);
        // criterion's plots are not needed for the table.
        cmd.arg("--noplot");
    }
    let status = cmd
        .status()
        .with_context(|| format!("could not start the {name} benchmark"))?;
    Ok(status.success())
}

/// The benches built with paxos-bench's feature `raft-baseline` (raft-rs as
/// their baseline).
const RAFT_BASELINE_BENCHES: &[&str] = &["kernel"];

/// The `protoc` handed to the cargo builds that need one: `$PROTOC` when it is
/// set, else the binary that ships inside the `protoc-bin-vendored` crate, so
/// that a fresh machine needs no system package.
pub(crate) fn protoc() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PROTOC").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    protoc_bin_vendored::protoc_bin_path().context("no vendored protoc for this platform")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn modified_since(path: &Path, since: SystemTime) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|m| m >= since)
        .unwrap_or(false)
}

/// Reads every criterion result written since `since`.
fn criterion_figures(dir: &Path, since: SystemTime) -> Result<Vec<Figure>> {
    let mut found: Vec<PathBuf> = Vec::new();
    collect_new_dirs(dir, since, &mut found, 0);
    // group id -> (function id -> (throughput value, unit))
    let mut groups: BTreeMap<String, Vec<(String, f64, String)>> = BTreeMap::new();
    for new_dir in found {
        let bench: Value = match read_json(&new_dir.join("benchmark.json")) {
            Some(v) => v,
            None => continue,
        };
        let est: Value = match read_json(&new_dir.join("estimates.json")) {
            Some(v) => v,
            None => continue,
        };
        let group = bench["group_id"].as_str().unwrap_or("?").to_string();
        let mut id = bench["function_id"].as_str().unwrap_or("").to_string();
        if let Some(v) = bench["value_str"].as_str() {
            if !id.is_empty() {
                id.push('/');
            }
            id.push_str(v);
        }
        let median_ns = est["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
        let (value, unit) = throughput(&bench["throughput"], median_ns);
        groups.entry(group).or_default().push((id, value, unit));
    }
    let mut figures = Vec::new();
    for (group, rows) in groups {
        let baseline = rows
            .iter()
            .find(|(id, _, _)| id.starts_with("baseline"))
            .map(|(id, v, _)| (id.clone(), *v));
        for (id, value, unit) in &rows {
            let is_baseline = id.starts_with("baseline");
            figures.push(Figure {
                bench: group.clone(),
                name: id.clone(),
                value: *value,
                unit: unit.clone(),
                baseline: if is_baseline { None } else { baseline.clone() },
            });
        }
    }
    Ok(figures)
}

fn collect_new_dirs(dir: &Path, since: SystemTime, out: &mut Vec<PathBuf>, depth: usize) {
    if depth > 6 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            if modified_since(&path.join("estimates.json"), since) {
                out.push(path);
            }
        } else if path.file_name().is_some_and(|n| n != "report") {
            collect_new_dirs(&path, since, out, depth + 1);
        }
    }
}

/// Converts criterion's median time per iteration into a throughput figure when
/// the benchmark declared one, else reports the time itself.
fn throughput(t: &Value, median_ns: f64) -> (f64, String) {
    let per_sec = 1e9 / median_ns;
    if let Some(bytes) = t.get("Bytes").and_then(Value::as_f64) {
        (bytes * per_sec / 1e6, "MB/s".into())
    } else if let Some(bytes) = t.get("BytesDecimal").and_then(Value::as_f64) {
        (bytes * per_sec / 1e6, "MB/s".into())
    } else if let Some(n) = t.get("Elements").and_then(Value::as_f64) {
        (n * per_sec, "elem/s".into())
    } else {
        (median_ns / 1e3, "us/iter".into())
    }
}

fn read_json(path: &Path) -> Option<Value> {
    let text = fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Reads the JSON summaries the self-timed benches wrote during this run.
fn json_figures(results: &Path, benches: &[String], since: SystemTime) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for name in benches {
        let path = results.join(format!("{name}.json"));
        if !modified_since(&path, since) {
            continue;
        }
        let Some(v) = read_json(&path) else { continue };
        let bench = v["bench"].as_str().unwrap_or(name).to_string();
        for f in v["figures"].as_array().into_iter().flatten() {
            let baseline = match (f["baseline_name"].as_str(), f["baseline"].as_f64()) {
                (Some(n), Some(b)) => Some((n.to_string(), b)),
                _ => None,
            };
            figures.push(Figure {
                bench: bench.clone(),
                name: f["name"].as_str().unwrap_or("?").to_string(),
                value: f["value"].as_f64().unwrap_or(f64::NAN),
                unit: f["unit"].as_str().unwrap_or("").to_string(),
                baseline,
            });
        }
    }
    Ok(figures)
}

fn human(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn print_table(figures: &[Figure]) {
    println!();
    println!(
        "{:<34} {:<40} {:>12} {:<9} {:>12} {:>8}",
        "bench", "figure", "value", "unit", "baseline", "ratio"
    );
    println!("{}", "-".repeat(120));
    for f in figures {
        let (base, ratio) = match &f.baseline {
            Some((_, b)) => (human(*b), format!("{:.2}", f.value / b)),
            None => (String::new(), String::new()),
        };
        println!(
            "{:<34} {:<40} {:>12} {:<9} {:>12} {:>8}",
            truncate(&f.bench, 34),
            truncate(&f.name, 40),
            human(f.value),
            f.unit,
            base,
            ratio
        );
    }
    if figures.is_empty() {
        println!("(no figures were produced)");
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('~');
        t
    }
}

fn write_summary(results: &Path, figures: &[Figure]) -> Result<()> {
    let rows: Vec<Value> = figures
        .iter()
        .map(|f| {
            serde_json::json!({
                "bench": f.bench,
                "name": f.name,
                "value": f.value,
                "unit": f.unit,
                "baseline_name": f.baseline.as_ref().map(|b| b.0.clone()),
                "baseline": f.baseline.as_ref().map(|b| b.1),
                "ratio": f.baseline.as_ref().map(|b| f.value / b.1),
            })
        })
        .collect();
    let path = results.join("summary.json");
    fs::write(&path, serde_json::to_string_pretty(&rows)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("\nsummary written to {}", path.display());
    Ok(())
}
