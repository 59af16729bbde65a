//! Exponential reconnect backoff with jitter.

use std::time::Duration;

/// Doubling delays from `initial_ms` up to `max_ms`, each drawn uniformly from
/// `[d/2, d]` ("equal jitter") so that nodes restarted together do not dial in
/// lock step.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    current_ms: u64,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(initial_ms: u64, max_ms: u64, seed: u64) -> Backoff {
        assert!(
            initial_ms >= 1 && max_ms >= initial_ms,
            "invariant: 1 <= initial_ms <= max_ms (checked by config validation)"
        );
        Backoff {
            initial_ms,
            max_ms,
            current_ms: initial_ms,
            // xorshift must not start at zero.
            rng: seed | 1,
        }
    }

    /// The delay before the next attempt; doubles the base for the one after.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.current_ms;
        self.current_ms = (self.current_ms.saturating_mul(2)).min(self.max_ms);
        let half = base / 2;
        let jitter = self.next_rand() % (base - half + 1);
        Duration::from_millis(half + jitter)
    }

    /// After a successful connection: start again from the initial delay.
    pub(crate) fn reset(&mut self) {
        self.current_ms = self.initial_ms;
    }

    fn next_rand(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_bounded_and_reset() {
        let mut b = Backoff::new(100, 1_000, 7);
        let mut bases = vec![100u64, 200, 400, 800, 1_000, 1_000];
        for base in bases.drain(..) {
            let d = b.next_delay().as_millis() as u64;
            assert!(
                d >= base / 2 && d <= base,
                "delay {d} outside [{}, {base}]",
                base / 2
            );
        }
        b.reset();
        let d = b.next_delay().as_millis() as u64;
        assert!((50..=100).contains(&d));
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let a: Vec<_> = {
            let mut b = Backoff::new(1_000, 1_000, 1);
            (0..8).map(|_| b.next_delay()).collect()
        };
        let c: Vec<_> = {
            let mut b = Backoff::new(1_000, 1_000, 99);
            (0..8).map(|_| b.next_delay()).collect()
        };
        assert_ne!(a, c);
    }
}
