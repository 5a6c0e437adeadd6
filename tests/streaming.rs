//! 10 MiB request and response bodies stream through the gateway without being buffered.
//! One test per binary, so the process's peak RSS speaks about this traffic only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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
