//! Power-loss model: after a crash, every page written since the last sync
//! may independently hold its old or its new content (the kernel writes
//! mapped pages back in any order). Recovery must keep every synced record,
//! invent nothing, and never mistake the torn tail for corruption.

use std::collections::BTreeMap;
use std::path::Path;

use paxos_wal::Wal;
use proptest::prelude::*;

use crate::{dump, small_opts, snapshot_dir};

fn payload(key: u64, len_mod: u16) -> Vec<u8> {
    let len = (key * 37 % u64::from(len_mod)) as usize;
    (0..len)
        .map(|i| (key as u8).wrapping_add((i as u8).wrapping_mul(3)))
        .collect()
}

fn read_dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_page_loss_after_sync(
        synced_batches in 1u64..6,
        batch in 1u64..20,
        unsynced in 1u64..40,
        len_mod in 1u16..1200,
        seed in any::<u64>(),
    ) {
        let live = tempfile::tempdir().unwrap();
        let opts = small_opts(8 << 10);
        let (wal, _) = Wal::open(live.path(), opts.clone()).unwrap();
        let mut key = 0;
        for _ in 0..synced_batches {
            for _ in 0..batch {
                key += 1;
                wal.append(key, &payload(key, len_mod)).unwrap();
            }
            wal.sync().unwrap();
        }
        let durable = key;
        let before = tempfile::tempdir().unwrap();
        snapshot_dir(live.path(), before.path());
        for _ in 0..unsynced {
            key += 1;
            wal.append(key, &payload(key, len_mod)).unwrap();
        }
        let after = tempfile::tempdir().unwrap();
        snapshot_dir(live.path(), after.path());
        drop(wal);

        // Mix old and new pages at random.
        let old = read_dir_files(before.path());
        let new = read_dir_files(after.path());
        let crashed = tempfile::tempdir().unwrap();
        let mut rng = seed | 1;
        let mut coin = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng & 1 == 1
        };
        for (name, bytes) in &new {
            let prior = old.get(name);
            let mut out = bytes.clone();
            for (i, page) in out.chunks_mut(4096).enumerate() {
                if coin() {
                    let start = i * 4096;
                    match prior {
                        Some(p) => page.copy_from_slice(&p[start..start + page.len()]),
                        // A segment installed after the sync: its old pages were zeros.
                        None => page.fill(0),
                    }
                }
            }
            std::fs::write(crashed.path().join(name), out).unwrap();
        }

        let opened = Wal::open(crashed.path(), opts);
        let (wal, report) = match opened {
            Ok(x) => x,
            Err(e) => return Err(TestCaseError::fail(format!("open after page loss failed: {e}"))),
        };
        prop_assert!(report.damaged.is_none(), "{:?}", report);
        let got = dump(&wal);
        prop_assert!(got.len() as u64 >= durable, "synced records lost: {} < {}", got.len(), durable);
        for (i, (k, p)) in got.iter().enumerate() {
            prop_assert_eq!(*k, i as u64 + 1, "keys contiguous from 1");
            prop_assert_eq!(p, &payload(*k, len_mod), "payload of key {}", k);
        }
        prop_assert!(got.len() as u64 <= key);
    }
}
