//! A command-line client of the reference key-value store.
//!
//! ```text
//! paxos-client --cluster 127.0.0.1:8001,127.0.0.1:8002 --certs certs --name alice put k v
//! paxos-client --cluster 127.0.0.1:8001 --ca ca.pem --cert alice.pem --key alice.key.pem get k [--stale]
//! paxos-client --cluster 127.0.0.1:8001 --insecure-plaintext status
//! paxos-client --cluster 127.0.0.1:8001 --certs certs --name ops admin transfer-leader 2
//! paxos-client --cluster 127.0.0.1:8001 --certs certs --name ops admin members
//! paxos-client --cluster 127.0.0.1:8001 --certs certs --name ops admin promote 4
//! ```
//!
//! `admin` commands need a certificate with role `admin`
//! (`paxos-node certs --clients ops:admin`).
//!
//! TLS with a client certificate is the default: `--certs DIR --name NAME`
//! reads `DIR/ca.pem`, `DIR/client-NAME.pem` and `DIR/client-NAME.key.pem`
//! (`paxos-node certs --clients NAME` writes them); `--ca`, `--cert` and
//! `--key` name the files one by one (and override `--certs`).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use paxos_kv::client::{Client, ClientError, GroupOutcome, Session};
use paxos_kv::client_proto::{AdminChange, AdminRequest, NodeAddrs, ReadMode};
use paxos_kv::kv::KvResult;
use paxos_kv::tls::{ClientSecurity, ClientTlsConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "paxos-client",
    about = "Talk to a paxos toolkit key-value cluster"
)]
struct Cli {
    /// Client addresses of the cluster's nodes, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    cluster: Vec<SocketAddr>,
    /// Per-request timeout in milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// Directory holding ca.pem, client-NAME.pem and client-NAME.key.pem.
    #[arg(long, env = "PAXOS_CLIENT_CERTS")]
    certs: Option<PathBuf>,
    /// This client's name in --certs (its certificate names its principal).
    #[arg(long, env = "PAXOS_CLIENT_NAME")]
    name: Option<String>,
    /// Cluster CA certificate (overrides --certs).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// This client's certificate (overrides --certs/--name).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This client's private key (overrides --certs/--name).
    #[arg(long)]
    key: Option<PathBuf>,
    /// INSECURE: plain TCP without TLS or a certificate, for nodes run with
    /// --insecure-plaintext-clients.
    #[arg(long, conflicts_with_all = ["certs", "name", "ca", "cert", "key"])]
    insecure_plaintext: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Read a key (linearizable unless --stale).
    Get {
        /// The key.
        key: String,
        /// Serve from the contacted node's state, possibly stale.
        #[arg(long)]
        stale: bool,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Compare-and-set: set KEY to NEW if it holds EXPECTED (without --expected: if absent).
    Cas {
        /// The key.
        key: String,
        /// The new value.
        new: String,
        /// The value the key must hold.
        #[arg(long)]
        expected: Option<String>,
    },
    /// Every node's view: role, leader, epoch, commit point, peers. Of a
    /// cluster of many groups: each node's summary (groups hosted, led,
    /// following, looking, lagging), or one group's view with --group.
    Status {
        /// The group to show (a cluster started with --groups).
        #[arg(long)]
        group: Option<u32>,
    },
    /// Cluster administration (needs role admin).
    Admin {
        /// The group to administer, in a cluster started with --groups.
        #[arg(long, default_value_t = 0, conflicts_with = "all_groups")]
        group: u32,
        /// Make the change in every group (a node joins or leaves a cluster
        /// of many groups in each of them). Groups that cannot yet are asked
        /// again; a group already as asked counts as done, so running the
        /// command again finishes what a failed run left. Prints a summary;
        /// exit status 1 if any group failed.
        #[arg(long)]
        all_groups: bool,
        /// With --all-groups: how many groups are changed at once.
        #[arg(long, default_value_t = 16, requires = "all_groups")]
        parallel: usize,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Hand the leadership to voter ID: the leader stops proposing, brings
    /// ID up to date and steps down; ID stands for election as the nominee.
    TransferLeader {
        /// The node id of the voter to lead.
        id: u64,
    },
    /// The configuration and each member's role (and, from the leader,
    /// its progress).
    Members,
    /// Add node ID as a voter: it is added as an observer, and promoted
    /// once it has caught up (see add-observer and promote).
    AddVoter {
        /// The node id.
        id: u64,
        /// Where it is reached, unless it is in the nodes' --members.
        #[arg(long, value_name = "PEER_ADDR/CLIENT_ADDR")]
        addrs: Option<NodeAddrs>,
        /// Seconds to wait for it to catch up.
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
    },
    /// Add node ID as an observer: it catches up without voting (start it
    /// with `paxos-node run --join`). Every member learns its addresses.
    AddObserver {
        /// The node id.
        id: u64,
        /// Where it is reached, unless it is in the nodes' --members.
        #[arg(long, value_name = "PEER_ADDR/CLIENT_ADDR")]
        addrs: Option<NodeAddrs>,
    },
    /// Make observer ID a voter, once it is at most 10 000 entries behind
    /// the leader (waits for that).
    Promote {
        /// The node id.
        id: u64,
        /// Seconds to wait for it to catch up.
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
    },
    /// Make voter ID an observer.
    Demote {
        /// The node id.
        id: u64,
    },
    /// Remove node ID from the membership (transfer the leadership first
    /// if it leads).
    Remove {
        /// The node id.
        id: u64,
    },
    /// Split group --group G at run time: a new group (its id allocated by
    /// group 0), hosted by G's members, takes the upper half of G's key
    /// range over through its own log. Waits until the new group owns its
    /// range, and prints the new group's id.
    Split {
        /// Seconds to wait for the keys to move (0: do not wait).
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
    },
    /// Remove group --group G at run time by merging it into a group that
    /// owns the range next to G's and has the same members: G freezes its
    /// keys, the other group takes them over through its own log, and
    /// every member drops G. Group 0 is never removed.
    Merge {
        /// The group that takes G's range over (default: the neighbour
        /// below G's range, else the one above).
        #[arg(long)]
        into: Option<u32>,
        /// Seconds to wait for the keys to move (0: do not wait).
        #[arg(long, default_value_t = 600)]
        wait_secs: u64,
    },
}

/// The exit status when a write's outcome is unknown (it may or may not
/// have been applied), distinct from a plain failure (1).
const EXIT_OUTCOME_UNKNOWN: i32 = 3;

/// A write's result, or: "outcome unknown" and exit status 3, so that a
/// script can tell "may have been applied" from "was not applied".
fn written(r: Result<KvResult, ClientError>) -> Result<KvResult> {
    match r {
        Err(e) if e.is_outcome_unknown() => {
            eprintln!("outcome unknown: the write may or may not have been applied ({e})");
            std::process::exit(EXIT_OUTCOME_UNKNOWN);
        }
        r => Ok(r?),
    }
}

fn show(v: Option<Bytes>) -> String {
    match v {
        Some(v) => String::from_utf8_lossy(&v).into_owned(),
        None => "(absent)".into(),
    }
}

/// The TLS settings the flags name.
fn security(cli: &Cli) -> Result<ClientSecurity> {
    if cli.insecure_plaintext {
        return Ok(ClientSecurity::InsecurePlaintext);
    }
    let from_dir = |file: String| cli.certs.as_ref().map(|d| d.join(file));
    let ca = cli
        .ca
        .clone()
        .or_else(|| from_dir("ca.pem".into()))
        .context(
            "TLS needs the cluster CA: give --certs DIR (or --ca FILE), or --insecure-plaintext",
        )?;
    let name = cli.name.as_deref();
    let cert = cli
        .cert
        .clone()
        .or_else(|| name.and_then(|n| from_dir(format!("client-{n}.pem"))))
        .context("TLS needs a client certificate: give --certs DIR --name NAME (or --cert FILE --key FILE)")?;
    let key = cli
        .key
        .clone()
        .or_else(|| name.and_then(|n| from_dir(format!("client-{n}.key.pem"))))
        .context("TLS needs the client's key: give --certs DIR --name NAME (or --key FILE)")?;
    let tls = ClientTlsConfig::from_files(&ca, &cert, &key)?;
    Ok(ClientSecurity::Tls(tls))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let timeout = Duration::from_millis(cli.timeout_ms);
    let security = security(&cli)?;
    // A fresh cluster-assigned session per invocation (one extra replicated
    // command before a write): its id is unique by construction, and the
    // store deduplicates the write's retries within it.
    let client = Client::with_session(
        cli.cluster.clone(),
        security.clone(),
        Session::assigned(),
        timeout,
    );
    match cli.command {
        Command::Put { key, value } => {
            let r = written(client.put(Bytes::from(key), Bytes::from(value)).await)?;
            match r {
                KvResult::Done(prev) => println!("ok (previous: {})", show(prev)),
                other => bail!("unexpected result {other:?}"),
            }
        }
        Command::Get { key, stale } => {
            let mode = if stale {
                ReadMode::Stale
            } else {
                ReadMode::Linearizable
            };
            println!("{}", show(client.get(Bytes::from(key), mode).await?));
        }
        Command::Delete { key } => {
            let r = written(client.delete(Bytes::from(key)).await)?;
            match r {
                KvResult::Done(prev) => println!("deleted (previous: {})", show(prev)),
                other => bail!("unexpected result {other:?}"),
            }
        }
        Command::Cas { key, new, expected } => {
            match written(
                client
                    .cas(
                        Bytes::from(key),
                        expected.map(Bytes::from),
                        Bytes::from(new),
                    )
                    .await,
            )? {
                KvResult::Cas { swapped: true, .. } => println!("swapped"),
                KvResult::Cas {
                    swapped: false,
                    current,
                } => {
                    println!("not swapped (current: {})", show(current))
                }
                other => bail!("unexpected result {other:?}"),
            }
        }
        Command::Admin {
            all_groups: true,
            parallel,
            command,
            ..
        } => {
            let client = std::sync::Arc::new(client);
            admin_every_group(&client, parallel, command).await?;
        }
        Command::Admin { group, command, .. } => {
            let change = |change, node| AdminRequest::Change {
                change,
                node,
                addrs: None,
            };
            let json = match command {
                AdminCommand::TransferLeader { id } => {
                    client
                        .admin_in(group, AdminRequest::TransferLeader { to: id })
                        .await?
                }
                AdminCommand::Members => client.admin_in(group, AdminRequest::Members).await?,
                AdminCommand::AddVoter {
                    id,
                    addrs,
                    wait_secs,
                } => {
                    let add = AdminRequest::Change {
                        change: AdminChange::AddObserver,
                        node: id,
                        addrs,
                    };
                    let added = client.admin_in(group, add).await?;
                    eprintln!("added {id} as an observer: {added}");
                    promote(&client, group, id, Duration::from_secs(wait_secs)).await?
                }
                AdminCommand::AddObserver { id, addrs } => {
                    client
                        .admin_in(
                            group,
                            AdminRequest::Change {
                                change: AdminChange::AddObserver,
                                node: id,
                                addrs,
                            },
                        )
                        .await?
                }
                AdminCommand::Promote { id, wait_secs } => {
                    promote(&client, group, id, Duration::from_secs(wait_secs)).await?
                }
                AdminCommand::Demote { id } => {
                    client
                        .admin_in(group, change(AdminChange::Demote, id))
                        .await?
                }
                AdminCommand::Remove { id } => {
                    client
                        .admin_in(group, change(AdminChange::Remove, id))
                        .await?
                }
                AdminCommand::Split { wait_secs } => {
                    let wait = (wait_secs > 0).then(|| Duration::from_secs(wait_secs));
                    let (child, split) = client.split_group(group, wait).await?;
                    eprintln!(
                        "group {group} split: group {child} owns the upper half of its range"
                    );
                    split
                }
                AdminCommand::Merge { into, wait_secs } => {
                    let wait = (wait_secs > 0).then(|| Duration::from_secs(wait_secs));
                    let into = client.merge_group(group, into, wait).await?;
                    eprintln!("group {group} merged into group {into}");
                    serde_json::json!({ "removed": group, "into": into }).to_string()
                }
            };
            let v: serde_json::Value =
                serde_json::from_str(&json).context("node sent bad admin JSON")?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Command::Status { group } => {
            for addr in &cli.cluster {
                let status = match group {
                    Some(g) => Client::group_status_of(*addr, &security, timeout, g).await,
                    None => Client::status_of(*addr, &security, timeout).await,
                };
                match status {
                    Ok(s) => {
                        let mut v: serde_json::Value =
                            serde_json::from_str(&s).context("node sent bad status JSON")?;
                        // The routing table is for clients (one entry per group).
                        if let Some(o) = v.as_object_mut() {
                            o.remove("group_leaders");
                        }
                        println!("{addr}: {}", serde_json::to_string_pretty(&v)?);
                    }
                    Err(e) => println!("{addr}: unreachable ({e})"),
                }
            }
        }
    }
    Ok(())
}

/// `paxos-client admin --all-groups`: the change in every group, with
/// progress on stderr and a JSON summary on stdout.
async fn admin_every_group(
    client: &std::sync::Arc<Client>,
    parallel: usize,
    command: AdminCommand,
) -> Result<()> {
    let change = |change, node, addrs| AdminRequest::Change {
        change,
        node,
        addrs,
    };
    // (step name, request, how long a group may keep answering "not yet")
    let steps: Vec<(&str, AdminRequest, Duration)> = match command {
        AdminCommand::AddVoter {
            id,
            addrs,
            wait_secs,
        } => vec![
            (
                "add-observer",
                change(AdminChange::AddObserver, id, addrs),
                Duration::from_secs(60),
            ),
            (
                "promote",
                change(AdminChange::Promote, id, None),
                Duration::from_secs(wait_secs),
            ),
        ],
        AdminCommand::AddObserver { id, addrs } => vec![(
            "add-observer",
            change(AdminChange::AddObserver, id, addrs),
            Duration::from_secs(60),
        )],
        AdminCommand::Promote { id, wait_secs } => vec![(
            "promote",
            change(AdminChange::Promote, id, None),
            Duration::from_secs(wait_secs),
        )],
        AdminCommand::Demote { id } => vec![(
            "demote",
            change(AdminChange::Demote, id, None),
            Duration::from_secs(60),
        )],
        AdminCommand::Remove { id } => vec![(
            "remove",
            change(AdminChange::Remove, id, None),
            Duration::from_secs(60),
        )],
        AdminCommand::Members => vec![("members", AdminRequest::Members, Duration::from_secs(30))],
        AdminCommand::TransferLeader { .. } => {
            bail!("transfer-leader names one group's new leader; use --group")
        }
        AdminCommand::Split { .. } => bail!("split splits one group; use --group"),
        AdminCommand::Merge { .. } => bail!("merge removes one group; use --group"),
    };
    let groups = client.group_ids().await?.len() as u32;
    let mut summary = serde_json::Map::new();
    let mut failed_any = false;
    for (name, req, wait) in steps {
        let started = std::time::Instant::now();
        let counter = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let every = client
            .admin_in_every_group(req, parallel, wait, move |g, outcome| {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if let GroupOutcome::Failed(e) = outcome {
                    eprintln!("{name}: group {g} failed: {e}");
                }
                if n % 100 == 0 || n == groups {
                    eprintln!("{name}: {n} of {groups} groups answered");
                }
            })
            .await?;
        let failed: serde_json::Map<String, serde_json::Value> = every
            .failed
            .iter()
            .map(|(g, e)| (g.to_string(), serde_json::Value::String(e.to_string())))
            .collect();
        let mut step = serde_json::json!({
            "groups": groups,
            "done": every.done.len(),
            "already": every.already.len(),
            "failed": failed,
            "seconds": started.elapsed().as_secs_f64(),
        });
        if matches!(req, AdminRequest::Members) {
            // The distinct memberships, with how many groups have each
            // (a few at most: a linear search is enough).
            let mut distinct: Vec<(serde_json::Value, Vec<u32>)> = Vec::new();
            for (g, json) in &every.done {
                let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
                let m = serde_json::json!({"voters": v["voters"], "observers": v["observers"]});
                match distinct.iter_mut().find(|(known, _)| *known == m) {
                    Some((_, gs)) => gs.push(*g),
                    None => distinct.push((m, vec![*g])),
                }
            }
            step["memberships"] = distinct
                .into_iter()
                .map(|(m, gs)| serde_json::json!({ "membership": m, "groups": gs.len(), "first_groups": &gs[..gs.len().min(10)] }))
                .collect();
        }
        summary.insert(name.to_string(), step);
        if !every.failed.is_empty() {
            failed_any = true;
            // A later step (promote after add-observer) needs this one.
            break;
        }
    }
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if failed_any {
        bail!("some groups failed; run the same command again to retry them");
    }
    Ok(())
}

/// Promotes observer `id`, asking again while the cluster answers that it
/// has not caught up yet (or that a change is in flight), for up to `wait`.
async fn promote(client: &Client, group: u32, id: u64, wait: Duration) -> Result<String> {
    let started = std::time::Instant::now();
    let req = AdminRequest::Change {
        change: AdminChange::Promote,
        node: id,
        addrs: None,
    };
    loop {
        match client.admin_in(group, req).await {
            Err(ClientError::Node(msg)) if msg.starts_with("retry:") => {
                if started.elapsed() >= wait {
                    bail!("gave up after {wait:?}: {msg}");
                }
                eprintln!("{msg}; asking again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            other => return Ok(other?),
        }
    }
}
