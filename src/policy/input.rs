//! The Rego input document (see the contract in `policies/README.md`).
//!
//! Built from facts the proxy has already checked: the path is decoded and
//! unambiguous, hop-by-hop headers are already gone and the rest are
//! allow-listed (never credentials), and the body is what [`super::body`]
//! judged — the content the tool will get — or `null` when the route
//! declares bodies opaque.
//!
//! The document is built directly as regorus values: going through
//! `serde_json::Value` and converting cost more than evaluating the policy.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use chrono::{DateTime, Datelike, Timelike, Utc};
use http::{HeaderMap, HeaderName};
use regorus::Value;

use crate::history::stats::Stats;
use crate::http_util::query::Query;

/// Facts about one request, gathered by the proxy.
#[derive(Debug)]
pub struct RequestFacts<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Decoded path.
    pub path: &'a str,
    /// Parsed query.
    pub query: &'a Query,
    /// All request headers (filtered here).
    pub headers: &'a HeaderMap,
    /// Headers the policy may see.
    pub allowed_headers: &'a [HeaderName],
    /// The judged body (`Value::Null` when absent or opaque).
    pub body: &'a Value,
    /// How the body was understood (`none`, `json`, `form`, `opaque`).
    pub body_format: &'a str,
    /// Hex SHA-256 of the body bytes, when buffered.
    pub body_sha256: Option<&'a str>,
    /// Body size in bytes, when known.
    pub size: Option<u64>,
}

/// An object from `(key, value)` pairs.
pub fn object<'k>(pairs: impl IntoIterator<Item = (&'k str, Value)>) -> Value {
    let map: BTreeMap<Value, Value> = pairs
        .into_iter()
        .map(|(k, v)| (Value::from(k), v))
        .collect();
    Value::from(map)
}

thread_local! {
    /// The document's own keys (`request`, `method`, `seen`, …), made once
    /// per thread and shared by every call's document: they were a third of
    /// its allocations. Found by the text's address and length (the keys
    /// are string constants), which hashes in a few instructions where
    /// hashing the text took a hundred or so per key.
    static KEYS: RefCell<HashMap<(usize, usize), Value, BuildHasherDefault<AddressHasher>>> =
        RefCell::new(HashMap::default());
}

/// Hashes the `(address, length)` of a string constant.
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// An object with the document's own keys; see [`KEYS`]. Pairs listed in
/// key order are the cheapest to build (the map sorts them).
fn fixed<const N: usize>(pairs: [(&'static str, Value); N]) -> Value {
    let map: BTreeMap<Value, Value> = KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        pairs
            .into_iter()
            .map(|(k, v)| {
                let key = keys
                    .entry((k.as_ptr() as usize, k.len()))
                    .or_insert_with(|| Value::from(k));
                (key.clone(), v)
            })
            .collect()
    });
    Value::from(map)
}

fn opt_str(s: Option<&str>) -> Value {
    s.map(Value::from).unwrap_or(Value::Null)
}

/// The action's arguments: the judged body (JSON or form), or, without one,
/// the query parameters (single values as strings).
///
/// The tool is always the route's: on a plain HTTP route nothing the agent
/// puts in the body (a JSON-RPC envelope, say) can rename the tool the
/// policy judges.
pub fn args(body: &Value, query: &Query) -> Value {
    if *body != Value::Null {
        return body.clone();
    }
    let args = query.iter().map(|(k, values)| {
        let v = match values.as_slice() {
            [one] => Value::from(one.as_str()),
            many => Value::from(
                many.iter()
                    .map(|s| Value::from(s.as_str()))
                    .collect::<Vec<_>>(),
            ),
        };
        (k.as_str(), v)
    });
    object(args)
}

thread_local! {
    /// `input.now` changes once a second; build it once per second per thread.
    static NOW: RefCell<(i64, Value)> = const { RefCell::new((i64::MIN, Value::Null)) };
}

/// `input.now`.
pub fn now_facts(now: DateTime<Utc>) -> Value {
    let second = now.timestamp();
    NOW.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            *cached = (second, build_now(now));
        }
        cached.1.clone()
    })
}

fn build_now(now: DateTime<Utc>) -> Value {
    fixed([
        ("hour", Value::from(u64::from(now.hour()))),
        (
            "rfc3339",
            Value::from(now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ),
        ("unix", Value::from(now.timestamp())),
        ("weekday", Value::from(weekday_name(now.weekday()))),
    ])
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

/// `input.history`.
pub fn history_facts(s: &Stats) -> Value {
    let first_seen = s
        .first_seen
        .and_then(|t| DateTime::from_timestamp(t, 0))
        .map(|t| Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        .unwrap_or(Value::Null);
    fixed([
        ("approved", Value::from(s.approved)),
        ("first_seen", first_seen),
        ("last_decision", opt_str(s.last_decision.as_deref())),
        ("mean_decision_s", mean_decision_s(s)),
        ("rejected", Value::from(s.rejected)),
        ("seen", Value::from(s.seen)),
    ])
}

fn mean_decision_s(s: &Stats) -> Value {
    let decided = s.approved + s.rejected;
    if decided == 0 {
        return Value::Null;
    }
    Value::from(s.decision_ms_total as f64 / decided as f64 / 1000.0)
}

/// Set `input[key]` (for facts only the proxy knows, e.g. `grants`).
pub fn set(input: &mut Value, key: &str, value: Value) {
    if let Ok(map) = input.as_object_mut() {
        map.insert(Value::from(key), value);
    }
}

/// The whole `input` document for one call.
pub fn build(
    req: &RequestFacts<'_>,
    route: &Value,
    agent: &Value,
    (tool, args, class): (&str, Value, &str),
    history: &Stats,
    now: DateTime<Utc>,
) -> Value {
    let mut headers = BTreeMap::new();
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
            headers.insert(Value::from(name.as_str()), Value::from(joined));
        }
    }
    let query = object(req.query.iter().map(|(k, vs)| {
        (
            k.as_str(),
            Value::from(
                vs.iter()
                    .map(|v| Value::from(v.as_str()))
                    .collect::<Vec<_>>(),
            ),
        )
    }));
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let request = fixed([
        ("body", req.body.clone()),
        ("body_format", Value::from(req.body_format)),
        ("body_sha256", opt_str(req.body_sha256)),
        ("content_type", opt_str(content_type)),
        ("headers", Value::from(headers)),
        ("method", Value::from(req.method)),
        ("path", Value::from(req.path)),
        ("query", query),
        ("size", req.size.map(Value::from).unwrap_or(Value::Null)),
    ]);
    fixed([
        (
            "action",
            fixed([
                ("args", args),
                ("class", Value::from(class)),
                ("tool", Value::from(tool)),
            ]),
        ),
        ("agent", agent.clone()),
        ("history", history_facts(history)),
        ("now", now_facts(now)),
        ("request", request),
        ("route", route.clone()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_util::query::parse_query;
    use serde_json::json;

    fn js(v: &Value) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    #[test]
    fn args_from_body_or_query() {
        let q = parse_query(Some("q=x&t=1&t=2"));
        assert_eq!(
            js(&args(&Value::Null, &q)),
            json!({"q": "x", "t": ["1", "2"]})
        );

        let body = super::super::body::parse_json(br#"{"to": "a@b"}"#).unwrap();
        assert_eq!(js(&args(&body, &q)), json!({"to": "a@b"}));

        // A JSON-RPC envelope on a plain route is just the body: the
        // agent cannot pick the tool the policy judges.
        let mcp = super::super::body::parse_json(
            br#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                 "params": {"name": "search", "arguments": {"q": "x"}}}"#,
        )
        .unwrap();
        assert_eq!(js(&args(&mcp, &q))["method"], json!("tools/call"));
    }

    #[test]
    fn now_shape() {
        let t = DateTime::parse_from_rfc3339("2026-11-23T14:05:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            js(&now_facts(t)),
            json!({"rfc3339": "2026-11-23T14:05:00Z", "unix": t.timestamp(), "weekday": "Monday", "hour": 14})
        );
        let later = t + chrono::Duration::seconds(3600);
        assert_eq!(js(&now_facts(later))["hour"], 15);
    }

    #[test]
    fn history_shape() {
        let s = Stats {
            seen: 2,
            first_seen: Some(101),
            last_seen: Some(102),
            approved: 1,
            rejected: 0,
            last_decision: Some("allow".into()),
            decision_ms_total: 2500,
        };
        assert_eq!(
            js(&history_facts(&s)),
            json!({"seen": 2, "first_seen": "1970-01-01T00:01:41Z", "approved": 1, "rejected": 0,
                   "last_decision": "allow", "mean_decision_s": 2.5})
        );
        assert_eq!(
            js(&history_facts(&Stats::default()))["first_seen"],
            json!(null)
        );
    }
}

/// `input.mcp` for a message of `method` to MCP server (route) `server`;
/// `annotations` are the tool's hints from the server's `tools/list`.
pub fn mcp_facts(method: &str, server: &str, annotations: Value) -> Value {
    fixed([
        ("annotations", annotations),
        ("method", Value::from(method)),
        ("server", Value::from(server)),
    ])
}
