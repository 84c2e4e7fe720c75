//! Header hygiene between agent, Latch and upstream.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies drop.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `m` is an HTTP method token in upper case (`GET`, `DELETE`,
/// `M-SEARCH`): the only methods Latch proxies, so that the policy and the
/// tool cannot disagree about `delete` versus `DELETE`.
pub fn is_upper_token(m: &str) -> bool {
    !m.is_empty()
        && m.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Remove hop-by-hop headers, including every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Prepare the agent's headers for the upstream: drop hop-by-hop headers,
/// the agent's credentials, Latch's own `latch-*` headers and any forwarding
/// claims the agent made; then state who really sent the call and add the
/// route's injected headers (which win over anything the agent sent).
pub fn upstream_request_headers(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    tls: bool,
    inject: &[(HeaderName, HeaderValue)],
) {
    strip_hop_by_hop(headers);
    let original_host = headers.remove(header::HOST);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::FORWARDED);
    headers.remove("x-forwarded-for");
    headers.remove("x-forwarded-proto");
    headers.remove("x-forwarded-host");
    headers.remove("x-real-ip");
    let latch_own: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("latch-"))
        .cloned()
        .collect();
    for k in latch_own {
        headers.remove(k);
    }

    let proto = if tls { "https" } else { "http" };
    let ip = peer.ip();
    let for_value = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let host_part = original_host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b';' && b != b',')
        })
        .map(|h| format!(";host=\"{h}\""))
        .unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&format!("for={for_value};proto={proto}{host_part}")) {
        headers.insert(header::FORWARDED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(h) = original_host {
        headers.insert("x-forwarded-host", h);
    }
    for (name, value) in inject {
        headers.insert(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn upstream_headers_hide_credentials_and_replace_forwarding() {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer agent-token"),
        );
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("latch-reason", HeaderValue::from_static("because"));
        h.insert("host", HeaderValue::from_static("latch.local:8080"));
        h.insert("x-api-key", HeaderValue::from_static("agent-supplied"));
        let inject = vec![
            (
                HeaderName::from_static("authorization"),
                HeaderValue::from_static("Bearer upstream"),
            ),
            (
                HeaderName::from_static("x-api-key"),
                HeaderValue::from_static("latch"),
            ),
        ];
        upstream_request_headers(&mut h, "10.1.2.3:5555".parse().unwrap(), false, &inject);
        assert_eq!(h["authorization"], "Bearer upstream");
        assert_eq!(h["x-api-key"], "latch");
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(
            h["forwarded"],
            "for=10.1.2.3;proto=http;host=\"latch.local:8080\""
        );
        assert_eq!(h["x-forwarded-host"], "latch.local:8080");
        assert!(h.get("latch-reason").is_none());
        assert!(h.get("host").is_none());
    }

    #[test]
    fn ipv6_forwarded_is_quoted() {
        let mut h = HeaderMap::new();
        upstream_request_headers(&mut h, "[::1]:80".parse().unwrap(), true, &[]);
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=https");
    }
}
