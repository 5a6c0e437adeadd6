//! The request path: pin the generation, route, select, forward, and hand the upstream's
//! response back while it streams. Retries happen only where the request is provably unsent or
//! replayable; the failover policy decides within those bounds.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;
use weir_config::UpstreamProtocol;

use crate::body::ProxyBody;
use crate::client_body::ClientBody;
use crate::error::ProxyError;
use crate::front::{Tunnel, TunnelSlot};
use crate::generation::{Generation, ListenerRt, PoolRt};
use crate::h1client::{ExchangeError, RequestHead, RequestTrailers, ResponseBody, ResponseHead, UpBody, UpConn};
use crate::h2client::{H2Answer, H2ReqBody, H2RespBody, H2Stream, TunnelAnswer};
use crate::hash::{fnv1a, mix};
use crate::headers::{Forwarding, Via, add_forwarding, add_via, is_forwarding_field, strip_hop_by_hop};
use crate::metrics::AttemptOutcome;
use crate::policy::{
    AffinityKey, AttemptInfo, FailureDecision, FailureKind, NO_ENDPOINT, RouteDecision, RouteRequest, RouteTarget,
    Select, SelectCtx,
};
use crate::state::Shared;
use crate::tunnel::TunnelIo;
use crate::upstream::{ConnectError, Endpoint, InFlight, Taken};

/// What the request path knows of the client connection.
#[derive(Clone)]
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    /// Where the client connected: the listener's address (the socket's own when bound to a
    /// wildcard), or the destination a PROXY header named. Written into `send_proxy` headers.
    pub local: SocketAddr,
    pub https: bool,
}

/// One request through the gateway: route, balance, forward, retry, log. An async block
/// rather than an `async fn`, whose arguments (the request) would be stored twice.
#[allow(clippy::manual_async_fn)]
pub fn serve<'a>(
    shared: &'a Shared,
    conn: &'a ConnInfo,
    req: Request<ClientBody>,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
    async move {
        let generation = shared.generation.load_full();
        let started = Instant::now();
        let log = &generation.config.runtime.access_log;
        let logged =
            (!matches!(log, weir_config::AccessLog::Off)).then(|| (req.method().clone(), req.uri().path().to_string()));
        let mut trace = Trace::default();
        let mut req = req;
        let resp = forward(shared, &generation, conn, &mut req, started, &mut trace).await;
        crate::bufpool::give_headers(std::mem::take(req.headers_mut()));
        let took = trace.answered_at.unwrap_or_else(Instant::now) - started;
        if let Some(m) = &trace.route {
            m.record(resp.status().as_u16(), took);
        }
        if let Some((method, path)) = logged {
            crate::access_log::write(
                log,
                &crate::access_log::Entry {
                    ts_ms: crate::access_log::now_ms(),
                    listener: &conn.listener,
                    client: conn.peer,
                    pool: trace
                        .pool
                        .and_then(|i| generation.pools.get(i))
                        .map_or("-", |p| p.name.as_str()),
                    endpoint: trace.endpoint.as_ref().map_or("-", |e| e.label.as_str()),
                    method: method.as_str(),
                    path: &path,
                    status: resp.status().as_u16(),
                    duration_ms: crate::access_log::millis(took),
                    attempts: trace.attempts,
                    generation: generation.id,
                    bytes_out: resp.body().size_hint().exact(),
                },
            );
        }
        resp
    }
}

/// What the request path learned about a request, for metrics and the access log.
#[derive(Default)]
struct Trace {
    route: Option<Arc<crate::metrics::RouteMetrics>>,
    pool: Option<usize>,
    endpoint: Option<Arc<crate::upstream::Endpoint>>,
    attempts: u32,
    /// When the response head the client gets arrived: the request's duration ends there, and
    /// one clock read serves both the endpoint's latency and the request's.
    answered_at: Option<Instant>,
}

fn host_of(req: &Request<ClientBody>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.host())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(strip_port)
        })
        .unwrap_or("")
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// An HTTP/1.1 client's upgrade, or an HTTP/2 client's WebSocket rewritten as one
/// ([`crate::tunnel::as_websocket_handshake`]; HTTP/2 itself has no `Connection` field).
fn is_upgrade(req: &Request<ClientBody>) -> bool {
    matches!(req.version(), Version::HTTP_11 | Version::HTTP_2)
        && req
            .headers()
            .get_all(header::UPGRADE)
            .iter()
            .any(|v| crate::headers::offers_upgrade(v.as_bytes()))
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Idempotent per RFC 9110 §9.2.2, or made so by the client with `Idempotency-Key`.
fn idempotent(req: &Request<ClientBody>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    ) || req.headers().contains_key("idempotency-key")
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The affinity hash the pool's balancer asked for, and a `Set-Cookie` when a sticky cookie
/// had to be issued: `Secure` when the clients' scheme is https (the listener's TLS, or its
/// `advertise`d scheme when TLS ends in front of weir), so the browser never sends it in clear.
fn affinity(
    pool: &PoolRt,
    req: &Request<ClientBody>,
    peer: IpAddr,
    request_id: u64,
    https: bool,
) -> (u64, Option<HeaderValue>) {
    if let Some(name) = pool.balancer.sticky_cookie() {
        if let Some(v) = cookie_value(req.headers(), name) {
            return (fnv1a(v.as_bytes()), None);
        }
        let value = format!("{:016x}", mix(request_id ^ process_seed()));
        let secure = if https { "; Secure" } else { "" };
        let set = HeaderValue::from_str(&format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax{secure}")).ok();
        return (fnv1a(value.as_bytes()), set);
    }
    let hash = pool
        .balancer
        .affinity()
        .map_or(0, |key| affinity_hash(key, peer, req.uri().path(), req.headers()));
    (hash, None)
}

/// Hashes the request's value of `key` (0 when the request has none).
pub fn affinity_hash(key: &AffinityKey, peer: IpAddr, path: &str, headers: &HeaderMap) -> u64 {
    match key {
        AffinityKey::ClientIp => match peer.to_canonical() {
            IpAddr::V4(v4) => fnv1a(&v4.octets()),
            IpAddr::V6(v6) => fnv1a(&v6.octets()),
        },
        AffinityKey::Path => fnv1a(path.as_bytes()),
        AffinityKey::Header(name) => headers.get(name).map_or(0, |v| fnv1a(v.as_bytes())),
        AffinityKey::Cookie(name) => cookie_value(headers, name).map_or(0, |v| fnv1a(v.as_bytes())),
    }
}

/// Random per process, so sticky cookie values are not guessable from request ids.
fn process_seed() -> u64 {
    use std::hash::BuildHasher;
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(std::process::id()))
}

fn route(
    listener: &ListenerRt,
    generation: &Generation,
    conn: &ConnInfo,
    req: &Request<ClientBody>,
    request_id: u64,
) -> Result<RouteTarget, Box<Response<ProxyBody>>> {
    let default = RouteTarget {
        pool: listener.pool,
        ..RouteTarget::default()
    };
    let Some(router) = &listener.router else {
        return Ok(default);
    };
    let decision = router.route(&RouteRequest {
        request_id,
        method: req.method(),
        https: conn.https,
        host: host_of(req),
        path_and_query: req.uri().path_and_query().map_or("/", |p| p.as_str()),
        client_ip: conn.peer.ip(),
        headers: req.headers(),
    });
    match decision {
        RouteDecision::Default => Ok(default),
        RouteDecision::Upstream(t) if t.pool < generation.pools.len() => Ok(t),
        RouteDecision::Upstream(_) => Ok(default),
        RouteDecision::Respond { status, headers, body } => Err(Box::new(plugin_response(
            status,
            headers,
            body,
            Via::of(listener.config.forwarding_headers, http::Version::HTTP_11),
        ))),
    }
}

/// A response a plugin made (a router's or a failover policy's `respond`): its status when
/// that is a final one (200-599; the plugin host counts any other as an invalid answer, and
/// 502 stands in here), its fields less the hop-by-hop and framing ones (the front frames the
/// body itself, and HTTP/2 refuses connection fields), and the body.
fn plugin_response(
    status: u16,
    headers: Vec<(http::HeaderName, HeaderValue)>,
    body: bytes::Bytes,
    via: Via,
) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(|s| crate::policy::is_final_status(s.as_u16()))
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    for (k, v) in headers {
        if !crate::headers::HOP_BY_HOP.contains(&k) && k != header::CONTENT_LENGTH {
            resp.headers_mut().append(k, v);
        }
    }
    add_via(resp.headers_mut(), via);
    resp
}

/// An async block rather than an `async fn`, whose arguments would be stored twice in the
/// state of every request in flight (as arguments and as locals). The request is borrowed: the
/// caller gives its header map back to the pool when the exchange is over.
#[allow(clippy::manual_async_fn)]
fn forward<'a>(
    shared: &'a Shared,
    generation: &'a Generation,
    conn: &'a ConnInfo,
    req: &'a mut Request<ClientBody>,
    started: Instant,
    trace: &'a mut Trace,
) -> impl Future<Output = Response<ProxyBody>> + Send + 'a {
    async move {
        let Some(listener) = generation.listener(&conn.listener) else {
            return ProxyError::ListenerGone.response();
        };
        if crate::headers::weir_hops(req.headers()) >= MAX_WEIR_HOPS {
            warn_loop(&conn.listener);
            return ProxyError::LoopDetected.response();
        }
        let request_id = shared.next_request_id();
        let target = match route(listener, generation, conn, req, request_id) {
            Ok(t) => t,
            Err(local) => return *local,
        };
        let Some(first_pool) = generation.pools.get(target.pool) else {
            return ProxyError::NoEndpoint.response();
        };
        trace.route = listener.routes.get(target.pool).cloned();
        let https = conn.https || listener.forwarded_proto.as_bytes() == b"https";
        let (affinity_hash, set_cookie) = affinity(first_pool, req, conn.peer.ip(), request_id, https);

        let upgrade = is_upgrade(req);
        let replayable_method = idempotent(req);
        // The request is used in place (moving it into parts would keep a second copy in this
        // future's state): its body is taken out, its head becomes the upstream's.
        let body = std::mem::replace(req.body_mut(), ClientBody::Empty);

        // Upstream request head: origin-form target, HTTP/1.1, hop-by-hop removed, forwarding added.
        let upgrade_value = if upgrade {
            req.headers().get(header::UPGRADE).map(crate::headers::without_h2c)
        } else {
            None
        };
        // The target's authority, where the request has one, names the host, as it did for
        // routing (`host_of`): an HTTP/1.1 absolute-form target, whose Host a proxy must replace
        // with it (RFC 9112 §3.2.2), or HTTP/2's `:authority`, preferred to a Host field (RFC
        // 9113 §8.3.1). Else the Host field. The upstream then hears of the host the request
        // was routed by.
        let (request_host, from_target) = match req.uri().authority() {
            Some(a) => {
                let a = a.as_str();
                let host = a.rsplit_once('@').map_or(a, |(_, host)| host);
                (HeaderValue::from_str(host).ok(), true)
            }
            None => (req.headers().get(header::HOST).cloned(), false),
        };
        let stripped = crate::headers::strip_request(req.headers_mut(), listener.config.forwarding_headers);
        if let Some(h) = &request_host
            && (from_target || !req.headers().contains_key(header::HOST))
        {
            req.headers_mut().insert(header::HOST, h.clone());
        }
        let host = listener.forwarded_host.as_ref().or(request_host.as_ref());
        let forwarding = Forwarding {
            client_ip: conn.peer.ip(),
            proto: &listener.forwarded_proto,
            host,
            version: req.version(),
            fields: listener.config.forwarding_headers,
        };
        let via = forwarding.via();
        // The forwarding fields are written straight into the upstream head, unless a router set
        // one of them itself: then the map gets them first and the router's value wins.
        let routed_forwarding = target
            .set_headers
            .iter()
            .any(|(k, _)| is_forwarding_field(k) || k == header::VIA);
        if routed_forwarding {
            add_forwarding(req.headers_mut(), &forwarding);
        }
        if let Some(u) = upgrade_value {
            req.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            req.headers_mut().insert(header::UPGRADE, u);
        }
        for (k, v) in &target.set_headers {
            req.headers_mut().insert(k.clone(), v.clone());
        }
        if let Some(path) = &target.rewrite_path
            && let Ok(uri) = Uri::try_from(path.as_str())
        {
            *req.uri_mut() = uri;
        } else if let Some(pq) = req.uri().path_and_query()
            && (req.uri().scheme().is_some() || req.uri().authority().is_some())
        {
            *req.uri_mut() = Uri::from(pq.clone());
        }
        if req.version() == Version::HTTP_2 {
            crate::headers::join_cookies(req.headers_mut());
        }
        *req.version_mut() = Version::HTTP_11;
        let has_body = !body.is_end_stream();
        let max_attempts = first_pool.config.retry.max_attempts.max(1);
        // An idempotent request with a small declared body is buffered, so that it can be replayed;
        // so is any small one to an HTTP/2 pool, so that a stream the upstream refused unread can
        // go again. Anything else streams and is replayable only while it has not left weir.
        let limit = first_pool.config.retry.buffer_bytes;
        let retained = if has_body
            && (replayable_method || first_pool.config.protocol == UpstreamProtocol::H2)
            && !upgrade
            && max_attempts > 1
            && let Some(len) = body.size_hint().exact().filter(|&n| n <= limit)
        {
            let retained = body.retain(len);
            if retained.is_none() {
                tracing::debug!(peer = %conn.peer, len, "request body not held for a retry: its HTTP/2 connection holds enough already");
            }
            retained
        } else {
            None
        };
        let buffer = retained.is_some();
        // A buffered body's trailers (boxed: rare).
        let mut trailers: Option<Box<HeaderMap>> = None;
        let mut up_body = if !has_body {
            drop(body);
            UpBody::Empty
        } else if buffer {
            // Boxed: only requests with a body to buffer need this state.
            match Box::pin(http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).collect())
                .await
            {
                Ok(collected) => {
                    trailers = collected.trailers().cloned().map(Box::new);
                    UpBody::Full(collected.to_bytes())
                }
                Err(e) => {
                    let status = e
                        .downcast_ref::<crate::client_body::ClientBodyError>()
                        .map_or(400, |e| e.status);
                    return ProxyError::ClientBody { status }.response();
                }
            }
        } else {
            UpBody::Streamed(body)
        };
        // Replayable: the same head (kept in `req`) and body can go out again after an attempt
        // that reached an upstream.
        let replayable = replayable_method && !upgrade && !matches!(up_body, UpBody::Streamed(_));
        let can_replay = replayable && max_attempts > 1;

        first_pool.budget.record_request();
        let mut tried: Vec<u32> = Vec::new();
        let mut attempt = 1u32;
        let mut pool_index = target.pool;
        // The previous failure (and whether nothing of the request left weir), answered with
        // when no untried endpoint is left.
        let mut last: Option<(FailureKind, bool, Held)> = None;
        // The pools a request left because they had no endpoint to try (bit per index).
        let mut moved = 0u64;
        loop {
            let Some(pool) = generation.pools.get(pool_index) else {
                return ProxyError::NoEndpoint.response();
            };
            let ctx = SelectCtx {
                request_id,
                affinity_hash,
                attempt,
                tried: &tried,
                cookie: target.cookie,
            };
            // Like nginx's proxy_next_upstream: each endpoint at most once per request.
            let picked = select(pool, &ctx).filter(|i| !tried.contains(&(*i as u32)));
            let queue_first = pool.all_capped && pool.queue.waiting() > 0;
            let counted = match picked {
                Some(i) if !queue_first => InFlight::try_new(pool.endpoints[i].clone()).map(|f| (i, f)),
                _ => None,
            };
            let next = match counted {
                Some(next) => Some(next),
                None if picked.is_none() => None,
                // At its `max_in_flight`, or others wait for a slot: the queue (boxed: only
                // requests that meet a limit need its state).
                None => {
                    let full = picked.filter(|_| !queue_first);
                    Box::pin(next_endpoint(pool, ctx, full, up_body.resendable())).await
                }
            };
            let Some((index, in_flight)) = next else {
                // The pool has nothing left to try (every endpoint down, drained or tried): its
                // failover policy may move the request, which has not gone anywhere since, to
                // another pool (a DR site whose primary is all down). Bounded: a move sends
                // nothing, so it spends no retry budget, and each pool is left this way once.
                let bit = 1u64 << (pool_index % 64);
                let unsent = last.as_ref().is_none_or(|(_, unsent, _)| *unsent);
                if moved & bit == 0 && (unsent && up_body.resendable() || can_replay) {
                    moved |= bit;
                    let info = AttemptInfo {
                        request_id,
                        cookie: target.cookie,
                        pool_index: pool_index as u32,
                        attempt,
                        endpoint_index: NO_ENDPOINT,
                        failure: last.as_ref().map_or(FailureKind::ConnectRefused, |(f, _, _)| *f),
                        elapsed: started.elapsed(),
                        replayable,
                        unsent,
                    };
                    if let FailureDecision::Failover { pool: next } = pool.failover.on_failure(&info)
                        && next < generation.pools.len()
                        && next != pool_index
                    {
                        tracing::debug!(pool = %pool.name, to = %generation.pools[next].name, "no endpoint left in the pool; failing over");
                        pool_index = next;
                        tried.clear();
                        continue;
                    }
                }
                return match last {
                    Some((failure, _, held)) => give_up(failure, held, upgrade, &forwarding, set_cookie),
                    None => ProxyError::NoEndpoint.response(),
                };
            };
            if !up_body.resendable() {
                return ProxyError::UpstreamReset.response();
            }
            let endpoint = pool.endpoints[index].clone();
            trace.pool = Some(pool_index);
            trace.attempts = attempt;
            trace.endpoint = Some(endpoint.clone());
            let t = &pool.config.timeouts;
            let per_try = target.timeout.unwrap_or(t.request);
            let proxy_out = pool.config.send_proxy.map(|version| crate::proxy_protocol::Out {
                version,
                client: conn.peer,
                local: conn.local,
            });
            // For the endpoint's latency EWMA (the time to the response head, connect included).
            let attempt_start = Instant::now();
            trace.answered_at = None;
            // The response head, or why the attempt failed and whether nothing of it was sent.
            let exchanged: Result<Answer, (FailureKind, bool)> = if pool.config.protocol == UpstreamProtocol::H2 {
                // Only a WebSocket has an HTTP/2 form (RFC 8441); other upgrades have none.
                let websocket_key = if upgrade {
                    match websocket_key(req.headers()) {
                        Some(key) => Some(key),
                        None => return ProxyError::UpgradeOverH2.response(),
                    }
                } else {
                    None
                };
                let exchange = H2Try {
                    endpoint: &endpoint,
                    pool,
                    method: req.method(),
                    uri: req.uri(),
                    headers: req.headers(),
                    trailers: trailers.as_deref(),
                    forwarding: (!routed_forwarding).then_some(&forwarding),
                    te_trailers: stripped.te_trailers,
                    per_try,
                    replayable,
                };
                if let Some(key) = websocket_key {
                    match Box::pin(exchange.tunnel()).await {
                        WsAttempt::Open(parts, tunnel) => {
                            answered(&endpoint, pool, 101, attempt_start, false, trace);
                            return switched(parts, &key, tunnel, in_flight, via.h1(), set_cookie);
                        }
                        WsAttempt::Declined(resp, stream) => Ok(Answer::H2(resp, stream)),
                        WsAttempt::NotOffered => return ProxyError::WebSocketNotOffered.response(),
                        WsAttempt::Failed(FailureKind::ResponseTimeout, _) => {
                            endpoint.record_latency(per_try, Instant::now());
                            Err((FailureKind::ResponseTimeout, false))
                        }
                        WsAttempt::Failed(failure, unsent) => Err((failure, unsent)),
                    }
                } else {
                    // Boxed: HTTP/1.1 pools, the common case, carry none of its state.
                    match Box::pin(exchange.run(&mut up_body)).await {
                        H2Attempt::Answer(resp, stream) => Ok(Answer::H2(resp, stream)),
                        H2Attempt::ClientBody(status) => return ProxyError::ClientBody { status }.response(),
                        H2Attempt::Failed(FailureKind::ResponseTimeout, _) => {
                            endpoint.record_latency(per_try, Instant::now());
                            Err((FailureKind::ResponseTimeout, false))
                        }
                        H2Attempt::Failed(failure, unsent) => Err((failure, unsent)),
                    }
                }
            } else {
                // Set when a pooled connection turned out closed by the upstream: the request goes
                // again, once, on a new connection to the same endpoint.
                let mut fresh = false;
                loop {
                    let checkout = if fresh {
                        endpoint
                            .connect_new(t.connect, proxy_out, pool.tls.as_deref())
                            .await
                            .map(|c| (c, Taken::New))
                    } else {
                        endpoint
                            .checkout(t.connect, t.idle, replayable, proxy_out, pool.tls.as_deref())
                            .await
                    };
                    break match checkout {
                        Err(e) => Err((connect_failure(&endpoint, &e), true)),
                        Ok((mut conn, taken)) => {
                            conn.set_body_timeout(t.body);
                            let reused = taken.reused();
                            let head = RequestHead {
                                method: req.method(),
                                uri: req.uri(),
                                headers: req.headers(),
                                forwarding: (!routed_forwarding).then_some(&forwarding),
                                trailers: match trailers.as_deref() {
                                    Some(t) => RequestTrailers::Buffered(t),
                                    None if stripped.trailer_announced => RequestTrailers::Announced,
                                    None => RequestTrailers::Unknown,
                                },
                            };
                            // A connection taken from the pool at once: the attempt's
                            // reading is still now, and its response timer starts from it.
                            let timer_start = if taken == Taken::Idle {
                                attempt_start
                            } else {
                                Instant::now()
                            };
                            match conn.exchange_within(timer_start, per_try, &head, &mut up_body).await {
                                Ok(Ok(head)) => {
                                    if reused {
                                        endpoint.idle_closes.survived(conn.idle_before_ms());
                                    }
                                    Ok(Answer::H1(head, conn))
                                }
                                Ok(Err(ExchangeError::ClientBody(e))) => {
                                    tracing::debug!(endpoint = %endpoint.label, error = %e, "client request body failed");
                                    return ProxyError::ClientBody { status: e.status }.response();
                                }
                                Ok(Err(e)) => {
                                    let unsent = matches!(e, ExchangeError::Unsent(_)) && reused;
                                    let raced = reused && e.is_connection_gone() && conn.received_nothing();
                                    if raced {
                                        endpoint.closed_while_idle(conn.idle_before_ms());
                                    }
                                    // The keep-alive race: the upstream closed this pooled connection as
                                    // it was taken, before any answer. A request that can go again (it
                                    // left nothing, or it is replayable) does, on a new connection, as
                                    // nginx and Go's client do; neither an attempt nor the endpoint's
                                    // failure.
                                    if raced && up_body.resendable() && (unsent || replayable) {
                                        tracing::debug!(endpoint = %endpoint.label, error = %e, "pooled upstream connection was closed; sending on a new one");
                                        endpoint.count_attempt(AttemptOutcome::StaleConnection);
                                        fresh = true;
                                        continue;
                                    }
                                    if let ExchangeError::Head(e) = &e {
                                        warn_invalid_response(&endpoint.label, e);
                                        Err((FailureKind::InvalidResponse, false))
                                    } else {
                                        tracing::debug!(endpoint = %endpoint.label, error = %e, reused, "upstream request failed");
                                        Err((FailureKind::ResetBeforeResponse, unsent))
                                    }
                                }
                                Err(_) => {
                                    endpoint.record_latency(per_try, Instant::now());
                                    Err((FailureKind::ResponseTimeout, false))
                                }
                            }
                        }
                    };
                }
            };
            let (failure, unsent, held) = match exchanged {
                Ok(answer) => {
                    let status = answer.status();
                    if answered(
                        &endpoint,
                        pool,
                        status,
                        attempt_start,
                        attempt < max_attempts && can_replay,
                        trace,
                    ) {
                        return respond(answer, in_flight, upgrade, &forwarding, set_cookie);
                    }
                    (FailureKind::HttpStatus(status), false, Some((answer, in_flight)))
                }
                Err((failure, unsent)) => (failure, unsent, None),
            };
            if failure == FailureKind::LocalResources {
                endpoint.count_attempt(AttemptOutcome::LocalError);
            } else if !matches!(failure, FailureKind::HttpStatus(_)) {
                let outcome = match failure {
                    FailureKind::ConnectRefused => AttemptOutcome::ConnectError,
                    FailureKind::ConnectTimeout => AttemptOutcome::ConnectTimeout,
                    FailureKind::TlsError => AttemptOutcome::TlsError,
                    FailureKind::ResponseTimeout => AttemptOutcome::Timeout,
                    FailureKind::InvalidResponse => AttemptOutcome::InvalidResponse,
                    _ => AttemptOutcome::Reset,
                };
                pool.record_failure(&endpoint, format_args!("{}", outcome.label()));
                endpoint.count_attempt(outcome);
            }
            let info = AttemptInfo {
                request_id,
                cookie: target.cookie,
                pool_index: pool_index as u32,
                attempt,
                endpoint_index: index as u32,
                failure,
                elapsed: started.elapsed(),
                replayable,
                unsent,
            };
            let can_resend = unsent && up_body.resendable() || can_replay;
            let decision = if attempt < max_attempts && can_resend {
                pool.failover.on_failure(&info)
            } else {
                FailureDecision::Fail
            };
            // Retries (and failovers) spend the pool's retry budget; an exhausted budget fails fast.
            let decision = match decision {
                FailureDecision::Retry { .. } | FailureDecision::Failover { .. } if !pool.budget.try_retry() => {
                    tracing::debug!(pool = %pool.name, "retry budget exhausted");
                    FailureDecision::Fail
                }
                d => d,
            };
            if matches!(
                decision,
                FailureDecision::Retry { .. } | FailureDecision::Failover { .. }
            ) {
                crate::metrics::global()
                    .retries(&pool.name)
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            match decision {
                FailureDecision::Retry { backoff } => {
                    tried.push(index as u32);
                    if backoff > Duration::ZERO {
                        Box::pin(tokio::time::sleep(backoff.min(Duration::from_secs(5)))).await;
                    }
                }
                FailureDecision::Failover { pool } if pool < generation.pools.len() => {
                    pool_index = pool;
                    tried.clear();
                }
                FailureDecision::Failover { .. } | FailureDecision::Fail => {
                    return give_up(failure, held, upgrade, &forwarding, set_cookie);
                }
                FailureDecision::Respond { status, headers, body } => {
                    // The upstream's held answer (if any) is let go: its connection closes
                    // unread, its slot in flight is given back.
                    drop(held);
                    let mut resp = plugin_response(status, headers, body, via.h1());
                    if let Some(c) = set_cookie {
                        resp.headers_mut().append(header::SET_COOKIE, c);
                    }
                    return resp;
                }
            }
            last = Some((failure, unsent, held));
            attempt += 1;
        }
    }
}

/// An upstream's response head, with what its body is read from.
enum Answer {
    H1(ResponseHead, UpConn),
    H2(Response<H2RespBody>, H2Stream),
}

impl Answer {
    fn status(&self) -> u16 {
        match self {
            Answer::H1(head, _) => head.status.as_u16(),
            Answer::H2(resp, _) => resp.status().as_u16(),
        }
    }
}

/// Hops through weir (its `Via` entries) a request may have made already before it is taken
/// for a forwarding loop: a pool that reaches back into its own listener, directly, through a
/// name or through another proxy. Each hop held a connection open and added header fields; a
/// loop ended only when the fields outgrew `max_headers`, ~95 hops later, with a 431.
/// Deliberate chains of weirs (an edge in front of an inner tier) are far shorter.
const MAX_WEIR_HOPS: usize = 10;

/// Warns about a forwarding loop at most once a second: it is a config mistake, and every
/// request meets it.
fn warn_loop(listener: &str) {
    static LAST_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if crate::upstream::once_a_second(&LAST_MS) {
        tracing::warn!(
            listener,
            hops = MAX_WEIR_HOPS,
            "forwarding loop: a request came back through weir again and again (does a pool reach this listener?); answered 508"
        );
    }
}

/// Warns that an upstream sent a response head weir cannot pass on (the attempt fails), at
/// most once a second for the whole process: the reason is for the operator of that upstream,
/// and a broken one would send it with every response.
fn warn_invalid_response(endpoint: &str, e: &crate::h1client::HeadError) {
    static LAST_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if crate::upstream::once_a_second(&LAST_MS) {
        tracing::warn!(endpoint, error = %e, "upstream sent an invalid response (the attempt failed)");
    }
}

/// An upstream answer held back while the failover policy decides.
type Held = Option<(Answer, InFlight)>;

/// The answer after the last attempt failed: the upstream's own response when there is one,
/// else the gateway's error for the failure.
fn give_up(
    failure: FailureKind,
    held: Held,
    upgrade: bool,
    forwarding: &Forwarding<'_>,
    set_cookie: Option<HeaderValue>,
) -> Response<ProxyBody> {
    if let Some((answer, in_flight)) = held {
        return respond(answer, in_flight, upgrade, forwarding, set_cookie);
    }
    let err = match failure {
        FailureKind::ConnectTimeout => ProxyError::ConnectTimeout,
        FailureKind::ResponseTimeout => ProxyError::ResponseTimeout,
        FailureKind::ConnectRefused | FailureKind::TlsError => ProxyError::ConnectFailed,
        FailureKind::LocalResources => ProxyError::NoLocalResources,
        FailureKind::ResetBeforeResponse | FailureKind::HttpStatus(_) => ProxyError::UpstreamReset,
        FailureKind::InvalidResponse => ProxyError::UpstreamInvalid,
    };
    err.response()
}

/// The endpoint of `pool` the next attempt goes to, when the balancer's first pick was at its
/// `max_in_flight` (or others wait for a slot), counted against its limit; `None` when the
/// pool has nothing left to try: every endpoint down, drained or tried, or at its
/// `max_in_flight` for `timeouts.queue` (slots.rs). Endpoints found full (`first_full`: the
/// balancer's first pick) are passed to the balancer as tried, so that it picks another while
/// one qualifies; when none does, the request waits for a slot (`can_wait`: it can still be sent). In a pool whose every endpoint has a
/// limit, a request that finds others waiting waits behind them: they were first.
async fn next_endpoint(
    pool: &PoolRt,
    ctx: SelectCtx<'_>,
    first_full: Option<usize>,
    can_wait: bool,
) -> Option<(usize, InFlight)> {
    let new_ticket = || {
        let deadline = tokio::time::Instant::now() + pool.config.timeouts.queue;
        crate::slots::Ticket::new(pool.queue.clone(), deadline)
    };
    // The request's place in the pool's queue while it waits for a slot.
    let mut queued = None;
    if can_wait && pool.all_capped && pool.queue.waiting() > 0 {
        let ticket = new_ticket();
        if !ticket.wait().await {
            return None;
        }
        queued = Some(ticket);
    }
    // The balancer's first pick, found full: not asked about again.
    let mut full: Vec<u32> = first_full.map(|i| i as u32).into_iter().collect();
    loop {
        let skip = (!full.is_empty()).then(|| [ctx.tried, full.as_slice()].concat());
        let ctx = SelectCtx {
            tried: skip.as_deref().unwrap_or(ctx.tried),
            ..ctx
        };
        // Like nginx's proxy_next_upstream: each endpoint at most once per request.
        match select(pool, &ctx).filter(|i| !ctx.tried.contains(&(*i as u32))) {
            Some(i) => match InFlight::try_new(pool.endpoints[i].clone()) {
                Some(counted) => return Some((i, counted)),
                None => full.push(i as u32),
            },
            None if full.is_empty() || !can_wait => return None,
            None => {
                full.clear();
                match &queued {
                    Some(ticket) => {
                        if !ticket.wait().await {
                            tracing::debug!(pool = %pool.name, "every endpoint at its max_in_flight for timeouts.queue");
                            return None;
                        }
                    }
                    // Counted as waiting first, then one more look: a slot freed in between
                    // is not missed.
                    None => queued = Some(new_ticket()),
                }
            }
        }
    }
}

/// The pool's balancer, checked; the native round-robin when it answers nothing usable.
fn select(pool: &PoolRt, ctx: &SelectCtx<'_>) -> Option<usize> {
    match pool.balancer.select(&pool.endpoints, ctx) {
        Select::Endpoint(i) if pool.endpoints.get(i).is_some_and(|e| e.is_eligible()) => Some(i),
        Select::Unavailable => None,
        _ => pool.native.pick(&pool.endpoints, ctx),
    }
}

/// The client's response from an upstream's answer: `Via`, a sticky cookie, and a `Location`
/// naming the endpoint made to name what clients use ([`crate::location`]).
fn respond(
    answer: Answer,
    in_flight: InFlight,
    upgrade: bool,
    forwarding: &Forwarding<'_>,
    set_cookie: Option<HeaderValue>,
) -> Response<ProxyBody> {
    let via = forwarding.via();
    let (head, conn) = match answer {
        Answer::H1(head, conn) => (head, conn),
        Answer::H2(resp, stream) => {
            let (parts, body) = resp.into_parts();
            let mut headers = parts.headers;
            crate::location::rewrite(&mut headers, in_flight.endpoint(), forwarding);
            let mut resp = Response::new(ProxyBody::upstream_h2(body, stream, in_flight));
            *resp.status_mut() = parts.status;
            *resp.headers_mut() = headers;
            add_via(resp.headers_mut(), via.received(Version::HTTP_2));
            if let Some(cookie) = set_cookie {
                resp.headers_mut().append(header::SET_COOKIE, cookie);
            }
            return resp;
        }
    };
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        if !upgrade {
            return ProxyError::UpstreamReset.response();
        }
        // The server joins the client to the upstream once this 101 is written.
        let (upstream, early) = conn.into_upgraded();
        let mut resp = Response::new(ProxyBody::full(bytes::Bytes::new()));
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        add_via(resp.headers_mut(), via.h1());
        resp.extensions_mut().insert(TunnelSlot::new(Tunnel {
            upstream: TunnelIo::H1(upstream),
            early,
            in_flight,
        }));
        return resp;
    }
    let body = ResponseBody::new(conn, &head);
    let ResponseHead {
        status,
        version,
        mut headers,
        ..
    } = head;
    add_via(&mut headers, via.received(version));
    crate::location::rewrite(&mut headers, in_flight.endpoint(), forwarding);
    if let Some(cookie) = set_cookie {
        headers.append(header::SET_COOKIE, cookie);
    }
    let mut resp = Response::new(ProxyBody::upstream(body, in_flight));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Counts an attempt that got a response head (latency, outcome, passive health) and says
/// whether the client gets it: not when it is a 5xx the failover policy judges and the
/// request can go again (`can_retry`).
fn answered(
    endpoint: &Endpoint,
    pool: &PoolRt,
    status: u16,
    attempt_start: Instant,
    can_retry: bool,
    trace: &mut Trace,
) -> bool {
    let now = Instant::now();
    trace.answered_at = Some(now);
    endpoint.record_latency(now - attempt_start, now);
    endpoint.count_attempt(if status >= 500 {
        AttemptOutcome::Status5xx
    } else {
        AttemptOutcome::Ok
    });
    if pool.config.passive.fail_on_status.contains(&status) {
        pool.record_failure(endpoint, format_args!("status {status}"));
    } else {
        endpoint.record_success();
    }
    !(status >= 500 && can_retry && pool.failover.judges_status(status))
}

/// The failure a connect error is, for the failover policy.
fn connect_failure(endpoint: &Endpoint, e: &ConnectError) -> FailureKind {
    match e {
        ConnectError::Timeout => FailureKind::ConnectTimeout,
        // Logged where the handshake failed (once as a warning per failing spell).
        ConnectError::Tls(_) => FailureKind::TlsError,
        // Warned about where it happened (`Endpoint::connect_stream`), at most once a second.
        e if e.is_local() => FailureKind::LocalResources,
        e => {
            tracing::debug!(endpoint = %endpoint.label, error = %e, "upstream connect failed");
            FailureKind::ConnectRefused
        }
    }
}

/// What one WebSocket attempt on an HTTP/2 pool gave.
enum WsAttempt {
    /// The upstream took the extended CONNECT: its head, and the stream to join the client to.
    Open(http::response::Parts, TunnelIo),
    /// It answered otherwise; the client gets that answer.
    Declined(Response<H2RespBody>, H2Stream),
    /// Its SETTINGS do not allow extended CONNECT.
    NotOffered,
    /// Failed, and whether the upstream provably saw nothing of the request.
    Failed(FailureKind, bool),
}

/// The `Sec-WebSocket-Key` of a WebSocket upgrade request; `None` for any other upgrade.
fn websocket_key(headers: &HeaderMap) -> Option<HeaderValue> {
    let websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("websocket")));
    websocket
        .then(|| headers.get(header::SEC_WEBSOCKET_KEY).cloned())
        .flatten()
}

/// The `101` an HTTP/1.1 client's WebSocket handshake asked for, from an HTTP/2 upstream's
/// 2xx to the extended CONNECT: the upstream's fields (a chosen `Sec-WebSocket-Protocol`,
/// extensions, cookies), the handshake's own, and the tunnel for the front to join.
fn switched(
    parts: http::response::Parts,
    key: &HeaderValue,
    upstream: TunnelIo,
    in_flight: InFlight,
    via: Via,
    set_cookie: Option<HeaderValue>,
) -> Response<ProxyBody> {
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        crate::tunnel::websocket_accept(key.as_bytes()),
    );
    add_via(&mut headers, via);
    if let Some(cookie) = set_cookie {
        headers.append(header::SET_COOKIE, cookie);
    }
    let mut resp = Response::new(ProxyBody::full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *resp.headers_mut() = headers;
    resp.extensions_mut().insert(TunnelSlot::new(Tunnel {
        upstream,
        early: bytes::BytesMut::new(),
        in_flight,
    }));
    resp
}

/// What one attempt on an HTTP/2 pool gave.
enum H2Attempt {
    /// A response head, and the stream it came on.
    Answer(Response<H2RespBody>, H2Stream),
    /// The client's body broke off: answered with this status.
    ClientBody(u16),
    /// Failed, and whether the upstream provably saw nothing of the request.
    Failed(FailureKind, bool),
}

/// One attempt of a request on an endpoint of a `protocol = "h2"` pool (`h2client.rs`).
struct H2Try<'a> {
    endpoint: &'a Endpoint,
    pool: &'a PoolRt,
    /// The upstream request's head, as the HTTP/1.1 path sends it (its parts: the request
    /// holds the client connection's body, which is not `Sync`).
    method: &'a Method,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    /// The trailers of a buffered body.
    trailers: Option<&'a HeaderMap>,
    /// The forwarding fields to add (none when a router set them in the head already).
    forwarding: Option<&'a Forwarding<'a>>,
    te_trailers: bool,
    per_try: Duration,
    replayable: bool,
}

impl H2Try<'_> {
    async fn run(self, body: &mut UpBody) -> H2Attempt {
        let t = &self.pool.config.timeouts;
        let tls = self.pool.tls.as_deref();
        // Set when the endpoint's connection turned out to be going away: the request goes
        // again, once, on another, as over a stale pooled HTTP/1.1 connection.
        let mut fresh = false;
        loop {
            let (stream, reused) = match self.endpoint.h2.stream(self.endpoint, t.connect, tls).await {
                Ok(s) => s,
                Err(e) => return H2Attempt::Failed(connect_failure(self.endpoint, &e), true),
            };
            let (head, h2_body) = self.request(body, tls.is_some());
            let (error, unsent, gone) = match crate::h2client::exchange(&stream, head, h2_body, self.per_try).await {
                H2Answer::Response(mut resp) => {
                    self.endpoint.h2.note(&self.endpoint.label, None);
                    resp.body_mut().set_body_timeout(t.body);
                    return H2Attempt::Answer(resp, stream);
                }
                H2Answer::TimedOut => return H2Attempt::Failed(FailureKind::ResponseTimeout, false),
                H2Answer::ClientBody(status) => return H2Attempt::ClientBody(status),
                H2Answer::NotOpened(error, unsent_body) => {
                    // The connection is going or gone, and the request left nothing: a
                    // streamed body can still go.
                    if let H2ReqBody::Streamed(b) = unsent_body {
                        *body = UpBody::Streamed(b);
                    }
                    (error, true, true)
                }
                H2Answer::Failed(error, unsent) => {
                    let gone = crate::h2client::connection_gone(&error);
                    (error, unsent, gone)
                }
            };
            if !fresh && body.resendable() {
                if reused && gone && (unsent || self.replayable) {
                    tracing::debug!(endpoint = %self.endpoint.label, error = %error, "upstream HTTP/2 connection went away; sending on a new one");
                    self.endpoint.count_attempt(AttemptOutcome::StaleConnection);
                    stream.retire();
                    fresh = true;
                    continue;
                }
                // Refused unread: most often a stream over the upstream's limit sent before
                // its SETTINGS said so (a new connection assumes 100 until then). Once more
                // on the endpoint, where it now finds room or a connection of its own.
                if crate::h2client::unprocessed(&error) {
                    tracing::debug!(endpoint = %self.endpoint.label, error = %error, "upstream refused the stream; sending it again");
                    fresh = true;
                    continue;
                }
            }
            if !reused {
                self.endpoint.h2.note(&self.endpoint.label, Some(&error));
            }
            tracing::debug!(endpoint = %self.endpoint.label, error = %error, reused, unsent, "upstream HTTP/2 request failed");
            return H2Attempt::Failed(FailureKind::ResetBeforeResponse, unsent);
        }
    }

    /// A WebSocket handshake as an extended CONNECT (RFC 8441): the request's head, less the
    /// HTTP/1.1 handshake's own fields (`Connection`, `Upgrade`, `Sec-WebSocket-Key`), with
    /// `:protocol = websocket`. A connection found gone before the stream opened is replaced
    /// once, as for any request.
    async fn tunnel(self) -> WsAttempt {
        let t = &self.pool.config.timeouts;
        let tls = self.pool.tls.as_deref();
        let mut fresh = false;
        loop {
            let (stream, _reused) = match self.endpoint.h2.stream(self.endpoint, t.connect, tls).await {
                Ok(s) => s,
                Err(e) => return WsAttempt::Failed(connect_failure(self.endpoint, &e), true),
            };
            let (mut head, _) = self.request(&mut UpBody::Empty, tls.is_some());
            *head.method_mut() = Method::CONNECT;
            for name in [
                header::CONNECTION,
                header::UPGRADE,
                header::SEC_WEBSOCKET_KEY,
                header::CONTENT_LENGTH,
                header::TRANSFER_ENCODING,
            ] {
                head.headers_mut().remove(name);
            }
            head.extensions_mut()
                .insert(h2::ext::Protocol::from_static("websocket"));
            return match crate::h2client::open_tunnel(&stream, head, self.per_try).await {
                TunnelAnswer::Open(parts, send, recv) => {
                    self.endpoint.h2.note(&self.endpoint.label, None);
                    let tunnel = crate::tunnel::H2Tunnel::new(send, recv, stream);
                    WsAttempt::Open(parts, TunnelIo::H2(Box::new(tunnel)))
                }
                TunnelAnswer::Declined(mut resp) => {
                    resp.body_mut().set_body_timeout(t.body);
                    WsAttempt::Declined(resp, stream)
                }
                TunnelAnswer::NotOffered => {
                    tracing::debug!(endpoint = %self.endpoint.label, "upstream does not allow extended CONNECT (SETTINGS_ENABLE_CONNECT_PROTOCOL)");
                    WsAttempt::NotOffered
                }
                TunnelAnswer::Gone if !fresh => {
                    stream.retire();
                    fresh = true;
                    continue;
                }
                TunnelAnswer::Gone => WsAttempt::Failed(FailureKind::ResetBeforeResponse, true),
                TunnelAnswer::Failed(error, unsent) => {
                    tracing::debug!(endpoint = %self.endpoint.label, error = %error, unsent, "upstream WebSocket stream failed");
                    WsAttempt::Failed(FailureKind::ResetBeforeResponse, unsent)
                }
                TunnelAnswer::TimedOut => WsAttempt::Failed(FailureKind::ResponseTimeout, false),
            };
        }
    }

    /// The request as an HTTP/2 stream carries it: the head's fields with the forwarding
    /// ones added and `Host` as `:authority` (the endpoint's address when the client sent
    /// none), and the body: a buffered one copied (it stays for replays), a streamed one
    /// taken (`body` is then spent).
    fn request(&self, body: &mut UpBody, https: bool) -> (Request<()>, H2ReqBody) {
        // Room for the fields added below: a clone has none, and grew twice per request.
        let mut headers = crate::bufpool::take_headers(self.headers.len() + 8);
        for (name, value) in self.headers {
            headers.append(name.clone(), value.clone());
        }
        if let Some(f) = self.forwarding {
            crate::headers::add_forwarding(&mut headers, f);
        }
        if self.te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        let host = headers.remove(header::HOST);
        let authority = host
            .as_ref()
            .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
            .or_else(|| http::uri::Authority::try_from(self.endpoint.label.as_str()).ok());
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if https {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        });
        parts.authority = authority;
        parts.path_and_query = self.uri.path_and_query().cloned();
        let uri = Uri::from_parts(parts).unwrap_or_else(|_| self.uri.clone());
        let h2_body = match std::mem::replace(body, UpBody::Spent) {
            UpBody::Empty => {
                *body = UpBody::Empty;
                H2ReqBody::Empty
            }
            UpBody::Full(b) => {
                *body = UpBody::Full(b.clone());
                H2ReqBody::Full(Some(b), self.trailers.cloned())
            }
            UpBody::Streamed(b) => H2ReqBody::Streamed(b),
            UpBody::Spent => H2ReqBody::Empty,
        };
        let mut r = Request::new(());
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = uri;
        *r.version_mut() = Version::HTTP_2;
        *r.headers_mut() = headers;
        (r, h2_body)
    }
}
