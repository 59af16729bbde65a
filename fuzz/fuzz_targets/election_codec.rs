//! Fuzzes the election codec (wire versions 1 to 3): arbitrary bytes must
//! decode to an error or to the one message whose encoding they are (a
//! message is written in the lowest version that carries it), and a decoded message fed to an
//! elector must never panic it. CI twin: the `arbitrary_bytes_*` and
//! `corrupted_encodings_*` proptests in paxos-election's tests/it/properties.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paxos_core::{Elector, Epoch, NodeId, Time, VoteInfo, Zxid};
use paxos_election::{ElectionConfig, FastElection, Notification};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = Notification::decode(data) else {
        return;
    };
    assert_eq!(msg.to_bytes().as_ref(), data, "decoding is canonical");
    let voters: Vec<NodeId> = (1..=5).map(NodeId).collect();
    let Ok(mut e) = FastElection::new(ElectionConfig {
        id: NodeId(1),
        voters,
        observers: vec![NodeId(6)],
        ..ElectionConfig::default()
    }) else {
        return;
    };
    let info = VoteInfo {
        current_epoch: Epoch(1),
        last_zxid: Zxid::new(Epoch(1), 1),
    };
    e.start_looking(Time::ZERO, info);
    // The sender comes from the message itself so every id is reachable.
    let from = NodeId(u64::from(data.last().copied().unwrap_or(0) % 8));
    e.handle_message(Time::from_nanos(1), from, msg);
    while e.poll_transmit().is_some() {}
    let _ = e.poll_decision();
});
