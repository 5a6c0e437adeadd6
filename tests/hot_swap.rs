//! Replacing a plugin file on a running gateway: a new generation with the new plugin, zero
//! failed requests, requests in flight finish on the version they started with, and a bad file
//! is refused while the running version keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use weir_test_support::*;

fn install(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.wasm.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).unwrap();
}

fn config(plugins: &Path, a: &Upstream, b: &Upstream) -> String {
    format!(
        "[plugins]\ndir = \"{}\"\ncall_timeout = \"50ms\"\n[reload]\ndebounce = \"50ms\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nbalancer = {{ plugin = \"lb\" }}\n[[pool.endpoint]]\naddress = \"{}\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
        plugins.display(),
        a.addr,
        b.addr
    )
}

/// A gateway whose pool `app` (upstreams a, b) is balanced by plugin `lb`, installed from
/// `first-healthy` in a plugins folder of its own.
async fn start_with_first_healthy() -> (tempfile::TempDir, Upstream, Upstream, TestGateway) {
    let plugins = tempfile::tempdir().unwrap();
    install(
        plugins.path(),
        "lb",
        &std::fs::read(plugin_file("first-healthy")).unwrap(),
    );
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&config(plugins.path(), &a, &b)).await;
    (plugins, a, b, gw)
}

/// The generation `/api/v1/status` says first served plugin `name`'s current version.
async fn plugin_generation(gw: &TestGateway, name: &str) -> Option<u64> {
    let status = get(&gw.admin_url("/api/v1/status")).await.json();
    status["plugins"].as_array()?.iter().find(|p| p["name"] == name)?["generation"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_plugin_under_load_switches_behaviour_with_zero_failures() {
    let (plugins, _a, b, gw) = start_with_first_healthy().await;
    assert_eq!(get(&gw.url("client", "/")).await.upstream(), "a");
    let generation = gw.generation();
    assert_eq!(plugin_generation(&gw, "lb").await, Some(generation));

    // A slow request started on the old version.
    let slow_url = gw.url("client", "/delay/800");
    let slow = tokio::spawn(async move { get(&slow_url).await });

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, failures, served, url) = (stop.clone(), failures.clone(), served.clone(), gw.url("client", "/"));
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if get(&url).await.status == 200 {
                    served.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    install(
        plugins.path(),
        "lb",
        &std::fs::read(plugin_file("round-robin")).unwrap(),
    );
    // The swap is a new generation; after it, round-robin reaches b.
    let switched = eventually(Duration::from_secs(10), async || gw.generation() > generation).await
        && eventually(Duration::from_secs(5), async || b.requests() > 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(switched, "the new plugin never took over");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "failed requests during the swap");
    assert!(served.load(Ordering::Relaxed) > 50);
    assert!(gw.generation() > generation);
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(
        slow.upstream(),
        "a",
        "the in-flight request finished where the old version sent it"
    );
    // Round-robin now spreads.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(get(&gw.url("client", "/")).await.upstream());
    }
    assert_eq!(seen.len(), 2);
    // The status tells which generation brought the new version; a reload that keeps the file
    // keeps it.
    let swapped_in = plugin_generation(&gw, "lb").await.unwrap();
    assert!(swapped_in > generation && swapped_in <= gw.generation());
    let reloaded = gw.reload().await.unwrap();
    assert!(reloaded > swapped_in);
    assert_eq!(plugin_generation(&gw, "lb").await, Some(swapped_in));
}

#[tokio::test]
async fn a_bad_plugin_file_is_refused_and_the_running_version_keeps_serving() {
    let (plugins, _a, _b, gw) = start_with_first_healthy().await;
    let generation = gw.generation();
    for (bytes, reason) in [
        (b"garbage".to_vec(), "not a WebAssembly file"),
        (
            std::fs::read(plugin_file("fault-abi")).unwrap(),
            "weir:policy/lifecycle@0.1.0",
        ),
    ] {
        install(plugins.path(), "lb", &bytes);
        let refused = eventually(Duration::from_secs(10), async || {
            let s = get(&gw.admin_url("/api/v1/status")).await.json();
            s["last_reload"]["ok"] == false
                && s["last_reload"]["errors"][0]
                    .as_str()
                    .is_some_and(|e| e.contains(reason))
        })
        .await;
        assert!(
            refused,
            "{reason}: {}",
            get(&gw.admin_url("/api/v1/status")).await.json()
        );
        assert_eq!(gw.generation(), generation);
        // The plugin's own entry says its file was refused, beside the version serving.
        let s = get(&gw.admin_url("/api/v1/status")).await.json();
        let lb = lb_status(&s);
        assert!(
            lb["refused"].as_str().is_some_and(|e| e.contains(reason)),
            "{reason}: {lb}"
        );
        assert_eq!(lb["generation"], generation, "{lb}");
        for _ in 0..3 {
            assert_eq!(get(&gw.url("client", "/")).await.upstream(), "a");
        }
    }
    // A good file afterwards applies, and the refusal is gone.
    install(
        plugins.path(),
        "lb",
        &std::fs::read(plugin_file("round-robin")).unwrap(),
    );
    assert!(eventually(Duration::from_secs(10), async || gw.generation() > generation).await);
    let s = get(&gw.admin_url("/api/v1/status")).await.json();
    assert!(lb_status(&s)["refused"].is_null(), "{s}");
}

fn lb_status(status: &serde_json::Value) -> serde_json::Value {
    status["plugins"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "lb"))
        .cloned()
        .unwrap_or_default()
}
