//! Slack: Block Kit messages about an approval (posted once, then edited in
//! place as it changes), the Web API calls, and request signatures.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::wire::{Client, Failure};
use crate::config::Secret;
use crate::gate::model::{Approval, State, VoteKind};
use crate::identity::Directory;

/// Oldest request timestamp accepted (Slack's own advice: five minutes).
pub const MAX_SKEW_S: i64 = 300;

/// Action ids of the message's buttons and the reject dialog.
pub const APPROVE: &str = "latch_approve";
/// Reject: opens the reason dialog.
pub const REJECT: &str = "latch_reject";
/// The link button (Slack reports its clicks too; they change nothing).
pub const OPEN: &str = "latch_open";

/// Slack Web API errors that may go away by themselves.
const TRANSIENT: &[&str] = &[
    "ratelimited",
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
];

/// One Slack channel: where to post and how to authenticate.
pub struct Slack {
    /// Channel name or id to post in.
    pub channel: String,
    token: Secret,
    signing_secret: Secret,
    api: String,
    client: Client,
}

impl Slack {
    /// A Slack app posting to `channel` through the Web API at `api`.
    pub fn new(
        channel: String,
        token: Secret,
        signing_secret: Secret,
        api: &http::Uri,
        client: Client,
    ) -> Slack {
        Slack {
            channel,
            token,
            signing_secret,
            api: api.to_string().trim_end_matches('/').to_string(),
            client,
        }
    }

    /// Call Web API `method` with a JSON body. Slack answers 200 with
    /// `ok: false` for most errors and 429 with `Retry-After` when limited.
    pub async fn call(&self, method: &str, body: &Value) -> Result<Value, Failure> {
        let url = format!("{}/{method}", self.api);
        let auth = [("authorization", format!("Bearer {}", self.token.0))];
        let answer = self
            .client
            .post_json(&url, &auth, body.to_string().into_bytes())
            .await?;
        answer.check()?;
        let v: Value = serde_json::from_slice(&answer.body)
            .map_err(|_| Failure::transient(format!("{method}: the answer is not JSON")))?;
        if v.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(v);
        }
        let error = v
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown_error");
        let failure = format!("{method}: {error}");
        Err(if TRANSIENT.contains(&error) {
            Failure {
                error: failure,
                permanent: false,
                retry_after: answer.retry_after.or(Some(Duration::from_secs(1))),
            }
        } else {
            Failure::permanent(failure)
        })
    }

    /// Post a new message; returns (channel id, ts) to edit it later.
    pub async fn post(&self, text: &str, blocks: &Value) -> Result<(String, String), Failure> {
        let body =
            json!({"channel": self.channel, "text": text, "blocks": blocks, "unfurl_links": false});
        let v = self.call("chat.postMessage", &body).await?;
        let channel = v.get("channel").and_then(Value::as_str);
        let ts = v.get("ts").and_then(Value::as_str);
        match (channel, ts) {
            (Some(c), Some(t)) => Ok((c.to_string(), t.to_string())),
            _ => Err(Failure::permanent(
                "chat.postMessage: no channel and ts in the answer",
            )),
        }
    }

    /// Replace a posted message.
    pub async fn update(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        blocks: &Value,
    ) -> Result<(), Failure> {
        let body = json!({"channel": channel, "ts": ts, "text": text, "blocks": blocks});
        self.call("chat.update", &body).await.map(|_| ())
    }

    /// A message only `user` sees, in `channel`.
    pub async fn ephemeral(&self, channel: &str, user: &str, text: &str) -> Result<(), Failure> {
        let body = json!({"channel": channel, "user": user, "text": text});
        self.call("chat.postEphemeral", &body).await.map(|_| ())
    }

    /// Open a modal for the user whose click produced `trigger_id`.
    pub async fn open_view(&self, trigger_id: &str, view: &Value) -> Result<(), Failure> {
        let body = json!({"trigger_id": trigger_id, "view": view});
        self.call("views.open", &body).await.map(|_| ())
    }

    /// Whether `signature` (`v0=<hex>`) is this app's HMAC-SHA256 of
    /// `v0:<timestamp>:<body>`, and `timestamp` is within five minutes of
    /// `now_s`. The comparison runs in constant time.
    pub fn verify(&self, timestamp: &str, signature: &str, body: &[u8], now_s: i64) -> bool {
        let Ok(ts) = timestamp.trim().parse::<i64>() else {
            return false;
        };
        if (now_s - ts).abs() > MAX_SKEW_S {
            return false;
        }
        let expected = sign(&self.signing_secret.0, ts, body);
        let given = signature.trim().as_bytes();
        use subtle::ConstantTimeEq;
        expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given))
    }
}

/// `v0=<hex HMAC-SHA256>` of `v0:<ts>:<body>` under `secret` (what Slack sends).
pub fn sign(secret: &str, ts: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(format!("v0:{ts}:").as_bytes());
    mac.update(body);
    format!("v0={}", crate::digest::hex(&mac.finalize().into_bytes()))
}

/// Slack's mrkdwn needs `&`, `<` and `>` escaped; everything a message
/// shows from an agent or a policy goes through this.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// A Slack date that each reader sees in their own time zone.
fn when(ms: i64) -> String {
    let fallback = chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    format!(
        "<!date^{}^{{date_short_pretty}} {{time}}|{fallback}>",
        ms / 1000
    )
}

/// Who approved at the current level, for the current body.
fn signers(a: &Approval) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in &a.votes {
        if v.kind == VoteKind::Approve
            && v.level == a.level
            && v.body_sha256 == a.body_sha256
            && !out.contains(&v.principal)
        {
            out.push(v.principal.clone());
        }
    }
    out
}

/// "1× lead (alice signed), 1× director".
fn who_must_sign(a: &Approval, directory: &Directory) -> String {
    let signed = signers(a);
    let parts: Vec<String> = a
        .requirements()
        .iter()
        .map(|r| {
            let by: Vec<&str> = signed
                .iter()
                .filter(|p| directory.get(p).is_some_and(|p| p.has_role(&r.role)))
                .map(String::as_str)
                .collect();
            if by.is_empty() {
                format!("{}× {}", r.count, r.role)
            } else {
                format!("{}× {} ({} signed)", r.count, r.role, by.join(", "))
            }
        })
        .collect();
    if parts.is_empty() {
        "no one (veto window)".into()
    } else {
        parts.join(", ")
    }
}

/// A short, escaped summary of the call's JSON arguments.
fn argument_summary(a: &Approval) -> String {
    match serde_json::from_slice::<Value>(&a.body) {
        Ok(Value::Object(map)) => {
            let lines: Vec<String> = map
                .iter()
                .take(8)
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    format!("{k}: {}", clip(&v, 120))
                })
                .collect();
            let more = if map.len() > 8 {
                format!("\n… {} more", map.len() - 8)
            } else {
                String::new()
            };
            escape(&format!("{}{more}", lines.join("\n")))
        }
        Ok(other) => escape(&clip(&other.to_string(), 600)),
        Err(_) if a.body.is_empty() => "(no body)".into(),
        Err(_) => format!("({} bytes, not JSON)", a.body.len()),
    }
}

/// How the approval ended, in one line, or `None` while pending.
fn ending(a: &Approval) -> Option<String> {
    let by = |kind: VoteKind| -> Vec<String> {
        let mut v: Vec<String> = a
            .votes
            .iter()
            .filter(|v| v.kind == kind)
            .map(|v| v.principal.clone())
            .collect();
        v.dedup();
        v
    };
    let at = a.decided_at.map(when).unwrap_or_default();
    let why = a
        .outcome
        .as_deref()
        .map(|o| format!(": {}", escape(o)))
        .unwrap_or_default();
    let mut line = match a.state {
        State::Pending => return None,
        State::Approved
            if a.outcome
                .as_deref()
                .is_some_and(|o| o.starts_with("break-glass")) =>
        {
            format!(":rotating_light: *Overridden*{why} · {at}")
        }
        State::Approved | State::Executing | State::Executed | State::Failed => {
            let approvers = by(VoteKind::Approve);
            if approvers.is_empty() {
                format!(":white_check_mark: *Approved*{why} · {at}")
            } else {
                format!(
                    ":white_check_mark: *Approved* by {} · {at}",
                    approvers.join(", ")
                )
            }
        }
        State::Rejected => format!(
            ":x: *Rejected* by {}{why} · {at}",
            by(VoteKind::Reject).join(", ")
        ),
        State::Expired => format!(":hourglass: *Expired*{why} · {at}"),
        State::Cancelled => format!(":no_entry_sign: *Cancelled*{why} · {at}"),
    };
    match (&a.result, a.state) {
        (Some(r), _) => line.push_str(&format!("\nExecuted: the tool answered HTTP {}", r.status)),
        (None, State::Failed) => line.push_str("\nExecution failed"),
        _ => {}
    }
    Some(line)
}

/// The message for approval `a` as it stands: fallback text and blocks.
pub fn render(a: &Approval, directory: &Directory, dashboard_url: &str) -> (String, Value) {
    let link = format!("{dashboard_url}/#approval={}", a.id);
    let title = format!("{} {} {}", a.tool, a.method, a.path);
    let risk = serde_json::to_value(a.risk())
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let text = match a.state {
        State::Pending => format!("Approval needed: {title} by {} ({risk} risk)", a.agent),
        s => format!("{title} by {}: {}", a.agent, s.as_str()),
    };
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Agent*\n{}", escape(&a.agent))}),
        json!({"type": "mrkdwn", "text": format!("*Risk*\n{risk}")}),
    ];
    if a.state == State::Pending {
        fields
            .push(json!({"type": "mrkdwn", "text": format!("*Decide by*\n{}", when(a.deadline))}));
        fields.push(json!({"type": "mrkdwn", "text": format!("*Still to sign*\n{}", escape(&who_must_sign(a, directory)))}));
    }
    let mut why = format!(
        "*Agent's reason:* {}",
        escape(a.reason.as_deref().unwrap_or("(none given)"))
    );
    if !a.decision.reasons.is_empty() {
        why.push_str(&format!(
            "\n*Policy ({}):* {}",
            escape(&a.decision.code),
            escape(&a.decision.reasons.join("; "))
        ));
    }
    if let Some(c) = &a.decision.consequences {
        let c = match c {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        why.push_str(&format!("\n*If it goes wrong:* {}", escape(&clip(&c, 300))));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": clip(&format!("{} {title}", if a.state == State::Pending { "Approval needed:" } else { "Approval:" }), 140)}}),
        json!({"type": "section", "fields": fields}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": clip(&why, 2900)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("```{}```", clip(&argument_summary(a), 2800))}}),
    ];
    match ending(a) {
        None => {
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn",
                "text": "Reject: the call is not sent and the agent gets your reason, so it can try another way."}]}));
            blocks.push(
                json!({"type": "actions", "block_id": "latch_decide", "elements": [
                    {"type": "button", "action_id": APPROVE, "style": "primary", "value": a.id,
                     "text": {"type": "plain_text", "text": "Approve"}},
                    {"type": "button", "action_id": REJECT, "style": "danger", "value": a.id,
                     "text": {"type": "plain_text", "text": "Reject"}},
                    {"type": "button", "action_id": OPEN, "url": link, "value": a.id,
                     "text": {"type": "plain_text", "text": "Open in dashboard"}},
                ]}),
            );
        }
        Some(line) => {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": line}}));
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{link}|Open in dashboard>")}]}));
        }
    }
    (text, Value::Array(blocks))
}

/// The announcement of a break-glass override.
pub fn render_break_glass(
    a: &Approval,
    by: &str,
    reason: &str,
    dashboard_url: &str,
) -> (String, Value) {
    let text = format!(
        "Break-glass override by {by}: {} {} {} for {} — {reason}",
        a.tool, a.method, a.path, a.agent
    );
    let link = format!("{dashboard_url}/#approval={}", a.id);
    let blocks = json!([
        {"type": "section", "text": {"type": "mrkdwn", "text": format!(
            ":rotating_light: *Break-glass override* by *{}*\n{} `{} {}` for {}\n*Reason:* {}\nEvery emergency approval is reviewed.",
            escape(by), escape(&a.tool), escape(&a.method), escape(&a.path), escape(&a.agent), escape(reason))}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("<{link}|Open in dashboard>")}]},
    ]);
    (text, blocks)
}

/// The dialog asking a reviewer why they reject.
pub fn reject_view(a: &Approval, private_metadata: &str) -> Value {
    json!({
        "type": "modal",
        "callback_id": REJECT,
        "private_metadata": private_metadata,
        "title": {"type": "plain_text", "text": "Reject this call"},
        "submit": {"type": "plain_text", "text": "Reject"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": clip(&format!(
                "*{} {} {}* by {}\nThe agent receives your reason and can try another way.",
                escape(&a.tool), escape(&a.method), escape(&a.path), escape(&a.agent)), 2900)}},
            {"type": "input", "block_id": "reason", "label": {"type": "plain_text", "text": "Reason"},
             "element": {"type": "plain_text_input", "action_id": "reason", "multiline": true,
                         "min_length": 1, "max_length": 2000}},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(secret: &str) -> Slack {
        let roots = rustls::RootCertStore::empty();
        let client = Client::new(&roots, None, Duration::from_secs(1)).unwrap();
        Slack::new(
            "#approvals".into(),
            Secret("xoxb".into()),
            Secret(secret.into()),
            &http::Uri::from_static("http://127.0.0.1:9/api"),
            client,
        )
    }

    #[test]
    fn signatures_are_checked_and_stale_ones_refused() {
        let s = app("8f742231b10e8888abcd99yyyzzz85a5");
        let body = b"payload=%7B%7D";
        let now = 1_700_000_000;
        let good = sign("8f742231b10e8888abcd99yyyzzz85a5", now, body);
        assert!(s.verify(&now.to_string(), &good, body, now + 10));
        assert!(!s.verify(&now.to_string(), &good, b"payload=%7B%7E", now));
        assert!(!s.verify(&now.to_string(), &sign("other", now, body), body, now));
        assert!(!s.verify(&now.to_string(), &good, body, now + MAX_SKEW_S + 1));
        assert!(!s.verify("soon", &good, body, now));
        assert!(!s.verify(&now.to_string(), "v1=00", body, now));
        assert!(!s.verify(&now.to_string(), "v0=zz", body, now));
    }

    #[test]
    fn agent_text_cannot_inject_mentions_or_links() {
        assert_eq!(
            escape("<!channel> & <http://x|y>"),
            "&lt;!channel&gt; &amp; &lt;http://x|y&gt;"
        );
    }
}
