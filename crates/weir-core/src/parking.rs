//! Parked connections: a plain HTTP/1 keep-alive connection that has waited [`PARK_AFTER`] for
//! its next request stops being a task. Its socket leaves tokio's reactor for an epoll set of
//! the runtime's own, and what it needs to resume (a ~150-byte [`Parked`] record) waits in a
//! slot. When the client sends bytes (or closes), the connection is handed back to tokio and
//! gets a task again; when its idle timeout passes first, the record is dropped, which closes it.
//!
//! Why: a waiting task costs its cell (768 bytes, 128-byte aligned), tokio's per-socket state
//! and the allocator's overhead, ~1.5 KB per connection, 2.6 x nginx's. A parked one costs its
//! record. Why only after a while: parking and resuming cost four `epoll_ctl` calls and a task
//! spawn (a few µs), nothing next to a second of silence but a real cost for a connection busy
//! with a request every few milliseconds.
//!
//! One parker per runtime (found by the runtime's id), run by a task of that runtime, so a
//! resumed connection registers with the reactor it left. A stopping listener wakes every
//! parker ([`listener_stopped`]): its parked connections resume, and the HTTP/1 server's
//! shutdown rules (one more request within the grace period, answered with
//! `Connection: close`) apply to them as to any other.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustix::event::epoll;
use tokio::io::unix::AsyncFd;
use tokio::runtime::{Handle, Id};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::listener::{Active, Conn};

/// How long a keep-alive connection waits for its next request before it is parked.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// Events taken from the epoll set per `epoll_wait`.
const EVENTS: usize = 256;

/// Parked connections after which the memory their tasks freed is handed back to the system
/// (at most once per [`TRIM_EVERY`]); fewer are handed back once parking has been quiet for
/// that long. See [`release_freed_memory`].
const TRIM_BATCH: usize = 1024;
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// What a parked connection needs to be served again.
pub(crate) struct Parked {
    pub stream: std::net::TcpStream,
    pub conn: Conn,
    pub active: Active,
    /// Keeps the gateway's shutdown waiting for this connection, as its task did.
    pub token: TaskTrackerToken,
    /// When the idle timeout closes it.
    pub idle_until: Instant,
}

struct Slot {
    /// Bumped each time the slot is emptied: a deadline queued for an earlier tenant is stale.
    generation: u32,
    parked: Option<Parked>,
}

#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// (idle deadline, slot, slot generation), earliest first; stale entries are skipped.
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    /// Connections parked since the last trim, and when the latest was.
    since_trim: usize,
    last_park: Option<Instant>,
}

impl Slots {
    fn get(&self, index: u32) -> Option<&Parked> {
        self.slots.get(index as usize)?.parked.as_ref()
    }

    fn insert(&mut self, p: Parked) -> u32 {
        let deadline = p.idle_until;
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    parked: None,
                });
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.parked = Some(p);
            self.deadlines.push(Reverse((deadline, index, slot.generation)));
        }
        self.since_trim += 1;
        self.last_park = Some(Instant::now());
        index
    }

    fn take(&mut self, index: u32) -> Option<Parked> {
        let slot = self.slots.get_mut(index as usize)?;
        let p = slot.parked.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index);
        Some(p)
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, index, generation))) = self.deadlines.peek().copied() {
            match self.slots.get(index as usize) {
                Some(s) if s.generation == generation && s.parked.is_some() => return Some(at),
                _ => {
                    self.deadlines.pop();
                }
            }
        }
        None
    }

    /// Takes the connections whose idle timeout has passed.
    fn expired(&mut self, now: Instant) -> Vec<Parked> {
        let mut out = Vec::new();
        // `next_deadline` leaves a live entry on top: the one popped here.
        while self.next_deadline().is_some_and(|at| at <= now) {
            if let Some(Reverse((_, index, _))) = self.deadlines.pop() {
                out.extend(self.take(index));
            }
        }
        out
    }
}

struct Parker {
    epoll: AsyncFd<OwnedFd>,
    slots: Mutex<Slots>,
    /// Wakes the parker's task when a deadline earlier than the one it sleeps to arrives.
    earlier: Notify,
}

/// Parks a plain HTTP/1 connection. When it cannot be watched it is served again at once.
pub(crate) fn park(p: Parked) {
    let Some(parker) = parker() else {
        crate::listener::resume(p);
        return;
    };
    let deadline = p.idle_until;
    let wake;
    let unwatched = {
        let Ok(mut slots) = parker.slots.lock() else {
            crate::listener::resume(p);
            return;
        };
        let earlier_deadline = slots.next_deadline().is_none_or(|d| deadline < d);
        let index = slots.insert(p);
        // The parker's task sets its trim timer from these two moments.
        wake = earlier_deadline || slots.since_trim == 1 || slots.since_trim == TRIM_BATCH;
        // Added under the lock, after the slot is filled: the parker's task, which takes the
        // slot when the event comes, cannot see the event first. Level-triggered and one-shot:
        // bytes that arrived before this call are reported at once, and a connection is
        // reported once, however much the client sends before it resumes.
        let flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP | epoll::EventFlags::ONESHOT;
        let added = slots.get(index).is_some_and(|p| {
            epoll::add(
                parker.epoll.get_ref(),
                &p.stream,
                epoll::EventData::new_u64(u64::from(index)),
                flags,
            )
            .is_ok()
        });
        if added { None } else { slots.take(index) }
    };
    if let Some(p) = unwatched {
        crate::listener::resume(p);
        return;
    }
    if wake {
        parker.earlier.notify_one();
    }
}

/// Tells every parker that a listener stopped: its parked connections resume, to be closed by
/// the server's shutdown rules.
pub(crate) fn listener_stopped() {
    stops().send_modify(|n| *n = n.wrapping_add(1));
}

fn stops() -> &'static watch::Sender<u64> {
    static STOPS: OnceLock<watch::Sender<u64>> = OnceLock::new();
    STOPS.get_or_init(|| watch::Sender::new(0))
}

/// The current runtime's parker, started on first use.
fn parker() -> Option<Arc<Parker>> {
    let handle = Handle::try_current().ok()?;
    let id = handle.id();
    let mut all = parkers().lock().ok()?;
    if let Some(p) = all.get(&id) {
        return Some(p.clone());
    }
    let fd = epoll::create(epoll::CreateFlags::CLOEXEC).ok()?;
    // `with_interest` is deprecated for descriptors that could be closed while registered
    // (tokio#8587); this one is an `OwnedFd` the `AsyncFd` owns and never gives up.
    #[allow(deprecated)]
    let epoll_fd = AsyncFd::with_interest(fd, tokio::io::Interest::READABLE).ok()?;
    let parker = Arc::new(Parker {
        epoll: epoll_fd,
        slots: Mutex::new(Slots::default()),
        earlier: Notify::new(),
    });
    all.insert(id, parker.clone());
    let unregister = Unregister {
        id,
        parker: parker.clone(),
    };
    handle.spawn(run(unregister));
    Some(parker)
}

fn parkers() -> &'static Mutex<HashMap<Id, Arc<Parker>>> {
    static PARKERS: OnceLock<Mutex<HashMap<Id, Arc<Parker>>>> = OnceLock::new();
    PARKERS.get_or_init(Default::default)
}

/// The parker's task: resumes connections the client woke, closes those whose idle timeout
/// passed, resumes those of a stopped listener.
async fn run(unregister: Unregister) {
    let parker = unregister.parker.clone();
    let mut stops = stops().subscribe();
    stops.mark_unchanged();
    let mut woken: Vec<u32> = Vec::new();
    let mut last_trim = Instant::now();
    loop {
        let (next, trim_due) = parker
            .slots
            .lock()
            .map(|mut s| (s.next_deadline(), trim_at(&s, last_trim)))
            .unwrap_or((None, None));
        let far = Instant::now() + Duration::from_secs(3600);
        let wake_at = match (next, trim_due) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(far),
        };
        tokio::select! {
            ready = parker.epoll.readable() => {
                let Ok(mut guard) = ready else { return };
                if drain(&parker.epoll, &mut woken) {
                    guard.clear_ready();
                }
                for index in woken.drain(..) {
                    let taken = parker.slots.lock().ok().and_then(|mut s| s.take(index));
                    if let Some(p) = taken {
                        unpark(&parker, p);
                    }
                }
            }
            () = tokio::time::sleep_until(wake_at) => {
                let now = Instant::now();
                let (expired, trim) = match parker.slots.lock() {
                    Ok(mut s) => {
                        let trim = trim_at(&s, last_trim).is_some_and(|t| t <= now);
                        if trim {
                            s.since_trim = 0;
                        }
                        (s.expired(now), trim)
                    }
                    Err(_) => (Vec::new(), false),
                };
                // Dropped: closed, and out of the epoll set with their descriptors.
                drop(expired);
                if trim {
                    last_trim = now;
                    tokio::task::spawn_blocking(release_freed_memory);
                }
            }
            () = parker.earlier.notified() => {}
            changed = stops.changed() => {
                if changed.is_err() {
                    return;
                }
                let stopped: Vec<Parked> = match parker.slots.lock() {
                    Ok(mut s) => {
                        let which: Vec<u32> = s
                            .slots
                            .iter()
                            .enumerate()
                            .filter(|(_, slot)| slot.parked.as_ref().is_some_and(|p| p.conn.stop.is_cancelled()))
                            .filter_map(|(i, _)| u32::try_from(i).ok())
                            .collect();
                        which.into_iter().filter_map(|i| s.take(i)).collect()
                    }
                    Err(_) => Vec::new(),
                };
                for p in stopped {
                    unpark(&parker, p);
                }
            }
        }
    }
}

/// When to hand freed memory back: a full batch parked (no sooner than [`TRIM_EVERY`] after
/// the last trim), or some parked and none for [`TRIM_EVERY`].
fn trim_at(s: &Slots, last_trim: Instant) -> Option<Instant> {
    if s.since_trim >= TRIM_BATCH {
        Some(last_trim + TRIM_EVERY)
    } else if s.since_trim > 0 {
        s.last_park.map(|t| t + TRIM_EVERY)
    } else {
        None
    }
}

/// Hands the heap's free pages back to the system (glibc's `malloc_trim`). Parking a burst of
/// connections frees their tasks' memory (~1.4 KB each) in the middle of the heap, where glibc
/// keeps it: without this, 10,000 parked connections leave weir's RSS where 10,000 tasks put
/// it. HAProxy calls `malloc_trim` when it releases its pools, for the same reason. Run on a
/// blocking thread: it walks the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_freed_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: `malloc_trim` takes no pointers and is thread-safe (it locks each arena).
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

/// The slots of the connections the epoll set reports; whether it reported all it had.
fn drain(epoll_fd: &AsyncFd<OwnedFd>, woken: &mut Vec<u32>) -> bool {
    let mut events: Vec<epoll::Event> = Vec::with_capacity(EVENTS);
    let no_wait = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    match epoll::wait(
        epoll_fd.get_ref(),
        rustix::buffer::spare_capacity(&mut events),
        Some(&no_wait),
    ) {
        Ok(_) => {
            woken.extend(events.iter().filter_map(|e| u32::try_from({ e.data }.u64()).ok()));
            events.len() < EVENTS
        }
        Err(rustix::io::Errno::INTR) => false,
        Err(e) => {
            tracing::warn!(error = %e, "epoll_wait on parked connections failed");
            true
        }
    }
}

/// Takes a connection out of the epoll set and serves it again.
fn unpark(parker: &Parker, p: Parked) {
    let _ = epoll::delete(parker.epoll.get_ref(), &p.stream);
    crate::listener::resume(p);
}

/// Removes a parker whose task ended (its runtime shut down) and closes what it held.
struct Unregister {
    id: Id,
    parker: Arc<Parker>,
}

impl Drop for Unregister {
    fn drop(&mut self) {
        if let Ok(mut all) = parkers().lock() {
            all.remove(&self.id);
        }
        // Closes what it held (the runtime is going away).
        let held = self
            .parker
            .slots
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        drop(held);
    }
}

/// Parked connections by listener, for `/metrics` (counted when scraped: nothing to keep in
/// step on the connections' paths).
pub fn parked_by_listener() -> HashMap<Arc<str>, i64> {
    let mut out: HashMap<Arc<str>, i64> = HashMap::new();
    let Ok(all) = parkers().lock() else { return out };
    for parker in all.values() {
        let Ok(slots) = parker.slots.lock() else { continue };
        for p in slots.slots.iter().filter_map(|s| s.parked.as_ref()) {
            *out.entry(p.conn.info.listener.clone()).or_default() += 1;
        }
    }
    out
}
