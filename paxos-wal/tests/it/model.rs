//! Model test: random appends (tagged or not), syncs, truncations at both
//! ends, reopens and crash images, checked against an in-memory model of
//! records and tags after every step.

use paxos_wal::Wal;
use proptest::prelude::*;

use crate::{small_opts, snapshot_dir};

/// A record of the model: key, tag, payload.
type Rec = (u64, bool, Vec<u8>);

#[derive(Debug, Clone)]
enum Op {
    /// Record `i` of the batch is tagged when bit `i` of `tags` is set.
    Append {
        count: u8,
        len: u16,
        tags: u16,
    },
    Sync,
    TruncatePrefix(u8),
    TruncateSuffix(u8),
    Reopen,
    CrashImage,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..12, 0u16..1500, prop_oneof![2 => Just(0u16), 1 => any::<u16>()])
            .prop_map(|(count, len, tags)| Op::Append { count, len, tags }),
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

fn pick(model: &[Rec], frac: u8) -> u64 {
    if model.is_empty() {
        return u64::from(frac);
    }
    let i = (usize::from(frac) * model.len()) / 256;
    model[i].0
}

fn dump(wal: &Wal) -> Vec<Rec> {
    let r = wal.reader();
    r.iter_from(0)
        .map(|rec| rec.map(|rec| (rec.key, rec.tagged, rec.payload.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap()
}

fn check(wal: &Wal, model: &[Rec]) -> Result<(), TestCaseError> {
    prop_assert_eq!(dump(wal), model.to_vec());
    let tagged: Vec<u64> = model.iter().filter(|r| r.1).map(|r| r.0).collect();
    prop_assert_eq!(wal.tagged_keys(), tagged);
    prop_assert_eq!(wal.first_key(), model.first().map(|r| r.0));
    prop_assert_eq!(wal.last_key(), model.last().map(|r| r.0));
    if let (Some(d), Some(l)) = (wal.durable_key(), wal.last_key()) {
        prop_assert!(d <= l);
    }
    for (k, t, p) in model.iter().step_by(7) {
        let got = wal.get(*k).unwrap();
        prop_assert_eq!(got.as_deref(), Some(&p[..]));
        let r = wal.reader();
        prop_assert_eq!(r.record(*k).unwrap().map(|r| r.tagged), Some(*t));
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
        let mut model: Vec<Rec> = Vec::new();
        let mut next_key = 1u64;
        for op in ops {
            match op {
                Op::Append { count, len, tags } => {
                    let recs: Vec<Rec> = (0..u64::from(count))
                        .map(|i| (next_key + i, tags & (1 << i) != 0, payload(next_key + i, len)))
                        .collect();
                    if tags == 0 {
                        // The untagged call must give the same log.
                        wal.append_batch(recs.iter().map(|(k, _, p)| (*k, p.as_slice()))).unwrap();
                    } else {
                        wal.append_batch_tagged(recs.iter().map(|(k, t, p)| (*k, *t, p.as_slice())))
                            .unwrap();
                    }
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
