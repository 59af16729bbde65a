//! Properties: the checker against a brute-force search written from the
//! model, on random histories and mutations of them.

use super::*;
use proptest::prelude::*;

/// An exhaustive search over every order of the operations (all keys at
/// once), written directly from the model's definition: an independent
/// reference for small histories.
fn brute_force(ops: &[Operation]) -> bool {
    brute_force_loose(ops, &vec![false; ops.len()])
}

/// [`brute_force`] where `loose[i]` makes operation `i`'s result free (it
/// still takes effect within its interval).
fn brute_force_loose(ops: &[Operation], loose: &[bool]) -> bool {
    fn completion(op: &Operation) -> Option<u64> {
        match op.outcome {
            Outcome::Completed { completed_ns, .. } => Some(completed_ns),
            Outcome::Unknown => None,
        }
    }
    /// The key's value after `op` from `state`, if the result fits.
    fn step(op: &Operation, loose: bool, state: Option<&Bytes>) -> Option<Option<Bytes>> {
        let output = match &op.outcome {
            _ if loose => None,
            Outcome::Unknown => None,
            Outcome::Completed { output, .. } => Some(output),
        };
        let current = state.cloned();
        match (&op.command, output) {
            (Command::Get, None) => Some(current),
            (Command::Get, Some(Output::Read(v))) => (*v == current).then_some(current),
            (Command::Put { value }, None | Some(Output::Acknowledged)) => {
                Some(Some(value.clone()))
            }
            (Command::Put { value }, Some(Output::Written { previous })) => {
                (*previous == current).then(|| Some(value.clone()))
            }
            (Command::Delete, None | Some(Output::Acknowledged)) => Some(None),
            (Command::Delete, Some(Output::Written { previous })) => {
                (*previous == current).then_some(None)
            }
            (Command::Cas { expected, new }, None) => Some(if current == *expected {
                Some(new.clone())
            } else {
                current
            }),
            (Command::Cas { expected, new }, Some(Output::Acknowledged)) => {
                (current == *expected).then(|| Some(new.clone()))
            }
            (
                Command::Cas { expected, new },
                Some(Output::Cas {
                    swapped,
                    current: c,
                }),
            ) => {
                if *c != current || *swapped != (current == *expected) {
                    None
                } else if *swapped {
                    Some(Some(new.clone()))
                } else {
                    Some(current)
                }
            }
            _ => None,
        }
    }
    fn dfs(
        ops: &[Operation],
        loose: &[bool],
        placed: &mut [bool],
        state: &mut BTreeMap<Bytes, Bytes>,
    ) -> bool {
        let done = ops
            .iter()
            .zip(placed.iter())
            .all(|(o, &p)| p || completion(o).is_none());
        if done {
            return true;
        }
        for i in 0..ops.len() {
            if placed[i] {
                continue;
            }
            // Real time: no operation left unplaced completed before
            // this one was invoked.
            let blocked = (0..ops.len()).any(|j| {
                !placed[j] && j != i && completion(&ops[j]).is_some_and(|c| c < ops[i].invoked_ns)
            });
            if blocked {
                continue;
            }
            let key = &ops[i].key;
            let Some(after) = step(&ops[i], loose[i], state.get(key)) else {
                continue;
            };
            let before = match after {
                Some(v) => state.insert(key.clone(), v),
                None => state.remove(key),
            };
            placed[i] = true;
            let ok = dfs(ops, loose, placed, state);
            placed[i] = false;
            match before {
                Some(v) => state.insert(key.clone(), v),
                None => state.remove(key),
            };
            if ok {
                return true;
            }
        }
        false
    }
    dfs(
        ops,
        loose,
        &mut vec![false; ops.len()],
        &mut BTreeMap::new(),
    )
}

/// One generated operation: what it does, and how it overlaps.
#[derive(Clone, Debug)]
struct Gen {
    key: u8,
    kind: u8,
    value: u8,
    expected: u8,
    back: u64,
    forward: u64,
    /// 0: unknown outcome, took effect; 1: unknown, never took effect;
    /// otherwise completed.
    fate: u8,
    detailed: bool,
}

/// Generated operations, each recorded up to `overlap_ns` before and
/// after its instant (operations are 20 ns apart).
fn gen(overlap_ns: u64) -> impl Strategy<Value = Gen> {
    (
        prop_oneof![3 => Just(0u8), 1 => Just(1u8)],
        0u8..4,
        0u8..3,
        0u8..4,
        0..overlap_ns,
        0..overlap_ns,
        0u8..8,
        any::<bool>(),
    )
        .prop_map(
            |(key, kind, value, expected, back, forward, fate, detailed)| Gen {
                key,
                kind,
                value,
                expected,
                back,
                forward,
                fate,
                detailed,
            },
        )
}

/// A history produced by running the generated operations one after the
/// other on a sequential model at instants 1000, 1020, ..., each
/// recorded with an interval around its instant: linearizable by
/// construction.
fn sequential_history(gens: &[Gen]) -> Vec<Operation> {
    let mut state: BTreeMap<Bytes, Bytes> = BTreeMap::new();
    let mut ops = Vec::new();
    for (i, g) in gens.iter().enumerate() {
        let at = 1000 + 20 * i as u64;
        let key = b(&format!("k{}", g.key));
        let value = b(&format!("v{}", g.value));
        let expected = (g.expected > 0).then(|| b(&format!("v{}", g.expected - 1)));
        let command = match g.kind {
            0 => Command::Get,
            1 => Command::Put {
                value: value.clone(),
            },
            2 => Command::Delete,
            _ => Command::Cas {
                expected: expected.clone(),
                new: value.clone(),
            },
        };
        let invoked_ns = at - g.back;
        let client = i as u64 % 4;
        if g.fate == 1 {
            ops.push(Operation::unknown(client, key, command, invoked_ns));
            continue;
        }
        let current = state.get(&key).cloned();
        let output = match &command {
            Command::Get => Output::Read(current.clone()),
            Command::Put { value } => {
                state.insert(key.clone(), value.clone());
                Output::Written {
                    previous: current.clone(),
                }
            }
            Command::Delete => {
                state.remove(&key);
                Output::Written {
                    previous: current.clone(),
                }
            }
            Command::Cas { expected, new } => {
                let swapped = current == *expected;
                if swapped {
                    state.insert(key.clone(), new.clone());
                }
                Output::Cas {
                    swapped,
                    current: current.clone(),
                }
            }
        };
        let output = match output {
            Output::Written { .. } if !g.detailed => Output::Acknowledged,
            Output::Cas { swapped: true, .. } if !g.detailed => Output::Acknowledged,
            o => o,
        };
        if g.fate == 0 {
            ops.push(Operation::unknown(client, key, command, invoked_ns));
        } else {
            ops.push(Operation::completed(
                client,
                key,
                command,
                invoked_ns,
                at + g.forward,
                output,
            ));
        }
    }
    ops
}

/// One change to one operation of a history.
fn mutate(ops: &mut [Operation], index: usize, kind: u8, value: u8, shift: u64) {
    let index = index % ops.len().max(1);
    let Some(key) = ops.get(index).map(|o| o.key.clone()) else {
        return;
    };
    // A value the key held at some point (absent, or one written), so
    // that most changes make subtle violations rather than reads of
    // values never written.
    let mut held: Vec<Option<Bytes>> = vec![None];
    for o in ops.iter().filter(|o| o.key == key) {
        match &o.command {
            Command::Put { value } | Command::Cas { new: value, .. } => {
                held.push(Some(value.clone()))
            }
            Command::Get | Command::Delete => {}
        }
    }
    let new_value = held[usize::from(value) % held.len()].clone();
    let op = &mut ops[index];
    match (kind, &mut op.outcome) {
        // Change an observed value.
        (0, Outcome::Completed { output, .. }) => match output {
            Output::Read(v) => *v = new_value,
            Output::Written { previous } => *previous = new_value,
            Output::Cas { current, .. } => *current = new_value,
            Output::Acknowledged => {}
        },
        // Flip a compare-and-set's answer.
        (
            1,
            Outcome::Completed {
                output: Output::Cas { swapped, .. },
                ..
            },
        ) => *swapped = !*swapped,
        // Move the operation earlier, with a short interval.
        (2, Outcome::Completed { completed_ns, .. }) => {
            op.invoked_ns = op.invoked_ns.saturating_sub(shift);
            *completed_ns = op.invoked_ns + shift % 7;
        }
        // Forget the outcome.
        (3, outcome) => *outcome = Outcome::Unknown,
        // Move the operation later.
        (_, Outcome::Completed { completed_ns, .. }) => {
            op.invoked_ns += shift;
            *completed_ns += shift;
        }
        (_, Outcome::Unknown) => op.invoked_ns += shift,
    }
}

/// The operations of `all` on `key`, for [`brute_force_loose`]: those in
/// `core` as recorded, those in `bounded` released from their results
/// (reads dropped), every other one of unknown outcome (reads dropped).
fn judged(
    all: &[Operation],
    key: &Bytes,
    core: &[OpId],
    bounded: &[OpId],
) -> (Vec<Operation>, Vec<bool>) {
    let mut ops = Vec::new();
    let mut loose = Vec::new();
    for (i, o) in all.iter().enumerate().filter(|(_, o)| o.key == *key) {
        if core.contains(&OpId(i)) {
            ops.push(o.clone());
            loose.push(false);
        } else if o.command == Command::Get {
            continue;
        } else if bounded.contains(&OpId(i)) {
            ops.push(o.clone());
            loose.push(true);
        } else {
            ops.push(Operation::unknown(
                o.client,
                o.key.clone(),
                o.command.clone(),
                o.invoked_ns,
            ));
            loose.push(false);
        }
    }
    (ops, loose)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn histories_of_a_sequential_model_are_linearizable(gens in prop::collection::vec(gen(60), 0..40)) {
        let history = History::from_operations(sequential_history(&gens)).expect("valid");
        let report = check(&history, &CheckConfig::default());
        prop_assert_eq!(&report.verdict, &Verdict::Linearizable, "{:#?}", history);
    }

    #[test]
    fn verdicts_match_an_exhaustive_search(
        gens in prop::collection::vec(gen(30), 1..8),
        mutations in prop::collection::vec((0usize..8, 0u8..5, 0u8..8, 0u64..80), 1..4),
    ) {
        let mut ops = sequential_history(&gens);
        prop_assert!(brute_force(&ops), "the reference rejects a sequential history: {:#?}", ops);
        for (index, kind, value, shift) in mutations {
            mutate(&mut ops, index, kind, value, shift);
        }
        let history = History::from_operations(ops.clone()).expect("valid");
        let expected = brute_force(&ops);
        let report = check(&history, &CheckConfig::default());
        match &report.verdict {
            Verdict::Linearizable => prop_assert!(expected, "checker accepts {:#?}", ops),
            Verdict::Unknown { .. } => prop_assert!(false, "undecided on {} operations", ops.len()),
            Verdict::NotLinearizable(v) => {
                prop_assert!(!expected, "checker rejects {:#?}\n{}", ops, v);
                prop_assert!(!v.core.is_empty());
                for (id, op) in v.core.iter().chain(&v.writes_in_interval).chain(&v.writes_anytime) {
                    prop_assert_eq!(&op.key, &v.key);
                    prop_assert_eq!(Some(op), history.get(*id));
                }
                let core = ids(&v.core);
                let bounded = ids(&v.writes_in_interval);
                // The witness fails as stated...
                let mut stated: Vec<Operation> = v.core.iter().map(|(_, o)| o.clone()).collect();
                let mut loose = vec![false; stated.len()];
                stated.extend(v.writes_in_interval.iter().map(|(_, o)| o.clone()));
                loose.resize(stated.len(), true);
                stated.extend(v.writes_anytime.iter().map(|(_, o)| {
                    Operation::unknown(o.client, o.key.clone(), o.command.clone(), o.invoked_ns)
                }));
                loose.resize(stated.len(), false);
                prop_assert!(!brute_force_loose(&stated, &loose), "{}", v);
                // ...and with every other operation on the key released.
                let (all, loose) = judged(&ops, &v.key, &core, &bounded);
                prop_assert!(!brute_force_loose(&all, &loose), "{}", v);
                // Minimal: releasing any one core operation from its
                // result, or any one bounded write from its interval,
                // makes it linearizable.
                prop_assert!(v.minimal, "{}", v);
                for c in &core {
                    let rest: Vec<OpId> = core.iter().copied().filter(|x| x != c).collect();
                    let mut more = bounded.clone();
                    more.push(*c);
                    let (all, loose) = judged(&ops, &v.key, &rest, &more);
                    prop_assert!(brute_force_loose(&all, &loose), "releasing {} leaves a failure: {}", c, v);
                }
                for w in &bounded {
                    let rest: Vec<OpId> = bounded.iter().copied().filter(|x| x != w).collect();
                    let (all, loose) = judged(&ops, &v.key, &core, &rest);
                    prop_assert!(brute_force_loose(&all, &loose), "releasing {} leaves a failure: {}", w, v);
                }
            }
        }
    }
}
