//! Interim (`1xx`) responses from the service of an HTTP/2 server connection.
//!
//! Added in weir's vendored copy of hyper 1.12.0 (see `vendor/README.md` there): hyper's
//! HTTP/2 server sent no interim responses, so a proxy could not pass an upstream's
//! `103 Early Hints` on to an HTTP/2 client, nor answer its `Expect: 100-continue`.
//!
//! The service future and the stream that will send its response meet through the thread:
//! while the server polls a stream's service future it marks the thread ([`Polling`]); what the
//! future hands to [`send_http2_informational`] during that poll is queued on the thread and
//! written as HEADERS frames (without END_STREAM) as soon as the poll returns, before the final
//! response. Nothing is allocated unless an interim response is sent.

use std::cell::{Cell, RefCell};

thread_local! {
    static POLLING: Cell<bool> = const { Cell::new(false) };
    static QUEUED: RefCell<Vec<http::Response<()>>> = const { RefCell::new(Vec::new()) };
}

/// Sends `response`, an interim response, ahead of the final response of the HTTP/2 request
/// whose service future is being polled on this thread at this moment.
///
/// Returns `false`, dropping `response`, when there is no such poll (called from another task
/// or thread, or on an HTTP/1 connection) or when `response` is not a `1xx` that HTTP/2 can
/// carry (`101 Switching Protocols` is not, RFC 9113 §8.6). `true` means queued: it is written
/// when the poll returns, unless the stream is gone by then.
pub fn send_http2_informational(response: http::Response<()>) -> bool {
    let status = response.status();
    if !status.is_informational() || status == http::StatusCode::SWITCHING_PROTOCOLS || !POLLING.get() {
        return false;
    }
    QUEUED.with_borrow_mut(|q| q.push(response));
    true
}

/// Marks the thread as polling a service future until dropped (a panic included).
pub(crate) struct Polling(bool);

impl Polling {
    pub(crate) fn start() -> Polling {
        // Left over only if a poll panicked: it was not this stream's.
        QUEUED.with_borrow_mut(Vec::clear);
        Polling(POLLING.replace(true))
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.set(self.0);
    }
}

/// Hands each interim response queued during the poll that just ended to `send`, in order.
pub(crate) fn drain(mut send: impl FnMut(http::Response<()>)) {
    if QUEUED.with_borrow(Vec::is_empty) {
        return;
    }
    let queued = QUEUED.with_borrow_mut(std::mem::take);
    for response in queued {
        send(response);
    }
}
