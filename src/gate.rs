//! The approval engine: proposals held for humans, votes and quorum,
//! modify, break-glass, deadlines (deny, allow, escalate, veto), execution
//! of exactly the approved bytes at most once, and the wake-ups that
//! release held calls.
//!
//! [`Gate`] is the one handle to it; every way of deciding (dashboard, API,
//! CLI, deadlines) goes through [`Gate::decide`] and friends. The rules
//! themselves are pure ([`machine`]); this module loads, commits and wakes.
//! The store is the source of truth: every change is one synced transaction
//! holding the new state and its audit event, guarded by a version number,
//! so two reviewers (or a reviewer and a deadline) cannot both win.

pub mod clock;
mod execute;
pub mod grants;
pub mod machine;
pub mod model;
pub mod propose;
pub mod quorum;
pub mod rejudge;
pub mod vouch;
pub mod waiters;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::broadcast;

pub use clock::Clock;
pub use grants::LiveGrant;
pub use machine::{Act, GrantAsk};
use machine::{Rules, Transition};
use model::{Approval, Grant, State};
pub use propose::{Held, Proposal};

use crate::audit::chain::{AuditKey, Event};
use crate::audit::AuditLog;
use crate::config::GateConfig;
use crate::history::{ActionClass, History};
use crate::identity::{Directory, Principal};
use crate::policy::Engine;
use crate::store::{blocking, Store};
use crate::telemetry::Metrics;
use crate::upstream::Route;
use waiters::Waiters;

/// How often the queue-age gauge is refreshed from the store.
const QUEUE_MEASURE_EVERY: Duration = Duration::from_secs(5);
/// On a shared store, how often a replica settles what others left.
const SETTLE_EVERY: Duration = Duration::from_secs(5);
/// An approved call still unsent after this long lost its replica.
const APPROVED_UNSENT_MS: i64 = 5_000;
/// Beyond the slowest route's timeout, an execution still marked running
/// lost its replica.
const STALE_MARGIN_MS: i64 = 30_000;

/// Why the gate refused a request.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// No such approval.
    #[error("no such approval")]
    NotFound,
    /// No such grant.
    #[error("no such grant")]
    GrantNotFound,
    /// The grant is already revoked or expired.
    #[error("grant is already {0}")]
    GrantClosed(&'static str),
    /// A grant that cannot be given (too long, not grantable, bad narrowing).
    #[error("{0}")]
    BadGrant(String),
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
    /// The agent already has this many calls waiting.
    #[error("{0} calls of this agent are already waiting for approval")]
    TooManyPending(u64),
    /// An `Idempotency-Key` reused for a different call.
    #[error("this Idempotency-Key was used for a different call")]
    IdempotencyConflict,
    /// The allow/deny audit log could not be written.
    #[error("audit log unavailable")]
    AuditUnavailable,
    /// The store failed; nothing changed.
    #[error("store unavailable")]
    Store(#[source] anyhow::Error),
}

/// What a gate is built from.
pub struct Parts {
    /// Durable state.
    pub store: Arc<dyn Store>,
    /// Principals (roles, owners).
    pub directory: Arc<Directory>,
    /// `[gate]`.
    pub config: GateConfig,
    /// `[audit] key_env`: executions must be vouched for by MACs.
    pub audit_key: Option<AuditKey>,
    /// The allow/deny decision writer (for refusals the gate makes itself).
    pub audit: Arc<AuditLog>,
    /// Routes, to send approved calls.
    pub routes: Arc<[Route]>,
    /// The live policy, to judge modified calls.
    pub policy: Engine,
    /// Headers the policy may see (`[policy] input_headers`).
    pub input_headers: Arc<[http::HeaderName]>,
    /// Action history: verdicts teach it.
    pub history: Arc<History>,
    /// Metrics.
    pub metrics: Metrics,
    /// Where "now" comes from.
    pub clock: Clock,
    /// OpenTelemetry spans (executions join the agent's trace).
    pub tracer: crate::trace::Tracer,
}

/// Cheap-to-clone handle to the approval engine.
#[derive(Clone)]
pub struct Gate(Arc<Shared>);

/// What an approval releases when it is not a call to one of the routes:
/// a prompt-label move, later an MCP `tools/call`. The gate knows only the
/// approval's data; the executor, registered under a route name, acts on it
/// once and says what to store as the answer.
pub trait Executor: Send + Sync + 'static {
    /// Carry out approved `a` (called at most once per approval).
    fn execute<'a>(
        &'a self,
        a: &'a Approval,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<model::StoredResult, String>> + Send + 'a>,
    >;
}

struct Shared {
    parts: Parts,
    executors: std::sync::RwLock<std::collections::HashMap<String, Arc<dyn Executor>>>,
    waiters: Waiters,
    grants: grants::Grants,
    events: broadcast::Sender<String>,
}

/// How a wait for a verdict ended.
pub enum Waited {
    /// The approval reached a final state.
    Final(Box<Approval>),
    /// Still undecided when the hold time ran out.
    Pending,
}

impl Gate {
    /// A gate over `parts`.
    pub fn new(parts: Parts) -> Gate {
        Gate(Arc::new(Shared {
            parts,
            executors: Default::default(),
            waiters: Waiters::default(),
            grants: grants::Grants::default(),
            events: broadcast::channel(1024).0,
        }))
    }

    fn parts(&self) -> &Parts {
        &self.0.parts
    }

    /// Unix milliseconds by the gate's clock.
    pub fn now_ms(&self) -> i64 {
        self.parts().clock.now_ms()
    }

    /// Approval changes as JSON `{id, state, level}`, for live dashboards.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.0.events.subscribe()
    }

    /// Release approvals on route `route` through `e` instead of HTTP.
    pub fn register_executor(&self, route: &str, e: Arc<dyn Executor>) {
        let mut map = match self.0.executors.write() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.insert(route.to_string(), e);
    }

    fn executor(&self, route: &str) -> Option<Arc<dyn Executor>> {
        let map = match self.0.executors.read() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.get(route).cloned()
    }

    /// Longest grant an approver may give, seconds (0: grants are off).
    pub fn max_grant_s(&self) -> u64 {
        self.parts().config.max_grant_s
    }

    /// Approvals a held caller is waiting on right now.
    pub fn waiting(&self) -> usize {
        self.0.waiters.len()
    }

    /// One approval.
    pub async fn approval(&self, id: &str) -> Result<Approval, GateError> {
        let store = self.parts().store.clone();
        let id = id.to_string();
        blocking(move || store.approval(&id))
            .await
            .map_err(GateError::Store)?
            .ok_or(GateError::NotFound)
    }

    /// Commit `next` with `events` (and the grant it creates) if the
    /// approval is still at the version it was read at.
    async fn commit(
        &self,
        prev_version: i64,
        next: &Approval,
        events: Vec<Event>,
        grant: Option<Grant>,
    ) -> Result<bool, GateError> {
        let store = self.parts().store.clone();
        let next = next.clone();
        let started = std::time::Instant::now();
        let ok =
            blocking(move || store.update_approval(&next, prev_version, &events, grant.as_ref()))
                .await
                .map_err(GateError::Store)?;
        self.parts()
            .metrics
            .audit_write
            .observe(started.elapsed().as_secs_f64());
        Ok(ok)
    }

    /// Commit `t` over `before`; on success count it and run its effects.
    async fn settle(&self, before: &Approval, t: &Transition) -> Result<bool, GateError> {
        if !self
            .commit(before.version, &t.next, t.events(), t.grant.clone())
            .await?
        {
            return Ok(false);
        }
        if let Some(g) = &t.grant {
            self.granted(g);
        }
        self.observe_reviewer(before, t);
        let outcomes = &self.parts().metrics.outcomes;
        outcomes.with_label_values(&[t.outcome]).inc();
        if t.outcome == "modified" && t.next.state == State::Approved {
            outcomes.with_label_values(&["approved"]).inc();
        }
        if t.outcome == "overridden" {
            self.parts().metrics.overrides.inc();
            self.parts()
                .metrics
                .break_glass_by
                .with_label_values(&[t.event.actor.as_str()])
                .inc();
            tracing::warn!(approval = %t.next.id, actor = %t.event.actor, reason = ?t.next.outcome, "break-glass override");
        }
        self.after_commit(before.state, &t.next);
        Ok(true)
    }

    /// `latch_reviewer_decision_seconds`: how long a human looked before
    /// deciding (rubber-stamp signals).
    fn observe_reviewer(&self, before: &Approval, t: &Transition) {
        if !matches!(
            t.event.event.as_str(),
            "approve" | "reject" | "modify" | "override"
        ) {
            return;
        }
        let waited_ms = t.event.details["waited_ms"].as_i64().unwrap_or(0).max(0);
        self.parts()
            .metrics
            .reviewer_decision
            .with_label_values(&[t.event.actor.as_str(), before.risk().as_str()])
            .observe(waited_ms as f64 / 1000.0);
    }

    /// Tell live dashboards that an approval changed (nobody listening is fine).
    fn publish(&self, a: &Approval) {
        let _ = self
            .0
            .events
            .send(json!({"id": a.id, "state": a.state, "level": a.level}).to_string());
    }

    /// After a committed change: metrics, learning, wake-ups, execution.
    fn after_commit(&self, before: State, a: &Approval) {
        let p = self.parts();
        let class = ActionClass::from_parts(&a.class, &a.agent, &a.tool, &a.class_shape);
        if before == State::Pending && a.state != State::Pending {
            p.metrics
                .approvals_pending
                .with_label_values(&[a.risk().as_str()])
                .dec();
            let waited_ms = (a.decided_at.unwrap_or_else(|| self.now_ms()) - a.created_at).max(0);
            p.metrics
                .time_to_decision
                .observe(waited_ms as f64 / 1000.0);
            // Human verdicts feed `input.history` (approved/rejected, decision
            // time); break-glass, veto windows and timeouts are not verdicts.
            let human =
                a.state == State::Rejected || (a.state == State::Approved && a.outcome.is_none());
            if let (Some(class), true) = (&class, human) {
                p.history
                    .verdict(class, a.state == State::Approved, waited_ms as u64);
            }
        }
        if let (Some(class), State::Executed) = (&class, a.state) {
            p.history.executed(class, self.now_ms() / 1000);
        }
        self.0.waiters.wake(&a.id);
        self.publish(a);
        if a.state == State::Approved {
            let gate = self.clone();
            let id = a.id.clone();
            tokio::spawn(async move { gate.execute(&id).await });
        }
    }

    fn rules(&self) -> Rules<'_> {
        Rules {
            directory: &self.parts().directory,
            break_glass_roles: &self.parts().config.break_glass_roles,
            max_grant_s: self.parts().config.max_grant_s,
        }
    }

    /// Apply a reviewer's act. Retries on a concurrent change; returns the new state.
    pub async fn decide(
        &self,
        id: &str,
        actor: &Principal,
        act: Act,
    ) -> Result<Approval, GateError> {
        for _ in 0..8 {
            let a = self.approval(id).await?;
            if a.state != State::Pending {
                return Err(GateError::Closed(a.state.as_str()));
            }
            let rejudged = match &act {
                Act::Modify { body, .. } => {
                    // Refuse an ineligible modifier before spending an evaluation.
                    machine::check_voter(&self.parts().directory, &a, actor)?;
                    Some(self.rejudge(&a, body).await?)
                }
                _ => None,
            };
            let args = match &act {
                Act::Approve {
                    grant: Some(ask), ..
                } if !ask.class_args.is_empty() => Some(self.approval_args(&a)?),
                _ => None,
            };
            let now = self.now_ms();
            let t = machine::apply(&a, actor, &act, &self.rules(), rejudged, args.as_ref(), now)?;
            if self.settle(&a, &t).await? {
                return Ok(t.next);
            }
        }
        Err(GateError::Store(anyhow::anyhow!(
            "approval {id} kept changing; try again"
        )))
    }

    /// Cancel a pending approval whose caller went away.
    pub async fn cancel(&self, id: &str, why: &str) {
        for _ in 0..40 {
            let a = match self.approval(id).await {
                Ok(a) => a,
                // The caller left while its call was still being stored: give
                // the insert a moment to commit, then cancel it.
                Err(GateError::NotFound) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(_) => return,
            };
            let Some(t) = machine::cancel(&a, why, self.now_ms()) else {
                return;
            };
            match self.settle(&a, &t).await {
                Ok(true) => return,
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(approval = %id, error = %e, "cancelling failed");
                    return;
                }
            }
        }
    }

    /// Publish the age of the oldest pending approval per risk (queue-age
    /// and SLA alerts read it).
    pub async fn measure_queue(&self) {
        let store = self.parts().store.clone();
        let oldest = match blocking(move || store.oldest_pending()).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "reading the oldest pending approvals failed");
                return;
            }
        };
        let now = self.now_ms();
        let gauge = &self.parts().metrics.oldest_pending;
        for risk in ["low", "medium", "high", "critical"] {
            let age = oldest
                .iter()
                .find(|(r, _)| r == risk)
                .map_or(0.0, |(_, at)| (now - at).max(0) as f64 / 1000.0);
            gauge.with_label_values(&[risk]).set(age);
        }
    }

    /// Apply deadlines that have passed.
    pub async fn expire_due(&self) {
        self.prune_grants();
        let store = self.parts().store.clone();
        let now = self.now_ms();
        let due = match blocking(move || store.due_approvals(now)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "reading due approvals failed");
                return;
            }
        };
        for a in due {
            let Some(t) = machine::on_deadline(&a, now) else {
                continue;
            };
            // A lost race means a reviewer got there first.
            if let Err(e) = self.settle(&a, &t).await {
                tracing::error!(approval = %a.id, error = %e, "applying a deadline failed");
            }
        }
    }

    /// Apply deadlines every `period` until `stop`.
    pub async fn run_deadlines(self, period: Duration, stop: tokio::sync::watch::Receiver<bool>) {
        let mut ticker = crate::ticker::Ticker::new(period, stop);
        let mut measured = std::time::Instant::now() - QUEUE_MEASURE_EVERY;
        let mut settled = std::time::Instant::now();
        let shared = self.parts().store.shared();
        while ticker.next().await {
            self.expire_due().await;
            if measured.elapsed() >= QUEUE_MEASURE_EVERY {
                measured = std::time::Instant::now();
                self.measure_queue().await;
            }
            // Replicas come and go: what one left unfinished, another settles.
            if shared && settled.elapsed() >= SETTLE_EVERY {
                settled = std::time::Instant::now();
                if let Err(e) = self.settle_unfinished().await {
                    tracing::warn!(error = %e, "settling unfinished approvals failed");
                }
            }
        }
    }

    /// Another replica changed approval `id` or grant `grant:<id>` (`None`:
    /// perhaps anything): whoever waits on the approval reads it again; the
    /// grant is read again (a revocation there ends it here).
    pub async fn changed_elsewhere(&self, id: Option<String>) {
        match id.as_deref().map(|i| (i, i.strip_prefix("grant:"))) {
            Some((_, Some(grant))) => self.reload_grant(grant).await,
            Some((approval, None)) => {
                self.0.waiters.wake(approval);
                // Dashboards and the notifier here hear of it too.
                if let Ok(a) = self.approval(approval).await {
                    self.publish(&a);
                }
            }
            None => {
                self.0.waiters.wake_all();
                if let Err(e) = self.load_grants().await {
                    tracing::warn!(error = %e, "reloading grants failed");
                }
            }
        }
    }

    /// On start-up: interrupted executions fail (never re-sent: at most
    /// once), approved-but-unsent ones execute, pending ones count.
    pub async fn recover(&self) -> anyhow::Result<()> {
        self.load_grants()
            .await
            .map_err(|e| anyhow::anyhow!("loading grants: {e}"))?;
        self.settle_unfinished().await?;
        let store = self.parts().store.clone();
        let pending =
            blocking(move || store.approvals(Some(State::Pending), usize::MAX >> 1)).await?;
        for a in pending {
            self.parts()
                .metrics
                .approvals_pending
                .with_label_values(&[a.risk().as_str()])
                .inc();
        }
        Ok(())
    }

    /// Approvals a process left unfinished: an execution interrupted (the
    /// call is never re-sent: at most once) fails; an approved call nobody
    /// sent is sent. On a store other replicas share, only what has been
    /// left long enough that its replica must be gone: an execution older
    /// than the slowest route's timeout, an approval older than a few
    /// seconds (its own replica sends it at once).
    pub async fn settle_unfinished(&self) -> anyhow::Result<()> {
        let shared = self.parts().store.shared();
        let now = self.now_ms();
        let slowest = self
            .parts()
            .routes
            .iter()
            .map(|r| r.config.timeout.as_millis() as i64)
            .max()
            .unwrap_or(0);
        for state in [State::Executing, State::Approved] {
            let store = self.parts().store.clone();
            let list = blocking(move || store.approvals(Some(state), usize::MAX >> 1)).await?;
            for a in list {
                let age = now - a.decided_at.unwrap_or(a.created_at);
                match state {
                    State::Executing if !shared || age > slowest + STALE_MARGIN_MS => {
                        let why = "Latch stopped while sending; not retried (at most once)";
                        let next = a.close(State::Failed, Some(why.into()), now);
                        let event = Event::new("latch", "execute_interrupted", &a.id, json!({}));
                        if self
                            .commit(a.version, &next, vec![event], None)
                            .await
                            .map_err(|e| anyhow::anyhow!("{e}"))?
                        {
                            self.parts()
                                .metrics
                                .executions
                                .with_label_values(&["interrupted"])
                                .inc();
                        }
                    }
                    State::Approved if !shared || age > APPROVED_UNSENT_MS => {
                        let gate = self.clone();
                        tokio::spawn(async move { gate.execute(&a.id).await });
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}
