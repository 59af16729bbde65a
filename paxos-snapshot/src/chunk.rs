//! What a transfer chunk says about itself: the snapshot it belongs to and
//! the checksum that seals its fields.
//!
//! Chunks travel as `paxos-core`'s [`SnapChunk`] (the wire type); this
//! module owns how a chunk names its snapshot ([`SnapshotId`]) and how its
//! `crc32` is computed, so the sender and the receiver agree on both.

use bytes::Bytes;
use crc32fast::Hasher;
use paxos_core::{SnapChunk, Zxid};

/// Which snapshot a chunk belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotId {
    /// The zxid the snapshot includes up to.
    pub zxid: Zxid,
    /// The file's trailer checksum (covers header and data checksums): two
    /// different files at the same zxid have different fingerprints.
    pub fingerprint: u32,
}

impl SnapshotId {
    /// The snapshot `chunk` names.
    pub fn of(chunk: &SnapChunk) -> SnapshotId {
        SnapshotId {
            zxid: chunk.snapshot_zxid,
            fingerprint: chunk.fingerprint,
        }
    }
}

/// Builds a chunk of `snapshot` and seals it with its checksum.
pub fn seal_chunk(
    snapshot: SnapshotId,
    offset: u64,
    data: Bytes,
    total_len: u64,
    last: bool,
) -> SnapChunk {
    let mut chunk = SnapChunk {
        snapshot_zxid: snapshot.zxid,
        fingerprint: snapshot.fingerprint,
        offset,
        total_len,
        crc32: 0,
        data,
        last,
    };
    chunk.crc32 = chunk_crc(&chunk);
    chunk
}

/// The checksum `chunk`'s fields call for: crc32 over the snapshot id,
/// offset, total length, last flag and data (everything but `crc32`).
pub fn chunk_crc(chunk: &SnapChunk) -> u32 {
    let mut hasher = Hasher::new();
    hasher.update(&chunk.snapshot_zxid.as_u64().to_le_bytes());
    hasher.update(&chunk.fingerprint.to_le_bytes());
    hasher.update(&chunk.offset.to_le_bytes());
    hasher.update(&chunk.total_len.to_le_bytes());
    hasher.update(&[u8::from(chunk.last)]);
    hasher.update(&chunk.data);
    hasher.finalize()
}
