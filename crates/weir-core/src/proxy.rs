//! The request path: pin the generation, route, select, forward, and hand the upstream's
//! response back while it streams. Retries happen only where the request is provably unsent or
//! replayable (the failover policy decides within those bounds).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::body::{Lease, ProxyBody, UpBody};
use crate::error::{ProxyError, local_response};
use crate::front::{ActivityToken, ConnActivity};
use crate::generation::{Generation, PoolRt};
use crate::headers::{Forwarding, add_forwarding, add_via, strip_hop_by_hop};
use crate::policy::{
    AttemptInfo, FailureDecision, FailureKind, RouteDecision, RouteRequest, SelectCtx,
};
use crate::state::Shared;
use crate::upstream::{ConnectError, InFlight};

/// What the request path knows of the client connection.
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    /// HTTP/1 connections share activity with their guard (idle timer, ordered refusals).
    pub activity: Option<Arc<ConnActivity>>,
}

pub async fn serve(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let activity = match &conn.activity {
        Some(a) => ActivityToken::adopt(a.clone()),
        None => ActivityToken::none(),
    };
    let generation = shared.generation.load_full();
    Ok(forward(&shared, &generation, &conn, req, activity).await)
}

fn host_of(req: &Request<Incoming>) -> Option<&str> {
    req.uri().authority().map(|a| a.host()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(strip_port)
    })
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Idempotent per RFC 9110 §9.2.2, or made so by the client with `Idempotency-Key`.
fn idempotent(req: &Request<Incoming>) -> bool {
    use http::Method;
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || req.headers().contains_key("idempotency-key")
}

async fn forward(
    shared: &Shared,
    generation: &Generation,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    activity: ActivityToken,
) -> Response<ProxyBody> {
    let Some(listener) = generation.listener(&conn.listener) else {
        return ProxyError::ListenerGone.response(activity);
    };
    let request_id = shared.next_request_id();
    let pool_index = match &listener.router {
        None => listener.pool,
        Some(router) => {
            let decision = router.route(&RouteRequest {
                method: req.method(),
                host: host_of(&req).unwrap_or(""),
                path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
                client_ip: conn.peer.ip(),
                headers: req.headers(),
            });
            match decision {
                RouteDecision::Default => listener.pool,
                RouteDecision::Pool(i) if i < generation.pools.len() => i,
                RouteDecision::Pool(_) => listener.pool,
                RouteDecision::Respond { status, body } => {
                    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                    return local_response(status, &body, false, activity);
                }
            }
        }
    };
    let Some(pool) = generation.pools.get(pool_index) else {
        return ProxyError::NoEndpoint.response(activity);
    };

    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let replayable_method = idempotent(&req);
    let http2 = req.version() == Version::HTTP_2;
    let (mut parts, body) = req.into_parts();

    // Upstream request head: origin-form target, HTTP/1.1, hop-by-hop removed, forwarding added.
    let upgrade_value = if upgrade {
        parts.headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    let request_host = match parts.headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    strip_hop_by_hop(&mut parts.headers);
    if !parts.headers.contains_key(header::HOST)
        && let Some(h) = &request_host
    {
        parts.headers.insert(header::HOST, h.clone());
    }
    let host = listener.forwarded_host.as_ref().or(request_host.as_ref());
    add_forwarding(
        &mut parts.headers,
        &Forwarding {
            client_ip: conn.peer.ip(),
            proto: &listener.forwarded_proto,
            host,
            http2,
        },
    );
    if let Some(u) = upgrade_value {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, u);
    }
    if let Some(pq) = parts.uri.path_and_query()
        && (parts.uri.scheme().is_some() || parts.uri.authority().is_some())
    {
        parts.uri = Uri::from(pq.clone());
    }
    parts.version = Version::HTTP_11;
    let has_body = !body.is_end_stream();
    let up_body = if has_body {
        UpBody::Streamed(body)
    } else {
        UpBody::Empty
    };
    let replayable = replayable_method && !has_body;
    let mut pending = Some(Request::from_parts(parts, up_body));

    let started = Instant::now();
    let max_attempts = pool.config.retry.max_attempts.max(1);
    let mut tried: Vec<u32> = Vec::new();
    let mut attempt = 1u32;
    loop {
        let Some(index) = select(pool, request_id, attempt, &tried) else {
            return ProxyError::NoEndpoint.response(activity);
        };
        let endpoint = pool.endpoints[index].clone();
        let in_flight = InFlight::new(endpoint.clone());
        let t = &pool.config.timeouts;
        let (failure, unsent) = match endpoint.checkout(t.connect, t.idle).await {
            Err(ConnectError::Timeout) => (FailureKind::ConnectTimeout, true),
            Err(e) => {
                tracing::debug!(endpoint = %endpoint.label, error = %e, "upstream connect failed");
                (FailureKind::ConnectRefused, true)
            }
            Ok((mut sender, reused)) => {
                let Some(up_req) = pending.take() else {
                    return ProxyError::UpstreamReset.response(activity);
                };
                match tokio::time::timeout(t.request, sender.try_send_request(up_req)).await {
                    Ok(Ok(resp)) => {
                        return respond(
                            resp,
                            Lease { sender, in_flight },
                            client_upgrade,
                            activity,
                            http2,
                        );
                    }
                    Ok(Err(mut e)) => {
                        let returned = e.take_message();
                        let unsent = returned.is_some() && reused;
                        pending = returned;
                        tracing::debug!(endpoint = %endpoint.label, error = %e.error(), "upstream request failed");
                        if let Some(status) = body_error_status(e.error()) {
                            return ProxyError::ClientBody { status }.response(activity);
                        }
                        (FailureKind::ResetBeforeResponse, unsent)
                    }
                    Err(_) => (FailureKind::ResponseTimeout, false),
                }
            }
        };
        let info = AttemptInfo {
            request_id,
            attempt,
            endpoint_index: index as u32,
            failure,
            elapsed: started.elapsed(),
            replayable,
            unsent,
        };
        let retry = match pool.failover.on_failure(&info) {
            FailureDecision::Retry { backoff } => Some(backoff),
            FailureDecision::Fail => None,
        };
        match retry {
            Some(backoff)
                if attempt < max_attempts && pending.is_some() && (unsent || replayable) =>
            {
                tried.push(index as u32);
                attempt += 1;
                if backoff > Duration::ZERO {
                    tokio::time::sleep(backoff).await;
                }
            }
            _ => {
                let err = match failure {
                    FailureKind::ConnectTimeout | FailureKind::ResponseTimeout => {
                        if failure == FailureKind::ConnectTimeout {
                            ProxyError::ConnectTimeout
                        } else {
                            ProxyError::ResponseTimeout
                        }
                    }
                    FailureKind::ConnectRefused => ProxyError::ConnectFailed,
                    FailureKind::ResetBeforeResponse | FailureKind::HttpStatus(_) => {
                        ProxyError::UpstreamReset
                    }
                };
                return err.response(activity);
            }
        }
    }
}

/// The pool's balancer, checked; the native round-robin when it answers nothing usable.
fn select(pool: &PoolRt, request_id: u64, attempt: u32, tried: &[u32]) -> Option<usize> {
    let ctx = SelectCtx {
        request_id,
        affinity_hash: 0,
        attempt,
        tried,
    };
    match pool.balancer.select(&pool.endpoints, &ctx) {
        Some(i) if pool.endpoints.get(i).is_some_and(|e| e.is_eligible()) => Some(i),
        _ => crate::policy::BalancePolicy::select(&pool.native, &pool.endpoints, &ctx),
    }
}

/// A request failed because the client's body did (malformed, too large, too slow).
fn body_error_status(err: &hyper::Error) -> Option<u16> {
    use std::error::Error as _;
    let mut source = err.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::TimedOut => Some(408),
                std::io::ErrorKind::InvalidData if io.to_string().contains("too large") => {
                    Some(413)
                }
                std::io::ErrorKind::InvalidData => Some(400),
                _ => None,
            };
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && (h.is_parse() || h.is_incomplete_message())
        {
            return Some(400);
        }
        source = s.source();
    }
    None
}

fn respond(
    mut resp: Response<Incoming>,
    lease: Lease,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    activity: ActivityToken,
    http2: bool,
) -> Response<ProxyBody> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client) = client_upgrade {
            let upstream = hyper::upgrade::on(&mut resp);
            let in_flight = lease.in_flight;
            tokio::spawn(async move {
                let _in_flight = in_flight;
                match tokio::try_join!(client, upstream) {
                    Ok((client, upstream)) => {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(client),
                            &mut TokioIo::new(upstream),
                        )
                        .await;
                    }
                    Err(e) => tracing::debug!(error = %e, "protocol upgrade failed"),
                }
            });
            let (mut parts, _) = resp.into_parts();
            add_via(&mut parts.headers, false);
            return Response::from_parts(parts, ProxyBody::full(bytes::Bytes::new(), activity));
        }
        return ProxyError::UpstreamReset.response(activity);
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_via(&mut parts.headers, http2);
    Response::from_parts(parts, ProxyBody::upstream(body, lease, activity))
}
