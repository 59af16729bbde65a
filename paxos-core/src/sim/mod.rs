//! A deterministic simulator of a whole group: replicas, electors, a
//! faulty network, crashing disks and a client, all driven by one seed.
//!
//! The simulator owns the clock (simulated), the network (drops,
//! duplicates, delays, reorders, partitions) and every replica's disk (a
//! durable image plus the writes not yet synced, lost on crash). It is
//! generic over the [`Elector`] and the [`SyncPlanner`], so a user can
//! simulate their own stack; [`TestElector`] and [`TestPlanner`] are
//! test-only stand-ins.
//!
//! After every step it checks the safety invariants:
//! agreement and prefix order (every replica's applied sequence is a prefix
//! of one canonical sequence), durability (every entry acknowledged to the
//! client is durably held by a quorum of voters, of every membership that
//! can act), epoch monotonicity of the durable hard state, at most one
//! established leader per epoch, and leader completeness (an established leader holds
//! every acknowledged entry of earlier epochs); and every confirmed
//! read-index read covers every entry acknowledged before it started. A
//! violation carries the seed; the same seed replays the same run exactly.
//!
//! [`scenarios`] scripts the named fault scenarios (leader crash
//! mid-broadcast, TRUNC of an old-epoch suffix, SNAP of a follower behind
//! the retention window, partitioned old leader, duplicated and reordered
//! ACCEPTs, full-cluster restart, slow snapshot transfer and install, a
//! lost snapshot chunk, a lost NEWLEADER and UPTODATE after SNAP) over any
//! elector;
//! [`Sim::run_steps_then_recover`] runs a random schedule, stops the faults
//! and reports how long the cluster took to commit again
//! ([`SimStats::recovery`]), failing if it exceeds
//! [`SimConfig::liveness_bound`].
//!
//! ```
//! use paxos_core::sim::{Sim, SimConfig};
//! let mut sim = Sim::with_test_components(SimConfig { seed: 7, ..SimConfig::default() });
//! sim.run_for(std::time::Duration::from_secs(3)).unwrap();
//! assert!(sim.stats().acked > 0);
//! ```

mod elector;
mod faults;
mod machine;
pub mod multi;
pub mod scenarios;
mod snapshot;
mod storage;

/// The simulator's generator: the crate's one PRNG.
pub use crate::rng::Rng as SimRng;
pub use elector::{TestElectionMsg, TestElector, TestVote};
pub use multi::{MultiConfig, MultiSim, MultiStats};
pub use storage::{SharedLog, SimStorage};

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use crate::election::{Elector, PeerState};
use crate::message::{Envelope, HardState, Message};
use crate::node::{Node, NodeConfig, NodeError, NodeEvent, SyncId, Transmit};
use crate::ready::Recovered;
use crate::replica::Replica;
use crate::storage::{MemStorage, MetaKey, Storage};
use crate::sync::{FollowerPosition, LeaderHistory, SyncPlan, SyncPlanner};
use crate::{plan, Config, GroupId, Membership, NodeId, Time, Zxid};
use machine::{hash, Canonical, SimMachine};

/// Test-only sync planner: the kernel's built-in rules (DIFF when the
/// follower's last zxid is held, TRUNC/TRUNC+DIFF to the last common zxid,
/// SNAP when nothing common is retained). Production code should use
/// `paxos-snapshot`'s planner.
#[derive(Clone, Copy, Debug, Default)]
pub struct TestPlanner;

impl SyncPlanner for TestPlanner {
    fn plan(&self, follower: FollowerPosition, history: &LeaderHistory<'_>) -> SyncPlan {
        // Without the base the planner cannot know whether the log starts
        // at the beginning of time; the log starts at ZERO unless a
        // snapshot exists.
        let base = if history.snapshot.is_none() {
            Some(Zxid::ZERO)
        } else {
            None
        };
        plan::builtin(follower, history, base, false)
    }
}

/// A node's timer firing more often than this at one simulated instant is
/// reported as a busy loop (rounding of a drifting clock needs a few).
const MAX_TIMER_FIRES_AT_ONE_INSTANT: u32 = 100;

/// Once faults have stopped and a command has committed again, every live
/// voter must follow (or be) the leader within this many election timeouts
/// of that commit. An election with the slowest retry of `paxos-election`
/// (its vote re-sent at most every 800 ms with the default timeouts, four
/// election timeouts of the simulator) plus a sync by DIFF or SNAP takes a
/// few; fifteen leaves room for a second failed round and still catches a
/// node that never rejoins (it would wait for the next election, which a
/// healthy group never holds).
pub const REJOIN_ELECTION_TIMEOUTS: u32 = 15;

/// Makes the elector of a node (given its id and the group's configuration).
pub type ElectorFactory<E> = Box<dyn Fn(NodeId, &Config) -> E>;
/// Makes a node's sync planner.
pub type PlannerFactory = Box<dyn Fn() -> Box<dyn SyncPlanner + Send>>;

/// Parameters of a simulation run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The seed: the same seed replays the same run.
    pub seed: u64,
    /// Number of voters.
    pub voters: usize,
    /// Number of observers.
    pub observers: usize,
    /// Probability a message is dropped.
    pub drop_prob: f64,
    /// Probability a message is delivered twice.
    pub dup_prob: f64,
    /// Network delay range (reordering comes from the spread).
    pub min_delay: Duration,
    /// Upper end of the delay range.
    pub max_delay: Duration,
    /// Delay before a disk sync completes (upper bound).
    pub max_sync_delay: Duration,
    /// Mean time between random faults (crash, restart, partition, heal);
    /// `None` for no random faults.
    pub fault_interval: Option<Duration>,
    /// How long a crashed node stays down at most.
    pub max_down: Duration,
    /// Client proposal interval (one command per tick to the leader).
    pub propose_interval: Duration,
    /// Commands per client tick.
    pub batch: usize,
    /// Take a local snapshot every this many applied entries (0: never).
    pub snapshot_every: u64,
    /// The replicas' configuration template (voters are filled in).
    pub replica: Config,
    /// A run fails liveness if no command commits within this simulated
    /// time after faults stop.
    pub liveness_bound: Duration,
    /// After recovery, also check that every live voter follows the
    /// leader ([`Sim::check_rejoined`]). On by default; the `simulate`
    /// sweeps turn it on with `--check-rejoin` only, because it still finds
    /// a few stragglers there (see ARCHITECTURE.md, "Simulator").
    pub check_rejoin: bool,
    /// Random faults may also *wipe* a voter: crash it, lose its whole disk
    /// and snapshot, and restart it recovering
    /// ([`Replica::mark_recovering`]). At most a minority of voters is down
    /// or recovering at once.
    pub wipes: bool,
    /// Simulated link speed for snapshot transfer: the leader's driver
    /// hands the kernel one chunk every this long (zero: the whole
    /// snapshot at once).
    pub snap_chunk_interval: Duration,
    /// How long a follower's driver takes to install a complete snapshot
    /// (verify, store, restore), during which it reports progress every
    /// heartbeat interval (zero: at once).
    pub snap_install_time: Duration,
    /// Bytes per snapshot chunk.
    pub snap_chunk_bytes: usize,
    /// Test-only: skip the lease-read hold-off after a restart, to show
    /// the stale read it prevents. Never set outside such a test.
    #[doc(hidden)]
    pub unsafe_skip_lease_hold_off: bool,
    /// Random faults may also hit disks: a disk that refuses writes for a
    /// while (full), damage in the synced part of a voter's log (the node
    /// restarts recovering, as the reference node does when its WAL check
    /// fails), and failed background syncs (the node stops and restarts).
    pub disk_faults: bool,
    /// Probability that a background sync fails (with `disk_faults`).
    pub sync_fail_prob: f64,
    /// Each node's clock runs fast or slow by up to this many parts per
    /// million (drawn per node from the seed): what lease reads must
    /// tolerate ([`Config::lease_clock_drift`]).
    pub max_clock_drift_ppm: u64,
    /// Mean time between leader hand-overs to a random voter
    /// ([`Node::transfer_leadership`]) while faults run; `None` for none.
    pub transfer_interval: Option<Duration>,
    /// Mean time between random membership changes
    /// ([`Node::propose_membership`]: add, remove, promote or demote one
    /// node, keeping 3 to 5 voters) while faults run; `None` for none.
    pub reconfig_interval: Option<Duration>,
    /// The disks say their hard state is ordered with the log
    /// (`Storage::state_in_log`, as a log shared by many groups does), so
    /// the node layer syncs it in the background like entries.
    pub state_in_log: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        let mut replica = Config::new(GroupId(0), Vec::new());
        replica.heartbeat_interval = Duration::from_millis(20);
        replica.election_timeout = Duration::from_millis(200);
        replica.sync_timeout = Duration::from_millis(150);
        replica.snapshot_progress_timeout = Duration::from_secs(1);
        replica.pipeline_window = 4;
        replica.max_batch_entries = 8;
        replica.max_batch_bytes = 256;
        replica.retention_entries = 20;
        replica.follower_pin_timeout = Duration::from_secs(2);
        SimConfig {
            seed: 0,
            voters: 3,
            observers: 0,
            drop_prob: 0.0,
            dup_prob: 0.0,
            min_delay: Duration::from_micros(200),
            max_delay: Duration::from_millis(2),
            max_sync_delay: Duration::from_millis(1),
            fault_interval: None,
            max_down: Duration::from_millis(800),
            propose_interval: Duration::from_millis(5),
            batch: 2,
            snapshot_every: 50,
            replica,
            liveness_bound: Duration::from_secs(30),
            check_rejoin: true,
            wipes: false,
            snap_chunk_interval: Duration::ZERO,
            snap_install_time: Duration::ZERO,
            snap_chunk_bytes: 1024,
            unsafe_skip_lease_hold_off: false,
            disk_faults: false,
            sync_fail_prob: 0.0,
            max_clock_drift_ppm: 0,
            transfer_interval: None,
            reconfig_interval: None,
            state_in_log: false,
        }
    }
}

impl SimConfig {
    /// A random-fault configuration derived from `seed`: drops, duplicates,
    /// wide delays and crashes/partitions every few hundred milliseconds.
    pub fn chaos(seed: u64) -> SimConfig {
        let mut rng = SimRng::new(seed ^ 0xC4A0_5EED);
        let mut c = SimConfig {
            seed,
            voters: if rng.chance(0.3) { 5 } else { 3 },
            observers: usize::from(rng.chance(0.2)),
            drop_prob: 0.02 * rng.range(0, 3) as f64,
            dup_prob: 0.02 * rng.range(0, 3) as f64,
            max_delay: Duration::from_millis(rng.range(1, 10)),
            fault_interval: Some(Duration::from_millis(rng.range(150, 600))),
            ..SimConfig::default()
        };
        c.replica.retention_entries = rng.range(5, 40);
        c.snapshot_every = rng.range(10, 60);
        c.max_sync_delay = Duration::from_micros(rng.range(100, 3000));
        if rng.chance(0.5) {
            c.disk_faults = true;
            c.sync_fail_prob = 0.002;
        }
        if rng.chance(0.4) {
            // Lease reads under drifting clocks: up to 5% fast or slow,
            // which over the 200 ms election timeout stays well inside the
            // 50 ms drift allowance.
            c.replica.lease_reads = true;
            c.max_clock_drift_ppm = rng.range(0, 50_000);
        }
        // Drawn last, so the draws above (and the seeds found with them)
        // are what they were before hand-overs existed.
        if rng.chance(0.3) {
            c.transfer_interval = Some(Duration::from_millis(rng.range(100, 600)));
        }
        // Drawn after the hand-overs, for the same reason.
        if rng.chance(0.3) {
            c.reconfig_interval = Some(Duration::from_millis(rng.range(100, 600)));
            // A node outside the voters to promote, add and remove.
            c.observers = c.observers.max(1);
        }
        // Drawn after the membership changes, for the same reason.
        if rng.chance(0.3) {
            c.replica.quiesce_after = Some(Duration::from_millis(rng.range(100, 500)));
        }
        // Drawn last, for the same reason.
        c.state_in_log = rng.chance(0.3);
        c
    }
}

/// A safety or liveness violation, with the seed that replays it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The run's seed.
    pub seed: u64,
    /// The simulated time of the violation.
    pub at: Time,
    /// The step number.
    pub step: u64,
    /// What was violated.
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {} at {:?}: {} (replay with the same seed)",
            self.seed,
            self.step,
            Duration::from_nanos(self.at.as_nanos()),
            self.what
        )
    }
}

impl std::error::Error for Violation {}

/// Counters of what happened in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Steps (events) processed.
    pub steps: u64,
    /// Commands acknowledged to the client (applied by their leader).
    pub acked: u64,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages dropped (loss or partition).
    pub dropped: u64,
    /// Leaderships established.
    pub leaders: u64,
    /// Leader step-downs and followers losing their leader.
    pub lost_leader: u64,
    /// TRUNC messages delivered.
    pub truncs: u64,
    /// Snapshots installed by followers.
    pub snap_installs: u64,
    /// History fetches by a new leader.
    pub fetches: u64,
    /// Snapshots a leader-elect fetched from a follower in discovery (the
    /// follower's log no longer covered its position) and installed.
    pub snap_fetches: u64,
    /// Crashes.
    pub crashes: u64,
    /// Reads confirmed.
    pub reads: u64,
    /// Log cleanups applied.
    pub compactions: u64,
    /// Leaders that spent their epoch's zxid counter and stepped down.
    pub epoch_rollovers: u64,
    /// After faults stopped: simulated time until a command committed again.
    pub recovery: Option<Duration>,
    /// Voters wiped (disk and snapshot lost).
    pub wipes: u64,
    /// Recovering replicas readmitted (their cleared flag durable).
    pub readmissions: u64,
    /// Snapshot transfers started again by the same leader to the same
    /// follower before the follower installed the one in flight (a
    /// restart, from offset 0 or resumed).
    pub snap_restarts: u64,
    /// Snapshot transfers that started past offset 0 (resumed).
    pub snap_resumes: u64,
    /// Messages dropped by [`Sim::drop_next`].
    pub dropped_on_purpose: u64,
    /// Syncs the node layer asked for in the background (completed or not).
    pub background_syncs: u64,
    /// Syncs the node layer ran inline (hard state, truncation, small batch).
    pub inline_syncs: u64,
    /// Background syncs that failed on purpose (the node restarted).
    pub sync_failures: u64,
    /// Times a node's disk refused writes (full) and its pipeline stalled.
    pub storage_stalls: u64,
    /// Voters whose synced log was damaged (restarted recovering).
    pub corruptions: u64,
    /// Leader hand-overs asked for (and accepted by the leader).
    pub transfers: u64,
    /// Hand-overs that took place (the leader sent TAKEOVER and stepped
    /// down).
    pub handed_off: u64,
    /// Hand-overs after which the nominee was the next leader.
    pub nominee_won: u64,
    /// Hand-overs given up (the target did not catch up in time).
    pub transfers_aborted: u64,
    /// Membership changes proposed by a leader.
    pub reconfigs: u64,
    /// Membership changes committed (acknowledged to the proposer).
    pub reconfigs_committed: u64,
    /// Times a node's membership in force changed (appends, TRUNCs,
    /// installs, on every node).
    pub membership_changes: u64,
    /// QUIESCE messages delivered (an idle group's leader went quiet).
    pub quiesces: u64,
    /// Times the hosts woke their quiesced groups after a lost node or link.
    pub wakes: u64,
}

/// A network message: the kernel's or the elector's.
#[derive(Clone, Debug)]
enum Packet<M> {
    Core(Envelope),
    Elect { from: NodeId, to: NodeId, msg: M },
}

impl<M> Packet<M> {
    fn ends(&self) -> (NodeId, NodeId) {
        match self {
            Packet::Core(e) => (e.from, e.to),
            Packet::Elect { from, to, .. } => (*from, *to),
        }
    }
}

#[derive(Clone, Debug)]
enum Ev<M> {
    Deliver(Packet<M>),
    Timer {
        node: usize,
        gen: u64,
    },
    /// The leader's driver hands the kernel the next snapshot chunks.
    SnapPump {
        node: usize,
        gen: u64,
    },
    /// A follower's install runs: report progress, finish when due.
    InstallTick {
        node: usize,
        gen: u64,
    },
    /// A background sync the node layer asked for completes.
    Sync {
        node: usize,
        gen: u64,
        id: SyncId,
        point: u64,
    },
    /// A full disk has room again.
    DiskFree {
        node: usize,
    },
    Client,
    Fault,
    /// Ask the leader to hand over to a random voter.
    Transfer,
    /// Ask the leader for a random membership change.
    Reconfig,
    Restart {
        node: usize,
    },
    Heal,
    /// The hosts noticed a lost connection or node: every live node wakes
    /// its quiesced group (see `Config::quiesce_after`).
    Wake,
}

/// The simulated state machine's snapshot: how many canonical entries it
/// covers, and the membership in force at it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SmSnapshot {
    zxid: Zxid,
    len: usize,
    membership: Membership,
}

/// The node layer as the simulator runs it: simulated disk, checking state
/// machine, and the client's tokens.
type SimCore<E> = Node<SimStorage, E, SimMachine, Token>;

/// What the simulated client waits for.
#[derive(Clone, Copy, Debug)]
enum Token {
    /// A write (its zxid is known from `propose`).
    Write,
    /// A membership change.
    Config,
    /// A linearizable read that must observe every entry acknowledged
    /// before it started (`floor`).
    Read { floor: Zxid },
}

struct SimNode<E: Elector> {
    id: NodeId,
    /// The node layer, when up.
    node: Option<SimCore<E>>,
    /// The disk image surviving crashes (when the node is down).
    disk: MemStorage,
    snapshot: Option<SmSnapshot>,
    /// Invalidates sync events of an earlier incarnation.
    sync_gen: u64,
    timer_gen: u64,
    timer_at: Option<Time>,
    incoming: BTreeMap<u64, Bytes>,
    incoming_zxid: Zxid,
    /// Leader's driver: snapshots being streamed, paced by
    /// [`SimConfig::snap_chunk_interval`].
    outgoing: Vec<SimOutgoing>,
    /// Follower's driver: the complete snapshot being installed and when
    /// the install finishes.
    installing: Option<(SmSnapshot, Time)>,
    /// Invalidates pump and install events of an earlier incarnation.
    snap_gen: u64,
    pump_scheduled: bool,
    durable_hs: HardState,
    /// The driver's view: the node's data directory was lost, so it starts
    /// recovering; stays set until the flag is on its durable disk.
    start_recovering: bool,
    /// Starts so far (read ids are unique per incarnation).
    incarnations: u64,
    /// The disk refuses writes (full) until the matching `DiskFree`.
    disk_full: bool,
    /// The background sync in flight is to fail (injected).
    fail_sync: bool,
    /// The node layer's counters already added to the run's.
    counted: crate::node::NodeStats,
    /// The last instant its timer fired, and how often at that instant.
    last_timer: (Time, u32),
    /// How fast this node's clock runs, in parts per million off true
    /// time (its local time is the true time scaled by it).
    clock_ppm: i64,
    /// In multi-group mode: the host's write-ahead log this node's disk
    /// writes to (shared with the host's other groups).
    log: Option<SharedLog>,
}

impl<E: Elector> SimNode<E> {
    fn replica(&self) -> Option<&Replica<SimStorage>> {
        self.node.as_ref().map(|n| n.replica())
    }
}

/// A scripted loss: of the kernel messages named `name` sent to `to`,
/// let `pass` through, then drop `count`.
#[derive(Clone, Debug)]
struct ScriptedDrop {
    name: &'static str,
    to: NodeId,
    pass: u32,
    count: u32,
}

/// A snapshot a leader's simulated driver is streaming.
#[derive(Clone, Debug)]
struct SimOutgoing {
    to: NodeId,
    snapshot: Zxid,
    bytes: Bytes,
    offset: usize,
}

/// The simulator. See the module documentation.
pub struct Sim<E: Elector> {
    cfg: SimConfig,
    rng: SimRng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: BTreeMap<u64, Ev<E::Message>>,
    nodes: Vec<SimNode<E>>,
    config: Config,
    blocked: BTreeSet<(NodeId, NodeId)>,
    make_elector: ElectorFactory<E>,
    make_planner: PlannerFactory,
    canonical: Canonical,
    acked: BTreeMap<Zxid, u64>,
    /// The newest membership any running node has seen committed, with the
    /// commit point it was seen at (see [`Sim::durability_memberships`]).
    newest_committed: Option<(Zxid, Membership)>,
    proposed: BTreeMap<Zxid, u64>,
    client_counter: u64,
    /// The client sends nothing (no writes, no reads) while set.
    client_paused: bool,
    faults: bool,
    faults_stopped_at: Option<Time>,
    /// The nominee of the last hand-over, until the next leader settles.
    nominee: Option<NodeId>,
    stats: SimStats,
    deferred: Option<Violation>,
    /// Snapshot transfers (leader, follower) started and not yet installed.
    snap_open: BTreeSet<(NodeId, NodeId)>,
    /// Scripted losses.
    drops: Vec<ScriptedDrop>,
    /// The established leader seen in each epoch (the newest
    /// [`MAX_EPOCHS_TRACKED`] epochs): at most one per epoch.
    epoch_leaders: BTreeMap<crate::Epoch, NodeId>,
    /// In multi-group mode: the packets sent, for the shared network to
    /// carry ([`multi`]); `None` when this simulator owns its network.
    outbox: Option<Vec<Packet<E::Message>>>,
}

/// How a group's nodes sit on shared hosts (multi-group mode): node `i`
/// writes to `logs[i]` and its clock runs `clock_ppm[i]` off true time.
struct HostSetup {
    logs: Vec<SharedLog>,
    clock_ppm: Vec<i64>,
}

/// Epochs whose leader [`Sim`] remembers for the one-leader-per-epoch check.
const MAX_EPOCHS_TRACKED: usize = 4096;

/// CRC-32 (IEEE) of `data`, bitwise: the simulator's snapshot chunks carry it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

impl Sim<TestElector> {
    /// A simulation with the test-only elector and planner.
    pub fn with_test_components(cfg: SimConfig) -> Sim<TestElector> {
        Sim::new(
            cfg,
            Box::new(|id, c: &Config| {
                let peers = c.voters.iter().chain(&c.observers).copied().collect();
                TestElector::new(id, c.voters.clone(), peers)
            }),
            Box::new(|| Box::new(TestPlanner)),
        )
    }
}

impl<E: Elector> Sim<E> {
    /// A simulation whose nodes use the electors and planners the factories make.
    pub fn new(
        cfg: SimConfig,
        make_elector: ElectorFactory<E>,
        make_planner: PlannerFactory,
    ) -> Sim<E> {
        Sim::build(cfg, make_elector, make_planner, None)
    }

    /// [`new`](Self::new), or with `hosts` one group of a multi-group run:
    /// its disks on the hosts' shared logs, its clocks the hosts', and its
    /// packets left in the outbox for the shared network.
    fn build(
        cfg: SimConfig,
        make_elector: ElectorFactory<E>,
        make_planner: PlannerFactory,
        hosts: Option<HostSetup>,
    ) -> Sim<E> {
        assert!(cfg.voters >= 1, "a group needs a voter");
        let voters: Vec<NodeId> = (1..=cfg.voters as u64).map(NodeId).collect();
        let observers: Vec<NodeId> = (0..cfg.observers as u64).map(|i| NodeId(100 + i)).collect();
        let mut config = cfg.replica.clone();
        config.voters = voters.clone();
        config.observers = observers.clone();
        let mut sim = Sim {
            rng: SimRng::new(cfg.seed),
            now: Time::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes: Vec::new(),
            config: config.clone(),
            blocked: BTreeSet::new(),
            make_elector,
            make_planner,
            canonical: Rc::new(RefCell::new(Vec::new())),
            acked: BTreeMap::new(),
            newest_committed: None,
            epoch_leaders: BTreeMap::new(),
            proposed: BTreeMap::new(),
            client_counter: 0,
            client_paused: false,
            faults: cfg.fault_interval.is_some(),
            faults_stopped_at: None,
            nominee: None,
            stats: SimStats::default(),
            deferred: None,
            snap_open: BTreeSet::new(),
            drops: Vec::new(),
            outbox: None,
            cfg,
        };
        for id in voters.into_iter().chain(observers) {
            sim.nodes.push(SimNode {
                id,
                node: None,
                disk: MemStorage::new(),
                snapshot: None,
                sync_gen: 0,
                timer_gen: 0,
                timer_at: None,
                incoming: BTreeMap::new(),
                incoming_zxid: Zxid::ZERO,
                outgoing: Vec::new(),
                installing: None,
                snap_gen: 0,
                pump_scheduled: false,
                durable_hs: HardState::default(),
                start_recovering: false,
                incarnations: 0,
                disk_full: false,
                fail_sync: false,
                counted: Default::default(),
                clock_ppm: 0,
                last_timer: (Time::ZERO, 0),
                log: None,
            });
        }
        match hosts {
            Some(h) => {
                for (i, n) in sim.nodes.iter_mut().enumerate() {
                    n.log = h.logs.get(i).cloned();
                    n.clock_ppm = h.clock_ppm.get(i).copied().unwrap_or(0);
                }
                sim.outbox = Some(Vec::new());
            }
            None => {
                let max_ppm = sim.cfg.max_clock_drift_ppm.min(500_000) as i64;
                for n in &mut sim.nodes {
                    if max_ppm > 0 {
                        n.clock_ppm = sim.rng.range(0, 2 * max_ppm as u64) as i64 - max_ppm;
                    }
                }
            }
        }
        for i in 0..sim.nodes.len() {
            sim.start_node(i);
        }
        let pi = sim.cfg.propose_interval;
        sim.schedule(pi, Ev::Client);
        if let Some(fi) = sim.cfg.fault_interval {
            let d = Duration::from_nanos(sim.rng.range(1, fi.as_nanos() as u64 * 2));
            sim.schedule(d, Ev::Fault);
        }
        if let Some(ti) = sim.cfg.transfer_interval {
            let d = Duration::from_nanos(sim.rng.range(1, ti.as_nanos() as u64 * 2));
            sim.schedule(d, Ev::Transfer);
        }
        if let Some(ri) = sim.cfg.reconfig_interval {
            let d = Duration::from_nanos(sim.rng.range(1, ri.as_nanos() as u64 * 2));
            sim.schedule(d, Ev::Reconfig);
        }
        sim
    }

    /// The counters so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// The simulated time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The established leader, if exactly one node claims it.
    pub fn leader(&self) -> Option<NodeId> {
        let mut ls = self
            .nodes
            .iter()
            .filter_map(|n| n.replica().filter(|r| r.is_leader()))
            .map(|r| (r.established_epoch(), r.id()))
            .collect::<Vec<_>>();
        ls.sort();
        ls.last().map(|(_, id)| *id)
    }

    /// The replica of `id`, when up.
    pub fn replica(&self, id: NodeId) -> Option<&Replica<SimStorage>> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .and_then(|n| n.replica())
    }

    /// Every node id (voters first).
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// A one-line-per-node description of the cluster's state (for failure reports).
    pub fn describe(&self) -> String
    where
        E: fmt::Debug,
    {
        let mut out = String::new();
        for n in &self.nodes {
            match &n.node {
                Some(node) => out.push_str(&format!(
                    "{:?}\n  elector: {:?}\n",
                    node.replica(),
                    node.elector()
                )),
                None => out.push_str(&format!("node {} down\n", n.id)),
            }
        }
        out
    }

    /// Number of canonical (agreed, applied somewhere) entries.
    pub fn canonical_len(&self) -> usize {
        self.canonical.borrow().len()
    }

    fn idx(&self, id: NodeId) -> usize {
        match self.nodes.iter().position(|n| n.id == id) {
            Some(i) => i,
            None => panic!("no node {id:?} in the simulation"),
        }
    }

    /// Node `i`'s clock now: true time scaled by its drift.
    fn local_now(&self, i: usize) -> Time {
        let ppm = i128::from(self.nodes[i].clock_ppm);
        let t = i128::from(self.now.as_nanos());
        let local = t + t * ppm / 1_000_000;
        Time::from_nanos(u64::try_from(local.max(0)).unwrap_or(u64::MAX))
    }

    /// The true time at which node `i`'s clock reads `local`.
    fn global_of(&self, i: usize, local: Time) -> Time {
        let ppm = i128::from(self.nodes[i].clock_ppm);
        let l = i128::from(local.as_nanos());
        // Rounded up, so that the node's clock has reached `local` then.
        let rate = 1_000_000 + ppm;
        let t = (l * 1_000_000 + rate - 1) / rate;
        Time::from_nanos(u64::try_from(t.max(0)).unwrap_or(u64::MAX))
    }

    fn schedule(&mut self, after: Duration, ev: Ev<E::Message>) {
        self.seq += 1;
        let at = self.now + after;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.cfg.seed,
            at: self.now,
            step: self.stats.steps,
            what,
        }
    }

    /// Starts a linearizable read on `id` (whatever its role), checked like
    /// the client's: it must observe every entry acknowledged before now.
    /// Returns whether the node accepted it.
    pub fn read_on(&mut self, id: NodeId) -> bool {
        let i = self.idx(id);
        let accepted = self.start_read(i);
        if let Err(v) = self.drive(i) {
            self.deferred.get_or_insert(v);
        }
        accepted
    }

    /// Starts a read on node `i`; whether it was accepted.
    fn start_read(&mut self, i: usize) -> bool {
        let floor = self.acked.keys().next_back().copied().unwrap_or(Zxid::ZERO);
        let now = self.local_now(i);
        self.nodes[i]
            .node
            .as_mut()
            .is_some_and(|n| n.read(now, 0, Token::Read { floor }).is_ok())
    }

    /// The newest acknowledged (committed and applied by its leader) zxid.
    pub fn last_acked(&self) -> Option<Zxid> {
        self.acked.keys().next_back().copied()
    }

    /// Whether `id` is up.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes[self.idx(id)].node.is_some()
    }

    /// Sets the network's loss and duplication rates.
    pub fn set_network(&mut self, drop_prob: f64, dup_prob: f64) {
        self.cfg.drop_prob = drop_prob;
        self.cfg.dup_prob = dup_prob;
    }

    /// Sets how often nodes take a local snapshot (0: never again).
    pub fn set_snapshot_every(&mut self, every: u64) {
        self.cfg.snapshot_every = every;
        for n in self.nodes.iter_mut().filter_map(|n| n.node.as_mut()) {
            n.set_snapshot_every(every);
        }
    }

    /// Pauses or resumes the background client.
    pub fn set_client_batch(&mut self, batch: usize) {
        self.cfg.batch = batch;
    }

    /// Pauses (or resumes) the client: no writes and no reads while
    /// paused, so that a group can go idle.
    pub fn set_client_paused(&mut self, paused: bool) {
        self.client_paused = paused;
    }

    fn start_node(&mut self, i: usize) {
        let planner = (self.make_planner)();
        let elector = (self.make_elector)(self.nodes[i].id, &self.config);
        let local = self.local_now(i);
        let canonical = self.canonical.clone();
        let n = &mut self.nodes[i];
        let mut storage = match &n.log {
            Some(log) => log.open(n.disk.clone()),
            None => SimStorage::from_durable(n.disk.clone()),
        };
        storage.set_refuse_writes(n.disk_full);
        storage.set_state_in_log(self.cfg.state_in_log);
        n.durable_hs = storage.durable().hard_state();
        let snapshot = n.snapshot.clone();
        // The state machine restarts from the durable snapshot.
        let machine = SimMachine::new(
            n.id,
            canonical,
            snapshot.as_ref().map_or(0, |s| s.len),
            snapshot.as_ref().map_or(Zxid::ZERO, |s| s.zxid),
        );
        let recovered = Recovered {
            applied: machine.last,
            snapshot: snapshot.as_ref().map(|s| s.zxid),
            membership: snapshot.map(|s| s.membership),
        };
        let mut r = match Replica::new(
            n.id,
            self.config.clone(),
            storage,
            planner,
            recovered,
            local,
        ) {
            Ok(r) => r,
            Err(e) => panic!("sim: replica {} failed to start: {e}", n.id),
        };
        if n.start_recovering && !r.is_recovering() {
            r.mark_recovering();
        }
        if self.cfg.unsafe_skip_lease_hold_off {
            r.unsafe_skip_lease_hold_off();
        }
        n.incarnations += 1;
        let cfg = NodeConfig {
            snapshot_every: self.cfg.snapshot_every,
            // Unique per incarnation, as a real node's must be.
            read_ids_from: (n.incarnations << 32) | 1,
            ..NodeConfig::default()
        };
        match Node::new(r, elector, machine, cfg) {
            Ok(node) => n.node = Some(node),
            Err(e) => panic!("sim: node {} failed to start: {e}", n.id),
        }
        n.counted = Default::default();
        n.timer_gen += 1;
        n.timer_at = None;
        if let Err(v) = self.drive(i) {
            self.deferred.get_or_insert(v);
        }
    }

    // ----- the run loop ----------------------------------------------------

    /// Runs for `d` of simulated time, checking invariants after every step.
    pub fn run_for(&mut self, d: Duration) -> Result<(), Violation> {
        let end = self.now + d;
        self.run_until_time(end)
    }

    fn run_until_time(&mut self, end: Time) -> Result<(), Violation> {
        while let Some(Reverse((at, _))) = self.queue.peek() {
            if *at > end {
                break;
            }
            self.step()?;
        }
        self.now = self.now.max(end);
        Ok(())
    }

    /// Runs until `pred` holds (checked after every step) or `timeout` of
    /// simulated time passes. Returns whether `pred` held.
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Sim<E>) -> bool,
    ) -> Result<bool, Violation> {
        let end = self.now + timeout;
        while let Some(Reverse((at, _))) = self.queue.peek() {
            if pred(self) {
                return Ok(true);
            }
            if *at > end {
                break;
            }
            self.step()?;
        }
        Ok(pred(self))
    }

    /// Runs `steps` events, then stops faults and measures recovery; the
    /// run fails if the cluster does not commit again within the liveness
    /// bound.
    pub fn run_steps_then_recover(&mut self, steps: u64) -> Result<Duration, Violation> {
        for _ in 0..steps {
            if self.queue.is_empty() {
                break;
            }
            self.step()?;
        }
        self.stop_faults();
        let bound = self.cfg.liveness_bound;
        let ok = self.run_until(bound, |s| s.stats.recovery.is_some())?;
        match self.stats.recovery {
            Some(d) if ok => {
                if self.cfg.check_rejoin {
                    self.check_rejoined()?;
                }
                Ok(d)
            }
            _ => Err(self.violation(format!(
                "liveness: no command committed within {bound:?} after faults stopped"
            ))),
        }
    }

    /// How long after the first commit that follows the end of faults
    /// every live voter has to follow the leader
    /// ([`REJOIN_ELECTION_TIMEOUTS`] election timeouts).
    pub fn rejoin_bound(&self) -> Duration {
        self.cfg.replica.election_timeout * REJOIN_ELECTION_TIMEOUTS
    }

    /// The live voters that do not follow the established leader: its
    /// membership's voters that are up and cut off from nobody, and are not
    /// established followers in the leader's epoch. `None` while no leader
    /// is established.
    pub fn voters_not_following(&self) -> Option<Vec<NodeId>> {
        let l = self.leader()?;
        let r = self.replica(l)?;
        let epoch = r.established_epoch()?;
        let cut_off = |v: NodeId| self.blocked.iter().any(|(a, b)| *a == v || *b == v);
        let lagging = r
            .membership()
            .voters
            .iter()
            .copied()
            .filter(|v| *v != l && self.is_up(*v) && !cut_off(*v))
            .filter(|v| {
                self.replica(*v)
                    .is_none_or(|f| f.leader() != Some(l) || f.established_epoch() != Some(epoch))
            })
            .collect();
        Some(lagging)
    }

    /// The liveness check after recovery: runs until every live voter
    /// follows the leader ([`voters_not_following`](Self::voters_not_following)
    /// is empty), and fails if that does not happen within
    /// [`rejoin_bound`](Self::rejoin_bound). Call once a command committed
    /// after [`stop_faults`](Self::stop_faults).
    pub fn check_rejoined(&mut self) -> Result<(), Violation> {
        let bound = self.rejoin_bound();
        let all_follow = |s: &Sim<E>| s.voters_not_following().is_some_and(|v| v.is_empty());
        if self.run_until(bound, all_follow)? {
            return Ok(());
        }
        let leader = self.leader();
        let lagging = self.voters_not_following();
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match n.replica() {
                Some(r) => format!(
                    "{}: leader {:?} established {:?}",
                    n.id,
                    r.leader(),
                    r.established_epoch()
                ),
                None => format!("{}: down", n.id),
            })
            .collect();
        Err(self.violation(format!(
            "liveness: live voters {lagging:?} do not follow the leader {leader:?} {bound:?} after the first commit since faults stopped ({})",
            states.join("; ")
        )))
    }

    /// Processes one event and checks the invariants.
    pub fn step(&mut self) -> Result<(), Violation> {
        let Some(Reverse((at, seq))) = self.queue.pop() else {
            return Ok(());
        };
        let Some(ev) = self.events.remove(&seq) else {
            return Ok(());
        };
        self.now = self.now.max(at);
        self.stats.steps += 1;
        match ev {
            Ev::Deliver(p) => self.deliver(p)?,
            Ev::Timer { node, gen } => {
                if self.nodes[node].timer_gen == gen {
                    self.nodes[node].timer_at = None;
                    // A timer that fires again and again at one instant is a
                    // busy loop: some deadline that handling it does not move.
                    let n = &mut self.nodes[node];
                    if n.last_timer.0 == self.now {
                        n.last_timer.1 += 1;
                        if n.last_timer.1 > MAX_TIMER_FIRES_AT_ONE_INSTANT {
                            let id = n.id;
                            let what = format!(
                                "busy loop: node {id}'s timer fired {} times at {:?}: a deadline handle_timeout does not move ({:?})",
                                n.last_timer.1, self.now, n.node
                            );
                            return Err(self.violation(what));
                        }
                    } else {
                        n.last_timer = (self.now, 1);
                    }
                    let now = self.local_now(node);
                    if let Some(n) = self.nodes[node].node.as_mut() {
                        n.handle_timeout(now);
                        self.drive(node)?;
                    }
                }
            }
            Ev::Sync {
                node,
                gen,
                id,
                point,
            } => {
                if self.nodes[node].sync_gen == gen {
                    self.sync_done(node, id, point)?;
                }
            }
            Ev::DiskFree { node } => {
                let n = &mut self.nodes[node];
                n.disk_full = false;
                if let Some(core) = n.node.as_mut() {
                    core.storage_mut().set_refuse_writes(false);
                }
            }
            Ev::SnapPump { node, gen } => {
                if self.nodes[node].snap_gen == gen {
                    self.pump_snapshots(node)?;
                }
            }
            Ev::InstallTick { node, gen } => {
                if self.nodes[node].snap_gen == gen {
                    self.install_tick(node)?;
                }
            }
            Ev::Client => {
                self.client()?;
                let pi = self.cfg.propose_interval;
                self.schedule(pi, Ev::Client);
            }
            Ev::Fault => {
                if self.faults {
                    self.random_fault();
                    if let Some(fi) = self.cfg.fault_interval {
                        let d = Duration::from_nanos(self.rng.range(1, fi.as_nanos() as u64 * 2));
                        self.schedule(d, Ev::Fault);
                    }
                }
            }
            Ev::Reconfig => {
                if self.faults {
                    self.random_reconfig()?;
                    if let Some(ri) = self.cfg.reconfig_interval {
                        let d = Duration::from_nanos(self.rng.range(1, ri.as_nanos() as u64 * 2));
                        self.schedule(d, Ev::Reconfig);
                    }
                }
            }
            Ev::Transfer => {
                if self.faults {
                    self.random_transfer()?;
                    if let Some(ti) = self.cfg.transfer_interval {
                        let d = Duration::from_nanos(self.rng.range(1, ti.as_nanos() as u64 * 2));
                        self.schedule(d, Ev::Transfer);
                    }
                }
            }
            Ev::Restart { node } => {
                if self.faults || self.faults_stopped_at.is_some() {
                    let id = self.nodes[node].id;
                    self.restart(id);
                }
            }
            Ev::Heal => self.heal(),
            Ev::Wake => {
                self.stats.wakes += 1;
                for i in 0..self.nodes.len() {
                    let now = self.local_now(i);
                    let me = self.nodes[i].id;
                    // The host's view: a leader down or cut off from this
                    // node is a lost node (nothing heard from it at all).
                    let lost = self.nodes[i]
                        .node
                        .as_ref()
                        .and_then(|n| n.replica().leader())
                        .filter(|&l| {
                            l != me
                                && (self.blocked.contains(&(l, me))
                                    || self.nodes.iter().any(|x| x.id == l && x.node.is_none()))
                        });
                    // And its word on every peer's reachability, which
                    // the elector may use to stop waiting for votes.
                    let words: Vec<(NodeId, bool)> = self
                        .nodes
                        .iter()
                        .filter(|x| x.id != me)
                        .map(|x| {
                            (
                                x.id,
                                x.node.is_some() && !self.blocked.contains(&(x.id, me)),
                            )
                        })
                        .collect();
                    if let Some(n) = self.nodes[i].node.as_mut() {
                        for (peer, reachable) in words {
                            n.set_peer_reachable(now, peer, reachable);
                        }
                        match lost {
                            Some(l) => n.leader_node_lost(now, l),
                            None => n.wake(now),
                        }
                        self.drive(i)?;
                    }
                }
            }
        }
        self.after_step()
    }

    /// The checks closing every step: a violation found along the way,
    /// one leader per epoch, and the other safety invariants.
    fn after_step(&mut self) -> Result<(), Violation> {
        if let Some(v) = self.deferred.take() {
            return Err(v);
        }
        self.check_epoch_leaders()?;
        self.note_committed_membership();
        self.check()
    }

    /// Records the membership in force at the highest commit point of any
    /// running node, if that point is newer than the one recorded. A
    /// committed change is never undone, so the newest one seen stays the
    /// one that can act even when every node that knew it is down.
    fn note_committed_membership(&mut self) {
        let newest = self
            .nodes
            .iter()
            .filter_map(|n| n.replica())
            .max_by_key(|r| r.commit_zxid())
            .map(|r| (r.commit_zxid(), r.membership_at(r.commit_zxid())));
        if let Some((z, m)) = newest {
            if self
                .newest_committed
                .as_ref()
                .is_none_or(|(seen, _)| z > *seen)
            {
                self.newest_committed = Some((z, m));
            }
        }
    }

    /// The memberships whose quorums must all hold every acknowledged
    /// entry: the newest seen committed ([`Self::note_committed_membership`])
    /// and each running leader's own (which may hold an uncommitted
    /// change). Unlike [`Self::acting_memberships`] (which the fault budget
    /// uses), a running node that restarted with an old log does not bring
    /// back a membership that a later committed change replaced: its
    /// quorums cannot act (a leader-elect's discovery proceeds only with a
    /// quorum of the newest membership it adopts). Found by seed 2052: the
    /// only node up had restarted knowing three voters {1, 2, 3} while
    /// {1, 2, 100} was committed, and an entry held by 1 and 100 was
    /// reported as not durable.
    fn durability_memberships(&self) -> Vec<Membership> {
        match &self.newest_committed {
            Some((_, m)) => self.with_leaders_memberships(Some(m.clone())),
            None => self.acting_memberships(),
        }
    }

    /// At most one leader per epoch, whatever the membership: every
    /// established leader is recorded with its epoch, and a second node
    /// established in the same epoch is a violation.
    fn check_epoch_leaders(&mut self) -> Result<(), Violation> {
        let leading: Vec<(crate::Epoch, NodeId)> = self
            .nodes
            .iter()
            .filter_map(|n| {
                let r = n.replica()?;
                let e = r.established_epoch().filter(|_| r.is_leader())?;
                Some((e, n.id))
            })
            .collect();
        for (e, id) in leading {
            match self.epoch_leaders.get(&e) {
                Some(&other) if other != id => {
                    return Err(
                        self.violation(format!("two leaders in epoch {e:?}: {other} and {id}"))
                    );
                }
                Some(_) => {}
                None => {
                    self.epoch_leaders.insert(e, id);
                    while self.epoch_leaders.len() > MAX_EPOCHS_TRACKED {
                        self.epoch_leaders.pop_first();
                    }
                }
            }
        }
        Ok(())
    }

    fn send_packet(&mut self, p: Packet<E::Message>) {
        let (from, to) = p.ends();
        if let Packet::Core(env) = &p {
            // A promise leaves only once it is durable: the sender's disk
            // holds the epoch it acknowledges (ACKEPOCH: accepted epoch;
            // ACKNEWLEADER: current epoch), or a crash could let it promise
            // again, differently.
            let promised = match env.msg {
                Message::AckEpoch { epoch, .. } => Some((epoch, false)),
                Message::AckNewLeader { epoch, .. } => Some((epoch, true)),
                _ => None,
            };
            if let Some((epoch, current)) = promised {
                let i = self.idx(from);
                let durable = self.nodes[i]
                    .node
                    .as_ref()
                    .map(|n| n.storage().durable().hard_state());
                if let Some(hs) = durable {
                    let held = if current {
                        hs.current_epoch
                    } else {
                        hs.accepted_epoch
                    };
                    if held < epoch {
                        let what = format!(
                            "{from} sent {} for {epoch:?} while its disk holds only {hs:?}: a promise left before it was durable",
                            env.msg.name()
                        );
                        let v = self.violation(what);
                        self.deferred.get_or_insert(v);
                    }
                }
            }
            let name = env.msg.name();
            if let Some(d) = self
                .drops
                .iter_mut()
                .find(|d| d.name == name && d.to == to && d.pass + d.count > 0)
            {
                if d.pass > 0 {
                    d.pass -= 1;
                } else {
                    d.count -= 1;
                    self.stats.dropped += 1;
                    self.stats.dropped_on_purpose += 1;
                    tracing::info!(%from, %to, name, "sim: scripted drop");
                    return;
                }
            }
        }
        if let Some(out) = self.outbox.as_mut() {
            // The shared network decides its fate.
            out.push(p);
            return;
        }
        if self.blocked.contains(&(from, to)) || self.rng.chance(self.cfg.drop_prob) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.chance(self.cfg.dup_prob) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let lo = self.cfg.min_delay.as_nanos() as u64;
            let hi = self.cfg.max_delay.as_nanos() as u64;
            let d = Duration::from_nanos(self.rng.range(lo, hi.max(lo)));
            self.schedule(d, Ev::Deliver(p.clone()));
        }
    }

    fn deliver(&mut self, p: Packet<E::Message>) -> Result<(), Violation> {
        let (from, to) = p.ends();
        if self.blocked.contains(&(from, to)) {
            self.stats.dropped += 1;
            return Ok(());
        }
        let i = self.idx(to);
        if self.nodes[i].node.is_none() {
            self.stats.dropped += 1;
            return Ok(());
        }
        self.stats.delivered += 1;
        let now = self.local_now(i);
        match p {
            Packet::Core(env) => {
                if matches!(env.msg, Message::Trunc { .. }) {
                    self.stats.truncs += 1;
                }
                if matches!(env.msg, Message::FetchHistory { .. }) {
                    self.stats.fetches += 1;
                }
                if matches!(env.msg, Message::Quiesce { .. }) {
                    self.stats.quiesces += 1;
                }
                if let Some(n) = self.nodes[i].node.as_mut() {
                    n.handle_message(now, env);
                }
            }
            Packet::Elect { from, msg, .. } => {
                if let Some(n) = self.nodes[i].node.as_mut() {
                    n.handle_election_message(now, from, msg);
                }
            }
        }
        self.drive(i)
    }

    /// Proposes `count` commands directly on `id` (whatever its role);
    /// returns how many it accepted. Acknowledged only if they commit.
    pub fn propose_on(&mut self, id: NodeId, count: usize) -> usize {
        let i = self.idx(id);
        let now = self.local_now(i);
        let mut accepted = 0;
        for _ in 0..count {
            self.client_counter += 1;
            let data = self.client_counter.to_le_bytes().to_vec();
            let h = hash(&data);
            let Some(n) = self.nodes[i].node.as_mut() else {
                break;
            };
            if let Ok(z) = n.propose(now, Bytes::from(data), Token::Write) {
                self.proposed.insert(z, h);
                accepted += 1;
            }
        }
        if let Err(v) = self.drive(i) {
            self.deferred.get_or_insert(v);
        }
        accepted
    }

    fn client(&mut self) -> Result<(), Violation> {
        if self.client_paused {
            return Ok(());
        }
        // With quiescence on, the client pauses every other 2 s while the
        // faults run, so that groups go quiet and faults hit quiet groups.
        if self.cfg.replica.quiesce_after.is_some()
            && self.faults
            && (self.now.as_nanos() / 2_000_000_000) % 2 == 1
        {
            return Ok(());
        }
        let Some(l) = self.leader() else {
            return Ok(());
        };
        let i = self.idx(l);
        for _ in 0..self.cfg.batch {
            self.client_counter += 1;
            let mut data = self.client_counter.to_le_bytes().to_vec();
            let extra = self.rng.range(0, 24) as usize;
            data.extend((0..extra).map(|k| (k as u8).wrapping_mul(31)));
            let h = hash(&data);
            let now = self.local_now(i);
            let Some(n) = self.nodes[i].node.as_mut() else {
                break;
            };
            match n
                .propose(now, Bytes::from(data), Token::Write)
                .map_err(|r| r.error)
            {
                Ok(z) => {
                    self.proposed.insert(z, h);
                }
                Err(crate::node::ProposeRejected::Kernel(
                    crate::ProposeError::EpochExhausted { epoch, .. },
                )) => {
                    // The leader spent its epoch's counter and stepped down
                    // (Config::max_epoch_counter): only then may it refuse.
                    if self.nodes[i].replica().is_some_and(|r| r.is_leader()) {
                        return Err(self.violation(format!(
                            "leader {l:?} refused a proposal as exhausted in {epoch:?} but still leads"
                        )));
                    }
                    self.stats.epoch_rollovers += 1;
                    break;
                }
                Err(crate::node::ProposeRejected::Kernel(crate::ProposeError::Transferring {
                    to,
                    ..
                })) => {
                    // Handing over: only a leader with a hand-over in
                    // progress may refuse so.
                    if self.nodes[i]
                        .node
                        .as_ref()
                        .and_then(|n| n.replica().transferring_to())
                        != Some(to)
                    {
                        return Err(self.violation(format!(
                            "leader {l:?} refused a proposal as handing over to {to} without a hand-over in progress"
                        )));
                    }
                    break;
                }
                Err(e) => {
                    return Err(
                        self.violation(format!("established leader {l:?} refused a proposal: {e}"))
                    );
                }
            }
        }
        self.drive(i)?;
        // A linearizable read on a random node: it must observe every
        // entry acknowledged before it started.
        if self.rng.chance(0.3) {
            let j = self.rng.index(self.nodes.len());
            self.start_read(j);
            self.drive(j)?;
        }
        Ok(())
    }

    /// A read was served: the state it saw must include every entry
    /// acknowledged before it started.
    fn check_read(&mut self, i: usize, floor: Zxid) -> Result<(), Violation> {
        let applied = self.nodes[i]
            .node
            .as_ref()
            .map_or(Zxid::ZERO, |n| n.state_machine().last);
        if applied < floor {
            let id = self.nodes[i].id;
            return Err(self.violation(format!(
                "linearizability: read on node {id} served at {applied:?} below acknowledged {floor:?}"
            )));
        }
        self.stats.reads += 1;
        Ok(())
    }

    /// A background sync completes: the writes made before it started are
    /// durable (unless the sync is made to fail), and the node layer hears.
    fn sync_done(&mut self, i: usize, id: SyncId, point: u64) -> Result<(), Violation> {
        let now = self.local_now(i);
        let n = &mut self.nodes[i];
        let Some(node) = n.node.as_mut() else {
            return Ok(());
        };
        let result = if std::mem::take(&mut n.fail_sync) {
            self.stats.sync_failures += 1;
            Err(crate::StorageError::io(
                "simulated flush",
                std::io::Error::other("injected fsync failure"),
            ))
        } else {
            node.storage_mut().sync_upto(point).map_err(|e| {
                crate::StorageError::io("simulated flush", std::io::Error::other(e.to_string()))
            })
        };
        if let Err(e) = node.handle_sync_done(now, id, result) {
            return self.node_failed(i, e);
        }
        self.drive(i)
    }

    /// The node layer stopped with `e`. An injected sync failure is the
    /// one expected cause: the process restarts and recovers from its disk.
    /// Anything else is a violation.
    fn node_failed(&mut self, i: usize, e: NodeError) -> Result<(), Violation> {
        let id = self.nodes[i].id;
        match &e {
            NodeError::Storage { what, .. } if *what == "the background sync" => {
                tracing::info!(node = %id, error = %e, "sim: node stopped on a failed sync; restarting");
                self.crash(id);
                let d =
                    Duration::from_nanos(self.rng.range(1, self.cfg.max_down.as_nanos() as u64));
                self.schedule(d, Ev::Restart { node: i });
                Ok(())
            }
            _ => Err(self.violation(format!("node {id} stopped: {e}"))),
        }
    }

    /// Drives node `i` until it has nothing more to say, like the reference
    /// node's loop: the node layer processes, its frames go on the network,
    /// a background sync is scheduled, events are handled, the timer is
    /// re-armed.
    fn drive(&mut self, i: usize) -> Result<(), Violation> {
        for _ in 0..64 {
            let now = self.local_now(i);
            let n = &mut self.nodes[i];
            let Some(node) = n.node.as_mut() else {
                return Ok(());
            };
            let entered_before = node.storage().meta(MetaKey::ElectionRound);
            if let Err(e) = node.process(now) {
                return self.node_failed(i, e);
            }
            let from = n.id;
            let mut frames = Vec::new();
            while let Some(t) = node.poll_transmit() {
                frames.push(t);
            }
            let sync = node.poll_sync().map(|id| (id, node.storage().sync_point()));
            let mut events = Vec::new();
            while let Some(ev) = node.poll_event() {
                events.push(ev);
            }
            // The durable hard state never goes back.
            let hs = node.storage().durable().hard_state();
            if hs.accepted_epoch < n.durable_hs.accepted_epoch
                || hs.current_epoch < n.durable_hs.current_epoch
            {
                let what = format!(
                    "epoch monotonicity: node {} durable {:?} after {:?}",
                    n.id, hs, n.durable_hs
                );
                return Err(self.violation(what));
            }
            n.durable_hs = hs;
            // A vote leaves only once its round is durable, or a restart
            // could vote again in the same round. (A round entered during
            // this turn may release the votes of the one before it, whose
            // sync just completed: the older of the two is the bound.)
            if frames.iter().any(|t| matches!(t, Transmit::Election(..))) {
                let entered = node
                    .storage()
                    .meta(MetaKey::ElectionRound)
                    .min(entered_before);
                let durable = node.storage().durable().meta(MetaKey::ElectionRound);
                if durable < entered {
                    let what = format!(
                        "node {} sent an election message in round {entered} while its disk holds round {durable}",
                        n.id
                    );
                    return Err(self.violation(what));
                }
            }
            if n.start_recovering && node.storage().durable().recovering() {
                n.start_recovering = false;
            }
            if let Some(what) = node.state_machine().violation.clone() {
                return Err(self.violation(what));
            }
            let counts = node.stats();
            self.stats.compactions += counts.compactions - n.counted.compactions;
            self.stats.inline_syncs += counts.inline_syncs - n.counted.inline_syncs;
            self.stats.storage_stalls += counts.storage_stalls - n.counted.storage_stalls;
            n.counted = counts;
            let idle = frames.is_empty() && sync.is_none() && events.is_empty();
            if let Some((id, point)) = sync {
                self.stats.background_syncs += 1;
                let gen = n.sync_gen;
                if self.cfg.disk_faults && self.rng.chance(self.cfg.sync_fail_prob) {
                    self.nodes[i].fail_sync = true;
                }
                let d = Duration::from_nanos(
                    self.rng.range(0, self.cfg.max_sync_delay.as_nanos() as u64),
                );
                self.schedule(
                    d,
                    Ev::Sync {
                        node: i,
                        gen,
                        id,
                        point,
                    },
                );
            }
            for t in frames {
                match t {
                    Transmit::Core(env) => self.send_packet(Packet::Core(env)),
                    Transmit::Election(to, msg) => {
                        self.send_packet(Packet::Elect { from, to, msg })
                    }
                }
            }
            for ev in events {
                self.on_node_event(i, ev)?;
            }
            if idle {
                break;
            }
        }
        // Re-arm the timer.
        let n = &mut self.nodes[i];
        let Some(node) = n.node.as_ref() else {
            return Ok(());
        };
        if let Some(t) = node.poll_timeout() {
            if n.timer_at != Some(t) {
                n.timer_gen += 1;
                n.timer_at = Some(t);
                let gen = n.timer_gen;
                let mut after = self.global_of(i, t).saturating_since(self.now);
                if after.is_zero() && self.local_now(i) < t {
                    // Rounding: never re-arm for a time the clock has not reached.
                    after = Duration::from_nanos(1);
                }
                self.schedule(after, Ev::Timer { node: i, gen });
            }
        }
        Ok(())
    }

    /// Acts on one of node `i`'s events, as the reference node does.
    fn on_node_event(&mut self, i: usize, ev: NodeEvent<Token>) -> Result<(), Violation> {
        let now = self.now;
        match ev {
            NodeEvent::Written {
                zxid,
                token: Token::Config,
                ..
            } => {
                if let Some(h) = self.proposed.remove(&zxid) {
                    self.acked.insert(zxid, h);
                    self.stats.reconfigs_committed += 1;
                }
            }
            NodeEvent::Written { zxid, .. } => {
                // Client acknowledgement: the proposer applied its command.
                if let Some(h) = self.proposed.remove(&zxid) {
                    self.acked.insert(zxid, h);
                    self.stats.acked += 1;
                    if let (Some(stop), None) = (self.faults_stopped_at, self.stats.recovery) {
                        self.stats.recovery = Some(now.saturating_since(stop));
                    }
                }
            }
            NodeEvent::Superseded { .. } | NodeEvent::OutcomeUnknown { .. } => {}
            NodeEvent::ReadReady {
                token: Token::Read { floor },
            } => self.check_read(i, floor)?,
            NodeEvent::ReadReady { .. } | NodeEvent::ReadFailed { .. } => {}
            NodeEvent::SendSnapshot {
                to,
                snapshot,
                offset,
            } => self.send_snapshot(i, to, snapshot, offset),
            NodeEvent::SnapshotChunk { chunk, .. } => self.receive_chunk(i, chunk)?,
            NodeEvent::SnapshotDue => {
                let n = &mut self.nodes[i];
                if let Some(node) = n.node.as_mut() {
                    // At the state machine's position now, which may be past
                    // where it was when the event was queued.
                    let (zxid, len) = (node.state_machine().last, node.state_machine().len);
                    let membership = node.membership_at(zxid);
                    n.snapshot = Some(SmSnapshot {
                        zxid,
                        len,
                        membership,
                    });
                    node.snapshot_taken(zxid);
                }
            }
            NodeEvent::LostLeader => {
                self.stats.lost_leader += 1;
                self.nodes[i].outgoing.clear();
            }
            NodeEvent::MembershipChanged { .. } => self.stats.membership_changes += 1,
            NodeEvent::HandedOff { to } => {
                self.stats.handed_off += 1;
                self.nominee = Some(to);
            }
            NodeEvent::TransferAborted { .. } => self.stats.transfers_aborted += 1,
            NodeEvent::Settled { state, leader, .. } => {
                if state == PeerState::Leading {
                    self.stats.leaders += 1;
                    if self.nominee.take() == Some(leader) {
                        self.stats.nominee_won += 1;
                    }
                }
            }
            NodeEvent::RecoveryComplete { .. } => self.stats.readmissions += 1,
            NodeEvent::ElectionDecided(_) => {}
            NodeEvent::StorageReadFailed(e) => {
                let id = self.nodes[i].id;
                return Err(self.violation(format!("node {id}: storage read failed: {e}")));
            }
        }
        Ok(())
    }

    /// The memberships that can act: the one in force at the highest
    /// commit point of any running node, and each running leader's own
    /// (which may hold an uncommitted change).
    pub(super) fn acting_memberships(&self) -> Vec<Membership> {
        let committed = self
            .nodes
            .iter()
            .filter_map(|n| n.replica())
            .max_by_key(|r| r.commit_zxid())
            .map(|r| r.membership_at(r.commit_zxid()));
        self.with_leaders_memberships(committed)
    }

    /// `committed` and each running leader's own membership, without
    /// duplicates; the configured one when there is none.
    fn with_leaders_memberships(&self, committed: Option<Membership>) -> Vec<Membership> {
        let mut out: Vec<Membership> = Vec::new();
        let leaders = self
            .nodes
            .iter()
            .filter_map(|n| n.replica())
            .filter(|r| r.is_leader())
            .map(|r| r.membership().clone());
        for m in committed.into_iter().chain(leaders) {
            if !out.contains(&m) {
                out.push(m);
            }
        }
        if out.is_empty() {
            out.push(Membership {
                voters: self.config.voters.clone(),
                observers: self.config.observers.clone(),
                ..Membership::default()
            });
        }
        out
    }

    /// Checks the safety invariants that are not checked as events happen.
    fn check(&self) -> Result<(), Violation> {
        // Leader completeness.
        for n in &self.nodes {
            let Some(r) = n.replica() else { continue };
            let Some(epoch) = r.established_epoch().filter(|_| r.is_leader()) else {
                continue;
            };
            if let Some((&z, _)) = self.acked.range(..Zxid::new(epoch, 0)).next_back() {
                if !r.holds(z) {
                    return Err(self.violation(format!(
                        "leader completeness: leader {} of epoch {epoch:?} lacks committed {z:?}",
                        n.id
                    )));
                }
            }
        }
        // Durability: the newest acknowledged entry is durably held by a
        // quorum. After a wipe no quorum may hold it any more; what must
        // still hold is that every quorum that can act, i.e. one made of
        // voters that are not recovering, contains a holder.
        // Under membership changes, the memberships that can act are the
        // committed one and a leader's pending one; checked against each.
        if let Some((&z, &h)) = self.acked.iter().next_back() {
            let lost_disks = self.stats.wipes + self.stats.corruptions;
            for m in self.durability_memberships() {
                let quorum = m.voters.len() / 2 + 1;
                let mut holders = 0;
                let mut counted_non_holders = 0;
                for n in self.nodes.iter().filter(|n| m.is_voter(n.id)) {
                    let disk = match n.replica() {
                        Some(r) => r.storage().durable(),
                        None => &n.disk,
                    };
                    let holds = n.snapshot.as_ref().is_some_and(|s| s.zxid >= z)
                        || disk.get(z).is_some_and(|e| hash(&e.data) == h);
                    if holds {
                        holders += 1;
                    } else if !self.is_recovering(n.id) {
                        counted_non_holders += 1;
                    }
                }
                // Every quorum that can act holds it. Without reconfigurations
                // or lost disks: a quorum holds it.
                let ok = if lost_disks == 0 && self.stats.reconfigs == 0 {
                    holders >= quorum
                } else {
                    counted_non_holders < quorum
                };
                if !ok {
                    return Err(self.violation(format!(
                        "durability: acknowledged {z:?} durably held by {holders} of voters {:?} only",
                        m.voters
                    )));
                }
            }
        }
        Ok(())
    }
}
