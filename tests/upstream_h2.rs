//! `protocol = "h2"`: HTTP/2 to the upstreams (gRPC services, HTTP/2-only servers). Real
//! HTTP/2 upstreams (hyper, h2c and TLS with ALPN `h2`) behind a real gateway: one multiplexed
//! connection per endpoint, trailers both ways, retries and failover, a restarted upstream,
//! timeouts, health checks, and what the config refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use weir_test_support::*;

fn h2_pool(ups: &[&Upstream], extra: &str) -> String {
    app_pool(ups, &format!("protocol = \"h2\"\n{extra}"), "")
}

#[tokio::test]
async fn concurrent_http1_and_h2_clients_share_one_h2_connection_per_endpoint() {
    let a = Upstream::start_h2("a").await;
    let b = Upstream::start_h2("b").await;
    let gw = TestGateway::start(&h2_pool(&[&a, &b], "")).await;
    let url = gw.url("client", "/items?x=1");
    let replies = futures_util::future::join_all((0..40).map(|i| {
        let url = url.clone();
        async move {
            if i % 2 == 0 {
                get(&url).await
            } else {
                h2c_get(&url).await
            }
        }
    }))
    .await;
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.json();
        assert_eq!(echo["version"], "HTTP/2.0");
        // `Host` became `:authority`, the path and query are kept.
        assert_eq!(echo["path"], format!("http://{}/items?x=1", gw.addr("client")));
        assert_eq!(echo["headers"]["x-forwarded-for"][0], "127.0.0.1");
        assert!(echo["headers"]["via"][0].as_str().unwrap().ends_with("weir"));
    }
    assert_eq!(a.requests() + b.requests(), 40);
    assert_eq!((a.requests(), b.requests()), (20, 20));
    // Forty requests, many at once: one connection to each endpoint.
    assert_eq!((a.connections(), b.connections()), (1, 1));
    assert!(a.refused().is_empty() && b.refused().is_empty(), "{:?}", a.refused());
}

/// A gRPC-style exchange over h2c: the client's body ends in trailers, the upstream answers
/// with `grpc-status` in trailers; both reach the other side.
#[tokio::test]
async fn trailers_pass_both_ways_as_grpc_needs() {
    let up = Upstream::start_h2("grpc").await;
    let gw = TestGateway::start(&h2_pool(&[&up], "")).await;
    let mut send = h2c_sender(gw.addr("client")).await;
    // Streamed (no length), then buffered (small, with a length: kept for a resend).
    for length in [None, Some("5")] {
        let mut request_trailers = HeaderMap::new();
        request_trailers.insert("x-trailer", HeaderValue::from_static("abc"));
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::trailers(request_trailers)),
        ];
        let mut req = Request::post("http://weir.test/trailers")
            .header("te", "trailers")
            .header("content-type", "application/grpc");
        if let Some(n) = length {
            req = req.header("content-length", n);
        }
        let req = req.body(StreamBody::new(futures_util::stream::iter(frames))).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("response trailers");
        assert_eq!(collected.to_bytes(), Bytes::from_static(b"n=5"));
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "served by grpc");
        assert_eq!(trailers["x-request-trailer"], "abc", "content-length {length:?}");
    }

    // `TE: trailers` reaches the upstream (the one TE HTTP/2 allows); other TE values do not.
    let mut req = Request::get(gw.url("client", "/echo"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.headers_mut().insert("te", HeaderValue::from_static("trailers"));
    let r = request(req).await;
    assert_eq!(r.json()["headers"]["te"][0], "trailers");
    let mut req = Request::get(gw.url("client", "/echo"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.headers_mut().insert("te", HeaderValue::from_static("gzip"));
    let r = request(req).await;
    assert!(r.json()["headers"].get("te").is_none(), "{}", r.text());
}

#[tokio::test]
async fn an_https_upstream_is_spoken_to_over_alpn_h2_and_health_checked_over_it() {
    let certs = TestCerts::new();
    let mut server = (*certs.upstream_server(&["127.0.0.1"], false)).clone();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let up = Upstream::start_h2_tls("tls", std::sync::Arc::new(server)).await;
    let pool = format!(
        "[pool.health]\npath = \"/upcheck\"\ninterval = \"100ms\"\n[pool.tls]\nca = \"{}\"\n",
        certs.ca_file().display()
    );
    let gw = TestGateway::start(&h2_pool(&[&up], &pool)).await;
    // The endpoint takes traffic only once a check passed: an HTTP/2 GET over TLS.
    assert!(eventually(Duration::from_secs(10), async || up.checks() > 0).await);
    let ok = eventually(Duration::from_secs(10), async || {
        get(&gw.url("client", "/")).await.status == 200
    })
    .await;
    assert!(ok, "{:?}", up.refused());
    let r = get(&gw.url("client", "/s")).await;
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(r.json()["path"], format!("https://{}/s", gw.addr("client")));
    let r = get(&gw.url("client", "/bytes/1048576")).await;
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 1 << 20));
    assert_eq!(gw.attempts("tls_error").await, 0);
    assert!(up.refused().is_empty(), "{:?}", up.refused());
}

#[tokio::test]
async fn streamed_uploads_and_large_downloads_flow_through() {
    let up = Upstream::start_h2("a").await;
    let gw = TestGateway::start(&h2_pool(&[&up], "")).await;
    // A 4 MiB upload without a length (chunked from the client), streamed as DATA frames.
    let r = post_chunked(&gw.url("client", "/upload"), 64, 64 * 1024).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 64 * 64 * 1024);
    // A 16 MiB download, past every flow-control window.
    let r = get(&gw.url("client", "/bytes/16777216")).await;
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 16 << 20));
    // A buffered POST with a length.
    let r = post(&gw.url("client", "/form"), b"a=1&b=2").await;
    assert_eq!((r.status.as_u16(), r.json()["body_len"].as_u64()), (200, Some(7)));
}

#[tokio::test]
async fn a_refused_endpoint_fails_over_and_even_a_post_goes_to_the_other() {
    let up = Upstream::start_h2("alive").await;
    let dead = free_port();
    let toml = format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nprotocol = \"h2\"\n\
         [[pool.endpoint]]\naddress = \"127.0.0.1:{dead}\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
        up.addr
    );
    let gw = TestGateway::start(&toml).await;
    for i in 0..6 {
        let r = post(&gw.url("client", &format!("/p/{i}")), b"x").await;
        // A refused connect sent nothing: safe to resend anything.
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.upstream(), "alive");
    }
    assert_eq!(up.requests(), 6);
}

#[tokio::test]
async fn a_restarted_upstream_gets_a_new_connection_and_no_request_fails() {
    let up = Upstream::start_h2("first").await;
    let addr = up.addr;
    let gw = TestGateway::start(&h2_pool(&[&up], "")).await;
    assert_eq!(get(&gw.url("client", "/")).await.upstream(), "first");
    drop(up);
    // The aborted server lets go of its socket once its task has ended.
    let free = eventually(Duration::from_secs(5), async || {
        std::net::TcpListener::bind(addr).is_ok()
    })
    .await;
    assert!(free);
    let again = Upstream::start_h2_on(addr, "second").await;
    for _ in 0..5 {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(
            (r.status.as_u16(), r.upstream()),
            (200, "second".to_string()),
            "{}",
            r.text()
        );
    }
    assert_eq!(again.connections(), 1);
}

#[tokio::test]
async fn a_response_timeout_resets_one_stream_and_the_connection_serves_on() {
    let up = Upstream::start_h2("slow").await;
    let gw = TestGateway::start(&h2_pool(&[&up], "[pool.timeouts]\nrequest = \"300ms\"\n")).await;
    let r = get(&gw.url("client", "/hang")).await;
    assert_eq!(r.status, 504);
    let r = get(&gw.url("client", "/fine")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.connections(), 1);
    assert_eq!(gw.attempts("timeout").await, 1);
}

/// A WebSocket handshake from an HTTP/1.1 client goes to an HTTP/2 upstream as an extended
/// CONNECT (RFC 8441) on the endpoint's shared connection: the client gets its 101 with the
/// accept key it checks and the upstream's chosen subprotocol, then messages flow both ways;
/// plain requests share the connection meanwhile.
#[tokio::test]
async fn a_websocket_to_an_h2_pool_goes_as_an_extended_connect() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let up = Upstream::start_h2("a").await;
    let gw = TestGateway::start(&h2_pool(&[&up], "")).await;
    let mut handshake = format!("ws://{}/ws", gw.addr("client")).into_client_request().unwrap();
    handshake
        .headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("chat, superchat"));
    let (mut ws, resp) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(handshake))
        .await
        .expect("handshake within 10 s")
        .expect("websocket handshake through weir (the client checks Sec-WebSocket-Accept)");
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    assert_eq!(resp.headers()["x-request-via"], "1.1 weir");
    // The binary message is larger than a DATA frame and the tunnel's write chunk: flow control
    // both ways.
    ws_echo(&mut ws, "hello", 5, &[7u8; 300_000]).await;
    // A plain request meanwhile shares the connection.
    let r = get(&gw.url("client", "/plain")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], "HTTP/2.0");
    assert_eq!(up.connections(), 1);
    ws.close(None).await.unwrap();
    // The close is answered and the stream ends.
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            break;
        }
    }
    assert!(up.refused().is_empty(), "{:?}", up.refused());
}

/// An HTTP/2 client's WebSocket to an HTTP/2 pool: an extended CONNECT at both ends.
#[tokio::test]
async fn an_http2_clients_websocket_goes_to_an_h2_pool_as_an_extended_connect() {
    let up = Upstream::start_h2("a").await;
    let gw = TestGateway::start(&h2_pool(&[&up], "")).await;
    let (head, ws) = h2_websocket(gw.addr("client"), "/ws", Some("chat")).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.headers["sec-websocket-protocol"], "chat");
    assert_eq!(head.headers["x-request-via"], "2 weir");
    let mut ws = ws.expect("a WebSocket");
    ws_echo(&mut ws, "hi", 3, &[]).await;
    ws.close(None).await.unwrap();
    assert_eq!(up.requests(), 1);
    assert_eq!(up.connections(), 1);
}

/// An upstream whose SETTINGS do not allow extended CONNECT gets no WebSocket stream: the
/// client gets a 501 saying why. Upgrades other than WebSocket have no HTTP/2 form: a 501.
#[tokio::test]
async fn websockets_an_h2_upstream_does_not_offer_and_other_upgrades_get_501() {
    // The h2 crate's server, as it comes, does not send SETTINGS_ENABLE_CONNECT_PROTOCOL.
    let (addr, streams) = resetting_h2_server(h2::Reason::REFUSED_STREAM).await;
    let gw = TestGateway::start(&format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nprotocol = \"h2\"\n[[pool.endpoint]]\naddress = \"{addr}\"\n"
    ))
    .await;
    let reply = raw_exchange(
        gw.addr("client"),
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 501"), "{reply}");
    assert!(reply.contains("SETTINGS_ENABLE_CONNECT_PROTOCOL"), "{reply}");
    assert_eq!(streams.load(std::sync::atomic::Ordering::SeqCst), 0);

    let up = Upstream::start_h2("a").await;
    let gw = TestGateway::start(&h2_pool(&[&up], "")).await;
    let reply = raw_exchange(
        gw.addr("client"),
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade, close\r\nUpgrade: foo/1\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 501"), "{reply}");
    assert!(reply.contains("only WebSocket"), "{reply}");
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn bad_protocol_settings_are_refused_naming_the_key() {
    let up = Upstream::start_h2("a").await;
    let err = TestGateway::try_start(&app_pool(&[&up], "protocol = \"h3\"\n", ""))
        .await
        .err()
        .expect("refused");
    assert!(err.contains("protocol") && err.contains("h3"), "{err}");
    let err = TestGateway::try_start(&app_pool(&[&up], "protocol = \"h2\"\nsend_proxy = \"v1\"\n", ""))
        .await
        .err()
        .expect("refused");
    assert!(err.contains("send_proxy") && err.contains("h2"), "{err}");
}

/// A reload that switches a pool between HTTP/1.1 and HTTP/2 takes effect for new requests.
#[tokio::test]
async fn a_reload_switches_the_protocol() {
    let h1 = Upstream::start("h1").await;
    let h2 = Upstream::start_h2("h2").await;
    let gw = TestGateway::start(&app_pool(&[&h1], "", "")).await;
    assert_eq!(get(&gw.url("client", "/")).await.json()["version"], "HTTP/1.1");
    gw.write_config(&h2_pool(&[&h2], ""));
    gw.reload().await.unwrap();
    let r = get(&gw.url("client", "/")).await;
    assert_eq!(
        (r.upstream(), r.json()["version"].clone()),
        ("h2".to_string(), "HTTP/2.0".into())
    );
}

/// An HTTP/2 server (the `h2` crate's, to answer frame by frame) that resets every stream it
/// gets with `reason`; returns its address and how many streams it reset.
async fn resetting_h2_server(
    reason: h2::Reason,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let resets = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = resets.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    respond.send_reset(reason);
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    (addr, resets)
}

fn two_endpoints(first: std::net::SocketAddr, second: std::net::SocketAddr) -> String {
    format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nprotocol = \"h2\"\n\
         [pool.passive]\nmax_fails = 0\n[[pool.endpoint]]\naddress = \"{first}\"\n[[pool.endpoint]]\naddress = \"{second}\"\n"
    )
}

/// A refused stream (RFC 9113 §8.7: not processed) is safe to send elsewhere, a POST included;
/// a stream reset for another reason may have been processed: a POST is not sent again.
#[tokio::test]
async fn a_refused_stream_goes_to_another_endpoint_and_another_reset_does_not() {
    let up = Upstream::start_h2("ok").await;
    let (refusing, refused) = resetting_h2_server(h2::Reason::REFUSED_STREAM).await;
    let gw = TestGateway::start(&two_endpoints(refusing, up.addr)).await;
    for i in 0..4 {
        let r = post(&gw.url("client", &format!("/p/{i}")), b"x").await;
        assert_eq!(
            (r.status.as_u16(), r.upstream()),
            (200, "ok".to_string()),
            "{}",
            r.text()
        );
    }
    assert_eq!(up.requests(), 4);
    // The balancer starts each request on the refusing endpoint again (it is not down:
    // `max_fails = 0`), which sends it on.
    assert!(refused.load(std::sync::atomic::Ordering::SeqCst) >= 2);

    let up = Upstream::start_h2("ok").await;
    let (failing, failed) = resetting_h2_server(h2::Reason::INTERNAL_ERROR).await;
    let gw = TestGateway::start(&two_endpoints(failing, up.addr)).await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        let r = post(&gw.url("client", &format!("/p/{i}")), b"x").await;
        statuses.push(r.status.as_u16());
    }
    statuses.sort();
    // Round-robin: two POSTs met the failing endpoint and were answered 502, not resent.
    assert_eq!(statuses, [200, 200, 502, 502]);
    assert_eq!(
        (up.requests(), failed.load(std::sync::atomic::Ordering::SeqCst)),
        (2, 2)
    );
}

/// Clients that stop reading large responses hold their streams' data in weir, not the
/// connection they share: the other requests to the endpoint carry on.
#[tokio::test]
async fn stalled_readers_do_not_stall_the_shared_connection() {
    let up = Upstream::start_h2("big").await;
    let gw = TestGateway::start(&h2_pool(&[&up], "")).await;
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut tcp = tokio::net::TcpStream::connect(gw.addr("client")).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET /bytes/268435456 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Never read from: its response stalls once the socket buffers are full.
        stalled.push(tcp);
    }
    assert!(eventually(Duration::from_secs(10), async || up.requests() == 8).await);
    // Time for the stalled responses to fill what they can (polled, not slept on: each
    // further request must get through while they sit there).
    for i in 0..20 {
        let r = tokio::time::timeout(Duration::from_secs(5), get(&gw.url("client", &format!("/after/{i}"))))
            .await
            .expect("a request behind stalled streams did not get through");
        assert_eq!(r.status, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.connections(), 1);
    drop(stalled);
}

/// An upstream that allows two streams per connection gets a second and third connection
/// rather than requests waiting behind the first two: six at once are handled at once.
#[tokio::test]
async fn a_connection_at_the_upstreams_stream_limit_is_joined_by_another() {
    let up = Upstream::start_h2_limited("narrow", 2).await;
    let gw = TestGateway::start(&h2_pool(&[&up], "")).await;
    // The first connection learns the limit from the upstream's SETTINGS.
    assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    let url = gw.url("client", "/delay/500");
    let replies = futures_util::future::join_all((0..6).map(|_| get(&url))).await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        replies.iter().map(|r| (r.status, r.text())).collect::<Vec<_>>()
    );
    assert_eq!(up.peak_concurrent(), 6);
    assert_eq!(up.connections(), 3);
    let status = get(&gw.admin_url("/api/v1/status")).await.json();
    assert_eq!(status["pools"][0]["endpoints"][0]["h2_connections"], 3);
    assert!(up.refused().is_empty(), "{:?}", up.refused());
}

/// `protocol = "h2"` in front of an HTTP/1.1-only upstream: 502s, and one warning that says
/// what is likely wrong, not one per request.
#[tokio::test]
async fn an_upstream_that_does_not_speak_h2_is_one_warning_naming_the_likely_cause() {
    let up = Upstream::start("h1-only").await;
    let (port, admin) = (free_port(), free_port());
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n\
         [[pool]]\nname = \"app\"\nprotocol = \"h2\"\n[pool.passive]\nmax_fails = 0\n[[pool.endpoint]]\naddress = \"{}\"\n",
        up.addr
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_weir"));
    let mut weir = WeirProcess::spawn(bin, &toml, format!("127.0.0.1:{admin}").parse().unwrap());
    weir.wait_ready().await;
    for _ in 0..4 {
        assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.status, 502);
    }
    let hint = "does the endpoint speak HTTP/2";
    assert!(weir.stderr_eventually_contains(hint).await, "{}", weir.stderr_text());
    assert_eq!(weir.stderr_text().matches(hint).count(), 1, "{}", weir.stderr_text());
}

/// `grpc = true`: the gRPC health service decides, as Kubernetes' gRPC probes ask it.
#[tokio::test]
async fn grpc_health_checks_follow_the_serving_status() {
    let a = Upstream::start_h2("a").await;
    let b = Upstream::start_h2("b").await;
    let health = "[pool.health]\ngrpc = true\ninterval = \"50ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n";
    let gw = TestGateway::start(&h2_pool(&[&a, &b], health)).await;
    let both = eventually(Duration::from_secs(10), async || {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            seen.insert(get(&gw.url("client", "/")).await.upstream());
        }
        seen.len() == 2
    })
    .await;
    assert!(both, "both endpoints should pass their gRPC checks");
    // b says NOT_SERVING: it takes no traffic; SERVING again: it does.
    b.set_upcheck(503);
    let out = eventually(Duration::from_secs(10), async || {
        let status = get(&gw.admin_url("/api/v1/status")).await.json();
        status["pools"][0]["endpoints"][1]["healthy"] == false
    })
    .await;
    assert!(out);
    for _ in 0..6 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), "a");
    }
    b.set_upcheck(200);
    assert!(
        eventually(Duration::from_secs(10), async || get(&gw.url("client", "/"))
            .await
            .upstream()
            == "b")
        .await
    );

    // A service the server does not know never passes.
    let c = Upstream::start_h2("c").await;
    let health = "[pool.health]\ngrpc = true\ngrpc_service = \"unknown\"\ninterval = \"50ms\"\n";
    let gw = TestGateway::start(&h2_pool(&[&c], health)).await;
    assert!(eventually(Duration::from_secs(10), async || c.checks() >= 3).await);
    assert_eq!(get(&gw.url("client", "/")).await.status, 503);
    let status = get(&gw.admin_url("/api/v1/status")).await.json();
    assert_eq!(status["pools"][0]["endpoints"][0]["checks"]["ok"], 0);
}

#[tokio::test]
async fn grpc_check_settings_that_cannot_work_are_refused() {
    let up = Upstream::start_h2("a").await;
    for (health, key) in [
        ("[pool.health]\ngrpc = true\npath = \"/upcheck\"\n", "path"),
        ("[pool.health]\ngrpc_service = \"x\"\n", "grpc_service"),
        ("[pool.health]\ngrpc = true\nexpect_body = \"ok\"\n", "expect_body"),
    ] {
        let err = TestGateway::try_start(&h2_pool(&[&up], health))
            .await
            .err()
            .expect("refused");
        assert!(err.contains(key), "{key}: {err}");
    }
    // Over TLS a gRPC server needs ALPN h2, which an HTTP/1.1 pool's TLS does not offer.
    let err = TestGateway::try_start(&app_pool(
        &[&up],
        "[pool.health]\ngrpc = true\n[pool.tls]\nverify = false\n",
        "",
    ))
    .await
    .err()
    .expect("refused");
    assert!(err.contains("grpc") && err.contains("h2"), "{err}");
}

/// A drain during a request: the request in flight finishes on its stream, new ones go to the
/// other endpoint.
#[tokio::test]
async fn a_drained_endpoint_finishes_its_streams_and_takes_no_new_ones() {
    let a = Upstream::start_h2("a").await;
    let b = Upstream::start_h2("b").await;
    let gw = TestGateway::start(&h2_pool(&[&a, &b], "")).await;
    let url = gw.url("client", "/delay/800");
    let slow = tokio::spawn(async move { get(&url).await });
    assert!(eventually(Duration::from_secs(5), async || a.requests() + b.requests() == 1).await);
    let (busy, other) = if a.requests() == 1 { (&a, &b) } else { (&b, &a) };
    let drain = post(
        &gw.admin_url(&format!("/api/v1/pools/app/endpoints/{}/drain", busy.addr)),
        b"",
    )
    .await;
    assert_eq!(drain.status, 200, "{}", drain.text());
    for _ in 0..6 {
        assert_eq!(get(&gw.url("client", "/")).await.upstream(), other.name);
    }
    let r = slow.await.unwrap();
    assert_eq!((r.status.as_u16(), r.upstream()), (200, busy.name.clone()));
}

/// A client body that breaks off (past `max_body_bytes`, or slower than `body_timeout`) gets
/// the gateway's 413 or 408, its upstream stream is reset rather than completed, and the
/// shared connection serves on.
#[tokio::test]
async fn a_client_body_that_breaks_off_gets_its_status_and_only_its_stream_is_reset() {
    let up = Upstream::start_h2("a").await;
    let toml = one_pool_with(
        &[&up],
        "[listener.limits]\nmax_body_bytes = \"64KiB\"\nbody_timeout = \"400ms\"\n",
    )
    .replace("name = \"app\"\n", "name = \"app\"\nprotocol = \"h2\"\n");
    let gw = TestGateway::start(&toml).await;
    // Streamed without a length: the limit is found on the way, after the stream opened.
    let r = post_chunked(&gw.url("client", "/upload"), 16, 16 * 1024).await;
    assert_eq!(r.status, 413, "{}", r.text());
    // A body that stops coming.
    let mut s = tokio::net::TcpStream::connect(gw.addr("client")).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        b"POST /slow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out),
    )
    .await
    .expect("never cut");
    let response = String::from_utf8_lossy(&out);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    // Neither body reached its end upstream: each answer would have been a 200 echo.
    assert!(up.body_bytes() < 64 * 1024 + 5, "{}", up.body_bytes());
    let r = get(&gw.url("client", "/after")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.connections(), 1);
}

/// An HTTP/1.1 client gets an HTTP/2 upstream's trailers (gRPC's status) in the trailer
/// section of the chunked response.
#[tokio::test]
async fn an_http1_client_gets_the_trailers_in_the_chunked_body() {
    let up = Upstream::start_h2("grpc").await;
    let gw = TestGateway::start(&h2_pool(&[&up], "")).await;
    let raw = raw_exchange(
        gw.addr("client"),
        b"POST /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    let lower = raw.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{raw}");
    assert!(lower.contains("\r\ntransfer-encoding: chunked\r\n"), "{raw}");
    let (_, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(body.starts_with("3\r\nn=5\r\n"), "{body:?}");
    let trailer_section = body.split_once("0\r\n").map(|(_, t)| t).unwrap_or("");
    assert!(trailer_section.contains("grpc-status: 0\r\n"), "{body:?}");
    assert!(trailer_section.contains("grpc-message: served by grpc\r\n"), "{body:?}");
    assert!(trailer_section.ends_with("\r\n\r\n"), "{body:?}");
}

/// An HTTP/1.1 client's chunked request trailers reach an HTTP/2 upstream as trailers.
#[tokio::test]
async fn an_http1_clients_request_trailers_reach_the_upstream() {
    let up = Upstream::start_h2("grpc").await;
    let gw = TestGateway::start(&h2_pool(&[&up], "")).await;
    let raw = raw_exchange(
        gw.addr("client"),
        b"POST /trailers HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-trailer: abc\r\n\r\n",
    )
    .await;
    assert!(raw.to_ascii_lowercase().starts_with("http/1.1 200"), "{raw}");
    let (_, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(body.starts_with("3\r\nn=5\r\n"), "{body:?}");
    assert!(body.contains("\r\nx-request-trailer: abc\r\n"), "{body:?}");
}

/// An upstream that answers before the upload ends (here a 413 without reading the body)
/// gets its answer to the client; what is left of the upload stops, and the connection to
/// the upstream serves on.
#[tokio::test]
async fn an_answer_before_the_upload_ends_reaches_the_client() {
    let up = Upstream::start_h2("a").await;
    let gw = TestGateway::start(&h2_pool(&[&up], "")).await;
    let r = post_chunked(&gw.url("client", "/status/413"), 64, 64 * 1024).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.upstream(), "a");
    let r = get(&gw.url("client", "/after")).await;
    assert_eq!(r.status, 200);
    assert_eq!(up.connections(), 1);
    assert_eq!(gw.attempts("reset").await, 0);
}

/// An HTTP/2 upstream whose stream goes quiet inside its body is cut off after `timeouts.body`
/// (its stream reset), as an HTTP/1.1 one is; the connection serves on.
#[tokio::test]
async fn a_stream_stalling_inside_its_body_is_cut_off_after_timeouts_body() {
    let a = Upstream::start_h2("a").await;
    let gw = TestGateway::start(&h2_pool(&[&a], "[pool.timeouts]\nbody = \"300ms\"\n")).await;
    let started = std::time::Instant::now();
    let r = raw_exchange(gw.addr("client"), b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200") && r.contains("half"), "{r}");
    assert!(!r.ends_with("0\r\n\r\n"), "the chunked body was not completed: {r}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(get(&gw.url("client", "/after")).await.status, 200);
    assert_eq!(a.connections(), 1, "the connection serves on");
}

/// As over HTTP/1.1: a slow upload to an HTTP/2 upstream is not cut off by `timeouts.request`,
/// which bounds the wait once the request has gone.
#[tokio::test]
async fn a_slow_upload_to_an_h2_upstream_is_not_cut_off_by_the_response_timeout() {
    let a = Upstream::start_h2("a").await;
    let gw = TestGateway::start(&h2_pool(&[&a], "[pool.timeouts]\nrequest = \"400ms\"\n")).await;
    let r = post_trickle(&gw.url("client", "/upload"), 8, Duration::from_millis(150)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], 8 * 1024);
}
