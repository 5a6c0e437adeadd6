//! `[pool.tls]`: HTTPS to the upstreams. Real TLS upstreams (rustls, certificates from a test
//! CA) behind a real gateway: verification against the `ca` file, `server_name`, `verify =
//! false`, client certificates, keep-alive over TLS, streamed bodies, WebSocket, health checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use weir_test_support::*;

fn tls_pool(ups: &[&Upstream], tls: &str, extra: &str) -> String {
    app_pool(ups, &format!("{extra}[pool.tls]\n{tls}"), "")
}

fn ca_line(certs: &TestCerts) -> String {
    format!("ca = \"{}\"\n", certs.ca_file().display())
}

#[tokio::test]
async fn https_upstreams_verified_by_the_ca_serve_over_kept_alive_connections() {
    let certs = TestCerts::new();
    let a = Upstream::start_tls("a", certs.upstream_server(&["127.0.0.1"], false)).await;
    let b = Upstream::start_tls("b", certs.upstream_server(&["127.0.0.1"], false)).await;
    let gw = TestGateway::start(&tls_pool(&[&a, &b], &ca_line(&certs), "")).await;
    for i in 0..20 {
        let r = get(&gw.url("client", &format!("/n/{i}"))).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["path"], format!("/n/{i}"));
    }
    assert_eq!((a.requests(), b.requests()), (10, 10));
    // One request at a time: one connection (one handshake) each, reused.
    assert_eq!((a.connections(), b.connections()), (1, 1));
    // A streamed upload (no length: chunked) and a 1 MiB download.
    let r = post_chunked(&gw.url("client", "/upload"), 64, 16 * 1024).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 64 * 16 * 1024);
    let r = get(&gw.url("client", "/bytes/1048576")).await;
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 1 << 20));
    assert_eq!(gw.attempts("tls_error").await, 0);
}

#[tokio::test]
async fn a_certificate_not_signed_by_the_ca_is_refused_unless_verify_is_off() {
    let (certs, strangers) = (TestCerts::new(), TestCerts::new());
    let up = Upstream::start_tls("stranger", strangers.upstream_server(&["127.0.0.1"], false)).await;
    let gw = TestGateway::start(&tls_pool(&[&up], &ca_line(&certs), "[pool.passive]\nmax_fails = 0\n")).await;
    let r = get(&gw.url("client", "/")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(up.requests(), 0);
    assert!(gw.attempts("tls_error").await >= 1);

    let gw = TestGateway::start(&tls_pool(&[&up], "verify = false\n", "")).await;
    let r = get(&gw.url("client", "/")).await;
    assert_eq!((r.status.as_u16(), r.upstream()), (200, "stranger".to_string()));
}

#[tokio::test]
async fn server_name_is_sent_and_verified_instead_of_the_address() {
    let certs = TestCerts::new();
    let up = Upstream::start_tls("named", certs.upstream_server(&["api.internal"], false)).await;
    // The certificate names api.internal, not 127.0.0.1.
    let gw = TestGateway::start(&tls_pool(&[&up], &ca_line(&certs), "")).await;
    assert_eq!(get(&gw.url("client", "/")).await.status, 502);
    let tls = format!("{}server_name = \"api.internal\"\n", ca_line(&certs));
    let gw = TestGateway::start(&tls_pool(&[&up], &tls, "")).await;
    let r = get(&gw.url("client", "/")).await;
    assert_eq!((r.status.as_u16(), r.upstream()), (200, "named".to_string()));
}

#[tokio::test]
async fn a_client_certificate_is_presented_when_configured() {
    let certs = TestCerts::new();
    let up = Upstream::start_tls("mtls", certs.upstream_server(&["127.0.0.1"], true)).await;
    let no_cert = TestGateway::start(&tls_pool(&[&up], &ca_line(&certs), "")).await;
    assert_eq!(get(&no_cert.url("client", "/")).await.status, 502);
    assert_eq!(up.requests(), 0);
    assert!(up.refused().iter().any(|r| r.starts_with("tls:")), "{:?}", up.refused());

    let (cert, key) = certs.leaf("weir-client", &["weir"]);
    let tls = format!(
        "{}cert = \"{}\"\nkey = \"{}\"\n",
        ca_line(&certs),
        cert.display(),
        key.display()
    );
    let gw = TestGateway::start(&tls_pool(&[&up], &tls, "")).await;
    let r = get(&gw.url("client", "/")).await;
    assert_eq!((r.status.as_u16(), r.upstream()), (200, "mtls".to_string()));
}

#[tokio::test]
async fn health_checks_speak_tls_to_a_tls_pool() {
    let certs = TestCerts::new();
    let up = Upstream::start_tls("checked", certs.upstream_server(&["127.0.0.1"], false)).await;
    let health = "[pool.health]\npath = \"/upcheck\"\ninterval = \"100ms\"\ntimeout = \"1s\"\n";
    let gw = TestGateway::start(&tls_pool(&[&up], &ca_line(&certs), health)).await;
    assert!(
        eventually(Duration::from_secs(5), async || up.checks() >= 2).await,
        "checks: {}, refused: {:?}",
        up.checks(),
        up.refused()
    );
    let r = get(&gw.url("client", "/")).await;
    assert_eq!((r.status.as_u16(), r.upstream()), (200, "checked".to_string()));
    assert!(up.refused().is_empty(), "{:?}", up.refused());
}

#[tokio::test]
async fn websocket_through_a_tls_upstream() {
    let certs = TestCerts::new();
    let up = Upstream::start_tls("ws", certs.upstream_server(&["127.0.0.1"], false)).await;
    let gw = TestGateway::start(&tls_pool(&[&up], &ca_line(&certs), "")).await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.addr("client")))
        .await
        .expect("websocket handshake through weir");
    assert_eq!(resp.status(), 101);
    ws_echo(&mut ws, "over tls", 3, &[]).await;
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn a_reload_that_turns_tls_on_does_not_reuse_plain_connections() {
    let certs = TestCerts::new();
    let plain = Upstream::start("plain").await;
    let gw = TestGateway::start(&format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
        plain.addr
    ))
    .await;
    assert_eq!(get(&gw.url("client", "/")).await.status, 200);
    // Same address, now with [pool.tls]: the pooled plain connection must not carry a request
    // (the plain upstream would answer it, hiding that TLS is not in use).
    gw.write_config(&tls_pool(&[&plain], &ca_line(&certs), ""));
    gw.reload().await.unwrap();
    let r = get(&gw.url("client", "/")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(plain.requests(), 1);
}

#[tokio::test]
async fn bad_tls_settings_are_refused_with_the_key() {
    let src = "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n[pool.tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"/nonexistent/c.pem\"\n[pool.health]\ntls = true\n[[pool.endpoint]]\naddress = \"127.0.0.1:1\"\n";
    let errors = TestGateway::try_start(src).await.err().expect("refused");
    let text = errors;
    assert!(text.contains("pool[0].tls.ca"), "{text}");
    assert!(
        text.contains("pool[0].tls.key") && text.contains("go together"),
        "{text}"
    );
    let plain_health = src.replace(
        "[pool.tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"/nonexistent/c.pem\"\n",
        "",
    );
    let text = TestGateway::try_start(&plain_health).await.err().expect("refused");
    assert!(text.contains("pool[0].health.tls"), "{text}");
}

/// A new generation that leaves a pool's TLS alone (another setting changed) keeps its client
/// config: new connections resume the sessions of earlier ones instead of starting over with a
/// full handshake. A CA file with other contents makes a new config, and full handshakes.
#[tokio::test]
async fn sessions_resume_across_generations_that_leave_tls_alone() {
    let certs = TestCerts::new();
    let a = Upstream::start_tls("a", certs.upstream_server(&["127.0.0.1"], false)).await;
    let gw = TestGateway::start(&tls_pool(&[&a], &ca_line(&certs), "")).await;
    // `/close`: the upstream closes each connection after its answer.
    for _ in 0..2 {
        assert_eq!(get(&gw.url("client", "/close")).await.status, 200);
    }
    assert_eq!((a.connections(), a.resumed()), (2, 1));
    gw.write_config(&tls_pool(&[&a], &ca_line(&certs), "[pool.retry]\nmax_attempts = 2\n"));
    gw.reload().await.unwrap();
    assert_eq!(get(&gw.url("client", "/close")).await.status, 200);
    assert_eq!((a.connections(), a.resumed()), (3, 2), "the reload lost the session");
    // The same certificate with a comment added: other contents, a new config.
    let ca = std::fs::read_to_string(certs.ca_file()).unwrap();
    std::fs::write(certs.ca_file(), format!("renewed\n{ca}")).unwrap();
    gw.reload().await.unwrap();
    assert_eq!(get(&gw.url("client", "/close")).await.status, 200);
    assert_eq!((a.connections(), a.resumed()), (4, 2));
}
