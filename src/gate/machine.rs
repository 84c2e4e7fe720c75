//! The approval state machine, pure: given an approval, who acts, what they
//! ask and the time, say what the next version is and what the audit trail
//! records — or why not. No store, no clock, no I/O; [`super::Gate`] loads,
//! commits and wakes.

use serde_json::json;

use std::collections::{BTreeMap, HashSet};

use super::model::{Approval, Grant, GrantTerms, State, Vote, VoteKind};
use super::rejudge::Rejudged;
use super::{quorum, GateError};
use crate::audit::chain::Event;
use crate::identity::{Directory, Principal};
use crate::policy::decision::{Mode, OnTimeout};

/// What a reviewer asks for.
#[derive(Debug, Clone)]
pub enum Act {
    /// Approve the current body.
    Approve {
        /// Optional comment.
        comment: Option<String>,
        /// Also allow the same class from the same agent for a while.
        grant: Option<GrantAsk>,
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

/// What an approver asks to grant along with an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantAsk {
    /// Seconds the grant lives (at most `[gate] max_grant_s`).
    pub ttl_s: u64,
    /// Arguments whose values later calls must repeat exactly.
    pub class_args: Vec<String>,
}

/// Who may do what, besides the approval itself.
pub struct Rules<'a> {
    /// Principals: roles (for quorum) and owners (who may not decide).
    pub directory: &'a Directory,
    /// Roles that may break glass.
    pub break_glass_roles: &'a [String],
    /// Longest grant, seconds (0: grants are off).
    pub max_grant_s: u64,
}

/// One committed change: the next version and its audit event.
#[derive(Debug)]
pub struct Transition {
    /// The approval's next version.
    pub next: Approval,
    /// What the audit trail records, in the same transaction.
    pub event: Event,
    /// The `latch_approval_outcomes_total` label.
    pub outcome: &'static str,
    /// A grant the approval creates, in the same transaction.
    pub grant: Option<Grant>,
}

impl Transition {
    /// A change that creates no grant.
    pub fn new(next: Approval, event: Event, outcome: &'static str) -> Transition {
        Transition {
            next,
            event,
            outcome,
            grant: None,
        }
    }

    /// The audit events to commit: the change, then the grant it creates.
    pub fn events(&self) -> Vec<Event> {
        let mut events = vec![self.event.clone()];
        if let Some(g) = &self.grant {
            events.push(Event::new(
                &self.event.actor,
                "grant",
                &g.id,
                json!({
                    "approval": g.approval, "agent": g.agent, "route": g.route, "path": g.path, "tool": g.tool,
                    "class": g.class, "shape": g.shape, "narrow": g.narrow, "risk": g.risk,
                    "granted_by": g.granted_by, "expires_at_ms": g.expires_at,
                }),
            ));
        }
        events
    }
}

/// Apply a reviewer's act to `a` at `now`. A modify must come with its
/// body already judged by the policy (`rejudged`); a grant that narrows
/// by argument values needs the approved call's arguments (`args`).
pub fn apply(
    a: &Approval,
    actor: &Principal,
    act: &Act,
    rules: &Rules<'_>,
    rejudged: Option<Rejudged>,
    args: Option<&serde_json::Value>,
    now: i64,
) -> Result<Transition, GateError> {
    if a.state != State::Pending {
        return Err(GateError::Closed(a.state.as_str()));
    }
    let vote = |kind, sha: &str, comment: Option<String>| Vote {
        principal: actor.id.clone(),
        kind,
        level: a.level,
        body_sha256: sha.to_string(),
        comment,
        at: now,
        grant: None,
    };
    let waited_ms = (now - a.level_started()).max(0);
    let event = |name: &str, details| Event::new(&actor.id, name, &a.id, details);
    match act {
        Act::Override { reason } => {
            if !rules.break_glass_roles.iter().any(|r| actor.has_role(r)) {
                return Err(GateError::Forbidden(format!(
                    "{} holds no break-glass role",
                    actor.id
                )));
            }
            if reason.trim().is_empty() {
                return Err(GateError::Invalid("override needs a reason".into()));
            }
            check_independent(rules.directory, a, actor)?;
            let why = format!("break-glass override by {}: {reason}", actor.id);
            Ok(Transition::new(
                a.close(State::Approved, Some(why), now),
                event(
                    "override",
                    json!({"reason": reason, "break_glass": true, "level": a.level, "body_sha256": a.body_sha256,
                           "risk": a.risk(), "waited_ms": waited_ms}),
                ),
                "overridden",
            ))
        }
        Act::Approve { comment, grant } => {
            check_voter(rules.directory, a, actor)?;
            let terms = match grant {
                Some(ask) => Some(grant_terms(a, ask, rules, args)?),
                None => None,
            };
            let already = a.votes.iter().any(|v| {
                v.principal == actor.id
                    && v.kind == VoteKind::Approve
                    && v.level == a.level
                    && v.body_sha256 == a.body_sha256
            });
            if already {
                return Err(GateError::AlreadyVoted(actor.id.clone()));
            }
            let mut next = a.next_version();
            let mut v = vote(VoteKind::Approve, &a.body_sha256, comment.clone());
            v.grant = terms.clone();
            next.votes.push(v);
            let met = quorum_met(rules.directory, &next);
            if met {
                next.mark(State::Approved, None, now);
            }
            let granted = met.then(|| granted(&next, now)).flatten();
            next.grant_id = granted.as_ref().map(|g| g.id.clone());
            Ok(Transition {
                event: event(
                    "approve",
                    json!({"level": a.level, "body_sha256": a.body_sha256, "comment": comment, "quorum_met": met,
                           "risk": a.risk(), "waited_ms": waited_ms, "grant": terms,
                           "grant_id": granted.as_ref().map(|g| g.id.clone())}),
                ),
                next,
                outcome: if met { "approved" } else { "vote" },
                grant: granted,
            })
        }
        Act::Reject { reason, code } => {
            check_voter(rules.directory, a, actor)?;
            if reason.trim().is_empty() {
                return Err(GateError::Invalid("reject needs a reason".into()));
            }
            let mut next = a.close(State::Rejected, Some(reason.clone()), now);
            next.votes
                .push(vote(VoteKind::Reject, &a.body_sha256, Some(reason.clone())));
            if let Some(c) = code {
                next.decision.code = c.clone();
            }
            Ok(Transition::new(
                next,
                event(
                    "reject",
                    json!({"level": a.level, "reason": reason, "code": code, "risk": a.risk(), "waited_ms": waited_ms}),
                ),
                "rejected",
            ))
        }
        Act::Modify { body, comment } => {
            check_voter(rules.directory, a, actor)?;
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
            let mut next = a.next_version();
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
            let met = quorum_met(rules.directory, &next);
            if met {
                next.mark(State::Approved, None, now);
            }
            let patch = crate::audit::chain::json_patch(&original_json, body);
            let event = event(
                "modify",
                json!({
                    "level": a.level, "patch": patch,
                    "body_sha256": judged.sha256, "previous_sha256": a.body_sha256, "comment": comment, "quorum_met": met,
                    "policy": {"action": judged.verdict.action, "code": judged.verdict.code, "risk": judged.verdict.risk},
                    "required": next.requirements(), "risk": a.risk(), "waited_ms": waited_ms,
                }),
            );
            Ok(Transition::new(next, event, "modified"))
        }
    }
}

/// What a passed deadline does to a pending approval: a veto window
/// approves, an escalation moves to the next level, `on_timeout = allow`
/// approves (level 0 only), anything else expires.
pub fn on_deadline(a: &Approval, now: i64) -> Option<Transition> {
    if a.state != State::Pending || a.deadline > now {
        return None;
    }
    let spec = a.decision.approval.as_ref()?;
    let latch = |name: &str, details| Event::new("latch", name, &a.id, details);
    let level = json!({"level": a.level});
    let escalations = spec.escalate.len() as u32;
    Some(if spec.mode == Mode::Veto {
        Transition::new(
            a.close(
                State::Approved,
                Some("veto window passed without a rejection".into()),
                now,
            ),
            latch("veto_window_passed", level),
            "approved",
        )
    } else if spec.on_timeout == OnTimeout::Escalate && a.level < escalations {
        let up = &spec.escalate[a.level as usize];
        let mut next = a.next_version();
        next.level = a.level + 1;
        next.deadline = now + (up.timeout_s as i64) * 1000;
        let event = latch(
            "escalate",
            json!({"level": next.level, "require": up.require, "deadline_ms": next.deadline}),
        );
        Transition::new(next, event, "escalated")
    } else if spec.on_timeout == OnTimeout::Allow && a.level == 0 {
        Transition::new(
            a.close(State::Approved, Some("allowed on timeout".into()), now),
            latch("timeout_allow", level),
            "approved",
        )
    } else {
        Transition::new(
            a.close(
                State::Expired,
                Some("no decision before the deadline".into()),
                now,
            ),
            latch("expire", level),
            "expired",
        )
    })
}

/// A pending approval whose caller went away.
pub fn cancel(a: &Approval, why: &str, now: i64) -> Option<Transition> {
    (a.state == State::Pending).then(|| {
        Transition::new(
            a.close(State::Cancelled, Some(why.to_string()), now),
            Event::new("latch", "cancel", &a.id, json!({"reason": why})),
            "cancelled",
        )
    })
}

/// Whether `actor` may vote on or modify `a` now: an independent human
/// (see `check_independent`) holding a role the current level requires.
pub fn check_voter(
    directory: &Directory,
    a: &Approval,
    actor: &Principal,
) -> Result<(), GateError> {
    check_independent(directory, a, actor)?;
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
fn check_independent(
    directory: &Directory,
    a: &Approval,
    actor: &Principal,
) -> Result<(), GateError> {
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
    if a.excluded.contains(&actor.id) {
        return Err(GateError::Forbidden(format!(
            "{} may not decide this request: they wrote what it releases",
            actor.id
        )));
    }
    let owns = directory
        .get(&a.agent)
        .is_some_and(|p| p.owners.contains(&actor.id));
    if owns {
        return Err(GateError::Forbidden(format!(
            "{} owns agent {} and may not decide its calls",
            actor.id, a.agent
        )));
    }
    Ok(())
}

/// The approvals of the current body at the current level, each person once.
fn counting_votes(a: &Approval) -> impl Iterator<Item = &Vote> {
    let mut seen = HashSet::new();
    a.votes
        .iter()
        .filter(|v| {
            v.kind == VoteKind::Approve && v.level == a.level && v.body_sha256 == a.body_sha256
        })
        .filter(move |v| seen.insert(v.principal.as_str()))
}

/// Whether the current level's requirements are met by approvals of the
/// current body, each person counted once.
fn quorum_met(directory: &Directory, a: &Approval) -> bool {
    let approvers: Vec<Vec<String>> = counting_votes(a)
        .filter_map(|v| directory.get(&v.principal).map(|p| p.roles.clone()))
        .collect();
    quorum::met(a.requirements(), &approvers)
}

/// Check what an approver asks to grant and fix the narrowed values from
/// the approved call's arguments.
fn grant_terms(
    a: &Approval,
    ask: &GrantAsk,
    rules: &Rules<'_>,
    args: Option<&serde_json::Value>,
) -> Result<GrantTerms, GateError> {
    let invalid = |m: String| Err(GateError::BadGrant(m));
    if rules.max_grant_s == 0 {
        return invalid("grants are turned off ([gate] max_grant_s = 0)".into());
    }
    if ask.ttl_s == 0 || ask.ttl_s > rules.max_grant_s {
        return invalid(format!(
            "grant.ttl_s must be 1 to {} seconds ([gate] max_grant_s), got {}",
            rules.max_grant_s, ask.ttl_s
        ));
    }
    if a.decision.approval.as_ref().is_some_and(|s| !s.grantable) {
        return invalid(
            "the policy marked this call not grantable: each such call needs its own approval"
                .into(),
        );
    }
    if a.original_body.is_some() {
        return invalid(
            "a modified call cannot be granted: the agent's class is not the one approved".into(),
        );
    }
    if a.class.is_empty() {
        return invalid("this approval has no action class to grant".into());
    }
    let mut narrow = BTreeMap::new();
    for name in &ask.class_args {
        let Some(v) = args.and_then(|args| args.get(name)) else {
            return invalid(format!(
                "the approved call has no argument `{name}` to narrow the grant to"
            ));
        };
        narrow.insert(name.clone(), v.clone());
    }
    Ok(GrantTerms {
        ttl_s: ask.ttl_s,
        narrow,
    })
}

/// The grant a just-approved `a` creates: only if every approval that made
/// the quorum asked for one; the shortest time and every narrowing asked.
fn granted(a: &Approval, now: i64) -> Option<Grant> {
    let mut ttl_s = u64::MAX;
    let mut narrow = BTreeMap::new();
    let mut granted_by = Vec::new();
    for v in counting_votes(a) {
        let terms = v.grant.as_ref()?;
        ttl_s = ttl_s.min(terms.ttl_s);
        narrow.extend(terms.narrow.clone());
        granted_by.push(v.principal.clone());
    }
    if granted_by.is_empty() {
        return None;
    }
    Some(Grant {
        id: format!("grant-{}", a.id),
        approval: a.id.clone(),
        agent: a.agent.clone(),
        route: a.route.clone(),
        path: a.path.clone(),
        tool: a.tool.clone(),
        class: a.class.clone(),
        shape: a.class_shape.clone(),
        narrow,
        risk: a.risk(),
        granted_by,
        created_at: now,
        expires_at: now.saturating_add((ttl_s as i64).saturating_mul(1000)),
        revoked: None,
    })
}

#[cfg(test)]
mod tests;
