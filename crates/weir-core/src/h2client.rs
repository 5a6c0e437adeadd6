//! HTTP/2 to a pool's upstreams (`protocol = "h2"`: gRPC services, HTTP/2-only servers).
//!
//! Each endpoint has one connection, opened on first use (prior knowledge on plain TCP, ALPN
//! `h2` with `[pool.tls]`) and shared by every request to it as streams, as nginx's
//! `grpc_pass` and Envoy do: the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` bounds it, and
//! hyper queues streams beyond that until one ends. hyper's client drives the connection in
//! a task of its own, the one channel hop this path takes (HTTP/2's framing needs a task that
//! reads for every stream); the HTTP/1.1 path keeps its inline client.
//!
//! A connection that closes (the upstream restarted, or sent GOAWAY) is replaced by the next
//! request. A request the upstream provably did not process (a stream refused, or one above
//! a GOAWAY's last stream id, RFC 9113 §8.7) counts as unsent, so even a POST may go again.
//! Trailers pass both ways, so gRPC's `grpc-status` reaches the client.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::upstream::{ConnectError, Endpoint, coarse_ms};
use crate::upstream_tls::UpstreamTls;

/// Keep-alive PINGs on an idle connection find an upstream that vanished without a FIN (a
/// host powered off) before a request waits on it.
const PING_INTERVAL: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

pub type H2Sender = SendRequest<H2ReqBody>;

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

/// An endpoint's HTTP/2 connection, if one is open.
#[derive(Default)]
pub struct H2Slot {
    current: arc_swap::ArcSwapOption<H2Conn>,
    /// Held while a connection is being opened: requests arriving meanwhile wait for it
    /// rather than open one each.
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for H2Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Slot").field("open", &self.is_open()).finish()
    }
}

struct H2Conn {
    send: H2Sender,
    /// The `UpstreamTls::id` it was made with (0: plain): a reload that changes the pool's
    /// TLS settings does not reuse it.
    tls_id: u64,
    /// When a request last took it ([`coarse_ms`]), for the idle sweep.
    used_ms: AtomicU64,
}

impl H2Slot {
    /// Whether a connection is open (status: it counts as the endpoint's one idle connection).
    pub fn is_open(&self) -> bool {
        self.current.load().as_ref().is_some_and(|c| !c.send.is_closed())
    }

    /// A sender on the endpoint's connection, and whether the connection was already open;
    /// a new connection (`fresh`, or when none is usable) otherwise.
    pub async fn sender(
        &self,
        endpoint: &Endpoint,
        connect_timeout: Duration,
        tls: Option<&UpstreamTls>,
        fresh: bool,
    ) -> Result<(H2Sender, bool), ConnectError> {
        let tls_id = tls.map_or(0, |t| t.id);
        if !fresh && let Some(send) = self.usable(tls_id) {
            return Ok((send, true));
        }
        let before = self.current.load_full();
        let _opening = self.connecting.lock().await;
        // Another request may have opened one while this one waited for the lock.
        let now = self.current.load_full();
        let replaced = match (&before, &now) {
            (Some(b), Some(n)) => !Arc::ptr_eq(b, n),
            (None, Some(_)) => true,
            _ => false,
        };
        if (!fresh || replaced)
            && let Some(send) = self.usable(tls_id)
        {
            return Ok((send, true));
        }
        let stream = endpoint.connect_stream(connect_timeout, None, tls).await?;
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .handshake::<_, H2ReqBody>(TokioIo::new(stream));
        let (send, conn) = tokio::time::timeout(connect_timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|e| ConnectError::Io(std::io::Error::other(e)))?;
        let label = endpoint.label.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(endpoint = %label, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        self.current.store(Some(Arc::new(H2Conn {
            send: send.clone(),
            tls_id,
            used_ms: AtomicU64::new(coarse_ms()),
        })));
        Ok((send, false))
    }

    fn usable(&self, tls_id: u64) -> Option<H2Sender> {
        let guard = self.current.load();
        let conn = guard.as_ref()?;
        if conn.tls_id != tls_id || conn.send.is_closed() {
            return None;
        }
        conn.used_ms.store(coarse_ms(), Ordering::Relaxed);
        Some(conn.send.clone())
    }

    /// Lets go of a connection no request took for `idle_timeout`, or one already closed:
    /// hyper closes it once the streams still on it end.
    pub fn sweep(&self, idle_timeout: Duration) {
        let guard = self.current.load();
        let Some(conn) = guard.as_ref() else { return };
        let idle_ms = coarse_ms().saturating_sub(conn.used_ms.load(Ordering::Relaxed));
        if conn.send.is_closed() || u128::from(idle_ms) >= idle_timeout.as_millis() {
            let stale = Arc::clone(conn);
            drop(guard);
            // Only if no request replaced it meanwhile.
            self.current.compare_and_swap(&Some(stale), None);
        }
    }
}

/// The h2 error under a hyper one, if any.
fn h2_error(err: &hyper::Error) -> Option<&h2::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        source = s.source();
    }
    None
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
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(s) = source {
        if let Some(e) = s.downcast_ref::<crate::client_body::ClientBodyError>() {
            return Some(e.status);
        }
        source = s.source();
    }
    None
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
