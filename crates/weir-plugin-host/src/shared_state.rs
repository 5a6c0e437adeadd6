//! State a plugin keeps in the host, shared by all its instances (all workers) and kept across
//! hot reloads, namespaced per plugin name: atomic counters, the sticky table, versioned kv,
//! and the plugin's own metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Bound of the sticky table: above it, expired entries are swept on insert.
const STICKY_SWEEP_AT: usize = 100_000;

#[derive(Default)]
pub struct PluginShared {
    counters: DashMap<String, i64>,
    sticky: DashMap<(u32, u64), (u32, Instant)>,
    kv: DashMap<String, (Vec<u8>, u64)>,
    pub metric_counters: DashMap<String, AtomicU64>,
    pub metric_histograms: DashMap<String, (u64, f64)>,
}

impl PluginShared {
    pub fn counter_add(&self, key: String, delta: i64) -> i64 {
        let mut entry = self.counters.entry(key).or_insert(0);
        *entry = entry.saturating_add(delta);
        *entry
    }

    pub fn sticky_get(&self, pool: u32, key: u64) -> Option<u32> {
        let now = Instant::now();
        let hit = self.sticky.get(&(pool, key)).map(|e| *e.value());
        match hit {
            Some((endpoint, expires)) if expires > now => Some(endpoint),
            Some(_) => {
                self.sticky.remove(&(pool, key));
                None
            }
            None => None,
        }
    }

    pub fn sticky_set(&self, pool: u32, key: u64, endpoint: u32, ttl_ms: u32) {
        let now = Instant::now();
        if self.sticky.len() >= STICKY_SWEEP_AT {
            self.sticky.retain(|_, (_, expires)| *expires > now);
        }
        self.sticky
            .insert((pool, key), (endpoint, now + Duration::from_millis(u64::from(ttl_ms))));
    }

    pub fn kv_get(&self, key: &str) -> Option<(Vec<u8>, u64)> {
        self.kv.get(key).map(|e| e.value().clone())
    }

    /// Compare-and-swap: `expected` 0 creates only if absent.
    pub fn kv_set(&self, key: String, value: Vec<u8>, expected: u64) -> Option<u64> {
        let mut entry = self.kv.entry(key).or_insert((Vec::new(), 0));
        if entry.1 != expected {
            return None;
        }
        entry.1 += 1;
        entry.0 = value;
        Some(entry.1)
    }

    pub fn metric_inc(&self, name: String, delta: u64) {
        self.metric_counters
            .entry(name)
            .or_default()
            .fetch_add(delta, Ordering::Relaxed);
    }

    pub fn metric_record(&self, name: String, value: f64) {
        let mut e = self.metric_histograms.entry(name).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_compare_and_swap() {
        let s = PluginShared::default();
        assert_eq!(s.kv_set("a".into(), b"1".to_vec(), 0), Some(1));
        assert_eq!(s.kv_set("a".into(), b"2".to_vec(), 0), None);
        assert_eq!(s.kv_set("a".into(), b"2".to_vec(), 1), Some(2));
        assert_eq!(s.kv_get("a"), Some((b"2".to_vec(), 2)));
    }

    #[test]
    fn sticky_expires() {
        let s = PluginShared::default();
        s.sticky_set(0, 7, 3, 60_000);
        assert_eq!(s.sticky_get(0, 7), Some(3));
        s.sticky_set(0, 8, 4, 0);
        assert_eq!(s.sticky_get(0, 8), None);
        assert_eq!(s.counter_add("c".into(), 2), 2);
        assert_eq!(s.counter_add("c".into(), -5), -3);
    }
}
