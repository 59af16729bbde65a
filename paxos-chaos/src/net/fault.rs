//! What can go wrong on one directed link, and the seeded coin that decides
//! it frame by frame.

use std::time::Duration;

use super::NetError;

/// The longest `delay + jitter` a link may carry. Frames wait in the
/// switch's queue for that long, so a larger figure is almost surely a
/// mistake (seconds where milliseconds were meant) rather than a fault.
pub const DELAY_MAX: Duration = Duration::from_secs(60);

/// The shortest extra hold of a frame picked for reordering (see
/// [`LinkFault::reorder`]).
pub const REORDER_HOLD_MIN: Duration = Duration::from_millis(10);

/// The faults of one directed link (frames from one port to another).
///
/// The default is a clean link: nothing blocked, no delay, no loss. The
/// switch applies the fields in this order to every frame crossing the link:
/// `blocked`, then `loss`, then `duplicate` (the copy gets its own delay),
/// then the delay of each copy: `delay`, plus a uniform draw in
/// `[0, jitter]`, plus, with probability `reorder`, an extra hold.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LinkFault {
    /// Every frame is dropped (counted in [`NetStats::blocked`](super::NetStats::blocked)).
    pub blocked: bool,
    /// Fixed one-way delay added to every frame.
    pub delay: Duration,
    /// Upper bound of a uniformly drawn extra delay per frame. Frames with
    /// different draws overtake each other, so jitter alone reorders.
    pub jitter: Duration,
    /// Probability in `[0, 1]` that a frame is dropped.
    pub loss: f64,
    /// Probability in `[0, 1]` that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability in `[0, 1]` that a frame is held back an extra
    /// `max(delay + jitter, 10 ms)`, so that the frames sent after it during
    /// that time arrive before it.
    pub reorder: f64,
}

impl LinkFault {
    /// A link that drops everything.
    pub fn blocked() -> Self {
        LinkFault {
            blocked: true,
            ..LinkFault::default()
        }
    }

    /// A link that delays every frame by `delay` and does nothing else.
    pub fn delayed(delay: Duration) -> Self {
        LinkFault {
            delay,
            ..LinkFault::default()
        }
    }

    /// A link that drops each frame with probability `loss`.
    pub fn lossy(loss: f64) -> Self {
        LinkFault {
            loss,
            ..LinkFault::default()
        }
    }

    /// Whether this link behaves like a plain cable.
    pub fn is_clean(&self) -> bool {
        *self == LinkFault::default()
    }

    /// Checks that the probabilities are in `[0, 1]` and the delay is at
    /// most [`DELAY_MAX`].
    pub fn validate(&self) -> Result<(), NetError> {
        for (name, p) in [
            ("loss", self.loss),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(NetError::InvalidFault {
                    reason: format!("{name} is {p}, not a probability in [0, 1]"),
                });
            }
        }
        let total = self.delay.saturating_add(self.jitter);
        if total > DELAY_MAX {
            return Err(NetError::InvalidFault {
                reason: format!("delay + jitter is {total:?}, more than {DELAY_MAX:?}"),
            });
        }
        Ok(())
    }

    /// The extra hold of a frame picked for reordering.
    pub(crate) fn reorder_hold(&self) -> Duration {
        self.delay.saturating_add(self.jitter).max(REORDER_HOLD_MIN)
    }
}

/// The toolkit's seeded generator; a link's stream is `Rng::stream(seed, link)`.
pub(crate) use paxos_core::rng::Rng;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws_and_streams_differ() {
        let mut a = Rng::stream(7, 1);
        let mut b = Rng::stream(7, 1);
        let mut c = Rng::stream(7, 2);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..8).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
    }

    #[test]
    fn chance_follows_its_probability() {
        let mut rng = Rng::stream(42, 0);
        let hits = (0..10_000).filter(|_| rng.chance(0.3)).count();
        assert!((2_500..3_500).contains(&hits), "hits {hits}");
        assert!((0..100).all(|_| !rng.chance(0.0)));
        assert!((0..100).all(|_| rng.chance(1.0)));
    }

    #[test]
    fn duration_draws_stay_in_range() {
        let mut rng = Rng::stream(3, 0);
        let max = Duration::from_millis(5);
        assert!((0..1000).all(|_| rng.duration_up_to(max) <= max));
        assert_eq!(rng.duration_up_to(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn validation_rejects_bad_faults() {
        assert!(LinkFault::default().validate().is_ok());
        assert!(LinkFault::lossy(1.5).validate().is_err());
        assert!(LinkFault::lossy(f64::NAN).validate().is_err());
        assert!(LinkFault::delayed(Duration::from_secs(61))
            .validate()
            .is_err());
        let f = LinkFault {
            reorder: -0.1,
            ..LinkFault::default()
        };
        assert!(f.validate().is_err());
    }
}
