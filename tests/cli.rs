//! The `weir` binary as users run it: `weir check`, exit codes, error messages, SIGTERM drain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weir_test_support::*;

fn weir() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_weir"))
}

/// `weir check --config <path>`.
fn check(path: &Path) -> std::process::Output {
    Command::new(weir())
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap()
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_config_passes_weir_check() {
    let mut files = Vec::new();
    toml_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config"), &mut files);
    assert!(files.len() >= 4, "{files:?}");
    for f in files {
        let out = check(&f);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
    }
}

#[test]
fn logs_written_to_a_pipe_carry_no_terminal_colour_codes() {
    let out = check(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/weir.toml"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The plugins' load lines, with their fields as plain `key=value`.
    assert!(err.contains("plugin loaded plugin=\"round-robin\""), "{err}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
}

#[test]
fn a_broken_config_names_file_line_and_key_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\npool = \"nope\"\n[[pool]]\nname = \"p\"\n[pool.passive]\nfail_timeout = \"5 s\"\n[[pool.endpoint]]\naddress = \"127.0.0.1:2\"\n",
    )
    .unwrap();
    for cmd in ["check", "run"] {
        let out = Command::new(weir())
            .arg(cmd)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        let shown = path.display().to_string();
        assert!(
            err.contains(&format!("{shown}:4:8: key `listener[0].pool`")),
            "{cmd}: {err}"
        );
        assert!(
            err.contains(&format!("{shown}:8:16: key `pool[0].passive.fail_timeout`")),
            "{cmd}: {err}"
        );
        assert!(err.contains("help:"), "{err}");
    }
}

/// Files that exist but do not load (a key that is not the certificate's, a CA file without a
/// certificate, an SNI certificate that is not PEM) are config errors too: file, line and key,
/// from `check` and from `run`.
#[test]
fn tls_files_that_do_not_load_are_reported_at_their_key() {
    let certs = TestCerts::new();
    let (cert, _) = certs.leaf("a", &["a.test"]);
    let (_, other_key) = certs.leaf("b", &["b.test"]);
    let garbage = certs.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM at all\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(
        &path,
        format!(
            "[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:{port}\"\npool = \"p\"\n[listener.tls]\ncert = \"{cert}\"\nkey = \"{other_key}\"\n[[listener.tls.sni]]\nserver_name = \"c.test\"\ncert = \"{garbage}\"\nkey = \"{other_key}\"\n[[pool]]\nname = \"p\"\n[pool.tls]\nca = \"{garbage}\"\n[[pool.endpoint]]\naddress = \"127.0.0.1:2\"\n",
            admin = free_port(),
            port = free_port(),
            cert = cert.display(),
            other_key = other_key.display(),
            garbage = garbage.display(),
        ),
    )
    .unwrap();
    let shown = path.display().to_string();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for (at, what) in [
        ("9:7: key `listener[0].tls.key`", "does not match key"),
        ("12:8: key `listener[0].tls.sni[0].cert`", "no certificate found"),
        ("17:6: key `pool[0].tls.ca`", "no certificate found in CA file"),
    ] {
        let line = format!("error: {shown}:{at}: ");
        assert!(
            err.lines().any(|l| l.starts_with(&line) && l.contains(what)),
            "no `{line}... {what}` in:\n{err}"
        );
    }
    // `run` refuses to start at the first stage that fails (the pools, then the listeners),
    // said the same way, an error a line.
    let run = |expected: &[&str]| {
        let out = Command::new(weir())
            .arg("run")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        for at in expected {
            let line = format!("error: {shown}:{at}: ");
            assert!(err.lines().any(|l| l.starts_with(&line)), "no `{line}` in:\n{err}");
        }
    };
    run(&["17:6: key `pool[0].tls.ca`"]);
    let text = std::fs::read_to_string(&path).unwrap();
    let (head, tail) = text.split_once("[pool.tls]\n").unwrap();
    let without_ca = tail.split_once('\n').unwrap().1;
    std::fs::write(&path, format!("{head}{without_ca}")).unwrap();
    run(&[
        "9:7: key `listener[0].tls.key`",
        "12:8: key `listener[0].tls.sni[0].cert`",
    ]);
}

#[test]
fn syntax_errors_and_unknown_keys_exit_1_with_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, "[[listener]]\nname = \"a\"\nbnid = \"x\"\n").unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":3:1") && err.contains("unknown field `bnid`"), "{err}");
}

#[test]
fn check_reports_unavailable_policies_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, "[[listener]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[[pool]]\nname = \"p\"\nbalancer = { plugin = \"no-such-plugin\" }\n[[pool.endpoint]]\naddress = \"127.0.0.1:2\"\n").unwrap();
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-plugin"));
    let out = check(Path::new("/nonexistent.toml"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent.toml"));
}

fn process_config(up: &Upstream, port: u16, admin: u16) -> String {
    format!(
        "[runtime]\nshutdown_timeout = \"10s\"\n[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
        up.addr
    )
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let up = Upstream::start("a").await;
    let (port, admin) = (free_port(), free_port());
    let mut weir = WeirProcess::spawn(
        weir(),
        &process_config(&up, port, admin),
        format!("127.0.0.1:{admin}").parse().unwrap(),
    );
    weir.wait_ready().await;
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.status, 200);

    // One request in flight over HTTP/1.1 and one over HTTP/2 (h2c): both finish.
    let url = format!("http://127.0.0.1:{port}/delay/2000");
    let h1 = {
        let url = url.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let r = get(&url).await;
            (r.status, start.elapsed())
        })
    };
    let h2 = tokio::spawn(async move {
        let start = Instant::now();
        let r = h2c_get(&url).await;
        (r.status, r.version, start.elapsed())
    });
    assert!(eventually(Duration::from_secs(5), async || up.requests() == 3).await);
    weir.signal("TERM");
    // Draining: readiness is off while the requests finish.
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    assert!(eventually(Duration::from_secs(2), async || get(&readyz).await.status == 503).await);
    let (status, elapsed) = h1.await.unwrap();
    assert_eq!(status, 200, "the in-flight request was cut");
    assert!(elapsed >= Duration::from_millis(1900));
    let (status, version, elapsed) = h2.await.unwrap();
    assert_eq!(
        (status, version),
        (http::StatusCode::OK, http::Version::HTTP_2),
        "the in-flight HTTP/2 stream was cut"
    );
    assert!(elapsed >= Duration::from_millis(1900));
    assert_eq!(
        weir.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "{}",
        weir.stderr_text()
    );
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "still accepting after exit"
    );
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let up = Upstream::start("a").await;
    let (port, admin) = (free_port(), free_port());
    let config = process_config(&up, port, admin);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config).unwrap();
    let stderr = dir.path().join("stderr");
    let mut child = Command::new(weir())
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let readyz = format!("http://127.0.0.1:{admin}/readyz");
    let ready = eventually(Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(("127.0.0.1", admin)).await.is_ok() && get(&readyz).await.status == 200
    })
    .await;
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(ready);
    let text = std::fs::read_to_string(&stderr).unwrap();
    assert!(text.lines().count() >= 2, "{text}");
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some() && v.get("message").is_some(), "{line}");
    }
}

#[tokio::test]
async fn probes_answer_on_the_admin_listener() {
    let up = Upstream::start("a").await;
    let gw = TestGateway::start(&one_pool(&[&up])).await;
    for path in ["/livez", "/readyz", "/startupz"] {
        assert_eq!(get(&gw.admin_url(path)).await.status, 200, "{path}");
    }
    let status = get(&gw.admin_url("/api/v1/status")).await.json();
    assert_eq!(status["generation"], 1);
    assert_eq!(status["listeners"][0]["name"], "client");
    assert_eq!(status["pools"][0]["endpoints"][0]["address"], up.addr.to_string());
}

/// A TLS ClientHello whose SNI is the IP address 127.0.0.1: RFC 6066 forbids it, and wrk (any
/// OpenSSL client given `https://127.0.0.1/`) sends it. Record, handshake header, TLS 1.2
/// version, a zero random, no session id, TLS_AES_128_GCM_SHA256, null compression, and the
/// `server_name` extension alone.
fn hello_with_ip_sni() -> Vec<u8> {
    let mut hello = vec![0x16, 0x03, 0x01, 0x00, 0x41, 0x01, 0x00, 0x00, 0x3d, 0x03, 0x03];
    hello.extend_from_slice(&[0; 32]);
    hello.extend_from_slice(&[0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00]);
    hello.extend_from_slice(&[0x00, 0x12, 0x00, 0x00, 0x00, 0x0e, 0x00, 0x0c, 0x00, 0x00, 0x09]);
    hello.extend_from_slice(b"127.0.0.1");
    hello
}

/// Sends the hello and reads until weir answers (an alert: the hello offers nothing it can use)
/// and closes; by then rustls has parsed the extension.
async fn send_hello(port: u16) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(&hello_with_ip_sni()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "weir neither answered nor closed");
    assert_eq!(answer.first(), Some(&0x15), "expected a TLS alert, got {answer:?}");
}

#[tokio::test]
async fn a_client_sending_an_ip_address_as_sni_is_not_a_log_line_per_connection() {
    let up = Upstream::start("a").await;
    let certs = TestCerts::new();
    let (cert, key) = certs.leaf("gw", &["localhost"]);
    let spawn = |env: &[(&str, &str)]| {
        let (port, admin) = (free_port(), free_port());
        let toml = format!(
            "[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n[[pool]]\nname = \"app\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
            cert.display(),
            key.display(),
            up.addr
        );
        let weir = WeirProcess::spawn_with_env(weir(), &toml, format!("127.0.0.1:{admin}").parse().unwrap(), &[], env);
        (weir, port)
    };
    // Asked for, the warning is there: the hello does make rustls warn.
    let (mut loud, port) = spawn(&[("WEIR_LOG", "info,rustls=warn")]);
    loud.wait_ready().await;
    send_hello(port).await;
    assert!(
        loud.stderr_eventually_contains("Illegal SNI extension").await,
        "{}",
        loud.stderr_text()
    );
    // By default (and with WEIR_LOG=warn) it is not: rustls logs before it answers.
    for env in [&[][..], &[("WEIR_LOG", "warn")][..]] {
        let (mut quiet, port) = spawn(env);
        quiet.wait_ready().await;
        for _ in 0..3 {
            send_hello(port).await;
        }
        let log = quiet.stderr_text();
        assert!(!log.contains("Illegal SNI"), "{log}");
    }
}

/// A replica whose name does not resolve (a container not up yet) is one warning when its lookups
/// start failing, with the resolver's error, not a warning per lookup: the resolve loops (one per
/// pool naming it, `resolve = "all"` or not), every request that picks it and every reload look
/// it up again.
#[tokio::test]
async fn a_name_that_does_not_resolve_is_logged_once_not_per_lookup() {
    let up = Upstream::start("a").await;
    let (port, admin) = (free_port(), free_port());
    let config = |interval: &str| {
        format!(
            "[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nresolve_interval = \"{interval}\"\n[[pool.endpoint]]\naddress = \"{}\"\n[[pool.endpoint]]\naddress = \"replica-b.invalid:{}\"\n[[pool]]\nname = \"all\"\nresolve = \"all\"\nresolve_interval = \"{interval}\"\n[[pool.endpoint]]\naddress = \"replica-b.invalid:{}\"\n",
            up.addr,
            up.addr.port(),
            up.addr.port()
        )
    };
    let toml = config("20ms");
    let env = [("WEIR_LOG", "info,weir_core::dns=debug")];
    let mut weir = WeirProcess::spawn_with_env(weir(), &toml, format!("127.0.0.1:{admin}").parse().unwrap(), &[], &env);
    weir.wait_ready().await;
    for _ in 0..4 {
        assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.status, 200);
    }
    let retried = eventually(Duration::from_secs(30), async || {
        weir.stderr_text().matches("name resolution still failing").count() >= 3
    })
    .await;
    assert!(retried, "the name was not looked up again:\n{}", weir.stderr_text());
    // New generations (their resolve loops start afresh) do not warn again.
    for (generation, interval) in [(2, "21ms"), (3, "22ms")] {
        std::fs::write(&weir.config, config(interval)).unwrap();
        weir.signal("HUP");
        let url = format!("http://{}/api/v1/status", weir.admin);
        let reloaded = eventually(Duration::from_secs(10), async || {
            get(&url).await.json()["generation"].as_u64() >= Some(generation)
        })
        .await;
        assert!(reloaded, "{}", weir.stderr_text());
    }
    let lookups = weir.stderr_text().matches("name resolution still failing").count();
    let retried = eventually(Duration::from_secs(30), async || {
        weir.stderr_text().matches("name resolution still failing").count() >= lookups + 3
    })
    .await;
    let log = weir.stderr_text();
    assert!(retried, "the name was not looked up again after the reloads:\n{log}");
    let warned: Vec<&str> = log.lines().filter(|l| l.contains("name resolution failed")).collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("WARN") && warned[0].contains("replica-b.invalid"),
        "{}",
        warned[0]
    );
    assert!(
        warned[0].contains("error="),
        "the resolver's error is missing: {}",
        warned[0]
    );
}

/// An endpoint whose checks have never passed takes no traffic, and the log says why, once: it
/// was never "healthy", so it never "became unhealthy" (that line alone left an operator with a
/// misconfigured check and nothing in the log). Once healthy, a failing check logs that change.
#[tokio::test]
async fn an_endpoint_that_never_passes_its_checks_is_logged_once_with_the_reason() {
    let up = Upstream::start("a").await;
    up.set_upcheck(503);
    let (port, admin) = (free_port(), free_port());
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n[pool.health]\npath = \"/upcheck\"\ninterval = \"30ms\"\nunhealthy_threshold = 2\n[[pool.endpoint]]\naddress = \"{}\"\n",
        up.addr
    );
    let mut weir = WeirProcess::spawn(weir(), &toml, format!("127.0.0.1:{admin}").parse().unwrap());
    weir.wait_ready().await;
    let status = format!("http://{}/api/v1/status", weir.admin);
    let failed = async || get(&status).await.json()["pools"][0]["endpoints"][0]["checks"]["failed"].as_u64();
    assert!(eventually(Duration::from_secs(10), async || failed().await >= Some(8)).await);
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.status, 503);
    let log = weir.stderr_text();
    let warned: Vec<&str> = log.lines().filter(|l| l.contains("not in rotation yet")).collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(
        warned[0].contains("WARN") && warned[0].contains("answered 503"),
        "{}",
        warned[0]
    );
    assert!(!log.contains("endpoint unhealthy"), "{log}");
    // Healthy, then failing: that change is logged.
    up.set_upcheck(200);
    let url = format!("http://127.0.0.1:{port}/");
    assert!(eventually(Duration::from_secs(10), async || get(&url).await.status == 200).await);
    up.set_upcheck(503);
    assert!(
        weir.stderr_eventually_contains("endpoint unhealthy").await,
        "{}",
        weir.stderr_text()
    );
    assert_eq!(weir.stderr_text().matches("not in rotation yet").count(), 1);
}

/// A plugin that logs on every call (`fault-chatty`, 10 kB a line) does not flood weir's log:
/// 20 lines a second per plugin, each cut to 1 KiB, and the count of the dropped ones logged
/// with the next line that fits. Every request is still served.
#[tokio::test]
async fn a_plugin_logging_on_every_call_gets_twenty_lines_a_second() {
    let up = Upstream::start("a").await;
    let (port, admin) = (free_port(), free_port());
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\n[plugins]\ndir = \"{}\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n[[pool]]\nname = \"app\"\nbalancer = {{ plugin = \"fault-chatty\" }}\n[[pool.endpoint]]\naddress = \"{}\"\n",
        plugins_dist().display(),
        up.addr
    );
    let mut weir = WeirProcess::spawn(weir(), &toml, format!("127.0.0.1:{admin}").parse().unwrap());
    weir.wait_ready().await;
    let url = format!("http://127.0.0.1:{port}/");
    let start = Instant::now();
    for _ in 0..200 {
        assert_eq!(get(&url).await.status, 200);
    }
    // Into the next second and on: its first line reports what the budget dropped.
    let reported = eventually(Duration::from_secs(10), async || {
        assert_eq!(get(&url).await.status, 200);
        weir.stderr_text().contains("plugin log lines dropped")
    })
    .await;
    let seconds = start.elapsed().as_secs() + 1;
    let log = weir.stderr_text();
    assert!(reported, "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("chatty select")).collect();
    assert!(
        !lines.is_empty() && lines.len() as u64 <= 20 * (seconds + 1),
        "{} plugin lines in {seconds} s",
        lines.len()
    );
    assert!(
        lines.iter().all(|l| l.len() < 1_300 && l.contains("… (10")),
        "lines were not cut: {:?}",
        lines.first()
    );
    let dropped = log
        .lines()
        .find(|l| l.contains("plugin log lines dropped"))
        .unwrap_or("");
    assert!(
        dropped.contains("plugin=\"fault-chatty\"") || dropped.contains("plugin=fault-chatty"),
        "{dropped}"
    );
    assert!(!dropped.contains("suppressed=0"), "{dropped}");
}

/// Upstream requests and responses go in batches, one per worker thread: with one worker (a
/// current-thread runtime, what the load benchmark measures) and with two, whose tasks move
/// between the workers; `WEIR_SEND_BATCH=0` turns it off. Told apart by
/// `weir_batched_sends_total`; every reply must be its own request's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_send_in_batches_unless_told_not_to() {
    let up = Upstream::start("a").await;
    for (workers, env, batched) in [
        (1, &[][..], true),
        (2, &[][..], true),
        (2, &[("WEIR_SEND_BATCH", "0")][..], false),
    ] {
        let (port, admin) = (free_port(), free_port());
        let toml = format!(
            "[runtime]\nworker_threads = {workers}\n[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
            up.addr
        );
        let mut weir =
            WeirProcess::spawn_with_env(weir(), &toml, format!("127.0.0.1:{admin}").parse().unwrap(), &[], env);
        weir.wait_ready().await;
        for round in 0..5 {
            let replies = futures_util::future::join_all((0..40).map(|i| {
                let url = format!("http://127.0.0.1:{port}/r{round}/{i}");
                async move { get(&url).await }
            }))
            .await;
            for (i, r) in replies.iter().enumerate() {
                assert_eq!(r.status, 200, "{workers} workers, request {i}: {}", r.text());
                let path = format!("\"path\":\"/r{round}/{i}\"");
                assert!(
                    r.text().contains(&path),
                    "{workers} workers, request {i} got {}",
                    r.text()
                );
            }
        }
        let metrics = get(&format!("http://{}/metrics", weir.admin)).await.text();
        let sends = metrics
            .lines()
            .find_map(|l| l.strip_prefix("weir_batched_sends_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no weir_batched_sends_total in\n{metrics}"));
        if batched {
            assert!(
                sends >= 400.0,
                "{workers} workers, 200 requests and 200 responses: {sends}"
            );
        } else {
            assert_eq!(sends, 0.0, "WEIR_SEND_BATCH=0");
        }
    }
}

/// Started with systemd's default soft limit of descriptors (here 256, under a hard one of 4096),
/// weir raises it to the hard one, as Go's runtime and HAProxy do; and as 4096 is still short of
/// what the default `max_connections = 10000` may take, a warning says so. Before, weir kept the
/// soft limit and failed to accept past it.
#[tokio::test]
async fn the_descriptor_limit_is_raised_to_the_hard_one_and_a_short_one_is_named() {
    let up = Upstream::start("a").await;
    let (port, admin) = (free_port(), free_port());
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
        up.addr
    );
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("weir-low-limit");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -Sn 256 && ulimit -Hn 4096 && exec {} \"$@\"\n",
            weir().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut weir = WeirProcess::spawn(&wrapper, &toml, format!("127.0.0.1:{admin}").parse().unwrap());
    weir.wait_ready().await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", weir.child.id())).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{open_files}");
    let log = weir.stderr_text();
    assert!(
        log.contains("file descriptor limit is below") && log.contains("limit=4096") && log.contains("needed=20064"),
        "{log}"
    );
    assert_eq!(get(&format!("http://127.0.0.1:{port}/")).await.status, 200);
}

/// An upstream that breaks HTTP is named in the log with what it did, once a second at most: a
/// response head weir cannot pass on (the client gets a 502 saying so), and a body it cut short
/// (the client got part of it). Before, both were silent.
#[tokio::test]
async fn an_upstream_breaking_http_is_named_in_the_log() {
    let up = raw_upstream(|_, head| {
        if head.starts_with("GET /bad-head") {
            Act::ReplyClose(vec![
                b"HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 2\r\n\r\nok",
            ])
        } else {
            Act::ReplyClose(vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
                b"only part of it",
            ])
        }
    })
    .await;
    let (port, admin) = (free_port(), free_port());
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n[pool.retry]\nmax_attempts = 1\n[pool.passive]\nmax_fails = 0\n[[pool.endpoint]]\naddress = \"{}\"\n",
        up.addr
    );
    let mut weir = WeirProcess::spawn(weir(), &toml, format!("127.0.0.1:{admin}").parse().unwrap());
    weir.wait_ready().await;
    let r = get(&format!("http://127.0.0.1:{port}/bad-head")).await;
    assert_eq!(
        (r.status.as_u16(), r.text().as_str()),
        (502, "upstream sent an invalid response\n")
    );
    assert!(
        weir.stderr_eventually_contains("upstream sent an invalid response")
            .await,
        "{}",
        weir.stderr_text()
    );
    let log = weir.stderr_text();
    assert!(
        log.contains(&up.addr.to_string()) && log.contains("malformed response head"),
        "{log}"
    );

    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let cut = raw_exchange(addr, b"GET /cut HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(
        cut.starts_with("HTTP/1.1 200") && cut.ends_with("only part of it"),
        "{cut}"
    );
    assert!(
        weir.stderr_eventually_contains("response cut short").await,
        "{}",
        weir.stderr_text()
    );
    assert!(
        weir.stderr_text()
            .contains("upstream closed the connection inside the response body")
    );
    weir.signal("TERM");
}

/// A TLS listener's certificates are in `/metrics` with their expiry (the earliest `notAfter` of
/// each chain, Unix time, by listener and certificate), and one that has expired is a warning
/// when loaded: weir serves it on (clients refuse it), but the operator hears why.
#[tokio::test]
async fn certificate_expiry_is_a_metric_and_an_expired_one_a_warning() {
    let up = Upstream::start("a").await;
    let certs = TestCerts::new();
    let (cert, key) = certs.leaf_until("default", &["default.test"], Some((2040, 1, 1)));
    let (old_cert, old_key) = certs.leaf_until("old", &["old.test"], Some((2020, 1, 1)));
    let (port, admin) = (free_port(), free_port());
    let toml = format!(
        "[admin]\nbind = \"127.0.0.1:{admin}\"\n[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:{port}\"\npool = \"app\"\n[listener.tls]\ncert = \"{}\"\nkey = \"{}\"\n[[listener.tls.sni]]\nserver_name = \"old.test\"\ncert = \"{}\"\nkey = \"{}\"\n[[pool]]\nname = \"app\"\n[[pool.endpoint]]\naddress = \"{}\"\n",
        cert.display(),
        key.display(),
        old_cert.display(),
        old_key.display(),
        up.addr
    );
    let mut weir = WeirProcess::spawn(weir(), &toml, format!("127.0.0.1:{admin}").parse().unwrap());
    weir.wait_ready().await;
    let metrics = get(&format!("http://127.0.0.1:{admin}/metrics")).await.text();
    for line in [
        "weir_tls_certificate_expiration_timestamp_seconds{listener=\"tls\",certificate=\"default\"} 2208988800",
        "weir_tls_certificate_expiration_timestamp_seconds{listener=\"tls\",certificate=\"old.test\"} 1577836800",
    ] {
        assert!(metrics.contains(line), "no `{line}` in\n{metrics}");
    }
    let status = get(&format!("http://127.0.0.1:{admin}/api/v1/status")).await.json();
    assert_eq!(
        status["listeners"][0]["certificates"],
        serde_json::json!([
            { "certificate": "default", "not_after_unix": 2_208_988_800i64 },
            { "certificate": "old.test", "not_after_unix": 1_577_836_800i64 },
        ])
    );
    let log = weir.stderr_text();
    assert!(
        log.contains("TLS certificate has expired") && log.contains("old.test"),
        "{log}"
    );
    assert_eq!(log.matches("TLS certificate").count(), 1, "{log}");
    weir.signal("TERM");
}
