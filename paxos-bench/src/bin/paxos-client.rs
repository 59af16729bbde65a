//! A command-line client of the reference key-value store.
//!
//! ```text
//! paxos-client --cluster 127.0.0.1:8001,127.0.0.1:8002 put k v
//! paxos-client --cluster 127.0.0.1:8001 get k [--stale]
//! paxos-client --cluster 127.0.0.1:8001 status
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)]

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use paxos_bench::client::{Client, ClientError, Session};
use paxos_bench::client_proto::ReadMode;
use paxos_bench::kv::KvResult;
use std::net::SocketAddr;
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
    /// Every node's view: role, leader, epoch, commit point, peers.
    Status,
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let timeout = Duration::from_millis(cli.timeout_ms);
    // A fresh cluster-assigned session per invocation (one extra replicated
    // command before a write): its id is unique by construction, and the
    // store deduplicates the write's retries within it.
    let client = Client::with_session(cli.cluster.clone(), Session::assigned(), timeout);
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
        Command::Status => {
            for addr in &cli.cluster {
                match Client::status_of(*addr, timeout).await {
                    Ok(s) => {
                        let v: serde_json::Value =
                            serde_json::from_str(&s).context("node sent bad status JSON")?;
                        println!("{addr}: {}", serde_json::to_string_pretty(&v)?);
                    }
                    Err(e) => println!("{addr}: unreachable ({e})"),
                }
            }
        }
    }
    Ok(())
}
