//! Many groups on shared hosts: the deterministic simulator of a node that
//! hosts G Paxos groups over one write-ahead log and one connection per
//! pair of nodes.
//!
//! Each group is a whole single-group simulator ([`Sim`]) running the real
//! node stack, with its own clientele, timers and invariant checks; what
//! the groups share is what a production host shares:
//!
//! - **the disk**: host `h`'s nodes of every group write to one
//!   [`SharedLog`]. Writes are numbered in one order across groups, a
//!   sync by any group makes every earlier write of every group durable,
//!   and a host crash keeps a prefix of that order: a random cut between
//!   what was synced and what was written, the same for all groups;
//! - **the network**: every packet of every group goes through one model
//!   that decides its fate by the pair of hosts alone (partitions, one-way
//!   cuts, loss, duplication, delay and thus reordering, and connection
//!   resets that lose everything in flight between two hosts). Packets
//!   carry their group: the kernel's envelopes name it, election messages
//!   get it attached here, and delivery routes by it;
//! - **the fate of the process**: a host crash takes all its groups down
//!   at once and a restart brings them all back from what survived;
//! - **the clock**: a host's clock drift is the same for its groups.
//!
//! The events of every group and of the shared parts run in one order of
//! simulated time (ties: shared events first, then by group number), so
//! the same seed replays the same run. After every step the groups it
//! touched are checked with the single-group invariants (agreement,
//! durability, epoch monotonicity, one leader per epoch, leader
//! completeness, linearizable reads); a group no step touched has not
//! changed. A violation names the seed and the group.
//!
//! Each group may also run its own schedule of leader hand-overs and
//! single-node membership changes (`transfer_interval`,
//! `reconfig_interval`), as in the single-group runs, while the hosts fail
//! under it: a host crashes only while every membership of every group
//! that can act keeps a quorum without it.
//!
//! With quiescence on, idle groups go quiet; every group is told the
//! hosts' cuts, and a lost host or link wakes its quiesced groups an
//! election timeout later (the single-group runs' model of the host
//! heartbeats).
//!
//! With wipes on, a host crash sometimes loses the host's whole disk: every
//! group's node on it restarts empty and recovering (as `--rejoin` does),
//! and counts as lost until its group readmits it.
//!
//! Not modelled here yet (refused by [`MultiSim::new`]): disk faults (full
//! disks, damaged logs, failed syncs).
//!
//! ```
//! use paxos_core::sim::{MultiConfig, MultiSim};
//! let mut sim = MultiSim::with_test_components(MultiConfig::chaos(3, 4)).unwrap();
//! let worst = sim.run_steps_then_recover(3_000).unwrap();
//! assert!(sim.acked_per_group().iter().all(|a| *a > 0));
//! assert!(worst <= sim.config().base.liveness_bound);
//! ```

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use super::{
    ElectorFactory, HostSetup, Packet, PlannerFactory, Sim, SimConfig, SimRng, SimStats,
    TestElector, TestPlanner, Violation,
};
use crate::election::Elector;
use crate::{Config, GroupId, NodeId, Time};

use super::storage::{SharedLog, SimStorage};

/// An [`ElectorFactory`] every group's simulator calls.
type SharedElectorFactory<E> = Rc<dyn Fn(NodeId, &Config) -> E>;
/// A [`PlannerFactory`] every group's simulator calls.
type SharedPlannerFactory = Rc<dyn Fn() -> Box<dyn crate::SyncPlanner + Send>>;

/// Parameters of a multi-group run.
#[derive(Clone, Debug)]
pub struct MultiConfig {
    /// The seed: the same seed replays the same run.
    pub seed: u64,
    /// Groups every host runs (group `g` is `GroupId(g)`).
    pub groups: usize,
    /// Every group's parameters. Its voters and observers are the hosts
    /// (each group has one node on every host); its network and fault
    /// parameters (`drop_prob`, `dup_prob`, the delays, `fault_interval`,
    /// `max_down`, `max_clock_drift_ppm`) are the shared network's and the
    /// hosts'; its client parameters (`propose_interval`, `batch`) are each
    /// group's own client. Its `seed` is not used (each group's schedule is
    /// drawn from [`seed`](Self::seed) and the group number).
    pub base: SimConfig,
}

impl MultiConfig {
    /// A random-fault configuration derived from `seed`, over `groups`
    /// groups: 3 hosts (sometimes 5, sometimes with an observer host),
    /// loss, duplication, wide delays, slow syncs, host crashes,
    /// isolations, one-way cuts and connection resets every 30 to 150 ms,
    /// a client per group (ticking less often the more groups there are).
    pub fn chaos(seed: u64, groups: usize) -> MultiConfig {
        let mut rng = SimRng::new(seed ^ 0x6D75_6C74_6953_494D);
        let mut base = SimConfig {
            seed,
            voters: if rng.chance(0.2) { 5 } else { 3 },
            observers: usize::from(rng.chance(0.15)),
            drop_prob: 0.02 * rng.range(0, 3) as f64,
            dup_prob: 0.02 * rng.range(0, 3) as f64,
            max_delay: Duration::from_millis(rng.range(1, 10)),
            fault_interval: Some(Duration::from_millis(rng.range(30, 150))),
            max_down: Duration::from_millis(rng.range(50, 400)),
            // The host's client load stays about the same whatever the
            // number of groups: each group's client ticks less often.
            propose_interval: Duration::from_millis(rng.range(5, 20) * (groups as u64 / 8).max(1)),
            ..SimConfig::default()
        };
        base.replica.retention_entries = rng.range(5, 40);
        base.snapshot_every = rng.range(10, 60);
        // Group commit on a shared log: syncs take a while, so crashes
        // find unsynced tails to cut.
        base.max_sync_delay = Duration::from_micros(rng.range(200, 8000));
        if rng.chance(0.4) {
            base.replica.lease_reads = true;
            base.max_clock_drift_ppm = rng.range(0, 50_000);
        }
        MultiConfig { seed, groups, base }
    }

    /// [`chaos`](Self::chaos) (the same draws, so the same hosts and
    /// faults), and in some seeds each group's own leader hand-overs,
    /// membership changes, or both (with an observer host to promote, add
    /// and remove), and quiescence (idle groups go quiet; a lost host or
    /// link wakes them an election timeout later, as host heartbeats do).
    /// `simulate --groups` runs these; `chaos` alone keeps the schedules
    /// its seeds were found with.
    pub fn chaos_with_changes(seed: u64, groups: usize) -> MultiConfig {
        let mut cfg = MultiConfig::chaos(seed, groups);
        let mut rng = SimRng::new(seed ^ 0x6368_616E_6765_7321);
        if rng.chance(0.3) {
            cfg.base.transfer_interval = Some(Duration::from_millis(rng.range(100, 600)));
        }
        if rng.chance(0.3) {
            cfg.base.reconfig_interval = Some(Duration::from_millis(rng.range(100, 600)));
            cfg.base.observers = cfg.base.observers.max(1);
        }
        if rng.chance(0.3) {
            cfg.base.replica.quiesce_after = Some(Duration::from_millis(rng.range(100, 500)));
        }
        cfg
    }
}

/// A [`MultiConfig`] asks for something the multi-group simulator does not
/// model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultiConfigError {
    /// No group, or no voter host.
    #[error("a multi-group run needs at least one group and one voter (groups {groups}, voters {voters})")]
    Empty {
        /// Groups asked for.
        groups: usize,
        /// Voters asked for.
        voters: usize,
    },
    /// An option of the single-group simulator that is not modelled with
    /// shared hosts yet.
    #[error("the multi-group simulator does not model `{option}` yet")]
    Unsupported {
        /// The [`SimConfig`] field that is set.
        option: &'static str,
    },
}

/// Counters of a multi-group run (each group's own are in
/// [`MultiSim::group_stats`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MultiStats {
    /// Steps (events of every group and of the shared parts).
    pub steps: u64,
    /// Host crashes (every group of the host at once).
    pub host_crashes: u64,
    /// Host restarts.
    pub host_restarts: u64,
    /// Writes (of all groups) lost by host crashes: the unsynced tails.
    pub lost_writes: u64,
    /// Host crashes whose cut fell strictly inside the unsynced tail (some
    /// unsynced writes survived, later ones were lost).
    pub partial_tails: u64,
    /// Packets the shared network delivered.
    pub delivered: u64,
    /// Packets it lost (loss, partitions, resets).
    pub dropped: u64,
    /// Packets it delivered twice.
    pub duplicated: u64,
    /// Connection resets (everything in flight between two hosts lost).
    pub link_resets: u64,
    /// Hosts cut off from every other host.
    pub isolations: u64,
    /// Hosts that lost their whole disk (see [`MultiSim::wipe_host`]).
    pub host_wipes: u64,
    /// After faults stopped: the longest any group took to commit again.
    pub recovery: Option<Duration>,
}

/// A packet on the shared network: its group, and the connection
/// generation it was sent on (a reset loses the older ones).
#[derive(Clone, Debug)]
struct Wire<M> {
    group: usize,
    link: u64,
    packet: Packet<M>,
}

#[derive(Clone, Debug)]
enum HostEv<M> {
    Deliver(Wire<M>),
    Fault,
    Restart { host: usize },
    Heal,
}

/// Which queue holds the next event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    Shared,
    Group(usize),
}

/// The multi-group simulator. See the module documentation.
pub struct MultiSim<E: Elector> {
    cfg: MultiConfig,
    rng: SimRng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: BTreeMap<u64, HostEv<E::Message>>,
    groups: Vec<Sim<E>>,
    hosts: Vec<NodeId>,
    logs: Vec<SharedLog>,
    down: Vec<bool>,
    blocked: BTreeSet<(usize, usize)>,
    /// Connection generation per (from, to) host pair.
    links: BTreeMap<(usize, usize), u64>,
    faults: bool,
    stopped: bool,
    stats: MultiStats,
}

impl MultiSim<TestElector> {
    /// A multi-group simulation with the test-only elector and planner.
    pub fn with_test_components(
        cfg: MultiConfig,
    ) -> Result<MultiSim<TestElector>, MultiConfigError> {
        MultiSim::new(
            cfg,
            Box::new(|id, c: &Config| {
                let peers = c.voters.iter().chain(&c.observers).copied().collect();
                TestElector::new(id, c.voters.clone(), peers)
            }),
            Box::new(|| Box::new(TestPlanner)),
        )
    }
}

impl<E: Elector + 'static> MultiSim<E> {
    /// A multi-group simulation whose nodes use the electors and planners
    /// the factories make (the elector factory sees each group's
    /// configuration, group id included).
    pub fn new(
        cfg: MultiConfig,
        make_elector: ElectorFactory<E>,
        make_planner: PlannerFactory,
    ) -> Result<MultiSim<E>, MultiConfigError> {
        let b = &cfg.base;
        if cfg.groups == 0 || b.voters == 0 {
            return Err(MultiConfigError::Empty {
                groups: cfg.groups,
                voters: b.voters,
            });
        }
        for (set, option) in [
            (b.disk_faults, "disk_faults"),
            (b.unsafe_skip_lease_hold_off, "unsafe_skip_lease_hold_off"),
        ] {
            if set {
                return Err(MultiConfigError::Unsupported { option });
            }
        }
        let make_elector: SharedElectorFactory<E> = Rc::from(make_elector);
        let make_planner: SharedPlannerFactory = Rc::from(make_planner);
        let mut rng = SimRng::new(cfg.seed);
        let n_hosts = b.voters + b.observers;
        let logs: Vec<SharedLog> = (0..n_hosts).map(|_| SharedLog::new()).collect();
        let max_ppm = b.max_clock_drift_ppm.min(500_000) as i64;
        let clock_ppm: Vec<i64> = (0..n_hosts)
            .map(|_| {
                if max_ppm > 0 {
                    rng.range(0, 2 * max_ppm as u64) as i64 - max_ppm
                } else {
                    0
                }
            })
            .collect();
        let mut groups = Vec::with_capacity(cfg.groups);
        for g in 0..cfg.groups {
            let mut gc = cfg.base.clone();
            // Each group's own schedule (client, sync delays, elections).
            gc.seed = cfg
                .seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(g as u64 + 1);
            gc.replica.group = GroupId(g as u64);
            // Faults and clock drift are the hosts' (drawn here).
            gc.fault_interval = None;
            gc.max_clock_drift_ppm = 0;
            let e = make_elector.clone();
            let p = make_planner.clone();
            let mut sim = Sim::build(
                gc,
                Box::new(move |id, c: &Config| e(id, c)),
                Box::new(move || p()),
                Some(HostSetup {
                    logs: logs.clone(),
                    clock_ppm: clock_ppm.clone(),
                }),
            );
            // Violations report the run's seed, not the group's.
            sim.cfg.seed = cfg.seed;
            // The group's own hand-overs and membership changes run while
            // the hosts' faults do, and with quiescence its client pauses
            // every other 2 s meanwhile so that faults find quiet groups
            // (its `Ev::Fault` is never scheduled: crashes and cuts are
            // the hosts').
            sim.faults = b.transfer_interval.is_some()
                || b.reconfig_interval.is_some()
                || b.replica.quiesce_after.is_some();
            groups.push(sim);
        }
        let hosts = groups[0].node_ids();
        let mut sim = MultiSim {
            rng,
            now: Time::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            down: vec![false; hosts.len()],
            hosts,
            logs,
            blocked: BTreeSet::new(),
            links: BTreeMap::new(),
            faults: cfg.base.fault_interval.is_some(),
            stopped: false,
            stats: MultiStats::default(),
            groups,
            cfg,
        };
        for g in 0..sim.groups.len() {
            if let Err(v) = sim.flush(g) {
                sim.groups[g].deferred.get_or_insert(v);
            }
        }
        if let Some(fi) = sim.cfg.base.fault_interval {
            let d = Duration::from_nanos(sim.rng.range(1, fi.as_nanos() as u64 * 2));
            sim.schedule(d, HostEv::Fault);
        }
        Ok(sim)
    }

    /// The run's parameters.
    pub fn config(&self) -> &MultiConfig {
        &self.cfg
    }

    /// The shared counters.
    pub fn stats(&self) -> &MultiStats {
        &self.stats
    }

    /// Group `g`'s own counters (acknowledged commands, reads, ...).
    ///
    /// # Panics
    /// If there is no group `g`.
    pub fn group_stats(&self, g: usize) -> &SimStats {
        self.groups[g].stats()
    }

    /// Commands acknowledged in each group, by group number.
    pub fn acked_per_group(&self) -> Vec<u64> {
        self.groups.iter().map(|s| s.stats().acked).collect()
    }

    /// Group `g`'s simulator, to inspect (its leader, replicas, log).
    ///
    /// # Panics
    /// If there is no group `g`.
    pub fn group(&self, g: usize) -> &Sim<E> {
        &self.groups[g]
    }

    /// The hosts' node ids (each group has one node per host).
    pub fn hosts(&self) -> &[NodeId] {
        &self.hosts
    }

    /// Host `h`'s shared log.
    ///
    /// # Panics
    /// If there is no host `h`.
    pub fn log(&self, h: usize) -> &SharedLog {
        &self.logs[h]
    }

    /// Whether host `h` is up.
    pub fn is_up(&self, h: usize) -> bool {
        !self.down[h]
    }

    /// The simulated time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Group `g`'s state, one line per node (for failure reports).
    pub fn describe(&self, g: usize) -> String
    where
        E: fmt::Debug,
    {
        self.groups
            .get(g)
            .map_or_else(|| format!("no group {g}"), |s| s.describe())
    }

    fn schedule(&mut self, after: Duration, ev: HostEv<E::Message>) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + after, self.seq)));
        self.events.insert(self.seq, ev);
    }

    /// A group's violation, renamed for the run: its seed, step and group.
    fn in_group(&self, g: usize, v: Violation) -> Violation {
        Violation {
            seed: self.cfg.seed,
            at: v.at,
            step: self.stats.steps,
            what: format!("group {g}: {}", v.what),
        }
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.cfg.seed,
            at: self.now,
            step: self.stats.steps,
            what,
        }
    }

    fn host_of(&self, id: NodeId) -> Option<usize> {
        self.hosts.iter().position(|h| *h == id)
    }

    /// The queue holding the earliest event: the shared one wins ties, then
    /// the lowest group number.
    fn next_source(&self) -> Option<(Time, Source)> {
        let shared = self
            .queue
            .peek()
            .map(|Reverse((at, _))| (*at, Source::Shared));
        self.groups
            .iter()
            .enumerate()
            .filter_map(|(g, s)| {
                s.queue
                    .peek()
                    .map(|Reverse((at, _))| (*at, Source::Group(g)))
            })
            .chain(shared)
            .min()
    }

    /// Brings group `g` to the shared clock, and its up nodes' durable
    /// images up to what their hosts' syncs (of any group) made durable.
    fn enter(&mut self, g: usize) {
        let sim = &mut self.groups[g];
        sim.now = sim.now.max(self.now);
        let mut failed = None;
        for n in sim.nodes.iter_mut() {
            if let Some(node) = n.node.as_mut() {
                if let Err(e) = node.storage_mut().settle() {
                    failed
                        .get_or_insert(format!("node {}: durable image did not apply: {e}", n.id));
                }
            }
        }
        if let Some(what) = failed {
            let v = sim.violation(what);
            sim.deferred.get_or_insert(v);
        }
    }

    /// Puts group `g`'s sent packets on the shared network.
    fn flush(&mut self, g: usize) -> Result<(), Violation> {
        let Some(out) = self.groups[g].outbox.as_mut().map(std::mem::take) else {
            return Ok(());
        };
        for packet in out {
            if let Packet::Core(env) = &packet {
                if env.group != GroupId(g as u64) {
                    return Err(self.violation(format!(
                        "group {g} sent a {} stamped for {:?}",
                        env.msg.name(),
                        env.group
                    )));
                }
            }
            let (from, to) = packet.ends();
            let (Some(a), Some(b)) = (self.host_of(from), self.host_of(to)) else {
                return Err(self.violation(format!(
                    "group {g} sent a packet between unknown nodes {from} and {to}"
                )));
            };
            self.send(Wire {
                group: g,
                link: self.links.get(&(a, b)).copied().unwrap_or(0),
                packet,
            });
        }
        Ok(())
    }

    /// The shared network's decision for one packet: lost, or delivered
    /// once or twice after a random delay.
    fn send(&mut self, wire: Wire<E::Message>) {
        let (from, to) = wire.packet.ends();
        let (a, b) = (self.host_of(from), self.host_of(to));
        let blocked = matches!((a, b), (Some(a), Some(b)) if self.blocked.contains(&(a, b)));
        if blocked || self.rng.chance(self.cfg.base.drop_prob) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.chance(self.cfg.base.dup_prob) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        let lo = self.cfg.base.min_delay.as_nanos() as u64;
        let hi = self.cfg.base.max_delay.as_nanos() as u64;
        for _ in 0..copies {
            let d = Duration::from_nanos(self.rng.range(lo, hi.max(lo)));
            self.schedule(d, HostEv::Deliver(wire.clone()));
        }
    }

    /// Checks group `g` as a step of its own would close, naming it.
    fn close(&mut self, g: usize) -> Result<(), Violation> {
        let flushed = self.flush(g);
        let checked = self.groups[g].after_step();
        flushed?;
        checked.map_err(|v| self.in_group(g, v))
    }

    /// Processes one event (of any group or of the shared parts) and
    /// checks the invariants of the groups it touched.
    pub fn step(&mut self) -> Result<(), Violation> {
        let Some((at, source)) = self.next_source() else {
            return Ok(());
        };
        self.now = self.now.max(at);
        self.stats.steps += 1;
        match source {
            Source::Group(g) => {
                let _span = tracing::info_span!("group", g).entered();
                self.enter(g);
                // A deferred violation from before is reported by the step.
                let stepped = self.groups[g].step();
                let flushed = self.flush(g);
                stepped.map_err(|v| self.in_group(g, v))?;
                flushed
            }
            Source::Shared => {
                let Some(Reverse((_, seq))) = self.queue.pop() else {
                    return Ok(());
                };
                let Some(ev) = self.events.remove(&seq) else {
                    return Ok(());
                };
                match ev {
                    HostEv::Deliver(wire) => self.deliver(wire),
                    HostEv::Fault => {
                        if self.faults {
                            self.random_fault()?;
                            if let Some(fi) = self.cfg.base.fault_interval {
                                let d = Duration::from_nanos(
                                    self.rng.range(1, fi.as_nanos() as u64 * 2),
                                );
                                self.schedule(d, HostEv::Fault);
                            }
                        }
                        Ok(())
                    }
                    HostEv::Restart { host } => {
                        if self.faults || self.stopped {
                            self.restart_host(host)?;
                        }
                        Ok(())
                    }
                    HostEv::Heal => {
                        self.heal();
                        Ok(())
                    }
                }
            }
        }
    }

    fn deliver(&mut self, wire: Wire<E::Message>) -> Result<(), Violation> {
        let (from, to) = wire.packet.ends();
        let (Some(a), Some(b)) = (self.host_of(from), self.host_of(to)) else {
            self.stats.dropped += 1;
            return Ok(());
        };
        let link = self.links.get(&(a, b)).copied().unwrap_or(0);
        if self.blocked.contains(&(a, b)) || link != wire.link {
            self.stats.dropped += 1;
            return Ok(());
        }
        // Route by the group the packet carries.
        let g = match &wire.packet {
            Packet::Core(env) => usize::try_from(env.group.0).unwrap_or(usize::MAX),
            Packet::Elect { .. } => wire.group,
        };
        if g >= self.groups.len() {
            return Err(self.violation(format!("a packet for unknown group {g}")));
        }
        self.stats.delivered += 1;
        let _span = tracing::info_span!("group", g).entered();
        self.enter(g);
        let delivered = self.groups[g].deliver(wire.packet);
        if let Err(v) = delivered {
            let _ = self.flush(g);
            return Err(self.in_group(g, v));
        }
        self.close(g)
    }

    /// Crashes host `h`: its log keeps a random prefix of its writes (every
    /// synced one, and the unsynced ones up to a random cut, across all
    /// groups), and every group's node on it goes down. Then every group
    /// is checked (an acknowledged write must have survived somewhere).
    pub fn crash_host(&mut self, h: usize) -> Result<(), Violation> {
        if self.down[h] {
            return Ok(());
        }
        let id = self.hosts[h];
        for g in 0..self.groups.len() {
            self.enter(g);
        }
        let written = self.logs[h].written();
        let synced = self.logs[h].synced();
        let mut disks: Vec<&mut SimStorage> = self
            .groups
            .iter_mut()
            .filter_map(|s| s.nodes[h].node.as_mut().map(|n| n.storage_mut()))
            .collect();
        let cut = self.logs[h].crash(&mut self.rng, &mut disks);
        self.stats.host_crashes += 1;
        self.stats.lost_writes += written - cut;
        if cut > synced && cut < written {
            self.stats.partial_tails += 1;
        }
        tracing::info!(host = %id, synced, cut, written, "sim: host crash");
        self.down[h] = true;
        for (g, sim) in self.groups.iter_mut().enumerate() {
            let _span = tracing::info_span!("group", g).entered();
            sim.crash(id);
        }
        for g in 0..self.groups.len() {
            self.close(g)?;
        }
        Ok(())
    }

    /// Restarts host `h`: every group's node on it starts from what its
    /// disk kept.
    pub fn restart_host(&mut self, h: usize) -> Result<(), Violation> {
        if !self.down[h] {
            return Ok(());
        }
        self.down[h] = false;
        self.stats.host_restarts += 1;
        let id = self.hosts[h];
        tracing::info!(host = %id, "sim: host restart");
        for g in 0..self.groups.len() {
            let _span = tracing::info_span!("group", g).entered();
            self.enter(g);
            self.groups[g].restart(id);
            self.close(g)?;
        }
        Ok(())
    }

    /// Cuts host `h` off from every other host (both directions).
    pub fn isolate(&mut self, h: usize) {
        for o in 0..self.hosts.len() {
            if o != h {
                self.blocked.insert((h, o));
                self.blocked.insert((o, h));
            }
        }
        self.stats.isolations += 1;
        self.cuts_changed(true);
    }

    /// Tells every group the hosts' cuts (as node pairs: its elector's and
    /// its hosts' view of who is reachable) and, when a link was lost,
    /// lets it notice as a host does: with quiescence on, an election
    /// timeout later its quiesced groups wake (the single-group runs'
    /// model of the host heartbeats).
    fn cuts_changed(&mut self, lost: bool) {
        let pairs: BTreeSet<(NodeId, NodeId)> = self
            .blocked
            .iter()
            .map(|&(a, b)| (self.hosts[a], self.hosts[b]))
            .collect();
        for g in 0..self.groups.len() {
            self.enter(g);
            self.groups[g].blocked = pairs.clone();
            if lost {
                self.groups[g].contact_lost();
            }
        }
    }

    /// Resets the connection between hosts `a` and `b`: every packet in
    /// flight between them, of every group, is lost.
    pub fn reset_link(&mut self, a: usize, b: usize) {
        *self.links.entry((a, b)).or_insert(0) += 1;
        *self.links.entry((b, a)).or_insert(0) += 1;
        self.stats.link_resets += 1;
    }

    /// Removes every partition and cut.
    pub fn heal(&mut self) {
        if !self.blocked.is_empty() {
            self.blocked.clear();
            self.cuts_changed(false);
        }
    }

    /// Whether one more host may go down with every group keeping a quorum
    /// of its voters: each group decides as in the single-group runs (a
    /// host down is a node down in every group, and a node recovering
    /// from a wipe counts as lost; with membership changes, every
    /// membership that can act must keep its quorum).
    fn may_lose_one_more(&self) -> bool {
        self.groups.iter().all(|g| g.may_lose_one_more())
    }

    /// Wipes host `h`: it crashes and loses its whole disk (the shared log
    /// and every group's snapshot); its groups restart empty and marked
    /// recovering, as a node started with `--rejoin` on a new data
    /// directory does. Only a host that votes in every group's acting
    /// memberships and recovers in none is wiped.
    pub fn wipe_host(&mut self, h: usize) -> Result<(), Violation> {
        self.crash_host(h)?;
        let id = self.hosts[h];
        tracing::info!(host = %id, "sim: host wiped (disk lost); its groups restart recovering");
        self.stats.host_wipes += 1;
        for g in 0..self.groups.len() {
            let _span = tracing::info_span!("group", g).entered();
            self.enter(g);
            self.groups[g].wipe(id, true);
            self.close(g)?;
        }
        Ok(())
    }

    /// Whether host `h` may be wiped: a voter of every group (as the
    /// single-group runs wipe voters only) and recovering in none.
    fn wipeable(&self, h: usize) -> bool {
        let id = self.hosts[h];
        self.groups
            .iter()
            .all(|g| !g.is_recovering(id) && g.votes(id))
    }

    fn down_time(&mut self) -> Duration {
        Duration::from_nanos(self.rng.range(1, self.cfg.base.max_down.as_nanos() as u64))
    }

    fn random_fault(&mut self) -> Result<(), Violation> {
        let n = self.hosts.len();
        let h = self.rng.index(n);
        // Drawn only with wipes on, so other runs keep their schedules.
        let wipe = self.cfg.base.wipes && self.rng.chance(0.25);
        match self.rng.range(0, 9) {
            0..=2 => {
                if self.may_lose_one_more() {
                    if wipe && self.wipeable(h) {
                        self.wipe_host(h)?;
                    } else {
                        self.crash_host(h)?;
                    }
                    let d = self.down_time();
                    self.schedule(d, HostEv::Restart { host: h });
                }
            }
            3..=4 => {
                // The host of some group's leader: crash it or cut it off.
                let g = self.rng.index(self.groups.len());
                let target = self.groups[g]
                    .leader()
                    .and_then(|l| self.host_of(l))
                    .unwrap_or(h);
                if self.rng.chance(0.5) {
                    if self.may_lose_one_more() {
                        self.crash_host(target)?;
                        let d = self.down_time();
                        self.schedule(d, HostEv::Restart { host: target });
                    }
                    return Ok(());
                }
                self.isolate(target);
                let d = self.down_time();
                self.schedule(d, HostEv::Heal);
            }
            5 => {
                let o = self.rng.index(n);
                if o != h {
                    self.blocked.insert((h, o));
                    self.cuts_changed(true);
                }
            }
            6 => {
                let o = self.rng.index(n);
                if o != h {
                    self.reset_link(h, o);
                }
            }
            _ => self.heal(),
        }
        Ok(())
    }

    /// Stops random faults: heals the network, restarts every host, and
    /// starts measuring how long each group takes to commit again.
    pub fn stop_faults(&mut self) -> Result<(), Violation> {
        self.faults = false;
        self.stopped = true;
        self.cfg.base.drop_prob = 0.0;
        self.cfg.base.dup_prob = 0.0;
        self.heal();
        for h in 0..self.hosts.len() {
            self.restart_host(h)?;
        }
        for g in 0..self.groups.len() {
            self.enter(g);
            self.groups[g].stop_faults();
            self.close(g)?;
        }
        self.stats.recovery = None;
        Ok(())
    }

    /// Runs for `d` of simulated time, checking invariants after every step.
    pub fn run_for(&mut self, d: Duration) -> Result<(), Violation> {
        let end = self.now + d;
        while let Some((at, _)) = self.next_source() {
            if at > end {
                break;
            }
            self.step()?;
        }
        self.now = self.now.max(end);
        Ok(())
    }

    /// Runs `steps` events, then stops faults and measures recovery: the
    /// run fails if some group does not commit again within the liveness
    /// bound. Returns the worst group's recovery time.
    pub fn run_steps_then_recover(&mut self, steps: u64) -> Result<Duration, Violation> {
        for _ in 0..steps {
            if self.next_source().is_none() {
                break;
            }
            self.step()?;
        }
        self.stop_faults()?;
        let bound = self.cfg.base.liveness_bound;
        let end = self.now + bound;
        let recovered = |s: &Self| s.groups.iter().all(|g| g.stats().recovery.is_some());
        while !recovered(self) {
            match self.next_source() {
                Some((at, _)) if at <= end => self.step()?,
                _ => break,
            }
        }
        let late: Vec<usize> = (0..self.groups.len())
            .filter(|g| self.groups[*g].stats().recovery.is_none())
            .collect();
        if !late.is_empty() {
            return Err(self.violation(format!(
                "liveness: groups {late:?} committed nothing within {bound:?} after faults stopped"
            )));
        }
        let worst = self
            .groups
            .iter()
            .filter_map(|g| g.stats().recovery)
            .max()
            .unwrap_or_default();
        self.stats.recovery = Some(worst);
        Ok(worst)
    }
}
