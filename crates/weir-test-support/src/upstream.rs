//! Upstream servers for tests: hyper HTTP/1 (or HTTP/2: `start_h2`, `start_h2_tls`) servers on
//! `127.0.0.1:0` whose behaviour is chosen by the request path, with counters of connections
//! and requests.
//!
//! Paths: `/delay/<ms>` answers after a delay; `/status/<code>` answers that status; `/bytes/<n>`
//! streams `n` bytes; `/hang` never answers; `/stall` answers 200 with `half` of its body and
//! never sends the rest; `/ws` is a WebSocket echo; `/trailers` reads the
//! request to its end and answers as a gRPC server does, `grpc-status` in trailers (see
//! [`trailers`]); anything else echoes the request as JSON (`method`, `path`, `version`,
//! `headers`, `body_len`, `max_frame`: the largest piece of body hyper handed over,
//! `upstream`). Request bodies are counted as they stream, never buffered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

#[derive(Default, Debug)]
pub struct Counters {
    pub connections: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    pub requests: AtomicU64,
    pub body_bytes: AtomicU64,
    /// When set, every request's connection is closed without a response (a crashing server).
    pub reset: std::sync::atomic::AtomicBool,
    /// What `GET /upcheck` answers (200 "I'm up!" by default); 0 = never answer.
    pub upcheck_status: std::sync::atomic::AtomicU16,
    /// Every request (not `/upcheck`) is answered this many milliseconds late (a slow replica).
    pub delay_ms: AtomicU64,
    /// Health checks received on `/upcheck` (not counted in `requests`).
    pub checks: AtomicU64,
    /// Every `x-test-id` header received, in order (to prove a request was never replayed).
    pub ids: std::sync::Mutex<Vec<String>>,
    /// What hyper refused of what arrived: connection errors (a malformed head) and request
    /// body errors (malformed chunks, or a body cut short), as `Debug` text.
    pub refused: std::sync::Mutex<Vec<String>>,
    /// TLS handshakes that resumed an earlier session (`start_tls` upstreams).
    pub resumed: AtomicU64,
    /// Requests (not `/upcheck`) being handled now, and the most at once.
    pub concurrent: AtomicU64,
    pub peak_concurrent: AtomicU64,
}

/// Counts a connection as open until dropped.
struct Open(Arc<Counters>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a request as being handled until dropped.
struct Handling(Arc<Counters>);

impl Handling {
    fn start(c: &Arc<Counters>) -> Self {
        let now = c.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
        c.peak_concurrent.fetch_max(now, Ordering::SeqCst);
        Handling(c.clone())
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.concurrent.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    tasks: Option<tokio::task::JoinHandle<()>>,
}

type Body = BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(b.into())
        .map_err(|never| match never {})
        .boxed()
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    pub async fn start_on(addr: SocketAddr, name: &str) -> Upstream {
        Self::serve(addr, name, None, None).await
    }

    /// An upstream speaking HTTP/2 only (prior knowledge, h2c), as a gRPC server does.
    pub async fn start_h2(name: &str) -> Upstream {
        Self::start_h2_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    pub async fn start_h2_on(addr: SocketAddr, name: &str) -> Upstream {
        Self::serve(addr, name, None, Some(200)).await
    }

    /// An HTTP/2 upstream that allows `max_streams` concurrent streams per connection
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`; hyper's default is 200).
    pub async fn start_h2_limited(name: &str, max_streams: u32) -> Upstream {
        Self::serve("127.0.0.1:0".parse().unwrap(), name, None, Some(max_streams)).await
    }

    /// An upstream speaking HTTP/2 over TLS; `tls` should offer ALPN `h2`.
    pub async fn start_h2_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> Upstream {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        Self::serve("127.0.0.1:0".parse().unwrap(), name, Some(acceptor), Some(200)).await
    }

    /// An upstream speaking HTTPS with `tls` (see `TestCerts::upstream_server`). Failed
    /// handshakes are recorded in `refused` as `tls: ...`.
    pub async fn start_tls(name: &str, tls: Arc<rustls::ServerConfig>) -> Upstream {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        Self::serve("127.0.0.1:0".parse().unwrap(), name, Some(acceptor), None).await
    }

    /// `h2`: HTTP/2 with that many concurrent streams per connection; `None`: HTTP/1.1.
    async fn serve(addr: SocketAddr, name: &str, tls: Option<tokio_rustls::TlsAcceptor>, h2: Option<u32>) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        counters.upcheck_status.store(200, Ordering::SeqCst);
        let name_s = name.to_string();
        let c = counters.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                c.connections.fetch_add(1, Ordering::SeqCst);
                c.open.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                let name = name_s.clone();
                let tls = tls.clone();
                conns.spawn(async move {
                    let _open = Open(c.clone());
                    match tls {
                        None => serve_connection(stream, h2, name, c).await,
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => {
                                if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                                    c.resumed.fetch_add(1, Ordering::SeqCst);
                                }
                                serve_connection(tls, h2, name, c).await
                            }
                            Err(e) => {
                                if let Ok(mut refused) = c.refused.lock() {
                                    refused.push(format!("tls: {e}"));
                                }
                            }
                        },
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Upstream {
            name: name.to_string(),
            addr,
            counters,
            tasks: Some(task),
        }
    }

    /// Stops accepting and drops every connection (like a killed process).
    pub fn stop(&mut self) {
        if let Some(t) = self.tasks.take() {
            t.abort();
        }
    }

    /// What `GET /upcheck` answers from now on; 0 makes it hang.
    pub fn set_upcheck(&self, status: u16) {
        self.counters.upcheck_status.store(status, Ordering::SeqCst);
    }

    pub fn ids(&self) -> Vec<String> {
        self.counters.ids.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn checks(&self) -> u64 {
        self.counters.checks.load(Ordering::SeqCst)
    }

    /// From now on, answer every request `ms` milliseconds late.
    pub fn set_delay(&self, ms: u64) {
        self.counters.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// From now on, close every request's connection without answering.
    pub fn set_resetting(&self, on: bool) {
        self.counters.reset.store(on, Ordering::SeqCst);
    }

    /// The most requests it was handling at once.
    pub fn peak_concurrent(&self) -> u64 {
        self.counters.peak_concurrent.load(Ordering::SeqCst)
    }

    /// TLS handshakes that resumed a session.
    pub fn resumed(&self) -> u64 {
        self.counters.resumed.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> u64 {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Connections open now (closed by either side: counted once the server has seen it).
    pub fn open_connections(&self) -> u64 {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// What hyper refused so far (see [`Counters::refused`]).
    pub fn refused(&self) -> Vec<String> {
        self.counters.refused.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn body_bytes(&self) -> u64 {
        self.counters.body_bytes.load(Ordering::SeqCst)
    }
}

/// Serves one connection over HTTP/1.1 (upgrades allowed), or HTTP/2 with `h2` streams at
/// most; what hyper refuses goes to `refused`.
async fn serve_connection<I>(io: I, h2: Option<u32>, name: String, c: Arc<Counters>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let counters = c.clone();
    let svc = service_fn(move |req| handle(req, name.clone(), counters.clone()));
    let served = match h2 {
        Some(max_streams) => {
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .max_concurrent_streams(max_streams)
                .enable_connect_protocol()
                .serve_connection(TokioIo::new(io), svc)
                .await
        }
        None => {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades()
                .await
        }
    };
    if let Err(e) = served
        && let Ok(mut refused) = c.refused.lock()
    {
        refused.push(format!("connection: {e:?}"));
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn handle(mut req: Request<Incoming>, name: String, c: Arc<Counters>) -> Result<Response<Body>, std::io::Error> {
    if req.uri().path() == "/grpc.health.v1.Health/Check" {
        return Ok(grpc_health(req, &c).await);
    }
    if req.uri().path() == "/upcheck" {
        c.checks.fetch_add(1, Ordering::SeqCst);
        let status = c.upcheck_status.load(Ordering::SeqCst);
        if status == 0 {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let mut r = Response::new(full(if status == 200 { "I'm up!" } else { "down" }));
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return Ok(r);
    }
    c.requests.fetch_add(1, Ordering::SeqCst);
    let _handling = Handling::start(&c);
    if let Some(id) = req.headers().get("x-test-id").and_then(|v| v.to_str().ok())
        && let Ok(mut ids) = c.ids.lock()
    {
        ids.push(id.to_string());
    }
    if c.reset.load(Ordering::SeqCst) {
        return Err(std::io::Error::other("resetting on purpose"));
    }
    let delay = c.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["ws"] => return Ok(websocket(&mut req)),
        ["trailers"] => return Ok(trailers(req, &name).await),
        ["hang"] => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        ["delay", ms] => {
            let ms: u64 = ms.parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        ["bytes", n] => {
            let n: u64 = n.parse().unwrap_or(0);
            return Ok(stream_bytes(n, &name));
        }
        ["stall"] => {
            let first =
                futures_util::stream::once(async { Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(b"half"))) });
            let stream = first.chain(futures_util::stream::pending());
            return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
        }
        _ => {}
    }
    let status = match parts.as_slice() {
        ["status", code] => code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK),
        _ => StatusCode::OK,
    };
    // `x-test-location`: answered as the response's `Location`.
    let location = req.headers().get("x-test-location").cloned();
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let entry = headers
            .entry(k.as_str().to_string())
            .or_insert_with(|| serde_json::Value::Array(vec![]));
        if let serde_json::Value::Array(a) = entry {
            a.push(serde_json::Value::String(
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    let mut body = req.into_body();
    let mut body_len = 0u64;
    let mut max_frame = 0usize;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_len += d.len() as u64;
                    max_frame = max_frame.max(d.len());
                    c.body_bytes.fetch_add(d.len() as u64, Ordering::SeqCst);
                }
            }
            Err(e) => {
                if let Ok(mut refused) = c.refused.lock() {
                    refused.push(format!("body: {e:?}"));
                }
                break;
            }
        }
    }
    let json = serde_json::json!({ "upstream": name, "method": method, "path": uri, "version": version, "headers": headers, "body_len": body_len, "max_frame": max_frame });
    let mut resp = Response::new(full(json.to_string()));
    *resp.status_mut() = status;
    if let Some(location) = location {
        resp.headers_mut().insert("location", location);
    }
    resp.headers_mut().insert("x-upstream", name.parse().unwrap());
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    // A hop-by-hop header the gateway must strip.
    resp.headers_mut().insert("keep-alive", "timeout=30".parse().unwrap());
    if parts.as_slice() == ["close"] {
        // The connection ends with this response: the next request needs a new one.
        resp.headers_mut().insert("connection", "close".parse().unwrap());
    }
    Ok(resp)
}

/// The gRPC health service, as a gRPC server answers it: SERVING while `/upcheck` would
/// answer 200, NOT_SERVING otherwise (never, for 0); the service `unknown` gets a
/// trailers-only NOT_FOUND. Counted in `checks`.
async fn grpc_health(req: Request<Incoming>, c: &Counters) -> Response<Body> {
    c.checks.fetch_add(1, Ordering::SeqCst);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // A frame (5 bytes), then field 1 (0x0a), a one-byte length and the name.
    let service = match body.get(5..7) {
        Some([0x0a, n]) => String::from_utf8_lossy(body.get(7..7 + *n as usize).unwrap_or_default()).into_owned(),
        _ => String::new(),
    };
    let grpc = |status: &'static str| {
        let mut r = Response::new(full(Bytes::new()));
        r.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        r.headers_mut().insert("grpc-status", status.parse().unwrap());
        r
    };
    if service == "unknown" {
        return grpc("5");
    }
    let serving = match c.upcheck_status.load(Ordering::SeqCst) {
        0 => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return grpc("4");
        }
        200 => 1u8,
        _ => 2,
    };
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = vec![
        Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, serving]))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames))));
    resp.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    resp
}

/// A gRPC-style answer: reads the request to its end (trailers included), then answers 200
/// with `content-type: application/grpc`, the body `n=<request body bytes>`, and trailers
/// `grpc-status: 0`, `grpc-message: served by <name>` and `x-request-trailer` (the request's
/// `x-trailer` trailer, or `none`).
async fn trailers(req: Request<Incoming>, name: &str) -> Response<Body> {
    let mut body = req.into_body();
    let mut n = 0usize;
    let mut request_trailer = String::from("none");
    while let Some(Ok(frame)) = body.frame().await {
        match frame.into_data() {
            Ok(d) => n += d.len(),
            Err(frame) => {
                if let Some(v) = frame.trailers_ref().and_then(|t| t.get("x-trailer")) {
                    request_trailer = String::from_utf8_lossy(v.as_bytes()).into_owned();
                }
            }
        }
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    if let Ok(v) = http::HeaderValue::from_str(&format!("served by {name}")) {
        trailers.insert("grpc-message", v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&request_trailer) {
        trailers.insert("x-request-trailer", v);
    }
    let frames = vec![
        Ok::<_, std::io::Error>(Frame::data(Bytes::from(format!("n={n}")))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames))));
    resp.headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    resp.headers_mut().insert("x-upstream", name.parse().unwrap());
    resp
}

fn stream_bytes(n: u64, name: &str) -> Response<Body> {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(CHUNK);
            Some((
                Ok::<_, std::io::Error>(Frame::data(chunk.slice(..take as usize))),
                left - take,
            ))
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut().insert("x-upstream", name.parse().unwrap());
    resp
}

/// Serves a WebSocket that echoes text and binary messages: over HTTP/1.1 after a `101`, over
/// HTTP/2 on an extended CONNECT's stream (RFC 8441) after a `200`. Either way the first
/// `Sec-WebSocket-Protocol` offered is chosen, and the request's `Via` comes back as
/// `x-request-via`.
fn websocket(req: &mut Request<Incoming>) -> Response<Body> {
    let via = req.headers().get("via").cloned();
    let subprotocol = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_string());
    let extended_connect = req.method() == http::Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str() == "websocket");
    if extended_connect {
        echo_websocket(hyper::upgrade::on(req));
        let mut r = Response::new(full(Bytes::new()));
        if let Some(p) = subprotocol {
            r.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
        }
        if let Some(v) = via {
            r.headers_mut().insert("x-request-via", v);
        }
        return r;
    }
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(full("not a websocket request"));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    echo_websocket(hyper::upgrade::on(req));
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(full(Bytes::new()))
        .unwrap();
    if let Some(p) = subprotocol {
        r.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
    }
    if let Some(v) = via {
        r.headers_mut().insert("x-request-via", v);
    }
    r
}

/// Echoes text and binary messages on the upgraded connection or stream until a close.
fn echo_websocket(on_upgrade: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
}
