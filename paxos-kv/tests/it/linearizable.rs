//! Linearizability of the reference node under a leader failure: concurrent
//! clients run puts, deletes, compare-and-sets and linearizable reads over a
//! few keys of a three-process cluster while the leader is SIGKILLed and later
//! restarted; the recorded history (real instants, failed or timed-out calls
//! of unknown outcome) must be linearizable, and the checker must decide it.

use bytes::Bytes;
use paxos_kv::client::Client;
use paxos_kv::client_proto::ReadMode;
use paxos_kv::kv::KvResult;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use paxos_testkit::linearizability::{
    check, CheckConfig, Command, Invocation, OpId, Operation, Outcome, Output, Recorder, Verdict,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent clients, each with one call in flight.
const CLIENTS: u64 = 4;
/// Calls per client.
const OPS_PER_CLIENT: usize = 300;
/// Keys shared by all clients.
const KEYS: usize = 4;
/// A call that takes longer is abandoned and recorded as of unknown outcome:
/// about the election timeout, so that calls caught in the failover usually
/// end that way and the history has some unknown outcomes.
const CALL_LIMIT: Duration = Duration::from_millis(300);
/// The final reads, after the run, get longer.
const FINAL_CALL_LIMIT: Duration = Duration::from_secs(10);
/// Clients stop issuing calls after this long (bounds the test).
const RUN_LIMIT: Duration = Duration::from_secs(40);

fn key(i: usize) -> Bytes {
    Bytes::from(format!("lin/{i}"))
}

/// A small deterministic generator (xorshift64*), one per client.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Records one call: invoked now, finished when `call` returns, of unknown
/// outcome if it fails, takes too long, or returns something unexpected.
async fn recorded<F>(
    rec: &Recorder,
    client: u64,
    key: &Bytes,
    command: Command,
    limit: Duration,
    call: F,
) -> Option<Output>
where
    F: std::future::Future<Output = Option<Output>>,
{
    let inv: Invocation = rec.invoke(client, key.clone(), command);
    match tokio::time::timeout(limit, call).await {
        Ok(Some(output)) => {
            rec.complete(inv, output.clone())
                .expect("the output fits the command");
            Some(output)
        }
        _ => {
            rec.unknown(inv).expect("pending");
            None
        }
    }
}

fn write_output(result: KvResult) -> Option<Output> {
    match result {
        KvResult::Done(previous) => Some(Output::Written { previous }),
        KvResult::Cas { swapped, current } => Some(Output::Cas { swapped, current }),
        // Anything else says nothing certain about this write.
        _ => None,
    }
}

/// One client: `OPS_PER_CLIENT` calls (fewer if the run limit passes).
async fn run_client(
    id: u64,
    client: Client,
    rec: Arc<Recorder>,
    done: Arc<AtomicUsize>,
    started: Instant,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id + 1).wrapping_mul(0x1000_0001));
    // The last value this client saw per key: the expected value of its
    // compare-and-sets, so that some of them swap.
    let mut seen: Vec<Option<Bytes>> = vec![None; KEYS];
    for i in 0..OPS_PER_CLIENT {
        if started.elapsed() > RUN_LIMIT {
            break;
        }
        let k = rng.below(KEYS as u64) as usize;
        let key = key(k);
        // Every written value is unique in the run.
        let value = Bytes::from(format!("c{id}-{i}"));
        let roll = rng.below(100);
        let observed = if roll < 40 {
            let out = recorded(&rec, id, &key, Command::Get, CALL_LIMIT, async {
                client
                    .get(key.clone(), ReadMode::Linearizable)
                    .await
                    .ok()
                    .map(Output::Read)
            })
            .await;
            out.and_then(|o| match o {
                Output::Read(v) => Some(v),
                _ => None,
            })
        } else if roll < 70 {
            let command = Command::Put {
                value: value.clone(),
            };
            let out = recorded(&rec, id, &key, command, CALL_LIMIT, async {
                client
                    .put(key.clone(), value.clone())
                    .await
                    .ok()
                    .and_then(write_output)
            })
            .await;
            out.map(|_| Some(value.clone()))
        } else if roll < 95 {
            let expected = seen[k].clone();
            let command = Command::Cas {
                expected: expected.clone(),
                new: value.clone(),
            };
            let out = recorded(&rec, id, &key, command, CALL_LIMIT, async {
                client
                    .cas(key.clone(), expected.clone(), value.clone())
                    .await
                    .ok()
                    .and_then(write_output)
            })
            .await;
            match out {
                Some(Output::Cas { swapped: true, .. }) => Some(Some(value.clone())),
                Some(Output::Cas { current, .. }) => Some(current),
                _ => None,
            }
        } else {
            let out = recorded(&rec, id, &key, Command::Delete, CALL_LIMIT, async {
                client.delete(key.clone()).await.ok().and_then(write_output)
            })
            .await;
            out.map(|_| None)
        };
        if let Some(v) = observed {
            seen[k] = v;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits until `done` reaches `target` or `limit` passes.
async fn wait_done(done: &AtomicUsize, target: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while done.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_history_across_a_leader_failure_is_linearizable() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    // Snapshots during the run, so the restarted node may catch up from one.
    spec.snapshot_every = 200;
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader is elected");

    let rec = Arc::new(Recorder::new());
    let done = Arc::new(AtomicUsize::new(0));
    let addrs = cluster.client_addrs();
    let mut tasks = Vec::new();
    for id in 1..=CLIENTS {
        let client = Client::new(
            addrs.clone(),
            cluster.client_security(),
            1000 + id,
            Duration::from_secs(2),
        );
        tasks.push(tokio::spawn(run_client(
            id,
            client,
            rec.clone(),
            done.clone(),
            started,
        )));
    }

    // A third of the way in, kill whichever node leads now; two thirds of
    // the way in, bring it back.
    let total = CLIENTS as usize * OPS_PER_CLIENT;
    wait_done(&done, total / 3, RUN_LIMIT).await;
    let leader = cluster
        .wait_for_leader(Duration::from_secs(10))
        .await
        .expect("a leader before the kill");
    let killed_ns = rec.now_ns();
    let done_at_kill = done.load(Ordering::Relaxed);
    cluster.kill(leader).expect("kill the leader");
    wait_done(&done, 2 * total / 3, RUN_LIMIT).await;
    let done_at_restart = done.load(Ordering::Relaxed);
    cluster.start_node(leader).expect("restart the old leader");

    for t in tasks {
        tokio::time::timeout(RUN_LIMIT + CALL_LIMIT, t)
            .await
            .expect("clients end within their limits")
            .expect("client task");
    }
    // A last linearizable read of every key, recorded like any other call.
    let reader = Client::new(
        addrs.clone(),
        cluster.client_security(),
        2000,
        Duration::from_secs(2),
    );
    let mut finals = Vec::new();
    for k in 0..KEYS {
        let key = key(k);
        let out = recorded(&rec, 0, &key, Command::Get, FINAL_CALL_LIMIT, async {
            reader
                .get(key.clone(), ReadMode::Linearizable)
                .await
                .ok()
                .map(Output::Read)
        })
        .await;
        finals.push(out);
    }
    let run_time = started.elapsed();

    let history = rec.history();
    let ops = history.operations();
    let unknown = history.unknown_count();
    let completed_after_kill = ops
        .iter()
        .filter(|o| o.invoked_ns > killed_ns && matches!(o.outcome, Outcome::Completed { .. }))
        .count();
    let check_started = Instant::now();
    let report = check(&history, &CheckConfig::default());
    let check_time = check_started.elapsed();
    println!(
        "{} operations ({unknown} of unknown outcome, {completed_after_kill} completed after \
         killing node {leader} at {done_at_kill} done, restarted at {done_at_restart} done); \
         run {run_time:?}; check {check_time:?}, {} steps over {} keys",
        ops.len(),
        report.steps,
        report.keys_checked
    );
    match &report.verdict {
        Verdict::Linearizable => {}
        Verdict::Unknown { .. } => panic!(
            "the checker could not decide a history of {} operations: {}",
            ops.len(),
            report.verdict
        ),
        Verdict::NotLinearizable(v) => panic!("the node's history is not linearizable:\n{v}"),
    }
    assert_eq!(report.keys_checked, KEYS);
    assert!(
        done_at_kill > 0 && completed_after_kill > 0,
        "the run must span the failure: {done_at_kill} calls before the kill, \
         {completed_after_kill} completed after it"
    );
    assert!(
        finals.iter().all(Option::is_some),
        "the final reads succeed: {finals:?}"
    );

    // The checker is not vacuous on this very history: a read after
    // everything else that returns a value acknowledged earlier but since
    // replaced (every value is written once) must be refused.
    let (k, stale) = (0..KEYS)
        .find_map(|k| {
            let last = match &finals[k] {
                Some(Output::Read(v)) => v.clone(),
                _ => return None,
            };
            ops.iter()
                .filter(|o| o.key == key(k))
                .find_map(|o| match (&o.command, &o.outcome) {
                    (Command::Put { value }, Outcome::Completed { .. })
                        if Some(value) != last.as_ref() =>
                    {
                        Some((k, value.clone()))
                    }
                    _ => None,
                })
        })
        .expect("some key has an acknowledged put that was overwritten");
    let mut tampered = history.clone();
    let end = rec.now_ns();
    let injected: OpId = tampered
        .push(Operation::completed(
            99,
            key(k),
            Command::Get,
            end + 1,
            end + 2,
            Output::Read(Some(stale)),
        ))
        .expect("valid operation");
    match check(&tampered, &CheckConfig::default()).verdict {
        Verdict::NotLinearizable(v) => {
            assert_eq!(v.key, key(k));
            assert!(
                v.core.iter().any(|(id, _)| *id == injected),
                "the witness names the injected read:\n{v}"
            );
            println!("injected stale read caught:\n{v}");
        }
        other => panic!("an injected stale read must be refused, got {other}"),
    }
}
