//! The persistence pipeline: when a `Ready`'s writes go to storage, which
//! sync makes them durable, and what is released when it returns.
//!
//! Invariants:
//! - at most one background sync is in flight, and every sync covers every
//!   write made before it was asked for (group commit);
//! - a message in `persisted_messages`, and the kernel's `persisted`
//!   marker, are released only after a sync that covers their `Ready`'s
//!   writes and every earlier one's;
//! - a hard state, a recovering flag or a suffix truncation is written
//!   after everything before it and synced at once (inline), so a hard
//!   state never reaches the disk before the log it vouches for, and no
//!   read of the log sees an entry whose truncation is still queued;
//!   unless the storage keeps them as records of the log itself
//!   (`Storage::state_in_log`): then the log's order already keeps them
//!   behind what was written before, and they take the background sync
//!   like entries (a node hosting many groups on one shared log would
//!   otherwise flush it once per group for every election's hard state);
//! - a write the storage refuses while intact (`StorageError::is_retryable`)
//!   stalls the pipeline: that `Ready` and every later one are held in
//!   order and nothing waiting for them is released until they are in.

use std::collections::VecDeque;
use std::time::Duration;

use crate::message::Envelope;
use crate::ready::{Persisted, Ready};
use crate::Time;

/// Persist markers with the messages that wait for them, in order.
pub(crate) type SyncGroup = Vec<(Persisted, Vec<Envelope>)>;

/// Identifies one background sync asked of the caller ([`super::Node::poll_sync`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncId(pub u64);

/// The disk refused a write and the log is intact: everything from that
/// write on is held, in order, and retried with backoff.
#[derive(Debug)]
pub(crate) struct Stall {
    /// `Ready`s not yet written, in order, with their markers and the
    /// messages waiting for them.
    pub(crate) held: VecDeque<(Ready, Persisted, Vec<Envelope>)>,
    pub(crate) since: Time,
    pub(crate) retry_at: Time,
    pub(crate) backoff: Duration,
    pub(crate) attempts: u64,
}

/// The pipeline's state between inputs.
#[derive(Debug, Default)]
pub(crate) struct Pipeline {
    /// The number of the last background sync asked for.
    pub(crate) last_sync: u64,
    /// The background sync in flight and what waits for it.
    pub(crate) syncing: Option<(SyncId, SyncGroup)>,
    /// A background sync asked for and not yet taken by the caller.
    pub(crate) requested: Option<SyncId>,
    /// What waits for the next sync (written while one was in flight).
    pub(crate) queued: SyncGroup,
    /// Whether anything in `queued` needs a sync at all.
    pub(crate) queued_needs_sync: bool,
    /// Set while the storage refuses writes.
    pub(crate) stall: Option<Stall>,
    /// Emptied groups kept for reuse (a few), so a sync allocates nothing.
    spare: Vec<SyncGroup>,
}

/// What to do with a `Ready` whose writes are in storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Sync on the caller's thread now (hard state, truncation, or a small
    /// follower batch).
    Inline,
    /// Ask the caller for a background sync (none in flight).
    Background,
    /// A sync is in flight: wait for the next one.
    Queue,
    /// Nothing written needs a sync: release at once (behind what waits).
    Release,
}

impl Pipeline {
    /// Where a written `Ready` goes.
    pub(crate) fn route(
        &self,
        ready: &Ready,
        small_follower_batch: bool,
        state_in_log: bool,
    ) -> Route {
        let barrier = !state_in_log
            && (ready.hard_state.is_some()
                || ready.truncate_after.is_some()
                || ready.recovering.is_some());
        if barrier {
            Route::Inline
        } else if self.syncing.is_some() {
            Route::Queue
        } else if !ready.needs_sync() {
            Route::Release
        } else if small_follower_batch {
            Route::Inline
        } else {
            Route::Background
        }
    }

    /// An empty group, reused when one is at hand.
    pub(crate) fn group(&mut self) -> SyncGroup {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps an emptied group for reuse.
    pub(crate) fn recycle(&mut self, mut group: SyncGroup) {
        const MAX_SPARE_GROUPS: usize = 4;
        group.clear();
        if self.spare.len() < MAX_SPARE_GROUPS {
            self.spare.push(group);
        }
    }

    /// Starts a background sync covering `group`.
    pub(crate) fn start(&mut self, group: SyncGroup) -> SyncId {
        assert!(
            self.syncing.is_none(),
            "invariant: at most one background sync in flight"
        );
        self.last_sync += 1;
        let id = SyncId(self.last_sync);
        self.syncing = Some((id, group));
        self.requested = Some(id);
        id
    }

    /// Enters the stalled state after a refused write.
    pub(crate) fn stall(&mut self, now: Time, backoff_min: Duration) {
        if self.stall.is_none() {
            self.stall = Some(Stall {
                held: VecDeque::new(),
                since: now,
                retry_at: now + backoff_min,
                backoff: backoff_min,
                attempts: 1,
            });
        }
    }

    /// The next time the pipeline wants a turn (a stall's retry).
    pub(crate) fn poll_timeout(&self) -> Option<Time> {
        self.stall.as_ref().map(|s| s.retry_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::HardState;
    use crate::Epoch;

    fn hard_state_ready() -> Ready {
        Ready {
            hard_state: Some(HardState {
                accepted_epoch: Epoch(2),
                current_epoch: Epoch(1),
            }),
            ..Ready::default()
        }
    }

    #[test]
    fn a_hard_state_syncs_inline_unless_the_log_holds_it() {
        let p = Pipeline::default();
        assert_eq!(p.route(&hard_state_ready(), false, false), Route::Inline);
        // In a shared log the state is a record ordered with the entries:
        // the background sync covers it, as for entries.
        assert_eq!(p.route(&hard_state_ready(), false, true), Route::Background);
        let truncation = Ready {
            truncate_after: Some(crate::Zxid::ZERO),
            ..Ready::default()
        };
        assert_eq!(p.route(&truncation, false, false), Route::Inline);
        assert_eq!(p.route(&truncation, false, true), Route::Background);
    }

    #[test]
    fn with_a_sync_in_flight_a_state_in_the_log_waits_for_the_next() {
        let mut p = Pipeline::default();
        let group = p.group();
        p.start(group);
        assert_eq!(p.route(&hard_state_ready(), false, true), Route::Queue);
        // A separate hard-state file still syncs at once.
        assert_eq!(p.route(&hard_state_ready(), false, false), Route::Inline);
    }
}
