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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A TLS 1.3 connection on loopback: weir's side as an [`UpStream`], and the server's.
    async fn tls_pair() -> (UpStream, tokio_rustls::server::TlsStream<TcpStream>) {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = CertificateDer::from(made.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(server))
                .accept(tcp)
                .await
                .unwrap()
        };
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(name, tcp)
                .await
                .unwrap()
        };
        let (server, client) = tokio::join!(accept, connect);
        (client.into(), server)
    }

    async fn until_readable(s: &UpStream) {
        tokio::time::timeout(Duration::from_secs(5), s.tcp().readable())
            .await
            .expect("readable within 5 s")
            .unwrap();
    }

    /// Whether the connection turns unusable within 5 s (a server's last session ticket may
    /// come in a segment of its own, and is no reason).
    async fn turns_unusable(s: &mut UpStream) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            until_readable(s).await;
            if !s.is_idle_usable() {
                return true;
            }
        }
        false
    }

    /// The server's session tickets arrive after the handshake and make the idle socket
    /// readable: the connection is still usable. A close_notify (or data nobody asked for)
    /// makes it unusable.
    #[tokio::test]
    async fn an_idle_tls_connection_is_usable_until_the_server_closes_it() {
        let (mut client, mut server) = tls_pair().await;
        until_readable(&client).await;
        assert!(client.is_idle_usable(), "session tickets alone");
        assert!(client.is_idle_usable(), "and again, with nothing new");
        server.shutdown().await.unwrap();
        assert!(turns_unusable(&mut client).await, "closed by the server");

        let (mut client, mut server) = tls_pair().await;
        until_readable(&client).await;
        assert!(client.is_idle_usable(), "session tickets alone");
        server.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        server.flush().await.unwrap();
        assert!(turns_unusable(&mut client).await, "bytes nobody asked for");
    }
}
