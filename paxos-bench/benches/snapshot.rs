//! Snapshot write and read throughput against the disk's plain sequential
//! write and read speed, measured in the same run, and the process's peak
//! memory growth during each operation.
//!
//! - `baseline_write`: create a file, write the same number of bytes in
//!   1 MiB `write`s, `fsync` (what any durable file write costs).
//! - `snapshot_write`: `SnapshotStore::save` of a state machine whose state
//!   is that many bytes: chunking, crc32, temp file, fsync, rename, dir fsync.
//! - `baseline_read` / `snapshot_read`: read the file back (page cache for
//!   the file dropped first with `posix_fadvise(DONTNEED)`), the snapshot
//!   through `SnapshotStore::restore` with every checksum verified.
//!
//! Size: 1 GiB (64 MiB with `PAXOS_BENCH_QUICK=1`, or `PAXOS_SNAPSHOT_BENCH_MIB`).
//! Each operation runs after one warm-up round; the figure is the median of
//! the rounds, which alternate which write goes first. Peak memory is the
//! whole process's VmHWM during the operation (reset through
//! `/proc/self/clear_refs` before it; includes the 1 MiB test pattern and the
//! binary itself), in MiB: it must not grow with the state's size. Writes
//! `snapshot.json` into
//! `PAXOS_BENCH_RESULTS` (default `<workspace>/target/bench-results`).
#![allow(clippy::print_stdout, missing_docs)]

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use bytes::Bytes;
use paxos_core::{Epoch, NodeId, StateMachine, Zxid};
use paxos_snapshot::{SnapshotStore, DEFAULT_CHUNK_BYTES};

const IO_BYTES: usize = 1 << 20;
const MIB: f64 = 1024.0 * 1024.0;

/// A state machine whose state is `len` bytes of a repeating pattern: its
/// snapshot streams them in 64 KiB writes, its restore reads and counts them.
struct Synthetic {
    len: u64,
    applied: Zxid,
    pattern: Vec<u8>,
    restored: u64,
    checksum: u64,
}

impl StateMachine for Synthetic {
    fn apply(&mut self, _: Zxid, _: &Bytes) -> Bytes {
        Bytes::new()
    }
    fn applied(&self) -> Zxid {
        self.applied
    }
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut left = self.len;
        while left > 0 {
            let n = left.min(64 << 10) as usize;
            out.write_all(&self.pattern[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
    fn restore(&mut self, _: Zxid, input: &mut dyn Read) -> io::Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        self.restored = 0;
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.checksum = self.checksum.wrapping_add(u64::from(buf[n - 1]));
            self.restored += n as u64;
        }
        Ok(())
    }
}

fn status_kib(field: &str) -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs `op`, returning its duration in seconds and the process peak RSS in MiB.
fn measured(op: impl FnOnce() -> Result<()>) -> Result<(f64, f64)> {
    // "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0).
    let reset = fs::write("/proc/self/clear_refs", "5").is_ok();
    let start = Instant::now();
    op()?;
    let secs = start.elapsed().as_secs_f64();
    let peak = if reset {
        status_kib("VmHWM:").unwrap_or(0) as f64 / 1024.0
    } else {
        f64::NAN
    };
    Ok((secs, peak))
}

fn drop_cache(path: &Path) -> Result<()> {
    let file = File::open(path)?;
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(rc == 0, "posix_fadvise failed: {rc}");
    Ok(())
}

fn plain_write(path: &Path, len: u64, pattern: &[u8]) -> Result<()> {
    let mut file = File::create(path)?;
    let mut left = len;
    while left > 0 {
        let n = left.min(IO_BYTES as u64) as usize;
        file.write_all(&pattern[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(())
}

fn plain_read(path: &Path) -> Result<u64> {
    let mut file = File::open(path)?;
    let mut buf = vec![0u8; IO_BYTES];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Row {
    name: &'static str,
    mb_s: f64,
    peak_mib: f64,
}

fn main() -> Result<()> {
    let quick = std::env::var("PAXOS_BENCH_QUICK").is_ok_and(|v| v == "1");
    let mib: u64 = match std::env::var("PAXOS_SNAPSHOT_BENCH_MIB") {
        Ok(v) => v.parse().context("PAXOS_SNAPSHOT_BENCH_MIB")?,
        Err(_) if quick => 64,
        Err(_) => 1024,
    };
    let rounds: u32 = if quick { 2 } else { 5 };
    let len = mib << 20;
    let dir = tempfile::tempdir()?;
    let plain_path = |round: u32| dir.path().join(format!("plain-{round}.bin"));
    let store = SnapshotStore::open(dir.path().join("snapshots"))?;
    let pattern: Vec<u8> = (0..IO_BYTES).map(|i| (i * 131 % 251) as u8).collect();
    let mut sm = Synthetic {
        len,
        applied: Zxid::new(Epoch(1), 1),
        pattern: pattern.clone(),
        restored: 0,
        checksum: 0,
    };
    let voters = [NodeId(1), NodeId(2), NodeId(3)];

    // Both sides have the same file life cycle: every round writes a new
    // file (a new snapshot has a new zxid), and the previous round's file
    // is deleted between rounds, outside the measured operations (for the
    // store, that is `retain`). Round 0 is the warm-up and is not counted.
    let mut samples: [Vec<(f64, f64)>; 4] = Default::default();
    for round in 0..=rounds {
        sm.applied = Zxid::new(Epoch(1), round + 1);
        let path = plain_path(round);
        let save = || {
            store
                .save(&sm, Epoch(1), &voters)
                .map(|_| ())
                .map_err(Into::into)
        };
        // Alternate which write goes first.
        let (plain_w, snap_w) = if round % 2 == 0 {
            let plain_w = measured(|| plain_write(&path, len, &pattern))?;
            (plain_w, measured(save)?)
        } else {
            let snap_w = measured(save)?;
            (measured(|| plain_write(&path, len, &pattern))?, snap_w)
        };
        // Reads alternate too, each from disk (the file's cache dropped).
        let read_plain = || -> Result<(f64, f64)> {
            drop_cache(&path)?;
            measured(|| {
                let n = plain_read(&path)?;
                anyhow::ensure!(n == len, "short plain read");
                Ok(())
            })
        };
        let zxid = sm.applied;
        let mut read_snapshot = || -> Result<(f64, f64)> {
            drop_cache(&store.path_of(zxid))?;
            measured(|| {
                store.restore(zxid, &mut sm)?;
                anyhow::ensure!(sm.restored == len, "short restore");
                Ok(())
            })
        };
        let (plain_r, snap_r) = if round % 2 == 0 {
            let plain_r = read_plain()?;
            (plain_r, read_snapshot()?)
        } else {
            let snap_r = read_snapshot()?;
            (read_plain()?, snap_r)
        };
        if round > 0 {
            for (i, sample) in [plain_w, snap_w, plain_r, snap_r].into_iter().enumerate() {
                samples[i].push(sample);
            }
            fs::remove_file(plain_path(round - 1))?;
        }
        store.retain(1)?;
        File::open(dir.path())?.sync_all()?;
    }
    // CPU cost of the format alone (chunking + crc32 into io::sink), to
    // tell IO from CPU when reading the figures above.
    // The same for reading: restore from the page cache (the file was
    // just read, so no disk IO): chunk parsing, crc32 and copies only.
    let last_zxid = sm.applied;
    store.restore(last_zxid, &mut sm)?;
    let (decode_secs, _) = measured(|| {
        store.restore(last_zxid, &mut sm)?;
        anyhow::ensure!(sm.restored == len, "short restore");
        Ok(())
    })?;
    let (encode_secs, _) = measured(|| {
        let meta = paxos_snapshot::SnapshotMeta {
            zxid: sm.applied(),
            epoch: Epoch(1),
            voters: voters.to_vec(),
            membership: None,
        };
        let mut enc = paxos_snapshot::SnapshotEncoder::new(io::sink(), &meta, DEFAULT_CHUNK_BYTES)?;
        sm.snapshot(&mut enc)?;
        enc.finish()?;
        Ok(())
    })?;
    let names = [
        "baseline_write",
        "snapshot_write",
        "baseline_read",
        "snapshot_read",
    ];
    let rows: Vec<Row> = names
        .iter()
        .zip(samples.iter())
        .map(|(name, s)| Row {
            name,
            mb_s: len as f64 / median(s.iter().map(|x| x.0).collect()) / 1e6,
            peak_mib: s.iter().map(|x| x.1).fold(0.0, f64::max),
        })
        .collect();

    println!(
        "snapshot bench: {mib} MiB state, {rounds} rounds (median), chunk {} KiB",
        DEFAULT_CHUNK_BYTES / 1024
    );
    println!(
        "{:<16} {:>10} {:>10} {:>16}",
        "operation", "MB/s", "ratio", "peak RSS MiB"
    );
    for (i, row) in rows.iter().enumerate() {
        let base = &rows[i / 2 * 2];
        println!(
            "{:<16} {:>10.1} {:>10.3} {:>16.2}",
            row.name,
            row.mb_s,
            row.mb_s / base.mb_s,
            row.peak_mib
        );
    }

    let mut figures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let base = &rows[i / 2 * 2];
        let mut f = serde_json::json!({ "name": row.name, "value": row.mb_s, "unit": "MB/s" });
        if i % 2 == 1 {
            f["baseline_name"] = base.name.into();
            f["baseline"] = base.mb_s.into();
        }
        figures.push(f);
        let mut m = serde_json::json!({
            "name": format!("{}_peak_rss", row.name),
            "value": row.peak_mib,
            "unit": "MiB",
        });
        if i % 2 == 1 {
            m["baseline_name"] = format!("{}_peak_rss", base.name).into();
            m["baseline"] = base.peak_mib.into();
        }
        figures.push(m);
    }
    let decode_mb_s = len as f64 / decode_secs / 1e6;
    println!(
        "{:<16} {:>10.1}   (restore from page cache: parsing + crc32 + copies)",
        "decode_cached", decode_mb_s
    );
    figures
        .push(serde_json::json!({ "name": "decode_cached", "value": decode_mb_s, "unit": "MB/s" }));
    let encode_mb_s = len as f64 / encode_secs / 1e6;
    println!(
        "{:<16} {:>10.1}   (format CPU only: chunking + crc32 into io::sink)",
        "encode_only", encode_mb_s
    );
    figures
        .push(serde_json::json!({ "name": "encode_only", "value": encode_mb_s, "unit": "MB/s" }));
    figures.push(serde_json::json!({ "name": "state_size", "value": mib as f64, "unit": "MiB" }));
    let results = std::env::var_os("PAXOS_BENCH_RESULTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results"));
    fs::create_dir_all(&results)?;
    let out = results.join("snapshot.json");
    fs::write(
        &out,
        serde_json::to_vec_pretty(&serde_json::json!({ "bench": "snapshot", "figures": figures }))?,
    )?;
    println!("wrote {}", out.display());
    println!("(1 MiB = {MIB} bytes; MB/s is 10^6 bytes/s)");
    Ok(())
}
