//! The CI twin of the `wal_recovery` fuzz target: the recovery scan over
//! arbitrary and mutated bytes never panics and keeps its invariants.

use paxos_wal::format::{ScanStop, SegmentHeader};
use paxos_wal::{scan_segment, SegmentScan};
use proptest::prelude::*;

fn check(bytes: &[u8], scan: &SegmentScan) {
    assert!(scan.end_offset <= bytes.len());
    assert!(scan.beyond_end_offset <= bytes.len().max(64));
    if scan.header.is_none() {
        assert_eq!(scan.records, 0);
        assert!(matches!(scan.stop, ScanStop::BadHeader(_)));
    }
    assert_eq!(scan.records == 0, scan.first_key.is_none());
    if let (Some(f), Some(l)) = (scan.first_key, scan.last_key) {
        assert!(f <= l);
        assert!(scan.records <= l - f + 1, "keys strictly increase");
    }
    assert!(scan.end_offset % 8 == 0 || scan.end_offset == bytes.len());
    // Tagged keys are keys of the valid prefix, strictly increasing.
    assert!(scan.tagged_keys.len() as u64 <= scan.records);
    assert!(scan.tagged_keys.windows(2).all(|w| w[0] < w[1]));
    assert!(
        scan.tagged_keys
            .iter()
            .all(|k| scan.first_key.is_some_and(|f| f <= *k)
                && scan.last_key.is_some_and(|l| *k <= l))
    );
}

/// Records whose key is a multiple of 3 are tagged (bit 31 of `len`).
fn valid_segment(records: &[(u64, Vec<u8>)], id: u64) -> Vec<u8> {
    let size = 16 << 10;
    let mut b = vec![0u8; size];
    let h = SegmentHeader {
        segment_id: id,
        first_key: records.first().map_or(1, |r| r.0),
        segment_bytes: size as u64,
        prev_last_crc: None,
    };
    b[..64].copy_from_slice(&h.encode());
    let mut off = 64;
    for (i, (k, p)) in records.iter().enumerate() {
        let len = 24 + p.len();
        if off + len > size {
            break;
        }
        let wm = if i == 0 { 0 } else { records[i - 1].0 };
        let field = len as u32 | if k % 3 == 0 { 1 << 31 } else { 0 };
        let mut h = crc32fast::Hasher::new();
        h.update(&id.to_le_bytes());
        h.update(&field.to_le_bytes());
        h.update(&k.to_le_bytes());
        h.update(&wm.to_le_bytes());
        h.update(p);
        b[off..off + 4].copy_from_slice(&field.to_le_bytes());
        b[off + 4..off + 8].copy_from_slice(&h.finalize().to_le_bytes());
        b[off + 8..off + 16].copy_from_slice(&k.to_le_bytes());
        b[off + 16..off + 24].copy_from_slice(&wm.to_le_bytes());
        b[off + 24..off + len].copy_from_slice(p);
        off += (len + 7) & !7;
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn scan_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096), id in 0u64..4) {
        let scan = scan_segment(&bytes, id, None);
        check(&bytes, &scan);
    }

    #[test]
    fn scan_of_mutated_segments(
        n in 1usize..40,
        mutations in proptest::collection::vec((0usize..16384, any::<u8>()), 0..8),
        cut in proptest::option::of(0usize..16384),
    ) {
        let records: Vec<(u64, Vec<u8>)> = (1..=n as u64).map(|k| (k * 2, vec![k as u8; (k * 13 % 200) as usize])).collect();
        let mut b = valid_segment(&records, 9);
        let clean = scan_segment(&b, 9, None);
        prop_assert_eq!(clean.records, n as u64);
        prop_assert_eq!(clean.stop, ScanStop::End);
        let tagged: Vec<u64> = records.iter().map(|r| r.0).filter(|k| k % 3 == 0).collect();
        prop_assert_eq!(&clean.tagged_keys, &tagged);
        for (off, x) in &mutations {
            b[*off] ^= x;
        }
        if let Some(c) = cut {
            b.truncate(c);
        }
        let scan = scan_segment(&b, 9, None);
        check(&b, &scan);
        // Whatever the damage, the prefix it reports is made of real records.
        prop_assert!(scan.records <= n as u64);
        if let Some(l) = scan.last_key {
            prop_assert!(records.iter().any(|r| r.0 == l));
        }
        // Damage never makes a record tagged: the prefix's tags are the
        // tags that were written.
        let kept: Vec<u64> = tagged.iter().copied().filter(|&k| scan.last_key.is_some_and(|l| k <= l)).collect();
        prop_assert_eq!(&scan.tagged_keys, &kept);
    }
}
