//! The record decoder of the build before record tags (paxos-wal's
//! `format.rs` at commit 8abdefd, its unit tests removed), frozen here so
//! the tests can check what an older build does with a log that holds
//! tagged records. Do not change it: it stands for code already deployed.
#![allow(dead_code, unreachable_pub, clippy::all)]

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"PXWALSEG";
/// The format version written by this crate.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment header; the first record starts at this offset.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Size of a record header (and of an end marker).
pub const RECORD_HEADER_BYTES: usize = 24;
/// Alignment of every record.
pub const RECORD_ALIGN_BYTES: usize = 8;

const FLAG_HAS_PREV: u32 = 1;
/// Upper bound on bytes checksummed while looking for records beyond a damaged
/// spot, per segment (keeps a scan of hostile bytes linear).
const BEYOND_SCAN_CRC_BUDGET_BYTES: u64 = 256 << 20;
/// One sparse-index entry per this many bytes of records.
pub(crate) const INDEX_STRIDE_BYTES: usize = 4096;

/// Round `n` up to the record alignment.
pub(crate) const fn align_up(n: usize) -> usize {
    (n + RECORD_ALIGN_BYTES - 1) & !(RECORD_ALIGN_BYTES - 1)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment id (equal to the number in the file name).
    pub segment_id: u64,
    /// Key of the first record written into the segment.
    pub first_key: u64,
    /// The segment's size in bytes when it was created.
    pub segment_bytes: u64,
    /// CRC of the last record of the previous segment, if there was one.
    pub prev_last_crc: Option<u32>,
}

/// Why a segment header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The file is shorter than a header.
    #[error("file of {len} bytes is shorter than a segment header")]
    Short {
        /// Length of the file.
        len: usize,
    },
    /// The magic bytes are wrong.
    #[error("bad magic bytes")]
    BadMagic,
    /// The header's CRC does not match its bytes.
    #[error("header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadCrc {
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over the header bytes.
        computed: u32,
    },
    /// A format version this crate does not read.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u32),
    /// The header names another segment id than the file name.
    #[error("header names segment {found}, file name says {expected}")]
    WrongSegmentId {
        /// Id from the file name.
        expected: u64,
        /// Id in the header.
        found: u64,
    },
    /// Reserved bits or bytes are set, or the segment size is impossible.
    #[error("reserved header field is not zero or segment size is invalid")]
    BadField,
}

impl SegmentHeader {
    /// Encode the header, CRC included.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if self.prev_last_crc.is_some() {
            FLAG_HAS_PREV
        } else {
            0
        };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_key.to_le_bytes());
        b[32..40].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[40..44].copy_from_slice(&self.prev_last_crc.unwrap_or(0).to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decode and verify a header from the start of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < SEGMENT_HEADER_BYTES {
            return Err(HeaderError::Short { len: bytes.len() });
        }
        let b = &bytes[..SEGMENT_HEADER_BYTES];
        let stored = u32_at(b, 60);
        let computed = crc32fast::hash(&b[0..60]);
        if stored != computed {
            return Err(HeaderError::BadCrc { stored, computed });
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        let flags = u32_at(b, 12);
        let segment_bytes = u64_at(b, 32);
        let prev = u32_at(b, 40);
        if flags & !FLAG_HAS_PREV != 0
            || b[44..60].iter().any(|&x| x != 0)
            || (flags & FLAG_HAS_PREV == 0 && prev != 0)
            || segment_bytes < (SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES) as u64
        {
            return Err(HeaderError::BadField);
        }
        Ok(SegmentHeader {
            segment_id: u64_at(b, 16),
            first_key: u64_at(b, 24),
            segment_bytes,
            prev_last_crc: (flags & FLAG_HAS_PREV != 0).then_some(prev),
        })
    }
}

/// CRC of a record (or, with `len == 0`, `key == 0` and no payload, of a marker).
pub(crate) fn record_crc(
    segment_id: u64,
    len: u32,
    key: u64,
    watermark: u64,
    payload: &[u8],
) -> u32 {
    let mut fixed = [0u8; 28];
    fixed[0..8].copy_from_slice(&segment_id.to_le_bytes());
    fixed[8..12].copy_from_slice(&len.to_le_bytes());
    fixed[12..20].copy_from_slice(&key.to_le_bytes());
    fixed[20..28].copy_from_slice(&watermark.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&fixed);
    h.update(payload);
    h.finalize()
}

/// Encode a record header into `dst` (at least [`RECORD_HEADER_BYTES`] long).
pub(crate) fn encode_record_header(dst: &mut [u8], len: u32, crc: u32, key: u64, watermark: u64) {
    dst[0..4].copy_from_slice(&len.to_le_bytes());
    dst[4..8].copy_from_slice(&crc.to_le_bytes());
    dst[8..16].copy_from_slice(&key.to_le_bytes());
    dst[16..24].copy_from_slice(&watermark.to_le_bytes());
}

/// Encode an end marker carrying `watermark` into `dst`.
pub(crate) fn encode_marker(dst: &mut [u8], segment_id: u64, watermark: u64) {
    let crc = if watermark == 0 {
        0
    } else {
        record_crc(segment_id, 0, 0, watermark, &[])
    };
    encode_record_header(dst, 0, crc, 0, watermark);
}

/// A record header read without checking the CRC (for walking data this
/// process wrote or already verified).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawHeader {
    pub(crate) len: u32,
    pub(crate) crc: u32,
    pub(crate) key: u64,
    pub(crate) watermark: u64,
}

pub(crate) fn raw_header(b: &[u8], off: usize) -> Option<RawHeader> {
    let h = b.get(off..off.checked_add(RECORD_HEADER_BYTES)?)?;
    Some(RawHeader {
        len: u32_at(h, 0),
        crc: u32_at(h, 4),
        key: u64_at(h, 8),
        watermark: u64_at(h, 16),
    })
}

/// What a slot of a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// End of data; `marker_watermark` is set when a valid marker sits there.
    End { marker_watermark: Option<u64> },
    /// A valid record.
    Record {
        key: u64,
        watermark: u64,
        crc: u32,
        size: usize,
    },
    /// Something that is neither zero nor a valid record.
    Bad(BadRecord),
}

/// Why a record was rejected by the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    /// The length field is below a header or runs past the end of the segment.
    #[error("record length {len} is impossible here")]
    BadLength {
        /// The length field.
        len: u32,
    },
    /// The CRC does not match.
    #[error("record checksum mismatch")]
    BadCrc,
    /// The watermark is not below the record's own key, or the key is 0.
    #[error("record key {key} / watermark {watermark} inconsistent")]
    BadFields {
        /// The key field.
        key: u64,
        /// The watermark field.
        watermark: u64,
    },
    /// The key does not follow the previous key.
    #[error("record key {key} does not follow previous key {prev}")]
    KeyOrder {
        /// The key field.
        key: u64,
        /// The previous key.
        prev: u64,
    },
    /// The first record's key differs from the header's first key.
    #[error("first record key {key} differs from header first key {header}")]
    FirstKeyMismatch {
        /// The key field.
        key: u64,
        /// The header's first key.
        header: u64,
    },
}

/// Decode the slot at `off` (which must be 8-aligned, at least the header size).
pub(crate) fn read_slot(b: &[u8], off: usize, segment_id: u64) -> Slot {
    let Some(h) = raw_header(b, off) else {
        // Less room than a header: no record can start here.
        return Slot::End {
            marker_watermark: None,
        };
    };
    if h.len == 0 {
        let valid_marker = h.key == 0
            && h.watermark != 0
            && h.crc != 0
            && h.crc == record_crc(segment_id, 0, 0, h.watermark, &[]);
        return Slot::End {
            marker_watermark: valid_marker.then_some(h.watermark),
        };
    }
    let len = h.len as usize;
    if len < RECORD_HEADER_BYTES || len > b.len() - off {
        return Slot::Bad(BadRecord::BadLength { len: h.len });
    }
    let payload = &b[off + RECORD_HEADER_BYTES..off + len];
    if record_crc(segment_id, h.len, h.key, h.watermark, payload) != h.crc {
        return Slot::Bad(BadRecord::BadCrc);
    }
    if h.key == 0 || h.watermark >= h.key {
        return Slot::Bad(BadRecord::BadFields {
            key: h.key,
            watermark: h.watermark,
        });
    }
    Slot::Record {
        key: h.key,
        watermark: h.watermark,
        crc: h.crc,
        size: align_up(len).min(b.len() - off),
    }
}

/// Why the valid prefix of a segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanStop {
    /// A zero length field (the normal end), or too little room for a record.
    End,
    /// The header is invalid: no record of the segment is part of the prefix.
    BadHeader(HeaderError),
    /// A record failed validation at `end_offset`.
    BadRecord(BadRecord),
}

/// The result of scanning one segment's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// The header, if valid.
    pub header: Option<SegmentHeader>,
    /// Number of records in the valid prefix.
    pub records: u64,
    /// First key of the valid prefix.
    pub first_key: Option<u64>,
    /// Last key of the valid prefix.
    pub last_key: Option<u64>,
    /// CRC of the last record of the valid prefix.
    pub last_crc: Option<u32>,
    /// Offset of the last record of the valid prefix.
    pub last_record_offset: Option<usize>,
    /// Offset just past the valid prefix (where the next record would go).
    pub end_offset: usize,
    /// Why the valid prefix ended.
    pub stop: ScanStop,
    /// Watermark of the end marker, if a valid one ends the prefix.
    pub marker_watermark: Option<u64>,
    /// Highest watermark proven by anything valid in the segment: the prefix,
    /// its end marker, and valid records or markers found beyond the prefix.
    pub max_watermark: u64,
    /// Valid records found beyond the end of the valid prefix.
    pub records_beyond: u64,
    /// Offset just past the last valid record or marker found beyond the
    /// prefix (equal to `end_offset` when none).
    pub beyond_end_offset: usize,
    /// Sparse (key, offset) index of the valid prefix, first record included.
    pub(crate) index: Vec<(u64, u32)>,
}

/// Scan a segment's bytes as recovery does: verify the header, walk the valid
/// prefix of records (keys strictly increasing and above `prev_key`), then look
/// beyond the first bad or zero slot for anything valid that proves how far
/// the log was durable.
///
/// Never panics, whatever the bytes; the work is linear in `bytes.len()` (the
/// look-beyond part has a fixed checksum budget). `segment_id` is the id from
/// the file name. This is the function the fuzz target drives.
pub fn scan_segment(bytes: &[u8], segment_id: u64, prev_key: Option<u64>) -> SegmentScan {
    let mut scan = SegmentScan {
        header: None,
        records: 0,
        first_key: None,
        last_key: None,
        last_crc: None,
        last_record_offset: None,
        end_offset: SEGMENT_HEADER_BYTES.min(bytes.len()),
        stop: ScanStop::End,
        marker_watermark: None,
        max_watermark: 0,
        records_beyond: 0,
        beyond_end_offset: SEGMENT_HEADER_BYTES.min(bytes.len()),
        index: Vec::new(),
    };
    let header = SegmentHeader::decode(bytes).and_then(|h| {
        if h.segment_id != segment_id {
            Err(HeaderError::WrongSegmentId {
                expected: segment_id,
                found: h.segment_id,
            })
        } else {
            Ok(h)
        }
    });
    let mut off = SEGMENT_HEADER_BYTES;
    match header {
        Err(e) => {
            scan.stop = ScanStop::BadHeader(e);
            scan.end_offset = 0;
        }
        Ok(h) => {
            scan.header = Some(h);
            let mut prev = prev_key;
            let mut last_indexed: Option<usize> = None;
            loop {
                match read_slot(bytes, off, segment_id) {
                    Slot::End { marker_watermark } => {
                        scan.marker_watermark = marker_watermark;
                        scan.stop = ScanStop::End;
                        break;
                    }
                    Slot::Bad(b) => {
                        scan.stop = ScanStop::BadRecord(b);
                        break;
                    }
                    Slot::Record {
                        key,
                        watermark,
                        crc,
                        size,
                    } => {
                        if scan.records == 0 && key != h.first_key {
                            scan.stop = ScanStop::BadRecord(BadRecord::FirstKeyMismatch {
                                key,
                                header: h.first_key,
                            });
                            break;
                        }
                        if let Some(p) = prev {
                            if key <= p {
                                scan.stop =
                                    ScanStop::BadRecord(BadRecord::KeyOrder { key, prev: p });
                                break;
                            }
                        }
                        if last_indexed.is_none_or(|l| off >= l + INDEX_STRIDE_BYTES) {
                            // Offsets fit u32: segment sizes are capped well below 4 GiB.
                            scan.index.push((key, off as u32));
                            last_indexed = Some(off);
                        }
                        scan.records += 1;
                        scan.first_key.get_or_insert(key);
                        scan.last_key = Some(key);
                        scan.last_crc = Some(crc);
                        scan.last_record_offset = Some(off);
                        scan.max_watermark = scan.max_watermark.max(watermark);
                        prev = Some(key);
                        off += size;
                    }
                }
            }
            scan.end_offset = off.min(bytes.len());
            scan.max_watermark = scan.max_watermark.max(scan.marker_watermark.unwrap_or(0));
        }
    }
    scan.beyond_end_offset = scan.end_offset.max(SEGMENT_HEADER_BYTES.min(bytes.len()));
    scan_beyond(bytes, segment_id, &mut scan);
    scan
}

/// Look for valid records and markers after the valid prefix, 8-byte step by
/// step, to learn the highest proven-durable watermark.
fn scan_beyond(bytes: &[u8], segment_id: u64, scan: &mut SegmentScan) {
    let start = if scan.end_offset < SEGMENT_HEADER_BYTES {
        SEGMENT_HEADER_BYTES
    } else {
        // The slot at end_offset was already examined.
        scan.end_offset + RECORD_ALIGN_BYTES
    };
    let mut off = start;
    let mut budget = BEYOND_SCAN_CRC_BUDGET_BYTES;
    while off + RECORD_HEADER_BYTES <= bytes.len() {
        let len = u32_at(bytes, off);
        let crc = u32_at(bytes, off + 4);
        if len == 0 && crc == 0 {
            off += RECORD_ALIGN_BYTES;
            continue;
        }
        let plausible =
            len == 0 || (len as usize >= RECORD_HEADER_BYTES && len as usize <= bytes.len() - off);
        if !plausible || budget < u64::from(len) + RECORD_HEADER_BYTES as u64 {
            off += RECORD_ALIGN_BYTES;
            continue;
        }
        budget -= u64::from(len) + RECORD_HEADER_BYTES as u64;
        match read_slot(bytes, off, segment_id) {
            Slot::Record {
                watermark, size, ..
            } => {
                scan.records_beyond += 1;
                scan.max_watermark = scan.max_watermark.max(watermark);
                scan.beyond_end_offset = scan.beyond_end_offset.max(off + size);
                off += size;
            }
            Slot::End {
                marker_watermark: Some(w),
            } => {
                scan.max_watermark = scan.max_watermark.max(w);
                scan.beyond_end_offset = scan.beyond_end_offset.max(off + RECORD_HEADER_BYTES);
                off += RECORD_HEADER_BYTES;
            }
            _ => off += RECORD_ALIGN_BYTES,
        }
    }
    debug_assert!(
        scan.beyond_end_offset <= bytes.len().max(SEGMENT_HEADER_BYTES),
        "beyond end within segment"
    );
}
