//! Outcome: hold. A gated call is proposed to the gate; the agent is held
//! until a verdict (or `hold_s`), then gets the executed call's answer, the
//! refusal, or 202 with a poll URL. Also the agent's own poll and result
//! endpoints under `/latch/v1/approvals/`.

use std::future::Future;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use super::error::ProxyError;
use super::read::Read;
use super::record::Recorded;
use super::{Proxy, Step};
use crate::gate::model::{Approval, State};
use crate::gate::{GateError, Held, Proposal, Waited};
use crate::http_util::{full, json as json_response, path, Body};
use crate::identity::Principal;
use crate::policy::Decision;
use crate::server::ConnInfo;

/// Propose the call; answer 202 at once (`Prefer: respond-async`) or hold.
pub(super) async fn hold(
    r: &Recorded<'_>,
    parts: &http::request::Parts,
    read: Read,
    decision: Decision,
    conn: &ConnInfo,
) -> Result<Step, ProxyError> {
    let prefer_async = parts
        .headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("respond-async"));
    let mut held = propose(r, parts, read, decision, conn, !prefer_async).await?;
    if prefer_async {
        held.disarm();
        return Ok(Step::Answer(accepted(&held.id)));
    }
    Ok(Step::Hold(held))
}

/// Store the gated call as a pending approval; `waits`: the caller holds on
/// for the verdict (so its going away cancels the approval).
pub(super) async fn propose(
    r: &Recorded<'_>,
    parts: &http::request::Parts,
    read: Read,
    decision: Decision,
    conn: &ConnInfo,
    waits: bool,
) -> Result<Held, ProxyError> {
    let headers = &parts.headers;
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let key = v.to_str().map_err(|_| ProxyError::BadIdempotencyKey)?;
            if key.is_empty() || key.len() > 200 {
                return Err(ProxyError::BadIdempotencyKey);
            }
            Some(key.to_string())
        }
    };
    // The evaluate stage turns a gate on a streamed body into a deny.
    let body: Bytes = read.judged.map(|j| j.bytes).ok_or(ProxyError::Internal)?;
    let route = &r.call.route.config;
    let mut target = path::raw_suffix(parts.uri.path(), &route.prefix);
    if let Some(q) = parts.uri.query() {
        target.push('?');
        target.push_str(q);
    }
    let proposal = Proposal {
        id: r.request_id,
        agent: r.agent,
        route: &route.name,
        tool: &r.call.tool,
        method: &parts.method,
        headers,
        path: &r.call.path,
        target,
        body_sha256: crate::digest::body_sha256(&body),
        body,
        decision,
        policy: r.policy,
        class: &r.call.class,
        peer: conn.peer,
        tls: conn.tls,
        idempotency_key,
        waits,
        excluded: Vec::new(),
    };
    // The approval and its audit record commit together.
    let span = r.proxy.tracer.child("latch.audit", r.span);
    let held = r.proxy.gate.propose(proposal).await?;
    drop(span);
    Ok(held)
}

/// Hold until the approval is final or `hold` passes. If the caller goes
/// away meanwhile, dropping `held` cancels an approval nobody could collect.
///
/// Not an `async fn`: that would keep `held` twice (the argument and the
/// binding it moves into) in each of thousands of held calls.
#[allow(clippy::manual_async_fn)]
pub(super) fn wait(p: &Proxy, mut held: Held) -> impl Future<Output = Response<Body>> + '_ {
    async move {
        let waited = p.gate.wait(&held.id, p.hold).await;
        held.disarm();
        match waited {
            Ok(Waited::Final(a)) => final_answer(&a),
            Ok(Waited::Pending) => accepted(&held.id),
            Err(_) => ProxyError::StoreUnavailable.into_response(&held.id),
        }
    }
}

/// `latch-decision` and `latch-approval` on an answer about approval `id`.
pub(super) fn decision_header(resp: &mut Response<Body>, decision: &'static str, id: &str) {
    let h = resp.headers_mut();
    h.insert("latch-decision", HeaderValue::from_static(decision));
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("latch-approval", v);
    }
}

/// 202: still pending; poll here.
pub fn accepted(id: &str) -> Response<Body> {
    let poll = format!("/latch/v1/approvals/{id}");
    let mut resp = json_response(
        StatusCode::ACCEPTED,
        &json!({"status": "pending", "approval_id": id, "poll": poll}),
    );
    decision_header(&mut resp, "gate", id);
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&poll) {
        h.insert(http::header::LOCATION, v);
    }
    h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

/// The answer for a final approval: the stored upstream answer, or why not.
pub fn final_answer(a: &Approval) -> Response<Body> {
    let refused = |error: &str, decision: &'static str| {
        let mut r = json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": error, "approval_id": a.id, "reason": a.outcome, "code": a.decision.code}),
        );
        decision_header(&mut r, decision, &a.id);
        r
    };
    match a.state {
        State::Executed => stored_result(a),
        State::Rejected => refused("rejected", "rejected"),
        State::Expired => refused("expired", "expired"),
        State::Cancelled => refused("cancelled", "cancelled"),
        State::Failed => {
            let mut r = json_response(
                StatusCode::BAD_GATEWAY,
                &json!({"error": "execution_failed", "approval_id": a.id, "reason": a.outcome}),
            );
            r.headers_mut()
                .insert("latch-error", HeaderValue::from_static("execution_failed"));
            decision_header(&mut r, "approved", &a.id);
            r
        }
        State::Pending | State::Approved | State::Executing => accepted(&a.id),
    }
}

fn stored_result(a: &Approval) -> Response<Body> {
    let Some(result) = &a.result else {
        return accepted(&a.id);
    };
    let mut resp = Response::new(full(result.body.clone()));
    *resp.status_mut() = StatusCode::from_u16(result.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in &result.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    decision_header(&mut resp, "approved", &a.id);
    resp
}

/// Agent-facing status document.
pub fn status(a: &Approval) -> serde_json::Value {
    json!({
        "approval_id": a.id, "status": a.state, "risk": a.decision.risk, "code": a.decision.code,
        "reasons": a.decision.reasons, "route": a.route, "tool": a.tool, "method": a.method, "path": a.path,
        "level": a.level, "created_at_ms": a.created_at, "deadline_ms": a.deadline, "reason": a.outcome,
        "result": (a.state == State::Executed).then(|| format!("/latch/v1/approvals/{}/result", a.id)),
    })
}

/// `GET /latch/v1/approvals/<id>[/result]` for the agent that asked.
pub(super) async fn agent_api(
    p: &Proxy,
    method: &http::Method,
    path: &str,
    agent: &Principal,
) -> Result<Response<Body>, ProxyError> {
    let rest = path
        .strip_prefix("/latch/v1/approvals/")
        .ok_or(ProxyError::NoRoute)?;
    let (id, want_result) = match rest.strip_suffix("/result") {
        Some(id) => (id, true),
        None => (rest, false),
    };
    if id.is_empty() || id.contains('/') {
        return Err(ProxyError::NoRoute);
    }
    if method != http::Method::GET {
        return Err(ProxyError::MethodNotAllowed);
    }
    let a = match p.gate.approval(id).await {
        Ok(a) => Some(a),
        Err(GateError::NotFound) => None,
        Err(e) => return Err(e.into()),
    };
    // Another agent's approval does not exist as far as this agent can tell.
    let a = a
        .filter(|a| a.agent == agent.id)
        .ok_or(ProxyError::UnknownApproval)?;
    if !want_result {
        let mut r = json_response(StatusCode::OK, &status(&a));
        decision_header(&mut r, "gate", &a.id);
        return Ok(r);
    }
    match a.state {
        State::Executed => Ok(stored_result(&a)),
        _ => Err(ProxyError::NotExecuted(a.state.as_str())),
    }
}
