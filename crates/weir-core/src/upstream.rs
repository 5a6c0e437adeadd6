//! Upstream endpoints: their live state (atomics the request path reads) and their pool of
//! keep-alive HTTP/1 connections.
//!
//! The pool is a bounded lock-free queue of `SendRequest` handles per endpoint (DESIGN §10: own
//! per-endpoint pool, not `legacy::Client`). A connection goes back to the queue when the
//! response *body* ends, so it is never handed to two requests at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_config::EndpointAddress;

use crate::body::UpBody;

pub type Sender = SendRequest<UpBody>;

/// Bumped whenever any endpoint's health or drain state changes: lets policy hosts cache a
/// pool's health column and refill it only when something changed.
pub static HEALTH_EPOCH: AtomicU64 = AtomicU64::new(1);

pub fn health_epoch() -> u64 {
    HEALTH_EPOCH.load(Ordering::Acquire)
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

/// Why an upstream connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out")]
    Timeout,
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("name resolution of {0} gave no address")]
    NoAddress(String),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// One upstream endpoint of a pool. Shared across generations while its address is unchanged,
/// so health, counters and pooled connections survive reloads.
#[derive(Debug)]
pub struct Endpoint {
    /// Stable for this endpoint across generations.
    pub id: u32,
    pub address: EndpointAddress,
    /// `address` as text, for logs, metrics and the admin API.
    pub label: String,
    pub zone: String,
    backup: AtomicBool,
    weight: AtomicU32,
    drained: AtomicBool,
    healthy: AtomicBool,
    in_flight: AtomicU32,
    requests: AtomicU64,
    idle: ArrayQueue<Idle>,
}

impl Endpoint {
    pub fn new(id: u32, cfg: &weir_config::Endpoint, max_idle: usize) -> Self {
        Endpoint {
            id,
            label: cfg.address.to_string(),
            address: cfg.address.clone(),
            zone: cfg.zone.clone(),
            backup: AtomicBool::new(cfg.backup),
            weight: AtomicU32::new(cfg.weight),
            drained: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            idle: ArrayQueue::new(max_idle.max(1)),
        }
    }

    /// Applies the config's static settings (weight, backup) to a kept endpoint.
    pub fn apply(&self, cfg: &weir_config::Endpoint) {
        self.weight.store(cfg.weight, Ordering::Relaxed);
        self.backup.store(cfg.backup, Ordering::Relaxed);
    }

    /// Takes new requests: healthy and not drained.
    pub fn is_eligible(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.drained.load(Ordering::Relaxed)
    }

    pub fn is_backup(&self) -> bool {
        self.backup.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn set_healthy(&self, v: bool) {
        if self.healthy.swap(v, Ordering::AcqRel) != v {
            HEALTH_EPOCH.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    pub fn set_drained(&self, v: bool) {
        if self.drained.swap(v, Ordering::AcqRel) != v {
            HEALTH_EPOCH.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn idle_connections(&self) -> usize {
        self.idle.len()
    }

    /// A pooled connection younger than `idle_timeout`, or a new one.
    /// Returns the sender and whether it was reused (an unsent request may be retried on a reused one).
    pub async fn checkout(
        &self,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> Result<(Sender, bool), ConnectError> {
        while let Some(mut idle) = self.idle.pop() {
            // `ready` is immediate for an idle connection; it only waits for one whose last
            // (empty) response the connection task is still finishing.
            if idle.since.elapsed() < idle_timeout && !idle.sender.is_closed() && idle.sender.ready().await.is_ok() {
                return Ok((idle.sender, true));
            }
        }
        Ok((self.connect(connect_timeout).await?, false))
    }

    /// Returns a connection whose response has been read to the end.
    pub fn checkin(&self, sender: Sender) {
        if !sender.is_closed() {
            // A full queue drops the connection: the pool is bounded.
            let _ = self.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Drops pooled connections idle for longer than `idle_timeout`.
    pub fn sweep_idle(&self, idle_timeout: Duration) {
        for _ in 0..self.idle.len() {
            match self.idle.pop() {
                Some(idle) if idle.since.elapsed() < idle_timeout && !idle.sender.is_closed() => {
                    let _ = self.idle.push(idle);
                }
                Some(_) => {}
                None => break,
            }
        }
    }

    async fn resolve(&self) -> Result<SocketAddr, ConnectError> {
        match &self.address {
            EndpointAddress::Socket(a) => Ok(*a),
            EndpointAddress::Host { host, port } => tokio::net::lookup_host((host.as_str(), *port))
                .await?
                .next()
                .ok_or_else(|| ConnectError::NoAddress(self.label.clone())),
        }
    }

    async fn connect(&self, connect_timeout: Duration) -> Result<Sender, ConnectError> {
        let connect = async {
            let addr = self.resolve().await?;
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (sender, conn) = hyper::client::conn::http1::Builder::new()
                .handshake::<_, UpBody>(TokioIo::new(stream))
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
            Ok::<_, ConnectError>(sender)
        };
        tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout)?
    }
}

/// Counts a request against an endpoint's in-flight number until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        endpoint.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(endpoint)
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
