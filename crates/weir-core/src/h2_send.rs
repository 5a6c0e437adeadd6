//! `send_timeout` for HTTP/2 responses.
//!
//! hyper's HTTP/2 server polls a response body only while the client's flow-control window
//! has room. A client that stops granting window to a stream (or stops reading the connection
//! at all) leaves the body unpolled, and with it the upstream connection feeding it and its
//! endpoint's in-flight count, for good: there is no stalled write to time, as the HTTP/1
//! server times its writes (`front/server.rs`). So each streaming response body notes when it
//! last handed hyper data ([`H2ResponseBody`]), and the connection looks at its bodies every
//! half `send_timeout` ([`SendWatch::cut_stalled`]): one that has waited longer than
//! `send_timeout` for the client lets go of its upstream side (the connection closes, as it
//! does for a client that goes away mid-body) and is reset when hyper polls it again. The other
//! streams of the connection carry on, as nginx resets only the stalled stream.
//!
//! A body waiting for its upstream is not stalled: the upstream's slowness is the request
//! timeouts' business. Local answers and bodies already complete hold nothing and are not
//! watched.
//!
//! A small piece of an upstream's body is handed to hyper as a copy ([`own_small`]): the
//! piece is a view into the upstream connection's 8 KiB read buffer, and the h2 crate keeps
//! it queued until the connection's task writes it. While it is queued that buffer cannot be
//! reused (`bufpool.rs`), and with hundreds of streams in flight the next upstream read takes a
//! fresh 8 KiB instead. (A small response's head and whole body are copied out earlier, in
//! `h1client`; this covers the pieces of a streamed body.)

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxError, ProxyBody};
use crate::bufpool::COPY_MAX;
use crate::upstream::coarse_ms;

/// The streaming response bodies of one HTTP/2 connection.
#[derive(Default)]
pub struct SendWatch {
    inner: Mutex<Watched>,
}

#[derive(Default)]
struct Watched {
    bodies: Vec<Weak<Slot>>,
    /// When `bodies` reaches this length, the ended ones are dropped from it first (amortised:
    /// a long-lived connection's list stays about twice its live bodies).
    prune_at: usize,
}

/// One watched body, shared between its stream's task and the connection's check.
struct Slot {
    /// `None` once let go by [`SendWatch::cut_stalled`]: the next poll fails, and hyper resets
    /// the stream.
    body: Mutex<Option<ProxyBody>>,
    /// [`coarse_ms`] + 1 when the body last handed hyper data (or was made) and has not been
    /// polled since; 0 while it waits for its upstream or has ended.
    waiting_since: AtomicU64,
}

impl SendWatch {
    /// `body` as the HTTP/2 server is to send it: watched if it streams from an upstream.
    pub fn watch(&self, body: ProxyBody) -> H2ResponseBody {
        if !body.holds_upstream() {
            return H2ResponseBody(Repr::Local(body));
        }
        let slot = Arc::new(Slot {
            body: Mutex::new(Some(body)),
            waiting_since: AtomicU64::new(coarse_ms() + 1),
        });
        if let Ok(mut w) = self.inner.lock() {
            if w.bodies.len() >= w.prune_at {
                w.bodies.retain(|b| b.strong_count() > 0);
                w.prune_at = (w.bodies.len() * 2).max(16);
            }
            w.bodies.push(Arc::downgrade(&slot));
        }
        H2ResponseBody(Repr::Watched(slot))
    }

    /// Lets go of every body that has waited for the client for `send_timeout` or longer;
    /// how many it let go.
    pub fn cut_stalled(&self, send_timeout: Duration) -> usize {
        let limit = u64::try_from(send_timeout.as_millis()).unwrap_or(u64::MAX);
        let now = coarse_ms() + 1;
        let stalled: Vec<Arc<Slot>> = match self.inner.lock() {
            Ok(mut w) => {
                w.bodies.retain(|b| b.strong_count() > 0);
                w.bodies
                    .iter()
                    .filter_map(Weak::upgrade)
                    .filter(|s| {
                        let since = s.waiting_since.load(Ordering::Acquire);
                        since != 0 && now.saturating_sub(since) >= limit
                    })
                    .collect()
            }
            Err(_) => return 0,
        };
        // Dropped outside the list's lock: dropping a body closes its upstream connection.
        let mut cut = 0;
        for slot in stalled {
            let released = match slot.body.lock() {
                Ok(mut state) => state.take(),
                Err(_) => None,
            };
            slot.waiting_since.store(0, Ordering::Release);
            if released.is_some() {
                cut += 1;
            }
        }
        cut
    }
}

/// `data` itself when it is longer than [`COPY_MAX`] (copying it would cost more than the
/// buffer it pins) or already the only view of its memory; otherwise a copy, which lets the
/// buffer it came from be reused at once.
pub fn own_small(data: Bytes) -> Bytes {
    if data.len() > COPY_MAX || data.is_unique() {
        return data;
    }
    Bytes::copy_from_slice(&data)
}

/// A response body of the HTTP/2 server.
pub struct H2ResponseBody(Repr);

enum Repr {
    Local(ProxyBody),
    Watched(Arc<Slot>),
}

impl Body for H2ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let slot = match &mut self.get_mut().0 {
            Repr::Local(body) => return Pin::new(body).poll_frame(cx),
            Repr::Watched(slot) => slot,
        };
        let Ok(mut state) = slot.body.lock() else {
            return Poll::Ready(Some(Err("response body lock poisoned".into())));
        };
        let Some(body) = &mut *state else {
            return Poll::Ready(Some(Err(
                "the client took no bytes of this response within send_timeout".into(),
            )));
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        // After data, hyper polls again as soon as the window has room; unless that was the end.
        let since = match &polled {
            Poll::Ready(Some(Ok(_))) if !body.is_end_stream() => coarse_ms() + 1,
            _ => 0,
        };
        slot.waiting_since.store(since, Ordering::Release);
        polled.map(|frame| frame.map(|frame| frame.map(|f| f.map_data(own_small))))
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Repr::Local(body) => body.is_end_stream(),
            Repr::Watched(slot) => match slot.body.lock().as_deref() {
                Ok(Some(body)) => body.is_end_stream(),
                _ => false,
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Repr::Local(body) => body.size_hint(),
            Repr::Watched(slot) => match slot.body.lock().as_deref() {
                Ok(Some(body)) => body.size_hint(),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use bytes::BytesMut;

    use super::*;

    /// A small piece cut from a read buffer is handed on as a copy, and the buffer can be
    /// reclaimed whole at once; a long piece, or one that owns its memory, goes as it is.
    #[test]
    fn small_shared_pieces_are_copied_and_free_their_buffer() {
        for (len, copied) in [(100, true), (COPY_MAX + 1, false)] {
            let mut buf = BytesMut::with_capacity(8192);
            buf.resize(len, b'x');
            let piece = buf.split_to(len).freeze();
            let at = piece.as_ptr();
            let handed = own_small(piece);
            assert_eq!(handed.len(), len);
            assert_eq!(handed.as_ptr() != at, copied, "{len}");
            assert_eq!(buf.try_reclaim(8192), copied, "{len}");
        }
        let owned = Bytes::from(vec![1u8; 10]);
        let at = owned.as_ptr();
        assert_eq!(own_small(owned).as_ptr(), at);
    }
}
