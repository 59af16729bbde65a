//! The node against a faulty disk (issue 13): bytes flipped inside the
//! synced part of a follower's log, and a full disk.

use bytes::Bytes;
use paxos_kv::client::Client;
use paxos_kv::client_proto::ReadMode;
use paxos_testkit::cluster::{ClusterSpec, LocalCluster};
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn key(i: usize) -> Bytes {
    Bytes::from(format!("k{i:05}"))
}

fn value(i: usize) -> Bytes {
    Bytes::from(format!("value {i} {}", "v".repeat(64)))
}

/// Writes keys `range` through `client`, each until acknowledged (a retry
/// after an unknown outcome writes the same value again), within 30 s each.
async fn write_keys(client: &Client, range: std::ops::Range<usize>) {
    for i in range {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.put(key(i), value(i)).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, i, "write retried");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("write {i} never acknowledged: {e}"),
            }
        }
    }
}

/// A linearizable read of `k`, retried until the cluster answers (30 s).
async fn read_linearizable(client: &Client, k: Bytes) -> Option<Bytes> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get(k.clone(), ReadMode::Linearizable).await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "read retried");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no linearizable read of {k:?}: {e}"),
        }
    }
}

/// The segment files of node `id`'s log, in order.
fn segments(cluster: &LocalCluster, id: u64) -> Vec<PathBuf> {
    let dir = cluster
        .data_dir(id)
        .join(paxos_kv::identity::WAL_DIR)
        .join(paxos_wal::LOG_DIR);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("log directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// Offsets of the records in the valid prefix of a segment file.
fn record_offsets(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).expect("segment readable");
    let name = path.file_stem().and_then(|s| s.to_str()).expect("name");
    let id = u64::from_str_radix(name, 16).expect("hex segment id");
    let scan = paxos_wal::scan_segment(&bytes, id, None);
    let mut out = Vec::new();
    let mut off = paxos_wal::format::SEGMENT_HEADER_BYTES;
    while off < scan.end_offset {
        // The top bit of the length field tags a record (a membership
        // change); the length is the rest.
        let field = u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes"));
        let len = (field & paxos_wal::format::RECORD_LEN_MASK) as usize;
        assert!(len >= paxos_wal::format::RECORD_HEADER_BYTES, "a record");
        out.push(off as u64);
        off += len.next_multiple_of(paxos_wal::format::RECORD_ALIGN_BYTES);
    }
    out
}

/// Every running node's status once all of them have applied the same
/// entries and hold the same state (digest), or `None` after `within`.
async fn settled(
    cluster: &LocalCluster,
    within: Duration,
) -> Option<BTreeMap<u64, serde_json::Value>> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let st = cluster.statuses().await;
        let first = st.values().next();
        let same = st.len() == cluster.ids().len()
            && first.is_some_and(|f| {
                st.values()
                    .all(|v| v["applied"] == f["applied"] && v["digest"] == f["digest"])
            });
        if same {
            return Some(st);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_bytes_flipped_in_its_synced_log_recovers_without_losing_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    let security = cluster.client_security();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader is elected");
    let follower = cluster
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("a follower");
    let client = Client::new(
        cluster.client_addrs(),
        security.clone(),
        1,
        Duration::from_secs(5),
    );
    const FIRST: usize = 300;
    const MORE: usize = 100;
    write_keys(&client, 0..FIRST).await;
    // The follower holds (and synced) everything before it is killed.
    settled(&cluster, Duration::from_secs(30))
        .await
        .expect("every node applies the first writes");
    cluster.kill(follower).expect("kill the follower");

    // Flip bytes in a record in the middle of its log's data: not the tail.
    let segs = segments(&cluster, follower);
    let seg = segs.first().expect("a segment").clone();
    let offsets = record_offsets(&seg);
    assert!(
        offsets.len() > 100,
        "the segment holds the writes: {}",
        offsets.len()
    );
    let victim = offsets[offsets.len() / 2];
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&seg)
        .expect("open segment");
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, victim + 24).expect("read");
    for x in &mut b {
        *x ^= 0xA5;
    }
    f.write_all_at(&b, victim + 24).expect("flip");
    f.sync_all().expect("sync");
    drop(f);

    cluster.start_node(follower).expect("restart the follower");
    // It comes up as a recovering replica (it lost entries it acknowledged):
    // it must not count, let alone lead, until a leader readmits it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_recovering = false;
    while Instant::now() < deadline && !saw_recovering {
        assert!(
            cluster.is_running(follower),
            "the damaged follower exited; its log:\n{}",
            std::fs::read_to_string(cluster.log_path(follower)).unwrap_or_default()
        );
        if let Some(v) = cluster.statuses().await.get(&follower) {
            assert_ne!(v["role"], "leader", "the damaged follower leads: {v}");
            saw_recovering |= v["recovering"] == true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(cluster.log_path(follower)).expect("node log");
    // A leader may readmit it between two status polls; its log records
    // that it started as a recovering replica either way.
    let restarted = log.rfind("a damaged log").map_or("", |at| &log[at..]);
    assert!(
        saw_recovering || restarted.contains("recovering until an established leader readmits"),
        "the damaged follower started as a recovering replica; its log:\n{log}"
    );
    let name = seg.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(
        log.lines().any(|l| l.contains("damaged")
            && l.contains(name)
            && l.contains(&format!("offset={victim}"))),
        "the node logs the damaged file and offset"
    );

    // The cluster keeps taking writes; the follower catches up.
    write_keys(&client, FIRST..FIRST + MORE).await;
    let st = settled(&cluster, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the nodes never agree; see the logs under {}",
                cluster.base_dir().display()
            )
        });
    assert!(cluster.is_running(follower));
    for v in st.values() {
        eprintln!(
            "node {}: applied {} recovering {} role {}",
            v["id"], v["applied"], v["recovering"], v["role"]
        );
    }
    // Every acknowledged write is readable from every node, the damaged one
    // included (its own state, not a redirect), and through the cluster.
    for &id in &cluster.ids() {
        let local = Client::new(
            vec![cluster.members()[&id].client],
            security.clone(),
            10 + id,
            Duration::from_secs(5),
        );
        for i in 0..FIRST + MORE {
            let got = local
                .get(key(i), ReadMode::Stale)
                .await
                .expect("stale read");
            assert_eq!(got, Some(value(i)), "node {id} key {i}");
        }
    }
    for i in (0..FIRST + MORE).step_by(37) {
        let got = read_linearizable(&client, key(i)).await;
        assert_eq!(got, Some(value(i)), "linearizable read of key {i}");
    }
}

/// A tmpfs mounted for a test, unmounted (lazily, so even with files open)
/// when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `dir`; `None` (with a message) when
    /// this machine does not let the test mount one.
    fn mount(dir: &Path, mib: u64) -> Option<Tmpfs> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs on {} ({}); the disk-full test needs root",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount ({e}); the disk-full test needs it");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Stops node `f`, moves its data directory onto a tmpfs of `mib` MiB and
/// starts it again there; returns the mount (unmounted when dropped), the
/// data directory and the node's new pid, or `None` (the node left
/// stopped) when this machine does not let the test mount a tmpfs.
fn restart_on_tmpfs(
    cluster: &mut LocalCluster,
    scratch: &Path,
    f: u64,
    mib: u64,
) -> Option<(Tmpfs, PathBuf, u32)> {
    cluster.kill(f).expect("stop the node");
    let data = cluster.data_dir(f);
    let aside = scratch.join("aside");
    copy_tree(&data, &aside);
    std::fs::remove_dir_all(&data).expect("empty");
    std::fs::create_dir_all(&data).expect("mount point");
    let tmpfs = Tmpfs::mount(&data, mib)?;
    copy_tree(&aside, &data);
    cluster.start_node(f).expect("restart on the tmpfs");
    let pid = cluster.pid(f).expect("runs");
    Some((tmpfs, data, pid))
}

/// Copies the files of `from` into `to`, recursively.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// Fills the file system of `path`'s directory with one file until it
/// refuses more; returns the bytes written.
fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("filler");
    let chunk = vec![0x5Au8; 64 << 10];
    let mut n = 0u64;
    // Bounded by the tmpfs's size.
    while f.write_all(&chunk).is_ok() {
        n += chunk.len() as u64;
    }
    let _ = f.sync_all();
    n
}

fn big_value(i: usize) -> Bytes {
    Bytes::from(format!("{i:08}").repeat(1024))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_fills_up_stalls_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    spec.segment_mib = 1;
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    let security = cluster.client_security();
    let leader = cluster
        .wait_for_leader(Duration::from_secs(30))
        .await
        .expect("a leader is elected");
    let f = cluster
        .ids()
        .into_iter()
        .find(|&i| i != leader)
        .expect("a follower");
    // The follower's data directory moves onto a small tmpfs.
    let Some((_tmpfs, data, pid)) = restart_on_tmpfs(&mut cluster, dir.path(), f, 8) else {
        return;
    };
    let client = Client::new(
        cluster.client_addrs(),
        security.clone(),
        1,
        Duration::from_secs(5),
    );
    // Let the node prepare its spare segment, then take every free byte.
    write_keys(&client, 0..10).await;
    settled(&cluster, Duration::from_secs(30))
        .await
        .expect("the follower catches up on the tmpfs");
    let filler = data.join("filler");
    let filled = fill(&filler);
    eprintln!("filler: {filled} bytes");

    // Writes go on (the other two nodes are a quorum) until the follower's
    // disk refuses a new segment; it stalls instead of exiting.
    let mut acked: Vec<usize> = Vec::new();
    let mut stalled = false;
    let mut i = 10;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stalled && Instant::now() < deadline && i < 2000 {
        client
            .put(key(i), big_value(i))
            .await
            .unwrap_or_else(|e| panic!("write {i} with a quorum up: {e}"));
        acked.push(i);
        i += 1;
        if i % 20 == 0 {
            stalled = cluster
                .statuses()
                .await
                .get(&f)
                .is_some_and(|v| v["storage_stalled"] == true);
        }
    }
    assert!(
        cluster.is_running(f),
        "the follower exited on a full disk; its log:\n{}",
        std::fs::read_to_string(cluster.log_path(f)).unwrap_or_default()
    );
    assert!(stalled, "the follower's disk never filled ({i} writes)");
    // Still stalled while the disk is full, and the cluster still writes.
    for j in i..i + 20 {
        client
            .put(key(j), big_value(j))
            .await
            .unwrap_or_else(|e| panic!("write {j} with a quorum up: {e}"));
        acked.push(j);
    }
    let st = cluster.statuses().await;
    assert_eq!(st[&f]["storage_stalled"], true, "{}", st[&f]);
    let i = i + 20;

    // Space returns: the node catches up without a restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = cluster.statuses().await;
        if st.get(&f).is_some_and(|v| v["storage_stalled"] == false) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower never resumed: {:?}",
            st.get(&f)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for j in i..i + 20 {
        client
            .put(key(j), big_value(j))
            .await
            .unwrap_or_else(|e| panic!("write {j}: {e}"));
        acked.push(j);
    }
    let st = settled(&cluster, Duration::from_secs(60))
        .await
        .expect("the follower catches up once space returns");
    assert_eq!(cluster.pid(f), Some(pid), "no restart");
    assert_eq!(st[&f]["pid"], pid, "the same process answers");
    assert!(st[&f]["storage_stalls"].as_u64().unwrap_or(0) >= 1);
    let local = Client::new(
        vec![cluster.members()[&f].client],
        security.clone(),
        7,
        Duration::from_secs(5),
    );
    for &j in &acked {
        let got = local
            .get(key(j), ReadMode::Stale)
            .await
            .expect("stale read");
        assert_eq!(got, Some(big_value(j)), "key {j} on the follower");
    }
    cluster.stop();
    // Its log is intact: it opens cleanly.
    let (_, report) = paxos_wal::WalStorage::open(
        data.join(paxos_kv::identity::WAL_DIR),
        paxos_wal::WalOptions {
            segment_bytes: 1 << 20,
            ..paxos_wal::WalOptions::default()
        },
    )
    .expect("the follower's log opens");
    assert!(
        report.damaged.is_none() && report.torn_tail.is_none(),
        "{report:?}"
    );
}

/// The disk-full case on a node of many groups, whose groups share one
/// log: the node's disk fills while it follows some
/// groups; those groups stall on it (the node says how many) instead of the
/// node exiting, the cluster keeps writing them, and once space returns the
/// node catches up without a restart, with every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_many_groups_whose_disk_fills_up_stalls_and_recovers_without_a_restart() {
    const GROUPS: u32 = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = ClusterSpec::new(
        3,
        dir.path().to_path_buf(),
        PathBuf::from(env!("CARGO_BIN_EXE_paxos-node")),
    );
    spec.segment_mib = 1;
    spec.extra_node_args = vec!["--groups".into(), GROUPS.to_string()];
    let mut cluster = LocalCluster::start(spec).expect("cluster starts");
    let security = cluster.client_security();
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group has a leader");
    let f = 3;
    let Some((_tmpfs, data, pid)) = restart_on_tmpfs(&mut cluster, dir.path(), f, 8) else {
        return;
    };
    // The groups the node leads now would stall with it: the writes go to
    // the groups it follows (a leader on a full disk is another test's).
    cluster
        .wait_all_groups_led(Duration::from_secs(60))
        .await
        .expect("every group has a leader again");
    let leaders = cluster
        .statuses()
        .await
        .get(&1)
        .map(|v| v["group_leaders"].clone())
        .expect("node 1's summary");
    let followed: Vec<u32> = (0..GROUPS)
        .filter(|&g| leaders[g as usize].as_u64() != Some(f))
        .collect();
    assert!(
        !followed.is_empty(),
        "node {f} leads every group: {leaders}"
    );
    let keys: Vec<usize> = (0..100_000)
        .filter(|&i| followed.contains(&paxos_kv::shard::group_of(&key(i), GROUPS)))
        .take(3000)
        .collect();
    let client = Client::new(
        cluster.client_addrs(),
        security.clone(),
        1,
        Duration::from_secs(5),
    );
    let put = |i: usize| {
        let client = &client;
        async move {
            client
                .put(key(i), big_value(i))
                .await
                .unwrap_or_else(|e| panic!("write {i} with a quorum up: {e}"));
        }
    };
    for &i in &keys[..10] {
        put(i).await;
    }
    // Let the node prepare its spare segment, then take every free byte.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let filler = data.join("filler");
    let filled = fill(&filler);
    eprintln!("filler: {filled} bytes");

    let stalled_groups = |st: &BTreeMap<u64, serde_json::Value>| {
        st.get(&f)
            .and_then(|v| v["storage_stalled"].as_u64())
            .unwrap_or(0)
    };
    let mut acked: Vec<usize> = keys[..10].to_vec();
    let mut stalled = false;
    let mut n = 10;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stalled && Instant::now() < deadline && n < 2000 {
        put(keys[n]).await;
        acked.push(keys[n]);
        n += 1;
        if n % 20 == 0 {
            stalled = stalled_groups(&cluster.statuses().await) > 0;
        }
    }
    assert!(
        cluster.is_running(f),
        "the node exited on a full disk; its log:\n{}",
        std::fs::read_to_string(cluster.log_path(f)).unwrap_or_default()
    );
    assert!(stalled, "the node's disk never filled ({n} writes)");
    for _ in 0..20 {
        put(keys[n]).await;
        acked.push(keys[n]);
        n += 1;
    }
    assert!(stalled_groups(&cluster.statuses().await) > 0);

    // Space returns: the node catches up without a restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = cluster.statuses().await;
        if st.get(&f).is_some_and(|v| v["storage_stalled"] == 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node never resumed: {:?}",
            st.get(&f)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        put(keys[n]).await;
        acked.push(keys[n]);
        n += 1;
    }
    assert_eq!(cluster.pid(f), Some(pid), "no restart");
    let local = Client::new(
        vec![cluster.members()[&f].client],
        security.clone(),
        7,
        Duration::from_secs(5),
    );
    // Every acknowledged write reaches the node (it may still be applying
    // what it missed: asked again until it has, within a bound).
    let deadline = Instant::now() + Duration::from_secs(60);
    for &j in &acked {
        loop {
            let got = local
                .get(key(j), ReadMode::Stale)
                .await
                .expect("stale read");
            if got == Some(big_value(j)) {
                break;
            }
            assert!(Instant::now() < deadline, "key {j} on node {f}: {got:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let st = cluster.statuses().await;
    assert_eq!(st[&f]["pid"], pid, "the same process answers");
    cluster.stop();
    // Its shared log is intact: it opens cleanly.
    let (_, report) = paxos_wal::shared::SharedLog::open(
        data.join(paxos_kv::identity::WAL_DIR)
            .join(paxos_wal::LOG_DIR),
        paxos_wal::WalOptions {
            segment_bytes: 1 << 20,
            ..paxos_wal::WalOptions::default()
        },
    )
    .expect("the node's shared log opens");
    assert!(
        report.wal.damaged.is_none() && report.wal.torn_tail.is_none(),
        "{report:?}"
    );
}
