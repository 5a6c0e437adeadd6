//! The one place wasmtime is configured: component model without its async concurrency (it
//! makes every call ~3x slower, DESIGN §6), epoch interruption driven by a [`Ticker`] for call
//! deadlines, and the pooling allocator sized from `[plugins]`.

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::Policy;
use crate::host_state::HostState;
use crate::ticker::Ticker;

/// Component instances the pool can hold at once (plugins x workers x spare).
pub(crate) const MAX_INSTANCES: u32 = 256;

pub struct PluginEngine {
    pub engine: Engine,
    pub linker: Linker<HostState>,
    /// Stops guest code past its deadline: calls run between [`crate::ticker::CallWatch::enter`]
    /// and `leave`.
    pub ticker: Ticker,
}

impl PluginEngine {
    pub fn new(memory_limit: u64) -> Result<PluginEngine, String> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.concurrency_support(false);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_INSTANCES)
            .total_core_instances(MAX_INSTANCES * 8)
            .total_memories(MAX_INSTANCES * 2)
            .total_tables(MAX_INSTANCES * 4)
            .max_memory_size(usize::try_from(memory_limit).unwrap_or(usize::MAX));
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| format!("cannot create the Wasm engine: {e:#}"))?;
        let mut linker = Linker::new(&engine);
        crate::quiet_io::add_to_linker(&mut linker).map_err(|e| format!("cannot link WASI: {e:#}"))?;
        Policy::add_to_linker::<_, HasSelf<_>>(&mut linker, |s: &mut HostState| s)
            .map_err(|e| format!("cannot link the weir imports: {e:#}"))?;
        let ticker = Ticker::start(engine.clone())?;
        Ok(PluginEngine { engine, linker, ticker })
    }

    /// Identifies compiled artifacts this engine can load (wasmtime version, target, settings).
    pub fn compatibility_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{:016x}", h.finish())
    }
}
