//! The key-value state machine's apply path, and what copying keys and
//! values out of their network frame costs.
//!
//! `KvStore::apply` copies a put's key and value out of the command (so a
//! stored value never pins the frame it arrived in: a client read buffer or
//! a leader's batch of entries). The group `kv_insert_100B` measures that
//! copy against its baseline, inserting the same slices of one frame
//! without copying; `kv_apply_100B` measures the whole apply (decode,
//! session lookup, copy, digest) of 100 B puts in client-named sessions.
//!
//! `PAXOS_BENCH_QUICK=1` shrinks times for CI smoke runs.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use paxos_core::{Epoch, StateMachine, Zxid};
use paxos_kv::kv::{KvCommand, KvOp, KvStore};

/// Keys per measured batch (a map of this size is built per iteration).
const KEYS: usize = 10_000;
const VALUE_BYTES: usize = 100;

/// `KEYS` keys and values, all slices of one frame, as a batch of entries
/// from the leader would be.
fn frame_slices() -> Vec<(Bytes, Bytes)> {
    let mut frame = BytesMut::new();
    let mut spans = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let k = frame.len();
        frame.put_slice(format!("key-{i:08}").as_bytes());
        let v = frame.len();
        frame.put_slice(&[b'v'; VALUE_BYTES]);
        spans.push((k, v, frame.len()));
    }
    let frame = frame.freeze();
    spans
        .into_iter()
        .map(|(k, v, end)| (frame.slice(k..v), frame.slice(v..end)))
        .collect()
}

fn bench_kv(c: &mut Criterion) {
    let (warm, meas) = if std::env::var_os("PAXOS_BENCH_QUICK").is_some() {
        (Duration::from_millis(100), Duration::from_millis(300))
    } else {
        (Duration::from_millis(500), Duration::from_secs(3))
    };
    let slices = frame_slices();
    let mut g = c.benchmark_group("kv_insert_100B");
    g.throughput(Throughput::Elements(KEYS as u64));
    g.warm_up_time(warm).measurement_time(meas).sample_size(20);
    g.bench_function("baseline_slices", |b| {
        b.iter(|| {
            let mut m: HashMap<Bytes, Bytes, foldhash::fast::RandomState> = HashMap::default();
            for (k, v) in &slices {
                m.insert(k.clone(), v.clone());
            }
            black_box(m.len())
        })
    });
    g.bench_function("copies", |b| {
        b.iter(|| {
            let mut m: HashMap<Bytes, Bytes, foldhash::fast::RandomState> = HashMap::default();
            for (k, v) in &slices {
                m.insert(Bytes::copy_from_slice(k), Bytes::copy_from_slice(v));
            }
            black_box(m.len())
        })
    });
    g.finish();

    let commands: Vec<Bytes> = slices
        .iter()
        .enumerate()
        .map(|(i, (k, v))| {
            KvCommand {
                principal: Bytes::from_static(b"bench"),
                client: (i % 256) as u64 + 1,
                seq: (i / 256) as u64 + 1,
                op: KvOp::Put {
                    key: k.clone(),
                    value: v.clone(),
                },
            }
            .to_bytes()
        })
        .collect();
    let mut g = c.benchmark_group("kv_apply_100B");
    g.throughput(Throughput::Elements(KEYS as u64));
    g.warm_up_time(warm).measurement_time(meas).sample_size(20);
    g.bench_function("apply", |b| {
        b.iter(|| {
            let mut s = KvStore::new();
            for (i, c) in commands.iter().enumerate() {
                black_box(s.apply(Zxid::new(Epoch(1), i as u32 + 1), c));
            }
            black_box(s.digest())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_kv);
criterion_main!(benches);
