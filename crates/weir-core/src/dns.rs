//! The addresses of the hostnames of `resolve = "all"` pools, as last looked up: a generation
//! is built from them (one endpoint per address), and a lookup that finds another set makes a
//! new generation. A lookup that fails keeps the last good set. Process-wide, so that it
//! outlives generations; written only off the request path. Every lookup of an endpoint's
//! name goes through [`look_up`], which logs a failing name once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

/// Per name: its addresses, and whether they were pinned (given, not looked up).
type Cache = Mutex<HashMap<(String, u16), (Arc<Vec<SocketAddr>>, bool)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The last good addresses of `host:port`, sorted; `None` before its first lookup.
pub fn cached(host: &str, port: u16) -> Option<Arc<Vec<SocketAddr>>> {
    let cache = cache().lock().ok()?;
    cache.get(&(host.to_string(), port)).map(|(a, _)| a.clone())
}

/// Records a lookup's addresses (sorted, without repeats; an empty set is ignored).
fn store(host: &str, port: u16, mut addrs: Vec<SocketAddr>, pinned: bool) {
    addrs.sort_unstable();
    addrs.dedup();
    if addrs.is_empty() {
        return;
    }
    if let Ok(mut cache) = cache().lock() {
        let key = (host.to_string(), port);
        if !pinned && cache.get(&key).is_some_and(|(_, p)| *p) {
            return;
        }
        cache.insert(key, (Arc::new(addrs), pinned));
    }
}

/// Gives `host:port` these addresses instead of a resolver's: it is not looked up any more.
/// For programs that embed weir with their own discovery, and for tests (a name that resolves
/// to several loopback addresses exists on no machine).
pub fn pin(host: &str, port: u16, addrs: Vec<SocketAddr>) {
    store(host, port, addrs, true);
}

/// Names drained through the admin API, per pool: an address a name gains later starts
/// drained too, until the name is enabled again (a drain outlives reloads and lookups).
fn drained_names() -> &'static Mutex<std::collections::HashSet<(String, String)>> {
    static DRAINED: OnceLock<Mutex<std::collections::HashSet<(String, String)>>> = OnceLock::new();
    DRAINED.get_or_init(Default::default)
}

/// Records that `name` (`host:port`) of `pool` was drained (`true`) or enabled.
pub fn set_name_drained(pool: &str, name: &str, drained: bool) {
    if let Ok(mut set) = drained_names().lock() {
        let key = (pool.to_string(), name.to_string());
        if drained {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }
}

/// Whether `name` of `pool` is drained as a whole.
pub fn is_name_drained(pool: &str, name: &str) -> bool {
    drained_names()
        .lock()
        .is_ok_and(|set| set.contains(&(pool.to_string(), name.to_string())))
}

/// Looks `host:port` up and records what it found; a failure keeps the last good set.
pub async fn refresh(host: &str, port: u16) -> Result<(), std::io::Error> {
    let pinned = cache()
        .lock()
        .ok()
        .is_some_and(|c| c.get(&(host.to_string(), port)).is_some_and(|(_, p)| *p));
    if pinned {
        return Ok(());
    }
    store(host, port, look_up(host, port).await?, false);
    Ok(())
}

/// Looks `host:port` up: its addresses in the resolver's order, without repeats (an empty
/// answer is an error). A name that stops resolving is a warning once, with the resolver's
/// error, and an info line when it resolves again, whoever looks it up and however often (the
/// resolve loops, connects, several pools naming it, generation after generation); the
/// failures between are debug lines.
pub async fn look_up(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let looked_up = tokio::net::lookup_host((host, port)).await.and_then(|found| {
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in found {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            return Err(std::io::Error::other("no addresses"));
        }
        Ok(addrs)
    });
    let key = (host.to_string(), port);
    let Ok(mut failing) = failing_names().lock() else {
        return looked_up;
    };
    match &looked_up {
        Ok(addrs) => {
            if failing.remove(&key) {
                tracing::info!(name = %host, port, addresses = ?addrs, "name resolves again");
            }
        }
        Err(error) => {
            if failing.insert(key) {
                tracing::warn!(name = %host, port, %error, "name resolution failed; keeping the last good addresses (logged again when it resolves)");
            } else {
                tracing::debug!(name = %host, port, %error, "name resolution still failing");
            }
        }
    }
    looked_up
}

/// The names whose last lookup failed.
fn failing_names() -> &'static Mutex<std::collections::HashSet<(String, u16)>> {
    static FAILING: OnceLock<Mutex<std::collections::HashSet<(String, u16)>>> = OnceLock::new();
    FAILING.get_or_init(Default::default)
}
