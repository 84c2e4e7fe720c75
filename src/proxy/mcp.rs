//! The MCP route (`protocol = "mcp"`): Streamable HTTP in and out, every
//! `tools/call` judged by its tool name and arguments.
//!
//! ```text
//! POST → read (bounded, JSON) → JSON-RPC checks → tools/call? → build (tool = params.name,
//!   args = params.arguments, input.mcp) → evaluate → record → forward | isError result | hold
//! ```
//! Other methods pass through unchanged but authenticated and recorded;
//! `tools/list` answers lose the tools the policy hides from this agent;
//! a held call answers with progress over SSE, or as a task for clients
//! that declare the tasks extension. A batch goes out whole or not at all.

mod batch;
mod hold;
mod relay;

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::call::{self, McpAction};
use super::error::ProxyError;
use super::evaluate::{self, Verdict};
use super::record::{self, Recorded};
use super::{forward, held, read, Ctx, Proxy, Step};
use crate::http_util::{full, Body};
use crate::identity::Principal;
use crate::mcp::{self as wire, Message, WireError};
use crate::policy::input::mcp_facts;
use crate::policy::{Action, Decision};
use crate::server::ConnInfo;
use crate::upstream::Route;
pub(super) use hold::{wait, Waiting};
use relay::Watch;

/// Serve one request on an MCP route.
pub(super) async fn serve(
    p: &Proxy,
    route: &Route,
    req: Request<Body>,
    agent: &Arc<Principal>,
    path: String,
    conn: &ConnInfo,
    ctx: &mut Ctx,
) -> Result<Step, ProxyError> {
    match *req.method() {
        Method::POST => {}
        // The server's event stream, and the end of a session.
        Method::GET | Method::DELETE => {
            return stream_or_end(p, route, req, agent, path, conn, ctx).await
        }
        _ => return Err(ProxyError::MethodNotAllowed),
    }
    let (mut parts, body) = req.into_parts();
    let read = match read::read(p, route, &mut parts, body).await {
        Ok(r) => r,
        Err(e @ ProxyError::Body(_)) => {
            ctx.outcome = "bad_mcp";
            let msg = format!("the body is not a JSON-RPC message: {e}");
            return Ok(answer_error(
                StatusCode::BAD_REQUEST,
                "bad_mcp",
                &WireError {
                    code: wire::PARSE_ERROR,
                    message: msg,
                    id: None,
                },
            ));
        }
        Err(e) => return Err(e),
    };
    let doc = match read
        .judged
        .as_ref()
        .map(|j| serde_json::from_slice::<Value>(&j.bytes))
    {
        Some(Ok(doc)) => doc,
        _ => {
            ctx.outcome = "bad_mcp";
            return Ok(answer_error(
                StatusCode::BAD_REQUEST,
                "bad_mcp",
                &WireError {
                    code: wire::PARSE_ERROR,
                    message:
                        "an MCP POST carries one JSON-RPC message (or a batch) as application/json"
                            .into(),
                    id: None,
                },
            ));
        }
    };
    let req = Incoming {
        p,
        route,
        agent,
        path,
        conn,
    };
    if let Value::Array(items) = &doc {
        return batch::batch(&req, parts, read, items, ctx).await;
    }
    let msg = match wire::message(&doc) {
        Ok(m) => m,
        Err(e) => {
            ctx.outcome = "bad_mcp";
            return Ok(answer_error(StatusCode::BAD_REQUEST, "bad_mcp", &e));
        }
    };
    let id = msg.request_id();
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
    if let Err(why) = wire::check_standard_headers(header("mcp-method"), header("mcp-name"), &msg) {
        ctx.outcome = "bad_mcp";
        let e = WireError {
            code: wire::INVALID_REQUEST,
            message: why,
            id: id.cloned(),
        };
        return Ok(answer_error(StatusCode::BAD_REQUEST, "bad_mcp", &e));
    }
    let step = match msg {
        Message::Request {
            id,
            method: "tools/call",
            params,
        } => tool_call(&req, parts, read, id, params, ctx).await,
        Message::Request {
            id,
            method: m @ ("tasks/get" | "tasks/result" | "tasks/cancel"),
            params,
        } => {
            let task_id = params.and_then(|p| p.get("taskId")).and_then(Value::as_str);
            match hold::own_task(p, agent, task_id).await? {
                Some(a) => {
                    ctx.outcome = "api";
                    hold::task_request(p, &parts, m, id, a).await
                }
                None => passthrough(&req, parts, read, &[msg], ctx).await,
            }
        }
        _ => passthrough(&req, parts, read, &[msg], ctx).await,
    };
    // Failures are said in JSON-RPC too, to the request that met them.
    step.or_else(|e| {
        ctx.outcome = e.status_and_code().1;
        Ok(Step::Answer(error_response(&e, id)))
    })
}

/// What every stage of one MCP request needs.
struct Incoming<'a> {
    p: &'a Proxy,
    route: &'a Route,
    agent: &'a Arc<Principal>,
    path: String,
    conn: &'a ConnInfo,
}

/// `GET` (the server's own event stream) and `DELETE` (end of a session):
/// recorded, then passed through.
async fn stream_or_end(
    p: &Proxy,
    route: &Route,
    req: Request<Body>,
    agent: &Principal,
    path: String,
    conn: &ConnInfo,
    ctx: &mut Ctx,
) -> Result<Step, ProxyError> {
    let (mut parts, _) = req.into_parts();
    crate::http_util::headers::strip_hop_by_hop(&mut parts.headers);
    let what = if parts.method == Method::GET {
        "stream"
    } else {
        "session/delete"
    };
    record::passthrough(
        p,
        (&ctx.id, &ctx.span),
        agent,
        route,
        (parts.method.as_str(), &path),
        &[what],
        None,
    )
    .await?;
    ctx.outcome = "passthrough";
    if parts.method == Method::DELETE {
        if let Some(s) = parts
            .headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
        {
            route.task_sessions.remove(s);
        }
    }
    let resp = forward::forward(p, route, parts, full(bytes::Bytes::new()), conn, &ctx.span).await;
    Ok(Step::Answer(
        resp.unwrap_or_else(|e| error_response(&e, None)),
    ))
}

/// Anything but a `tools/call`: recorded as a call of its method, sent on
/// unchanged; `tools/list` and `initialize` answers are read on the way back.
async fn passthrough(
    req: &Incoming<'_>,
    parts: http::request::Parts,
    read: read::Read,
    msgs: &[Message<'_>],
    ctx: &mut Ctx,
) -> Result<Step, ProxyError> {
    record_passed(req, &parts, &read, msgs, ctx).await?;
    ctx.outcome = "passthrough";
    let watch = Watch::of(msgs);
    send(req, parts, read, &watch, ctx).await
}

/// Record `msgs` (none a `tools/call`) as passed on unjudged.
async fn record_passed(
    req: &Incoming<'_>,
    parts: &http::request::Parts,
    read: &read::Read,
    msgs: &[Message<'_>],
    ctx: &Ctx,
) -> Result<(), ProxyError> {
    let methods: Vec<&str> = msgs
        .iter()
        .map(|m| m.method().unwrap_or("response"))
        .collect();
    let sha = read
        .judged
        .as_ref()
        .map(|j| crate::digest::body_sha256(&j.bytes));
    record::passthrough(
        req.p,
        (&ctx.id, &ctx.span),
        req.agent,
        req.route,
        (parts.method.as_str(), &req.path),
        &methods,
        sha.as_deref(),
    )
    .await
}

/// Forward the judged bytes and relay the answer (rewritten where `watch` says).
async fn send(
    req: &Incoming<'_>,
    parts: http::request::Parts,
    read: read::Read,
    watch: &Watch,
    ctx: &Ctx,
) -> Result<Step, ProxyError> {
    let p = req.p;
    let forwarded_headers = parts.headers.clone();
    let body = read::outgoing(read)?;
    let id = watch.reply_id.clone();
    let resp = match forward::forward(p, req.route, parts, body, req.conn, &ctx.span).await {
        Ok(r) => r,
        Err(e) => return Ok(Step::Answer(error_response(&e, id.as_ref()))),
    };
    Ok(Step::Answer(
        relay::relay(p, req.route, req.agent, &forwarded_headers, resp, watch).await,
    ))
}

/// One `tools/call`: judged by tool and arguments, then sent, refused or held.
async fn tool_call(
    req: &Incoming<'_>,
    parts: http::request::Parts,
    read: read::Read,
    id: &Value,
    params: Option<&Map<String, Value>>,
    ctx: &mut Ctx,
) -> Result<Step, ProxyError> {
    let p = req.p;
    let tc = match wire::tool_call(id, params) {
        Ok(tc) => tc,
        Err(e) => {
            ctx.outcome = "bad_mcp";
            return Ok(answer_error(StatusCode::OK, "bad_mcp", &e));
        }
    };
    ctx.span.set("latch.tool", tc.name);
    let call = build(req, &parts, &read, &tc, params).await?;
    let policy_span = p.tracer.child("latch.policy", &ctx.span);
    let draft = super::record::Draft::of(req.agent, &ctx.id, &call);
    let verdict = evaluate::evaluate(p, &call, true, ctx, Some(draft)).await;
    drop(policy_span);
    ctx.span.set("latch.risk", verdict.decision.risk.as_str());
    let recorded = Recorded {
        proxy: p,
        request_id: &ctx.id,
        agent: req.agent,
        call: &call,
        policy: verdict.policy.hash(),
        span: &ctx.span,
    };
    let Verdict {
        decision,
        shadowed,
        grant,
        recorded: on_thread,
        ..
    } = verdict;
    let watch = Watch::reply_to(id);
    match (decision.action, shadowed) {
        (_, Some(would)) => {
            recorded.record(&decision, true, None).await?;
            let mut step = send(req, parts, read, &watch, ctx).await?;
            if let Step::Answer(resp) = &mut step {
                resp.headers_mut()
                    .insert("latch-shadow", HeaderValue::from_static(would.as_str()));
            }
            Ok(step)
        }
        (Action::Deny, None) => {
            recorded
                .record_once(on_thread, &decision, false, None)
                .await?;
            Ok(Step::Answer(refusal(id, &ctx.id, &decision, "deny")))
        }
        (Action::Gate, None) => {
            ctx.span.set("latch.approval_id", ctx.id.as_str());
            let session = parts
                .headers
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok());
            let task = tc.task
                || tc.declares_tasks
                || session.is_some_and(|s| req.route.task_sessions.contains(s));
            let sse = hold::accepts_sse(&parts.headers);
            let held = held::propose(&recorded, &parts, read, decision, req.conn, !task).await?;
            hold::held(p, held, id, tc.progress_token, task, sse).await
        }
        (Action::Allow, None) => {
            let grant = grant.as_ref().map(|g| &g.grant);
            recorded
                .record_once(on_thread, &decision, false, grant)
                .await?;
            let mut step = send(req, parts, read, &watch, ctx).await?;
            if let (Step::Answer(resp), Some(g)) = (&mut step, grant) {
                if let Ok(v) = HeaderValue::from_str(&g.id) {
                    resp.headers_mut().insert("latch-grant", v);
                }
            }
            Ok(step)
        }
    }
}

/// Build the call the policy judges for `tools/call` `tc` (annotations
/// from the cache, or from the server).
async fn build<'r>(
    req: &Incoming<'r>,
    parts: &http::request::Parts,
    read: &read::Read,
    tc: &wire::ToolCall<'_>,
    params: Option<&Map<String, Value>>,
) -> Result<call::Call<'r>, ProxyError> {
    let annotations = relay::hints(req.route, parts, req.conn, tc.name, params).await;
    let action = mcp_action(req.route, tc, annotations);
    call::build(
        req.p,
        req.route,
        req.agent,
        parts,
        req.path.clone(),
        read,
        Some(action),
    )
}

/// The policy's view of a `tools/call`.
fn mcp_action(route: &Route, tc: &wire::ToolCall<'_>, annotations: regorus::Value) -> McpAction {
    let args = match tc.arguments {
        Some(a) => regorus::Value::from(Value::Object(a.clone())),
        None => regorus::Value::new_object(),
    };
    McpAction {
        tool: tc.name.to_string(),
        args,
        mcp: mcp_facts("tools/call", &route.config.name, annotations),
    }
}

/// The `isError` result a refused call gets: the model reads the reasons
/// and can replan; `_meta` carries the decision for programs.
fn refusal_json(id: &Value, decision_id: &str, d: &Decision, what: &str) -> Value {
    let mut lines = vec![format!(
        "Latch refused this tool call ({what}, code {}, risk {}):",
        d.code,
        d.risk.as_str()
    )];
    lines.extend(d.reasons.iter().map(|r| format!("- {r}")));
    let mut meta = Map::new();
    meta.insert("latch/decision_id".into(), decision_id.into());
    meta.insert("latch/decision".into(), what.into());
    meta.insert("latch/code".into(), d.code.as_str().into());
    meta.insert("latch/risk".into(), d.risk.as_str().into());
    meta.insert("latch/reasons".into(), json!(d.reasons));
    wire::result(id, wire::tool_error(&lines, meta))
}

fn refusal(id: &Value, decision_id: &str, d: &Decision, what: &'static str) -> Response<Body> {
    json_answer(
        StatusCode::OK,
        &refusal_json(id, decision_id, d, what),
        Some(what),
        None,
    )
}

/// A JSON-RPC document Latch answers itself.
fn json_answer(
    status: StatusCode,
    body: &Value,
    decision: Option<&'static str>,
    error: Option<&'static str>,
) -> Response<Body> {
    let mut resp = crate::http_util::json(status, body);
    let h = resp.headers_mut();
    if let Some(d) = decision {
        h.insert("latch-decision", HeaderValue::from_static(d));
    }
    if let Some(e) = error {
        h.insert("latch-error", HeaderValue::from_static(e));
    }
    resp
}

/// A JSON-RPC error Latch answers itself (`latch-error: code`).
fn answer_error(status: StatusCode, code: &'static str, e: &WireError) -> Step {
    Step::Answer(json_answer(status, &e.to_json(), None, Some(code)))
}

/// A proxy error, said in JSON-RPC to the request with `id`.
fn error_response(e: &ProxyError, id: Option<&Value>) -> Response<Body> {
    let (status, code) = e.status_and_code();
    let rpc = if status.is_server_error() {
        wire::INTERNAL_ERROR
    } else {
        wire::INVALID_REQUEST
    };
    let body = wire::error(id, rpc, &e.to_string(), Some(json!({"latch/code": code})));
    json_answer(status, &body, None, Some(code))
}
