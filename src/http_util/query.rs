//! Query strings as the policy and the admin API read them.

use std::collections::BTreeMap;

/// Query parameters: each key with its values in order.
pub type Query = BTreeMap<String, Vec<String>>;

/// Parse a query string (`+` is a space, bad escapes are kept literally).
pub fn parse_query(query: Option<&str>) -> Query {
    let mut out = Query::new();
    let Some(q) = query else { return out };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(decode_component(k))
            .or_default()
            .push(decode_component(v));
    }
    out
}

fn decode_component(s: &str) -> String {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(d) => {
                        out.push(d);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query(Some("q=rust+lang&tag=a&tag=b%20c&flag&bad=%zz"));
        assert_eq!(q["q"], vec!["rust lang"]);
        assert_eq!(q["tag"], vec!["a", "b c"]);
        assert_eq!(q["flag"], vec![""]);
        assert_eq!(q["bad"], vec!["%zz"]);
        assert!(parse_query(None).is_empty());
    }
}
