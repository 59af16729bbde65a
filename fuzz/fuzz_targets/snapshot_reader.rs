//! Fuzz the snapshot file reader: arbitrary bytes must never panic or
//! allocate without bound, and a file accepted must re-encode to itself.
#![no_main]

use std::io::{Read, Write};

use libfuzzer_sys::fuzz_target;
use paxos_snapshot::{SnapshotEncoder, SnapshotReader};

fuzz_target!(|bytes: &[u8]| {
    let Ok(mut reader) = SnapshotReader::new(bytes, "<fuzz>") else {
        return;
    };
    let meta = reader.meta().clone();
    let chunk_bytes = reader.chunk_bytes();
    let mut data = Vec::new();
    if reader.read_to_end(&mut data).is_err() {
        return;
    }
    let Ok((summary, unread)) = reader.finish() else {
        return;
    };
    assert_eq!(unread, 0, "read_to_end leaves nothing unread");
    assert_eq!(summary.data_bytes, data.len() as u64);
    assert_eq!(
        summary.file_bytes,
        bytes.len() as u64,
        "a valid file is read whole"
    );
    // Accepted input is exactly what the encoder writes for it.
    let Ok(mut enc) = SnapshotEncoder::new(Vec::new(), &meta, chunk_bytes) else {
        return;
    };
    let encoded = enc
        .write_all(&data)
        .and_then(|()| enc.finish())
        .map(|(out, _)| out);
    if let Ok(out) = encoded {
        assert_eq!(out, bytes, "the format has one encoding per content");
    }
});
