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
pub use client::{Reply, get, h1_get_over, h2c_get, h2c_get_over, raw_exchange, request, tls_get, tls_get_over};
pub use launch::{
    TestGateway, WeirProcess, free_port, one_pool, plugin_file, plugins_dist, pool_config, wasm_policies,
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
