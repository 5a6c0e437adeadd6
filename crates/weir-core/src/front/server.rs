//! weir's own HTTP/1 server: one task per client connection reads a head, validates it with
//! the strict rules of [`super::head`] (parsed once; the request is built from slices of the
//! same buffer), runs the request path inline, and writes the response head and body itself.
//!
//! Why not hyper's server (which this replaced): hyper parsed every head a second time behind
//! the strict front, ran its dispatcher per request and held 8 KiB read + write buffers on every
//! idle keep-alive connection. Here a waiting keep-alive connection holds no buffer (plain TCP
//! waits in the reactor; buffers come from a per-thread pool, [`super::io`]), a refused head
//! never reaches the request path, and requests are served one at a time in order (pipelined
//! heads wait in the buffer).
//!
//! Timers: `header_timeout` from accept or from a head's first byte (408), `idle_timeout`
//! between requests (close), `body_timeout` in [`RequestBody`]. One `Sleep` per connection,
//! moved forward per request (cheap in tokio's wheel).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use super::body::{Framing as BodyFramingOut, RequestBody};
use super::chunked::Chunked;
use super::head::{BodyFraming, HeadInfo, HeadLimits, HeadStatus, Reject, Spans, parse_head};
use super::io::{ClientIo, ConnIo, make_room};
use super::response::{Connection, Framing, encode_head};
use crate::body::ProxyBody;
use crate::bufpool::{self, FRONT_READ};
use crate::client_body::ClientBody;
use crate::h1client::head::put_chunk_size;
use crate::parking::PARK_AFTER;
use crate::pin_box::pin_box;
use crate::proxy::{self, ConnInfo};
use crate::state::Shared;
use crate::upstream::InFlight;

/// Body pieces larger than this are written on their own instead of copied behind the head.
const COPY_LIMIT: usize = 16 * 1024;
/// Response bytes gathered before a write.
const WRITE_BATCH: usize = 64 * 1024;
/// How long a closing connection keeps reading (and discarding) what the client still sends,
/// so the kernel does not answer it with a reset that could destroy the response in flight.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub head: HeadLimits,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// `send_timeout`: the longest a response write may stall.
    pub send_timeout: Duration,
    pub idle_timeout: Duration,
    /// After the listener stops: how long an idle keep-alive connection may still send one more
    /// request (answered with `Connection: close`) before it is closed.
    pub grace: Duration,
}

/// The upstream side of a `101 Switching Protocols`, handed from the request path to the
/// server (in the response's extensions) once the client's side is free to join it.
pub struct Tunnel {
    pub upstream: crate::tunnel::TunnelIo,
    /// Bytes the upstream sent right behind its 101: the new protocol's first.
    pub early: BytesMut,
    pub in_flight: InFlight,
}

/// [`Tunnel`] as a response extension (extensions must be `Clone`).
#[derive(Clone)]
pub struct TunnelSlot(Arc<Mutex<Option<Tunnel>>>);

impl TunnelSlot {
    pub fn new(t: Tunnel) -> Self {
        TunnelSlot(Arc::new(Mutex::new(Some(t))))
    }

    pub(crate) fn take(&self) -> Option<Tunnel> {
        self.0.lock().ok().and_then(|mut t| t.take())
    }
}

/// What the request line and fields said that the server itself acts on.
#[derive(Debug, Clone, Copy)]
struct Meta {
    head: bool,
    http10: bool,
    keep_alive: bool,
    upgrade: bool,
}

enum Next {
    KeepAlive,
    Close,
    Tunnel(Tunnel),
}

enum Wake {
    Read(usize),
    Failed,
    Stop,
    Timeout,
}

/// Serves one client connection to its end.
/// `stopping` is set with `stop`: from then on every response says `Connection: close`, so a
/// busy keep-alive client moves to a new connection after its next response instead of racing
/// a close of its idle one.
///
/// This loop's state is what an idle keep-alive connection costs (the request path is boxed
/// per request): an async block rather than an `async fn`, whose arguments would be stored
/// twice, and short-lived locals scoped so that they are not kept across its awaits.
///
/// Returns the connection, with the end of its idle timeout, when it has waited
/// [`PARK_AFTER`] for its next request and can be parked ([`crate::parking`]): from then on it
/// costs no task.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve<'a>(
    io: Box<dyn ClientIo>,
    settings: &'a Settings,
    shared: &'a Shared,
    info: &'a ConnInfo,
    stop: &'a CancellationToken,
    stopping: &'a AtomicBool,
) -> impl Future<Output = Option<(Box<dyn ClientIo>, Instant)>> + Send + 'a {
    async move {
        let parkable = io.parkable() && settings.idle_timeout > PARK_AFTER;
        let mut conn = ConnIo {
            io,
            rbuf: BytesMut::new(),
            body_done: true,
        };
        // Until the first byte of a head: the header timeout for a new connection, the idle
        // timeout for one that has served a request.
        let mut wait_until = Instant::now() + settings.header_timeout;
        let timer = tokio::time::sleep_until(wait_until);
        tokio::pin!(timer);
        let cancelled = stop.cancelled();
        tokio::pin!(cancelled);
        let mut stop_by: Option<Instant> = None;
        // Set after each request on a parkable connection: it is parked after PARK_AFTER of its
        // idle timeout (at `wait_until - idle_timeout + PARK_AFTER`) unless a head starts first.
        let mut park_armed = false;
        loop {
            // A complete, valid head.
            let mut head_started: Option<Instant> = None;
            let mut searched = 0usize;
            let (hinfo, request) = loop {
                if !conn.rbuf.is_empty() {
                    // The refusal is awaited outside the match, so that the parse result is
                    // not kept in this loop's state across that await.
                    let reject = match take_head(&mut conn.rbuf, &settings.head, &mut searched) {
                        Ok(Some(h)) => break h,
                        Ok(None) => {
                            head_started.get_or_insert_with(Instant::now);
                            None
                        }
                        Err(reject) => Some(reject),
                    };
                    if let Some(reject) = reject {
                        Box::pin(refuse(conn, reject, shared, info)).await;
                        return None;
                    }
                }
                if head_started.is_some() || stop_by.is_some() {
                    park_armed = false;
                }
                {
                    let deadline = head_started.map_or(wait_until, |t| t + settings.header_timeout);
                    let deadline = stop_by.map_or(deadline, |s| s.min(deadline));
                    let deadline = park_at(park_armed, wait_until, settings).map_or(deadline, |p| p.min(deadline));
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                }
                bufpool::give_read(&mut conn.rbuf, FRONT_READ);
                let wake =
                    poll_fn(|cx| wait_and_read(&mut conn, cx, timer.as_mut(), cancelled.as_mut(), stop_by.is_none()))
                        .await;
                match wake {
                    Wake::Read(0) | Wake::Failed => return None,
                    Wake::Read(_) => {}
                    Wake::Stop => stop_by = Some(Instant::now() + settings.grace),
                    Wake::Timeout => {
                        if head_started.is_some() {
                            let reject = Reject {
                                status: 408,
                                reason: "request header timeout",
                            };
                            Box::pin(refuse(conn, reject, shared, info)).await;
                            return None;
                        }
                        if park_at(park_armed, wait_until, settings).is_some_and(|p| p <= Instant::now())
                            && conn.rbuf.is_empty()
                        {
                            return Some((conn.io, wait_until));
                        }
                        return None;
                    }
                }
            };
            // One request, boxed: a connection waiting for its next request then carries none
            // of the request path's state (~4.5 KB), only this loop's. It costs one allocation
            // per request (about 1% CPU at saturation, benches/README.md).
            conn = pin_box(|| exchange(conn, hinfo, request, settings, shared, info, stopping)).await?;
            wait_until = Instant::now() + settings.idle_timeout;
            park_armed = parkable;
        }
    }
}

/// When an armed connection waiting until `wait_until` (its idle timeout) is parked: derived,
/// so the loop's state (what every idle connection costs) carries a flag, not an instant.
fn park_at(armed: bool, wait_until: Instant, settings: &Settings) -> Option<Instant> {
    armed.then(|| wait_until - settings.idle_timeout + PARK_AFTER)
}

/// Serves one request whose head has been read: lends the connection to its body, runs the
/// request path, writes the response. The connection comes back when it can carry another.
#[allow(clippy::manual_async_fn)] // an async fn would store its arguments twice
fn exchange<'a>(
    mut conn: ConnIo,
    hinfo: HeadInfo,
    request: Request<()>,
    settings: &'a Settings,
    shared: &'a Shared,
    info: &'a ConnInfo,
    stopping: &'a AtomicBool,
) -> impl Future<Output = Option<ConnIo>> + Send + 'a {
    async move {
        let meta = Meta {
            head: request.method() == Method::HEAD,
            http10: hinfo.http10,
            keep_alive: hinfo.keep_alive,
            upgrade: hinfo.upgrade,
        };
        // The body, if any, takes the connection while the request is handled.
        let framing = match hinfo.framing {
            BodyFraming::None => None,
            BodyFraming::Fixed(n) => Some(BodyFramingOut::Fixed(n)),
            BodyFraming::Chunked => {
                // A malformed chunked body already in the buffer is refused before any of the
                // request leaves weir.
                if let Err(reject) = Chunked::default().feed(&conn.rbuf, settings.head.max_body_bytes) {
                    Box::pin(refuse(conn, reject, shared, info)).await;
                    return None;
                }
                Some(BodyFramingOut::Chunked)
            }
        };
        let (mut held, request) = match framing {
            None => {
                conn.body_done = true;
                (Held::Here(conn), request.map(|()| ClientBody::Empty))
            }
            Some(f) => {
                conn.body_done = false;
                let (body, rx) = RequestBody::new(
                    conn,
                    f,
                    hinfo.expect_continue,
                    settings.head.max_body_bytes,
                    settings.body_timeout,
                );
                (Held::Lent(rx), request.map(|()| ClientBody::H1(body)))
            }
        };
        // Pinned in place and lent to the interim pass: the request path's state (~4.5 KB) is
        // not moved into another future (moved, it cost 8% of the requests a second).
        let served = proxy::serve(shared, info, request);
        tokio::pin!(served);
        // A request body holds the connection until it has been read whole; from then on the
        // connection can take interim responses too.
        let mut early = None;
        if let Held::Lent(rx) = &mut held
            && !meta.http10
        {
            match body_read_or_served(rx, served.as_mut()).await {
                Ok(c) => held = Held::Here(c),
                Err(response) => early = Some(response),
            }
        }
        let response = match (early, &mut held) {
            (Some(response), _) => response,
            (None, Held::Here(c)) if !meta.http10 => passing_interim(c, served.as_mut(), settings.send_timeout).await,
            (None, _) => served.await,
        };
        conn = match held {
            Held::Here(c) => c,
            // The request path has dropped the body by now; its drop hands the connection back.
            Held::Lent(rx) => match rx.await {
                Ok(c) => c,
                Err(_) => return None,
            },
        };
        let keep = meta.keep_alive && conn.body_done && !stopping.load(Ordering::Acquire);
        match write_response(&mut conn, response, meta, keep, settings.send_timeout).await {
            Ok(Next::KeepAlive) => Some(conn),
            Ok(Next::Close) => {
                let linger = !conn.body_done;
                // Closing and tunnelling happen once per connection: boxed, their state stays out
                // of every request's.
                Box::pin(close(conn, linger)).await;
                None
            }
            Ok(Next::Tunnel(t)) => {
                Box::pin(tunnel(conn, t)).await;
                None
            }
            Err(e) => {
                tracing::debug!(peer = %info.peer, error = %e, "response not completed");
                None
            }
        }
    }
}

/// Where the connection is while a request is handled.
enum Held {
    Here(ConnIo),
    Lent(tokio::sync::oneshot::Receiver<ConnIo>),
}

/// Waits for bytes (or the timer, or the listener's stop) and reads them. A connection with no
/// buffer waits for readiness first and takes a buffer only then.
fn wait_and_read(
    conn: &mut ConnIo,
    cx: &mut Context<'_>,
    timer: Pin<&mut Sleep>,
    cancelled: Pin<&mut WaitForCancellationFuture<'_>>,
    watch_stop: bool,
) -> Poll<Wake> {
    let readable = if conn.rbuf.capacity() == 0 {
        match conn.io.poll_readable(cx) {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(_)) => return Poll::Ready(Wake::Failed),
            Poll::Pending => false,
        }
    } else {
        true
    };
    if readable {
        make_room(&mut conn.rbuf);
        match tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.rbuf) {
            Poll::Ready(Ok(n)) => return Poll::Ready(Wake::Read(n)),
            Poll::Ready(Err(_)) => return Poll::Ready(Wake::Failed),
            Poll::Pending => {}
        }
    }
    if watch_stop && cancelled.poll(cx).is_ready() {
        return Poll::Ready(Wake::Stop);
    }
    if timer.poll(cx).is_ready() {
        return Poll::Ready(Wake::Timeout);
    }
    Poll::Pending
}

/// Takes a complete head off the front of `buf` as a request, `None` while it is incomplete.
/// `searched` is how much of `buf` an earlier call saw: a head that arrives in pieces is parsed
/// again only once a blank line may have arrived (or the size limit is passed), so a client
/// trickling its head byte by byte costs a scan, not a parse, per read.
pub fn take_head(
    buf: &mut BytesMut,
    limits: &HeadLimits,
    searched: &mut usize,
) -> Result<Option<(HeadInfo, Request<()>)>, Reject> {
    if *searched > 0 && !blank_line(&buf[searched.saturating_sub(2)..]) && buf.len() <= limits.max_header_bytes {
        *searched = buf.len();
        return Ok(None);
    }
    let mut spans = Spans::default();
    let info = match parse_head(buf, limits, Some(&mut spans))? {
        HeadStatus::Partial => {
            *searched = buf.len();
            return Ok(None);
        }
        HeadStatus::Complete(info) => info,
    };
    let head = buf.split_to(info.len).freeze();
    let request = build_request(&head, &spans, &info)?;
    Ok(Some((info, request)))
}

/// Whether `bytes` holds the end of a head: a line feed followed by an empty line.
fn blank_line(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes).any(|i| match bytes.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => bytes.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

/// The request as the request path sees it, its target and field values sharing `head`.
fn build_request(head: &Bytes, spans: &Spans, info: &HeadInfo) -> Result<Request<()>, Reject> {
    // The method and the field names are copied or matched to constants: borrowed, not sliced
    // (a `Bytes` slice is an atomic count taken and given back).
    let range = |(at, len): (u32, u32)| at as usize..(at + len) as usize;
    let slice = |span| head.slice(range(span));
    let borrow = |span| head.get(range(span)).unwrap_or_default();
    let method = Method::from_bytes(borrow(spans.method)).map_err(|_| Reject::bad("invalid method"))?;
    let uri = Uri::from_maybe_shared(slice(spans.target)).map_err(|_| Reject::bad("invalid request target"))?;
    let mut headers = bufpool::take_headers(spans.len());
    for f in spans.fields() {
        let name = HeaderName::from_bytes(borrow(f.name)).map_err(|_| Reject::bad("invalid header field name"))?;
        let value =
            HeaderValue::from_maybe_shared(slice(f.value)).map_err(|_| Reject::bad("invalid header field value"))?;
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = if info.http10 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    *request.headers_mut() = headers;
    Ok(request)
}

fn says_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

async fn write_response(
    conn: &mut ConnIo,
    response: Response<ProxyBody>,
    meta: Meta,
    keep: bool,
    send_timeout: Duration,
) -> io::Result<Next> {
    let (mut parts, mut body) = response.into_parts();
    let status = parts.status;
    let mut keep = keep && !says_close(&parts.headers);
    let mut wbuf = bufpool::take_write();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let tunnel = parts.extensions.remove::<TunnelSlot>().and_then(|t| t.take());
        let Some(tunnel) = tunnel.filter(|_| meta.upgrade) else {
            return Err(io::Error::other("101 without an upgrade to carry"));
        };
        encode_head(
            status,
            &parts.headers,
            Framing::Bodiless,
            Connection::Upgrade,
            &mut wbuf,
        );
        let r = flush_buf(conn, &mut wbuf, send_timeout).await;
        bufpool::give_write(wbuf);
        r?;
        return Ok(Next::Tunnel(tunnel));
    }
    let framing = if meta.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Bodiless
    } else {
        match body.size_hint().exact() {
            Some(n) => Framing::Length(n),
            None if meta.http10 => {
                keep = false;
                Framing::Close
            }
            None => Framing::Chunked,
        }
    };
    let connection = match (keep, meta.http10) {
        (false, _) => Connection::Close,
        (true, true) => Connection::KeepAlive,
        (true, false) => Connection::Default,
    };
    encode_head(status, &parts.headers, framing, connection, &mut wbuf);
    bufpool::give_headers(std::mem::take(&mut parts.headers));
    drop(parts);
    let r = write_body(conn, &mut wbuf, &mut body, framing, send_timeout).await;
    bufpool::give_write(wbuf);
    r?;
    Ok(if keep { Next::KeepAlive } else { Next::Close })
}

/// Writes the body behind the head already in `wbuf`: a small body that is ready goes out in
/// the same write as the head.
async fn write_body(
    conn: &mut ConnIo,
    wbuf: &mut Vec<u8>,
    body: &mut ProxyBody,
    framing: Framing,
    send_timeout: Duration,
) -> io::Result<()> {
    if framing == Framing::Bodiless {
        return flush_buf(conn, wbuf, send_timeout).await;
    }
    let chunked = framing == Framing::Chunked;
    let mut left = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    // A chunked body ends with them (an HTTP/2 upstream's gRPC status, for one); a body with a
    // length has no place for them.
    let mut trailers = None;
    loop {
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await;
        let item = match polled {
            Poll::Ready(item) => item,
            Poll::Pending => {
                flush_buf(conn, wbuf, send_timeout).await?;
                body.frame().await
            }
        };
        let data = match item {
            None => break,
            Some(Err(e)) => {
                // What arrived is passed on; the connection then closes without completing
                // the message, so the client cannot take it for a whole response.
                let _ = flush_buf(conn, wbuf, send_timeout).await;
                return Err(io::Error::other(e));
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) => d,
                Err(frame) => {
                    if chunked {
                        trailers = frame.into_trailers().ok();
                    }
                    continue;
                }
            },
        };
        if data.is_empty() {
            continue;
        }
        if let Some(l) = &mut left {
            if data.len() as u64 > *l {
                return Err(io::Error::other("response body longer than its length"));
            }
            *l -= data.len() as u64;
        }
        if chunked {
            put_chunk_size(data.len(), wbuf);
        }
        if data.len() > COPY_LIMIT {
            flush_buf(conn, wbuf, send_timeout).await?;
            send_all(&mut conn.io, &data, send_timeout).await?;
        } else {
            wbuf.extend_from_slice(&data);
        }
        if chunked {
            wbuf.extend_from_slice(b"\r\n");
        }
        if wbuf.len() >= WRITE_BATCH {
            flush_buf(conn, wbuf, send_timeout).await?;
        }
    }
    if left.is_some_and(|l| l > 0) {
        let _ = flush_buf(conn, wbuf, send_timeout).await;
        return Err(io::Error::other("response body shorter than its length"));
    }
    if chunked {
        // Clients that did not ask for trailers (`TE: trailers`) may discard them, as HAProxy
        // sends them regardless.
        crate::headers::put_last_chunk(trailers.as_ref(), wbuf);
    }
    flush_buf(conn, wbuf, send_timeout).await
}

/// Writes what `wbuf` holds: with the thread's batch of sends when the client is on plain TCP
/// (`send_batch`: a response goes with those of the other requests answered in the same pass,
/// in one system call), what the socket did not take the usual way. Tried instead: a response
/// joining a batch only when upstream requests were already queued in it, so as not to hold
/// it back for a pass on its own; at saturation that cost ~1.1 µs of CPU per request of the
/// ~1.2 batching saves, and the fixed-rate p99 moved within its noise.
async fn flush_buf(conn: &mut ConnIo, wbuf: &mut Vec<u8>, send_timeout: Duration) -> io::Result<()> {
    if !wbuf.is_empty() {
        let sent = match conn.io.plain_fd() {
            Some(fd) => crate::send_batch::send(fd, wbuf).await.transpose()?.unwrap_or(0),
            None => 0,
        };
        if sent < wbuf.len() {
            send_all(&mut conn.io, &wbuf[sent..], send_timeout).await?;
        }
        wbuf.clear();
    }
    unless_stalled(send_timeout, conn.io.flush()).await
}

/// `served`'s response, with the interim responses (`103 Early Hints`) an upstream sends
/// meanwhile written to the client as they come ([`crate::interim`]). A client that cannot take
/// them is left to the response's own write to find out.
async fn passing_interim<F: Future>(conn: &mut ConnIo, mut served: Pin<&mut F>, send_timeout: Duration) -> F::Output {
    loop {
        let step = poll_fn(|cx| {
            let polled = {
                let _collecting = crate::interim::Collecting::start();
                served.as_mut().poll(cx)
            };
            match polled {
                Poll::Ready(response) => Poll::Ready(Some(response)),
                Poll::Pending if crate::interim::pending() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        // Heads that came in the poll that finished go out before the final one too.
        if crate::interim::pending() {
            let heads = crate::interim::take();
            let _ = send_all(&mut conn.io, &heads, send_timeout).await;
        }
        if let Some(response) = step {
            return response;
        }
    }
}

/// The connection back from a request body read to its end (`Ok`), or `served`'s response if
/// that comes first (`Err`; the body comes back when the request path drops it).
async fn body_read_or_served<F: Future>(
    rx: &mut tokio::sync::oneshot::Receiver<ConnIo>,
    mut served: Pin<&mut F>,
) -> Result<ConnIo, F::Output> {
    let mut body_gone = false;
    poll_fn(|cx| {
        if let Poll::Ready(response) = served.as_mut().poll(cx) {
            return Poll::Ready(Err(response));
        }
        // After the request path's poll: a body that came whole with its head was read in it,
        // and is found here without a wake-up (none is registered yet).
        if !body_gone {
            match Pin::new(&mut *rx).poll(cx) {
                Poll::Ready(Ok(conn)) => return Poll::Ready(Ok(conn)),
                // Dropped without its connection: the response alone is left to wait for.
                Poll::Ready(Err(_)) => body_gone = true,
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// Writes all of `buf`, giving up when the client takes none of it for `limit`
/// (`send_timeout`, nginx's semantics: between two writes that make progress, not for the
/// whole response).
async fn send_all(io: &mut Box<dyn super::io::ClientIo>, buf: &[u8], limit: Duration) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match unless_stalled(limit, io.write(&buf[done..])).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => done += n,
        }
    }
    Ok(())
}

/// `write` within `limit`; no timer unless it has to wait (a write to a client that reads
/// completes at once: the hot path arms nothing).
async fn unless_stalled<T>(limit: Duration, write: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    let mut write = std::pin::pin!(write);
    match poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        Poll::Ready(r) => r,
        Poll::Pending => tokio::time::timeout(limit, write).await.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no bytes within send_timeout",
            ))
        }),
    }
}

/// Joins the client to the upstream after a `101`: bytes either side already read go first.
async fn tunnel(mut conn: ConnIo, mut t: Tunnel) {
    if !conn.rbuf.is_empty() && t.upstream.write_all(&conn.rbuf).await.is_err() {
        return;
    }
    conn.rbuf = BytesMut::new();
    crate::tunnel::keep_alive(conn.io.socket());
    crate::tunnel::join(&mut conn.io, t).await;
}

/// Answers a refused head with its 4xx and closes; counts it
/// (`weir_requests_refused_total`) and writes its access-log line.
async fn refuse(mut conn: ConnIo, reject: Reject, shared: &Shared, info: &ConnInfo) {
    let response = refusal_response(reject);
    reject.record(shared, info, response.len() as u64);
    if conn.io.write_all(&response).await.is_ok() {
        let _ = conn.io.flush().await;
        close(conn, true).await;
    }
}

/// Closes after the last response: FIN first; then, when the client may still be sending
/// (an unread body, a refused request), reads and drops its bytes for a while.
async fn close(mut conn: ConnIo, linger: bool) {
    if conn.io.shutdown().await.is_err() || !linger {
        return;
    }
    // On the heap: this future is part of every connection's.
    let mut scratch = vec![0u8; 4096];
    let mut drained = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while drained < LINGER_BYTES {
            match conn.io.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

fn refusal_response(reject: Reject) -> Vec<u8> {
    let body = format!("{}\n", reject.message());
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\nvia: 1.1 weir\r\n\r\n{body}",
        reject.status,
        reject.phrase(),
        body.len()
    )
    .into_bytes()
}
