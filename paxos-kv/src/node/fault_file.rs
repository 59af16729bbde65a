//! Test hooks for the chaos suite: `paxos-node run --fault-file PATH`
//! (hidden from `--help`).
//!
//! The node reads PATH every [`POLL_INTERVAL`] (a missing file means no
//! faults). Each line is `name=value`; blank lines and lines starting with
//! `#` are ignored, a later line overrides an earlier one, and a malformed
//! line is logged (once per change of the file) and ignored:
//!
//! - `sync_delay_ms=N`: every WAL flush sleeps N ms first (a slow disk);
//! - `clock_offset_ms=N` (signed): added to the clock reading the node
//!   hands the kernel and the elector (election, check-quorum and lease
//!   timing). That clock never goes backwards ([`MonotonicClock`]): a
//!   negative jump freezes it until real time catches up (a slow clock), a
//!   positive jump moves it forward at once.
//!
//! Every change of a setting is a `tracing` event.

use paxos_core::Time;
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the fault file is read.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Largest accepted `sync_delay_ms` (one minute).
const MAX_SYNC_DELAY_MS: u64 = 60_000;
/// Largest accepted `clock_offset_ms` either way (one day).
const MAX_CLOCK_OFFSET_MS: i64 = 86_400_000;
/// Longest fault file read, in bytes (the rest is ignored).
const MAX_FAULT_FILE_BYTES: usize = 64 << 10;

/// The faults a fault file asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FaultSettings {
    /// Sleep before every WAL flush, in milliseconds.
    pub(crate) sync_delay_ms: u64,
    /// Added to the clock the kernel sees, in milliseconds (signed).
    pub(crate) clock_offset_ms: i64,
}

/// Why a line of a fault file was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FaultLineError {
    /// No `=` on the line.
    #[error("expected name=value")]
    NoEquals,
    /// A name this build does not know.
    #[error("unknown setting {0:?} (known: sync_delay_ms, clock_offset_ms)")]
    UnknownName(String),
    /// The value is not a number of the right kind or is out of range.
    #[error("{name}: {value:?} is not an integer in {range}")]
    BadValue {
        /// The setting.
        name: &'static str,
        /// The value as written.
        value: String,
        /// The accepted range.
        range: &'static str,
    },
}

/// Parses a fault file. Returns the settings and the ignored lines (line
/// number from 1, the line, why).
pub(crate) fn parse(text: &str) -> (FaultSettings, Vec<(usize, String, FaultLineError)>) {
    let mut settings = FaultSettings::default();
    let mut bad = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            bad.push((i + 1, raw.to_string(), FaultLineError::NoEquals));
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        let r = match name {
            "sync_delay_ms" => value
                .parse::<u64>()
                .ok()
                .filter(|v| *v <= MAX_SYNC_DELAY_MS)
                .map(|v| settings.sync_delay_ms = v)
                .ok_or_else(|| FaultLineError::BadValue {
                    name: "sync_delay_ms",
                    value: value.to_string(),
                    range: "0..=60000",
                }),
            "clock_offset_ms" => value
                .parse::<i64>()
                .ok()
                .filter(|v| v.abs() <= MAX_CLOCK_OFFSET_MS)
                .map(|v| settings.clock_offset_ms = v)
                .ok_or_else(|| FaultLineError::BadValue {
                    name: "clock_offset_ms",
                    value: value.to_string(),
                    range: "-86400000..=86400000",
                }),
            other => Err(FaultLineError::UnknownName(other.to_string())),
        };
        if let Err(e) = r {
            bad.push((i + 1, raw.to_string(), e));
        }
    }
    (settings, bad)
}

/// The settings in force, shared by the poller, the event loop and the
/// WAL sync thread.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    sync_delay_ms: AtomicU64,
    clock_offset_ms: AtomicI64,
}

impl Faults {
    /// The settings in force.
    pub(crate) fn settings(&self) -> FaultSettings {
        FaultSettings {
            sync_delay_ms: self.sync_delay_ms.load(Ordering::Relaxed),
            clock_offset_ms: self.clock_offset_ms.load(Ordering::Relaxed),
        }
    }

    /// Puts `new` in force, with a `tracing` event for each setting that
    /// changes.
    pub(crate) fn set(&self, new: FaultSettings) {
        let old = self.settings();
        if old.sync_delay_ms != new.sync_delay_ms {
            tracing::warn!(
                from = old.sync_delay_ms,
                to = new.sync_delay_ms,
                "fault file: sync_delay_ms changed"
            );
            self.sync_delay_ms
                .store(new.sync_delay_ms, Ordering::Relaxed);
        }
        if old.clock_offset_ms != new.clock_offset_ms {
            tracing::warn!(
                from = old.clock_offset_ms,
                to = new.clock_offset_ms,
                "fault file: clock_offset_ms changed"
            );
            self.clock_offset_ms
                .store(new.clock_offset_ms, Ordering::Relaxed);
        }
    }

    /// Sleeps for the configured sync delay, if any (call before a flush).
    pub(crate) fn delay_sync(&self) {
        let ms = self.sync_delay_ms.load(Ordering::Relaxed);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }

    /// The configured clock offset in milliseconds.
    pub(crate) fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::Relaxed)
    }
}

/// Reads `path` every [`POLL_INTERVAL`] and puts what it says in force
/// (a missing or unreadable file: no faults). Runs until aborted.
pub(crate) async fn poll(path: PathBuf, faults: Arc<Faults>) {
    tracing::warn!(path = %path.display(), "fault file hooks enabled (a test build's setting)");
    let mut last_text: Option<String> = None;
    loop {
        let text = match tokio::fs::read(&path).await {
            Ok(mut bytes) => {
                bytes.truncate(MAX_FAULT_FILE_BYTES);
                String::from_utf8_lossy(&bytes).into_owned()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "fault file unreadable; no faults");
                String::new()
            }
        };
        if last_text.as_deref() != Some(text.as_str()) {
            let (settings, bad) = parse(&text);
            for (line_no, line, why) in bad {
                tracing::warn!(path = %path.display(), line_no, %line, error = %why, "fault file: line ignored");
            }
            faults.set(settings);
            last_text = Some(text);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The clock the kernel and the elector see: real time since `origin` plus
/// the fault offset, never going backwards.
#[derive(Debug)]
pub(crate) struct MonotonicClock {
    origin: Instant,
    /// The last reading handed out, in nanoseconds.
    last: Cell<u64>,
}

/// `real` nanoseconds shifted by `offset_ms`, within `u64`.
fn shifted(real_nanos: u64, offset_ms: i64) -> u64 {
    let v = i128::from(real_nanos) + i128::from(offset_ms) * 1_000_000;
    u64::try_from(v.max(0)).unwrap_or(u64::MAX)
}

impl MonotonicClock {
    /// A clock reading zero at `origin`.
    pub(crate) fn new(origin: Instant) -> MonotonicClock {
        MonotonicClock {
            origin,
            last: Cell::new(0),
        }
    }

    /// The reading for real time `real` (nanoseconds since the origin)
    /// shifted by `offset_ms`: at least every earlier reading.
    pub(crate) fn read_at(&self, real_nanos: u64, offset_ms: i64) -> Time {
        let t = shifted(real_nanos, offset_ms).max(self.last.get());
        self.last.set(t);
        Time::from_nanos(t)
    }

    /// The reading now.
    pub(crate) fn now(&self, offset_ms: i64) -> Time {
        self.read_at(
            Time::from_std(self.origin, Instant::now()).as_nanos(),
            offset_ms,
        )
    }

    /// The real time (nanoseconds since the origin) at which the clock
    /// reaches `t` under `offset_ms`; `None` if it has already.
    pub(crate) fn real_when(&self, t: Time, offset_ms: i64) -> Option<u64> {
        if t.as_nanos() <= self.last.get() {
            return None;
        }
        Some(shifted(t.as_nanos(), offset_ms.saturating_neg()))
    }

    /// The instant at which the clock reaches `t` (now if it has).
    pub(crate) fn instant_of(&self, t: Time, offset_ms: i64) -> Instant {
        match self.real_when(t, offset_ms) {
            Some(real) => self.origin + Duration::from_nanos(real),
            None => Instant::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_takes_both_settings_and_ignores_malformed_lines() {
        let (s, bad) = parse("");
        assert_eq!(s, FaultSettings::default());
        assert!(bad.is_empty());
        let text = "# a comment\n\nsync_delay_ms=25\n clock_offset_ms = -1500 \n";
        let (s, bad) = parse(text);
        assert_eq!(
            s,
            FaultSettings {
                sync_delay_ms: 25,
                clock_offset_ms: -1500
            }
        );
        assert!(bad.is_empty(), "{bad:?}");
        let text = "sync_delay_ms=10\nsync_delay_ms=-1\nclock_offset_ms=abc\nfoo=1\nnonsense\n\
                    clock_offset_ms=99999999999\nsync_delay_ms=60001\nclock_offset_ms=+7\n";
        let (s, bad) = parse(text);
        assert_eq!(
            s,
            FaultSettings {
                sync_delay_ms: 10,
                clock_offset_ms: 7
            },
            "malformed lines leave the earlier value"
        );
        let lines: Vec<usize> = bad.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7]);
        assert!(matches!(bad[2].2, FaultLineError::UnknownName(ref n) if n == "foo"));
        assert_eq!(bad[3].2, FaultLineError::NoEquals);
        assert!(matches!(
            bad[0].2,
            FaultLineError::BadValue {
                name: "sync_delay_ms",
                ..
            }
        ));
    }

    #[test]
    fn the_clock_freezes_on_a_negative_jump_and_leaps_on_a_positive_one() {
        let clock = MonotonicClock::new(Instant::now());
        let ms = |n: u64| n * 1_000_000;
        assert_eq!(clock.read_at(ms(1000), 0), Time::from_nanos(ms(1000)));
        // A jump back by 500 ms: frozen at 1000 until real time reaches 1500.
        assert_eq!(clock.read_at(ms(1100), -500), Time::from_nanos(ms(1000)));
        assert_eq!(clock.read_at(ms(1400), -500), Time::from_nanos(ms(1000)));
        assert_eq!(clock.read_at(ms(1600), -500), Time::from_nanos(ms(1100)));
        // A deadline at 1200 is reached at real 1700 under that offset.
        assert_eq!(
            clock.real_when(Time::from_nanos(ms(1200)), -500),
            Some(ms(1700))
        );
        assert_eq!(clock.real_when(Time::from_nanos(ms(1100)), -500), None);
        // Forward by 2 s at once.
        assert_eq!(clock.read_at(ms(1700), 2000), Time::from_nanos(ms(3700)));
        // Back to no offset: frozen again, never backwards.
        assert_eq!(clock.read_at(ms(1800), 0), Time::from_nanos(ms(3700)));
        // A huge negative offset never goes below zero, nor below the last.
        assert_eq!(
            clock.read_at(ms(1900), -MAX_CLOCK_OFFSET_MS),
            Time::from_nanos(ms(3700))
        );
        let fresh = MonotonicClock::new(Instant::now());
        assert_eq!(fresh.read_at(ms(5), -10), Time::ZERO);
        // Readings are non-decreasing whatever the offsets.
        let mut last = Time::ZERO;
        for (i, off) in [0i64, -300, 250, -1000, 0, 5, -5, 1000, -2000]
            .iter()
            .enumerate()
        {
            let t = fresh.read_at(ms(100 * i as u64), *off);
            assert!(t >= last, "step {i}: {t:?} < {last:?}");
            last = t;
        }
    }
}
