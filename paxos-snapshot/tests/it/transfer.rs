//! Chunked transfer: refusals keep the previous state, resume, install.

use bytes::Bytes;
use paxos_core::Epoch;
use paxos_snapshot::{
    seal_chunk, Progress, SnapChunk, SnapshotError, SnapshotId, SnapshotReceiver, SnapshotSender,
    SnapshotStore, StoredSnapshot,
};

use crate::common::{z, Blob};

const MAX_CHUNK: u32 = 3000;

struct Setup {
    _leader_dir: tempfile::TempDir,
    follower_dir: tempfile::TempDir,
    leader_state: Blob,
    snapshot: StoredSnapshot,
}

fn setup(len: usize, seed: u64) -> Setup {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let leader = SnapshotStore::open(leader_dir.path())
        .expect("store")
        .with_chunk_bytes(1024);
    let leader_state = Blob::filled(len, seed, z(3, 17));
    let snapshot = leader.save(&leader_state, Epoch(3), &[]).expect("save");
    Setup {
        _leader_dir: leader_dir,
        follower_dir,
        leader_state,
        snapshot,
    }
}

fn receiver(s: &Setup) -> SnapshotReceiver {
    SnapshotReceiver::open(SnapshotStore::open(s.follower_dir.path()).expect("store"))
        .expect("receiver")
}

fn all_chunks(s: &Setup) -> Vec<SnapChunk> {
    let mut sender = SnapshotSender::open(&s.snapshot.path, MAX_CHUNK).expect("sender");
    let mut out = Vec::new();
    while let Some(c) = sender.next_chunk().expect("read") {
        assert!(c.data.len() <= MAX_CHUNK as usize, "chunks are bounded");
        out.push(c);
    }
    out
}

fn old_state() -> Blob {
    Blob::filled(777, 99, z(2, 5))
}

#[test]
fn full_transfer_installs_and_restores() {
    let s = setup(50_000, 1);
    let chunks = all_chunks(&s);
    assert!(chunks.len() > 10);
    assert!(chunks.last().is_some_and(|c| c.last));
    let mut rx = receiver(&s);
    for (i, c) in chunks.iter().enumerate() {
        let p = rx.accept(c).expect("good chunk");
        if i + 1 == chunks.len() {
            assert_eq!(p, Progress::Complete);
        } else {
            assert_eq!(
                p,
                Progress::NeedMore {
                    next_offset: c.offset + c.data.len() as u64
                }
            );
        }
    }
    let mut sm = old_state();
    let installed = rx.install(&mut sm).expect("install");
    assert_eq!(sm, s.leader_state);
    assert_eq!(installed.zxid, z(3, 17));
    let store = SnapshotStore::open(s.follower_dir.path()).expect("store");
    assert_eq!(
        store.latest().expect("list").map(|x| x.zxid),
        Some(z(3, 17))
    );
    assert_eq!(
        std::fs::read(&installed.path).expect("read"),
        std::fs::read(&s.snapshot.path).expect("read")
    );
    assert!(rx.in_progress().is_none());
}

#[test]
fn bit_flipped_chunk_is_refused_then_good_copy_accepted() {
    let s = setup(20_000, 2);
    let chunks = all_chunks(&s);
    let mut rx = receiver(&s);
    rx.accept(&chunks[0]).expect("first");
    let good = &chunks[1];
    for field in 0..6 {
        let mut bad = good.clone();
        match field {
            0 => {
                let mut d = bad.data.to_vec();
                d[17] ^= 0x40;
                bad.data = Bytes::from(d);
            }
            1 => bad.offset ^= 1,
            2 => bad.total_len += 1,
            3 => bad.last = !bad.last,
            4 => bad.fingerprint ^= 1,
            _ => bad.crc32 ^= 1,
        }
        let err = rx.accept(&bad).expect_err("corrupt chunk");
        assert!(
            matches!(err, SnapshotError::TransferChecksum { .. }),
            "field {field}: {err}"
        );
        assert_eq!(
            rx.next_offset(),
            good.offset,
            "a refused chunk changes nothing"
        );
    }
    rx.accept(good).expect("good copy");
    assert_eq!(rx.next_offset(), chunks[2].offset);
}

#[test]
fn gaps_and_out_of_bounds_chunks_are_refused_duplicates_ignored() {
    let s = setup(20_000, 3);
    let chunks = all_chunks(&s);
    let mut rx = receiver(&s);
    assert!(matches!(
        rx.accept(&chunks[1]),
        Err(SnapshotError::OutOfOrder { expected: 0, .. })
    ));
    rx.accept(&chunks[0]).expect("first");
    assert_eq!(
        rx.accept(&chunks[0]).expect("a duplicate is held already"),
        Progress::NeedMore {
            next_offset: chunks[1].offset
        }
    );
    assert_eq!(rx.next_offset(), chunks[1].offset);
    assert!(
        matches!(rx.accept(&chunks[2]), Err(SnapshotError::OutOfOrder { .. })),
        "skip"
    );
    // A chunk that claims to be the last but does not end the file, with a
    // valid checksum (a buggy sender).
    let c = &chunks[1];
    let early_last = seal_chunk(
        SnapshotId::of(c),
        c.offset,
        c.data.clone(),
        c.total_len,
        true,
    );
    assert!(matches!(
        rx.accept(&early_last),
        Err(SnapshotError::BadChunkBounds { .. })
    ));
    let past_end = seal_chunk(
        SnapshotId::of(c),
        c.offset,
        Bytes::from(vec![0u8; 30_000]),
        c.total_len,
        false,
    );
    assert!(matches!(
        rx.accept(&past_end),
        Err(SnapshotError::BadChunkBounds { .. })
    ));
    let empty = seal_chunk(
        SnapshotId::of(c),
        c.offset,
        Bytes::new(),
        c.total_len,
        false,
    );
    assert!(matches!(
        rx.accept(&empty),
        Err(SnapshotError::BadChunkBounds { .. })
    ));
    assert_eq!(rx.next_offset(), c.offset);
    // Installing before the end is refused.
    let mut sm = old_state();
    assert!(matches!(
        rx.install(&mut sm),
        Err(SnapshotError::Incomplete { .. })
    ));
    assert_eq!(sm, old_state());
}

#[test]
fn foreign_chunk_is_refused_until_abort() {
    let s = setup(20_000, 4);
    let other = setup(20_000, 5);
    let chunks = all_chunks(&s);
    let foreign = all_chunks(&other);
    assert_ne!(
        SnapshotId::of(&chunks[0]),
        SnapshotId::of(&foreign[0]),
        "same zxid, different content"
    );
    assert_eq!(chunks[0].snapshot_zxid, foreign[0].snapshot_zxid);
    let mut rx = receiver(&s);
    rx.accept(&chunks[0]).expect("first");
    let err = rx.accept(&foreign[1]).expect_err("foreign");
    assert!(matches!(err, SnapshotError::ForeignChunk { .. }));
    assert!(matches!(
        rx.accept(&foreign[0]),
        Err(SnapshotError::ForeignChunk { .. })
    ));
    rx.abort().expect("abort");
    for c in &foreign {
        rx.accept(c).expect("the other snapshot after abort");
    }
    let mut sm = old_state();
    rx.install(&mut sm).expect("install");
    assert_eq!(sm, other.leader_state);
}

#[test]
fn tampered_data_with_recomputed_chunk_crc_fails_install_and_keeps_state() {
    let s = setup(20_000, 6);
    let mut chunks = all_chunks(&s);
    // The sender's file was damaged on its disk; the transfer checksum is
    // computed over the damaged bytes, so only install-time verification
    // can tell.
    let c = &chunks[3];
    let mut d = c.data.to_vec();
    d[100] ^= 0x01;
    chunks[3] = seal_chunk(
        SnapshotId::of(c),
        c.offset,
        Bytes::from(d),
        c.total_len,
        c.last,
    );
    let mut rx = receiver(&s);
    for c in &chunks {
        rx.accept(c).expect("transport-level valid");
    }
    let mut sm = old_state();
    let err = rx.install(&mut sm).expect_err("verification");
    assert!(err.is_corruption(), "{err}");
    assert_eq!(sm, old_state(), "follower keeps its previous state");
    assert!(rx.in_progress().is_none(), "the bad file is discarded");
    let store = SnapshotStore::open(s.follower_dir.path()).expect("store");
    assert!(store.list().expect("list").is_empty(), "nothing installed");
    assert_eq!(
        std::fs::read_dir(s.follower_dir.path())
            .expect("list")
            .count(),
        0
    );
}

#[test]
fn truncated_transfer_cannot_install() {
    let s = setup(20_000, 7);
    let chunks = all_chunks(&s);
    let mut rx = receiver(&s);
    for c in &chunks[..chunks.len() - 1] {
        rx.accept(c).expect("chunk");
    }
    let mut sm = old_state();
    let err = rx.install(&mut sm).expect_err("incomplete");
    assert!(matches!(err, SnapshotError::Incomplete { .. }));
    assert_eq!(sm, old_state());
    let mut fresh = receiver(&s);
    assert!(matches!(
        fresh.install(&mut sm),
        Err(SnapshotError::NothingReceived) | Err(SnapshotError::Incomplete { .. })
    ));
}

#[test]
fn reconnect_resumes_from_last_good_offset() {
    let s = setup(40_000, 8);
    let chunks = all_chunks(&s);
    let mut rx = receiver(&s);
    for c in &chunks[..5] {
        rx.accept(c).expect("chunk");
    }
    // Connection lost; the follower asks for the offset it has.
    let want = rx.next_offset();
    assert_eq!(want, chunks[5].offset);
    let mut sender = SnapshotSender::open(&s.snapshot.path, MAX_CHUNK).expect("sender");
    sender.resume_from(want);
    while let Some(c) = sender.next_chunk().expect("read") {
        rx.accept(&c).expect("resumed chunk");
    }
    let mut sm = old_state();
    rx.install(&mut sm).expect("install");
    assert_eq!(sm, s.leader_state);
}

#[test]
fn restart_mid_transfer_resumes_from_verified_prefix() {
    let s = setup(40_000, 9);
    let chunks = all_chunks(&s);
    {
        let mut rx = receiver(&s);
        for c in &chunks[..7] {
            rx.accept(c).expect("chunk");
        }
        // Process dies here (receiver dropped without install).
    }
    // Damage the tail of the partial file, as a crash losing unsynced pages might.
    let part = std::fs::read_dir(s.follower_dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().ends_with(".part"))
        .expect("partial file kept");
    let mut bytes = std::fs::read(&part).expect("read");
    let received = bytes.len() as u64;
    assert_eq!(received, chunks[7].offset);
    let damage_at = bytes.len() - 500;
    bytes[damage_at] ^= 0xff;
    std::fs::write(&part, &bytes).expect("write");

    let mut rx = receiver(&s);
    let (id, total) = rx.in_progress().expect("resumed");
    assert_eq!(
        (id, total),
        (SnapshotId::of(&chunks[0]), chunks[0].total_len)
    );
    let resume = rx.next_offset();
    assert!(resume < received, "the damaged file chunk is dropped");
    assert!(resume > 0, "the verified prefix is kept");
    // 1024-byte file chunks: resume lands on a file-format chunk boundary.
    // The fixed header, no voters, an empty membership's length, the CRC.
    let header = 32 + 4 + 4;
    assert_eq!((resume - header) % (1024 + 8), 0);
    let mut sender = SnapshotSender::open(&s.snapshot.path, MAX_CHUNK).expect("sender");
    sender.resume_from(resume);
    while let Some(c) = sender.next_chunk().expect("read") {
        rx.accept(&c).expect("resumed chunk");
    }
    let mut sm = old_state();
    rx.install(&mut sm).expect("install");
    assert_eq!(sm, s.leader_state);
}

#[test]
fn restart_after_complete_transfer_installs() {
    let s = setup(10_000, 10);
    {
        let mut rx = receiver(&s);
        for c in &all_chunks(&s) {
            rx.accept(c).expect("chunk");
        }
    }
    let mut rx = receiver(&s);
    assert_eq!(rx.next_offset(), s.snapshot.file_bytes);
    let mut sm = old_state();
    rx.install(&mut sm).expect("install");
    assert_eq!(sm, s.leader_state);
}

#[test]
fn resumed_stream_overlapping_what_is_held_completes() {
    let s = setup(50_000, 6);
    let chunks = all_chunks(&s);
    let mut rx = receiver(&s);
    for c in &chunks[..5] {
        rx.accept(c).expect("good chunk");
    }
    let held = rx.next_offset();
    // The leader resumes from an older report, not on a chunk boundary.
    let mut sender = SnapshotSender::open(&s.snapshot.path, MAX_CHUNK).expect("sender");
    sender.resume_from(held - 1234);
    let mut last = None;
    while let Some(c) = sender.next_chunk().expect("read") {
        last = Some(rx.accept(&c).expect("a resumed chunk"));
    }
    assert_eq!(last, Some(Progress::Complete));
    let mut sm = old_state();
    rx.install(&mut sm).expect("install");
    assert_eq!(sm, s.leader_state);
}

#[test]
fn reopened_receiver_takes_a_stream_resumed_at_its_offset() {
    let s = setup(50_000, 7);
    let chunks = all_chunks(&s);
    let mut rx = receiver(&s);
    for c in &chunks[..4] {
        rx.accept(c).expect("good chunk");
    }
    drop(rx);
    // A restart: the partial file is verified again; the stream resumes
    // at whatever offset the receiver now reports.
    let mut rx = receiver(&s);
    let at = rx.next_offset();
    assert!(at > 0 && at <= chunks[4].offset);
    let mut sender = SnapshotSender::open(&s.snapshot.path, MAX_CHUNK).expect("sender");
    sender.resume_from(at);
    let mut last = None;
    while let Some(c) = sender.next_chunk().expect("read") {
        last = Some(rx.accept(&c).expect("a resumed chunk"));
    }
    assert_eq!(last, Some(Progress::Complete));
    let mut sm = old_state();
    rx.install(&mut sm).expect("install");
    assert_eq!(sm, s.leader_state);
}
