//! Native smooth weighted round-robin: the default balancer and the fallback of every Wasm one.
//!
//! The nginx smooth-WRR sequence is computed once per generation into a schedule; a request takes
//! the next slot with one relaxed atomic add (no lock). A slot whose endpoint is out (down,
//! drained, or already tried by this request) is passed: the request takes the following slots,
//! so the endpoints still in share its traffic by their weights, as nginx leaves a down peer
//! out of its sums. (Handing the slot to the next index, as this did, gave that one endpoint
//! double traffic while its neighbour was drained.) After [`MAX_SKIPS`] slots it falls back to
//! a linear scan, so a pool mostly out costs O(endpoints), never a stall. Backup endpoints are
//! used only when no primary is eligible.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::policy::{BalancePolicy, Select, SelectCtx};
use crate::upstream::Endpoint;

/// Longest schedule kept; larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 4096;

/// Slots a pick passes over before it scans instead (a pool with most endpoints out).
pub const MAX_SKIPS: usize = 64;

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
        let len = self.schedule.len();
        let untried = |i: usize| !ctx.tried.contains(&(i as u32));
        let mut slot = self.next.fetch_add(1, Ordering::Relaxed);
        for _ in 0..len.min(MAX_SKIPS) {
            let pick = self.schedule[slot % len] as usize;
            if let Some(e) = endpoints.get(pick)
                && !e.is_backup()
                && e.is_eligible()
                && untried(pick)
            {
                return Some(pick);
            }
            slot = self.next.fetch_add(1, Ordering::Relaxed);
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn smooth_order_spreads_weights() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1]), vec![0, 1]);
        assert_eq!(smooth_schedule(&[2, 4]), vec![1, 0, 1]);
    }

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                let cfg = weir_config::Endpoint::at(weir_config::EndpointAddress::Socket(std::net::SocketAddr::from(
                    ([127, 0, 0, 1], 9000 + i as u16),
                )));
                Arc::new(Endpoint::new(i as u32, &cfg, 1, true))
            })
            .collect()
    }

    fn counts(rr: &RoundRobin, eps: &[Arc<Endpoint>], picks: usize) -> Vec<usize> {
        let ctx = SelectCtx::first_try(1);
        let mut n = vec![0; eps.len()];
        for _ in 0..picks {
            n[rr.pick(eps, &ctx).unwrap()] += 1;
        }
        n
    }

    #[test]
    fn a_drained_endpoint_s_share_goes_to_all_the_others_by_weight() {
        let eps = endpoints(3);
        eps[0].set_drained(true);
        assert_eq!(counts(&RoundRobin::new(&[1, 1, 1]), &eps, 300), vec![0, 150, 150]);
        // Weights 1:2:3 with the heaviest out: the other two keep 1:2.
        eps[0].set_drained(false);
        eps[2].set_drained(true);
        assert_eq!(counts(&RoundRobin::new(&[1, 2, 3]), &eps, 300), vec![100, 200, 0]);
    }

    #[test]
    fn large_weights_are_scaled() {
        let s = smooth_schedule(&[10_000, 10_000, 1]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(s.contains(&2));
    }
}
