//! `Location` in responses, as nginx's `proxy_redirect default` rewrites it: an absolute URL
//! that names the endpoint that answered (`http://10.0.1.10:9080/fhir/Patient/7`, from a server
//! configured with its own address as its base URL) is rewritten to the address clients use,
//! the listener's `advertise` or the request's host, with the clients' scheme
//! (`https://lb.example.com/fhir/Patient/7`). Otherwise a client would follow a redirect, or
//! the URL of what it just created, straight to one replica, past weir, or fail to reach it.
//!
//! Only the endpoint's own authority is replaced (its address as configured, or its name in a
//! `resolve = "all"` pool; no port where the URL's scheme has that port as default); any other
//! URL, relative ones included, passes as sent.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, header};
use weir_config::EndpointAddress;

use crate::headers::Forwarding;
use crate::upstream::Endpoint;

/// Rewrites `headers`' `Location` when it names `endpoint` (see the module doc).
pub fn rewrite(headers: &mut HeaderMap, endpoint: &Endpoint, forwarding: &Forwarding<'_>) {
    let Some(value) = headers.get(header::LOCATION) else {
        return;
    };
    let Some(host) = forwarding.host else {
        return;
    };
    let Some(rest) = endpoint_relative(value.as_bytes(), endpoint) else {
        return;
    };
    let mut out = Vec::with_capacity(forwarding.proto.len() + 3 + host.len() + rest.len());
    out.extend_from_slice(forwarding.proto.as_bytes());
    out.extend_from_slice(b"://");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(rest);
    if let Ok(v) = HeaderValue::from_bytes(&out) {
        headers.insert(header::LOCATION, v);
    }
}

/// What follows the authority of `url` (path, query, fragment) when `url` is an absolute
/// `http`/`https` URL naming `endpoint`.
fn endpoint_relative<'u>(url: &'u [u8], endpoint: &Endpoint) -> Option<&'u [u8]> {
    let (default_port, after_scheme) = if url.len() > 7 && url[..7].eq_ignore_ascii_case(b"http://") {
        (80, &url[7..])
    } else if url.len() > 8 && url[..8].eq_ignore_ascii_case(b"https://") {
        (443, &url[8..])
    } else {
        return None;
    };
    let end = after_scheme
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(after_scheme.len());
    let authority = std::str::from_utf8(&after_scheme[..end]).ok()?;
    let (host, port) = split_authority(authority, default_port)?;
    let named = names(&endpoint.address, host, port) || endpoint.name.as_ref().is_some_and(|n| names(n, host, port));
    named.then_some(&after_scheme[end..])
}

/// The host and port of an authority (`[::1]:8080`, `example.com`), the port defaulting to
/// `default_port`; `None` for one with user info or a port that is not a number.
fn split_authority(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default_port,
    };
    Some((host, port))
}

/// Whether `host` and `port` are `address`'s.
fn names(address: &EndpointAddress, host: &str, port: u16) -> bool {
    match address {
        EndpointAddress::Socket(a) => a.port() == port && host.parse::<IpAddr>() == Ok(a.ip()),
        EndpointAddress::Host { host: name, port: p } => *p == port && name.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn endpoint(address: &str) -> Endpoint {
        let address = weir_config::validate::parse_endpoint_address(address).unwrap();
        Endpoint::new(1, &weir_config::Endpoint::at(address), 1, true)
    }

    fn rewritten(location: &str, address: &str, advertised: Option<&str>) -> String {
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, HeaderValue::from_str(location).unwrap());
        let proto = HeaderValue::from_static("https");
        let host = HeaderValue::from_str(advertised.unwrap_or("lb.example.com")).unwrap();
        let forwarding = Forwarding {
            client_ip: IpAddr::from([127, 0, 0, 1]),
            proto: &proto,
            host: Some(&host),
            version: http::Version::HTTP_11,
            fields: weir_config::ForwardingHeaders::ALL,
        };
        rewrite(&mut headers, &endpoint(address), &forwarding);
        headers[header::LOCATION].to_str().unwrap().to_string()
    }

    #[test]
    fn a_url_naming_the_endpoint_names_what_clients_use() {
        let lb = |l: &str, a: &str| rewritten(l, a, None);
        assert_eq!(
            lb("http://10.0.1.10:9080/fhir/Patient/7", "10.0.1.10:9080"),
            "https://lb.example.com/fhir/Patient/7"
        );
        assert_eq!(lb("HTTP://10.0.1.10:9080", "10.0.1.10:9080"), "https://lb.example.com");
        assert_eq!(
            lb("http://10.0.1.10:9080?a=1#f", "10.0.1.10:9080"),
            "https://lb.example.com?a=1#f"
        );
        assert_eq!(lb("https://[::1]:9443/x", "[::1]:9443"), "https://lb.example.com/x");
        assert_eq!(
            lb("http://API.internal:9080/x", "api.internal:9080"),
            "https://lb.example.com/x"
        );
        // The scheme's default port may be left out.
        assert_eq!(lb("http://10.0.1.10/x", "10.0.1.10:80"), "https://lb.example.com/x");
        assert_eq!(lb("https://10.0.1.10/x", "10.0.1.10:443"), "https://lb.example.com/x");
        assert_eq!(
            rewritten("http://10.0.1.10:9080/x", "10.0.1.10:9080", Some("lb:8443")),
            "https://lb:8443/x"
        );
    }

    #[test]
    fn other_urls_pass_as_sent() {
        let lb = |l: &str, a: &str| rewritten(l, a, None);
        for (location, address) in [
            ("/fhir/Patient/7", "10.0.1.10:9080"),
            ("http://10.0.1.10:9081/x", "10.0.1.10:9080"),
            ("http://10.0.1.11:9080/x", "10.0.1.10:9080"),
            ("http://10.0.1.10/x", "10.0.1.10:9080"),
            ("https://10.0.1.10/x", "10.0.1.10:80"),
            ("http://user@10.0.1.10:9080/x", "10.0.1.10:9080"),
            ("ftp://10.0.1.10:9080/x", "10.0.1.10:9080"),
            ("http://example.com/x", "api.internal:9080"),
            ("http://10.0.1.10:9080.evil/x", "10.0.1.10:9080"),
        ] {
            assert_eq!(lb(location, address), location, "{address}");
        }
    }
}
