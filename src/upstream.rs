//! Routes and the one way a call leaves Latch: [`Route::send`], used by the
//! forward path for allowed calls and by the gate for approved executions,
//! so both state the same forwarding headers, inject the same credentials
//! and honour the same timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;

use crate::config::RouteConfig;
use crate::http_util::headers::strip_hop_by_hop;
use crate::http_util::{path, Body};
use crate::telemetry::Metrics;

/// The pooled client type used for upstreams.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

/// A configured route with its client.
pub struct Route {
    /// Validated config.
    pub config: RouteConfig,
    /// Upstream base URL as text (for policy input and logs).
    pub upstream_text: String,
    /// Path of the upstream base URL without a trailing slash.
    base_path: String,
    /// Client for this route (its own CA bundle, connect timeout).
    pub client: UpstreamClient,
    /// `input.route`, built once.
    pub input: regorus::Value,
    /// Time to the upstream's response head, for this route.
    latency: prometheus::Histogram,
    /// MCP routes: each tool's `annotations` from the server's latest
    /// `tools/list` (untrusted hints for the policy, `input.mcp`).
    pub tool_hints: dashmap::DashMap<String, regorus::Value>,
    /// MCP routes: when Latch last asked the server for its tools (Unix ms).
    pub hints_fetched_ms: std::sync::atomic::AtomicI64,
    /// MCP routes: sessions whose client declared the tasks extension.
    pub task_sessions: dashmap::DashSet<String>,
}

impl Route {
    /// Build the route and its client.
    pub fn new(
        config: RouteConfig,
        system_roots: &RootCertStore,
        metrics: &Metrics,
    ) -> anyhow::Result<Route> {
        let https = crate::tls::https_connector(
            system_roots,
            config.ca_file.as_deref(),
            Some(config.timeout.min(Duration::from_secs(10))),
        )?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(https);
        let upstream_text = config
            .upstream
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let base_path = config.upstream.path().trim_end_matches('/').to_string();
        let input = route_facts(&config.name, &upstream_text, &config.tool);
        let latency = metrics.upstream.with_label_values(&[config.name.as_str()]);
        Ok(Route {
            input,
            latency,
            config,
            upstream_text,
            base_path,
            client,
            tool_hints: dashmap::DashMap::new(),
            hints_fetched_ms: std::sync::atomic::AtomicI64::new(0),
            task_sessions: dashmap::DashSet::new(),
        })
    }

    /// The upstream URI for a request whose raw path after the prefix is
    /// `suffix` (empty or starting with `/`).
    pub fn upstream_uri(&self, suffix: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut pq = String::with_capacity(self.base_path.len() + suffix.len() + 16);
        pq.push_str(&self.base_path);
        pq.push_str(suffix);
        if pq.is_empty() {
            pq.push('/');
        }
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let mut parts = self.config.upstream.clone().into_parts();
        parts.path_and_query = Some(PathAndQuery::try_from(pq)?);
        Ok(Uri::from_parts(parts)?)
    }
}

impl Route {
    /// MCP routes: tool `name`'s annotations from the server's latest `tools/list`.
    pub fn tool_hint(&self, name: &str) -> Option<regorus::Value> {
        self.tool_hints.get(name).map(|h| h.clone())
    }
}

/// Find the route with the longest prefix that `decoded` falls under.
pub fn find<'a>(routes: &'a [Route], decoded: &str) -> Option<&'a Route> {
    routes
        .iter()
        .filter(|r| path::under(decoded, &r.config.prefix))
        .max_by_key(|r| r.config.prefix.len())
}

/// `input.route`, built once per route at start-up.
pub fn route_facts(name: &str, upstream: &str, tool: &str) -> regorus::Value {
    let map: std::collections::BTreeMap<regorus::Value, regorus::Value> =
        [("name", name), ("upstream", upstream), ("tool", tool)]
            .into_iter()
            .map(|(k, v)| (regorus::Value::from(k), regorus::Value::from(v)))
            .collect();
    regorus::Value::from(map)
}

/// One call to send: exactly what the policy judged (or the humans approved).
pub struct Call<'a> {
    /// Method.
    pub method: Method,
    /// Raw path after the route prefix (empty or starting with `/`).
    pub suffix: &'a str,
    /// Raw query string.
    pub query: Option<&'a str>,
    /// The agent's headers; [`upstream_request_headers`] is applied to them.
    pub headers: HeaderMap,
    /// The body.
    pub body: Body,
    /// Who sent the call, for the forwarding headers.
    pub peer: SocketAddr,
    /// Whether the agent's connection was TLS.
    pub tls: bool,
}

/// Why a call got no upstream answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The target does not form a valid URI.
    #[error("bad upstream target: {0}")]
    Target(#[from] http::Error),
    /// No response head within the route's timeout.
    #[error("upstream did not answer in time")]
    Timeout,
    /// The streamed request body went past the route's limit.
    #[error("request body over the route's limit")]
    BodyTooLarge,
    /// No connection could be made.
    #[error("upstream unreachable: {0}")]
    Unavailable(#[source] hyper_util::client::legacy::Error),
    /// The exchange failed after connecting.
    #[error("upstream request failed: {0}")]
    Failed(#[source] hyper_util::client::legacy::Error),
}

/// An upstream answer read whole (for an approved execution, whose answer
/// is stored for the agent to collect).
#[derive(Debug, Clone)]
pub struct Collected {
    /// Status.
    pub status: u16,
    /// Headers, hop-by-hop and length removed.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

impl Route {
    /// Send `call` to this route's upstream and return its response head
    /// (hop-by-hop headers removed) with the body still streaming.
    pub async fn send(&self, call: Call<'_>) -> Result<Response<Incoming>, SendError> {
        let uri = self.upstream_uri(call.suffix, call.query)?;
        let mut headers = call.headers;
        upstream_request_headers(
            &mut headers,
            call.peer,
            call.tls,
            &self.config.inject_headers,
        );
        let mut req = Request::new(call.body);
        *req.method_mut() = call.method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let started = Instant::now();
        let result = tokio::time::timeout(self.config.timeout, self.client.request(req)).await;
        self.latency.observe(started.elapsed().as_secs_f64());
        let mut resp = match result {
            Err(_) => return Err(SendError::Timeout),
            Ok(Err(e)) if is_length_limit(&e) => return Err(SendError::BodyTooLarge),
            Ok(Err(e)) if e.is_connect() => {
                tracing::warn!(route = %self.config.name, error = %e, "upstream connect failed");
                return Err(SendError::Unavailable(e));
            }
            Ok(Err(e)) => {
                tracing::warn!(route = %self.config.name, error = %e, "upstream request failed");
                return Err(SendError::Failed(e));
            }
            Ok(Ok(resp)) => resp,
        };
        strip_hop_by_hop(resp.headers_mut());
        Ok(resp)
    }

    /// [`Route::send`], then read the whole answer (at most `limit` bytes,
    /// within the route's timeout).
    pub async fn send_collect(&self, call: Call<'_>, limit: usize) -> Result<Collected, String> {
        let resp = self.send(call).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        // An MCP server may keep a POST's event stream open after it has
        // answered; the answer is complete once its response event is in.
        let mcp_stream = self.config.protocol == crate::config::Protocol::Mcp
            && crate::mcp::Framing::of(
                parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok()),
            ) == Some(crate::mcp::Framing::Sse);
        let read = read_answer(body, limit, mcp_stream);
        let body = tokio::time::timeout(self.config.timeout, read)
            .await
            .map_err(|_| "upstream answer did not arrive in time".to_string())??;
        let headers = parts
            .headers
            .iter()
            .filter(|(k, _)| *k != header::CONTENT_LENGTH)
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
            .collect();
        Ok(Collected {
            status: parts.status.as_u16(),
            headers,
            body,
        })
    }
}

/// Read an answer's body, at most `limit` bytes; with `until_response`, only
/// until an event stream holds a JSON-RPC response.
async fn read_answer(
    mut body: Incoming,
    limit: usize,
    until_response: bool,
) -> Result<Bytes, String> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the upstream answer failed: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > limit {
            return Err(format!("the upstream answer exceeds {limit} bytes"));
        }
        buf.extend_from_slice(&data);
        if until_response && holds_response(&buf) {
            break;
        }
    }
    Ok(buf.freeze())
}

/// Whether the complete events in `sse` include a JSON-RPC response.
fn holds_response(sse: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(sse) else {
        return false;
    };
    let complete = match text.rfind("\n\n") {
        Some(i) => &text[..i + 2],
        None => return false,
    };
    crate::mcp::messages(crate::mcp::Framing::Sse, complete.as_bytes()).is_ok_and(|msgs| {
        msgs.iter().any(|m| {
            m.get("method").is_none() && (m.get("result").is_some() || m.get("error").is_some())
        })
    })
}

/// Whether `e` (or a cause) is a body length limit being hit.
pub fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

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
    headers.remove(X_FORWARDED_FOR);
    headers.remove(X_FORWARDED_PROTO);
    headers.remove(X_FORWARDED_HOST);
    headers.remove(X_REAL_IP);
    let latch_own: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("latch-"))
        .cloned()
        .collect();
    for k in latch_own {
        headers.remove(k);
    }

    use std::fmt::Write as _;
    let proto = if tls { "https" } else { "http" };
    let ip = ip_text(peer.ip());
    // Each value is written into one buffer that the header then owns.
    let mut forwarded = String::with_capacity(64);
    let (open, close) = if peer.is_ipv6() {
        ("\"[", "]\"")
    } else {
        ("", "")
    };
    for part in ["for=", open, &ip, close, ";proto=", proto] {
        forwarded.push_str(part);
    }
    if let Some(h) = original_host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b';' && b != b',')
        })
    {
        let _ = write!(forwarded, ";host=\"{h}\"");
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(forwarded)) {
        headers.insert(header::FORWARDED, v);
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(ip)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(h) = original_host {
        headers.insert(X_FORWARDED_HOST, h);
    }
    for (name, value) in inject {
        headers.insert(name.clone(), value.clone());
    }
}

/// The address as text; IPv4 without the formatting machinery (this runs
/// for every forwarded call).
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_text_is_dotted_decimal() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "255.255.255.255",
            "192.168.100.9",
            "8.80.200.99",
        ] {
            assert_eq!(ip_text(ip.parse().unwrap()), ip);
        }
        assert_eq!(ip_text("::1".parse().unwrap()), "::1");
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
    fn an_event_stream_is_complete_once_it_holds_a_response() {
        let progress = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n";
        assert!(!holds_response(progress.as_bytes()));
        let partial = format!("{progress}data: {{\"jsonrpc\":\"2.0\",\"id\":1,\"res");
        assert!(!holds_response(partial.as_bytes()));
        let whole = format!("{progress}data: {{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{{}}}}\n\n");
        assert!(holds_response(whole.as_bytes()));
    }

    #[test]
    fn ipv6_forwarded_is_quoted() {
        let mut h = HeaderMap::new();
        upstream_request_headers(&mut h, "[::1]:80".parse().unwrap(), true, &[]);
        assert_eq!(h["forwarded"], "for=\"[::1]\";proto=https");
    }
}
