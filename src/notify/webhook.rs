//! Signed webhooks (Standard Webhooks) and PagerDuty Events v2.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::wire::{Client, Failure};
use crate::config::Secret;
use crate::gate::model::Approval;
use crate::policy::decision::Risk;

/// A Standard Webhooks endpoint.
pub struct Webhook {
    url: String,
    key: Vec<u8>,
    client: Client,
}

impl Webhook {
    /// POST events to `url`, signed with `key` (the decoded `whsec_` secret).
    pub fn new(url: &http::Uri, key: Vec<u8>, client: Client) -> Webhook {
        Webhook {
            url: url.to_string(),
            key,
            client,
        }
    }

    /// Send `payload` as message `id` (the same on every retry, so the
    /// receiver can drop duplicates), signed at `ts` (Unix seconds).
    pub async fn send(&self, id: &str, ts: i64, payload: &Value) -> Result<(), Failure> {
        let body = payload.to_string();
        let headers = [
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            (
                "webhook-signature",
                signature(&self.key, id, ts, body.as_bytes()),
            ),
        ];
        let answer = self
            .client
            .post_json(&self.url, &headers, body.into_bytes())
            .await?;
        answer.check()
    }
}

/// `v1,<base64 HMAC-SHA256 of "id.ts.body">`.
pub fn signature(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    format!("v1,{sig}")
}

/// A PagerDuty Events v2 integration.
pub struct PagerDuty {
    url: String,
    routing_key: Secret,
    client: Client,
}

impl PagerDuty {
    /// Send events to `url` with `routing_key`.
    pub fn new(url: &http::Uri, routing_key: Secret, client: Client) -> PagerDuty {
        PagerDuty {
            url: url.to_string(),
            routing_key,
            client,
        }
    }

    /// Open (or keep open) the incident for `a`; its dedup key is the approval id.
    pub async fn trigger(
        &self,
        a: &Approval,
        link: &str,
        level: Option<&Value>,
    ) -> Result<(), Failure> {
        let severity = match a.risk() {
            Risk::Critical => "critical",
            Risk::High => "error",
            Risk::Medium => "warning",
            Risk::Low => "info",
        };
        let event = json!({
            "routing_key": self.routing_key.0,
            "event_action": "trigger",
            "dedup_key": a.id,
            "payload": {
                "summary": format!("Approval waiting: {} {} {} by {} ({})", a.tool, a.method, a.path, a.agent, a.decision.code),
                "source": "latch",
                "severity": severity,
                "component": a.tool,
                "group": a.route,
                "class": "approval",
                "custom_details": {
                    "approval_id": a.id, "agent": a.agent, "reasons": a.decision.reasons,
                    "agent_reason": a.reason, "level": level, "deadline_ms": a.deadline,
                },
            },
            "links": [{"href": link, "text": "Decide in Latch"}],
        });
        self.send(&event).await
    }

    /// Close the incident for approval `id`.
    pub async fn resolve(&self, id: &str) -> Result<(), Failure> {
        let event =
            json!({"routing_key": self.routing_key.0, "event_action": "resolve", "dedup_key": id});
        self.send(&event).await
    }

    async fn send(&self, event: &Value) -> Result<(), Failure> {
        let answer = self
            .client
            .post_json(&self.url, &[], event.to_string().into_bytes())
            .await?;
        answer.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example from the Standard Webhooks specification.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
