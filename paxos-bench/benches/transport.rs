//! Transport benchmark: paxos-net-quic against plain tokio TCP with the same
//! framing, on loopback, in one run.
//!
//! Figures (each beside its TCP baseline):
//! - 100-byte frames one way, pipelined (frames/s);
//! - ping-pong round trip of a 100-byte frame (median and p99, µs);
//! - bulk transfer on one stream (MB/s; QUIC is encrypted, TCP is not);
//! - ping-pong round trip while a bulk transfer runs (median and p99, µs).
//!
//! Not a criterion bench (harness = false): it writes
//! `target/bench-results/transport.json` (or `$PAXOS_BENCH_RESULTS/transport.json`)
//! and prints a table. `PAXOS_BENCH_QUICK=1` shrinks every run.
#![allow(clippy::print_stdout, clippy::print_stderr, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use paxos_net_quic::certs::generate_cluster_in_memory;
use paxos_net_quic::frame::FrameDecoder;
use paxos_net_quic::{Inbox, NetConfig, PeerId, SendError, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};

const SMALL_BYTES: usize = 100;
const BULK_CHUNK_BYTES: usize = 8 * 1024 * 1024;
const A: PeerId = PeerId(1);
const B: PeerId = PeerId(2);
/// Bound on any single wait (the bench fails rather than hangs).
const WAIT: Duration = Duration::from_secs(120);

struct Sizes {
    /// Runs of each throughput measurement; the median is reported.
    repeats: usize,
    one_way_frames: u64,
    pings: usize,
    bulk_bytes: u64,
}

struct Figure {
    name: &'static str,
    value: f64,
    unit: &'static str,
    baseline: Option<f64>,
}

fn main() -> Result<()> {
    let quick = std::env::var("PAXOS_BENCH_QUICK").is_ok_and(|v| v == "1");
    let sizes = if quick {
        Sizes {
            repeats: 1,
            one_way_frames: 100_000,
            pings: 500,
            bulk_bytes: 128 * 1024 * 1024,
        }
    } else {
        Sizes {
            repeats: 3,
            one_way_frames: 1_000_000,
            pings: 5_000,
            bulk_bytes: 512 * 1024 * 1024,
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    let figures = rt.block_on(run(&sizes))?;
    print_table(&figures, quick);
    write_json(&figures)?;
    Ok(())
}

async fn run(sizes: &Sizes) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();

    // QUIC: a fresh pair per measurement, so one does not warm the next.
    // Throughput runs are repeated (QUIC and TCP alternating) and the median
    // kept: the machine is shared, so single runs are noisy.
    let mut quic_rates = Vec::new();
    let mut tcp_rates = Vec::new();
    for _ in 0..sizes.repeats {
        let mut p = quic_pair().await?;
        quic_rates.push(quic_one_way(&mut p, sizes.one_way_frames).await?);
        p.shutdown().await;
        tcp_rates.push(tcp_one_way(sizes.one_way_frames).await?);
    }
    let (quic_one_way, tcp_one_way) = (median(&mut quic_rates), median(&mut tcp_rates));
    figures.push(Figure {
        name: "small_frames_one_way_100B",
        value: quic_one_way,
        unit: "frames/s",
        baseline: Some(tcp_one_way),
    });

    let (quic_p50, quic_p99) = {
        let p = quic_pair().await?;
        let (r, p) = quic_ping_pong(p, sizes.pings, None).await?;
        p.shutdown().await;
        r
    };
    let (tcp_p50, tcp_p99) = tcp_ping_pong(sizes.pings).await?;
    figures.push(Figure {
        name: "ping_pong_rtt_median_100B",
        value: quic_p50,
        unit: "us",
        baseline: Some(tcp_p50),
    });
    figures.push(Figure {
        name: "ping_pong_rtt_p99_100B",
        value: quic_p99,
        unit: "us",
        baseline: Some(tcp_p99),
    });

    let mut quic_rates = Vec::new();
    let mut tcp_rates = Vec::new();
    for _ in 0..sizes.repeats {
        let mut p = quic_pair().await?;
        quic_rates.push(quic_bulk(&mut p, sizes.bulk_bytes).await?);
        p.shutdown().await;
        tcp_rates.push(tcp_bulk(sizes.bulk_bytes).await?);
    }
    let (quic_bulk, tcp_bulk) = (median(&mut quic_rates), median(&mut tcp_rates));
    figures.push(Figure {
        name: "bulk_one_stream",
        value: quic_bulk,
        unit: "MB/s",
        baseline: Some(tcp_bulk),
    });

    // Small frames beside bulk: pings while bulk payloads flow the same way.
    let (busy_p50, busy_p99) = {
        let p = quic_pair().await?;
        let (r, p) = quic_ping_pong(p, sizes.pings, Some(sizes.bulk_bytes)).await?;
        p.shutdown().await;
        r
    };
    figures.push(Figure {
        name: "ping_rtt_median_during_bulk",
        value: busy_p50,
        unit: "us",
        baseline: Some(quic_p50),
    });
    figures.push(Figure {
        name: "ping_rtt_p99_during_bulk",
        value: busy_p99,
        unit: "us",
        baseline: Some(quic_p99),
    });
    Ok(figures)
}

// ---------------------------------------------------------------------------
// QUIC side

struct Pair {
    ta: Arc<Transport>,
    ia: Inbox,
    tb: Arc<Transport>,
    ib: Inbox,
}

impl Pair {
    async fn shutdown(self) {
        for t in [self.ta, self.tb] {
            if let Some(t) = Arc::into_inner(t) {
                t.shutdown().await;
            }
        }
    }
}

async fn quic_pair() -> Result<Pair> {
    let cluster = generate_cluster_in_memory(&[A, B])?;
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let unused: SocketAddr = "127.0.0.1:9".parse()?;
    let tune = |mut cfg: NetConfig| {
        cfg.send_queue_frames = 65_536;
        cfg.incoming_queue_frames = 65_536;
        cfg.max_bulk_bytes = 64 * 1024 * 1024;
        cfg
    };
    let node = |id: PeerId| {
        cluster
            .node(id)
            .cloned()
            .ok_or_else(|| anyhow!("no identity for {id}"))
    };
    let cfg_b = tune(NetConfig::loopback(
        node(B)?,
        cluster.trust(),
        any,
        BTreeMap::from([(A, unused)]),
    ));
    let (tb, mut ib) = Transport::bind(cfg_b).await?;
    let peers_a = BTreeMap::from([(B, tb.local_addr()?)]);
    let cfg_a = tune(NetConfig::loopback(node(A)?, cluster.trust(), any, peers_a));
    let (ta, ia) = Transport::bind(cfg_a).await?;
    // Warm-up: the first frame establishes the connection.
    ta.send(B, Bytes::from_static(b"warm-up"))?;
    tokio::time::timeout(WAIT, ib.frames.recv())
        .await
        .context("warm-up frame")?
        .ok_or_else(|| anyhow!("inbox closed"))?;
    Ok(Pair {
        ta: Arc::new(ta),
        ia,
        tb: Arc::new(tb),
        ib,
    })
}

/// Queues a frame, yielding while the bounded queue is full.
async fn send_spin(t: &Transport, peer: PeerId, mut frame: Bytes) -> Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        match t.send(peer, frame) {
            Ok(()) => return Ok(()),
            Err(SendError::QueueFull { payload, .. }) => {
                if Instant::now() > deadline {
                    bail!("queue to {peer} stayed full");
                }
                frame = payload;
                tokio::task::yield_now().await;
            }
            Err(e) => bail!("send: {e}"),
        }
    }
}

async fn quic_one_way(p: &mut Pair, frames: u64) -> Result<f64> {
    let frame = Bytes::from(vec![7u8; SMALL_BYTES]);
    let start = Instant::now();
    let ta = p.ta.clone();
    let send = async move {
        for _ in 0..frames {
            send_spin(&ta, B, frame.clone()).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let frames_in = &mut p.ib.frames;
    let recv = async move {
        for got in 0..frames {
            match tokio::time::timeout(WAIT, frames_in.recv()).await {
                Ok(Some(_)) => {}
                _ => bail!("frames stopped after {got}"),
            }
        }
        Ok(())
    };
    let (s, r) = tokio::join!(send, recv);
    s?;
    r?;
    Ok(frames as f64 / start.elapsed().as_secs_f64())
}

/// Ping-pong: `a` sends, `b` echoes; with `bulk_bytes`, `a` streams bulk
/// payloads to `b` meanwhile. An empty frame stops the echo task.
async fn quic_ping_pong(
    p: Pair,
    pings: usize,
    bulk_bytes: Option<u64>,
) -> Result<((f64, f64), Pair)> {
    let Pair { ta, mut ia, tb, ib } = p;
    let echo = tokio::spawn({
        let tb = tb.clone();
        let mut ib = ib;
        async move {
            loop {
                tokio::select! {
                    f = ib.frames.recv() => match f {
                        Some((_, f)) if f.is_empty() => break,
                        Some((from, f)) => {
                            if tb.send(from, f).is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    p = ib.bulk.recv() => if p.is_none() { break },
                }
            }
            ib
        }
    });
    let bulk = bulk_bytes.map(|total| {
        let t = ta.clone();
        tokio::spawn(async move {
            let chunk = Bytes::from(vec![1u8; BULK_CHUNK_BYTES]);
            let mut sent = 0u64;
            let deadline = Instant::now() + WAIT;
            while sent < total && Instant::now() < deadline {
                match t.send_bulk(B, chunk.clone()) {
                    Ok(()) => sent += chunk.len() as u64,
                    Err(SendError::QueueFull { .. }) => {
                        tokio::time::sleep(Duration::from_millis(1)).await
                    }
                    Err(_) => return,
                }
            }
        })
    });
    if bulk.is_some() {
        // Let the bulk transfer get going before measuring.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ping = Bytes::from(vec![9u8; SMALL_BYTES]);
    let mut rtts = Vec::with_capacity(pings);
    for _ in 0..pings {
        let t0 = Instant::now();
        send_spin(&ta, B, ping.clone()).await?;
        tokio::time::timeout(WAIT, ia.frames.recv())
            .await
            .context("pong")?
            .ok_or_else(|| anyhow!("inbox closed"))?;
        rtts.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    if let Some(h) = bulk {
        h.abort();
        let _ = h.await;
    }
    send_spin(&ta, B, Bytes::new()).await?;
    let ib = tokio::time::timeout(WAIT, echo)
        .await
        .context("echo task stops")??;
    Ok((percentiles(&mut rtts), Pair { ta, ia, tb, ib }))
}

async fn quic_bulk(p: &mut Pair, total: u64) -> Result<f64> {
    let chunk = Bytes::from(vec![3u8; BULK_CHUNK_BYTES]);
    let chunks = total.div_ceil(BULK_CHUNK_BYTES as u64);
    let start = Instant::now();
    let ta = p.ta.clone();
    let send = async move {
        let deadline = Instant::now() + WAIT;
        let mut queued = 0;
        while queued < chunks {
            match ta.send_bulk(B, chunk.clone()) {
                Ok(()) => queued += 1,
                Err(SendError::QueueFull { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => bail!("bulk send: {e}"),
            }
        }
        Ok(())
    };
    let bulk_in = &mut p.ib.bulk;
    let recv = async move {
        let mut bytes = 0u64;
        for _ in 0..chunks {
            match tokio::time::timeout(WAIT, bulk_in.recv()).await {
                Ok(Some((_, payload))) => bytes += payload.len() as u64,
                _ => bail!("bulk stopped after {bytes} bytes"),
            }
        }
        Ok(bytes)
    };
    let (s, r) = tokio::join!(send, recv);
    s?;
    let bytes = r?;
    let rate = bytes as f64 / start.elapsed().as_secs_f64() / 1e6;
    if let Some(path) = p.ta.peer_metrics(B).and_then(|m| m.path) {
        println!(
            "quic bulk: {rate:.0} MB/s; sender path after the run: rtt {} us, mtu {} B, cwnd {} B, lost {} of {} datagrams",
            path.rtt_us, path.mtu_bytes, path.congestion_window_bytes, path.lost_packets, path.sent_datagrams
        );
    }
    Ok(rate)
}

// ---------------------------------------------------------------------------
// TCP baseline: same framing (u32 length + body; bulk: u64 length + body),
// TCP_NODELAY, 64 KiB write buffer, frames decoded by the same FrameDecoder.

async fn tcp_pair() -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (dial, accept) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (a, (b, _)) = (dial?, accept?);
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    Ok((a, b))
}

fn encode(frame: &[u8], out: &mut BytesMut) {
    out.put_u32(frame.len() as u32);
    out.put_slice(frame);
}

/// Reads frames into `decoder` until one is whole.
async fn tcp_next_frame(
    r: &mut OwnedReadHalf,
    decoder: &mut FrameDecoder,
    buf: &mut BytesMut,
) -> Result<Bytes> {
    loop {
        if let Some(f) = decoder.next_frame()? {
            return Ok(f);
        }
        buf.reserve(64 * 1024);
        let n = tokio::time::timeout(WAIT, r.read_buf(buf))
            .await
            .context("tcp read")??;
        if n == 0 {
            bail!("tcp stream closed");
        }
        decoder.push(buf.split().freeze());
    }
}

async fn tcp_one_way(frames: u64) -> Result<f64> {
    let (a, b) = tcp_pair().await?;
    let (_ra, wa) = a.into_split();
    let (mut rb, _wb) = b.into_split();
    let frame = vec![7u8; SMALL_BYTES];
    let start = Instant::now();
    let send = async move {
        let mut w = BufWriter::with_capacity(64 * 1024, wa);
        let mut buf = BytesMut::with_capacity(SMALL_BYTES + 4);
        for _ in 0..frames {
            encode(&frame, &mut buf);
            w.write_all(&buf).await?;
            buf.clear();
        }
        w.flush().await?;
        Ok::<_, anyhow::Error>(w)
    };
    let recv = async move {
        let mut dec = FrameDecoder::new(1 << 20);
        let mut buf = BytesMut::new();
        for _ in 0..frames {
            tcp_next_frame(&mut rb, &mut dec, &mut buf).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let (s, r) = tokio::join!(tokio::spawn(send), tokio::spawn(recv));
    let _w = s??;
    r??;
    Ok(frames as f64 / start.elapsed().as_secs_f64())
}

async fn tcp_ping_pong(pings: usize) -> Result<(f64, f64)> {
    let (a, b) = tcp_pair().await?;
    let (mut ra, mut wa) = a.into_split();
    let (mut rb, mut wb) = b.into_split();
    let echo = tokio::spawn(async move {
        let mut dec = FrameDecoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut out = BytesMut::new();
        for _ in 0..pings {
            let f = tcp_next_frame(&mut rb, &mut dec, &mut buf).await?;
            encode(&f, &mut out);
            wb.write_all(&out).await?;
            out.clear();
        }
        Ok::<_, anyhow::Error>(())
    });
    let ping = vec![9u8; SMALL_BYTES];
    let mut out = BytesMut::new();
    let mut dec = FrameDecoder::new(1 << 20);
    let mut buf = BytesMut::new();
    let mut rtts = Vec::with_capacity(pings);
    for _ in 0..pings {
        let t0 = Instant::now();
        encode(&ping, &mut out);
        wa.write_all(&out).await?;
        out.clear();
        tcp_next_frame(&mut ra, &mut dec, &mut buf).await?;
        rtts.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    echo.await??;
    Ok(percentiles(&mut rtts))
}

async fn tcp_bulk(total: u64) -> Result<f64> {
    let (a, b) = tcp_pair().await?;
    let (_ra, mut wa) = a.into_split();
    let (mut rb, _wb) = b.into_split();
    let chunk = Bytes::from(vec![3u8; BULK_CHUNK_BYTES]);
    let chunks = total.div_ceil(BULK_CHUNK_BYTES as u64);
    let start = Instant::now();
    let send = tokio::spawn(async move {
        for _ in 0..chunks {
            wa.write_all(&(chunk.len() as u64).to_be_bytes()).await?;
            wa.write_all(&chunk).await?;
        }
        Ok::<_, anyhow::Error>(wa)
    });
    let recv = tokio::spawn(async move {
        let mut bytes = 0u64;
        for _ in 0..chunks {
            let mut len = [0u8; 8];
            rb.read_exact(&mut len).await?;
            let len = u64::from_be_bytes(len) as usize;
            // Same receive path as QUIC: a fresh buffer per payload.
            let mut body = BytesMut::with_capacity(len);
            while body.len() < len {
                let n = rb.read_buf(&mut body).await?;
                if n == 0 {
                    bail!("tcp closed inside a payload");
                }
            }
            bytes += body.len() as u64;
        }
        Ok(bytes)
    });
    let _w = send.await??;
    let bytes = tokio::time::timeout(WAIT, recv)
        .await
        .context("tcp bulk")???;
    Ok(bytes as f64 / start.elapsed().as_secs_f64() / 1e6)
}

// ---------------------------------------------------------------------------
// Reporting

fn median(samples: &mut [f64]) -> f64 {
    percentiles(samples).0
}

fn percentiles(samples: &mut [f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn print_table(figures: &[Figure], quick: bool) {
    println!();
    println!(
        "transport bench (loopback, QUIC+TLS vs plain TCP){}",
        if quick { " [quick]" } else { "" }
    );
    println!(
        "{:<30} {:>14} {:<9} {:>14} {:>8}",
        "figure", "quic", "unit", "baseline", "ratio"
    );
    for f in figures {
        let (base, ratio) = match f.baseline {
            Some(b) => (format!("{b:.1}"), format!("{:.2}", f.value / b)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "{:<30} {:>14.1} {:<9} {:>14} {:>8}",
            f.name, f.value, f.unit, base, ratio
        );
    }
    println!(
        "(baseline: plain tokio TCP with the same framing; for *_during_bulk: the idle QUIC ping)"
    );
}

fn write_json(figures: &[Figure]) -> Result<()> {
    let dir = match std::env::var_os("PAXOS_BENCH_RESULTS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("bench-results"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let figures: Vec<serde_json::Value> = figures
        .iter()
        .map(|f| {
            let mut v = serde_json::json!({"name": f.name, "value": f.value, "unit": f.unit});
            if let Some(b) = f.baseline {
                let base_name = if f.name.ends_with("during_bulk") {
                    "quic idle"
                } else {
                    "tcp"
                };
                v["baseline_name"] = base_name.into();
                v["baseline"] = b.into();
            }
            v
        })
        .collect();
    let path = dir.join("transport.json");
    let doc = serde_json::json!({"bench": "transport", "figures": figures});
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
