//! Micro-benchmarks of the per-request functions of the core: head validation, request building,
//! response head writing and chunk scanning in the HTTP/1 front, the upstream HTTP/1.1 client's head writer (with the forwarding fields),
//! response head parser and chunked decoder, the native balancer's `select`, the per-thread
//! buffer pool's round trip, the upstream connection pool's checkout and checkin, and an
//! exchange's response timeout (the connection's reused timer beside a `tokio::time::timeout`
//! per request), and sixteen request heads sent in one batch (`send_batch`, io_uring) beside
//! one `write` each.
//! Run: `cargo bench --bench hot_path`.
//! CI runs each once (`cargo bench -- --test`) so they cannot rot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Uri};
use weir_core::front::chunked::Chunked;
use weir_core::front::head::{HeadLimits, check_head};
use weir_core::front::response::{Connection, Framing, encode_head};
use weir_core::front::server::take_head;
use weir_core::h1client::chunked::{ChunkedDecoder, Decoded};
use weir_core::h1client::head::{RequestFraming, RequestHead, encode_request, parse_response};
use weir_core::headers::Forwarding;
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
    c.bench_function("front/take_head: validated head to request (7 headers)", |b| {
        b.iter_batched(
            || BytesMut::from(HEAD),
            |mut buf| take_head(&mut buf, &limits, &mut 0),
            BatchSize::SmallInput,
        )
    });
    let mut response = HeaderMap::new();
    for (k, v) in [("content-type", "text/plain"), ("x-upstream", "a"), ("via", "1.1 weir")] {
        response.insert(k, HeaderValue::from_static(v));
    }
    let mut out = Vec::with_capacity(1024);
    c.bench_function("front/encode_head (3 fields, length, date)", |b| {
        b.iter(|| {
            out.clear();
            encode_head(
                http::StatusCode::OK,
                black_box(&response),
                Framing::Length(100),
                Connection::Default,
                &mut out,
            );
        })
    });
}

/// 64 KiB of chunked body in 16 chunks of 4 KiB, with the last chunk.
fn chunked_body() -> Vec<u8> {
    let mut body = Vec::new();
    for _ in 0..16 {
        body.extend_from_slice(b"1000\r\n");
        body.extend_from_slice(&[b'x'; 4096]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    body
}

fn chunked(c: &mut Criterion) {
    let body = chunked_body();
    c.bench_function("front/chunked feed (64 KiB in 16 chunks)", |b| {
        b.iter(|| Chunked::default().feed(black_box(&body), 0))
    });
}

/// What a small upstream answers (the load benchmark's demo upstream sends this shape).
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-upstream: a\r\ncontent-length: 100\r\ndate: Sat, 21 Nov 2026 17:00:00 GMT\r\n\r\n";

fn upstream_client(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "wrk/4.2"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("x-request-id", "5b1f0c2a-8c2e-4b8e-9a37-1f2d3c4b5a69"),
    ] {
        headers.insert(k, HeaderValue::from_static(v));
    }
    let uri = Uri::from_static("/api/v1/items?limit=10");
    let proto = HeaderValue::from_static("http");
    let forwarding = Forwarding {
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        proto: &proto,
        host: headers.get("host"),
        version: http::Version::HTTP_11,
        fields: weir_config::ForwardingHeaders::ALL,
    };
    let head = RequestHead {
        method: &Method::GET,
        uri: &uri,
        headers: &headers,
        forwarding: Some(&forwarding),
        trailers: weir_core::h1client::RequestTrailers::Unknown,
    };
    let mut out = Vec::with_capacity(1024);
    c.bench_function("upstream/encode_request (5 headers + forwarding)", |b| {
        b.iter(|| {
            out.clear();
            encode_request(black_box(&head), RequestFraming::Empty, &mut out);
            out.len()
        })
    });
    let mut buf = BytesMut::with_capacity(8192);
    c.bench_function("upstream/parse_response (4 headers)", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(black_box(RESPONSE));
            parse_response(&mut buf, &Method::GET).map(|h| h.map(|h| h.headers.len()))
        })
    });
    let body = chunked_body();
    let mut buf = BytesMut::with_capacity(body.len());
    c.bench_function("upstream/chunked decode (64 KiB in 16 chunks)", |b| {
        b.iter(|| {
            buf.clear();
            buf.extend_from_slice(black_box(&body));
            let mut decoder = ChunkedDecoder::default();
            let mut data = 0;
            while let Ok(Decoded::Data(d)) = decoder.decode(&mut buf) {
                data += d.len();
            }
            data
        })
    });
}

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("balancer/native round-robin select");
    for n in [4usize, 64, 1024] {
        let endpoints: Vec<Arc<Endpoint>> = (0..n)
            .map(|i| {
                let cfg = weir_config::Endpoint::at(weir_config::EndpointAddress::Socket(
                    format!("127.0.0.1:{}", 10000 + i).parse().unwrap(),
                ));
                Arc::new(Endpoint::new(i as u32, &cfg, 1, true))
            })
            .collect();
        let rr = RoundRobin::new(&vec![1; n]);
        let ctx = SelectCtx::first_try(1);
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| rr.select(black_box(&endpoints), &ctx))
        });
    }
    group.finish();
}

/// The upstream read buffer's round trip per request: taken when the answer arrives, its body
/// split off and handed on, given back when the connection idles, reclaimed on the next take.
fn buffers(c: &mut Criterion) {
    use weir_core::bufpool::{UPSTREAM_READ, give_read, take_read};
    c.bench_function("bufpool/upstream read buffer: take, split body, give, drop body", |b| {
        b.iter(|| {
            let mut buf = take_read(UPSTREAM_READ);
            buf.extend_from_slice(black_box(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"));
            let body = buf.split().freeze();
            give_read(&mut buf, UPSTREAM_READ);
            black_box(body);
        })
    });
    // With HTTP/2 clients the body waits in the h2 crate's send queue until the connection's
    // task writes it: the buffer is still shared when the next request takes one.
    c.bench_function(
        "bufpool/upstream read buffer, the last body still queued at the take",
        |b| {
            let mut queued = None;
            b.iter(|| {
                let mut buf = take_read(UPSTREAM_READ);
                buf.extend_from_slice(black_box(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"));
                let body = buf.split().freeze();
                give_read(&mut buf, UPSTREAM_READ);
                // The last response leaves the send queue only now.
                drop(queued.replace(body));
            })
        },
    );
}

/// A request's trip through an endpoint's idle pool: its keep-alive connection taken (checked
/// for staleness) and given back when the response ends. Real loopback connections, as many as
/// requests in flight, so the queue's blocks are filled and freed as in traffic.
fn pool(c: &mut Criterion) {
    use std::time::{Duration, Instant};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("upstream/pool checkout + checkin");
    for in_flight in [1usize, 64] {
        let (endpoint, _listener) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let cfg = weir_config::Endpoint::at(weir_config::EndpointAddress::Socket(listener.local_addr().unwrap()));
            (Endpoint::new(0, &cfg, 64, true), listener)
        });
        let (connect, idle) = (Duration::from_secs(1), Duration::from_secs(60));
        // Open the connections once; the accepted ends stay in the listener's backlog.
        rt.block_on(async {
            let mut conns = Vec::new();
            for _ in 0..in_flight {
                conns.push(endpoint.checkout(connect, idle, true, None, None).await.unwrap().0);
            }
            conns.into_iter().for_each(|c| endpoint.checkin(c));
        });
        group.bench_with_input(BenchmarkId::from_parameter(in_flight), &in_flight, |b, &n| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut held = Vec::with_capacity(n);
                    let start = Instant::now();
                    for _ in 0..iters {
                        for _ in 0..n {
                            let (conn, taken) = endpoint.checkout(connect, idle, true, None, None).await.unwrap();
                            assert_eq!(taken, weir_core::upstream::Taken::Idle);
                            held.push(conn);
                        }
                        held.drain(..).for_each(|c| endpoint.checkin(c));
                    }
                    start.elapsed() / n as u32
                })
            })
        });
    }
    group.finish();
}

/// The response timeout of one upstream exchange: work that is pending on its first poll and
/// done on its second (as an exchange is: sent, then answered), raced with a 60 s timeout. The
/// connection's reused timer (`ReusedTimer::within`, what weir does) beside a fresh
/// `tokio::time::timeout` per request (what it did: a timer wheel insert and removal).
fn response_timer(c: &mut Criterion) {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;
    use weir_core::h1client::ReusedTimer;
    /// Pending once, then ready.
    struct Answer(bool);
    impl Future for Answer {
        type Output = ();
        fn poll(mut self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if std::mem::replace(&mut self.0, true) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = rt.enter();
    let mut cx = Context::from_waker(Waker::noop());
    let limit = Duration::from_secs(60);
    let mut group = c.benchmark_group("upstream/response timeout of one exchange");
    let mut timer = ReusedTimer::default();
    group.bench_function("reused timer (ReusedTimer::within)", |b| {
        b.iter(|| {
            let mut exchange = pin!(timer.within(limit, Answer(false)));
            assert!(exchange.as_mut().poll(&mut cx).is_pending());
            assert!(matches!(exchange.poll(&mut cx), Poll::Ready(Ok(()))));
        })
    });
    // What a pooled connection's attempt does: the deadline from a clock reading it has.
    let start = tokio::time::Instant::now();
    group.bench_function(
        "reused timer from the attempt's reading (ReusedTimer::within_from)",
        |b| {
            b.iter(|| {
                let mut exchange = pin!(timer.within_from(start, limit, Answer(false)));
                assert!(exchange.as_mut().poll(&mut cx).is_pending());
                assert!(matches!(exchange.poll(&mut cx), Poll::Ready(Ok(()))));
            })
        },
    );
    group.bench_function("tokio::time::timeout per request", |b| {
        b.iter(|| {
            let mut exchange = pin!(tokio::time::timeout(limit, Answer(false)));
            assert!(exchange.as_mut().poll(&mut cx).is_pending());
            assert!(matches!(exchange.poll(&mut cx), Poll::Ready(Ok(()))));
        })
    });
    group.finish();
}

/// The retry budget counts every request a pool gets (its clock is read each time).
fn retry_budget(c: &mut Criterion) {
    let budget = weir_core::budget::RetryBudget::new(0.2);
    c.bench_function("budget/record_request", |b| b.iter(|| budget.record_request()));
}

/// Sixteen 200-byte request heads to sixteen sockets, as one pass over a worker's run queue
/// makes them: queued in the thread's batch and sent with one `io_uring_enter`
/// (`send_batch::send`, what weir does), beside one `write` each. Both run in a `block_on`;
/// the receivers are drained outside the timed part.
#[cfg(target_os = "linux")]
fn send_batch(c: &mut Criterion) {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Inside the runtime, as weir's gateway does: a current-thread runtime's batch is its own.
    assert!(
        rt.block_on(async { weir_core::send_batch::enable() }),
        "io_uring is not available on this machine: the batch cannot be measured"
    );
    let pairs: Vec<(std::net::TcpStream, std::net::TcpStream)> = (0..16)
        .map(|_| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let tx = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (rx, _) = listener.accept().unwrap();
            tx.set_nodelay(true).unwrap();
            rx.set_nonblocking(true).unwrap();
            (tx, rx)
        })
        .collect();
    let fds: Vec<i32> = pairs.iter().map(|(tx, _)| tx.as_raw_fd()).collect();
    let head = [b'x'; 200];
    let drain = || {
        let mut buf = [0u8; 4096];
        for (_, rx) in &pairs {
            while matches!((&*rx).read(&mut buf), Ok(n) if n > 0) {}
        }
    };
    let mut group = c.benchmark_group("send_batch: 16 request heads of 200 bytes");
    group.bench_function("one batch (send_batch::send, one io_uring_enter)", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let sent = rt.block_on(futures_util::future::join_all(
                    fds.iter().map(|&fd| weir_core::send_batch::send(fd, &head)),
                ));
                took += start.elapsed();
                assert!(sent.iter().all(|r| matches!(r, Some(Ok(200)))));
                drain();
            }
            took
        })
    });
    group.bench_function("one write each", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                rt.block_on(async {
                    for (tx, _) in &pairs {
                        assert_eq!((&*tx).write(&head).unwrap(), 200);
                    }
                });
                took += start.elapsed();
                drain();
            }
            took
        })
    });
    group.finish();
}
#[cfg(not(target_os = "linux"))]
fn send_batch(_: &mut Criterion) {}

criterion_group!(
    benches,
    send_batch,
    retry_budget,
    head,
    chunked,
    upstream_client,
    select,
    buffers,
    pool,
    response_timer
);
criterion_main!(benches);
