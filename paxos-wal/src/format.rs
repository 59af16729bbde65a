//! The on-disk format: segment header, record framing, and the recovery scan.
//!
//! A segment file is `segment_bytes` long (a multiple of 4 KiB) and starts with
//! a [`SEGMENT_HEADER_BYTES`]-byte header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `PXWALSEG` |
//! | 8 | 4 | format version ([`FORMAT_VERSION`]) |
//! | 12 | 4 | flags (bit 0: the previous-checksum field is set) |
//! | 16 | 8 | segment id (also the file name) |
//! | 24 | 8 | key of the first record |
//! | 32 | 8 | segment size in bytes |
//! | 40 | 4 | CRC of the previous segment's last record |
//! | 44 | 16 | reserved, zero |
//! | 60 | 4 | CRC32 of bytes 0..60 |
//!
//! Records follow, each 8-byte aligned, with a [`RECORD_HEADER_BYTES`]-byte
//! header (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | `len`: bits 0 to 30 hold header + payload bytes (never 0 for a record); bit 31 is the record's *tag* ([`RECORD_TAG_BIT`]) |
//! | 4 | 4 | CRC32 over segment id, the whole `len` field (tag bit included), key, watermark and payload |
//! | 8 | 8 | key (strictly increasing, never 0) |
//! | 16 | 8 | `synced_through`: highest key whose `sync` had returned when this record was written (0: none) |
//!
//! A `len` of zero ends a segment's data. The writer keeps a *marker* there:
//! `len = 0`, a CRC, key 0 and the current durable watermark, so that the last
//! synced batch is also proven durable once the marker reaches the disk.
//!
//! The CRC covers the segment id, so records left in a recycled segment file by
//! an earlier incarnation never validate.
//!
//! # The record tag
//!
//! A record may carry one flag bit for the caller (`paxos-core` marks
//! membership changes with it): bit 31 of `len`. A record is at most a
//! segment long and segments are at most 1 GiB, so bits 30 and 31 of a real
//! length are always zero and the bit costs no byte. An untagged record is
//! byte for byte what earlier builds wrote (same format version, same CRC),
//! so existing logs read unchanged. The CRC is computed over the `len` field
//! as stored, tag bit included: flipping the bit of a written record is a
//! checksum mismatch like any other damage, never a silent change of kind.
//! A marker is never tagged: a `len` field of exactly `RECORD_TAG_BIT` (tag
//! set, length 0) is a bad length, not an end of data.
//!
//! A build from before the tag reads the whole field as the length. A tagged
//! record's length is then 2^31 or more, larger than any segment, so the
//! older build rejects it as a bad length (`BadRecord::BadLength`); it never
//! takes it for an untagged record. Its valid prefix ends there: with later
//! records or a marker proving the log durable past that point (the usual
//! case once the log was synced), its open fails in strict mode
//! (`WalError::Corrupted`) or, with `KeepValidPrefix`, cuts the log there and
//! reports the damaged range; records nothing proves durable are cut as a
//! torn tail and reported. Downgrading over a log that holds tagged records
//! therefore refuses or reports, and never misreads one.

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
/// The bit of a record's `len` field that carries its tag (see the
/// [module docs](self)).
pub const RECORD_TAG_BIT: u32 = 1 << 31;
/// The bits of a record's `len` field that hold its length.
pub const RECORD_LEN_MASK: u32 = !RECORD_TAG_BIT;

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

/// The `len` field of a record of `len` bytes (header included), with the
/// tag bit set when `tagged`.
#[inline]
pub(crate) const fn len_field(len: u32, tagged: bool) -> u32 {
    len | ((tagged as u32) << 31)
}

/// CRC of a record (or, with `len_field == 0`, `key == 0` and no payload, of
/// a marker). `len_field` is the field as stored, tag bit included.
pub(crate) fn record_crc(
    segment_id: u64,
    len_field: u32,
    key: u64,
    watermark: u64,
    payload: &[u8],
) -> u32 {
    record_crc_parts(segment_id, len_field, key, watermark, &[], payload)
}

/// [`record_crc`] of a payload given in two pieces (`prefix` then `body`),
/// as the append path stages them: the same value as over their
/// concatenation.
pub(crate) fn record_crc_parts(
    segment_id: u64,
    len_field: u32,
    key: u64,
    watermark: u64,
    prefix: &[u8],
    payload: &[u8],
) -> u32 {
    let mut fixed = [0u8; 28];
    fixed[0..8].copy_from_slice(&segment_id.to_le_bytes());
    fixed[8..12].copy_from_slice(&len_field.to_le_bytes());
    fixed[12..20].copy_from_slice(&key.to_le_bytes());
    fixed[20..28].copy_from_slice(&watermark.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&fixed);
    h.update(prefix);
    h.update(payload);
    h.finalize()
}

/// Encode a record header into `dst` (at least [`RECORD_HEADER_BYTES`] long);
/// `len_field` is the length with the tag bit, as [`len_field`] makes it.
pub(crate) fn encode_record_header(
    dst: &mut [u8],
    len_field: u32,
    crc: u32,
    key: u64,
    watermark: u64,
) {
    dst[0..4].copy_from_slice(&len_field.to_le_bytes());
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
    /// The `len` field as stored (tag bit included): what the CRC covers.
    pub(crate) field: u32,
    /// The record's length in bytes, header included (the tag bit masked off).
    pub(crate) len: u32,
    /// The tag bit.
    pub(crate) tagged: bool,
    pub(crate) crc: u32,
    pub(crate) key: u64,
    pub(crate) watermark: u64,
}

pub(crate) fn raw_header(b: &[u8], off: usize) -> Option<RawHeader> {
    let h = b.get(off..off.checked_add(RECORD_HEADER_BYTES)?)?;
    let field = u32_at(h, 0);
    Some(RawHeader {
        field,
        len: field & RECORD_LEN_MASK,
        tagged: field & RECORD_TAG_BIT != 0,
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
        tagged: bool,
    },
    /// Something that is neither zero nor a valid record.
    Bad(BadRecord),
}

/// Why a record was rejected by the scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    /// The length (tag bit masked off) is below a header or runs past the
    /// end of the segment.
    #[error("record length {len} is impossible here")]
    BadLength {
        /// The length field as stored, tag bit included.
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
    if h.field == 0 {
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
        return Slot::Bad(BadRecord::BadLength { len: h.field });
    }
    let payload = &b[off + RECORD_HEADER_BYTES..off + len];
    // Over the stored field: a flipped tag bit fails here.
    if record_crc(segment_id, h.field, h.key, h.watermark, payload) != h.crc {
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
        tagged: h.tagged,
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
    /// Keys of the tagged records of the valid prefix, ascending.
    pub tagged_keys: Vec<u64>,
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
        tagged_keys: Vec::new(),
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
                        tagged,
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
                        if tagged {
                            scan.tagged_keys.push(key);
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
        let field = u32_at(bytes, off);
        let crc = u32_at(bytes, off + 4);
        if field == 0 && crc == 0 {
            off += RECORD_ALIGN_BYTES;
            continue;
        }
        let len = field & RECORD_LEN_MASK;
        let plausible = field == 0
            || (len as usize >= RECORD_HEADER_BYTES && len as usize <= bytes.len() - off);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with(keys: &[(u64, u64, &[u8])], size: usize) -> Vec<u8> {
        let tagged: Vec<(u64, u64, bool, &[u8])> =
            keys.iter().map(|&(k, w, p)| (k, w, false, p)).collect();
        segment_with_tags(&tagged, size)
    }

    fn segment_with_tags(keys: &[(u64, u64, bool, &[u8])], size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        let first = keys.first().map_or(1, |k| k.0);
        let h = SegmentHeader {
            segment_id: 7,
            first_key: first,
            segment_bytes: size as u64,
            prev_last_crc: None,
        };
        b[..SEGMENT_HEADER_BYTES].copy_from_slice(&h.encode());
        let mut off = SEGMENT_HEADER_BYTES;
        for &(key, wm, tagged, payload) in keys {
            let len = (RECORD_HEADER_BYTES + payload.len()) as u32;
            let field = len_field(len, tagged);
            let crc = record_crc(7, field, key, wm, payload);
            encode_record_header(&mut b[off..], field, crc, key, wm);
            b[off + RECORD_HEADER_BYTES..off + len as usize].copy_from_slice(payload);
            off += align_up(len as usize);
        }
        b
    }

    #[test]
    fn header_round_trip() {
        let h = SegmentHeader {
            segment_id: 3,
            first_key: 99,
            segment_bytes: 1 << 20,
            prev_last_crc: Some(0xdead),
        };
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        let h2 = SegmentHeader {
            prev_last_crc: None,
            ..h
        };
        assert_eq!(SegmentHeader::decode(&h2.encode()), Ok(h2));
    }

    #[test]
    fn scan_reads_records_and_stops_at_zero() {
        let b = segment_with(&[(1, 0, b"a"), (2, 1, b"hello world"), (5, 2, b"")], 4096);
        let s = scan_segment(&b, 7, None);
        assert_eq!(s.records, 3);
        assert_eq!((s.first_key, s.last_key), (Some(1), Some(5)));
        assert_eq!(s.stop, ScanStop::End);
        assert_eq!(s.max_watermark, 2);
        assert_eq!(s.end_offset, 64 + 32 + 40 + 24);
    }

    #[test]
    fn wrong_segment_id_fails_crc_of_records() {
        let b = segment_with(&[(1, 0, b"a")], 4096);
        let s = scan_segment(&b, 8, None);
        assert!(matches!(
            s.stop,
            ScanStop::BadHeader(HeaderError::WrongSegmentId { .. })
        ));
        assert_eq!(s.records, 0);
        assert_eq!(
            s.records_beyond, 0,
            "a record seeded with another segment id never validates"
        );
    }

    #[test]
    fn beyond_scan_finds_watermark_after_bad_record() {
        let mut b = segment_with(&[(1, 0, b"aaaa"), (2, 1, b"bbbb"), (3, 2, b"cccc")], 4096);
        // Corrupt the payload of key 2.
        b[64 + 32 + 24] ^= 1;
        let s = scan_segment(&b, 7, None);
        assert_eq!(s.records, 1);
        assert_eq!(s.stop, ScanStop::BadRecord(BadRecord::BadCrc));
        assert_eq!(s.records_beyond, 1);
        assert_eq!(s.max_watermark, 2);
    }

    #[test]
    fn marker_watermark_is_read() {
        let mut b = segment_with(&[(1, 0, b"aaaa")], 4096);
        encode_marker(&mut b[96..], 7, 1);
        let s = scan_segment(&b, 7, None);
        assert_eq!(s.marker_watermark, Some(1));
        assert_eq!(s.max_watermark, 1);
    }

    #[test]
    fn tagged_records_scan_with_their_keys_and_untagged_bytes_are_unchanged() {
        let recs: [(u64, u64, bool, &[u8]); 4] = [
            (1, 0, false, b"a"),
            (2, 1, true, b"config"),
            (3, 1, false, b"b"),
            (4, 2, true, b""),
        ];
        let b = segment_with_tags(&recs, 4096);
        let s = scan_segment(&b, 7, None);
        assert_eq!((s.records, s.stop), (4, ScanStop::End));
        assert_eq!(s.tagged_keys, vec![2, 4]);
        assert_eq!(s.end_offset, 64 + 32 + 32 + 32 + 24);
        // The tag is bit 31 of the len field and nothing else: the same
        // records untagged are the bytes an untagged writer produces.
        assert_eq!(u32_at(&b, 64 + 32), RECORD_TAG_BIT | 30);
        let plain: Vec<(u64, u64, &[u8])> = recs.iter().map(|&(k, w, _, p)| (k, w, p)).collect();
        let u = segment_with(&plain, 4096);
        assert_eq!(scan_segment(&u, 7, None).tagged_keys, Vec::<u64>::new());
        let differ: Vec<usize> = (0..b.len()).filter(|&i| b[i] != u[i]).collect();
        // Only the top byte of each tagged len field and the CRCs differ.
        assert!(differ.contains(&(64 + 32 + 3)) && differ.contains(&(64 + 96 + 3)));
        assert!(differ.iter().all(|&i| [64 + 32, 64 + 96]
            .iter()
            .any(|&r| (r + 3..r + 8).contains(&i))));
    }

    #[test]
    fn a_flipped_tag_bit_is_a_checksum_mismatch() {
        for tagged in [false, true] {
            let mut b = segment_with_tags(&[(1, 0, false, b"aaaa"), (2, 1, tagged, b"bbbb")], 4096);
            b[64 + 32 + 3] ^= 0x80;
            let s = scan_segment(&b, 7, None);
            assert_eq!(s.records, 1, "tagged {tagged}");
            assert_eq!(s.stop, ScanStop::BadRecord(BadRecord::BadCrc));
            assert!(s.tagged_keys.is_empty());
        }
    }

    #[test]
    fn a_tagged_empty_length_is_neither_a_marker_nor_a_record() {
        let mut b = segment_with(&[(1, 0, b"aaaa")], 4096);
        encode_marker(&mut b[96..], 7, 1);
        // Set the tag bit on the marker: no valid end of data remains.
        b[96 + 3] |= 0x80;
        let s = scan_segment(&b, 7, None);
        assert_eq!(s.records, 1);
        assert_eq!(
            s.stop,
            ScanStop::BadRecord(BadRecord::BadLength {
                len: RECORD_TAG_BIT
            })
        );
        assert_eq!(s.marker_watermark, None);
    }

    #[test]
    fn key_order_and_prev_key_enforced() {
        let b = segment_with(&[(5, 0, b"a"), (4, 0, b"b")], 4096);
        let s = scan_segment(&b, 7, None);
        assert_eq!(s.records, 1);
        assert_eq!(
            s.stop,
            ScanStop::BadRecord(BadRecord::KeyOrder { key: 4, prev: 5 })
        );
        let s = scan_segment(&b, 7, Some(9));
        assert_eq!(s.records, 0);
    }
}
