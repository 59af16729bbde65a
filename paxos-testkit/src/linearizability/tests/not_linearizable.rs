//! Histories that are not linearizable, and the witnesses found for them.

use super::*;

#[test]
fn stale_read_after_a_completed_write() {
    let mut h = Builder::default();
    let w = h.ok(1, "k", put("a"), 0, 10, Output::Acknowledged);
    let r = h.ok(2, "k", Command::Get, 20, 30, read(None));
    let v = h.violation();
    assert_eq!(v.key, b("k"));
    assert_eq!(ids(&v.core), vec![r]);
    assert_eq!(ids(&v.writes_in_interval), vec![w]);
    assert!(v.writes_anytime.is_empty());
    assert!(v.minimal);
}

#[test]
fn stale_read_of_an_overwritten_value() {
    let mut h = Builder::default();
    let a = h.ok(1, "k", put("a"), 0, 10, Output::Acknowledged);
    let bw = h.ok(1, "k", put("b"), 20, 30, Output::Acknowledged);
    let r = h.ok(2, "k", Command::Get, 40, 50, read(Some("a")));
    let v = h.violation();
    assert_eq!(ids(&v.core), vec![r], "{v}");
    assert_eq!(ids(&v.writes_in_interval), vec![a, bw], "{v}");
    assert!(v.minimal);
}

#[test]
fn lost_compare_and_set() {
    // Sequential: the second cas found the key absent after the first
    // had set it.
    let mut h = Builder::default();
    let c1 = h.ok(1, "k", cas(None, "a"), 0, 10, swapped(None, true));
    let c2 = h.ok(2, "k", cas(None, "b"), 20, 30, swapped(None, true));
    let v = h.violation();
    assert_eq!(ids(&v.core), vec![c2], "{v}");
    assert_eq!(ids(&v.writes_in_interval), vec![c1], "{v}");
    // Concurrent: both claim to have swapped from absent.
    let mut h = Builder::default();
    let c1 = h.ok(1, "k", cas(None, "a"), 0, 30, Output::Acknowledged);
    let c2 = h.ok(2, "k", cas(None, "b"), 5, 35, swapped(None, true));
    assert_eq!(ids(&h.violation().core), vec![c1, c2]);
}

#[test]
fn read_of_a_value_never_written() {
    let mut h = Builder::default();
    h.ok(1, "k", put("a"), 0, 10, Output::Acknowledged);
    let r = h.ok(2, "k", Command::Get, 20, 30, read(Some("zzz")));
    h.ok(1, "k", put("b"), 40, 50, written(Some("a")));
    let v = h.violation();
    assert_eq!(ids(&v.core), vec![r]);
    assert!(v.writes_in_interval.is_empty() && v.writes_anytime.is_empty());
    assert!(v.to_string().contains("zzz"), "{v}");
}

#[test]
fn a_read_observes_a_write_that_then_disappears() {
    // The write's outcome is unknown, so it may take effect late, but it
    // cannot be undone once a read has seen it.
    let mut h = Builder::default();
    let w = h.unknown(1, "k", put("a"), 0);
    let r1 = h.ok(2, "k", Command::Get, 10, 20, read(Some("a")));
    let r2 = h.ok(2, "k", Command::Get, 30, 40, read(None));
    let v = h.violation();
    assert_eq!(ids(&v.core), vec![r1, r2]);
    assert_eq!(ids(&v.writes_anytime), vec![w]);
    // The same with a completed write still in flight.
    let mut h = Builder::default();
    let w = h.ok(1, "k", put("a"), 0, 100, Output::Acknowledged);
    let r1 = h.ok(2, "k", Command::Get, 10, 20, read(Some("a")));
    let r2 = h.ok(2, "k", Command::Get, 30, 40, read(None));
    let v = h.violation();
    assert_eq!(ids(&v.core), vec![r1, r2], "{v}");
    // Cut at the second read, the write is still in flight.
    assert_eq!(ids(&v.writes_anytime), vec![w], "{v}");
}

#[test]
fn a_self_contradicting_cas_result_is_caught() {
    let mut h = Builder::default();
    let c = h.ok(1, "k", cas(Some("a"), "b"), 0, 10, swapped(None, true));
    assert_eq!(ids(&h.violation().core), vec![c]);
    let mut h = Builder::default();
    let c = h.ok(1, "k", cas(None, "b"), 0, 10, swapped(None, false));
    assert_eq!(ids(&h.violation().core), vec![c]);
}

#[test]
fn the_witness_of_a_long_history_is_small() {
    // 60 writes and reads by 3 overlapping clients, all consistent, then
    // one stale read on the same key and unrelated traffic on another.
    let mut h = Builder::default();
    let mut last = None;
    let mut puts = Vec::new();
    for i in 0..60u64 {
        let t = 100 * i;
        let value = format!("v{i}");
        puts.push(h.ok(1, "k", put(&value), t, t + 150, Output::Acknowledged));
        h.ok(2, "k", Command::Get, t + 60, t + 70, read(last.as_deref()));
        h.ok(3, "other", put(&value), t, t + 10, Output::Acknowledged);
        last = Some(value);
    }
    let bad = h.ok(2, "k", Command::Get, 10_000, 10_010, read(Some("v3")));
    let v = h.violation();
    assert_eq!(v.key, b("k"));
    assert!(v.minimal, "{v}");
    // The read, the write of "v3" (or a read that saw it), and one write
    // that follows it in real time.
    assert!(ids(&v.core).contains(&bad), "{v}");
    let all: Vec<OpId> = [&v.core, &v.writes_in_interval, &v.writes_anytime]
        .into_iter()
        .flat_map(|l| ids(l))
        .collect();
    assert!((3..=4).contains(&all.len()), "{v}");
    assert!(all.iter().any(|id| puts[4..].contains(id)), "{v}");
    assert!(v.to_string().contains("\"v3\""), "{v}");
}

/// A history of `ops` operations on key "k0" as a key-value test records
/// them: every written value unique, operations 20 ns apart and each
/// recorded up to `window_ns` before and after its instant, one in
/// `1000 / unknown_per_mille` of unknown outcome (half of those took
/// effect). Linearizable by construction.
fn unique_values_history(ops: u64, window_ns: u64, unknown_per_mille: u64) -> History {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut state: Option<Bytes> = None;
    let mut recent: Vec<Bytes> = Vec::new();
    let mut h = History::new();
    for i in 0..ops {
        let at = 1000 + 20 * i;
        let (invoked, completed) = (at - next(window_ns), at + next(window_ns));
        let value = b(&format!("u{i}"));
        let unknown = next(1000) < unknown_per_mille;
        let applies = !unknown || next(2) == 0;
        let before = state.clone();
        let (command, output) = match next(10) {
            0..=3 => (Command::Get, Output::Read(before)),
            4..=6 => {
                if applies {
                    state = Some(value.clone());
                }
                (Command::Put { value }, Output::Written { previous: before })
            }
            7 | 8 => {
                let expected = match next(3) {
                    0 => None,
                    _ => recent.get(next(4) as usize).cloned(),
                };
                let swapped = before == expected;
                if swapped && applies {
                    state = Some(value.clone());
                }
                (
                    Command::Cas {
                        expected,
                        new: value,
                    },
                    Output::Cas {
                        swapped,
                        current: before,
                    },
                )
            }
            _ => {
                if applies {
                    state = None;
                }
                (Command::Delete, Output::Written { previous: before })
            }
        };
        if let Some(v) = &state {
            recent.insert(0, v.clone());
            recent.truncate(4);
        }
        let client = i % 5;
        let op = if unknown {
            Operation::unknown(client, b("k0"), command, invoked)
        } else {
            Operation::completed(client, b("k0"), command, invoked, completed, output)
        };
        h.push(op).expect("valid");
    }
    h
}

#[test]
#[allow(clippy::print_stdout)]
fn a_long_concurrent_history_is_decided_within_the_default_bounds() {
    // 2000 operations on one key, each overlapping about six others,
    // one in twenty of unknown outcome.
    let history = unique_values_history(2000, 60, 50);
    assert!(history.unknown_count() > 50);
    let report = check(&history, &CheckConfig::default());
    assert_eq!(report.verdict, Verdict::Linearizable);
    // A stale read appended at the end is found, with a small witness,
    // which takes exhausting every order of the history.
    let mut bad = history.clone();
    let end = bad
        .operations()
        .iter()
        .map(|o| o.invoked_ns)
        .max()
        .unwrap_or(0)
        + 1000;
    let mut add = |cmd: Command, at: u64, out: Output| {
        bad.push(Operation::completed(9, b("k0"), cmd, at, at + 1, out))
            .expect("valid")
    };
    let fresh = add(put("fresh"), end, Output::Acknowledged);
    let over = add(put("over"), end + 2, written(Some("fresh")));
    let stale = add(Command::Get, end + 4, read(Some("fresh")));
    let report = check(&bad, &CheckConfig::default());
    let Verdict::NotLinearizable(v) = &report.verdict else {
        panic!("a stale read must be found: {}", report.verdict)
    };
    assert!(v.minimal, "{v}");
    // The overwrite saw "fresh" before the read did: "fresh" took
    // effect before it (written once), and not again.
    assert_eq!(ids(&v.core), vec![over, stale], "{v}");
    assert!(v.writes_in_interval.is_empty(), "{v}");
    assert_eq!(ids(&v.writes_anytime), vec![fresh], "{v}");
    println!(
        "{} steps to refute, {} for the witness:\n{v}",
        report.steps, report.witness_steps
    );
}
