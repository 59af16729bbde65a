//! Model test: random appends, syncs, truncations at both ends, reopens and
//! crash images, checked against an in-memory model after every step.

use paxos_wal::Wal;
use proptest::prelude::*;

use crate::{dump, small_opts, snapshot_dir};

#[derive(Debug, Clone)]
enum Op {
    Append { count: u8, len: u16 },
    Sync,
    TruncatePrefix(u8),
    TruncateSuffix(u8),
    Reopen,
    CrashImage,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..12, 0u16..1500).prop_map(|(count, len)| Op::Append { count, len }),
        3 => Just(Op::Sync),
        1 => any::<u8>().prop_map(Op::TruncatePrefix),
        1 => any::<u8>().prop_map(Op::TruncateSuffix),
        1 => Just(Op::Reopen),
        1 => Just(Op::CrashImage),
    ]
}

fn payload(key: u64, len: u16) -> Vec<u8> {
    (0..len).map(|i| (key as u8) ^ (i as u8)).collect()
}

fn pick(model: &[(u64, Vec<u8>)], frac: u8) -> u64 {
    if model.is_empty() {
        return u64::from(frac);
    }
    let i = (usize::from(frac) * model.len()) / 256;
    model[i].0
}

fn check(wal: &Wal, model: &[(u64, Vec<u8>)]) -> Result<(), TestCaseError> {
    prop_assert_eq!(dump(wal), model.to_vec());
    prop_assert_eq!(wal.first_key(), model.first().map(|r| r.0));
    prop_assert_eq!(wal.last_key(), model.last().map(|r| r.0));
    if let (Some(d), Some(l)) = (wal.durable_key(), wal.last_key()) {
        prop_assert!(d <= l);
    }
    for (k, p) in model.iter().step_by(7) {
        let got = wal.get(*k).unwrap();
        prop_assert_eq!(got.as_deref(), Some(&p[..]));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let opts = small_opts(8 << 10);
        let (mut wal, _) = Wal::open(dir.path(), opts.clone()).unwrap();
        let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut next_key = 1u64;
        for op in ops {
            match op {
                Op::Append { count, len } => {
                    let recs: Vec<(u64, Vec<u8>)> =
                        (0..u64::from(count)).map(|i| (next_key + i, payload(next_key + i, len))).collect();
                    wal.append_batch(recs.iter().map(|(k, p)| (*k, p.as_slice()))).unwrap();
                    next_key += u64::from(count);
                    model.extend(recs);
                }
                Op::Sync => {
                    prop_assert_eq!(wal.sync().unwrap(), model.last().map(|r| r.0));
                    prop_assert_eq!(wal.durable_key(), model.last().map(|r| r.0));
                }
                Op::TruncatePrefix(frac) => {
                    let key = pick(&model, frac);
                    wal.truncate_prefix(key).unwrap();
                    let first = wal.first_key();
                    if let Some(f) = first {
                        prop_assert!(f <= key || model.first().is_some_and(|m| m.0 == f), "kept segment holds key");
                    }
                    model.retain(|r| first.is_some_and(|f| r.0 >= f));
                }
                Op::TruncateSuffix(frac) => {
                    let key = pick(&model, frac).saturating_sub(u64::from(frac % 3));
                    wal.truncate_suffix(key).unwrap();
                    if model.last().is_some_and(|r| r.0 > key) {
                        model.retain(|r| r.0 <= key);
                        next_key = key + 1;
                        prop_assert_eq!(wal.durable_key(), model.last().map(|r| r.0));
                    }
                }
                Op::Reopen => {
                    drop(wal);
                    let opened = Wal::open(dir.path(), opts.clone());
                    let (w, report) = match opened {
                        Ok(x) => x,
                        Err(e) => return Err(TestCaseError::fail(format!("reopen failed: {e}"))),
                    };
                    prop_assert!(report.torn_tail.is_none() && report.damaged.is_none(), "{:?}", report);
                    wal = w;
                }
                Op::CrashImage => {
                    let img = tempfile::tempdir().unwrap();
                    snapshot_dir(dir.path(), img.path());
                    let (w, _) = Wal::open(img.path(), opts.clone()).unwrap();
                    check(&w, &model)?;
                }
            }
            check(&wal, &model)?;
        }
    }
}
