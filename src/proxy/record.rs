//! Stage 5, record: the allow/deny decision lands in the audit chain
//! before the call is answered or sent, so nothing executes unaudited.

use serde_json::json;

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
        let c = self.call;
        let mut details = json!({
            "action": d.action, "code": d.code, "risk": d.risk, "reasons": d.reasons,
            "route": c.route.config.name, "tool": c.tool, "method": c.method.as_str(),
            "path": c.path, "body_sha256": c.body_sha256, "policy": self.policy, "shadow": shadow,
        });
        if let Some(g) = grant {
            details["grant"] = json!(g.id);
            details["class"] = json!(g.class);
            details["granted_by"] = json!(g.granted_by);
        }
        let event = Event::new(&self.agent.id, "decision", self.request_id, details);
        let span = self.proxy.tracer.child("latch.audit", self.span);
        self.proxy.audit.record(event).await.map_err(|_| {
            span.fail("audit log unavailable");
            ProxyError::AuditUnavailable
        })
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
