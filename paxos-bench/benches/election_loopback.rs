//! Election in real time over loopback: `FastElection` electors on real
//! `paxos-net-quic` transports (QUIC, mutual TLS), one tokio task each, for
//! 3, 5 and 7 voters.
//!
//! One trial emulates a leader's loss: the old leader is gone (its transport
//! stays up but its elector is silent), and the survivors start looking
//! within 0..5 ms of each other, as heartbeat-timeout detection spreads them.
//! The clock starts when the first survivor starts looking and stops when a
//! quorum of the whole cluster has decided the same leader. Median and p99
//! over the trials, beside the configured settle wait (the floor), go to
//! `target/bench-results/election_loopback.json`.
//!
//! The failure detector's own timeout (the follower's election timeout) is
//! not included here; `paxos-e2e`'s failover figure includes it.
#![allow(clippy::print_stdout, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use paxos_core::{Elector, Epoch, NodeId, Time, VoteInfo, Zxid};
use paxos_election::{ElectionConfig, FastElection, Notification};
use paxos_net_quic::{certs, NetConfig, PeerId, Transport};
use tokio::sync::mpsc;

const DETECT_SPREAD: Duration = Duration::from_millis(5);

fn quick() -> bool {
    std::env::var_os("PAXOS_BENCH_QUICK").is_some()
}

fn results_dir() -> PathBuf {
    match std::env::var_os("PAXOS_BENCH_RESULTS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-results"),
    }
}

/// What a node's task is told to do.
enum Cmd {
    /// Start a trial: a fresh elector at `round`, looking after `delay`, or
    /// silent (the lost leader).
    Trial {
        round: u64,
        delay: Duration,
        silent: bool,
        vote: VoteInfo,
    },
}

/// A decision reported by a node: (trial round, node, leader, when).
type Decided = (u64, u64, u64, Instant);

async fn node_task(
    id: u64,
    voters: Vec<NodeId>,
    transport: Arc<Transport>,
    mut inbox: paxos_net_quic::Inbox,
    mut cmds: mpsc::Receiver<Cmd>,
    decided: mpsc::UnboundedSender<Decided>,
) {
    let origin = Instant::now();
    let now = || Time::from_std(origin, Instant::now());
    let mut elector: Option<FastElection> = None;
    let mut silent = true;
    let mut trial = 0u64;
    let mut start_at: Option<(Instant, VoteInfo)> = None;
    loop {
        let mut deadline = Instant::now() + Duration::from_millis(50);
        if let Some((at, _)) = start_at {
            deadline = deadline.min(at);
        }
        if let Some(t) = elector.as_ref().and_then(|e| e.poll_timeout()) {
            deadline = deadline.min(origin + Duration::from_nanos(t.as_nanos()));
        }
        tokio::select! {
            cmd = cmds.recv() => {
                let Some(Cmd::Trial { round, delay, silent: s, vote }) = cmd else { return };
                trial = round;
                silent = s;
                elector = FastElection::new(ElectionConfig {
                    id: NodeId(id),
                    voters: voters.clone(),
                    initial_round: round,
                    seed: id ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                    ..ElectionConfig::default()
                })
                .ok();
                start_at = (!silent).then(|| (Instant::now() + delay, vote));
            }
            frame = inbox.frames.recv() => {
                let Some((from, frame)) = frame else { return };
                if let (Some(e), false) = (elector.as_mut(), silent) {
                    if let Ok(n) = Notification::decode(&frame) {
                        e.handle_message(now(), NodeId(from.0), n);
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                if let (Some(e), false) = (elector.as_mut(), silent) {
                    if let Some((at, vote)) = start_at {
                        if Instant::now() >= at {
                            start_at = None;
                            e.start_looking(now(), vote);
                        }
                    }
                    if e.poll_timeout().is_some_and(|t| t <= now()) {
                        e.handle_timeout(now());
                    }
                }
            }
        }
        if let (Some(e), false) = (elector.as_mut(), silent) {
            while let Some((to, n)) = e.poll_transmit() {
                let _ = transport.send(PeerId(to.0), n.to_bytes());
            }
            while let Some(d) = e.poll_decision() {
                let _ = decided.send((trial, id, d.leader.0, Instant::now()));
            }
        }
    }
}

struct Figures {
    nodes: usize,
    median_ms: f64,
    p99_ms: f64,
    trials: usize,
}

async fn measure(n: usize, trials: usize) -> Result<Figures> {
    let ids: Vec<PeerId> = (1..=n as u64).map(PeerId).collect();
    let cluster = certs::generate_cluster_in_memory(&ids).context("certificates")?;
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    // Bind everyone on an ephemeral port first, then tell each node the others'.
    let mut addrs = BTreeMap::new();
    let mut sockets = Vec::new();
    for &id in &ids {
        let s = std::net::UdpSocket::bind(any)?;
        addrs.insert(id, s.local_addr()?);
        sockets.push(s);
    }
    drop(sockets);
    let voters: Vec<NodeId> = ids.iter().map(|p| NodeId(p.0)).collect();
    let (decided_tx, mut decided_rx) = mpsc::unbounded_channel();
    let mut cmd_txs = Vec::new();
    let mut transports = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let peers: BTreeMap<PeerId, SocketAddr> = addrs
            .iter()
            .filter(|(p, _)| **p != id)
            .map(|(p, a)| (*p, *a))
            .collect();
        let cfg = NetConfig::loopback(cluster.nodes[i].clone(), cluster.trust(), addrs[&id], peers);
        let (t, inbox) = Transport::bind(cfg).await.context("binding a transport")?;
        let t = Arc::new(t);
        transports.push(t.clone());
        let (tx, rx) = mpsc::channel(4);
        cmd_txs.push(tx);
        tokio::spawn(node_task(
            id.0,
            voters.clone(),
            t,
            inbox,
            rx,
            decided_tx.clone(),
        ));
    }
    // Let every pair connect (bounded wait).
    let ready_by = Instant::now() + Duration::from_secs(10);
    while Instant::now() < ready_by {
        let all = transports.iter().enumerate().all(|(i, t)| {
            ids.iter()
                .enumerate()
                .all(|(j, p)| i == j || t.is_connected(*p))
        });
        if all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let quorum = n / 2 + 1;
    let mut rng = 0x1234_5678_9abc_def0u64 ^ n as u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut samples = Vec::with_capacity(trials);
    for trial in 0..trials {
        let round = 1 + 2 * trial as u64;
        let old_leader = trial % n;
        let t0 = Instant::now();
        for (i, tx) in cmd_txs.iter().enumerate() {
            // Histories differ a little, as after a real leader's loss.
            let vote = VoteInfo {
                current_epoch: Epoch(1),
                last_zxid: Zxid::new(Epoch(1), 100 + (next() % 3) as u32),
            };
            let delay = Duration::from_nanos(next() % DETECT_SPREAD.as_nanos() as u64);
            tx.send(Cmd::Trial {
                round,
                delay,
                silent: i == old_leader,
                vote,
            })
            .await
            .context("node task stopped")?;
        }
        // Until a quorum of the cluster decided the same leader (bounded).
        let mut by_leader: BTreeMap<u64, usize> = BTreeMap::new();
        let deadline = t0 + Duration::from_secs(10);
        let mut done = None;
        while done.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, decided_rx.recv()).await {
                Ok(Some((r, _node, leader, at))) if r == round => {
                    let c = by_leader.entry(leader).or_default();
                    *c += 1;
                    if *c >= quorum {
                        done = Some(at.duration_since(t0));
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        if let Some(d) = done {
            samples.push(d);
        }
        // Let stragglers of this trial drain before the next one.
        tokio::time::sleep(Duration::from_millis(30)).await;
        while decided_rx.try_recv().is_ok() {}
    }
    drop(cmd_txs);
    samples.sort_unstable();
    let q = |p: f64| {
        samples
            .get(((samples.len().max(1) - 1) as f64 * p).round() as usize)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
    };
    Ok(Figures {
        nodes: n,
        median_ms: q(0.5),
        p99_ms: q(0.99),
        trials: samples.len(),
    })
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let trials = if quick() { 10 } else { 100 };
    let settle_ms = ElectionConfig::default().settle_wait.as_secs_f64() * 1e3;
    let mut figures = Vec::new();
    println!(
        "election over QUIC on loopback, {trials} trials per size, settle wait {settle_ms} ms"
    );
    for n in [3usize, 5, 7] {
        let f = rt.block_on(measure(n, trials))?;
        println!(
            "{} voters: median {:.2} ms, p99 {:.2} ms ({} of {trials} trials decided)",
            f.nodes, f.median_ms, f.p99_ms, f.trials
        );
        for (name, v) in [("median", f.median_ms), ("p99", f.p99_ms)] {
            figures.push(serde_json::json!({
                "name": format!("{} voters, leader loss to decision, {name}", f.nodes),
                "value": v,
                "unit": "ms",
                "baseline_name": "settle wait",
                "baseline": settle_ms,
            }));
        }
    }
    let dir = results_dir();
    std::fs::create_dir_all(&dir)?;
    let json = serde_json::json!({ "bench": "election_loopback", "figures": figures });
    std::fs::write(
        dir.join("election_loopback.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    Ok(())
}
