//! Bounds of the search, malformed operations and the recorder.

use super::*;

#[test]
fn out_of_steps_or_memory_is_unknown_not_a_guess() {
    let mut h = Builder::default();
    h.ok(1, "k", put("a"), 0, 10, Output::Acknowledged);
    h.ok(2, "k", Command::Get, 20, 30, read(Some("a")));
    h.ok(2, "k", Command::Get, 40, 50, read(Some("a")));
    let steps = CheckConfig {
        max_steps_per_key: 2,
        ..CheckConfig::default()
    };
    let report = check(&h.0, &steps);
    assert!(
        matches!(&report.verdict, Verdict::Unknown { key, operations: 3, steps: 2 } if key == &b("k")),
        "{:?}",
        report.verdict
    );
    let memory = CheckConfig {
        max_cache_bytes: 0,
        ..CheckConfig::default()
    };
    assert!(matches!(
        check(&h.0, &memory).verdict,
        Verdict::Unknown { .. }
    ));
    // A violation on a later key still wins over an undecided key.
    h.ok(3, "z", Command::Get, 0, 1, read(Some("never")));
    let report = check(&h.0, &steps);
    assert!(matches!(report.verdict, Verdict::NotLinearizable(_)));
}

#[test]
fn malformed_operations_are_refused() {
    let mut h = History::new();
    let late = Operation::completed(1, b("k"), Command::Get, 10, 5, read(None));
    assert_eq!(
        h.push(late),
        Err(HistoryError::CompletedBeforeInvoked {
            op: OpId(0),
            invoked_ns: 10,
            completed_ns: 5
        })
    );
    let wrong = Operation::completed(1, b("k"), Command::Get, 0, 5, Output::Acknowledged);
    assert!(matches!(
        History::from_operations(vec![wrong]),
        Err(HistoryError::OutputMismatch { op: OpId(0), .. })
    ));
    let wrong = Operation::completed(1, b("k"), put("a"), 0, 5, read(None));
    assert!(h.push(wrong).is_err());
    assert!(h.is_empty());
}

#[test]
fn recorder_keeps_real_intervals_and_refuses_double_finishes() {
    let rec = Recorder::new();
    let other = Recorder::new();
    let w = rec.invoke(1, b("k"), put("a"));
    let r = rec.invoke(2, b("k"), Command::Get);
    let lost = rec.invoke(3, b("k"), put("b"));
    let _never_finished = rec.invoke(4, b("k"), Command::Delete);
    let foreign = other.invoke(1, b("k"), Command::Get);
    let bad = rec.invoke(5, b("k"), Command::Get);
    let w = rec.complete(w, written(None)).expect("fits");
    assert_eq!(rec.complete(r, read(Some("a"))), Ok(OpId(1)));
    assert_eq!(rec.unknown(lost), Ok(OpId(2)));
    assert_eq!(
        rec.complete(foreign, read(None)),
        Err(HistoryError::NotPending { op: OpId(0) })
    );
    assert!(matches!(
        rec.complete(bad, Output::Acknowledged),
        Err(HistoryError::OutputMismatch { op: OpId(4), .. })
    ));
    let forged = Invocation {
        recorder: rec.id,
        index: 0,
    };
    assert_eq!(
        rec.unknown(forged),
        Err(HistoryError::NotPending { op: OpId(0) })
    );
    let h = rec.history();
    assert_eq!(h.len(), 5);
    assert_eq!(h.unknown_count(), 3);
    let Some(Operation {
        invoked_ns,
        outcome: Outcome::Completed { completed_ns, .. },
        ..
    }) = h.get(w)
    else {
        panic!("the write completed: {h:?}")
    };
    assert!(invoked_ns <= completed_ns);
    assert!(History::from_operations(h.operations().to_vec()).is_ok());
    assert_eq!(
        check(&h, &CheckConfig::default()).verdict,
        Verdict::Linearizable
    );
}
