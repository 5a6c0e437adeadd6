//! One inline-TOML test per validation rule: each checks the key, the line and the message.

use std::path::Path;
use weir_config::{ConfigError, parse};

const BASE: &str = r#"
[[listener]]
name = "client"
bind = "127.0.0.1:18080"
pool = "app"

[[pool]]
name = "app"
[[pool.endpoint]]
address = "127.0.0.1:9001"
"#;

fn errors(src: &str) -> Vec<ConfigError> {
    match parse(src, Path::new("test.toml")) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    }
}

/// Asserts exactly one error, on `key`, at `line`, whose message contains `needle`.
#[track_caller]
fn assert_one(src: &str, key: &str, line: usize, needle: &str) {
    let errs = errors(src);
    assert_eq!(errs.len(), 1, "expected one error, got {errs:#?}");
    let e = &errs[0];
    assert_eq!(e.key, key, "{e}");
    assert_eq!(e.line, line, "{e}");
    assert!(e.message.contains(needle), "{e}");
    assert_eq!(e.file, Path::new("test.toml"));
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("test.toml:{line}:")), "{shown}");
}

#[test]
fn base_is_valid_with_defaults() {
    let c = parse(BASE, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners.len(), 1);
    let pool = &c.pools[0];
    assert_eq!(pool.balancer.plugin, "round-robin");
    assert_eq!(pool.passive.max_fails, 3);
    assert_eq!(pool.timeouts.connect, std::time::Duration::from_secs(1));
    assert_eq!(c.listeners[0].limits.max_headers, 100);
    assert_eq!(c.admin.bind.to_string(), "127.0.0.1:9901");
}

#[test]
fn duplicate_listener_names() {
    let src = format!("{BASE}\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:18081\"\npool = \"app\"\n");
    assert_one(&src, "listener[1].name", 13, "duplicate listener name `client`");
}

#[test]
fn duplicate_pool_names() {
    let src = format!("{BASE}\n[[pool]]\nname = \"app\"\n[[pool.endpoint]]\naddress = \"127.0.0.1:9002\"\n");
    assert_one(&src, "pool[1].name", 13, "duplicate pool name `app`");
}

#[test]
fn two_listeners_on_one_address() {
    let src = format!("{BASE}\n[[listener]]\nname = \"p2p\"\nbind = \"0.0.0.0:18080\"\npool = \"app\"\n");
    assert_one(&src, "listener[1].bind", 14, "already binds");
}

#[test]
fn port_zero_listeners_never_collide() {
    let src = BASE.replace("127.0.0.1:18080", "127.0.0.1:0")
        + "\n[[listener]]\nname = \"p2p\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n";
    assert!(errors(&src).is_empty());
}

#[test]
fn listener_names_unknown_pool() {
    let src = BASE.replace("pool = \"app\"", "pool = \"nope\"");
    assert_one(&src, "listener[0].pool", 5, "unknown pool `nope`");
    assert!(errors(&src)[0].help.as_deref().unwrap_or("").contains("app"));
}

#[test]
fn endpoint_address_that_does_not_parse() {
    let src = BASE.replace("127.0.0.1:9001", "127.0.0.1");
    assert_one(&src, "pool[0].endpoint[0].address", 10, "no port");
    let src = BASE.replace("127.0.0.1:9001", "bad host!:80");
    assert_one(&src, "pool[0].endpoint[0].address", 10, "neither an IP");
}

#[test]
fn endpoint_hostnames_are_accepted() {
    let src = BASE.replace("127.0.0.1:9001", "api.internal:9080");
    let c = parse(&src, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.pools[0].endpoints[0].address.to_string(), "api.internal:9080");
}

#[test]
fn duration_with_space() {
    let src = format!("{BASE}[pool.passive]\nfail_timeout = \"5 s\"\n");
    assert_one(&src, "pool[0].passive.fail_timeout", 12, "invalid duration");
}

#[test]
fn duration_over_a_year() {
    let src = format!("{BASE}[pool.passive]\nfail_timeout = \"366d\"\n");
    assert_one(&src, "pool[0].passive.fail_timeout", 12, "longer than any duration");
    let src = format!("{BASE}[pool.passive]\nfail_timeout = \"365d\"\n");
    assert!(errors(&src).is_empty());
}

#[test]
fn max_fails_zero_with_fail_timeout() {
    let src = format!("{BASE}[pool.passive]\nmax_fails = 0\nfail_timeout = \"5s\"\n");
    assert_one(&src, "pool[0].passive.max_fails", 12, "max_fails = 0");
}

#[test]
fn missing_cert_file() {
    let src = BASE.replace(
        "pool = \"app\"\n",
        "pool = \"app\"\n[listener.tls]\ncert = \"nope.pem\"\nkey = \"nope.key\"\n",
    );
    let errs = errors(&src);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert_eq!(errs[0].key, "listener[0].tls.cert");
    assert_eq!(errs[0].line, 7);
    assert!(errs[0].message.contains("nope.pem"));
    assert_eq!(errs[1].key, "listener[0].tls.key");
}

#[test]
fn unknown_key_is_located() {
    let src = BASE.replace("pool = \"app\"\n", "pool = \"app\"\nbnid = \"x\"\n");
    let errs = errors(&src);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, 6, "{}", errs[0]);
    assert_eq!(errs[0].key, "listener[0].bnid", "{}", errs[0]);
    assert!(errs[0].message.contains("unknown field `bnid`"), "{}", errs[0]);
}

/// The TOML parser's schema errors carry only a span; the error names the key written there.
#[test]
fn wrong_types_name_their_key() {
    let nested = format!("{BASE}[pool.passive]\nmax_fails = \"two\"\n");
    assert_one(&nested, "pool[0].passive.max_fails", 12, "invalid type: string \"two\"");
    let e = &errors(&nested)[0];
    assert!(e.help.as_deref().is_some_and(|h| h.contains("whole number")), "{e}");
    assert!(e.to_string().contains("key `pool[0].passive.max_fails`"), "{e}");

    let top = BASE.replace("pool = \"app\"\n", "pool = 3\n");
    assert_one(&top, "listener[0].pool", 5, "invalid type: integer `3`");
    assert!(
        errors(&top)[0]
            .help
            .as_deref()
            .is_some_and(|h| h.contains("double quotes"))
    );

    let second = format!("{BASE}[[pool.endpoint]]\naddress = \"127.0.0.1:9002\"\nbackup = \"yes\"\n");
    assert_one(&second, "pool[0].endpoint[1].backup", 13, "invalid type");

    let inline = BASE.replace(
        "name = \"app\"\n",
        "name = \"app\"\nbalancer = { plugin = \"round-robin\", config = { a = 1 }, extra = true }\n",
    );
    assert_one(&inline, "pool[0].balancer.extra", 9, "unknown field `extra`");
}

/// Plugins load after validation; their errors begin with where the reference is written.
#[test]
fn plugin_references_know_where_they_are_written() {
    let src = BASE
        .replace(
            "pool = \"app\"\n",
            "pool = \"app\"\nrouter = { plugin = \"host-router\" }\n",
        )
        .replace(
            "name = \"app\"\n",
            "name = \"app\"\nfailover = { plugin = \"retry-idempotent\" }\n",
        );
    let c = parse(&src, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    let router = c.listeners[0].router.as_ref().map(|r| r.at.as_str());
    assert_eq!(router, Some("test.toml:6:10: key `listener[0].router`"));
    assert_eq!(
        c.pools[0].failover.as_ref().map(|r| r.at.as_str()),
        Some("test.toml:10:12: key `pool[0].failover`")
    );
    // No `balancer` key: the default is said to come from the pool's table.
    assert_eq!(c.pools[0].balancer.at, "test.toml:8:1: key `pool[0].balancer`");
    // Moving a reference to another line does not make it another reference.
    let moved = parse(&format!("\n{src}"), Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(moved.pools[0].balancer.at, c.pools[0].balancer.at);
    assert_eq!(moved.pools[0].balancer, c.pools[0].balancer);
}

#[test]
fn missing_key_names_its_table() {
    let src = format!("{BASE}[[pool.endpoint]]\nweight = 2\n");
    assert_one(&src, "pool[0].endpoint[1]", 11, "missing field `address`");
}

#[test]
fn syntax_error_is_located() {
    let src = format!("{BASE}\n[pool.timeouts\n");
    let errs = errors(&src);
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, 12, "{}", errs[0]);
}

#[test]
fn bad_bind_address() {
    let src = BASE.replace("127.0.0.1:18080", "localhost");
    assert_one(&src, "listener[0].bind", 4, "not an ip:port");
}

#[test]
fn bad_advertise() {
    let src = BASE.replace("pool = \"app\"\n", "pool = \"app\"\nadvertise = \"lb.example.com\"\n");
    assert_one(&src, "listener[0].advertise", 6, "http:// or https://");
}

#[test]
fn advertise_parses() {
    let src = BASE.replace(
        "pool = \"app\"\n",
        "pool = \"app\"\nadvertise = \"https://lb.example.com:9080\"\n",
    );
    let c = parse(&src, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    let adv = c.listeners[0].advertise.clone().unwrap_or_else(|| panic!("advertise"));
    assert_eq!(adv.authority, "lb.example.com:9080");
    assert_eq!(adv.scheme.as_str(), "https");
}

#[test]
fn pool_without_endpoints() {
    let src = "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[[pool]]\nname = \"p\"\n";
    assert_one(src, "pool[0].name", 6, "no endpoints");
}

#[test]
fn duplicate_endpoint() {
    let src = format!("{BASE}[[pool.endpoint]]\naddress = \"127.0.0.1:9001\"\n");
    assert_one(&src, "pool[0].endpoint[1].address", 12, "listed twice");
}

/// Two addresses that do not parse are two errors, not also a "listed twice" between them.
#[test]
fn bad_endpoint_addresses_are_not_duplicates_of_each_other() {
    let src = format!("{BASE}[[pool.endpoint]]\naddress = \"nowhere\"\n[[pool.endpoint]]\naddress = \"10.0.0.1:0\"\n");
    let errs = errors(&src);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(errs[0].message.contains("has no port"), "{}", errs[0]);
    assert!(errs[1].message.contains("port 0"), "{}", errs[1]);
}

#[test]
fn weight_zero() {
    let src = format!("{BASE}weight = 0\n");
    assert_one(&src, "pool[0].endpoint[0].weight", 11, "between 1 and 10000");
}

#[test]
fn max_in_flight_bounds_and_defaults() {
    let src = format!("{BASE}max_in_flight = 2000000\n");
    assert_one(&src, "pool[0].endpoint[0].max_in_flight", 11, "at most 1000000");
    let src = format!("{BASE}max_in_flight = -1\n");
    assert_one(&src, "pool[0].endpoint[0].max_in_flight", 11, "");
    let c = parse(&format!("{BASE}max_in_flight = 8\n"), Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.pools[0].endpoints[0].max_in_flight, 8);
    assert_eq!(c.pools[0].timeouts.queue, std::time::Duration::from_secs(1));
    let c = parse(BASE, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.pools[0].endpoints[0].max_in_flight, 0);
    // `Endpoint::at` is what a config listing only the address gives.
    let only_address = weir_config::Endpoint::at(c.pools[0].endpoints[0].address.clone());
    assert_eq!(c.pools[0].endpoints[0], only_address);
}

#[test]
fn health_status_range() {
    let src = format!("{BASE}[pool.health]\nexpect_status = \"399-200\"\n");
    assert_one(&src, "pool[0].health.expect_status", 12, "reversed");
}

#[test]
fn health_status_as_a_bare_number() {
    let src = format!("{BASE}[pool.health]\nexpect_status = 204\n");
    let range = parse(&src, Path::new("test.toml")).ok().and_then(|c| {
        c.pools[0]
            .health
            .as_ref()
            .map(|h| (h.expect_status.low, h.expect_status.high))
    });
    assert_eq!(range, Some((204, 204)));
    let src = format!("{BASE}[pool.health]\nexpect_status = 700\n");
    assert_one(&src, "pool[0].health.expect_status", 12, "not a status");
}

#[test]
fn pool_resolve_unknown() {
    let src = BASE.replace(
        "name = \"app\"\n[[pool.endpoint]]",
        "name = \"app\"\nresolve = \"some\"\n[[pool.endpoint]]",
    );
    assert_one(&src, "pool[0].resolve", 9, "unknown value");
}

#[test]
fn health_port_out_of_range() {
    let src = format!("{BASE}[pool.health]\nport = 70000\n");
    assert_one(&src, "pool[0].health.port", 12, "not a port");
}

#[test]
fn health_thresholds_positive() {
    let src = format!("{BASE}[pool.health]\nhealthy_threshold = 0\n");
    assert_one(&src, "pool[0].health.healthy_threshold", 12, "between 1");
}

#[test]
fn health_path_must_be_absolute() {
    let src = format!("{BASE}[pool.health]\npath = \"upcheck\"\n");
    assert_one(&src, "pool[0].health.path", 12, "must start with `/`");
}

#[test]
fn retry_budget_range() {
    let src = format!("{BASE}[pool.retry]\nbudget = -1.0\n");
    assert_one(&src, "pool[0].retry.budget", 12, "ratio");
}

#[test]
fn retry_max_attempts_positive() {
    let src = format!("{BASE}[pool.retry]\nmax_attempts = 0\n");
    assert_one(&src, "pool[0].retry.max_attempts", 12, "between 1");
}

#[test]
fn plugins_on_error_values() {
    let src = format!("[plugins]\non_error = \"explode\"\n{BASE}");
    assert_one(&src, "plugins.on_error", 2, "unknown value");
}

#[test]
fn plugins_memory_limit_size() {
    let src = format!("[plugins]\nmemory_limit = \"16 MiB\"\n{BASE}");
    assert_one(&src, "plugins.memory_limit", 2, "invalid size");
}

#[test]
fn plugin_name_is_a_file_stem() {
    let src = format!("{BASE}\n[pool.balancer]\nplugin = \"../evil\"\n");
    assert_one(&src, "pool[0].balancer.plugin", 13, "invalid plugin name");
}

#[test]
fn plugin_config_becomes_json() {
    let src = format!(
        "{BASE}\n[pool.failover]\nplugin = \"retry-idempotent\"\nconfig = {{ max_attempts = 3, on_status = [502, 503] }}\n"
    );
    let c = parse(&src, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    let f = c.pools[0].failover.clone().unwrap_or_else(|| panic!("failover"));
    let v: serde_json::Value = serde_json::from_str(&f.config_json).unwrap_or_default();
    assert_eq!(v["max_attempts"], 3);
    assert_eq!(v["on_status"][1], 503);
}

#[test]
fn admin_non_loopback_needs_token() {
    let src = format!("[admin]\nbind = \"0.0.0.0:9901\"\n{BASE}");
    assert_one(&src, "admin.bind", 2, "without a token");
}

#[test]
fn admin_token_env_is_enough() {
    let src = format!("[admin]\nbind = \"0.0.0.0:9901\"\ntoken_env = \"WEIR_TOKEN\"\n{BASE}");
    assert!(errors(&src).is_empty());
}

#[test]
fn listener_clashes_with_admin() {
    let src = BASE.replace("127.0.0.1:18080", "127.0.0.1:9901");
    assert_one(&src, "listener[0].bind", 4, "admin API");
}

#[test]
fn limits_zero_timeout() {
    let src = BASE.replace(
        "pool = \"app\"\n",
        "pool = \"app\"\n[listener.limits]\nheader_timeout = \"0s\"\n",
    );
    assert_one(&src, "listener[0].limits.header_timeout", 7, "greater than zero");
    let src = BASE.replace(
        "pool = \"app\"\n",
        "pool = \"app\"\n[listener.limits]\nsend_timeout = \"0s\"\n",
    );
    assert_one(&src, "listener[0].limits.send_timeout", 7, "greater than zero");
}

#[test]
fn max_body_bytes_accepts_int_and_string() {
    for value in ["\"10MiB\"", "10485760"] {
        let src = BASE.replace(
            "pool = \"app\"\n",
            &format!("pool = \"app\"\n[listener.limits]\nmax_body_bytes = {value}\n"),
        );
        let c = parse(&src, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listeners[0].limits.max_body_bytes, 10 << 20);
    }
}

#[test]
fn sni_wildcard_names() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for f in ["a.pem", "a.key"] {
        std::fs::write(dir.path().join(f), "x").unwrap_or_else(|e| panic!("{e}"));
    }
    let src = BASE.replace(
        "pool = \"app\"\n",
        "pool = \"app\"\n[listener.tls]\ncert = \"a.pem\"\nkey = \"a.key\"\n[[listener.tls.sni]]\nserver_name = \"*.Example.org\"\ncert = \"a.pem\"\nkey = \"a.key\"\n[[listener.tls.sni]]\nserver_name = \"a.*.org\"\ncert = \"a.pem\"\nkey = \"a.key\"\n",
    );
    let errs = match parse(&src, &dir.path().join("weir.toml")) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    };
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].key, "listener[0].tls.sni[1].server_name");
}

#[test]
fn every_error_is_reported() {
    let src = BASE
        .replace("127.0.0.1:9001", "nope")
        .replace("pool = \"app\"", "pool = \"x\"");
    assert_eq!(errors(&src).len(), 2);
}

#[test]
fn no_listener() {
    let src = "[[pool]]\nname = \"p\"\n[[pool.endpoint]]\naddress = \"127.0.0.1:1\"\n";
    let errs = errors(src);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].message.contains("no [[listener]]"));
}

#[test]
fn unreadable_file_names_it() {
    let err = weir_config::load(Path::new("/nonexistent/weir.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        err.contains("/nonexistent/weir.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn pool_send_proxy_values() {
    let src = BASE.replace(
        "name = \"app\"\n[[pool.endpoint]]",
        "name = \"app\"\nsend_proxy = \"v3\"\n[[pool.endpoint]]",
    );
    assert_one(&src, "pool[0].send_proxy", 9, "unknown value");
    for ok in ["v1", "v2", "off"] {
        let src = BASE.replace(
            "name = \"app\"\n[[pool.endpoint]]",
            &format!("name = \"app\"\nsend_proxy = \"{ok}\"\n[[pool.endpoint]]"),
        );
        assert!(errors(&src).is_empty(), "{ok}");
    }
}

#[test]
fn forwarding_headers_default_to_all_five() {
    let c = parse(BASE, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners[0].forwarding_headers, weir_config::ForwardingHeaders::ALL);
}

#[test]
fn forwarding_headers_take_the_listed_ones_in_any_case() {
    let src = BASE.replace(
        "pool = \"app\"\n",
        "pool = \"app\"\nforwarding_headers = [\"X-Forwarded-For\", \"via\"]\n",
    );
    let c = parse(&src, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    let f = c.listeners[0].forwarding_headers;
    assert!(f.x_forwarded_for && f.via);
    assert!(!f.x_forwarded_proto && !f.x_forwarded_host && !f.forwarded);
    let none = BASE.replace("pool = \"app\"\n", "pool = \"app\"\nforwarding_headers = []\n");
    let c = parse(&none, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners[0].forwarding_headers, weir_config::ForwardingHeaders::NONE);
}

#[test]
fn bad_forwarding_header() {
    let src = BASE.replace(
        "pool = \"app\"\n",
        "pool = \"app\"\nforwarding_headers = [\n  \"x-forwarded-for\",\n  \"x-real-ip\",\n]\n",
    );
    assert_one(
        &src,
        "listener[0].forwarding_headers[1]",
        8,
        "`x-real-ip` is not a forwarding header",
    );
}

#[test]
fn response_body_timeout_defaults_to_five_minutes_and_zero_lifts_it() {
    let c = parse(BASE, Path::new("test.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.pools[0].timeouts.body, std::time::Duration::from_secs(300));
    let c = parse(
        &format!("{BASE}[pool.timeouts]\nbody = \"0\"\n"),
        Path::new("test.toml"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.pools[0].timeouts.body, std::time::Duration::ZERO);
    let src = format!("{BASE}[pool.timeouts]\nbody = \"5 minutes\"\n");
    assert_one(&src, "pool[0].timeouts.body", 12, "duration");
}
