//! A local cluster of reference nodes, each a separate `paxos-node` process
//! on loopback with its own data directory: what the end-to-end benchmark,
//! the integration tests and `cargo xtask cluster` start.
//!
//! Processes are killed (SIGKILL) when the cluster is dropped, so a failing
//! test or benchmark never leaves nodes behind.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::node::{format_members, Member};

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
    /// Client connections each node serves at once
    /// (`--max-client-connections`).
    pub max_client_connections: usize,
    /// Idle client connections are closed after this many milliseconds
    /// (`--client-idle-timeout-ms`, 0: never).
    pub client_idle_timeout_ms: u64,
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
            max_sessions: crate::kv::DEFAULT_MAX_SESSIONS,
            max_client_connections: crate::node::DEFAULT_MAX_CLIENT_CONNECTIONS,
            client_idle_timeout_ms: u64::try_from(
                crate::node::DEFAULT_CLIENT_IDLE_TIMEOUT.as_millis(),
            )
            .unwrap_or(u64::MAX),
        }
    }
}

/// A running local cluster.
pub struct LocalCluster {
    spec: ClusterSpec,
    members: BTreeMap<u64, Member>,
    children: BTreeMap<u64, Child>,
}

/// Finds a free loopback port usable for both TCP and UDP.
fn free_port() -> Result<u16> {
    // Bounded: a few attempts at an ephemeral port free for both protocols.
    for _ in 0..64 {
        let tcp = TcpListener::bind("127.0.0.1:0").context("binding a probe TCP port")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port found")
}

impl LocalCluster {
    /// Writes certificates and starts every node.
    pub fn start(spec: ClusterSpec) -> Result<LocalCluster> {
        std::fs::create_dir_all(&spec.base_dir)
            .with_context(|| format!("creating {}", spec.base_dir.display()))?;
        if !spec.node_binary.exists() {
            bail!(
                "node binary {} not found (build paxos-bench's binaries first)",
                spec.node_binary.display()
            );
        }
        let ids: Vec<u64> = (1..=spec.nodes).collect();
        let peer_ids: Vec<_> = ids.iter().map(|&i| paxos_net_quic::PeerId(i)).collect();
        paxos_net_quic::certs::generate_cluster(&spec.base_dir.join("certs"), &peer_ids)
            .context("generating certificates")?;
        let mut members = BTreeMap::new();
        for &id in &ids {
            let peer = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            let client = SocketAddr::from(([127, 0, 0, 1], free_port()?));
            members.insert(id, Member { peer, client });
        }
        let mut cluster = LocalCluster {
            spec,
            members,
            children: BTreeMap::new(),
        };
        for id in ids {
            cluster.start_node(id)?;
        }
        Ok(cluster)
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
        if let Some(mut old) = self.children.remove(&id) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .with_context(|| format!("opening {}", self.log_path(id).display()))?;
        let child = Command::new(&self.spec.node_binary)
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
            .args([
                "--max-client-connections",
                &self.spec.max_client_connections.to_string(),
            ])
            .args([
                "--client-idle-timeout-ms",
                &self.spec.client_idle_timeout_ms.to_string(),
            ])
            .arg("--loopback")
            .env(
                "RUST_LOG",
                std::env::var("PAXOS_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
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

    /// Whether node `id` has a live process.
    pub fn is_running(&mut self, id: u64) -> bool {
        self.children
            .get_mut(&id)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Every node's client address.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.members.values().map(|m| m.client).collect()
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
            if let Ok(s) = Client::status_of(m.client, Duration::from_millis(500)).await {
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

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
