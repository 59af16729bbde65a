//! paxos-wal's shared log (`paxos_wal::shared`) against one log per group.
//!
//! Group `shared_wal_g<G>`: one 100-byte entry for each of G groups, made
//! durable. `baseline_separate_wals`: G `Wal`s, one append and one sync each
//! (what G groups with a `WalStorage` each pay). `shared_one_sync`: one
//! `SharedLog`, the G entries in one batch, one sync. Every 2048 rounds the
//! logs drop their old prefix (amortized in the figures).
//!
//! Group `shared_wal_read`: one group's newest entry read back from a
//! group of 1 000 or 200 000 entries.
//!
//! Group `shared_wal_turn`: one pass of a host's loop over 256 groups, each
//! writing its own batch (one 100-byte entry and its state record, as a
//! group's `Ready` does). `direct`: each batch is its own positioned write.
//! `combined`: write combining on (`SharedLog::set_combine_writes`), one
//! flush at the end of the pass. Both sync every 64 passes (amortized).
//!
//! Files live under the system temp dir when it is disk-backed, else under
//! `target/bench-tmp`. `PAXOS_BENCH_QUICK=1` shortens the runs.
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use paxos_wal::shared::{Op, SharedLog};
use paxos_wal::{Wal, WalOptions};

const TMPFS_MAGIC: i64 = 0x0102_1994;
const PAYLOAD: [u8; 100] = [0x5a; 100];
const CLEANUP_EVERY: u64 = 2048;

fn quick() -> bool {
    std::env::var("PAXOS_BENCH_QUICK").is_ok_and(|v| v == "1")
}

/// A disk-backed scratch directory (never tmpfs: it would hide the disk).
fn scratch_root() -> PathBuf {
    let tmp = std::env::temp_dir();
    let c =
        std::ffi::CString::new(tmp.to_string_lossy().as_bytes()).expect("temp dir path has no NUL");
    // SAFETY: statfs fills a plain struct; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    if rc == 0 && st.f_type as i64 != TMPFS_MAGIC {
        return tmp;
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp");
    std::fs::create_dir_all(&p).expect("create target/bench-tmp");
    p
}

fn opts() -> WalOptions {
    WalOptions {
        segment_bytes: 4 << 20,
        max_spare_segments: 2,
        ..WalOptions::default()
    }
}

fn bench(c: &mut Criterion) {
    let root = tempfile::tempdir_in(scratch_root()).expect("scratch dir");
    for groups in [1u64, 16, 256] {
        let mut g = c.benchmark_group(format!("shared_wal_g{groups}"));
        g.throughput(Throughput::Elements(groups));
        g.sample_size(10);
        let secs = if quick() { 1 } else { 5 };
        g.measurement_time(Duration::from_secs(secs));
        g.warm_up_time(Duration::from_millis(500));

        let wals: Vec<Wal> = (0..groups)
            .map(|i| {
                let dir = root.path().join(format!("sep-{groups}-{i}"));
                Wal::open(dir, opts()).expect("open wal").0
            })
            .collect();
        let mut key = 0u64;
        g.bench_function("baseline_separate_wals", |b| {
            b.iter(|| {
                key += 1;
                for w in &wals {
                    w.append(key, &PAYLOAD).expect("append");
                    w.sync().expect("sync");
                }
                if key % CLEANUP_EVERY == 0 {
                    for w in &wals {
                        w.truncate_prefix(key).expect("truncate");
                    }
                }
            })
        });
        drop(wals);

        let dir = root.path().join(format!("shared-{groups}"));
        let log = SharedLog::open(dir, opts()).expect("open shared log").0;
        let mut key = 0u64;
        g.bench_function("shared_one_sync", |b| {
            b.iter(|| {
                key += 1;
                let ops: Vec<Op<'_>> = (0..groups)
                    .map(|group| Op::Entry {
                        group,
                        key,
                        tagged: false,
                        payload: &PAYLOAD,
                    })
                    .collect();
                log.write(&ops).expect("write");
                log.sync().expect("sync");
                if key % CLEANUP_EVERY == 0 {
                    for group in 0..groups {
                        log.truncate_prefix(group, key).expect("truncate");
                    }
                    log.compact().expect("compact");
                }
            })
        });
        g.finish();
    }
}

/// Group `shared_wal_read`: reading one group's newest entry (what a
/// leader's ACCEPT and the apply of a fresh commit read) from a group that
/// holds `n` entries with zxid-like keys (one epoch, consecutive counters).
fn bench_read(c: &mut Criterion) {
    let root = tempfile::tempdir_in(scratch_root()).expect("scratch dir");
    let mut g = c.benchmark_group("shared_wal_read");
    g.sample_size(20);
    let secs = if quick() { 1 } else { 3 };
    g.measurement_time(Duration::from_secs(secs));
    g.warm_up_time(Duration::from_millis(500));
    for n in [1_000u64, 200_000] {
        let dir = root.path().join(format!("read-{n}"));
        let log = SharedLog::open(
            dir,
            WalOptions {
                segment_bytes: 64 << 20,
                ..opts()
            },
        )
        .expect("open shared log")
        .0;
        let epoch = 1u64 << 32;
        for chunk in (1..=n).collect::<Vec<_>>().chunks(1024) {
            let ops: Vec<Op<'_>> = chunk
                .iter()
                .map(|&i| Op::Entry {
                    group: 7,
                    key: epoch | i,
                    tagged: false,
                    payload: &PAYLOAD,
                })
                .collect();
            log.write(&ops).expect("write");
        }
        log.sync().expect("sync");
        let newest = epoch | n;
        g.bench_function(format!("newest_of_{n}"), |b| {
            b.iter(|| {
                let mut bytes = 0;
                log.read(7, newest, 1, usize::MAX, |e| bytes += e.payload.len())
                    .expect("read");
                assert_eq!(bytes, PAYLOAD.len());
            })
        });
    }
    g.finish();
}

/// Group `shared_wal_turn`: see the file's docs.
fn bench_turn(c: &mut Criterion) {
    const GROUPS: u64 = 256;
    const SYNC_EVERY: u64 = 64;
    let root = tempfile::tempdir_in(scratch_root()).expect("scratch dir");
    let mut g = c.benchmark_group("shared_wal_turn");
    g.throughput(Throughput::Elements(GROUPS));
    g.sample_size(10);
    let secs = if quick() { 1 } else { 5 };
    g.measurement_time(Duration::from_secs(secs));
    g.warm_up_time(Duration::from_millis(500));
    let state = [0x33u8; 35];
    for (name, combine) in [("direct", false), ("combined", true)] {
        let dir = root.path().join(name);
        let log = SharedLog::open(dir, opts()).expect("open shared log").0;
        log.set_combine_writes(combine);
        let mut key = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                key += 1;
                for group in 0..GROUPS {
                    log.write(&[
                        Op::Entry {
                            group,
                            key,
                            tagged: false,
                            payload: &PAYLOAD,
                        },
                        Op::Meta {
                            group,
                            state: &state,
                        },
                    ])
                    .expect("write");
                }
                log.flush().expect("flush");
                if key % SYNC_EVERY == 0 {
                    log.sync().expect("sync");
                }
                if key % CLEANUP_EVERY == 0 {
                    for group in 0..GROUPS {
                        log.truncate_prefix(group, key).expect("truncate");
                    }
                    log.compact().expect("compact");
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, bench_read, bench_turn);
criterion_main!(benches);
