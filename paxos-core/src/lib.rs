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

pub mod election;
mod ids;
pub mod state_machine;
pub mod sync;
mod time;

pub use election::{Decision, Elector, PeerState, VoteInfo};
pub use ids::{Epoch, GroupId, NodeId, Zxid};
pub use state_machine::StateMachine;
pub use sync::{FollowerPosition, LeaderHistory, SyncPlan, SyncPlanner};
pub use time::Time;
