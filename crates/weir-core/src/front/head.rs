//! Validation of one HTTP/1 request head, stricter than hyper on every rule that matters for
//! request smuggling and for what a gateway may forward. A pure function over bytes, so every rule
//! is unit-tested without a socket.

use std::mem::MaybeUninit;

/// Why a head was refused: the status the gateway answers and a short reason for the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    pub status: u16,
    pub reason: &'static str,
}

impl Reject {
    pub const fn bad(reason: &'static str) -> Self {
        Reject { status: 400, reason }
    }

    /// The status's reason phrase (`Payload Too Large`).
    pub fn phrase(&self) -> &'static str {
        http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Bad Request")
    }

    /// The answer's text, the same from both fronts: `payload too large: request body too large`.
    pub fn message(&self) -> String {
        format!("{}: {}", self.phrase().to_ascii_lowercase(), self.reason)
    }

    /// Counts the refusal (`weir_requests_refused_total`) and writes its access-log line;
    /// `bytes_out` is the size of the answer.
    pub fn record(&self, shared: &crate::state::Shared, info: &crate::proxy::ConnInfo, bytes_out: u64) {
        crate::metrics::global().front_refused(&info.listener, self.status);
        crate::access_log::refused(shared, info, self.status, bytes_out);
    }
}

/// How the body after a valid head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Fixed(u64),
    Chunked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadInfo {
    /// Bytes of the head, including the final empty line.
    pub len: usize,
    pub framing: BodyFraming,
    /// `Connection: upgrade` + `Upgrade` (e.g. WebSocket): the connection may switch protocols.
    pub upgrade: bool,
    /// An HTTP/1.0 request (else HTTP/1.1).
    pub http10: bool,
    /// The client lets the connection carry another request (HTTP/1.1 unless `Connection:
    /// close`; HTTP/1.0 only with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1: the client waits for a `100` before its body.
    pub expect_continue: bool,
}

/// Where the parts of a valid head lie in its bytes, so that the request can be built from
/// slices of one shared buffer (no copy per header value) without parsing it twice.
#[derive(Debug)]
pub struct Spans {
    pub method: (u32, u32),
    pub target: (u32, u32),
    stack: [FieldSpan; STACK_SPANS],
    count: usize,
    heap: Vec<FieldSpan>,
}

/// One header field: offset and length of its name and of its value.
#[derive(Debug, Clone, Copy, Default)]
pub struct FieldSpan {
    pub name: (u32, u32),
    pub value: (u32, u32),
}

const STACK_SPANS: usize = 32;

impl Default for Spans {
    fn default() -> Self {
        Spans {
            method: (0, 0),
            target: (0, 0),
            stack: [FieldSpan::default(); STACK_SPANS],
            count: 0,
            heap: Vec::new(),
        }
    }
}

impl Spans {
    fn push(&mut self, f: FieldSpan) {
        if self.count < STACK_SPANS {
            self.stack[self.count] = f;
        } else {
            self.heap.push(f);
        }
        self.count += 1;
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn fields(&self) -> impl Iterator<Item = &FieldSpan> {
        self.stack[..self.count.min(STACK_SPANS)].iter().chain(self.heap.iter())
    }
}

#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    /// 0 = unlimited.
    pub max_body_bytes: u64,
}

/// What is known about a head that may still be arriving.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadStatus {
    Partial,
    Complete(HeadInfo),
}

const STACK_HEADERS: usize = 128;

/// Parses and validates the head at the start of `buf`.
pub fn check_head(buf: &[u8], limits: &HeadLimits) -> Result<HeadStatus, Reject> {
    parse_head(buf, limits, None)
}

/// [`check_head`], also recording where the method, target and fields of a complete head lie.
pub fn parse_head(buf: &[u8], limits: &HeadLimits, spans: Option<&mut Spans>) -> Result<HeadStatus, Reject> {
    // Uninitialised slots: no 4 KiB of zeroing per request.
    if limits.max_headers < STACK_HEADERS {
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        check_with(buf, limits, &mut headers[..limits.max_headers + 1], spans)
    } else {
        let mut headers = Vec::new();
        headers.resize_with(limits.max_headers + 1, MaybeUninit::uninit);
        check_with(buf, limits, &mut headers, spans)
    }
}

/// RFC 9110 §7.2's `Host = uri-host [ ":" port ]` (RFC 3986 §3.2.2: an IP literal in brackets,
/// or a reg-name of unreserved, sub-delim and percent-encoded bytes; the port all digits).
/// Checked in place: building an `http::uri::Authority` copied the value into a new
/// allocation on every request.
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &v[1..end];
        let ok = !literal.is_empty()
            && literal
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b":.-_~!$&'()*+,;=".contains(&b));
        if !ok {
            return false;
        }
        (&v[..=end], &v[end + 1..])
    } else {
        match memchr::memchr(b':', v) {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        }
    };
    if host.is_empty() {
        return false;
    }
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    if !port_ok {
        return false;
    }
    if host.first() == Some(&b'[') {
        return true;
    }
    let mut i = 0;
    while let Some(&b) = host.get(i) {
        if b == b'%' {
            let hex = |j: usize| host.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return false;
            }
            i += 3;
        } else if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

fn check_with<'b>(
    buf: &'b [u8],
    limits: &HeadLimits,
    headers: &mut [MaybeUninit<httparse::Header<'b>>],
    spans: Option<&mut Spans>,
) -> Result<HeadStatus, Reject> {
    let mut req = httparse::Request::new(&mut []);
    let status = match req.parse_with_uninit_headers(buf, headers) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject {
                status: 431,
                reason: "too many header fields",
            });
        }
        Err(httparse::Error::Version) => return Err(Reject::bad("invalid HTTP version")),
        Err(httparse::Error::Token) => return Err(Reject::bad("invalid method or request line")),
        Err(httparse::Error::HeaderName) => return Err(Reject::bad("invalid header field name")),
        Err(httparse::Error::HeaderValue) => return Err(Reject::bad("invalid header field value")),
        Err(_) => return Err(Reject::bad("malformed request head")),
    };
    let len = match status {
        httparse::Status::Partial => {
            if buf.len() > limits.max_header_bytes {
                let line_done = buf.iter().take(limits.max_uri_bytes + 64).any(|&b| b == b'\n');
                return Err(if line_done {
                    Reject {
                        status: 431,
                        reason: "request header fields too large",
                    }
                } else {
                    Reject {
                        status: 414,
                        reason: "URI too long",
                    }
                });
            }
            return Ok(HeadStatus::Partial);
        }
        httparse::Status::Complete(len) => len,
    };
    let path = req.path.unwrap_or("");
    if path.len() > limits.max_uri_bytes {
        return Err(Reject {
            status: 414,
            reason: "URI too long",
        });
    }
    if len > limits.max_header_bytes {
        return Err(Reject {
            status: 431,
            reason: "request header fields too large",
        });
    }
    let method = req.method.unwrap_or("");
    // With spans the request is built from the head, and `Uri::from_maybe_shared` checks an
    // origin-form target there without copying it; checking it here too would copy it.
    check_target(method, path, spans.is_none())?;
    let http11 = req.version == Some(1);

    let mut hosts = 0usize;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut connection_upgrade = false;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut expect_continue = false;
    let mut has_upgrade = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if !valid_host(h.value) {
                return Err(Reject::bad("invalid Host header"));
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(Reject::bad("more than one Content-Length"));
            }
            content_length = Some(parse_content_length(h.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !http11 {
                return Err(Reject::bad("Transfer-Encoding in an HTTP/1.0 request"));
            }
            if transfer_encoding {
                return Err(Reject::bad("more than one Transfer-Encoding"));
            }
            if !h.value.eq_ignore_ascii_case(b"chunked") {
                return Err(Reject::bad("Transfer-Encoding other than chunked"));
            }
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
                connection_close |= token.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue |= http11 && crate::headers::expects_continue(h.value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            has_upgrade |= crate::headers::offers_upgrade(h.value);
        }
        if h.value.iter().any(|&b| b == 0x7f || (b < 0x20 && b != b'\t')) {
            return Err(Reject::bad("control character in a header value"));
        }
    }
    if http11 && hosts == 0 {
        return Err(Reject::bad("missing Host header"));
    }
    if hosts > 1 {
        return Err(Reject::bad("more than one Host header"));
    }
    let framing = match (content_length, transfer_encoding) {
        (Some(_), true) => return Err(Reject::bad("both Content-Length and Transfer-Encoding")),
        (Some(0), false) | (None, false) => BodyFraming::None,
        (Some(n), false) => BodyFraming::Fixed(n),
        (None, true) => BodyFraming::Chunked,
    };
    if let BodyFraming::Fixed(n) = framing
        && limits.max_body_bytes > 0
        && n > limits.max_body_bytes
    {
        return Err(Reject {
            status: 413,
            reason: "request body too large",
        });
    }
    if let Some(spans) = spans {
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
        spans.method = at(method.as_bytes());
        spans.target = at(path.as_bytes());
        spans.count = 0;
        spans.heap.clear();
        for h in req.headers.iter() {
            spans.push(FieldSpan {
                name: at(h.name.as_bytes()),
                value: at(h.value),
            });
        }
    }
    Ok(HeadStatus::Complete(HeadInfo {
        len,
        framing,
        upgrade: connection_upgrade && has_upgrade && http11,
        http10: !http11,
        keep_alive: if http11 {
            !connection_close
        } else {
            connection_keep_alive && !connection_close
        },
        expect_continue,
    }))
}

/// What a (non-extended) CONNECT gets, from both fronts.
pub const CONNECT_REFUSED: Reject = Reject {
    status: 501,
    reason: "weir does not carry CONNECT tunnels",
};

/// The request target must be origin-form, `*` for OPTIONS, or absolute-form (CONNECT is
/// refused); never with a fragment. An origin-form target's characters are checked only with
/// `check_origin` (`http::uri::PathAndQuery::try_from` copies the target).
fn check_target(method: &str, path: &str, check_origin: bool) -> Result<(), Reject> {
    if path.contains('#') {
        return Err(Reject::bad("fragment in the request target"));
    }
    if method == "CONNECT" {
        // A tunnel to wherever the client names is a forward proxy's job; forwarding the
        // request as an ordinary one would leave the client believing in a tunnel that an
        // upstream's `2xx` never opened.
        return Err(CONNECT_REFUSED);
    }
    let ok = if path == "*" {
        method == "OPTIONS"
    } else if path.starts_with('/') {
        !check_origin || http::uri::PathAndQuery::try_from(path).is_ok()
    } else {
        let lower = path.get(..8).unwrap_or(path).to_ascii_lowercase();
        (lower.starts_with("http://") || lower.starts_with("https://")) && http::Uri::try_from(path).is_ok()
    };
    if ok {
        Ok(())
    } else {
        Err(Reject::bad("invalid request target"))
    }
}

/// `1*DIGIT` and nothing else: no sign, no spaces, no list.
fn parse_content_length(value: &[u8]) -> Result<u64, Reject> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(Reject::bad("invalid Content-Length"));
    }
    let mut n: u64 = 0;
    for &b in value {
        n = n * 10 + u64::from(b - b'0');
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn host_values() {
        for ok in [
            "a",
            "example.com",
            "example.com:8080",
            "example.com:",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "[v1.fe80::a+en1]",
            "xn--bcher-kva.example",
            "a%20b",
            "a_b~c!$&'()*+,;=",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "a b",
            "a/b",
            "a?b",
            "a#b",
            "user@host",
            "a:b",
            "a:80:80",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:8x",
            "a%2",
            "a%zz",
            "a\"b",
            "a<b>",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 1024,
        max_headers: 8,
        max_uri_bytes: 256,
        max_body_bytes: 0,
    };

    fn check(raw: &str) -> Result<HeadStatus, Reject> {
        check_head(raw.as_bytes(), &LIMITS)
    }

    fn rejected(raw: &str) -> u16 {
        match check(raw) {
            Err(r) => r.status,
            Ok(s) => panic!("accepted {raw:?}: {s:?}"),
        }
    }

    #[test]
    fn accepts_plain_requests() {
        let raw = "GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            check(raw),
            Ok(HeadStatus::Complete(HeadInfo {
                len: raw.len(),
                framing: BodyFraming::None,
                upgrade: false,
                http10: false,
                keep_alive: true,
                expect_continue: false,
            }))
        );
        let raw = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        assert!(matches!(
            check(raw),
            Ok(HeadStatus::Complete(HeadInfo {
                framing: BodyFraming::Fixed(5),
                ..
            }))
        ));
        let raw = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert!(matches!(
            check(raw),
            Ok(HeadStatus::Complete(HeadInfo {
                framing: BodyFraming::Chunked,
                ..
            }))
        ));
        let raw = "GET / HTTP/1.0\r\n\r\n";
        assert!(matches!(check(raw), Ok(HeadStatus::Complete(_))));
        let raw = "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(check(raw), Ok(HeadStatus::Complete(_))));
        let raw = "GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(check(raw), Ok(HeadStatus::Complete(_))));
    }

    #[test]
    fn partial_until_blank_line() {
        assert_eq!(check("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(HeadStatus::Partial));
    }

    #[test]
    fn detects_websocket_upgrade() {
        let raw = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(matches!(
            check(raw),
            Ok(HeadStatus::Complete(HeadInfo { upgrade: true, .. }))
        ));
    }

    #[test]
    fn rejects_cl_and_te() {
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
            400
        );
    }

    #[test]
    fn rejects_te_other_than_chunked() {
        for te in [
            "gzip",
            "gzip, chunked",
            "chunked, gzip",
            "chunked ;",
            "xchunked",
            "identity",
        ] {
            assert_eq!(
                rejected(&format!(
                    "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\n\r\n"
                )),
                400,
                "{te}"
            );
        }
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
    }

    #[test]
    fn rejects_te_on_http10() {
        assert_eq!(rejected("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
    }

    #[test]
    fn rejects_bad_content_length() {
        for cl in ["+1", "-1", "1, 1", "1 1", "0x10", "", "99999999999999999999"] {
            assert_eq!(
                rejected(&format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {cl}\r\n\r\n")),
                400,
                "{cl}"
            );
        }
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        assert_eq!(
            rejected("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            400
        );
    }

    #[test]
    fn rejects_obs_fold() {
        assert_eq!(rejected("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"), 400);
    }

    #[test]
    fn rejects_ctl_in_values() {
        assert_eq!(rejected("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n"), 400);
    }

    #[test]
    fn rejects_space_before_colon() {
        assert_eq!(rejected("GET / HTTP/1.1\r\nHost : x\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/1.1\r\nHost: x\r\nX-A\t: b\r\n\r\n"), 400);
    }

    #[test]
    fn rejects_missing_or_duplicate_host() {
        assert_eq!(rejected("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 400);
    }

    #[test]
    fn rejects_invalid_method_and_version() {
        assert_eq!(rejected("G(T / HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/1.2\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(rejected("GET / HTTP/2.0\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(rejected("GET / FOO\r\nHost: x\r\n\r\n"), 400);
    }

    #[test]
    fn rejects_fragment_and_bad_targets() {
        assert_eq!(rejected("GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(rejected("GET a HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        assert_eq!(rejected("GET * HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
    }

    #[test]
    fn limits_give_431_and_414() {
        let many: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(rejected(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")), 431);
        let big = "a".repeat(1100);
        assert_eq!(rejected(&format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: {big}\r\n")), 431);
        let long = "a".repeat(300);
        assert_eq!(rejected(&format!("GET /{long} HTTP/1.1\r\nHost: x\r\n\r\n")), 414);
        let huge = "a".repeat(1100);
        assert_eq!(rejected(&format!("GET /{huge}")), 414);
    }

    #[test]
    fn body_limit_gives_413() {
        let limits = HeadLimits {
            max_body_bytes: 10,
            ..LIMITS
        };
        let r = check_head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n", &limits);
        assert_eq!(r.err().map(|r| r.status), Some(413));
    }

    fn info(raw: &str) -> HeadInfo {
        match check(raw) {
            Ok(HeadStatus::Complete(i)) => i,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn keep_alive_follows_version_and_connection_tokens() {
        assert!(info("GET / HTTP/1.1\r\nHost: x\r\n\r\n").keep_alive);
        assert!(!info("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n\r\n").keep_alive);
        assert!(!info("GET / HTTP/1.0\r\n\r\n").keep_alive);
        let ka10 = info("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(ka10.keep_alive && ka10.http10);
        assert!(!info("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n").keep_alive);
    }

    #[test]
    fn expect_continue_only_on_http11() {
        let raw = "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
        assert!(info(raw).expect_continue);
        let raw = "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
        assert!(!info(raw).expect_continue);
    }

    #[test]
    fn spans_locate_method_target_and_every_field() {
        let many: String = (0..40).map(|i| format!("X-{i}: v{i}\r\n")).collect();
        let raw = format!("PUT /a?b HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        let limits = HeadLimits {
            max_headers: 64,
            ..LIMITS
        };
        let mut spans = Spans::default();
        assert!(matches!(
            parse_head(raw.as_bytes(), &limits, Some(&mut spans)),
            Ok(HeadStatus::Complete(_))
        ));
        let at = |(o, l): (u32, u32)| &raw[o as usize..(o + l) as usize];
        assert_eq!(at(spans.method), "PUT");
        assert_eq!(at(spans.target), "/a?b");
        assert_eq!(spans.len(), 41);
        let fields: Vec<(&str, &str)> = spans.fields().map(|f| (at(f.name), at(f.value))).collect();
        assert_eq!(fields[0], ("Host", "x"));
        assert_eq!(fields[40], ("X-39", "v39"));
    }

    mod properties {
        use super::*;
        use crate::http1_gen::{broken, request_head};
        use proptest::prelude::*;

        const ROOMY: HeadLimits = HeadLimits {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_bytes: 8192,
            max_body_bytes: 0,
        };

        /// Parses `buf` with spans, checking that every span lies inside it.
        fn parse_spanned(buf: &[u8], limits: &HeadLimits) -> Result<HeadStatus, Reject> {
            let mut spans = Spans::default();
            let status = parse_head(buf, limits, Some(&mut spans))?;
            if let HeadStatus::Complete(info) = &status {
                assert!(info.len <= buf.len());
                let inside = |(at, n): (u32, u32)| (at + n) as usize <= info.len;
                assert!(inside(spans.method) && inside(spans.target));
                assert!(spans.fields().all(|f| inside(f.name) && inside(f.value)));
            }
            Ok(status)
        }

        proptest! {
            /// A valid head is accepted whole, with its method, target and fields where they
            /// are, the body's first bytes after it left alone.
            #[test]
            fn valid_head_is_accepted_and_located(head in request_head(), body in prop::collection::vec(any::<u8>(), 0..16)) {
                let mut buf = head.bytes.clone();
                buf.extend_from_slice(&body);
                let mut spans = Spans::default();
                let status = parse_head(&buf, &ROOMY, Some(&mut spans));
                let Ok(HeadStatus::Complete(info)) = status else {
                    return Err(TestCaseError::fail(format!("not accepted: {status:?}")));
                };
                prop_assert_eq!(info.len, head.bytes.len());
                prop_assert!(info.keep_alive && !info.http10 && !info.upgrade);
                let length = head.fields.iter().find(|(n, _)| n == "Content-Length").map(|(_, v)| v.parse::<u64>());
                let framing = match length {
                    Some(Ok(0)) | None => BodyFraming::None,
                    Some(Ok(n)) => BodyFraming::Fixed(n),
                    Some(Err(e)) => return Err(TestCaseError::fail(e.to_string())),
                };
                prop_assert_eq!(info.framing, framing);
                let at = |(at, n): (u32, u32)| &buf[at as usize..(at + n) as usize];
                prop_assert_eq!(at(spans.method), head.method.as_bytes());
                prop_assert_eq!(at(spans.target), head.target.as_bytes());
                let fields: Vec<(&[u8], &[u8])> = spans.fields().map(|f| (at(f.name), at(f.value))).collect();
                let expected: Vec<(&[u8], &[u8])> = head.fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
                prop_assert_eq!(fields, expected);
                prop_assert_eq!(check_head(&buf, &ROOMY), Ok(HeadStatus::Complete(info)));
            }

            /// A valid head arriving a byte at a time is never refused before its end: a slow
            /// client gets the same answer as a fast one.
            #[test]
            fn valid_head_is_partial_until_its_last_byte(head in request_head()) {
                for end in 0..head.bytes.len() {
                    prop_assert_eq!(check_head(&head.bytes[..end], &ROOMY), Ok(HeadStatus::Partial), "at {}", end);
                }
            }

            /// Tight limits refuse a valid head only with a limit's status, never as malformed.
            #[test]
            fn limits_refuse_with_their_own_status(head in request_head(), max_header_bytes in 16usize..600, max_headers in 0usize..12, max_uri_bytes in 1usize..64, max_body_bytes in 0u64..1_000_000) {
                let limits = HeadLimits { max_header_bytes, max_headers, max_uri_bytes, max_body_bytes };
                match parse_spanned(&head.bytes, &limits) {
                    Ok(_) => {}
                    Err(r) => prop_assert!([413, 414, 431].contains(&r.status), "{:?}", r),
                }
            }

            /// A broken head gets a verdict and never a panic: partial, accepted with spans
            /// inside it, or refused with a 4xx the gateway answers. The check without spans
            /// (which also validates an origin-form target's characters) refuses whatever the
            /// one with spans refuses, with the same status and for the same reason, unless
            /// the target is broken too: that check looks at it first (a head with a bad target
            /// and a bad `Content-Length` is refused for its target there).
            #[test]
            fn broken_head_gets_a_verdict(buf in broken(request_head().prop_map(|h| h.bytes))) {
                let spanned = parse_spanned(&buf, &ROOMY);
                let plain = check_head(&buf, &ROOMY);
                match &spanned {
                    Err(r) => {
                        prop_assert!([400, 413, 414, 431].contains(&r.status), "{:?}", r);
                        match &plain {
                            Err(p) if p.reason == "invalid request target" => prop_assert_eq!(p.status, 400),
                            _ => prop_assert_eq!(&plain, &spanned),
                        }
                    }
                    Ok(HeadStatus::Partial) => prop_assert_eq!(&plain, &spanned),
                    Ok(HeadStatus::Complete(_)) => prop_assert!(plain.is_err() || plain == spanned),
                }
            }
        }
    }
}
