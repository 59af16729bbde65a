//! An old leader cut off for longer than the election timeout comes back
//! into service soon after the cut heals (issue 12, point 7): paused with
//! SIGSTOP for 5 s while the others elect a new leader, then resumed, it
//! must follow the new leader. The time from the heal until every node
//! follows one leader is printed (it is measured, not asserted: the test
//! asserts only that it happens within a generous bound).

use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a child process this test started.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_old_leader_follows_the_new_one_after_the_heal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    let cluster = LocalCluster::start(spec).expect("cluster starts");
    let old = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader is elected");
    let pid = cluster.pid(old).expect("the leader runs");
    signal(pid, libc::SIGSTOP);
    let new = cluster.wait_for_leader(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal(pid, libc::SIGCONT);
    let new = new.expect("the others elect a new leader");
    assert_ne!(new, old);
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(30);
    loop {
        let st = cluster.statuses().await;
        let leaders: Vec<_> = st.values().map(|v| v["leader"].clone()).collect();
        let all_follow = st.len() == 3
            && leaders.iter().all(|l| *l == leaders[0] && !l.is_null())
            && st.values().all(|v| v["role"] != "looking");
        if all_follow {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every node follows one leader 30 s after the heal: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "heal to every node in service: {} ms",
        healed.elapsed().as_millis()
    );
}
