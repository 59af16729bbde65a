//! API behaviour: appends, reads, sync, truncation, reopen, errors, threads.

use std::sync::Arc;

use paxos_wal::{Wal, WalError, WalOptions};

use crate::{dump, payload_for, segment_files, small_opts};

#[test]
fn append_read_across_segments_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, report) = Wal::open(dir.path(), small_opts(16 << 10)).unwrap();
    assert_eq!(report.segments, 0);
    let keys: Vec<u64> = (1..=400).map(|i| i * 3).collect();
    for chunk in keys.chunks(7) {
        let payloads: Vec<Vec<u8>> = chunk.iter().map(|&k| payload_for(k)).collect();
        wal.append_batch(
            chunk
                .iter()
                .copied()
                .zip(payloads.iter().map(Vec::as_slice)),
        )
        .unwrap();
        assert_eq!(
            wal.durable_key(),
            if chunk[0] == 3 {
                None
            } else {
                Some(chunk[0] - 3)
            }
        );
        assert_eq!(wal.sync().unwrap(), Some(*chunk.last().unwrap()));
    }
    assert!(
        wal.segment_count() > 5,
        "small segments roll: {}",
        wal.segment_count()
    );
    let check = |wal: &Wal| {
        assert_eq!((wal.first_key(), wal.last_key()), (Some(3), Some(1200)));
        for &k in &keys {
            assert_eq!(
                wal.get(k).unwrap().as_deref(),
                Some(&payload_for(k)[..]),
                "key {k}"
            );
            assert_eq!(wal.get(k + 1).unwrap(), None);
        }
        let r = wal.reader();
        // From an absent key: starts at the next present one.
        let got: Vec<u64> = r.iter_from(601).map(|x| x.unwrap().key).collect();
        assert_eq!(
            got,
            keys.iter()
                .copied()
                .filter(|&k| k >= 601)
                .collect::<Vec<_>>()
        );
        assert_eq!(r.iter_from(1201).count(), 0);
        assert_eq!(dump(wal).len(), keys.len());
    };
    check(&wal);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), small_opts(16 << 10)).unwrap();
    assert_eq!(report.records, 400);
    assert!(
        report.torn_tail.is_none() && report.damaged.is_none(),
        "{report:?}"
    );
    assert_eq!(wal.durable_key(), Some(1200));
    check(&wal);
}

#[test]
fn rejects_bad_keys_and_sizes_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        max_payload_bytes: Some(1000),
        ..small_opts(16 << 10)
    };
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    assert!(matches!(
        wal.append(0, b"x"),
        Err(WalError::KeyNotIncreasing { key: 0, .. })
    ));
    wal.append(10, b"x").unwrap();
    assert!(matches!(
        wal.append(10, b"x"),
        Err(WalError::KeyNotIncreasing {
            key: 10,
            last_key: Some(10)
        })
    ));
    assert!(matches!(
        wal.append(9, b"x"),
        Err(WalError::KeyNotIncreasing { .. })
    ));
    assert!(matches!(
        wal.append(11, &[0; 1001]),
        Err(WalError::PayloadTooLarge {
            len: 1001,
            max: 1000
        })
    ));
    wal.append(11, &[7; 1000]).unwrap();
    // A failed record inside a batch keeps the ones before it.
    let r = wal.append_batch([(12, &b"a"[..]), (12, &b"b"[..]), (13, &b"c"[..])]);
    assert!(matches!(r, Err(WalError::KeyNotIncreasing { key: 12, .. })));
    assert_eq!(wal.last_key(), Some(12));
    drop(wal);

    let d2 = tempfile::tempdir().unwrap();
    for bad in [1000, 4096, 16 << 10 | 1, 2 << 30] {
        let r = Wal::open(
            d2.path(),
            WalOptions {
                segment_bytes: bad,
                ..WalOptions::default()
            },
        );
        assert!(
            matches!(r, Err(WalError::InvalidOptions(_))),
            "segment_bytes {bad}"
        );
    }
    let r = Wal::open(
        d2.path(),
        WalOptions {
            max_payload_bytes: Some(20 << 10),
            ..small_opts(16 << 10)
        },
    );
    assert!(
        matches!(r, Err(WalError::InvalidOptions(_))),
        "payload larger than a segment"
    );
    // The largest payload that fits is accepted.
    let (wal, _) = Wal::open(d2.path(), small_opts(16 << 10)).unwrap();
    wal.append(1, &vec![1; (16 << 10) - 64 - 24]).unwrap();
    wal.append(2, &vec![2; (16 << 10) - 64 - 24]).unwrap();
    assert_eq!(wal.segment_count(), 2);
    assert_eq!(wal.get(2).unwrap().unwrap().len(), (16 << 10) - 88);
}

#[test]
fn second_handle_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_wal, _) = Wal::open(dir.path(), small_opts(16 << 10)).unwrap();
    assert!(matches!(
        Wal::open(dir.path(), small_opts(16 << 10)),
        Err(WalError::Locked { .. })
    ));
}

#[test]
fn truncate_prefix_recycles_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        max_spare_segments: 3,
        ..small_opts(8 << 10)
    };
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    for k in 1..=300 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    wal.sync().unwrap();
    let before = wal.segment_count();
    assert!(before > 10);
    assert_eq!(
        wal.truncate_prefix(1).unwrap(),
        0,
        "nothing is entirely below key 1"
    );
    let removed = wal.truncate_prefix(150).unwrap();
    assert!(removed > 0);
    assert_eq!(wal.segment_count(), before - removed);
    let first = wal.first_key().unwrap();
    assert!(
        first <= 150,
        "the segment holding 150 is kept (first {first})"
    );
    assert_eq!(
        wal.spare_segments(),
        3,
        "freed segments are recycled up to the limit"
    );
    // Truncating past the end keeps the last segment.
    wal.truncate_prefix(u64::MAX).unwrap();
    assert_eq!(wal.segment_count(), 1);
    assert_eq!(wal.last_key(), Some(300));
    let kept = dump(&wal);
    assert!(!kept.is_empty() && kept.iter().all(|(k, p)| *p == payload_for(*k)));
    // Recycled segments hold old records: new ones must never be confused with them.
    for k in 301..=600 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    wal.sync().unwrap();
    let expect: Vec<(u64, Vec<u8>)> = (kept[0].0..=600).map(|k| (k, payload_for(k))).collect();
    assert_eq!(dump(&wal), expect);
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), opts).unwrap();
    assert!(
        report.torn_tail.is_none() && report.damaged.is_none(),
        "{report:?}"
    );
    assert_eq!(dump(&wal), expect);
}

#[test]
fn truncate_suffix_is_durable_and_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_opts(8 << 10)).unwrap();
    for k in 1..=200 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    wal.sync().unwrap();
    let segs = wal.segment_count();
    wal.truncate_suffix(250).unwrap();
    assert_eq!(wal.last_key(), Some(200), "no-op past the end");
    wal.truncate_suffix(37).unwrap();
    assert!(wal.segment_count() < segs);
    assert_eq!((wal.last_key(), wal.durable_key()), (Some(37), Some(37)));
    assert_eq!(wal.get(38).unwrap(), None);
    // Keys above the cut may be reused after a TRUNC.
    wal.append(38, b"new 38").unwrap();
    wal.append(39, b"new 39").unwrap();
    // Simulate a crash right now (nothing synced since the truncation).
    let crash = tempfile::tempdir().unwrap();
    crate::snapshot_dir(dir.path(), crash.path());
    drop(wal);
    for d in [dir.path(), crash.path()] {
        let (wal, _) = Wal::open(d, small_opts(8 << 10)).unwrap();
        let got = dump(&wal);
        let upto37: Vec<(u64, Vec<u8>)> = (1..=37).map(|k| (k, payload_for(k))).collect();
        assert_eq!(&got[..37], &upto37[..]);
        assert!(
            got[37..]
                .iter()
                .all(|(k, p)| p == format!("new {k}").as_bytes()),
            "old 38.. never come back"
        );
    }
    // Truncate everything: the log is empty but keeps working.
    let (wal, _) = Wal::open(dir.path(), small_opts(8 << 10)).unwrap();
    wal.truncate_suffix(0).unwrap();
    assert_eq!((wal.first_key(), wal.last_key()), (None, None));
    wal.append(5, b"five").unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, report) = Wal::open(dir.path(), small_opts(8 << 10)).unwrap();
    assert!(
        report.torn_tail.is_none() && report.damaged.is_none(),
        "{report:?}"
    );
    assert_eq!(dump(&wal), vec![(5, b"five".to_vec())]);
}

#[test]
fn concurrent_readers_with_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_opts(16 << 10)).unwrap();
    let wal = Arc::new(wal);
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let mut seen = 0;
                for _ in 0..2000 {
                    let r = wal.reader();
                    let last = r.last_key();
                    if let Some(l) = last {
                        assert_eq!(r.get(l).unwrap(), Some(&payload_for(l)[..]));
                        let n = r.iter_from(l.saturating_sub(5)).count();
                        assert!(n <= 6);
                        seen = seen.max(l);
                    }
                }
                seen
            })
        })
        .collect();
    for k in 1..=3000 {
        wal.append(k, &payload_for(k)).unwrap();
        if k % 50 == 0 {
            wal.sync().unwrap();
        }
    }
    for r in readers {
        r.join().unwrap();
    }
    assert_eq!(wal.get(3000).unwrap(), Some(payload_for(3000)));
}

#[test]
fn background_preparer_keeps_a_spare_and_files_are_fully_sized() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes: 64 << 10,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    for k in 1..=600 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    wal.sync().unwrap();
    assert!(wal.segment_count() >= 3);
    wal.close().unwrap();
    for f in segment_files(dir.path()) {
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 64 << 10, "{f:?}");
    }
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    assert_eq!(dump(&wal).len(), 600);
}

#[test]
fn fdatasync_method_is_equivalent() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        sync_method: paxos_wal::SyncMethod::Fdatasync,
        ..small_opts(16 << 10)
    };
    let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
    for k in 1..=100 {
        wal.append(k, &payload_for(k)).unwrap();
        assert_eq!(wal.sync().unwrap(), Some(k));
    }
    drop(wal);
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    assert_eq!(
        dump(&wal),
        (1..=100).map(|k| (k, payload_for(k))).collect::<Vec<_>>()
    );
}
