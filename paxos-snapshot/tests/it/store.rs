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

const CRASH_CHILD_ENV: &str = "PAXOS_SNAPSHOT_CRASH_CHILD_DIR";
const CRASH_STATE_BYTES: usize = 3 << 20;

/// Child half of the crash test: writes snapshots (and prunes) until killed.
/// Does nothing unless started by the parent with the environment variable.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) else {
        return;
    };
    let store = SnapshotStore::open(dir)
        .expect("open")
        .with_chunk_bytes(64 << 10);
    // Bounded: the parent kills it long before this ends.
    for c in 1..=10_000u32 {
        let sm = Blob::filled(CRASH_STATE_BYTES, u64::from(c), z(1, c));
        store.save(&sm, Epoch(1), &[NodeId(1)]).expect("save");
        store.retain(2).expect("retain");
    }
}

#[test]
fn killed_writer_leaves_old_or_new_snapshot_never_torn() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    for round in 0..4u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "store::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        // Let it get a few snapshots in (bounded wait), then kill it at an
        // arbitrary point of its write loop.
        let deadline = Instant::now() + Duration::from_secs(30);
        let want = (round as usize % 2) + 1; // at most 2 kept + 1 temporary
        loop {
            let n = fs::read_dir(dir.path()).map(|d| d.count()).unwrap_or(0);
            if n > want || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(3 + round * 7));
        child.kill().expect("kill child");
        child.wait().expect("reap child");

        let store = SnapshotStore::open(dir.path()).expect("reopen after crash");
        let listed = store.list().expect("list");
        assert!(
            !listed.is_empty(),
            "round {round}: the child wrote at least one snapshot"
        );
        for s in &listed {
            // Every file under a snapshot name is complete and verifies...
            store
                .verify(s.zxid)
                .unwrap_or_else(|e| panic!("round {round}: torn snapshot: {e}"));
        }
        // ...and holds exactly the state it names.
        let latest = listed.last().expect("non-empty");
        let mut sm = Blob::default();
        store.restore(latest.zxid, &mut sm).expect("restore");
        assert_eq!(
            sm,
            Blob::filled(
                CRASH_STATE_BYTES,
                u64::from(latest.zxid.counter()),
                latest.zxid
            )
        );
        let temps = fs::read_dir(dir.path())
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
            .count();
        assert_eq!(temps, 0, "open removed the crashed write's temporary file");
    }
}
