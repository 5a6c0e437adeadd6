//! `local-answer`: a test fixture for the `respond` decisions. As a router it answers
//! `/local/<status>` itself (with an `x-answered-by` field, and framing and connection fields
//! that the host must not pass on); as a failover policy it answers every failed attempt with a
//! 503 maintenance page. `/zero-timeout/PATH` goes to the pool `live` as `/PATH` with a per-try timeout of 0.

use weir_plugin_sdk::*;

struct LocalAnswer;

fn header(name: &str, value: &str) -> Header {
    Header {
        name: name.to_string(),
        value: value.as_bytes().to_vec(),
    }
}

impl Plugin for LocalAnswer {
    const NAME: &'static str = "local-answer";

    fn init(_config: &Config) -> Result<Self, String> {
        Ok(LocalAnswer)
    }

    fn route(&self, req: ReqInfo) -> RouteDecision {
        if let Some(rest) = req.path_and_query.strip_prefix("/zero-timeout") {
            // To the `live` pool, as `rest`, with a per-try timeout of zero: the host must not
            // apply it.
            return RouteDecision::Upstream(UpstreamTarget {
                pool: "live".to_string(),
                rewrite_path: Some(rest.to_string()),
                set_headers: Vec::new(),
                timeout_ms: Some(0),
                cookie: 0,
            });
        }
        let Some(status) = req.path_and_query.strip_prefix("/local/") else {
            return RouteDecision::DefaultRoute;
        };
        RouteDecision::Respond(LocalResponse {
            status: status.parse().unwrap_or(0),
            headers: vec![
                header("x-answered-by", "local-answer"),
                header("connection", "close"),
                header("content-length", "999"),
                header("transfer-encoding", "chunked"),
            ],
            body: b"answered by the plugin\n".to_vec(),
        })
    }

    fn on_failure(&self, _attempt: AttemptInfo) -> FailureDecision {
        FailureDecision::Respond(LocalResponse {
            status: 503,
            headers: vec![header("retry-after", "30"), header("x-answered-by", "local-answer")],
            body: b"down for maintenance\n".to_vec(),
        })
    }
}

plugin!(LocalAnswer);
