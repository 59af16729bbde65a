//! `paxos-election`: sans-IO, ZooKeeper-style fast leader election by
//! `(current_epoch, last_zxid, node id)`; the last tie can instead go by a
//! per-group salted order of the ids
//! ([`ElectionConfig::tiebreak`]), so that many groups on the same nodes
//! spread their leaders.
//!
//! [`FastElection`] implements `paxos-core`'s [`Elector`] seam. It performs
//! no IO and reads no clock: the caller feeds it messages and timeouts with
//! the current [`Time`], and drains the messages it wants sent and the
//! [`Decision`] it reaches. Use it alone whenever a group of nodes must agree
//! on the one with the most recent history (any replicated log: ZAB,
//! Multi-Paxos, primary-backup), with whatever transport and timer you have.
//!
//! # Protocol
//!
//! A [`Vote`] names a proposed leader with its `(epoch, zxid)`, whether
//! it was *connected* and whether it stands *nominated* (see below); votes
//! are ordered by `(connected, epoch, zxid, nominated, id)`. Every message
//! is a [`Notification`]: the sender's vote, its election round, its
//! [`PeerState`] and a *locked* flag.
//!
//! - A LOOKING node enters a new round, votes for itself and sends its vote to
//!   all members. It adopts any better vote of its round and re-sends, jumps
//!   to a newer round when it sees one (voting for the better of itself and
//!   the sender's vote), and answers a peer of an older round, or an
//!   unlocked peer of its round holding a worse vote, with its own vote.
//!   Within a round a node's vote only improves, so a worse vote from a peer
//!   than the one already seen is a reordered old message and is ignored.
//! - When a quorum of voters holds our proposal and no better vote arrives
//!   for [`ElectionConfig::settle_wait`] (ZooKeeper's finalize wait), we
//!   *lock* it (at once, without the wait, when every voter we can reach
//!   holds it already: no better vote is left to come; the host tells the
//!   elector which members it cannot reach, [`Elector::set_reachable`]):
//!   we will not change our vote in this round any more, and we tell
//!   everyone. A node decides when a quorum has locked the same vote.
//!   Because a node locks at most one vote per round and quorums intersect,
//!   **no two nodes that hold one view of the membership ever decide
//!   different leaders in one round**, whatever the message delays (plain
//!   ZooKeeper relies on the finalize wait outlasting the delays; for
//!   differing views see *Membership changes* below). Each locker's proposal is at least its own vote,
//!   so the winner holds the highest `(epoch, zxid)` of the lockers that
//!   were themselves connected (a connected winner may be behind an
//!   unconnected locker; the replica's discovery fetches the quorum's most
//!   recent history, so no committed entry depends on the vote order).
//! - *Connectivity rule* ([`ElectionConfig::connectivity_rule`], on by
//!   default). A LOOKING voter counts the voters it heard from within
//!   [`ElectionConfig::connectivity_window`] since it started looking
//!   (abstaining ones excepted); with them it is *quorum-connected* and its
//!   own vote says so. It answers a peer it had not heard from at once, so
//!   both ends learn a link within a round trip, and stands again as soon
//!   as it becomes connected. Only a connected vote may be locked, so a
//!   node that cannot reach a quorum never wins. Two additions let a node
//!   that reaches only part of a quorum (say one *hub*) finish: it locks
//!   its proposal when the proposal's candidate itself locked it in the
//!   round (the candidate saw the quorum), and it follows a connected
//!   leader that itself reports having been elected. Both stay within one
//!   lock per node per round, so decisions stay unique; a stale claim costs
//!   a retry, never safety.
//! - *Nomination* (leader hand-over). A replica its leader handed the
//!   leadership to starts looking with
//!   [`Elector::start_looking_nominated`]: its own vote carries
//!   [`Vote::nominated`] until it settles or looks again. The flag ranks
//!   after connectivity and recency (see [`Vote`] for why), so the nominee
//!   beats every voter as connected and as up to date as itself, and never
//!   one with a more recent history or one that is connected while it is
//!   not. A vote adopted from a peer keeps the peer's flag; observers and
//!   abstaining voters never claim it; a settled node announces its leader
//!   without it (locks are counted by candidate, flag aside). If the
//!   nominee's own vote is still not locked at its first retry, it gives
//!   the claim up and stands again plainly in a new round: voters of an
//!   older build cannot read a nominated vote (see [`WIRE_VERSION`]), and
//!   without the fallback they could hold the round forever.
//! - A FOLLOWING or LEADING node answers every LOOKING peer with its leader
//!   and the round that elected it. A LOOKING node that hears a quorum of
//!   settled voters name the same leader, that leader itself reporting that
//!   it leads, joins it without a new round (ZooKeeper's out-of-election
//!   votes): a restarted node joins the running leader. The leader need
//!   not have been elected: after a hand-over the members take the nominee
//!   from TAKEOVER and settle when their replicas are established, usually
//!   before any round decides, so a node that was away meanwhile finds no
//!   locked report and no looking peer; the quorum of reports is enough.
//!   A node that joins a leader no round elected announces it unlocked, so
//!   its word never counts as a lock of that round.
//! - With no decision, the vote is re-sent after a randomised timeout that
//!   doubles up to [`ElectionConfig::max_timeout`] (seeded: simulations
//!   replay), so a LOOKING node is never silent for longer than
//!   [`ElectionConfig::max_resend_interval`]: after a partition heals, only
//!   its own retry brings it back. A locked node still undecided after
//!   [`ElectionConfig::stuck_retries`] retries starts the next round (locks
//!   split between candidates with some voters down would otherwise stall).
//! - Quorums are a [`QuorumSystem`]: [`Majority`] by default, [`Weighted`]
//!   as in ZooKeeper's hierarchical quorums. Observers never stand (so,
//!   within one view, are never elected) and never start a round; they ask
//!   the voters, follow their rounds and tell the vote they adopted (which
//!   counts only for a peer whose view makes them voters, see below).
//! - Bad input is dropped with a `tracing` warning and changes nothing:
//!   messages from ourselves or unknown ids (a sender outside our view is
//!   logged at debug only: a new machine asks before it is added, a removed
//!   one keeps asking), votes for nodes that are no
//!   members, self-contradicting states (a lock without a vote, a settled
//!   node naming no leader, leading for another node, following itself, an
//!   abstaining node leading), and *impossible rounds*: a
//!   round at or beyond [`MAX_ROUND`] (2^48, never reached by a real
//!   cluster), or more than [`ElectionConfig::max_round_lead`] ahead of ours.
//!   A state that merely contradicts *our* view of the sender's role is
//!   not bad input (see below). Malformed bytes never reach the elector:
//!   [`Notification::decode`] returns a [`CodecError`].
//!
//! # Membership changes
//!
//! [`Elector::reconfigure`] gives the elector a new view of the membership:
//! its voters and observers. `paxos-core`'s node layer calls
//! [`Elector::reconfigure_with_pending`] instead: it passes the membership
//! committed as far as this node knows as the voters, the voters of a newer
//! membership the node holds in force (not known committed) as *pending*,
//! and every other member of the membership in force as an observer.
//!
//! - A quorum of the view's voters **or** of the pending voters decides
//!   (locks, reports, decisions, the connectivity rule); the votes of both
//!   sets count. A leader may commit a change and be lost before anyone
//!   hears of the commit: if the change removed a voter that was then shut
//!   down, the survivors are a quorum of the committed membership, not of
//!   the one they know committed, and only the pending set lets them
//!   elect. The committed set still decides too, so a lagging node's stale
//!   change never keeps an election from deciding. The two are usually one
//!   single-server change apart, so their quorums intersect under
//!   [`Majority`]; where they do not, a decision is a liveness hint only
//!   (see the safety note below).
//!
//! - From the call on, only the view's voters count (quorums, locks,
//!   reports, decisions), and the elector talks to every member of the
//!   view. The views, locks and reports of nodes that no longer vote are
//!   dropped from the current round's tallies; a decision already made is
//!   kept. A node stands only if it is a voter of its own view and does
//!   not abstain.
//! - The [`QuorumSystem`] is rebuilt with [`QuorumSystem::with_voters`]:
//!   [`Majority`] over the new voters; [`Weighted`] with the weights it
//!   knows (see [`Weighted::with_spare_weights`]). If the system refuses (a
//!   voter without a known weight), the elector logs an error and keeps the
//!   previous system, talking to the other nodes as observers. That costs
//!   liveness, never safety: the kernel counts its own quorums.
//! - Views differ between nodes while a change spreads: a node may not yet
//!   know it was made a voter, a lagging node may hold a change that will
//!   be undone. Each receiver judges a notification by **its own** view: it
//!   counts the sender's vote, lock or report if it sees the sender as a
//!   voter (an OBSERVING report counts there as following; an observer
//!   that has adopted no vote yet counts as nothing), and otherwise only
//!   answers it, and only with what the sender lacks (an older round, or a
//!   worse unlocked vote of ours), so that two nodes with crossed views
//!   never answer each other forever. Only the *abstain* flag (a recovering
//!   node) makes a vote never count.
//! - A vote for a node that is an *observer* in the receiver's view is
//!   adopted, locked and elected like any other: observers never stand, so
//!   such a vote comes from a peer whose view makes that node a voter (it
//!   was promoted, and the receiver lags). Refusing it could split the
//!   voters for good between it and a candidate of the lagging node (found
//!   by the full-stack simulator). A vote for a voter that may not lead (a
//!   weightless one) is never adopted, and one for a node that is no
//!   member at all is dropped. A voter that is demoted or removed while a
//!   node proposes it has that proposal withdrawn (a voter stands again in
//!   a new round).
//! - A node that is no voter in its own view still tells the vote it
//!   adopted, follows the voters' rounds, and *locks* its vote like a voter
//!   (when a quorum of its view's voters holds it for the settle wait, or
//!   its candidate locked it): that lock counts for the peers whose view
//!   makes it a voter, and for nobody else. It decides when a quorum of
//!   its own view's voters has locked (or follows) the same leader, as
//!   observers always did. A settled node answers every looking member,
//!   whatever its own role.
//!
//! The safety argument above holds *within one view*: a node still locks at
//! most one vote per round (a lock survives a change of view, and one given
//! up by abstaining is not replaced in that round), so two nodes that
//! decide in one round under one view decide one leader. Across views it
//! holds as far as their quorums intersect, which is the case for two
//! views one single-server change apart under [`Majority`]; otherwise a
//! decision is a liveness hint only, and the kernel, which counts every
//! quorum under the membership in force, decides whether the leader ever
//! establishes.
//!
//! # Driving loop
//!
//! After every input (`start_looking`, `start_looking_nominated`,
//! `handle_message`, `handle_timeout`, `settle`, `set_voting`,
//! `reconfigure`), drain [`Elector::poll_transmit`] and [`Elector::poll_decision`]
//! and re-arm a timer at [`Elector::poll_timeout`]. Persist
//! [`FastElection::round`] if the node may restart (see there). Three
//! electors on a perfect in-memory network:
//!
//! ```
//! use paxos_core::{Elector, Epoch, NodeId, PeerState, Time, VoteInfo, Zxid};
//! use paxos_election::{ElectionConfig, FastElection, Notification};
//! use std::time::Duration;
//!
//! let ids = [NodeId(1), NodeId(2), NodeId(3)];
//! let mut nodes: Vec<FastElection> = ids
//!     .iter()
//!     .map(|&id| {
//!         FastElection::new(ElectionConfig {
//!             id,
//!             voters: ids.to_vec(),
//!             seed: id.0,
//!             ..ElectionConfig::default()
//!         })
//!         .expect("valid config")
//!     })
//!     .collect();
//! // Node 2 has the most recent history.
//! let info = |i: usize| VoteInfo {
//!     current_epoch: Epoch(1),
//!     last_zxid: Zxid::new(Epoch(1), [5, 9, 7][i]),
//! };
//! let mut now = Time::ZERO;
//! for (i, n) in nodes.iter_mut().enumerate() {
//!     n.start_looking(now, info(i));
//! }
//! let mut decided = vec![None; 3];
//! for _step in 0..1_000 {
//!     // Deliver every queued message, through the codec as a network would.
//!     let mut wire = Vec::new();
//!     for n in nodes.iter_mut() {
//!         while let Some((to, msg)) = n.poll_transmit() {
//!             wire.push((n.id(), to, msg.to_bytes()));
//!         }
//!     }
//!     for (from, to, bytes) in wire {
//!         let msg = Notification::decode(&bytes).expect("well-formed");
//!         let i = ids.iter().position(|&id| id == to).expect("a member");
//!         nodes[i].handle_message(now, from, msg);
//!     }
//!     for (i, n) in nodes.iter_mut().enumerate() {
//!         if let Some(d) = n.poll_decision() {
//!             let state = if d.leader == n.id() { PeerState::Leading } else { PeerState::Following };
//!             n.settle(now, state, d.leader, d.epoch_hint);
//!             decided[i] = Some(d.leader);
//!         }
//!     }
//!     if decided.iter().all(|d| d.is_some()) {
//!         break;
//!     }
//!     // Nothing in flight: advance the clock to the earliest deadline.
//!     let next = nodes.iter().filter_map(|n| n.poll_timeout()).min();
//!     if let Some(t) = next {
//!         now = now.max(t);
//!         for n in nodes.iter_mut() {
//!             if n.poll_timeout().is_some_and(|d| d <= now) {
//!                 n.handle_timeout(now);
//!             }
//!         }
//!     }
//! }
//! assert_eq!(decided, vec![Some(NodeId(2)); 3]);
//! ```

mod codec;
mod config;
mod fle;
mod quorum;
mod vote;

pub use codec::{
    CodecError, KIND_NOTIFICATION, MAX_MESSAGE_BYTES, MIN_WIRE_VERSION, NOTIFICATION_BYTES,
    WIRE_VERSION,
};
pub use config::{ConfigError, ElectionConfig, MAX_ROUND};
pub use fle::FastElection;
pub use paxos_core::{Decision, Elector, PeerState, Time, VoteInfo};
pub use quorum::{Majority, QuorumSystem, Weighted};
pub use vote::{Notification, Vote};
