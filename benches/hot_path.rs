//! Micro-benchmarks of the per-request functions of the core: head validation and chunk scanning
//! in the strict front, and the native balancer's `select`. Run: `cargo bench --bench hot_path`.
//! CI runs each once (`cargo bench -- --test`) so they cannot rot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use weir_core::front::chunked::Chunked;
use weir_core::front::head::{HeadLimits, check_head};
use weir_core::policy::{BalancePolicy, RoundRobin, SelectCtx};
use weir_core::upstream::Endpoint;

const HEAD: &[u8] = b"GET /api/v1/items?limit=10 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: wrk/4.2\r\nAccept: application/json\r\nAccept-Encoding: gzip\r\nX-Request-Id: 5b1f0c2a-8c2e-4b8e-9a37-1f2d3c4b5a69\r\nConnection: keep-alive\r\n\r\n";

fn head(c: &mut Criterion) {
    let limits = HeadLimits {
        max_header_bytes: 65536,
        max_headers: 100,
        max_uri_bytes: 8192,
        max_body_bytes: 0,
    };
    c.bench_function("front/check_head (7 headers)", |b| {
        b.iter(|| check_head(black_box(HEAD), &limits))
    });
}

fn chunked(c: &mut Criterion) {
    let mut body = Vec::new();
    for _ in 0..16 {
        body.extend_from_slice(b"1000\r\n");
        body.extend_from_slice(&[b'x'; 4096]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    c.bench_function("front/chunked feed (64 KiB in 16 chunks)", |b| {
        b.iter(|| Chunked::default().feed(black_box(&body), 0))
    });
}

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer/native round-robin select");
    for n in [4usize, 64, 1024] {
        let endpoints: Vec<Arc<Endpoint>> = (0..n)
            .map(|i| {
                let cfg = weir_config::Endpoint {
                    address: weir_config::EndpointAddress::Socket(format!("127.0.0.1:{}", 10000 + i).parse().unwrap()),
                    weight: 1,
                    zone: String::new(),
                    backup: false,
                };
                Arc::new(Endpoint::new(i as u32, &cfg, 1, true))
            })
            .collect();
        let rr = RoundRobin::new(&vec![1; n]);
        let ctx = SelectCtx {
            request_id: 1,
            affinity_hash: 0,
            attempt: 1,
            tried: &[],
            cookie: 0,
        };
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| rr.select(black_box(&endpoints), &ctx))
        });
    }
    group.finish();
}

criterion_group!(benches, head, chunked, select);
criterion_main!(benches);
