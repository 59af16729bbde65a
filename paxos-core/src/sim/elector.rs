//! A deterministic elector for tests and simulations only.
//!
//! It is a stripped-down fast leader election: a looking node votes for
//! itself, adopts any better vote `(current_epoch, last_zxid, id)` of the
//! same round, re-broadcasts, and decides when a quorum of voters holds its
//! vote. A settled node answers looking peers with its leader, and a leader
//! announcing itself is followed at once. The nominee of a leader's
//! hand-over wins ties of recency. No settle wait and no randomised
//! timeouts: production code should use `paxos-election`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::election::{Decision, Elector, PeerState, VoteInfo};
use crate::{Epoch, NodeId, Time};

/// A vote: the candidate and its history's recency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TestVote {
    /// The candidate's recency (compared first).
    pub info: VoteInfo,
    /// The candidate stands as the nominee of a hand-over (TAKEOVER): it
    /// wins over other candidates of equal recency.
    pub nominated: bool,
    /// The candidate (breaks ties).
    pub candidate: NodeId,
}

/// A message of the test elector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TestElectionMsg {
    /// A looking node's current vote in `round`.
    Vote {
        /// The sender's election round.
        round: u64,
        /// The sender's vote.
        vote: TestVote,
        /// The sender abstains (a recovering replica): never count or
        /// adopt this vote, only answer it.
        abstain: bool,
    },
    /// A settled node's leader.
    Settled {
        /// The sender's state.
        state: PeerState,
        /// Its leader.
        leader: NodeId,
        /// The leader's epoch.
        epoch: Epoch,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Looking,
    Decided,
    Settled {
        state: PeerState,
        leader: NodeId,
        epoch: Epoch,
    },
}

/// The test-only elector (see the module docs).
#[derive(Debug)]
pub struct TestElector {
    id: NodeId,
    voters: Vec<NodeId>,
    /// The voters of a membership in force not known committed (empty if
    /// none): a quorum of them decides too.
    pending: Vec<NodeId>,
    peers: Vec<NodeId>,
    state: State,
    round: u64,
    vote: TestVote,
    own: TestVote,
    votes: BTreeMap<NodeId, TestVote>,
    claims: BTreeMap<NodeId, NodeId>,
    out: VecDeque<(NodeId, TestElectionMsg)>,
    decision: Option<Decision>,
    next_timeout: Option<Time>,
    resend: Duration,
    abstain: bool,
}

impl TestElector {
    /// An elector for `id` among `voters` (observers are `peers` too).
    pub fn new(id: NodeId, voters: Vec<NodeId>, peers: Vec<NodeId>) -> TestElector {
        TestElector {
            id,
            voters,
            pending: Vec::new(),
            peers,
            state: State::Idle,
            round: 0,
            vote: TestVote {
                nominated: false,
                info: VoteInfo {
                    current_epoch: Epoch::ZERO,
                    last_zxid: crate::Zxid::ZERO,
                },
                candidate: id,
            },
            own: TestVote {
                nominated: false,
                info: VoteInfo {
                    current_epoch: Epoch::ZERO,
                    last_zxid: crate::Zxid::ZERO,
                },
                candidate: id,
            },
            votes: BTreeMap::new(),
            claims: BTreeMap::new(),
            out: VecDeque::new(),
            decision: None,
            next_timeout: None,
            resend: Duration::from_millis(40),
            abstain: false,
        }
    }

    /// Whether `n`'s vote counts: a voter of either view.
    fn is_voter(&self, n: NodeId) -> bool {
        self.voters.contains(&n) || self.pending.contains(&n)
    }

    /// Whether our own vote counts: a voter that does not abstain.
    fn counts(&self) -> bool {
        self.is_voter(self.id) && !self.abstain
    }

    fn broadcast_vote(&mut self) {
        // Only a recovering node abstains. A node that is no voter in its
        // own view still tells its vote: whether it counts is each
        // receiver's call, by the receiver's membership (a node that has
        // not yet learned it was made a voter must be counted by those
        // that know, or no one could be elected to tell it).
        let msg = TestElectionMsg::Vote {
            round: self.round,
            vote: self.vote,
            abstain: self.abstain,
        };
        for p in &self.peers {
            if *p != self.id {
                self.out.push_back((*p, msg.clone()));
            }
        }
    }

    fn look(&mut self, now: Time, me: VoteInfo, nominated: bool) {
        self.round += 1;
        self.state = State::Looking;
        self.decision = None;
        self.vote = TestVote {
            info: me,
            nominated: nominated && self.counts(),
            candidate: self.id,
        };
        self.own = self.vote;
        self.votes.clear();
        self.claims.clear();
        if self.counts() {
            self.votes.insert(self.id, self.vote);
        } else {
            // An observer (or an abstaining voter) never stands: it waits
            // for a settled leader.
            self.vote.info = VoteInfo {
                current_epoch: Epoch::ZERO,
                last_zxid: crate::Zxid::ZERO,
            };
            self.vote.nominated = false;
        }
        self.broadcast_vote();
        self.next_timeout = Some(now + self.resend);
    }

    fn try_decide(&mut self) {
        let holds = |set: &[NodeId]| {
            !set.is_empty()
                && set
                    .iter()
                    .filter(|v| self.votes.get(v) == Some(&self.vote))
                    .count()
                    > set.len() / 2
        };
        if holds(&self.voters) || holds(&self.pending) {
            self.state = State::Decided;
            self.decision = Some(Decision {
                leader: self.vote.candidate,
                round: self.round,
                epoch_hint: self.vote.info.current_epoch,
            });
            if self.vote.candidate == self.id {
                // The winner says so at once: a peer whose view cannot
                // count this quorum (it has not heard of a newer
                // membership) follows it and learns the membership from
                // the new leader's sync.
                let msg = TestElectionMsg::Settled {
                    state: PeerState::Leading,
                    leader: self.id,
                    epoch: self.vote.info.current_epoch,
                };
                for p in &self.peers {
                    if *p != self.id {
                        self.out.push_back((*p, msg.clone()));
                    }
                }
            }
        }
    }
}

impl Elector for TestElector {
    type Message = TestElectionMsg;

    fn id(&self) -> NodeId {
        self.id
    }

    fn start_looking(&mut self, now: Time, me: VoteInfo) {
        self.look(now, me, false);
    }

    fn start_looking_nominated(&mut self, now: Time, me: VoteInfo) {
        self.look(now, me, true);
    }

    fn settle(&mut self, _now: Time, state: PeerState, leader: NodeId, epoch: Epoch) {
        self.state = State::Settled {
            state,
            leader,
            epoch,
        };
        self.next_timeout = None;
    }

    fn handle_message(&mut self, _now: Time, from: NodeId, msg: TestElectionMsg) {
        match msg {
            TestElectionMsg::Vote {
                round,
                vote,
                abstain,
            } => match self.state {
                State::Settled {
                    state,
                    leader,
                    epoch,
                } => {
                    self.out.push_back((
                        from,
                        TestElectionMsg::Settled {
                            state,
                            leader,
                            epoch,
                        },
                    ));
                }
                State::Idle => {}
                State::Looking | State::Decided => {
                    if !self.is_voter(from) || abstain {
                        return;
                    }
                    if !self.counts() {
                        // An observer (in its own view) follows the voters'
                        // rounds, whichever way, and tallies their votes.
                        if round != self.round {
                            self.round = round;
                            self.votes.clear();
                            self.vote = vote;
                        } else if vote > self.vote && self.state == State::Looking {
                            self.vote = vote;
                        }
                        self.votes.insert(from, vote);
                        if self.state == State::Looking {
                            self.try_decide();
                        }
                        return;
                    }
                    if round > self.round {
                        self.round = round;
                        self.votes.clear();
                        self.vote = if self.counts() {
                            self.own.max(vote)
                        } else {
                            vote
                        };
                        if self.counts() {
                            self.votes.insert(self.id, self.vote);
                        }
                        self.broadcast_vote();
                    } else if round == self.round {
                        if vote > self.vote && self.state == State::Looking {
                            self.vote = vote;
                            if self.counts() {
                                self.votes.insert(self.id, self.vote);
                            }
                            self.broadcast_vote();
                        }
                    } else {
                        self.out.push_back((
                            from,
                            TestElectionMsg::Vote {
                                round: self.round,
                                vote: self.vote,
                                abstain: self.abstain,
                            },
                        ));
                        return;
                    }
                    self.votes.insert(from, vote);
                    if self.state == State::Looking {
                        self.try_decide();
                    }
                }
            },
            TestElectionMsg::Settled {
                state,
                leader,
                epoch,
            } => {
                if self.state == State::Looking && state == PeerState::Leading && leader == from {
                    self.state = State::Decided;
                    self.decision = Some(Decision {
                        leader,
                        round: self.round,
                        epoch_hint: epoch,
                    });
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Time) {
        if matches!(self.state, State::Looking | State::Decided) {
            self.broadcast_vote();
            self.next_timeout = Some(now + self.resend);
        } else {
            self.next_timeout = None;
        }
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.next_timeout
    }

    fn poll_transmit(&mut self) -> Option<(NodeId, TestElectionMsg)> {
        self.out.pop_front()
    }

    fn poll_decision(&mut self) -> Option<Decision> {
        self.decision.take()
    }

    /// Reported so that the node layer persists it as it does the real
    /// elector's (and the simulator exercises that path, held votes
    /// included); this elector itself does not rely on it.
    fn round(&self) -> Option<u64> {
        Some(self.round)
    }

    fn reconfigure(&mut self, now: Time, voters: &[NodeId], observers: &[NodeId]) {
        self.reconfigure_with_pending(now, voters, &[], observers);
    }

    fn reconfigure_with_pending(
        &mut self,
        _now: Time,
        voters: &[NodeId],
        pending: &[NodeId],
        observers: &[NodeId],
    ) {
        self.voters = voters.to_vec();
        self.pending = pending.to_vec();
        self.peers.clear();
        for n in voters.iter().chain(pending).chain(observers) {
            if !self.peers.contains(n) {
                self.peers.push(*n);
            }
        }
        if !self.peers.contains(&self.id) {
            // A removed node still asks the members who leads.
            self.peers.push(self.id);
        }
        self.votes
            .retain(|n, _| voters.contains(n) || pending.contains(n));
        if !self.counts() {
            self.votes.remove(&self.id);
        }
    }

    fn set_voting(&mut self, _now: Time, voting: bool) {
        self.abstain = !voting;
        if !voting {
            self.votes.remove(&self.id);
        }
    }
}
