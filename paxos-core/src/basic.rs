//! Single-decree Basic Paxos, as a teaching seed.
//!
//! One value is chosen among the values proposers propose. Each role is a
//! sans-IO state machine: an input message in, the messages to send out.
//! The Multi-Paxos replica ([`Replica`](crate::Replica)) runs phase 1 once
//! per epoch and phase 2 per entry; this module runs both per decision.
//!
//! 1. **Prepare / Promise.** A proposer picks a ballot higher than any it
//!    has seen and asks every acceptor to promise it. An acceptor promises
//!    if the ballot is above every ballot it promised, and reports the value
//!    it last accepted (with its ballot).
//! 2. **Accept / Accepted.** With promises from a quorum, the proposer asks
//!    the acceptors to accept the value of the highest-ballot acceptance
//!    reported (or its own value if none). An acceptor accepts unless it has
//!    promised a higher ballot. A value accepted by a quorum in one ballot is
//!    chosen.
//!
//! An acceptor must persist its promise and acceptance before it answers.
//!
//! Two proposers that retry at once when preempted can preempt each other
//! forever (the *dueling proposers* livelock); a random backoff before each
//! retry breaks the symmetry. Multi-Paxos avoids the duel by electing one
//! leader; the unit tests of this module show both.
//!
//! ```
//! use bytes::Bytes;
//! use paxos_core::basic::{Acceptor, Proposer};
//! use paxos_core::NodeId;
//!
//! let ids = [NodeId(1), NodeId(2), NodeId(3)];
//! let mut acceptors: Vec<Acceptor> = ids.iter().map(|_| Acceptor::default()).collect();
//! let mut p = Proposer::new(NodeId(10), ids.to_vec(), Bytes::from_static(b"v"));
//! let mut inbox = p.start(0);
//! while let Some((to, msg)) = inbox.pop() {
//!     let a = ids.iter().position(|i| *i == to).unwrap();
//!     if let Some(reply) = acceptors[a].handle(msg) {
//!         inbox.extend(p.handle(to, reply));
//!     }
//! }
//! assert_eq!(p.chosen(), Some(&Bytes::from_static(b"v")));
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::NodeId;

/// A ballot (proposal number): ordered by round, then by proposer id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ballot {
    /// The round.
    pub round: u64,
    /// The proposer (makes ballots unique).
    pub node: NodeId,
}

/// A Basic Paxos message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BasicMsg {
    /// Phase 1a: promise me `ballot`.
    Prepare {
        /// The ballot.
        ballot: Ballot,
    },
    /// Phase 1b: promised, with the last accepted value if any.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// The last accepted ballot and value.
        accepted: Option<(Ballot, Bytes)>,
    },
    /// Phase 2a: accept `value` in `ballot`.
    Accept {
        /// The ballot.
        ballot: Ballot,
        /// The value.
        value: Bytes,
    },
    /// Phase 2b: accepted.
    Accepted {
        /// The ballot accepted.
        ballot: Ballot,
    },
    /// Refused: a higher ballot was promised.
    Nack {
        /// The refused ballot.
        ballot: Ballot,
        /// The ballot promised instead.
        promised: Ballot,
    },
}

/// An acceptor's (persistent) state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acceptor {
    /// The highest ballot promised.
    pub promised: Option<Ballot>,
    /// The last accepted ballot and value.
    pub accepted: Option<(Ballot, Bytes)>,
}

impl Acceptor {
    /// Handles a proposer's message; returns the reply (to be sent after
    /// the new state is persisted).
    pub fn handle(&mut self, msg: BasicMsg) -> Option<BasicMsg> {
        match msg {
            BasicMsg::Prepare { ballot } => {
                if self.promised.is_some_and(|p| p >= ballot) {
                    let promised = self.promised.unwrap_or_default();
                    return Some(BasicMsg::Nack { ballot, promised });
                }
                self.promised = Some(ballot);
                Some(BasicMsg::Promise {
                    ballot,
                    accepted: self.accepted.clone(),
                })
            }
            BasicMsg::Accept { ballot, value } => {
                if self.promised.is_some_and(|p| p > ballot) {
                    let promised = self.promised.unwrap_or_default();
                    return Some(BasicMsg::Nack { ballot, promised });
                }
                self.promised = Some(ballot);
                self.accepted = Some((ballot, value));
                Some(BasicMsg::Accepted { ballot })
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Preparing(BTreeMap<NodeId, Option<(Ballot, Bytes)>>),
    Accepting(Bytes, Vec<NodeId>),
    Preempted(Ballot),
    Chosen(Bytes),
}

/// A proposer of one value.
#[derive(Clone, Debug)]
pub struct Proposer {
    id: NodeId,
    acceptors: Vec<NodeId>,
    value: Bytes,
    ballot: Ballot,
    phase: Phase,
}

impl Proposer {
    /// A proposer `id` that wants `value` chosen among `acceptors`.
    pub fn new(id: NodeId, acceptors: Vec<NodeId>, value: Bytes) -> Proposer {
        assert!(!acceptors.is_empty(), "Basic Paxos needs acceptors");
        Proposer {
            id,
            acceptors,
            value,
            ballot: Ballot { round: 0, node: id },
            phase: Phase::Idle,
        }
    }

    fn quorum(&self) -> usize {
        self.acceptors.len() / 2 + 1
    }

    /// Starts (or restarts) phase 1 with a ballot above `min_round` and
    /// above every ballot this proposer used or saw.
    pub fn start(&mut self, min_round: u64) -> Vec<(NodeId, BasicMsg)> {
        let seen = match &self.phase {
            Phase::Preempted(b) => b.round,
            _ => 0,
        };
        let round = self.ballot.round.max(min_round).max(seen) + 1;
        self.ballot = Ballot {
            round,
            node: self.id,
        };
        self.phase = Phase::Preparing(BTreeMap::new());
        let ballot = self.ballot;
        self.acceptors
            .iter()
            .map(|a| (*a, BasicMsg::Prepare { ballot }))
            .collect()
    }

    /// Handles an acceptor's reply; returns the messages to send.
    pub fn handle(&mut self, from: NodeId, msg: BasicMsg) -> Vec<(NodeId, BasicMsg)> {
        let quorum = self.quorum();
        match (msg, &mut self.phase) {
            (BasicMsg::Promise { ballot, accepted }, Phase::Preparing(promises))
                if ballot == self.ballot =>
            {
                promises.insert(from, accepted);
                if promises.len() < quorum {
                    return Vec::new();
                }
                // The value of the highest-ballot acceptance, else ours.
                let value = promises
                    .values()
                    .flatten()
                    .max_by_key(|(b, _)| *b)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_else(|| self.value.clone());
                self.phase = Phase::Accepting(value.clone(), Vec::new());
                self.acceptors
                    .iter()
                    .map(|a| {
                        (
                            *a,
                            BasicMsg::Accept {
                                ballot,
                                value: value.clone(),
                            },
                        )
                    })
                    .collect()
            }
            (BasicMsg::Accepted { ballot }, Phase::Accepting(value, acks))
                if ballot == self.ballot =>
            {
                if !acks.contains(&from) {
                    acks.push(from);
                }
                if acks.len() >= quorum {
                    let v = value.clone();
                    self.phase = Phase::Chosen(v);
                }
                Vec::new()
            }
            (BasicMsg::Nack { ballot, promised }, Phase::Preparing(_) | Phase::Accepting(..))
                if ballot == self.ballot =>
            {
                self.phase = Phase::Preempted(promised);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// The chosen value, once known.
    pub fn chosen(&self) -> Option<&Bytes> {
        match &self.phase {
            Phase::Chosen(v) => Some(v),
            _ => None,
        }
    }

    /// The higher ballot that preempted this proposer, if it was.
    pub fn preempted(&self) -> Option<Ballot> {
        match &self.phase {
            Phase::Preempted(b) => Some(*b),
            _ => None,
        }
    }

    /// The current ballot.
    pub fn ballot(&self) -> Ballot {
        self.ballot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng as SimRng;

    const IDS: [NodeId; 3] = [NodeId(1), NodeId(2), NodeId(3)];

    /// Runs one phase of proposer `p` against every acceptor, atomically.
    fn round_trip(
        p: &mut Proposer,
        acc: &mut [Acceptor],
        out: Vec<(NodeId, BasicMsg)>,
    ) -> Vec<(NodeId, BasicMsg)> {
        let mut next = Vec::new();
        for (to, msg) in out {
            let a = IDS.iter().position(|i| *i == to).unwrap();
            if let Some(reply) = acc[a].handle(msg) {
                next.extend(p.handle(to, reply));
            }
        }
        next
    }

    /// The dueling-proposers schedule: in every slot each awake proposer
    /// takes its next phase; a preempted proposer prepares again after
    /// `backoff()` slots. Returns the slot at which a value was chosen.
    fn duel(mut backoff: impl FnMut() -> u64, slots: u64) -> Option<(u64, Bytes)> {
        let mut acc = vec![Acceptor::default(); 3];
        let mut ps = [
            Proposer::new(NodeId(10), IDS.to_vec(), Bytes::from_static(b"a")),
            Proposer::new(NodeId(11), IDS.to_vec(), Bytes::from_static(b"b")),
        ];
        let mut pending: [Vec<(NodeId, BasicMsg)>; 2] = [ps[0].start(0), ps[1].start(0)];
        let mut wake = [0u64; 2];
        for slot in 0..slots {
            for k in 0..2 {
                if slot < wake[k] {
                    continue;
                }
                let out = if pending[k].is_empty() {
                    ps[k].start(0)
                } else {
                    std::mem::take(&mut pending[k])
                };
                pending[k] = round_trip(&mut ps[k], &mut acc, out);
                if let Some(v) = ps[k].chosen() {
                    return Some((slot, v.clone()));
                }
                if ps[k].preempted().is_some() {
                    let b = backoff();
                    if b == 0 {
                        // Symmetric, immediate retry.
                        let retry = ps[k].start(0);
                        pending[k] = round_trip(&mut ps[k], &mut acc, retry);
                    } else {
                        wake[k] = slot + b;
                    }
                }
            }
        }
        None
    }

    #[test]
    fn dueling_proposers_livelock_with_symmetric_retries() {
        assert_eq!(
            duel(|| 0, 1_000),
            None,
            "immediate symmetric retries never choose"
        );
    }

    #[test]
    fn random_backoff_breaks_the_duel() {
        for seed in 0..20 {
            let mut rng = SimRng::new(seed);
            let r = duel(|| rng.range(1, 4), 1_000);
            let (slot, v) = r.unwrap_or_else(|| panic!("seed {seed}: no value chosen"));
            assert!(slot < 1_000);
            assert!(v == Bytes::from_static(b"a") || v == Bytes::from_static(b"b"));
        }
    }

    #[test]
    fn a_later_proposer_adopts_the_chosen_value() {
        let mut acc = vec![Acceptor::default(); 3];
        let mut p1 = Proposer::new(NodeId(10), IDS.to_vec(), Bytes::from_static(b"first"));
        let out = p1.start(0);
        let out = round_trip(&mut p1, &mut acc, out);
        round_trip(&mut p1, &mut acc, out);
        assert_eq!(p1.chosen(), Some(&Bytes::from_static(b"first")));
        let mut p2 = Proposer::new(NodeId(11), IDS.to_vec(), Bytes::from_static(b"second"));
        let out = p2.start(5);
        let out = round_trip(&mut p2, &mut acc, out);
        round_trip(&mut p2, &mut acc, out);
        assert_eq!(
            p2.chosen(),
            Some(&Bytes::from_static(b"first")),
            "safety: the chosen value stays"
        );
    }

    #[test]
    fn acceptor_refuses_lower_ballots() {
        let mut a = Acceptor::default();
        let hi = Ballot {
            round: 5,
            node: NodeId(2),
        };
        let lo = Ballot {
            round: 4,
            node: NodeId(9),
        };
        assert!(matches!(
            a.handle(BasicMsg::Prepare { ballot: hi }),
            Some(BasicMsg::Promise { .. })
        ));
        assert!(matches!(
            a.handle(BasicMsg::Prepare { ballot: lo }),
            Some(BasicMsg::Nack { .. })
        ));
        assert!(matches!(
            a.handle(BasicMsg::Accept { ballot: lo, value: Bytes::new() }),
            Some(BasicMsg::Nack { promised, .. }) if promised == hi
        ));
    }
}
