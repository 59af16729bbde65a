//! `paxos-core`: the sans-IO Multi-Paxos kernel of the paxos toolkit.
//!
//! A [`Replica`] is one member of one replication group, written as a pure
//! state machine in the ZAB shape: **discovery** (Paxos phase 1, once per
//! epoch: FOLLOWERINFO, NEWEPOCH, ACKEPOCH, and a fetch of the quorum's most
//! recent history), **synchronisation** (DIFF, TRUNC, TRUNC+DIFF or SNAP
//! chosen by a [`SyncPlanner`], then NEWLEADER and UPTODATE) and
//! **broadcast** (Paxos phase 2: pipelined, batched ACCEPTs; an entry is
//! chosen when a quorum holds it durably). It performs no IO and reads no
//! clock: time is an argument ([`Time`]), storage writes and messages are
//! outputs, and the caller reports completions.
//!
//! The crate also holds the ids ([`NodeId`], [`Epoch`], [`Zxid`],
//! [`GroupId`]), the [`Message`] enum and its versioned wire [`Codec`], the
//! [`Storage`] trait with [`MemStorage`], the seams to the other crates
//! ([`Elector`], [`SyncPlanner`], [`StateMachine`]), single-decree
//! [`basic`] Paxos, and a deterministic simulator ([`sim`]).
//!
//! Use it alone when you bring your own IO: any transport that carries
//! [`Envelope`]s (encoded with [`Codec`]), any log that implements
//! [`Storage`], any leader election that implements [`Elector`].
//! `paxos-election`, `paxos-snapshot`, `paxos-wal` and `paxos-net-quic`
//! provide the toolkit's versions; `paxos-bench` composes them on tokio.
//!
//! # The caller's contract (the driving loop)
//!
//! 1. **Create** the replica with [`Replica::new`] over a [`Storage`] that
//!    holds the durable log and hard state, a [`SyncPlanner`], and what the
//!    state machine recovered ([`Recovered`]: applied zxid, newest snapshot).
//!    If the node is a member of an existing cluster but its durable state
//!    is gone or damaged (empty data directory, missing hard-state file),
//!    call [`Replica::mark_recovering`] before the first `ready`: the
//!    replica then counts in no quorum until an established leader
//!    readmits it (the flag is persisted through [`Ready::recovering`], so
//!    a restart mid-recovery needs no second call). With
//!    [`Config::lease_reads`], a replica that had promised an epoch waits
//!    one election timeout after `new` before it looks for a leader (its
//!    first [`Event::LostLeader`] comes from
//!    [`handle_timeout`](Replica::handle_timeout) then).
//! 2. **Feed inputs**, each with the current time:
//!    [`handle_message`](Replica::handle_message) for every message from a
//!    peer; [`handle_timeout`](Replica::handle_timeout) when the deadline of
//!    [`poll_timeout`](Replica::poll_timeout) passes (re-read it after every
//!    input); [`handle_leader_decision`](Replica::handle_leader_decision)
//!    for every decision of the elector; [`propose`](Replica::propose) and
//!    [`read_index`](Replica::read_index) for clients.
//! 3. **After any input, take a [`Ready`]** with [`Replica::ready`] and act
//!    on it, in this order:
//!    1. send `messages` at once;
//!    2. write to storage: `truncate_after` (drop the suffix), append
//!       `entries`, save `hard_state`, drop the prefix up to `compact_to`
//!       ([`Storage::write_ready`] does exactly this), then sync;
//!    3. only once those writes (and those of every earlier `Ready`) are
//!       durable, send `persisted_messages` (ACKEPOCH, ACCEPTED,
//!       ACK-NEWLEADER, SNAPINSTALLED depend on them) and call
//!       [`Replica::persisted`] with [`Ready::persist_marker`]: the leader
//!       counts its own vote only then;
//!    4. apply `committed` entries to the state machine in order, then call
//!       [`Replica::applied`] with the last one's zxid;
//!    5. serve each of `read_states` once applied up to its zxid;
//!    6. `snapshot_requests`: a send request (a leader catching a follower
//!       up, or a follower asked by a leader-elect whose needed history it
//!       has compacted): stream the named snapshot to the peer with
//!       [`Replica::send_snapshot_chunk`]; a write request (a follower, or a
//!       leader-elect fetching the quorum's history): write the chunk and,
//!       after the last, restore the state machine, make it durable and
//!       call [`Replica::snapshot_installed`];
//!    7. `events`, in order: on [`Event::LostLeader`] call
//!       [`Elector::start_looking`]; on [`Event::Settled`] call
//!       [`Elector::settle`]; on [`Event::RecoveryStarted`] call
//!       [`Elector::set_voting`]`(now, false)`; on
//!       [`Event::RecoveryComplete`] call [`Elector::set_voting`]`(now, true)`.
//!
//!    Persisting may be asynchronous (group commit over many `Ready`s), as
//!    long as `Ready`s are written in the order they were returned.
//! 4. When the caller takes a snapshot of its state machine, it reports it
//!    with [`Replica::snapshot_taken`]; the log prefix below
//!    min(applied by every live voter, the snapshot) minus
//!    [`Config::retention_entries`] then shows up in `compact_to`.
//!
//! # Example
//!
//! Most callers drive the kernel through the node layer ([`node::Node`]),
//! which composes a replica, an elector and a state machine and runs the
//! persistence pipeline the rules above describe; the reference node and
//! the simulator both do. Three nodes in one process, frames handed over
//! directly, syncs completed at once:
//!
//! ```
//! use bytes::Bytes;
//! use paxos_core::node::{Node, NodeConfig, NodeEvent, Transmit};
//! use paxos_core::sim::{TestElector, TestPlanner};
//! use paxos_core::*;
//!
//! /// A state machine that counts the commands applied.
//! #[derive(Default)]
//! struct Counter(Zxid, u64);
//! impl StateMachine for Counter {
//!     fn apply(&mut self, zxid: Zxid, _command: &Bytes) -> Bytes {
//!         (self.0, self.1) = (zxid, self.1 + 1);
//!         Bytes::from(self.1.to_string())
//!     }
//!     fn applied(&self) -> Zxid { self.0 }
//!     fn snapshot(&self, _: &mut dyn std::io::Write) -> std::io::Result<()> { Ok(()) }
//!     fn restore(&mut self, _: Zxid, _: &mut dyn std::io::Read) -> std::io::Result<()> { Ok(()) }
//! }
//!
//! // Three nodes in one process; frames are handed over directly.
//! let ids = vec![NodeId(1), NodeId(2), NodeId(3)];
//! let config = Config::new(GroupId(0), ids.clone());
//! let mut nodes: Vec<Node<MemStorage, TestElector, Counter, &str>> = ids
//!     .iter()
//!     .map(|&id| {
//!         let replica = Replica::new(id, config.clone(), MemStorage::new(),
//!             Box::new(TestPlanner), Recovered::default(), Time::ZERO).unwrap();
//!         let elector = TestElector::new(id, ids.clone(), ids.clone());
//!         Node::new(replica, elector, Counter::default(), NodeConfig::default()).unwrap()
//!     })
//!     .collect();
//! let mut now = Time::ZERO;
//! let mut answer = None;
//! let mut proposed = false;
//! for _ in 0..10_000 {
//!     let mut frames = Vec::new();
//!     for n in nodes.iter_mut() {
//!         n.handle_timeout(now);
//!         n.process(now).unwrap();
//!         // A real caller syncs on a thread of its own and reports later.
//!         if let Some(sync) = n.poll_sync() {
//!             n.storage_mut().sync().unwrap();
//!             n.handle_sync_done(now, sync, Ok(())).unwrap();
//!             n.process(now).unwrap();
//!         }
//!         let from = n.replica().id();
//!         while let Some(t) = n.poll_transmit() {
//!             frames.push((from, t));
//!         }
//!         while let Some(ev) = n.poll_event() {
//!             if let NodeEvent::Written { token, result, .. } = ev {
//!                 answer = Some((token, result));
//!             }
//!         }
//!     }
//!     for (from, t) in frames {
//!         match t {
//!             Transmit::Core(env) => {
//!                 let to = ids.iter().position(|id| *id == env.to).unwrap();
//!                 nodes[to].handle_message(now, env);
//!             }
//!             Transmit::Election(to, msg) => {
//!                 let to = ids.iter().position(|id| *id == to).unwrap();
//!                 nodes[to].handle_election_message(now, from, msg);
//!             }
//!         }
//!     }
//!     if let Some(leader) = nodes.iter_mut().find(|n| n.is_leader()) {
//!         if !proposed {
//!             leader.propose(now, Bytes::from_static(b"incr"), "client-1").unwrap();
//!             proposed = true;
//!         }
//!     }
//!     if answer.is_some() {
//!         break;
//!     }
//!     now = now + std::time::Duration::from_millis(1);
//! }
//! assert_eq!(answer, Some(("client-1", Bytes::from_static(b"1"))));
//! ```
//!
//! # Architecture invariants
//!
//! - No IO, no clock, no threads, no tokio: every effect is an output.
//! - A message that depends on a write is only ever in `persisted_messages`.
//! - The durable hard state never decreases (asserted).
//! - No entry at or below the commit point is ever truncated (asserted).
//! - A recovering replica never leads, and no quorum counts it until a
//!   leader that established its epoch without it readmits it (asserted at
//!   readmission); see `Replica::mark_recovering`.
#![warn(missing_docs)]

pub mod basic;
mod codec;
mod config;
pub mod election;
mod ids;
mod log;
mod membership;
mod message;
pub mod node;
mod plan;
mod ready;
mod replica;
pub mod rng;
pub mod sim;
pub mod state_machine;
mod storage;
pub mod sync;
mod time;

pub use codec::{Codec, CodecError, MIN_WIRE_VERSION, WIRE_VERSION};
pub use config::{Config, ConfigError, DEFAULT_MAX_EPOCH_COUNTER};
pub use election::{Decision, Elector, PeerState, VoteInfo};
pub use ids::{Epoch, GroupId, NodeId, Zxid};
pub use membership::{
    Membership, MembershipError, MAX_CONTEXT_BYTES, MAX_ENCODED_BYTES, MAX_MEMBERS,
};
pub use message::{Entry, EntryKind, Envelope, HardState, Message, SnapChunk};
pub use ready::{
    Event, PeerProgress, Persisted, ProposeError, ReadIndexError, ReadState, Ready, Recovered,
    SnapshotRequest, TransferError,
};
pub use replica::{ChangeError, MembershipChange, Replica, StartError};
pub use state_machine::StateMachine;
pub use storage::{
    Hooked, MemStorage, MetaKey, Storage, StorageError, StorageHooks, StorageSource,
};
pub use sync::{FollowerPosition, LeaderHistory, SyncPlan, SyncPlanner};
pub use time::Time;
