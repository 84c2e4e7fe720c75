//! Request-head handling: arbitrary methods and headers go through the
//! method check and the header hygiene towards the upstream. Whatever the
//! agent sends, no hop-by-hop header, no credential of its own and no
//! `latch-*` header reaches the tool, and the injected headers always win.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Line 1: the method; every further line `name: value`.
    let mut lines = data.split(|b| *b == b'\n');
    let method = lines.next().unwrap_or_default();
    if let Ok(m) = http::Method::from_bytes(method) {
        let ok = latch::http_util::headers::is_upper_token(m.as_str());
        assert_eq!(
            ok,
            !m.as_str().is_empty()
                && m.as_str() == m.as_str().to_ascii_uppercase()
                && m.as_str()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let named: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    let inject = [(
        HeaderName::from_static("authorization"),
        HeaderValue::from_static("Bearer upstream"),
    )];
    latch::upstream::upstream_request_headers(
        &mut headers,
        "127.0.0.1:4000".parse().unwrap_or_else(|_| unreachable!()),
        false,
        &inject,
    );
    for h in &latch::http_util::headers::HOP_BY_HOP {
        assert!(headers.get(h).is_none(), "{h} reached the upstream");
    }
    for n in named {
        if let Ok(name) = HeaderName::from_bytes(n.as_bytes()) {
            let ours = [
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "authorization",
            ];
            if !ours.contains(&name.as_str()) {
                assert!(
                    headers.get(&name).is_none(),
                    "{name} named in Connection reached the upstream"
                );
            }
        }
    }
    assert!(headers.keys().all(|k| !k.as_str().starts_with("latch-")));
    assert_eq!(headers.get_all("authorization").iter().count(), 1);
    assert_eq!(headers["authorization"], "Bearer upstream");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
});
