//! Broken HTTP/1 against a live gateway: pipelined requests with bodies, a few of their bytes
//! replaced, inserted or deleted, sent on a real connection. Whatever arrives, the gateway
//! answers with a well-formed response or closes, within a bound, never panics, and forwards
//! to the upstream only what the upstream's own HTTP/1 server (hyper) accepts as valid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_test_support::*;

// The generators of weir-core's codec property tests (broken messages), shared by path: they
// live in weir-core's test build, which integration tests cannot reach.
#[allow(dead_code)]
#[path = "../crates/weir-core/src/http1_gen.rs"]
mod http1_gen;

/// One request with a body framed by a length, by chunks, or not at all.
fn request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "HEAD", "DELETE"]),
        "/f/[a-z0-9]{0,12}(\\?[a-z]=[0-9]{1,3})?",
        prop::collection::vec(("x-[a-z]{1,8}", "[!-~]{0,16}"), 0..4),
        prop::collection::vec(any::<u8>(), 0..64),
        0u8..3,
    )
        .prop_map(|(method, target, fields, body, framing)| {
            let mut r = format!("{method} {target} HTTP/1.1\r\nHost: gw.test\r\n").into_bytes();
            for (n, v) in fields {
                r.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            match framing {
                0 => r.extend_from_slice(b"\r\n"),
                1 => http1_gen::frame_body(&mut r, &body, None),
                _ => http1_gen::frame_body(&mut r, &body, Some(20)),
            }
            r
        })
}

/// One to three requests back to back, then broken.
fn broken_requests() -> impl Strategy<Value = Vec<u8>> {
    http1_gen::broken(prop::collection::vec(request(), 1..4).prop_map(|rs| rs.concat()))
}

/// Sends `bytes`, half-closes, and reads until the gateway closes; `None` if it does not
/// within the bound.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The gateway may answer and close before reading all of it: a failed write is fine.
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await {
        Ok(_) => Some(out),
        Err(_) => None,
    }
}

/// The status codes of the responses in `reply`, in order, found by their status lines.
fn statuses(reply: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(reply);
    text.match_indices("HTTP/1.1 ")
        .filter(|(at, _)| *at == 0 || text[..*at].ends_with('\n') || text[..*at].ends_with('}'))
        .filter_map(|(at, m)| text.get(at + m.len()..at + m.len() + 3)?.parse().ok())
        .collect()
}

#[test]
fn broken_requests_get_an_answer_or_a_close_and_never_a_panic() {
    let answered = std::cell::Cell::new(0usize);
    let setup = async || {
        let up = Upstream::start("a").await;
        let toml = one_pool_with(
            &[&up],
            "[listener.limits]\nheader_timeout = \"2s\"\nbody_timeout = \"2s\"\n",
        );
        let gw = TestGateway::start(&toml).await;
        (up, gw)
    };
    let (rt, (up, gw)) = check_live(1000, broken_requests(), setup, |rt, (_, gw), bytes| {
        let Some(reply) = rt.block_on(exchange(gw.addr("client"), &bytes)) else {
            return Err(TestCaseError::fail("no close within 5 s of the client's"));
        };
        if !reply.is_empty() && !reply.starts_with(b"HTTP/1.1 ") {
            return Err(TestCaseError::fail(format!(
                "not a response: {:?}",
                String::from_utf8_lossy(&reply)
            )));
        }
        // The upstream answers 200 to every request it gets; anything else is the gateway's own
        // refusal, which must be a 4xx: a 5xx would be a request it let through and then failed.
        for code in statuses(&reply) {
            match code {
                200 => answered.set(answered.get() + 1),
                400..=499 => {}
                _ => return Err(TestCaseError::fail(format!("status {code}"))),
            }
        }
        Ok(())
    });
    // Everything hyper refused was a body the client's close cut short: the gateway forwarded
    // no head and no chunk framing that a strict server rejects.
    let cut_short = |refused: &[String]| refused.iter().filter(|r| r.contains("kind: UnexpectedEof")).count();
    let refused = up.refused();
    assert_eq!(cut_short(&refused), refused.len(), "{refused:#?}");
    // Every request that reached the upstream was answered to the client or cut short by it:
    // none was made up out of another's bytes and answered to nobody.
    let accounted = rt.block_on(eventually(Duration::from_secs(5), async || {
        up.requests() as usize == answered.get() + cut_short(&up.refused())
    }));
    assert!(
        accounted,
        "upstream saw {} requests; the client got {} answers, {} were cut short",
        up.requests(),
        answered.get(),
        cut_short(&up.refused())
    );
    // Still serving.
    assert_eq!(rt.block_on(get(&gw.url("client", "/"))).status, 200);
}
