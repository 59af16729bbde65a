//! The follower's side of discovery (FOLLOWERINFO, NEWEPOCH/ACKEPOCH),
//! sync (TRUNC, DIFF, SNAP, NEWLEADER/UPTODATE) and broadcast (ACCEPT,
//! COMMIT, heartbeats), and serving the leader-elect's history fetch.
//!
//! Invariants: only the followed leader is heard; an epoch is promised only
//! above the accepted one (or again to the same leader); no TRUNC drops a
//! committed entry; an acknowledgement leaves once what it vouches for is
//! durable.

use crate::election::PeerState;
use crate::message::{Entry, HardState, Message};
use crate::ready::{Event, ReadState, SnapshotRequest};
use crate::storage::Storage;
use crate::sync::{FollowerPosition, SyncPlan};
use crate::{plan, Epoch, NodeId, Time, Zxid};

use super::{Replica, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FPhase {
    /// Sent FOLLOWERINFO, waiting for NEWEPOCH.
    Discovery,
    /// Promised the leader's epoch; receiving TRUNC/DIFF/SNAP and NEWLEADER.
    Sync,
    /// Got UPTODATE.
    Broadcast,
}

#[derive(Debug)]
pub(super) struct Follower {
    pub(super) leader: NodeId,
    pub(super) phase: FPhase,
    pub(super) epoch: Epoch,
    pub(super) round: u32,
    trunc_done: bool,
    pub(super) newleader_seen: bool,
    pub(super) installing: Option<Zxid>,
    pub(super) snap_done: bool,
    /// The local snapshot this follower streams to its leader-elect, which
    /// asked for it (FETCHSNAP) because our log no longer covers its fetch.
    pub(super) serving_snap: Option<Zxid>,
    /// When the last SNAPPROGRESS left (rate limit: one per heartbeat).
    pub(super) progress_sent_at: Option<Time>,
    /// The history NEWLEADER named, once taken; ACKNEWLEADER is sent again
    /// every heartbeat interval until UPTODATE comes (it may be lost).
    pub(super) newleader_last: Zxid,
    /// The `Ready` carrying the first ACKNEWLEADER: once it is persisted
    /// (that acknowledgement left), sending it again says nothing new.
    pub(super) ack_ready_seq: u64,
    pub(super) ack_resent_at: Time,
    pub(super) last_heard: Time,
    pub(super) info_sent_at: Time,
    pub(super) applied_reported: Zxid,
    pub(super) applied_reported_at: Time,
    /// The leader said the group is idle (QUIESCE) and this follower holds
    /// its commit point: no election timer until the leader speaks again
    /// or the host wakes it.
    pub(super) quiesced: bool,
}

impl<S: Storage> Replica<S> {
    pub(super) fn become_follower(&mut self, now: Time, leader: NodeId) {
        if matches!(self.role, Role::Leading(_)) {
            self.lose_leader("another leader decided");
        }
        tracing::info!(id = %self.id, %leader, "following");
        self.role = Role::Following(Follower {
            leader,
            phase: FPhase::Discovery,
            epoch: Epoch::ZERO,
            round: 0,
            trunc_done: false,
            newleader_seen: false,
            installing: None,
            snap_done: false,
            serving_snap: None,
            progress_sent_at: None,
            newleader_last: Zxid::ZERO,
            ack_ready_seq: u64::MAX,
            ack_resent_at: now,
            last_heard: now,
            info_sent_at: now,
            applied_reported: Zxid::ZERO,
            applied_reported_at: now,
            quiesced: false,
        });
        self.send_follower_info(leader);
    }

    pub(super) fn send_follower_info(&mut self, leader: NodeId) {
        let msg = Message::FollowerInfo {
            accepted_epoch: self.hs.accepted_epoch,
            current_epoch: self.hs.current_epoch,
            last_zxid: self.log.last(),
            recovering: self.recovering,
        };
        self.send(leader, msg);
    }

    pub(super) fn follower_step(&mut self, from: NodeId, msg: Message) {
        let Role::Following(f) = &mut self.role else {
            return;
        };
        if f.leader != from {
            tracing::debug!(id = %self.id, %from, msg = msg.name(), "message from a node we do not follow");
            return;
        }
        match msg {
            Message::NewEpoch {
                epoch,
                round,
                established,
            } => {
                let ok = if self.hs.accepted_epoch < epoch {
                    true
                } else if self.hs.accepted_epoch == epoch {
                    self.promised_to == Some((from, epoch)) || established
                } else {
                    false
                };
                if ok
                    && epoch > self.hs.accepted_epoch
                    && self.hold_until.is_some_and(|t| self.now < t)
                {
                    // Lease hold-off after a restart: no new promise yet.
                    // Not a refusal; the leader retries after its sync timeout.
                    tracing::debug!(id = %self.id, ?epoch, "NEWEPOCH during the lease hold-off; ignored");
                    return;
                }
                if !ok {
                    tracing::info!(id = %self.id, ?epoch, accepted = ?self.hs.accepted_epoch, "NEWEPOCH refused");
                    let accepted_epoch = self.hs.accepted_epoch;
                    self.send(
                        from,
                        Message::EpochRefused {
                            epoch,
                            accepted_epoch,
                        },
                    );
                    self.lose_leader("refused NEWEPOCH");
                    return;
                }
                if f.phase != FPhase::Discovery && f.epoch == epoch && round <= f.round {
                    // A stale round, or a copy of the one we took: that
                    // promise and its ACKEPOCH stand. Taking it again would
                    // forget a NEWLEADER already taken, and the leader,
                    // which counted our acknowledgement, would never send
                    // it again: we would ignore UPTODATE and every ACCEPT.
                    // (A new sync round of the leader comes with a higher
                    // round.)
                    return;
                }
                f.phase = FPhase::Sync;
                f.epoch = epoch;
                f.round = round;
                f.trunc_done = false;
                f.newleader_seen = false;
                f.installing = None;
                f.snap_done = false;
                f.serving_snap = None;
                f.progress_sent_at = None;
                self.promised_to = Some((from, epoch));
                let hs = HardState {
                    accepted_epoch: epoch,
                    ..self.hs
                };
                self.set_hs(hs);
                tracing::debug!(id = %self.id, ?epoch, round, "promised epoch");
                let msg = Message::AckEpoch {
                    epoch,
                    round,
                    current_epoch: self.hs.current_epoch,
                    last_zxid: self.log.last(),
                };
                self.send_persisted(from, msg);
            }
            Message::Trunc { epoch, round, to } => {
                if f.phase != FPhase::Sync
                    || f.epoch != epoch
                    || f.round != round
                    || f.trunc_done
                    || f.newleader_seen
                    || f.installing.is_some()
                {
                    return;
                }
                f.trunc_done = true;
                // A TRUNC below our commit point: the leader cannot tell
                // where our log leaves its history (it holds nothing of our
                // last epoch, and never truncates across an epoch boundary
                // but to ZERO), and its DIFF starts there. Every committed
                // entry is in every later leader's history, so we keep our
                // committed prefix and drop only what follows it; the DIFF
                // then overlaps what we keep (`follower_append` checks the
                // overlap and skips it). A leader whose history lacked our
                // commit point would be faulty: its DIFF would not hold our
                // last entry and would be refused.
                let to = if to < self.commit {
                    tracing::info!(id = %self.id, %from, asked = ?to, commit = ?self.commit,
                        "TRUNC below the commit point: keeping the committed prefix");
                    self.commit
                } else {
                    to
                };
                if to >= self.log.last() {
                    return;
                }
                tracing::info!(id = %self.id, ?to, last = ?self.log.last(), "TRUNC: dropping uncommitted suffix");
                let to = self.log.position_at_or_before(to).unwrap_or(Zxid::ZERO);
                self.log.truncate_after(to);
            }
            Message::Diff {
                epoch,
                prev,
                entries,
            } => {
                if f.phase != FPhase::Sync || f.epoch != epoch || f.installing.is_some() {
                    return;
                }
                self.follower_append(from, epoch, prev, entries, None);
            }
            Message::Accept {
                epoch,
                prev,
                commit,
                entries,
            } => {
                let accepting = f.epoch == epoch
                    && (f.phase == FPhase::Broadcast
                        || (f.phase == FPhase::Sync && f.newleader_seen));
                if !accepting {
                    return;
                }
                self.follower_append(from, epoch, prev, entries, Some(commit));
            }
            Message::Snap {
                epoch,
                round,
                chunk,
            } => {
                if f.phase != FPhase::Sync
                    || f.epoch != epoch
                    || f.round != round
                    || f.newleader_seen
                {
                    return;
                }
                if f.snap_done || f.installing.is_some_and(|s| s != chunk.snapshot_zxid) {
                    return;
                }
                f.installing = Some(chunk.snapshot_zxid);
                self.out
                    .snapshot_requests
                    .push(SnapshotRequest::Write { from, chunk });
            }
            Message::NewLeader { epoch, last_zxid } => {
                if f.phase != FPhase::Sync || f.epoch != epoch || f.installing.is_some() {
                    return;
                }
                if self.log.last() != last_zxid {
                    tracing::debug!(id = %self.id, ours = ?self.log.last(), theirs = ?last_zxid, "NEWLEADER history mismatch");
                    return;
                }
                f.newleader_seen = true;
                f.newleader_last = last_zxid;
                f.ack_ready_seq = self.seq + 1;
                f.ack_resent_at = self.now;
                let hs = HardState {
                    current_epoch: epoch,
                    ..self.hs
                };
                self.set_hs(hs);
                self.send_persisted(from, Message::AckNewLeader { epoch, last_zxid });
            }
            Message::UpToDate { epoch, commit } => {
                if f.epoch != epoch || !f.newleader_seen || f.phase == FPhase::Broadcast {
                    return;
                }
                f.phase = FPhase::Broadcast;
                let state = if self.config.is_observer(self.id) {
                    PeerState::Observing
                } else {
                    PeerState::Following
                };
                tracing::info!(id = %self.id, leader = %from, ?epoch, "synced; broadcast");
                self.out.events.push(Event::Settled {
                    state,
                    leader: from,
                    epoch,
                });
                self.learn_commit(commit);
            }
            Message::Commit { epoch, commit } => {
                if f.epoch == epoch && f.newleader_seen {
                    self.learn_commit(commit);
                }
            }
            Message::Heartbeat {
                epoch,
                commit,
                round,
            } => {
                if f.epoch != epoch || f.phase == FPhase::Discovery {
                    return;
                }
                if f.newleader_seen {
                    self.learn_commit(commit);
                }
                self.send(from, Message::HeartbeatAck { epoch, round });
            }
            Message::ReadIndexResponse { ctx, zxid, .. } => match zxid {
                Some(zxid) => self.out.read_states.push(ReadState { ctx, zxid }),
                None => self.out.events.push(Event::ReadAborted { ctx }),
            },
            Message::TakeOver { epoch, to } => {
                // Our leader handed over and stepped down: look at once
                // (its lease ended when it sent this). The nominee stands
                // as such; a recovering or non-voting nominee cannot lead
                // and looks like everyone else.
                if f.epoch != epoch {
                    return;
                }
                let nominated = to == self.id && self.config.is_voter(self.id) && !self.recovering;
                tracing::info!(id = %self.id, leader = %from, %to, ?epoch, nominated, "leader handed over; looking");
                self.lose_leader_as("the leader handed over", nominated);
                self.follow_nominee(epoch, to);
            }
            Message::Readmit { epoch } => {
                // Honoured only from the leader we follow, in its epoch,
                // once our copy of its history and current epoch are
                // durable (our ACKNEWLEADER said so; check our own view).
                if !self.recovering
                    || self.readmit.is_some()
                    || f.epoch != epoch
                    || f.phase != FPhase::Broadcast
                    || self.durable_hs.current_epoch != epoch
                {
                    return;
                }
                tracing::info!(id = %self.id, leader = %from, ?epoch, "readmitted by the leader; clearing the recovering flag");
                self.readmit = Some((from, epoch, None));
                self.recovering_write = Some(false);
            }
            Message::FetchHistory {
                epoch,
                current_epoch,
                last_zxid,
            } => {
                if f.epoch != epoch || f.phase != FPhase::Sync {
                    return;
                }
                self.serve_fetch(
                    from,
                    epoch,
                    FollowerPosition {
                        current_epoch,
                        last_zxid,
                    },
                );
            }
            Message::FetchSnapshot {
                epoch,
                snapshot,
                offset,
            } => {
                if f.epoch != epoch || f.phase != FPhase::Sync {
                    return;
                }
                let Some(s) = self.snapshot else {
                    tracing::warn!(id = %self.id, leader = %from, "snapshot fetch asked but no local snapshot; ignoring");
                    return;
                };
                let offset = if s == snapshot { offset } else { 0 };
                f.serving_snap = Some(s);
                tracing::info!(id = %self.id, leader = %from, snapshot = ?s, offset, "streaming our snapshot to the leader-elect");
                self.out.snapshot_requests.push(SnapshotRequest::Send {
                    to: from,
                    snapshot: s,
                    offset,
                });
            }
            other => {
                tracing::debug!(id = %self.id, msg = other.name(), "follower ignores message");
            }
        }
    }

    fn learn_commit(&mut self, commit: Zxid) {
        let c = commit.min(self.log.last());
        if c > self.commit {
            self.commit = c;
        }
    }

    /// Appends a DIFF or ACCEPT batch if it continues the log.
    fn follower_append(
        &mut self,
        from: NodeId,
        epoch: Epoch,
        prev: Zxid,
        entries: Vec<Entry>,
        commit: Option<Zxid>,
    ) {
        let last = self.log.last();
        // Well-formedness: strictly increasing after prev.
        let mut p = prev;
        for e in &entries {
            if e.zxid <= p {
                tracing::warn!(%from, "malformed batch: zxids not increasing");
                return;
            }
            p = e.zxid;
        }
        let batch_last = entries.last().map_or(prev, |e| e.zxid);
        if prev > last || !self.log.is_position(prev) {
            self.send(
                from,
                Message::AcceptNack {
                    epoch,
                    last_zxid: last,
                },
            );
            return;
        }
        if prev < last {
            // Overlap (a duplicate or a rewind): our log is a prefix of the
            // leader's history here, so skip what we hold.
            if batch_last <= last {
                if let Some(c) = commit {
                    self.learn_commit(c);
                }
                self.send_persisted(
                    from,
                    Message::Accepted {
                        epoch,
                        durable: last,
                    },
                );
                return;
            }
            if !entries.iter().any(|e| e.zxid == last) {
                self.send(
                    from,
                    Message::AcceptNack {
                        epoch,
                        last_zxid: last,
                    },
                );
                return;
            }
        }
        if let Err((zxid, err)) = Self::memberships_valid(&entries) {
            // Only a faulty leader sends this: appending it would split the
            // group's idea of who votes.
            tracing::error!(id = %self.id, %from, ?zxid, error = %err, "leader sent a malformed membership change; abandoning it");
            self.lose_leader("leader sent a malformed membership change");
            return;
        }
        for e in entries {
            if e.zxid <= last {
                continue;
            }
            if !self.log.index.continues(e.zxid) {
                tracing::warn!(%from, zxid = ?e.zxid, "batch breaks log continuity");
                self.send(
                    from,
                    Message::AcceptNack {
                        epoch,
                        last_zxid: self.log.last(),
                    },
                );
                return;
            }
            self.log.append(e);
        }
        if let Some(c) = commit {
            self.learn_commit(c);
        }
        let durable = self.log.last();
        self.send_persisted(from, Message::Accepted { epoch, durable });
    }

    fn serve_fetch(&mut self, to: NodeId, epoch: Epoch, pos: FollowerPosition) {
        let ends = self.log.index.epoch_ends();
        let h = self.history(&ends);
        let last_zxid = self.log.last();
        let (trunc_to, prev) = match plan::builtin(pos, &h, self.log.base, false) {
            SyncPlan::UpToDate => (None, last_zxid),
            SyncPlan::Diff { after } => (None, after),
            SyncPlan::Trunc { to } | SyncPlan::TruncDiff { to } => (Some(to), to),
            SyncPlan::Snap { .. } => {
                self.send(
                    to,
                    Message::FetchReply {
                        epoch,
                        trunc_to: None,
                        prev: Zxid::ZERO,
                        entries: Vec::new(),
                        last_zxid,
                        unable: true,
                    },
                );
                return;
            }
        };
        let mut entries = Vec::new();
        if let Err(e) = self.log.read(
            prev,
            last_zxid,
            self.config.max_batch_entries,
            self.config.max_batch_bytes,
            &mut entries,
        ) {
            tracing::warn!(?e, "cannot serve fetch");
            return;
        }
        self.send(
            to,
            Message::FetchReply {
                epoch,
                trunc_to,
                prev,
                entries,
                last_zxid,
                unable: false,
            },
        );
    }
}
