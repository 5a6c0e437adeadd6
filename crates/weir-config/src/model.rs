//! The second config layer: typed, validated, ready to run. Everything here is plain data
//! (`Clone + PartialEq`) so that `diff` can compare two generations field by field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this config was read from (relative paths inside it resolve against its folder).
    pub source: Option<PathBuf>,
    pub runtime: Runtime,
    pub admin: Admin,
    pub plugins: Plugins,
    pub reload: Reload,
    pub listeners: Vec<Listener>,
    pub pools: Vec<Pool>,
}

impl Config {
    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn listener(&self, name: &str) -> Option<&Listener> {
        self.listeners.iter().find(|l| l.name == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    /// 0 = one per available core.
    pub worker_threads: usize,
    pub shutdown_timeout: Duration,
    pub access_log: AccessLog,
}

/// Where the per-request access log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    /// As structured events of the `weir::access` tracing target on stderr.
    Stderr,
    /// JSON lines appended to this file.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub bind: SocketAddr,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Serve the request with the native policy and count the failure.
    Fallback,
    /// Answer 503.
    Fail,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plugins {
    pub dir: PathBuf,
    pub call_timeout: Duration,
    pub memory_limit: u64,
    pub on_error: OnError,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reload {
    pub watch: bool,
    pub debounce: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The public face of a listener: what clients typed, used for `X-Forwarded-*` and `Forwarded`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertise {
    pub scheme: Scheme,
    /// `host[:port]` as clients see it.
    pub authority: String,
}

/// The forwarding fields a listener writes on what it forwards (`forwarding_headers`): all five
/// by default. A field left out is neither added nor replaced: a value the client sent passes
/// through as it came (as with nginx or HAProxy when they are not told to set it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardingHeaders {
    /// `X-Forwarded-For`: the client's address appended.
    pub x_forwarded_for: bool,
    /// `X-Forwarded-Proto`: the advertised (else the listener's) scheme.
    pub x_forwarded_proto: bool,
    /// `X-Forwarded-Host`: the advertised authority, else the request's `Host`.
    pub x_forwarded_host: bool,
    /// `Forwarded` (RFC 7239): this hop's `for`, `proto` and `host` appended.
    pub forwarded: bool,
    /// `Via` (RFC 9110 §7.6.3), on requests and on responses.
    pub via: bool,
}

impl ForwardingHeaders {
    /// The names `forwarding_headers` accepts, in the order the default lists them.
    pub const NAMES: [&'static str; 5] = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "via",
    ];

    pub const ALL: ForwardingHeaders = ForwardingHeaders {
        x_forwarded_for: true,
        x_forwarded_proto: true,
        x_forwarded_host: true,
        forwarded: true,
        via: true,
    };

    pub const NONE: ForwardingHeaders = ForwardingHeaders {
        x_forwarded_for: false,
        x_forwarded_proto: false,
        x_forwarded_host: false,
        forwarded: false,
        via: false,
    };

    /// The flag of the field `name` (one of [`Self::NAMES`], any case), or `None`.
    pub fn flag(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name.to_ascii_lowercase().as_str() {
            "x-forwarded-for" => &mut self.x_forwarded_for,
            "x-forwarded-proto" => &mut self.x_forwarded_proto,
            "x-forwarded-host" => &mut self.x_forwarded_host,
            "forwarded" => &mut self.forwarded,
            "via" => &mut self.via,
            _ => return None,
        })
    }
}

impl Default for ForwardingHeaders {
    fn default() -> Self {
        Self::ALL
    }
}

#[derive(Debug, Clone)]
pub struct PluginRef {
    pub plugin: String,
    /// The plugin's `config` table as JSON text (what `lifecycle.init` receives).
    pub config_json: String,
    /// Where the reference is written, as errors begin: `weir.toml:9:10: key `listener[0].router``.
    /// A plugin that cannot load, or whose `init` refuses its config, is reported there.
    pub at: String,
}

/// Two references are the same when they name the same plugin with the same config: where they
/// are written does not matter (a reload that only moves lines changes nothing).
impl PartialEq for PluginRef {
    fn eq(&self, other: &Self) -> bool {
        self.plugin == other.plugin && self.config_json == other.config_json
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    pub advertise: Option<Advertise>,
    pub pool: String,
    pub router: Option<PluginRef>,
    pub proxy_protocol: bool,
    pub forwarding_headers: ForwardingHeaders,
    pub tls: Option<Tls>,
    pub limits: Limits,
}

/// A file the config names (a certificate, a key, a CA), resolved, with where it is named, so
/// that what goes wrong when it is loaded (not PEM, no certificate in it, a key that does not
/// match) is reported as config errors are: `weir.toml:12:8: key `listener[0].tls.key``.
/// Equal when the paths are: moving the key to another line changes nothing.
#[derive(Debug, Clone)]
pub struct FileRef {
    pub path: PathBuf,
    /// `FILE:LINE:COLUMN: key `PATH``.
    pub at: String,
}

impl FileRef {
    /// `at: message`, the form every config error takes.
    pub fn error(&self, message: impl std::fmt::Display) -> String {
        format!("{}: {message}", self.at)
    }
}

/// Whether an error already says where in the config it is (`FILE:LINE:COLUMN: key `PATH`: ...`,
/// as [`FileRef::error`] and the validation's errors begin); one that does not needs its context
/// (`listener `client`: ...`) from the caller.
pub fn is_located(error: &str) -> bool {
    error.split_once(": key `").is_some_and(|(at, _)| {
        let mut parts = at.rsplitn(3, ':');
        let column = parts.next().unwrap_or("");
        let line = parts.next().unwrap_or("");
        parts.next().is_some_and(|file| !file.is_empty())
            && [line, column]
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// `error` as is when it says where in the config it is, else after `context`.
pub fn in_context(context: &str, error: String) -> String {
    if is_located(&error) {
        error
    } else {
        format!("{context}: {error}")
    }
}

impl PartialEq for FileRef {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

impl Eq for FileRef {}

impl std::hash::Hash for FileRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.path.hash(state);
    }
}

impl std::ops::Deref for FileRef {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.path
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub cert: FileRef,
    pub key: FileRef,
    pub sni: Vec<SniCert>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SniCert {
    /// Exact name or `*.suffix` wildcard, lower-case.
    pub server_name: String,
    pub cert: FileRef,
    pub key: FileRef,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Longest a write of a response to the client may stall (a client that stops reading:
    /// its connection, and the upstream connection feeding it, are let go; over HTTP/2, a
    /// response stream left without flow-control window is reset).
    pub send_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    /// 0 = unlimited (streamed).
    pub max_body_bytes: u64,
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub name: String,
    pub resolve_interval: Duration,
    /// `resolve = "all"`: a hostname endpoint is one endpoint per address it resolves to
    /// (nginx's reading of a name); `"first"` (default): one endpoint, connecting to the first
    /// address that accepts.
    pub resolve_all: bool,
    pub balancer: PluginRef,
    pub failover: Option<PluginRef>,
    pub timeouts: Timeouts,
    pub retry: Retry,
    pub passive: Passive,
    pub health: Option<Health>,
    /// A PROXY protocol header at the start of every upstream connection (`send_proxy`).
    pub send_proxy: Option<ProxyVersion>,
    /// What the upstreams speak (`protocol`).
    pub protocol: UpstreamProtocol,
    /// `[pool.tls]`: HTTPS to the upstreams.
    pub tls: Option<PoolTls>,
    pub endpoints: Vec<Endpoint>,
}

/// TLS to a pool's upstreams (`[pool.tls]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolTls {
    /// CAs to trust; `None`: the system's roots.
    pub ca: Option<FileRef>,
    /// SNI and the name verified; `None`: the endpoint's hostname, or its IP address.
    pub server_name: Option<String>,
    pub verify: bool,
    /// Client certificate chain and key (mutual TLS).
    pub client_cert: Option<(FileRef, FileRef)>,
}

/// The HTTP version a pool's upstreams speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over pooled keep-alive connections, one request at a time on each.
    #[default]
    Http1,
    /// HTTP/2 (prior knowledge on plain TCP, ALPN `h2` with `[pool.tls]`): one connection per
    /// endpoint carries every request to it as a stream; trailers pass through (gRPC).
    H2,
}

/// Which PROXY protocol header weir writes to the upstreams of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Per try: from sending the request to the response head.
    pub request: Duration,
    /// How long a pooled upstream connection may sit idle.
    pub idle: Duration,
    pub max_idle_per_endpoint: usize,
    /// How long a request waits when every endpoint it could go to is at its `max_in_flight`.
    pub queue: Duration,
    /// The longest gap between two reads of a response body (an upstream that stalls
    /// mid-body); zero: no limit.
    pub body: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    pub max_attempts: u32,
    pub budget: f64,
    pub buffer_bytes: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Passive {
    /// 0 disables passive health.
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// Statuses counted as failures (5xx only).
    pub fail_on_status: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub port: Option<u16>,
    /// `None`: a TCP connect check.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub initial_delay: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub expect_status: StatusRange,
    pub expect_body: Option<String>,
    /// Checks over TLS, with the pool's `[pool.tls]` settings.
    pub tls: bool,
    /// `grpc = true`: the standard gRPC health check (`grpc.health.v1.Health/Check` over
    /// HTTP/2) asking about this service (`""`: the server as a whole), instead of a GET.
    pub grpc: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

/// Where an endpoint lives: an address now, or a name re-resolved every `resolve_interval`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddress {
    Socket(SocketAddr),
    Host { host: String, port: u16 },
}

impl std::fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointAddress::Socket(addr) => write!(f, "{addr}"),
            EndpointAddress::Host { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub address: EndpointAddress,
    pub weight: u32,
    pub zone: String,
    pub backup: bool,
    /// Requests in flight at most (nginx's `max_conns`, HAProxy's `maxconn`); 0: no limit.
    pub max_in_flight: u32,
}

impl Endpoint {
    /// An endpoint at `address` with every other key at its default, as a config listing only
    /// the address gives (for programs that build configs, tests and benches).
    pub fn at(address: EndpointAddress) -> Self {
        Endpoint {
            address,
            weight: crate::raw::DEFAULT_WEIGHT as u32,
            zone: String::new(),
            backup: false,
            max_in_flight: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn located_errors_keep_their_place_and_others_get_context() {
        let at = "conf/weir.toml:12:8: key `listener[0].tls.key`: no items found";
        assert!(is_located(at));
        assert_eq!(in_context("listener `a`", at.to_string()), at);
        for loose in [
            "TLS setup: no protocol",
            "server_name `x`: key `y`: bad",
            "weir.toml:x:8: key `a`: bad",
            ":1:2: key `a`: bad",
        ] {
            assert!(!is_located(loose), "{loose}");
        }
        assert_eq!(
            in_context("listener `a`", "TLS setup: no protocol".into()),
            "listener `a`: TLS setup: no protocol"
        );
        // Equal by path alone: a key moved to another line is the same file.
        let f = |at: &str| FileRef {
            path: PathBuf::from("certs/lb.pem"),
            at: at.into(),
        };
        assert_eq!(f("a.toml:1:1: key `x`"), f("a.toml:9:1: key `x`"));
    }
}
