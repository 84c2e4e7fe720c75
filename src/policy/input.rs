//! The Rego input document (see the contract in `policies/README.md`).
//!
//! Built from facts the proxy has already checked: the path is decoded and
//! unambiguous, headers are allow-listed (never credentials), and the body is
//! parsed JSON or `null` when it is streamed or not JSON.

use chrono::{DateTime, Datelike, Timelike, Utc};
use http::{HeaderMap, HeaderName};
use serde_json::{json, Map, Value};

use crate::history::Stats;

/// Facts about one request, gathered by the proxy.
#[derive(Debug)]
pub struct RequestFacts<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Decoded path.
    pub path: &'a str,
    /// Raw query string, if any.
    pub query: Option<&'a str>,
    /// All request headers (filtered here).
    pub headers: &'a HeaderMap,
    /// Headers the policy may see.
    pub allowed_headers: &'a [HeaderName],
    /// Parsed JSON body (`None` when absent, streamed or not JSON).
    pub body: Option<&'a Value>,
    /// Hex SHA-256 of the body bytes, when buffered.
    pub body_sha256: Option<&'a str>,
    /// Body size in bytes, when known.
    pub size: Option<u64>,
}

/// The route the request matched.
#[derive(Debug)]
pub struct RouteFacts<'a> {
    /// Route name.
    pub name: &'a str,
    /// Upstream base URL.
    pub upstream: &'a str,
    /// Tool name.
    pub tool: &'a str,
}

/// `(tool, args)` of the action: MCP `tools/call` names its own tool and
/// arguments; otherwise the route's tool with the JSON body (or, without a
/// body, the query parameters).
pub fn action<'a>(
    route_tool: &'a str,
    body: Option<&'a Value>,
    query: &Map<String, Value>,
) -> (&'a str, Value) {
    if let Some(b) = body {
        if b.get("jsonrpc").is_some()
            && b.get("method").and_then(Value::as_str) == Some("tools/call")
        {
            let params = b.get("params");
            if let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) {
                let args = params
                    .and_then(|p| p.get("arguments"))
                    .cloned()
                    .unwrap_or(Value::Object(Map::new()));
                return (name, args);
            }
        }
        return (route_tool, b.clone());
    }
    let args = query
        .iter()
        .map(|(k, v)| match v.as_array().map(Vec::as_slice) {
            Some([one]) => (k.clone(), one.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    (route_tool, Value::Object(args))
}

/// Parse a query string into `{key: [values]}` (OPA's `parsed_query` shape);
/// `+` is a space, bad escapes are kept literally.
pub fn parse_query(query: Option<&str>) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(q) = query else { return out };
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let entry = out
            .entry(decode_component(k))
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(values) = entry {
            values.push(Value::String(decode_component(v)));
        }
    }
    out
}

fn decode_component(s: &str) -> String {
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

/// `input.now`.
pub fn now_facts(now: DateTime<Utc>) -> Value {
    json!({
        "rfc3339": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "unix": now.timestamp(),
        "weekday": weekday_name(now.weekday()),
        "hour": now.hour(),
    })
}

fn weekday_name(d: chrono::Weekday) -> &'static str {
    match d {
        chrono::Weekday::Mon => "Monday",
        chrono::Weekday::Tue => "Tuesday",
        chrono::Weekday::Wed => "Wednesday",
        chrono::Weekday::Thu => "Thursday",
        chrono::Weekday::Fri => "Friday",
        chrono::Weekday::Sat => "Saturday",
        chrono::Weekday::Sun => "Sunday",
    }
}

/// The whole input document.
pub fn build(
    req: &RequestFacts<'_>,
    route: &RouteFacts<'_>,
    agent: &crate::identity::Principal,
    (tool, args): (&str, Value),
    query: Map<String, Value>,
    history: &Stats,
    now: DateTime<Utc>,
) -> Value {
    let mut headers = Map::new();
    for name in req.allowed_headers {
        let mut values = req
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok());
        if let Some(first) = values.next() {
            let mut joined = first.to_string();
            for v in values {
                joined.push_str(", ");
                joined.push_str(v);
            }
            headers.insert(name.as_str().to_string(), Value::String(joined));
        }
    }
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    json!({
        "request": {
            "method": req.method,
            "path": req.path,
            "query": query,
            "headers": headers,
            "body": req.body,
            "body_sha256": req.body_sha256,
            "content_type": content_type,
            "size": req.size,
        },
        "route": {"name": route.name, "upstream": route.upstream, "tool": route.tool},
        "agent": {"id": agent.id, "roles": agent.roles},
        "action": {"tool": tool, "args": args},
        "history": history.to_input(),
        "now": now_facts(now),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = parse_query(Some("q=rust+lang&tag=a&tag=b%20c&flag&bad=%zz"));
        assert_eq!(q["q"], json!(["rust lang"]));
        assert_eq!(q["tag"], json!(["a", "b c"]));
        assert_eq!(q["flag"], json!([""]));
        assert_eq!(q["bad"], json!(["%zz"]));
        assert!(parse_query(None).is_empty());
    }

    #[test]
    fn action_from_body_query_and_mcp() {
        let q = parse_query(Some("q=x&t=1&t=2"));
        let (tool, args) = action("search", None, &q);
        assert_eq!(tool, "search");
        assert_eq!(args, json!({"q": "x", "t": ["1", "2"]}));

        let body = json!({"to": "a@b"});
        assert_eq!(action("email", Some(&body), &q), ("email", body.clone()));

        let mcp = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                         "params": {"name": "delete_repo", "arguments": {"repo": "x"}}});
        assert_eq!(
            action("mcp", Some(&mcp), &q),
            ("delete_repo", json!({"repo": "x"}))
        );
    }

    #[test]
    fn now_shape() {
        let t = DateTime::parse_from_rfc3339("2026-11-23T14:05:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            now_facts(t),
            json!({"rfc3339": "2026-11-23T14:05:00Z", "unix": t.timestamp(), "weekday": "Monday", "hour": 14})
        );
    }
}
