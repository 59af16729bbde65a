//! Fuzz the WAL recovery scan over arbitrary segment bytes: it must never
//! panic, and what it reports must be consistent with the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paxos_wal::format::ScanStop;
use paxos_wal::scan_segment;

fuzz_target!(|data: &[u8]| {
    let (id, prev, bytes) = match data {
        [a, b, rest @ ..] => (u64::from(*a % 4), (*b > 127).then_some(u64::from(*b)), rest),
        _ => return,
    };
    let scan = scan_segment(bytes, id, prev);
    assert!(scan.end_offset <= bytes.len());
    assert!(scan.beyond_end_offset <= bytes.len().max(64));
    if scan.header.is_none() {
        assert_eq!(scan.records, 0);
        assert!(matches!(scan.stop, ScanStop::BadHeader(_)));
    }
    if let (Some(f), Some(l)) = (scan.first_key, scan.last_key) {
        assert!(f <= l && scan.records <= l - f + 1);
        if let Some(p) = prev {
            assert!(f > p);
        }
    }
    // Tagged keys are keys of the valid prefix, strictly increasing.
    assert!(scan.tagged_keys.len() as u64 <= scan.records);
    assert!(scan.tagged_keys.windows(2).all(|w| w[0] < w[1]));
    assert!(
        scan.tagged_keys
            .iter()
            .all(|k| scan.first_key.is_some_and(|f| f <= *k)
                && scan.last_key.is_some_and(|l| *k <= l))
    );
});
