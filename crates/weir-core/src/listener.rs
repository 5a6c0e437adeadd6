//! Listeners: bind, accept (bounded by `max_connections`: accept pauses, nothing crashes), TLS,
//! and the choice of protocol per connection (ALPN with TLS; the h2 preface on plain ports,
//! DESIGN §10: per-connection builders beat the auto builder). HTTP/1 connections go through the
//! strict front ([`crate::front`]), HTTP/2 ones through hyper's server (`h2_server.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::front::{ClientIo, HeadLimits, Settings};
use crate::proxy::ConnInfo;
use crate::state::Shared;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long a stopping listener lets an HTTP/1 keep-alive connection send one more request
/// (answered with `Connection: close`) before closing it if idle: closing an idle keep-alive
/// connection at once would race the client's next request (which then fails).
const H1_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A bound listener. Its socket outlives generations; its settings are read from the current
/// generation when a connection is accepted.
pub struct ListenerHandle {
    pub name: Arc<str>,
    pub local_addr: SocketAddr,
    /// Shared with the accept loop; the binary upgrade hands its descriptor to the new process.
    pub socket: Arc<TcpListener>,
    pub tls: Option<Arc<ArcSwap<ServerConfig>>>,
    stop: CancellationToken,
    /// Set with `stop`: read on every response, where a token's lock would cost.
    stopping: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl ListenerHandle {
    /// Stops accepting; open connections are asked to finish (h1: close after the response in
    /// flight; h2: GOAWAY).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.cancel();
        crate::parking::listener_stopped();
    }

    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Binds with `SO_REUSEADDR` and a deep backlog. Binding happens before a generation is
/// published, so a bind failure fails the start or the reload, not a request.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

pub fn spawn(
    name: &str,
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    max_connections: usize,
    shared: Arc<Shared>,
    tracker: TaskTracker,
) -> std::io::Result<ListenerHandle> {
    let local_addr = listener.local_addr()?;
    let listener = Arc::new(listener);
    if let Some(config) = &tls {
        crate::cert_expiry::serve(name, crate::tls::config_key(config));
    }
    let name: Arc<str> = Arc::from(name);
    let tls = tls.map(|t| Arc::new(ArcSwap::new(t)));
    let stop = CancellationToken::new();
    let stopping = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(accept_loop(AcceptCtx {
        name: name.clone(),
        bound: local_addr,
        listener: listener.clone(),
        tls: tls.clone(),
        limit: Arc::new(Semaphore::new(max_connections)),
        shared,
        tracker,
        stop: stop.clone(),
        stopping: stopping.clone(),
    }));
    Ok(ListenerHandle {
        name,
        local_addr,
        socket: listener,
        tls,
        stop,
        stopping,
        task,
    })
}

struct AcceptCtx {
    name: Arc<str>,
    bound: SocketAddr,
    listener: Arc<TcpListener>,
    tls: Option<Arc<ArcSwap<ServerConfig>>>,
    limit: Arc<Semaphore>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
    stopping: Arc<AtomicBool>,
}

async fn accept_loop(ctx: AcceptCtx) {
    loop {
        let permit = tokio::select! {
            p = ctx.limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = ctx.stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = ctx.listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; the listener stays.
                    tracing::warn!(listener = %ctx.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = ctx.stop.cancelled() => break,
        };
        let tls = ctx.tls.as_ref().map(|t| t.load_full());
        // A wildcard bind asks the socket where the client connected (one getsockname).
        let local = match ctx.bound.ip().is_unspecified() {
            true => stream.local_addr().unwrap_or(ctx.bound),
            false => ctx.bound,
        };
        let conn = Conn {
            info: ConnInfo {
                listener: ctx.name.clone(),
                peer,
                local,
                https: tls.is_some(),
            },
            shared: ctx.shared.clone(),
            stop: ctx.stop.clone(),
            stopping: ctx.stopping.clone(),
        };
        let active = Active::new(crate::metrics::global().connections(&ctx.name), permit);
        ctx.tracker.spawn(serve_conn(conn, stream, tls, active));
    }
    tracing::debug!(listener = %ctx.name, "listener stopped accepting");
}

/// Counts the connection in `weir_connections_active` and holds its `max_connections` permit
/// for as long as it lives.
pub(crate) struct Active {
    count: Arc<AtomicI64>,
    _permit: OwnedSemaphorePermit,
}

impl Active {
    fn new(count: Arc<AtomicI64>, permit: OwnedSemaphorePermit) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Active { count, _permit: permit }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection's task. Its state is what every idle keep-alive connection costs, so it
/// holds only the connection, its HTTP/1 settings and the HTTP/1 server's loop: the steps
/// taken once (sniffing for the h2 preface, the TLS handshake) and HTTP/2 connections run in a
/// box of their own, freed before an HTTP/1 connection settles into its keep-alive life.
///
/// An async block rather than an `async fn`: a function's arguments would be stored twice in
/// its state (once as arguments, once moved into its body).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve_conn(
    conn: Conn,
    stream: TcpStream,
    tls: Option<Arc<ServerConfig>>,
    active: Active,
) -> impl Future<Output = ()> + Send {
    async move {
        let _active = &active;
        let mut conn = conn;
        let Some((io, settings)) = Box::pin(conn.open(stream, tls)).await else {
            return;
        };
        if let Some((io, idle_until)) = conn.serve_h1(io, &settings).await {
            park(conn, io, active, idle_until);
        }
    }
}

/// A parked connection's task, once its client sends again (or its listener stops): the
/// HTTP/1 server with the current generation's settings for its listener. A listener a reload
/// removed has none; its connection is closed, as any request on it would be refused
/// (`ProxyError::ListenerGone`).
#[allow(clippy::manual_async_fn)] // on purpose: see serve_conn
fn serve_resumed(conn: Conn, stream: TcpStream, active: Active) -> impl Future<Output = ()> + Send {
    async move {
        let _active = &active;
        let Some(settings) = conn.listener_settings().map(|(l, _)| h1_settings(&l)) else {
            return;
        };
        if let Some((io, idle_until)) = conn.serve_h1(Box::new(stream), &settings).await {
            park(conn, io, active, idle_until);
        }
    }
}

/// Hands an idle connection to the parker. One that cannot be parked is closed, as its idle
/// timeout would have.
fn park(conn: Conn, io: Box<dyn ClientIo>, active: Active, idle_until: tokio::time::Instant) {
    let Some(stream) = io.into_tcp().and_then(|s| s.into_std().ok()) else {
        return;
    };
    let token = conn.shared.connections.token();
    crate::parking::park(crate::parking::Parked {
        stream,
        conn,
        active,
        token,
        idle_until,
    });
}

/// Serves a parked connection again, in a task of the current runtime.
pub(crate) fn resume(p: crate::parking::Parked) {
    let Ok(stream) = TcpStream::from_std(p.stream) else {
        return;
    };
    p.token.task_tracker().spawn(serve_resumed(p.conn, stream, p.active));
}

/// What a connection's task holds besides its socket.
pub(crate) struct Conn {
    pub(crate) info: ConnInfo,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stop: CancellationToken,
    stopping: Arc<AtomicBool>,
}

impl Conn {
    /// The HTTP/1 server on this connection; `Some` when the connection is to be parked.
    fn serve_h1<'a>(
        &'a self,
        io: Box<dyn ClientIo>,
        settings: &'a Settings,
    ) -> impl Future<Output = Option<(Box<dyn ClientIo>, tokio::time::Instant)>> + Send + 'a {
        crate::front::server::serve(io, settings, &self.shared, &self.info, &self.stop, &self.stopping)
    }

    /// The current generation's limits for this connection's listener, and whether it reads
    /// PROXY headers; `None` when a reload removed the listener.
    fn listener_settings(&self) -> Option<(weir_config::Limits, bool)> {
        self.shared
            .generation
            .load()
            .listener(&self.info.listener)
            .map(|l| (l.config.limits.clone(), l.config.proxy_protocol))
    }

    /// The PROXY header if the listener expects one, the TLS handshake or h2 preface sniffing,
    /// then the protocol: HTTP/2 is served here to its end; an HTTP/1 connection is returned
    /// with its settings, for [`serve_conn`] to serve.
    async fn open(
        &mut self,
        mut stream: TcpStream,
        tls: Option<Arc<ServerConfig>>,
    ) -> Option<(Box<dyn ClientIo>, Settings)> {
        let _ = stream.set_nodelay(true);
        let (limits, proxy_protocol) = self.listener_settings()?;
        if proxy_protocol {
            let read = crate::proxy_protocol::read(&mut stream);
            let refused = match tokio::time::timeout(limits.header_timeout, read).await {
                Ok(Ok(named)) => {
                    if let Some(named) = named {
                        self.info.peer = named.client;
                        self.info.local = named.local;
                    }
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no whole PROXY header within {:?}", limits.header_timeout)),
            };
            if let Some(why) = refused {
                crate::metrics::global()
                    .proxy_refused(&self.info.listener)
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listener = %self.info.listener, peer = %self.info.peer, reason = %why, "connection refused: PROXY protocol");
                return None;
            }
        }
        let Some(config) = tls else {
            return match tokio::time::timeout(limits.header_timeout, sniff_h2(&stream)).await {
                Ok(Ok(true)) => {
                    self.serve_h2(stream, &limits).await;
                    None
                }
                Ok(Ok(false)) => Some((Box::new(stream), h1_settings(&limits))),
                Ok(Err(_)) | Err(_) => None,
            };
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let stream = match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.info.peer, error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => return None,
        };
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.serve_h2(stream, &limits).await;
            return None;
        }
        Some((Box::new(stream), h1_settings(&limits)))
    }
}

fn h1_settings(limits: &weir_config::Limits) -> Settings {
    Settings {
        head: HeadLimits {
            max_header_bytes: limits.max_header_bytes,
            max_headers: limits.max_headers,
            max_uri_bytes: limits.max_uri_bytes,
            max_body_bytes: limits.max_body_bytes,
        },
        header_timeout: limits.header_timeout,
        body_timeout: limits.body_timeout,
        send_timeout: limits.send_timeout,
        idle_timeout: limits.idle_timeout,
        grace: limits.idle_timeout.min(H1_CLOSE_GRACE),
    }
}

/// Whether a plain connection opens with the HTTP/2 preface (h2c prior knowledge). Peeks, so
/// the bytes stay in the socket for whichever protocol serves it.
async fn sniff_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 24];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(false);
        }
        if n == H2_PREFACE.len() {
            return Ok(true);
        }
        // A preface split across packets: wait for the rest (bounded by the header timeout).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
