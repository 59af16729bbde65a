//! The leader: its state, its handling of every follower message, and
//! discovery (FOLLOWERINFO, NEWEPOCH, ACKEPOCH, fetching the quorum's most
//! recent history by FETCH or by snapshot), the quorum-driven phase
//! transitions up to an established epoch, each follower's sync plan.
//!
//! Invariants: a phase advances only on a quorum of counted (not
//! recovering) voters, the leader counting itself once durable; the new
//! epoch is above every epoch that quorum accepted; the quorum's most
//! recent history is adopted before anyone syncs, dropping nothing committed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::election::PeerState;
use crate::message::{HardState, Message};
use crate::ready::{Event, SnapshotRequest};
use crate::storage::Storage;
use crate::sync::{FollowerPosition, LeaderHistory, SyncPlan};
use crate::{plan, Epoch, NodeId, Time, Zxid};

use super::progress::{PPhase, Peer};
use super::reads::PendingRead;
use super::transfer::Transfer;
use super::{Replica, Role};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LPhase {
    /// Collecting FOLLOWERINFO (accepted epochs) from a quorum.
    CollectInfo,
    /// NEWEPOCH sent; collecting ACKEPOCH from a quorum.
    CollectAcks,
    /// Fetching the missing suffix from the follower with the most recent
    /// history: by DIFF, or, when that follower's log no longer covers our
    /// position, its snapshot and then the entries after it.
    Fetching,
    /// Syncing followers; waiting for a quorum of NEWLEADER acks.
    Sync,
    /// Established.
    Broadcast,
}

impl PartialOrd for LPhase {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for LPhase {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let rank = |p: &LPhase| match p {
            LPhase::CollectInfo => 0,
            LPhase::CollectAcks => 1,
            LPhase::Fetching => 2,
            LPhase::Sync => 3,
            LPhase::Broadcast => 4,
        };
        rank(self).cmp(&rank(other))
    }
}

/// The leader-elect's fetch of a follower's snapshot in discovery.
#[derive(Clone, Copy, Debug)]
pub(super) struct FetchSnap {
    /// The snapshot being received; `Zxid::ZERO` until its first chunk.
    pub(super) snapshot: Zxid,
    /// Bytes of it our receiver holds from offset 0 (where a restarted
    /// transfer resumes).
    pub(super) received: u64,
    /// The whole snapshot is in and our driver installs it.
    pub(super) installing: bool,
}

#[derive(Debug)]
pub(super) struct Leader {
    pub(super) phase: LPhase,
    pub(super) epoch: Epoch,
    infos: BTreeMap<NodeId, Epoch>,
    /// Senders of `infos` that said they are recovering (not counted).
    info_recovering: BTreeSet<NodeId>,
    /// Every peer counted in a quorum that established this epoch
    /// (FOLLOWERINFO, ACKEPOCH, ACKNEWLEADER). Such a peer cannot be
    /// readmitted by this leader: its forgotten promise helped build the
    /// epoch, so it must be synced by an epoch established without it.
    pub(super) helped: BTreeSet<NodeId>,
    pub(super) peers: BTreeMap<NodeId, Peer>,
    pub(super) history_end: Zxid,
    pub(super) started: Time,
    pub(super) fetch_from: Option<NodeId>,
    /// The current epoch of the member whose history our log holds (ours,
    /// or the one we fetch from): with our last zxid, the position a
    /// counted member must exceed to hold more recent history.
    pub(super) adopted_epoch: Epoch,
    pub(super) fetch_sent_at: Time,
    /// Fetching by snapshot: `fetch_from`'s log no longer covers our
    /// position, so we take its snapshot, then the entries after it.
    pub(super) fetch_snap: Option<FetchSnap>,
    /// When the fetch by snapshot last progressed (a chunk, a progress
    /// report of our own driver): discovery does not time out while it
    /// progresses, however long the transfer and the install take.
    pub(super) fetch_progress_at: Time,
    pub(super) counter: u32,
    pub(super) hb_round: u64,
    pub(super) hb_due: Time,
    pub(super) hb_sent: VecDeque<(u64, Time)>,
    pub(super) reads: VecDeque<PendingRead>,
    /// A hand-over in progress ([`Replica::transfer_leadership`]).
    pub(super) transfer: Option<Transfer>,
    /// Quiesced: no heartbeats, no check-quorum, until woken.
    pub(super) quiesced: bool,
    /// Since when the group has been idle (see `Config::quiesce_after`).
    pub(super) quiet_since: Option<Time>,
    /// When the leader was last woken from quiescence: the check-quorum
    /// counts from here for peers not heard since (never for leases).
    pub(super) resumed_at: Time,
}

impl<S: Storage> Replica<S> {
    pub(super) fn become_leader(&mut self, now: Time) {
        assert!(!self.recovering, "a recovering replica never leads");
        tracing::info!(id = %self.id, accepted = ?self.hs.accepted_epoch, "elected; discovery starts");
        let mut infos = BTreeMap::new();
        infos.insert(self.id, self.hs.accepted_epoch);
        self.role = Role::Leading(Box::new(Leader {
            phase: LPhase::CollectInfo,
            epoch: Epoch::ZERO,
            infos,
            info_recovering: BTreeSet::new(),
            helped: BTreeSet::new(),
            peers: BTreeMap::new(),
            history_end: Zxid::ZERO,
            started: now,
            fetch_from: None,
            adopted_epoch: self.hs.current_epoch,
            fetch_sent_at: now,
            fetch_snap: None,
            fetch_progress_at: now,
            counter: 0,
            hb_round: 0,
            hb_due: now + self.config.heartbeat_interval,
            hb_sent: VecDeque::new(),
            reads: VecDeque::new(),
            transfer: None,
            quiesced: false,
            quiet_since: None,
            resumed_at: Time::ZERO,
        }));
    }

    pub(super) fn leader_step(&mut self, from: NodeId, msg: Message) {
        let observer = self.config.is_observer(from);
        let now = self.now;
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let epoch = l.epoch;
        match msg {
            Message::FollowerInfo {
                accepted_epoch,
                recovering,
                ..
            } => {
                if recovering {
                    tracing::info!(leader = %self.id, follower = %from, "follower is recovering; not counted until readmitted");
                }
                if l.phase == LPhase::CollectInfo {
                    l.infos.insert(from, accepted_epoch);
                    if recovering {
                        l.info_recovering.insert(from);
                    } else {
                        l.info_recovering.remove(&from);
                    }
                    return;
                }
                if accepted_epoch > epoch {
                    self.lose_leader("a follower promised a higher epoch");
                    return;
                }
                // Only once discovery is over: its quorum is then checked
                // against the adopted membership. While fetching, it is a
                // quorum of this leader's own view, which may be changes
                // behind: a node that led this same epoch under the newer
                // membership would take the claim for a promise to us.
                let established = l.phase >= LPhase::Sync;
                let p = l
                    .peers
                    .entry(from)
                    .or_insert_with(|| Peer::new(now, observer));
                p.last_heard = now;
                p.restart(now);
                p.recovering = recovering;
                p.readmitted = false;
                let round = p.round;
                self.send(
                    from,
                    Message::NewEpoch {
                        epoch,
                        round,
                        established,
                    },
                );
            }
            Message::EpochRefused { accepted_epoch, .. } => {
                if accepted_epoch > epoch {
                    self.lose_leader("a follower refused our epoch");
                }
            }
            Message::AckEpoch {
                epoch: e,
                round,
                current_epoch,
                last_zxid,
            } => {
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e != epoch || p.round != round || p.phase != PPhase::Promising {
                    return;
                }
                p.position = FollowerPosition {
                    current_epoch,
                    last_zxid,
                };
                p.phase = PPhase::Acked;
                p.since = now;
                if l.phase >= LPhase::Sync {
                    self.start_sync(from);
                }
            }
            Message::FetchReply {
                epoch: e,
                trunc_to,
                prev,
                entries,
                last_zxid,
                unable,
            } => {
                if e != epoch || l.phase != LPhase::Fetching || l.fetch_from != Some(from) {
                    return;
                }
                if unable {
                    if l.fetch_snap.is_some() {
                        // A reply to a FETCH sent before we asked for the
                        // snapshot: the transfer answers that.
                        return;
                    }
                    // The follower compacted its log past our position:
                    // take its snapshot, then the entries after it.
                    tracing::info!(id = %self.id, %from, last = ?self.log.last(), "discovery: the follower's log no longer covers our position; fetching its snapshot");
                    l.fetch_snap = Some(FetchSnap {
                        snapshot: Zxid::ZERO,
                        received: 0,
                        installing: false,
                    });
                    l.fetch_sent_at = now;
                    l.fetch_progress_at = now;
                    self.send_fetch_snapshot(from);
                    return;
                }
                if l.fetch_snap.is_some() {
                    // A late reply to a FETCH sent before the snapshot was
                    // asked for; the snapshot replaces our log anyway.
                    return;
                }
                if let Some(t) = trunc_to {
                    if t < self.commit {
                        // A correct peer never answers this; refuse rather
                        // than drop committed entries.
                        tracing::error!(
                            id = %self.id,
                            %from,
                            to = ?t,
                            commit = ?self.commit,
                            "fetched history would drop committed entries; refused"
                        );
                        self.lose_leader("fetched history conflicts with the commit point");
                        return;
                    }
                    if t < self.log.last() {
                        tracing::info!(id = %self.id, to = ?t, "leader truncates to adopt the quorum's history");
                        let t = self.log.position_at_or_before(t).unwrap_or(Zxid::ZERO);
                        self.log.truncate_after(t);
                    }
                }
                if let Err((zxid, err)) = Self::memberships_valid(&entries) {
                    tracing::error!(id = %self.id, %from, ?zxid, error = %err, "fetched history holds a malformed membership change; refused");
                    self.lose_leader("fetched history holds a malformed membership change");
                    return;
                }
                if prev == self.log.last() {
                    for e in entries {
                        if !self.log.index.continues(e.zxid) {
                            break;
                        }
                        self.log.append(e);
                    }
                }
                let Role::Leading(l) = &mut self.role else {
                    return;
                };
                if self.log.last() == last_zxid {
                    tracing::info!(id = %self.id, last = ?last_zxid, "fetched the most recent history");
                    l.fetch_from = None;
                    self.begin_sync();
                } else {
                    l.fetch_sent_at = now;
                    self.send_fetch(from);
                }
            }
            Message::SnapProgress {
                epoch: e,
                round,
                snapshot,
                received,
                installing,
            } => {
                // Where a restart resumes (whatever the epoch: it is what
                // the follower's receiver holds); an install in progress
                // has handed its partial file on, so that starts over.
                if installing {
                    self.snap_resume.remove(&from);
                } else {
                    self.snap_resume.insert(from, (snapshot, received));
                }
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e != epoch {
                    return;
                }
                if p.round != round || p.phase != PPhase::Snap(snapshot) {
                    return;
                }
                if installing || received > p.snap_received || !p.snap_heard {
                    p.since = now;
                }
                p.snap_heard = true;
                p.snap_received = received;
            }
            Message::Snap {
                epoch: e, chunk, ..
            } => {
                if e != epoch || l.phase != LPhase::Fetching || l.fetch_from != Some(from) {
                    return;
                }
                let Some(fs) = l.fetch_snap.as_mut() else {
                    return;
                };
                let z = chunk.snapshot_zxid;
                if fs.installing {
                    return; // held already; the install runs
                }
                if fs.snapshot != z {
                    if fs.snapshot != Zxid::ZERO && chunk.offset != 0 {
                        return; // the rest of a transfer we no longer take
                    }
                    if z <= self.log.last() {
                        // Installing drops our log: only a snapshot past
                        // everything we hold keeps every entry we may
                        // have acknowledged (those are in the follower's
                        // history, so below its snapshot). Not the case:
                        // give up as before.
                        tracing::warn!(id = %self.id, %from, snapshot = ?z, last = ?self.log.last(), "the follower's snapshot does not cover our log");
                        self.lose_leader("cannot fetch the most recent history");
                        return;
                    }
                    fs.snapshot = z;
                    fs.received = 0;
                }
                l.fetch_progress_at = now;
                l.fetch_sent_at = now;
                self.out
                    .snapshot_requests
                    .push(SnapshotRequest::Write { from, chunk });
            }
            Message::SnapInstalled { epoch: e, zxid } => {
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e != epoch || p.phase != PPhase::Snap(zxid) {
                    return;
                }
                p.phase = PPhase::Syncing;
                p.since = now;
                p.next_prev = zxid;
                p.inflight.clear();
            }
            Message::Accepted { epoch: e, durable } => {
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e != epoch {
                    return;
                }
                match p.phase {
                    PPhase::Syncing
                    | PPhase::NewLeaderSent(_)
                    | PPhase::Synced
                    | PPhase::Broadcast => {}
                    _ => return,
                }
                p.since = now;
                if matches!(p.phase, PPhase::Synced | PPhase::Broadcast) {
                    p.match_zxid = p.match_zxid.max(durable);
                }
                while p.inflight.front().is_some_and(|(z, _)| *z <= durable) {
                    p.inflight.pop_front();
                }
            }
            Message::AcceptNack {
                epoch: e,
                last_zxid,
            } => {
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e != epoch {
                    return;
                }
                match p.phase {
                    PPhase::Broadcast
                        if self.log.is_position(last_zxid) && last_zxid <= self.log.last() =>
                    {
                        p.next_prev = last_zxid;
                        p.inflight.clear();
                    }
                    PPhase::Broadcast | PPhase::Syncing | PPhase::NewLeaderSent(_) => {
                        p.sync_failures += 1;
                        p.restart(now);
                        let round = p.round;
                        self.send(
                            from,
                            Message::NewEpoch {
                                epoch,
                                round,
                                established: true,
                            },
                        );
                    }
                    _ => {}
                }
            }
            Message::AckNewLeader {
                epoch: e,
                last_zxid,
            } => {
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e == epoch && p.phase == PPhase::Broadcast && l.phase == LPhase::Broadcast {
                    // Acknowledged again: our UPTODATE was lost.
                    let commit = self.commit;
                    tracing::debug!(leader = %self.id, follower = %from, "ACKNEWLEADER again; sending UPTODATE again");
                    self.send(from, Message::UpToDate { epoch, commit });
                    return;
                }
                if e != epoch || p.phase != PPhase::NewLeaderSent(last_zxid) {
                    return;
                }
                p.match_zxid = p.match_zxid.max(last_zxid);
                p.sync_failures = 0;
                if l.phase == LPhase::Broadcast {
                    p.phase = PPhase::Broadcast;
                    let commit = self.commit;
                    p.commit_sent = commit;
                    self.send(from, Message::UpToDate { epoch, commit });
                    self.arm_readmissions(now);
                } else {
                    p.phase = PPhase::Synced;
                }
            }
            Message::Applied { epoch: e, zxid } => {
                if let Some(p) = l.peers.get_mut(&from) {
                    if e == epoch {
                        p.applied = p.applied.max(zxid);
                    }
                }
            }
            Message::HeartbeatAck { epoch: e, round } => {
                let Some(p) = l.peers.get_mut(&from) else {
                    return;
                };
                if e != epoch {
                    return;
                }
                if round > p.hb_acked {
                    p.hb_acked = round;
                    if let Some(&(_, sent)) = l.hb_sent.iter().find(|(r, _)| *r == round) {
                        p.lease_from = p.lease_from.max(sent);
                    }
                }
                self.resolve_reads();
                self.try_readmit();
            }
            Message::ReadIndexRequest { ctx, .. } => {
                if l.phase == LPhase::Broadcast {
                    if self.leader_read(ctx.clone(), Some(from)).is_err() {
                        self.send(
                            from,
                            Message::ReadIndexResponse {
                                epoch,
                                ctx,
                                zxid: None,
                            },
                        );
                    }
                } else {
                    self.send(
                        from,
                        Message::ReadIndexResponse {
                            epoch,
                            ctx,
                            zxid: None,
                        },
                    );
                }
            }
            other => {
                tracing::debug!(id = %self.id, msg = other.name(), "leader ignores message");
            }
        }
    }

    pub(super) fn send_fetch(&mut self, to: NodeId) {
        let Role::Leading(l) = &self.role else { return };
        let msg = Message::FetchHistory {
            epoch: l.epoch,
            current_epoch: self.hs.current_epoch,
            last_zxid: self.log.last(),
        };
        self.send(to, msg);
    }

    pub(super) fn send_fetch_snapshot(&mut self, to: NodeId) {
        let Role::Leading(l) = &self.role else { return };
        let Some(fs) = l.fetch_snap else { return };
        let (snapshot, offset) = if fs.installing {
            (Zxid::ZERO, 0)
        } else {
            (fs.snapshot, fs.received)
        };
        let msg = Message::FetchSnapshot {
            epoch: l.epoch,
            snapshot,
            offset,
        };
        self.send(to, msg);
    }

    /// Runs the leader's phase transitions that depend on quorums.
    pub(super) fn advance_leader(&mut self) {
        for _ in 0..4 {
            let Role::Leading(l) = &mut self.role else {
                return;
            };
            let before = l.phase;
            match l.phase {
                LPhase::CollectInfo => {
                    let counted =
                        |n: NodeId| l.infos.contains_key(&n) && !l.info_recovering.contains(&n);
                    if !self.config.is_quorum(counted) {
                        return;
                    }
                    let helped: Vec<NodeId> = l
                        .infos
                        .keys()
                        .filter(|n| **n != self.id && !l.info_recovering.contains(n))
                        .copied()
                        .collect();
                    l.helped.extend(helped);
                    let max = l.infos.values().copied().max().unwrap_or(Epoch::ZERO);
                    let Some(e) = max.max(self.hs.accepted_epoch).next() else {
                        self.lose_leader("epoch space exhausted");
                        return;
                    };
                    l.epoch = e;
                    l.phase = LPhase::CollectAcks;
                    tracing::info!(id = %self.id, epoch = ?e, "discovery: proposing new epoch");
                    let now = self.now;
                    let infos: Vec<(NodeId, Epoch)> =
                        l.infos.iter().map(|(n, e)| (*n, *e)).collect();
                    let mut sends = Vec::new();
                    for (n, acc) in infos {
                        if n == self.id || acc >= e {
                            continue;
                        }
                        let observer = self.config.is_observer(n);
                        let recovering = l.info_recovering.contains(&n);
                        let p = l.peers.entry(n).or_insert_with(|| Peer::new(now, observer));
                        p.restart(now);
                        p.recovering = recovering;
                        sends.push((n, p.round));
                    }
                    for (n, round) in sends {
                        self.send(
                            n,
                            Message::NewEpoch {
                                epoch: e,
                                round,
                                established: false,
                            },
                        );
                    }
                    let hs = HardState {
                        accepted_epoch: e,
                        ..self.hs
                    };
                    self.set_hs(hs);
                    self.promised_to = Some((self.id, e));
                }
                LPhase::CollectAcks => {
                    let me = self.id;
                    let self_ok = self.durable_hs.accepted_epoch == l.epoch;
                    let acked = |n: NodeId| {
                        if n == me {
                            self_ok
                        } else {
                            l.peers
                                .get(&n)
                                .is_some_and(|p| p.phase == PPhase::Acked && !p.recovering)
                        }
                    };
                    if !self.config.is_quorum(acked) {
                        return;
                    }
                    let helped: Vec<NodeId> = l
                        .peers
                        .iter()
                        .filter(|(_, p)| p.phase == PPhase::Acked && !p.recovering)
                        .map(|(n, _)| *n)
                        .collect();
                    l.helped.extend(helped);
                    // The most recent history among the quorum's members.
                    // Observers count here too: one may be a voter in a
                    // membership this history carries (a promotion our log
                    // lacks), and the quorum checked once it is adopted
                    // counts it; an observer holds only committed entries
                    // otherwise, which adopting never loses.
                    let mine = (self.hs.current_epoch, self.log.last());
                    let best = l
                        .peers
                        .iter()
                        .filter(|(_, p)| p.phase == PPhase::Acked && !p.recovering)
                        .map(|(n, p)| ((p.position.current_epoch, p.position.last_zxid), *n))
                        .max();
                    match best {
                        Some((pos, n)) if pos > mine => {
                            tracing::info!(id = %self.id, from = %n, ?pos, ?mine, "discovery: fetching the quorum's most recent history");
                            l.phase = LPhase::Fetching;
                            l.fetch_from = Some(n);
                            l.adopted_epoch = pos.0;
                            l.fetch_sent_at = self.now;
                            self.send_fetch(n);
                        }
                        _ => self.begin_sync(),
                    }
                }
                LPhase::Fetching => return,
                LPhase::Sync => {
                    let me = self.id;
                    let self_ok = self.durable_hs.current_epoch == l.epoch
                        && self.log.durable_last() >= l.history_end;
                    let synced = |n: NodeId| {
                        if n == me {
                            self_ok
                        } else {
                            l.peers
                                .get(&n)
                                .is_some_and(|p| p.phase == PPhase::Synced && !p.recovering)
                        }
                    };
                    if !self.config.is_quorum(synced) {
                        return;
                    }
                    let helped: Vec<NodeId> = l
                        .peers
                        .iter()
                        .filter(|(_, p)| p.phase == PPhase::Synced && !p.recovering)
                        .map(|(n, _)| *n)
                        .collect();
                    l.helped.extend(helped);
                    l.phase = LPhase::Broadcast;
                    let epoch = l.epoch;
                    let commit = l.history_end;
                    assert!(commit >= self.commit, "commit point must not go back");
                    self.commit = commit;
                    tracing::info!(id = %self.id, ?epoch, ?commit, "established; broadcast starts");
                    let mut ups = Vec::new();
                    for (n, p) in l.peers.iter_mut() {
                        if p.phase == PPhase::Synced {
                            p.phase = PPhase::Broadcast;
                            p.commit_sent = commit;
                            ups.push(*n);
                        }
                    }
                    for n in ups {
                        self.send(n, Message::UpToDate { epoch, commit });
                    }
                    self.out.events.push(Event::Settled {
                        state: PeerState::Leading,
                        leader: self.id,
                        epoch,
                    });
                    let now = self.now;
                    self.arm_readmissions(now);
                }
                LPhase::Broadcast => {
                    self.advance_commit();
                    self.advance_transfer();
                    return;
                }
            }
            let Role::Leading(l) = &self.role else { return };
            if l.phase == before {
                return;
            }
        }
    }

    fn begin_sync(&mut self) {
        // The adopted history may carry another membership than the one
        // the discovery quorum was counted under: that quorum must be one
        // of the adopted membership as well, or a later majority of it
        // could hold entries this history lacks.
        self.sync_membership();
        let me = self.id;
        let Role::Leading(l) = &self.role else {
            return;
        };
        let acked = |n: NodeId| {
            (n == me && !self.recovering)
                || l.peers
                    .get(&n)
                    .is_some_and(|p| p.phase == PPhase::Acked && !p.recovering)
        };
        if !self.config.is_voter(me) || !self.config.is_quorum(acked) {
            tracing::warn!(id = %me, voters = ?self.config.voters, "discovery quorum is not a quorum of the adopted membership; stepping down");
            self.lose_leader("discovery quorum does not cover the adopted membership");
            return;
        }
        // And no member that quorum counted holds more recent history than
        // the adopted one (checked, not assumed: it is what keeps committed
        // entries). More recent is a later (current epoch, last zxid), as
        // when choosing the history: a longer log of an older epoch is a
        // branch a later epoch's history superseded, never more recent.
        let mine = (l.adopted_epoch, self.log.last());
        let behind = l.peers.iter().find(|(n, p)| {
            p.phase == PPhase::Acked
                && !p.recovering
                && self.config.is_voter(**n)
                && (p.position.current_epoch, p.position.last_zxid) > mine
        });
        if let Some((n, p)) = behind.map(|(n, p)| (*n, p.position)) {
            // A member acknowledged after the fetch began, or one the
            // pre-fetch membership did not count: fetch from it too (each
            // round leaves our log longer, so this ends).
            tracing::info!(id = %me, follower = %n, pos = ?p, ?mine, "a counted follower holds more recent history than the adopted one; fetching from it");
            let now = self.now;
            let Role::Leading(l) = &mut self.role else {
                return;
            };
            l.phase = LPhase::Fetching;
            l.fetch_from = Some(n);
            l.adopted_epoch = p.current_epoch;
            l.fetch_sent_at = now;
            self.send_fetch(n);
            return;
        }
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        l.phase = LPhase::Sync;
        l.history_end = self.log.last();
        l.started = self.now;
        let epoch = l.epoch;
        tracing::info!(id = %self.id, ?epoch, history_end = ?l.history_end, "discovery done; syncing followers");
        let acked: Vec<NodeId> = l
            .peers
            .iter()
            .filter(|(_, p)| p.phase == PPhase::Acked)
            .map(|(n, _)| *n)
            .collect();
        let hs = HardState {
            current_epoch: epoch,
            ..self.hs
        };
        self.set_hs(hs);
        for n in acked {
            self.start_sync(n);
        }
    }

    fn start_sync(&mut self, n: NodeId) {
        let Role::Leading(l) = &self.role else { return };
        let Some(p) = l.peers.get(&n) else { return };
        let force = p.sync_failures >= 2 && self.snapshot.is_some();
        let pos = p.position;
        let plan = self.plan_for(pos, force);
        let now = self.now;
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        let epoch = l.epoch;
        let Some(p) = l.peers.get_mut(&n) else { return };
        tracing::info!(leader = %self.id, follower = %n, ?pos, ?plan, "sync mode chosen");
        p.since = now;
        p.inflight.clear();
        let round = p.round;
        match plan {
            SyncPlan::UpToDate => {
                p.next_prev = pos.last_zxid;
                p.phase = PPhase::Syncing;
            }
            SyncPlan::Diff { after } => {
                p.next_prev = after;
                p.phase = PPhase::Syncing;
            }
            SyncPlan::Trunc { to } | SyncPlan::TruncDiff { to } => {
                p.next_prev = to;
                p.phase = PPhase::Syncing;
                self.send(n, Message::Trunc { epoch, round, to });
            }
            SyncPlan::Snap { snapshot } => {
                p.next_prev = snapshot;
                p.phase = PPhase::Snap(snapshot);
                let offset = match self.snap_resume.get(&n) {
                    Some(&(z, off)) if z == snapshot => off,
                    _ => 0,
                };
                p.snap_heard = false;
                p.snap_received = offset;
                if offset > 0 {
                    tracing::info!(leader = %self.id, follower = %n, ?snapshot, offset, "snapshot transfer resumed at the follower's offset");
                }
                self.out.snapshot_requests.push(SnapshotRequest::Send {
                    to: n,
                    snapshot,
                    offset,
                });
            }
        }
    }

    /// The leader's history as the planner sees it; `ends` must be
    /// `self.log.index.epoch_ends()` (the caller owns the vector the view
    /// borrows).
    pub(super) fn history<'a>(&self, ends: &'a [Zxid]) -> LeaderHistory<'a> {
        LeaderHistory {
            first_retained: self.log.index.first(),
            last: self.log.last(),
            committed: self.commit,
            epoch_ends: ends,
            snapshot: self.snapshot,
            snapshot_bytes: None,
            log_bytes: None,
        }
    }

    fn plan_for(&self, pos: FollowerPosition, force_snap: bool) -> SyncPlan {
        let ends = self.log.index.epoch_ends();
        let h = self.history(&ends);
        let base = self.log.base;
        if !force_snap {
            let p = self.planner.plan(pos, &h);
            if !plan::valid(pos, &h, base, p) {
                tracing::warn!(?pos, plan = ?p, "planner's plan is not executable; using the kernel's");
            } else if let Some(shared) = plan::truncates_below_common(pos, &h, base, p) {
                tracing::debug!(?pos, plan = ?p, ?shared,
                    "planner's TRUNC would drop history the follower may share with ours; using the kernel's plan");
            } else {
                return p;
            }
        }
        plan::builtin(pos, &h, base, force_snap)
    }
}
