//! The established leader's broadcast: proposals, the per-follower
//! DIFF/ACCEPT pipeline, the commit rule, heartbeats, and the leader's timer
//! (discovery timeout, check-quorum, resends).
//!
//! Invariants: an entry commits once a quorum of counted voters holds it
//! durably; a leader that hears no quorum within the election timeout
//! steps down.

use bytes::Bytes;

use crate::log::ReadError;
use crate::message::{Entry, Envelope, Message};
use crate::ready::{Event, ProposeError};
use crate::storage::Storage;
use crate::{NodeId, Time, Zxid};

use super::leader::LPhase;
use super::progress::PPhase;
use super::{Replica, Role};

/// Bytes an ACCEPT adds around one entry (header, fields, entry header).
const ACCEPT_OVERHEAD_BYTES: usize = 26 + 4 + 8 + 8 + 4 + 12;
/// Heartbeat send times kept for lease reads.
const HEARTBEAT_HISTORY: usize = 64;

impl<S: Storage> Replica<S> {
    /// Proposes a command. Only an established leader accepts; the command
    /// is handed back otherwise. Returns the zxid it will commit at (if the
    /// leader stays in office).
    pub fn propose(&mut self, data: Bytes) -> Result<Zxid, ProposeError> {
        self.inputs += 1;
        let max_bytes = self
            .config
            .max_message_bytes
            .saturating_sub(ACCEPT_OVERHEAD_BYTES);
        let leader_hint = self.leader();
        let Role::Leading(l) = &mut self.role else {
            return Err(ProposeError::NotLeader {
                leader: leader_hint,
                data,
            });
        };
        if l.phase != LPhase::Broadcast {
            return Err(ProposeError::NotLeader { leader: None, data });
        }
        if let Some(t) = l.transfer {
            return Err(ProposeError::Transferring { to: t.to, data });
        }
        if data.len() > max_bytes {
            return Err(ProposeError::TooLarge { max_bytes, data });
        }
        let epoch = l.epoch;
        let Some(counter) = l
            .counter
            .checked_add(1)
            .filter(|&c| c <= self.config.max_epoch_counter)
        else {
            // Step down with the counter spent: the next election starts a
            // new epoch. This leader holds the most recent history, so it is
            // likely elected again; nothing proposed so far is lost either
            // way (it is in this leader's log, and a quorum's if committed).
            self.lose_leader("zxid counter reached max_epoch_counter; moving to a new epoch");
            return Err(ProposeError::EpochExhausted { epoch, data });
        };
        l.counter = counter;
        let zxid = Zxid::new(l.epoch, counter);
        self.log.append(Entry::command(zxid, data));
        Ok(zxid)
    }

    pub(super) fn advance_commit(&mut self) {
        let Role::Leading(l) = &self.role else { return };
        let me = self.id;
        let mut acks: Vec<Zxid> = Vec::with_capacity(self.config.voters.len());
        for v in &self.config.voters {
            let z = if *v == me {
                if self.durable_hs.current_epoch == l.epoch {
                    self.log.durable_last()
                } else {
                    Zxid::ZERO
                }
            } else {
                match l.peers.get(v) {
                    Some(p)
                        if matches!(p.phase, PPhase::Synced | PPhase::Broadcast)
                            && !p.recovering =>
                    {
                        p.match_zxid
                    }
                    _ => Zxid::ZERO,
                }
            };
            acks.push(z);
        }
        acks.sort_unstable_by(|a, b| b.cmp(a));
        let q = self.config.quorum();
        let c = acks[q - 1].min(self.log.last());
        if c > self.commit {
            debug_assert!(self.log.index.holds(c), "commit point must be held");
            self.commit = c;
        }
    }

    pub(super) fn leader_tick(&mut self, now: Time) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if l.quiesced {
            // Idle and told so: nothing to retry, no heartbeat, no
            // check-quorum until woken.
            return;
        }
        let timeout = self.config.election_timeout;
        let sync_timeout = self.config.sync_timeout;
        match l.phase {
            LPhase::CollectInfo | LPhase::CollectAcks | LPhase::Fetching => {
                // A fetch by snapshot may outlast discovery's timeout while
                // it progresses, as long as a quorum still answers us.
                let progress_timeout = self.config.snapshot_progress_timeout;
                let me = self.id;
                let heard = |n: NodeId| {
                    n == me
                        || l.peers.get(&n).is_some_and(|p| {
                            p.phase == PPhase::Acked
                                && !p.recovering
                                && now.saturating_since(p.last_heard) <= timeout
                        })
                };
                let snap_alive = l.fetch_snap.is_some()
                    && now.saturating_since(l.fetch_progress_at) <= progress_timeout
                    && self.config.is_quorum(heard);
                if now.saturating_since(l.started) > timeout * 2 && !snap_alive {
                    self.lose_leader("discovery timed out");
                    return;
                }
                if l.phase == LPhase::Fetching {
                    match l.fetch_snap {
                        None if now.saturating_since(l.fetch_sent_at) > sync_timeout => {
                            if let Some(n) = l.fetch_from {
                                l.fetch_sent_at = now;
                                self.send_fetch(n);
                            }
                        }
                        // No chunk nor progress for a while (a lost request
                        // or chunk): ask again, resuming at what we hold.
                        // An install of our own runs off the loop and
                        // reports progress, which is not the follower's to
                        // resend.
                        Some(fs)
                            if !fs.installing
                                && now.saturating_since(l.fetch_sent_at) > sync_timeout
                                && now.saturating_since(l.fetch_progress_at) > sync_timeout =>
                        {
                            if let Some(n) = l.fetch_from {
                                l.fetch_sent_at = now;
                                tracing::info!(id = %self.id, from = %n, snapshot = ?fs.snapshot, offset = fs.received, "snapshot fetch stalled; asking again");
                                self.send_fetch_snapshot(n);
                            }
                        }
                        _ => {}
                    }
                }
            }
            LPhase::Sync | LPhase::Broadcast => {
                let me = self.id;
                // Counted from the last wake for a peer not heard since.
                let resumed = l.resumed_at;
                let heard = |n: NodeId| {
                    n == me
                        || l.peers.get(&n).is_some_and(|p| {
                            !p.recovering
                                && now.saturating_since(p.last_heard.max(resumed)) <= timeout
                        })
                };
                if now.saturating_since(l.started) > timeout && !self.config.is_quorum(heard) {
                    self.lose_leader("check-quorum: no quorum heard");
                    return;
                }
            }
        }
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        // Per-follower retries.
        let epoch = l.epoch;
        // See the FOLLOWERINFO case: a claim checked against the adopted
        // membership only once discovery is over.
        let established = l.phase >= LPhase::Sync;
        let progress_timeout = self.config.snapshot_progress_timeout;
        let mut resend = Vec::new();
        let mut snap_restarts = 0;
        for (n, p) in l.peers.iter_mut() {
            let stale = if let PPhase::Snap(snapshot) = p.phase {
                let stale = now.saturating_since(p.since) > progress_timeout;
                if stale {
                    snap_restarts += 1;
                    tracing::warn!(
                        leader = %self.id,
                        follower = %n,
                        ?snapshot,
                        received = p.snap_received,
                        timeout = ?progress_timeout,
                        "snapshot transfer: no progress within the timeout; restarting the follower's sync"
                    );
                }
                stale
            } else {
                now.saturating_since(p.since) > sync_timeout
            };
            match p.phase {
                PPhase::Promising
                | PPhase::Snap(_)
                | PPhase::Syncing
                | PPhase::NewLeaderSent(_)
                    if stale =>
                {
                    if matches!(
                        p.phase,
                        PPhase::Snap(_) | PPhase::Syncing | PPhase::NewLeaderSent(_)
                    ) {
                        p.sync_failures += 1;
                    }
                    p.restart(now);
                    resend.push((*n, p.round));
                }
                PPhase::Broadcast
                    if p.inflight
                        .front()
                        .is_some_and(|(_, t)| now.saturating_since(*t) > sync_timeout) =>
                {
                    // Lost ACCEPTs: go back to what the follower holds.
                    p.inflight.clear();
                    p.next_prev = p.match_zxid;
                }
                _ => {}
            }
        }
        self.snap_restarts += snap_restarts;
        for (n, round) in resend {
            self.send(
                n,
                Message::NewEpoch {
                    epoch,
                    round,
                    established,
                },
            );
        }
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if now >= l.hb_due {
            l.hb_due = now + self.config.heartbeat_interval;
            if !self.maybe_quiesce(now) {
                self.send_heartbeats(now);
            }
        }
    }

    pub(super) fn send_heartbeats(&mut self, now: Time) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        l.hb_round += 1;
        let round = l.hb_round;
        l.hb_sent.push_back((round, now));
        while l.hb_sent.len() > HEARTBEAT_HISTORY {
            l.hb_sent.pop_front();
        }
        let epoch = l.epoch;
        let commit = self.commit;
        let targets: Vec<(NodeId, Zxid)> = l
            .peers
            .iter()
            .filter(|(_, p)| p.phase != PPhase::Promising)
            .map(|(n, p)| {
                let c = if matches!(p.phase, PPhase::Synced | PPhase::Broadcast) {
                    commit
                } else {
                    Zxid::ZERO
                };
                (*n, c)
            })
            .collect();
        let readmitted: Vec<NodeId> = l
            .peers
            .iter()
            .filter(|(_, p)| p.readmitted && p.phase == PPhase::Broadcast)
            .map(|(n, _)| *n)
            .collect();
        // NEWLEADER not acknowledged yet: it may be lost; the follower
        // takes it again idempotently (same history, same epoch).
        let newleader: Vec<(NodeId, Zxid)> = l
            .peers
            .iter()
            .filter_map(|(n, p)| match p.phase {
                PPhase::NewLeaderSent(z) if p.since < now => Some((*n, z)),
                _ => None,
            })
            .collect();
        for (n, last_zxid) in newleader {
            self.send(n, Message::NewLeader { epoch, last_zxid });
        }
        for (n, commit) in targets {
            self.send(
                n,
                Message::Heartbeat {
                    epoch,
                    commit,
                    round,
                },
            );
        }
        for n in readmitted {
            self.send(n, Message::Readmit { epoch });
        }
    }

    /// Sends DIFF/NEWLEADER to syncing followers and ACCEPT/COMMIT to the
    /// others, within each follower's pipeline window.
    pub(super) fn flush_peers(&mut self) {
        let Role::Leading(l) = &mut self.role else {
            return;
        };
        if l.phase < LPhase::Sync {
            return;
        }
        let epoch = l.epoch;
        let commit = self.commit;
        let last = self.log.last();
        let sync_target = if l.phase == LPhase::Sync {
            l.history_end
        } else {
            last
        };
        let window = self.config.pipeline_window;
        let (max_e, max_b) = (self.config.max_batch_entries, self.config.max_batch_bytes);
        let max_send = self.config.max_send_bytes_per_input;
        let inputs = self.inputs;
        let now = self.now;
        let mut restarts = Vec::new();
        let broadcast = l.phase == LPhase::Broadcast;
        for (n, p) in l.peers.iter_mut() {
            let (target, syncing) = match p.phase {
                PPhase::Syncing => (sync_target, true),
                PPhase::Broadcast if broadcast => (if p.observer { commit } else { last }, false),
                _ => continue,
            };
            let mut sent_commit = false;
            let mut guard = 0usize;
            if p.burst_input != inputs {
                p.burst_input = inputs;
                p.burst_bytes = 0;
            }
            while p.inflight.len() < window
                && p.next_prev < target
                && guard < window
                && p.burst_bytes < max_send
            {
                guard += 1;
                let mut batch = Vec::new();
                match self.log.read(p.next_prev, target, max_e, max_b, &mut batch) {
                    Ok(()) => {}
                    Err(ReadError::NotHeld) => {
                        restarts.push(*n);
                        break;
                    }
                    Err(ReadError::Storage(e)) => {
                        self.out.events.push(Event::StorageFailed(e));
                        break;
                    }
                }
                let Some(bl) = batch.last().map(|e| e.zxid) else {
                    break;
                };
                p.burst_bytes = p
                    .burst_bytes
                    .saturating_add(batch.iter().map(|e| e.data.len()).sum::<usize>());
                let prev = p.next_prev;
                p.next_prev = bl;
                p.inflight.push_back((bl, now));
                let msg = if syncing {
                    Message::Diff {
                        epoch,
                        prev,
                        entries: batch,
                    }
                } else {
                    sent_commit = true;
                    p.commit_sent = commit;
                    Message::Accept {
                        epoch,
                        prev,
                        commit,
                        entries: batch,
                    }
                };
                self.out.messages.push(Envelope {
                    group: self.config.group,
                    from: self.id,
                    to: *n,
                    msg,
                });
            }
            if syncing && p.next_prev == target && !restarts.contains(n) {
                p.phase = PPhase::NewLeaderSent(target);
                p.since = now;
                self.out.messages.push(Envelope {
                    group: self.config.group,
                    from: self.id,
                    to: *n,
                    msg: Message::NewLeader {
                        epoch,
                        last_zxid: target,
                    },
                });
            } else if !syncing && !sent_commit && p.commit_sent < commit {
                p.commit_sent = commit;
                self.out.messages.push(Envelope {
                    group: self.config.group,
                    from: self.id,
                    to: *n,
                    msg: Message::Commit { epoch, commit },
                });
            }
        }
        for n in restarts {
            if let Some(p) = l.peers.get_mut(&n) {
                tracing::info!(leader = %self.id, follower = %n, "follower fell behind the log; resyncing");
                p.sync_failures = p.sync_failures.max(2);
                p.restart(now);
                let round = p.round;
                self.out.messages.push(Envelope {
                    group: self.config.group,
                    from: self.id,
                    to: n,
                    msg: Message::NewEpoch {
                        epoch,
                        round,
                        established: true,
                    },
                });
            }
        }
    }
}
