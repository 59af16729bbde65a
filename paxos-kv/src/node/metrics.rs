//! Prometheus metrics of the reference node, and the small HTTP listener
//! that serves them at `/metrics` (`--metrics-addr`).
//!
//! [`NodeMetrics`] owns a `prometheus_client` registry and every metric
//! handle, created once at start; the driver records through its methods
//! at the points where things happen (a write answered, a batch applied, a
//! sync done, an election decided, a snapshot chunk sent). Recording is an
//! atomic add or a histogram bucket update: no allocation, no lock but the
//! per-peer families' read lock. Per-peer series are created the first
//! time a peer is seen, so their number is bounded by the member count.
//!
//! Gauges that mirror the node's state (leader or not, epoch, commit and
//! applied zxids, per-peer lag and connection state) are refreshed by the
//! driver's loop every [`REFRESH_INTERVAL`] on its timer turn rather than
//! at scrape time: it keeps the scrape path free of any call into the
//! loop, at the price of values up to that interval old.
//!
//! The listener answers `GET /metrics` with the OpenMetrics text that
//! `prometheus_client`'s encoder writes, anything else with an error
//! status, and closes the connection after one response. It reads at most
//! [`MAX_REQUEST_BYTES`] of a request, within [`SCRAPE_IO_TIMEOUT`], and
//! serves at most [`MAX_SCRAPE_CONNECTIONS`] connections at once (others
//! are closed at once).

use bytes::Bytes;
use paxos_core::{Epoch, StateMachine, Zxid};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::cell::Cell;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::kv::KvStore;

/// How often the driver copies state-derived gauges into the registry.
pub(super) const REFRESH_INTERVAL: Duration = Duration::from_millis(500);
/// Bytes of a scrape request read at most (request line and headers); a
/// request whose head does not end within them is answered 431.
pub(super) const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Scrape connections served at once, at most; one more is closed unread.
pub(super) const MAX_SCRAPE_CONNECTIONS: usize = 4;
/// Reading a request's head, and writing the response, must each finish
/// within this.
pub(super) const SCRAPE_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// What `prometheus_client::encoding::text::encode` writes: OpenMetrics text.
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label of a per-peer series: the peer's node id.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: u64,
}

/// The label of the groups-by-role gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

/// How this node's groups stand, for the node-wide gauges (per-group
/// series would be thousands per node: one group's view is
/// `paxos-client status --group G`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct GroupCounts {
    /// Groups this node leads.
    pub(super) led: usize,
    /// Groups in which it follows a known leader.
    pub(super) following: usize,
    /// Groups in which it looks for a leader.
    pub(super) looking: usize,
    /// Groups in which this replica is recovering (wiped or damaged log).
    pub(super) recovering: usize,
    /// Groups whose state machine has not applied all it knows committed.
    pub(super) lagging: usize,
    /// Groups whose writes this node's disk refused (a full disk): they
    /// acknowledge nothing new until a retried write goes in.
    pub(super) storage_stalled: usize,
    /// Leaderless groups waiting for an election slot.
    pub(super) election_queue: usize,
    /// Elections admitted at once now.
    pub(super) election_window: usize,
}

/// The labels of a client request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    result: &'static str,
}

/// What a client asked for, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RequestKind {
    /// A write (put, delete, session command).
    Write,
    /// A linearizable read.
    Read,
    /// A stale read, served from the local store.
    StaleRead,
}

/// What the node did with a client request when it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RequestResult {
    /// Proposed (a write) or started (a read); its outcome comes later.
    Accepted,
    /// Refused: this node does not lead (the client is told where to go).
    NotLeader,
    /// Refused: too many requests wait already.
    Busy,
    /// Refused by the kernel for another reason (too large, epoch exhausted).
    Refused,
}

/// The pre-created request counters, one per kind and result that occurs.
struct RequestCounters {
    write_accepted: Counter,
    write_not_leader: Counter,
    write_busy: Counter,
    write_refused: Counter,
    read_accepted: Counter,
    read_not_leader: Counter,
    read_busy: Counter,
    stale_read_accepted: Counter,
}

/// What the sync thread records about each background WAL sync; cloned
/// into that thread.
#[derive(Clone)]
pub(super) struct SyncRecorder {
    duration: Histogram,
    entries: Histogram,
}

impl SyncRecorder {
    /// One background sync took `took` and made `entries` more entries
    /// durable.
    pub(super) fn record(&self, took: Duration, entries: u64) {
        self.duration.observe(took.as_secs_f64());
        self.entries.observe(entries as f64);
    }
}

/// The node's metrics: the registry, the handles the driver records
/// through, and what the recording needs to remember.
pub(super) struct NodeMetrics {
    registry: Arc<Registry>,
    commit_latency: Histogram,
    apply_latency: Histogram,
    applied_entries: Counter,
    sync: SyncRecorder,
    peer_lag: Family<PeerLabels, Gauge>,
    peer_connected: Family<PeerLabels, Gauge>,
    groups: Family<RoleLabels, Gauge>,
    groups_recovering: Gauge,
    groups_lagging: Gauge,
    groups_storage_stalled: Gauge,
    election_queue: Gauge,
    election_window: Gauge,
    elections: Counter,
    epoch_changes: Counter,
    membership_changes: Counter,
    leader_transfers: Counter,
    leader: Gauge,
    epoch: Gauge,
    commit_zxid: Gauge<u64, AtomicU64>,
    applied_zxid: Gauge<u64, AtomicU64>,
    snapshot_sends: Counter,
    snapshot_sent_bytes: Counter,
    snapshot_received_bytes: Counter,
    snapshot_installs: Counter,
    snapshots_taken: Counter,
    snapshot_taken_bytes: Counter,
    requests: RequestCounters,
    /// The epoch this node last settled in (for `epoch_changes`).
    last_epoch: Option<Epoch>,
    /// When the state-derived gauges are next refreshed.
    next_refresh: Instant,
}

/// The state-derived figures the driver copies in on a refresh.
pub(super) struct StateGauges {
    /// Whether this node leads.
    pub(super) leader: bool,
    /// The current epoch of the hard state.
    pub(super) epoch: Epoch,
    /// The highest committed zxid.
    pub(super) commit: Zxid,
    /// The highest applied zxid.
    pub(super) applied: Zxid,
}

impl NodeMetrics {
    /// Creates and registers every metric (names under `paxos_`).
    pub(super) fn new() -> NodeMetrics {
        let mut r = Registry::with_prefix("paxos");
        // 100 µs to about 3.3 s, doubling.
        let latency = || Histogram::new(exponential_buckets(0.000_1, 2.0, 16));
        let commit_latency = latency();
        r.register_with_unit(
            "commit_latency",
            "Time from proposing a client write to answering it as written (leader only)",
            Unit::Seconds,
            commit_latency.clone(),
        );
        // 1 µs to about 4 s, times 4.
        let apply_latency = Histogram::new(exponential_buckets(0.000_001, 4.0, 12));
        r.register_with_unit(
            "apply_latency",
            "Time the state machine took to apply the committed entries of one batch",
            Unit::Seconds,
            apply_latency.clone(),
        );
        let applied_entries = Counter::default();
        r.register(
            "applied_entries",
            "Committed entries applied to the state machine since the process started",
            applied_entries.clone(),
        );
        let sync = SyncRecorder {
            duration: latency(),
            // 1 to 32768 entries, doubling.
            entries: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
        };
        r.register_with_unit(
            "wal_sync_duration",
            "Time one background WAL sync took, including any injected disk delay",
            Unit::Seconds,
            sync.duration.clone(),
        );
        r.register_with_unit(
            "wal_sync_batch",
            "Log entries one background WAL sync made durable",
            Unit::Other("entries".into()),
            sync.entries.clone(),
        );
        let peer_lag = Family::<PeerLabels, Gauge>::default();
        r.register_with_unit(
            "peer_lag",
            "Entries of the current epoch a peer does not hold yet, as the leader sees it (present on the leader only)",
            Unit::Other("entries".into()),
            peer_lag.clone(),
        );
        let peer_connected = Family::<PeerLabels, Gauge>::default();
        r.register(
            "peer_connected",
            "Whether the transport holds a connection to the peer (1) or not (0)",
            peer_connected.clone(),
        );
        let groups = Family::<RoleLabels, Gauge>::default();
        r.register(
            "groups",
            "Paxos groups this node hosts, by its role in each (leader, follower, looking)",
            groups.clone(),
        );
        let groups_recovering = Gauge::default();
        r.register(
            "groups_recovering",
            "Groups in which this node's replica is recovering (its log was wiped or damaged) and does not vote",
            groups_recovering.clone(),
        );
        let groups_lagging = Gauge::default();
        r.register(
            "groups_lagging",
            "Groups whose state machine on this node has not applied everything it knows committed",
            groups_lagging.clone(),
        );
        let groups_storage_stalled = Gauge::default();
        r.register(
            "groups_storage_stalled",
            "Groups whose writes this node's disk refused (full disk?): they acknowledge nothing new until a retried write goes in",
            groups_storage_stalled.clone(),
        );
        let election_queue = Gauge::default();
        r.register(
            "election_queue",
            "Groups without a leader waiting for an election slot (many groups only)",
            election_queue.clone(),
        );
        let election_window = Gauge::default();
        r.register(
            "election_window",
            "Elections this node admits at once now (many groups only; adapts between 16 and --max-elections)",
            election_window.clone(),
        );
        let elections = Counter::default();
        r.register(
            "elections",
            "Leader elections this node saw decided",
            elections.clone(),
        );
        let membership_changes = Counter::default();
        r.register(
            "membership_changes",
            "Changes of the membership in force on this node (a change appended or undone, or a snapshot's)",
            membership_changes.clone(),
        );
        let leader_transfers = Counter::default();
        r.register(
            "leader_transfers",
            "Leadership hand-overs this node made as leader (TAKEOVER sent)",
            leader_transfers.clone(),
        );
        let epoch_changes = Counter::default();
        r.register(
            "epoch_changes",
            "Times this node settled under a leader in an epoch other than its previous one (the first settle counts)",
            epoch_changes.clone(),
        );
        let leader = Gauge::default();
        r.register(
            "is_leader",
            "Whether this node leads the cluster (1) or not (0)",
            leader.clone(),
        );
        let epoch = Gauge::default();
        r.register(
            "epoch",
            "The current epoch of this node's hard state",
            epoch.clone(),
        );
        let commit_zxid = Gauge::<u64, AtomicU64>::default();
        r.register(
            "commit_zxid",
            "The highest committed zxid this node knows (epoch in the high 32 bits, counter in the low 32)",
            commit_zxid.clone(),
        );
        let applied_zxid = Gauge::<u64, AtomicU64>::default();
        r.register(
            "applied_zxid",
            "The highest zxid applied to this node's state machine",
            applied_zxid.clone(),
        );
        let snapshot_sends = Counter::default();
        r.register(
            "snapshot_sends",
            "Snapshot transfers this node started to a peer (resumed ones included)",
            snapshot_sends.clone(),
        );
        let snapshot_sent_bytes = Counter::default();
        r.register_with_unit(
            "snapshot_sent",
            "Snapshot chunk bytes this node handed to the transport",
            Unit::Bytes,
            snapshot_sent_bytes.clone(),
        );
        let snapshot_received_bytes = Counter::default();
        r.register_with_unit(
            "snapshot_received",
            "Snapshot chunk bytes this node received and kept",
            Unit::Bytes,
            snapshot_received_bytes.clone(),
        );
        let snapshot_installs = Counter::default();
        r.register(
            "snapshot_installs",
            "Received snapshots installed into the live state",
            snapshot_installs.clone(),
        );
        let snapshots_taken = Counter::default();
        r.register(
            "snapshots_taken",
            "Local snapshots this node wrote",
            snapshots_taken.clone(),
        );
        let snapshot_taken_bytes = Counter::default();
        r.register_with_unit(
            "snapshot_taken",
            "Bytes of the local snapshot files this node wrote",
            Unit::Bytes,
            snapshot_taken_bytes.clone(),
        );
        let requests_family = Family::<RequestLabels, Counter>::default();
        r.register(
            "client_requests",
            "Client requests by kind and by what the node did on arrival (accepted, not_leader, busy, refused)",
            requests_family.clone(),
        );
        let counter = |kind, result| {
            requests_family
                .get_or_create(&RequestLabels { kind, result })
                .clone()
        };
        let requests = RequestCounters {
            write_accepted: counter("write", "accepted"),
            write_not_leader: counter("write", "not_leader"),
            write_busy: counter("write", "busy"),
            write_refused: counter("write", "refused"),
            read_accepted: counter("read", "accepted"),
            read_not_leader: counter("read", "not_leader"),
            read_busy: counter("read", "busy"),
            stale_read_accepted: counter("stale_read", "accepted"),
        };
        NodeMetrics {
            registry: Arc::new(r),
            commit_latency,
            apply_latency,
            applied_entries,
            sync,
            peer_lag,
            peer_connected,
            groups,
            groups_recovering,
            groups_lagging,
            groups_storage_stalled,
            election_queue,
            election_window,
            elections,
            membership_changes,
            leader_transfers,
            epoch_changes,
            leader,
            epoch,
            commit_zxid,
            applied_zxid,
            snapshot_sends,
            snapshot_sent_bytes,
            snapshot_received_bytes,
            snapshot_installs,
            snapshots_taken,
            snapshot_taken_bytes,
            requests,
            last_epoch: None,
            next_refresh: Instant::now(),
        }
    }

    /// The registry, for the listener.
    pub(super) fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// A handle for the WAL sync thread.
    pub(super) fn sync_recorder(&self) -> SyncRecorder {
        self.sync.clone()
    }

    /// A client request arrived and was accepted or refused.
    pub(super) fn request(&self, kind: RequestKind, result: RequestResult) {
        use RequestKind as K;
        use RequestResult as R;
        let c = &self.requests;
        let counter = match (kind, result) {
            (K::Write, R::Accepted) => &c.write_accepted,
            (K::Write, R::NotLeader) => &c.write_not_leader,
            (K::Write, R::Busy) => &c.write_busy,
            (K::Write, R::Refused) => &c.write_refused,
            (K::Read, R::Accepted) => &c.read_accepted,
            (K::Read, R::NotLeader) => &c.read_not_leader,
            // A read has no other refusal than these.
            (K::Read, R::Busy | R::Refused) => &c.read_busy,
            (K::StaleRead, _) => &c.stale_read_accepted,
        };
        counter.inc();
    }

    /// A write proposed at `proposed` was answered as written.
    pub(super) fn write_committed(&self, proposed: Instant) {
        self.commit_latency
            .observe(proposed.elapsed().as_secs_f64());
    }

    /// The state machine applied `entries` committed entries in `took`.
    pub(super) fn applied_batch(&self, took: Duration, entries: u64) {
        self.apply_latency.observe(took.as_secs_f64());
        self.applied_entries.inc_by(entries);
    }

    /// An election was decided.
    pub(super) fn election_decided(&self) {
        self.elections.inc();
    }

    /// The membership in force changed.
    pub(super) fn membership_changed(&self) {
        self.membership_changes.inc();
    }

    /// This node handed its leadership over.
    pub(super) fn handed_off(&self) {
        self.leader_transfers.inc();
    }

    /// The node settled under a leader (or as one) in `epoch`.
    pub(super) fn settled(&mut self, epoch: Epoch) {
        if self.last_epoch != Some(epoch) {
            self.last_epoch = Some(epoch);
            self.epoch_changes.inc();
        }
        self.epoch.set(i64::from(epoch.0));
    }

    /// A snapshot transfer to a peer started (or resumed).
    pub(super) fn snapshot_send_started(&self) {
        self.snapshot_sends.inc();
    }

    /// A snapshot chunk of `bytes` went to the kernel for a peer.
    pub(super) fn snapshot_chunk_sent(&self, bytes: usize) {
        self.snapshot_sent_bytes.inc_by(bytes as u64);
    }

    /// A snapshot chunk of `bytes` was received and kept.
    pub(super) fn snapshot_chunk_received(&self, bytes: usize) {
        self.snapshot_received_bytes.inc_by(bytes as u64);
    }

    /// A received snapshot replaced the live state.
    pub(super) fn snapshot_installed(&self) {
        self.snapshot_installs.inc();
    }

    /// A local snapshot of `bytes` was written.
    pub(super) fn snapshot_taken(&self, bytes: u64) {
        self.snapshots_taken.inc();
        self.snapshot_taken_bytes.inc_by(bytes);
    }

    /// Whether the state-derived gauges are due for a refresh at `now`;
    /// if so, the next one is scheduled.
    pub(super) fn refresh_due(&mut self, now: Instant) -> bool {
        if now < self.next_refresh {
            return false;
        }
        self.next_refresh = now + REFRESH_INTERVAL;
        true
    }

    /// Copies the node's role and positions in.
    pub(super) fn set_state(&self, s: &StateGauges) {
        self.leader.set(i64::from(s.leader));
        self.epoch.set(i64::from(s.epoch.0));
        self.commit_zxid.set(s.commit.as_u64());
        self.applied_zxid.set(s.applied.as_u64());
    }

    /// Copies the counts of this node's groups in.
    pub(super) fn set_groups(&self, c: &GroupCounts) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        for (role, n) in [
            ("leader", c.led),
            ("follower", c.following),
            ("looking", c.looking),
        ] {
            self.groups
                .get_or_create(&RoleLabels { role })
                .set(gauge(n));
        }
        self.groups_recovering.set(gauge(c.recovering));
        self.groups_lagging.set(gauge(c.lagging));
        self.groups_storage_stalled.set(gauge(c.storage_stalled));
        self.election_queue.set(gauge(c.election_queue));
        self.election_window.set(gauge(c.election_window));
    }

    /// Whether the transport is connected to `peer`.
    pub(super) fn set_peer_connected(&self, peer: u64, connected: bool) {
        self.peer_connected
            .get_or_create(&PeerLabels { peer })
            .set(i64::from(connected));
    }

    /// The leader's view of how far behind `peer` is.
    pub(super) fn set_peer_lag(&self, peer: u64, entries: u64) {
        self.peer_lag
            .get_or_create(&PeerLabels { peer })
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// This node does not lead: the lag series go away (only a leader
    /// knows its followers' progress).
    pub(super) fn clear_peer_lag(&self) {
        self.peer_lag.clear();
    }
}

impl super::Driver {
    /// Copies the state-derived gauges in: role, epoch and positions, and
    /// per peer the transport's connection state and (on the leader) the
    /// peer's lag.
    pub(super) fn refresh_metrics(&self) {
        let replica = self.node.replica();
        let leader = replica.is_leader();
        self.host.metrics.borrow().set_state(&StateGauges {
            leader,
            epoch: replica.hard_state().current_epoch,
            commit: replica.commit_zxid(),
            applied: StateMachine::applied(self.node.state_machine()),
        });
        for m in self.host.transport.borrow().metrics() {
            self.host
                .metrics
                .borrow()
                .set_peer_connected(m.peer.0, m.connected);
        }
        if leader {
            let last = replica.last_zxid();
            for p in replica.peer_progress() {
                self.host
                    .metrics
                    .borrow()
                    .set_peer_lag(p.id.0, lag_entries(last, p.matched));
            }
        } else {
            self.host.metrics.borrow().clear_peer_lag();
        }
    }
}

/// Entries of `last`'s epoch that a peer which holds up to `matched` does
/// not hold yet. A peer whose last entry is of an older epoch lacks every
/// entry of the current one (the older epoch's tail is not counted).
pub(super) fn lag_entries(last: Zxid, matched: Zxid) -> u64 {
    if matched.epoch() == last.epoch() {
        u64::from(last.counter().saturating_sub(matched.counter()))
    } else {
        u64::from(last.counter())
    }
}

/// Entries made durable between two WAL durable keys (zxids), counted
/// like [`lag_entries`]: within the newer key's epoch.
pub(super) fn entries_between(before: Option<u64>, after: Option<u64>) -> u64 {
    match (before, after) {
        (_, None) => 0,
        (None, Some(a)) => u64::from(Zxid(a).counter()),
        (Some(b), Some(a)) if a <= b => 0,
        (Some(b), Some(a)) => lag_entries(Zxid(a), Zxid(b)),
    }
}

/// The key-value store as the node layer runs it: every apply is timed,
/// and the driver takes the total after each turn of the layer (one turn
/// applies one committed batch, seldom more). Everything else is the
/// store's, reached through `Deref`.
#[derive(Clone)]
pub(super) struct TimedStore {
    kv: KvStore,
    /// Nanoseconds spent in `apply` since the last [`take_batch`](Self::take_batch).
    apply_nanos: Cell<u64>,
    /// Entries applied since then.
    entries: Cell<u64>,
}

impl TimedStore {
    /// Wraps a store.
    pub(super) fn new(kv: KvStore) -> TimedStore {
        TimedStore {
            kv,
            apply_nanos: Cell::new(0),
            entries: Cell::new(0),
        }
    }

    /// The time spent applying, and the entries applied, since the last
    /// call; `None` if nothing was applied.
    pub(super) fn take_batch(&self) -> Option<(Duration, u64)> {
        let entries = self.entries.take();
        let nanos = self.apply_nanos.take();
        (entries > 0).then(|| (Duration::from_nanos(nanos), entries))
    }

    fn timed(&self, started: Instant) {
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.apply_nanos
            .set(self.apply_nanos.get().saturating_add(nanos));
        self.entries.set(self.entries.get() + 1);
    }
}

impl std::ops::Deref for TimedStore {
    type Target = KvStore;
    fn deref(&self) -> &KvStore {
        &self.kv
    }
}

impl StateMachine for TimedStore {
    fn apply(&mut self, zxid: Zxid, command: &Bytes) -> Bytes {
        let started = Instant::now();
        let out = StateMachine::apply(&mut self.kv, zxid, command);
        self.timed(started);
        out
    }

    fn skip(&mut self, zxid: Zxid) -> Bytes {
        let started = Instant::now();
        let out = StateMachine::skip(&mut self.kv, zxid);
        self.timed(started);
        out
    }

    fn applied(&self) -> Zxid {
        StateMachine::applied(&self.kv)
    }

    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.kv.snapshot(out)
    }

    fn restore(&mut self, zxid: Zxid, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.kv.restore(zxid, input)
    }
}

// ----- the listener -----

/// Where a scrape request goes, from its request line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Route {
    /// `GET /metrics` (a query string is ignored).
    Metrics,
    /// A well-formed GET of another path.
    NotFound,
    /// A well-formed request with another method.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line.
    BadRequest,
}

/// The length of a request's head (request line and headers, through the
/// blank line that ends them) if `buf` holds all of it. A bare `\n` line
/// end is taken too, as HTTP allows.
pub(super) fn head_len(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            let rest = &buf[i + 1..];
            if rest.starts_with(b"\r\n") {
                return Some(i + 3);
            }
            if rest.starts_with(b"\n") {
                return Some(i + 2);
            }
        }
        i += 1;
    }
    None
}

/// Routes a request by its head's request line.
pub(super) fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&head[..line_end]);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::MethodNotAllowed;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path == "/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    }
}

/// How reading a request's head ended.
enum Head {
    /// The head is the first this many bytes of the buffer.
    Complete(usize),
    /// The buffer filled up before the head ended.
    TooLarge,
    /// The peer closed before the head ended (nothing, or a partial head).
    Closed { partial: bool },
}

/// Serves scrapes on `listener` until the task is aborted.
pub(super) async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPE_CONNECTIONS));
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%from, "metrics listener: too many scrapes at once; connection closed");
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve_one(stream, &registry).await {
                tracing::debug!(%from, error = %e, "metrics scrape failed");
            }
        });
    }
}

/// Reads one request's head, answers it and closes the connection.
async fn serve_one(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let head = match tokio::time::timeout(SCRAPE_IO_TIMEOUT, read_head(&mut stream, &mut buf)).await
    {
        Ok(r) => r?,
        Err(_) => {
            return write_response(&mut stream, "408 Request Timeout", "text/plain", b"").await;
        }
    };
    let (status, content_type, body) = match head {
        Head::Closed { partial: false } => return Ok(()),
        Head::Closed { partial: true } => ("400 Bad Request", "text/plain", Vec::new()),
        Head::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain",
            Vec::new(),
        ),
        Head::Complete(n) => match route(&buf[..n]) {
            Route::Metrics => {
                let mut text = String::new();
                match prometheus_client::encoding::text::encode(&mut text, registry) {
                    Ok(()) => ("200 OK", CONTENT_TYPE, text.into_bytes()),
                    Err(e) => {
                        tracing::error!(error = %e, "encoding the metrics failed");
                        ("500 Internal Server Error", "text/plain", Vec::new())
                    }
                }
            }
            Route::NotFound => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
            Route::MethodNotAllowed => ("405 Method Not Allowed", "text/plain", Vec::new()),
            Route::BadRequest => ("400 Bad Request", "text/plain", Vec::new()),
        },
    };
    write_response(&mut stream, status, content_type, &body).await
}

/// Reads until the head ends, the buffer is full or the peer closes.
async fn read_head(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<Head> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Ok(Head::TooLarge);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(Head::Closed {
                partial: filled > 0,
            });
        }
        // The end may straddle two reads: look back a little.
        let from = filled.saturating_sub(3);
        filled += n;
        if let Some(len) = head_len(&buf[from..filled]) {
            return Ok(Head::Complete(from + len));
        }
    }
}

/// Writes a complete response (with `Connection: close`) and shuts the
/// write side down, within [`SCRAPE_IO_TIMEOUT`].
async fn write_response(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(SCRAPE_IO_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "writing the metrics response timed out",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody"), Some(27));
        assert_eq!(head_len(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_len(b""), None);
        assert_eq!(head_len(b"\n"), None);
    }

    #[test]
    fn get_metrics_is_routed_to_the_metrics() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route(b"GET /metrics HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.1\n\n"), Route::Metrics);
    }

    #[test]
    fn other_paths_and_methods_are_told_apart_from_garbage() {
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route(b"GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::MethodNotAllowed
        );
    }

    #[test]
    fn malformed_request_lines_are_bad_requests() {
        for line in [
            &b""[..],
            b"\r\n\r\n",
            b"GET\r\n\r\n",
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/2\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics \xff\xfe\r\n\r\n",
            b"\x00\x01\x02\x03",
        ] {
            assert_eq!(
                route(line),
                Route::BadRequest,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn lag_and_sync_batches_count_entries_of_the_newer_epoch() {
        let z = |e, c| Zxid::new(Epoch(e), c);
        assert_eq!(lag_entries(z(3, 10), z(3, 4)), 6);
        assert_eq!(lag_entries(z(3, 10), z(3, 10)), 0);
        assert_eq!(lag_entries(z(3, 10), z(2, 90)), 10);
        assert_eq!(entries_between(None, None), 0);
        assert_eq!(entries_between(Some(z(3, 5).as_u64()), None), 0);
        assert_eq!(entries_between(None, Some(z(1, 7).as_u64())), 7);
        assert_eq!(
            entries_between(Some(z(1, 7).as_u64()), Some(z(1, 9).as_u64())),
            2
        );
        assert_eq!(
            entries_between(Some(z(1, 9).as_u64()), Some(z(1, 9).as_u64())),
            0
        );
        assert_eq!(
            entries_between(Some(z(1, 9).as_u64()), Some(z(2, 3).as_u64())),
            3
        );
    }

    #[test]
    fn the_registry_encodes_every_metric_under_the_paxos_prefix() {
        let mut m = NodeMetrics::new();
        m.write_committed(Instant::now());
        m.election_decided();
        m.settled(Epoch(2));
        m.settled(Epoch(2));
        m.settled(Epoch(3));
        m.set_peer_lag(2, 5);
        m.set_peer_connected(2, true);
        m.request(RequestKind::Write, RequestResult::Busy);
        m.sync_recorder().record(Duration::from_millis(1), 4);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
        for line in [
            "paxos_commit_latency_seconds_count 1",
            "paxos_elections_total 1",
            "paxos_epoch_changes_total 2",
            "paxos_epoch 3",
            "paxos_peer_lag_entries{peer=\"2\"} 5",
            "paxos_peer_connected{peer=\"2\"} 1",
            "paxos_client_requests_total{kind=\"write\",result=\"busy\"} 1",
            "paxos_client_requests_total{kind=\"read\",result=\"accepted\"} 0",
            "paxos_wal_sync_duration_seconds_count 1",
            "paxos_wal_sync_batch_entries_sum 4.0",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from:\n{text}"
            );
        }
        m.clear_peer_lag();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
        assert!(!text.contains("paxos_peer_lag_entries{"), "{text}");
    }

    #[test]
    fn the_timed_store_reports_each_batch_once() {
        let mut s = TimedStore::new(KvStore::new());
        assert_eq!(s.take_batch(), None);
        let z = |c| Zxid::new(Epoch(1), c);
        StateMachine::apply(&mut s, z(1), &Bytes::new());
        StateMachine::skip(&mut s, z(2));
        let (_, entries) = s.take_batch().expect("two entries applied");
        assert_eq!(entries, 2);
        assert_eq!(s.take_batch(), None);
        assert_eq!(StateMachine::applied(&s), z(2));
    }
}
