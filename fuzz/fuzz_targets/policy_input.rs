//! The policy-input builder: arbitrary bodies under every supported media
//! type and encoding are judged strictly or refused, never panic, and what
//! is judged is exactly what would be forwarded.
#![no_main]

use bytes::Bytes;
use http::HeaderMap;
use latch::policy::body::{self, Format};
use latch::policy::input;
use libfuzzer_sys::fuzz_target;

const TYPES: &[&str] = &[
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/vnd.api+json; charset=utf-8",
    "application/json; charset=latin1",
    "",
];
const ENCODINGS: &[&str] = &["", "gzip", "deflate", "br", "identity", "gzip, br"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (query, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (std::str::from_utf8(&rest[..i]).ok(), &rest[i + 1..]),
        None => (None, rest),
    };
    let mut headers = HeaderMap::new();
    let ct = TYPES[usize::from(selector) % TYPES.len()];
    if !ct.is_empty() {
        headers.insert(
            http::header::CONTENT_TYPE,
            ct.parse().unwrap_or_else(|_| unreachable!()),
        );
    }
    let ce = ENCODINGS[usize::from(selector / 8) % ENCODINGS.len()];
    if !ce.is_empty() {
        headers.insert(
            http::header::CONTENT_ENCODING,
            ce.parse().unwrap_or_else(|_| unreachable!()),
        );
    }
    let limit = 4096;
    let Ok(judged) = body::judge(
        &headers,
        Bytes::copy_from_slice(body),
        limit,
        selector & 0x80 != 0,
    ) else {
        return;
    };
    assert!(judged.bytes.len() as u64 <= limit || judged.format == Format::Opaque);
    match judged.format {
        // Judged JSON is the forwarded bytes, parsed again: same value.
        Format::Json => {
            let again = body::parse_json(&judged.bytes).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(again, judged.value);
        }
        Format::Form => {
            let again = body::parse_form(&judged.bytes).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(again, judged.value);
        }
        Format::None => assert!(judged.bytes.is_empty()),
        Format::Opaque => assert_eq!(judged.value, regorus::Value::Null),
    }
    let query = latch::http_util::query::parse_query(query);
    if body::check_overlap(&judged.value, &query).is_err() {
        return;
    }
    let args = input::args(&judged.value, &query);
    let facts = input::RequestFacts {
        method: "POST",
        path: "/tools/x",
        query: &query,
        headers: &headers,
        allowed_headers: &[http::header::CONTENT_TYPE],
        body: &judged.value,
        body_format: judged.format.as_str(),
        body_sha256: None,
        size: Some(judged.bytes.len() as u64),
    };
    let route = latch::upstream::route_facts("r", "http://127.0.0.1:1", "tool");
    let agent = latch::identity::agent_facts("bot", &["agent".to_string()]);
    let now = chrono::Utc::now();
    let doc = input::build(
        &facts,
        &route,
        &agent,
        ("tool", args, "00"),
        &Default::default(),
        now,
    );
    assert_eq!(doc["action"]["tool"], regorus::Value::from("tool"));
    assert_eq!(doc["request"]["body"], judged.value);
});
