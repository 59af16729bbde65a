//! The store: crash-safe writes, listing, retention, log cut point.

use std::fs;
use std::io::Write;

use paxos_core::{Epoch, NodeId, StateMachine, Zxid};
use paxos_snapshot::{snapshot_file_name, SnapshotError, SnapshotStore};

use crate::common::{meta, z, Blob};

fn store() -> (tempfile::TempDir, SnapshotStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SnapshotStore::open(dir.path())
        .expect("open store")
        .with_chunk_bytes(4096);
    (dir, store)
}

fn names(store: &SnapshotStore) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(store.dir())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn save_list_latest_restore() {
    let (_dir, store) = store();
    assert_eq!(store.latest().expect("list"), None);
    assert_eq!(store.log_cut_point().expect("list"), None);
    for (i, zxid) in [z(1, 5), z(2, 1), z(1, 9)].into_iter().enumerate() {
        let sm = Blob::filled(10_000 * (i + 1), i as u64, zxid);
        let saved = store.save(&sm, Epoch(2), &[NodeId(7)]).expect("save");
        assert_eq!(saved.zxid, zxid);
        assert_eq!(
            saved.file_bytes,
            fs::metadata(&saved.path).expect("stat").len()
        );
    }
    let listed: Vec<Zxid> = store.list().expect("list").iter().map(|s| s.zxid).collect();
    assert_eq!(listed, vec![z(1, 5), z(1, 9), z(2, 1)]);
    assert_eq!(store.log_cut_point().expect("list"), Some(z(2, 1)));
    let mut sm = Blob::default();
    let m = store.restore(z(1, 9), &mut sm).expect("restore");
    assert_eq!(sm, Blob::filled(30_000, 2, z(1, 9)));
    assert_eq!((m.epoch, m.voters), (Epoch(2), vec![NodeId(7)]));
    assert!(store.verify(z(2, 1)).is_ok());
    assert!(matches!(
        store.restore(z(9, 9), &mut sm),
        Err(SnapshotError::NotFound { .. })
    ));
}

#[test]
fn retention_keeps_the_newest_k() {
    let (_dir, store) = store();
    for c in 1..=5 {
        store
            .save(&Blob::filled(100, c as u64, z(1, c)), Epoch(1), &[])
            .expect("save");
    }
    let removed: Vec<Zxid> = store
        .retain(2)
        .expect("retain")
        .iter()
        .map(|s| s.zxid)
        .collect();
    assert_eq!(removed, vec![z(1, 1), z(1, 2), z(1, 3)]);
    let kept: Vec<Zxid> = store.list().expect("list").iter().map(|s| s.zxid).collect();
    assert_eq!(kept, vec![z(1, 4), z(1, 5)]);
    // Keeping 0 still keeps the newest: the log may have been cut to it.
    store.retain(0).expect("retain");
    assert_eq!(store.log_cut_point().expect("list"), Some(z(1, 5)));
    assert_eq!(store.list().expect("list").len(), 1);
}

#[test]
fn unfinished_writer_leaves_no_file_and_old_snapshot_intact() {
    let (_dir, store) = store();
    let old = Blob::filled(5000, 1, z(1, 1));
    store.save(&old, Epoch(1), &[]).expect("save");
    let before = names(&store);
    {
        let mut w = store.create(&meta(z(1, 2))).expect("create");
        w.write_all(&[7u8; 20_000]).expect("write");
        assert!(w.buffer_bytes() <= 4096 + 8, "writer memory is one chunk");
        assert_eq!(
            names(&store).len(),
            before.len() + 1,
            "temporary file exists while writing"
        );
        // Dropped without finish: a crash-equivalent abandonment.
    }
    assert_eq!(names(&store), before);
    let mut sm = Blob::default();
    store
        .restore(z(1, 1), &mut sm)
        .expect("old snapshot intact");
    assert_eq!(sm, old);
}

#[test]
fn temporary_files_from_a_crash_are_ignored_and_cleaned() {
    let (dir, store) = store();
    store
        .save(&Blob::filled(10, 1, z(1, 1)), Epoch(1), &[])
        .expect("save");
    // A crash mid-write leaves a temporary file with a torn snapshot in it.
    fs::write(
        dir.path().join(".snap-0000000100000002.1.0.tmp"),
        b"PXSNAP\r\ntorn",
    )
    .expect("write");
    // A crash before the rename of a complete file: still only a temp.
    assert_eq!(store.list().expect("list").len(), 1);
    let reopened = SnapshotStore::open(dir.path()).expect("reopen");
    assert_eq!(names(&reopened), vec![snapshot_file_name(z(1, 1))]);
}

#[test]
fn corruption_on_disk_is_reported_with_file_and_offset() {
    let (_dir, store) = store();
    let saved = store
        .save(&Blob::filled(20_000, 3, z(1, 1)), Epoch(1), &[])
        .expect("save");
    let mut bytes = fs::read(&saved.path).expect("read");
    bytes[10_000] ^= 0x01;
    fs::write(&saved.path, &bytes).expect("write");
    let err = store.verify(z(1, 1)).expect_err("corrupt");
    let msg = err.to_string();
    assert!(matches!(err, SnapshotError::ChunkChecksum { .. }), "{msg}");
    assert!(msg.contains(&snapshot_file_name(z(1, 1))), "{msg}");
    let mut sm = Blob::filled(3, 3, z(0, 1));
    let before = sm.clone();
    assert!(store.restore(z(1, 1), &mut sm).is_err());
    // The blob restores into a fresh buffer, so a failed read left it as is.
    assert_eq!(sm, before);
}

#[test]
fn file_named_for_another_zxid_is_refused() {
    let (_dir, store) = store();
    let saved = store
        .save(&Blob::filled(10, 1, z(1, 1)), Epoch(1), &[])
        .expect("save");
    fs::rename(&saved.path, store.path_of(z(1, 7))).expect("rename");
    assert!(matches!(
        store.open_reader(z(1, 7)),
        Err(SnapshotError::BadHeader { .. })
    ));
}

#[test]
fn state_machine_error_is_reported() {
    struct Failing;
    impl StateMachine for Failing {
        fn apply(&mut self, _: Zxid, _: &bytes::Bytes) -> bytes::Bytes {
            bytes::Bytes::new()
        }
        fn applied(&self) -> Zxid {
            z(1, 1)
        }
        fn snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
            out.write_all(b"partial")?;
            Err(std::io::Error::other("disk of the state machine failed"))
        }
        fn restore(&mut self, _: Zxid, _: &mut dyn std::io::Read) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (_dir, store) = store();
    let err = store
        .save(&Failing, Epoch(1), &[])
        .expect_err("snapshot fails");
    assert!(matches!(
        err,
        SnapshotError::StateMachine { op: "snapshot", .. }
    ));
    assert!(names(&store).is_empty(), "no file left behind");
}
