//! Memory of idle groups in a shared log, measured with a counting
//! allocator (its own test binary, so the counter sees nothing else).
#![cfg(all(feature = "shared", feature = "paxos-core"))]
#![allow(clippy::print_stderr, missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use paxos_core::{Epoch, GroupId, HardState, Storage};
use paxos_wal::shared::SharedLog;
use paxos_wal::WalOptions;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn an_idle_group_costs_well_under_16_kib() {
    const N: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions {
        segment_bytes: 8 << 20,
        prepare_in_background: false,
        ..WalOptions::default()
    };
    let log = Arc::new(SharedLog::open(dir.path(), opts.clone()).unwrap().0);
    let before = LIVE.load(Ordering::Relaxed);
    // Each group: a handle made and dropped, and one saved hard state.
    for g in 0..N {
        let mut s = log.group(GroupId(g)).unwrap();
        s.save_hard_state(HardState {
            accepted_epoch: Epoch(1),
            current_epoch: Epoch(1),
        })
        .unwrap();
    }
    log.sync().unwrap();
    let live = LIVE.load(Ordering::Relaxed) - before;
    let per_group = live as f64 / N as f64;
    eprintln!("idle group with a saved state: {per_group:.0} bytes (live heap, {N} groups)");
    assert!(per_group < 1024.0, "{per_group} bytes per idle group");
    drop(log);
    // After a reopen (the index rebuilt by the recovery pass).
    let before = LIVE.load(Ordering::Relaxed);
    let log = SharedLog::open(dir.path(), opts).unwrap().0;
    let live = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(log.group_count(), N as usize);
    eprintln!(
        "after reopen: {:.0} bytes per group (including the Wal's own index and maps)",
        live as f64 / N as f64
    );
    assert!((live as f64 / N as f64) < 16.0 * 1024.0);
}
