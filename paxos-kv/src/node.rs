//! The reference node: paxos-core's replica driven by tokio, with
//! paxos-election electing, paxos-wal persisting (one sync per batch of
//! appends: group commit), paxos-net-quic carrying the peer traffic,
//! paxos-snapshot planning catch-up and shipping snapshots, and the
//! key-value store of [`crate::kv`] as the state machine.
//!
//! One task owns every piece of consensus state and runs the driving loop
//! the kernel documents: take inputs (peer frames, client requests, timers),
//! then drain the kernel's `Ready` until nothing moves: send, persist, send
//! what waited for the persistence, apply, answer clients. Client
//! connections and the transport run in their own tasks and talk to the
//! loop through bounded channels, so memory stays bounded under overload.
//!
//! Group commit without stalls: the WAL's `sync` runs on a thread of its own
//! and flushes without holding the log's lock. While one sync is in flight
//! the loop keeps taking input and `Ready`s and appends their writes at once
//! (the WAL takes appends during a flush); what waits for durability (the
//! acknowledgements, the kernel's `persisted`) is queued for the next sync,
//! which starts when the one in flight returns. So there is at most one sync
//! in flight and every sync covers all the appends made while the previous
//! one ran.
//!
//! A faulty disk:
//! - damage found at start inside the synced part of the log (entries this
//!   node may have acknowledged) makes the node record that it is
//!   recovering, keep the log's valid prefix and start as a recovering
//!   replica, which neither votes nor counts until a leader readmits it;
//! - a write the disk refuses while the log stays intact (ENOSPC when a
//!   segment is created, say) stalls the node instead of stopping it: that
//!   write and every later one are held in order and retried with backoff
//!   (10 ms doubling to 1 s), nothing waiting for them is acknowledged
//!   (a stalled leader's own acknowledgement is withheld too, so it commits
//!   only with a quorum of followers), and once the disk takes them they
//!   are synced and released, without a restart. A failed flush is still
//!   fatal: the log handle is poisoned, and the process must restart and
//!   recover from disk. The status JSON says `storage_stalled`.
//! - a failed local snapshot is logged and the node goes on.

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::{
    Codec, Config, Elector, Envelope, GroupId, NodeId, Persisted, ReadIndexError, Ready, Recovered,
    Replica, SnapChunk, SnapshotRequest, StateMachine, Storage, Time, Zxid,
};
use paxos_election::{ElectionConfig, FastElection, Notification};
use paxos_net_quic::{ClusterTrust, NetConfig, NodeIdentity, PeerId, Transport};
use paxos_snapshot::{
    write_state_machine, PlannerConfig, Progress, SnapshotMeta, SnapshotReceiver, SnapshotSender,
    SnapshotStore, StoredSnapshot, ZabPlanner,
};
use paxos_wal::{RecoveryMode, WalError, WalOptions, WalStorage};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::auth::Principal;
use crate::budget::{ByteBudget, Share};
use crate::client::{FORBIDDEN_PREFIX, TLS_REQUIRED_PREFIX};
use crate::client_proto::{
    next_frame, write_frames, Frame, ProtoError, ReadMode, Request, Response,
};
use crate::identity::{self, EmptyStart, Identity, Standing};
use crate::kv::{KvCommand, KvStore, DEFAULT_MAX_SESSIONS, DEFAULT_MAX_SESSION_BYTES};

mod fault_file;
use fault_file::{Faults, MonotonicClock};

/// Tag of a peer frame that carries a paxos-core envelope.
const TAG_CORE: u8 = 0;
/// Tag of a peer frame that carries an election notification.
const TAG_ELECTION: u8 = 1;
/// Inputs taken from one source before the loop drains the kernel.
const MAX_INPUTS_PER_TURN: usize = 4096;
/// Rounds of kernel draining per turn (each round makes progress or stops).
const MAX_DRAIN_ROUNDS: usize = 64;
/// Client writes proposed and not yet answered, at most; over it a write is
/// answered "retry: busy" (admission control: memory stays bounded).
const MAX_PENDING_WRITES: usize = 64 * 1024;
/// Bytes of client writes proposed and not yet answered, at most; over it a
/// write is answered "retry: busy" without being proposed.
const MAX_PENDING_WRITE_BYTES: usize = 256 << 20;
/// Bytes of keys of linearizable reads in flight (waiting for their
/// read-index round or for apply), at most; over it a read is answered
/// "retry: too many reads".
const MAX_PENDING_READ_BYTES: usize = 16 << 20;
/// The file in the data directory that names a committed entry the state
/// machine panicked on; while it exists the node refuses to start unless
/// told to skip that entry (see the README, "A poisoned entry").
pub const POISONED_FILE: &str = "POISONED";
/// Linearizable reads waiting for their read-index round, at most.
const MAX_PENDING_READS: usize = 16 * 1024;
/// A read whose round has not come back by then is answered "retry".
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Snapshot chunk size on the wire.
const SNAPSHOT_CHUNK_BYTES: u32 = 256 * 1024;
/// The hard-state spare field holding the election round.
const ELECTION_ROUND_FIELD: usize = 0;
/// The hard-state spare field holding the zxid up to which the log's prefix
/// was compacted away (0: never): a log compacted without the snapshot that
/// covers it is refused at start.
const COMPACTED_FIELD: usize = 1;
/// A peer's control queue above this many frames gets no more snapshot chunks
/// this turn (keeps heartbeats from queueing behind a snapshot).
const SNAPSHOT_PACING_FRAMES: u64 = 8;

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
    /// Every voter, this node included.
    pub members: BTreeMap<u64, Member>,
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
    /// and principals, see [`KvStore::session_bytes`]); like
    /// `max_sessions`, every node of a cluster must use the same value.
    pub max_session_bytes: usize,
    /// Committed entries to apply as no-ops instead of handing them to the
    /// state machine: the operator's way past an entry the state machine
    /// panicked on (see [`POISONED_FILE`]). Every node must be given the
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
    /// [`DEFAULT_INLINE_SYNC_BYTES`].
    pub inline_sync_bytes: usize,
    /// Serve clients over plain TCP, without TLS or authentication: every
    /// connection is [`Principal::anonymous`] (read-write). For tests and
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
            data_dir,
            ca_cert: certs.join("ca.pem"),
            cert: certs.join(format!("node-{id}.pem")),
            key: certs.join(format!("node-{id}.key.pem")),
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(300),
            segment_bytes: 64 << 20,
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

/// Bytes of answers queued for one client connection's writer, at most: a
/// client that sends requests and does not read the answers loses answers
/// (it times out, as on a lost connection) instead of growing the node.
const MAX_CONNECTION_REPLY_BYTES: usize = 8 << 20;
/// Bytes of answers queued for all client connections together, at most.
const MAX_REPLY_BYTES: usize = 512 << 20;

/// An answer on its way to a connection's writer, holding its share of the
/// answer budgets until the writer has encoded it.
struct Outgoing {
    resp: Response,
    _budget: Option<(Share, Share)>,
}

impl From<Response> for Outgoing {
    /// A small answer the connection task sends itself (refusals, its last
    /// word); bounded by the queue's count.
    fn from(resp: Response) -> Outgoing {
        Outgoing {
            resp,
            _budget: None,
        }
    }
}

impl Frame for Outgoing {
    fn encode_frame(&self, id: u64, buf: &mut BytesMut) {
        self.resp.encode_frame(id, buf)
    }
}

/// Roughly the bytes an answer keeps alive while it waits in a queue.
fn reply_bytes(resp: &Response) -> usize {
    let payload = match resp {
        Response::Written(b) => b.len(),
        Response::Value(v) => v.as_ref().map_or(0, |v| v.len()),
        Response::Status(t) | Response::Error(t) | Response::OutcomeUnknown(t) => t.len(),
        Response::NotLeader { addr, .. } => addr.as_ref().map_or(0, |a| a.len()),
    };
    payload + 32
}

/// Where a client's answer goes: its connection's writer, the request id,
/// and the answer budgets (the connection's, everyone's).
struct Reply {
    tx: mpsc::Sender<(u64, Outgoing)>,
    id: u64,
    connection_budget: Arc<ByteBudget>,
    budget: Arc<ByteBudget>,
}

impl Reply {
    fn send(self, resp: Response) {
        self.send_ref(resp)
    }

    /// Never blocks the loop on a slow client: an answer that does not fit
    /// the writer's queue or the budgets is dropped, and the client times
    /// out and retries.
    fn send_ref(&self, resp: Response) {
        let n = reply_bytes(&resp);
        let permits = self
            .connection_budget
            .try_take(n)
            .and_then(|c| Some((c, self.budget.try_take(n)?)));
        match permits {
            Some(permits) => {
                let out = Outgoing {
                    resp,
                    _budget: Some(permits),
                };
                if self.tx.try_send((self.id, out)).is_err() {
                    tracing::debug!(id = self.id, "client's answer queue full; answer dropped");
                }
            }
            None => {
                tracing::debug!(
                    id = self.id,
                    bytes = n,
                    "client not reading its answers; answer dropped"
                )
            }
        }
    }
}

/// A request from a client connection.
struct ClientMsg {
    req: Request,
    reply: Reply,
    /// The request's share of [`MAX_CLIENT_QUEUE_BYTES`], given back when
    /// the driver has taken the request.
    _budget: Share,
}

/// Room made in a client connection's read buffer when it runs short.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// A read buffer with less room than this is grown before the next read.
const MIN_READ_ROOM_BYTES: usize = 4 * 1024;

/// Bytes of client requests queued for the driver (all connections
/// together), at most: a connection whose request does not fit waits, so
/// the queue is bounded in bytes as well as in count.
const MAX_CLIENT_QUEUE_BYTES: usize = 64 << 20;

/// The connections' way to the driver: the bounded channel and its byte
/// budget.
#[derive(Clone)]
struct ToDriver {
    tx: mpsc::Sender<ClientMsg>,
    budget: Arc<ByteBudget>,
    /// [`MAX_REPLY_BYTES`], shared by every connection's answers.
    reply_budget: Arc<ByteBudget>,
}

impl ToDriver {
    /// Queues a request for the driver, waiting for room (in count and in
    /// bytes). `Err` once the driver is gone.
    async fn send(&self, req: Request, reply: Reply) -> Result<(), ()> {
        let bytes = match &req {
            Request::Write(cmd) => cmd.len(),
            Request::Get { key, .. } => key.len(),
            Request::Status => 0,
        };
        // A frame is at most MAX_CLIENT_FRAME_BYTES, well below the budget.
        let budget = self.budget.take(bytes.max(1)).await;
        let msg = ClientMsg {
            req,
            reply,
            _budget: budget,
        };
        self.tx.send(msg).await.map_err(|_| ())
    }
}

/// A finished snapshot thread's report: the zxid, and the file and time taken.
type SnapshotDone = (Zxid, Result<(StoredSnapshot, Duration), String>);

/// A finished snapshot install (verify, move into the store, restore into a
/// staging store), run off the loop: the receiver comes back with it.
struct InstallDone {
    from: NodeId,
    receiver: SnapshotReceiver,
    staged: KvStore,
    result: Result<StoredSnapshot, paxos_snapshot::SnapshotError>,
    elapsed: Duration,
}

/// Snapshot chunks kept while an install runs, at most (the leader paces
/// its chunks and stops after the last one, so only a transfer restarted
/// meanwhile sends any). One dropped beyond this is not lost for good: the
/// receiver then refuses the gap, reports its offset, and the leader
/// resumes there after its progress timeout.
const MAX_DEFERRED_CHUNKS: usize = 64;

/// Persist markers with the messages that wait for them, in order.
type SyncGroup = Vec<(Persisted, Vec<Envelope>)>;

/// First pause before a refused storage write is tried again.
const STALL_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between two tries of a refused storage write.
const STALL_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The disk refused a write (ENOSPC, say) and the log is intact: the node
/// keeps running, withholds everything that waits for that write (its
/// acknowledgements, its own vote in commits) and tries again with
/// backoff. Nothing is acknowledged that is not durable.
struct Stall {
    /// `Ready`s not yet written, in order, with their markers and the
    /// messages waiting for them.
    held: VecDeque<(Ready, Persisted, Vec<Envelope>)>,
    since: Instant,
    retry_at: Instant,
    backoff: Duration,
    attempts: u64,
}

/// A snapshot being streamed to a follower.
struct OutgoingSnapshot {
    to: NodeId,
    sender: SnapshotSender,
}

/// The single owner of a node's consensus state.
struct Driver {
    id: NodeId,
    members: BTreeMap<u64, Member>,
    /// The clock handed to the kernel and the elector (real time, shifted
    /// by the fault hooks' offset, never going backwards).
    clock: MonotonicClock,
    /// The fault hooks' settings (none unless `--fault-file`).
    faults: Arc<Faults>,
    replica: Replica<WalStorage>,
    elector: FastElection,
    kv: KvStore,
    codec: Codec,
    transport: Transport,
    snapshots: SnapshotStore,
    /// Assembles snapshot chunks; `None` while an install runs off the loop.
    receiver: Option<SnapshotReceiver>,
    /// Chunks that arrived while an install ran, for after it.
    deferred_chunks: VecDeque<(NodeId, SnapChunk)>,
    /// The snapshot being installed off the loop and its length: its
    /// progress is reported to the leader on every timer turn.
    installing: Option<(Zxid, u64)>,
    /// Where install tasks report.
    install_done_tx: mpsc::UnboundedSender<InstallDone>,
    outgoing: Vec<OutgoingSnapshot>,
    /// Proposed writes by zxid: the command and who waits for it.
    pending_writes: HashMap<Zxid, (Bytes, Reply)>,
    /// The bytes of the commands in `pending_writes`.
    pending_write_bytes: usize,
    /// The bytes of the keys in `pending_reads` and `waiting_reads`.
    pending_read_bytes: usize,
    /// See [`NodeOptions::skip_entries`].
    skip_entries: Vec<Zxid>,
    /// The compaction point recorded in the hard state ([`COMPACTED_FIELD`]).
    compacted_mark: u64,
    /// Where [`POISONED_FILE`] is written.
    data_dir: PathBuf,
    /// The identity recorded in the data directory.
    identity: Identity,
    /// Reads waiting for their read-index round, by read id, with the time
    /// they give up.
    pending_reads: HashMap<u64, (Bytes, Reply, Instant)>,
    /// When expired reads are next looked for.
    next_read_sweep: Instant,
    /// Confirmed reads waiting for apply to reach their zxid, with the time
    /// they give up.
    waiting_reads: VecDeque<(Zxid, Bytes, Reply, Instant)>,
    next_read: u64,
    /// The election round last made durable.
    election_round: u64,
    snapshot_every: u64,
    applied_since_snapshot: u64,
    /// Whether a snapshot thread is running.
    snapshot_running: bool,
    /// Where snapshot threads report.
    snapshot_done_tx: mpsc::UnboundedSender<SnapshotDone>,
    buf: BytesMut,
    stats: Stats,
    /// Asks the sync thread for one `Wal::sync`, tagged with its number.
    sync_requests: std::sync::mpsc::Sender<u64>,
    /// The number of the last sync asked for.
    sync_gen: u64,
    /// See [`NodeOptions::inline_sync_bytes`].
    inline_sync_bytes: usize,
    /// The sync in flight (its number) and the markers and messages waiting
    /// for it; `None` when idle.
    syncing: Option<(u64, SyncGroup)>,
    /// What waits for the next sync: markers and messages of `Ready`s
    /// written while a sync was in flight, and whether any of them needs a
    /// sync at all.
    queued: SyncGroup,
    queued_needs_sync: bool,
    /// Set while the disk refuses writes.
    stall: Option<Stall>,
}

#[derive(Default)]
struct Stats {
    proposals: u64,
    applied: u64,
    syncs: u64,
    elections: u64,
    /// Snapshot transfers this node started as leader (resumed included).
    snapshot_sends: u64,
    /// Of those, the ones that resumed past offset 0.
    snapshot_resumes: u64,
    /// Snapshots received and installed into the live state.
    snapshot_installs: u64,
    /// Snapshot chunks the receiver refused (gap, foreign, corrupt).
    snapshot_chunks_refused: u64,
    /// Snapshot chunks dropped because the install's queue was full.
    snapshot_chunks_dropped: u64,
    /// Times a storage write was refused and the node stalled.
    storage_stalls: u64,
}

/// Runs a node until `shutdown` resolves. Returns an error if the node
/// cannot start, or stops on a fatal storage error (a failed flush, after
/// which the process must restart and recover from disk); a write the disk
/// refuses (disk full) stalls the node instead (see the module docs).
pub async fn run_node(
    opts: NodeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let id = NodeId(opts.id);
    let me = *opts
        .members
        .get(&opts.id)
        .with_context(|| format!("node {} is not in the member list", opts.id))?;
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let cluster_id = match &opts.cluster_id {
        Some(c) => c.clone(),
        None => identity::cluster_id_from_ca(&opts.ca_cert)?,
    };
    let mut disk_identity =
        identity::check(&opts.data_dir, &cluster_id, opts.id, opts.empty_start)?;
    tracing::info!(cluster = %disk_identity.cluster, standing = ?disk_identity.standing, "identity checked");

    // Storage and the state machine, recovered from disk.
    let storage = open_storage(&opts, &mut disk_identity)?;
    let snapshots = SnapshotStore::open(opts.data_dir.join(identity::SNAPSHOT_DIR))
        .context("opening the snapshot store")?
        .with_chunk_bytes(SNAPSHOT_CHUNK_BYTES);
    check_poisoned(&opts)?;
    let mut kv = KvStore::with_session_limits(opts.max_sessions, opts.max_session_bytes)
        .context("--max-sessions / --max-session-mib")?;
    let mut recovered = Recovered::default();
    let latest = snapshots.latest().context("listing snapshots")?;
    let compacted = storage.extra(COMPACTED_FIELD).unwrap_or(0);
    if compacted > 0 && latest.as_ref().is_none_or(|s| s.zxid.as_u64() < compacted) {
        bail!(
            "the log in {} was compacted up to {} but no snapshot covers it (latest: {:?}): \
             the state before the log's first entry is lost. If the snapshots are gone, empty \
             the data directory and start the node with --rejoin",
            opts.data_dir.display(),
            Zxid(compacted),
            latest.as_ref().map(|s| s.zxid)
        );
    }
    if let Some(latest) = latest {
        let meta = snapshots
            .restore(latest.zxid, &mut kv)
            .with_context(|| format!("restoring snapshot {:?}", latest.zxid))?;
        tracing::info!(zxid = ?meta.zxid, keys = kv.len(), "state restored from snapshot");
        recovered = Recovered {
            applied: kv.applied(),
            snapshot: Some(meta.zxid),
        };
    }
    let receiver = SnapshotReceiver::open(
        SnapshotStore::open(opts.data_dir.join(identity::SNAPSHOT_DIR))
            .context("opening the snapshot store")?,
    )
    .context("opening the snapshot receiver")?;

    let voters: Vec<NodeId> = opts.members.keys().map(|&i| NodeId(i)).collect();
    let mut config = Config::new(GroupId(0), voters.clone());
    config.heartbeat_interval = opts.heartbeat;
    config.election_timeout = opts.election_timeout;
    config.sync_timeout = opts.election_timeout;
    config.lease_reads = opts.lease_reads;
    config.retention_entries = opts.retention_entries;
    config.lease_clock_drift = opts.lease_clock_drift;
    // A command must fit one WAL record (a segment) with room to spare, or
    // every replica would fail to log it; the kernel refuses larger ones.
    let segment_limit = usize::try_from(opts.segment_bytes / 2).unwrap_or(usize::MAX);
    config.max_message_bytes = config.max_message_bytes.min(segment_limit);
    let origin = Instant::now();
    let planner = Box::new(ZabPlanner::new(PlannerConfig::default()));
    let mut replica = Replica::new(id, config, storage, planner, recovered, Time::ZERO)
        .map_err(|e| anyhow::anyhow!("starting the replica: {e}"))?;
    // A member that lost its disk (--rejoin) neither votes nor counts until
    // an established leader has readmitted it; the kernel keeps the flag in
    // the hard state, so a restart mid-recovery stays recovering.
    if disk_identity.standing == Standing::Recovering && !replica.is_recovering() {
        tracing::warn!(id = %id, "rejoining after losing state (an empty data directory, or a damaged log): recovering until an established leader readmits this node");
        replica.mark_recovering();
    }
    // The election round is persisted so that a restarted node never votes
    // twice in one round (paxos-election's contract).
    let initial_round = replica.storage().extra(ELECTION_ROUND_FIELD).unwrap_or(0);
    let elector = FastElection::new(ElectionConfig {
        id,
        voters,
        initial_round,
        voting: !replica.is_recovering(),
        seed: opts.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ std::process::id() as u64,
        ..ElectionConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("election configuration: {e}"))?;

    // The transport.
    let identity = NodeIdentity::from_pem_files(PeerId(opts.id), &opts.cert, &opts.key)
        .with_context(|| format!("loading {} and {}", opts.cert.display(), opts.key.display()))?;
    let trust = ClusterTrust::from_pem_file(&opts.ca_cert)
        .with_context(|| format!("loading {}", opts.ca_cert.display()))?;
    // The client port: TLS with the node's certificate, client certificates
    // checked against the same CA.
    let client_auth = if opts.insecure_plaintext_clients {
        tracing::warn!(
            client = %me.client,
            "--insecure-plaintext-clients: the client port speaks plain TCP without \
             authentication; anyone who reaches it can read and write every key"
        );
        ClientAuth::InsecurePlaintext
    } else {
        let config = crate::tls::client_port_server_config(
            identity.chain().to_vec(),
            identity.key().clone_key(),
            trust.roots(),
        )
        .context("the client port's TLS configuration")?;
        ClientAuth::Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            handshake_timeout: opts.client_handshake_timeout,
        }
    };
    let peers: BTreeMap<PeerId, SocketAddr> = opts
        .members
        .iter()
        .filter(|(&i, _)| i != opts.id)
        .map(|(&i, m)| (PeerId(i), m.peer))
        .collect();
    let net = if opts.loopback {
        NetConfig::loopback(identity, trust, me.peer, peers)
    } else {
        NetConfig::new(identity, trust, me.peer, peers)
    };
    let (transport, mut inbox) = Transport::bind(net)
        .await
        .context("binding the QUIC endpoint")?;

    // Test hooks (--fault-file): read by a task of their own.
    let faults = Arc::new(Faults::default());
    let fault_task = opts
        .fault_file
        .clone()
        .map(|path| tokio::spawn(fault_file::poll(path, faults.clone())));

    // The sync thread: one `Wal::sync` per request, the result sent back.
    let wal = replica.storage().wal_handle();
    let sync_faults = faults.clone();
    let (sync_requests, sync_rx) = std::sync::mpsc::channel::<u64>();
    let (sync_done_tx, mut sync_done) = mpsc::unbounded_channel::<(u64, Result<(), String>)>();
    std::thread::Builder::new()
        .name(format!("wal-sync-{}", opts.id))
        .spawn(move || {
            while let Ok(generation) = sync_rx.recv() {
                sync_faults.delay_sync();
                let r = wal.sync().map(|_| ()).map_err(|e| e.to_string());
                if sync_done_tx.send((generation, r)).is_err() {
                    break;
                }
            }
        })
        .context("starting the WAL sync thread")?;

    // Clients.
    let listener = TcpListener::bind(me.client)
        .await
        .with_context(|| format!("binding the client port {}", me.client))?;
    let (client_tx, mut client_rx) = mpsc::channel::<ClientMsg>(16 * 1024);
    let client_tx = ToDriver {
        tx: client_tx,
        budget: ByteBudget::new(MAX_CLIENT_QUEUE_BYTES),
        reply_budget: ByteBudget::new(MAX_REPLY_BYTES),
    };
    if opts.max_client_connections == 0 {
        bail!("max_client_connections must be at least 1");
    }
    let limits = ClientLimits {
        max_connections: opts.max_client_connections,
        idle_timeout: opts.client_idle_timeout.filter(|d| !d.is_zero()),
    };
    let accept_task = tokio::spawn(accept_clients(
        listener,
        client_tx,
        limits,
        Arc::new(client_auth),
    ));
    tracing::info!(id = %id, peer = %me.peer, client = %me.client, "node started");

    let (snapshot_done_tx, mut snapshot_done) = mpsc::unbounded_channel::<SnapshotDone>();
    let (install_done_tx, mut install_done) = mpsc::unbounded_channel::<InstallDone>();
    let mut d = Driver {
        id,
        members: opts.members.clone(),
        clock: MonotonicClock::new(origin),
        faults,
        replica,
        elector,
        kv,
        codec: Codec::new(16 << 20),
        transport,
        snapshots,
        receiver: Some(receiver),
        deferred_chunks: VecDeque::new(),
        installing: None,
        install_done_tx,
        outgoing: Vec::new(),
        pending_writes: HashMap::new(),
        pending_write_bytes: 0,
        pending_read_bytes: 0,
        skip_entries: opts.skip_entries.clone(),
        compacted_mark: compacted,
        data_dir: opts.data_dir.clone(),
        identity: disk_identity,
        pending_reads: HashMap::new(),
        waiting_reads: VecDeque::new(),
        next_read: 1,
        next_read_sweep: Instant::now() + READ_TIMEOUT,
        election_round: initial_round,
        snapshot_every: opts.snapshot_every,
        applied_since_snapshot: 0,
        snapshot_running: false,
        snapshot_done_tx,
        buf: BytesMut::with_capacity(1 << 20),
        stats: Stats::default(),
        sync_requests,
        sync_gen: 0,
        inline_sync_bytes: opts.inline_sync_bytes,
        syncing: None,
        queued: Vec::new(),
        queued_needs_sync: false,
        stall: None,
    };

    tokio::pin!(shutdown);
    let result = loop {
        if let Err(e) = d.drain() {
            break Err(e);
        }
        let deadline = d.deadline();
        tokio::select! {
            biased;
            _ = &mut shutdown => break Ok(()),
            // First: a finished sync releases commits and acknowledgements;
            // under load the other sources are always ready and would starve it.
            done = sync_done.recv() => {
                let Some(done) = done else { break Err(anyhow::anyhow!("WAL sync thread stopped")) };
                if let Err(e) = d.on_synced(done) {
                    break Err(e);
                }
            }
            frame = inbox.frames.recv() => {
                let Some((peer, frame)) = frame else { break Err(anyhow::anyhow!("transport closed")) };
                d.on_frame(peer, frame);
            }
            msg = client_rx.recv() => {
                let Some(msg) = msg else { break Err(anyhow::anyhow!("client listener stopped")) };
                d.on_client(msg);
            }
            done = install_done.recv() => {
                if let Some(done) = done {
                    d.on_install_done(done);
                }
            }
            bulk = inbox.bulk.recv() => {
                if let Some((peer, payload)) = bulk {
                    tracing::debug!(%peer, bytes = payload.len(), "unexpected bulk payload dropped");
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => d.on_timeout(),
        }
        if let Err(e) = d.retry_stalled() {
            break Err(e);
        }
        // Whatever woke us, take what else is ready from every source (a
        // bounded amount), so that no source starves another and one turn of
        // the kernel covers a whole batch.
        for _ in 0..MAX_INPUTS_PER_TURN {
            match inbox.frames.try_recv() {
                Ok((peer, frame)) => d.on_frame(peer, frame),
                Err(_) => break,
            }
        }
        for _ in 0..MAX_INPUTS_PER_TURN {
            match client_rx.try_recv() {
                Ok(msg) => d.on_client(msg),
                Err(_) => break,
            }
        }
        if let Ok(done) = sync_done.try_recv() {
            if let Err(e) = d.on_synced(done) {
                break Err(e);
            }
        }
        if let Ok((zxid, result)) = snapshot_done.try_recv() {
            d.on_snapshot_done(zxid, result);
        }
        // Timers too: under load some input is always ready, and the sleep
        // branch alone would never fire (heartbeats, check-quorum).
        d.on_timeout();
    };
    accept_task.abort();
    if let Some(t) = fault_task {
        t.abort();
    }
    let metrics = d.transport.shutdown().await;
    tracing::info!(id = %d.id, ?metrics, "node stopped");
    result
}

/// Opens the node's WAL and hard state. Damage inside the part of the log
/// that was synced (records this node may have acknowledged) is not cut
/// like a torn tail: the node records in its identity that it is
/// recovering (durably, before the log is changed), then keeps the log's
/// valid prefix and starts as a recovering replica, which neither votes
/// nor counts until a leader has brought it up to date (see
/// ARCHITECTURE.md, "Recovering replicas").
///
/// The valid prefix is kept rather than the whole log discarded: it is
/// intact (every record checked), the leader's sync repairs the rest
/// (DIFF, TRUNC or SNAP) as for any follower behind, and the hard state
/// (the promises this node made) stays, which is safer than a wiped node's
/// start. The damaged segment files are copied aside (`*.damaged`).
fn open_storage(opts: &NodeOptions, disk_identity: &mut Identity) -> Result<WalStorage> {
    let dir = opts.data_dir.join(identity::WAL_DIR);
    let wal_options = WalOptions {
        segment_bytes: opts.segment_bytes,
        ..WalOptions::default()
    };
    let remedy = format!(
        "if the node cannot recover by itself, move {} aside (or empty it) and start the node \
         with `paxos-node run --rejoin`: it then catches up from its peers before it votes",
        opts.data_dir.display()
    );
    let (path, offset, reason, last_good, proven) =
        match WalStorage::open(&dir, wal_options.clone()) {
            Ok((storage, report)) => {
                tracing::info!(?report, "wal opened");
                return Ok(storage);
            }
            Err(WalError::Corrupted {
                path,
                offset,
                reason,
                last_good_key,
                proven_durable_key,
            }) => (path, offset, reason, last_good_key, proven_durable_key),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("opening the WAL in {}; {remedy}", opts.data_dir.display())
                })
            }
        };
    tracing::error!(
        file = %path.display(),
        offset,
        %reason,
        last_good = ?last_good.map(Zxid),
        proven_durable = ?Zxid(proven),
        "the log is damaged where it was synced: entries this node may have acknowledged \
         are lost; keeping the valid prefix and recovering from the peers without voting"
    );
    let recovering = Identity {
        standing: Standing::Recovering,
        ..disk_identity.clone()
    };
    identity::write(&opts.data_dir, &recovering).with_context(|| {
        format!(
            "the log is damaged in {} at offset {offset} ({reason}), and this node could not \
             record that it must recover; {remedy}",
            path.display()
        )
    })?;
    *disk_identity = recovering;
    let keep = WalOptions {
        recovery: RecoveryMode::KeepValidPrefix,
        ..wal_options
    };
    let (storage, report) = WalStorage::open(&dir, keep).with_context(|| {
        format!(
            "the log is damaged in {} at offset {offset} ({reason}) and its valid prefix \
             could not be kept; {remedy}",
            path.display()
        )
    })?;
    if let Some(d) = &report.damaged {
        tracing::warn!(
            file = %d.path.display(),
            offset = d.offset,
            kept_through = ?d.after_key.map(Zxid),
            lost_through = ?Zxid(d.through_key),
            copies = ?d.preserved_copies,
            "damaged log cut to its valid prefix; the rest is refetched from the leader"
        );
    }
    Ok(storage)
}

impl Driver {
    fn now(&self) -> Time {
        self.clock.now(self.faults.clock_offset_ms())
    }

    fn to_instant(&self, t: Time) -> Instant {
        self.clock.instant_of(t, self.faults.clock_offset_ms())
    }

    /// When the loop must wake up even without input.
    fn deadline(&self) -> Instant {
        let mut next = Instant::now() + Duration::from_millis(100);
        for t in [self.replica.poll_timeout(), self.elector.poll_timeout()]
            .into_iter()
            .flatten()
        {
            next = next.min(self.to_instant(t));
        }
        if !self.outgoing.is_empty() {
            next = next.min(Instant::now() + Duration::from_millis(1));
        }
        if let Some(stall) = &self.stall {
            next = next.min(stall.retry_at);
        }
        next
    }

    fn on_timeout(&mut self) {
        self.expire_reads();
        let now = self.now();
        if let Some((zxid, total)) = self.installing {
            // The install is alive: tell the leader (the kernel sends at
            // most one report per heartbeat interval).
            self.replica.snapshot_progress(now, zxid, total, true);
        }
        if self.replica.poll_timeout().is_some_and(|t| t <= now) {
            self.replica.handle_timeout(now);
        }
        if self.elector.poll_timeout().is_some_and(|t| t <= now) {
            self.elector.handle_timeout(now);
        }
    }

    fn on_frame(&mut self, peer: PeerId, frame: Bytes) {
        let now = self.now();
        match frame.first() {
            Some(&TAG_CORE) => match self.codec.decode(frame.slice(1..)) {
                Ok(env) if env.from.0 == peer.0 => self.replica.handle_message(now, env),
                Ok(env) => {
                    tracing::warn!(%peer, claimed = %env.from, "envelope names another sender; dropped")
                }
                Err(e) => tracing::warn!(%peer, error = %e, "malformed consensus frame dropped"),
            },
            Some(&TAG_ELECTION) => match Notification::decode(&frame[1..]) {
                Ok(n) => self.elector.handle_message(now, NodeId(peer.0), n),
                Err(e) => tracing::warn!(%peer, error = %e, "malformed election frame dropped"),
            },
            _ => tracing::warn!(%peer, "frame with an unknown tag dropped"),
        }
    }

    fn leader_hint(&self) -> Response {
        let leader = self.replica.leader().filter(|&l| l != self.id);
        Response::NotLeader {
            leader: leader.map(|l| l.0),
            addr: leader
                .and_then(|l| self.members.get(&l.0))
                .map(|m| m.client.to_string()),
        }
    }

    fn on_client(&mut self, msg: ClientMsg) {
        // The principal is checked where the connection is served (roles)
        // and is the requester of every write (session ownership).
        let ClientMsg {
            req,
            reply,
            _budget,
        } = msg;
        match req {
            Request::Write(cmd) => self.propose(cmd, reply),
            Request::Get {
                key,
                mode: ReadMode::Stale,
            } => {
                let v = self.kv.get(&key).cloned();
                reply.send(Response::Value(v));
            }
            Request::Get {
                key,
                mode: ReadMode::Linearizable,
            } => {
                if self.pending_reads.len() + self.waiting_reads.len() >= MAX_PENDING_READS
                    || self.pending_read_bytes + key.len() > MAX_PENDING_READ_BYTES
                {
                    reply.send(Response::Error("retry: too many reads".into()));
                    return;
                }
                let rid = self.next_read;
                self.next_read += 1;
                let ctx = Bytes::copy_from_slice(&rid.to_le_bytes());
                let now = self.now();
                match self.replica.read_index(now, ctx) {
                    Ok(()) => {
                        self.pending_read_bytes += key.len();
                        self.pending_reads
                            .insert(rid, (key, reply, Instant::now() + READ_TIMEOUT));
                    }
                    Err(ReadIndexError::NoLeader) => reply.send(self.leader_hint()),
                    Err(ReadIndexError::Busy) => {
                        reply.send(Response::Error("retry: too many reads".into()))
                    }
                }
            }
            Request::Status => reply.send(Response::Status(self.status_json())),
        }
    }

    /// Proposes an encoded command (checked by the client protocol decoder).
    fn propose(&mut self, data: Bytes, reply: Reply) {
        if self.pending_writes.len() >= MAX_PENDING_WRITES
            || self.pending_write_bytes + data.len() > MAX_PENDING_WRITE_BYTES
        {
            reply.send(Response::Error("retry: busy".into()));
            return;
        }
        match self.replica.propose(data.clone()) {
            Ok(zxid) => {
                self.stats.proposals += 1;
                self.pending_write_bytes += data.len();
                self.pending_writes.insert(zxid, (data, reply));
            }
            Err(paxos_core::ProposeError::NotLeader { .. }) => reply.send(self.leader_hint()),
            Err(e) => reply.send(Response::Error(e.to_string())),
        }
    }

    fn send_envelope(&mut self, env: Envelope) {
        self.buf.clear();
        self.buf.put_u8(TAG_CORE);
        if let Err(e) = self.codec.encode(&env, &mut self.buf) {
            tracing::error!(error = %e, msg = env.msg.name(), "could not encode a message; dropped");
            return;
        }
        let frame = self.buf.split().freeze();
        if let Err(e) = self.transport.send(PeerId(env.to.0), frame) {
            // The kernel retransmits what matters (heartbeats, pipeline
            // timeouts, sync retries); a full queue is a slow peer.
            tracing::debug!(to = %env.to, error = %e, "frame not queued");
        }
    }

    fn send_election(&mut self, to: NodeId, n: Notification) {
        self.buf.clear();
        self.buf.put_u8(TAG_ELECTION);
        n.encode(&mut self.buf);
        let frame = self.buf.split().freeze();
        if let Err(e) = self.transport.send(PeerId(to.0), frame) {
            tracing::debug!(%to, error = %e, "election frame not queued");
        }
    }

    /// Drains the elector and the kernel until neither has anything to do.
    fn drain(&mut self) -> Result<()> {
        for _ in 0..MAX_DRAIN_ROUNDS {
            let mut moved = false;
            let round = self.elector.round();
            if round != self.election_round {
                // Durable before any vote of the new round leaves.
                self.replica
                    .storage_mut()
                    .set_extra(ELECTION_ROUND_FIELD, round)
                    .map_err(|e| anyhow::anyhow!("persisting the election round: {e}"))?;
                self.election_round = round;
            }
            while let Some((to, n)) = self.elector.poll_transmit() {
                self.send_election(to, n);
            }
            while let Some(decision) = self.elector.poll_decision() {
                self.stats.elections += 1;
                tracing::info!(id = %self.id, leader = %decision.leader, round = decision.round, "election decided");
                let now = self.now();
                self.replica.handle_leader_decision(now, decision);
                moved = true;
            }
            self.pump_snapshots();
            if self.replica.has_ready() {
                let ready = self.replica.ready();
                if !ready.is_empty() {
                    self.handle_ready(ready)?;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        Ok(())
    }

    fn handle_ready(&mut self, mut ready: Ready) -> Result<()> {
        let marker = ready.persist_marker();
        for env in std::mem::take(&mut ready.messages) {
            self.send_envelope(env);
        }
        let waiting = std::mem::take(&mut ready.persisted_messages);
        let committed = std::mem::take(&mut ready.committed);
        let read_states = std::mem::take(&mut ready.read_states);
        let snapshot_requests = std::mem::take(&mut ready.snapshot_requests);
        let events = std::mem::take(&mut ready.events);
        let writes = ready.needs_sync() || ready.compact_to.is_some();
        if self.stall.is_some() {
            // The disk refused an earlier write: this one waits behind it
            // (in order), and so does everything waiting for it.
            self.hold(ready, marker, waiting);
        } else if ready.hard_state.is_some() || ready.truncate_after.is_some() {
            // Epoch changes and truncations are rare: write and sync them
            // here, after everything before them, so that a hard state never
            // reaches the disk before the log it vouches for, and no read of
            // the log sees an entry whose truncation is still queued.
            if self.write_or_stall(&ready)? {
                self.queued.push((marker, waiting));
                self.flush_now()?;
            } else {
                self.hold(ready, marker, waiting);
            }
        } else if self.syncing.is_some() {
            // A sync is in flight: write now (the WAL takes appends during a
            // flush); what waits for these writes goes with the next sync.
            if writes && !self.write_or_stall(&ready)? {
                self.hold(ready, marker, waiting);
            } else {
                self.queued_needs_sync |= ready.needs_sync();
                self.queued.push((marker, waiting));
            }
        } else if writes && !self.write_or_stall(&ready)? {
            self.hold(ready, marker, waiting);
        } else if writes {
            if ready.needs_sync() && self.sync_inline(&ready) {
                self.queued.push((marker, waiting));
                self.flush_now()?;
            } else if ready.needs_sync() {
                self.start_sync(vec![(marker, waiting)])?;
            } else {
                self.release(vec![(marker, waiting)]);
            }
        } else {
            self.release(vec![(marker, waiting)]);
        }

        let mut last_applied = None;
        for e in &committed {
            let result = self.apply_entry(e.zxid, &e.data)?;
            last_applied = Some(e.zxid);
            self.stats.applied += 1;
            self.applied_since_snapshot += 1;
            if let Some((data, reply)) = self.pending_writes.remove(&e.zxid) {
                self.pending_write_bytes -= data.len();
                if data == e.data {
                    reply.send(Response::Written(result));
                } else {
                    reply.send(Response::Error(
                        "retry: superseded by another leader".into(),
                    ));
                }
            }
        }
        if let Some(z) = last_applied {
            self.replica.applied(z);
        }
        for rs in &read_states {
            let rid = read_id(&rs.ctx);
            if let Some((key, reply, deadline)) = rid.and_then(|r| self.pending_reads.remove(&r)) {
                self.waiting_reads
                    .push_back((rs.zxid, key, reply, deadline));
            }
        }
        self.serve_reads();
        for req in snapshot_requests {
            self.on_snapshot_request(req);
        }
        for ev in events {
            self.on_event(ev);
        }
        if last_applied.is_some() {
            self.maybe_snapshot();
        }
        Ok(())
    }

    /// Applies one committed entry, or skips it if the operator said so. A
    /// panic of the state machine stops the node with an error naming the
    /// entry, after recording it in [`POISONED_FILE`]: the entry is
    /// committed, so every restart would replay it and panic again.
    fn apply_entry(&mut self, zxid: Zxid, data: &Bytes) -> Result<Bytes> {
        if self.skip_entries.contains(&zxid) {
            tracing::warn!(%zxid, bytes = data.len(), "committed entry skipped as the operator asked (--skip-entry)");
            let poisoned = self.data_dir.join(POISONED_FILE);
            if read_poisoned(&poisoned).is_some_and(|z| z == zxid) {
                let _ = std::fs::remove_file(&poisoned);
            }
            return Ok(self.kv.skip(zxid));
        }
        apply_guarded(&mut self.kv, zxid, data, &self.data_dir)
    }

    /// Applies a `Ready`'s writes to storage (no sync). A storage error is
    /// fatal: the process restarts and recovers from disk.
    fn write(&mut self, ready: &Ready) -> Result<()> {
        if let Some(c) = ready
            .compact_to
            .filter(|c| c.as_u64() > self.compacted_mark)
        {
            // Before the prefix goes: record that a snapshot at or above
            // `c` is needed to start from this log. The latest snapshot
            // covers every compaction until the next snapshot, so this
            // costs one hard-state write per snapshot, not per batch.
            let latest = self.snapshots.latest().ok().flatten().map(|s| s.zxid);
            let mark = latest.map_or(c, |z| z.max(c)).as_u64();
            self.replica
                .storage_mut()
                .set_extra(COMPACTED_FIELD, mark)
                .map_err(|e| anyhow::anyhow!("recording the compaction point: {e}"))?;
            self.compacted_mark = mark;
        }
        self.replica
            .storage_mut()
            .write_ready(ready)
            .map_err(|e| anyhow::anyhow!("storage write failed: {e}"))
    }

    /// Writes `ready`'s changes; `Ok(false)` if the disk refused them but
    /// the log is intact (ENOSPC, say): the node then stalls (see
    /// [`Stall`]) instead of stopping. An error only if the log handle is
    /// unusable (a failed flush poisons it: the process must restart and
    /// recover from disk).
    fn write_or_stall(&mut self, ready: &Ready) -> Result<bool> {
        match self.write(ready) {
            Ok(()) => Ok(true),
            Err(e) if self.replica.storage().wal().is_poisoned() => Err(e),
            Err(e) => {
                tracing::error!(id = %self.id, error = %e,
                    "storage write refused (disk full?): not acknowledging anything written from now on; retrying with backoff");
                let now = Instant::now();
                self.stall = Some(Stall {
                    held: VecDeque::new(),
                    since: now,
                    retry_at: now + STALL_BACKOFF_MIN,
                    backoff: STALL_BACKOFF_MIN,
                    attempts: 1,
                });
                self.stats.storage_stalls += 1;
                Ok(false)
            }
        }
    }

    /// Queues a `Ready` whose writes wait for the disk, with its marker and
    /// the messages that wait for them.
    fn hold(&mut self, ready: Ready, marker: Persisted, waiting: Vec<Envelope>) {
        if let Some(stall) = self.stall.as_mut() {
            stall.held.push_back((ready, marker, waiting));
        } else {
            debug_assert!(false, "hold only while stalled");
        }
    }

    /// While stalled, retries the held writes in order once the backoff
    /// has passed; when all went in, syncs them and releases what waited.
    fn retry_stalled(&mut self) -> Result<()> {
        let Some(stall) = self.stall.as_ref() else {
            return Ok(());
        };
        if Instant::now() < stall.retry_at {
            return Ok(());
        }
        // Bounded by the held queue, which the kernel's windows bound.
        loop {
            let Some(stall) = self.stall.as_mut() else {
                return Ok(());
            };
            let Some((mut ready, marker, waiting)) = stall.held.pop_front() else {
                break;
            };
            // A failed batch may have gone in partly (up to a segment roll
            // that failed): without a truncation first, append only the rest.
            if ready.truncate_after.is_none() {
                let last = self.replica.storage().last_zxid();
                ready.entries.retain(|e| Some(e.zxid) > last);
            }
            match self.write(&ready) {
                Ok(()) => self.queued.push((marker, waiting)),
                Err(e) if self.replica.storage().wal().is_poisoned() => return Err(e),
                Err(e) => {
                    let Some(stall) = self.stall.as_mut() else {
                        return Ok(());
                    };
                    stall.held.push_front((ready, marker, waiting));
                    stall.attempts += 1;
                    stall.backoff = (stall.backoff * 2).min(STALL_BACKOFF_MAX);
                    stall.retry_at = Instant::now() + stall.backoff;
                    if stall.attempts % 20 == 0 {
                        tracing::warn!(id = %self.id, error = %e, attempts = stall.attempts,
                            stalled_ms = stall.since.elapsed().as_millis() as u64,
                            "storage still refuses writes; retrying");
                    }
                    return Ok(());
                }
            }
        }
        if let Some(stall) = self.stall.take() {
            tracing::info!(id = %self.id, attempts = stall.attempts,
                stalled_ms = stall.since.elapsed().as_millis() as u64,
                "storage takes writes again; syncing what waited");
        }
        self.queued_needs_sync = true;
        self.flush_now()
    }

    /// Whether to sync `ready` (written, none in flight) on the loop; see
    /// [`NodeOptions::inline_sync_bytes`].
    fn sync_inline(&self, ready: &Ready) -> bool {
        if self.inline_sync_bytes == 0 || self.replica.is_leader() {
            return false;
        }
        let mut bytes = 0usize;
        for e in &ready.entries {
            bytes += e.data.len();
            if bytes > self.inline_sync_bytes {
                return false;
            }
        }
        true
    }

    fn start_sync(&mut self, group: SyncGroup) -> Result<()> {
        debug_assert!(self.syncing.is_none(), "one sync in flight at most");
        self.sync_gen += 1;
        self.syncing = Some((self.sync_gen, group));
        self.sync_requests
            .send(self.sync_gen)
            .map_err(|_| anyhow::anyhow!("WAL sync thread stopped"))
    }

    /// Syncs on this thread (log first, then the hard state), releasing the
    /// sync in flight and everything queued too: this sync covers their
    /// writes. The in-flight sync's own completion is then ignored.
    fn flush_now(&mut self) -> Result<()> {
        let mut groups = self.syncing.take().map(|(_, g)| g).unwrap_or_default();
        groups.append(&mut self.queued);
        self.queued_needs_sync = false;
        self.faults.delay_sync();
        self.replica
            .storage_mut()
            .sync()
            .map_err(|e| anyhow::anyhow!("storage sync failed: {e}"))?;
        self.stats.syncs += 1;
        self.release(groups);
        Ok(())
    }

    /// The writes of `group` are durable: send what waited and tell the kernel.
    fn release(&mut self, group: SyncGroup) {
        let mut last = None;
        for (marker, msgs) in group {
            for env in msgs {
                self.send_envelope(env);
            }
            last = Some(marker);
        }
        if let Some(marker) = last {
            let now = self.now();
            self.replica.persisted(now, marker);
        }
    }

    /// The sync in flight returned: release its group, then sync everything
    /// written meanwhile.
    fn on_synced(&mut self, (generation, result): (u64, Result<(), String>)) -> Result<()> {
        result.map_err(|e| {
            anyhow::anyhow!("WAL sync failed (the log handle is now unusable): {e}")
        })?;
        match self.syncing.take() {
            Some((g, group)) if g == generation => {
                self.stats.syncs += 1;
                self.release(group);
            }
            other => {
                // A sync that `flush_now` already covered and released.
                self.syncing = other;
                return Ok(());
            }
        }
        let group = std::mem::take(&mut self.queued);
        if group.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.queued_needs_sync) {
            self.start_sync(group)
        } else {
            self.release(group);
            Ok(())
        }
    }

    /// Answers confirmed reads whose zxid is applied. Read points come back
    /// in increasing order, so only the front of the queue is looked at.
    fn serve_reads(&mut self) {
        let applied = self.kv.applied();
        while self
            .waiting_reads
            .front()
            .is_some_and(|(z, _, _, _)| *z <= applied)
        {
            if let Some((_, key, reply, _)) = self.waiting_reads.pop_front() {
                self.pending_read_bytes -= key.len();
                reply.send(Response::Value(self.kv.get(&key).cloned()));
            }
        }
    }

    /// Answers "retry" to reads whose round never came back (a request or
    /// answer dropped on a full queue), so the map cannot grow for ever.
    fn expire_reads(&mut self) {
        let now = Instant::now();
        if now < self.next_read_sweep {
            return;
        }
        self.next_read_sweep = now + READ_TIMEOUT / 4;
        let expired: Vec<u64> = self
            .pending_reads
            .iter()
            .filter(|(_, (_, _, deadline))| *deadline <= now)
            .map(|(&rid, _)| rid)
            .collect();
        for rid in expired {
            if let Some((key, reply, _)) = self.pending_reads.remove(&rid) {
                self.pending_read_bytes -= key.len();
                reply.send(Response::Error("retry: read timed out".into()));
            }
        }
        // Confirmed reads whose apply point is not reached in time (a
        // follower far behind, say) give up too: the queue stays bounded in
        // time as well as in size.
        let mut freed = 0;
        self.waiting_reads.retain(|(_, key, reply, deadline)| {
            if *deadline > now {
                return true;
            }
            freed += key.len();
            reply.send_ref(Response::Error("retry: read timed out".into()));
            false
        });
        self.pending_read_bytes -= freed;
    }

    fn on_event(&mut self, ev: paxos_core::Event) {
        let now = self.now();
        match ev {
            paxos_core::Event::LostLeader(vote) => {
                tracing::info!(id = %self.id, ?vote, "lost the leader; looking");
                self.elector.start_looking(now, vote);
                // Proposals in flight may or may not commit (a new leader
                // may carry them on): their outcome is unknown, and the
                // client must not report them as failed. A retry with the
                // same session and sequence is applied at most once.
                for (_, (_, reply)) in self.pending_writes.drain() {
                    reply.send(Response::OutcomeUnknown(
                        "proposed, but leadership changed before it committed".into(),
                    ));
                }
                self.pending_write_bytes = 0;
                for (_, (key, reply, _)) in self.pending_reads.drain() {
                    self.pending_read_bytes -= key.len();
                    reply.send(Response::Error("retry: leadership changed".into()));
                }
                self.outgoing.clear();
            }
            paxos_core::Event::Settled {
                state,
                leader,
                epoch,
            } => {
                tracing::info!(id = %self.id, ?state, %leader, ?epoch, "settled");
                self.elector.settle(now, state, leader, epoch);
            }
            paxos_core::Event::ReadAborted { ctx } => {
                if let Some((key, reply, _)) =
                    read_id(&ctx).and_then(|r| self.pending_reads.remove(&r))
                {
                    self.pending_read_bytes -= key.len();
                    reply.send(Response::Error("retry: read aborted".into()));
                }
            }
            paxos_core::Event::RecoveryStarted => {
                tracing::warn!(id = %self.id, "recovering: not voting until an established leader readmits this node");
                self.elector.set_voting(now, false);
            }
            paxos_core::Event::RecoveryComplete { leader, epoch } => {
                tracing::info!(id = %self.id, %leader, ?epoch, "readmitted: voting again");
                self.elector.set_voting(now, true);
                // The kernel's flag is cleared durably; the identity follows
                // (a crash in between only makes the next start recover again).
                let id = Identity {
                    standing: Standing::Member,
                    ..self.identity.clone()
                };
                match identity::write(&self.data_dir, &id) {
                    Ok(()) => self.identity = id,
                    Err(e) => {
                        tracing::warn!(error = %e, "identity not updated; the next start recovers again")
                    }
                }
            }
            paxos_core::Event::StorageFailed(e) => {
                tracing::error!(id = %self.id, error = %e, "storage read failed");
            }
        }
    }

    /// Snapshot work, whatever this node's role: a leader streams to a
    /// lagging follower and the follower installs; in discovery a follower
    /// streams to its leader-elect (FETCHSNAP) and the leader-elect
    /// installs. The kernel says which transfer it still wants through
    /// `send_snapshot_chunk` and `snapshot_installed`.
    fn on_snapshot_request(&mut self, req: SnapshotRequest) {
        match req {
            SnapshotRequest::Send {
                to,
                snapshot,
                offset,
            } => {
                let path = self.snapshots.path_of(snapshot);
                match SnapshotSender::open(&path, SNAPSHOT_CHUNK_BYTES) {
                    Ok(mut sender) => {
                        sender.resume_from(offset);
                        self.stats.snapshot_sends += 1;
                        if offset > 0 {
                            self.stats.snapshot_resumes += 1;
                            tracing::info!(%to, ?snapshot, offset, bytes = sender.total_bytes(), "snapshot transfer resumed");
                        }
                        tracing::info!(%to, ?snapshot, offset, bytes = sender.total_bytes(), "streaming snapshot");
                        self.outgoing.retain(|o| o.to != to);
                        self.outgoing.push(OutgoingSnapshot { to, sender });
                    }
                    Err(e) => {
                        tracing::error!(%to, ?snapshot, error = %e, "cannot open snapshot to send")
                    }
                }
            }
            SnapshotRequest::Write { from, chunk } => self.receive_chunk(from, chunk),
        }
    }

    /// Feeds a few chunks of every outgoing snapshot to the kernel, as long
    /// as the peer's queue is short.
    fn pump_snapshots(&mut self) {
        let mut outgoing = std::mem::take(&mut self.outgoing);
        outgoing.retain_mut(|o| {
            for _ in 0..4 {
                let depth = self
                    .transport
                    .peer_metrics(PeerId(o.to.0))
                    .map_or(0, |m| m.queue_depth);
                if depth > SNAPSHOT_PACING_FRAMES {
                    return true;
                }
                match o.sender.next_chunk() {
                    Ok(Some(chunk)) => {
                        let last = chunk.last;
                        if !self.replica.send_snapshot_chunk(o.to, chunk) {
                            return false;
                        }
                        if last {
                            return false;
                        }
                    }
                    Ok(None) => return false,
                    Err(e) => {
                        tracing::error!(to = %o.to, error = %e, "reading the snapshot to send failed");
                        return false;
                    }
                }
            }
            true
        });
        self.outgoing.extend(outgoing);
    }

    fn receive_chunk(&mut self, from: NodeId, chunk: SnapChunk) {
        let Some(receiver) = self.receiver.as_mut() else {
            // An install runs off the loop; its receiver comes back with it.
            if self
                .installing
                .is_some_and(|(z, _)| z == chunk.snapshot_zxid)
            {
                // A chunk of the snapshot being installed: held already.
                return;
            }
            if self.deferred_chunks.len() < MAX_DEFERRED_CHUNKS {
                self.deferred_chunks.push_back((from, chunk));
            } else {
                self.stats.snapshot_chunks_dropped += 1;
                tracing::warn!(%from, offset = chunk.offset, "snapshot chunk dropped while an install runs; the leader resumes from our offset");
            }
            return;
        };
        let snapshot = chunk.snapshot_zxid;
        let mut progress = receiver.accept(&chunk);
        if matches!(
            progress,
            Err(paxos_snapshot::SnapshotError::ForeignChunk { .. })
        ) && chunk.offset == 0
        {
            // The leader started another snapshot: drop what we had.
            tracing::info!(%from, ?snapshot, "a new snapshot transfer replaces the partial one");
            if let Err(e) = receiver.abort() {
                tracing::warn!(error = %e, "partial snapshot not removed");
            }
            progress = receiver.accept(&chunk);
        }
        // What the receiver holds of this snapshot: where the leader
        // resumes if it must restart the transfer.
        let received = receiver
            .in_progress()
            .filter(|(id, _)| id.zxid == snapshot)
            .map_or(0, |_| receiver.next_offset());
        let now = self.now();
        match progress {
            Ok(Progress::Complete) => self.start_install(from),
            Ok(Progress::NeedMore { .. }) => self
                .replica
                .snapshot_progress(now, snapshot, received, false),
            Err(e) => {
                self.stats.snapshot_chunks_refused += 1;
                tracing::warn!(%from, error = %e, received, "snapshot chunk refused");
                self.replica
                    .snapshot_progress(now, snapshot, received, false);
            }
        }
    }

    /// The last chunk is in: verify the file, move it into the store and
    /// restore it into a staging store on a blocking thread (each step reads
    /// the whole snapshot), so the loop keeps serving heartbeats and clients
    /// meanwhile. [`on_install_done`](Self::on_install_done) finishes.
    fn start_install(&mut self, from: NodeId) {
        let Some(mut receiver) = self.receiver.take() else {
            panic!("invariant: an install starts only from a chunk the receiver took");
        };
        if let Some((id, total)) = receiver.in_progress() {
            self.installing = Some((id.zxid, total));
            let now = self.now();
            self.replica.snapshot_progress(now, id.zxid, total, true);
        }
        let mut staged = self.kv.emptied();
        let store = self.snapshots.clone();
        let done = self.install_done_tx.clone();
        tracing::info!(%from, "snapshot received; installing off the loop");
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let result = receiver.install(&mut staged);
            if result.is_ok() {
                if let Err(e) = store.retain(2) {
                    tracing::warn!(error = %e, "old snapshots not removed");
                }
            }
            let _ = done.send(InstallDone {
                from,
                receiver,
                staged,
                result,
                elapsed: started.elapsed(),
            });
        });
    }

    /// An install finished. The staging store replaces the live one only if
    /// the kernel still expects this snapshot (it may have changed leader
    /// meanwhile); the live store is never half-replaced.
    fn on_install_done(&mut self, done: InstallDone) {
        let InstallDone {
            from,
            receiver,
            staged,
            result,
            elapsed,
        } = done;
        self.receiver = Some(receiver);
        self.installing = None;
        match result {
            Ok(stored) => {
                let before = self.replica.applied_zxid();
                let now = self.now();
                self.replica.snapshot_installed(now, stored.zxid);
                if before < stored.zxid && self.replica.applied_zxid() >= stored.zxid {
                    self.kv = staged;
                    self.applied_since_snapshot = 0;
                    self.stats.snapshot_installs += 1;
                    tracing::info!(%from, zxid = ?stored.zxid, keys = self.kv.len(), ?elapsed, "snapshot installed; state replaced");
                } else {
                    tracing::warn!(%from, zxid = ?stored.zxid, "snapshot no longer expected; state kept");
                }
            }
            Err(e) => {
                tracing::error!(%from, error = %e, "snapshot install failed; state kept")
            }
        }
        // Chunks that came meanwhile, in order (one may start another
        // install, which defers the rest again).
        for (from, chunk) in std::mem::take(&mut self.deferred_chunks) {
            self.receive_chunk(from, chunk);
        }
    }

    /// Starts a local snapshot once enough entries were applied. The state
    /// is cloned on the loop (keys and values are reference-counted `Bytes`,
    /// so this copies the map's structure, not the data) and written and
    /// synced on a thread of its own, so the loop keeps serving heartbeats.
    fn maybe_snapshot(&mut self) {
        // Nodes of a cluster apply the same entries at about the same time:
        // a per-node offset (up to 7/16 of the interval) keeps them
        // from all pausing for a snapshot at once.
        let offset = self.id.0 % 8 * (self.snapshot_every / 16);
        if self.snapshot_every == 0
            || self.applied_since_snapshot < self.snapshot_every + offset
            || self.snapshot_running
        {
            return;
        }
        let zxid = self.kv.applied();
        let meta = SnapshotMeta {
            zxid,
            epoch: self.replica.hard_state().current_epoch,
            voters: self.replica.config().voters.clone(),
        };
        let copy = self.kv.clone();
        let store = self.snapshots.clone();
        let done = self.snapshot_done_tx.clone();
        self.snapshot_running = true;
        self.applied_since_snapshot = 0;
        std::thread::spawn(move || {
            // The loop comes first: the snapshot runs on idle time.
            lower_thread_priority();
            let started = Instant::now();
            let result = store
                .create(&meta)
                .and_then(|w| write_state_machine(&copy, w))
                .map(|stored| (stored, started.elapsed()))
                .map_err(|e| e.to_string());
            let _ = done.send((zxid, result));
        });
    }

    /// A snapshot thread finished: the log may now be cut up to its zxid.
    fn on_snapshot_done(&mut self, zxid: Zxid, result: Result<(StoredSnapshot, Duration), String>) {
        self.snapshot_running = false;
        match result {
            Ok((stored, elapsed)) => {
                self.replica.snapshot_taken(zxid);
                tracing::info!(?zxid, bytes = stored.file_bytes, ?elapsed, "snapshot taken");
                if let Err(e) = self.snapshots.retain(2) {
                    tracing::warn!(error = %e, "old snapshots not removed");
                }
            }
            Err(e) => tracing::error!(?zxid, error = %e, "snapshot failed"),
        }
    }

    fn status_json(&self) -> String {
        let hs = self.replica.hard_state();
        let role = if self.replica.is_leader() {
            "leader"
        } else if self.replica.leader().is_some() {
            "follower"
        } else {
            "looking"
        };
        let progress = self.replica.peer_progress();
        let last = self.replica.last_zxid();
        let peers: Vec<serde_json::Value> = self
            .transport
            .metrics()
            .into_iter()
            .map(|m| {
                // Lag as the leader sees it: entries the peer does not hold
                // yet (counted within the current epoch).
                let p = progress.iter().find(|p| p.id.0 == m.peer.0);
                let lag = p.map(|p| {
                    if p.matched.epoch() == last.epoch() {
                        u64::from(last.counter() - p.matched.counter().min(last.counter()))
                    } else {
                        u64::from(last.counter())
                    }
                });
                serde_json::json!({
                    "matched": p.map(|p| format!("{:?}", p.matched)),
                    "applied": p.map(|p| format!("{:?}", p.applied)),
                    "in_broadcast": p.map(|p| p.in_broadcast),
                    "recovering": p.map(|p| p.recovering),
                    "lag_entries": lag,
                    "id": m.peer.0,
                    "connected": m.connected,
                    "frames_sent": m.frames_sent,
                    "frames_received": m.frames_received,
                    "queue_depth": m.queue_depth,
                    "reconnects": m.reconnects,
                    "dropped_full": m.dropped_full,
                })
            })
            .collect();
        serde_json::json!({
            "id": self.id.0,
            "pid": std::process::id(),
            "role": role,
            "recovering": self.replica.is_recovering(),
            "cluster": self.identity.cluster,
            "leader": self.replica.leader().map(|l| l.0),
            "epoch": self.replica.established_epoch().map(|e| e.0),
            "accepted_epoch": hs.accepted_epoch.0,
            "current_epoch": hs.current_epoch.0,
            "last_zxid": format!("{:?}", self.replica.last_zxid()),
            "commit_zxid": format!("{:?}", self.replica.commit_zxid()),
            "commit": self.replica.commit_zxid().as_u64(),
            "applied": self.kv.applied().as_u64(),
            "keys": self.kv.len(),
            "sessions": self.kv.session_count(),
            "sessions_evicted": self.kv.sessions_evicted(),
            "session_bytes": self.kv.session_bytes(),
            "digest": self.kv.digest(),
            "proposals": self.stats.proposals,
            "applied_entries": self.stats.applied,
            "syncs": self.stats.syncs,
            "elections": self.stats.elections,
            "snapshot_sends": self.stats.snapshot_sends,
            "snapshot_resumes": self.stats.snapshot_resumes,
            "snapshot_transfer_restarts": self.replica.snapshot_transfer_restarts(),
            "snapshot_installs": self.stats.snapshot_installs,
            "snapshot_chunks_refused": self.stats.snapshot_chunks_refused,
            "snapshot_chunks_dropped": self.stats.snapshot_chunks_dropped,
            "storage_stalled": self.stall.is_some(),
            "storage_stalls": self.stats.storage_stalls,
            "peers": peers,
        })
        .to_string()
    }
}

/// Give the calling thread the lowest CPU priority (nice 19); best effort.
fn lower_thread_priority() {
    // SAFETY: plain syscalls on the calling thread's own id.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the snapshot thread's priority");
    }
}

/// Applies a committed entry to `sm`; if `sm` panics, records the entry in
/// `data_dir`'s [`POISONED_FILE`] and returns an error naming it.
fn apply_guarded<M: StateMachine>(
    sm: &mut M,
    zxid: Zxid,
    data: &Bytes,
    data_dir: &std::path::Path,
) -> Result<Bytes> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sm.apply(zxid, data))) {
        Ok(result) => Ok(result),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            let path = data_dir.join(POISONED_FILE);
            let note = format!("{zxid}\n{what}\n");
            if let Err(e) = std::fs::write(&path, note) {
                tracing::error!(path = %path.display(), error = %e, "could not record the poisoned entry");
            }
            tracing::error!(%zxid, panic = %what, "the state machine panicked on a committed entry; stopping");
            bail!(
                "the state machine panicked applying committed entry {zxid} ({what}); the entry \
                 is committed and would be replayed on every restart. Recorded in {}; see the \
                 README, \"A poisoned entry\"",
                path.display()
            )
        }
    }
}

/// The zxid recorded in a [`POISONED_FILE`], if it holds one.
fn read_poisoned(path: &std::path::Path) -> Option<Zxid> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_zxid(text.lines().next()?)
}

/// Parses a zxid as `0x`-prefixed hex (as logs print it) or decimal.
pub fn parse_zxid(s: &str) -> Option<Zxid> {
    let s = s.trim();
    let v = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok()?,
        None => s.parse().ok()?,
    };
    Some(Zxid(v))
}

/// Refuses to start while the data directory records a poisoned entry that
/// the operator has not said to skip.
fn check_poisoned(opts: &NodeOptions) -> Result<()> {
    let path = opts.data_dir.join(POISONED_FILE);
    if !path.exists() {
        return Ok(());
    }
    let Some(zxid) = read_poisoned(&path) else {
        bail!(
            "{} exists but names no entry; inspect it, then remove it to start",
            path.display()
        );
    };
    if opts.skip_entries.contains(&zxid) {
        tracing::warn!(%zxid, "starting past a poisoned entry: it will be applied as a no-op");
        return Ok(());
    }
    bail!(
        "the state machine panicked on committed entry {zxid} (recorded in {}); this node \
         will not start until every node is restarted with --skip-entry {zxid} (the entry is \
         then applied as a no-op everywhere), or with a build that applies it",
        path.display()
    )
}

fn read_id(ctx: &Bytes) -> Option<u64> {
    let b: [u8; 8] = ctx.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// How the client listener bounds its connections.
#[derive(Clone, Copy, Debug)]
struct ClientLimits {
    max_connections: usize,
    idle_timeout: Option<Duration>,
}

/// How the client port authenticates its connections.
enum ClientAuth {
    /// TLS, a client certificate required (see [`crate::tls`]).
    Tls {
        acceptor: tokio_rustls::TlsAcceptor,
        handshake_timeout: Duration,
    },
    /// Plain TCP; every connection is [`Principal::anonymous`].
    InsecurePlaintext,
}

/// TLS handshakes with connections over the limit at once, at most (each
/// is then told "busy"); past it, such a connection is closed unanswered.
const MAX_REFUSAL_HANDSHAKES: usize = 16;
/// Time given to the handshake of a connection over the limit.
const REFUSAL_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed client handshakes logged at info level, before only every 1024th
/// is (the others at debug), so that a storm cannot flood the log.
const LOGGED_HANDSHAKE_FAILURES: u64 = 100;

/// Accepts client connections and serves each in its own task (the TLS
/// handshake included), at most `limits.max_connections` at once.
async fn accept_clients(
    listener: TcpListener,
    to_driver: ToDriver,
    limits: ClientLimits,
    auth: Arc<ClientAuth>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_REFUSAL_HANDSHAKES));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut refused: u64 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let _ = stream.set_nodelay(true);
                    tracing::debug!(%peer, "client connected");
                    tokio::spawn(open_client(
                        stream,
                        peer,
                        to_driver.clone(),
                        limits.idle_timeout,
                        auth.clone(),
                        failures.clone(),
                        permit,
                    ));
                }
                Err(_) => {
                    refused += 1;
                    refuse_client(
                        stream,
                        peer,
                        limits.max_connections,
                        refused,
                        &auth,
                        &refusals,
                    );
                }
            },
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Answers a connection over the limit with one error frame (id 0) and
/// closes it, without blocking the accept loop. On plain TCP the frame goes
/// out with one non-blocking write into the fresh socket's empty send
/// buffer; with TLS a task does the handshake first (at most
/// [`MAX_REFUSAL_HANDSHAKES`] at once, each bounded in time; beyond that the
/// connection is closed unanswered).
fn refuse_client(
    stream: TcpStream,
    peer: SocketAddr,
    limit: usize,
    refused: u64,
    auth: &Arc<ClientAuth>,
    refusals: &Arc<Semaphore>,
) {
    let mut frame = BytesMut::new();
    Response::Error(format!(
        "busy: too many client connections (limit {limit}); try again later"
    ))
    .encode_frame(0, &mut frame);
    // One event per refusal at debug; a warning for the first and then
    // every 1024th, so that a connection storm cannot flood the log.
    tracing::debug!(%peer, limit, "client connection refused: too many connections");
    if refused == 1 || refused % 1024 == 0 {
        tracing::warn!(%peer, limit, refused_total = refused, "client connections refused: at the connection limit");
    }
    match &**auth {
        ClientAuth::InsecurePlaintext => {
            let _ = stream.try_write(&frame);
            drop(stream);
        }
        ClientAuth::Tls { acceptor, .. } => {
            let Ok(permit) = refusals.clone().try_acquire_owned() else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let handshake = tls_handshake(&acceptor, stream);
                if let Ok(Ok((mut tls, _))) =
                    tokio::time::timeout(REFUSAL_HANDSHAKE_TIMEOUT, handshake).await
                {
                    let _ = tokio::time::timeout(REFUSAL_HANDSHAKE_TIMEOUT, async {
                        let _ = tls.write_all(&frame).await;
                        let _ = tls.shutdown().await;
                    })
                    .await;
                }
            });
        }
    }
}

/// A client connection after its TLS handshake.
type ClientTlsStream = tokio_rustls::server::TlsStream<tokio::io::BufReader<TcpStream>>;

/// The TLS handshake of a client connection, and the principal its
/// certificate names. A connection whose first byte is not a TLS handshake
/// record (a plaintext client) is told so in a plaintext error frame.
async fn tls_handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: TcpStream,
) -> Result<(ClientTlsStream, Principal), String> {
    // A TLS record header starts with the handshake type and a 3.x
    // version; a plaintext frame starts with its length (little-endian),
    // which only rarely looks like that. A peer that sent fewer bytes yet is
    // asked again shortly (the handshake timeout bounds the wait).
    let mut head = [0u8; 3];
    loop {
        let n = stream
            .peek(&mut head)
            .await
            .map_err(|e| format!("reading the first bytes: {e}"))?;
        if n == 0 {
            return Err("closed before the TLS handshake".to_string());
        }
        if n == head.len() || head[0] != crate::tls::TLS_HANDSHAKE_RECORD {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let looks_like_tls =
        head[0] == crate::tls::TLS_HANDSHAKE_RECORD && head[1] == 0x03 && head[2] <= 0x04;
    if !looks_like_tls {
        let mut frame = BytesMut::new();
        Response::Error(format!(
            "{TLS_REQUIRED_PREFIX} this port speaks TLS; connect with a client certificate \
             signed by the cluster CA (paxos-client --certs DIR --name NAME)"
        ))
        .encode_frame(0, &mut frame);
        let mut stream = stream;
        let _ = stream.write_all(&frame).await;
        let _ = stream.shutdown().await;
        return Err("not TLS (a plaintext client?); told so and closed".to_string());
    }
    // rustls reads at most 4 KiB per call; the buffer below it lets one
    // system call take a whole burst of pipelined requests.
    let buffered = tokio::io::BufReader::with_capacity(crate::tls::TLS_READ_BUFFER_BYTES, stream);
    let tls = acceptor.accept(buffered).await.map_err(|e| {
        let no_principal = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|tls| {
                matches!(
                    tls,
                    rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ApplicationVerificationFailure
                    )
                )
            });
        if no_principal {
            "TLS handshake failed: the client certificate names no principal \
             (paxos-client://<rw|ro>/<name>; a node certificate?)"
                .to_string()
        } else {
            format!("TLS handshake failed: {e}")
        }
    })?;
    let principal = crate::tls::peer_principal(tls.get_ref().1).map_err(|e| e.to_string())?;
    Ok((tls, principal))
}

/// Authenticates a new client connection (TLS handshake, bounded by the
/// handshake timeout), then serves it. A failed handshake is logged with the
/// peer's address and touches no other connection.
async fn open_client(
    stream: TcpStream,
    peer: SocketAddr,
    to_driver: ToDriver,
    idle_timeout: Option<Duration>,
    auth: Arc<ClientAuth>,
    failures: Arc<std::sync::atomic::AtomicU64>,
    permit: OwnedSemaphorePermit,
) {
    match &*auth {
        ClientAuth::InsecurePlaintext => {
            let (rd, wr) = stream.into_split();
            let principal = Arc::new(Principal::anonymous());
            serve_client(rd, wr, peer, principal, to_driver, idle_timeout, permit).await;
        }
        ClientAuth::Tls {
            acceptor,
            handshake_timeout,
        } => {
            let handshake = tls_handshake(acceptor, stream);
            let why = match tokio::time::timeout(*handshake_timeout, handshake).await {
                Ok(Ok((tls, principal))) => {
                    tracing::debug!(%peer, %principal, "client authenticated");
                    let (rd, wr) = tokio::io::split(tls);
                    let principal = Arc::new(principal);
                    serve_client(rd, wr, peer, principal, to_driver, idle_timeout, permit).await;
                    return;
                }
                Ok(Err(why)) => why,
                Err(_) => format!("no TLS handshake within {handshake_timeout:?}"),
            };
            let n = failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n <= LOGGED_HANDSHAKE_FAILURES || n % 1024 == 0 {
                tracing::info!(%peer, error = %why, failed_total = n, "client connection refused");
            } else {
                tracing::debug!(%peer, error = %why, "client connection refused");
            }
        }
    }
}

/// One client connection: frames in, requests to the driver, answers out.
/// Every request carries the connection's `principal`; a write from a
/// read-only principal is refused here, before it reaches the driver.
/// Holds `_permit` (its place under the connection limit) until it ends.
/// With an idle timeout, a connection that sends nothing for that long is
/// told so (an error frame with id 0) and closed.
async fn serve_client<R, W>(
    mut rd: R,
    wr: W,
    peer: SocketAddr,
    principal: Arc<Principal>,
    to_driver: ToDriver,
    idle_timeout: Option<Duration>,
    _permit: OwnedSemaphorePermit,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<(u64, Outgoing)>(8192);
    let connection_budget = ByteBudget::new(MAX_CONNECTION_REPLY_BYTES);
    let writer = tokio::spawn(write_frames(wr, rx));
    // Small to start (thousands of idle connections cost little), grown
    // before each read and by next_frame as frames need it.
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    // One timer per connection, moved only when it fires (not on every
    // read): it then sleeps again until `idle_timeout` after the last input.
    let mut last_input = tokio::time::Instant::now();
    let idle = tokio::time::sleep_until(last_input + idle_timeout.unwrap_or_default());
    tokio::pin!(idle);
    'conn: loop {
        // Room in proportion to what arrived (a frame's buffer doubles as
        // its bytes come in), never in proportion to a length claim; and
        // only when the buffer is nearly full, so that a busy connection
        // allocates once per READ_CHUNK_BYTES or more, not once per read.
        if buf.capacity() - buf.len() < MIN_READ_ROOM_BYTES {
            buf.reserve(READ_CHUNK_BYTES.max(buf.len()));
        }
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    last_input = tokio::time::Instant::now();
                    loop {
                        match next_frame(&mut buf) {
                            Ok(Some(frame)) => match Request::decode(frame) {
                                Ok((id, Request::Write(_))) if !principal.role().may_write() => {
                                    let why = format!(
                                        "{FORBIDDEN_PREFIX} principal {} has role {}; writes need role rw",
                                        principal.name(),
                                        principal.role()
                                    );
                                    if tx.send((id, Response::Error(why).into())).await.is_err() {
                                        break 'conn;
                                    }
                                }
                                // Sessions belong to principals: a command
                                // must name the one this connection proved.
                                Ok((id, Request::Write(cmd)))
                                    if KvCommand::peek_principal(&cmd).ok()
                                        != Some(principal.name().as_bytes()) =>
                                {
                                    let named = KvCommand::peek_principal(&cmd)
                                        .map(|p| String::from_utf8_lossy(p).into_owned());
                                    let why = format!(
                                        "{FORBIDDEN_PREFIX} the command names principal {named:?} \
                                         but this connection is authenticated as {}",
                                        principal.name()
                                    );
                                    if tx.send((id, Response::Error(why).into())).await.is_err() {
                                        break 'conn;
                                    }
                                }
                                Ok((id, req)) => {
                                    let reply = Reply {
                                        tx: tx.clone(),
                                        id,
                                        connection_budget: connection_budget.clone(),
                                        budget: to_driver.reply_budget.clone(),
                                    };
                                    if to_driver.send(req, reply).await.is_err() {
                                        break 'conn;
                                    }
                                }
                                // A well-framed request with a bad command:
                                // refused (not proposed), the connection kept.
                                Err(ProtoError::Command { id, source }) => {
                                    let why = format!("invalid command: {source}");
                                    if tx.send((id, Response::Error(why).into())).await.is_err() {
                                        break 'conn;
                                    }
                                }
                                Err(e) => {
                                    let _ = tx
                                        .send((0, Response::Error(format!("bad request: {e}")).into()))
                                        .await;
                                    break 'conn;
                                }
                            },
                            Ok(None) => break,
                            Err(e) => {
                                let _ = tx
                                    .send((0, Response::Error(format!("bad frame: {e}")).into()))
                                    .await;
                                break 'conn;
                            }
                        }
                    }
                }
            },
            () = &mut idle, if idle_timeout.is_some() => {
                let timeout = idle_timeout.unwrap_or_default();
                let deadline = last_input + timeout;
                if tokio::time::Instant::now() >= deadline {
                    let idle_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
                    tracing::info!(%peer, idle_ms, "client connection idle; closed");
                    let _ = tx.try_send((
                        0,
                        Response::Error(format!("closed: no request for {idle_ms} ms")).into(),
                    ));
                    break;
                }
                idle.as_mut().reset(deadline);
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::Epoch;

    /// A state machine that panics on one command, as a buggy one would.
    #[derive(Default)]
    struct Fragile {
        applied: Zxid,
    }

    impl StateMachine for Fragile {
        fn apply(&mut self, zxid: Zxid, command: &Bytes) -> Bytes {
            assert!(&command[..] != b"poison", "cannot apply poison");
            self.applied = zxid;
            Bytes::new()
        }
        fn applied(&self) -> Zxid {
            self.applied
        }
        fn snapshot(&self, _: &mut dyn std::io::Write) -> std::io::Result<()> {
            Ok(())
        }
        fn restore(&mut self, zxid: Zxid, _: &mut dyn std::io::Read) -> std::io::Result<()> {
            self.applied = zxid;
            Ok(())
        }
    }

    #[test]
    fn a_panicking_apply_stops_the_node_naming_the_entry_until_it_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = Fragile::default();
        let z1 = Zxid::new(Epoch(3), 1);
        let z2 = Zxid::new(Epoch(3), 2);
        apply_guarded(&mut sm, z1, &Bytes::from_static(b"fine"), dir.path()).unwrap();
        let e = apply_guarded(&mut sm, z2, &Bytes::from_static(b"poison"), dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&z2.to_string()), "{e}");
        assert!(e.contains("cannot apply poison"), "{e}");
        let mut members = BTreeMap::new();
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        members.insert(
            1,
            Member {
                peer: addr,
                client: addr,
            },
        );
        let mut opts = NodeOptions::new(1, members, dir.path().into(), dir.path().into());
        let refused = check_poisoned(&opts).unwrap_err().to_string();
        assert!(refused.contains(&format!("--skip-entry {z2}")), "{refused}");
        opts.skip_entries = vec![Zxid::new(Epoch(3), 9)];
        assert!(
            check_poisoned(&opts).is_err(),
            "another entry's skip does not do"
        );
        opts.skip_entries = vec![z2];
        check_poisoned(&opts).unwrap();
        assert_eq!(parse_zxid(&z2.to_string()), Some(z2));
        assert_eq!(parse_zxid(&z2.as_u64().to_string()), Some(z2));
        assert_eq!(parse_zxid("zz"), None);
    }
}
