//! `max_in_flight`: at most so many requests in flight to an endpoint (nginx's `max_conns`,
//! HAProxy's `maxconn`), for replicas that degrade when pushed past what they can hold. An
//! endpoint at its limit takes no new request; when every endpoint a request could go to is at
//! its limit, the request waits in its pool's queue for a slot, up to `timeouts.queue`
//! (HAProxy's `timeout queue`), instead of being refused at once.
//!
//! The limit is enforced where the request is counted ([`crate::upstream::InFlight::try_new`]),
//! so concurrent requests cannot overshoot it. A waiting request is woken, oldest first, when a
//! capped endpoint of its pool finishes a request; nothing is done per request for endpoints
//! without a limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

/// The requests of one pool waiting for a slot. One per pool of a gateway, handed from one
/// generation to the next with the pool's endpoints (`generation.rs`).
#[derive(Default, Debug)]
pub struct PoolQueue {
    waiting: AtomicU32,
    freed: Notify,
    /// Requests that waited `timeouts.queue` in vain (`weir_queue_timeouts_total`).
    timed_out: AtomicU64,
}

impl PoolQueue {
    /// Requests waiting now (`weir_requests_queued`).
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests that waited `timeouts.queue` in vain, since the pool was first configured.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// A limit of the pool changed (a reload): every waiting request looks again.
    pub fn limit_changed(&self) {
        self.freed.notify_waiters();
    }

    /// A capped endpoint of the pool has a slot free: the oldest waiting request looks again.
    pub fn slot_freed(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.freed.notify_one();
        }
    }
}

/// One request's place in its pool's queue, until `deadline`. Counted as waiting from the
/// moment it is made, so a slot freed between the request's last look and its wait still
/// wakes it.
pub struct Ticket {
    queue: Arc<PoolQueue>,
    deadline: Instant,
}

impl Ticket {
    pub fn new(queue: Arc<PoolQueue>, deadline: Instant) -> Self {
        queue.waiting.fetch_add(1, Ordering::AcqRel);
        Ticket { queue, deadline }
    }

    /// Waits for a slot to be freed in the pool; `false` once the deadline has passed (counted).
    pub async fn wait(&self) -> bool {
        tokio::select! {
            _ = self.queue.freed.notified() => true,
            _ = tokio::time::sleep_until(self.deadline) => {
                self.queue.timed_out.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_freed_slot_wakes_a_waiting_ticket_and_nothing_else_does() {
        let q = Arc::new(PoolQueue::default());
        // Nobody waiting: a freed slot leaves nothing behind.
        q.slot_freed();
        let t = Ticket::new(q.clone(), Instant::now() + Duration::from_millis(50));
        assert_eq!(q.waiting(), 1);
        assert!(!t.wait().await, "woken without a freed slot");
        assert_eq!(q.timed_out(), 1);
        drop(t);
        let t = Ticket::new(q.clone(), Instant::now() + Duration::from_secs(5));
        drop(Ticket::new(q.clone(), Instant::now()));
        // Freed before the wait starts: the wait still ends at once.
        q.slot_freed();
        assert!(t.wait().await);
        drop(t);
        assert_eq!(q.waiting(), 0);
    }
}
