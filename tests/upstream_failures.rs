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

/// The real `weir` binary, ready, with one listener in front of a pool `app` of the one
/// endpoint `address`; `pool` lines in the pool's table. Its client port and itself.
async fn weir_in_front_of(address: std::net::SocketAddr, pool: &str) -> (WeirProcess, u16) {
    let (port, admin) = (free_port(), free_port());
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\n{pool}[[pool.endpoint]]\naddress = \"{address}\"\n"
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_weir"));
    let mut weir = WeirProcess::spawn(bin, &toml, format!("127.0.0.1:{admin}").parse().unwrap());
    weir.wait_ready().await;
    (weir, port)
}

/// `passive` with a backup endpoint (never reached) and no retry: passive health leaves a
/// pool's only endpoint alone, and these tests are about the one endpoint before it.
fn with_a_backup(passive: &str) -> String {
    format!(
        "{passive}[pool.retry]\nmax_attempts = 1\n[[pool.endpoint]]\naddress = \"127.0.0.1:{}\"\nbackup = true\n",
        free_port()
    )
}

/// A replica that crashes with requests in flight fails them all at once: one passive-health
/// outage, logged once, not one per request (it was one per request before).
#[tokio::test]
async fn a_crash_with_many_requests_in_flight_is_one_outage_logged_once() {
    let mut dying = Upstream::start("dying").await;
    let (weir, port) = weir_in_front_of(
        dying.addr,
        &with_a_backup("[pool.passive]\nmax_fails = 1\nfail_timeout = \"30s\"\n"),
    )
    .await;
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
    // The warning says what failed.
    assert!(
        weir.stderr_text().contains("last_failure=reset"),
        "{}",
        weir.stderr_text()
    );
}

/// One GET on a kept-alive HTTP/1.1 connection: status and body.
async fn exchange_on(client: &mut tokio::net::TcpStream) -> (u16, String) {
    send_on(client, b"GET / HTTP/1.1\r\nHost: app\r\n\r\n").await
}

/// One request on a kept-alive HTTP/1.1 connection: status and body.
async fn send_on(client: &mut tokio::net::TcpStream, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    client.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                let status = text[9..12].parse().unwrap();
                return (status, text[end + 4..end + 4 + length].to_owned());
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "weir closed the connection: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// The lowest file descriptor number `pid` has free: with its soft limit set to that, its next
/// socket fails with EMFILE.
fn lowest_free_fd(pid: u32) -> u64 {
    let open: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|fd| !open.contains(fd)).unwrap()
}

/// `Max open files` of `pid`: soft and hard.
fn fd_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let mut values = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse().unwrap());
    (values.next().unwrap(), values.next().unwrap())
}

fn set_fd_limit(child: &std::process::Child, soft: u64, hard: u64) {
    let pid = rustix::process::Pid::from_child(child);
    let limit = rustix::process::Rlimit {
        current: Some(soft),
        maximum: Some(hard),
    };
    rustix::process::prlimit(Some(pid), rustix::process::Resource::Nofile, limit).unwrap();
}

/// weir out of file descriptors (or ephemeral ports) cannot connect, but that is this host's
/// state, not the endpoint's: the client gets a 503 saying so, the endpoint is not taken out
/// by passive health, and the next request once descriptors are free is served. Before, the
/// connect error counted as the endpoint's failure: with ports exhausted by another proxy's
/// churn, every endpoint of a pool went out and nearly every request got a 5xx.
#[tokio::test]
async fn no_free_descriptor_is_not_the_endpoints_failure() {
    let up = raw_upstream(|_, _| {
        Act::ReplyClose(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        ])
    })
    .await;
    let (weir, port) = weir_in_front_of(
        up.addr,
        &with_a_backup("[pool.passive]\nmax_fails = 1\nfail_timeout = \"60s\"\n"),
    )
    .await;
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(exchange_on(&mut client).await, (200, "ok".to_owned()));
    let pid = weir.child.id();
    let (soft, hard) = fd_limits(pid);
    // A descriptor closed after the limit was set (the upstream connection just answered)
    // lets a connect through: then the limit is set again, lower.
    let mut refused = None;
    for _ in 0..50 {
        set_fd_limit(&weir.child, lowest_free_fd(pid), hard);
        match exchange_on(&mut client).await {
            (200, _) => continue,
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    set_fd_limit(&weir.child, soft, hard);
    let (status, body) = refused.expect("weir connected every time");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no free port or file descriptor"), "{body}");
    // Descriptors free again: the endpoint was not taken out (max_fails = 1 would have).
    assert_eq!(exchange_on(&mut client).await, (200, "ok".to_owned()));
    let metrics = get(&format!("http://{}/metrics", weir.admin)).await.text();
    assert!(
        metrics.lines().any(|l| l.starts_with("weir_upstream_attempts_total")
            && l.contains("outcome=\"local_error\"")
            && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(
        weir.stderr_text()
            .contains("no local resource to open an upstream connection"),
        "{}",
        weir.stderr_text()
    );
    assert!(
        !weir.stderr_text().contains("endpoint unavailable (passive health)"),
        "{}",
        weir.stderr_text()
    );
}

/// A POST may not take a pooled connection older than the upstream has been seen to keep one
/// (it closes idle ones unannounced). With no descriptor free for a new connection, it waits
/// `timeouts.connect` for a young one to come back from a response; when none does, it takes
/// an older one rather than answer 503 for want of a descriptor (it got the 503 before).
#[tokio::test]
async fn without_a_free_descriptor_a_post_takes_an_older_pooled_connection_over_a_503() {
    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    // The first answer's connection closes right after it, unannounced; the others stay open.
    let up = raw_upstream(|i, _| {
        if i == 0 {
            Act::ReplyClose(vec![OK])
        } else {
            Act::Reply(vec![OK])
        }
    })
    .await;
    let (weir, port) = weir_in_front_of(up.addr, "[pool.timeouts]\nconnect = \"300ms\"\n").await;
    let status = format!("http://{}/api/v1/status", weir.admin);
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(exchange_on(&mut client).await, (200, "ok".to_owned()));
    assert!(
        eventually(Duration::from_secs(5), async || {
            !get(&status).await.json()["pools"][0]["endpoints"][0]["unreplayable_idle_limit_ms"].is_null()
        })
        .await,
        "weir never saw the upstream close a pooled connection"
    );
    assert_eq!(exchange_on(&mut client).await, (200, "ok".to_owned()));
    assert_eq!(up.connections(), 2);
    let limit = get(&status).await.json()["pools"][0]["endpoints"][0]["unreplayable_idle_limit_ms"]
        .as_u64()
        .unwrap();
    assert!(limit < 400, "{limit}");
    // The idle time under test: the pooled connection grows older than a POST may take.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = weir.child.id();
    let (soft, hard) = fd_limits(pid);
    // No descriptor below the limit: one closed after it was set (the admin connection just
    // used) would let the POST open a new connection; then the limit is set again, lower.
    let settled = (0..50).any(|_| {
        let lowest = lowest_free_fd(pid);
        set_fd_limit(&weir.child, lowest, hard);
        lowest_free_fd(pid) == lowest
    });
    assert!(settled, "weir's descriptors kept closing");
    let got = send_on(
        &mut client,
        b"POST /order HTTP/1.1\r\nHost: app\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    set_fd_limit(&weir.child, soft, hard);
    assert_eq!(got, (200, "ok".to_owned()), "{}", weir.stderr_text());
    assert_eq!(up.connections(), 2, "the POST went on the pooled connection");
    assert!(
        weir.stderr_text()
            .contains("no local resource to open an upstream connection"),
        "no connect was refused for want of a descriptor: {}",
        weir.stderr_text()
    );
}

/// A health check weir cannot make for want of a file descriptor is no verdict: the endpoint
/// stays in (`unhealthy_threshold = 1` would have taken it out at the first such check).
#[tokio::test]
async fn a_health_check_without_a_free_descriptor_is_not_a_failure() {
    let up = Upstream::start("checked").await;
    let health = "[pool.health]\npath = \"/upcheck\"\ninterval = \"50ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n";
    let (weir, port) = weir_in_front_of(up.addr, health).await;
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || exchange_on(&mut client).await.0 == 200).await,
        "the endpoint never passed its check: {}",
        weir.stderr_text()
    );
    let pid = weir.child.id();
    let (soft, hard) = fd_limits(pid);
    let skipped = "health check not made: no local resource to connect with";
    // Set again and again: each check's connection, closed, leaves a lower descriptor free.
    let made = eventually(Duration::from_secs(5), async || {
        set_fd_limit(&weir.child, lowest_free_fd(pid), hard);
        weir.stderr_text().matches(skipped).count() >= 3
    })
    .await;
    set_fd_limit(&weir.child, soft, hard);
    assert!(made, "{}", weir.stderr_text());
    assert!(
        !weir.stderr_text().contains("endpoint unhealthy"),
        "{}",
        weir.stderr_text()
    );
    assert_eq!(exchange_on(&mut client).await.0, 200, "{}", weir.stderr_text());
}

/// Runs weir in front of `up` with `pool` lines: a first request, then a slow one holding the
/// pool's one usable connection (or stream), then weir's descriptors run out and a third request
/// must wait for that connection and get a 200, the shortage logged.
async fn without_a_free_descriptor_the_next_request_waits(up: &Upstream, pool: &str) {
    let (weir, port) = weir_in_front_of(up.addr, pool).await;
    // One upstream connection, pooled by the first request...
    let mut waiting = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(exchange_on(&mut waiting).await.0, 200);
    // ...then busy with a slow one.
    let slow = tokio::spawn(async move { get(&format!("http://127.0.0.1:{port}/delay/400")).await });
    assert!(eventually(Duration::from_secs(5), async || up.requests() == 2).await);
    let pid = weir.child.id();
    let (soft, hard) = fd_limits(pid);
    set_fd_limit(&weir.child, lowest_free_fd(pid), hard);
    let (status, body) = exchange_on(&mut waiting).await;
    set_fd_limit(&weir.child, soft, hard);
    assert_eq!(status, 200, "{body}");
    assert_eq!(slow.await.unwrap().status, 200);
    assert!(
        weir.stderr_text()
            .contains("no local resource to open an upstream connection"),
        "{}",
        weir.stderr_text()
    );
}

/// Without a descriptor for a new upstream connection, a request waits (up to the connect
/// timeout) for one in use to be done, and goes on it: the client never sees the shortage.
#[tokio::test]
async fn without_a_free_descriptor_a_request_takes_the_next_pooled_connection() {
    let up = Upstream::start("pooled").await;
    without_a_free_descriptor_the_next_request_waits(&up, "").await;
}

/// The same for an HTTP/2 pool: an upstream allowing one stream per connection has its one
/// connection busy; without a descriptor for a second, the request waits for the stream to
/// end and goes on that connection.
#[tokio::test]
async fn without_a_free_descriptor_an_h2_request_takes_the_next_free_stream() {
    let up = Upstream::start_h2_limited("h2-one-stream", 1).await;
    without_a_free_descriptor_the_next_request_waits(&up, "protocol = \"h2\"\n").await;
    assert_eq!(up.connections(), 1, "every request went on the one connection");
}
