//! Stage 5, record: the allow/deny decision lands in the audit chain
//! before the call is answered or sent, so nothing executes unaudited.

use serde_json::{json, Map, Value};

use super::call::Call;
use super::error::ProxyError;
use super::Proxy;
use crate::audit::chain::Event;
use crate::gate::model::Grant;
use crate::identity::Principal;
use crate::policy::Decision;

/// A judged call, ready to be recorded.
pub(super) struct Recorded<'a> {
    /// The proxy.
    pub proxy: &'a Proxy,
    /// Request (and decision) id.
    pub request_id: &'a str,
    /// The agent.
    pub agent: &'a Principal,
    /// The call.
    pub call: &'a Call<'a>,
    /// Hash of the policy set that decided.
    pub policy: &'a str,
    /// The call's span (the audit write gets a child).
    pub span: &'a crate::trace::Span,
}

impl Recorded<'_> {
    /// Commit the decision record; refuses the call if the log is down.
    /// `grant`: the grant that allowed a call the policy gated.
    pub async fn record(
        &self,
        d: &Decision,
        shadow: bool,
        grant: Option<&Grant>,
    ) -> Result<(), ProxyError> {
        let draft = Draft::of(self.agent, self.request_id, self.call);
        let event = draft.event(d, self.policy, shadow, grant);
        let span = self.proxy.tracer.child("latch.audit", self.span);
        self.proxy.audit.record(event).await.map_err(|_| {
            span.fail("audit log unavailable");
            ProxyError::AuditUnavailable
        })
    }

    /// [`Recorded::record`], unless the evaluator thread recorded the
    /// decision already (`on_thread`: how that went, see [`Verdict`]).
    ///
    /// [`Verdict`]: super::evaluate::Verdict
    pub async fn record_once(
        &self,
        on_thread: Option<bool>,
        d: &Decision,
        shadow: bool,
        grant: Option<&Grant>,
    ) -> Result<(), ProxyError> {
        match on_thread {
            Some(true) => Ok(()),
            Some(false) => Err(ProxyError::AuditUnavailable),
            None => self.record(d, shadow, grant).await,
        }
    }
}

/// What a call's decision record says besides the decision, owned so the
/// evaluator thread that decides can make the record.
pub(super) struct Draft {
    agent: String,
    request_id: String,
    route: String,
    tool: String,
    method: http::Method,
    path: String,
    body_sha256: Option<String>,
}

impl Draft {
    /// The record of `call`, by `agent`, under `request_id`.
    pub fn of(agent: &Principal, request_id: &str, call: &Call<'_>) -> Draft {
        Draft {
            agent: agent.id.clone(),
            request_id: request_id.to_string(),
            route: call.route.config.name.clone(),
            tool: call.tool.to_string(),
            method: call.method.clone(),
            path: call.path.clone(),
            body_sha256: call.body_sha256.clone(),
        }
    }

    /// The record of decision `d` by policy set `policy`.
    pub fn event(self, d: &Decision, policy: &str, shadow: bool, grant: Option<&Grant>) -> Event {
        // The call's own strings move into the record rather than being copied.
        let mut details = Map::new();
        let mut put = |k: &str, v: Value| details.insert(k.into(), v);
        put("action", d.action.as_str().into());
        put("code", d.code.as_str().into());
        put("risk", d.risk.as_str().into());
        put("reasons", d.reasons.clone().into());
        put("route", self.route.into());
        put("tool", self.tool.into());
        put("method", self.method.as_str().into());
        put("path", self.path.into());
        put("body_sha256", self.body_sha256.into());
        put("policy", policy.into());
        put("shadow", shadow.into());
        if let Some(g) = grant {
            put("grant", g.id.as_str().into());
            put("class", g.class.as_str().into());
            put("granted_by", g.granted_by.clone().into());
        }
        let details = Value::Object(details);
        Event {
            actor: self.agent,
            event: "decision".into(),
            subject: self.request_id,
            details,
        }
    }
}

/// Record an MCP message Latch passes on without a policy decision (any
/// method but `tools/call`): who sent which methods, with the bytes' digest.
pub(super) async fn passthrough(
    p: &Proxy,
    (request_id, span): (&str, &crate::trace::Span),
    agent: &Principal,
    route: &crate::upstream::Route,
    (method, path): (&str, &str),
    mcp_methods: &[&str],
    body_sha256: Option<&str>,
) -> Result<(), ProxyError> {
    let details = json!({
        "action": "allow", "code": "mcp_passthrough", "risk": "low", "reasons": [],
        "route": route.config.name, "tool": mcp_methods.join(","), "method": method,
        "path": path, "body_sha256": body_sha256, "policy": p.policy.current().hash(),
        "shadow": false, "mcp_methods": mcp_methods,
    });
    let event = Event::new(&agent.id, "decision", request_id, details);
    let span = p.tracer.child("latch.audit", span);
    p.audit.record(event).await.map_err(|_| {
        span.fail("audit log unavailable");
        ProxyError::AuditUnavailable
    })
}
