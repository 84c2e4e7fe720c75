//! The Model Context Protocol on the wire, as the gate must read it:
//! JSON-RPC messages checked and classified, `tools/call` parameters,
//! Server-Sent Events in both directions, and the results Latch writes
//! itself (a refusal the model can read, progress, tasks).
//!
//! Pure functions over `serde_json` values; the MCP route in
//! [`crate::proxy`] and the stdio bridge ([`stdio`]) use them.

pub mod stdio;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// The tasks extension a client declares to get a task for a held call.
pub const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";
/// Per-request client capabilities (revisions without `initialize`).
pub const META_CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// The task a result belongs to.
pub const META_RELATED_TASK: &str = "io.modelcontextprotocol/related-task";

/// JSON-RPC: the body is not JSON.
pub const PARSE_ERROR: i64 = -32700;
/// JSON-RPC: not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// JSON-RPC: bad parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// JSON-RPC: the server failed.
pub const INTERNAL_ERROR: i64 = -32603;

/// Why a message is not acceptable JSON-RPC.
#[derive(Debug, Clone, PartialEq)]
pub struct WireError {
    /// The JSON-RPC error code.
    pub code: i64,
    /// What is wrong, for the client.
    pub message: String,
    /// The request's id, when it had a usable one.
    pub id: Option<Value>,
}

impl WireError {
    fn new(code: i64, message: impl Into<String>, id: Option<&Value>) -> WireError {
        WireError {
            code,
            message: message.into(),
            id: id.cloned(),
        }
    }

    /// The error as a JSON-RPC response.
    pub fn to_json(&self) -> Value {
        error(self.id.as_ref(), self.code, &self.message, None)
    }
}

/// One JSON-RPC message, checked.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    /// A request: answered by a response with the same id.
    Request {
        /// Its id (a string or an integer).
        id: &'a Value,
        /// The method.
        method: &'a str,
        /// Its parameters (an object), if any.
        params: Option<&'a Map<String, Value>>,
    },
    /// A notification: no answer.
    Notification {
        /// The method.
        method: &'a str,
    },
    /// A response to a request the server made (sampling, elicitation…).
    Response,
}

impl Message<'_> {
    /// The method, for a request or notification.
    pub fn method(&self) -> Option<&str> {
        match self {
            Message::Request { method, .. } | Message::Notification { method } => Some(method),
            Message::Response => None,
        }
    }

    /// The id, for a request.
    pub fn request_id(&self) -> Option<&Value> {
        match self {
            Message::Request { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// Check `v` as one JSON-RPC 2.0 message.
pub fn message(v: &Value) -> Result<Message<'_>, WireError> {
    let Some(obj) = v.as_object() else {
        return Err(WireError::new(
            INVALID_REQUEST,
            "a JSON-RPC message must be an object",
            None,
        ));
    };
    let id = obj.get("id");
    let usable_id = id.filter(|i| i.is_string() || i.is_i64() || i.is_u64());
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(WireError::new(
            INVALID_REQUEST,
            "`jsonrpc` must be \"2.0\"",
            usable_id,
        ));
    }
    if id.is_some() && usable_id.is_none() {
        return Err(WireError::new(
            INVALID_REQUEST,
            "`id` must be a string or an integer",
            None,
        ));
    }
    let Some(method) = obj.get("method") else {
        let answers = obj.contains_key("result") as u8 + obj.contains_key("error") as u8;
        if usable_id.is_none() || answers != 1 {
            return Err(WireError::new(
                INVALID_REQUEST,
                "a message without `method` must be a response: an `id` and one of `result` or `error`",
                usable_id,
            ));
        }
        return Ok(Message::Response);
    };
    let Some(method) = method.as_str().filter(|m| !m.is_empty()) else {
        return Err(WireError::new(
            INVALID_REQUEST,
            "`method` must be a non-empty string",
            usable_id,
        ));
    };
    let params = match obj.get("params") {
        None => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => {
            return Err(WireError::new(
                INVALID_PARAMS,
                format!("`params` of {method} must be an object"),
                usable_id,
            ))
        }
    };
    Ok(match usable_id {
        Some(id) => Message::Request { id, method, params },
        None => Message::Notification { method },
    })
}

/// The parts of a `tools/call` the gate acts on.
#[derive(Debug, Clone, Copy)]
pub struct ToolCall<'a> {
    /// `params.name`.
    pub name: &'a str,
    /// `params.arguments` (absent: none given).
    pub arguments: Option<&'a Map<String, Value>>,
    /// `params._meta.progressToken`: the client wants progress.
    pub progress_token: Option<&'a Value>,
    /// `params.task` (task-augmented request, 2025-11-25).
    pub task: bool,
    /// The per-request client capabilities declare the tasks extension.
    pub declares_tasks: bool,
}

/// Read the parameters of a `tools/call` request with id `id`.
pub fn tool_call<'a>(
    id: &Value,
    params: Option<&'a Map<String, Value>>,
) -> Result<ToolCall<'a>, WireError> {
    let bad = |m: &str| WireError::new(INVALID_PARAMS, m, Some(id));
    let params = params.ok_or_else(|| bad("tools/call needs `params` with the tool's `name`"))?;
    let name = match params.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.as_str(),
        Some(_) => {
            return Err(bad(
                "`params.name` of tools/call must be a non-empty string",
            ))
        }
        None => return Err(bad("tools/call needs `params.name`")),
    };
    let arguments = match params.get("arguments") {
        None => None,
        Some(Value::Object(a)) => Some(a),
        Some(_) => return Err(bad("`params.arguments` of tools/call must be an object")),
    };
    let meta = params.get("_meta").and_then(Value::as_object);
    let progress_token = meta
        .and_then(|m| m.get("progressToken"))
        .filter(|t| t.is_string() || t.is_i64() || t.is_u64());
    let declares_tasks = meta
        .and_then(|m| m.get(META_CLIENT_CAPABILITIES))
        .is_some_and(declares_tasks);
    Ok(ToolCall {
        name,
        arguments,
        progress_token,
        task: params.get("task").is_some_and(Value::is_object),
        declares_tasks,
    })
}

/// Whether client capabilities `caps` declare the tasks extension.
pub fn declares_tasks(caps: &Value) -> bool {
    caps.get("extensions")
        .and_then(Value::as_object)
        .is_some_and(|e| e.contains_key(TASKS_EXTENSION))
        || caps.get("tasks").is_some_and(Value::is_object)
}

/// SEP-2243 headers (`Mcp-Method`, `Mcp-Name`) must say what the body says:
/// a middle box that routes on them must not see one call while the server
/// runs another.
pub fn check_standard_headers(
    method_header: Option<&str>,
    name_header: Option<&str>,
    msg: &Message<'_>,
) -> Result<(), String> {
    let (method, params) = match msg {
        Message::Request { method, params, .. } => (Some(*method), *params),
        Message::Notification { method } => (Some(*method), None),
        Message::Response => (None, None),
    };
    if let Some(h) = method_header {
        if Some(h) != method {
            return Err(format!(
                "the Mcp-Method header says {h:?} but the body's method is {:?}",
                method.unwrap_or("none")
            ));
        }
    }
    if let Some(h) = name_header {
        let h = decode_header_value(h).ok_or("the Mcp-Name header's Base64 does not decode")?;
        let key = match method {
            Some("tools/call" | "prompts/get") => "name",
            Some("resources/read" | "resources/subscribe" | "resources/unsubscribe") => "uri",
            Some("tasks/get" | "tasks/update" | "tasks/cancel") => "taskId",
            _ => return Err("an Mcp-Name header on a method that names nothing".into()),
        };
        let body = params.and_then(|p| p.get(key)).and_then(Value::as_str);
        if body != Some(h.as_str()) {
            return Err(format!(
                "the Mcp-Name header says {h:?} but the body's `{key}` is {:?}",
                body.unwrap_or("absent")
            ));
        }
    }
    Ok(())
}

/// A SEP-2243 header value: plain, or `=?base64?…?=`.
fn decode_header_value(v: &str) -> Option<String> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        None => Some(v.to_string()),
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
    }
}

/// A JSON-RPC error response (`id: null` when the request had none usable).
pub fn error(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Value {
    let mut err = json!({"code": code, "message": message});
    if let Some(d) = data {
        err["data"] = d;
    }
    json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": err})
}

/// A JSON-RPC result response.
pub fn result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A tool result the model reads as a failure: `isError`, the text lines as
/// text content, and Latch's facts under `_meta` (`latch/…` keys).
pub fn tool_error(lines: &[String], meta: Map<String, Value>) -> Value {
    let text = lines.join("\n");
    json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
        "_meta": meta,
    })
}

/// A `notifications/progress` message.
pub fn progress(token: &Value, progress: u64, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": token, "progress": progress, "message": message},
    })
}

/// A task's state, as `tasks/get` and task creation describe it.
#[derive(Debug, Clone)]
pub struct TaskState<'a> {
    /// Task id (Latch uses the approval id).
    pub id: &'a str,
    /// `working`, `completed`, `failed` or `cancelled`.
    pub status: &'static str,
    /// For the user or model.
    pub message: Option<String>,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Unix milliseconds.
    pub updated_ms: i64,
    /// Milliseconds the task is kept from creation.
    pub ttl_ms: Option<i64>,
}

/// Poll interval suggested to task clients.
pub const TASK_POLL_MS: u64 = 2000;

/// The task fields, in both the 2025-11-25 and the extension's spelling.
pub fn task_fields(t: &TaskState<'_>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("taskId".into(), t.id.into());
    m.insert("status".into(), t.status.into());
    if let Some(msg) = &t.message {
        m.insert("statusMessage".into(), msg.as_str().into());
    }
    m.insert("createdAt".into(), rfc3339(t.created_ms).into());
    m.insert("lastUpdatedAt".into(), rfc3339(t.updated_ms).into());
    let ttl = t.ttl_ms.map(Value::from).unwrap_or(Value::Null);
    m.insert("ttlMs".into(), ttl.clone());
    m.insert("ttl".into(), ttl);
    m.insert("pollIntervalMs".into(), TASK_POLL_MS.into());
    m.insert("pollInterval".into(), TASK_POLL_MS.into());
    m
}

/// The answer to a task-augmented call: the task was created.
pub fn task_created(t: &TaskState<'_>) -> Value {
    let fields = task_fields(t);
    let mut out = fields.clone();
    out.insert("resultType".into(), "task".into());
    out.insert("task".into(), Value::Object(fields));
    Value::Object(out)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One Server-Sent Event carrying a JSON-RPC message.
pub fn sse_event(msg: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {msg}\n\n"))
}

/// The `data` of each event in a whole SSE body (multi-line data joined
/// with `\n`; comments and other fields skipped).
pub fn sse_data(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut data: Option<String> = None;
    for line in body.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if let Some(d) = data.take() {
                out.push(d);
            }
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            }
        }
    }
    if let Some(d) = data {
        out.push(d);
    }
    out
}

/// How a server answered a POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `application/json`: one message (or a batch).
    Json,
    /// `text/event-stream`: events, the response among them.
    Sse,
}

impl Framing {
    /// From a `Content-Type`, if it is one MCP uses.
    pub fn of(content_type: Option<&str>) -> Option<Framing> {
        let mime = content_type?.split(';').next()?.trim();
        if mime.eq_ignore_ascii_case("application/json") {
            Some(Framing::Json)
        } else if mime.eq_ignore_ascii_case("text/event-stream") {
            Some(Framing::Sse)
        } else {
            None
        }
    }
}

/// The messages of a whole answer, in order.
pub fn messages(framing: Framing, body: &[u8]) -> Result<Vec<Value>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_string())?;
    let docs = match framing {
        Framing::Json => vec![text.to_string()],
        Framing::Sse => sse_data(text),
    };
    let mut out = Vec::new();
    for d in docs {
        if framing == Framing::Sse && d.is_empty() {
            continue; // a priming event
        }
        match serde_json::from_str::<Value>(&d) {
            Ok(Value::Array(batch)) => out.extend(batch),
            Ok(v) => out.push(v),
            Err(e) => return Err(format!("an answer that is not JSON: {e}")),
        }
    }
    Ok(out)
}

/// The response to request `id` among `msgs`.
pub fn response_to<'a>(msgs: &'a [Value], id: &Value) -> Option<&'a Value> {
    msgs.iter().find(|m| {
        m.get("id") == Some(id)
            && m.get("method").is_none()
            && (m.get("result").is_some() || m.get("error").is_some())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_classified() {
        let req =
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}});
        assert!(matches!(
            message(&req),
            Ok(Message::Request {
                method: "tools/call",
                ..
            })
        ));
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        assert!(matches!(message(&note), Ok(Message::Notification { .. })));
        let resp = json!({"jsonrpc": "2.0", "id": "s1", "result": {}});
        assert!(matches!(message(&resp), Ok(Message::Response)));
        for bad in [
            json!([]),
            json!({"id": 1, "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": null, "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": 1.5, "method": "ping"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": 7}),
            json!({"jsonrpc": "2.0", "id": 1}),
            json!({"jsonrpc": "2.0", "id": 1, "result": 1, "error": {}}),
        ] {
            let e = message(&bad).unwrap_err();
            assert_eq!(e.code, INVALID_REQUEST, "{bad}");
        }
        let e =
            message(&json!({"jsonrpc": "2.0", "id": 3, "method": "x", "params": [1]})).unwrap_err();
        assert_eq!((e.code, e.id), (INVALID_PARAMS, Some(json!(3))));
    }

    #[test]
    fn tool_calls_need_a_name_and_object_arguments() {
        let id = json!(1);
        let p = json!({"name": "pay", "arguments": {"amount": 5}, "_meta": {"progressToken": "t"}, "task": {"ttl": 1}});
        let c = tool_call(&id, p.as_object()).unwrap();
        assert_eq!(c.name, "pay");
        assert_eq!(c.arguments.unwrap()["amount"], 5);
        assert_eq!(c.progress_token, Some(&json!("t")));
        assert!(c.task);
        for bad in [
            json!({}),
            json!({"name": ""}),
            json!({"name": 3}),
            json!({"name": "x", "arguments": [1]}),
            json!({"name": "x", "arguments": "a=1"}),
        ] {
            assert_eq!(
                tool_call(&id, bad.as_object()).unwrap_err().code,
                INVALID_PARAMS
            );
        }
        assert!(tool_call(&id, None).is_err());
    }

    #[test]
    fn standard_headers_must_match_the_body() {
        let req = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete"}});
        let m = message(&req).unwrap();
        assert!(check_standard_headers(Some("tools/call"), Some("delete"), &m).is_ok());
        assert!(check_standard_headers(None, Some("=?base64?ZGVsZXRl?="), &m).is_ok());
        assert!(check_standard_headers(Some("tools/list"), None, &m).is_err());
        assert!(check_standard_headers(None, Some("search"), &m).is_err());
    }

    #[test]
    fn sse_bodies_yield_their_messages() {
        let body = "id: 0\nretry: 3000\ndata:\n\n: comment\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\r\ndata: \"id\":7,\"result\":{}}\r\n\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}";
        let msgs = messages(Framing::Sse, body.as_bytes()).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(response_to(&msgs, &json!(7)).unwrap()["result"], json!({}));
        assert!(response_to(&msgs, &json!(8)).is_none());
        assert!(messages(Framing::Json, b"<html>").is_err());
        assert_eq!(
            Framing::of(Some("text/event-stream; charset=utf-8")),
            Some(Framing::Sse)
        );
        assert_eq!(Framing::of(Some("text/html")), None);
    }

    #[test]
    fn task_documents_carry_both_spellings() {
        let t = TaskState {
            id: "a1",
            status: "working",
            message: Some("waiting".into()),
            created_ms: 0,
            updated_ms: 1000,
            ttl_ms: Some(60_000),
        };
        let doc = task_created(&t);
        assert_eq!(doc["resultType"], "task");
        assert_eq!(doc["taskId"], "a1");
        assert_eq!(doc["task"]["ttl"], 60_000);
        assert_eq!(doc["lastUpdatedAt"], "1970-01-01T00:00:01.000Z");
    }
}
