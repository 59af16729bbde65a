//! The leader's record of each follower or observer: its sync phase,
//! acknowledgements, ACCEPTs in flight, heartbeat and snapshot progress.
//!
//! Invariant: a restart (new sync round from NEWEPOCH) forgets what the old
//! round acknowledged.

use std::collections::VecDeque;

use crate::ready::PeerProgress;
use crate::storage::Storage;
use crate::sync::FollowerPosition;
use crate::{Epoch, Time, Zxid};

use super::{Replica, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PPhase {
    /// NEWEPOCH sent (or about to be), waiting for ACKEPOCH.
    Promising,
    /// ACKEPOCH received during discovery; sync starts with the leader's.
    Acked,
    /// Streaming a snapshot; waiting for SNAPINSTALLED.
    Snap(Zxid),
    /// Streaming DIFFs up to the sync target.
    Syncing,
    /// NEWLEADER sent for a history ending at the zxid.
    NewLeaderSent(Zxid),
    /// NEWLEADER acknowledged; waiting for the leader's quorum.
    Synced,
    /// Receiving ACCEPTs.
    Broadcast,
}

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) phase: PPhase,
    pub(super) since: Time,
    pub(super) round: u32,
    pub(super) observer: bool,
    pub(super) position: FollowerPosition,
    pub(super) next_prev: Zxid,
    pub(super) match_zxid: Zxid,
    pub(super) inflight: VecDeque<(Zxid, Time)>,
    pub(super) commit_sent: Zxid,
    pub(super) applied: Zxid,
    pub(super) last_heard: Time,
    pub(super) hb_acked: u64,
    pub(super) lease_from: Time,
    pub(super) sync_failures: u32,
    /// A SNAPPROGRESS arrived for the transfer in flight: from then on only
    /// the follower's progress (not our sending) keeps it alive.
    pub(super) snap_heard: bool,
    /// The bytes the follower last reported for the transfer in flight.
    pub(super) snap_received: u64,
    /// The follower said it is recovering: none of its promises or acks
    /// count until it is readmitted.
    pub(super) recovering: bool,
    /// Recovering and durably synced in this epoch: readmit it once a
    /// quorum of counted voters acked a heartbeat of this round or later.
    pub(super) readmit_round: Option<u64>,
    /// Readmitted in this epoch: READMIT rides along every heartbeat (the
    /// message is idempotent and may be lost).
    pub(super) readmitted: bool,
    /// Payload bytes of ACCEPT and DIFF read for this follower since the
    /// replica's input number `burst_input` (see
    /// [`Config::max_send_bytes_per_input`](crate::Config::max_send_bytes_per_input)).
    pub(super) burst_bytes: usize,
    pub(super) burst_input: u64,
}

impl Peer {
    pub(super) fn new(now: Time, observer: bool) -> Peer {
        Peer {
            phase: PPhase::Promising,
            since: now,
            round: 0,
            observer,
            position: FollowerPosition {
                current_epoch: Epoch::ZERO,
                last_zxid: Zxid::ZERO,
            },
            next_prev: Zxid::ZERO,
            match_zxid: Zxid::ZERO,
            inflight: VecDeque::new(),
            commit_sent: Zxid::ZERO,
            applied: Zxid::ZERO,
            last_heard: now,
            hb_acked: 0,
            lease_from: Time::ZERO,
            sync_failures: 0,
            snap_heard: false,
            snap_received: 0,
            recovering: false,
            readmit_round: None,
            readmitted: false,
            burst_bytes: 0,
            burst_input: 0,
        }
    }

    /// Restarts this follower's sync from NEWEPOCH: forget what it holds.
    pub(super) fn restart(&mut self, now: Time) {
        self.round += 1;
        self.phase = PPhase::Promising;
        self.since = now;
        self.match_zxid = Zxid::ZERO;
        self.inflight.clear();
        self.readmit_round = None;
    }
}

impl<S: Storage> Replica<S> {
    /// Leader: where each follower and observer stands (for status pages
    /// and lag monitoring); empty unless this replica leads.
    pub fn peer_progress(&self) -> Vec<PeerProgress> {
        let Role::Leading(l) = &self.role else {
            return Vec::new();
        };
        l.peers
            .iter()
            .map(|(&id, p)| PeerProgress {
                id,
                matched: p.match_zxid,
                applied: p.applied,
                observer: p.observer,
                in_broadcast: p.phase == PPhase::Broadcast,
                recovering: p.recovering,
            })
            .collect()
    }
}
