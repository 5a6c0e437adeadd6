//! The client connection as the HTTP/1 server holds it, and the per-thread pools of its
//! buffers: a keep-alive connection waiting for its next request holds no buffer at all (its
//! read and write buffers go back to the pool of the thread it runs on), which is most of what
//! an idle connection would otherwise cost.

use std::cell::RefCell;
use std::io;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Size of a fresh read buffer; a request head and a small body arrive in one read.
pub const READ_BUF: usize = 4 * 1024;
/// Reads of a large body ask for this much room.
const BODY_READ: usize = 64 * 1024;
/// Buffers kept per thread; beyond this they are freed.
const POOLED: usize = 64;
/// Write buffers larger than this are not pooled.
const MAX_POOLED_WRITE: usize = 64 * 1024;

/// A client transport: plain TCP or TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug + 'static {
    /// Ready once a read may find bytes. Plain TCP waits in the reactor without a buffer; other
    /// transports are always "ready" and wait inside their read.
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl ClientIo for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {}

/// The connection and what was read from it but not yet used.
#[derive(Debug)]
pub struct ConnIo {
    pub io: Box<dyn ClientIo>,
    pub rbuf: BytesMut,
    /// Set by a request body read to its end: the next head starts right after it.
    pub body_done: bool,
}

/// Grows the read buffer before a read when little room is left (the upstream client's rule),
/// taking a pooled buffer when it has none.
pub fn make_room(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = take_read_buf();
    } else {
        let size = if buf.capacity() >= READ_BUF {
            BODY_READ
        } else {
            READ_BUF
        };
        crate::h1client::conn::make_room(buf, size);
    }
}

thread_local! {
    static READ_BUFS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static WRITE_BUFS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

pub fn take_read_buf() -> BytesMut {
    READ_BUFS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| BytesMut::with_capacity(READ_BUF))
}

/// Returns an empty read buffer to the pool (or frees it): the connection is going idle.
pub fn release_read_buf(buf: &mut BytesMut) {
    if buf.capacity() == 0 || !buf.is_empty() {
        return;
    }
    let mut b = std::mem::take(buf);
    // Only a buffer no request still shares, at its usual size, is worth keeping.
    if b.try_reclaim(READ_BUF) && b.capacity() <= 2 * READ_BUF {
        READ_BUFS.with_borrow_mut(|pool| {
            if pool.len() < POOLED {
                pool.push(b);
            }
        });
    }
}

pub fn take_write_buf() -> Vec<u8> {
    WRITE_BUFS
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(READ_BUF))
}

pub fn release_write_buf(mut buf: Vec<u8>) {
    if buf.capacity() > MAX_POOLED_WRITE {
        return;
    }
    buf.clear();
    WRITE_BUFS.with_borrow_mut(|pool| {
        if pool.len() < POOLED {
            pool.push(buf);
        }
    });
}
