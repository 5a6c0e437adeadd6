//! `sticky`: sticky sessions. `{ cookie = "weir-sticky", ttl = "1h" }`. The host issues the
//! cookie when a client has none and hashes its value into `affinity_hash`; this plugin maps
//! that hash to an endpoint id in the host's shared sticky table (shared by all workers, kept
//! across reloads). A session whose endpoint is gone or ineligible is re-pinned; one idle for
//! longer than `ttl` is forgotten (each request renews it).

use std::cell::Cell;

use weir_plugin_sdk::*;

struct Sticky {
    cookie: String,
    ttl_ms: u32,
    pool: PoolCache,
    next: Cell<usize>,
}

/// The endpoint a new session is pinned to: the `turn`-th of the eligible primaries (of the
/// eligible backups when no primary is).
pub fn new_pin(n: usize, turn: usize, ok: impl Fn(usize) -> bool, backup: impl Fn(usize) -> bool) -> Option<usize> {
    for want_backup in [false, true] {
        let set: Vec<usize> = (0..n).filter(|&i| backup(i) == want_backup && ok(i)).collect();
        if !set.is_empty() {
            return Some(set[turn % set.len()]);
        }
    }
    None
}

/// Index of the endpoint with `id`, if it is eligible.
pub fn find(ids: &[u32], id: u32, ok: impl Fn(usize) -> bool) -> Option<usize> {
    ids.iter().position(|&x| x == id).filter(|&i| ok(i))
}

impl Plugin for Sticky {
    const NAME: &'static str = "sticky";

    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["cookie", "ttl"])?;
        let cookie = config.str_or("cookie", "weir-sticky")?;
        if cookie.is_empty()
            || !cookie
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("`cookie` must be a cookie name, got `{cookie}`"));
        }
        let ttl = config.duration_ms_or("ttl", 3_600_000)?;
        Ok(Sticky {
            cookie,
            ttl_ms: ttl.min(u64::from(u32::MAX)) as u32,
            pool: PoolCache::default(),
            next: Cell::new(0),
        })
    }

    fn manifest(&self) -> Manifest {
        Manifest {
            sticky_cookie: Some(self.cookie.clone()),
            ..Manifest::default()
        }
    }

    fn select(&self, pool: PoolView, key: SelectKey) -> SelectDecision {
        self.pool.with(&pool, |info| {
            let Some(info) = info else {
                return SelectDecision::HostDefault;
            };
            let ids: Vec<u32> = info.endpoints.iter().map(|e| e.id).collect();
            if let Some(id) = shared::sticky_get(pool.pool_id, key.affinity_hash)
                && let Some(i) = find(&ids, id, |i| eligible(&pool, &key, i))
            {
                return SelectDecision::Endpoint(i as u32);
            }
            let start = self.next.get();
            self.next.set(start.wrapping_add(1));
            // New sessions go round the eligible endpoints (primaries, else backups): one out
            // of rotation leaves its turn to all the others, not to the one after it.
            let pick = new_pin(
                ids.len(),
                start,
                |i| eligible(&pool, &key, i),
                |i| info.endpoints[i].backup,
            );
            match pick {
                Some(i) => {
                    shared::sticky_set(pool.pool_id, key.affinity_hash, ids[i], self.ttl_ms);
                    SelectDecision::Endpoint(i as u32)
                }
                None => SelectDecision::Unavailable,
            }
        })
    }
}

plugin!(Sticky);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_sessions_share_an_ineligible_endpoint_s_turn() {
        let mut n = [0usize; 3];
        for turn in 0..300 {
            n[new_pin(3, turn, |i| i != 0, |_| false).unwrap()] += 1;
        }
        assert_eq!(n, [0, 150, 150]);
        // Backups only when no primary is eligible.
        assert_eq!(new_pin(3, 0, |i| i == 2, |i| i == 2), Some(2));
        assert_eq!(new_pin(3, 5, |i| i != 1, |i| i == 2), Some(0));
        assert_eq!(new_pin(3, 0, |_| false, |_| false), None);
    }

    #[test]
    fn finds_only_eligible() {
        assert_eq!(find(&[7, 9, 11], 9, |_| true), Some(1));
        assert_eq!(find(&[7, 9, 11], 9, |i| i != 1), None);
        assert_eq!(find(&[7, 9, 11], 3, |_| true), None);
    }
}
