//! HTTP/2 (h2c and over TLS), TLS with ALPN and SNI, and WebSocket through the gateway.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use weir_test_support::*;

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    let r = h2c_get(&gw.url("client", "/h2")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    let j = r.json();
    assert_eq!(j["path"], "/h2");
    assert_eq!(j["headers"]["via"][0], "2 weir");
    // The h1 upstream got a Host header built from :authority.
    assert_eq!(j["headers"]["host"][0], gw.addr("client").to_string());
    // Plain HTTP/1.1 still works on the same port.
    assert_eq!(get(&gw.url("client", "/")).await.status, 200);
}

/// An HTTP/2 client's cookies, one field each as browsers send them, reach an HTTP/1.1
/// upstream as one `Cookie` field joined with "; " (RFC 9113 §8.2.3); one field passes as sent.
#[tokio::test]
async fn an_http2_clients_cookie_crumbs_reach_an_http1_upstream_as_one_field() {
    use http_body_util::{BodyExt, Empty};
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    let mut send = h2c_sender::<Empty<bytes::Bytes>>(gw.addr("client")).await;
    for (crumbs, heard) in [
        (&["a=1", "b=2", "c=3"][..], "a=1; b=2; c=3"),
        (&["only=1"][..], "only=1"),
    ] {
        let mut req = http::Request::get("http://weir.test/c");
        for c in crumbs {
            req = req.header("cookie", *c);
        }
        let resp = send.send_request(req.body(Empty::new()).unwrap()).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(j["headers"]["cookie"], serde_json::json!([heard]));
    }
}

fn tls_config(certs: &TestCerts, up: &Upstream) -> String {
    let (cert, key) = certs.leaf("default", &["default.test"]);
    let (api_cert, api_key) = certs.leaf("api", &["api.example.org"]);
    let (wild_cert, wild_key) = certs.leaf("wild", &["*.example.net"]);
    format!(
        r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
pool = "app"
[listener.tls]
cert = "{}"
key = "{}"
[[listener.tls.sni]]
server_name = "api.example.org"
cert = "{}"
key = "{}"
[[listener.tls.sni]]
server_name = "*.example.net"
cert = "{}"
key = "{}"
[[pool]]
name = "app"
[[pool.endpoint]]
address = "{}"
"#,
        cert.display(),
        key.display(),
        api_cert.display(),
        api_key.display(),
        wild_cert.display(),
        wild_key.display(),
        up.addr
    )
}

#[tokio::test]
async fn tls_with_alpn_h2_and_http11() {
    let up = Upstream::start("a").await;
    let certs = TestCerts::new();
    let gw = TestGateway::start(&tls_config(&certs, &up)).await;
    let (r, alpn, _) = tls_get(
        gw.addr("tls"),
        "default.test",
        &certs.ca_der,
        &[b"h2", b"http/1.1"],
        "/x",
    )
    .await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.json()["headers"]["x-forwarded-proto"][0], "https");
    let (r, alpn, _) = tls_get(gw.addr("tls"), "default.test", &certs.ca_der, &[b"http/1.1"], "/y").await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_11);
    assert_eq!(r.json()["path"], "/y");
}

#[tokio::test]
async fn sni_selects_the_certificate() {
    let up = Upstream::start("a").await;
    let certs = TestCerts::new();
    let gw = TestGateway::start(&tls_config(&certs, &up)).await;
    // The handshake itself verifies the chain against each name: a wrong certificate fails it.
    let (_, _, api_leaf) = tls_get(gw.addr("tls"), "api.example.org", &certs.ca_der, &[b"http/1.1"], "/").await;
    let (_, _, wild_leaf) = tls_get(gw.addr("tls"), "x.example.net", &certs.ca_der, &[b"http/1.1"], "/").await;
    let (_, _, default_leaf) = tls_get(gw.addr("tls"), "default.test", &certs.ca_der, &[b"http/1.1"], "/").await;
    assert_ne!(api_leaf, default_leaf);
    assert_ne!(wild_leaf, default_leaf);
    assert_ne!(api_leaf, wild_leaf);
}

/// TLS sessions resume by ticket: after 150 other clients' handshakes (rustls's default cache
/// held 256 sessions, two per client), and after a reload that rotated the certificate, whose
/// new clients get the new one.
#[tokio::test]
async fn tls_sessions_resume_past_many_clients_and_across_a_reload() {
    use rustls::HandshakeKind::{Full, Resumed};
    let up = Upstream::start("a").await;
    let certs = TestCerts::new();
    let gw = TestGateway::start(&tls_config(&certs, &up)).await;
    let addr = gw.addr("tls");
    let client = tls_client(&certs.ca_der, &[b"http/1.1"]);
    let (kind, first_leaf) = tls_handshake(addr, "default.test", &client).await;
    assert_eq!(kind, Full);
    assert_eq!(tls_handshake(addr, "default.test", &client).await.0, Resumed);
    for _ in 0..150 {
        let other = tls_client(&certs.ca_der, &[b"http/1.1"]);
        assert_eq!(tls_handshake(addr, "default.test", &other).await.0, Full);
    }
    assert_eq!(tls_handshake(addr, "default.test", &client).await.0, Resumed);

    certs.leaf("default", &["default.test"]);
    gw.reload().await.unwrap();
    let newcomer = tls_client(&certs.ca_der, &[b"http/1.1"]);
    let (kind, new_leaf) = tls_handshake(addr, "default.test", &newcomer).await;
    assert_eq!(kind, Full);
    assert_ne!(new_leaf, first_leaf, "the reload rotated the certificate");
    assert_eq!(tls_handshake(addr, "default.test", &client).await.0, Resumed);
}

#[tokio::test]
async fn websocket_echo_through_weir() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    let url = format!("ws://{}/ws", gw.addr("client"));
    let (mut ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket handshake through weir");
    assert_eq!(resp.status(), 101);
    ws_echo(&mut ws, "hello", 5, &[0u8, 1, 2, 255]).await;
    ws.close(None).await.unwrap();
}

/// A WebSocket's sockets on both sides of weir have TCP keep-alive on (a peer that vanished
/// without a FIN is found, a quiet live one is never cut): each shows the kernel's keep-alive
/// timer in /proc/net/tcp once the tunnel is idle.
#[tokio::test]
async fn a_websockets_sockets_keep_alive_on_both_sides() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr("client")))
        .await
        .unwrap();
    ws_echo(&mut ws, "hello", 1, &[1u8]).await;
    let client = match ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap(),
        _ => unreachable!("a plain ws:// connection"),
    };
    // weir's accepted socket (its listener to the client) and its socket to the upstream.
    let sides = [(Some(gw.addr("client")), client), (None, up.addr)];
    let keepalive = |local: Option<std::net::SocketAddr>, remote: std::net::SocketAddr| {
        let hex = |a: std::net::SocketAddr| match a.ip() {
            std::net::IpAddr::V4(ip) => format!("{:08X}:{:04X}", u32::from_le_bytes(ip.octets()), a.port()),
            std::net::IpAddr::V6(_) => unreachable!("loopback v4"),
        };
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        table.lines().skip(1).any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local, remote, state (01 established), then "tr:when": timer 2 is keep-alive.
            f.len() > 5
                && local.is_none_or(|l| f[1] == hex(l))
                && f[2] == hex(remote)
                && f[3] == "01"
                && f[5].starts_with("02:")
        })
    };
    for (local, remote) in sides {
        assert!(
            eventually(std::time::Duration::from_secs(5), async || keepalive(local, remote)).await,
            "no keep-alive timer on weir's socket to {remote}"
        );
    }
    ws.close(None).await.unwrap();
}

/// Echoes five text messages and a binary one larger than a DATA frame over `ws`, then closes.
async fn echo_round<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws_echo(ws, "hello", 5, &[9u8; 200_000]).await;
    ws.close(None).await.unwrap();
}

/// An HTTP/2 client's WebSocket (RFC 8441: weir's SETTINGS allow extended CONNECT) reaches an
/// HTTP/1.1 upstream as the HTTP/1.1 handshake; the client gets its 200 with the upstream's
/// chosen subprotocol, and messages flow both ways. Other extended CONNECTs get a 501.
#[tokio::test]
async fn an_http2_clients_websocket_reaches_an_http1_upstream() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    // weir says it takes extended CONNECT.
    let tcp = tokio::net::TcpStream::connect(gw.addr("client")).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let (answer, _) = send
        .send_request(http::Request::get("http://weir.test/").body(()).unwrap(), true)
        .unwrap();
    assert_eq!(answer.await.unwrap().status(), 200);
    assert!(send.is_extended_connect_protocol_enabled());

    let (head, ws) = h2_websocket(gw.addr("client"), "/ws", Some("chat, superchat")).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.headers["sec-websocket-protocol"], "chat");
    assert!(head.headers.get("sec-websocket-accept").is_none(), "{head:?}");
    assert_eq!(head.headers["x-request-via"], "2 weir", "the upstream hears of HTTP/2");
    echo_round(&mut ws.expect("a WebSocket")).await;
    // The GET above, and the WebSocket.
    assert_eq!(up.requests(), 2);

    let tcp = tokio::net::TcpStream::connect(gw.addr("client")).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut req = http::Request::connect("http://weir.test/ws").body(()).unwrap();
    req.extensions_mut().insert(h2::ext::Protocol::from_static("x-other"));
    let (answer, _) = send.send_request(req, false).unwrap();
    assert_eq!(answer.await.unwrap().status(), 501);
    assert_eq!(up.requests(), 2);
}

/// An HTTP/2 upload of unknown length reaches the HTTP/1.1 upstream chunked, whole, and with
/// the DATA frames (at most 16 KiB) that arrived together gathered into larger chunks: one
/// write upstream per 16 KiB frame was 1,223 `sendto`s for a 20 MB upload (337 gathered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_uploads_are_gathered_into_large_chunks() {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    const FRAMES: usize = 256;
    let frame = bytes::Bytes::from(vec![b'z'; 16 * 1024]);
    let frames =
        futures_util::stream::iter((0..FRAMES).map(move |_| Ok::<_, std::io::Error>(Frame::data(frame.clone()))));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<StreamBody<_>>();
    let req = http::Request::post(gw.url("client", "/upload"))
        .body(StreamBody::new(frames))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let j: serde_json::Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(j["body_len"], (FRAMES * 16 * 1024) as u64);
    assert_eq!(j["headers"]["transfer-encoding"][0], "chunked");
    let max_frame = j["max_frame"].as_u64().unwrap_or(0);
    assert!(
        max_frame > 16 * 1024,
        "largest chunk the upstream got: {max_frame} bytes"
    );
}

/// An HTTP/2 connection with no request being handled is sent a GOAWAY after `idle_timeout`
/// (after `header_timeout` when it never sent one), as an idle HTTP/1 connection is closed:
/// hyper's keep-alive pings alone kept a client that answers them connected for good.
#[tokio::test]
async fn idle_http2_connections_are_closed() {
    use std::time::{Duration, Instant};
    let up = Upstream::start("a").await;
    let toml = one_pool_with(
        &[&up],
        "[listener.limits]\nidle_timeout = \"400ms\"\nheader_timeout = \"300ms\"\n",
    );
    let gw = TestGateway::start(&toml).await;
    for send_one in [true, false] {
        let tcp = tokio::net::TcpStream::connect(gw.addr("client")).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        let start = Instant::now();
        if send_one {
            let req = http::Request::get("http://weir.test/")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            assert_eq!(send.send_request(req).await.unwrap().status(), 200);
        }
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        let took = start.elapsed();
        assert!(
            ended.is_ok(),
            "the connection was still open after 5 s (request sent: {send_one})"
        );
        let least = Duration::from_millis(if send_one { 350 } else { 250 });
        assert!(took >= least, "closed after {took:?} (request sent: {send_one})");
    }
    // A request being handled is not idleness: answered after twice the idle timeout.
    let slow = h2c_get(&gw.url("client", "/delay/900")).await;
    assert_eq!(slow.status, 200);

    // Nor is an open WebSocket: the connection takes a new request after twice the idle
    // timeout with only the WebSocket's stream open.
    let mut send = h2c_sender(gw.addr("client")).await;
    let (head, ws) = h2_websocket_on(&mut send, "/ws", None).await;
    assert_eq!(head.status, 200);
    let mut ws = ws.expect("a WebSocket");
    // The idle time itself is what is tested here.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let req = http::Request::get("http://weir.test/after")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let after = send
        .send_request(req)
        .await
        .expect("no GOAWAY while a WebSocket is open");
    assert_eq!(after.status(), 200);
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(),
        "still here"
    );
}

/// `send_timeout` over HTTP/2: a stream whose client grants it no window for that long is
/// reset and lets go of its upstream connection, while the connection's other streams carry
/// on; a stream read slowly, but read, gets everything.
#[tokio::test]
async fn a_stalled_http2_stream_is_let_go_after_send_timeout() {
    use http_body_util::BodyExt;
    use std::time::Duration;
    let up = Upstream::start("a").await;
    let toml = one_pool_with(&[&up], "[listener.limits]\nsend_timeout = \"1s\"\n");
    let gw = TestGateway::start(&toml).await;
    let in_flight = async || {
        let s = get(&gw.admin_url("/api/v1/status")).await.json();
        s["pools"][0]["endpoints"][0]["in_flight"].as_u64().unwrap()
    };
    let tcp = tokio::net::TcpStream::connect(gw.addr("client")).await.unwrap();
    // A 64 KiB window per stream, ample for the connection: one stream's stall is its own.
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(16 << 20)
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let get_on = |path: &str| {
        http::Request::get(format!("http://weir.test{path}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let stalled = send.send_request(get_on("/bytes/209715200")).await.unwrap();
    assert_eq!(stalled.status(), 200);
    assert!(eventually(Duration::from_secs(5), async || in_flight().await == 1).await);
    // Never read: the window stays shut, and after send_timeout weir lets the upstream go.
    assert!(
        eventually(Duration::from_secs(20), async || in_flight().await == 0).await,
        "the stalled stream still holds its upstream connection"
    );
    // The same connection still serves.
    let other = send.send_request(get_on("/after")).await.unwrap();
    assert_eq!(other.status(), 200);
    let other = other.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&other).contains("/after"));
    // The stalled stream ends in a reset once read, well short of its 200 MiB.
    let mut body = stalled.into_body();
    let mut read = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match body.frame().await {
                Some(Ok(f)) => read += f.data_ref().map_or(0, |d| d.len()),
                Some(Err(_)) => return true,
                None => return false,
            }
        }
    })
    .await;
    assert_eq!(ended, Ok(true), "read {read} bytes of the stalled stream");

    // 4 MiB read 256 KiB at a time, 300 ms apart: ~4.8 s, far past send_timeout in total.
    let slow = send.send_request(get_on("/bytes/4194304")).await.unwrap();
    let mut body = slow.into_body();
    let (mut got, mut piece) = (0usize, 0usize);
    while let Some(frame) = body.frame().await {
        let n = frame.unwrap().data_ref().map_or(0, |d| d.len());
        got += n;
        piece += n;
        if piece >= 256 * 1024 {
            piece = 0;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(got, 4 * 1024 * 1024);
}

/// A plain CONNECT over HTTP/2 (no `:protocol`: not a WebSocket) gets the gateway's 501, as
/// over HTTP/1.1, and reaches no upstream; the connection's other streams carry on.
#[tokio::test]
async fn a_plain_http2_connect_gets_501_and_reaches_no_upstream() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    let mut send = h2c_sender(gw.addr("client")).await;
    let req = http::Request::connect("elsewhere.example:443")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.expect("an answer");
    assert_eq!(resp.status(), 501);
    assert_eq!(up.requests(), 0);
    let req = http::Request::get("http://weir.test/after")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 200);
}

/// One request over a fresh HTTP/2 connection to `addr`, by the h2 crate's client (which shows
/// interim responses): the interim responses, the final status and the body. With `body`, the
/// request says `Expect: 100-continue` when `expect` and then sends `body` only after a `100`.
async fn h2_interim_exchange(
    addr: std::net::SocketAddr,
    body: Option<&'static [u8]>,
    expect: bool,
) -> (Vec<http::Response<()>>, u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let mut req = http::Request::builder()
        .method(if body.is_some() { "POST" } else { "GET" })
        .uri(format!("http://{addr}/hints"));
    if expect {
        req = req.header("expect", "100-continue");
    }
    let (mut response, mut stream) = send.send_request(req.body(()).unwrap(), body.is_none()).unwrap();
    let mut interim = Vec::new();
    let next_interim = async |response: &mut h2::client::ResponseFuture| {
        let polled = std::future::poll_fn(|cx| response.poll_informational(cx));
        tokio::time::timeout(std::time::Duration::from_secs(10), polled)
            .await
            .expect("no interim or final response within 10 s")
            .map(|r| r.unwrap())
    };
    if let Some(body) = body {
        if expect {
            interim.push(next_interim(&mut response).await.expect("a 100 before the body"));
        }
        stream.send_data(bytes::Bytes::from_static(body), true).unwrap();
    }
    while let Some(more) = next_interim(&mut response).await {
        interim.push(more);
    }
    let resp = response.await.unwrap();
    let status = resp.status().as_u16();
    let mut recv = resp.into_body();
    let mut text = Vec::new();
    while let Some(data) = recv.data().await {
        let data = data.unwrap();
        let _ = recv.flow_control().release_capacity(data.len());
        text.extend_from_slice(&data);
    }
    (interim, status, String::from_utf8_lossy(&text).into_owned())
}

/// The statuses of interim responses, in order.
fn statuses(interim: &[http::Response<()>]) -> Vec<u16> {
    interim.iter().map(|r| r.status().as_u16()).collect()
}

/// An HTTP/1.1 upstream's `103 Early Hints` reaches an HTTP/2 client before the final response,
/// with a request body or without (the body does not hold an HTTP/2 connection as it holds an
/// HTTP/1.1 one); the upstream's `100 Continue` does not (weir answers `Expect` itself).
#[tokio::test]
async fn early_hints_reach_http2_clients_with_or_without_a_body() {
    let up = raw_upstream(|_, _| {
        Act::Reply(vec![
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ])
    })
    .await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    for body in [None, Some(&b"hi"[..])] {
        let (interim, status, text) = h2_interim_exchange(gw.addr("client"), body, false).await;
        assert_eq!(statuses(&interim), [103], "with body {body:?}");
        assert_eq!(interim[0].headers()["link"], "</a.css>; rel=preload");
        assert_eq!((status, text.as_str()), (200, "ok"));
    }
    assert!(
        up.request(1).ends_with("\r\n\r\n2\r\nhi\r\n0\r\n\r\n"),
        "{}",
        up.request(1)
    );
}

/// An HTTP/2 client that sends `Expect: 100-continue` and waits for a `100` before its body (as
/// curl does, for a second) gets one as soon as weir reads the body, as an HTTP/1.1 client does.
#[tokio::test]
async fn an_http2_client_expecting_100_continue_gets_it() {
    let up = raw_upstream(|_, _| Act::Reply(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"])).await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    let (interim, status, text) = h2_interim_exchange(gw.addr("client"), Some(b"payload"), true).await;
    assert_eq!(statuses(&interim), [100]);
    assert_eq!((status, text.as_str()), (200, "ok"));
    assert!(
        up.request(0).ends_with("\r\n\r\n7\r\npayload\r\n0\r\n\r\n"),
        "{}",
        up.request(0)
    );
}

/// An HTTP/2 upstream's `103 Early Hints` reaches HTTP/2 clients and HTTP/1.1 ones.
#[tokio::test]
async fn early_hints_from_an_http2_upstream_reach_the_client() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut conn = h2::server::handshake(tcp).await.unwrap();
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let hint = http::Response::builder()
                        .status(103)
                        .header("link", "</b.js>; rel=preload")
                        .body(())
                        .unwrap();
                    respond.send_informational(hint).unwrap();
                    let ok = http::Response::builder()
                        .header("content-length", "2")
                        .body(())
                        .unwrap();
                    let mut stream = respond.send_response(ok, false).unwrap();
                    stream.send_data(bytes::Bytes::from_static(b"ok"), true).unwrap();
                }
            });
        }
    });
    let gw = TestGateway::start(&pool_config(up, "protocol = \"h2\"\n")).await;
    let (interim, status, text) = h2_interim_exchange(gw.addr("client"), None, false).await;
    assert_eq!(statuses(&interim), [103]);
    assert_eq!(interim[0].headers()["link"], "</b.js>; rel=preload");
    assert_eq!((status, text.as_str()), (200, "ok"));
    let h1 = raw_exchange(
        gw.addr("client"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        h1.starts_with("HTTP/1.1 103 Early Hints\r\nlink: </b.js>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{h1}"
    );
    assert!(h1.ends_with("\r\n\r\nok"), "{h1}");
}
