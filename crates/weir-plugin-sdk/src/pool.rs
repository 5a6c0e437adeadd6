//! Helpers every balancer needs: which endpoints qualify, and a cache of the pool's static data
//! that is refreshed only when the pool's generation changes (one host call per generation,
//! not per request).

use std::cell::{Cell, RefCell};

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

/// The pool's static data (addresses, weights, zones, backups), cached per pool generation.
#[derive(Default)]
pub struct PoolCache {
    generation: Cell<u64>,
    pool_id: Cell<u32>,
    value: RefCell<Option<PoolStatic>>,
}

impl PoolCache {
    /// Runs `f` on the current static data of `view`'s pool, fetching it when stale.
    pub fn with<R>(&self, view: &PoolView, f: impl FnOnce(Option<&PoolStatic>) -> R) -> R {
        let stale = self.value.borrow().is_none() || self.generation.get() != view.generation || self.pool_id.get() != view.pool_id;
        if stale {
            *self.value.borrow_mut() = pools::pool_info(view.pool_id);
            self.generation.set(view.generation);
            self.pool_id.set(view.pool_id);
        }
        f(self.value.borrow().as_ref())
    }
}
