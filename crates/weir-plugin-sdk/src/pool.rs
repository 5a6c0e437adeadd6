//! Helpers every balancer needs: which endpoints qualify, and a cache of the pool's static data
//! that is refreshed only when the pool's generation changes (one host call per generation,
//! not per request).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::bindings::weir::policy::pools::{self, PoolStatic};
use crate::bindings::weir::policy::types::{PoolView, SelectKey};

/// Healthy (0) or degraded (1).
pub fn healthy(pool: &PoolView, i: usize) -> bool {
    pool.health.get(i).is_some_and(|&h| h <= 1)
}

/// Not yet tried for this request.
pub fn untried(key: &SelectKey, i: usize) -> bool {
    !key.tried.contains(&(i as u32))
}

/// Healthy and untried.
pub fn eligible(pool: &PoolView, key: &SelectKey, i: usize) -> bool {
    healthy(pool, i) && untried(key, i)
}

/// The static data (addresses, weights, zones, backups) of every pool the plugin serves, each
/// refreshed only when that pool's generation changes. One plugin instance may serve several
/// pools, so everything per pool is keyed by `pool_id`.
#[derive(Default)]
pub struct PoolCache {
    pools: RefCell<HashMap<u32, PoolStatic>>,
}

impl PoolCache {
    /// Runs `f` on the current static data of `view`'s pool, fetching it when stale.
    pub fn with<R>(&self, view: &PoolView, f: impl FnOnce(Option<&PoolStatic>) -> R) -> R {
        let stale = self
            .pools
            .borrow()
            .get(&view.pool_id)
            .is_none_or(|p| p.generation != view.generation);
        if stale {
            match pools::pool_info(view.pool_id) {
                Some(info) => {
                    self.pools.borrow_mut().insert(view.pool_id, info);
                }
                None => {
                    self.pools.borrow_mut().remove(&view.pool_id);
                }
            }
        }
        f(self.pools.borrow().get(&view.pool_id))
    }
}

/// Per-pool mutable state of a plugin (e.g. round-robin positions).
pub struct PerPool<T>(RefCell<HashMap<u32, T>>);

impl<T: Default> Default for PerPool<T> {
    fn default() -> Self {
        PerPool(RefCell::new(HashMap::new()))
    }
}

impl<T: Default> PerPool<T> {
    pub fn with<R>(&self, pool_id: u32, f: impl FnOnce(&mut T) -> R) -> R {
        f(self.0.borrow_mut().entry(pool_id).or_default())
    }
}
