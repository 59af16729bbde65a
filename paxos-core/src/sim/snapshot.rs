//! The simulator's snapshot IO, as the reference node does it with files:
//! the leader streams its snapshot in paced chunks, the follower assembles
//! them (in any order, by offset), checks the content against the
//! canonical sequence and installs it after a simulated install time,
//! reporting progress meanwhile.

use bytes::Bytes;

use super::machine::SimMachine;
use super::{crc32, Ev, Sim, SimOutgoing, SmSnapshot, Violation};
use crate::election::Elector;
use crate::node::Installed;
use crate::{Membership, NodeId, SnapChunk, Zxid};

impl<E: Elector> Sim<E> {
    /// `zxid u64 | len u64 | membership len u32 | membership | (zxid u64 | hash u64) * len`
    fn encode_snapshot(&self, s: &SmSnapshot) -> Vec<u8> {
        let m = s.membership.encode();
        let mut out = Vec::with_capacity(20 + m.len() + s.len * 16);
        out.extend_from_slice(&s.zxid.0.to_le_bytes());
        out.extend_from_slice(&(s.len as u64).to_le_bytes());
        out.extend_from_slice(&(m.len() as u32).to_le_bytes());
        out.extend_from_slice(&m);
        for (z, h) in &self.canonical.borrow()[..s.len] {
            out.extend_from_slice(&z.0.to_le_bytes());
            out.extend_from_slice(&h.to_le_bytes());
        }
        out
    }

    /// The node layer asks node `i` to stream its snapshot to `to`.
    pub(super) fn send_snapshot(&mut self, i: usize, to: NodeId, snapshot: Zxid, offset: u64) {
        {
            {
                let Some(s) = self.nodes[i]
                    .snapshot
                    .clone()
                    .filter(|s| s.zxid == snapshot)
                else {
                    tracing::debug!(have = ?self.nodes[i].snapshot, want = ?snapshot, "sim: snapshot superseded");
                    return; // superseded; the leader will retry
                };
                let leader = self.nodes[i].id;
                if !self.snap_open.insert((leader, to)) {
                    self.stats.snap_restarts += 1;
                }
                if offset > 0 {
                    self.stats.snap_resumes += 1;
                }
                let bytes = Bytes::from(self.encode_snapshot(&s));
                let out = SimOutgoing {
                    to,
                    snapshot,
                    offset: (offset as usize).min(bytes.len()),
                    bytes,
                };
                let n = &mut self.nodes[i];
                n.outgoing.retain(|o| o.to != to);
                n.outgoing.push(out);
                if self.cfg.snap_chunk_interval.is_zero() {
                    // The whole snapshot at once.
                    while !self.nodes[i].outgoing.is_empty() {
                        self.pump_once(i);
                    }
                } else if !self.nodes[i].pump_scheduled {
                    let n = &mut self.nodes[i];
                    n.pump_scheduled = true;
                    let gen = n.snap_gen;
                    let d = self.cfg.snap_chunk_interval;
                    self.schedule(d, Ev::SnapPump { node: i, gen });
                }
            }
        }
    }

    /// Hands the kernel one chunk of every outgoing snapshot; drops the
    /// transfers that ended or that the kernel no longer wants.
    fn pump_once(&mut self, i: usize) {
        let chunk_bytes = self.cfg.snap_chunk_bytes.max(1);
        let n = &mut self.nodes[i];
        let Some(r) = n.node.as_mut() else {
            n.outgoing.clear();
            return;
        };
        n.outgoing.retain_mut(|o| {
            if o.offset >= o.bytes.len() {
                return false;
            }
            let end = (o.offset + chunk_bytes).min(o.bytes.len());
            let data = o.bytes.slice(o.offset..end);
            let chunk = SnapChunk {
                snapshot_zxid: o.snapshot,
                offset: o.offset as u64,
                total_len: o.bytes.len() as u64,
                crc32: crc32(&data),
                fingerprint: 0,
                data,
                last: end == o.bytes.len(),
            };
            if !r.send_snapshot_chunk(o.to, chunk) {
                return false;
            }
            o.offset = end;
            end < o.bytes.len()
        });
    }

    pub(super) fn pump_snapshots(&mut self, i: usize) -> Result<(), Violation> {
        self.nodes[i].pump_scheduled = false;
        self.pump_once(i);
        let n = &mut self.nodes[i];
        if !n.outgoing.is_empty() {
            n.pump_scheduled = true;
            let gen = n.snap_gen;
            let d = self.cfg.snap_chunk_interval;
            self.schedule(d, Ev::SnapPump { node: i, gen });
        }
        self.drive(i)
    }

    /// The follower's driver takes one chunk (in any order: they are kept
    /// by offset) and starts the install once the snapshot is complete.
    pub(super) fn receive_chunk(&mut self, i: usize, chunk: SnapChunk) -> Result<(), Violation> {
        let n = &mut self.nodes[i];
        if crc32(&chunk.data) != chunk.crc32 {
            let what = format!("node {}: snapshot chunk crc mismatch", n.id);
            return Err(self.violation(what));
        }
        if n.installing.is_some() {
            // The whole snapshot is in; a chunk now is a late duplicate.
            return Ok(());
        }
        if n.incoming_zxid != chunk.snapshot_zxid {
            n.incoming.clear();
            n.incoming_zxid = chunk.snapshot_zxid;
        }
        n.incoming.insert(chunk.offset, chunk.data.clone());
        let mut assembled = Vec::new();
        for (off, data) in &n.incoming {
            let off = *off as usize;
            if off > assembled.len() {
                break;
            }
            // A resumed stream may overlap what is held: same bytes.
            let skip = assembled.len() - off;
            if skip < data.len() {
                assembled.extend_from_slice(&data[skip..]);
            }
        }
        if assembled.len() as u64 != chunk.total_len {
            self.report_progress(i, chunk.snapshot_zxid, assembled.len() as u64, false);
            return Ok(());
        }
        let n = &mut self.nodes[i];
        n.incoming.clear();
        n.incoming_zxid = Zxid::ZERO;
        let buf = assembled;
        if buf.len() < 20 || buf.len() as u64 != chunk.total_len {
            return Err(self.violation("snapshot of wrong length".into()));
        }
        let zxid = Zxid(u64::from_le_bytes(buf[0..8].try_into().unwrap_or_default()));
        let len = u64::from_le_bytes(buf[8..16].try_into().unwrap_or_default()) as usize;
        let mlen = u32::from_le_bytes(buf[16..20].try_into().unwrap_or_default()) as usize;
        let head = 20 + mlen;
        if zxid != chunk.snapshot_zxid || buf.len() != head + len * 16 {
            return Err(self.violation("snapshot header mismatch".into()));
        }
        let membership = match Membership::decode(&buf[20..head]) {
            Ok(m) => m,
            Err(e) => return Err(self.violation(format!("snapshot membership: {e}"))),
        };
        for k in 0..len {
            let o = head + k * 16;
            let z = Zxid(u64::from_le_bytes(
                buf[o..o + 8].try_into().unwrap_or_default(),
            ));
            let h = u64::from_le_bytes(buf[o + 8..o + 16].try_into().unwrap_or_default());
            if self.canonical.borrow().get(k) != Some(&(z, h)) {
                let what = format!("snapshot content diverges from the canonical sequence at {k}");
                return Err(self.violation(what));
            }
        }
        let snap = SmSnapshot {
            zxid,
            len,
            membership,
        };
        let install = self.cfg.snap_install_time;
        if install.is_zero() {
            self.finish_install(i, snap);
            return Ok(());
        }
        let n = &mut self.nodes[i];
        n.installing = Some((snap, self.now + install));
        let gen = n.snap_gen;
        self.report_progress(i, zxid, chunk.total_len, true);
        let tick = self.config.heartbeat_interval.min(install);
        self.schedule(tick, Ev::InstallTick { node: i, gen });
        Ok(())
    }

    /// An install in progress: finish it when due, else report progress.
    pub(super) fn install_tick(&mut self, i: usize) -> Result<(), Violation> {
        let Some((snap, done_at)) = self.nodes[i].installing.clone() else {
            return Ok(());
        };
        if self.now >= done_at {
            self.nodes[i].installing = None;
            self.finish_install(i, snap);
        } else {
            let total = (20 + snap.membership.encode().len() + snap.len * 16) as u64;
            self.report_progress(i, snap.zxid, total, true);
            let gen = self.nodes[i].snap_gen;
            let tick = self
                .config
                .heartbeat_interval
                .min(done_at.saturating_since(self.now));
            self.schedule(tick, Ev::InstallTick { node: i, gen });
        }
        self.drive(i)
    }

    /// The install is durable: the state machine takes the snapshot if the
    /// kernel still expects it (it may have moved on meanwhile). Once the
    /// kernel took it, it is the node's durable snapshot even when the
    /// state machine had already applied that far: the log below it is
    /// gone.
    fn finish_install(&mut self, i: usize, snap: SmSnapshot) {
        let now = self.local_now(i);
        let n = &mut self.nodes[i];
        let Some(node) = n.node.as_mut() else {
            return;
        };
        let staged = SimMachine::new(n.id, self.canonical.clone(), snap.len, snap.zxid);
        let installed = node.install_snapshot(now, snap.zxid, staged, snap.membership.clone());
        if installed.taken() {
            n.snapshot = Some(snap.clone());
            let id = n.id;
            self.snap_open.retain(|(_, f)| *f != id);
        }
        if installed == Installed::Replaced {
            self.stats.snap_installs += 1;
            let r = node.replica();
            if r.leader() == Some(r.id()) {
                // Only a leader-elect in discovery installs while leading.
                self.stats.snap_fetches += 1;
            }
        } else {
            tracing::info!(node = %n.id, zxid = ?snap.zxid, ?installed, "sim: installed snapshot did not replace the state");
        }
    }

    /// The follower's driver reports how far the transfer got.
    fn report_progress(&mut self, i: usize, snapshot: Zxid, received: u64, installing: bool) {
        let now = self.local_now(i);
        if let Some(n) = self.nodes[i].node.as_mut() {
            n.snapshot_progress(now, snapshot, received, installing);
        }
    }
}
