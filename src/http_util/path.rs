//! Request-path checks: one meaning or no entry.
//!
//! The policy and the upstream must see the same path. Anything a server
//! could read two ways — dot segments, encoded separators, backslashes,
//! `;` parameters, double encoding — is refused with 400 before the policy
//! runs, so a rule about `/tools/admin` cannot be walked around.

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not origin-form.
    #[error("path must start with /")]
    NotAbsolute,
    /// Bad or ambiguous percent encoding.
    #[error("path has an invalid or ambiguous percent-encoding")]
    Encoding,
    /// `.` or `..` segment, or an empty one.
    #[error("path has a dot or empty segment")]
    DotSegment,
    /// A character that servers disagree on.
    #[error("path has a backslash, `;` parameter or control character")]
    Character,
}

/// Decode and check `raw`; returns the decoded path.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|c| (*c as char).to_digit(16));
                let lo = bytes.get(i + 2).and_then(|c| (*c as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::Encoding);
                };
                let d = (hi * 16 + lo) as u8;
                // Encoded separators, dots, escapes and parameters mean different
                // things to different servers.
                if matches!(d, b'/' | b'\\' | b'.' | b'%' | b';') || d < 0x20 || d == 0x7f {
                    return Err(PathError::Encoding);
                }
                out.push(d);
                i += 3;
            }
            b'\\' | b';' => return Err(PathError::Character),
            _ if b < 0x20 || b == 0x7f => return Err(PathError::Character),
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8(out).map_err(|_| PathError::Encoding)?;
    // A single trailing slash is the only empty segment allowed.
    let body = decoded.strip_suffix('/').unwrap_or(&decoded);
    if !body.is_empty() {
        for seg in body[1..].split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err(PathError::DotSegment);
            }
        }
    }
    Ok(decoded)
}

/// Whether `path` (decoded) falls under `prefix` at a segment boundary.
/// `prefix` has no trailing slash; `""` matches everything.
pub fn under(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The part of `raw` after the first `segments` segments; `raw` and its
/// decoded form have the same segment structure once [`normalize`] passed.
pub fn raw_suffix(raw: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        return raw.to_string();
    }
    let skip = prefix.matches('/').count();
    let mut idx = 0;
    let mut seen = 0;
    for (i, c) in raw.char_indices() {
        if c == '/' {
            if seen == skip {
                idx = i;
                break;
            }
            seen += 1;
        }
        idx = raw.len();
    }
    raw[idx..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_and_encoded_text() {
        assert_eq!(normalize("/tools/email/send").unwrap(), "/tools/email/send");
        assert_eq!(normalize("/a/b%20c").unwrap(), "/a/b c");
        assert_eq!(normalize("/a/caf%C3%A9").unwrap(), "/a/café");
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/a/").unwrap(), "/a/");
    }

    #[test]
    fn refuses_ambiguity() {
        for p in [
            "/a/../b",
            "/a/./b",
            "/a/%2e%2e/b",
            "/a/%2E/b",
            "/a%2fb",
            "/a%2Fb",
            "/a\\b",
            "/a%5cb",
            "/a;jsessionid=1",
            "/a%3bb",
            "/a%252e",
            "/a//b",
            "/a/%",
            "/a/%zz",
            "/a/%00",
            "/a/%ff",
            "a/b",
            "/..",
            "/a/\u{1}",
        ] {
            assert!(normalize(p).is_err(), "{p} should be refused");
        }
    }

    #[test]
    fn prefix_matching_is_by_segment() {
        assert!(under("/tools/email", "/tools/email"));
        assert!(under("/tools/email/send", "/tools/email"));
        assert!(!under("/tools/emailx", "/tools/email"));
        assert!(under("/anything", ""));
    }

    #[test]
    fn raw_suffix_keeps_encoding() {
        assert_eq!(
            raw_suffix("/tools/email/send%20now", "/tools/email"),
            "/send%20now"
        );
        assert_eq!(raw_suffix("/tools/email", "/tools/email"), "");
        assert_eq!(raw_suffix("/t%6Fols/x/y", "/tools"), "/x/y");
        assert_eq!(raw_suffix("/x", ""), "/x");
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        fn raw_path() -> impl Strategy<Value = String> {
            let seg = prop::collection::vec(
                prop_oneof![
                    Just("a".to_string()),
                    Just("tools".to_string()),
                    Just(".".to_string()),
                    Just("..".to_string()),
                    Just("%2e".to_string()),
                    Just("%2F".to_string()),
                    Just("%20".to_string()),
                    Just("%41".to_string()),
                    Just("%".to_string()),
                    Just("\\".to_string()),
                    Just(";x".to_string()),
                    Just("".to_string()),
                ],
                0..4,
            )
            .prop_map(|parts| parts.concat());
            prop::collection::vec(seg, 1..5).prop_map(|segs| format!("/{}", segs.join("/")))
        }

        proptest! {
            /// Whatever is accepted has one meaning: no dot or empty segments,
            /// no separators hidden in escapes, nothing servers disagree on.
            #[test]
            fn accepted_paths_are_unambiguous(raw in raw_path()) {
                if let Ok(decoded) = normalize(&raw) {
                    let body = decoded.strip_suffix('/').unwrap_or(&decoded);
                    if !body.is_empty() {
                        for seg in body[1..].split('/') {
                            prop_assert!(!seg.is_empty() && seg != "." && seg != "..", "{raw} -> {decoded}");
                        }
                    }
                    prop_assert!(!decoded.contains('\\') && !decoded.contains(';') && !decoded.contains('%'));
                    // The raw path has exactly as many segments as the decoded one,
                    // so the suffix Latch forwards is the suffix the policy saw.
                    prop_assert_eq!(raw.matches('/').count(), decoded.matches('/').count());
                    if let Some(first) = decoded[1..].split('/').next().filter(|s| !s.is_empty()) {
                        let prefix = format!("/{first}");
                        let suffix = raw_suffix(&raw, &prefix);
                        prop_assert_eq!(normalize(&format!("{prefix}{suffix}")).ok(), Some(decoded.clone()));
                    }
                }
            }

            /// Never panics on arbitrary input.
            #[test]
            fn normalize_never_panics(raw in "\\PC{0,40}") {
                let _ = normalize(&raw);
            }
        }
    }
}
