//! Loading a plugin file: read -> sha256 -> precompiled artifact from the cache (keyed by the
//! content hash and the engine's compatibility hash) or compile and store -> link type-check
//! (`instantiate_pre`) -> find which hooks it exports. Runs off the request path; every failure
//! is an error string naming the file and what is wrong with it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre};

use crate::bindings::{balancer, failover, lifecycle, router};
use crate::engine::PluginEngine;
use crate::host_state::HostState;

/// A plugin file, compiled and linked, ready to instantiate.
pub struct Loaded {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub pre: InstancePre<HostState>,
    pub lifecycle: lifecycle::GuestIndices,
    pub router: Option<router::GuestIndices>,
    pub balancer: Option<balancer::GuestIndices>,
    pub failover: Option<failover::GuestIndices>,
    pub from_cache: bool,
    pub load_time: Duration,
}

pub const INTERFACE_VERSION: &str = "weir:policy@0.1.0";

pub fn load(engine: &PluginEngine, name: &str, path: &Path, cache_dir: Option<&Path>) -> Result<Loaded, String> {
    let started = Instant::now();
    let bytes = std::fs::read(path).map_err(|e| format!("plugin `{name}`: cannot read {}: {e}", path.display()))?;
    let sha256 = hex(&Sha256::digest(&bytes));
    let cached = cache_dir.map(|d| d.join(format!("{sha256}-{}.cwasm", engine.compatibility_key())));
    let (component, from_cache) = match cached
        .as_deref()
        .filter(|p| p.is_file())
        .and_then(|p| deserialize(engine, p))
    {
        Some(c) => (c, true),
        None => {
            if !bytes.starts_with(b"\0asm") {
                return Err(format!("plugin `{name}`: {} is not a WebAssembly file", path.display()));
            }
            let component = Component::new(&engine.engine, &bytes).map_err(|e| {
                format!("plugin `{name}`: {} is not a usable WebAssembly component (build it for wasm32-wasip2 against {INTERFACE_VERSION}): {e:#}", path.display())
            })?;
            if let Some(cache) = &cached {
                store_artifact(&component, cache);
            }
            (component, false)
        }
    };
    let pre = engine.linker.instantiate_pre(&component).map_err(|e| {
        format!("plugin `{name}`: {} imports something weir does not provide (built against another interface version than {INTERFACE_VERSION}?): {e:#}", path.display())
    })?;
    let lifecycle = lifecycle::GuestIndices::new(&pre).map_err(|_| {
        format!("plugin `{name}`: {} does not export `weir:policy/lifecycle@0.1.0` (built against another interface version?)", path.display())
    })?;
    let router = router::GuestIndices::new(&pre).ok();
    let balancer = balancer::GuestIndices::new(&pre).ok();
    let failover = failover::GuestIndices::new(&pre).ok();
    if router.is_none() && balancer.is_none() && failover.is_none() {
        return Err(format!(
            "plugin `{name}`: {} exports none of router, balancer, failover of {INTERFACE_VERSION}",
            path.display()
        ));
    }
    Ok(Loaded {
        name: name.to_string(),
        path: path.to_path_buf(),
        sha256,
        pre,
        lifecycle,
        router,
        balancer,
        failover,
        from_cache,
        load_time: started.elapsed(),
    })
}

/// Loads a precompiled artifact written by [`store_artifact`].
#[allow(unsafe_code)]
fn deserialize(engine: &PluginEngine, path: &Path) -> Option<Component> {
    // SAFETY: wasmtime requires that the file is an artifact it produced itself. The cache is
    // written only by `store_artifact` (atomically, via rename) in weir's own cache folder, and
    // the file name binds it to the source's sha256 and this engine's compatibility hash; an
    // unreadable or incompatible file is an error here, and we fall back to compiling.
    match unsafe { Component::deserialize_file(&engine.engine, path) } {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "ignoring an unusable precompiled plugin");
            None
        }
    }
}

fn store_artifact(component: &Component, path: &Path) {
    let write = || -> std::io::Result<()> {
        let bytes = component.serialize().map_err(std::io::Error::other)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("tmp{}-{n}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!(file = %path.display(), error = %e, "cannot cache the compiled plugin (it will be compiled again next time)");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
