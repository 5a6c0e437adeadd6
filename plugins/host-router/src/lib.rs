//! `host-router`: routes by host and path prefix. `{ routes = [ { host = "*.example.com",
//! path_prefix = "/api", pool = "api" } ] }`. An exact host beats a wildcard; among matching
//! routes of the same host kind, the longest path prefix wins; no match keeps the listener's
//! default pool.

use weir_plugin_sdk::*;

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Exact host, `*.suffix`, or `*` / empty for any host.
    pub host: String,
    pub path_prefix: String,
    pub pool: String,
}

/// Host specificity: exact 2, wildcard 1, any 0; `None` when it does not match. `pattern` is
/// lower-case (from `parse`); `host` is compared without case and without allocating.
fn host_rank(pattern: &str, host: &str) -> Option<u8> {
    let host = host.trim_end_matches('.').as_bytes();
    if pattern.is_empty() || pattern == "*" {
        Some(0)
    } else if let Some(suffix) = pattern.strip_prefix("*.") {
        let dot = host.len().checked_sub(suffix.len() + 1)?;
        (host[dot] == b'.' && host[dot + 1..].eq_ignore_ascii_case(suffix.as_bytes())).then_some(1)
    } else {
        pattern.as_bytes().eq_ignore_ascii_case(host).then_some(2)
    }
}

/// The best route for `host` and `path`.
pub fn best<'r>(routes: &'r [Route], host: &str, path: &str) -> Option<&'r Route> {
    routes
        .iter()
        .filter_map(|r| Some((host_rank(&r.host, host)?, r)))
        .filter(|(_, r)| path.starts_with(&r.path_prefix))
        .max_by_key(|(rank, r)| (*rank, r.path_prefix.len()))
        .map(|(_, r)| r)
}

pub fn parse(config: &Config) -> Result<Vec<Route>, String> {
    config.only(&["routes"])?;
    let Some(list) = config.get("routes") else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or("`routes` must be a list of tables")?;
    list.iter()
        .enumerate()
        .map(|(i, r)| {
            let obj = r.as_object().ok_or(format!("routes[{i}] must be a table"))?;
            for k in obj.keys() {
                if !["host", "path_prefix", "pool"].contains(&k.as_str()) {
                    return Err(format!("routes[{i}]: unknown key `{k}`"));
                }
            }
            let text = |k: &str| -> Result<String, String> {
                match obj.get(k) {
                    None => Ok(String::new()),
                    Some(v) => v
                        .as_str()
                        .map(str::to_string)
                        .ok_or(format!("routes[{i}].{k} must be a string")),
                }
            };
            let pool = text("pool")?;
            if pool.is_empty() {
                return Err(format!("routes[{i}] needs a `pool`"));
            }
            let mut path_prefix = text("path_prefix")?;
            if path_prefix.is_empty() {
                path_prefix = "/".to_string();
            }
            Ok(Route {
                host: text("host")?.to_ascii_lowercase(),
                path_prefix,
                pool,
            })
        })
        .collect()
}

struct HostRouter {
    routes: Vec<Route>,
}

impl Plugin for HostRouter {
    const NAME: &'static str = "host-router";

    fn init(config: &Config) -> Result<Self, String> {
        let routes = parse(config)?;
        for r in &routes {
            if pools::pool_id(&r.pool).is_none() {
                return Err(format!("route to unknown pool `{}`", r.pool));
            }
        }
        Ok(HostRouter { routes })
    }

    fn route(&self, req: ReqInfo) -> RouteDecision {
        match best(&self.routes, &req.authority, &req.path_and_query) {
            Some(r) => RouteDecision::Upstream(UpstreamTarget {
                pool: r.pool.clone(),
                rewrite_path: None,
                set_headers: Vec::new(),
                timeout_ms: None,
                cookie: 0,
            }),
            None => RouteDecision::DefaultRoute,
        }
    }
}

plugin!(HostRouter);

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Vec<Route> {
        let r = |host: &str, prefix: &str, pool: &str| Route {
            host: host.into(),
            path_prefix: prefix.into(),
            pool: pool.into(),
        };
        vec![
            r("*.example.com", "/", "wild"),
            r("a.example.com", "/", "a"),
            r("a.example.com", "/api", "a-api"),
            r("b.example.com", "/", "b"),
            r("", "/static", "static"),
        ]
    }

    #[test]
    fn exact_beats_wildcard_and_longest_prefix_wins() {
        let rs = routes();
        let pool = |h: &str, p: &str| best(&rs, h, p).map(|r| r.pool.as_str());
        assert_eq!(pool("a.example.com", "/"), Some("a"));
        assert_eq!(pool("A.Example.com", "/api/v1"), Some("a-api"));
        assert_eq!(pool("b.example.com", "/x"), Some("b"));
        assert_eq!(pool("c.example.com", "/x"), Some("wild"));
        assert_eq!(pool("example.com", "/x"), None);
        assert_eq!(pool("other.org", "/static/app.js"), Some("static"));
        assert_eq!(pool("other.org", "/"), None);
    }

    #[test]
    fn config_errors() {
        let c = Config::parse(r#"{"routes": [{"host": "a", "pol": "x"}]}"#).unwrap_or_default();
        assert!(parse(&c).is_err());
        let c = Config::parse(r#"{"routes": [{"host": "a"}]}"#).unwrap_or_default();
        assert!(parse(&c).is_err());
    }
}
