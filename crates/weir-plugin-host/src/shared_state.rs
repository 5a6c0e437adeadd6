//! State a plugin keeps in the host, shared by all its instances (all workers) and kept across
//! hot reloads, namespaced per plugin name: atomic counters, the sticky table, versioned kv,
//! and the plugin's own metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Bound of the sticky table: above it, expired entries are swept on insert, at most once a
/// second (a table of that many live sessions would otherwise be scanned on every new one).
const STICKY_SWEEP_AT: usize = 100_000;
const STICKY_SWEEP_EVERY_MS: u64 = 1000;

/// A sticky entry: the endpoint id, when it expires, and its ttl (renewed on every hit).
type StickyEntry = (u32, Instant, u32);

/// Bounds of what a plugin keeps in the host through `shared`: that memory is weir's, outside
/// the plugin's `memory_limit`, so a plugin making a key per request could otherwise grow it
/// without end. Past a bound the write is refused (and counted, and logged once per plugin);
/// what is stored stays.
pub const MAX_COUNTERS: usize = 65_536;
/// Live sticky entries (expired ones are swept first when the table is full).
pub const MAX_STICKY: usize = 1_000_000;
/// Bytes of keys and values in the kv store, and the largest value.
pub const MAX_KV_BYTES: usize = 16 << 20;
pub const MAX_KV_VALUE: usize = 64 << 10;

/// Distinct metric names a plugin may use (counters and observations each): a plugin that
/// makes a name per request must not grow the host's memory, or `/metrics`, without bound.
const MAX_METRIC_NAMES: usize = 256;
/// Longest metric name taken.
const MAX_METRIC_NAME: usize = 128;

#[derive(Default)]
pub struct PluginShared {
    /// The plugin's name, for the warning when a bound refuses a write.
    plugin: String,
    counters: DashMap<String, i64>,
    sticky: DashMap<(u32, u64), StickyEntry>,
    /// When the sticky table was last swept ([`PluginShared::sweep_sticky`]'s clock; 0: never).
    sticky_swept_ms: AtomicU64,
    kv: DashMap<String, (Vec<u8>, u64)>,
    /// Bytes of the kv store's keys and values.
    kv_bytes: AtomicUsize,
    /// Writes to `shared` refused by the bounds above, and whether that has been logged.
    shared_refused: AtomicU64,
    refusal_logged: AtomicBool,
    /// The plugin's own metrics (the `metrics` import), exported as
    /// `weir_plugin_counter_total` and `weir_plugin_observations`.
    metric_counters: DashMap<String, AtomicU64>,
    metric_histograms: DashMap<String, (u64, f64)>,
    /// Values refused: a name too long or one too many, a value that is not finite.
    metrics_dropped: AtomicU64,
    /// What of weir's log the plugin may still write this second.
    pub log_budget: crate::log_budget::LogBudget,
}

/// A plugin's own metrics as they stand: counters, observations (name, count, sum), and the
/// values refused.
pub struct PluginMetrics {
    pub counters: Vec<(String, u64)>,
    pub observations: Vec<(String, u64, f64)>,
    pub dropped: u64,
}

impl PluginShared {
    pub fn new(plugin: &str) -> PluginShared {
        PluginShared {
            plugin: plugin.to_string(),
            ..PluginShared::default()
        }
    }

    /// The counter's new value; a new key past [`MAX_COUNTERS`] is not stored (the answer is
    /// `delta`, as from a fresh counter).
    pub fn counter_add(&self, key: String, delta: i64) -> i64 {
        if let Some(mut c) = self.counters.get_mut(&key) {
            *c = c.saturating_add(delta);
            return *c;
        }
        if self.counters.len() >= MAX_COUNTERS {
            self.refuse("counter-add", "counters");
            return delta;
        }
        let mut entry = self.counters.entry(key).or_insert(0);
        *entry = entry.saturating_add(delta);
        *entry
    }

    /// Counts a write the bounds refused; the first one per plugin is a warning.
    fn refuse(&self, call: &str, what: &str) {
        self.shared_refused.fetch_add(1, Ordering::Relaxed);
        if !self.refusal_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                plugin = %self.plugin,
                call,
                "plugin's shared {what} are full: the write is refused (counted in weir_plugin_shared_refused_total)"
            );
        }
    }

    /// Writes to `shared` the bounds refused.
    pub fn shared_refused(&self) -> u64 {
        self.shared_refused.load(Ordering::Relaxed)
    }

    /// The endpoint a session is pinned to. A hit renews the entry's ttl: it expires `ttl`
    /// after its last use, not after it was made (HAProxy's stick tables and nginx's `sticky
    /// learn` count the same way), so a session in use is never moved by its age.
    pub fn sticky_get(&self, pool: u32, key: u64) -> Option<u32> {
        self.sticky_get_at(pool, key, Instant::now())
    }

    fn sticky_get_at(&self, pool: u32, key: u64, now: Instant) -> Option<u32> {
        let expired = match self.sticky.get_mut(&(pool, key)) {
            Some(mut e) if e.1 > now => {
                let (endpoint, _, ttl_ms) = *e;
                e.1 = now + Duration::from_millis(u64::from(ttl_ms));
                return Some(endpoint);
            }
            Some(_) => true,
            None => false,
        };
        if expired {
            self.sticky.remove_if(&(pool, key), |_, e| e.1 <= now);
        }
        None
    }

    pub fn sticky_set(&self, pool: u32, key: u64, endpoint: u32, ttl_ms: u32) {
        self.sticky_set_at(pool, key, endpoint, ttl_ms, Instant::now());
    }

    fn sticky_set_at(&self, pool: u32, key: u64, endpoint: u32, ttl_ms: u32, now: Instant) {
        if self.sticky.len() >= MAX_STICKY && !self.sticky.contains_key(&(pool, key)) {
            // Full: what has expired makes room, once a second at most.
            self.sweep_sticky(now);
            if self.sticky.len() >= MAX_STICKY {
                self.refuse("sticky-set", "sticky entries");
                return;
            }
        } else if self.sticky.len() >= STICKY_SWEEP_AT {
            self.sweep_sticky(now);
        }
        self.sticky.insert(
            (pool, key),
            (endpoint, now + Duration::from_millis(u64::from(ttl_ms)), ttl_ms),
        );
    }

    /// Drops the expired sticky entries, at most once a second.
    fn sweep_sticky(&self, now: Instant) {
        // Milliseconds of `now` on a process-wide base, never 0 (0: never swept).
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let base = *BASE.get_or_init(Instant::now);
        let ms = u64::try_from(now.saturating_duration_since(base).as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.sticky_swept_ms.load(Ordering::Relaxed);
        if (last == 0 || ms.saturating_sub(last) >= STICKY_SWEEP_EVERY_MS)
            && self
                .sticky_swept_ms
                .compare_exchange(last, ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sticky.retain(|_, e| e.1 > now);
        }
    }

    pub fn kv_get(&self, key: &str) -> Option<(Vec<u8>, u64)> {
        self.kv.get(key).map(|e| e.value().clone())
    }

    /// Compare-and-swap: `expected` 0 creates only if absent. A value over [`MAX_KV_VALUE`], or
    /// one that would take the store past [`MAX_KV_BYTES`], is refused (`None`, as a version
    /// that did not match).
    pub fn kv_set(&self, key: String, value: Vec<u8>, expected: u64) -> Option<u64> {
        if value.len() > MAX_KV_VALUE {
            self.refuse("kv-set", "kv bytes");
            return None;
        }
        let key_len = key.len();
        let mut entry = match self.kv.entry(key) {
            dashmap::Entry::Occupied(o) => o.into_ref(),
            dashmap::Entry::Vacant(v) => {
                if expected != 0 || !self.kv_reserve(key_len) {
                    return None;
                }
                v.insert((Vec::new(), 0))
            }
        };
        if entry.1 != expected {
            return None;
        }
        let old_len = entry.0.len();
        if value.len() > old_len && !self.kv_reserve(value.len() - old_len) {
            return None;
        }
        self.kv_bytes
            .fetch_sub(old_len.saturating_sub(value.len()), Ordering::Relaxed);
        entry.1 += 1;
        entry.0 = value;
        Some(entry.1)
    }

    /// Takes `n` more bytes for the kv store, if they fit.
    fn kv_reserve(&self, n: usize) -> bool {
        let fits = self
            .kv_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                b.checked_add(n).filter(|t| *t <= MAX_KV_BYTES)
            })
            .is_ok();
        if !fits {
            self.refuse("kv-set", "kv bytes");
        }
        fits
    }

    pub fn metric_inc(&self, name: String, delta: u64) {
        if let Some(c) = self.metric_counters.get(&name) {
            c.fetch_add(delta, Ordering::Relaxed);
        } else if self.takes_name(&name, self.metric_counters.len()) {
            self.metric_counters
                .entry(name)
                .or_default()
                .fetch_add(delta, Ordering::Relaxed);
        }
    }

    pub fn metric_record(&self, name: String, value: f64) {
        if !value.is_finite() {
            self.metrics_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if !self.metric_histograms.contains_key(&name) && !self.takes_name(&name, self.metric_histograms.len()) {
            return;
        }
        let mut e = self.metric_histograms.entry(name).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += value;
    }

    /// Whether a new metric name fits (`names` are in use already); counts it dropped if not.
    fn takes_name(&self, name: &str, names: usize) -> bool {
        let fits = !name.is_empty() && name.len() <= MAX_METRIC_NAME && names < MAX_METRIC_NAMES;
        if !fits {
            self.metrics_dropped.fetch_add(1, Ordering::Relaxed);
        }
        fits
    }

    pub fn metrics(&self) -> PluginMetrics {
        PluginMetrics {
            counters: self
                .metric_counters
                .iter()
                .map(|e| (e.key().clone(), e.value().load(Ordering::Relaxed)))
                .collect(),
            observations: self
                .metric_histograms
                .iter()
                .map(|e| (e.key().clone(), e.value().0, e.value().1))
                .collect(),
            dropped: self.metrics_dropped.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_bounded_and_values_finite() {
        let s = PluginShared::default();
        s.metric_inc("picks".into(), 2);
        s.metric_inc("picks".into(), 3);
        s.metric_record("spread".into(), 1.5);
        s.metric_record("spread".into(), 2.5);
        s.metric_record("spread".into(), f64::NAN);
        s.metric_inc("x".repeat(MAX_METRIC_NAME + 1), 1);
        s.metric_inc(String::new(), 1);
        for i in 0..MAX_METRIC_NAMES + 10 {
            s.metric_inc(format!("n{i}"), 1);
        }
        let m = s.metrics();
        assert_eq!(m.counters.len(), MAX_METRIC_NAMES);
        assert!(m.counters.contains(&("picks".to_string(), 5)));
        assert_eq!(m.observations, vec![("spread".to_string(), 2, 4.0)]);
        // NaN, the long name, the empty one, and the 11 names past the bound (one slot went
        // to `picks`).
        assert_eq!(m.dropped, 1 + 1 + 1 + 11);
        // A name already in use still counts.
        s.metric_inc("picks".into(), 1);
        assert!(s.metrics().counters.contains(&("picks".to_string(), 6)));
    }

    #[test]
    fn shared_state_is_bounded_and_refusals_counted() {
        let s = PluginShared::new("p");
        // kv: a value over the bound, then bytes past the store's bound.
        assert_eq!(s.kv_set("big".into(), vec![0; MAX_KV_VALUE + 1], 0), None);
        let chunk = vec![0; MAX_KV_VALUE];
        let fit = MAX_KV_BYTES / (MAX_KV_VALUE + 8);
        for i in 0..fit {
            assert_eq!(s.kv_set(format!("k{i:06}"), chunk.clone(), 0), Some(1), "{i}");
        }
        assert_eq!(s.kv_set("one-more".into(), chunk.clone(), 0), None);
        // Shrinking a value gives its bytes back.
        assert_eq!(s.kv_set("k000000".into(), Vec::new(), 1), Some(2));
        assert_eq!(s.kv_set("one-more".into(), chunk, 0), Some(1));
        assert_eq!(s.kv_get("one-more").map(|(v, n)| (v.len(), n)), Some((MAX_KV_VALUE, 1)));
        // Counters: a new key past the bound is not kept; the kept ones count on.
        for i in 0..MAX_COUNTERS {
            s.counter_add(format!("c{i}"), 1);
        }
        assert_eq!(s.counter_add("c-new".into(), 5), 5);
        assert_eq!(s.counter_add("c-new".into(), 5), 5);
        assert_eq!(s.counter_add("c0".into(), 1), 2);
        assert_eq!(s.shared_refused(), 4);
    }

    #[test]
    fn a_full_sticky_table_keeps_its_sessions_and_refuses_new_ones_until_they_expire() {
        let s = PluginShared::new("p");
        let now = Instant::now();
        for k in 0..MAX_STICKY as u64 {
            s.sticky_set_at(0, k, 1, 60_000, now);
        }
        s.sticky_set_at(0, u64::MAX, 2, 60_000, now);
        assert_eq!(s.sticky_get_at(0, u64::MAX, now), None);
        assert_eq!(s.sticky_get_at(0, 7, now), Some(1));
        assert_eq!(s.shared_refused(), 1);
        // An hour later everything has expired: the sweep makes room (once a second at most).
        let later = now + Duration::from_secs(3_600);
        s.sticky_set_at(0, u64::MAX, 2, 60_000, later);
        assert_eq!(s.sticky_get_at(0, u64::MAX, later), Some(2));
    }

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
        // The ttl counts from the last use: a session used every 600 ms with a ttl of 1 s
        // stays pinned; one left alone for longer than the ttl does not.
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        s.sticky_set_at(0, 9, 5, 1000, t0);
        for ms in [600, 1200, 1800, 2400] {
            assert_eq!(s.sticky_get_at(0, 9, at(ms)), Some(5), "at {ms} ms");
        }
        assert_eq!(s.sticky_get_at(0, 9, at(3500)), None);
        assert_eq!(s.sticky_get_at(0, 9, at(3600)), None);
        assert_eq!(s.counter_add("c".into(), 2), 2);
        assert_eq!(s.counter_add("c".into(), -5), -3);
    }
}
