//! `canary`: sends `percent` of requests (by request id) to `canary_pool`, and every request
//! carrying the `header` (any value but "0"/"false") to it too; the rest to `pool`.
//! `{ pool = "stable", canary_pool = "canary", percent = 5, header = "x-canary" }`

use weir_plugin_sdk::*;

struct Canary {
    pool: String,
    canary_pool: String,
    percent: u64,
    header: Option<String>,
}

/// Whether a request goes to the canary.
pub fn to_canary(request_id: u64, percent: u64, header_value: Option<&[u8]>) -> bool {
    if let Some(v) = header_value {
        return !(v == b"0" || v.eq_ignore_ascii_case(b"false"));
    }
    // Spread ids so consecutive requests do not cluster.
    let mixed = request_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    mixed % 100 < percent
}

impl Plugin for Canary {
    const NAME: &'static str = "canary";

    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["pool", "canary_pool", "percent", "header"])?;
        let pool = config.opt_str("pool")?.ok_or("`pool` is required")?;
        let canary_pool = config.opt_str("canary_pool")?.ok_or("`canary_pool` is required")?;
        for p in [&pool, &canary_pool] {
            if pools::pool_id(p).is_none() {
                return Err(format!("unknown pool `{p}`"));
            }
        }
        let percent = config.u64_or("percent", 5)?;
        if percent > 100 {
            return Err(format!("`percent` must be 0-100, got {percent}"));
        }
        let header = config.opt_str("header")?.map(|h| h.to_ascii_lowercase());
        Ok(Canary {
            pool,
            canary_pool,
            percent,
            header,
        })
    }

    fn manifest(&self) -> Manifest {
        Manifest {
            want_headers: self.header.iter().cloned().collect(),
            ..Manifest::default()
        }
    }

    fn route(&self, req: ReqInfo) -> RouteDecision {
        let header = self
            .header
            .as_ref()
            .and_then(|h| req.headers.iter().find(|x| x.name == *h))
            .map(|x| x.value.as_slice());
        let pool = if to_canary(req.id, self.percent, header) {
            &self.canary_pool
        } else {
            &self.pool
        };
        RouteDecision::Upstream(UpstreamTarget {
            pool: pool.clone(),
            rewrite_path: None,
            set_headers: Vec::new(),
            timeout_ms: None,
            cookie: 0,
        })
    }
}

plugin!(Canary);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_is_respected() {
        let n = (0..10_000u64).filter(|&id| to_canary(id, 5, None)).count();
        assert!((350..=650).contains(&n), "{n}");
        assert_eq!((0..1000u64).filter(|&id| to_canary(id, 0, None)).count(), 0);
        assert_eq!((0..1000u64).filter(|&id| to_canary(id, 100, None)).count(), 1000);
    }

    #[test]
    fn header_forces() {
        assert!(to_canary(1, 0, Some(b"1")));
        assert!(!to_canary(1, 100, Some(b"false")));
    }
}
