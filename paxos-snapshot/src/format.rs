//! The snapshot file format, as streaming encoder and decoder.
//!
//! All integers little-endian.
//!
//! ```text
//! header   magic "PXSNAP\r\n" (8) | version u32 | chunk_bytes u32 | zxid u64
//!          | epoch u32 | voter_count u32 | voters u64 x n
//!          | membership_len u32 | membership (version 2 only) | header_crc u32
//!          membership = paxos_core::Membership::encode (0 bytes: unknown)
//! chunk    len u32 (1..=chunk_bytes) | crc u32 | data (len bytes)
//!          crc = crc32(chunk index u64 | len u32 | data)
//! trailer  0u32 (end of chunks) | "SNTR" u32 | data_bytes u64 | chunk_count u64
//!          | data_crc u32 | trailer_crc u32
//!          data_crc = crc32 of all data bytes in order
//!          trailer_crc = crc32(header_crc u32 | "SNTR" .. data_crc)
//! ```
//!
//! The chunk index inside each chunk's checksum catches reordered or
//! duplicated chunks; the header's checksum inside the trailer's catches a
//! trailer spliced from another file. Nothing is read past the trailer.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use crc32fast::Hasher;
use paxos_core::{Epoch, Membership, NodeId, Zxid};

use crate::error::{Result, SnapshotError};

/// The first 8 bytes of every snapshot file.
pub const MAGIC: [u8; 8] = *b"PXSNAP\r\n";
/// The format version written by this build (2: the header carries the
/// whole membership; version 1 files, voters only, are still read).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Default data bytes per chunk (1 MiB): the writer's and reader's buffer.
pub const DEFAULT_CHUNK_BYTES: u32 = 1 << 20;
/// Largest chunk size a file may declare (bounds the reader's buffer).
pub const MAX_CHUNK_BYTES: u32 = 8 << 20;
/// Largest voter list a header may carry.
pub const MAX_VOTERS: u32 = 4096;
/// Bytes of the trailer, including its leading zero length.
pub const TRAILER_BYTES: u64 = 32;

const TRAILER_MAGIC: u32 = u32::from_le_bytes(*b"SNTR");
const FIXED_HEADER_BYTES: usize = 32;
const FRAME_BYTES: usize = 8;
/// Largest single read into the reader's chunk buffer.
const READ_STEP_BYTES: usize = 1 << 20;

/// What a snapshot is of: the header's contents.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotMeta {
    /// The last zxid whose effect the state includes.
    pub zxid: Zxid,
    /// The replica's current epoch when the snapshot was taken.
    pub epoch: Epoch,
    /// The voters of the configuration in force at `zxid`.
    pub voters: Vec<NodeId>,
    /// The whole configuration in force at `zxid` (voters, observers and
    /// the application's context), when the writer recorded it (files of
    /// format version 1 do not). Its voters are `voters`.
    pub membership: Option<Membership>,
}

/// What the trailer says about a complete snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotSummary {
    /// Bytes of state-machine data.
    pub data_bytes: u64,
    /// Number of chunks.
    pub chunk_count: u64,
    /// crc32 of all data bytes.
    pub data_crc: u32,
    /// The trailer's own checksum (covers the header's too): a fingerprint
    /// of the whole file.
    pub trailer_crc: u32,
    /// Bytes of the whole encoded file.
    pub file_bytes: u64,
}

fn encode_header(meta: &SnapshotMeta, chunk_bytes: u32) -> (Vec<u8>, u32) {
    let mut out = Vec::with_capacity(FIXED_HEADER_BYTES + 8 * meta.voters.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&chunk_bytes.to_le_bytes());
    out.extend_from_slice(&meta.zxid.as_u64().to_le_bytes());
    out.extend_from_slice(&meta.epoch.0.to_le_bytes());
    out.extend_from_slice(&(meta.voters.len() as u32).to_le_bytes());
    for voter in &meta.voters {
        out.extend_from_slice(&voter.0.to_le_bytes());
    }
    let membership = meta
        .membership
        .as_ref()
        .map(Membership::encode)
        .unwrap_or_default();
    out.extend_from_slice(&(membership.len() as u32).to_le_bytes());
    out.extend_from_slice(&membership);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    (out, crc)
}

fn trailer_bytes(header_crc: u32, data_bytes: u64, chunk_count: u64, data_crc: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[4..8].copy_from_slice(&TRAILER_MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&data_bytes.to_le_bytes());
    out[16..24].copy_from_slice(&chunk_count.to_le_bytes());
    out[24..28].copy_from_slice(&data_crc.to_le_bytes());
    let mut hasher = Hasher::new();
    hasher.update(&header_crc.to_le_bytes());
    hasher.update(&out[4..28]);
    out[28..32].copy_from_slice(&hasher.finalize().to_le_bytes());
    out
}

fn chunk_crc(index: u64, data: &[u8]) -> (u32, Hasher) {
    let mut data_hasher = Hasher::new();
    data_hasher.update(data);
    let mut hasher = Hasher::new();
    hasher.update(&index.to_le_bytes());
    hasher.update(&(data.len() as u32).to_le_bytes());
    hasher.combine(&data_hasher);
    (hasher.finalize(), data_hasher)
}

/// Streams a snapshot into any `io::Write`: the header at creation, the
/// data in checksummed chunks as it is written, the trailer on
/// [`finish`](SnapshotEncoder::finish).
///
/// Memory: one chunk buffer (`chunk_bytes` + 8), whatever the snapshot's size.
pub struct SnapshotEncoder<W: Write> {
    inner: W,
    /// Frame header space (8 bytes) followed by up to `chunk_bytes` of data.
    buf: Vec<u8>,
    chunk_bytes: usize,
    header_crc: u32,
    chunk_count: u64,
    data_bytes: u64,
    data_hasher: Hasher,
    file_bytes: u64,
}

impl<W: Write> SnapshotEncoder<W> {
    /// Writes the header of `meta` to `inner`. `chunk_bytes` is clamped to
    /// `1..=MAX_CHUNK_BYTES`; voters beyond [`MAX_VOTERS`] are refused.
    pub fn new(mut inner: W, meta: &SnapshotMeta, chunk_bytes: u32) -> io::Result<Self> {
        if meta.voters.len() > MAX_VOTERS as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "snapshot voter list exceeds MAX_VOTERS",
            ));
        }
        if let Some(m) = &meta.membership {
            m.validate()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            if m.voters != meta.voters {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "snapshot voters differ from its membership's voters",
                ));
            }
        }
        let chunk_bytes = chunk_bytes.clamp(1, MAX_CHUNK_BYTES);
        let (header, header_crc) = encode_header(meta, chunk_bytes);
        inner.write_all(&header)?;
        let mut buf = Vec::with_capacity(FRAME_BYTES + chunk_bytes as usize);
        buf.resize(FRAME_BYTES, 0);
        Ok(SnapshotEncoder {
            inner,
            buf,
            chunk_bytes: chunk_bytes as usize,
            header_crc,
            chunk_count: 0,
            data_bytes: 0,
            data_hasher: Hasher::new(),
            file_bytes: header.len() as u64,
        })
    }

    /// Bytes of state-machine data written so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes + (self.buf.len() - FRAME_BYTES) as u64
    }

    /// The capacity of the internal buffer, in bytes (for memory accounting).
    pub fn buffer_bytes(&self) -> usize {
        self.buf.capacity()
    }

    fn flush_chunk(&mut self) -> io::Result<()> {
        let len = self.buf.len() - FRAME_BYTES;
        if len == 0 {
            return Ok(());
        }
        debug_assert!(len <= self.chunk_bytes, "a chunk never exceeds chunk_bytes");
        let (crc, data_hasher) = chunk_crc(self.chunk_count, &self.buf[FRAME_BYTES..]);
        self.buf[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        self.inner.write_all(&self.buf)?;
        self.data_hasher.combine(&data_hasher);
        self.chunk_count += 1;
        self.data_bytes += len as u64;
        self.file_bytes += self.buf.len() as u64;
        self.buf.truncate(FRAME_BYTES);
        Ok(())
    }

    /// Writes the last chunk and the trailer; returns the inner writer
    /// (not flushed or synced: the caller decides) and the summary.
    pub fn finish(mut self) -> io::Result<(W, SnapshotSummary)> {
        self.flush_chunk()?;
        let data_crc = self.data_hasher.clone().finalize();
        let trailer = trailer_bytes(self.header_crc, self.data_bytes, self.chunk_count, data_crc);
        self.inner.write_all(&trailer)?;
        self.file_bytes += TRAILER_BYTES;
        let summary = SnapshotSummary {
            data_bytes: self.data_bytes,
            chunk_count: self.chunk_count,
            data_crc,
            trailer_crc: u32::from_le_bytes([trailer[28], trailer[29], trailer[30], trailer[31]]),
            file_bytes: self.file_bytes,
        };
        Ok((self.inner, summary))
    }
}

impl<W: Write> Write for SnapshotEncoder<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = FRAME_BYTES + self.chunk_bytes - self.buf.len();
        let take = room.min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == FRAME_BYTES + self.chunk_bytes {
            self.flush_chunk()?;
        }
        Ok(take)
    }

    /// Flushes the inner writer; a partial chunk stays buffered (chunks are
    /// only cut full, so the file does not depend on flush timing).
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Parses the trailer bytes (32) and checks them against `header_crc`.
pub(crate) fn parse_trailer(
    bytes: &[u8; 32],
    header_crc: u32,
) -> std::result::Result<SnapshotSummary, &'static str> {
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let dword = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(b)
    };
    if word(0) != 0 || word(4) != TRAILER_MAGIC {
        return Err("missing trailer marker");
    }
    let data_bytes = dword(8);
    let chunk_count = dword(16);
    let data_crc = word(24);
    let expected = trailer_bytes(header_crc, data_bytes, chunk_count, data_crc);
    if expected[28..32] != bytes[28..32] {
        return Err("trailer checksum mismatch");
    }
    Ok(SnapshotSummary {
        data_bytes,
        chunk_count,
        data_crc,
        trailer_crc: word(28),
        file_bytes: 0,
    })
}

/// Streams a snapshot out of any `io::Read`, verifying as it goes: the
/// header when created, each chunk's checksum before any of its bytes are
/// returned, the trailer (length, count, whole-data checksum) at the end.
///
/// Its `io::Read` returns corruption as `io::ErrorKind::InvalidData`
/// carrying a [`SnapshotError`] (recover it with
/// [`SnapshotError::from_io`]). Memory: one chunk buffer.
pub struct SnapshotReader<R: Read> {
    inner: R,
    file: PathBuf,
    meta: SnapshotMeta,
    chunk_bytes: u32,
    header_crc: u32,
    /// Offset in the file of the next byte to read from `inner`.
    offset: u64,
    /// Holds the current chunk in `buf[..chunk_len]` (the rest is stale).
    buf: Vec<u8>,
    chunk_len: usize,
    pos: usize,
    chunk_count: u64,
    data_bytes: u64,
    data_hasher: Hasher,
    summary: Option<SnapshotSummary>,
    /// A chunk shorter than `chunk_bytes` was read: it must be the last.
    short_seen: bool,
    /// Offset of an error already returned: the stream is unusable after it.
    failed_at: Option<u64>,
}

impl<R: Read> SnapshotReader<R> {
    /// Reads and verifies the header. `file` names the source in errors.
    pub fn new(mut inner: R, file: impl Into<PathBuf>) -> Result<Self> {
        let file = file.into();
        let mut fixed = [0u8; FIXED_HEADER_BYTES];
        read_full(&mut inner, &mut fixed, &file, 0, "header")?;
        if fixed[0..8] != MAGIC {
            return Err(SnapshotError::BadMagic { file });
        }
        let word = |at: usize| {
            u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]])
        };
        let version = word(8);
        if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(SnapshotError::UnsupportedVersion { file, version });
        }
        let chunk_bytes = word(12);
        if chunk_bytes == 0 || chunk_bytes > MAX_CHUNK_BYTES {
            return Err(SnapshotError::BadHeader {
                file,
                offset: 12,
                what: "chunk size out of range",
            });
        }
        let mut zxid = [0u8; 8];
        zxid.copy_from_slice(&fixed[16..24]);
        let zxid = Zxid(u64::from_le_bytes(zxid));
        let epoch = Epoch(word(24));
        let voter_count = word(28);
        if voter_count > MAX_VOTERS {
            return Err(SnapshotError::BadHeader {
                file,
                offset: 28,
                what: "voter count over MAX_VOTERS",
            });
        }
        // Version 1: voters then the checksum; version 2: voters, the
        // membership's length, the membership, then the checksum.
        let mut rest = vec![0u8; voter_count as usize * 8 + 4];
        read_full(
            &mut inner,
            &mut rest,
            &file,
            FIXED_HEADER_BYTES as u64,
            "header",
        )?;
        let voters_end = voter_count as usize * 8;
        let mut membership_bytes = 0;
        if version >= 2 {
            let len_at = voters_end;
            membership_bytes = u32::from_le_bytes([
                rest[len_at],
                rest[len_at + 1],
                rest[len_at + 2],
                rest[len_at + 3],
            ]) as usize;
            if membership_bytes > paxos_core::MAX_ENCODED_BYTES {
                return Err(SnapshotError::BadHeader {
                    file,
                    offset: (FIXED_HEADER_BYTES + len_at) as u64,
                    what: "membership length over the largest valid membership",
                });
            }
            let read_from = rest.len();
            rest.resize(read_from + membership_bytes + 4, 0);
            read_full(
                &mut inner,
                &mut rest[read_from..],
                &file,
                (FIXED_HEADER_BYTES + read_from) as u64,
                "header",
            )?;
        }
        let crc_at = rest.len() - 4;
        let stored_crc = u32::from_le_bytes([
            rest[crc_at],
            rest[crc_at + 1],
            rest[crc_at + 2],
            rest[crc_at + 3],
        ]);
        let mut hasher = Hasher::new();
        hasher.update(&fixed);
        hasher.update(&rest[..crc_at]);
        let header_bytes = (FIXED_HEADER_BYTES + rest.len()) as u64;
        if hasher.finalize() != stored_crc {
            return Err(SnapshotError::HeaderChecksum {
                file,
                offset: header_bytes - 4,
            });
        }
        let membership = if membership_bytes == 0 {
            None
        } else {
            let at = voters_end + 4;
            Some(
                Membership::decode(&rest[at..at + membership_bytes]).map_err(|_| {
                    SnapshotError::BadHeader {
                        file: file.clone(),
                        offset: (FIXED_HEADER_BYTES + at) as u64,
                        what: "the membership does not decode to a valid configuration",
                    }
                })?,
            )
        };
        let voters: Vec<NodeId> = rest[..voters_end]
            .chunks_exact(8)
            .map(|b| {
                let mut v = [0u8; 8];
                v.copy_from_slice(b);
                NodeId(u64::from_le_bytes(v))
            })
            .collect();
        if membership.as_ref().is_some_and(|m| m.voters != voters) {
            return Err(SnapshotError::BadHeader {
                file,
                offset: FIXED_HEADER_BYTES as u64,
                what: "the voters differ from the membership's voters",
            });
        }
        Ok(SnapshotReader {
            inner,
            file,
            meta: SnapshotMeta {
                zxid,
                epoch,
                voters,
                membership,
            },
            chunk_bytes,
            header_crc: stored_crc,
            offset: header_bytes,
            buf: Vec::new(),
            chunk_len: 0,
            pos: 0,
            chunk_count: 0,
            data_bytes: 0,
            data_hasher: Hasher::new(),
            summary: None,
            short_seen: false,
            failed_at: None,
        })
    }

    /// The header's contents.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The chunk size the file declares.
    pub fn chunk_bytes(&self) -> u32 {
        self.chunk_bytes
    }

    /// The capacity of the internal buffer, in bytes (for memory accounting).
    pub fn buffer_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// The header's checksum (the trailer's checksum covers it).
    pub(crate) fn header_crc(&self) -> u32 {
        self.header_crc
    }

    /// Verifies and skips the next chunk; false at the trailer (verified).
    pub(crate) fn skip_chunk(&mut self) -> Result<bool> {
        self.pos = self.chunk_len;
        self.next_chunk()
    }

    /// File offset just past the last fully verified chunk (or the header).
    pub fn verified_offset(&self) -> u64 {
        self.offset
    }

    /// Loads the next chunk into `buf`, or reads the trailer. Returns false
    /// at the end of the data.
    fn next_chunk(&mut self) -> Result<bool> {
        if self.summary.is_some() {
            return Ok(false);
        }
        let frame_at = self.offset;
        let mut frame = [0u8; FRAME_BYTES];
        read_full(&mut self.inner, &mut frame, &self.file, frame_at, "chunk")?;
        let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        if len == 0 {
            let mut trailer = [0u8; 32];
            trailer[..8].copy_from_slice(&frame);
            read_full(
                &mut self.inner,
                &mut trailer[8..],
                &self.file,
                frame_at + 8,
                "trailer",
            )?;
            let bad = |what| SnapshotError::BadTrailer {
                file: self.file.clone(),
                offset: frame_at,
                what,
            };
            let mut summary = parse_trailer(&trailer, self.header_crc).map_err(bad)?;
            if summary.data_bytes != self.data_bytes {
                return Err(bad("data length differs from the data read"));
            }
            if summary.chunk_count != self.chunk_count {
                return Err(bad("chunk count differs from the chunks read"));
            }
            if summary.data_crc != self.data_hasher.clone().finalize() {
                return Err(bad("data checksum mismatch"));
            }
            let end = frame_at + TRAILER_BYTES;
            let mut probe = [0u8; 1];
            let extra = loop {
                match self.inner.read(&mut probe) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(SnapshotError::io("read", self.file.clone(), e)),
                }
            };
            if extra != 0 {
                return Err(SnapshotError::TrailingBytes {
                    file: self.file.clone(),
                    offset: end,
                });
            }
            summary.file_bytes = end;
            self.offset = end;
            self.summary = Some(summary);
            self.chunk_len = 0;
            self.pos = 0;
            return Ok(false);
        }
        if len > self.chunk_bytes {
            return Err(SnapshotError::ChunkTooLarge {
                file: self.file.clone(),
                offset: frame_at,
                index: self.chunk_count,
                len_bytes: len,
                max_bytes: self.chunk_bytes,
            });
        }
        if self.short_seen {
            // The encoder cuts every chunk full but the last: one encoding
            // per content, and a short chunk in the middle means damage.
            return Err(SnapshotError::ShortChunk {
                file: self.file.clone(),
                offset: frame_at,
                index: self.chunk_count - 1,
            });
        }
        let stored_crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        // Read in steps of at most READ_STEP_BYTES, growing the buffer only
        // as needed: a damaged frame declaring a large chunk in a short
        // stream costs at most one step, and a valid chunk is one large read.
        let len = len as usize;
        let mut filled = 0usize;
        while filled < len {
            let step = (len - filled).min(READ_STEP_BYTES);
            if self.buf.len() < filled + step {
                self.buf.resize(filled + step, 0);
            }
            read_full(
                &mut self.inner,
                &mut self.buf[filled..filled + step],
                &self.file,
                frame_at + 8 + filled as u64,
                "chunk",
            )?;
            filled += step;
        }
        self.chunk_len = len;
        let (crc, data_hasher) = chunk_crc(self.chunk_count, &self.buf[..len]);
        if crc != stored_crc {
            return Err(SnapshotError::ChunkChecksum {
                file: self.file.clone(),
                offset: frame_at,
                index: self.chunk_count,
            });
        }
        self.data_hasher.combine(&data_hasher);
        self.short_seen = len < self.chunk_bytes as usize;
        self.chunk_count += 1;
        self.data_bytes += len as u64;
        self.offset = frame_at + 8 + len as u64;
        self.pos = 0;
        Ok(true)
    }

    /// Reads (and verifies) whatever data is left and the trailer; returns
    /// the trailer's summary and the count of data bytes that were left
    /// unread by the caller.
    pub fn finish(mut self) -> Result<(SnapshotSummary, u64)> {
        if let Some(offset) = self.failed_at {
            return Err(SnapshotError::Poisoned {
                file: self.file,
                offset,
            });
        }
        let mut unread = (self.chunk_len - self.pos) as u64;
        while self.next_chunk()? {
            unread += self.chunk_len as u64;
        }
        match self.summary {
            Some(summary) => Ok((summary, unread)),
            None => Err(SnapshotError::Truncated {
                file: self.file,
                offset: self.offset,
                inside: "trailer",
            }),
        }
    }

    /// Reads and verifies the whole snapshot, discarding the data.
    pub fn verify_to_end(self) -> Result<SnapshotSummary> {
        self.finish().map(|(summary, _)| summary)
    }
}

impl<R: Read> Read for SnapshotReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(offset) = self.failed_at {
            return Err(SnapshotError::Poisoned {
                file: self.file.clone(),
                offset,
            }
            .into());
        }
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos == self.chunk_len {
            match self.next_chunk() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(err) => {
                    self.failed_at = Some(self.offset);
                    return Err(err.into());
                }
            }
        }
        let n = out.len().min(self.chunk_len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// `read_exact` that reports a short read as `Truncated` with its offset.
fn read_full<R: Read>(
    inner: &mut R,
    buf: &mut [u8],
    file: &std::path::Path,
    offset: u64,
    inside: &'static str,
) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match inner.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(SnapshotError::Truncated {
                    file: file.to_path_buf(),
                    offset: offset + filled as u64,
                    inside,
                })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SnapshotError::io("read", file, e)),
        }
    }
    Ok(())
}
