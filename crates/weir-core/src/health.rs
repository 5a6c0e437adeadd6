//! Active health checks: per endpoint, an HTTP `GET` of the pool's `health.path` on its own
//! `health.port` (traffic on 9080, probe `GET :9000/upcheck`), or a TCP connect when no path is
//! set; `interval`, `timeout`, `initial_delay`, `healthy_threshold`, `unhealthy_threshold`,
//! `expect_status`, `expect_body`. Checks are jittered so that many endpoints do not align, run
//! off the request path, and write one atomic the request path reads. State *changes* are
//! logged, once. The checkers follow the current generation: restarted after every reload.
//! A check speaks HTTP/2 where the pool's traffic does (`protocol = "h2"`, on the traffic
//! port or where TLS agreed on `h2`), HTTP/1.1 otherwise; `grpc = true` asks the gRPC health
//! service instead of a path (`grpc_health.rs`).
//! The same task set re-resolves endpoint hostnames every `resolve_interval`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use weir_config::{EndpointAddress, Health};

use crate::h1client::UpStream;
use crate::state::Shared;
use crate::upstream::Endpoint;
use crate::upstream_tls::UpstreamTls;

/// Largest body read to look for `expect_body`.
const MAX_BODY: usize = 64 * 1024;

pub(crate) fn spawn(shared: Arc<Shared>, mut generations: watch::Receiver<u64>, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut checks = JoinSet::new();
        loop {
            checks.abort_all();
            let generation = shared.generation.load_full();
            for pool in &generation.pools {
                for (host, port, built_from) in &pool.names {
                    checks.spawn(follow_name(
                        shared.clone(),
                        host.clone(),
                        *port,
                        built_from.clone(),
                        pool.config.resolve_interval,
                    ));
                }
                let named: Vec<Arc<Endpoint>> = pool.endpoints.iter().filter(|e| e.is_hostname()).cloned().collect();
                if !named.is_empty() {
                    checks.spawn(resolve_loop(named, pool.config.resolve_interval));
                }
                let Some(health) = &pool.config.health else { continue };
                for endpoint in &pool.endpoints {
                    checks.spawn(check_loop(
                        endpoint.clone(),
                        health.clone(),
                        pool.name.clone(),
                        pool.config.send_proxy,
                        pool.tls.clone().filter(|_| health.tls),
                        pool.config.protocol == weir_config::UpstreamProtocol::H2,
                    ));
                }
            }
            drop(generation);
            tokio::select! {
                changed = generations.changed() => if changed.is_err() { break },
                _ = stop.cancelled() => break,
            }
        }
        checks.abort_all();
    });
}

/// Re-resolves hostnames every `resolve_interval`, off the request path.
async fn resolve_loop(endpoints: Vec<Arc<Endpoint>>, interval: Duration) {
    loop {
        for e in &endpoints {
            let _ = e.refresh_address().await;
        }
        tokio::time::sleep(interval.max(Duration::from_millis(100))).await;
    }
}

/// For a name of a `resolve = "all"` pool: looks it up every `resolve_interval` and, when it
/// resolves to other addresses than this generation has endpoints for, makes a new generation
/// (endpoints of addresses still there keep their state, new ones start as new endpoints do,
/// the others finish what they have in flight). A failed lookup keeps the last good addresses.
async fn follow_name(
    shared: Arc<Shared>,
    host: String,
    port: u16,
    built_from: Option<Arc<Vec<std::net::SocketAddr>>>,
    interval: Duration,
) {
    loop {
        // A failure keeps the last good set (and is logged by the lookup).
        let _ = crate::dns::refresh(&host, port).await;
        if let Some(found) = crate::dns::cached(&host, port)
            && built_from.as_ref() != Some(&found)
        {
            tracing::info!(name = %host, port, addresses = ?found, "the name's addresses changed: new endpoints");
            if let Err(errors) = crate::reload::rebuild(&shared, "endpoint addresses changed").await {
                tracing::warn!(name = %host, errors = %errors.join("; "), "could not apply the name's new addresses");
            }
            return;
        }
        tokio::time::sleep(interval.max(Duration::from_millis(100))).await;
    }
}

/// A small deterministic spread per endpoint and round: up to a tenth of the interval.
fn jitter(interval: Duration, seed: u64) -> Duration {
    let mixed = crate::hash::mix(seed);
    let tenth = interval.as_millis().max(10) as u64 / 10;
    Duration::from_millis(mixed % tenth.max(1))
}

async fn check_loop(
    endpoint: Arc<Endpoint>,
    health: Health,
    pool: String,
    send_proxy: Option<weir_config::ProxyVersion>,
    tls: Option<Arc<UpstreamTls>>,
    h2: bool,
) {
    let mut round = u64::from(endpoint.id) << 32;
    // The first check's spread is at most 100 ms, whatever the interval: an endpoint takes no
    // traffic before it passes, so a tenth of a long interval would keep it out that long.
    tokio::time::sleep(health.initial_delay + jitter(health.interval.min(Duration::from_secs(1)), round)).await;
    let (mut passes, mut failures) = (0u32, 0u32);
    // Whether this endpoint's failing checks have been logged since it was last healthy: one
    // that never passed (it starts out of rotation) is not "becoming unhealthy", but an
    // operator still needs to read why it takes no traffic.
    let mut failing_logged = false;
    loop {
        round += 1;
        let verdict = match tokio::time::timeout(
            health.timeout,
            probe(&endpoint, &health, send_proxy, tls.as_deref(), h2),
        )
        .await
        {
            Ok(Err(ProbeError::Local(reason))) => {
                // Not a verdict on the endpoint: this host had no port or file descriptor to
                // check it with. Neither a pass nor a failure.
                tracing::warn!(pool = %pool, endpoint = %endpoint.label, %reason, "health check not made: no local resource to connect with");
                None
            }
            Ok(Err(ProbeError::Failed(reason))) => Some(Err(reason)),
            Ok(Ok(())) => Some(Ok(())),
            Err(_) => Some(Err(format!(
                "no answer within {}",
                weir_config::format_duration(health.timeout)
            ))),
        };
        match verdict {
            None => {}
            Some(Ok(())) => {
                endpoint.checks_ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                passes += 1;
                failures = 0;
                endpoint.set_check_error(None);
                if !endpoint.actively_healthy() && passes >= health.healthy_threshold {
                    endpoint.set_healthy(true);
                    failing_logged = false;
                    tracing::info!(pool = %pool, endpoint = %endpoint.label, passes, "endpoint healthy");
                }
            }
            Some(Err(reason)) => {
                endpoint
                    .checks_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                failures += 1;
                passes = 0;
                if failures >= health.unhealthy_threshold {
                    if endpoint.actively_healthy() {
                        endpoint.set_healthy(false);
                        failing_logged = true;
                        tracing::warn!(pool = %pool, endpoint = %endpoint.label, failures, %reason, "endpoint unhealthy");
                    } else if !failing_logged {
                        failing_logged = true;
                        tracing::warn!(pool = %pool, endpoint = %endpoint.label, failures, %reason, "endpoint not in rotation yet: its health checks fail");
                    }
                }
                endpoint.set_check_error(Some(reason));
            }
        }
        tokio::time::sleep(health.interval + jitter(health.interval, round)).await;
    }
}

/// Why a check did not pass.
enum ProbeError {
    /// The endpoint failed it.
    Failed(String),
    /// It could not be made: no local port or file descriptor to connect with
    /// ([`crate::upstream::ConnectError::is_local`]).
    Local(String),
}

impl From<String> for ProbeError {
    fn from(reason: String) -> Self {
        ProbeError::Failed(reason)
    }
}

async fn probe(
    endpoint: &Endpoint,
    health: &Health,
    send_proxy: Option<weir_config::ProxyVersion>,
    tls: Option<&UpstreamTls>,
    h2: bool,
) -> Result<(), ProbeError> {
    let (mut stream, addr) = endpoint.open(health.port, health.timeout).await.map_err(|e| {
        let reason = match health.port {
            Some(port) => format!("{} (check port {port}): {e}", endpoint.label),
            None => format!("{}: {e}", endpoint.label),
        };
        if e.is_local() {
            ProbeError::Local(reason)
        } else {
            ProbeError::Failed(reason)
        }
    })?;
    // A check on the traffic port of a `send_proxy` pool speaks as its traffic does, with a
    // header saying the connection is weir's own; a separate check port gets none.
    if let (Some(version), None) = (send_proxy, health.port) {
        tokio::io::AsyncWriteExt::write_all(&mut stream, &crate::proxy_protocol::local_header(version))
            .await
            .map_err(|e| format!("PROXY header to {addr}: {e}"))?;
    }
    let _ = stream.set_nodelay(true);
    let name = endpoint.name.as_ref().unwrap_or(&endpoint.address);
    let stream: UpStream = match tls {
        None => stream.into(),
        Some(t) => t
            .connect(stream, name, addr)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?
            .into(),
    };
    let host = match name {
        EndpointAddress::Host { host, .. } => format!("{host}:{}", addr.port()),
        EndpointAddress::Socket(_) => addr.to_string(),
    };
    if let Some(service) = &health.grpc {
        return Ok(grpc_check(stream, &host, tls.is_some(), service).await?);
    }
    let Some(path) = &health.path else {
        return Ok(());
    };
    // HTTP/2 where the traffic speaks it: on the traffic port of a `protocol = "h2"` pool, or
    // where TLS agreed on `h2`. A separate check port without TLS gets HTTP/1.1.
    let speak_h2 = match &stream {
        UpStream::Tls(t) => t.get_ref().1.alpn_protocol() == Some(b"h2"),
        UpStream::Plain(_) => h2 && health.port.is_none(),
    };
    let request = |target: String| {
        Request::get(target)
            .header(header::USER_AGENT, "weir-health-check")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("bad check request: {e}"))
    };
    let resp = if speak_h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(conn);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let req = request(format!("{scheme}://{host}{path}"))?;
        send.send_request(req).await.map_err(|e| format!("GET {path}: {e}"))?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = request(path.clone())?;
        if let Ok(v) = http::HeaderValue::from_str(&host) {
            req.headers_mut().insert(header::HOST, v);
        }
        send.send_request(req).await.map_err(|e| format!("GET {path}: {e}"))?
    };
    let status = resp.status().as_u16();
    if !health.expect_status.contains(status) {
        return Err(format!("GET {path} answered {status}").into());
    }
    if let Some(needle) = &health.expect_body {
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("GET {path}: body: {e}"))?
            .to_bytes();
        if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
            return Err(format!("GET {path}: body does not contain {needle:?}").into());
        }
    }
    Ok(())
}

/// `grpc = true`: `grpc.health.v1.Health/Check` for `service` over HTTP/2; passes on an answer
/// with `grpc-status: 0` and the status SERVING.
async fn grpc_check(stream: UpStream, authority: &str, https: bool, service: &str) -> Result<(), String> {
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(conn);
    let scheme = if https { "https" } else { "http" };
    let req = Request::post(format!("{scheme}://{authority}{}", crate::grpc_health::PATH))
        .header(header::CONTENT_TYPE, "application/grpc")
        .header(header::TE, "trailers")
        .header(header::USER_AGENT, "weir-health-check")
        .body(Full::new(crate::grpc_health::request(service)))
        .map_err(|e| format!("bad check request: {e}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("gRPC health check: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("gRPC health check answered HTTP {}", resp.status().as_u16()));
    }
    // A trailers-only answer (an error) has grpc-status in its head.
    let in_head = resp.headers().get("grpc-status").cloned();
    let reply = Limited::new(resp.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("gRPC health check: body: {e}"))?;
    let status = reply.trailers().and_then(|t| t.get("grpc-status").cloned()).or(in_head);
    match status.as_ref().map(|v| v.as_bytes()) {
        Some(b"0") => crate::grpc_health::check_reply(&reply.to_bytes()).map_err(|e| format!("gRPC health check: {e}")),
        Some(code) => Err(format!(
            "gRPC health check: grpc-status {}",
            String::from_utf8_lossy(code)
        )),
        None => Err("gRPC health check: no grpc-status".into()),
    }
}
