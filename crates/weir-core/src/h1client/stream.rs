//! The socket of an upstream connection: plain TCP, or TLS over it for a `[pool.tls]` pool.
//! One `match` per read or write; the plain path keeps its socket-level shortcuts (readiness
//! without a read buffer, the idle check without a syscall).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub enum UpStream {
    Plain(TcpStream),
    /// Boxed: rustls's connection state is large, and most pools are plain.
    Tls(Box<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for UpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpStream::Plain(s) => f.debug_tuple("Plain").field(s).finish(),
            UpStream::Tls(s) => f.debug_tuple("Tls").field(s.get_ref().0).finish(),
        }
    }
}

impl From<TcpStream> for UpStream {
    fn from(s: TcpStream) -> Self {
        UpStream::Plain(s)
    }
}

impl From<TlsStream<TcpStream>> for UpStream {
    fn from(s: TlsStream<TcpStream>) -> Self {
        UpStream::Tls(Box::new(s))
    }
}

impl UpStream {
    pub fn tcp(&self) -> &TcpStream {
        match self {
            UpStream::Plain(s) => s,
            UpStream::Tls(s) => s.get_ref().0,
        }
    }

    /// Whether an idle connection can carry a request: nothing arrived on it, or (TLS) only
    /// records without data (a TLS 1.3 server's session tickets come after the handshake).
    /// Anything else (an end of stream, a close_notify, bytes nobody asked for) means no.
    pub fn is_idle_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.tcp().poll_read_ready(&mut cx) {
            Poll::Pending => return true,
            Poll::Ready(Err(_)) => return false,
            Poll::Ready(Ok(())) => {}
        }
        let mut probe = [0u8; 1];
        match self {
            UpStream::Plain(s) => matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            UpStream::Tls(s) => {
                let mut buf = ReadBuf::new(&mut probe);
                matches!(Pin::new(s.as_mut()).poll_read(&mut cx, &mut buf), Poll::Pending)
            }
        }
    }

    /// Waits until the socket has something to read, without a buffer. Only for plain TCP:
    /// TLS may hold decrypted bytes the socket no longer shows, so it reads instead.
    pub async fn readable_if_plain(&self) -> io::Result<()> {
        match self {
            UpStream::Plain(s) => s.readable().await,
            UpStream::Tls(_) => Ok(()),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, UpStream::Tls(_))
    }
}

impl AsyncRead for UpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpStream::Plain(s) => s.is_write_vectored(),
            UpStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
