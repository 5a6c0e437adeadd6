//! Zero-downtime binary upgrade, as operators run it: `weir run --upgrade-socket S`, later a new
//! binary with `weir run --upgrade-from S` takes over the listening sockets; the old process
//! drains and exits. Real processes, real sockets, clients sending all along. The processes run
//! one worker thread (the current-thread runtime; other CLI tests cover the multi-thread one).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use weir_test_support::*;

fn weir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weir"))
}

fn config(ups: &[&Upstream], port: u16, admin: u16, extra: &str) -> String {
    let endpoints: String = ups
        .iter()
        .map(|u| format!("[[pool.endpoint]]\naddress = \"{}\"\n", u.addr))
        .collect();
    format!(
        "[runtime]\nshutdown_timeout = \"10s\"\nworker_threads = 1\n[plugins]\ndir = \"{}\"\ncall_timeout = \"100ms\"\n[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n{extra}[[pool]]\nname = \"app\"\n{endpoints}",
        plugins_dist().display()
    )
}

/// Clients sending GETs until stopped: half on keep-alive connections, half on a fresh
/// connection per request (so connects are tested too). Counts successes and keeps failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks = (0..clients)
            .map(|i| {
                let (stop, ok, failures, url) = (stop.clone(), ok.clone(), failures.clone(), url.clone());
                tokio::spawn(async move {
                    let keep_alive = i % 2 == 0;
                    let mut client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                    while !stop.load(Ordering::Relaxed) {
                        if !keep_alive {
                            client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                        }
                        let result = tokio::time::timeout(Duration::from_secs(10), async {
                            let resp = client.get(url.parse().unwrap()).await.map_err(|e| format!("{e:?}"))?;
                            let status = resp.status();
                            resp.into_body().collect().await.map_err(|e| format!("body: {e:?}"))?;
                            if status == 200 {
                                Ok(())
                            } else {
                                Err(format!("status {status}"))
                            }
                        })
                        .await;
                        match result {
                            Ok(Ok(())) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => failures.lock().unwrap().push(e),
                            Err(_) => failures.lock().unwrap().push("timed out".to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests succeeded than now.
    async fn progress(&self, n: u64) {
        let target = self.ok() + n;
        assert!(
            eventually(Duration::from_secs(20), async || self.ok() >= target).await,
            "the load stalled at {} ok, failures: {:?}",
            self.ok(),
            self.failures.lock().unwrap()
        );
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

fn socket_arg<'a>(flag: &'static str, path: &'a Path) -> [&'a OsStr; 2] {
    [OsStr::new(flag), path.as_os_str()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_binary_upgrades_under_load_fail_no_request_and_the_old_processes_exit() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (port, admin) = (free_port(), free_port());
    let sockets = tempfile::tempdir().unwrap();
    let socket: PathBuf = sockets.path().join("weir.upgrade.sock");
    let toml = config(&[&a, &b], port, admin, "");
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();

    let mut old = WeirProcess::spawn_with_args(weir(), &toml, admin_addr, &socket_arg("--upgrade-socket", &socket));
    old.wait_ready().await;
    assert!(
        eventually(Duration::from_secs(10), async || socket.exists()).await,
        "{}",
        old.stderr_text()
    );

    let started = Instant::now();
    let load = Load::start(format!("http://127.0.0.1:{port}/"), 20);
    load.progress(300).await;

    // First upgrade: the new process adopts the sockets, the old one drains and exits 0.
    let mut second = WeirProcess::spawn_with_args(weir(), &toml, admin_addr, &socket_arg("--upgrade-from", &socket));
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "old: {}\nnew: {}",
        old.stderr_text(),
        second.stderr_text()
    );
    assert!(second.child.try_wait().unwrap().is_none(), "{}", second.stderr_text());
    assert!(old.stderr_text().contains("binary upgrade"), "{}", old.stderr_text());
    load.progress(300).await;

    // The new process serves upgrades on the same socket: a second upgrade chains.
    let mut third = WeirProcess::spawn_with_args(weir(), &toml, admin_addr, &socket_arg("--upgrade-from", &socket));
    assert_eq!(
        second.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "second: {}\nthird: {}",
        second.stderr_text(),
        third.stderr_text()
    );
    load.progress(300).await;

    // Keep the clients going for 10 s in all.
    if let Some(rest) = Duration::from_secs(10).checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok + failures.len() as u64
    );
    assert!(ok >= 900, "{ok}");
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.status, 200);
    assert_eq!(get(&format!("http://127.0.0.1:{admin}/readyz")).await.status, 200);
    assert!(third.child.try_wait().unwrap().is_none(), "{}", third.stderr_text());
    third.signal("TERM");
    assert_eq!(third.wait_exit(Duration::from_secs(15)).await, Some(0));
    assert!(!socket.exists(), "the last process removes its upgrade socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_fails_to_start_leaves_the_old_one_serving() {
    let up = Upstream::start("a").await;
    let (port, admin) = (free_port(), free_port());
    let sockets = tempfile::tempdir().unwrap();
    let socket = sockets.path().join("weir.upgrade.sock");
    let toml = config(&[&up], port, admin, "");
    let admin_addr = format!("127.0.0.1:{admin}").parse().unwrap();
    let mut old = WeirProcess::spawn_with_args(weir(), &toml, admin_addr, &socket_arg("--upgrade-socket", &socket));
    old.wait_ready().await;
    assert!(eventually(Duration::from_secs(10), async || socket.exists()).await);

    // The new config adds a listener on a port someone else holds: the new process receives
    // the sockets, cannot bind, exits 1; the old process never stopped serving.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let extra = format!(
        "[[listener]]\nname = \"extra\"\nbind = \"{}\"\npool = \"app\"\n",
        taken.local_addr().unwrap()
    );
    let mut bad = WeirProcess::spawn_with_args(
        weir(),
        &config(&[&up], port, admin, &extra),
        admin_addr,
        &socket_arg("--upgrade-from", &socket),
    );
    assert_eq!(bad.wait_exit(Duration::from_secs(20)).await, Some(1));
    assert!(bad.stderr_text().contains("cannot bind"), "{}", bad.stderr_text());
    assert!(
        old.stderr_eventually_contains("binary upgrade aborted").await,
        "{}",
        old.stderr_text()
    );
    assert!(old.child.try_wait().unwrap().is_none(), "{}", old.stderr_text());
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.status, 200);

    // A later good upgrade still works.
    let mut good = WeirProcess::spawn_with_args(weir(), &toml, admin_addr, &socket_arg("--upgrade-from", &socket));
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "{}",
        good.stderr_text()
    );
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.status, 200);
    good.signal("TERM");
    assert_eq!(good.wait_exit(Duration::from_secs(15)).await, Some(0));
}
