//! The system calls and `ip` commands behind the network: TAP devices,
//! namespace entry, command runs with a deadline, and the lock that keeps
//! two networks from taking the same subnet.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::NetError;

/// How long one `ip` command may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// `_IOW('T', 202, int)`: attach the open `/dev/net/tun` file to a device.
const TUNSETIFF: u64 = 0x4004_54ca;
/// A TAP device: Ethernet frames, not IP packets.
const IFF_TAP: libc::c_short = 0x0002;
/// No packet-information header in front of each frame.
const IFF_NO_PI: libc::c_short = 0x1000;
/// Interface names are at most 15 bytes plus the terminating zero.
const IFNAMSIZ: usize = 16;

/// The `struct ifreq` layout the TUNSETIFF ioctl reads and fills: the name,
/// the flags, and padding up to the union's full size (40 bytes on 64-bit).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    pad: [u8; 22],
}

/// An open TAP device: the file carries frames, `name` is the interface.
#[derive(Debug)]
pub(crate) struct Tap {
    pub(crate) file: File,
    pub(crate) name: String,
}

/// Creates a TAP device in the calling thread's network namespace. The name
/// pattern contains `%d`, which the kernel replaces by the first free number.
/// The device lives as long as the returned file stays open. The file is
/// non-blocking: readers wait with [`wait_readable`].
pub(crate) fn open_tap(pattern: &str) -> Result<Tap, NetError> {
    let tap_err = |what: &'static str| move |source: io::Error| NetError::Tap { what, source };
    if pattern.len() >= IFNAMSIZ {
        return Err(NetError::Tap {
            what: "TAP name pattern too long",
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(tap_err("open /dev/net/tun"))?;
    let mut req = IfReq {
        name: [0; IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        pad: [0; 22],
    };
    req.name[..pattern.len()].copy_from_slice(pattern.as_bytes());
    // SAFETY: the fd is open for the call's duration and `req` is a live,
    // properly sized `struct ifreq` the kernel may read and write.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(NetError::Tap {
            what: "TUNSETIFF",
            source: io::Error::last_os_error(),
        });
    }
    let len = req.name.iter().position(|&b| b == 0).unwrap_or(IFNAMSIZ);
    let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
    tracing::debug!(tap = %name, "TAP device created");
    Ok(Tap { file, name })
}

/// Waits up to `timeout` for `file` to become readable; `Ok(false)` on
/// timeout or interruption.
pub(crate) fn wait_readable(file: &File, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, whose fd stays open during the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(err);
    }
    if rc > 0 && pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
        return Err(io::Error::other(format!(
            "poll reports revents {:#x}",
            pfd.revents
        )));
    }
    Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
}

/// The path `ip netns add NAME` binds the namespace to (iproute2's
/// `NETNS_RUN_DIR`).
pub(crate) fn netns_path(name: &str) -> String {
    format!("/var/run/netns/{name}")
}

/// Runs `f` on a fresh thread that has entered the named network namespace,
/// and returns its result. A panic in `f` is passed on to the caller.
pub(crate) fn run_in_netns<T, F>(name: &str, f: F) -> Result<T, NetError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let path = netns_path(name);
    let ns = File::open(&path).map_err(|source| NetError::Netns {
        name: name.to_string(),
        source,
    })?;
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name(format!("pxc-in-{name}"))
            .spawn_scoped(scope, || {
                // SAFETY: a valid namespace fd; setns changes only this
                // thread's network namespace, which ends with the thread.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc < 0 {
                    return Err(NetError::Netns {
                        name: name.to_string(),
                        source: io::Error::last_os_error(),
                    });
                }
                Ok(f())
            })
            .map_err(|source| NetError::Thread { source })?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Turns IPv6 off in the calling thread's network namespace (all present
/// and future interfaces), so that no router solicitations or multicast
/// reports cross the switch. Best effort: a kernel without IPv6 is fine.
pub(crate) fn disable_ipv6_here() {
    for conf in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
        if let Err(err) = std::fs::write(&path, b"1") {
            tracing::debug!(%path, %err, "could not turn IPv6 off");
        }
    }
}

/// Turns IPv6 off on one interface of the calling thread's namespace.
pub(crate) fn disable_ipv6_on(ifname: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    if let Err(err) = std::fs::write(&path, b"1") {
        tracing::debug!(%path, %err, "could not turn IPv6 off");
    }
}

/// Runs `ip` with `args` (and `stdin` as its standard input, for
/// `-batch -`), killing it after [`COMMAND_TIMEOUT`]. Returns its stdout.
pub(crate) fn ip(args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run(cmd, stdin)
}

/// Runs a command with a deadline; a non-zero exit is an error carrying
/// stderr.
pub(crate) fn run(mut cmd: Command, stdin: Option<&str>) -> Result<String, NetError> {
    let shown = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let io_err = |source: io::Error| NetError::CommandIo {
        command: shown.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(io_err)?;
    // Pipes are served on threads so that a full pipe never stalls the
    // deadline below.
    let out = child.stdout.take().map(spawn_reader);
    let err = child.stderr.take().map(spawn_reader);
    let writer = match (stdin, child.stdin.take()) {
        (Some(text), Some(mut pipe)) => {
            let text = text.to_string();
            Some(thread::spawn(move || {
                // The child may exit early on a bad line; its status says why.
                if let Err(err) = pipe.write_all(text.as_bytes()) {
                    tracing::debug!(%err, "writing a command's stdin failed");
                }
            }))
        }
        _ => None,
    };
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait().map_err(io_err)? {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => {
                if let Err(err) = child.kill() {
                    tracing::warn!(command = %shown, %err, "killing a stuck command failed");
                }
                // Reap it; kill was sent to this child only.
                let _ = child.wait();
                break None;
            }
            None => thread::sleep(Duration::from_millis(2)),
        }
    };
    if let Some(writer) = writer {
        // The child has exited, so the pipe is closed and the write is over.
        let _ = writer.join();
    }
    let stdout = out.map(join_reader).unwrap_or_default();
    let stderr = err.map(join_reader).unwrap_or_default();
    let Some(status) = status else {
        return Err(NetError::CommandTimeout {
            command: shown,
            timeout: COMMAND_TIMEOUT,
        });
    };
    if !status.success() {
        return Err(NetError::Command {
            command: shown,
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    Ok(stdout)
}

fn spawn_reader<R: Read + Send + 'static>(mut pipe: R) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        // Reads to the pipe's end; the child's exit or kill closes it.
        if let Err(err) = pipe.read_to_end(&mut buf) {
            tracing::debug!(%err, "reading a command's output failed");
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn join_reader(handle: thread::JoinHandle<String>) -> String {
    handle.join().unwrap_or_default()
}

/// Whether a process with this pid exists (alive or a zombie).
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(raw, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The effective user id of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// An exclusive lock on a file shared by every process that creates a
/// network, held while a subnet is chosen and claimed. Released on drop.
pub(crate) struct SubnetLock {
    _file: File,
}

const LOCK_PATH: &str = "/run/paxos-chaos-net.lock";
const LOCK_WAIT: Duration = Duration::from_secs(30);

impl SubnetLock {
    pub(crate) fn acquire() -> Result<Self, NetError> {
        let lock_err = |source: io::Error| NetError::Lock {
            path: LOCK_PATH.to_string(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(LOCK_PATH)
            .map_err(lock_err)?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            // SAFETY: a valid open fd; flock has no memory arguments.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(SubnetLock { _file: file });
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK)
                && err.kind() != io::ErrorKind::Interrupted
            {
                return Err(lock_err(err));
            }
            if Instant::now() >= deadline {
                return Err(lock_err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("still held by another process after {LOCK_WAIT:?}"),
                )));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The IPv4 routes of this thread's namespace as (destination, prefix mask),
/// from `/proc/net/route`. Lines that do not parse are skipped.
pub(crate) fn ipv4_routes() -> Result<Vec<(Ipv4Addr, Ipv4Addr)>, NetError> {
    let text =
        std::fs::read_to_string("/proc/net/route").map_err(|source| NetError::CommandIo {
            command: "read /proc/net/route".to_string(),
            source,
        })?;
    // The kernel prints each address as the hex of its in-memory
    // (network-order) word, so the native byte order gives the octets back.
    let parse = |hex: &str| {
        u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((parse(fields.get(1)?)?, parse(fields.get(7)?)?))
        })
        .collect())
}

/// Whether the /24 starting at `net` overlaps a route other than the
/// default route.
pub(crate) fn overlaps(net: Ipv4Addr, routes: &[(Ipv4Addr, Ipv4Addr)]) -> bool {
    let net = u32::from(net) & 0xFFFF_FF00;
    routes.iter().any(|&(dest, mask)| {
        let (dest, mask) = (u32::from(dest), u32::from(mask));
        if mask == 0 {
            return false;
        }
        // One prefix contains the other when they agree on the shorter mask.
        let shorter = mask & 0xFFFF_FF00;
        (net & shorter) == (dest & shorter)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_of_prefixes() {
        let r = |d: [u8; 4], m: [u8; 4]| (Ipv4Addr::from(d), Ipv4Addr::from(m));
        let net = Ipv4Addr::new(10, 100, 7, 0);
        assert!(!overlaps(net, &[r([0, 0, 0, 0], [0, 0, 0, 0])]));
        assert!(overlaps(net, &[r([10, 0, 0, 0], [255, 0, 0, 0])]));
        assert!(overlaps(net, &[r([10, 100, 7, 0], [255, 255, 255, 0])]));
        assert!(overlaps(net, &[r([10, 100, 7, 128], [255, 255, 255, 128])]));
        assert!(!overlaps(net, &[r([10, 100, 8, 0], [255, 255, 255, 0])]));
        assert!(!overlaps(net, &[r([192, 0, 2, 0], [255, 255, 255, 0])]));
    }
}
