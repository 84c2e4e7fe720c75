//! The approval record and its states.

use serde::{Deserialize, Serialize};

use crate::policy::decision::Decision;
use crate::policy::decision::{Requirement, Risk};

/// Where an approval is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for humans (at `level`).
    Pending,
    /// Quorum met (or overridden, or allowed on timeout); about to execute.
    Approved,
    /// Latch is sending the call upstream.
    Executing,
    /// Sent once; the upstream answer is stored.
    Executed,
    /// Someone eligible rejected it.
    Rejected,
    /// Its deadline passed.
    Expired,
    /// The waiting caller went away.
    Cancelled,
    /// Execution failed or was interrupted; never retried.
    Failed,
}

impl State {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Executing => "executing",
            State::Executed => "executed",
            State::Rejected => "rejected",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            State::Failed => "failed",
        }
    }

    /// Parse a state name.
    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "pending" => State::Pending,
            "approved" => State::Approved,
            "executing" => State::Executing,
            "executed" => State::Executed,
            "rejected" => State::Rejected,
            "expired" => State::Expired,
            "cancelled" => State::Cancelled,
            "failed" => State::Failed,
            _ => return None,
        })
    }

    /// No further change is possible.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Executed | State::Rejected | State::Expired | State::Cancelled | State::Failed
        )
    }
}

/// A vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VoteKind {
    /// Approve the current body.
    Approve,
    /// Reject.
    Reject,
}

/// One human's vote on one version of the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// Principal id.
    pub principal: String,
    /// Approve or reject.
    pub kind: VoteKind,
    /// Approval level the vote was cast at.
    pub level: u32,
    /// The body digest the vote applies to (a modify voids older approvals).
    pub body_sha256: String,
    /// Optional comment or the rejection reason.
    pub comment: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
    /// The same for this agent's calls of this class, for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<GrantTerms>,
}

/// What a reviewer grants with an approval: calls of the same class from the
/// same agent, for `ttl_s`, with the named arguments fixed to the approved
/// call's values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantTerms {
    /// How long the grant lives, seconds.
    pub ttl_s: u64,
    /// Arguments whose values must match exactly (name → approved value).
    #[serde(default)]
    pub narrow: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A time-boxed grant: while it lives, calls the policy would gate at no
/// higher risk, of the same class from the same agent on the same route,
/// are allowed without a human (`code: "granted"`). It never turns a deny
/// into an allow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    /// Identifier.
    pub id: String,
    /// The approval it was granted with.
    pub approval: String,
    /// The agent it covers.
    pub agent: String,
    /// Route.
    pub route: String,
    /// The decoded path it covers (the class does not include the path).
    pub path: String,
    /// Tool.
    pub tool: String,
    /// Action class fingerprint (agent, tool, method, argument shape).
    pub class: String,
    /// The class's canonical shape.
    pub shape: String,
    /// Arguments whose values must match exactly.
    #[serde(default)]
    pub narrow: std::collections::BTreeMap<String, serde_json::Value>,
    /// Highest risk it covers (the approved call's).
    pub risk: Risk,
    /// Who granted it (every approver that made the quorum).
    pub granted_by: Vec<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds; it allows nothing from then on.
    pub expires_at: i64,
    /// Set once revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// Who revoked a grant, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Principal id.
    pub by: String,
    /// Unix milliseconds.
    pub at: i64,
    /// Optional reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Grant {
    /// Whether it can allow anything at `now` (Unix milliseconds).
    pub fn live(&self, now: i64) -> bool {
        self.revoked.is_none() && now < self.expires_at
    }

    /// `live`, `expired` or `revoked`.
    pub fn status(&self, now: i64) -> &'static str {
        match (&self.revoked, now < self.expires_at) {
            (Some(_), _) => "revoked",
            (None, true) => "live",
            (None, false) => "expired",
        }
    }
}

/// The stored upstream answer of an executed approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResult {
    /// HTTP status.
    pub status: u16,
    /// Response headers (hop-by-hop removed).
    pub headers: Vec<(String, String)>,
    /// Response body.
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// A proposed call held for approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Identifier (also the decision id).
    pub id: String,
    /// State.
    pub state: State,
    /// Requesting agent.
    pub agent: String,
    /// Route name.
    pub route: String,
    /// Tool.
    pub tool: String,
    /// HTTP method.
    pub method: String,
    /// Decoded path, for reviewers.
    pub path: String,
    /// Raw path suffix after the route prefix, plus `?query`: what is appended
    /// to the upstream base URL.
    pub target: String,
    /// Headers to forward (no credentials; injected ones are added at execution).
    pub headers: Vec<(String, String)>,
    /// The bytes that will be sent.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// SHA-256 of `body`; approvals are bound to it.
    pub body_sha256: String,
    /// The body as the agent proposed it, when a reviewer modified it.
    #[serde(skip)]
    pub original_body: Option<Vec<u8>>,
    /// The policy decision that gated the call.
    pub decision: Decision,
    /// The agent's reasoning (`Latch-Reason`).
    pub reason: Option<String>,
    /// `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// Client address and whether it used TLS (for `Forwarded` at execution).
    pub peer: String,
    /// Client used TLS.
    pub tls: bool,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds of the current level's deadline.
    pub deadline: i64,
    /// Current approval level (0 = `approval.require`, n = `escalate[n-1]`).
    pub level: u32,
    /// Votes, all levels.
    pub votes: Vec<Vote>,
    /// Who closed it and why (rejection reason, override reason, error).
    pub outcome: Option<String>,
    /// Unix milliseconds when it left `pending`.
    pub decided_at: Option<i64>,
    /// Upstream answer once executed.
    pub result: Option<StoredResult>,
    /// Optimistic-concurrency version, bumped by every update.
    pub version: i64,
    /// Action class fingerprint (agent, tool, method, argument shape).
    #[serde(default)]
    pub class: String,
    /// The class's canonical shape, for learning.
    #[serde(default)]
    pub class_shape: String,
    /// The grant its approval created, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    /// Principals who may not decide it besides the agent and its owners
    /// (e.g. the author of a prompt version up for promotion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded: Vec<String>,
}

impl Approval {
    /// The next version of this approval: every change starts here, so the
    /// store's version check makes concurrent changes lose, not merge.
    pub fn next_version(&self) -> Approval {
        let mut next = self.clone();
        next.version += 1;
        next
    }

    /// The next version, closed in `state` with `outcome` (who closed it and
    /// why). `decided_at` records when it first left `pending`.
    pub fn close(&self, state: State, outcome: Option<String>, now: i64) -> Approval {
        let mut next = self.next_version();
        next.mark(state, outcome, now);
        next
    }

    /// Put this version in `state` (see [`Approval::close`]).
    pub fn mark(&mut self, state: State, outcome: Option<String>, now: i64) {
        self.state = state;
        if outcome.is_some() {
            self.outcome = outcome;
        }
        self.decided_at.get_or_insert(now);
    }

    /// The stored request headers as a header map (unparseable ones, which
    /// Latch never stores, are skipped).
    pub fn header_map(&self) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in &self.headers {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(v),
            ) {
                map.append(k, v);
            }
        }
        map
    }

    /// Requirements of the current level.
    pub fn requirements(&self) -> &[Requirement] {
        let Some(spec) = &self.decision.approval else {
            return &[];
        };
        match self.level {
            0 => &spec.require,
            n => spec
                .escalate
                .get(n as usize - 1)
                .map(|e| e.require.as_slice())
                .unwrap_or(&[]),
        }
    }

    /// When the current level began waiting for humans (Unix milliseconds).
    pub fn level_started(&self) -> i64 {
        let spec = self.decision.approval.as_ref();
        match (self.level, spec) {
            (0, _) | (_, None) => self.created_at,
            (n, Some(spec)) => spec
                .escalate
                .get(n as usize - 1)
                .map(|e| self.deadline - (e.timeout_s as i64) * 1000)
                .unwrap_or(self.created_at),
        }
    }

    /// Risk of the gated call.
    pub fn risk(&self) -> Risk {
        self.decision.risk
    }
}
