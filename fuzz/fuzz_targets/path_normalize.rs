//! The path normalizer never panics, and what it accepts has one meaning:
//! no dot or empty segments, no separators hidden in escapes, and decoding
//! it again changes nothing a server could read differently.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(decoded) = latch::http_util::path::normalize(raw) else {
        return;
    };
    assert!(decoded.starts_with('/'));
    assert!(!decoded.contains('\\') && !decoded.contains(';'));
    let body = decoded.strip_suffix('/').unwrap_or(&decoded);
    if !body.is_empty() {
        for seg in body[1..].split('/') {
            assert!(
                !seg.is_empty() && seg != "." && seg != "..",
                "{raw:?} -> {decoded:?}"
            );
        }
    }
    // Raw and decoded agree on the number of segments: no encoded `/`.
    assert_eq!(
        raw.matches('/').count(),
        decoded.matches('/').count(),
        "{raw:?} -> {decoded:?}"
    );
    // Routing is by segment: a prefix matches only at a boundary.
    for prefix in ["/tools", "/tools/email", "/latch"] {
        if latch::http_util::path::under(&decoded, prefix) {
            let rest = &decoded[prefix.len()..];
            assert!(rest.is_empty() || rest.starts_with('/'));
        }
    }
});
