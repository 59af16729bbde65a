//! The status JSON (`paxos-client status`): role, positions, digest,
//! counters and per-peer transport and lag figures.

use paxos_core::StateMachine;

use super::Driver;

impl Driver {
    pub(super) fn status_json(&self) -> String {
        let replica = self.node.replica();
        let kv = self.node.state_machine();
        let counts = self.node.stats();
        let hs = replica.hard_state();
        let role = if replica.is_leader() {
            "leader"
        } else if replica.leader().is_some() {
            "follower"
        } else {
            "looking"
        };
        let progress = replica.peer_progress();
        let last = replica.last_zxid();
        let peers: Vec<serde_json::Value> = self
            .host
            .transport
            .borrow()
            .metrics()
            .into_iter()
            .map(|m| {
                // Lag as the leader sees it: entries the peer does not hold
                // yet (counted within the current epoch).
                let p = progress.iter().find(|p| p.id.0 == m.peer.0);
                let lag = p.map(|p| super::metrics::lag_entries(last, p.matched));
                serde_json::json!({
                    "matched": p.map(|p| format!("{:?}", p.matched)),
                    "applied": p.map(|p| format!("{:?}", p.applied)),
                    "in_broadcast": p.map(|p| p.in_broadcast),
                    "recovering": p.map(|p| p.recovering),
                    "lag_entries": lag,
                    "id": m.peer.0,
                    "connected": m.connected,
                    "frames_sent": m.frames_sent,
                    "frames_received": m.frames_received,
                    "queue_depth": m.queue_depth,
                    "reconnects": m.reconnects,
                    "dropped_full": m.dropped_full,
                    "bytes_sent": m.bytes_sent,
                    "bytes_received": m.bytes_received,
                    "rtt_us": m.path.map(|p| p.rtt_us),
                    "congestion_window_bytes": m.path.map(|p| p.congestion_window_bytes),
                    "lost_packets": m.path.map(|p| p.lost_packets),
                })
            })
            .collect();
        let incoming = kv.incoming().map(|i| {
            serde_json::json!({ "from": i.from, "range": i.range.to_hex(), "keys_moved": i.moved })
        });
        let outgoing = kv
            .outgoing()
            .map(|(child, r)| serde_json::json!({ "to": child, "range": r.to_hex() }));
        serde_json::json!({
            "id": self.id.0,
            "group": self.gid,
            "range": kv.range().to_hex(),
            "taking_over": incoming,
            "giving_away": outgoing,
            "pid": std::process::id(),
            "role": role,
            "recovering": replica.is_recovering(),
            "cluster": self.host.identity.borrow().cluster,
            "leader": replica.leader().map(|l| l.0),
            "voters": replica.config().voters.iter().map(|v| v.0).collect::<Vec<_>>(),
            "observers": replica.config().observers.iter().map(|o| o.0).collect::<Vec<_>>(),
            "membership_change_pending": replica.membership_change_pending().map(|z| format!("{z:?}")),
            "transferring_to": replica.transferring_to().map(|t| t.0),
            "epoch": replica.established_epoch().map(|e| e.0),
            "accepted_epoch": hs.accepted_epoch.0,
            "current_epoch": hs.current_epoch.0,
            "last_zxid": format!("{:?}", replica.last_zxid()),
            "commit_zxid": format!("{:?}", replica.commit_zxid()),
            "commit": replica.commit_zxid().as_u64(),
            "applied": kv.applied().as_u64(),
            "keys": kv.len(),
            "sessions": kv.session_count(),
            "sessions_evicted": kv.sessions_evicted(),
            "session_bytes": kv.session_bytes(),
            "digest": kv.digest(),
            "proposals": counts.proposals,
            "applied_entries": counts.applied,
            "inline_syncs": counts.inline_syncs,
            "syncs": counts.syncs,
            "elections": counts.elections,
            "snapshot_sends": self.stats.snapshot_sends,
            "snapshot_resumes": self.stats.snapshot_resumes,
            "snapshot_transfer_restarts": replica.snapshot_transfer_restarts(),
            "snapshot_installs": self.stats.snapshot_installs,
            "snapshot_chunks_refused": self.stats.snapshot_chunks_refused,
            "snapshot_chunks_dropped": self.stats.snapshot_chunks_dropped,
            "storage_stalled": self.node.is_stalled(),
            "storage_stalls": counts.storage_stalls,
            "peers": peers,
        })
        .to_string()
    }
}
