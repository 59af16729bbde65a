//! The node's storage: the WAL opened (or, when its synced part is
//! damaged, cut to its valid prefix and the node marked recovering), and
//! the fault hooks' slow disk applied to every sync the node layer runs.

use anyhow::{Context, Result};
use paxos_core::node::SyncId;
use paxos_core::{Hooked, StorageError, StorageHooks, Zxid};
use paxos_wal::{RecoveryMode, Wal, WalError, WalOptions, WalStorage};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

use super::fault_file::Faults;
use super::metrics::{self, SyncRecorder};
use super::options::NodeOptions;
use super::SyncDone;
use crate::identity::{self, Identity, Standing};

/// The fault hooks' slow disk: every sync waits `sync_delay_ms` (none
/// unless `--fault-file` sets it).
pub(super) struct SlowDisk(pub(super) Arc<Faults>);

impl StorageHooks for SlowDisk {
    fn before_sync(&self) {
        self.0.delay_sync();
    }
}

/// The WAL under the node layer, with the fault hooks around it.
pub(super) type NodeStorage = Hooked<WalStorage, SlowDisk>;

/// Opens the node's WAL and hard state. Damage inside the part of the log
/// that was synced (records this node may have acknowledged) is not cut
/// like a torn tail: the node records in its identity that it is
/// recovering (durably, before the log is changed), then keeps the log's
/// valid prefix and starts as a recovering replica, which neither votes
/// nor counts until a leader has brought it up to date (see
/// ARCHITECTURE.md, "Recovering replicas").
///
/// The valid prefix is kept rather than the whole log discarded: it is
/// intact (every record checked), the leader's sync repairs the rest
/// (DIFF, TRUNC or SNAP) as for any follower behind, and the hard state
/// (the promises this node made) stays, which is safer than a wiped node's
/// start. The damaged segment files are copied aside (`*.damaged`).
fn open_storage(
    opts: &NodeOptions,
    group_dir: &std::path::Path,
    disk_identity: &mut Identity,
) -> Result<WalStorage> {
    let dir = group_dir.join(identity::WAL_DIR);
    let wal_options = WalOptions {
        segment_bytes: opts.segment_bytes,
        ..WalOptions::default()
    };
    let remedy = format!(
        "if the node cannot recover by itself, move {} aside (or empty it) and start the node \
         with `paxos-node run --rejoin`: it then catches up from its peers before it votes",
        opts.data_dir.display()
    );
    let (path, offset, reason, last_good, proven) =
        match WalStorage::open(&dir, wal_options.clone()) {
            Ok((storage, report)) => {
                tracing::info!(?report, "wal opened");
                return Ok(storage);
            }
            Err(WalError::Corrupted {
                path,
                offset,
                reason,
                last_good_key,
                proven_durable_key,
            }) => (path, offset, reason, last_good_key, proven_durable_key),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("opening the WAL in {}; {remedy}", opts.data_dir.display())
                })
            }
        };
    tracing::error!(
        file = %path.display(),
        offset,
        %reason,
        last_good = ?last_good.map(Zxid),
        proven_durable = ?Zxid(proven),
        "the log is damaged where it was synced: entries this node may have acknowledged \
         are lost; keeping the valid prefix and recovering from the peers without voting"
    );
    let recovering = Identity {
        standing: Standing::Recovering,
        ..disk_identity.clone()
    };
    identity::write(&opts.data_dir, &recovering).with_context(|| {
        format!(
            "the log is damaged in {} at offset {offset} ({reason}), and this node could not \
             record that it must recover; {remedy}",
            path.display()
        )
    })?;
    *disk_identity = recovering;
    let keep = WalOptions {
        recovery: RecoveryMode::KeepValidPrefix,
        ..wal_options
    };
    let (storage, report) = WalStorage::open(&dir, keep).with_context(|| {
        format!(
            "the log is damaged in {} at offset {offset} ({reason}) and its valid prefix \
             could not be kept; {remedy}",
            path.display()
        )
    })?;
    if let Some(d) = &report.damaged {
        tracing::warn!(
            file = %d.path.display(),
            offset = d.offset,
            kept_through = ?d.after_key.map(Zxid),
            lost_through = ?Zxid(d.through_key),
            copies = ?d.preserved_copies,
            "damaged log cut to its valid prefix; the rest is refetched from the leader"
        );
    }
    Ok(storage)
}

/// The directory of group `index`'s WAL, snapshots and poisoned-entry
/// record: the data directory itself when the node hosts one group (the
/// layout of a single-group node), `groups/<index>` under it otherwise.
pub(super) fn group_dir(opts: &NodeOptions, index: usize) -> PathBuf {
    if opts.groups <= 1 {
        opts.data_dir.clone()
    } else {
        opts.data_dir
            .join(identity::GROUPS_DIR)
            .join(index.to_string())
    }
}

/// Every group's storage, opened, in group order.
pub(super) struct Stores {
    stores: Vec<NodeStorage>,
    syncers: Vec<Arc<Wal>>,
}

impl Stores {
    pub(super) fn len(&self) -> usize {
        self.stores.len()
    }

    /// What the sync thread flushes for each group.
    pub(super) fn syncers(&self) -> Vec<Arc<Wal>> {
        self.syncers.clone()
    }
}

impl IntoIterator for Stores {
    type Item = NodeStorage;
    type IntoIter = std::vec::IntoIter<NodeStorage>;
    fn into_iter(self) -> Self::IntoIter {
        self.stores.into_iter()
    }
}

/// Opens every group's storage (see [`open_storage`] for damage).
pub(super) fn open_stores(
    opts: &NodeOptions,
    faults: &Arc<Faults>,
    disk_identity: &mut Identity,
) -> Result<Stores> {
    let mut stores = Vec::with_capacity(opts.groups as usize);
    let mut syncers = Vec::with_capacity(opts.groups as usize);
    for index in 0..opts.groups as usize {
        let dir = group_dir(opts, index);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let inner =
            open_storage(opts, &dir, disk_identity).with_context(|| format!("group {index}"))?;
        syncers.push(inner.wal_handle());
        stores.push(NodeStorage {
            inner,
            hooks: SlowDisk(faults.clone()),
        });
    }
    Ok(Stores { stores, syncers })
}

/// Sync requests served by one pass of the sync thread, at most.
const MAX_SYNCS_PER_PASS: usize = 64 * 1024;

/// The sync thread's loop: takes every request waiting, syncs each log
/// they name once (requests of groups sharing a log share its sync), and
/// answers each. Ends when the node drops its request channel.
pub(super) fn sync_loop(
    requests: std::sync::mpsc::Receiver<(usize, SyncId)>,
    syncers: Vec<Arc<Wal>>,
    faults: Arc<Faults>,
    recorder: SyncRecorder,
    done: mpsc::UnboundedSender<(usize, SyncDone)>,
) {
    let mut batch: Vec<(usize, SyncId)> = Vec::new();
    while let Ok(first) = requests.recv() {
        batch.clear();
        batch.push(first);
        while batch.len() < MAX_SYNCS_PER_PASS {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        // Each distinct log once, in the order first asked.
        let mut synced: Vec<(*const Wal, Result<(), StorageError>)> = Vec::new();
        for &(group, sync) in &batch {
            let Some(wal) = syncers.get(group) else {
                tracing::error!(group, "a sync asked for a group without a log (a bug)");
                continue;
            };
            let key = Arc::as_ptr(wal);
            let result = match synced.iter().find(|(k, _)| *k == key) {
                Some((_, r)) => r.clone(),
                None => {
                    let started = Instant::now();
                    // Approximate when an inline sync runs meanwhile: its
                    // entries are then counted here too.
                    let before = wal.durable_key();
                    faults.delay_sync();
                    let r = wal
                        .sync()
                        .map(|after| {
                            let entries = metrics::entries_between(before, after);
                            recorder.record(started.elapsed(), entries);
                        })
                        .map_err(|e| StorageError::io("the background WAL sync", e));
                    synced.push((key, r.clone()));
                    r
                }
            };
            if done.send((group, (sync, result))).is_err() {
                return;
            }
        }
    }
}
