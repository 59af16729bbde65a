//! Bit flips in every field and files cut at every offset class, each with
//! its documented outcome:
//!
//! - damage to a proven-durable record or header: `Strict` fails with
//!   `Corrupted` naming the file and offset; `KeepValidPrefix` opens with the
//!   prefix before it and reports the damaged range;
//! - damage to records nothing proves durable (the unsynced tail): a torn
//!   tail, cut and reported;
//! - record padding is not covered by the checksum: a flip there is ignored;
//! - a segment file shorter than it was created (no crash does that) is
//!   corruption, unless the lost part held no data.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use paxos_wal::{RecoveryMode, Wal, WalError, WalOptions};

use crate::{dump, payload_for, segment_files, small_opts, snapshot_dir};

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

/// 120 records synced in batches of 5, closed cleanly: several segments.
fn build(dir: &Path) {
    let (wal, _) = Wal::open(dir, opts()).unwrap();
    for k in 1..=120 {
        wal.append(k, &payload_for(k)).unwrap();
        if k % 5 == 0 {
            wal.sync().unwrap();
        }
    }
    wal.close().unwrap();
    assert!(segment_files(dir).len() >= 4);
}

/// (offset, len field) of each record in a segment file.
fn records_of(path: &Path) -> Vec<(u64, u32)> {
    let b = std::fs::read(path).unwrap();
    let mut v = Vec::new();
    let mut off = 64usize;
    while off + 24 <= b.len() {
        let len = u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
        if len == 0 {
            break;
        }
        v.push((off as u64, len));
        off += (len as usize + 7) & !7;
    }
    v
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

fn expect_corrupted(dir: &Path, path: &Path, offset: u64) -> WalError {
    match Wal::open(dir, opts()) {
        Err(e @ WalError::Corrupted { .. }) => {
            let WalError::Corrupted {
                path: p, offset: o, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((p.as_path(), *o), (path, offset), "{e}");
            e
        }
        Err(e) => panic!("expected Corrupted, got {e}"),
        Ok((_, r)) => panic!("expected Corrupted, opened with {r:?}"),
    }
}

fn fresh_copy(src: &Path) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    snapshot_dir(src, d.path());
    d
}

#[test]
fn header_bit_flips_in_every_field_are_detected() {
    let base = tempfile::tempdir().unwrap();
    build(base.path());
    // magic, version, flags, segment id, first key, size, prev crc, reserved, crc.
    let fields = [0u64, 9, 12, 17, 24, 33, 40, 50, 61];
    for seg_idx in [0usize, 2] {
        for &off in &fields {
            let d = fresh_copy(base.path());
            let seg = segment_files(d.path())[seg_idx].clone();
            flip(&seg, off, 3);
            let e = expect_corrupted(d.path(), &seg, 0);
            // Strict mode changed nothing: the same error again.
            assert_eq!(
                expect_corrupted(d.path(), &seg, 0).to_string(),
                e.to_string()
            );
            let (wal, report) = Wal::open(d.path(), keep()).unwrap();
            let dmg = report.damaged.expect("damage reported");
            assert_eq!((dmg.path.as_path(), dmg.offset), (seg.as_path(), 0));
            let kept = dump(&wal);
            assert!(kept
                .iter()
                .enumerate()
                .all(|(i, (k, p))| *k == i as u64 + 1 && *p == payload_for(*k)));
            assert_eq!(dmg.after_key, kept.last().map(|r| r.0));
            assert!(dmg.through_key > dmg.after_key.unwrap_or(0), "{dmg:?}");
            assert!(
                dmg.preserved_copies.iter().all(|p| p.exists()) && !dmg.preserved_copies.is_empty()
            );
            if seg_idx == 0 {
                assert!(kept.is_empty());
            }
            // The log works again and reopens cleanly, even in strict mode.
            let next = wal.last_key().unwrap_or(0) + 1;
            wal.append(next, b"after repair").unwrap();
            wal.sync().unwrap();
            drop(wal);
            let (wal, r) = Wal::open(d.path(), opts()).unwrap();
            assert!(r.damaged.is_none() && r.torn_tail.is_none(), "{r:?}");
            assert_eq!(
                wal.get(next).unwrap().as_deref(),
                Some(&b"after repair"[..])
            );
        }
    }
}

#[test]
fn record_bit_flips_in_every_field() {
    let base = tempfile::tempdir().unwrap();
    build(base.path());
    let seg = segment_files(base.path())[1].clone();
    let recs = records_of(&seg);
    // A record with padding, in the middle of the segment.
    let &(roff, len) = recs[1..recs.len() - 1]
        .iter()
        .find(|(_, l)| l % 8 != 0 && *l > 30)
        .expect("a padded record");
    let payload_off = roff + 24;
    let padding_off = roff + u64::from(len);
    // len, crc, key, watermark, payload start, payload end.
    for (field, off) in [
        ("len", roff + 1),
        ("crc", roff + 5),
        ("key", roff + 8),
        ("watermark", roff + 16),
        ("payload", payload_off),
        ("payload end", roff + u64::from(len) - 1),
    ] {
        for bit in [0u8, 7] {
            let d = fresh_copy(base.path());
            let seg = segment_files(d.path())[1].clone();
            flip(&seg, off, bit);
            expect_corrupted(d.path(), &seg, roff);
            let (wal, report) = Wal::open(d.path(), keep()).unwrap();
            let dmg = report
                .damaged
                .unwrap_or_else(|| panic!("{field}: damage reported"));
            assert_eq!(dmg.offset, roff, "{field}");
            let kept = dump(&wal);
            assert_eq!(dmg.after_key, kept.last().map(|r| r.0));
            assert!(kept
                .iter()
                .enumerate()
                .all(|(i, (k, p))| *k == i as u64 + 1 && *p == payload_for(*k)));
            assert!(
                dmg.through_key >= 115,
                "{field}: the close marker proves everything: {dmg:?}"
            );
        }
    }
    // Padding is outside the checksum: a flip there is harmless.
    let d = fresh_copy(base.path());
    let seg = segment_files(d.path())[1].clone();
    flip(&seg, padding_off, 2);
    let (wal, r) = Wal::open(d.path(), opts()).unwrap();
    assert!(r.damaged.is_none() && r.torn_tail.is_none());
    assert_eq!(dump(&wal).len(), 120);
}

/// A crash image: synced records 1..=60 (proven), then unsynced 61..=70.
fn crash_image() -> (tempfile::TempDir, tempfile::TempDir) {
    let live = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(live.path(), opts()).unwrap();
    for k in 1..=60 {
        wal.append(k, &payload_for(k)).unwrap();
        if k % 6 == 0 {
            wal.sync().unwrap();
        }
    }
    for k in 61..=70 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    let img = fresh_copy(live.path());
    drop(wal);
    (live, img)
}

#[test]
fn damage_in_unsynced_tail_is_a_torn_tail() {
    let (_live, img) = crash_image();
    let segs = segment_files(img.path());
    let last = segs.last().unwrap().clone();
    let recs = records_of(&last);
    let (roff, _) = *recs.iter().rev().nth(3).unwrap();
    // Opening a copy (opening makes everything durable and proves it, so
    // the image itself must stay unopened).
    let copy = fresh_copy(img.path());
    let (wal, _) = Wal::open(copy.path(), opts()).unwrap();
    assert_eq!(
        dump(&wal).len(),
        70,
        "unsynced records are in the page cache"
    );
    drop(wal);
    // Once opened, the same damage is inside the proven-durable part.
    flip(
        &segment_files(copy.path()).last().unwrap().clone(),
        roff + 26,
        0,
    );
    assert!(matches!(
        Wal::open(copy.path(), opts()),
        Err(WalError::Corrupted { .. })
    ));
    let damaged_key = 70 - 3;
    flip(&last, roff + 26, 0);
    let (wal, report) = Wal::open(img.path(), opts()).unwrap();
    let torn = report.torn_tail.expect("torn tail reported");
    assert_eq!((torn.path.as_path(), torn.offset), (last.as_path(), roff));
    assert!(torn.bytes_zeroed >= 24);
    let got = dump(&wal);
    assert_eq!(
        got,
        (1..damaged_key)
            .map(|k| (k, payload_for(k)))
            .collect::<Vec<_>>()
    );
    // The valid records after the damage were erased: they never come back.
    wal.append(damaged_key, b"replacement").unwrap();
    let img2 = fresh_copy(img.path());
    drop(wal);
    let (wal, r) = Wal::open(img2.path(), opts()).unwrap();
    assert!(r.torn_tail.is_none() && r.damaged.is_none(), "{r:?}");
    assert_eq!(wal.last_key(), Some(damaged_key));
    assert_eq!(
        wal.get(damaged_key).unwrap().as_deref(),
        Some(&b"replacement"[..])
    );
}

#[test]
fn garbage_after_last_record_is_cut_once() {
    let (_live, img) = crash_image();
    let last = segment_files(img.path()).last().unwrap().clone();
    let (roff, len) = *records_of(&last).last().unwrap();
    let end = roff + ((u64::from(len) + 7) & !7);
    let f = OpenOptions::new().write(true).open(&last).unwrap();
    f.write_all_at(&[0x5A; 300], end).unwrap();
    drop(f);
    let (wal, report) = Wal::open(img.path(), opts()).unwrap();
    let torn = report.torn_tail.expect("torn");
    assert_eq!(torn.offset, end);
    assert_eq!(dump(&wal).len(), 70);
    drop(wal);
    let (_, report) = Wal::open(img.path(), opts()).unwrap();
    assert!(
        report.torn_tail.is_none(),
        "cut once, clean after: {report:?}"
    );
}

#[test]
fn bad_header_of_unsynced_new_segment_is_torn() {
    let live = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(live.path(), opts()).unwrap();
    let mut k = 0;
    while wal.segment_count() < 2 {
        k += 1;
        wal.append(k, &payload_for(k)).unwrap();
        if wal.segment_count() < 2 {
            wal.sync().unwrap();
        }
    }
    let synced = k - 1;
    let img = fresh_copy(live.path());
    drop(wal);
    let segs = segment_files(img.path());
    flip(&segs[1], 24, 1);
    let (wal, report) = Wal::open(img.path(), opts()).unwrap();
    let torn = report.torn_tail.expect("torn");
    assert_eq!((torn.path.as_path(), torn.offset), (segs[1].as_path(), 0));
    assert_eq!(wal.last_key(), Some(synced));
    assert_eq!(wal.segment_count(), 1);
}

#[test]
fn cut_files_at_every_offset_class() {
    let base = tempfile::tempdir().unwrap();
    build(base.path());
    for seg_idx in [1usize, 3] {
        let seg0 = segment_files(base.path())[seg_idx].clone();
        let recs = records_of(&seg0);
        let (r2, _) = recs[2];
        for (class, cut) in [
            ("empty file", 0u64),
            ("mid-header", 30),
            ("end of header", 64),
            ("mid-record", r2 + 13),
            ("record boundary", r2),
        ] {
            let d = fresh_copy(base.path());
            let seg = segment_files(d.path())[seg_idx].clone();
            OpenOptions::new()
                .write(true)
                .open(&seg)
                .unwrap()
                .set_len(cut)
                .unwrap();
            let e = match Wal::open(d.path(), opts()) {
                Err(e @ WalError::Corrupted { .. }) => e,
                other => panic!("{class}: expected Corrupted, got {other:?}"),
            };
            assert!(
                e.to_string().contains(&*seg.to_string_lossy()),
                "{class}: {e}"
            );
            let (wal, report) = Wal::open(d.path(), keep()).unwrap();
            let dmg = report
                .damaged
                .unwrap_or_else(|| panic!("{class}: damage reported"));
            let kept = dump(&wal);
            assert_eq!(dmg.after_key, kept.last().map(|r| r.0), "{class}");
            assert!(kept
                .iter()
                .enumerate()
                .all(|(i, (k, p))| *k == i as u64 + 1 && *p == payload_for(*k)));
            if cut >= r2 {
                assert!(
                    kept.len() >= 2 + records_of(&segment_files(base.path())[0]).len(),
                    "{class}: prefix kept"
                );
            }
        }
    }
    // A shorter last file whose lost part held no data opens normally.
    let d = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(d.path(), opts()).unwrap();
    for k in 1..=120 {
        wal.append(k, &payload_for(k)).unwrap();
    }
    wal.close().unwrap();
    let last = segment_files(d.path()).last().unwrap().clone();
    let (roff, len) = *records_of(&last).last().unwrap();
    let mut cut = (roff + u64::from(len) + 24 + 4095) & !4095;
    if cut >= SEG {
        // The last segment is nearly full: a 3000-byte record rolls into a
        // fresh segment, whose second page holds no data.
        let (wal, _) = Wal::open(d.path(), opts()).unwrap();
        wal.append(121, &[9; 3000]).unwrap();
        wal.close().unwrap();
        cut = 64 + 3024 + 24;
        cut = (cut + 4095) & !4095;
    }
    let last = segment_files(d.path()).last().unwrap().clone();
    assert!(cut < SEG);
    OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let (wal, report) = Wal::open(d.path(), opts()).unwrap();
    assert!(
        report.damaged.is_none() && report.torn_tail.is_none(),
        "{report:?}"
    );
    let n = dump(&wal).len() as u64;
    assert!(n == 120 || n == 121);
    // And it keeps working: the short segment is full, the next append rolls.
    wal.append(n + 1, &vec![1; 6000]).unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.get(n + 1).unwrap().map(|p| p.len()), Some(6000));
}

/// What a follower's process killed right after its last sync leaves: every
/// batch synced (and acknowledged), no clean close. Damage in the middle
/// of its data, and damage in its very last synced batch, are corruption
/// of acknowledged records, never a torn tail to cut silently.
#[test]
fn damage_to_synced_records_of_a_killed_process_is_corruption() {
    let live = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(live.path(), opts()).unwrap();
    let mut last_batch_first = 0;
    for k in 1..=60 {
        if k % 6 == 1 {
            last_batch_first = k;
        }
        wal.append(k, &payload_for(k)).unwrap();
        if k % 6 == 0 {
            assert_eq!(wal.sync().unwrap(), Some(k));
        }
    }
    let img = fresh_copy(live.path());
    drop(wal);
    let segs = segment_files(img.path());
    let last = segs.last().unwrap().clone();
    let recs = records_of(&last);
    let keys_in_last = recs.len() as u64;
    // The first record of the last synced batch, and a record in the middle
    // of the last segment's data.
    let batch_idx = (last_batch_first - (60 - keys_in_last + 1)) as usize;
    for (what, (roff, _)) in [
        ("last synced batch", recs[batch_idx]),
        ("middle of the data", recs[recs.len() / 2]),
    ] {
        let d = fresh_copy(img.path());
        let seg = segment_files(d.path()).last().unwrap().clone();
        flip(&seg, roff + 26, 0);
        let e = expect_corrupted(d.path(), &seg, roff);
        let WalError::Corrupted {
            proven_durable_key, ..
        } = e
        else {
            unreachable!()
        };
        assert_eq!(proven_durable_key, 60, "{what}: every synced key is proven");
        let (wal, report) = Wal::open(d.path(), keep()).unwrap();
        let dmg = report
            .damaged
            .clone()
            .unwrap_or_else(|| panic!("{what}: damage reported, not cut as torn: {report:?}"));
        assert_eq!((dmg.path.as_path(), dmg.offset), (seg.as_path(), roff));
        assert_eq!(dmg.through_key, 60, "{what}");
        assert_eq!(dmg.after_key, wal.last_key(), "{what}");
        assert!(report.torn_tail.is_none(), "{what}: {report:?}");
    }
}
