//! The admin listener's routes, as data: the router resolves requests
//! against this table and the OpenAPI document is generated from it, so the
//! two cannot drift apart.

use http::Method;
use serde_json::{json, Map, Value};

mod schemas;
use schemas::schemas;

/// What a route does: a public page or endpoint, or an operation of the
/// humans' API (which needs a reviewer's credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Served without the API's authentication.
    Public(Public),
    /// `/api/v1`, for an authenticated human.
    Api(ApiOp),
}

impl Op {
    /// The OpenAPI `operationId`.
    pub fn name(self) -> String {
        match self {
            Op::Public(p) => format!("{p:?}"),
            Op::Api(a) => format!("{a:?}"),
        }
    }
}

/// Health, metrics, the dashboard and its login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Public {
    /// Liveness.
    Healthz,
    /// Readiness with detail.
    Readyz,
    /// Prometheus text.
    Metrics,
    /// This document.
    OpenApi,
    /// The reviewers' dashboard.
    Dashboard,
    /// Token login → session cookie.
    Login,
    /// End the session.
    Logout,
}

/// An operation of the humans' API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiOp {
    /// List approvals.
    ListApprovals,
    /// One approval.
    GetApproval,
    /// Approve.
    Approve,
    /// Reject.
    Reject,
    /// Modify.
    Modify,
    /// Break-glass override.
    Override,
    /// Audit records.
    Audit,
    /// Reload the policy set.
    ReloadPolicy,
    /// Who is logged in, and the CSRF token.
    Session,
    /// Server-sent events: approval changes.
    Events,
    /// List grants.
    ListGrants,
    /// One grant.
    GetGrant,
    /// Revoke a grant.
    RevokeGrant,
    /// Automation rate and rubber-stamp signals.
    Insights,
    /// Push a prompt version.
    PushPrompt,
    /// List prompts.
    ListPrompts,
    /// One prompt: labels, versions, history, pending promotions.
    GetPrompt,
    /// One prompt version.
    GetPromptVersion,
    /// Diff two versions.
    DiffPrompt,
    /// Attach an evaluation result to a version.
    AddEvaluation,
    /// Move a label (protected ones through the gate).
    MoveLabel,
    /// Move a label back to its previous version.
    RollbackLabel,
}

/// One route.
pub struct Endpoint {
    /// HTTP method.
    pub method: Method,
    /// Path template; `{id}` matches one segment.
    pub path: &'static str,
    /// Handler.
    pub op: Op,
    /// One-line description.
    pub summary: &'static str,
    /// Needs a human's bearer token.
    pub auth: bool,
    /// Query parameters: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// Request body schema (JSON), if any.
    pub body: Option<&'static str>,
    /// Success status and the schema name of its body.
    pub ok: (u16, &'static str),
}

const DECIDE_ERRORS: &[u16] = &[400, 401, 403, 404, 409, 413, 422, 503];

/// Every admin route.
pub fn endpoints() -> Vec<Endpoint> {
    let e = |method, path, op, summary, auth, query, body, ok| Endpoint {
        method,
        path,
        op,
        summary,
        auth,
        query,
        body,
        ok,
    };
    vec![
        e(
            Method::GET,
            "/",
            Op::Public(Public::Dashboard),
            "The reviewers' dashboard (HTML)",
            false,
            &[],
            None,
            (200, "Html"),
        ),
        e(
            Method::POST,
            "/login",
            Op::Public(Public::Login),
            "Log in with a bearer token (form field `token`); sets the session cookie",
            false,
            &[],
            Some(
                r#"{"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}"#,
            ),
            (303, "Empty"),
        ),
        e(
            Method::POST,
            "/logout",
            Op::Public(Public::Logout),
            "End the session (form field `csrf` or header x-csrf-token)",
            false,
            &[],
            Some(r#"{"type": "object", "properties": {"csrf": {"type": "string"}}}"#),
            (303, "Empty"),
        ),
        e(
            Method::GET,
            "/api/v1/session",
            Op::Api(ApiOp::Session),
            "The logged-in reviewer and the CSRF token",
            true,
            &[],
            None,
            (200, "SessionInfo"),
        ),
        e(
            Method::GET,
            "/api/v1/events",
            Op::Api(ApiOp::Events),
            "Server-sent events: `approval` with {id, state, level} on every change",
            true,
            &[],
            None,
            (200, "EventStream"),
        ),
        e(
            Method::GET,
            "/healthz",
            Op::Public(Public::Healthz),
            "Liveness",
            false,
            &[],
            None,
            (200, "Status"),
        ),
        e(
            Method::GET,
            "/readyz",
            Op::Public(Public::Readyz),
            "Readiness: store and policy set",
            false,
            &[],
            None,
            (200, "Ready"),
        ),
        e(
            Method::GET,
            "/metrics",
            Op::Public(Public::Metrics),
            "Prometheus metrics (text format)",
            false,
            &[],
            None,
            (200, "Metrics"),
        ),
        e(
            Method::GET,
            "/api/openapi.json",
            Op::Public(Public::OpenApi),
            "This document",
            false,
            &[],
            None,
            (200, "OpenApi"),
        ),
        e(
            Method::GET,
            "/api/v1/approvals",
            Op::Api(ApiOp::ListApprovals),
            "List approvals, one page at a time (pending ones soonest deadline first, others newest first)",
            true,
            &[
                (
                    "status",
                    "pending, approved, executing, executed, rejected, expired, cancelled or failed",
                ),
                ("agent", "only this agent's approvals"),
                ("limit", "page size, 1 to 1000 (default 100)"),
                ("cursor", "next_cursor of the previous page"),
            ],
            None,
            (200, "ApprovalList"),
        ),
        e(
            Method::GET,
            "/api/v1/approvals/{id}",
            Op::Api(ApiOp::GetApproval),
            "One approval",
            true,
            &[],
            None,
            (200, "Approval"),
        ),
        e(
            Method::POST,
            "/api/v1/approvals/{id}/approve",
            Op::Api(ApiOp::Approve),
            "Approve the current body",
            true,
            &[],
            Some(
                r#"{"type": "object", "properties": {"comment": {"type": "string"}, "grant": {"type": "object", "required": ["ttl_s"], "properties": {"ttl_s": {"type": "integer", "minimum": 1}, "class_args": {"type": "array", "items": {"type": "string"}}}}}}"#,
            ),
            (200, "Approval"),
        ),
        e(
            Method::POST,
            "/api/v1/approvals/{id}/reject",
            Op::Api(ApiOp::Reject),
            "Reject (the reason is returned to the agent)",
            true,
            &[],
            Some(
                r#"{"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}, "code": {"type": "string"}}}"#,
            ),
            (200, "Approval"),
        ),
        e(
            Method::POST,
            "/api/v1/approvals/{id}/modify",
            Op::Api(ApiOp::Modify),
            "Replace the body; counts as the modifier's approval of the new body",
            true,
            &[],
            Some(
                r#"{"type": "object", "required": ["body"], "properties": {"body": {}, "comment": {"type": "string"}}}"#,
            ),
            (200, "Approval"),
        ),
        e(
            Method::POST,
            "/api/v1/approvals/{id}/override",
            Op::Api(ApiOp::Override),
            "Break-glass: approve now (break-glass roles only, reason required)",
            true,
            &[],
            Some(
                r#"{"type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}}"#,
            ),
            (200, "Approval"),
        ),
        e(
            Method::GET,
            "/api/v1/audit",
            Op::Api(ApiOp::Audit),
            "Audit records, oldest first",
            true,
            &[
                ("since", "RFC 3339 time; records at or after it"),
                ("after", "sequence number; records after it"),
                ("subject", "only records about this request or approval id"),
                ("limit", "at most this many (default 1000, max 10000)"),
            ],
            None,
            (200, "AuditPage"),
        ),
        e(
            Method::GET,
            "/api/v1/grants",
            Op::Api(ApiOp::ListGrants),
            "Time-boxed grants, newest first",
            true,
            &[
                ("status", "live (default) or all"),
                ("limit", "at most this many, 1 to 1000 (default 100)"),
            ],
            None,
            (200, "GrantList"),
        ),
        e(
            Method::GET,
            "/api/v1/grants/{id}",
            Op::Api(ApiOp::GetGrant),
            "One grant",
            true,
            &[],
            None,
            (200, "Grant"),
        ),
        e(
            Method::DELETE,
            "/api/v1/grants/{id}",
            Op::Api(ApiOp::RevokeGrant),
            "Revoke a grant: calls it covered need approval again",
            true,
            &[],
            Some(r#"{"type": "object", "properties": {"reason": {"type": "string"}}}"#),
            (200, "Grant"),
        ),
        e(
            Method::GET,
            "/api/v1/insights",
            Op::Api(ApiOp::Insights),
            "Automation rate (per tool and overall, and if learned classes were adopted), rubber-stamp signals per reviewer and class",
            true,
            &[
                ("days", "window in days, 1 to 90 (default 1)"),
                ("min", "decisions before a reviewer or class counts (default 5)"),
                ("fast_s", "a median decision time under this is fast (default 10)"),
            ],
            None,
            (200, "Insights"),
        ),
        e(
            Method::POST,
            "/api/v1/prompts",
            Op::Api(ApiOp::PushPrompt),
            "Push a prompt version (editors); identical content is not a new version",
            true,
            &[],
            Some(
                r#"{"type": "object", "required": ["name", "template"], "properties": {"name": {"type": "string"}, "template": {"type": "string"}, "variables": {"type": "array", "items": {"type": "string"}}, "config": {}, "message": {"type": "string"}, "checks": {"type": "array"}}}"#,
            ),
            (201, "PromptVersion"),
        ),
        e(
            Method::GET,
            "/api/v1/prompts",
            Op::Api(ApiOp::ListPrompts),
            "Prompts with their labels and latest version",
            true,
            &[],
            None,
            (200, "PromptList"),
        ),
        e(
            Method::GET,
            "/api/v1/prompts/{id}",
            Op::Api(ApiOp::GetPrompt),
            "One prompt: labels, versions, label history, pending promotions",
            true,
            &[],
            None,
            (200, "Prompt"),
        ),
        e(
            Method::GET,
            "/api/v1/prompts/{id}/versions/{version}",
            Op::Api(ApiOp::GetPromptVersion),
            "One version: template, variables, config, checks and evaluations",
            true,
            &[],
            None,
            (200, "PromptVersion"),
        ),
        e(
            Method::POST,
            "/api/v1/prompts/{id}/versions/{version}/evaluations",
            Op::Api(ApiOp::AddEvaluation),
            "Attach an evaluation result (e.g. from CI) to a version",
            true,
            &[],
            Some(
                r#"{"type": "object", "required": ["name", "passed"], "properties": {"name": {"type": "string"}, "score": {"type": "number"}, "passed": {"type": "boolean"}, "url": {"type": "string"}}}"#,
            ),
            (200, "PromptVersion"),
        ),
        e(
            Method::GET,
            "/api/v1/prompts/{id}/diff",
            Op::Api(ApiOp::DiffPrompt),
            "Line diff between two versions",
            true,
            &[("from", "version"), ("to", "version")],
            None,
            (200, "PromptDiff"),
        ),
        e(
            Method::POST,
            "/api/v1/prompts/{id}/labels/{label}",
            Op::Api(ApiOp::MoveLabel),
            "Point a label at a version: 200 moved; protected labels: 202 held for approval or 403 denied by the policy",
            true,
            &[],
            Some(
                r#"{"type": "object", "required": ["version"], "properties": {"version": {"type": "integer"}, "reason": {"type": "string"}}}"#,
            ),
            (200, "LabelMove"),
        ),
        e(
            Method::POST,
            "/api/v1/prompts/{id}/labels/{label}/rollback",
            Op::Api(ApiOp::RollbackLabel),
            "Point a label back at the version it held before its latest move",
            true,
            &[],
            Some(r#"{"type": "object", "properties": {"reason": {"type": "string"}}}"#),
            (200, "LabelMove"),
        ),
        e(
            Method::POST,
            "/api/v1/policy/reload",
            Op::Api(ApiOp::ReloadPolicy),
            "Compile and test the policy directory; swap it in if it passes",
            true,
            &[],
            None,
            (200, "Reloaded"),
        ),
    ]
}

/// How a request matched the table.
pub enum Resolved {
    /// A route, with its path parameters in order (`{id}`, then e.g. `{label}`).
    Found(Op, Vec<String>),
    /// The path exists with other methods.
    WrongMethod(Vec<Method>),
    /// No such path.
    NotFound,
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

fn matches(template: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(params),
            (Some(param), Some(seg)) if is_param(param) && !seg.is_empty() => {
                params.push(seg.to_string())
            }
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// Find the route for `method` and `path`.
pub fn resolve(table: &[Endpoint], method: &Method, path: &str) -> Resolved {
    let mut allowed = Vec::new();
    for e in table {
        if let Some(params) = matches(e.path, path) {
            if e.method == *method {
                return Resolved::Found(e.op, params);
            }
            allowed.push(e.method.clone());
        }
    }
    if allowed.is_empty() {
        Resolved::NotFound
    } else {
        Resolved::WrongMethod(allowed)
    }
}

/// The OpenAPI 3.1 document for `table`.
pub fn openapi(table: &[Endpoint]) -> Value {
    let mut paths = Map::new();
    for e in table {
        let mut params = Vec::new();
        for p in e.path.split('/').filter(|s| is_param(s)) {
            let name = &p[1..p.len() - 1];
            params.push(
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}),
            );
        }
        for (name, description) in e.query {
            params.push(json!({"name": name, "in": "query", "required": false,
                               "description": description, "schema": {"type": "string"}}));
        }
        let content_type = match e.op {
            Op::Public(Public::Metrics) => "text/plain",
            Op::Public(Public::Dashboard) => "text/html",
            Op::Api(ApiOp::Events) => "text/event-stream",
            _ => "application/json",
        };
        let mut responses = Map::new();
        responses.insert(
            e.ok.0.to_string(),
            json!({"description": "OK", "content": {content_type: {"schema": {"$ref": format!("#/components/schemas/{}", e.ok.1)}}}}),
        );
        let errors: &[u16] = match (
            e.auth || e.op == Op::Public(Public::Logout),
            e.method != Method::GET,
        ) {
            (true, true) => DECIDE_ERRORS,
            (true, false) => &[401, 403, 404, 503],
            (false, _) => &[503],
        };
        for code in errors {
            responses.insert(
                code.to_string(),
                json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            );
        }
        let mut op = json!({
            "operationId": e.op.name(),
            "summary": e.summary,
            "parameters": params,
            "responses": responses,
        });
        if e.auth {
            op["security"] = json!([{"bearer": []}]);
        }
        if let Some(body) = e.body {
            let schema: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            let media = if matches!(e.op, Op::Public(Public::Login) | Op::Public(Public::Logout)) {
                "application/x-www-form-urlencoded"
            } else {
                "application/json"
            };
            op["requestBody"] = json!({"required": true, "content": {media: {"schema": schema}}});
        }
        let entry = paths.entry(e.path.to_string()).or_insert_with(|| json!({}));
        entry[e.method.as_str().to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Latch admin API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Approvals, audit trail, policy reload, health and metrics."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
    })
}

#[cfg(test)]
mod tests;
