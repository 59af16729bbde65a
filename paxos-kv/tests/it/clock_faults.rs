//! Lease reads from the command line (`--lease-reads`), and an old leader
//! that was paused past the election timeout (SIGSTOP: cut off) while a new
//! leader committed a newer value: a read through the old leader must never
//! return the older value, neither with a correct clock nor with its clock
//! frozen by the fault hooks (`--fault-file`, `clock_offset_ms`).

use bytes::Bytes;
use paxos_kv::client::Client;
use paxos_kv::client_proto::ReadMode;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child process this test started.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Resumes a paused process when dropped.
struct Paused(u32);

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, libc::SIGCONT);
    }
}

async fn put_acknowledged(client: &Client, k: &'static [u8], v: &'static [u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .put(Bytes::from_static(k), Bytes::from_static(v))
            .await
        {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "write retried");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("write never acknowledged: {e}"),
        }
    }
}

/// Waits (bounded) until `needle` appears in node `id`'s log.
async fn wait_for_log(cluster: &LocalCluster, id: u64, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(cluster.log_path(id)).unwrap_or_default();
        if log.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {id} never logged {needle:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn old_leader_never_serves_a_stale_lease_read(lease_reads: bool, freeze_clock: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    let fault_file = |id: u64| dir.path().join(format!("faults-{id}"));
    // Every node again, with the fault hooks (and lease reads if asked).
    for id in cluster.ids() {
        let path = fault_file(id);
        let path = path.to_str().expect("utf-8 path").to_string();
        let mut args = vec!["--fault-file", path.as_str()];
        if lease_reads {
            args.push("--lease-reads");
        }
        cluster
            .start_node_with(id, &args)
            .expect("restart with the fault hooks");
    }
    let security = cluster.client_security();
    let old = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader is elected");
    let members = cluster.members().clone();
    let everyone = Client::new(
        cluster.client_addrs(),
        security.clone(),
        1,
        Duration::from_secs(5),
    );
    put_acknowledged(&everyone, b"x", b"old").await;
    // Linearizable reads are served (from the lease, if on).
    for _ in 0..20 {
        let v = everyone
            .get(Bytes::from_static(b"x"), ReadMode::Linearizable)
            .await
            .expect("a linearizable read");
        assert_eq!(v.as_deref(), Some(&b"old"[..]));
    }
    // A client of the old leader alone, connected before the pause.
    let via_old = Client::new(
        vec![members[&old].client],
        security.clone(),
        2,
        Duration::from_secs(20),
    );
    let v = via_old
        .get(Bytes::from_static(b"x"), ReadMode::Linearizable)
        .await
        .expect("the leader answers");
    assert_eq!(v.as_deref(), Some(&b"old"[..]));

    if freeze_clock {
        // Frozen before the pause (the hooks are read by a task that may
        // run after the first turn of the loop on resume).
        std::fs::write(fault_file(old), "clock_offset_ms=-600000\n").expect("fault file");
        wait_for_log(&cluster, old, "clock_offset_ms changed").await;
    }
    let paused = Paused(cluster.pid(old).expect("the leader runs"));
    signal(paused.0, libc::SIGSTOP);
    let others: Vec<_> = cluster
        .ids()
        .into_iter()
        .filter(|&i| i != old)
        .map(|i| members[&i].client)
        .collect();
    let new_side = Client::new(others, security.clone(), 3, Duration::from_secs(5));
    put_acknowledged(&new_side, b"x", b"new").await;
    let new = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a new leader");
    assert_ne!(new, old);
    // The read reaches the old leader's socket while it is paused, and is
    // the first thing it sees on resume.
    let read = tokio::spawn(async move {
        let r = via_old
            .get(Bytes::from_static(b"x"), ReadMode::Linearizable)
            .await;
        (via_old, r)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(paused);
    let (via_old, first) = read.await.expect("read task");
    let mut answers = vec![first];
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        answers.push(
            via_old
                .get(Bytes::from_static(b"x"), ReadMode::Linearizable)
                .await,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut served = 0;
    for (i, a) in answers.iter().enumerate() {
        match a {
            Ok(v) => {
                served += 1;
                assert_eq!(
                    v.as_deref(),
                    Some(&b"new"[..]),
                    "read {i} through the old leader (lease reads: {lease_reads}, frozen \
                     clock: {freeze_clock}) returned a stale value; answers: {answers:?}"
                );
            }
            Err(e) => eprintln!("read {i}: {e}"),
        }
    }
    eprintln!(
        "{served} of {} reads through the old leader answered",
        answers.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_old_leader_serves_no_stale_lease_read() {
    old_leader_never_serves_a_stale_lease_read(true, false).await;
}

/// Lease reads trust the leader's clock: with that clock frozen (drift far
/// beyond `--lease-clock-drift-ms`) an old leader's lease never runs out
/// and it would serve the older value, a limit of leases that the README
/// states. Reads by a quorum round (the default) do not depend on clocks:
/// the same frozen, paused old leader must not serve a stale read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_old_leader_with_a_frozen_clock_serves_no_stale_quorum_read() {
    old_leader_never_serves_a_stale_lease_read(false, true).await;
}
