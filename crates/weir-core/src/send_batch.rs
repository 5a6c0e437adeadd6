//! Writes sent in batches: the request heads to HTTP/1.1 upstreams and the responses to plain-TCP
//! HTTP/1 clients that a worker makes ready in one pass over its run queue go out in one
//! `io_uring_enter`, not in one `send` each.
//!
//! Why: where the upstreams share a core with the proxy (a sidecar, a small host, the load
//! benchmark's layout A), each `send` wakes an upstream, and the scheduler hands it the core
//! at once (EEVDF: the proxy has used more than its share of the core, the sleeper less): it
//! serves that one request, sleeps, and the proxy gets the core back. Two context switches per
//! request, ~30% of the proxy's CPU in the benchmark. Sent in one system call, the whole batch
//! is in the upstreams' sockets before the kernel switches (on return to user space, in a
//! kernel that does not preempt itself), and each upstream then serves all of its requests in
//! one wake-up. Elsewhere it still saves one system call per request.
//!
//! How: [`send`] copies the bytes into the thread's batch and yields (tokio defers the task
//! until the worker has been through its run queue and polled the I/O driver); the first of
//! the batch's tasks to run again submits every queued send and waits for their completions,
//! which come at once: each send is `MSG_DONTWAIT`, so a full socket answers `EAGAIN` rather
//! than waiting. What a send could not take the caller writes the usual way.
//!
//! Each worker thread has its own batch, made the first time one of its tasks sends. A
//! current-thread runtime's tasks never leave their thread: its batch is the thread's alone,
//! with no lock. On a multi-thread runtime a yielded task may be stolen by another worker: its
//! ticket holds the batch it is in, behind a mutex that only such a move ever contends, and
//! flushes that batch from wherever it runs. Off where the ring cannot be set up (an old
//! kernel, a seccomp profile that refuses io_uring) and with `WEIR_SEND_BATCH=0`.

#![allow(unsafe_code)] // one: pushing a send's entry onto the ring (the SAFETY note in `flush`)

use std::cell::{OnceCell, RefCell};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Sends one batch holds at most; a request finding the batch full is sent directly.
const RING_ENTRIES: u32 = 256;
/// Longest data a batched send takes (a request head, with a small body): longer ones go
/// directly, as the batch's buffer is copied into.
pub const MAX_LEN: usize = 4096;

/// Whether sends are batched at all: set by [`enable`], for every thread of the process.
static WANTED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// This thread's batch, made on first use once batching is wanted; `None` for good when
    /// its ring could not be set up.
    static BATCH: OnceCell<Option<Home>> = const { OnceCell::new() };
}

/// Where a thread keeps its batch.
#[allow(clippy::large_enum_variant)] // one per thread, in its locals: boxing buys nothing
enum Home {
    /// A current-thread runtime's: only this thread's tasks, which never leave it, use it.
    Own(RefCell<Batch>),
    /// A multi-thread runtime worker's (or any other thread's): shared with the tickets, which
    /// may be finished or dropped on another thread.
    Shared(Arc<Mutex<Batch>>),
}

/// The batch a ticket's send is in.
enum Place {
    /// The batch of the thread the ticket is used on (it was queued there, and a
    /// current-thread runtime's task stays there).
    Own,
    Shared(Arc<Mutex<Batch>>),
}

/// Batches sent, over all threads (`weir_send_batches_total`).
pub static BATCHES: AtomicU64 = AtomicU64::new(0);
/// Sends that went in them (`weir_batched_sends_total`): over `BATCHES`, the mean batch.
pub static SENDS: AtomicU64 = AtomicU64::new(0);

/// Turns batching on for the process, unless `WEIR_SEND_BATCH=0`, and sets up the calling
/// thread's batch; false when that could not be done (the reason is logged once: other
/// threads then try their own, and send one by one where that fails too).
pub fn enable() -> bool {
    if std::env::var_os("WEIR_SEND_BATCH").is_some_and(|v| v == "0") {
        return false;
    }
    WANTED.store(true, Ordering::Relaxed);
    this_thread().is_some()
}

/// Where this thread's batch is, set up on first use; `None` while batching is not wanted.
fn this_thread() -> Option<Place> {
    if !WANTED.load(Ordering::Relaxed) {
        return None;
    }
    BATCH
        .try_with(|cell| {
            let home = cell.get_or_init(|| match Batch::new() {
                Ok(batch) => Some(
                    if tokio::runtime::Handle::try_current()
                        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
                    {
                        Home::Own(RefCell::new(batch))
                    } else {
                        Home::Shared(Arc::new(Mutex::new(batch)))
                    },
                ),
                Err(e) => {
                    // Once per process: every worker thread would say the same.
                    static SAID: AtomicBool = AtomicBool::new(false);
                    if !SAID.swap(true, Ordering::Relaxed) {
                        tracing::info!(error = %e, "io_uring unavailable: sends go one by one");
                    }
                    None
                }
            });
            match home.as_ref()? {
                Home::Own(_) => Some(Place::Own),
                Home::Shared(b) => Some(Place::Shared(b.clone())),
            }
        })
        .ok()
        .flatten()
}

/// Runs `f` on the batch at `place`; `None` when it is gone (the thread's locals torn down) or
/// already in use (cannot happen: nothing here calls back into it).
fn with_batch<R>(place: &Place, f: impl FnOnce(&mut Batch) -> R) -> Option<R> {
    match place {
        Place::Own => BATCH
            .try_with(|cell| match cell.get() {
                Some(Some(Home::Own(b))) => b.try_borrow_mut().ok().map(|mut b| f(&mut b)),
                _ => None,
            })
            .ok()
            .flatten(),
        Place::Shared(b) => Some(f(&mut lock(b))),
    }
}

/// The batch, whatever a panic elsewhere left: its state is consistent between calls, as none
/// of its methods can panic half-way.
fn lock(batch: &Mutex<Batch>) -> MutexGuard<'_, Batch> {
    batch.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Sends `data` on the socket `fd` with this thread's next batch. `Some(Ok(n))`: the first `n`
/// bytes went (0 when the socket had no room); `Some(Err(e))`: the send failed and sent
/// nothing; `None`: not batched (batching off, the batch full, `data` too long), nothing sent.
/// `fd` must stay open until this returns or is dropped: the caller holds the socket.
pub async fn send(fd: RawFd, data: &[u8]) -> Option<io::Result<usize>> {
    let ticket = Ticket::queue(fd, data)?;
    tokio::task::yield_now().await;
    Some(ticket.finish())
}

/// A send in this thread's batch: queued until a flush, then its result until taken.
enum Slot {
    Free,
    Queued { fd: RawFd, start: usize, len: u32 },
    Done(i32),
}

struct Batch {
    ring: io_uring::IoUring,
    /// The bytes of the queued sends, back to back. Neither grown nor cleared while a flush
    /// has entries pointing into it.
    bytes: Vec<u8>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Slots queued since the last flush, in order (a dropped ticket's slot is `Free` again).
    queued: Vec<usize>,
    /// Flushes so far (for tests).
    flushes: u64,
    /// Set after a ring error: the batch only hands out the results it holds.
    abandoned: bool,
}

impl Batch {
    fn new() -> io::Result<Batch> {
        // SUBMIT_ALL: a send refused at submission (a bad descriptor) does not stop the rest;
        // each answers in its own completion.
        let ring = io_uring::IoUring::builder().setup_submit_all().build(RING_ENTRIES)?;
        Ok(Batch {
            ring,
            bytes: Vec::with_capacity(16 * 1024),
            slots: Vec::new(),
            free: Vec::new(),
            queued: Vec::with_capacity(RING_ENTRIES as usize),
            flushes: 0,
            abandoned: false,
        })
    }

    /// Submits every queued send and records each one's result in its slot.
    fn flush(&mut self) {
        self.flushes += 1;
        let mut pushed = 0usize;
        {
            let mut sq = self.ring.submission();
            for &i in &self.queued {
                let Some(Slot::Queued { fd, start, len }) = self.slots.get(i) else {
                    continue;
                };
                let Some(data) = self.bytes.get(*start..*start + *len as usize) else {
                    continue;
                };
                let entry = io_uring::opcode::Send::new(io_uring::types::Fd(*fd), data.as_ptr(), *len)
                    .flags(SEND_FLAGS)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the entry points into `self.bytes`, which is neither changed nor
                // freed until the kernel has completed it: this function waits below for the
                // completion of every entry it pushed before returning, and on a ring error
                // the buffer is leaked rather than freed. Its descriptor is open: the ticket's
                // caller holds the socket until its send returns or is dropped, and a dropped
                // ticket takes its slot out of `queued`.
                if unsafe { sq.push(&entry) }.is_err() {
                    break; // cannot happen: `queued` never holds more than the ring does
                }
                pushed += 1;
            }
        }
        let mut done = 0;
        while done < pushed {
            if let Err(e) = self.ring.submit_and_wait(pushed - done)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::warn!(error = %e, "io_uring submission failed: this thread's requests and responses are sent one by one from now on");
                self.fail_queued(e.raw_os_error().unwrap_or(rustix::io::Errno::IO.raw_os_error()));
                return self.abandon();
            }
            for cqe in self.ring.completion() {
                if let Some(slot) = self.slots.get_mut(cqe.user_data() as usize) {
                    *slot = Slot::Done(cqe.result());
                }
                done += 1;
            }
        }
        self.queued.clear();
        self.bytes.clear();
        BATCHES.fetch_add(1, Ordering::Relaxed);
        SENDS.fetch_add(pushed as u64, Ordering::Relaxed);
    }

    /// Gives a ticket's slot back; a send still queued leaves the batch unsent.
    fn release(&mut self, slot: usize) {
        let Some(s) = self.slots.get_mut(slot) else { return };
        if matches!(s, Slot::Queued { .. }) {
            self.queued.retain(|&i| i != slot);
        }
        *s = Slot::Free;
        self.free.push(slot);
    }

    /// Marks the sends of a failed flush as failed: whether they went is not known, so the
    /// caller treats the connection as broken.
    fn fail_queued(&mut self, errno: i32) {
        for &i in &self.queued {
            if let Some(slot @ Slot::Queued { .. }) = self.slots.get_mut(i) {
                *slot = Slot::Done(-errno);
            }
        }
    }

    /// After a ring error, entries may still be in the kernel's hands: their buffer is kept for
    /// good (leaked; an empty one takes its place), and this thread batches no more sends.
    fn abandon(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        std::mem::forget(bytes);
        self.abandoned = true;
    }
}

const SEND_FLAGS: i32 = (rustix::net::SendFlags::DONTWAIT.bits() | rustix::net::SendFlags::NOSIGNAL.bits()) as i32;

/// One queued send's claim on its slot in the batch it went into: the result once flushed, or
/// the slot taken back out of the batch when dropped unflushed (its data is then never sent).
struct Ticket {
    place: Place,
    /// `None` once given back ([`Ticket::finish`]).
    slot: Option<usize>,
}

impl Ticket {
    fn queue(fd: RawFd, data: &[u8]) -> Option<Ticket> {
        if data.is_empty() || data.len() > MAX_LEN {
            return None;
        }
        let place = this_thread()?;
        let slot = with_batch(&place, |b| {
            if b.abandoned || b.queued.len() >= RING_ENTRIES as usize {
                return None;
            }
            let start = b.bytes.len();
            b.bytes.extend_from_slice(data);
            let queued = Slot::Queued {
                fd,
                start,
                len: data.len() as u32,
            };
            let slot = match b.free.pop() {
                Some(i) => {
                    b.slots[i] = queued;
                    i
                }
                None => {
                    b.slots.push(queued);
                    b.slots.len() - 1
                }
            };
            b.queued.push(slot);
            Some(slot)
        })??;
        Some(Ticket {
            place,
            slot: Some(slot),
        })
    }

    /// The send's result, flushing its batch first if nobody has since it was queued.
    fn finish(mut self) -> io::Result<usize> {
        let result = self.slot.take().and_then(|slot| {
            with_batch(&self.place, |b| {
                if matches!(b.slots.get(slot), Some(Slot::Queued { .. })) {
                    b.flush();
                }
                let result = match b.slots.get(slot) {
                    Some(Slot::Done(r)) => Some(*r),
                    _ => None,
                };
                b.release(slot);
                result
            })
            .flatten()
        });
        match result {
            Some(n) if n >= 0 => Ok(n as usize),
            Some(e) if -e == rustix::io::Errno::AGAIN.raw_os_error() => Ok(0),
            Some(e) => Err(io::Error::from_raw_os_error(-e)),
            None => Err(io::Error::other("batched send lost its slot")),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            with_batch(&self.place, |b| b.release(slot));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncReadExt;

    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Sends made by tasks that were ready together go in one flush, each to its own socket,
    /// each with its own result; a dropped one is never sent.
    #[tokio::test]
    async fn a_batch_sends_each_queued_request_once() {
        if !enable() {
            panic!("io_uring is not available on this machine: the batch cannot be tested");
        }
        let mut pairs = Vec::new();
        for _ in 0..3 {
            pairs.push(pair().await);
        }
        let fds: Vec<RawFd> = pairs.iter().map(|(a, _)| a.as_raw_fd()).collect();
        // One send dropped before its batch goes, then two that go together.
        drop(Ticket::queue(fds[2], b"never").unwrap());
        let (r0, r1) = tokio::join!(
            send(fds[0], b"GET /a HTTP/1.1\r\n\r\n"),
            send(fds[1], b"GET /b HTTP/1.1\r\n\r\n")
        );
        assert_eq!(r0.unwrap().unwrap(), 19);
        assert_eq!(r1.unwrap().unwrap(), 19);
        let batch = this_thread().unwrap();
        assert!(
            matches!(batch, Place::Own),
            "a current-thread runtime's batch is its own"
        );
        assert_eq!(with_batch(&batch, |b| b.flushes), Some(1), "one flush for both");
        let mut buf = [0u8; 64];
        let n = pairs[0].1.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET /a HTTP/1.1\r\n\r\n");
        let n = pairs[1].1.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET /b HTTP/1.1\r\n\r\n");
        // The dropped send's socket got nothing: a later send is the first thing it reads.
        assert_eq!(send(fds[2], b"x").await.unwrap().unwrap(), 1);
        let n = pairs[2].1.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"x");
        with_batch(&batch, |b| {
            assert!(b.queued.is_empty() && b.bytes.is_empty());
            assert!(b.slots.iter().all(|s| matches!(s, Slot::Free)), "every slot given back");
        })
        .unwrap();
    }

    /// A socket whose peer is gone answers with its error; one with no room answers 0 bytes
    /// sent (the caller writes the rest when it can); data too long is not batched.
    #[tokio::test]
    async fn errors_and_full_sockets_are_reported_not_waited_for() {
        assert!(enable());
        let (a, b) = pair().await;
        drop(b);
        // The first send after the peer closed may still go (the RST comes back for it).
        let mut failed = None;
        for _ in 0..50 {
            match send(a.as_raw_fd(), b"ping").await.unwrap() {
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let e = failed.unwrap();
        assert!(
            matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset),
            "{e}"
        );

        let (a, _b) = pair().await;
        let chunk = [7u8; MAX_LEN];
        let mut total = 0usize;
        let full = loop {
            match send(a.as_raw_fd(), &chunk).await.unwrap().unwrap() {
                0 => break true,
                n => total += n,
            }
            if total > 64 << 20 {
                break false;
            }
        };
        assert!(full, "a socket nobody reads fills up");
        assert!(send(a.as_raw_fd(), &[0u8; MAX_LEN + 1]).await.is_none());
    }

    /// A task that a multi-thread runtime moved to another worker between its send and the
    /// flush finds its send in the batch of the thread it was queued on, and flushes that one;
    /// one dropped there (a cancelled request) leaves that batch unsent. (The sends are queued
    /// on a thread outside any runtime, whose batch is shared as a multi-thread worker's is.)
    #[tokio::test]
    async fn a_send_queued_on_one_thread_is_finished_on_another() {
        assert!(enable());
        let (a, mut b) = pair().await;
        let fd = a.as_raw_fd();
        let (ticket, cancelled, other) = std::thread::spawn(move || {
            let cancelled = Ticket::queue(fd, b"cancelled").unwrap();
            let ticket = Ticket::queue(fd, b"moved").unwrap();
            (ticket, cancelled, this_thread().unwrap())
        })
        .join()
        .unwrap();
        let Place::Shared(other) = other else {
            panic!("a thread outside a current-thread runtime shares its batch");
        };
        assert_eq!(lock(&other).queued.len(), 2);
        drop(cancelled);
        assert_eq!(lock(&other).queued.len(), 1, "the dropped send left its batch");
        let here = this_thread().unwrap();
        assert_eq!(
            with_batch(&here, |b| b.queued.len()),
            Some(0),
            "each thread has its own batch"
        );
        assert_eq!(ticket.finish().unwrap(), 5);
        let mut buf = [0u8; 16];
        let n = b.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"moved");
        let o = lock(&other);
        assert_eq!(o.flushes, 1);
        assert!(o.queued.is_empty() && o.slots.iter().all(|s| matches!(s, Slot::Free)));
    }
}
