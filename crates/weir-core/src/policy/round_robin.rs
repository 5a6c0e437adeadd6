//! Native smooth weighted round-robin: the default balancer and the fallback of every Wasm one.
//!
//! The nginx smooth-WRR sequence is computed once per generation into a schedule; a request takes
//! the next slot with one relaxed atomic add (no lock). Ineligible picks fall back to a linear scan
//! from the slot, so a dead endpoint costs O(endpoints), never a stall. Backup endpoints are used
//! only when no primary is eligible.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::policy::{BalancePolicy, Select, SelectCtx};
use crate::upstream::Endpoint;

/// Longest schedule kept; larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 4096;

#[derive(Debug)]
pub struct RoundRobin {
    schedule: Vec<u32>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        RoundRobin {
            schedule: smooth_schedule(weights),
            next: AtomicUsize::new(0),
        }
    }
}

/// The smooth weighted round-robin order (nginx): each endpoint appears `weight` times, spread out.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w.max(1)));
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x.max(1) / g.max(1))).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        for x in &mut w {
            *x = (*x * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl BalancePolicy for RoundRobin {
    fn select(&self, endpoints: &[Arc<Endpoint>], ctx: &SelectCtx<'_>) -> Select {
        match self.pick(endpoints, ctx) {
            Some(i) => Select::Endpoint(i),
            None => Select::Unavailable,
        }
    }
}

impl RoundRobin {
    /// The next eligible endpoint: untried primaries, then untried backups (only when every
    /// primary is out or already failed this request), then tried ones.
    pub fn pick(&self, endpoints: &[Arc<Endpoint>], ctx: &SelectCtx<'_>) -> Option<usize> {
        if endpoints.is_empty() || self.schedule.is_empty() {
            return None;
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed);
        let pick = self.schedule[slot % self.schedule.len()] as usize;
        let untried = |i: usize| !ctx.tried.contains(&(i as u32));
        if let Some(e) = endpoints.get(pick)
            && !e.is_backup()
            && e.is_eligible()
            && untried(pick)
        {
            return Some(pick);
        }
        scan(endpoints, slot, |e, i| !e.is_backup() && e.is_eligible() && untried(i))
            .or_else(|| scan(endpoints, slot, |e, i| e.is_backup() && e.is_eligible() && untried(i)))
            .or_else(|| scan(endpoints, slot, |e, _| !e.is_backup() && e.is_eligible()))
            .or_else(|| scan(endpoints, slot, |e, _| e.is_backup() && e.is_eligible()))
    }
}

/// First endpoint from `start` (wrapping) that satisfies `ok`.
pub fn scan(endpoints: &[Arc<Endpoint>], start: usize, ok: impl Fn(&Endpoint, usize) -> bool) -> Option<usize> {
    let n = endpoints.len();
    (0..n).map(|k| (start + k) % n).find(|&i| ok(&endpoints[i], i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_order_spreads_weights() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1]), vec![0, 1]);
        assert_eq!(smooth_schedule(&[2, 4]), vec![1, 0, 1]);
    }

    #[test]
    fn large_weights_are_scaled() {
        let s = smooth_schedule(&[10_000, 10_000, 1]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(s.contains(&2));
    }
}
