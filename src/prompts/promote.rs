//! Protected label moves: the policy's decision on a promotion, the
//! approval it becomes when gated, and the executor that moves the label
//! once the approval is granted.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value as Json};

use super::model::{LabelMove, PromptVersion};
use super::{subject, template, Cache, Moved, PromptError, Registry, ROUTE, TOOL};
use crate::audit::chain::Event;
use crate::gate::model::{Approval, StoredResult};
use crate::gate::{Executor, Gate, GateError, Proposal};
use crate::history::ActionClass;
use crate::identity::Principal;
use crate::policy::input::{self, RequestFacts};
use crate::policy::{Action, Decision};
use crate::store::{blocking, Store};

impl Registry {
    /// A protected move: ask the policy; allow moves, deny refuses, gate holds.
    pub(super) async fn judge_move(
        &self,
        actor: &Principal,
        mut m: LabelMove,
        target: &PromptVersion,
        current: Option<&PromptVersion>,
        reason: Option<String>,
        peer: SocketAddr,
    ) -> Result<Moved, PromptError> {
        let (added, removed, _) = template::diff(
            current.map_or("", |c| c.template.as_str()),
            &target.template,
        );
        let (passed, failed) = target.check_counts();
        let args = json!({
            "name": m.name, "label": m.label, "from_version": m.from, "to_version": m.to,
            "author": target.author, "diff": {"added": added, "removed": removed},
            "checks": {"passed": passed, "failed": failed}, "rollback": m.rollback, "reason": reason,
        });
        let body = serde_json::to_vec(&json!({
            "name": m.name, "label": m.label, "from": m.from, "to": m.to,
            "sha256": target.sha256, "rollback": m.rollback, "reason": reason,
        }))
        .map_err(|e| PromptError::Store(e.into()))?;
        let body_sha256 = crate::digest::body_sha256(&body);
        let args_value = regorus::Value::from_json_str(&args.to_string())
            .map_err(|e| PromptError::Store(anyhow::anyhow!("{e}")))?;
        let path = format!("/prompts/{}/labels/{}", m.name, m.label);
        let class = ActionClass::new(&actor.id, TOOL, "POST", &args_value);
        let headers = http::HeaderMap::new();
        let query = crate::http_util::query::Query::new();
        let facts = RequestFacts {
            method: "POST",
            path: &path,
            query: &query,
            headers: &headers,
            allowed_headers: &[],
            body: &args_value,
            body_format: "json",
            body_sha256: Some(&body_sha256),
            size: Some(body.len() as u64),
        };
        let route = input::object([
            ("name", regorus::Value::from(ROUTE)),
            ("upstream", regorus::Value::from("latch")),
            ("tool", regorus::Value::from(TOOL)),
        ]);
        let mut doc = input::build(
            &facts,
            &route,
            &actor.input,
            (TOOL, args_value.clone(), &class.fingerprint()),
            &self.parts().history.get(&class),
            chrono::Utc::now(),
        );
        input::set(&mut doc, "grants", regorus::Value::new_array());
        let (set, eval) = self.parts().policy.evaluate(doc).await;
        let decision = eval.decision;
        let id = uuid::Uuid::now_v7().to_string();
        match decision.action {
            Action::Allow => {
                self.commit_move(
                    &m,
                    json!({"reason": reason, "decision": id, "code": decision.code, "policy": set.hash()}),
                )
                .await?;
                Ok(Moved::Now(m))
            }
            Action::Deny => {
                let event = Event::new(
                    &actor.id,
                    "decision",
                    &id,
                    json!({"action": "deny", "code": decision.code, "risk": decision.risk,
                           "reasons": decision.reasons, "route": ROUTE, "tool": TOOL,
                           "path": path, "body_sha256": body_sha256, "policy": set.hash(),
                           "prompt": subject(&m.name)}),
                );
                self.parts()
                    .audit
                    .record(event)
                    .await
                    .map_err(|_| PromptError::Gate(GateError::AuditUnavailable))?;
                Err(PromptError::Denied {
                    id,
                    code: decision.code,
                    reasons: decision.reasons,
                })
            }
            Action::Gate => {
                let decision = not_grantable(decision);
                m.approval = Some(id.clone());
                let mut held = self
                    .parts()
                    .gate
                    .propose(Proposal {
                        id: &id,
                        agent: actor,
                        route: ROUTE,
                        tool: TOOL,
                        method: &http::Method::POST,
                        headers: &headers,
                        path: &path,
                        target: String::new(),
                        body: Bytes::from(body),
                        body_sha256,
                        decision,
                        policy: set.hash(),
                        class: &class,
                        peer,
                        tls: false,
                        idempotency_key: None,
                        waits: false,
                        excluded: vec![target.author.clone()],
                    })
                    .await?;
                held.disarm();
                Ok(Moved::Held {
                    approval_id: held.id.clone(),
                })
            }
        }
    }
}

/// A promotion is never covered by a grant: every protected move is read.
fn not_grantable(mut d: Decision) -> Decision {
    if let Some(spec) = d.approval.as_mut() {
        spec.grantable = false;
    }
    d
}

pub(super) fn move_event(m: &LabelMove, extra: Json) -> Event {
    let mut details = json!({"label": m.label, "from": m.from, "to": m.to, "rollback": m.rollback,
                             "approval": m.approval});
    if let (Some(d), Some(e)) = (details.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    let event = if m.rollback {
        "prompt_rollback"
    } else {
        "prompt_label_move"
    };
    Event::new(&m.by, event, &subject(&m.name), details)
}

/// Moves a protected label once its promotion is approved.
pub(super) struct Promoter {
    pub(super) store: Arc<dyn Store>,
    pub(super) gate: Gate,
    pub(super) cache: Arc<Cache>,
}

impl Promoter {
    async fn promote(&self, a: &Approval) -> Result<StoredResult, String> {
        let body: Json = serde_json::from_slice(&a.body).map_err(|e| e.to_string())?;
        let version = |k: &str| body[k].as_u64().and_then(|v| u32::try_from(v).ok());
        let m = LabelMove {
            name: body["name"].as_str().unwrap_or_default().to_string(),
            label: body["label"].as_str().unwrap_or_default().to_string(),
            from: version("from"),
            to: version("to").ok_or("the approved promotion names no version")?,
            by: a.agent.clone(),
            approval: Some(a.id.clone()),
            rollback: body["rollback"] == true,
            at: self.gate.now_ms(),
        };
        let signed: Vec<&str> = a.votes.iter().map(|v| v.principal.as_str()).collect();
        let event = move_event(&m, json!({"approved_by": signed, "reason": body["reason"]}));
        let store = self.store.clone();
        let stored = m.clone();
        let moved = blocking(move || store.move_label(&stored, &event))
            .await
            .map_err(|e| format!("the label could not be moved: {e}"))?;
        if !moved {
            return Err(format!(
                "{} of {} moved since this promotion was requested; nothing changed",
                m.label, m.name
            ));
        }
        self.cache.forget(&m.name);
        Ok(StoredResult {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(&json!({"moved": m})).unwrap_or_default(),
        })
    }
}

impl Executor for Promoter {
    fn execute<'a>(
        &'a self,
        a: &'a Approval,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<StoredResult, String>> + Send + 'a>,
    > {
        Box::pin(self.promote(a))
    }
}
