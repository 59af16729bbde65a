//! Composing the toolkit by hand: three replicas in one process, each made of
//! paxos-core's `Replica` (the kernel), paxos-election's `FastElection` (who
//! leads), paxos-snapshot's `ZabPlanner` (how to catch followers up) and the
//! reference key-value state machine, with in-memory storage and messages
//! handed over directly. Time is simulated: one millisecond per step.
//!
//! The same loop, with `WalStorage` and `paxos-net-quic` in place of the
//! in-memory parts, is what paxos-kv's node (`paxos_kv::node`) runs.
//!
//! ```text
//! cargo run -p paxos-kv --example compose
//! ```
#![allow(clippy::print_stdout)]

use bytes::Bytes;
use paxos_core::{
    Config, Elector, Envelope, Event, GroupId, MemStorage, NodeId, Recovered, Replica,
    StateMachine, Storage, Time,
};
use paxos_election::{ElectionConfig, FastElection, Notification};
use paxos_kv::kv::{KvCommand, KvOp, KvStore};
use paxos_snapshot::{PlannerConfig, ZabPlanner};
use std::collections::VecDeque;
use std::time::Duration;

/// One node: the kernel, its elector and its state machine.
struct Node {
    replica: Replica<MemStorage>,
    elector: FastElection,
    kv: KvStore,
}

/// Something in flight between two nodes.
enum Wire {
    Paxos(Envelope),
    Vote(NodeId, NodeId, Notification),
}

fn main() {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let mut nodes: Vec<Node> = ids
        .iter()
        .map(|&id| Node {
            replica: Replica::new(
                id,
                Config::new(GroupId(0), ids.to_vec()),
                MemStorage::new(),
                Box::new(ZabPlanner::new(PlannerConfig::default())),
                Recovered::default(),
                Time::ZERO,
            )
            .expect("valid configuration"),
            elector: FastElection::new(ElectionConfig {
                id,
                voters: ids.to_vec(),
                seed: id.0,
                ..ElectionConfig::default()
            })
            .expect("valid election configuration"),
            kv: KvStore::new(),
        })
        .collect();
    let index = |id: NodeId| ids.iter().position(|&i| i == id).expect("known node");
    let mut wire: VecDeque<Wire> = VecDeque::new();
    let mut now = Time::ZERO;
    let mut proposed = false;

    for step in 0..10_000 {
        now += Duration::from_millis(1);
        // 1. Deliver what is in flight.
        while let Some(w) = wire.pop_front() {
            match w {
                Wire::Paxos(env) => {
                    let to = index(env.to);
                    nodes[to].replica.handle_message(now, env);
                }
                Wire::Vote(from, to, n) => nodes[index(to)].elector.handle_message(now, from, n),
            }
        }
        for node in &mut nodes {
            // 2. Timers.
            if node.replica.poll_timeout().is_some_and(|t| t <= now) {
                node.replica.handle_timeout(now);
            }
            if node.elector.poll_timeout().is_some_and(|t| t <= now) {
                node.elector.handle_timeout(now);
            }
            // 3. The elector's output: votes to send, a decision for the kernel.
            while let Some((to, n)) = node.elector.poll_transmit() {
                wire.push_back(Wire::Vote(node.elector.id(), to, n));
            }
            while let Some(d) = node.elector.poll_decision() {
                node.replica.handle_leader_decision(now, d);
            }
            // 4. The kernel's output, in the documented order.
            let ready = node.replica.ready();
            wire.extend(ready.messages.iter().cloned().map(Wire::Paxos));
            node.replica
                .storage_mut()
                .write_ready(&ready)
                .expect("memory storage does not fail");
            node.replica
                .storage_mut()
                .sync()
                .expect("memory storage does not fail");
            wire.extend(ready.persisted_messages.iter().cloned().map(Wire::Paxos));
            node.replica.persisted(now, ready.persist_marker());
            for e in &ready.committed {
                node.kv.apply(e.zxid, &e.data);
                node.replica.applied(e.zxid);
            }
            for ev in ready.events {
                match ev {
                    Event::LostLeader(vote) => node.elector.start_looking(now, vote),
                    Event::Settled {
                        state,
                        leader,
                        epoch,
                    } => node.elector.settle(now, state, leader, epoch),
                    _ => {}
                }
            }
        }
        // 5. Once a leader is established, propose one write through it.
        if !proposed {
            if let Some(leader) = nodes.iter_mut().find(|n| n.replica.is_leader()) {
                let cmd = KvCommand {
                    principal: Bytes::new(),
                    client: 1,
                    seq: 1,
                    op: KvOp::Put {
                        key: Bytes::from_static(b"greeting"),
                        value: Bytes::from_static(b"hello"),
                    },
                };
                let zxid = leader
                    .replica
                    .propose(cmd.to_bytes())
                    .expect("the leader accepts");
                println!(
                    "step {step}: node {} leads; proposed at {zxid:?}",
                    leader.replica.id()
                );
                proposed = true;
            }
        }
        if nodes.iter().all(|n| n.kv.get(b"greeting").is_some()) {
            println!("step {step}: every replica applied the write");
            for n in &nodes {
                assert_eq!(n.kv.get(b"greeting").map(|v| &v[..]), Some(&b"hello"[..]));
            }
            return;
        }
    }
    panic!("the write did not reach every replica within 10 000 simulated milliseconds");
}
