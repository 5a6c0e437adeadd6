//! Generators for the property tests of the hand-written HTTP/1 codecs (the front's head check
//! and chunk tracker, the upstream client's response parser and chunked decoder): well-formed
//! messages with what was put into them, the same messages with a few bytes broken, and the
//! points a message is cut at as it arrives in pieces. Test-only.

use proptest::prelude::*;

/// Bytes that steer a broken message into the parsers' interesting branches.
const SPECIAL: &[u8] = b"\r\n:; \t0aF,\x00\x7f\xff-";

/// A well-formed chunked body (extensions after `;`, some with spaces before it; trailers) and
/// the data it carries.
pub fn chunked_body() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let chunk = (
        prop::collection::vec(any::<u8>(), 1..200),
        any::<bool>(),
        0usize..3,
        // BWS may come before the `;` (RFC 9112 §7.1.1).
        prop::option::of("[ \t]{0,2};[a-z]{1,8}(=[a-z0-9]{0,8})?"),
    );
    (
        prop::collection::vec(chunk, 0..6),
        prop::option::of("[a-z]{1,8}"),
        prop::collection::vec("[A-Za-z][A-Za-z0-9-]{0,10}: [ -~]{0,20}", 0..3),
    )
        .prop_map(|(chunks, last_ext, trailers)| {
            let mut body = Vec::new();
            let mut data = Vec::new();
            for (bytes, upper, zeros, ext) in chunks {
                let size = if upper {
                    format!("{:X}", bytes.len())
                } else {
                    format!("{:x}", bytes.len())
                };
                body.extend_from_slice("0".repeat(zeros).as_bytes());
                body.extend_from_slice(size.as_bytes());
                if let Some(ext) = ext {
                    body.extend_from_slice(ext.as_bytes());
                }
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(&bytes);
                body.extend_from_slice(b"\r\n");
                data.extend_from_slice(&bytes);
            }
            body.push(b'0');
            if let Some(ext) = last_ext {
                body.push(b';');
                body.extend_from_slice(ext.as_bytes());
            }
            body.extend_from_slice(b"\r\n");
            for t in trailers {
                body.extend_from_slice(t.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"\r\n");
            (body, data)
        })
}

/// Ends a head in `out` with the framing field for `body` and the blank line, then appends the
/// body: in chunks of `chunk` bytes, or after a `Content-Length` when `chunk` is `None`.
#[allow(dead_code, reason = "used by the end-to-end tests that include this file")]
pub fn frame_body(out: &mut Vec<u8>, body: &[u8], chunk: Option<usize>) {
    let Some(chunk) = chunk else {
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        return;
    };
    out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
    for piece in body.chunks(chunk.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
}

/// One edit of a message: replace, insert or delete a byte near a position.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn a_byte() -> impl Strategy<Value = u8> {
    prop_oneof![any::<u8>(), prop::sample::select(SPECIAL)]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), a_byte()).prop_map(|(at, b)| Edit::Replace(at, b)),
        (any::<usize>(), a_byte()).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<usize>().prop_map(Edit::Delete),
    ]
}

/// `message` with one to four bytes replaced, inserted or deleted.
pub fn broken(message: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (message, prop::collection::vec(edit(), 1..5)).prop_map(|(mut m, edits)| {
        for e in edits {
            let len = m.len();
            match e {
                Edit::Replace(at, b) if len > 0 => m[at % len] = b,
                Edit::Insert(at, b) => m.insert(at % (len + 1), b),
                Edit::Delete(at) if len > 0 => {
                    m.remove(at % len);
                }
                Edit::Replace(..) | Edit::Delete(_) => {}
            }
        }
        m
    })
}

/// Where a message of any length is cut as it arrives: fractions of its length, sorted.
pub fn cuts() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(0.0f64..1.0, 0..8).prop_map(|mut c| {
        c.sort_by(f64::total_cmp);
        c
    })
}

/// `bytes` cut at `cuts` (fractions of its length) into consecutive pieces, none lost.
pub fn pieces<'a>(bytes: &'a [u8], cuts: &[f64]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut from = 0;
    for c in cuts {
        let to = ((bytes.len() as f64 * c) as usize).clamp(from, bytes.len());
        out.push(&bytes[from..to]);
        from = to;
    }
    out.push(&bytes[from..]);
    out
}

/// Up to a dozen fields with token names other than `excluded` (framing and hop-by-hop fields,
/// generated apart) and visible values without edge whitespace.
fn fields(excluded: &'static [&'static str]) -> impl Strategy<Value = Vec<(String, String)>> {
    let name = "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,16}".prop_filter("framing and hop fields are generated apart", move |n| {
        !excluded.contains(&n.to_ascii_lowercase().as_str())
    });
    prop::collection::vec((name, "([!-~]([ -~]{0,30}[!-~])?)?"), 0..12)
}

/// A generated request head and what went into it.
#[derive(Debug, Clone)]
pub struct RequestParts {
    pub bytes: Vec<u8>,
    pub method: String,
    pub target: String,
    pub fields: Vec<(String, String)>,
}

/// A valid HTTP/1.1 request head: a token method, an origin-form target, a valid Host, other
/// fields with visible values, at most one Content-Length.
pub fn request_head() -> impl Strategy<Value = RequestParts> {
    (
        prop_oneof![
            prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"])
                .prop_map(String::from),
            "[A-Z][A-Z0-9!#$%&'*+.^_`|~-]{0,11}",
        ],
        "/[A-Za-z0-9._~!$&'()*+,;=:@/-]{0,40}(\\?[A-Za-z0-9=&%._-]{0,20})?",
        "[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?(:[0-9]{1,5})?",
        fields(&[
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "upgrade",
            "expect",
        ]),
        prop::option::of(0u64..1_000_000),
    )
        .prop_map(|(method, target, host, mut fields, length)| {
            fields.insert(0, ("Host".to_string(), host));
            if let Some(n) = length {
                fields.push(("Content-Length".to_string(), n.to_string()));
            }
            let mut bytes = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
            for (name, value) in &fields {
                bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            bytes.extend_from_slice(b"\r\n");
            RequestParts {
                bytes,
                method,
                target,
                fields,
            }
        })
}

/// How a generated response frames its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Length(u64),
    Chunked,
    UntilClose,
}

/// A generated response head and what went into it.
#[derive(Debug, Clone)]
pub struct ResponseParts {
    pub bytes: Vec<u8>,
    pub status: u16,
    pub body: BodyKind,
    /// End-to-end fields, in order (none hop-by-hop).
    pub fields: Vec<(String, String)>,
}

/// A valid HTTP/1.1 response head with a final status and one framing.
pub fn response_head() -> impl Strategy<Value = ResponseParts> {
    (
        200u16..600,
        "[A-Za-z ]{0,20}",
        fields(&[
            "content-length",
            "transfer-encoding",
            "connection",
            "keep-alive",
            "upgrade",
            "te",
            "trailer",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
        ]),
        prop_oneof![
            (0u64..1_000_000).prop_map(BodyKind::Length),
            Just(BodyKind::Chunked),
            Just(BodyKind::UntilClose),
        ],
    )
        .prop_map(|(status, reason, fields, body)| {
            let mut bytes = format!("HTTP/1.1 {status} {reason}\r\n").into_bytes();
            for (name, value) in &fields {
                bytes.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
            match body {
                BodyKind::Length(n) => bytes.extend_from_slice(format!("Content-Length: {n}\r\n").as_bytes()),
                BodyKind::Chunked => bytes.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
                BodyKind::UntilClose => bytes.extend_from_slice(b"Connection: close\r\n"),
            }
            bytes.extend_from_slice(b"\r\n");
            ResponseParts {
                bytes,
                status,
                body,
                fields,
            }
        })
}
