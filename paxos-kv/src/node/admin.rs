//! Cluster administration (`paxos-client admin ...`, role `admin`): leader
//! transfer, membership changes and the members' view. The connection's
//! role is checked where it is served ([`client_port`](super::client_port));
//! here the commands are carried out.
//!
//! Every member's addresses travel with the membership: a change's
//! [`Membership::context`](paxos_core::Membership::context) is the address
//! book of the new membership, in `--members` syntax. Each node learns the
//! addresses of members it was not started with from it, and adds them to
//! its transport ([`learn_addresses`](Driver::learn_addresses)).

use std::collections::BTreeMap;

use bytes::Bytes;
use paxos_core::{ChangeError, Membership, NodeId};
use paxos_net_quic::PeerId;

use super::client_port::Reply;
use super::options::{format_members, parse_members, Member};
use super::{Driver, Waiter};
use crate::client_proto::{AdminChange, AdminRequest, NodeAddrs, Response};
use crate::kv::{KvCommand, KvOp, KvResult};

/// A promotion waits until the observer is at most this many entries
/// behind the leader (a node promoted far behind would leave the group a
/// voter short until it caught up).
pub(super) const MAX_PROMOTION_LAG_ENTRIES: u64 = 10_000;

/// The answer to an administrator's command that the store applied
/// (allocating a group id, a split): its result as JSON, or the store's
/// refusal as an error.
pub(super) fn kv_result_json(zxid: paxos_core::Zxid, result: Bytes) -> Response {
    match KvResult::decode(result) {
        Ok(KvResult::GroupAllocated { id }) => Response::Admin(
            serde_json::json!({ "committed": format!("{zxid:?}"), "group": id }).to_string(),
        ),
        Ok(KvResult::SplitStarted { child, range }) => Response::Admin(
            serde_json::json!({
                "committed": format!("{zxid:?}"),
                "new_group": child,
                "range_given": range.to_hex(),
            })
            .to_string(),
        ),
        Ok(KvResult::Retiring { into, range }) => Response::Admin(
            serde_json::json!({
                "committed": format!("{zxid:?}"),
                "merging_into": into,
                "range": range.to_hex(),
            })
            .to_string(),
        ),
        Ok(KvResult::Refused { reason }) => {
            Response::Error(format!("refused: {}", String::from_utf8_lossy(&reason)))
        }
        Ok(other) => Response::Error(format!("unexpected result {other:?}")),
        Err(e) => Response::Error(format!("a result that does not decode: {e}")),
    }
}

impl Driver {
    pub(super) fn on_admin(&mut self, req: AdminRequest, reply: Reply) {
        match req {
            AdminRequest::Members => reply.send(Response::Admin(self.members_json())),
            AdminRequest::TransferLeader { to } => self.transfer_leader(NodeId(to), reply),
            AdminRequest::Change {
                change,
                node,
                addrs,
            } => {
                let kv = self.node.state_machine();
                if kv.outgoing().is_some() || kv.incoming().is_some() || self.moves_proposed > 0 {
                    // A split's new group starts with the members of the
                    // group that split (as the split recorded them); they
                    // stay put until its keys moved, from the moment the
                    // split is proposed.
                    reply.send(Response::Error(format!(
                        "retry: group {} is in a split or a merge (proposed, or keys moving); \
                         membership changes wait until the move is over",
                        self.gid
                    )));
                    return;
                }
                self.change_member(change, NodeId(node), addrs, reply)
            }
            AdminRequest::AllocateGroup => self.allocate_group(reply),
            AdminRequest::Split { child } => self.split(child, reply),
            // Routed by the groups' layer, which knows the other group.
            AdminRequest::Merge { into } => self.merge(into, None, reply),
        }
    }

    /// Proposes retiring this group into group `into` (a merge: see
    /// [`AdminRequest::Merge`]); answered with the store's result once it
    /// commits. Group 0 is never removed (it allocates group ids). The
    /// two groups must have the same members (the absorbing group's leader
    /// reads the keys from its node's replica of this one), checked here
    /// against this node's replicas; the stores check the ranges.
    /// `other`: the other group's members (voters, observers, sorted) and
    /// range on this node, if it hosts it.
    #[allow(clippy::type_complexity)]
    pub(super) fn merge(
        &mut self,
        into: u32,
        other: Option<((Vec<NodeId>, Vec<NodeId>), crate::shard::KeyRange)>,
        reply: Reply,
    ) {
        if self.gid == 0 {
            reply.send(Response::Error(
                "group 0 is never removed (it allocates group ids); merge another group into it"
                    .into(),
            ));
            return;
        }
        if into == self.gid {
            reply.send(Response::Error(format!(
                "group {into} cannot merge into itself"
            )));
            return;
        }
        if let Err(refusal) = self.may_start_move() {
            reply.send(refusal);
            return;
        }
        let replica = self.node.replica();
        let kv = self.node.state_machine();
        let Some(members) = other else {
            reply.send(Response::Error(format!(
                "group {into} is not hosted by this node (the groups of a merge have the same \
                 members)"
            )));
            return;
        };
        let config = replica.config();
        let mut mine = (config.voters.clone(), config.observers.clone());
        mine.0.sort_unstable();
        mine.1.sort_unstable();
        if mine != members.0 {
            reply.send(Response::Error(format!(
                "group {into}'s members ({:?}, observers {:?}) differ from group {}'s ({:?}, \
                 observers {:?}): change one group's membership first",
                members.0 .0, members.0 .1, self.gid, mine.0, mine.1
            )));
            return;
        }
        if !(members.1.end == kv.range().start || members.1.start == kv.range().end) {
            reply.send(Response::Error(format!(
                "group {into} owns {} here, not adjacent to group {}'s {}: a group merges into \
                 a neighbour",
                members.1,
                self.gid,
                kv.range()
            )));
            return;
        }
        self.propose_admin(KvOp::Retire { into }, reply);
    }

    /// Proposes the allocation of a group id (group 0 counts them, from
    /// the cluster's base group count up); answered with the store's
    /// result (`GroupAllocated`).
    fn allocate_group(&mut self, reply: Reply) {
        if self.gid != 0 {
            reply.send(Response::Error(format!(
                "group ids are allocated by group 0, not group {}",
                self.gid
            )));
            return;
        }
        if self.host.groups <= 1 {
            reply.send(Response::Error(
                "a node of one group cannot split: start the cluster with --groups N (N >= 2)"
                    .into(),
            ));
            return;
        }
        if !self.node.replica().is_leader() {
            reply.send(self.leader_hint());
            return;
        }
        let op = KvOp::AllocateGroup {
            floor: self.host.groups,
        };
        self.propose_admin(op, reply);
    }

    /// Proposes splitting this group at its range's midpoint, the upper
    /// half to group `child`; answered with the store's result
    /// (`SplitStarted`, or refused) once it commits.
    fn split(&mut self, child: u32, reply: Reply) {
        if self.host.groups <= 1 {
            reply.send(Response::Error(
                "a node of one group cannot split: start the cluster with --groups N (N >= 2)"
                    .into(),
            ));
            return;
        }
        if child < self.host.groups || child >= super::MAX_GROUP_ID {
            reply.send(Response::Error(format!(
                "group id {child} cannot be a new group's: ids from {} to {} are, allocated by \
                 group 0 (admin allocate-group)",
                self.host.groups,
                super::MAX_GROUP_ID - 1
            )));
            return;
        }
        if let Err(refusal) = self.may_start_move() {
            reply.send(refusal);
            return;
        }
        let replica = self.node.replica();
        let kv = self.node.state_machine();
        let Some(at) = kv.range().midpoint() else {
            reply.send(Response::Error(format!(
                "group {} owns a range too small to split ({})",
                self.gid,
                kv.range()
            )));
            return;
        };
        let config = replica.config();
        let op = KvOp::Split {
            at,
            child,
            voters: config.voters.iter().map(|v| v.0).collect(),
            observers: config.observers.iter().map(|o| o.0).collect(),
        };
        self.propose_admin(op, reply);
    }

    /// Whether this group's replica may start a split or a merge: it
    /// leads (else the answer is the leader hint), no membership change is
    /// in flight (the move takes the members as they are), and no move is
    /// under way (one at a time).
    fn may_start_move(&self) -> Result<(), Response> {
        let replica = self.node.replica();
        if !replica.is_leader() {
            return Err(self.leader_hint());
        }
        if replica.membership_change_pending().is_some() {
            return Err(Response::Error(format!(
                "retry: group {} has a membership change in flight; a split or merge takes the \
                 group's members as they are",
                self.gid
            )));
        }
        let kv = self.node.state_machine();
        if kv.outgoing().is_some() || kv.incoming().is_some() {
            return Err(Response::Error(format!(
                "retry: group {} is in a split or a merge already (keys moving); one at a time",
                self.gid
            )));
        }
        Ok(())
    }

    /// Proposes one of the node's own commands for an administrator, who
    /// is answered with the store's result once it commits.
    fn propose_admin(&mut self, op: KvOp, reply: Reply) {
        let moves = matches!(op, KvOp::Split { .. } | KvOp::Retire { .. });
        let cmd = KvCommand {
            principal: Bytes::new(),
            client: 0,
            seq: 0,
            op,
        }
        .to_bytes();
        let now = self.now();
        let waiter = Waiter::AdminKv { reply, moves };
        match self.node.propose(now, cmd, waiter) {
            Ok(_) => {
                if moves {
                    self.moves_proposed += 1;
                }
            }
            Err(r) => {
                let msg = match r.error {
                    paxos_core::node::ProposeRejected::Kernel(
                        paxos_core::ProposeError::NotLeader { .. },
                    ) => {
                        r.token.answer(self.leader_hint());
                        return;
                    }
                    e => format!("retry: {e:?}"),
                };
                r.token.answer(Response::Error(msg));
            }
        }
    }

    /// Proposes one node's role change; the answer waits for its commit.
    /// A follower redirects to the leader.
    fn change_member(
        &mut self,
        change: AdminChange,
        node: NodeId,
        addrs: Option<NodeAddrs>,
        reply: Reply,
    ) {
        let replica = self.node.replica();
        if !replica.is_leader() {
            reply.send(self.leader_hint());
            return;
        }
        let mut book = self.host.members.borrow().clone();
        if let Some(a) = addrs {
            if node == self.id {
                reply.send(Response::Error(format!(
                    "node {node} is this node; its addresses are those it was started with"
                )));
                return;
            }
            book.insert(
                node.0,
                Member {
                    peer: a.peer,
                    client: a.client,
                },
            );
        }
        let in_force = replica.membership();
        if node == self.id
            && matches!(change, AdminChange::Remove | AdminChange::Demote)
            && in_force.is_voter(node)
        {
            self.hand_over_before_own_change(reply);
            return;
        }
        let adding = matches!(change, AdminChange::AddVoter | AdminChange::AddObserver);
        if adding && !in_force.is_member(node) && !book.contains_key(&node.0) {
            reply.send(Response::Error(format!(
                "node {node} has no known addresses: give them (--addrs PEER_ADDR/CLIENT_ADDR)"
            )));
            return;
        }
        if matches!(change, AdminChange::AddVoter) && !in_force.is_member(node) {
            // A voter must hold the log before it counts: it joins as an
            // observer, catches up, and is promoted.
            reply.send(Response::Error(format!(
                "node {node} must catch up before it votes: add it as an observer, then promote it (`paxos-client admin add-voter` does both)"
            )));
            return;
        }
        if matches!(change, AdminChange::Promote) && in_force.is_observer(node) {
            let last = replica.last_zxid();
            let progress = replica.peer_progress();
            let p = progress.iter().find(|p| p.id == node);
            let lag = p
                .filter(|p| p.in_broadcast && !p.recovering)
                .map(|p| super::metrics::lag_entries(last, p.matched));
            match lag {
                Some(lag) if lag <= MAX_PROMOTION_LAG_ENTRIES => {}
                Some(lag) => {
                    reply.send(Response::Error(format!(
                        "retry: node {node} is {lag} entries behind the leader; it is promoted once at most {MAX_PROMOTION_LAG_ENTRIES} behind"
                    )));
                    return;
                }
                None => {
                    reply.send(Response::Error(format!(
                        "retry: node {node} is not synchronised with the leader yet (is it running, with --join?)"
                    )));
                    return;
                }
            }
        }
        let mut to = in_force.clone();
        let (was_voter, was_observer) = (to.is_voter(node), to.is_observer(node));
        let ok = match change {
            AdminChange::AddVoter if !was_voter && !was_observer => {
                to.voters.push(node);
                true
            }
            AdminChange::AddObserver if !was_voter && !was_observer => {
                to.observers.push(node);
                true
            }
            AdminChange::Promote if was_observer => {
                to.observers.retain(|o| *o != node);
                to.voters.push(node);
                true
            }
            AdminChange::Demote if was_voter => {
                to.voters.retain(|v| *v != node);
                to.observers.push(node);
                true
            }
            AdminChange::Remove if was_voter || was_observer => {
                to.voters.retain(|v| *v != node);
                to.observers.retain(|o| *o != node);
                true
            }
            _ => false,
        };
        if !ok {
            let role = if was_voter {
                "a voter"
            } else if was_observer {
                "an observer"
            } else {
                "not a member"
            };
            reply.send(Response::Error(format!(
                "cannot {change:?} node {node}: it is {role}"
            )));
            return;
        }
        to.voters.sort_unstable();
        to.observers.sort_unstable();
        // The new membership's address book travels with it.
        book.retain(|id, _| to.is_member(NodeId(*id)));
        to.context = Bytes::from(format_members(&book));
        let now = self.now();
        let waiter = Waiter::Config {
            reply,
            to: to.clone(),
        };
        match self.node.propose_membership(now, to, waiter) {
            Ok(zxid) => {
                tracing::info!(?change, %node, ?zxid, "membership change asked by an administrator")
            }
            Err(r) => {
                let text = match &r.error {
                    // Transient: another change or a hand-over ends, and
                    // followers come back in sync (a quiesced group's
                    // leader has heard nobody since it went quiet; the
                    // request woke it, and its heartbeats bring the answers
                    // within an interval; so does a promoted observer's).
                    // A voter that stays down keeps
                    // the refusal until the client gives up.
                    ChangeError::InProgress(_)
                    | ChangeError::Transferring(_)
                    | ChangeError::WouldLoseQuorum { .. }
                    | ChangeError::HistoryNotApplied { .. }
                    | ChangeError::NewVoterNotInSync(_) => {
                        format!("retry: {}", r.error)
                    }
                    e => format!("membership change refused: {e}"),
                };
                r.token.answer(Response::Error(text));
            }
        }
    }

    /// Learns the addresses of members this node was not started with from
    /// the memberships it holds (in force and committed), and adds them to
    /// the transport. Called at start and after every membership change.
    pub(super) fn learn_addresses(&mut self) {
        let replica = self.node.replica();
        let contexts: Vec<Bytes> = [replica.membership(), replica.committed_membership()]
            .into_iter()
            .map(|m: &Membership| m.context.clone())
            .filter(|c| !c.is_empty())
            .collect();
        for context in contexts {
            let book: BTreeMap<u64, Member> = match std::str::from_utf8(&context)
                .map_err(|e| anyhow::anyhow!("{e}"))
                .and_then(parse_members)
            {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "a membership's address book does not parse; addresses unchanged");
                    continue;
                }
            };
            for (id, m) in book {
                if id == self.id.0 || self.host.members.borrow().get(&id) == Some(&m) {
                    continue;
                }
                match self
                    .host
                    .transport
                    .borrow_mut()
                    .add_peer(PeerId(id), m.peer)
                {
                    Ok(_) => {
                        tracing::info!(peer = id, addr = %m.peer, client = %m.client, "learned a member's addresses from the membership");
                        self.host.members.borrow_mut().insert(id, m);
                    }
                    Err(e) => {
                        tracing::warn!(peer = id, error = %e, "could not add a member to the transport")
                    }
                }
            }
        }
    }

    /// The leader is asked to remove or demote itself: it hands over first,
    /// to the voter in sync that holds the most, and answers "retry" once it
    /// has; the client asks again and the new leader makes the change.
    fn hand_over_before_own_change(&mut self, reply: Reply) {
        let replica = self.node.replica();
        let in_force = replica.membership();
        let target = replica
            .peer_progress()
            .into_iter()
            .filter(|p| in_force.is_voter(p.id) && p.in_broadcast && !p.recovering)
            .max_by_key(|p| p.matched)
            .map(|p| p.id);
        let Some(to) = target else {
            reply.send(Response::Error(
                "retry: the leader must hand over before its own role changes, and no other voter is in sync yet".into(),
            ));
            return;
        };
        let now = self.now();
        match self.node.transfer_leadership(now, to) {
            Ok(()) => {
                tracing::info!(%to, "handing over before this node's own role changes, as an administrator asked");
                if let Some((_, earlier, _)) = self.pending_transfer.replace((to, reply, true)) {
                    earlier.send(Response::Error(
                        "retry: superseded by another transfer".into(),
                    ));
                }
            }
            Err(e) => reply.send(Response::Error(format!(
                "retry: the leader must hand over before its own role changes: {e}"
            ))),
        }
    }

    /// Starts a hand-over to `to`; the answer waits for its outcome
    /// ([`on_transfer_outcome`](Self::on_transfer_outcome)). A follower
    /// redirects to the leader.
    fn transfer_leader(&mut self, to: NodeId, reply: Reply) {
        let replica = self.node.replica();
        if !replica.is_leader() {
            reply.send(self.leader_hint());
            return;
        }
        if replica.leader() == Some(to) {
            reply.send(Response::Admin(
                serde_json::json!({ "leader": to.0, "transferred": false, "note": "already the leader" })
                    .to_string(),
            ));
            return;
        }
        if !self.host.members.borrow().contains_key(&to.0) {
            reply.send(Response::Error(format!(
                "node {to} is not a member of this cluster"
            )));
            return;
        }
        let now = self.now();
        match self.node.transfer_leadership(now, to) {
            Ok(()) => {
                tracing::info!(%to, "leader transfer asked by an administrator");
                // The kernel refuses a second hand-over while one runs, so
                // at most one answer waits.
                if let Some((_, earlier, _)) = self.pending_transfer.replace((to, reply, false)) {
                    earlier.send(Response::Error(
                        "retry: superseded by another transfer".into(),
                    ));
                }
            }
            Err(e) => reply.send(Response::Error(format!("transfer refused: {e}"))),
        }
    }

    /// The hand-over asked by an administrator took place (`Ok`) or was
    /// given up (`Err`), or leadership was lost meanwhile (`lost`).
    pub(super) fn on_transfer_outcome(&mut self, to: NodeId, outcome: TransferOutcome) {
        let Some((asked, reply, for_change)) = self.pending_transfer.take() else {
            return;
        };
        if asked != to && outcome != TransferOutcome::LeadershipLost {
            // Not this request's hand-over: keep waiting.
            self.pending_transfer = Some((asked, reply, for_change));
            return;
        }
        reply.send(match outcome {
            // The change of this node's own role is the new leader's to
            // make: the client asks again and is redirected there.
            TransferOutcome::HandedOff if for_change => Response::Error(format!(
                "retry: this node handed the leadership to {asked} so that its own role can change; the new leader makes the change"
            )),
            TransferOutcome::Aborted if for_change => Response::Error(format!(
                "retry: the hand-over to {asked} before changing this node's role was given up"
            )),
            TransferOutcome::HandedOff => Response::Admin(
                serde_json::json!({ "from": self.id.0, "to": asked.0, "transferred": true })
                    .to_string(),
            ),
            TransferOutcome::Aborted => Response::Error(format!(
                "transfer to {asked} aborted: it did not catch up within the election timeout; this node leads again"
            )),
            TransferOutcome::LeadershipLost => Response::Error(format!(
                "retry: this node lost the leadership before handing over to {asked}"
            )),
        });
    }

    /// The configuration and, on the leader, each member's progress.
    pub(super) fn members_json(&self) -> String {
        let replica = self.node.replica();
        let config = replica.config();
        let progress = replica.peer_progress();
        let leader = replica.leader();
        let members: Vec<serde_json::Value> = config
            .voters
            .iter()
            .map(|v| (*v, "voter"))
            .chain(config.observers.iter().map(|o| (*o, "observer")))
            .map(|(id, role)| {
                let p = progress.iter().find(|p| p.id == id);
                serde_json::json!({
                    "id": id.0,
                    "role": role,
                    "leader": leader == Some(id),
                    "client_addr": self.host.members.borrow().get(&id.0).map(|m| m.client.to_string()),
                    "matched": p.map(|p| format!("{:?}", p.matched)),
                    "in_broadcast": p.map(|p| p.in_broadcast),
                    "recovering": p.map(|p| p.recovering),
                })
            })
            .collect();
        serde_json::json!({
            "node": self.id.0,
            "leader": leader.map(|l| l.0),
            "epoch": replica.established_epoch().map(|e| e.0),
            "voters": config.voters.iter().map(|v| v.0).collect::<Vec<_>>(),
            "observers": config.observers.iter().map(|o| o.0).collect::<Vec<_>>(),
            "transferring_to": replica.transferring_to().map(|t| t.0),
            "change_pending": replica.membership_change_pending().map(|z| format!("{z:?}")),
            "members": members,
        })
        .to_string()
    }
}

/// How an administrator's hand-over ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TransferOutcome {
    /// TAKEOVER sent; this node stepped down.
    HandedOff,
    /// The target did not catch up in time.
    Aborted,
    /// Leadership ended otherwise first.
    LeadershipLost,
}
