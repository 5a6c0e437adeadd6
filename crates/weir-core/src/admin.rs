//! The admin API (DESIGN §5) on its own listener: probes, status, and the runtime controls an
//! operator needs for a rolling update (drain / enable an endpoint, flip readiness). Mutating
//! calls need `Authorization: Bearer <token>` when a token is configured.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;

/// Reads the admin token from `token_file` or `token_env`; `None` when neither is configured.
pub fn load_token(admin: &weir_config::Admin) -> Result<Option<String>, String> {
    if let Some(path) = &admin.token_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read admin token file {}: {e}", path.display()))?;
        let token = text.trim().to_string();
        if token.is_empty() {
            return Err(format!("admin token file {} is empty", path.display()));
        }
        return Ok(Some(token));
    }
    if let Some(var) = &admin.token_env {
        let token = std::env::var(var).map_err(|_| format!("admin token variable {var} is not set"))?;
        return Ok(Some(token.trim().to_string()));
    }
    Ok(None)
}

pub struct Admin {
    shared: Arc<Shared>,
}

/// Serves the admin API on `listener`; mutating calls need the token in `shared.admin_token`.
pub fn spawn(listener: Arc<TcpListener>, shared: Arc<Shared>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    let admin = Arc::new(Admin { shared });
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
                });
                let _ = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

type AdminResponse = Response<Full<Bytes>>;

fn text(status: StatusCode, body: &str) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// The method a path of the admin API answers (for a 405's `Allow`), `None` for no such path.
fn allowed_method(path: &[&str]) -> Option<&'static str> {
    match path {
        ["livez" | "readyz" | "startupz" | "metrics"] | ["api", "v1", "status"] => Some("GET, HEAD"),
        ["api", "v1", "reload"] | ["api", "v1", "pools", _, "endpoints", _, "drain" | "enable"] => Some("POST"),
        ["api", "v1", "readiness"] | ["api", "v1", "pools", _, "endpoints", _, "weight"] => Some("PUT"),
        _ => None,
    }
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>) -> bool {
        let token = self.shared.admin_token.load();
        let Some(token) = token.as_deref() else {
            return true;
        };
        let Some(given) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        given
            .strip_prefix("Bearer ")
            .is_some_and(|g| constant_time_eq(g.trim().as_bytes(), token.as_bytes()))
    }

    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> AdminResponse {
        let path = req.uri().path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        // HEAD is GET without the body (hyper leaves the body out): load balancers probe so.
        let method = if req.method() == Method::HEAD {
            &Method::GET
        } else {
            req.method()
        };
        match (method, segments.as_slice()) {
            (&Method::GET, ["livez"]) => text(StatusCode::OK, "ok"),
            (&Method::GET, ["readyz"]) => {
                if self.shared.is_ready() {
                    text(StatusCode::OK, "ready")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }
            (&Method::GET, ["startupz"]) => {
                if self.shared.is_started() {
                    text(StatusCode::OK, "started")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }
            (&Method::GET, ["api", "v1", "status"]) => json_response(StatusCode::OK, &self.status()),
            (&Method::GET, ["metrics"]) => {
                let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render(&self.shared))));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
                );
                r
            }
            (m, ["api", "v1", ..]) if m != Method::GET && !self.authorized(&req) => {
                let mut r = text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                r
            }
            (&Method::POST, ["api", "v1", "reload"]) => match crate::reload::request(&self.shared, "admin API").await {
                Ok(generation) => json_response(StatusCode::OK, &json!({ "generation": generation })),
                Err(errors) => json_response(StatusCode::UNPROCESSABLE_ENTITY, &json!({ "errors": errors })),
            },
            (&Method::PUT, ["api", "v1", "readiness"]) => match read_json(req).await {
                Ok(v) => match v.get("ready").and_then(|r| r.as_bool()) {
                    Some(ready) => {
                        self.shared.set_ready(ready);
                        tracing::info!(ready, "readiness set through the admin API");
                        json_response(StatusCode::OK, &json!({ "ready": ready }))
                    }
                    None => text(StatusCode::BAD_REQUEST, "expected {\"ready\": true|false}"),
                },
                Err(e) => text(StatusCode::BAD_REQUEST, &e),
            },
            (&Method::PUT, ["api", "v1", "pools", pool, "endpoints", address, "weight"]) => {
                let address = percent_decode(address);
                let weight = match read_json(req).await {
                    Ok(v) => match v.get("weight").and_then(|w| w.as_u64()) {
                        Some(w) if (1..=10_000).contains(&w) => w as u32,
                        _ => return text(StatusCode::BAD_REQUEST, "expected {\"weight\": 1..10000}"),
                    },
                    Err(e) => return text(StatusCode::BAD_REQUEST, &e),
                };
                match self.endpoints(pool, &address) {
                    Ok(found) => found.iter().for_each(|e| e.override_weight(weight)),
                    Err(not_found) => return *not_found,
                }
                // Balancers precompute their schedules per generation: build a new one.
                match crate::reload::rebuild(&self.shared, "weight change").await {
                    Ok(generation) => json_response(
                        StatusCode::OK,
                        &json!({ "pool": pool, "endpoint": address, "weight": weight, "generation": generation }),
                    ),
                    Err(errors) => json_response(StatusCode::INTERNAL_SERVER_ERROR, &json!({ "errors": errors })),
                }
            }
            (
                &Method::POST,
                [
                    "api",
                    "v1",
                    "pools",
                    pool,
                    "endpoints",
                    address,
                    action @ ("drain" | "enable"),
                ],
            ) => {
                let address = percent_decode(address);
                let found = match self.endpoints(pool, &address) {
                    Ok(found) => found,
                    Err(not_found) => return *not_found,
                };
                let drained = *action == "drain";
                found.iter().for_each(|e| e.set_drained(drained));
                // Found through a name (no endpoint has it as its own address): the addresses
                // the name gains later follow its drain.
                if found.iter().all(|e| e.label != address) {
                    crate::dns::set_name_drained(pool, &address, drained);
                }
                tracing::info!(pool, endpoint = %address, drained, "endpoint drain changed through the admin API");
                json_response(
                    StatusCode::OK,
                    &json!({ "pool": pool, "endpoint": address, "drained": drained }),
                )
            }
            (_, path) => match allowed_method(path) {
                Some(allow) => {
                    let mut r = text(
                        StatusCode::METHOD_NOT_ALLOWED,
                        &format!("method not allowed: use {allow}"),
                    );
                    r.headers_mut()
                        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
                    r
                }
                None => text(StatusCode::NOT_FOUND, "not found"),
            },
        }
    }

    /// The endpoint `address` of `pool` in the current generation (or, for the name of a
    /// `resolve = "all"` pool, every endpoint of its addresses), or the 404 to answer.
    fn endpoints(&self, pool: &str, address: &str) -> Result<Vec<Arc<crate::upstream::Endpoint>>, Box<AdminResponse>> {
        let generation = self.shared.generation.load();
        let Some(p) = generation.pool(pool) else {
            return Err(Box::new(text(StatusCode::NOT_FOUND, &format!("no pool `{pool}`"))));
        };
        let found: Vec<_> = p
            .endpoints
            .iter()
            .filter(|e| e.label == address || e.name.as_ref().is_some_and(|n| n.to_string() == address))
            .cloned()
            .collect();
        if found.is_empty() {
            return Err(Box::new(text(
                StatusCode::NOT_FOUND,
                &format!("no endpoint `{address}` in pool `{pool}`"),
            )));
        }
        Ok(found)
    }

    fn status(&self) -> serde_json::Value {
        let g = self.shared.generation.load();
        let certificates = crate::cert_expiry::dates(|_| true);
        let listeners: Vec<_> = g
            .listeners
            .iter()
            .map(|l| {
                let mut listener = json!({
                    "name": l.name,
                    "bind": l.config.bind.to_string(),
                    "advertise": l.config.advertise.as_ref().map(|a| format!("{}://{}", a.scheme.as_str(), a.authority)),
                    "pool": g.pools.get(l.pool).map(|p| p.name.as_str()),
                    "tls": l.config.tls.is_some(),
                });
                if l.config.tls.is_some() {
                    // What each certificate served expires at (the earliest `notAfter` of its
                    // chain), Unix seconds.
                    listener["certificates"] = certificates
                        .iter()
                        .filter(|(name, _, _)| *name == l.name)
                        .map(|(_, certificate, at)| json!({ "certificate": certificate, "not_after_unix": at }))
                        .collect();
                }
                listener
            })
            .collect();
        let pools: Vec<_> = g
            .pools
            .iter()
            .map(|p| {
                let endpoints: Vec<_> = p
                    .endpoints
                    .iter()
                    .map(|e| {
                        json!({
                            "address": e.label,
                            "name": e.name.as_ref().map(ToString::to_string),
                            "resolved": e.resolved_addresses().map(|a| a.iter().map(ToString::to_string).collect::<Vec<_>>()),
                            "id": e.id,
                            "healthy": e.is_healthy(),
                            "passively_down": e.passively_down(),
                            "checks": { "ok": e.checks_ok.load(std::sync::atomic::Ordering::Relaxed), "failed": e.checks_failed.load(std::sync::atomic::Ordering::Relaxed), "last_error": e.check_error().map(|r| r.to_string()) },
                            "drained": e.is_drained(),
                            "weight": e.weight(),
                            "backup": e.is_backup(),
                            "zone": e.zone,
                            "in_flight": e.in_flight(),
                            "max_in_flight": e.max_in_flight(),
                            "ewma_latency_us": e.latency_us_at(crate::upstream::now_ms()),
                            "requests": e.requests(),
                            "idle_connections": e.idle_connections(),
                            "unreplayable_idle_limit_ms": e.idle_closes.safe_idle_ms(),
                            "h2_connections": e.h2.open(),
                        })
                    })
                    .collect();
                json!({ "name": p.name, "balancer": p.config.balancer.plugin, "queued": p.queue.waiting(), "endpoints": endpoints })
            })
            .collect();
        json!({
            "generation": g.id,
            "ready": self.shared.is_ready(),
            "draining": self.shared.is_draining(),
            "listeners": listeners,
            "pools": pools,
            "plugins": self.shared.plugins_status(&g),
            "last_reload": self.shared.last_reload.lock().ok().and_then(|r| r.clone()),
            "reloads": { "ok": self.shared.reloads_ok.load(std::sync::atomic::Ordering::Relaxed), "failed": self.shared.reloads_failed.load(std::sync::atomic::Ordering::Relaxed) },
        })
    }
}

async fn read_json(req: Request<Incoming>) -> Result<serde_json::Value, String> {
    let body = Limited::new(req.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| format!("cannot read body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("body is not JSON: {e}"))
}

/// Decodes `%3A` and friends in a path segment (endpoint addresses contain `:` and `[`).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
