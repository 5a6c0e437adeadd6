//! The process's file descriptor limit. Services start with a soft limit far below what a
//! gateway needs (1,024 under systemd's defaults) and a hard one far above it: with the default
//! `max_connections = 10000`, weir then failed to accept or to connect upstream once about a
//! thousand clients were connected. So at start the soft limit is raised to the hard one, as
//! Go's runtime does for every program and HAProxy does from its `maxconn`; and where even the
//! hard limit is short of what the listeners' `max_connections` may take (a descriptor per
//! client connection, and one per upstream connection serving it), a warning says so.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// What an unlimited hard limit is raised to: Linux's default `fs.nr_open`, above which
/// `setrlimit` refuses.
const UNLIMITED_CAP: u64 = 1 << 20;

/// Descriptors weir keeps for itself beyond its connections: the listeners, the admin API,
/// plugin files, logs, the runtime's own.
const RESERVED: u64 = 64;

/// Raises the soft limit to the hard one and returns the limit now in force (`None`: none).
pub fn raise() -> Option<u64> {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    let target = maximum.unwrap_or(UNLIMITED_CAP);
    match current {
        Some(soft) if soft < target => {
            let raised = Rlimit {
                current: Some(target),
                maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => Some(target),
                Err(_) => Some(soft),
            }
        }
        other => other,
    }
}

/// Descriptors the config's listeners may need at once.
pub fn needed(config: &weir_config::Config) -> u64 {
    let clients: u64 = config.listeners.iter().map(|l| l.limits.max_connections as u64).sum();
    clients.saturating_mul(2).saturating_add(RESERVED)
}

/// Raises the limit and warns when it is still short of what `config` may need.
pub fn prepare(config: &weir_config::Config) {
    let needed = needed(config);
    if let Some(limit) = raise()
        && limit < needed
    {
        tracing::warn!(
            limit,
            needed,
            "the file descriptor limit is below what the listeners' max_connections may take (a descriptor per client connection and one per upstream connection): raise it (systemd: LimitNOFILE=; a shell: ulimit -n) or lower max_connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let hard = getrlimit(Resource::Nofile).maximum;
        let now = raise();
        assert_eq!(now, Some(hard.unwrap_or(UNLIMITED_CAP)));
        assert_eq!(getrlimit(Resource::Nofile).current, now);
    }
}
