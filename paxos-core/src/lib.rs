//! `paxos-core`: the sans-IO Multi-Paxos kernel of the paxos toolkit.
//!
//! This crate performs no IO and reads no clock.
//!
//! ```
//! use paxos_core::{Epoch, Zxid};
//! let z = Zxid::new(Epoch(2), 5);
//! assert_eq!((z.epoch(), z.counter()), (Epoch(2), 5));
//! ```
#![warn(missing_docs)]

pub mod basic;
mod codec;
mod config;
pub mod election;
mod ids;
mod log;
mod message;
mod plan;
mod replica;
pub mod sim;
pub mod state_machine;
mod storage;
pub mod sync;
mod time;

pub use codec::{Codec, CodecError, WIRE_VERSION};
pub use config::{Config, ConfigError};
pub use election::{Decision, Elector, PeerState, VoteInfo};
pub use ids::{Epoch, GroupId, NodeId, Zxid};
pub use message::{Entry, Envelope, HardState, Message, SnapChunk};
pub use replica::{
    Event, Persisted, ProposeError, ReadIndexError, ReadState, Ready, Recovered, Replica,
    SnapshotRequest,
};
pub use state_machine::StateMachine;
pub use storage::{MemStorage, Storage, StorageError};
pub use sync::{FollowerPosition, LeaderHistory, SyncPlan, SyncPlanner};
pub use time::Time;
