//! One upstream HTTP/1.1 connection, driven inline by the request that holds it: the request
//! task writes the head (and body) and reads the response head itself, and the client's
//! response body reads the upstream's body straight off the socket. No connection task, no
//! channel, no extra wake-ups per request (DESIGN §10: the pingora shape).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::Method;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::chunked::{ChunkedDecoder, Decoded};
use super::head::{
    Framing, HeadError, RequestFraming, RequestHead, RequestTrailers, ResponseHead, encode_request, parse_response,
    put_chunk_size,
};
use super::stream::UpStream;
use super::timer::{Deadline, ReusedTimer, TimedOut};
use crate::bufpool::{self, UPSTREAM_READ as READ_CHUNK};
use crate::client_body::{ClientBody, ClientBodyError};

/// Reads grow (doubling while they fill the room given) up to this for large bodies, in both
/// directions (the client's request bodies read the same way, [`crate::front::body`]).
pub(crate) const MAX_READ: usize = 256 * 1024;
/// Below this much free room the read buffer is grown (or reclaimed) before reading.
const MIN_ROOM: usize = 1024;
/// Request bodies up to this size go out in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;
/// Pieces of a request body that arrived together are gathered up to this size per write.
const GATHER: usize = 64 * 1024;

/// A request body on its way to an upstream.
#[derive(Debug)]
pub enum UpBody {
    Empty,
    /// Buffered bytes: can be sent again on another attempt.
    Full(Bytes),
    /// The client's body, streamed as it arrives; can be sent once.
    Streamed(ClientBody),
    /// A streamed body that an attempt has started to send.
    Spent,
}

impl UpBody {
    /// Whether another attempt can still send this body.
    pub fn resendable(&self) -> bool {
        !matches!(self, UpBody::Spent)
    }
}

/// Why an exchange failed. Only [`ExchangeError::Unsent`] proves the upstream saw nothing.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("writing the request failed before any byte of it left: {0}")]
    Unsent(io::Error),
    #[error("the client's request body failed: {0}")]
    ClientBody(ClientBodyError),
    #[error("upstream connection failed: {0}")]
    Io(io::Error),
    #[error("upstream closed the connection before a response head")]
    Closed,
    #[error(transparent)]
    Head(#[from] HeadError),
}

impl ExchangeError {
    /// The connection was gone before the request could get an answer: nothing left
    /// ([`ExchangeError::Unsent`]), the upstream closed it, or reset it. With nothing of a
    /// response received ([`UpConn::received_nothing`]) on a reused connection, that is the
    /// keep-alive race: the upstream closed an idle connection as weir took it.
    pub fn is_connection_gone(&self) -> bool {
        match self {
            ExchangeError::Unsent(_) | ExchangeError::Closed => true,
            ExchangeError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted
            ),
            ExchangeError::ClientBody(_) | ExchangeError::Head(_) => false,
        }
    }
}

/// A pooled upstream connection. Its buffers come from the thread's pool ([`bufpool`]) while
/// it moves bytes: one idle in its pool, or waiting for its upstream's answer, holds none.
///
/// Boxed once, when it is opened: a request moves its connection from the idle queue into the
/// exchange, the response body and back several times, and 144 bytes copied at each step were
/// a measurable share of the request path's `memmove`s (benches/README.md); a pointer is not.
#[derive(Debug)]
pub struct UpConn(Box<ConnState>);

impl std::ops::Deref for UpConn {
    type Target = ConnState;
    fn deref(&self) -> &ConnState {
        &self.0
    }
}

impl std::ops::DerefMut for UpConn {
    fn deref_mut(&mut self) -> &mut ConnState {
        &mut self.0
    }
}

/// What an [`UpConn`] holds, behind its box.
#[derive(Debug)]
pub struct ConnState {
    stream: UpStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// The response timer, kept across this connection's requests.
    timer: ReusedTimer,
    /// How much room the next read asks for: grows while reads fill it (large bodies).
    read_size: usize,
    /// The client this connection's PROXY header named (`send_proxy` pools): it carries that
    /// client's requests only.
    pub(crate) proxied_for: Option<std::net::SocketAddr>,
    /// The `UpstreamTls::id` of the settings it was made with; 0 for plain TCP.
    pub(crate) tls_id: u64,
    /// How long it may idle before it is not reused, in milliseconds: a little less than the
    /// upstream's last `Keep-Alive: timeout` ([`reuse_window_ms`]); `u32::MAX` without one.
    idle_limit_ms: u32,
    /// How long it idled in the pool before its current request, in milliseconds; 0 for a
    /// new connection ([`crate::idle_closes`] learns from it).
    idle_before_ms: u32,
    /// The longest wait for the next bytes of the current response's body (the pool's
    /// `timeouts.body`); zero: no limit.
    body_timeout: Duration,
}

impl UpConn {
    pub fn new(stream: impl Into<UpStream>) -> Self {
        UpConn(Box::new(ConnState {
            stream: stream.into(),
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            timer: ReusedTimer::default(),
            read_size: READ_CHUNK,
            proxied_for: None,
            tls_id: 0,
            idle_limit_ms: u32::MAX,
            idle_before_ms: 0,
            body_timeout: Duration::ZERO,
        }))
    }

    /// The socket and whatever of the upstream's stream was read past the head, for a
    /// protocol upgrade (101).
    pub fn into_upgraded(self) -> (UpStream, BytesMut) {
        let ConnState { stream, rbuf, .. } = *self.0;
        (stream, rbuf)
    }
}

impl ConnState {
    /// Cheap liveness check of an idle connection, without a syscall unless the reactor saw
    /// it become readable: an idle connection that is readable was closed by the upstream (or
    /// sent bytes nobody asked for), and cannot carry a request ([`UpStream::is_idle_usable`]).
    pub fn is_idle_usable(&mut self) -> bool {
        self.rbuf.is_empty() && self.stream.is_idle_usable()
    }

    /// Sets the longest wait for the next bytes of a response body (`timeouts.body`), for the
    /// requests that follow.
    pub fn set_body_timeout(&mut self, limit: Duration) {
        self.body_timeout = limit;
    }

    /// How long this connection may idle in the pool and still be reused, in milliseconds
    /// (`u32::MAX`: as long as the pool's `idle` timeout allows).
    pub fn idle_limit_ms(&self) -> u32 {
        self.idle_limit_ms
    }

    /// How long it idled in the pool before its current request, in milliseconds (0: new).
    pub fn idle_before_ms(&self) -> u64 {
        u64::from(self.idle_before_ms)
    }

    /// Stamps a connection taken from the pool with how long it idled there.
    pub(crate) fn set_idle_before_ms(&mut self, ms: u64) {
        self.idle_before_ms = u32::try_from(ms).unwrap_or(u32::MAX);
    }

    /// Whether no byte of a response is waiting in the read buffer (after a failed exchange:
    /// whether the upstream sent nothing of an answer, interim 1xx aside).
    pub fn received_nothing(&self) -> bool {
        self.rbuf.is_empty()
    }

    /// [`ConnState::exchange`] within `limit` of `start`, on this connection's [`ReusedTimer`].
    pub async fn exchange_within(
        &mut self,
        start: tokio::time::Instant,
        limit: Duration,
        head: &RequestHead<'_>,
        body: &mut UpBody,
    ) -> Result<Result<ResponseHead, ExchangeError>, TimedOut> {
        let mut timer = std::mem::take(&mut self.timer);
        // Only a streamed body moves the deadline; the others keep the fixed one.
        let streamed = matches!(body, UpBody::Streamed(_));
        let deadline = Deadline::new(start, limit);
        let work = self.exchange_by(head, body, &deadline);
        let answer = if streamed {
            timer.within_deadline(&deadline, work).await
        } else {
            timer.within_deadline(&(start + limit), work).await
        };
        self.timer = timer;
        answer
    }

    /// Sends one request and reads its response head (skipping interim 1xx other than 101).
    /// A streamed body is sent while the head is awaited, so an upstream that answers early
    /// (a 413, a redirect) is heard; the connection is then not reused.
    pub async fn exchange(&mut self, head: &RequestHead<'_>, body: &mut UpBody) -> Result<ResponseHead, ExchangeError> {
        let unbounded = Deadline::new(tokio::time::Instant::now(), Duration::from_secs(86_400));
        self.exchange_by(head, body, &unbounded).await
    }

    /// [`ConnState::exchange`], moving `deadline` as a streamed body goes (see [`Deadline`]).
    async fn exchange_by(
        &mut self,
        head: &RequestHead<'_>,
        body: &mut UpBody,
        deadline: &Deadline,
    ) -> Result<ResponseHead, ExchangeError> {
        let method = head.method;
        if self.wbuf.capacity() == 0 {
            self.wbuf = bufpool::take_write();
        }
        self.wbuf.clear();
        // A body with trailer fields goes chunked, their only place in HTTP/1.1: a buffered one
        // whose trailers are known, a streamed one whose head announced them.
        let buffered_trailers = match head.trailers {
            RequestTrailers::Buffered(t) => Some(t),
            _ => None,
        };
        let framing = match body {
            UpBody::Empty | UpBody::Spent => RequestFraming::Empty,
            UpBody::Full(_) if buffered_trailers.is_some() => RequestFraming::Chunked,
            UpBody::Full(b) => RequestFraming::Length(b.len() as u64),
            UpBody::Streamed(inc) => match inc.size_hint().exact() {
                Some(n) if !matches!(head.trailers, RequestTrailers::Announced) => RequestFraming::Length(n),
                _ => RequestFraming::Chunked,
            },
        };
        encode_request(head, framing, &mut self.wbuf);
        match body {
            UpBody::Full(b) => {
                // Head and body in one write when the body is small; a body with trailers goes
                // as one chunk, then the last one carrying them.
                let chunked = framing == RequestFraming::Chunked;
                let large = b.len() > INLINE_BODY;
                if chunked && !b.is_empty() {
                    put_chunk_size(b.len(), &mut self.wbuf);
                }
                if large {
                    send_first(&mut self.stream, &self.wbuf).await?;
                    self.stream.write_all(b).await.map_err(ExchangeError::Io)?;
                    self.wbuf.clear();
                } else {
                    self.wbuf.extend_from_slice(b);
                }
                if chunked {
                    if !b.is_empty() {
                        self.wbuf.extend_from_slice(b"\r\n");
                    }
                    crate::headers::put_last_chunk(buffered_trailers, &mut self.wbuf);
                }
                if !large {
                    send_first(&mut self.stream, &self.wbuf).await?;
                } else if !self.wbuf.is_empty() {
                    self.stream.write_all(&self.wbuf).await.map_err(ExchangeError::Io)?;
                }
            }
            UpBody::Empty | UpBody::Spent => send_first(&mut self.stream, &self.wbuf).await?,
            UpBody::Streamed(_) => {
                send_first(&mut self.stream, &self.wbuf).await?;
                let UpBody::Streamed(incoming) = std::mem::replace(body, UpBody::Spent) else {
                    return Err(ExchangeError::Closed);
                };
                // Boxed: only requests with a streamed body need this state.
                let chunked = framing == RequestFraming::Chunked;
                let head = Box::pin(self.stream_body_and_read_head(incoming, chunked, method, deadline)).await;
                bufpool::give_write(std::mem::take(&mut self.wbuf));
                return head;
            }
        }
        bufpool::give_write(std::mem::take(&mut self.wbuf));
        // Wait for the answer without a read buffer: hundreds of requests may be waiting.
        if self.rbuf.capacity() == 0 {
            self.stream.readable_if_plain().await.map_err(ExchangeError::Io)?;
        }
        read_head(&mut self.stream, &mut self.rbuf, method).await
    }

    async fn stream_body_and_read_head(
        &mut self,
        incoming: ClientBody,
        chunked: bool,
        method: &Method,
        deadline: &Deadline,
    ) -> Result<ResponseHead, ExchangeError> {
        // The halves differ in type: TCP splits without a lock, TLS through tokio's split.
        macro_rules! on {
            ($halves:expr) => {{
                let (mut reader, mut writer) = $halves;
                let (rbuf, wbuf) = (&mut self.rbuf, &mut self.wbuf);
                let sending = Sending {
                    incoming,
                    chunked,
                    deadline,
                };
                body_and_head(&mut reader, &mut writer, rbuf, wbuf, sending, method).await
            }};
        }
        match &mut self.stream {
            UpStream::Plain(tcp) => on!(tcp.split()),
            UpStream::Tls(tls) => on!(tokio::io::split(tls.as_mut())),
        }
    }

    /// Reads more of the response into the buffer; `Ok(0)` at end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        make_room(&mut self.rbuf, self.read_size);
        let room = self.rbuf.capacity() - self.rbuf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut self.rbuf
        ))?;
        if n == room && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Gives the (emptied) read buffer back to the thread's pool before the connection idles
    /// in its endpoint's pool; a large download's grown buffer is freed instead.
    fn release_buffers(&mut self) {
        if self.read_size > READ_CHUNK {
            self.read_size = READ_CHUNK;
            if self.rbuf.capacity() > 2 * READ_CHUNK {
                self.rbuf = BytesMut::new();
            }
        }
        bufpool::give_read(&mut self.rbuf, READ_CHUNK);
    }
}

/// How long a connection whose upstream closes idle ones after `timeout_ms` (announced with
/// `Keep-Alive: timeout=N`, or learnt: [`crate::idle_closes`]) may idle and still carry a
/// request that could not go again: a quarter less, and at most a second less. The upstream closes it when
/// that time has passed since its last response; a request sent just then meets the close
/// on its way (the keep-alive race), and one that cannot go again (a POST) gets a 502. So
/// weir stops reusing it a little earlier, as Node's undici client does (a second less).
/// Found with a Node-like upstream closing at 300 ms and a POST every 300 ms: 10 of 150 got a
/// 502 from the race.
pub(crate) fn reuse_window_ms(timeout_ms: u32) -> u32 {
    timeout_ms - (timeout_ms / 4).min(1000)
}

/// Grows (or reclaims) the read buffer to `size` when less than [`MIN_ROOM`] is free, taking
/// a pooled one when it has none. The client side's reads follow the same rule
/// ([`crate::front::io::make_room`]).
pub(crate) fn make_room(buf: &mut BytesMut, size: usize) {
    if buf.capacity() == 0 {
        // A first read takes a pooled buffer of the caller's kind: the client side's smaller
        // ones (`FRONT_READ`) or the upstream's (`READ_CHUNK`). A body read that grew past
        // those (its last read filled the room, and handed all of it on) gets its full size:
        // capping it at the pooled size kept every large body at 8 KiB reads.
        *buf = if size <= READ_CHUNK {
            bufpool::take_read(size)
        } else {
            BytesMut::with_capacity(size)
        };
    }
    if buf.capacity() - buf.len() < MIN_ROOM {
        buf.reserve(size);
    }
}

/// Takes what is buffered of a body of `left` more bytes off the front of `buf` (no copy),
/// counting `left` down. Both directions' length-delimited bodies read this way.
pub(crate) fn take_fixed(buf: &mut BytesMut, left: &mut u64) -> Bytes {
    let take = (*left).min(buf.len() as u64);
    *left -= take;
    buf.split_to(take as usize).freeze()
}

/// A streamed request body on its way to the upstream: where it comes from, whether it goes
/// chunked, and the response deadline its sending moves.
struct Sending<'a> {
    incoming: ClientBody,
    chunked: bool,
    deadline: &'a Deadline,
}

/// Sends a streamed request body while awaiting the response head: an upstream that answers
/// early (a 413, a redirect) is heard, and the connection is then not reused.
async fn body_and_head<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut R,
    writer: &mut W,
    rbuf: &mut BytesMut,
    wbuf: &mut Vec<u8>,
    sending: Sending<'_>,
    method: &Method,
) -> Result<ResponseHead, ExchangeError> {
    let send = send_body(writer, sending, wbuf);
    let recv = read_head(reader, rbuf, method);
    tokio::pin!(send, recv);
    let mut sending = true;
    let mut complete = false;
    loop {
        tokio::select! {
            biased;
            head = &mut recv => {
                let mut head = head?;
                if !complete {
                    // The upstream answered before taking the whole body: nothing else
                    // can follow on this connection.
                    head.keep_alive = false;
                }
                return Ok(head);
            }
            sent = &mut send, if sending => {
                sending = false;
                match sent {
                    Ok(()) => complete = true,
                    Err(SendError::Client(e)) => return Err(ExchangeError::ClientBody(e)),
                    // The upstream stopped reading; its answer may still be on the way.
                    Err(SendError::Io(e)) => tracing::debug!(error = %e, "upstream stopped reading the request body"),
                }
            }
        }
    }
}

/// Writes a request's first bytes (its head, and a small body) to the upstream: with the
/// thread's batch of sends when there is one (`send_batch`: one system call for all the requests
/// made ready together), the rest, if the socket took less, the usual way.
async fn send_first(stream: &mut UpStream, buf: &[u8]) -> Result<(), ExchangeError> {
    let sent = match stream {
        UpStream::Plain(tcp) => {
            use std::os::fd::AsRawFd;
            match crate::send_batch::send(tcp.as_raw_fd(), buf).await {
                None => 0,
                Some(Ok(n)) => n,
                // Nothing went: as a failed first `write`.
                Some(Err(e)) => return Err(ExchangeError::Unsent(e)),
            }
        }
        UpStream::Tls(_) => 0,
    };
    match sent {
        0 => write_first(stream, buf).await,
        n if n == buf.len() => Ok(()),
        n => stream.write_all(&buf[n..]).await.map_err(ExchangeError::Io),
    }
}

/// Writes the first bytes of a request: an error before any byte left proves it unsent.
async fn write_first<W: AsyncWrite + Unpin>(stream: &mut W, buf: &[u8]) -> Result<(), ExchangeError> {
    let mut written = 0;
    while written < buf.len() {
        match stream.write(&buf[written..]).await {
            Ok(0) => return Err(ExchangeError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if written == 0 => return Err(ExchangeError::Unsent(e)),
            Err(e) => return Err(ExchangeError::Io(e)),
        }
    }
    Ok(())
}

async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut R,
    rbuf: &mut BytesMut,
    method: &Method,
) -> Result<ResponseHead, ExchangeError> {
    loop {
        if !rbuf.is_empty()
            && let Some(head) = parse_response(rbuf, method)?
        {
            if head.status.is_informational() && head.status != http::StatusCode::SWITCHING_PROTOCOLS {
                crate::interim::offer(head.status, &head.headers);
                continue;
            }
            return Ok(head);
        }
        make_room(rbuf, READ_CHUNK);
        if reader.read_buf(rbuf).await.map_err(ExchangeError::Io)? == 0 {
            // Inside a head or before one: the upstream went away, it did not send bad HTTP.
            return Err(ExchangeError::Closed);
        }
    }
}

enum SendError {
    Client(ClientBodyError),
    Io(io::Error),
}

/// Sends the client's body as it arrives, chunk-encoded when its length is unknown, its
/// trailer fields then in the last chunk (a body with a length has no place for them; RFC
/// 9110 §6.5.1 lets a recipient drop them). Small chunks are framed in one buffer so each goes
/// out in one write.
async fn send_body<W: AsyncWrite + Unpin>(
    writer: &mut W,
    sending: Sending<'_>,
    scratch: &mut Vec<u8>,
) -> Result<(), SendError> {
    let Sending {
        mut incoming,
        chunked,
        deadline,
    } = sending;
    let mut gathered = BytesMut::new();
    let mut trailers = None;
    let mut ended = false;
    while !ended {
        // Waiting for the client is the client's time (its `body_timeout`), not the upstream's.
        deadline.hold();
        let Some(frame) = incoming.frame().await else {
            break;
        };
        let Some(mut data) = data_or_trailers(frame, &mut trailers)? else {
            continue;
        };
        // What else of the body has already arrived goes out in the same write.
        while data.len().max(gathered.len()) < GATHER {
            let Some(next) = incoming.ready_frame() else {
                break;
            };
            let Some(next) = next else {
                ended = true;
                break;
            };
            let Some(more) = data_or_trailers(next, &mut trailers)? else {
                continue;
            };
            if gathered.is_empty() {
                gathered.reserve(GATHER);
                gathered.extend_from_slice(&data);
            }
            gathered.extend_from_slice(&more);
        }
        if !gathered.is_empty() {
            data = gathered.split().freeze();
        }
        if data.is_empty() {
            continue;
        }
        deadline.restart();
        if !chunked {
            writer.write_all(&data).await.map_err(SendError::Io)?;
        } else if data.len() <= INLINE_BODY {
            scratch.clear();
            put_chunk_size(data.len(), scratch);
            scratch.extend_from_slice(&data);
            scratch.extend_from_slice(b"\r\n");
            writer.write_all(scratch).await.map_err(SendError::Io)?;
        } else {
            // Size line, data and CRLF in one vectored write, without copying the data.
            scratch.clear();
            put_chunk_size(data.len(), scratch);
            let mut framed = bytes::Buf::chain(bytes::Buf::chain(&scratch[..], &data[..]), &b"\r\n"[..]);
            writer.write_all_buf(&mut framed).await.map_err(SendError::Io)?;
        }
    }
    deadline.restart();
    if chunked {
        scratch.clear();
        crate::headers::put_last_chunk(trailers.as_ref(), scratch);
        writer.write_all(scratch).await.map_err(SendError::Io)?;
    }
    Ok(())
}

/// A frame of the client's body: its data, or `None` for trailers (kept in `trailers`).
fn data_or_trailers(
    frame: Result<http_body::Frame<Bytes>, ClientBodyError>,
    trailers: &mut Option<http::HeaderMap>,
) -> Result<Option<Bytes>, SendError> {
    match frame.map_err(SendError::Client)?.into_data() {
        Ok(data) => Ok(Some(data)),
        Err(frame) => {
            if let Ok(t) = frame.into_trailers() {
                *trailers = Some(t);
            }
            Ok(None)
        }
    }
}

/// Why a response body broke off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream closed the connection inside the response body")]
    Truncated,
    #[error("malformed chunked response body: {0}")]
    Chunked(&'static str),
    #[error("upstream connection failed inside the response body: {0}")]
    Io(#[from] io::Error),
    #[error("upstream sent nothing of the response body for {0:?} (timeouts.body)")]
    Stalled(Duration),
}

#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
    Done,
    /// Done, with a chunked body's trailer fields still to be taken (boxed: the body lives in
    /// every proxied response, and trailers are rare).
    Trailers(Box<http::HeaderMap>),
    Failed,
}

/// The body of an upstream response, read from the connection as the client takes it. When it
/// ends cleanly on a keep-alive connection, the connection is handed back with
/// [`ResponseBody::take_reusable`].
#[derive(Debug)]
pub struct ResponseBody {
    conn: Option<UpConn>,
    state: BodyState,
    keep_alive: bool,
    idle_hint_secs: Option<u32>,
    /// A wait for body bytes is under way (its timer runs), and whether any was.
    waiting: bool,
    waited: bool,
}

impl ResponseBody {
    pub fn new(conn: UpConn, head: &ResponseHead) -> Self {
        let state = match head.framing {
            Framing::None | Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::default()),
            Framing::Close => BodyState::Close,
        };
        ResponseBody {
            conn: Some(conn),
            state,
            keep_alive: head.keep_alive,
            idle_hint_secs: head.idle_hint_secs,
            waiting: false,
            waited: false,
        }
    }

    /// The trailer fields of a chunked body that has ended, if it had any (once).
    pub fn take_trailers(&mut self) -> Option<http::HeaderMap> {
        if !self.has_trailers() {
            return None;
        }
        match std::mem::replace(&mut self.state, BodyState::Done) {
            BodyState::Trailers(t) => Some(*t),
            _ => None,
        }
    }

    /// Whether trailer fields wait to be taken after the body's data.
    pub fn has_trailers(&self) -> bool {
        matches!(self.state, BodyState::Trailers(_))
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, BodyState::Done | BodyState::Trailers(_) | BodyState::Failed)
    }

    /// The connection, if the body ended cleanly and the connection can carry another request
    /// (keep-alive, nothing unread left over).
    pub fn take_reusable(&mut self) -> Option<UpConn> {
        let reusable = matches!(self.state, BodyState::Done | BodyState::Trailers(_))
            && self.keep_alive
            && self.conn.as_ref().is_some_and(|c| c.rbuf.is_empty());
        if !reusable {
            return None;
        }
        let mut conn = self.conn.take()?;
        if self.waited {
            conn.timer.quiet();
        }
        if let Some(secs) = self.idle_hint_secs {
            conn.idle_limit_ms = reuse_window_ms(secs.saturating_mul(1000));
            if conn.idle_limit_ms == 0 {
                return None;
            }
        }
        conn.release_buffers();
        Some(conn)
    }

    /// The whole body as its own bytes, when it is at most `max` long and already read: all of
    /// it, and nothing after it, sits in the connection's read buffer. The body is then done,
    /// and the buffer empty and free for the next response read on this thread: otherwise a
    /// small body's bytes keep the whole 8 KiB buffer until the client has taken them, and with
    /// many responses on their way (an HTTP/2 client's streams) every read took a new one.
    pub fn take_whole(&mut self, max: usize) -> Option<Bytes> {
        let BodyState::Length(n) = self.state else {
            return None;
        };
        let conn = self.conn.as_mut()?;
        if n > max as u64 || conn.rbuf.len() as u64 != n {
            return None;
        }
        let data = Bytes::copy_from_slice(&conn.rbuf);
        conn.rbuf.clear();
        self.state = BodyState::Done;
        Some(data)
    }

    /// Exact bytes still to come, when the framing says.
    pub fn remaining(&self) -> Option<u64> {
        match self.state {
            BodyState::Length(n) => Some(n),
            BodyState::Done | BodyState::Trailers(_) | BodyState::Failed => Some(0),
            BodyState::Chunked(_) | BodyState::Close => None,
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Bytes, BodyError>>> {
        self.state = BodyState::Failed;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }

    /// The next piece of the body, `None` at its end.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.state {
                BodyState::Done | BodyState::Trailers(_) | BodyState::Failed => return Poll::Ready(None),
                BodyState::Length(n) => {
                    if !conn.rbuf.is_empty() {
                        let data = take_fixed(&mut conn.rbuf, n);
                        if *n == 0 {
                            self.state = BodyState::Done;
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                }
                BodyState::Chunked(decoder) => match decoder.decode(&mut conn.rbuf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Decoded::Done) => {
                        self.state = match decoder.take_trailers() {
                            Some(t) => BodyState::Trailers(Box::new(t)),
                            None => BodyState::Done,
                        };
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return self.fail(BodyError::Chunked(e)),
                },
                BodyState::Close => {
                    if !conn.rbuf.is_empty() {
                        let len = conn.rbuf.len();
                        return Poll::Ready(Some(Ok(conn.rbuf.split_to(len).freeze())));
                    }
                }
            }
            let filled = match conn.poll_fill(cx) {
                Poll::Ready(filled) => {
                    self.waiting = false;
                    filled
                }
                Poll::Pending => {
                    self.waited = true;
                    let limit = conn.body_timeout;
                    if conn.timer.poll_stalled(&mut self.waiting, limit, cx).is_ready() {
                        return self.fail(BodyError::Stalled(limit));
                    }
                    return Poll::Pending;
                }
            };
            match filled {
                Ok(0) if matches!(self.state, BodyState::Close) => {
                    self.state = BodyState::Done;
                    self.keep_alive = false;
                    return Poll::Ready(None);
                }
                Ok(0) => return self.fail(BodyError::Truncated),
                Ok(_) => {}
                Err(e) => return self.fail(BodyError::Io(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_connection_is_reused_for_a_little_less_than_the_upstreams_keep_alive_timeout() {
        assert_eq!(reuse_window_ms(0), 0);
        assert_eq!(reuse_window_ms(1_000), 750);
        assert_eq!(reuse_window_ms(2_000), 1500);
        assert_eq!(reuse_window_ms(5_000), 4000);
        assert_eq!(reuse_window_ms(75_000), 74_000);
        assert_eq!(reuse_window_ms(u32::MAX), u32::MAX - 1000);
    }

    /// A small body that came with its head is copied out whole: the body is done and the
    /// connection reusable, its buffer empty. A body longer than asked for, one not all read
    /// yet, or one followed by more bytes stays where it is.
    #[tokio::test]
    async fn a_small_body_read_with_its_head_is_taken_whole() {
        let hello: &[u8] = b"hello";
        let cases = [
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 1024, Some(hello)),
            ("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 4, None),
            ("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello", 1024, None),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200",
                1024,
                None,
            ),
        ];
        for (answer, max, whole) in cases {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let upstream = tokio::spawn(async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    s.read_exact(&mut byte).await.unwrap();
                    head.push(byte[0]);
                }
                s.write_all(answer.as_bytes()).await.unwrap();
                s
            });
            let mut conn = UpConn::new(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (uri, headers) = (http::Uri::from_static("/"), http::HeaderMap::new());
            let request = RequestHead {
                method: &Method::GET,
                uri: &uri,
                headers: &headers,
                forwarding: None,
                trailers: Default::default(),
            };
            let head = conn.exchange(&request, &mut UpBody::Empty).await.unwrap();
            let mut body = ResponseBody::new(conn, &head);
            let taken = body.take_whole(max);
            assert_eq!(taken.as_deref(), whole, "{max} {answer:?}");
            assert_eq!(body.is_done(), whole.is_some());
            assert_eq!(body.take_reusable().is_some(), whole.is_some());
            drop(upstream.await.unwrap());
        }
    }

    /// A body read that has grown asks for its full size even when the last read's bytes were
    /// all handed on (the buffer has no capacity left); small sizes come from the pool.
    #[test]
    fn make_room_gives_a_grown_read_its_size() {
        for size in [bufpool::FRONT_READ, READ_CHUNK, 64 * 1024, MAX_READ] {
            let mut buf = BytesMut::new();
            make_room(&mut buf, size);
            assert!(buf.capacity() >= size, "{size}: {}", buf.capacity());
            // Everything read is handed on: the next read still gets the size asked for.
            buf.resize(buf.capacity(), 0);
            let _handed_on = buf.split().freeze();
            assert_eq!(buf.capacity(), 0);
            make_room(&mut buf, size);
            assert!(buf.capacity() >= size, "{size} again: {}", buf.capacity());
        }
    }
}
