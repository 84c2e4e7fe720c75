//! Sending an approved call, once: the `approved → executing` change is the
//! single-use token and only its winner sends, through the same
//! [`Route::send`](crate::upstream::Route::send) as allowed calls.

use serde_json::json;

use super::machine::Transition;
use super::model::{Approval, State, StoredResult};
use super::{vouch, Gate};
use crate::audit::chain::Event;
use crate::store::blocking;
use crate::upstream::Call;

/// Largest upstream answer stored for an executed approval.
const MAX_STORED_RESULT: usize = 10 << 20;

impl Gate {
    /// Send approved call `id` upstream, at most once.
    pub async fn execute(&self, id: &str) {
        let Ok(a) = self.approval(id).await else {
            return;
        };
        if a.state != State::Approved {
            return;
        }
        if let Err(why) = self.vouch(&a).await {
            self.refuse_execution(&a, why).await;
            return;
        }
        let mut running = a.next_version();
        running.state = State::Executing;
        match self.commit(a.version, &running, vec![], None).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!(approval = %id, error = %e, "cannot mark approval executing; not sending");
                return;
            }
        }
        let now = self.now_ms();
        let executions = &self.parts().metrics.executions;
        let done = match self.send(&running).await {
            Ok(result) => {
                executions.with_label_values(&["ok"]).inc();
                let event = json!({"status": result.status, "body_sha256": running.body_sha256, "bytes": result.body.len()});
                let mut next = running.close(State::Executed, None, now);
                next.result = Some(result);
                Transition::new(next, Event::new("latch", "execute", id, event), "executed")
            }
            Err(e) => {
                executions.with_label_values(&["error"]).inc();
                let event = json!({"error": e, "body_sha256": running.body_sha256});
                Transition::new(
                    running.close(State::Failed, Some(e), now),
                    Event::new("latch", "execute_failed", id, event),
                    "failed",
                )
            }
        };
        match self
            .commit(running.version, &done.next, vec![done.event], None)
            .await
        {
            Ok(_) => self.after_commit(State::Executing, &done.next),
            Err(e) => {
                tracing::error!(approval = %id, error = %e, "recording the execution result failed")
            }
        }
    }

    /// The table is a working copy; the audit chain must vouch for the
    /// approval of exactly these bytes before anything is sent.
    async fn vouch(&self, a: &Approval) -> Result<(), String> {
        let store = self.parts().store.clone();
        let subject = a.id.clone();
        match blocking(move || store.audit_of(&subject)).await {
            Ok(records) => vouch::vouched(a, &records, self.parts().audit_key.as_ref()),
            Err(e) => Err(format!("the audit trail could not be read: {e}")),
        }
    }

    async fn refuse_execution(&self, a: &Approval, why: String) {
        tracing::error!(approval = %a.id, reason = %why, "approved call not vouched for by the audit chain; not sending");
        self.parts()
            .metrics
            .executions
            .with_label_values(&["unvouched"])
            .inc();
        let t = Transition::new(
            a.close(
                State::Failed,
                Some(format!("not executed: {why}")),
                self.now_ms(),
            ),
            Event::new("latch", "execute_refused", &a.id, json!({"reason": why})),
            "failed",
        );
        if let Ok(true) = self
            .commit(a.version, &t.next, vec![t.event.clone()], None)
            .await
        {
            self.after_commit(State::Approved, &t.next);
        }
    }

    async fn send(&self, a: &Approval) -> Result<StoredResult, String> {
        if let Some(e) = self.executor(&a.route) {
            return e.execute(a).await;
        }
        let route = self
            .parts()
            .routes
            .iter()
            .find(|r| r.config.name == a.route)
            .ok_or_else(|| format!("route {} no longer exists", a.route))?;
        let peer = a.peer.parse().map_err(|_| {
            tracing::error!(approval = %a.id, peer = %a.peer, "stored peer address does not parse; not sending");
            format!("the stored client address {:?} is not an address", a.peer)
        })?;
        let (suffix, query) = match a.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (a.target.as_str(), None),
        };
        let mut headers = a.header_map();
        headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(a.body.len()),
        );
        // The execution joins the trace of the call it releases, however
        // much later; the upstream sees this span as its parent.
        let stored = headers.get("traceparent").and_then(|v| v.to_str().ok());
        let span = self.parts().tracer.start_from("latch.execute", stored);
        span.set("latch.approval_id", a.id.as_str());
        span.set("latch.route", a.route.as_str());
        span.set("latch.tool", a.tool.as_str());
        span.set("latch.agent", a.agent.as_str());
        if let Some(v) = span
            .traceparent()
            .and_then(|t| http::HeaderValue::from_str(&t).ok())
        {
            headers.insert("traceparent", v);
        }
        let call = Call {
            method: a
                .method
                .parse()
                .map_err(|_| format!("bad method {}", a.method))?,
            suffix,
            query,
            headers,
            body: crate::http_util::full(a.body.clone()),
            peer,
            tls: a.tls,
        };
        let answer = route
            .send_collect(call, MAX_STORED_RESULT)
            .await
            .inspect_err(|e| span.fail(e.as_str()))?;
        span.set("http.response.status_code", answer.status.to_string());
        Ok(StoredResult {
            status: answer.status,
            headers: answer.headers,
            body: answer.body.to_vec(),
        })
    }
}
