//! `resolve = "all"`: a hostname that resolves to several addresses is one endpoint per
//! address (nginx's reading of a name; Kubernetes headless services), balanced, checked,
//! drained and counted each on its own, and following the name's addresses as they change.
//! The name's addresses are pinned (`weir_core::dns::pin`): no resolver on a test machine
//! gives one name several loopback addresses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use weir_test_support::*;

/// A port free on 127.0.0.2, .3 and .4: the replicas of one name listen on the same port.
fn shared_free_port() -> u16 {
    loop {
        let p = free_port();
        if ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, p)).is_ok())
        {
            return p;
        }
    }
}

fn at(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

async fn admin_post(gw: &TestGateway, path: &str) -> u16 {
    let req = Request::post(gw.admin_url(path)).body(Full::new(Bytes::new())).unwrap();
    request(req).await.status.as_u16()
}

async fn served_by(gw: &TestGateway, n: usize) -> Vec<String> {
    let mut who = Vec::new();
    for _ in 0..n {
        let r = get(&gw.url("client", "/")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        who.push(r.upstream());
    }
    who
}

#[tokio::test]
async fn a_name_with_several_addresses_is_one_endpoint_per_address() {
    let port = shared_free_port();
    let a = Upstream::start_on(at("127.0.0.2", port), "a").await;
    let b = Upstream::start_on(at("127.0.0.3", port), "b").await;
    let c = Upstream::start_on(at("127.0.0.4", port), "c").await;
    let name = "replicas.resolve-all.test";
    weir_core::dns::pin(name, port, vec![a.addr, b.addr]);
    let toml = format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nresolve = \"all\"\nresolve_interval = \"100ms\"\n[[pool.endpoint]]\naddress = \"{name}:{port}\"\n"
    );
    let gw = TestGateway::start(&toml).await;

    // Balanced per address, as two endpoints would be.
    let who = served_by(&gw, 10).await;
    assert_eq!(who.iter().filter(|w| *w == "a").count(), 5, "{who:?}");
    assert_eq!(who.iter().filter(|w| *w == "b").count(), 5, "{who:?}");
    let status = get(&gw.admin_url("/api/v1/status")).await.json();
    let endpoints = status["pools"][0]["endpoints"].as_array().unwrap().clone();
    let listed: Vec<(String, String)> = endpoints
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_string(),
                e["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let full_name = format!("{name}:{port}");
    assert_eq!(
        listed,
        vec![
            (a.addr.to_string(), full_name.clone()),
            (b.addr.to_string(), full_name.clone())
        ]
    );
    let metrics = get(&gw.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains(&format!(
            "weir_endpoint_healthy{{pool=\"app\",endpoint=\"{}\"}} 1",
            b.addr
        )),
        "{metrics}"
    );

    // The name drains every address; one address is enabled alone.
    assert_eq!(
        admin_post(&gw, &format!("/api/v1/pools/app/endpoints/{full_name}/drain")).await,
        200
    );
    assert_eq!(get(&gw.url("client", "/")).await.status, 503);
    assert_eq!(
        admin_post(&gw, &format!("/api/v1/pools/app/endpoints/{}/enable", b.addr)).await,
        200
    );
    assert!(served_by(&gw, 4).await.iter().all(|w| w == "b"));

    // The name gains an address: a new generation with an endpoint for it; `a` stays drained.
    let generation = gw.generation();
    weir_core::dns::pin(name, port, vec![a.addr, b.addr, c.addr]);
    assert!(
        eventually(Duration::from_secs(10), async || gw.generation() > generation).await,
        "no new generation for the new address"
    );
    // The name is still drained as a whole: its new address starts drained.
    assert!(served_by(&gw, 4).await.iter().all(|w| w == "b"));
    assert_eq!(
        admin_post(&gw, &format!("/api/v1/pools/app/endpoints/{}/enable", c.addr)).await,
        200
    );
    let who = served_by(&gw, 6).await;
    assert_eq!(who.iter().filter(|w| *w == "c").count(), 3, "{who:?}");
    assert_eq!(who.iter().filter(|w| *w == "b").count(), 3, "{who:?}");

    // It loses one: its endpoint goes.
    let generation = gw.generation();
    weir_core::dns::pin(name, port, vec![a.addr, c.addr]);
    assert!(eventually(Duration::from_secs(10), async || gw.generation() > generation).await);
    assert!(served_by(&gw, 4).await.iter().all(|w| w == "c"));
}

/// Without a pinned answer: the first generation has the name as one endpoint, its first
/// lookup (the system resolver's `localhost`) makes the next one, with an endpoint per address.
#[tokio::test]
async fn a_name_is_looked_up_and_expanded_after_start() {
    let up = Upstream::start("local").await;
    let port = up.addr.port();
    let toml = format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nresolve = \"all\"\n[[pool.endpoint]]\naddress = \"localhost:{port}\"\n"
    );
    let gw = TestGateway::start(&toml).await;
    let expanded = async || {
        let s = get(&gw.admin_url("/api/v1/status")).await.json();
        s["pools"][0]["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["address"] == up.addr.to_string() && e["name"] == format!("localhost:{port}"))
    };
    assert!(
        eventually(Duration::from_secs(10), expanded).await,
        "localhost was not expanded"
    );
    // Whatever else localhost resolves to here (::1, where nothing listens), requests arrive.
    for _ in 0..4 {
        assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    }
}
