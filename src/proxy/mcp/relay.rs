//! The server's answers on their way back: checked to be MCP, and read
//! where Latch must act on them — `tools/list` (hidden tools removed, tool
//! annotations cached for the policy) and `initialize` (the tasks extension
//! Latch adds for clients that declared it).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Map, Value};

use super::super::Proxy;
use super::json_answer;
use crate::http_util::{full, Body};
use crate::identity::Principal;
use crate::mcp::{self as wire, Framing, Message};
use crate::policy::input::{mcp_facts, now_facts, object};
use crate::server::ConnInfo;
use crate::upstream::{Call, Route};

/// Largest answer Latch reads whole (to check or rewrite it).
const MAX_ANSWER: usize = 16 << 20;
/// A cold cache asks the server for its tools at most this often.
const HINTS_REFRESH_MS: i64 = 5_000;
/// Pages of `tools/list` Latch follows when it asks itself.
const MAX_LIST_PAGES: usize = 20;

/// What in an answer Latch must act on.
#[derive(Default)]
pub(super) struct Watch {
    /// Ids of `tools/list` requests.
    lists: Vec<Value>,
    /// Id of an `initialize` whose client declared the tasks extension.
    init_with_tasks: Option<Value>,
    /// The id to name in an error about the answer (a single request's).
    pub reply_id: Option<Value>,
}

impl Watch {
    /// For the requests among `msgs`.
    pub fn of(msgs: &[Message<'_>]) -> Watch {
        let mut w = Watch::default();
        for m in msgs {
            let Message::Request { id, method, params } = m else {
                continue;
            };
            match *method {
                "tools/list" => w.lists.push((*id).clone()),
                "initialize"
                    if params
                        .and_then(|p| p.get("capabilities"))
                        .is_some_and(wire::declares_tasks) =>
                {
                    w.init_with_tasks = Some((*id).clone())
                }
                _ => {}
            }
        }
        if let [Message::Request { id, .. }] = msgs {
            w.reply_id = Some((*id).clone());
        }
        w
    }

    /// For a single request with nothing to rewrite.
    pub fn reply_to(id: &Value) -> Watch {
        Watch {
            reply_id: Some(id.clone()),
            ..Watch::default()
        }
    }

    fn rewrites(&self) -> bool {
        !self.lists.is_empty() || self.init_with_tasks.is_some()
    }
}

/// Relay the server's answer: streams pass through; JSON is checked to be
/// JSON-RPC; answers `watch` names are rewritten.
pub(super) async fn relay(
    p: &Proxy,
    route: &Route,
    agent: &Principal,
    sent: &HeaderMap,
    resp: Response<Body>,
    watch: &Watch,
) -> Response<Body> {
    let status = resp.status();
    // 202 (a notification taken), and errors such as 404 for an unknown
    // session, mean something to the client as they are.
    if status == StatusCode::ACCEPTED || !status.is_success() {
        return resp;
    }
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let Some(framing) = Framing::of(content_type) else {
        let what = content_type.unwrap_or("no Content-Type").to_string();
        return not_mcp(
            watch,
            &format!("the MCP server answered with {what}, not JSON or an event stream"),
        );
    };
    if framing == Framing::Sse && !watch.rewrites() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let read = Limited::new(body, MAX_ANSWER).collect();
    let bytes = match tokio::time::timeout(route.config.timeout, read).await {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) => {
            return not_mcp(
                watch,
                &format!("reading the MCP server's answer failed: {e}"),
            )
        }
        Err(_) => return not_mcp(watch, "the MCP server's answer did not end in time"),
    };
    let mut msgs = match wire::messages(framing, &bytes) {
        Ok(m) => m,
        Err(e) => {
            return not_mcp(
                watch,
                &format!("the MCP server's answer is not JSON-RPC: {e}"),
            )
        }
    };
    if let Some(bad) = msgs.iter().find(|m| wire::message(m).is_err()) {
        let why = wire::message(bad)
            .err()
            .map(|e| e.message)
            .unwrap_or_default();
        return not_mcp(
            watch,
            &format!("the MCP server's answer is not JSON-RPC: {why}"),
        );
    }
    if !watch.rewrites() {
        return Response::from_parts(parts, full(bytes));
    }
    rewrite(p, route, agent, &mut msgs, watch).await;
    if watch.init_with_tasks.is_some() {
        let session = parts
            .headers
            .get("mcp-session-id")
            .or_else(|| sent.get("mcp-session-id"));
        if let Some(s) = session.and_then(|v| v.to_str().ok()) {
            route.task_sessions.insert(s.to_string());
        }
    }
    let out = match framing {
        Framing::Json => {
            let batch = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
            let doc = match (batch, msgs.len()) {
                (false, 1) => msgs.remove(0),
                _ => Value::Array(msgs),
            };
            Bytes::from(doc.to_string())
        }
        Framing::Sse => msgs
            .iter()
            .flat_map(|m| wire::sse_event(m).to_vec())
            .collect::<Vec<u8>>()
            .into(),
    };
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, full(out))
}

fn not_mcp(watch: &Watch, why: &str) -> Response<Body> {
    tracing::warn!(reason = why, "MCP upstream answer refused");
    let body = wire::error(
        watch.reply_id.as_ref(),
        wire::INTERNAL_ERROR,
        why,
        Some(json!({"latch/code": "upstream_not_mcp"})),
    );
    json_answer(
        StatusCode::BAD_GATEWAY,
        &body,
        None,
        Some("upstream_not_mcp"),
    )
}

async fn rewrite(p: &Proxy, route: &Route, agent: &Principal, msgs: &mut [Value], watch: &Watch) {
    for m in msgs.iter_mut() {
        let Some(id) = m.get("id").cloned() else {
            continue;
        };
        if watch.lists.contains(&id) {
            if let Some(tools) = m.pointer_mut("/result/tools") {
                filter_tools(p, route, agent, tools).await;
            }
        } else if watch.init_with_tasks.as_ref() == Some(&id) {
            if let Some(caps) = m
                .pointer_mut("/result/capabilities")
                .and_then(Value::as_object_mut)
            {
                let ext = caps.entry("extensions").or_insert_with(|| json!({}));
                if let Some(ext) = ext.as_object_mut() {
                    ext.entry(wire::TASKS_EXTENSION)
                        .or_insert_with(|| json!({}));
                }
            }
        }
    }
}

/// Cache each listed tool's annotations and drop the ones the policy hides
/// from `agent`.
async fn filter_tools(p: &Proxy, route: &Route, agent: &Principal, tools: &mut Value) {
    let Some(list) = tools.as_array_mut() else {
        return;
    };
    let mut inputs = Vec::with_capacity(list.len());
    for t in list.iter() {
        let name = t.get("name").and_then(Value::as_str).unwrap_or("");
        let hints = annotations(t);
        route.tool_hints.insert(name.to_string(), hints.clone());
        inputs.push(visibility_input(route, agent, name, hints));
    }
    let set = p.policy.current();
    let visible = tokio::task::spawn_blocking(move || {
        inputs
            .into_iter()
            .map(|i| set.tool_visible(i))
            .collect::<Vec<bool>>()
    })
    .await
    .unwrap_or_default();
    let mut keep = visible.into_iter();
    list.retain(|_| keep.next().unwrap_or(false));
}

fn annotations(tool: &Value) -> regorus::Value {
    match tool.get("annotations") {
        Some(a @ Value::Object(_)) => regorus::Value::from(a.clone()),
        _ => regorus::Value::Null,
    }
}

/// The input `data.latch.tool_visible` is asked with, for one tool.
fn visibility_input(
    route: &Route,
    agent: &Principal,
    tool: &str,
    hints: regorus::Value,
) -> regorus::Value {
    object([
        ("route", route.input.clone()),
        ("agent", agent.input.clone()),
        (
            "action",
            object([
                ("tool", regorus::Value::from(tool)),
                ("args", regorus::Value::new_object()),
            ]),
        ),
        ("mcp", mcp_facts("tools/list", &route.config.name, hints)),
        ("now", now_facts(chrono::Utc::now())),
    ])
}

/// The cached annotations of `tool`; on a miss, Latch asks the server for
/// its tools itself (on the agent's session, at most every few seconds).
pub(super) async fn hints(
    route: &Route,
    parts: &http::request::Parts,
    conn: &ConnInfo,
    tool: &str,
    params: Option<&Map<String, Value>>,
) -> regorus::Value {
    if let Some(h) = route.tool_hint(tool) {
        return h;
    }
    let now = chrono::Utc::now().timestamp_millis();
    let last = route.hints_fetched_ms.load(Ordering::Relaxed);
    if now - last < HINTS_REFRESH_MS
        || route
            .hints_fetched_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return regorus::Value::Null;
    }
    if let Err(e) = fetch_hints(route, parts, conn, params).await {
        tracing::warn!(route = %route.config.name, error = %e, "asking the MCP server for its tools failed");
    }
    route.tool_hint(tool).unwrap_or(regorus::Value::Null)
}

async fn fetch_hints(
    route: &Route,
    parts: &http::request::Parts,
    conn: &ConnInfo,
    params: Option<&Map<String, Value>>,
) -> Result<(), String> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    for h in ["mcp-session-id", "mcp-protocol-version", "traceparent"] {
        if let Some(v) = parts.headers.get(h) {
            headers.insert(h, v.clone());
        }
    }
    // Revisions without a session carry the client's facts in `_meta`.
    let meta: Map<String, Value> = params
        .and_then(|p| p.get("_meta"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("io.modelcontextprotocol/"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut cursor: Option<Value> = None;
    for page in 0..MAX_LIST_PAGES {
        let id = json!(format!("latch-tools-list-{page}"));
        let mut params = json!({});
        if !meta.is_empty() {
            params["_meta"] = Value::Object(meta.clone());
        }
        if let Some(c) = &cursor {
            params["cursor"] = c.clone();
        }
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list", "params": params})
            .to_string();
        let mut headers = headers.clone();
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let call = Call {
            method: http::Method::POST,
            suffix: &crate::http_util::path::raw_suffix(parts.uri.path(), &route.config.prefix),
            query: parts.uri.query(),
            headers,
            body: full(body),
            peer: conn.peer,
            tls: conn.tls,
        };
        let answer = route.send_collect(call, MAX_ANSWER).await?;
        let framing = answer
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .and_then(|(_, v)| Framing::of(Some(v)))
            .ok_or_else(|| {
                format!(
                    "tools/list answered HTTP {} without MCP content",
                    answer.status
                )
            })?;
        let msgs = wire::messages(framing, &answer.body)?;
        let result = wire::response_to(&msgs, &id)
            .and_then(|r| r.get("result"))
            .ok_or("tools/list got no result")?;
        for t in result
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = t.get("name").and_then(Value::as_str) {
                route.tool_hints.insert(name.to_string(), annotations(t));
            }
        }
        match result.get("nextCursor") {
            Some(c) if !c.is_null() => cursor = Some(c.clone()),
            _ => return Ok(()),
        }
    }
    Ok(())
}
