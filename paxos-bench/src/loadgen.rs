//! A closed-loop load generator: `concurrency` logical clients, each with one
//! request outstanding at a time, sharing a few pipelined connections.
//! Optionally paced: the clients together start at most `rate` requests a
//! second (a steady load below the peak), and stoppable from outside.
//!
//! Every acknowledged write is recorded (key and value) so that a caller can
//! check afterwards that nothing acknowledged was lost.

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paxos_kv::client::{Client, Session};
use paxos_kv::client_proto::ReadMode;
use paxos_kv::tls::ClientSecurity;

/// What the generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Puts only.
    Writes,
    /// Linearizable gets only (of keys written by a short preload).
    Reads,
}

/// One load run's parameters.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// The cluster's client addresses.
    pub addrs: Vec<SocketAddr>,
    /// Logical clients, each with one request in flight.
    pub concurrency: usize,
    /// TCP connections the clients share.
    pub connections: usize,
    /// Value size in bytes.
    pub value_bytes: usize,
    /// How long to run.
    pub duration: Duration,
    /// Writes or reads.
    pub workload: Workload,
    /// Distinguishes runs so that keys and sessions do not collide.
    pub run_id: u64,
    /// Per-request timeout.
    pub timeout: Duration,
    /// TLS (a client certificate) or plaintext; the TLS handshake happens
    /// once per connection, when it opens (not per request).
    pub security: ClientSecurity,
    /// At most this many requests a second from all clients together
    /// (each client paced at `rate / concurrency`); `None`: as fast as the
    /// cluster answers.
    pub rate: Option<f64>,
    /// Ends the run early once set (checked before every request).
    pub stop: Option<Arc<AtomicBool>>,
}

impl LoadSpec {
    /// A run of `workload` at `concurrency` for `duration` against `addrs`,
    /// unpaced, with 5 s request timeouts and up to 8 connections.
    pub fn new(
        addrs: Vec<SocketAddr>,
        security: ClientSecurity,
        workload: Workload,
        concurrency: usize,
        value_bytes: usize,
        duration: Duration,
        run_id: u64,
    ) -> LoadSpec {
        LoadSpec {
            addrs,
            concurrency,
            connections: concurrency.clamp(1, 8),
            value_bytes,
            duration,
            workload,
            run_id,
            timeout: Duration::from_secs(5),
            security,
            rate: None,
            stop: None,
        }
    }
}

/// How a closed loop is paced and ended.
#[derive(Clone, Debug, Default)]
pub struct Pacing {
    /// At most this many requests a second, all clients together.
    pub rate: Option<f64>,
    /// Ends the loop early once set.
    pub stop: Option<Arc<AtomicBool>>,
}

/// The outcome of one run.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// Requests acknowledged.
    pub ok: u64,
    /// Requests that failed (timeouts, unreachable cluster).
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Every latency in microseconds, sorted.
    pub latencies_us: Vec<u32>,
    /// Acknowledged writes: (key, value) pairs, for loss checks.
    pub acked: Vec<(Bytes, Bytes)>,
    /// When each request was acknowledged, in microseconds since the run
    /// started, sorted: rates over time and gaps between commits.
    pub ack_times_us: Vec<u64>,
}

impl LoadResult {
    /// Acknowledged requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Acknowledgements per `bucket` of the run, from its start.
    pub fn acks_per(&self, bucket: Duration) -> Vec<u64> {
        let width = bucket.as_micros().max(1) as u64;
        let mut out = Vec::new();
        for &t in &self.ack_times_us {
            let i = (t / width) as usize;
            if out.len() <= i {
                out.resize(i + 1, 0);
            }
            out[i] += 1;
        }
        out
    }

    /// The longest time between two consecutive acknowledgements (or from
    /// `from_us` to the first one after it) among those in
    /// `[from_us, to_us]`, in microseconds.
    pub fn longest_gap_us(&self, from_us: u64, to_us: u64) -> u64 {
        let mut last = from_us;
        let mut longest = 0;
        for &t in self.ack_times_us.iter().filter(|t| **t >= from_us) {
            longest = longest.max(t - last);
            last = t;
            if t > to_us {
                break;
            }
        }
        longest
    }

    /// The latency at quantile `q` (0..=1), in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let idx = ((self.latencies_us.len() - 1) as f64 * q).round() as usize;
        f64::from(self.latencies_us[idx])
    }
}

/// The key a logical client writes at its n-th request.
pub fn key_for(run_id: u64, client: usize, n: u64) -> Bytes {
    Bytes::from(format!("r{run_id}/c{client}/{n}"))
}

/// Runs one closed-loop load against the reference node and returns its figures.
pub async fn run(spec: LoadSpec) -> LoadResult {
    let conns = spec.connections.clamp(1, spec.concurrency.max(1));
    let clients: Vec<Arc<Client>> = (0..conns)
        .map(|c| {
            Arc::new(Client::new(
                spec.addrs.clone(),
                spec.security.clone(),
                (spec.run_id << 24) | c as u64,
                spec.timeout,
            ))
        })
        .collect();
    let value = Bytes::from(vec![b'x'; spec.value_bytes]);
    if spec.workload == Workload::Reads {
        // Preload one key per logical client.
        for i in 0..spec.concurrency {
            let c = &clients[i % conns];
            let _ = c.put(key_for(spec.run_id, i, 0), value.clone()).await;
        }
    }
    let run_id = spec.run_id;
    let workload = spec.workload;
    // One write session per logical client: a session has one write in flight.
    let sessions: Arc<Vec<tokio::sync::Mutex<Session>>> = Arc::new(
        (0..spec.concurrency)
            .map(|i| tokio::sync::Mutex::new(Session::new((run_id << 24) | (1 << 23) | i as u64)))
            .collect(),
    );
    let pacing = Pacing {
        rate: spec.rate,
        stop: spec.stop.clone(),
    };
    closed_loop_paced(spec.concurrency, spec.duration, pacing, move |i, n| {
        let client = clients[i % conns].clone();
        let value = value.clone();
        let sessions = sessions.clone();
        async move {
            match workload {
                Workload::Writes => {
                    let key = key_for(run_id, i, n);
                    let mut session = sessions[i].lock().await;
                    client
                        .put_in(&mut session, key.clone(), value.clone())
                        .await
                        .map(|_| Some((key, value)))
                        .map_err(|e| e.to_string())
                }
                Workload::Reads => client
                    .get(key_for(run_id, i, 0), ReadMode::Linearizable)
                    .await
                    .map(|_| None)
                    .map_err(|e| e.to_string()),
            }
        }
    })
    .await
}

/// The closed loop itself, for any system: `concurrency` tasks, each calling
/// `op(client index, request number)` one request at a time until `duration`
/// has passed. `op` returns the acknowledged write, if it was one, so that a
/// loss check can follow; an `Err` counts as an error, not a latency.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, op: F) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Option<(Bytes, Bytes)>, String>> + Send + 'static,
{
    closed_loop_paced(concurrency, duration, Pacing::default(), op).await
}

/// [`closed_loop`], paced and stoppable as `pacing` says. A paced client
/// that falls behind its schedule (the cluster is slower than the rate)
/// does not burst to catch up: its next slot is one interval after now.
pub async fn closed_loop_paced<F, Fut>(
    concurrency: usize,
    duration: Duration,
    pacing: Pacing,
    op: F,
) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Option<(Bytes, Bytes)>, String>> + Send + 'static,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + duration;
    let interval = pacing
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(concurrency.max(1) as f64 / r));
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let op = op.clone();
        let stop = pacing.stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut times = Vec::new();
            let mut acked = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            // Spread the paced clients' first slots over one interval.
            let mut next = start
                + interval.map_or(Duration::ZERO, |iv| {
                    iv * i as u32 / concurrency.max(1) as u32
                });
            while Instant::now() < deadline
                && !stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
            {
                if let Some(iv) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next = (next + iv).max(Instant::now());
                }
                n += 1;
                let t0 = Instant::now();
                let r = op(i, n).await;
                let us = t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                match r {
                    Ok(w) => {
                        lat.push(us);
                        times.push(start.elapsed().as_micros() as u64);
                        acked.extend(w);
                    }
                    Err(_) => errors += 1,
                }
            }
            (lat, times, acked, errors)
        }));
    }
    let mut result = LoadResult::default();
    for t in tasks {
        if let Ok((lat, times, acked, errors)) = t.await {
            result.ok += lat.len() as u64;
            result.latencies_us.extend(lat);
            result.ack_times_us.extend(times);
            result.acked.extend(acked);
            result.errors += errors;
        } else {
            result.errors += 1;
        }
    }
    result.elapsed = start.elapsed();
    result.latencies_us.sort_unstable();
    result.ack_times_us.sort_unstable();
    result
}
