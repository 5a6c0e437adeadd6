//! Health and failover on real sockets: active checks on their own port, startup semantics,
//! passive health, failover under a killed upstream, backups, retry budget, drain, readiness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use weir_test_support::*;

/// A traffic upstream on `ip` and its health server on `ip:health_port`.
async fn replica(ip: &str, health_port: u16, name: &str) -> (Upstream, Upstream) {
    let traffic = Upstream::start_on(format!("{ip}:0").parse().unwrap(), name).await;
    let health = Upstream::start_on(
        format!("{ip}:{health_port}").parse().unwrap(),
        &format!("{name}-health"),
    )
    .await;
    (traffic, health)
}

/// A port free on 127.0.0.1, .2 and .3 (health servers of different replicas share it).
fn shared_free_port() -> u16 {
    loop {
        let p = free_port();
        if ["127.0.0.2", "127.0.0.3"]
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, p)).is_ok())
        {
            return p;
        }
    }
}

async fn endpoint_status(gw: &TestGateway, addr: SocketAddr) -> serde_json::Value {
    let s = get(&gw.admin_url("/api/v1/status")).await.json();
    s["pools"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == addr.to_string())
        .cloned()
        .unwrap()
}

fn health_pool(health_port: u16, endpoints: &[&Upstream]) -> String {
    app_pool(
        endpoints,
        &format!(
            "[pool.health]\nport = {health_port}\npath = \"/upcheck\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\nexpect_body = \"I'm up!\"\n"
        ),
        "",
    )
}

#[tokio::test]
async fn active_checks_probe_their_own_port_and_path() {
    let hp = shared_free_port();
    let (a, ha) = replica("127.0.0.1", hp, "a").await;
    let (b, hb) = replica("127.0.0.2", hp, "b").await;
    let gw = TestGateway::start(&health_pool(hp, &[&a, &b])).await;
    assert!(
        eventually(
            Duration::from_secs(3),
            async || endpoint_status(&gw, b.addr).await["healthy"] == true
        )
        .await
    );
    assert!(
        eventually(
            Duration::from_secs(3),
            async || endpoint_status(&gw, a.addr).await["healthy"] == true
        )
        .await
    );
    for _ in 0..4 {
        get(&gw.url("client", "/")).await;
    }
    assert!(a.requests() > 0 && b.requests() > 0);

    // B's health port says 503: B leaves rotation within interval x unhealthy_threshold (+1 interval).
    hb.set_upcheck(503);
    let start = Instant::now();
    assert!(
        eventually(
            Duration::from_secs(3),
            async || endpoint_status(&gw, b.addr).await["healthy"] == false
        )
        .await
    );
    assert!(
        start.elapsed() < Duration::from_millis(200 * 2 + 200 + 150),
        "took {:?}",
        start.elapsed()
    );
    let before = b.requests();
    for _ in 0..10 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), "a");
    }
    assert_eq!(
        b.requests(),
        before,
        "an unhealthy endpoint got traffic (its traffic port was fine)"
    );

    // Back after healthy_threshold passes.
    hb.set_upcheck(200);
    assert!(
        eventually(
            Duration::from_secs(3),
            async || endpoint_status(&gw, b.addr).await["healthy"] == true
        )
        .await
    );
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(get(&gw.url("client", "/")).await.upstream());
    }
    assert_eq!(seen.len(), 2);

    // A check that hangs fails at `timeout`.
    ha.set_upcheck(0);
    assert!(
        eventually(
            Duration::from_secs(3),
            async || endpoint_status(&gw, a.addr).await["healthy"] == false
        )
        .await
    );
    assert!(hb.checks() > 4 && ha.checks() > 4);
}

#[tokio::test]
async fn an_endpoint_added_with_checks_gets_no_request_before_its_first_pass() {
    let hp = shared_free_port();
    let (a, _ha) = replica("127.0.0.1", hp, "a").await;
    let (c, hc) = replica("127.0.0.3", hp, "c").await;
    hc.set_upcheck(503);
    let gw = TestGateway::start(&health_pool(hp, &[&a])).await;
    assert!(
        eventually(Duration::from_secs(3), async || get(&gw.url("client", "/"))
            .await
            .status
            == 200)
        .await
    );
    let admin = format!(
        "[admin]\nbind = \"{}\"\n[plugins]\ndir = \"{}\"\n",
        gw.admin,
        plugins_dist().display()
    );
    gw.write_config(&(admin + &health_pool(hp, &[&a, &c])));
    gw.reload().await.unwrap();
    for _ in 0..10 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), "a");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(c.requests(), 0, "a new endpoint got traffic before passing a check");
    hc.set_upcheck(200);
    assert!(
        eventually(Duration::from_secs(3), async || get(&gw.url("client", "/"))
            .await
            .upstream()
            == "c")
        .await
    );
}

#[tokio::test]
async fn the_status_says_why_an_endpoint_fails_its_checks() {
    let hp = shared_free_port();
    let (a, ha) = replica("127.0.0.1", hp, "a").await;
    ha.set_upcheck(503);
    let gw = TestGateway::start(&health_pool(hp, &[&a])).await;
    // Never passed: out of rotation from the start, and the status says what the check got.
    assert!(
        eventually(Duration::from_secs(3), async || {
            endpoint_status(&gw, a.addr).await["checks"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("/upcheck answered 503"))
        })
        .await,
        "{}",
        endpoint_status(&gw, a.addr).await
    );
    assert_eq!(endpoint_status(&gw, a.addr).await["healthy"], false);
    // A pass clears it.
    ha.set_upcheck(200);
    assert!(
        eventually(
            Duration::from_secs(3),
            async || endpoint_status(&gw, a.addr).await["healthy"] == true
        )
        .await
    );
    assert_eq!(
        endpoint_status(&gw, a.addr).await["checks"]["last_error"],
        serde_json::Value::Null
    );
}

#[tokio::test]
async fn a_long_interval_does_not_delay_the_first_check() {
    // With an hourly check, spreading the first one over a tenth of the interval (as later
    // ones are) kept a new endpoint out of rotation for up to six minutes.
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&pool_config(
        up.addr,
        "[pool.health]\npath = \"/upcheck\"\ninterval = \"1h\"\n",
    ))
    .await;
    assert!(
        eventually(Duration::from_secs(3), async || get(&gw.url("client", "/"))
            .await
            .status
            == 200)
        .await,
        "the endpoint never passed its first check"
    );
    assert_eq!(up.checks(), 1);
}

async fn hammer(url: String, clients: usize, duration: Duration, post: bool) -> (u64, u64, Vec<u16>) {
    let ok = Arc::new(AtomicU64::new(0));
    let ids = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let statuses = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, ok, ids, stop, statuses) = (url.clone(), ok.clone(), ids.clone(), stop.clone(), statuses.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = ids.fetch_add(1, Ordering::Relaxed).to_string();
                let req = if post { Request::post(&url) } else { Request::get(&url) }
                    .header("x-test-id", &id)
                    .body(Full::new(if post { Bytes::from_static(b"x") } else { Bytes::new() }))
                    .unwrap();
                let s = request(req).await.status.as_u16();
                if s == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    statuses.lock().unwrap().push(s);
                }
            }
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = statuses.lock().unwrap().clone();
    (ok.load(Ordering::Relaxed), ids.load(Ordering::Relaxed), failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_two_upstreams_costs_gets_nothing_and_never_replays_posts() {
    for post in [false, true] {
        let (mut a, b) = (Upstream::start("a").await, Upstream::start("b").await);
        let gw = TestGateway::start(&one_pool(&[&a, &b])).await;
        let url = gw.url("client", "/delay/20");
        let load = tokio::spawn(hammer(url, 20, Duration::from_secs(5), post));
        tokio::time::sleep(Duration::from_secs(1)).await;
        a.stop();
        let (ok, sent, failed) = load.await.unwrap();
        assert!(ok > 100, "{ok}");
        if post {
            assert!(failed.iter().all(|&s| s == 502), "{failed:?}");
            let mut ids = a.ids();
            ids.extend(b.ids());
            let unique: std::collections::HashSet<&String> = ids.iter().collect();
            assert_eq!(unique.len(), ids.len(), "a POST reached the upstreams twice");
            assert!(ids.len() as u64 <= sent);
        } else {
            assert!(failed.is_empty(), "GET clients saw errors: {failed:?}");
        }
    }
}

#[tokio::test]
async fn max_fails_takes_an_endpoint_out_for_fail_timeout_then_one_probe() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_resetting(true);
    let toml = one_pool(&[&bad, &good]) + "[pool.passive]\nmax_fails = 2\nfail_timeout = \"2s\"\n";
    let gw = TestGateway::start(&toml).await;
    while bad.requests() < 2 {
        assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    }
    let out_at = Instant::now();
    assert_eq!(bad.requests(), 2);
    while out_at.elapsed() < Duration::from_millis(1800) {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), "good");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(bad.requests(), 2, "the endpoint got traffic during fail_timeout");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..20 {
        assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    }
    assert_eq!(bad.requests(), 3, "after fail_timeout exactly one probe attempt");
}

/// A pool's only endpoint is never taken out by passive health, as nginx ignores `max_fails`
/// for a lone server: a replica restarting behind weir serves the first request once it is
/// back, not a 503 for `fail_timeout`. A backup makes two: then the same failure takes the
/// primary out. A reload that leaves the taken-out endpoint alone in its pool brings it back.
#[tokio::test]
async fn passive_health_never_takes_out_a_pools_only_endpoint() {
    let (lone, backup) = (Upstream::start("lone").await, Upstream::start("backup").await);
    let passive = "[pool.passive]\nmax_fails = 1\nfail_timeout = \"60s\"\n";
    let gw = TestGateway::start(&(one_pool(&[&lone]) + passive)).await;
    lone.set_resetting(true);
    for i in 1..=3 {
        assert_eq!(get(&gw.url("client", "/")).await.status, 502);
        assert!(lone.requests() >= i, "request {i} was not tried on the endpoint");
    }
    assert_eq!(endpoint_status(&gw, lone.addr).await["passively_down"], false);
    lone.set_resetting(false);
    let r = get(&gw.url("client", "/")).await;
    assert_eq!((r.status.as_u16(), r.upstream()), (200, "lone".to_string()));

    let with_backup = one_pool(&[&lone, &backup]).replace(
        &format!("address = \"{}\"\n", backup.addr),
        &format!("address = \"{}\"\nbackup = true\n", backup.addr),
    ) + passive;
    gw.write_config(&with_backup);
    gw.reload().await.unwrap();
    lone.set_resetting(true);
    // The GET is retried on the backup; the primary is out after its one failure.
    assert_eq!(get(&gw.url("client", "/")).await.upstream(), "backup");
    assert_eq!(endpoint_status(&gw, lone.addr).await["passively_down"], true);
    lone.set_resetting(false);
    let tried = lone.requests();
    for _ in 0..3 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), "backup");
    }
    assert_eq!(lone.requests(), tried, "the primary got traffic while out");

    // A reload refused (here by a failover plugin's `init`) changes nothing.
    let refused = one_pool(&[&lone])
        + passive
        + "[pool.failover]\nplugin = \"pool-failover\"\nconfig = { fallback_pool = \"nowhere\" }\n";
    gw.write_config(&refused);
    let errors = gw.reload().await.expect_err("the reload was not refused");
    assert!(errors.join("\n").contains("nowhere"), "{errors:?}");
    assert_eq!(endpoint_status(&gw, lone.addr).await["passively_down"], true);

    gw.write_config(&(one_pool(&[&lone]) + passive));
    gw.reload().await.unwrap();
    assert_eq!(endpoint_status(&gw, lone.addr).await["passively_down"], false);
    assert_eq!(get(&gw.url("client", "/")).await.upstream(), "lone");
}

#[tokio::test]
async fn backups_serve_when_primaries_are_down_and_503_when_everything_is() {
    let hp = shared_free_port();
    let (p1, hp1) = replica("127.0.0.1", hp, "p1").await;
    let (p2, hp2) = replica("127.0.0.2", hp, "p2").await;
    let (bk, hbk) = replica("127.0.0.3", hp, "backup").await;
    let toml = health_pool(hp, &[&p1, &p2, &bk]).replace(
        &format!("address = \"{}\"\n", bk.addr),
        &format!("address = \"{}\"\nbackup = true\n", bk.addr),
    );
    let gw = TestGateway::start(&toml).await;
    // Every endpoint starts out of rotation until a check passes, and the checks are jittered:
    // the primaries too must have passed theirs, or the backup serves meanwhile, as it should.
    for addr in [p1.addr, p2.addr, bk.addr] {
        assert!(
            eventually(
                Duration::from_secs(3),
                async || endpoint_status(&gw, addr).await["healthy"] == true
            )
            .await
        );
    }
    for _ in 0..6 {
        assert_ne!(get(&gw.url("client", "/")).await.upstream(), "backup");
    }
    hp1.set_upcheck(503);
    hp2.set_upcheck(503);
    assert!(
        eventually(Duration::from_secs(3), async || get(&gw.url("client", "/"))
            .await
            .upstream()
            == "backup")
        .await
    );
    hbk.set_upcheck(503);
    assert!(
        eventually(
            Duration::from_secs(3),
            async || endpoint_status(&gw, bk.addr).await["healthy"] == false
        )
        .await
    );
    let start = Instant::now();
    let r = get(&gw.url("client", "/")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "503 must come within the connect timeout"
    );
}

#[tokio::test]
async fn a_retry_storm_is_capped_by_the_budget() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    a.set_resetting(true);
    b.set_resetting(true);
    let toml = one_pool(&[&a, &b]) + "[pool.retry]\nmax_attempts = 3\nbudget = 0.2\n[pool.passive]\nmax_fails = 0\n";
    let gw = TestGateway::start(&toml).await;
    for _ in 0..100 {
        assert_eq!(get(&gw.url("client", "/")).await.status, 502);
    }
    let attempts = a.requests() + b.requests();
    // Without a budget every request would meet both endpoints: 200 attempts.
    assert!(attempts <= 100 + 20 + 10, "{attempts} attempts");
    assert!(attempts > 100, "{attempts}");
}

#[tokio::test]
async fn draining_lets_the_request_in_flight_finish_and_takes_no_new_ones() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&one_pool(&[&a, &b])).await;
    let url = gw.url("client", "/delay/2000");
    let slow = tokio::spawn(async move { get(&url).await });
    assert!(eventually(Duration::from_secs(2), async || a.requests() + b.requests() == 1).await);
    let (busy, other) = if a.requests() == 1 { (&a, &b) } else { (&b, &a) };
    let drain = Request::post(gw.admin_url(&format!("/api/v1/pools/app/endpoints/{}/drain", busy.addr)))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(request(drain).await.status, 200);
    for _ in 0..10 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), other.name);
    }
    assert_eq!(busy.requests(), 1);
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream(), busy.name);
}

/// Draining an endpoint closes its idle connections at once and the one a request in flight
/// holds once that request is answered, HTTP/1.1 and HTTP/2 upstreams alike (a replica being
/// stopped sees weir let go of it); enabled again, it is connected to again.
#[tokio::test]
async fn draining_closes_the_endpoints_connections_as_their_requests_end() {
    for h2 in [false, true] {
        let start = async |name| {
            if h2 {
                Upstream::start_h2(name).await
            } else {
                Upstream::start(name).await
            }
        };
        let (a, b) = (start("a").await, start("b").await);
        let gw = TestGateway::start(&app_pool(&[&a, &b], if h2 { "protocol = \"h2\"\n" } else { "" }, "")).await;
        for _ in 0..4 {
            assert_eq!(get(&gw.url("client", "/")).await.status, 200);
        }
        assert!(a.open_connections() >= 1 && b.open_connections() >= 1);
        let (a_before, b_before) = (a.requests(), b.requests());
        let url = gw.url("client", "/delay/600");
        let slow = tokio::spawn(async move { get(&url).await });
        assert!(
            eventually(Duration::from_secs(2), async || a.requests() + b.requests()
                > a_before + b_before)
            .await
        );
        let (busy, other) = if a.requests() > a_before { (&a, &b) } else { (&b, &a) };
        let admin = |action: &str| {
            Request::post(gw.admin_url(&format!("/api/v1/pools/app/endpoints/{}/{action}", busy.addr)))
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        assert_eq!(request(admin("drain")).await.status, 200);
        assert!(
            busy.open_connections() >= 1,
            "the request in flight keeps its connection"
        );
        let r = slow.await.unwrap();
        assert_eq!((r.status.as_u16(), r.upstream()), (200, busy.name.clone()));
        assert!(
            eventually(Duration::from_secs(3), async || busy.open_connections() == 0).await,
            "h2 {h2}: {} connections still open to the drained endpoint",
            busy.open_connections()
        );
        assert!(
            other.open_connections() >= 1,
            "the other endpoint keeps its connections"
        );
        assert_eq!(request(admin("enable")).await.status, 200);
        for _ in 0..4 {
            assert_eq!(get(&gw.url("client", "/")).await.status, 200);
        }
        assert!(busy.open_connections() >= 1, "h2 {h2}: enabled again, connected again");
    }
}

/// A gateway in front of `a` whose admin token is in a file (its path, and the folder that
/// holds it) with `contents`.
async fn with_admin_token(a: &Upstream, contents: &str) -> (TestGateway, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, contents).unwrap();
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n{}",
        token.display(),
        one_pool(&[a])
    );
    (TestGateway::start(&toml).await, token, dir)
}

#[tokio::test]
async fn readiness_can_be_flipped_and_mutations_need_the_token() {
    let a = Upstream::start("a").await;
    let (gw, _token, _dir) = with_admin_token(&a, "s3cret\n").await;
    let put = |auth: Option<&str>, ready: bool| {
        let mut b = Request::put(gw.admin_url("/api/v1/readiness"));
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Full::new(Bytes::from(format!("{{\"ready\": {ready}}}"))))
            .unwrap()
    };
    assert_eq!(request(put(None, false)).await.status, 401);
    assert_eq!(request(put(Some("Bearer wrong"), false)).await.status, 401);
    assert_eq!(get(&gw.admin_url("/readyz")).await.status, 200);
    assert_eq!(request(put(Some("Bearer s3cret"), false)).await.status, 200);
    assert_eq!(get(&gw.admin_url("/readyz")).await.status, 503);
    assert_eq!(get(&gw.admin_url("/livez")).await.status, 200);
    assert_eq!(get(&gw.url("client", "/")).await.status, 200, "traffic is still served");
    // Reads need no token; the flag survives a reload.
    assert_eq!(get(&gw.admin_url("/api/v1/status")).await.status, 200);
    gw.reload().await.unwrap();
    assert_eq!(get(&gw.admin_url("/readyz")).await.status, 503);
    assert_eq!(request(put(Some("Bearer s3cret"), true)).await.status, 200);
    assert_eq!(get(&gw.admin_url("/readyz")).await.status, 200);
}

/// A rotated token (the file rewritten, as a mounted secret is) applies on the next reload,
/// which the file's change itself starts; a token file that cannot be used fails the reload
/// and the last good token stays.
#[tokio::test]
async fn a_rotated_admin_token_applies_on_reload_and_a_bad_one_is_refused() {
    let a = Upstream::start("a").await;
    let (gw, token, _dir) = with_admin_token(&a, "s3cret\n").await;
    let enable = |bearer: &str| {
        let path = format!("/api/v1/pools/app/endpoints/{}/enable", a.addr);
        Request::post(gw.admin_url(&path))
            .header("authorization", format!("Bearer {bearer}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    assert_eq!(request(enable("s3cret")).await.status, 200);
    std::fs::write(&token, "n3w\n").unwrap();
    gw.reload().await.unwrap();
    assert_eq!(request(enable("s3cret")).await.status, 401, "the old token is refused");
    assert_eq!(request(enable("n3w")).await.status, 200);
    std::fs::write(&token, "  \n").unwrap();
    let errors = gw.reload().await.unwrap_err();
    assert!(errors.iter().any(|e| e.contains("is empty")), "{errors:?}");
    assert_eq!(request(enable("n3w")).await.status, 200, "the last good token stays");
    assert_eq!(request(enable("")).await.status, 401);
}

/// A known admin path with the wrong method is a 405 naming the right one (`Allow`), an unknown
/// path a 404; HEAD answers where GET does (load balancers probe with it), without a body.
#[tokio::test]
async fn the_admin_api_answers_a_wrong_method_with_405_and_allow() {
    let a = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&a])).await;
    let call = async |method: &str, path: &str| {
        let req = Request::builder()
            .method(method)
            .uri(gw.admin_url(path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        request(req).await
    };
    for (method, path, allow) in [
        ("GET", "/api/v1/reload", "POST"),
        ("DELETE", "/api/v1/readiness", "PUT"),
        ("GET", "/api/v1/pools/app/endpoints/127.0.0.1:1/drain", "POST"),
        ("POST", "/api/v1/pools/app/endpoints/127.0.0.1:1/weight", "PUT"),
        ("POST", "/metrics", "GET, HEAD"),
        ("PUT", "/readyz", "GET, HEAD"),
    ] {
        let r = call(method, path).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.headers["allow"], allow, "{method} {path}");
    }
    assert_eq!(call("GET", "/api/v1/nothing").await.status, 404);
    assert_eq!(call("POST", "/nothing").await.status, 404);
    for path in ["/livez", "/readyz", "/startupz", "/metrics", "/api/v1/status"] {
        let r = call("HEAD", path).await;
        assert_eq!(r.status, 200, "HEAD {path}");
        assert!(r.body.is_empty(), "HEAD {path}");
    }
}

#[tokio::test]
async fn weight_and_drain_survive_a_reload() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&one_pool(&[&a, &b])).await;
    let put = Request::put(gw.admin_url(&format!("/api/v1/pools/app/endpoints/{}/weight", a.addr)))
        .body(Full::new(Bytes::from("{\"weight\": 3}")))
        .unwrap();
    let r = request(put).await;
    assert_eq!(r.status, 200, "{}", r.text());
    gw.reload().await.unwrap();
    for _ in 0..8 {
        get(&gw.url("client", "/")).await;
    }
    assert_eq!((a.requests(), b.requests()), (6, 2));
    assert_eq!(endpoint_status(&gw, a.addr).await["weight"], 3);
}

#[tokio::test]
async fn small_idempotent_bodies_are_buffered_and_replayed() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_resetting(true);
    let gw = TestGateway::start(&(one_pool(&[&bad, &good]) + "[pool.passive]\nmax_fails = 0\n")).await;
    for _ in 0..4 {
        let req = Request::put(gw.url("client", "/doc"))
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let r = request(req).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream(), "good");
        assert_eq!(r.json()["body_len"], 7, "the replay carried the body");
    }
    assert!(
        bad.requests() >= 2,
        "the resetting endpoint was tried: {}",
        bad.requests()
    );
}

/// The streams of one HTTP/2 connection hold at most 1 MiB of request bodies for retries
/// together: while sixteen unfinished 64 KiB bodies are held, a seventeenth small one streams
/// to its upstream and a resetting endpoint's failure reaches its client, while a request on
/// another connection is still buffered and replayed; once the sixteen are gone, the first
/// connection's requests are buffered again.
#[tokio::test]
async fn an_http2_connection_holds_at_most_a_mebibyte_of_bodies_for_retries() {
    let (bad, good) = (Upstream::start("bad").await, Upstream::start("good").await);
    bad.set_resetting(true);
    // Every request meets the resetting endpoint first and may be retried.
    let config = one_pool(&[&bad, &good])
        + "[pool.balancer]\nplugin = \"first-healthy\"\n[pool.passive]\nmax_fails = 0\n[pool.retry]\nbudget = 1.0\n";
    let gw = TestGateway::start(&config).await;
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(gw.addr("client")).await.unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        send
    };
    /// A PUT of `body` whole, or of all but the last byte of a 64 KiB body (the stream kept).
    async fn put(
        send: &mut h2::client::SendRequest<Bytes>,
        whole: bool,
    ) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
        let len = if whole { 7 } else { 65_536 };
        let req = Request::put("http://weir.test/doc")
            .header("content-length", len)
            .body(())
            .unwrap();
        let mut send = send.clone().ready().await.unwrap();
        let (resp, mut body) = send.send_request(req, false).unwrap();
        if whole {
            body.send_data(Bytes::from_static(b"payload"), true).unwrap();
        } else {
            body.send_data(Bytes::from(vec![b'x'; len - 1]), false).unwrap();
        }
        (resp, body)
    }
    async fn status(send: &mut h2::client::SendRequest<Bytes>) -> u16 {
        let (resp, _body) = put(send, true).await;
        resp.await.unwrap().status().as_u16()
    }
    let mut first = connect().await;
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(put(&mut first, false).await);
    }
    // The held bodies reach weir's request path in their own time: until they do, a small body
    // is still buffered and the client gets the good endpoint's answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match status(&mut first).await {
            502 => break,
            200 => assert!(Instant::now() < deadline, "a small body was still buffered after 10 s"),
            other => panic!("status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut second = connect().await;
    for _ in 0..3 {
        assert_eq!(
            status(&mut second).await,
            200,
            "another connection's bodies are buffered"
        );
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&mut first).await != 200 {
        assert!(
            Instant::now() < deadline,
            "the held bodies' allowance was not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        assert_eq!(status(&mut first).await, 200);
    }
}
