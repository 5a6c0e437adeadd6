//! Waiting for a connection in use to come free, when weir has no port or file descriptor to
//! open a new one (`EADDRNOTAVAIL`, `EMFILE`: [`crate::upstream::ConnectError::is_local`]).
//! An HTTP/1.1 request waits for a pooled connection to be checked in; an HTTP/2 one for a
//! stream to end on one of the endpoint's connections. Either goes on it instead of failing.
//!
//! The side that frees (a checkin, a stream's end) pays one relaxed load while nobody waits, and
//! no fence: a wake-up lost in the race between a waiter's look and its wait is made up by the
//! next look, [`RELOOK`] later at most.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// How long a waiter sleeps between looks when no wake-up comes.
const RELOOK: Duration = Duration::from_millis(10);

/// The requests waiting for something of an endpoint's to come free.
#[derive(Default, Debug)]
pub struct Freed {
    waiters: AtomicUsize,
    notify: Notify,
}

impl Freed {
    /// Wakes one waiter, if any: called once something came free.
    #[inline]
    pub fn wake_one(&self) {
        if self.waiters.load(Ordering::Relaxed) != 0 {
            self.notify.notify_one();
        }
    }

    /// What `look` finds, trying again on each wake-up (and every [`RELOOK`]) until `budget` has
    /// passed.
    pub async fn within<T>(&self, budget: Duration, mut look: impl FnMut() -> Option<T>) -> Option<T> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiters);
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            if let Some(found) = look() {
                return Some(found);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return None;
            }
            let _ = tokio::time::timeout_at(deadline.min(now + RELOOK), self.notify.notified()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[tokio::test]
    async fn a_waiter_gets_what_comes_free_and_gives_up_after_its_budget() {
        let freed = Arc::new(Freed::default());
        let free = Arc::new(AtomicBool::new(false));
        assert_eq!(freed.within(Duration::from_millis(30), || None::<()>).await, None);
        assert_eq!(
            freed.waiters.load(Ordering::Relaxed),
            0,
            "a waiter that gave up is no longer counted"
        );

        let (f, fr) = (free.clone(), freed.clone());
        let freer = tokio::spawn(async move {
            while fr.waiters.load(Ordering::Relaxed) == 0 {
                tokio::task::yield_now().await;
            }
            f.store(true, Ordering::Relaxed);
            fr.wake_one();
        });
        let got = freed
            .within(Duration::from_secs(10), || free.load(Ordering::Relaxed).then_some(7))
            .await;
        assert_eq!(got, Some(7));
        freer.await.ok();
    }
}
