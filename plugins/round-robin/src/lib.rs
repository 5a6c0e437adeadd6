//! `round-robin`: smooth weighted round-robin (nginx's algorithm) over the eligible endpoints;
//! backups only when no primary is eligible. The default balancer of every pool.

use weir_plugin_sdk::*;

struct RoundRobin {
    pool: PoolCache,
    current: PerPool<Vec<i64>>,
}

/// One step of smooth weighted round-robin over the endpoints for which `ok` holds.
pub fn smooth_pick(current: &mut Vec<i64>, weights: &[u32], ok: impl Fn(usize) -> bool) -> Option<usize> {
    if current.len() != weights.len() {
        *current = vec![0; weights.len()];
    }
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for (i, &w) in weights.iter().enumerate() {
        if !ok(i) {
            continue;
        }
        let w = i64::from(w.max(1));
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    let b = best?;
    current[b] -= total;
    Some(b)
}

impl Plugin for RoundRobin {
    const NAME: &'static str = "round-robin";

    fn init(config: &Config) -> Result<Self, String> {
        config.only(&[])?;
        Ok(RoundRobin {
            pool: PoolCache::default(),
            current: PerPool::default(),
        })
    }

    fn select(&self, pool: PoolView, key: SelectKey) -> SelectDecision {
        let n = pool.health.len();
        self.pool.with(&pool, |info| {
            let weights: Vec<u32> = match info {
                Some(s) if s.endpoints.len() == n => s.endpoints.iter().map(|e| e.weight).collect(),
                _ => vec![1; n],
            };
            let backup = |i: usize| info.and_then(|s| s.endpoints.get(i)).is_some_and(|e| e.backup);
            let pick = self.current.with(pool.pool_id, |current| {
                smooth_pick(current, &weights, |i| !backup(i) && eligible(&pool, &key, i))
                    .or_else(|| smooth_pick(current, &weights, |i| !backup(i) && healthy(&pool, i)))
                    .or_else(|| smooth_pick(current, &weights, |i| backup(i) && eligible(&pool, &key, i)))
                    .or_else(|| smooth_pick(current, &weights, |i| backup(i) && healthy(&pool, i)))
            });
            match pick {
                Some(i) => SelectDecision::Endpoint(i as u32),
                None => SelectDecision::Unavailable,
            }
        })
    }
}

plugin!(RoundRobin);

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(weights: &[u32], ok: impl Fn(usize) -> bool + Copy, n: usize) -> Vec<usize> {
        let mut current = Vec::new();
        (0..n).filter_map(|_| smooth_pick(&mut current, weights, ok)).collect()
    }

    #[test]
    fn smooth_weighted_order() {
        assert_eq!(sequence(&[5, 1, 1], |_| true, 7), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(sequence(&[1, 1, 1], |_| true, 6), vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn skips_ineligible() {
        assert_eq!(sequence(&[1, 1, 1], |i| i != 1, 4), vec![0, 2, 0, 2]);
        assert!(sequence(&[1, 1], |_| false, 3).is_empty());
    }
}
