//! `Config::diff` is pure: these tests pin what a reload is told to change.

use std::path::Path;
use weir_config::{Config, EndpointAddress, diff, parse};

fn cfg(src: &str) -> Config {
    parse(src, Path::new("t.toml")).unwrap_or_else(|e| panic!("{e}"))
}

const A: &str = r#"
[[listener]]
name = "client"
bind = "127.0.0.1:18080"
pool = "app"
[[listener]]
name = "p2p"
bind = "127.0.0.1:18081"
pool = "app"
[[pool]]
name = "app"
[[pool.endpoint]]
address = "127.0.0.1:9001"
[[pool.endpoint]]
address = "127.0.0.1:9002"
"#;

#[test]
fn identical_configs_have_an_empty_diff() {
    assert!(diff(&cfg(A), &cfg(A)).is_empty());
}

#[test]
fn listener_added_removed_and_rebound() {
    let b = A
        .replace("name = \"p2p\"", "name = \"admin2\"")
        .replace("127.0.0.1:18080", "127.0.0.1:18090");
    let d = diff(&cfg(A), &cfg(&b));
    assert_eq!(d.listeners_added, vec!["admin2".to_string()]);
    assert_eq!(d.listeners_removed, vec!["p2p".to_string()]);
    assert_eq!(d.listeners_changed.len(), 1);
    assert!(d.listeners_changed[0].rebind && !d.listeners_changed[0].settings);
    assert!(d.pools_changed.is_empty());
}

#[test]
fn endpoints_added_removed_changed() {
    let b = A
        .replace("address = \"127.0.0.1:9001\"", "address = \"127.0.0.1:9003\"")
        .replace(
            "address = \"127.0.0.1:9002\"",
            "address = \"127.0.0.1:9002\"\nweight = 5",
        );
    let d = diff(&cfg(A), &cfg(&b));
    assert_eq!(d.pools_changed.len(), 1);
    let p = &d.pools_changed[0];
    let addr = |s: &str| EndpointAddress::Socket(s.parse().unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(p.endpoints_added, vec![addr("127.0.0.1:9003")]);
    assert_eq!(p.endpoints_removed, vec![addr("127.0.0.1:9001")]);
    assert_eq!(p.endpoints_changed, vec![addr("127.0.0.1:9002")]);
    assert!(!p.policies && !p.health && !p.settings);
}

#[test]
fn policy_and_settings_changes() {
    let b = format!("{A}[pool.balancer]\nplugin = \"least-request\"\n[pool.timeouts]\nconnect = \"2s\"\n");
    let d = diff(&cfg(A), &cfg(&b));
    let p = &d.pools_changed[0];
    assert!(p.policies && p.settings && !p.health);
    assert!(p.endpoints_added.is_empty());
}

#[test]
fn pools_added_and_removed() {
    let b = A
        .replace("name = \"app\"", "name = \"api\"")
        .replace("pool = \"app\"", "pool = \"api\"");
    let d = diff(&cfg(A), &cfg(&b));
    assert_eq!(d.pools_added, vec!["api".to_string()]);
    assert_eq!(d.pools_removed, vec!["app".to_string()]);
    assert_eq!(d.listeners_changed.len(), 2);
    assert!(d.listeners_changed.iter().all(|c| c.settings && !c.rebind));
}

#[test]
fn global_sections() {
    let b = format!("[admin]\nbind = \"127.0.0.1:9902\"\n[runtime]\nshutdown_timeout = \"5s\"\n{A}");
    let d = diff(&cfg(A), &cfg(&b));
    assert!(d.admin_changed && d.runtime_changed && !d.plugins_changed && !d.reload_changed);
}

#[test]
fn forwarding_headers_are_a_listener_setting() {
    let b = A.replacen(
        "pool = \"app\"\n",
        "pool = \"app\"\nforwarding_headers = [\"x-forwarded-for\"]\n",
        1,
    );
    let d = diff(&cfg(A), &cfg(&b));
    assert_eq!(d.listeners_changed.len(), 1);
    let c = &d.listeners_changed[0];
    assert_eq!(c.name, "client");
    assert!(c.settings && !c.rebind && !c.tls);
}
