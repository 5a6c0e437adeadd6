//! `diff(old, new)`: what a reload has to change. A pure function over two validated configs, so
//! the reload controller applies data, not guesses: unchanged listeners keep their sockets,
//! unchanged endpoints keep their health state and connection pools.

use crate::model::{Config, EndpointAddress, Listener, Pool};

/// How one listener differs between two configs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerChange {
    pub name: String,
    /// The bind address changed: the socket must be re-bound (a remove plus an add).
    pub rebind: bool,
    /// Certificates or SNI entries changed: new handshakes use the new ones.
    pub tls: bool,
    /// Anything else (pool, router, limits, advertise, proxy_protocol, forwarding_headers):
    /// applies to new requests.
    pub settings: bool,
}

/// How one pool differs between two configs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolChange {
    pub name: String,
    pub endpoints_added: Vec<EndpointAddress>,
    pub endpoints_removed: Vec<EndpointAddress>,
    /// Same address, other weight / zone / backup.
    pub endpoints_changed: Vec<EndpointAddress>,
    /// Balancer or failover plugin reference (name or config) changed.
    pub policies: bool,
    /// Health check settings changed: the checker restarts for this pool.
    pub health: bool,
    /// Timeouts, retry, passive or resolve settings changed.
    pub settings: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
    pub listeners_changed: Vec<ListenerChange>,
    pub pools_added: Vec<String>,
    pub pools_removed: Vec<String>,
    pub pools_changed: Vec<PoolChange>,
    pub admin_changed: bool,
    pub runtime_changed: bool,
    pub plugins_changed: bool,
    pub reload_changed: bool,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }
}

pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff {
        admin_changed: old.admin != new.admin,
        runtime_changed: old.runtime != new.runtime,
        plugins_changed: old.plugins != new.plugins,
        reload_changed: old.reload != new.reload,
        ..ConfigDiff::default()
    };
    for l in &new.listeners {
        match old.listener(&l.name) {
            None => d.listeners_added.push(l.name.clone()),
            Some(o) => {
                if let Some(change) = listener_change(o, l) {
                    d.listeners_changed.push(change);
                }
            }
        }
    }
    d.listeners_removed = old
        .listeners
        .iter()
        .filter(|o| new.listener(&o.name).is_none())
        .map(|o| o.name.clone())
        .collect();
    for p in &new.pools {
        match old.pool(&p.name) {
            None => d.pools_added.push(p.name.clone()),
            Some(o) => {
                if let Some(change) = pool_change(o, p) {
                    d.pools_changed.push(change);
                }
            }
        }
    }
    d.pools_removed = old
        .pools
        .iter()
        .filter(|o| new.pool(&o.name).is_none())
        .map(|o| o.name.clone())
        .collect();
    d
}

fn listener_change(old: &Listener, new: &Listener) -> Option<ListenerChange> {
    if old == new {
        return None;
    }
    Some(ListenerChange {
        name: new.name.clone(),
        rebind: old.bind != new.bind,
        tls: old.tls != new.tls,
        settings: old.advertise != new.advertise
            || old.pool != new.pool
            || old.router != new.router
            || old.proxy_protocol != new.proxy_protocol
            || old.forwarding_headers != new.forwarding_headers
            || old.limits != new.limits,
    })
}

fn pool_change(old: &Pool, new: &Pool) -> Option<PoolChange> {
    if old == new {
        return None;
    }
    let find = |pool: &Pool, addr: &EndpointAddress| pool.endpoints.iter().find(|e| &e.address == addr).cloned();
    let mut change = PoolChange {
        name: new.name.clone(),
        policies: old.balancer != new.balancer || old.failover != new.failover,
        health: old.health != new.health,
        settings: old.timeouts != new.timeouts
            || old.retry != new.retry
            || old.passive != new.passive
            || old.resolve_interval != new.resolve_interval
            || old.resolve_all != new.resolve_all
            || old.send_proxy != new.send_proxy
            || old.protocol != new.protocol
            || old.tls != new.tls,
        ..PoolChange::default()
    };
    for e in &new.endpoints {
        match find(old, &e.address) {
            None => change.endpoints_added.push(e.address.clone()),
            Some(o) if o != *e => change.endpoints_changed.push(e.address.clone()),
            Some(_) => {}
        }
    }
    for e in &old.endpoints {
        if find(new, &e.address).is_none() {
            change.endpoints_removed.push(e.address.clone());
        }
    }
    Some(change)
}
