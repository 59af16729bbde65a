//! Runs one node of the reference replicated key-value store, or writes the
//! certificates of a cluster.
//!
//! ```text
//! paxos-node certs --dir certs --nodes 1,2,3 --clients admin,dashboard:ro
//! paxos-node certs --dir certs --clients carol      # later: same CA, one more client
//! paxos-node run --id 1 --members 1=127.0.0.1:7001/127.0.0.1:8001,2=...,3=... \
//!     --data-dir data/1 --certs certs
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use paxos_kv::node::{parse_members, run_node, NodeOptions, EXIT_ADDR_IN_USE};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "paxos-node",
    about = "A node of the paxos toolkit's replicated key-value store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the larger variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run a node until SIGINT or SIGTERM.
    Run {
        /// This node's id (must appear in --members).
        #[arg(long)]
        id: u64,
        /// Every member: ID=PEER_ADDR/CLIENT_ADDR, comma separated (this node too).
        #[arg(long)]
        members: String,
        /// Members (ids from --members) that start as observers rather than
        /// voters; `paxos-client admin promote ID` makes one a voter. A
        /// membership change in the log overrides this at restart.
        #[arg(long, value_delimiter = ',')]
        observers: Vec<u64>,
        /// Directory for the WAL, hard state and snapshots.
        #[arg(long)]
        data_dir: PathBuf,
        /// Directory holding ca.pem, node-ID.pem and node-ID.key.pem (ID: this node's id).
        #[arg(long)]
        certs: Option<PathBuf>,
        /// Cluster CA certificate (overrides --certs).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// This node's certificate (overrides --certs).
        #[arg(long)]
        cert: Option<PathBuf>,
        /// This node's private key (overrides --certs).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Leader heartbeat interval in milliseconds.
        #[arg(long, default_value_t = 50)]
        heartbeat_ms: u64,
        /// Follower timeout before a new election, in milliseconds.
        #[arg(long, default_value_t = 300)]
        election_timeout_ms: u64,
        /// WAL segment size in MiB.
        #[arg(long, default_value_t = 64)]
        segment_mib: u64,
        /// Applied entries between local snapshots (0: never).
        #[arg(long, default_value_t = 1_000_000)]
        snapshot_every: u64,
        /// Paxos groups this node hosts; keys are spread over them by hash.
        /// Every node of the cluster must use the same value, and it is
        /// fixed once the data directory holds data.
        #[arg(long, default_value_t = 1)]
        groups: u32,
        /// Milliseconds a group stays idle before it quiesces (no
        /// heartbeats, no election timer until a write, a read or a lost
        /// node wakes it); 0: never. Default: twice the election timeout
        /// with more than one group, never with one.
        #[arg(long)]
        quiesce_ms: Option<u64>,
        /// Spread group leaders evenly over the nodes (with --groups > 1),
        /// and again after a failure heals. Experimental, off by default.
        #[arg(long)]
        balance_leaders: bool,
        /// With --groups > 1: groups at most electing on this node's
        /// timers at once (the others answer peers but hold their own
        /// timers until a slot frees); 0: no limit.
        #[arg(long, default_value_t = 256)]
        max_elections: usize,
        /// Log entries kept below the cleanup point after a snapshot, so
        /// that a briefly lagging follower still catches up by DIFF rather
        /// than by a whole snapshot.
        #[arg(long, default_value_t = paxos_kv::node::default_retention_entries())]
        retention_entries: u64,
        /// Tune the transport for nodes on one machine.
        #[arg(long)]
        loopback: bool,
        /// Client sessions the store keeps; opening one more evicts the
        /// least recently used. Must be the same on every node of a cluster
        /// (a snapshot taken with another value is refused).
        #[arg(long, default_value_t = paxos_kv::kv::DEFAULT_MAX_SESSIONS)]
        max_sessions: usize,
        /// MiB the session table holds at most (remembered results,
        /// principals, a fixed cost per session); over it the least
        /// recently used sessions are evicted. Must be the same on every
        /// node of a cluster. At least 4.
        #[arg(long, default_value_t = paxos_kv::kv::DEFAULT_MAX_SESSION_BYTES >> 20)]
        max_session_mib: usize,
        /// Apply this committed entry (zxid, as `0x...` hex or decimal) as a
        /// no-op: the way past an entry the state machine panicked on (the
        /// node then names it and refuses to start). Give every node the
        /// same list. Repeatable.
        #[arg(long = "skip-entry", value_parser = parse_zxid_arg)]
        skip_entries: Vec<paxos_core::Zxid>,
        /// This is the first start of a new cluster: the empty data directory
        /// becomes a member's. Refused on a directory that has state; without
        /// it (or --rejoin) an empty data directory is refused.
        #[arg(long, conflicts_with = "rejoin")]
        bootstrap: bool,
        /// This node is a member of a running cluster that lost its data
        /// directory: it starts empty as a recovering replica, catches up
        /// from an established leader, and neither votes nor counts towards
        /// any quorum until then.
        #[arg(long, conflicts_with = "join")]
        rejoin: bool,
        /// This node is a new machine joining a running cluster: add it
        /// first with `paxos-client admin add-observer ID --addrs
        /// PEER/CLIENT`. It starts as an observer (it never votes or stands
        /// for election until promoted) and learns the membership and every
        /// member's addresses from the leader. --members must give the
        /// addresses of at least the current voters and of this node. Keep
        /// the flag on restarts.
        #[arg(long, conflicts_with = "bootstrap")]
        join: bool,
        /// The cluster's id, recorded at the first start and checked at every
        /// start (default: derived from the cluster CA certificate).
        #[arg(long)]
        cluster_id: Option<String>,
        /// Client connections served at once; one more gets an error frame
        /// ("busy: too many client connections") and is closed.
        #[arg(long, default_value_t = paxos_kv::node::DEFAULT_MAX_CLIENT_CONNECTIONS)]
        max_client_connections: usize,
        /// Close a client connection that sends no request for this many
        /// milliseconds (0: never).
        #[arg(long, default_value_t = 60_000)]
        client_idle_timeout_ms: u64,
        /// Tokio worker threads; 0 runs the node on one thread (the event
        /// loop, the transport and the client connections share it; the WAL
        /// sync and snapshot work have threads of their own either way).
        /// Default: 0 with `--loopback` (several nodes share the machine's
        /// cores, and one thread saves the cross-thread wake-ups on every
        /// message: 1 client measured about 2 000 writes/s against 1 700
        /// with 2 workers), else 2.
        #[arg(long, env = "PAXOS_NODE_THREADS")]
        threads: Option<usize>,
        /// A follower syncs batches of at most this many entry bytes on its
        /// event loop rather than on the sync thread (0: never).
        #[arg(long, default_value_t = paxos_kv::node::DEFAULT_INLINE_SYNC_BYTES)]
        inline_sync_bytes: usize,
        /// INSECURE: serve clients over plain TCP without TLS or
        /// authentication (every connection may read and write every key).
        /// Only for tests and benchmarks on a trusted network.
        #[arg(long)]
        insecure_plaintext_clients: bool,
        /// Close a client connection whose TLS handshake has not completed
        /// within this many milliseconds.
        #[arg(long, default_value_t = 10_000)]
        client_handshake_timeout_ms: u64,
        /// Serve linearizable reads on the leader from its lease (no quorum
        /// round per read). Safe only while every node's clock runs at real
        /// speed within --lease-clock-drift-ms per election timeout: a
        /// leader whose clock stalls or runs slow (a paused virtual machine
        /// whose monotonic clock stopped, say) can serve a stale read. Give
        /// every node the same setting.
        #[arg(long)]
        lease_reads: bool,
        /// The clock drift lease reads allow for, in milliseconds: a lease
        /// lasts the election timeout minus this after a quorum's
        /// acknowledgement. Must be below --election-timeout-ms.
        #[arg(long, default_value_t = 50)]
        lease_clock_drift_ms: u64,
        /// Test hook (chaos suite): read this file every 50 ms for
        /// `sync_delay_ms=N` and `clock_offset_ms=N` lines.
        #[arg(long, hide = true)]
        fault_file: Option<PathBuf>,
        /// Serve Prometheus metrics (OpenMetrics text) at
        /// http://ADDR/metrics, e.g. 127.0.0.1:9100. Off by default. The
        /// listener has no authentication: bind it where only the
        /// monitoring system reaches it.
        #[arg(long, value_name = "IP:PORT")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Write node and client certificates as PEM files, signed by the
    /// directory's CA (ca.pem and ca.key.pem, created on the first run and
    /// reused after, so that nodes and clients can be added later).
    Certs {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// Node ids, comma separated.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<u64>,
        /// Clients, comma separated: NAME (read-write) or NAME:ro
        /// (read-only; NAME:rw is read-write; NAME:admin may also run
        /// `paxos-client admin`). Writes client-NAME.pem and
        /// client-NAME.key.pem.
        #[arg(long, value_delimiter = ',')]
        clients: Vec<String>,
    },
}

fn parse_zxid_arg(s: &str) -> std::result::Result<paxos_core::Zxid, String> {
    paxos_kv::node::parse_zxid(s).ok_or_else(|| format!("{s:?} is not a zxid (0x... or decimal)"))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // A node of many groups logs its kernels' per-group events (elections,
    // epochs, sync modes) at debug unless RUST_LOG asks for them: thousands
    // of groups electing would write hundreds of thousands of lines. The
    // node logs counts of groups led, followed and looking instead.
    let default_filter = match &cli.command {
        Command::Run { groups, .. } if *groups > 1 => "info,paxos_core=warn,paxos_election=warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Certs {
            dir,
            nodes,
            clients,
        } => {
            use paxos_net_quic::certs::ClientRole;
            let ids: Vec<_> = nodes.into_iter().map(paxos_net_quic::PeerId).collect();
            let clients = clients
                .iter()
                .map(|spec| {
                    let (name, role) = match spec.split_once(':') {
                        Some((name, role)) => (
                            name,
                            ClientRole::parse(role).with_context(|| {
                                format!("client {spec:?}: role must be rw, ro or admin")
                            })?,
                        ),
                        None => (spec.as_str(), ClientRole::ReadWrite),
                    };
                    Ok((name.to_string(), role))
                })
                .collect::<Result<Vec<_>>>()?;
            if ids.is_empty() && clients.is_empty() {
                anyhow::bail!("nothing to write: give --nodes and/or --clients");
            }
            let (_, files) = paxos_net_quic::certs::write_certs(&dir, &ids, &clients)
                .with_context(|| format!("writing certificates into {}", dir.display()))?;
            println!(
                "CA: {} ({}); its key {} stays here, never on a node",
                files.ca_cert.display(),
                if files.ca_created {
                    "new"
                } else {
                    "existing, reused"
                },
                files.ca_key.display()
            );
            for (id, cert, key) in files.nodes {
                println!("node {}: {} {}", id.0, cert.display(), key.display());
            }
            for (name, role, cert, key) in files.clients {
                println!(
                    "client {name} ({role}): {} {}",
                    cert.display(),
                    key.display()
                );
            }
            Ok(())
        }
        Command::Run {
            id,
            members,
            data_dir,
            certs,
            ca,
            cert,
            key,
            heartbeat_ms,
            election_timeout_ms,
            segment_mib,
            snapshot_every,
            groups,
            quiesce_ms,
            balance_leaders,
            max_elections,
            retention_entries,
            loopback,
            max_sessions,
            max_session_mib,
            skip_entries,
            bootstrap,
            rejoin,
            join,
            cluster_id,
            max_client_connections,
            client_idle_timeout_ms,
            threads,
            inline_sync_bytes,
            insecure_plaintext_clients,
            client_handshake_timeout_ms,
            lease_reads,
            lease_clock_drift_ms,
            fault_file,
            metrics_addr,
            observers,
        } => {
            let members = parse_members(&members)?;
            if let Some(o) = observers.iter().find(|o| !members.contains_key(o)) {
                anyhow::bail!("--observers names node {o}, which is not in --members");
            }
            if members.keys().all(|m| observers.contains(m)) {
                anyhow::bail!("--observers names every member: at least one must vote");
            }
            let certs = certs.unwrap_or_else(|| PathBuf::from("."));
            let mut opts = NodeOptions::new(id, members, data_dir, certs);
            opts.observers = observers;
            if let Some(ca) = ca {
                opts.ca_cert = ca;
            }
            if let Some(cert) = cert {
                opts.cert = cert;
            }
            if let Some(key) = key {
                opts.key = key;
            }
            opts.heartbeat = Duration::from_millis(heartbeat_ms);
            opts.election_timeout = Duration::from_millis(election_timeout_ms);
            opts.segment_bytes = segment_mib << 20;
            opts.snapshot_every = snapshot_every;
            opts.groups = groups;
            opts.quiesce_after = quiesce_ms.map(Duration::from_millis);
            opts.balance_leaders = balance_leaders;
            opts.max_elections = max_elections;
            opts.retention_entries = retention_entries;
            opts.loopback = loopback;
            opts.inline_sync_bytes = inline_sync_bytes;
            opts.insecure_plaintext_clients = insecure_plaintext_clients;
            opts.client_handshake_timeout =
                Duration::from_millis(client_handshake_timeout_ms.max(1));
            opts.lease_reads = lease_reads;
            opts.lease_clock_drift = Duration::from_millis(lease_clock_drift_ms);
            if lease_reads && lease_clock_drift_ms >= election_timeout_ms {
                anyhow::bail!(
                    "--lease-clock-drift-ms ({lease_clock_drift_ms}) must be below \
                     --election-timeout-ms ({election_timeout_ms})"
                );
            }
            opts.fault_file = fault_file;
            opts.metrics_addr = metrics_addr;
            opts.max_sessions = max_sessions;
            opts.max_session_bytes = max_session_mib.saturating_mul(1 << 20);
            opts.skip_entries = skip_entries;
            opts.cluster_id = cluster_id;
            opts.empty_start = match (bootstrap, rejoin, join) {
                (true, _, _) => paxos_kv::identity::EmptyStart::Bootstrap,
                (_, true, _) => paxos_kv::identity::EmptyStart::Rejoin,
                (_, _, true) => paxos_kv::identity::EmptyStart::Join,
                _ => paxos_kv::identity::EmptyStart::Refuse,
            };
            if join && !opts.observers.contains(&id) {
                // Until the leader's membership arrives, this node counts
                // itself an observer: it never votes on a guess.
                opts.observers.push(id);
            }
            opts.max_client_connections = max_client_connections;
            opts.client_idle_timeout =
                (client_idle_timeout_ms > 0).then(|| Duration::from_millis(client_idle_timeout_ms));
            let threads = threads.unwrap_or(if loopback { 0 } else { 2 });
            let rt = if threads == 0 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    .enable_all()
                    .build()
            }
            .context("starting the tokio runtime")?;
            let result = rt.block_on(run_node(opts, shutdown_signal()));
            if let Err(e) = &result {
                // A distinct exit status for a port taken by another process,
                // so that a launcher (`LocalCluster`) can retry elsewhere.
                let in_use = e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
                });
                if in_use {
                    eprintln!("Error: {e:#}");
                    std::process::exit(EXIT_ADDR_IN_USE);
                }
            }
            result
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
