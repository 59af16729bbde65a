//! A ZooKeeper ensemble of child processes on 127.0.0.1, and its write load.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zookeeper_client::{Acls, Client, CreateMode, CreateOptions};

use super::process::{self, Member};
use super::{
    next_run_id, within, CompareError, System, WithinError, WriteLoad, REQUEST_TIMEOUT,
    ZOOKEEPER_INSTALL_HINT,
};
use crate::loadgen::{closed_loop, LoadResult};

/// Where Debian's `zookeeper` package puts the server jar; its manifest's
/// `Class-Path` names the dependencies (also under `/usr/share/java`).
const DEBIAN_ZK_JAR: &str = "/usr/share/java/zookeeper.jar";
/// An SLF4J binding that logs to stderr (Debian's `libslf4j-java`); without
/// one the server's log is silent. Looked for next to the server jar.
const SLF4J_SIMPLE_JAR: &str = "slf4j-simple.jar";
/// The server's entry point.
const MAIN_CLASS: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";
/// The heap `zkEnv.sh` gives a server by default.
const SERVER_HEAP: &str = "-Xmx1000m";

/// Longest wait for a started ensemble to elect a leader and accept a session.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// Pause between two readiness checks during start-up.
const READY_POLL: Duration = Duration::from_millis(250);
/// Longest answer of a four-letter word read.
const FOUR_LETTER_MAX_BYTES: u64 = 64 * 1024;
/// Session timeout asked of the servers.
const SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Where every run's znodes live.
const ROOT: &str = "/paxos-bench";

/// How every benchmark znode is created: persistent, not sequential, open ACL.
const CREATE: CreateOptions<'static> = CreateMode::Persistent.with_acls(Acls::anyone_all());

/// A located Java runtime and ZooKeeper server jar.
#[derive(Clone, Debug)]
pub struct ZkInstall {
    java: PathBuf,
    classpath: String,
}

impl ZkInstall {
    /// Finds `java` (`java` if given, else `PAXOS_COMPARE_JAVA`, else
    /// `$JAVA_HOME/bin/java`, else `java` on `PATH`) and the server jar (`jar`
    /// if given, else `PAXOS_COMPARE_ZK_JAR`, else Debian's
    /// `/usr/share/java/zookeeper.jar`, whose manifest lists its dependencies).
    /// Fails with [`CompareError::BinaryMissing`] naming
    /// `apt-get install zookeeper` if either is missing.
    pub fn locate(java: Option<PathBuf>, jar: Option<PathBuf>) -> Result<ZkInstall, CompareError> {
        // An explicit path is taken as is; `JAVA_HOME` only if it holds a java.
        let java = java
            .or_else(|| std::env::var_os("PAXOS_COMPARE_JAVA").map(PathBuf::from))
            .or_else(|| {
                std::env::var_os("JAVA_HOME")
                    .map(|home| PathBuf::from(home).join("bin/java"))
                    .filter(|p| process::is_executable(p))
            })
            .or_else(|| process::find_on_path("java"))
            .unwrap_or_else(|| PathBuf::from("/usr/bin/java"));
        if !process::is_executable(&java) {
            return Err(CompareError::BinaryMissing {
                system: System::ZooKeeper,
                what: "java",
                path: java,
                install: ZOOKEEPER_INSTALL_HINT,
            });
        }
        let jar = jar
            .or_else(|| std::env::var_os("PAXOS_COMPARE_ZK_JAR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEBIAN_ZK_JAR));
        if !jar.is_file() {
            return Err(CompareError::BinaryMissing {
                system: System::ZooKeeper,
                what: "zookeeper.jar",
                path: jar,
                install: ZOOKEEPER_INSTALL_HINT,
            });
        }
        let mut classpath = jar.to_string_lossy().into_owned();
        if let Some(binding) = jar
            .parent()
            .map(|d| d.join(SLF4J_SIMPLE_JAR))
            .filter(|p| p.is_file())
        {
            classpath.push(':');
            classpath.push_str(&binding.to_string_lossy());
        }
        Ok(ZkInstall { java, classpath })
    }

    /// The `java` binary.
    pub fn java(&self) -> &Path {
        &self.java
    }

    /// The class path given to the servers.
    pub fn classpath(&self) -> &str {
        &self.classpath
    }
}

/// A running ZooKeeper ensemble: one JVM per server on 127.0.0.1, each with
/// its own `zoo.cfg`, `myid`, data and transaction-log directories and log
/// file under the ensemble's directory.
///
/// Dropping the ensemble kills and reaps every server (also when a panic
/// unwinds); [`ZkEnsemble::stop`] stops them gracefully first.
#[derive(Debug)]
pub struct ZkEnsemble {
    dir: PathBuf,
    members: Vec<Member>,
    client_addrs: Vec<SocketAddr>,
}

impl ZkEnsemble {
    /// Ports used per server from the base port: client, quorum, election.
    pub const PORTS_PER_MEMBER: usize = 3;

    /// Locates Java and ZooKeeper (see [`ZkInstall::locate`]) and starts an
    /// ensemble; see [`ZkEnsemble::start_with`].
    pub async fn start(
        dir: &Path,
        members: usize,
        base_port: u16,
    ) -> Result<ZkEnsemble, CompareError> {
        let install = ZkInstall::locate(None, None)?;
        ZkEnsemble::start_with(&install, dir, members, base_port).await
    }

    /// Starts `members` servers: server `i + 1` serves clients on
    /// `base_port + 3i`, its quorum on `+1` and leader election on `+2`, with
    /// `dir/server<id>/zoo.cfg` (ZooKeeper's shipped defaults: `tickTime`
    /// 2000, `forceSync` yes), its snapshots in `dir/server<id>/data`, its
    /// transaction log in `dir/server<id>/datalog`, all four-letter words
    /// allowed, the admin server off, and its output in `dir/server<id>.log`.
    /// Returns once every server answers `srvr` as leader or follower (one
    /// leader) and the root znode of the benchmark exists, or fails after at
    /// most 90 s with [`CompareError::NotHealthy`] (or at once with
    /// [`CompareError::Exited`] if a server dies).
    ///
    /// `dir` must not exist or be empty; the ports must be free.
    pub async fn start_with(
        install: &ZkInstall,
        dir: &Path,
        members: usize,
        base_port: u16,
    ) -> Result<ZkEnsemble, CompareError> {
        if members == 0 {
            return Err(CompareError::InvalidOptions(
                "a ZooKeeper ensemble needs at least one server".to_owned(),
            ));
        }
        let ports = member_ports(members, base_port)?;
        process::fresh_dir(System::ZooKeeper, dir)?;
        let flat: Vec<u16> = ports.iter().flat_map(|p| p.iter().copied()).collect();
        process::check_ports_free(System::ZooKeeper, &flat)?;

        let servers: String = ports
            .iter()
            .enumerate()
            .map(|(i, [_, quorum, election])| {
                format!("server.{}=127.0.0.1:{quorum}:{election}\n", i + 1)
            })
            .collect();
        let mut ensemble = ZkEnsemble {
            dir: dir.to_path_buf(),
            members: Vec::with_capacity(members),
            client_addrs: ports
                .iter()
                .map(|[client, _, _]| SocketAddr::from((Ipv4Addr::LOCALHOST, *client)))
                .collect(),
        };
        for (i, [client, _, _]) in ports.iter().enumerate() {
            let id = i + 1;
            let server_dir = dir.join(format!("server{id}"));
            let data = server_dir.join("data");
            let datalog = server_dir.join("datalog");
            for d in [&data, &datalog] {
                std::fs::create_dir_all(d).map_err(|source| CompareError::Io {
                    context: "creating a ZooKeeper data directory".to_owned(),
                    path: d.clone(),
                    source,
                })?;
            }
            process::write_file(&data.join("myid"), &format!("{id}\n"))?;
            let cfg = server_dir.join("zoo.cfg");
            process::write_file(
                &cfg,
                &format!(
                    "# Written by paxos-bench's comparison harness.\n\
                     tickTime=2000\n\
                     initLimit=10\n\
                     syncLimit=5\n\
                     dataDir={}\n\
                     dataLogDir={}\n\
                     clientPort={client}\n\
                     clientPortAddress=127.0.0.1\n\
                     admin.enableServer=false\n\
                     4lw.commands.whitelist=*\n\
                     {servers}",
                    data.display(),
                    datalog.display(),
                ),
            )?;
            let mut command = Command::new(&install.java);
            command
                .arg(SERVER_HEAP)
                .arg(format!("-Dzookeeper.log.dir={}", server_dir.display()))
                .arg("-cp")
                .arg(&install.classpath)
                .arg(MAIN_CLASS)
                .arg(&cfg)
                .current_dir(&server_dir);
            let log = dir.join(format!("server{id}.log"));
            // On an error the servers started so far are killed by Drop.
            ensemble.members.push(Member::spawn(
                System::ZooKeeper,
                format!("server.{id}"),
                command,
                log,
            )?);
        }
        ensemble.wait_ready().await?;
        tracing::info!(members, base_port, dir = %dir.display(), "zookeeper ensemble ready");
        Ok(ensemble)
    }

    async fn wait_ready(&mut self) -> Result<(), CompareError> {
        let start = Instant::now();
        let max_attempts = (START_TIMEOUT.as_millis() / READY_POLL.as_millis()) as u32 + 1;
        let mut last_error = String::from("no check made");
        let mut attempts = 0;
        while attempts < max_attempts && start.elapsed() < START_TIMEOUT {
            attempts += 1;
            for member in &mut self.members {
                member.check_running()?;
            }
            match self.check_ready().await {
                Ok(()) => {
                    tracing::debug!(attempts, "zookeeper ready");
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(attempts, error = %e, "zookeeper not ready yet");
                    last_error = e;
                }
            }
            tokio::time::sleep(READY_POLL).await;
        }
        Err(CompareError::NotHealthy {
            system: System::ZooKeeper,
            waited_ms: start.elapsed().as_millis() as u64,
            attempts,
            last_error,
            logs: self.dir.clone(),
        })
    }

    /// One readiness check: every server's `srvr` reports its mode, with one
    /// leader (or one standalone server); then the benchmark root exists.
    async fn check_ready(&self) -> Result<(), String> {
        let mut leaders = 0;
        for (i, addr) in self.client_addrs.iter().enumerate() {
            let answer = four_letter_word(*addr, "srvr")
                .await
                .map_err(|e| format!("srvr to server.{}: {e}", i + 1))?;
            match server_mode(&answer) {
                Some("leader" | "standalone") => leaders += 1,
                Some("follower") => {}
                Some(other) => return Err(format!("server.{} is {other}", i + 1)),
                None => return Err(format!("server.{} not serving: {}", i + 1, answer.trim())),
            }
        }
        if leaders != 1 {
            return Err(format!("{leaders} leaders"));
        }
        let client = self.connect(0).await.map_err(|e| e.to_string())?;
        match within(client.create(ROOT, &[], &CREATE)).await {
            Ok(_) | Err(WithinError::Inner(zookeeper_client::Error::NodeExists)) => Ok(()),
            Err(e) => Err(format!("creating {ROOT}: {e}")),
        }
    }

    /// The servers' client addresses, server.1 first.
    pub fn client_addrs(&self) -> &[SocketAddr] {
        &self.client_addrs
    }

    /// The directory holding the servers' configuration, data and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A session with server `member % members` only.
    pub async fn connect(&self, member: usize) -> Result<Client, CompareError> {
        assert!(
            !self.client_addrs.is_empty(),
            "a started ensemble has at least one server"
        );
        let addr = self.client_addrs[member % self.client_addrs.len()];
        let addr_text = addr.to_string();
        let connect = Client::connector()
            .with_session_timeout(SESSION_TIMEOUT)
            .with_fail_eagerly()
            .connect(&addr_text);
        match tokio::time::timeout(SESSION_TIMEOUT, connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(source)) => Err(CompareError::ZooKeeper {
                context: format!("connecting to {addr}"),
                source,
            }),
            Err(_) => Err(CompareError::Timeout {
                system: System::ZooKeeper,
                context: format!("connecting to {addr}"),
                timeout_ms: SESSION_TIMEOUT.as_millis() as u64,
            }),
        }
    }

    /// Reads back `writes` (znode path, data) through server.1 after a `sync`;
    /// returns how many were read and how many were missing or held other data.
    pub async fn verify<'a>(
        &self,
        writes: impl Iterator<Item = &'a (Bytes, Bytes)>,
    ) -> Result<(usize, usize), CompareError> {
        let client = self.connect(0).await?;
        within(client.sync(ROOT))
            .await
            .map_err(|e| zk_error(format!("sync of {ROOT}"), e))?;
        let (mut checked, mut lost) = (0, 0);
        for (path, value) in writes {
            let path = String::from_utf8_lossy(path);
            checked += 1;
            match within(client.get_data(&path)).await {
                Ok((data, _)) if data[..] == value[..] => {}
                Ok(_) | Err(WithinError::Inner(zookeeper_client::Error::NoNode)) => {
                    tracing::error!(%path, "acknowledged zookeeper write missing");
                    lost += 1;
                }
                Err(e) => return Err(zk_error(format!("reading back {path}"), e)),
            }
        }
        Ok((checked, lost))
    }

    /// Stops every server (SIGTERM, then SIGKILL after 5 s) and reaps it.
    pub fn stop(&mut self) -> Result<(), CompareError> {
        let result = process::stop_all(System::ZooKeeper, &mut self.members);
        tracing::info!(dir = %self.dir.display(), "zookeeper ensemble stopped");
        result
    }

    /// The process ids of the running servers.
    pub fn pids(&self) -> Vec<u32> {
        process::pids(&self.members)
    }

    /// Each server's log file.
    pub fn logs(&self) -> Vec<PathBuf> {
        process::logs(&self.members)
    }
}

/// [client, quorum, election] ports of each server.
fn member_ports(members: usize, base_port: u16) -> Result<Vec<[u16; 3]>, CompareError> {
    (0..members)
        .map(|i| {
            let first = u16::try_from(i * ZkEnsemble::PORTS_PER_MEMBER)
                .ok()
                .and_then(|off| base_port.checked_add(off));
            match first.and_then(|c| c.checked_add(2).map(|_| [c, c + 1, c + 2])) {
                Some(ports) => Ok(ports),
                None => Err(CompareError::InvalidOptions(format!(
                    "{members} ZooKeeper servers do not fit above port {base_port}"
                ))),
            }
        })
        .collect()
}

/// The `Mode:` line of a `srvr` answer, if the server is serving.
fn server_mode(srvr: &str) -> Option<&str> {
    srvr.lines()
        .find_map(|line| line.strip_prefix("Mode:"))
        .map(str::trim)
}

/// Sends a four-letter word and reads the answer (bounded in size and time).
async fn four_letter_word(addr: SocketAddr, word: &str) -> Result<String, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(word.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream
            .take(FOUR_LETTER_MAX_BYTES)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(String::from_utf8_lossy(&answer).into_owned())
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer in {} ms", REQUEST_TIMEOUT.as_millis())),
    }
}

/// Wraps a client error with its context.
fn zk_error(context: String, e: WithinError<zookeeper_client::Error>) -> CompareError {
    match e {
        WithinError::Inner(source) => CompareError::ZooKeeper { context, source },
        WithinError::Elapsed => CompareError::Timeout {
            system: System::ZooKeeper,
            context,
            timeout_ms: REQUEST_TIMEOUT.as_millis() as u64,
        },
    }
}

/// Runs `load` against `ensemble`: every logical client creates fresh
/// PERSISTENT znodes `/paxos-bench/r<run>/c<client>-<n>` holding a
/// `value_bytes` value, one at a time, for `load.duration`; the clients share
/// `load.connections` sessions, session `k` with server `k % members`.
///
/// A create that fails or exceeds `load.op_timeout` counts in
/// [`LoadResult::errors`]; only failing to open the pool or to create the
/// run's parent znode is an `Err`.
pub async fn bench_zookeeper(
    ensemble: &ZkEnsemble,
    load: &WriteLoad,
) -> Result<LoadResult, CompareError> {
    load.validate()?;
    let mut pool: Vec<Client> = Vec::with_capacity(load.pool_size());
    for k in 0..load.pool_size() {
        pool.push(ensemble.connect(k).await?);
    }
    let run = next_run_id();
    let parent = format!("{ROOT}/r{run}");
    match within(pool[0].create(&parent, &[], &CREATE)).await {
        Ok(_) | Err(WithinError::Inner(zookeeper_client::Error::NodeExists)) => {}
        Err(e) => return Err(zk_error(format!("creating {parent}"), e)),
    }
    let pool = Arc::new(pool);
    let parent: Arc<str> = parent.into();
    let value = Bytes::from(vec![b'x'; load.value_bytes]);
    let op_timeout = load.op_timeout;
    tracing::info!(
        run,
        concurrency = load.concurrency,
        value_bytes = load.value_bytes,
        connections = pool.len(),
        "zookeeper write run"
    );
    let result = closed_loop(load.concurrency, load.duration, move |i, n| {
        let client = pool[i % pool.len()].clone();
        let value = value.clone();
        let path = format!("{parent}/c{i}-{n}");
        async move {
            match tokio::time::timeout(op_timeout, client.create(&path, &value, &CREATE)).await {
                Ok(Ok(_)) => Ok(Some((Bytes::from(path), value))),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "create timed out after {} ms",
                    op_timeout.as_millis()
                )),
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
    fn server_mode_reads_the_mode_line_only_when_serving() {
        let serving = "Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0.0/0\nMode: follower\nNode count: 5\n";
        assert_eq!(server_mode(serving), Some("follower"));
        assert_eq!(
            server_mode("This ZooKeeper instance is not currently serving requests\n"),
            None
        );
        assert_eq!(server_mode(""), None);
    }

    #[test]
    fn member_ports_are_distinct_and_overflow_is_an_error() {
        let ports = member_ports(2, 40000).expect("fits");
        assert_eq!(ports, vec![[40000, 40001, 40002], [40003, 40004, 40005]]);
        assert!(matches!(
            member_ports(3, u16::MAX - 4),
            Err(CompareError::InvalidOptions(_))
        ));
    }

    #[test]
    fn a_missing_jar_names_the_package_to_install() {
        let err = ZkInstall::locate(None, Some(PathBuf::from("/nonexistent/zookeeper.jar")));
        // Without Java installed the error names java instead; both point at the package.
        let err = err.expect_err("no such jar");
        assert!(matches!(
            err,
            CompareError::BinaryMissing {
                system: System::ZooKeeper,
                ..
            }
        ));
        assert!(
            err.to_string().contains("apt-get install zookeeper"),
            "{err}"
        );
    }
}
