//! Child processes of a comparison cluster: spawned with their output in a log
//! file, killed and reaped on drop (also on panic paths), and the small helpers
//! every start-up shares (port checks, directory checks, log tails).

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{CompareError, System};

/// How much of a member's log an error message quotes.
const LOG_TAIL_BYTES: u64 = 2048;

/// How long [`Member::stop`] waits for a graceful exit before SIGKILL.
const GRACEFUL_STOP: Duration = Duration::from_secs(5);

/// How often a stopping member is polled for its exit.
const STOP_POLL: Duration = Duration::from_millis(20);

/// One running server process.
#[derive(Debug)]
pub(crate) struct Member {
    system: System,
    /// The member's name in errors and events (`m0`, `server.1`, ...).
    name: String,
    log_path: PathBuf,
    /// `None` once the process has been reaped.
    child: Option<Child>,
}

impl Member {
    /// Spawns `command` with stdin closed and stdout and stderr appended to
    /// `log_path`.
    pub(crate) fn spawn(
        system: System,
        name: String,
        mut command: Command,
        log_path: PathBuf,
    ) -> Result<Member, CompareError> {
        let log = File::create(&log_path).map_err(|source| CompareError::Io {
            context: format!("creating the log file of {system} member {name}"),
            path: log_path.clone(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| CompareError::Io {
            context: format!("duplicating the log file handle of {system} member {name}"),
            path: log_path.clone(),
            source,
        })?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err));
        kill_with_parent(&mut command);
        let program = PathBuf::from(command.get_program());
        let child = command.spawn().map_err(|source| CompareError::Spawn {
            system,
            member: name.clone(),
            program,
            source,
        })?;
        tracing::info!(%system, member = %name, pid = child.id(), log = %log_path.display(), "member started");
        Ok(Member {
            system,
            name,
            log_path,
            child: Some(child),
        })
    }

    /// The member's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Where the member's output goes.
    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The operating system's process id, while the process runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails with [`CompareError::Exited`] if the process has exited.
    pub(crate) fn check_running(&mut self) -> Result<(), CompareError> {
        let Some(child) = self.child.as_mut() else {
            return Err(self.exited_error("stopped"));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.child = None;
                Err(self.exited_error(&status.to_string()))
            }
            Err(source) => Err(CompareError::Io {
                context: format!("polling {} member {}", self.system, self.name),
                path: self.log_path.clone(),
                source,
            }),
        }
    }

    fn exited_error(&self, status: &str) -> CompareError {
        CompareError::Exited {
            system: self.system,
            member: self.name.clone(),
            status: status.to_owned(),
            log: self.log_path.clone(),
            log_tail: log_tail(&self.log_path),
        }
    }

    /// Stops the process: SIGTERM, a bounded wait, then SIGKILL; always reaps.
    /// Returns the exit status (`None` if it had already been reaped).
    pub(crate) fn stop(&mut self) -> Result<Option<ExitStatus>, CompareError> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = child.id();
        if let Ok(raw) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) with a pid we spawned and have not reaped yet, so
            // it cannot name another process.
            let rc = unsafe { libc::kill(raw, libc::SIGTERM) };
            if rc != 0 {
                tracing::debug!(system = %self.system, member = %self.name, pid, "SIGTERM failed; killing");
            }
        }
        let deadline = Instant::now() + GRACEFUL_STOP;
        let max_polls = GRACEFUL_STOP.as_millis() / STOP_POLL.as_millis() + 1;
        for _ in 0..max_polls {
            match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!(system = %self.system, member = %self.name, pid, %status, "member stopped");
                    return Ok(Some(status));
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(STOP_POLL),
                Ok(None) => break,
                Err(source) => {
                    kill_and_reap(&mut child);
                    return Err(CompareError::Io {
                        context: format!(
                            "waiting for {} member {} to stop",
                            self.system, self.name
                        ),
                        path: self.log_path.clone(),
                        source,
                    });
                }
            }
        }
        tracing::warn!(system = %self.system, member = %self.name, pid, "member ignored SIGTERM; killing");
        let status = kill_and_reap(&mut child);
        Ok(status)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            let status = kill_and_reap(&mut child);
            tracing::info!(system = %self.system, member = %self.name, pid, ?status, "member killed on drop");
        }
    }
}

/// Asks the kernel to SIGKILL the child when the thread that spawned it
/// exits (Linux `PR_SET_PDEATHSIG`), so that servers do not outlive a harness
/// that is itself killed with SIGKILL and never runs `Drop`. Clusters are
/// started from async code on runtime threads, which live as long as the
/// runtime does.
#[cfg(target_os = "linux")]
fn kill_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe, and reads errno.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_with_parent(_command: &mut Command) {}

/// SIGKILL and wait; the wait cannot block long after SIGKILL.
fn kill_and_reap(child: &mut Child) -> Option<ExitStatus> {
    // An error here means the process has already exited; wait reaps it.
    let _ = child.kill();
    child.wait().ok()
}

/// The last bytes of a log file, for error messages (empty if unreadable).
/// Stops every member of a cluster (SIGTERM, then SIGKILL) and reaps it;
/// returns the first error after trying them all.
pub(crate) fn stop_all(system: System, members: &mut [Member]) -> Result<(), CompareError> {
    let mut first_error = None;
    for member in members.iter_mut() {
        if let Err(e) = member.stop() {
            tracing::warn!(?system, member = member.name(), error = %e, "member did not stop cleanly");
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The process ids of the running members.
pub(crate) fn pids(members: &[Member]) -> Vec<u32> {
    members.iter().filter_map(Member::pid).collect()
}

/// Each member's log file.
pub(crate) fn logs(members: &[Member]) -> Vec<PathBuf> {
    members.iter().map(|m| m.log_path().to_path_buf()).collect()
}

pub(crate) fn log_tail(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::with_capacity(LOG_TAIL_BYTES as usize);
    if file.take(LOG_TAIL_BYTES).read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Fails with [`CompareError::PortInUse`] if any of `ports` cannot be bound on
/// 127.0.0.1 right now.
pub(crate) fn check_ports_free(system: System, ports: &[u16]) -> Result<(), CompareError> {
    for &port in ports {
        if let Err(source) = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))) {
            return Err(CompareError::PortInUse {
                system,
                port,
                source,
            });
        }
    }
    Ok(())
}

/// Creates `dir` (and parents), failing with [`CompareError::DirNotEmpty`] if
/// it already holds files: a cluster never starts on someone else's data.
pub(crate) fn fresh_dir(system: System, dir: &Path) -> Result<(), CompareError> {
    if let Ok(mut entries) = fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(CompareError::DirNotEmpty {
                system,
                path: dir.to_path_buf(),
            });
        }
    }
    fs::create_dir_all(dir).map_err(|source| CompareError::Io {
        context: format!("creating a {system} directory"),
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path`.
pub(crate) fn write_file(path: &Path, contents: &str) -> Result<(), CompareError> {
    fs::write(path, contents).map_err(|source| CompareError::Io {
        context: "writing a configuration file".to_owned(),
        path: path.to_path_buf(),
        source,
    })
}

/// The first executable called `name` on `PATH`, if any.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds `count` consecutive ports on 127.0.0.1 that can be bound right now,
/// scanning upwards from `start` (at most `max_tries` candidate ranges).
///
/// Another process can still take a port between this check and its use;
/// cluster start-up then fails with [`CompareError::PortInUse`] or a member
/// exits with a bind error in its log.
pub fn find_free_ports(start: u16, count: u16, max_tries: u16) -> Result<u16, CompareError> {
    assert!(count > 0, "a port range holds at least one port");
    let mut base = start;
    for _ in 0..max_tries {
        let Some(end) = base.checked_add(count) else {
            break;
        };
        let all_free = (base..end)
            .all(|port| TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok());
        if all_free {
            return Ok(base);
        }
        base = end;
    }
    Err(CompareError::NoFreePorts {
        start,
        count,
        tries: max_tries,
    })
}
