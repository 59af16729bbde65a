//! The client library finds the leader when the first node it knows is cut
//! off from the cluster but still answers clients (it says "no leader" and
//! names none). Found by `cargo xtask chaos`: partition-majority,
//! constrained-election and chained runs stalled for 30 s whenever node 1
//! was on the wrong side, because every retry began again at node 1.

#![allow(clippy::print_stderr)]

use bytes::Bytes;
use paxos_chaos::harness::{node_binary, ChaosCluster, ClusterOptions};
use paxos_kv::client::Client;
use std::time::{Duration, Instant};

#[test]
fn a_client_whose_first_node_is_cut_off_still_writes() {
    if let Err(why) = paxos_chaos::net::probe() {
        eprintln!("SKIPPED: needs network namespaces: {why}");
        return;
    }
    let options = ClusterOptions::new(3, node_binary().expect("the paxos-node binary"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let c = tokio::task::block_in_place(|| ChaosCluster::start(options)).expect("cluster");
        c.leader(Duration::from_secs(30)).await.expect("leader");
        // Node 1 loses its peers (clients still reach it): it stops
        // leading or following, and answers every request "no leader".
        c.net_for("isolation")
            .expect("network")
            .isolate(1)
            .expect("isolate node 1");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st = c.statuses().await;
            let others_lead = st
                .iter()
                .any(|(&id, v)| id != 1 && v["role"] == "leader" && v["epoch"].is_u64());
            if st.get(&1).is_some_and(|v| v["role"] == "looking") && others_lead {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node 1 did not lose its leader, or the others elected none: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The client lists node 1 first, as every client of a cluster whose
        // members are listed in order does.
        let client = Client::new(c.client_addrs(), c.security(), 11, Duration::from_secs(1));
        let started = Instant::now();
        let mut last = None;
        // Five calls, each bounded by the library's own attempts.
        for i in 0..5 {
            let key = Bytes::from(format!("routing/{i}"));
            match client.put(key, Bytes::from_static(b"v")).await {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e.to_string()),
            }
        }
        assert!(
            last.is_none(),
            "no write reached the leader in {:?} with node 1 cut off: {}",
            started.elapsed(),
            last.unwrap_or_default()
        );
    });
}
