//! Errors of the proxy path and the one table from error kind to the HTTP answer the client gets.
//! Bodies are short plain text naming the cause, never upstream internals.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::ProxyBody;

/// Which side a failure came from: decides status, retryability and how it is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// No endpoint of the pool is eligible (all down, drained or tried).
    NoEndpoint,
    ConnectFailed,
    ConnectTimeout,
    /// The connection broke before a response head arrived.
    UpstreamReset,
    /// The upstream's response head was malformed or too large.
    UpstreamInvalid,
    /// The request has passed through weir too often: a pool reaches back into a listener.
    LoopDetected,
    ResponseTimeout,
    /// The client's body was malformed, too large or too slow.
    ClientBody {
        status: u16,
    },
    /// The listener was removed by a reload while the request was arriving.
    ListenerGone,
    /// A router answered locally.
    Local {
        status: u16,
    },
    Draining,
    /// An `Upgrade` request other than WebSocket routed to a `protocol = "h2"` pool: HTTP/2
    /// has no `Upgrade`, and only WebSocket has an HTTP/2 form (RFC 8441).
    UpgradeOverH2,
    /// A WebSocket to an HTTP/2 upstream whose SETTINGS do not allow extended CONNECT.
    WebSocketNotOffered,
    /// weir had no ephemeral port or file descriptor left to connect with: an overload of
    /// this host, not of the upstream (503, with `Retry-After`).
    NoLocalResources,
}

impl ProxyError {
    pub fn status(self) -> StatusCode {
        let code = match self {
            ProxyError::NoEndpoint | ProxyError::ListenerGone | ProxyError::Draining | ProxyError::NoLocalResources => {
                503
            }
            ProxyError::ConnectFailed | ProxyError::UpstreamReset | ProxyError::UpstreamInvalid => 502,
            ProxyError::UpgradeOverH2 | ProxyError::WebSocketNotOffered => 501,
            ProxyError::LoopDetected => 508,
            ProxyError::ConnectTimeout | ProxyError::ResponseTimeout => 504,
            ProxyError::ClientBody { status } | ProxyError::Local { status } => status,
        };
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY)
    }

    pub fn message(self) -> &'static str {
        match self {
            ProxyError::NoEndpoint => "no upstream endpoint available",
            ProxyError::ConnectFailed => "upstream connect failed",
            ProxyError::ConnectTimeout => "upstream connect timed out",
            ProxyError::UpstreamReset => "upstream closed the connection before responding",
            ProxyError::UpstreamInvalid => "upstream sent an invalid response",
            ProxyError::LoopDetected => "forwarding loop: the request has passed through weir too many times",
            ProxyError::ResponseTimeout => "upstream response timed out",
            ProxyError::ClientBody { status: 413 } => "request body too large",
            ProxyError::ClientBody { status: 408 } => "request body timeout",
            ProxyError::ClientBody { .. } => "malformed request body",
            ProxyError::ListenerGone => "listener is being removed",
            ProxyError::Local { .. } => "",
            ProxyError::Draining => "gateway is shutting down",
            ProxyError::NoLocalResources => "gateway has no free port or file descriptor to reach the upstream",
            ProxyError::UpgradeOverH2 => "only WebSocket upgrades can go to an HTTP/2 upstream pool",
            ProxyError::WebSocketNotOffered => {
                "the HTTP/2 upstream does not accept WebSockets (RFC 8441: SETTINGS_ENABLE_CONNECT_PROTOCOL)"
            }
        }
    }

    pub fn response(self) -> Response<ProxyBody> {
        let retry_after = matches!(self, ProxyError::NoEndpoint | ProxyError::NoLocalResources);
        local_response(self.status(), self.message(), retry_after)
    }
}

/// A short plain-text answer from the gateway itself.
pub fn local_response(status: StatusCode, message: &str, retry_after: bool) -> Response<ProxyBody> {
    let body = if message.is_empty() {
        Bytes::new()
    } else {
        Bytes::from(format!("{message}\n"))
    };
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::VIA, HeaderValue::from_static("1.1 weir"));
    if retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// The first error of type `T` in `err`'s chain of sources (not `err` itself): what a hyper
/// error wraps (an h2 error, an I/O error, a body's own error).
pub fn source_of<'a, T: std::error::Error + 'static>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut source = err.source();
    while let Some(s) = source {
        if let Some(found) = s.downcast_ref::<T>() {
            return Some(found);
        }
        source = s.source();
    }
    None
}
