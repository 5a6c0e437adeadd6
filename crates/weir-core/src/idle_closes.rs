//! What an endpoint's pool learns of an upstream that closes idle keep-alive connections
//! without announcing when (no `Keep-Alive: timeout`): gunicorn after 2 s, uvicorn after 5,
//! Go's `IdleTimeout`, nginx's `keepalive_timeout`. A request sent on a pooled connection just
//! as the upstream closes it is lost. An idempotent one goes again on a new connection
//! (`proxy.rs`, the keep-alive race); a POST cannot, as the upstream may have acted on it, and
//! got a 502, as from nginx or Go's client.
//!
//! So each endpoint keeps two facts: whether its upstream has been seen closing an idle
//! connection, and the longest time a pooled connection has been seen to idle and still carry
//! a request (every reuse that got an answer) or still be open (the sweep, once a second).
//! Once the first holds, a request that could not go again takes only a connection that has
//! idled a quarter (at most a second) less than that longest survival, or a new one; every
//! other request reuses connections as before. The survival figure is evidence, not a guess:
//! the upstream's timeout is longer. A close seen at an idle time no longer than it (a
//! restart, a lowered timeout, an upstream closing after some number of requests) shows it
//! wrong, and it starts again from nothing: such requests open new connections until the
//! pool has seen how long its connections live, except those idle for less than
//! [`FLOOR_MS`]. An upstream never seen closing an idle connection costs nothing.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// The limit is never below this: a connection idle for less carries any request. No
/// keep-alive server closes idle connections that soon, and after a restart of the upstream
/// (every pooled connection closed, some just idle for a moment) the limit falls to nothing:
/// until the next sweep had seen connections live again, a request that could not go again
/// found none young enough unless it came in the same clock tick as the last answer.
/// (Saturated, `wrk -c64` POSTs with one upstream restarted, weir opened about as many connections
/// with this floor as without it: 95 and 108 in 6 s, with 64 of wrk's own among them.)
pub const FLOOR_MS: u64 = 100;

#[derive(Debug, Default)]
pub struct IdleCloses {
    /// The upstream has closed a connection while it idled in the pool.
    seen: AtomicBool,
    /// The longest idle time a pooled connection was seen to survive, in milliseconds, since
    /// the last close that showed the figure wrong.
    survived_ms: AtomicU32,
}

impl IdleCloses {
    /// A pooled connection idled `idle_ms` and was still open (the sweep), or carried a request
    /// that got an answer.
    pub fn survived(&self, idle_ms: u64) {
        let ms = clamp(idle_ms);
        // A read first: the common case (nothing longer) writes nothing to the shared line.
        if ms > self.survived_ms.load(Ordering::Relaxed) {
            self.survived_ms.fetch_max(ms, Ordering::Relaxed);
        }
    }

    /// A pooled connection was found closed by the upstream (or lost a request to its close)
    /// after idling `idle_ms`. Returns true the first time: the caller says so in the log.
    pub fn closed(&self, idle_ms: u64) -> bool {
        let ms = clamp(idle_ms);
        if self.survived_ms.load(Ordering::Relaxed) >= ms {
            self.survived_ms.store(0, Ordering::Relaxed);
        }
        !self.seen.load(Ordering::Relaxed) && !self.seen.swap(true, Ordering::Relaxed)
    }

    /// The longest a pooled connection may have idled to carry a request that could not go
    /// again if it turned out closed; `None`: any connection the pool keeps.
    pub fn safe_idle_ms(&self) -> Option<u64> {
        if !self.seen.load(Ordering::Relaxed) {
            return None;
        }
        let survived = self.survived_ms.load(Ordering::Relaxed);
        Some(u64::from(crate::h1client::conn::reuse_window_ms(survived)).max(FLOOR_MS))
    }
}

fn clamp(ms: u64) -> u32 {
    u32::try_from(ms).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_never_seen_closing_puts_no_limit() {
        let c = IdleCloses::default();
        c.survived(5_000);
        assert_eq!(c.safe_idle_ms(), None);
    }

    #[test]
    fn the_limit_stays_below_the_longest_survival() {
        let c = IdleCloses::default();
        c.survived(1_200);
        c.survived(800);
        assert!(c.closed(2_300), "the first close is news");
        assert!(!c.closed(2_100), "the second is not");
        // A quarter below 1.2 s.
        assert_eq!(c.safe_idle_ms(), Some(900));
        c.survived(1_900);
        assert_eq!(c.safe_idle_ms(), Some(1_425));
        // At most a second below.
        c.survived(60_000);
        c.closed(61_000);
        assert_eq!(c.safe_idle_ms(), Some(59_000));
    }

    #[test]
    fn a_close_within_the_survival_starts_it_again() {
        let c = IdleCloses::default();
        c.survived(4_000);
        c.closed(5_000);
        assert_eq!(c.safe_idle_ms(), Some(3_000));
        // A restart: a connection idle for 100 ms closed.
        c.closed(100);
        assert_eq!(c.safe_idle_ms(), Some(FLOOR_MS));
        c.survived(400);
        assert_eq!(c.safe_idle_ms(), Some(300));
    }
}
