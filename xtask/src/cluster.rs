//! `cargo xtask cluster`: a 3-node cluster on loopback, for a person to try
//! at once. Certificates and data live in a fresh temporary directory; the
//! nodes stop when this command is interrupted (Ctrl-C reaches the whole
//! process group) or when Enter is pressed. Client ports speak TLS: the
//! certificate directory holds client certificates for `admin` (role
//! `admin`: reads, writes and `paxos-client admin ...`) and `viewer`
//! (read-only), and the printed commands use them.

use anyhow::{bail, Context, Result};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use crate::util::{cargo, target_dir};

/// Starts the cluster and waits.
pub(crate) fn run(nodes: u64, base_port: u16, groups: u32) -> Result<()> {
    cargo(&["build", "--release", "-p", "paxos-kv", "--bins"], &[])?;
    let bin_dir = target_dir().join("release");
    let node = bin_dir.join("paxos-node");
    let client = bin_dir.join("paxos-client");
    let dir = std::env::temp_dir().join(format!("paxos-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ids: Vec<String> = (1..=nodes).map(|i| i.to_string()).collect();
    let status = Command::new(&node)
        .args(["certs", "--dir"])
        .arg(dir.join("certs"))
        .args(["--nodes", &ids.join(",")])
        .args(["--clients", "admin:admin,viewer:ro"])
        .stdout(Stdio::null())
        .status()
        .context("running paxos-node certs")?;
    if !status.success() {
        bail!("generating certificates failed");
    }
    let members: Vec<String> = (1..=nodes)
        .map(|i| {
            let p = base_port + i as u16;
            format!("{i}=127.0.0.1:{p}/127.0.0.1:{}", p + 1000)
        })
        .collect();
    let members = members.join(",");
    let mut children: Vec<Child> = Vec::new();
    for i in 1..=nodes {
        let log = std::fs::File::create(dir.join(format!("node-{i}.log")))?;
        let child = Command::new(&node)
            .args([
                "run",
                "--id",
                &i.to_string(),
                "--members",
                &members,
                "--loopback",
                "--groups",
                &groups.to_string(),
            ])
            .arg("--data-dir")
            .arg(dir.join(format!("node-{i}")))
            // A new cluster's first start (a restart finds its identity).
            .args(
                (!dir.join(format!("node-{i}")).join("IDENTITY").exists()).then_some("--bootstrap"),
            )
            .arg("--certs")
            .arg(dir.join("certs"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {i}"))?;
        children.push(child);
    }
    let clients: Vec<String> = (1..=nodes)
        .map(|i| format!("127.0.0.1:{}", base_port + i as u16 + 1000))
        .collect();
    let clients = clients.join(",");
    let certs = dir.join("certs");
    let certs = certs.display();
    println!(
        "{nodes} nodes running, {groups} group(s) each; data, certificates and logs in {}",
        dir.display()
    );
    println!();
    println!("try (admin may write and administer; viewer only reads):");
    let client = client.display();
    println!("  {client} --cluster {clients} --certs {certs} --name admin put greeting hello");
    println!("  {client} --cluster {clients} --certs {certs} --name viewer get greeting");
    println!("  {client} --cluster {clients} --certs {certs} --name viewer put greeting nope");
    println!("  {client} --cluster {clients} --certs {certs} --name admin status");
    if groups > 1 {
        println!("  {client} --cluster {clients} --certs {certs} --name admin status --group 0");
        println!(
            "  (kill a node: kill <pid from status>; watch `status` until no group is looking)"
        );
    }
    println!("  {client} --cluster {clients} --certs {certs} --name admin admin members");
    println!("  {client} --cluster {clients} --certs {certs} --name admin admin transfer-leader 2");
    println!(
        "add a client later: {} certs --dir {certs} --clients NAME[:ro|:admin]",
        node.display()
    );
    println!();
    println!("press Enter (or Ctrl-C) to stop the cluster");
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    println!("stopped; {} kept for inspection", dir.display());
    Ok(())
}
