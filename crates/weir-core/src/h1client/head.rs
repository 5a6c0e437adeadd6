//! Upstream HTTP/1.1 message heads: the request head weir writes, and the response head it reads
//! with the framing rules of RFC 9112 §6.3, strict where a lenient reading would let an upstream
//! desynchronise the connection (request smuggling, response splitting).

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

use crate::bufpool::COPY_MAX;
use crate::headers::{Forwarding, HOP_BY_HOP, write_forwarding};

/// Response heads must be smaller than this (64 KiB), so offsets into one fit in a `u16`.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted in one response head.
const MAX_HEADERS: usize = 128;

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD, 1xx, 204, 304.
    None,
    Length(u64),
    Chunked,
    /// Read until the upstream closes (no length, or a final coding other than chunked).
    Close,
}

/// A parsed response head, ready to hand to the client.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// Hop-by-hop fields are already removed, except on `101 Switching Protocols`, whose
    /// `Connection` and `Upgrade` the client needs.
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once this response's body has been read.
    pub keep_alive: bool,
    /// The idle time after which the upstream said it closes this connection (`Keep-Alive:
    /// timeout=N`, sent by Node.js, Apache and others), in seconds.
    pub idle_hint_secs: Option<u32>,
}

/// A response head weir refuses: the connection is closed and the attempt fails with a 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    #[error("response head of {MAX_HEAD} bytes or more")]
    TooLarge,
}

/// How the request body goes upstream; decides the framing header weir writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body. `content-length: 0` is written for methods that carry one or when the client
    /// sent a length, so an upstream never waits for a body that will not come.
    Empty,
    Length(u64),
    Chunked,
}

/// The request head to write upstream.
#[derive(Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    /// Free of hop-by-hop fields other than an upgrade's `Connection`/`Upgrade`.
    pub headers: &'a HeaderMap,
    /// The forwarding fields weir writes in place of the map's own; `None` when the map
    /// already holds the final ones.
    pub forwarding: Option<&'a Forwarding<'a>>,
    /// What weir knows of the body's trailer fields before the head goes out.
    pub trailers: RequestTrailers<'a>,
}

/// A request body's trailer fields as known when its head is written. Known ones make the body
/// go chunked, the framing with a place for them; a body with a length and trailers nobody
/// announced goes with its length, and its trailers are dropped (RFC 9110 §6.5.1 allows it).
#[derive(Clone, Copy, Debug, Default)]
pub enum RequestTrailers<'a> {
    #[default]
    Unknown,
    /// The client's head announced some (`Trailer`): a streamed body goes chunked.
    Announced,
    /// Those of a buffered body ([`super::UpBody::Full`]).
    Buffered(&'a HeaderMap),
}

/// Writes the request head (origin-form target, HTTP/1.1) into `out`. Framing fields of the
/// map are replaced by the one `framing` asks for.
pub fn encode_request(head: &RequestHead<'_>, framing: RequestFraming, out: &mut Vec<u8>) {
    let RequestHead {
        method, uri, headers, ..
    } = *head;
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let had_length = headers.contains_key(header::CONTENT_LENGTH);
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || head.forwarding.is_some_and(|f| f.writes(name))
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Empty => {
            if had_length || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if let Some(f) = head.forwarding {
        write_forwarding(headers, f, out);
    }
    out.extend_from_slice(b"\r\n");
}

/// Formats `n` in decimal without allocating.
pub fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Writes the chunk-size line of a chunk of `len` bytes.
pub fn put_chunk_size(len: usize, out: &mut impl BufMut) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
    out.put_slice(b"\r\n");
}

/// Where one header field lies in the head's bytes (offsets fit: heads are under 64 KiB).
#[derive(Clone, Copy, Default)]
struct Field {
    name: (u16, u16),
    value: (u16, u16),
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete, read more. On success
/// the head's bytes leave `buf` and the header values share them; whatever follows (the start
/// of the body) stays in `buf`.
///
/// A head of up to [`COPY_MAX`] bytes is copied (one small allocation, from the
/// allocator's per-thread cache); a longer one is split off, no copy. Sharing the read buffer
/// itself would keep all its 8 KiB for as long as the header values live: an HTTP/2 client's
/// response head waits in the h2 crate's queue until the connection's task writes it, so with
/// hundreds of streams in flight every upstream read allocated a fresh buffer. Measured with
/// `LAYOUT=B AB_H2=1 benches/load/ab.sh` both orders: +5-6% requests/s; HTTP/1.1 clients (whose
/// heads are written at once) unchanged within noise.
pub fn parse_response(buf: &mut BytesMut, request_method: &Method) -> Result<Option<ResponseHead>, HeadError> {
    let mut fields = [Field::default(); MAX_HEADERS];
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| -> (u16, u16) { ((s.as_ptr() as usize - base) as u16, s.len() as u16) };
    let (len, status, version, count) = {
        // Uninitialised slots: no 4 KiB of zeroing per response.
        let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, &mut raw);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::Malformed("too many header fields")),
            Err(_) => return Err(HeadError::Malformed("invalid status line or header field")),
        };
        if len >= MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let status = resp
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(HeadError::Malformed("invalid status code"))?;
        let version = match resp.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        for (slot, h) in fields.iter_mut().zip(resp.headers.iter()) {
            *slot = Field {
                name: offset(h.name.as_bytes()),
                value: offset(h.value),
            };
        }
        (len, status, version, resp.headers.len())
    };
    let head = if len <= COPY_MAX {
        let head = Bytes::copy_from_slice(&buf[..len]);
        bytes::Buf::advance(buf, len);
        head
    } else {
        buf.split_to(len).freeze()
    };
    let fields = &fields[..count];
    let bytes_of = |(at, n): (u16, u16)| &head[usize::from(at)..usize::from(at) + usize::from(n)];

    // Framing and connection facts first, from the raw fields.
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked_last = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut connection_named = false;
    let mut idle_hint_secs = None;
    for f in fields {
        let name = bytes_of(f.name);
        let value = bytes_of(f.value);
        if name.eq_ignore_ascii_case(b"content-length") {
            for part in value.split(|b| *b == b',') {
                let n = parse_length(part.trim_ascii()).ok_or(HeadError::Malformed("invalid content-length"))?;
                if content_length.is_some_and(|prev| prev != n) {
                    return Err(HeadError::Malformed("conflicting content-length values"));
                }
                content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            for coding in value
                .split(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|c| !c.is_empty())
            {
                if transfer_encoding && chunked_last {
                    return Err(HeadError::Malformed("chunked is not the final transfer coding"));
                }
                transfer_encoding = true;
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if !token.is_empty() {
                    connection_named = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"keep-alive") {
            idle_hint_secs = keep_alive_timeout(value).or(idle_hint_secs);
        }
    }
    if transfer_encoding && version == Version::HTTP_10 {
        return Err(HeadError::Malformed("transfer-encoding in an HTTP/1.0 response"));
    }
    let mut keep_alive = if version == Version::HTTP_11 {
        !close
    } else {
        keep_alive_token && !close
    };
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || *request_method == Method::HEAD;
    let framing = if no_body {
        Framing::None
    } else if transfer_encoding {
        // Both fields present: the coding wins, and a connection framed two ways is not reused.
        if content_length.is_some() {
            keep_alive = false;
        }
        if chunked_last { Framing::Chunked } else { Framing::Close }
    } else {
        match content_length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }
    };
    if framing == Framing::Close {
        keep_alive = false;
    }

    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    // Room for what the proxy adds (Via, a sticky cookie) without a rehash.
    let mut headers = crate::bufpool::take_headers(count + 2);
    for f in fields {
        let raw_name = bytes_of(f.name);
        if !switching && (is_hop_by_hop(raw_name) || (connection_named && named_in_connection(fields, &head, raw_name)))
        {
            continue;
        }
        // A response with both framings is forwarded without the length it did not follow.
        if transfer_encoding && raw_name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        let name = HeaderName::from_bytes(raw_name).map_err(|_| HeadError::Malformed("invalid header name"))?;
        let (at, n) = (usize::from(f.value.0), usize::from(f.value.1));
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + n))
            .map_err(|_| HeadError::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
        idle_hint_secs,
    }))
}

/// The `timeout` parameter of a `Keep-Alive` field value (`timeout=5, max=100`): whole
/// seconds, as every server that sends it writes them; anything else is ignored.
fn keep_alive_timeout(value: &[u8]) -> Option<u32> {
    value.split(|b| *b == b',').find_map(|param| {
        let (name, secs) = param.trim_ascii().split_at_checked(8)?;
        if !name.eq_ignore_ascii_case(b"timeout=") {
            return None;
        }
        let secs = secs.trim_ascii().strip_prefix(b"\"").unwrap_or(secs.trim_ascii());
        let secs = secs.strip_suffix(b"\"").unwrap_or(secs);
        u32::try_from(parse_length(secs)?).ok()
    })
}

/// Digits only (no sign, no spaces inside), at most 18 of them so it cannot overflow.
fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 18 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// Whether a `Connection` field of the head names `name` (so it is hop-by-hop too).
fn named_in_connection(fields: &[Field], head: &Bytes, name: &[u8]) -> bool {
    let bytes_of = |(at, n): (u16, u16)| &head[usize::from(at)..usize::from(at) + usize::from(n)];
    fields
        .iter()
        .filter(|f| bytes_of(f.name).eq_ignore_ascii_case(b"connection"))
        .flat_map(|f| bytes_of(f.value).split(|b| *b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, method: Method) -> Result<Option<(ResponseHead, BytesMut)>, HeadError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        parse_response(&mut buf, &method).map(|h| h.map(|h| (h, buf)))
    }

    fn ok(raw: &str) -> ResponseHead {
        match parse(raw, Method::GET) {
            Ok(Some((h, _))) => h,
            other => panic!("expected a head, got {other:?}"),
        }
    }

    fn err(raw: &str) -> HeadError {
        match parse(raw, Method::GET) {
            Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// A small head's values do not keep the read buffer: once the body is taken, the buffer
    /// can be reclaimed whole although the head lives on (an HTTP/2 client's response head
    /// waits in a queue). A long head is split off and shares it, and still parses the same.
    #[test]
    fn a_small_head_leaves_the_read_buffer_free_and_a_long_one_parses_too() {
        for (pad, copied) in [(10, true), (2 * COPY_MAX, false)] {
            let raw = format!(
                "HTTP/1.1 200 OK\r\nX-Pad: {}\r\nContent-Length: 5\r\n\r\nhello",
                "p".repeat(pad)
            );
            let mut buf = BytesMut::with_capacity(8192);
            buf.extend_from_slice(raw.as_bytes());
            let head = match parse_response(&mut buf, &Method::GET) {
                Ok(Some(h)) => h,
                other => panic!("{pad}: expected a head, got {other:?}"),
            };
            assert_eq!(head.headers["x-pad"].len(), pad);
            assert_eq!(head.framing, Framing::Length(5));
            assert_eq!(&buf[..], b"hello");
            buf.clear();
            assert_eq!(buf.try_reclaim(8192), copied, "{pad}");
            assert_eq!(head.headers["x-pad"].len(), pad);
        }
    }

    #[test]
    fn content_length_response_keeps_the_body_in_the_buffer() {
        let (h, rest) = parse(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            Method::GET,
        )
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no head"));
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert_eq!(h.headers.get("x-a").map(|v| v.as_bytes()), Some(&b"1"[..]));
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert!(matches!(parse("HTTP/1.1 200 OK\r\ncontent-len", Method::GET), Ok(None)));
        assert!(matches!(parse("HTTP/1.1 200 OK\r\n\r", Method::GET), Ok(None)));
    }

    #[test]
    fn oversized_head_is_refused() {
        let raw = format!("HTTP/1.1 200 OK\r\nx-big: {}", "a".repeat(MAX_HEAD + 1));
        assert_eq!(err(&raw), HeadError::TooLarge);
    }

    #[test]
    fn chunked_and_close_delimited() {
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").framing,
            Framing::Chunked
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\nTransfer-Encoding: CHUNKED\r\n\r\n").framing,
            Framing::Chunked
        );
        let h = ok("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);
        // A final coding other than chunked is read until close.
        let h = ok("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        assert!(!h.keep_alive);
    }

    #[test]
    fn chunked_must_be_final() {
        assert!(matches!(
            err("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n"),
            HeadError::Malformed(_)
        ));
        assert!(matches!(
            err("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }

    #[test]
    fn both_framings_use_chunked_drop_the_length_and_close() {
        let h = ok("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.keep_alive);
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        assert!(!h.headers.contains_key(header::TRANSFER_ENCODING));
    }

    #[test]
    fn content_length_must_be_one_valid_number() {
        for bad in ["-1", "+5", "1 2", "0x10", "", "99999999999999999999", "5, 6"] {
            let raw = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert!(matches!(err(&raw), HeadError::Malformed(_)), "accepted {bad:?}");
        }
        assert!(matches!(
            err("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n"),
            HeadError::Malformed(_)
        ));
        // Repeats of one value are the same length (RFC 9110 §8.6).
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n").framing,
            Framing::Length(5)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\n").framing,
            Framing::Length(5)
        );
        assert_eq!(
            ok("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").framing,
            Framing::None
        );
    }

    #[test]
    fn bodiless_statuses_and_head_requests() {
        for status in ["204 No Content", "304 Not Modified", "100 Continue", "103 Early Hints"] {
            let raw = format!("HTTP/1.1 {status}\r\ncontent-length: 10\r\n\r\n");
            assert_eq!(ok(&raw).framing, Framing::None, "{status}");
        }
        let h = parse("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", Method::HEAD)
            .ok()
            .flatten()
            .map(|(h, _)| h);
        assert_eq!(h.map(|h| (h.framing, h.keep_alive)), Some((Framing::None, true)));
        let h = parse("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", Method::HEAD)
            .ok()
            .flatten()
            .map(|(h, _)| h.framing);
        assert_eq!(h, Some(Framing::None));
    }

    #[test]
    fn connection_persistence_by_version() {
        assert!(!ok("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").keep_alive);
        assert!(!ok("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").keep_alive);
        assert!(ok("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n").keep_alive);
        assert!(matches!(
            err("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
            HeadError::Malformed(_)
        ));
    }

    #[test]
    fn the_upstreams_keep_alive_timeout_is_read() {
        let hint = |field: &str| ok(&format!("HTTP/1.1 200 OK\r\n{field}content-length: 0\r\n\r\n")).idle_hint_secs;
        assert_eq!(hint("Keep-Alive: timeout=5\r\n"), Some(5));
        assert_eq!(hint("keep-alive: max=100, Timeout = 5\r\n"), None);
        assert_eq!(hint("keep-alive: max=100, timeout=15\r\n"), Some(15));
        assert_eq!(hint("keep-alive: timeout=\"2\"\r\n"), Some(2));
        assert_eq!(hint("keep-alive: timeout=0\r\n"), Some(0));
        assert_eq!(hint(""), None);
        for junk in [
            "timeout=",
            "timeout=-1",
            "timeout=1.5",
            "timeout=99999999999",
            "max=5",
            "timeouts=3",
        ] {
            assert_eq!(hint(&format!("keep-alive: {junk}\r\n")), None, "{junk}");
        }
        // A later field that says nothing usable does not erase an earlier one.
        assert_eq!(hint("keep-alive: timeout=4\r\nkeep-alive: max=3\r\n"), Some(4));
    }

    #[test]
    fn hop_by_hop_fields_are_removed_except_for_101() {
        let h = ok(
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, x-secret\r\nx-secret: 1\r\nkeep-alive: timeout=5\r\n\
             upgrade: h2c\r\nproxy-connection: x\r\ntrailer: x\r\nx-kept: y\r\ncontent-length: 0\r\n\r\n",
        );
        let names: Vec<&str> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "content-length"]);
        let h = ok("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n");
        assert!(h.headers.contains_key(header::UPGRADE));
        assert!(h.headers.contains_key(header::CONNECTION));
        assert_eq!(h.framing, Framing::None);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/2.0 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a : 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\n\r\n",
            "ICY 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nx-a: b\0c\r\n\r\n",
        ] {
            assert!(matches!(err(bad), HeadError::Malformed(_)), "accepted {bad:?}");
        }
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(matches!(
            err(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")),
            HeadError::Malformed(_)
        ));
    }

    fn encode(method: &Method, uri: &Uri, headers: &HeaderMap, framing: RequestFraming, out: &mut Vec<u8>) {
        let head = RequestHead {
            method,
            uri,
            headers,
            forwarding: None,
            trailers: RequestTrailers::Unknown,
        };
        encode_request(&head, framing, out);
    }

    #[test]
    fn forwarding_fields_replace_the_maps_own() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.9"));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("gopher"));
        let proto = HeaderValue::from_static("http");
        let f = Forwarding {
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            proto: &proto,
            host: None,
            version: http::Version::HTTP_11,
            fields: weir_config::ForwardingHeaders::ALL,
        };
        let uri = Uri::from_static("/");
        let head = RequestHead {
            method: &Method::GET,
            uri: &uri,
            headers: &headers,
            forwarding: Some(&f),
            trailers: RequestTrailers::Unknown,
        };
        let mut out = Vec::new();
        encode_request(&head, RequestFraming::Empty, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 10.0.0.9, 127.0.0.1\r\nx-forwarded-proto: http\r\n\
             forwarded: for=127.0.0.1;proto=http\r\nvia: 1.1 weir\r\n\r\n"
        );
    }

    #[test]
    fn request_head_framing() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a.example"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        let uri = Uri::from_static("/p?q=1");
        let mut out = Vec::new();
        encode(&Method::POST, &uri, &headers, RequestFraming::Length(12), &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST /p?q=1 HTTP/1.1\r\nhost: a.example\r\ncontent-length: 12\r\n\r\n"
        );
        out.clear();
        encode(&Method::PUT, &uri, &headers, RequestFraming::Chunked, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "PUT /p?q=1 HTTP/1.1\r\nhost: a.example\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        out.clear();
        headers.remove(header::CONTENT_LENGTH);
        encode(
            &Method::GET,
            &Uri::from_static("/"),
            &headers,
            RequestFraming::Empty,
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "GET / HTTP/1.1\r\nhost: a.example\r\n\r\n"
        );
        out.clear();
        encode(
            &Method::POST,
            &Uri::from_static("/"),
            &headers,
            RequestFraming::Empty,
            &mut out,
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "POST / HTTP/1.1\r\nhost: a.example\r\ncontent-length: 0\r\n\r\n"
        );
    }

    #[test]
    fn numbers_are_formatted_exactly() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        let mut out = Vec::new();
        put_chunk_size(0x1a2f, &mut out);
        put_chunk_size(0, &mut out);
        assert_eq!(out, b"1a2f\r\n0\r\n");
    }

    mod properties {
        use super::*;
        use crate::http1_gen::{BodyKind, broken, response_head};
        use proptest::prelude::*;

        proptest! {
            /// A valid head is parsed with its status, fields and framing; the body's first
            /// bytes stay in the buffer. A response to HEAD, a 204 and a 304 have no body
            /// whatever they say.
            #[test]
            fn valid_head_is_parsed(head in response_head(), body in prop::collection::vec(any::<u8>(), 0..16), to_head in any::<bool>()) {
                let mut buf = BytesMut::from(&head.bytes[..]);
                buf.extend_from_slice(&body);
                let method = if to_head { Method::HEAD } else { Method::GET };
                let parsed = parse_response(&mut buf, &method);
                let Ok(Some(got)) = parsed else {
                    return Err(TestCaseError::fail(format!("not parsed: {parsed:?}")));
                };
                prop_assert_eq!(got.status.as_u16(), head.status);
                prop_assert_eq!(got.version, Version::HTTP_11);
                let (framing, keep_alive) = match head.body {
                    _ if to_head || head.status == 204 || head.status == 304 => {
                        (Framing::None, head.body != BodyKind::UntilClose)
                    }
                    BodyKind::Length(0) => (Framing::None, true),
                    BodyKind::Length(n) => (Framing::Length(n), true),
                    BodyKind::Chunked => (Framing::Chunked, true),
                    BodyKind::UntilClose => (Framing::Close, false),
                };
                prop_assert_eq!(got.framing, framing);
                prop_assert_eq!(got.keep_alive, keep_alive);
                let fields: Vec<(String, &[u8])> = got
                    .headers
                    .iter()
                    .filter(|(n, _)| *n != header::CONTENT_LENGTH)
                    .map(|(n, v)| (n.as_str().to_string(), v.as_bytes()))
                    .collect();
                // HeaderMap groups values by name, in the order each name first appeared.
                let mut expected: Vec<(String, &[u8])> = Vec::new();
                let mut names: Vec<String> = Vec::new();
                for (n, _) in &head.fields {
                    let n = n.to_ascii_lowercase();
                    if !names.contains(&n) {
                        names.push(n);
                    }
                }
                for n in names {
                    for (name, v) in &head.fields {
                        if name.eq_ignore_ascii_case(&n) {
                            expected.push((n.clone(), v.as_bytes()));
                        }
                    }
                }
                prop_assert_eq!(fields, expected);
                prop_assert_eq!(&buf[..], &body[..]);
            }

            /// A head still arriving is never refused before its last byte, and nothing of it
            /// is consumed until then.
            #[test]
            fn valid_head_is_incomplete_until_its_last_byte(head in response_head()) {
                for end in 0..head.bytes.len() {
                    let mut buf = BytesMut::from(&head.bytes[..end]);
                    prop_assert!(matches!(parse_response(&mut buf, &Method::GET), Ok(None)), "at {}", end);
                    prop_assert_eq!(&buf[..], &head.bytes[..end]);
                }
            }

            /// A broken head gets a verdict and never a panic; a parsed one takes only its own
            /// bytes off the buffer, an incomplete one none.
            #[test]
            fn broken_head_gets_a_verdict(input in broken(response_head().prop_map(|h| h.bytes))) {
                let mut buf = BytesMut::from(&input[..]);
                match parse_response(&mut buf, &Method::GET) {
                    Ok(Some(_)) => prop_assert!(input.ends_with(&buf)),
                    Ok(None) => prop_assert_eq!(&buf[..], &input[..]),
                    Err(_) => {}
                }
            }
        }
    }
}
