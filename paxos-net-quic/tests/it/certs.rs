//! Certificates on disk: generate PEM files, load them back, run a pair of
//! nodes from the loaded files; bad files are clear errors.

use std::collections::BTreeMap;

use bytes::Bytes;
use paxos_net_quic::certs::{generate_cluster, CertError};
use paxos_net_quic::{ClusterTrust, NetConfig, NodeIdentity, PeerId, Transport};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_pem_files_load_and_connect() {
    init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let all = ids(&[1, 2]);
    let (_cluster, files) = generate_cluster(dir.path(), &all).expect("write PEM files");
    assert_eq!(files.nodes.len(), 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&files.nodes[0].2)
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private keys are not readable by others");
    }
    let trust = ClusterTrust::from_pem_file(&files.ca_cert).expect("load CA");
    let load = |id: PeerId| {
        let (_, cert, key) = files
            .nodes
            .iter()
            .find(|(n, _, _)| *n == id)
            .expect("files of node");
        NodeIdentity::from_pem_files(id, cert, key).expect("load node identity")
    };
    let (a, b) = (PeerId(1), PeerId(2));
    let cfg_b = NetConfig::loopback(
        load(b),
        trust.clone(),
        any_port(),
        BTreeMap::from([(a, placeholder())]),
    );
    let (tb, mut inbox_b) = Transport::bind(cfg_b).await.expect("node 2");
    let peers_a = BTreeMap::from([(b, tb.local_addr().expect("addr"))]);
    let (ta, _inbox_a) = Transport::bind(NetConfig::loopback(load(a), trust, any_port(), peers_a))
        .await
        .expect("node 1");
    ta.send(b, Bytes::from_static(b"from disk")).expect("queue");
    let (from, f) = tokio::time::timeout(WAIT, inbox_b.frames.recv())
        .await
        .expect("frame in time")
        .expect("open");
    assert_eq!((from, &f[..]), (a, &b"from disk"[..]));
    ta.shutdown().await;
    tb.shutdown().await;
}

#[test]
fn bad_pem_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let all = ids(&[1, 2]);
    let (_cluster, files) = generate_cluster(dir.path(), &all).expect("write PEM files");
    let (_, cert1, key1) = &files.nodes[0];
    // Loading node 1's files as node 2: the certificate does not name node 2.
    match NodeIdentity::from_pem_files(PeerId(2), cert1, key1) {
        Err(CertError::WrongName { expected, .. }) => assert_eq!(expected, PeerId(2)),
        other => panic!("expected WrongName, got {other:?}"),
    }
    // A missing file names the path.
    let missing = dir.path().join("nope.pem");
    match NodeIdentity::from_pem_files(PeerId(1), &missing, key1) {
        Err(CertError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected Io, got {other:?}"),
    }
    // A key file where the certificate belongs: no CERTIFICATE block.
    assert!(matches!(
        NodeIdentity::from_pem_files(PeerId(1), key1, key1),
        Err(CertError::Pem { .. })
    ));
    assert!(matches!(
        ClusterTrust::from_pem("garbage"),
        Err(CertError::Pem { .. })
    ));
}
