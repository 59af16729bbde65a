//! Shipping a snapshot file from the leader to a follower in bounded chunks.
//!
//! The leader's [`SnapshotSender`] cuts a stored snapshot file into
//! `paxos-core`'s wire chunks ([`SnapChunk`], sealed by [`seal_chunk`])
//! of at most `max_chunk_bytes`, which its SNAP messages carry as they
//! are. The follower's
//! [`SnapshotReceiver`] appends them to a partial file, refusing any chunk
//! that is corrupt, leaves a gap or is from another snapshot, reports the
//! offset to resume from after a reconnect (or a restart: the partial file
//! is re-verified chunk by chunk), takes a resumed stream that starts at or
//! before that offset (bytes it already holds are skipped), and installs
//! the finished file
//! atomically: whole-file verification, rename, directory fsync, then
//! restore into the state machine. A refused chunk changes nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use paxos_core::{SnapChunk, StateMachine, Zxid};

use crate::chunk::{chunk_crc, seal_chunk, SnapshotId};
use crate::error::{Result, SnapshotError};
use crate::format::{parse_trailer, SnapshotMeta, SnapshotReader, TRAILER_BYTES};
use crate::store::{sync_dir, SnapshotStore, StoredSnapshot};

/// Reads the identity of a snapshot file: its header (verified) and trailer
/// (checked against the header).
pub fn snapshot_identity(path: &Path) -> Result<(SnapshotId, SnapshotMeta, u64)> {
    let mut file = File::open(path).map_err(|e| SnapshotError::io("open", path, e))?;
    let file_bytes = file
        .metadata()
        .map_err(|e| SnapshotError::io("stat", path, e))?
        .len();
    let reader = SnapshotReader::new(BufReader::new(&mut file), path)?;
    let meta = reader.meta().clone();
    let header_bytes = reader.verified_offset();
    let header_crc = reader.header_crc();
    drop(reader);
    if file_bytes < header_bytes + TRAILER_BYTES {
        return Err(SnapshotError::Truncated {
            file: path.to_path_buf(),
            offset: file_bytes,
            inside: "trailer",
        });
    }
    let trailer_at = file_bytes - TRAILER_BYTES;
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    file.seek(SeekFrom::Start(trailer_at))
        .and_then(|_| std::io::Read::read_exact(&mut file, &mut trailer))
        .map_err(|e| SnapshotError::io("read trailer", path, e))?;
    let summary =
        parse_trailer(&trailer, header_crc).map_err(|what| SnapshotError::BadTrailer {
            file: path.to_path_buf(),
            offset: trailer_at,
            what,
        })?;
    let id = SnapshotId {
        zxid: meta.zxid,
        fingerprint: summary.trailer_crc,
    };
    Ok((id, meta, file_bytes))
}

/// The leader's side: cuts a snapshot file into chunks.
pub struct SnapshotSender {
    file: File,
    path: PathBuf,
    id: SnapshotId,
    total_bytes: u64,
    max_chunk_bytes: u32,
    next_offset: u64,
}

impl SnapshotSender {
    /// Opens the snapshot file at `path`; chunks carry at most
    /// `max_chunk_bytes` (at least 1).
    pub fn open(path: &Path, max_chunk_bytes: u32) -> Result<Self> {
        let (id, _, total_bytes) = snapshot_identity(path)?;
        let file = File::open(path).map_err(|e| SnapshotError::io("open", path, e))?;
        Ok(SnapshotSender {
            file,
            path: path.to_path_buf(),
            id,
            total_bytes,
            max_chunk_bytes: max_chunk_bytes.max(1),
            next_offset: 0,
        })
    }

    /// The snapshot being sent.
    pub fn id(&self) -> SnapshotId {
        self.id
    }

    /// Length of the file.
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Continues from `offset` (what the receiver asked for after a
    /// reconnect), clamped to the file's length.
    pub fn resume_from(&mut self, offset: u64) {
        self.next_offset = offset.min(self.total_bytes);
    }

    /// The chunk starting at `offset`.
    pub fn chunk_at(&self, offset: u64) -> Result<SnapChunk> {
        if offset >= self.total_bytes {
            return Err(SnapshotError::BadChunkBounds {
                snapshot: self.id,
                offset,
                len_bytes: 0,
                what: "starts past the end of the snapshot",
            });
        }
        let len = (self.total_bytes - offset).min(u64::from(self.max_chunk_bytes));
        let mut data = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut data, offset)
            .map_err(|e| SnapshotError::io("read", &self.path, e))?;
        let last = offset + len == self.total_bytes;
        Ok(seal_chunk(
            self.id,
            offset,
            Bytes::from(data),
            self.total_bytes,
            last,
        ))
    }

    /// The next chunk, or `None` when the whole file has been produced.
    pub fn next_chunk(&mut self) -> Result<Option<SnapChunk>> {
        if self.next_offset >= self.total_bytes {
            return Ok(None);
        }
        let chunk = self.chunk_at(self.next_offset)?;
        self.next_offset += chunk.data.len() as u64;
        Ok(Some(chunk))
    }
}

/// What the receiver needs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Progress {
    /// More chunks are needed, starting at this offset.
    NeedMore {
        /// The offset to ask the leader for.
        next_offset: u64,
    },
    /// Every byte of the file is in (written, not yet synced: a GiB takes
    /// seconds, so the sync is left to [`install`](SnapshotReceiver::install),
    /// which callers run off their event loop): call `install`.
    Complete,
}

struct Partial {
    id: SnapshotId,
    total_bytes: u64,
    path: PathBuf,
    file: File,
    received: u64,
}

/// The follower's side: assembles chunks into a file and installs it.
pub struct SnapshotReceiver {
    store: SnapshotStore,
    partial: Option<Partial>,
}

fn partial_name(id: &SnapshotId, total_bytes: u64) -> String {
    format!(
        ".recv-{:016x}-{:08x}-{}.part",
        id.zxid.as_u64(),
        id.fingerprint,
        total_bytes
    )
}

fn parse_partial_name(name: &str) -> Option<(SnapshotId, u64)> {
    let rest = name.strip_prefix(".recv-")?.strip_suffix(".part")?;
    let mut parts = rest.splitn(3, '-');
    let zxid = u64::from_str_radix(parts.next()?, 16).ok()?;
    let fingerprint = u32::from_str_radix(parts.next()?, 16).ok()?;
    let total_bytes = parts.next()?.parse().ok()?;
    Some((
        SnapshotId {
            zxid: Zxid(zxid),
            fingerprint,
        },
        total_bytes,
    ))
}

/// The offset up to which a partial snapshot file is made of verified
/// chunks (0 if not even the header verifies).
fn verified_prefix(path: &Path) -> Result<u64> {
    let file = File::open(path).map_err(|e| SnapshotError::io("open", path, e))?;
    let Ok(mut reader) = SnapshotReader::new(BufReader::new(file), path) else {
        return Ok(0);
    };
    loop {
        match reader.skip_chunk() {
            Ok(true) => {}
            Ok(false) => return Ok(reader.verified_offset()),
            Err(SnapshotError::Io { op, file, source }) if op != "read" => {
                return Err(SnapshotError::Io { op, file, source })
            }
            Err(_) => return Ok(reader.verified_offset()),
        }
    }
}

impl SnapshotReceiver {
    /// A receiver that installs into `store`. If a partial transfer was left
    /// in the store's directory (a restart mid-transfer), it is resumed from
    /// the end of its last verified chunk; other partial files are deleted.
    pub fn open(store: SnapshotStore) -> Result<Self> {
        let dir = store.dir().to_path_buf();
        let entries = fs::read_dir(&dir).map_err(|e| SnapshotError::io("list", &dir, e))?;
        let mut found: Vec<(SnapshotId, u64, PathBuf)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SnapshotError::io("list", &dir, e))?;
            if let Some((id, total)) = parse_partial_name(&entry.file_name().to_string_lossy()) {
                found.push((id, total, entry.path()));
            }
        }
        found.sort_by_key(|(id, _, _)| id.zxid);
        let newest = found.pop();
        for (_, _, path) in &found {
            fs::remove_file(path).map_err(|e| SnapshotError::io("remove", path, e))?;
        }
        let mut receiver = SnapshotReceiver {
            store,
            partial: None,
        };
        if let Some((id, total_bytes, path)) = newest {
            let good = verified_prefix(&path)?.min(total_bytes);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| SnapshotError::io("open", &path, e))?;
            file.set_len(good)
                .map_err(|e| SnapshotError::io("truncate", &path, e))?;
            tracing::info!(snapshot = ?id, resume_offset = good, "resuming snapshot transfer");
            receiver.partial = Some(Partial {
                id,
                total_bytes,
                path,
                file,
                received: good,
            });
        }
        Ok(receiver)
    }

    /// The snapshot being received and its total length, if any.
    pub fn in_progress(&self) -> Option<(SnapshotId, u64)> {
        self.partial.as_ref().map(|p| (p.id, p.total_bytes))
    }

    /// The offset to ask the leader for (0 when nothing is in progress).
    pub fn next_offset(&self) -> u64 {
        self.partial.as_ref().map_or(0, |p| p.received)
    }

    /// Takes one chunk. A refused chunk (error) leaves the receiver and the
    /// partial file as they were.
    ///
    /// A chunk must start at or before [`next_offset`](Self::next_offset)
    /// (a later start would leave a gap: [`SnapshotError::OutOfOrder`]). One
    /// that starts before it is part of a resumed or repeated stream of the
    /// same snapshot: the bytes already held are skipped, the rest
    /// appended, and a chunk wholly held changes nothing.
    pub fn accept(&mut self, chunk: &SnapChunk) -> Result<Progress> {
        let id = SnapshotId::of(chunk);
        if chunk_crc(chunk) != chunk.crc32 {
            return Err(SnapshotError::TransferChecksum {
                snapshot: id,
                offset: chunk.offset,
            });
        }
        if let Some(p) = &self.partial {
            if p.id != id || p.total_bytes != chunk.total_len {
                return Err(SnapshotError::ForeignChunk {
                    expected: p.id,
                    got: id,
                    offset: chunk.offset,
                });
            }
        }
        let expected = self.next_offset();
        if chunk.offset > expected {
            return Err(SnapshotError::OutOfOrder {
                snapshot: id,
                expected,
                got: chunk.offset,
            });
        }
        let len = chunk.data.len() as u64;
        let end = chunk.offset.checked_add(len);
        let bounds = |what| SnapshotError::BadChunkBounds {
            snapshot: id,
            offset: chunk.offset,
            len_bytes: len,
            what,
        };
        let Some(end) = end.filter(|end| *end <= chunk.total_len) else {
            return Err(bounds("runs past the end of the snapshot"));
        };
        if len == 0 {
            return Err(bounds("is empty"));
        }
        if chunk.last != (end == chunk.total_len) {
            return Err(bounds("disagrees with its last flag"));
        }
        if end <= expected {
            // Wholly held already (a repeated chunk of a resumed stream).
            return Ok(if expected == chunk.total_len {
                Progress::Complete
            } else {
                Progress::NeedMore {
                    next_offset: expected,
                }
            });
        }
        // Bytes before `expected` are held: write only the rest.
        let skip = (expected - chunk.offset) as usize;
        if self.partial.is_none() {
            let path = self.store.dir().join(partial_name(&id, chunk.total_len));
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(|e| SnapshotError::io("create", &path, e))?;
            tracing::info!(snapshot = ?id, total_bytes = chunk.total_len, "snapshot transfer started");
            self.partial = Some(Partial {
                id,
                total_bytes: chunk.total_len,
                path,
                file,
                received: 0,
            });
        }
        let Some(p) = self.partial.as_mut() else {
            unreachable_partial()
        };
        p.file
            .write_all_at(&chunk.data[skip..], expected)
            .map_err(|e| SnapshotError::io("write", &p.path, e))?;
        p.received = end;
        if chunk.last {
            Ok(Progress::Complete)
        } else {
            Ok(Progress::NeedMore { next_offset: end })
        }
    }

    /// Drops the transfer in progress and its partial file.
    pub fn abort(&mut self) -> Result<()> {
        if let Some(p) = self.partial.take() {
            drop(p.file);
            fs::remove_file(&p.path).map_err(|e| SnapshotError::io("remove", &p.path, e))?;
            tracing::info!(snapshot = ?p.id, "snapshot transfer aborted");
        }
        Ok(())
    }

    /// Syncs the complete file, verifies it (every checksum, and that it is
    /// the announced snapshot), moves it into the store under its final
    /// name, fsyncs the directory, and restores `sm` from it. Each step
    /// reads or writes the whole file: run it off any event loop.
    ///
    /// If verification fails the partial file is deleted, nothing is
    /// installed and `sm` is untouched: the follower keeps its previous
    /// state and must ask for the snapshot again. A failure of `sm.restore`
    /// itself (after verification) is returned as
    /// [`SnapshotError::StateMachine`]; the file stays installed.
    pub fn install(&mut self, sm: &mut dyn StateMachine) -> Result<StoredSnapshot> {
        let Some(p) = self.partial.as_ref() else {
            return Err(SnapshotError::NothingReceived);
        };
        if p.received != p.total_bytes {
            return Err(SnapshotError::Incomplete {
                snapshot: p.id,
                received_bytes: p.received,
                total_bytes: p.total_bytes,
            });
        }
        p.file
            .sync_all()
            .map_err(|e| SnapshotError::io("fsync", &p.path, e))?;
        if let Err(err) = self.verify_partial() {
            tracing::warn!(error = %err, "received snapshot failed verification; discarded");
            self.abort()?;
            return Err(err);
        }
        let Some(p) = self.partial.take() else {
            unreachable_partial()
        };
        drop(p.file);
        let path = self.store.path_of(p.id.zxid);
        fs::rename(&p.path, &path).map_err(|e| SnapshotError::io("rename", &p.path, e))?;
        sync_dir(self.store.dir())?;
        tracing::info!(snapshot = ?p.id, path = %path.display(), "snapshot installed");
        self.store.restore(p.id.zxid, sm)?;
        Ok(StoredSnapshot {
            zxid: p.id.zxid,
            path,
            file_bytes: p.total_bytes,
        })
    }

    fn verify_partial(&self) -> Result<()> {
        let Some(p) = self.partial.as_ref() else {
            unreachable_partial()
        };
        let file = File::open(&p.path).map_err(|e| SnapshotError::io("open", &p.path, e))?;
        let reader = SnapshotReader::new(BufReader::with_capacity(64 << 10, file), &p.path)?;
        let zxid = reader.meta().zxid;
        let summary = reader.verify_to_end()?;
        let mismatch = |what| SnapshotError::IdentityMismatch {
            snapshot: p.id,
            file: p.path.clone(),
            what,
        };
        if zxid != p.id.zxid {
            return Err(mismatch("header zxid differs"));
        }
        if summary.trailer_crc != p.id.fingerprint {
            return Err(mismatch("fingerprint differs"));
        }
        if summary.file_bytes != p.total_bytes {
            return Err(mismatch("length differs"));
        }
        Ok(())
    }
}

fn unreachable_partial() -> ! {
    panic!("invariant: a transfer is in progress here")
}
