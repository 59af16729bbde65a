//! Crash test: a child process (this test binary, re-run with an environment
//! variable) appends and syncs in a loop, printing each durable key; the
//! parent kills it with SIGKILL at random moments and checks every reopen.
//! Every other round the child appends on one thread while another syncs,
//! so flushes run concurrently with appends (sync releases the log's lock
//! while it waits for the disk). Some records are tagged (`crash_tagged`):
//! every reopen checks each record's tag and the log's tagged-key set.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use paxos_wal::{Wal, WalOptions};

use crate::payload_for;

const CHILD_ENV: &str = "PAXOS_WAL_CRASH_CHILD_DIR";
const CONCURRENT_ENV: &str = "PAXOS_WAL_CRASH_CHILD_CONCURRENT";
const ROUNDS: usize = 24;

/// The keys the child appends tagged.
fn crash_tagged(key: u64) -> bool {
    key % 11 == 5
}

fn opts() -> WalOptions {
    // Small segments: rolls, recycling and the background preparer all run.
    WalOptions {
        segment_bytes: 64 << 10,
        max_spare_segments: 2,
        ..WalOptions::default()
    }
}

/// The child's body; only runs when the parent sets the environment variable.
#[test]
#[ignore = "run by crash::sigkill_at_random_moments as a child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (wal, _) = Wal::open(&dir, opts()).unwrap();
    if std::env::var_os(CONCURRENT_ENV).is_some() {
        concurrent_child(wal);
        return;
    }
    let mut next = wal.last_key().unwrap_or(0) + 1;
    let mut rng = next.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let stdout = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let batch = 1 + rng % 24;
        for _ in 0..batch {
            wal.append_tagged(next, crash_tagged(next), &payload_for(next))
                .unwrap();
            next += 1;
        }
        let durable = wal.sync().unwrap().unwrap();
        let mut out = stdout.lock();
        writeln!(out, "D {durable}").unwrap();
        out.flush().unwrap();
        if rng % 16 == 0 {
            wal.truncate_prefix(durable.saturating_sub(500)).unwrap();
        }
    }
}

/// One thread appends batches, the other syncs and reports; both stop at a
/// deadline (the parent normally kills them long before).
fn concurrent_child(wal: Wal) {
    let wal = std::sync::Arc::new(wal);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let appender = {
        let (wal, stop) = (std::sync::Arc::clone(&wal), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut next = wal.last_key().unwrap_or(0) + 1;
            let mut rng = next.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch = 1 + xorshift(&mut rng) % 24;
                let payloads: Vec<(u64, Vec<u8>)> =
                    (next..next + batch).map(|k| (k, payload_for(k))).collect();
                wal.append_batch_tagged(
                    payloads.iter().map(|(k, p)| (*k, crash_tagged(*k), &p[..])),
                )
                .unwrap();
                next += batch;
                std::thread::yield_now();
            }
        })
    };
    let stdout = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rounds = 0u64;
    let mut last_durable = None;
    while Instant::now() < deadline {
        let durable = wal.sync().unwrap();
        assert!(durable >= last_durable, "the durable key never goes back");
        last_durable = durable;
        if let Some(d) = durable {
            let mut out = stdout.lock();
            writeln!(out, "D {d}").unwrap();
            out.flush().unwrap();
            rounds += 1;
            if rounds % 16 == 0 {
                wal.truncate_prefix(d.saturating_sub(500)).unwrap();
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    appender.join().unwrap();
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[test]
fn sigkill_at_random_moments() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash test seed {seed}");
    let mut max_durable = 0u64;
    let mut kills_mid_run = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                "crash::crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .envs((round % 2 == 1).then_some((CONCURRENT_ENV, "1")))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(k) = line
                    .strip_prefix("D ")
                    .and_then(|k| k.trim().parse::<u64>().ok())
                {
                    last = last.max(k);
                }
            }
            last
        });
        let wait_ms = 20 + xorshift(&mut seed) % 250;
        std::thread::sleep(Duration::from_millis(wait_ms));
        let still_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        kills_mid_run += usize::from(still_running);
        let reported = reader.join().unwrap();
        assert!(
            still_running || status.success(),
            "child failed on its own in round {round}: {status}"
        );
        max_durable = max_durable.max(reported);

        let (wal, report) = Wal::open(dir.path(), opts()).unwrap();
        assert!(report.damaged.is_none(), "round {round}: {report:?}");
        let last = wal.last_key().unwrap_or(0);
        assert!(
            last >= max_durable,
            "round {round}: durable key {max_durable} lost (last {last})"
        );
        let r = wal.reader();
        let first = r.first_key().unwrap_or(1);
        let mut expect = first;
        for rec in r.iter_from(0) {
            let rec = rec.unwrap();
            assert_eq!(rec.key, expect, "round {round}: keys are contiguous");
            assert_eq!(
                rec.payload,
                &payload_for(rec.key)[..],
                "round {round}: key {} payload",
                rec.key
            );
            assert_eq!(
                rec.tagged,
                crash_tagged(rec.key),
                "round {round}: key {} tag",
                rec.key
            );
            expect += 1;
        }
        assert_eq!(expect - 1, last);
        let tagged: Vec<u64> = (first..=last).filter(|&k| crash_tagged(k)).collect();
        assert_eq!(
            r.tagged_keys().iter().copied().collect::<Vec<_>>(),
            tagged,
            "round {round}: tagged keys rebuilt by recovery"
        );
        assert!(
            first <= max_durable.saturating_sub(400).max(1),
            "prefix truncation keeps the recent part"
        );
        drop(r);
        drop(wal);
    }
    println!("{ROUNDS} rounds, {kills_mid_run} killed mid-run, max durable key {max_durable}");
    assert!(
        kills_mid_run > ROUNDS / 2,
        "the child was mostly killed while running"
    );
    assert!(max_durable > 0);
}
