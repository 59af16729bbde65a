//! Frames arrive in order and intact; reconnects; bulk beside small frames;
//! graceful shutdown flushes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use paxos_net_quic::{PeerId, Transport};

use crate::common::*;

/// A frame carrying its sender, sequence number and a body derived from both.
fn make_frame(from: PeerId, seq: u64) -> Bytes {
    let body_len = (seq.wrapping_mul(7919) % 1500) as usize;
    let mut b = BytesMut::with_capacity(16 + body_len);
    b.put_u64(from.0);
    b.put_u64(seq);
    for i in 0..body_len {
        b.put_u8((seq as u8) ^ (i as u8) ^ (from.0 as u8));
    }
    b.freeze()
}

/// Checks a frame built by [`make_frame`] and returns (sender, seq).
fn check_frame(frame: &[u8]) -> (u64, u64) {
    assert!(frame.len() >= 16, "frame too short: {}", frame.len());
    let from = u64::from_be_bytes(frame[..8].try_into().expect("8 bytes"));
    let seq = u64::from_be_bytes(frame[8..16].try_into().expect("8 bytes"));
    let expected = make_frame(PeerId(from), seq);
    assert_eq!(&expected[..], frame, "frame {seq} from {from} corrupted");
    (from, seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_in_order_and_intact_under_load() {
    init_tracing();
    const PER_PAIR: u64 = 5_000;
    let (_cluster, mut nodes) = start_cluster(&[1, 2, 3], |_| {}).await;
    let all = ids(&[1, 2, 3]);
    // Every node sends PER_PAIR frames to every other node, concurrently.
    let mut inboxes = BTreeMap::new();
    let mut transports = BTreeMap::new();
    for (id, node) in std::mem::take(&mut nodes) {
        inboxes.insert(id, node.inbox);
        transports.insert(id, std::sync::Arc::new(node.transport));
    }
    let mut senders = Vec::new();
    for &from in &all {
        let t = transports[&from].clone();
        let targets: Vec<PeerId> = all.iter().copied().filter(|&p| p != from).collect();
        senders.push(tokio::spawn(async move {
            for seq in 0..PER_PAIR {
                for &to in &targets {
                    send_retrying(&t, to, make_frame(from, seq)).await;
                }
            }
        }));
    }
    let mut receivers = Vec::new();
    for (me, mut inbox) in inboxes {
        receivers.push(tokio::spawn(async move {
            let mut next: BTreeMap<u64, u64> = BTreeMap::new();
            let expected_total = PER_PAIR * 2;
            let mut got = 0;
            while got < expected_total {
                let (from, frame) = tokio::time::timeout(WAIT, inbox.frames.recv())
                    .await
                    .expect("frames keep arriving")
                    .expect("inbox open");
                let (claimed, seq) = check_frame(&frame);
                assert_eq!(
                    claimed, from.0,
                    "frame attributed to the wrong peer at {me}"
                );
                let n = next.entry(from.0).or_insert(0);
                assert_eq!(seq, *n, "out of order at {me} from {from}");
                *n += 1;
                got += 1;
            }
            next
        }));
    }
    for s in senders {
        s.await.expect("sender task");
    }
    for r in receivers {
        let per_sender = r.await.expect("receiver task");
        assert_eq!(per_sender.len(), 2);
        assert!(per_sender.values().all(|&n| n == PER_PAIR));
    }
    for (id, t) in transports {
        let t = std::sync::Arc::into_inner(t).expect("sole owner");
        for m in t.metrics() {
            assert_eq!(m.frames_sent, PER_PAIR, "{id} -> {}", m.peer);
            assert_eq!(m.frames_received, PER_PAIR, "{id} <- {}", m.peer);
            assert_eq!(m.protocol_errors, 0);
        }
        t.shutdown().await;
    }
}

/// Restarts `victim` (1 = the dialling side, 2 = the accepting side) while
/// node 1 streams to node 2, and checks traffic resumes in order.
async fn restart_mid_stream(victim: u64) {
    init_tracing();
    let (cluster, mut nodes) = start_cluster(&[1, 2], |_| {}).await;
    let (a, b) = (PeerId(1), PeerId(2));
    let mut n1 = nodes.remove(&a).expect("node 1");
    let mut n2 = nodes.remove(&b).expect("node 2");
    let all = ids(&[1, 2]);
    let addrs = BTreeMap::from([(b, n2.addr)]);

    // Phase 1: stream 500 frames and see them all.
    for seq in 0..500 {
        send_retrying(&n1.transport, b, make_frame(a, seq)).await;
    }
    let mut last = None;
    while last != Some(499) {
        let (_, f) = tokio::time::timeout(WAIT, n2.inbox.frames.recv())
            .await
            .expect("phase 1 frames")
            .expect("open");
        last = Some(check_frame(&f).1);
    }

    // Restart the victim abruptly (drop = no flush), on the same port.
    if victim == 2 {
        drop(n2);
        // The old endpoint releases its socket once its connections have
        // drained (a process restart frees it at once): retry, bounded.
        let mut rebound = None;
        for _ in 0..600 {
            let mut cfg = config(&cluster, b, &all, &BTreeMap::new());
            cfg.listen_addr = addrs[&b];
            match Transport::bind(cfg).await {
                Ok(r) => {
                    rebound = Some(r);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let (t, inbox) = rebound.expect("rebind node 2 on its port");
        n2 = Node {
            addr: addrs[&b],
            transport: t,
            inbox,
        };
    } else {
        drop(n1);
        let cfg = config(&cluster, a, &all, &addrs);
        let (t, inbox) = Transport::bind(cfg).await.expect("restart node 1");
        n1 = Node {
            addr: t.local_addr().expect("addr"),
            transport: t,
            inbox,
        };
    }

    // Phase 2: keep sending; frames must arrive again, in order.
    let sender = n1.transport;
    let mut seq = 1_000u64;
    let mut received = Vec::new();
    let deadline = Instant::now() + WAIT;
    while received.len() < 200 {
        assert!(
            Instant::now() < deadline,
            "traffic did not resume after restarting node {victim}"
        );
        // Frames may be refused while reconnecting (queue full): retry later.
        if sender.send(b, make_frame(a, seq)).is_ok() {
            seq += 1;
        }
        while let Ok((_, f)) = n2.inbox.frames.try_recv() {
            received.push(check_frame(&f).1);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "frames after the restart arrive in order"
    );
    assert!(
        received.iter().all(|&s| s >= 1_000),
        "only phase-2 frames after the restart"
    );
    wait_for("both sides report the connection", || {
        sender.is_connected(b) && n2.transport.is_connected(a)
    })
    .await;
    let m1 = sender.peer_metrics(b).expect("metrics");
    let m2 = n2.transport.peer_metrics(a).expect("metrics");
    println!("restart of node {victim}: dialler {m1:?}\nacceptor {m2:?}");
    if victim == 2 {
        assert!(m1.reconnects >= 1, "node 1 redialled: {m1:?}");
    } else {
        // The restarted acceptor-side view: node 2 kept running and saw a second connection.
        assert!(
            m2.reconnects >= 1,
            "node 2 accepted the restarted node: {m2:?}"
        );
    }
    sender.shutdown().await;
    n2.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepting_peer_restarts_mid_stream_and_traffic_resumes() {
    restart_mid_stream(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialling_peer_restarts_mid_stream_and_traffic_resumes() {
    restart_mid_stream(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfers_do_not_block_small_frames() {
    init_tracing();
    const BULK_PAYLOADS: u64 = 6;
    const BULK_BYTES: usize = 16 * 1024 * 1024;
    let (_cluster, mut nodes) =
        start_cluster(&[1, 2], |cfg| cfg.max_bulk_bytes = 32 * 1024 * 1024).await;
    let (a, b) = (PeerId(1), PeerId(2));
    let n1 = nodes.remove(&a).expect("node 1");
    let mut n2 = nodes.remove(&b).expect("node 2");
    // Connect first (a small frame), so the measurement is not the handshake.
    n1.transport
        .send(b, Bytes::from_static(b"warm-up"))
        .expect("queue");
    tokio::time::timeout(WAIT, n2.inbox.frames.recv())
        .await
        .expect("warm-up frame")
        .expect("open");

    let base = Instant::now();
    let payload = Bytes::from(vec![0xabu8; BULK_BYTES]);
    for _ in 0..BULK_PAYLOADS {
        n1.transport
            .send_bulk(b, payload.clone())
            .expect("bulk queue has room");
    }
    // Small frames carry their send time (µs since `base`).
    let sender = tokio::spawn({
        let t = std::sync::Arc::new(n1.transport);
        let t2 = t.clone();
        async move {
            for _ in 0..2_000 {
                let us = base.elapsed().as_micros() as u64;
                send_retrying(&t2, b, Bytes::copy_from_slice(&us.to_be_bytes())).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
                if t2
                    .peer_metrics(b)
                    .is_some_and(|m| m.bulk_sent == BULK_PAYLOADS)
                {
                    break;
                }
            }
            t
        }
    });
    let mut delays_us = Vec::new();
    let mut small_during_bulk = 0u64;
    let mut bulk_done = 0u64;
    let deadline = Instant::now() + WAIT * 2;
    while bulk_done < BULK_PAYLOADS {
        assert!(Instant::now() < deadline, "bulk transfers did not finish");
        tokio::select! {
            f = n2.inbox.frames.recv() => {
                let (_, f) = f.expect("inbox open");
                let sent_us = u64::from_be_bytes(f[..8].try_into().expect("8-byte timestamp"));
                delays_us.push(base.elapsed().as_micros() as u64 - sent_us);
                // Between the first and the last bulk payload: bulk was in progress.
                if bulk_done >= 1 {
                    small_during_bulk += 1;
                }
            }
            p = n2.inbox.bulk.recv() => {
                let (from, p) = p.expect("bulk inbox open");
                assert_eq!(from, a);
                assert_eq!(p.len(), BULK_BYTES);
                assert!(p.iter().all(|&x| x == 0xab), "bulk payload intact");
                bulk_done += 1;
            }
        }
    }
    let elapsed = base.elapsed();
    let t1 = sender.await.expect("sender task");
    delays_us.sort_unstable();
    let pct = |p: f64| {
        delays_us
            .get(((delays_us.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "bulk {} MiB in {:.2?} ({:.0} MB/s); {} small frames arrived during bulk; delay us: median {} p99 {} max {}",
        BULK_PAYLOADS * BULK_BYTES as u64 / (1024 * 1024),
        elapsed,
        (BULK_PAYLOADS * BULK_BYTES as u64) as f64 / elapsed.as_secs_f64() / 1e6,
        small_during_bulk,
        pct(0.5),
        pct(0.99),
        delays_us.last().copied().unwrap_or(0),
    );
    assert!(
        small_during_bulk > 0,
        "small frames were delivered while bulk transfers were in progress"
    );
    let t1 = std::sync::Arc::into_inner(t1).expect("sole owner");
    t1.shutdown().await;
    n2.transport.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_flushes_queued_frames() {
    init_tracing();
    // A generous flush bound: the suite runs on a loaded machine, and the
    // flush returns as soon as the peer has read everything anyway.
    let (_cluster, mut nodes) = start_cluster(&[1, 2], |cfg| cfg.shutdown_flush_ms = 20_000).await;
    let (a, b) = (PeerId(1), PeerId(2));
    let n1 = nodes.remove(&a).expect("node 1");
    let mut n2 = nodes.remove(&b).expect("node 2");
    wait_for("connection up", || n1.transport.is_connected(b)).await;
    // Queue frames and shut down at once: all of them must still arrive.
    let queued = 3_000u64;
    for seq in 0..queued {
        n1.transport
            .send(b, make_frame(a, seq))
            .expect("queue has room for all frames");
    }
    let report = n1.transport.shutdown().await;
    let to_b = report
        .iter()
        .find(|m| m.peer == b)
        .expect("metrics of node 2");
    assert_eq!(
        to_b.frames_sent, queued,
        "every queued frame was written: {to_b:?}"
    );
    for seq in 0..queued {
        let (_, f) = tokio::time::timeout(WAIT, n2.inbox.frames.recv())
            .await
            .expect("flushed frame")
            .expect("open");
        assert_eq!(check_frame(&f), (1, seq));
    }
    n2.transport.shutdown().await;
}

/// Node 1's configuration, knowing node 2 at an address where nobody
/// listens: frames to it queue up.
fn unreachable_peer_config() -> paxos_net_quic::NetConfig {
    let all = ids(&[1, 2]);
    let cluster = paxos_net_quic::certs::generate_cluster_in_memory(&all).expect("certs");
    config(
        &cluster,
        PeerId(1),
        &all,
        &BTreeMap::from([(PeerId(2), placeholder())]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_refuses_and_hands_the_frame_back() {
    init_tracing();
    let mut cfg = unreachable_peer_config();
    cfg.send_queue_frames = 8;
    cfg.max_frame_bytes = 32;
    cfg.max_bulk_bytes = 128;
    let (t, _inbox) = Transport::bind(cfg).await.expect("bind");
    for i in 0..8u8 {
        t.send(PeerId(2), Bytes::from(vec![i]))
            .expect("room in the queue");
    }
    match t.send(PeerId(2), Bytes::from_static(b"x")) {
        Err(paxos_net_quic::SendError::QueueFull {
            payload, capacity, ..
        }) => {
            assert_eq!(&payload[..], b"x");
            assert_eq!(capacity, 8);
        }
        other => panic!("expected QueueFull, got {other:?}"),
    }
    let m = t.peer_metrics(PeerId(2)).expect("metrics");
    assert_eq!((m.queue_depth, m.dropped_full), (8, 1));
    assert!(matches!(
        t.send(PeerId(7), Bytes::new()),
        Err(paxos_net_quic::SendError::UnknownPeer { .. })
    ));
    // Over the configured maxima: refused at the API, before queueing.
    let big = Bytes::from(vec![0u8; 64]);
    match t.send(PeerId(2), big.clone()) {
        Err(paxos_net_quic::SendError::TooLarge {
            len_bytes: 64,
            max_bytes: 32,
            payload,
            ..
        }) => {
            assert_eq!(payload, big)
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        t.send_bulk(PeerId(2), Bytes::from(vec![0u8; 129])),
        Err(paxos_net_quic::SendError::TooLarge { max_bytes: 128, .. })
    ));
    let report = t.shutdown().await;
    assert_eq!(
        report[0].lost_in_flight, 8,
        "unsendable frames are counted at shutdown"
    );
}

/// The queue to a peer is bounded in bytes as well as in frames: a leader
/// that kept resending large ACCEPTs to a dead follower filled the 8 192
/// frame slots with up to a MiB each (a CI run's leader held 8 GB of
/// anonymous memory for its one dead peer, `queue_depth` 8 192).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_to_a_peer_is_bounded_in_bytes() {
    init_tracing();
    let mut cfg = unreachable_peer_config();
    cfg.max_frame_bytes = 1 << 20;
    cfg.send_queue_bytes = 4 << 20;
    cfg.max_bulk_bytes = 1 << 20;
    cfg.bulk_queue_bytes = 2 << 20;
    let (t, _inbox) = Transport::bind(cfg).await.expect("bind");
    let mib = Bytes::from(vec![7u8; 1 << 20]);
    for _ in 0..4 {
        t.send(PeerId(2), mib.clone()).expect("room in the queue");
    }
    match t.send(PeerId(2), mib.clone()) {
        Err(paxos_net_quic::SendError::QueueBytesFull {
            queued_bytes,
            max_bytes,
            payload,
            ..
        }) => {
            assert_eq!((queued_bytes, max_bytes), (4 << 20, 4 << 20));
            assert_eq!(payload.len(), 1 << 20);
        }
        other => panic!("expected QueueBytesFull, got {other:?}"),
    }
    // Small frames still fit in what is left of the frame slots only if
    // the bytes allow: none do now.
    assert!(t.send(PeerId(2), Bytes::from_static(b"x")).is_err());
    for _ in 0..2 {
        t.send_bulk(PeerId(2), mib.clone())
            .expect("room in the bulk queue");
    }
    assert!(matches!(
        t.send_bulk(PeerId(2), mib.clone()),
        Err(paxos_net_quic::SendError::QueueBytesFull { .. })
    ));
    let m = t.peer_metrics(PeerId(2)).expect("metrics");
    assert_eq!(
        (m.queue_depth, m.queue_bytes, m.dropped_full),
        (4, 4 << 20, 3)
    );
    t.shutdown().await;
}

/// A UDP relay on loopback that can silently stop forwarding (a peer that
/// vanishes without a close: power loss, partition).
async fn relay(
    target: std::net::SocketAddr,
    pass: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use std::sync::atomic::Ordering;
    let sock = tokio::net::UdpSocket::bind(any_port())
        .await
        .expect("relay socket");
    let addr = sock.local_addr().expect("relay address");
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let mut client = None;
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        for _ in 0..2_000_000u32 {
            let Ok(Ok((n, from))) =
                tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await
            else {
                return;
            };
            if !pass.load(Ordering::Relaxed) {
                continue;
            }
            let to = if from == target {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(from);
                target
            };
            let _ = sock.send_to(&buf[..n], to).await;
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peer_times_out_and_is_redialled() {
    use std::sync::atomic::{AtomicBool, Ordering};
    init_tracing();
    let all = ids(&[1, 2]);
    let (a, b) = (PeerId(1), PeerId(2));
    let cluster = paxos_net_quic::certs::generate_cluster_in_memory(&all).expect("certs");
    let short = |cfg: &mut paxos_net_quic::NetConfig| {
        cfg.keep_alive_ms = 100;
        cfg.idle_timeout_ms = 600;
    };
    let mut cfg_b = config(&cluster, b, &all, &BTreeMap::new());
    short(&mut cfg_b);
    let (tb, mut inbox_b) = Transport::bind(cfg_b).await.expect("node 2");
    let pass = std::sync::Arc::new(AtomicBool::new(true));
    let (relay_addr, relay_task) = relay(tb.local_addr().expect("addr"), pass.clone()).await;
    let mut cfg_a = config(&cluster, a, &all, &BTreeMap::from([(b, relay_addr)]));
    short(&mut cfg_a);
    let (ta, _inbox_a) = Transport::bind(cfg_a).await.expect("node 1");

    ta.send(b, Bytes::from_static(b"before")).expect("queue");
    let (_, f) = tokio::time::timeout(WAIT, inbox_b.frames.recv())
        .await
        .expect("frame")
        .expect("open");
    assert_eq!(&f[..], b"before");

    // The path goes silent: no close frame, only missing packets. Keep-alives
    // go unanswered and the idle timeout ends the connection on both sides.
    pass.store(false, Ordering::Relaxed);
    wait_for("node 1 notices the silent peer", || !ta.is_connected(b)).await;
    wait_for("node 2 notices the silent peer", || !tb.is_connected(a)).await;

    // The path heals: node 1 redials with backoff and traffic resumes.
    pass.store(true, Ordering::Relaxed);
    ta.send(b, Bytes::from_static(b"after")).expect("queue");
    let (_, f) = tokio::time::timeout(WAIT, inbox_b.frames.recv())
        .await
        .expect("frame after heal")
        .expect("open");
    assert_eq!(&f[..], b"after");
    let m = ta.peer_metrics(b).expect("metrics");
    println!("silent peer: {m:?}");
    assert!(m.disconnects >= 1 && m.reconnects >= 1, "{m:?}");
    relay_task.abort();
    ta.shutdown().await;
    tb.shutdown().await;
}
