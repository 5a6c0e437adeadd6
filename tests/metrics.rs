//! `/metrics` parses as Prometheus text and its counters match the traffic sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use weir_test_support::*;

/// The samples of `name` carrying all of `labels`.
fn samples<'a>(
    samples: &'a [prometheus_parse::Sample],
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a prometheus_parse::Sample> {
    samples
        .iter()
        .filter(move |s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

fn value(all: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(all, name, labels)
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn metrics_parse_and_match_the_traffic() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let toml = one_pool(&[&a, &b])
        .replace("name = \"client\"", "name = \"metrics-test\"")
        .replace("name = \"app\"", "name = \"metrics-pool\"")
        .replace("pool = \"app\"", "pool = \"metrics-pool\"");
    let gw = TestGateway::start(&toml).await;
    for _ in 0..5 {
        assert_eq!(get(&gw.url("metrics-test", "/")).await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&gw.url("metrics-test", "/status/404")).await.status, 404);
    }
    let r = get(&gw.admin_url("/metrics")).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("unparsable /metrics: {e}\n{text}"));
    let s = &scrape.samples;
    let route = [("listener", "metrics-test"), ("pool", "metrics-pool")];
    assert_eq!(
        value(s, "weir_requests_total", &[route[0], route[1], ("code", "200")]),
        5.0,
        "{text}"
    );
    assert_eq!(
        value(s, "weir_requests_total", &[route[0], route[1], ("code", "404")]),
        3.0
    );
    assert_eq!(value(s, "weir_request_duration_seconds_count", &route), 8.0, "{text}");
    // Nothing refused by the front, and no access log to fall behind: both counters are there at 0.
    assert_eq!(value(s, "weir_requests_refused_total", &[route[0]]), 0.0, "{text}");
    assert!(text.contains("\nweir_access_log_dropped_total 0\n"), "{text}");
    assert_eq!(
        value(
            s,
            "weir_upstream_attempts_total",
            &[("pool", "metrics-pool"), ("outcome", "ok")]
        ),
        8.0
    );
    assert_eq!(value(s, "weir_endpoint_healthy", &[("pool", "metrics-pool")]), 2.0);
    assert_eq!(value(s, "weir_endpoint_in_flight", &[("pool", "metrics-pool")]), 0.0);
    assert_eq!(
        value(
            s,
            "weir_plugin_calls_total",
            &[("plugin", "round-robin"), ("hook", "select"), ("result", "ok")]
        ),
        8.0
    );
    // The plugin's call durations: a histogram of all 8 calls (estimated from the timed ones),
    // in buckets from half a microsecond to a second; none took a second.
    let select = [("plugin", "round-robin"), ("hook", "select")];
    let histogram = samples(s, "weir_plugin_call_duration_seconds", &select)
        .next()
        .map(|x| match &x.value {
            prometheus_parse::Value::Histogram(h) => h.clone(),
            other => panic!("not a histogram: {other:?}"),
        })
        .unwrap_or_else(|| panic!("no plugin call histogram\n{text}"));
    assert_eq!(histogram.len(), 17, "{histogram:?}");
    assert_eq!(histogram.first().map(|b| b.less_than), Some(0.5e-6));
    let under_a_second = histogram.iter().find(|b| b.less_than == 1.0).map(|b| b.count);
    assert_eq!(under_a_second, Some(8.0), "{histogram:?}");
    assert_eq!(histogram.last().map(|b| b.count), Some(8.0));
    // No retry yet, and the pool's retry counter is there at 0 (rate() and alerts need it).
    assert!(
        text.contains("\nweir_retries_total{pool=\"metrics-pool\"} 0\n"),
        "{text}"
    );
    assert_eq!(value(s, "weir_config_generation", &[]), 1.0);
    assert!(text.contains("weir_reloads_total{result=\"error\"} 0"), "{text}");
    assert!(
        text.contains("weir_connections_active{listener=\"metrics-test\"}"),
        "{text}"
    );
    assert!(text.contains("# TYPE weir_request_duration_seconds histogram"));
}

/// On a current-thread runtime (a `#[tokio::test]`'s, like `worker_threads = 1`), requests that
/// arrive together go to the upstreams in batches, and their responses back to the clients:
/// `weir_batched_sends_total` grows by two sends a request, `weir_send_batches_total` by fewer.
#[tokio::test]
async fn requests_that_arrive_together_are_sent_in_batches() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let gw = TestGateway::start(&one_pool(&[&a, &b])).await;
    let scrape = |text: String| {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let s = prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("unparsable /metrics: {e}"));
        (
            value(&s.samples, "weir_send_batches_total", &[]),
            value(&s.samples, "weir_batched_sends_total", &[]),
        )
    };
    let (batches0, sends0) = scrape(get(&gw.admin_url("/metrics")).await.text());
    let url = gw.url("client", "/");
    let replies = futures_util::future::join_all((0..40).map(|_| get(&url))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    let (batches1, sends1) = scrape(get(&gw.admin_url("/metrics")).await.text());
    let (batches, sends) = (batches1 - batches0, sends1 - sends0);
    // Other tests of this binary may add to both counters, never to one alone.
    assert!(sends >= 80.0, "40 requests and 40 responses, batched: {sends}");
    assert!(batches < sends, "{sends} sends in {batches} batches");
}
