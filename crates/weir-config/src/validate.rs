//! `Raw*` -> typed `Config`: applies defaults, parses units and addresses, and checks every rule
//! that spans several keys. Collects every issue instead of stopping at the first, so `weir check`
//! can list them all.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Issue, KeyPath};
use crate::model::*;
use crate::raw::*;
use crate::units::{parse_duration, parse_size};

/// The longest duration any key takes: a year. Anything longer is likely a typo, and a year
/// keeps every deadline computed from one (`now + timeout`) far from the clock's limits.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Everything `validate` needs beyond the raw struct: where relative paths resolve from.
pub struct Context<'a> {
    pub base_dir: &'a Path,
    /// The file and its text, to say where a plugin reference is written.
    pub file: &'a Path,
    pub src: &'a str,
}

struct V<'a> {
    ctx: &'a Context<'a>,
    issues: Vec<Issue>,
}

impl V<'_> {
    fn issue(&mut self, issue: Issue) {
        self.issues.push(issue);
    }

    /// `file:line:column: key `path`` for what is written at `path` (or the table around it).
    fn at(&self, path: &KeyPath) -> String {
        let (line, column) = crate::error::locate(self.ctx.src, path)
            .map(|offset| crate::error::line_col(self.ctx.src, offset))
            .unwrap_or((1, 1));
        format!("{}:{line}:{column}: key `{path}`", self.ctx.file.display())
    }

    fn duration(&mut self, path: KeyPath, value: Option<&String>, default: &str) -> Duration {
        let text = value.map(String::as_str).unwrap_or(default);
        match parse_duration(text) {
            Ok(d) if d > MAX_DURATION => {
                self.issue(
                    Issue::new(path, format!("`{text}` is longer than any duration weir takes (365d)"))
                        .help("write at most \"365d\""),
                );
                parse_duration(default).unwrap_or_default()
            }
            Ok(d) => d,
            Err(e) => {
                self.issue(
                    Issue::new(path, format!("invalid duration: {e}"))
                        .help("write a whole number followed by a unit without spaces: \"250ms\", \"5s\", \"1m\""),
                );
                parse_duration(default).unwrap_or_default()
            }
        }
    }

    fn size(&mut self, path: KeyPath, value: Option<&RawSize>, default: &str) -> u64 {
        let parsed = match value {
            None => parse_size(default),
            Some(RawSize::Int(n)) if *n >= 0 => Ok(*n as u64),
            Some(RawSize::Int(n)) => Err(format!("`{n}` is negative")),
            Some(RawSize::Text(text)) => parse_size(text),
        };
        parsed.unwrap_or_else(|e| {
            self.issue(
                Issue::new(path, format!("invalid size: {e}")).help("write bytes as a number, or \"64KiB\", \"16MiB\""),
            );
            parse_size(default).unwrap_or(0)
        })
    }

    fn positive(&mut self, path: KeyPath, value: Option<u64>, default: u64, max: u64) -> u64 {
        let v = value.unwrap_or(default);
        if v == 0 || v > max {
            self.issue(Issue::new(path, format!("must be between 1 and {max}, got {v}")));
            return default;
        }
        v
    }

    /// [`V::file`] with where it is named, for files loaded after validation (TLS).
    fn file_ref(&mut self, path: KeyPath, value: &str, what: &str) -> FileRef {
        let at = self.at(&path);
        FileRef {
            path: self.file(path, value, what),
            at,
        }
    }

    fn file(&mut self, path: KeyPath, value: &str, what: &str) -> PathBuf {
        let resolved = resolve(self.ctx.base_dir, value);
        if !resolved.is_file() {
            self.issue(
                Issue::new(
                    path,
                    format!("{what} `{}` does not exist or is not a file", resolved.display()),
                )
                .help("relative paths are resolved against the config file's folder, then the working directory"),
            );
        }
        resolved
    }

    fn plugin_ref(&mut self, path: KeyPath, raw: Option<&RawPluginRef>) -> Option<PluginRef> {
        let raw = raw?;
        if raw.plugin.is_empty()
            || !raw
                .plugin
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            self.issue(
                Issue::new(path.key("plugin"), format!("invalid plugin name `{}`", raw.plugin))
                    .help("a plugin name is the file stem of `<plugins.dir>/<name>.wasm`: letters, digits, `-`, `_`"),
            );
        }
        let config_json = match &raw.config {
            Some(table) => serde_json::to_string(table).unwrap_or_else(|_| "{}".to_string()),
            None => "{}".to_string(),
        };
        Some(PluginRef {
            plugin: raw.plugin.clone(),
            config_json,
            at: self.at(&path),
        })
    }
}

/// Resolves a path from the config: against the config file's folder, or against the working
/// directory when only that one exists (DESIGN's example config names repository paths such as
/// `plugins/dist` from `config/weir.toml`).
pub fn resolve(base: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let beside = base.join(p);
    if !beside.exists() && p.exists() {
        p.to_path_buf()
    } else {
        beside
    }
}

pub fn validate(raw: RawConfig, ctx: &Context<'_>) -> Result<Config, Vec<Issue>> {
    let mut v = V {
        ctx,
        issues: Vec::new(),
    };
    let root = KeyPath::root();

    let runtime = runtime(&mut v, &raw.runtime, &root.key("runtime"));
    let admin = admin(&mut v, &raw.admin, &root.key("admin"));
    let plugins = plugins(&mut v, &raw.plugins, &root.key("plugins"));
    let reload = Reload {
        watch: raw.reload.watch.unwrap_or(DEFAULT_RELOAD_WATCH),
        debounce: v.duration(
            root.key("reload").key("debounce"),
            raw.reload.debounce.as_ref(),
            DEFAULT_RELOAD_DEBOUNCE,
        ),
    };

    let pools: Vec<Pool> = raw
        .pool
        .iter()
        .enumerate()
        .map(|(i, p)| pool(&mut v, p, &root.key("pool").index(i)))
        .collect();
    let mut pool_names: HashMap<&str, usize> = HashMap::new();
    for (i, p) in pools.iter().enumerate() {
        if let Some(first) = pool_names.insert(&p.name, i) {
            v.issue(
                Issue::new(
                    root.key("pool").index(i).key("name"),
                    format!("duplicate pool name `{}` (also pool[{first}])", p.name),
                )
                .help("give every [[pool]] its own name"),
            );
        }
    }

    let listeners: Vec<Listener> = raw
        .listener
        .iter()
        .enumerate()
        .map(|(i, l)| listener(&mut v, l, &root.key("listener").index(i)))
        .collect();
    check_listeners(&mut v, &listeners, &pool_names, &admin);

    if raw.listener.is_empty() {
        v.issue(Issue::new(root, "no [[listener]] is configured").help("add a [[listener]] with name, bind and pool"));
    }

    if v.issues.is_empty() {
        Ok(Config {
            source: None,
            runtime,
            admin,
            plugins,
            reload,
            listeners,
            pools,
        })
    } else {
        Err(v.issues)
    }
}

fn runtime(v: &mut V<'_>, raw: &RawRuntime, path: &KeyPath) -> Runtime {
    let worker_threads = raw.worker_threads.unwrap_or(DEFAULT_WORKER_THREADS as u64);
    if worker_threads > 1024 {
        v.issue(Issue::new(
            path.key("worker_threads"),
            "must be at most 1024 (0 = one per core)",
        ));
    }
    let access_log = match raw.access_log.as_deref() {
        None | Some("off") => AccessLog::Off,
        Some("stderr") => AccessLog::Stderr,
        Some("") => {
            v.issue(Issue::new(
                path.key("access_log"),
                "must be \"off\", \"stderr\" or a file path",
            ));
            AccessLog::Off
        }
        Some(file) => AccessLog::File(resolve(v.ctx.base_dir, file)),
    };
    Runtime {
        worker_threads: worker_threads.min(1024) as usize,
        shutdown_timeout: v.duration(
            path.key("shutdown_timeout"),
            raw.shutdown_timeout.as_ref(),
            DEFAULT_SHUTDOWN_TIMEOUT,
        ),
        access_log,
    }
}

fn admin(v: &mut V<'_>, raw: &RawAdmin, path: &KeyPath) -> Admin {
    let bind_text = raw.bind.as_deref().unwrap_or(DEFAULT_ADMIN_BIND);
    let bind = match bind_text.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            v.issue(
                Issue::new(path.key("bind"), format!("`{bind_text}` is not an ip:port address"))
                    .help("e.g. \"127.0.0.1:9901\""),
            );
            SocketAddr::from(([127, 0, 0, 1], 9901))
        }
    };
    let token_file = raw
        .token_file
        .as_ref()
        .map(|f| v.file(path.key("token_file"), f, "token file"));
    if !bind.ip().is_loopback() && token_file.is_none() && raw.token_env.is_none() {
        v.issue(
            Issue::new(
                path.key("bind"),
                format!("the admin API binds a non-loopback address ({bind}) without a token"),
            )
            .help("set admin.token_file (or admin.token_env), or bind 127.0.0.1"),
        );
    }
    Admin {
        bind,
        token_file,
        token_env: raw.token_env.clone(),
    }
}

fn plugins(v: &mut V<'_>, raw: &RawPlugins, path: &KeyPath) -> Plugins {
    let on_error = match raw.on_error.as_deref().unwrap_or("fallback") {
        "fallback" => OnError::Fallback,
        "fail" => OnError::Fail,
        other => {
            v.issue(
                Issue::new(path.key("on_error"), format!("unknown value `{other}`"))
                    .help("use \"fallback\" or \"fail\""),
            );
            OnError::Fallback
        }
    };
    let call_timeout = v.duration(
        path.key("call_timeout"),
        raw.call_timeout.as_ref(),
        DEFAULT_CALL_TIMEOUT,
    );
    if call_timeout.is_zero() {
        v.issue(Issue::new(path.key("call_timeout"), "must be greater than zero"));
    }
    let memory_limit = v.size(
        path.key("memory_limit"),
        raw.memory_limit.as_ref(),
        DEFAULT_MEMORY_LIMIT,
    );
    if memory_limit < 64 * 1024 {
        v.issue(Issue::new(
            path.key("memory_limit"),
            "must be at least 64KiB (one Wasm page)",
        ));
    }
    Plugins {
        dir: resolve(v.ctx.base_dir, raw.dir.as_deref().unwrap_or(DEFAULT_PLUGINS_DIR)),
        call_timeout,
        memory_limit,
        on_error,
    }
}

fn listener(v: &mut V<'_>, raw: &RawListener, path: &KeyPath) -> Listener {
    let bind = match raw.bind.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            v.issue(
                Issue::new(path.key("bind"), format!("`{}` is not an ip:port address", raw.bind))
                    .help("e.g. \"0.0.0.0:9080\" or \"[::]:9080\""),
            );
            SocketAddr::from(([0, 0, 0, 0], 0))
        }
    };
    if raw.name.is_empty() {
        v.issue(Issue::new(path.key("name"), "must not be empty"));
    }
    let advertise = raw.advertise.as_ref().and_then(|a| match parse_advertise(a) {
        Ok(adv) => Some(adv),
        Err(e) => {
            v.issue(Issue::new(path.key("advertise"), e).help("e.g. \"https://lb.example.com:9080\""));
            None
        }
    });
    let tls = raw.tls.as_ref().map(|t| {
        let tp = path.key("tls");
        let sni = t
            .sni
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let sp = tp.key("sni").index(i);
                let name = s.server_name.to_ascii_lowercase();
                let host_part = name.strip_prefix("*.").unwrap_or(&name);
                if host_part.is_empty()
                    || host_part.contains('*')
                    || !host_part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                {
                    v.issue(Issue::new(
                        sp.key("server_name"),
                        format!("`{}` is not a host name or `*.suffix` wildcard", s.server_name),
                    ));
                }
                SniCert {
                    server_name: name,
                    cert: v.file_ref(sp.key("cert"), &s.cert, "certificate"),
                    key: v.file_ref(sp.key("key"), &s.key, "private key"),
                }
            })
            .collect();
        Tls {
            cert: v.file_ref(tp.key("cert"), &t.cert, "certificate"),
            key: v.file_ref(tp.key("key"), &t.key, "private key"),
            sni,
        }
    });
    let lp = path.key("limits");
    let l = &raw.limits;
    let limits = Limits {
        header_timeout: v.duration(
            lp.key("header_timeout"),
            l.header_timeout.as_ref(),
            DEFAULT_HEADER_TIMEOUT,
        ),
        body_timeout: v.duration(lp.key("body_timeout"), l.body_timeout.as_ref(), DEFAULT_BODY_TIMEOUT),
        send_timeout: v.duration(lp.key("send_timeout"), l.send_timeout.as_ref(), DEFAULT_SEND_TIMEOUT),
        idle_timeout: v.duration(lp.key("idle_timeout"), l.idle_timeout.as_ref(), DEFAULT_IDLE_TIMEOUT),
        max_header_bytes: v.positive(
            lp.key("max_header_bytes"),
            l.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES,
            1 << 24,
        ) as usize,
        max_headers: v.positive(lp.key("max_headers"), l.max_headers, DEFAULT_MAX_HEADERS, 10_000) as usize,
        max_uri_bytes: v.positive(lp.key("max_uri_bytes"), l.max_uri_bytes, DEFAULT_MAX_URI_BYTES, 1 << 20) as usize,
        max_body_bytes: v.size(
            lp.key("max_body_bytes"),
            l.max_body_bytes.as_ref(),
            DEFAULT_MAX_BODY_BYTES,
        ),
        max_connections: v.positive(
            lp.key("max_connections"),
            l.max_connections,
            DEFAULT_MAX_CONNECTIONS,
            10_000_000,
        ) as usize,
    };
    for (key, d) in [
        ("header_timeout", limits.header_timeout),
        ("body_timeout", limits.body_timeout),
        ("send_timeout", limits.send_timeout),
        ("idle_timeout", limits.idle_timeout),
    ] {
        if d.is_zero() {
            v.issue(Issue::new(lp.key(key), "must be greater than zero"));
        }
    }
    if limits.max_uri_bytes > limits.max_header_bytes {
        v.issue(Issue::new(lp.key("max_uri_bytes"), "must not exceed max_header_bytes"));
    }
    Listener {
        name: raw.name.clone(),
        bind,
        advertise,
        pool: raw.pool.clone(),
        router: v.plugin_ref(path.key("router"), raw.router.as_ref()),
        proxy_protocol: raw.proxy_protocol.unwrap_or(false),
        forwarding_headers: forwarding_headers(v, raw.forwarding_headers.as_deref(), &path.key("forwarding_headers")),
        tls,
        limits,
    }
}

/// The listener's `forwarding_headers`: all five when the key is absent, none for `[]`.
fn forwarding_headers(v: &mut V<'_>, raw: Option<&[String]>, path: &KeyPath) -> ForwardingHeaders {
    let Some(names) = raw else {
        return ForwardingHeaders::ALL;
    };
    let mut set = ForwardingHeaders::NONE;
    for (i, name) in names.iter().enumerate() {
        match set.flag(name) {
            Some(flag) => *flag = true,
            None => v.issue(
                Issue::new(
                    path.index(i),
                    format!("`{name}` is not a forwarding header weir writes"),
                )
                .help(format!(
                    "use some of {}",
                    ForwardingHeaders::NAMES.map(|n| format!("\"{n}\"")).join(", ")
                )),
            ),
        }
    }
    set
}

fn parse_advertise(text: &str) -> Result<Advertise, String> {
    let (scheme, rest) = if let Some(rest) = text.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = text.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(format!("`{text}` must start with http:// or https://"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let valid = !authority.is_empty() && authority.parse::<http_authority::Check>().is_ok();
    if !valid {
        return Err(format!("`{text}` has no valid host[:port] after the scheme"));
    }
    Ok(Advertise {
        scheme,
        authority: authority.to_string(),
    })
}

/// A tiny authority check (`host[:port]`, `[v6]:port`) so this crate needs no HTTP dependency.
mod http_authority {
    pub struct Check;
    impl std::str::FromStr for Check {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let (host, port) = if let Some(rest) = s.strip_prefix('[') {
                let end = rest.find(']').ok_or(())?;
                rest[..end].parse::<std::net::Ipv6Addr>().map_err(|_| ())?;
                (None, rest[end + 1..].strip_prefix(':'))
            } else {
                match s.rsplit_once(':') {
                    Some((h, p)) => (Some(h), Some(p)),
                    None => (Some(s), None),
                }
            };
            if let Some(h) = host
                && (h.is_empty() || !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
            {
                return Err(());
            }
            if let Some(p) = port {
                p.parse::<u16>().map_err(|_| ())?;
            }
            Ok(Check)
        }
    }
}

fn check_listeners(v: &mut V<'_>, listeners: &[Listener], pools: &HashMap<&str, usize>, admin: &Admin) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut binds: Vec<(SocketAddr, usize)> = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let path = KeyPath::root().key("listener").index(i);
        if let Some(first) = names.insert(&l.name, i) {
            v.issue(
                Issue::new(
                    path.key("name"),
                    format!("duplicate listener name `{}` (also listener[{first}])", l.name),
                )
                .help("give every [[listener]] its own name"),
            );
        }
        if !pools.contains_key(l.pool.as_str()) {
            let known: Vec<&str> = pools.keys().copied().collect();
            v.issue(
                Issue::new(
                    path.key("pool"),
                    format!("listener `{}` names unknown pool `{}`", l.name, l.pool),
                )
                .help(format!(
                    "declare a [[pool]] named `{}` or use one of: {}",
                    l.pool,
                    join_sorted(&known)
                )),
            );
        }
        // Port 0 asks the OS for a free port: never a conflict.
        if l.bind.port() != 0 {
            if let Some((_, first)) = binds.iter().find(|(b, _)| overlaps(*b, l.bind)) {
                v.issue(
                    Issue::new(
                        path.key("bind"),
                        format!(
                            "listener `{}` binds {} which listener[{first}] already binds",
                            l.name, l.bind
                        ),
                    )
                    .help("every listener needs its own address:port"),
                );
            }
            if overlaps(admin.bind, l.bind) {
                v.issue(Issue::new(
                    path.key("bind"),
                    format!("listener `{}` binds {} which the admin API binds", l.name, l.bind),
                ));
            }
            binds.push((l.bind, i));
        }
    }
}

/// Two binds collide when the ports match and either is a wildcard or both IPs are equal.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn join_sorted(names: &[&str]) -> String {
    let mut names = names.to_vec();
    names.sort_unstable();
    if names.is_empty() {
        "(none declared)".to_string()
    } else {
        names.join(", ")
    }
}

fn pool(v: &mut V<'_>, raw: &RawPool, path: &KeyPath) -> Pool {
    if raw.name.is_empty() {
        v.issue(Issue::new(path.key("name"), "must not be empty"));
    }
    let tp = path.key("timeouts");
    let timeouts = Timeouts {
        connect: v.duration(
            tp.key("connect"),
            raw.timeouts.connect.as_ref(),
            DEFAULT_CONNECT_TIMEOUT,
        ),
        request: v.duration(
            tp.key("request"),
            raw.timeouts.request.as_ref(),
            DEFAULT_REQUEST_TIMEOUT,
        ),
        idle: v.duration(
            tp.key("idle"),
            raw.timeouts.idle.as_ref(),
            DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        ),
        max_idle_per_endpoint: raw
            .timeouts
            .max_idle_per_endpoint
            .unwrap_or(DEFAULT_MAX_IDLE_PER_ENDPOINT) as usize,
        queue: v.duration(tp.key("queue"), raw.timeouts.queue.as_ref(), DEFAULT_QUEUE_TIMEOUT),
        body: v.duration(
            tp.key("body"),
            raw.timeouts.body.as_ref(),
            DEFAULT_UPSTREAM_BODY_TIMEOUT,
        ),
    };
    for (key, d) in [("connect", timeouts.connect), ("request", timeouts.request)] {
        if d.is_zero() {
            v.issue(Issue::new(tp.key(key), "must be greater than zero"));
        }
    }
    let rp = path.key("retry");
    let budget = raw.retry.budget.unwrap_or(DEFAULT_RETRY_BUDGET);
    if !(budget.is_finite() && (0.0..=10.0).contains(&budget)) {
        v.issue(
            Issue::new(
                rp.key("budget"),
                format!("must be a ratio between 0 and 10, got {budget}"),
            )
            .help("0.2 lets retries add at most 20% to the request rate"),
        );
    }
    let retry = Retry {
        max_attempts: v.positive(
            rp.key("max_attempts"),
            raw.retry.max_attempts,
            DEFAULT_RETRY_MAX_ATTEMPTS,
            100,
        ) as u32,
        budget,
        buffer_bytes: v.size(
            rp.key("buffer_bytes"),
            raw.retry.buffer_bytes.as_ref(),
            DEFAULT_RETRY_BUFFER_BYTES,
        ),
    };
    let pp = path.key("passive");
    let max_fails = raw.passive.max_fails.unwrap_or(DEFAULT_MAX_FAILS);
    let fail_timeout = v.duration(
        pp.key("fail_timeout"),
        raw.passive.fail_timeout.as_ref(),
        DEFAULT_FAIL_TIMEOUT,
    );
    if max_fails == 0 && raw.passive.fail_timeout.is_some() && !fail_timeout.is_zero() {
        v.issue(
            Issue::new(
                pp.key("max_fails"),
                "max_fails = 0 disables passive health, but fail_timeout is set",
            )
            .help("set max_fails to 1 or more, or remove fail_timeout"),
        );
    }
    if max_fails > 0 && fail_timeout.is_zero() {
        v.issue(
            Issue::new(
                pp.key("fail_timeout"),
                "must be greater than zero while max_fails is set",
            )
            .help("e.g. fail_timeout = \"5s\", or max_fails = 0 to disable"),
        );
    }
    let fail_on_status: Vec<u16> = raw
        .passive
        .fail_on_status
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|code| {
            if (500..=599).contains(&code) {
                Some(code as u16)
            } else {
                v.issue(Issue::new(
                    pp.key("fail_on_status"),
                    format!("`{code}` is not a 5xx status"),
                ));
                None
            }
        })
        .collect();
    let passive = Passive {
        max_fails: max_fails.min(u32::MAX as u64) as u32,
        fail_timeout,
        fail_on_status,
    };
    let protocol = match raw.protocol.as_deref() {
        None | Some("http1") => UpstreamProtocol::Http1,
        Some("h2") => UpstreamProtocol::H2,
        Some(other) => {
            v.issue(
                Issue::new(path.key("protocol"), format!("unknown value `{other}`"))
                    .help("use \"http1\" (HTTP/1.1, the default) or \"h2\" (HTTP/2, e.g. for gRPC)"),
            );
            UpstreamProtocol::Http1
        }
    };
    let tls = raw.tls.as_ref().map(|t| pool_tls(v, t, &path.key("tls")));
    let health = raw
        .health
        .as_ref()
        .map(|h| health(v, h, &path.key("health"), tls.is_some(), protocol));
    let send_proxy = match raw.send_proxy.as_deref() {
        None | Some("off") => None,
        Some("v1") => Some(ProxyVersion::V1),
        Some("v2") => Some(ProxyVersion::V2),
        Some(other) => {
            v.issue(
                Issue::new(path.key("send_proxy"), format!("unknown value `{other}`"))
                    .help("use \"v1\" (text), \"v2\" (binary) or \"off\""),
            );
            None
        }
    };
    if protocol == UpstreamProtocol::H2 && send_proxy.is_some() {
        v.issue(
            Issue::new(path.key("send_proxy"), "cannot be used with protocol = \"h2\"")
                .help("an HTTP/2 connection carries many clients' requests, a PROXY header names one client; use protocol = \"http1\" or remove send_proxy"),
        );
    }
    let endpoints: Vec<Endpoint> = raw
        .endpoint
        .iter()
        .enumerate()
        .map(|(i, e)| endpoint(v, e, &path.key("endpoint").index(i)))
        .collect();
    if endpoints.is_empty() {
        v.issue(
            Issue::new(path.key("name"), format!("pool `{}` has no endpoints", raw.name))
                .help("add at least one [[pool.endpoint]] with an address"),
        );
    }
    let mut seen = HashSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        // An address that did not parse has had its error; its placeholder is no duplicate.
        if e.address != unparsed_address() && !seen.insert(&e.address) {
            v.issue(
                Issue::new(
                    path.key("endpoint").index(i).key("address"),
                    format!("endpoint {} is listed twice in pool `{}`", e.address, raw.name),
                )
                .help("use weight to give an endpoint more traffic"),
            );
        }
    }
    let resolve_all = match raw.resolve.as_deref() {
        None | Some("first") => false,
        Some("all") => true,
        Some(other) => {
            v.issue(
                Issue::new(path.key("resolve"), format!("unknown value `{other}`"))
                    .help("use \"first\" (one endpoint per name) or \"all\" (one per address)"),
            );
            false
        }
    };
    Pool {
        name: raw.name.clone(),
        resolve_all,
        resolve_interval: v.duration(
            path.key("resolve_interval"),
            raw.resolve_interval.as_ref(),
            DEFAULT_RESOLVE_INTERVAL,
        ),
        balancer: v
            .plugin_ref(path.key("balancer"), raw.balancer.as_ref())
            .unwrap_or_else(|| PluginRef {
                plugin: DEFAULT_BALANCER.to_string(),
                config_json: "{}".to_string(),
                at: v.at(&path.key("balancer")),
            }),
        failover: v.plugin_ref(path.key("failover"), raw.failover.as_ref()),
        timeouts,
        retry,
        passive,
        health,
        send_proxy,
        protocol,
        tls,
        endpoints,
    }
}

fn pool_tls(v: &mut V<'_>, raw: &RawPoolTls, path: &KeyPath) -> PoolTls {
    let ca = raw.ca.as_ref().map(|c| v.file_ref(path.key("ca"), c, "CA file"));
    let client_cert = match (&raw.cert, &raw.key) {
        (Some(c), Some(k)) => Some((
            v.file_ref(path.key("cert"), c, "client certificate"),
            v.file_ref(path.key("key"), k, "client key"),
        )),
        (None, None) => None,
        (Some(_), None) | (None, Some(_)) => {
            let missing = if raw.cert.is_some() { "key" } else { "cert" };
            v.issue(
                Issue::new(
                    path.key(missing),
                    format!("`cert` and `key` go together: `{missing}` is missing"),
                )
                .help("a client certificate (mutual TLS) needs its chain in `cert` and its private key in `key`"),
            );
            None
        }
    };
    if let Some(name) = &raw.server_name
        && rustls_pki_types::ServerName::try_from(name.as_str()).is_err()
    {
        v.issue(
            Issue::new(
                path.key("server_name"),
                format!("`{name}` is not a DNS name or an IP address"),
            )
            .help("e.g. server_name = \"api.internal\""),
        );
    }
    PoolTls {
        ca,
        server_name: raw.server_name.clone(),
        verify: raw.verify.unwrap_or(true),
        client_cert,
    }
}

fn health(v: &mut V<'_>, raw: &RawHealth, path: &KeyPath, pool_tls: bool, protocol: UpstreamProtocol) -> Health {
    if raw.tls == Some(true) && !pool_tls {
        v.issue(
            Issue::new(path.key("tls"), "checks over TLS need the pool's [pool.tls] settings")
                .help("add a [pool.tls] table (its CA, name and client certificate serve the checks too)"),
        );
    }
    let port = raw.port.and_then(|p| match u16::try_from(p) {
        Ok(p) if p > 0 => Some(p),
        _ => {
            v.issue(Issue::new(path.key("port"), format!("`{p}` is not a port (1-65535)")));
            None
        }
    });
    if let Some(p) = &raw.path
        && !p.starts_with('/')
    {
        v.issue(Issue::new(path.key("path"), format!("`{p}` must start with `/`")));
    }
    let expect_text = match &raw.expect_status {
        None => DEFAULT_EXPECT_STATUS.to_string(),
        Some(RawSize::Int(n)) => n.to_string(),
        Some(RawSize::Text(t)) => t.clone(),
    };
    let expect_status = parse_status_range(&expect_text).unwrap_or_else(|e| {
        v.issue(Issue::new(path.key("expect_status"), e).help("e.g. \"200\" or \"200-399\""));
        StatusRange { low: 200, high: 399 }
    });
    let grpc = raw
        .grpc
        .unwrap_or(false)
        .then(|| raw.grpc_service.clone().unwrap_or_default());
    if raw.grpc_service.is_some() && grpc.is_none() {
        v.issue(Issue::new(path.key("grpc_service"), "is for gRPC checks").help("add grpc = true"));
    }
    if grpc.is_some() {
        for (key, set) in [
            ("path", raw.path.is_some()),
            ("expect_body", raw.expect_body.is_some()),
            ("expect_status", raw.expect_status.is_some()),
        ] {
            if set {
                v.issue(
                    Issue::new(path.key(key), "does not apply to a gRPC check (grpc = true)")
                        .help("a gRPC check asks grpc.health.v1.Health/Check and passes on SERVING; remove the key"),
                );
            }
        }
        if raw.tls.unwrap_or(pool_tls) && protocol != UpstreamProtocol::H2 {
            v.issue(
                Issue::new(path.key("grpc"), "a gRPC check over TLS needs the pool's protocol = \"h2\"")
                    .help("gRPC servers require ALPN h2, which [pool.tls] offers only for protocol = \"h2\"; or set tls = false for a plaintext check"),
            );
        }
    }
    let interval = v.duration(path.key("interval"), raw.interval.as_ref(), DEFAULT_HEALTH_INTERVAL);
    let timeout = v.duration(path.key("timeout"), raw.timeout.as_ref(), DEFAULT_HEALTH_TIMEOUT);
    if interval.is_zero() {
        v.issue(Issue::new(path.key("interval"), "must be greater than zero"));
    }
    if timeout.is_zero() {
        v.issue(Issue::new(path.key("timeout"), "must be greater than zero"));
    }
    Health {
        port,
        path: raw.path.clone(),
        interval,
        timeout,
        initial_delay: v.duration(
            path.key("initial_delay"),
            raw.initial_delay.as_ref(),
            DEFAULT_HEALTH_INITIAL_DELAY,
        ),
        healthy_threshold: v.positive(
            path.key("healthy_threshold"),
            raw.healthy_threshold,
            DEFAULT_HEALTHY_THRESHOLD,
            1000,
        ) as u32,
        unhealthy_threshold: v.positive(
            path.key("unhealthy_threshold"),
            raw.unhealthy_threshold,
            DEFAULT_UNHEALTHY_THRESHOLD,
            1000,
        ) as u32,
        expect_status,
        expect_body: raw.expect_body.clone(),
        tls: raw.tls.unwrap_or(pool_tls),
        grpc,
    }
}

fn parse_status_range(text: &str) -> Result<StatusRange, String> {
    let parse = |s: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(n) if (100..=599).contains(&n) => Ok(n),
            _ => Err(format!("`{text}` is not a status or status range (100-599)")),
        }
    };
    let (low, high) = match text.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let n = parse(text)?;
            (n, n)
        }
    };
    if low > high {
        return Err(format!("`{text}`: the range is reversed"));
    }
    Ok(StatusRange { low, high })
}

/// What an endpoint address that did not parse stands as: port 0, which no valid address has.
fn unparsed_address() -> EndpointAddress {
    EndpointAddress::Socket(SocketAddr::from(([0, 0, 0, 0], 0)))
}

fn endpoint(v: &mut V<'_>, raw: &RawEndpoint, path: &KeyPath) -> Endpoint {
    let address = parse_endpoint_address(&raw.address).unwrap_or_else(|e| {
        v.issue(
            Issue::new(path.key("address"), e)
                .help("write ip:port (\"10.0.1.10:9080\", \"[::1]:9080\") or host:port (\"api.internal:9080\")"),
        );
        unparsed_address()
    });
    let weight = raw.weight.unwrap_or(DEFAULT_WEIGHT);
    if weight == 0 || weight > 10_000 {
        v.issue(
            Issue::new(path.key("weight"), format!("must be between 1 and 10000, got {weight}"))
                .help("drain an endpoint through the admin API instead of weight 0"),
        );
    }
    let max_in_flight = raw.max_in_flight.unwrap_or(0);
    if max_in_flight > 1_000_000 {
        v.issue(
            Issue::new(
                path.key("max_in_flight"),
                format!("must be at most 1000000, got {max_in_flight}"),
            )
            .help("0 (the default) sets no limit"),
        );
    }
    Endpoint {
        address,
        weight: weight.clamp(1, 10_000) as u32,
        zone: raw.zone.clone().unwrap_or_default(),
        backup: raw.backup.unwrap_or(false),
        max_in_flight: max_in_flight.min(1_000_000) as u32,
    }
}

pub fn parse_endpoint_address(text: &str) -> Result<EndpointAddress, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("`{text}` has port 0"));
        }
        return Ok(EndpointAddress::Socket(addr));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("`{text}` has no port"));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("`{text}`: `{port}` is not a port (1-65535)")),
    };
    if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
        return Err(format!("`{text}` is not a valid address"));
    }
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid_host {
        return Err(format!("`{text}`: `{host}` is neither an IP address nor a host name"));
    }
    Ok(EndpointAddress::Host {
        host: host.to_ascii_lowercase(),
        port,
    })
}
