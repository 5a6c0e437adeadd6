//! Tunnels (WebSockets) through weir. The upstream side: an HTTP/1.1 upstream connection that
//! switched protocols itself, or an HTTP/2 stream opened with an extended CONNECT (RFC 8441) on
//! a `protocol = "h2"` pool's shared connection. The client side: an HTTP/1.1 connection after
//! its `101`, or an HTTP/2 client's own extended CONNECT stream. An HTTP/2 client's WebSocket is
//! carried through the proxy path as the HTTP/1.1 handshake ([`as_websocket_handshake`]), so
//! every upstream kind serves it, and its answer turned back into HTTP/2's `200`
//! ([`answer_h2_websocket`]). Either side is joined to the other with one byte copy loop.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::body::ProxyBody;
use crate::front::{Tunnel, TunnelSlot};
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

/// The `Sec-WebSocket-Accept` answering `key` (RFC 6455 §4.2.2): what weir answers an
/// HTTP/1.1 client with when the upstream spoke HTTP/2 and never saw the key, and what it
/// expects of an HTTP/1.1 upstream for the key it sent on an HTTP/2 client's behalf.
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

/// What an HTTP/2 client's request is to the tunnel code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtendedConnect {
    /// Not an extended CONNECT: an ordinary request.
    No,
    /// An extended CONNECT with `:protocol = websocket`.
    WebSocket,
    /// An extended CONNECT for another protocol, which weir does not carry.
    Other,
}

pub fn extended_connect<B>(req: &Request<B>) -> ExtendedConnect {
    if req.method() != Method::CONNECT {
        return ExtendedConnect::No;
    }
    match req.extensions().get::<hyper::ext::Protocol>() {
        None => ExtendedConnect::No,
        Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => ExtendedConnect::WebSocket,
        Some(_) => ExtendedConnect::Other,
    }
}

/// Rewrites an HTTP/2 client's WebSocket (an extended CONNECT, RFC 8441 §5) as the HTTP/1.1
/// handshake the proxy path carries to any upstream: `GET` with `Connection: upgrade`,
/// `Upgrade: websocket` and a fresh `Sec-WebSocket-Key`; the client's
/// `Sec-WebSocket-Version`, `-Protocol` and `-Extensions` stay. Returns the key, which the
/// upstream's `Sec-WebSocket-Accept` must answer ([`answer_h2_websocket`]).
pub fn as_websocket_handshake<B>(req: &mut Request<B>) -> HeaderValue {
    // The version stays: `Via` and `Forwarded` say the client spoke HTTP/2.
    *req.method_mut() = Method::GET;
    let h = req.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let key = new_websocket_key();
    h.insert(header::SEC_WEBSOCKET_KEY, key.clone());
    h.entry(header::SEC_WEBSOCKET_VERSION)
        .or_insert(HeaderValue::from_static("13"));
    key
}

/// A `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
fn new_websocket_key() -> HeaderValue {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut nonce = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut nonce).is_err() {
        // The key proves nothing secret; a clock value is nonce enough.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        nonce = t.to_le_bytes();
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAA=="))
}

/// The answer to an HTTP/2 client's WebSocket: the upstream's `101` (with its tunnel) becomes
/// the `200` RFC 8441 answers with, less the HTTP/1.1 handshake's fields, and the tunnel is
/// joined to the client's stream once hyper hands that over; `hold` lives as long as the
/// tunnel. A `101` whose `Sec-WebSocket-Accept` does not answer `key` (the one weir sent) is
/// not a WebSocket: a 502. Any other answer goes as it is.
pub fn answer_h2_websocket(
    mut resp: Response<ProxyBody>,
    key: &HeaderValue,
    client: hyper::upgrade::OnUpgrade,
    hold: impl Send + 'static,
) -> Response<ProxyBody> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return resp;
    }
    let tunnel = resp.extensions_mut().remove::<TunnelSlot>().and_then(|t| t.take());
    let accepted = resp.headers().get(header::SEC_WEBSOCKET_ACCEPT) == Some(&websocket_accept(key.as_bytes()));
    let Some(tunnel) = tunnel.filter(|_| accepted) else {
        tracing::debug!("upstream switched protocols without the WebSocket accept key weir asked for");
        return crate::error::ProxyError::UpstreamReset.response();
    };
    tokio::spawn(async move {
        let _hold = hold;
        match client.await {
            Ok(upgraded) => join(hyper_util::rt::TokioIo::new(upgraded), tunnel).await,
            Err(e) => tracing::debug!(error = %e, "HTTP/2 client's WebSocket stream did not open"),
        }
    });
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    for name in [
        header::CONNECTION,
        header::UPGRADE,
        header::SEC_WEBSOCKET_ACCEPT,
        header::CONTENT_LENGTH,
    ] {
        h.remove(name);
    }
    resp
}

/// TCP keep-alive on a tunnel's socket: a tunnel may be quiet for hours (a WebSocket that
/// waits for events), and one whose peer vanished without a FIN or a reset (a laptop closed, a
/// NAT entry dropped, a host powered off) would otherwise stay open for good, holding two
/// sockets and its endpoint's in-flight count (which `least-request` balances by and a drain
/// waits on). Probes after a minute of silence, every 10 s, six unanswered ones closing it: a
/// dead peer is found about two minutes after the last byte; a live one answers the probes in
/// its kernel and is never cut, however quiet. HTTP/2 connections need none: their PINGs do
/// this (`idle_timeout` on the client side, the pool's pings upstream).
pub fn keep_alive(socket: &tokio::net::TcpStream) {
    let probes = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(60))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(6);
    if let Err(e) = socket2::SockRef::from(socket).set_tcp_keepalive(&probes) {
        tracing::debug!(error = %e, "TCP keep-alive for a tunnel not set");
    }
}

/// Joins a client to the upstream side of its tunnel: what the upstream sent right behind its
/// switch goes first, then bytes flow both ways until both have ended.
pub async fn join<C: AsyncRead + AsyncWrite + Unpin>(mut client: C, t: Tunnel) {
    let Tunnel {
        mut upstream,
        early,
        in_flight,
    } = t;
    let _in_flight = in_flight;
    if let TunnelIo::H1(up) = &upstream {
        keep_alive(up.tcp());
    }
    if !early.is_empty() && client.write_all(&early).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
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
