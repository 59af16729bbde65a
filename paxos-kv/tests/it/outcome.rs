//! A write whose outcome the client cannot know is reported as unknown,
//! never as failed (issue 12, point 3). Reproduction: the leader proposes a
//! write and then loses its quorum (both followers paused with SIGSTOP),
//! so it steps down with the write in its log; once one follower resumes,
//! it is elected again (it has the most recent history, and no quorum
//! forms without it) and commits the write. The client, which gave up meanwhile, must have said "outcome
//! unknown", not "failed".

use bytes::Bytes;
use paxos_kv::client::{Client, ClientError, Session};
use paxos_kv::kv::KvOp;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use std::path::PathBuf;
use std::time::Duration;

/// Resumes the paused processes when dropped, whatever the test did.
struct Paused(Vec<u32>);

impl Paused {
    fn pause(pids: Vec<u32>) -> Paused {
        for &pid in &pids {
            // SAFETY: kill(2) with a pid of a child this test started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        }
        Paused(pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_proposed_before_a_leader_change_is_reported_unknown_and_later_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    let cluster = LocalCluster::start(spec).expect("cluster starts");
    let security = cluster.client_security();
    let put = |v: &str| KvOp::Put {
        key: Bytes::from_static(b"x"),
        value: Bytes::copy_from_slice(v.as_bytes()),
    };
    // The steps below need the node the client knows to lead when its
    // followers are paused. On a loaded machine the leadership may move
    // between finding the leader and pausing the others; then the write is
    // refused rather than proposed, the followers resume, and the round is
    // done again with the new leader (a few times).
    const TRIES: u32 = 5;
    let mut attempt = 0;
    let (leader, client, mut session, paused) = loop {
        attempt += 1;
        let leader = cluster
            .wait_for_leader(Duration::from_secs(30))
            .await
            .expect("a leader is elected");
        let leader_addr = cluster.members()[&leader].client;
        // A client that knows only the leader: it sees the leader's answer
        // to the write, then the leader's redirects while no leader exists.
        let client = Client::new(
            vec![leader_addr],
            security.clone(),
            u64::from(attempt),
            Duration::from_secs(5),
        );
        let mut session = Session::new(76 + u64::from(attempt));
        // A quorum commits it; on a loaded machine the cluster may be
        // between leaders (then the round starts over).
        if let Err(e) = client.write_in(&mut session, put("before")).await {
            assert!(attempt < TRIES, "no round's first write committed: {e}");
            continue;
        }
        // It still leads (the client may have followed a redirect to
        // another node), and this is its log's end before the write.
        let st = cluster.statuses().await;
        let Some(before_end) = st
            .get(&leader)
            .filter(|v| v["role"] == "leader")
            .map(|v| v["last_zxid"].clone())
        else {
            assert!(attempt < TRIES, "no stable leader in {TRIES} rounds");
            continue;
        };
        let followers: Vec<u32> = cluster
            .ids()
            .into_iter()
            .filter(|&id| id != leader)
            .map(|id| cluster.pid(id).expect("the follower runs"))
            .collect();
        let paused = Paused::pause(followers);
        let err = client
            .write_in(&mut session, put("in-doubt"))
            .await
            .expect_err("no quorum: the write cannot complete while the followers are paused");
        // The node the client knew proposed the write: its log grew past
        // where it ended before. Otherwise the leadership had moved, and
        // the client's "unknown" came from a redirect to a paused node.
        let holds_it = cluster
            .statuses()
            .await
            .get(&leader)
            .is_some_and(|v| v["last_zxid"].is_string() && v["last_zxid"] != before_end);
        if err.is_outcome_unknown() && holds_it {
            assert!(
                matches!(err, ClientError::OutcomeUnknown { .. }),
                "the write was proposed, so its outcome is unknown, not failed: {err:?}"
            );
            assert!(
                err.to_string().contains("outcome unknown"),
                "the message says so: {err}"
            );
            break (leader, client, session, paused);
        }
        drop(paused);
        assert!(
            attempt < TRIES,
            "the write was never proposed by a leader with paused followers in {TRIES} rounds \
             (last: {err:?})"
        );
    };

    // One follower resumes first. The old leader holds the write in its
    // log and the most recent history, so the follower votes for it and
    // no quorum of two can form without it: it is elected again and
    // commits the write. (With both followers resumed at once, the two of
    // them may agree on one of themselves before the old leader's vote
    // reaches them, on a loaded machine, and then the write is legitimately
    // discarded: the test would hang on timing.)
    let mut paused = paused;
    let second = paused.0.pop().expect("two followers were paused");
    drop(paused);
    let relected = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader is elected after one follower resumes");
    assert_eq!(
        relected, leader,
        "only the node with the most recent history can gather a quorum of two"
    );
    drop(Paused(vec![second]));
    let reader = Client::new(
        cluster.client_addrs(),
        security.clone(),
        2,
        Duration::from_secs(5),
    );
    let value = crate::util::read_eventually(&reader, b"x", Duration::from_secs(30)).await;
    assert_eq!(
        value.as_deref(),
        Some(&b"in-doubt"[..]),
        "the write reported unknown did commit"
    );
    // The session goes on: the same write retried is answered, not re-applied.
    client
        .write_in(&mut session, put("after"))
        .await
        .expect("the session continues");
}
