//! The response body of the proxy path, as an enum rather than a boxed trait object so that a
//! request allocates nothing for it: the upstream's body, read off the upstream connection as
//! the client takes it (the connection goes back to its pool when it ends), an HTTP/2
//! upstream's response stream, or a short local answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::h1client::ResponseBody;
use crate::h2client::{H2RespBody, H2Stream};
use crate::upstream::InFlight;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body on its way to the client.
#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    /// Counts the request against its endpoint until the body ends.
    in_flight: Option<InFlight>,
}

#[derive(Debug)]
enum Inner {
    Upstream(ResponseBody),
    /// A response stream from an HTTP/2 upstream (`h2client.rs`), trailers included, and its
    /// place on the connection until it ends.
    H2(H2RespBody, Option<H2Stream>),
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// The body of an HTTP/1 upstream's response. A small body already read whole is copied
    /// out ([`ResponseBody::take_whole`]) and the exchange ends here: the connection goes back
    /// to its pool and its read buffer to the thread's, before the client has the bytes.
    pub fn upstream(mut body: ResponseBody, in_flight: InFlight) -> Self {
        let whole = body.take_whole(crate::bufpool::COPY_MAX);
        let mut b = ProxyBody {
            inner: Inner::Upstream(body),
            in_flight: Some(in_flight),
        };
        if b.is_end_stream() {
            b.release();
        }
        if let Some(data) = whole {
            b.inner = Inner::Full(Some(data));
        }
        b
    }

    pub fn upstream_h2(body: H2RespBody, stream: H2Stream, in_flight: InFlight) -> Self {
        let end = body.is_end_stream();
        ProxyBody {
            inner: Inner::H2(body, (!end).then_some(stream)),
            in_flight: (!end).then_some(in_flight),
        }
    }

    pub fn full(bytes: Bytes) -> Self {
        let inner = Inner::Full(if bytes.is_empty() { None } else { Some(bytes) });
        ProxyBody { inner, in_flight: None }
    }

    /// Whether the body still holds an upstream connection (and its endpoint's in-flight
    /// count) until it ends.
    pub fn holds_upstream(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The response is complete: a reusable connection goes back to its endpoint's pool.
    fn release(&mut self) {
        if let Some(in_flight) = self.in_flight.take()
            && let Inner::Upstream(body) = &mut self.inner
            && let Some(conn) = body.take_reusable()
        {
            in_flight.endpoint().checkin(conn);
        }
    }
}

/// A response its upstream cut short (closed or reset inside the body, malformed chunks,
/// nothing for `timeouts.body`): the client has part of it, and the operator should hear which
/// endpoint did it and how (nginx logs "upstream prematurely closed connection"). At most once
/// a second for the whole process.
fn warn_cut(in_flight: &Option<InFlight>, error: &dyn std::fmt::Display) {
    static LAST_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if let Some(f) = in_flight
        && crate::upstream::once_a_second(&LAST_MS)
    {
        tracing::warn!(endpoint = %f.endpoint().label, %error, "response cut short: the client got part of the body");
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // A body dropped after its last byte still leaves a reusable connection; one dropped
        // before that closes the connection with it.
        self.release();
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::H2(body, stream) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let Poll::Ready(Some(Err(e))) = &polled {
                    warn_cut(&this.in_flight, e);
                }
                let ended = match &polled {
                    Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    Poll::Pending => false,
                };
                if ended {
                    this.in_flight = None;
                    *stream = None;
                }
                polled
            }
            Inner::Upstream(body) => match body.poll_data(cx) {
                Poll::Ready(None) => {
                    let trailers = body.take_trailers();
                    this.release();
                    Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
                }
                Poll::Ready(Some(Err(e))) => {
                    warn_cut(&this.in_flight, &e);
                    this.in_flight = None;
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Ready(Some(Ok(data))) => {
                    // The server stops polling once a sized body is written: release right away.
                    if body.is_done() {
                        this.release();
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.is_none(),
            Inner::H2(body, _) => body.is_end_stream(),
            Inner::Upstream(body) => body.is_done() && !body.has_trailers(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::H2(body, _) => body.size_hint(),
            Inner::Upstream(body) => body.remaining().map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}
