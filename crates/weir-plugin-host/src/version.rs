//! A plugin version in service: a loaded file plus the config it was initialised with, its
//! pool of long-lived instances (never one per request), and the containment of failures:
//! a call that traps, runs past `call_timeout` or grows past `memory_limit` discards its
//! instance, is counted, is logged once per burst, and repeated failure puts the plugin in
//! backoff, during which the fallback serves without calling it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use wasmtime::Store;

use crate::bindings::{balancer, failover, lifecycle, router, types};
use crate::engine::PluginEngine;
use crate::host_state::{HostState, PluginCtx};
use crate::loader::Loaded;
use crate::ticker::{self, CallWatch};

/// Spare instances kept per plugin version (about one per worker).
const POOLED_INSTANCES: usize = 64;
/// Consecutive failures that start a backoff.
const BACKOFF_AFTER: u32 = 5;
/// How long `init` may take.
const INIT_DEADLINE: Duration = Duration::from_secs(1);
/// One call in this many per hook is timed for `weir_plugin_call_duration_seconds` (the sum is
/// scaled up): the two clock reads cost ~9% of a `select` call on this machine's virtual clock.
const TIME_EVERY: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Route,
    Select,
    OnFailure,
    Init,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Route => "route",
            Hook::Select => "select",
            Hook::OnFailure => "on-failure",
            Hook::Init => "init",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Trap,
    Timeout,
    Oom,
    /// An answer the host could not use (unknown pool, index out of range).
    Invalid,
    /// Not called: the plugin is in backoff, or no instance could be created.
    Skipped,
}

pub const OUTCOMES: [Outcome; 6] = [
    Outcome::Ok,
    Outcome::Trap,
    Outcome::Timeout,
    Outcome::Oom,
    Outcome::Invalid,
    Outcome::Skipped,
];
pub const HOOKS: [Hook; 4] = [Hook::Route, Hook::Select, Hook::OnFailure, Hook::Init];

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Trap => "trap",
            Outcome::Timeout => "timeout",
            Outcome::Oom => "oom",
            Outcome::Invalid => "invalid",
            Outcome::Skipped => "skipped",
        }
    }
}

/// Upper bounds, in seconds, of `weir_plugin_call_duration_seconds`'s buckets: a warm `select`
/// takes under a microsecond, a call stopped at the default `call_timeout` 2 ms, `init` up to
/// its one-second deadline.
pub const CALL_BUCKETS: [f64; 16] = [
    0.5e-6, 1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 0.1, 1.0,
];
/// What the timed calls of one hook took: their nanoseconds and how many fell in each of
/// [`CALL_BUCKETS`] (the last entry: above the last bound).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub nanos: u64,
    pub buckets: [u64; CALL_BUCKETS.len() + 1],
}

impl Timings {
    /// The duration histogram of all `calls` of the hook, estimated from the timed ones (one
    /// in [`TIME_EVERY`]): their total in seconds, and the count per bucket (not cumulative;
    /// the last, `+Inf`, above the last bound). Cumulative counts are scaled and then
    /// differenced, so that they sum to `calls` exactly and none is negative.
    pub fn estimate(&self, calls: u64) -> (f64, Vec<(f64, u64)>) {
        let timed: u64 = self.buckets.iter().sum();
        let bounds = CALL_BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY));
        if timed == 0 {
            let buckets = bounds
                .enumerate()
                .map(|(i, b)| (b, if i == CALL_BUCKETS.len() { calls } else { 0 }));
            return (0.0, buckets.collect());
        }
        let scale = calls as f64 / timed as f64;
        let mut cumulative = 0u64;
        let mut previous = 0u64;
        let buckets = bounds
            .zip(self.buckets)
            .map(|(bound, n)| {
                cumulative += n;
                let scaled = if cumulative == timed {
                    calls
                } else {
                    (cumulative as f64 * scale).round() as u64
                };
                let count = scaled.saturating_sub(previous);
                previous = scaled.max(previous);
                (bound, count)
            })
            .collect();
        (self.nanos as f64 * scale / 1e9, buckets)
    }
}

/// Call counters and health of one plugin name, kept across versions.
#[derive(Default)]
pub struct Stats {
    calls: [[AtomicU64; 6]; 4],
    /// Per hook: the timed calls' nanoseconds, and how many fell in each duration bucket.
    timed_nanos: [AtomicU64; 4],
    timed_buckets: [[AtomicU64; CALL_BUCKETS.len() + 1]; 4],
    /// Calls started per hook, which picks the calls that are timed.
    started: [AtomicU32; 4],
    consecutive_failures: AtomicU32,
    /// Milliseconds on the watchdog's clock (`ticker::now_ns`) until which calls are skipped.
    backoff_until_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

fn now_ms() -> u64 {
    ticker::now_ns() / 1_000_000
}

impl Stats {
    pub fn count(&self, hook: Hook, outcome: Outcome) {
        self.calls[hook as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn calls(&self, hook: Hook, outcome: Outcome) -> u64 {
        self.calls[hook as usize][outcome as usize].load(Ordering::Relaxed)
    }

    /// Whether this call of `hook` is one of the timed ones (the first, then one in
    /// [`TIME_EVERY`]); counted per hook so that alternating hooks cannot hide one another.
    fn timed(&self, hook: Hook) -> bool {
        self.started[hook as usize]
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(TIME_EVERY)
    }

    fn add_time(&self, hook: Hook, started: Instant) {
        let took = started.elapsed();
        let h = hook as usize;
        self.timed_nanos[h].fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
        let secs = took.as_secs_f64();
        let bucket = CALL_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(CALL_BUCKETS.len());
        self.timed_buckets[h][bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// What the timed calls of `hook` took so far.
    pub fn timings(&self, hook: Hook) -> Timings {
        let h = hook as usize;
        Timings {
            nanos: self.timed_nanos[h].load(Ordering::Relaxed),
            buckets: std::array::from_fn(|i| self.timed_buckets[h][i].load(Ordering::Relaxed)),
        }
    }

    pub fn in_backoff(&self) -> bool {
        // No clock read on the common path: a plugin that never failed has no backoff.
        let until = self.backoff_until_ms.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }

    fn success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    fn failure(&self, plugin: &str, hook: Hook, outcome: Outcome, error: String) {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 {
            tracing::warn!(plugin, hook = hook.as_str(), outcome = outcome.as_str(), %error, "plugin call failed; serving with the fallback");
        }
        if n >= BACKOFF_AFTER && n.is_multiple_of(BACKOFF_AFTER) {
            let exp = (n / BACKOFF_AFTER - 1).min(8);
            let backoff = Duration::from_millis(100u64 << exp).min(Duration::from_secs(30));
            self.backoff_until_ms
                .store(now_ms() + backoff.as_millis() as u64, Ordering::Relaxed);
            tracing::warn!(
                plugin,
                failures = n,
                backoff_ms = backoff.as_millis() as u64,
                "plugin keeps failing; backing off"
            );
        }
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(format!("{} {}: {error}", hook.as_str(), outcome.as_str()));
        }
    }
}

/// Facts from `init`.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub affinity_key: Option<String>,
    pub want_headers: Vec<String>,
    pub sticky_cookie: Option<String>,
    pub wants_load: bool,
}

pub struct Instance {
    pub store: Store<HostState>,
    pub router: Option<router::Guest>,
    pub balancer: Option<balancer::Guest>,
    pub failover: Option<failover::Guest>,
    /// Reused request buffers: no allocation per call once warm.
    pub view: types::PoolView,
    pub key: types::SelectKey,
    /// Which pool and health epoch `view.health` was filled for.
    pub view_for: (usize, u64),
}

/// The hooks an instance exports, looked up once.
struct Hooks {
    router: Option<router::Guest>,
    balancer: Option<balancer::Guest>,
    failover: Option<failover::Guest>,
}

/// Starts a call (instantiation included) on `store`: its deadline published to the watchdog
/// and given to the store's callback, the store one epoch from it. End it with [`end_call`].
#[inline]
fn begin_call(store: &mut Store<HostState>, timeout: Duration) {
    store.set_epoch_deadline(1);
    store.data_mut().watch.enter(timeout);
}

/// The call has returned.
#[inline]
fn end_call(store: &Store<HostState>) {
    store.data().watch.leave();
}

pub struct PluginVersion {
    pub loaded: Arc<Loaded>,
    pub config_json: String,
    pub manifest: Manifest,
    pub ctx: Arc<PluginCtx>,
    pub stats: Arc<Stats>,
    engine: Arc<PluginEngine>,
    memory_limit: u64,
    call_timeout: Duration,
    pool_names: Arc<[String]>,
    instances: ArrayQueue<Box<Instance>>,
    seeds: AtomicU64,
}

impl PluginVersion {
    /// Creates the version and its first instance (`init` runs; an error refuses the version).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Arc<PluginEngine>,
        loaded: Arc<Loaded>,
        config_json: String,
        ctx: Arc<PluginCtx>,
        stats: Arc<Stats>,
        memory_limit: u64,
        call_timeout: Duration,
        pool_names: Arc<[String]>,
    ) -> Result<PluginVersion, String> {
        engine.ticker.set_call_timeout(call_timeout);
        let mut version = PluginVersion {
            loaded,
            config_json,
            manifest: Manifest {
                name: String::new(),
                version: String::new(),
                affinity_key: None,
                want_headers: Vec::new(),
                sticky_cookie: None,
                wants_load: false,
            },
            ctx,
            stats,
            engine,
            memory_limit,
            call_timeout,
            pool_names,
            instances: ArrayQueue::new(POOLED_INSTANCES),
            seeds: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
        };
        let (instance, manifest) = version.instantiate()?;
        version.manifest = manifest;
        let _ = version.instances.push(instance);
        version.smoke();
        Ok(version)
    }

    /// One `select` on an empty pool before serving. A failure does not refuse the plugin
    /// (requests are contained anyway) but is logged and shown as its last error at once.
    fn smoke(&self) {
        if self.loaded.balancer.is_none() {
            return;
        }
        let Some(mut inst) = self.instances.pop() else { return };
        let inst_ref = &mut *inst;
        begin_call(&mut inst_ref.store, self.call_timeout);
        let result = match &inst_ref.balancer {
            Some(b) => b
                .call_select(&mut inst_ref.store, &inst_ref.view, &inst_ref.key)
                .map(|_| ()),
            None => Ok(()),
        };
        end_call(&inst_ref.store);
        match result {
            Ok(()) => {
                let _ = self.instances.push(inst);
            }
            Err(e) => {
                let outcome = classify(&e);
                tracing::warn!(plugin = %self.loaded.name, outcome = outcome.as_str(), error = %format!("{e:#}"), "plugin failed its smoke call; requests will be served by the fallback when it fails");
                if let Ok(mut last) = self.stats.last_error.lock() {
                    *last = Some(format!("smoke select {}: {e:#}", outcome.as_str()));
                }
            }
        }
    }

    fn instantiate(&self) -> Result<(Box<Instance>, Manifest), String> {
        let name = &self.loaded.name;
        let seed = self.seeds.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        let slot = self.engine.ticker.slot().map_err(|e| format!("plugin `{name}`: {e}"))?;
        let state = HostState::new(
            self.ctx.clone(),
            self.memory_limit,
            self.pool_names.clone(),
            seed,
            CallWatch::new(slot),
        );
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().watch.on_deadline()));
        // Instantiation runs guest code too (start functions, then `init`).
        begin_call(&mut store, INIT_DEADLINE);
        let result = self.instantiate_in(&mut store);
        end_call(&store);
        let (hooks, manifest) = result?;
        let view = types::PoolView {
            pool_id: 0,
            generation: 0,
            health: Vec::new(),
            in_flight: Vec::new(),
            ewma_latency_us: Vec::new(),
        };
        let key = types::SelectKey {
            request_id: 0,
            affinity_hash: 0,
            cookie: 0,
            attempt: 1,
            tried: Vec::new(),
        };
        Ok((
            Box::new(Instance {
                store,
                router: hooks.router,
                balancer: hooks.balancer,
                failover: hooks.failover,
                view,
                key,
                view_for: (0, 0),
            }),
            manifest,
        ))
    }

    /// Instantiates the plugin in `store`, runs `init` and looks its hooks up.
    fn instantiate_in(&self, store: &mut Store<HostState>) -> Result<(Hooks, Manifest), String> {
        let name = &self.loaded.name;
        let instance = self
            .loaded
            .pre
            .instantiate(&mut *store)
            .map_err(|e| format!("plugin `{name}`: cannot instantiate: {e:#}"))?;
        let lifecycle: lifecycle::Guest = self
            .loaded
            .lifecycle
            .load(&mut *store, &instance)
            .map_err(|e| format!("plugin `{name}`: {e:#}"))?;
        let info = lifecycle
            .call_init(&mut *store, &self.config_json)
            .map_err(|e| format!("plugin `{name}`: init trapped: {e:#}"))?
            .map_err(|e| format!("plugin `{name}`: init rejected its config: {e}"))?;
        fn load<T>(name: &str, what: &str, r: wasmtime::Result<T>) -> Result<T, String> {
            r.map_err(|e| format!("plugin `{name}`: {what}: {e:#}"))
        }
        let router = match &self.loaded.router {
            Some(ix) => Some(load(name, "router", ix.load(&mut *store, &instance))?),
            None => None,
        };
        let balancer = match &self.loaded.balancer {
            Some(ix) => Some(load(name, "balancer", ix.load(&mut *store, &instance))?),
            None => None,
        };
        let failover = match &self.loaded.failover {
            Some(ix) => Some(load(name, "failover", ix.load(&mut *store, &instance))?),
            None => None,
        };
        let manifest = Manifest {
            name: info.name,
            version: info.version,
            affinity_key: info.affinity_key,
            want_headers: info.want_headers,
            sticky_cookie: info.sticky_cookie,
            wants_load: info.wants_load,
        };
        Ok((
            Hooks {
                router,
                balancer,
                failover,
            },
            manifest,
        ))
    }

    /// Runs `f` on a pooled instance with the call deadline set; contains every failure.
    /// `None` means the caller must use its fallback.
    pub fn call<R>(&self, hook: Hook, f: impl FnOnce(&mut Instance) -> wasmtime::Result<R>) -> Option<R> {
        if self.stats.in_backoff() {
            self.stats.count(hook, Outcome::Skipped);
            return None;
        }
        let mut instance = match self.instances.pop() {
            Some(i) => i,
            None => match self.instantiate() {
                Ok((i, _)) => i,
                Err(e) => {
                    self.stats.count(hook, Outcome::Skipped);
                    self.stats.failure(&self.loaded.name, hook, Outcome::Skipped, e);
                    return None;
                }
            },
        };
        let started = self.stats.timed(hook).then(Instant::now);
        begin_call(&mut instance.store, self.call_timeout);
        let result = f(&mut instance);
        end_call(&instance.store);
        if let Some(started) = started {
            self.stats.add_time(hook, started);
        }
        match result {
            Ok(r) => {
                self.stats.count(hook, Outcome::Ok);
                self.stats.success();
                // A full pool drops the spare instance.
                let _ = self.instances.push(instance);
                Some(r)
            }
            Err(e) => {
                // A trapped instance refuses further calls: it is dropped here, and its pooled
                // slot (memory included) goes back to the allocator.
                let outcome = classify(&e);
                self.stats.count(hook, outcome);
                self.stats.failure(&self.loaded.name, hook, outcome, format!("{e:#}"));
                None
            }
        }
    }

    /// Counts an answer the host could not use.
    pub fn invalid(&self, hook: Hook, why: String) {
        self.stats.count(hook, Outcome::Invalid);
        if let Ok(mut last) = self.stats.last_error.lock() {
            *last = Some(format!("{}: {why}", hook.as_str()));
        }
    }
}

fn classify(e: &wasmtime::Error) -> Outcome {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>()
        && *trap == wasmtime::Trap::Interrupt
    {
        return Outcome::Timeout;
    }
    let text = format!("{e:#}");
    if text.contains("forcing trap when growing memory") || text.contains("out of memory") {
        Outcome::Oom
    } else {
        Outcome::Trap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_call_in_time_every_is_timed_per_hook_and_the_first_always() {
        let stats = Stats::default();
        let timed: Vec<bool> = (0..2 * TIME_EVERY).map(|_| stats.timed(Hook::Select)).collect();
        assert_eq!(timed.iter().filter(|t| **t).count(), 2);
        assert!(timed[0] && timed[TIME_EVERY as usize]);
        // Another hook counts on its own: its first call is timed although select's is past.
        assert!(stats.timed(Hook::Route));
    }

    #[test]
    fn a_timed_call_counts_for_time_every_calls() {
        let stats = Stats::default();
        stats.add_time(Hook::Select, Instant::now() - Duration::from_millis(2));
        let (s, buckets) = stats.timings(Hook::Select).estimate(u64::from(TIME_EVERY));
        let expected = 0.002 * f64::from(TIME_EVERY);
        assert!(s >= expected && s < expected * 1.5, "{s}");
        // Just over 2 ms: all the calls in the (2.5 ms] bucket unless the clock was slow.
        let at: Vec<f64> = buckets.iter().filter(|(_, n)| *n > 0).map(|(b, _)| *b).collect();
        assert!(at == [2.5e-3] || at == [5e-3], "{buckets:?}");
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), u64::from(TIME_EVERY));
        assert_eq!(stats.timings(Hook::Route), Timings::default());
    }

    #[test]
    fn the_estimated_histogram_keeps_the_timed_calls_shape_and_sums_to_all_calls() {
        let mut t = Timings::default();
        // Timed: two calls of ~0.8 us (bucket 1 us), one of 30 us (50 us), none above.
        t.buckets[1] = 2;
        t.buckets[6] = 1;
        t.nanos = 800 + 800 + 30_000;
        let (seconds, buckets) = t.estimate(10);
        assert_eq!(buckets.len(), CALL_BUCKETS.len() + 1);
        assert_eq!(buckets[1], (1e-6, 7)); // round(2 x 10 / 3)
        assert_eq!(buckets[6], (50e-6, 3)); // the rest: cumulative 10
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 10);
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 0)));
        assert!((seconds - 31_600e-9 * 10.0 / 3.0).abs() < 1e-12, "{seconds}");
        // Nothing timed yet (a call counted before its time): everything in +Inf.
        let (seconds, buckets) = Timings::default().estimate(4);
        assert_eq!((seconds, buckets.last().copied()), (0.0, Some((f64::INFINITY, 4))));
    }

    #[test]
    fn a_call_longer_than_the_last_bound_lands_in_the_overflow_bucket() {
        let stats = Stats::default();
        stats.add_time(Hook::Init, Instant::now() - Duration::from_millis(1_500));
        stats.add_time(Hook::Init, Instant::now());
        let t = stats.timings(Hook::Init);
        assert_eq!(t.buckets[CALL_BUCKETS.len()], 1);
        assert_eq!(t.buckets[0], 1);
    }
}
