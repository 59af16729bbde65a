//! The client workload run during a scenario: a few clients over the real
//! client library (TLS, sessions, retries), each call recorded with its
//! invocation and completion instants (or an unknown outcome) for the
//! linearizability checker.
//!
//! Two kinds of keys:
//! - *registers*, a handful of keys that every client reads, writes,
//!   compare-and-sets and deletes: the linearizability checker has work to
//!   do on them;
//! - the *ledger*, one fresh key per write, written once: every
//!   acknowledged ledger write must read back with its value at the end,
//!   which is a check that needs no search.
//!
//! Against nodes of many groups the client routes each key to its group's
//! leader: the registers fall in a few groups, the ledger's fresh keys
//! spread over all of them, and both checks stay per key.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use paxos_kv::client::{Client, ClientError};
use paxos_kv::client_proto::ReadMode;
use paxos_kv::kv::KvResult;
use paxos_kv::tls::ClientSecurity;
use paxos_testkit::linearizability::{Command, History, Output, Recorder};
use std::net::SocketAddr;

use paxos_core::rng::Rng;

/// Settings of a [`Workload`].
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Concurrent clients, each with one call in flight.
    pub clients: u64,
    /// Register keys shared by the clients.
    pub registers: usize,
    /// A call still running after this long is abandoned and recorded as of
    /// unknown outcome.
    pub call_limit: Duration,
    /// The client library's own per-attempt timeout.
    pub client_timeout: Duration,
    /// Pause between one client's calls (keeps histories checkable).
    pub think_time: Duration,
    /// Seed of the clients' choices.
    pub seed: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            clients: 4,
            registers: 8,
            call_limit: Duration::from_secs(3),
            client_timeout: Duration::from_secs(1),
            think_time: Duration::from_millis(5),
            seed: 1,
        }
    }
}

/// Calls counted by how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpCounts {
    /// Completed with an answer.
    pub ok: u64,
    /// Failed with an error that says the call did not take effect (a
    /// refused request, a read that failed).
    pub failed: u64,
    /// Ended without knowing whether the write took effect.
    pub unknown: u64,
}

impl OpCounts {
    /// Every call.
    pub fn total(&self) -> u64 {
        self.ok + self.failed + self.unknown
    }
}

impl std::ops::AddAssign for OpCounts {
    fn add_assign(&mut self, o: OpCounts) {
        self.ok += o.ok;
        self.failed += o.failed;
        self.unknown += o.unknown;
    }
}

/// A write of a ledger key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerWrite {
    /// The key, written once in the run.
    pub key: Bytes,
    /// Its value.
    pub value: Bytes,
    /// The cluster acknowledged it (otherwise its outcome is unknown or it
    /// failed: it may or may not be there).
    pub acknowledged: bool,
}

#[derive(Default)]
struct Shared {
    ok: AtomicU64,
    failed: AtomicU64,
    unknown: AtomicU64,
    /// Writes among `failed` (a definite error: the cluster refused them).
    failed_writes: AtomicU64,
    ledger: Mutex<Vec<LedgerWrite>>,
}

/// A running workload; [`Workload::stop`] ends it and hands back what it
/// recorded.
pub struct Workload {
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    config: WorkloadConfig,
}

/// What a finished workload recorded.
#[derive(Debug)]
pub struct Recorded {
    /// Every call, for the linearizability checker.
    pub history: History,
    /// Every ledger write and whether it was acknowledged.
    pub ledger: Vec<LedgerWrite>,
    /// Calls by outcome.
    pub counts: OpCounts,
}

/// The name of register `i`.
pub fn register_key(i: usize) -> Bytes {
    Bytes::from(format!("reg/{i}"))
}

enum Ended {
    Ok(Output),
    Failed,
    Unknown,
}

impl Workload {
    /// Starts `config.clients` clients against `addrs`.
    pub fn start(
        addrs: Vec<SocketAddr>,
        security: ClientSecurity,
        config: WorkloadConfig,
    ) -> Workload {
        let recorder = Arc::new(Recorder::new());
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let tasks = (1..=config.clients)
            .map(|id| {
                let client = Client::new(
                    addrs.clone(),
                    security.clone(),
                    config.seed.wrapping_mul(1_000) + id,
                    config.client_timeout,
                );
                tokio::spawn(run_client(
                    id,
                    client,
                    recorder.clone(),
                    stop.clone(),
                    shared.clone(),
                    config.clone(),
                ))
            })
            .collect();
        Workload {
            recorder,
            stop,
            shared,
            tasks,
            config,
        }
    }

    /// Adds a client that only reads the registers, linearizably, and only
    /// from `addr` (for example an old leader that was paused or cut off:
    /// it must not answer from a state others have moved past).
    pub fn add_pinned_reader(&mut self, addr: SocketAddr, security: ClientSecurity) {
        let id = 100 + self.tasks.len() as u64;
        let client = Client::new(
            vec![addr],
            security,
            self.config.seed.wrapping_mul(1_000) + id,
            self.config.client_timeout,
        );
        let (rec, stop, shared) = (
            self.recorder.clone(),
            self.stop.clone(),
            self.shared.clone(),
        );
        let config = self.config.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(config.seed ^ id);
            // Bounded by the stop flag, as every client.
            for _ in 0..u64::from(u32::MAX) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let key = register_key(rng.below(config.registers.max(1) as u64) as usize);
                recorded(
                    &rec,
                    &shared,
                    id,
                    &key,
                    Command::Get,
                    config.call_limit,
                    async {
                        match client.get(key.clone(), ReadMode::Linearizable).await {
                            Ok(v) => Ended::Ok(Output::Read(v)),
                            Err(_) => Ended::Failed,
                        }
                    },
                )
                .await;
                tokio::time::sleep(config.think_time).await;
            }
        }));
    }

    /// The recorder's clock, nanoseconds from the workload's start.
    pub fn now_ns(&self) -> u64 {
        self.recorder.now_ns()
    }

    /// Calls so far, by outcome.
    pub fn counts(&self) -> OpCounts {
        OpCounts {
            ok: self.shared.ok.load(Ordering::Relaxed),
            failed: self.shared.failed.load(Ordering::Relaxed),
            unknown: self.shared.unknown.load(Ordering::Relaxed),
        }
    }

    /// Writes (puts, compare-and-sets, deletes) that failed with a definite
    /// error so far. Not counted: reads that failed, and writes of unknown
    /// outcome (a call abandoned at its limit, a leader lost meanwhile).
    pub fn failed_writes(&self) -> u64 {
        self.shared.failed_writes.load(Ordering::Relaxed)
    }

    /// Stops issuing calls, waits for the calls in flight (each bounded by
    /// the call limit) and returns the record.
    pub async fn stop(self) -> Recorded {
        self.stop.store(true, Ordering::Relaxed);
        let bound = self.config.call_limit + self.config.think_time + Duration::from_secs(5);
        for t in self.tasks {
            // A client task ends within one call limit of the stop flag; if
            // it does not, it is aborted and its call stays pending, which
            // the history records as of unknown outcome.
            let abort = t.abort_handle();
            if tokio::time::timeout(bound, t).await.is_err() {
                abort.abort();
            }
        }
        Recorded {
            history: self.recorder.history(),
            ledger: std::mem::take(&mut *self.shared.ledger.lock()),
            counts: OpCounts {
                ok: self.shared.ok.load(Ordering::Relaxed),
                failed: self.shared.failed.load(Ordering::Relaxed),
                unknown: self.shared.unknown.load(Ordering::Relaxed),
            },
        }
    }
}

fn write_output(result: KvResult) -> Option<Output> {
    match result {
        KvResult::Done(previous) => Some(Output::Written { previous }),
        KvResult::Cas { swapped, current } => Some(Output::Cas { swapped, current }),
        _ => None,
    }
}

/// How a write call ended: an answer, a definite failure, or unknown.
fn write_ended(r: Result<KvResult, ClientError>) -> Ended {
    match r {
        Ok(res) => write_output(res).map_or(Ended::Unknown, Ended::Ok),
        Err(e) if e.is_outcome_unknown() => Ended::Unknown,
        // The library reports a definite failure only when nothing was
        // proposed; the history still treats it as of unknown outcome (a
        // call that did not take effect is one of the outcomes allowed).
        Err(_) => Ended::Failed,
    }
}

/// Runs `call` as one recorded operation.
async fn recorded<F>(
    rec: &Recorder,
    shared: &Shared,
    client: u64,
    key: &Bytes,
    command: Command,
    limit: Duration,
    call: F,
) -> Option<Output>
where
    F: std::future::Future<Output = Ended>,
{
    let is_write = !matches!(command, Command::Get);
    let inv = rec.invoke(client, key.clone(), command);
    let ended = tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Ended::Unknown);
    match ended {
        Ended::Ok(output) => match rec.complete(inv, output.clone()) {
            Ok(_) => {
                shared.ok.fetch_add(1, Ordering::Relaxed);
                Some(output)
            }
            Err(e) => {
                // An answer that does not fit the command is a node bug;
                // recorded as unknown so the run goes on, and reported.
                tracing::error!(%e, "an answer did not fit its command");
                shared.unknown.fetch_add(1, Ordering::Relaxed);
                None
            }
        },
        Ended::Failed => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            if is_write {
                shared.failed_writes.fetch_add(1, Ordering::Relaxed);
            }
            let _ = rec.unknown(inv);
            None
        }
        Ended::Unknown => {
            shared.unknown.fetch_add(1, Ordering::Relaxed);
            let _ = rec.unknown(inv);
            None
        }
    }
}

async fn run_client(
    id: u64,
    client: Client,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    config: WorkloadConfig,
) {
    let mut rng = Rng::new(config.seed ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut seen: Vec<Option<Bytes>> = vec![None; config.registers.max(1)];
    let limit = config.call_limit;
    // Bounded by the stop flag, which every scenario sets within its own
    // time bound; the count bound is a backstop.
    for i in 0..u64::from(u32::MAX) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let value = Bytes::from(format!("c{id}-{i}"));
        let roll = rng.below(100);
        if roll < 25 {
            let key = Bytes::from(format!("ledger/{}/{id}/{i}", config.seed));
            let command = Command::Put {
                value: value.clone(),
            };
            let out = recorded(&rec, &shared, id, &key, command, limit, async {
                write_ended(client.put(key.clone(), value.clone()).await)
            })
            .await;
            shared.ledger.lock().push(LedgerWrite {
                key,
                value,
                acknowledged: out.is_some(),
            });
        } else {
            let k = rng.below(config.registers.max(1) as u64) as usize;
            let key = register_key(k);
            let observed = if roll < 55 {
                let out = recorded(&rec, &shared, id, &key, Command::Get, limit, async {
                    match client.get(key.clone(), ReadMode::Linearizable).await {
                        Ok(v) => Ended::Ok(Output::Read(v)),
                        Err(_) => Ended::Failed,
                    }
                })
                .await;
                match out {
                    Some(Output::Read(v)) => Some(v),
                    _ => None,
                }
            } else if roll < 75 {
                let command = Command::Put {
                    value: value.clone(),
                };
                recorded(&rec, &shared, id, &key, command, limit, async {
                    write_ended(client.put(key.clone(), value.clone()).await)
                })
                .await
                .map(|_| Some(value.clone()))
            } else if roll < 95 {
                let expected = seen[k].clone();
                let command = Command::Cas {
                    expected: expected.clone(),
                    new: value.clone(),
                };
                let out = recorded(&rec, &shared, id, &key, command, limit, async {
                    write_ended(client.cas(key.clone(), expected, value.clone()).await)
                })
                .await;
                match out {
                    Some(Output::Cas { swapped: true, .. }) => Some(Some(value.clone())),
                    Some(Output::Cas { current, .. }) => Some(current),
                    _ => None,
                }
            } else {
                recorded(&rec, &shared, id, &key, Command::Delete, limit, async {
                    write_ended(client.delete(key.clone()).await)
                })
                .await
                .map(|_| None)
            };
            if let Some(v) = observed {
                seen[k] = v;
            }
        }
        tokio::time::sleep(config.think_time).await;
    }
}
