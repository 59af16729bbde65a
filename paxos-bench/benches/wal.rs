//! paxos-wal benchmarks.
//!
//! - `wal_durable_<payload>B_x<records>`: append `records` records of
//!   `payload` bytes, then one `sync` (group commit). `baseline_write_fdatasync`
//!   writes the same payload bytes to a pre-written plain file with one
//!   `write` + `fdatasync` per batch (overwriting blocks already written, the
//!   fastest a plain file does on this disk). `wal_msync` is the WAL's
//!   default (`msync` of the dirty range), `wal_fdatasync` the alternative.
//! - `wal_durable_1MiB_batches`: 64 x 16 KiB (1 MiB) and 256 x 16 KiB (4 MiB) per sync.
//! - `wal_append_nosync_<payload>B`: appends without sync (memory speed);
//!   `baseline_memcpy` copies the same records into a 256 MiB ring (beyond
//!   the caches). Only the appends are timed.
//!
//! - `paired_durable_*` (JSON, `wal.json`): the durable cases measured again
//!   with baseline and WAL batches interleaved in one loop, medians compared.
//!
//! Files live under the system temp dir when it is disk-backed, else under
//! `target/bench-tmp`. `PAXOS_BENCH_QUICK=1` shrinks times and segment sizes.
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, BenchmarkGroup, Criterion, Throughput};
use paxos_wal::{SyncMethod, Wal, WalOptions};

const TMPFS_MAGIC: i64 = 0x0102_1994;

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

fn segment_bytes() -> u64 {
    if quick() {
        8 << 20
    } else {
        64 << 20
    }
}

/// A WAL with its segments already written once (recycled spares ready).
struct WarmWal {
    wal: Wal,
    next_key: u64,
    _dir: tempfile::TempDir,
}

impl WarmWal {
    fn new(method: SyncMethod) -> WarmWal {
        let dir = tempfile::Builder::new()
            .prefix("paxos-wal-bench")
            .tempdir_in(scratch_root())
            .expect("tempdir");
        // PAXOS_WAL_BENCH_PREFAULT_BYTES overrides the pre-fault window (0 = off),
        // to compare both settings on one machine.
        let prefault = std::env::var("PAXOS_WAL_BENCH_PREFAULT_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(WalOptions::default().prefault_ahead_bytes);
        let opts = WalOptions {
            segment_bytes: segment_bytes(),
            sync_method: method,
            prefault_ahead_bytes: prefault,
            ..WalOptions::default()
        };
        let (wal, _) = Wal::open(dir.path(), opts).expect("open wal");
        let mut w = WarmWal {
            wal,
            next_key: 1,
            _dir: dir,
        };
        // Write three segments' worth and drop them: their files become
        // recycled spares, so measured appends overwrite written blocks.
        let chunk = vec![0xA5u8; 256 << 10];
        let per_segment = segment_bytes() as usize / chunk.len();
        for _ in 0..3 * per_segment {
            w.wal.append(w.next_key, &chunk).expect("warm append");
            w.next_key += 1;
        }
        w.wal.sync().expect("warm sync");
        w.recycle();
        w
    }

    /// Keep the log at a few segments: recycle everything but the newest.
    fn recycle(&mut self) {
        if self.wal.segment_count() > 2 {
            self.wal
                .truncate_prefix(self.next_key)
                .expect("truncate_prefix");
        }
    }

    fn durable_batch(&mut self, payload: &[u8], records: usize) {
        let first = self.next_key;
        self.wal
            .append_batch((0..records as u64).map(|i| (first + i, payload)))
            .expect("append_batch");
        self.next_key += records as u64;
        let d = self.wal.sync().expect("sync");
        debug_assert_eq!(d, Some(self.next_key - 1));
        self.recycle();
    }
}

/// A plain file written once in full, then overwritten in a ring.
struct WarmFile {
    file: File,
    len: u64,
    pos: u64,
    _dir: tempfile::TempDir,
}

impl WarmFile {
    fn new() -> WarmFile {
        let dir = tempfile::Builder::new()
            .prefix("paxos-wal-bench-base")
            .tempdir_in(scratch_root())
            .expect("tempdir");
        let len = segment_bytes();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("plain"))
            .expect("create");
        let chunk = vec![0x5Au8; 1 << 20];
        for _ in 0..len / chunk.len() as u64 {
            file.write_all(&chunk).expect("prewrite");
        }
        file.sync_all().expect("sync_all");
        WarmFile {
            file,
            len,
            pos: 0,
            _dir: dir,
        }
    }

    fn durable_batch(&mut self, bytes: &[u8]) {
        if self.pos + bytes.len() as u64 > self.len {
            self.pos = 0;
        }
        self.file.write_all_at(bytes, self.pos).expect("pwrite");
        self.file.sync_data().expect("fdatasync");
        self.pos += bytes.len() as u64;
    }
}

fn configure(g: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    if quick() {
        g.warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(500))
            .sample_size(10);
    } else {
        g.warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(2))
            .sample_size(10);
    }
}

fn durable(c: &mut Criterion) {
    let mut base = WarmFile::new();
    let mut msync = WarmWal::new(SyncMethod::MsyncRange);
    let mut fdatasync = WarmWal::new(SyncMethod::Fdatasync);
    let mut cases: Vec<(String, usize, usize)> = Vec::new();
    for payload in [64usize, 1024, 16 << 10] {
        for records in [1usize, 16, 256] {
            cases.push((
                format!("wal_durable_{payload}B_x{records}"),
                payload,
                records,
            ));
        }
    }
    cases.push((
        "wal_durable_1MiB_batches_16KiB_x64".to_string(),
        16 << 10,
        64,
    ));
    cases.push((
        "wal_durable_1MiB_batches_16KiB_x256".to_string(),
        16 << 10,
        256,
    ));
    for (name, payload, records) in cases {
        let data = vec![0x3Cu8; payload];
        let batch_bytes = vec![0x3Cu8; payload * records];
        let mut g = c.benchmark_group(name);
        configure(&mut g);
        g.throughput(Throughput::Bytes((payload * records) as u64));
        g.bench_function("baseline_write_fdatasync", |b| {
            b.iter(|| base.durable_batch(black_box(&batch_bytes)))
        });
        g.bench_function("wal_msync", |b| {
            b.iter(|| msync.durable_batch(black_box(&data), records))
        });
        g.bench_function("wal_fdatasync", |b| {
            b.iter(|| fdatasync.durable_batch(black_box(&data), records))
        });
        g.finish();
    }
}

fn nosync(c: &mut Criterion) {
    let mut wal = WarmWal::new(SyncMethod::MsyncRange);
    for payload in [64usize, 1024, 16 << 10] {
        let records = (1usize << 20) / payload;
        let data = vec![0x77u8; payload];
        // A 256 MiB ring, far larger than the caches: copying into it runs
        // at memory speed, as appends into a mapped segment at best could.
        let ring_bytes = 256usize << 20;
        let mut sink = vec![0x11u8; ring_bytes];
        let stride = payload + 24;
        let per_iter = records * stride;
        let mut at = 0usize;
        let mut g = c.benchmark_group(format!("wal_append_nosync_{payload}B"));
        configure(&mut g);
        g.throughput(Throughput::Bytes((payload * records) as u64));
        g.bench_function("baseline_memcpy", |b| {
            b.iter(|| {
                if at + per_iter > ring_bytes {
                    at = 0;
                }
                for (i, chunk) in sink[at..at + per_iter].chunks_exact_mut(stride).enumerate() {
                    chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    chunk[24..].copy_from_slice(black_box(&data));
                }
                at += per_iter;
                black_box(&sink);
            })
        });
        g.bench_function("wal_append", |b| {
            // Only the appends are timed. Every 16 MiB an untimed sync and
            // prefix truncation keep the dirty page cache bounded, so the
            // kernel's writeback throttling (the disk's speed, measured by
            // the durable groups) does not leak into this figure.
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for i in 0..iters {
                    let first = wal.next_key;
                    let t = Instant::now();
                    wal.wal
                        .append_batch((0..records as u64).map(|k| (first + k, &data[..])))
                        .expect("append_batch");
                    timed += t.elapsed();
                    wal.next_key += records as u64;
                    if i % 16 == 15 {
                        wal.wal.sync().expect("sync");
                        wal.recycle();
                    }
                }
                wal.wal.sync().expect("sync");
                wal.recycle();
                timed
            })
        });
        g.finish();
    }
}

/// Paired, interleaved measurement of the durable cases: baseline and WAL
/// batches alternate (ABBA order) in one loop, so both see the same disk
/// weather. On a disk shared with other work, this is the figure to trust
/// for the ratios; written to `<results>/wal.json` for `cargo xtask bench`.
fn paired() {
    let per_case = if quick() {
        Duration::from_millis(300)
    } else {
        Duration::from_millis(2500)
    };
    let mut base = WarmFile::new();
    let mut wal = WarmWal::new(SyncMethod::MsyncRange);
    let cases: [(usize, usize); 9] = [
        (64, 1),
        (1024, 1),
        (64, 16),
        (1024, 16),
        (16 << 10, 16),
        (64, 256),
        (1024, 256),
        (16 << 10, 64),
        (16 << 10, 256),
    ];
    let mut figures = Vec::new();
    println!("\nwal paired (interleaved) durable appends, medians:");
    println!(
        "{:<28} {:>12} {:>12} {:>10} {:>10} {:>7}",
        "case", "baseline/s", "wal/s", "base MB/s", "wal MB/s", "ratio"
    );
    for (payload, records) in cases {
        let data = vec![0x3Cu8; payload];
        let batch_bytes = vec![0x3Cu8; payload * records];
        let (mut tb, mut tw) = (Vec::new(), Vec::new());
        let start = Instant::now();
        let mut round = 0u64;
        // Bounded by time and by a round cap.
        while start.elapsed() < per_case && round < 200_000 {
            let wal_first = round % 4 == 1 || round % 4 == 2;
            for leg in 0..2 {
                let t = Instant::now();
                if (leg == 0) == wal_first {
                    wal.durable_batch(&data, records);
                    tw.push(t.elapsed().as_nanos() as f64);
                } else {
                    base.durable_batch(&batch_bytes);
                    tb.push(t.elapsed().as_nanos() as f64);
                }
            }
            round += 1;
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (mb, mw) = (median(&mut tb), median(&mut tw));
        let bytes = (payload * records) as f64;
        let name = format!("paired_durable_{payload}B_x{records}");
        let (base_mbs, wal_mbs) = (bytes / mb * 1e3, bytes / mw * 1e3);
        println!(
            "{name:<28} {:>12.0} {:>12.0} {base_mbs:>10.2} {wal_mbs:>10.2} {:>7.2}",
            1e9 / mb,
            1e9 / mw,
            mb / mw
        );
        figures.push(serde_json::json!({
            "name": format!("{name} (MB/s)"),
            "value": wal_mbs,
            "unit": "MB/s",
            "baseline_name": "write+fdatasync (paired)",
            "baseline": base_mbs,
        }));
        figures.push(serde_json::json!({
            "name": format!("{name} (syncs/s)"),
            "value": 1e9 / mw,
            "unit": "syncs/s",
            "baseline_name": "write+fdatasync (paired)",
            "baseline": 1e9 / mb,
        }));
    }
    let dir = std::env::var_os("PAXOS_BENCH_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results")
        });
    let doc = serde_json::json!({ "bench": "wal", "figures": figures });
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(
            dir.join("wal.json"),
            serde_json::to_vec_pretty(&doc).unwrap_or_default(),
        )
    });
    if let Err(e) = written {
        eprintln!("could not write {}: {e}", dir.join("wal.json").display());
    }
}

criterion_group!(benches, durable, nosync);

fn main() {
    let listing = std::env::args().any(|a| a == "--list");
    benches();
    if !listing {
        paired();
    }
    Criterion::default().configure_from_args().final_summary();
}
