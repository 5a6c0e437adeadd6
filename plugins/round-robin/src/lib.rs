//! `round-robin`: smooth weighted round-robin (nginx's order) over the eligible endpoints;
//! backups only when no primary is eligible. The default balancer of every pool.
//!
//! A pick is one step of nginx's algorithm, taken when the pick is made, and remembered: after
//! the first cycle (the weight sum's worth of picks) a pick is a lookup. Nothing is computed
//! ahead, so a new pool generation costs no call more than another (computing the whole
//! order at once took n² steps, past `call_timeout` for a pool of 1,024). Endpoints of equal
//! weight follow one another in index order, so a step compares one candidate per distinct
//! weight: one for equal weights whatever the pool size, a hundred at most (see
//! [`MAX_TOTAL`]). When the endpoint picked is not eligible (down, drained, or already tried
//! by this request), the pick takes the following ones of the order, so the endpoints still in
//! share its traffic by their weights, as nginx leaves a down peer out of its sums; after
//! [`MAX_SKIPS`] it scans by index instead.

use std::cell::RefCell;
use std::collections::HashMap;

use weir_plugin_sdk::*;

/// Largest weight sum kept; larger sums are scaled down proportionally (each weight stays at
/// least 1). Distinct weights summing to at most this plus the pool size number about a
/// hundred at most, which bounds the cost of a step.
const MAX_TOTAL: u64 = 4096;

/// Picks of the order passed over before a pick scans by index (a pool with most endpoints
/// out).
const MAX_SKIPS: usize = 64;

/// nginx's smooth weighted round-robin, one pick per `next`: over a cycle of the
/// (reduced) weight sum, each endpoint is picked `weight` times, spread out.
pub struct Smooth {
    /// The weight sum, and the step within the current cycle.
    total: i64,
    step: i64,
    /// The picks of the first cycle, as they are made; once whole, later cycles read it.
    cycle: Vec<u32>,
    /// The algorithm's state during the first cycle (dropped after it).
    classes: Vec<Class>,
}

/// Endpoints sharing one weight, in index order. Members before `next` have been picked
/// `rounds + 1` times this cycle, the others `rounds` times.
struct Class {
    weight: i64,
    members: Vec<u32>,
    rounds: i64,
    next: usize,
}

/// The weights the order is built from: each at least 1, divided by their gcd, and scaled down
/// when they sum to more than [`MAX_TOTAL`].
fn reduced(weights: &[u32]) -> Vec<u64> {
    let g = weights.iter().fold(0u32, |g, &w| gcd(g, w.max(1)));
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x.max(1) / g.max(1))).collect();
    let sum: u64 = w.iter().sum();
    if sum > MAX_TOTAL {
        for x in &mut w {
            *x = (*x * MAX_TOTAL / sum).max(1);
        }
    }
    w
}

impl Smooth {
    pub fn new(weights: &[u32]) -> Smooth {
        let w = reduced(weights);
        let mut classes: Vec<Class> = Vec::new();
        let mut class_of: HashMap<u64, usize> = HashMap::new();
        for (i, &x) in w.iter().enumerate() {
            let k = *class_of.entry(x).or_insert_with(|| {
                classes.push(Class {
                    weight: x as i64,
                    members: Vec::new(),
                    rounds: 0,
                    next: 0,
                });
                classes.len() - 1
            });
            classes[k].members.push(i as u32);
        }
        let total = w.iter().map(|&x| x as i64).sum();
        Smooth {
            total,
            step: 0,
            cycle: Vec::with_capacity(total as usize),
            classes,
        }
    }
}

/// Endlessly, the next endpoint in the weighted order; nothing for an empty pool.
impl Iterator for Smooth {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.total > 0 && self.cycle.len() as i64 == self.total {
            let index = self.cycle.get(self.step as usize).copied();
            self.step = (self.step + 1) % self.total;
            return index;
        }
        let t = self.step + 1;
        // nginx adds each weight to the endpoint's `current` and picks the largest (the lowest
        // index on a tie): at step t that value is t·weight − total·(times picked), largest in
        // a class for its next member in index order.
        let mut best: Option<(i64, u32, usize)> = None;
        for (k, c) in self.classes.iter().enumerate() {
            let value = t * c.weight - self.total * c.rounds;
            let index = c.members[c.next];
            if best.is_none_or(|(v, i, _)| value > v || (value == v && index < i)) {
                best = Some((value, index, k));
            }
        }
        let (_, index, k) = best?;
        let c = &mut self.classes[k];
        c.next += 1;
        if c.next == c.members.len() {
            c.next = 0;
            c.rounds += 1;
        }
        // After a whole cycle every endpoint has had its weight in picks and all values are
        // back to zero: the next cycle is the same.
        self.cycle.push(index);
        self.step = t % self.total;
        if self.step == 0 {
            self.classes = Vec::new();
        }
        Some(index)
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Per pool: the weighted order of its current generation and the backup flags.
struct PoolState {
    generation: u64,
    order: Smooth,
    backup: Vec<bool>,
}

impl PoolState {
    /// The next endpoint: the weighted order's when `ok` holds for it, else the first from
    /// there on that passes, trying primaries before backups.
    fn pick(&mut self, n: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let backup = |i: usize| self.backup.get(i).copied().unwrap_or(false);
        let mut i = self.order.next()? as usize;
        for _ in 0..MAX_SKIPS.min(self.order.total as usize) {
            if i < n && !backup(i) && ok(i) {
                return Some(i);
            }
            i = self.order.next()? as usize;
        }
        let scan = |want_backup: bool| (0..n).map(|k| (i + k) % n).find(|&j| backup(j) == want_backup && ok(j));
        scan(false).or_else(|| scan(true))
    }
}

struct RoundRobin {
    pool: PoolCache,
    /// By pool id (the pool's index in the gateway config): no hashing on the request path.
    state: RefCell<Vec<Option<PoolState>>>,
}

impl Plugin for RoundRobin {
    const NAME: &'static str = "round-robin";

    fn init(config: &Config) -> Result<Self, String> {
        config.only(&[])?;
        Ok(RoundRobin {
            pool: PoolCache::default(),
            state: RefCell::new(Vec::new()),
        })
    }

    fn select(&self, pool: PoolView, key: SelectKey) -> SelectDecision {
        let n = pool.health.len();
        let mut states = self.state.borrow_mut();
        let id = pool.pool_id as usize;
        if states.len() <= id {
            states.resize_with(id + 1, || None);
        }
        let st = states[id].get_or_insert_with(|| PoolState {
            generation: !pool.generation,
            order: Smooth::new(&[]),
            backup: Vec::new(),
        });
        if st.generation != pool.generation {
            self.pool.with(&pool, |info| {
                let (weights, backup): (Vec<u32>, Vec<bool>) = match info {
                    Some(s) if s.endpoints.len() == n => s.endpoints.iter().map(|e| (e.weight, e.backup)).unzip(),
                    _ => (vec![1; n], vec![false; n]),
                };
                st.order = Smooth::new(&weights);
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

    fn shares(weights: &[u32], out: usize, picks: usize) -> Vec<usize> {
        let mut st = PoolState {
            generation: 0,
            order: Smooth::new(weights),
            backup: vec![false; weights.len()],
        };
        let mut n = vec![0; weights.len()];
        for _ in 0..picks {
            n[st.pick(weights.len(), |i| i != out).unwrap()] += 1;
        }
        n
    }

    /// An endpoint out of rotation (drained, down) leaves its share to all the others by their
    /// weights, not to the one after it in index order.
    #[test]
    fn an_ineligible_endpoint_s_share_goes_to_all_the_others_by_weight() {
        assert_eq!(shares(&[1, 1, 1], 0, 300), vec![0, 150, 150]);
        assert_eq!(shares(&[1, 1, 1, 1], 1, 300), vec![100, 0, 100, 100]);
        assert_eq!(shares(&[1, 2, 3], 2, 300), vec![100, 200, 0]);
    }

    /// `cycles` whole cycles of picks.
    fn picks(weights: &[u32], cycles: i64) -> Vec<u32> {
        let s = Smooth::new(weights);
        let n = (cycles * s.total) as usize;
        s.take(n).collect()
    }

    fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
        picks(weights, 1)
    }

    /// nginx's loop, step by step over every endpoint, on the same reduced weights: what
    /// `Smooth` must equal.
    fn nginx_order(weights: &[u32], cycles: i64) -> Vec<u32> {
        let w: Vec<i64> = reduced(weights).into_iter().map(|x| x as i64).collect();
        let total: i64 = w.iter().sum();
        let mut current = vec![0i64; w.len()];
        let mut out = Vec::new();
        for _ in 0..cycles * total {
            let mut best = 0;
            for i in 0..w.len() {
                current[i] += w[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            out.push(best as u32);
        }
        out
    }

    #[test]
    fn the_same_order_as_nginx_for_any_weights() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for round in 0..300 {
            let n = 1 + next(if round < 250 { 12 } else { 300 }) as usize;
            let top = [2, 5, 100, 10_000][round % 4];
            let weights: Vec<u32> = (0..n).map(|_| next(top) as u32 + 1).collect();
            assert_eq!(picks(&weights, 2), nginx_order(&weights, 2), "{weights:?}");
        }
        // The most distinct weights that sum to MAX_TOTAL unscaled, and 1,024 distinct weights
        // (scaled down to a handful of classes).
        for weights in [(1..=90).collect::<Vec<u32>>(), (1..=1024).collect()] {
            assert_eq!(picks(&weights, 2), nginx_order(&weights, 2));
        }
    }

    #[test]
    fn smooth_weighted_order() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1, 1]), vec![0, 1, 2]);
        assert_eq!(smooth_schedule(&[2, 4]), vec![1, 0, 1]);
    }

    fn state(weights: &[u32], backup: &[bool]) -> PoolState {
        PoolState {
            generation: 1,
            order: Smooth::new(weights),
            backup: backup.to_vec(),
        }
    }

    #[test]
    fn an_empty_pool_has_no_pick() {
        assert_eq!(Smooth::new(&[]).next(), None);
        assert_eq!(state(&[], &[]).pick(0, |_| true), None);
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
        // Weights equal once divided by their gcd too.
        assert_eq!(smooth_schedule(&[2, 2, 2]), vec![0, 1, 2]);
    }

    #[test]
    fn large_weights_are_scaled() {
        let s = smooth_schedule(&[10_000, 10_000, 1]);
        assert_eq!(Smooth::new(&[10_000, 10_000, 1]).total, 2047 + 2047 + 1);
        assert!(s.len() as u64 <= MAX_TOTAL + 3);
        assert!(s.contains(&2));
    }
}
