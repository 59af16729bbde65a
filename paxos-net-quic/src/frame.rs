//! The wire format: stream headers and length-prefixed frames.
//!
//! Every unidirectional stream starts with a fixed [`StreamHeader`]
//! ([`HEADER_BYTES`] bytes): the magic `PXQ1`, a [`StreamKind`], three zero
//! bytes and the sender's id (u64, big endian).
//!
//! - A [`StreamKind::Control`] stream then carries frames, each a u32 big
//!   endian length followed by that many bytes, until the sender finishes it.
//! - A [`StreamKind::Bulk`] stream carries exactly one payload: a u64 big
//!   endian length, that many bytes, then the end of the stream.
//!
//! Lengths are checked against the configured maximum before any buffer is
//! reserved for the body, so a hostile length costs nothing.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The magic at the start of every stream.
pub const MAGIC: [u8; 4] = *b"PXQ1";
/// Size of a [`StreamHeader`] on the wire.
pub const HEADER_BYTES: usize = 16;
/// Size of a control frame's length prefix.
pub const FRAME_PREFIX_BYTES: usize = 4;
/// Size of a bulk payload's length prefix.
pub const BULK_PREFIX_BYTES: usize = 8;

/// What a unidirectional stream carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// The single long-lived ordered stream of small frames (one per direction).
    Control,
    /// One bulk payload (snapshot chunk, catch-up batch).
    Bulk,
}

impl StreamKind {
    fn to_byte(self) -> u8 {
        match self {
            StreamKind::Control => 1,
            StreamKind::Bulk => 2,
        }
    }
}

/// The fixed header that opens every stream; for the control stream it is the
/// sender's hello: the id it claims, checked against its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHeader {
    /// What the stream carries.
    pub kind: StreamKind,
    /// The id the sender claims to be.
    pub sender: u64,
}

/// Why bytes read from a peer were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The stream did not start with the `PXQ1` magic.
    #[error("bad stream magic {found:02x?} (expected \"PXQ1\")")]
    BadMagic {
        /// The four bytes found instead.
        found: [u8; 4],
    },
    /// The header named a stream kind this version does not know.
    #[error("unknown stream kind {kind}")]
    UnknownKind {
        /// The kind byte found.
        kind: u8,
    },
    /// The reserved header bytes were not zero.
    #[error("reserved header bytes are not zero: {found:02x?}")]
    Reserved {
        /// The three reserved bytes found.
        found: [u8; 3],
    },
    /// A frame announced a length over the configured maximum.
    #[error("frame of {len_bytes} bytes exceeds the maximum of {max_bytes} bytes")]
    TooLarge {
        /// The announced length.
        len_bytes: u64,
        /// The configured maximum.
        max_bytes: u64,
    },
    /// The stream ended in the middle of a frame or header.
    #[error("stream ended inside a frame ({buffered_bytes} bytes buffered)")]
    Truncated {
        /// Bytes of the incomplete frame that had arrived.
        buffered_bytes: usize,
    },
}

impl StreamHeader {
    /// Encodes the header into its [`HEADER_BYTES`] bytes.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.kind.to_byte();
        out[8..].copy_from_slice(&self.sender.to_be_bytes());
        out
    }

    /// Decodes a header; any deviation from the format is an error.
    pub fn decode(raw: &[u8; HEADER_BYTES]) -> Result<StreamHeader, FrameError> {
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&raw[..4]);
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let kind = match raw[4] {
            1 => StreamKind::Control,
            2 => StreamKind::Bulk,
            other => return Err(FrameError::UnknownKind { kind: other }),
        };
        let mut reserved = [0u8; 3];
        reserved.copy_from_slice(&raw[5..8]);
        if reserved != [0, 0, 0] {
            return Err(FrameError::Reserved { found: reserved });
        }
        let mut sender = [0u8; 8];
        sender.copy_from_slice(&raw[8..]);
        Ok(StreamHeader {
            kind,
            sender: u64::from_be_bytes(sender),
        })
    }
}

/// Appends one length-prefixed frame to `out`.
///
/// # Panics
/// If the frame is longer than `u32::MAX` bytes (callers check the configured
/// maximum, which is at most `u32::MAX`, before queueing).
pub fn encode_frame(frame: &[u8], out: &mut BytesMut) {
    assert!(
        frame.len() <= u32::MAX as usize,
        "invariant: frames are checked against max_frame_bytes (<= u32::MAX) before encoding"
    );
    let len = frame.len() as u32;
    out.reserve(FRAME_PREFIX_BYTES + frame.len());
    out.put_u32(len);
    out.put_slice(frame);
}

/// Incremental decoder of the length-prefixed frames of a control stream.
///
/// Feed it the chunks read from the stream with [`FrameDecoder::push`] and take
/// whole frames out with [`FrameDecoder::next_frame`]. It never reserves room
/// for a frame before its length has been checked against the maximum, and a
/// frame that arrives inside one chunk is handed out without a copy.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_bytes: u32,
    /// Bytes received and not yet handed out as frames.
    pending: BytesMut,
    /// A chunk kept whole so frames inside it can be sliced without copying;
    /// only set while `pending` is empty.
    chunk: Bytes,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: u32) -> FrameDecoder {
        FrameDecoder {
            max_frame_bytes,
            pending: BytesMut::new(),
            chunk: Bytes::new(),
            failed: None,
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if self.pending.is_empty() && self.chunk.is_empty() {
            self.chunk = data;
        } else {
            self.spill_chunk();
            self.pending.extend_from_slice(&data);
        }
    }

    /// Moves the zero-copy chunk into the pending buffer (needed when a frame
    /// straddles two chunks).
    fn spill_chunk(&mut self) {
        if !self.chunk.is_empty() {
            let chunk = std::mem::take(&mut self.chunk);
            self.pending.extend_from_slice(&chunk);
        }
    }

    /// Bytes held and not yet returned as frames.
    pub fn buffered_bytes(&self) -> usize {
        self.pending.len() + self.chunk.len()
    }

    /// Capacity of the internal buffer: stays near the largest frame actually
    /// received, never near an announced (unchecked) length.
    pub fn buffer_capacity(&self) -> usize {
        self.pending.capacity()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed, or the error
    /// that poisoned the stream (returned again on every later call).
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if !self.chunk.is_empty() {
            let len = match self.check_len(peek_len(&self.chunk))? {
                Some(len) => len,
                None => {
                    self.spill_chunk();
                    return Ok(None);
                }
            };
            if self.chunk.len() >= FRAME_PREFIX_BYTES + len {
                self.chunk.advance(FRAME_PREFIX_BYTES);
                return Ok(Some(self.chunk.split_to(len)));
            }
            self.spill_chunk();
        }
        let Some(len) = self.check_len(peek_len(&self.pending))? else {
            return Ok(None);
        };
        if self.pending.len() >= FRAME_PREFIX_BYTES + len {
            self.pending.advance(FRAME_PREFIX_BYTES);
            return Ok(Some(self.pending.split_to(len).freeze()));
        }
        // The length is known and allowed: reserve for exactly this frame.
        self.pending
            .reserve(FRAME_PREFIX_BYTES + len - self.pending.len());
        Ok(None)
    }

    /// Checks an announced length against the maximum; poisons the decoder
    /// and frees its buffers if it is over.
    fn check_len(&mut self, len: Option<u32>) -> Result<Option<usize>, FrameError> {
        let Some(len) = len else { return Ok(None) };
        if len > self.max_frame_bytes {
            let err = FrameError::TooLarge {
                len_bytes: u64::from(len),
                max_bytes: u64::from(self.max_frame_bytes),
            };
            self.pending = BytesMut::new();
            self.chunk = Bytes::new();
            self.failed = Some(err.clone());
            return Err(err);
        }
        Ok(Some(len as usize))
    }

    /// Call when the stream ended: an error if a frame was cut in the middle.
    pub fn finish(&self) -> Result<(), FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.buffered_bytes() {
            0 => Ok(()),
            buffered_bytes => Err(FrameError::Truncated { buffered_bytes }),
        }
    }
}

/// The u32 length prefix at the start of `buf`, if it has arrived.
fn peek_len(buf: &[u8]) -> Option<u32> {
    let prefix: [u8; FRAME_PREFIX_BYTES] = buf.get(..FRAME_PREFIX_BYTES)?.try_into().ok()?;
    Some(u32::from_be_bytes(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks_are_reassembled() {
        let mut wire = BytesMut::new();
        encode_frame(b"hello", &mut wire);
        encode_frame(b"", &mut wire);
        encode_frame(&[7u8; 300], &mut wire);
        let wire = wire.freeze();
        let mut dec = FrameDecoder::new(1024);
        let mut out = Vec::new();
        for piece in wire.chunks(3) {
            dec.push(Bytes::copy_from_slice(piece));
            while let Some(f) = dec.next_frame().expect("valid frames") {
                out.push(f);
            }
        }
        assert_eq!(out.len(), 3);
        assert_eq!(&out[0][..], b"hello");
        assert!(out[1].is_empty());
        assert_eq!(&out[2][..], &[7u8; 300][..]);
        dec.finish().expect("no partial frame left");
    }

    #[test]
    fn oversized_length_is_refused_before_reserving() {
        let mut dec = FrameDecoder::new(1024);
        dec.push(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]));
        let err = dec.next_frame().expect_err("length over the maximum");
        assert!(matches!(
            err,
            FrameError::TooLarge {
                len_bytes: 0xffff_ffff,
                max_bytes: 1024
            }
        ));
        assert!(
            dec.buffer_capacity() < 1024,
            "no room reserved for the announced length"
        );
        assert_eq!(dec.buffered_bytes(), 0, "buffers freed");
        assert!(dec.next_frame().is_err(), "decoder stays poisoned");
    }

    #[test]
    fn header_round_trip_and_garbage() {
        let h = StreamHeader {
            kind: StreamKind::Bulk,
            sender: 42,
        };
        assert_eq!(StreamHeader::decode(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[0] = b'X';
        assert!(matches!(
            StreamHeader::decode(&bad),
            Err(FrameError::BadMagic { .. })
        ));
        let mut bad = h.encode();
        bad[4] = 9;
        assert_eq!(
            StreamHeader::decode(&bad),
            Err(FrameError::UnknownKind { kind: 9 })
        );
        let mut bad = h.encode();
        bad[6] = 1;
        assert!(matches!(
            StreamHeader::decode(&bad),
            Err(FrameError::Reserved { .. })
        ));
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut dec = FrameDecoder::new(64);
        dec.push(Bytes::from_static(&[0, 0, 0, 10, 1, 2]));
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(
            dec.finish(),
            Err(FrameError::Truncated { buffered_bytes: 6 })
        );
    }
}
