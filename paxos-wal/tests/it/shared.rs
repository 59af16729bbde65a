//! The shared log (feature `shared`): API, `GroupStorage`, reclaim,
//! corruption, and the record-header decoder.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use paxos_core::{
    Entry, EntryKind, Epoch, GroupId, HardState, MetaKey, Ready, Storage, StorageError, Zxid,
};
use paxos_wal::shared::{
    decode_record, Op, RecordHeader, RecordKind, SharedError, SharedLog, HEADER_BYTES,
    MAX_META_BYTES,
};
use paxos_wal::{Wal, WalError, WalOptions, MIN_SEGMENT_BYTES};
use proptest::prelude::*;

use crate::{segment_files, small_opts};

fn open(dir: &std::path::Path, opts: WalOptions) -> SharedLog {
    SharedLog::open(dir, opts).unwrap().0
}

fn entries_of(log: &SharedLog, group: u64) -> Vec<(u64, bool, Vec<u8>)> {
    let mut out = Vec::new();
    log.read(group, 0, usize::MAX, usize::MAX, |e| {
        out.push((e.key, e.tagged, e.payload.to_vec()))
    })
    .unwrap();
    out
}

#[test]
fn batches_span_groups_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_opts(64 << 10));
    let last = log
        .write(&[
            Op::Entry {
                group: 1,
                key: 5,
                tagged: false,
                payload: b"1.5",
            },
            Op::Entry {
                group: 2,
                key: 5,
                tagged: true,
                payload: b"2.5",
            },
            Op::Entry {
                group: 1,
                key: 9,
                tagged: false,
                payload: b"",
            },
            Op::Meta {
                group: 3,
                state: b"idle",
            },
        ])
        .unwrap();
    assert_eq!(last, Some(4));
    assert_eq!(log.sync().unwrap(), Some(4));
    // Keys are per group: group 2 may reuse group 1's keys, but not its own.
    assert!(matches!(
        log.append(2, 5, b"again"),
        Err(SharedError::KeyNotIncreasing {
            group: 2,
            key: 5,
            last: Some(5)
        })
    ));
    // A refused op leaves the whole batch unwritten.
    let err = log
        .write(&[
            Op::Entry {
                group: 4,
                key: 1,
                tagged: false,
                payload: b"x",
            },
            Op::Entry {
                group: 1,
                key: 2,
                tagged: false,
                payload: b"y",
            },
        ])
        .unwrap_err();
    assert!(matches!(
        err,
        SharedError::KeyNotIncreasing { group: 1, .. }
    ));
    assert!(!log.contains_group(4), "the batch's new group was undone");
    assert_eq!(log.last_lsn(), Some(4));
    assert_eq!(log.groups(), [1, 2, 3]);
    assert_eq!((log.first_key(1), log.last_key(1)), (Some(5), Some(9)));
    assert_eq!(log.last_key_below(1, 9), Some(5));
    assert_eq!(log.first_key_from(1, 6), Some(9));
    assert_eq!(log.get(1, 9).unwrap(), Some(Vec::new()));
    assert_eq!(log.get(1, 7).unwrap(), None);
    assert_eq!(log.meta(3), Some(b"idle".to_vec()));
    assert_eq!(log.meta(1), None);
    let big = vec![1u8; MAX_META_BYTES + 1];
    assert!(matches!(
        log.save_meta(1, &big),
        Err(SharedError::MetaTooLarge { .. })
    ));

    // Truncations, then a suffix rewritten with new keys.
    log.truncate_suffix(1, 5).unwrap();
    log.append(1, 6, b"1.6").unwrap();
    log.truncate_prefix(2, 5).unwrap();
    assert_eq!(log.len(2), 0);
    assert!(log.remove_group(3).unwrap());
    assert!(!log.remove_group(3).unwrap(), "nothing to remove twice");
    log.sync().unwrap();
    let before: Vec<_> = [1, 2].iter().map(|&g| entries_of(&log, g)).collect();
    assert_eq!(
        before[0],
        [(5, false, b"1.5".to_vec()), (6, false, b"1.6".to_vec())]
    );
    drop(log);

    let (log, report) = SharedLog::open(dir.path(), small_opts(64 << 10)).unwrap();
    assert_eq!(report.records, 8);
    assert_eq!(log.groups(), [1, 2], "group 3 was removed");
    let after: Vec<_> = [1, 2].iter().map(|&g| entries_of(&log, g)).collect();
    assert_eq!(after, before);
    assert_eq!(log.meta(3), None);
    // The byte limit stops a read after its first entry.
    let mut n = 0;
    assert_eq!(log.read(1, 0, 10, 1, |_| n += 1).unwrap(), 1);
}

#[test]
fn appends_and_syncs_run_on_different_threads() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(dir.path(), small_opts(64 << 10)));
    let syncer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut last = None;
            for _ in 0..200 {
                let d = log.sync().unwrap();
                assert!(d >= last, "the durable LSN never goes back");
                last = d;
            }
        })
    };
    for key in 1..=300u64 {
        let ops: Vec<Op<'_>> = (0..8)
            .map(|g| Op::Entry {
                group: g,
                key,
                tagged: false,
                payload: b"0123456789",
            })
            .collect();
        log.write(&ops).unwrap();
    }
    syncer.join().unwrap();
    assert_eq!(log.sync().unwrap(), Some(2400));
    drop(log);
    let log = open(dir.path(), small_opts(64 << 10));
    for g in 0..8 {
        assert_eq!(log.len(g), 300);
    }
}

#[test]
fn reclaim_rewrites_idle_states_and_reports_holders() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_opts(MIN_SEGMENT_BYTES);
    let log = open(dir.path(), opts.clone());
    let pad = vec![7u8; 1000];
    // Group 1 idle with a state; group 2 holds old entries; group 3 churns.
    log.save_meta(1, b"idle state").unwrap();
    log.append(2, 1, b"old").unwrap();
    for key in 1..=60 {
        log.append(3, key, &pad).unwrap();
    }
    log.sync().unwrap();
    assert!(log.segment_count() > 4);
    log.truncate_prefix(3, 55).unwrap();
    let r = log.compact().unwrap();
    assert_eq!(
        r.segments_removed, 0,
        "group 2's entry holds the oldest segment"
    );
    assert_eq!(r.holders.len(), 2);
    assert_eq!((r.holders[0].group, r.holders[0].first_key), (2, 1));
    assert_eq!(r.holders[1].group, 3, "then group 3's retained entries");
    // The report says where the oldest segment ends, so that a host asks
    // only the groups that keep it: group 2 alone.
    assert_eq!(r.segments, log.segment_count());
    let end = r.oldest_segment_end.expect("more than one segment");
    let keepers: Vec<u64> = r
        .holders
        .iter()
        .filter(|h| h.lsn < end)
        .map(|h| h.group)
        .collect();
    assert_eq!(keepers, [2], "{r:?}");
    // Group 2 snapshots and truncates: now only group 1's state is old.
    log.truncate_prefix(2, 1).unwrap();
    let segments = log.segment_count();
    let r = log.compact().unwrap();
    assert!(r.segments_removed > 0, "{r:?}");
    assert_eq!(r.metas_rewritten, 1, "the idle group's state moved");
    assert_eq!(log.segment_count(), segments - r.segments_removed);
    assert!(
        r.holders.iter().all(|h| h.group == 3),
        "only the churning group may still hold: {r:?}"
    );
    // Group 3 truncates all but its last entry: one compaction frees all
    // but its segment, and the idle group never holds one.
    log.truncate_prefix(3, 59).unwrap();
    for _ in 0..3 {
        log.compact().unwrap();
    }
    assert!(log.segment_count() <= 2, "{}", log.segment_count());
    drop(log);
    let log = open(dir.path(), opts);
    assert_eq!(log.meta(1), Some(b"idle state".to_vec()));
    assert_eq!(log.len(2), 0);
    assert_eq!(entries_of(&log, 3), [(60, false, pad.clone())]);
}

#[test]
fn flipped_byte_in_a_synced_record_is_reported_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_opts(64 << 10);
    let marker = b"FIND-ME-PAYLOAD-0123456789";
    {
        let log = open(dir.path(), opts.clone());
        log.append(1, 1, b"before").unwrap();
        log.append(2, 1, marker).unwrap();
        log.append(1, 2, b"after").unwrap();
        log.sync().unwrap();
    }
    let seg = segment_files(dir.path())[0].clone();
    let bytes = std::fs::read(&seg).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .unwrap();
    let flip = |off: usize, v: u8| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .write_all_at(&[v], off as u64)
            .unwrap();
    };

    // While the log is open: the read fails its checksum.
    {
        let log = open(dir.path(), opts.clone());
        flip(at + 3, bytes[at + 3] ^ 0x40);
        let err = log.get(2, 1).unwrap_err();
        assert!(
            matches!(err, SharedError::Wal(WalError::ReadCorruption { .. })),
            "{err}"
        );
        assert_eq!(log.get(1, 1).unwrap(), Some(b"before".to_vec()));
        drop(log);
    }
    // On open: the damage is in the synced part, so it is corruption.
    let err = SharedLog::open(dir.path(), opts.clone()).unwrap_err();
    assert!(
        matches!(err, SharedError::Wal(WalError::Corrupted { .. })),
        "{err}"
    );
    // A damaged record header byte (the group id) is caught the same way.
    flip(at + 3, bytes[at + 3]);
    flip(at - HEADER_BYTES + 1, bytes[at - HEADER_BYTES + 1] ^ 1);
    assert!(matches!(
        SharedLog::open(dir.path(), opts.clone()),
        Err(SharedError::Wal(WalError::Corrupted { .. }))
    ));
    flip(at - HEADER_BYTES + 1, bytes[at - HEADER_BYTES + 1]);
    assert_eq!(
        open(dir.path(), opts).get(2, 1).unwrap(),
        Some(marker.to_vec())
    );
}

#[test]
fn records_that_are_not_shared_log_records_stop_the_open() {
    let opts = small_opts(64 << 10);
    let cases: [(&str, Vec<Vec<u8>>); 4] = [
        ("short", vec![vec![1, 2, 3]]),
        ("unknown kind", vec![vec![77; HEADER_BYTES]]),
        ("truncation with a body", {
            let mut p = RecordHeader {
                kind: RecordKind::TruncatePrefix,
                group: 1,
                key: 1,
            }
            .encode()
            .to_vec();
            p.push(0);
            vec![p]
        }),
        ("keys going back", {
            let h = |key| {
                RecordHeader {
                    kind: RecordKind::Entry,
                    group: 4,
                    key,
                }
                .encode()
                .to_vec()
            };
            vec![h(9), h(3)]
        }),
    ];
    for (what, records) in cases {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
            for (i, r) in records.iter().enumerate() {
                wal.append(i as u64 + 1, r).unwrap();
            }
            wal.close().unwrap();
        }
        let err = SharedLog::open(dir.path(), opts.clone()).unwrap_err();
        let lsn = records.len() as u64;
        assert!(
            matches!(&err, SharedError::BadRecord { lsn: l, .. } if *l == lsn),
            "{what}: {err}"
        );
    }
}

fn z(e: u32, c: u32) -> Zxid {
    Zxid::new(Epoch(e), c)
}

fn cmd(e: u32, c: u32) -> Entry {
    Entry::command(z(e, c), Bytes::from(format!("{e}.{c}")))
}

fn config(e: u32, c: u32) -> Entry {
    Entry {
        kind: EntryKind::Config,
        zxid: z(e, c),
        data: Bytes::from(format!("members {e}.{c}")),
    }
}

fn all(s: &impl Storage) -> Vec<Entry> {
    let mut out = Vec::new();
    if let Some(first) = s.first_zxid() {
        s.entries(first, usize::MAX, usize::MAX, &mut out).unwrap();
    }
    out
}

#[test]
fn group_storage_keeps_each_groups_log_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_opts(64 << 10);
    let hs = HardState {
        accepted_epoch: Epoch(4),
        current_epoch: Epoch(3),
    };
    let log_a: Vec<Entry> = (1..=5)
        .map(|c| cmd(1, c))
        .chain([config(2, 1)])
        .chain((2..=4).map(|c| cmd(2, c)))
        .chain((1..=3).map(|c| cmd(3, c)))
        .collect();
    {
        let log = Arc::new(open(dir.path(), opts.clone()));
        let mut a = log.group(GroupId(10)).unwrap();
        let mut b = log.group(GroupId(11)).unwrap();
        assert!(a.created() && b.created());
        a.append(&log_a).unwrap();
        assert!(matches!(
            a.append(&[cmd(1, 9)]),
            Err(StorageError::OutOfOrder { .. })
        ));
        b.append(&[cmd(1, 1)]).unwrap();
        // A Ready's writes go in one batch: truncation, entries, state.
        let mut ready = Ready::default();
        ready.truncate_after = Some(z(1, 0));
        ready.entries = vec![cmd(2, 1), config(2, 2)];
        ready.hard_state = Some(hs);
        ready.recovering = Some(true);
        b.write_ready(&ready).unwrap();
        assert_eq!(b.hard_state(), hs);
        assert!(b.recovering());
        b.save_meta(MetaKey::ElectionRound, 77).unwrap();
        a.save_meta(MetaKey::CompactionMark, 5).unwrap();
        a.sync().unwrap();
    }
    let log = Arc::new(open(dir.path(), opts.clone()));
    let mut a = log.group(GroupId(10)).unwrap();
    let b = log.group(GroupId(11)).unwrap();
    assert!(!a.created() && !b.created());
    assert_eq!(all(&a), log_a);
    assert_eq!(all(&b), [cmd(2, 1), config(2, 2)]);
    assert_eq!(
        a.epoch_ends().unwrap(),
        [z(1, 5), z(2, 4), z(3, 3)],
        "one end per epoch"
    );
    assert_eq!(a.config_entries().unwrap(), [config(2, 1)]);
    assert_eq!(b.config_entries().unwrap(), [config(2, 2)]);
    assert_eq!(
        (
            b.hard_state(),
            b.recovering(),
            b.meta(MetaKey::ElectionRound)
        ),
        (hs, true, 77)
    );
    assert_eq!(a.hard_state(), HardState::default());
    assert_eq!(a.meta(MetaKey::CompactionMark), 5);
    // Prefix truncation is exact, and reading below it says so.
    a.truncate_prefix(z(1, 3)).unwrap();
    assert_eq!(a.first_zxid(), Some(z(1, 4)));
    let mut out = Vec::new();
    assert_eq!(
        a.entries(z(1, 2), 10, usize::MAX, &mut out),
        Err(StorageError::Compacted(z(1, 2)))
    );
    a.truncate_suffix(z(2, 1)).unwrap();
    assert_eq!(a.epoch_ends().unwrap(), [z(1, 5), z(2, 1)]);
    a.remove().unwrap();
    log.sync().unwrap();
    drop((b, log));
    let log = Arc::new(open(dir.path(), opts));
    assert_eq!(log.groups(), [11]);
    assert!(log.group(GroupId(10)).unwrap().created());
}

/// The header decoder's CI twin of a fuzz target: any bytes decode or are
/// refused, never a panic, and what decodes re-encodes to the same bytes.
fn check_decoder(lsn: u64, bytes: &[u8]) {
    match decode_record(lsn, bytes) {
        Ok((h, body)) => {
            let mut again = h.encode().to_vec();
            again.extend_from_slice(body);
            assert_eq!(again, bytes);
            assert_eq!(RecordKind::from_code(bytes[0]), Some(h.kind));
        }
        Err(SharedError::BadRecord { lsn: l, reason }) => {
            assert_eq!(l, lsn);
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("unexpected error {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn header_decoder_is_total(lsn in any::<u64>(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        check_decoder(lsn, &bytes);
    }

    #[test]
    fn header_decoder_round_trips(
        code in 0u8..8, group in any::<u64>(), key in any::<u64>(),
        body in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut bytes = vec![code];
        bytes.extend_from_slice(&group.to_le_bytes());
        bytes.extend_from_slice(&key.to_le_bytes());
        bytes.extend_from_slice(&body);
        check_decoder(1, &bytes);
    }
}
