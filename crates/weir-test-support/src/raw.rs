//! A scripted raw HTTP/1 upstream: answers each request with exactly the bytes a test gives
//! (in pieces, with or without closing), so framings a real server would never write can be
//! tested; records every request as it arrived.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted upstream does with one request.
pub enum Act {
    /// Write these pieces (with a short pause between them, so they arrive in separate reads)
    /// and keep the connection for the next request.
    Reply(Vec<&'static [u8]>),
    /// Write these pieces, then close.
    ReplyClose(Vec<&'static [u8]>),
    /// Answer without reading the request body, then close.
    EarlyClose(&'static [u8]),
}

type Script = dyn Fn(usize, &str) -> Act + Send + Sync;

pub struct Raw {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Every request as the upstream received it (head and body).
    requests: Arc<Mutex<Vec<String>>>,
}

impl Raw {
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn request(&self, i: usize) -> String {
        self.requests.lock().unwrap()[i].clone()
    }
}

pub async fn raw_upstream(script: impl Fn(usize, &str) -> Act + Send + Sync + 'static) -> Raw {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let script: Arc<Script> = Arc::new(script);
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_raw(stream, script.clone(), r.clone()));
        }
    });
    Raw {
        addr,
        connections,
        requests,
    }
}

async fn serve_raw(mut stream: TcpStream, script: Arc<Script>, requests: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = read_until(&mut stream, &mut buf, b"\r\n\r\n").await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let lower = head.to_ascii_lowercase();
        let index = {
            let mut r = requests.lock().unwrap();
            r.push(head.clone());
            r.len() - 1
        };
        let act = script(index, &head);
        if let Act::EarlyClose(reply) = act {
            let _ = stream.write_all(reply).await;
            // Read a little of what follows, so the close is a FIN rather than a reset.
            let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut [0u8; 1024])).await;
            return;
        }
        // Read the body the head announces.
        let mut rest = buf.split_off(head_end);
        let body_len = if lower.contains("transfer-encoding: chunked") {
            loop {
                if let Some(n) = chunked_len(&rest) {
                    break n;
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => rest.extend_from_slice(&chunk[..k]),
                }
            }
        } else {
            let n = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while rest.len() < n {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => rest.extend_from_slice(&chunk[..k]),
                }
            }
            n
        };
        requests.lock().unwrap()[index].push_str(&String::from_utf8_lossy(&rest[..body_len]));
        buf = rest.split_off(body_len);
        let (pieces, close) = match act {
            Act::Reply(p) => (p, false),
            Act::ReplyClose(p) => (p, true),
            Act::EarlyClose(_) => return,
        };
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if stream.write_all(piece).await.is_err() {
                return;
            }
        }
        if close {
            return;
        }
    }
}

/// The length of the chunked body at the start of `buf`, trailer section included, once it
/// is all there (a test's bodies are well formed).
fn chunked_len(buf: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = String::from_utf8_lossy(&buf[at..line_end]);
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer lines up to the empty one.
            loop {
                let end = at + buf[at..].windows(2).position(|w| w == b"\r\n")?;
                let empty = end == at;
                at = end + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        at += size + 2;
        if at > buf.len() {
            return None;
        }
    }
}

/// Reads until `buf` holds `pat`; returns the index just past it.
async fn read_until(stream: &mut TcpStream, buf: &mut Vec<u8>, pat: &[u8]) -> Option<usize> {
    loop {
        if let Some(i) = buf.windows(pat.len()).position(|w| w == pat) {
            return Some(i + pat.len());
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
