//! Broken upstream responses: an upstream answers with a response whose bytes have been
//! replaced, inserted or deleted here and there, then closes. Whatever it sent, the client (a
//! strict hyper client, over HTTP/1.1 and HTTP/2) gets a well-formed response within a bound: the upstream's own status,
//! or the gateway's 502; never a status the upstream did not send, never bytes left over for a
//! next response, and the gateway does not panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_test_support::*;

// The generators of weir-core's codec property tests (broken messages), shared by path: they
// live in weir-core's test build, which integration tests cannot reach.
#[allow(dead_code)]
#[path = "../crates/weir-core/src/http1_gen.rs"]
mod http1_gen;

/// A small response framed by a length, by chunks or by the close, sometimes after an interim
/// `100 Continue`.
fn response() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        200u16..600,
        prop::collection::vec(("x-[a-z]{1,8}", "[!-~]{0,16}"), 0..4),
        prop::collection::vec(any::<u8>(), 0..64),
        0u8..3,
    )
        .prop_map(|(interim, status, fields, body, framing)| {
            let mut r = Vec::new();
            if interim {
                r.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            }
            r.extend_from_slice(format!("HTTP/1.1 {status} Something\r\n").as_bytes());
            for (n, v) in fields {
                r.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            match framing {
                0 => http1_gen::frame_body(&mut r, &body, None),
                1 => http1_gen::frame_body(&mut r, &body, Some(16)),
                _ => {
                    r.extend_from_slice(b"Connection: close\r\n\r\n");
                    r.extend_from_slice(&body);
                }
            }
            r
        })
}

/// An upstream that reads a request head, writes whatever `reply` holds now, and closes.
async fn scripted_upstream(reply: Arc<Mutex<Vec<u8>>>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let reply = reply.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
                // Until the gateway closes its side, so the close is a FIN, not a reset.
                let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            });
        }
    });
    addr
}

/// The statuses of every response head at a line start in `bytes` (what the upstream said).
fn statuses_sent(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.")
        .filter(|(at, _)| *at == 0 || text[..*at].ends_with('\n'))
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

/// What hyper's own client makes of `bytes` as the answer to a GET: the reference a relayed
/// response is compared with.
async fn reference(bytes: &[u8]) -> Result<(u16, Bytes), String> {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let bytes = bytes.to_vec();
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        let _ = server.read(&mut buf).await;
        let _ = server.write_all(&bytes).await;
        let _ = server.shutdown().await;
        // Keep the server side open until the client is done with it.
        let _ = server.read(&mut buf).await;
    });
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let (status, body) = get_once(&mut send).await?;
    Ok((status, body?))
}

/// Whether a `Transfer-Encoding` line holds an empty list element (`chunked,`). RFC 9110
/// §5.6.1 has recipients ignore those, as weir does; hyper's client then takes the final coding
/// to be the empty one, not `chunked`, and reads to the close: no reference for such a head.
fn empty_coding(bytes: &[u8]) -> bool {
    String::from_utf8_lossy(bytes).split("\r\n").any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding") && value.split(',').any(|c| c.trim().is_empty())
        })
    })
}

/// The same GET over HTTP/2 (h2c with prior knowledge), where weir re-frames the response:
/// the status and the body, or why the body broke.
async fn get_h2(addr: std::net::SocketAddr) -> Result<(u16, Result<Bytes, String>), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    // Without it the client's small writes wait on the gateway's delayed ACK (40 ms) now and
    // then: a tenth of the cases took that long.
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get("http://gw.test/case")
        .body(Empty::<Bytes>::new())
        .unwrap();
    Ok(status_and_body(send.send_request(req).await.map_err(|e| e.to_string())?).await)
}

/// A response's status and its whole body, or why the body broke.
async fn status_and_body(resp: http::Response<hyper::body::Incoming>) -> (u16, Result<Bytes, String>) {
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .map_err(|e| e.to_string());
    (status, body)
}

/// One GET through the gateway on `send`: the status and the body, or why the body broke.
async fn get_once(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
) -> Result<(u16, Result<Bytes, String>), String> {
    let req = http::Request::get("/case")
        .header("host", "gw.test")
        .body(Empty::new())
        .unwrap();
    Ok(status_and_body(send.send_request(req).await.map_err(|e| e.to_string())?).await)
}

#[test]
fn broken_responses_reach_the_client_well_formed_or_as_502() {
    let setup = async || {
        let reply = Arc::new(Mutex::new(Vec::new()));
        let addr = scripted_upstream(reply.clone()).await;
        // No passive health: every broken answer would otherwise take the only endpoint out.
        let toml = pool_config(
            addr,
            "[pool.passive]\nmax_fails = 0\n[pool.timeouts]\nrequest = \"2s\"\n",
        );
        (reply, TestGateway::start(&toml).await)
    };
    let (rt, (reply, gw)) = check_live(500, http1_gen::broken(response()), setup, |rt, (reply, gw), bytes| {
        let addr = gw.addr("client");
        *reply.lock().unwrap() = bytes.clone();
        let sent = statuses_sent(&bytes);
        let exchanges = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                let first = get_once(&mut send).await?;
                // The same answer again on the same connection: nothing of the first was left
                // behind to pass for the second.
                let second = match &first.1 {
                    Ok(_) if send.ready().await.is_ok() => Some(get_once(&mut send).await?),
                    _ => None,
                };
                Ok::<_, String>((first, second))
            })
            .await
        });
        let Ok(exchanges) = exchanges else {
            return Err(TestCaseError::fail("no answer within 5 s"));
        };
        let (first, second) = exchanges.map_err(|e| TestCaseError::fail(format!("client error: {e}")))?;
        let (status, body) = &first;
        if *status != 502 && !sent.contains(status) {
            return Err(TestCaseError::fail(format!(
                "status {status}; the upstream sent {sent:?}"
            )));
        }
        if let (Ok(body), Some(second)) = (body, second) {
            prop_assert_eq!(second.0, *status);
            prop_assert_eq!(second.1.as_ref().ok(), Some(body), "the second answer differs");
        }
        // The same over HTTP/2, which hyper's client holds to its own rules (no connection-
        // specific fields, a length that matches the data): the same status, or a 502.
        let h2 = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), get_h2(addr)).await });
        let h2 = h2.map_err(|_| TestCaseError::fail("no HTTP/2 answer within 5 s"))?;
        // A response cut short (its HTTP/1.1 body broke too) may end in a reset stream before
        // its head reached the client; any other must arrive.
        let (h2_status, h2_body) = match h2 {
            Ok(answer) => answer,
            Err(_) if body.is_err() => return Ok(()),
            Err(e) => return Err(TestCaseError::fail(format!("HTTP/2 client error: {e}"))),
        };
        if h2_status != 502 && !sent.contains(&h2_status) {
            return Err(TestCaseError::fail(format!(
                "HTTP/2 status {h2_status}; the upstream sent {sent:?}"
            )));
        }
        // A relayed response that the client read to its end is the one the upstream framed:
        // hyper's own client reading the upstream's bytes finds the same status and body.
        let complete = [(*status, body.clone()), (h2_status, h2_body)];
        for (status, body) in complete {
            if let (Ok(body), false) = (body, status == 502 || empty_coding(&bytes)) {
                let want = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), reference(&bytes)).await });
                let want = want.map_err(|_| TestCaseError::fail("the reference client hung"))?;
                prop_assert_eq!(want, Ok((status, body)), "relayed otherwise than hyper reads it");
            }
        }
        Ok(())
    });
    // Still serving.
    *reply.lock().unwrap() = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
    assert_eq!(rt.block_on(get(&gw.url("client", "/"))).status, 200);
}
