//! The admin listener's routes, as data: the router resolves requests
//! against this table and the OpenAPI document is generated from it, so the
//! two cannot drift apart.

use http::Method;
use serde_json::{json, Map, Value};

mod schemas;
mod table;
use schemas::schemas;
pub use table::endpoints;

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
    /// Slack interactivity (signed by Slack, not by a bearer token).
    SlackInteractions,
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
    /// Notifications given up on.
    DeadLetters,
    /// Queue a dead letter again.
    RetryDeadLetter,
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
            (false, _) if e.op == Op::Public(Public::SlackInteractions) => &[400, 401, 404, 413],
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
            let media = if matches!(
                e.op,
                Op::Public(Public::Login | Public::Logout | Public::SlackInteractions)
            ) {
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
