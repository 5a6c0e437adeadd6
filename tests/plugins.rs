//! Each default plugin changes real traffic as DESIGN §9 says; faulty plugins are contained.
//! Real `.wasm` files built from plugins/ (scripts/build-plugins.sh), real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use weir_test_support::*;

fn endpoints(ups: &[&Upstream]) -> String {
    ups.iter()
        .map(|u| format!("[[pool.endpoint]]\naddress = \"{}\"\n", u.addr))
        .collect()
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

async fn status_json(gw: &TestGateway) -> serde_json::Value {
    get(&gw.admin_url("/api/v1/status")).await.json()
}

fn plugin_calls(status: &serde_json::Value, plugin: &str, hook: &str, outcome: &str) -> u64 {
    status["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == plugin)
        .and_then(|p| p["calls"][hook][outcome].as_u64())
        .unwrap_or(0)
}

/// A rolling update drains one replica of three: the other two share its traffic evenly.
/// (The next one in index order used to take all of it: 2/3 of the traffic on one replica.)
#[tokio::test]
async fn a_drained_endpoint_s_traffic_is_shared_by_all_the_others() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let gw = TestGateway::start(&one_pool(&[&a, &b, &c])).await;
    let drain = Request::post(gw.admin_url(&format!("/api/v1/pools/app/endpoints/{}/drain", a.addr)))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(request(drain).await.status, 200);
    for _ in 0..20 {
        assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    }
    assert_eq!((a.requests(), b.requests(), c.requests()), (0, 10, 10));
}

#[tokio::test]
async fn the_default_balancer_is_the_wasm_round_robin() {
    plugin_file("round-robin");
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&one_pool(&[&a, &b])).await;
    for _ in 0..10 {
        assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    }
    assert_eq!((a.requests(), b.requests()), (5, 5));
    let s = status_json(&gw).await;
    assert_eq!(plugin_calls(&s, "round-robin", "select", "ok"), 10, "{s}");
    let rr = s["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "round-robin")
        .unwrap()
        .clone();
    assert_eq!(rr["sha256"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn host_router_sends_hosts_to_their_pools() {
    let (a, b, d) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("default").await,
    );
    let toml = format!(
        r#"
[[listener]]
name = "client"
bind = "127.0.0.1:0"
pool = "default"
router = {{ plugin = "host-router", config = {{ routes = [ {{ host = "a.example.com", pool = "a" }}, {{ host = "*.example.com", path_prefix = "/b", pool = "b" }} ] }} }}
[[pool]]
name = "default"
{}
[[pool]]
name = "a"
{}
[[pool]]
name = "b"
{}
"#,
        endpoints(&[&d]),
        endpoints(&[&a]),
        endpoints(&[&b])
    );
    let gw = TestGateway::start(&toml).await;
    let url = gw.url("client", "/b/x");
    assert_eq!(
        request(get_with(&url, &[("host", "a.example.com")])).await.upstream(),
        "a"
    );
    assert_eq!(
        request(get_with(&url, &[("host", "b.example.com")])).await.upstream(),
        "b"
    );
    assert_eq!(
        request(get_with(&gw.url("client", "/other"), &[("host", "b.example.com")]))
            .await
            .upstream(),
        "default"
    );
    assert_eq!(
        request(get_with(&url, &[("host", "example.org")])).await.upstream(),
        "default"
    );
}

#[tokio::test]
async fn consistent_hash_pins_users_by_header() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let refs: Vec<&Upstream> = ups.iter().collect();
    let toml =
        one_pool(&refs) + "[pool.balancer]\nplugin = \"consistent-hash\"\nconfig = { key = \"header:x-user\" }\n";
    let gw = TestGateway::start(&toml).await;
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..3 {
        for user in 0..30 {
            let u = format!("user-{user}");
            let got = request(get_with(&gw.url("client", "/"), &[("x-user", &u)]))
                .await
                .upstream();
            if round == 0 {
                owner.insert(u, got);
            } else {
                assert_eq!(owner[&u], got, "{u} moved");
            }
        }
    }
    let used: std::collections::HashSet<&String> = owner.values().collect();
    assert_eq!(used.len(), 3, "30 users should spread over 3 endpoints: {owner:?}");
    // Requests without the header have no key: they spread too, instead of all going to the
    // endpoint that owns the empty key.
    let before: Vec<u64> = ups.iter().map(|u| u.requests()).collect();
    for _ in 0..30 {
        assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    }
    let keyless = ups.iter().zip(&before).filter(|(u, b)| u.requests() > **b).count();
    assert!(keyless >= 2, "30 requests without a key all went to one endpoint");
}

#[tokio::test]
async fn least_request_avoids_the_endpoint_holding_slow_requests() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let toml = one_pool(&[&a, &b]) + "[pool.balancer]\nplugin = \"least-request\"\nconfig = { choices = 2 }\n";
    let gw = TestGateway::start(&toml).await;
    let admin = |action: &str, who: &Upstream| {
        Request::post(gw.admin_url(&format!("/api/v1/pools/app/endpoints/{}/{action}", who.addr)))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(request(admin("drain", &b)).await.status, 200);
    let mut slow = Vec::new();
    for _ in 0..3 {
        let url = gw.url("client", "/delay/1500");
        slow.push(tokio::spawn(async move { get(&url).await.status }));
    }
    assert!(eventually(Duration::from_secs(5), async || a.requests() == 3).await);
    assert_eq!(request(admin("enable", &b)).await.status, 200);
    for _ in 0..10 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), "b");
    }
    for s in slow {
        assert_eq!(s.await.unwrap(), 200);
    }
}

/// One request at a time (no endpoint ever has one in flight when the next is chosen): the
/// tie-break is the latency EWMA. Both endpoints get tried, then the slow one is left alone.
#[tokio::test]
async fn least_request_sends_one_at_a_time_traffic_to_the_faster_endpoint() {
    let (slow, fast) = (Upstream::start("slow").await, Upstream::start("fast").await);
    slow.set_delay(60);
    let toml = one_pool(&[&slow, &fast]) + "[pool.balancer]\nplugin = \"least-request\"\n";
    let gw = TestGateway::start(&toml).await;
    for _ in 0..12 {
        assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    }
    // The first two requests try each endpoint once (no latency known is the lowest); then
    // the fast one wins every tie. Without the EWMA, every request went to the first endpoint.
    assert_eq!((slow.requests(), fast.requests()), (1, 11));
    let s = status_json(&gw).await;
    let ewma: Vec<u64> = s["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ewma_latency_us"].as_u64().unwrap())
        .collect();
    assert!(ewma[0] >= 60_000 && ewma[1] < ewma[0], "{ewma:?}");
}

#[tokio::test]
async fn retry_idempotent_hides_a_resetting_endpoint_from_gets_and_never_replays_posts() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_resetting(true);
    // Passive health off: every request must meet the resetting endpoint in turn.
    let toml = one_pool(&[&bad, &good])
        + "[pool.failover]\nplugin = \"retry-idempotent\"\nconfig = { max_attempts = 3 }\n[pool.passive]\nmax_fails = 0\n";
    let gw = TestGateway::start(&toml).await;
    for _ in 0..10 {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream(), "good");
    }
    assert!(bad.requests() >= 4, "the bad endpoint was tried: {}", bad.requests());
    let (bad_before, good_before) = (bad.requests(), good.requests());
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let req = Request::post(gw.url("client", "/"))
            .body(Full::new(Bytes::from_static(b"once")))
            .unwrap();
        statuses.push(request(req).await.status.as_u16());
    }
    let sent_bad = bad.requests() - bad_before;
    let sent_good = good.requests() - good_before;
    // Every POST reached exactly one upstream; the ones that hit the bad one failed with 502.
    assert_eq!(sent_bad + sent_good, 6, "a POST was replayed");
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count() as u64,
        sent_bad,
        "{statuses:?}"
    );
    assert!(sent_bad >= 1);
}

#[tokio::test]
async fn retry_idempotent_retries_listed_statuses() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let toml = one_pool(&[&a, &b]) + "[pool.failover]\nplugin = \"retry-idempotent\"\nconfig = { on_status = [503] }\n";
    let gw = TestGateway::start(&toml).await;
    // Both answer 503 for this path: the client gets a 503 after one retry, not more.
    let r = get(&gw.url("client", "/status/503")).await;
    assert_eq!(r.status, 503);
    assert_eq!(a.requests() + b.requests(), 2);
}

#[tokio::test]
async fn zone_aware_prefers_the_local_zone_and_spills_over() {
    let (a, b) = (Upstream::start("zone-a").await, Upstream::start("zone-b").await);
    let toml = format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nbalancer = {{ plugin = \"zone-aware\", config = {{ local_zone = \"a\" }} }}\n[[pool.endpoint]]\naddress = \"{}\"\nzone = \"a\"\n[[pool.endpoint]]\naddress = \"{}\"\nzone = \"b\"\n",
        a.addr, b.addr
    );
    let gw = TestGateway::start(&toml).await;
    for _ in 0..5 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), "zone-a");
    }
    let drain = Request::post(gw.admin_url(&format!("/api/v1/pools/app/endpoints/{}/drain", a.addr)))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(request(drain).await.status, 200);
    for _ in 0..5 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), "zone-b");
    }
}

#[tokio::test]
async fn canary_by_header() {
    let (stable, canary) = (Upstream::start("stable").await, Upstream::start("canary").await);
    let toml = format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"stable\"\nrouter = {{ plugin = \"canary\", config = {{ pool = \"stable\", canary_pool = \"canary\", percent = 0, header = \"x-canary\" }} }}\n[[pool]]\nname = \"stable\"\n{}[[pool]]\nname = \"canary\"\n{}",
        endpoints(&[&stable]),
        endpoints(&[&canary])
    );
    let gw = TestGateway::start(&toml).await;
    for _ in 0..5 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), "stable");
        assert_eq!(
            request(get_with(&gw.url("client", "/"), &[("x-canary", "1")]))
                .await
                .upstream(),
            "canary"
        );
    }
}

#[tokio::test]
async fn sticky_sessions_follow_the_cookie() {
    let ups = [
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    ];
    let refs: Vec<&Upstream> = ups.iter().collect();
    let toml = one_pool(&refs) + "[pool.balancer]\nplugin = \"sticky\"\nconfig = { cookie = \"sid\", ttl = \"1h\" }\n";
    let gw = TestGateway::start(&toml).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        let first = get(&gw.url("client", "/")).await;
        let cookie = first.headers["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        assert!(cookie.starts_with("sid="), "{cookie}");
        let pinned = first.upstream();
        seen.insert(pinned.clone());
        for _ in 0..4 {
            let r = request(get_with(&gw.url("client", "/"), &[("cookie", &cookie)])).await;
            assert_eq!(r.upstream(), pinned);
            assert!(r.headers.get("set-cookie").is_none());
        }
    }
    assert!(seen.len() >= 2, "new sessions should spread: {seen:?}");
    // Over plain HTTP the cookie cannot be `Secure` (the browser would never send it back).
    let first = get(&gw.url("client", "/")).await;
    assert!(!first.headers["set-cookie"].to_str().unwrap().contains("Secure"));
}

/// Where clients speak https (here a listener that advertises it: TLS ends in front of weir),
/// the sticky cookie weir issues is `Secure`.
#[tokio::test]
async fn the_sticky_cookie_is_secure_where_clients_speak_https() {
    let a = Upstream::start("a").await;
    let toml = one_pool_with(&[&a], "advertise = \"https://lb.example.com\"\n")
        + "[pool.balancer]\nplugin = \"sticky\"\nconfig = { cookie = \"sid\", ttl = \"1h\" }\n";
    let gw = TestGateway::start(&toml).await;
    let r = get(&gw.url("client", "/")).await;
    let cookie = r.headers["set-cookie"].to_str().unwrap();
    assert!(cookie.starts_with("sid=") && cookie.ends_with("; Secure"), "{cookie}");
}

#[tokio::test]
async fn pool_failover_moves_to_the_fallback_pool() {
    let dr = Upstream::start("dr").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let toml = format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"main\"\n[[pool]]\nname = \"main\"\nfailover = {{ plugin = \"pool-failover\", config = {{ fallback_pool = \"dr\", retries = 0 }} }}\n[[pool.endpoint]]\naddress = \"{dead}\"\n[[pool]]\nname = \"dr\"\n{}",
        endpoints(&[&dr])
    );
    let gw = TestGateway::start(&toml).await;
    for _ in 0..3 {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream(), "dr");
    }
}

fn post(url: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

/// The primary pool's only endpoint dead, with the default `retries = 1`: the retry has
/// nowhere to go in the pool, so the request moves to the fallback at once, POSTs included
/// (the refused connect sent nothing). Passive health never takes a pool's only endpoint out,
/// so each request tries it first. Draining every endpoint of a pool sends its requests to
/// the fallback without an attempt, and enabling one brings the traffic back.
#[tokio::test]
async fn pool_failover_moves_requests_from_a_pool_with_no_endpoint_left() {
    let (a, b, dr) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("dr").await,
    );
    let dead = format!("127.0.0.1:{}", free_port());
    let toml = format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"one\"\n[[listener]]\nname = \"two\"\nbind = \"127.0.0.1:0\"\npool = \"two\"\n\
         [[pool]]\nname = \"one\"\nfailover = {{ plugin = \"pool-failover\", config = {{ fallback_pool = \"dr\" }} }}\n[[pool.endpoint]]\naddress = \"{dead}\"\n\
         [[pool]]\nname = \"two\"\nfailover = {{ plugin = \"pool-failover\", config = {{ fallback_pool = \"dr\" }} }}\n{}\
         [[pool]]\nname = \"dr\"\n{}",
        endpoints(&[&a, &b]),
        endpoints(&[&dr])
    );
    let gw = TestGateway::start(&toml).await;
    for i in 0..8 {
        let r = if i % 2 == 0 {
            get(&gw.url("client", "/")).await
        } else {
            request(post(&gw.url("client", "/submit"), "order")).await
        };
        assert_eq!(
            (r.status.as_u16(), r.upstream()),
            (200, "dr".to_string()),
            "request {i}: {}",
            r.text()
        );
    }
    assert_eq!(dr.requests(), 8);

    // Every endpoint of pool `two` drained: nothing is sent to them, a POST included.
    let gw = &gw;
    let admin = |path: String| async move {
        let req = Request::post(gw.admin_url(&path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(request(req).await.status, 200, "{path}");
    };
    for u in [&a, &b] {
        admin(format!("/api/v1/pools/two/endpoints/{}/drain", u.addr)).await;
    }
    let r = request(post(&gw.url("two", "/submit"), "order")).await;
    assert_eq!(
        (r.status.as_u16(), r.upstream()),
        (200, "dr".to_string()),
        "{}",
        r.text()
    );
    assert_eq!(a.requests() + b.requests(), 0);
    admin(format!("/api/v1/pools/two/endpoints/{}/enable", a.addr)).await;
    let r = request(post(&gw.url("two", "/submit"), "order")).await;
    assert_eq!(
        (r.status.as_u16(), r.upstream()),
        (200, "a".to_string()),
        "{}",
        r.text()
    );
}

/// `call_timeout`: short for the looping fixture; roomy for the others, so that on a loaded
/// machine their own failure (trap, out of memory) is the one that fires.
async fn faulty_balancer_is_contained(plugin: &str, outcome: &str, call_timeout: &str) {
    let (a, b, other) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("other").await,
    );
    let toml = format!(
        "[plugins]\ndir = \"{}\"\ncall_timeout = \"{call_timeout}\"\nmemory_limit = \"8MiB\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[listener]]\nname = \"other\"\nbind = \"127.0.0.1:0\"\npool = \"other\"\n[[pool]]\nname = \"app\"\nbalancer = {{ plugin = \"{plugin}\" }}\n{}[[pool]]\nname = \"other\"\n{}",
        plugins_dist().display(),
        endpoints(&[&a, &b]),
        endpoints(&[&other])
    );
    let gw = TestGateway::start(&toml).await;
    let rss_before = proc_status_kib("VmRSS");
    let mut slowest = Duration::ZERO;
    for _ in 0..30 {
        let start = Instant::now();
        let r = get(&gw.url("client", "/")).await;
        slowest = slowest.max(start.elapsed());
        assert_eq!(r.status, 200, "{plugin}: the fallback must serve");
        assert_eq!(get(&gw.url("other", "/")).await.upstream(), "other");
    }
    // Served by the native fallback, which still spreads.
    assert!(
        a.requests() > 5 && b.requests() > 5,
        "{} {}",
        a.requests(),
        b.requests()
    );
    let s = status_json(&gw).await;
    let failed = plugin_calls(&s, plugin, "select", outcome);
    let skipped = plugin_calls(&s, plugin, "select", "skipped");
    assert!(failed >= 5, "{plugin}: {s}");
    assert_eq!(failed + skipped, 30, "{plugin}: every request is counted once: {s}");
    let entry = s["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == plugin)
        .unwrap()
        .clone();
    assert!(
        entry["last_error"].as_str().is_some_and(|e| e.contains(outcome)),
        "{entry}"
    );
    assert!(
        slowest < Duration::from_millis(500),
        "{plugin}: a request took {slowest:?}"
    );
    let grown = proc_status_kib("VmRSS").saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "{plugin}: RSS grew by {grown} KiB");
}

#[tokio::test]
async fn a_trapping_balancer_is_contained() {
    faulty_balancer_is_contained("fault-trap", "trap", "200ms").await;
}

#[tokio::test]
async fn a_looping_balancer_is_interrupted_at_call_timeout() {
    faulty_balancer_is_contained("fault-loop", "timeout", "5ms").await;
}

#[tokio::test]
async fn a_memory_hungry_balancer_is_stopped_at_memory_limit() {
    faulty_balancer_is_contained("fault-oom", "oom", "200ms").await;
}

#[tokio::test]
async fn on_error_fail_answers_503() {
    let a = Upstream::start("a").await;
    let toml = format!(
        "[plugins]\ndir = \"{}\"\non_error = \"fail\"\n{}[pool.balancer]\nplugin = \"fault-trap\"\n",
        plugins_dist().display(),
        one_pool(&[&a])
    );
    let gw = TestGateway::start(&toml).await;
    assert_eq!(get(&gw.url("client", "/")).await.status, 503);
    assert_eq!(a.requests(), 0);
}

fn plugin_dir_with(files: &[(&str, Vec<u8>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(format!("{name}.wasm")), bytes).unwrap();
    }
    dir
}

#[tokio::test]
async fn bad_plugin_files_are_refused_with_a_reason() {
    let a = Upstream::start("a").await;
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let dir = plugin_dir_with(&[
        ("garbage", b"this is not wasm".to_vec()),
        ("core-module", core_module),
        ("fault-abi", std::fs::read(plugin_file("fault-abi")).unwrap()),
        (
            "consistent-hash",
            std::fs::read(plugin_file("consistent-hash")).unwrap(),
        ),
    ]);
    let cases = [
        ("garbage", "", "not a WebAssembly file"),
        ("core-module", "", "not a usable WebAssembly component"),
        ("fault-abi", "", "weir:policy/lifecycle@0.1.0"),
        (
            "consistent-hash",
            "config = { key = \"bogus\" }",
            "init rejected its config",
        ),
        ("missing", "", "not found"),
    ];
    for (plugin, config, reason) in cases {
        let toml = format!(
            "[plugins]\ndir = \"{}\"\n{}[pool.balancer]\nplugin = \"{plugin}\"\n{config}\n",
            dir.path().display(),
            one_pool(&[&a])
        );
        let err = TestGateway::try_start(&toml)
            .await
            .err()
            .unwrap_or_else(|| panic!("{plugin} was accepted"));
        assert!(err.contains(reason), "{plugin}: {err}");
        assert!(err.contains(plugin), "{plugin}: {err}");
        // Said where the plugin is named: `.../weir.toml:LINE:COLUMN: key `pool[0].balancer``.
        assert!(
            err.contains("weir.toml:") && err.contains("key `pool[0].balancer`"),
            "{plugin}: {err}"
        );
    }
}

#[tokio::test]
async fn the_readme_example_plugin_builds_and_loads() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/plugins/README.md")).unwrap();
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/plugins/first-healthy/src/lib.rs")).unwrap();
    assert!(
        readme.contains(source.trim()),
        "plugins/README.md must show plugins/first-healthy/src/lib.rs verbatim"
    );
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let toml = one_pool(&[&a, &b]) + "[pool.balancer]\nplugin = \"first-healthy\"\n";
    let gw = TestGateway::start(&toml).await;
    for _ in 0..4 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), "a");
    }
    let s = status_json(&gw).await;
    assert_eq!(plugin_calls(&s, "first-healthy", "select", "ok"), 4);
    // With `a` drained it fails over to `b`, and says so through its `metrics` import, which
    // weir's /metrics shows.
    let drain = http::Request::post(gw.admin_url(&format!("/api/v1/pools/app/endpoints/{}/drain", a.addr)))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(request(drain).await.status, 200);
    for _ in 0..3 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), "b");
    }
    let metrics = get(&gw.admin_url("/metrics")).await.text();
    let labels = "{plugin=\"first-healthy\",name=";
    for line in [
        format!("weir_plugin_counter_total{labels}\"failovers\"}} 3"),
        format!("weir_plugin_observations_count{labels}\"skipped\"}} 3"),
        format!("weir_plugin_observations_sum{labels}\"skipped\"}} 3.0"),
        "weir_plugin_metrics_dropped_total{plugin=\"first-healthy\"} 0".to_string(),
        "weir_plugin_shared_refused_total{plugin=\"first-healthy\"} 0".to_string(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in:\n{metrics}");
    }
}

/// The `respond` decisions (`local-answer` fixture): a router's answer is served as the
/// plugin made it, less the framing and connection fields the front sets itself (HTTP/2 would
/// refuse them); a failover policy's answer replaces the gateway's 502; a non-final status is
/// an invalid answer, served as if the plugin had said nothing.
#[tokio::test]
async fn routers_and_failover_policies_can_answer_themselves() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let live = Upstream::start("live").await;
    let toml = format!(
        r#"
[[listener]]
name = "client"
bind = "127.0.0.1:0"
pool = "app"
router = {{ plugin = "local-answer" }}
[[pool]]
name = "app"
failover = {{ plugin = "local-answer" }}
[[pool.endpoint]]
address = "{dead}"
[[pool]]
name = "live"
[[pool.endpoint]]
address = "{}"
"#,
        live.addr
    );
    let gw = TestGateway::start(&toml).await;
    for (how, r) in [
        ("HTTP/1.1", get(&gw.url("client", "/local/418")).await),
        ("h2c", h2c_get(&gw.url("client", "/local/418")).await),
    ] {
        assert_eq!(r.status, 418, "{how}");
        assert_eq!(r.text(), "answered by the plugin\n", "{how}");
        assert_eq!(r.headers["x-answered-by"], "local-answer", "{how}");
        assert!(r.headers.get("transfer-encoding").is_none(), "{how}: {:?}", r.headers);
        assert_ne!(
            r.headers.get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "{how}"
        );
        if let Some(length) = r.headers.get("content-length") {
            assert_eq!(length, "23", "{how}");
        }
    }
    // Every attempt on the dead endpoint fails: the failover policy's page, not weir's 502.
    let r = get(&gw.url("client", "/")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "down for maintenance\n");
    assert_eq!(r.headers["retry-after"], "30");
    // A 1xx is no final answer: counted invalid, and the request takes the default route
    // (where the failover policy answers again).
    let r = get(&gw.url("client", "/local/102")).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (503, "down for maintenance\n"));
    // A zero per-try timeout is not applied (every attempt would time out): the pool's serves.
    let r = get(&gw.url("client", "/zero-timeout/delay/50")).await;
    assert_eq!((r.status.as_u16(), r.upstream()), (200, "live".to_string()));
    let s = status_json(&gw).await;
    assert_eq!(plugin_calls(&s, "local-answer", "route", "invalid"), 2, "{s}");
    assert!(plugin_calls(&s, "local-answer", "on-failure", "ok") >= 2, "{s}");
}
