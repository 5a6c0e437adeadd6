//! Test harness for weir: real upstream servers on `127.0.0.1:0`, the gateway started from inline
//! TOML (in-process, or as the real `weir` binary), and h1 / h2 / TLS / WebSocket clients.
//! A new end-to-end case should be about five lines:
//!
//! ```ignore
//! let up = Upstream::start("a").await;
//! let gw = TestGateway::start(&one_pool(&[&up])).await;
//! let reply = get(&gw.url("client", "/")).await;
//! assert_eq!(reply.status, 200);
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod certs;
pub mod client;
pub mod launch;
pub mod raw;
pub mod upstream;

pub use certs::TestCerts;
pub use client::{
    Reply, collect, get, h1_get_over, h2_websocket, h2_websocket_on, h2c_get, h2c_get_over, h2c_sender, post,
    post_chunked, post_trickle, raw_exchange, request, tls_client, tls_get, tls_get_over, tls_handshake, ws_echo,
};
pub use launch::{
    TestGateway, WeirProcess, app_pool, free_port, one_pool, one_pool_with, plugin_file, plugins_dist, pool_config,
    wasm_policies,
};
pub use raw::{Act, Raw, raw_upstream};
pub use upstream::Upstream;

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: std::time::Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Panics anywhere in this process from now on, counted by a hook installed on the first call
/// (the default hook still prints them). An in-process gateway's connection task that panics is
/// dropped by tokio and looks like a closed connection from outside.
fn panics() -> &'static std::sync::atomic::AtomicUsize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default_hook(info);
        }));
    });
    &PANICS
}

/// A property test against a live gateway, from a plain `#[test]` (proptest's cases are not
/// async): `setup` starts what the cases talk to on a runtime of its own, then `case` runs once
/// per drawn value, with the runtime and what `setup` returned, until one fails. Draws
/// `PROPTEST_CASES` cases when set (to explore further), else `cases`; the seed follows
/// `PROPTEST_RNG_SEED`. Fails with the smallest failing value proptest finds, and if anything in
/// the process panicked meanwhile: keep such a test alone in its test binary, as a failing
/// assertion in a test running beside it would count too. Returns what `setup` made.
pub fn check_live<S, T>(
    cases: u32,
    strategy: S,
    setup: impl AsyncFnOnce() -> T,
    case: impl Fn(&tokio::runtime::Runtime, &T, S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) -> (tokio::runtime::Runtime, T)
where
    S: proptest::strategy::Strategy,
{
    use proptest::test_runner::{Config, TestRunner};
    let panics = panics();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let made = rt.block_on(setup());
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, |value| case(&rt, &made, value)) {
        panic!("{e}");
    }
    assert_eq!(
        panics.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a task panicked (see above)"
    );
    (rt, made)
}

/// A field of `/proc/self/status` in KiB (`"VmRSS"`, `"VmHWM"`): memory checks in tests.
pub fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
