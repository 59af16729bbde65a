//! A member that lost its disk never votes as if it had promised nothing
//! (issue 12, point 5), on real processes. The scenario: A leads, x is
//! acknowledged with B's durable acceptance while C is cut off (paused with
//! SIGSTOP); B loses its data directory; A dies; C comes back and B
//! restarts empty with `--rejoin`. B and C alone must not elect a leader
//! (C lacks x and B remembers nothing); once A is back, the cluster elects
//! a leader holding x, readmits B, and x reads back.

use bytes::Bytes;
use paxos_kv::client::{Client, Session};
use paxos_kv::client_proto::ReadMode;
use paxos_kv::kv::KvOp;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_member_rejoins_without_voting_away_an_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    let security = cluster.client_security();
    let a = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader is elected");
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != a).collect();
    let (b, c) = (others[0], others[1]);
    let members = cluster.members().clone();
    let addr = |id: u64| members[&id].client;

    // C is cut off; x commits on A and B.
    let paused = Paused(cluster.pid(c).expect("C runs"));
    signal(paused.0, libc::SIGSTOP);
    let writer = Client::new(vec![addr(a)], security.clone(), 1, Duration::from_secs(5));
    let mut session = Session::new(5);
    writer
        .write_in(
            &mut session,
            KvOp::Put {
                key: Bytes::from_static(b"x"),
                value: Bytes::from_static(b"acknowledged"),
            },
        )
        .await
        .expect("x commits with A and B");

    // B loses its disk, A dies, C comes back, B rejoins empty.
    cluster.kill(b).expect("kill B");
    cluster.kill(a).expect("kill A");
    drop(paused);
    cluster.rejoin_node(b).expect("B rejoins");

    // For a while, nobody may lead: C lacks x, and B may not count.
    let reader = Client::new(
        vec![addr(b), addr(c)],
        security.clone(),
        2,
        Duration::from_millis(500),
    );
    let watch_until = Instant::now() + Duration::from_secs(4);
    let mut saw_recovering = false;
    while Instant::now() < watch_until {
        let st = cluster.statuses().await;
        for (id, v) in &st {
            assert_ne!(v["role"], "leader", "node {id} led without A: {v}");
        }
        saw_recovering |= st.get(&b).is_some_and(|v| v["recovering"] == true);
        if let Ok(v) = reader
            .get(Bytes::from_static(b"x"), ReadMode::Linearizable)
            .await
        {
            assert_eq!(
                v.as_deref(),
                Some(&b"acknowledged"[..]),
                "a linearizable read served without A must not lose x"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_recovering, "B reported itself recovering");

    // A returns: a leader with x is elected, B is readmitted, x reads back.
    cluster.start_node(a).expect("A restarts");
    cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader is elected once A is back");
    let reader = Client::new(
        cluster.client_addrs(),
        security.clone(),
        3,
        Duration::from_secs(5),
    );
    let value = crate::util::read_eventually(&reader, b"x", Duration::from_secs(30)).await;
    assert_eq!(value.as_deref(), Some(&b"acknowledged"[..]), "x survived");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = cluster.statuses().await;
        if st.get(&b).is_some_and(|v| v["recovering"] == false) {
            break;
        }
        assert!(Instant::now() < deadline, "B was never readmitted: {st:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A write commits with B counted: C paused, A and B form the quorum.
    let c_paused = Paused(cluster.pid(c).expect("C runs"));
    signal(c_paused.0, libc::SIGSTOP);
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .unwrap_or(a);
    let w = Client::new(
        vec![addr(a), addr(b)],
        security.clone(),
        4,
        Duration::from_secs(5),
    );
    let mut s = Session::new(9);
    w.write_in(
        &mut s,
        KvOp::Put {
            key: Bytes::from_static(b"y"),
            value: Bytes::from_static(b"with B"),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("A and B commit once B is readmitted (leader {leader}): {e}"));
    drop(c_paused);
}
