//! The policy traits: the three decisions weir delegates (route, select, on-failure), with small
//! documented contracts so that native and Wasm implementations are interchangeable. The core
//! enforces the hard rules around them (eligible endpoints, max attempts, replayability), so a
//! policy can only choose among safe options.

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, Method};

use crate::upstream::Endpoint;

/// What a router sees of a request.
#[derive(Debug)]
pub struct RouteRequest<'a> {
    pub method: &'a Method,
    /// Host (h1) or :authority (h2), lower-cased, without the port.
    pub host: &'a str,
    pub path_and_query: &'a str,
    pub client_ip: IpAddr,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// The listener's default pool.
    Default,
    /// A pool of the current generation, by index.
    Pool(usize),
    /// Answer locally without contacting an upstream.
    Respond { status: u16, body: String },
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
}

/// Chooses an endpoint of a pool. Contract: return the index of an endpoint for which
/// [`Endpoint::is_eligible`] holds and that is not in `ctx.tried` when another one is eligible;
/// `None` when nothing is eligible. The core checks the answer and falls back to the native
/// balancer if it is out of range.
pub trait BalancePolicy: Send + Sync + 'static {
    fn select(&self, endpoints: &[std::sync::Arc<Endpoint>], ctx: &SelectCtx<'_>) -> Option<usize>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    ConnectRefused,
    ConnectTimeout,
    /// The connection failed before the response head (reset, closed).
    ResetBeforeResponse,
    ResponseTimeout,
    /// The upstream answered with a status the pool treats as a failure.
    HttpStatus(u16),
}

#[derive(Debug, Clone, Copy)]
pub struct AttemptInfo {
    pub request_id: u64,
    /// 1-based number of the attempt that failed.
    pub attempt: u32,
    pub endpoint_index: u32,
    pub failure: FailureKind,
    pub elapsed: Duration,
    /// Safe to send again: idempotent (or `Idempotency-Key`) and the body is replayable.
    pub replayable: bool,
    /// The request never left weir (connect failed, or a pooled connection closed before use).
    pub unsent: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureDecision {
    /// Try again in the same pool (select runs again) after the backoff.
    Retry { backoff: Duration },
    /// Give up: pass the upstream response through if any, else 502/504.
    Fail,
}

/// Decides what happens after a failed attempt. The core only acts on `Retry` when attempts and
/// the retry budget allow it and the request is replayable or unsent.
pub trait FailoverPolicy: Send + Sync + 'static {
    fn on_failure(&self, attempt: &AttemptInfo) -> FailureDecision;
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
