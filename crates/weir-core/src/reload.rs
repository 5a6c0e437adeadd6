//! Zero-downtime reconfiguration. One controller task serialises every reload (SIGHUP,
//! `POST /api/v1/reload`, the file watcher) and runs the pipeline: read -> parse -> validate ->
//! prepare policies (plugins compiled off the async workers) -> `diff(old, new)` -> bind added
//! listeners -> build the generation -> swap. Any failure before the swap leaves the running
//! generation untouched and is reported with every error. After the swap: certificates of
//! changed listeners rotate for new handshakes, removed listeners stop accepting and drain.
//! Requests in flight keep the generation they started on.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use weir_config::Config;

use crate::generation::Generation;
use crate::listener::{self, ListenerHandle};
use crate::state::Shared;

pub type ReloadResult = Result<u64, Vec<String>>;

pub struct ReloadRequest {
    pub reason: &'static str,
    /// Rebuild from the running config (after a runtime change such as a weight) instead of
    /// reading the file.
    pub rebuild: bool,
    pub reply: Option<oneshot::Sender<ReloadResult>>,
}

/// What `/api/v1/status` says about the last reload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub reason: &'static str,
    pub ok: bool,
    pub generation: u64,
    pub errors: Vec<String>,
    pub duration_ms: f64,
    pub at_unix_ms: u128,
}

/// Asks the controller for a reload and waits for its outcome.
pub async fn request(shared: &Shared, reason: &'static str) -> ReloadResult {
    send(shared, reason, false).await
}

/// Rebuilds the generation from the running config (runtime changes such as weights).
pub async fn rebuild(shared: &Shared, reason: &'static str) -> ReloadResult {
    send(shared, reason, true).await
}

async fn send(shared: &Shared, reason: &'static str, rebuild: bool) -> ReloadResult {
    let Some(tx) = shared.reloads.get() else {
        return Err(vec!["the gateway is not running".to_string()]);
    };
    let (reply, rx) = oneshot::channel();
    if tx
        .send(ReloadRequest {
            reason,
            rebuild,
            reply: Some(reply),
        })
        .await
        .is_err()
    {
        return Err(vec!["the reload controller has stopped".to_string()]);
    }
    rx.await
        .unwrap_or_else(|_| Err(vec!["the reload controller has stopped".to_string()]))
}

pub(crate) struct Controller {
    pub shared: Arc<Shared>,
    pub listeners: Arc<Mutex<Vec<ListenerHandle>>>,
    pub connections: TaskTracker,
    /// Told after every successful reload, so it can watch the new set of files.
    pub reloaded: tokio::sync::watch::Sender<u64>,
}

impl Controller {
    pub async fn run(self, mut rx: mpsc::Receiver<ReloadRequest>) {
        while let Some(req) = rx.recv().await {
            let started = Instant::now();
            let result = if req.rebuild {
                self.rebuild()
            } else {
                self.reload().await
            };
            let report = ReloadReport {
                reason: req.reason,
                ok: result.is_ok(),
                generation: self.shared.generation.load().id,
                errors: result.as_ref().err().cloned().unwrap_or_default(),
                duration_ms: crate::access_log::millis(started.elapsed()),
                at_unix_ms: SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis()),
            };
            match &result {
                Ok(id) => {
                    self.shared
                        .reloads_ok
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(
                        reason = req.reason,
                        generation = id,
                        ms = report.duration_ms,
                        "reloaded"
                    );
                    let _ = self.reloaded.send(*id);
                }
                Err(errors) => {
                    self.shared
                        .reloads_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(reason = req.reason, errors = %errors.join("; "), "reload refused; the running generation keeps serving");
                }
            }
            if let Ok(mut last) = self.shared.last_reload.lock() {
                *last = Some(report);
            }
            if let Some(reply) = req.reply {
                let _ = reply.send(result);
            }
        }
    }

    fn rebuild(&self) -> ReloadResult {
        let old = self.shared.generation.load_full();
        let id = old.id + 1;
        let generation = Generation::build(id, old.config.clone(), Some(&old), old.policies.clone())?;
        self.shared.install(generation);
        Ok(id)
    }

    async fn reload(&self) -> ReloadResult {
        let old = self.shared.generation.load_full();
        let Some(path) = old.config.source.clone() else {
            return Err(vec!["the running config was not read from a file".to_string()]);
        };
        let policies = old.policies.clone();
        let (config, token) = tokio::task::spawn_blocking(move || load(&path, policies.as_ref()))
            .await
            .map_err(|e| vec![format!("reload task failed: {e}")])??;
        let diff = weir_config::diff(&old.config, &config);
        if old.config.admin.bind != config.admin.bind {
            tracing::warn!("[admin] bind changed: it applies after a restart");
        }
        if diff.runtime_changed {
            tracing::warn!("[runtime] changed: worker_threads applies after a restart");
        }

        // Bind new sockets before anything changes: a bind failure fails the reload.
        let mut errors = Vec::new();
        let mut to_bind = diff.listeners_added.clone();
        let mut to_retire = diff.listeners_removed.clone();
        let mut rotate = Vec::new();
        let bound_now: std::collections::HashMap<String, std::net::SocketAddr> = match self.listeners.lock() {
            Ok(hs) => hs.iter().map(|h| (h.name.to_string(), h.local_addr)).collect(),
            Err(_) => Default::default(),
        };
        for change in &diff.listeners_changed {
            let (Some(was), Some(now)) = (old.config.listener(&change.name), config.listener(&change.name)) else {
                continue;
            };
            // `bind = "...:0"` resolved to a real port: naming that port is not a rebind.
            let same_socket = bound_now.get(&change.name) == Some(&now.bind);
            if (change.rebind && !same_socket) || was.tls.is_some() != now.tls.is_some() {
                to_bind.push(change.name.clone());
                to_retire.push(change.name.clone());
            }
        }
        // Certificates are re-read on every reload: the files may have new contents under the
        // same paths (the usual way certificates are renewed).
        for l in &config.listeners {
            if l.tls.is_some() && !to_bind.contains(&l.name) {
                rotate.push(l.name.clone());
            }
        }
        let mut bound = Vec::new();
        for name in &to_bind {
            let Some(l) = config.listener(name) else { continue };
            let tls = match &l.tls {
                Some(t) => match crate::tls::listener_config(name, t) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errors.extend(e);
                        continue;
                    }
                },
                None => None,
            };
            match listener::bind(l.bind) {
                Ok(socket) => bound.push((l.clone(), socket, tls)),
                Err(e) => errors.push(format!("listener `{name}`: cannot bind {}: {e}", l.bind)),
            }
        }
        let mut rotated = Vec::new();
        for name in &rotate {
            if let Some(t) = config.listener(name).and_then(|l| l.tls.as_ref()) {
                match crate::tls::listener_config(name, t) {
                    Ok(c) => rotated.push((name.clone(), c)),
                    Err(e) => errors.extend(e),
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let id = old.id + 1;
        let generation = Generation::build(id, Arc::new(config), Some(&old), old.policies.clone())?;

        let mut retiring = Vec::new();
        {
            let Ok(mut handles) = self.listeners.lock() else {
                return Err(vec!["listener table poisoned".to_string()]);
            };
            for name in &to_retire {
                if let Some(pos) = handles.iter().position(|h| &*h.name == name.as_str()) {
                    retiring.push(handles.remove(pos));
                }
            }
            // Certificates first: whoever sees the new generation (the admin API, a client
            // polling it) must also get the new certificates in new handshakes.
            for (name, config) in rotated {
                if let Some(h) = handles.iter().find(|h| *h.name == *name)
                    && let Some(tls) = &h.tls
                {
                    crate::cert_expiry::serve(&name, crate::tls::config_key(&config));
                    tls.store(config);
                    tracing::info!(listener = %name, "certificates rotated for new handshakes");
                }
            }
            let token_changed = self.shared.admin_token.load().as_deref() != token.as_ref();
            self.shared.admin_token.store(token.map(Arc::new));
            if token_changed {
                tracing::info!("admin token changed: mutating admin calls need the new one");
            }
            self.shared.install(generation);
            for (l, socket, tls) in bound {
                match listener::spawn(
                    &l.name,
                    socket,
                    tls,
                    l.limits.max_connections,
                    self.shared.clone(),
                    self.connections.clone(),
                ) {
                    Ok(h) => {
                        tracing::info!(listener = %l.name, bind = %h.local_addr, "listening");
                        handles.push(h);
                    }
                    Err(e) => tracing::error!(listener = %l.name, error = %e, "cannot start a bound listener"),
                }
            }
        }
        for h in retiring {
            if to_bind.iter().any(|n| **n == *h.name) {
                tracing::info!(listener = %h.name, old_bind = %h.local_addr, "listener rebound: its old socket stops accepting, its connections drain");
            } else {
                tracing::info!(listener = %h.name, "listener removed: it stops accepting, its connections drain");
            }
            h.stop();
            tokio::spawn(h.join());
        }
        Ok(id)
    }
}

/// Reads and validates the config file, reads the admin token it names, and prepares its
/// policies (blocking). A token that cannot be read fails the reload: the last good one stays.
fn load(path: &std::path::Path, policies: &dyn crate::PolicyFactory) -> Result<(Config, Option<String>), Vec<String>> {
    let config = weir_config::load(path).map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let token = crate::admin::load_token(&config.admin).map_err(|e| vec![format!("admin: {e}")]);
    let prepared = policies.prepare(&config);
    match (token, prepared) {
        (Ok(token), Ok(())) => Ok((config, token)),
        (token, prepared) => Err(token.err().into_iter().chain(prepared.err()).flatten().collect()),
    }
}

/// How long the watcher waits for quiet after a change before reloading.
pub fn debounce(config: &Config) -> Duration {
    config.reload.debounce
}

pub(crate) fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files = Vec::new();
    files.extend(config.source.clone());
    files.extend(config.admin.token_file.clone());
    for p in &config.pools {
        if let Some(t) = &p.tls {
            files.extend(t.ca.as_ref().map(|f| f.path.clone()));
            if let Some((cert, key)) = &t.client_cert {
                files.push(cert.path.clone());
                files.push(key.path.clone());
            }
        }
    }
    for l in &config.listeners {
        if let Some(t) = &l.tls {
            files.push(t.cert.path.clone());
            files.push(t.key.path.clone());
            for s in &t.sni {
                files.push(s.cert.path.clone());
                files.push(s.key.path.clone());
            }
        }
    }
    files
}
