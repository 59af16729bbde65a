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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use paxos_kv::auth::Role;
use paxos_kv::client::{Client, ClientError, Session};
use paxos_kv::client_proto::{AdminRequest, ReadMode};
use paxos_kv::kv::KvOp;
use paxos_kv::node::Member;
use paxos_kv::shard::group_of;
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
    /// Paxos groups every node hosts (`paxos-node run --groups`; 1: the
    /// single-group layout).
    pub groups: u32,
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
            groups: 1,
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
    /// One probe key per group (index: group), for the probe writes that
    /// show every group commits.
    probe_keys: Vec<Bytes>,
    /// The next id of a probe session: every probe round writes in fresh
    /// client-named sessions.
    next_probe_session: AtomicU64,
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
        if options.groups > 1 {
            spec.extra_node_args.push("--groups".into());
            spec.extra_node_args.push(options.groups.to_string());
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
        let probe_keys = probe_keys(options.groups);
        Ok(ChaosCluster {
            cluster,
            mounts,
            net,
            options,
            retired: BTreeSet::new(),
            joined: BTreeSet::new(),
            admin_security,
            probe_keys,
            next_probe_session: AtomicU64::new(PROBE_SESSIONS),
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

    /// A client with the admin principal's certificate, for many
    /// administration commands in a row (one per group, say).
    pub fn admin_client(&self) -> Client {
        Client::new(
            self.client_addrs(),
            self.admin_security.clone(),
            0x00ad_0001,
            Duration::from_secs(5),
        )
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

    /// Paxos groups each node hosts.
    pub fn groups(&self) -> u32 {
        self.options.groups.max(1)
    }

    /// The groups whose replicas the convergence checks compare one by
    /// one: every group of a single-group or small cluster; of a large
    /// one, group 0, the groups of the workload's registers and
    /// [`CHECKED_SPREAD`] groups spread evenly over the rest (asking
    /// every node for every group's digest would take minutes; the
    /// per-node summaries cover every group more coarsely).
    pub fn checked_groups(&self) -> Vec<u32> {
        let n = self.groups();
        if n <= CHECKED_SPREAD {
            return (0..n).collect();
        }
        let registers = crate::workload::WorkloadConfig::default().registers;
        let mut set: BTreeSet<u32> = (0..registers)
            .map(|i| group_of(&crate::workload::register_key(i), n))
            .collect();
        set.insert(0);
        set.extend(
            (0..CHECKED_SPREAD)
                .map(|k| (u64::from(k) * u64::from(n) / u64::from(CHECKED_SPREAD)) as u32),
        );
        set.into_iter().collect()
    }

    /// The node that leads now, agreed by a quorum of the running nodes.
    /// With many groups: once every group has such a leader, the node
    /// that leads the most groups (the lowest id among equals).
    pub async fn leader(&self, limit: Duration) -> Result<u64> {
        if self.groups() == 1 {
            return self.cluster.wait_for_leader(limit).await;
        }
        let led = self.wait_all_groups_led(limit).await?;
        led.iter()
            .max_by_key(|&(&id, &n)| (n, std::cmp::Reverse(id)))
            .map(|(&id, _)| id)
            .context("no node leads a group")
    }

    /// Waits until every group has a leader agreed by a quorum of the
    /// members (the leader itself among them); returns how many groups
    /// each running node leads. Bounded by `limit`, one status round
    /// every 100 ms.
    pub async fn wait_all_groups_led(&self, limit: Duration) -> Result<BTreeMap<u64, u64>> {
        let started = Instant::now();
        let mut last = String::from("no status answered");
        while started.elapsed() < limit {
            let st = self.statuses().await;
            match agreed_group_leaders(&st, self.groups(), self.quorum()) {
                Ok(leaders) => {
                    let mut led: BTreeMap<u64, u64> = st.keys().map(|&id| (id, 0)).collect();
                    for l in leaders {
                        *led.entry(l).or_default() += 1;
                    }
                    return Ok(led);
                }
                Err(why) => last = why,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "not every group had an agreed leader within {limit:?}: {last}; node logs under {}",
            self.dir().display()
        )
    }

    /// The leader of group `group`, agreed by a quorum of the members.
    pub async fn group_leader(&self, group: u32, limit: Duration) -> Result<u64> {
        if self.groups() == 1 {
            return self.cluster.wait_for_leader(limit).await;
        }
        let started = Instant::now();
        while started.elapsed() < limit {
            let st = self.statuses().await;
            if let Some(l) = agreed_leader_of(&st, group as usize, self.quorum()) {
                return Ok(l);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("group {group} had no agreed leader within {limit:?}")
    }

    /// A majority of the current members.
    fn quorum(&self) -> usize {
        self.ids().len() / 2 + 1
    }

    /// Every running node's status: with many groups, its summary
    /// (`groups`, `led`, `following`, `looking`, `group_leaders`, ...).
    /// Asked of each node with [`status_timeout`](Self::status_timeout)
    /// (a node of 10 000 groups under load takes more than the test kit's
    /// 500 ms to summarise them).
    pub async fn statuses(&self) -> BTreeMap<u64, serde_json::Value> {
        if self.groups() == 1 {
            return self.cluster.statuses().await;
        }
        let security = self.security();
        let timeout = self.status_timeout();
        let mut out = BTreeMap::new();
        for id in self.ids() {
            if self.cluster.pid(id).is_none() {
                continue;
            }
            let Some(addr) = self.client_addr(id) else {
                continue;
            };
            if let Ok(s) = Client::status_of(addr, &security, timeout).await {
                if let Ok(v) = serde_json::from_str(&s) {
                    out.insert(id, v);
                }
            }
        }
        out
    }

    /// How long a status request may take: 500 ms, and 0.5 ms more per
    /// group.
    pub fn status_timeout(&self) -> Duration {
        Duration::from_millis(500) + Duration::from_micros(500 * u64::from(self.groups()))
    }

    /// Every running member's full status of group `group` (on a
    /// single-group cluster, the plain status).
    pub async fn group_statuses(&self, group: u32) -> BTreeMap<u64, serde_json::Value> {
        if self.groups() == 1 {
            return self.statuses().await;
        }
        let security = self.security();
        let mut out = BTreeMap::new();
        for id in self.ids() {
            if self.cluster.pid(id).is_none() {
                continue;
            }
            let Some(addr) = self.client_addr(id) else {
                continue;
            };
            if let Ok(s) =
                Client::group_status_of(addr, &security, self.status_timeout(), group).await
            {
                if let Ok(v) = serde_json::from_str(&s) {
                    out.insert(id, v);
                }
            }
        }
        out
    }

    /// Waits until `leader`, leading group `group`, reports `peer`
    /// connected and in its broadcast phase there.
    pub async fn wait_in_sync_in(
        &self,
        group: u32,
        leader: u64,
        peer: u64,
        limit: Duration,
    ) -> Result<()> {
        if self.groups() == 1 {
            return self.cluster.wait_in_sync(leader, peer, limit).await;
        }
        let addr = self
            .client_addr(leader)
            .with_context(|| format!("node {leader} has no client address"))?;
        let security = self.security();
        let started = Instant::now();
        while started.elapsed() < limit {
            let st = Client::group_status_of(addr, &security, Duration::from_millis(500), group)
                .await
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
            if st.is_some_and(|v| paxos_testkit::cluster::leader_has_in_sync(&v, peer)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("{leader} did not report {peer} in sync in group {group} within {limit:?}")
    }

    /// Waits until node `id` runs and follows or leads every group, and
    /// no member is still looking for a leader in any; returns how long
    /// that took. Bounded by `limit`, one status round every 100 ms.
    pub async fn wait_rejoined(&self, id: u64, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        let n = u64::from(self.groups());
        let mut last = String::from("no status answered");
        while started.elapsed() < limit {
            let st = self.statuses().await;
            if let Some(v) = st.get(&id) {
                let held = if n == 1 {
                    u64::from(v["role"] == "leader" || v["role"] == "follower")
                } else {
                    v["led"].as_u64().unwrap_or(0) + v["following"].as_u64().unwrap_or(0)
                };
                let looking: u64 = if n == 1 {
                    st.values().filter(|v| v["role"] == "looking").count() as u64
                } else {
                    st.values()
                        .map(|v| v["looking"].as_u64().unwrap_or(0))
                        .sum()
                };
                if held == n && looking == 0 {
                    return Ok(started.elapsed());
                }
                last = format!(
                    "node {id} leads or follows {held} of {n} groups; {looking} replicas looking"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "{last} after {limit:?}; node logs under {}",
            self.dir().display()
        )
    }

    /// Waits until a probe write commits in every group; returns how
    /// long that took. Each group's probe is retried until it commits
    /// or `limit` has passed; at most [`PROBES_IN_FLIGHT`] at a time.
    pub async fn wait_progress(&self, limit: Duration, tag: &str) -> Result<Duration> {
        let started = Instant::now();
        if self.groups() == 1 {
            return self.wait_progress_one(limit, tag).await;
        }
        let first = self
            .next_probe_session
            .fetch_add(u64::from(self.groups()), Ordering::Relaxed);
        let writes = self
            .probe_keys
            .iter()
            .enumerate()
            .map(|(g, key)| (key.clone(), Bytes::from(tag.to_string()), first + g as u64))
            .collect();
        let done = self.run_probes(writes, started + limit).await;
        let stuck: Vec<usize> = (0..done.len()).filter(|&g| !done[g]).collect();
        if stuck.is_empty() {
            return Ok(started.elapsed());
        }
        let shown: Vec<_> = stuck.iter().take(20).collect();
        bail!(
            "{} of {} groups committed no write within {limit:?} ({tag}), among them {shown:?}; node logs under {}",
            stuck.len(),
            self.groups(),
            self.dir().display()
        )
    }

    /// Writes every (key, value, session) of `writes`, each until
    /// acknowledged or `deadline`, by [`PROBES_IN_FLIGHT`] workers that
    /// each have a client of their own (replaced after a failed attempt,
    /// so that it learns the groups' leaders afresh: a client's routing,
    /// learned once, can name a dead or paused node for every group, and
    /// it corrects one group per redirect, each after a connect timeout
    /// taken under its one connection lock; found by `pause-leader` with
    /// 1 000 groups). Returns whether each was acknowledged.
    async fn run_probes(&self, writes: Vec<(Bytes, Bytes, u64)>, deadline: Instant) -> Vec<bool> {
        let n = writes.len();
        let queue = Arc::new(parking_lot::Mutex::new(
            writes
                .into_iter()
                .enumerate()
                .collect::<std::collections::VecDeque<_>>(),
        ));
        let workers: Vec<_> = (0..PROBES_IN_FLIGHT.min(n))
            .map(|_| {
                let queue = queue.clone();
                let fresh = self.client_maker();
                tokio::spawn(async move {
                    let mut client = ProbeClient::new(fresh);
                    let mut acked = Vec::new();
                    // Bounded by the queue's length.
                    for _ in 0..n {
                        let Some((i, (key, value, session))) = queue.lock().pop_front() else {
                            break;
                        };
                        if probe_group(&mut client, session, key, value, deadline).await {
                            acked.push(i);
                        }
                    }
                    acked
                })
            })
            .collect();
        let mut done = vec![false; n];
        for w in workers {
            for i in w.await.unwrap_or_default() {
                done[i] = true;
            }
        }
        done
    }

    /// Writes `count` fresh keys `{prefix}/{i}` (value: the key), each in
    /// a session of its own and retried until acknowledged or `limit` has
    /// passed, [`PROBES_IN_FLIGHT`] at a time; returns every write and
    /// whether it was acknowledged, for [`read_back`](Self::read_back).
    pub async fn write_keys(&self, prefix: &str, count: u64, limit: Duration) -> Vec<LedgerWrite> {
        let first = self.next_probe_session.fetch_add(count, Ordering::Relaxed);
        let writes: Vec<(Bytes, Bytes, u64)> = (0..count)
            .map(|i| {
                let key = Bytes::from(format!("{prefix}/{i}"));
                (key.clone(), key, first + i)
            })
            .collect();
        let done = self
            .run_probes(writes.clone(), Instant::now() + limit)
            .await;
        writes
            .into_iter()
            .zip(done)
            .map(|((key, value, _), acknowledged)| LedgerWrite {
                key,
                value,
                acknowledged,
            })
            .collect()
    }

    /// Makes new clients of the current members (for probes that need a
    /// routing of their own).
    fn client_maker(&self) -> impl Fn() -> Client + Send + 'static {
        let (addrs, security) = (self.client_addrs(), self.security());
        move || {
            Client::new(
                addrs.clone(),
                security.clone(),
                0x00c0_ffee,
                Duration::from_millis(700),
            )
        }
    }

    /// [`wait_progress`](Self::wait_progress) of a single-group cluster.
    async fn wait_progress_one(&self, limit: Duration, tag: &str) -> Result<Duration> {
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

    /// Each checked group's (applied position, digest) as each running
    /// member reports it (see [`checked_groups`](Self::checked_groups)).
    pub async fn state_views(&self) -> BTreeMap<u32, BTreeMap<u64, (u64, String)>> {
        let mut out = BTreeMap::new();
        for g in self.checked_groups() {
            let views = self
                .group_statuses(g)
                .await
                .into_iter()
                .map(|(id, v)| {
                    (
                        id,
                        (v["applied"].as_u64().unwrap_or(0), v["digest"].to_string()),
                    )
                })
                .collect();
            out.insert(g, views);
        }
        out
    }

    /// Waits until every running node reports the same applied position
    /// and state digest in every checked group, twice in a row, and (many
    /// groups) every running node follows or leads every group, none is
    /// lagging or recovering in any, and all hold the same number of keys.
    /// Returns the digests.
    pub async fn settle(&self, limit: Duration) -> Result<String> {
        let started = Instant::now();
        let mut last: Option<Vec<(u32, (u64, String))>> = None;
        let mut seen = String::from("no status answered");
        while started.elapsed() < limit {
            let running = self
                .ids()
                .into_iter()
                .filter(|&id| self.cluster.pid(id).is_some())
                .count();
            if let Err(why) = self.summaries_agree(running).await {
                seen = why;
                last = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let views = self.state_views().await;
            let mut agreed = Vec::new();
            let mut differ = None;
            for (g, v) in &views {
                let distinct: BTreeSet<&(u64, String)> = v.values().collect();
                if v.len() == running && running > 0 && distinct.len() == 1 {
                    agreed.extend(distinct.into_iter().map(|d| (*g, d.clone())));
                } else {
                    differ = Some(format!("group {g}: {v:?}"));
                    break;
                }
            }
            match differ {
                None => {
                    if last.as_ref() == Some(&agreed) {
                        let digests: Vec<String> =
                            agreed.iter().map(|(_, (_, d))| d.clone()).collect();
                        return Ok(digests.join(","));
                    }
                    last = Some(agreed);
                }
                Some(d) => {
                    seen = d;
                    last = None;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("replicas did not converge on one state within {limit:?}: {seen}")
    }

    /// With many groups: every one of the `running` nodes answers, follows
    /// or leads every group, lags and recovers in none, and all hold the
    /// same number of keys (`Err`: what differs). Always true of a
    /// single-group cluster (its one group is compared by digest).
    async fn summaries_agree(&self, running: usize) -> Result<(), String> {
        let n = u64::from(self.groups());
        if n == 1 {
            return Ok(());
        }
        let st = self.statuses().await;
        if st.len() != running {
            return Err(format!("{} of {running} running nodes answered", st.len()));
        }
        let brief = |v: &serde_json::Value| {
            format!(
                "led {} following {} looking {} lagging {} recovering {} keys {}",
                v["led"], v["following"], v["looking"], v["lagging"], v["recovering"], v["keys"]
            )
        };
        let keys: BTreeSet<u64> = st
            .values()
            .map(|v| v["keys"].as_u64().unwrap_or(0))
            .collect();
        for (id, v) in &st {
            let held = v["led"].as_u64().unwrap_or(0) + v["following"].as_u64().unwrap_or(0);
            let busy = v["lagging"].as_u64().unwrap_or(0) + v["recovering"].as_u64().unwrap_or(0);
            if held != n || busy != 0 || keys.len() != 1 {
                let all: Vec<String> = st
                    .iter()
                    .map(|(id, v)| format!("node {id}: {}", brief(v)))
                    .collect();
                return Err(format!(
                    "node {id} is not settled in every group: {}",
                    all.join("; ")
                ));
            }
        }
        Ok(())
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

/// Groups of a large cluster whose replicas are compared one by one,
/// besides group 0 and the registers' groups.
pub const CHECKED_SPREAD: u32 = 24;

/// Probe writes in flight at a time, over all groups.
pub const PROBES_IN_FLIGHT: usize = 256;

/// The first id of the probe writes' client-named sessions (far from the
/// workload's ids and from the cluster-assigned upper half).
const PROBE_SESSIONS: u64 = 0x0000_c0ff_0000_0000;

/// One key per group of `groups` (index: the group), found by hashing
/// numbered candidates; bounded: a group still without a key after 64
/// candidates per group gets none and its probe uses a numbered key of
/// its own search (never observed with FNV-1a; the bound ends the loop).
fn probe_keys(groups: u32) -> Vec<Bytes> {
    let n = groups.max(1);
    let mut keys: Vec<Option<Bytes>> = vec![None; n as usize];
    let mut missing = n as usize;
    for i in 0..u64::from(n) * 64 {
        if missing == 0 {
            break;
        }
        let key = Bytes::from(format!("probe/{i}"));
        let slot = &mut keys[group_of(&key, n) as usize];
        if slot.is_none() {
            *slot = Some(key);
            missing -= 1;
        }
    }
    keys.into_iter()
        .enumerate()
        .map(|(g, k)| k.unwrap_or_else(|| Bytes::from(format!("probe/unmatched/{g}"))))
        .collect()
}

/// The shortest time between two replacements of one probe worker's
/// client. A fresh client learns every group's leader afresh but opens
/// new connections (TCP and TLS); replaced after every failed attempt, 256
/// workers over lossy links opened about a thousand connections a second,
/// the harness's side kept ~49 000 of them in TIME_WAIT, and the kernel's
/// search for a free port in `connect` took more than a core of the two
/// (perf: `__inet_check_established`), starving the nodes under test
/// (`lossy-links` with 1 000 groups: 534 groups without a write in 40 s).
const PROBE_CLIENT_REFRESH: Duration = Duration::from_secs(2);

/// The longest pause between two failed attempts of one probe write (the
/// pause doubles from 50 ms).
const PROBE_BACKOFF_MAX: Duration = Duration::from_millis(400);

/// A probe worker's client, replaced at most once per
/// [`PROBE_CLIENT_REFRESH`].
struct ProbeClient<F: Fn() -> Client> {
    fresh: F,
    client: Client,
    made: Instant,
}

impl<F: Fn() -> Client> ProbeClient<F> {
    fn new(fresh: F) -> Self {
        let client = fresh();
        ProbeClient {
            fresh,
            client,
            made: Instant::now(),
        }
    }

    /// After a failed attempt: a fresh client, unless this one is younger
    /// than [`PROBE_CLIENT_REFRESH`].
    fn after_failure(&mut self) {
        if self.made.elapsed() >= PROBE_CLIENT_REFRESH {
            self.client = (self.fresh)();
            self.made = Instant::now();
        }
    }
}

/// Writes `value` to `key` in a fresh client-named session until one
/// attempt is acknowledged (true) or `deadline` passes (false); after a
/// failed attempt the worker's client may be replaced
/// ([`ProbeClient::after_failure`]) and the next attempt waits a little
/// longer.
async fn probe_group<F: Fn() -> Client>(
    client: &mut ProbeClient<F>,
    session: u64,
    key: Bytes,
    value: Bytes,
    deadline: Instant,
) -> bool {
    let mut session = Session::new(session);
    let mut pause = Duration::from_millis(50);
    // Bounded by the deadline; each attempt by the client's own timeout
    // and by 2 s.
    while Instant::now() < deadline {
        let op = KvOp::Put {
            key: key.clone(),
            value: value.clone(),
        };
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_secs(2),
            client.client.write_in(&mut session, op),
        )
        .await
        {
            return true;
        }
        client.after_failure();
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(PROBE_BACKOFF_MAX);
    }
    false
}

/// The leader of group `g` (index into `group_leaders`; 0 of a
/// single-group node, whose status has `leader` and `role`) that a
/// quorum of the answering nodes name, the leader itself among them.
pub fn agreed_leader_of(
    st: &BTreeMap<u64, serde_json::Value>,
    g: usize,
    quorum: usize,
) -> Option<u64> {
    let named = |v: &serde_json::Value| -> Option<u64> {
        if v["groups"].is_u64() {
            v["group_leaders"]
                .get(g)
                .and_then(serde_json::Value::as_u64)
        } else {
            v["leader"].as_u64()
        }
    };
    let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
    for v in st.values() {
        if let Some(l) = named(v) {
            *votes.entry(l).or_default() += 1;
        }
    }
    votes.into_iter().find_map(|(l, n)| {
        let own = st.get(&l).and_then(named) == Some(l);
        (own && n >= quorum).then_some(l)
    })
}

/// Every group's agreed leader ([`agreed_leader_of`]), or what is missing.
pub fn agreed_group_leaders(
    st: &BTreeMap<u64, serde_json::Value>,
    groups: u32,
    quorum: usize,
) -> Result<Vec<u64>, String> {
    let mut leaders = Vec::with_capacity(groups as usize);
    let mut without = Vec::new();
    for g in 0..groups as usize {
        match agreed_leader_of(st, g, quorum) {
            Some(l) => leaders.push(l),
            None => without.push(g),
        }
    }
    if without.is_empty() {
        return Ok(leaders);
    }
    let shown: Vec<_> = without.iter().take(10).collect();
    Err(format!(
        "{} of {groups} groups without an agreed leader ({} nodes answered), among them {shown:?}",
        without.len(),
        st.len()
    ))
}

/// [`ChaosCluster::admin_until_done`] in group `group`, through `client`
/// (see [`ChaosCluster::admin_client`]): asked until not refused with a
/// transient answer, bounded by `limit` and 1 000 attempts 100 ms apart.
pub async fn admin_until_done_in(
    client: &Client,
    group: u32,
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
        match client.admin_in(group, req).await {
            Ok(json) => {
                let v = serde_json::from_str(&json)
                    .with_context(|| format!("group {group}: admin answer {json:?} is no JSON"))?;
                return Ok((v, refusals));
            }
            Err(ClientError::Node(m)) if m.starts_with("retry:") || transient(&m) => last = m,
            Err(e) => bail!("group {group}: admin {req:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("group {group}: admin {req:?} still refused after {limit:?}; last answer: {last}")
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
