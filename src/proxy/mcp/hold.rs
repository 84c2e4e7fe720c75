//! A held `tools/call`: the client waits on an event stream with progress
//! notifications (or on a plain JSON answer), or gets a task it polls. The
//! approved call is sent by the gate itself, once; its stored answer is the
//! server's, handed back under the client's request id.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::super::error::ProxyError;
use super::super::held::decision_header;
use super::super::{Proxy, Step};
use super::json_answer;
use crate::gate::model::{Approval, State};
use crate::gate::{Gate, GateError, Held, Waited};
use crate::http_util::{Body, ChannelBody};
use crate::identity::Principal;
use crate::mcp::{self as wire, Framing, TaskState};

/// A plain JSON waiter re-checks the approval this often (it is woken on
/// the verdict in any case).
const RECHECK_EVERY: Duration = Duration::from_secs(60);

/// A client held for a verdict.
pub(in crate::proxy) struct Waiting {
    /// The approval.
    approval_id: String,
    /// Armed while nobody else can collect the result: dropping it cancels.
    held: Option<Held>,
    /// The client's request id.
    reply_id: Value,
    /// Send progress with this token.
    progress: Option<Value>,
    /// Answer as an event stream.
    sse: bool,
    /// The answer belongs to this task (`tasks/result`).
    task: Option<String>,
}

/// Whether the client takes an event stream.
pub(super) fn accepts_sse(h: &HeaderMap) -> bool {
    h.get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("text/event-stream"))
}

/// A gated call was proposed: answer with a task, or hold the client.
pub(super) async fn held(
    p: &Proxy,
    mut held: Held,
    id: &Value,
    progress: Option<&Value>,
    task: bool,
    sse: bool,
) -> Result<Step, ProxyError> {
    if task {
        held.disarm();
        let a = p.gate.approval(&held.id).await?;
        let doc = wire::result(id, wire::task_created(&task_state(&a, p.gate.now_ms())));
        let mut resp = json_answer(StatusCode::OK, &doc, None, None);
        decision_header(&mut resp, "gate", &a.id);
        return Ok(Step::Answer(resp));
    }
    Ok(Step::McpHold(Box::new(Waiting {
        approval_id: held.id.clone(),
        held: Some(held),
        reply_id: id.clone(),
        progress: progress.cloned(),
        sse,
        task: None,
    })))
}

/// Hold until the verdict: as an event stream (progress while it waits) or
/// as one JSON answer. A client that goes away cancels an approval nobody
/// else can collect.
pub(in crate::proxy) async fn wait(p: &Proxy, mut w: Waiting) -> Response<Body> {
    if w.sse {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let id = w.approval_id.clone();
        tokio::spawn(stream(p.gate.clone(), p.progress, w, tx));
        let mut resp = Response::new(ChannelBody(rx).boxed());
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache"),
        );
        decision_header(&mut resp, "gate", &id);
        return resp;
    }
    loop {
        match p.gate.wait(&w.approval_id, RECHECK_EVERY).await {
            Ok(Waited::Final(a)) => {
                if let Some(h) = &mut w.held {
                    h.disarm();
                }
                let (doc, decision) = final_message(&a, &w.reply_id, w.task.as_deref());
                let mut resp = json_answer(StatusCode::OK, &doc, None, None);
                decision_header(&mut resp, decision, &a.id);
                return resp;
            }
            Ok(Waited::Pending) => continue,
            Err(_) => return store_down(&w.reply_id),
        }
    }
}

async fn stream(gate: Gate, every: Duration, mut w: Waiting, tx: mpsc::Sender<Bytes>) {
    let mut n = 0u64;
    loop {
        if let Some(token) = &w.progress {
            let text = match gate.approval(&w.approval_id).await {
                Ok(a) => waiting_text(&a, gate.now_ms()),
                Err(_) => "waiting for approval".to_string(),
            };
            n += 1;
            if tx
                .send(wire::sse_event(&wire::progress(token, n, &text)))
                .await
                .is_err()
            {
                return; // the client left: dropping `w` cancels
            }
        }
        tokio::select! {
            waited = gate.wait(&w.approval_id, every) => match waited {
                Ok(Waited::Final(a)) => {
                    if let Some(h) = &mut w.held {
                        h.disarm();
                    }
                    let (doc, _) = final_message(&a, &w.reply_id, w.task.as_deref());
                    let _ = tx.send(wire::sse_event(&doc)).await;
                    return;
                }
                Ok(Waited::Pending) => {}
                Err(_) => {
                    let doc = wire::error(Some(&w.reply_id), wire::INTERNAL_ERROR, "the approval store is unavailable", Some(json!({"latch/code": "store_unavailable"})));
                    let _ = tx.send(wire::sse_event(&doc)).await;
                    return;
                }
            },
            _ = tx.closed() => return,
        }
    }
}

fn store_down(id: &Value) -> Response<Body> {
    let doc = wire::error(
        Some(id),
        wire::INTERNAL_ERROR,
        "the approval store is unavailable",
        Some(json!({"latch/code": "store_unavailable"})),
    );
    json_answer(
        StatusCode::SERVICE_UNAVAILABLE,
        &doc,
        None,
        Some("store_unavailable"),
    )
}

/// "waiting for 1× lead, 4m 10s left".
pub(super) fn waiting_text(a: &Approval, now: i64) -> String {
    let need: Vec<String> = a
        .requirements()
        .iter()
        .map(|r| format!("{}× {}", r.count, r.role))
        .collect();
    let left = ((a.deadline - now).max(0) + 999) / 1000;
    let who = match need.is_empty() {
        true => "a reviewer".to_string(),
        false => need.join(" and "),
    };
    format!(
        "waiting for {who}, {}m {}s left (approval {})",
        left / 60,
        left % 60,
        a.id
    )
}

/// The answer a final approval gives the client (and its decision header).
pub(super) fn final_message(
    a: &Approval,
    reply_id: &Value,
    task: Option<&str>,
) -> (Value, &'static str) {
    let refused = |what: &'static str, lines: Vec<String>, code: &str| {
        let mut meta = Map::new();
        meta.insert("latch/approval_id".into(), a.id.as_str().into());
        meta.insert("latch/decision".into(), what.into());
        meta.insert("latch/code".into(), code.into());
        related(&mut meta, task);
        (wire::result(reply_id, wire::tool_error(&lines, meta)), what)
    };
    let outcome = a.outcome.as_deref().unwrap_or("no reason given");
    match a.state {
        State::Executed => (executed(a, reply_id, task), "approved"),
        State::Rejected => refused(
            "rejected",
            vec![format!("A reviewer rejected this tool call: {outcome}")],
            &a.decision.code,
        ),
        State::Expired => refused(
            "expired",
            vec![format!("Nobody approved this tool call in time: {outcome}")],
            &a.decision.code,
        ),
        State::Cancelled => refused(
            "cancelled",
            vec![format!("This tool call was cancelled: {outcome}")],
            &a.decision.code,
        ),
        State::Failed => refused(
            "approved",
            vec![format!(
                "This tool call was approved, but sending it to the server failed: {outcome}"
            )],
            "execution_failed",
        ),
        State::Pending | State::Approved | State::Executing => {
            let doc = wire::error(
                Some(reply_id),
                wire::INTERNAL_ERROR,
                "the approval is not final",
                None,
            );
            (doc, "gate")
        }
    }
}

fn related(meta: &mut Map<String, Value>, task: Option<&str>) {
    if let Some(t) = task {
        meta.insert(wire::META_RELATED_TASK.into(), json!({"taskId": t}));
    }
}

/// The server's own answer to the approved call, under the client's id.
fn executed(a: &Approval, reply_id: &Value, task: Option<&str>) -> Value {
    let bad = |why: String| {
        wire::error(
            Some(reply_id),
            wire::INTERNAL_ERROR,
            &why,
            Some(json!({"latch/code": "upstream_not_mcp", "latch/approval_id": a.id})),
        )
    };
    let Some(result) = &a.result else {
        return bad("the approved call has no stored answer".into());
    };
    let content_type = result
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str());
    let framing = match Framing::of(content_type) {
        Some(f) if (200..300).contains(&result.status) => f,
        _ => {
            return bad(format!(
                "the MCP server answered the approved call with HTTP {} ({}), not an MCP result",
                result.status,
                content_type.unwrap_or("no Content-Type")
            ))
        }
    };
    let sent_id = serde_json::from_slice::<Value>(&a.body)
        .ok()
        .and_then(|b| b.get("id").cloned())
        .unwrap_or(Value::Null);
    let msgs = match wire::messages(framing, &result.body) {
        Ok(m) => m,
        Err(e) => return bad(format!("the MCP server's answer to the approved call: {e}")),
    };
    let Some(found) = wire::response_to(&msgs, &sent_id) else {
        return bad("the MCP server's answer holds no response to the approved call".into());
    };
    let mut doc = found.clone();
    doc["id"] = reply_id.clone();
    if let (Some(t), Some(r)) = (task, doc.get_mut("result").and_then(Value::as_object_mut)) {
        let meta = r.entry("_meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            related(meta, Some(t));
        }
    }
    doc
}

/// Approval `task_id` if it is one of `agent`'s (a task Latch made); other
/// ids belong to the server.
pub(super) async fn own_task(
    p: &Proxy,
    agent: &Principal,
    task_id: Option<&str>,
) -> Result<Option<Approval>, ProxyError> {
    let Some(id) = task_id else {
        return Ok(None);
    };
    match p.gate.approval(id).await {
        Ok(a) if a.agent == agent.id => Ok(Some(a)),
        Ok(_) | Err(GateError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `tasks/get`, `tasks/result` and `tasks/cancel` on a task Latch made.
pub(super) async fn task_request(
    p: &Proxy,
    parts: &http::request::Parts,
    method: &str,
    id: &Value,
    a: Approval,
) -> Result<Step, ProxyError> {
    let now = p.gate.now_ms();
    let doc = match method {
        "tasks/result" if !a.state.is_final() => {
            return Ok(Step::McpHold(Box::new(Waiting {
                approval_id: a.id.clone(),
                held: None,
                reply_id: id.clone(),
                progress: None,
                sse: accepts_sse(&parts.headers),
                task: Some(a.id),
            })));
        }
        "tasks/result" => final_message(&a, id, Some(&a.id)).0,
        "tasks/cancel" => {
            p.gate
                .cancel(&a.id, "cancelled by the agent (tasks/cancel)")
                .await;
            let a = p.gate.approval(&a.id).await?;
            wire::result(id, Value::Object(wire::task_fields(&task_state(&a, now))))
        }
        _ => wire::result(id, detailed(&a, now)),
    };
    let mut resp = json_answer(StatusCode::OK, &doc, None, None);
    decision_header(&mut resp, "gate", &a.id);
    Ok(Step::Answer(resp))
}

fn task_state(a: &Approval, now: i64) -> TaskState<'_> {
    let status = match a.state {
        State::Pending | State::Approved | State::Executing => "working",
        State::Executed | State::Rejected | State::Expired => "completed",
        State::Cancelled => "cancelled",
        State::Failed => "failed",
    };
    let message = match a.state {
        State::Pending => waiting_text(a, now),
        State::Approved | State::Executing => "approved; being sent to the server".into(),
        s => format!("{}: {}", s.as_str(), a.outcome.as_deref().unwrap_or("")),
    };
    TaskState {
        id: &a.id,
        status,
        message: Some(message),
        created_ms: a.created_at,
        updated_ms: a.decided_at.unwrap_or(a.created_at),
        ttl_ms: Some((a.deadline - a.created_at).max(0)),
    }
}

/// `tasks/get`: the task, with its result or error once final.
fn detailed(a: &Approval, now: i64) -> Value {
    let mut doc = wire::task_fields(&task_state(a, now));
    doc.insert("resultType".into(), "complete".into());
    if a.state.is_final() && a.state != State::Cancelled {
        let (answer, _) = final_message(a, &Value::Null, Some(&a.id));
        match (answer.get("result"), answer.get("error")) {
            (Some(r), _) => {
                doc.insert("result".into(), r.clone());
            }
            (None, Some(e)) => {
                doc.insert("status".into(), "failed".into());
                doc.insert("error".into(), e.clone());
            }
            _ => {}
        }
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_answers_yield_the_response_under_the_clients_id() {
        let body = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"content\":[]}}\n\n";
        let msgs = wire::messages(Framing::Sse, body.as_bytes()).unwrap();
        let found = wire::response_to(&msgs, &json!(7)).unwrap();
        assert_eq!(found["result"]["content"], json!([]));
    }
}
