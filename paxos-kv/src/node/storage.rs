//! The node's storage: the WAL opened (or, when its synced part is
//! damaged, cut to its valid prefix and the node marked recovering), and
//! the fault hooks' slow disk applied to every sync the node layer runs.

use anyhow::{Context, Result};
use paxos_core::node::SyncId;
use paxos_core::{
    Entry, GroupId, HardState, Hooked, MetaKey, Ready, Storage, StorageError, StorageHooks, Zxid,
};
use paxos_wal::shared::{GroupStorage, SharedError, SharedLog};
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
use crate::shard::KeyRange;

/// The fault hooks' slow disk: every sync waits `sync_delay_ms` (none
/// unless `--fault-file` sets it).
pub(super) struct SlowDisk(pub(super) Arc<Faults>);

impl StorageHooks for SlowDisk {
    fn before_sync(&self) {
        self.0.delay_sync();
    }
}

/// The WAL under the node layer, with the fault hooks around it.
pub(super) type NodeStorage = Hooked<GroupLog, SlowDisk>;

/// A group's log: its own WAL (a node hosting one group, the layout it has
/// always had) or its share of the node's one shared log (a node hosting
/// many: one sync makes a batch of every group durable).
#[derive(Debug)]
pub(super) enum GroupLog {
    /// The group's own WAL and hard-state file.
    Own(WalStorage),
    /// The group's records in the node's shared log.
    Shared(GroupStorage),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            GroupLog::Own($s) => $e,
            GroupLog::Shared($s) => $e,
        }
    };
}

impl Storage for GroupLog {
    fn hard_state(&self) -> HardState {
        each!(self, s => s.hard_state())
    }
    fn first_zxid(&self) -> Option<Zxid> {
        each!(self, s => s.first_zxid())
    }
    fn last_zxid(&self) -> Option<Zxid> {
        each!(self, s => s.last_zxid())
    }
    fn epoch_ends(&self) -> Result<Vec<Zxid>, StorageError> {
        each!(self, s => s.epoch_ends())
    }
    fn entries(
        &self,
        from: Zxid,
        max_entries: usize,
        max_bytes: usize,
        out: &mut Vec<Entry>,
    ) -> Result<(), StorageError> {
        each!(self, s => s.entries(from, max_entries, max_bytes, out))
    }
    fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        each!(self, s => s.append(entries))
    }
    fn config_entries(&self) -> Result<Vec<Entry>, StorageError> {
        each!(self, s => s.config_entries())
    }
    fn truncate_suffix(&mut self, after: Zxid) -> Result<(), StorageError> {
        each!(self, s => s.truncate_suffix(after))
    }
    fn truncate_prefix(&mut self, upto: Zxid) -> Result<(), StorageError> {
        each!(self, s => s.truncate_prefix(upto))
    }
    fn save_hard_state(&mut self, hs: HardState) -> Result<(), StorageError> {
        each!(self, s => s.save_hard_state(hs))
    }
    fn recovering(&self) -> bool {
        each!(self, s => s.recovering())
    }
    fn save_recovering(&mut self, recovering: bool) -> Result<(), StorageError> {
        each!(self, s => s.save_recovering(recovering))
    }
    fn meta(&self, key: MetaKey) -> u64 {
        each!(self, s => s.meta(key))
    }
    fn save_meta(&mut self, key: MetaKey, value: u64) -> Result<(), StorageError> {
        each!(self, s => s.save_meta(key, value))
    }
    fn write_meta(&mut self, key: MetaKey, value: u64) -> Result<(), StorageError> {
        each!(self, s => s.write_meta(key, value))
    }
    fn sync(&mut self) -> Result<(), StorageError> {
        each!(self, s => s.sync())
    }
    fn state_in_log(&self) -> bool {
        each!(self, s => s.state_in_log())
    }
    fn write_ready(&mut self, ready: &Ready) -> Result<(), StorageError> {
        each!(self, s => s.write_ready(ready))
    }
}

/// What the sync thread flushes for a group.
#[derive(Clone)]
pub(super) enum Syncer {
    /// A group's own WAL.
    Own(Arc<Wal>),
    /// The node's shared log (every group's).
    Shared(Arc<SharedLog>),
}

impl Syncer {
    /// Identifies the log, so that one pass syncs each log once.
    fn key(&self) -> usize {
        match self {
            Syncer::Own(w) => Arc::as_ptr(w) as usize,
            Syncer::Shared(l) => Arc::as_ptr(l) as usize,
        }
    }

    fn durable(&self) -> Option<u64> {
        match self {
            Syncer::Own(w) => w.durable_key(),
            Syncer::Shared(l) => l.durable_lsn(),
        }
    }

    /// Entries made durable between two durable points (a shared log's
    /// points are record numbers: records of every group, states included).
    fn entries(&self, before: Option<u64>, after: Option<u64>) -> u64 {
        match self {
            Syncer::Own(_) => metrics::entries_between(before, after),
            Syncer::Shared(_) => after.unwrap_or(0).saturating_sub(before.unwrap_or(0)),
        }
    }

    fn sync(&self) -> Result<Option<u64>, String> {
        match self {
            Syncer::Own(w) => w.sync().map_err(|e| e.to_string()),
            Syncer::Shared(l) => l.sync().map_err(|e| e.to_string()),
        }
    }
}

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

/// Every group's storage, opened, in group order: the base groups (by id)
/// this node still hosts.
pub(super) struct Stores {
    stores: Vec<(u32, NodeStorage)>,
    syncers: Vec<Syncer>,
    /// The shared log (a node hosting many groups): where groups created
    /// at run time keep their records.
    pub(super) shared: Option<Arc<SharedLog>>,
    /// Groups created at run time by splits (found by their
    /// [`ORIGIN_FILE`]), by id, with their storage.
    pub(super) children: Vec<(u32, Origin, NodeStorage)>,
    /// Groups merged away (marked [`RETIRED_FILE`]): never made again.
    pub(super) gone: Vec<u32>,
}

impl Stores {
    pub(super) fn len(&self) -> usize {
        self.stores.len()
    }

    /// What the sync thread flushes for each group.
    pub(super) fn syncers(&self) -> Vec<Syncer> {
        self.syncers.clone()
    }
}

impl IntoIterator for Stores {
    type Item = (u32, NodeStorage);
    type IntoIter = std::vec::IntoIter<(u32, NodeStorage)>;
    fn into_iter(self) -> Self::IntoIter {
        self.stores.into_iter()
    }
}

/// Opens every group's storage: a node hosting one group its own WAL (see
/// [`open_storage`] for damage), a node hosting many the shared log under
/// `wal/log` (see [`open_shared`]) and each group's share of it.
pub(super) fn open_stores(
    opts: &NodeOptions,
    faults: &Arc<Faults>,
    disk_identity: &mut Identity,
) -> Result<Stores> {
    if opts.groups <= 1 {
        let inner = open_storage(opts, &opts.data_dir, disk_identity)?;
        let syncer = Syncer::Own(inner.wal_handle());
        return Ok(Stores {
            stores: vec![(
                0,
                NodeStorage {
                    inner: GroupLog::Own(inner),
                    hooks: SlowDisk(faults.clone()),
                },
            )],
            syncers: vec![syncer],
            shared: None,
            children: Vec::new(),
            gone: Vec::new(),
        });
    }
    let log = Arc::new(open_shared(opts, disk_identity)?);
    log.set_combine_writes(COMBINE_WRITES);
    let mut stores = Vec::with_capacity(opts.groups as usize);
    let mut gone = Vec::new();
    for index in 0..u64::from(opts.groups) {
        let dir = group_dir(opts, index as usize);
        if index > 0 && is_retired(&dir) {
            drop_retired(&log, index as u32, &dir);
            gone.push(index as u32);
            continue;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let inner = log
            .group(GroupId(index))
            .with_context(|| format!("opening group {index} in the shared log"))?;
        stores.push((
            index as u32,
            NodeStorage {
                inner: GroupLog::Shared(inner),
                hooks: SlowDisk(faults.clone()),
            },
        ));
    }
    let children = open_children(opts, &log, faults, &mut gone)?;
    Ok(Stores {
        stores,
        syncers: vec![Syncer::Shared(log.clone()); opts.groups as usize],
        shared: Some(log),
        children,
        gone,
    })
}

/// The file in a group's directory that says the group was made by a
/// split: which group it takes its range from, the range, and the
/// membership it started with (`from <id>\nrange <start>-<end>\nvoters
/// <ids>\nobservers <ids>\n`, the range in hex, ids comma-separated). A
/// base group has none. Its initial state (empty, taking the range over,
/// with those members) is rebuilt from it at every start; everything
/// after is in its log and snapshots.
pub(super) const ORIGIN_FILE: &str = "ORIGIN";

/// The file that marks a group merged into another and removed from this
/// node: its directory is never opened again, and the next start drops its
/// records from the shared log and deletes its other files. The mark
/// itself stays for good (the group is never made again).
pub(super) const RETIRED_FILE: &str = "RETIRED";

/// Marks the group in `dir` as removed ([`RETIRED_FILE`]), durably.
pub(super) fn mark_retired(dir: &std::path::Path) -> Result<()> {
    let path = dir.join(RETIRED_FILE);
    std::fs::File::create(&path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("creating {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Whether the group in `dir` was merged away ([`RETIRED_FILE`]).
pub(super) fn is_retired(dir: &std::path::Path) -> bool {
    dir.join(RETIRED_FILE).exists()
}

/// Drops a merged-away group for good at a start: its records from the
/// shared log, then its directory. A failure only leaves them for the
/// next start (the mark stays).
fn drop_retired(log: &SharedLog, id: u32, dir: &std::path::Path) {
    if let Err(e) = log.remove_group(u64::from(id)) {
        tracing::warn!(group = id, error = %e, "records of a merged-away group not dropped; tried again at the next start");
        return;
    }
    // The records' removal is durable before the files go.
    if let Err(e) = log.sync() {
        tracing::warn!(group = id, error = %e, "could not sync the removal of a merged-away group's records");
        return;
    }
    // Everything but the mark, which stays for good: it is what keeps the
    // group from being made again (a base group at the next start, a
    // child from its parent's record of the split).
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(group = id, dir = %dir.display(), error = %e, "could not list a merged-away group's directory");
            return;
        }
    };
    // Bounded by the directory's entries.
    for entry in entries.flatten() {
        if entry.file_name() == RETIRED_FILE {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if let Err(e) = removed {
            tracing::warn!(group = id, path = %path.display(), error = %e, "could not delete a merged-away group's file");
        }
    }
    tracing::info!(
        group = id,
        "merged-away group's records and files dropped (its mark stays)"
    );
}

/// Where a group made by a split comes from (see [`ORIGIN_FILE`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Origin {
    /// The group that split.
    pub(super) from: u32,
    /// The range it gave.
    pub(super) range: KeyRange,
    /// The split group's voters and observers when it split: the new
    /// group's first membership.
    pub(super) voters: Vec<u64>,
    pub(super) observers: Vec<u64>,
}

/// Members an origin file may list, at most.
const MAX_ORIGIN_MEMBERS: usize = 1024;

impl Origin {
    fn encode(&self) -> String {
        let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        format!(
            "from {}\nrange {}\nvoters {}\nobservers {}\n",
            self.from,
            self.range.to_hex(),
            ids(&self.voters),
            ids(&self.observers)
        )
    }

    fn parse(text: &str) -> Option<Origin> {
        let ids = |s: &str| -> Option<Vec<u64>> {
            if s.is_empty() {
                return Some(Vec::new());
            }
            let v: Vec<u64> = s
                .split(',')
                .take(MAX_ORIGIN_MEMBERS + 1)
                .map(|i| i.parse().ok())
                .collect::<Option<_>>()?;
            (v.len() <= MAX_ORIGIN_MEMBERS).then_some(v)
        };
        let mut lines = text.lines();
        let from = lines.next()?.strip_prefix("from ")?.parse().ok()?;
        let range = KeyRange::from_hex(lines.next()?.strip_prefix("range ")?)?;
        let voters = ids(lines.next()?.strip_prefix("voters ")?)?;
        let observers = ids(lines.next()?.strip_prefix("observers ")?)?;
        if lines.next().is_some() || range.is_empty() || voters.is_empty() {
            return None;
        }
        Some(Origin {
            from,
            range,
            voters,
            observers,
        })
    }
}

/// The groups under `groups/` made by splits: every directory named by a
/// group id at or past `--groups` that holds an [`ORIGIN_FILE`], opened in
/// the shared log (a directory without one is a creation that never
/// finished: its group holds nothing and is not opened). Errors on an
/// origin file that does not parse (the node would not know the group's
/// range).
fn open_children(
    opts: &NodeOptions,
    log: &Arc<SharedLog>,
    faults: &Arc<Faults>,
    gone: &mut Vec<u32>,
) -> Result<Vec<(u32, Origin, NodeStorage)>> {
    let root = opts.data_dir.join(identity::GROUPS_DIR);
    let mut found = Vec::new();
    let entries =
        std::fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))?;
    // Bounded by the directory's entries.
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if id < opts.groups {
            continue;
        }
        if is_retired(&entry.path()) {
            drop_retired(log, id, &entry.path());
            gone.push(id);
            continue;
        }
        let path = entry.path().join(ORIGIN_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let origin = Origin::parse(&text).with_context(|| {
            format!(
                "{} does not say where group {id} comes from (damaged?)",
                path.display()
            )
        })?;
        found.push((id, origin));
    }
    found.sort_unstable_by_key(|(id, _)| *id);
    found
        .into_iter()
        .map(|(id, origin)| Ok((id, origin, child_storage(log, faults, id)?)))
        .collect()
}

/// Group `id`'s share of the shared log, with the fault hooks.
fn child_storage(log: &Arc<SharedLog>, faults: &Arc<Faults>, id: u32) -> Result<NodeStorage> {
    let inner = log
        .group(GroupId(u64::from(id)))
        .with_context(|| format!("opening group {id} in the shared log"))?;
    Ok(NodeStorage {
        inner: GroupLog::Shared(inner),
        hooks: SlowDisk(faults.clone()),
    })
}

/// Makes the directory of group `id`, created by a split, with its
/// [`ORIGIN_FILE`] written durably (a temporary file renamed into place,
/// then the directory synced), and opens its share of the shared log. The
/// origin is durable before the group can log anything, so a restart
/// always finds a group that may hold records.
pub(super) fn create_child(
    opts: &NodeOptions,
    log: &Arc<SharedLog>,
    faults: &Arc<Faults>,
    id: u32,
    origin: &Origin,
) -> Result<NodeStorage> {
    let dir = group_dir(opts, id as usize);
    if is_retired(&dir) {
        anyhow::bail!("group {id} was merged away on this node; it is not made again");
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!("{ORIGIN_FILE}.tmp"));
    let path = dir.join(ORIGIN_FILE);
    {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(origin.encode().as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming {}", tmp.display()))?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))?;
    child_storage(log, faults, id)
}

/// Whether the shared log combines the groups' writes
/// (`SharedLog::set_combine_writes`: each group's `Ready` batch staged, the
/// batches of a pass written with one `pwritev` at the sync thread's next
/// sync): 1.09-1.11x the writes/s at 256 groups spread (1.23x with all
/// leaders on one node). It was off for a while: with it on, chaos
/// `grow-and-shrink --groups 1000 --seed 208257` failed on every try (a
/// joining node's group not following its leader for minutes). The cause
/// was not the log but the election admission, which starved the groups
/// of a joining node (now fixed, `AdmissionQueue`); combining changed the
/// timing enough to show it.
const COMBINE_WRITES: bool = true;

/// Opens the shared log of a node hosting many groups, with the damage
/// rule of [`open_storage`]: damage in its synced part makes the node (all
/// its groups) recover from its peers, keeping the valid prefix.
fn open_shared(opts: &NodeOptions, disk_identity: &mut Identity) -> Result<SharedLog> {
    let dir = opts
        .data_dir
        .join(identity::WAL_DIR)
        .join(paxos_wal::LOG_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let wal_options = WalOptions {
        segment_bytes: opts.segment_bytes,
        ..WalOptions::default()
    };
    let remedy = format!(
        "if the node cannot recover by itself, move {} aside (or empty it) and start the node \
         with `paxos-node run --rejoin`: it then catches up from its peers before it votes",
        opts.data_dir.display()
    );
    let (path, offset, reason) = match SharedLog::open(&dir, wal_options.clone()) {
        Ok((log, report)) => {
            tracing::info!(?report, "shared log opened");
            return Ok(log);
        }
        Err(SharedError::Wal(WalError::Corrupted {
            path,
            offset,
            reason,
            ..
        })) => (path, offset, reason),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("opening the shared log in {}; {remedy}", dir.display()))
        }
    };
    tracing::error!(
        file = %path.display(),
        offset,
        %reason,
        "the shared log is damaged where it was synced: entries this node may have \
         acknowledged are lost; keeping the valid prefix and recovering every group from the \
         peers without voting"
    );
    let recovering = Identity {
        standing: Standing::Recovering,
        ..disk_identity.clone()
    };
    identity::write(&opts.data_dir, &recovering).with_context(|| {
        format!(
            "the shared log is damaged in {} at offset {offset} ({reason}), and this node \
             could not record that it must recover; {remedy}",
            path.display()
        )
    })?;
    *disk_identity = recovering;
    let keep = WalOptions {
        recovery: RecoveryMode::KeepValidPrefix,
        ..wal_options
    };
    let (log, report) = SharedLog::open(&dir, keep).with_context(|| {
        format!(
            "the shared log is damaged in {} at offset {offset} ({reason}) and its valid \
             prefix could not be kept; {remedy}",
            path.display()
        )
    })?;
    tracing::warn!(?report, "damaged shared log cut to its valid prefix");
    Ok(log)
}

/// How often the sync thread reclaims the shared log's segments that no
/// group needs any more (it runs between syncs, so never on the loop).
const COMPACT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Segment files the shared log may keep before the node asks the groups
/// that keep the oldest one to let it go (raft-engine's purge): with the
/// default 64 MiB segments, 256 MiB of log. Below it, a group's old entries
/// wait for its own snapshot schedule.
pub(super) const PURGE_ABOVE_SEGMENTS: usize = 4;

/// Reclaims what the groups' prefix truncations freed in the shared log,
/// and returns the groups to ask to snapshot and cut their logs: those that
/// keep the oldest segment, when the log holds more than
/// [`PURGE_ABOVE_SEGMENTS`]. A failure is logged: the segments stay, and
/// the next pass tries again (a failed flush poisons the log, which the
/// next sync reports).
fn compact(log: &SharedLog) -> Vec<usize> {
    match log.compact() {
        Ok(report) => {
            if report.segments_removed > 0 || !report.holders.is_empty() {
                tracing::info!(
                    segments_removed = report.segments_removed,
                    segments = report.segments,
                    held_by = ?report.holders,
                    "shared log compacted"
                );
            }
            if report.segments <= PURGE_ABOVE_SEGMENTS {
                return Vec::new();
            }
            let Some(end) = report.oldest_segment_end else {
                return Vec::new();
            };
            report
                .holders
                .iter()
                .filter(|h| h.lsn < end)
                .filter_map(|h| usize::try_from(h.group).ok())
                .collect()
        }
        Err(e) => {
            tracing::warn!(error = %e, "shared log compaction failed; segments kept");
            Vec::new()
        }
    }
}

/// Sync requests served by one pass of the sync thread, at most.
const MAX_SYNCS_PER_PASS: usize = 64 * 1024;

/// The sync thread's loop: takes every request waiting, syncs each log
/// they name once (requests of groups sharing a log share its sync), and
/// answers each. Ends when the node drops its request channel.
pub(super) fn sync_loop(
    requests: std::sync::mpsc::Receiver<Vec<(usize, SyncId)>>,
    syncers: Vec<Syncer>,
    faults: Arc<Faults>,
    recorder: SyncRecorder,
    done: mpsc::UnboundedSender<Vec<(usize, SyncDone)>>,
    purge: std::sync::mpsc::SyncSender<Vec<usize>>,
) {
    let mut batch: Vec<(usize, SyncId)> = Vec::new();
    let mut last_compaction = Instant::now();
    loop {
        // Idle too, compaction runs every COMPACT_EVERY: a node whose
        // groups stopped writing still reclaims and asks for purges.
        let wait = COMPACT_EVERY
            .saturating_sub(last_compaction.elapsed())
            .max(std::time::Duration::from_millis(1));
        let first = match requests.recv_timeout(wait) {
            Ok(r) => Some(r),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if last_compaction.elapsed() >= COMPACT_EVERY {
            last_compaction = Instant::now();
            for syncer in syncers.iter().take(1) {
                if let Syncer::Shared(log) = syncer {
                    let keepers = compact(log);
                    if !keepers.is_empty() {
                        tracing::info!(groups = ?keepers, "the shared log's oldest segment is kept by these groups; asking them to snapshot and cut their logs");
                        // A full channel: the loop has not taken the last
                        // request yet; the next pass asks again.
                        let _ = purge.try_send(keepers);
                    }
                }
            }
        }
        let Some(first) = first else { continue };
        batch.clear();
        batch.extend(first);
        while batch.len() < MAX_SYNCS_PER_PASS {
            match requests.try_recv() {
                Ok(r) => batch.extend(r),
                Err(_) => break,
            }
        }
        let mut answers: Vec<(usize, SyncDone)> = Vec::with_capacity(batch.len());
        // Each distinct log once, in the order first asked.
        let mut synced: Vec<(usize, Result<(), StorageError>)> = Vec::new();
        for &(group, sync) in &batch {
            // A group made at run time has no entry of its own: every
            // group of a node of many shares the one log.
            let shared = syncers.first().filter(|s| matches!(s, Syncer::Shared(_)));
            let Some(wal) = syncers.get(group).or(shared) else {
                tracing::error!(group, "a sync asked for a group without a log (a bug)");
                continue;
            };
            let key = wal.key();
            let result = match synced.iter().find(|(k, _)| *k == key) {
                Some((_, r)) => r.clone(),
                None => {
                    let started = Instant::now();
                    // Approximate when an inline sync runs meanwhile: its
                    // entries are then counted here too.
                    let before = wal.durable();
                    faults.delay_sync();
                    let r = wal
                        .sync()
                        .map(|after| {
                            let entries = wal.entries(before, after);
                            recorder.record(started.elapsed(), entries);
                        })
                        .map_err(|e| {
                            StorageError::io("the background WAL sync", std::io::Error::other(e))
                        });
                    synced.push((key, r.clone()));
                    r
                }
            };
            answers.push((group, (sync, result)));
        }
        // One message for the pass: the loop takes every group's completion
        // at once.
        if done.send(answers).is_err() {
            return;
        }
    }
}
