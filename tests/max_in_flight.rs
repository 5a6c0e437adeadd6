//! `max_in_flight`: at most so many requests in flight to an endpoint; a request that finds
//! every endpoint at its limit waits for a slot (`timeouts.queue`), then gets a 503.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use weir_test_support::*;

fn capped(ups: &[&Upstream], max: u32, queue: &str) -> String {
    app_pool(
        ups,
        &format!("[pool.timeouts]\nqueue = \"{queue}\"\n"),
        &format!("max_in_flight = {max}\n"),
    )
}

async fn status(gw: &TestGateway) -> serde_json::Value {
    get(&gw.admin_url("/api/v1/status")).await.json()
}

/// Waits (5 s at most) until the pool's `queued` count satisfies `ok`; fails with the status.
async fn until_queued(gw: &TestGateway, ok: impl Fn(u64) -> bool) {
    let reached = eventually(Duration::from_secs(5), async || {
        status(gw).await["pools"][0]["queued"].as_u64().is_some_and(&ok)
    })
    .await;
    assert!(reached, "{}", status(gw).await);
}

/// Eight requests at once to two endpoints that take one each: no upstream ever has more than
/// one, the others wait in the queue (visible in the status and the metrics), and all eight
/// are answered.
#[tokio::test]
async fn requests_beyond_the_limit_wait_for_a_slot() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let gw = TestGateway::start(&capped(&[&a, &b], 1, "10s")).await;
    let url = gw.url("client", "/delay/150");
    let started = Instant::now();
    let all: Vec<_> = (0..8).map(|_| tokio::spawn(get_owned(url.clone()))).collect();
    until_queued(&gw, |n| n >= 5).await;
    let metrics = get(&gw.admin_url("/metrics")).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_requests_queued{pool=\"app\"} ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    for r in all {
        assert_eq!(r.await.unwrap(), 200);
    }
    // Four rounds of two (one per endpoint), 150 ms each.
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((a.peak_concurrent(), b.peak_concurrent()), (1, 1));
    assert_eq!(a.requests() + b.requests(), 8);
    let s = status(&gw).await;
    assert_eq!(s["pools"][0]["queued"], 0);
    assert_eq!(s["pools"][0]["endpoints"][0]["max_in_flight"], 1);
}

/// A request that waits longer than `timeouts.queue` is answered 503 with `Retry-After`, and
/// never reaches the full endpoint.
#[tokio::test]
async fn a_request_that_waits_too_long_gets_a_503() {
    let a = Upstream::start("a").await;
    let gw = TestGateway::start(&capped(&[&a], 1, "200ms")).await;
    let slow = tokio::spawn(get_owned(gw.url("client", "/delay/1500")));
    assert!(eventually(Duration::from_secs(5), async || a.requests() == 1).await);
    let started = Instant::now();
    let r = get(&gw.url("client", "/")).await;
    let waited = started.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.headers.contains_key("retry-after"));
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_millis(1200),
        "{waited:?}"
    );
    let metrics = get(&gw.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("weir_queue_timeouts_total{pool=\"app\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(a.requests(), 1);
    // With the slot free again, a request goes through at once.
    assert_eq!(get(&gw.url("client", "/")).await.status, 200);
}

/// A limit raised by a reload lets the waiting requests through; endpoints without a limit
/// are not held back.
#[tokio::test]
async fn a_reload_that_raises_the_limit_lets_waiting_requests_go() {
    let a = Upstream::start("a").await;
    let gw = TestGateway::start(&capped(&[&a], 1, "30s")).await;
    let first = tokio::spawn(get_owned(gw.url("client", "/delay/3000")));
    assert!(eventually(Duration::from_secs(5), async || a.requests() == 1).await);
    let waiting: Vec<_> = (0..2).map(|_| tokio::spawn(get_owned(gw.url("client", "/")))).collect();
    until_queued(&gw, |n| n == 2).await;
    gw.write_config(&capped(&[&a], 0, "30s"));
    gw.reload().await.unwrap();
    let started = Instant::now();
    for w in waiting {
        assert_eq!(w.await.unwrap(), 200);
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(a.peak_concurrent(), 2);
}

async fn get_owned(url: String) -> u16 {
    get(&url).await.status.as_u16()
}

/// Waiting requests are let through oldest first.
#[tokio::test]
async fn waiting_requests_go_in_arrival_order() {
    use bytes::Bytes;
    use http_body_util::Full;
    let a = Upstream::start("a").await;
    let gw = TestGateway::start(&capped(&[&a], 1, "10s")).await;
    let with_id = |path: &str, id: &str| {
        http::Request::get(gw.url("client", path))
            .header("x-test-id", id)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut all = vec![tokio::spawn(request(with_id("/delay/300", "first")))];
    assert!(eventually(Duration::from_secs(5), async || a.requests() == 1).await);
    for (n, id) in ["second", "third", "fourth"].into_iter().enumerate() {
        all.push(tokio::spawn(request(with_id("/", id))));
        until_queued(&gw, |q| q == n as u64 + 1).await;
    }
    for r in all {
        assert_eq!(r.await.unwrap().status, 200);
    }
    assert_eq!(a.ids(), ["first", "second", "third", "fourth"]);
}

/// With `pool-failover`, a request that waited `timeouts.queue` in vain goes to the fallback
/// pool instead of getting a 503: overflow to another site.
#[tokio::test]
async fn a_full_pool_overflows_to_its_fallback_pool() {
    let main = Upstream::start("main").await;
    let dr = Upstream::start("dr").await;
    let toml = format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"main\"\n[[pool]]\nname = \"main\"\nfailover = {{ plugin = \"pool-failover\", config = {{ fallback_pool = \"dr\" }} }}\n[pool.timeouts]\nqueue = \"100ms\"\n[[pool.endpoint]]\naddress = \"{}\"\nmax_in_flight = 1\n[[pool]]\nname = \"dr\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
        main.addr, dr.addr
    );
    let gw = TestGateway::start(&toml).await;
    let slow = tokio::spawn(get_owned(gw.url("client", "/delay/1000")));
    assert!(eventually(Duration::from_secs(5), async || main.requests() == 1).await);
    for _ in 0..3 {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!((r.status.as_u16(), r.upstream()), (200, "dr".to_string()));
    }
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(get(&gw.url("client", "/")).await.upstream(), "main");
}
