//! The access log: one structured line per request (listener, client, pool, endpoint, status,
//! duration, attempts, generation, bytes), off by default. To a file, lines go through a
//! bounded channel to one writer task, so a slow disk never blocks a request (lines are dropped,
//! and counted, when it falls behind).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// `d` in milliseconds, to the microsecond: what the logs print (`1.186`, not the
/// `1.1856410000000002` of a float scaled from nanoseconds).
pub fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1e3
}

#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub ts_ms: u128,
    pub listener: &'a str,
    /// The client's address: the socket's peer, or the one a PROXY header named.
    pub client: std::net::SocketAddr,
    pub pool: &'a str,
    pub endpoint: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub duration_ms: f64,
    pub attempts: u32,
    pub generation: u64,
    pub bytes_out: Option<u64>,
}

struct FileSink {
    path: PathBuf,
    tx: mpsc::Sender<String>,
}

/// The file writer of the access log's current path: read without a lock on every line;
/// replaced (under `SINK_CHANGE`) when a reload names another file.
static SINK: arc_swap::ArcSwapOption<FileSink> = arc_swap::ArcSwapOption::const_empty();
static SINK_CHANGE: Mutex<()> = Mutex::new(());
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Hands a line to the writer of `path`, starting one for a new path.
fn send_line(path: &Path, line: String) {
    let sink = SINK.load();
    let line = match sink.as_deref() {
        Some(s) if s.path == path => match s.tx.try_send(line) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // The writer is gone (its runtime was shut down): start another.
            Err(mpsc::error::TrySendError::Closed(line)) => line,
        },
        _ => line,
    };
    let Ok(_changing) = SINK_CHANGE.lock() else {
        return;
    };
    let current = SINK.load();
    let tx = match current.as_deref() {
        Some(s) if s.path == path && !s.tx.is_closed() => s.tx.clone(),
        _ => {
            let (tx, rx) = mpsc::channel::<String>(65_536);
            tokio::spawn(write_lines(path.to_path_buf(), rx));
            SINK.store(Some(std::sync::Arc::new(FileSink {
                path: path.to_path_buf(),
                tx: tx.clone(),
            })));
            tx
        }
    };
    if tx.try_send(line).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// How often the writer looks whether the file was rotated away (renamed or deleted).
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// The file and the identity (device, inode) of what it opened.
async fn open(path: &Path) -> Option<(tokio::io::BufWriter<tokio::fs::File>, (u64, u64))> {
    let opened = tokio::fs::OpenOptions::new().create(true).append(true).open(path).await;
    let file = match opened {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "cannot open the access log (tried again every second)");
            return None;
        }
    };
    let id = file.metadata().await.map(|m| (m.dev(), m.ino())).unwrap_or_default();
    Some((tokio::io::BufWriter::new(file), id))
}

/// The writer task: appends lines, and reopens the file when it was rotated away (logrotate
/// without `copytruncate`: renamed, then a new file wanted at the path), checked at most once
/// a second, so rotation needs no signal.
async fn write_lines(path: PathBuf, mut rx: mpsc::Receiver<String>) {
    let mut file = open(&path).await;
    let mut checked = Instant::now();
    while let Some(line) = rx.recv().await {
        if checked.elapsed() >= ROTATION_CHECK {
            checked = Instant::now();
            let at_path = tokio::fs::metadata(&path).await.ok().map(|m| (m.dev(), m.ino()));
            if at_path.is_none() || at_path != file.as_ref().map(|(_, id)| *id) {
                if let Some((mut old, _)) = file.take() {
                    let _ = old.flush().await;
                    tracing::info!(file = %path.display(), "access log rotated: writing to a new file");
                }
                file = open(&path).await;
            }
        }
        let Some((f, _)) = file.as_mut() else {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let _ = f.write_all(line.as_bytes()).await;
        if rx.is_empty() {
            let _ = f.flush().await;
        }
    }
}

pub fn write(config: &weir_config::AccessLog, entry: &Entry<'_>) {
    match config {
        weir_config::AccessLog::Off => {}
        weir_config::AccessLog::Stderr => tracing::info!(
            target: "weir::access",
            listener = entry.listener,
            client = %entry.client,
            pool = entry.pool,
            endpoint = entry.endpoint,
            method = entry.method,
            path = entry.path,
            status = entry.status,
            duration_ms = entry.duration_ms,
            attempts = entry.attempts,
            generation = entry.generation,
            bytes_out = entry.bytes_out,
            "request"
        ),
        weir_config::AccessLog::File(path) => {
            let Ok(mut line) = serde_json::to_string(entry) else {
                return;
            };
            line.push('\n');
            send_line(path, line);
        }
    }
}

/// Milliseconds since the Unix epoch, for `ts_ms`.
pub fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// The line of a request the front refused before routing it: no pool, endpoint or attempt;
/// method and path `-` (the head may not have parsed).
pub fn refused(shared: &crate::state::Shared, info: &crate::proxy::ConnInfo, status: u16, bytes_out: u64) {
    let generation = shared.generation.load();
    let config = &generation.config.runtime.access_log;
    if matches!(config, weir_config::AccessLog::Off) {
        return;
    }
    write(
        config,
        &Entry {
            ts_ms: now_ms(),
            listener: &info.listener,
            client: info.peer,
            pool: "-",
            endpoint: "-",
            method: "-",
            path: "-",
            status,
            duration_ms: 0.0,
            attempts: 0,
            generation: generation.id,
            bytes_out: Some(bytes_out),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_to_the_microsecond() {
        assert_eq!(millis(Duration::from_nanos(1_185_641)).to_string(), "1.185");
        assert_eq!(millis(Duration::from_millis(30_000)).to_string(), "30000");
    }
}
