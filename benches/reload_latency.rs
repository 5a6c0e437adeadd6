//! Time from writing the config file to the new generation serving (issue target: <= 100 ms with
//! cached plugins). The gateway runs in-process with the file watcher on and `reload.debounce`
//! set to 20 ms (the debounce is part of the latency: the default 200 ms alone exceeds the
//! target). Each round rewrites the file atomically with another endpoint weight and polls the
//! generation until it moves. Run: `cargo bench --bench reload_latency` (20 rounds; 1 round in
//! `cargo test --benches`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use weir_test_support::{TestGateway, Upstream, plugins_dist};

fn config(gw_admin: Option<std::net::SocketAddr>, up: &Upstream, weight: u32) -> String {
    let admin = gw_admin.map_or("127.0.0.1:0".to_string(), |a| a.to_string());
    format!(
        "[admin]\nbind = \"{admin}\"\n[plugins]\ndir = \"{}\"\n[reload]\ndebounce = \"20ms\"\n[[listener]]\nname = \"client\"\nbind = \"127.0.0.1:0\"\npool = \"app\"\n[[pool]]\nname = \"app\"\n[[pool.endpoint]]\naddress = \"{}\"\nweight = {weight}\n",
        plugins_dist().display(),
        up.addr
    )
}

fn main() {
    let rounds = if std::env::args().any(|a| a == "--bench") {
        20
    } else {
        1
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let up = Upstream::start("a").await;
        let gw = TestGateway::start(&config(None, &up, 1)).await;
        let mut times = Vec::new();
        for round in 0..rounds {
            let before = gw.generation();
            let text = config(Some(gw.admin), &up, 2 + round % 5);
            let started = Instant::now();
            gw.write_config(&text);
            while gw.generation() == before {
                assert!(started.elapsed() < Duration::from_secs(10), "the change was never applied");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            times.push(started.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "file write -> new generation serving, {} rounds: median {:.1} ms, max {:.1} ms (debounce 20 ms, cached plugins)",
            times.len(),
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        );
    });
}
