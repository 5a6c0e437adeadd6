//! Holds many idle keep-alive client connections open, for the load benchmark's memory phase:
//! `idle_conns <addr> <count>` connects `count` times, sends one GET on each connection and
//! reads its response, prints `ready <n>` and holds every connection until stdin closes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn open(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").await?;
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    // The bench upstreams answer ~100 bytes with Content-Length: read past the head and body.
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return Ok(s);
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args.next().expect("addr").parse().expect("addr");
    let count: usize = args.next().and_then(|c| c.parse().ok()).unwrap_or(10_000);
    let mut held = Vec::with_capacity(count);
    let mut failed = 0usize;
    for chunk in (0..count).collect::<Vec<_>>().chunks(200) {
        let batch = futures_util::future::join_all(chunk.iter().map(|_| open(addr))).await;
        for r in batch {
            match r {
                Ok(s) => held.push(s),
                Err(_) => failed += 1,
            }
        }
    }
    println!("ready {} failed {failed}", held.len());
    let mut line = String::new();
    let _ = tokio::io::BufReader::new(tokio::io::stdin()).read_line(&mut line).await;
    drop(held);
}
