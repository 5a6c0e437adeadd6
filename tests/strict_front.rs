//! The gateway refuses malformed HTTP/1 itself: its own 4xx, the connection closed, and nothing
//! reaches the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_test_support::*;

async fn gateway(limits: &str) -> (Upstream, TestGateway) {
    let up = Upstream::start("a").await;
    let toml = one_pool_with(&[&up], &format!("[listener.limits]\n{limits}\n"));
    let gw = TestGateway::start(&toml).await;
    (up, gw)
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

const CASES: &[(&str, &str, u16)] = &[
    (
        "CL and TE",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE then CL",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE not chunked",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
        400,
    ),
    (
        "TE chunked then gzip",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        400,
    ),
    (
        "TE list",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "TE on HTTP/1.0",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "CL +1",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx",
        400,
    ),
    (
        "CL -1",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\nx",
        400,
    ),
    (
        "CL two values",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 2\r\n\r\nx",
        400,
    ),
    (
        "CL twice",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        400,
    ),
    (
        "chunk size overflow",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff1\r\nx\r\n0\r\n\r\n",
        400,
    ),
    (
        "obs-fold",
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n",
        400,
    ),
    ("NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n", 400),
    ("CTL in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x1bb\r\n\r\n", 400),
    ("space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400),
    ("missing Host", "GET / HTTP/1.1\r\n\r\n", 400),
    ("duplicate Host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("invalid method", "G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("invalid version", "GET / HTTP/1.7\r\nHost: a\r\n\r\n", 400),
    ("fragment", "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("invalid target byte", "GET /a<b HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    ("invalid query byte", "GET /a?b=<c> HTTP/1.1\r\nHost: a\r\n\r\n", 400),
    // Not malformed, but no tunnel is opened to wherever a client names (a forward proxy's job).
    (
        "CONNECT",
        "CONNECT elsewhere.example:443 HTTP/1.1\r\nHost: elsewhere.example:443\r\n\r\n",
        501,
    ),
];

#[tokio::test]
async fn each_malformed_request_gets_the_gateways_own_4xx_and_never_reaches_upstream() {
    let (up, gw) = gateway("max_headers = 20\nmax_header_bytes = 4096\nmax_uri_bytes = 1024").await;
    let mut cases: Vec<(String, String, u16)> = CASES
        .iter()
        .map(|(n, r, s)| (n.to_string(), r.to_string(), *s))
        .collect();
    let many: String = (0..21).map(|i| format!("X-{i}: v\r\n")).collect();
    cases.push((
        "too many headers".into(),
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"),
        431,
    ));
    cases.push((
        "header bytes".into(),
        format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(5000)),
        431,
    ));
    cases.push((
        "URI too long".into(),
        format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(2000)),
        414,
    ));
    for (name, raw, want) in &cases {
        let response = raw_exchange(gw.addr("client"), raw.as_bytes()).await;
        assert_eq!(status_of(&response), *want, "{name}: {response:?}");
        assert!(response.contains("connection: close"), "{name}: {response:?}");
        assert!(
            response.contains("via: 1.1 weir"),
            "{name}: the gateway answered, not hyper or the upstream"
        );
    }
    assert_eq!(up.requests(), 0, "a malformed request reached the upstream");
    assert_eq!(up.connections(), 0);
    // The gateway is still fine.
    assert_eq!(get(&gw.url("client", "/")).await.status, 200);
}

#[tokio::test]
async fn a_refused_request_after_a_good_one_on_the_same_connection() {
    let (up, gw) = gateway("").await;
    let raw = "GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let response = raw_exchange(gw.addr("client"), raw.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let second = response
        .find("HTTP/1.1 400")
        .unwrap_or_else(|| panic!("no 400 after the 200: {response}"));
    assert!(second > 0);
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn chunked_and_pipelined_requests_are_framed_correctly() {
    let (up, gw) = gateway("").await;
    // Spaces before an extension's `;` are the grammar's BWS (RFC 9112 §7.1.1): accepted.
    let raw = "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6 \t;z\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let response = raw_exchange(gw.addr("client"), raw.as_bytes()).await;
    assert_eq!(response.matches("HTTP/1.1 200").count(), 2, "{response}");
    assert!(response.contains("\"body_len\":11"), "{response}");
    assert_eq!(up.requests(), 2);
}

#[tokio::test]
async fn body_over_max_body_bytes_gets_413() {
    let (up, gw) = gateway("max_body_bytes = \"1KiB\"").await;
    let raw = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n{}",
        "x".repeat(2000)
    );
    let response = raw_exchange(gw.addr("client"), raw.as_bytes()).await;
    assert_eq!(status_of(&response), 413, "{response}");
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn slowloris_is_cut_at_header_timeout() {
    let (up, gw) = gateway("header_timeout = \"500ms\"").await;
    let mut s = TcpStream::connect(gw.addr("client")).await.unwrap();
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    // Keep trickling header bytes; the gateway must cut us at the deadline anyway.
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            n = s.read(&mut buf) => {
                let n = n.unwrap_or(0);
                if n == 0 { break; }
                out.extend_from_slice(&buf[..n]);
            }
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if s.write_all(b"X-Slow: 1\r\n").await.is_err() { break; }
            }
        }
        assert!(start.elapsed() < Duration::from_secs(5), "never cut");
    }
    let elapsed = start.elapsed();
    let response = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&response), 408, "{response}");
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn idle_connection_without_a_request_is_closed_at_header_timeout() {
    let (_up, gw) = gateway("header_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(gw.addr("client")).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(start.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn slow_body_is_cut_at_body_timeout() {
    let (up, gw) = gateway("body_timeout = \"400ms\"").await;
    let mut s = TcpStream::connect(gw.addr("client")).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nfirst-bytes")
        .await
        .unwrap();
    let start = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("never cut");
    let elapsed = start.elapsed();
    let response = String::from_utf8_lossy(&out);
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert_eq!(status_of(&response), 408, "{response}");
    // The upstream may have seen the request start, but never a complete body.
    assert!(up.body_bytes() <= 11);
}

#[tokio::test]
async fn keep_alive_connection_is_closed_after_idle_timeout() {
    let (_up, gw) = gateway("idle_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(gw.addr("client")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("idle connection never closed");
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert!(start.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn max_connections_pauses_accept_without_failing() {
    let (_up, gw) = gateway("max_connections = 2").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr("client")).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf).await.unwrap();
        held.push(s);
    }
    // A third connection is accepted by the kernel but not served while two are open.
    let third = tokio::spawn({
        let url = gw.url("client", "/");
        async move { get(&url).await.status }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !third.is_finished(),
        "the third connection was served above max_connections"
    );
    held.clear();
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("never served")
        .unwrap();
    assert_eq!(status, 200);
}

/// An HTTP/2 request with the given body, over h2c: the reply's status and body text.
async fn h2_request(
    req: http::request::Builder,
    body: http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>,
) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = req.body(body).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .expect("no answer within 5 s")
        .unwrap();
    let reply = collect(resp).await;
    (reply.status.as_u16(), reply.text())
}

fn frames(
    pieces: usize,
    size: usize,
    then_stall: bool,
) -> http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error> {
    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    let piece = bytes::Bytes::from(vec![b'x'; size]);
    let data = futures_util::stream::iter((0..pieces).map(move |_| Ok(hyper::body::Frame::data(piece.clone()))));
    let stall = futures_util::stream::pending().take(usize::from(then_stall));
    BodyExt::boxed(http_body_util::StreamBody::new(data.chain(stall)))
}

/// HTTP/2 requests get the limits HTTP/1 ones get (hyper's server applies only the header
/// list size): before this, an h2 client's body passed `max_body_bytes` whole, and its `:path`
/// passed `max_uri_bytes`.
#[tokio::test]
async fn http2_requests_get_the_same_limits() {
    let (up, gw) = gateway("max_body_bytes = \"1KiB\"\nmax_uri_bytes = 64\nmax_headers = 8").await;
    let url = |path: &str| gw.url("client", path);
    let post = || http::Request::post(url("/up"));
    // Declared too large: refused before anything is forwarded.
    let full = |n: usize| {
        use http_body_util::BodyExt;
        http_body_util::Full::new(bytes::Bytes::from(vec![b'x'; n]))
            .map_err(|never| match never {})
            .boxed()
    };
    let (status, body) = h2_request(post(), full(2000)).await;
    assert_eq!(
        (status, body.as_str()),
        (413, "payload too large: request body too large\n")
    );
    assert_eq!(up.requests(), 0);
    // Of unknown length: cut off once more than the limit has arrived.
    let (status, _) = h2_request(post(), frames(8, 512, false)).await;
    assert_eq!(status, 413);
    assert!(
        up.body_bytes() <= 1024,
        "{} bytes reached the upstream",
        up.body_bytes()
    );
    // Within the limit, either way: forwarded whole.
    assert_eq!(h2_request(post(), full(1024)).await.0, 200);
    assert_eq!(h2_request(post(), frames(2, 512, false)).await.0, 200);
    // URI and header count.
    let long = format!("/{}", "a".repeat(80));
    assert_eq!(h2_request(http::Request::get(url(&long)), full(0)).await.0, 414);
    let mut many = http::Request::get(url("/"));
    for i in 0..10 {
        many = many.header(format!("x-h{i}"), "1");
    }
    assert_eq!(h2_request(many, full(0)).await.0, 431);
    assert_eq!(h2_request(http::Request::get(url("/")), full(0)).await.0, 200);
}

#[tokio::test]
async fn slow_http2_body_is_cut_at_body_timeout() {
    let (up, gw) = gateway("body_timeout = \"400ms\"").await;
    let start = Instant::now();
    let (status, _) = h2_request(http::Request::post(gw.url("client", "/up")), frames(1, 100, true)).await;
    let elapsed = start.elapsed();
    assert_eq!(status, 408);
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert!(up.body_bytes() <= 100);
}

/// A chunk whose size line takes the body past `max_body_bytes` is refused at that line: none
/// of its data goes on, and the client need not send a limit's worth first (before, weir
/// waited for more than the limit to arrive, here until the body timeout).
#[tokio::test]
async fn a_chunk_announced_past_max_body_bytes_is_refused_at_its_size_line() {
    let (up, gw) = gateway("max_body_bytes = \"1KiB\"").await;
    let mut s = TcpStream::connect(gw.addr("client")).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    // The request is on its way upstream (its first chunk passed the check made before sending).
    assert!(eventually(Duration::from_secs(5), async || up.requests() == 1).await);
    let start = Instant::now();
    s.write_all(b"100000\r\n0123456789").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let response = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&response), 413, "{response}");
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert!(up.body_bytes() <= 5, "{} bytes reached the upstream", up.body_bytes());
}
