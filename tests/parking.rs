//! Parked keep-alive connections (`weir_core::parking`): a connection idle for over a second
//! loses its task but not its client. It serves its next request, is closed at its idle
//! timeout, and lets a graceful shutdown finish. Each test has its own listener name, so the
//! per-listener gauge tells it about its own connections only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_test_support::*;

async fn gateway(listener: &str, limits: &str) -> (Upstream, TestGateway) {
    let up = Upstream::start("a").await;
    let toml = one_pool_with(&[&up], &format!("[listener.limits]\n{limits}\n"))
        .replace("name = \"client\"", &format!("name = \"{listener}\""));
    let gw = TestGateway::start(&toml).await;
    (up, gw)
}

/// `weir_connections_parked{listener}` from `/metrics`.
async fn parked(gw: &TestGateway, listener: &str) -> u64 {
    let text = String::from_utf8_lossy(&get(&gw.admin_url("/metrics")).await.body).to_string();
    let prefix = format!("weir_connections_parked{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (10 s at most, else fails with `what`) for weir to close `s` without sending a byte.
async fn closed_by_weir(s: &mut TcpStream, what: &str) {
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect(what)
        .unwrap_or(0);
    assert_eq!(n, 0, "unexpected bytes: {:?}", String::from_utf8_lossy(&rest));
}

/// Sends one keep-alive GET and reads its whole response (the test upstream answers with a
/// Content-Length).
async fn exchange(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        assert!(
            n > 0,
            "closed before the response ended: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .expect("no content-length");
            if got.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn idle_connection_is_parked_and_serves_its_next_request() {
    let (up, gw) = gateway("park-serve", "idle_timeout = \"30s\"").await;
    let mut s = TcpStream::connect(gw.addr("park-serve")).await.unwrap();
    let first = exchange(&mut s, "/one").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        eventually(Duration::from_secs(10), async || parked(&gw, "park-serve").await == 1).await,
        "the idle connection was never parked"
    );
    // The same connection, woken from the parker: its request is served, it is a task again.
    let second = exchange(&mut s, "/two").await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(parked(&gw, "park-serve").await, 0);
    assert_eq!(up.requests(), 2);
    // Idle again: parked again, and served again.
    assert!(eventually(Duration::from_secs(10), async || parked(&gw, "park-serve").await == 1).await);
    let third = exchange(&mut s, "/three").await;
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
}

#[tokio::test]
async fn parked_connection_closed_by_its_client_is_released() {
    let (_up, gw) = gateway("park-gone", "idle_timeout = \"30s\"").await;
    let mut s = TcpStream::connect(gw.addr("park-gone")).await.unwrap();
    exchange(&mut s, "/").await;
    assert!(eventually(Duration::from_secs(10), async || parked(&gw, "park-gone").await == 1).await);
    drop(s);
    assert!(
        eventually(Duration::from_secs(10), async || parked(&gw, "park-gone").await == 0).await,
        "a closed connection stayed parked"
    );
}

#[tokio::test]
async fn parked_connection_is_closed_at_its_idle_timeout() {
    let (_up, gw) = gateway("park-timeout", "idle_timeout = \"2500ms\"").await;
    let mut s = TcpStream::connect(gw.addr("park-timeout")).await.unwrap();
    exchange(&mut s, "/").await;
    let answered = Instant::now();
    assert!(eventually(Duration::from_secs(10), async || parked(&gw, "park-timeout").await == 1).await);
    closed_by_weir(&mut s, "the parked connection was never closed").await;
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(2400),
        "closed after {idle:?}, before its idle timeout"
    );
    assert_eq!(parked(&gw, "park-timeout").await, 0);
}

#[tokio::test]
async fn shutdown_with_a_parked_connection_finishes_cleanly() {
    let (_up, gw) = gateway("park-stop", "idle_timeout = \"30s\"").await;
    let mut s = TcpStream::connect(gw.addr("park-stop")).await.unwrap();
    exchange(&mut s, "/").await;
    assert!(eventually(Duration::from_secs(10), async || parked(&gw, "park-stop").await == 1).await);
    let clean = tokio::time::timeout(Duration::from_secs(20), gw.shutdown())
        .await
        .expect("shutdown hung on a parked connection");
    assert!(clean, "shutdown reported connections left open");
    closed_by_weir(&mut s, "the connection outlived the shutdown").await;
}

#[tokio::test]
async fn busy_connection_is_not_parked() {
    let (_up, gw) = gateway("park-busy", "idle_timeout = \"30s\"").await;
    let mut s = TcpStream::connect(gw.addr("park-busy")).await.unwrap();
    exchange(&mut s, "/").await;
    let idle_since = Instant::now();
    assert_eq!(parked(&gw, "park-busy").await, 0, "parked at once");
    assert!(eventually(Duration::from_secs(10), async || parked(&gw, "park-busy").await == 1).await);
    assert!(
        idle_since.elapsed() >= Duration::from_millis(900),
        "parked before a second of idleness"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parking_works_on_a_multi_thread_runtime() {
    let (up, gw) = gateway("park-mt", "idle_timeout = \"30s\"").await;
    let mut s = TcpStream::connect(gw.addr("park-mt")).await.unwrap();
    for round in 0..3 {
        let r = exchange(&mut s, "/").await;
        assert!(r.starts_with("HTTP/1.1 200"), "round {round}: {r}");
        assert!(
            eventually(Duration::from_secs(10), async || parked(&gw, "park-mt").await == 1).await,
            "round {round}: never parked"
        );
    }
    assert_eq!(up.requests(), 3);
}

#[tokio::test]
async fn parked_connection_of_a_removed_listener_is_closed() {
    let up = Upstream::start("a").await;
    let listener = |name: &str, addr: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\nbind = \"{addr}\"\npool = \"app\"\n[listener.limits]\nidle_timeout = \"30s\"\n"
        )
    };
    let pool = format!(
        "[[pool]]\nname = \"app\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
        up.addr
    );
    let gw =
        TestGateway::start(&(listener("park-stays", "127.0.0.1:0") + &listener("park-removed", "127.0.0.1:0") + &pool))
            .await;
    let stays = gw.addr("park-stays").to_string();
    let mut s = TcpStream::connect(gw.addr("park-removed")).await.unwrap();
    exchange(&mut s, "/").await;
    assert!(eventually(Duration::from_secs(10), async || parked(&gw, "park-removed").await == 1).await);
    gw.write_config(&format!(
        "[admin]\nbind = \"{}\"\n[reload]\nwatch = false\n{}{pool}",
        gw.admin,
        listener("park-stays", &stays)
    ));
    gw.reload().await.unwrap();
    closed_by_weir(&mut s, "the parked connection outlived its listener").await;
    assert_eq!(parked(&gw, "park-removed").await, 0);
    assert_eq!(get(&gw.url("park-stays", "/")).await.status, 200);
}
