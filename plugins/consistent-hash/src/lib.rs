//! `consistent-hash`: a hash ring with virtual nodes, keyed by endpoint *address*, so that
//! removing an endpoint moves only the keys it owned. `{ key = "client-ip" | "header:NAME" |
//! "cookie:NAME" | "path" }` (default client-ip): the host hashes that value per request.
//! A request without the header or cookie has no key (hash 0): it goes wherever its request id
//! falls on the ring, as Envoy's ring hash picks at random, instead of every such request
//! landing on the one endpoint that owns the empty key.

use std::cell::RefCell;
use std::collections::HashMap;

use weir_plugin_sdk::*;

/// Virtual nodes per unit of weight.
const VNODES: u32 = 160;

/// A ring: sorted (point, endpoint index).
pub struct Ring {
    points: Vec<(u64, u32)>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64 finaliser: spreads FNV's weak low bits over the ring.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Ring {
    /// `endpoints`: (address, weight) in pool order.
    pub fn new(endpoints: &[(&str, u32)]) -> Ring {
        let mut points = Vec::new();
        for (i, (addr, weight)) in endpoints.iter().enumerate() {
            for v in 0..VNODES * weight.max(&1) {
                points.push((mix(fnv1a(format!("{addr}#{v}").as_bytes())), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The first endpoint clockwise from `hash` for which `ok` holds.
    pub fn lookup(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(p, _)| *p < mix(hash));
        let n = self.points.len();
        (0..n).map(|k| self.points[(start + k) % n].1 as usize).find(|&i| ok(i))
    }
}

/// Where a request looks on the ring: its key's hash, or (no key) its request id.
pub fn ring_key_of(affinity_hash: u64, request_id: u64) -> u64 {
    if affinity_hash == 0 {
        mix(request_id ^ 0x9e37_79b9_7f4a_7c15)
    } else {
        affinity_hash
    }
}

struct ConsistentHash {
    key: String,
    pool: PoolCache,
    rings: RefCell<HashMap<(u32, u64), Ring>>,
}

impl Plugin for ConsistentHash {
    const NAME: &'static str = "consistent-hash";

    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["key"])?;
        let key = config.str_or("key", "client-ip")?;
        let valid = key == "client-ip"
            || key == "path"
            || key.strip_prefix("header:").is_some_and(|n| !n.is_empty())
            || key.strip_prefix("cookie:").is_some_and(|n| !n.is_empty());
        if !valid {
            return Err(format!(
                "`key` must be client-ip, path, header:NAME or cookie:NAME, got `{key}`"
            ));
        }
        Ok(ConsistentHash {
            key,
            pool: PoolCache::default(),
            rings: RefCell::new(HashMap::new()),
        })
    }

    fn manifest(&self) -> Manifest {
        Manifest {
            affinity_key: Some(self.key.clone()),
            ..Manifest::default()
        }
    }

    fn select(&self, pool: PoolView, key: SelectKey) -> SelectDecision {
        self.pool.with(&pool, |info| {
            let Some(info) = info else {
                return SelectDecision::HostDefault;
            };
            let ring_key = (pool.pool_id, pool.generation);
            let mut rings = self.rings.borrow_mut();
            if !rings.contains_key(&ring_key) {
                rings.retain(|(p, _), _| *p != pool.pool_id);
                let eps: Vec<(&str, u32)> = info.endpoints.iter().map(|e| (e.address.as_str(), e.weight)).collect();
                rings.insert(ring_key, Ring::new(&eps));
            }
            let Some(ring) = rings.get(&ring_key) else {
                return SelectDecision::HostDefault;
            };
            let hash = ring_key_of(key.affinity_hash, key.request_id);
            match ring
                .lookup(hash, |i| eligible(&pool, &key, i))
                .or_else(|| ring.lookup(hash, |i| healthy(&pool, i)))
            {
                Some(i) => SelectDecision::Endpoint(i as u32),
                None => SelectDecision::Unavailable,
            }
        })
    }
}

plugin!(ConsistentHash);

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys() {
        let a = addrs(5);
        let full: Vec<(&str, u32)> = a.iter().map(|s| (s.as_str(), 1)).collect();
        let ring = Ring::new(&full);
        let without: Vec<(&str, u32)> = full.iter().copied().filter(|(s, _)| *s != a[2]).collect();
        let smaller = Ring::new(&without);
        let mut moved = 0;
        let mut owned_by_removed = 0;
        let mut counts = [0usize; 5];
        for k in 0..10_000u64 {
            let h = fnv1a(&k.to_le_bytes());
            let before = ring.lookup(h, |_| true).unwrap_or(usize::MAX);
            counts[before] += 1;
            let after_idx = smaller.lookup(h, |_| true).unwrap_or(usize::MAX);
            let after = without[after_idx].0;
            if before == 2 {
                owned_by_removed += 1;
            } else if after != a[before] {
                moved += 1;
            }
        }
        assert_eq!(moved, 0, "keys of remaining endpoints moved");
        assert!(owned_by_removed > 1000, "{owned_by_removed}");
        // Spread: each endpoint owns 20% +- 8 points.
        for c in counts {
            assert!((1200..=2800).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn requests_without_a_key_spread_over_the_ring() {
        let a = addrs(3);
        let eps: Vec<(&str, u32)> = a.iter().map(|s| (s.as_str(), 1)).collect();
        let ring = Ring::new(&eps);
        let mut counts = [0usize; 3];
        for id in 1..=3000u64 {
            counts[ring.lookup(ring_key_of(0, id), |_| true).unwrap_or(0)] += 1;
        }
        for c in counts {
            assert!((700..=1300).contains(&c), "{counts:?}");
        }
        assert_eq!(ring_key_of(42, 7), 42);
    }

    #[test]
    fn same_key_same_endpoint_and_skips_ineligible() {
        let a = addrs(3);
        let eps: Vec<(&str, u32)> = a.iter().map(|s| (s.as_str(), 1)).collect();
        let ring = Ring::new(&eps);
        let h = fnv1a(b"user-42");
        let first = ring.lookup(h, |_| true);
        assert_eq!(first, ring.lookup(h, |_| true));
        let first = first.unwrap_or(0);
        let other = ring.lookup(h, |i| i != first).unwrap_or(first);
        assert_ne!(other, first);
    }
}
