//! A node's on-disk identity, and the checks that keep a replica that lost
//! its state from acting as if it had promised nothing.
//!
//! At its first start a node writes `DATA_DIR/IDENTITY`: the cluster it
//! belongs to, its node id, and whether it is a member in good standing or
//! a *recovering* replica (one that rejoined with an empty data directory
//! and must be brought up to date by an established leader before it may
//! vote again). Every later start checks the file against the node's
//! configuration and the data directory against the file:
//!
//! - an identity of another cluster or another node id: refused;
//! - a data directory with a log, a hard state or snapshots but no
//!   identity (an older build's, or a damaged one): refused;
//! - an identity without the hard-state file or without the log (a wiped
//!   or partly deleted directory): refused, and the error names
//!   `--rejoin`;
//! - a log whose prefix was compacted away without the snapshot that
//!   covers it: refused (checked by the node once the log is open).
//!
//! An empty data directory is the one case a node cannot judge alone: it is
//! either a new cluster's first start or a wiped member of a running
//! cluster. The operator says which: `--bootstrap` (a new cluster) or
//! `--rejoin` (a member that lost its state); without either the node
//! refuses to start and says so.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The directory of the node's write-ahead log in its data directory.
pub const WAL_DIR: &str = "wal";
/// The directory of the node's snapshots in its data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";
/// The directory under which a node hosting many groups keeps each one's
/// files (`groups/<index>/wal`, `groups/<index>/snapshots`).
pub const GROUPS_DIR: &str = "groups";
/// The identity file's name in the data directory.
pub const IDENTITY_FILE: &str = "IDENTITY";
/// The first line of an identity file.
const HEADER: &str = "paxos-node identity 1";
/// Longest identity file read, in bytes.
const MAX_IDENTITY_BYTES: u64 = 4096;

/// Where a node stands, as recorded in its identity file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// A member in good standing: it votes and its acknowledgements count.
    Member,
    /// A member that rejoined with an empty data directory: it neither votes
    /// nor counts towards any quorum until an established leader has
    /// brought it up to date.
    Recovering,
}

/// The contents of an identity file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The cluster's id (by default a fingerprint of the cluster CA).
    pub cluster: String,
    /// This node's id.
    pub node: u64,
    /// Member or recovering.
    pub standing: Standing,
    /// The Paxos groups the node hosts (`--groups`), fixed at the first
    /// start: keys map to groups by it. Written only when above 1, so a
    /// single-group node's file is as older builds wrote it.
    pub groups: u32,
}

/// How a node whose data directory is empty was told to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EmptyStart {
    /// Neither flag: an empty data directory is refused.
    #[default]
    Refuse,
    /// `--bootstrap`: the first start of a new cluster.
    Bootstrap,
    /// `--rejoin`: a member of a running cluster that lost its state.
    Rejoin,
    /// `--join`: a new machine joining a running cluster (added with
    /// `paxos-client admin add-observer`): it has never promised anything,
    /// so it starts as a member; its role comes from the leader. Accepted
    /// on a directory that has state too (the same command line restarts
    /// it).
    Join,
}

/// Why a data directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The identity file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The identity file is not one this build wrote.
    #[error("{path} is malformed ({problem}); restore it, or treat the node as wiped and start it with an empty data directory and --rejoin")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The data directory belongs to another cluster.
    #[error("{dir} belongs to cluster {found}, not to this node's cluster {expected}; check --data-dir and --certs (or --cluster-id)")]
    OtherCluster {
        /// The data directory.
        dir: PathBuf,
        /// The cluster recorded.
        found: String,
        /// The cluster configured.
        expected: String,
    },
    /// The data directory belongs to another node.
    #[error("{dir} belongs to node {found}, not to node {expected}; check --data-dir and --id")]
    OtherNode {
        /// The data directory.
        dir: PathBuf,
        /// The node recorded.
        found: u64,
        /// The node configured.
        expected: u64,
    },
    /// The data directory was made for another group count.
    #[error("{dir} holds a node of {found} groups, not --groups {expected}: keys map to groups by their count, which is fixed when the cluster is created; start the node with --groups {found}")]
    OtherGroups {
        /// The data directory.
        dir: PathBuf,
        /// The count recorded.
        found: u32,
        /// The count configured.
        expected: u32,
    },
    /// State without an identity file.
    #[error("{dir} holds {what} but no {IDENTITY_FILE} file: it was written by an older build or is damaged; this build will not guess whose state it is")]
    NoIdentity {
        /// The data directory.
        dir: PathBuf,
        /// What was found.
        what: String,
    },
    /// Part of the node's durable state is missing.
    #[error("{dir} has an identity but {missing} is missing: this node has lost state it may have promised to others, and must not vote as if it had not. If the data is gone, empty {dir} and start the node with --rejoin: it then catches up from the leader before it votes again")]
    Damaged {
        /// The data directory.
        dir: PathBuf,
        /// What is missing.
        missing: String,
    },
    /// An empty data directory and no flag saying why.
    #[error("{dir} is empty: start with --bootstrap if this is the first start of a new cluster, or with --rejoin if this node is a member of a running cluster that lost its data (it then catches up before it votes)")]
    EmptyWithoutFlag {
        /// The data directory.
        dir: PathBuf,
    },
    /// `--bootstrap` or `--rejoin` given for a directory that has state.
    #[error("{flag} is only for an empty data directory, and {dir} has an identity ({standing:?}); start without it")]
    FlagOnExisting {
        /// The flag given.
        flag: &'static str,
        /// The data directory.
        dir: PathBuf,
        /// The recorded standing.
        standing: Standing,
    },
}

impl Identity {
    fn encode(&self) -> String {
        let standing = match self.standing {
            Standing::Member => "member",
            Standing::Recovering => "recovering",
        };
        let mut text = format!(
            "{HEADER}\ncluster {}\nnode {}\nstanding {standing}\n",
            self.cluster, self.node
        );
        if self.groups != 1 {
            text.push_str(&format!("groups {}\n", self.groups));
        }
        text
    }

    fn decode(path: &Path, text: &str) -> Result<Identity, IdentityError> {
        let bad = |problem: &str| IdentityError::Malformed {
            path: path.to_path_buf(),
            problem: problem.into(),
        };
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(bad("unknown header"));
        }
        let mut field = |name: &str| {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_owned)
                .ok_or_else(|| bad(&format!("no {name} line")))
        };
        let cluster = field("cluster")?;
        let node = field("node")?
            .parse()
            .map_err(|_| bad("node is not a number"))?;
        let standing = match field("standing")?.as_str() {
            "member" => Standing::Member,
            "recovering" => Standing::Recovering,
            _ => return Err(bad("unknown standing")),
        };
        let groups = match lines.next() {
            None => 1,
            Some(l) => l
                .strip_prefix("groups ")
                .and_then(|g| g.parse::<u32>().ok())
                .filter(|&g| g >= 1)
                .ok_or_else(|| bad("bad groups line"))?,
        };
        if cluster.is_empty() || cluster.contains(char::is_whitespace) {
            return Err(bad("bad cluster id"));
        }
        Ok(Identity {
            cluster,
            node,
            standing,
            groups,
        })
    }
}

/// Reads `dir`'s identity file, if there is one.
pub fn read(dir: &Path) -> Result<Option<Identity>, IdentityError> {
    let path = dir.join(IDENTITY_FILE);
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_IDENTITY_BYTES),
        &mut text,
    )
    .map_err(io)?;
    Identity::decode(&path, &text).map(Some)
}

/// Writes `dir`'s identity file crash-safely (a temporary file, synced,
/// renamed over the old one, then the directory synced).
pub fn write(dir: &Path, identity: &Identity) -> Result<(), IdentityError> {
    let path = dir.join(IDENTITY_FILE);
    let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(identity.encode().as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    tracing::info!(dir = %dir.display(), cluster = %identity.cluster, node = identity.node, standing = ?identity.standing, "identity written");
    Ok(())
}

/// Whether `path` is a directory with at least one entry.
fn non_empty_dir(path: &Path) -> bool {
    std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_some())
}

/// What the node's files in `dir` say: the WAL's log directory, its
/// hard-state file and the snapshot directory (their layout is the node's:
/// `wal/log`, `wal/hardstate`, `snapshots`).
struct Found {
    log: bool,
    hard_state: bool,
    snapshots: bool,
}

fn look(dir: &Path) -> Found {
    let wal = dir.join(WAL_DIR);
    Found {
        log: non_empty_dir(&wal.join(paxos_wal::LOG_DIR)),
        hard_state: wal.join(paxos_wal::HARD_STATE_FILE).exists(),
        snapshots: non_empty_dir(&dir.join(SNAPSHOT_DIR)),
    }
}

/// [`look`] for a node hosting `groups` groups: more than one keep their
/// records in one shared log (`wal/log`, which holds their hard states
/// too) and their snapshots under `groups/<index>`.
fn look_groups(dir: &Path, groups: u32) -> Found {
    if groups <= 1 {
        return look(dir);
    }
    let log = non_empty_dir(&dir.join(WAL_DIR).join(paxos_wal::LOG_DIR));
    Found {
        log,
        hard_state: log,
        snapshots: (0..groups)
            .any(|g| non_empty_dir(&dir.join(GROUPS_DIR).join(g.to_string()).join(SNAPSHOT_DIR))),
    }
}

/// Checks `dir` before the node opens its storage, and writes the identity
/// at a first start. Returns the identity the node runs with.
pub fn check(
    dir: &Path,
    cluster: &str,
    node: u64,
    empty: EmptyStart,
    groups: u32,
) -> Result<Identity, IdentityError> {
    let found = look_groups(dir, groups);
    match read(dir)? {
        Some(id) => {
            if id.groups != groups {
                return Err(IdentityError::OtherGroups {
                    dir: dir.into(),
                    found: id.groups,
                    expected: groups,
                });
            }
            if id.cluster != cluster {
                return Err(IdentityError::OtherCluster {
                    dir: dir.into(),
                    found: id.cluster,
                    expected: cluster.into(),
                });
            }
            if id.node != node {
                return Err(IdentityError::OtherNode {
                    dir: dir.into(),
                    found: id.node,
                    expected: node,
                });
            }
            let flag = match empty {
                EmptyStart::Refuse | EmptyStart::Join => None,
                EmptyStart::Bootstrap => Some("--bootstrap"),
                EmptyStart::Rejoin => Some("--rejoin"),
            };
            let missing = match (found.hard_state, found.log) {
                (true, true) => None,
                (false, true) => Some("the hard-state file (wal/hardstate)"),
                (true, false) => Some("the log (wal/log)"),
                (false, false) => Some("the whole write-ahead log (wal/)"),
            };
            if let Some(missing) = missing {
                return Err(IdentityError::Damaged {
                    dir: dir.into(),
                    missing: missing.into(),
                });
            }
            if let Some(flag) = flag {
                return Err(IdentityError::FlagOnExisting {
                    flag,
                    dir: dir.into(),
                    standing: id.standing,
                });
            }
            Ok(id)
        }
        None => {
            let mut held = Vec::new();
            if found.log {
                held.push("a log");
            }
            if found.hard_state {
                held.push("a hard state");
            }
            if found.snapshots {
                held.push("snapshots");
            }
            if !held.is_empty() {
                return Err(IdentityError::NoIdentity {
                    dir: dir.into(),
                    what: held.join(", "),
                });
            }
            let standing = match empty {
                EmptyStart::Refuse => {
                    return Err(IdentityError::EmptyWithoutFlag { dir: dir.into() })
                }
                EmptyStart::Bootstrap | EmptyStart::Join => Standing::Member,
                EmptyStart::Rejoin => Standing::Recovering,
            };
            let id = Identity {
                cluster: cluster.into(),
                node,
                standing,
                groups,
            };
            write(dir, &id)?;
            Ok(id)
        }
    }
}

/// A cluster id derived from the cluster CA certificate (PEM file): the
/// first 16 bytes of the SHA-256 of its contents, in hex. Every node of a
/// cluster holds the same CA, so every node derives the same id.
pub fn cluster_id_from_ca(ca_pem: &Path) -> Result<String, IdentityError> {
    let bytes = std::fs::read(ca_pem).map_err(|source| IdentityError::Io {
        path: ca_pem.into(),
        source,
    })?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    Ok(digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn populate(dir: &Path) {
        std::fs::create_dir_all(dir.join("wal/log")).unwrap();
        std::fs::write(dir.join("wal/log/00000001.seg"), b"x").unwrap();
        std::fs::write(dir.join("wal/hardstate"), b"x").unwrap();
    }

    #[test]
    fn an_empty_directory_needs_a_flag_and_the_flag_decides_the_standing() {
        let d = tempfile::tempdir().unwrap();
        let e = check(d.path(), "c1", 1, EmptyStart::Refuse, 1).unwrap_err();
        assert!(matches!(e, IdentityError::EmptyWithoutFlag { .. }), "{e}");
        assert!(e.to_string().contains("--rejoin") && e.to_string().contains("--bootstrap"));
        let id = check(d.path(), "c1", 1, EmptyStart::Rejoin, 1).unwrap();
        assert_eq!(id.standing, Standing::Recovering);
        assert_eq!(read(d.path()).unwrap(), Some(id));
        let d = tempfile::tempdir().unwrap();
        let id = check(d.path(), "c1", 1, EmptyStart::Bootstrap, 1).unwrap();
        assert_eq!(id.standing, Standing::Member);
    }

    #[test]
    fn a_directory_of_another_cluster_or_node_is_refused() {
        let d = tempfile::tempdir().unwrap();
        check(d.path(), "c1", 1, EmptyStart::Bootstrap, 1).unwrap();
        populate(d.path());
        check(d.path(), "c1", 1, EmptyStart::Refuse, 1).unwrap();
        let e = check(d.path(), "c2", 1, EmptyStart::Refuse, 1).unwrap_err();
        assert!(matches!(e, IdentityError::OtherCluster { .. }), "{e}");
        let e = check(d.path(), "c1", 2, EmptyStart::Refuse, 1).unwrap_err();
        assert!(matches!(e, IdentityError::OtherNode { .. }), "{e}");
        let e = check(d.path(), "c1", 1, EmptyStart::Rejoin, 1).unwrap_err();
        assert!(matches!(e, IdentityError::FlagOnExisting { .. }), "{e}");
    }

    #[test]
    fn the_group_count_is_recorded_and_a_different_one_refused() {
        let d = tempfile::tempdir().unwrap();
        let id = check(d.path(), "c1", 1, EmptyStart::Bootstrap, 8).unwrap();
        assert_eq!(id.groups, 8);
        assert_eq!(read(d.path()).unwrap(), Some(id));
        populate(d.path());
        check(d.path(), "c1", 1, EmptyStart::Refuse, 8).unwrap();
        let e = check(d.path(), "c1", 1, EmptyStart::Refuse, 4).unwrap_err();
        assert!(
            matches!(
                e,
                IdentityError::OtherGroups {
                    found: 8,
                    expected: 4,
                    ..
                }
            ),
            "{e}"
        );
        // The shared log gone is a damaged node, as for a single group.
        std::fs::remove_dir_all(d.path().join("wal").join("log")).unwrap();
        let e = check(d.path(), "c1", 1, EmptyStart::Refuse, 8).unwrap_err();
        assert!(matches!(e, IdentityError::Damaged { .. }), "{e}");
        // A single-group file reads as one group and is written as before.
        let one = Identity {
            cluster: "c1".into(),
            node: 1,
            standing: Standing::Member,
            groups: 1,
        };
        assert!(!one.encode().contains("groups"));
    }

    #[test]
    fn lost_hard_state_or_log_is_refused_and_names_rejoin() {
        let d = tempfile::tempdir().unwrap();
        check(d.path(), "c1", 1, EmptyStart::Bootstrap, 1).unwrap();
        populate(d.path());
        std::fs::remove_file(d.path().join("wal/hardstate")).unwrap();
        let e = check(d.path(), "c1", 1, EmptyStart::Refuse, 1).unwrap_err();
        assert!(e.to_string().contains("hard-state"), "{e}");
        assert!(e.to_string().contains("--rejoin"), "{e}");
        populate(d.path());
        std::fs::remove_dir_all(d.path().join("wal/log")).unwrap();
        let e = check(d.path(), "c1", 1, EmptyStart::Refuse, 1).unwrap_err();
        assert!(e.to_string().contains("the log"), "{e}");
    }

    #[test]
    fn state_without_an_identity_is_refused() {
        let d = tempfile::tempdir().unwrap();
        populate(d.path());
        for flag in [
            EmptyStart::Refuse,
            EmptyStart::Bootstrap,
            EmptyStart::Rejoin,
        ] {
            let e = check(d.path(), "c1", 1, flag, 1).unwrap_err();
            assert!(matches!(e, IdentityError::NoIdentity { .. }), "{e}");
        }
    }

    #[test]
    fn a_malformed_identity_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(IDENTITY_FILE), "garbage").unwrap();
        let e = check(d.path(), "c1", 1, EmptyStart::Refuse, 1).unwrap_err();
        assert!(matches!(e, IdentityError::Malformed { .. }), "{e}");
    }
}
