//! Configuration of a [`FastElection`](crate::FastElection).

use std::time::Duration;

use paxos_core::NodeId;

/// Rounds at or beyond this are impossible: no cluster produces them in its
/// lifetime (2^48 elections at one per microsecond take nine years), so a
/// notification carrying one is corrupt or hostile and is dropped. Keeping
/// far from `u64::MAX` also means our own round can never overflow.
pub const MAX_ROUND: u64 = 1 << 48;

/// Everything a [`FastElection`](crate::FastElection) needs to start.
///
/// Fill the ids and keep the defaults for the rest:
/// `ElectionConfig { id, voters, ..ElectionConfig::default() }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// This node.
    pub id: NodeId,
    /// The voting members (this node among them unless it observes).
    pub voters: Vec<NodeId>,
    /// Non-voting members: they learn the leader but never vote and are
    /// never elected.
    pub observers: Vec<NodeId>,
    /// How long a quorum must hold our proposal, with no better vote
    /// arriving, before we lock it (ZooKeeper's finalize wait).
    pub settle_wait: Duration,
    /// The first retry timeout: with no decision by then, re-send our vote.
    /// Each retry doubles it up to `max_timeout`, and every deadline adds a
    /// uniformly random extra of up to the timeout itself.
    pub base_timeout: Duration,
    /// The cap of the exponential backoff; default 400 ms, so that a LOOKING
    /// node re-sends its vote at least every
    /// [`max_resend_interval`](Self::max_resend_interval) (800 ms). Keep it
    /// small: after a partition heals nobody sends to a node that is still
    /// looking (settled nodes only answer), so this gap is how long it may
    /// stay out of service. The cost is a few small messages per gap.
    pub max_timeout: Duration,
    /// Retries without a decision after locking before we give the round up
    /// and start the next one (locks split between candidates can stall a
    /// round when nodes are down).
    pub stuck_retries: u32,
    /// A notification whose round is more than this ahead of ours is
    /// impossible and dropped. A freshly restarted node starts at round 0,
    /// so this must exceed the number of elections a cluster will ever run.
    pub max_round_lead: u64,
    /// The round to resume from after a restart (see
    /// [`FastElection::round`](crate::FastElection::round)); 0 for a new node.
    pub initial_round: u64,
    /// Seed of the retry-timeout randomness (use a different one per node).
    pub seed: u64,
    /// How the last tie between candidates is broken (see [`Vote`]): 0
    /// (the default) prefers the highest node id; any other value ranks
    /// node ids by a hash salted with it, a different order per salt.
    /// Every elector of one group must use the same value. A host of many
    /// groups gives each group its own (its group number), so that leaders
    /// spread over the nodes at every election instead of all landing on
    /// the highest id, and a node's failure leaves only its share of the
    /// groups to elect.
    ///
    /// [`Vote`]: crate::Vote
    pub tiebreak: u64,
    /// Whether this node's votes count. `false` for a node whose replica
    /// is recovering (it lost its durable state): it then abstains, i.e.
    /// never stands, never locks, and flags every notification so that
    /// peers never count it, but still learns who leads like an observer.
    /// Switch with [`FastElection::set_voting`](crate::FastElection) (the
    /// `Elector::set_voting` of `paxos-core`). An observer abstains too:
    /// during a membership change a peer's view may make it a voter.
    pub voting: bool,
    /// The connectivity rule (on by default): a candidate says in its vote
    /// whether it heard from a quorum of voters within
    /// `connectivity_window`; connected candidates rank first, only their
    /// votes are locked, a node locks the vote its candidate locked, and a
    /// node follows a connected leader that reports its own election. Off,
    /// the election behaves and encodes exactly as wire version 1 did: turn
    /// it off on every node first when upgrading a cluster of older builds
    /// (they cannot read version 2 notifications), then on again.
    pub connectivity_rule: bool,
    /// How recently a peer must have been heard from to count as
    /// connected. At least [`max_resend_interval`](Self::max_resend_interval),
    /// or a looking peer's silence between two re-sends would look like a
    /// lost link.
    pub connectivity_window: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            id: NodeId(0),
            voters: Vec::new(),
            observers: Vec::new(),
            settle_wait: Duration::from_millis(50),
            base_timeout: Duration::from_millis(200),
            max_timeout: Duration::from_millis(400),
            stuck_retries: 2,
            max_round_lead: 1 << 32,
            initial_round: 0,
            seed: 0,
            tiebreak: 0,
            voting: true,
            connectivity_rule: true,
            connectivity_window: Duration::from_millis(1600),
        }
    }
}

impl ElectionConfig {
    /// The longest a LOOKING node stays silent before it re-sends its vote
    /// (`2 * max_timeout`: the backoff is capped at `max_timeout` and each
    /// deadline adds a random extra below the backoff). After a partition
    /// heals, nobody sends to a node that is still looking (settled nodes
    /// only answer), so this bounds how long it takes to rejoin.
    pub fn max_resend_interval(&self) -> Duration {
        self.max_timeout.saturating_mul(2)
    }
}

/// A configuration that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The voter set is empty.
    #[error("the election has no voters")]
    NoVoters,
    /// A node is listed twice (among voters, observers or weights).
    #[error("node {id} is listed twice")]
    DuplicateNode {
        /// The repeated id.
        id: NodeId,
    },
    /// This node is neither a voter nor an observer.
    #[error("this node {id} is neither a voter nor an observer")]
    NotAMember {
        /// This node's id.
        id: NodeId,
    },
    /// The quorum system's voters differ from `ElectionConfig::voters`.
    #[error("the quorum system's voters differ from the configured voters")]
    QuorumMismatch,
    /// Weights sum to zero: no set is a quorum.
    #[error("the voters' weights sum to zero")]
    ZeroTotalWeight,
    /// A membership change names a voter the weighted quorum system has no
    /// weight for (see [`Weighted::with_spare_weights`](crate::Weighted::with_spare_weights)).
    #[error("voter {id} has no known weight in the weighted quorum system")]
    NoWeight {
        /// The voter without a weight.
        id: NodeId,
    },
    /// Weights sum beyond `u64::MAX`.
    #[error("the voters' weights overflow a u64")]
    WeightOverflow,
    /// `base_timeout` is zero or exceeds `max_timeout`.
    #[error(
        "base_timeout {base_timeout:?} must be positive and at most max_timeout {max_timeout:?}"
    )]
    BadTimeouts {
        /// The configured base.
        base_timeout: Duration,
        /// The configured cap.
        max_timeout: Duration,
    },
    /// `connectivity_window` is shorter than the longest gap between two
    /// re-sends of a looking peer.
    #[error("connectivity window {window:?} is shorter than the re-send interval {min:?}")]
    ConnectivityWindowTooShort {
        /// The configured window.
        window: Duration,
        /// [`ElectionConfig::max_resend_interval`].
        min: Duration,
    },
    /// `initial_round` is at or beyond [`MAX_ROUND`].
    #[error("initial round {round} is beyond the round space ({MAX_ROUND})")]
    RoundOutOfRange {
        /// The configured round.
        round: u64,
    },
}
