//! The fast leader election state machine.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use paxos_core::{Decision, Elector, Epoch, NodeId, PeerState, Time, VoteInfo, Zxid};

use crate::config::MAX_ROUND;
use crate::{ConfigError, ElectionConfig, Majority, Notification, QuorumSystem, Vote};
use paxos_core::rng::Rng;

/// Where the elector is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Built, `start_looking` not called yet: incoming messages are dropped.
    Idle,
    /// Looking for a leader.
    Looking,
    /// Settled on a leader: answers LOOKING peers with it.
    Settled,
}

/// What a settled peer last told us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Report {
    vote: Vote,
    round: u64,
    state: PeerState,
    locked: bool,
}

impl Report {
    /// What `msg` reports, with `vote` (the message's, checked).
    fn of(vote: Vote, msg: &Notification) -> Report {
        Report {
            vote,
            round: msg.round,
            state: msg.state,
            locked: msg.locked,
        }
    }
}

/// Whether vote `a` ranks above vote `b` under tie-break salt `salt` (see
/// [`Vote::ranked`]); no vote ranks below any vote.
fn vote_beats(salt: u64, a: Option<Vote>, b: Option<Vote>) -> bool {
    a.map(|v| v.ranked(salt)) > b.map(|v| v.ranked(salt))
}

/// The leader we settled on, as we announce it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Settled {
    vote: Vote,
    round: u64,
    /// The vote was elected in `round` (a decision, not a bare `settle`).
    elected: bool,
}

/// ZooKeeper-style fast leader election, sans-IO, with a lock step that
/// makes every round's decision unique.
///
/// See the crate documentation for the protocol and the driving loop.
#[derive(Clone, Debug)]
pub struct FastElection<Q: QuorumSystem = Majority> {
    id: NodeId,
    /// The voters of our current view (see [`Elector::reconfigure`]).
    quorum: Q,
    /// The voters of a newer membership our replica holds, not known to be
    /// committed: a quorum of them decides too (see
    /// [`Elector::reconfigure_with_pending`]).
    pending: Option<Q>,
    /// The other members of our view: sorted, distinct, disjoint from the
    /// voters and the pending voters.
    observers: Vec<NodeId>,
    /// We are a voter in our own view.
    voter: bool,
    /// The tie-break salt of [`ElectionConfig::tiebreak`]: every vote
    /// comparison goes through [`Self::beats`] with it.
    tiebreak: u64,
    /// We abstain (our replica is recovering): we never stand nor lock,
    /// and flag our notifications so that nobody counts them, whatever
    /// their view of our role.
    abstain: bool,
    settle_wait: Duration,
    base_timeout: Duration,
    max_timeout: Duration,
    stuck_retries: u32,
    max_round_lead: u64,
    rng: Rng,
    /// See [`ElectionConfig::connectivity_rule`].
    connectivity_rule: bool,
    connectivity_window: Duration,

    phase: Phase,
    state: PeerState,
    /// Our logical clock; never decreases.
    round: u64,
    me: Option<VoteInfo>,
    /// We stand as the nominee of a leader's hand-over in this looking
    /// period (see [`Elector::start_looking_nominated`]): our own vote
    /// carries [`Vote::nominated`]. Cleared when the period ends (settle,
    /// decision, a plain `start_looking`), when we abstain, and when a
    /// retry finds our own nominated vote still unlocked.
    nominated: bool,
    proposal: Option<Vote>,
    /// We locked `proposal` in `round`.
    locked: bool,
    /// A round in which we locked a vote and then let the lock go without
    /// leaving the round (we abstained): we lock nothing else in it.
    spent_lock_round: Option<u64>,
    /// Latest LOOKING vote of each other voter in `round`.
    views: BTreeMap<NodeId, Option<Vote>>,
    /// Lock claims of other voters in `round`.
    locks: BTreeMap<NodeId, Vote>,
    /// Latest report of each settled voter, whatever its round; and the
    /// LEADING report of a member our view calls an observer (a voter
    /// promoted in a view we have not caught up with yet), which only
    /// ever counts as that leader's own word (see `running_leader`).
    reports: BTreeMap<NodeId, Report>,
    settle_deadline: Option<Time>,
    retry_deadline: Option<Time>,
    retry_backoff: Duration,
    retries_since_lock: u32,
    settled: Option<Settled>,
    /// At most one queued notification per peer (a newer one replaces it).
    outbox: VecDeque<(NodeId, Notification)>,
    decision: Option<Decision>,
    /// When each peer was last heard from since we last started looking,
    /// and whether it then abstained.
    heard: BTreeMap<NodeId, (Time, bool)>,
    /// Members the host reports unreachable ([`Elector::set_reachable`]):
    /// sorted, distinct, members of our view only (so bounded by it).
    unreachable: Vec<NodeId>,
}

impl FastElection<Majority> {
    /// An elector deciding by simple majority of `config.voters`.
    pub fn new(config: ElectionConfig) -> Result<Self, ConfigError> {
        let quorum = Majority::new(config.voters.iter().copied())?;
        Self::with_quorum(config, quorum)
    }
}

impl<Q: QuorumSystem> FastElection<Q> {
    /// An elector deciding with `quorum`, whose voters must be
    /// `config.voters`.
    pub fn with_quorum(config: ElectionConfig, quorum: Q) -> Result<Self, ConfigError> {
        let mut voters = config.voters.clone();
        voters.sort_unstable();
        if voters.is_empty() {
            return Err(ConfigError::NoVoters);
        }
        if let Some(w) = voters.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::DuplicateNode { id: w[0] });
        }
        if voters != quorum.voters() {
            return Err(ConfigError::QuorumMismatch);
        }
        let mut observers = config.observers.clone();
        observers.sort_unstable();
        if let Some(w) = observers.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigError::DuplicateNode { id: w[0] });
        }
        if let Some(o) = observers.iter().find(|o| quorum.is_voter(**o)) {
            return Err(ConfigError::DuplicateNode { id: *o });
        }
        let voter = quorum.is_voter(config.id);
        if !voter && observers.binary_search(&config.id).is_err() {
            return Err(ConfigError::NotAMember { id: config.id });
        }
        if config.base_timeout.is_zero() || config.base_timeout > config.max_timeout {
            return Err(ConfigError::BadTimeouts {
                base_timeout: config.base_timeout,
                max_timeout: config.max_timeout,
            });
        }
        if config.connectivity_rule && config.connectivity_window < config.max_resend_interval() {
            return Err(ConfigError::ConnectivityWindowTooShort {
                window: config.connectivity_window,
                min: config.max_resend_interval(),
            });
        }
        if config.initial_round >= MAX_ROUND {
            return Err(ConfigError::RoundOutOfRange {
                round: config.initial_round,
            });
        }
        Ok(FastElection {
            id: config.id,
            quorum,
            pending: None,
            observers,
            voter,
            tiebreak: config.tiebreak,
            abstain: !config.voting,
            settle_wait: config.settle_wait,
            base_timeout: config.base_timeout,
            max_timeout: config.max_timeout,
            stuck_retries: config.stuck_retries.max(1),
            max_round_lead: config.max_round_lead,
            rng: Rng::new(config.seed),
            connectivity_rule: config.connectivity_rule,
            connectivity_window: config.connectivity_window,
            phase: Phase::Idle,
            state: PeerState::Looking,
            round: config.initial_round,
            me: None,
            nominated: false,
            proposal: None,
            locked: false,
            spent_lock_round: None,
            views: BTreeMap::new(),
            locks: BTreeMap::new(),
            reports: BTreeMap::new(),
            settle_deadline: None,
            retry_deadline: None,
            retry_backoff: config.base_timeout,
            retries_since_lock: 0,
            settled: None,
            outbox: VecDeque::new(),
            decision: None,
            heard: BTreeMap::new(),
            unreachable: Vec::new(),
        })
    }

    /// Our state as we announce it (LOOKING until the first decision).
    pub fn state(&self) -> PeerState {
        self.state
    }

    /// Our election round (logical clock). It never decreases; persist it
    /// after each input, before sending that input's messages, and pass it
    /// back as [`ElectionConfig::initial_round`] after a restart, or a
    /// restarted node may lock two different votes in one round.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Our current proposal while LOOKING.
    pub fn proposal(&self) -> Option<Vote> {
        self.proposal
    }

    /// The vote we locked, with its round, if we locked one in our current
    /// round. A node locks at most one vote per round.
    pub fn lock(&self) -> Option<(u64, Vote)> {
        match (self.locked, self.proposal) {
            (true, Some(v)) => Some((self.round, v)),
            _ => None,
        }
    }

    /// The leader we settled on, if not LOOKING.
    pub fn leader(&self) -> Option<NodeId> {
        match self.phase {
            Phase::Settled => self.settled.map(|s| s.vote.leader),
            _ => None,
        }
    }

    /// The quorum system in use (its voters are those of our current view).
    pub fn quorum(&self) -> &Q {
        &self.quorum
    }

    /// The quorum system of the pending voters, if our replica holds a
    /// membership newer than the one it knows committed (see
    /// [`Elector::reconfigure_with_pending`]).
    pub fn pending_quorum(&self) -> Option<&Q> {
        self.pending.as_ref()
    }

    /// Whether `id`'s vote, lock and report count: a voter of our view or
    /// of the pending membership.
    fn counted(&self, id: NodeId) -> bool {
        self.quorum.is_voter(id) || self.pending.as_ref().is_some_and(|p| p.is_voter(id))
    }

    /// Whether `id` may be elected under our view or the pending
    /// membership.
    fn can_lead(&self, id: NodeId) -> bool {
        self.quorum.can_lead(id) || self.pending.as_ref().is_some_and(|p| p.can_lead(id))
    }

    /// Whether `ids` form a quorum of our view or of the pending
    /// membership.
    fn is_quorum_of(&self, ids: impl Iterator<Item = NodeId>) -> bool {
        let ids: Vec<NodeId> = ids.collect();
        self.quorum.is_quorum(&mut ids.iter().copied())
            || self
                .pending
                .as_ref()
                .is_some_and(|p| p.is_quorum(&mut ids.iter().copied()))
    }

    /// Every member we talk to, in that order: the voters of our view, the
    /// pending voters that are not among them, and the observers.
    fn members(&self) -> Vec<NodeId> {
        let mut m: Vec<NodeId> = self.quorum.voters().to_vec();
        if let Some(p) = &self.pending {
            m.extend(p.voters().iter().filter(|v| !self.quorum.is_voter(**v)));
        }
        m.extend(&self.observers);
        m
    }

    /// The other members of our current view, sorted: they are talked to
    /// but never counted.
    pub fn observers(&self) -> &[NodeId] {
        &self.observers
    }

    /// Whether this node abstains (a recovering replica; see
    /// [`ElectionConfig::voting`]).
    pub fn is_abstaining(&self) -> bool {
        self.abstain
    }

    /// Whether our own vote counts: a voter that does not abstain.
    fn counts(&self) -> bool {
        self.voter && !self.abstain
    }

    /// Whether we stand as the nominee of a leader's hand-over: only a
    /// voter that counts and may lead ever claims it.
    pub fn is_nominated(&self) -> bool {
        self.nominated && self.counts() && self.can_lead(self.id)
    }

    fn self_vote(&self, now: Time) -> Option<Vote> {
        match self.me {
            Some(info) if self.counts() && self.can_lead(self.id) => Some(
                Vote::new(self.id, info)
                    .with_connected(self.connectivity_rule && self.quorum_connected(now))
                    .with_nominated(self.nominated),
            ),
            _ => None,
        }
    }

    /// Whether we heard from `peer` within the connectivity window.
    fn heard_recently(&self, peer: NodeId, now: Time) -> bool {
        self.heard
            .get(&peer)
            .is_some_and(|(at, _)| now.saturating_since(*at) <= self.connectivity_window)
    }

    /// Whether we count and heard, within the connectivity window and since
    /// we started looking, from enough voting voters to form a quorum with
    /// us. Abstaining voters do not count: no quorum of the kernel counts
    /// a recovering replica.
    pub fn quorum_connected(&self, now: Time) -> bool {
        if !self.counts() {
            return false;
        }
        let mut ids = self
            .heard
            .iter()
            .filter(|(p, (_, abstains))| !*abstains && self.heard_recently(**p, now))
            .map(|(p, _)| *p)
            .chain(std::iter::once(self.id));
        self.is_quorum_of(&mut ids)
    }

    /// Records that `from` was heard; true if it had not been heard within
    /// the window before (a link that just came up, as far as we know).
    fn note_heard(&mut self, from: NodeId, now: Time, abstains: bool) -> bool {
        let new = !self.heard_recently(from, now);
        self.heard.insert(from, (now, abstains));
        new
    }

    /// Whether `v` may be locked: a vote for a node that may lead in our
    /// view and, under the connectivity rule, whose candidate heard from a
    /// quorum when it stood.
    fn lockable(&self, v: Vote) -> bool {
        self.may_lead(v.leader) && (!self.connectivity_rule || v.connected)
    }

    /// The candidate of our proposal has itself locked it in our round:
    /// it saw a quorum hold it for the settle wait, which we may not see
    /// (we may reach only some of that quorum).
    fn candidate_vouches(&self, p: Vote) -> bool {
        self.connectivity_rule
            && p.leader != self.id
            && self
                .locks
                .get(&p.leader)
                .is_some_and(|l| l.same_candidate(&p))
    }

    /// A connected leader that reports, itself and recently, that it was
    /// elected: followed even if we cannot see a quorum of its voters (we
    /// may reach only the leader). Stale claims cost liveness only: the
    /// kernel's discovery and check-quorum decide whether it really leads.
    fn vouched_leader(&self, now: Time) -> Option<(Vote, u64)> {
        if !self.connectivity_rule {
            return None;
        }
        self.reports.iter().find_map(|(id, r)| {
            let vouches = r.state == PeerState::Leading
                && r.locked
                && r.vote.leader == *id
                && self.counted(*id)
                && self.may_lead(*id)
                && r.vote.connected
                && self.heard_recently(*id, now);
            vouches.then_some((r.vote, r.round))
        })
    }

    fn is_member(&self, id: NodeId) -> bool {
        self.counted(id) || self.observers.binary_search(&id).is_ok()
    }

    /// Whether a vote for `id` may be adopted, locked and elected here: a
    /// voter of our view that may lead, or an observer of our view. An
    /// observer never stands, so within one view no vote ever names one; a
    /// vote for it comes from a peer whose view makes it a voter (it was
    /// promoted and we do not know yet), and refusing it could leave the
    /// voters split between it and a candidate of ours forever. The kernel
    /// refuses to lead without being a voter of the membership in force.
    fn may_lead(&self, id: NodeId) -> bool {
        if self.counted(id) {
            self.can_lead(id)
        } else {
            self.is_member(id)
        }
    }

    fn notification(&self) -> Notification {
        match (self.phase, self.settled) {
            (Phase::Settled, Some(s)) => Notification {
                vote: Some(s.vote),
                round: s.round,
                state: self.state,
                locked: s.elected,
                abstain: self.abstain,
            },
            _ => Notification {
                vote: self.proposal,
                round: self.round,
                state: PeerState::Looking,
                locked: self.locked,
                abstain: self.abstain,
            },
        }
    }

    fn send(&mut self, to: NodeId, n: Notification) {
        debug_assert!(to != self.id, "never send to ourselves");
        if let Some(slot) = self.outbox.iter_mut().find(|(p, _)| *p == to) {
            slot.1 = n;
        } else {
            self.outbox.push_back((to, n));
        }
        debug_assert!(
            self.outbox.len()
                <= self.quorum.voters().len()
                    + self.pending.as_ref().map_or(0, |p| p.voters().len())
                    + self.observers.len(),
            "the outbox holds at most one message per peer"
        );
    }

    fn reply(&mut self, to: NodeId) {
        let n = self.notification();
        self.send(to, n);
    }

    /// Sends our notification to every other member of our view, voter or
    /// observer, whether we count or not: views may differ during a
    /// membership change, and a peer that counts us by its own view must
    /// hear our vote (one that does not simply ignores it).
    fn broadcast(&mut self) {
        let n = self.notification();
        let peers: Vec<NodeId> = self
            .members()
            .into_iter()
            .filter(|p| *p != self.id)
            .collect();
        for p in peers {
            self.send(p, n);
        }
    }

    fn jittered(&mut self, base: Duration) -> Duration {
        let base_nanos = u64::try_from(base.as_nanos()).unwrap_or(u64::MAX);
        base + Duration::from_nanos(self.rng.below(base_nanos))
    }

    fn enter_round(&mut self, round: u64) {
        assert!(round > self.round, "rounds only move forward");
        debug_assert!(round < MAX_ROUND, "rounds stay inside the round space");
        self.round = round;
        self.views.clear();
        self.locks.clear();
        self.locked = false;
        self.settle_deadline = None;
        self.retries_since_lock = 0;
    }

    /// A LOOKING member's notification whose vote names a node we do not
    /// know (its view lags ours: say it adopted the vote of a node since
    /// removed), without that vote: we can neither adopt nor count it, but
    /// the sender must still hear from us whom we follow or propose, or it
    /// may look for ever. A lock of that vote means nothing to us either.
    fn strip_unknown_vote(&self, from: NodeId, mut msg: Notification) -> Notification {
        let unknown = msg
            .vote
            .is_some_and(|v| !self.is_member(v.leader) && v.leader != self.id);
        if unknown && msg.state == PeerState::Looking && self.is_member(from) && from != self.id {
            tracing::debug!(node = %self.id, from = %from, vote = ?msg.vote, "looking peer votes for a node we do not know; taking its message without the vote");
            msg.vote = None;
            msg.locked = false;
        }
        msg
    }

    /// Why `msg` from `from` must be dropped, if it must.
    fn reject_reason(&self, from: NodeId, msg: &Notification) -> Option<&'static str> {
        if from == self.id {
            return Some("message claims to come from ourselves");
        }
        if !self.is_member(from) {
            return Some("sender is neither a voter nor an observer");
        }
        if msg.round >= MAX_ROUND {
            return Some("round beyond the round space");
        }
        if msg.round > self.round.saturating_add(self.max_round_lead) {
            return Some("round impossibly far ahead of ours");
        }
        // A vote for a member that may not lead in our view (an observer,
        // a weightless voter) is a view that differs from ours, not bad
        // input: it is received but never adopted, locked or elected. A
        // vote for a node we do not know at all is dropped.
        if let Some(v) = msg.vote {
            if !self.is_member(v.leader) && v.leader != self.id {
                return Some("vote for a node that is not a member");
            }
        }
        if msg.locked && msg.vote.is_none() {
            return Some("lock without a vote");
        }
        if msg.abstain && msg.state == PeerState::Leading {
            return Some("an abstaining node claims to lead");
        }
        // The sender's state is not checked against our view of its role:
        // during a membership change it may hold another view (a voter of
        // ours may observe in its own, and the other way round).
        match msg.state {
            PeerState::Looking => None,
            _ if msg.vote.is_none() => Some("a settled peer names no leader"),
            PeerState::Leading if msg.vote.map(|v| v.leader) != Some(from) => {
                Some("a peer claims to lead for another node")
            }
            PeerState::Following | PeerState::Observing
                if msg.vote.map(|v| v.leader) == Some(from) =>
            {
                Some("a peer claims to follow itself")
            }
            _ => None,
        }
    }

    /// Whether to answer a LOOKING notification from a peer we do not count
    /// (an observer, a non-member voter of another view, an abstaining
    /// node), while we look ourselves. Such a peer may count us, and may
    /// answer us in turn, so we answer only what teaches it something and
    /// cannot come back as the same question: a peer behind our round, or
    /// an unlocked one of our round whose vote is not better than ours
    /// unless we are locked (a peer that counts us adopts our vote or
    /// records our lock, and stops asking).
    fn answers_uncounted(&self, msg: &Notification) -> bool {
        msg.round < self.round
            || (msg.round == self.round
                && !msg.locked
                && (!self.beats(msg.vote, self.proposal) || self.locked))
    }

    fn on_looking(&mut self, now: Time, from: NodeId, msg: Notification) {
        // It looks again, unless this is a reordered message from before
        // its report (a node looks in a later round than it settled in).
        if self.reports.get(&from).is_some_and(|r| r.round < msg.round) {
            self.reports.remove(&from);
        }
        if msg.round > self.round {
            tracing::debug!(node = %self.id, from = %from, round = msg.round, "joining newer election round");
            self.enter_round(msg.round);
            let theirs = msg.vote.filter(|v| self.may_lead(v.leader));
            let mine = self.self_vote(now);
            self.proposal = if self.beats(theirs, mine) {
                theirs
            } else {
                mine
            };
            self.record(from, msg);
            self.broadcast();
        } else if msg.round < self.round {
            // It is behind: our vote makes it jump to our round.
            if self.counts() {
                self.reply(from);
            }
        } else {
            // Replies go only to unlocked senders, which then either adopt
            // our vote or have a better one: two nodes never ping-pong.
            if self.beats(self.proposal, msg.vote) {
                if self.counts() && !msg.locked {
                    // It has not seen our better vote (it may have been
                    // settled when we broadcast it): tell it now rather
                    // than at our next retry.
                    self.reply(from);
                }
            } else if self.beats(msg.vote, self.proposal) {
                if !msg.vote.is_some_and(|v| self.may_lead(v.leader)) {
                    // A vote for a voter of ours that may not lead (a
                    // weightless one): never adopted.
                } else if self.locked {
                    // Locked: we keep our vote for this round; say so.
                    if !msg.locked {
                        self.reply(from);
                    }
                } else {
                    tracing::debug!(node = %self.id, from = %from, vote = ?msg.vote, "adopting a better vote");
                    self.proposal = msg.vote;
                    self.settle_deadline = None;
                    self.broadcast();
                }
            }
            self.record(from, msg);
        }
    }

    /// Whether vote `a` ranks above vote `b` in this election's order (no
    /// vote ranks below any vote).
    fn beats(&self, a: Option<Vote>, b: Option<Vote>) -> bool {
        vote_beats(self.tiebreak, a, b)
    }

    fn record(&mut self, from: NodeId, msg: Notification) {
        debug_assert_eq!(msg.round, self.round, "views hold the current round only");
        // Within a round a node's vote only ever improves, so a worse vote
        // than the one we hold for it is a reordered old message: keep ours
        // (otherwise a stale message breaks a quorum and restarts the
        // settle wait).
        let salt = self.tiebreak;
        let seen = self.views.entry(from).or_insert(None);
        if vote_beats(salt, msg.vote, *seen) {
            *seen = msg.vote;
        }
        if let (true, Some(v)) = (msg.locked, msg.vote) {
            self.locks.insert(from, v);
        }
    }

    fn on_report(&mut self, from: NodeId, msg: Notification) {
        let Some(vote) = msg.vote else {
            debug_assert!(false, "validated: settled reports name a leader");
            return;
        };
        // It no longer looks in our round, unless this report is older
        // than our round: then it may be a reordered message from before
        // the sender started looking, and dropping its vote would break a
        // quorum we see and restart the settle wait.
        if msg.round >= self.round {
            self.views.remove(&from);
        }
        if msg.round == self.round && msg.locked {
            self.locks.insert(from, vote);
        }
        self.reports.insert(from, Report::of(vote, &msg));
    }

    /// A vote a quorum has locked in our round, counting our own lock.
    /// Locks count together when they name the same candidate, whatever
    /// they say about a nomination: a node that decided announces the vote
    /// without it (see [`Vote::nominated`]). Each node still locks one vote
    /// per round, so two quorums of locks still name one candidate.
    fn lock_quorum(&self) -> Option<Vote> {
        let own = self.lock().map(|(_, v)| v);
        let candidates = self
            .locks
            .values()
            .copied()
            .chain(own)
            .filter(|c| self.may_lead(c.leader));
        for c in candidates {
            let own_counts = own.is_some_and(|o| o.same_candidate(&c)) && self.counts();
            let mut ids = self
                .locks
                .iter()
                .filter(|(_, v)| v.same_candidate(&c))
                .map(|(id, _)| *id)
                .chain(own_counts.then_some(self.id));
            if self.is_quorum_of(&mut ids) {
                return Some(c);
            }
        }
        None
    }

    /// A running leader a quorum of settled voters follows, the leader
    /// itself reporting that it leads (ZooKeeper's out-of-election votes);
    /// with whether the leader says it was elected.
    ///
    /// The leader need not have been elected: after a hand-over every
    /// member takes the nominee from TAKEOVER and settles when its replica
    /// is established, usually before any round decides, and such a
    /// settled node reports its leader unlocked. A node that missed the
    /// hand-over (down or cut off) finds no looking peer to vote with and
    /// no locked report, so it must join on the reports alone or it looks
    /// until the next election. The backing is the quorum of reports
    /// itself: a node reports a leader only once it decided it or its
    /// replica was established under it, and we count only voters of our
    /// view, the leader's own LEADING report among them.
    fn running_leader(&self) -> Option<(Vote, u64, bool)> {
        for (id, r) in &self.reports {
            if r.state != PeerState::Leading || r.vote.leader != *id || !self.may_lead(*id) {
                continue;
            }
            // Only voters of our view are counted (a weighted system may
            // still weigh a former voter whose LEADING report we hold).
            let mut ids = self
                .reports
                .iter()
                .filter(|(i, o)| o.vote.leader == *id && self.counted(**i))
                .map(|(i, _)| *i);
            if self.is_quorum_of(&mut ids) {
                return Some((r.vote, r.round, r.locked));
            }
        }
        None
    }

    fn quorum_holds(&self, v: Vote) -> bool {
        let mut ids = self
            .views
            .iter()
            .filter(|(_, p)| **p == Some(v))
            .map(|(id, _)| *id)
            .chain((self.counts() && self.proposal == Some(v)).then_some(self.id));
        self.is_quorum_of(&mut ids)
    }

    /// Every voter (of our view and of the pending membership) holds `p`
    /// in our round, save those the host reports unreachable: no better
    /// vote can still come from a voter we can reach, so the settle wait
    /// (which waits for one) has nothing left to wait for. After a node
    /// fails this is the common case: its survivors' votes are all there
    /// are, and without this each of its groups waited the whole settle
    /// wait for a vote that never comes (10 000 groups of a killed node:
    /// every group led 3.2 to 3.5 s after the kill with the wait, 1.2 to
    /// 1.3 s without it). Locking early only ever costs a round: locks, not
    /// the wait, keep a round's decision unique.
    fn every_reachable_voter_holds(&self, p: Vote) -> bool {
        if self.counts() && self.proposal != Some(p) {
            return false;
        }
        let pending = self.pending.as_ref().map_or(&[][..], |q| q.voters());
        self.quorum
            .voters()
            .iter()
            .chain(pending)
            .filter(|&&v| v != self.id && self.unreachable.binary_search(&v).is_err())
            .all(|v| self.views.get(v).is_some_and(|w| *w == Some(p)))
    }

    /// Re-examines what we know after any change while LOOKING.
    fn evaluate(&mut self, now: Time) {
        if self.phase != Phase::Looking {
            return;
        }
        if let Some(v) = self.lock_quorum() {
            self.decide(v, self.round, true, "a quorum locked the vote");
            return;
        }
        if let Some((v, r, elected)) = self.running_leader() {
            // We announce the leader as elected in its round only if it
            // says so itself: an unlocked report names a leader no round
            // decided, and our word must not count as a lock of that round.
            self.decide(v, r, elected, "a quorum follows a running leader");
            return;
        }
        if let Some((v, r)) = self.vouched_leader(now) {
            self.decide(v, r, true, "a connected leader reports its election");
            return;
        }
        // A node that is no voter in its own view locks too (it never
        // stands): its lock counts for the peers whose view makes it a
        // voter, and for nobody else. Only an abstaining node never locks.
        if !self.may_lock() {
            return;
        }
        // We may have become connected since we stood: say so (a vote only
        // improves within a round).
        if let Some(me) = self.self_vote(now) {
            if self.beats(Some(me), self.proposal) {
                tracing::debug!(node = %self.id, vote = ?me, "standing with a better vote of our own");
                self.proposal = Some(me);
                self.settle_deadline = None;
                self.broadcast();
            }
        }
        match self.proposal {
            Some(p) if self.lockable(p) && self.candidate_vouches(p) => {
                self.lock_proposal();
                self.evaluate(now);
            }
            Some(p) if self.lockable(p) && self.quorum_holds(p) => {
                if self.settle_wait.is_zero() || self.every_reachable_voter_holds(p) {
                    self.lock_proposal();
                    self.evaluate(now);
                } else if self.settle_deadline.is_none() {
                    self.settle_deadline = Some(now + self.settle_wait);
                }
            }
            _ => self.settle_deadline = None,
        }
    }

    /// Whether we may lock our proposal now: not abstaining, not locked
    /// yet, and no lock given up earlier in this round (see
    /// [`set_voting`](Elector::set_voting)).
    fn may_lock(&self) -> bool {
        !self.abstain && !self.locked && self.spent_lock_round != Some(self.round)
    }

    fn lock_proposal(&mut self) {
        assert!(!self.locked, "a node locks at most one vote per round");
        assert!(
            self.spent_lock_round != Some(self.round),
            "a node locks at most one vote per round"
        );
        assert!(self.proposal.is_some(), "only a proposal can be locked");
        self.locked = true;
        self.retries_since_lock = 0;
        self.settle_deadline = None;
        tracing::debug!(node = %self.id, round = self.round, vote = ?self.proposal, "locked vote");
        self.broadcast();
    }

    /// Settles on `vote`'s leader, announcing it as decided in `round`; as
    /// elected there (a lock others may count) only if `elected`.
    fn decide(&mut self, vote: Vote, round: u64, elected: bool, why: &'static str) {
        assert!(
            self.may_lead(vote.leader),
            "only a node that may lead is elected"
        );
        // A node that is no voter in its own view never elects itself: the
        // locks or reports that seem to elect it were made under another
        // view (it locked itself as a voter, then reconfigured into an
        // observer, and a peer's lock from that older view still names
        // it). It keeps looking and follows a voter of its view instead.
        // Found by arbitrary_views_never_panic_and_same_view_decisions_agree:
        // such a node decided itself in the same round and view in which
        // the view's only voter decided itself.
        if vote.leader == self.id && !self.voter {
            tracing::debug!(node = %self.id, round, why, "not deciding ourselves: no voter in our own view");
            return;
        }
        // Nor does an abstaining (recovering) node: the locks that seem to
        // elect it were made for the vote it had before it lost its state
        // (it led; its peers locked it). Its replica would refuse to lead
        // and look again, and the same locks would decide it again at
        // once, without end (simulator seed 60343, multi-group, wipes).
        if vote.leader == self.id && self.abstain {
            tracing::debug!(node = %self.id, round, why, "not deciding ourselves: abstaining (recovering)");
            return;
        }
        self.round = self.round.max(round);
        self.state = if vote.leader == self.id {
            PeerState::Leading
        } else if self.voter {
            PeerState::Following
        } else {
            PeerState::Observing
        };
        self.phase = Phase::Settled;
        // The looking period ends: so does our nomination, and the leader
        // is announced without one (older builds can read that, and join).
        self.nominated = false;
        self.settled = Some(Settled {
            vote: vote.with_nominated(false),
            round,
            elected,
        });
        self.settle_deadline = None;
        self.retry_deadline = None;
        self.decision = Some(Decision {
            leader: vote.leader,
            round,
            epoch_hint: vote.epoch,
        });
        tracing::info!(node = %self.id, leader = %vote.leader, round, state = ?self.state, why, "election decided");
        self.broadcast();
    }

    /// Starts a looking period, standing as the nominee if `nominated`.
    fn look(&mut self, now: Time, me: VoteInfo, nominated: bool) {
        self.me = Some(me);
        self.nominated = nominated;
        self.phase = Phase::Looking;
        self.state = PeerState::Looking;
        self.settled = None;
        self.decision = None;
        self.reports.clear();
        // Connectivity is measured afresh in every looking period: what we
        // heard while settled says nothing about the links that failed.
        self.heard.clear();
        if self.counts() {
            if self.round + 1 < MAX_ROUND {
                self.enter_round(self.round + 1);
            } else {
                tracing::error!(node = %self.id, "round space exhausted; looking in the last round");
                self.views.clear();
                self.locks.clear();
                self.locked = false;
            }
        } else {
            // Nodes that do not count (observers in their own view,
            // abstaining ones) follow the voters' rounds and never start
            // one. A lock taken in this round stays: one vote per round.
            self.views.clear();
            self.locks.clear();
            self.settle_deadline = None;
        }
        if !self.locked {
            self.proposal = self.self_vote(now);
        }
        self.retry_backoff = self.base_timeout;
        let wait = self.jittered(self.base_timeout);
        self.retry_deadline = Some(now + wait);
        tracing::info!(node = %self.id, round = self.round, ?me, nominated = self.is_nominated(), "looking for a leader");
        self.broadcast();
        self.evaluate(now);
    }

    fn retry(&mut self, now: Time) {
        if self.locked {
            self.retries_since_lock += 1;
        }
        let standing_nominated = self
            .proposal
            .is_some_and(|p| p.leader == self.id && p.nominated);
        if self.is_nominated() && standing_nominated && !self.locked && self.round + 1 < MAX_ROUND {
            // Our nominated vote has not even been locked by a retry's time.
            // Voters of an older build cannot read it, and with them no
            // quorum may ever hold it while the newer voters keep it (it
            // beats everything the older ones propose): give the claim up
            // and stand again plainly, in a new round, where every voter
            // reads every vote.
            tracing::info!(node = %self.id, round = self.round, "nomination undecided; standing again without it");
            self.nominated = false;
            self.enter_round(self.round + 1);
            self.proposal = self.self_vote(now);
        } else if self.locked && self.counts() && self.retries_since_lock >= self.stuck_retries {
            if self.round + 1 < MAX_ROUND {
                tracing::info!(node = %self.id, round = self.round, "round stalled after locking; starting the next");
                self.enter_round(self.round + 1);
                self.proposal = self.self_vote(now);
            } else {
                tracing::error!(node = %self.id, "round space exhausted; cannot start another round");
            }
        }
        self.broadcast();
        self.retry_backoff = (self.retry_backoff * 2).min(self.max_timeout);
        let wait = self.jittered(self.retry_backoff);
        self.retry_deadline = Some(now + wait);
    }
}

impl<Q: QuorumSystem> Elector for FastElection<Q> {
    type Message = Notification;

    fn round(&self) -> Option<u64> {
        Some(self.round)
    }

    fn id(&self) -> NodeId {
        self.id
    }

    fn start_looking(&mut self, now: Time, me: VoteInfo) {
        self.look(now, me, false);
    }

    /// Starts looking as the nominee of a leader's hand-over: our own vote
    /// carries [`Vote::nominated`], so it wins over every vote as connected
    /// and as recent as ours, never over a more recent one. The claim holds
    /// until we settle or look again, or until a retry finds our own
    /// nominated vote still unlocked: then we stand again without it in a
    /// new round (older builds cannot read it; see [`crate::WIRE_VERSION`]).
    /// An observer or an abstaining voter never claims it.
    fn start_looking_nominated(&mut self, now: Time, me: VoteInfo) {
        self.look(now, me, true);
    }

    /// Remembers whether the host can reach `node` (a member of our view;
    /// others are ignored). A looking node holding a quorum for its
    /// proposal locks it at once when every voter it can reach holds it
    /// too, instead of waiting the settle wait for the others.
    fn set_reachable(&mut self, now: Time, node: NodeId, reachable: bool) {
        if node == self.id {
            return;
        }
        match self.unreachable.binary_search(&node) {
            Ok(i) if reachable => {
                self.unreachable.remove(i);
            }
            Err(i) if !reachable && self.is_member(node) => self.unreachable.insert(i, node),
            _ => return,
        }
        tracing::debug!(node = %self.id, peer = %node, reachable, "the host's word on a peer's reachability");
        self.evaluate(now);
    }

    fn settle(&mut self, _now: Time, state: PeerState, leader: NodeId, epoch: Epoch) {
        // Following or observing is the replica's call, by the membership
        // in force, which may differ from our view while a change commits;
        // so may whether the leader may lead. We only require a known node.
        let consistent = match state {
            PeerState::Looking => false,
            PeerState::Leading => leader == self.id,
            PeerState::Following | PeerState::Observing => {
                leader != self.id && self.is_member(leader)
            }
        };
        if !consistent {
            tracing::warn!(node = %self.id, ?state, leader = %leader, "ignoring an inconsistent settle");
            return;
        }
        let settled = match self.settled {
            Some(s) if s.vote.leader == leader => s,
            _ => {
                // The usual path after a leader's hand-over (the members
                // take the nominee from TAKEOVER before any round decides),
                // and for a node that joins a running leader.
                tracing::debug!(node = %self.id, leader = %leader, "settling on a leader this elector did not elect");
                Settled {
                    vote: Vote {
                        leader,
                        epoch,
                        zxid: Zxid::ZERO,
                        connected: false,
                        nominated: false,
                    },
                    round: self.round,
                    elected: false,
                }
            }
        };
        self.settled = Some(settled);
        self.phase = Phase::Settled;
        self.nominated = false;
        self.state = state;
        self.settle_deadline = None;
        self.retry_deadline = None;
    }

    fn handle_message(&mut self, now: Time, from: NodeId, msg: Notification) {
        let msg = self.strip_unknown_vote(from, msg);
        if let Some(reason) = self.reject_reason(from, &msg) {
            if !self.is_member(from) && from != self.id {
                // Expected while a membership changes (a new machine asks
                // before it is added, a removed one keeps asking; the
                // transport already refused any node it does not know),
                // and with many groups per node it repeats in every group
                // on every retry: thousands of warnings while a machine
                // joins. Not a warning, then.
                tracing::debug!(node = %self.id, from = %from, ?msg, reason, "dropping election message");
                return;
            }
            tracing::warn!(node = %self.id, from = %from, ?msg, reason, "dropping election message");
            return;
        }
        if self.phase == Phase::Idle {
            tracing::debug!(node = %self.id, from = %from, "not started; dropping election message");
            return;
        }
        let new_link = self.note_heard(from, now, msg.abstain);
        if new_link && self.connectivity_rule && self.phase == Phase::Looking && self.counts() {
            // It may not have heard from us either: tell it at once rather
            // than at our next re-send, so both sides learn the link.
            self.reply(from);
        }
        if self.phase == Phase::Settled {
            // Every looking member is told whom we follow, whatever our
            // role: a peer whose view makes us a voter counts our report
            // (a looking node never answers a report, so this cannot loop).
            if msg.state == PeerState::Looking {
                self.reply(from);
            }
            return;
        }
        if !self.counted(from) && !msg.abstain {
            match msg.state {
                // A member our view calls an observer says it leads: in
                // its own view (and the group's, if we lag a promotion) it
                // is a voter. Its report counts as the leader's own word
                // only, next to a quorum of our voters following it
                // (`running_leader`); never as a vote or a lock.
                PeerState::Leading => {
                    if let Some(vote) = msg.vote {
                        self.reports.insert(from, Report::of(vote, &msg));
                        self.evaluate(now);
                    }
                    return;
                }
                // It looks again (unless this is a reordered older message).
                PeerState::Looking => {
                    if self.reports.get(&from).is_some_and(|r| r.round < msg.round) {
                        self.reports.remove(&from);
                    }
                }
                PeerState::Following | PeerState::Observing => {}
            }
        }
        if !self.counted(from) || msg.abstain {
            // A peer we do not count (an observer in our view, whatever it
            // holds itself to be, or an abstaining node) asking: tell it
            // what we know if that helps it; its vote never counts here.
            if msg.state == PeerState::Looking
                && (self.counts() || self.locked)
                && self.answers_uncounted(&msg)
            {
                self.reply(from);
            }
            return;
        }
        // A voter of our view: its vote counts whatever it holds itself to
        // be. A settled one reports whom it follows (OBSERVING if it is an
        // observer in its own view, which counts here as following).
        match msg.state {
            PeerState::Looking => self.on_looking(now, from, msg),
            PeerState::Following | PeerState::Leading | PeerState::Observing => {
                self.on_report(from, msg)
            }
        }
        self.evaluate(now);
    }

    fn handle_timeout(&mut self, now: Time) {
        if self.phase != Phase::Looking {
            return;
        }
        if self.settle_deadline.is_some_and(|d| d <= now) {
            self.settle_deadline = None;
            let holds = self
                .proposal
                .is_some_and(|p| self.lockable(p) && self.quorum_holds(p));
            if self.may_lock() && holds {
                self.lock_proposal();
            }
            self.evaluate(now);
        }
        if self.phase == Phase::Looking && self.retry_deadline.is_some_and(|d| d <= now) {
            self.retry(now);
            self.evaluate(now);
        }
    }

    fn poll_timeout(&self) -> Option<Time> {
        if self.phase != Phase::Looking {
            return None;
        }
        match (self.settle_deadline, self.retry_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn poll_transmit(&mut self) -> Option<(NodeId, Notification)> {
        self.outbox.pop_front()
    }

    fn poll_decision(&mut self) -> Option<Decision> {
        self.decision.take()
    }

    /// Takes a new view of the membership: from now on only `voters` count
    /// (quorums, locks, reports, decisions) and we talk to every node of
    /// `voters` and `observers`. See the crate docs ("Membership changes").
    ///
    /// - The quorum system is rebuilt with [`QuorumSystem::with_voters`]. If
    ///   it refuses (a [`Weighted`](crate::Weighted) system without a
    ///   weight for a new voter, no voters at all), the error is logged and
    ///   the previous system stays, its voters still counting; the other
    ///   named nodes are then talked to as observers. That costs liveness
    ///   only: the kernel counts its own quorums.
    /// - The views, locks and reports of nodes that no longer vote are
    ///   dropped from the current round's tallies. A decision already made
    ///   (and the leader we settled on) is kept.
    /// - We stand only if we are a voter (and do not abstain): a node made
    ///   a voter while looking stands at once in the current round. A
    ///   proposal for a voter that was demoted or removed is withdrawn
    ///   unless we locked it: a voter of the new view stands again in a new
    ///   round (the others join it there), a non-voter waits for the
    ///   voters' votes.
    /// - Duplicates are ignored; our own id may be anywhere or nowhere (a
    ///   removed node still asks the members who leads).
    fn reconfigure(&mut self, now: Time, voters: &[NodeId], observers: &[NodeId]) {
        self.reconfigure_with_pending(now, voters, &[], observers);
    }

    /// [`reconfigure`](Elector::reconfigure) with the voters of a newer
    /// membership not known committed (`pending`, empty for none): from now
    /// on a quorum of `voters` or of `pending` decides, and the votes,
    /// locks and reports of both sets count. The pending system is built
    /// with [`QuorumSystem::with_voters`] from the current one; if that
    /// refuses, the error is logged and only `voters` decide.
    fn reconfigure_with_pending(
        &mut self,
        now: Time,
        voters: &[NodeId],
        pending: &[NodeId],
        observers: &[NodeId],
    ) {
        let mut wanted = voters.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut wanted_pending = pending.to_vec();
        wanted_pending.sort_unstable();
        wanted_pending.dedup();
        if wanted_pending == wanted {
            wanted_pending.clear();
        }
        let before = self.quorum.voters().to_vec();
        let pending_before: Option<Vec<NodeId>> =
            self.pending.as_ref().map(|p| p.voters().to_vec());
        // Our proposal names a voter of the view we leave.
        let for_voter = self.proposal.is_some_and(|p| self.counted(p.leader));
        if wanted != before {
            match self.quorum.with_voters(&wanted) {
                Ok(q) => self.quorum = q,
                Err(error) => {
                    tracing::error!(node = %self.id, %error, voters = ?wanted,
                        "cannot rebuild the quorum system for the new voters; keeping the previous one (the kernel still counts its quorums under the membership in force)");
                }
            }
        }
        if pending_before.as_deref() != Some(wanted_pending.as_slice()) {
            self.pending = if wanted_pending.is_empty() {
                None
            } else {
                match self.quorum.with_voters(&wanted_pending) {
                    Ok(q) => Some(q),
                    Err(error) => {
                        tracing::error!(node = %self.id, %error, pending = ?wanted_pending,
                            "cannot build the quorum system of the pending membership; only the committed one decides");
                        None
                    }
                }
            };
        }
        let mut others: Vec<NodeId> = voters
            .iter()
            .chain(pending)
            .chain(observers)
            .copied()
            .filter(|n| !self.counted(*n))
            .collect();
        others.sort_unstable();
        others.dedup();
        let voter = self.counted(self.id);
        let pending_now: Option<Vec<NodeId>> = self.pending.as_ref().map(|p| p.voters().to_vec());
        if others == self.observers
            && self.quorum.voters() == before.as_slice()
            && pending_now == pending_before
        {
            // Nothing we count or talk to changed.
            return;
        }
        self.observers = others;
        self.voter = voter;
        tracing::info!(node = %self.id, voters = ?self.quorum.voters(), pending = ?pending_now, observers = ?self.observers, voter,
            "election membership changed");
        let counted: Vec<NodeId> = self
            .members()
            .into_iter()
            .filter(|n| self.counted(*n))
            .collect();
        self.views.retain(|n, _| counted.contains(n));
        self.locks.retain(|n, _| counted.contains(n));
        self.reports.retain(|n, _| counted.contains(n));
        let members = self.members();
        self.heard.retain(|n, _| members.contains(n));
        self.unreachable.retain(|n| members.contains(n));
        self.outbox.retain(|(to, _)| members.contains(to));
        if self.phase != Phase::Looking {
            // Settled (the decision is kept; askers are answered) or not
            // started yet.
            return;
        }
        // A proposal for a voter that was demoted or removed, or for a node
        // that may not lead at all any more, is withdrawn (a vote for an
        // observer of ours adopted from a peer of another view is kept: it
        // may be a voter there).
        let stale = self
            .proposal
            .is_some_and(|p| (for_voter && !self.counted(p.leader)) || !self.may_lead(p.leader));
        if stale && !self.locked {
            if self.counts() && self.round + 1 < MAX_ROUND {
                tracing::info!(node = %self.id, round = self.round, "our proposal may no longer lead; standing again in a new round");
                self.enter_round(self.round + 1);
                self.proposal = self.self_vote(now);
            } else {
                // A non-voter withdraws; it adopts a voter's vote next.
                self.proposal = None;
            }
        }
        self.broadcast();
        self.evaluate(now);
    }

    /// Abstains (`false`) or votes again (`true`); see
    /// [`ElectionConfig::voting`]. It applies whatever our role in our own
    /// view: a recovering observer abstains too, so that a peer whose view
    /// makes it a voter never counts it. Abstaining drops our own proposal
    /// and lock for the current round (peers never count them once
    /// flagged), and we lock nothing else in that round; voting again while
    /// LOOKING starts a new round if we are a voter, standing for
    /// ourselves, so that our vote is heard at once.
    fn set_voting(&mut self, now: Time, voting: bool) {
        if self.abstain != voting {
            return;
        }
        self.abstain = !voting;
        tracing::info!(node = %self.id, voting, "election participation changed");
        if self.abstain {
            // A recovering replica lost the history it was nominated for.
            self.nominated = false;
            if self.locked {
                self.spent_lock_round = Some(self.round);
            }
            self.locked = false;
            self.settle_deadline = None;
            self.proposal = self.proposal.filter(|v| v.leader != self.id);
        }
        match self.phase {
            Phase::Looking => {
                if let Some(me) = self.me {
                    // The same looking period: a nomination carries over.
                    self.look(now, me, self.nominated);
                }
            }
            // Peers learn our new status now rather than at our next answer.
            Phase::Settled => self.broadcast(),
            // Not started: nothing said yet, nothing to correct.
            Phase::Idle => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().copied().map(NodeId).collect()
    }

    fn elector(id: u64, voters: &[u64]) -> FastElection {
        FastElection::new(ElectionConfig {
            id: NodeId(id),
            voters: ids(voters),
            seed: id,
            ..ElectionConfig::default()
        })
        .expect("valid config")
    }

    fn at(ms: u64) -> Time {
        Time::ZERO + Duration::from_millis(ms)
    }

    fn info(epoch: u32, counter: u32) -> VoteInfo {
        VoteInfo {
            current_epoch: Epoch(epoch),
            last_zxid: Zxid::new(Epoch(epoch), counter),
        }
    }

    fn drain(e: &mut FastElection) -> Vec<(NodeId, Notification)> {
        std::iter::from_fn(|| e.poll_transmit()).collect()
    }

    /// The looking node `asker` tells `peer` its current vote, and hears
    /// every answer.
    fn ask(now: Time, asker: &mut FastElection, peer: &mut FastElection) {
        drain(asker);
        peer.handle_message(now, asker.id(), asker.notification());
        for (dest, n) in drain(peer) {
            if dest == asker.id() {
                asker.handle_message(now, peer.id(), n);
            }
        }
    }

    /// Nodes `ids` looked in one round, then took `leader` from a
    /// hand-over (TAKEOVER) rather than from an election: each looked
    /// again (the leader as the nominee) and settled when its replica was
    /// established, before any round decided.
    fn handed_over(ids: &[u64], voters: &[u64], leader: u64) -> Vec<FastElection> {
        let mut out = Vec::new();
        for &id in ids {
            let mut e = elector(id, voters);
            e.start_looking(at(0), info(1, 5));
            if id == leader {
                e.start_looking_nominated(at(1), info(1, 5));
                e.settle(at(2), PeerState::Leading, NodeId(leader), Epoch(2));
            } else {
                e.start_looking(at(1), info(1, 5));
                e.settle(at(2), PeerState::Following, NodeId(leader), Epoch(2));
            }
            drain(&mut e);
            out.push(e);
        }
        out
    }

    #[test]
    fn a_node_away_during_a_hand_over_joins_the_nominee_on_a_quorum_of_reports() {
        // Nodes 1 and 2 handed over to 2 in round 2; node 3 was away and
        // looks in round 1.
        let mut settled = handed_over(&[1, 2], &[1, 2, 3], 2);
        assert!(
            settled.iter().all(|e| e.round() == 2),
            "the hand-over round is ahead of the returning node's"
        );
        let mut back = elector(3, &[1, 2, 3]);
        back.start_looking(at(10), info(1, 3));
        assert_eq!(back.round(), 1);
        // Node 3 hears node 1 first: one report is no quorum.
        ask(at(11), &mut back, &mut settled[0]);
        assert_eq!(back.poll_decision(), None, "one follower is no quorum");
        assert_eq!(back.state(), PeerState::Looking);
        // The leader's own report completes the quorum: node 3 joins it,
        // in the round the leader reports, although no round elected it.
        ask(at(13), &mut back, &mut settled[1]);
        let d = back.poll_decision().expect("a quorum reports the leader");
        assert_eq!((d.leader, d.round), (NodeId(2), 2));
        assert_eq!(back.state(), PeerState::Following);
        // It announces the leader unlocked: it saw no round decide, so
        // its word must not count as a lock of round 2.
        let said = drain(&mut back);
        assert!(!said.is_empty());
        for (_, n) in said {
            assert_eq!(n.state, PeerState::Following);
            assert_eq!(n.vote.map(|v| v.leader), Some(NodeId(2)));
            assert_eq!(n.round, 2);
            assert!(!n.locked, "an unelected leader is never announced locked");
        }
    }

    #[test]
    fn an_unelected_leader_is_joined_only_with_its_own_report_and_a_quorum() {
        let voters = [1, 2, 3, 4, 5];
        let mut settled = handed_over(&[1, 2, 4, 5], &voters, 2);
        let mut back = elector(3, &voters);
        back.start_looking(at(10), info(1, 3));
        // The leader alone: one of five.
        ask(at(11), &mut back, &mut settled[1]);
        assert_eq!(back.poll_decision(), None, "the leader alone is no quorum");
        // The leader and one follower: two of five.
        ask(at(13), &mut back, &mut settled[0]);
        assert_eq!(back.poll_decision(), None, "two of five are no quorum");
        // A third report makes the quorum.
        ask(at(15), &mut back, &mut settled[2]);
        assert_eq!(back.poll_decision().map(|d| d.leader), Some(NodeId(2)));

        // Without the leader's own report, followers alone are never
        // enough, however many.
        let mut settled = handed_over(&[1, 2, 4, 5], &voters, 2);
        let mut back = elector(3, &voters);
        back.start_looking(at(10), info(1, 3));
        for i in [0, 2, 3] {
            ask(at(11), &mut back, &mut settled[i]);
        }
        assert_eq!(
            back.poll_decision(),
            None,
            "followers cannot speak for the leader"
        );
    }

    fn member(id: u64, voters: &[u64], observers: &[u64]) -> FastElection {
        FastElection::new(ElectionConfig {
            id: NodeId(id),
            voters: ids(voters),
            observers: ids(observers),
            seed: id,
            ..ElectionConfig::default()
        })
        .expect("valid config")
    }

    /// Node `id` of the view (`voters`, `observers`) settled on `leader`
    /// by its replica (no round decided it).
    fn settled_on(id: u64, voters: &[u64], observers: &[u64], leader: u64) -> FastElection {
        let mut e = member(id, voters, observers);
        e.start_looking(at(0), info(1, 5));
        let state = if id == leader {
            PeerState::Leading
        } else {
            PeerState::Following
        };
        e.settle(at(1), state, NodeId(leader), Epoch(2));
        drain(&mut e);
        e
    }

    /// Found by the simulator's rejoin check (`simulate --full --seed 43`):
    /// node 100 was promoted and node 2 removed while 100 was down; back,
    /// its elector still sees 100 as an observer of (1, 2, 3) and adopts
    /// the removed node 2's vote. The members (1, 3, 100) dropped its whole
    /// notification for naming a node they do not know, so they never told
    /// it whom they follow and it looked for ever.
    #[test]
    fn a_settled_member_answers_a_looking_peer_whose_vote_names_an_unknown_node() {
        let view = [1, 3, 100];
        let mut leader = settled_on(1, &view, &[], 1);
        let mut follower = settled_on(3, &view, &[], 1);
        let mut back = member(100, &[1, 2, 3], &[100]);
        back.start_looking(at(10), info(1, 3));
        // The removed node 2, looking, stands for itself.
        back.handle_message(
            at(10),
            NodeId(2),
            Notification {
                vote: Some(Vote::new(NodeId(2), info(1, 4))),
                round: 3,
                state: PeerState::Looking,
                locked: false,
                abstain: false,
            },
        );
        assert_eq!(back.proposal().map(|v| v.leader), Some(NodeId(2)));
        ask(at(11), &mut back, &mut leader);
        ask(at(12), &mut back, &mut follower);
        let d = back
            .poll_decision()
            .expect("the members answer, and their reports make a quorum of the stale view");
        assert_eq!(d.leader, NodeId(1));
        // Nothing of the unknown vote was taken: the members still settled.
        assert_eq!(leader.leader(), Some(NodeId(1)));
        assert_eq!(follower.leader(), Some(NodeId(1)));
    }

    /// Found by the simulator's rejoin check (`simulate --full --seed
    /// 620`): node 3 missed the promotion of 100, which now leads; its
    /// elector still sees 100 as an observer and ignored 100's own LEADING
    /// report, so the voters' reports alone never let it join.
    #[test]
    fn a_leader_our_view_calls_an_observer_is_joined_on_its_report_and_a_quorum() {
        let view = [1, 2, 100];
        let mut leader = settled_on(100, &view, &[3], 100);
        let mut f1 = settled_on(1, &view, &[3], 100);
        let mut back = member(3, &[1, 2, 3], &[100]);
        back.start_looking(at(10), info(1, 3));
        ask(at(11), &mut back, &mut f1);
        assert_eq!(back.poll_decision(), None, "one follower is no quorum");
        ask(at(12), &mut back, &mut leader);
        assert_eq!(
            back.poll_decision(),
            None,
            "the leader's report is not a voter's: still one of three"
        );
        let mut f2 = settled_on(2, &view, &[3], 100);
        ask(at(13), &mut back, &mut f2);
        let d = back
            .poll_decision()
            .expect("the leader's own report and a quorum of our voters following it");
        assert_eq!(d.leader, NodeId(100));

        // Without the leader's own report, the followers do not suffice.
        let mut back = member(3, &[1, 2, 3], &[100]);
        back.start_looking(at(20), info(1, 3));
        let mut f1 = settled_on(1, &view, &[3], 100);
        let mut f2 = settled_on(2, &view, &[3], 100);
        ask(at(21), &mut back, &mut f1);
        ask(at(22), &mut back, &mut f2);
        assert_eq!(
            back.poll_decision(),
            None,
            "followers cannot speak for the leader"
        );
    }
}
