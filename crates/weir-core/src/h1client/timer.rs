//! [`ReusedTimer`]: one connection's response timer, kept across its requests.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The response head did not arrive within the attempt's timeout.
#[derive(Debug, PartialEq, Eq)]
pub struct TimedOut;

/// When a response head is due: `limit` after the request has gone, so the time a request body
/// takes to send is not counted (a 300 MB upload at 10 MB/s takes 30 s, the default limit)
/// except where the upstream holds it up. The body's sending moves it: [`Deadline::hold`]
/// while it waits for the client's next bytes (the listener's `body_timeout` bounds that),
/// [`Deadline::restart`] when it hands bytes to the upstream and when the body is done, so
/// an upstream that stops taking the body gets `limit` from then.
#[derive(Debug)]
pub struct Deadline {
    base: Instant,
    limit: Duration,
    /// Nanoseconds after `base`; [`Deadline::HELD`] while held.
    at: AtomicU64,
}

/// When a response is due: `None` while not due at all.
pub trait Due {
    fn due(&self) -> Option<Instant>;
}

impl Due for Instant {
    #[inline]
    fn due(&self) -> Option<Instant> {
        Some(*self)
    }
}

impl Due for Deadline {
    fn due(&self) -> Option<Instant> {
        match self.at.load(Ordering::Relaxed) {
            Self::HELD => None,
            at => Some(self.base + Duration::from_nanos(at)),
        }
    }
}

/// Polls `timer` for `deadline`: moves it when the deadline has moved since `due` (the one it
/// was last set for, kept by the caller), `Ready` once it has passed, never while it is held.
pub fn poll_due(
    mut timer: Pin<&mut Sleep>,
    due: &mut Option<Instant>,
    deadline: &impl Due,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let now_due = deadline.due();
    if now_due != *due {
        *due = now_due;
        timer.as_mut().reset(due.unwrap_or_else(far_off));
    }
    match due {
        Some(_) => timer.poll(cx),
        None => Poll::Pending,
    }
}

/// Where a timer for a held deadline is set: a year from now.
pub fn far_off() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

impl Deadline {
    const HELD: u64 = u64::MAX;

    /// Due `limit` after `start`.
    pub fn new(start: Instant, limit: Duration) -> Self {
        Deadline {
            base: start,
            limit,
            at: AtomicU64::new(Self::nanos(limit)),
        }
    }

    /// `d` as stored: nanoseconds, just short of [`Deadline::HELD`] at most.
    fn nanos(d: Duration) -> u64 {
        u64::try_from(d.as_nanos())
            .unwrap_or(Self::HELD - 1)
            .min(Self::HELD - 1)
    }

    /// Not due while the request waits for its client.
    pub fn hold(&self) {
        self.at.store(Self::HELD, Ordering::Relaxed);
    }

    /// Due `limit` from now.
    pub fn restart(&self) {
        let at = Instant::now().saturating_duration_since(self.base) + self.limit;
        self.at.store(Self::nanos(at), Ordering::Relaxed);
    }
}

/// A timeout timer that lives as long as its connection. Each request moves its deadline later,
/// which for a timer still in tokio's wheel is an atomic store (tokio files the entry again
/// when its old slot comes due); a `tokio::time::timeout` per request instead put an entry into
/// the wheel and took it out again under the driver's lock, about 2% of weir's CPU at
/// saturation (benches/README.md). Between requests the timer keeps a no-op waker, so an idle
/// connection neither wakes nor keeps alive the task that last used it.
#[derive(Debug, Default)]
pub struct ReusedTimer(Option<Pin<Box<Sleep>>>);

impl ReusedTimer {
    /// `work`'s output, or [`TimedOut`] when it has not finished `limit` from now.
    pub async fn within<F: Future>(&mut self, limit: Duration, work: F) -> Result<F::Output, TimedOut> {
        self.within_from(Instant::now(), limit, work).await
    }

    /// [`ReusedTimer::within`] from `start`, a clock reading the caller already has.
    pub async fn within_from<F: Future>(
        &mut self,
        start: Instant,
        limit: Duration,
        work: F,
    ) -> Result<F::Output, TimedOut> {
        self.within_deadline(&(start + limit), work).await
    }

    /// `work`'s output, or [`TimedOut`] when it has not finished by `deadline`: a fixed
    /// instant, or a [`Deadline`] that `work` may move or hold as it goes.
    pub async fn within_deadline<F: Future>(&mut self, deadline: &impl Due, work: F) -> Result<F::Output, TimedOut> {
        let mut due = deadline.due();
        let first = due.unwrap_or_else(far_off);
        let timer = match &mut self.0 {
            Some(timer) => {
                timer.as_mut().reset(first);
                timer
            }
            none => none.insert(Box::pin(tokio::time::sleep_until(first))),
        };
        let mut work = pin!(work);
        let mut armed = false;
        let answer = poll_fn(|cx| {
            if let Poll::Ready(output) = work.as_mut().poll(cx) {
                return Poll::Ready(Ok(output));
            }
            armed = true;
            poll_due(timer.as_mut(), &mut due, deadline, cx).map(|()| Err(TimedOut))
        })
        .await;
        if armed {
            // The timer stays in the wheel with this task's waker, and a waker keeps its
            // task's memory (the whole connection future) allocated even after the task has
            // ended: a pool of idle upstream connections would hold that many dead tasks until
            // their deadlines came. A no-op waker takes its place.
            let _ = timer.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        }
        answer
    }

    /// For a body read that found nothing to read: `Ready` once the wait has lasted `limit`
    /// (zero: never). `waiting` says whether this wait already started (the timer then runs
    /// from its start); the caller clears it when bytes come. A body that arrives whole never
    /// gets here, so only a body that waits pays a clock read.
    pub fn poll_stalled(&mut self, waiting: &mut bool, limit: Duration, cx: &mut Context<'_>) -> Poll<()> {
        if limit.is_zero() {
            return Poll::Pending;
        }
        let timer = match &mut self.0 {
            Some(timer) => {
                if !*waiting {
                    timer.as_mut().reset(Instant::now() + limit);
                }
                timer
            }
            none => none.insert(Box::pin(tokio::time::sleep(limit))),
        };
        *waiting = true;
        timer.as_mut().poll(cx)
    }

    /// Takes the waker of the task that last polled the timer out of the wheel (see
    /// [`ReusedTimer::within_from`]): for a connection going back to its pool.
    pub fn quiet(&mut self) {
        if let Some(timer) = &mut self.0 {
            let _ = timer.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        }
    }
}

#[cfg(test)]
mod tests {
    //! Real time, in tenths of a second: the margins are wide enough for a loaded machine.
    use super::*;

    const TENTH: Duration = Duration::from_millis(100);

    /// A waker whose task is an `Arc` the test holds: its strong count tells who keeps it.
    fn counted_waker() -> (std::sync::Arc<impl std::task::Wake>, Waker) {
        struct Task;
        impl std::task::Wake for Task {
            fn wake(self: std::sync::Arc<Self>) {}
        }
        let task = std::sync::Arc::new(Task);
        (task.clone(), Waker::from(task))
    }

    #[tokio::test]
    async fn work_that_ends_in_time_gives_its_output_and_the_timer_serves_again() {
        let mut timer = ReusedTimer::default();
        for i in 0..3 {
            let output = timer
                .within(10 * TENTH, async move {
                    tokio::time::sleep(TENTH / 10).await;
                    i
                })
                .await;
            assert_eq!(output, Ok(i));
        }
    }

    #[tokio::test]
    async fn work_past_the_limit_times_out_counted_from_its_own_start() {
        let mut timer = ReusedTimer::default();
        assert_eq!(timer.within(TENTH, tokio::time::sleep(TENTH / 10)).await, Ok(()));
        // Past the first call's deadline (the timer fired, nobody listening): the next call
        // counts from its own start.
        tokio::time::sleep(2 * TENTH).await;
        let started = Instant::now();
        let output = timer.within(TENTH, std::future::pending::<()>()).await;
        assert_eq!(output, Err(TimedOut));
        assert!(started.elapsed() >= TENTH, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_later_deadline_on_a_timer_still_in_the_wheel_is_honoured() {
        let mut timer = ReusedTimer::default();
        // Registered in the wheel (awaited while pending) for 2 tenths from now...
        let first = timer.within(2 * TENTH, tokio::time::sleep(TENTH / 10)).await;
        assert_eq!(first, Ok(()));
        // ...then moved to 30 tenths: work of 5 tenths outlives the old deadline and must finish.
        let second = timer.within(30 * TENTH, tokio::time::sleep(5 * TENTH)).await;
        assert_eq!(second, Ok(()), "the old deadline fired");
    }

    #[tokio::test]
    async fn an_earlier_deadline_than_the_one_in_the_wheel_fires_on_time() {
        let mut timer = ReusedTimer::default();
        assert_eq!(timer.within(600 * TENTH, tokio::time::sleep(TENTH / 10)).await, Ok(()));
        let started = Instant::now();
        let output = timer.within(TENTH, std::future::pending::<()>()).await;
        assert_eq!(output, Err(TimedOut));
        assert!(started.elapsed() < 100 * TENTH, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_held_deadline_does_not_fire_and_a_restarted_one_counts_from_then() {
        let mut timer = ReusedTimer::default();
        let deadline = Deadline::new(Instant::now(), TENTH);
        // Held for three limits (a body waiting for its client), then done: in time.
        let work = async {
            deadline.hold();
            tokio::time::sleep(3 * TENTH).await;
            deadline.restart();
            tokio::time::sleep(TENTH / 2).await;
        };
        assert_eq!(timer.within_deadline(&deadline, work).await, Ok(()));
        // Restarted, then nothing more: it fires a limit after the restart.
        let deadline = Deadline::new(Instant::now(), TENTH);
        let started = Instant::now();
        let work = async {
            deadline.hold();
            tokio::time::sleep(2 * TENTH).await;
            deadline.restart();
            std::future::pending::<()>().await;
        };
        assert_eq!(timer.within_deadline(&deadline, work).await, Err(TimedOut));
        assert!(started.elapsed() >= 3 * TENTH, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_stall_is_timed_from_the_start_of_its_wait_and_a_quiet_timer_keeps_no_waker() {
        let (task, waker) = counted_waker();
        let mut cx = Context::from_waker(&waker);
        let mut timer = ReusedTimer::default();
        let mut waiting = false;
        assert!(
            timer.poll_stalled(&mut waiting, Duration::ZERO, &mut cx).is_pending(),
            "zero: no limit"
        );
        assert!(!waiting);
        let started = Instant::now();
        assert!(timer.poll_stalled(&mut waiting, TENTH, &mut cx).is_pending());
        assert!(waiting);
        assert_eq!(
            std::sync::Arc::strong_count(&task),
            3,
            "the waiting timer holds the task's waker"
        );
        // Polled again within the same wait: the deadline stays where it was.
        tokio::time::sleep(TENTH / 2).await;
        assert!(timer.poll_stalled(&mut waiting, TENTH, &mut cx).is_pending());
        tokio::time::sleep_until(started + TENTH + TENTH / 10).await;
        assert!(timer.poll_stalled(&mut waiting, TENTH, &mut cx).is_ready());
        // Bytes came (the caller clears `waiting`): the next wait counts afresh.
        waiting = false;
        assert!(timer.poll_stalled(&mut waiting, TENTH, &mut cx).is_pending());
        timer.quiet();
        assert_eq!(std::sync::Arc::strong_count(&task), 2, "a quiet timer holds no waker");
    }

    #[tokio::test]
    async fn an_idle_timer_holds_no_waker_of_the_task_that_last_used_it() {
        let (task, waker) = counted_waker();
        let mut cx = Context::from_waker(&waker);
        let mut timer = ReusedTimer::default();
        {
            let mut first = true;
            let work = poll_fn(move |_| {
                if std::mem::replace(&mut first, false) {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            });
            let mut call = pin!(timer.within(60 * TENTH, work));
            assert!(call.as_mut().poll(&mut cx).is_pending());
            assert_eq!(
                std::sync::Arc::strong_count(&task),
                3,
                "the armed timer holds the task's waker"
            );
            assert_eq!(call.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        }
        assert_eq!(
            std::sync::Arc::strong_count(&task),
            2,
            "the idle timer still holds the task's waker"
        );
    }
}
