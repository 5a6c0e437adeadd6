//! Starting the gateway for a test: in-process from inline TOML (ports 0, real addresses read
//! back), or as the real `weir` binary (for CLI, signals and exit codes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use weir_core::{Gateway, PolicyFactory};
use weir_plugin_host::WasmPolicies;

use crate::upstream::Upstream;

/// A config with one listener `client` on a free port in front of one pool `app` of `upstreams`.
pub fn one_pool(upstreams: &[&Upstream]) -> String {
    one_pool_with(upstreams, "")
}

/// [`one_pool`] with `listener` lines in the listener's table (`advertise = ...`, a
/// `[listener.limits]` table, ...).
pub fn one_pool_with(upstreams: &[&Upstream], listener: &str) -> String {
    let endpoints = endpoint_tables(upstreams, "");
    let newline = if listener.is_empty() || listener.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n{listener}{newline}\n[[pool]]\nname = \"app\"\n{endpoints}"
    )
}

/// One listener `client` in front of one pool `app` with an endpoint per upstream: `pool`
/// lines in the pool's table (keys, then sub-tables such as `[pool.health]`), `endpoint` lines
/// in each endpoint's.
pub fn app_pool(upstreams: &[&Upstream], pool: &str, endpoint: &str) -> String {
    let endpoints = endpoint_tables(upstreams, endpoint);
    format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n{pool}{endpoints}"
    )
}

/// A `[[pool.endpoint]]` table per upstream, each with `lines` after its address.
fn endpoint_tables(upstreams: &[&Upstream], lines: &str) -> String {
    upstreams
        .iter()
        .map(|u| format!("[[pool.endpoint]]\naddress = \"{}\"\n{lines}", u.addr))
        .collect()
}

/// One listener `client` in front of one pool `app` with the single endpoint `address`, and
/// `extra` lines in the pool's table (timeouts, retry, ...).
pub fn pool_config(address: impl std::fmt::Display, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n{extra}\n[[pool.endpoint]]\naddress = \"{address}\"\n"
    )
}

/// The gateway running inside the test process.
pub struct TestGateway {
    gateway: Option<Gateway>,
    addrs: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    /// Starts from inline TOML; an `[admin]` table on a free port is added when absent, and a
    /// `[plugins]` table pointing at the repository's built plugins (`plugins/dist`).
    pub async fn start(toml: &str) -> TestGateway {
        Self::try_start(toml)
            .await
            .unwrap_or_else(|e| panic!("gateway failed to start:\n{e}"))
    }

    /// Like [`TestGateway::start`], returning the errors instead of panicking.
    pub async fn try_start(toml: &str) -> Result<TestGateway, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut toml = toml.to_string();
        if !toml.contains("[admin]") {
            toml = format!("[admin]\nbind = \"127.0.0.1:0\"\n\n{toml}");
        }
        if !toml.contains("[plugins]") {
            // A roomy call deadline: on a loaded 2-core CI machine a preempted 2 ms call would
            // fall back to the native balancer and blur what the test checks.
            toml = format!(
                "[plugins]\ndir = \"{}\"\ncall_timeout = \"100ms\"\n\n{toml}",
                plugins_dist().display()
            );
        }
        let path = dir.path().join("weir.toml");
        std::fs::write(&path, &toml).unwrap();
        let config = weir_config::load(&path).map_err(|e| format!("test config is invalid:\n{e}\n{toml}"))?;
        let policies = wasm_policies(&config).map_err(|e| e.join("\n"))?;
        let gateway = Gateway::start(config, policies).await.map_err(|e| e.to_string())?;
        let addrs = gateway.listener_addrs();
        let admin = gateway.admin_addr();
        Ok(TestGateway {
            gateway: Some(gateway),
            addrs,
            admin,
            dir,
        })
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .addrs
            .get(listener)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(listener))
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The config file the gateway was started from (rewrite it, then reload).
    /// `weir_upstream_attempts_total` with this `outcome`, summed over pools and endpoints.
    pub async fn attempts(&self, outcome: &str) -> u64 {
        let text = crate::get(&self.admin_url("/metrics")).await.text();
        let label = format!("outcome=\"{outcome}\"");
        text.lines()
            .filter(|l| l.starts_with("weir_upstream_attempts_total") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("weir.toml")
    }

    /// Replaces the config file atomically (write a temporary file, rename it into place).
    pub fn write_config(&self, toml: &str) {
        let tmp = self.dir.path().join(".weir.toml.tmp");
        std::fs::write(&tmp, toml).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    pub async fn reload(&self) -> Result<u64, Vec<String>> {
        self.gateway().reload("test").await
    }

    pub fn generation(&self) -> u64 {
        self.gateway().shared().generation.load().id
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().unwrap()
    }

    pub async fn shutdown(mut self) -> bool {
        self.gateway.take().unwrap().shutdown().await
    }
}

/// The repository's `plugins/dist`, where scripts/build-plugins.sh puts the plugin files.
pub fn plugins_dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../plugins/dist")
        .canonicalize()
        .unwrap_or_else(|_| {
            panic!("plugins/dist does not exist: build the plugins first with scripts/build-plugins.sh")
        })
}

/// The path of a built plugin; panics with the build command when it is missing.
pub fn plugin_file(name: &str) -> PathBuf {
    let p = plugins_dist().join(format!("{name}.wasm"));
    assert!(p.is_file(), "{} is missing: run scripts/build-plugins.sh", p.display());
    p
}

/// The Wasm plugin host with `config`'s plugins loaded, as `weir run` does it.
pub fn wasm_policies(config: &weir_config::Config) -> Result<Arc<dyn PolicyFactory>, Vec<String>> {
    let wasm = WasmPolicies::new(&config.plugins).map_err(|e| vec![e])?;
    wasm.prepare(config)?;
    Ok(wasm)
}

/// A port that was free a moment ago (for configs the subprocess must bind itself), and not
/// one this test process was given before: the kernel may hand the port it just took back to
/// the next `bind(0)`, and two calls in a row (a listener's port and the admin's) then
/// returned the same one, which the config refuses.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The real `weir` binary running `weir run --config <file>`.
pub struct WeirProcess {
    pub child: Child,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub stderr: PathBuf,
    pub dir: tempfile::TempDir,
}

impl WeirProcess {
    /// `toml` must set `[admin] bind` (use [`free_port`]).
    pub fn spawn(bin: &Path, toml: &str, admin: SocketAddr) -> WeirProcess {
        Self::spawn_with_args(bin, toml, admin, &[])
    }

    /// `weir run --config <file> <args>`.
    pub fn spawn_with_args(bin: &Path, toml: &str, admin: SocketAddr, args: &[&std::ffi::OsStr]) -> WeirProcess {
        Self::spawn_with_env(bin, toml, admin, args, &[])
    }

    /// `weir run --config <file> <args>` with these environment variables set.
    pub fn spawn_with_env(
        bin: &Path,
        toml: &str,
        admin: SocketAddr,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &str)],
    ) -> WeirProcess {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("weir.toml");
        std::fs::write(&config, toml).unwrap();
        let stderr = dir.path().join("stderr.log");
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&config)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        WeirProcess {
            child,
            admin,
            config,
            stderr,
            dir,
        }
    }

    /// Polls `/readyz` until 200 (10 s at most).
    pub async fn wait_ready(&mut self) {
        let url = format!("http://{}/readyz", self.admin);
        let ready = crate::eventually(Duration::from_secs(10), async || {
            let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
            matches!(client.get(url.parse().unwrap()).await, Ok(r) if r.status() == 200)
        })
        .await;
        assert!(ready, "weir did not become ready: {}", self.stderr_text());
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Whether stderr comes to contain `needle` within 5 s (polled): a log line written after
    /// something the test did.
    pub async fn stderr_eventually_contains(&self, needle: &str) -> bool {
        crate::eventually(Duration::from_secs(5), async || self.stderr_text().contains(needle)).await
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (bounded); returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
