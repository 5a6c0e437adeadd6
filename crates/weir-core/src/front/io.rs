//! The client connection as the HTTP/1 server holds it: a keep-alive connection waiting for
//! its next request holds no buffer at all (its read and write buffers go back to the pool of
//! the thread it runs on, [`crate::bufpool`]).

use std::io;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::bufpool::FRONT_READ;

/// Reads of a large body ask for this much room.
const BODY_READ: usize = 64 * 1024;

/// A client transport: plain TCP or TLS.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug + 'static {
    /// Ready once a read may find bytes. Plain TCP waits in the reactor without a buffer; other
    /// transports are always "ready" and wait inside their read.
    fn poll_readable(&self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Whether an idle connection may be parked ([`crate::parking`]): plain TCP only (a TLS
    /// session's state would have to be kept, and is most of its cost).
    fn parkable(&self) -> bool {
        false
    }

    /// The TCP stream, for parking.
    fn into_tcp(self: Box<Self>) -> Option<TcpStream> {
        None
    }

    /// The socket's descriptor, when bytes written to it go straight to the socket (plain TCP):
    /// a response can then go with the thread's batch of sends ([`crate::send_batch`]).
    fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// The TCP socket under the connection, TLS or not: for socket options.
    fn socket(&self) -> &TcpStream;
}

impl ClientIo for TcpStream {
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    fn parkable(&self) -> bool {
        true
    }

    fn into_tcp(self: Box<Self>) -> Option<TcpStream> {
        Some(*self)
    }

    fn plain_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }

    fn socket(&self) -> &TcpStream {
        self
    }
}

impl ClientIo for tokio_rustls::server::TlsStream<TcpStream> {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// The connection and what was read from it but not yet used.
#[derive(Debug)]
pub struct ConnIo {
    pub io: Box<dyn ClientIo>,
    pub rbuf: BytesMut,
    /// Set by a request body read to its end: the next head starts right after it.
    pub body_done: bool,
}

/// Grows the read buffer before a read when little room is left, taking a pooled buffer when
/// it has none: the upstream client's rule, with the client side's sizes.
pub fn make_room(buf: &mut BytesMut) {
    let size = if buf.capacity() >= FRONT_READ {
        BODY_READ
    } else {
        FRONT_READ
    };
    crate::h1client::conn::make_room(buf, size);
}
