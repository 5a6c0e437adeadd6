//! Per-thread pools of I/O buffers, so that a connection holds a buffer only while it moves
//! bytes: a keep-alive client connection waiting for its next request, an upstream connection
//! idle in its pool and a request waiting for its upstream's answer hold none. That is most of
//! what an idle connection would otherwise cost, and what hundreds of requests in flight
//! (HTTP/2 clients multiplex them) would otherwise pin.
//!
//! A read buffer may be given back while bytes split off it are still on their way (a
//! response body handed to the client shares the upstream connection's buffer): the pool
//! keeps it anyway and reclaims it when it is taken again, by which time the bytes are
//! usually gone, so the steady state allocates nothing. When they are not (an HTTP/2 client's
//! response waits in the h2 crate's send queue until the connection's task writes it), the
//! buffer goes to the back of the queue and the next one is tried: dropping it, as before,
//! made that front allocate and free 8 KiB per request.
//!
//! Header maps are pooled the same way: a cleared `HeaderMap` keeps its two allocations
//! (indices and entries), and every HTTP/1 exchange builds two (the request's and the
//! response's).

use std::cell::RefCell;
use std::collections::VecDeque;

use bytes::BytesMut;
use http::HeaderMap;

/// Size of a client connection's read buffer: a request head and a small body.
pub const FRONT_READ: usize = 4 * 1024;
/// Size of an upstream connection's read buffer: a whole small response in one read.
pub const UPSTREAM_READ: usize = 8 * 1024;
/// Size of a fresh write buffer.
const WRITE: usize = 4 * 1024;
/// Pieces of a read buffer this long or shorter are copied out rather than shared with it
/// (a response head, a small body, a small piece of a streamed one), when they may outlive the
/// read: a view keeps the whole buffer from the pool for as long as it lives, and an HTTP/2
/// client's response waits in the h2 crate's queue. A copy this size is an allocation from
/// glibc's per-thread cache (up to 1,032 bytes); a new 8 KiB buffer is not.
pub const COPY_MAX: usize = 1024;
/// Buffers kept per thread and kind; beyond this they are freed.
const POOLED: usize = 64;
/// Write buffers larger than this are not kept.
const MAX_POOLED_WRITE: usize = 64 * 1024;
/// Header maps with room for more fields than this are not kept (a rare huge head would pin
/// its memory).
const MAX_POOLED_FIELDS: usize = 64;

thread_local! {
    static FRONT_BUFS: RefCell<VecDeque<BytesMut>> = const { RefCell::new(VecDeque::new()) };
    static UPSTREAM_BUFS: RefCell<VecDeque<BytesMut>> = const { RefCell::new(VecDeque::new()) };
    static WRITE_BUFS: RefCell<VecDeque<Vec<u8>>> = const { RefCell::new(VecDeque::new()) };
    static HEADER_MAPS: RefCell<VecDeque<HeaderMap>> = const { RefCell::new(VecDeque::new()) };
}

/// An empty header map with room for `fields` fields.
pub fn take_headers(fields: usize) -> HeaderMap {
    match HEADER_MAPS.with_borrow_mut(VecDeque::pop_back) {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Gives a header map that is no longer needed back to this thread's pool, cleared.
pub fn give_headers(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAX_POOLED_FIELDS {
        return;
    }
    map.clear();
    keep(&HEADER_MAPS, map);
}

/// Puts `item` at the back of this thread's `pool` (where takes look first) unless the pool
/// already holds [`POOLED`]. Queues, so that a read buffer still shared can wait at the front.
fn keep<T>(pool: &'static std::thread::LocalKey<RefCell<VecDeque<T>>>, item: T) {
    pool.with_borrow_mut(|pool| {
        if pool.len() < POOLED {
            pool.push_back(item);
        }
    });
}

/// How many pooled read buffers a take looks at before it allocates: those still shared go to
/// the back of the queue, so a pool whose newest buffers are all in flight does not scan them
/// all on every request.
const READ_TRIES: usize = 4;

fn read_pool(size: usize) -> &'static std::thread::LocalKey<RefCell<VecDeque<BytesMut>>> {
    if size <= FRONT_READ {
        &FRONT_BUFS
    } else {
        &UPSTREAM_BUFS
    }
}

/// An empty read buffer with room for `size` bytes ([`FRONT_READ`] or [`UPSTREAM_READ`]).
pub fn take_read(size: usize) -> BytesMut {
    read_pool(size).with_borrow_mut(|pool| {
        for _ in 0..READ_TRIES {
            let Some(mut buf) = pool.pop_back() else {
                break;
            };
            if buf.try_reclaim(size) {
                if buf.capacity() <= 2 * size {
                    return buf;
                }
                // Grown large: let it go.
            } else {
                // Still shared with bytes in flight: kept for a later take.
                pool.push_front(buf);
            }
        }
        BytesMut::with_capacity(size)
    })
}

/// Gives an emptied read buffer of the `size` kind back to this thread's pool (a buffer with
/// unread bytes stays where it is). Leaves `buf` without capacity.
pub fn give_read(buf: &mut BytesMut, size: usize) {
    if buf.capacity() == 0 || !buf.is_empty() {
        return;
    }
    if buf.capacity() > 2 * size {
        // Grown for a large body (reads of up to 256 KiB): freed, not pooled, or a pool of
        // 64 could pin 16 MiB per thread after a burst of downloads.
        *buf = BytesMut::new();
        return;
    }
    keep(read_pool(size), std::mem::take(buf));
}

/// An empty write buffer.
pub fn take_write() -> Vec<u8> {
    WRITE_BUFS
        .with_borrow_mut(VecDeque::pop_back)
        .unwrap_or_else(|| Vec::with_capacity(WRITE))
}

/// Gives a write buffer back to this thread's pool.
pub fn give_write(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > MAX_POOLED_WRITE {
        return;
    }
    buf.clear();
    keep(&WRITE_BUFS, buf);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_header_map_comes_back_cleared_with_its_room() {
        // Test threads are fresh: the pool starts empty.
        let mut map = take_headers(8);
        map.insert(http::header::HOST, http::HeaderValue::from_static("a"));
        map.append(http::header::ACCEPT, http::HeaderValue::from_static("b"));
        let room = map.capacity();
        give_headers(map);
        let again = take_headers(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        // One grown past the limit is let go.
        let big: HeaderMap = HeaderMap::with_capacity(4 * MAX_POOLED_FIELDS);
        give_headers(big);
        assert_eq!(
            take_headers(1).capacity(),
            HeaderMap::<http::HeaderValue>::with_capacity(1).capacity()
        );
    }

    #[test]
    fn a_shared_buffer_comes_back_once_its_bytes_are_gone() {
        let mut buf = take_read(UPSTREAM_READ);
        let ptr = buf.as_ptr();
        buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\nhello");
        let body = buf.split().freeze();
        give_read(&mut buf, UPSTREAM_READ);
        assert_eq!(buf.capacity(), 0, "the connection keeps no buffer");
        drop(body);
        let again = take_read(UPSTREAM_READ);
        assert_eq!(again.as_ptr(), ptr, "the same allocation is reused");
        assert!(again.capacity() >= UPSTREAM_READ);
    }

    #[test]
    fn a_buffer_still_shared_when_taken_waits_in_the_pool_for_its_bytes() {
        let mut buf = take_read(FRONT_READ);
        let ptr = buf.as_ptr();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split().freeze();
        give_read(&mut buf, FRONT_READ);
        let mut fresh = take_read(FRONT_READ);
        assert!(fresh.is_empty() && fresh.capacity() >= FRONT_READ);
        assert_ne!(fresh.as_ptr(), ptr, "a buffer whose bytes are in flight was handed out");
        assert_eq!(
            &head[..],
            b"GET / HTTP/1.1\r\n\r\n",
            "the bytes in flight are untouched"
        );
        // Once its bytes are gone, it is the one handed out after the fresh one came back.
        give_read(&mut fresh, FRONT_READ);
        drop(head);
        let _newest = take_read(FRONT_READ);
        let reused = take_read(FRONT_READ);
        assert_eq!(reused.as_ptr(), ptr, "the buffer was dropped while shared");
    }

    #[test]
    fn a_grown_buffer_is_freed_not_pooled() {
        let pooled = || UPSTREAM_BUFS.with_borrow(VecDeque::len);
        let before = pooled();
        let mut big = BytesMut::with_capacity(256 * 1024);
        give_read(&mut big, UPSTREAM_READ);
        assert_eq!(big.capacity(), 0);
        assert_eq!(pooled(), before, "a 256 KiB buffer sits in the pool");
        let mut small = take_read(UPSTREAM_READ);
        give_read(&mut small, UPSTREAM_READ);
        assert_eq!(pooled(), before + 1);
    }

    #[test]
    fn unread_bytes_keep_their_buffer() {
        let mut buf = take_read(FRONT_READ);
        buf.extend_from_slice(b"GET");
        give_read(&mut buf, FRONT_READ);
        assert_eq!(&buf[..], b"GET");
    }
}
