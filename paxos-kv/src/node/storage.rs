//! The node's storage: the WAL opened (or, when its synced part is
//! damaged, cut to its valid prefix and the node marked recovering), and
//! the fault hooks' slow disk applied to every sync the node layer runs.

use anyhow::{Context, Result};
use paxos_core::{Hooked, StorageHooks, Zxid};
use paxos_wal::{RecoveryMode, WalError, WalOptions, WalStorage};
use std::sync::Arc;

use super::fault_file::Faults;
use super::options::NodeOptions;
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
pub(super) fn open_storage(opts: &NodeOptions, disk_identity: &mut Identity) -> Result<WalStorage> {
    let dir = opts.data_dir.join(identity::WAL_DIR);
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
