//! What clients get when upstreams fail: 502 for a dead endpoint, 504 for a hanging one, 503
//! when nothing is eligible; never a panic, never upstream internals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use weir_test_support::*;

fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[tokio::test]
async fn a_dead_endpoint_gives_502() {
    let toml = format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
        dead_addr()
    );
    let gw = TestGateway::start(&toml).await;
    let r = get(&gw.url("client", "/")).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "upstream connect failed\n");
}

#[tokio::test]
async fn a_hanging_endpoint_gives_504_after_the_request_timeout() {
    let up = Upstream::start("a").await;
    let toml = one_pool(&[&up]) + "[pool.timeouts]\nrequest = \"300ms\"\n";
    let gw = TestGateway::start(&toml).await;
    let start = Instant::now();
    let r = get(&gw.url("client", "/hang")).await;
    let elapsed = start.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "upstream response timed out\n");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

/// The response timer is the upstream connection's, kept across its requests: a deadline
/// moved later must not fire at its old time, and each request counts from its own start.
#[tokio::test]
async fn a_reused_upstream_connection_times_each_request_from_its_own_start() {
    let up = Upstream::start("a").await;
    let toml = one_pool(&[&up]) + "[pool.timeouts]\nrequest = \"600ms\"\n";
    let gw = TestGateway::start(&toml).await;
    // Two 400 ms answers in a row on one connection: the second outlives the first's deadline
    // (200 ms of slack each for a busy CI machine).
    for _ in 0..2 {
        let r = get(&gw.url("client", "/delay/400")).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(up.connections(), 1, "the second request did not reuse the connection");
    let start = Instant::now();
    let r = get(&gw.url("client", "/hang")).await;
    let elapsed = start.elapsed();
    assert_eq!(r.status, 504);
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn connect_failure_moves_on_to_a_live_endpoint() {
    let up = Upstream::start("live").await;
    let toml = format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n[[pool.endpoint]]\naddress = \"{}\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
        dead_addr(),
        up.addr
    );
    let gw = TestGateway::start(&toml).await;
    for _ in 0..6 {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream(), "live");
    }
    // POSTs too: a refused connect means nothing was sent.
    let req = http::Request::post(gw.url("client", "/"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
        .unwrap();
    assert_eq!(request(req).await.status, 200);
}

#[tokio::test]
async fn an_upstream_that_closes_mid_response_does_not_hang_the_client() {
    let mut up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    let url = gw.url("client", "/delay/2000");
    let pending = tokio::spawn(async move { get(&url).await.status });
    assert!(eventually(Duration::from_secs(5), async || up.requests() == 1).await);
    up.stop();
    let status = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("client hung")
        .unwrap();
    assert_eq!(status, 502);
}

#[tokio::test]
async fn drained_endpoints_get_no_new_requests() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&one_pool(&[&a, &b])).await;
    let drain = http::Request::post(gw.admin_url(&format!("/api/v1/pools/app/endpoints/{}/drain", a.addr)))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(request(drain).await.status, 200);
    for _ in 0..6 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), "b");
    }
    assert_eq!(a.requests(), 0);
    let status = get(&gw.admin_url("/api/v1/status")).await.json();
    assert_eq!(status["pools"][0]["endpoints"][0]["drained"], true);
}

#[tokio::test]
async fn nothing_eligible_gives_503_with_retry_after() {
    let a = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&a])).await;
    let drain = http::Request::post(gw.admin_url(&format!("/api/v1/pools/app/endpoints/{}/drain", a.addr)))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(request(drain).await.status, 200);
    let r = get(&gw.url("client", "/")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
}

#[tokio::test]
async fn hostname_endpoints_are_resolved_and_served() {
    let up = Upstream::start("named").await;
    let toml = format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nresolve_interval = \"100ms\"\n[[pool.endpoint]]\naddress = \"localhost:{}\"\n",
        up.addr.port()
    );
    let gw = TestGateway::start(&toml).await;
    for _ in 0..3 {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream(), "named");
        tokio::time::sleep(Duration::from_millis(120)).await;
    }
    // The status shows what the name resolved to, in the order a new connection tries it.
    let status = get(&gw.admin_url("/api/v1/status")).await.json();
    let endpoint = &status["pools"][0]["endpoints"][0];
    assert_eq!(endpoint["address"], format!("localhost:{}", up.addr.port()));
    let resolved = endpoint["resolved"].as_array().unwrap_or_else(|| panic!("{status}"));
    assert!(resolved.contains(&serde_json::json!(up.addr.to_string())), "{status}");
}

/// A replica that crashes with requests in flight fails them all at once: one passive-health
/// outage, logged once, not one per request (it was one per request before).
#[tokio::test]
async fn a_crash_with_many_requests_in_flight_is_one_outage_logged_once() {
    let mut dying = Upstream::start("dying").await;
    let (port, admin) = (free_port(), free_port());
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\n[pool.passive]\nmax_fails = 1\nfail_timeout = \"30s\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
        dying.addr
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_weir"));
    let mut weir = WeirProcess::spawn(bin, &toml, format!("127.0.0.1:{admin}").parse().unwrap());
    weir.wait_ready().await;
    let url = format!("http://127.0.0.1:{port}/hang");
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), async || dying.requests() == 8).await);
    dying.stop();
    for w in waiting {
        assert_eq!(w.await.unwrap().status, 502);
    }
    let line = "endpoint unavailable (passive health)";
    assert!(weir.stderr_eventually_contains(line).await, "{}", weir.stderr_text());
    assert_eq!(weir.stderr_text().matches(line).count(), 1, "{}", weir.stderr_text());
}
