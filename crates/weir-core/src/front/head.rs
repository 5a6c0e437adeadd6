//! Validation of one HTTP/1 request head, stricter than hyper on every rule that matters for
//! request smuggling and for what a gateway may forward. A pure function over bytes, so every rule
//! is unit-tested without a socket.

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
    if limits.max_headers < STACK_HEADERS {
        let mut headers = [httparse::EMPTY_HEADER; STACK_HEADERS];
        check_with(buf, limits, &mut headers[..limits.max_headers + 1])
    } else {
        let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers + 1];
        check_with(buf, limits, &mut headers)
    }
}

fn check_with<'b>(
    buf: &'b [u8],
    limits: &HeadLimits,
    headers: &mut [httparse::Header<'b>],
) -> Result<HeadStatus, Reject> {
    let mut req = httparse::Request::new(headers);
    let status = match req.parse(buf) {
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
    check_target(method, path)?;
    let http11 = req.version == Some(1);

    let mut hosts = 0usize;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut connection_upgrade = false;
    let mut has_upgrade = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if h.value.is_empty() || http::uri::Authority::try_from(h.value).is_err() {
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
            connection_upgrade |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case("upgrade") {
            has_upgrade = true;
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
    Ok(HeadStatus::Complete(HeadInfo {
        len,
        framing,
        upgrade: connection_upgrade && has_upgrade && http11,
    }))
}

/// The request target must be origin-form, `*` for OPTIONS, absolute-form, or authority-form for
/// CONNECT; never with a fragment.
fn check_target(method: &str, path: &str) -> Result<(), Reject> {
    if path.contains('#') {
        return Err(Reject::bad("fragment in the request target"));
    }
    let ok = if method == "CONNECT" {
        http::uri::Authority::try_from(path).is_ok()
    } else if path == "*" {
        method == "OPTIONS"
    } else if path.starts_with('/') {
        http::uri::PathAndQuery::try_from(path).is_ok()
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
                upgrade: false
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
}
