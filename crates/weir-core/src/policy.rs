//! The policy traits: the three decisions weir delegates (route, select, on-failure), with small
//! documented contracts so that native and Wasm implementations are interchangeable. The core
//! enforces the hard rules around them (eligible endpoints, max attempts, replayability), so a
//! policy can only choose among safe options.

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::upstream::Endpoint;

/// What the host hashes into a request's affinity hash, as a balancer asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AffinityKey {
    ClientIp,
    Path,
    Header(HeaderName),
    Cookie(String),
}

impl AffinityKey {
    /// `"client-ip"`, `"path"`, `"header:NAME"`, `"cookie:NAME"`.
    pub fn parse(text: &str) -> Result<AffinityKey, String> {
        match text.split_once(':') {
            None if text == "client-ip" => Ok(AffinityKey::ClientIp),
            None if text == "path" => Ok(AffinityKey::Path),
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(AffinityKey::Header)
                .map_err(|_| format!("`{name}` is not a header name")),
            Some(("cookie", name)) if !name.is_empty() => Ok(AffinityKey::Cookie(name.to_string())),
            _ => Err(format!(
                "unknown affinity key `{text}` (client-ip, path, header:NAME, cookie:NAME)"
            )),
        }
    }
}

/// What a router sees of a request.
#[derive(Debug)]
pub struct RouteRequest<'a> {
    pub request_id: u64,
    pub method: &'a Method,
    pub https: bool,
    /// Host (h1) or :authority (h2), without the port.
    pub host: &'a str,
    pub path_and_query: &'a str,
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
}

/// Where a router sends a request, with the changes it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteTarget {
    /// A pool of the current generation, by index.
    pub pool: usize,
    pub rewrite_path: Option<String>,
    /// Set (replace) on the upstream request.
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    /// Per-try timeout instead of the pool's.
    pub timeout: Option<Duration>,
    /// Opaque plugin state echoed to select and on-failure.
    pub cookie: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// The listener's default pool.
    Default,
    Upstream(RouteTarget),
    /// Answer locally without contacting an upstream.
    Respond {
        status: u16,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: bytes::Bytes,
    },
}

/// Chooses the pool for a request. Called once per request, before any upstream work.
pub trait RoutePolicy: Send + Sync + 'static {
    fn route(&self, req: &RouteRequest<'_>) -> RouteDecision;
}

/// What a balancer knows of the request it selects for.
#[derive(Debug, Clone, Copy)]
pub struct SelectCtx<'a> {
    pub request_id: u64,
    /// Hash of the configured affinity key; 0 when none.
    pub affinity_hash: u64,
    /// 1 for the first try.
    pub attempt: u32,
    /// Endpoint indexes already tried for this request.
    pub tried: &'a [u32],
    /// Set by the router (0 without one).
    pub cookie: u64,
}

impl<'a> SelectCtx<'a> {
    /// The first try of request `request_id`: no affinity key, no router cookie, nothing tried
    /// (for benches and tests).
    pub fn first_try(request_id: u64) -> SelectCtx<'a> {
        SelectCtx {
            request_id,
            affinity_hash: 0,
            attempt: 1,
            tried: &[],
            cookie: 0,
        }
    }
}

/// A balancer's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    Endpoint(usize),
    /// Let the native round-robin decide (also what a failed plugin call becomes).
    Native,
    /// Nothing acceptable: the client gets 503.
    Unavailable,
}

/// Chooses an endpoint of a pool. Contract: return an endpoint for which
/// [`Endpoint::is_eligible`] holds and that is not in `ctx.tried` when another one is eligible.
/// The core checks the answer and uses the native balancer when it is not usable.
pub trait BalancePolicy: Send + Sync + 'static {
    fn select(&self, endpoints: &[std::sync::Arc<Endpoint>], ctx: &SelectCtx<'_>) -> Select;

    /// What the host should hash into `SelectCtx::affinity_hash`.
    fn affinity(&self) -> Option<&AffinityKey> {
        None
    }

    /// A cookie the host sets when absent, whose value is the affinity key (sticky sessions).
    fn sticky_cookie(&self) -> Option<&str> {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    ConnectRefused,
    ConnectTimeout,
    /// The TLS handshake failed (nothing was sent).
    TlsError,
    /// The connection failed before the response head (reset, closed).
    ResetBeforeResponse,
    /// The upstream's response head was not HTTP weir can pass on (malformed, too large).
    /// Plugins see it as `reset-before-response`.
    InvalidResponse,
    ResponseTimeout,
    /// The upstream answered with a status the pool treats as a failure.
    HttpStatus(u16),
    /// weir had no local resource to connect with (no ephemeral port or file descriptor
    /// free): nothing was sent, and the endpoint is not blamed (passive health does not count
    /// it). Plugins see it as `connect-refused`.
    LocalResources,
}

/// `AttemptInfo::endpoint_index` when the pool had no endpoint left to try (every one down,
/// drained or already tried): the failover policy is asked whether the request, which has not
/// gone anywhere since, moves to another pool. Only a failover to another pool is acted on.
pub const NO_ENDPOINT: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
pub struct AttemptInfo {
    pub request_id: u64,
    pub cookie: u64,
    pub pool_index: u32,
    /// 1-based number of the attempt that failed.
    pub attempt: u32,
    /// The endpoint that failed, or [`NO_ENDPOINT`].
    pub endpoint_index: u32,
    pub failure: FailureKind,
    pub elapsed: Duration,
    /// Safe to send again: idempotent (or `Idempotency-Key`) and the body is replayable.
    pub replayable: bool,
    /// The request never left weir (connect failed, or a pooled connection closed before use).
    pub unsent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureDecision {
    /// Try again in the same pool (select runs again) after the backoff.
    Retry { backoff: Duration },
    /// Try again in another pool (by index).
    Failover { pool: usize },
    /// Give up: pass the upstream response through if any, else 502/504.
    Fail,
    /// Give up and answer with this response instead (a maintenance page, a custom 503); the
    /// upstream's own answer, if one is held, is dropped.
    Respond {
        status: u16,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: bytes::Bytes,
    },
}

/// Whether a plugin's `respond` may answer with `status`: a final one. An interim (1xx) status
/// would leave the client waiting for the real answer, and 600 and up are not HTTP.
pub fn is_final_status(status: u16) -> bool {
    (200..600).contains(&status)
}

/// Decides what happens after a failed attempt. The core only acts on `Retry` / `Failover`
/// when attempts and the retry budget allow it and the request is replayable or unsent.
pub trait FailoverPolicy: Send + Sync + 'static {
    fn on_failure(&self, attempt: &AttemptInfo) -> FailureDecision;

    /// Whether an upstream answer with this status is a failure worth asking about (the
    /// response is held back until the policy decides). The native policy passes every status
    /// through.
    fn judges_status(&self, _status: u16) -> bool {
        false
    }
}

/// The native failover: retry whatever is safe to retry, immediately, on another endpoint.
#[derive(Debug, Default)]
pub struct RetrySafe;

impl FailoverPolicy for RetrySafe {
    fn on_failure(&self, a: &AttemptInfo) -> FailureDecision {
        let safe = a.unsent || (a.replayable && !matches!(a.failure, FailureKind::HttpStatus(_)));
        if safe {
            FailureDecision::Retry {
                backoff: Duration::ZERO,
            }
        } else {
            FailureDecision::Fail
        }
    }
}

pub mod round_robin;
pub use round_robin::RoundRobin;
