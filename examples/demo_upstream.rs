//! A tiny upstream for trying weir: `cargo run --example demo_upstream -- <port> <name> [bytes]`
//! answers every request with `hello from <name>` and the path it saw, padded with `.` to
//! `bytes` when given (the load benchmark asks for ~100-byte bodies). A request body is read
//! and its length answered; `/bytes/<n>` answers n bytes. With `DEMO_H2=1` it speaks HTTP/2
//! (h2c, prior knowledge) instead of HTTP/1.1, for `protocol = "h2"` pools.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(9081);
    let name = args.next().unwrap_or_else(|| format!("upstream-{port}"));
    let pad: usize = args.next().and_then(|b| b.parse().ok()).unwrap_or(0);
    let h2 = std::env::var("DEMO_H2").is_ok_and(|v| v == "1");
    // A deep backlog, as production servers have: tokio's default (128 here) overflowed when a
    // proxy opened a few hundred connections at once while sharing this upstream's core, and
    // the benchmark then measured the upstream's accept queue instead of the proxy.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .expect("bind");
    let listener = socket.listen(4096).expect("listen");
    eprintln!("demo upstream {name} on 127.0.0.1:{port}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut body = format!("hello from {name}: {} {}", req.method(), req.uri());
                while body.len() + 1 < pad {
                    body.push('.');
                }
                body.push('\n');
                // `/bytes/<n>` answers n bytes (benches/load/bodies.sh downloads).
                let bytes: Option<usize> = req.uri().path().strip_prefix("/bytes/").and_then(|n| n.parse().ok());
                let has_body = !req.body().is_end_stream();
                async move {
                    if has_body {
                        // Read (and count) a request body before answering (uploads).
                        let mut incoming = req.into_body();
                        let mut len = 0usize;
                        while let Some(Ok(frame)) = incoming.frame().await {
                            len += frame.data_ref().map_or(0, |d| d.len());
                        }
                        body = format!("{}: {len} bytes\n", body.trim_end_matches(['.', '\n']));
                    }
                    let body = match bytes {
                        Some(n) => Bytes::from(vec![b'x'; n.min(1 << 30)]),
                        None => Bytes::from(body),
                    };
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(body)))
                }
            });
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        });
    }
}
