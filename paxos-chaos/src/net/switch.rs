//! The userspace Ethernet switch between the TAP devices.
//!
//! One reader thread per port waits for frames on its TAP, learns the source
//! MAC address, picks the destination ports (the learned port, or every
//! other port for broadcast and unknown addresses), and applies the fault of
//! each directed link. Frames that need no delay are written at once; the
//! others go to one delivery thread that keeps a time-ordered queue, bounded
//! in frames and bytes.

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::fault::{LinkFault, Rng};
use super::{NetError, NetStats};

/// How long a thread waits before looking at the stop flag again.
const WAKE_INTERVAL: Duration = Duration::from_millis(50);
/// The largest frame a TAP hands over (64 KiB payload plus header); the
/// default MTU of 1500 makes real frames far smaller.
const FRAME_MAX: usize = 65_536 + 18;
/// Frames read from one TAP before the reader polls again.
const READ_BURST_MAX: usize = 256;
/// Frames the delivery thread takes from the queue at once.
const DELIVER_BURST_MAX: usize = 256;
/// Consecutive read errors after which a reader gives up on its port.
const READ_ERRORS_MAX: u32 = 100;
/// Entries in the MAC table; learning stops beyond (the table is seeded
/// with every port's address, so this only limits strangers).
const MAC_TABLE_MAX: usize = 4096;

/// Limits of the switch's delay queue. Frames beyond either limit are
/// dropped and counted in [`NetStats::queue_full`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Most frames waiting at once.
    pub frames_max: usize,
    /// Most bytes (frame lengths summed) waiting at once.
    pub bytes_max: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            frames_max: 16_384,
            bytes_max: 32 * 1024 * 1024,
        }
    }
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    blocked: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
    queue_full: AtomicU64,
    write_failed: AtomicU64,
    malformed: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// A frame waiting for its delivery time.
struct Pending {
    at: Instant,
    seq: u64,
    port: usize,
    frame: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    // Reversed so that the max-heap yields the earliest frame first; the
    // sequence number keeps frames with equal times in arrival order.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Pending>,
    bytes: usize,
    next_seq: u64,
}

/// State shared by the switch's threads and its owner.
struct Shared {
    stop: AtomicBool,
    ports: Vec<Arc<File>>,
    macs: Mutex<HashMap<[u8; 6], usize>>,
    faults: RwLock<HashMap<(usize, usize), LinkFault>>,
    queue: Mutex<Queue>,
    wake: Condvar,
    limits: QueueLimits,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking switch thread leaves consistent data (every update is a
    // single insert or pop), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running switch; [`Switch::stop`] (or drop) ends its threads.
pub(crate) struct Switch {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Switch {
    /// Starts a switch over `ports` (index = port number), with the MAC
    /// table seeded from `macs`, and per-reader generators from `seed`.
    pub(crate) fn start(
        ports: Vec<File>,
        macs: HashMap<[u8; 6], usize>,
        seed: u64,
        limits: QueueLimits,
    ) -> Result<Switch, NetError> {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            ports: ports.into_iter().map(Arc::new).collect(),
            macs: Mutex::new(macs),
            faults: RwLock::new(HashMap::new()),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            limits,
            counters: Counters::default(),
        });
        let mut switch = Switch {
            shared: Arc::clone(&shared),
            threads: Vec::new(),
        };
        // On a spawn failure `switch` is dropped here, stopping what started.
        for port in 0..shared.ports.len() {
            let s = Arc::clone(&shared);
            let rng = Rng::stream(seed, port as u64 + 1);
            let handle = thread::Builder::new()
                .name(format!("pxc-switch-rx{port}"))
                .spawn(move || s.receive_loop(port, rng))
                .map_err(|source| NetError::Thread { source })?;
            switch.threads.push(handle);
        }
        let s = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name("pxc-switch-tx".to_string())
            .spawn(move || s.deliver_loop())
            .map_err(|source| NetError::Thread { source })?;
        switch.threads.push(handle);
        tracing::debug!(ports = shared.ports.len(), seed, "switch started");
        Ok(switch)
    }

    /// The fault of the link from port `from` to port `to`.
    pub(crate) fn link(&self, from: usize, to: usize) -> LinkFault {
        let faults = self
            .shared
            .faults
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        faults.get(&(from, to)).copied().unwrap_or_default()
    }

    /// Sets the fault of the link from port `from` to port `to`.
    pub(crate) fn set_link(&self, from: usize, to: usize, fault: LinkFault) {
        let mut faults = self
            .shared
            .faults
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if fault.is_clean() {
            faults.remove(&(from, to));
        } else {
            faults.insert((from, to), fault);
        }
    }

    /// Makes every link clean. Frames already in the queue keep their times.
    pub(crate) fn clear(&self) {
        let mut faults = self
            .shared
            .faults
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        faults.clear();
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> NetStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let queued = lock(&self.shared.queue).heap.len() as u64;
        NetStats {
            forwarded: get(&c.forwarded),
            blocked: get(&c.blocked),
            lost: get(&c.lost),
            duplicated: get(&c.duplicated),
            delayed: get(&c.delayed),
            queue_full: get(&c.queue_full),
            write_failed: get(&c.write_failed),
            malformed: get(&c.malformed),
            queued,
        }
    }

    /// Stops and joins the threads (each notices within [`WAKE_INTERVAL`]).
    /// Frames still queued are discarded.
    pub(crate) fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        for handle in self.threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!("a switch thread panicked");
            }
        }
        let mut queue = lock(&self.shared.queue);
        queue.heap.clear();
        queue.bytes = 0;
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn receive_loop(&self, port: usize, mut rng: Rng) {
        let file = &self.ports[port];
        let mut buf = vec![0u8; FRAME_MAX];
        let mut errors = 0u32;
        while !self.stopping() {
            let failure = match super::sys::wait_readable(file, WAKE_INTERVAL) {
                Ok(false) => continue,
                Ok(true) => self.read_burst(port, &mut buf, &mut rng).err(),
                Err(err) => Some(err),
            };
            let Some(err) = failure else {
                errors = 0;
                continue;
            };
            errors += 1;
            if errors >= READ_ERRORS_MAX {
                tracing::error!(port, %err, errors, "switch port keeps failing; its reader stops");
                return;
            }
            tracing::warn!(port, %err, "reading from a switch port failed");
            // Keeps a lasting failure from spinning.
            thread::sleep(WAKE_INTERVAL);
        }
    }

    /// Reads and switches the frames waiting on `port`, at most
    /// [`READ_BURST_MAX`].
    fn read_burst(&self, port: usize, buf: &mut [u8], rng: &mut Rng) -> io::Result<()> {
        for _ in 0..READ_BURST_MAX {
            match (&*self.ports[port]).read(buf) {
                Ok(n) => self.switch_frame(port, &buf[..n], rng),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Forwards one frame that arrived on `from`.
    fn switch_frame(&self, from: usize, frame: &[u8], rng: &mut Rng) {
        // Destination MAC (6), source MAC (6), EtherType (2).
        let (true, Some(dst), Some(src)) = (frame.len() >= 14, mac_at(frame, 0), mac_at(frame, 6))
        else {
            bump(&self.counters.malformed);
            return;
        };
        let known = {
            let mut macs = lock(&self.macs);
            if !is_group(src) && macs.len() < MAC_TABLE_MAX {
                macs.insert(src, from);
            }
            if is_group(dst) {
                None
            } else {
                macs.get(&dst).copied()
            }
        };
        match known {
            Some(to) if to == from => {}
            Some(to) => self.forward(from, to, frame, rng),
            None => {
                for to in (0..self.ports.len()).filter(|&p| p != from) {
                    self.forward(from, to, frame, rng);
                }
            }
        }
    }

    /// Applies the fault of link `from -> to` to one frame.
    fn forward(&self, from: usize, to: usize, frame: &[u8], rng: &mut Rng) {
        let fault = {
            let faults = self.faults.read().unwrap_or_else(PoisonError::into_inner);
            faults.get(&(from, to)).copied()
        };
        let Some(fault) = fault else {
            self.write(to, frame);
            return;
        };
        if fault.blocked {
            bump(&self.counters.blocked);
            return;
        }
        if rng.chance(fault.loss) {
            bump(&self.counters.lost);
            return;
        }
        let copies = if rng.chance(fault.duplicate) {
            bump(&self.counters.duplicated);
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut hold = fault.delay + rng.duration_up_to(fault.jitter);
            if rng.chance(fault.reorder) {
                hold += fault.reorder_hold();
            }
            if hold.is_zero() {
                self.write(to, frame);
            } else {
                self.enqueue(Instant::now() + hold, to, frame);
            }
        }
    }

    fn write(&self, to: usize, frame: &[u8]) {
        // A TAP write hands the whole frame to the kernel or fails; it
        // never blocks and never writes part of a frame.
        match (&*self.ports[to]).write(frame) {
            Ok(n) if n == frame.len() => bump(&self.counters.forwarded),
            Ok(n) => {
                bump(&self.counters.write_failed);
                tracing::trace!(
                    port = to,
                    n,
                    len = frame.len(),
                    "a TAP took part of a frame"
                );
            }
            Err(err) => {
                bump(&self.counters.write_failed);
                tracing::trace!(port = to, %err, "writing a frame failed");
            }
        }
    }

    fn enqueue(&self, at: Instant, to: usize, frame: &[u8]) {
        let mut queue = lock(&self.queue);
        if queue.heap.len() >= self.limits.frames_max
            || queue.bytes.saturating_add(frame.len()) > self.limits.bytes_max
        {
            bump(&self.counters.queue_full);
            return;
        }
        let seq = queue.next_seq;
        queue.next_seq += 1;
        queue.bytes += frame.len();
        let was_first = queue.heap.peek().is_none_or(|first| at < first.at);
        queue.heap.push(Pending {
            at,
            seq,
            port: to,
            frame: frame.to_vec(),
        });
        bump(&self.counters.delayed);
        drop(queue);
        if was_first {
            self.wake.notify_one();
        }
    }

    fn deliver_loop(&self) {
        let mut due = Vec::with_capacity(DELIVER_BURST_MAX);
        while !self.stopping() {
            {
                let mut queue = lock(&self.queue);
                let now = Instant::now();
                while due.len() < DELIVER_BURST_MAX
                    && queue.heap.peek().is_some_and(|first| first.at <= now)
                {
                    if let Some(p) = queue.heap.pop() {
                        queue.bytes -= p.frame.len();
                        due.push(p);
                    }
                }
                if due.is_empty() {
                    let wait = queue
                        .heap
                        .peek()
                        .map_or(WAKE_INTERVAL, |first| {
                            first.at.saturating_duration_since(now)
                        })
                        .min(WAKE_INTERVAL);
                    let (guard, _) = self
                        .wake
                        .wait_timeout(queue, wait)
                        .unwrap_or_else(PoisonError::into_inner);
                    drop(guard);
                    continue;
                }
            }
            for p in due.drain(..) {
                self.write(p.port, &p.frame);
            }
        }
    }
}

fn mac_at(frame: &[u8], at: usize) -> Option<[u8; 6]> {
    frame.get(at..at + 6)?.try_into().ok()
}

/// Broadcast and multicast addresses have the low bit of the first octet set.
fn is_group(mac: [u8; 6]) -> bool {
    mac[0] & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_yields_earliest_first_and_keeps_ties_in_order() {
        let t0 = Instant::now();
        let mut heap = BinaryHeap::new();
        for (seq, ms) in [(0u64, 30u64), (1, 10), (2, 10), (3, 20)] {
            heap.push(Pending {
                at: t0 + Duration::from_millis(ms),
                seq,
                port: 0,
                frame: Vec::new(),
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|p| p.seq)).collect();
        assert_eq!(order, vec![1, 2, 3, 0]);
    }

    #[test]
    fn group_addresses() {
        assert!(is_group([0xff; 6]));
        assert!(is_group([0x33, 0x33, 0, 0, 0, 1]));
        assert!(!is_group([0x02, 0x70, 0x78, 1, 2, 3]));
    }
}
