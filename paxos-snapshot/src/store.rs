//! Snapshot files on disk: crash-safe creation and a store over a directory.

use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use paxos_core::{Epoch, NodeId, StateMachine, Zxid};

use crate::error::{Result, SnapshotError};
use crate::format::{
    SnapshotEncoder, SnapshotMeta, SnapshotReader, SnapshotSummary, DEFAULT_CHUNK_BYTES,
};

/// Read buffer for snapshot files: frames are small reads served from it;
/// most of each data chunk bypasses it.
const READ_BUFFER_BYTES: usize = 64 << 10;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A snapshot file in a [`SnapshotStore`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoredSnapshot {
    /// The zxid the snapshot includes up to (from its file name).
    pub zxid: Zxid,
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub file_bytes: u64,
}

/// The file name of the snapshot at `zxid`.
pub fn snapshot_file_name(zxid: Zxid) -> String {
    format!("snap-{:016x}.pxs", zxid.as_u64())
}

fn parse_snapshot_file_name(name: &str) -> Option<Zxid> {
    let hex = name.strip_prefix("snap-")?.strip_suffix(".pxs")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(Zxid)
}

/// Fsyncs a directory so a rename or unlink in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SnapshotError::io("fsync directory", dir, e))
}

/// Writes one snapshot file crash-safely: data goes to a temporary file in
/// the target directory; [`finish`](SnapshotWriter::finish) writes the
/// trailer, fsyncs the file, renames it to its final name and fsyncs the
/// directory. A crash at any point leaves either the old set of snapshots
/// or the new one, never a torn file under a snapshot name. Dropping an
/// unfinished writer deletes the temporary file.
///
/// It is an `io::Write`, so `StateMachine::snapshot` writes straight into
/// it; memory is one chunk buffer.
pub struct SnapshotWriter {
    encoder: Option<SnapshotEncoder<File>>,
    temp: PathBuf,
    dir: PathBuf,
    zxid: Zxid,
}

impl SnapshotWriter {
    /// Starts a snapshot of `meta` in `dir` with chunks of `chunk_bytes`.
    pub fn create(dir: &Path, meta: &SnapshotMeta, chunk_bytes: u32) -> Result<Self> {
        let temp = dir.join(format!(
            ".snap-{:016x}.{}.{}.tmp",
            meta.zxid.as_u64(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create(&temp).map_err(|e| SnapshotError::io("create", &temp, e))?;
        let encoder = match SnapshotEncoder::new(file, meta, chunk_bytes) {
            Ok(encoder) => encoder,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(SnapshotError::io("write header", &temp, e));
            }
        };
        tracing::debug!(zxid = ?meta.zxid, temp = %temp.display(), "snapshot write started");
        Ok(SnapshotWriter {
            encoder: Some(encoder),
            temp,
            dir: dir.to_path_buf(),
            zxid: meta.zxid,
        })
    }

    /// The internal buffer's size in bytes.
    pub fn buffer_bytes(&self) -> usize {
        self.encoder.as_ref().map_or(0, |e| e.buffer_bytes())
    }

    /// Ends the snapshot and makes it durable under its final name.
    pub fn finish(mut self) -> Result<StoredSnapshot> {
        let Some(encoder) = self.encoder.take() else {
            unreachable_finished()
        };
        let (file, summary) = encoder
            .finish()
            .map_err(|e| SnapshotError::io("write", &self.temp, e))?;
        file.sync_all()
            .map_err(|e| SnapshotError::io("fsync", &self.temp, e))?;
        drop(file);
        let path = self.dir.join(snapshot_file_name(self.zxid));
        fs::rename(&self.temp, &path).map_err(|e| SnapshotError::io("rename", &self.temp, e))?;
        // From here the temporary name is gone: nothing left to clean up.
        self.temp = PathBuf::new();
        sync_dir(&self.dir)?;
        tracing::info!(
            zxid = ?self.zxid,
            path = %path.display(),
            file_bytes = summary.file_bytes,
            "snapshot written"
        );
        Ok(StoredSnapshot {
            zxid: self.zxid,
            path,
            file_bytes: summary.file_bytes,
        })
    }
}

fn unreachable_finished() -> ! {
    panic!("invariant: a SnapshotWriter holds its encoder until finish consumes it")
}

impl Write for SnapshotWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.encoder.as_mut() {
            Some(encoder) => encoder.write(data),
            None => unreachable_finished(),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.encoder.as_mut() {
            Some(encoder) => encoder.flush(),
            None => unreachable_finished(),
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        if self.encoder.is_some() && !self.temp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Writes `sm`'s state into `writer` and finishes it (durable on return).
pub fn write_state_machine(
    sm: &dyn StateMachine,
    mut writer: SnapshotWriter,
) -> Result<StoredSnapshot> {
    let zxid = writer.zxid;
    sm.snapshot(&mut writer)
        .map_err(|source| SnapshotError::StateMachine {
            op: "snapshot",
            zxid,
            source,
        })?;
    writer.finish()
}

/// Restores `sm` from `reader`, then checks that the state machine read
/// the whole snapshot and that the trailer verifies.
pub fn restore_state_machine<R: io::Read>(
    sm: &mut dyn StateMachine,
    mut reader: SnapshotReader<R>,
    file: &Path,
) -> Result<SnapshotMeta> {
    let meta = reader.meta().clone();
    sm.restore(meta.zxid, &mut reader).map_err(|err| {
        let is_ours = err
            .get_ref()
            .is_some_and(|inner| inner.is::<SnapshotError>());
        if is_ours {
            SnapshotError::from_io(err, "read", file)
        } else {
            SnapshotError::StateMachine {
                op: "restore",
                zxid: meta.zxid,
                source: err,
            }
        }
    })?;
    let (_, unread_bytes) = reader.finish()?;
    if unread_bytes != 0 {
        return Err(SnapshotError::Unconsumed {
            file: file.to_path_buf(),
            unread_bytes,
        });
    }
    Ok(meta)
}

/// The snapshots of one replica, in one directory.
///
/// Files are named `snap-<zxid as 16 hex digits>.pxs`; temporary files
/// (`.snap-*.tmp`, left by a crash mid-write) are deleted on open;
/// partial transfers (`.recv-*.part`) are left for
/// [`SnapshotReceiver`](crate::SnapshotReceiver) to resume.
#[derive(Clone, Debug)]
pub struct SnapshotStore {
    dir: PathBuf,
    chunk_bytes: u32,
}

impl SnapshotStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| SnapshotError::io("create directory", &dir, e))?;
        let entries = fs::read_dir(&dir).map_err(|e| SnapshotError::io("list", &dir, e))?;
        let mut removed = 0usize;
        for entry in entries {
            let entry = entry.map_err(|e| SnapshotError::io("list", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".snap-") && name.ends_with(".tmp") {
                fs::remove_file(entry.path())
                    .map_err(|e| SnapshotError::io("remove", entry.path(), e))?;
                removed += 1;
            }
        }
        if removed > 0 {
            sync_dir(&dir)?;
            tracing::info!(dir = %dir.display(), removed, "removed unfinished snapshot files");
        }
        Ok(SnapshotStore {
            dir,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
        })
    }

    /// Sets the chunk size of snapshots written from now on.
    pub fn with_chunk_bytes(mut self, chunk_bytes: u32) -> Self {
        self.chunk_bytes = chunk_bytes;
        self
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path a snapshot at `zxid` has in this store.
    pub fn path_of(&self, zxid: Zxid) -> PathBuf {
        self.dir.join(snapshot_file_name(zxid))
    }

    /// Starts writing a snapshot of `meta`.
    pub fn create(&self, meta: &SnapshotMeta) -> Result<SnapshotWriter> {
        SnapshotWriter::create(&self.dir, meta, self.chunk_bytes)
    }

    /// Takes a snapshot of `sm` (at `sm.applied()`) and stores it.
    pub fn save(
        &self,
        sm: &dyn StateMachine,
        epoch: Epoch,
        voters: &[NodeId],
    ) -> Result<StoredSnapshot> {
        let meta = SnapshotMeta {
            zxid: sm.applied(),
            epoch,
            voters: voters.to_vec(),
            membership: None,
        };
        write_state_machine(sm, self.create(&meta)?)
    }

    /// Every snapshot in the store, oldest first.
    pub fn list(&self) -> Result<Vec<StoredSnapshot>> {
        let entries =
            fs::read_dir(&self.dir).map_err(|e| SnapshotError::io("list", &self.dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SnapshotError::io("list", &self.dir, e))?;
            let name = entry.file_name();
            let Some(zxid) = parse_snapshot_file_name(&name.to_string_lossy()) else {
                continue;
            };
            let file_bytes = entry
                .metadata()
                .map_err(|e| SnapshotError::io("stat", entry.path(), e))?
                .len();
            out.push(StoredSnapshot {
                zxid,
                path: entry.path(),
                file_bytes,
            });
        }
        out.sort_by_key(|s| s.zxid);
        Ok(out)
    }

    /// The newest snapshot, if any.
    pub fn latest(&self) -> Result<Option<StoredSnapshot>> {
        Ok(self.list()?.pop())
    }

    /// How far the log may be cut: every entry up to the newest snapshot's
    /// zxid is in that snapshot, so paxos-core's cleanup and paxos-wal's
    /// prefix truncation may drop them. `None`: no snapshot, keep the log.
    pub fn log_cut_point(&self) -> Result<Option<Zxid>> {
        Ok(self.latest()?.map(|s| s.zxid))
    }

    /// Opens the snapshot at `zxid` for streaming (header verified).
    pub fn open_reader(&self, zxid: Zxid) -> Result<SnapshotReader<BufReader<File>>> {
        let path = self.path_of(zxid);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SnapshotError::NotFound {
                    dir: self.dir.clone(),
                    zxid,
                })
            }
            Err(e) => return Err(SnapshotError::io("open", &path, e)),
        };
        let reader = SnapshotReader::new(BufReader::with_capacity(READ_BUFFER_BYTES, file), &path)?;
        if reader.meta().zxid != zxid {
            return Err(SnapshotError::BadHeader {
                file: path,
                offset: 16,
                what: "header zxid differs from the file name",
            });
        }
        Ok(reader)
    }

    /// Reads the whole snapshot at `zxid` and checks every checksum.
    pub fn verify(&self, zxid: Zxid) -> Result<SnapshotSummary> {
        self.open_reader(zxid)?.verify_to_end()
    }

    /// Restores `sm` from the snapshot at `zxid`.
    pub fn restore(&self, zxid: Zxid, sm: &mut dyn StateMachine) -> Result<SnapshotMeta> {
        let reader = self.open_reader(zxid)?;
        let meta = restore_state_machine(sm, reader, &self.path_of(zxid))?;
        tracing::info!(zxid = ?zxid, "state machine restored from snapshot");
        Ok(meta)
    }

    /// Keeps the newest `keep` snapshots (at least 1) and deletes the
    /// older ones; returns what was deleted.
    pub fn retain(&self, keep: usize) -> Result<Vec<StoredSnapshot>> {
        let keep = keep.max(1);
        let mut all = self.list()?;
        let cut = all.len().saturating_sub(keep);
        let old: Vec<StoredSnapshot> = all.drain(..cut).collect();
        for snapshot in &old {
            fs::remove_file(&snapshot.path)
                .map_err(|e| SnapshotError::io("remove", &snapshot.path, e))?;
        }
        if !old.is_empty() {
            sync_dir(&self.dir)?;
            tracing::info!(
                removed = old.len(),
                kept = all.len(),
                "old snapshots removed"
            );
        }
        Ok(old)
    }
}
