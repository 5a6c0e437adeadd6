//! Clients for tests: HTTP/1.1 and h2c through hyper, TLS with a chosen SNI name and ALPN, and a
//! raw TCP exchange for malformed requests hyper would never send.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The `x-upstream` header: which test upstream answered.
    pub fn upstream(&self) -> String {
        self.headers
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

/// A response read whole (a body that breaks off reads as what arrived: empty).
pub async fn collect(resp: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
        version: parts.version,
    }
}

/// GET over HTTP/1.1.
pub async fn get(url: &str) -> Reply {
    request(Request::get(url).body(Full::new(Bytes::new())).unwrap()).await
}

/// Any request over HTTP/1.1 (a fresh client each time: no connection reuse between calls).
pub async fn request(req: Request<Full<Bytes>>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    collect(resp).await
}

/// POST over HTTP/1.1 of a body without a length, sent in `pieces` pieces of 1 KiB with
/// `gap` before each: a slow upload (a large file over a slow link).
pub async fn post_trickle(url: &str, pieces: usize, gap: Duration) -> Reply {
    let frames = futures_util::stream::unfold(0, move |sent| async move {
        if sent == pieces {
            return None;
        }
        tokio::time::sleep(gap).await;
        let frame = hyper::body::Frame::data(Bytes::from(vec![b'u'; 1024]));
        Some((Ok::<_, std::io::Error>(frame), sent + 1))
    });
    post_streamed(url, http_body_util::StreamBody::new(Box::pin(frames))).await
}

/// POST over HTTP/1.1 of a streamed `body`.
async fn post_streamed<B>(url: &str, body: B) -> Reply
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = Client::builder(TokioExecutor::new()).build_http::<B>();
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        client.request(Request::post(url).body(body).unwrap()),
    )
    .await
    .expect("request timed out")
    .expect("request failed");
    collect(resp).await
}

/// POST of `body` (with its length) over HTTP/1.1.
pub async fn post(url: &str, body: &'static [u8]) -> Reply {
    request(Request::post(url).body(Full::new(Bytes::from_static(body))).unwrap()).await
}

/// POST over HTTP/1.1 of a body without a length (chunked): `pieces` pieces of `size` bytes.
pub async fn post_chunked(url: &str, pieces: usize, size: usize) -> Reply {
    let frames = (0..pieces)
        .map(move |_| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(vec![b'x'; size]))));
    post_streamed(url, http_body_util::StreamBody::new(futures_util::stream::iter(frames))).await
}

/// GET over HTTP/2 with prior knowledge (h2c).
pub async fn h2c_get(url: &str) -> Reply {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let resp = client
        .request(Request::get(url).body(Empty::new()).unwrap())
        .await
        .expect("h2c request failed");
    collect(resp).await
}

/// GETs `paths` one after the other over HTTP/1.1 (keep-alive, `Host: host`; at most 10 s
/// each) on a connection the test opened (and may have written to, e.g. a PROXY header).
pub async fn h1_get_over(tcp: TcpStream, host: &str, paths: &[&str]) -> Vec<Reply> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 handshake failed");
    tokio::spawn(conn);
    let mut replies = Vec::new();
    for path in paths {
        let req = Request::get(*path)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        replies.push(send_over(send.send_request(req), Duration::from_secs(10)).await);
    }
    replies
}

/// Waits (at most `limit`) for a response sent on a connection of the test's, and collects it.
async fn send_over(
    sent: impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
    limit: Duration,
) -> Reply {
    let resp = tokio::time::timeout(limit, sent)
        .await
        .expect("request timed out")
        .expect("request failed");
    collect(resp).await
}

/// GET over HTTP/2 with prior knowledge on a connection the test opened (and may have written
/// to, e.g. a PROXY header).
pub async fn h2c_get_over(tcp: TcpStream, path: &str) -> Reply {
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .expect("h2c handshake failed");
    tokio::spawn(conn);
    let req = Request::get(format!("http://weir.test{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    send_over(send.send_request(req), Duration::from_secs(30)).await
}

/// GET over TLS to `addr`, presenting `server_name` as SNI and offering `alpn`. Returns the
/// reply, the negotiated ALPN protocol and the server's leaf certificate.
pub async fn tls_get(
    addr: SocketAddr,
    server_name: &str,
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
    path: &str,
) -> (Reply, Option<Vec<u8>>, CertificateDer<'static>) {
    tls_get_over(TcpStream::connect(addr).await.unwrap(), server_name, ca, alpn, path).await
}

/// [`tls_get`] on a connection the test opened (and may have written to, e.g. a PROXY header).
pub async fn tls_get_over(
    tcp: TcpStream,
    server_name: &str,
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
    path: &str,
) -> (Reply, Option<Vec<u8>>, CertificateDer<'static>) {
    let connector = tokio_rustls::TlsConnector::from(tls_client(ca, alpn));
    let tls = connector
        .connect(ServerName::try_from(server_name.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake failed");
    let negotiated = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .unwrap();
    let uri = format!("https://{server_name}{path}");
    let io = TokioIo::new(tls);
    let resp = if negotiated.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(Request::get(uri).body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(
            Request::get(path)
                .header("host", server_name)
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap()
    };
    (collect(resp).await, negotiated, leaf)
}

/// A TLS client trusting `ca` and offering `alpn`, with a session store of its own: a
/// connection made with it resumes the session of an earlier one when the server lets it.
pub fn tls_client(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// One HTTP/1.1 request over a new TLS connection to `addr` made with `client`, read to its
/// end (so that the session tickets sent after the handshake reach the client's store); how
/// the handshake went, and the server's leaf certificate.
pub async fn tls_handshake(
    addr: SocketAddr,
    server_name: &str,
    client: &Arc<rustls::ClientConfig>,
) -> (rustls::HandshakeKind, CertificateDer<'static>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from(server_name.to_string()).unwrap(), tcp)
        .await
        .expect("TLS handshake failed");
    let head = format!("GET / HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out))
        .await
        .expect("no response within 10 s")
        .unwrap();
    assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
    let conn = tls.get_ref().1;
    let leaf = conn.peer_certificates().and_then(|c| c.first().cloned()).unwrap();
    (conn.handshake_kind().unwrap(), leaf)
}

/// Writes `bytes` to `addr` and reads until the server closes (or 10 s pass).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A new h2c connection to `addr` (its frames driven by a task of its own), to send requests
/// with bodies of type `B` on.
pub async fn h2c_sender<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .expect("h2c handshake failed");
    tokio::spawn(conn);
    send
}

/// A WebSocket over HTTP/2 (RFC 8441, as browsers open one) on a new h2c connection to `addr`:
/// see [`h2_websocket_on`].
pub async fn h2_websocket(
    addr: SocketAddr,
    path: &str,
    protocols: Option<&str>,
) -> (
    http::response::Parts,
    Option<tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>,
) {
    h2_websocket_on(&mut h2c_sender(addr).await, path, protocols).await
}

/// A WebSocket over HTTP/2: an extended CONNECT to `path` on `send`'s connection, offering
/// `protocols` as `Sec-WebSocket-Protocol`. The response head, and on a 200 the WebSocket on
/// that stream.
pub async fn h2_websocket_on(
    send: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    path: &str,
    protocols: Option<&str>,
) -> (
    http::response::Parts,
    Option<tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>>,
) {
    let mut req = Request::connect(format!("http://weir.test{path}")).header("sec-websocket-version", "13");
    if let Some(p) = protocols {
        req = req.header("sec-websocket-protocol", p);
    }
    let mut req = req.body(Empty::<Bytes>::new()).unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
        .await
        .expect("answer within 10 s")
        .unwrap();
    if resp.status() != StatusCode::OK {
        return (resp.into_parts().0, None);
    }
    let upgraded = hyper::upgrade::on(&mut resp).await.unwrap();
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    (resp.into_parts().0, Some(ws))
}

/// Sends `texts` text messages (`"{prefix} {i}"`) and then `binary` (unless empty) over `ws`,
/// asserting each comes back as sent (the test upstreams' `/ws` echoes). Leaves `ws` open.
pub async fn ws_echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, prefix: &str, texts: usize, binary: &[u8])
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<S>| {
        tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an echo within 10 s")
            .expect("the WebSocket still open")
            .expect("a message")
    };
    for i in 0..texts {
        let text = format!("{prefix} {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next(ws).await.into_text().unwrap().as_str(), text);
    }
    if !binary.is_empty() {
        ws.send(Message::binary(binary.to_vec())).await.unwrap();
        assert_eq!(next(ws).await.into_data().as_ref(), binary);
    }
}
