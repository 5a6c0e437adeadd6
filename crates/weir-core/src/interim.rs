//! Interim responses passed on as they come: an upstream's `103 Early Hints` or `102
//! Processing` reaches the client before the final response, as RFC 9110 §15.2 asks of a proxy
//! (before, weir's upstream client skipped them).
//!
//! Only where the client can take one at that moment: an HTTP/2 client (any request), or an
//! HTTP/1.1 client of weir's own server (never HTTP/1.0, which has no 1xx) once its request
//! body, if any, has been read whole, so that the connection is free to write while the request
//! waits (until then the body holds the HTTP/1 connection; its `100 Continue` is weir's own).
//! `100 Continue` and `101` from an upstream are never passed on this way.
//!
//! The request path runs inside the client connection's poll, so the two meet through the
//! thread: the server marks the poll ([`Collecting`]), the upstream client adds what it reads to
//! this thread's pending bytes ([`offer`]), and the server writes them once the poll returns
//! ([`take`]). HTTP/2 streams meet the same way inside hyper (weir's vendored copy,
//! `hyper::ext::send_http2_informational`). Nothing is allocated unless an interim response
//! comes.

use std::cell::{Cell, RefCell};

use http::{HeaderMap, StatusCode};

thread_local! {
    static COLLECTING: Cell<bool> = const { Cell::new(false) };
    static PENDING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The most bytes of interim heads held for a request before they are written; later ones are
/// dropped.
const MAX_PENDING: usize = 16 * 1024;

/// Marks the current poll as one whose interim responses the client can take, until dropped
/// (a panic included).
pub struct Collecting(());

impl Collecting {
    pub fn start() -> Collecting {
        COLLECTING.set(true);
        Collecting(())
    }
}

impl Drop for Collecting {
    fn drop(&mut self) {
        COLLECTING.set(false);
    }
}

/// An upstream's interim response (hop-by-hop fields already gone): kept for the client when the
/// current poll is [`Collecting`], else handed to the HTTP/2 stream whose poll this is, if any;
/// dropped otherwise.
pub fn offer(status: StatusCode, headers: &HeaderMap) {
    if status == StatusCode::CONTINUE || status == StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    if !COLLECTING.get() {
        send_http2(status, headers.clone());
        return;
    }
    PENDING.with_borrow_mut(|out| {
        let start = out.len();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("Interim").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if out.len() > MAX_PENDING {
            out.truncate(start);
        }
    });
}

/// Sends an interim response to the HTTP/2 client whose stream's poll is in progress on this
/// thread (hyper writes it when the poll returns, before the final response); nothing when
/// there is none. weir's own `100 Continue` goes this way too ([`crate::client_body`]).
pub fn send_http2(status: StatusCode, headers: HeaderMap) {
    let mut interim = http::Response::new(());
    *interim.status_mut() = status;
    *interim.headers_mut() = headers;
    hyper::ext::send_http2_informational(interim);
}

/// Whether interim heads wait to be written.
pub fn pending() -> bool {
    PENDING.with_borrow(|p| !p.is_empty())
}

/// The interim heads waiting to be written, in order.
pub fn take() -> Vec<u8> {
    PENDING.with_borrow_mut(std::mem::take)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_kept_only_while_collecting_and_never_100_or_101() {
        let mut hints = HeaderMap::new();
        hints.insert("link", http::HeaderValue::from_static("</a.css>; rel=preload"));
        offer(StatusCode::from_u16(103).unwrap_or(StatusCode::OK), &hints);
        assert!(!pending(), "not collecting");
        {
            let _collecting = Collecting::start();
            offer(StatusCode::CONTINUE, &hints);
            offer(StatusCode::SWITCHING_PROTOCOLS, &hints);
            offer(StatusCode::from_u16(103).unwrap_or(StatusCode::OK), &hints);
        }
        assert_eq!(
            String::from_utf8_lossy(&take()),
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"
        );
        assert!(!pending());
        {
            let _collecting = Collecting::start();
            let mut big = HeaderMap::new();
            big.insert(
                "link",
                http::HeaderValue::from_bytes(&[b'a'; MAX_PENDING]).unwrap_or(http::HeaderValue::from_static("")),
            );
            offer(StatusCode::from_u16(103).unwrap_or(StatusCode::OK), &big);
        }
        assert!(!pending(), "a head past the bound is dropped");
    }
}
