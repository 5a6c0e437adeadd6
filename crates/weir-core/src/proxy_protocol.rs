//! The PROXY protocol (v1 text, v2 binary) on accepted connections: a load balancer in front of
//! weir opens each connection with a header naming the real client, which then stands for the
//! socket's peer everywhere (`X-Forwarded-For`, `Forwarded`, affinity, plugins, access log).
//!
//! The header is consumed and nothing after it: v1 is found by peeking (its line ends within
//! 107 bytes), v2 by its fixed 16-byte prefix, which carries the length of the rest. So the
//! bytes that follow (a TLS ClientHello, the h2 preface, an HTTP/1 request) stay in the socket
//! for whichever protocol serves the connection. Parsing is the `ppp` crate's.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{v1, v2};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line the specification allows, CRLF included.
const V1_MAX: usize = 107;
/// v2's fixed part: signature, version and command, family and protocol, length.
const V2_FIXED: usize = 16;
/// The longest v2 header accepted: its addresses (at most 216 bytes) and room for the TLVs that
/// cloud load balancers add (ids, ALPN, SNI). The protocol's own limit is 64 KiB.
const V2_MAX: usize = 4096;

/// Why a connection's PROXY header was refused; the connection is closed.
#[derive(Debug)]
pub enum Refused {
    /// The client closed before a whole header arrived.
    Closed,
    Io(std::io::Error),
    /// The connection does not open with a PROXY header (a client reaching weir directly, or
    /// a load balancer not configured to send one).
    Missing,
    Malformed(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Closed => f.write_str("closed before a whole PROXY header arrived"),
            Refused::Io(e) => write!(f, "reading the PROXY header: {e}"),
            Refused::Missing => f.write_str("the connection does not start with a PROXY header"),
            Refused::Malformed(why) => write!(f, "malformed PROXY header: {why}"),
        }
    }
}

/// Reads the header that opens `stream`. `Some(client)` is the source it names; `None` when it
/// names none (v1 `UNKNOWN`, v2 `LOCAL` such as a load balancer's own health check, or an
/// address family other than TCP over IPv4/IPv6): the socket's peer stands then.
/// The caller bounds the wait (the listener's `header_timeout`).
pub async fn read(stream: &mut TcpStream) -> Result<Option<SocketAddr>, Refused> {
    let mut peeked = [0u8; V1_MAX];
    loop {
        let n = stream.peek(&mut peeked).await.map_err(Refused::Io)?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        let seen = &peeked[..n];
        if starts_like(seen, V2_SIGNATURE) {
            if n >= V2_FIXED {
                return read_v2(stream, u16::from_be_bytes([seen[14], seen[15]]).into()).await;
            }
        } else if starts_like(seen, V1_PREFIX) {
            if let Some(end) = seen.windows(2).position(|w| w == b"\r\n") {
                return read_v1(stream, end + 2).await;
            }
            if n == V1_MAX {
                return Err(Refused::Malformed(format!("v1 line longer than {V1_MAX} bytes")));
            }
        } else {
            return Err(Refused::Missing);
        }
        // A header split across packets: wait for the rest (bounded by the caller's timeout).
        // Peeking again at once would only see the same bytes.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether `seen` agrees with `expected` as far as both go.
fn starts_like(seen: &[u8], expected: &[u8]) -> bool {
    let n = seen.len().min(expected.len());
    seen[..n] == expected[..n]
}

async fn read_v1(stream: &mut TcpStream, len: usize) -> Result<Option<SocketAddr>, Refused> {
    let mut line = [0u8; V1_MAX];
    let line = &mut line[..len];
    stream.read_exact(line).await.map_err(eof_is_closed)?;
    let h = v1::Header::try_from(&line[..]).map_err(|e| Refused::Malformed(e.to_string()))?;
    Ok(match h.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v1::Addresses::Unknown => None,
    })
}

async fn read_v2(stream: &mut TcpStream, rest: usize) -> Result<Option<SocketAddr>, Refused> {
    let len = V2_FIXED + rest;
    if len > V2_MAX {
        return Err(Refused::Malformed(format!(
            "v2 header of {len} bytes (at most {V2_MAX})"
        )));
    }
    let mut header = vec![0u8; len];
    stream.read_exact(&mut header).await.map_err(eof_is_closed)?;
    let h = v2::Header::try_from(header.as_slice()).map_err(|e| Refused::Malformed(e.to_string()))?;
    if h.command == v2::Command::Local || h.protocol != v2::Protocol::Stream {
        return Ok(None);
    }
    Ok(match h.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    })
}

fn eof_is_closed(e: std::io::Error) -> Refused {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Refused::Closed
    } else {
        Refused::Io(e)
    }
}
