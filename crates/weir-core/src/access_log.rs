//! The access log: one structured line per request (listener, client, pool, endpoint, status,
//! duration, attempts, generation, bytes), off by default. To a file, lines go through a
//! bounded channel to one writer task, so a slow disk never blocks a request (lines are dropped,
//! and counted, when it falls behind).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

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

static SINK: OnceLock<Mutex<Option<FileSink>>> = OnceLock::new();
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

fn sink_for(path: &PathBuf) -> Option<mpsc::Sender<String>> {
    let cell = SINK.get_or_init(|| Mutex::new(None));
    let mut guard = cell.lock().ok()?;
    if let Some(s) = guard.as_ref()
        && &s.path == path
    {
        return Some(s.tx.clone());
    }
    let (tx, mut rx) = mpsc::channel::<String>(65_536);
    let file_path = path.clone();
    tokio::spawn(async move {
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file_path)
            .await;
        let mut file = match file {
            Ok(f) => tokio::io::BufWriter::new(f),
            Err(e) => {
                tracing::error!(file = %file_path.display(), error = %e, "cannot open the access log");
                return;
            }
        };
        while let Some(line) = rx.recv().await {
            let _ = file.write_all(line.as_bytes()).await;
            if rx.is_empty() {
                let _ = file.flush().await;
            }
        }
    });
    *guard = Some(FileSink {
        path: path.clone(),
        tx: tx.clone(),
    });
    Some(tx)
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
            if let Some(tx) = sink_for(path)
                && tx.try_send(line).is_err()
            {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
