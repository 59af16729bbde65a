//! An etcd cluster of child processes on 127.0.0.1, and its write load.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::{Client, ConnectOptions, KvClient};

use super::process::{self, Member};
use super::{
    next_run_id, within, CompareError, System, WithinError, WriteLoad, ETCD_INSTALL_HINT,
    REQUEST_TIMEOUT,
};
use crate::loadgen::{closed_loop, key_for, LoadResult};

/// Where Debian's `etcd-server` package puts the binary.
const DEBIAN_ETCD: &str = "/usr/bin/etcd";

/// Longest wait for a started cluster to elect a leader and serve a read.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two health checks during start-up.
const HEALTH_POLL: Duration = Duration::from_millis(250);
/// Connect timeout of every client this module opens.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A located etcd server binary.
#[derive(Clone, Debug)]
pub struct EtcdInstall {
    binary: PathBuf,
}

impl EtcdInstall {
    /// Finds the etcd binary: `binary` if given, else `PAXOS_COMPARE_ETCD`, else
    /// `etcd` on `PATH`, else `/usr/bin/etcd`. Fails with
    /// [`CompareError::BinaryMissing`] (naming `apt-get install etcd-server`)
    /// if the chosen path is not an executable file.
    pub fn locate(binary: Option<PathBuf>) -> Result<EtcdInstall, CompareError> {
        let binary = binary
            .or_else(|| std::env::var_os("PAXOS_COMPARE_ETCD").map(PathBuf::from))
            .or_else(|| process::find_on_path("etcd"))
            .unwrap_or_else(|| PathBuf::from(DEBIAN_ETCD));
        if !process::is_executable(&binary) {
            return Err(CompareError::BinaryMissing {
                system: System::Etcd,
                what: "etcd binary",
                path: binary,
                install: ETCD_INSTALL_HINT,
            });
        }
        Ok(EtcdInstall { binary })
    }

    /// The binary's path.
    pub fn binary(&self) -> &Path {
        &self.binary
    }
}

/// A running etcd cluster: one child process per member on 127.0.0.1, each
/// with its own data directory and log file under the cluster's directory.
///
/// Dropping the cluster kills and reaps every member (also when a panic
/// unwinds); [`EtcdCluster::stop`] stops them gracefully first.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: PathBuf,
    members: Vec<Member>,
    client_urls: Vec<String>,
}

impl EtcdCluster {
    /// Ports used per member from the base port: client, then peer.
    pub const PORTS_PER_MEMBER: usize = 2;

    /// Locates etcd (see [`EtcdInstall::locate`]) and starts a cluster; see
    /// [`EtcdCluster::start_with`].
    pub async fn start(
        dir: &Path,
        members: usize,
        base_port: u16,
    ) -> Result<EtcdCluster, CompareError> {
        let install = EtcdInstall::locate(None)?;
        EtcdCluster::start_with(&install, dir, members, base_port).await
    }

    /// Starts `members` etcd members with a static `--initial-cluster`, member
    /// `i` (named `m<i>`) serving clients on `base_port + 2i` and peers on
    /// `base_port + 2i + 1`, its data in `dir/m<i>` and its output in
    /// `dir/m<i>.log`; fsync is etcd's default (on). Returns once every member
    /// reports the same leader and a linearizable read succeeds, or fails
    /// after at most 60 s with [`CompareError::NotHealthy`] (or at once with
    /// [`CompareError::Exited`] if a member dies).
    ///
    /// `dir` must not exist or be empty; the ports must be free.
    pub async fn start_with(
        install: &EtcdInstall,
        dir: &Path,
        members: usize,
        base_port: u16,
    ) -> Result<EtcdCluster, CompareError> {
        if members == 0 {
            return Err(CompareError::InvalidOptions(
                "an etcd cluster needs at least one member".to_owned(),
            ));
        }
        let ports = member_ports(members, base_port)?;
        process::fresh_dir(System::Etcd, dir)?;
        let flat: Vec<u16> = ports.iter().flat_map(|&(c, p)| [c, p]).collect();
        process::check_ports_free(System::Etcd, &flat)?;

        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        // Unique per start so that members never join a stale cluster.
        let token = format!("paxos-compare-{}-{base_port}", std::process::id());
        let mut cluster = EtcdCluster {
            dir: dir.to_path_buf(),
            members: Vec::with_capacity(members),
            client_urls: ports
                .iter()
                .map(|(client, _)| format!("http://127.0.0.1:{client}"))
                .collect(),
        };
        for (i, &(client, peer)) in ports.iter().enumerate() {
            let name = format!("m{i}");
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let mut command = Command::new(&install.binary);
            command
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(dir.join(&name))
                .arg("--listen-client-urls")
                .arg(&client_url)
                .arg("--advertise-client-urls")
                .arg(&client_url)
                .arg("--listen-peer-urls")
                .arg(&peer_url)
                .arg("--initial-advertise-peer-urls")
                .arg(&peer_url)
                .arg("--initial-cluster")
                .arg(&initial_cluster)
                .arg("--initial-cluster-token")
                .arg(&token)
                .arg("--initial-cluster-state")
                .arg("new");
            let log = dir.join(format!("{name}.log"));
            // On an error the members started so far are killed by Drop.
            cluster
                .members
                .push(Member::spawn(System::Etcd, name, command, log)?);
        }
        cluster.wait_healthy().await?;
        tracing::info!(members, base_port, dir = %dir.display(), "etcd cluster healthy");
        Ok(cluster)
    }

    async fn wait_healthy(&mut self) -> Result<(), CompareError> {
        let start = Instant::now();
        let max_attempts = (START_TIMEOUT.as_millis() / HEALTH_POLL.as_millis()) as u32 + 1;
        let mut last_error = String::from("no check made");
        let mut attempts = 0;
        while attempts < max_attempts && start.elapsed() < START_TIMEOUT {
            attempts += 1;
            for member in &mut self.members {
                member.check_running()?;
            }
            match self.check_health().await {
                Ok(leader) => {
                    tracing::debug!(
                        attempts,
                        leader = format_args!("{leader:x}"),
                        "etcd healthy"
                    );
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(attempts, error = %e, "etcd not healthy yet");
                    last_error = e;
                }
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
        Err(CompareError::NotHealthy {
            system: System::Etcd,
            waited_ms: start.elapsed().as_millis() as u64,
            attempts,
            last_error,
            logs: self.dir.clone(),
        })
    }

    /// One health check: every member answers `Status` with the same leader,
    /// and a linearizable read through member 0 succeeds. Returns the leader id.
    async fn check_health(&self) -> Result<u64, String> {
        let mut leader = None;
        for i in 0..self.members.len() {
            let client = self.connect(i).await.map_err(|e| e.to_string())?;
            let status = within(client.maintenance_client().status())
                .await
                .map_err(|e| format!("status of m{i}: {e}"))?;
            let this = status.leader();
            if this == 0 {
                return Err(format!("m{i} knows no leader"));
            }
            match leader {
                None => leader = Some(this),
                Some(l) if l != this => {
                    return Err(format!(
                        "members disagree on the leader ({l:x} and {this:x})"
                    ))
                }
                Some(_) => {}
            }
        }
        let client = self.connect(0).await.map_err(|e| e.to_string())?;
        within(client.kv_client().get("paxos-bench/health", None))
            .await
            .map_err(|e| format!("linearizable read through m0: {e}"))?;
        leader.ok_or_else(|| "no member".to_owned())
    }

    /// The members' client URLs (`http://127.0.0.1:<port>`), member 0 first.
    pub fn client_urls(&self) -> &[String] {
        &self.client_urls
    }

    /// The directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A client that talks to member `member % members` only.
    pub async fn connect(&self, member: usize) -> Result<Client, CompareError> {
        assert!(
            !self.client_urls.is_empty(),
            "a started cluster has at least one member"
        );
        let url = &self.client_urls[member % self.client_urls.len()];
        let options = ConnectOptions::default()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        Client::connect([url.as_str()], Some(options))
            .await
            .map_err(|source| CompareError::Etcd {
                context: format!("connecting to {url}"),
                source,
            })
    }

    /// Reads back `writes` through member 0 (linearizable gets); returns how
    /// many were read and how many were missing or held another value.
    pub async fn verify<'a>(
        &self,
        writes: impl Iterator<Item = &'a (Bytes, Bytes)>,
    ) -> Result<(usize, usize), CompareError> {
        let mut kv = self.connect(0).await?.kv_client();
        let (mut checked, mut lost) = (0, 0);
        for (key, value) in writes {
            let response = within(kv.get(key.to_vec(), None)).await.map_err(|e| {
                etcd_error(format!("reading back {}", String::from_utf8_lossy(key)), e)
            })?;
            checked += 1;
            let found = response.kvs().first().map(|kv| kv.value());
            if found != Some(&value[..]) {
                tracing::error!(key = %String::from_utf8_lossy(key), "acknowledged etcd write missing");
                lost += 1;
            }
        }
        Ok((checked, lost))
    }

    /// Stops every member (SIGTERM, then SIGKILL after 5 s) and reaps it.
    pub fn stop(&mut self) -> Result<(), CompareError> {
        let result = process::stop_all(System::Etcd, &mut self.members);
        tracing::info!(dir = %self.dir.display(), "etcd cluster stopped");
        result
    }

    /// The process ids of the running members.
    pub fn pids(&self) -> Vec<u32> {
        process::pids(&self.members)
    }

    /// Each member's log file.
    pub fn logs(&self) -> Vec<PathBuf> {
        process::logs(&self.members)
    }
}

/// (client, peer) ports of each member.
fn member_ports(members: usize, base_port: u16) -> Result<Vec<(u16, u16)>, CompareError> {
    (0..members)
        .map(|i| {
            let client = u16::try_from(i * EtcdCluster::PORTS_PER_MEMBER)
                .ok()
                .and_then(|off| base_port.checked_add(off));
            match client.and_then(|c| c.checked_add(1).map(|p| (c, p))) {
                Some(pair) => Ok(pair),
                None => Err(CompareError::InvalidOptions(format!(
                    "{members} etcd members do not fit above port {base_port}"
                ))),
            }
        })
        .collect()
}

/// Wraps a client error with its context.
fn etcd_error(context: String, e: WithinError<etcd_client::Error>) -> CompareError {
    match e {
        WithinError::Inner(source) => CompareError::Etcd { context, source },
        WithinError::Elapsed => CompareError::Timeout {
            system: System::Etcd,
            context,
            timeout_ms: REQUEST_TIMEOUT.as_millis() as u64,
        },
    }
}

/// Runs `load` against `cluster`: every logical client puts fresh keys
/// (`r<run>/c<client>/<n>`) with a `value_bytes` value, one at a time, for
/// `load.duration`; the clients share `load.connections` channels, channel
/// `k` pinned to member `k % members`. Each channel serves one read before the
/// clock starts, so connection set-up is not measured.
///
/// A put that fails or exceeds `load.op_timeout` counts in
/// [`LoadResult::errors`]; only failing to open the pool is an `Err`.
pub async fn bench_etcd(
    cluster: &EtcdCluster,
    load: &WriteLoad,
) -> Result<LoadResult, CompareError> {
    load.validate()?;
    let mut pool: Vec<KvClient> = Vec::with_capacity(load.pool_size());
    for k in 0..load.pool_size() {
        let mut kv = cluster.connect(k).await?.kv_client();
        within(kv.get("paxos-bench/warm", None))
            .await
            .map_err(|e| etcd_error(format!("priming connection {k}"), e))?;
        pool.push(kv);
    }
    let pool = Arc::new(pool);
    let run = next_run_id();
    let value = Bytes::from(vec![b'x'; load.value_bytes]);
    let op_timeout = load.op_timeout;
    tracing::info!(
        run,
        concurrency = load.concurrency,
        value_bytes = load.value_bytes,
        connections = pool.len(),
        "etcd write run"
    );
    let result = closed_loop(load.concurrency, load.duration, move |i, n| {
        let mut kv = pool[i % pool.len()].clone();
        let value = value.clone();
        let key = key_for(run, i, n);
        async move {
            match tokio::time::timeout(op_timeout, kv.put(key.to_vec(), value.to_vec(), None)).await
            {
                Ok(Ok(_)) => Ok(Some((key, value))),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("put timed out after {} ms", op_timeout.as_millis())),
            }
        }
    })
    .await;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ports_are_distinct_and_overflow_is_an_error() {
        let ports = member_ports(3, 30000).expect("fits");
        assert_eq!(ports, vec![(30000, 30001), (30002, 30003), (30004, 30005)]);
        assert!(matches!(
            member_ports(3, u16::MAX - 2),
            Err(CompareError::InvalidOptions(_))
        ));
    }

    #[test]
    fn a_missing_binary_names_the_package_to_install() {
        let err = EtcdInstall::locate(Some(PathBuf::from("/nonexistent/etcd")))
            .expect_err("no such binary");
        assert!(matches!(
            err,
            CompareError::BinaryMissing {
                system: System::Etcd,
                ..
            }
        ));
        assert!(
            err.to_string().contains("apt-get install etcd-server"),
            "{err}"
        );
    }
}
