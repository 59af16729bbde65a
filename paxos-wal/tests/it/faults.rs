//! Disk errors through the fault-injection seam.

use std::sync::Arc;

use paxos_wal::{FaultPlan, Wal, WalError, WalOptions};

use crate::{dump, payload_for, small_opts};

fn opts_with(plan: &Arc<FaultPlan>) -> WalOptions {
    WalOptions {
        fault_plan: Some(Arc::clone(plan)),
        ..small_opts(8 << 10)
    }
}

#[test]
fn failed_sync_makes_handle_fatal_and_reopen_keeps_durable_state() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    let (wal, _) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    for k in 1..=50 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    assert_eq!(wal.sync().unwrap(), Some(50));
    for k in 51..=60 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    plan.fail_flush_in(1);
    let e = wal.sync().unwrap_err();
    assert!(matches!(e, WalError::SyncFailed { .. }), "{e}");
    assert!(wal.is_poisoned());
    assert_eq!(wal.durable_key(), Some(50), "a failed sync proves nothing");
    // No retry pretends success.
    assert!(matches!(wal.sync(), Err(WalError::Poisoned { .. })));
    assert!(matches!(
        wal.append(61, b"x"),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(
        wal.truncate_suffix(10),
        Err(WalError::Poisoned { .. })
    ));
    assert!(matches!(
        wal.truncate_prefix(10),
        Err(WalError::Poisoned { .. })
    ));
    drop(wal);
    let (wal, _) = Wal::open(dir.path(), small_opts(8 << 10)).unwrap();
    let got = dump(&wal);
    assert!(got.len() >= 50, "every durable record survives");
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, (k, p))| *k == i as u64 + 1 && *p == payload_for(*k)));
}

#[test]
fn enospc_on_segment_creation_leaves_log_usable() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    let (wal, _) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    wal.append(1, &payload_for(1)).unwrap();
    // The next segment creation fails, whenever the first segment fills.
    plan.fail_create_in(1);
    let mut k = 1;
    loop {
        assert!(k < 10_000, "segment never filled");
        match wal.append(k + 1, &payload_for(k + 1)) {
            Ok(()) => k += 1,
            Err(WalError::Io { source, .. }) => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(wal.segment_count(), 1, "no half-made segment");
    assert_eq!(wal.last_key(), Some(k), "the failed append changed nothing");
    assert!(!wal.is_poisoned());
    assert_eq!(wal.sync().unwrap(), Some(k));
    assert_eq!(wal.get(k).unwrap(), Some(payload_for(k)));
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .path()
        .to_string_lossy()
        .ends_with(".tmp")));
    // Space is back: the same append works.
    wal.append(k + 1, &payload_for(k + 1)).unwrap();
    assert_eq!(wal.segment_count(), 2);
    wal.sync().unwrap();
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), small_opts(8 << 10)).unwrap();
    assert!(report.torn_tail.is_none(), "{report:?}");
    assert_eq!(
        dump(&wal),
        (1..=k + 1).map(|k| (k, payload_for(k))).collect::<Vec<_>>()
    );
}

#[test]
fn failed_flush_in_truncate_suffix_is_fatal_and_reopen_is_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    let (wal, _) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    for k in 1..=100 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    wal.sync().unwrap();
    plan.fail_flush_in(1);
    assert!(matches!(
        wal.truncate_suffix(40),
        Err(WalError::SyncFailed { .. })
    ));
    assert!(matches!(
        wal.append(101, b"x"),
        Err(WalError::Poisoned { .. })
    ));
    drop(wal);
    let (wal, _) = Wal::open(dir.path(), small_opts(8 << 10)).unwrap();
    let got = dump(&wal);
    assert!(got.len() >= 40);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, (k, p))| *k == i as u64 + 1 && *p == payload_for(*k)));
}

#[test]
fn failed_directory_sync_on_roll_is_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    let (wal, _) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    wal.append(1, b"one").unwrap();
    wal.sync().unwrap();
    let mut k = 1;
    // The roll's directory fsync is the first flush after the segment fills.
    let err = loop {
        k += 1;
        assert!(k < 10_000, "segment never rolled");
        plan.fail_flush_in(1);
        match wal.append(k, &payload_for(k)) {
            Ok(()) => plan.fail_flush_in(0),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, WalError::SyncFailed { .. }), "{err}");
    assert!(wal.is_poisoned());
    drop(wal);
    let (wal, _) = Wal::open(dir.path(), small_opts(8 << 10)).unwrap();
    assert_eq!(wal.get(1).unwrap().as_deref(), Some(&b"one"[..]));
}

#[test]
fn failed_record_write_appends_nothing_and_leaves_log_usable() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    let (wal, _) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    for k in 1..=20 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    assert_eq!(wal.sync().unwrap(), Some(20));
    plan.fail_write_in(1);
    let batch: Vec<(u64, Vec<u8>)> = (21..=25).map(|k| (k, payload_for(k))).collect();
    let e = wal
        .append_batch(batch.iter().map(|(k, p)| (*k, &p[..])))
        .unwrap_err();
    assert!(matches!(e, WalError::WriteFailed { .. }), "{e}");
    assert!(!wal.is_poisoned(), "a failed record write is not fatal");
    assert_eq!(
        wal.last_key(),
        Some(20),
        "none of the failed batch appended"
    );
    assert_eq!(wal.get(21).unwrap(), None);
    // The same keys go in on the next try, and everything syncs.
    assert_eq!(
        wal.append_batch(batch.iter().map(|(k, p)| (*k, &p[..])))
            .unwrap(),
        5
    );
    assert_eq!(wal.sync().unwrap(), Some(25));
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), small_opts(8 << 10)).unwrap();
    assert!(report.damaged.is_none(), "{report:?}");
    let got = dump(&wal);
    assert_eq!(got.len(), 25);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, (k, p))| *k == i as u64 + 1 && *p == payload_for(*k)));
}

#[test]
fn failed_write_while_rolling_is_fatal_and_reopen_keeps_durable_state() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(FaultPlan::default());
    let (wal, _) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    let segments = wal.segment_count();
    let mut k = 1;
    // Fill the first 8 KiB segment, syncing as we go.
    while wal.segment_count() == segments {
        wal.append(k, &payload_for(k)).unwrap();
        wal.sync().unwrap();
        k += 1;
    }
    let durable = wal.durable_key();
    // Arm the second write from now: an append that fits takes only the
    // first (and the fault is disarmed); one that rolls writes the new
    // segment's header, then its end marker, which fails.
    let before = wal.segment_count();
    let mut failed = None;
    for _ in 0..200 {
        plan.fail_write_in(2);
        match wal.append(k, &vec![7u8; 1500]) {
            Ok(()) => {
                plan.fail_write_in(0);
                wal.sync().unwrap();
                k += 1;
                if wal.segment_count() > before {
                    break;
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let e = failed.expect("some append had to roll and hit the armed write");
    assert!(matches!(e, WalError::WriteFailed { .. }), "{e}");
    assert!(wal.is_poisoned(), "a failed write while rolling is fatal");
    let durable_now = wal.durable_key();
    assert!(durable_now >= durable);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), small_opts(8 << 10)).unwrap();
    assert!(report.damaged.is_none(), "{report:?}");
    assert!(
        wal.last_key() >= durable_now,
        "every durable record survives"
    );
}
