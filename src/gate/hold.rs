//! The agent's side of a gated call: store the proposal, hold the request
//! until a verdict (or `hold_s`), answer 202 with a poll URL, serve the
//! poll and result endpoints, and cancel when a waiting caller goes away.

use std::pin::pin;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use super::model::{Approval, State};
use super::{blocking, now_ms};
use crate::app::Latch;
use crate::audit::Event;
use crate::identity::Principal;
use crate::policy::Decision;
use crate::proxy::error::ProxyError;
use crate::server::{full, json as json_response, Body, ConnInfo};
use crate::store::Inserted;

/// Everything the proxy knows about a gated call.
pub struct Proposal<'a> {
    /// Request (and approval) id.
    pub id: &'a str,
    /// The agent.
    pub agent: &'a Principal,
    /// Route name and tool.
    pub route: &'a str,
    /// Tool.
    pub tool: &'a str,
    /// Request head.
    pub parts: &'a http::request::Parts,
    /// Decoded path.
    pub path: &'a str,
    /// Raw suffix after the prefix, plus `?query`.
    pub target: String,
    /// The exact bytes.
    pub body: Bytes,
    /// The body digest.
    pub body_sha256: String,
    /// Why it was gated.
    pub decision: Decision,
    /// Policy set hash.
    pub policy: &'a str,
    /// The action class.
    pub class: &'a crate::history::ActionClass,
    /// Connection facts.
    pub conn: &'a ConnInfo,
}

/// Headers kept for execution: no credentials, no hop-by-hop or forwarding
/// headers (Latch adds its own when it sends), no length (recomputed).
fn storable_headers(h: &http::HeaderMap) -> Vec<(String, String)> {
    let mut h = h.clone();
    crate::proxy::headers::strip_hop_by_hop(&mut h);
    h.iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            !matches!(
                k,
                "authorization"
                    | "host"
                    | "content-length"
                    | "forwarded"
                    | "x-forwarded-for"
                    | "x-forwarded-proto"
                    | "x-forwarded-host"
                    | "x-real-ip"
                    | "cookie"
                    | "prefer"
                    | "idempotency-key"
            ) && !k.starts_with("latch-")
        })
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
        .collect()
}

/// What the proxy does next with a call.
pub enum Step {
    /// Answer now.
    Answer(Response<Body>),
    /// Hold the caller on approval `id` (see [`wait`]).
    Hold {
        /// The approval.
        id: String,
        /// Cancel the approval if the caller goes away.
        cancel_on_drop: bool,
    },
}

/// Store the proposal; answer 202 at once or tell the caller to hold.
pub async fn gate(latch: &Latch, p: Proposal<'_>) -> Result<Step, ProxyError> {
    let headers = &p.parts.headers;
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
    let prefer_async = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("respond-async"));
    let spec = p.decision.approval.clone().ok_or(ProxyError::Internal)?;
    let now = now_ms();
    let approval = Approval {
        id: p.id.to_string(),
        state: State::Pending,
        agent: p.agent.id.clone(),
        route: p.route.to_string(),
        tool: p.tool.to_string(),
        method: p.parts.method.to_string(),
        path: p.path.to_string(),
        target: p.target,
        headers: storable_headers(headers),
        body: p.body.to_vec(),
        body_sha256: p.body_sha256.clone(),
        original_body: None,
        reason: headers
            .get("latch-reason")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        idempotency_key: idempotency_key.clone(),
        peer: p.conn.peer.to_string(),
        tls: p.conn.tls,
        created_at: now,
        deadline: now + (spec.timeout_s as i64) * 1000,
        level: 0,
        votes: Vec::new(),
        outcome: None,
        decided_at: None,
        result: None,
        version: 1,
        class: p.class.fingerprint(),
        class_shape: p.class.shape.clone(),
        decision: p.decision,
    };
    let event = Event::new(
        &approval.agent,
        "gate",
        &approval.id,
        json!({
            "route": approval.route, "tool": approval.tool, "method": approval.method, "path": approval.path,
            "risk": approval.decision.risk, "code": approval.decision.code, "reasons": approval.decision.reasons,
            "approval": spec, "body_sha256": approval.body_sha256, "agent_reason": approval.reason,
            "idempotency_key": approval.idempotency_key, "policy": p.policy,
            "class": approval.class, "shape": approval.class_shape,
        }),
    );
    let store = latch.store.clone();
    let to_insert = approval.clone();
    let started = std::time::Instant::now();
    // Armed before the insert: a synchronous caller without a key that goes
    // away while the call is being stored must still cancel it.
    let mut guard = CancelOnDrop {
        latch: latch.clone(),
        id: approval.id.clone(),
        armed: idempotency_key.is_none() && !prefer_async,
    };
    let cap = latch.config.gate.max_pending_per_agent;
    let inserted = match blocking(move || store.insert_approval(&to_insert, &event, cap)).await {
        Ok(inserted) => inserted,
        Err(e) => {
            guard.armed = false; // nothing was stored
            tracing::error!(error = %e, "storing a gated call failed; refusing it");
            return Err(ProxyError::StoreUnavailable);
        }
    };
    latch
        .metrics
        .audit_write
        .observe(started.elapsed().as_secs_f64());
    let (id, cancel_on_drop) = match inserted {
        Inserted::New => {
            latch
                .metrics
                .approvals_pending
                .with_label_values(&[approval.risk().as_str()])
                .inc();
            latch.metrics.outcomes.with_label_values(&["gated"]).inc();
            super::publish(latch, &approval);
            (approval.id.clone(), idempotency_key.is_none())
        }
        Inserted::TooMany(n) => {
            guard.armed = false; // nothing was stored
            latch
                .metrics
                .outcomes
                .with_label_values(&["refused_too_many"])
                .inc();
            // The refusal is a decision like any other: it lands in the trail.
            let event = Event::new(
                &approval.agent,
                "decision",
                &approval.id,
                json!({
                    "action": "deny", "code": "too_many_pending", "risk": approval.decision.risk,
                    "reasons": [format!("{n} calls of this agent are already waiting for approval")],
                    "route": approval.route, "method": approval.method, "path": approval.path,
                    "body_sha256": approval.body_sha256, "policy": p.policy, "gated_as": approval.decision.code,
                }),
            );
            latch
                .audit
                .record(event)
                .await
                .map_err(|_| ProxyError::AuditUnavailable)?;
            return Err(ProxyError::TooManyPending(n));
        }
        Inserted::Existing(existing) => {
            let proposed = existing
                .original_body
                .as_ref()
                .map(|b| crate::config::hex(&crate::config::sha256(b)))
                .unwrap_or_else(|| existing.body_sha256.clone());
            if proposed != approval.body_sha256
                || existing.method != approval.method
                || existing.target != approval.target
            {
                return Err(ProxyError::IdempotencyConflict);
            }
            (existing.id.clone(), false)
        }
    };
    // From here `wait` (or the agent's polling) takes over.
    guard.armed = false;
    if prefer_async {
        return Ok(Step::Answer(accepted(&id)));
    }
    Ok(Step::Hold { id, cancel_on_drop })
}

/// Cancels the approval if the held request is dropped (client gone)
/// before an answer, when nobody could otherwise collect the result.
struct CancelOnDrop {
    latch: Latch,
    id: String,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let latch = self.latch.clone();
        let id = std::mem::take(&mut self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(
                async move { super::cancel(&latch, &id, "the waiting caller disconnected").await },
            );
        }
    }
}

/// Hold until the approval is final or `hold` passes.
pub async fn wait(latch: &Latch, id: &str, hold: Duration, cancel_on_drop: bool) -> Response<Body> {
    let mut guard = CancelOnDrop {
        latch: latch.clone(),
        id: id.to_string(),
        armed: cancel_on_drop,
    };
    let until = tokio::time::Instant::now() + hold;
    let notify = latch.waiters.get(id);
    loop {
        // Register for the wake-up before reading the state, so a verdict
        // between the read and the wait is not missed.
        let mut notified = pin!(notify.notified());
        notified.as_mut().enable();
        let store = latch.store.clone();
        let key = id.to_string();
        let a = match blocking(move || store.approval(&key)).await {
            Ok(Some(a)) => a,
            Ok(None) | Err(_) => {
                guard.armed = false;
                return ProxyError::StoreUnavailable.into_response(id);
            }
        };
        if a.state.is_final() {
            guard.armed = false;
            latch.waiters.forget(id);
            return final_answer(&a);
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(until) => {
                guard.armed = false;
                return accepted(id);
            }
        }
    }
}

fn decision_header(resp: &mut Response<Body>, decision: &'static str, id: &str) {
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
pub async fn agent_api(
    latch: &Latch,
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
    let store = latch.store.clone();
    let key = id.to_string();
    let a = blocking(move || store.approval(&key))
        .await
        .map_err(|_| ProxyError::StoreUnavailable)?;
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
