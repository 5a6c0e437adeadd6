//! What each plugin instance's store holds, and the host side of the `host`, `pools`, `shared`
//! and `metrics` imports. WASI is linked (Rust's std imports it) but grants nothing: no
//! preopened directories, no environment, no sockets, empty stdin, stdout/stderr discarded.

use std::sync::Arc;

use wasmtime::StoreLimits;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::weir::policy::{host, metrics, pools, shared, types};
use crate::log_budget::{LINES_PER_SECOND, Verdict, bounded};
use crate::shared_state::PluginShared;
use crate::ticker::CallWatch;

/// Per-plugin data every instance of the plugin points at.
pub struct PluginCtx {
    pub name: String,
    pub shared: Arc<PluginShared>,
}

pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limits: StoreLimits,
    pub plugin: Arc<PluginCtx>,
    /// The static data of the pool being served (answers `pools.pool-info`).
    pub pool: Option<Arc<pools::PoolStatic>>,
    pub pool_names: Arc<[String]>,
    rng: u64,
    /// The running call as the watchdog sees it; the store's epoch-deadline callback judges it.
    pub watch: CallWatch,
}

impl HostState {
    pub fn new(
        plugin: Arc<PluginCtx>,
        memory_limit: u64,
        pool_names: Arc<[String]>,
        seed: u64,
        watch: CallWatch,
    ) -> Self {
        let limits = wasmtime::StoreLimitsBuilder::new()
            .memory_size(usize::try_from(memory_limit).unwrap_or(usize::MAX))
            .trap_on_grow_failure(true)
            .build();
        HostState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limits,
            plugin,
            pool: None,
            pool_names,
            rng: seed | 1,
            watch,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, msg: String) {
        let enabled = match level {
            host::Level::Trace => tracing::enabled!(tracing::Level::TRACE),
            host::Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            host::Level::Info => tracing::enabled!(tracing::Level::INFO),
            host::Level::Warn => tracing::enabled!(tracing::Level::WARN),
            host::Level::Error => tracing::enabled!(tracing::Level::ERROR),
        };
        if !enabled {
            return;
        }
        let plugin = self.plugin.name.as_str();
        let now_ms = crate::ticker::now_ns() / 1_000_000;
        match self.plugin.shared.log_budget.take(now_ms) {
            Verdict::Drop => return,
            Verdict::Write { suppressed: 0 } => {}
            Verdict::Write { suppressed } => tracing::warn!(
                plugin,
                suppressed,
                "plugin log lines dropped: over {LINES_PER_SECOND} a second"
            ),
        }
        let msg = bounded(&msg);
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{msg}"),
            host::Level::Debug => tracing::debug!(plugin, "{msg}"),
            host::Level::Info => tracing::info!(plugin, "{msg}"),
            host::Level::Warn => tracing::warn!(plugin, "{msg}"),
            host::Level::Error => tracing::error!(plugin, "{msg}"),
        }
    }

    fn now_ns(&mut self) -> u64 {
        crate::ticker::now_ns()
    }

    fn random_u64(&mut self) -> u64 {
        // xorshift64*: fast, per instance, seeded by the host.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

impl pools::Host for HostState {
    fn pool_info(&mut self, pool_id: u32) -> Option<pools::PoolStatic> {
        let pool = self.pool.as_ref()?;
        let id = self.pool_names.iter().position(|n| *n == pool.name)?;
        (id as u32 == pool_id).then(|| (**pool).clone())
    }

    fn pool_id(&mut self, name: String) -> Option<u32> {
        self.pool_names.iter().position(|n| *n == name).map(|i| i as u32)
    }
}

impl shared::Host for HostState {
    fn counter_add(&mut self, key: String, delta: i64) -> i64 {
        self.plugin.shared.counter_add(key, delta)
    }

    fn sticky_get(&mut self, pool_id: u32, key: u64) -> Option<u32> {
        self.plugin.shared.sticky_get(pool_id, key)
    }

    fn sticky_set(&mut self, pool_id: u32, key: u64, endpoint_id: u32, ttl_ms: u32) {
        self.plugin.shared.sticky_set(pool_id, key, endpoint_id, ttl_ms)
    }

    fn kv_get(&mut self, key: String) -> Option<(Vec<u8>, u64)> {
        self.plugin.shared.kv_get(&key)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, expected_version: u64) -> Option<u64> {
        self.plugin.shared.kv_set(key, value, expected_version)
    }
}

impl metrics::Host for HostState {
    fn counter_inc(&mut self, name: String, delta: u64) {
        self.plugin.shared.metric_inc(name, delta)
    }

    fn histogram_record(&mut self, name: String, value: f64) {
        self.plugin.shared.metric_record(name, value)
    }
}
