//! Snapshot IO: streaming a local snapshot to a peer in paced chunks,
//! receiving and installing one off the loop, and taking local snapshots
//! on a thread of their own. The node layer says what to do; this is how.

use paxos_core::node::Installed;
use paxos_core::{Membership, NodeId, SnapChunk, StateMachine, Zxid};
use paxos_net_quic::PeerId;
use paxos_snapshot::{write_state_machine, Progress, SnapshotMeta, SnapshotSender, StoredSnapshot};
use std::time::{Duration, Instant};

use super::metrics::TimedStore;
use super::{
    Driver, InstallDone, OutgoingSnapshot, MAX_DEFERRED_CHUNKS, SNAPSHOT_CHUNK_BYTES,
    SNAPSHOT_PACING_FRAMES,
};

impl Driver {
    /// Snapshot work, whatever this node's role: a leader streams to a
    /// lagging follower and the follower installs; in discovery a follower
    /// streams to its leader-elect (FETCHSNAP) and the leader-elect
    /// installs. The kernel says which transfer it still wants through
    /// `send_snapshot_chunk` and `snapshot_installed`.
    pub(super) fn send_snapshot(&mut self, to: NodeId, snapshot: Zxid, offset: u64) {
        {
            {
                let path = self.snapshots.path_of(snapshot);
                match SnapshotSender::open(&path, SNAPSHOT_CHUNK_BYTES) {
                    Ok(mut sender) => {
                        sender.resume_from(offset);
                        self.stats.snapshot_sends += 1;
                        self.host.metrics.borrow().snapshot_send_started();
                        if offset > 0 {
                            self.stats.snapshot_resumes += 1;
                            tracing::info!(%to, ?snapshot, offset, bytes = sender.total_bytes(), "snapshot transfer resumed");
                        }
                        tracing::info!(%to, ?snapshot, offset, bytes = sender.total_bytes(), "streaming snapshot");
                        self.outgoing.retain(|o| o.to != to);
                        self.outgoing.push(OutgoingSnapshot { to, sender });
                    }
                    Err(e) => {
                        tracing::error!(%to, ?snapshot, error = %e, "cannot open snapshot to send")
                    }
                }
            }
        }
    }

    /// Feeds a few chunks of every outgoing snapshot to the kernel, as long
    /// as the peer's queue is short.
    pub(super) fn pump_snapshots(&mut self) {
        let mut outgoing = std::mem::take(&mut self.outgoing);
        outgoing.retain_mut(|o| {
            for _ in 0..4 {
                let depth = self.host.transport.borrow().peer_metrics(PeerId(o.to.0))
                    .map_or(0, |m| m.queue_depth);
                if depth > SNAPSHOT_PACING_FRAMES {
                    return true;
                }
                match o.sender.next_chunk() {
                    Ok(Some(chunk)) => {
                        let last = chunk.last;
                        let bytes = chunk.data.len();
                        if !self.node.send_snapshot_chunk(o.to, chunk) {
                            return false;
                        }
                        self.host.metrics.borrow().snapshot_chunk_sent(bytes);
                        if last {
                            return false;
                        }
                    }
                    Ok(None) => return false,
                    Err(e) => {
                        tracing::error!(to = %o.to, error = %e, "reading the snapshot to send failed");
                        return false;
                    }
                }
            }
            true
        });
        self.outgoing.extend(outgoing);
    }

    pub(super) fn receive_chunk(&mut self, from: NodeId, chunk: SnapChunk) {
        let Some(receiver) = self.receiver.as_mut() else {
            // An install runs off the loop; its receiver comes back with it.
            if self
                .installing
                .is_some_and(|(z, _)| z == chunk.snapshot_zxid)
            {
                // A chunk of the snapshot being installed: held already.
                return;
            }
            if self.deferred_chunks.len() < MAX_DEFERRED_CHUNKS {
                self.deferred_chunks.push_back((from, chunk));
            } else {
                self.stats.snapshot_chunks_dropped += 1;
                tracing::warn!(%from, offset = chunk.offset, "snapshot chunk dropped while an install runs; the leader resumes from our offset");
            }
            return;
        };
        let snapshot = chunk.snapshot_zxid;
        let mut progress = receiver.accept(&chunk);
        if matches!(
            progress,
            Err(paxos_snapshot::SnapshotError::ForeignChunk { .. })
        ) && chunk.offset == 0
        {
            // The leader started another snapshot: drop what we had.
            tracing::info!(%from, ?snapshot, "a new snapshot transfer replaces the partial one");
            if let Err(e) = receiver.abort() {
                tracing::warn!(error = %e, "partial snapshot not removed");
            }
            progress = receiver.accept(&chunk);
        }
        // What the receiver holds of this snapshot: where the leader
        // resumes if it must restart the transfer.
        let received = receiver
            .in_progress()
            .filter(|(id, _)| id.zxid == snapshot)
            .map_or(0, |_| receiver.next_offset());
        let now = self.now();
        if progress.is_ok() {
            self.host
                .metrics
                .borrow()
                .snapshot_chunk_received(chunk.data.len());
        }
        match progress {
            Ok(Progress::Complete) => self.start_install(from),
            Ok(Progress::NeedMore { .. }) => {
                self.node.snapshot_progress(now, snapshot, received, false)
            }
            Err(e) => {
                self.stats.snapshot_chunks_refused += 1;
                tracing::warn!(%from, error = %e, received, "snapshot chunk refused");
                self.node.snapshot_progress(now, snapshot, received, false);
            }
        }
    }

    /// The last chunk is in: verify the file, move it into the store and
    /// restore it into a staging store on a blocking thread (each step reads
    /// the whole snapshot), so the loop keeps serving heartbeats and clients
    /// meanwhile. [`on_install_done`](Self::on_install_done) finishes.
    fn start_install(&mut self, from: NodeId) {
        let Some(mut receiver) = self.receiver.take() else {
            panic!("invariant: an install starts only from a chunk the receiver took");
        };
        if let Some((id, total)) = receiver.in_progress() {
            self.installing = Some((id.zxid, total));
            let now = self.now();
            self.node.snapshot_progress(now, id.zxid, total, true);
        }
        let mut staged = self.node.state_machine().emptied();
        let store = self.snapshots.clone();
        let done = self.host.install_done_tx.clone();
        let group = self.index;
        tracing::info!(%from, "snapshot received; installing off the loop");
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            // The membership recorded with the snapshot comes from its
            // header (read again once installed, the file being the one
            // the checks passed on).
            let result = receiver.install(&mut staged).and_then(|stored| {
                let (_, meta, _) = paxos_snapshot::snapshot_identity(&stored.path)?;
                Ok((stored, meta))
            });
            if result.is_ok() {
                if let Err(e) = store.retain(2) {
                    tracing::warn!(error = %e, "old snapshots not removed");
                }
            }
            let _ = done.send((
                group,
                InstallDone {
                    from,
                    receiver,
                    staged,
                    result,
                    elapsed: started.elapsed(),
                },
            ));
        });
    }

    /// An install finished. The staging store replaces the live one only if
    /// the kernel still expects this snapshot (it may have changed leader
    /// meanwhile); the live store is never half-replaced.
    pub(super) fn on_install_done(&mut self, done: InstallDone) {
        let InstallDone {
            from,
            receiver,
            staged,
            result,
            elapsed,
        } = done;
        self.receiver = Some(receiver);
        self.installing = None;
        match result {
            Ok((stored, meta)) => {
                let now = self.now();
                // Format version 1 files record the voters only.
                let membership = meta.membership.unwrap_or(Membership {
                    voters: meta.voters,
                    ..Membership::default()
                });
                // The snapshot is in the store either way: taken, it is
                // the newest durable snapshot the log now continues from.
                match self.node.install_snapshot(
                    now,
                    stored.zxid,
                    TimedStore::new(staged),
                    membership,
                ) {
                    Installed::Replaced => {
                        self.stats.snapshot_installs += 1;
                        self.host.metrics.borrow().snapshot_installed();
                        tracing::info!(%from, zxid = ?stored.zxid, keys = self.node.state_machine().len(), ?elapsed, "snapshot installed; state replaced");
                    }
                    Installed::AlreadyApplied => {
                        tracing::info!(%from, zxid = ?stored.zxid, ?elapsed, "snapshot installed; the state had applied as far and is kept");
                    }
                    Installed::NotExpected => {}
                }
            }
            Err(e) => {
                tracing::error!(%from, error = %e, "snapshot install failed; state kept")
            }
        }
        // Chunks that came meanwhile, in order (one may start another
        // install, which defers the rest again).
        for (from, chunk) in std::mem::take(&mut self.deferred_chunks) {
            self.receive_chunk(from, chunk);
        }
    }

    /// Takes the local snapshot the node layer asked for. The state is
    /// cloned on the loop (keys and values are reference-counted `Bytes`,
    /// so this copies the map's structure, not the data) and written and
    /// synced on a thread of its own, so the loop keeps serving heartbeats.
    pub(super) fn take_snapshot(&mut self) {
        // The state as it is now, labelled with its own applied zxid (more
        // entries may have been applied since the layer asked).
        let zxid = self.node.state_machine().applied();
        let replica = self.node.replica();
        // The membership in force at the snapshot's zxid (not now).
        let membership = self.node.membership_at(zxid);
        let meta = SnapshotMeta {
            zxid,
            epoch: replica.hard_state().current_epoch,
            voters: membership.voters.clone(),
            membership: Some(membership),
        };
        let copy = self.node.state_machine().clone();
        let store = self.snapshots.clone();
        let done = self.host.snapshot_done_tx.clone();
        let group = self.index;
        std::thread::spawn(move || {
            // The loop comes first: the snapshot runs on idle time.
            lower_thread_priority();
            let started = Instant::now();
            let result = store
                .create(&meta)
                .and_then(|w| write_state_machine(&copy, w))
                .map(|stored| (stored, started.elapsed()))
                .map_err(|e| e.to_string());
            let _ = done.send((group, (zxid, result)));
        });
    }

    /// The shared log's oldest segment is kept for this group's entries:
    /// snapshot if needed, then cut the log as far as it safely can
    /// ([`paxos_core::Node::purge_log`]).
    pub(super) fn purge_log(&mut self) {
        self.node.purge_log();
    }

    /// A snapshot thread finished: the log may now be cut up to its zxid.
    pub(super) fn on_snapshot_done(
        &mut self,
        zxid: Zxid,
        result: Result<(StoredSnapshot, Duration), String>,
    ) {
        match result {
            Ok((stored, elapsed)) => {
                self.node.snapshot_taken(zxid);
                self.host.metrics.borrow().snapshot_taken(stored.file_bytes);
                tracing::info!(?zxid, bytes = stored.file_bytes, ?elapsed, "snapshot taken");
                if let Err(e) = self.snapshots.retain(2) {
                    tracing::warn!(error = %e, "old snapshots not removed");
                }
            }
            Err(e) => {
                tracing::error!(?zxid, error = %e, "snapshot failed");
                self.node.snapshot_failed();
            }
        }
    }
}

/// Give the calling thread the lowest CPU priority (nice 19); best effort.
fn lower_thread_priority() {
    // SAFETY: plain syscalls on the calling thread's own id.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the snapshot thread's priority");
    }
}
