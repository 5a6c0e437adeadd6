//! The HTTP/2 server of a connection (h2c prior knowledge, or ALPN `h2` with TLS): hyper's,
//! with the listener's limits it does not apply itself ([`H2Limits`]), a GOAWAY for idle
//! connections ([`H2Activity`]) and `send_timeout` per response stream ([`crate::h2_send`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::client_body::{ClientBody, H2Body, RetainedBodies};
use crate::front::head::Reject;
use crate::h2_send::{H2ResponseBody, SendWatch};
use crate::listener::Conn;
use crate::proxy::{self, ConnInfo};
use crate::state::Shared;
use crate::tunnel::{ExtendedConnect, answer_h2_websocket, as_websocket_handshake, extended_connect};

impl Conn {
    pub(crate) async fn serve_h2<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        io: S,
        limits: &weir_config::Limits,
    ) {
        let activity = Arc::new(H2Activity::default());
        let service = self.service(limits, activity.clone());
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // WebSockets over HTTP/2 (RFC 8441), as browsers open them when offered.
            .enable_connect_protocol()
            .max_concurrent_streams(100)
            .max_header_list_size(limits.max_header_bytes.min(u32::MAX as usize) as u32)
            .max_pending_accept_reset_streams(Some(20))
            .keep_alive_interval(Some(limits.idle_timeout))
            .keep_alive_timeout(limits.header_timeout);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        // When the listener stops: GOAWAY, which tells the client which streams were taken
        // (no race, no grace needed), then wait for those to finish.
        // Idle (no request being handled) for `idle_timeout`, or no first request within
        // `header_timeout`: GOAWAY too, as an idle HTTP/1 connection is closed. hyper's pings
        // alone kept a client that answers them connected for good.
        let idle = tokio::time::sleep(limits.header_timeout);
        tokio::pin!(idle);
        // `send_timeout` per stream (h2_send.rs): bodies that waited for the client that long
        // are let go, found within half a `send_timeout` more.
        let check_every = (limits.send_timeout / 2).max(Duration::from_millis(100));
        let send_check = tokio::time::sleep(check_every);
        tokio::pin!(send_check);
        let result = loop {
            tokio::select! {
                r = conn.as_mut() => break r,
                _ = send_check.as_mut() => {
                    let cut = activity.sends.cut_stalled(limits.send_timeout);
                    if cut > 0 {
                        tracing::debug!(peer = %self.info.peer, streams = cut, "HTTP/2 responses the client took no bytes of within send_timeout: reset");
                    }
                    send_check.as_mut().reset(tokio::time::Instant::now() + check_every);
                }
                _ = self.stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    break conn.await;
                }
                _ = idle.as_mut() => match activity.idle_until(limits.idle_timeout) {
                    Some(later) => idle.as_mut().reset(later),
                    None => {
                        tracing::debug!(peer = %self.info.peer, "HTTP/2 connection idle: GOAWAY");
                        conn.as_mut().graceful_shutdown();
                        break conn.await;
                    }
                },
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %self.info.peer, error = %e, "HTTP/2 connection ended with an error");
        }
    }

    /// The request handler of an HTTP/2 connection.
    fn service(
        &self,
        limits: &weir_config::Limits,
        activity: Arc<H2Activity>,
    ) -> impl hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<H2ResponseBody>,
        Error = std::convert::Infallible,
        Future = impl std::future::Future<Output = Result<http::Response<H2ResponseBody>, std::convert::Infallible>>
                 + Send
                 + 'static,
    > + Clone
    + Send
    + 'static {
        let info = Arc::new(self.info.clone());
        let shared = self.shared.clone();
        let limits = H2Limits::of(limits);
        service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (shared, info) = (shared.clone(), info.clone());
            let busy = H2Busy::start(&activity);
            // Boxed: hyper spawns a task per stream holding this future, and the task is moved
            // (memmove) on spawn; a multi-kilobyte proxy future cost more to move than a box.
            crate::pin_box::pin_box(|| async move {
                let busy = busy;
                let sends = &busy.0.sends;
                let mut req = req;
                if let Some(reject) = limits.refusal(&req) {
                    return Ok(refuse_h2(&shared, &info, reject).map(|b| sends.watch(b)));
                }
                let websocket = match extended_connect(&req) {
                    ExtendedConnect::No if req.method() == http::Method::CONNECT => {
                        return Ok(
                            refuse_h2(&shared, &info, crate::front::head::CONNECT_REFUSED).map(|b| sends.watch(b))
                        );
                    }
                    ExtendedConnect::No => None,
                    ExtendedConnect::WebSocket => {
                        let client = hyper::upgrade::on(&mut req);
                        let key = as_websocket_handshake(&mut req);
                        Some((client, key))
                    }
                    ExtendedConnect::Other => {
                        let refused = crate::error::local_response(
                            http::StatusCode::NOT_IMPLEMENTED,
                            "weir carries only WebSocket over extended CONNECT",
                            false,
                        );
                        return Ok(refused.map(|b| sends.watch(b)));
                    }
                };
                let retained = busy.0.retained.clone();
                let expect_continue = req
                    .headers()
                    .get(http::header::EXPECT)
                    .is_some_and(|v| crate::headers::expects_continue(v.as_bytes()));
                let req = req.map(|b| {
                    let body = H2Body::new(b, limits.max_body, limits.body_timeout, retained, expect_continue);
                    ClientBody::H2(body)
                });
                let resp = proxy::serve(&shared, &info, req).await;
                let resp = match websocket {
                    // An open tunnel keeps the connection from counting as idle.
                    Some((client, key)) => answer_h2_websocket(resp, &key, client, H2Busy::start(&busy.0)),
                    None => resp,
                };
                Ok(resp.map(|b| sends.watch(b)))
            })
        })
    }
}

/// Whether an HTTP/2 connection is idle: requests being handled, and when the last one ended.
/// A response body still streaming after its handler returned does not count: a GOAWAY lets
/// it finish.
#[derive(Default)]
struct H2Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds from `since` to the end of the last request's handling (0: none yet).
    last_ms: std::sync::atomic::AtomicU64,
    since: std::sync::OnceLock<tokio::time::Instant>,
    /// The response bodies streaming from upstreams, for `send_timeout`.
    sends: SendWatch,
    /// The request bodies held for a retry.
    retained: Arc<RetainedBodies>,
}

impl H2Activity {
    fn since(&self) -> tokio::time::Instant {
        *self.since.get_or_init(tokio::time::Instant::now)
    }

    /// `None` when the connection has been idle for `idle_timeout`; else when to look again.
    fn idle_until(&self, idle_timeout: Duration) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Some(now + idle_timeout);
        }
        let last = self.since() + Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        let until = last + idle_timeout;
        (until > now && self.last_ms.load(Ordering::Acquire) > 0).then_some(until)
    }
}

/// One request being handled on an HTTP/2 connection (see [`H2Activity`]).
struct H2Busy(Arc<H2Activity>);

impl H2Busy {
    fn start(activity: &Arc<H2Activity>) -> Self {
        activity.since();
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        H2Busy(activity.clone())
    }
}

impl Drop for H2Busy {
    fn drop(&mut self) {
        let ms = self.0.since().elapsed().as_millis().max(1);
        self.0
            .last_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The listener's limits that hyper's HTTP/2 server does not apply itself (it applies
/// `max_header_bytes` as the header list size), as the HTTP/1 server applies them.
#[derive(Clone, Copy)]
struct H2Limits {
    max_uri: usize,
    max_headers: usize,
    /// 0 = unlimited.
    max_body: u64,
    body_timeout: Duration,
}

impl H2Limits {
    fn of(limits: &weir_config::Limits) -> Self {
        H2Limits {
            max_uri: limits.max_uri_bytes,
            max_headers: limits.max_headers,
            max_body: limits.max_body_bytes,
            body_timeout: limits.body_timeout,
        }
    }

    /// What the request is refused with before it is routed, if anything: a `:path` over
    /// `max_uri_bytes` (414), more than `max_headers` fields (431), a `content-length` over
    /// `max_body_bytes` (413; a body without one is cut off at the limit, [`H2Body`]).
    fn refusal<B>(&self, req: &http::Request<B>) -> Option<Reject> {
        let path = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if path > self.max_uri {
            return Some(Reject {
                status: 414,
                reason: "URI too long",
            });
        }
        if req.headers().len() > self.max_headers {
            return Some(Reject {
                status: 431,
                reason: "too many header fields",
            });
        }
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if self.max_body > 0 && declared.is_some_and(|n| n > self.max_body) {
            return Some(Reject {
                status: 413,
                reason: "request body too large",
            });
        }
        None
    }
}

/// weir's own answer to an HTTP/2 request refused before routing: counted and logged as the
/// HTTP/1 server's refusals are.
fn refuse_h2(shared: &Shared, info: &ConnInfo, reject: Reject) -> http::Response<crate::body::ProxyBody> {
    let message = reject.message();
    reject.record(shared, info, message.len() as u64 + 1);
    let status = http::StatusCode::from_u16(reject.status).unwrap_or(http::StatusCode::BAD_REQUEST);
    crate::error::local_response(status, &message, false)
}
