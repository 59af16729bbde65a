//! The suite's own checks are not vacuous: against a real cluster, the
//! read-back reports an acknowledged write that is not there and a value
//! nobody wrote, and accepts what is there.

use bytes::Bytes;
use paxos_chaos::harness::{node_binary, ChaosCluster, ClusterOptions, NetMode, ReadBackProblem};
use paxos_chaos::workload::LedgerWrite;
use paxos_kv::client::Client;
use std::time::Duration;

#[test]
fn read_back_reports_lost_and_foreign_values() {
    let mut options = ClusterOptions::new(3, node_binary().expect("the paxos-node binary"));
    options.net = NetMode::Loopback;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let c = tokio::task::block_in_place(|| ChaosCluster::start(options)).expect("cluster");
        c.leader(Duration::from_secs(30)).await.expect("leader");
        let client = Client::new(c.client_addrs(), c.security(), 5, Duration::from_secs(2));
        client
            .put(
                Bytes::from_static(b"ledger/x/1"),
                Bytes::from_static(b"one"),
            )
            .await
            .expect("put");
        client
            .put(
                Bytes::from_static(b"ledger/x/2"),
                Bytes::from_static(b"other"),
            )
            .await
            .expect("put");
        let write = |k: &'static [u8], v: &'static [u8], acknowledged| LedgerWrite {
            key: Bytes::from_static(k),
            value: Bytes::from_static(v),
            acknowledged,
        };
        let ledger = vec![
            // There, as written.
            write(b"ledger/x/1", b"one", true),
            // Acknowledged but never written: lost.
            write(b"ledger/x/3", b"three", true),
            // Not acknowledged and absent: fine.
            write(b"ledger/x/4", b"four", false),
            // Holds a value this write did not put.
            write(b"ledger/x/2", b"two", false),
        ];
        let problems = c.read_back(&ledger).await.expect("read back");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            matches!(&problems[0], ReadBackProblem::Lost(p) if p.contains("ledger/x/3")),
            "{problems:?}"
        );
        assert!(
            matches!(&problems[1], ReadBackProblem::Foreign(p)
                if p.contains("ledger/x/2") && p.contains("other")),
            "{problems:?}"
        );
        // One state everywhere once the writes are applied.
        let digest = c.settle(Duration::from_secs(30)).await.expect("settles");
        assert!(!digest.is_empty());
    });
}
