//! The PROXY protocol (v1 text, v2 binary). In: a load balancer in front of weir opens each
//! connection with a header naming the real client, which then stands for the socket's peer
//! everywhere (`X-Forwarded-For`, `Forwarded`, affinity, plugins, access log). Out
//! (`send_proxy` on a pool): weir opens each upstream connection with a header naming the
//! client it was opened for, and reuses it only for that client.
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

/// The connection a PROXY header describes: the client, and where it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    pub client: SocketAddr,
    pub local: SocketAddr,
}

// v1 and v2 share ppp's address types.
impl From<v1::IPv4> for Named {
    fn from(a: v1::IPv4) -> Self {
        Named {
            client: (a.source_address, a.source_port).into(),
            local: (a.destination_address, a.destination_port).into(),
        }
    }
}

impl From<v1::IPv6> for Named {
    fn from(a: v1::IPv6) -> Self {
        Named {
            client: (a.source_address, a.source_port).into(),
            local: (a.destination_address, a.destination_port).into(),
        }
    }
}

/// Reads the header that opens `stream`: the connection it names, or `None` when it names
/// none (v1 `UNKNOWN`, v2 `LOCAL` such as a load balancer's own health check, or an
/// address family other than TCP over IPv4/IPv6): the socket's peer stands then.
/// The caller bounds the wait (the listener's `header_timeout`).
pub async fn read(stream: &mut TcpStream) -> Result<Option<Named>, Refused> {
    let mut peeked = [0u8; V1_MAX];
    let mut wait = Duration::from_millis(1);
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
        // Peeking again at once would only see the same bytes, and the socket stays readable
        // while they wait, so this polls: after 1 ms (the rest of a split header is a round
        // trip away), then less and less often, so that a client stalling mid-header costs
        // a few wake-ups a second rather than a thousand.
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
}

/// Whether `seen` agrees with `expected` as far as both go.
fn starts_like(seen: &[u8], expected: &[u8]) -> bool {
    let n = seen.len().min(expected.len());
    seen[..n] == expected[..n]
}

async fn read_v1(stream: &mut TcpStream, len: usize) -> Result<Option<Named>, Refused> {
    let mut line = [0u8; V1_MAX];
    let line = &mut line[..len];
    stream.read_exact(line).await.map_err(eof_is_closed)?;
    let h = v1::Header::try_from(&line[..]).map_err(|e| Refused::Malformed(e.to_string()))?;
    Ok(match h.addresses {
        v1::Addresses::Tcp4(a) => Some(a.into()),
        v1::Addresses::Tcp6(a) => Some(a.into()),
        v1::Addresses::Unknown => None,
    })
}

async fn read_v2(stream: &mut TcpStream, rest: usize) -> Result<Option<Named>, Refused> {
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
        v2::Addresses::IPv4(a) => Some(a.into()),
        v2::Addresses::IPv6(a) => Some(a.into()),
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

/// What an upstream connection of a `send_proxy` pool opens with.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub version: weir_config::ProxyVersion,
    pub client: SocketAddr,
    pub local: SocketAddr,
}

impl Out {
    /// The header bytes. The two addresses of a header share a family: a mixed pair is written
    /// as IPv6, the IPv4 one mapped (`::ffff:a.b.c.d`).
    pub fn header(&self) -> Vec<u8> {
        let (client, local) = same_family(self.client, self.local);
        match self.version {
            weir_config::ProxyVersion::V1 => {
                let addresses = match (client, local) {
                    (SocketAddr::V4(c), SocketAddr::V4(l)) => {
                        v1::Addresses::new_tcp4(*c.ip(), *l.ip(), c.port(), l.port())
                    }
                    (c, l) => v1::Addresses::new_tcp6(v6(c.ip()), v6(l.ip()), c.port(), l.port()),
                };
                // ppp writes the whole line: "PROXY TCP4 <src> <dst> <sport> <dport>\r\n".
                addresses.to_string().into_bytes()
            }
            weir_config::ProxyVersion::V2 => v2_header(v2::Command::Proxy, Some((client, local))),
        }
    }
}

/// The header a health check of a `send_proxy` pool opens with: v1 `UNKNOWN`, v2 `LOCAL` (the
/// connection is weir's own, not a client's).
pub fn local_header(version: weir_config::ProxyVersion) -> Vec<u8> {
    match version {
        weir_config::ProxyVersion::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        weir_config::ProxyVersion::V2 => v2_header(v2::Command::Local, None),
    }
}

fn v2_header(command: v2::Command, addresses: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let version_command = v2::Version::Two as u8 | command as u8;
    let built = match addresses {
        Some(pair) => v2::Builder::with_addresses(version_command, v2::Protocol::Stream, pair).build(),
        None => {
            v2::Builder::with_addresses(version_command, v2::Protocol::Unspecified, v2::Addresses::Unspecified).build()
        }
    };
    // Building into a Vec cannot fail short of memory; an empty header would be refused by the
    // upstream, which counts as that connect failing.
    built.unwrap_or_default()
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (
            SocketAddr::new(v6(a.ip()).into(), a.port()),
            SocketAddr::new(v6(b.ip()).into(), b.port()),
        )
    }
}

fn v6(ip: std::net::IpAddr) -> std::net::Ipv6Addr {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use weir_config::ProxyVersion;

    fn out(version: ProxyVersion, client: &str, local: &str) -> Out {
        Out {
            version,
            client: client.parse().unwrap(),
            local: local.parse().unwrap(),
        }
    }

    #[test]
    fn v1_lines() {
        let h = out(ProxyVersion::V1, "203.0.113.7:51234", "10.0.0.1:9080").header();
        assert_eq!(h, b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 9080\r\n");
        let h = out(ProxyVersion::V1, "[2001:db8::7]:1", "[2001:db8::1]:443").header();
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 2001:db8::1 1 443\r\n");
        // Mixed families are written as IPv6, the IPv4 address mapped.
        let h = out(ProxyVersion::V1, "[2001:db8::7]:1", "10.0.0.1:443").header();
        assert_eq!(h, b"PROXY TCP6 2001:db8::7 ::ffff:10.0.0.1 1 443\r\n");
        assert_eq!(local_header(ProxyVersion::V1), b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_headers() {
        let h = out(ProxyVersion::V2, "203.0.113.7:51234", "10.0.0.1:9080").header();
        let mut want = V2_SIGNATURE.to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 7, 10, 0, 0, 1, 0xc8, 0x22, 0x23, 0x78]);
        assert_eq!(h, want);
        let h = out(ProxyVersion::V2, "[2001:db8::7]:1", "10.0.0.1:443").header();
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(
            &h[32..48],
            &"::ffff:10.0.0.1".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(local_header(ProxyVersion::V2), local);
    }
}
