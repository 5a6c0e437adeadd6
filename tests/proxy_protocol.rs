//! `proxy_protocol = true` on a listener: a fronting load balancer's PROXY header (v1 text, v2
//! binary) names the client, whom the upstream then sees in `X-Forwarded-For`, on every
//! request of the connection and whatever protocol follows (HTTP/1.1, h2c, TLS with either).
//! A connection without a valid header within `header_timeout` is closed, and counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_test_support::*;

/// One listener `name` (`proxy_protocol = true`, a 300 ms header timeout) in front of `up`;
/// `tls` adds a certificate.
fn config(name: &str, up: &Upstream, tls: Option<&TestCerts>) -> String {
    let tls = tls.map_or(String::new(), |certs| {
        let (cert, key) = certs.leaf("lb", &["lb.test"]);
        format!(
            "[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        )
    });
    one_listener(
        name,
        up.addr,
        &format!("proxy_protocol = true\n{tls}[listener.limits]\nheader_timeout = \"300ms\""),
        "",
    )
}

/// A listener `name` with `listener_lines`, in front of one pool `app` with `pool_lines` whose
/// single endpoint is `up`.
fn one_listener(name: &str, up: std::net::SocketAddr, listener_lines: &str, pool_lines: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n{listener_lines}\n\n[[pool]]\nname = \"app\"\n{pool_lines}\n[[pool.endpoint]]\naddress = \"{up}\"\n"
    )
}

/// Opens a connection and writes `header` (in two pieces when `split`, flushed apart).
async fn connect_with(gw: &TestGateway, listener: &str, header: &[u8], split: bool) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr(listener)).await.unwrap();
    s.set_nodelay(true).unwrap();
    if split {
        let (a, b) = header.split_at(header.len() / 2);
        s.write_all(a).await.unwrap();
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.write_all(b).await.unwrap();
    } else {
        s.write_all(header).await.unwrap();
    }
    s
}

/// GETs `paths` one after the other over HTTP/1.1 on `tcp`; the `X-Forwarded-For` each
/// request reached the upstream with.
async fn forwarded_for_h1(tcp: TcpStream, paths: &[&str]) -> Vec<String> {
    let mut seen = Vec::new();
    for (r, path) in h1_get_over(tcp, "lb.test", paths).await.iter().zip(paths) {
        assert_eq!(r.status, 200);
        let j = r.json();
        assert_eq!(j["path"], *path);
        seen.push(j["headers"]["x-forwarded-for"][0].as_str().unwrap_or("").to_string());
    }
    seen
}

/// A v2 header: PROXY (or LOCAL) over TCP, with a NOOP TLV after the addresses.
fn v2(local: bool, addresses: &[u8], family: u8) -> Vec<u8> {
    let tlv = [0x04, 0x00, 0x03, 1, 2, 3];
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(if local { 0x20 } else { 0x21 });
    h.push(family << 4 | 0x01);
    h.extend_from_slice(&u16::try_from(addresses.len() + tlv.len()).unwrap().to_be_bytes());
    h.extend_from_slice(addresses);
    h.extend_from_slice(&tlv);
    h
}

fn v2_ipv4(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut a = src.to_vec();
    a.extend_from_slice(&[10, 0, 0, 1]);
    a.extend_from_slice(&sport.to_be_bytes());
    a.extend_from_slice(&9080u16.to_be_bytes());
    v2(false, &a, 1)
}

/// Reads until the gateway closes; what it wrote before.
async fn closed_by_weir(mut s: TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the gateway did not close the connection")
        .ok();
    out
}

#[tokio::test]
async fn a_v1_header_names_the_client_of_every_request_on_the_connection() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&config("pp-v1", &up, None)).await;
    let tcp = connect_with(&gw, "pp-v1", b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 9080\r\n", false).await;
    assert_eq!(
        forwarded_for_h1(tcp, &["/a", "/b"]).await,
        ["203.0.113.7", "203.0.113.7"]
    );
    assert_eq!(up.connections(), 1, "the two requests shared one upstream connection");

    let tcp = connect_with(&gw, "pp-v1", b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 9080\r\n", true).await;
    assert_eq!(forwarded_for_h1(tcp, &["/c"]).await, ["2001:db8::7"]);

    // UNKNOWN (e.g. the balancer's own check): the socket's peer stands.
    let tcp = connect_with(&gw, "pp-v1", b"PROXY UNKNOWN\r\n", false).await;
    assert_eq!(forwarded_for_h1(tcp, &["/d"]).await, ["127.0.0.1"]);
}

#[tokio::test]
async fn a_v2_header_names_the_client_even_split_across_packets() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&config("pp-v2", &up, None)).await;
    let tcp = connect_with(&gw, "pp-v2", &v2_ipv4([198, 51, 100, 9], 50000), true).await;
    assert_eq!(
        forwarded_for_h1(tcp, &["/a", "/b"]).await,
        ["198.51.100.9", "198.51.100.9"]
    );

    let mut a = vec![0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42];
    a.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]);
    a.extend_from_slice(&[0xc3, 0x50, 0x23, 0x78]);
    let tcp = connect_with(&gw, "pp-v2", &v2(false, &a, 2), false).await;
    assert_eq!(forwarded_for_h1(tcp, &["/c"]).await, ["2001:db8::42"]);

    // LOCAL: the connection is the balancer's own; its socket's peer stands.
    let tcp = connect_with(&gw, "pp-v2", &v2(true, &[], 0), false).await;
    assert_eq!(forwarded_for_h1(tcp, &["/d"]).await, ["127.0.0.1"]);
}

#[tokio::test]
async fn h2c_and_tls_follow_the_header() {
    let up = Upstream::start("a").await;
    let certs = TestCerts::new();
    let toml = format!(
        "{}{}",
        config("pp-plain", &up, None),
        config("pp-tls", &up, Some(&certs)).replace("[[pool]]\nname = \"app\"", "[[pool]]\nname = \"unused\"")
    );
    let gw = TestGateway::start(&toml).await;

    let tcp = connect_with(&gw, "pp-plain", &v2_ipv4([192, 0, 2, 1], 1234), false).await;
    let r = h2c_get_over(tcp, "/h2c").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_2);
    assert_eq!(r.json()["headers"]["x-forwarded-for"][0], "192.0.2.1");

    for (alpn, version) in [
        (&b"h2"[..], http::Version::HTTP_2),
        (&b"http/1.1"[..], http::Version::HTTP_11),
    ] {
        let tcp = connect_with(&gw, "pp-tls", b"PROXY TCP4 192.0.2.2 10.0.0.1 2345 443\r\n", false).await;
        let (r, negotiated, _) = tls_get_over(tcp, "lb.test", &certs.ca_der, &[alpn], "/tls").await;
        assert_eq!(negotiated.as_deref(), Some(alpn));
        assert_eq!(r.status, 200);
        assert_eq!(r.version, version);
        assert_eq!(r.json()["headers"]["x-forwarded-for"][0], "192.0.2.2");
        assert_eq!(r.json()["headers"]["x-forwarded-proto"][0], "https");
    }
}

#[tokio::test]
async fn connections_without_a_valid_header_are_closed_and_counted() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&config("pp-refuse", &up, None)).await;
    let mut huge = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    huge.extend_from_slice(&5000u16.to_be_bytes());
    let refused: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n",
        b"PROXY TCP4 300.0.113.7 10.0.0.1 51234 9080\r\nGET / HTTP/1.1\r\nHost: lb.test\r\n\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 9080 and on and on and on and on and on and on and on and on and on\r\n",
        &huge,
        // A header that never ends: the header timeout closes it.
        b"PROXY TCP4 203.0.113.7",
    ];
    for bytes in refused {
        let s = connect_with(&gw, "pp-refuse", bytes, false).await;
        let answer = closed_by_weir(s).await;
        assert!(
            answer.is_empty(),
            "{:?} got an answer: {:?}",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&answer)
        );
    }
    // Nothing at all within the header timeout: closed too.
    let s = TcpStream::connect(gw.addr("pp-refuse")).await.unwrap();
    assert!(closed_by_weir(s).await.is_empty());
    assert_eq!(up.requests(), 0);

    let metrics = get(&gw.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("weir_proxy_protocol_refused_total{listener=\"pp-refuse\"} 6"),
        "{metrics}"
    );
    // The listener still serves a well-formed connection.
    let tcp = connect_with(&gw, "pp-refuse", b"PROXY TCP4 203.0.113.8 10.0.0.1 1 2\r\n", false).await;
    assert_eq!(forwarded_for_h1(tcp, &["/ok"]).await, ["203.0.113.8"]);
}

#[tokio::test]
async fn a_reload_turns_the_header_on_for_new_connections() {
    let up = Upstream::start("a").await;
    let on = config("pp-reload", &up, None);
    let off = on.replace("proxy_protocol = true\n", "");
    let gw = TestGateway::start(&off).await;
    // Without the key a PROXY line is not HTTP: 400.
    let s = connect_with(&gw, "pp-reload", b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\r\n\r\n", false).await;
    let answer = String::from_utf8_lossy(&closed_by_weir(s).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let admin = std::fs::read_to_string(gw.config_path()).unwrap();
    gw.write_config(&admin.replace(&off, &on));
    gw.reload().await.unwrap();
    let tcp = connect_with(&gw, "pp-reload", b"PROXY TCP4 203.0.113.7 10.0.0.1 1 2\r\n", false).await;
    assert_eq!(forwarded_for_h1(tcp, &["/on"]).await, ["203.0.113.7"]);
}

/// An upstream behind a `send_proxy` pool: each connection must open with a PROXY header (v1
/// line or v2), which it records; then it answers every GET on the connection with that header
/// (v1 as text, v2 as hex) as the body and the connection's number in `x-conn`.
struct ProxyReadingUpstream {
    addr: std::net::SocketAddr,
    headers: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl ProxyReadingUpstream {
    async fn start() -> ProxyReadingUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let headers = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = headers.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _ = Self::serve(stream, seen).await;
                });
            }
        });
        ProxyReadingUpstream { addr, headers }
    }

    async fn serve(mut s: TcpStream, seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let header = loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            let len = if buf.starts_with(b"PROXY ") {
                buf.windows(2).position(|w| w == b"\r\n").map(|i| i + 2)
            } else if buf.len() >= 16 && buf.starts_with(b"\r\n\r\n\0\r\nQUIT\n") {
                Some(16 + usize::from(u16::from_be_bytes([buf[14], buf[15]])))
            } else if buf.len() >= 16
                || !b"\r\n\r\n\0\r\nQUIT\n".starts_with(&buf) && !b"PROXY ".starts_with(&buf[..buf.len().min(6)])
            {
                return Ok(()); // no header: refuse, as a PROXY-speaking server does
            } else {
                None
            };
            if let Some(len) = len.filter(|l| buf.len() >= *l) {
                break buf.drain(..len).collect::<Vec<u8>>();
            }
        };
        let number = {
            let mut all = seen.lock().unwrap();
            all.push(header.clone());
            all.len()
        };
        let body = if header.starts_with(b"PROXY") {
            String::from_utf8_lossy(&header).trim_end().to_string()
        } else {
            header.iter().map(|b| format!("{b:02x}")).collect()
        };
        loop {
            while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..end + 4);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-conn: {number}\r\n\r\n{body}",
                    body.len()
                );
                s.write_all(resp.as_bytes()).await?;
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn headers(&self) -> Vec<Vec<u8>> {
        self.headers.lock().unwrap().clone()
    }
}

/// GETs `count` times over one HTTP/1.1 connection; each answer's body and `x-conn`.
async fn bodies_h1(tcp: TcpStream, count: usize) -> Vec<(String, String)> {
    let paths = vec!["/"; count];
    let mut out = Vec::new();
    for r in h1_get_over(tcp, "lb.test", &paths).await {
        assert_eq!(r.status, 200);
        out.push((r.text(), r.headers["x-conn"].to_str().unwrap().to_string()));
    }
    out
}

#[tokio::test]
async fn send_proxy_v1_names_each_client_on_a_connection_of_its_own() {
    let up = ProxyReadingUpstream::start().await;
    let gw = TestGateway::start(&one_listener("sp-v1", up.addr, "", "send_proxy = \"v1\"")).await;
    let listener = gw.addr("sp-v1");
    let a = TcpStream::connect(listener).await.unwrap();
    let a_port = a.local_addr().unwrap().port();
    let want_a = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {a_port} {}", listener.port());
    let first = bodies_h1(a, 2).await;
    assert_eq!(
        first,
        [(want_a.clone(), "1".to_string()), (want_a.clone(), "1".to_string())]
    );

    // Another client gets a connection of its own, whose header names it.
    let b = TcpStream::connect(listener).await.unwrap();
    let b_port = b.local_addr().unwrap().port();
    let want_b = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {b_port} {}", listener.port());
    assert_eq!(bodies_h1(b, 1).await, [(want_b, "2".to_string())]);
    assert_eq!(up.headers().len(), 2);
}

#[tokio::test]
async fn send_proxy_v2_passes_on_the_client_a_proxy_header_named() {
    let up = ProxyReadingUpstream::start().await;
    let gw = TestGateway::start(&one_listener(
        "sp-v2",
        up.addr,
        "proxy_protocol = true",
        "send_proxy = \"v2\"",
    ))
    .await;
    let tcp = connect_with(
        &gw,
        "sp-v2",
        b"PROXY TCP4 203.0.113.7 198.51.100.1 51234 443\r\n",
        false,
    )
    .await;
    let got = bodies_h1(tcp, 1).await;
    // v2, PROXY over TCP/IPv4, 12 address bytes: 203.0.113.7 -> 198.51.100.1, 51234 -> 443.
    assert_eq!(got[0].0, "0d0a0d0a000d0a515549540a2111000ccb007107c6336401c82201bb");
}

#[tokio::test]
async fn health_checks_of_a_send_proxy_pool_say_they_are_weirs_own() {
    let up = ProxyReadingUpstream::start().await;
    let gw = TestGateway::start(&one_listener(
        "sp-health",
        up.addr,
        "",
        "send_proxy = \"v1\"\n[pool.health]\npath = \"/upcheck\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nhealthy_threshold = 1",
    ))
    .await;
    let checked = async || up.headers().iter().any(|h| h == b"PROXY UNKNOWN\r\n");
    assert!(eventually(Duration::from_secs(10), checked).await, "{:?}", up.headers());
    // The endpoint passed its check: traffic flows, under headers naming the client.
    let ready = async || get(&gw.url("sp-health", "/")).await.status == 200;
    assert!(eventually(Duration::from_secs(10), ready).await);
    assert!(up.headers().iter().any(|h| h.starts_with(b"PROXY TCP4 127.0.0.1 ")));
}
