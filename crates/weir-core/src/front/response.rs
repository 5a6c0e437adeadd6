//! Response heads as weir's HTTP/1 server writes them: status line, the response's fields less
//! the hop-by-hop and framing ones, then the framing and `Connection` fields weir decides, and
//! a `Date` when the upstream sent none.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use http::header::{self, HeaderMap};

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body may follow: a response to HEAD, 1xx, 204, 304. A `Content-Length` of the
    /// response (HEAD, 304) is passed through as it is.
    Bodiless,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, unknown length).
    Close,
}

/// The `Connection` field weir writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// HTTP/1.1 keep-alive: nothing to say.
    Default,
    KeepAlive,
    Close,
    /// `101 Switching Protocols`: the response's own `Connection` and `Upgrade` go out.
    Upgrade,
}

pub fn encode_head(status: StatusCode, headers: &HeaderMap, framing: Framing, conn: Connection, out: &mut Vec<u8>) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let keep_length = framing == Framing::Bodiless && !(status.is_informational() || status == StatusCode::NO_CONTENT);
    let mut has_date = false;
    for (name, value) in headers {
        if *name == header::CONTENT_LENGTH {
            if !keep_length {
                continue;
            }
        } else if *name == header::TRANSFER_ENCODING
            || ((*name == header::CONNECTION || *name == header::UPGRADE) && conn != Connection::Upgrade)
            || name.as_str() == "keep-alive"
        {
            continue;
        }
        has_date |= *name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Bodiless | Framing::Close => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(crate::h1client::head::itoa(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    match conn {
        Connection::Default | Connection::Upgrade => {}
        Connection::KeepAlive => out.extend_from_slice(b"connection: keep-alive\r\n"),
        Connection::Close => out.extend_from_slice(b"connection: close\r\n"),
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        put_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The current second and its IMF-fixdate, formatted once per second per thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
}

fn put_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == text.len() {
                text.copy_from_slice(s.as_bytes());
                *at = secs;
            }
        }
        out.extend_from_slice(text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(status: u16, headers: &[(&str, &str)], framing: Framing, conn: Connection) -> String {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap_or(header::WARNING),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        let mut out = Vec::new();
        encode_head(
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            &map,
            framing,
            conn,
            &mut out,
        );
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn writes_framing_and_drops_the_responses_own() {
        let h = head(
            200,
            &[
                ("content-length", "7"),
                ("transfer-encoding", "chunked"),
                ("x-a", "1"),
                ("date", "D"),
            ],
            Framing::Length(3),
            Connection::Default,
        );
        assert_eq!(h, "HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: D\r\ncontent-length: 3\r\n\r\n");
        let h = head(404, &[("date", "D")], Framing::Chunked, Connection::Close);
        assert_eq!(
            h,
            "HTTP/1.1 404 Not Found\r\ndate: D\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn bodiless_keeps_content_length_except_204_and_1xx() {
        let h = head(
            200,
            &[("content-length", "42"), ("date", "D")],
            Framing::Bodiless,
            Connection::Default,
        );
        assert!(h.contains("content-length: 42\r\n"), "{h}");
        let h = head(
            204,
            &[("content-length", "0"), ("date", "D")],
            Framing::Bodiless,
            Connection::Default,
        );
        assert!(!h.contains("content-length"), "{h}");
    }

    #[test]
    fn connection_fields_only_on_upgrade() {
        let fields = [("connection", "upgrade"), ("upgrade", "websocket"), ("date", "D")];
        let h = head(101, &fields, Framing::Bodiless, Connection::Upgrade);
        assert!(h.contains("connection: upgrade\r\nupgrade: websocket\r\n"), "{h}");
        let h = head(200, &fields, Framing::Length(0), Connection::KeepAlive);
        assert_eq!(
            h,
            "HTTP/1.1 200 OK\r\ndate: D\r\ncontent-length: 0\r\nconnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn adds_a_date_when_missing() {
        let h = head(200, &[], Framing::Length(0), Connection::Default);
        let date = h.lines().find_map(|l| l.strip_prefix("date: ")).unwrap_or("");
        assert_eq!(date.len(), 29, "{h}");
        assert!(date.ends_with(" GMT"), "{h}");
    }
}
