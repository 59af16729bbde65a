//! Measures etcd and ZooKeeper side by side with the reference node's
//! closed-loop generator, prints a table and writes
//! `target/bench-results/compare.json` (or `$PAXOS_BENCH_RESULTS/compare.json`).
//!
//! ```text
//! cargo run --release -p paxos-bench --no-default-features --features compare --example compare -- \
//!     --concurrency 1,16,64 --value-bytes 100,1024 --duration-s 5
//! ```
//! Needs `apt-get install etcd-server zookeeper` (missing systems are skipped)
//! and `protobuf-compiler` to build. `RUST_LOG=paxos_bench=debug` shows progress.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use paxos_bench::compare::{run_comparison, CompareOptions, System};

#[derive(Parser, Debug)]
#[command(about = "etcd and ZooKeeper write throughput with the paxos-bench load generator")]
struct Args {
    /// Client concurrency levels.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64])]
    concurrency: Vec<usize>,
    /// Value sizes in bytes.
    #[arg(long, value_delimiter = ',', default_values_t = [100usize, 1024])]
    value_bytes: Vec<usize>,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// Seconds of unmeasured warm-up per system.
    #[arg(long, default_value_t = 2.0)]
    warmup_s: f64,
    /// Client connections shared by the logical clients.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Systems to run (etcd, zookeeper).
    #[arg(long, value_delimiter = ',', default_values_t = ["etcd".to_owned(), "zookeeper".to_owned()])]
    systems: Vec<String>,
    /// Base directory for data and logs (default: a temporary directory,
    /// removed at exit).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let temp;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir().context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let mut opts = CompareOptions::new(dir);
    opts.concurrency = args.concurrency.clone();
    opts.value_bytes = args.value_bytes.clone();
    opts.duration = Duration::from_secs_f64(args.duration_s);
    opts.warmup = Duration::from_secs_f64(args.warmup_s);
    opts.connections = args.connections;
    opts.systems = args
        .systems
        .iter()
        .map(|s| match s.as_str() {
            "etcd" => Ok(System::Etcd),
            "zookeeper" | "zk" => Ok(System::ZooKeeper),
            other => Err(anyhow::anyhow!(
                "unknown system {other:?} (etcd, zookeeper)"
            )),
        })
        .collect::<anyhow::Result<_>>()?;

    let report = run_comparison(opts).await?;

    println!(
        "{:<10} {:>6} {:>7} {:>12} {:>10} {:>10} {:>10} {:>7} {:>9}",
        "system", "conc", "value", "writes/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "lost/chk"
    );
    let mut figures = Vec::new();
    for row in &report.rows {
        let s = row.summary();
        println!(
            "{:<10} {:>6} {:>6}B {:>12.0} {:>10.2} {:>10.2} {:>10.2} {:>7} {:>4}/{:<4}",
            s.system.name(),
            s.concurrency,
            s.value_bytes,
            s.writes_per_s,
            s.p50_us / 1000.0,
            s.p99_us / 1000.0,
            s.p999_us / 1000.0,
            s.errors,
            s.lost,
            s.verified
        );
        let label = format!("{} c={} {}B", s.system, s.concurrency, s.value_bytes);
        figures.push(serde_json::json!({"name": format!("{label} writes"), "value": s.writes_per_s, "unit": "writes/s"}));
        figures.push(
            serde_json::json!({"name": format!("{label} p50"), "value": s.p50_us, "unit": "us"}),
        );
        figures.push(
            serde_json::json!({"name": format!("{label} p99"), "value": s.p99_us, "unit": "us"}),
        );
    }
    for skipped in &report.skipped {
        println!("{} skipped: {}", skipped.system, skipped.reason);
    }

    let results_dir = std::env::var_os("PAXOS_BENCH_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results")
        });
    std::fs::create_dir_all(&results_dir)
        .with_context(|| format!("creating {}", results_dir.display()))?;
    let path = results_dir.join("compare.json");
    let rows: Vec<_> = report.rows.iter().map(|r| r.summary()).collect();
    let json = serde_json::json!({
        "bench": "compare",
        "figures": figures,
        "rows": rows,
        "skipped": report.skipped,
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("results: {}", path.display());
    let lost: usize = report.rows.iter().map(|r| r.lost).sum();
    anyhow::ensure!(lost == 0, "{lost} acknowledged writes were not read back");
    Ok(())
}
