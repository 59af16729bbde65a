//! A byte budget shared between tasks: a count of bytes in use against a
//! limit, taken and given back with one atomic operation each.
//!
//! The node bounds what waits in its client queues by bytes with these. A
//! tokio `Semaphore` did the same job, but its every release takes the
//! semaphore's waiter lock, on every request and every answer; this takes a
//! lock only while someone waits for room.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// A byte budget. Share it behind an `Arc`.
#[derive(Debug)]
pub(crate) struct ByteBudget {
    used: AtomicUsize,
    limit: usize,
    /// Tasks waiting in [`ByteBudget::take`].
    waiting: AtomicUsize,
    freed: Notify,
}

/// Bytes taken from a [`ByteBudget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Share {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub(crate) fn new(limit: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            used: AtomicUsize::new(0),
            limit,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Bytes taken now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `bytes` if they fit. A request larger than the whole limit
    /// fits only into an empty budget, so it cannot wait for ever.
    pub(crate) fn try_take(self: &Arc<Self>, bytes: usize) -> Option<Share> {
        // Compare-and-swap, not add-then-undo: an undone add would be seen
        // by other takers as bytes in use that no share will ever give back.
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used != 0 && used.saturating_add(bytes) > self.limit {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Share {
                        budget: Arc::clone(self),
                        bytes,
                    })
                }
                Err(now) => used = now,
            }
        }
    }

    /// Takes `bytes`, waiting until they fit.
    pub(crate) async fn take(self: &Arc<Self>, bytes: usize) -> Share {
        if let Some(s) = self.try_take(bytes) {
            return s;
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let share = loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the second look: a release in between wakes us.
            freed.as_mut().enable();
            if let Some(s) = self.try_take(bytes) {
                break s;
            }
            freed.await;
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        share
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.freed.notify_waiters();
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn takes_within_the_limit_and_gives_back_on_drop() {
        let b = ByteBudget::new(100);
        let a = b.try_take(60).unwrap();
        assert!(b.try_take(50).is_none(), "over the limit");
        let c = b.try_take(40).unwrap();
        assert_eq!(b.used(), 100);
        drop(a);
        assert_eq!(b.used(), 40);
        drop(c);
        assert_eq!(b.used(), 0);
        let big = b
            .try_take(1000)
            .expect("an empty budget takes anything once");
        assert!(b.try_take(1).is_none());
        drop(big);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn a_waiter_is_woken_when_room_is_given_back() {
        let b = ByteBudget::new(10);
        let first = b.try_take(10).unwrap();
        let b2 = Arc::clone(&b);
        let waiter = tokio::spawn(async move { b2.take(5).await.bytes });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no room yet");
        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(got, 5);
        assert_eq!(b.used(), 0);
    }
}
