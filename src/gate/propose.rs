//! A gated call becomes a pending approval: stored with its exact bytes,
//! its audit event in the same transaction, bounded per agent, attached to
//! an earlier identical proposal by `Idempotency-Key`.

use std::net::SocketAddr;

use bytes::Bytes;
use serde_json::json;

use super::model::{Approval, State};
use super::{Gate, GateError};
use crate::audit::chain::Event;
use crate::history::ActionClass;
use crate::http_util::headers::strip_hop_by_hop;
use crate::identity::Principal;
use crate::policy::decision::Decision;
use crate::store::{blocking, Inserted};

/// Everything the proxy knows about a gated call.
pub struct Proposal<'a> {
    /// Request (and approval) id.
    pub id: &'a str,
    /// The agent.
    pub agent: &'a Principal,
    /// Route name.
    pub route: &'a str,
    /// Tool.
    pub tool: &'a str,
    /// Method.
    pub method: &'a http::Method,
    /// The agent's headers.
    pub headers: &'a http::HeaderMap,
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
    pub class: &'a ActionClass,
    /// The agent's address and whether it used TLS (for `Forwarded` later).
    pub peer: SocketAddr,
    /// Whether the agent's connection was TLS.
    pub tls: bool,
    /// `Idempotency-Key`, already checked for shape.
    pub idempotency_key: Option<String>,
    /// The caller waits for the verdict on this request (no
    /// `Prefer: respond-async`): without a key nobody else could collect
    /// the result, so the approval is cancelled if the caller goes away.
    pub waits: bool,
    /// Who else may not decide it (see [`Approval::excluded`]).
    pub excluded: Vec<String>,
}

/// A stored proposal. Dropping it while it is armed (a waiting caller with
/// no key went away) cancels the approval.
pub struct Held {
    gate: Gate,
    /// The approval id (an earlier one for a retried `Idempotency-Key`).
    pub id: String,
    armed: bool,
}

impl Held {
    /// Nobody needs to cancel on drop any more (answered, or collectable).
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let gate = self.gate.clone();
        let id = std::mem::take(&mut self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { gate.cancel(&id, "the waiting caller disconnected").await });
        }
    }
}

/// Headers kept for execution: no credentials, no hop-by-hop or forwarding
/// headers (Latch adds its own when it sends), no length (recomputed).
fn storable_headers(h: &http::HeaderMap) -> Vec<(String, String)> {
    let mut h = h.clone();
    strip_hop_by_hop(&mut h);
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

impl Gate {
    /// Store `p` as a pending approval (or find the one its key names).
    pub async fn propose(&self, p: Proposal<'_>) -> Result<Held, GateError> {
        let parts = self.parts();
        let spec = p
            .decision
            .approval
            .clone()
            .ok_or_else(|| GateError::Invalid("a gate decision without approval".into()))?;
        let now = self.now_ms();
        let approval = Approval {
            id: p.id.to_string(),
            state: State::Pending,
            agent: p.agent.id.clone(),
            route: p.route.to_string(),
            tool: p.tool.to_string(),
            method: p.method.to_string(),
            path: p.path.to_string(),
            target: p.target,
            headers: storable_headers(p.headers),
            body: p.body.to_vec(),
            body_sha256: p.body_sha256,
            original_body: None,
            reason: p
                .headers
                .get("latch-reason")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            idempotency_key: p.idempotency_key.clone(),
            peer: p.peer.to_string(),
            tls: p.tls,
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
            grant_id: None,
            excluded: p.excluded,
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
        // Armed before the insert: a waiting caller without a key that goes
        // away while the call is being stored must still cancel it.
        let mut held = Held {
            gate: self.clone(),
            id: approval.id.clone(),
            armed: p.waits && p.idempotency_key.is_none(),
        };
        let store = parts.store.clone();
        let to_insert = approval.clone();
        let cap = parts.config.max_pending_per_agent;
        let started = std::time::Instant::now();
        let inserted = blocking(move || store.insert_approval(&to_insert, &event, cap)).await;
        let inserted = inserted.map_err(|e| {
            held.disarm(); // nothing was stored
            tracing::error!(error = %e, "storing a gated call failed; refusing it");
            GateError::Store(e)
        })?;
        parts
            .metrics
            .audit_write
            .observe(started.elapsed().as_secs_f64());
        match inserted {
            Inserted::New => {
                parts
                    .metrics
                    .approvals_pending
                    .with_label_values(&[approval.risk().as_str()])
                    .inc();
                parts.metrics.outcomes.with_label_values(&["gated"]).inc();
                self.publish(&approval);
                Ok(held)
            }
            Inserted::TooMany(n) => {
                held.disarm(); // nothing was stored
                self.refuse_too_many(&approval, p.policy, n).await?;
                Err(GateError::TooManyPending(n))
            }
            Inserted::Existing(existing) => {
                held.disarm(); // its first caller (or polling) collects it
                let proposed = existing
                    .original_body
                    .as_ref()
                    .map(|b| crate::digest::body_sha256(b))
                    .unwrap_or_else(|| existing.body_sha256.clone());
                if proposed != approval.body_sha256
                    || existing.method != approval.method
                    || existing.target != approval.target
                {
                    return Err(GateError::IdempotencyConflict);
                }
                held.id = existing.id.clone();
                Ok(held)
            }
        }
    }

    /// The refusal of a proposal over the per-agent cap is a decision like
    /// any other: it lands in the trail.
    async fn refuse_too_many(&self, a: &Approval, policy: &str, n: u64) -> Result<(), GateError> {
        let parts = self.parts();
        parts
            .metrics
            .outcomes
            .with_label_values(&["refused_too_many"])
            .inc();
        let event = Event::new(
            &a.agent,
            "decision",
            &a.id,
            json!({
                "action": "deny", "code": "too_many_pending", "risk": a.decision.risk,
                "reasons": [format!("{n} calls of this agent are already waiting for approval")],
                "route": a.route, "method": a.method, "path": a.path,
                "body_sha256": a.body_sha256, "policy": policy, "gated_as": a.decision.code,
            }),
        );
        parts
            .audit
            .record(event)
            .await
            .map_err(|_| GateError::AuditUnavailable)
    }
}
