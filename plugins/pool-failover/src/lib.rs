//! `pool-failover`: retries within the pool while `retries` allow, then fails over to
//! `fallback_pool` (a DR site, a static maintenance pool). `{ fallback_pool = "dr",
//! retries = 1 }`. A pool with no endpoint left to try (all down, drained or tried) fails over
//! at once. Like every failover policy, it only moves requests that are safe to resend.

use weir_plugin_sdk::*;

pub struct PoolFailover {
    pub fallback_pool: String,
    pub fallback_id: u32,
    pub retries: u32,
}

impl PoolFailover {
    pub fn decide(&self, a: &AttemptInfo) -> FailureDecision {
        let unsent = matches!(
            a.failure,
            FailureKind::ConnectRefused | FailureKind::ConnectTimeout | FailureKind::TlsError
        );
        if !(unsent || a.replayable) {
            return FailureDecision::Fail;
        }
        // `attempt - 1` retries were spent in the primary pool; the host caps the total. A pool
        // with no endpoint left to try fails over at once.
        let exhausted = a.endpoint_index == NO_ENDPOINT;
        if a.pool_id != self.fallback_id && (exhausted || a.attempt > self.retries) {
            FailureDecision::Failover(UpstreamTarget {
                pool: self.fallback_pool.clone(),
                rewrite_path: None,
                set_headers: Vec::new(),
                timeout_ms: None,
                cookie: a.cookie,
            })
        } else {
            FailureDecision::Retry(0)
        }
    }
}

impl Plugin for PoolFailover {
    const NAME: &'static str = "pool-failover";

    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["fallback_pool", "retries"])?;
        let fallback_pool = config.opt_str("fallback_pool")?.ok_or("`fallback_pool` is required")?;
        let fallback_id = pools::pool_id(&fallback_pool).ok_or(format!("unknown pool `{fallback_pool}`"))?;
        let retries = config.u64_or("retries", 1)?.min(100) as u32;
        Ok(PoolFailover {
            fallback_pool,
            fallback_id,
            retries,
        })
    }

    fn on_failure(&self, attempt: AttemptInfo) -> FailureDecision {
        self.decide(&attempt)
    }
}

plugin!(PoolFailover);

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(pool_id: u32, attempt: u32, replayable: bool) -> AttemptInfo {
        AttemptInfo {
            request_id: 1,
            cookie: 0,
            attempt,
            pool_id,
            endpoint_index: 0,
            failure: FailureKind::ResetBeforeResponse,
            elapsed_ms: 1,
            replayable,
        }
    }

    #[test]
    fn retries_then_fails_over() {
        let p = PoolFailover {
            fallback_pool: "dr".into(),
            fallback_id: 1,
            retries: 0,
        };
        assert!(matches!(p.decide(&attempt(0, 1, true)), FailureDecision::Failover(ref t) if t.pool == "dr"));
        let p = PoolFailover {
            fallback_pool: "dr".into(),
            fallback_id: 1,
            retries: 1,
        };
        assert!(matches!(p.decide(&attempt(0, 1, true)), FailureDecision::Retry(0)));
        assert!(matches!(p.decide(&attempt(0, 2, true)), FailureDecision::Failover(_)));
        assert!(matches!(p.decide(&attempt(1, 3, true)), FailureDecision::Retry(0)));
        assert!(matches!(p.decide(&attempt(0, 1, false)), FailureDecision::Fail));
    }

    #[test]
    fn a_pool_with_no_endpoint_left_fails_over_at_once() {
        let p = PoolFailover {
            fallback_pool: "dr".into(),
            fallback_id: 1,
            retries: 2,
        };
        let exhausted = |pool_id, replayable, failure| AttemptInfo {
            endpoint_index: NO_ENDPOINT,
            failure,
            ..attempt(pool_id, 1, replayable)
        };
        // Nothing sent yet (every endpoint of the primary down): even a POST moves.
        let none_sent = exhausted(0, false, FailureKind::ConnectRefused);
        assert!(matches!(p.decide(&none_sent), FailureDecision::Failover(ref t) if t.pool == "dr"));
        // A POST that reached an endpoint does not.
        let sent = exhausted(0, false, FailureKind::ResetBeforeResponse);
        assert!(matches!(p.decide(&sent), FailureDecision::Fail));
        // The fallback pool itself has nowhere else to go.
        assert!(!matches!(
            p.decide(&exhausted(1, true, FailureKind::ConnectRefused)),
            FailureDecision::Failover(_)
        ));
    }
}
