//! The simulator's faults, usable by scripted scenarios as well as drawn
//! at random: crashes (losing what no sync covered), restarts, wipes (a
//! lost data directory), damage in a voter's synced log, full disks,
//! partitions and one-way cuts, scripted message losses.

use std::time::Duration;

use super::{Ev, ScriptedDrop, Sim, Token, Violation};
use crate::election::Elector;
use crate::message::HardState;
use crate::storage::{MemStorage, Storage};
use crate::{Membership, NodeId, Zxid};

impl<E: Elector> Sim<E> {
    /// Crashes `id`: every write it had not synced is lost.
    pub fn crash(&mut self, id: NodeId) {
        let i = self.idx(id);
        let n = &mut self.nodes[i];
        if let Some(node) = n.node.take() {
            n.disk = node.storage().durable().clone();
            self.stats.crashes += 1;
            tracing::info!(node = %id, "sim: crash");
        }
        n.sync_gen += 1;
        n.fail_sync = false;
        n.timer_gen += 1;
        n.timer_at = None;
        n.incoming.clear();
        n.outgoing.clear();
        n.installing = None;
        n.snap_gen += 1;
        n.pump_scheduled = false;
        self.snap_open.retain(|(l, f)| *l != id && *f != id);
        self.contact_lost();
    }

    /// Of the next kernel messages named `name` ([`Message::name`](crate::Message::name), e.g.
    /// `"UPTODATE"`) sent to `to`, lets `pass` through and then drops
    /// `count`.
    pub fn drop_next(&mut self, name: &'static str, to: NodeId, pass: u32, count: u32) {
        self.drops.push(ScriptedDrop {
            name,
            to,
            pass,
            count,
        });
    }

    /// Restarts `id` from its durable disk and snapshot.
    pub fn restart(&mut self, id: NodeId) {
        let i = self.idx(id);
        if self.nodes[i].node.is_none() {
            tracing::info!(node = %id, "sim: restart");
            self.start_node(i);
        }
    }

    /// Wipes `id`: crashes it and loses its whole disk and snapshot (a lost
    /// data directory). It stays down; on [`restart`](Sim::restart) it
    /// starts empty, and, if `recovering`, marked recovering
    /// ([`Replica::mark_recovering`](crate::Replica::mark_recovering)) as a driver that noticed the loss
    /// would. Without `recovering` it comes back as if it were new, which is
    /// unsafe (see the `wiped_voter_without_recovering_loses_a_write` test).
    pub fn wipe(&mut self, id: NodeId, recovering: bool) {
        self.crash(id);
        let i = self.idx(id);
        let n = &mut self.nodes[i];
        n.disk = MemStorage::new();
        n.snapshot = None;
        n.durable_hs = HardState::default();
        n.start_recovering = recovering;
        self.stats.wipes += 1;
        tracing::info!(node = %id, recovering, "sim: wipe (disk lost)");
    }

    /// Damages `id`'s log where it was synced: crashes it and cuts its
    /// durable log at a random entry (what survives is the valid prefix a
    /// checksummed log keeps). It restarts recovering, as the reference
    /// node does when its WAL check finds damage in the synced part.
    pub fn corrupt(&mut self, id: NodeId) {
        self.crash(id);
        let i = self.idx(id);
        let n = &mut self.nodes[i];
        let (Some(first), Some(last)) = (n.disk.first_zxid(), n.disk.last_zxid()) else {
            return;
        };
        let mut held = Vec::new();
        let _ = n.disk.entries(first, usize::MAX, usize::MAX, &mut held);
        let keep = self.rng.index(held.len() + 1);
        let after = if keep == 0 {
            Zxid::ZERO
        } else {
            held[keep - 1].zxid
        };
        if after < last {
            let _ = n.disk.truncate_suffix(after);
        }
        n.start_recovering = true;
        self.stats.corruptions += 1;
        tracing::info!(node = %id, ?after, "sim: log damaged where it was synced; restarts recovering");
    }

    /// Whether `id` is recovering: up and [`Replica::is_recovering`](crate::Replica::is_recovering), or
    /// down with the flag on its durable disk or about to be set.
    pub fn is_recovering(&self, id: NodeId) -> bool {
        let n = &self.nodes[self.idx(id)];
        match n.replica() {
            Some(r) => r.is_recovering(),
            None => n.start_recovering || n.disk.recovering(),
        }
    }

    /// Cuts `id` off from every other node (both directions).
    pub fn isolate(&mut self, id: NodeId) {
        for n in self.node_ids() {
            if n != id {
                self.blocked.insert((id, n));
                self.blocked.insert((n, id));
            }
        }
        self.contact_lost();
    }

    /// Cuts the link between `a` and `b` (both directions).
    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        self.blocked.insert((a, b));
        self.blocked.insert((b, a));
        self.contact_lost();
    }

    /// A node or a link was lost: with quiescence on, the hosts notice
    /// after an election timeout (as a transport's idle timeout would) and
    /// wake their quiesced groups. Nothing is scheduled otherwise, so runs
    /// without quiescence keep their schedules.
    pub(super) fn contact_lost(&mut self) {
        if self.cfg.replica.quiesce_after.is_some() {
            let after = self.cfg.replica.election_timeout;
            self.schedule(after, Ev::Wake);
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Stops random faults: heals the network, restarts every node, and
    /// starts measuring how long the cluster takes to commit again.
    pub fn stop_faults(&mut self) {
        self.faults = false;
        self.cfg.drop_prob = 0.0;
        self.cfg.dup_prob = 0.0;
        // Failed background syncs are faults too (the node restarts): the
        // draw stays, so the schedule is unchanged, but none fails any more.
        self.cfg.sync_fail_prob = 0.0;
        self.heal();
        for id in self.node_ids() {
            self.restart(id);
        }
        self.faults_stopped_at = Some(self.now);
        self.stats.recovery = None;
    }

    /// Asks the leader, if any, to hand over to a random other voter that
    /// is up; refusals (target unreachable, recovering, a hand-over in
    /// progress) are part of the schedule.
    pub(super) fn random_transfer(&mut self) -> Result<(), Violation> {
        let Some(l) = self.leader() else {
            return Ok(());
        };
        let candidates: Vec<NodeId> = self
            .config
            .voters
            .iter()
            .copied()
            .filter(|v| *v != l && self.is_up(*v))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let to = candidates[self.rng.index(candidates.len())];
        self.transfer_leadership(l, to)
    }

    /// Asks node `from` (a leader) to hand its leadership to `to` (a
    /// refusal is logged and counts nothing), then drives `from`.
    pub fn transfer_leadership(&mut self, from: NodeId, to: NodeId) -> Result<(), Violation> {
        let i = self.idx(from);
        let now = self.local_now(i);
        let Some(node) = self.nodes[i].node.as_mut() else {
            return Ok(());
        };
        match node.transfer_leadership(now, to) {
            Ok(()) => {
                tracing::info!(%from, %to, "sim: leader hand-over asked");
                self.stats.transfers += 1;
            }
            Err(e) => tracing::debug!(%from, %to, error = %e, "sim: hand-over refused"),
        }
        self.drive(i)
    }

    /// Asks the leader, if any, for a random single-node membership change
    /// that keeps 3 to 5 voters: promote or demote, add a non-member as an
    /// observer or a voter, remove an observer or a voter (never the leader
    /// itself). Refusals (one change at a time, a hand-over) are part of
    /// the schedule.
    pub(super) fn random_reconfig(&mut self) -> Result<(), Violation> {
        let Some(l) = self.leader() else {
            return Ok(());
        };
        let i = self.idx(l);
        let Some(current) = self.nodes[i].replica().map(|r| r.membership().clone()) else {
            return Ok(());
        };
        let all: Vec<NodeId> = self.node_ids();
        let voters: Vec<NodeId> = current.voters.iter().copied().filter(|v| *v != l).collect();
        let observers = current.observers.clone();
        let outsiders: Vec<NodeId> = all
            .iter()
            .copied()
            .filter(|n| !current.is_member(*n))
            .collect();
        let mut next = current.clone();
        let nv = current.voters.len();
        match self.rng.range(0, 6) {
            0 if nv < 5 && !observers.is_empty() => {
                let n = observers[self.rng.index(observers.len())];
                next.observers.retain(|o| *o != n);
                next.voters.push(n);
            }
            1 if nv > 3 && !voters.is_empty() => {
                let n = voters[self.rng.index(voters.len())];
                next.voters.retain(|v| *v != n);
                next.observers.push(n);
            }
            2 if !outsiders.is_empty() => {
                let n = outsiders[self.rng.index(outsiders.len())];
                next.observers.push(n);
            }
            3 if nv < 5 && !outsiders.is_empty() => {
                let n = outsiders[self.rng.index(outsiders.len())];
                next.voters.push(n);
            }
            4 if !observers.is_empty() => {
                let n = observers[self.rng.index(observers.len())];
                next.observers.retain(|o| *o != n);
            }
            5 if nv > 3 && !voters.is_empty() => {
                let n = voters[self.rng.index(voters.len())];
                next.voters.retain(|v| *v != n);
            }
            _ => return Ok(()),
        }
        self.reconfigure(l, next)
    }

    /// Asks node `leader` to propose the membership `to` (a refusal is
    /// logged and counts nothing), then drives it.
    pub fn reconfigure(&mut self, leader: NodeId, to: Membership) -> Result<(), Violation> {
        self.try_reconfigure(leader, to).map(|_| ())
    }

    /// [`reconfigure`](Self::reconfigure), with the kernel's answer: the
    /// change's zxid, or why it was refused; `None` if `leader` is down.
    pub fn try_reconfigure(
        &mut self,
        leader: NodeId,
        to: Membership,
    ) -> Result<Option<Result<crate::Zxid, crate::ChangeError>>, Violation> {
        let i = self.idx(leader);
        let now = self.local_now(i);
        let Some(node) = self.nodes[i].node.as_mut() else {
            return Ok(None);
        };
        let h = super::machine::hash(&to.encode());
        let answer = match node.propose_membership(now, to.clone(), Token::Config) {
            Ok(zxid) => {
                tracing::info!(%leader, ?zxid, voters = ?to.voters, observers = ?to.observers, "sim: membership change proposed");
                self.stats.reconfigs += 1;
                self.proposed.insert(zxid, h);
                Ok(zxid)
            }
            Err(r) => {
                tracing::debug!(%leader, error = %r.error, "sim: membership change refused");
                Err(r.error)
            }
        };
        self.drive(i)?;
        Ok(Some(answer))
    }

    /// Whether one more node may go down (or recover) and every membership
    /// that can act keeps a quorum: crashes take at most a minority of
    /// voters at once (a down or recovering node counts as lost, whatever
    /// it is).
    /// Whether `id` votes: in the fixed membership, or (with membership
    /// changes) in any membership that can act.
    pub(super) fn votes(&self, id: NodeId) -> bool {
        if self.cfg.reconfig_interval.is_none() {
            self.config.is_voter(id)
        } else {
            self.acting_memberships().iter().any(|m| m.is_voter(id))
        }
    }

    pub(super) fn may_lose_one_more(&self) -> bool {
        let lost: Vec<NodeId> = self
            .node_ids()
            .into_iter()
            .filter(|n| !self.is_up(*n) || self.is_recovering(*n))
            .collect();
        if self.cfg.reconfig_interval.is_none() {
            // The fixed membership: every lost node counts (as the
            // schedules of earlier seeds were drawn).
            return lost.len() < self.cfg.voters - (self.cfg.voters / 2 + 1);
        }
        self.acting_memberships().iter().all(|m| {
            let down = m.voters.iter().filter(|v| lost.contains(v)).count();
            down < m.voters.len() - (m.voters.len() / 2 + 1)
        })
    }

    pub(super) fn random_fault(&mut self) {
        let n = self.nodes.len();
        let i = self.rng.index(n);
        let id = self.nodes[i].id;
        let voter = self.votes(id);
        let wipe = self.cfg.wipes && voter && self.rng.chance(0.25);
        match self.rng.range(0, 9) {
            0..=3 => {
                // Crash at most a minority of voters at once; a recovering
                // voter counts as down (it cannot help any quorum).
                if self.may_lose_one_more() {
                    if wipe && !self.is_recovering(id) {
                        self.wipe(id, true);
                    } else {
                        self.crash(id);
                    }
                    let d = Duration::from_nanos(
                        self.rng.range(1, self.cfg.max_down.as_nanos() as u64),
                    );
                    self.schedule(d, Ev::Restart { node: i });
                }
            }
            4..=5 => {
                if let Some(l) = self.leader() {
                    if self.rng.chance(0.5) {
                        self.crash(l);
                        let li = self.idx(l);
                        let d = Duration::from_nanos(
                            self.rng.range(1, self.cfg.max_down.as_nanos() as u64),
                        );
                        self.schedule(d, Ev::Restart { node: li });
                        return;
                    }
                    self.isolate(l);
                } else {
                    self.isolate(id);
                }
                let d =
                    Duration::from_nanos(self.rng.range(1, self.cfg.max_down.as_nanos() as u64));
                self.schedule(d, Ev::Heal);
            }
            6 if self.cfg.disk_faults && self.rng.chance(0.5) => {
                if voter && self.rng.chance(0.3) {
                    // Damage in the synced part of the log: the node
                    // restarts recovering, as the reference node does.
                    if self.may_lose_one_more() && !self.is_recovering(id) {
                        self.corrupt(id);
                        let d = Duration::from_nanos(
                            self.rng.range(1, self.cfg.max_down.as_nanos() as u64),
                        );
                        self.schedule(d, Ev::Restart { node: i });
                    }
                } else {
                    // A full disk for a while.
                    let n = &mut self.nodes[i];
                    n.disk_full = true;
                    if let Some(core) = n.node.as_mut() {
                        core.storage_mut().set_refuse_writes(true);
                    }
                    let d = Duration::from_nanos(
                        self.rng.range(1, self.cfg.max_down.as_nanos() as u64),
                    );
                    self.schedule(d, Ev::DiskFree { node: i });
                }
            }
            6 => {
                // A one-way cut between two nodes.
                let j = self.rng.index(n);
                if j != i {
                    let other = self.nodes[j].id;
                    self.blocked.insert((id, other));
                    self.contact_lost();
                }
            }
            _ => self.heal(),
        }
    }
}
