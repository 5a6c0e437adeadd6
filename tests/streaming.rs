//! 10 MiB request and response bodies stream through the gateway without being buffered.
//! One test per binary, so the process's peak RSS speaks about this traffic only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weir_test_support::*;

const TEN_MIB: u64 = 10 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_each_way_stream_with_flat_memory() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    // Warm up every path once so allocator pools exist before measuring.
    assert_eq!(get(&gw.url("client", "/bytes/65536")).await.body.len(), 65536);
    let before = proc_status_kib("VmHWM");

    // Response: counted chunk by chunk on the client, never collected.
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<Bytes>>();
    let resp = client
        .get(gw.url("client", &format!("/bytes/{TEN_MIB}")).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, TEN_MIB);

    // Request: a generated 10 MiB stream; the upstream counts what arrives.
    let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
    let frames = futures_util::stream::iter((0..160).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))));
    let client = Client::builder(TokioExecutor::new()).build_http::<StreamBody<_>>();
    let req = http::Request::post(gw.url("client", "/upload"))
        .body(StreamBody::new(frames))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let j: serde_json::Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(j["body_len"], TEN_MIB);
    assert_eq!(up.body_bytes(), TEN_MIB);
    // The client sends 64 KiB chunks as fast as the socket takes them; weir's reads of the
    // body grow past its first 4-8 KiB, so the chunks it forwards (whose size bounds what the
    // upstream's hyper hands over) do too. They stayed at 8 KiB when the read buffer was
    // capped at its pooled size (a 20 MB upload from curl in 64 KiB chunks reached the
    // upstream as 5,298 chunks, now 392).
    let max_frame = j["max_frame"].as_u64().unwrap_or(0);
    assert!(
        max_frame > 8 * 1024,
        "largest body piece the upstream got: {max_frame} bytes"
    );

    let grown_kib = proc_status_kib("VmHWM").saturating_sub(before);
    // Buffering either body whole would add at least 10 MiB to the peak.
    assert!(
        grown_kib < 6 * 1024,
        "peak RSS grew by {grown_kib} KiB while streaming 2 x 10 MiB"
    );
}

async fn in_flight(gw: &TestGateway) -> u64 {
    let s = get(&gw.admin_url("/api/v1/status")).await.json();
    s["pools"][0]["endpoints"][0]["in_flight"].as_u64().unwrap()
}

/// `send_timeout`: a client that asks for a large response and stops reading is let go once
/// its socket buffers are full and no write makes progress for that long, and so is the
/// upstream connection feeding it. A client that reads slowly, but reads, gets everything.
#[tokio::test]
async fn a_client_that_stops_reading_is_let_go_after_send_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("a").await;
    let toml = one_pool_with(&[&up], "[listener.limits]\nsend_timeout = \"1s\"\n");
    let gw = TestGateway::start(&toml).await;
    let mut stuck = tokio::net::TcpStream::connect(gw.addr("client")).await.unwrap();
    stuck
        .write_all(b"GET /bytes/209715200 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), async || in_flight(&gw).await == 1).await);
    // Never read: the buffers fill, weir's writes stall, and after send_timeout it gives up.
    assert!(
        eventually(Duration::from_secs(20), async || in_flight(&gw).await == 0).await,
        "the stalled response still holds its upstream connection"
    );
    drop(stuck);

    // 4 MiB read 256 KiB at a time, 300 ms apart: ~4.8 s, far past send_timeout in total.
    let mut slow = tokio::net::TcpStream::connect(gw.addr("client")).await.unwrap();
    slow.write_all(b"GET /bytes/4194304 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut piece = vec![0u8; 256 * 1024];
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut n_piece = 0;
        while n_piece < piece.len() {
            match slow.read(&mut piece[n_piece..]).await.unwrap() {
                0 => break,
                n => n_piece += n,
            }
        }
        got.extend_from_slice(&piece[..n_piece]);
        if n_piece < piece.len() {
            break;
        }
    }
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(dechunk(&got[head_end..]).map(|b| b.len()), Some(4 * 1024 * 1024));
}

/// The data of a whole chunked body (`None` if it is cut short or malformed).
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return (rest == b"\r\n").then_some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size + 2..)?;
    }
}
