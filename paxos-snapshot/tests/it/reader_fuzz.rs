//! CI twin of the `snapshot_reader` fuzz target: the reader over arbitrary
//! and mutated bytes never panics, and accepts only a valid file.

use std::io::Read;

use paxos_snapshot::{SnapshotEncoder, SnapshotReader};
use proptest::prelude::*;

use crate::common::{meta, z};

/// What the fuzz target does: read everything, return the data if valid.
/// An accepted input must be exactly what the encoder writes for it.
fn read_all(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut reader = SnapshotReader::new(bytes, "<fuzz>").ok()?;
    let meta = reader.meta().clone();
    let chunk_bytes = reader.chunk_bytes();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).ok()?;
    let (summary, unread) = reader.finish().ok()?;
    assert_eq!(unread, 0);
    assert_eq!(summary.file_bytes, bytes.len() as u64);
    let mut enc = SnapshotEncoder::new(Vec::new(), &meta, chunk_bytes).expect("vec");
    std::io::Write::write_all(&mut enc, &out).expect("vec");
    assert_eq!(
        enc.finish().expect("vec").0,
        bytes,
        "one encoding per content"
    );
    Some(out)
}

fn valid_file(data: &[u8], chunk_bytes: u32) -> Vec<u8> {
    let mut enc = SnapshotEncoder::new(Vec::new(), &meta(z(1, 2)), chunk_bytes).expect("vec");
    std::io::Write::write_all(&mut enc, data).expect("vec");
    enc.finish().expect("vec").0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = read_all(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header(tail in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut bytes = valid_file(b"", 16);
        let header_len = 32 + 24 + 4;
        bytes.truncate(header_len);
        bytes.extend_from_slice(&tail);
        let _ = read_all(&bytes);
    }

    #[test]
    fn mutated_valid_files_are_refused(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        chunk_bytes in 1u32..100,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let good = valid_file(&data, chunk_bytes);
        prop_assert_eq!(read_all(&good), Some(data.clone()));
        let mut bad = good.clone();
        for (at, byte, kind) in edits {
            if bad.is_empty() {
                break;
            }
            let i = at.index(bad.len());
            match kind {
                0 => bad[i] ^= byte | 1,
                1 => { bad.remove(i); }
                _ => bad.insert(i, byte),
            }
        }
        if bad != good {
            prop_assert_eq!(read_all(&bad), None);
        }
    }
}
