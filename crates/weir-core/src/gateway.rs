//! The gateway's lifecycle: build the first generation, bind every listener and the admin API,
//! serve, and shut down gracefully (readiness off, stop accepting, let in-flight requests finish
//! within `shutdown_timeout`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weir_config::Config;

use crate::generation::{Generation, PolicyFactory};
use crate::listener::{self, ListenerHandle};
use crate::state::Shared;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Policies(String),
    #[error("listener `{name}`: cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The listener's TLS errors, a line each, each saying where it is.
    #[error("{0}")]
    Tls(String),
    #[error("admin: {0}")]
    Admin(String),
}

pub struct Gateway {
    shared: Arc<Shared>,
    listeners: Arc<Mutex<Vec<ListenerHandle>>>,
    admin_addr: SocketAddr,
    admin_socket: Arc<tokio::net::TcpListener>,
    admin_stop: CancellationToken,
    admin_task: tokio::task::JoinHandle<()>,
    background_stop: CancellationToken,
    connections: TaskTracker,
    shutdown_timeout: Duration,
    /// Cancelled once a new process took over the sockets (binary upgrade).
    handed_over: CancellationToken,
    upgrade: Mutex<Option<crate::upgrade::UpgradeServer>>,
}

/// Everything `weir check` verifies beyond the config file itself: policies build, TLS material
/// loads, the admin token is readable.
pub fn check(config: &Config, factory: Arc<dyn PolicyFactory>) -> Vec<String> {
    let mut errors = Vec::new();
    if let Err(e) = Generation::build(0, Arc::new(config.clone()), None, factory) {
        errors.extend(e);
    }
    for l in &config.listeners {
        if let Some(tls) = &l.tls
            && let Err(e) = crate::tls::listener_config(&l.name, tls)
        {
            errors.extend(e);
        }
    }
    if let Err(e) = crate::admin::load_token(&config.admin) {
        errors.push(format!("admin: {e}"));
    }
    errors
}

impl Gateway {
    pub async fn start(config: Config, factory: Arc<dyn PolicyFactory>) -> Result<Gateway, StartError> {
        Self::start_with(config, factory, None).await
    }

    /// Starts on sockets inherited from a running weir (binary upgrade) where the config binds
    /// the same addresses; binds the rest.
    pub async fn start_with(
        config: Config,
        factory: Arc<dyn PolicyFactory>,
        mut inherited: Option<&mut crate::upgrade::Inherited>,
    ) -> Result<Gateway, StartError> {
        let config = Arc::new(config);
        let generation =
            Generation::build(1, config.clone(), None, factory).map_err(|e| StartError::Policies(e.join("; ")))?;
        let token = crate::admin::load_token(&config.admin).map_err(StartError::Admin)?;
        let shared = Arc::new(Shared::new(generation));
        let connections = shared.connections.clone();
        // Upstream requests and responses go in batches, one per worker thread (send_batch.rs).
        crate::send_batch::enable();

        // Bind everything before serving anything: a failure leaves nothing half-started.
        let mut bound = Vec::new();
        for l in &config.listeners {
            let tls = match &l.tls {
                Some(t) => {
                    Some(crate::tls::listener_config(&l.name, t).map_err(|errors| StartError::Tls(errors.join("\n")))?)
                }
                None => None,
            };
            let socket =
                adopt_or_bind(inherited.as_deref_mut(), &l.name, false, l.bind).map_err(|source| StartError::Bind {
                    name: l.name.clone(),
                    addr: l.bind,
                    source,
                })?;
            bound.push((l, socket, tls));
        }
        let admin_socket = adopt_or_bind(inherited, "admin", true, config.admin.bind)
            .map_err(|e| StartError::Admin(format!("cannot bind {}: {e}", config.admin.bind)))?;
        let admin_socket = Arc::new(admin_socket);
        let admin_addr = admin_socket
            .local_addr()
            .map_err(|e| StartError::Admin(e.to_string()))?;

        let mut listeners = Vec::new();
        for (l, socket, tls) in bound {
            let handle = listener::spawn(
                &l.name,
                socket,
                tls,
                l.limits.max_connections,
                shared.clone(),
                connections.clone(),
            )
            .map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            })?;
            tracing::info!(listener = %l.name, bind = %handle.local_addr, pool = %l.pool, tls = l.tls.is_some(), "listening");
            listeners.push(handle);
        }
        let admin_stop = CancellationToken::new();
        shared.admin_token.store(token.map(Arc::new));
        let admin_task = crate::admin::spawn(admin_socket.clone(), shared.clone(), admin_stop.clone());
        tracing::info!(bind = %admin_addr, "admin API listening");

        let background_stop = CancellationToken::new();
        tokio::spawn(sweep_idle_connections(shared.clone(), background_stop.clone()));

        let listeners = Arc::new(Mutex::new(listeners));
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(16);
        let (reloaded_tx, reloaded_rx) = tokio::sync::watch::channel(1);
        let _ = shared.reloads.set(reload_tx.clone());
        let controller = crate::reload::Controller {
            shared: shared.clone(),
            listeners: listeners.clone(),
            connections: connections.clone(),
            reloaded: reloaded_tx,
        };
        tokio::spawn(controller.run(reload_rx));
        crate::health::spawn(shared.clone(), reloaded_rx.clone(), background_stop.clone());
        if config.reload.watch && config.source.is_some() {
            crate::watch::spawn(shared.clone(), reload_tx, reloaded_rx);
        }

        shared.set_started();
        Ok(Gateway {
            shared,
            listeners,
            admin_addr,
            admin_socket,
            admin_stop,
            admin_task,
            background_stop,
            connections,
            shutdown_timeout: config.runtime.shutdown_timeout,
            handed_over: CancellationToken::new(),
            upgrade: Mutex::new(None),
        })
    }

    /// Serves binary upgrades on the Unix socket `path` (`weir run --upgrade-socket`): a new
    /// process connecting there takes over every listening socket, and [`Gateway::handed_over`]
    /// completes once it serves.
    pub fn listen_for_upgrades(&self, path: &std::path::Path) -> std::io::Result<()> {
        let listeners = self.listeners.clone();
        let admin = self.admin_socket.clone();
        let admin_addr = self.admin_addr;
        let gather = move || {
            let mut offers = vec![crate::upgrade::Offer {
                entry: crate::upgrade::SocketEntry {
                    name: "admin".to_string(),
                    admin: true,
                    addr: admin_addr,
                },
                socket: admin.clone(),
            }];
            if let Ok(ls) = listeners.lock() {
                offers.extend(ls.iter().map(|h| crate::upgrade::Offer {
                    entry: crate::upgrade::SocketEntry {
                        name: h.name.to_string(),
                        admin: false,
                        addr: h.local_addr,
                    },
                    socket: h.socket.clone(),
                }));
            }
            offers
        };
        let server = crate::upgrade::UpgradeServer::spawn(path, gather, self.handed_over.clone())?;
        tracing::info!(socket = %path.display(), "listening for binary upgrades");
        if let Ok(mut slot) = self.upgrade.lock()
            && let Some(old) = slot.replace(server)
        {
            old.close();
        }
        Ok(())
    }

    /// Completes when a new process has taken over the sockets; then call
    /// [`Gateway::shutdown`] to drain and exit.
    pub async fn handed_over(&self) {
        self.handed_over.cancelled().await
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Actual bound addresses by listener name (port 0 in the config becomes the real port).
    pub fn listener_addrs(&self) -> HashMap<String, SocketAddr> {
        match self.listeners.lock() {
            Ok(ls) => ls.iter().map(|l| (l.name.to_string(), l.local_addr)).collect(),
            Err(_) => HashMap::new(),
        }
    }

    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listener_addrs().get(name).copied()
    }

    /// Reloads the config file now (what SIGHUP and `POST /api/v1/reload` do).
    pub async fn reload(&self, reason: &'static str) -> crate::reload::ReloadResult {
        crate::reload::request(&self.shared, reason).await
    }

    /// Graceful shutdown: `/readyz` turns 503, listeners stop accepting, open connections finish
    /// their in-flight requests within `shutdown_timeout`. Returns whether all finished in time.
    pub async fn shutdown(self) -> bool {
        self.shared.set_draining();
        if let Ok(mut slot) = self.upgrade.lock()
            && let Some(server) = slot.take()
        {
            server.close();
        }
        let listeners: Vec<ListenerHandle> = match self.listeners.lock() {
            Ok(mut ls) => ls.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for l in &listeners {
            l.stop();
        }
        for l in listeners {
            l.join().await;
        }
        self.connections.close();
        let clean = tokio::time::timeout(self.shutdown_timeout, self.connections.wait())
            .await
            .is_ok();
        if !clean {
            tracing::warn!(
                remaining = self.connections.len(),
                "shutdown timeout reached with connections still open"
            );
        }
        self.background_stop.cancel();
        self.admin_stop.cancel();
        let _ = self.admin_task.await;
        clean
    }
}

/// A socket inherited from the process being upgraded, or a freshly bound one.
fn adopt_or_bind(
    inherited: Option<&mut crate::upgrade::Inherited>,
    name: &str,
    admin: bool,
    bind: SocketAddr,
) -> std::io::Result<tokio::net::TcpListener> {
    match inherited.and_then(|i| i.take(name, admin, bind)) {
        Some(socket) => {
            tracing::info!(listener = name, bind = %bind, "adopted the running process's socket");
            tokio::net::TcpListener::from_std(socket)
        }
        None => listener::bind(bind),
    }
}

/// Closes pooled upstream connections idle past their pool's `timeouts.idle`.
async fn sweep_idle_connections(shared: Arc<Shared>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let generation = shared.generation.load();
        for pool in &generation.pools {
            for e in &pool.endpoints {
                e.sweep_idle(pool.config.timeouts.idle);
            }
        }
    }
}
