//! Snapshots: taken by the caller, streamed to a lagging follower (or to
//! the leader-elect in discovery), their progress and install; and log
//! compaction.
//!
//! Invariants: only the snapshot asked for is installed; a transfer lives
//! while the receiver reports progress; compaction keeps what transfers in
//! flight and recently heard followers still need.

use crate::membership::Membership;
use crate::message::{Message, SnapChunk};
use crate::storage::Storage;
use crate::{NodeId, Time, Zxid};

use super::follower::FPhase;
use super::leader::LPhase;
use super::progress::PPhase;
use super::{Replica, Role};
#[cfg(doc)]
use crate::{Config, SnapshotRequest};

impl<S: Storage> Replica<S> {
    /// Leader: how many times a follower's snapshot transfer (or install)
    /// went a whole [`Config::snapshot_progress_timeout`] without progress
    /// and its sync was restarted, over this replica's lifetime.
    pub fn snapshot_transfer_restarts(&self) -> u64 {
        self.snap_restarts
    }

    /// The caller took a durable local snapshot of the state machine at
    /// `zxid` (at most the applied zxid). Enables log cleanup up to it and
    /// SNAP sync of lagging followers.
    pub fn snapshot_taken(&mut self, zxid: Zxid) {
        assert!(
            zxid <= self.applied,
            "snapshot {zxid:?} beyond applied {:?}",
            self.applied
        );
        self.snapshot = Some(self.snapshot.map_or(zxid, |s| s.max(zxid)));
    }

    /// Follower: the snapshot at `zxid` received from the leader is
    /// restored into the state machine and durable. The replica drops its
    /// log (a truncation in the next `Ready`) and continues after `zxid`.
    ///
    /// Leader-elect in discovery: the snapshot fetched from the follower
    /// whose log no longer covered our position is installed; the log is
    /// reset likewise and the fetch goes on with the entries after it.
    ///
    /// Returns whether the install was taken (the log was reset to
    /// `zxid`). When it was, the caller's durable state must now include
    /// that snapshot, whatever its state machine holds: the log below it
    /// is gone. When it was not (not expected: leadership moved, or
    /// another snapshot is awaited), nothing changed.
    ///
    /// `membership` is the one in force at `zxid`, as recorded with the
    /// snapshot by the node that took it ([`Replica::membership_at`]); an
    /// invalid one refuses the install.
    pub fn snapshot_installed(&mut self, now: Time, zxid: Zxid, membership: Membership) -> bool {
        self.now = now;
        if let Err(e) = membership.validate() {
            tracing::error!(id = %self.id, ?zxid, error = %e, "installed snapshot names an invalid membership; ignoring the install");
            return false;
        }
        if matches!(self.role, Role::Leading(_)) {
            let taken = self.fetched_snapshot_installed(zxid, membership);
            self.sync_membership();
            self.advance_leader();
            return taken;
        }
        let Role::Following(f) = &mut self.role else {
            return false;
        };
        if f.installing != Some(zxid) {
            tracing::warn!(?zxid, installing = ?f.installing, "unexpected snapshot install; ignoring");
            return false;
        }
        f.installing = None;
        f.snap_done = true;
        let (leader, epoch) = (f.leader, f.epoch);
        tracing::info!(id = %self.id, ?zxid, "snapshot installed; log reset");
        self.log.reset_to(zxid, membership);
        self.sync_membership();
        self.snapshot = Some(zxid);
        self.commit = self.commit.max(zxid);
        self.applied = self.applied.max(zxid);
        self.apply_sent = self.apply_sent.max(zxid);
        self.send_persisted(leader, Message::SnapInstalled { epoch, zxid });
        true
    }

    /// Leader-elect: a fetched snapshot is installed (see
    /// [`Replica::snapshot_installed`]); returns whether it was taken.
    fn fetched_snapshot_installed(&mut self, zxid: Zxid, membership: Membership) -> bool {
        let now = self.now;
        let last = self.log.last();
        let Role::Leading(l) = &mut self.role else {
            return false;
        };
        let expected = l.phase == LPhase::Fetching
            && l.fetch_snap
                .is_some_and(|fs| fs.snapshot == zxid && zxid != Zxid::ZERO);
        let Some(from) = l.fetch_from.filter(|_| expected) else {
            tracing::warn!(id = %self.id, ?zxid, "unexpected snapshot install on a leader; ignoring");
            return false;
        };
        if zxid <= last {
            // Checked on the first chunk; the log does not grow meanwhile.
            tracing::warn!(id = %self.id, ?zxid, ?last, "fetched snapshot does not cover our log; ignoring");
            return false;
        }
        l.fetch_snap = None;
        l.fetch_sent_at = now;
        l.fetch_progress_at = now;
        // The snapshot holds only committed entries (a follower snapshots
        // what it applied), and everything we held is below it: what we
        // drop is either inside it or was never committed.
        tracing::info!(id = %self.id, ?zxid, %from, "fetched snapshot installed; log reset, fetching the entries after it");
        self.log.reset_to(zxid, membership);
        self.snapshot = Some(zxid);
        self.commit = self.commit.max(zxid);
        self.applied = self.applied.max(zxid);
        self.apply_sent = self.apply_sent.max(zxid);
        self.send_fetch(from);
        true
    }

    /// Follower: the snapshot `snapshot` being received from the leader
    /// (through [`SnapshotRequest::Write`]) has its first `received` bytes
    /// in place, and, if `installing`, is complete and being installed.
    /// Call it as chunks are taken (or refused: `received` is then what the
    /// receiver holds, which is where the leader resumes) and every
    /// heartbeat interval or so while the install runs. The leader keeps
    /// the transfer alive on these reports
    /// ([`Config::snapshot_progress_timeout`]); at most one report per
    /// heartbeat interval leaves, the others are dropped.
    ///
    /// Leader-elect fetching a follower's snapshot in discovery: the same
    /// calls; nothing is sent, but progress keeps discovery from timing
    /// out (for [`Config::snapshot_progress_timeout`] after each report)
    /// and `received` is where the transfer resumes if it must be asked
    /// for again.
    pub fn snapshot_progress(
        &mut self,
        now: Time,
        snapshot: Zxid,
        received: u64,
        installing: bool,
    ) {
        self.now = now;
        let hb = self.config.heartbeat_interval;
        if let Role::Leading(l) = &mut self.role {
            // Our own fetch of a follower's snapshot: progress keeps
            // discovery alive and says where a restart resumes.
            if let Some(fs) = l.fetch_snap.as_mut().filter(|fs| {
                l.phase == LPhase::Fetching && fs.snapshot == snapshot && snapshot != Zxid::ZERO
            }) {
                if installing || received > fs.received {
                    l.fetch_progress_at = now;
                    l.fetch_sent_at = now;
                }
                fs.received = received;
                fs.installing = installing;
            }
            return;
        }
        let Role::Following(f) = &mut self.role else {
            return;
        };
        if f.phase != FPhase::Sync || f.snap_done || f.installing != Some(snapshot) {
            return;
        }
        if f.progress_sent_at
            .is_some_and(|t| now.saturating_since(t) < hb)
        {
            return;
        }
        f.progress_sent_at = Some(now);
        let (leader, epoch, round) = (f.leader, f.epoch, f.round);
        self.send(
            leader,
            Message::SnapProgress {
                epoch,
                round,
                snapshot,
                received,
                installing,
            },
        );
    }

    /// Leader: one chunk of the snapshot a [`SnapshotRequest::Send`] asked
    /// for. Returns `false` (and sends nothing) if that follower no longer
    /// waits for this snapshot.
    ///
    /// Follower: the same for a snapshot its leader-elect asked for in
    /// discovery ([`Message::FetchSnapshot`]).
    pub fn send_snapshot_chunk(&mut self, to: NodeId, chunk: SnapChunk) -> bool {
        if let Role::Following(f) = &self.role {
            if f.leader != to
                || f.phase != FPhase::Sync
                || f.serving_snap != Some(chunk.snapshot_zxid)
            {
                return false;
            }
            let (epoch, round) = (f.epoch, f.round);
            self.send(
                to,
                Message::Snap {
                    epoch,
                    round,
                    chunk,
                },
            );
            return true;
        }
        let Role::Leading(l) = &mut self.role else {
            return false;
        };
        let epoch = l.epoch;
        let Some(p) = l.peers.get_mut(&to) else {
            return false;
        };
        if p.phase != PPhase::Snap(chunk.snapshot_zxid) {
            return false;
        }
        if !p.snap_heard {
            // A follower that never reported (an older build) is kept
            // alive by our sending, as before progress reports existed.
            p.since = self.now;
        }
        let round = p.round;
        self.send(
            to,
            Message::Snap {
                epoch,
                round,
                chunk,
            },
        );
        true
    }

    /// The next `Ready` cuts the log as far as it safely can: up to the
    /// latest snapshot and what recently heard followers have applied (and
    /// any snapshot still being sent), as always, but without keeping
    /// [`Config::retention_entries`] behind. For a host whose log is
    /// shared by many groups, to let a quiet group's few old entries go
    /// ([`Node::purge_log`](crate::Node::purge_log) takes a snapshot
    /// first); a follower that falls behind them later needs a snapshot
    /// rather than a DIFF.
    pub fn compact_log_now(&mut self) {
        self.compact_now = true;
    }

    /// Emits the log prefix the storage may drop.
    pub(super) fn maybe_compact(&mut self) {
        let full = std::mem::take(&mut self.compact_now);
        let Some(snap) = self.snapshot else { return };
        let mut pin = self.applied.min(snap).min(self.log.durable_last());
        if let Role::Leading(l) = &self.role {
            let now = self.now;
            let pin_timeout = self.config.follower_pin_timeout;
            for v in &self.config.voters {
                if *v == self.id {
                    continue;
                }
                match l.peers.get(v) {
                    Some(p) if now.saturating_since(p.last_heard) <= pin_timeout => {
                        pin = pin.min(p.applied);
                        // A follower receiving a snapshot continues with
                        // DIFF from it: keep that part of the log, however
                        // long the transfer takes.
                        if let PPhase::Snap(z) = p.phase {
                            pin = pin.min(z);
                        }
                    }
                    None if now.saturating_since(l.started) <= pin_timeout => pin = Zxid::ZERO,
                    _ => {}
                }
            }
        }
        let Some(pin) = self.log.index.at_or_before(pin) else {
            return;
        };
        let keep = if full {
            0
        } else {
            self.config.retention_entries
        };
        let Some(c) = self.log.index.back_n(pin, keep) else {
            return;
        };
        if self.log.index.first().is_some_and(|f| c >= f) && c <= snap {
            if full {
                tracing::info!(id = %self.id, upto = ?c, "log cut as far as it safely can (asked for)");
            } else {
                tracing::debug!(id = %self.id, upto = ?c, "log cleanup");
            }
            self.log.compact(c);
        }
    }
}
