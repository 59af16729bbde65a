//! Cluster administration (`paxos-client admin ...`, role `admin`): leader
//! transfer and the members' view. The connection's role is checked where
//! it is served ([`client_port`](super::client_port)); here the commands
//! are carried out.

use paxos_core::{ChangeError, NodeId};

use super::client_port::Reply;
use super::{Driver, Waiter};
use crate::client_proto::{AdminChange, AdminRequest, Response};

impl Driver {
    pub(super) fn on_admin(&mut self, req: AdminRequest, reply: Reply) {
        match req {
            AdminRequest::Members => reply.send(Response::Admin(self.members_json())),
            AdminRequest::TransferLeader { to } => self.transfer_leader(NodeId(to), reply),
            AdminRequest::Change { change, node } => {
                self.change_member(change, NodeId(node), reply)
            }
        }
    }

    /// Proposes one node's role change; the answer waits for its commit.
    /// A follower redirects to the leader.
    fn change_member(&mut self, change: AdminChange, node: NodeId, reply: Reply) {
        let replica = self.node.replica();
        if !replica.is_leader() {
            reply.send(self.leader_hint());
            return;
        }
        if !self.members.contains_key(&node.0) && !matches!(change, AdminChange::Remove) {
            // The transport knows the addresses of --members only.
            reply.send(Response::Error(format!(
                "node {node} is not in this node's --members: its addresses are unknown"
            )));
            return;
        }
        let mut to = replica.membership().clone();
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
                    ChangeError::InProgress(_) | ChangeError::Transferring(_) => {
                        format!("retry: {}", r.error)
                    }
                    e => format!("membership change refused: {e}"),
                };
                r.token.answer(Response::Error(text));
            }
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
        if !self.members.contains_key(&to.0) {
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
                if let Some((_, earlier)) = self.pending_transfer.replace((to, reply)) {
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
        let Some((asked, reply)) = self.pending_transfer.take() else {
            return;
        };
        if asked != to && outcome != TransferOutcome::LeadershipLost {
            // Not this request's hand-over: keep waiting.
            self.pending_transfer = Some((asked, reply));
            return;
        }
        reply.send(match outcome {
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
                    "client_addr": self.members.get(&id.0).map(|m| m.client.to_string()),
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
