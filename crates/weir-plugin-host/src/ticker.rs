//! The call watchdog: stops plugin code that runs past its deadline (`call_timeout`) by
//! advancing the engine's epoch, which is what wasmtime's compiled code checks.
//!
//! Every call runs on a [`Slot`] (one per plugin instance) and publishes there the instant by
//! which it must have returned ([`Slot::enter`] reads the clock once). While calls happen, the
//! watchdog thread wakes once a round (1.5 × `call_timeout`, at least 1 ms), looks at the
//! slots, and sleeps until the next round or the earliest deadline of a call still running,
//! whichever comes first. When a deadline has passed it advances the epoch. Every call running
//! at that moment then reaches its epoch deadline, and the store's callback
//! ([`CallWatch::on_deadline`])
//! compares the clock with that call's own deadline: the overdue call is interrupted, the
//! others go on. So a call seen running at a round is found overdue at its deadline, and one
//! that starts after a round and overruns before the next is found at that round: never
//! early, at most half a `call_timeout` late.
//!
//! `call_timeout` is wall-clock time, but a deadline passed while the OS had the worker thread
//! off its core (an oversubscribed node, a container at its CPU quota) is not the plugin's
//! doing, and stopping the call then gains nothing: the time is already lost, and the plugin
//! would be counted as timing out and lose its instance. So an overdue call is stopped only
//! once its thread has also had a quarter `call_timeout` of CPU time (`CLOCK_THREAD_CPUTIME_ID`,
//! read only on this path) since it was found overdue ([`CallWatch::on_deadline`]): a looping
//! call is stopped at most three quarters of a `call_timeout` after its deadline when it has
//! the CPU, later only when the OS takes the CPU from it, and a descheduled one that resumes
//! finishes. Found on this machine: with three busy loops beside weir on its core, 36 and 66 of
//! ~131,000 round-robin `select` calls (microseconds of work each) were stopped as timeouts.
//!
//! It replaces a ticker that advanced the epoch every millisecond while calls happened, the
//! deadline being a number of ticks: under load that was a thousand wake-ups a second, each a
//! context switch on a core the worker needs (~3% of weir's throughput in `ab.sh`, layout A),
//! where rounds of 1.5 × `call_timeout` (3 ms by default) cost a third of it.
//!
//! A quiet gateway should not wake for nothing: after a round in which no plugin code started
//! or ran, the thread parks, and the next entry into guest code wakes it. The handshake is
//! Dekker's, over sequentially consistent atomics: a caller writes its slot and then reads
//! `parked`; the watchdog sets `parked` and then reads the slots. One of the two sees the
//! other's write, so either the caller wakes the watchdog or the watchdog stays up.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use wasmtime::{Engine, UpdateDeadline};

/// The shortest round: a tiny `call_timeout` is not worth more wake-ups than this.
pub const MIN_ROUND: Duration = Duration::from_millis(1);
/// `call_timeout` until a plugin version says otherwise (the config's default).
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(2);
/// Instances that can hold a slot at once: twice the pooling allocator's component instances,
/// so that the pool, not the watchdog, is what refuses an instance too many.
const SLOTS: usize = 2 * crate::engine::MAX_INSTANCES as usize;

/// A slot's deadline, alone on its cache line: callers on different cores do not contend.
#[repr(align(64))]
#[derive(Default)]
struct Deadline(AtomicU64);

struct Shared {
    /// Per slot: the deadline of the call running on it (see [`now_ns`]), 0 when none is.
    slots: Box<[Deadline]>,
    /// Slots handed out so far (the scanned prefix) and the ones given back.
    high: AtomicUsize,
    free: Mutex<Vec<usize>>,
    /// The time between rounds, in nanoseconds.
    round_ns: AtomicU64,
    /// Some call started since the last round (cleared by the watchdog).
    called: AtomicBool,
    /// The watchdog is asleep or about to be: entering guest code must wake it.
    parked: AtomicBool,
    /// A running call's deadline moved ([`Slot::extend`]): the next round is due now.
    rescan: AtomicBool,
    stop: AtomicBool,
    thread: OnceLock<Thread>,
    /// Calls that had to wake the watchdog.
    wakes: AtomicU64,
    /// Rounds so far, and epoch increments (rounds that found a call overdue).
    rounds: AtomicU64,
    ticks: AtomicU64,
}

/// Owns the watchdog thread; dropping it stops the thread.
pub struct Ticker {
    shared: Arc<Shared>,
}

/// Where one instance's calls publish their deadline; given back when dropped.
pub struct Slot {
    shared: Arc<Shared>,
    index: usize,
}

/// Nanoseconds on the process's one plugin clock: call deadlines, backoff, and the guest's
/// `host.now-ns` (monotonic, never 0: 0 marks an idle slot).
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_add(1)
}

/// CPU time this thread has run, in nanoseconds (never 0), where the OS tells it.
fn thread_cpu_ns() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
        let ns = u64::try_from(t.tv_sec)
            .ok()?
            .checked_mul(1_000_000_000)?
            .checked_add(u64::try_from(t.tv_nsec).ok()?)?;
        Some(ns.max(1))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// One instance's calls as the watchdog and the store's epoch callback see them: the slot
/// where a call publishes its deadline, and the CPU time its thread had when the call was
/// found overdue. Lives in the store's data, so the callback can reach it.
pub struct CallWatch {
    slot: Slot,
    deadline: u64,
    /// The CPU time a call found overdue may still use before it is stopped.
    budget: u64,
    /// Thread CPU time when the running call was first found overdue; 0 until then.
    cpu_mark: u64,
}

impl CallWatch {
    pub fn new(slot: Slot) -> CallWatch {
        CallWatch {
            slot,
            deadline: 0,
            budget: 0,
            cpu_mark: 0,
        }
    }

    /// Call before running guest code, with the store one epoch from its deadline and
    /// [`CallWatch::on_deadline`] as its callback; [`CallWatch::leave`] once it has returned.
    #[inline]
    pub fn enter(&mut self, timeout: Duration) {
        self.deadline = self.slot.enter(timeout);
        self.budget = u64::try_from(timeout.as_nanos() / 4).unwrap_or(u64::MAX);
        self.cpu_mark = 0;
    }

    /// The call has returned.
    #[inline]
    pub fn leave(&self) {
        self.slot.leave();
    }

    /// The store's epoch-deadline callback. Before the call's deadline: go on to the next epoch
    /// (the watchdog advanced it for another call). Past it: stop the call once its thread has
    /// had `budget` of CPU time since it was first found past it; until then, publish a new
    /// deadline by which that could have happened, so the watchdog looks again then.
    pub fn on_deadline(&mut self) -> UpdateDeadline {
        let now = now_ns();
        if now < self.deadline {
            return UpdateDeadline::Continue(1);
        }
        let Some(cpu) = thread_cpu_ns() else {
            return UpdateDeadline::Interrupt;
        };
        if self.cpu_mark == 0 {
            self.cpu_mark = cpu;
        }
        let used = cpu.saturating_sub(self.cpu_mark);
        if used >= self.budget {
            return UpdateDeadline::Interrupt;
        }
        self.deadline = now.saturating_add(self.budget - used);
        self.slot.extend(self.deadline);
        UpdateDeadline::Continue(1)
    }
}

impl Ticker {
    pub fn start(engine: Engine) -> Result<Ticker, String> {
        let shared = Arc::new(Shared::new());
        let watching = shared.clone();
        let handle = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || run(&watching, &engine))
            .map_err(|e| format!("cannot start the plugin call watchdog: {e}"))?;
        let _ = shared.thread.set(handle.thread().clone());
        Ok(Ticker { shared })
    }

    /// Sets the round from the configured `call_timeout` (the latest plugin version's).
    pub fn set_call_timeout(&self, timeout: Duration) {
        let round = round(timeout);
        if self.shared.round_ns.swap(round, Ordering::Relaxed) > round
            && let Some(thread) = self.shared.thread.get()
        {
            thread.unpark();
        }
    }

    /// A slot for one instance's calls, or an error when `SLOTS` (512) instances already hold one.
    pub fn slot(&self) -> Result<Slot, String> {
        let s = &self.shared;
        let mut free = s
            .free
            .lock()
            .map_err(|_| "the watchdog's slot list is poisoned".to_string())?;
        let index = match free.pop() {
            Some(index) => index,
            None => {
                let index = s.high.load(Ordering::Relaxed);
                if index >= SLOTS {
                    return Err(format!("more than {SLOTS} plugin instances at once"));
                }
                s.high.store(index + 1, Ordering::Release);
                index
            }
        };
        Ok(Slot {
            shared: s.clone(),
            index,
        })
    }

    /// Whether the watchdog is asleep (or committed to sleeping): for tests and diagnostics.
    pub fn is_parked(&self) -> bool {
        self.shared.parked.load(Ordering::SeqCst)
    }

    /// How many calls found the watchdog asleep and woke it.
    pub fn wakes(&self) -> u64 {
        self.shared.wakes.load(Ordering::Relaxed)
    }

    /// How many rounds the watchdog has made.
    pub fn rounds(&self) -> u64 {
        self.shared.rounds.load(Ordering::Relaxed)
    }

    /// How many times the epoch has advanced (rounds that found a call overdue).
    pub fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.shared.thread.get() {
            thread.unpark();
        }
    }
}

impl Slot {
    /// Publishes the deadline of a call starting now and returns it; [`Slot::leave`] once the
    /// call has returned. Used through [`CallWatch::enter`], whose `on_deadline` judges the call
    /// when its store reaches its epoch deadline. A slot left entered (a panic) is cleared
    /// when it is dropped.
    #[inline]
    pub fn enter(&self, timeout: Duration) -> u64 {
        let s = &*self.shared;
        let at = now_ns().saturating_add(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
        s.slots[self.index].0.store(at, Ordering::SeqCst);
        // Written once per round at most, so callers on other cores rarely contend for the line.
        if !s.called.load(Ordering::Relaxed) {
            s.called.store(true, Ordering::Relaxed);
        }
        if s.parked.load(Ordering::SeqCst) {
            s.wakes.fetch_add(1, Ordering::Relaxed);
            if let Some(thread) = s.thread.get() {
                thread.unpark();
            }
        }
        at
    }

    /// The call has returned.
    #[inline]
    pub fn leave(&self) {
        self.shared.slots[self.index].0.store(0, Ordering::Release);
    }

    /// Moves the running call's deadline to `at` and has the watchdog look at the slots again,
    /// so that it wakes by then.
    fn extend(&self, at: u64) {
        let s = &*self.shared;
        s.slots[self.index].0.store(at, Ordering::SeqCst);
        s.rescan.store(true, Ordering::SeqCst);
        if let Some(thread) = s.thread.get() {
            thread.unpark();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.slots[self.index].0.store(0, Ordering::Release);
        if let Ok(mut free) = self.shared.free.lock() {
            free.push(self.index);
        }
    }
}

fn round(timeout: Duration) -> u64 {
    let round = (timeout + timeout / 2).max(MIN_ROUND);
    u64::try_from(round.as_nanos()).unwrap_or(u64::MAX)
}

/// What a look at the slots found.
struct Scan {
    running: bool,
    overdue: bool,
    /// The earliest deadline still ahead, if any.
    next: Option<u64>,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            slots: (0..SLOTS).map(|_| Deadline::default()).collect(),
            high: AtomicUsize::new(0),
            free: Mutex::new(Vec::new()),
            round_ns: AtomicU64::new(round(DEFAULT_CALL_TIMEOUT)),
            called: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            rescan: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            thread: OnceLock::new(),
            wakes: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
        }
    }

    fn scan(&self, now: u64) -> Scan {
        let mut scan = Scan {
            running: false,
            overdue: false,
            next: None,
        };
        let high = self.high.load(Ordering::Acquire).min(self.slots.len());
        for slot in &self.slots[..high] {
            let at = slot.0.load(Ordering::SeqCst);
            if at == 0 {
                continue;
            }
            scan.running = true;
            if at <= now {
                scan.overdue = true;
            } else if scan.next.is_none_or(|n| at < n) {
                scan.next = Some(at);
            }
        }
        scan
    }

    /// Whether the parked watchdog may go on sleeping: no guest code running, none called
    /// since the last round, not stopping.
    fn may_sleep(&self) -> bool {
        !self.scan(0).running && !self.called.load(Ordering::Relaxed) && !self.stop.load(Ordering::SeqCst)
    }
}

fn run(s: &Shared, engine: &Engine) {
    // The time of the last round, and the deadline of a call seen running then.
    let mut last = now_ns();
    let mut wake_for: Option<u64> = None;
    while !s.stop.load(Ordering::SeqCst) {
        let now = now_ns();
        let mut next = last.saturating_add(s.round_ns.load(Ordering::Relaxed));
        if let Some(at) = wake_for {
            next = next.min(at);
        }
        if now < next && !s.rescan.swap(false, Ordering::SeqCst) {
            // Not `sleep`: a shorter round or a moved deadline set meanwhile unparks it.
            std::thread::park_timeout(Duration::from_nanos(next - now));
            continue;
        }
        last = now;
        s.rounds.fetch_add(1, Ordering::Relaxed);
        let scan = s.scan(now);
        if scan.overdue {
            engine.increment_epoch();
            s.ticks.fetch_add(1, Ordering::Relaxed);
        }
        wake_for = scan.next;
        let called = s.called.swap(false, Ordering::Relaxed);
        if scan.running || called {
            continue;
        }
        s.parked.store(true, Ordering::SeqCst);
        // Woken by a call, make a round even if that call has already returned (`called`): had
        // the watchdog gone back to sleep, every short call after it would pay a wake-up. Only
        // a spurious return from `park` sleeps again.
        while s.may_sleep() {
            std::thread::park();
        }
        s.parked.store(false, Ordering::SeqCst);
        // A round at once: it sees the deadline of the call that woke it.
        wake_for = Some(0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A core module exporting `spin`, a function that loops forever, `nop`, and `count(n)`,
    /// which loops n times: `(module (func (export "spin") (loop (br 0))) (func (export "nop"))
    /// (func (export "count") (param i32) (loop (br_if 0 (local.tee 0 (i32.sub (local.get 0)
    /// (i32.const 1)))))))`.
    const GUEST: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x08, 0x02, 0x60, 0x00, 0x00, 0x60, 0x01, 0x7f, 0x00, // types: () -> (), (i32) -> ()
        0x03, 0x04, 0x03, 0x00, 0x00, 0x01, // functions: types 0, 0, 1
        0x07, 0x16, 0x03, // exports:
        0x04, b's', b'p', b'i', b'n', 0x00, 0x00, // "spin" = func 0
        0x03, b'n', b'o', b'p', 0x00, 0x01, // "nop" = func 1
        0x05, b'c', b'o', b'u', b'n', b't', 0x00, 0x02, // "count" = func 2
        0x0a, 0x1b, 0x03, // code:
        0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop { br 0 }
        0x02, 0x00, 0x0b, // nothing
        0x0e, 0x00, 0x03, 0x40, 0x20, 0x00, 0x41, 0x01, 0x6b, 0x22, 0x00, 0x0d, 0x00, 0x0b,
        0x0b, // loop { n -= 1; br_if n }
    ];

    /// A core module importing `host.pause` (the test's host function sleeps in it, as a thread
    /// the OS has descheduled) and exporting `pause_then_count(n)`, which pauses and then loops
    /// n times, and `pause_then_spin`, which pauses and then loops forever: `(module (import
    /// "host" "pause" (func)) (func (export "pause_then_count") (param i32) (call 0) (loop (br_if
    /// 0 (local.tee 0 (i32.sub (local.get 0) (i32.const 1)))))) (func (export "pause_then_spin")
    /// (call 0) (loop (br 0))))`.
    const PAUSING_GUEST: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x08, 0x02, 0x60, 0x00, 0x00, 0x60, 0x01, 0x7f, 0x00, // types: () -> (), (i32) -> ()
        0x02, 0x0e, 0x01, 0x04, b'h', b'o', b's', b't', 0x05, b'p', b'a', b'u', b's', b'e', 0x00,
        0x00, // import host.pause: func of type 0
        0x03, 0x03, 0x02, 0x01, 0x00, // functions: types 1, 0
        0x07, 0x26, 0x02, // exports:
        0x10, b'p', b'a', b'u', b's', b'e', b'_', b't', b'h', b'e', b'n', b'_', b'c', b'o', b'u', b'n', b't', 0x00,
        0x01, // "pause_then_count" = func 1
        0x0f, b'p', b'a', b'u', b's', b'e', b'_', b't', b'h', b'e', b'n', b'_', b's', b'p', b'i', b'n', 0x00,
        0x02, // "pause_then_spin" = func 2
        0x0a, 0x1c, 0x02, // code:
        0x10, 0x00, 0x10, 0x00, 0x03, 0x40, 0x20, 0x00, 0x41, 0x01, 0x6b, 0x22, 0x00, 0x0d, 0x00, 0x0b,
        0x0b, // call pause; loop { n -= 1; br_if n }
        0x09, 0x00, 0x10, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // call pause; loop { br 0 }
    ];

    type TestStore = wasmtime::Store<CallWatch>;

    /// A store as the plugin host sets one up: one epoch away from its deadline callback, which
    /// judges the running call by the store's [`CallWatch`].
    fn store(engine: &Engine, slot: Slot) -> TestStore {
        let mut store = wasmtime::Store::new(engine, CallWatch::new(slot));
        store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().on_deadline()));
        store.set_epoch_deadline(1);
        store
    }

    fn guest(engine: &Engine, slot: Slot) -> (TestStore, wasmtime::Instance) {
        let module = wasmtime::Module::new(engine, GUEST).unwrap();
        let mut store = store(engine, slot);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        (store, instance)
    }

    /// The pausing guest, its `host.pause` sleeping for `pause`.
    fn pausing_guest(engine: &Engine, slot: Slot, pause: Duration) -> (TestStore, wasmtime::Instance) {
        let module = wasmtime::Module::new(engine, PAUSING_GUEST).unwrap();
        let mut store = store(engine, slot);
        let sleep = wasmtime::Func::wrap(&mut store, move || std::thread::sleep(pause));
        let instance = wasmtime::Instance::new(&mut store, &module, &[sleep.into()]).unwrap();
        (store, instance)
    }

    /// Runs `f` on `store` as a call bounded by `timeout`.
    fn call<R>(store: &mut TestStore, timeout: Duration, f: impl FnOnce(&mut TestStore) -> R) -> R {
        store.set_epoch_deadline(1);
        store.data_mut().enter(timeout);
        let result = f(store);
        store.data().leave();
        result
    }

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).unwrap()
    }

    fn wait_until(what: &str, cond: impl FnMut() -> bool) {
        poll_until(what, Duration::from_millis(5), cond);
    }

    /// Polls `cond` every `pause` (a zero pause only yields the core) for at most 10 s.
    fn poll_until(what: &str, pause: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            if pause.is_zero() {
                std::thread::yield_now();
            } else {
                std::thread::sleep(pause);
            }
        }
    }

    /// Runs `f` on `store` as a call bounded by `timeout`, on another thread; returns how long
    /// it took to be interrupted, or fails if it is not within 10 s.
    fn interrupted(
        mut store: TestStore,
        timeout: Duration,
        f: impl FnOnce(&mut TestStore) -> wasmtime::Result<()> + Send + 'static,
    ) -> Duration {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let started = Instant::now();
            let result = call(&mut store, timeout, f);
            let trap = result.unwrap_err().downcast::<wasmtime::Trap>().unwrap();
            let _ = tx.send((trap, started.elapsed()));
        });
        let (trap, took) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a looping guest was not interrupted within 10 s");
        assert_eq!(trap, wasmtime::Trap::Interrupt);
        took
    }

    /// Runs `spin` with `timeout` on another thread; returns how long it took to be
    /// interrupted, or fails if it is not within 10 s.
    fn spin_is_interrupted(engine: &Engine, ticker: &Ticker, timeout: Duration) -> Duration {
        let (mut store, instance) = guest(engine, ticker.slot().unwrap());
        let spin = instance.get_typed_func::<(), ()>(&mut store, "spin").unwrap();
        interrupted(store, timeout, move |store| spin.call(store, ()))
    }

    #[test]
    fn parks_when_idle_and_a_call_wakes_it_in_time() {
        let engine = engine();
        let ticker = Ticker::start(engine.clone()).unwrap();
        wait_until("the idle watchdog parks", || ticker.is_parked());
        // Parked means parked: nothing advances the epoch, so a store one epoch from its
        // deadline (a call past it would enter the callback, and the deadline 0 would stop it)
        // has not reached it twenty rounds later.
        let (mut store, instance) = guest(&engine, ticker.slot().unwrap());
        std::thread::sleep(MIN_ROUND * 20);
        let nop = instance.get_typed_func::<(), ()>(&mut store, "nop").unwrap();
        nop.call(&mut store, ()).expect("the epoch advanced while parked");
        assert!(ticker.is_parked());

        // Never before its deadline, and not much after it (the bound is generous for a
        // loaded machine; the loop would otherwise run forever).
        let timeout = Duration::from_millis(30);
        let took = spin_is_interrupted(&engine, &ticker, timeout);
        assert!(took >= timeout && took < Duration::from_secs(2), "{took:?}");
        // It parks again once calls stop, and the next loop is still stopped.
        wait_until("the watchdog parks again", || ticker.is_parked());
        let took = spin_is_interrupted(&engine, &ticker, timeout);
        assert!(took >= timeout, "{took:?}");
    }

    #[test]
    fn an_overdue_call_stops_only_itself() {
        let engine = engine();
        let ticker = Arc::new(Ticker::start(engine.clone()).unwrap());
        let (mut store, instance) = guest(&engine, ticker.slot().unwrap());
        let count = instance.get_typed_func::<i32, ()>(&mut store, "count").unwrap();
        // Short calls back to back, each with a long deadline, while a looping call on another
        // thread is stopped: the epoch advances under some of them, and they go on. Rounds
        // repeat until that happened at least once (almost always in the first).
        let mut spanned = 0;
        for _ in 0..20 {
            let (e, t) = (engine.clone(), ticker.clone());
            let looping = std::thread::spawn(move || spin_is_interrupted(&e, &t, Duration::from_millis(20)));
            while !looping.is_finished() {
                let ticks = ticker.ticks();
                call(&mut store, Duration::from_secs(10), |store| count.call(store, 20_000))
                    .expect("a call within its deadline was stopped");
                if ticker.ticks() != ticks {
                    spanned += 1;
                }
            }
            looping.join().unwrap();
            if spanned > 0 {
                break;
            }
        }
        assert!(spanned > 0, "the epoch never advanced during a short call");
    }

    #[test]
    fn a_long_call_keeps_it_awake() {
        let ticker = Ticker::start(engine()).unwrap();
        wait_until("the idle watchdog parks", || ticker.is_parked());
        let slot = ticker.slot().unwrap();
        slot.enter(Duration::from_secs(60));
        wait_until("a call wakes it", || !ticker.is_parked());
        // No call starts for five rounds, but one is running: it stays up.
        let rounds = ticker.rounds();
        while ticker.rounds() < rounds + 5 {
            assert!(!ticker.is_parked(), "parked while a call was running");
            std::thread::sleep(MIN_ROUND);
        }
        slot.leave();
        wait_until("the watchdog parks after the call", || ticker.is_parked());
    }

    #[test]
    fn slots_are_reused_and_bounded() {
        let ticker = Ticker::start(engine()).unwrap();
        let a = ticker.slot().unwrap();
        let b = ticker.slot().unwrap();
        assert_ne!(a.index, b.index);
        let index = a.index;
        drop(a);
        assert_eq!(ticker.slot().unwrap().index, index);
        let held: Vec<Slot> = (1..SLOTS).map(|_| ticker.slot().unwrap()).collect();
        assert!(ticker.slot().is_err());
        drop(held);
        assert!(ticker.slot().is_ok());
    }

    #[test]
    fn a_call_that_has_returned_still_keeps_the_watchdog_up() {
        // No watchdog thread: this checks the parked watchdog's decision once woken, which the
        // real thread would make at a moment no test can choose.
        let shared = Shared::new();
        let _ = shared.thread.set(std::thread::current());
        let ticker = Ticker {
            shared: Arc::new(shared),
        };
        let s = &*ticker.shared;
        s.parked.store(true, Ordering::SeqCst);
        assert!(s.may_sleep());
        let slot = ticker.slot().unwrap();
        slot.enter(Duration::from_secs(1));
        slot.leave();
        assert_eq!((s.scan(now_ns()).running, ticker.wakes()), (false, 1));
        assert!(
            !s.may_sleep(),
            "woken by a call that is over, the watchdog must not sleep again"
        );
    }

    #[test]
    fn a_wake_buys_a_round_for_the_calls_after_it() {
        let ticker = Ticker::start(engine()).unwrap();
        let slot = ticker.slot().unwrap();
        // Once woken, the watchdog stays up for the calls that follow within a round, so they
        // pay no wake-up of their own. Whether a call finds it up also depends on the
        // scheduler (a test thread preempted for a round lets it park, rightly), so this
        // counts rounds: with the watchdog going back to sleep after each wake-up, every call
        // of every round would pay one.
        let rounds = 20;
        let mut cheap = 0;
        for _ in 0..rounds {
            wait_until("the idle watchdog parks", || ticker.is_parked());
            let before = ticker.wakes();
            let seen = ticker.rounds();
            slot.enter(Duration::from_secs(1));
            slot.leave();
            // The woken thread needs a core before it is up; its first round says it is.
            // Polled without sleeping: it parks again a quiet round later.
            poll_until("a call wakes the watchdog", Duration::ZERO, || ticker.rounds() != seen);
            // Nine more short calls, a tenth of a round apart: they find it up.
            for _ in 0..9 {
                std::thread::sleep(Duration::from_nanos(round(DEFAULT_CALL_TIMEOUT) / 10));
                slot.enter(Duration::from_secs(1));
                slot.leave();
            }
            let wakes = ticker.wakes() - before;
            assert!(wakes >= 1, "a call found the parked watchdog and did not wake it");
            if wakes <= 2 {
                cheap += 1;
            }
        }
        assert!(
            cheap * 4 >= rounds,
            "only {cheap} of {rounds} rounds of 10 calls paid at most 2 wake-ups"
        );
    }

    #[test]
    fn a_call_descheduled_past_its_deadline_finishes() {
        // The call sleeps in a host function (as a thread the OS took off its core) for three
        // times its timeout, the watchdog advancing the epoch meanwhile, then loops a little:
        // it returns. Fails when the callback stops every call found past its deadline.
        let engine = engine();
        let ticker = Ticker::start(engine.clone()).unwrap();
        let timeout = Duration::from_millis(20);
        let (mut store, instance) = pausing_guest(&engine, ticker.slot().unwrap(), timeout * 3);
        let count = instance
            .get_typed_func::<i32, ()>(&mut store, "pause_then_count")
            .unwrap();
        let ticks = ticker.ticks();
        call(&mut store, timeout, |store| count.call(store, 1_000))
            .expect("a call descheduled past its deadline was stopped");
        assert!(ticker.ticks() > ticks, "the epoch did not advance during the pause");
    }

    #[test]
    fn a_looping_call_descheduled_past_its_deadline_is_still_stopped() {
        let engine = engine();
        let ticker = Ticker::start(engine.clone()).unwrap();
        let timeout = Duration::from_millis(20);
        let (mut store, instance) = pausing_guest(&engine, ticker.slot().unwrap(), timeout * 3);
        let spin = instance
            .get_typed_func::<(), ()>(&mut store, "pause_then_spin")
            .unwrap();
        let took = interrupted(store, timeout, move |store| spin.call(store, ()));
        // The pause, then at least a quarter timeout of looping.
        assert!(took >= timeout * 3 + timeout / 4, "{took:?}");
    }

    #[test]
    fn an_overdue_call_is_stopped_after_a_quarter_timeout_of_its_own_cpu_time() {
        // The callback's judgement alone, called directly as wasmtime would (the watchdog's
        // thread runs, but no guest code does).
        let ticker = Ticker::start(engine()).unwrap();
        let mut watch = CallWatch::new(ticker.slot().unwrap());
        let timeout = Duration::from_millis(40);
        watch.enter(timeout);
        assert!(
            matches!(watch.on_deadline(), UpdateDeadline::Continue(1)),
            "stopped early"
        );
        // Past the deadline without using the CPU (asleep): the call goes on, with a new
        // deadline a quarter timeout away.
        std::thread::sleep(timeout + Duration::from_millis(5));
        let found = now_ns();
        assert!(matches!(watch.on_deadline(), UpdateDeadline::Continue(1)));
        assert!(watch.deadline >= found + 9_000_000 && watch.deadline <= now_ns() + 10_000_000);
        // Asleep again: still no CPU time used since it was found overdue.
        std::thread::sleep(timeout / 2);
        assert!(matches!(watch.on_deadline(), UpdateDeadline::Continue(1)));
        // Busy for a quarter timeout of its own CPU time: stopped.
        let cpu = thread_cpu_ns().unwrap();
        while thread_cpu_ns().unwrap() < cpu + 10_000_000 {
            std::hint::spin_loop();
        }
        assert!(matches!(watch.on_deadline(), UpdateDeadline::Interrupt));
        watch.leave();
    }
}
