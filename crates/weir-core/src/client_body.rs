//! The request body of the proxy path, whichever front it came through: weir's own HTTP/1
//! server ([`crate::front::RequestBody`]) or hyper's HTTP/2 server. An enum, so the request
//! path is one (non-generic) function and a body costs no allocation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;
use crate::front::RequestBody;

#[derive(Debug)]
pub enum ClientBody {
    Empty,
    H1(RequestBody),
    H2(H2Body),
}

/// `body_timeout` for a client's request body: the longest wait for its next bytes. Runs only
/// while the body's reader waits on the client (started by [`BodyTimer::expired`] on a pending
/// read, stopped by [`BodyTimer::arrived`]), not while weir itself is busy elsewhere.
#[derive(Debug)]
pub struct BodyTimer {
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether the timer runs for the current wait.
    waiting: bool,
}

impl BodyTimer {
    pub fn new(timeout: Duration) -> Self {
        BodyTimer {
            timeout,
            timer: None,
            waiting: false,
        }
    }

    /// Bytes came: the next wait starts a new timeout.
    pub fn arrived(&mut self) {
        self.waiting = false;
    }

    /// On a read that found nothing: starts the timeout if this wait has none yet, and says
    /// whether it has run out (else `cx` is woken when it does).
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.waiting {
            self.waiting = true;
            let deadline = Instant::now() + self.timeout;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.timer.as_mut().is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// The error a body that timed out fails with.
    pub fn error() -> ClientBodyError {
        ClientBodyError::new(
            408,
            std::io::Error::new(std::io::ErrorKind::TimedOut, "request body timeout"),
        )
    }
}

/// An HTTP/2 request body with the listener's limits, which hyper does not apply:
/// `max_body_bytes` (413 once more has arrived) and `body_timeout` (408 after that long
/// without a byte while weir waits for one), as weir's HTTP/1 server applies them.
#[derive(Debug)]
pub struct H2Body {
    body: Incoming,
    /// The connection's allowance for bodies held for a retry.
    retained: Arc<RetainedBodies>,
    /// Bytes still allowed; `u64::MAX` when unlimited.
    allowed: u64,
    timer: BodyTimer,
    failed: bool,
    /// `Expect: 100-continue` not answered yet: the client waits for a `100` before its body,
    /// which it gets when the body is first read, as an HTTP/1.1 client does.
    expect_continue: bool,
}

impl H2Body {
    /// `max_body` 0 = unlimited.
    pub fn new(
        body: Incoming,
        max_body: u64,
        body_timeout: Duration,
        retained: Arc<RetainedBodies>,
        expect_continue: bool,
    ) -> Self {
        H2Body {
            body,
            retained,
            allowed: if max_body == 0 { u64::MAX } else { max_body },
            timer: BodyTimer::new(body_timeout),
            failed: false,
            expect_continue,
        }
    }

    fn fail(&mut self, status: u16, why: impl Into<BoxError>) -> Option<Result<Frame<Bytes>, ClientBodyError>> {
        self.failed = true;
        Some(Err(ClientBodyError::new(status, why)))
    }

    /// The next frame if hyper has it, counted against the size limit; no timer.
    fn poll_counted(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                self.failed = true;
                return Poll::Ready(Some(Err(ClientBodyError::from_h2(e))));
            }
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.allowed {
                return Poll::Ready(self.fail(413, "request body too large"));
            }
            self.allowed -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn poll_timed(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if std::mem::take(&mut self.expect_continue) && !self.body.is_end_stream() {
            // Queued by hyper's stream when the request's poll returns (dropped if the body
            // is first read elsewhere, after the upstream answered: the answer goes instead).
            crate::interim::send_http2(http::StatusCode::CONTINUE, http::HeaderMap::new());
        }
        if let Poll::Ready(frame) = self.poll_counted(cx) {
            self.timer.arrived();
            return Poll::Ready(frame);
        }
        if self.timer.expired(cx) {
            self.failed = true;
            return Poll::Ready(Some(Err(BodyTimer::error())));
        }
        Poll::Pending
    }
}

/// The request bodies an HTTP/2 connection's streams hold in memory for a retry
/// (`retry.buffer_bytes` each): at most [`RetainedBodies::LIMIT`] bytes together, besides the
/// first one held, so that a client cannot make its 100 streams hold 100 bodies it never
/// finishes. A body past the allowance streams to its upstream instead and is replayed only
/// while nothing of it has left weir, as a larger one is. An HTTP/1 connection holds one
/// request's body at a time and needs none.
#[derive(Debug, Default)]
pub struct RetainedBodies {
    bytes: AtomicU64,
}

impl RetainedBodies {
    /// What hyper's HTTP/2 server already lets a connection's client send unread (its
    /// connection window, 1 MiB): the allowance at most doubles what a connection may hold.
    pub const LIMIT: u64 = 1 << 20;

    /// Reserves `len` bytes, if the connection holds nothing yet or stays within the limit.
    fn reserve(self: &Arc<Self>, len: u64) -> Option<Retained> {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held == 0 || held.saturating_add(len) <= Self::LIMIT).then(|| held.saturating_add(len))
            })
            .ok()?;
        Some(Retained(Some((self.clone(), len))))
    }
}

/// A body's share of its connection's [`RetainedBodies`], given back when dropped (nothing
/// for an HTTP/1 body).
#[derive(Debug)]
pub struct Retained(Option<(Arc<RetainedBodies>, u64)>);

impl Drop for Retained {
    fn drop(&mut self) {
        if let Some((bodies, len)) = self.0.take() {
            bodies.bytes.fetch_sub(len, Ordering::AcqRel);
        }
    }
}

/// Why a client's body broke off, with the status the client is answered with.
#[derive(Debug, thiserror::Error)]
#[error("request body failed ({status}): {source}")]
pub struct ClientBodyError {
    pub status: u16,
    source: BoxError,
}

impl ClientBodyError {
    pub fn new(status: u16, source: impl Into<BoxError>) -> Self {
        ClientBodyError {
            status,
            source: source.into(),
        }
    }

    fn from_h2(err: hyper::Error) -> Self {
        let status = h2_body_status(&err).unwrap_or(400);
        ClientBodyError::new(status, err)
    }
}

/// A request failed because the client's HTTP/2 body did (malformed, too large, too slow).
fn h2_body_status(err: &hyper::Error) -> Option<u16> {
    if err.is_parse() || err.is_incomplete_message() {
        return Some(400);
    }
    let io = crate::error::source_of::<std::io::Error>(err)?;
    match io.kind() {
        std::io::ErrorKind::TimedOut => Some(408),
        std::io::ErrorKind::InvalidData if io.to_string().contains("too large") => Some(413),
        std::io::ErrorKind::InvalidData => Some(400),
        _ => None,
    }
}

impl ClientBody {
    /// Leave to hold a body of `len` bytes in memory until the request is answered: always
    /// for an HTTP/1 body, within its connection's [`RetainedBodies`] for an HTTP/2 one.
    pub fn retain(&self, len: u64) -> Option<Retained> {
        match self {
            ClientBody::H2(b) => b.retained.reserve(len),
            _ => Some(Retained(None)),
        }
    }

    /// The next piece of an HTTP/2 body if it is already here, without waiting: `None` when it
    /// is not (or for an HTTP/1 body, whose reads are already as large as what has arrived, and
    /// whose body timer must not start while weir itself is busy writing upstream).
    /// HTTP/2 cuts a body into DATA frames of at most 16 KiB; the upstream client gathers the
    /// ones that arrived together into one write.
    pub fn ready_frame(&mut self) -> Option<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let ClientBody::H2(b) = self else {
            return None;
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match b.poll_counted(&mut cx) {
            Poll::Ready(frame) => Some(frame),
            Poll::Pending => None,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::H1(b) => b.poll_frame(cx),
            ClientBody::H2(b) => b.poll_timed(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::H1(b) => b.is_done(),
            ClientBody::H2(b) => b.failed || b.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::H1(b) => b.remaining().map_or_else(SizeHint::default, SizeHint::with_exact),
            ClientBody::H2(b) => b.body.size_hint(),
        }
    }
}
