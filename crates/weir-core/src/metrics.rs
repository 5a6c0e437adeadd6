//! Metrics (DESIGN §7). The request path only touches atomics (per listener-and-pool route,
//! per endpoint); `/metrics` reads them and encodes Prometheus text with prometheus-client.
//! The names live here, in one module.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::Shared;

/// Upper bounds (seconds) of the request duration histogram.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram made of atomics: observing is a few relaxed adds, no lock.
#[derive(Debug, Default)]
pub struct AtomicHistogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS.iter().position(|&b| secs <= b).unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// A point-in-time copy of an [`AtomicHistogram`], encodable by prometheus-client.
#[derive(Debug)]
struct HistogramSnapshot {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for HistogramSnapshot {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl AtomicHistogram {
    fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        buckets.push((f64::INFINITY, self.buckets[BUCKETS.len()].load(Ordering::Relaxed)));
        HistogramSnapshot {
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
            buckets,
        }
    }
}

/// Requests of one listener into one pool.
#[derive(Debug)]
pub struct RouteMetrics {
    /// By status code 100..=599.
    codes: Vec<AtomicU64>,
    pub duration: AtomicHistogram,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        RouteMetrics {
            codes: (0..500).map(|_| AtomicU64::new(0)).collect(),
            duration: AtomicHistogram::default(),
        }
    }
}

impl RouteMetrics {
    pub fn record(&self, status: u16, took: Duration) {
        if let Some(c) = self.codes.get(usize::from(status.saturating_sub(100))) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(took);
    }
}

/// Attempt outcomes counted per endpoint.
#[derive(Debug, Clone, Copy)]
pub enum AttemptOutcome {
    Ok,
    ConnectError,
    ConnectTimeout,
    Reset,
    Timeout,
    Status5xx,
    /// A pooled connection the upstream had closed as it was taken: the request went again on
    /// a new connection, and the endpoint is not blamed.
    StaleConnection,
    /// The TLS handshake with the upstream failed (`[pool.tls]`: certificate, name, protocol).
    TlsError,
    /// weir had no ephemeral port or file descriptor to connect with; the endpoint is not
    /// blamed.
    LocalError,
    /// The response head was malformed or too large (a 502 for the client).
    InvalidResponse,
}

impl AttemptOutcome {
    /// Its `outcome` label.
    pub fn label(self) -> &'static str {
        ATTEMPT_OUTCOMES[self as usize].1
    }
}

pub const ATTEMPT_OUTCOMES: [(AttemptOutcome, &str); 10] = [
    (AttemptOutcome::Ok, "ok"),
    (AttemptOutcome::ConnectError, "connect_error"),
    (AttemptOutcome::ConnectTimeout, "connect_timeout"),
    (AttemptOutcome::Reset, "reset"),
    (AttemptOutcome::Timeout, "timeout"),
    (AttemptOutcome::Status5xx, "http_5xx"),
    (AttemptOutcome::StaleConnection, "stale_connection"),
    (AttemptOutcome::TlsError, "tls_error"),
    (AttemptOutcome::LocalError, "local_error"),
    (AttemptOutcome::InvalidResponse, "invalid_response"),
];

/// Process-wide counters that outlive generations, keyed by names.
#[derive(Default)]
pub struct Metrics {
    routes: DashMap<(String, String), Arc<RouteMetrics>>,
    retries: DashMap<String, Arc<AtomicU64>>,
    connections: DashMap<String, Arc<AtomicI64>>,
    proxy_refused: DashMap<String, Arc<AtomicU64>>,
    front_refused: DashMap<(String, u16), AtomicU64>,
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::default)
}

impl Metrics {
    /// The counters of a listener-and-pool route (resolved once per generation, not per request).
    pub fn route(&self, listener: &str, pool: &str) -> Arc<RouteMetrics> {
        self.routes
            .entry((listener.to_string(), pool.to_string()))
            .or_default()
            .clone()
    }

    pub fn retries(&self, pool: &str) -> Arc<AtomicU64> {
        self.retries.entry(pool.to_string()).or_default().clone()
    }

    pub fn connections(&self, listener: &str) -> Arc<AtomicI64> {
        self.connections.entry(listener.to_string()).or_default().clone()
    }

    /// Connections of a `proxy_protocol` listener closed for a missing, malformed or late
    /// PROXY header (a rare path: looked up when it happens).
    pub fn proxy_refused(&self, listener: &str) -> Arc<AtomicU64> {
        self.proxy_refused.entry(listener.to_string()).or_default().clone()
    }

    /// Counts a request either front (HTTP/1 or HTTP/2) answered itself with a 4xx before routing
    /// (malformed, too large, too slow). A rare path: looked up when it happens.
    pub fn front_refused(&self, listener: &str, status: u16) {
        self.front_refused
            .entry((listener.to_string(), status))
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }
}

type Labels = Vec<(&'static str, String)>;

/// The `/metrics` document.
pub fn render(shared: &Shared) -> String {
    let m = global();
    let mut reg = Registry::default();

    let requests = Family::<Labels, Counter>::default();
    let durations: Vec<(Labels, HistogramSnapshot)> = m
        .routes
        .iter()
        .map(|e| {
            let (listener, pool) = e.key();
            for (i, c) in e.value().codes.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let labels = vec![
                        ("listener", listener.clone()),
                        ("pool", pool.clone()),
                        ("code", (i + 100).to_string()),
                    ];
                    requests.get_or_create(&labels).inc_by(n);
                }
            }
            (
                vec![("listener", listener.clone()), ("pool", pool.clone())],
                e.value().duration.snapshot(),
            )
        })
        .collect();
    reg.register(
        "weir_requests",
        "Requests answered, by listener, pool and status code",
        requests,
    );
    let duration_family = Family::<Labels, HistogramSnapshotCell>::new_with_constructor(HistogramSnapshotCell::default);
    for (labels, snap) in durations {
        duration_family.get_or_create(&labels).set(snap);
    }
    reg.register(
        "weir_request_duration_seconds",
        "Time to the response head, by listener and pool",
        duration_family,
    );

    let retries = Family::<Labels, Counter>::default();
    for e in m.retries.iter() {
        retries
            .get_or_create(&vec![("pool", e.key().clone())])
            .inc_by(e.value().load(Ordering::Relaxed));
    }
    reg.register("weir_retries", "Retries and failovers, by pool", retries);

    let attempts = Family::<Labels, Counter>::default();
    let healthy = Family::<Labels, Gauge>::default();
    let in_flight = Family::<Labels, Gauge>::default();
    let checks = Family::<Labels, Counter>::default();
    let queued = Family::<Labels, Gauge>::default();
    let queue_timeouts = Family::<Labels, Counter>::default();
    let generation = shared.generation.load();
    for pool in &generation.pools {
        let p = vec![("pool", pool.name.clone())];
        queued.get_or_create(&p).set(i64::from(pool.queue.waiting()));
        queue_timeouts.get_or_create(&p).inc_by(pool.queue.timed_out());
        for e in &pool.endpoints {
            let ep = vec![("pool", pool.name.clone()), ("endpoint", e.label.clone())];
            for (outcome, name) in ATTEMPT_OUTCOMES {
                let n = e.attempts(outcome);
                if n > 0 {
                    let mut l = ep.clone();
                    l.push(("outcome", name.to_string()));
                    attempts.get_or_create(&l).inc_by(n);
                }
            }
            healthy.get_or_create(&ep).set(i64::from(e.is_healthy()));
            in_flight.get_or_create(&ep).set(i64::from(e.in_flight()));
            for (result, n) in [("ok", &e.checks_ok), ("failed", &e.checks_failed)] {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let mut l = ep.clone();
                    l.push(("result", result.to_string()));
                    checks.get_or_create(&l).inc_by(n);
                }
            }
        }
    }
    reg.register(
        "weir_upstream_attempts",
        "Upstream attempts, by pool, endpoint and outcome",
        attempts,
    );
    reg.register(
        "weir_endpoint_healthy",
        "1 when the endpoint takes traffic by health (active and passive)",
        healthy,
    );
    reg.register(
        "weir_endpoint_in_flight",
        "Requests in flight to the endpoint",
        in_flight,
    );
    reg.register(
        "weir_health_checks",
        "Active health checks, by pool, endpoint and result",
        checks,
    );
    reg.register(
        "weir_requests_queued",
        "Requests waiting for an endpoint below its max_in_flight, by pool",
        queued,
    );
    reg.register(
        "weir_queue_timeouts",
        "Requests that waited timeouts.queue for an endpoint below its max_in_flight in vain, by pool",
        queue_timeouts,
    );

    let plugin_calls = Family::<Labels, Counter>::default();
    let plugin_time = Family::<Labels, HistogramSnapshotCell>::new_with_constructor(HistogramSnapshotCell::default);
    for c in generation.policies.call_metrics() {
        let l = vec![
            ("plugin", c.plugin.clone()),
            ("hook", c.hook.to_string()),
            ("result", c.result.to_string()),
        ];
        plugin_calls.get_or_create(&l).inc_by(c.calls);
    }
    for t in generation.policies.call_durations() {
        let l = vec![("plugin", t.plugin.clone()), ("hook", t.hook.to_string())];
        plugin_time.get_or_create(&l).set(HistogramSnapshot {
            sum: t.seconds,
            count: t.calls,
            buckets: t.buckets,
        });
    }
    reg.register(
        "weir_plugin_calls",
        "Plugin calls, by plugin, hook and result (ok, trap, timeout, oom, invalid, skipped)",
        plugin_calls,
    );
    reg.register(
        "weir_plugin_call_duration_seconds",
        "Time spent in plugin calls (estimated: one call in 16 per hook is timed, its bucket and time counted for 16)",
        plugin_time,
    );

    let counters = Family::<Labels, Counter>::default();
    let observations = Family::<Labels, HistogramSnapshotCell>::new_with_constructor(HistogramSnapshotCell::default);
    let dropped = Family::<Labels, Counter>::default();
    let refused = Family::<Labels, Counter>::default();
    for m in generation.policies.plugin_metrics() {
        use crate::generation::PluginMetricValue as V;
        match m.value {
            V::Counter { name, total } => {
                counters
                    .get_or_create(&vec![("plugin", m.plugin), ("name", name)])
                    .inc_by(total);
            }
            V::Observations { name, count, sum } => {
                observations
                    .get_or_create(&vec![("plugin", m.plugin), ("name", name)])
                    .set(HistogramSnapshot {
                        sum,
                        count,
                        buckets: vec![(f64::INFINITY, count)],
                    });
            }
            V::Dropped(n) => {
                dropped.get_or_create(&vec![("plugin", m.plugin)]).inc_by(n);
            }
            V::SharedRefused(n) => {
                refused.get_or_create(&vec![("plugin", m.plugin)]).inc_by(n);
            }
        }
    }
    reg.register(
        "weir_plugin_counter",
        "Counters plugins keep (metrics.counter-inc), by plugin and name",
        counters,
    );
    reg.register(
        "weir_plugin_observations",
        "Values plugins record (metrics.histogram-record), by plugin and name: their count and sum",
        observations,
    );
    reg.register(
        "weir_plugin_metrics_dropped",
        "Plugin metric values refused: a name over 128 bytes or past 256 names per kind, a value that is not finite",
        dropped,
    );
    reg.register(
        "weir_plugin_shared_refused",
        "Writes to a plugin's shared state refused by its bounds (65,536 counters, 1,000,000 sticky entries, 16 MiB of kv, 64 KiB a value)",
        refused,
    );

    let gen_gauge = Gauge::<i64, AtomicI64>::default();
    gen_gauge.set(i64::try_from(generation.id).unwrap_or(i64::MAX));
    reg.register(
        "weir_config_generation",
        "The generation serving new requests",
        gen_gauge,
    );
    let reloads = Family::<Labels, Counter>::default();
    reloads
        .get_or_create(&vec![("result", "ok".to_string())])
        .inc_by(shared.reloads_ok.load(Ordering::Relaxed));
    reloads
        .get_or_create(&vec![("result", "error".to_string())])
        .inc_by(shared.reloads_failed.load(Ordering::Relaxed));
    reg.register("weir_reloads", "Reloads, by result", reloads);
    let conns = Family::<Labels, Gauge>::default();
    for e in m.connections.iter() {
        conns
            .get_or_create(&vec![("listener", e.key().clone())])
            .set(e.value().load(Ordering::Relaxed));
    }
    reg.register("weir_connections_active", "Open client connections, by listener", conns);
    let expiry = Family::<Labels, Gauge>::default();
    let tls_listeners: Vec<&str> = generation
        .config
        .listeners
        .iter()
        .filter(|l| l.tls.is_some())
        .map(|l| l.name.as_str())
        .collect();
    for (listener, certificate, at) in crate::cert_expiry::dates(|l| tls_listeners.contains(&l)) {
        expiry
            .get_or_create(&vec![("listener", listener), ("certificate", certificate)])
            .set(at);
    }
    reg.register(
        "weir_tls_certificate_expiration_timestamp_seconds",
        "When each certificate a TLS listener serves expires (the earliest notAfter of its chain), Unix time, by listener and certificate (default, or the SNI name)",
        expiry,
    );
    let parked = Family::<Labels, Gauge>::default();
    for e in m.connections.iter() {
        parked.get_or_create(&vec![("listener", e.key().clone())]).set(0);
    }
    for (listener, n) in crate::parking::parked_by_listener() {
        parked.get_or_create(&vec![("listener", listener.to_string())]).set(n);
    }
    let refused = Family::<Labels, Counter>::default();
    for e in m.proxy_refused.iter() {
        refused
            .get_or_create(&vec![("listener", e.key().clone())])
            .inc_by(e.value().load(Ordering::Relaxed));
    }
    reg.register(
        "weir_proxy_protocol_refused",
        "Connections closed for a missing, malformed or late PROXY header, by listener",
        refused,
    );
    let front_refused = Family::<Labels, Counter>::default();
    for e in m.front_refused.iter() {
        let (listener, code) = e.key();
        front_refused
            .get_or_create(&vec![("listener", listener.clone()), ("code", code.to_string())])
            .inc_by(e.value().load(Ordering::Relaxed));
    }
    let plain_counters: [(&str, &str, &AtomicU64); 3] = [
        (
            "weir_access_log_dropped",
            "Access-log lines dropped because the file writer fell behind or the file could not be opened",
            &crate::access_log::DROPPED,
        ),
        (
            "weir_send_batches",
            "System calls (io_uring_enter) that sent a batch of upstream requests and client responses together",
            &crate::send_batch::BATCHES,
        ),
        (
            "weir_batched_sends",
            "Upstream requests and client responses sent in batches (divided by weir_send_batches_total: the mean batch)",
            &crate::send_batch::SENDS,
        ),
    ];
    for (name, help, value) in plain_counters {
        let counter = Counter::<u64>::default();
        counter.inc_by(value.load(Ordering::Relaxed));
        reg.register(name, help, counter);
    }
    reg.register(
        "weir_requests_refused",
        "Requests the gateway answered itself with a 4xx before routing them (malformed, too large, too slow), by listener and status code",
        front_refused,
    );
    reg.register(
        "weir_connections_parked",
        "Idle keep-alive connections parked without a task, by listener (also counted in weir_connections_active)",
        parked,
    );

    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        out.clear();
    }
    out
}

/// A family member holding one histogram snapshot (families need `Default` members).
#[derive(Debug, Default)]
struct HistogramSnapshotCell(std::sync::Mutex<Option<HistogramSnapshot>>);

impl HistogramSnapshotCell {
    fn set(&self, s: HistogramSnapshot) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(s);
        }
    }
}

impl prometheus_client::metrics::TypedMetric for HistogramSnapshotCell {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for HistogramSnapshotCell {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        match self.0.lock() {
            Ok(g) => match &*g {
                Some(s) => s.encode(encoder),
                None => HistogramSnapshot {
                    sum: 0.0,
                    count: 0,
                    buckets: vec![(f64::INFINITY, 0)],
                }
                .encode(encoder),
            },
            Err(_) => Ok(()),
        }
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_attempt_outcome_has_its_own_label() {
        for (i, (outcome, name)) in ATTEMPT_OUTCOMES.into_iter().enumerate() {
            assert_eq!(outcome as usize, i, "{name} is out of place");
            assert_eq!(outcome.label(), name);
        }
    }
}
