//! Crash loop for the shared log: a child process (this test binary run
//! again) writes batches over several groups on one thread while another
//! thread syncs, and compacts now and then; the parent kills it with
//! SIGKILL at random moments. The child prints every batch before writing
//! it and every durable LSN after its sync, so the parent knows the whole
//! history. After each kill the reopened log must equal the per-group model
//! after some prefix of that history, no shorter than what the last
//! reported sync covered.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use paxos_wal::shared::{Op, SharedLog};
use paxos_wal::WalOptions;

const CHILD_ENV: &str = "PAXOS_WAL_SHARED_CRASH_DIR";
/// Set for odd rounds: the child combines writes
/// (`SharedLog::set_combine_writes`) and flushes every few batches, as a
/// host does at the end of its loop's pass.
const COMBINE_ENV: &str = "PAXOS_WAL_SHARED_CRASH_COMBINE";
const ROUNDS: usize = 12;
const GROUPS: u64 = 6;

fn opts() -> WalOptions {
    WalOptions {
        segment_bytes: 64 << 10,
        max_spare_segments: 2,
        ..WalOptions::default()
    }
}

/// One write as printed by the child: `E g k`, `S g after`, `P g upto`,
/// `M g v`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum W {
    Entry(u64, u64),
    Suffix(u64, u64),
    Prefix(u64, u64),
    Meta(u64, u64),
}

fn payload(g: u64, k: u64) -> Vec<u8> {
    let len = (k.wrapping_mul(31).wrapping_add(g) % 300) as usize;
    (0..len)
        .map(|i| (k as u8) ^ (g as u8) ^ (i as u8))
        .collect()
}

fn tagged(g: u64, k: u64) -> bool {
    (g + k) % 9 == 0
}

fn state(g: u64, v: u64) -> Vec<u8> {
    format!("group {g} state {v}").into_bytes()
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[test]
#[ignore = "run by shared_crash::shared_log_survives_sigkill as a child process"]
fn shared_crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (log, _) = SharedLog::open(&dir, opts()).unwrap();
    {
        let mut o = std::io::stdout().lock();
        writeln!(o, "\n{START}").unwrap();
        o.flush().unwrap();
    }
    let combine = std::env::var_os(COMBINE_ENV).is_some();
    log.set_combine_writes(combine);
    let log = Arc::new(log);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let stop = Arc::new(AtomicBool::new(false));
    let syncer = {
        let (log, out, stop) = (Arc::clone(&log), Arc::clone(&out), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(d) = log.sync().unwrap() {
                    let mut o = out.lock();
                    writeln!(o, "D {d}").unwrap();
                    o.flush().unwrap();
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let mut rng = log
        .last_lsn()
        .unwrap_or(0)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        | 1;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut batches = 0u64;
    while Instant::now() < deadline {
        let mut ws = Vec::new();
        let mut last: BTreeMap<u64, u64> = BTreeMap::new();
        for _ in 0..1 + xorshift(&mut rng) % 6 {
            let g = xorshift(&mut rng) % GROUPS;
            // A truncation or state only as the group's first write of the
            // batch, so that the group's last key is easy to follow.
            let first_of_group = !last.contains_key(&g);
            let l = *last
                .entry(g)
                .or_insert_with(|| log.last_key(g).unwrap_or(0));
            let w = match (first_of_group, xorshift(&mut rng) % 20) {
                (true, 0) => W::Suffix(g, l.saturating_sub(xorshift(&mut rng) % 4)),
                (true, 1) => W::Prefix(g, l.saturating_sub(xorshift(&mut rng) % 30)),
                (true, 2) => W::Meta(g, xorshift(&mut rng) % 1000),
                _ => W::Entry(g, l + 1),
            };
            match w {
                W::Entry(g, k) => {
                    last.insert(g, k);
                }
                W::Suffix(g, after) => {
                    let kept = log.last_key_below(g, after.saturating_add(1)).unwrap_or(0);
                    last.insert(g, kept);
                }
                _ => {}
            }
            ws.push(w);
        }
        let payloads: Vec<Vec<u8>> = ws
            .iter()
            .map(|w| match *w {
                W::Entry(g, k) => payload(g, k),
                W::Meta(g, v) => state(g, v),
                _ => Vec::new(),
            })
            .collect();
        let ops: Vec<Op<'_>> = ws
            .iter()
            .zip(&payloads)
            .map(|(w, p)| match *w {
                W::Entry(g, k) => Op::Entry {
                    group: g,
                    key: k,
                    tagged: tagged(g, k),
                    payload: p,
                },
                W::Suffix(g, after) => Op::TruncateSuffix { group: g, after },
                W::Prefix(g, upto) => Op::TruncatePrefix { group: g, upto },
                W::Meta(g, _) => Op::Meta { group: g, state: p },
            })
            .collect();
        {
            let mut o = out.lock();
            writeln!(o, "B").unwrap();
            for w in &ws {
                let (c, g, x) = match *w {
                    W::Entry(g, k) => ('E', g, k),
                    W::Suffix(g, a) => ('S', g, a),
                    W::Prefix(g, u) => ('P', g, u),
                    W::Meta(g, v) => ('M', g, v),
                };
                writeln!(o, "{c} {g} {x}").unwrap();
            }
            o.flush().unwrap();
        }
        let lsn = log.write(&ops).unwrap().unwrap();
        {
            let mut o = out.lock();
            writeln!(o, "L {lsn}").unwrap();
            o.flush().unwrap();
        }
        batches += 1;
        if combine && batches % 5 == 0 {
            log.flush().unwrap();
        }
        if batches % 40 == 0 {
            log.compact().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    syncer.join().unwrap();
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Group {
    entries: BTreeMap<u64, (bool, Vec<u8>)>,
    meta: Option<Vec<u8>>,
}

type Model = BTreeMap<u64, Group>;

fn apply(m: &mut Model, w: W) {
    match w {
        W::Entry(g, k) => {
            m.entry(g)
                .or_default()
                .entries
                .insert(k, (tagged(g, k), payload(g, k)));
        }
        W::Suffix(g, after) => m.entry(g).or_default().entries.retain(|k, _| *k <= after),
        W::Prefix(g, upto) => m.entry(g).or_default().entries.retain(|k, _| *k > upto),
        W::Meta(g, v) => m.entry(g).or_default().meta = Some(state(g, v)),
    }
}

fn held(m: &Model) -> Model {
    m.iter()
        .filter(|(_, g)| !g.entries.is_empty() || g.meta.is_some())
        .map(|(k, v)| (*k, v.clone()))
        .collect()
}

fn observed(log: &SharedLog) -> Model {
    let mut m = Model::new();
    for g in log.groups() {
        let mut grp = Group {
            meta: log.meta(g),
            ..Group::default()
        };
        log.read(g, 0, usize::MAX, usize::MAX, |e| {
            grp.entries.insert(e.key, (e.tagged, e.payload.to_vec()));
        })
        .unwrap();
        m.insert(g, grp);
    }
    held(&m)
}

/// The child's output: batches (their writes, and their last LSN if it got
/// that far) and the highest durable LSN it reported.
/// A batch's writes, and its last LSN once the child printed it.
type Batch = (Vec<W>, Option<u64>);

/// The child's first line of its own: everything before it is the test
/// harness's (whose `test <name> ... ` has no line break, so the child
/// starts with one).
const START: &str = "START";

/// Parses the child's output from its [`START`] line on; panics when a
/// child that wrote batches printed no start line (its first batch could
/// have been glued to the harness's line and lost, and the model with it:
/// a later check would then fail on a model missing writes the log holds).
fn parse(lines: &[String]) -> (Vec<Batch>, u64) {
    let mut batches: Vec<Batch> = Vec::new();
    let mut durable = 0;
    let Some(start) = lines.iter().position(|l| l == START) else {
        assert!(
            !lines.iter().any(|l| l.starts_with("L ")),
            "the child wrote batches but printed no start line"
        );
        return (batches, durable);
    };
    for line in &lines[start + 1..] {
        let f: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
        match (f.first().copied(), num(1), num(2)) {
            (Some("B"), _, _) => batches.push((Vec::new(), None)),
            (Some("D"), Some(d), _) => durable = durable.max(d),
            (Some("L"), Some(l), _) => {
                if let Some(b) = batches.last_mut() {
                    b.1 = Some(l);
                }
            }
            (Some(c), Some(g), Some(x)) => {
                let w = match c {
                    "E" => W::Entry(g, x),
                    "S" => W::Suffix(g, x),
                    "P" => W::Prefix(g, x),
                    "M" => W::Meta(g, x),
                    _ => continue,
                };
                if let Some(b) = batches.last_mut() {
                    b.0.push(w);
                }
            }
            _ => {} // a line cut by the kill
        }
    }
    (batches, durable)
}

/// The child's stdout as the test harness leaves it: the harness prints
/// `test <name> ... ` with no line break before the test's own output.
#[test]
fn the_childs_first_batch_is_parsed_after_the_harness_line() {
    let out: Vec<String> = [
        "",
        "running 1 test",
        "test shared_crash::shared_crash_child ... ",
        START,
        "B",
        "E 5 1",
        "E 5 2",
        "L 2",
        "D 2",
        "B",
        "E 3 1",
    ]
    .iter()
    .map(|l| l.to_string())
    .collect();
    let (batches, durable) = parse(&out);
    assert_eq!(
        batches,
        vec![
            (vec![W::Entry(5, 1), W::Entry(5, 2)], Some(2)),
            (vec![W::Entry(3, 1)], None)
        ]
    );
    assert_eq!(durable, 2);
    // Without its start line the output is not trusted: a batch glued to
    // the harness line would be lost, and the model with it.
    let glued: Vec<String> = [
        "test shared_crash::shared_crash_child ... B",
        "E 5 1",
        "L 1",
    ]
    .iter()
    .map(|l| l.to_string())
    .collect();
    assert!(std::panic::catch_unwind(|| parse(&glued)).is_err());
}

#[test]
fn shared_log_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("shared crash test seed {seed}");
    let mut base = Model::new();
    let mut durable_writes = 0usize;
    for round in 0..ROUNDS {
        let mut cmd = Command::new(&exe);
        if round % 2 == 1 {
            cmd.env(COMBINE_ENV, "1");
        }
        let mut child = cmd
            .args([
                "shared_crash::shared_crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(30 + xorshift(&mut seed) % 300));
        let running = child.try_wait().unwrap().is_none();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            running || status.success(),
            "round {round}: child failed: {status}"
        );
        let (batches, durable) = parse(&reader.join().unwrap());

        // Writes the last reported sync covered: every batch up to the
        // last one whose LSN it reached.
        let mut must = 0;
        let mut total = 0;
        for (ws, lsn) in &batches {
            total += ws.len();
            if lsn.is_some_and(|l| l <= durable) {
                must = total;
            }
        }
        let history: Vec<W> = batches.into_iter().flat_map(|b| b.0).collect();

        let (log, report) = SharedLog::open(dir.path(), opts()).unwrap();
        assert!(
            report.wal.damaged.is_none(),
            "round {round}: {:?}",
            report.wal
        );
        let got = observed(&log);
        // The log must be the model after some prefix of this round's
        // writes, at least `must` long; take the longest that matches.
        let mut model = base.clone();
        let mut matched = (held(&model) == got).then_some(0);
        for (i, w) in history.iter().enumerate() {
            apply(&mut model, *w);
            if held(&model) == got {
                matched = Some(i + 1);
            }
        }
        let Some(k) = matched else {
            panic!("round {round}: the reopened log matches no prefix of the writes");
        };
        assert!(
            k >= must,
            "round {round}: {k} writes survived, but the sync covered {must}"
        );
        durable_writes += must;
        let mut next = base.clone();
        for w in &history[..k] {
            apply(&mut next, *w);
        }
        base = held(&next);
        drop(log);
    }
    println!("{ROUNDS} rounds, {durable_writes} writes covered by reported syncs");
    assert!(durable_writes > 0, "the children made progress");
}
