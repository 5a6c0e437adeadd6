//! HTTP/2 to a pool's upstreams (`protocol = "h2"`: gRPC services, HTTP/2-only servers).
//!
//! Each endpoint has one connection, opened on first use (prior knowledge on plain TCP, ALPN
//! `h2` with `[pool.tls]`) and shared by every request to it as streams, as Envoy does; one
//! more when every open one carries as many streams as the upstream allows.
//!
//! Built on the `h2` crate itself, as pingora is, not on hyper's client: a task of its own
//! drives each connection's frames (HTTP/2 needs one reader for every stream), and the
//! request's own task opens its stream, sends its body and awaits its response head. hyper's
//! client put a channel hop, a spawned task and a oneshot between the two per request.
//!
//! A connection that closes (the upstream restarted, or sent GOAWAY) is replaced by the next
//! request. A request the upstream provably did not process (a stream refused, or one above
//! a GOAWAY's last stream id, RFC 9113 §8.7) counts as unsent, so even a POST may go again.
//! Trailers pass both ways, so gRPC's `grpc-status` reaches the client.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use crate::body::BoxError;
use crate::client_body::ClientBody;
use crate::h1client::{Due, UpStream};
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
/// Streams opened before the upstream's first SETTINGS says how many it takes (RFC 9113
/// §6.5.2 recommends at least 100); h2 would assume no limit.
const INITIAL_MAX_STREAMS: usize = 100;
/// The largest response head (HPACK-decoded) an upstream may send, as weir's HTTP/1.1 client
/// allows.
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Request body bytes h2 may hold per stream while the upstream's window is shut.
const MAX_SEND_BUFFER: usize = 1 << 20;

/// A request body on an HTTP/2 stream to an upstream.
#[derive(Debug)]
pub enum H2ReqBody {
    Empty,
    /// A buffered body (one kept for replays: the stream gets a cheap copy), and its trailers.
    Full(Option<Bytes>, Option<http::HeaderMap>),
    /// The client's body, frames (trailers included) passed on as they arrive.
    Streamed(ClientBody),
}

impl H2ReqBody {
    fn is_empty(&self) -> bool {
        match self {
            H2ReqBody::Empty => true,
            H2ReqBody::Full(data, trailers) => data.is_none() && trailers.is_none(),
            H2ReqBody::Streamed(b) => b.is_end_stream(),
        }
    }
}

/// A response body from an HTTP/2 upstream: its DATA frames, then its trailers. Each frame's
/// bytes are given back to the stream's window as they are taken, so the upstream sends on
/// as fast as the client reads.
#[derive(Debug)]
pub struct H2RespBody {
    recv: RecvStream,
    data_done: bool,
    /// What `Content-Length` said is left, for the size hint (h2 checks the length itself).
    remaining: Option<u64>,
    /// The longest wait for the next frame (the pool's `timeouts.body`; zero: none), its
    /// timer (made at the first wait), and whether a wait is under way.
    stall_limit: Duration,
    timer: crate::h1client::ReusedTimer,
    waiting: bool,
}

impl H2RespBody {
    fn new(recv: RecvStream, headers: &http::HeaderMap) -> Self {
        let remaining = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        H2RespBody {
            recv,
            data_done: false,
            remaining,
            stall_limit: Duration::ZERO,
            timer: Default::default(),
            waiting: false,
        }
    }

    /// Sets the longest wait for the next frame of the body (`timeouts.body`).
    pub fn set_body_timeout(&mut self, limit: Duration) {
        self.stall_limit = limit;
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match std::task::ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Fails only once the stream is gone, which the next poll reports.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut self.remaining {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match std::task::ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }
}

impl Body for H2RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.poll_next(cx) {
            Poll::Pending => {
                let limit = this.stall_limit;
                if this.timer.poll_stalled(&mut this.waiting, limit, cx).is_ready() {
                    // The stream is reset (CANCEL) when the body is dropped.
                    return Poll::Ready(Some(Err(Box::new(crate::h1client::BodyError::Stalled(limit)))));
                }
                Poll::Pending
            }
            ready => {
                this.waiting = false;
                ready
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None if self.recv.is_end_stream() => SizeHint::with_exact(0),
            None => SizeHint::default(),
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
    /// Requests waiting for a stream to end because weir had no port or descriptor to open
    /// another connection; shared with every connection, whose ending streams wake one.
    freed: Arc<crate::freed::Freed>,
}

impl std::fmt::Debug for H2Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Slot").field("open", &self.open()).finish()
    }
}

pub struct H2Conn {
    /// Opens streams; h2 reads the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` through it.
    /// The connection closes (GOAWAY) once every clone of it and every stream is gone.
    send: SendRequest<Bytes>,
    /// The `UpstreamTls::id` it was made with (0: plain): a reload that changes the pool's
    /// TLS settings does not reuse it.
    tls_id: u64,
    /// When a request last took it ([`coarse_ms`]), for the idle sweep.
    used_ms: AtomicU64,
    /// Streams of weir's open on it: requests sent whose responses have not ended.
    active: AtomicUsize,
    /// Set by the task driving the connection when it ends.
    ended: Arc<AtomicBool>,
    /// Set when a request found it going away: no new stream goes on it.
    retired: AtomicBool,
    /// Turns true once the upstream answered the connection's first PING: its SETTINGS
    /// (sent before anything else) have then been applied, so that what they allow
    /// (`SETTINGS_ENABLE_CONNECT_PROTOCOL`) is known.
    settled: tokio::sync::watch::Receiver<bool>,
    /// Its slot's waiters ([`H2Slot::stream`]).
    freed: Arc<crate::freed::Freed>,
}

impl H2Conn {
    fn takes_streams(&self, tls_id: u64) -> bool {
        self.tls_id == tls_id && !self.retired.load(Ordering::Relaxed) && !self.ended.load(Ordering::Relaxed)
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
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.wake_one();
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
        self.conns
            .load()
            .iter()
            .filter(|c| !c.ended.load(Ordering::Relaxed))
            .count()
    }

    /// A stream on one of the endpoint's connections with room for one, and whether that
    /// connection was open already; a new connection when none has room. Without a port or
    /// descriptor for a new one, a stream ending within `connect_timeout` makes room.
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
        let opening = self.connecting.lock().await;
        // Another request may have opened one while this one waited for the lock.
        if let Some(stream) = self.claim(tls_id) {
            return Ok((stream, true));
        }
        let io = match endpoint.connect_stream(connect_timeout, None, tls).await {
            Ok(io) => io,
            Err(e) if e.is_local() => {
                drop(opening);
                return match self.freed.within(connect_timeout, || self.claim(tls_id)).await {
                    Some(stream) => Ok((stream, true)),
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let handshake = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_max_send_streams(INITIAL_MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .enable_push(false)
            .handshake::<_, Bytes>(io);
        let (send, conn) = tokio::time::timeout(connect_timeout, handshake)
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(|e| ConnectError::Io(std::io::Error::other(e)))?;
        let ended = Arc::new(AtomicBool::new(false));
        let pings = Pings {
            interval: PING_INTERVAL,
            timeout: PING_TIMEOUT,
        };
        let (settle, settled) = tokio::sync::watch::channel(false);
        tokio::spawn(drive(conn, ended.clone(), endpoint.label.clone(), pings, settle));
        let conn = Arc::new(H2Conn {
            send,
            tls_id,
            used_ms: AtomicU64::new(coarse_ms()),
            active: AtomicUsize::new(1),
            ended,
            retired: AtomicBool::new(false),
            settled,
            freed: self.freed.clone(),
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
    pub fn note(&self, endpoint: &str, failure_on_new: Option<&h2::Error>) {
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
            let max = c.send.current_max_send_streams();
            c.active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
                .ok()?;
            c.used_ms.store(coarse_ms(), Ordering::Relaxed);
            Some(H2Stream(c.clone()))
        })
    }

    /// Lets go of connections that closed, went away, or carried no stream for
    /// `idle_timeout`: h2 closes each once the streams still on it end.
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

/// How often a connection is PINGed, and how long an answer may take.
#[derive(Clone, Copy)]
struct Pings {
    interval: Duration,
    timeout: Duration,
}

/// Drives one connection's frames until it ends, with keep-alive PINGs: the first at once
/// (its answer sets `settled`: the upstream's SETTINGS came before it), then one every
/// `pings.interval`, and the connection is dropped (failing its streams, so requests go to a
/// new one) when an answer takes longer than `pings.timeout`.
async fn drive(
    mut conn: Connection<UpStream, Bytes>,
    ended: Arc<AtomicBool>,
    label: String,
    pings: Pings,
    settled: tokio::sync::watch::Sender<bool>,
) {
    let mut ping: Option<PingPong> = conn.ping_pong();
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    let mut awaiting_pong = false;
    let result = loop {
        tokio::select! {
            biased;
            r = &mut conn => break r,
            pong = poll_fn(|cx| match ping.as_mut() {
                Some(p) => p.poll_pong(cx),
                None => Poll::Pending,
            }), if awaiting_pong => match pong {
                Ok(_) => {
                    awaiting_pong = false;
                    settled.send_if_modified(|s| !std::mem::replace(s, true));
                    timer.as_mut().reset(Instant::now() + pings.interval);
                }
                Err(e) => break Err(e),
            },
            () = &mut timer => {
                if awaiting_pong {
                    tracing::debug!(endpoint = %label, "upstream HTTP/2 connection: no PING answer within {:?}; closing it", pings.timeout);
                    break Ok(());
                }
                if let Some(p) = ping.as_mut()
                    && let Err(e) = p.send_ping(Ping::opaque())
                {
                    break Err(e);
                }
                awaiting_pong = true;
                timer.as_mut().reset(Instant::now() + pings.timeout);
            }
        }
    };
    ended.store(true, Ordering::Relaxed);
    // Dropping the connection fails the streams still on it.
    drop(conn);
    if let Err(e) = result {
        tracing::debug!(endpoint = %label, error = %e, "upstream HTTP/2 connection ended");
    }
}

/// Whether an HTTP/2 request error proves the upstream did not process the request: it
/// refused the stream (`REFUSED_STREAM`, RFC 9113 §8.7). A GOAWAY alone does not: h2 gives
/// its error to the streams below its last stream id too when the connection then ends.
pub fn unprocessed(err: &h2::Error) -> bool {
    err.is_remote() && err.reason() == Some(Reason::REFUSED_STREAM)
}

/// Whether the connection itself went away under the request (closed, or a graceful GOAWAY):
/// a replayable request may go again on a new connection, as over a stale HTTP/1.1 one.
pub fn connection_gone(err: &h2::Error) -> bool {
    err.is_io() || (err.is_go_away() && err.reason() == Some(Reason::NO_ERROR))
}

/// What one attempt over HTTP/2 gave.
pub enum H2Answer {
    Response(http::Response<H2RespBody>),
    /// The stream could not be opened (the connection is going or gone): nothing was sent,
    /// and the body comes back.
    NotOpened(h2::Error, H2ReqBody),
    /// Failed after the stream opened; whether the upstream provably saw nothing of it.
    Failed(h2::Error, bool),
    /// The client's body broke off: answered with this status.
    ClientBody(u16),
    TimedOut,
}

/// Sends a request on `stream` and waits up to `per_try` for the response head. A streamed
/// body is sent from this task while it waits; what is left of it when the head comes goes on
/// in a task of its own (the upstream may answer before the upload ends, as gRPC's streaming
/// calls do).
pub async fn exchange(stream: &H2Stream, head: Request<()>, body: H2ReqBody, per_try: Duration) -> H2Answer {
    // As over HTTP/1.1 (`Deadline`): a streamed body's time waiting for its client does not
    // count, and the head is due `per_try` after the upstream last took some of it.
    let deadline = crate::h1client::Deadline::new(Instant::now(), per_try);
    let mut send = match stream.0.send.clone().ready().await {
        Ok(send) => send,
        Err(e) => return H2Answer::NotOpened(e, body),
    };
    let end_stream = body.is_empty();
    let (mut response, mut tx) = match send.send_request(head, end_stream) {
        Ok(opened) => opened,
        Err(e) => return H2Answer::NotOpened(e, body),
    };
    let mut pump = match body {
        _ if end_stream => None,
        H2ReqBody::Empty => None,
        H2ReqBody::Full(data, trailers) => {
            // Bounded by `retry.buffer_bytes`: h2 holds what the window does not take yet.
            let sent = match data {
                Some(data) => tx.send_data(data, trailers.is_none()),
                None => Ok(()),
            };
            if let Err(e) = sent.and_then(|()| trailers.map_or(Ok(()), |t| tx.send_trailers(t))) {
                return H2Answer::Failed(e, false);
            }
            None
        }
        H2ReqBody::Streamed(body) => Some(Pump {
            tx,
            body,
            pending: None,
            waiting_on_client: false,
            progressed: false,
        }),
    };
    let mut due = deadline.due();
    let timer = tokio::time::sleep_until(due.unwrap_or_else(crate::h1client::timer::far_off));
    tokio::pin!(timer);
    let waited = poll_fn(|cx| {
        if let Some(p) = pump.as_mut() {
            match p.poll_pump(cx) {
                Poll::Ready(pumped) => {
                    pump = None;
                    deadline.restart();
                    if let Err(Some(status)) = pumped {
                        return Poll::Ready(Ok(Err(status)));
                    }
                }
                Poll::Pending if p.waiting_on_client => deadline.hold(),
                Poll::Pending if std::mem::take(&mut p.progressed) => deadline.restart(),
                Poll::Pending => {}
            }
        }
        // `103 Early Hints` and the like, passed on to the client where it can take them.
        while let Poll::Ready(Some(Ok(interim))) = response.poll_informational(cx) {
            crate::interim::offer(interim.status(), interim.headers());
        }
        if let Poll::Ready(resp) = Pin::new(&mut response).poll(cx) {
            return Poll::Ready(Ok(Ok(resp)));
        }
        crate::h1client::timer::poll_due(timer.as_mut(), &mut due, &deadline, cx).map(|()| Err(()))
    })
    .await;
    match waited {
        Ok(Ok(Ok(resp))) => {
            if let Some(mut p) = pump {
                tokio::spawn(poll_fn(move |cx| p.poll_pump(cx).map(drop)));
            }
            let (parts, recv) = resp.into_parts();
            let body = H2RespBody::new(recv, &parts.headers);
            H2Answer::Response(http::Response::from_parts(parts, body))
        }
        Ok(Ok(Err(e))) => {
            let unsent = unprocessed(&e);
            H2Answer::Failed(e, unsent)
        }
        Ok(Err(status)) => H2Answer::ClientBody(status),
        // Dropping the response future and the body's sender resets the stream (CANCEL); the
        // connection carries on.
        Err(_) => H2Answer::TimedOut,
    }
}

/// What an extended CONNECT (RFC 8441) gave.
pub enum TunnelAnswer {
    /// The upstream took it (a 2xx): its response head, and the stream as a byte stream.
    Open(http::response::Parts, SendStream<Bytes>, RecvStream),
    /// The upstream declined with this response, which the client gets.
    Declined(http::Response<H2RespBody>),
    /// The upstream's SETTINGS do not allow extended CONNECT.
    NotOffered,
    /// The connection went away before the stream opened.
    Gone,
    /// Failed after the stream opened; whether the upstream provably saw nothing of it.
    Failed(h2::Error, bool),
    TimedOut,
}

/// Opens a tunnel (a WebSocket) on `stream` with an extended CONNECT, `head` carrying its
/// `:protocol`, and waits up to `per_try` for the answer. RFC 8441 §3 allows the request only
/// once the upstream's SETTINGS said so: on a new connection, those are awaited first.
pub async fn open_tunnel(stream: &H2Stream, head: Request<()>, per_try: Duration) -> TunnelAnswer {
    let deadline = Instant::now() + per_try;
    let conn = &stream.0;
    if !conn.send.is_extended_connect_protocol_enabled() {
        let mut settled = conn.settled.clone();
        match tokio::time::timeout_at(deadline, settled.wait_for(|s| *s)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return TunnelAnswer::Gone,
            Err(_) => return TunnelAnswer::TimedOut,
        }
        if !conn.send.is_extended_connect_protocol_enabled() {
            return TunnelAnswer::NotOffered;
        }
    }
    let mut send = match conn.send.clone().ready().await {
        Ok(send) => send,
        Err(_) => return TunnelAnswer::Gone,
    };
    let (response, mut tx) = match send.send_request(head, false) {
        Ok(opened) => opened,
        Err(_) => return TunnelAnswer::Gone,
    };
    match tokio::time::timeout_at(deadline, response).await {
        Ok(Ok(resp)) if resp.status().is_success() => {
            let (parts, recv) = resp.into_parts();
            TunnelAnswer::Open(parts, tx, recv)
        }
        Ok(Ok(resp)) => {
            // Declined: weir's side of the stream ends; the answer's body still comes.
            let _ = tx.send_data(Bytes::new(), true);
            let (parts, recv) = resp.into_parts();
            let body = H2RespBody::new(recv, &parts.headers);
            TunnelAnswer::Declined(http::Response::from_parts(parts, body))
        }
        Ok(Err(e)) => {
            let unsent = unprocessed(&e);
            TunnelAnswer::Failed(e, unsent)
        }
        Err(_) => TunnelAnswer::TimedOut,
    }
}

/// Passes a client's body onto its upstream stream, frame by frame, as the stream's window
/// takes it (hyper's `PipeToSendStream`, inline).
struct Pump {
    tx: SendStream<Bytes>,
    body: ClientBody,
    /// A data frame taken from the body that waits for window.
    pending: Option<(Bytes, bool)>,
    /// Whether the last poll ended waiting for the client's next bytes, and whether it sent
    /// some to the upstream (read by `exchange`, to move the response's deadline).
    waiting_on_client: bool,
    progressed: bool,
}

impl Pump {
    /// Ready when the body is sent, or failed: with the status the client gets when its
    /// body was at fault (the stream is then reset), `None` when the stream was (the
    /// response says how).
    fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Option<u16>>> {
        self.waiting_on_client = false;
        loop {
            if let Poll::Ready(reset) = self.tx.poll_reset(cx) {
                tracing::debug!(?reset, "upstream reset the stream of a request body");
                return Poll::Ready(Err(None));
            }
            if let Some((data, eos)) = self.pending.take() {
                // An empty frame (an end-of-stream marker) needs no window.
                if !data.is_empty() && self.tx.capacity() == 0 {
                    match self.tx.poll_capacity(cx) {
                        Poll::Pending => {
                            self.pending = Some((data, eos));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(Err(None)),
                    }
                    if self.tx.capacity() == 0 {
                        self.pending = Some((data, eos));
                        continue;
                    }
                }
                if self.tx.send_data(data, eos).is_err() {
                    return Poll::Ready(Err(None));
                }
                self.progressed = true;
                if eos {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let polled = Pin::new(&mut self.body).poll_frame(cx);
            self.waiting_on_client = polled.is_pending();
            let frame = match std::task::ready!(polled) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "client request body failed");
                    self.tx.send_reset(Reason::CANCEL);
                    return Poll::Ready(Err(Some(e.status)));
                }
                None => {
                    let sent = self.tx.send_data(Bytes::new(), true);
                    return Poll::Ready(sent.map_err(|_| None));
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    // A claim on the window, not the whole frame: one that pinned window for
                    // a body that then waits could stall the connection's other streams
                    // (hyper#4003); h2 raises it to what is buffered.
                    if !data.is_empty() {
                        self.tx.reserve_capacity(1);
                    }
                    self.pending = Some((data, self.body.is_end_stream()));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.tx.reserve_capacity(0);
                        let sent = self.tx.send_trailers(trailers);
                        return Poll::Ready(sent.map_err(|_| None));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A client connection driven with short PINGs to a real h2 server on loopback, whose
    /// server side answers PINGs only while `answering`; whether the client side ended
    /// within `within`.
    async fn ended_within(answering: bool, within: Duration) -> bool {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(tcp).await.unwrap();
            if answering {
                // PONGs are written while the connection is polled.
                while conn.accept().await.is_some() {}
            } else {
                // Alive but silent: the socket stays open, nothing is read or answered.
                std::future::pending::<()>().await;
            }
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_send, conn) = h2::client::handshake(UpStream::Plain(tcp)).await.unwrap();
        let ended = Arc::new(AtomicBool::new(false));
        let pings = Pings {
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(150),
        };
        let (settle, _settled) = tokio::sync::watch::channel(false);
        tokio::spawn(drive(conn, ended.clone(), "test".into(), pings, settle));
        let deadline = Instant::now() + within;
        while Instant::now() < deadline && !ended.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.abort();
        ended.load(Ordering::Relaxed)
    }

    /// An upstream that vanished without a FIN (no PONG) ends the connection, so the next
    /// request opens a new one; one that answers keeps it through many PINGs.
    #[tokio::test]
    async fn a_silent_upstream_ends_its_connection_an_answering_one_does_not() {
        assert!(ended_within(false, Duration::from_secs(5)).await);
        assert!(!ended_within(true, Duration::from_millis(800)).await);
    }
}
