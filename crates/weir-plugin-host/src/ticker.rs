//! The epoch ticker: advances the engine's epoch every [`TICK`] while plugin code may run, which
//! is what turns `call_timeout` into an interrupt (a guest's deadline is a number of ticks).
//!
//! A quiet gateway should not wake a thousand times a second for nothing, so after
//! [`PARK_AFTER`] ticks in which no plugin code started or ran, the thread parks, and the next
//! entry into guest code ([`Ticker::enter`]) wakes it first. Under load the ticker never parks,
//! so a call pays two atomic additions and two loads (one store a tick at most), and no system
//! call.
//!
//! Guest code must never run with the ticker asleep, or a looping plugin would never be
//! stopped. The handshake is Dekker's, over sequentially consistent atomics: a caller adds to
//! `running` and then reads `parked`; the ticker sets `parked` and then reads `running`. One of
//! the two sees the other's write, so either the caller wakes the ticker or the ticker stays up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

/// How often the epoch advances: the resolution of `call_timeout`.
pub const TICK: Duration = Duration::from_millis(1);

/// Ticks without any plugin call before the ticker sleeps: 2 ms. A tick costs about as much as
/// a wake-up (each is a timer and a context switch; ~20 µs of CPU apiece on the benchmark VM),
/// so the ticker should sleep through any gap it can: steady traffic keeps it up, bursts let it
/// sleep between them. At compare.sh's fixed rate (bursts every 10 ms) this halved its cost
/// per request against a 10 ms wait (benches/load/threads.sh: 4.00 → 1.75 µs).
pub const PARK_AFTER: u32 = 2;

#[derive(Default)]
struct Shared {
    /// Guest calls running now, across all threads.
    running: AtomicUsize,
    /// Some call started since the last tick (cleared by the ticker).
    called: AtomicBool,
    /// The ticker is asleep or about to be: entering guest code must wake it.
    parked: AtomicBool,
    stop: AtomicBool,
    /// Calls that had to wake the ticker.
    wakes: AtomicU64,
    /// Epoch increments so far.
    ticks: AtomicU64,
}

/// Owns the ticker thread; dropping it stops the thread.
pub struct Ticker {
    shared: Arc<Shared>,
    thread: Thread,
}

/// Held while guest code may run; see [`Ticker::enter`].
pub struct Running<'a>(&'a Shared);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticker {
    pub fn start(engine: Engine) -> Result<Ticker, String> {
        let shared = Arc::new(Shared::default());
        let ticking = shared.clone();
        let handle = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || run(&ticking, &engine))
            .map_err(|e| format!("cannot start the epoch ticker: {e}"))?;
        Ok(Ticker {
            shared,
            thread: handle.thread().clone(),
        })
    }

    /// Call before running guest code (instantiation included) and keep the guard until it has
    /// returned: the epoch is then advancing for as long as the guard lives.
    #[inline]
    pub fn enter(&self) -> Running<'_> {
        let s = &*self.shared;
        s.running.fetch_add(1, Ordering::SeqCst);
        // Written once per tick at most, so callers on other cores rarely contend for the line.
        if !s.called.load(Ordering::Relaxed) {
            s.called.store(true, Ordering::Relaxed);
        }
        if s.parked.load(Ordering::SeqCst) {
            s.wakes.fetch_add(1, Ordering::Relaxed);
            self.thread.unpark();
        }
        Running(s)
    }

    /// Whether the ticker is asleep (or committed to sleeping): for tests and diagnostics.
    pub fn is_parked(&self) -> bool {
        self.shared.parked.load(Ordering::SeqCst)
    }

    /// How many calls found the ticker asleep and woke it.
    pub fn wakes(&self) -> u64 {
        self.shared.wakes.load(Ordering::Relaxed)
    }

    /// How many times the epoch has advanced.
    pub fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

impl Shared {
    /// Whether the parked ticker may go on sleeping: no guest code running, none called since
    /// the last tick, not stopping.
    fn may_sleep(&self) -> bool {
        self.running.load(Ordering::SeqCst) == 0
            && !self.called.load(Ordering::Relaxed)
            && !self.stop.load(Ordering::SeqCst)
    }
}

fn run(s: &Shared, engine: &Engine) {
    let mut quiet = 0u32;
    while !s.stop.load(Ordering::SeqCst) {
        std::thread::sleep(TICK);
        engine.increment_epoch();
        s.ticks.fetch_add(1, Ordering::Relaxed);
        let called = s.called.swap(false, Ordering::Relaxed);
        if called || s.running.load(Ordering::SeqCst) > 0 {
            quiet = 0;
            continue;
        }
        quiet += 1;
        if quiet < PARK_AFTER {
            continue;
        }
        s.parked.store(true, Ordering::SeqCst);
        // Woken by a call, tick again even if that call has already returned (`called`): had
        // the ticker gone back to sleep, every short call after it would pay a wake-up. Only a
        // spurious return from `park` sleeps again.
        while s.may_sleep() {
            std::thread::park();
        }
        s.parked.store(false, Ordering::SeqCst);
        quiet = 0;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::time::Instant;

    /// A core module exporting `spin`, a function that loops forever, and `nop`:
    /// `(module (func (export "spin") (loop (br 0))) (func (export "nop")))`.
    const GUEST: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
        0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // types: () -> ()
        0x03, 0x03, 0x02, 0x00, 0x00, // functions: two of type 0
        0x07, 0x0e, 0x02, // exports:
        0x04, b's', b'p', b'i', b'n', 0x00, 0x00, // "spin" = func 0
        0x03, b'n', b'o', b'p', 0x00, 0x01, // "nop" = func 1
        0x0a, 0x0c, 0x02, // code:
        0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // loop { br 0 }
        0x02, 0x00, 0x0b, // nothing
    ];

    /// A store with the guest instantiated, trapping `ticks` ticks from now.
    fn guest(engine: &Engine, ticks: u64) -> (wasmtime::Store<()>, wasmtime::Instance) {
        let module = wasmtime::Module::new(engine, GUEST).unwrap();
        let mut store = wasmtime::Store::new(engine, ());
        store.epoch_deadline_trap();
        store.set_epoch_deadline(ticks);
        let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
        (store, instance)
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

    /// Runs `spin` under the ticker with a 3-tick deadline on another thread; returns how long
    /// it took to be interrupted, or fails if it is not within 10 s.
    fn spin_is_interrupted(engine: &Engine, ticker: &Arc<Ticker>) -> Duration {
        let (engine, ticker) = (engine.clone(), ticker.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut store, instance) = guest(&engine, 3);
            let spin = instance.get_typed_func::<(), ()>(&mut store, "spin").unwrap();
            let started = Instant::now();
            let result = {
                let _running = ticker.enter();
                spin.call(&mut store, ())
            };
            let trap = result.unwrap_err().downcast::<wasmtime::Trap>().unwrap();
            let _ = tx.send((trap, started.elapsed()));
        });
        let (trap, took) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a looping guest was not interrupted within 10 s");
        assert_eq!(trap, wasmtime::Trap::Interrupt);
        took
    }

    #[test]
    fn parks_when_idle_and_a_call_wakes_it_in_time() {
        let engine = engine();
        let ticker = Arc::new(Ticker::start(engine.clone()).unwrap());
        wait_until("the idle ticker parks", || ticker.is_parked());
        // Parked means parked: the epoch stands still, so a deadline one tick away has not
        // passed twenty ticks later (a call past its deadline traps on entry).
        let (mut store, instance) = guest(&engine, 1);
        std::thread::sleep(TICK * 20);
        let nop = instance.get_typed_func::<(), ()>(&mut store, "nop").unwrap();
        nop.call(&mut store, ()).expect("the epoch advanced while parked");
        assert!(ticker.is_parked());

        let took = spin_is_interrupted(&engine, &ticker);
        assert!(took < Duration::from_secs(2), "{took:?}");
        // It parks again once calls stop, and the next loop is still stopped.
        wait_until("the ticker parks again", || ticker.is_parked());
        spin_is_interrupted(&engine, &ticker);
    }

    #[test]
    fn a_long_call_keeps_it_ticking() {
        let engine = engine();
        let ticker = Ticker::start(engine).unwrap();
        wait_until("the idle ticker parks", || ticker.is_parked());
        let running = ticker.enter();
        wait_until("a call wakes it", || !ticker.is_parked());
        // No call starts for five times PARK_AFTER ticks, but one is running: it stays up.
        let until = Instant::now() + TICK * (5 * PARK_AFTER);
        while Instant::now() < until {
            assert!(!ticker.is_parked(), "parked while a call was running");
            std::thread::sleep(TICK);
        }
        drop(running);
        wait_until("the ticker parks after the call", || ticker.is_parked());
    }

    #[test]
    fn a_call_that_has_returned_still_keeps_the_ticker_up() {
        // No ticker thread: this checks the parked ticker's decision once woken, which the
        // real thread would make at a moment no test can choose.
        let ticker = Ticker {
            shared: Arc::new(Shared::default()),
            thread: std::thread::current(),
        };
        let s = &*ticker.shared;
        s.parked.store(true, Ordering::SeqCst);
        assert!(s.may_sleep());
        drop(ticker.enter());
        assert_eq!((s.running.load(Ordering::SeqCst), ticker.wakes()), (0, 1));
        assert!(
            !s.may_sleep(),
            "woken by a call that is over, the ticker must not sleep again"
        );
    }

    #[test]
    fn a_wake_buys_ticks_for_the_calls_after_it() {
        let ticker = Ticker::start(engine()).unwrap();
        // The behaviour behind the decision checked above: once woken, the ticker stays up for
        // the calls that follow, so they pay no wake-up of their own. Whether a call finds it
        // up also depends on the scheduler (a test thread preempted for two ticks lets it park,
        // rightly), so this counts rounds: with the ticker going back to sleep after each
        // wake-up, every call of every round would pay one.
        let rounds = 20;
        let mut cheap = 0;
        for _ in 0..rounds {
            wait_until("the idle ticker parks", || ticker.is_parked());
            let before = ticker.wakes();
            let ticks = ticker.ticks();
            drop(ticker.enter());
            // The woken thread needs a core before it is up; a tick says it is. Polled without
            // sleeping: it parks again two quiet ticks later.
            poll_until("a call wakes the ticker", Duration::ZERO, || ticker.ticks() != ticks);
            // Nine more short calls, a tenth of a tick apart: they find it up.
            for _ in 0..9 {
                std::thread::sleep(TICK / 10);
                drop(ticker.enter());
            }
            let wakes = ticker.wakes() - before;
            assert!(wakes >= 1, "a call found the parked ticker and did not wake it");
            if wakes <= 2 {
                cheap += 1;
            }
        }
        assert!(
            cheap * 4 >= rounds,
            "only {cheap} of {rounds} rounds of 10 calls paid at most 2 wake-ups"
        );
    }
}
