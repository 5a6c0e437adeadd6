//! `weir`: the command line. Thin on purpose: parse arguments, set up logging and the runtime,
//! hand over to weir-core. See DESIGN §4 for the contract.

mod fd_limit;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use weir_core::{Gateway, PolicyFactory};
use weir_plugin_host::WasmPolicies;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "A programmable HTTP gateway: reverse proxy and load balancer"
)]
struct Cli {
    /// Log line format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic with the given config.
    Run {
        #[arg(long, short, default_value = "config/weir.toml")]
        config: PathBuf,
        /// Listen on this Unix socket for a binary upgrade: a new `weir run --upgrade-from`
        /// at the same path takes over the listening sockets, and this process drains and exits.
        #[arg(long, value_name = "SOCKET")]
        upgrade_socket: Option<PathBuf>,
        /// Take over the listening sockets of the weir serving upgrades at SOCKET, then tell it
        /// to drain and exit. This process then serves upgrades at SOCKET itself (unless
        /// `--upgrade-socket` names another path).
        #[arg(long, value_name = "SOCKET")]
        upgrade_from: Option<PathBuf>,
    },
    /// Parse, validate and load everything the config references, then exit: 0 when good,
    /// 1 with every error.
    Check {
        #[arg(long, short, default_value = "config/weir.toml")]
        config: PathBuf,
    },
}

/// rustls warns on every handshake whose client sent an IP address as its SNI (RFC 6066
/// forbids it; wrk and other OpenSSL-based clients do it when given `https://IP/`), then
/// ignores it: nothing an operator can act on, and a log line per TLS connection. Quieted
/// unless `WEIR_LOG` names rustls itself.
const QUIET: &str = "rustls::msgs::handshake=error";

fn init_logging(format: LogFormat) {
    let spec = std::env::var("WEIR_LOG").unwrap_or_else(|_| "info".to_string());
    let spec = if spec.contains("rustls") {
        spec
    } else {
        format!("{spec},{QUIET}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(spec)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{QUIET}")));
    // Colour codes only for a person at a terminal: a log file, a pipe or journald would
    // carry them as bytes around every field. NO_COLOR (no-color.org) turns them off there too.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run {
            config,
            upgrade_socket,
            upgrade_from,
        } => {
            let upgrade = Upgrade {
                listen: upgrade_socket.or_else(|| upgrade_from.clone()),
                from: upgrade_from,
            };
            run(&config, upgrade)
        }
    }
}

/// The Wasm plugin host, with every plugin the config names loaded (compiled here, before
/// any traffic).
fn policies(config: &weir_config::Config) -> Result<Arc<dyn PolicyFactory>, Vec<String>> {
    let wasm = WasmPolicies::new(&config.plugins).map_err(|e| vec![e])?;
    wasm.prepare(config)?;
    Ok(wasm)
}

fn check(path: &std::path::Path) -> ExitCode {
    let config = match weir_config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{}: {} error(s)", path.display(), errors.0.len());
            return ExitCode::from(1);
        }
    };
    let errors = match policies(&config) {
        Ok(p) => weir_core::gateway::check(&config, p),
        Err(e) => e,
    };
    if errors.is_empty() {
        println!(
            "{}: ok ({} listener(s), {} pool(s))",
            path.display(),
            config.listeners.len(),
            config.pools.len()
        );
        ExitCode::SUCCESS
    } else {
        let file = format!("{}:", path.display());
        for e in &errors {
            // Plugin errors say where the plugin is named (`file:line:column: key ...`).
            if e.starts_with(&file) {
                eprintln!("error: {e}");
            } else {
                eprintln!("error: {file} {e}");
            }
        }
        eprintln!("{}: {} error(s)", path.display(), errors.len());
        ExitCode::from(1)
    }
}

/// The binary-upgrade sockets of `weir run`.
struct Upgrade {
    listen: Option<PathBuf>,
    from: Option<PathBuf>,
}

fn run(path: &std::path::Path, upgrade: Upgrade) -> ExitCode {
    let config = match weir_config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(1);
        }
    };
    fd_limit::prepare(&config);
    // One worker: a current-thread runtime, without the work-stealing scheduler's queues and
    // wake-ups (DESIGN §10 measured multi_thread with one worker 2-5% slower).
    let mut builder = if config.runtime.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if config.runtime.worker_threads > 0 {
            b.worker_threads(config.runtime.worker_threads);
        }
        b
    };
    let runtime = match builder.enable_all().thread_name("weir-worker").build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let policies = match policies(&config) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(1);
        }
    };
    // Plugins are compiled and the config is good before the running process is disturbed.
    let inherited = match &upgrade.from {
        Some(from) => match weir_core::upgrade::Inherited::receive(from) {
            Ok(i) => {
                tracing::info!(from = %from.display(), old_pid = i.old_pid, "received the running process's sockets");
                Some(i)
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    runtime.block_on(serve(config, policies, inherited, upgrade.listen))
}

async fn serve(
    config: weir_config::Config,
    policies: Arc<dyn PolicyFactory>,
    mut inherited: Option<weir_core::upgrade::Inherited>,
    upgrade_socket: Option<PathBuf>,
) -> ExitCode {
    use tokio::signal::unix::{SignalKind, signal};
    let gateway = match Gateway::start_with(config, policies, inherited.as_mut()).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            // One line per error (a listener's TLS files can be several).
            for line in e.to_string().lines() {
                eprintln!("error: {line}");
            }
            return ExitCode::from(1);
        }
    };
    if let Some(inherited) = inherited {
        let old_pid = inherited.old_pid;
        match inherited.confirm() {
            Ok(()) => tracing::info!(old_pid, "binary upgrade: serving; the old process drains and exits"),
            Err(e) => tracing::warn!(error = %e, "binary upgrade: both processes serve until the old one stops"),
        }
    }
    if let Some(path) = &upgrade_socket
        && let Err(e) = gateway.listen_for_upgrades(path)
    {
        tracing::error!(socket = %path.display(), error = %e, "cannot listen for binary upgrades");
        eprintln!("error: upgrade socket {}: {e}", path.display());
    }
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        eprintln!("error: cannot install signal handlers");
        return ExitCode::from(1);
    };
    tracing::info!("weir is serving");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = gateway.handed_over() => break,
            _ = hup.recv() => {
                if let Err(errors) = gateway.reload("SIGHUP").await {
                    for e in errors {
                        eprintln!("error: {e}");
                    }
                }
            }
        }
    }
    tracing::info!("shutting down: finishing in-flight requests");
    let clean = gateway.shutdown().await;
    tracing::info!(clean, "stopped");
    ExitCode::SUCCESS
}
