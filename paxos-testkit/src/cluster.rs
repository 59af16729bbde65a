//! A local cluster of reference nodes, each a separate `paxos-node` process
//! on loopback with its own data directory: what the end-to-end benchmark,
//! the integration tests and `cargo xtask cluster` start.
//!
//! Processes are killed (SIGKILL) when the cluster is dropped, so a failing
//! test or benchmark never leaves nodes behind.
//!
//! Ports: the members table must be fixed before any node starts, so ports
//! are chosen up front: probed free for both TCP and UDP, at a random place
//! below the kernel's ephemeral range (where the ports of outgoing
//! connections and `bind(0)` come from, so few other processes take them).
//! A port can still be taken between the probe and the node's bind; such a
//! node exits with [`EXIT_ADDR_IN_USE`], and [`LocalCluster::start`] then
//! stops every node and starts the whole cluster again on fresh ports (at
//! most [`START_ATTEMPTS`] times). `start` returns once every node answers
//! a status request on its client port from its own process id.
//!
//! Client ports speak TLS: the cluster's certificate directory also holds
//! client certificates ([`ClusterSpec::clients`]: by default [`BENCH_CLIENT`],
//! read-write, and [`READER_CLIENT`], read-only), and
//! [`LocalCluster::client_security`] hands out the configuration a client
//! needs. [`ClusterSpec::insecure_plaintext_clients`] runs the nodes with
//! `--insecure-plaintext-clients` instead.

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paxos_kv::auth::Role;
use paxos_kv::client::Client;
use paxos_kv::client_proto::{next_frame, Request, Response};
use paxos_kv::node::{format_members, Member, EXIT_ADDR_IN_USE};
use paxos_kv::tls::{ClientSecurity, ClientTlsConfig};

/// The read-write client every local cluster has a certificate for.
pub const BENCH_CLIENT: &str = "bench";
/// The read-only client every local cluster has a certificate for.
pub const READER_CLIENT: &str = "reader";

/// The peer port of a node with a [`Placement`] (its address is its own).
pub const PLACED_PEER_PORT: u16 = 7100;
/// The client port of a node with a [`Placement`].
pub const PLACED_CLIENT_PORT: u16 = 7101;

/// Where the nodes of a [`LocalCluster`] run, when not all on loopback: each
/// node's own address, and how its process is started there.
pub trait Placement: Send + Sync + std::fmt::Debug {
    /// The address node `id` binds its peer and client ports on.
    fn address(&self, id: u64) -> IpAddr;
    /// A command that runs `program` where node `id` lives; the spawned
    /// child's process id must be the program's own (signals sent to it
    /// reach the node), as with `ip netns exec`, which executes the program
    /// in its own place.
    fn command(&self, id: u64, program: &Path) -> Command;
}

/// Whole-cluster start attempts before [`LocalCluster::start`] gives up on
/// port clashes.
pub const START_ATTEMPTS: usize = 5;
/// How long every node of one attempt has to answer its first status.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of a local cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Number of nodes (ids 1..=n).
    pub nodes: u64,
    /// Where certificates, data directories and logs go.
    pub base_dir: PathBuf,
    /// The `paxos-node` binary.
    pub node_binary: PathBuf,
    /// Leader heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout in milliseconds.
    pub election_timeout_ms: u64,
    /// WAL segment size in MiB.
    pub segment_mib: u64,
    /// Applied entries between snapshots.
    pub snapshot_every: u64,
    /// Client sessions each node's store keeps (`--max-sessions`).
    pub max_sessions: usize,
    /// `--max-session-mib` of every node.
    pub max_session_mib: usize,
    /// Client connections each node serves at once
    /// (`--max-client-connections`).
    pub max_client_connections: usize,
    /// Idle client connections are closed after this many milliseconds
    /// (`--client-idle-timeout-ms`, 0: never).
    pub client_idle_timeout_ms: u64,
    /// Ports for the first start attempt, two per node in id order (peer,
    /// then client); empty: picked like every later attempt's. For tests
    /// that reproduce a port taken by another process.
    pub first_attempt_ports: Vec<u16>,
    /// Client certificates to issue (name and role), in `certs/` under
    /// `base_dir`. Default: [`BENCH_CLIENT`] (read-write) and
    /// [`READER_CLIENT`] (read-only).
    pub clients: Vec<(String, Role)>,
    /// Run the nodes with `--insecure-plaintext-clients` (plain TCP client
    /// ports, no authentication). Default `false`.
    pub insecure_plaintext_clients: bool,
    /// Client TLS handshakes must complete within this many milliseconds
    /// (`--client-handshake-timeout-ms`).
    pub client_handshake_timeout_ms: u64,
    /// Where the nodes run; `None`: all on loopback (the default).
    pub placement: Option<Arc<dyn Placement>>,
    /// Extra arguments given to every node's `run` (after the usual ones);
    /// `{id}` in an argument becomes the node's id.
    pub extra_node_args: Vec<String>,
    /// The nodes' `RUST_LOG`: `Some("info")` by default (every event a
    /// test may need when it fails); `None` leaves the node's own default
    /// filter, which for many groups keeps the kernels' per-group events
    /// at warn (what a benchmark must measure: at info, 10 000 groups
    /// electing write hundreds of thousands of lines). `PAXOS_NODE_LOG`,
    /// when set, wins over both.
    pub log_filter: Option<String>,
}

impl ClusterSpec {
    /// Defaults (the node's own defaults) for `nodes` nodes under `base_dir`.
    pub fn new(nodes: u64, base_dir: PathBuf, node_binary: PathBuf) -> ClusterSpec {
        ClusterSpec {
            nodes,
            base_dir,
            node_binary,
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            segment_mib: 64,
            snapshot_every: 1_000_000,
            max_sessions: paxos_kv::kv::DEFAULT_MAX_SESSIONS,
            max_session_mib: paxos_kv::kv::DEFAULT_MAX_SESSION_BYTES >> 20,
            max_client_connections: paxos_kv::node::DEFAULT_MAX_CLIENT_CONNECTIONS,
            client_idle_timeout_ms: u64::try_from(
                paxos_kv::node::DEFAULT_CLIENT_IDLE_TIMEOUT.as_millis(),
            )
            .unwrap_or(u64::MAX),
            first_attempt_ports: Vec::new(),
            clients: vec![
                (BENCH_CLIENT.to_string(), Role::ReadWrite),
                (READER_CLIENT.to_string(), Role::ReadOnly),
            ],
            insecure_plaintext_clients: false,
            client_handshake_timeout_ms: u64::try_from(
                paxos_kv::node::DEFAULT_CLIENT_HANDSHAKE_TIMEOUT.as_millis(),
            )
            .unwrap_or(u64::MAX),
            placement: None,
            extra_node_args: Vec::new(),
            log_filter: Some("info".into()),
        }
    }
}

/// A running local cluster.
pub struct LocalCluster {
    spec: ClusterSpec,
    members: BTreeMap<u64, Member>,
    children: BTreeMap<u64, Child>,
    /// How this process's own requests (start-up probes, statuses) reach
    /// the nodes: as [`BENCH_CLIENT`], or plaintext.
    security: ClientSecurity,
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A random number from the standard library's per-process hash keys.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(u64::from(std::process::id()));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Whether `port` can be bound on loopback for both TCP and UDP right now.
fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// Picks `count` distinct loopback ports free for both TCP and UDP, from a
/// random place in the range below the ephemeral ports (or above it, or any
/// ephemeral port from the kernel when neither is large enough).
fn free_ports(count: usize) -> Result<Vec<u16>> {
    const LOW: u16 = 10_000;
    const MIN_SPAN: u16 = 2_000;
    let (eph_lo, eph_hi) = ephemeral_range();
    let span = if eph_lo > LOW && eph_lo - LOW >= MIN_SPAN {
        Some((LOW, eph_lo - 1))
    } else if eph_hi < u16::MAX && u16::MAX - eph_hi >= MIN_SPAN {
        Some((eph_hi + 1, u16::MAX))
    } else {
        None
    };
    let mut ports = BTreeSet::new();
    match span {
        Some((lo, hi)) => {
            let width = u64::from(hi - lo) + 1;
            let start = random_u64() % width;
            // Bounded: one pass over the range at most.
            for k in 0..width {
                if ports.len() == count {
                    break;
                }
                let port = lo + ((start + k) % width) as u16;
                if port_is_free(port) {
                    ports.insert(port);
                }
            }
        }
        None => {
            for _ in 0..64 * count {
                if ports.len() == count {
                    break;
                }
                let tcp = TcpListener::bind("127.0.0.1:0").context("binding a probe TCP port")?;
                let port = tcp.local_addr()?.port();
                if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                    ports.insert(port);
                }
            }
        }
    }
    if ports.len() < count {
        bail!(
            "only {} free loopback ports found, {count} needed",
            ports.len()
        );
    }
    Ok(ports.into_iter().collect())
}

/// How one start attempt ended.
enum StartOutcome {
    /// Every node answered.
    Ready,
    /// A node found a port taken: try again on other ports.
    PortTaken(u64),
}

impl LocalCluster {
    /// Writes certificates, starts every node and waits until each one
    /// answers on its client port (retrying on fresh ports if one was taken
    /// meanwhile; see the module docs). Blocks the calling thread.
    pub fn start(spec: ClusterSpec) -> Result<LocalCluster> {
        std::fs::create_dir_all(&spec.base_dir)
            .with_context(|| format!("creating {}", spec.base_dir.display()))?;
        if !spec.node_binary.exists() {
            bail!(
                "node binary {} not found (build paxos-kv's binaries first)",
                spec.node_binary.display()
            );
        }
        let ids: Vec<u64> = (1..=spec.nodes).collect();
        let peer_ids: Vec<_> = ids.iter().map(|&i| paxos_net_quic::PeerId(i)).collect();
        let clients: Vec<_> = spec
            .clients
            .iter()
            .map(|(name, role)| {
                let role = match role {
                    Role::ReadWrite => paxos_net_quic::certs::ClientRole::ReadWrite,
                    Role::ReadOnly => paxos_net_quic::certs::ClientRole::ReadOnly,
                    Role::Admin => paxos_net_quic::certs::ClientRole::Admin,
                };
                (name.clone(), role)
            })
            .collect();
        let certs = spec.base_dir.join("certs");
        paxos_net_quic::certs::write_certs(&certs, &peer_ids, &clients)
            .context("generating certificates")?;
        let security = if spec.insecure_plaintext_clients {
            ClientSecurity::InsecurePlaintext
        } else if spec.clients.iter().any(|(n, _)| n == BENCH_CLIENT) {
            ClientSecurity::Tls(
                ClientTlsConfig::from_dir(&certs, BENCH_CLIENT)
                    .context("loading the bench client's certificate")?,
            )
        } else {
            bail!("ClusterSpec::clients must include {BENCH_CLIENT:?} (the cluster's own probes use it)");
        };
        let mut cluster = LocalCluster {
            spec,
            members: BTreeMap::new(),
            children: BTreeMap::new(),
            security,
        };
        for attempt in 1..=START_ATTEMPTS {
            if let Some(placement) = cluster.spec.placement.clone() {
                cluster.members = ids
                    .iter()
                    .map(|&id| {
                        let ip = placement.address(id);
                        let member = Member {
                            peer: SocketAddr::new(ip, PLACED_PEER_PORT),
                            client: SocketAddr::new(ip, PLACED_CLIENT_PORT),
                        };
                        (id, member)
                    })
                    .collect();
                for &id in &ids {
                    cluster.start_node(id)?;
                }
                // A placed node's address is its own: no other process can
                // hold its ports, so there is nothing to retry.
                return match cluster.wait_started(START_TIMEOUT)? {
                    StartOutcome::Ready => Ok(cluster),
                    StartOutcome::PortTaken(id) => bail!(
                        "node {id} found its port taken at its own address; see {}",
                        cluster.log_path(id).display()
                    ),
                };
            }
            let given = &cluster.spec.first_attempt_ports;
            let ports = if attempt == 1 && !given.is_empty() {
                if given.len() != 2 * ids.len() {
                    bail!(
                        "first_attempt_ports has {} ports; {} nodes need {}",
                        given.len(),
                        ids.len(),
                        2 * ids.len()
                    );
                }
                given.clone()
            } else {
                free_ports(2 * ids.len())?
            };
            cluster.members = ids
                .iter()
                .zip(ports.chunks(2))
                .map(|(&id, p)| {
                    let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
                    (
                        id,
                        Member {
                            peer: addr(p[0]),
                            client: addr(p[1]),
                        },
                    )
                })
                .collect();
            // Data directories are kept across attempts: a node's data does
            // not depend on its addresses, so a retry is a restart.
            for &id in &ids {
                cluster.start_node(id)?;
            }
            match cluster.wait_started(START_TIMEOUT)? {
                StartOutcome::Ready => return Ok(cluster),
                StartOutcome::PortTaken(id) => {
                    tracing::warn!(
                        node = id,
                        attempt,
                        "a node's port was taken before it could bind; restarting the cluster on other ports"
                    );
                    cluster.stop();
                }
            }
        }
        bail!(
            "every one of {START_ATTEMPTS} attempts lost a port to another process; see the node logs under {}",
            cluster.spec.base_dir.display()
        )
    }

    /// Waits until every node answers a status request from its own process
    /// (not some other process that took its port), or one exits.
    fn wait_started(&mut self, timeout: Duration) -> Result<StartOutcome> {
        let deadline = Instant::now() + timeout;
        let mut ready = BTreeSet::new();
        while Instant::now() < deadline {
            for (&id, child) in &mut self.children {
                if let Some(status) = child.try_wait().context("polling a node process")? {
                    if status.code() == Some(EXIT_ADDR_IN_USE) {
                        return Ok(StartOutcome::PortTaken(id));
                    }
                    bail!(
                        "node {id} exited during start-up ({}); its log {}:\n{}",
                        describe(status),
                        self.log_path(id).display(),
                        log_tail(&self.log_path(id))
                    );
                }
            }
            for (&id, child) in &self.children {
                if ready.contains(&id) {
                    continue;
                }
                let addr = self.members[&id].client;
                if status_pid(addr, &self.security, Duration::from_millis(500)) == Some(child.id())
                {
                    ready.insert(id);
                }
            }
            if ready.len() == self.children.len() {
                return Ok(StartOutcome::Ready);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        bail!(
            "nodes {:?} did not answer within {timeout:?}; see the node logs under {}",
            self.ids()
                .into_iter()
                .filter(|id| !ready.contains(id))
                .collect::<Vec<_>>(),
            self.spec.base_dir.display()
        )
    }

    /// The data directory of node `id`.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.spec.base_dir.join(format!("node-{id}"))
    }

    /// The log file of node `id`.
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.spec.base_dir.join(format!("node-{id}.log"))
    }

    /// (Re)starts node `id` with its existing data directory.
    pub fn start_node(&mut self, id: u64) -> Result<()> {
        // A node's first start bootstraps the new cluster; a restart finds
        // its identity in its data directory.
        let first = !self
            .data_dir(id)
            .join(paxos_kv::identity::IDENTITY_FILE)
            .exists();
        self.start_node_with(id, if first { &["--bootstrap"] } else { &[] })
    }

    /// Starts node `id` with its data directory emptied, as a member that
    /// lost its state: `paxos-node run --rejoin`. It catches up from the
    /// leader before it votes again.
    pub fn rejoin_node(&mut self, id: u64) -> Result<()> {
        if let Some(mut old) = self.children.remove(&id) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let dir = self.data_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        self.start_node_with(id, &["--rejoin"])
    }

    /// Starts a new machine `id` joining the running cluster, as an
    /// operator would: a node certificate issued from the cluster's CA, two
    /// free loopback ports, and `paxos-node run --join` with `--members`
    /// naming the current members and itself. The running nodes are not
    /// restarted: they learn its addresses from the membership once an
    /// administrator adds it (`add-observer ID --addrs`). Returns its
    /// addresses.
    pub fn join_node(&mut self, id: u64) -> Result<Member> {
        if self.members.contains_key(&id) {
            bail!("node {id} is already a member of this cluster");
        }
        if self.spec.placement.is_some() {
            bail!("join_node runs nodes on loopback only");
        }
        paxos_net_quic::certs::write_certs(
            &self.spec.base_dir.join("certs"),
            &[paxos_net_quic::PeerId(id)],
            &[],
        )
        .context("issuing the new node's certificate")?;
        let ports = free_ports(2)?;
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let member = Member {
            peer: addr(ports[0]),
            client: addr(ports[1]),
        };
        self.members.insert(id, member);
        self.start_node_with(id, &["--join"])?;
        Ok(member)
    }

    /// Restarts node `id` with `--members` naming every member but
    /// `hidden`, as a node configured before those joined would be.
    pub fn restart_without(&mut self, id: u64, hidden: &[u64]) -> Result<()> {
        let all = self.members.clone();
        self.members.retain(|m, _| !hidden.contains(m));
        let started = self.start_node_with(id, &[]);
        self.members = all;
        started
    }

    /// Starts (or restarts) node `id` with `extra` arguments after `run`'s
    /// usual ones.
    pub fn start_node_with(&mut self, id: u64, extra: &[&str]) -> Result<()> {
        if let Some(mut old) = self.children.remove(&id) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .with_context(|| format!("opening {}", self.log_path(id).display()))?;
        let mut command = match &self.spec.placement {
            Some(p) => p.command(id, &self.spec.node_binary),
            None => Command::new(&self.spec.node_binary),
        };
        command
            .arg("run")
            .args(["--id", &id.to_string()])
            .args(["--members", &format_members(&self.members)])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .arg("--certs")
            .arg(self.spec.base_dir.join("certs"))
            .args(["--heartbeat-ms", &self.spec.heartbeat_ms.to_string()])
            .args([
                "--election-timeout-ms",
                &self.spec.election_timeout_ms.to_string(),
            ])
            .args(["--segment-mib", &self.spec.segment_mib.to_string()])
            .args(["--snapshot-every", &self.spec.snapshot_every.to_string()])
            .args(["--max-sessions", &self.spec.max_sessions.to_string()])
            .args(["--max-session-mib", &self.spec.max_session_mib.to_string()])
            .args([
                "--max-client-connections",
                &self.spec.max_client_connections.to_string(),
            ])
            .args([
                "--client-idle-timeout-ms",
                &self.spec.client_idle_timeout_ms.to_string(),
            ])
            .args(self.spec.placement.is_none().then_some("--loopback"))
            .args(
                self.spec
                    .extra_node_args
                    .iter()
                    .map(|a| a.replace("{id}", &id.to_string())),
            )
            .args(extra)
            .args(
                self.spec
                    .insecure_plaintext_clients
                    .then_some("--insecure-plaintext-clients"),
            )
            .args([
                "--client-handshake-timeout-ms",
                &self.spec.client_handshake_timeout_ms.to_string(),
            ])
            .env_remove("RUST_LOG");
        if let Some(filter) = std::env::var("PAXOS_NODE_LOG")
            .ok()
            .or_else(|| self.spec.log_filter.clone())
        {
            command.env("RUST_LOG", filter);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        self.children.insert(id, child);
        Ok(())
    }

    /// Kills node `id` with SIGKILL (no chance to flush anything).
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let mut child = self
            .children
            .remove(&id)
            .with_context(|| format!("node {id} is not running"))?;
        child.kill().with_context(|| format!("killing node {id}"))?;
        let _ = child.wait();
        Ok(())
    }

    /// Sends `signal` (for example `libc::SIGSTOP` or `libc::SIGCONT`) to
    /// node `id`'s process.
    pub fn signal(&self, id: u64, signal: i32) -> Result<()> {
        let pid = self
            .pid(id)
            .with_context(|| format!("node {id} is not running"))?;
        let pid = libc::pid_t::try_from(pid).context("process id out of range")?;
        // SAFETY: kill(2) takes plain integers; `pid` is our own live child
        // (not reaped: it is still in `children`), so it names that process.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc != 0 {
            bail!(
                "signal {signal} to node {id}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Whether node `id` has a live process.
    pub fn is_running(&mut self, id: u64) -> bool {
        self.children
            .get_mut(&id)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process id of node `id`, if it was started and not killed
    /// (for tests that pause a node with SIGSTOP).
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.children.get(&id).map(|c| c.id())
    }

    /// Every node's client address.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.members.values().map(|m| m.client).collect()
    }

    /// How a client reaches this cluster's client ports as [`BENCH_CLIENT`]
    /// (read-write), or in plaintext if the cluster runs without TLS.
    pub fn client_security(&self) -> ClientSecurity {
        self.security.clone()
    }

    /// The TLS configuration of client `name` (one of
    /// [`ClusterSpec::clients`]), or plaintext if the cluster runs without
    /// TLS.
    pub fn client_security_for(&self, name: &str) -> Result<ClientSecurity> {
        if self.spec.insecure_plaintext_clients {
            return Ok(ClientSecurity::InsecurePlaintext);
        }
        Ok(ClientSecurity::Tls(
            ClientTlsConfig::from_dir(&self.certs_dir(), name)
                .with_context(|| format!("loading client {name:?}'s certificate"))?,
        ))
    }

    /// The directory of the cluster's certificates (`ca.pem`, `ca.key.pem`,
    /// node and client certificates).
    pub fn certs_dir(&self) -> PathBuf {
        self.spec.base_dir.join("certs")
    }

    /// CPU time (user and system) the running nodes' processes have used so
    /// far, summed; for cost-per-operation figures that are less sensitive to
    /// other load on the machine than throughput.
    pub fn cpu_time(&self) -> Duration {
        self.children
            .values()
            .filter_map(|c| process_cpu_time(c.id()))
            .sum()
    }

    /// The members table.
    pub fn members(&self) -> &BTreeMap<u64, Member> {
        &self.members
    }

    /// Node ids.
    pub fn ids(&self) -> Vec<u64> {
        self.members.keys().copied().collect()
    }

    /// Every running node's status, parsed.
    pub async fn statuses(&self) -> BTreeMap<u64, serde_json::Value> {
        let mut out = BTreeMap::new();
        for (&id, m) in &self.members {
            if !self.children.contains_key(&id) {
                continue;
            }
            if let Ok(s) =
                Client::status_of(m.client, &self.security, Duration::from_millis(500)).await
            {
                if let Ok(v) = serde_json::from_str(&s) {
                    out.insert(id, v);
                }
            }
        }
        out
    }

    /// Waits until a running node reports itself leader and a quorum of
    /// running nodes agree; returns the leader's id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64> {
        let deadline = Instant::now() + timeout;
        let quorum = (self.members.len() / 2 + 1) as u64;
        while Instant::now() < deadline {
            let st = self.statuses().await;
            let leaders: Vec<u64> = st
                .iter()
                .filter(|(_, v)| v["role"] == "leader")
                .map(|(&id, _)| id)
                .collect();
            if let [leader] = leaders[..] {
                let agree = st.values().filter(|v| v["leader"] == leader).count() as u64;
                if agree >= quorum {
                    return Ok(leader);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "no leader within {timeout:?}; see the node logs under {}",
            self.spec.base_dir.display()
        )
    }

    /// For nodes hosting many groups (`--groups`): waits until every group
    /// has a leader among the running nodes and no running node is still
    /// looking for one in any group; returns how many groups each running
    /// node leads.
    pub async fn wait_all_groups_led(&self, timeout: Duration) -> Result<BTreeMap<u64, u64>> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no status");
        while Instant::now() < deadline {
            let st = self.statuses().await;
            // Groups hosted (splits add some); "groups" from nodes that
            // predate splits.
            let groups = st
                .values()
                .filter_map(|v| v["hosted"].as_u64().or_else(|| v["groups"].as_u64()))
                .max();
            if let Some(groups) = groups {
                let led: BTreeMap<u64, u64> = st
                    .iter()
                    .map(|(&id, v)| (id, v["led"].as_u64().unwrap_or(0)))
                    .collect();
                let looking: u64 = st
                    .values()
                    .map(|v| v["looking"].as_u64().unwrap_or(0))
                    .sum();
                let total: u64 = led.values().sum();
                if total == groups && looking == 0 && st.len() == self.children.len() {
                    return Ok(led);
                }
                last = format!("{total} of {groups} groups led, {looking} looking: {led:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "not every group led within {timeout:?} ({last}); see the node logs under {}",
            self.spec.base_dir.display()
        )
    }

    /// Waits until `leader` reports `peer` connected and in its broadcast
    /// phase (it has joined the leader's epoch and receives the stream), so
    /// that a hand-over to it or a change counting it can be asked.
    pub async fn wait_in_sync(&self, leader: u64, peer: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let st = self.statuses().await;
            if st.get(&leader).is_some_and(|v| leader_has_in_sync(v, peer)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("{leader} did not report {peer} in sync within {timeout:?}")
    }

    /// Waits until every running node has applied at least `zxid`.
    pub async fn wait_applied(&self, zxid: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let st = self.statuses().await;
            let running = self.children.len();
            if st.len() == running
                && st
                    .values()
                    .all(|v| v["applied"].as_u64().unwrap_or(0) >= zxid)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("nodes did not apply up to {zxid:#x} within {timeout:?}")
    }

    /// Stops every node (SIGKILL).
    pub fn stop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.children) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The base directory.
    pub fn base_dir(&self) -> &Path {
        &self.spec.base_dir
    }
}

/// The CPU time (user and system) process `pid` has used so far, from
/// `/proc/<pid>/stat`; `None` if it cannot be read.
pub fn process_cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is the first,
    // utime the 12th and stime the 13th (fields 14 and 15 of proc(5)).
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / ticks))
}

/// A child's exit status in words.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}

/// The end of a log file for an error message: from the last `Error:`
/// line (what `paxos-node` prints when it fails, before any backtrace), or
/// else the last lines; 20 lines at most.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines
        .iter()
        .rposition(|l| l.starts_with("Error:"))
        .unwrap_or(lines.len().saturating_sub(20));
    lines[from..]
        .iter()
        .take(20)
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asks the node at `addr` for its status (blocking, bounded by `timeout`
/// per step) and returns the process id it reports.
fn status_pid(addr: SocketAddr, security: &ClientSecurity, timeout: Duration) -> Option<u32> {
    let stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    match security {
        ClientSecurity::InsecurePlaintext => status_pid_over(stream),
        ClientSecurity::Tls(tls) => {
            let conn =
                rustls::ClientConnection::new(tls.rustls_config(), ClientTlsConfig::server_name())
                    .ok()?;
            status_pid_over(rustls::StreamOwned::new(conn, stream))
        }
    }
}

/// [`status_pid`] over a connected (blocking) stream.
fn status_pid_over(mut stream: impl Read + Write) -> Option<u32> {
    let mut buf = BytesMut::new();
    Request::Status.encode_frame(1, &mut buf);
    stream.write_all(&buf).ok()?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    // Bounded: a status is one frame of a few KiB.
    for _ in 0..64 {
        if let Ok(Some(frame)) = next_frame(&mut buf) {
            return match Response::decode(frame).ok()? {
                (1, Response::Status(s)) => serde_json::from_str::<serde_json::Value>(&s)
                    .ok()?
                    .get("pid")?
                    .as_u64()
                    .and_then(|p| u32::try_from(p).ok()),
                _ => None,
            };
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    None
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether a node's status (one group's view) says it leads and has `peer`
/// connected and in its broadcast phase.
pub fn leader_has_in_sync(status: &serde_json::Value, peer: u64) -> bool {
    status["role"] == "leader"
        && status["peers"].as_array().is_some_and(|peers| {
            peers
                .iter()
                .any(|p| p["id"] == peer && p["connected"] == true && p["in_broadcast"] == true)
        })
}
