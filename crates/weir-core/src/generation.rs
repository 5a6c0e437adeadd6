//! A generation: one immutable, fully built snapshot of the config with its runtime objects
//! (pools, endpoints, policies). Requests pin the generation they start on (one `ArcSwap` load);
//! a reload builds the next one beside it and swaps the pointer. Endpoints whose address did not
//! change are carried over, so their health, counters and pooled connections survive reloads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use http::HeaderValue;
use weir_config::{Config, EndpointAddress, PluginRef};

use crate::budget::RetryBudget;
use crate::policy::{BalancePolicy, FailoverPolicy, RetrySafe, RoundRobin, RoutePolicy};
use crate::upstream::Endpoint;

/// What a factory knows of the pool it builds a policy for.
pub struct PoolCtx<'a> {
    /// Index in `Generation::pools` (the WIT's `pool-id`).
    pub index: usize,
    pub config: &'a weir_config::Pool,
    pub endpoints: &'a [Arc<Endpoint>],
    pub pool_names: &'a [String],
}

/// Builds policies from the plugin references of the config. The native factory knows the
/// built-in policies; the Wasm plugin host provides another.
pub trait PolicyFactory: Send + Sync {
    fn balancer(&self, plugin: &PluginRef, pool: &PoolCtx<'_>) -> Result<Arc<dyn BalancePolicy>, String>;
    fn router(
        &self,
        plugin: &PluginRef,
        listener: &weir_config::Listener,
        pool_names: &[String],
    ) -> Result<Arc<dyn RoutePolicy>, String>;
    fn failover(&self, plugin: &PluginRef, pool: &PoolCtx<'_>) -> Result<Arc<dyn FailoverPolicy>, String>;
    /// Loads whatever `config` references before a generation is built from it (plugin files:
    /// compiled here, off the request path). Blocking.
    fn prepare(&self, _config: &Config) -> Result<(), Vec<String>> {
        Ok(())
    }
    /// What `/api/v1/status` shows under `plugins`.
    fn status(&self) -> serde_json::Value {
        serde_json::Value::Array(Vec::new())
    }
    /// `weir_plugin_calls_total`.
    fn call_metrics(&self) -> Vec<CallMetric> {
        Vec::new()
    }
    /// `weir_plugin_call_duration_seconds`.
    fn call_durations(&self) -> Vec<CallDuration> {
        Vec::new()
    }
    /// The plugins' own metrics (their `metrics` import): `weir_plugin_counter_total`,
    /// `weir_plugin_observations`, `weir_plugin_metrics_dropped_total`; and
    /// `weir_plugin_shared_refused_total`.
    fn plugin_metrics(&self) -> Vec<PluginMetric> {
        Vec::new()
    }
}

/// One metric a plugin keeps through its `metrics` import.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginMetric {
    pub plugin: String,
    pub value: PluginMetricValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PluginMetricValue {
    /// `counter-inc(name, delta)`: the sum of the deltas.
    Counter { name: String, total: u64 },
    /// `histogram-record(name, value)`: how many values, and their sum.
    Observations { name: String, count: u64, sum: f64 },
    /// Values the host refused: a name too long or past the plugin's bound of names, a value
    /// that is not finite.
    Dropped(u64),
    /// Writes to the plugin's `shared` state refused by its bounds (counters, sticky entries,
    /// kv bytes).
    SharedRefused(u64),
}

/// Calls of one plugin hook with one result.
#[derive(Debug, Clone)]
pub struct CallMetric {
    pub plugin: String,
    pub hook: &'static str,
    pub result: &'static str,
    pub calls: u64,
}

/// How long the calls of one plugin hook took: a histogram estimated from the timed calls.
#[derive(Debug, Clone)]
pub struct CallDuration {
    pub plugin: String,
    pub hook: &'static str,
    pub calls: u64,
    pub seconds: f64,
    /// (upper bound in seconds, calls in that bucket): not cumulative, the last bound
    /// `f64::INFINITY`; the counts sum to `calls`.
    pub buckets: Vec<(f64, u64)>,
}

/// The policies weir has without any plugin: `round-robin` and `retry-idempotent`.
#[derive(Debug, Default)]
pub struct NativePolicies;

impl PolicyFactory for NativePolicies {
    fn balancer(&self, plugin: &PluginRef, pool: &PoolCtx<'_>) -> Result<Arc<dyn BalancePolicy>, String> {
        match plugin.plugin.as_str() {
            "round-robin" => Ok(Arc::new(native_round_robin(pool.endpoints))),
            other => Err(format!(
                "pool `{}`: balancer plugin `{other}` is not available without the plugin host (native: round-robin)",
                pool.config.name
            )),
        }
    }

    fn router(
        &self,
        plugin: &PluginRef,
        listener: &weir_config::Listener,
        _pool_names: &[String],
    ) -> Result<Arc<dyn RoutePolicy>, String> {
        Err(format!(
            "listener `{}`: router plugin `{}` is not available without the plugin host",
            listener.name, plugin.plugin
        ))
    }

    fn failover(&self, plugin: &PluginRef, pool: &PoolCtx<'_>) -> Result<Arc<dyn FailoverPolicy>, String> {
        match plugin.plugin.as_str() {
            "retry-idempotent" => Ok(Arc::new(RetrySafe)),
            other => Err(format!(
                "pool `{}`: failover plugin `{other}` is not available without the plugin host (native: retry-idempotent)",
                pool.config.name
            )),
        }
    }
}

/// The native round-robin over a pool's endpoints and their current weights.
pub fn native_round_robin(endpoints: &[Arc<Endpoint>]) -> RoundRobin {
    let weights: Vec<u32> = endpoints.iter().map(|e| e.weight()).collect();
    RoundRobin::new(&weights)
}

/// A listener's per-generation settings (its socket lives outside generations).
pub struct ListenerRt {
    pub name: String,
    pub config: weir_config::Listener,
    /// Index of the default pool in `Generation::pools`.
    pub pool: usize,
    pub router: Option<Arc<dyn RoutePolicy>>,
    /// `X-Forwarded-Proto` value: the advertised scheme, else the listener's own.
    pub forwarded_proto: HeaderValue,
    /// `X-Forwarded-Host` value when `advertise` is set (else the request's Host is used).
    pub forwarded_host: Option<HeaderValue>,
    /// Request counters per pool index (resolved here once, not per request).
    pub routes: Vec<Arc<crate::metrics::RouteMetrics>>,
}

pub struct PoolRt {
    pub name: String,
    pub config: weir_config::Pool,
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balancer: Arc<dyn BalancePolicy>,
    /// The fallback when the balancer answers nothing usable.
    pub native: RoundRobin,
    pub failover: Arc<dyn FailoverPolicy>,
    /// Caps retries to a share of the pool's request rate.
    pub budget: RetryBudget,
    /// `[pool.tls]`: HTTPS to the upstreams (and the health checks).
    pub tls: Option<Arc<crate::upstream_tls::UpstreamTls>>,
    /// `resolve = "all"`: the names this generation expanded, and to which addresses.
    pub names: NameSources,
    /// Where requests wait when every endpoint is at its `max_in_flight` (slots.rs), and
    /// whether every endpoint has one (then a new request waits behind those waiting).
    pub queue: Arc<crate::slots::PoolQueue>,
    pub all_capped: bool,
}

impl PoolRt {
    /// On a generation's install: an endpoint left alone in its pool by this generation
    /// forgets an outage passive health gave it in a larger one.
    pub fn forget_lone_outage(&self) {
        if let [lone] = self.endpoints.as_slice() {
            lone.clear_passive();
        }
    }

    /// Counts a failed attempt on `endpoint` for passive health (`max_fails` within
    /// `fail_timeout`). Not in a pool of one endpoint, as nginx ignores `max_fails` for a lone
    /// server: taking out the only endpoint turns every request into a 503 for
    /// `fail_timeout`, even after a restarted replica is back, where trying it costs a refused
    /// connect at worst. Active checks (`[pool.health]`) still take a lone endpoint out, and a
    /// backup makes two.
    pub fn record_failure(&self, endpoint: &Endpoint, cause: std::fmt::Arguments<'_>) {
        if self.endpoints.len() > 1 {
            endpoint.record_failure(&self.config.passive, cause);
        }
    }
}

pub struct Generation {
    pub id: u64,
    pub config: Arc<Config>,
    pub listeners: Vec<ListenerRt>,
    pub pools: Vec<Arc<PoolRt>>,
    /// The factory that built this generation's policies (for status reports).
    pub policies: Arc<dyn PolicyFactory>,
}

static NEXT_ENDPOINT_ID: AtomicU32 = AtomicU32::new(1);

/// A pool's endpoints as configured, except that in a `resolve = "all"` pool a hostname whose
/// addresses are known ([`crate::dns`]) becomes one endpoint per address, each with the name.
/// A name not looked up yet stays one endpoint until its first lookup makes a new generation.
fn expand(pc: &weir_config::Pool, names: &NameSources) -> Vec<(weir_config::Endpoint, Option<EndpointAddress>)> {
    let mut out = Vec::with_capacity(pc.endpoints.len());
    // An address listed itself, or found for an earlier name, is one endpoint all the same.
    let mut seen: std::collections::HashSet<std::net::SocketAddr> = pc
        .endpoints
        .iter()
        .filter_map(|e| match e.address {
            EndpointAddress::Socket(a) => Some(a),
            EndpointAddress::Host { .. } => None,
        })
        .collect();
    for ec in &pc.endpoints {
        let known = match &ec.address {
            EndpointAddress::Host { host, port } => names
                .iter()
                .find(|(h, p, _)| h == host && p == port)
                .and_then(|(_, _, a)| a.clone()),
            EndpointAddress::Socket(_) => None,
        };
        if let Some(addrs) = known {
            for a in addrs.iter().filter(|a| seen.insert(**a)) {
                let mut one = ec.clone();
                one.address = EndpointAddress::Socket(*a);
                out.push((one, Some(ec.address.clone())));
            }
        } else {
            out.push((ec.clone(), None));
        }
    }
    out
}

/// What a `resolve = "all"` pool was built from: each name with the addresses it was
/// expanded to (`None` while not looked up yet, and the name is still one endpoint).
pub type NameSources = Vec<(String, u16, Option<Arc<Vec<std::net::SocketAddr>>>)>;

fn name_sources(pc: &weir_config::Pool) -> NameSources {
    if !pc.resolve_all {
        return Vec::new();
    }
    pc.endpoints
        .iter()
        .filter_map(|ec| match &ec.address {
            EndpointAddress::Host { host, port } => Some((host.clone(), *port, crate::dns::cached(host, *port))),
            EndpointAddress::Socket(_) => None,
        })
        .collect()
}

impl Generation {
    /// Builds a generation; `prev` lends its endpoints where pool and address match.
    pub fn build(
        id: u64,
        config: Arc<Config>,
        prev: Option<&Generation>,
        policies: Arc<dyn PolicyFactory>,
    ) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut kept: HashMap<(&str, &weir_config::EndpointAddress), Arc<Endpoint>> = HashMap::new();
        if let Some(prev) = prev {
            for p in &prev.pools {
                for e in &p.endpoints {
                    kept.insert((p.name.as_str(), &e.address), e.clone());
                }
            }
        }
        let pool_names: Vec<String> = config.pools.iter().map(|p| p.name.clone()).collect();
        let mut pools = Vec::with_capacity(config.pools.len());
        for (index, pc) in config.pools.iter().enumerate() {
            let names = name_sources(pc);
            // The pool's queue goes on with it, as its endpoints do.
            let queue: Arc<crate::slots::PoolQueue> = prev
                .and_then(|g| g.pools.iter().find(|p| p.name == pc.name))
                .map(|p| p.queue.clone())
                .unwrap_or_default();
            let endpoints: Vec<Arc<Endpoint>> = expand(pc, &names)
                .into_iter()
                .map(|(ec, name)| match kept.get(&(pc.name.as_str(), &ec.address)) {
                    Some(e) => {
                        e.apply(&ec);
                        if pc.health.is_none() {
                            // No checker any more: nothing else would mark it healthy again.
                            e.set_healthy(true);
                        }
                        e.clone()
                    }
                    // With active checks, a new endpoint takes no traffic before its first pass.
                    None => {
                        let mut e = Endpoint::new(
                            NEXT_ENDPOINT_ID.fetch_add(1, Ordering::Relaxed),
                            &ec,
                            pc.timeouts.max_idle_per_endpoint,
                            pc.health.is_none(),
                        );
                        if let Some(n) = &name
                            && crate::dns::is_name_drained(&pc.name, &n.to_string())
                        {
                            e.set_drained(true);
                        }
                        e.name = name;
                        e.queue = queue.clone();
                        Arc::new(e)
                    }
                })
                .collect();
            let ctx = PoolCtx {
                index,
                config: pc,
                endpoints: &endpoints,
                pool_names: &pool_names,
            };
            let balancer = policies.balancer(&pc.balancer, &ctx).unwrap_or_else(|e| {
                errors.push(e);
                Arc::new(native_round_robin(&endpoints))
            });
            let failover: Arc<dyn FailoverPolicy> = match &pc.failover {
                None => Arc::new(RetrySafe),
                Some(f) => policies.failover(f, &ctx).unwrap_or_else(|e| {
                    errors.push(e);
                    Arc::new(RetrySafe)
                }),
            };
            let native = native_round_robin(&endpoints);
            let prev_tls = prev
                .and_then(|g| g.pools.iter().find(|p| p.name == pc.name))
                .and_then(|p| p.tls.as_ref());
            let tls = pc.tls.as_ref().and_then(|t| {
                crate::upstream_tls::UpstreamTls::build_or_keep(t, pc.protocol, prev_tls)
                    .map_err(|e| errors.push(weir_config::in_context(&format!("pool `{}`: [pool.tls]", pc.name), e)))
                    .ok()
            });
            pools.push(Arc::new(PoolRt {
                name: pc.name.clone(),
                config: pc.clone(),
                endpoints,
                balancer,
                native,
                failover,
                budget: RetryBudget::new(pc.retry.budget),
                tls,
                names,
                queue,
                all_capped: pc.endpoints.iter().all(|e| e.max_in_flight > 0),
            }));
        }
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for lc in &config.listeners {
            let Some(pool) = pool_names.iter().position(|n| *n == lc.pool) else {
                errors.push(format!("listener `{}` names unknown pool `{}`", lc.name, lc.pool));
                continue;
            };
            let router = lc
                .router
                .as_ref()
                .and_then(|r| policies.router(r, lc, &pool_names).map_err(|e| errors.push(e)).ok());
            let own_scheme = if lc.tls.is_some() { "https" } else { "http" };
            let scheme = lc.advertise.as_ref().map_or(own_scheme, |a| a.scheme.as_str());
            listeners.push(ListenerRt {
                name: lc.name.clone(),
                config: lc.clone(),
                pool,
                router,
                forwarded_proto: HeaderValue::from_static(scheme),
                forwarded_host: lc
                    .advertise
                    .as_ref()
                    .and_then(|a| HeaderValue::from_str(&a.authority).ok()),
                routes: pool_names
                    .iter()
                    .map(|p| crate::metrics::global().route(&lc.name, p))
                    .collect(),
            });
        }
        if errors.is_empty() {
            // Every pool's retry counter exists from the start, at 0: `rate()` over it and alerts
            // on it work before the first retry (a series that appears later reads as absent).
            for p in &pools {
                crate::metrics::global().retries(&p.name);
            }
            Ok(Generation {
                id,
                config,
                listeners,
                pools,
                policies,
            })
        } else {
            Err(errors)
        }
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerRt> {
        self.listeners.iter().find(|l| l.name == name)
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<PoolRt>> {
        self.pools.iter().find(|p| p.name == name)
    }
}
