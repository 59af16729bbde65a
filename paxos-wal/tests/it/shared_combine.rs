//! Write combining in the shared log (`SharedLog::set_combine_writes`):
//! staged batches are readable at once, reach the file together, survive a
//! reopen once synced; a batch that needs a new segment is written at once
//! (so a full disk refuses it and leaves the log usable); a failed flush
//! makes the handle fatal.

use std::sync::Arc;

use paxos_wal::shared::{Op, SharedError, SharedLog};
use paxos_wal::{FaultPlan, WalError, WalOptions};

use crate::small_opts;

fn opts_with(plan: &Arc<FaultPlan>) -> WalOptions {
    WalOptions {
        fault_plan: Some(Arc::clone(plan)),
        ..small_opts(64 << 10)
    }
}

fn body(g: u64, k: u64) -> Vec<u8> {
    format!("group {g} key {k}").into_bytes()
}

/// One batch per group for `groups`, each with one entry at `key`.
fn write_round(log: &SharedLog, groups: u64, key: u64) {
    for g in 0..groups {
        let p = body(g, key);
        log.write(&[Op::Entry {
            group: g,
            key,
            tagged: false,
            payload: &p,
        }])
        .unwrap();
    }
}

#[test]
fn staged_batches_are_readable_at_once_and_reach_the_file_in_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    let (log, _) = SharedLog::open(dir.path(), opts_with(&plan)).unwrap();
    // A first record without combining: the log has its active segment.
    log.append(0, 1, &body(0, 1)).unwrap();
    log.set_combine_writes(true);
    write_round(&log, 8, 2);
    write_round(&log, 8, 3);
    assert_eq!(log.last_lsn(), Some(17), "the index took all 16 batches");
    assert_eq!(
        log.wal().last_key(),
        Some(1),
        "the batches are staged, not in the file"
    );
    // 16 batches go in one positioned write: the second write from now
    // would fail, and the flush does not.
    plan.fail_write_in(2);
    log.flush().unwrap();
    plan.fail_write_in(0);
    assert_eq!(log.wal().last_key(), Some(17));
    assert!(!log.is_poisoned());

    // A read of a staged record flushes first; one of records already in
    // the file does not.
    write_round(&log, 8, 4);
    assert_eq!(log.get(3, 2).unwrap(), Some(body(3, 2)));
    assert_eq!(
        log.wal().last_key(),
        Some(17),
        "group 3's key 2 was in the file"
    );
    assert_eq!(log.get(5, 4).unwrap(), Some(body(5, 4)));
    assert_eq!(
        log.wal().last_key(),
        Some(25),
        "the read flushed the staged round"
    );

    // A sync flushes, and what it covered survives a reopen.
    write_round(&log, 8, 5);
    assert_eq!(log.sync().unwrap(), Some(33));
    drop(log);
    let (log, report) = SharedLog::open(dir.path(), small_opts(64 << 10)).unwrap();
    assert!(report.wal.torn_tail.is_none(), "{report:?}");
    for g in 0..8 {
        let keys: Vec<u64> = (2..=5).collect();
        let mut got = Vec::new();
        log.read(g, 0, usize::MAX, usize::MAX, |e| {
            assert_eq!(e.payload, body(g, e.key));
            got.push(e.key);
        })
        .unwrap();
        let want: Vec<u64> = if g == 0 {
            std::iter::once(1).chain(keys).collect()
        } else {
            keys
        };
        assert_eq!(got, want, "group {g}");
    }
}

#[test]
fn staged_batches_not_flushed_are_lost_whole_at_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = SharedLog::open(dir.path(), small_opts(64 << 10)).unwrap();
    log.append(0, 1, b"synced").unwrap();
    log.set_combine_writes(true);
    write_round(&log, 4, 2);
    assert_eq!(log.sync().unwrap(), Some(5));
    write_round(&log, 4, 3);
    // Dropped without close: like a process killed, the staged round never
    // reached the file (it was never synced, so never acknowledged).
    drop(log);
    let (log, _) = SharedLog::open(dir.path(), small_opts(64 << 10)).unwrap();
    assert_eq!(log.last_lsn(), Some(5));
    for g in 0..4 {
        assert_eq!(log.last_key(g), Some(2), "group {g}");
    }
}

#[test]
fn a_combined_batch_that_needs_a_segment_is_written_at_once_and_a_full_disk_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    let (log, _) = SharedLog::open(dir.path(), opts_with(&plan)).unwrap();
    log.append(0, 1, &body(0, 1)).unwrap();
    log.set_combine_writes(true);
    plan.fail_create_in(1);
    let payload = vec![7u8; 3000];
    let mut key = 1;
    let refused = loop {
        assert!(key < 1000, "the first segment never filled");
        match log.append(1, key + 1, &payload) {
            Ok(_) => key += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(&refused, SharedError::Wal(WalError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOSPC)),
        "{refused}"
    );
    assert!(!log.is_poisoned(), "a full disk leaves the log usable");
    assert_eq!(
        log.last_key(1),
        Some(key),
        "the refused entry is not in the index"
    );
    assert_eq!(log.wal().segment_count(), 1);
    // What was staged before the refusal went to the file first.
    assert_eq!(log.wal().last_key(), log.last_lsn());
    // Space is back: the same entry goes in, in a new segment.
    log.append(1, key + 1, &payload).unwrap();
    assert_eq!(log.wal().segment_count(), 2);
    log.sync().unwrap();
    drop(log);
    let (log, _) = SharedLog::open(dir.path(), small_opts(64 << 10)).unwrap();
    assert_eq!(log.len(1), key as usize);
    assert_eq!(log.get(1, key + 1).unwrap(), Some(payload));
}

#[test]
fn a_failed_flush_makes_the_handle_fatal_and_a_reopen_keeps_what_was_synced() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    let (log, _) = SharedLog::open(dir.path(), opts_with(&plan)).unwrap();
    log.append(0, 1, &body(0, 1)).unwrap();
    log.set_combine_writes(true);
    write_round(&log, 4, 2);
    assert_eq!(log.sync().unwrap(), Some(5));
    write_round(&log, 4, 3);
    plan.fail_write_in(1);
    let e = log.flush().unwrap_err();
    assert!(matches!(e, SharedError::Unflushed { .. }), "{e}");
    plan.fail_write_in(0);
    assert!(log.is_poisoned());
    // Nothing pretends success from now on.
    assert!(matches!(log.flush(), Err(SharedError::Unflushed { .. })));
    assert!(matches!(log.sync(), Err(SharedError::Unflushed { .. })));
    assert!(matches!(
        log.append(0, 9, b"x"),
        Err(SharedError::Unflushed { .. })
    ));
    assert!(matches!(
        log.read(2, 0, 10, usize::MAX, |_| {}),
        Err(SharedError::Unflushed { .. })
    ));
    drop(log);
    let (log, report) = SharedLog::open(dir.path(), small_opts(64 << 10)).unwrap();
    assert!(report.wal.damaged.is_none(), "{report:?}");
    for g in 0..4 {
        assert_eq!(log.last_key(g), Some(2), "group {g} keeps its synced entry");
        assert_eq!(log.get(g, 2).unwrap(), Some(body(g, 2)));
    }
}

#[test]
fn turning_combining_off_writes_what_is_staged_before_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = SharedLog::open(dir.path(), small_opts(64 << 10)).unwrap();
    log.append(0, 1, &body(0, 1)).unwrap();
    log.set_combine_writes(true);
    write_round(&log, 3, 2);
    log.set_combine_writes(false);
    log.append(0, 3, &body(0, 3)).unwrap();
    assert_eq!(
        log.wal().last_key(),
        Some(5),
        "staged first, then the direct write"
    );
    log.sync().unwrap();
    drop(log);
    let (log, _) = SharedLog::open(dir.path(), small_opts(64 << 10)).unwrap();
    assert_eq!(log.get(0, 3).unwrap(), Some(body(0, 3)));
    assert_eq!(log.get(2, 2).unwrap(), Some(body(2, 2)));
}
