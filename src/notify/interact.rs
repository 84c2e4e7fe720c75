//! `POST /slack/interactions`: a click on Approve or Reject in Slack, and
//! the reason dialog behind Reject. The request must carry a valid, fresh
//! Slack signature; the clicking Slack user must map to a principal; the
//! verdict then goes through [`Gate::decide`] under exactly the rules of
//! the dashboard. Whatever goes wrong is told to that user alone
//! (an ephemeral message, or an error in the dialog) and changes nothing.

use std::sync::Arc;

use serde_json::{json, Value};

use super::slack::{self, Slack};
use super::Notifier;
use crate::gate::model::State;
use crate::gate::{machine, Act, GateError};
use crate::http_util::query::parse_query;

/// What to answer Slack.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// 200 with an empty body (Slack's "received").
    Ok,
    /// 200 with this JSON (errors shown in a dialog).
    Json(Value),
    /// 401: the signature is missing, wrong or stale.
    Unauthorized(&'static str),
    /// 400: the body is not a Slack interaction payload.
    BadRequest(String),
    /// 404: no Slack channel is configured.
    NoSlack,
}

/// Where to tell the clicking user something.
struct Who {
    app: Arc<Slack>,
    user: String,
    channel: Option<String>,
}

impl Notifier {
    /// Handle one interaction request (headers already read, body raw).
    pub async fn slack_interaction(&self, headers: &::http::HeaderMap, body: &[u8]) -> Reply {
        let mut apps = self.slack_apps().peekable();
        if apps.peek().is_none() {
            return Reply::NoSlack;
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let (ts, sig) = (
            header("x-slack-request-timestamp"),
            header("x-slack-signature"),
        );
        if ts.is_empty() || sig.is_empty() {
            return Reply::Unauthorized("missing X-Slack-Signature or X-Slack-Request-Timestamp");
        }
        // Slack signs with its wall clock, whatever clock the gate runs on.
        let now = chrono::Utc::now().timestamp();
        let Some(app) = apps.find(|a| a.verify(ts, sig, body, now)).cloned() else {
            return Reply::Unauthorized("bad or stale Slack signature");
        };
        let form = parse_query(std::str::from_utf8(body).ok());
        let payload = form
            .get("payload")
            .and_then(|v| v.first())
            .and_then(|p| serde_json::from_str::<Value>(p).ok());
        let Some(payload) = payload else {
            return Reply::BadRequest("expected a form field `payload` holding JSON".into());
        };
        let s = |v: &Value| v.as_str().map(String::from);
        let Some(user) = s(&payload["user"]["id"]) else {
            return Reply::BadRequest("the payload names no user".into());
        };
        let channel =
            s(&payload["channel"]["id"]).or_else(|| s(&payload["container"]["channel_id"]));
        let who = Who { app, user, channel };
        match payload["type"].as_str() {
            Some("block_actions") => self.clicked(&who, &payload).await,
            Some("view_submission") => self.submitted(&who, &payload).await,
            _ => Reply::Ok,
        }
    }

    /// A button: Approve decides now; Reject opens the reason dialog.
    async fn clicked(&self, who: &Who, payload: &Value) -> Reply {
        let action = &payload["actions"][0];
        let id = action["value"].as_str().unwrap_or("").to_string();
        let action_id = action["action_id"].as_str().unwrap_or("");
        if action_id == slack::OPEN {
            return Reply::Ok;
        }
        if id.is_empty() || ![slack::APPROVE, slack::REJECT].contains(&action_id) {
            self.tell(
                who,
                "Latch did not understand this button; nothing changed.".into(),
            );
            return Reply::Ok;
        }
        let Some(principal) = self.parts().directory.by_slack_user(&who.user).cloned() else {
            self.tell(who, unmapped(&who.user));
            return Reply::Ok;
        };
        let gate = &self.parts().gate;
        if action_id == slack::APPROVE {
            let act = Act::Approve {
                comment: Some("from Slack".into()),
                grant: None,
            };
            let said = match gate.decide(&id, &principal, act).await {
                Ok(a) if a.state != State::Pending => {
                    format!("You approved {} {} {}.", a.tool, a.method, a.path)
                }
                Ok(_) => "Your approval is recorded; the call still needs other signatures.".into(),
                Err(e) => refused(&e),
            };
            self.tell(who, said);
            return Reply::Ok;
        }
        // Reject: check now, so an ineligible reviewer is not asked for a reason.
        let a = match gate.approval(&id).await {
            Ok(a) if a.state != State::Pending => {
                self.tell(who, refused(&GateError::Closed(a.state.as_str())));
                return Reply::Ok;
            }
            Ok(a) => a,
            Err(e) => {
                self.tell(who, refused(&e));
                return Reply::Ok;
            }
        };
        if let Err(e) = machine::check_voter(&self.parts().directory, &a, &principal) {
            self.tell(who, refused(&e));
            return Reply::Ok;
        }
        let Some(trigger) = payload["trigger_id"].as_str() else {
            self.tell(
                who,
                "Slack sent no trigger to open the reason dialog; nothing changed.".into(),
            );
            return Reply::Ok;
        };
        let meta = json!({"id": a.id, "channel": who.channel}).to_string();
        if let Err(f) = who
            .app
            .open_view(trigger, &slack::reject_view(&a, &meta))
            .await
        {
            tracing::warn!(error = %f.error, "opening the Slack reject dialog failed");
            self.tell(
                who,
                "Latch could not open the reason dialog; reject from the dashboard.".into(),
            );
        }
        Reply::Ok
    }

    /// The reason dialog was submitted: reject with that reason.
    async fn submitted(&self, who: &Who, payload: &Value) -> Reply {
        let view = &payload["view"];
        if view["callback_id"].as_str() != Some(slack::REJECT) {
            return Reply::Ok;
        }
        let meta: Value = view["private_metadata"]
            .as_str()
            .and_then(|m| serde_json::from_str(m).ok())
            .unwrap_or(Value::Null);
        let who = Who {
            app: who.app.clone(),
            user: who.user.clone(),
            channel: meta["channel"]
                .as_str()
                .map(String::from)
                .or(who.channel.clone()),
        };
        let errors = |msg: String| {
            Reply::Json(json!({"response_action": "errors", "errors": {"reason": msg}}))
        };
        let Some(id) = meta["id"].as_str() else {
            return errors(
                "This dialog lost track of its approval; reject from the dashboard.".into(),
            );
        };
        let reason = view["state"]["values"]["reason"]["reason"]["value"]
            .as_str()
            .unwrap_or("")
            .trim()
            .to_string();
        if reason.is_empty() {
            return errors("Give the agent a reason.".into());
        }
        let Some(principal) = self.parts().directory.by_slack_user(&who.user).cloned() else {
            return errors(unmapped(&who.user));
        };
        let act = Act::Reject { reason, code: None };
        match self.parts().gate.decide(id, &principal, act).await {
            Ok(a) => {
                self.tell(
                    &who,
                    format!(
                        "You rejected {} {} {}; the agent has your reason.",
                        a.tool, a.method, a.path
                    ),
                );
                Reply::Ok
            }
            Err(e) => errors(refused(&e)),
        }
    }

    /// Send `text` to the clicking user only (in the background: Slack
    /// wants its answer within three seconds).
    fn tell(&self, who: &Who, text: String) {
        let Some(channel) = who.channel.clone() else {
            tracing::info!(user = %who.user, %text, "no channel to answer a Slack user in");
            return;
        };
        let (app, user) = (who.app.clone(), who.user.clone());
        tokio::spawn(async move {
            if let Err(f) = app.ephemeral(&channel, &user, &text).await {
                tracing::warn!(error = %f.error, "telling a Slack user failed");
            }
        });
    }
}

fn unmapped(user: &str) -> String {
    format!(
        "Your Slack user ({user}) is not mapped to a Latch principal (`slack_user` in [[principals]]); nothing changed."
    )
}

/// A refusal in words for the reviewer.
fn refused(e: &GateError) -> String {
    match e {
        GateError::Store(_) => {
            "Latch could not record that right now; nothing changed. Try again.".into()
        }
        other => format!("Not done: {other}. Nothing changed."),
    }
}
