//! The approval state machine: votes and quorum, modify, break-glass,
//! deadlines (deny, allow, escalate, veto), execution of exactly the approved
//! bytes at most once, and the wake-ups that release held calls.
//!
//! The store is the source of truth. Every change is one synced transaction
//! holding the new state and its audit events, guarded by a version number,
//! so two reviewers (or a reviewer and a deadline) cannot both win.

pub mod hold;
pub mod model;
pub mod quorum;
pub mod rejudge;
pub mod vouch;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use serde_json::json;
use tokio::sync::Notify;

use crate::app::Latch;
use crate::audit::Event;
use crate::identity::Principal;
use crate::policy::decision::{Mode, OnTimeout};
use model::{Approval, State, StoredResult, Vote, VoteKind};

/// Largest upstream answer stored for an executed approval.
const MAX_STORED_RESULT: usize = 10 << 20;

/// Wake-ups for held calls, by approval id.
#[derive(Default)]
pub struct Waiters {
    map: DashMap<String, Arc<Notify>>,
}

impl Waiters {
    /// The notifier for `id` (created on first use).
    pub fn get(&self, id: &str) -> Arc<Notify> {
        self.map.entry(id.to_string()).or_default().clone()
    }

    /// Wake everyone waiting on `id`.
    pub fn wake(&self, id: &str) {
        if let Some(n) = self.map.get(id) {
            n.notify_waiters();
        }
    }

    /// Forget `id` once it can change no more.
    pub fn forget(&self, id: &str) {
        self.map.remove(id);
    }

    /// Number of approvals with a notifier.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What a reviewer asks for.
#[derive(Debug, Clone)]
pub enum Act {
    /// Approve the current body.
    Approve {
        /// Optional comment.
        comment: Option<String>,
    },
    /// Reject.
    Reject {
        /// Required reason (shown to the agent).
        reason: String,
        /// Optional structured code.
        code: Option<String>,
    },
    /// Replace the body; counts as the modifier's approval of the new body.
    Modify {
        /// The new JSON body.
        body: serde_json::Value,
        /// Optional comment.
        comment: Option<String>,
    },
    /// Break-glass: approve now, whatever the quorum.
    Override {
        /// Required reason.
        reason: String,
    },
}

/// Why a decision was refused.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// No such approval.
    #[error("no such approval")]
    NotFound,
    /// Already decided.
    #[error("approval is already {0}")]
    Closed(&'static str),
    /// Not allowed to decide (role, self-approval, owner, agent).
    #[error("{0}")]
    Forbidden(String),
    /// This person already approved this body at this level.
    #[error("{0} has already approved this version")]
    AlreadyVoted(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The policy denies the call as modified.
    #[error("the policy denies the modified call ({code}): {}", reasons.join("; "))]
    PolicyDenied {
        /// The policy's code.
        code: String,
        /// The policy's reasons.
        reasons: Vec<String>,
    },
    /// The store or audit log failed; nothing changed.
    #[error("store unavailable")]
    Store(#[source] anyhow::Error),
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Run a blocking store call off the async workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("store task failed: {e}"))?
}

async fn load(latch: &Latch, id: &str) -> Result<Approval, GateError> {
    let store = latch.store.clone();
    let id = id.to_string();
    blocking(move || store.approval(&id))
        .await
        .map_err(GateError::Store)?
        .ok_or(GateError::NotFound)
}

/// Commit `next` (whose version must be `prev_version + 1`) with `events`.
async fn commit(
    latch: &Latch,
    next: &Approval,
    prev_version: i64,
    events: Vec<Event>,
) -> Result<bool, GateError> {
    let store = latch.store.clone();
    let a = next.clone();
    let started = std::time::Instant::now();
    let ok = blocking(move || store.update_approval(&a, prev_version, &events))
        .await
        .map_err(GateError::Store)?;
    latch
        .metrics
        .audit_write
        .observe(started.elapsed().as_secs_f64());
    Ok(ok)
}

/// Tell live dashboards that an approval changed (nobody listening is fine).
pub fn publish(latch: &Latch, a: &Approval) {
    let _ = latch
        .events
        .send(json!({"id": a.id, "state": a.state, "level": a.level}).to_string());
}

/// After a committed change: metrics, learning, wake-ups, execution.
fn after_commit(latch: &Latch, before: State, a: &Approval) {
    let class =
        crate::history::ActionClass::from_parts(&a.class, &a.agent, &a.tool, &a.class_shape);
    if before == State::Pending && a.state != State::Pending {
        latch
            .metrics
            .approvals_pending
            .with_label_values(&[a.risk().as_str()])
            .dec();
        let waited_ms = (a.decided_at.unwrap_or_else(now_ms) - a.created_at).max(0);
        latch
            .metrics
            .time_to_decision
            .observe(waited_ms as f64 / 1000.0);
        // Human verdicts feed `input.history` (approved/rejected, decision
        // time); break-glass, veto windows and timeouts are not verdicts.
        let human =
            a.state == State::Rejected || (a.state == State::Approved && a.outcome.is_none());
        if let (Some(class), true) = (&class, human) {
            latch
                .history
                .verdict(class, a.state == State::Approved, waited_ms as u64);
        }
    }
    if let (Some(class), State::Executed) = (&class, a.state) {
        latch.history.executed(class, now_ms() / 1000);
    }
    latch.waiters.wake(&a.id);
    publish(latch, a);
    if a.state == State::Approved {
        let latch = latch.clone();
        let id = a.id.clone();
        tokio::spawn(async move { execute(&latch, &id).await });
    }
}

/// Whether `actor` may vote on or modify `a` now: an independent human
/// (see [`check_independent`]) holding a role the current level requires.
fn check_voter(latch: &Latch, a: &Approval, actor: &Principal) -> Result<(), GateError> {
    check_independent(latch, a, actor)?;
    if !a.requirements().iter().any(|r| actor.has_role(&r.role)) {
        return Err(GateError::Forbidden(format!(
            "{} holds none of the roles this level needs",
            actor.id
        )));
    }
    Ok(())
}

/// Whether `actor` may release `a` at all: a human, neither the agent that
/// asked nor one of its owners. Break-glass needs this too: an owner cannot
/// override what they may not approve.
fn check_independent(latch: &Latch, a: &Approval, actor: &Principal) -> Result<(), GateError> {
    if actor.has_role("agent") {
        return Err(GateError::Forbidden(
            "agents cannot decide approvals".into(),
        ));
    }
    if actor.id == a.agent {
        return Err(GateError::Forbidden(
            "self-approval is not allowed: you made this request".into(),
        ));
    }
    let owners = latch
        .directory
        .get(&a.agent)
        .map(|p| p.owners.clone())
        .unwrap_or_default();
    if owners.contains(&actor.id) {
        return Err(GateError::Forbidden(format!(
            "{} owns agent {} and may not decide its calls",
            actor.id, a.agent
        )));
    }
    Ok(())
}

/// Mark `next` approved if its votes now meet the quorum; returns whether they do.
fn approve_if_quorum(latch: &Latch, next: &mut Approval, now: i64) -> bool {
    let met = quorum_met(latch, next);
    if met {
        next.state = State::Approved;
        next.decided_at = Some(now);
    }
    met
}

/// Whether the current level's requirements are met by approvals of the current body.
fn quorum_met(latch: &Latch, a: &Approval) -> bool {
    let mut seen = std::collections::HashSet::new();
    let approvers: Vec<Vec<String>> = a
        .votes
        .iter()
        .filter(|v| {
            v.kind == VoteKind::Approve && v.level == a.level && v.body_sha256 == a.body_sha256
        })
        .filter(|v| seen.insert(v.principal.clone()))
        .filter_map(|v| latch.directory.get(&v.principal).map(|p| p.roles.clone()))
        .collect();
    quorum::met(a.requirements(), &approvers)
}

/// Apply a reviewer's act. Retries on a concurrent change; returns the new state.
pub async fn decide(
    latch: &Latch,
    id: &str,
    actor: &Principal,
    act: Act,
) -> Result<Approval, GateError> {
    for _ in 0..8 {
        let a = load(latch, id).await?;
        if a.state != State::Pending {
            return Err(GateError::Closed(a.state.as_str()));
        }
        let rejudged = match &act {
            Act::Modify { body, .. } => {
                // Refuse an ineligible modifier before spending an evaluation.
                check_voter(latch, &a, actor)?;
                Some(rejudge::rejudge(latch, &a, body).await?)
            }
            _ => None,
        };
        let (next, events) = apply(latch, &a, actor, &act, rejudged)?;
        if commit(latch, &next, a.version, events).await? {
            let outcome = match (&act, next.state) {
                (Act::Override { .. }, _) => "overridden",
                (Act::Modify { .. }, _) => "modified",
                (_, State::Rejected) => "rejected",
                (_, State::Approved) => "approved",
                _ => "vote",
            };
            latch.metrics.outcomes.with_label_values(&[outcome]).inc();
            if matches!(act, Act::Modify { .. }) && next.state == State::Approved {
                latch
                    .metrics
                    .outcomes
                    .with_label_values(&["approved"])
                    .inc();
            }
            after_commit(latch, a.state, &next);
            return Ok(next);
        }
    }
    Err(GateError::Store(anyhow::anyhow!(
        "approval {id} kept changing; try again"
    )))
}

fn apply(
    latch: &Latch,
    a: &Approval,
    actor: &Principal,
    act: &Act,
    rejudged: Option<rejudge::Rejudged>,
) -> Result<(Approval, Vec<Event>), GateError> {
    let now = now_ms();
    let mut next = a.clone();
    next.version += 1;
    let vote = |kind, sha: &str, comment: Option<String>| Vote {
        principal: actor.id.clone(),
        kind,
        level: a.level,
        body_sha256: sha.to_string(),
        comment,
        at: now,
    };
    let event = match act {
        Act::Override { reason } => {
            let allowed = latch
                .config
                .gate
                .break_glass_roles
                .iter()
                .any(|r| actor.has_role(r));
            if !allowed {
                return Err(GateError::Forbidden(format!(
                    "{} holds no break-glass role",
                    actor.id
                )));
            }
            if reason.trim().is_empty() {
                return Err(GateError::Invalid("override needs a reason".into()));
            }
            check_independent(latch, a, actor)?;
            next.state = State::Approved;
            next.decided_at = Some(now);
            next.outcome = Some(format!("break-glass override by {}: {reason}", actor.id));
            latch.metrics.overrides.inc();
            tracing::warn!(approval = %a.id, actor = %actor.id, %reason, "break-glass override");
            Event::new(
                &actor.id,
                "override",
                &a.id,
                json!({"reason": reason, "break_glass": true, "level": a.level, "body_sha256": a.body_sha256}),
            )
        }
        Act::Approve { comment } => {
            check_voter(latch, a, actor)?;
            let already = a.votes.iter().any(|v| {
                v.principal == actor.id
                    && v.kind == VoteKind::Approve
                    && v.level == a.level
                    && v.body_sha256 == a.body_sha256
            });
            if already {
                return Err(GateError::AlreadyVoted(actor.id.clone()));
            }
            next.votes
                .push(vote(VoteKind::Approve, &a.body_sha256, comment.clone()));
            let met = approve_if_quorum(latch, &mut next, now);
            Event::new(
                &actor.id,
                "approve",
                &a.id,
                json!({"level": a.level, "body_sha256": a.body_sha256, "comment": comment, "quorum_met": met}),
            )
        }
        Act::Reject { reason, code } => {
            check_voter(latch, a, actor)?;
            if reason.trim().is_empty() {
                return Err(GateError::Invalid("reject needs a reason".into()));
            }
            next.votes
                .push(vote(VoteKind::Reject, &a.body_sha256, Some(reason.clone())));
            next.state = State::Rejected;
            next.decided_at = Some(now);
            next.outcome = Some(reason.clone());
            if let Some(c) = code {
                next.decision.code = c.clone();
            }
            Event::new(
                &actor.id,
                "reject",
                &a.id,
                json!({"level": a.level, "reason": reason, "code": code}),
            )
        }
        Act::Modify { body, comment } => {
            check_voter(latch, a, actor)?;
            let Some(judged) = rejudged else {
                return Err(GateError::Invalid(
                    "the modified body was not judged".into(),
                ));
            };
            if judged.sha256 == a.body_sha256 {
                return Err(GateError::Invalid(
                    "the new body is identical to the current one".into(),
                ));
            }
            let original = a.original_body.clone().unwrap_or_else(|| a.body.clone());
            let original_json: serde_json::Value =
                serde_json::from_slice(&original).unwrap_or(serde_json::Value::Null);
            let previous = a.body_sha256.clone();
            next.original_body = Some(original);
            next.body = judged.bytes;
            next.body_sha256 = judged.sha256.clone();
            // The policy judged the new bytes: its requirements apply from
            // now on (a stricter gate tightens the quorum before any vote).
            next.decision = judged.decision;
            next.headers
                .retain(|(k, _)| !k.eq_ignore_ascii_case("content-length"));
            // Earlier approvals were for other bytes: they no longer count.
            next.votes
                .push(vote(VoteKind::Approve, &judged.sha256, comment.clone()));
            let met = approve_if_quorum(latch, &mut next, now);
            Event::new(
                &actor.id,
                "modify",
                &a.id,
                json!({
                    "level": a.level, "patch": crate::audit::json_patch(&original_json, body),
                    "body_sha256": judged.sha256, "previous_sha256": previous, "comment": comment, "quorum_met": met,
                    "policy": {"action": judged.verdict.action, "code": judged.verdict.code, "risk": judged.verdict.risk},
                    "required": next.requirements(),
                }),
            )
        }
    };
    Ok((next, vec![event]))
}

/// Cancel a pending approval whose caller went away.
pub async fn cancel(latch: &Latch, id: &str, why: &str) {
    for _ in 0..40 {
        let a = match load(latch, id).await {
            Ok(a) => a,
            // The caller left while its call was still being stored: give the
            // insert a moment to commit, then cancel it.
            Err(GateError::NotFound) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => return,
        };
        if a.state != State::Pending {
            return;
        }
        let mut next = a.clone();
        next.version += 1;
        next.state = State::Cancelled;
        next.decided_at = Some(now_ms());
        next.outcome = Some(why.to_string());
        let event = Event::new("latch", "cancel", id, json!({"reason": why}));
        match commit(latch, &next, a.version, vec![event]).await {
            Ok(true) => {
                latch
                    .metrics
                    .outcomes
                    .with_label_values(&["cancelled"])
                    .inc();
                after_commit(latch, a.state, &next);
                return;
            }
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(approval = %id, error = %e, "cancelling failed");
                return;
            }
        }
    }
}

/// Apply deadlines that have passed. Called by the scheduler.
pub async fn expire_due(latch: &Latch) {
    let store = latch.store.clone();
    let now = now_ms();
    let due = match blocking(move || store.due_approvals(now)).await {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "reading due approvals failed");
            return;
        }
    };
    for a in due {
        let Some(spec) = a.decision.approval.clone() else {
            continue;
        };
        let mut next = a.clone();
        next.version += 1;
        let escalations = spec.escalate.len() as u32;
        let (event, outcome) = if spec.mode == Mode::Veto {
            next.state = State::Approved;
            next.decided_at = Some(now);
            next.outcome = Some("veto window passed without a rejection".into());
            (
                Event::new(
                    "latch",
                    "veto_window_passed",
                    &a.id,
                    json!({"level": a.level}),
                ),
                "approved",
            )
        } else if spec.on_timeout == OnTimeout::Escalate && a.level < escalations {
            let level = a.level + 1;
            let timeout = spec.escalate[level as usize - 1].timeout_s;
            next.level = level;
            next.deadline = now + (timeout as i64) * 1000;
            (
                Event::new(
                    "latch",
                    "escalate",
                    &a.id,
                    json!({"level": level, "require": spec.escalate[level as usize - 1].require, "deadline_ms": next.deadline}),
                ),
                "escalated",
            )
        } else if spec.on_timeout == OnTimeout::Allow && a.level == 0 {
            next.state = State::Approved;
            next.decided_at = Some(now);
            next.outcome = Some("allowed on timeout".into());
            (
                Event::new("latch", "timeout_allow", &a.id, json!({"level": a.level})),
                "approved",
            )
        } else {
            next.state = State::Expired;
            next.decided_at = Some(now);
            next.outcome = Some("no decision before the deadline".into());
            (
                Event::new("latch", "expire", &a.id, json!({"level": a.level})),
                "expired",
            )
        };
        match commit(latch, &next, a.version, vec![event]).await {
            Ok(true) => {
                latch.metrics.outcomes.with_label_values(&[outcome]).inc();
                after_commit(latch, a.state, &next);
            }
            Ok(false) => {} // a reviewer got there first
            Err(e) => tracing::error!(approval = %a.id, error = %e, "applying a deadline failed"),
        }
    }
}

/// Send an approved call upstream, once: the `approved → executing` change
/// is the single-use token; only its winner sends.
pub async fn execute(latch: &Latch, id: &str) {
    let Ok(a) = load(latch, id).await else { return };
    if a.state != State::Approved {
        return;
    }
    // The table is a working copy; the audit chain must vouch for the
    // approval of exactly these bytes before anything is sent.
    let store = latch.store.clone();
    let subject = id.to_string();
    let trail = blocking(move || store.audit_of(&subject)).await;
    let verdict = match &trail {
        Ok(records) => vouch::vouched(&a, records, latch.config.audit.key.as_ref()),
        Err(e) => Err(format!("the audit trail could not be read: {e}")),
    };
    if let Err(why) = verdict {
        tracing::error!(approval = %id, reason = %why, "approved call not vouched for by the audit chain; not sending");
        let mut refused = a.clone();
        refused.version += 1;
        refused.state = State::Failed;
        refused.outcome = Some(format!("not executed: {why}"));
        let event = Event::new("latch", "execute_refused", id, json!({"reason": why}));
        latch
            .metrics
            .executions
            .with_label_values(&["unvouched"])
            .inc();
        if let Ok(true) = commit(latch, &refused, a.version, vec![event]).await {
            after_commit(latch, State::Approved, &refused);
        }
        return;
    }
    let mut running = a.clone();
    running.version += 1;
    running.state = State::Executing;
    match commit(latch, &running, a.version, vec![]).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::error!(approval = %id, error = %e, "cannot mark approval executing; not sending");
            return;
        }
    }
    let result = send(latch, &running).await;
    let mut done = running.clone();
    done.version += 1;
    let event = match &result {
        Ok(r) => {
            done.state = State::Executed;
            done.result = Some(r.clone());
            latch.metrics.executions.with_label_values(&["ok"]).inc();
            Event::new(
                "latch",
                "execute",
                id,
                json!({"status": r.status, "body_sha256": running.body_sha256, "bytes": r.body.len()}),
            )
        }
        Err(e) => {
            done.state = State::Failed;
            done.outcome = Some(e.clone());
            latch.metrics.executions.with_label_values(&["error"]).inc();
            Event::new(
                "latch",
                "execute_failed",
                id,
                json!({"error": e, "body_sha256": running.body_sha256}),
            )
        }
    };
    match commit(latch, &done, running.version, vec![event]).await {
        Ok(_) => after_commit(latch, State::Executing, &done),
        Err(e) => {
            tracing::error!(approval = %id, error = %e, "recording the execution result failed")
        }
    }
}

async fn send(latch: &Latch, a: &Approval) -> Result<StoredResult, String> {
    use http_body_util::{BodyExt, Limited};
    let route = latch
        .routes
        .iter()
        .find(|r| r.config.name == a.route)
        .ok_or_else(|| format!("route {} no longer exists", a.route))?;
    let (suffix, query) = match a.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (a.target.as_str(), None),
    };
    let uri = route
        .upstream_uri(suffix, query)
        .map_err(|e| e.to_string())?;
    let mut headers = a.header_map();
    headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(a.body.len()),
    );
    let peer = a
        .peer
        .parse()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    crate::proxy::headers::upstream_request_headers(
        &mut headers,
        peer,
        a.tls,
        &route.config.inject_headers,
    );
    let mut req = http::Request::new(crate::server::full(a.body.clone()));
    *req.method_mut() = a
        .method
        .parse()
        .map_err(|_| format!("bad method {}", a.method))?;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    let resp = tokio::time::timeout(route.config.timeout, route.client.request(req))
        .await
        .map_err(|_| "upstream did not answer in time".to_string())?
        .map_err(|e| format!("upstream request failed: {e}"))?;
    let (mut parts, body) = resp.into_parts();
    crate::proxy::headers::strip_hop_by_hop(&mut parts.headers);
    let body = tokio::time::timeout(
        route.config.timeout,
        Limited::new(body, MAX_STORED_RESULT).collect(),
    )
    .await
    .map_err(|_| "upstream answer did not arrive in time".to_string())?
    .map_err(|e| format!("reading the upstream answer failed: {e}"))?
    .to_bytes();
    let headers = parts
        .headers
        .iter()
        .filter(|(k, _)| *k != http::header::CONTENT_LENGTH)
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.to_string(), v.to_string())))
        .collect();
    Ok(StoredResult {
        status: parts.status.as_u16(),
        headers,
        body: body.to_vec(),
    })
}

/// On start-up: interrupted executions fail (never re-sent: at most once),
/// approved-but-unsent ones execute, pending ones count.
pub async fn recover(latch: &Latch) -> anyhow::Result<()> {
    for state in [State::Executing, State::Approved, State::Pending] {
        let store = latch.store.clone();
        let list = blocking(move || store.approvals(Some(state), usize::MAX >> 1)).await?;
        for a in list {
            match state {
                State::Executing => {
                    let mut next = a.clone();
                    next.version += 1;
                    next.state = State::Failed;
                    next.outcome =
                        Some("Latch stopped while sending; not retried (at most once)".into());
                    let event = Event::new("latch", "execute_interrupted", &a.id, json!({}));
                    if commit(latch, &next, a.version, vec![event])
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?
                    {
                        latch
                            .metrics
                            .executions
                            .with_label_values(&["interrupted"])
                            .inc();
                    }
                }
                State::Approved => {
                    let latch = latch.clone();
                    tokio::spawn(async move { execute(&latch, &a.id).await });
                }
                _ => latch
                    .metrics
                    .approvals_pending
                    .with_label_values(&[a.risk().as_str()])
                    .inc(),
            }
        }
    }
    Ok(())
}

/// Apply deadlines every `period` until `stop`.
pub async fn scheduler(
    latch: Latch,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
        }
        expire_due(&latch).await;
    }
}
