//! `round-robin`: smooth weighted round-robin (nginx's order) over the eligible endpoints;
//! backups only when no primary is eligible. The default balancer of every pool.
//!
//! The weighted order is computed once per pool generation; a pick is one step along it, and
//! only when that endpoint is not eligible does the plugin scan for the next one. So a pick
//! costs the same for 4 or 1,024 endpoints.

use std::cell::RefCell;
use std::collections::HashMap;

use weir_plugin_sdk::*;

/// Longest schedule kept; larger weight sums are scaled down proportionally.
const MAX_SCHEDULE: u64 = 4096;

/// The smooth weighted round-robin order: each endpoint appears `weight` times, spread out.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w.max(1)));
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x.max(1) / g.max(1))).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_SCHEDULE {
        for x in &mut w {
            *x = (*x * MAX_SCHEDULE / total).max(1);
        }
    }
    // Equal weights (after the gcd, all 1): the smooth order is the endpoints in order, and the
    // general loop below would cost n² steps (a million at 1,024 endpoints: past the default
    // `call_timeout` on a slow machine, so every generation's first call fell back to native).
    if w.iter().all(|&x| x == 1) {
        return (0..w.len() as u32).collect();
    }
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total.max(0) as usize);
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

/// Per pool: the schedule of its current generation, the backup flags, and the position.
#[derive(Default)]
struct PoolState {
    generation: u64,
    schedule: Vec<u32>,
    backup: Vec<bool>,
    next: usize,
}

impl PoolState {
    /// The next endpoint: the schedule's when `ok` holds for it, else the first from there on
    /// that passes, trying primaries before backups.
    fn pick(&mut self, n: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.schedule.is_empty() || n == 0 {
            return None;
        }
        let slot = self.next;
        self.next = self.next.wrapping_add(1);
        let i = self.schedule[slot % self.schedule.len()] as usize;
        let backup = |i: usize| self.backup.get(i).copied().unwrap_or(false);
        if i < n && !backup(i) && ok(i) {
            return Some(i);
        }
        let scan = |want_backup: bool| (0..n).map(|k| (i + k) % n).find(|&j| backup(j) == want_backup && ok(j));
        scan(false).or_else(|| scan(true))
    }
}

struct RoundRobin {
    pool: PoolCache,
    state: RefCell<HashMap<u32, PoolState>>,
}

impl Plugin for RoundRobin {
    const NAME: &'static str = "round-robin";

    fn init(config: &Config) -> Result<Self, String> {
        config.only(&[])?;
        Ok(RoundRobin {
            pool: PoolCache::default(),
            state: RefCell::new(HashMap::new()),
        })
    }

    fn select(&self, pool: PoolView, key: SelectKey) -> SelectDecision {
        let n = pool.health.len();
        let mut states = self.state.borrow_mut();
        let st = states.entry(pool.pool_id).or_default();
        if st.generation != pool.generation || st.schedule.is_empty() {
            self.pool.with(&pool, |info| {
                let (weights, backup): (Vec<u32>, Vec<bool>) = match info {
                    Some(s) if s.endpoints.len() == n => s.endpoints.iter().map(|e| (e.weight, e.backup)).unzip(),
                    _ => (vec![1; n], vec![false; n]),
                };
                st.schedule = smooth_schedule(&weights);
                st.backup = backup;
                st.generation = pool.generation;
            });
        }
        let pick = st
            .pick(n, |i| eligible(&pool, &key, i))
            .or_else(|| st.pick(n, |i| healthy(&pool, i)));
        match pick {
            Some(i) => SelectDecision::Endpoint(i as u32),
            None => SelectDecision::Unavailable,
        }
    }
}

plugin!(RoundRobin);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_order() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(smooth_schedule(&[2, 4]), vec![1, 0, 1]);
    }

    fn state(weights: &[u32], backup: &[bool]) -> PoolState {
        PoolState {
            generation: 1,
            schedule: smooth_schedule(weights),
            backup: backup.to_vec(),
            next: 0,
        }
    }

    #[test]
    fn skips_ineligible_and_uses_backups_last() {
        let mut s = state(&[1, 1, 1], &[false, false, true]);
        let picks: Vec<_> = (0..4).filter_map(|_| s.pick(3, |i| i != 1)).collect();
        assert_eq!(picks, vec![0, 0, 0, 0]);
        let mut s = state(&[1, 1, 1], &[false, false, true]);
        assert_eq!(s.pick(3, |i| i == 2), Some(2));
        assert_eq!(s.pick(3, |_| false), None);
    }

    #[test]
    fn equal_weights_take_the_endpoints_in_order_at_any_size() {
        for n in [1usize, 2, 3, 7, 1024] {
            assert_eq!(smooth_schedule(&vec![3; n]), (0..n as u32).collect::<Vec<_>>());
        }
        // Weights equal only once divided by their gcd take the same shortcut.
        assert_eq!(smooth_schedule(&[2, 2, 2]), vec![0, 1, 2]);
    }

    #[test]
    fn large_weights_are_scaled() {
        let s = smooth_schedule(&[10_000, 10_000, 1]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(s.contains(&2));
    }
}
