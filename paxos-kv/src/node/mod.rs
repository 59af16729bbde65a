//! The reference node: the node layer of paxos-core
//! ([`paxos_core::node::Node`]: replica, elector, state machine and the
//! persistence pipeline) under tokio, with paxos-election electing,
//! paxos-wal persisting, paxos-net-quic carrying the peer traffic,
//! paxos-snapshot planning catch-up and shipping snapshots, and the
//! key-value store of [`crate::kv`] as the state machine.
//!
//! This module is the IO around the layer and nothing else: sockets, files,
//! timers and threads. The layer decides what is sent when, what waits for
//! which sync, what is applied and answered; the simulator runs the same
//! layer under simulated time, network and disks. One task owns the layer
//! and runs its loop: take inputs (peer frames, client requests, the sync
//! thread's completions, timers), let the layer process them, then carry out
//! its outputs: frames to the transport, a background sync to the sync
//! thread (one `Wal::sync` at a time, flushing without holding the log's
//! lock, so appends go on meanwhile: group commit), answers to clients,
//! snapshot work to threads. Client connections and the transport run in
//! tasks of their own and reach the loop through bounded channels, so
//! memory stays bounded under overload.
//!
//! A faulty disk:
//! - damage found at start inside the synced part of the log (entries this
//!   node may have acknowledged) makes the node record that it is
//!   recovering, keep the log's valid prefix and start as a recovering
//!   replica, which neither votes nor counts until a leader readmits it
//!   (`storage.rs`);
//! - a write the disk refuses while the log stays intact (ENOSPC when a
//!   segment is created, say) stalls the node layer instead of stopping the
//!   node: that write and every later one are held in order and retried
//!   with backoff (10 ms doubling to 1 s), nothing waiting for them is
//!   acknowledged, and once the disk takes them they are synced and
//!   released, without a restart. A failed flush is fatal: the log handle
//!   is poisoned, and the process must restart and recover from disk. The
//!   status JSON says `storage_stalled`.
//! - a failed local snapshot is logged and the node goes on.

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use paxos_core::node::{
    Node, NodeConfig, NodeError, NodeEvent, ProposeRejected, ReadRejected, SyncId, Transmit,
};
use paxos_core::{
    Codec, Config, Envelope, GroupId, Membership, MetaKey, NodeId, ProposeError, Recovered,
    Replica, SnapChunk, StateMachine, Storage, StorageError, Time, Zxid,
};
use paxos_election::{ElectionConfig, FastElection, Notification};
use paxos_net_quic::{ClusterTrust, NetConfig, NodeIdentity, PeerId, Transport};
use paxos_snapshot::{
    PlannerConfig, SnapshotReceiver, SnapshotSender, SnapshotStore, StoredSnapshot, ZabPlanner,
};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::budget::ByteBudget;
use crate::client_proto::{ReadMode, Request, Response};
use crate::identity::{self, Identity, Standing};
use crate::kv::KvStore;
use crate::shard::KeyRange;

mod admin;
mod client_port;
mod fault_file;
mod groups;
mod heartbeats;
mod metrics;
mod options;
mod snapshots;
mod status;
mod storage;

use client_port::{
    accept_clients, ClientAuth, ClientLimits, ClientMsg, Reply, ToDriver, MAX_CLIENT_QUEUE_BYTES,
    MAX_REPLY_BYTES,
};
use fault_file::{Faults, MonotonicClock};
use groups::Groups;
use metrics::{NodeMetrics, RequestKind, RequestResult, TimedStore};
pub use options::{
    default_retention_entries, format_members, parse_members, Member, NodeOptions,
    DEFAULT_CLIENT_HANDSHAKE_TIMEOUT, DEFAULT_CLIENT_IDLE_TIMEOUT, DEFAULT_INLINE_SYNC_BYTES,
    DEFAULT_LEASE_CLOCK_DRIFT, DEFAULT_MAX_CLIENT_CONNECTIONS, EXIT_ADDR_IN_USE,
};
use storage::NodeStorage;

/// Tag of a peer frame that carries a paxos-core envelope.
const TAG_CORE: u8 = 0;
/// Tag of a peer frame that carries an election notification of group 0.
const TAG_ELECTION: u8 = 1;
/// Tag of a peer frame that carries an election notification of another
/// group: `u32 group (LE) | notification`.
const TAG_ELECTION_IN: u8 = 2;
/// Tag of the host's own heartbeat to a peer node (no body): with idle
/// groups quiesced, it is how a node notices a peer node is lost.
const TAG_HOST_HEARTBEAT: u8 = 4;
/// Tag of a peer frame that carries several frames (of any groups) to one
/// peer: `(u32 length (LE) | frame)*`, each frame with its own tag (never
/// another batch). A node hosting many groups sends one per peer per turn.
const TAG_BATCH: u8 = 3;
/// Tag of a peer frame telling a peer that a group it sent input for was
/// merged away here and removed: `u32 group (LE)`. The peer's replica
/// of that group may have missed the merge's last steps (it was down), and
/// with every other replica gone it could never learn them from the group.
const TAG_GROUP_GONE: u8 = 6;
/// A batch is sent once it holds this many bytes, even mid-turn.
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Inputs taken from one source before the loop lets the layer process.
const MAX_INPUTS_PER_TURN: usize = 4096;
/// Rounds of processing per turn (each round makes progress or stops).
const MAX_DRAIN_ROUNDS: usize = 64;
/// Client writes proposed and not yet answered, at most; over it a write is
/// answered "retry: busy" (admission control: memory stays bounded).
const MAX_PENDING_WRITES: usize = 64 * 1024;
/// Bytes of client writes proposed and not yet answered, at most.
const MAX_PENDING_WRITE_BYTES: usize = 256 << 20;
/// Bytes of keys of linearizable reads in flight, at most; over it a read
/// is answered "retry: too many reads".
const MAX_PENDING_READ_BYTES: usize = 16 << 20;
/// Linearizable reads in flight, at most.
const MAX_PENDING_READS: usize = 16 * 1024;
/// A read not served by then is answered "retry".
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// The file in the data directory that names a committed entry the state
/// machine panicked on; while it exists the node refuses to start unless
/// told to skip that entry (see the README, "A poisoned entry").
pub const POISONED_FILE: &str = "POISONED";
/// Snapshot chunk size on the wire.
const SNAPSHOT_CHUNK_BYTES: u32 = 256 * 1024;
/// A peer's control queue above this many frames gets no more snapshot chunks
/// this turn (keeps heartbeats from queueing behind a snapshot).
const SNAPSHOT_PACING_FRAMES: u64 = 8;
/// Snapshot chunks kept while an install runs, at most (the leader paces
/// its chunks and stops after the last one, so only a transfer restarted
/// meanwhile sends any). One dropped beyond this is not lost for good: the
/// receiver then refuses the gap, reports its offset, and the leader
/// resumes there after its progress timeout.
const MAX_DEFERRED_CHUNKS: usize = 64;

/// What a client request waits on in the node layer.
enum Waiter {
    /// A write: answered with the state machine's result; `proposed` is
    /// when it was proposed (for the commit latency).
    Write { reply: Reply, proposed: Instant },
    /// A linearizable read of `key`: answered from the store once confirmed.
    Read { key: Bytes, reply: Reply },
    /// A membership change: answered once committed.
    Config { reply: Reply, to: Membership },
    /// A step of a split the node proposed itself (no client waits).
    Move,
    /// One of the node's own commands asked for by an administrator
    /// (allocating a group id, a split): answered with the store's result
    /// as JSON. `moves`: a split or a merge's retirement, counted in
    /// [`Driver::moves_proposed`] until it is answered.
    AdminKv { reply: Reply, moves: bool },
}

/// The node layer as the reference node runs it.
/// The store is wrapped to time its applies (see [`metrics`]).
type Core = Node<NodeStorage, FastElection, TimedStore, Waiter>;

/// A finished snapshot thread's report: the zxid, and the file and time taken.
type SnapshotDone = (Zxid, Result<(StoredSnapshot, Duration), String>);

/// A finished background sync: which, and how it went.
type SyncDone = (SyncId, Result<(), StorageError>);

/// A finished snapshot install (verify, move into the store, restore into a
/// staging store), run off the loop: the receiver comes back with it.
struct InstallDone {
    from: NodeId,
    receiver: SnapshotReceiver,
    staged: KvStore,
    result: Result<(StoredSnapshot, paxos_snapshot::SnapshotMeta), paxos_snapshot::SnapshotError>,
    elapsed: Duration,
}

/// A snapshot being streamed to a follower.
struct OutgoingSnapshot {
    to: NodeId,
    sender: SnapshotSender,
}

/// What every group of the node shares: the node's identity, clock, fault
/// hooks, transport, sync thread, metrics and snapshot channels. Owned by
/// the loop's task (hence `Rc` and cells: nothing here crosses threads).
struct Host {
    id: NodeId,
    /// Every member's addresses, as started and as learned from the
    /// memberships in the groups' logs.
    members: RefCell<BTreeMap<u64, Member>>,
    /// The clock handed to the layer (real time, shifted by the fault
    /// hooks' offset, never going backwards).
    clock: MonotonicClock,
    /// The fault hooks' settings (none unless `--fault-file`).
    faults: Arc<Faults>,
    codec: Codec,
    transport: RefCell<Transport>,
    /// Where [`POISONED_FILE`] is written (the group's own directory when
    /// the node hosts more than one group).
    data_dir: PathBuf,
    /// The identity recorded in the data directory.
    identity: RefCell<Identity>,
    /// Groups still recovering (readmitted by a leader): the identity says
    /// `member` again once none is.
    recovering_groups: Cell<usize>,
    /// The encoding buffer for peer frames.
    buf: RefCell<BytesMut>,
    /// Each peer's batch of frames for this turn (many groups only).
    out: RefCell<BTreeMap<u64, BytesMut>>,
    /// Each peer's heartbeats and acknowledgements of this turn, coalesced
    /// into one inner frame of its batch (many groups only; see
    /// [`heartbeats`]).
    heartbeats_out: RefCell<BTreeMap<u64, heartbeats::HeartbeatBatch>>,
    /// Asks the sync thread for syncs: the groups' requests of one pass of
    /// the loop go in one message (see [`Host::send_syncs`]).
    sync_requests: std::sync::mpsc::Sender<Vec<(usize, SyncId)>>,
    /// The groups' sync requests of this pass, not sent yet.
    syncs_asked: RefCell<Vec<(usize, SyncId)>>,
    /// Where snapshot threads report.
    snapshot_done_tx: mpsc::UnboundedSender<(usize, SnapshotDone)>,
    /// Where install tasks report.
    install_done_tx: mpsc::UnboundedSender<(usize, InstallDone)>,
    /// The Prometheus metrics (recorded whether or not they are served).
    metrics: RefCell<NodeMetrics>,
    /// Whether `/metrics` is served: only then are the state-derived
    /// gauges refreshed.
    metrics_served: bool,
    /// Groups hosted: keys map to them by [`crate::shard::group_of`].
    groups: u32,
    /// Whether idle groups quiesce: the host then heartbeats each peer
    /// node itself and wakes the groups a lost node concerns.
    quiesce: bool,
    /// Whether the node spreads leaders over the live voters.
    balance: bool,
    /// Groups at most electing on this node's timers at once (0: any
    /// number; see [`groups::Groups`]'s admission).
    max_elections: usize,
    /// The node's heartbeat interval and election timeout (every group's).
    heartbeat: Duration,
    election_timeout: Duration,
}

/// The IO around one group's node layer. A node runs one per group it
/// hosts, all on the loop's task, sharing the [`Host`].
struct Driver {
    id: NodeId,
    /// This group's slot in the node's table of groups (what the loop's
    /// channels name it by).
    index: usize,
    /// This group's id: its `GroupId` on the wire, its directory, its
    /// election tie-break order. The same as `index` for the groups the
    /// node started with; a group made by a split at run time has the id
    /// group 0 allocated to it and the next free slot.
    gid: u32,
    host: Rc<Host>,
    node: Core,
    snapshots: SnapshotStore,
    /// Assembles snapshot chunks; `None` while an install runs off the loop.
    receiver: Option<SnapshotReceiver>,
    /// Chunks that arrived while an install ran, for after it.
    deferred_chunks: VecDeque<(NodeId, SnapChunk)>,
    /// The snapshot being installed off the loop and its length: its
    /// progress is reported to the leader on every timer turn.
    installing: Option<(Zxid, u64)>,
    outgoing: Vec<OutgoingSnapshot>,
    /// The group's directory: [`POISONED_FILE`] and its snapshots.
    dir: PathBuf,
    stats: Stats,
    /// An administrator's leader transfer waiting for its outcome.
    /// The flag: asked for a change of this node's own role (answered
    /// "retry" once handed over, for the new leader to make the change).
    pending_transfer: Option<(NodeId, client_port::Reply, bool)>,
    /// Entered around the group's work (see [`group_span`]).
    span: tracing::Span,
    /// A step of a split proposed by this group's leader and not answered
    /// yet ([`groups::Groups`]' moves: one at a time).
    move_inflight: bool,
    /// Splits and retirements this replica proposed as leader that have
    /// not applied (or failed) yet: membership changes wait for them as
    /// they wait for the move they start (the new group takes the members
    /// the split recorded).
    moves_proposed: u32,
    /// While this group takes keys over: the group and range they come
    /// from, and the frozen keys, sorted, read once from this node's
    /// replica of it (kept only for that move: a list of another would
    /// make a batch of the wrong keys).
    move_keys: Option<MoveKeys>,
    /// A step of a move the store refused (a stale one, or one that does
    /// not fit yet): none is proposed again before this.
    move_backoff: Option<Instant>,
}

/// The snapshot IO's counters (the layer counts the rest).
#[derive(Default)]
struct Stats {
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
}

/// Groups a node hosts, at most (`--groups`, and those splits add).
pub const MAX_GROUPS: u32 = 65_536;

/// A move's frozen keys as a taking group's leader reads them: the group
/// and range they come from, and the keys, sorted by position.
type MoveKeys = (u32, KeyRange, Vec<(u128, Bytes)>);

/// How long a group waits after a move's step was refused before it
/// proposes one again.
const MOVE_BACKOFF: Duration = Duration::from_secs(1);

/// Group ids are below this (group 0 allocates them for splits).
pub const MAX_GROUP_ID: u32 = 1 << 20;

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
    if opts.groups == 0 || opts.groups > MAX_GROUPS {
        bail!(
            "--groups {}: a node hosts between 1 and {MAX_GROUPS} groups",
            opts.groups
        );
    }
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating {}", opts.data_dir.display()))?;
    let cluster_id = match &opts.cluster_id {
        Some(c) => c.clone(),
        None => identity::cluster_id_from_ca(&opts.ca_cert)?,
    };
    let mut disk_identity = identity::check(
        &opts.data_dir,
        &cluster_id,
        opts.id,
        opts.empty_start,
        opts.groups,
    )?;
    tracing::info!(cluster = %disk_identity.cluster, standing = ?disk_identity.standing, groups = opts.groups, "identity checked");
    let faults = Arc::new(Faults::default());
    // The logs, opened before anything listens: damage found here may mark
    // the node recovering (in its identity) before any group starts.
    let mut stores = storage::open_stores(&opts, &faults, &mut disk_identity)?;

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
        ClientAuth::InsecurePlaintext {
            sniff_timeout: opts.client_handshake_timeout,
        }
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
    let fault_task = opts
        .fault_file
        .clone()
        .map(|path| tokio::spawn(fault_file::poll(path, faults.clone())));

    // Metrics, and their listener when asked for (bound before the node
    // starts, so that a taken port fails the start).
    let metrics = NodeMetrics::new();
    let metrics_task = match opts.metrics_addr {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics listener {addr}"))?;
            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
            Some(tokio::spawn(metrics::serve(listener, metrics.registry())))
        }
        None => None,
    };

    // The sync thread: one sync of each log asked for, the results sent
    // back. Requests that wait together are served by one sync of the
    // shared log (group commit across groups).
    let sync_faults = faults.clone();
    let sync_metrics = metrics.sync_recorder();
    let syncers = stores.syncers();
    let (sync_requests, sync_rx) = std::sync::mpsc::channel::<Vec<(usize, SyncId)>>();
    let (sync_done_tx, mut sync_done) = mpsc::unbounded_channel::<Vec<(usize, SyncDone)>>();
    // The groups that keep the shared log's oldest segment, from the sync
    // thread's compaction (one list per 10 s at most; two may wait).
    let (purge_tx, purge_rx) = std::sync::mpsc::sync_channel::<Vec<usize>>(2);
    std::thread::Builder::new()
        .name(format!("wal-sync-{}", opts.id))
        .spawn(move || {
            storage::sync_loop(
                sync_rx,
                syncers,
                sync_faults,
                sync_metrics,
                sync_done_tx,
                purge_tx,
            )
        })
        .context("starting the WAL sync thread")?;

    let (snapshot_done_tx, mut snapshot_done) = mpsc::unbounded_channel::<(usize, SnapshotDone)>();
    let (install_done_tx, mut install_done) = mpsc::unbounded_channel::<(usize, InstallDone)>();
    let origin = Instant::now();
    let host = Rc::new(Host {
        id,
        members: RefCell::new(opts.members.clone()),
        clock: MonotonicClock::new(origin),
        faults: faults.clone(),
        codec: Codec::new(16 << 20),
        transport: RefCell::new(transport),
        data_dir: opts.data_dir.clone(),
        identity: RefCell::new(disk_identity),
        recovering_groups: Cell::new(0),
        buf: RefCell::new(BytesMut::with_capacity(1 << 20)),
        out: RefCell::new(BTreeMap::new()),
        heartbeats_out: RefCell::new(BTreeMap::new()),
        sync_requests,
        syncs_asked: RefCell::new(Vec::new()),
        snapshot_done_tx,
        install_done_tx,
        metrics: RefCell::new(metrics),
        metrics_served: metrics_task.is_some(),
        groups: opts.groups,
        quiesce: quiesce_after(&opts).is_some(),
        balance: opts.balance_leaders && opts.groups > 1,
        max_elections: if opts.groups > 1 {
            opts.max_elections
        } else {
            0
        },
        heartbeat: opts.heartbeat,
        election_timeout: opts.election_timeout,
    });
    let mut groups = Vec::with_capacity(stores.len() + stores.children.len());
    let shared = stores.shared.clone();
    let children = std::mem::take(&mut stores.children);
    let gone = std::mem::take(&mut stores.gone);
    for (gid, store) in stores {
        let index = groups.len();
        let span = group_span(&opts, gid);
        let g = span
            .in_scope(|| open_group(&opts, index, gid, store, None, host.clone(), span.clone()))
            .with_context(|| format!("starting group {gid}"))?;
        groups.push(g);
    }
    // Groups made by splits, after the base groups (ids and slots differ).
    for (gid, origin, store) in children {
        let index = groups.len();
        let span = group_span(&opts, gid);
        let g = span
            .in_scope(|| {
                open_group(
                    &opts,
                    index,
                    gid,
                    store,
                    Some(origin),
                    host.clone(),
                    span.clone(),
                )
            })
            .with_context(|| format!("starting group {gid} (made by a split)"))?;
        groups.push(g);
    }
    // Members added at run time are in the recovered memberships' address
    // books, not in --members.
    for g in &mut groups {
        g.learn_addresses();
    }

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
    tracing::info!(id = %id, peer = %me.peer, client = %me.client, groups = opts.groups, "node started");

    let factory = shared.map(|log| groups::Factory {
        opts: Rc::new(opts.clone()),
        log,
        faults: faults.clone(),
    });
    let mut d = Groups::new(groups, factory, gone);
    tokio::pin!(shutdown);
    let result = 'run: loop {
        if let Err(e) = d.turn() {
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
                if let Some((g, done)) = done {
                    d.with(g, |g| g.on_install_done(done));
                }
            }
            bulk = inbox.bulk.recv() => {
                if let Some((peer, payload)) = bulk {
                    tracing::debug!(%peer, bytes = payload.len(), "unexpected bulk payload dropped");
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => d.on_timeout(),
        }
        // Whatever woke us, take what else is ready from every source (a
        // bounded amount), so that no source starves another and one turn of
        // the layer covers a whole batch.
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
        for _ in 0..MAX_INPUTS_PER_TURN {
            match sync_done.try_recv() {
                Ok(done) => {
                    if let Err(e) = d.on_synced(done) {
                        break 'run Err(e);
                    }
                }
                Err(_) => break,
            }
        }
        if let Ok((g, (zxid, result))) = snapshot_done.try_recv() {
            d.with(g, |g| g.on_snapshot_done(zxid, result));
        }
        if let Ok(keepers) = purge_rx.try_recv() {
            for gid in keepers {
                d.with_gid(gid as u64, Driver::purge_log);
            }
        }
        // Timers too: under load some input is always ready, and the sleep
        // branch alone would never fire (heartbeats, check-quorum, the
        // stall's retry).
        d.on_timeout();
    };
    accept_task.abort();
    if let Some(t) = fault_task {
        t.abort();
    }
    if let Some(t) = metrics_task {
        t.abort();
    }
    drop(d);
    match Rc::try_unwrap(host) {
        Ok(host) => {
            let metrics = host.transport.into_inner().shutdown().await;
            tracing::info!(id = %id, ?metrics, "node stopped");
        }
        Err(_) => {
            tracing::error!(id = %id, "node stopped with its host still shared (a bug): transport not shut down cleanly")
        }
    }
    result
}

/// A random number, different in every process (the standard library's
/// hash keys are drawn from the operating system's randomness): where a
/// group's read ids start, so that they never repeat across restarts.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// How long a group stays idle before it quiesces: `--quiesce-ms` if
/// given (0: never), else twice the election timeout on a node hosting
/// many groups and never on a single-group node (whose one group costs
/// little, and whose peers may run a build without QUIESCE).
fn quiesce_after(opts: &NodeOptions) -> Option<Duration> {
    match opts.quiesce_after {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => (opts.groups > 1).then(|| opts.election_timeout * 2),
    }
}

/// The tracing span of group `index`: on a node hosting more than one
/// group, every event a group's kernel, elector or driver logs carries
/// `group=<index>` (entered around each of the group's turns); none on a
/// single-group node.
fn group_span(opts: &NodeOptions, gid: u32) -> tracing::Span {
    if opts.groups > 1 {
        tracing::info_span!("group", group = gid)
    } else {
        tracing::Span::none()
    }
}

/// Starts group `gid` in slot `index` over its opened storage: its state
/// machine restored from its newest snapshot (or, when it has none, the
/// initial state: a base group owning its base range, a group made by a
/// split, `origin`, empty and taking its range over), its replica, elector
/// and node layer.
#[allow(clippy::too_many_arguments)]
fn open_group(
    opts: &NodeOptions,
    index: usize,
    gid: u32,
    storage: NodeStorage,
    origin: Option<storage::Origin>,
    host: Rc<Host>,
    span: tracing::Span,
) -> Result<Driver> {
    let id = host.id;
    let dir = storage::group_dir(opts, gid as usize);
    let snapshots = SnapshotStore::open(dir.join(identity::SNAPSHOT_DIR))
        .context("opening the snapshot store")?
        .with_chunk_bytes(SNAPSHOT_CHUNK_BYTES);
    check_poisoned(&dir, &opts.skip_entries)?;
    forget_skipped_poison(&dir, &opts.skip_entries);
    let kv = KvStore::with_session_limits(opts.max_sessions, opts.max_session_bytes)
        .context("--max-sessions / --max-session-mib")?;
    let base = opts.groups.max(1);
    let mut kv = match &origin {
        None => kv.with_shard(base, KeyRange::of_base_group(gid)),
        Some(o) => kv.with_incoming(base, o.from, o.range),
    };
    let mut recovered = Recovered::default();
    let latest = snapshots.latest().context("listing snapshots")?;
    let compacted = storage.meta(MetaKey::CompactionMark);
    if compacted > 0 && latest.as_ref().is_none_or(|s| s.zxid.as_u64() < compacted) {
        bail!(
            "the log of group {gid} in {} was compacted up to {} but no snapshot covers it \
             (latest: {:?}): the state before the log's first entry is lost. If the snapshots \
             are gone, empty the data directory and start the node with --rejoin",
            opts.data_dir.display(),
            Zxid(compacted),
            latest.as_ref().map(|s| s.zxid)
        );
    }
    if let Some(latest) = latest {
        let meta = snapshots
            .restore(latest.zxid, &mut kv)
            .with_context(|| format!("restoring snapshot {:?}", latest.zxid))?;
        tracing::info!(group = gid, zxid = ?meta.zxid, keys = kv.len(), "state restored from snapshot");
        recovered = Recovered {
            applied: kv.applied(),
            snapshot: Some(meta.zxid),
            // Format version 1 files record the voters only.
            membership: meta.membership.clone().or_else(|| {
                (!meta.voters.is_empty()).then(|| Membership {
                    voters: meta.voters.clone(),
                    ..Membership::default()
                })
            }),
        };
    }
    let receiver = SnapshotReceiver::open(
        SnapshotStore::open(dir.join(identity::SNAPSHOT_DIR))
            .context("opening the snapshot store")?,
    )
    .context("opening the snapshot receiver")?;

    // A base group starts with the members the node was started with; a
    // group made by a split with those of the group that split.
    let (voters, observers): (Vec<NodeId>, Vec<NodeId>) = match &origin {
        None => (
            opts.members
                .keys()
                .filter(|i| !opts.observers.contains(i))
                .map(|&i| NodeId(i))
                .collect(),
            opts.observers.iter().map(|&i| NodeId(i)).collect(),
        ),
        Some(o) => (
            o.voters.iter().map(|&i| NodeId(i)).collect(),
            o.observers.iter().map(|&i| NodeId(i)).collect(),
        ),
    };
    let mut config = Config::new(GroupId(u64::from(gid)), voters.clone());
    config.observers = observers.clone();
    config.heartbeat_interval = opts.heartbeat;
    config.election_timeout = opts.election_timeout;
    config.sync_timeout = opts.election_timeout;
    config.lease_reads = opts.lease_reads;
    config.retention_entries = opts.retention_entries;
    config.lease_clock_drift = opts.lease_clock_drift;
    config.quiesce_after = quiesce_after(opts);
    // A command must fit one WAL record (a segment) with room to spare, or
    // every replica would fail to log it; the kernel refuses larger ones.
    let segment_limit = usize::try_from(opts.segment_bytes / 2).unwrap_or(usize::MAX);
    config.max_message_bytes = config.max_message_bytes.min(segment_limit);
    let planner = Box::new(ZabPlanner::new(PlannerConfig::default()));
    let now = host.clock.now(host.faults.clock_offset_ms());
    let mut replica = Replica::new(id, config, storage, planner, recovered, now)
        .context("starting the replica")?;
    // A member that lost its disk (--rejoin) neither votes nor counts until
    // an established leader has readmitted it; the kernel keeps the flag in
    // the hard state, so a restart mid-recovery stays recovering.
    if host.identity.borrow().standing == Standing::Recovering && !replica.is_recovering() {
        tracing::warn!(id = %id, group = gid, "rejoining after losing state (an empty data directory, or a damaged log): recovering until an established leader readmits this node");
        replica.mark_recovering();
    }
    if replica.is_recovering() {
        host.recovering_groups.set(host.recovering_groups.get() + 1);
    }
    // The election round is persisted so that a restarted node never votes
    // twice in one round (paxos-election's contract).
    let initial_round = replica.storage().meta(MetaKey::ElectionRound);
    let elector = FastElection::new(ElectionConfig {
        id,
        voters,
        observers,
        initial_round,
        voting: !replica.is_recovering(),
        seed: opts.id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ std::process::id() as u64
            ^ u64::from(gid).wrapping_mul(0xD6E8_FEB8_6659_FD93),
        // Each group breaks election ties in its own order (group 0 by
        // node id), so that leaders spread over the nodes as they are
        // elected, and a node's failure leaves only its share to elect.
        tiebreak: u64::from(gid),
        ..ElectionConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("election configuration: {e}"))?;
    let node_config = NodeConfig {
        // With many groups a group's inline sync would flush the shared log
        // on the loop, once per group per turn; the sync thread's one flush
        // serves them all (measured: 256 groups wrote 0.03x one group's
        // rate with inline syncs, 0.35x without).
        inline_sync_bytes: if opts.groups > 1 {
            0
        } else {
            opts.inline_sync_bytes
        },
        snapshot_every: opts.snapshot_every,
        max_pending_writes: MAX_PENDING_WRITES,
        max_pending_write_bytes: MAX_PENDING_WRITE_BYTES,
        max_pending_reads: MAX_PENDING_READS,
        max_pending_read_bytes: MAX_PENDING_READ_BYTES,
        read_timeout: READ_TIMEOUT,
        skip_entries: opts.skip_entries.clone(),
        read_ids_from: random_u64(),
        ..NodeConfig::default()
    };
    let node = Node::new(replica, elector, TimedStore::new(kv), node_config)
        .context("starting the node layer")?;
    Ok(Driver {
        id,
        index,
        gid,
        host,
        node,
        snapshots,
        receiver: Some(receiver),
        deferred_chunks: VecDeque::new(),
        installing: None,
        outgoing: Vec::new(),
        dir,
        stats: Stats::default(),
        pending_transfer: None,
        span,
        move_inflight: false,
        moves_proposed: 0,
        move_keys: None,
        move_backoff: None,
    })
}

impl Driver {
    fn now(&self) -> Time {
        self.host.now()
    }

    /// When this group must be woken even without input.
    fn timer(&self) -> Option<Time> {
        self.node.poll_timeout()
    }

    /// Snapshot work that needs the loop soon (a transfer to pace, an
    /// install to report).
    fn busy(&self) -> bool {
        !self.outgoing.is_empty() || self.installing.is_some()
    }

    fn on_timeout(&mut self) {
        let now = self.now();
        if let Some((zxid, total)) = self.installing {
            // The install is alive: tell the leader (the kernel sends at
            // most one report per heartbeat interval).
            self.node.snapshot_progress(now, zxid, total, true);
        }
        self.node.handle_timeout(now);
    }

    /// A consensus message for this group from `peer` (the transport
    /// authenticated it).
    fn on_envelope(&mut self, peer: PeerId, env: Envelope) {
        if env.from.0 != peer.0 {
            tracing::warn!(%peer, claimed = %env.from, "envelope names another sender; dropped");
            return;
        }
        let now = self.now();
        self.node.handle_message(now, env);
    }

    fn on_election(&mut self, peer: PeerId, n: Notification) {
        let now = self.now();
        self.node.handle_election_message(now, NodeId(peer.0), n);
    }

    /// A read's answer from the store: the value, or "wrong group" when
    /// the group does not own the key (any more, or not yet: a split moved
    /// it, or is moving it).
    fn read_answer(&self, key: &[u8]) -> Response {
        let kv = self.node.state_machine();
        if kv.owns(key) {
            Response::Value(kv.get(key).cloned())
        } else {
            Response::Error(format!(
                "wrong group: group {} does not own this key (ranges moved by a split; ask a \
                 node's status for the groups and their ranges)",
                self.gid
            ))
        }
    }

    /// Proposes a step of a split (see [`groups::Groups`]' moves).
    fn propose_move(&mut self, now: Time, op: crate::kv::KvOp) {
        let cmd = crate::kv::KvCommand {
            principal: Bytes::new(),
            client: 0,
            seq: 0,
            op,
        }
        .to_bytes();
        match self.node.propose(now, cmd, Waiter::Move) {
            Ok(_) => self.move_inflight = true,
            Err(r) => {
                tracing::debug!(error = ?r.error, "split step not proposed; tried again later")
            }
        }
    }

    fn leader_hint(&self) -> Response {
        let leader = self.node.replica().leader().filter(|&l| l != self.id);
        Response::NotLeader {
            leader: leader.map(|l| l.0),
            addr: leader
                .and_then(|l| self.host.members.borrow().get(&l.0).copied())
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
        let now = self.now();
        match req {
            Request::Write(cmd) => {
                let waiter = Waiter::Write {
                    reply,
                    proposed: Instant::now(),
                };
                match self.node.propose(now, cmd, waiter) {
                    Ok(_) => self
                        .host
                        .metrics
                        .borrow()
                        .request(RequestKind::Write, RequestResult::Accepted),
                    Err(r) => {
                        let (resp, result) = match r.error {
                            ProposeRejected::Kernel(ProposeError::NotLeader { .. }) => {
                                (self.leader_hint(), RequestResult::NotLeader)
                            }
                            ProposeRejected::Busy { .. } => {
                                (Response::Error("retry: busy".into()), RequestResult::Busy)
                            }
                            // Nothing was proposed, and in a moment the new
                            // leader (or this one, if the hand-over is
                            // given up) takes writes: the client asks again.
                            ProposeRejected::Kernel(e @ ProposeError::Transferring { .. }) => {
                                (Response::Error(format!("retry: {e}")), RequestResult::Busy)
                            }
                            ProposeRejected::Kernel(e) => {
                                (Response::Error(e.to_string()), RequestResult::Refused)
                            }
                        };
                        self.host
                            .metrics
                            .borrow()
                            .request(RequestKind::Write, result);
                        r.token.answer(resp);
                    }
                }
            }
            Request::Get {
                key,
                mode: ReadMode::Stale,
            } => {
                self.host
                    .metrics
                    .borrow()
                    .request(RequestKind::StaleRead, RequestResult::Accepted);
                reply.send(self.read_answer(&key));
            }
            Request::Get {
                key,
                mode: ReadMode::Linearizable,
            } => {
                let bytes = key.len();
                match self.node.read(now, bytes, Waiter::Read { key, reply }) {
                    Ok(()) => self
                        .host
                        .metrics
                        .borrow()
                        .request(RequestKind::Read, RequestResult::Accepted),
                    Err(r) => {
                        let (resp, result) = match r.error {
                            ReadRejected::NotLeader { .. } => {
                                (self.leader_hint(), RequestResult::NotLeader)
                            }
                            ReadRejected::Busy => (
                                Response::Error("retry: too many reads".into()),
                                RequestResult::Busy,
                            ),
                        };
                        self.host
                            .metrics
                            .borrow()
                            .request(RequestKind::Read, result);
                        r.token.answer(resp);
                    }
                }
            }
            Request::Status => reply.send(Response::Status(self.status_json())),
            Request::Admin(a) => self.on_admin(a, reply),
            // Unwrapped by the router ([`Groups::on_client`]), which
            // refuses nesting.
            Request::InGroup { .. } => reply.send(Response::Error("a nested group request".into())),
        }
    }

    /// Lets the layer process what came in, and carries out what it asks,
    /// until nothing moves.
    /// `Ok(true)`: it stopped at the round limit with more to do.
    fn turn(&mut self) -> Result<bool> {
        for _ in 0..MAX_DRAIN_ROUNDS {
            self.pump_snapshots();
            let now = self.now();
            let processed = self.node.process(now);
            if let Some((took, entries)) = self.node.state_machine().take_batch() {
                self.host.metrics.borrow().applied_batch(took, entries);
            }
            if let Err(e) = processed {
                return Err(self.stopped(e));
            }
            if !self.carry_out()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Carries out the layer's outputs; whether any event came (events can
    /// give the layer more to do).
    fn carry_out(&mut self) -> Result<bool> {
        while let Some(t) = self.node.poll_transmit() {
            match t {
                Transmit::Core(env) => self.send_envelope(env),
                Transmit::Election(to, n) => self.send_election(to, n),
            }
        }
        if let Some(sync) = self.node.poll_sync() {
            // Sent with the other groups' at the end of the pass
            // (`Groups::turn`): one message, one wake of the sync thread.
            self.host.syncs_asked.borrow_mut().push((self.index, sync));
        }
        let mut any = false;
        while let Some(ev) = self.node.poll_event() {
            any = true;
            self.on_event(ev);
        }
        Ok(any)
    }

    /// The layer stopped: a fatal storage error, or a state machine that
    /// panicked on a committed entry (recorded in [`POISONED_FILE`]: every
    /// restart would replay it).
    fn stopped(&self, e: NodeError) -> anyhow::Error {
        if let NodeError::ApplyPanicked { zxid, message } = &e {
            let path = self.dir.join(POISONED_FILE);
            if let Err(err) = std::fs::write(&path, format!("{zxid}\n{message}\n")) {
                tracing::error!(path = %path.display(), error = %err, "could not record the poisoned entry");
            }
            return anyhow::anyhow!(
                "the state machine panicked applying committed entry {zxid} ({message}); the \
                 entry is committed and would be replayed on every restart. Recorded in {}; see \
                 the README, \"A poisoned entry\"",
                path.display()
            );
        }
        anyhow::Error::new(e)
    }

    fn send_envelope(&mut self, env: Envelope) {
        let host = &self.host;
        if host.groups > 1 {
            if !host.coalesce_heartbeat(&env) {
                host.send_envelope_batched(&env);
            }
            return;
        }
        let mut buf = host.buf.borrow_mut();
        buf.clear();
        buf.put_u8(TAG_CORE);
        if let Err(e) = host.codec.encode(&env, &mut buf) {
            tracing::error!(error = %e, msg = env.msg.name(), "could not encode a message; dropped");
            return;
        }
        let frame = buf.split().freeze();
        drop(buf);
        host.send(env.to, frame);
    }

    fn send_election(&mut self, to: NodeId, n: Notification) {
        let host = &self.host;
        let mut buf = host.buf.borrow_mut();
        buf.clear();
        if self.gid == 0 {
            buf.put_u8(TAG_ELECTION);
        } else {
            buf.put_u8(TAG_ELECTION_IN);
            buf.put_u32_le(self.gid);
        }
        n.encode(&mut *buf);
        let frame = buf.split().freeze();
        drop(buf);
        host.send(to, frame);
    }

    /// The sync thread finished one `Wal::sync`. A failure is fatal: the
    /// log handle is poisoned and the process must recover from disk.
    fn on_synced(&mut self, (sync, result): SyncDone) -> Result<()> {
        let now = self.now();
        self.node
            .handle_sync_done(now, sync, result)
            .map_err(|e| self.stopped(e))
    }

    fn on_event(&mut self, ev: NodeEvent<Waiter>) {
        if let NodeEvent::Written {
            token: Waiter::AdminKv { moves: true, .. },
            ..
        }
        | NodeEvent::Superseded {
            token: Waiter::AdminKv { moves: true, .. },
        }
        | NodeEvent::OutcomeUnknown {
            token: Waiter::AdminKv { moves: true, .. },
        } = &ev
        {
            self.moves_proposed = self.moves_proposed.saturating_sub(1);
        }
        match ev {
            NodeEvent::Written {
                token: Waiter::Move,
                result,
                zxid,
            } => {
                self.move_inflight = false;
                match crate::kv::KvResult::decode(result) {
                    Ok(crate::kv::KvResult::Refused { reason }) => {
                        // Refused on apply: not proposed again for a while
                        // (a step that cannot apply yet would otherwise be
                        // logged every few milliseconds).
                        tracing::info!(?zxid, reason = %String::from_utf8_lossy(&reason), "a move's step was refused; trying again in a second");
                        self.move_backoff = Some(Instant::now() + MOVE_BACKOFF);
                    }
                    r => tracing::debug!(?zxid, result = ?r, "a move's step applied"),
                }
            }
            NodeEvent::Written {
                token: Waiter::AdminKv { reply, .. },
                result,
                zxid,
            } => reply.send(admin::kv_result_json(zxid, result)),
            NodeEvent::Superseded {
                token: Waiter::Move,
            }
            | NodeEvent::OutcomeUnknown {
                token: Waiter::Move,
            } => self.move_inflight = false,
            NodeEvent::Written {
                token: Waiter::Config { reply, to },
                zxid,
                ..
            } => reply.send(Response::Admin(
                serde_json::json!({
                    "committed": format!("{zxid:?}"),
                    "voters": to.voters.iter().map(|v| v.0).collect::<Vec<_>>(),
                    "observers": to.observers.iter().map(|o| o.0).collect::<Vec<_>>(),
                })
                .to_string(),
            )),
            NodeEvent::Written { token, result, .. } => {
                if let Waiter::Write { proposed, .. } = &token {
                    self.host.metrics.borrow().write_committed(*proposed);
                }
                token.answer(Response::Written(result))
            }
            NodeEvent::Superseded { token } => token.answer(Response::Error(
                "retry: superseded by another leader".into(),
            )),
            NodeEvent::OutcomeUnknown { token } => token.answer(Response::OutcomeUnknown(
                "proposed, but leadership changed before it committed".into(),
            )),
            NodeEvent::ReadReady { token } => match token {
                Waiter::Read { key, reply } => reply.send(self.read_answer(&key)),
                Waiter::Write { reply, .. }
                | Waiter::Config { reply, .. }
                | Waiter::AdminKv { reply, .. } => {
                    tracing::error!("a write's token came back as a read; answering retry");
                    reply.send(Response::Error("retry: internal".into()))
                }
                Waiter::Move => tracing::error!("a split step's token came back as a read"),
            },
            NodeEvent::ReadFailed { token, reason } => {
                token.answer(Response::Error(format!("retry: {reason}")))
            }
            NodeEvent::SendSnapshot {
                to,
                snapshot,
                offset,
            } => self.send_snapshot(to, snapshot, offset),
            NodeEvent::SnapshotChunk { from, chunk } => self.receive_chunk(from, chunk),
            NodeEvent::SnapshotDue => self.take_snapshot(),
            NodeEvent::LostLeader => {
                self.outgoing.clear();
                self.on_transfer_outcome(self.id, admin::TransferOutcome::LeadershipLost);
            }
            NodeEvent::HandedOff { to } => {
                self.host.metrics.borrow().handed_off();
                self.on_transfer_outcome(to, admin::TransferOutcome::HandedOff)
            }
            NodeEvent::TransferAborted { to } => {
                self.on_transfer_outcome(to, admin::TransferOutcome::Aborted)
            }
            NodeEvent::RecoveryComplete { .. } => {
                // The kernel's flag is cleared durably; the identity follows
                // (a crash in between only makes the next start recover again).
                // With many groups, the identity says `member` once every
                // group that recovered has been readmitted.
                let host = &self.host;
                let left = host.recovering_groups.get().saturating_sub(1);
                host.recovering_groups.set(left);
                if left == 0 {
                    let id = Identity {
                        standing: Standing::Member,
                        ..host.identity.borrow().clone()
                    };
                    match identity::write(&host.data_dir, &id) {
                        Ok(()) => *host.identity.borrow_mut() = id,
                        Err(e) => {
                            tracing::warn!(error = %e, "identity not updated; the next start recovers again")
                        }
                    }
                }
            }
            NodeEvent::ElectionDecided(_) => self.host.metrics.borrow().election_decided(),
            NodeEvent::MembershipChanged { .. } => {
                self.host.metrics.borrow().membership_changed();
                self.learn_addresses();
            }
            NodeEvent::Settled { epoch, .. } => self.host.metrics.borrow_mut().settled(epoch),
            NodeEvent::StorageReadFailed(_) => {}
        }
    }
}

impl Waiter {
    /// Answers the client, whatever it asked.
    fn answer(self, resp: Response) {
        match self {
            Waiter::Write { reply, .. }
            | Waiter::Read { reply, .. }
            | Waiter::Config { reply, .. }
            | Waiter::AdminKv { reply, .. } => reply.send(resp),
            Waiter::Move => {}
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
fn check_poisoned(dir: &Path, skip_entries: &[Zxid]) -> Result<()> {
    let path = dir.join(POISONED_FILE);
    if !path.exists() {
        return Ok(());
    }
    let Some(zxid) = read_poisoned(&path) else {
        bail!(
            "{} exists but names no entry; inspect it, then remove it to start",
            path.display()
        );
    };
    if skip_entries.contains(&zxid) {
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

/// The operator said to skip the entry [`POISONED_FILE`] names: the file
/// has done its job (the layer applies the entry as a no-op).
fn forget_skipped_poison(dir: &Path, skip_entries: &[Zxid]) {
    let path = dir.join(POISONED_FILE);
    if read_poisoned(&path).is_some_and(|z| skip_entries.contains(&z)) {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "could not remove the poisoned-entry record");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paxos_core::Epoch;

    /// The start-up half of the poisoned-entry procedure (the layer's half,
    /// stopping on a panicking apply and skipping, is tested in paxos-core).
    #[test]
    fn a_poisoned_entry_blocks_the_start_until_it_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let z2 = Zxid::new(Epoch(3), 2);
        std::fs::write(
            dir.path().join(POISONED_FILE),
            format!("{z2}\ncannot apply poison\n"),
        )
        .unwrap();
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
        let refused = check_poisoned(&opts.data_dir, &opts.skip_entries)
            .unwrap_err()
            .to_string();
        assert!(refused.contains(&format!("--skip-entry {z2}")), "{refused}");
        opts.skip_entries = vec![Zxid::new(Epoch(3), 9)];
        assert!(
            check_poisoned(&opts.data_dir, &opts.skip_entries).is_err(),
            "another entry's skip does not do"
        );
        forget_skipped_poison(&opts.data_dir, &opts.skip_entries);
        assert!(dir.path().join(POISONED_FILE).exists());
        opts.skip_entries = vec![z2];
        check_poisoned(&opts.data_dir, &opts.skip_entries).unwrap();
        forget_skipped_poison(&opts.data_dir, &opts.skip_entries);
        assert!(!dir.path().join(POISONED_FILE).exists());
        assert_eq!(parse_zxid(&z2.to_string()), Some(z2));
        assert_eq!(parse_zxid(&z2.as_u64().to_string()), Some(z2));
        assert_eq!(parse_zxid("zz"), None);
    }
}
