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
//! Three replicas in one process, messages handed over directly, node 1
//! told it leads (a real caller gets the [`Decision`] from its elector):
//!
//! ```
//! use bytes::Bytes;
//! use paxos_core::sim::TestPlanner;
//! use paxos_core::*;
//!
//! let ids = [NodeId(1), NodeId(2), NodeId(3)];
//! let config = Config::new(GroupId(0), ids.to_vec());
//! let now = Time::ZERO;
//! let mut nodes: Vec<Replica<MemStorage>> = ids
//!     .iter()
//!     .map(|id| {
//!         Replica::new(*id, config.clone(), MemStorage::new(), Box::new(TestPlanner), Recovered::default(), now)
//!             .unwrap()
//!     })
//!     .collect();
//! for n in &mut nodes {
//!     n.handle_leader_decision(now, Decision { leader: NodeId(1), round: 1, epoch_hint: Epoch::ZERO });
//! }
//! let mut applied: Vec<Vec<Entry>> = vec![Vec::new(); 3];
//! let mut proposed = false;
//! for _ in 0..100 {
//!     let mut inbox = Vec::new();
//!     for (i, n) in nodes.iter_mut().enumerate() {
//!         let ready = n.ready();
//!         inbox.extend(ready.messages.iter().cloned());           // 1. send now
//!         n.storage_mut().write_ready(&ready).unwrap();          // 2. write...
//!         n.storage_mut().sync().unwrap();                       //    ...and sync
//!         inbox.extend(ready.persisted_messages.iter().cloned()); // 3. then these
//!         n.persisted(now, ready.persist_marker());
//!         if let Some(last) = ready.committed.last() {            // 4. apply
//!             n.applied(last.zxid);
//!         }
//!         applied[i].extend(ready.committed);
//!     }
//!     for env in inbox {
//!         let to = ids.iter().position(|id| *id == env.to).unwrap();
//!         nodes[to].handle_message(now, env);
//!     }
//!     if nodes[0].is_leader() && !proposed {
//!         nodes[0].propose(Bytes::from_static(b"set x = 1")).unwrap();
//!         proposed = true;
//!     }
//! }
//! assert!(nodes[0].is_leader());
//! assert_eq!(applied[0].len(), 1);
//! assert_eq!(applied[0][0].data, Bytes::from_static(b"set x = 1"));
//! ```
//!
//! Followers learn the commit point from the next ACCEPT, COMMIT or
//! heartbeat; in the example the leader's idle COMMIT carries it.
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
pub use message::{Entry, Envelope, HardState, Message, SnapChunk};
pub use ready::{
    Event, PeerProgress, Persisted, ProposeError, ReadIndexError, ReadState, Ready, Recovered,
    SnapshotRequest,
};
pub use replica::{Replica, StartError};
pub use state_machine::StateMachine;
pub use storage::{MemStorage, MetaKey, Storage, StorageError, StorageSource};
pub use sync::{FollowerPosition, LeaderHistory, SyncPlan, SyncPlanner};
pub use time::Time;
