//! Integration tests of paxos-wal: API, model, crash, corruption, faults, scan,
//! record tags.
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

mod basic;
mod corruption;
mod crash;
mod faults;
mod format_v1;
mod model;
mod powerloss;
mod scan;
mod shared;
mod shared_combine;
mod shared_crash;
mod shared_model;
mod tagged;
mod unproven;

use std::path::{Path, PathBuf};

use paxos_wal::{Wal, WalOptions};

/// Small segments so tests roll often.
pub fn small_opts(segment_bytes: u64) -> WalOptions {
    WalOptions {
        segment_bytes,
        prepare_in_background: false,
        ..WalOptions::default()
    }
}

/// A deterministic payload for `key` (length 0..700).
pub fn payload_for(key: u64) -> Vec<u8> {
    let len = (key.wrapping_mul(7919) % 700) as usize;
    (0..len)
        .map(|i| (key as u8).wrapping_mul(31).wrapping_add(i as u8))
        .collect()
}

/// All (key, payload) pairs of the log, in order.
pub fn dump(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    let r = wal.reader();
    r.iter_from(0)
        .map(|rec| rec.map(|rec| (rec.key, rec.payload.to_vec())))
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Segment files of a log directory, in id order.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// Copy a log directory as it is on "disk" right now (the page cache): the
/// state a SIGKILL at this moment would leave.
pub fn snapshot_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap();
        if name != "LOCK" {
            std::fs::copy(&p, to.join(name)).unwrap();
        }
    }
}
