//! The retry budget: retries may add at most `budget` (e.g. 0.2 = 20%) to a pool's request
//! rate over a sliding 10-second window, plus a small floor so that a quiet pool can still
//! retry. Stops retry storms from multiplying the load on a failing pool.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::upstream::coarse_ms;

const BUCKETS: usize = 10;
const BUCKET_MS: u64 = 1000;
/// Retries always allowed per second, whatever the ratio.
const FLOOR_PER_SECOND: u64 = 1;

#[derive(Debug, Default)]
struct Bucket {
    /// Which second this bucket counts (ms / BUCKET_MS).
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    buckets: [Bucket; BUCKETS],
}

impl RetryBudget {
    pub fn new(ratio: f64) -> Self {
        RetryBudget {
            ratio,
            buckets: Default::default(),
        }
    }

    fn current(&self) -> (&Bucket, u64) {
        // Every request passes here: the coarse clock (a few ms) is plenty for seconds, and
        // cheaper than a precise read.
        let second = coarse_ms() / BUCKET_MS;
        let b = &self.buckets[(second as usize) % BUCKETS];
        let seen = b.second.load(Ordering::Acquire);
        if seen != second
            && b.second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        (b, second)
    }

    /// A new request (not a retry) entered the pool.
    pub fn record_request(&self) {
        self.current().0.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits the budget; counts it when it does.
    pub fn try_retry(&self) -> bool {
        let (bucket, second) = self.current();
        let (mut requests, mut retries) = (0u64, 0u64);
        for b in &self.buckets {
            if second.saturating_sub(b.second.load(Ordering::Acquire)) < BUCKETS as u64 {
                requests += b.requests.load(Ordering::Relaxed);
                retries += b.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = (requests as f64 * self.ratio) as u64 + FLOOR_PER_SECOND * BUCKETS as u64;
        if retries < allowed {
            bucket.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_the_ratio_plus_the_floor() {
        let b = RetryBudget::new(0.2);
        for _ in 0..1000 {
            b.record_request();
        }
        let granted = (0..1000).filter(|_| b.try_retry()).count();
        assert_eq!(granted, 200 + 10);
    }

    #[test]
    fn zero_ratio_keeps_only_the_floor() {
        let b = RetryBudget::new(0.0);
        for _ in 0..100 {
            b.record_request();
        }
        assert_eq!((0..100).filter(|_| b.try_retry()).count(), 10);
    }
}
