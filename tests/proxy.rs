//! End-to-end proxying through the real gateway on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use weir_test_support::*;

#[tokio::test]
async fn two_listeners_reach_only_their_pool_and_spread_over_endpoints() {
    let (a1, a2, b1, b2) = (
        Upstream::start("a1").await,
        Upstream::start("a2").await,
        Upstream::start("b1").await,
        Upstream::start("b2").await,
    );
    let gw = TestGateway::start(&format!(
        r#"
[[listener]]
name = "client"
bind = "127.0.0.1:0"
pool = "a"
[[listener]]
name = "p2p"
bind = "127.0.0.1:0"
pool = "b"
[[pool]]
name = "a"
[[pool.endpoint]]
address = "{}"
[[pool.endpoint]]
address = "{}"
[[pool]]
name = "b"
[[pool.endpoint]]
address = "{}"
[[pool.endpoint]]
address = "{}"
"#,
        a1.addr, a2.addr, b1.addr, b2.addr
    ))
    .await;
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..10 {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(r.status, 200);
        *seen.entry(r.upstream()).or_default() += 1;
        let r = get(&gw.url("p2p", "/")).await;
        assert_eq!(r.status, 200);
        *seen.entry(r.upstream()).or_default() += 1;
    }
    assert_eq!(seen.get("a1"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("a2"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("b1"), Some(&5), "{seen:?}");
    assert_eq!(seen.get("b2"), Some(&5), "{seen:?}");
}

#[tokio::test]
async fn weights_shape_the_spread() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[[pool]]\nname = \"p\"\n[[pool.endpoint]]\naddress = \"{}\"\nweight = 3\n[[pool.endpoint]]\naddress = \"{}\"\n",
        a.addr, b.addr
    ))
    .await;
    for _ in 0..8 {
        get(&gw.url("client", "/")).await;
    }
    assert_eq!((a.requests(), b.requests()), (6, 2));
}

#[tokio::test]
async fn forwarded_headers_are_right_at_the_upstream() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    let req = Request::get(gw.url("client", "/path?q=1"))
        .header("host", "api.example.com")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x_forwarded_for", "6.6.6.6")
        .header("x_custom", "kept")
        .header("proxy", "http://evil.example:8080")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = request(req).await;
    assert_eq!(r.status, 200);
    let j = r.json();
    let h = &j["headers"];
    // A CGI-style server reads `X_Forwarded_For` as `X-Forwarded-For`: the spoof is dropped.
    assert!(h.get("x_forwarded_for").is_none(), "{h}");
    // Nor `Proxy`, which such a server makes its outbound proxy (httpoxy).
    assert!(h.get("proxy").is_none(), "{h}");
    assert_eq!(h["x_custom"][0], "kept");
    assert_eq!(j["path"], "/path?q=1");
    assert_eq!(h["host"][0], "api.example.com", "Host is preserved");
    assert_eq!(h["x-forwarded-for"][0], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-host"][0], "api.example.com");
    assert_eq!(h["forwarded"][0], "for=127.0.0.1;proto=http;host=\"api.example.com\"");
    assert_eq!(h["via"][0], "1.1 weir");
}

/// The host a request is routed by is the host the upstream hears of: an absolute-form
/// target's authority replaces the Host field (RFC 9112 §3.2.2), and HTTP/2's `:authority` is
/// preferred to one (RFC 9113 §8.3.1). Before, the router saw the target's host and the
/// upstream the Host field's.
#[tokio::test]
async fn the_target_authority_names_the_host_over_a_host_field() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    let raw = b"GET http://user@routed.example:8443/p HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n";
    let r = raw_exchange(gw.addr("client"), raw).await;
    let json = r.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or("");
    let j: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {r}"));
    assert_eq!(j["headers"]["host"], serde_json::json!(["routed.example:8443"]), "{r}");
    assert_eq!(j["headers"]["x-forwarded-host"][0], "routed.example:8443");
    assert_eq!(j["path"], "/p");

    let mut send = h2c_sender::<Full<Bytes>>(gw.addr("client")).await;
    let req = Request::get("http://routed.example/h2")
        .header("host", "other.example")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["headers"]["host"], serde_json::json!(["routed.example"]));
}

/// `Via` names the protocol of the message weir received (RFC 9110 §7.6.3): on a request the
/// client's, on a response the upstream's.
#[tokio::test]
async fn via_names_the_protocol_each_message_came_in() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    let r10 = raw_exchange(gw.addr("client"), b"GET /v HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert!(r10.contains("via: 1.1 weir\r\n"), "the upstream answered in 1.1: {r10}");
    assert!(r10.contains(r#""via":["1.0 weir"]"#), "the client asked in 1.0: {r10}");
    let r2 = h2c_get(&gw.url("client", "/v")).await;
    assert_eq!(r2.json()["headers"]["via"][0], "2 weir");
    assert_eq!(r2.headers["via"], "1.1 weir");
}

/// A listener's `forwarding_headers` name the fields weir writes: here only `X-Forwarded-For`,
/// as nginx and HAProxy add by default. The others are neither added nor replaced (a client's
/// own `X-Forwarded-Proto` passes on as it came), and no `Via` goes either way. The same on
/// HTTP/1.1 and HTTP/2 upstreams, whose heads are built apart.
#[tokio::test]
async fn forwarding_headers_limit_what_weir_adds() {
    for up in [Upstream::start("h1").await, Upstream::start_h2("h2").await] {
        let protocol = if up.name == "h2" { "protocol = \"h2\"\n" } else { "" };
        let toml = one_pool_with(&[&up], "forwarding_headers = [\"x-forwarded-for\"]\n").replace(
            "name = \"app\"\n[[pool.endpoint]]",
            &format!("name = \"app\"\n{protocol}[[pool.endpoint]]"),
        );
        let gw = TestGateway::start(&toml).await;
        let req = Request::get(gw.url("client", "/"))
            .header("host", "api.example.com")
            .header("x-forwarded-proto", "ftp")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = request(req).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(!r.headers.contains_key("via"), "{}: {:?}", up.name, r.headers);
        let j = r.json();
        let version = if up.name == "h2" { "HTTP/2.0" } else { "HTTP/1.1" };
        assert_eq!(j["version"], version);
        let h = &j["headers"];
        assert_eq!(h["x-forwarded-for"][0], "127.0.0.1", "{}: {h}", up.name);
        assert_eq!(h["x-forwarded-proto"][0], "ftp", "{}: {h}", up.name);
        for absent in ["x-forwarded-host", "forwarded", "via"] {
            assert!(h.get(absent).is_none(), "{}: {absent} in {h}", up.name);
        }
    }
    // None at all: the request goes on as the client sent it.
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool_with(&[&up], "forwarding_headers = []\n")).await;
    let r = get(&gw.url("client", "/")).await;
    let j = r.json();
    for absent in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "via",
    ] {
        assert!(j["headers"].get(absent).is_none(), "{absent} in {}", j["headers"]);
    }
}

#[tokio::test]
async fn advertise_feeds_the_forwarded_headers() {
    let up = Upstream::start("a").await;
    let toml = one_pool_with(&[&up], "advertise = \"https://lb.example.com:9080\"\n");
    let gw = TestGateway::start(&toml).await;
    let j = get(&gw.url("client", "/")).await.json();
    let h = &j["headers"];
    assert_eq!(h["x-forwarded-proto"][0], "https");
    assert_eq!(h["x-forwarded-host"][0], "lb.example.com:9080");
    assert_eq!(
        h["forwarded"][0],
        "for=127.0.0.1;proto=https;host=\"lb.example.com:9080\""
    );
    // The status shows both the bound and the advertised address.
    let status = get(&gw.admin_url("/api/v1/status")).await.json();
    let listener = &status["listeners"][0];
    assert_eq!(listener["advertise"], "https://lb.example.com:9080");
    assert_eq!(listener["bind"], "127.0.0.1:0", "the configured bind");
}

/// A `Location` naming the endpoint that answered (a server whose base URL is its own address)
/// names what clients use instead, as nginx's `proxy_redirect default` does: the request's host
/// with the listener's scheme, or the advertised address; any other passes as sent. HTTP/1.1
/// and HTTP/2 upstreams.
#[tokio::test]
async fn a_location_naming_the_endpoint_names_the_gateway() {
    for h2 in [false, true] {
        let up = if h2 {
            Upstream::start_h2("a").await
        } else {
            Upstream::start("a").await
        };
        let pool = if h2 { "protocol = \"h2\"\n" } else { "" };
        let plain = app_pool(&[&up], pool, "");
        let advertised = plain.replacen(
            "pool = \"app\"\n",
            "pool = \"app\"\nadvertise = \"https://lb.example.com:9443\"\n",
            1,
        );
        for (toml, origin) in [(plain, None), (advertised, Some("https://lb.example.com:9443"))] {
            let gw = TestGateway::start(&toml).await;
            let location = async |sent: String| {
                let req = Request::post(gw.url("client", "/status/201"))
                    .header("x-test-location", sent)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let r = request(req).await;
                assert_eq!(r.status, 201);
                r.headers["location"].to_str().unwrap().to_string()
            };
            let origin = origin.map_or_else(|| format!("http://{}", gw.addr("client")), str::to_string);
            let named = format!("http://{}/fhir/Patient/7/_history/1?x=1", up.addr);
            assert_eq!(
                location(named).await,
                format!("{origin}/fhir/Patient/7/_history/1?x=1"),
                "h2 {h2}"
            );
            for other in [
                "/fhir/Patient/7".to_string(),
                "https://elsewhere.example/x".to_string(),
                format!("http://{}:1/x", up.addr.ip()),
            ] {
                assert_eq!(location(other.clone()).await, other, "h2 {h2}");
            }
        }
    }
}

/// A pool that reaches back into its own listener is a forwarding loop: the request comes back
/// with weir's `Via` entries piling up, and after ten it gets a 508 saying so (before, it went
/// round ~95 times, a connection held open each time, until its fields passed `max_headers`:
/// a 431). A chain of a few weirs passes.
#[tokio::test]
async fn a_forwarding_loop_is_a_508() {
    let up = Upstream::start("a").await;
    let port = free_port();
    let toml = format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:{port}\"\npool = \"self\"\n[[listener]]\nname = \"other\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n[[pool.endpoint]]\naddress = \"{}\"\n[[pool]]\nname = \"self\"\n[[pool.endpoint]]\naddress = \"127.0.0.1:{port}\"\n",
        up.addr
    );
    let gw = TestGateway::start(&toml).await;
    let r = get(&gw.url("client", "/loop")).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (
            508,
            "forwarding loop: the request has passed through weir too many times\n"
        )
    );
    let chained = Request::get(gw.url("other", "/"))
        .header("via", "1.1 weir, 1.1 proxy.example")
        .header("via", "1.1 weir")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = request(chained).await;
    assert_eq!(r.status, 200);
    let via = r.json()["headers"]["via"].to_string();
    assert_eq!(via.matches("weir").count(), 3, "{via}");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    let req = Request::get(gw.url("client", "/"))
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = request(req).await;
    let j = r.json();
    let h = j["headers"].as_object().unwrap();
    for gone in ["connection", "x-private", "keep-alive", "proxy-connection", "te"] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream: {h:?}");
    }
    assert_eq!(h["x-end-to-end"][0], "kept");
    // The upstream sets `keep-alive`; the client must not see it.
    assert!(r.headers.get("keep-alive").is_none());
    assert_eq!(r.headers["via"], "1.1 weir");
}

#[tokio::test]
async fn post_bodies_and_methods_pass_through() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    let req = Request::post(gw.url("client", "/submit"))
        .body(Full::new(Bytes::from_static(b"hello world")))
        .unwrap();
    let j = request(req).await.json();
    assert_eq!(j["method"], "POST");
    assert_eq!(j["body_len"], 11);
    let r = get(&gw.url("client", "/status/404")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.upstream(), "a");
}

#[tokio::test]
async fn keep_alive_connections_are_reused_upstream() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    for _ in 0..20 {
        assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    }
    assert_eq!(up.requests(), 20);
    assert_eq!(
        up.connections(),
        1,
        "sequential requests share one pooled upstream connection"
    );
}

/// The access log (one process-wide file writer: one test owns it in this binary): a JSON line
/// per request, requests the front refuses included (also counted in
/// `weir_requests_refused_total`), and a file rotated away is replaced by a new one at the path.
#[tokio::test]
async fn the_access_log_has_one_json_line_per_request() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let toml = format!("[runtime]\naccess_log = \"{}\"\n{}", log.display(), one_pool(&[&up]))
        .replace("name = \"client\"", "name = \"logged\"");
    let gw = TestGateway::start(&toml).await;
    for path in ["/one", "/status/404", "/three"] {
        get(&gw.url("logged", path)).await;
    }
    let refused = raw_exchange(
        gw.addr("logged"),
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400 "), "{refused}");
    let lines_of = |file: &std::path::Path| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let lines = || lines_of(&log);
    assert!(
        eventually(std::time::Duration::from_secs(5), async || lines().len() == 4).await,
        "{:?}",
        lines()
    );
    let entries: Vec<serde_json::Value> = lines().iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(entries[1]["path"], "/status/404");
    assert_eq!(entries[1]["status"], 404);
    for e in &entries {
        assert_eq!(e["listener"], "logged");
        assert!(e["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
        assert_eq!(e["generation"], 1);
        assert!(e["duration_ms"].as_f64().unwrap() >= 0.0);
    }
    for e in &entries[..3] {
        assert_eq!(e["pool"], "app");
        assert_eq!(e["endpoint"], up.addr.to_string());
        assert_eq!(e["attempts"], 1);
    }
    let e = &entries[3];
    assert_eq!(
        (e["status"].as_u64(), e["pool"].as_str(), e["attempts"].as_u64()),
        (Some(400), Some("-"), Some(0)),
        "{e}"
    );
    let metrics = get(&gw.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("weir_requests_refused_total{listener=\"logged\",code=\"400\"} 1\n"),
        "{metrics}"
    );

    // Rotated away (logrotate's rename): within a second or so, lines go to a new file at the path.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let moved_on = eventually(std::time::Duration::from_secs(10), async || {
        get(&gw.url("logged", "/after")).await;
        lines().iter().any(|l| l.contains("\"/after\""))
    })
    .await;
    assert!(
        moved_on,
        "no line in a new {}; the rotated file has {:?}",
        log.display(),
        lines_of(&rotated)
    );
    let kept: Vec<serde_json::Value> = lines_of(&rotated)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(kept[..4], entries[..], "the rotated file keeps what was written before");
}

/// Eight GETs of `url` at once, each answered 200.
async fn eight_at_once(url: &str) {
    let gets = (0..8).map(|_| get(url));
    for r in futures_util::future::join_all(gets).await {
        assert_eq!(r.status, 200);
    }
}

/// The idle upstream connections of the first pool's first endpoint, from the status API.
async fn idle_connections(gw: &TestGateway) -> u64 {
    let s = get(&gw.admin_url("/api/v1/status")).await.json();
    s["pools"][0]["endpoints"][0]["idle_connections"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Traffic that keeps more requests in flight than `max_idle_per_endpoint` for longer than a
/// sweep (an HTTP/2 client multiplexing streams, say) keeps its upstream connections while it
/// lasts: none is closed and opened again. Once it stops, the pool goes back to the cap.
#[tokio::test]
async fn sustained_traffic_over_the_idle_cap_keeps_its_connections_across_sweeps() {
    let up = Upstream::start("a").await;
    let toml = pool_config(up.addr, "[pool.timeouts]\nmax_idle_per_endpoint = 1\n");
    let gw = TestGateway::start(&toml).await;
    let url = gw.url("client", "/delay/100");
    // Waves of 8 at once for 2.5 s: the once-a-second sweep runs twice or more meanwhile, and
    // between two waves all 8 connections are idle at once (8 times the cap).
    let started = std::time::Instant::now();
    let mut waves = 0;
    while started.elapsed() < std::time::Duration::from_millis(2500) {
        eight_at_once(&url).await;
        waves += 1;
    }
    assert_eq!(
        up.connections(),
        8,
        "{waves} waves of 8 requests closed and reopened upstream connections"
    );
    assert!(
        eventually(std::time::Duration::from_secs(10), async || idle_connections(&gw).await
            == 1)
        .await,
        "the pool was not trimmed back to max_idle_per_endpoint once the traffic stopped"
    );
}

/// More requests in flight than `max_idle_per_endpoint` must not close and reopen upstream
/// connections on every burst: the pool keeps a burst's connections while the recent peak of
/// requests in flight needed them, and then trims back to the cap.
#[tokio::test]
async fn a_burst_over_the_idle_cap_reuses_its_connections_then_the_pool_trims_to_the_cap() {
    let up = Upstream::start("a").await;
    let toml = pool_config(up.addr, "[pool.timeouts]\nmax_idle_per_endpoint = 2\n");
    let gw = TestGateway::start(&toml).await;
    let url = gw.url("client", "/delay/200");
    eight_at_once(&url).await;
    assert_eq!(up.connections(), 8);
    eight_at_once(&url).await;
    assert_eq!(
        up.connections(),
        8,
        "the second burst did not reuse the first one's connections"
    );
    assert!(
        eventually(std::time::Duration::from_secs(5), async || idle_connections(&gw).await
            == 2)
        .await,
        "the pool was not trimmed back to max_idle_per_endpoint"
    );
}
