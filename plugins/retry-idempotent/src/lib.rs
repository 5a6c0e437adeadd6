//! `retry-idempotent`: retries a failed attempt on another endpoint when that is safe.
//! `{ max_attempts = 3, on_status = [502, 503, 504], backoff = "0ms" }`. A refused or timed-out
//! connect never reached an upstream, so any request is retried; a reset, a response timeout or
//! a status in `on_status` only when the request is replayable (idempotent, body replayable).
//! The host caps attempts and the retry budget whatever this says.

use weir_plugin_sdk::*;

pub struct RetryIdempotent {
    pub max_attempts: u32,
    pub on_status: Vec<u16>,
    pub backoff_ms: u32,
}

impl RetryIdempotent {
    pub fn decide(&self, a: &AttemptInfo) -> FailureDecision {
        if a.attempt >= self.max_attempts {
            return FailureDecision::Fail;
        }
        let retry = match a.failure {
            FailureKind::ConnectRefused | FailureKind::ConnectTimeout | FailureKind::TlsError => true,
            FailureKind::ResetBeforeResponse | FailureKind::ResponseTimeout => a.replayable,
            FailureKind::HttpStatus(s) => a.replayable && self.on_status.contains(&s),
        };
        if retry {
            FailureDecision::Retry(self.backoff_ms)
        } else {
            FailureDecision::Fail
        }
    }
}

impl Plugin for RetryIdempotent {
    const NAME: &'static str = "retry-idempotent";

    fn init(config: &Config) -> Result<Self, String> {
        config.only(&["max_attempts", "on_status", "backoff"])?;
        let max_attempts = config.u64_or("max_attempts", 3)?;
        if !(1..=100).contains(&max_attempts) {
            return Err(format!("`max_attempts` must be 1-100, got {max_attempts}"));
        }
        let on_status = config
            .u64_list_or("on_status", &[502, 503, 504])?
            .into_iter()
            .map(|s| {
                if (500..=599).contains(&s) {
                    Ok(s as u16)
                } else {
                    Err(format!("`on_status` takes 5xx codes, got {s}"))
                }
            })
            .collect::<Result<Vec<u16>, String>>()?;
        let backoff_ms = config.duration_ms_or("backoff", 0)?.min(10_000) as u32;
        Ok(RetryIdempotent {
            max_attempts: max_attempts as u32,
            on_status,
            backoff_ms,
        })
    }

    fn on_failure(&self, attempt: AttemptInfo) -> FailureDecision {
        self.decide(&attempt)
    }
}

plugin!(RetryIdempotent);

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(attempt: u32, failure: FailureKind, replayable: bool) -> AttemptInfo {
        AttemptInfo {
            request_id: 1,
            cookie: 0,
            attempt,
            pool_id: 0,
            endpoint_index: 0,
            failure,
            elapsed_ms: 1,
            replayable,
        }
    }

    fn policy() -> RetryIdempotent {
        RetryIdempotent {
            max_attempts: 3,
            on_status: vec![502, 503, 504],
            backoff_ms: 0,
        }
    }

    #[test]
    fn retries_what_is_safe() {
        let p = policy();
        assert!(matches!(
            p.decide(&attempt(1, FailureKind::ConnectRefused, false)),
            FailureDecision::Retry(0)
        ));
        assert!(matches!(
            p.decide(&attempt(1, FailureKind::ResetBeforeResponse, true)),
            FailureDecision::Retry(0)
        ));
        assert!(matches!(
            p.decide(&attempt(1, FailureKind::HttpStatus(503), true)),
            FailureDecision::Retry(0)
        ));
    }

    #[test]
    fn never_replays_unsafe_requests() {
        let p = policy();
        assert!(matches!(
            p.decide(&attempt(1, FailureKind::ResetBeforeResponse, false)),
            FailureDecision::Fail
        ));
        assert!(matches!(
            p.decide(&attempt(1, FailureKind::HttpStatus(503), false)),
            FailureDecision::Fail
        ));
        assert!(matches!(
            p.decide(&attempt(1, FailureKind::HttpStatus(500), true)),
            FailureDecision::Fail
        ));
        assert!(matches!(
            p.decide(&attempt(3, FailureKind::ConnectRefused, true)),
            FailureDecision::Fail
        ));
    }
}
