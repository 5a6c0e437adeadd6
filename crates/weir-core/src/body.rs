//! The two body types of the proxy path, as enums rather than boxed trait objects so that a
//! request allocates nothing for them.
//!
//! [`UpBody`] is what goes to an upstream (the client's streamed body, or bytes). [`ProxyBody`] is
//! what goes to the client: the upstream's streamed body, which returns the upstream connection to
//! its pool when it ends, or a short local answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::front::ActivityToken;
use crate::upstream::{InFlight, Sender};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body on its way to an upstream.
#[derive(Debug)]
pub enum UpBody {
    Empty,
    Streamed(Incoming),
    Full(Option<Bytes>),
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpBody::Empty => Poll::Ready(None),
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Streamed(inc) => Pin::new(inc).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpBody::Empty => true,
            UpBody::Full(b) => b.is_none(),
            UpBody::Streamed(inc) => inc.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Empty => SizeHint::with_exact(0),
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Streamed(inc) => inc.size_hint(),
        }
    }
}

/// The upstream connection and counters a response body holds until it ends.
#[derive(Debug)]
pub struct Lease {
    pub sender: Sender,
    pub in_flight: InFlight,
}

/// A response body on its way to the client.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    lease: Option<Lease>,
    _activity: ActivityToken,
}

#[derive(Debug)]
enum Inner {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn upstream(body: Incoming, lease: Lease, activity: ActivityToken) -> Self {
        let mut b = ProxyBody {
            inner: Inner::Upstream(body),
            lease: Some(lease),
            _activity: activity,
        };
        if b.is_end_stream() {
            b.release();
        }
        b
    }

    pub fn full(bytes: Bytes, activity: ActivityToken) -> Self {
        let inner = Inner::Full(if bytes.is_empty() { None } else { Some(bytes) });
        ProxyBody {
            inner,
            lease: None,
            _activity: activity,
        }
    }

    /// Moves a local body under a connection's activity token.
    pub fn with_activity(mut self, activity: ActivityToken) -> Self {
        self._activity = activity;
        self
    }

    /// The response is complete: the connection can serve the next request.
    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.in_flight.endpoint().checkin(lease.sender);
        }
    }
}

fn inc_done(inner: &Inner) -> bool {
    match inner {
        Inner::Upstream(inc) => inc.is_end_stream(),
        Inner::Full(_) => true,
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // A body dropped after its last byte still leaves a reusable connection.
        if inc_done(&self.inner) {
            self.release();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upstream(inc) => match Pin::new(inc).poll_frame(cx) {
                Poll::Ready(None) => {
                    this.release();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    // The connection is broken: drop it instead of pooling it.
                    this.lease = None;
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // hyper stops polling once a sized body is written: release right away.
                    if inc_done(&this.inner) {
                        this.release();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::Upstream(inc) => inc.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Upstream(inc) => inc.size_hint(),
        }
    }
}
