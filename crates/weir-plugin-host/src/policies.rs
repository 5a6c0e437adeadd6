//! `WasmPolicies`: the policy factory backed by plugin files, and the Wasm implementations of
//! weir-core's `BalancePolicy`, `RoutePolicy` and `FailoverPolicy`.
//!
//! `prepare(config)` loads every plugin the config names (compiling off the request path, with
//! the precompiled cache); the generation build then asks the factory for policies. A plugin
//! that fails to load fails the whole prepare, so the running generation keeps serving.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use http::{HeaderName, HeaderValue};
use weir_config::{Config, OnError, PluginRef};
use weir_core::generation::native_round_robin;
use weir_core::policy::{
    AffinityKey, AttemptInfo, BalancePolicy, FailoverPolicy, FailureDecision, FailureKind, RetrySafe, RouteDecision,
    RoutePolicy, RouteRequest, RouteTarget, Select, SelectCtx, is_final_status,
};
use weir_core::upstream::Endpoint;
use weir_core::{PolicyFactory, PoolCtx};

use crate::bindings::types;
use crate::bindings::weir::policy::pools::{EndpointInfo, PoolStatic};
use crate::engine::PluginEngine;
use crate::host_state::PluginCtx;
use crate::loader::{self, Loaded};
use crate::shared_state::PluginShared;
use crate::version::{HOOKS, Hook, OUTCOMES, PluginVersion, Stats};

/// Plugins that weir also has natively: when their file is missing, the native one serves.
const NATIVE: [&str; 2] = ["round-robin", "retry-idempotent"];

pub struct WasmPolicies {
    engine: Arc<PluginEngine>,
    settings: weir_config::Plugins,
    cache_dir: PathBuf,
    /// Per plugin name, kept across reloads: the file currently loaded, shared state, stats.
    loaded: DashMap<String, Arc<Loaded>>,
    ctx: DashMap<String, Arc<PluginCtx>>,
    stats: DashMap<String, Arc<Stats>>,
    /// The versions prepared for the next generation build, by (name, config).
    versions: Mutex<HashMap<(String, String), Arc<PluginVersion>>>,
    /// Names served natively because their file is absent.
    native: DashMap<String, ()>,
    /// Per plugin name, why its file on disk was refused (not a component, `init` refused the
    /// config, ...) while the last good version serves on; gone once a version loads.
    refused: DashMap<String, String>,
}

impl WasmPolicies {
    /// Creates the engine; nothing is loaded until [`PolicyFactory::prepare`].
    pub fn new(settings: &weir_config::Plugins) -> Result<Arc<WasmPolicies>, String> {
        let engine = Arc::new(PluginEngine::new(settings.memory_limit)?);
        Ok(Arc::new(WasmPolicies {
            engine,
            cache_dir: settings.dir.join(".cache"),
            settings: settings.clone(),
            loaded: DashMap::new(),
            ctx: DashMap::new(),
            stats: DashMap::new(),
            versions: Mutex::new(HashMap::new()),
            native: DashMap::new(),
            refused: DashMap::new(),
        }))
    }

    fn load_if_changed(&self, name: &str, path: &std::path::Path) -> Result<Arc<Loaded>, String> {
        if let Some(current) = self.loaded.get(name) {
            let bytes =
                std::fs::read(path).map_err(|e| format!("plugin `{name}`: cannot read {}: {e}", path.display()))?;
            use sha2::Digest;
            let sha: String = sha2::Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if sha == current.sha256 {
                return Ok(current.clone());
            }
        }
        let loaded = loader::load(&self.engine, name, path, Some(&self.cache_dir))?;
        tracing::info!(plugin = name, sha256 = %loaded.sha256, cached = loaded.from_cache, load_ms = loaded.load_time.as_micros() as f64 / 1e3, "plugin loaded");
        Ok(Arc::new(loaded))
    }

    fn version(&self, r: &PluginRef) -> Option<Arc<PluginVersion>> {
        self.versions
            .lock()
            .ok()?
            .get(&(r.plugin.clone(), r.config_json.clone()))
            .cloned()
    }

    fn fail_closed(&self) -> bool {
        self.settings.on_error == OnError::Fail
    }

    /// Calls per plugin, hook and outcome, for metrics.
    pub fn call_counts(&self) -> Vec<(String, &'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for e in self.stats.iter() {
            for hook in HOOKS {
                for outcome in OUTCOMES {
                    let n = e.value().calls(hook, outcome);
                    if n > 0 {
                        out.push((e.key().clone(), hook.as_str(), outcome.as_str(), n));
                    }
                }
            }
        }
        out
    }
}

fn missing(kind: &str, r: &PluginRef) -> String {
    format!("plugin `{}` was not prepared as a {kind}", r.plugin)
}

static POOL_STATIC_GENERATION: AtomicU64 = AtomicU64::new(1);

impl PolicyFactory for WasmPolicies {
    fn balancer(&self, plugin: &PluginRef, pool: &PoolCtx<'_>) -> Result<Arc<dyn BalancePolicy>, String> {
        if self.native.contains_key(&plugin.plugin) && plugin.plugin == "round-robin" {
            return Ok(Arc::new(native_round_robin(pool.endpoints)));
        }
        let version = self.version(plugin).ok_or_else(|| missing("balancer", plugin))?;
        if version.loaded.balancer.is_none() {
            return Err(format!(
                "pool `{}`: plugin `{}` does not export a balancer",
                pool.config.name, plugin.plugin
            ));
        }
        let generation = POOL_STATIC_GENERATION.fetch_add(1, Ordering::Relaxed);
        let pool_static = Arc::new(PoolStatic {
            name: pool.config.name.clone(),
            generation,
            endpoints: pool.endpoints.iter().map(|e| endpoint_info(e)).collect(),
        });
        Ok(Arc::new(WasmBalancer {
            affinity: parse_affinity(&version)?,
            wants_load: version.manifest.wants_load,
            sticky: version.manifest.sticky_cookie.clone(),
            version,
            pool_id: pool.index as u32,
            pool_static,
            fail_closed: self.fail_closed(),
        }))
    }

    fn router(
        &self,
        plugin: &PluginRef,
        listener: &weir_config::Listener,
        pool_names: &[String],
    ) -> Result<Arc<dyn RoutePolicy>, String> {
        let version = self.version(plugin).ok_or_else(|| missing("router", plugin))?;
        if version.loaded.router.is_none() {
            return Err(format!(
                "listener `{}`: plugin `{}` does not export a router",
                listener.name, plugin.plugin
            ));
        }
        let want = version
            .manifest
            .want_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        Ok(Arc::new(WasmRouter {
            affinity: parse_affinity(&version)?,
            version,
            pool_names: pool_names.to_vec(),
            want,
            fail_closed: self.fail_closed(),
        }))
    }

    fn failover(&self, plugin: &PluginRef, pool: &PoolCtx<'_>) -> Result<Arc<dyn FailoverPolicy>, String> {
        if self.native.contains_key(&plugin.plugin) && plugin.plugin == "retry-idempotent" {
            return Ok(Arc::new(RetrySafe));
        }
        let version = self.version(plugin).ok_or_else(|| missing("failover", plugin))?;
        if version.loaded.failover.is_none() {
            return Err(format!(
                "pool `{}`: plugin `{}` does not export a failover policy",
                pool.config.name, plugin.plugin
            ));
        }
        Ok(Arc::new(WasmFailover {
            version,
            pool_names: pool.pool_names.to_vec(),
        }))
    }

    /// Loads (or reuses, when the file is unchanged) every plugin `config` names and runs
    /// `init` with its config. Blocking: call it off the async workers. Every error is returned.
    fn prepare(&self, config: &Config) -> Result<(), Vec<String>> {
        if config.plugins.dir != self.settings.dir {
            tracing::warn!("plugins.dir changed: it applies after a restart");
        }
        let pool_names: Arc<[String]> = config.pools.iter().map(|p| p.name.clone()).collect();
        let mut refs: Vec<&PluginRef> = Vec::new();
        refs.extend(config.listeners.iter().filter_map(|l| l.router.as_ref()));
        for p in &config.pools {
            refs.push(&p.balancer);
            refs.extend(p.failover.as_ref());
        }
        let mut errors = Vec::new();
        let mut versions = HashMap::new();
        let mut fresh: HashMap<String, Arc<Loaded>> = HashMap::new();
        for r in refs {
            let key = (r.plugin.clone(), r.config_json.clone());
            if versions.contains_key(&key) {
                continue;
            }
            let path = config.plugins.dir.join(format!("{}.wasm", r.plugin));
            if !path.is_file() {
                if NATIVE.contains(&r.plugin.as_str()) {
                    if self.native.insert(r.plugin.clone(), ()).is_none() {
                        tracing::info!(plugin = %r.plugin, file = %path.display(), "plugin file not found: using the native policy of the same name");
                    }
                    continue;
                }
                errors.push(format!(
                    "{}: plugin `{}`: {} not found (build the plugins with scripts/build-plugins.sh)",
                    r.at,
                    r.plugin,
                    path.display()
                ));
                continue;
            }
            self.native.remove(&r.plugin);
            let loaded = match fresh.get(&r.plugin) {
                Some(l) => l.clone(),
                None => match self.load_if_changed(&r.plugin, &path) {
                    Ok(l) => {
                        fresh.insert(r.plugin.clone(), l.clone());
                        l
                    }
                    Err(e) => {
                        self.refused.insert(r.plugin.clone(), e.clone());
                        errors.push(format!("{}: {e}", r.at));
                        continue;
                    }
                },
            };
            let ctx = self
                .ctx
                .entry(r.plugin.clone())
                .or_insert_with(|| {
                    Arc::new(PluginCtx {
                        name: r.plugin.clone(),
                        shared: Arc::new(PluginShared::new(&r.plugin)),
                    })
                })
                .clone();
            let stats = self.stats.entry(r.plugin.clone()).or_default().clone();
            match PluginVersion::new(
                self.engine.clone(),
                loaded,
                r.config_json.clone(),
                ctx,
                stats,
                self.settings.memory_limit,
                config.plugins.call_timeout,
                pool_names.clone(),
            ) {
                Ok(v) => {
                    self.refused.remove(&r.plugin);
                    versions.insert(key, Arc::new(v));
                }
                Err(e) => {
                    self.refused.insert(r.plugin.clone(), e.clone());
                    errors.push(format!("{}: {e}", r.at));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        for (name, l) in fresh {
            self.loaded.insert(name, l);
        }
        if let Ok(mut v) = self.versions.lock() {
            *v = versions;
        }
        Ok(())
    }

    fn call_metrics(&self) -> Vec<weir_core::generation::CallMetric> {
        self.call_counts()
            .into_iter()
            .map(|(plugin, hook, result, calls)| weir_core::generation::CallMetric {
                plugin,
                hook,
                result,
                calls,
            })
            .collect()
    }

    fn call_durations(&self) -> Vec<weir_core::generation::CallDuration> {
        let mut out = Vec::new();
        for e in self.stats.iter() {
            for hook in HOOKS {
                let calls: u64 = OUTCOMES
                    .iter()
                    .filter(|o| **o != crate::version::Outcome::Skipped)
                    .map(|o| e.value().calls(hook, *o))
                    .sum();
                if calls > 0 {
                    let (seconds, buckets) = e.value().timings(hook).estimate(calls);
                    out.push(weir_core::generation::CallDuration {
                        plugin: e.key().clone(),
                        hook: hook.as_str(),
                        calls,
                        seconds,
                        buckets,
                    });
                }
            }
        }
        out
    }

    fn plugin_metrics(&self) -> Vec<weir_core::generation::PluginMetric> {
        use weir_core::generation::{PluginMetric, PluginMetricValue};
        let mut out = Vec::new();
        for e in self.ctx.iter() {
            let m = e.value().shared.metrics();
            let plugin = e.key();
            let metric = |value| PluginMetric {
                plugin: plugin.clone(),
                value,
            };
            out.extend(
                m.counters
                    .into_iter()
                    .map(|(name, total)| metric(PluginMetricValue::Counter { name, total })),
            );
            out.extend(
                m.observations
                    .into_iter()
                    .map(|(name, count, sum)| metric(PluginMetricValue::Observations { name, count, sum })),
            );
            out.push(metric(PluginMetricValue::Dropped(m.dropped)));
            out.push(metric(PluginMetricValue::SharedRefused(
                e.value().shared.shared_refused(),
            )));
        }
        out
    }

    fn status(&self) -> serde_json::Value {
        let mut out = Vec::new();
        for e in self.loaded.iter() {
            let name = e.key();
            let l = e.value();
            let stats = self.stats.get(name).map(|s| s.clone());
            let mut calls = serde_json::Map::new();
            if let Some(s) = &stats {
                for hook in HOOKS {
                    let mut per = serde_json::Map::new();
                    for outcome in OUTCOMES {
                        let n = s.calls(hook, outcome);
                        if n > 0 {
                            per.insert(outcome.as_str().into(), n.into());
                        }
                    }
                    if !per.is_empty() {
                        calls.insert(hook.as_str().into(), per.into());
                    }
                }
            }
            out.push(serde_json::json!({
                "name": name,
                "file": l.path.display().to_string(),
                "sha256": l.sha256,
                "from_cache": l.from_cache,
                "load_ms": l.load_time.as_micros() as f64 / 1e3,
                "in_backoff": stats.as_ref().is_some_and(|s| s.in_backoff()),
                "last_error": stats.as_ref().and_then(|s| s.last_error.lock().ok().and_then(|e| e.clone())),
                "refused": self.refused.get(name).map(|e| e.value().clone()),
                "calls": calls,
            }));
        }
        for e in self.native.iter() {
            out.push(serde_json::json!({ "name": e.key(), "native": true }));
        }
        serde_json::Value::Array(out)
    }
}

fn parse_affinity(version: &PluginVersion) -> Result<Option<AffinityKey>, String> {
    match &version.manifest.affinity_key {
        None => Ok(None),
        Some(k) => AffinityKey::parse(k)
            .map(Some)
            .map_err(|e| format!("plugin `{}`: {e}", version.loaded.name)),
    }
}

fn endpoint_info(e: &Endpoint) -> EndpointInfo {
    EndpointInfo {
        id: e.id,
        address: e.label.clone(),
        weight: e.weight(),
        zone: e.zone.clone(),
        backup: e.is_backup(),
        labels: Vec::new(),
    }
}

/// 0 healthy, 2 unhealthy, 3 draining (the WIT's codes).
fn health_code(e: &Endpoint) -> u8 {
    if e.is_drained() {
        3
    } else if !e.is_healthy() {
        2
    } else {
        0
    }
}

struct WasmBalancer {
    version: Arc<PluginVersion>,
    wants_load: bool,
    pool_id: u32,
    pool_static: Arc<PoolStatic>,
    affinity: Option<AffinityKey>,
    sticky: Option<String>,
    fail_closed: bool,
}

impl BalancePolicy for WasmBalancer {
    fn select(&self, endpoints: &[Arc<Endpoint>], ctx: &SelectCtx<'_>) -> Select {
        let answer = self.version.call(Hook::Select, |inst| {
            let inst = &mut *inst;
            let state = inst.store.data_mut();
            if !state.pool.as_ref().is_some_and(|p| Arc::ptr_eq(p, &self.pool_static)) {
                state.pool = Some(self.pool_static.clone());
            }
            let v = &mut inst.view;
            v.pool_id = self.pool_id;
            v.generation = self.pool_static.generation;
            // The health column changes rarely: refill it only when this pool or any endpoint's
            // health changed since this instance last filled it.
            let view_for = (
                Arc::as_ptr(&self.pool_static) as usize,
                weir_core::upstream::health_epoch(),
            );
            if inst.view_for != view_for || v.health.len() != endpoints.len() {
                v.health.clear();
                v.health.extend(endpoints.iter().map(|e| health_code(e)));
                inst.view_for = view_for;
            }
            v.in_flight.clear();
            v.ewma_latency_us.clear();
            if self.wants_load {
                let now = weir_core::upstream::now_ms();
                v.in_flight.extend(endpoints.iter().map(|e| e.in_flight()));
                v.ewma_latency_us.extend(endpoints.iter().map(|e| e.latency_us_at(now)));
            }
            let k = &mut inst.key;
            k.request_id = ctx.request_id;
            k.affinity_hash = ctx.affinity_hash;
            k.cookie = ctx.cookie;
            k.attempt = ctx.attempt;
            k.tried.clear();
            k.tried.extend_from_slice(ctx.tried);
            let Some(b) = &inst.balancer else {
                return Err(wasmtime::format_err!("no balancer export"));
            };
            b.call_select(&mut inst.store, &inst.view, &inst.key)
        });
        match answer {
            Some(types::SelectDecision::Endpoint(i)) => match endpoints.get(i as usize) {
                Some(e) if e.is_eligible() => Select::Endpoint(i as usize),
                _ => {
                    self.version
                        .invalid(Hook::Select, format!("endpoint {i} is not eligible"));
                    Select::Native
                }
            },
            Some(types::SelectDecision::HostDefault) => Select::Native,
            Some(types::SelectDecision::Unavailable) => Select::Unavailable,
            None if self.fail_closed => Select::Unavailable,
            None => Select::Native,
        }
    }

    fn affinity(&self) -> Option<&AffinityKey> {
        self.affinity.as_ref()
    }

    fn sticky_cookie(&self) -> Option<&str> {
        self.sticky.as_deref()
    }
}

struct WasmRouter {
    version: Arc<PluginVersion>,
    pool_names: Vec<String>,
    want: Vec<HeaderName>,
    affinity: Option<AffinityKey>,
    fail_closed: bool,
}

fn method(m: &http::Method) -> types::Method {
    use http::Method as M;
    match *m {
        M::GET => types::Method::Get,
        M::HEAD => types::Method::Head,
        M::POST => types::Method::Post,
        M::PUT => types::Method::Put,
        M::DELETE => types::Method::Delete,
        M::OPTIONS => types::Method::Options,
        M::PATCH => types::Method::Patch,
        M::CONNECT => types::Method::Connect,
        M::TRACE => types::Method::Trace,
        _ => types::Method::Other(m.as_str().to_string()),
    }
}

fn ip(addr: IpAddr) -> types::IpAddr {
    match addr.to_canonical() {
        IpAddr::V4(v4) => types::IpAddr::V4(u32::from(v4)),
        IpAddr::V6(v6) => {
            let n = u128::from(v6);
            types::IpAddr::V6(((n >> 64) as u64, n as u64))
        }
    }
}

fn headers_out(list: Vec<types::Header>) -> Vec<(HeaderName, HeaderValue)> {
    list.into_iter()
        .filter_map(|h| {
            Some((
                HeaderName::from_bytes(h.name.as_bytes()).ok()?,
                HeaderValue::from_bytes(&h.value).ok()?,
            ))
        })
        .collect()
}

impl RoutePolicy for WasmRouter {
    fn route(&self, req: &RouteRequest<'_>) -> RouteDecision {
        let info = types::ReqInfo {
            id: req.request_id,
            method: method(req.method),
            scheme: if req.https {
                types::Scheme::Https
            } else {
                types::Scheme::Http
            },
            authority: req.host.to_string(),
            path_and_query: req.path_and_query.to_string(),
            client_ip: ip(req.client_ip),
            affinity_hash: self.affinity.as_ref().map_or(0, |k| {
                let path = req.path_and_query.split('?').next().unwrap_or("/");
                weir_core::proxy::affinity_hash(k, req.client_ip, path, req.headers)
            }),
            headers: self
                .want
                .iter()
                .flat_map(|name| {
                    req.headers.get_all(name).iter().map(move |v| types::Header {
                        name: name.as_str().to_string(),
                        value: v.as_bytes().to_vec(),
                    })
                })
                .collect(),
        };
        let answer = self.version.call(Hook::Route, |inst| {
            let inst = &mut *inst;
            let Some(r) = &inst.router else {
                return Err(wasmtime::format_err!("no router export"));
            };
            r.call_route(&mut inst.store, &info)
        });
        match answer {
            Some(types::RouteDecision::DefaultRoute) => RouteDecision::Default,
            Some(types::RouteDecision::Upstream(t)) => match self.pool_names.iter().position(|n| *n == t.pool) {
                Some(pool) => RouteDecision::Upstream(RouteTarget {
                    pool,
                    rewrite_path: t.rewrite_path,
                    set_headers: headers_out(t.set_headers),
                    // A zero timeout would fail every attempt at once: the pool's own serves,
                    // and the answer is counted as invalid.
                    timeout: match t.timeout_ms {
                        Some(0) => {
                            self.version
                                .invalid(Hook::Route, "timeout-ms 0 (the pool's timeout serves)".into());
                            None
                        }
                        ms => ms.map(|ms| Duration::from_millis(u64::from(ms))),
                    },
                    cookie: t.cookie,
                }),
                None => {
                    self.version.invalid(Hook::Route, format!("unknown pool `{}`", t.pool));
                    RouteDecision::Default
                }
            },
            Some(types::RouteDecision::Respond(r)) if is_final_status(r.status) => RouteDecision::Respond {
                status: r.status,
                headers: headers_out(r.headers),
                body: r.body.into(),
            },
            Some(types::RouteDecision::Respond(r)) => {
                self.version
                    .invalid(Hook::Route, format!("respond with status {} (200-599 only)", r.status));
                RouteDecision::Default
            }
            None if self.fail_closed => RouteDecision::Respond {
                status: 503,
                headers: Vec::new(),
                body: "router plugin failed\n".into(),
            },
            None => RouteDecision::Default,
        }
    }
}

struct WasmFailover {
    version: Arc<PluginVersion>,
    pool_names: Vec<String>,
}

impl FailoverPolicy for WasmFailover {
    fn on_failure(&self, a: &AttemptInfo) -> FailureDecision {
        let info = types::AttemptInfo {
            request_id: a.request_id,
            cookie: a.cookie,
            attempt: a.attempt,
            pool_id: a.pool_index,
            endpoint_index: a.endpoint_index,
            failure: match a.failure {
                FailureKind::ConnectRefused | FailureKind::LocalResources => types::FailureKind::ConnectRefused,
                FailureKind::ConnectTimeout => types::FailureKind::ConnectTimeout,
                FailureKind::TlsError => types::FailureKind::TlsError,
                FailureKind::ResetBeforeResponse | FailureKind::InvalidResponse => {
                    types::FailureKind::ResetBeforeResponse
                }
                FailureKind::ResponseTimeout => types::FailureKind::ResponseTimeout,
                FailureKind::HttpStatus(s) => types::FailureKind::HttpStatus(s),
            },
            elapsed_ms: u32::try_from(a.elapsed.as_millis()).unwrap_or(u32::MAX),
            replayable: a.replayable,
        };
        let answer = self.version.call(Hook::OnFailure, |inst| {
            let inst = &mut *inst;
            let Some(f) = &inst.failover else {
                return Err(wasmtime::format_err!("no failover export"));
            };
            f.call_on_failure(&mut inst.store, info)
        });
        match answer {
            Some(types::FailureDecision::Retry(ms)) => FailureDecision::Retry {
                backoff: Duration::from_millis(u64::from(ms)),
            },
            Some(types::FailureDecision::Failover(t)) => match self.pool_names.iter().position(|n| *n == t.pool) {
                Some(pool) => FailureDecision::Failover { pool },
                None => {
                    self.version
                        .invalid(Hook::OnFailure, format!("unknown pool `{}`", t.pool));
                    FailureDecision::Fail
                }
            },
            Some(types::FailureDecision::Fail) => FailureDecision::Fail,
            Some(types::FailureDecision::Respond(r)) if is_final_status(r.status) => FailureDecision::Respond {
                status: r.status,
                headers: headers_out(r.headers),
                body: r.body.into(),
            },
            Some(types::FailureDecision::Respond(r)) => {
                self.version.invalid(
                    Hook::OnFailure,
                    format!("respond with status {} (200-599 only)", r.status),
                );
                FailureDecision::Fail
            }
            None => RetrySafe.on_failure(a),
        }
    }

    fn judges_status(&self, status: u16) -> bool {
        status >= 500
    }
}
