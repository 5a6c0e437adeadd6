//! Plugin benchmarks (issue targets, checked against these numbers in the README):
//! native vs Wasm `round-robin` select at 4, 64 and 1,024 endpoints (target: Wasm <= 1 us);
//! `route` + `select` per request (target <= 1.5 us); plugin load, cold compile vs cached
//! (target: cached <= 5 ms); a new instance, as a trapped one is replaced on the request path.
//! Needs the built plugins (scripts/build-plugins.sh).
//! Run: `cargo bench --bench plugins`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use weir_core::policy::{BalancePolicy, RoundRobin, RouteRequest, Select, SelectCtx};
use weir_core::upstream::Endpoint;
use weir_core::{PolicyFactory, PoolCtx};
use weir_plugin_host::WasmPolicies;
use weir_plugin_host::engine::PluginEngine;

fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/dist")
}

/// A pool of `n` endpoints behind the Wasm round-robin and host-router. `call_timeout` is raised
/// from its 2 ms default for CI's unoptimised test build, where the first `select` of a
/// 1,024-endpoint pool (its `pool-info` import lowers 1,024 records into the guest) takes
/// longer than that; what is timed here is every later call.
fn config(n: usize) -> (tempfile::TempDir, weir_config::Config) {
    let dir = tempfile::tempdir().unwrap();
    let endpoints: String = (0..n)
        .map(|i| {
            format!(
                "[[pool.endpoint]]\naddress = \"10.0.{}.{}:8080\"\n",
                i / 250,
                i % 250 + 1
            )
        })
        .collect();
    let toml = format!(
        "[plugins]\ndir = \"{}\"\ncall_timeout = \"100ms\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\nrouter = {{ plugin = \"host-router\", config = {{ routes = [ {{ host = \"*.example.com\", path_prefix = \"/api\", pool = \"app\" }} ] }} }}\n[[pool]]\nname = \"app\"\n{endpoints}",
        dist().display()
    );
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, toml).unwrap();
    let c = weir_config::load(&path).unwrap();
    (dir, c)
}

/// The Wasm policies of `config`, prepared, the pool's endpoints and its balancer.
fn prepared(config: &weir_config::Config) -> (Arc<WasmPolicies>, Vec<Arc<Endpoint>>, Arc<dyn BalancePolicy>) {
    let wasm = WasmPolicies::new(&config.plugins).unwrap();
    wasm.prepare(config).unwrap();
    let eps = endpoints(config);
    let names = vec!["app".to_string()];
    let ctx = PoolCtx {
        index: 0,
        config: &config.pools[0],
        endpoints: &eps,
        pool_names: &names,
    };
    let balancer = wasm.balancer(&config.pools[0].balancer, &ctx).unwrap();
    (wasm, eps, balancer)
}

fn endpoints(config: &weir_config::Config) -> Vec<Arc<Endpoint>> {
    config.pools[0]
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| Arc::new(Endpoint::new(i as u32, e, 1, true)))
        .collect()
}

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    for n in [4usize, 64, 1024] {
        let (_dir, config) = config(n);
        let (wasm, eps, balancer) = prepared(&config);
        let native = RoundRobin::new(&vec![1; n]);
        let key = SelectCtx::first_try(1);
        group.bench_with_input(BenchmarkId::new("native round-robin", n), &n, |b, _| {
            b.iter(|| native.select(black_box(&eps), &key))
        });
        // The plugin's answer, not the host's fallback, is what is measured.
        for _ in 0..3 {
            let answer = balancer.select(&eps, &key);
            assert!(
                matches!(answer, Select::Endpoint(_)),
                "{n} endpoints: {answer:?}, {:?}",
                wasm.status()
            );
        }
        group.bench_with_input(BenchmarkId::new("wasm round-robin", n), &n, |b, _| {
            b.iter(|| balancer.select(black_box(&eps), &key))
        });
    }
    group.finish();
}

fn route_and_select(c: &mut Criterion) {
    let (_dir, config) = config(16);
    let (wasm, eps, balancer) = prepared(&config);
    let names = vec!["app".to_string()];
    let router = wasm
        .router(
            config.listeners[0].router.as_ref().unwrap(),
            &config.listeners[0],
            &names,
        )
        .unwrap();
    let headers = http::HeaderMap::new();
    let method = http::Method::GET;
    c.bench_function("route + select (host-router, round-robin, 16 endpoints)", |b| {
        b.iter(|| {
            let decision = router.route(&RouteRequest {
                request_id: 7,
                method: &method,
                https: false,
                host: "api.example.com",
                path_and_query: "/api/v1/items?limit=10",
                client_ip: "127.0.0.1".parse().unwrap(),
                headers: &headers,
            });
            let key = SelectCtx::first_try(7);
            (black_box(decision), balancer.select(&eps, &key))
        })
    });
}

fn load(c: &mut Criterion) {
    let engine = PluginEngine::new(16 << 20).unwrap();
    let path = dist().join("round-robin.wasm");
    let cache = tempfile::tempdir().unwrap();
    weir_plugin_host::loader::load(&engine, "round-robin", &path, Some(cache.path())).unwrap();
    let mut group = c.benchmark_group("plugin load (round-robin)");
    group.sample_size(10);
    group.bench_function("cold compile", |b| {
        b.iter(|| weir_plugin_host::loader::load(&engine, "round-robin", &path, None).unwrap())
    });
    group.bench_function("cached", |b| {
        b.iter(|| weir_plugin_host::loader::load(&engine, "round-robin", &path, Some(cache.path())).unwrap())
    });
    group.finish();
}

/// What a lost instance costs the worker that replaces it on the request path (a call that
/// trapped, ran out of memory or timed out drops its instance): instantiation from the cached
/// component, `init`, and the version's smoke `select`.
fn instance(c: &mut Criterion) {
    let engine = Arc::new(PluginEngine::new(16 << 20).unwrap());
    let cache = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("plugin instance: instantiate + init + select");
    for name in ["round-robin", "host-router"] {
        let path = dist().join(format!("{name}.wasm"));
        let loaded = Arc::new(weir_plugin_host::loader::load(&engine, name, &path, Some(cache.path())).unwrap());
        let ctx = Arc::new(weir_plugin_host::host_state::PluginCtx {
            name: name.to_string(),
            shared: Arc::default(),
        });
        let config = if name == "host-router" {
            r#"{"routes":[{"host":"*.example.com","path_prefix":"/api","pool":"app"}]}"#
        } else {
            "{}"
        };
        group.bench_function(name, |b| {
            b.iter(|| {
                weir_plugin_host::version::PluginVersion::new(
                    engine.clone(),
                    loaded.clone(),
                    config.to_string(),
                    ctx.clone(),
                    Arc::default(),
                    16 << 20,
                    std::time::Duration::from_millis(100),
                    Arc::from(vec!["app".to_string()]),
                )
                .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, select, route_and_select, load, instance);
criterion_main!(benches);
