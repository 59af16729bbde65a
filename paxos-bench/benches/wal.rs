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
//!   `baseline_memcpy` copies the same bytes into a buffer.
//!
//! Files live under the system temp dir when it is disk-backed, else under
//! `target/bench-tmp`. `PAXOS_BENCH_QUICK=1` shrinks times and segment sizes.
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput,
};
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
        let opts = WalOptions {
            segment_bytes: segment_bytes(),
            sync_method: method,
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
        let mut sink = vec![0u8; records * (payload + 24)];
        let mut g = c.benchmark_group(format!("wal_append_nosync_{payload}B"));
        configure(&mut g);
        g.throughput(Throughput::Bytes((payload * records) as u64));
        g.bench_function("baseline_memcpy", |b| {
            b.iter(|| {
                for (i, chunk) in sink.chunks_exact_mut(payload + 24).enumerate() {
                    chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    chunk[24..].copy_from_slice(black_box(&data));
                }
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

criterion_group!(benches, durable, nosync);
criterion_main!(benches);
