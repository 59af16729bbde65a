//! The comparison harness against real etcd and ZooKeeper servers (feature
//! `compare`). Each test skips, printing why, when the servers are not
//! installed (`apt-get install etcd-server zookeeper`).
#![cfg(feature = "compare")]
#![allow(clippy::print_stdout)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use paxos_bench::compare::{
    bench_etcd, bench_zookeeper, find_free_ports, run_comparison, CompareError, CompareOptions,
    EtcdCluster, EtcdInstall, System, WriteLoad, ZkEnsemble, ZkInstall,
};
use zookeeper_client::{Acls, CreateMode};

/// Whether something accepts connections on 127.0.0.1:`port`.
fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(500),
    )
    .is_ok()
}

fn client_port(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("client URLs end in a port")
}

fn short_load(concurrency: usize) -> WriteLoad {
    let mut load = WriteLoad::new(concurrency, 100, Duration::from_millis(800));
    load.connections = 2;
    load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_replicates_writes_to_every_member_and_stops() {
    let install = match EtcdInstall::locate(None) {
        Ok(install) => install,
        Err(e) => {
            println!("skipping: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let base_port = find_free_ports(31000, 6, 100).expect("free ports");
    let mut cluster = EtcdCluster::start_with(&install, &dir.path().join("etcd"), 3, base_port)
        .await
        .expect("etcd cluster starts");
    assert_eq!(cluster.client_urls().len(), 3);
    assert_eq!(cluster.pids().len(), 3);
    for log in cluster.logs() {
        assert!(
            log.starts_with(dir.path()),
            "logs stay in the base directory: {}",
            log.display()
        );
        assert!(log.is_file(), "{} exists", log.display());
    }

    // Writes through member 0 are read back from every member.
    let mut writer = cluster.connect(0).await.expect("connect m0").kv_client();
    for k in 0..5 {
        writer
            .put(format!("key{k}"), format!("value{k}"), None)
            .await
            .expect("put");
    }
    for member in 0..3 {
        let mut reader = cluster.connect(member).await.expect("connect").kv_client();
        for k in 0..5 {
            let response = reader.get(format!("key{k}"), None).await.expect("get");
            let value = response.kvs().first().map(|kv| kv.value().to_vec());
            assert_eq!(
                value,
                Some(format!("value{k}").into_bytes()),
                "m{member} key{k}"
            );
        }
    }

    // A short load: every acknowledged write is there afterwards.
    let result = bench_etcd(&cluster, &short_load(4))
        .await
        .expect("bench runs");
    assert!(result.ok > 0, "some writes were acknowledged");
    assert_eq!(
        result.acked.len() as u64,
        result.ok,
        "every acknowledged write is recorded"
    );
    let (checked, lost) = cluster
        .verify(result.acked.iter())
        .await
        .expect("read back");
    assert_eq!(checked, result.acked.len());
    assert_eq!(lost, 0, "no acknowledged write lost");

    let ports: Vec<u16> = cluster
        .client_urls()
        .iter()
        .map(|u| client_port(u))
        .collect();
    cluster.stop().expect("clean stop");
    assert!(cluster.pids().is_empty(), "every member reaped");
    for port in ports {
        assert!(!listening(port), "port {port} closed after stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_etcd_cluster_kills_its_members() {
    let install = match EtcdInstall::locate(None) {
        Ok(install) => install,
        Err(e) => {
            println!("skipping: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let base_port = find_free_ports(33000, 6, 100).expect("free ports");
    let cluster = EtcdCluster::start_with(&install, &dir.path().join("etcd"), 3, base_port)
        .await
        .expect("etcd cluster starts");
    let ports: Vec<u16> = cluster
        .client_urls()
        .iter()
        .map(|u| client_port(u))
        .collect();
    assert!(
        ports.iter().all(|&p| listening(p)),
        "members serve before the drop"
    );
    drop(cluster);
    for port in ports {
        assert!(!listening(port), "port {port} closed after drop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_ensemble_replicates_creates_to_every_server_and_stops() {
    let install = match ZkInstall::locate(None, None) {
        Ok(install) => install,
        Err(e) => {
            println!("skipping: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let base_port = find_free_ports(32000, 9, 100).expect("free ports");
    let mut ensemble =
        ZkEnsemble::start_with(&install, &dir.path().join("zookeeper"), 3, base_port)
            .await
            .expect("zookeeper ensemble starts");
    assert_eq!(ensemble.client_addrs().len(), 3);
    assert_eq!(ensemble.pids().len(), 3);

    // Creates through server.1 are read back from every server (after a sync).
    let writer = ensemble.connect(0).await.expect("connect server.1");
    let options = CreateMode::Persistent.with_acls(Acls::anyone_all());
    for k in 0..5 {
        writer
            .create(
                &format!("/key{k}"),
                format!("value{k}").as_bytes(),
                &options,
            )
            .await
            .expect("create");
    }
    for server in 0..3 {
        let reader = ensemble.connect(server).await.expect("connect");
        reader.sync("/").await.expect("sync");
        for k in 0..5 {
            let (data, _) = reader
                .get_data(&format!("/key{k}"))
                .await
                .expect("get_data");
            assert_eq!(
                data,
                format!("value{k}").into_bytes(),
                "server.{} key{k}",
                server + 1
            );
        }
    }

    let result = bench_zookeeper(&ensemble, &short_load(4))
        .await
        .expect("bench runs");
    assert!(result.ok > 0, "some creates were acknowledged");
    assert_eq!(
        result.acked.len() as u64,
        result.ok,
        "every acknowledged write is recorded"
    );
    let (checked, lost) = ensemble
        .verify(result.acked.iter())
        .await
        .expect("read back");
    assert_eq!(checked, result.acked.len());
    assert_eq!(lost, 0, "no acknowledged create lost");

    let ports: Vec<u16> = ensemble
        .client_addrs()
        .iter()
        .map(SocketAddr::port)
        .collect();
    ensemble.stop().expect("clean stop");
    assert!(ensemble.pids().is_empty(), "every server reaped");
    for port in ports {
        assert!(!listening(port), "port {port} closed after stop");
    }
}

#[tokio::test]
async fn run_comparison_skips_systems_that_are_not_installed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut opts = CompareOptions::new(dir.path().to_path_buf());
    opts.etcd_binary = Some(PathBuf::from("/nonexistent/etcd"));
    opts.java_binary = Some(PathBuf::from("/nonexistent/java"));
    let report = run_comparison(opts)
        .await
        .expect("missing systems do not fail the run");
    assert!(report.rows.is_empty());
    let systems: Vec<System> = report.skipped.iter().map(|s| s.system).collect();
    assert_eq!(systems, vec![System::Etcd, System::ZooKeeper]);
    assert!(
        report.skipped[0]
            .reason
            .contains("apt-get install etcd-server"),
        "{}",
        report.skipped[0].reason
    );
    assert!(
        report.skipped[1]
            .reason
            .contains("apt-get install zookeeper"),
        "{}",
        report.skipped[1].reason
    );
}

#[tokio::test]
async fn a_cluster_refuses_a_directory_holding_old_data() {
    let install = match EtcdInstall::locate(None) {
        Ok(install) => install,
        Err(e) => {
            println!("skipping: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("old"), b"data").expect("write");
    let err = EtcdCluster::start_with(&install, dir.path(), 3, 1)
        .await
        .expect_err("refused");
    assert!(matches!(err, CompareError::DirNotEmpty { .. }), "{err}");
}
