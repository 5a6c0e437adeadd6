//! `zone-aware`: prefer endpoints in `local_zone`; spill over to the other zones when the local
//! zone has no eligible endpoint, or when fewer than `spill_at` of its endpoints are eligible
//! (it is degraded and would be overloaded). `{ local_zone = "a", spill_at = 0.8 }`.

use weir_plugin_sdk::*;

struct ZoneAware {
    local_zone: String,
    spill_at: f64,
    pool: PoolCache,
    next: PerPool<usize>,
}

/// The endpoints to choose among: local ones, or everyone eligible when spilling.
pub fn candidates(zones: &[&str], local: &str, spill_at: f64, ok: impl Fn(usize) -> bool) -> Vec<usize> {
    let local_all: Vec<usize> = (0..zones.len()).filter(|&i| zones[i] == local).collect();
    let local_ok: Vec<usize> = local_all.iter().copied().filter(|&i| ok(i)).collect();
    let healthy_share = if local_all.is_empty() {
        0.0
    } else {
        local_ok.len() as f64 / local_all.len() as f64
    };
    if !local_ok.is_empty() && healthy_share >= spill_at {
        local_ok
    } else {
        (0..zones.len()).filter(|&i| ok(i)).collect()
    }
}

impl Plugin for ZoneAware {
    const NAME: &'static str = "zone-aware";

    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["local_zone", "spill_at"])?;
        let local_zone = config.opt_str("local_zone")?.ok_or("`local_zone` is required")?;
        let spill_at = config.f64_or("spill_at", 0.8)?;
        if !(0.0..=1.0).contains(&spill_at) {
            return Err(format!("`spill_at` must be between 0 and 1, got {spill_at}"));
        }
        Ok(ZoneAware {
            local_zone,
            spill_at,
            pool: PoolCache::default(),
            next: PerPool::default(),
        })
    }

    fn select(&self, pool: PoolView, key: SelectKey) -> SelectDecision {
        self.pool.with(&pool, |info| {
            let Some(info) = info else {
                return SelectDecision::HostDefault;
            };
            let zones: Vec<&str> = info.endpoints.iter().map(|e| e.zone.as_str()).collect();
            let primary = |i: usize| !info.endpoints[i].backup;
            let mut set = candidates(&zones, &self.local_zone, self.spill_at, |i| {
                primary(i) && eligible(&pool, &key, i)
            });
            if set.is_empty() {
                set = candidates(&zones, &self.local_zone, self.spill_at, |i| eligible(&pool, &key, i));
            }
            if set.is_empty() {
                return SelectDecision::Unavailable;
            }
            let k = self.next.with(pool.pool_id, |n| {
                *n = n.wrapping_add(1);
                *n
            });
            SelectDecision::Endpoint(set[k % set.len()] as u32)
        })
    }
}

plugin!(ZoneAware);

#[cfg(test)]
mod tests {
    use super::*;

    const ZONES: [&str; 4] = ["a", "a", "b", "b"];

    #[test]
    fn prefers_the_local_zone() {
        assert_eq!(candidates(&ZONES, "a", 0.8, |_| true), vec![0, 1]);
    }

    #[test]
    fn spills_when_local_has_nothing_eligible() {
        assert_eq!(candidates(&ZONES, "a", 0.8, |i| i >= 2), vec![2, 3]);
    }

    #[test]
    fn spills_when_local_is_degraded() {
        assert_eq!(candidates(&ZONES, "a", 0.8, |i| i != 0), vec![1, 2, 3]);
        assert_eq!(candidates(&ZONES, "a", 0.5, |i| i != 0), vec![1]);
    }

    #[test]
    fn unknown_zone_uses_everyone() {
        assert_eq!(candidates(&ZONES, "z", 0.8, |_| true), vec![0, 1, 2, 3]);
    }
}
