//! Header rules of a proxy: hop-by-hop fields are removed in both directions (RFC 9110 §7.6.1,
//! including every field named in `Connection`), and the forwarding fields are written
//! (`X-Forwarded-For` appended, `X-Forwarded-Proto`/`-Host` and `Forwarded` set, `Via` appended;
//! each only when the listener's `forwarding_headers` list it, as all five are by default).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use weir_config::ForwardingHeaders;

const VIA_H10: HeaderValue = HeaderValue::from_static("1.0 weir");
const VIA_H1: HeaderValue = HeaderValue::from_static("1.1 weir");
const VIA_H2: HeaderValue = HeaderValue::from_static("2 weir");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The fixed hop-by-hop fields (RFC 9110 §7.6.1 and the common non-standard ones), removed in
/// both directions: from requests here, from upstream responses while they are parsed.
pub static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Whether an `Upgrade` value offers a protocol weir carries: any but `h2c`. An upgrade to
/// h2c forwarded and then tunnelled would let the client speak HTTP/2 straight to the
/// upstream on that connection, past routing and every policy ("h2c smuggling"); refused,
/// the request goes on as a plain one (a server may always decline an upgrade), with
/// `Upgrade`, `Connection` and `HTTP2-Settings` left behind as hop-by-hop fields.
pub fn offers_upgrade(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|token| !token.is_empty() && !token.eq_ignore_ascii_case(b"h2c"))
}

/// An `Upgrade` value as forwarded: without the `h2c` offer ([`offers_upgrade`]).
pub fn without_h2c(value: &HeaderValue) -> HeaderValue {
    let tokens = value.as_bytes().split(|&b| b == b',').map(<[u8]>::trim_ascii);
    if !tokens.clone().any(|t| t.eq_ignore_ascii_case(b"h2c")) {
        return value.clone();
    }
    let kept: Vec<&[u8]> = tokens
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(b"h2c"))
        .collect();
    HeaderValue::from_bytes(&kept.join(&b", "[..])).unwrap_or_else(|_| value.clone())
}

/// What [`strip_hop_by_hop`] removed that still matters to the request.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stripped {
    /// A `TE` asked for trailers: the one `TE` an HTTP/2 request may carry, which gRPC clients
    /// send (an HTTP/2 upstream gets it back).
    pub te_trailers: bool,
    /// A `Trailer` field announced trailer fields: an HTTP/1.1 upstream gets the body chunked,
    /// the framing that has a place for them.
    pub trailer_announced: bool,
}

/// Removes hop-by-hop fields: the fixed set and every field the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Stripped {
    strip_request(headers, ForwardingHeaders::NONE)
}

/// Whether an `Expect` value asks for `100 Continue` before the body (RFC 9110 §10.1.1).
pub fn expects_continue(value: &[u8]) -> bool {
    value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
}

/// How many `Via` entries name weir (`1.1 weir`): the hops the request made through weir
/// before this one. Nothing is read when the request has no `Via`, as most have not.
pub fn weir_hops(headers: &HeaderMap) -> usize {
    headers
        .get_all(header::VIA)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter(|entry| entry.trim_ascii().ends_with(b" weir"))
        .count()
}

/// Joins an HTTP/2 client's `Cookie` crumbs into the one field an HTTP/1.1 server reads, with
/// `"; "`, as RFC 9113 §8.2.3 asks of whoever passes them on to HTTP/1.1. Browsers send each
/// cookie as a field of its own over HTTP/2 (HPACK compresses them better), and HTTP/1.1
/// servers expect one (RFC 6265 §5.4): some read only the first, and WSGI servers join repeated
/// fields with `", "`, which reads as one cookie whose value runs on into the next.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for crumb in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// [`strip_hop_by_hop`] for a request this hop writes `fields` into, which also removes what a
/// CGI-style server (CGI, FastCGI, WSGI, Rack: request fields become `HTTP_*` variables) would
/// misread: the underscore spellings of the `X-Forwarded-*` fields among `fields`
/// (`X_Forwarded_For` and `X-Forwarded-For` are one variable there, so a client's could stand
/// in for weir's; nginx drops every field with an underscore by default), and `Proxy`, which
/// becomes `HTTP_PROXY`, the outbound proxy of the application's own requests ("httpoxy",
/// CVE-2016-5385); no standard field has that name.
pub fn strip_request(headers: &mut HeaderMap, fields: ForwardingHeaders) -> Stripped {
    // One pass over the names, without hashing: most requests carry none of these, and nine
    // map lookups per request cost more than this scan.
    let (mut hop, mut misread) = (false, false);
    for k in headers.keys() {
        hop |= HOP_BY_HOP.contains(k);
        misread |= k.as_str().starts_with("x_forwarded_") || k.as_str() == "proxy";
    }
    if misread {
        let spoofing = |k: &HeaderName| match k.as_str() {
            "x_forwarded_for" => fields.x_forwarded_for,
            "x_forwarded_proto" => fields.x_forwarded_proto,
            "x_forwarded_host" => fields.x_forwarded_host,
            "proxy" => true,
            _ => false,
        };
        let named: Vec<HeaderName> = headers.keys().filter(|k| spoofing(k)).cloned().collect();
        for name in named {
            headers.remove(name);
        }
    }
    if !hop {
        return Stripped::default();
    }
    let stripped = Stripped {
        te_trailers: headers.get_all(header::TE).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
        }),
        trailer_announced: headers.contains_key(header::TRAILER),
    };
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    stripped
}

/// Whether a trailer field may pass on: not a framing, routing or connection field (RFC 9110
/// §6.5.1), which a recipient merging trailers into the head could be misled by, and which
/// HTTP/2 refuses in trailers.
pub fn allowed_in_trailers(name: &HeaderName) -> bool {
    !(HOP_BY_HOP.contains(name) || name == header::CONTENT_LENGTH || name == header::HOST)
}

/// Ends a chunked body (RFC 9112 §7.1.2): the last chunk, the trailer fields less those
/// [`allowed_in_trailers`] leaves out, and the empty line. The same for a response to a client
/// and a request to an upstream.
pub fn put_last_chunk(trailers: Option<&HeaderMap>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        if !allowed_in_trailers(name) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// What the forwarding headers say about one request.
pub struct Forwarding<'a> {
    pub client_ip: IpAddr,
    pub proto: &'a HeaderValue,
    /// The host the client asked for: the advertised authority if configured, else the request's.
    pub host: Option<&'a HeaderValue>,
    /// The client's protocol version, which `Via` names.
    pub version: http::Version,
    /// Which of the fields the listener writes.
    pub fields: ForwardingHeaders,
}

impl Forwarding<'_> {
    /// Whether this hop writes `name` itself (its previous values folded in): a request's own
    /// line of it is then left out of what is forwarded.
    pub fn writes(&self, name: &HeaderName) -> bool {
        let f = &self.fields;
        (f.x_forwarded_for && name == X_FORWARDED_FOR)
            || (f.x_forwarded_proto && name == X_FORWARDED_PROTO)
            || (f.x_forwarded_host && name == X_FORWARDED_HOST)
            || (f.forwarded && name == header::FORWARDED)
    }

    /// The `Via` this hop adds.
    pub fn via(&self) -> Via {
        Via::of(self.fields, self.version)
    }
}

/// The `Via` a listener adds to requests and responses it forwards: none when its
/// `forwarding_headers` leave it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Off,
    H10,
    H1,
    H2,
}

impl Via {
    /// The `Via` of a listener with `fields` for a client speaking `version`.
    pub fn of(fields: ForwardingHeaders, version: http::Version) -> Via {
        if fields.via {
            Via::H1.received(version)
        } else {
            Via::Off
        }
    }

    /// The same listener's `Via` on a message received in `version`: a response names the
    /// protocol weir got it in from the upstream (RFC 9110 §7.6.3), as a request names the
    /// client's.
    pub fn received(self, version: http::Version) -> Via {
        match self {
            Via::Off => Via::Off,
            _ if version == http::Version::HTTP_2 => Via::H2,
            _ if version <= http::Version::HTTP_10 => Via::H10,
            _ => Via::H1,
        }
    }

    /// The same, on an HTTP/1.1 message (a `101` to an upgrading client).
    pub fn h1(self) -> Via {
        if self == Via::Off { Via::Off } else { Via::H1 }
    }
}

/// Sets the forwarding fields in a request's map (the HTTP/2 upstream path, and requests whose
/// router set one of the fields itself): the values [`write_forwarding`] writes, every previous
/// `X-Forwarded-For` and `Forwarded` line folded in.
pub fn add_forwarding(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    let ip = f.client_ip.to_canonical();
    let fields = f.fields;
    let fresh = !headers.contains_key(&X_FORWARDED_FOR) && !headers.contains_key(header::FORWARDED);
    let (xff, forwarded) = if fresh {
        // Nearly every request: no earlier proxy, the same client as the last request on this
        // thread (a connection's requests), so the last values serve again for the cost of a
        // reference count, where building them cost five allocations.
        LAST_FORWARDING.with_borrow_mut(|last| match last {
            Some(c) if c.ip == ip && c.proto == *f.proto && c.host.as_ref() == f.host => {
                (c.xff.clone(), c.forwarded.clone())
            }
            _ => {
                let (xff, forwarded) = forwarding_values(headers, ip, f);
                *last = Some(LastForwarding {
                    ip,
                    proto: f.proto.clone(),
                    host: f.host.and_then(|h| HeaderValue::from_bytes(h.as_bytes()).ok()),
                    xff: xff.clone(),
                    forwarded: forwarded.clone(),
                });
                (xff, forwarded)
            }
        })
    } else {
        forwarding_values(headers, ip, f)
    };
    if fields.x_forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
    if fields.x_forwarded_proto {
        headers.insert(X_FORWARDED_PROTO.clone(), f.proto.clone());
    }
    if fields.x_forwarded_host
        && let Some(host) = f.host
    {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    if fields.forwarded {
        headers.insert(header::FORWARDED, forwarded);
    }
    add_via(headers, f.via());
}

/// The last forwarding values [`add_forwarding`] built on this thread, and what they were
/// built from (a copy of the host, so the cache keeps no request buffer alive).
struct LastForwarding {
    ip: IpAddr,
    proto: HeaderValue,
    host: Option<HeaderValue>,
    xff: HeaderValue,
    forwarded: HeaderValue,
}

thread_local! {
    static LAST_FORWARDING: std::cell::RefCell<Option<LastForwarding>> = const { std::cell::RefCell::new(None) };
}

/// The `X-Forwarded-For` and `Forwarded` values for a request with `headers`.
fn forwarding_values(headers: &HeaderMap, ip: IpAddr, f: &Forwarding<'_>) -> (HeaderValue, HeaderValue) {
    let mut buf = Vec::with_capacity(64);
    put_xff(headers, ip, &mut buf);
    // Built from valid field values and an address: cannot fail, but an empty value beats a panic.
    let xff = HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static(""));
    buf.clear();
    put_forwarded(headers, ip, f, &mut buf);
    let forwarded = HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static(""));
    (xff, forwarded)
}

/// Whether weir writes `name` itself when forwarding (its previous values folded in).
pub fn is_forwarding_field(name: &HeaderName) -> bool {
    name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST || name == header::FORWARDED
}

/// Writes the forwarding fields as HTTP/1.1 header lines straight into a request head: the
/// same values as [`add_forwarding`], without touching the map (no allocation, no rehash).
/// Every previous `X-Forwarded-For` and `Forwarded` line of `headers` is folded into one; the
/// caller leaves the fields [`Forwarding::writes`] out of the lines it copies.
pub fn write_forwarding(headers: &HeaderMap, f: &Forwarding<'_>, out: &mut Vec<u8>) {
    let ip = f.client_ip.to_canonical();
    let fields = f.fields;
    if fields.x_forwarded_for {
        out.extend_from_slice(b"x-forwarded-for: ");
        put_xff(headers, ip, out);
        out.extend_from_slice(b"\r\n");
    }
    if fields.x_forwarded_proto {
        out.extend_from_slice(b"x-forwarded-proto: ");
        out.extend_from_slice(f.proto.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if fields.x_forwarded_host
        && let Some(host) = f.host
    {
        out.extend_from_slice(b"x-forwarded-host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if fields.forwarded {
        out.extend_from_slice(b"forwarded: ");
        put_forwarded(headers, ip, f, out);
        out.extend_from_slice(b"\r\n");
    }
    match f.via() {
        Via::Off => {}
        Via::H10 => out.extend_from_slice(b"via: 1.0 weir\r\n"),
        Via::H1 => out.extend_from_slice(b"via: 1.1 weir\r\n"),
        Via::H2 => out.extend_from_slice(b"via: 2 weir\r\n"),
    }
}

/// The `X-Forwarded-For` value: the previous lines' values, then the client's address.
fn put_xff(headers: &HeaderMap, ip: IpAddr, out: &mut Vec<u8>) {
    for prev in headers.get_all(&X_FORWARDED_FOR) {
        out.extend_from_slice(prev.as_bytes());
        out.extend_from_slice(b", ");
    }
    put_ip(ip, out);
}

/// The `Forwarded` value (RFC 7239): the previous lines' elements, then this hop's.
fn put_forwarded(headers: &HeaderMap, ip: IpAddr, f: &Forwarding<'_>, out: &mut Vec<u8>) {
    for prev in headers.get_all(header::FORWARDED) {
        out.extend_from_slice(prev.as_bytes());
        out.extend_from_slice(b", ");
    }
    match ip {
        IpAddr::V4(_) => {
            out.extend_from_slice(b"for=");
            put_ip(ip, out);
        }
        IpAddr::V6(_) => {
            out.extend_from_slice(b"for=\"[");
            put_ip(ip, out);
            out.extend_from_slice(b"]\"");
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(f.proto.to_str().map_or(b"http".as_slice(), str::as_bytes));
    if let Some(host) = f.host.and_then(|h| h.to_str().ok()) {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(host.as_bytes());
        out.push(b'"');
    }
}

/// Writes an address in its usual text form; IPv4 (nearly every request) without going through
/// the formatting machinery, which cost two `fmt::write` calls per request.
fn put_ip(ip: IpAddr, out: &mut Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

pub fn add_via(headers: &mut HeaderMap, via: Via) {
    let value = match via {
        Via::Off => return,
        Via::H10 => VIA_H10,
        Via::H1 => VIA_H1,
        Via::H2 => VIA_H2,
    };
    headers.append(header::VIA, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underscore_spellings_of_the_forwarding_fields_this_hop_writes_are_dropped() {
        let mut h = map(&[
            ("x_forwarded_for", "6.6.6.6"),
            ("x_forwarded_host", "evil"),
            ("x_forwarded_other", "kept"),
            ("x_request_id", "kept"),
            ("proxy", "http://evil:8080"),
        ]);
        let mut only_xff = ForwardingHeaders::NONE;
        only_xff.x_forwarded_for = true;
        strip_request(&mut h, only_xff);
        let mut left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x_forwarded_host", "x_forwarded_other", "x_request_id"]);
        strip_request(&mut h, ForwardingHeaders::ALL);
        assert!(!h.contains_key("x_forwarded_host"));
        assert!(h.contains_key("x_forwarded_other"));
    }

    #[test]
    fn an_upgrade_to_h2c_is_not_offered_on() {
        assert!(offers_upgrade(b"websocket"));
        assert!(offers_upgrade(b"h2c, websocket"));
        assert!(!offers_upgrade(b"h2c"));
        assert!(!offers_upgrade(b" H2C ,"));
        assert!(!offers_upgrade(b""));
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(without_h2c(&v("h2c, websocket")), v("websocket"));
        assert_eq!(without_h2c(&v("websocket")), v("websocket"));
    }

    /// Framing, routing and connection fields never pass as trailers: a recipient that merged
    /// them into the head could be misled about the message.
    #[test]
    fn trailers_leave_out_framing_routing_and_connection_fields() {
        let mut t = HeaderMap::new();
        for (name, value) in [
            ("grpc-status", "0"),
            ("content-length", "9"),
            ("transfer-encoding", "chunked"),
            ("host", "evil"),
            ("connection", "close"),
            ("x-checksum", "abc"),
        ] {
            t.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let mut out = Vec::new();
        put_last_chunk(Some(&t), &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "0\r\ngrpc-status: 0\r\nx-checksum: abc\r\n\r\n"
        );
        out.clear();
        put_last_chunk(None, &mut out);
        assert_eq!(out, b"0\r\n\r\n");
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap_or(header::ACCEPT),
                HeaderValue::from_str(v).unwrap_or(VIA_H1),
            );
        }
        h
    }

    #[test]
    fn only_a_te_naming_trailers_is_reported() {
        assert!(!strip_hop_by_hop(&mut map(&[("te", "gzip"), ("host", "a")])).te_trailers);
        assert!(strip_hop_by_hop(&mut map(&[("te", "gzip, Trailers")])).te_trailers);
        assert!(!strip_hop_by_hop(&mut map(&[("connection", "close"), ("host", "a")])).te_trailers);
        assert_eq!(
            strip_hop_by_hop(&mut map(&[("trailer", "x-sum"), ("host", "a")])),
            Stripped {
                te_trailers: false,
                trailer_announced: true
            }
        );
    }

    #[test]
    fn strips_fixed_and_named_hop_by_hop() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
            ("host", "a"),
        ]);
        assert!(strip_hop_by_hop(&mut h).te_trailers, "TE: trailers was there");
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["host", "x-kept"]);
    }

    #[test]
    fn forwarding_appends_and_sets() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "ftp"),
            ("forwarded", "for=10.0.0.1"),
        ]);
        let proto = HeaderValue::from_static("https");
        let host = HeaderValue::from_static("lb.example.com:9080");
        add_forwarding(
            &mut h,
            &Forwarding {
                client_ip: "127.0.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                proto: &proto,
                host: Some(&host),
                version: http::Version::HTTP_11,
                fields: ForwardingHeaders::ALL,
            },
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "lb.example.com:9080");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.1, for=127.0.0.1;proto=https;host=\"lb.example.com:9080\""
        );
        assert_eq!(h["via"], "1.1 weir");
    }

    /// The head writer and the map writer agree, and every previous line is kept.
    #[test]
    fn written_forwarding_matches_the_map_version() {
        let before = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("forwarded", "for=10.0.0.1"),
            ("via", "1.0 edge"),
        ]);
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "10.200.3.255",
            "192.168.100.9",
            "::1",
            "::ffff:10.1.2.3",
        ] {
            let proto = HeaderValue::from_static("https");
            let host = HeaderValue::from_static("lb.example.com");
            let f = Forwarding {
                client_ip: ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                proto: &proto,
                host: Some(&host),
                version: http::Version::HTTP_11,
                fields: ForwardingHeaders::ALL,
            };
            let mut out = Vec::new();
            write_forwarding(&before, &f, &mut out);
            let text = String::from_utf8_lossy(&out).into_owned();
            let mut h = before.clone();
            add_forwarding(&mut h, &f);
            let xff = format!(
                "x-forwarded-for: 10.0.0.1, 10.0.0.2, {}\r\n",
                ip.trim_start_matches("::ffff:")
            );
            assert!(text.starts_with(&xff), "{text}");
            for name in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"] {
                let line = format!("{name}: {}\r\n", h[name].to_str().unwrap_or(""));
                assert!(text.contains(&line), "{line} not in {text}");
            }
            assert!(text.ends_with("via: 1.1 weir\r\n"), "{text}");
        }
    }

    /// The values kept for the next request on the thread serve only the same client, scheme
    /// and host, and only requests that carry no earlier forwarding fields.
    #[test]
    fn reused_values_follow_the_request() {
        let http = HeaderValue::from_static("http");
        let https = HeaderValue::from_static("https");
        let a = HeaderValue::from_static("a.example");
        let b = HeaderValue::from_static("b.example");
        let check = |ip: &str, proto: &HeaderValue, host: Option<&HeaderValue>, before: &[(&str, &str)]| {
            let mut h = map(before);
            let f = Forwarding {
                client_ip: ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                proto,
                host,
                version: http::Version::HTTP_2,
                fields: ForwardingHeaders::ALL,
            };
            add_forwarding(&mut h, &f);
            assert_eq!(h.get("x-forwarded-host"), host);
            let text = |name: &str| h[name].to_str().unwrap_or("").to_owned();
            (text("x-forwarded-for"), text("forwarded"))
        };
        let host_a = "for=10.0.0.1;proto=http;host=\"a.example\"";
        assert_eq!(
            check("10.0.0.1", &http, Some(&a), &[]),
            ("10.0.0.1".into(), host_a.into())
        );
        assert_eq!(
            check("10.0.0.1", &http, Some(&a), &[]),
            ("10.0.0.1".into(), host_a.into())
        );
        let host_b = "for=10.0.0.1;proto=http;host=\"b.example\"";
        assert_eq!(check("10.0.0.1", &http, Some(&b), &[]).1, host_b);
        let https_b = "for=10.0.0.1;proto=https;host=\"b.example\"";
        assert_eq!(check("10.0.0.1", &https, Some(&b), &[]).1, https_b);
        assert_eq!(check("10.0.0.1", &https, None, &[]).1, "for=10.0.0.1;proto=https");
        assert_eq!(
            check("10.0.0.2", &https, None, &[]),
            ("10.0.0.2".into(), "for=10.0.0.2;proto=https".into())
        );
        assert_eq!(
            check("10.0.0.2", &https, None, &[("x-forwarded-for", "1.1.1.1")]),
            ("1.1.1.1, 10.0.0.2".into(), "for=10.0.0.2;proto=https".into())
        );
    }

    #[test]
    fn forwarded_quotes_ipv6() {
        let mut h = HeaderMap::new();
        let proto = HeaderValue::from_static("http");
        add_forwarding(
            &mut h,
            &Forwarding {
                client_ip: "::1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
                proto: &proto,
                host: None,
                version: http::Version::HTTP_2,
                fields: ForwardingHeaders::ALL,
            },
        );
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http");
        assert_eq!(h["via"], "2 weir");
    }

    /// The fields a listener's `forwarding_headers` leave out are neither written nor dropped:
    /// the client's own lines of them pass on, and no `Via` is added.
    #[test]
    fn only_the_listed_forwarding_fields_are_written() {
        let h = map(&[
            ("x-forwarded-proto", "ftp"),
            ("forwarded", "for=10.0.0.1"),
            ("host", "a"),
        ]);
        let proto = HeaderValue::from_static("https");
        let host = HeaderValue::from_static("a");
        let mut fields = ForwardingHeaders::NONE;
        fields.x_forwarded_for = true;
        let f = Forwarding {
            client_ip: IpAddr::from([127, 0, 0, 1]),
            proto: &proto,
            host: Some(&host),
            version: http::Version::HTTP_2,
            fields,
        };
        let mut out = Vec::new();
        write_forwarding(&h, &f, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), "x-forwarded-for: 127.0.0.1\r\n");
        let kept: Vec<&str> = h.keys().filter(|k| !f.writes(k)).map(|k| k.as_str()).collect();
        assert_eq!(kept, ["x-forwarded-proto", "forwarded", "host"]);
        assert_eq!(f.via(), Via::Off);

        let mut m = h.clone();
        add_forwarding(&mut m, &f);
        assert_eq!(m.get("x-forwarded-for").map(|v| v.as_bytes()), Some(&b"127.0.0.1"[..]));
        assert_eq!(m.get("x-forwarded-proto").map(|v| v.as_bytes()), Some(&b"ftp"[..]));
        assert_eq!(m.get("forwarded").map(|v| v.as_bytes()), Some(&b"for=10.0.0.1"[..]));
        assert!(!m.contains_key("x-forwarded-host") && !m.contains_key(header::VIA));

        let none = Forwarding {
            fields: ForwardingHeaders::NONE,
            ..f
        };
        out.clear();
        write_forwarding(&h, &none, &mut out);
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        let mut via_only = ForwardingHeaders::NONE;
        via_only.via = true;
        assert_eq!(Via::of(via_only, http::Version::HTTP_11), Via::H1);
        assert_eq!(Via::of(via_only, http::Version::HTTP_10), Via::H10);
        assert_eq!(Via::of(via_only, http::Version::HTTP_2).h1(), Via::H1);
        assert_eq!(Via::Off.h1(), Via::Off);
        assert_eq!(Via::H2.received(http::Version::HTTP_11), Via::H1);
        assert_eq!(Via::H10.received(http::Version::HTTP_2), Via::H2);
        assert_eq!(Via::H1.received(http::Version::HTTP_10), Via::H10);
        assert_eq!(Via::Off.received(http::Version::HTTP_2), Via::Off);
    }
}
