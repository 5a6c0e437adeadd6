//! Upstream endpoints: their live state (atomics the request path reads) and their pool of
//! keep-alive HTTP/1 connections.
//!
//! The pool is a lock-free queue of idle [`UpConn`]s per endpoint (DESIGN §10: own per-endpoint
//! pool, connections driven inline by the request). A connection goes back to the queue when the
//! response *body* ends, so it is never handed to two requests at once. Its size follows demand:
//! the once-a-second sweep keeps as many connections as the last two seconds' peak of requests in
//! flight needed, and `max_idle_per_endpoint` once the traffic has gone (see [`Endpoint::sweep_idle`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_queue::SegQueue;
use tokio::net::TcpStream;
use tokio::time::Instant;
use weir_config::EndpointAddress;

use crate::h1client::{UpConn, UpStream};
use crate::upstream_tls::UpstreamTls;

/// Bumped whenever any endpoint's health or drain state changes: lets policy hosts cache a
/// pool's health column and refill it only when something changed.
pub static HEALTH_EPOCH: AtomicU64 = AtomicU64::new(1);

/// The latest end of any passive outage (ms on [`now_ms`]); outages end by time, not by an event.
static PASSIVE_UNTIL: AtomicU64 = AtomicU64::new(0);

/// A key that changes whenever any endpoint's eligibility may have changed: on every health or
/// drain event, and every 50 ms while a passive outage is pending (they end by time).
pub fn health_epoch() -> u64 {
    let base = HEALTH_EPOCH.load(Ordering::Acquire);
    let until = PASSIVE_UNTIL.load(Ordering::Relaxed);
    if until == 0 {
        return base;
    }
    let now = now_ms();
    if now <= until {
        base ^ ((now / 50 + 1) << 32)
    } else {
        base ^ (1 << 63)
    }
}

/// How fast an endpoint's latency EWMA fades while it gets no traffic.
pub const LATENCY_HALF_LIFE_MS: u64 = 1000;

#[derive(Debug)]
struct Idle {
    conn: UpConn,
    /// When it was checked in, on [`coarse_ms`]'s clock.
    since_ms: u64,
}

/// Where [`Endpoint::checkout`]'s connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// From the idle pool, at once: no time passed since the caller's last clock reading.
    Idle,
    /// From the idle pool, after waiting for one (no port or descriptor for a new one).
    AfterWait,
    /// Opened for this request.
    New,
}

impl Taken {
    /// Whether the connection has carried requests before (an unsent request may go again).
    pub fn reused(self) -> bool {
        self != Taken::New
    }
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
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

/// Warns that weir ran out of local ports or file descriptors, at most once a second for the
/// whole process: it is the host's state, and under load it would fail thousands of
/// connects a second.
fn warn_local_resources(endpoint: &str, e: &ConnectError) {
    static LAST_MS: AtomicU64 = AtomicU64::new(0);
    if once_a_second(&LAST_MS) {
        tracing::warn!(endpoint = %endpoint, error = %e, "no local resource to open an upstream connection (ephemeral ports or file descriptors exhausted); the endpoint is not blamed");
    }
}

/// Whether a second has passed since the last time this said so for `last_ms` (then it
/// stamps it): for warnings that would otherwise come with every request.
pub fn once_a_second(last_ms: &AtomicU64) -> bool {
    let now = coarse_ms().max(1);
    let last = last_ms.load(Ordering::Relaxed);
    (last == 0 || now.saturating_sub(last) >= 1000)
        && last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
}

impl ConnectError {
    /// weir itself had no local port, file descriptor or socket memory to connect with: the
    /// endpoint was never reached, so this says nothing of its health. Ephemeral ports run
    /// out when connections to one address are opened and closed faster than TIME_WAIT
    /// frees them (another proxy on the host churning, a burst far above the pooled
    /// connections); file descriptors when `ulimit -n` is low for the load.
    pub fn is_local(&self) -> bool {
        use rustix::io::Errno;
        let ConnectError::Io(e) = self else {
            return false;
        };
        matches!(
            Errno::from_io_error(e),
            Some(Errno::ADDRNOTAVAIL | Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
        )
    }
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
    /// For one address of a name in a `resolve = "all"` pool: the name (`host:port`), which
    /// TLS verifies and health checks send as `Host`, and by which the admin API finds every
    /// endpoint of it.
    pub name: Option<EndpointAddress>,
    pub zone: String,
    backup: AtomicBool,
    weight: AtomicU32,
    /// Set by the admin API: the weight survives reloads until set again.
    weight_overridden: AtomicBool,
    drained: AtomicBool,
    /// The active health checks' verdict (true when the pool has no checks).
    healthy: AtomicBool,
    /// Passive health (nginx `max_fails` / `fail_timeout`): failures in the current window,
    /// when the window started, until when the endpoint is out, and whether the next attempt
    /// after an outage is a single probe.
    fails: AtomicU32,
    window_start_ms: AtomicU64,
    down_until_ms: AtomicU64,
    probation: AtomicBool,
    in_flight: AtomicU32,
    /// `max_in_flight` (0: no limit), and the queue of its pool, where requests wait for a
    /// slot (`slots.rs`).
    max_in_flight: AtomicU32,
    pub queue: Arc<crate::slots::PoolQueue>,
    /// How long attempts took to get their response head: an EWMA in µs and when it was last
    /// fed (on [`now_ms`]'s clock). `least-request` breaks ties between endpoints with
    /// equal requests in flight by it.
    latency_us: AtomicU32,
    latency_at_ms: AtomicU64,
    requests: AtomicU64,
    pub checks_ok: AtomicU64,
    pub checks_failed: AtomicU64,
    /// Why the last active check failed; cleared by a pass. The admin API shows it, so an
    /// endpoint kept out by a check it never passed (a wrong path, port or `expect_body`) says why.
    check_error: arc_swap::ArcSwapOption<String>,
    attempts: [AtomicU64; crate::metrics::ATTEMPT_OUTCOMES.len()],
    /// The last good lookup of a `host:port` endpoint (every address, in the resolver's order),
    /// refreshed every `resolve_interval`.
    resolved: arc_swap::ArcSwapOption<Vec<SocketAddr>>,
    /// Which of `resolved` took the last new connection: the next one tries it first.
    preferred: AtomicUsize,
    /// Whether the last TLS handshake with it failed: logged when handshakes start failing
    /// (a wrong CA or name is a config problem to see at once) and when one succeeds again.
    tls_failing: AtomicBool,
    /// Unbounded, and allocated as it fills (blocks of 31 slots): the sweep bounds it.
    idle: SegQueue<Idle>,
    /// Requests waiting for a pooled connection because weir had no port or descriptor to
    /// open one ([`Endpoint::checkout`]); a checkin wakes one of them.
    idle_returned: crate::freed::Freed,
    /// The most requests in flight at once since the last sweep.
    peak_in_flight: AtomicU32,
    /// The same for the sweep period before: the pool keeps what either period needed.
    previous_peak: AtomicU32,
    /// `max_idle_per_endpoint`: the idle connections kept once the traffic has gone.
    max_idle: usize,
    /// The connection of a `protocol = "h2"` pool, which every request to it shares.
    pub h2: crate::h2client::H2Slot,
    /// Whether the upstream closes idle connections unannounced, and how long they live.
    pub idle_closes: crate::idle_closes::IdleCloses,
}

/// Milliseconds on the kernel's coarse monotonic clock, which advances once a scheduler tick
/// (4 ms here): plenty for idle timeouts counted in seconds. Each request stamps its connection
/// on checkin and reads the stamp on checkout: with `Instant` (two precise reads) the pool's
/// round trip took 254-260 ns on this VM, with this clock 154-156 ns
/// (`cargo bench --bench hot_path -- upstream/pool`).
pub(crate) fn coarse_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let ms = u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000;
    secs.saturating_mul(1000).saturating_add(ms)
}

fn clock_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// Milliseconds on a process-local monotonic clock.
pub fn now_ms() -> u64 {
    u64::try_from(clock_start().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// `t` on [`now_ms`]'s clock.
pub fn ms_at(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(clock_start()).as_millis()).unwrap_or(u64::MAX)
}

impl Endpoint {
    /// `healthy`: false for an endpoint of a pool with active checks, which takes no traffic
    /// until its first passed check.
    pub fn new(id: u32, cfg: &weir_config::Endpoint, max_idle: usize, healthy: bool) -> Self {
        Endpoint {
            id,
            label: cfg.address.to_string(),
            address: cfg.address.clone(),
            name: None,
            zone: cfg.zone.clone(),
            backup: AtomicBool::new(cfg.backup),
            weight: AtomicU32::new(cfg.weight),
            weight_overridden: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            healthy: AtomicBool::new(healthy),
            fails: AtomicU32::new(0),
            window_start_ms: AtomicU64::new(0),
            down_until_ms: AtomicU64::new(0),
            probation: AtomicBool::new(false),
            in_flight: AtomicU32::new(0),
            max_in_flight: AtomicU32::new(cfg.max_in_flight),
            queue: Arc::default(),
            latency_us: AtomicU32::new(0),
            latency_at_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            checks_ok: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            check_error: arc_swap::ArcSwapOption::empty(),
            attempts: Default::default(),
            resolved: arc_swap::ArcSwapOption::empty(),
            preferred: AtomicUsize::new(0),
            tls_failing: AtomicBool::new(false),
            idle: SegQueue::new(),
            idle_returned: crate::freed::Freed::default(),
            peak_in_flight: AtomicU32::new(0),
            previous_peak: AtomicU32::new(0),
            max_idle: max_idle.max(1),
            h2: crate::h2client::H2Slot::default(),
            idle_closes: Default::default(),
        }
    }

    /// Applies the config's static settings (weight, backup) to a kept endpoint.
    pub fn apply(&self, cfg: &weir_config::Endpoint) {
        if !self.weight_overridden.load(Ordering::Relaxed) {
            self.weight.store(cfg.weight, Ordering::Relaxed);
        }
        self.backup.store(cfg.backup, Ordering::Relaxed);
        if self.max_in_flight.swap(cfg.max_in_flight, Ordering::Relaxed) != cfg.max_in_flight {
            // A raised (or lifted) limit may have room for requests waiting now.
            self.queue.limit_changed();
        }
    }

    /// `max_in_flight`; 0 when it has none.
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    pub fn count_attempt(&self, outcome: crate::metrics::AttemptOutcome) {
        self.attempts[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn attempts(&self, outcome: crate::metrics::AttemptOutcome) -> u64 {
        self.attempts[outcome as usize].load(Ordering::Relaxed)
    }

    /// Sets the weight at runtime (admin API); it survives reloads.
    pub fn override_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
        self.weight_overridden.store(true, Ordering::Relaxed);
    }

    /// Takes new requests: healthy (active and passive) and not drained.
    pub fn is_eligible(&self) -> bool {
        self.is_healthy() && !self.drained.load(Ordering::Relaxed)
    }

    /// Out because of passive health (`max_fails` within `fail_timeout`).
    pub fn passively_down(&self) -> bool {
        let until = self.down_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// A failed attempt (connect error, timeout, reset, or a status the pool counts); `cause`
    /// says which, for the warning when it takes the endpoint out.
    pub fn record_failure(&self, passive: &weir_config::Passive, cause: std::fmt::Arguments<'_>) {
        if passive.max_fails == 0 {
            return;
        }
        let now = now_ms();
        // Already out: the other requests that were in flight when it went (a crashed replica
        // fails them all at once) say nothing new, and neither extend the outage nor log it again.
        if self.down_until_ms.load(Ordering::Relaxed) > now {
            return;
        }
        let timeout = u64::try_from(passive.fail_timeout.as_millis()).unwrap_or(u64::MAX);
        let probing = self.probation.swap(false, Ordering::AcqRel);
        let start = self.window_start_ms.load(Ordering::Relaxed);
        let fails = if now.saturating_sub(start) > timeout {
            self.window_start_ms.store(now, Ordering::Relaxed);
            self.fails.store(1, Ordering::Relaxed);
            1
        } else {
            self.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if probing || fails >= passive.max_fails {
            // Two failures racing here: the first takes it out, the other has nothing to add.
            if self.down_until_ms.fetch_max(now + timeout, Ordering::AcqRel) > now {
                return;
            }
            PASSIVE_UNTIL.fetch_max(now + timeout, Ordering::Relaxed);
            self.fails.store(0, Ordering::Relaxed);
            self.window_start_ms.store(0, Ordering::Relaxed);
            // After the outage, one attempt decides: a failure takes it out again at once.
            self.probation.store(true, Ordering::Release);
            HEALTH_EPOCH.fetch_add(1, Ordering::AcqRel);
            tracing::warn!(endpoint = %self.label, fails, fail_timeout_ms = timeout, last_failure = %cause, "endpoint unavailable (passive health)");
        }
    }

    /// Forgets passive health: the endpoint became its pool's only one, which passive health
    /// never takes out (nginx ignores `max_fails` for a lone server).
    pub fn clear_passive(&self) {
        self.fails.store(0, Ordering::Relaxed);
        self.window_start_ms.store(0, Ordering::Relaxed);
        self.probation.store(false, Ordering::Relaxed);
        if self.down_until_ms.swap(0, Ordering::AcqRel) > now_ms() {
            HEALTH_EPOCH.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// A successful attempt: the failure count starts over.
    pub fn record_success(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
        if self.probation.load(Ordering::Relaxed) {
            self.probation.store(false, Ordering::Relaxed);
            tracing::info!(endpoint = %self.label, "endpoint available again (passive health)");
        }
    }

    pub fn is_backup(&self) -> bool {
        self.backup.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.passively_down()
    }

    /// The active checks' verdict alone.
    pub fn actively_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Why the last active check failed, unless one passed since.
    pub fn check_error(&self) -> Option<Arc<String>> {
        self.check_error.load_full()
    }

    pub fn set_check_error(&self, reason: Option<String>) {
        self.check_error.store(reason.map(Arc::new));
    }

    pub fn set_healthy(&self, v: bool) {
        if self.healthy.swap(v, Ordering::AcqRel) != v {
            HEALTH_EPOCH.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains the endpoint (or takes it back). Draining also closes its idle connections, and
    /// the others as their requests end ([`Endpoint::checkin`], and the sweep for HTTP/2
    /// ones): a replica being stopped for a rolling update sees weir let go of it once its
    /// last response is out, instead of `timeouts.idle` later (a server that waits for its
    /// keep-alive connections to close, as Node's did, waited that long too).
    pub fn set_drained(&self, v: bool) {
        if self.drained.swap(v, Ordering::AcqRel) != v {
            HEALTH_EPOCH.fetch_add(1, Ordering::AcqRel);
            if v {
                while self.idle.pop().is_some() {}
                self.h2.sweep(Duration::ZERO);
            }
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Feeds the latency EWMA with one attempt's time to its response head, taken at `at`
    /// (each sample weighs a quarter). The caller's clock reading serves both: no other.
    pub fn record_latency(&self, took: Duration, at: Instant) {
        let sample = u32::try_from(took.as_micros()).unwrap_or(u32::MAX).max(1);
        let now = ms_at(at);
        let old = self.latency_us_at(now);
        let new = if old == 0 {
            sample
        } else {
            u32::try_from((u64::from(old) * 3 + u64::from(sample)) / 4).unwrap_or(u32::MAX)
        };
        self.latency_us.store(new, Ordering::Relaxed);
        self.latency_at_ms.store(now, Ordering::Relaxed);
    }

    /// The latency EWMA in µs at `now` (on [`now_ms`]'s clock); 0 before any sample. It
    /// halves for every [`LATENCY_HALF_LIFE_MS`] without a sample, so an endpoint passed over
    /// for being slow is tried again, and measured again, once it has had time to recover.
    pub fn latency_us_at(&self, now: u64) -> u32 {
        let v = self.latency_us.load(Ordering::Relaxed);
        let age = now.saturating_sub(self.latency_at_ms.load(Ordering::Relaxed));
        let halvings = age / LATENCY_HALF_LIFE_MS;
        if halvings >= 32 { 0 } else { v >> halvings }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn idle_connections(&self) -> usize {
        self.idle.len()
    }

    /// A pooled connection younger than `idle_timeout` and still open, or a new one.
    /// Returns the connection and where it came from ([`Taken`]: an unsent request may be
    /// retried on a reused one).
    ///
    /// With `proxy` (a `send_proxy` pool) a connection opens with a PROXY header naming the
    /// client, so only a connection opened for the same client (address and port: in practice
    /// its own client connection) is reused.
    ///
    /// A request that could not go again if its connection turned out closed (`can_go_again`
    /// false: not idempotent, or its body streamed) takes only a connection young enough to be
    /// safe from an upstream that closes idle ones unannounced ([`crate::idle_closes`]),
    /// unless no new connection can be opened (no free port or descriptor) and none young
    /// enough comes back within `connect_timeout`: then an older one, rather than a 503.
    pub async fn checkout(
        &self,
        connect_timeout: Duration,
        idle_timeout: Duration,
        can_go_again: bool,
        proxy: Option<crate::proxy_protocol::Out>,
        tls: Option<&UpstreamTls>,
    ) -> Result<(UpConn, Taken), ConnectError> {
        let tls_id = tls.map_or(0, |t| t.id);
        let younger_than = if can_go_again {
            None
        } else {
            self.idle_closes.safe_idle_ms()
        };
        match proxy {
            None => {
                if let Some(conn) = self.take_idle(idle_timeout, tls_id, younger_than) {
                    return Ok((conn, Taken::Idle));
                }
            }
            Some(p) => {
                if let Some(conn) = self.take_idle_for(p.client, idle_timeout, tls_id) {
                    return Ok((conn, Taken::Idle));
                }
            }
        }
        // Boxed: a new connection is the rare case; its state would sit in every request's.
        match Box::pin(self.connect(connect_timeout, proxy, tls)).await {
            Ok(conn) => Ok((conn, Taken::New)),
            // No port or descriptor for a new connection: one of those in use, when its
            // response is done, serves as well (a `send_proxy` pool's are each a client's).
            Err(e) if e.is_local() && proxy.is_none() => {
                let returned = self
                    .idle_returned
                    .within(connect_timeout, || self.take_idle(idle_timeout, tls_id, younger_than));
                match Box::pin(returned).await {
                    Some(conn) => Ok((conn, Taken::AfterWait)),
                    // None came back young enough for a request that cannot go again: one older
                    // than its limit (the upstream may have closed it) beats a sure 503.
                    None => match younger_than.and_then(|_| self.take_idle(idle_timeout, tls_id, None)) {
                        Some(conn) => Ok((conn, Taken::AfterWait)),
                        None => Err(e),
                    },
                }
            }
            Err(e) => Err(e),
        }
    }

    /// A usable pooled connection for any client, dropping the unusable ones it finds first.
    /// With `younger_than`, one that has idled no longer than that many milliseconds: older
    /// ones, good for other requests, go back to the end of the queue (each is looked at once).
    fn take_idle(&self, idle_timeout: Duration, tls_id: u64, younger_than: Option<u64>) -> Option<UpConn> {
        let mut left_for_others = 0;
        while let Some(mut idle) = self.idle.pop() {
            let Some(age) = self.usable_age(&mut idle, idle_timeout) else {
                continue;
            };
            // One a reload left from `send_proxy` days names a client: not for others;
            // one made with other TLS settings (or none) is not for this generation.
            if idle.conn.proxied_for.is_some() || idle.conn.tls_id != tls_id {
                continue;
            }
            if younger_than.is_some_and(|max| age > max) {
                self.idle.push(idle);
                left_for_others += 1;
                if left_for_others >= self.idle.len() {
                    return None;
                }
                continue;
            }
            idle.conn.set_idle_before_ms(age);
            return Some(idle.conn);
        }
        None
    }

    /// How long a pooled connection has idled, when it can still carry a request: younger than
    /// `idle_timeout` and than the upstream's own idle timeout where it announced one, and not
    /// closed by the upstream (a close is told to [`crate::idle_closes`]).
    fn usable_age(&self, idle: &mut Idle, idle_timeout: Duration) -> Option<u64> {
        let age = coarse_ms().saturating_sub(idle.since_ms);
        if u128::from(age) >= idle_timeout.as_millis() || age >= u64::from(idle.conn.idle_limit_ms()) {
            return None;
        }
        if !idle.conn.is_idle_usable() {
            self.closed_while_idle(age);
            return None;
        }
        Some(age)
    }

    /// The upstream closed a pooled connection after it idled `age_ms` (found in the pool, or
    /// as a request it carried was lost).
    pub fn closed_while_idle(&self, age_ms: u64) {
        if self.idle_closes.closed(age_ms) {
            tracing::info!(
                endpoint = %self.label,
                idle_ms = age_ms,
                "the upstream closes idle connections without announcing when: requests that cannot be sent again now take only connections younger than it has been seen to keep"
            );
        }
    }

    /// A usable pooled connection opened for `client`. Looks at each pooled connection at most
    /// once: the others go back to the end of the queue, stale ones are dropped.
    fn take_idle_for(&self, client: SocketAddr, idle_timeout: Duration, tls_id: u64) -> Option<UpConn> {
        for _ in 0..self.idle.len() {
            let Some(mut idle) = self.idle.pop() else { break };
            let Some(age) = self.usable_age(&mut idle, idle_timeout) else {
                continue;
            };
            if idle.conn.proxied_for == Some(client) && idle.conn.tls_id == tls_id {
                idle.conn.set_idle_before_ms(age);
                return Some(idle.conn);
            }
            self.idle.push(idle);
        }
        None
    }

    /// A new connection, never a pooled one: for a request whose pooled connection turned out
    /// to be closed by the upstream (the others in the pool may be too).
    pub async fn connect_new(
        &self,
        connect_timeout: Duration,
        proxy: Option<crate::proxy_protocol::Out>,
        tls: Option<&UpstreamTls>,
    ) -> Result<UpConn, ConnectError> {
        Box::pin(self.connect(connect_timeout, proxy, tls)).await
    }

    /// Returns a connection whose response has been read to the end (closes it when the
    /// endpoint is drained). There is one per request in flight at most, so the queue holds no
    /// more than the peak of those; the sweep trims it.
    pub fn checkin(&self, conn: UpConn) {
        if self.is_drained() {
            return;
        }
        self.idle.push(Idle {
            conn,
            since_ms: coarse_ms(),
        });
        self.idle_returned.wake_one();
    }

    /// Called about once a second: drops pooled connections idle for longer than `idle_timeout`
    /// or closed by the upstream, then the oldest beyond what demand needs.
    ///
    /// Demand is the peak of requests in flight over the last two sweep periods (HAProxy sizes
    /// its idle pools by a recent peak the same way; one period alone let the pool shrink to one
    /// second's peak and open connections again whenever the next one was a few higher).
    /// Traffic with more requests in flight than `max_idle_per_endpoint` (an HTTP/2 client
    /// multiplexing hundreds of streams) keeps its connections as long as it lasts; a pool
    /// trimmed to the cap instead closed them and opened them again a moment later, hundreds a
    /// second under `h2load -c64 -m10`, each one a socket left in TIME_WAIT for a minute. Once
    /// the traffic has gone, the third sweep is back at the cap.
    pub fn sweep_idle(&self, idle_timeout: Duration) {
        // A drained endpoint keeps no idle connection.
        let idle_timeout = if self.is_drained() {
            Duration::ZERO
        } else {
            idle_timeout
        };
        self.h2.sweep(idle_timeout);
        for _ in 0..self.idle.len() {
            match self.idle.pop() {
                Some(mut idle) => {
                    if let Some(age) = self.usable_age(&mut idle, idle_timeout) {
                        self.idle_closes.survived(age);
                        self.idle.push(idle);
                    }
                }
                None => break,
            }
        }
        let in_use = self.in_flight.load(Ordering::Relaxed);
        let last = self.peak_in_flight.swap(in_use, Ordering::Relaxed);
        // Only the sweep writes `previous_peak`: the swap hands this period's peak to the next.
        let peak = self.previous_peak.swap(last, Ordering::Relaxed).max(last).max(in_use);
        let keep = self.max_idle.max((peak - in_use) as usize);
        while self.idle.len() > keep {
            drop(self.idle.pop());
        }
    }

    /// Opens a TCP connection to the endpoint, on `port` instead of its own when given (a health
    /// check's). An `ip:port` is connected to directly. A `host:port` uses the last good lookup
    /// (looked up on first use) and tries its addresses in turn, starting with the one that
    /// took the last traffic connection, until one accepts: a name whose first address refuses
    /// (`localhost` as `::1` in front of an upstream bound to `127.0.0.1`) still reaches the
    /// upstream. The tries share `budget`, each getting an equal part of what is left, so an
    /// address that drops the connection attempt (no answer at all) does not use up the time of
    /// the others. Returns the address connected to.
    pub async fn open(&self, port: Option<u16>, budget: Duration) -> Result<(TcpStream, SocketAddr), ConnectError> {
        let on_port = |mut a: SocketAddr| {
            if let Some(p) = port {
                a.set_port(p);
            }
            a
        };
        let addrs = match &self.address {
            EndpointAddress::Socket(a) => {
                let a = on_port(*a);
                return Ok((TcpStream::connect(a).await?, a));
            }
            EndpointAddress::Host { .. } => match self.resolved.load_full() {
                Some(addrs) => addrs,
                None => self.refresh_address().await?,
            },
        };
        let n = addrs.len();
        let first = self.preferred.load(Ordering::Relaxed) % n.max(1);
        let deadline = Instant::now() + budget;
        let mut last = None;
        for k in 0..n {
            let i = (first + k) % n;
            let a = on_port(addrs[i]);
            let share = deadline.saturating_duration_since(Instant::now()) / u32::try_from(n - k).unwrap_or(u32::MAX);
            let error = match tokio::time::timeout(share, TcpStream::connect(a)).await {
                Ok(Ok(stream)) => {
                    // Only traffic moves the preference: a check port says nothing of it.
                    if i != first && port.is_none() {
                        self.preferred.store(i, Ordering::Relaxed);
                    }
                    return Ok((stream, a));
                }
                Ok(Err(e)) => ConnectError::Io(e),
                Err(_) => ConnectError::Timeout,
            };
            tracing::debug!(endpoint = %self.label, addr = %a, error = %error, "connect failed; trying the next address");
            last = Some(error);
        }
        Err(last.unwrap_or_else(|| ConnectError::NoAddress(self.label.clone())))
    }

    /// Looks the hostname up again; a failure keeps the last good addresses.
    pub async fn refresh_address(&self) -> Result<Arc<Vec<SocketAddr>>, ConnectError> {
        let (host, port) = match &self.address {
            EndpointAddress::Host { host, port } => (host, port),
            EndpointAddress::Socket(a) => return Ok(Arc::new(vec![*a])),
        };
        match crate::dns::look_up(host, *port).await {
            Ok(addrs) => Ok(self.set_addresses(addrs)),
            Err(_) => self
                .resolved
                .load_full()
                .ok_or_else(|| ConnectError::NoAddress(self.label.clone())),
        }
    }

    /// A hostname's addresses from its last good lookup, in the order a new connection tries
    /// them; `None` for an `ip:port` endpoint or a name not looked up yet.
    pub fn resolved_addresses(&self) -> Option<Vec<SocketAddr>> {
        let addrs = self.resolved.load_full()?;
        let first = self.preferred.load(Ordering::Relaxed) % addrs.len().max(1);
        Some(addrs[first..].iter().chain(&addrs[..first]).copied().collect())
    }

    /// Keeps a lookup's addresses; the current ones, preference included, when it found the same
    /// addresses (a DNS server rotating its answers gives them in a new order every time).
    fn set_addresses(&self, addrs: Vec<SocketAddr>) -> Arc<Vec<SocketAddr>> {
        if let Some(current) = self.resolved.load_full()
            && current.len() == addrs.len()
            && addrs.iter().all(|a| current.contains(a))
        {
            return current;
        }
        let addrs = Arc::new(addrs);
        let previous = self.resolved.swap(Some(addrs.clone()));
        self.preferred.store(0, Ordering::Relaxed);
        if previous.is_some() {
            tracing::info!(endpoint = %self.label, addresses = ?addrs, "endpoint addresses changed");
        }
        addrs
    }

    pub fn is_hostname(&self) -> bool {
        matches!(self.address, EndpointAddress::Host { .. })
    }

    async fn connect(
        &self,
        connect_timeout: Duration,
        proxy: Option<crate::proxy_protocol::Out>,
        tls: Option<&UpstreamTls>,
    ) -> Result<UpConn, ConnectError> {
        let stream = self.connect_stream(connect_timeout, proxy, tls).await?;
        let mut conn = UpConn::new(stream);
        conn.tls_id = tls.map_or(0, |t| t.id);
        conn.proxied_for = proxy.map(|p| p.client);
        Ok(conn)
    }

    /// A new traffic connection's socket, TLS handshake done, within `connect_timeout`; for
    /// the HTTP/1.1 pool and the HTTP/2 connection alike.
    pub(crate) async fn connect_stream(
        &self,
        connect_timeout: Duration,
        proxy: Option<crate::proxy_protocol::Out>,
        tls: Option<&UpstreamTls>,
    ) -> Result<UpStream, ConnectError> {
        let connect = async {
            let (mut stream, addr) = self.open(None, connect_timeout).await?;
            stream.set_nodelay(true)?;
            if let Some(p) = &proxy {
                // Its own segment, once per connection; the connect timeout covers it.
                tokio::io::AsyncWriteExt::write_all(&mut stream, &p.header()).await?;
            }
            // The handshake is part of connecting: the connect timeout covers it too.
            let Some(t) = tls else {
                return Ok(UpStream::from(stream));
            };
            match t
                .connect(stream, self.name.as_ref().unwrap_or(&self.address), addr)
                .await
            {
                Ok(s) => {
                    if self.tls_failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(endpoint = %self.label, %addr, "TLS handshakes succeed again");
                    }
                    Ok(UpStream::from(s))
                }
                Err(e) => {
                    if self.tls_failing.swap(true, Ordering::Relaxed) {
                        tracing::debug!(endpoint = %self.label, %addr, error = %e, "TLS handshake failed");
                    } else {
                        tracing::warn!(endpoint = %self.label, %addr, error = %e, "TLS handshake failed (logged again when one succeeds)");
                    }
                    Err(ConnectError::Tls(e))
                }
            }
        };
        let connected = tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| ConnectError::Timeout)?;
        if let Err(e) = &connected
            && e.is_local()
        {
            warn_local_resources(&self.label, e);
        }
        connected
    }
}

/// Counts a request against an endpoint's in-flight number until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    /// Counts the request unless the endpoint is at its `max_in_flight`: `None` then. Checked
    /// on the count itself, so that requests racing for the last slot cannot both have it.
    pub fn try_new(endpoint: Arc<Endpoint>) -> Option<Self> {
        let now = endpoint.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        let max = endpoint.max_in_flight.load(Ordering::Relaxed);
        if max != 0 && now > max {
            // Another request may have found it full because of this one's passing count: if a
            // slot is free once it is taken back, the queue looks again. (Not otherwise: a
            // waiting request that finds it full would wake the next, and so on.)
            if endpoint.in_flight.fetch_sub(1, Ordering::AcqRel) - 1 < max {
                endpoint.queue.slot_freed();
            }
            return None;
        }
        // A load first: in steady traffic the peak is rarely passed, and a plain load keeps the
        // line shared between cores.
        if now > endpoint.peak_in_flight.load(Ordering::Relaxed) {
            endpoint.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        }
        endpoint.requests.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(endpoint))
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.0.max_in_flight.load(Ordering::Relaxed) != 0 {
            self.0.queue.slot_freed();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn endpoint(address: EndpointAddress) -> Endpoint {
        Endpoint::new(1, &weir_config::Endpoint::at(address), 1, true)
    }

    #[test]
    fn only_this_hosts_own_shortages_are_local_connect_errors() {
        let io = |errno: rustix::io::Errno| ConnectError::Io(std::io::Error::from_raw_os_error(errno.raw_os_error()));
        use rustix::io::Errno;
        for errno in [
            Errno::ADDRNOTAVAIL,
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOBUFS,
            Errno::NOMEM,
        ] {
            assert!(io(errno).is_local(), "{errno:?}");
        }
        for errno in [
            Errno::CONNREFUSED,
            Errno::HOSTUNREACH,
            Errno::NETUNREACH,
            Errno::CONNRESET,
        ] {
            assert!(!io(errno).is_local(), "{errno:?}");
        }
        assert!(!ConnectError::Timeout.is_local());
        assert!(!ConnectError::Tls(std::io::Error::from_raw_os_error(Errno::MFILE.raw_os_error())).is_local());
    }

    /// A `host:port` endpoint; the tests set its lookup's addresses themselves, as no name
    /// resolves to several loopback addresses on every machine.
    fn named(port: u16) -> Endpoint {
        endpoint(EndpointAddress::Host {
            host: "localhost".into(),
            port,
        })
    }

    /// A loopback address nothing listens on (bound, then closed): a connect is refused at once.
    fn refusing() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[tokio::test]
    async fn a_name_whose_first_address_refuses_reaches_the_next_and_keeps_to_it() {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        let dead = refusing();
        let e = named(up_addr.port());
        e.set_addresses(vec![dead, up_addr]);
        let (_conn, at) = e.open(None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(at, up_addr);
        up.accept().await.unwrap();
        // The first address listens now: the next connection still goes where the last one
        // did, without a try on the first.
        let revived = tokio::net::TcpListener::bind(dead).await.unwrap();
        let (_conn, at) = e.open(None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(at, up_addr);
        up.accept().await.unwrap();
        assert_eq!(e.resolved_addresses(), Some(vec![up_addr, dead]));
        // Another lookup starts from its first address again.
        e.set_addresses(vec![dead, up_addr, refusing()]);
        let (_conn, at) = e.open(None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(at, dead);
        revived.accept().await.unwrap();
    }

    /// A loopback listener whose accept queue is full: the kernel drops a new connection's
    /// SYN, so a connect to it gets no answer at all, as to an address that blackholes it.
    fn unanswering() -> (tokio::net::TcpListener, std::net::TcpStream) {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let listener = socket.listen(0).unwrap();
        // Never accepted: it fills the queue of a backlog of 0.
        let queued = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener, queued)
    }

    #[tokio::test]
    async fn an_address_that_never_answers_leaves_the_others_their_share_of_the_budget() {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        let (silent, _queued) = unanswering();
        let e = named(up_addr.port());
        e.set_addresses(vec![silent.local_addr().unwrap(), up_addr]);
        // The first address gets half of the 2 s and the second the rest; without shares the
        // first would take all of it (here: hang until this test's own bound).
        let opened = tokio::time::timeout(Duration::from_secs(10), e.open(None, Duration::from_secs(2)))
            .await
            .expect("open returned within its budget");
        assert_eq!(opened.unwrap().1, up_addr);
        up.accept().await.unwrap();
        // Only silent addresses: a timeout, as for a single address.
        e.set_addresses(vec![silent.local_addr().unwrap()]);
        let opened = tokio::time::timeout(Duration::from_secs(10), e.open(None, Duration::from_millis(200)))
            .await
            .expect("open returned within its budget");
        assert!(matches!(opened, Err(ConnectError::Timeout)), "{opened:?}");
    }

    #[tokio::test]
    async fn the_same_addresses_in_another_order_keep_the_preference() {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        let (d1, d2) = (refusing(), refusing());
        let e = named(up_addr.port());
        e.set_addresses(vec![d1, up_addr, d2]);
        let (_conn, at) = e.open(None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(at, up_addr);
        up.accept().await.unwrap();
        assert_eq!(e.resolved_addresses(), Some(vec![up_addr, d2, d1]));
        // A DNS server rotating its answer: the same three addresses, another order.
        e.set_addresses(vec![d2, d1, up_addr]);
        assert_eq!(e.resolved_addresses(), Some(vec![up_addr, d2, d1]));
    }

    #[tokio::test]
    async fn a_check_port_is_tried_on_each_address_and_leaves_the_preference_alone() {
        let check = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = check.local_addr().unwrap().port();
        // Traffic on 127.0.0.1 and 127.0.0.2, the check port open on 127.0.0.2 only.
        let e = named(1);
        e.set_addresses(vec![
            SocketAddr::from(([127, 0, 0, 1], 1)),
            SocketAddr::from(([127, 0, 0, 2], 1)),
        ]);
        let (_conn, at) = e.open(Some(port), Duration::from_secs(5)).await.unwrap();
        assert_eq!(at, SocketAddr::from(([127, 0, 0, 2], port)));
        check.accept().await.unwrap();
        assert_eq!(e.preferred.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn when_every_address_refuses_the_error_is_the_last_connect_error() {
        let e = named(1);
        e.set_addresses(vec![refusing(), refusing()]);
        match e.open(None, Duration::from_secs(5)).await {
            Err(ConnectError::Io(err)) => assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_latency_ewma_weighs_each_sample_a_quarter_and_fades_without_traffic() {
        let e = endpoint(EndpointAddress::Socket(SocketAddr::from(([127, 0, 0, 1], 1))));
        let t = Instant::now();
        let now = ms_at(t);
        assert_eq!(e.latency_us_at(now), 0);
        e.record_latency(Duration::from_micros(800), t);
        assert_eq!(e.latency_us_at(now), 800);
        e.record_latency(Duration::from_micros(400), t);
        assert_eq!(e.latency_us_at(now), 700);
        // Two half-lives later.
        let at = now;
        assert_eq!(e.latency_us_at(at + 2 * LATENCY_HALF_LIFE_MS), 175);
        assert_eq!(e.latency_us_at(at + 40 * LATENCY_HALF_LIFE_MS), 0);
    }

    #[tokio::test]
    async fn an_ip_endpoint_connects_directly_on_its_own_or_the_check_port() {
        let up = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up_addr = up.local_addr().unwrap();
        let e = endpoint(EndpointAddress::Socket(SocketAddr::from(([127, 0, 0, 1], 1))));
        let (_conn, at) = e.open(Some(up_addr.port()), Duration::from_secs(5)).await.unwrap();
        assert_eq!(at, up_addr);
        up.accept().await.unwrap();
    }
}
