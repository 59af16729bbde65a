//! Abstaining (recovering) voters: they learn the leader but are never
//! counted, and count again once they vote.

use paxos_core::{Decision, Elector, Epoch, NodeId, PeerState, Time, VoteInfo, Zxid};
use paxos_election::{ElectionConfig, FastElection, Notification};

fn info(counter: u32) -> VoteInfo {
    VoteInfo {
        current_epoch: Epoch(1),
        last_zxid: Zxid::new(Epoch(1), counter),
    }
}

struct Net {
    nodes: Vec<FastElection>,
    up: Vec<bool>,
    now: Time,
    decided: Vec<Option<Decision>>,
}

impl Net {
    fn new(n: u64, abstaining: &[u64]) -> Net {
        let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let nodes = ids
            .iter()
            .map(|&id| {
                FastElection::new(ElectionConfig {
                    id,
                    voters: ids.clone(),
                    seed: id.0,
                    voting: !abstaining.contains(&id.0),
                    ..ElectionConfig::default()
                })
                .expect("valid config")
            })
            .collect();
        Net {
            nodes,
            up: vec![true; n as usize],
            now: Time::ZERO,
            decided: vec![None; n as usize],
        }
    }

    /// Delivers messages (through the codec) and fires timers for a
    /// bounded number of rounds.
    fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let mut wire = Vec::new();
            for (i, n) in self.nodes.iter_mut().enumerate() {
                while let Some((to, msg)) = n.poll_transmit() {
                    if self.up[i] {
                        wire.push((n.id(), to, msg.to_bytes()));
                    }
                }
            }
            for (from, to, bytes) in wire {
                let msg = Notification::decode(&bytes).expect("well-formed");
                let i = (to.0 - 1) as usize;
                if self.up[i] {
                    self.nodes[i].handle_message(self.now, from, msg);
                }
            }
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if let Some(d) = n.poll_decision() {
                    let state = if d.leader == n.id() {
                        PeerState::Leading
                    } else {
                        PeerState::Following
                    };
                    n.settle(self.now, state, d.leader, d.epoch_hint);
                    self.decided[i] = Some(d);
                }
            }
            let next = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(i, _)| self.up[*i])
                .filter_map(|(_, n)| n.poll_timeout())
                .min();
            if let Some(t) = next {
                self.now = self.now.max(t);
                for n in self.nodes.iter_mut() {
                    if n.poll_timeout().is_some_and(|d| d <= self.now) {
                        n.handle_timeout(self.now);
                    }
                }
            }
        }
    }
}

#[test]
fn an_abstaining_voter_never_completes_a_quorum() {
    // Node 3 is down; node 2 abstains (it has the best history, too):
    // node 1 alone must never be elected, nor node 2.
    let mut net = Net::new(3, &[2]);
    net.up[2] = false;
    for (i, c) in [5, 9].into_iter().enumerate() {
        net.nodes[i].start_looking(Time::ZERO, info(c));
    }
    net.run(2_000);
    assert_eq!(net.decided[0], None, "no quorum without node 3");
    assert_eq!(net.decided[1], None);
    assert!(net.nodes[1].is_abstaining());
}

#[test]
fn an_abstaining_voter_learns_the_leader_and_votes_again_later() {
    let mut net = Net::new(3, &[2]);
    for (i, c) in [5, 9, 7].into_iter().enumerate() {
        net.nodes[i].start_looking(Time::ZERO, info(c));
    }
    net.run(2_000);
    // Node 2 has the best history but abstains: node 3 leads.
    assert_eq!(net.decided[0].map(|d| d.leader), Some(NodeId(3)));
    assert_eq!(net.decided[2].map(|d| d.leader), Some(NodeId(3)));
    assert_eq!(net.decided[1].map(|d| d.leader), Some(NodeId(3)));
    assert_eq!(net.nodes[1].state(), PeerState::Following);

    // Recovered: node 2 votes again. Node 3 goes away; 1 and 2 elect 2.
    let now = net.now;
    net.nodes[1].set_voting(now, true);
    assert!(!net.nodes[1].is_abstaining());
    net.up[2] = false;
    net.decided = vec![None; 3];
    net.nodes[0].start_looking(now, info(10));
    net.nodes[1].start_looking(now, info(10));
    net.run(2_000);
    assert_eq!(net.decided[0].map(|d| d.leader), Some(NodeId(2)));
    assert_eq!(net.decided[1].map(|d| d.leader), Some(NodeId(2)));
}

#[test]
fn abstaining_notifications_are_flagged_and_ignored() {
    let mut a = FastElection::new(ElectionConfig {
        id: NodeId(1),
        voters: vec![NodeId(1), NodeId(2), NodeId(3)],
        ..ElectionConfig::default()
    })
    .expect("valid config");
    a.start_looking(Time::ZERO, info(1));
    while a.poll_transmit().is_some() {}
    // Node 2 "votes" for node 1 while abstaining: never a quorum.
    let vote = a.proposal();
    let n = Notification {
        vote,
        round: a.round(),
        state: PeerState::Looking,
        locked: true,
        abstain: true,
    };
    a.handle_message(Time::ZERO, NodeId(2), n);
    a.handle_timeout(Time::ZERO + std::time::Duration::from_secs(1));
    assert_eq!(a.lock(), None, "an abstaining vote never makes a quorum");
    assert_eq!(a.poll_decision(), None);
    // It is answered, so it learns what we know.
    assert!(std::iter::from_fn(|| a.poll_transmit()).any(|(to, _)| to == NodeId(2)));
}

/// A wiped node abstains while its peers still hold locks for the vote it
/// had before it lost its disk (it led, and they locked it in that round).
/// Those locks make a quorum for it, but it must not decide itself: its
/// replica, recovering, refuses to lead and looks again, and the same
/// locks decided it again at once, a loop without end at one instant (the
/// multi-group simulator, seed 60343 of `--groups 8 --full --wipes
/// --lease-reads`, spun so until it filled 11 GiB of memory). It keeps
/// looking; the peers move on when their round runs out.
#[test]
fn an_abstaining_voter_never_decides_itself_on_locks_for_its_old_vote() {
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mut e = FastElection::new(ElectionConfig {
        id: NodeId(3),
        voters: ids,
        seed: 3,
        voting: false,
        ..ElectionConfig::default()
    })
    .expect("valid config");
    let wiped = VoteInfo {
        current_epoch: Epoch(0),
        last_zxid: Zxid::ZERO,
    };
    let before = paxos_election::Vote::new(NodeId(3), info(68));
    for round in 0..3u64 {
        let now = Time::ZERO + std::time::Duration::from_millis(round * 10);
        e.start_looking(now, wiped);
        for peer in [1, 2] {
            e.handle_message(
                now,
                NodeId(peer),
                Notification {
                    vote: Some(before),
                    round: 4,
                    state: PeerState::Looking,
                    locked: true,
                    abstain: false,
                },
            );
        }
        assert_eq!(
            e.poll_decision(),
            None,
            "an abstaining node decided itself on its old vote's locks"
        );
        assert_eq!(e.state(), PeerState::Looking);
    }
}
