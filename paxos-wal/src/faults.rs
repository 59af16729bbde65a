//! Fault injection for tests: make the Nth flush, write or segment creation
//! fail.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which IO call a fault hits.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// `msync`, `fdatasync` or `fsync` (fails with EIO).
    Flush,
    /// Creating or zero-filling a segment file (fails with ENOSPC).
    Create,
    /// A positioned write of records, a header, a marker or zeros into a
    /// segment file (fails with EIO).
    Write,
}

/// A test seam: counts calls per [`FaultPoint`] and fails the chosen one.
///
/// Not part of the stable API; used by this crate's tests.
#[doc(hidden)]
#[derive(Debug, Default)]
pub struct FaultPlan {
    flush_countdown: AtomicU64,
    create_countdown: AtomicU64,
    write_countdown: AtomicU64,
}

impl FaultPlan {
    /// Make the `n`th flush from now fail (1 = the next one). 0 disarms.
    pub fn fail_flush_in(&self, n: u64) {
        self.flush_countdown.store(n, Ordering::SeqCst);
    }

    /// Make the `n`th segment creation from now fail with ENOSPC. 0 disarms.
    pub fn fail_create_in(&self, n: u64) {
        self.create_countdown.store(n, Ordering::SeqCst);
    }

    /// Make the `n`th segment write from now fail with EIO. 0 disarms.
    pub fn fail_write_in(&self, n: u64) {
        self.write_countdown.store(n, Ordering::SeqCst);
    }

    pub(crate) fn check(&self, point: FaultPoint) -> io::Result<()> {
        let (counter, errno) = match point {
            FaultPoint::Flush => (&self.flush_countdown, libc::EIO),
            FaultPoint::Create => (&self.create_countdown, libc::ENOSPC),
            FaultPoint::Write => (&self.write_countdown, libc::EIO),
        };
        let fire = counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                if n == 0 {
                    None
                } else {
                    Some(n - 1)
                }
            })
            .is_ok_and(|prev| prev == 1);
        if fire {
            Err(io::Error::from_raw_os_error(errno))
        } else {
            Ok(())
        }
    }
}

pub(crate) fn check(plan: Option<&FaultPlan>, point: FaultPoint) -> io::Result<()> {
    plan.map_or(Ok(()), |p| p.check(point))
}
