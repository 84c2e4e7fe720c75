//! Which channels hear about an approval event, and what each is told.
//! Pure: an audit record, the approval it is about and the channel kinds
//! in, messages out.
//!
//! A channel is *reached* at level `n` when it is a default channel, named
//! by the policy's `approval.notify`, or by `escalate[i].notify` for a
//! level up to `n`. Reached channels hear everything that follows.

use serde_json::{json, Value};

use crate::audit::chain::Record;
use crate::gate::model::Approval;
use crate::store::notify::NewDelivery;

/// First notice of a call to a channel (Slack post, e-mail, PagerDuty
/// trigger, webhook event).
pub const REQUESTED: &str = "requested";
/// A channel that already knew hears the approval moved up a level.
pub const ESCALATED: &str = "escalated";
/// A vote that did not yet make the quorum.
pub const VOTE: &str = "vote";
/// Approved, rejected, modified, overridden, expired or cancelled.
pub const DECIDED: &str = "decided";
/// The approved call ran (or failed to).
pub const EXECUTED: &str = "executed";
/// A break-glass override, announced to the default channels.
pub const BREAK_GLASS: &str = "break_glass";

/// Whether a channel of `kind` (`slack`, `email`, …) is told about `message`.
pub fn wants(kind: &str, message: &str) -> bool {
    match kind {
        "slack" => true,
        "email" => matches!(message, REQUESTED | BREAK_GLASS),
        "pagerduty" => matches!(message, REQUESTED | DECIDED),
        _ => message != VOTE,
    }
}

/// Channel names reached at `level`, in order, without repeats.
pub fn reached(default: &[String], a: &Approval, level: u32) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut add = |names: &[String]| {
        for n in names {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
    };
    add(default);
    if let Some(spec) = &a.decision.approval {
        add(&spec.notify);
        for e in spec.escalate.iter().take(level as usize) {
            add(&e.notify);
        }
    }
    out
}

/// What the audit event `event` means for reviewers: the webhook event
/// type and the outcome, if it closed the approval.
fn meaning(event: &str, details: &Value) -> Option<(&'static str, Option<&'static str>)> {
    let met = details.get("quorum_met").and_then(Value::as_bool) == Some(true);
    Some(match event {
        "gate" => ("approval.requested", None),
        "escalate" => ("approval.escalated", None),
        "approve" if met => ("approval.decided", Some("approved")),
        "modify" if met => ("approval.decided", Some("modified")),
        "approve" | "modify" => ("approval.voted", None),
        "reject" => ("approval.decided", Some("rejected")),
        "override" => ("approval.decided", Some("overridden")),
        "veto_window_passed" | "timeout_allow" => ("approval.decided", Some("approved")),
        "expire" => ("approval.decided", Some("expired")),
        "cancel" => ("approval.decided", Some("cancelled")),
        "execute" | "execute_failed" | "execute_refused" | "execute_interrupted" => {
            ("approval.executed", None)
        }
        _ => return None,
    })
}

/// The messages `r` (an audit record about approval `a`) produces.
/// `kind_of` gives a channel's kind; unknown names are skipped and
/// returned in the second list.
pub fn fan_out(
    default: &[String],
    kind_of: &dyn Fn(&str) -> Option<&'static str>,
    dashboard_url: &str,
    r: &Record,
    a: &Approval,
) -> (Vec<NewDelivery>, Vec<String>) {
    let mut out = Vec::new();
    let mut unknown = Vec::new();
    let Some((event_type, outcome)) = meaning(&r.event, &r.details) else {
        return (out, unknown);
    };
    let created_at = chrono::DateTime::parse_from_rfc3339(&r.ts)
        .map(|t| t.timestamp_millis())
        .unwrap_or(0);
    let mut push = |channel: &str, message: &'static str, event_type: &str| {
        let Some(kind) = kind_of(channel) else {
            if !unknown.iter().any(|u| u == channel) {
                unknown.push(channel.to_string());
            }
            return;
        };
        if wants(kind, message) {
            out.push(NewDelivery {
                approval: a.id.clone(),
                channel: channel.to_string(),
                kind: message.to_string(),
                payload: payload(event_type, r, a, outcome, dashboard_url),
                created_at,
            });
        }
    };
    match r.event.as_str() {
        "gate" => {
            for c in reached(default, a, 0) {
                push(&c, REQUESTED, event_type);
            }
        }
        "escalate" => {
            let level = r.details.get("level").and_then(Value::as_u64).unwrap_or(1) as u32;
            let before = reached(default, a, level.saturating_sub(1));
            for c in reached(default, a, level) {
                let message = if before.contains(&c) {
                    ESCALATED
                } else {
                    REQUESTED
                };
                push(&c, message, event_type);
            }
        }
        _ => {
            let message = match event_type {
                "approval.voted" => VOTE,
                "approval.executed" => EXECUTED,
                _ => DECIDED,
            };
            for c in reached(default, a, a.level) {
                push(&c, message, event_type);
            }
            if r.event == "override" {
                for c in default {
                    push(c, BREAK_GLASS, "break_glass.used");
                }
            }
        }
    }
    (out, unknown)
}

/// The event as a webhook receiver sees it (Standard Webhooks' `type`,
/// `timestamp`, `data`).
fn payload(
    event_type: &str,
    r: &Record,
    a: &Approval,
    outcome: Option<&str>,
    dashboard_url: &str,
) -> Value {
    let d = &r.details;
    let mut data = json!({
        "approval_id": a.id,
        "agent": a.agent,
        "route": a.route,
        "tool": a.tool,
        "method": a.method,
        "path": a.path,
        "risk": a.decision.risk,
        "code": a.decision.code,
        "reasons": a.decision.reasons,
        "agent_reason": a.reason,
        "url": format!("{dashboard_url}/#approval={}", a.id),
        "actor": r.actor,
        "audit_seq": r.seq,
    });
    if let Some(o) = outcome {
        data["outcome"] = json!(o);
    }
    for key in [
        "level",
        "reason",
        "deadline_ms",
        "require",
        "status",
        "error",
    ] {
        if let Some(v) = d.get(key) {
            data[key] = v.clone();
        }
    }
    if event_type == "approval.executed" {
        data["executed"] = json!(r.event == "execute");
    }
    json!({"type": event_type, "timestamp": r.ts, "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::decision::{ApprovalSpec, Escalation, OnTimeout};

    fn approval(notify: &[&str], escalate: &[&str]) -> Approval {
        let mut a: Approval = serde_json::from_value(json!({
            "id": "a1", "state": "pending", "agent": "bot", "route": "mail", "tool": "send_email",
            "method": "POST", "path": "/mail", "target": "", "headers": [], "body": [],
            "body_sha256": "x", "decision": {"action": "gate", "risk": "high", "code": "c"},
            "peer": "", "tls": false, "created_at": 0, "deadline": 0, "level": 0, "votes": [],
            "version": 1, "class": "", "class_shape": ""
        }))
        .unwrap();
        a.decision.approval = Some(ApprovalSpec {
            require: vec![],
            timeout_s: 60,
            on_timeout: OnTimeout::Escalate,
            escalate: vec![Escalation {
                require: vec![],
                timeout_s: 60,
                notify: escalate.iter().map(|s| s.to_string()).collect(),
            }],
            mode: crate::policy::decision::Mode::Explicit,
            grantable: true,
            notify: notify.iter().map(|s| s.to_string()).collect(),
        });
        a
    }

    fn record(event: &str, details: Value) -> Record {
        Record {
            seq: 7,
            ts: "2026-11-22T10:00:00.000000Z".into(),
            actor: "alice".into(),
            event: event.into(),
            subject: "a1".into(),
            details,
            details_sha256: None,
            prev_hash: String::new(),
            hash: String::new(),
            mac: None,
        }
    }

    fn kinds(name: &str) -> Option<&'static str> {
        match name {
            "slack" => Some("slack"),
            "mail" => Some("email"),
            "hooks" => Some("webhook"),
            "oncall" => Some("pagerduty"),
            _ => None,
        }
    }

    fn sent(r: &Record, a: &Approval) -> Vec<(String, String, String)> {
        let default = ["slack".to_string()];
        let (out, _) = fan_out(&default, &kinds, "https://latch", r, a);
        out.into_iter()
            .map(|d| {
                (
                    d.channel,
                    d.kind,
                    d.payload["type"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn t(c: &str, k: &str, ty: &str) -> (String, String, String) {
        (c.into(), k.into(), ty.into())
    }

    #[test]
    fn a_request_reaches_default_and_policy_channels() {
        let a = approval(&["hooks", "mail"], &["oncall"]);
        assert_eq!(
            sent(&record("gate", json!({})), &a),
            [
                t("slack", REQUESTED, "approval.requested"),
                t("hooks", REQUESTED, "approval.requested"),
                t("mail", REQUESTED, "approval.requested"),
            ]
        );
    }

    #[test]
    fn escalation_pages_new_channels_and_updates_the_others() {
        let mut a = approval(&["hooks"], &["oncall"]);
        a.level = 1;
        assert_eq!(
            sent(&record("escalate", json!({"level": 1})), &a),
            [
                t("slack", ESCALATED, "approval.escalated"),
                t("hooks", ESCALATED, "approval.escalated"),
                t("oncall", REQUESTED, "approval.escalated"),
            ]
        );
        // Decided after escalation: PagerDuty resolves, e-mail stays quiet.
        let r = record("reject", json!({"reason": "no"}));
        let out = sent(&r, &a);
        assert!(out.contains(&t("oncall", DECIDED, "approval.decided")));
        let (d, _) = fan_out(&["slack".into()], &kinds, "https://latch", &r, &a);
        assert_eq!(d[0].payload["data"]["outcome"], "rejected");
        assert_eq!(d[0].payload["data"]["reason"], "no");
    }

    #[test]
    fn votes_update_slack_only_and_overrides_are_announced() {
        let a = approval(&["hooks", "mail"], &[]);
        let vote = record("approve", json!({"quorum_met": false}));
        assert_eq!(sent(&vote, &a), [t("slack", VOTE, "approval.voted")]);
        let over = sent(&record("override", json!({"reason": "outage"})), &a);
        assert!(over.contains(&t("slack", BREAK_GLASS, "break_glass.used")));
        assert!(over.contains(&t("hooks", DECIDED, "approval.decided")));
        assert!(!over.iter().any(|(c, _, _)| c == "mail"));
    }

    #[test]
    fn every_event_the_store_puts_in_the_outbox_means_something_here() {
        for e in crate::store::notify::OUTBOX_EVENTS {
            assert!(
                meaning(e, &json!({})).is_some(),
                "{e} reaches the outbox but is never sent"
            );
        }
        assert!(meaning("decision", &json!({})).is_none());
    }

    #[test]
    fn unknown_channels_are_reported_not_sent() {
        let a = approval(&["nope"], &[]);
        let (out, unknown) = fan_out(&[], &kinds, "https://latch", &record("gate", json!({})), &a);
        assert!(out.is_empty());
        assert_eq!(unknown, ["nope"]);
    }
}
