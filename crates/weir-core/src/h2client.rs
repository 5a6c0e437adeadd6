//! HTTP/2 to a pool's upstreams (`protocol = "h2"`: gRPC services, HTTP/2-only servers).
//!
//! Each endpoint has one connection, opened on first use (prior knowledge on plain TCP, ALPN
//! `h2` with `[pool.tls]`) and shared by every request to it as streams, as Envoy does; one
//! more when every open one carries as many streams as the upstream allows. hyper's client
//! drives each connection in a task of its own, the one channel hop this path takes
//! (HTTP/2's framing needs a task that reads for every stream); the HTTP/1.1 path keeps its
//! inline client.
//!
//! A connection that closes (the upstream restarted, or sent GOAWAY) is replaced by the next
//! request. A request the upstream provably did not process (a stream refused, or one above
//! a GOAWAY's last stream id, RFC 9113 §8.7) counts as unsent, so even a POST may go again.
//! Trailers pass both ways, so gRPC's `grpc-status` reaches the client.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::body::BoxError;
use crate::client_body::ClientBody;
use crate::error::source_of;
use crate::h1client::UpStream;
use crate::upstream::{ConnectError, Endpoint, coarse_ms};
use crate::upstream_tls::UpstreamTls;

/// Keep-alive PINGs, idle or not, find an upstream that vanished without a FIN (a host
/// powered off) before a request waits on it: the connection ends, and the next request
/// opens a new one.
const PING_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// What one response stream may have in flight towards weir before its client takes it.
/// The connection's window is the protocol's largest: the streams share the connection, and a
/// window that a few clients that stopped reading could fill (hyper's default is 5 MiB, two
/// and a half streams' worth) would stall every other request to the endpoint until
/// `send_timeout` let them go. Each stalled stream holds at most its own window in weir.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;

pub type H2Sender = SendRequest<H2ReqBody>;
type Driver = hyper::client::conn::http2::Connection<TokioIo<UpStream>, H2ReqBody, TokioExecutor>;

/// A request body on an HTTP/2 stream to an upstream.
#[derive(Debug)]
pub enum H2ReqBody {
    Empty,
    /// A buffered body (one kept for replays: the stream gets a cheap copy), and its trailers.
    Full(Option<Bytes>, Option<http::HeaderMap>),
    /// The client's body, frames (trailers included) passed on as they arrive.
    Streamed(ClientBody),
}

impl Body for H2ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            H2ReqBody::Empty => Poll::Ready(None),
            H2ReqBody::Full(data, trailers) => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            H2ReqBody::Streamed(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            H2ReqBody::Empty => true,
            H2ReqBody::Full(data, trailers) => data.is_none() && trailers.is_none(),
            H2ReqBody::Streamed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            H2ReqBody::Empty => SizeHint::with_exact(0),
            H2ReqBody::Full(data, _) => SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64)),
            H2ReqBody::Streamed(b) => b.size_hint(),
        }
    }
}

/// An endpoint's HTTP/2 connections: usually one; another is opened when every open one has
/// as many streams as its upstream allows (`SETTINGS_MAX_CONCURRENT_STREAMS`), so that
/// long-lived streams (gRPC server streaming, watches) never leave new requests waiting in
/// a connection's queue, as Envoy's pools do.
#[derive(Default)]
pub struct H2Slot {
    conns: arc_swap::ArcSwap<Vec<Arc<H2Conn>>>,
    /// Whether the last request on a new connection failed: logged when that starts (an
    /// upstream that does not speak HTTP/2 is a config problem to see at once) and when a
    /// request succeeds again.
    failing: AtomicBool,
    /// Held while a connection is being opened: requests arriving meanwhile wait for it
    /// rather than open one each.
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for H2Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Slot").field("open", &self.open()).finish()
    }
}

pub struct H2Conn {
    send: H2Sender,
    /// The `UpstreamTls::id` it was made with (0: plain): a reload that changes the pool's
    /// TLS settings does not reuse it.
    tls_id: u64,
    /// When a request last took it ([`coarse_ms`]), for the idle sweep.
    used_ms: AtomicU64,
    /// Streams of weir's open on it: requests sent whose responses have not ended.
    active: AtomicUsize,
    /// hyper's end of the connection, driven by a task of its own; asked here for the
    /// upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` (100 until its first SETTINGS, as hyper
    /// assumes). hyper applies SETTINGS in an inner task: this is where they can be read.
    /// Dropped once it ends, which fails the requests still queued for it.
    driver: Arc<std::sync::Mutex<Option<Pin<Box<Driver>>>>>,
    /// Set when a request found it going away: no new stream goes on it.
    retired: AtomicBool,
}

impl H2Conn {
    fn takes_streams(&self, tls_id: u64) -> bool {
        self.tls_id == tls_id && !self.retired.load(Ordering::Relaxed) && !self.send.is_closed()
    }
}

/// A request's stream on one of an endpoint's connections, counted there until dropped (the
/// response's end, or the attempt's).
pub struct H2Stream(Arc<H2Conn>);

impl H2Stream {
    /// The connection went away under this stream: later requests open a new one.
    pub fn retire(&self) {
        self.0.retired.store(true, Ordering::Relaxed);
    }

    /// A handle to send the stream's request on its connection.
    pub fn sender(&self) -> H2Sender {
        self.0.send.clone()
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2Stream")
    }
}

impl H2Slot {
    /// The connections open now (status: what an HTTP/2 endpoint has instead of idle ones).
    pub fn open(&self) -> usize {
        self.conns.load().iter().filter(|c| !c.send.is_closed()).count()
    }

    /// A stream on one of the endpoint's connections with room for one, and whether that
    /// connection was open already; a new connection when none has room.
    pub async fn stream(
        &self,
        endpoint: &Endpoint,
        connect_timeout: Duration,
        tls: Option<&UpstreamTls>,
    ) -> Result<(H2Stream, bool), ConnectError> {
        let tls_id = tls.map_or(0, |t| t.id);
        if let Some(stream) = self.claim(tls_id) {
            return Ok((stream, true));
        }
        let _opening = self.connecting.lock().await;
        // Another request may have opened one while this one waited for the lock.
        if let Some(stream) = self.claim(tls_id) {
            return Ok((stream, true));
        }
        let io = endpoint.connect_stream(connect_timeout, None, tls).await?;
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, H2ReqBody>(TokioIo::new(io));
        let (send, conn) = tokio::time::timeout(connect_timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|e| ConnectError::Io(std::io::Error::other(e)))?;
        let driver = Arc::new(std::sync::Mutex::new(Some(Box::pin(conn))));
        let driven = driver.clone();
        let label = endpoint.label.clone();
        tokio::spawn(async move {
            let ended = std::future::poll_fn(|cx| {
                let Ok(mut slot) = driven.lock() else {
                    return Poll::Ready(Ok(()));
                };
                let Some(conn) = slot.as_mut() else {
                    return Poll::Ready(Ok(()));
                };
                let polled = conn.as_mut().poll(cx);
                if polled.is_ready() {
                    *slot = None;
                }
                polled
            })
            .await;
            if let Err(e) = ended {
                tracing::debug!(endpoint = %label, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        let conn = Arc::new(H2Conn {
            send,
            tls_id,
            used_ms: AtomicU64::new(coarse_ms()),
            active: AtomicUsize::new(1),
            driver,
            retired: AtomicBool::new(false),
        });
        self.conns.rcu(|conns| {
            let mut kept: Vec<Arc<H2Conn>> = conns.iter().filter(|c| c.takes_streams(c.tls_id)).cloned().collect();
            kept.push(conn.clone());
            kept
        });
        Ok((H2Stream(conn), false))
    }

    /// Notes how a request went: a failure on a connection that had just opened is logged as a
    /// warning once until a request succeeds again.
    pub fn note(&self, endpoint: &str, failure_on_new: Option<&hyper::Error>) {
        match failure_on_new {
            Some(error) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint, %error, "HTTP/2 request failed on a new upstream connection: does the endpoint speak HTTP/2 (h2c, or ALPN h2 with [pool.tls])? (logged again when one succeeds)");
                }
            }
            None => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint, "HTTP/2 requests succeed again");
                }
            }
        }
    }

    /// A stream on the first open connection with room for one.
    fn claim(&self, tls_id: u64) -> Option<H2Stream> {
        let conns = self.conns.load();
        conns.iter().filter(|c| c.takes_streams(tls_id)).find_map(|c| {
            let max = c
                .driver
                .lock()
                .ok()
                .and_then(|d| d.as_ref().map(|d| d.current_max_send_streams()))
                .unwrap_or(0);
            c.active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
                .ok()?;
            c.used_ms.store(coarse_ms(), Ordering::Relaxed);
            Some(H2Stream(c.clone()))
        })
    }

    /// Lets go of connections that closed, went away, or carried no stream for
    /// `idle_timeout`: hyper closes each once the streams still on it end.
    pub fn sweep(&self, idle_timeout: Duration) {
        let now = coarse_ms();
        let idle = |c: &H2Conn| {
            c.active.load(Ordering::Acquire) == 0
                && u128::from(now.saturating_sub(c.used_ms.load(Ordering::Relaxed))) >= idle_timeout.as_millis()
        };
        if self.conns.load().iter().all(|c| c.takes_streams(c.tls_id) && !idle(c)) {
            return;
        }
        self.conns.rcu(|conns| {
            conns
                .iter()
                .filter(|c| c.takes_streams(c.tls_id) && !idle(c))
                .cloned()
                .collect::<Vec<_>>()
        });
    }
}

/// The h2 error under a hyper one, if any.
fn h2_error(err: &hyper::Error) -> Option<&h2::Error> {
    source_of::<h2::Error>(err)
}

/// Whether an HTTP/2 request error proves the upstream did not process the request: it
/// refused the stream (`REFUSED_STREAM`, RFC 9113 §8.7). A GOAWAY alone does not: h2 gives
/// its error to the streams below its last stream id too when the connection then ends.
pub fn unprocessed(err: &hyper::Error) -> bool {
    h2_error(err).is_some_and(|e| e.is_remote() && e.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// Whether the connection itself went away under the request (closed, or a graceful GOAWAY):
/// a replayable request may go again on a new connection, as over a stale HTTP/1.1 one.
pub fn connection_gone(err: &hyper::Error) -> bool {
    if err.is_canceled() || err.is_closed() {
        return true;
    }
    h2_error(err).is_some_and(|e| e.is_io() || (e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR)))
}

/// The status a client's body failure gets, when that is what broke the exchange.
pub fn client_body_status(err: &hyper::Error) -> Option<u16> {
    source_of::<crate::client_body::ClientBodyError>(err).map(|e| e.status)
}

/// What one attempt over HTTP/2 gave. Returned once per attempt and taken apart at once, so
/// the size of its variants matters little.
#[allow(clippy::large_enum_variant)]
pub enum H2Answer {
    Response(http::Response<Incoming>),
    /// Failed; whether the upstream provably saw nothing of it, and the request back when
    /// hyper had not taken it.
    Failed {
        error: hyper::Error,
        unsent: bool,
        request: Option<Request<H2ReqBody>>,
    },
    TimedOut,
}

/// Sends `req` on `send` and waits up to `per_try` for the response head.
pub async fn exchange(mut send: H2Sender, req: Request<H2ReqBody>, per_try: Duration) -> H2Answer {
    match tokio::time::timeout(per_try, send.try_send_request(req)).await {
        Ok(Ok(resp)) => H2Answer::Response(resp),
        Ok(Err(mut e)) => {
            let request = e.take_message();
            let error = e.into_error();
            let unsent = request.is_some() || unprocessed(&error);
            H2Answer::Failed { error, unsent, request }
        }
        // Dropping the request's future resets its stream (CANCEL); the connection carries on.
        Err(_) => H2Answer::TimedOut,
    }
}
