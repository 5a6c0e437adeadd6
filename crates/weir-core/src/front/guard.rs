//! `H1Guard`: the strict HTTP/1 front. It sits between the client socket and hyper, reads ahead,
//! and hands hyper only request heads it has validated ([`super::head`]), tracking body framing
//! ([`super::chunked`]) so it knows where each next head starts.
//!
//! A refused head never reaches hyper (nor any upstream): the guard answers hyper with EOF, hyper
//! finishes what it was writing and shuts the connection down, and the guard writes its own
//! `4xx` with `Connection: close` just before the TCP shutdown. The guard also owns the
//! connection's timers: `header_timeout` from the first byte of a head (408), `body_timeout` as the
//! longest wait for body bytes while hyper wants them, and `idle_timeout` between requests.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::chunked::Chunked;
use super::head::{BodyFraming, HeadLimits, HeadStatus, Reject, check_head};

/// Reads start with a small buffer and grow while reads fill it (bodies, pipelines), so an idle
/// keep-alive connection holds 4 KiB here rather than the largest chunk it ever read.
const FIRST_READ_CHUNK: usize = 4 * 1024;
const READ_CHUNK: usize = 64 * 1024;

/// Per-connection state shared between the guard and the request handler: how many responses are
/// still being produced. The idle timer only runs, and a refusal is only written, when it is zero.
#[derive(Debug, Default)]
pub struct ConnActivity {
    in_flight: AtomicUsize,
    waker: AtomicWaker,
}

impl ConnActivity {
    /// A request head went to hyper: it is in flight until its response ends.
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    pub fn end(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// Ends one in-flight request of a connection when dropped: the guard counts a request from the
/// moment it releases its head; the handler takes that count over and its response body holds
/// it until the response is finished.
#[derive(Debug)]
pub struct ActivityToken(Option<Arc<ConnActivity>>);

impl ActivityToken {
    pub fn adopt(activity: Arc<ConnActivity>) -> Self {
        ActivityToken(Some(activity))
    }

    pub fn none() -> Self {
        ActivityToken(None)
    }
}

impl Drop for ActivityToken {
    fn drop(&mut self) {
        if let Some(a) = self.0.take() {
            a.end();
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct GuardConfig {
    pub head: HeadLimits,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Between requests: waiting for the first byte of a head.
    Idle,
    /// Collecting a head; it is withheld from hyper until complete and valid.
    Head {
        started: Instant,
        searched: usize,
    },
    Fixed(u64),
    Chunked(Chunked),
    /// After `101 Switching Protocols`: bytes are no longer HTTP.
    Passthrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    /// Tell hyper the client is done (after the ready bytes).
    Eof,
    /// A head was refused: EOF to hyper, then this response on shutdown.
    Refused(Reject),
    /// A body turned out malformed after its head went to hyper.
    BodyError(Reject),
    BodyTimeout,
}

pub struct H1Guard<S> {
    io: S,
    cfg: GuardConfig,
    activity: Arc<ConnActivity>,
    buf: BytesMut,
    /// Validated bytes at the front of `buf` that hyper may read.
    ready: usize,
    /// Offset in `buf` of the current request's head while none of it has gone to hyper.
    head_start: Option<usize>,
    phase: Phase,
    end: End,
    requests: u64,
    upgrade_pending: bool,
    accepted_at: Instant,
    /// When the guard started waiting for the client with nothing for hyper.
    waiting_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    refusal: Option<(Vec<u8>, usize)>,
    /// How much spare room the next read asks for (see [`FIRST_READ_CHUNK`]).
    chunk: usize,
}

impl<S> H1Guard<S> {
    pub fn new(io: S, cfg: GuardConfig, activity: Arc<ConnActivity>) -> Self {
        let now = Instant::now();
        H1Guard {
            io,
            cfg,
            activity,
            buf: BytesMut::new(),
            ready: 0,
            head_start: None,
            phase: Phase::Idle,
            end: End::Open,
            requests: 0,
            upgrade_pending: false,
            accepted_at: now,
            waiting_since: None,
            timer: Box::pin(tokio::time::sleep_until(now + cfg.header_timeout)),
            refusal: None,
            chunk: FIRST_READ_CHUNK,
        }
    }

    /// Scans the unvalidated bytes of `buf`, advancing `ready`.
    fn scan(&mut self) -> Result<(), Reject> {
        loop {
            let pos = self.ready;
            match self.phase {
                Phase::Idle => {
                    if pos >= self.buf.len() {
                        return Ok(());
                    }
                    self.head_start = Some(pos);
                    self.phase = Phase::Head {
                        started: Instant::now(),
                        searched: pos,
                    };
                }
                Phase::Head { started, searched } => {
                    let pending = &self.buf[pos..];
                    // Re-parse only when a blank line may have arrived or the limit is passed.
                    let from = searched.saturating_sub(3).max(pos);
                    let blank = self.buf[from..].windows(2).any(|w| w == b"\n\n")
                        || self.buf[from..].windows(3).any(|w| w == b"\n\r\n");
                    if !blank && pending.len() <= self.cfg.head.max_header_bytes {
                        self.phase = Phase::Head {
                            started,
                            searched: self.buf.len(),
                        };
                        return Ok(());
                    }
                    match check_head(pending, &self.cfg.head)? {
                        HeadStatus::Partial => {
                            self.phase = Phase::Head {
                                started,
                                searched: self.buf.len(),
                            };
                            return Ok(());
                        }
                        HeadStatus::Complete(info) => {
                            self.activity.begin();
                            self.ready += info.len;
                            self.requests += 1;
                            self.upgrade_pending = info.upgrade;
                            self.phase = match info.framing {
                                BodyFraming::None => Phase::Idle,
                                BodyFraming::Fixed(n) => Phase::Fixed(n),
                                BodyFraming::Chunked => Phase::Chunked(Chunked::default()),
                            };
                        }
                    }
                }
                Phase::Fixed(n) => {
                    let avail = (self.buf.len() - pos) as u64;
                    if avail == 0 {
                        return Ok(());
                    }
                    let take = avail.min(n);
                    self.ready += take as usize;
                    self.phase = if take == n { Phase::Idle } else { Phase::Fixed(n - take) };
                }
                Phase::Chunked(mut c) => {
                    if pos >= self.buf.len() {
                        return Ok(());
                    }
                    let step = c.feed(&self.buf[pos..], self.cfg.head.max_body_bytes)?;
                    self.ready += step.used;
                    self.phase = if step.done { Phase::Idle } else { Phase::Chunked(c) };
                    if !step.done {
                        return Ok(());
                    }
                }
                Phase::Passthrough => {
                    self.ready = self.buf.len();
                    return Ok(());
                }
            }
        }
    }

    fn refuse(&mut self, reject: Reject) {
        match self.head_start {
            // The offending request has not reached hyper: drop it whole.
            Some(start) => {
                if !matches!(self.phase, Phase::Head { .. }) {
                    // Its head was counted in flight when validated; it never reaches hyper now.
                    self.activity.end();
                }
                self.buf.truncate(start);
                self.ready = start;
                self.end = End::Refused(reject);
                self.refusal = Some((refusal_response(reject), 0));
            }
            _ => {
                self.buf.truncate(self.ready);
                self.end = End::BodyError(reject);
            }
        }
        self.phase = Phase::Idle;
    }

    /// The instant the current wait for the client times out, if any.
    fn deadline(&mut self, now: Instant) -> Option<Instant> {
        match self.phase {
            Phase::Idle if self.activity.busy() => {
                self.waiting_since = None;
                None
            }
            Phase::Idle if self.requests == 0 => Some(self.accepted_at + self.cfg.header_timeout),
            Phase::Idle => Some(*self.waiting_since.get_or_insert(now) + self.cfg.idle_timeout),
            Phase::Head { started, .. } => Some(started + self.cfg.header_timeout),
            Phase::Fixed(_) | Phase::Chunked(_) => Some(*self.waiting_since.get_or_insert(now) + self.cfg.body_timeout),
            Phase::Passthrough => None,
        }
    }

    fn time_out(&mut self) {
        match self.phase {
            Phase::Head { .. } => self.refuse(Reject {
                status: 408,
                reason: "request header timeout",
            }),
            Phase::Fixed(_) | Phase::Chunked(_) => {
                self.buf.truncate(self.ready);
                self.end = End::BodyTimeout;
            }
            Phase::Idle | Phase::Passthrough => self.end = End::Eof,
        }
    }
}

fn refusal_response(reject: Reject) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(reject.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Bad Request");
    let body = format!("{}: {}\n", reason.to_ascii_lowercase(), reject.reason);
    format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\nvia: 1.1 weir\r\n\r\n{body}",
        reject.status,
        body.len()
    )
    .into_bytes()
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for H1Guard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.ready -= n;
                this.head_start = this.head_start.and_then(|h| h.checked_sub(n));
                this.waiting_since = None;
                return Poll::Ready(Ok(()));
            }
            match this.end {
                End::Open => {}
                End::Eof => return Poll::Ready(Ok(())),
                End::Refused(_) => {
                    // Let responses to earlier requests finish before hyper sees the end.
                    this.activity.waker.register(cx.waker());
                    if this.activity.busy() {
                        return Poll::Pending;
                    }
                    return Poll::Ready(Ok(()));
                }
                End::BodyError(r) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, r.reason)));
                }
                End::BodyTimeout => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request body timeout")));
                }
            }
            if this.phase == Phase::Passthrough {
                return Pin::new(&mut this.io).poll_read(cx, out);
            }
            this.buf.reserve(this.chunk);
            let room = this.buf.capacity() - this.buf.len();
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Ready(Ok(0)) => {
                    // Client closed. A partial head is dropped; a partial body shows as an
                    // incomplete message to hyper.
                    if let Phase::Head { .. } = this.phase
                        && let Some(start) = this.head_start
                    {
                        this.buf.truncate(start);
                    }
                    this.end = End::Eof;
                }
                Poll::Ready(Ok(n)) => {
                    if n == room {
                        this.chunk = (this.chunk * 2).min(READ_CHUNK);
                    }
                    if let Err(reject) = this.scan() {
                        this.refuse(reject);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    this.activity.waker.register(cx.waker());
                    let now = Instant::now();
                    match this.deadline(now) {
                        None => return Poll::Pending,
                        Some(deadline) if deadline <= now => this.time_out(),
                        Some(deadline) => {
                            if this.timer.deadline() != deadline {
                                this.timer.as_mut().reset(deadline);
                            }
                            if this.timer.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            this.time_out();
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> H1Guard<S> {
    fn sniff_response(&mut self, first: &[u8]) {
        if self.upgrade_pending && !first.is_empty() {
            self.upgrade_pending = false;
            if first.starts_with(b"HTTP/1.1 101 ") {
                self.phase = Phase::Passthrough;
                self.ready = self.buf.len();
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for H1Guard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.sniff_response(data);
        Pin::new(&mut this.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            this.sniff_response(first);
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some((bytes, written)) = &mut this.refusal {
            while *written < bytes.len() {
                match Pin::new(&mut this.io).poll_write(cx, &bytes[*written..]) {
                    Poll::Ready(Ok(0)) => break,
                    Poll::Ready(Ok(n)) => *written += n,
                    Poll::Ready(Err(_)) => break,
                    Poll::Pending => return Poll::Pending,
                }
            }
            if Pin::new(&mut this.io).poll_flush(cx).is_pending() {
                return Poll::Pending;
            }
            this.refusal = None;
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
