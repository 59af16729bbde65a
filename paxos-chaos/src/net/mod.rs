//! Per-node network namespaces joined by a switch whose every link can be
//! cut, delayed, made lossy or duplicated.
//!
//! # Layout
//!
//! [`Network::create`] gives every node a network namespace named
//! `pxc<pid>t<counter>n<id>` holding one interface, `eth0`, with address
//! `10.A.B.<id>/24` (and `lo` up). The harness keeps one more interface in
//! its own namespace with `10.A.B.254/24`, so the test process reaches every
//! node's ports (only that /24 is routed there). Each interface is a TAP
//! device whose other end is a file held by this process; a switch made of
//! plain threads forwards Ethernet frames between the files and applies,
//! per directed link, a [`LinkFault`]: blocked, delay, jitter, loss,
//! duplication, reordering, decided by a generator seeded from the run's
//! seed.
//!
//! Every interface has a fixed MAC address and a permanent neighbour entry
//! for every other one, so no ARP crosses the switch: a one-way block then
//! stops exactly one direction, as an IP-level filter would.
//!
//! The kernel's traffic control (netem) is not used: it is missing on the
//! machines this runs on, and a userspace switch needs no kernel modules.
//!
//! # Cleanup
//!
//! Dropping the [`Network`] (also while unwinding from a panic) stops the
//! switch, closes the TAP files (which removes the devices) and deletes the
//! namespaces. A process killed outright leaves its namespaces behind (the
//! devices still go with its files); [`sweep_stale`], which
//! [`Network::create`] calls, deletes those whose owner pid is gone.
//!
//! # Example
//!
//! ```no_run
//! use paxos_chaos::net::{self, LinkFault, Network};
//! use std::time::Duration;
//!
//! if let Err(why) = net::probe() {
//!     eprintln!("skipped: {why}");
//!     return Ok(());
//! }
//! let net = Network::create(&[1, 2, 3], 42)?;
//! let child = net.command(1, "paxos-node")?.arg("--listen").arg(format!("{}:7000", net.node_ip(1)?)).spawn();
//! net.partition(&[&[1], &[2, 3]])?;
//! net.set_link(2, 3, LinkFault::delayed(Duration::from_millis(20)))?;
//! net.heal();
//! # drop(child);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod fault;
mod switch;
mod sys;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use fault::{LinkFault, DELAY_MAX, REORDER_HOLD_MIN};
pub use switch::QueueLimits;

use switch::Switch;

/// The lowest and highest node id: the id is the last octet of the node's
/// address, and `.254` is the harness's.
pub const NODE_ID_MIN: u64 = 1;
/// See [`NODE_ID_MIN`].
pub const NODE_ID_MAX: u64 = 253;

/// The host's last address octet.
const HOST_OCTET: u8 = 254;
/// The switch port of the harness's interface; node ports follow.
const HOST_PORT: usize = 0;
/// Every namespace this module makes starts with this.
const NETNS_PREFIX: &str = "pxc";
/// Namespaces listed by `ip netns list` that one sweep looks at, at most.
const SWEEP_MAX: usize = 10_000;

/// Distinguishes the networks (and probes) of one process.
static NEXT_TAG: AtomicU64 = AtomicU64::new(0);

/// Why this machine cannot run the network (the message says what to fix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// A human-readable reason, e.g. "not root" or an `ip` command's stderr.
    pub reason: String,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network namespaces unsupported: {}", self.reason)
    }
}

impl std::error::Error for Unsupported {}

/// Errors of building, changing or removing a [`Network`].
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A command ran and exited with a failure.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command could not be started or waited for.
    #[error("{command}: {source}")]
    CommandIo {
        /// The command line (or file) involved.
        command: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A command did not finish in time and was killed.
    #[error("{command} did not finish within {timeout:?}")]
    CommandTimeout {
        /// The command line.
        command: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// A TAP device could not be created.
    #[error("TAP device: {what}: {source}")]
    Tap {
        /// The step that failed.
        what: &'static str,
        /// The underlying error.
        source: io::Error,
    },
    /// A network namespace could not be opened or entered.
    #[error("network namespace {name}: {source}")]
    Netns {
        /// The namespace's name.
        name: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A thread could not be started.
    #[error("starting a thread: {source}")]
    Thread {
        /// The underlying error.
        source: io::Error,
    },
    /// The subnet lock file could not be taken.
    #[error("subnet lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Every candidate subnet overlaps a route of the harness's namespace.
    #[error("no free 10.x.y.0/24 subnet among the candidates")]
    NoFreeSubnet,
    /// A node id outside [`NODE_ID_MIN`]..=[`NODE_ID_MAX`].
    #[error("node id {id} is outside {NODE_ID_MIN}..={NODE_ID_MAX}")]
    InvalidNodeId {
        /// The id.
        id: u64,
    },
    /// A node id given twice to [`Network::create`].
    #[error("node id {id} given twice")]
    DuplicateNode {
        /// The id.
        id: u64,
    },
    /// A node id this network does not have.
    #[error("node {id} is not part of this network")]
    UnknownNode {
        /// The id.
        id: u64,
    },
    /// A link fault with impossible figures.
    #[error("invalid link fault: {reason}")]
    InvalidFault {
        /// What is wrong.
        reason: String,
    },
    /// Groups given to [`Network::partition`] that overlap.
    #[error("node {id} is in more than one partition group")]
    OverlappingGroups {
        /// The node found twice.
        id: u64,
    },
}

/// Counters of the switch since the network was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames written to a destination TAP (each duplicate counts).
    pub forwarded: u64,
    /// Frames dropped by a blocked link.
    pub blocked: u64,
    /// Frames dropped by a lossy link.
    pub lost: u64,
    /// Frames sent twice by a duplicating link.
    pub duplicated: u64,
    /// Frame copies that waited in the delay queue.
    pub delayed: u64,
    /// Frames dropped because the delay queue was full.
    pub queue_full: u64,
    /// Frames the destination TAP refused (e.g. its interface was down).
    pub write_failed: u64,
    /// Frames too short to carry an Ethernet header.
    pub malformed: u64,
    /// Frames in the delay queue right now.
    pub queued: u64,
}

/// Options of [`Network::create_with`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetOptions {
    /// Limits of the switch's delay queue.
    pub queue: QueueLimits,
}

#[derive(Debug)]
struct Node {
    netns: String,
    ip: Ipv4Addr,
    port: usize,
}

/// The per-node namespaces, their interfaces and the switch between them.
/// See the [module documentation](self).
pub struct Network {
    tag: String,
    subnet: [u8; 2],
    nodes: BTreeMap<u64, Node>,
    host_tap: String,
    /// Namespaces made so far, deleted on drop.
    made: Vec<String>,
    switch: Option<Switch>,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network")
            .field("tag", &self.tag)
            .field(
                "subnet",
                &format_args!("10.{}.{}.0/24", self.subnet[0], self.subnet[1]),
            )
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .field("host_tap", &self.host_tap)
            .finish()
    }
}

/// Checks that this machine can make network namespaces and TAP devices, by
/// making and deleting a throwaway pair. Callers skip with the message.
pub fn probe() -> Result<(), Unsupported> {
    let unsupported = |reason: String| Unsupported { reason };
    if sys::euid() != 0 {
        return Err(unsupported(
            "not root (namespaces and TAP devices need root)".into(),
        ));
    }
    sys::ip(&["-V"], None).map_err(|e| unsupported(format!("the ip command does not run: {e}")))?;
    let name = format!("{NETNS_PREFIX}{}t{}probe", std::process::id(), next_tag());
    let tap = sys::open_tap("pxp%d").map_err(|e| unsupported(e.to_string()))?;
    sys::ip(&["netns", "add", &name], None).map_err(|e| unsupported(e.to_string()))?;
    let tried = (|| {
        sys::ip(&["link", "set", &tap.name, "netns", &name], None)?;
        sys::ip(&["-n", &name, "link", "set", &tap.name, "up"], None)?;
        sys::ip(&["-n", &name, "link", "set", "lo", "up"], None)?;
        sys::run_in_netns(&name, || ())
    })();
    drop(tap);
    let deleted = sys::ip(&["netns", "del", &name], None);
    tried.map_err(|e| unsupported(e.to_string()))?;
    deleted.map_err(|e| unsupported(e.to_string()))?;
    Ok(())
}

/// Deletes the namespaces named like this module's (`pxc<pid>t...`) whose
/// owning process no longer exists, and returns how many it deleted.
/// Namespaces of live processes (this one included) are left alone. A pid
/// reused by an unrelated process keeps its namespaces until that process
/// ends too.
pub fn sweep_stale() -> Result<usize, NetError> {
    let listing = sys::ip(&["netns", "list"], None)?;
    let mut swept = 0;
    for line in listing.lines().take(SWEEP_MAX) {
        // Lines read "NAME" or "NAME (id: N)".
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = owner_pid(name) else {
            continue;
        };
        if pid == std::process::id() || sys::pid_alive(pid) {
            continue;
        }
        match sys::ip(&["netns", "del", name], None) {
            Ok(_) => {
                swept += 1;
                tracing::info!(netns = name, pid, "deleted a stale namespace");
            }
            Err(err) => tracing::warn!(netns = name, %err, "deleting a stale namespace failed"),
        }
    }
    Ok(swept)
}

/// The pid encoded in a namespace name `pxc<pid>t...`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NETNS_PREFIX)?;
    let (digits, _) = rest.split_once('t')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn next_tag() -> u64 {
    NEXT_TAG.fetch_add(1, Ordering::Relaxed)
}

/// The fixed MAC address of the interface with this last octet.
fn mac_of(subnet: [u8; 2], octet: u8) -> [u8; 6] {
    // 02: locally administered unicast; then "px".
    [0x02, 0x70, 0x78, subnet[0], subnet[1], octet]
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Picks a /24 that overlaps no route of this namespace, starting from a
/// place derived from the pid and the counter so that concurrent networks
/// usually start apart. Call with the subnet lock held.
fn choose_subnet(counter: u64) -> Result<[u8; 2], NetError> {
    const A_FIRST: u64 = 100;
    const A_COUNT: u64 = 100;
    const B_COUNT: u64 = 250;
    let routes = sys::ipv4_routes()?;
    let start_a = counter % A_COUNT;
    let start_b = u64::from(std::process::id()) % B_COUNT;
    for i in 0..A_COUNT * B_COUNT {
        let a = A_FIRST + (start_a + i / B_COUNT) % A_COUNT;
        let b = (start_b + i) % B_COUNT;
        let (Ok(a), Ok(b)) = (u8::try_from(a), u8::try_from(b)) else {
            continue;
        };
        if !sys::overlaps(Ipv4Addr::new(10, a, b, 0), &routes) {
            return Ok([a, b]);
        }
    }
    Err(NetError::NoFreeSubnet)
}

impl Network {
    /// Builds a network with one namespace per node id (each in
    /// [`NODE_ID_MIN`]..=[`NODE_ID_MAX`]), all links clean, the switch
    /// running, and faults drawn from `seed`. Deletes stale namespaces of
    /// dead processes first. On error, whatever was made is removed again.
    pub fn create(nodes: &[u64], seed: u64) -> Result<Network, NetError> {
        Network::create_with(nodes, seed, NetOptions::default())
    }

    /// [`Network::create`] with options.
    pub fn create_with(nodes: &[u64], seed: u64, options: NetOptions) -> Result<Network, NetError> {
        let mut seen = HashSet::new();
        for &id in nodes {
            if !(NODE_ID_MIN..=NODE_ID_MAX).contains(&id) {
                return Err(NetError::InvalidNodeId { id });
            }
            if !seen.insert(id) {
                return Err(NetError::DuplicateNode { id });
            }
        }
        if let Err(err) = sweep_stale() {
            tracing::warn!(%err, "sweeping stale namespaces failed");
        }
        let counter = next_tag();
        let tag = format!("{}t{counter}", std::process::id());
        // From here on, dropping `net` undoes what was done.
        let mut net = Network {
            tag,
            subnet: [0, 0],
            nodes: BTreeMap::new(),
            host_tap: String::new(),
            made: Vec::new(),
            switch: None,
        };
        for &id in nodes {
            let netns = format!("{NETNS_PREFIX}{}n{id}", net.tag);
            sys::ip(&["netns", "add", &netns], None)?;
            net.made.push(netns.clone());
            sys::run_in_netns(&netns, sys::disable_ipv6_here)?;
            net.nodes.insert(
                id,
                Node {
                    netns,
                    ip: Ipv4Addr::UNSPECIFIED,
                    port: 0,
                },
            );
        }

        // The host interface claims the subnet: its address adds the /24
        // route the next network's choice will see.
        let host = {
            let _lock = sys::SubnetLock::acquire()?;
            net.subnet = choose_subnet(counter)?;
            let host = sys::open_tap("pxh%d")?;
            net.host_tap = host.name.clone();
            sys::disable_ipv6_on(&host.name);
            let addr = format!("{}/24", net.subnet_addr(HOST_OCTET));
            let mac = mac_text(mac_of(net.subnet, HOST_OCTET));
            let batch = format!(
                "link set {tap} address {mac}\naddr add {addr} dev {tap}\nlink set {tap} up\n",
                tap = host.name
            );
            sys::ip(&["-batch", "-"], Some(&batch))?;
            host
        };

        let mut ports = vec![host.file];
        let mut macs = HashMap::from([(mac_of(net.subnet, HOST_OCTET), HOST_PORT)]);
        let ids: Vec<u64> = net.nodes.keys().copied().collect();
        for id in &ids {
            let octet = octet_of(*id)?;
            let ip = net.subnet_addr(octet);
            let tap = sys::open_tap("pxn%d")?;
            let Some(node) = net.nodes.get_mut(id) else {
                return Err(NetError::UnknownNode { id: *id });
            };
            node.ip = ip;
            node.port = ports.len();
            macs.insert(mac_of(net.subnet, octet), node.port);
            let netns = node.netns.clone();
            sys::ip(&["link", "set", &tap.name, "netns", &netns], None)?;
            ports.push(tap.file);
            let mut batch = format!(
                "link set {tap} name eth0\nlink set eth0 address {mac}\naddr add {ip}/24 dev eth0\n\
                 link set lo up\nlink set eth0 up\n",
                tap = tap.name,
                mac = mac_text(mac_of(net.subnet, octet)),
            );
            for other in ids.iter().filter(|o| *o != id) {
                let o = octet_of(*other)?;
                batch.push_str(&net.neighbour_line(o, "eth0"));
            }
            batch.push_str(&net.neighbour_line(HOST_OCTET, "eth0"));
            sys::ip(&["-n", &netns, "-batch", "-"], Some(&batch))?;
        }
        let mut batch = String::new();
        for id in &ids {
            batch.push_str(&net.neighbour_line(octet_of(*id)?, &net.host_tap));
        }
        if !batch.is_empty() {
            sys::ip(&["-batch", "-"], Some(&batch))?;
        }

        net.switch = Some(Switch::start(ports, macs, seed, options.queue)?);
        tracing::info!(
            tag = %net.tag,
            subnet = %format_args!("10.{}.{}.0/24", net.subnet[0], net.subnet[1]),
            nodes = ?ids,
            seed,
            "network created"
        );
        Ok(net)
    }

    fn subnet_addr(&self, octet: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet[0], self.subnet[1], octet)
    }

    fn neighbour_line(&self, octet: u8, dev: &str) -> String {
        format!(
            "neigh replace {} lladdr {} dev {dev} nud permanent\n",
            self.subnet_addr(octet),
            mac_text(mac_of(self.subnet, octet))
        )
    }

    fn node(&self, id: u64) -> Result<&Node, NetError> {
        self.nodes.get(&id).ok_or(NetError::UnknownNode { id })
    }

    fn switch(&self) -> &Switch {
        // Set at the end of `create_with` and taken only by drop.
        self.switch
            .as_ref()
            .unwrap_or_else(|| unreachable!("a created Network always has its switch"))
    }

    /// The unique tag of this network (`<pid>t<counter>`), part of every
    /// namespace name.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The node ids, ascending.
    pub fn nodes(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The address of node `id` (`10.A.B.<id>`).
    pub fn node_ip(&self, id: u64) -> Result<IpAddr, NetError> {
        Ok(IpAddr::V4(self.node(id)?.ip))
    }

    /// The harness's address on the network (`10.A.B.254`), the source of
    /// the test process's connections to the nodes.
    pub fn host_ip(&self) -> IpAddr {
        IpAddr::V4(self.subnet_addr(HOST_OCTET))
    }

    /// The name of the harness's interface in its own namespace.
    pub fn host_interface(&self) -> &str {
        &self.host_tap
    }

    /// The name of node `id`'s network namespace.
    pub fn netns_name(&self, id: u64) -> Result<&str, NetError> {
        Ok(&self.node(id)?.netns)
    }

    /// A command that runs `program` inside node `id`'s namespace:
    /// `ip netns exec NAME program`; add arguments, environment and stdio as
    /// usual. `ip netns exec` execs the program after entering the
    /// namespace (no fork), so the spawned child's pid is the program's pid
    /// and signals sent to it reach the program. The program also gets a
    /// mount namespace of its own in which `/sys` shows its network
    /// namespace. Deleting the network does not kill it.
    pub fn command(&self, id: u64, program: impl AsRef<OsStr>) -> Result<Command, NetError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node(id)?.netns])
            .arg(program);
        Ok(cmd)
    }

    /// Runs `f` on a short-lived thread inside node `id`'s namespace and
    /// returns its result (a panic in `f` is passed on). Sockets made there
    /// stay in that namespace after the thread ends and may be used from
    /// any thread: this is how the test process talks as a node.
    pub fn run_in<T, F>(&self, id: u64, f: F) -> Result<T, NetError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        sys::run_in_netns(&self.node(id)?.netns, f)
    }

    /// The fault of the link from node `from` to node `to`.
    pub fn link(&self, from: u64, to: u64) -> Result<LinkFault, NetError> {
        let (f, t) = (self.node(from)?.port, self.node(to)?.port);
        Ok(self.switch().link(f, t))
    }

    /// Replaces the fault of the link from node `from` to node `to` (one
    /// direction). Frames already delayed keep their delivery times.
    pub fn set_link(&self, from: u64, to: u64, fault: LinkFault) -> Result<(), NetError> {
        fault.validate()?;
        let (f, t) = (self.node(from)?.port, self.node(to)?.port);
        self.switch().set_link(f, t, fault);
        tracing::info!(from, to, ?fault, "link fault set");
        Ok(())
    }

    fn set_blocked(&self, from: usize, to: usize, blocked: bool) {
        let switch = self.switch();
        let mut fault = switch.link(from, to);
        fault.blocked = blocked;
        switch.set_link(from, to, fault);
    }

    /// Drops every frame from node `from` to node `to`; the other direction
    /// is untouched. Other faults of the link stay and apply again after
    /// [`Network::unblock`].
    pub fn block(&self, from: u64, to: u64) -> Result<(), NetError> {
        let (f, t) = (self.node(from)?.port, self.node(to)?.port);
        self.set_blocked(f, t, true);
        tracing::info!(from, to, "link blocked");
        Ok(())
    }

    /// Undoes [`Network::block`] for the link from `from` to `to`.
    pub fn unblock(&self, from: u64, to: u64) -> Result<(), NetError> {
        let (f, t) = (self.node(from)?.port, self.node(to)?.port);
        self.set_blocked(f, t, false);
        tracing::info!(from, to, "link unblocked");
        Ok(())
    }

    /// Splits the nodes into groups that cannot reach each other (both
    /// directions), while nodes of one group can. Nodes in no group form one
    /// more group together. This sets the blocked flag of every node-to-node
    /// link (so it replaces earlier blocks) and keeps the other faults. The
    /// harness still reaches every node; see [`Network::isolate_from_host`].
    pub fn partition(&self, groups: &[&[u64]]) -> Result<(), NetError> {
        let mut group_of = HashMap::new();
        for (g, members) in groups.iter().enumerate() {
            for &id in *members {
                self.node(id)?;
                if group_of.insert(id, g).is_some() {
                    return Err(NetError::OverlappingGroups { id });
                }
            }
        }
        let rest = groups.len();
        for (a, na) in &self.nodes {
            for (b, nb) in &self.nodes {
                if a == b {
                    continue;
                }
                let ga = group_of.get(a).copied().unwrap_or(rest);
                let gb = group_of.get(b).copied().unwrap_or(rest);
                self.set_blocked(na.port, nb.port, ga != gb);
            }
        }
        tracing::info!(?groups, "network partitioned");
        Ok(())
    }

    /// Cuts node `id` off from every other node, both ways (the harness
    /// still reaches it): the partition `[[id], rest]`.
    pub fn isolate(&self, id: u64) -> Result<(), NetError> {
        self.partition(&[&[id]])
    }

    /// Sets every node-to-node link of node `id`, both directions, to
    /// `fault` (links to the harness are untouched).
    pub fn set_node_links(&self, id: u64, fault: LinkFault) -> Result<(), NetError> {
        fault.validate()?;
        let port = self.node(id)?.port;
        let switch = self.switch();
        for (other, node) in &self.nodes {
            if *other != id {
                switch.set_link(port, node.port, fault);
                switch.set_link(node.port, port, fault);
            }
        }
        tracing::info!(id, ?fault, "node links set");
        Ok(())
    }

    /// Sets both directions of the link between the harness and node `id`
    /// (the clients' link) to `fault`.
    pub fn set_host_link(&self, id: u64, fault: LinkFault) -> Result<(), NetError> {
        fault.validate()?;
        let port = self.node(id)?.port;
        let switch = self.switch();
        switch.set_link(HOST_PORT, port, fault);
        switch.set_link(port, HOST_PORT, fault);
        tracing::info!(id, ?fault, "host link set");
        Ok(())
    }

    /// Blocks both directions between the harness and node `id`, keeping
    /// the links' other faults.
    pub fn isolate_from_host(&self, id: u64) -> Result<(), NetError> {
        let port = self.node(id)?.port;
        self.set_blocked(HOST_PORT, port, true);
        self.set_blocked(port, HOST_PORT, true);
        tracing::info!(id, "node isolated from the host");
        Ok(())
    }

    /// Makes every link clean again, the harness's included. Frames already
    /// delayed are still delivered at their times.
    pub fn heal(&self) {
        self.switch().clear();
        tracing::info!("network healed");
    }

    /// The switch's counters since creation.
    pub fn stats(&self) -> NetStats {
        self.switch().stats()
    }
}

fn octet_of(id: u64) -> Result<u8, NetError> {
    u8::try_from(id)
        .ok()
        .filter(|o| (NODE_ID_MIN..=NODE_ID_MAX).contains(&u64::from(*o)))
        .ok_or(NetError::InvalidNodeId { id })
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Some(mut switch) = self.switch.take() {
            let stats = switch.stats();
            switch.stop();
            tracing::info!(tag = %self.tag, ?stats, "switch stopped");
            // Dropping the switch closes the TAP files: the devices go.
        }
        for netns in self.made.drain(..) {
            if let Err(err) = sys::ip(&["netns", "del", &netns], None) {
                tracing::warn!(%netns, %err, "deleting a namespace failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_our_names() {
        assert_eq!(owner_pid("pxc1234t0n1"), Some(1234));
        assert_eq!(owner_pid("pxc99t7probe"), Some(99));
        assert_eq!(owner_pid("pxct0n1"), None);
        assert_eq!(owner_pid("pxc12x0n1"), None);
        assert_eq!(owner_pid("other1t0"), None);
        assert_eq!(owner_pid("pxc99999999999999999999t0"), None);
    }

    #[test]
    fn macs_are_local_unicast_and_distinct() {
        let a = mac_of([100, 7], 1);
        let b = mac_of([100, 7], 2);
        assert_ne!(a, b);
        assert_eq!(a[0] & 0b11, 0b10);
        assert_eq!(mac_text(a), "02:70:78:64:07:01");
    }

    #[test]
    fn octets_of_ids() {
        assert_eq!(octet_of(1).ok(), Some(1));
        assert_eq!(octet_of(253).ok(), Some(253));
        assert!(octet_of(0).is_err());
        assert!(octet_of(254).is_err());
        assert!(octet_of(1 << 40).is_err());
    }
}
