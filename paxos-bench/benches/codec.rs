//! The wire codec: encode and decode throughput of ACCEPT batches, against
//! a plain copy of the same bytes (the baseline).
//!
//! `PAXOS_BENCH_QUICK=1` shrinks times for CI smoke runs.
#![allow(missing_docs)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use paxos_core::{Codec, Entry, Envelope, Epoch, GroupId, Message, NodeId, Zxid};

fn accept(entries: u32, payload: usize) -> Envelope {
    let data = Bytes::from(vec![7u8; payload]);
    Envelope {
        group: GroupId(0),
        from: NodeId(1),
        to: NodeId(2),
        msg: Message::Accept {
            epoch: Epoch(3),
            prev: Zxid::new(Epoch(3), 10),
            commit: Zxid::new(Epoch(3), 9),
            entries: (0..entries)
                .map(|i| Entry {
                    kind: Default::default(),
                    zxid: Zxid::new(Epoch(3), 11 + i),
                    data: data.clone(),
                })
                .collect(),
        },
    }
}

fn bench_codec(c: &mut Criterion) {
    let (warm, meas) = if std::env::var_os("PAXOS_BENCH_QUICK").is_some() {
        (Duration::from_millis(100), Duration::from_millis(300))
    } else {
        (Duration::from_millis(500), Duration::from_secs(2))
    };
    let codec = Codec::new(64 << 20);
    for (n, payload) in [(64u32, 16usize), (1024, 128)] {
        let env = accept(n, payload);
        let wire = codec.encode_to_bytes(&env).unwrap();
        let len = wire.len();
        let mut g = c.benchmark_group(format!("codec_accept_{n}x{payload}B"));
        g.throughput(Throughput::Bytes(len as u64));
        g.warm_up_time(warm).measurement_time(meas).sample_size(30);
        let mut buf = BytesMut::with_capacity(len);
        g.bench_function(BenchmarkId::new("baseline_memcpy", len), |b| {
            b.iter(|| {
                buf.clear();
                buf.extend_from_slice(black_box(&wire));
                black_box(buf.len());
            })
        });
        let mut out = BytesMut::with_capacity(len);
        g.bench_function(BenchmarkId::new("encode", len), |b| {
            b.iter(|| {
                out.clear();
                codec.encode(black_box(&env), &mut out).unwrap();
                black_box(out.len());
            })
        });
        g.bench_function(BenchmarkId::new("decode", len), |b| {
            b.iter(|| black_box(codec.decode(black_box(wire.clone())).unwrap()))
        });
        g.finish();
    }
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
