//! Zero-downtime reconfiguration on real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;
use weir_test_support::*;

fn head(gw: &TestGateway) -> String {
    format!(
        "[admin]\nbind = \"{}\"\n[plugins]\ndir = \"{}\"\ncall_timeout = \"100ms\"\n[reload]\nwatch = false\n",
        gw.admin,
        plugins_dist().display()
    )
}

fn listener(name: &str, addr: &str, pool: &str) -> String {
    format!("[[listener]]\nname = \"{name}\"\nbind = \"{addr}\"\npool = \"{pool}\"\n")
}

fn pool(name: &str, eps: &[(&Upstream, u32)], balancer: &str) -> String {
    let eps: String = eps
        .iter()
        .map(|(u, w)| format!("[[pool.endpoint]]\naddress = \"{}\"\nweight = {w}\n", u.addr))
        .collect();
    format!("[[pool]]\nname = \"{name}\"\nbalancer = {{ plugin = \"{balancer}\" }}\n{eps}")
}

fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_fail_nothing_and_leak_nothing() {
    let (a, b, c) = (
        Upstream::start("a").await,
        Upstream::start("b").await,
        Upstream::start("c").await,
    );
    let gw = TestGateway::start(
        &(listener("client", "127.0.0.1:0", "app") + &pool("app", &[(&a, 1), (&b, 1)], "round-robin")),
    )
    .await;
    let bind = gw.addr("client").to_string();
    let one = head(&gw) + &listener("client", &bind, "app") + &pool("app", &[(&a, 1), (&b, 3)], "round-robin");
    let two = head(&gw) + &listener("client", &bind, "app") + &pool("app", &[(&b, 2), (&c, 1)], "least-request");
    let first = Arc::downgrade(&gw.gateway().shared().generation.load_full());

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..20 {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), gw.url("client", "/"));
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if get(&url).await.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    // Warm-up under the same load (connection pools fill, caches exist), then measure.
    for i in 0..10 {
        gw.write_config(if i % 2 == 0 { &one } else { &two });
        gw.reload().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds_before, rss_before) = (fds(), proc_status_kib("VmRSS"));
    let generation = gw.generation();
    for i in 0..100 {
        gw.write_config(if i % 2 == 0 { &one } else { &two });
        gw.reload().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fds_after, rss_after) = (fds(), proc_status_kib("VmRSS"));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(gw.generation() >= generation + 100);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests during reloads");
    assert!(ok.load(Ordering::Relaxed) > 100);
    assert!(c.requests() > 0 && a.requests() > 0);

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(first.upgrade().is_none(), "the first generation was never freed");
    // Same load at both points: only connection churn may differ.
    assert!(fds_after <= fds_before + 24, "fds {fds_before} -> {fds_after}");
    assert!(
        rss_after <= rss_before + 24 * 1024,
        "RSS {rss_before} KiB -> {rss_after} KiB"
    );
}

#[tokio::test]
async fn websockets_and_streams_survive_a_reload_that_does_not_touch_their_listener() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw =
        TestGateway::start(&(listener("client", "127.0.0.1:0", "app") + &pool("app", &[(&a, 1)], "round-robin"))).await;
    let bind = gw.addr("client").to_string();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{bind}/ws"))
        .await
        .unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(),
        "before"
    );
    // A 5 MiB streamed response, read slowly across the reload.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let resp = client
        .get(format!("http://{bind}/bytes/5242880").parse().unwrap())
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut got = body.frame().await.unwrap().unwrap().into_data().unwrap().len();

    gw.write_config(&(head(&gw) + &listener("client", &bind, "app") + &pool("app", &[(&b, 1)], "round-robin")));
    gw.reload().await.unwrap();
    assert_eq!(get(&gw.url("client", "/")).await.upstream(), "b");

    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "after");
    while let Some(f) = body.frame().await {
        got += f.unwrap().data_ref().map_or(0, |d| d.len());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(got, 5 * 1024 * 1024);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn removing_a_listener_finishes_its_request_in_flight_then_refuses() {
    let a = Upstream::start("a").await;
    let gw = TestGateway::start(
        &(listener("client", "127.0.0.1:0", "app")
            + &listener("old", "127.0.0.1:0", "app")
            + &pool("app", &[(&a, 1)], "round-robin")),
    )
    .await;
    let (client, old) = (gw.addr("client").to_string(), gw.addr("old"));
    let url = format!("http://{old}/delay/1000");
    let in_flight = tokio::spawn(async move { get(&url).await.status });
    assert!(eventually(Duration::from_secs(2), async || a.requests() == 1).await);
    gw.write_config(&(head(&gw) + &listener("client", &client, "app") + &pool("app", &[(&a, 1)], "round-robin")));
    gw.reload().await.unwrap();
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the in-flight request on the removed listener was cut"
    );
    assert!(
        eventually(Duration::from_secs(2), async || tokio::net::TcpStream::connect(old)
            .await
            .is_err())
        .await
    );
    assert_eq!(get(&gw.url("client", "/")).await.status, 200);
}

#[tokio::test]
async fn added_listeners_serve_after_the_reload() {
    let a = Upstream::start("a").await;
    let gw =
        TestGateway::start(&(listener("client", "127.0.0.1:0", "app") + &pool("app", &[(&a, 1)], "round-robin"))).await;
    let client = gw.addr("client").to_string();
    let new_port = free_port();
    gw.write_config(
        &(head(&gw)
            + &listener("client", &client, "app")
            + &listener("p2p", &format!("127.0.0.1:{new_port}"), "app")
            + &pool("app", &[(&a, 1)], "round-robin")),
    );
    gw.reload().await.unwrap();
    assert_eq!(get(&format!("http://127.0.0.1:{new_port}/")).await.status, 200);
}

#[tokio::test]
async fn bad_reloads_are_refused_with_their_reason_and_traffic_never_stops() {
    let a = Upstream::start("a").await;
    let gw =
        TestGateway::start(&(listener("client", "127.0.0.1:0", "app") + &pool("app", &[(&a, 1)], "round-robin"))).await;
    let client = gw.addr("client").to_string();
    let good = head(&gw) + &listener("client", &client, "app") + &pool("app", &[(&a, 1)], "round-robin");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let cases = [
        (good.replace("[[pool]]", "[[pool]"), "weir.toml:"),
        (good.replace("pool = \"app\"", "pool = \"nope\""), "unknown pool `nope`"),
        (good.clone() + &listener("extra", &busy_addr, "app"), "cannot bind"),
        (
            good.replace(
                "pool = \"app\"\n",
                "pool = \"app\"\n[listener.tls]\ncert = \"/missing.pem\"\nkey = \"/missing.key\"\n",
            ),
            "/missing.pem",
        ),
        (
            good.replace(
                "plugin = \"round-robin\"",
                "plugin = \"consistent-hash\", config = { key = \"bogus\" }",
            ),
            "init rejected its config",
        ),
    ];
    let generation = gw.generation();
    for (cfg, reason) in cases {
        gw.write_config(&cfg);
        let errors = gw.reload().await.expect_err(reason);
        assert!(errors.iter().any(|e| e.contains(reason)), "{reason}: {errors:?}");
        assert_eq!(gw.generation(), generation);
        assert_eq!(get(&gw.url("client", "/")).await.status, 200);
        // The admin API reports the same.
        let s = get(&gw.admin_url("/api/v1/status")).await.json();
        assert_eq!(s["last_reload"]["ok"], false);
    }
    drop(busy);
    gw.write_config(&good);
    assert_eq!(gw.reload().await.unwrap(), generation + 1);
    let r = request(
        http::Request::post(gw.admin_url("/api/v1/reload"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["generation"], generation + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_certificate_file_applies_to_new_handshakes_without_failures() {
    let a = Upstream::start("a").await;
    let certs = TestCerts::new();
    let (c1, k1) = certs.leaf("one", &["lb.test"]);
    let live_cert = certs.dir.path().join("live.pem");
    let live_key = certs.dir.path().join("live.key");
    std::fs::copy(&c1, &live_cert).unwrap();
    std::fs::copy(&k1, &live_key).unwrap();
    let tls = format!(
        "[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        live_cert.display(),
        live_key.display()
    );
    let toml = format!(
        "[reload]\ndebounce = \"50ms\"\n{tls}{}",
        pool("app", &[(&a, 1)], "round-robin")
    );
    let gw = TestGateway::start(&toml).await;
    let addr = gw.addr("tls");
    let (_, _, first) = tls_get(addr, "lb.test", &certs.ca_der, &[b"http/1.1"], "/").await;

    let stop = Arc::new(AtomicBool::new(false));
    let ca = certs.ca_der.clone();
    let handshakes = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let (r, _, _) = tls_get(addr, "lb.test", &ca, &[b"h2", b"http/1.1"], "/").await;
                assert_eq!(r.status, 200);
                n += 1;
            }
            n
        })
    };
    let (c2, k2) = certs.leaf("two", &["lb.test"]);
    let generation = gw.generation();
    // Key first, then certificate, each atomically: the reload after the debounce sees a pair.
    for (src, dst) in [(&k2, &live_key), (&c2, &live_cert)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(src, &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
    let start = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), async || gw.generation() > generation).await,
        "the cert change was not picked up"
    );
    let (_, _, now) = tls_get(addr, "lb.test", &certs.ca_der, &[b"http/1.1"], "/").await;
    stop.store(true, Ordering::Relaxed);
    let n = handshakes.await.expect("a handshake failed during the rotation");
    assert!(n > 5);
    assert_ne!(first, now, "new handshakes still see the old certificate");
    assert!(start.elapsed() < Duration::from_secs(10));
}
