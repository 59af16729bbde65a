//! Peers added at run time (`Transport::add_peer`): a member added to the
//! cluster after the others started is refused until added, then reached in
//! both directions (as the dialler and as the acceptor).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use paxos_net_quic::certs::{generate_cluster_in_memory, GeneratedCluster};
use paxos_net_quic::{NetConfig, PeerId, SendError, Transport};

use crate::common::*;

async fn expect_frame(node: &mut Node, from: u64, body: &'static [u8]) {
    let (got_from, frame) = tokio::time::timeout(WAIT, node.inbox.frames.recv())
        .await
        .expect("a frame within the wait")
        .expect("inbox open");
    assert_eq!((got_from, &frame[..]), (PeerId(from), body));
}

async fn start(cluster: &GeneratedCluster, me: u64, peers: BTreeMap<PeerId, SocketAddr>) -> Node {
    let cfg = NetConfig::loopback(
        cluster.node(PeerId(me)).expect("generated").clone(),
        cluster.trust(),
        any_port(),
        peers,
    );
    let (transport, inbox) = Transport::bind(cfg).await.expect("bind transport");
    let addr = transport.local_addr().expect("bound address");
    Node {
        transport,
        inbox,
        addr,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_added_at_run_time_is_reached_both_ways() {
    init_tracing();
    // Certificates for every id the test uses; 2 and 3 start as the cluster.
    let cluster = generate_cluster_in_memory(&ids(&[1, 2, 3, 4])).expect("certificates");
    let mut n3 = start(&cluster, 3, BTreeMap::from([(PeerId(2), placeholder())])).await;
    let mut n2 = start(&cluster, 2, BTreeMap::from([(PeerId(3), n3.addr)])).await;
    // 1 joins: it knows 2 and 3 and dials both (the lower id dials); they
    // refuse it until they add it.
    let mut n1 = start(
        &cluster,
        1,
        BTreeMap::from([(PeerId(2), n2.addr), (PeerId(3), n3.addr)]),
    )
    .await;
    // 4 joins as the higher id: it only accepts, so 2 must dial it.
    let mut n4 = start(&cluster, 4, BTreeMap::from([(PeerId(2), placeholder())])).await;

    assert!(matches!(
        n2.transport.send(PeerId(1), Bytes::from_static(b"early")),
        Err(SendError::UnknownPeer { .. })
    ));
    wait_for("2 refuses 1 while it is no peer", || {
        n2.transport.endpoint_metrics().refused_handshake > 0
            || n2.transport.endpoint_metrics().refused_peer > 0
    })
    .await;
    assert!(!n1.transport.is_connected(PeerId(2)));

    // Adding: own id refused; the first add changes something, a repeat not.
    assert!(n2.transport.add_peer(PeerId(2), n2.addr).is_err());
    assert!(n2.transport.add_peer(PeerId(1), n1.addr).expect("add 1"));
    assert!(!n2.transport.add_peer(PeerId(1), n1.addr).expect("re-add 1"));
    assert!(n2.transport.add_peer(PeerId(4), n4.addr).expect("add 4"));

    // 1 redials and is accepted; frames flow both ways.
    wait_for("1 connects to 2", || n1.transport.is_connected(PeerId(2))).await;
    send_retrying(&n1.transport, PeerId(2), Bytes::from_static(b"from 1")).await;
    expect_frame(&mut n2, 1, b"from 1").await;
    send_retrying(&n2.transport, PeerId(1), Bytes::from_static(b"to 1")).await;
    expect_frame(&mut n1, 2, b"to 1").await;
    // 2 dials 4; frames flow both ways.
    send_retrying(&n2.transport, PeerId(4), Bytes::from_static(b"to 4")).await;
    expect_frame(&mut n4, 2, b"to 4").await;
    send_retrying(&n4.transport, PeerId(2), Bytes::from_static(b"from 4")).await;
    expect_frame(&mut n2, 4, b"from 4").await;
    // The old pair still works, and 3 (which never added 1) still refuses it.
    send_retrying(&n2.transport, PeerId(3), Bytes::from_static(b"to 3")).await;
    expect_frame(&mut n3, 2, b"to 3").await;
    assert!(!n1.transport.is_connected(PeerId(3)));
    let ids: Vec<PeerId> = n2.transport.metrics().iter().map(|m| m.peer).collect();
    assert_eq!(ids, vec![PeerId(1), PeerId(3), PeerId(4)]);
}
