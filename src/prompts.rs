//! The prompt registry: versioned, content-addressed prompts whose
//! protected labels (`production`) move only through the policy and the
//! one approval engine.
//!
//! A version is immutable: template, declared variables, optional model
//! config, checks (run when it is created) and evaluation results CI
//! attaches later. Labels point at versions. Moving an unprotected label is
//! immediate; moving a protected one is a call to the policy with
//! `action.tool = "latch.prompt.promote"`: an allow moves it, a deny refuses
//! with reasons, a gate proposes an approval like any held call — the
//! version's author never counts as an approver — and its execution, through
//! the gate's [`Executor`] seam, moves the label. Everything lands in the
//! audit chain under the subject `prompt:<name>`.
//!
//! Apps and agents fetch a label's version on the proxy listener from a
//! memory cache that every label move clears.

pub mod model;
mod promote;
mod serve;
pub mod template;

pub use serve::Served;

use std::net::SocketAddr;
use std::sync::Arc;

use dashmap::DashMap;
use serde_json::{json, Value as Json};

use crate::audit::chain::{Event, Record};
use crate::audit::AuditLog;
use crate::config::PromptsConfig;
use crate::gate::model::State;
use crate::gate::{Gate, GateError};
use crate::history::History;
use crate::identity::Principal;
use crate::policy::Engine;
use crate::store::prompts::Pushed;
use crate::store::{blocking, ApprovalQuery, Store};
use model::{Check, Evaluation, LabelMove, PromptVersion};

/// The route name promotions are proposed on (reserved in the config).
pub const ROUTE: &str = "latch.prompts";
/// The tool the policy sees for a protected label move.
pub const TOOL: &str = "latch.prompt.promote";
/// Largest template, bytes.
pub const MAX_TEMPLATE: usize = 256 * 1024;

/// Why the registry refused.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// No such prompt, version or label.
    #[error("{0}")]
    NotFound(String),
    /// Not allowed (not an editor).
    #[error("{0}")]
    Forbidden(String),
    /// Malformed name, template, variables or checks.
    #[error("{0}")]
    Invalid(String),
    /// Too large.
    #[error("{0}")]
    TooLarge(String),
    /// The label already points there, or moved meanwhile.
    #[error("{0}")]
    Conflict(String),
    /// Rendering lacks a variable.
    #[error("{0}")]
    Unrenderable(String),
    /// The policy denies the move.
    #[error("the policy denies this label move ({code}): {}", reasons.join("; "))]
    Denied {
        /// Decision id.
        id: String,
        /// The policy's code.
        code: String,
        /// The policy's reasons.
        reasons: Vec<String>,
    },
    /// The gate refused (e.g. too many pending).
    #[error(transparent)]
    Gate(#[from] GateError),
    /// The store or the audit log failed; nothing changed.
    #[error("store unavailable")]
    Store(#[source] anyhow::Error),
}

impl PromptError {
    /// Status and `latch-error` code; `None` for the gate's own refusals,
    /// which the caller maps as it maps the gate's.
    pub fn status_and_code(&self) -> Option<(http::StatusCode, &'static str)> {
        use http::StatusCode as S;
        Some(match self {
            PromptError::NotFound(_) => (S::NOT_FOUND, "not_found"),
            PromptError::Forbidden(_) => (S::FORBIDDEN, "forbidden"),
            PromptError::Invalid(_) => (S::BAD_REQUEST, "invalid_prompt"),
            PromptError::TooLarge(_) => (S::PAYLOAD_TOO_LARGE, "too_large"),
            PromptError::Conflict(_) => (S::CONFLICT, "conflict"),
            PromptError::Unrenderable(_) => (S::UNPROCESSABLE_ENTITY, "missing_variable"),
            PromptError::Denied { .. } => (S::FORBIDDEN, "denied"),
            PromptError::Store(_) => (S::SERVICE_UNAVAILABLE, "store_unavailable"),
            PromptError::Gate(_) => return None,
        })
    }
}

/// A new version, as pushed.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// Prompt name.
    pub name: String,
    /// Template.
    pub template: String,
    /// Declared variables.
    #[serde(default)]
    pub variables: Vec<String>,
    /// Model config.
    #[serde(default)]
    pub config: Option<Json>,
    /// Message.
    #[serde(default)]
    pub message: Option<String>,
    /// Checks.
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// What a label-move request led to.
#[derive(Debug)]
pub enum Moved {
    /// The label moved.
    Now(LabelMove),
    /// The move waits for approval.
    Held {
        /// The approval's id.
        approval_id: String,
    },
}

/// What the registry is built from.
pub struct Parts {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// The approval engine.
    pub gate: Gate,
    /// The live policy.
    pub policy: Engine,
    /// Action history (`input.history`).
    pub history: Arc<History>,
    /// Decision records.
    pub audit: Arc<AuditLog>,
    /// `[prompts]`.
    pub config: PromptsConfig,
}

/// Cheap-to-clone handle to the registry.
#[derive(Clone)]
pub struct Registry(Arc<Inner>);

struct Inner {
    parts: Parts,
    cache: Arc<Cache>,
}

/// Served versions by (prompt, label).
#[derive(Default)]
struct Cache(DashMap<(String, String), Arc<Served>>);

impl Cache {
    fn forget(&self, name: &str) {
        self.0.retain(|k, _| k.0 != name);
    }
}

/// Names: letters, digits, `.`, `_`, `-`; no path characters.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && !s.starts_with('.')
        && !s.contains("..")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn check_name(what: &str, s: &str) -> Result<(), PromptError> {
    if valid_name(s) {
        Ok(())
    } else {
        Err(PromptError::Invalid(format!(
            "{what} {s:?} must be 1 to 100 letters, digits, `.`, `_` or `-` (no path characters)"
        )))
    }
}

fn store_err(e: anyhow::Error) -> PromptError {
    PromptError::Store(e)
}

/// SHA-256 of a version's content.
fn content_sha256(r: &PushRequest) -> String {
    let canonical = json!({"template": r.template, "variables": r.variables, "config": r.config, "checks": r.checks});
    crate::digest::hex(&crate::digest::sha256(canonical.to_string().as_bytes()))
}

/// The audit subject of a prompt.
pub fn subject(name: &str) -> String {
    format!("prompt:{name}")
}

/// Summary of a version for listings.
pub fn version_summary(v: &PromptVersion) -> Json {
    let (passed, failed) = v.check_counts();
    json!({"version": v.version, "sha256": v.sha256, "author": v.author, "message": v.message,
           "created_at": v.created_at, "checks": {"passed": passed, "failed": failed}})
}

impl Registry {
    /// A registry over `parts`; it registers its executor with the gate.
    pub fn new(parts: Parts) -> Registry {
        let cache = Arc::new(Cache::default());
        let promoter = promote::Promoter {
            store: parts.store.clone(),
            gate: parts.gate.clone(),
            cache: cache.clone(),
        };
        parts.gate.register_executor(ROUTE, Arc::new(promoter));
        Registry(Arc::new(Inner { parts, cache }))
    }

    fn parts(&self) -> &Parts {
        &self.0.parts
    }

    fn is_editor(&self, p: &Principal) -> bool {
        self.parts().config.editors.iter().any(|r| p.has_role(r))
    }

    fn must_edit(&self, p: &Principal) -> Result<(), PromptError> {
        if self.is_editor(p) {
            return Ok(());
        }
        Err(PromptError::Forbidden(format!(
            "{} holds none of the editor roles ({}; [prompts] editors)",
            p.id,
            self.parts().config.editors.join(", ")
        )))
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, PromptError> {
        let store = self.parts().store.clone();
        blocking(move || f(&*store)).await.map_err(store_err)
    }

    /// Push a new version; identical content returns the existing version
    /// (`false`: nothing new was stored).
    pub async fn push(
        &self,
        actor: &Principal,
        r: PushRequest,
    ) -> Result<(PromptVersion, bool), PromptError> {
        self.must_edit(actor)?;
        check_name("prompt name", &r.name)?;
        if r.template.len() > MAX_TEMPLATE {
            return Err(PromptError::TooLarge(format!(
                "the template is {} bytes; at most {MAX_TEMPLATE}",
                r.template.len()
            )));
        }
        let check_results =
            template::check(&r.template, &r.variables, &r.checks).map_err(PromptError::Invalid)?;
        let sha256 = content_sha256(&r);
        let v = PromptVersion {
            name: r.name,
            version: 0,
            template: r.template,
            variables: r.variables,
            config: r.config,
            message: r.message,
            author: actor.id.clone(),
            sha256,
            checks: r.checks,
            check_results,
            evaluations: Vec::new(),
            created_at: self.parts().gate.now_ms(),
        };
        let actor = actor.id.clone();
        let pushed = self
            .run(move |s| {
                s.push_prompt(&v, &|v: &PromptVersion| {
                    let (passed, failed) = v.check_counts();
                    Event::new(
                        &actor,
                        "prompt_version",
                        &subject(&v.name),
                        json!({"version": v.version, "sha256": v.sha256, "message": v.message,
                               "checks": {"passed": passed, "failed": failed}}),
                    )
                })
            })
            .await?;
        Ok(match pushed {
            Pushed::New(v) => (v, true),
            Pushed::Existing(v) => (v, false),
        })
    }

    /// Every prompt with its labels and latest version.
    pub async fn list(&self) -> Result<Json, PromptError> {
        self.run(|s| {
            let mut out = Vec::new();
            for name in s.prompt_names()? {
                let labels = s.prompt_labels(&name)?;
                let latest = s.prompt_versions(&name)?.last().map(version_summary);
                out.push(json!({"name": name, "labels": labels, "latest": latest}));
            }
            Ok(json!({"prompts": out}))
        })
        .await
    }

    /// One prompt: labels, versions, label history, pending promotions.
    pub async fn get(&self, name: &str) -> Result<Json, PromptError> {
        let n = name.to_string();
        let (versions, labels, history) = self
            .run(move |s| {
                Ok((
                    s.prompt_versions(&n)?,
                    s.prompt_labels(&n)?,
                    s.label_history(&n)?,
                ))
            })
            .await?;
        if versions.is_empty() {
            return Err(PromptError::NotFound(format!("no prompt named {name:?}")));
        }
        let pending = self.pending(name).await?;
        Ok(json!({
            "name": name, "labels": labels,
            "versions": versions.iter().map(version_summary).collect::<Vec<_>>(),
            "history": history, "pending": pending,
        }))
    }

    /// Pending promotions of `name`: `[{approval_id, label, to_version}]`.
    async fn pending(&self, name: &str) -> Result<Vec<Json>, PromptError> {
        let q = ApprovalQuery {
            state: Some(State::Pending),
            limit: 10_000,
            ..Default::default()
        };
        let list = self.run(move |s| s.list_approvals(&q)).await?;
        Ok(list
            .iter()
            .filter(|a| a.route == ROUTE)
            .filter_map(|a| {
                let body: Json = serde_json::from_slice(&a.body).ok()?;
                (body["name"] == name).then(|| {
                    json!({"approval_id": a.id, "label": body["label"], "to_version": body["to"],
                           "requested_by": a.agent, "required": a.requirements()})
                })
            })
            .collect())
    }

    /// One version.
    pub async fn version(&self, name: &str, version: u32) -> Result<PromptVersion, PromptError> {
        let n = name.to_string();
        self.run(move |s| s.prompt_version(&n, version))
            .await?
            .ok_or_else(|| PromptError::NotFound(format!("{name} has no version {version}")))
    }

    /// The difference between two versions.
    pub async fn diff(&self, name: &str, from: u32, to: u32) -> Result<Json, PromptError> {
        let a = self.version(name, from).await?;
        let b = self.version(name, to).await?;
        let (added, removed, lines) = template::diff(&a.template, &b.template);
        Ok(json!({
            "name": name, "from": from, "to": to, "added": added, "removed": removed, "lines": lines,
            "variables": {"from": a.variables, "to": b.variables},
            "config": {"from": a.config, "to": b.config},
        }))
    }

    /// Attach an evaluation result (from CI) to a version.
    pub async fn add_evaluation(
        &self,
        actor: &Principal,
        name: &str,
        version: u32,
        body: &Json,
    ) -> Result<PromptVersion, PromptError> {
        let eval_name = body["name"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| PromptError::Invalid("an evaluation needs a `name`".into()))?;
        let passed = body["passed"].as_bool().ok_or_else(|| {
            PromptError::Invalid("an evaluation needs `passed` (true or false)".into())
        })?;
        let score = match &body["score"] {
            Json::Null => None,
            s => Some(
                s.as_f64()
                    .ok_or_else(|| PromptError::Invalid("`score` must be a number".into()))?,
            ),
        };
        let url = match &body["url"] {
            Json::Null => None,
            u => Some(
                u.as_str()
                    .ok_or_else(|| PromptError::Invalid("`url` must be a string".into()))?
                    .to_string(),
            ),
        };
        let e = Evaluation {
            name: eval_name.to_string(),
            score,
            passed,
            url,
            by: actor.id.clone(),
            at: self.parts().gate.now_ms(),
        };
        let event = Event::new(
            &actor.id,
            "prompt_evaluation",
            &subject(name),
            json!({"version": version, "evaluation": e}),
        );
        let n = name.to_string();
        let found = self
            .run(move |s| s.add_evaluation(&n, version, &e, &event))
            .await?;
        if !found {
            return Err(PromptError::NotFound(format!(
                "{name} has no version {version}"
            )));
        }
        self.version(name, version).await
    }

    /// Point `label` at `version`: at once for an unprotected label (editors
    /// only); through the policy and, if it gates, the approval queue for a
    /// protected one.
    pub async fn move_label(
        &self,
        actor: &Principal,
        name: &str,
        label: &str,
        version: u32,
        reason: Option<String>,
        peer: SocketAddr,
    ) -> Result<Moved, PromptError> {
        self.request_move(actor, name, label, version, reason, false, peer)
            .await
    }

    /// Point `label` back at the version it held before its latest move.
    pub async fn rollback(
        &self,
        actor: &Principal,
        name: &str,
        label: &str,
        reason: Option<String>,
        peer: SocketAddr,
    ) -> Result<Moved, PromptError> {
        check_name("label", label)?;
        let n = name.to_string();
        let (labels, history) = self
            .run(move |s| Ok((s.prompt_labels(&n)?, s.label_history(&n)?)))
            .await?;
        let current = labels
            .get(label)
            .copied()
            .ok_or_else(|| PromptError::NotFound(format!("{name} has no label {label:?}")))?;
        let previous = history
            .iter()
            .rev()
            .find(|m| m.label == label && m.to == current)
            .and_then(|m| m.from)
            .ok_or_else(|| {
                PromptError::Conflict(format!(
                    "{label} of {name} has no earlier version to roll back to"
                ))
            })?;
        self.request_move(actor, name, label, previous, reason, true, peer)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn request_move(
        &self,
        actor: &Principal,
        name: &str,
        label: &str,
        to: u32,
        reason: Option<String>,
        rollback: bool,
        peer: SocketAddr,
    ) -> Result<Moved, PromptError> {
        check_name("prompt name", name)?;
        check_name("label", label)?;
        let target = self.version(name, to).await?;
        let n = name.to_string();
        let labels = self.run(move |s| s.prompt_labels(&n)).await?;
        let from = labels.get(label).copied();
        if from == Some(to) {
            return Err(PromptError::Conflict(format!(
                "{label} of {name} already points at version {to}"
            )));
        }
        let m = LabelMove {
            name: name.to_string(),
            label: label.to_string(),
            from,
            to,
            by: actor.id.clone(),
            approval: None,
            rollback,
            at: self.parts().gate.now_ms(),
        };
        if !self
            .parts()
            .config
            .protected_labels
            .iter()
            .any(|l| l == label)
        {
            self.must_edit(actor)?;
            self.commit_move(&m, json!({"reason": reason})).await?;
            return Ok(Moved::Now(m));
        }
        let current = match from {
            Some(v) => Some(self.version(name, v).await?),
            None => None,
        };
        self.judge_move(actor, m, &target, current.as_ref(), reason, peer)
            .await
    }

    async fn commit_move(&self, m: &LabelMove, extra: Json) -> Result<(), PromptError> {
        let event = promote::move_event(m, extra);
        let stored = m.clone();
        let moved = self.run(move |s| s.move_label(&stored, &event)).await?;
        if !moved {
            return Err(PromptError::Conflict(format!(
                "{} of {} moved meanwhile; look again",
                m.label, m.name
            )));
        }
        self.0.cache.forget(&m.name);
        if m.rollback {
            // Every emergency change is announced for review.
            tracing::warn!(prompt = %m.name, label = %m.label, from = ?m.from, to = m.to, by = %m.by, "prompt rolled back");
        }
        Ok(())
    }

    /// Audit records of `name`, oldest first.
    pub async fn audit(&self, name: &str) -> Result<Vec<Record>, PromptError> {
        let s = subject(name);
        self.run(move |st| st.audit_of(&s)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_no_path_characters() {
        for ok in ["support-reply", "v2.draft", "a_b"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "../etc", "a/b", ".hidden", "a..b", "sp ace", "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
