//! Election benchmark.
//!
//! 1. In simulated time: from the loss of a running leader to a new decision,
//!    for 3, 5 and 7 voters, with the default `ElectionConfig` timeouts and a
//!    simulated one-way network latency uniform in 0.1..1 ms. The survivors
//!    notice the loss within 0..5 ms of each other (heartbeat granularity);
//!    the clock starts at the crash and stops when a quorum of the whole
//!    cluster has decided the same new leader. Median and p99 over many
//!    seeds, written to `target/bench-results/election.json`.
//! 2. Criterion: the CPU cost of one incoming message (decode + handle) on
//!    a LOOKING 7-voter elector, against decoding alone as the baseline.
//!
//! Real time over loopback needs the QUIC transport and is not measured here.
#![allow(clippy::print_stdout, missing_docs)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use criterion::{black_box, Criterion, Throughput};
use paxos_core::{Elector, Epoch, NodeId, PeerState, Time, VoteInfo, Zxid};
use paxos_election::{ElectionConfig, FastElection, Notification, QuorumSystem};

/// splitmix64 for the simulated network.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let (lo, hi) = (lo.as_nanos() as u64, hi.as_nanos() as u64);
        Duration::from_nanos(lo + self.next_u64() % (hi - lo + 1))
    }
}

const LATENCY_MIN: Duration = Duration::from_micros(100);
const LATENCY_MAX: Duration = Duration::from_millis(1);
const DETECT_SPREAD: Duration = Duration::from_millis(5);

enum Ev {
    Msg {
        from: NodeId,
        to: usize,
        bytes: bytes::Bytes,
    },
    Start(usize),
}

struct Cluster {
    nodes: Vec<FastElection>,
    infos: Vec<VoteInfo>,
    up: Vec<bool>,
    now: Time,
    queue: BTreeMap<(Time, u64), Ev>,
    seq: u64,
    rng: Rng,
    /// (time, node, leader) of decisions.
    decisions: Vec<(Time, usize, NodeId)>,
}

impl Cluster {
    fn new(n: usize, seed: u64) -> Cluster {
        let voters: Vec<NodeId> = (1..=n as u64).map(NodeId).collect();
        let mut rng = Rng(seed);
        let nodes = voters
            .iter()
            .map(|&id| {
                FastElection::new(ElectionConfig {
                    id,
                    voters: voters.clone(),
                    seed: seed ^ (id.0 << 32),
                    ..ElectionConfig::default()
                })
                .expect("valid config")
            })
            .collect();
        let infos = (0..n)
            .map(|_| {
                let e = Epoch(1 + (rng.next_u64() % 2) as u32);
                VoteInfo {
                    current_epoch: e,
                    last_zxid: Zxid::new(e, 1 + (rng.next_u64() % 100) as u32),
                }
            })
            .collect();
        Cluster {
            nodes,
            infos,
            up: vec![true; n],
            now: Time::ZERO,
            queue: BTreeMap::new(),
            seq: 0,
            rng,
            decisions: Vec::new(),
        }
    }

    fn push(&mut self, at: Time, ev: Ev) {
        self.queue.insert((at, self.seq), ev);
        self.seq += 1;
    }

    fn after_input(&mut self, i: usize) {
        let from = self.nodes[i].id();
        while let Some((to, msg)) = self.nodes[i].poll_transmit() {
            let at = self.now + self.rng.between(LATENCY_MIN, LATENCY_MAX);
            let to = (to.0 - 1) as usize;
            self.push(
                at,
                Ev::Msg {
                    from,
                    to,
                    bytes: msg.to_bytes(),
                },
            );
        }
        if let Some(d) = self.nodes[i].poll_decision() {
            self.decisions.push((self.now, i, d.leader));
            let state = if d.leader == from {
                PeerState::Leading
            } else {
                PeerState::Following
            };
            let now = self.now;
            self.nodes[i].settle(now, state, d.leader, d.epoch_hint);
        }
    }

    /// Runs until `done` holds (checked after every step) or `limit`.
    fn run(&mut self, limit: Time, mut done: impl FnMut(&Cluster) -> bool) -> Result<()> {
        for _ in 0..1_000_000 {
            if done(self) {
                return Ok(());
            }
            let next_ev = self.queue.keys().next().map(|k| k.0);
            let next_timer = (0..self.nodes.len())
                .filter(|&i| self.up[i])
                .filter_map(|i| self.nodes[i].poll_timeout().map(|t| (t, i)))
                .min();
            match (next_ev, next_timer) {
                (_, Some((t, i))) if next_ev.is_none_or(|e| t <= e) => {
                    if t > limit {
                        break;
                    }
                    self.now = self.now.max(t);
                    let now = self.now;
                    self.nodes[i].handle_timeout(now);
                    self.after_input(i);
                }
                (Some(t), _) => {
                    if t > limit {
                        break;
                    }
                    let Some((_, ev)) = self.queue.pop_first() else {
                        break;
                    };
                    self.now = self.now.max(t);
                    let now = self.now;
                    match ev {
                        Ev::Msg { from, to, bytes } => {
                            if !self.up[to] {
                                continue;
                            }
                            let msg = Notification::decode(&bytes).context("own encoding")?;
                            self.nodes[to].handle_message(now, from, msg);
                            self.after_input(to);
                        }
                        Ev::Start(i) => {
                            let info = self.infos[i];
                            self.nodes[i].start_looking(now, info);
                            self.after_input(i);
                        }
                    }
                }
                _ => break,
            }
        }
        bail!("no decision by {limit:?}")
    }

    /// A quorum of the whole cluster decided the same leader at or after `since`.
    fn quorum_decided(&self, since: Time) -> Option<NodeId> {
        let mut latest: BTreeMap<usize, NodeId> = BTreeMap::new();
        for &(t, i, l) in &self.decisions {
            if t >= since {
                latest.insert(i, l);
            }
        }
        let q = self.nodes[0].quorum();
        for &l in latest.values() {
            let mut ids = latest
                .iter()
                .filter(|(_, x)| **x == l)
                .map(|(i, _)| NodeId(*i as u64 + 1));
            if q.is_quorum(&mut ids) {
                return Some(l);
            }
        }
        None
    }
}

/// One trial: elect, crash the leader, measure until a quorum decides again.
fn leader_loss(n: usize, seed: u64) -> Result<Duration> {
    let mut c = Cluster::new(n, seed);
    for i in 0..n {
        c.push(Time::ZERO, Ev::Start(i));
    }
    c.run(Time::ZERO + Duration::from_secs(60), |c| {
        c.quorum_decided(Time::ZERO).is_some()
    })?;
    // Let every node settle and the network drain.
    let quiet = c.now + Duration::from_secs(1);
    let _ = c.run(quiet, |_| false);
    let leader = c.quorum_decided(Time::ZERO).context("initial leader")?;
    let li = (leader.0 - 1) as usize;
    let t0 = c.now;
    c.up[li] = false;
    for i in (0..n).filter(|&i| i != li) {
        let at = t0 + c.rng.between(Duration::ZERO, DETECT_SPREAD);
        c.push(at, Ev::Start(i));
    }
    c.run(t0 + Duration::from_secs(120), |c| {
        c.quorum_decided(t0).is_some()
    })?;
    Ok(c.now - t0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn results_dir() -> PathBuf {
    match std::env::var_os("PAXOS_BENCH_RESULTS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results"),
    }
}

fn simulated(quick: bool) -> Result<()> {
    let seeds: u64 = if quick { 200 } else { 2_000 };
    let settle = ElectionConfig::default().settle_wait;
    let defaults = ElectionConfig::default();
    println!(
        "election, simulated time: leader loss -> quorum decided; latency {LATENCY_MIN:?}..{LATENCY_MAX:?}, \
         detection spread {DETECT_SPREAD:?}, settle_wait {:?}, base_timeout {:?}, max_timeout {:?}, {seeds} seeds",
        defaults.settle_wait, defaults.base_timeout, defaults.max_timeout
    );
    println!(
        "{:>6} {:>12} {:>12} {:>12} {:>14}",
        "nodes", "median ms", "p99 ms", "max ms", "settle_wait ms"
    );
    let mut figures = Vec::new();
    for n in [3usize, 5, 7] {
        let mut times = Vec::with_capacity(seeds as usize);
        for seed in 0..seeds {
            times.push(leader_loss(n, seed).with_context(|| format!("{n} nodes, seed {seed}"))?);
        }
        times.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (med, p99, max) = (
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            times[times.len() - 1],
        );
        println!(
            "{n:>6} {:>12.2} {:>12.2} {:>12.2} {:>14.2}",
            ms(med),
            ms(p99),
            ms(max),
            ms(settle)
        );
        for (what, v) in [("median", med), ("p99", p99)] {
            figures.push(serde_json::json!({
                "name": format!("leader loss to decision, {n} nodes, {what} (simulated)"),
                "value": ms(v),
                "unit": "ms",
                "baseline_name": "settle_wait (floor)",
                "baseline": ms(settle),
            }));
        }
    }
    let dir = results_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("election.json");
    let doc = serde_json::json!({ "bench": "election", "figures": figures });
    std::fs::write(&path, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn per_message(c: &mut Criterion, quick: bool) {
    let voters: Vec<NodeId> = (1..=7).map(NodeId).collect();
    let mut e = FastElection::new(ElectionConfig {
        id: NodeId(1),
        voters,
        ..ElectionConfig::default()
    })
    .expect("valid config");
    let best = VoteInfo {
        current_epoch: Epoch(9),
        last_zxid: Zxid::new(Epoch(9), 9),
    };
    e.start_looking(Time::ZERO, best);
    while e.poll_transmit().is_some() {}
    // A steady-state message: same round, a worse vote, so nothing changes.
    let msg = Notification {
        vote: Some(paxos_election::Vote::new(
            NodeId(2),
            VoteInfo {
                current_epoch: Epoch(1),
                last_zxid: Zxid::new(Epoch(1), 1),
            },
        )),
        round: e.round(),
        state: PeerState::Looking,
        locked: false,
        abstain: false,
    };
    let bytes = msg.to_bytes();
    let mut g = c.benchmark_group("election_message");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_millis(if quick { 300 } else { 1000 }));
    g.measurement_time(Duration::from_millis(if quick { 700 } else { 2500 }));
    g.sample_size(if quick { 10 } else { 30 });
    g.bench_function("baseline_decode", |b| {
        b.iter(|| Notification::decode(black_box(&bytes)))
    });
    let mut from = 2u64;
    g.bench_function("decode_and_handle", |b| {
        b.iter(|| {
            let m = Notification::decode(black_box(&bytes)).expect("valid");
            from = if from == 7 { 2 } else { from + 1 };
            e.handle_message(Time::from_nanos(1), NodeId(from), m);
            e.poll_transmit()
        })
    });
    g.finish();
}

fn main() -> Result<()> {
    let quick = std::env::var_os("PAXOS_BENCH_QUICK").is_some();
    simulated(quick)?;
    let mut c = Criterion::default().configure_from_args();
    per_message(&mut c, quick);
    c.final_summary();
    Ok(())
}
