//! Histories that are linearizable.

use super::*;

#[test]
fn empty_and_single_operations_are_linearizable() {
    assert_eq!(Builder::default().verdict(), Verdict::Linearizable);
    let mut h = Builder::default();
    h.ok(1, "k", Command::Get, 0, 1, read(None));
    assert_eq!(h.verdict(), Verdict::Linearizable);
}

#[test]
fn reads_overlapping_a_write_may_see_either_value_once_each_way() {
    let mut h = Builder::default();
    h.ok(1, "k", put("a"), 0, 100, written(None));
    h.ok(2, "k", Command::Get, 10, 20, read(None));
    h.ok(2, "k", Command::Get, 30, 40, read(Some("a")));
    h.ok(3, "k", Command::Get, 35, 120, read(Some("a")));
    h.ok(3, "k", Command::Get, 130, 140, read(Some("a")));
    assert_eq!(h.verdict(), Verdict::Linearizable);
}

#[test]
fn concurrent_writes_may_take_effect_in_either_order() {
    let mut h = Builder::default();
    h.ok(1, "k", put("a"), 0, 50, written(Some("b")));
    h.ok(2, "k", put("b"), 10, 60, written(None));
    h.ok(3, "k", Command::Get, 70, 80, read(Some("a")));
    h.ok(3, "k", Command::Delete, 90, 95, written(Some("a")));
    h.ok(3, "k", Command::Get, 96, 97, read(None));
    assert_eq!(h.verdict(), Verdict::Linearizable);
}

#[test]
fn operations_at_equal_instants_are_concurrent() {
    let mut h = Builder::default();
    // The read is invoked at the very instant the write completes, so it
    // may be ordered first.
    h.ok(1, "k", put("a"), 0, 10, Output::Acknowledged);
    h.ok(2, "k", Command::Get, 10, 20, read(None));
    assert_eq!(h.verdict(), Verdict::Linearizable);
}

#[test]
fn an_unknown_write_may_take_effect_late_or_never() {
    // Observed long after its invocation, even after a later write.
    let mut h = Builder::default();
    h.unknown(1, "k", put("a"), 0);
    h.ok(2, "k", put("b"), 10, 20, Output::Acknowledged);
    h.ok(2, "k", Command::Get, 30, 40, read(Some("b")));
    h.ok(2, "k", Command::Get, 1000, 1010, read(Some("a")));
    assert_eq!(h.verdict(), Verdict::Linearizable);
    // Never observed.
    let mut h = Builder::default();
    h.unknown(1, "k", put("a"), 0);
    h.ok(2, "k", Command::Get, 100, 110, read(None));
    h.unknown(1, "k", Command::Get, 120);
    assert_eq!(h.verdict(), Verdict::Linearizable);
}

#[test]
fn an_unknown_cas_swaps_only_if_it_finds_its_expected_value() {
    let mut h = Builder::default();
    h.ok(1, "k", put("a"), 0, 10, Output::Acknowledged);
    h.unknown(2, "k", cas(Some("a"), "b"), 20);
    h.ok(1, "k", Command::Get, 30, 40, read(Some("a")));
    h.ok(1, "k", Command::Get, 50, 60, read(Some("b")));
    assert_eq!(h.verdict(), Verdict::Linearizable);
    // It cannot swap from a value it did not expect.
    let mut h = Builder::default();
    h.ok(1, "k", put("x"), 0, 10, Output::Acknowledged);
    h.unknown(2, "k", cas(Some("a"), "b"), 20);
    h.ok(1, "k", Command::Get, 50, 60, read(Some("b")));
    assert!(!h.verdict().is_linearizable());
}

#[test]
fn concurrent_cas_one_wins() {
    let mut h = Builder::default();
    h.ok(1, "k", cas(None, "a"), 0, 50, swapped(None, true));
    h.ok(2, "k", cas(None, "b"), 10, 40, swapped(Some("a"), false));
    h.ok(3, "k", cas(Some("a"), "c"), 20, 60, Output::Acknowledged);
    h.ok(3, "k", Command::Get, 70, 80, read(Some("c")));
    assert_eq!(h.verdict(), Verdict::Linearizable);
}

#[test]
fn keys_are_independent() {
    let mut h = Builder::default();
    h.ok(1, "x", put("a"), 0, 10, Output::Acknowledged);
    h.ok(2, "y", Command::Get, 20, 30, read(None));
    h.ok(2, "x", Command::Get, 20, 30, read(Some("a")));
    h.ok(1, "y", put("a"), 40, 50, written(None));
    let report = check(&h.0, &CheckConfig::default());
    assert_eq!(report.verdict, Verdict::Linearizable);
    assert_eq!(report.keys_checked, 2);
}
