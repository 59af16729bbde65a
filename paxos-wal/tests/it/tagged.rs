//! Record tags: bit 31 of a record's length field, covered by its CRC.
//! They round-trip across reopen, follow both truncations in
//! `Wal::tagged_keys`, obey the torn-tail and damage rules like any record,
//! and an older build (the frozen decoder in `format_v1`) rejects a tagged
//! record instead of reading it as an untagged one.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use paxos_wal::format::RECORD_TAG_BIT;
use paxos_wal::{RecoveryMode, Wal, WalError, WalOptions};

use crate::format_v1;
use crate::{payload_for, segment_files, small_opts, snapshot_dir};

const SEG: u64 = 8 << 10;

fn opts() -> WalOptions {
    small_opts(SEG)
}

fn keep() -> WalOptions {
    WalOptions {
        recovery: RecoveryMode::KeepValidPrefix,
        ..opts()
    }
}

/// Which keys the tests tag: rare, and some at segment starts by chance.
fn is_tagged(key: u64) -> bool {
    key % 7 == 3
}

/// All (key, tagged, payload) of the log, in order.
fn dump_tagged(wal: &Wal) -> Vec<(u64, bool, Vec<u8>)> {
    let r = wal.reader();
    r.iter_from(0)
        .map(|rec| rec.map(|rec| (rec.key, rec.tagged, rec.payload.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap()
}

fn expected(keys: impl IntoIterator<Item = u64>) -> Vec<(u64, bool, Vec<u8>)> {
    keys.into_iter()
        .map(|k| (k, is_tagged(k), payload_for(k)))
        .collect()
}

fn tagged_of(recs: &[(u64, bool, Vec<u8>)]) -> Vec<u64> {
    recs.iter().filter(|r| r.1).map(|r| r.0).collect()
}

/// Check the log's records, tags, tagged-key set and point reads.
fn check(wal: &Wal, want: &[(u64, bool, Vec<u8>)]) {
    assert_eq!(dump_tagged(wal), want);
    assert_eq!(wal.tagged_keys(), tagged_of(want));
    let r = wal.reader();
    assert_eq!(
        r.tagged_keys().iter().copied().collect::<Vec<_>>(),
        tagged_of(want)
    );
    for (k, t, p) in want {
        let rec = r.record(*k).unwrap().expect("record present");
        assert_eq!((rec.key, rec.tagged, rec.payload), (*k, *t, &p[..]));
    }
}

/// (offset, length field as stored) of each record in a segment file.
fn records_of(path: &Path) -> Vec<(u64, u32)> {
    let b = std::fs::read(path).unwrap();
    let mut v = Vec::new();
    let mut off = 64usize;
    while off + 24 <= b.len() {
        let field = u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
        if field == 0 {
            break;
        }
        v.push((off as u64, field));
        off += ((field & !RECORD_TAG_BIT) as usize + 7) & !7;
    }
    v
}

fn key_at(path: &Path, off: u64) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, off + 8).unwrap();
    u64::from_le_bytes(b)
}

fn flip(path: &Path, offset: u64, bit: u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 1 << bit;
    f.write_all_at(&b, offset).unwrap();
}

fn fresh_copy(src: &Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    snapshot_dir(src, d.path());
    d
}

/// Records 1..=n appended in batches of 5 (tagged per `is_tagged`) and
/// synced, through the three append calls in turn.
fn fill(wal: &Wal, keys: std::ops::RangeInclusive<u64>) {
    let keys: Vec<u64> = keys.collect();
    for (i, chunk) in keys.chunks(5).enumerate() {
        match i % 3 {
            0 => {
                let payloads: Vec<(u64, Vec<u8>)> =
                    chunk.iter().map(|&k| (k, payload_for(k))).collect();
                wal.append_batch_tagged(payloads.iter().map(|(k, p)| (*k, is_tagged(*k), &p[..])))
                    .unwrap();
            }
            1 => {
                for &k in chunk {
                    wal.append_tagged(k, is_tagged(k), &payload_for(k)).unwrap();
                }
            }
            _ => {
                for &k in chunk {
                    if is_tagged(k) {
                        wal.append_tagged(k, true, &payload_for(k)).unwrap();
                    } else {
                        wal.append(k, &payload_for(k)).unwrap();
                    }
                }
            }
        }
        wal.sync().unwrap();
    }
}

#[test]
fn tagged_records_round_trip_across_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts()).unwrap();
    fill(&wal, 1..=120);
    assert!(wal.segment_count() >= 4, "the log spans several segments");
    check(&wal, &expected(1..=120));
    wal.close().unwrap();
    // On disk: bit 31 of the length field is the tag, nothing else is.
    for seg in segment_files(dir.path()) {
        for (off, field) in records_of(&seg) {
            let key = key_at(&seg, off);
            assert_eq!(field & RECORD_TAG_BIT != 0, is_tagged(key), "key {key}");
            assert_eq!(
                (field & !RECORD_TAG_BIT) as usize,
                24 + payload_for(key).len()
            );
        }
    }
    let (wal, report) = Wal::open(dir.path(), opts()).unwrap();
    assert!(report.torn_tail.is_none() && report.damaged.is_none());
    assert_eq!(report.records, 120);
    check(&wal, &expected(1..=120));
    // Plain reads still see every payload; appends go on after the reopen.
    assert_eq!(wal.get(3).unwrap(), Some(payload_for(3)));
    wal.append_tagged(121, true, b"after reopen").unwrap();
    assert_eq!(*wal.tagged_keys().last().unwrap(), 121);
}

#[test]
fn tagged_keys_follow_suffix_and_prefix_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts()).unwrap();
    fill(&wal, 1..=120);
    let segs_before = wal.segment_count();
    // Suffix: across segments (whole ones go), keeping the tagged 52, then
    // to just below it.
    wal.truncate_suffix(52).unwrap();
    assert!(wal.segment_count() < segs_before);
    check(&wal, &expected(1..=52));
    assert!(!wal.tagged_keys().contains(&59));
    wal.truncate_suffix(51).unwrap();
    check(&wal, &expected(1..=51));
    // Keys reused after the cut carry their new tags: 52 is no longer
    // tagged, 53 now is.
    wal.append(52, &payload_for(52)).unwrap();
    wal.append_tagged(53, true, &payload_for(53)).unwrap();
    let mut want = expected(1..=51);
    want.push((52, false, payload_for(52)));
    want.push((53, true, payload_for(53)));
    check(&wal, &want);
    // Prefix: whole segments go, their tagged keys with them.
    let removed = wal.truncate_prefix(40).unwrap();
    assert!(removed > 0);
    let first = wal.first_key().unwrap();
    assert!(first > 3 && first <= 40, "first key {first}");
    want.retain(|r| r.0 >= first);
    check(&wal, &want);
    wal.close().unwrap();
    let (wal, report) = Wal::open(dir.path(), opts()).unwrap();
    assert!(report.torn_tail.is_none() && report.damaged.is_none());
    check(&wal, &want);
    // Truncating everything after the first record leaves its tag only.
    wal.truncate_suffix(first).unwrap();
    check(&wal, &want[..1]);
}

/// Synced tagged records 1..=60, then unsynced 61..=70 (66 tagged),
/// imaged as a kill would leave them.
fn crash_image() -> (tempfile::TempDir, tempfile::TempDir) {
    let live = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(live.path(), opts()).unwrap();
    fill(&wal, 1..=60);
    for k in 61..=70 {
        wal.append_tagged(k, is_tagged(k), &payload_for(k)).unwrap();
    }
    let img = fresh_copy(live.path());
    drop(wal);
    (live, img)
}

#[test]
fn torn_tagged_record_at_the_tail_is_dropped_like_any_torn_record() {
    let (_live, img) = crash_image();
    let (last, roff, field) = segment_files(img.path())
        .into_iter()
        .find_map(|seg| {
            let rec = records_of(&seg)
                .into_iter()
                .find(|&(off, _)| key_at(&seg, off) == 66);
            rec.map(|(off, field)| (seg, off, field))
        })
        .expect("record 66 on disk");
    assert!(field & RECORD_TAG_BIT != 0);
    // The end of its payload never reached the disk.
    let len = u64::from(field & !RECORD_TAG_BIT);
    let f = OpenOptions::new().write(true).open(&last).unwrap();
    f.write_all_at(&[0; 8], roff + len - 8).unwrap();
    drop(f);
    let (wal, report) = Wal::open(img.path(), opts()).unwrap();
    assert!(report.damaged.is_none(), "{report:?}");
    let torn = report.torn_tail.expect("torn tail reported");
    assert_eq!((torn.path.as_path(), torn.offset), (last.as_path(), roff));
    check(&wal, &expected(1..=65));
    assert!(wal.tagged_keys().contains(&59) && !wal.tagged_keys().contains(&66));
    // Key 66 can be written again, untagged this time.
    wal.append(66, b"again").unwrap();
    wal.close().unwrap();
    let (wal, report) = Wal::open(img.path(), opts()).unwrap();
    assert!(report.torn_tail.is_none() && report.damaged.is_none());
    let rec = dump_tagged(&wal).pop().unwrap();
    assert_eq!(rec, (66, false, b"again".to_vec()));
    assert!(!wal.tagged_keys().contains(&66));
}

#[test]
fn a_flipped_tag_bit_of_a_synced_record_is_damage() {
    let base = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(base.path(), opts()).unwrap();
    fill(&wal, 1..=120);
    wal.close().unwrap();
    let seg = segment_files(base.path())[1].clone();
    let recs = records_of(&seg);
    let inner = &recs[1..recs.len() - 1];
    let tagged = inner
        .iter()
        .find(|r| r.1 & RECORD_TAG_BIT != 0)
        .expect("a tagged record");
    let untagged = inner
        .iter()
        .find(|r| r.1 & RECORD_TAG_BIT == 0)
        .expect("an untagged record");
    // Bit 31 (the tag) either way, and bit 30 (a length no segment holds).
    for (what, &(roff, _), bit) in [
        ("tag cleared", tagged, 7u8),
        ("tag set", untagged, 7),
        ("bit 30", untagged, 6),
    ] {
        let d = fresh_copy(base.path());
        let seg = segment_files(d.path())[1].clone();
        let key = key_at(&seg, roff);
        flip(&seg, roff + 3, bit);
        match Wal::open(d.path(), opts()) {
            Err(WalError::Corrupted { path, offset, .. }) => {
                assert_eq!((path.as_path(), offset), (seg.as_path(), roff), "{what}");
            }
            Err(e) => panic!("{what}: expected Corrupted, got {e}"),
            Ok((_, r)) => panic!("{what}: expected Corrupted, opened with {r:?}"),
        }
        let (wal, report) = Wal::open(d.path(), keep()).unwrap();
        let dmg = report
            .damaged
            .unwrap_or_else(|| panic!("{what}: damage reported"));
        assert_eq!(dmg.offset, roff, "{what}");
        assert_eq!(dmg.after_key, Some(key - 1), "{what}");
        check(&wal, &expected(1..key));
    }
}

#[test]
fn an_older_build_rejects_a_tagged_record_and_reads_untagged_ones_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), opts()).unwrap();
    // Untagged records through every append call: what older builds read.
    for k in 1..=10 {
        wal.append_tagged(k, false, &payload_for(k)).unwrap();
    }
    wal.append_batch_tagged([(11, false, &b"x"[..]), (12, false, &b"yz"[..])])
        .unwrap();
    wal.sync().unwrap();
    let seg = segment_files(dir.path())[0].clone();
    let id = 0;
    let bytes = std::fs::read(&seg).unwrap();
    let old = format_v1::scan_segment(&bytes, id, None);
    let new = paxos_wal::scan_segment(&bytes, id, None);
    assert_eq!((old.records, old.stop), (12, format_v1::ScanStop::End));
    assert_eq!(
        (old.last_key, old.end_offset),
        (new.last_key, new.end_offset)
    );

    // Then a tagged record, and an untagged one after it, synced.
    wal.append_tagged(13, true, b"membership").unwrap();
    wal.append(14, b"after").unwrap();
    wal.sync().unwrap();
    wal.close().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let tagged_off = records_of(&seg)[12].0 as usize;
    let new = paxos_wal::scan_segment(&bytes, id, None);
    assert_eq!((new.records, new.tagged_keys.clone()), (14, vec![13]));
    let old = format_v1::scan_segment(&bytes, id, None);
    // The older build's valid prefix ends at the tagged record, on a length
    // no segment can hold: never read as an untagged record.
    assert_eq!(old.records, 12);
    assert_eq!(old.last_key, Some(12));
    assert_eq!(old.end_offset, tagged_off);
    match old.stop {
        format_v1::ScanStop::BadRecord(format_v1::BadRecord::BadLength { len }) => {
            assert!(len & RECORD_TAG_BIT != 0, "{len:#x}");
        }
        other => panic!("expected a bad length, got {other:?}"),
    }
    // And the records and marker after it prove keys past that prefix
    // durable, so its recovery (`cut_at_break`: evidence above the last good
    // key) refuses in strict mode, or reports the range as damaged, rather
    // than cutting it silently as a torn tail.
    assert!(old.max_watermark >= 13, "{}", old.max_watermark);
    assert!(old.max_watermark > old.last_key.unwrap());
}
