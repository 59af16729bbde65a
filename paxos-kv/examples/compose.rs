//! Composing the toolkit by hand: three nodes in one process, each the node
//! layer of paxos-core (`paxos_core::node::Node`: the kernel, the
//! persistence pipeline) over paxos-election's `FastElection` (who leads),
//! paxos-snapshot's `ZabPlanner` (how to catch followers up) and the
//! reference key-value state machine, with in-memory storage and frames
//! handed over directly. Time is simulated: one millisecond per step.
//!
//! paxos-kv's node (`paxos_kv::node`) runs the same layer with `WalStorage`
//! and `paxos-net-quic` in place of the in-memory parts.
//!
//! ```text
//! cargo run -p paxos-kv --example compose
//! ```
#![allow(clippy::print_stdout)]

use bytes::Bytes;
use paxos_core::node::{Node, NodeConfig, NodeEvent, Transmit};
use paxos_core::{Config, GroupId, MemStorage, NodeId, Recovered, Replica, Storage, Time};
use paxos_election::{ElectionConfig, FastElection, Notification};
use paxos_kv::kv::{KvCommand, KvOp, KvStore};
use paxos_snapshot::{PlannerConfig, ZabPlanner};
use std::collections::VecDeque;
use std::time::Duration;

/// The node layer over in-memory storage; a client request is named by a
/// number.
type KvNode = Node<MemStorage, FastElection, KvStore, u64>;

fn main() {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let mut nodes: Vec<KvNode> = ids
        .iter()
        .map(|&id| {
            let replica = Replica::new(
                id,
                Config::new(GroupId(0), ids.to_vec()),
                MemStorage::new(),
                Box::new(ZabPlanner::new(PlannerConfig::default())),
                Recovered::default(),
                Time::ZERO,
            )
            .expect("valid configuration");
            let elector = FastElection::new(ElectionConfig {
                id,
                voters: ids.to_vec(),
                seed: id.0,
                ..ElectionConfig::default()
            })
            .expect("valid election configuration");
            Node::new(replica, elector, KvStore::new(), NodeConfig::default())
                .expect("memory storage starts")
        })
        .collect();
    let index = |id: NodeId| ids.iter().position(|&i| i == id).expect("known node");
    let mut wire: VecDeque<(NodeId, Transmit<Notification>)> = VecDeque::new();
    let mut now = Time::ZERO;
    let mut proposed = false;

    for step in 0..10_000 {
        now += Duration::from_millis(1);
        // 1. Deliver what is in flight.
        while let Some((from, t)) = wire.pop_front() {
            match t {
                Transmit::Core(env) => {
                    let to = index(env.to);
                    nodes[to].handle_message(now, env);
                }
                Transmit::Election(to, n) => nodes[index(to)].handle_election_message(now, from, n),
            }
        }
        for node in &mut nodes {
            // 2. Timers, then let the layer process.
            node.handle_timeout(now);
            node.process(now).expect("memory storage does not fail");
            // 3. A background sync: a real node runs it on a thread of its own.
            if let Some(sync) = node.poll_sync() {
                let done = node.storage_mut().sync();
                node.handle_sync_done(now, sync, done)
                    .expect("memory storage does not fail");
                node.process(now).expect("memory storage does not fail");
            }
            // 4. Frames to send, and answers.
            let from = node.replica().id();
            while let Some(t) = node.poll_transmit() {
                wire.push_back((from, t));
            }
            while let Some(ev) = node.poll_event() {
                if let NodeEvent::Written { token, zxid, .. } = ev {
                    println!("step {step}: request {token} committed at {zxid:?}");
                }
            }
        }
        // 5. Once a leader is established, propose one write through it.
        if !proposed {
            if let Some(leader) = nodes.iter_mut().find(|n| n.is_leader()) {
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
                    .propose(now, cmd.to_bytes(), 1)
                    .map_err(|r| r.error)
                    .expect("the leader accepts");
                println!(
                    "step {step}: node {} leads; proposed at {zxid:?}",
                    leader.replica().id()
                );
                proposed = true;
            }
        }
        if nodes
            .iter()
            .all(|n| n.state_machine().get(b"greeting").is_some())
        {
            println!("step {step}: every replica applied the write");
            for n in &nodes {
                assert_eq!(
                    n.state_machine().get(b"greeting").map(|v| &v[..]),
                    Some(&b"hello"[..])
                );
            }
            return;
        }
    }
    panic!("the write did not reach every replica within 10 000 simulated milliseconds");
}
