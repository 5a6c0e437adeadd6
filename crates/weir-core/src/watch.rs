//! Watches the config file, everything it references (certificates, keys, token file) and the
//! plugins folder, and asks for a reload once changes have been quiet for `reload.debounce`.
//! Folders are watched, not files: editors and deploy tools save by writing a temporary file and
//! renaming it, which replaces the watched inode.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::reload::{ReloadRequest, debounce, watched_files};
use crate::state::Shared;

/// What to react to: exact files, and `*.wasm` in the plugins folder.
struct Interest {
    files: HashSet<PathBuf>,
    plugins_dir: PathBuf,
    dirs: HashSet<PathBuf>,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

impl Interest {
    fn of(shared: &Shared) -> Interest {
        let g = shared.generation.load();
        let files: HashSet<PathBuf> = watched_files(&g.config).iter().map(|p| absolute(p)).collect();
        let plugins_dir = absolute(&g.config.plugins.dir);
        let mut dirs: HashSet<PathBuf> = files.iter().filter_map(|f| f.parent().map(Path::to_path_buf)).collect();
        if plugins_dir.is_dir() {
            dirs.insert(plugins_dir.clone());
        }
        Interest {
            files,
            plugins_dir,
            dirs,
        }
    }

    fn matches(&self, path: &Path) -> bool {
        if self.files.contains(path) {
            return true;
        }
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        path.parent() == Some(self.plugins_dir.as_path()) && !hidden && path.extension().is_some_and(|e| e == "wasm")
    }
}

pub(crate) fn spawn(
    shared: Arc<Shared>,
    reloads: mpsc::Sender<ReloadRequest>,
    mut reloaded: tokio::sync::watch::Receiver<u64>,
) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<PathBuf>();
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            for p in event.paths {
                let _ = events_tx.send(p);
            }
        }
    });
    let mut watcher: RecommendedWatcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch files; reload with SIGHUP or POST /api/v1/reload");
            return;
        }
    };
    // The first set is watched before the gateway reports started: no change is missed.
    let mut interest = Interest::of(&shared);
    let mut watching: HashSet<PathBuf> = HashSet::new();
    follow(&mut watcher, &interest, &mut watching);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = reloaded.changed() => {
                    if changed.is_err() { return; }
                    // A reload may reference other files: follow the new set of folders.
                    interest = Interest::of(&shared);
                    follow(&mut watcher, &interest, &mut watching);
                    continue;
                }
                first = events.recv() => {
                    let Some(first) = first else { return };
                    if !interest.matches(&absolute(&first)) { continue; }
                }
            }
            // Debounce: wait until no relevant event arrived for `debounce`.
            let quiet = debounce(&shared.generation.load().config);
            loop {
                match tokio::time::timeout(quiet, events.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if reloads
                .send(ReloadRequest {
                    reason: "file change",
                    rebuild: false,
                    reply: None,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

fn follow(watcher: &mut RecommendedWatcher, interest: &Interest, watching: &mut HashSet<PathBuf>) {
    for d in watching.difference(&interest.dirs).cloned().collect::<Vec<_>>() {
        let _ = watcher.unwatch(&d);
        watching.remove(&d);
    }
    for d in interest.dirs.difference(watching).cloned().collect::<Vec<_>>() {
        match watcher.watch(&d, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watching.insert(d);
            }
            Err(e) => tracing::warn!(dir = %d.display(), error = %e, "cannot watch"),
        }
    }
}
