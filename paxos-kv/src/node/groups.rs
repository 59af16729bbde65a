//! Many groups in one node: the host's shared IO (clock, peer frames
//! batched per peer) and [`Groups`], which routes every input to the group
//! it belongs to and runs only the groups that have something to do.
//!
//! Routing:
//! - a peer frame names its group: a consensus envelope carries it, an
//!   election frame of a group other than 0 is tagged with it, and a batch
//!   frame carries frames of any groups (one per peer per turn);
//! - a client's request goes to the group it names ([`Request::InGroup`]),
//!   or, unnamed, to the group that owns its key here (the base group it
//!   hashes to, or down the groups split off from it); a group's store
//!   answers "wrong group" to a key it does not own (on apply for a write,
//!   when answering for a read), so a client with an old view of the
//!   ranges can never put a key where a reader would not look for it;
//!
//! Groups made at run time (splits, see [`crate::shard`]): when a group's
//! store records a split whose new group this node does not host, the node
//! makes it (after the group's turn, [`Groups::after_turn`]): its
//! directory with an `ORIGIN` file, its share of the shared log, the next
//! slot of the table. Its id (allocated by group 0) and its slot differ;
//! peers and clients name groups by id. The leaders of the groups in a
//! split drive the move ([`Groups::drive_moves`]).
//! - timers: each group's next deadline sits in one heap; a turn wakes the
//!   groups whose deadline passed, not all of them.
//!
//! Election admission ("no storms"): a group without an established
//! leader runs its timers (vote re-sends, election and establishment
//! timeouts) only once admitted, and at most `max_elections` groups are
//! admitted at once (fewer while elections run out of time: see
//! `AdmissionWindow`); the others wait in order, still answering their
//! peers' messages, so their elections go on wherever a peer drives them.
//! They are admitted lowest group first: every node then works on the
//! same groups at the same time (an election needs a quorum of nodes to
//! run its timers: a vote waits for its settle timer to be decided). A
//! group in which this node does not vote (an observer, or a new machine
//! not yet added) never stands, so it is never held: its elector only asks
//! the voters who leads. (Held, a joining node's groups not yet added,
//! whose elections never finish, came back first each time their slots
//! expired, and the groups already added starved behind them.)
//! A slot frees when its group is established or has had two election
//! timeouts. After a node's failure, thousands of groups then elect a few
//! hundred at a time instead of all timing out, re-sending and giving up
//! together on nodes too busy to answer within a timeout.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use paxos_core::{Envelope, GroupId, NodeId, Time};
use paxos_election::Notification;
use paxos_net_quic::PeerId;

use super::client_port::ClientMsg;
use super::fault_file::Faults;
use super::metrics::GroupCounts;
use super::options::NodeOptions;
use super::storage;
use super::{
    heartbeats, Driver, Host, SyncDone, MAX_BATCH_BYTES, TAG_BATCH, TAG_CORE, TAG_ELECTION,
    TAG_ELECTION_IN, TAG_GROUP_GONE, TAG_HOST_HEARTBEAT,
};
use crate::client_proto::{AdminRequest, Request, Response};
use crate::kv::{Child, KvCommand, KvOp, KvStore};
use crate::shard::{position, KeyRange};
use paxos_wal::shared::SharedLog;
use std::rc::Rc;
use std::sync::Arc;

/// How often the leader balancer looks at the spread of leaders.
const BALANCE_EVERY: Duration = Duration::from_secs(2);
/// Hand-overs one node starts per look, at most: a node that leads far
/// more than its share gives the excess away over a few looks rather
/// than in one burst of elections.
const MAX_HANDOVERS_PER_LOOK: usize = 64;

/// How often a node of many groups counts its groups' roles, and logs
/// them if they changed.
const ROLES_LOG_EVERY: Duration = Duration::from_secs(1);

/// How often, at most, the admission looks for freed slots while groups
/// wait for one.
const ADMISSION_EVERY: Duration = Duration::from_millis(5);

/// A peer's batch starts with room for this many bytes (it grows as
/// needed, and is sent at the end of the pass).
const BATCH_START_BYTES: usize = 4096;

/// `peer`'s batch of this pass, begun if it has none yet.
fn batch_for(out: &mut BTreeMap<u64, BytesMut>, peer: u64) -> &mut BytesMut {
    out.entry(peer).or_insert_with(|| {
        let mut b = BytesMut::with_capacity(BATCH_START_BYTES);
        b.put_u8(TAG_BATCH);
        b
    })
}

/// Timers of a node of many groups run on a grid of this many steps per
/// heartbeat interval (see [`Host::timer_grid`]).
const TIMER_STEPS_PER_HEARTBEAT: u32 = 5;

/// The last multiple of `step` (nanoseconds, at least 1) at or before `t`.
/// Runs `f` on the group inside its tracing span (see `group_span`); the
/// span is moved out for the call rather than cloned (no reference count
/// traffic on the hot path).
fn in_span<R>(d: &mut Driver, f: impl FnOnce(&mut Driver) -> R) -> R {
    let span = std::mem::replace(&mut d.span, tracing::Span::none());
    let out = span.in_scope(|| f(d));
    d.span = span;
    out
}

fn grid_floor(t: Time, step: u64) -> Time {
    let step = step.max(1);
    Time::from_nanos(t.as_nanos() - t.as_nanos() % step)
}

/// The first multiple of `step` (nanoseconds, at least 1) at or after `t`.
fn grid_ceil(t: Time, step: u64) -> Time {
    let floor = grid_floor(t, step);
    if floor == t {
        t
    } else {
        Time::from_nanos(floor.as_nanos().saturating_add(step.max(1)))
    }
}

/// Frames in one batch frame, at most (a peer's batch of more is refused).
const MAX_FRAMES_PER_BATCH: usize = 64 * 1024;

impl Host {
    pub(super) fn now(&self) -> Time {
        self.clock.now(self.faults.clock_offset_ms())
    }

    /// The step of the timer grid of a node of many groups: a fifth of the
    /// heartbeat interval, between 1 and 20 ms. A group's timer runs at the
    /// first grid point at or after its deadline (never before it), so the
    /// groups due within one step run in one turn and their heartbeats and
    /// votes leave in one frame per peer. Without it, each group's timers
    /// ran at their own instants: with a thousand awake groups, a frame (a
    /// packet) per peer every turn, which a lossy link's congestion window
    /// could not carry.
    pub(super) fn timer_grid(&self) -> u64 {
        let step = (self.heartbeat / TIMER_STEPS_PER_HEARTBEAT)
            .clamp(Duration::from_millis(1), Duration::from_millis(20));
        u64::try_from(step.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The last grid point at or before `t`.
    fn grid_floor(&self, t: Time) -> Time {
        grid_floor(t, self.timer_grid())
    }

    /// The first grid point at or after `t`.
    fn grid_ceil(&self, t: Time) -> Time {
        grid_ceil(t, self.timer_grid())
    }

    pub(super) fn to_instant(&self, t: Time) -> Instant {
        self.clock.instant_of(t, self.faults.clock_offset_ms())
    }

    /// Sends `frame` to `to`: at once when the node hosts one group; else
    /// into the peer's batch, sent by [`Host::flush`] at the end of the
    /// turn (or once it is large).
    pub(super) fn send(&self, to: NodeId, frame: Bytes) {
        if self.groups == 1 {
            self.send_now(to, frame);
            return;
        }
        let full = {
            let mut out = self.out.borrow_mut();
            let batch = batch_for(&mut out, to.0);
            batch.put_u32_le(frame.len() as u32);
            batch.put_slice(&frame);
            batch.len() >= MAX_BATCH_BYTES
        };
        if full {
            self.flush_peer(to.0);
        }
    }

    /// Encodes `env` as a kernel frame straight into its peer's batch (many
    /// groups only): no frame of its own to copy in, as [`Host::send`]
    /// would.
    pub(super) fn send_envelope_batched(&self, env: &Envelope) {
        let full = {
            let mut out = self.out.borrow_mut();
            let batch = batch_for(&mut out, env.to.0);
            let at = batch.len();
            // The frame's length is written once it is known.
            batch.put_u32_le(0);
            batch.put_u8(TAG_CORE);
            if let Err(e) = self.codec.encode(env, batch) {
                batch.truncate(at);
                tracing::error!(error = %e, msg = env.msg.name(), "could not encode a message; dropped");
                return;
            }
            let len = (batch.len() - at - 4) as u32;
            batch[at..at + 4].copy_from_slice(&len.to_le_bytes());
            batch.len() >= MAX_BATCH_BYTES
        };
        if full {
            self.flush_peer(env.to.0);
        }
    }

    pub(super) fn send_now(&self, to: NodeId, frame: Bytes) {
        if let Err(e) = self.transport.borrow().send(PeerId(to.0), frame) {
            // The kernel retransmits what matters (heartbeats, pipeline
            // timeouts, sync retries); a full queue is a slow peer.
            tracing::debug!(%to, error = %e, "frame not queued");
        }
    }

    /// Takes `env` into its peer's coalesced heartbeats if it is a
    /// heartbeat or an acknowledgement (see [`super::heartbeats`]);
    /// returns whether it did.
    pub(super) fn coalesce_heartbeat(&self, env: &Envelope) -> bool {
        let full = {
            let mut all = self.heartbeats_out.borrow_mut();
            let batch = all.entry(env.to.0).or_default();
            if !batch.push(env.group.0, &env.msg) {
                return false;
            }
            batch.len() >= heartbeats::FLUSH_BYTES
        };
        if full {
            self.move_heartbeats(env.to.0);
        }
        true
    }

    /// A heartbeats frame from `peer` held entries this node could not
    /// rebuild (`ask`: ask the peer for those in full) or asked for some
    /// of ours in full (`forget`).
    pub(super) fn heartbeats_out_of_step(
        &self,
        peer: u64,
        ask: &[(heartbeats::Beat, u64)],
        forget: &[(heartbeats::Beat, u64)],
    ) {
        let mut all = self.heartbeats_out.borrow_mut();
        let batch = all.entry(peer).or_default();
        for &(beat, group) in ask {
            batch.ask_full(beat, group);
        }
        for &(beat, group) in forget {
            batch.forget(beat, group);
        }
    }

    /// Moves `peer`'s coalesced heartbeats into its batch.
    fn move_heartbeats(&self, peer: u64) {
        let frame = self
            .heartbeats_out
            .borrow_mut()
            .get_mut(&peer)
            .and_then(heartbeats::HeartbeatBatch::take);
        if let Some(frame) = frame {
            self.send(NodeId(peer), frame);
        }
    }

    fn flush_peer(&self, peer: u64) {
        let batch = self.out.borrow_mut().remove(&peer);
        if let Some(b) = batch {
            self.send_now(NodeId(peer), b.freeze());
        }
    }

    /// Sends the sync requests the groups made in this pass, in one
    /// message; an error when the sync thread is gone.
    pub(super) fn send_syncs(&self) -> Result<()> {
        let mut asked = self.syncs_asked.borrow_mut();
        if asked.is_empty() {
            return Ok(());
        }
        self.sync_requests
            .send(std::mem::take(&mut *asked))
            .map_err(|_| anyhow::anyhow!("WAL sync thread stopped"))
    }

    /// Sends every peer's batch.
    pub(super) fn flush(&self) {
        let peers: Vec<u64> = self.heartbeats_out.borrow().keys().copied().collect();
        for peer in peers {
            self.move_heartbeats(peer);
        }
        let out = std::mem::take(&mut *self.out.borrow_mut());
        for (peer, b) in out {
            self.send_now(NodeId(peer), b.freeze());
        }
    }
}

/// How many elections a node admits at once: additive increase,
/// multiplicative decrease, like a congestion window. It starts at the
/// configured bound (`--max-elections`); each established group adds one,
/// up to the bound; and over each period of two election timeouts in which
/// more admitted elections ran out of time (no established leader within
/// the period) than were established, it halves, down to
/// [`AdmissionWindow::FLOOR`]. On a path that carries fewer elections'
/// messages than the bound asks for (a lossy link whose congestion window
/// is a few kilobytes), every admitted election timed out and started
/// over; the window settles where elections finish. A storm on a sound
/// network, where most elections finish, keeps the whole bound.
#[derive(Debug)]
struct AdmissionWindow {
    limit: usize,
    max: usize,
    /// The current period: when it began, and the elections established
    /// and expired in it.
    period: Option<(Instant, usize, usize)>,
}

impl AdmissionWindow {
    /// The window never goes below this (or the bound, if lower).
    const FLOOR: usize = 16;

    fn new(max: usize) -> Self {
        AdmissionWindow {
            limit: max,
            max,
            period: None,
        }
    }

    fn limit(&self) -> usize {
        self.limit
    }

    /// Slots freed at `now`: `established` groups got a leader, `expired`
    /// ran out of time; `hold` is the period. Returns whether the window
    /// was cut.
    fn on_freed(
        &mut self,
        now: Instant,
        hold: Duration,
        established: usize,
        expired: usize,
    ) -> bool {
        self.limit = self.limit.saturating_add(established).min(self.max);
        let (start, est, exp) = self.period.get_or_insert((now, 0, 0));
        *est += established;
        *exp += expired;
        if now.saturating_duration_since(*start) < hold {
            return false;
        }
        let cut = *exp > *est;
        self.period = None;
        if cut {
            self.limit = (self.limit / 2).max(Self::FLOOR.min(self.max));
        }
        cut
    }
}

/// What a node of many groups needs to make a group at run time (a split's
/// new group): the options every group is started with, the shared log,
/// and the fault hooks.
pub(super) struct Factory {
    pub(super) opts: Rc<NodeOptions>,
    pub(super) log: Arc<SharedLog>,
    pub(super) faults: Arc<Faults>,
}

/// No slot: the group id is not hosted here.
const NO_SLOT: u32 = u32::MAX;

/// How often the leaders of groups in a split look whether their next
/// step of the move (a batch of keys, the end) can be proposed.
const MOVES_EVERY: Duration = Duration::from_millis(5);

/// How often a node tries again to make a group a split created that it
/// could not make.
const CHILD_RETRY_EVERY: Duration = Duration::from_secs(1);
/// A peer that sends input for a group merged away here is told so
/// ([`TAG_GROUP_GONE`]) at most this often.
const GONE_TELL_EVERY: Duration = Duration::from_secs(1);
/// (Peer, group) pairs remembered for [`GONE_TELL_EVERY`].
const MAX_GONE_TOLD: usize = 4096;

/// A batch of keys a new group takes over in one command, at most (in
/// bytes of keys and values, and in pairs): well under the smallest
/// command the kernel takes (half a WAL segment).
const MOVE_BATCH_BYTES: usize = 256 * 1024;
const MOVE_BATCH_PAIRS: usize = 4096;

/// The groups a node hosts and the bookkeeping that runs them.
pub(super) struct Groups {
    pub(super) groups: Vec<Driver>,
    /// Group id -> slot in `groups` ([`NO_SLOT`]: not hosted), up to the
    /// largest id hosted.
    slot_of: Vec<u32>,
    /// Makes groups at run time (`None` on a single-group node, which
    /// cannot split).
    factory: Option<Factory>,
    /// Per slot, how many splits of the group's store were seen (a new
    /// one makes its group here).
    children_seen: Vec<usize>,
    /// Slots whose group is in a split or a merge (giving or taking keys
    /// over).
    moving: BTreeSet<usize>,
    /// Per slot: the group was merged into another and removed here (its
    /// driver stays in the slot, inert, until the process ends; its
    /// directory is marked and its records are dropped at the next start).
    retired: Vec<bool>,
    /// Ids of the groups merged away on this node (never made again).
    gone: BTreeSet<u32>,
    /// When the moves are next looked at.
    next_moves: Instant,
    /// Slots of groups with a split whose new group this node should host
    /// but could not make (a disk error): tried again every
    /// [`CHILD_RETRY_EVERY`].
    child_retry: BTreeSet<usize>,
    /// When `child_retry` is next tried.
    next_child_retry: Instant,
    /// Groups given input since their last turn.
    dirty: Vec<usize>,
    is_dirty: Vec<bool>,
    /// (deadline, group): the groups' timers. An entry is live while it
    /// equals `armed[group]`; stale ones are skipped when popped.
    timers: BinaryHeap<Reverse<(Time, usize)>>,
    armed: Vec<Option<Time>>,
    /// Groups with snapshot work that needs the loop soon
    /// ([`Driver::busy`]), as of their last turn (only a turn changes it).
    busy: std::collections::BTreeSet<usize>,
    /// With quiescence: when each peer node was last heard from (any
    /// frame), and whether it counts as lost.
    peers: BTreeMap<u64, (Instant, bool)>,
    /// When the host's next heartbeat to its peers is due.
    next_host_heartbeat: Instant,
    /// When the leader balancer next looks (see [`Groups::balance`]).
    next_balance: Instant,
    /// Election admission (module documentation): the groups admitted,
    /// with when, at most `window.limit()` of them.
    admitted: BTreeMap<usize, Instant>,
    /// How many elections are admitted at once now (at most
    /// `Host::max_elections`): cut when elections expire, grown as they
    /// succeed.
    window: AdmissionWindow,
    /// Groups whose timers wait for a slot (admitted lowest first).
    waiting: BTreeSet<usize>,
    /// When the admission next looks for freed slots.
    next_admission: Instant,
    /// The roles last logged (led, following, looking) and when they are
    /// next counted (see [`Groups::log_roles`]).
    logged_roles: (usize, usize, usize),
    next_roles_log: Instant,
    /// Per peer node, the heartbeats and acknowledgements last taken from
    /// it, which its "next" entries refer to ([`super::heartbeats`]).
    heartbeats_in: BTreeMap<u64, heartbeats::Memory>,
    /// When each (peer, group merged away here) was last told so
    /// ([`TAG_GROUP_GONE`]): at most once a second each, and at most
    /// [`MAX_GONE_TOLD`] entries (the oldest forgotten first).
    gone_told: BTreeMap<(u64, u32), Instant>,
}

impl Groups {
    pub(super) fn new(groups: Vec<Driver>, factory: Option<Factory>, gone: Vec<u32>) -> Groups {
        let n = groups.len();
        let max_elections = groups.first().map_or(0, |d| d.host.max_elections);
        let mut slot_of = Vec::new();
        for (slot, d) in groups.iter().enumerate() {
            let gid = d.gid as usize;
            if slot_of.len() <= gid {
                slot_of.resize(gid + 1, NO_SLOT);
            }
            slot_of[gid] = slot as u32;
        }
        let mut g = Groups {
            groups,
            slot_of,
            factory,
            children_seen: vec![0; n],
            moving: BTreeSet::new(),
            retired: vec![false; n],
            gone: gone.into_iter().collect(),
            next_moves: Instant::now(),
            child_retry: BTreeSet::new(),
            next_child_retry: Instant::now(),
            dirty: (0..n).collect(),
            is_dirty: vec![true; n],
            timers: BinaryHeap::new(),
            armed: vec![None; n],
            busy: std::collections::BTreeSet::new(),
            peers: BTreeMap::new(),
            next_host_heartbeat: Instant::now(),
            next_balance: Instant::now() + BALANCE_EVERY,
            admitted: BTreeMap::new(),
            window: AdmissionWindow::new(max_elections),
            waiting: BTreeSet::new(),
            next_admission: Instant::now(),
            logged_roles: (0, 0, 0),
            next_roles_log: Instant::now() + ROLES_LOG_EVERY,
            heartbeats_in: BTreeMap::new(),
            gone_told: BTreeMap::new(),
        };
        for i in 0..n {
            g.rearm(i);
        }
        g
    }

    /// The slot of group `gid`, if this node hosts it.
    fn slot(&self, gid: u64) -> Option<usize> {
        let s = *self.slot_of.get(usize::try_from(gid).ok()?)?;
        (s != NO_SLOT).then_some(s as usize)
    }

    /// Runs `f` on group `gid` (if hosted) and gives it a turn.
    pub(super) fn with_gid(&mut self, gid: u64, f: impl FnOnce(&mut Driver)) {
        match self.slot(gid) {
            Some(g) => self.with(g, f),
            None => tracing::debug!(
                group = gid,
                "input for a group this node does not host; dropped"
            ),
        }
    }

    /// After group `g`'s turn: makes the groups its splits created that
    /// this node does not host yet, and tracks whether it is in a split.
    fn after_turn(&mut self, g: usize) {
        let kv = self.groups[g].node.state_machine();
        if let Some(into) = kv.retired_into() {
            // Merged away: gone once its keys were dropped here, or once
            // a group hosted here recorded taking them over (the last batch
            // committed there: a replica that never hears of the drop, its
            // peers gone, is not left behind for good).
            let gid = self.groups[g].gid;
            let absorbed = kv
                .outgoing()
                .is_none_or(|(_, r)| self.taken_here(into, gid, r));
            if absorbed {
                self.retire(g);
                return;
            }
        }
        let splits = kv.children().len();
        if kv.outgoing().is_some() || kv.incoming().is_some() {
            self.moving.insert(g);
        } else if self.moving.remove(&g) {
            // The move's key list, kept while taking keys over.
            self.groups[g].move_keys = None;
        }
        if splits != self.children_seen[g] {
            self.children_seen[g] = splits;
            if !self.make_children(g) {
                self.child_retry.insert(g);
            }
        }
    }

    /// Removes group `g` from this node: it was merged into another group
    /// and has given its keys away (its `FinishMove` applied here). Its
    /// directory is marked [`storage::RETIRED_FILE`] (durably: a restart
    /// never opens it again, and drops its records from the shared log),
    /// its id is no longer routed, and its driver stays in its slot with
    /// no timer and no input. A replica of it on a node that lags may stay
    /// behind for good once the others are gone; it serves nothing.
    fn retire(&mut self, g: usize) {
        if self.retired[g] {
            return;
        }
        let (gid, into) = {
            let d = &self.groups[g];
            (d.gid, d.node.state_machine().retired_into())
        };
        if let Err(e) = storage::mark_retired(&self.groups[g].dir) {
            // Kept running rather than half removed: the next turn tries again.
            tracing::error!(group = gid, error = %format!("{e:#}"), "could not mark the merged group's directory; it stays until that works");
            return;
        }
        tracing::info!(group = gid, into = ?into, "group merged into another: removed from this node");
        self.retired[g] = true;
        self.gone.insert(gid);
        if let Some(slot) = self.slot_of.get_mut(gid as usize) {
            *slot = NO_SLOT;
        }
        self.armed[g] = None;
        self.moving.remove(&g);
        self.busy.remove(&g);
        self.waiting.remove(&g);
        self.admitted.remove(&g);
        self.groups[g].move_keys = None;
    }

    /// Makes every group that group `g` split off and this node does not
    /// host: empty, taking its range over from `g` (see [`crate::shard`]),
    /// with `g`'s members. Every replica of `g` applies the split at the
    /// same log position, so each makes the same group; one that catches
    /// `g` up from a snapshot past the split makes it then. Returns false
    /// when a group could not be made (see [`Groups::retry_children`]).
    fn make_children(&mut self, g: usize) -> bool {
        let parent = self.groups[g].gid;
        let children: Vec<Child> = self.groups[g].node.state_machine().children().to_vec();
        let mut made = true;
        // Bounded by the group's splits.
        for c in children {
            let child = c.id;
            if self.slot(u64::from(child)).is_some() || self.gone.contains(&child) {
                continue;
            }
            // The members the split recorded; a split from a snapshot of
            // format 4 recorded none: the group's own, then.
            let (voters, observers) = if c.voters.is_empty() {
                let config = self.groups[g].node.replica().config();
                (
                    config.voters.iter().map(|v| v.0).collect(),
                    config.observers.iter().map(|o| o.0).collect(),
                )
            } else {
                (c.voters, c.observers)
            };
            let me = self.host().id.0;
            if !voters.contains(&me) && !observers.contains(&me) {
                continue;
            }
            let origin = storage::Origin {
                from: parent,
                range: c.range,
                voters,
                observers,
            };
            if let Err(e) = self.make_group(child, origin) {
                tracing::error!(group = child, from = parent, error = %format!("{e:#}"), "could not make the group a split created; trying again in a second");
                made = false;
            }
        }
        made
    }

    /// Tries again to make the groups splits created that this node could
    /// not make (a disk error when their directory or origin was written),
    /// once a [`CHILD_RETRY_EVERY`]. The other members meanwhile run the
    /// new group without this node (it is one member short).
    fn retry_children(&mut self, now: Instant) {
        if self.child_retry.is_empty() || now < self.next_child_retry {
            return;
        }
        self.next_child_retry = now + CHILD_RETRY_EVERY;
        // Bounded by the groups waiting for a retry.
        for g in std::mem::take(&mut self.child_retry) {
            if !self.retired[g] && !self.make_children(g) {
                self.child_retry.insert(g);
            }
        }
    }

    /// Makes group `gid` from `origin`, in the next slot.
    fn make_group(&mut self, gid: u32, origin: storage::Origin) -> Result<()> {
        let Some(f) = &self.factory else {
            anyhow::bail!("a node of one group cannot host groups made by splits");
        };
        if gid as usize >= super::MAX_GROUP_ID as usize {
            anyhow::bail!(
                "group id {gid} is past the largest allowed ({})",
                super::MAX_GROUP_ID - 1
            );
        }
        if self.groups.len() >= super::MAX_GROUPS as usize {
            anyhow::bail!(
                "this node hosts {} groups already, the most it may",
                self.groups.len()
            );
        }
        let store = storage::create_child(&f.opts, &f.log, &f.faults, gid, &origin)?;
        let index = self.groups.len();
        let host = self.groups[0].host.clone();
        let span = super::group_span(&f.opts, gid);
        tracing::info!(group = gid, from = origin.from, range = %origin.range, voters = ?origin.voters, observers = ?origin.observers, "group made by a split: taking its keys over");
        let mut d = span.in_scope(|| {
            super::open_group(&f.opts, index, gid, store, Some(origin), host, span.clone())
        })?;
        let t = d.host.now();
        for (&p, &(_, lost)) in &self.peers {
            if lost {
                d.node.set_peer_reachable(t, NodeId(p), false);
            }
        }
        self.groups.push(d);
        if self.slot_of.len() <= gid as usize {
            self.slot_of.resize(gid as usize + 1, NO_SLOT);
        }
        self.slot_of[gid as usize] = index as u32;
        self.children_seen.push(0);
        self.retired.push(false);
        self.is_dirty.push(false);
        self.armed.push(None);
        self.mark(index);
        self.rearm(index);
        self.moving.insert(index);
        Ok(())
    }

    /// The leaders' steps of the splits in progress: a new group's leader
    /// proposes the next batch of the keys it takes over (read from its
    /// own replica of the group that split, where they are frozen) and
    /// then the end of the move; the split group's leader, once its own
    /// replica of the new group owns the range, proposes dropping the
    /// keys it gave. One step in flight per group; each is checked by the
    /// stores on apply (a stale or repeated one is a no-op), so a change of
    /// leader only makes the next leader redo a step.
    fn drive_moves(&mut self, now: Instant) {
        if self.moving.is_empty() || now < self.next_moves {
            return;
        }
        self.next_moves = now + MOVES_EVERY;
        let t = self.host().now();
        // (slot, step): collected first, proposed after (a step may be the
        // business of another group than the one looked at: a merge's
        // absorbing group is not itself in a move until it starts).
        let mut steps: Vec<(usize, KvOp)> = Vec::new();
        for g in self.moving.clone() {
            if self.retired[g] {
                continue;
            }
            let kv = self.groups[g].node.state_machine();
            let gid = self.groups[g].gid;
            if let (Some(into), Some((_, r))) = (kv.retired_into(), kv.outgoing()) {
                // Merged away, and a group hosted here recorded taking its
                // keys over (it may not hear of its own last step, nor have
                // a turn: quiet).
                let absorbed = self.taken_here(into, gid, r);
                if absorbed {
                    self.retire(g);
                    continue;
                }
            }
            let incoming = kv.incoming().map(|i| (i.from, i.range, i.cursor.clone()));
            let outgoing = kv.outgoing();
            let retiring = kv.retired_into();
            if let (Some((into, range)), Some(r)) = (outgoing, retiring) {
                // A merge: the absorbing group's leader starts taking the
                // range over once its node's replica of this group froze it.
                // The group it retired into may have split since (the split
                // committed before its node heard of the retirement): the
                // positions next to this range are then a child's, and the
                // child takes the range (the store refuses any group whose
                // range does not adjoin it).
                if r == into {
                    for a in self.absorbers(into, range) {
                        let akv = self.groups[a].node.state_machine();
                        if akv.incoming().is_none()
                            && akv.outgoing().is_none()
                            && akv.retired_into().is_none()
                            && !akv.has_taken(gid, range)
                            && self.may_step(a)
                        {
                            steps.push((a, KvOp::Absorb { from: gid, range }));
                        }
                    }
                }
            }
            if !self.may_step(g) {
                continue;
            }
            if let Some((from_gid, range, cursor)) = incoming {
                let Some(from) = self.slot(u64::from(from_gid)) else {
                    continue;
                };
                if !frozen_for(self.groups[from].node.state_machine(), gid, range) {
                    // This node's replica of the group giving the range
                    // has not frozen it yet (or has finished: then this
                    // group owns the range already).
                    continue;
                }
                let mut keys = self.groups[g].move_keys.take();
                let source = self.groups[from].node.state_machine();
                let (pairs, last) = next_batch(&mut keys, from_gid, range, source, cursor.as_ref());
                self.groups[g].move_keys = keys;
                steps.push((
                    g,
                    KvOp::Ingest {
                        from: from_gid,
                        after: cursor,
                        pairs,
                        last,
                    },
                ));
            } else if let Some((child, range)) = outgoing {
                // The split's new group, or for a merge the group retired
                // into or one split off it since, recorded the move's last
                // batch.
                let taken = if retiring.is_some() {
                    self.taken_here(child, gid, range)
                } else {
                    self.split_taken_here(child, gid, range)
                };
                if !range.is_empty() && taken {
                    steps.push((g, KvOp::FinishMove { child }));
                }
            }
        }
        // Bounded by the groups moving (at most two steps each).
        for (g, op) in steps {
            if !self.may_step(g) {
                continue;
            }
            let d = &mut self.groups[g];
            in_span(d, |d| d.propose_move(t, op));
            self.mark(g);
        }
    }

    /// Whether the replica here of `child`, the new group of a split of
    /// group `from`, recorded taking `range` over (see [`took_over`]).
    /// Only that group's record counts: a group that split, took its new
    /// group back by a merge and split again at the same point gives the
    /// same range twice, and the first new group's replica (inert here
    /// once merged away) still records having taken it. Taking that
    /// record for the second split's dropped the keys before the second
    /// new group had them (found by the chaos scenario `split-merge`;
    /// `groups::a_group_that_splits_again_where_it_split_before_keeps_every_key`).
    fn split_taken_here(&self, child: u32, from: u32, range: KeyRange) -> bool {
        self.slot(u64::from(child))
            .is_some_and(|c| took_over(self.groups[c].node.state_machine(), from, range))
    }

    /// Whether a group hosted here recorded taking `range`, the whole range
    /// of group `from` that retired into `into`, over (see [`took_over`]):
    /// `into` first, then any other (`into` may have split since, and a
    /// child of it took the range). A group retires once, and its whole
    /// range then never equals a range it gave by a split before (a split
    /// gives the upper part, and a group's range never loses its low end),
    /// so no other record of a move out of `from` has this range.
    fn taken_here(&self, into: u32, from: u32, range: KeyRange) -> bool {
        if self
            .slot(u64::from(into))
            .is_some_and(|a| took_over(self.groups[a].node.state_machine(), from, range))
        {
            return true;
        }
        // Bounded by the groups hosted; only for groups in a move.
        self.groups
            .iter()
            .any(|d| took_over(d.node.state_machine(), from, range))
    }

    /// The groups hosted here that may take over `range`, the whole range
    /// of a group that retired into `into`: `into` if its range adjoins
    /// it, else any group whose range adjoins it on `into`'s side. `into`
    /// may have split after the merge began (a child of it holds the
    /// positions next to the range now), or retired itself before it took
    /// the range over (a retired group takes nothing; the group that took
    /// `into`'s range over adjoins the range now). The store refuses a
    /// group whose committed range does not adjoin, and on one side only
    /// one group's can.
    fn absorbers(&self, into: u32, range: KeyRange) -> Vec<usize> {
        // `into`'s slot; none once it merged away itself and was dropped
        // here.
        let a = self.slot(u64::from(into));
        if let Some(a) = a {
            let ar = self.groups[a].node.state_machine().range();
            if !ar.is_empty() && (ar.end == range.start || ar.start == range.end) {
                return vec![a];
            }
        }
        let Some(side) = self.a_range_of(a, into) else {
            return Vec::new();
        };
        let below = side.start < range.start;
        // Bounded by the groups hosted; only while a merge waits.
        (0..self.groups.len())
            .filter(|&s| !self.retired[s] && Some(s) != a)
            .filter(|&s| {
                let r = self.groups[s].node.state_machine().range();
                !r.is_empty()
                    && if below {
                        r.end == range.start
                    } else {
                        r.start == range.end
                    }
            })
            .collect()
    }

    /// A range group `into` (slot `a`, if still hosted) owns or owned, as
    /// this node's replicas know it: its own range, else (retired) the
    /// range it gave away when it retired, else (its move over, perhaps
    /// dropped here) the record of the group that took that range. Any of
    /// them tells on which side of a group that retired into `into` it
    /// lies: `into` adjoined that group when the merge was asked, and a
    /// group's ranges never cross another's.
    fn a_range_of(&self, a: Option<usize>, into: u32) -> Option<KeyRange> {
        if let Some(a) = a {
            let akv = self.groups[a].node.state_machine();
            let own = akv.range();
            if !own.is_empty() {
                return Some(own);
            }
            if let Some((_, r)) = akv.outgoing().filter(|(_, r)| !r.is_empty()) {
                return Some(r);
            }
        }
        // Bounded by the groups hosted and the records each keeps.
        self.groups.iter().find_map(|d| {
            d.node
                .state_machine()
                .taken()
                .iter()
                .find(|(from, r)| *from == into && !r.is_empty())
                .map(|(_, r)| *r)
        })
    }

    /// Whether group `g`'s replica here may propose a move's step now: it
    /// leads an established epoch and has no step in flight. A replica
    /// that does not lead forgets its step in flight (it comes back as
    /// superseded or of unknown outcome; the next leader starts from the
    /// stores).
    fn may_step(&mut self, g: usize) -> bool {
        let d = &mut self.groups[g];
        if !d.node.replica().is_leader() {
            d.move_inflight = false;
            d.move_keys = None;
            return false;
        }
        if d.move_backoff.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        !d.move_inflight && d.node.replica().established_epoch().is_some()
    }

    fn host(&self) -> &Host {
        // The node refuses to start without a group.
        &self.groups[0].host
    }

    fn mark(&mut self, g: usize) {
        if self.retired[g] {
            return;
        }
        if !self.is_dirty[g] {
            self.is_dirty[g] = true;
            self.dirty.push(g);
        }
    }

    /// Runs `f` on group `g` (if it exists) and gives it a turn.
    pub(super) fn with(&mut self, g: usize, f: impl FnOnce(&mut Driver)) {
        if self.retired.get(g).copied().unwrap_or(false) {
            tracing::debug!(slot = g, "input for a group merged away; dropped");
            return;
        }
        if let Some(d) = self.groups.get_mut(g) {
            in_span(d, f);
            self.mark(g);
        } else {
            tracing::warn!(
                group = g,
                "input for a group this node does not host; dropped"
            );
        }
    }

    fn rearm(&mut self, g: usize) {
        if self.retired[g] {
            self.armed[g] = None;
            return;
        }
        let t = self.groups[g].timer();
        if t != self.armed[g] {
            self.armed[g] = t;
            if let Some(t) = t {
                self.timers.push(Reverse((t, g)));
            }
        }
    }

    /// Lets every group with input process it, then sends the batches.
    pub(super) fn turn(&mut self) -> Result<()> {
        // Bounded: a group's turn never marks another group dirty.
        let dirty = std::mem::take(&mut self.dirty);
        for &g in &dirty {
            self.is_dirty[g] = false;
        }
        let mut result = Ok(());
        for g in dirty {
            match in_span(&mut self.groups[g], Driver::turn) {
                Ok(more) => {
                    if more {
                        // Its next turn comes in the next pass of the loop.
                        self.mark(g);
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            if self.groups[g].busy() {
                self.busy.insert(g);
            } else {
                self.busy.remove(&g);
            }
            self.after_turn(g);
            self.rearm(g);
        }
        let sent = self.host().send_syncs();
        self.host().flush();
        result.and(sent)
    }

    /// When the loop must wake up even without input.
    pub(super) fn deadline(&self) -> Instant {
        let mut next = Instant::now() + Duration::from_millis(100);
        if let Some(Reverse((t, _))) = self.timers.peek() {
            let t = if self.groups.len() > 1 {
                self.host().grid_ceil(*t)
            } else {
                *t
            };
            next = next.min(self.host().to_instant(t));
        }
        if !self.busy.is_empty() {
            next = next.min(Instant::now() + Duration::from_millis(1));
        }
        if self.host().quiesce {
            next = next.min(self.next_host_heartbeat);
        }
        if !self.waiting.is_empty() {
            next = next.min(self.next_admission);
        }
        next
    }

    /// Whether group `g` may run its timers now: it has an established
    /// leader, or it holds (or just got) an admission slot. Otherwise it
    /// joins the queue (once) and its timers wait for a slot.
    fn admit(&mut self, g: usize, now: Instant) -> bool {
        let r = self.groups[g].node.replica();
        if self.host().max_elections == 0
            || self.admitted.contains_key(&g)
            || r.established_epoch().is_some()
            || !r.config().is_voter(r.id())
        {
            return true;
        }
        if self.admitted.len() >= self.window.limit() {
            self.free_slots(now);
        }
        if self.admitted.len() < self.window.limit() && self.waiting.first().is_none_or(|&w| g < w)
        {
            self.admitted.insert(g, now);
            return true;
        }
        if self.waiting.is_empty() {
            tracing::info!(
                admitted = self.admitted.len(),
                "election admission full: groups without a leader now wait for a slot"
            );
        }
        self.waiting.insert(g);
        false
    }

    /// Frees the slots of groups now established, or admitted two election
    /// timeouts ago (whatever became of them, so the queue always moves),
    /// and moves the window ([`AdmissionWindow`]).
    fn free_slots(&mut self, now: Instant) {
        let hold = self.host().election_timeout * 2;
        let groups = &self.groups;
        let (mut established, mut expired) = (0usize, 0usize);
        self.admitted.retain(|&g, at| {
            if groups[g].node.replica().established_epoch().is_some() {
                established += 1;
                false
            } else if now.saturating_duration_since(*at) >= hold {
                expired += 1;
                false
            } else {
                true
            }
        });
        if self.window.on_freed(now, hold, established, expired) {
            tracing::info!(
                window = self.window.limit(),
                "election admission: most elections of the last period ran out of time; fewer at once"
            );
        }
    }

    /// Admits waiting groups into the slots freed since the last look, and
    /// runs their held timers.
    fn admit_waiting(&mut self, now: Instant) {
        if self.waiting.is_empty() || now < self.next_admission {
            return;
        }
        self.next_admission = now + ADMISSION_EVERY;
        self.free_slots(now);
        // Bounded: each pass takes one group off the queue.
        while self.admitted.len() < self.window.limit() {
            let Some(g) = self.waiting.pop_first() else {
                tracing::info!("election admission: no group waits for a slot any more");
                break;
            };
            if self.groups[g].node.replica().established_epoch().is_none() {
                self.admitted.insert(g, now);
            }
            in_span(&mut self.groups[g], Driver::on_timeout);
            self.mark(g);
        }
    }

    /// With quiescence: heartbeats every peer node (one frame per peer per
    /// heartbeat interval, whatever the number of groups), and wakes the
    /// quiesced groups that a peer node not heard from for an election
    /// timeout concerns: those it leads, and those this node leads (whose
    /// quorum it may have been). A woken follower then elects after its
    /// own timeout if the leader stays silent.
    fn host_heartbeat(&mut self) {
        let host = &self.groups[0].host;
        if !host.quiesce {
            return;
        }
        let now = Instant::now();
        if now < self.next_host_heartbeat {
            return;
        }
        // This node's own loop did not run for an election timeout (the
        // process was paused or starved): its peers may have elected other
        // leaders meanwhile, and their frames, already queued, arrive
        // before this check could find them silent.
        let stalled =
            now.saturating_duration_since(self.next_host_heartbeat) > host.election_timeout;
        self.next_host_heartbeat = now + host.heartbeat;
        if stalled {
            self.wake_quiet_leaders();
        }
        let host = &self.groups[0].host;
        let peers: Vec<u64> = host
            .members
            .borrow()
            .keys()
            .copied()
            .filter(|&p| p != host.id.0)
            .collect();
        for &p in &peers {
            host.send_now(NodeId(p), Bytes::from_static(&[TAG_HOST_HEARTBEAT]));
        }
        let timeout = host.election_timeout;
        let mut lost = Vec::new();
        for p in peers {
            let (heard, is_lost) = self.peers.entry(p).or_insert((now, false));
            if !*is_lost && now.saturating_duration_since(*heard) > timeout {
                *is_lost = true;
                lost.push(p);
            }
        }
        if lost.is_empty() {
            return;
        }
        let t = self.host().now();
        let mut woken = 0usize;
        for g in 0..self.groups.len() {
            if self.retired[g] {
                continue;
            }
            self.set_reachable(g, t, &lost, false);
            let r = self.groups[g].node.replica();
            if !r.is_quiesced() {
                continue;
            }
            match r.leader() {
                Some(l) if lost.contains(&l.0) => self.groups[g].node.leader_node_lost(t, l),
                _ if r.is_leader() => self.groups[g].node.wake(t),
                _ => continue,
            }
            self.mark(g);
            woken += 1;
        }
        tracing::info!(lost = ?lost, woken, "peer node silent for an election timeout: the quiesced groups it led look for a leader, those this node leads are woken");
    }

    /// Tells group `g`'s elector whether this node can reach `peers` (see
    /// [`paxos_core::Node::set_peer_reachable`]): a group looking for a
    /// leader then locks its vote as soon as every reachable voter holds
    /// it, instead of waiting the settle wait for a node that is down. A
    /// group that may have locked is given a turn to send the lock.
    fn set_reachable(&mut self, g: usize, t: Time, peers: &[u64], reachable: bool) {
        let node = &mut self.groups[g].node;
        for &p in peers {
            node.set_peer_reachable(t, NodeId(p), reachable);
        }
        if !node.replica().is_quiesced() && node.replica().leader().is_none() {
            self.mark(g);
        }
    }

    /// Wakes every quiesced group this node leads, after this node's own
    /// loop stalled for an election timeout: a leader that was away may
    /// have been replaced, and nobody tells a quiesced leader (the new
    /// leader never heard from it, so it sends it nothing). Awake, it
    /// heartbeats; a replaced one fails its check-quorum and steps down.
    fn wake_quiet_leaders(&mut self) {
        let t = self.host().now();
        let mut woken = 0usize;
        for g in 0..self.groups.len() {
            if self.retired[g] {
                continue;
            }
            let r = self.groups[g].node.replica();
            if r.is_leader() && r.is_quiesced() {
                self.groups[g].node.wake(t);
                self.mark(g);
                woken += 1;
            }
        }
        tracing::info!(
            woken,
            "this node's loop stalled for an election timeout (paused?): the quiesced groups it leads are woken"
        );
    }

    /// With quiescence: a peer node found silent earlier is heard again.
    /// Wakes the quiesced groups this node leads in which that peer is not
    /// synced (their epoch was established while it was away), so that
    /// they send it the epoch it missed: NEWEPOCH is re-sent only by an
    /// awake leader, and a quiesced leader does not wait for a peer it
    /// stopped hearing. Without this, a node that was paused or cut off
    /// while leading quiesced groups keeps believing it leads those that
    /// elected elsewhere meanwhile: it is quiesced too, so neither side
    /// ever sends the other anything. Groups where the peer is synced stay
    /// quiet (a peer that flaps wakes nothing it does not need).
    fn peer_returned(&mut self, peer: u64) {
        let t = self.host().now();
        let mut woken = 0usize;
        for g in 0..self.groups.len() {
            if self.retired[g] {
                continue;
            }
            self.set_reachable(g, t, &[peer], true);
            let r = self.groups[g].node.replica();
            if r.is_leader()
                && r.is_quiesced()
                && r.peer_progress()
                    .iter()
                    .any(|p| p.id.0 == peer && !p.in_broadcast)
            {
                self.groups[g].node.wake(t);
                self.mark(g);
                woken += 1;
            }
        }
        if woken > 0 {
            tracing::info!(
                peer,
                woken,
                "peer node heard again: the quiesced groups this node leads that it missed are woken"
            );
        }
    }

    /// Spreads leaders evenly over the voter nodes that are up: every node
    /// hosts every group, so each sees the whole spread from its own
    /// replicas. A node leading more than its share (the group count over
    /// the live voters, rounded up) hands the excess, a few at a time, to
    /// the live voters leading the fewest; one leading its share or less
    /// does nothing, so the nodes never hand groups back and forth. After
    /// a failure heals, the survivors lead too many and give groups back to
    /// the node that returned. A hand-over the kernel refuses (the target
    /// not in sync, a change in flight) is simply tried at a later look.
    fn balance(&mut self) {
        let host = &self.groups[0].host;
        if !host.balance || self.groups.len() < 2 {
            return;
        }
        let now = Instant::now();
        if now < self.next_balance {
            return;
        }
        self.next_balance = now + BALANCE_EVERY;
        let me = host.id;
        let timeout = host.election_timeout;
        // Live voters: this node and the peers heard within an election
        // timeout, among group 0's voters (every group starts with the
        // same members).
        let voters: Vec<NodeId> = self.groups[0].node.replica().config().voters.clone();
        let live: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|v| {
                *v == me
                    || self.peers.get(&v.0).is_some_and(|(heard, lost)| {
                        !lost && now.saturating_duration_since(*heard) <= timeout
                    })
            })
            .collect();
        if live.len() < 2 || !live.contains(&me) {
            return;
        }
        let mut led: BTreeMap<NodeId, usize> = live.iter().map(|&v| (v, 0)).collect();
        let mut mine = Vec::new();
        for (g, d) in self.groups.iter().enumerate() {
            if self.retired[g] {
                continue;
            }
            let r = d.node.replica();
            if let Some(l) = r.leader() {
                if let Some(c) = led.get_mut(&l) {
                    *c += 1;
                }
                if r.is_leader() && r.transferring_to().is_none() {
                    mine.push(g);
                }
            }
        }
        let hosted = self.retired.iter().filter(|r| !**r).count();
        let share = hosted.div_ceil(live.len());
        let excess = led[&me].saturating_sub(share);
        if excess == 0 {
            return;
        }
        let t = self.host().now();
        let mut started = 0usize;
        for g in mine.into_iter().take(excess.min(MAX_HANDOVERS_PER_LOOK)) {
            let Some((&to, _)) = led
                .iter()
                .filter(|(v, _)| **v != me)
                .min_by_key(|(_, c)| **c)
            else {
                break;
            };
            if led[&to] >= share {
                break;
            }
            match self.groups[g].node.transfer_leadership(t, to) {
                Ok(()) => {
                    *led.entry(to).or_insert(0) += 1;
                    if let Some(c) = led.get_mut(&me) {
                        *c = c.saturating_sub(1);
                    }
                    started += 1;
                    self.mark(g);
                }
                Err(e) => {
                    tracing::debug!(group = g, %to, error = %e, "leader balance: hand-over not started")
                }
            }
        }
        if started > 0 {
            tracing::info!(
                started,
                share,
                live = live.len(),
                "leader balance: handing groups to the nodes leading the fewest"
            );
        }
    }

    /// Wakes the groups whose timers are due (and those with snapshot work).
    pub(super) fn on_timeout(&mut self) {
        self.host_heartbeat();
        self.balance();
        if self.groups.len() == 1 {
            // One group: woken on every pass, as a single-group node always
            // was (the layer's own deadlines decide what is due).
            self.groups[0].on_timeout();
            self.mark(0);
            self.refresh_metrics_if_due();
            return;
        }
        // Due: the timers up to the last grid point (see `timer_grid`).
        let due = self.host().grid_floor(self.host().now());
        let instant = Instant::now();
        self.admit_waiting(instant);
        self.log_roles(instant);
        self.drive_moves(instant);
        self.retry_children(instant);
        // Bounded by the heap's size: each pop removes an entry.
        while let Some(&Reverse((t, g))) = self.timers.peek() {
            if t > due {
                break;
            }
            self.timers.pop();
            if self.armed[g] == Some(t) {
                self.armed[g] = None;
                if !self.admit(g, instant) {
                    // Held: the queue runs its timers when a slot frees.
                    continue;
                }
                in_span(&mut self.groups[g], Driver::on_timeout);
                self.mark(g);
            }
        }
        for g in self.busy.clone() {
            in_span(&mut self.groups[g], Driver::on_timeout);
            self.mark(g);
        }
        self.refresh_metrics_if_due();
    }

    /// With many groups, the kernels' per-group events are at debug level
    /// by default (thousands of groups electing would log hundreds of
    /// thousands of lines): this logs the node's counts of groups led,
    /// followed and looking once a second when they changed.
    fn log_roles(&mut self, now: Instant) {
        if now < self.next_roles_log {
            return;
        }
        self.next_roles_log = now + ROLES_LOG_EVERY;
        let c = self.counts();
        let roles = (c.led, c.following, c.looking);
        if roles != self.logged_roles {
            self.logged_roles = roles;
            tracing::info!(
                groups = self.groups.len(),
                led = roles.0,
                following = roles.1,
                looking = roles.2,
                waiting = self.waiting.len(),
                "group roles changed"
            );
        }
    }

    /// The state gauges (of group 0 when the node hosts many: role,
    /// epoch, positions, peers), and the counts of all groups.
    fn refresh_metrics_if_due(&self) {
        let host = &self.groups[0].host;
        if host.metrics_served && host.metrics.borrow_mut().refresh_due(Instant::now()) {
            self.groups[0].refresh_metrics();
            host.metrics.borrow().set_groups(&self.counts());
        }
    }

    /// This node's groups by role and state (one pass over them).
    fn counts(&self) -> GroupCounts {
        let mut c = GroupCounts {
            election_queue: self.waiting.len(),
            election_window: self.window.limit(),
            ..GroupCounts::default()
        };
        for (g, d) in self.groups.iter().enumerate() {
            if self.retired[g] {
                continue;
            }
            let r = d.node.replica();
            if r.is_leader() {
                c.led += 1;
            } else if r.leader().is_some() {
                c.following += 1;
            } else {
                c.looking += 1;
            }
            if r.is_recovering() {
                c.recovering += 1;
            }
            if paxos_core::StateMachine::applied(d.node.state_machine()) < r.commit_zxid() {
                c.lagging += 1;
            }
            if d.node.is_stalled() {
                c.storage_stalled += 1;
            }
        }
        c
    }

    /// The sync thread's completions of one of its passes, one per group
    /// that asked.
    pub(super) fn on_synced(&mut self, done: Vec<(usize, SyncDone)>) -> Result<()> {
        for (g, done) in done {
            let Some(d) = self.groups.get_mut(g) else {
                anyhow::bail!(
                    "a sync completion for group {g}, which this node does not host (a bug)"
                );
            };
            in_span(d, |d| d.on_synced(done))?;
            self.mark(g);
        }
        Ok(())
    }

    /// A frame from `peer`: routed to its group (a batch, to each frame's).
    pub(super) fn on_frame(&mut self, peer: PeerId, frame: Bytes) {
        let host = &self.groups[0].host;
        if host.quiesce || host.balance {
            let quiesce = host.quiesce;
            let was_lost = self
                .peers
                .insert(peer.0, (Instant::now(), false))
                .is_some_and(|(_, lost)| lost);
            if was_lost && quiesce {
                self.peer_returned(peer.0);
            }
        }
        if frame.first() == Some(&TAG_HOST_HEARTBEAT) {
            return;
        }
        if frame.first() == Some(&TAG_BATCH) {
            let mut rest = frame.slice(1..);
            for _ in 0..MAX_FRAMES_PER_BATCH {
                if rest.is_empty() {
                    return;
                }
                if rest.len() < 4 {
                    break;
                }
                let len = rest.get_u32_le() as usize;
                if len > rest.len() {
                    break;
                }
                let inner = rest.split_to(len);
                if inner.first() == Some(&TAG_BATCH) {
                    tracing::warn!(%peer, "batch frame nested in a batch; rest of the batch dropped");
                    return;
                }
                self.on_single_frame(peer, inner);
            }
            tracing::warn!(%peer, left = rest.len(), "malformed batch frame; rest dropped");
            return;
        }
        self.on_single_frame(peer, frame);
    }

    fn on_single_frame(&mut self, peer: PeerId, frame: Bytes) {
        match frame.first() {
            Some(&TAG_CORE) => match self.host().codec.decode(frame.slice(1..)) {
                Ok(env) => self.with_gid_from(peer, env.group.0, |d| d.on_envelope(peer, env)),
                Err(e) => tracing::warn!(%peer, error = %e, "malformed consensus frame dropped"),
            },
            Some(&TAG_ELECTION) => match Notification::decode(&frame[1..]) {
                Ok(n) => self.with(0, |d| d.on_election(peer, n)),
                Err(e) => tracing::warn!(%peer, error = %e, "malformed election frame dropped"),
            },
            Some(&TAG_ELECTION_IN) if frame.len() >= 5 => {
                let g = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]);
                match Notification::decode(&frame[5..]) {
                    Ok(n) => self.with_gid_from(peer, u64::from(g), |d| d.on_election(peer, n)),
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "malformed election frame dropped")
                    }
                }
            }
            Some(&heartbeats::TAG_HEARTBEATS) => {
                // Keyed by the authenticated peer: bounded by the members.
                let memory = self.heartbeats_in.entry(peer.0).or_default();
                let slot_of = &self.slot_of;
                let hosted = |g: u64| {
                    usize::try_from(g).is_ok_and(|g| slot_of.get(g).is_some_and(|&s| s != NO_SLOT))
                };
                match heartbeats::decode(&frame[1..], memory, hosted) {
                    Ok(decoded) => {
                        if !decoded.ask_full.is_empty() || !decoded.forget.is_empty() {
                            tracing::debug!(%peer, asked = decoded.ask_full.len(), forgotten = decoded.forget.len(), "heartbeats out of step; full entries asked for");
                            self.host().heartbeats_out_of_step(
                                peer.0,
                                &decoded.ask_full,
                                &decoded.forget,
                            );
                        }
                        for (group, msg) in decoded.messages {
                            self.with_gid(group, |d| {
                                let env = Envelope {
                                    group: GroupId(group),
                                    from: NodeId(peer.0),
                                    to: d.id,
                                    msg,
                                };
                                d.on_envelope(peer, env);
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "malformed heartbeats frame dropped")
                    }
                }
            }
            Some(&TAG_GROUP_GONE) if frame.len() == 5 => {
                let g = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]);
                self.peer_dropped(peer, g);
            }
            _ => tracing::warn!(%peer, "frame with an unknown tag (or a malformed one) dropped"),
        }
    }

    /// [`Groups::with_gid`] for input from `peer`: input for a group not
    /// hosted here because it was merged away and removed is answered by
    /// telling `peer` so ([`Groups::tell_gone`]).
    fn with_gid_from(&mut self, peer: PeerId, gid: u64, f: impl FnOnce(&mut Driver)) {
        match self.slot(gid) {
            Some(g) => self.with(g, f),
            None => match u32::try_from(gid) {
                Ok(g) if self.gone.contains(&g) => self.tell_gone(peer, g),
                _ => tracing::debug!(
                    group = gid,
                    "input for a group this node does not host; dropped"
                ),
            },
        }
    }

    /// Tells `peer`, which sent input for group `g`, merged away and
    /// removed here, that it is gone (at most once a second per peer and
    /// group).
    fn tell_gone(&mut self, peer: PeerId, g: u32) {
        let now = Instant::now();
        if self
            .gone_told
            .get(&(peer.0, g))
            .is_some_and(|&at| now.saturating_duration_since(at) < GONE_TELL_EVERY)
        {
            return;
        }
        if self.gone_told.len() >= MAX_GONE_TOLD {
            // Bounded: forgets the oldest, which at worst is told again.
            if let Some(oldest) = self
                .gone_told
                .iter()
                .min_by_key(|(_, &at)| at)
                .map(|(&k, _)| k)
            {
                self.gone_told.remove(&oldest);
            }
        }
        self.gone_told.insert((peer.0, g), now);
        tracing::debug!(%peer, group = g, "input for a group merged away here: the peer is told");
        let mut frame = BytesMut::with_capacity(5);
        frame.put_u8(TAG_GROUP_GONE);
        frame.put_u32_le(g);
        self.host().send(NodeId(peer.0), frame.freeze());
    }

    /// `peer` says group `gid` was merged away and removed there. A node
    /// removes a merged group only once its keys are safe in the group
    /// that took them over (a replica there recorded the move's last
    /// batch, committed in that group), so the group's replica here, which
    /// missed that (it was down), holds nothing that is still needed, and
    /// it could never catch up once its peers are gone. Removed here too,
    /// unless it leads here (then it has a quorum of replicas that still
    /// host it, and finishes the merge itself).
    fn peer_dropped(&mut self, peer: PeerId, gid: u32) {
        let Some(g) = self.slot(u64::from(gid)) else {
            return;
        };
        if self.retired[g] {
            return;
        }
        if self.groups[g].node.replica().is_leader() {
            tracing::warn!(%peer, group = gid, "a peer says this group was merged away, but it leads here; kept until its own merge ends");
            return;
        }
        tracing::info!(%peer, group = gid, "a peer removed this group after it merged away (this replica missed the merge's end): removing it here too");
        self.retire(g);
    }

    /// A client request: to the group of its key, or the one it names.
    pub(super) fn on_client(&mut self, msg: ClientMsg) {
        if self.groups.len() == 1 && self.factory.is_none() {
            // One group: the request as it came (an InGroup must name 0).
            let msg = match unwrap_in_group(msg, 0) {
                Ok(m) => m,
                Err(()) => return,
            };
            if matches!(msg.req, Request::Status) {
                let status = self.groups[0].status_json();
                msg.reply.send(Response::Status(status));
                return;
            }
            self.with(0, |d| d.on_client(msg));
            return;
        }
        let (named, inner) = match &msg.req {
            Request::InGroup { group, inner } => (Some(*group), inner.as_ref()),
            other => (None, other),
        };
        // A request named for a group goes to it: the group's store checks
        // on apply (a write) or when it answers (a read) that it owns the
        // key, and answers "wrong group" otherwise (the client then learns
        // the ranges again). An unnamed one with a key goes to the group
        // that owns it here.
        let target = match named {
            Some(n) => n,
            None => {
                let keyed = match inner {
                    Request::Write(cmd) => KvCommand::key_of(cmd).ok().flatten(),
                    Request::Get { key, .. } => Some(key.clone()),
                    Request::Status | Request::Admin(_) | Request::InGroup { .. } => None,
                };
                match keyed {
                    Some(k) => self.owner_of(&k),
                    None if matches!(inner, Request::Status) => {
                        let status = self.status_summary();
                        msg.reply.send(Response::Status(status));
                        return;
                    }
                    // Keyless and unnamed (a session opened by an older
                    // client, an administration command): group 0.
                    None => 0,
                }
            }
        };
        let Some(g) = self.slot(u64::from(target)) else {
            msg.reply.send(Response::Error(format!(
                "wrong group: this node does not host group {target} (ask a node's status for \
                 the groups and their ranges)"
            )));
            return;
        };
        let msg = match unwrap_in_group(msg, target) {
            Ok(m) => m,
            Err(()) => return,
        };
        if let Request::Admin(
            AdminRequest::Split { .. } | AdminRequest::Merge { .. } | AdminRequest::Change { .. },
        ) = &msg.req
        {
            if let Request::Admin(AdminRequest::Split { child }) = &msg.req {
                // A split asked again (its answer was lost to a leader
                // change or a timeout, and the client retried) is answered
                // as done: this replica applied it, so it committed.
                // Before, the retry was refused ("group id N is (or was) a
                // group's already") and the caller took the split for
                // failed (chaos `split-merge`, seed 988984).
                let kv = self.groups[g].node.state_machine();
                if let Some(c) = kv.children().iter().find(|c| c.id == *child) {
                    let answer = serde_json::json!({
                        "new_group": child,
                        "range_given": c.range.to_hex(),
                        "already_split": true,
                    });
                    msg.reply.send(Response::Admin(answer.to_string()));
                    return;
                }
            }
            if let Some(why) = self.move_blocked(target, &msg.req) {
                msg.reply.send(Response::Error(why));
                return;
            }
        }
        if let Request::Admin(AdminRequest::Merge { into }) = msg.req {
            let other = self.slot(u64::from(into)).map(|a| {
                let d = &self.groups[a];
                let c = d.node.replica().config();
                let (mut v, mut o) = (c.voters.clone(), c.observers.clone());
                v.sort_unstable();
                o.sort_unstable();
                ((v, o), d.node.state_machine().range())
            });
            let reply = msg.reply;
            let _budget = msg._budget;
            self.with(g, |d| d.merge(into, other, reply));
            return;
        }
        if matches!(msg.req, Request::Status) {
            let status = self.groups[g].status_json();
            msg.reply.send(Response::Status(status));
            return;
        }
        self.with(g, |d| d.on_client(msg));
    }

    /// Why group `gid` may not start the split, merge or membership change
    /// `req` now, as this node's replicas see the groups (`None`: it may).
    /// A group still taking a range over, or not yet told by the group
    /// that gave it that the move is over, neither splits nor merges nor
    /// changes members: the giver's last step waits for the receiver's
    /// range to cover what it gave, and the members must stay those that
    /// host both. A merge's other group must be settled too, and a split's
    /// new id must be one group 0 allocated and no group here has or had.
    fn move_blocked(&self, gid: u32, req: &Request) -> Option<String> {
        let pending = |target: u32| -> Option<String> {
            self.groups.iter().enumerate().find_map(|(s, d)| {
                if self.retired[s] {
                    return None;
                }
                let kv = d.node.state_machine();
                match (kv.outgoing(), kv.retired_into()) {
                    (Some((to, _)), None) if to == target => Some(format!(
                        "retry: group {} has not dropped the keys it gave group {target} yet",
                        d.gid
                    )),
                    (_, Some(into)) if into == target => Some(format!(
                        "retry: group {} is merging into group {target}",
                        d.gid
                    )),
                    _ => None,
                }
            })
        };
        if let Some(why) = pending(gid) {
            return Some(why);
        }
        match req {
            Request::Admin(AdminRequest::Split { child }) => {
                if self.slot(u64::from(*child)).is_some() || self.gone.contains(child) {
                    return Some(format!("group id {child} is (or was) a group's already"));
                }
                let next = self
                    .slot(0)
                    .map(|g0| self.groups[g0].node.state_machine().next_group());
                if next.is_some_and(|n| *child >= n) {
                    // Perhaps allocated a moment ago: this node's replica
                    // of group 0 may not have applied it yet.
                    return Some(format!(
                        "retry: group id {child} was not allocated by group 0 as far as this \
                         node knows (admin allocate-group)"
                    ));
                }
                None
            }
            Request::Admin(AdminRequest::Merge { into }) => {
                let Some(a) = self.slot(u64::from(*into)) else {
                    return None; // the driver says it is not hosted
                };
                let kv = self.groups[a].node.state_machine();
                if kv.outgoing().is_some() || kv.incoming().is_some() {
                    return Some(format!(
                        "retry: group {into} is in a split or a merge (keys moving)"
                    ));
                }
                if kv.retired_into().is_some() {
                    return Some(format!("group {into} was merged away"));
                }
                pending(*into)
            }
            _ => None,
        }
    }

    /// The group that owns `key` as this node's replicas see it: the base
    /// group it hashes to, or down the chain of groups split off from it
    /// (each split gives a range to a child) to the one whose range holds
    /// it. A key in a range being moved goes to the group that gave it,
    /// whose store answers "wrong group" until the move is over.
    fn owner_of(&self, key: &[u8]) -> u32 {
        let base = self.host().groups;
        let p = position(key, base);
        let mut gid = crate::shard::group_of(key, base);
        // Bounded: each step goes to a group made later than the last.
        for _ in 0..64 {
            let Some(g) = self.slot(u64::from(gid)) else {
                // Not hosted (merged away, say): any hosted group that
                // owns the key (a linear look; rare).
                return self
                    .groups
                    .iter()
                    .enumerate()
                    .find(|(s, d)| !self.retired[*s] && d.node.state_machine().range().contains(p))
                    .map_or(gid, |(_, d)| d.gid);
            };
            let kv = self.groups[g].node.state_machine();
            if kv.range().contains(p) {
                return gid;
            }
            // The newest split first: a range merged back and split again
            // is in the history twice.
            match kv.children().iter().rev().find(|c| c.range.contains(p)) {
                Some(c) => gid = c.id,
                None => return gid,
            }
        }
        gid
    }

    /// The node's view of all its groups: counts, and each group's leader
    /// (which is how a client learns where to send each group's requests).
    fn status_summary(&self) -> String {
        let host = self.host();
        let c = self.counts();
        let mut keys = 0usize;
        // group_leaders: each base group's leader, by id (null for one not
        // hosted here); shards: the groups whose range is not their base
        // range as created (made by splits, split, merged into, or
        // moving), so that the status stays small when nothing split (it
        // travels in one client frame, with up to 65 536 groups); gone: the
        // base groups merged away. A client's routing is the base ranges,
        // less those gone and those in shards, plus the shards.
        let mut leaders: Vec<Option<u64>> = vec![None; host.groups as usize];
        let mut shards = Vec::new();
        let mut hosted = 0usize;
        for (g, d) in self.groups.iter().enumerate() {
            if self.retired[g] {
                continue;
            }
            hosted += 1;
            let kv = d.node.state_machine();
            keys += kv.len();
            let leader = d.node.replica().leader().map(|l| l.0);
            let moving = kv.incoming().is_some() || kv.outgoing().is_some();
            if let Some(slot) = leaders.get_mut(d.gid as usize) {
                *slot = leader;
            }
            if d.gid >= host.groups || moving || kv.range() != KeyRange::of_base_group(d.gid) {
                shards.push(serde_json::json!({
                    "group": d.gid,
                    "range": kv.range().to_hex(),
                    "leader": leader,
                    "moving": moving,
                }));
            }
        }
        let gone: Vec<u32> = self
            .gone
            .iter()
            .copied()
            .filter(|&g| g < host.groups)
            .collect();
        let members = host.members.borrow();
        let addrs: BTreeMap<u64, String> = members
            .iter()
            .map(|(id, m)| (*id, m.client.to_string()))
            .collect();
        serde_json::json!({
            "id": host.id.0,
            "pid": std::process::id(),
            "cluster": host.identity.borrow().cluster,
            // The groups the cluster was created with (what keys hash to
            // before any split; clients that predate splits route by it),
            // and the groups this node hosts.
            "groups": host.groups,
            "hosted": hosted,
            "led": c.led,
            "following": c.following,
            "looking": c.looking,
            "recovering": c.recovering,
            "lagging": c.lagging,
            "storage_stalled": c.storage_stalled,
            "election_queue": c.election_queue,
            "election_window": c.election_window,
            "keys": keys,
            "group_leaders": leaders,
            "shards": shards,
            "gone": gone,
            "client_addrs": addrs,
        })
        .to_string()
    }
}

/// Whether `source`, the store of a group giving `range` away, has frozen
/// it for group `taker` to take over: a split's range for the new group
/// it names; a retired group's whole range for whichever group committed
/// taking it (`Absorb`, whose store checked that its range adjoins):
/// the group it retired into, or, if that one split since and no longer
/// adjoins it, the part of it that does. Before, only the named group
/// read the keys, and a merge that a child of G absorbed left them frozen
/// for good (found by the chaos scenario `split-merge`).
fn frozen_for(source: &KvStore, taker: u32, range: KeyRange) -> bool {
    match source.outgoing() {
        Some((to, r)) if r == range => to == taker || source.retired_into() == Some(to),
        _ => false,
    }
}

/// The next batch of keys a new group takes over from `source` (the
/// group that split), after `cursor`: whether it is the last. `keys` is the
/// sorted list of the frozen keys, made once per move (they do not change
/// while frozen) and kept between batches.
fn next_batch(
    keys: &mut Option<super::MoveKeys>,
    from: u32,
    range: KeyRange,
    source: &KvStore,
    cursor: Option<&(u128, Bytes)>,
) -> (Vec<(Bytes, Bytes)>, bool) {
    if keys
        .as_ref()
        .is_some_and(|(f, r, _)| (*f, *r) != (from, range))
    {
        // A list of another move (this replica applied that move's end and
        // the next move's start in one turn): never used for this one.
        *keys = None;
    }
    let (_, _, keys) = keys.get_or_insert_with(|| (from, range, source.frozen_keys()));
    let start = match cursor {
        None => 0,
        Some((p, k)) => keys.partition_point(|(kp, kk)| (kp, kk) <= (p, k)),
    };
    let mut pairs = Vec::new();
    let mut bytes = 0usize;
    let mut i = start;
    // Bounded by the batch's limits.
    while i < keys.len() && pairs.len() < MOVE_BATCH_PAIRS && bytes < MOVE_BATCH_BYTES {
        let (_, k) = &keys[i];
        if let Some(v) = source.get(k) {
            bytes += k.len() + v.len();
            pairs.push((k.clone(), v.clone()));
        }
        i += 1;
    }
    (pairs, i >= keys.len())
}

/// The request inside an [`Request::InGroup`] naming `group` (or the
/// request itself); `Err` once the client has been answered (a nested or
/// foreign group).
fn unwrap_in_group(msg: ClientMsg, group: u32) -> Result<ClientMsg, ()> {
    let ClientMsg {
        req,
        reply,
        _budget,
    } = msg;
    match req {
        Request::InGroup { group: g, inner } => {
            if g != group || matches!(*inner, Request::InGroup { .. }) {
                reply.send(Response::Error(format!(
                    "no group {g} here, or a nested group request"
                )));
                return Err(());
            }
            Ok(ClientMsg {
                req: *inner,
                reply,
                _budget,
            })
        }
        req => Ok(ClientMsg {
            req,
            reply,
            _budget,
        }),
    }
}

/// Whether `taker`'s replica here shows that it took `range` over from
/// group `from` (so that `from` may drop the keys it froze): the
/// replicated record of the move's last batch. Owning the range is no
/// proof: a replica restored from before the split that made `from` owns
/// it too.
fn took_over(taker: &KvStore, from: u32, range: KeyRange) -> bool {
    taker.has_taken(from, range)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A replica of the absorbing group restored from before the split
    /// that made the merged group (a restart from an old snapshot) owns the
    /// merged group's range without having taken its keys: that is no
    /// proof, or a node would drop the merged group's keys before any
    /// group held them. Only the replicated record of the move's last batch
    /// is.
    #[test]
    fn a_replica_from_before_the_split_is_no_proof_that_a_merge_took_the_keys() {
        use crate::kv::KvCommand;
        use paxos_core::{Epoch, StateMachine, Zxid};
        let keys: Vec<String> = (0..100).map(|i| format!("key-{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        // Group 0 as it was before splitting group 5 off: it owns the range
        // group 5 later gets, retires with, and merges back.
        let (mut g, range) = giving(&keys, 5, false);
        let before = KvStore::new().with_shard(2, KeyRange::of_base_group(0));
        let mut n = 100;
        let mut apply = |kv: &mut KvStore, op: KvOp| {
            n += 1;
            let cmd = KvCommand {
                principal: Bytes::new(),
                client: 9,
                seq: n,
                op,
            };
            kv.apply(Zxid::new(Epoch(1), n as u32), &cmd.to_bytes())
        };
        assert!(before.range().covers(&range) && before.incoming().is_none());
        assert!(
            !took_over(&before, 5, range),
            "a replica from before the split took nothing over"
        );
        // The real group 0: the split's end, then group 5's range taken
        // back through its log.
        apply(&mut g, KvOp::FinishMove { child: 5 });
        assert!(!took_over(&g, 5, range));
        apply(&mut g, KvOp::Absorb { from: 5, range });
        assert!(!took_over(&g, 5, range), "the move has not ended");
        apply(
            &mut g,
            KvOp::Ingest {
                from: 5,
                after: None,
                pairs: Vec::new(),
                last: true,
            },
        );
        assert!(took_over(&g, 5, range));
        assert!(!took_over(&g, 6, range), "taken from group 5, not 6");
    }

    /// A group retired into G whose range G no longer adjoins (G split
    /// after the retirement committed, before G's node applied it) is
    /// absorbed by the part of G next to it, a group split off G; that
    /// group reads the keys from its node's replica of the retired group,
    /// which names G as the group it retired into. A split's frozen keys
    /// are for its new group only.
    #[test]
    fn a_retired_groups_keys_are_there_for_the_group_of_g_that_absorbs_it() {
        let keys: Vec<String> = (0..100).map(|i| format!("key-{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (retired, range) = giving(&keys, 1, true);
        assert!(
            frozen_for(&retired, 1, range),
            "for the group it retired into"
        );
        assert!(
            frozen_for(&retired, 7, range),
            "for a group split off the one it retired into"
        );
        let (split, upper) = giving(&keys, 5, false);
        assert!(frozen_for(&split, 5, upper));
        assert!(
            !frozen_for(&split, 7, upper),
            "a split's keys are for its new group only"
        );
        assert!(!frozen_for(&retired, 7, upper), "only the range it gives");
    }

    /// A store of base group 0 (of 2) holding `keys`, that split at its
    /// midpoint to `child` (the upper keys frozen), or retired into
    /// `child` (all frozen) when `retire`.
    fn giving(keys: &[&str], child: u32, retire: bool) -> (KvStore, KeyRange) {
        use crate::kv::KvCommand;
        use paxos_core::{Epoch, StateMachine, Zxid};
        let mut kv = KvStore::new().with_shard(2, KeyRange::of_base_group(0));
        let mut n = 0;
        let mut apply = |kv: &mut KvStore, op: KvOp| {
            n += 1;
            let cmd = KvCommand {
                principal: Bytes::new(),
                client: 7,
                seq: n,
                op,
            };
            kv.apply(Zxid::new(Epoch(1), n as u32), &cmd.to_bytes());
        };
        for k in keys {
            if crate::shard::group_of(k.as_bytes(), 2) == 0 {
                let op = KvOp::Put {
                    key: Bytes::copy_from_slice(k.as_bytes()),
                    value: Bytes::from_static(b"v"),
                };
                apply(&mut kv, op);
            }
        }
        let op = if retire {
            KvOp::Retire { into: child }
        } else {
            KvOp::Split {
                at: KeyRange::of_base_group(0).midpoint().unwrap(),
                child,
                voters: vec![1],
                observers: vec![],
            }
        };
        apply(&mut kv, op);
        let (_, range) = kv.outgoing().expect("giving a range");
        (kv, range)
    }

    #[test]
    fn a_batch_is_never_made_from_the_key_list_of_another_move() {
        let keys: Vec<String> = (0..200).map(|i| format!("key-{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let (first, r1) = giving(&keys[..100], 5, false);
        let (second, r2) = giving(&keys[100..], 6, true);
        let mut list = None;
        let (pairs, _) = next_batch(&mut list, 0, r1, &first, None);
        assert!(!pairs.is_empty());
        // The same replica now takes another range over (its list of the
        // first move was never cleared): the batch is the second's keys.
        let (pairs, last) = next_batch(&mut list, 0, r2, &second, None);
        let expected: Vec<Bytes> = second.frozen_keys().into_iter().map(|(_, k)| k).collect();
        assert!(!expected.is_empty());
        assert!(last);
        assert_eq!(
            pairs.into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
            expected
        );
    }

    #[test]
    fn the_admission_window_halves_when_most_elections_expire_and_grows_with_successes() {
        let hold = Duration::from_millis(600);
        let t0 = Instant::now();
        let mut w = AdmissionWindow::new(256);
        assert_eq!(w.limit(), 256);
        // A period in which more elections expired than were established:
        // one cut, at the period's end.
        assert!(!w.on_freed(t0, hold, 0, 5));
        assert!(!w.on_freed(t0 + Duration::from_millis(300), hold, 2, 5));
        assert!(w.on_freed(t0 + hold, hold, 0, 1));
        assert_eq!(w.limit(), 128);
        // A storm where most finish keeps the window.
        assert!(!w.on_freed(t0 + hold * 2, hold, 100, 3));
        assert!(!w.on_freed(t0 + hold * 3, hold, 0, 1));
        assert_eq!(w.limit(), 228, "128 + the 100 established");
        // Periods of expiries halve it down to the floor.
        for i in 4..20u32 {
            w.on_freed(t0 + hold * i, hold, 0, 10);
        }
        assert_eq!(w.limit(), AdmissionWindow::FLOOR);
        // Successes add one each, up to the bound.
        w.on_freed(t0 + hold * 30, hold, 10, 0);
        assert_eq!(w.limit(), AdmissionWindow::FLOOR + 10);
        w.on_freed(t0 + hold * 31, hold, 10_000, 0);
        assert_eq!(w.limit(), 256);
        // A bound below the floor is kept.
        let mut small = AdmissionWindow::new(4);
        small.on_freed(t0, hold, 0, 3);
        small.on_freed(t0 + hold, hold, 0, 3);
        assert_eq!(small.limit(), 4);
    }

    /// A timer on the grid runs at the first grid point at or after its
    /// deadline: never early, at most one step late, and timers due within
    /// one step run together.
    #[test]
    fn the_timer_grid_never_runs_a_timer_early() {
        let step = 10_000_000; // 10 ms
        let ms = |m: u64| Time::from_nanos(m * 1_000_000);
        assert_eq!(grid_ceil(ms(20), step), ms(20));
        assert_eq!(grid_ceil(ms(21), step), ms(30));
        assert_eq!(grid_floor(ms(29), step), ms(20));
        for deadline in [ms(21), ms(25), Time::from_nanos(29_999_999)] {
            let due_at = grid_ceil(deadline, step);
            assert!(due_at >= deadline && due_at.as_nanos() - deadline.as_nanos() < step);
            // Not due before that point, due from it on.
            assert!(grid_floor(Time::from_nanos(due_at.as_nanos() - 1), step) < deadline);
            assert!(grid_floor(due_at, step) >= deadline);
        }
        // Deadlines 21, 25 and 29 ms all become due at 30 ms: one turn.
        let due: Vec<Time> = [ms(21), ms(25), ms(29)]
            .into_iter()
            .map(|t| grid_ceil(t, step))
            .collect();
        assert!(due.iter().all(|&t| t == ms(30)));
        // A zero step is taken as 1 ns: no division by zero.
        assert_eq!(grid_ceil(ms(3), 0), ms(3));
    }
}
