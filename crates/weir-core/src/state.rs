//! State shared by every connection of the process: the current generation and the flags the
//! probes report. Everything the request path reads here is one atomic load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use std::collections::HashMap;

use crate::generation::Generation;
use crate::reload::{ReloadReport, ReloadRequest};

pub struct Shared {
    pub generation: ArcSwap<Generation>,
    /// Where reload requests go (the controller task); set once the gateway runs.
    pub reloads: OnceLock<mpsc::Sender<ReloadRequest>>,
    /// The outcome of the last reload, for `/api/v1/status`.
    pub last_reload: Mutex<Option<ReloadReport>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    request_ids: AtomicU64,
    /// Set by SIGTERM: `/readyz` 503, listeners stop accepting.
    draining: AtomicBool,
    /// Set by `PUT /api/v1/readiness`: `/readyz` 503 while traffic is still served.
    unready: AtomicBool,
    /// Listeners of the first generation are bound.
    started: AtomicBool,
    /// Per plugin name: the file version (sha256) serving, and the generation that first
    /// served it, for `/api/v1/status`. Written only when a generation is installed.
    plugin_generations: Mutex<HashMap<String, (String, u64)>>,
    /// The client connections' tasks (and parked connections), which a graceful shutdown waits
    /// for. Here rather than in every connection's state: a parked connection takes its token
    /// from it.
    pub connections: TaskTracker,
    /// The bearer token mutating admin calls need (`[admin] token_file` or `token_env`), `None`
    /// without one: read at start and again on every reload, so a rotated secret applies
    /// without a restart.
    pub admin_token: ArcSwapOption<String>,
}

impl Shared {
    pub fn new(generation: Generation) -> Self {
        let plugin_generations = Mutex::new(HashMap::new());
        note_plugins(&plugin_generations, &generation);
        Shared {
            generation: ArcSwap::from_pointee(generation),
            plugin_generations,
            reloads: OnceLock::new(),
            last_reload: Mutex::new(None),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            request_ids: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            unready: AtomicBool::new(false),
            started: AtomicBool::new(false),
            connections: TaskTracker::new(),
            admin_token: ArcSwapOption::empty(),
        }
    }

    /// Makes `generation` the one new requests pin, noting which plugin versions it brought.
    pub fn install(&self, generation: Generation) {
        note_plugins(&self.plugin_generations, &generation);
        for pool in &generation.pools {
            pool.forget_lone_outage();
        }
        self.generation.store(std::sync::Arc::new(generation));
    }

    /// `generation`'s plugin report for `/api/v1/status`, each plugin with the generation that
    /// first served its version (DESIGN §5).
    pub fn plugins_status(&self, generation: &Generation) -> serde_json::Value {
        let mut plugins = generation.policies.status();
        let Ok(map) = self.plugin_generations.lock() else {
            return plugins;
        };
        for p in plugins.as_array_mut().into_iter().flatten() {
            let first = plugin_version(p)
                .and_then(|(name, sha)| map.get(name).filter(|(known, _)| known == sha))
                .map(|(_, g)| *g);
            if let Some(obj) = p.as_object_mut() {
                obj.insert("generation".into(), first.into());
            }
        }
        plugins
    }

    pub fn next_request_id(&self) -> u64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.unready.store(!ready, Ordering::Release);
    }

    pub fn set_started(&self) {
        self.started.store(true, Ordering::Release);
    }

    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// What `/readyz` answers.
    pub fn is_ready(&self) -> bool {
        self.is_started() && !self.is_draining() && !self.unready.load(Ordering::Acquire)
    }

    pub fn operator_ready(&self) -> bool {
        !self.unready.load(Ordering::Acquire)
    }
}

/// Records, for each plugin of `generation` whose version is new, that this generation
/// brought it. A plugin served natively (its file absent) counts as the version `native`.
fn note_plugins(map: &Mutex<HashMap<String, (String, u64)>>, generation: &Generation) {
    let Ok(mut map) = map.lock() else { return };
    let status = generation.policies.status();
    for (name, sha) in status.as_array().into_iter().flatten().filter_map(plugin_version) {
        if map.get(name).is_none_or(|(known, _)| known != sha) {
            map.insert(name.to_string(), (sha.to_string(), generation.id));
        }
    }
}

/// A plugin entry's name and version: its sha256, or `native` for a policy served natively.
fn plugin_version(p: &serde_json::Value) -> Option<(&str, &str)> {
    Some((p["name"].as_str()?, p["sha256"].as_str().unwrap_or("native")))
}
