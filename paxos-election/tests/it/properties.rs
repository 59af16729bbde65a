//! Property tests: vote order, codec round trip, arbitrary bytes (the CI
//! twin of the `election_codec` fuzz target), and an elector fed arbitrary
//! input keeping its invariants.

use std::collections::BTreeMap;
use std::time::Duration;

use paxos_core::{Elector, Epoch, NodeId, PeerState, Time, VoteInfo, Zxid};
use paxos_election::{
    ElectionConfig, FastElection, Notification, QuorumSystem, Vote, MAX_MESSAGE_BYTES,
    NOTIFICATION_BYTES,
};
use proptest::prelude::*;

fn any_state() -> impl Strategy<Value = PeerState> {
    prop_oneof![
        Just(PeerState::Looking),
        Just(PeerState::Following),
        Just(PeerState::Leading),
        Just(PeerState::Observing),
    ]
}

fn any_vote(max_id: u64) -> impl Strategy<Value = Vote> {
    (0..=max_id, 0u32..4, 0u32..4, any::<bool>(), any::<bool>()).prop_map(
        |(id, e, c, connected, nominated)| Vote {
            leader: NodeId(id),
            epoch: Epoch(e),
            zxid: Zxid::new(Epoch(e), c),
            connected,
            nominated,
        },
    )
}

fn any_notification(max_id: u64, max_round: u64) -> impl Strategy<Value = Notification> {
    (
        proptest::option::of(any_vote(max_id)),
        0..=max_round,
        any_state(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(vote, round, state, locked, abstain)| Notification {
            vote,
            round,
            state,
            // A lock needs a vote to be encodable.
            locked: locked && vote.is_some(),
            abstain,
        })
}

fn wide_notification() -> impl Strategy<Value = Notification> {
    (
        proptest::option::of((
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<bool>(),
            any::<bool>(),
        )),
        any::<u64>(),
        any_state(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(v, round, state, locked, abstain)| Notification {
            vote: v.map(|(l, e, z, connected, nominated)| Vote {
                leader: NodeId(l),
                epoch: Epoch(e),
                zxid: Zxid(z),
                connected,
                nominated,
            }),
            round,
            state,
            locked: locked && v.is_some(),
            abstain,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn votes_are_ordered_by_connectivity_epoch_zxid_nomination_then_id(
        a in any_vote(9),
        b in any_vote(9),
    ) {
        let key = |v: &Vote| (v.connected, v.epoch, v.zxid, v.nominated, v.leader);
        prop_assert_eq!(a.cmp(&b), key(&a).cmp(&key(&b)));
        prop_assert_eq!(a == b, key(&a) == key(&b));
    }

    #[test]
    fn codec_round_trips(n in wide_notification()) {
        let bytes = n.to_bytes();
        prop_assert_eq!(bytes.len(), NOTIFICATION_BYTES);
        // The lowest version that carries it: 3 for a nominated vote, 2
        // for a connected one, else 1.
        let connected = n.vote.is_some_and(|v| v.connected);
        let nominated = n.vote.is_some_and(|v| v.nominated);
        let version = match (nominated, connected) {
            (true, _) => 3,
            (false, true) => 2,
            (false, false) => 1,
        };
        prop_assert_eq!(bytes[0], version);
        prop_assert_eq!(Notification::decode(&bytes), Ok(n));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_decode_canonically(
        bytes in proptest::collection::vec(any::<u8>(), 0..=MAX_MESSAGE_BYTES + 8)
    ) {
        if let Ok(n) = Notification::decode(&bytes) {
            prop_assert_eq!(n.to_bytes().to_vec(), bytes);
        }
    }

    /// Every version and flags byte over a valid body: the flag rules of
    /// each version (connected from 2, nominated only in 3, each version
    /// only with the flag that needs it) admit one encoding per message.
    #[test]
    fn every_version_and_flags_byte_decodes_canonically_or_not_at_all(
        n in wide_notification(),
        version in 0u8..=5,
        flags in any::<u8>(),
    ) {
        let mut bytes = n.to_bytes().to_vec();
        bytes[0] = version;
        bytes[3] = flags;
        if let Ok(m) = Notification::decode(&bytes) {
            prop_assert_eq!(m.to_bytes().to_vec(), bytes);
            let v = m.vote;
            prop_assert_eq!(v.is_some_and(|v| v.nominated), version == 3);
            prop_assert_eq!(v.is_some_and(|v| v.connected) && version != 3, version == 2);
        }
    }

    #[test]
    fn corrupted_encodings_never_panic_and_decode_canonically(
        n in wide_notification(),
        flips in proptest::collection::vec((0..NOTIFICATION_BYTES, any::<u8>()), 1..4),
        cut in 0..=NOTIFICATION_BYTES,
    ) {
        let mut bytes = n.to_bytes().to_vec();
        for (at, x) in flips {
            bytes[at] ^= x;
        }
        bytes.truncate(cut.max(1));
        if let Ok(m) = Notification::decode(&bytes) {
            prop_assert_eq!(m.to_bytes().to_vec(), bytes);
        }
    }
}

#[derive(Clone, Debug)]
enum Input {
    Message {
        from: u64,
        msg: Notification,
    },
    Timeout {
        advance_ms: u64,
    },
    StartLooking {
        epoch: u32,
        counter: u32,
        nominated: bool,
    },
    Settle {
        state: PeerState,
        leader: u64,
    },
    /// A new view of the membership (possibly empty, possibly without us).
    Reconfigure {
        voters: Vec<u64>,
        observers: Vec<u64>,
    },
    SetVoting {
        voting: bool,
    },
    /// The host's word on a node's reachability (any node, even us or a
    /// stranger, right or wrong).
    SetReachable {
        node: u64,
        reachable: bool,
    },
}

fn any_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => (0u64..8, any_notification(7, 12)).prop_map(|(from, msg)| Input::Message { from, msg }),
        3 => (0u64..400).prop_map(|advance_ms| Input::Timeout { advance_ms }),
        1 => (0u32..4, 0u32..4, any::<bool>()).prop_map(|(epoch, counter, nominated)| {
            Input::StartLooking { epoch, counter, nominated }
        }),
        1 => (any_state(), 0u64..7).prop_map(|(state, leader)| Input::Settle { state, leader }),
        1 => (
            proptest::collection::vec(0u64..8, 0..6),
            proptest::collection::vec(0u64..8, 0..4),
        )
            .prop_map(|(voters, observers)| Input::Reconfigure { voters, observers }),
        1 => any::<bool>().prop_map(|voting| Input::SetVoting { voting }),
        1 => (0u64..8, any::<bool>()).prop_map(|(node, reachable)| Input::SetReachable { node, reachable }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever arrives, in any order, with any reconfigurations: the
    /// round never goes back, a node locks at most one vote per round, only
    /// members of its current view are elected (an observer of ours may be
    /// a voter in a peer's view), timers are in the future, and the outbox
    /// stays bounded.
    #[test]
    fn elector_keeps_its_invariants_under_arbitrary_input(
        me in 1u64..=5,
        inputs in proptest::collection::vec(any_input(), 1..120),
    ) {
        // Voters 1..=5, observer 6; ids 0 and 7 are strangers.
        let voters: Vec<NodeId> = (1..=5).map(NodeId).collect();
        let mut e = FastElection::new(ElectionConfig {
            id: NodeId(me),
            voters: voters.clone(),
            observers: vec![NodeId(6)],
            seed: me,
            ..ElectionConfig::default()
        }).expect("valid");
        let mut now = Time::ZERO;
        e.start_looking(now, VoteInfo { current_epoch: Epoch(1), last_zxid: Zxid::new(Epoch(1), 1) });
        let mut locks: BTreeMap<u64, Vote> = BTreeMap::new();
        let mut last_round = e.round();
        for input in inputs {
            match input {
                Input::Message { from, msg } => e.handle_message(now, NodeId(from), msg),
                Input::Timeout { advance_ms } => {
                    now += Duration::from_millis(advance_ms);
                    if e.poll_timeout().is_some_and(|t| t <= now) {
                        e.handle_timeout(now);
                    }
                }
                Input::StartLooking { epoch, counter, nominated } => {
                    let info = VoteInfo {
                        current_epoch: Epoch(epoch),
                        last_zxid: Zxid::new(Epoch(epoch), counter),
                    };
                    if nominated {
                        e.start_looking_nominated(now, info);
                    } else {
                        e.start_looking(now, info);
                    }
                }
                Input::Settle { state, leader } => e.settle(now, state, NodeId(leader), Epoch(1)),
                Input::Reconfigure { voters, observers } => {
                    let v: Vec<NodeId> = voters.into_iter().map(NodeId).collect();
                    let o: Vec<NodeId> = observers.into_iter().map(NodeId).collect();
                    e.reconfigure(now, &v, &o);
                }
                Input::SetVoting { voting } => e.set_voting(now, voting),
                Input::SetReachable { node, reachable } => e.set_reachable(now, NodeId(node), reachable),
            }
            let members: Vec<NodeId> = e
                .quorum()
                .voters()
                .iter()
                .chain(e.observers())
                .copied()
                .collect();
            prop_assert!(e.round() >= last_round, "round went back");
            last_round = e.round();
            if let Some((r, v)) = e.lock() {
                let prev = *locks.entry(r).or_insert(v);
                prop_assert_eq!(prev, v, "two locks in round {}", r);
                prop_assert!((0..8).contains(&v.leader.0));
            }
            if let Some(d) = e.poll_decision() {
                prop_assert!(members.contains(&d.leader), "elected a non-member {:?}", d.leader);
            }
            if let Some(t) = e.poll_timeout() {
                prop_assert!(t >= now, "a deadline in the past stays pending");
            }
            let out: Vec<_> = std::iter::from_fn(|| e.poll_transmit()).collect();
            prop_assert!(out.len() <= 7, "one message per peer at most");
            let mut seen = std::collections::BTreeSet::new();
            for (to, n) in out {
                prop_assert!(to != NodeId(me) && (0..8).contains(&to.0));
                prop_assert!(seen.insert(to), "two messages to {:?}", to);
                prop_assert_eq!(Notification::decode(&n.to_bytes()), Ok(n));
                // Only a looking vote carries a nomination, and we claim
                // one only for a looking period that started nominated.
                if n.state != PeerState::Looking {
                    prop_assert!(!n.vote.is_some_and(|v| v.nominated), "settled and nominated");
                }
            }
        }
    }
}
