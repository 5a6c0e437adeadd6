//! The first config layer: serde structs that mirror the TOML file one to one.
//!
//! Every table denies unknown keys, so a typo is an error with a location instead of a silently
//! ignored setting. Values stay close to their textual form here (durations and sizes are strings);
//! `validate` turns them into typed values and reports every problem with its key path.

use serde::Deserialize;

pub const DEFAULT_WORKER_THREADS: usize = 0;
pub const DEFAULT_SHUTDOWN_TIMEOUT: &str = "30s";
pub const DEFAULT_ADMIN_BIND: &str = "127.0.0.1:9901";
pub const DEFAULT_PLUGINS_DIR: &str = "plugins/dist";
pub const DEFAULT_CALL_TIMEOUT: &str = "2ms";
pub const DEFAULT_MEMORY_LIMIT: &str = "16MiB";
pub const DEFAULT_RELOAD_WATCH: bool = true;
pub const DEFAULT_RELOAD_DEBOUNCE: &str = "200ms";
pub const DEFAULT_HEADER_TIMEOUT: &str = "10s";
pub const DEFAULT_BODY_TIMEOUT: &str = "30s";
/// nginx's `send_timeout` default.
pub const DEFAULT_SEND_TIMEOUT: &str = "60s";
pub const DEFAULT_IDLE_TIMEOUT: &str = "60s";
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 65536;
pub const DEFAULT_MAX_HEADERS: u64 = 100;
pub const DEFAULT_MAX_URI_BYTES: u64 = 8192;
pub const DEFAULT_MAX_BODY_BYTES: &str = "0";
pub const DEFAULT_MAX_CONNECTIONS: u64 = 10000;
pub const DEFAULT_RESOLVE_INTERVAL: &str = "5s";
pub const DEFAULT_BALANCER: &str = "round-robin";
pub const DEFAULT_CONNECT_TIMEOUT: &str = "1s";
pub const DEFAULT_REQUEST_TIMEOUT: &str = "30s";
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: &str = "90s";
pub const DEFAULT_MAX_IDLE_PER_ENDPOINT: u64 = 64;
/// How long a request waits for an endpoint below its `max_in_flight` (HAProxy's `timeout
/// queue`, which defaults to its connect timeout; so does this one to ours).
pub const DEFAULT_QUEUE_TIMEOUT: &str = "1s";
/// The longest wait for the next bytes of an upstream's response body: Envoy's stream idle
/// timeout. Long enough for server-sent events and gRPC streams that go quiet for minutes.
pub const DEFAULT_UPSTREAM_BODY_TIMEOUT: &str = "5m";
pub const DEFAULT_RETRY_MAX_ATTEMPTS: u64 = 3;
pub const DEFAULT_RETRY_BUDGET: f64 = 0.2;
pub const DEFAULT_RETRY_BUFFER_BYTES: &str = "64KiB";
pub const DEFAULT_MAX_FAILS: u64 = 3;
pub const DEFAULT_FAIL_TIMEOUT: &str = "5s";
pub const DEFAULT_HEALTH_INTERVAL: &str = "5s";
pub const DEFAULT_HEALTH_TIMEOUT: &str = "2s";
pub const DEFAULT_HEALTH_INITIAL_DELAY: &str = "0s";
pub const DEFAULT_HEALTHY_THRESHOLD: u64 = 1;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u64 = 2;
pub const DEFAULT_EXPECT_STATUS: &str = "200-399";
pub const DEFAULT_WEIGHT: u64 = 1;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub plugins: RawPlugins,
    #[serde(default)]
    pub reload: RawReload,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub pool: Vec<RawPool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<u64>,
    pub shutdown_timeout: Option<String>,
    /// "off" (default), "stderr", or a file path: one structured line per request.
    pub access_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: Option<String>,
    pub token_file: Option<String>,
    /// Name of an environment variable holding the admin token (alternative to `token_file`).
    pub token_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugins {
    pub dir: Option<String>,
    pub call_timeout: Option<String>,
    pub memory_limit: Option<RawSize>,
    pub on_error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    pub watch: Option<bool>,
    pub debounce: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub bind: String,
    pub advertise: Option<String>,
    pub pool: String,
    pub router: Option<RawPluginRef>,
    pub proxy_protocol: Option<bool>,
    pub forwarding_headers: Option<Vec<String>>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginRef {
    pub plugin: String,
    pub config: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub sni: Vec<RawSniCert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniCert {
    pub server_name: String,
    pub cert: String,
    pub key: String,
}

/// A size is either a bare integer (bytes) or a string with a unit (`"16MiB"`). Also a
/// health check's `expect_status`: a bare status or a string (`"200-399"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Int(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub send_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<u64>,
    pub max_headers: Option<u64>,
    pub max_uri_bytes: Option<u64>,
    pub max_body_bytes: Option<RawSize>,
    pub max_connections: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub name: String,
    pub resolve_interval: Option<String>,
    /// `"first"` (default) or `"all"`.
    pub resolve: Option<String>,
    pub balancer: Option<RawPluginRef>,
    pub failover: Option<RawPluginRef>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub passive: RawPassive,
    pub health: Option<RawHealth>,
    pub send_proxy: Option<String>,
    /// `"http1"` (default) or `"h2"`.
    pub protocol: Option<String>,
    pub tls: Option<RawPoolTls>,
    #[serde(default)]
    pub endpoint: Vec<RawEndpoint>,
}

/// `[pool.tls]`: the pool's upstreams speak HTTPS.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPoolTls {
    /// PEM file of the CAs that sign the upstreams' certificates (default: the system's roots).
    pub ca: Option<String>,
    /// The name sent in SNI and verified (default: the endpoint's hostname, or its IP address).
    pub server_name: Option<String>,
    /// `false` accepts any certificate (tests, self-signed replicas on a trusted network).
    pub verify: Option<bool>,
    /// A client certificate chain and its key (mutual TLS).
    pub cert: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub request: Option<String>,
    pub idle: Option<String>,
    pub max_idle_per_endpoint: Option<u64>,
    pub queue: Option<String>,
    pub body: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Option<u64>,
    pub budget: Option<f64>,
    pub buffer_bytes: Option<RawSize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub max_fails: Option<u64>,
    pub fail_timeout: Option<String>,
    /// Upstream statuses that count as failed attempts (default none: only transport failures).
    pub fail_on_status: Option<Vec<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub port: Option<u64>,
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub initial_delay: Option<String>,
    pub healthy_threshold: Option<u64>,
    pub unhealthy_threshold: Option<u64>,
    /// `"200-399"`, `"200"` or `200`.
    pub expect_status: Option<RawSize>,
    pub expect_body: Option<String>,
    /// Checks over TLS (default: when the pool has `[pool.tls]`).
    pub tls: Option<bool>,
    /// A gRPC health check (`grpc.health.v1.Health/Check`) instead of an HTTP GET.
    pub grpc: Option<bool>,
    /// The service the gRPC check asks about (default `""`: the server as a whole).
    pub grpc_service: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    pub address: String,
    pub weight: Option<u64>,
    pub zone: Option<String>,
    pub backup: Option<bool>,
    /// Requests in flight at most (0: no limit).
    pub max_in_flight: Option<u64>,
}
