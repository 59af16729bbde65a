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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    #[arg(long, default_value_t = 5.0)]
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

    // The baseline: one writer overwriting `value_bytes` in a preallocated file
    // and calling fdatasync, on the disk that holds the clusters' data (what
    // one sync costs here: the ceiling of a system that syncs every write).
    let mut baselines = Vec::new();
    for &value_bytes in &opts.value_bytes {
        let dir = opts.base_dir.clone();
        let duration = opts.duration.min(Duration::from_secs(2));
        let per_s =
            tokio::task::spawn_blocking(move || fdatasync_rate(&dir, value_bytes, duration))
                .await
                .context("baseline task")??;
        baselines.push((value_bytes, per_s));
    }

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
        let baseline = baselines
            .iter()
            .find(|(v, _)| *v == s.value_bytes)
            .map_or(f64::NAN, |(_, per_s)| *per_s);
        figures.push(serde_json::json!({
            "name": format!("{label} writes"),
            "value": s.writes_per_s,
            "unit": "writes/s",
            "baseline_name": format!("fdatasync {}B", s.value_bytes),
            "baseline": baseline,
        }));
        figures.push(
            serde_json::json!({"name": format!("{label} p50"), "value": s.p50_us, "unit": "us"}),
        );
        figures.push(
            serde_json::json!({"name": format!("{label} p99"), "value": s.p99_us, "unit": "us"}),
        );
    }
    for (value_bytes, per_s) in &baselines {
        println!("baseline: one writer, {value_bytes}B write + fdatasync (preallocated file): {per_s:.0} syncs/s");
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

/// Bytes written ahead into the baseline's scratch file, which is then
/// overwritten in place (wrapping around), as etcd and ZooKeeper preallocate
/// their logs so that a sync flushes data, not file-size metadata.
const BASELINE_FILE_BYTES: usize = 32 << 20;

/// Writes `value_bytes` and calls fdatasync in a loop for `duration` (at most
/// a million times) in a preallocated scratch file under `dir`; returns syncs
/// per second.
fn fdatasync_rate(dir: &Path, value_bytes: usize, duration: Duration) -> anyhow::Result<f64> {
    use std::io::{Seek, SeekFrom};
    anyhow::ensure!(
        value_bytes > 0 && value_bytes <= BASELINE_FILE_BYTES,
        "baseline value size {value_bytes} out of range"
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("fdatasync-baseline-{value_bytes}"));
    let mut file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..BASELINE_FILE_BYTES / zeros.len() {
        file.write_all(&zeros)
            .with_context(|| format!("preallocating {}", path.display()))?;
    }
    file.sync_all()
        .with_context(|| format!("fsync of {}", path.display()))?;
    file.seek(SeekFrom::Start(0))
        .with_context(|| format!("seeking in {}", path.display()))?;
    let value = vec![b'x'; value_bytes];
    let mut offset = 0usize;
    let start = Instant::now();
    let mut syncs = 0u64;
    while start.elapsed() < duration && syncs < 1_000_000 {
        if offset + value_bytes > BASELINE_FILE_BYTES {
            file.seek(SeekFrom::Start(0))
                .with_context(|| format!("seeking in {}", path.display()))?;
            offset = 0;
        }
        file.write_all(&value)
            .with_context(|| format!("writing {}", path.display()))?;
        file.sync_data()
            .with_context(|| format!("fdatasync of {}", path.display()))?;
        offset += value_bytes;
        syncs += 1;
    }
    let per_s = syncs as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok(per_s)
}
