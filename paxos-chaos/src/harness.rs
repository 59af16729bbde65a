//! A cluster of real `paxos-node` processes under the suite's control: each
//! node in a network namespace of its own when the machine allows it (or on
//! loopback for the scenarios that need no network faults), its data
//! directory optionally on a small tmpfs, and a fault file the node polls
//! (slow syncs, clock jumps).
//!
//! Dropping a [`ChaosCluster`] kills its processes, unmounts what it
//! mounted and deletes its namespaces, also when a scenario fails.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use paxos_kv::auth::Role;
use paxos_kv::client::{Client, ClientError};
use paxos_kv::client_proto::{AdminRequest, ReadMode};
use paxos_kv::node::Member;
use paxos_kv::tls::ClientSecurity;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster, Placement};

use crate::net::Network;
use crate::workload::LedgerWrite;

/// The client principal with role `admin` that every chaos cluster
/// certifies: the scenarios that change leadership or membership use it.
pub const ADMIN_CLIENT: &str = "ops";

/// Where a scenario's nodes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetMode {
    /// One network namespace per node, links through the suite's switch.
    Namespaces,
    /// All on loopback: no network faults possible.
    Loopback,
}

/// Settings of a [`ChaosCluster`].
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Number of nodes.
    pub nodes: u64,
    /// Namespaces or loopback.
    pub net: NetMode,
    /// Seed of the switch's random faults.
    pub seed: u64,
    /// The `paxos-node` binary.
    pub node_binary: PathBuf,
    /// Leader heartbeat interval.
    pub heartbeat_ms: u64,
    /// Election timeout.
    pub election_timeout_ms: u64,
    /// Serve reads from leader leases.
    pub lease_reads: bool,
    /// WAL segment size.
    pub segment_mib: u64,
    /// Applied entries between snapshots.
    pub snapshot_every: u64,
    /// Nodes whose data directory is a tmpfs of this many MiB.
    pub tmpfs: Vec<(u64, u64)>,
    /// `--retention-entries` of every node (`None`: the node's default).
    pub retention_entries: Option<u64>,
}

impl ClusterOptions {
    /// Defaults for `nodes` nodes in namespaces.
    pub fn new(nodes: u64, node_binary: PathBuf) -> ClusterOptions {
        ClusterOptions {
            nodes,
            net: NetMode::Namespaces,
            seed: 1,
            node_binary,
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            lease_reads: false,
            segment_mib: 8,
            snapshot_every: 2_000,
            tmpfs: Vec::new(),
            retention_entries: None,
        }
    }
}

/// Node addresses and namespace names, as [`LocalCluster`] needs them.
#[derive(Debug)]
struct NetPlacement {
    addrs: BTreeMap<u64, IpAddr>,
    namespaces: BTreeMap<u64, String>,
}

impl Placement for NetPlacement {
    fn address(&self, id: u64) -> IpAddr {
        self.addrs
            .get(&id)
            .copied()
            .unwrap_or(IpAddr::from([127, 0, 0, 1]))
    }

    fn command(&self, id: u64, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.arg("netns")
            .arg("exec")
            .arg(self.namespaces.get(&id).map_or("", String::as_str))
            .arg(program);
        c
    }
}

/// A tmpfs mounted over a node's data directory.
#[derive(Debug)]
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Lazily, if something still holds it open.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Mounts a tmpfs of `mib` MiB at `dir`.
pub fn mount_tmpfs(dir: &Path, mib: u64) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
        .arg(dir)
        .output()
        .context("running mount")?;
    if !out.status.success() {
        bail!(
            "mount -t tmpfs at {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether this machine lets the suite mount a tmpfs (`Err`: why not).
pub fn probe_tmpfs() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let probe = dir.path().join("probe");
    mount_tmpfs(&probe, 1).map_err(|e| format!("{e:#}"))?;
    drop(Mount(probe));
    Ok(())
}

/// A cluster under test. Fields drop in order: processes, then mounts,
/// then the network, then the directory.
pub struct ChaosCluster {
    cluster: LocalCluster,
    mounts: Vec<Mount>,
    net: Option<Network>,
    options: ClusterOptions,
    /// Nodes that left for good (dead and replaced, or removed and
    /// stopped): never restarted, never asked, not counted.
    retired: BTreeSet<u64>,
    /// Nodes started as new machines (`paxos-node run --join`), restarted
    /// the same way.
    joined: BTreeSet<u64>,
    /// How the administrator's client authenticates.
    admin_security: ClientSecurity,
    dir: tempfile::TempDir,
}

impl Drop for ChaosCluster {
    fn drop(&mut self) {
        // Resume paused nodes first, so that SIGKILL reaps them at once.
        for id in self.cluster.ids() {
            let _ = self.cluster.signal(id, libc::SIGCONT);
        }
        self.cluster.stop();
        self.mounts.clear();
        self.net = None;
    }
}

impl ChaosCluster {
    /// Makes the network (if asked), mounts, certificates, and starts every
    /// node; returns once each answers on its client port.
    pub fn start(options: ClusterOptions) -> Result<ChaosCluster> {
        let dir = tempfile::Builder::new()
            .prefix("paxos-chaos-")
            .tempdir()
            .context("creating the run's directory")?;
        let ids: Vec<u64> = (1..=options.nodes).collect();
        let net = match options.net {
            NetMode::Namespaces => {
                Some(Network::create(&ids, options.seed).context("creating the namespaces")?)
            }
            NetMode::Loopback => None,
        };
        let mut mounts = Vec::new();
        for &(id, mib) in &options.tmpfs {
            let d = dir.path().join(format!("node-{id}"));
            mount_tmpfs(&d, mib)?;
            mounts.push(Mount(d));
        }
        let mut spec = ClusterSpec::new(
            options.nodes,
            dir.path().to_path_buf(),
            options.node_binary.clone(),
        );
        spec.heartbeat_ms = options.heartbeat_ms;
        spec.election_timeout_ms = options.election_timeout_ms;
        spec.segment_mib = options.segment_mib;
        spec.snapshot_every = options.snapshot_every;
        spec.clients.push((ADMIN_CLIENT.into(), Role::Admin));
        spec.extra_node_args = vec![
            "--fault-file".into(),
            dir.path()
                .join("node-{id}.faults")
                .to_string_lossy()
                .into_owned(),
            // One thread per node, as on loopback: several nodes share the
            // machine's cores.
            "--threads".into(),
            "0".into(),
        ];
        if options.lease_reads {
            spec.extra_node_args.push("--lease-reads".into());
        }
        if let Some(n) = options.retention_entries {
            spec.extra_node_args.push("--retention-entries".into());
            spec.extra_node_args.push(n.to_string());
        }
        if let Some(n) = &net {
            let mut addrs = BTreeMap::new();
            let mut namespaces = BTreeMap::new();
            for &id in &ids {
                addrs.insert(id, n.node_ip(id)?);
                namespaces.insert(id, n.netns_name(id)?.to_string());
            }
            spec.placement = Some(Arc::new(NetPlacement { addrs, namespaces }));
        }
        let cluster = LocalCluster::start(spec)?;
        let admin_security = cluster.client_security_for(ADMIN_CLIENT)?;
        Ok(ChaosCluster {
            cluster,
            mounts,
            net,
            options,
            retired: BTreeSet::new(),
            joined: BTreeSet::new(),
            admin_security,
            dir,
        })
    }

    /// The process cluster.
    pub fn cluster(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }

    /// The network (`None` on loopback).
    pub fn net(&self) -> Option<&Network> {
        self.net.as_ref()
    }

    /// The network, or an error naming `what` needs it.
    pub fn net_for(&self, what: &str) -> Result<&Network> {
        self.net
            .as_ref()
            .with_context(|| format!("{what} needs network namespaces"))
    }

    /// The options it was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.options
    }

    /// Ids of the nodes that belong to the cluster now: the ones it
    /// started with and the ones that joined, less the retired ones.
    pub fn ids(&self) -> Vec<u64> {
        self.cluster
            .ids()
            .into_iter()
            .filter(|id| !self.retired.contains(id))
            .collect()
    }

    /// Starts a new machine `id` with `paxos-node run --join` (certificate
    /// issued, ports picked by the test kit); returns its addresses. It
    /// is no member until an administrator adds it.
    pub fn join(&mut self, id: u64) -> Result<Member> {
        let m = self
            .cluster
            .join_node(id)
            .with_context(|| format!("starting new machine {id} with --join"))?;
        self.joined.insert(id);
        Ok(m)
    }

    /// Node `id` leaves for good: SIGKILL if it runs, and from now on it
    /// is neither restarted, asked nor counted.
    pub fn retire(&mut self, id: u64) -> Result<()> {
        if self.cluster.pid(id).is_some() {
            self.cluster.kill(id)?;
        }
        self.retired.insert(id);
        Ok(())
    }

    /// Restarts node `id` with its data: with `--join` if it joined as a
    /// new machine (as an operator keeps it in its command line).
    pub fn restart(&mut self, id: u64) -> Result<()> {
        if self.retired.contains(&id) {
            bail!("node {id} left the cluster; it is not restarted");
        }
        if self.joined.contains(&id) {
            self.cluster.start_node_with(id, &["--join"])
        } else {
            self.cluster.start_node(id)
        }
    }

    /// Sends one administration command with the admin principal's
    /// certificate, through every current member (redirects followed);
    /// the node's JSON answer.
    pub async fn admin_once(&self, req: AdminRequest) -> Result<serde_json::Value, ClientError> {
        self.admin_via(self.client_addrs(), req).await
    }

    /// [`admin_once`](Self::admin_once), asked of node `id` alone (for
    /// `Members`: that node's own view).
    pub async fn admin_of(
        &self,
        id: u64,
        req: AdminRequest,
    ) -> Result<serde_json::Value, ClientError> {
        let addr = self
            .client_addr(id)
            .ok_or_else(|| ClientError::Node(format!("node {id} has no client address")))?;
        self.admin_via(vec![addr], req).await
    }

    async fn admin_via(
        &self,
        addrs: Vec<SocketAddr>,
        req: AdminRequest,
    ) -> Result<serde_json::Value, ClientError> {
        let ops = Client::new(
            addrs,
            self.admin_security.clone(),
            0x00ad_0000,
            Duration::from_secs(5),
        );
        let json = ops.admin(req).await?;
        serde_json::from_str(&json)
            .map_err(|e| ClientError::Unexpected(format!("admin answer {json:?} is no JSON: {e}")))
    }

    /// Asks `req` until it is not refused with a transient answer: one
    /// that starts with `retry:` (a change in flight, an observer still
    /// catching up), or, when `transient` says so, another the caller
    /// knows to pass. Bounded by `limit` and by 1 000 attempts, 100 ms
    /// apart. Returns the answer and how many refusals came first.
    pub async fn admin_until_done(
        &self,
        req: AdminRequest,
        limit: Duration,
        transient: impl Fn(&str) -> bool,
    ) -> Result<(serde_json::Value, u32)> {
        let started = Instant::now();
        let mut last = String::new();
        for refusals in 0..1_000u32 {
            if started.elapsed() > limit {
                break;
            }
            match self.admin_once(req).await {
                Ok(v) => return Ok((v, refusals)),
                Err(ClientError::Node(m)) if m.starts_with("retry:") || transient(&m) => {
                    last = m;
                }
                Err(e) => bail!("admin {req:?}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("admin {req:?} still refused after {limit:?}; last answer: {last}")
    }

    /// Where logs and data live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the run's directory (logs, data) after the cluster is dropped,
    /// for a failed scenario; returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        let replacement = tempfile::tempdir().ok();
        match replacement {
            Some(r) => std::mem::replace(&mut self.dir, r).keep(),
            None => self.dir.path().to_path_buf(),
        }
    }

    /// The client addresses of the current members (retired nodes left
    /// out).
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.ids()
            .into_iter()
            .filter_map(|id| self.client_addr(id))
            .collect()
    }

    /// The client address of node `id`.
    pub fn client_addr(&self, id: u64) -> Option<SocketAddr> {
        self.cluster.members().get(&id).map(|m| m.client)
    }

    /// How the workload's clients authenticate.
    pub fn security(&self) -> ClientSecurity {
        self.cluster.client_security()
    }

    /// The fault file node `id` polls.
    pub fn fault_file(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.faults"))
    }

    /// Writes node `id`'s fault settings (`key=value` lines; empty: none).
    pub fn set_faults(&self, id: u64, settings: &str) -> Result<()> {
        let path = self.fault_file(id);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, settings).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The node that leads now, agreed by a quorum of the running nodes.
    pub async fn leader(&self, limit: Duration) -> Result<u64> {
        self.cluster.wait_for_leader(limit).await
    }

    /// Every running node's status.
    pub async fn statuses(&self) -> BTreeMap<u64, serde_json::Value> {
        self.cluster.statuses().await
    }

    /// Waits until a probe write commits; returns how long that took.
    pub async fn wait_progress(&self, limit: Duration, tag: &str) -> Result<Duration> {
        let started = Instant::now();
        let client = Client::new(
            self.client_addrs(),
            self.security(),
            0x00c0_ffee,
            Duration::from_millis(700),
        );
        let key = Bytes::from(format!("probe/{tag}"));
        // Bounded by `limit`; each attempt by the client's timeout.
        for attempt in 0..u32::MAX {
            if started.elapsed() > limit {
                break;
            }
            let value = Bytes::from(format!("{attempt}"));
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(2), client.put(key.clone(), value)).await
            {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "no write committed within {limit:?} ({tag}); node logs under {}",
            self.dir().display()
        )
    }

    /// Waits until every running node reports the same applied position
    /// and state digest, twice in a row; returns the digest.
    pub async fn settle(&self, limit: Duration) -> Result<String> {
        let started = Instant::now();
        let mut last: Option<(u64, String)> = None;
        let mut seen = BTreeMap::new();
        while started.elapsed() < limit {
            let running = self
                .ids()
                .into_iter()
                .filter(|&id| self.cluster.pid(id).is_some())
                .count();
            let st = self.statuses().await;
            if st.len() == running && running > 0 {
                let views: Vec<(u64, String)> = st
                    .values()
                    .map(|v| (v["applied"].as_u64().unwrap_or(0), v["digest"].to_string()))
                    .collect();
                let same = views.windows(2).all(|w| w[0] == w[1]);
                if same {
                    if last.as_ref() == views.first() {
                        return Ok(views[0].1.clone());
                    }
                    last = views.first().cloned();
                } else {
                    last = None;
                }
            }
            seen = st;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let summary: Vec<String> = seen
            .iter()
            .map(|(id, v)| {
                format!(
                    "node {id}: role {} applied {} digest {}",
                    v["role"], v["applied"], v["digest"]
                )
            })
            .collect();
        bail!(
            "replicas did not converge on one state within {limit:?}: {}",
            summary.join("; ")
        )
    }

    /// Reads back every ledger write; returns the acknowledged ones that
    /// are gone, and the keys that hold a value nobody wrote.
    pub async fn read_back(&self, ledger: &[LedgerWrite]) -> Result<Vec<ReadBackProblem>> {
        let client = Arc::new(Client::new(
            self.client_addrs(),
            self.security(),
            0x00be_ef00,
            Duration::from_secs(2),
        ));
        let mut problems = Vec::new();
        // Eight reads in flight: the ledger has thousands of keys.
        for chunk in ledger.chunks(8) {
            let reads = chunk.iter().map(|w| {
                let client = client.clone();
                let w = w.clone();
                async move {
                    // Bounded: a few attempts, each bounded by the client.
                    for _ in 0..20 {
                        if let Ok(v) = client.get(w.key.clone(), ReadMode::Linearizable).await {
                            return Ok(v);
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(w.key.clone())
                }
            });
            let results = futures_join_all(reads).await;
            for (w, r) in chunk.iter().zip(results) {
                match r {
                    Err(key) => bail!(
                        "reading back {:?} failed again and again",
                        String::from_utf8_lossy(&key)
                    ),
                    Ok(v) => {
                        let key = String::from_utf8_lossy(&w.key);
                        match (&v, w.acknowledged) {
                            (Some(v), _) if *v == w.value => {}
                            (None, false) => {}
                            (None, true) => problems.push(ReadBackProblem::Lost(format!(
                                "acknowledged write of {key} is gone"
                            ))),
                            (Some(other), _) => problems.push(ReadBackProblem::Foreign(format!(
                                "{key} holds {:?}, but only {:?} was written",
                                String::from_utf8_lossy(other),
                                String::from_utf8_lossy(&w.value)
                            ))),
                        }
                    }
                }
            }
        }
        Ok(problems)
    }
}

/// What the read-back found wrong with one ledger key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadBackProblem {
    /// An acknowledged write is not there.
    Lost(String),
    /// The key holds a value its only write did not put (a safety
    /// violation, whether or not the write was acknowledged).
    Foreign(String),
}

impl std::fmt::Display for ReadBackProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadBackProblem::Lost(s) | ReadBackProblem::Foreign(s) => f.write_str(s),
        }
    }
}

/// Awaits every future of `futures` concurrently (no extra dependency for
/// one join).
async fn futures_join_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// The `paxos-node` binary: `$PAXOS_NODE_BIN`, or the one cargo built next
/// to the running executable (`target/<profile>/paxos-node`).
pub fn node_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PAXOS_NODE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("paxos-node");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no paxos-node binary next to {} (build it with `cargo build -p paxos-kv --bins`, \
         or set PAXOS_NODE_BIN)",
        exe.display()
    )
}
