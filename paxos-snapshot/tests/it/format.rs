//! The file format: round trips, and every corruption class detected.

use std::io::{Read, Write};

use paxos_core::{NodeId, Zxid};
use paxos_snapshot::{
    restore_state_machine, SnapshotEncoder, SnapshotError, SnapshotMeta, SnapshotReader,
    MAX_VOTERS, TRAILER_BYTES,
};

use crate::common::{meta, z, Blob};

const CHUNK: u32 = 64;

fn encode(meta: &SnapshotMeta, data: &[u8], chunk_bytes: u32) -> Vec<u8> {
    let mut enc = SnapshotEncoder::new(Vec::new(), meta, chunk_bytes).expect("vec write");
    // Irregular write sizes.
    let mut rest = data;
    let mut step = 1;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        enc.write_all(&rest[..n]).expect("vec write");
        rest = &rest[n..];
        step = step * 3 % 97 + 1;
    }
    let (out, summary) = enc.finish().expect("vec write");
    assert_eq!(summary.file_bytes, out.len() as u64);
    assert_eq!(summary.data_bytes, data.len() as u64);
    out
}

fn decode(bytes: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), SnapshotError> {
    let mut reader = SnapshotReader::new(bytes, "<test>")?;
    let meta = reader.meta().clone();
    let mut data = Vec::new();
    reader
        .read_to_end(&mut data)
        .map_err(|e| SnapshotError::from_io(e, "read", "<test>"))?;
    let (summary, unread) = reader.finish()?;
    assert_eq!(unread, 0);
    assert_eq!(summary.data_bytes, data.len() as u64);
    Ok((meta, data))
}

fn data(len: usize) -> Vec<u8> {
    Blob::filled(len, len as u64 + 7, Zxid::ZERO).data
}

/// Byte ranges of a file made by `encode` with `CHUNK`-byte chunks.
struct Layout {
    header_end: usize,
    chunk_frames: Vec<usize>,
    trailer_at: usize,
}

fn layout(meta: &SnapshotMeta, data_len: usize, file_len: usize) -> Layout {
    let membership = meta.membership.as_ref().map_or(0, |m| m.encode().len());
    let header_end = 32 + 8 * meta.voters.len() + 4 + membership + 4;
    let chunks = data_len.div_ceil(CHUNK as usize);
    let chunk_frames = (0..chunks)
        .map(|i| header_end + i * (CHUNK as usize + 8))
        .collect();
    let trailer_at = file_len - TRAILER_BYTES as usize;
    Layout {
        header_end,
        chunk_frames,
        trailer_at,
    }
}

#[test]
fn round_trip_at_chunk_boundaries() {
    let m = meta(z(3, 9));
    for len in [0, 1, 63, 64, 65, 128, 1000, 4096 + 17] {
        let bytes = encode(&m, &data(len), CHUNK);
        let (got_meta, got) = decode(&bytes).expect("valid snapshot");
        assert_eq!(got_meta, m);
        assert_eq!(got, data(len), "len {len}");
    }
}

#[test]
fn empty_and_large_voter_lists() {
    for voters in [
        vec![],
        (0..MAX_VOTERS as u64).map(NodeId).collect::<Vec<_>>(),
    ] {
        let m = SnapshotMeta {
            zxid: z(1, 1),
            epoch: paxos_core::Epoch(5),
            voters,
            membership: None,
        };
        let bytes = encode(&m, b"abc", CHUNK);
        assert_eq!(decode(&bytes).expect("valid").0, m);
    }
    let too_many = SnapshotMeta {
        zxid: z(1, 1),
        epoch: paxos_core::Epoch(1),
        voters: (0..=MAX_VOTERS as u64).map(NodeId).collect(),
        membership: None,
    };
    assert!(SnapshotEncoder::new(Vec::new(), &too_many, CHUNK).is_err());
}

/// A version 1 file (voters only, as the previous build wrote it), built
/// byte by byte from the format's description.
fn version_1_file(meta: &SnapshotMeta, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"PXSNAP\r\n");
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&CHUNK.to_le_bytes());
    out.extend_from_slice(&meta.zxid.as_u64().to_le_bytes());
    out.extend_from_slice(&meta.epoch.0.to_le_bytes());
    out.extend_from_slice(&(meta.voters.len() as u32).to_le_bytes());
    for v in &meta.voters {
        out.extend_from_slice(&v.0.to_le_bytes());
    }
    let header_crc = crc32fast::hash(&out);
    out.extend_from_slice(&header_crc.to_le_bytes());
    let mut chunks = 0u64;
    for (i, chunk) in data.chunks(CHUNK as usize).enumerate() {
        let mut h = crc32fast::Hasher::new();
        h.update(&(i as u64).to_le_bytes());
        h.update(&(chunk.len() as u32).to_le_bytes());
        h.update(chunk);
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        out.extend_from_slice(&h.finalize().to_le_bytes());
        out.extend_from_slice(chunk);
        chunks += 1;
    }
    let mut trailer = Vec::new();
    trailer.extend_from_slice(b"SNTR");
    trailer.extend_from_slice(&(data.len() as u64).to_le_bytes());
    trailer.extend_from_slice(&chunks.to_le_bytes());
    trailer.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&header_crc.to_le_bytes());
    h.update(&trailer);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&trailer);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out
}

#[test]
fn the_whole_membership_round_trips_and_version_1_files_still_read() {
    let m = meta(z(3, 9));
    assert!(m.membership.is_some());
    let data = b"the state".repeat(20);
    assert_eq!(
        decode(&encode(&m, &data, CHUNK)).expect("valid"),
        (m.clone(), data.clone())
    );
    let old = SnapshotMeta {
        membership: None,
        ..m.clone()
    };
    let (read, read_data) = decode(&version_1_file(&old, &data)).expect("a version 1 file");
    assert_eq!((read, read_data), (old, data));
    // A membership whose voters are not the header's is refused.
    let mut mismatched = m;
    mismatched.voters.pop();
    assert!(SnapshotEncoder::new(Vec::new(), &mismatched, CHUNK).is_err());
}

#[test]
fn every_single_bit_flip_is_detected_and_located() {
    let m = meta(z(2, 4));
    let payload = data(200);
    let good = encode(&m, &payload, CHUNK);
    let lay = layout(&m, payload.len(), good.len());
    assert_eq!(lay.chunk_frames.len(), 4);
    for at in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[at] ^= 1 << bit;
            let err = decode(&bad).expect_err("a flipped bit must be detected");
            assert!(err.is_corruption(), "offset {at}: {err}");
            if at < lay.header_end {
                assert!(
                    matches!(
                        err,
                        SnapshotError::BadMagic { .. }
                            | SnapshotError::UnsupportedVersion { .. }
                            | SnapshotError::BadHeader { .. }
                            | SnapshotError::HeaderChecksum { .. }
                            | SnapshotError::Truncated {
                                inside: "header",
                                ..
                            }
                    ),
                    "header offset {at}: {err}"
                );
            } else if at < lay.trailer_at {
                assert!(
                    matches!(
                        err,
                        SnapshotError::ChunkChecksum { .. }
                            | SnapshotError::ChunkTooLarge { .. }
                            | SnapshotError::Truncated { .. }
                            | SnapshotError::ShortChunk { .. }
                            // A length flipped to 0 reads as the trailer marker.
                            | SnapshotError::BadTrailer { .. }
                    ),
                    "chunk offset {at}: {err}"
                );
            } else {
                assert!(
                    matches!(
                        err,
                        SnapshotError::BadTrailer { .. }
                            // A flipped trailer marker reads as another chunk.
                            | SnapshotError::ShortChunk { .. }
                            | SnapshotError::ChunkTooLarge { .. }
                            | SnapshotError::ChunkChecksum { .. }
                            | SnapshotError::Truncated { .. }
                    ),
                    "trailer offset {at}: {err}"
                );
            }
        }
    }
}

#[test]
fn truncation_at_every_offset_is_detected_with_its_place() {
    let m = meta(z(2, 4));
    let payload = data(150);
    let good = encode(&m, &payload, CHUNK);
    let lay = layout(&m, payload.len(), good.len());
    for len in 0..good.len() {
        let err = decode(&good[..len]).expect_err("a truncated file must be refused");
        let SnapshotError::Truncated { offset, inside, .. } = err else {
            panic!("length {len}: expected Truncated, got {err}");
        };
        assert_eq!(offset, len as u64, "reported offset is where bytes ran out");
        let expected = if len < lay.header_end {
            "header"
        } else if len < lay.trailer_at + 8 {
            "chunk"
        } else {
            "trailer"
        };
        assert_eq!(inside, expected, "length {len}");
    }
}

#[test]
fn bytes_after_the_trailer_are_refused() {
    let mut bytes = encode(&meta(z(1, 1)), &data(10), CHUNK);
    let end = bytes.len() as u64;
    bytes.push(0);
    let err = decode(&bytes).expect_err("trailing byte");
    assert!(matches!(err, SnapshotError::TrailingBytes { offset, .. } if offset == end));
}

#[test]
fn swapped_dropped_and_duplicated_chunks_are_refused() {
    let m = meta(z(2, 4));
    let payload = data(256);
    let good = encode(&m, &payload, CHUNK);
    let lay = layout(&m, payload.len(), good.len());
    let frame = CHUNK as usize + 8;
    let (a, b) = (lay.chunk_frames[1], lay.chunk_frames[2]);

    let mut swapped = good.clone();
    let first = good[a..a + frame].to_vec();
    swapped[a..a + frame].copy_from_slice(&good[b..b + frame]);
    swapped[b..b + frame].copy_from_slice(&first);
    let err = decode(&swapped).expect_err("swapped chunks");
    assert!(
        matches!(err, SnapshotError::ChunkChecksum { index: 1, offset, .. } if offset == a as u64)
    );

    let mut dropped = good[..a].to_vec();
    dropped.extend_from_slice(&good[a + frame..]);
    assert!(matches!(
        decode(&dropped),
        Err(SnapshotError::ChunkChecksum { index: 1, .. })
    ));

    let mut duplicated = good[..b].to_vec();
    duplicated.extend_from_slice(&good[a..]);
    assert!(matches!(
        decode(&duplicated),
        Err(SnapshotError::ChunkChecksum { index: 2, .. })
    ));
}

#[test]
fn trailer_from_another_file_is_refused() {
    // Same data, different header: the trailer checksum covers the header's.
    let payload = data(100);
    let one = encode(&meta(z(1, 1)), &payload, CHUNK);
    let two = encode(&meta(z(1, 2)), &payload, CHUNK);
    let mut spliced = one.clone();
    let t = one.len() - TRAILER_BYTES as usize;
    spliced[t..].copy_from_slice(&two[t..]);
    assert!(spliced != one);
    assert!(matches!(
        decode(&spliced),
        Err(SnapshotError::BadTrailer { .. })
    ));
}

#[test]
fn reader_errors_surface_through_io_read_and_stay_failed() {
    let m = meta(z(1, 1));
    let mut bytes = encode(&m, &data(200), CHUNK);
    // Inside the second chunk's data.
    let at = layout(&m, 200, bytes.len()).chunk_frames[1] + 8 + 6;
    bytes[at] ^= 0x10;
    let mut reader = SnapshotReader::new(&bytes[..], "<test>").expect("header intact");
    let mut out = Vec::new();
    let err = reader.read_to_end(&mut out).expect_err("corrupt chunk");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    // The first chunk was handed out before the bad one was reached.
    assert_eq!(out, data(200)[..64].to_vec());
    assert!(matches!(
        SnapshotError::from_io(err, "read", "<test>"),
        SnapshotError::ChunkChecksum { index: 1, .. }
    ));
    let mut more = [0u8; 4];
    assert!(
        reader.read(&mut more).is_err(),
        "a failed reader stays failed"
    );
    assert!(matches!(
        reader.finish(),
        Err(SnapshotError::Poisoned { .. })
    ));
}

#[test]
fn restore_checks_state_machine_consumed_everything() {
    struct Lazy;
    impl paxos_core::StateMachine for Lazy {
        fn apply(&mut self, _: Zxid, _: &bytes::Bytes) -> bytes::Bytes {
            bytes::Bytes::new()
        }
        fn applied(&self) -> Zxid {
            Zxid::ZERO
        }
        fn snapshot(&self, _: &mut dyn Write) -> std::io::Result<()> {
            Ok(())
        }
        fn restore(&mut self, _: Zxid, input: &mut dyn Read) -> std::io::Result<()> {
            let mut one = [0u8; 1];
            input.read_exact(&mut one)
        }
    }
    let bytes = encode(&meta(z(1, 1)), &data(100), CHUNK);
    let reader = SnapshotReader::new(&bytes[..], "<test>").expect("valid");
    let err = restore_state_machine(&mut Lazy, reader, std::path::Path::new("<test>"))
        .expect_err("unread bytes");
    assert!(matches!(
        err,
        SnapshotError::Unconsumed {
            unread_bytes: 99,
            ..
        }
    ));

    let mut blob = Blob::default();
    let sm_bytes = {
        let src = Blob::filled(5000, 1, z(1, 1));
        let mut enc = SnapshotEncoder::new(Vec::new(), &meta(z(1, 1)), CHUNK).expect("vec");
        paxos_core::StateMachine::snapshot(&src, &mut enc).expect("vec");
        enc.finish().expect("vec").0
    };
    let reader = SnapshotReader::new(&sm_bytes[..], "<test>").expect("valid");
    restore_state_machine(&mut blob, reader, std::path::Path::new("<test>")).expect("restore");
    assert_eq!(blob, Blob::filled(5000, 1, z(1, 1)));
}
