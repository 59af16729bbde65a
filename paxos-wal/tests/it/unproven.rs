//! After a failed flush, Linux may mark the dirty pages clean without having
//! written them (PostgreSQL's "fsyncgate"): a retried flush, or the flush of
//! a process restarted without a reboot, then succeeds while the disk does
//! not hold the data, and reads through the page cache still show it. These
//! tests drive that with the fault plan's page-cache model and a power cut
//! afterwards: whatever a reopen treats as durable must survive the cut.

use std::sync::Arc;

use paxos_wal::{FaultPlan, HardStateRecord, HardStateStore, Wal, WalError, WalOptions};

use crate::{dump, payload_for, small_opts};

fn modelled() -> Arc<FaultPlan> {
    let plan = Arc::new(FaultPlan::default());
    plan.model_page_cache();
    plan
}

fn opts_with(plan: &Arc<FaultPlan>) -> WalOptions {
    WalOptions {
        fault_plan: Some(Arc::clone(plan)),
        ..small_opts(64 << 10)
    }
}

/// Records of several pages each, so that the records a failed flush left
/// unwritten do not all share the page of the end marker.
fn big(key: u64) -> Vec<u8> {
    vec![key as u8; 6000]
}

#[test]
fn reopen_after_failed_flush_does_not_trust_pages_left_clean_unwritten() {
    let dir = tempfile::tempdir().unwrap();
    let plan = modelled();
    let (wal, _) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    for k in 1..=5 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    assert_eq!(wal.sync().unwrap(), Some(5));
    for k in 6..=8 {
        wal.append(k, &big(k)).unwrap();
    }
    plan.fail_flush_in(1);
    let e = wal.sync().unwrap_err();
    assert!(matches!(e, WalError::SyncFailed { .. }), "{e}");
    assert!(
        matches!(wal.sync(), Err(WalError::Poisoned { .. })),
        "no retried sync on the handle reports success"
    );
    assert_eq!(wal.durable_key(), Some(5));
    drop(wal);

    // The node exits and restarts without a reboot: the page cache still
    // shows keys 6..=8, which the disk does not hold.
    let (wal, _) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    let kept = dump(&wal);
    assert!(kept.len() >= 5, "the synced records are kept");
    assert_eq!(
        wal.durable_key(),
        kept.last().map(|r| r.0),
        "the reopened log treats everything it kept as durable"
    );
    wal.close().unwrap();

    let restored = plan.power_cut(&[dir.path()]).unwrap();
    let (wal, report) = match Wal::open(dir.path(), opts_with(&plan)) {
        Ok(x) => x,
        Err(e) => panic!(
            "after the power cut ({restored} pages not on disk) the log the reopen \
             called durable is damaged: {e}"
        ),
    };
    assert!(report.damaged.is_none(), "{report:?}");
    assert_eq!(
        dump(&wal),
        kept,
        "every record the reopen treated as durable survives the power cut"
    );
    for k in 1..=5 {
        assert_eq!(wal.get(k).unwrap(), Some(payload_for(k)));
    }
}

#[test]
fn hard_state_reopen_after_failed_flush_does_not_trust_the_unwritten_slot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hardstate");
    let plan = modelled();
    let mut store = HardStateStore::open_with_faults(&path, Some(Arc::clone(&plan))).unwrap();
    let a = HardStateRecord {
        accepted_epoch: 5,
        current_epoch: 4,
        ..HardStateRecord::default()
    };
    store.set(&a).unwrap();
    plan.fail_flush_in(1);
    let b = HardStateRecord {
        accepted_epoch: 6,
        current_epoch: 5,
        ..HardStateRecord::default()
    };
    assert!(matches!(store.set(&b), Err(WalError::SyncFailed { .. })));
    assert!(matches!(store.set(&b), Err(WalError::Poisoned { .. })));
    drop(store);

    // Restart without a reboot: the page cache shows the slot holding `b`.
    let store = HardStateStore::open_with_faults(&path, Some(Arc::clone(&plan))).unwrap();
    let seen = store.get();
    assert!(seen == a || seen == b, "{seen:?}");
    drop(store);

    plan.power_cut(&[dir.path()]).unwrap();
    let store = HardStateStore::open(&path).unwrap();
    assert_eq!(
        store.get(),
        seen,
        "the value a reopen reported survives a power cut"
    );
}

#[test]
fn reopen_rewrites_the_unproven_tail_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let plan = modelled();
    let (wal, _) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    for k in 1..=5 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    wal.sync().unwrap();
    for k in 6..=8 {
        wal.append(k, &big(k)).unwrap();
    }
    plan.fail_flush_in(1);
    assert!(wal.sync().is_err());
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    let t = report
        .rewritten
        .expect("keys 6..=8 were past every watermark");
    assert_eq!((t.proven_through, t.first_key, t.last_key), (5, 6, 8));
    assert!(t.bytes >= 3 * 6000, "{t:?}");
    assert_eq!(wal.durable_key(), Some(8));
    wal.close().unwrap();
    // A clean close leaves a marker proving everything: nothing to rewrite.
    let (wal, report) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    assert_eq!(report.rewritten, None);
    assert_eq!(wal.last_key(), Some(8));
}

#[test]
fn reopen_refuses_when_the_unproven_tail_cannot_be_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let plan = modelled();
    let (wal, _) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    for k in 1..=5 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    wal.sync().unwrap();
    for k in 6..=8 {
        wal.append(k, &big(k)).unwrap();
    }
    plan.fail_flush_in(1);
    assert!(wal.sync().is_err());
    drop(wal);

    // The disk still fails: the flush after the rewrite is the first flush
    // of the open (one segment, no torn tail).
    plan.fail_flush_in(1);
    let e = Wal::open(dir.path(), opts_with(&plan)).unwrap_err();
    match &e {
        WalError::UnprovenData { what, op, .. } => {
            assert_eq!(*op, "flush");
            assert!(what.contains("keys 6..=8"), "{what}");
        }
        other => panic!("expected UnprovenData, got {other}"),
    }
    // Nothing claimed keys 6..=8 durable: a power cut now loses them, and
    // the log is still sound.
    plan.power_cut(&[dir.path()]).unwrap();
    let (wal, report) = Wal::open(dir.path(), opts_with(&plan)).unwrap();
    assert!(report.damaged.is_none(), "{report:?}");
    let got = dump(&wal);
    assert!(got.len() >= 5);
    for k in 1..=5 {
        assert_eq!(wal.get(k).unwrap(), Some(payload_for(k)));
    }
}

#[test]
fn hard_state_reopen_refuses_when_the_rewrite_cannot_be_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hardstate");
    let plan = modelled();
    let mut store = HardStateStore::open_with_faults(&path, Some(Arc::clone(&plan))).unwrap();
    let a = HardStateRecord {
        accepted_epoch: 2,
        ..HardStateRecord::default()
    };
    store.set(&a).unwrap();
    drop(store);
    plan.fail_flush_in(1);
    let e = HardStateStore::open_with_faults(&path, Some(Arc::clone(&plan))).unwrap_err();
    assert!(
        matches!(e, WalError::UnprovenData { op: "flush", .. }),
        "{e}"
    );
    assert_eq!(HardStateStore::open(&path).unwrap().get(), a);
}
