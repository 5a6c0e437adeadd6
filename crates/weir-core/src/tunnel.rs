//! The upstream side of a tunnel after a client's `101 Switching Protocols` (WebSocket): an
//! HTTP/1.1 upstream connection that switched protocols itself, or an HTTP/2 stream opened with
//! an extended CONNECT (RFC 8441) on a `protocol = "h2"` pool's shared connection. The front
//! joins either to the client's socket with one byte copy loop.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::h1client::UpStream;
use crate::h2client::H2Stream;

/// The most one write asks of the stream's window: a WebSocket message larger than this goes
/// as several DATA frames, and no write pins more window than it can fill at once.
const WRITE_CHUNK: usize = 64 * 1024;

pub enum TunnelIo {
    H1(UpStream),
    /// Boxed: the HTTP/1.1 tunnel is the common one.
    H2(Box<H2Tunnel>),
}

/// An HTTP/2 stream as a byte stream: DATA frames in both directions, the window given back
/// as the client takes the bytes, and the end of the stream as the end of the bytes.
pub struct H2Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// What of the last DATA frame the client has not taken yet.
    unread: Bytes,
    /// Counts the stream on its connection until the tunnel closes (`max_concurrent_streams`).
    _stream: H2Stream,
    shut: bool,
}

impl H2Tunnel {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream, stream: H2Stream) -> Self {
        H2Tunnel {
            send,
            recv,
            unread: Bytes::new(),
            _stream: stream,
            shut: false,
        }
    }
}

/// The `Sec-WebSocket-Accept` answering `key` (RFC 6455 §4.2.2): what weir's HTTP/1.1 client
/// checks when weir spoke HTTP/2 to the upstream, which then never saw the key.
pub fn websocket_accept(key: &[u8]) -> http::HeaderValue {
    use base64::Engine as _;
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key);
    ctx.update(GUID);
    let encoded = base64::engine::general_purpose::STANDARD.encode(ctx.finish());
    // Base64 is always a valid field value.
    http::HeaderValue::from_str(&encoded).unwrap_or_else(|_| http::HeaderValue::from_static(""))
}

fn h2_io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::ErrorKind::BrokenPipe.into());
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for H2Tunnel {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => this.unread = data,
                Some(Err(e)) => return Poll::Ready(Err(h2_io_error(e))),
                // The upstream ended its side: the end of the bytes.
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        // The upstream may send as much again.
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Tunnel {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.send.capacity() == 0 {
            this.send.reserve_capacity(buf.len().min(WRITE_CHUNK));
            loop {
                match ready!(this.send.poll_capacity(cx)) {
                    Some(Ok(0)) => {}
                    Some(Ok(_)) => break,
                    Some(Err(e)) => return Poll::Ready(Err(h2_io_error(e))),
                    None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                }
            }
        }
        let n = this.send.capacity().min(buf.len());
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes what was sent as the connection's task polls it.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shut {
            this.shut = true;
            this.send.send_data(Bytes::new(), true).map_err(h2_io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TunnelIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::H1(s) => Pin::new(s).poll_read(cx, buf),
            TunnelIo::H2(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TunnelIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TunnelIo::H1(s) => Pin::new(s).poll_write(cx, buf),
            TunnelIo::H2(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::H1(s) => Pin::new(s).poll_flush(cx),
            TunnelIo::H2(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TunnelIo::H1(s) => Pin::new(s).poll_shutdown(cx),
            TunnelIo::H2(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    /// RFC 6455 §1.3's own example.
    #[test]
    fn the_accept_key_is_rfc_6455s() {
        assert_eq!(
            super::websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
