//! Side-by-side runs against etcd and ZooKeeper (feature `compare`).
//!
//! This module starts a 3-member etcd cluster ([`EtcdCluster`]) and a 3-server
//! ZooKeeper ensemble ([`ZkEnsemble`]) as child processes on 127.0.0.1, each
//! member with its own data directory under a base directory and fsync as
//! shipped (etcd always fsyncs its WAL; ZooKeeper's `forceSync` defaults to
//! `yes`), and drives them with the same closed-loop generator as the
//! reference node ([`crate::loadgen::closed_loop`]) at the same concurrency and
//! value size.
//!
//! # Workload
//! Writes only, each logical client with one request in flight:
//! - etcd: `Put(key, value)` of a key unique to the run, client and request;
//! - ZooKeeper: `create` of a unique PERSISTENT, non-sequential znode
//!   `/paxos-bench/r<run>/c<client>-<n>` holding the value (the parent is
//!   created before the run). A create is ZooKeeper's closest equivalent of a
//!   put of a fresh key and is what its own write benchmarks measure.
//!
//! The logical clients share a small pool of client connections (sessions for
//! ZooKeeper, HTTP/2 channels for etcd); connection `k` talks to member
//! `k % members`, so the load is spread evenly and followers forward writes to
//! their leader, as they do for the reference node.
//!
//! # Processes
//! Every member's stdout and stderr go to a log file next to its data
//! (`<dir>/m<i>.log`, `<dir>/server<id>.log`), quoted in start-up errors.
//! Every wait is bounded in attempts and time. Dropping a cluster kills and
//! reaps its members, also when a panic unwinds; on Linux they are also
//! killed by the kernel if the harness itself dies (`PR_SET_PDEATHSIG`).
//!
//! # Installing the servers
//! They come from Debian: `apt-get install etcd-server zookeeper` (the latter
//! pulls in a Java runtime). Building this feature needs `protoc` for the etcd
//! client; `cargo xtask bench --compare` sets `PROTOC` to a vendored one (see
//! `cargo xtask protoc`). Where a server is missing,
//! [`run_comparison`] skips it and says how to install it; it never fails the
//! whole run for that. Paths can be overridden with `PAXOS_COMPARE_ETCD`,
//! `PAXOS_COMPARE_JAVA` and `PAXOS_COMPARE_ZK_JAR`.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), paxos_bench::compare::CompareError> {
//! use paxos_bench::compare::{run_comparison, CompareOptions};
//! let dir = std::env::temp_dir().join("paxos-compare-demo");
//! let report = run_comparison(CompareOptions::new(dir)).await?;
//! for row in &report.rows {
//!     let s = row.summary();
//!     println!("{} c={} {}B: {:.0} writes/s", s.system, s.concurrency, s.value_bytes, s.writes_per_s);
//! }
//! for skipped in &report.skipped {
//!     println!("{} skipped: {}", skipped.system, skipped.reason);
//! }
//! # Ok(()) }
//! ```

mod etcd;
mod process;
mod zookeeper;

use bytes::Bytes;
use std::path::PathBuf;
use std::time::Duration;

pub use etcd::{bench_etcd, EtcdCluster, EtcdInstall};
pub use process::find_free_ports;
pub use zookeeper::{bench_zookeeper, ZkEnsemble, ZkInstall};

use crate::loadgen::LoadResult;

/// How to install the servers on Debian or Ubuntu.
pub const ETCD_INSTALL_HINT: &str = "apt-get install etcd-server";
/// How to install ZooKeeper (and a Java runtime) on Debian or Ubuntu.
pub const ZOOKEEPER_INSTALL_HINT: &str = "apt-get install zookeeper";

/// A system compared against the reference node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// etcd 3.x (Raft, bbolt + WAL).
    Etcd,
    /// Apache ZooKeeper 3.x (Zab).
    ZooKeeper,
}

impl System {
    /// The lowercase name used in reports: `etcd` or `zookeeper`.
    pub fn name(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::ZooKeeper => "zookeeper",
        }
    }
}

impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong while starting, loading or stopping a
/// comparison cluster.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A server binary, the Java runtime or a jar is not installed.
    #[error("{system}: {what} not found at {}; install it with `{install}`", path.display())]
    BinaryMissing {
        /// The system that needs it.
        system: System,
        /// What is missing (`etcd binary`, `java`, `zookeeper.jar`).
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The command that installs it.
        install: &'static str,
    },
    /// A port the cluster needs is already taken on 127.0.0.1.
    #[error("{system}: port {port} on 127.0.0.1 is in use: {source}")]
    PortInUse {
        /// The system being started.
        system: System,
        /// The port.
        port: u16,
        /// The bind error.
        source: std::io::Error,
    },
    /// No range of free consecutive ports was found.
    #[error("no {count} consecutive free ports on 127.0.0.1 from {start} in {tries} tries")]
    NoFreePorts {
        /// First port tried.
        start: u16,
        /// Ports needed.
        count: u16,
        /// Ranges tried.
        tries: u16,
    },
    /// A data directory already holds files; clusters never reuse old data.
    #[error("{system}: directory {} is not empty; pass a fresh base directory", path.display())]
    DirNotEmpty {
        /// The system being started.
        system: System,
        /// The directory.
        path: PathBuf,
    },
    /// A file or directory operation failed.
    #[error("{context} ({}): {source}", path.display())]
    Io {
        /// What was being done.
        context: String,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A server process could not be started.
    #[error("{system}: cannot start member {member} ({}): {source}", program.display())]
    Spawn {
        /// The system being started.
        system: System,
        /// The member's name.
        member: String,
        /// The program that was run.
        program: PathBuf,
        /// The spawn error.
        source: std::io::Error,
    },
    /// A server process exited while it should be running.
    #[error("{system}: member {member} exited ({status}); log {}:\n{log_tail}", log.display())]
    Exited {
        /// The system.
        system: System,
        /// The member's name.
        member: String,
        /// Its exit status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        log_tail: String,
    },
    /// The cluster did not become healthy in time.
    #[error("{system}: cluster not healthy after {waited_ms} ms ({attempts} checks): {last_error}; logs in {}", logs.display())]
    NotHealthy {
        /// The system.
        system: System,
        /// How long start-up waited.
        waited_ms: u64,
        /// Health checks made.
        attempts: u32,
        /// The last check's failure.
        last_error: String,
        /// The directory holding the members' logs.
        logs: PathBuf,
    },
    /// An etcd client call failed.
    #[error("etcd: {context}: {source}")]
    Etcd {
        /// What was being done.
        context: String,
        /// The client error.
        source: etcd_client::Error,
    },
    /// A ZooKeeper client call failed.
    #[error("zookeeper: {context}: {source}")]
    ZooKeeper {
        /// What was being done.
        context: String,
        /// The client error.
        source: zookeeper_client::Error,
    },
    /// A client call did not finish in time.
    #[error("{system}: {context} timed out after {timeout_ms} ms")]
    Timeout {
        /// The system.
        system: System,
        /// What was being done.
        context: String,
        /// The time allowed.
        timeout_ms: u64,
    },
    /// The options make no sense (e.g. zero members, zero concurrency).
    #[error("invalid comparison options: {0}")]
    InvalidOptions(String),
}

/// One write run against a running cluster.
#[derive(Clone, Debug)]
pub struct WriteLoad {
    /// Logical clients, each with one write in flight.
    pub concurrency: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// How long to run.
    pub duration: Duration,
    /// Client connections (sessions) the logical clients share; clamped to
    /// `1..=concurrency`.
    pub connections: usize,
    /// A write that takes longer counts as an error (and the client moves on).
    pub op_timeout: Duration,
}

impl WriteLoad {
    /// A run with 8 shared connections and a 10 s per-write timeout.
    pub fn new(concurrency: usize, value_bytes: usize, duration: Duration) -> WriteLoad {
        WriteLoad {
            concurrency,
            value_bytes,
            duration,
            connections: DEFAULT_CONNECTIONS,
            op_timeout: Duration::from_secs(10),
        }
    }

    fn validate(&self) -> Result<(), CompareError> {
        if self.concurrency == 0 {
            return Err(CompareError::InvalidOptions(
                "concurrency must be at least 1".to_owned(),
            ));
        }
        if self.op_timeout.is_zero() {
            return Err(CompareError::InvalidOptions(
                "op_timeout must be positive".to_owned(),
            ));
        }
        Ok(())
    }

    /// The pool size actually used.
    fn pool_size(&self) -> usize {
        self.connections.clamp(1, self.concurrency.max(1))
    }
}

/// Per-request timeout of health checks and read-backs.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A client call's failure or its timeout.
#[derive(Debug)]
pub(crate) enum WithinError<E> {
    Inner(E),
    Elapsed,
}

impl<E: std::fmt::Display> std::fmt::Display for WithinError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WithinError::Inner(e) => e.fmt(f),
            WithinError::Elapsed => write!(f, "timed out after {} ms", REQUEST_TIMEOUT.as_millis()),
        }
    }
}

/// Runs `fut` for at most [`REQUEST_TIMEOUT`].
pub(crate) async fn within<T, E>(
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, WithinError<E>> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(WithinError::Inner(e)),
        Err(_) => Err(WithinError::Elapsed),
    }
}

/// Default number of client connections shared by the logical clients.
pub const DEFAULT_CONNECTIONS: usize = 8;

/// Distinguishes runs against one cluster so that their keys never collide.
fn next_run_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static RUN: AtomicU64 = AtomicU64::new(1);
    RUN.fetch_add(1, Ordering::Relaxed)
}

/// What [`run_comparison`] measures.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Parent of every data directory and log (`<base>/etcd`, `<base>/zookeeper`);
    /// these subdirectories must not exist yet or be empty.
    pub base_dir: PathBuf,
    /// Members per cluster (3 in the issue's comparison; odd, at least 1).
    pub members: usize,
    /// The systems to run, in order.
    pub systems: Vec<System>,
    /// Client concurrency levels.
    pub concurrency: Vec<usize>,
    /// Value sizes in bytes.
    pub value_bytes: Vec<usize>,
    /// Length of each measured run.
    pub duration: Duration,
    /// An unmeasured run before the first measured one of each system (lets
    /// the JVM compile ZooKeeper's hot paths); zero to skip.
    pub warmup: Duration,
    /// Client connections shared by the logical clients.
    pub connections: usize,
    /// Per-write timeout.
    pub op_timeout: Duration,
    /// Acknowledged writes read back after each run to check none was lost
    /// (a sample spread over the run); zero to skip the check.
    pub verify_sample: usize,
    /// First port to look for free ports from.
    pub port_search_start: u16,
    /// The etcd binary; `None` looks in `PAXOS_COMPARE_ETCD`, `PATH`, `/usr/bin`.
    pub etcd_binary: Option<PathBuf>,
    /// The `java` binary; `None` looks in `PAXOS_COMPARE_JAVA`, `JAVA_HOME`, `PATH`.
    pub java_binary: Option<PathBuf>,
    /// ZooKeeper's server jar; `None` looks in `PAXOS_COMPARE_ZK_JAR`, then
    /// Debian's `/usr/share/java/zookeeper.jar`.
    pub zookeeper_jar: Option<PathBuf>,
}

impl CompareOptions {
    /// The issue's grid: 3 members, etcd then ZooKeeper, concurrency 1, 16 and
    /// 64, values of 100 B and 1 KiB, 5 s runs after a 5 s warm-up.
    pub fn new(base_dir: PathBuf) -> CompareOptions {
        CompareOptions {
            base_dir,
            members: 3,
            systems: vec![System::Etcd, System::ZooKeeper],
            concurrency: vec![1, 16, 64],
            value_bytes: vec![100, 1024],
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(5),
            connections: DEFAULT_CONNECTIONS,
            op_timeout: Duration::from_secs(10),
            verify_sample: 100,
            port_search_start: 24000,
            etcd_binary: None,
            java_binary: None,
            zookeeper_jar: None,
        }
    }

    fn validate(&self) -> Result<(), CompareError> {
        if self.members == 0 || self.members % 2 == 0 {
            return Err(CompareError::InvalidOptions(format!(
                "members must be odd and at least 1, got {}",
                self.members
            )));
        }
        if self.concurrency.contains(&0) {
            return Err(CompareError::InvalidOptions(
                "a concurrency level is 0".to_owned(),
            ));
        }
        if self.duration.is_zero() {
            return Err(CompareError::InvalidOptions(
                "duration must be positive".to_owned(),
            ));
        }
        Ok(())
    }
}

/// One measured run.
#[derive(Clone, Debug)]
pub struct CompareRow {
    /// The system measured.
    pub system: System,
    /// Logical clients.
    pub concurrency: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// The generator's figures.
    pub result: LoadResult,
    /// Acknowledged writes read back after the run.
    pub verified: usize,
    /// Of those, how many were missing or had another value (must be 0).
    pub lost: usize,
}

/// The headline figures of a [`CompareRow`], ready for JSON.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RowSummary {
    /// `etcd` or `zookeeper`.
    pub system: System,
    /// Logical clients.
    pub concurrency: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Acknowledged writes per second.
    pub writes_per_s: f64,
    /// Median latency in microseconds.
    pub p50_us: f64,
    /// 99th percentile latency in microseconds.
    pub p99_us: f64,
    /// 99.9th percentile latency in microseconds.
    pub p999_us: f64,
    /// Writes that failed or timed out.
    pub errors: u64,
    /// Acknowledged writes read back.
    pub verified: usize,
    /// Acknowledged writes not found on read-back.
    pub lost: usize,
}

impl CompareRow {
    /// The row's headline figures.
    pub fn summary(&self) -> RowSummary {
        RowSummary {
            system: self.system,
            concurrency: self.concurrency,
            value_bytes: self.value_bytes,
            writes_per_s: self.result.throughput(),
            p50_us: self.result.quantile_us(0.50),
            p99_us: self.result.quantile_us(0.99),
            p999_us: self.result.quantile_us(0.999),
            errors: self.result.errors,
            verified: self.verified,
            lost: self.lost,
        }
    }
}

/// A system that was not measured, and why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SkippedSystem {
    /// The system.
    pub system: System,
    /// Why (with the install command when a binary is missing).
    pub reason: String,
}

/// What [`run_comparison`] returns.
#[derive(Clone, Debug, Default)]
pub struct Comparison {
    /// One row per system, value size and concurrency, in run order.
    pub rows: Vec<CompareRow>,
    /// Systems not measured (missing binaries, failed start-up).
    pub skipped: Vec<SkippedSystem>,
}

/// Picks `count` evenly spread items of `acked` (all of them if fewer).
fn sample<T>(acked: &[T], count: usize) -> impl Iterator<Item = &T> {
    let step = if count == 0 {
        usize::MAX
    } else {
        acked.len().div_ceil(count).max(1)
    };
    acked.iter().step_by(step).take(count)
}

/// Starts each system in turn, runs every (value size, concurrency) pair of
/// `opts` against it, stops it, and returns the rows.
///
/// A system whose binaries are missing, or whose cluster fails to start or
/// breaks during its runs, is reported in [`Comparison::skipped`] (with rows
/// measured before the failure kept); only invalid options or an unusable base
/// directory fail the call.
pub async fn run_comparison(opts: CompareOptions) -> Result<Comparison, CompareError> {
    opts.validate()?;
    std::fs::create_dir_all(&opts.base_dir).map_err(|source| CompareError::Io {
        context: "creating the comparison base directory".to_owned(),
        path: opts.base_dir.clone(),
        source,
    })?;
    let mut report = Comparison::default();
    for &system in &opts.systems {
        let before = report.rows.len();
        let outcome = match system {
            System::Etcd => run_etcd(&opts, &mut report.rows).await,
            System::ZooKeeper => run_zookeeper(&opts, &mut report.rows).await,
        };
        if let Err(e) = outcome {
            let reason = match &e {
                CompareError::BinaryMissing { .. } => format!("not installed: {e}"),
                _ => format!(
                    "failed after {} measured runs: {e}",
                    report.rows.len() - before
                ),
            };
            tracing::warn!(%system, %reason, "system skipped");
            report.skipped.push(SkippedSystem { system, reason });
        }
    }
    Ok(report)
}

fn grid(opts: &CompareOptions) -> impl Iterator<Item = (usize, usize)> + '_ {
    opts.value_bytes
        .iter()
        .flat_map(|&v| opts.concurrency.iter().map(move |&c| (v, c)))
}

fn load_for(
    opts: &CompareOptions,
    concurrency: usize,
    value_bytes: usize,
    duration: Duration,
) -> WriteLoad {
    WriteLoad {
        concurrency,
        value_bytes,
        duration,
        connections: opts.connections,
        op_timeout: opts.op_timeout,
    }
}

/// The port ranges tried for a free range before giving up.
const PORT_SEARCH_TRIES: u16 = 200;

async fn run_etcd(opts: &CompareOptions, rows: &mut Vec<CompareRow>) -> Result<(), CompareError> {
    let install = EtcdInstall::locate(opts.etcd_binary.clone())?;
    let ports = u16::try_from(opts.members * EtcdCluster::PORTS_PER_MEMBER)
        .map_err(|_| CompareError::InvalidOptions(format!("too many members: {}", opts.members)))?;
    let base_port = find_free_ports(opts.port_search_start, ports, PORT_SEARCH_TRIES)?;
    let mut cluster = EtcdCluster::start_with(
        &install,
        &opts.base_dir.join("etcd"),
        opts.members,
        base_port,
    )
    .await?;
    let measured = measure(System::Etcd, opts, &cluster, rows).await;
    let stopped = cluster.stop();
    measured?;
    stopped
}

/// A running cluster of a system under comparison.
trait Target {
    /// Runs one write load.
    async fn bench(&self, load: &WriteLoad) -> Result<LoadResult, CompareError>;
    /// Reads back acknowledged writes: (checked, lost).
    async fn verify_writes(
        &self,
        writes: Vec<&(Bytes, Bytes)>,
    ) -> Result<(usize, usize), CompareError>;
}

impl Target for EtcdCluster {
    async fn bench(&self, load: &WriteLoad) -> Result<LoadResult, CompareError> {
        bench_etcd(self, load).await
    }
    async fn verify_writes(
        &self,
        writes: Vec<&(Bytes, Bytes)>,
    ) -> Result<(usize, usize), CompareError> {
        self.verify(writes.into_iter()).await
    }
}

impl Target for ZkEnsemble {
    async fn bench(&self, load: &WriteLoad) -> Result<LoadResult, CompareError> {
        bench_zookeeper(self, load).await
    }
    async fn verify_writes(
        &self,
        writes: Vec<&(Bytes, Bytes)>,
    ) -> Result<(usize, usize), CompareError> {
        self.verify(writes.into_iter()).await
    }
}

/// The warm-up, then every point of the grid with a read-back of a sample of
/// its acknowledged writes; the same for every system.
async fn measure<T: Target>(
    system: System,
    opts: &CompareOptions,
    target: &T,
    rows: &mut Vec<CompareRow>,
) -> Result<(), CompareError> {
    if !opts.warmup.is_zero() {
        let load = load_for(
            opts,
            warmup_concurrency(opts),
            warmup_value(opts),
            opts.warmup,
        );
        let warm = target.bench(&load).await?;
        tracing::info!(%system, writes = warm.ok, errors = warm.errors, "warm-up done");
    }
    for (value_bytes, concurrency) in grid(opts) {
        let load = load_for(opts, concurrency, value_bytes, opts.duration);
        let result = target.bench(&load).await?;
        let writes: Vec<_> = sample(&result.acked, opts.verify_sample).collect();
        let (verified, lost) = target.verify_writes(writes).await?;
        rows.push(row(system, &load, result, verified, lost));
    }
    Ok(())
}

async fn run_zookeeper(
    opts: &CompareOptions,
    rows: &mut Vec<CompareRow>,
) -> Result<(), CompareError> {
    let install = ZkInstall::locate(opts.java_binary.clone(), opts.zookeeper_jar.clone())?;
    let ports = u16::try_from(opts.members * ZkEnsemble::PORTS_PER_MEMBER)
        .map_err(|_| CompareError::InvalidOptions(format!("too many members: {}", opts.members)))?;
    // Away from etcd's range, whose ports may linger in TIME_WAIT.
    let start = opts.port_search_start.saturating_add(1000);
    let base_port = find_free_ports(start, ports, PORT_SEARCH_TRIES)?;
    let mut ensemble = ZkEnsemble::start_with(
        &install,
        &opts.base_dir.join("zookeeper"),
        opts.members,
        base_port,
    )
    .await?;
    let measured = measure(System::ZooKeeper, opts, &ensemble, rows).await;
    let stopped = ensemble.stop();
    measured?;
    stopped
}

fn warmup_concurrency(opts: &CompareOptions) -> usize {
    opts.concurrency.iter().copied().max().unwrap_or(1)
}

fn warmup_value(opts: &CompareOptions) -> usize {
    opts.value_bytes.first().copied().unwrap_or(100)
}

fn row(
    system: System,
    load: &WriteLoad,
    result: LoadResult,
    verified: usize,
    lost: usize,
) -> CompareRow {
    let row = CompareRow {
        system,
        concurrency: load.concurrency,
        value_bytes: load.value_bytes,
        result,
        verified,
        lost,
    };
    let s = row.summary();
    tracing::info!(
        %system,
        concurrency = s.concurrency,
        value_bytes = s.value_bytes,
        writes_per_s = s.writes_per_s,
        p50_us = s.p50_us,
        p99_us = s.p99_us,
        errors = s.errors,
        verified,
        lost,
        "run measured"
    );
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_spreads_over_the_whole_slice_and_respects_the_count() {
        let items: Vec<u32> = (0..1000).collect();
        let picked: Vec<u32> = sample(&items, 10).copied().collect();
        assert_eq!(picked.len(), 10);
        assert_eq!(picked[0], 0);
        assert!(
            picked[9] >= 900,
            "the sample reaches the end of the run: {picked:?}"
        );
        assert_eq!(sample(&items, 0).count(), 0);
        assert_eq!(sample(&items[..3], 10).count(), 3);
        assert_eq!(sample::<u32>(&[], 10).count(), 0);
    }

    #[test]
    fn options_reject_even_member_counts_and_zero_concurrency() {
        let mut opts = CompareOptions::new(PathBuf::from("/nonexistent"));
        assert!(opts.validate().is_ok());
        opts.members = 2;
        assert!(matches!(
            opts.validate(),
            Err(CompareError::InvalidOptions(_))
        ));
        opts.members = 3;
        opts.concurrency = vec![1, 0];
        assert!(matches!(
            opts.validate(),
            Err(CompareError::InvalidOptions(_))
        ));
    }

    #[test]
    fn grid_runs_every_concurrency_for_each_value_size() {
        let mut opts = CompareOptions::new(PathBuf::from("/nonexistent"));
        opts.concurrency = vec![1, 16];
        opts.value_bytes = vec![100, 1024];
        let pairs: Vec<_> = grid(&opts).collect();
        assert_eq!(pairs, vec![(100, 1), (100, 16), (1024, 1), (1024, 16)]);
    }
}
