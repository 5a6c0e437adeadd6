//! weir's own upstream HTTP/1.1 client against scripted raw upstreams: every framing an
//! upstream may use, the ones it must not, and when a connection may be reused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_test_support::*;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn chunked_response_in_pieces_with_trailers_is_decoded_and_the_connection_reused() {
    let up = raw_upstream(|_, _| {
        Act::Reply(vec![
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-a: 1\r\n\r\n5\r\nhel",
            b"lo\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n",
            b"\r\n",
        ])
    })
    .await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    for _ in 0..3 {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello world");
        assert_eq!(r.headers["x-a"], "1");
    }
    assert_eq!(
        up.connections(),
        1,
        "a completed chunked body leaves the connection reusable"
    );
}

#[tokio::test]
async fn close_delimited_response_is_read_to_the_end_and_not_reused() {
    let up = raw_upstream(|_, _| Act::ReplyClose(vec![b"HTTP/1.0 200 OK\r\n\r\nuntil ", b"close"])).await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    for _ in 0..2 {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "until close");
    }
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn both_framings_decode_as_chunked_without_the_length_and_close() {
    let up = raw_upstream(|_, _| {
        Act::Reply(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ])
    })
    .await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    for _ in 0..2 {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
        assert!(r.headers.get("content-length").is_none_or(|v| v == "2"));
    }
    assert_eq!(
        up.connections(),
        2,
        "a message framed two ways must not leave its connection reusable"
    );
}

#[tokio::test]
async fn malformed_response_heads_give_502() {
    let bad: [&'static [u8]; 5] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ];
    for reply in bad {
        let up = raw_upstream(move |_, _| Act::ReplyClose(vec![reply])).await;
        let gw = TestGateway::start(&pool_config(up.addr, "[pool.retry]\nmax_attempts = 1\n")).await;
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(r.status, 502, "for {:?}", String::from_utf8_lossy(reply));
        assert_eq!(
            r.text(),
            "upstream sent an invalid response\n",
            "for {:?}",
            String::from_utf8_lossy(reply)
        );
        assert_invalid_counted(&gw, up.addr).await;
    }
    // A head cut short by the close is the upstream going away, not bad HTTP.
    let up = raw_upstream(|_, _| Act::ReplyClose(vec![b"HTTP/1.1 200 OK\r\ncontent-le"])).await;
    let gw = TestGateway::start(&pool_config(up.addr, "[pool.retry]\nmax_attempts = 1\n")).await;
    let r = get(&gw.url("client", "/")).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (502, "upstream closed the connection before responding\n")
    );
}

/// The attempt that met an invalid response is counted as one (the log line is `cli`'s to check).
async fn assert_invalid_counted(gw: &TestGateway, endpoint: std::net::SocketAddr) {
    let metrics = get(&gw.admin_url("/metrics")).await.text();
    let line =
        format!("weir_upstream_attempts_total{{pool=\"app\",endpoint=\"{endpoint}\",outcome=\"invalid_response\"}} 1");
    assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
}

#[tokio::test]
async fn oversized_response_head_gives_502() {
    let up = raw_upstream(|_, _| {
        let big: &'static str = Box::leak(format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "a".repeat(70_000)).into());
        Act::ReplyClose(vec![big.as_bytes()])
    })
    .await;
    let gw = TestGateway::start(&pool_config(up.addr, "[pool.retry]\nmax_attempts = 1\n")).await;
    let r = get(&gw.url("client", "/")).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (502, "upstream sent an invalid response\n")
    );
    assert_invalid_counted(&gw, up.addr).await;
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let up = raw_upstream(|_, _| {
        Act::Reply(vec![
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n",
            OK,
        ])
    })
    .await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    let r = get(&gw.url("client", "/")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
}

/// An upstream's `103 Early Hints` reaches an HTTP/1.1 client before the final response, as RFC
/// 9110 §15.2 asks of a proxy, with a request body (fixed or chunked, read whole before the
/// upstream answers) or without; its `100 Continue` does not (weir answers `Expect` itself). An
/// HTTP/1.0 client (no 1xx in its protocol) gets the final response alone.
#[tokio::test]
async fn early_hints_reach_http11_clients_before_the_response() {
    let up = raw_upstream(|_, _| {
        Act::Reply(vec![
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n",
            OK,
        ])
    })
    .await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    let r = raw_exchange(
        gw.addr("client"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"),
        "{r}"
    );
    assert!(r.ends_with("\r\n\r\nok") && !r.contains("100 Continue"), "{r}");
    let r10 = raw_exchange(gw.addr("client"), b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert!(r10.starts_with("HTTP/1.1 200 OK\r\n") && r10.ends_with("ok"), "{r10}");
    let posts: [&[u8]; 2] = [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    ];
    for post in posts {
        let with_body = raw_exchange(gw.addr("client"), post).await;
        assert!(
            with_body.starts_with("HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"),
            "{with_body}"
        );
        assert!(with_body.ends_with("\r\n\r\nok"), "{with_body}");
    }
    // Pipelined behind bodies: each response has its hint, in order, on one connection.
    let pipelined = raw_exchange(
        gw.addr("client"),
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiPOST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        pipelined.matches("HTTP/1.1 103 Early Hints\r\n").count(),
        3,
        "{pipelined}"
    );
    assert_eq!(pipelined.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{pipelined}");
    assert!(pipelined.ends_with("\r\n\r\nok"), "{pipelined}");
    let h2 = h2c_get(&gw.url("client", "/")).await;
    assert_eq!((h2.status.as_u16(), h2.text()), (200, "ok".to_string()));
}

#[tokio::test]
async fn bodiless_responses_do_not_wait_for_a_body_and_keep_the_connection() {
    let up = raw_upstream(|i, _| match i % 3 {
        // A HEAD response announces the length of the GET it stands for.
        0 => Act::Reply(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"]),
        1 => Act::Reply(vec![b"HTTP/1.1 204 No Content\r\n\r\n"]),
        _ => Act::Reply(vec![b"HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n\r\n"]),
    })
    .await;
    let gw = TestGateway::start(&pool_config(up.addr, "[pool.timeouts]\nrequest = \"2s\"\n")).await;
    for round in 0..2 {
        let head = request(
            http::Request::head(gw.url("client", "/"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
        assert_eq!(head.status, 200, "round {round}");
        assert_eq!(head.headers["content-length"], "1000");
        assert!(head.body.is_empty());
        assert_eq!(get(&gw.url("client", "/")).await.status, 204);
        assert_eq!(get(&gw.url("client", "/")).await.status, 304);
    }
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn bytes_behind_a_response_are_never_served_to_the_next_request() {
    // A response followed by a second, unasked-for one (response splitting): the connection
    // must be dropped, not pooled with the extra response waiting in it.
    let up = raw_upstream(|i, _| {
        if i == 0 {
            Act::Reply(vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged",
            ])
        } else {
            Act::Reply(vec![OK])
        }
    })
    .await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    assert_eq!(get(&gw.url("client", "/")).await.text(), "ok");
    let second = get(&gw.url("client", "/")).await;
    assert_eq!(second.text(), "ok");
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn an_upstream_closing_keep_alive_connections_silently_costs_no_request() {
    // Keep-alive by the headers, but the upstream closes after every response: the pooled
    // connection is found closed at checkout (or the idempotent request is retried).
    let up = raw_upstream(|_, _| Act::ReplyClose(vec![OK])).await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    for i in 0..20 {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(up.connections(), 20);
}

/// The keep-alive race made certain: the upstream answers the first request on each connection
/// and closes the next one's, having read it, without a byte of answer (an upstream whose idle
/// timeout fires as weir sends).
async fn closes_every_reused_connection() -> Raw {
    raw_upstream(|i, _| {
        if i % 2 == 1 {
            Act::EarlyClose(b"")
        } else {
            Act::Reply(vec![OK])
        }
    })
    .await
}

/// No retries and a single failure taking the endpoint out: only the resend on a new
/// connection can answer, and only if the race is not held against the endpoint.
const NO_SECOND_CHANCE: &str =
    "[pool.retry]\nmax_attempts = 1\n[pool.passive]\nmax_fails = 1\nfail_timeout = \"60s\"\n";

#[tokio::test]
async fn a_pooled_connection_closed_as_it_is_taken_is_resent_on_a_new_one() {
    let up = closes_every_reused_connection().await;
    let gw = TestGateway::start(&pool_config(up.addr, NO_SECOND_CHANCE)).await;
    for i in 0..5 {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(up.connections(), 5, "one new connection per raced request");
    let metrics = get(&gw.admin_url("/metrics")).await.text();
    let stale = format!(
        "weir_upstream_attempts_total{{pool=\"app\",endpoint=\"{}\",outcome=\"stale_connection\"}} 4",
        up.addr
    );
    assert!(metrics.contains(&stale), "{stale} not in\n{metrics}");
}

#[tokio::test]
async fn a_post_is_not_resent_when_its_pooled_connection_closes_unanswered() {
    let up = closes_every_reused_connection().await;
    let gw = TestGateway::start(&pool_config(up.addr, NO_SECOND_CHANCE)).await;
    assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    // The upstream may have acted on it: a non-idempotent request that left weir is not sent
    // twice, even one without a body (a streamed body could not go twice anyway).
    let r = request(
        http::Request::post(gw.url("client", "/order"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(up.connections(), 1, "the POST went out once");
}

/// Node.js (5 s by default), Apache and others announce when they close an idle connection
/// (`Keep-Alive: timeout=N`). A request sent just as that happens meets the close on its way,
/// and a POST cannot go again: it gets a 502 (found: 10 of 150 POSTs, each sent after the
/// upstream's idle timeout of 300 ms). So a connection idle for nearly that long is not reused.
#[tokio::test]
async fn a_connection_is_not_reused_once_it_nears_the_upstreams_announced_idle_timeout() {
    async fn connections_for_two_posts(keep_alive: &'static [u8], idle: Duration) -> usize {
        let up = raw_upstream(move |_, _| Act::Reply(vec![keep_alive])).await;
        let gw = TestGateway::start(&pool_config(up.addr, "")).await;
        for i in 0..2 {
            if i == 1 {
                // The idle time under test, not a wait for something to happen.
                tokio::time::sleep(idle).await;
            }
            let post = http::Request::post(gw.url("client", "/order")).body(Full::new(Bytes::from_static(b"x")));
            let r = request(post.unwrap()).await;
            assert_eq!((r.status.as_u16(), r.text()), (200, "ok".to_string()));
        }
        up.connections()
    }
    const ONE_SECOND: &[u8] = b"HTTP/1.1 200 OK\r\nkeep-alive: timeout=1, max=100\r\ncontent-length: 2\r\n\r\nok";
    const FIVE_SECONDS: &[u8] = b"HTTP/1.1 200 OK\r\nkeep-alive: timeout=5\r\ncontent-length: 2\r\n\r\nok";
    const NO_IDLING: &[u8] = b"HTTP/1.1 200 OK\r\nkeep-alive: timeout=0\r\ncontent-length: 2\r\n\r\nok";
    let idle = Duration::from_millis(850);
    assert_eq!(
        connections_for_two_posts(ONE_SECOND, idle).await,
        2,
        "850 ms idle of 1 s: a new connection"
    );
    assert_eq!(
        connections_for_two_posts(FIVE_SECONDS, idle).await,
        1,
        "850 ms idle of 5 s: reused"
    );
    assert_eq!(
        connections_for_two_posts(OK, idle).await,
        1,
        "no announced timeout: reused"
    );
    assert_eq!(
        connections_for_two_posts(NO_IDLING, Duration::ZERO).await,
        2,
        "timeout=0: never reused"
    );
}

/// An upstream that closes connections idle for `timeout` without announcing it (gunicorn,
/// uvicorn and Go's server send no `Keep-Alive: timeout`), its close made to cross weir's
/// next request every time: a request arriving on a connection idle that long is read and
/// dropped without an answer. Counts connections and dropped requests.
async fn closes_idle_connections_unannounced(
    timeout: Duration,
) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (conns, dropped) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, d) = (conns.clone(), dropped.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let d = d.clone();
            tokio::spawn(async move {
                let mut last_answer = std::time::Instant::now();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // A head, and its body by its Content-Length.
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                            let body = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                            if buf.len() >= i + 4 + body {
                                break i + 4 + body;
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    buf.drain(..end);
                    if last_answer.elapsed() >= timeout {
                        d.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    if stream.write_all(OK).await.is_err() {
                        return;
                    }
                    last_answer = std::time::Instant::now();
                }
            });
        }
    });
    (addr, conns, dropped)
}

/// An upstream that closes idle connections without announcing when: a POST sent on one as it
/// closes cannot go again and got a 502 (as from nginx). Once weir has seen the upstream close
/// one, a request that could not go again takes only a connection younger than the longest
/// idle time one has been seen to survive; idempotent requests reuse any (they go again on a
/// new connection when they meet the close).
#[tokio::test]
async fn a_post_is_kept_off_connections_an_upstream_closing_them_unannounced_may_have_closed() {
    let (addr, conns, dropped) = closes_idle_connections_unannounced(Duration::from_secs(1)).await;
    let gw = TestGateway::start(&pool_config(addr, "")).await;
    let post = || {
        let req = http::Request::post(gw.url("client", "/order")).body(Full::new(Bytes::from_static(b"x")));
        request(req.unwrap())
    };
    let limit = async || {
        get(&gw.admin_url("/api/v1/status")).await.json()["pools"][0]["endpoints"][0]["unreplayable_idle_limit_ms"]
            .clone()
    };
    assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    assert!(limit().await.is_null(), "never seen closing: no limit");
    // The idle times below are what is under test, not waits for something to happen.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The GET meets the close and goes again on a new connection; weir now knows.
    assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    assert_eq!((conns.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst)), (2, 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A connection idle for 300 ms carries a GET: it survived that long.
    assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    // Young enough for a POST: reused.
    let r = post().await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "ok".to_string()));
    assert_eq!(conns.load(Ordering::SeqCst), 2, "the POST reused the pooled connection");
    let seen = limit().await.as_u64().unwrap();
    assert!((225..=825).contains(&seen), "a quarter below 300-1100 ms: {seen}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Older than any seen to survive: the POST goes on a new connection, not to its loss.
    let r = post().await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "ok".to_string()));
    assert_eq!((conns.load(Ordering::SeqCst), dropped.load(Ordering::SeqCst)), (3, 1));
    // The pooled connection is still there for a GET, which meets the close and goes again.
    assert_eq!(get(&gw.url("client", "/")).await.status, 200);
}

/// An upstream that stops sending inside a body (a hung process, a lost network path with no
/// FIN) would hold the client's response, and both connections, for as long as the client
/// waits: `timeouts.body` cuts the response after that long without a byte, as nginx's
/// `proxy_read_timeout` does.
#[tokio::test]
async fn an_upstream_stalling_inside_its_body_is_cut_off_after_timeouts_body() {
    let up = raw_upstream(|_, _| Act::Reply(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"])).await;
    let gw = TestGateway::start(&pool_config(up.addr, "[pool.timeouts]\nbody = \"300ms\"\n")).await;
    let started = std::time::Instant::now();
    // Reads until weir closes the connection (or 10 s pass).
    let r = raw_exchange(gw.addr("client"), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nhalf"), "{r}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let status = get(&gw.admin_url("/api/v1/status")).await.json();
    assert_eq!(status["pools"][0]["endpoints"][0]["in_flight"], 0, "{status}");
}

/// `timeouts.request` bounds the wait for a response once the request has gone: a slow upload
/// (here 1.2 s of body against a 400 ms limit) is not cut off while the upstream takes it, and
/// its time waiting for the client is the client's (`body_timeout`). Before, the limit ran
/// from the first byte sent and such an upload got a 504.
#[tokio::test]
async fn a_slow_upload_is_not_cut_off_by_the_response_timeout() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&pool_config(up.addr, "[pool.timeouts]\nrequest = \"400ms\"\n")).await;
    let r = post_trickle(&gw.url("client", "/upload"), 8, Duration::from_millis(150)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["body_len"], 8 * 1024);
}

/// An upstream that stops taking a request body (and never answers) still gets a 504 about
/// `timeouts.request` after it last took some.
#[tokio::test]
async fn an_upstream_that_stops_reading_a_body_times_out() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            kept.push(s);
        }
    });
    let gw = TestGateway::start(&pool_config(
        addr,
        "[pool.timeouts]\nrequest = \"300ms\"\n[pool.retry]\nmax_attempts = 1\n",
    ))
    .await;
    let mut s = tokio::net::TcpStream::connect(gw.addr("client")).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: a\r\ncontent-length: 268435456\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let piece = vec![b'b'; 64 * 1024];
        while wr.write_all(&piece).await.is_ok() {}
    });
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    writer.abort();
    held.abort();
}

/// An upgrade to h2c is not carried: tunnelled, it would let the client speak HTTP/2 straight
/// to the upstream on that connection, past routing and every policy ("h2c smuggling"). The
/// request goes on as a plain one, without `Upgrade`, `Connection` or `HTTP2-Settings`, here to
/// an upstream that would have switched. A WebSocket offered beside h2c is still carried.
#[tokio::test]
async fn an_upgrade_to_h2c_is_not_carried() {
    const SWITCH: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n";
    let up = raw_upstream(|_, head| {
        if head.to_ascii_lowercase().contains("upgrade: h2c") {
            Act::ReplyClose(vec![SWITCH])
        } else {
            Act::Reply(vec![OK])
        }
    })
    .await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    let smuggle = b"GET /admin HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
                    HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nConnection: close\r\n\r\n";
    let r = raw_exchange(gw.addr("client"), smuggle).await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok"), "{r}");
    let seen = up.request(0).to_ascii_lowercase();
    for gone in ["upgrade", "http2-settings"] {
        assert!(!seen.contains(gone), "{gone} reached the upstream: {seen}");
    }
    let both = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(2), raw_exchange(gw.addr("client"), both)).await;
    let seen = up.request(1).to_ascii_lowercase();
    assert!(seen.contains("upgrade: websocket\r\n"), "{seen}");
}

#[tokio::test]
async fn truncated_body_breaks_the_client_response_instead_of_completing_it() {
    let up = raw_upstream(|_, _| Act::ReplyClose(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"])).await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    let out = raw_exchange(gw.addr("client"), b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    // The client sees the connection end (hyper may not flush what it had buffered): never
    // a complete-looking response.
    assert!(
        out.is_empty() || (out.starts_with("HTTP/1.1 200") && out.ends_with("\r\n\r\nhalf")),
        "{out:?}"
    );
}

#[tokio::test]
async fn request_bodies_are_framed_for_the_upstream() {
    let up = raw_upstream(|_, _| Act::Reply(vec![OK])).await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    // A length from the client goes up as a length.
    let r = request(
        http::Request::post(gw.url("client", "/len"))
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = up.request(0).to_ascii_lowercase();
    assert!(
        seen.contains("content-length: 3\r\n") && seen.ends_with("\r\n\r\nabc"),
        "{seen}"
    );
    assert!(!seen.contains("transfer-encoding"), "{seen}");
    // A chunked client body goes up chunked, re-framed by weir.
    let out = raw_exchange(
        gw.addr("client"),
        b"POST /chunked HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = up.request(1).to_ascii_lowercase();
    assert!(seen.contains("transfer-encoding: chunked\r\n"), "{seen}");
    assert!(!seen.contains("content-length"), "{seen}");
    assert!(seen.ends_with("\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "{seen}");
    // An empty POST says so.
    let r = request(
        http::Request::post(gw.url("client", "/empty"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(up.request(2).to_ascii_lowercase().contains("content-length: 0\r\n"));
    assert_eq!(up.connections(), 1);
}

#[tokio::test]
async fn an_early_answer_to_a_streamed_body_reaches_the_client() {
    // The upstream refuses the body without reading it (as servers do with 413) and closes.
    let up = raw_upstream(|_, _| {
        Act::EarlyClose(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\nconnection: close\r\n\r\ntoo big\n")
    })
    .await;
    let gw = TestGateway::start(&pool_config(up.addr, "[pool.retry]\nmax_attempts = 1\n")).await;
    let mut s = TcpStream::connect(gw.addr("client")).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    // Part of the body; the rest never comes, yet the client gets the upstream's answer.
    s.write_all(&[b'x'; 1000]).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.ends_with("too big\n"), "{out}");
}

#[tokio::test]
async fn expect_continue_body_flows_once_the_client_is_told_to_send_it() {
    // The upstream reads the body without an interim answer of its own; the client must still be
    // told to send it, and the body must arrive whole.
    let up = raw_upstream(|_, _| Act::Reply(vec![OK])).await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    let mut s = TcpStream::connect(gw.addr("client")).await.unwrap();
    s.write_all(
        b"PUT /x HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // weir asks the client for the body (hyper sends 100 when the proxy starts reading it).
    let mut first = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut first))
        .await
        .expect("no 100 Continue from weir")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 100"),
        "{:?}",
        &first[..n]
    );
    s.write_all(b"hello").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("HTTP/1.1 200"), "{out}");
    let seen = up.request(0).to_ascii_lowercase();
    assert!(seen.ends_with("\r\n\r\nhello"), "{seen}");
}

#[tokio::test]
async fn bytes_right_behind_a_101_reach_the_client() {
    // The upstream switches protocols and speaks first in the same write.
    let up = raw_upstream(|_, _| {
        Act::Reply(vec![
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\nhello from upstream",
        ])
    })
    .await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    let mut s = TcpStream::connect(gw.addr("client")).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&got).contains("hello from upstream") {
        let mut chunk = [0u8; 1024];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!("stream ended early ({other:?}): {:?}", String::from_utf8_lossy(&got)),
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
}

/// A chunked response's trailers from an HTTP/1.1 upstream reach an HTTP/1.1 client in the
/// trailer section and an HTTP/2 client as trailers; framing and connection fields do not.
#[tokio::test]
async fn chunked_response_trailers_reach_http1_and_http2_clients() {
    const WITH_TRAILERS: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\ngrpc-status: 0\r\nContent-Length: 99\r\nx-sum: 42\r\n\r\n";
    let up = raw_upstream(|_, _| Act::Reply(vec![WITH_TRAILERS])).await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    let raw = raw_exchange(
        gw.addr("client"),
        b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (_, body) = raw.split_once("\r\n\r\n").unwrap();
    assert_eq!(body, "3\r\nabc\r\n0\r\ngrpc-status: 0\r\nx-sum: 42\r\n\r\n", "{raw}");

    let mut send = h2c_sender(gw.addr("client")).await;
    let req = http::Request::get("http://weir.test/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let collected = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers over HTTP/2");
    assert_eq!(collected.to_bytes(), "abc");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-sum"], "42");
    assert!(trailers.get("content-length").is_none());
}

/// An HTTP/2 client's request body: data, then the trailer field `x-trailer: abc`.
type DataThenTrailer = http_body_util::StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>>,
>;

/// Sends `req` with `data` and the trailer `x-trailer: abc` as its body; the response's status.
async fn send_with_trailer(
    send: &mut hyper::client::conn::http2::SendRequest<DataThenTrailer>,
    req: http::request::Builder,
    data: &[u8],
) -> http::StatusCode {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-trailer", http::HeaderValue::from_static("abc"));
    let frames = vec![
        Ok(hyper::body::Frame::data(Bytes::copy_from_slice(data))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let req = req
        .body(http_body_util::StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    resp.status()
}

/// A request's trailer fields reach an HTTP/1.1 upstream in the last chunk: an HTTP/1.1
/// client's from its chunked body, an HTTP/2 client's (a body without a length) from its
/// trailers. Framing and routing fields among them do not.
#[tokio::test]
async fn request_trailers_reach_the_upstream_in_the_last_chunk() {
    let up = raw_upstream(|_, _| Act::Reply(vec![OK])).await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    let out = raw_exchange(
        gw.addr("client"),
        b"POST /h1 HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 42\r\ncontent-length: 9\r\nhost: evil\r\nx-other: o\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = up.request(0).to_ascii_lowercase();
    assert!(
        seen.ends_with("\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 42\r\nx-other: o\r\n\r\n"),
        "{seen}"
    );

    let mut send = h2c_sender(gw.addr("client")).await;
    let status = send_with_trailer(&mut send, http::Request::post("http://weir.test/h2"), b"hello").await;
    assert_eq!(status, 200);
    let seen = up.request(1).to_ascii_lowercase();
    assert!(seen.contains("transfer-encoding: chunked\r\n"), "{seen}");
    assert!(
        seen.ends_with("\r\n\r\n5\r\nhello\r\n0\r\nx-trailer: abc\r\n\r\n"),
        "{seen}"
    );
}

/// An HTTP/2 client's request with a `content-length` and trailers: the trailers reach an
/// HTTP/1.1 upstream when weir knows of them before the head goes out, in a chunked body
/// instead of the length. It knows when it buffered the body (a small idempotent request,
/// kept for a retry) or when the head announces them (`Trailer`). Otherwise the body goes with
/// its length and the trailers are dropped, as RFC 9110 §6.5.1 allows.
#[tokio::test]
async fn request_trailers_of_a_body_with_a_length_reach_the_upstream_when_known() {
    let up = raw_upstream(|_, _| Act::Reply(vec![OK])).await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    let mut send = h2c_sender(gw.addr("client")).await;
    let big = "a".repeat(20_000);
    let cases: [(&str, &str, Option<&str>, &str); 4] = [
        ("PUT", "/buffered", None, "hello"),
        ("PUT", "/buffered-big", None, &big),
        ("POST", "/announced", Some("x-trailer"), "hello"),
        ("POST", "/unannounced", None, "hello"),
    ];
    for (i, (method, path, announced, body)) in cases.into_iter().enumerate() {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("http://weir.test{path}"))
            .header("content-length", body.len());
        if let Some(names) = announced {
            req = req.header("trailer", names);
        }
        assert_eq!(send_with_trailer(&mut send, req, body.as_bytes()).await, 200, "{path}");
        let seen = up.request(i).to_ascii_lowercase();
        if path == "/unannounced" {
            assert!(seen.contains("content-length: 5\r\n"), "{seen}");
            assert!(seen.ends_with("\r\n\r\nhello"), "{seen}");
        } else {
            assert!(seen.contains("transfer-encoding: chunked\r\n"), "{seen}");
            assert!(!seen.contains("content-length"), "{seen}");
            let chunked = format!("\r\n\r\n{:x}\r\n{body}\r\n0\r\nx-trailer: abc\r\n\r\n", body.len());
            assert!(seen.ends_with(&chunked), "{path}: {}", &seen[..seen.len().min(400)]);
        }
    }
}

/// An HTTP/2 client's WebSocket goes to an HTTP/1.1 upstream with a key of weir's: a `101`
/// whose `Sec-WebSocket-Accept` does not answer it is no WebSocket, and the client gets a 502.
#[tokio::test]
async fn a_switch_without_the_right_accept_key_is_refused_to_an_http2_client() {
    let up = raw_upstream(|_, _| {
        Act::Reply(vec![
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: bm90IHRoZSBhbnN3ZXI=\r\n\r\n",
        ])
    })
    .await;
    let gw = TestGateway::start(&pool_config(up.addr, "")).await;
    let (head, ws) = h2_websocket(gw.addr("client"), "/ws", None).await;
    assert_eq!(head.status, 502, "{head:?}");
    assert!(ws.is_none());
    let seen = up.request(0).to_ascii_lowercase();
    assert!(seen.starts_with("get /ws http/1.1\r\n"), "{seen}");
    assert!(seen.contains("sec-websocket-key: "), "{seen}");
}
