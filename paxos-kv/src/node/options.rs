//! The node's settings: its members, its directories and its limits, as
//! `paxos-node run` parses them.

use anyhow::{bail, Context, Result};
use paxos_core::{Config, GroupId, NodeId, Zxid};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::identity::EmptyStart;
use crate::kv::{DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSION_BYTES};

/// A member of the cluster: where its peers and its clients reach it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// QUIC address for peer traffic.
    pub peer: SocketAddr,
    /// TCP address for clients.
    pub client: SocketAddr,
}

/// Everything a node needs to run.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// This node's id.
    pub id: u64,
    /// Every member, this node included: the addresses of all the nodes
    /// that may take part, voters and observers.
    pub members: BTreeMap<u64, Member>,
    /// The members that start as observers (learn committed entries, never
    /// vote); the others start as voters. Only the start-up membership: a
    /// membership change in the log (`paxos-client admin`) overrides it.
    pub observers: Vec<u64>,
    /// Where the WAL, hard state and snapshots live.
    pub data_dir: PathBuf,
    /// Cluster CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// This node's certificate chain (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Follower timeout before it looks for a new leader; also the leader's
    /// check-quorum period.
    pub election_timeout: Duration,
    /// WAL segment size.
    pub segment_bytes: u64,
    /// Paxos groups this node hosts (default 1): the key space is split
    /// over them by hash ([`crate::shard`]). Part of the cluster's
    /// definition: every node must be started with the same value, and it
    /// cannot change once the data directory holds data (the node refuses
    /// to start with another).
    pub groups: u32,
    /// How long a group stays idle before it quiesces (its leader stops
    /// heartbeating, its followers their election timers; see
    /// `paxos_core::Config::quiesce_after`). `None` (the default): twice
    /// the election timeout when the node hosts more than one group, never
    /// with one; zero: never.
    pub quiesce_after: Option<Duration>,
    /// With more than one group: spread the leaders evenly over the live
    /// voter nodes, and again after a failure heals (leader transfer).
    /// Default `false`: experimental (see the README).
    pub balance_leaders: bool,
    /// With more than one group: how many groups at most may be electing
    /// or establishing a leader on this node's timers at once (0: no
    /// limit). The others keep answering their peers but hold their own
    /// timers (no vote re-sends, no give-ups) until a slot frees, so that
    /// thousands of groups electing after a failure do not swamp the
    /// survivors. Default 256.
    pub max_elections: usize,
    /// Applied entries between two local snapshots (0: never).
    pub snapshot_every: u64,
    /// Log entries kept below the cleanup point, so that a briefly lagging
    /// follower still gets DIFF rather than SNAP
    /// (`paxos_core::Config::retention_entries`).
    pub retention_entries: u64,
    /// Use transport settings tuned for loopback (large MTU, short timers).
    pub loopback: bool,
    /// Client sessions the store keeps before evicting the least recently
    /// used (see [`crate::kv`]). Part of the state machine's definition:
    /// every node of a cluster must use the same value.
    pub max_sessions: usize,
    /// Bytes the store's session table holds at most (remembered results
    /// and principals, see [`KvStore::session_bytes`](crate::kv::KvStore::session_bytes)); like
    /// `max_sessions`, every node of a cluster must use the same value.
    pub max_session_bytes: usize,
    /// Committed entries to apply as no-ops instead of handing them to the
    /// state machine: the operator's way past an entry the state machine
    /// panicked on (see [`POISONED_FILE`](super::POISONED_FILE)). Every node must be given the
    /// same list, so that they all keep the same state.
    pub skip_entries: Vec<Zxid>,
    /// The cluster's id, recorded in the data directory's identity file at
    /// the first start and checked at every start; `None`: derived from the
    /// cluster CA certificate (see [`crate::identity`]).
    pub cluster_id: Option<String>,
    /// What to do with an empty data directory: refuse (the default),
    /// bootstrap a new cluster, or rejoin a running one as a recovering
    /// replica (see [`crate::identity`]).
    pub empty_start: EmptyStart,
    /// Client connections served at once, at most; one more is answered
    /// with an error frame (id 0, "busy: too many client connections") and
    /// closed. Default [`DEFAULT_MAX_CLIENT_CONNECTIONS`].
    pub max_client_connections: usize,
    /// A client connection that sends no request for this long is closed
    /// (after an error frame with id 0 saying so); `None`: never. Default
    /// [`DEFAULT_CLIENT_IDLE_TIMEOUT`].
    pub client_idle_timeout: Option<Duration>,
    /// A follower syncs a batch of at most this many bytes of entries on
    /// its event loop instead of handing it to the sync thread, when no
    /// sync is in flight: at low load that saves the two cross-thread
    /// wake-ups (to the sync thread and back) on the commit path. Larger
    /// batches, and the leader's own (which must not hold up its ACCEPTs),
    /// always go to the sync thread. 0 turns it off. Default
    /// [`DEFAULT_INLINE_SYNC_BYTES`]. Ignored (off) when the node hosts
    /// more than one group: the groups share one log and one sync.
    pub inline_sync_bytes: usize,
    /// Serve clients over plain TCP, without TLS or authentication: every
    /// connection is [`Principal::anonymous`](crate::auth::Principal::anonymous) (read-write). For tests and
    /// trusted networks only; the node warns at start. Default `false`: the
    /// client port speaks TLS and requires a client certificate signed by
    /// the cluster CA ([`crate::tls`]).
    pub insecure_plaintext_clients: bool,
    /// A client connection that has not completed its TLS handshake by then
    /// is closed. Default [`DEFAULT_CLIENT_HANDSHAKE_TIMEOUT`].
    pub client_handshake_timeout: Duration,
    /// Serve linearizable reads on the leader from its lease, without a
    /// quorum round per read (`paxos_core::Config::lease_reads`). Safe only
    /// while the clocks of the nodes drift apart by less than
    /// `lease_clock_drift` per election timeout. Default `false`.
    pub lease_reads: bool,
    /// The clock drift lease reads allow for: a lease lasts the election
    /// timeout minus this after a quorum's acknowledgement. Must be below
    /// the election timeout. Default [`DEFAULT_LEASE_CLOCK_DRIFT`].
    pub lease_clock_drift: Duration,
    /// Test hooks for the chaos suite: a file read every 50 ms for
    /// `sync_delay_ms=N` and `clock_offset_ms=N` lines (see the `fault_file`
    /// module). `None` (the default): no hooks.
    pub fault_file: Option<PathBuf>,
    /// Serve Prometheus metrics at `http://<addr>/metrics` (OpenMetrics
    /// text; see the README, "Monitoring with Prometheus"). `None` (the
    /// default): no metrics listener.
    pub metrics_addr: Option<SocketAddr>,
}

/// Default of [`NodeOptions::lease_clock_drift`] (the kernel's default).
pub const DEFAULT_LEASE_CLOCK_DRIFT: Duration = Duration::from_millis(50);

/// Default of [`NodeOptions::client_handshake_timeout`].
pub const DEFAULT_CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of [`NodeOptions::inline_sync_bytes`]: with 3 nodes on loopback,
/// 1 client wrote about 12% more per second (100 B values) than with every
/// sync on the sync thread, and 256 clients as many.
pub const DEFAULT_INLINE_SYNC_BYTES: usize = 2048;

/// The exit status of `paxos-node run` when an address it must bind (peer
/// or client port) is already in use.
pub const EXIT_ADDR_IN_USE: i32 = 98;

/// Default of [`NodeOptions::max_client_connections`].
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 4096;
/// Default of [`NodeOptions::client_idle_timeout`].
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default of [`NodeOptions::retention_entries`]: the kernel's own.
pub fn default_retention_entries() -> u64 {
    Config::new(GroupId(0), vec![NodeId(1)]).retention_entries
}

impl NodeOptions {
    /// Defaults for everything but identity, membership and paths.
    pub fn new(id: u64, members: BTreeMap<u64, Member>, data_dir: PathBuf, certs: PathBuf) -> Self {
        NodeOptions {
            id,
            members,
            observers: Vec::new(),
            data_dir,
            ca_cert: certs.join("ca.pem"),
            cert: certs.join(format!("node-{id}.pem")),
            key: certs.join(format!("node-{id}.key.pem")),
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(300),
            segment_bytes: 64 << 20,
            groups: 1,
            quiesce_after: None,
            balance_leaders: false,
            max_elections: 256,
            snapshot_every: 1_000_000,
            retention_entries: default_retention_entries(),
            loopback: false,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_session_bytes: DEFAULT_MAX_SESSION_BYTES,
            skip_entries: Vec::new(),
            cluster_id: None,
            empty_start: EmptyStart::Refuse,
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
            client_idle_timeout: Some(DEFAULT_CLIENT_IDLE_TIMEOUT),
            inline_sync_bytes: DEFAULT_INLINE_SYNC_BYTES,
            insecure_plaintext_clients: false,
            client_handshake_timeout: DEFAULT_CLIENT_HANDSHAKE_TIMEOUT,
            lease_reads: false,
            lease_clock_drift: DEFAULT_LEASE_CLOCK_DRIFT,
            fault_file: None,
            metrics_addr: None,
        }
    }
}

/// Parses `ID=PEER_ADDR/CLIENT_ADDR[,ID=...]` into a member table.
pub fn parse_members(spec: &str) -> Result<BTreeMap<u64, Member>> {
    let mut members = BTreeMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addrs) = item
            .split_once('=')
            .with_context(|| format!("member {item:?}: expected ID=PEER_ADDR/CLIENT_ADDR"))?;
        let (peer, client) = addrs
            .split_once('/')
            .with_context(|| format!("member {item:?}: expected PEER_ADDR/CLIENT_ADDR"))?;
        let id: u64 = id
            .parse()
            .with_context(|| format!("member {item:?}: bad id"))?;
        let member = Member {
            peer: peer
                .parse()
                .with_context(|| format!("member {item:?}: bad peer address"))?,
            client: client
                .parse()
                .with_context(|| format!("member {item:?}: bad client address"))?,
        };
        if members.insert(id, member).is_some() {
            bail!("member {id} is listed twice");
        }
    }
    if members.is_empty() {
        bail!("no members given");
    }
    Ok(members)
}

/// Formats a member table as [`parse_members`] reads it.
pub fn format_members(members: &BTreeMap<u64, Member>) -> String {
    members
        .iter()
        .map(|(id, m)| format!("{id}={}/{}", m.peer, m.client))
        .collect::<Vec<_>>()
        .join(",")
}
