//! Stage 3, build the call: what the policy judges — the route's tool, the
//! arguments (judged body or query), the action class and its history, and
//! the whole `input` document.

use std::sync::Arc;

use super::error::ProxyError;
use super::read::Read;
use super::Proxy;
use crate::gate::LiveGrant;
use crate::history::ActionClass;
use crate::http_util::query::parse_query;
use crate::identity::Principal;
use crate::policy::body::{self, Format};
use crate::policy::input::{self, RequestFacts};
use crate::upstream::Route;

/// A call, as the policy will see it.
pub(super) struct Call<'r> {
    /// The route.
    pub route: &'r Route,
    /// The tool: the route's, or an MCP call's `params.name`.
    pub tool: std::borrow::Cow<'r, str>,
    /// The method.
    pub method: http::Method,
    /// The decoded path.
    pub path: String,
    /// Digest of the judged body (none for a streamed body).
    pub body_sha256: Option<String>,
    /// The action class.
    pub class: ActionClass,
    /// When the call was judged.
    pub now: chrono::DateTime<chrono::Utc>,
    /// The policy input.
    pub input: regorus::Value,
    /// Live grants that cover this call (`input.grants`).
    pub grants: Vec<Arc<LiveGrant>>,
}

/// An MCP `tools/call` as the policy sees it.
pub(super) struct McpAction {
    /// `params.name`.
    pub tool: String,
    /// `params.arguments` (`{}` when absent).
    pub args: regorus::Value,
    /// `input.mcp`.
    pub mcp: regorus::Value,
}

/// Build the call from the request head and the read body; `mcp` names
/// the tool and arguments of an MCP call instead of the route's.
pub(super) fn build<'r>(
    p: &Proxy,
    route: &'r Route,
    agent: &Principal,
    parts: &http::request::Parts,
    path: String,
    read: &Read,
    mcp: Option<McpAction>,
) -> Result<Call<'r>, ProxyError> {
    let null = regorus::Value::Null;
    let (value, format) = match &read.judged {
        Some(j) => (&j.value, j.format),
        None => (&null, Format::Opaque),
    };
    let body_sha256 = read
        .judged
        .as_ref()
        .map(|j| crate::digest::body_sha256(&j.bytes));
    let query = parse_query(parts.uri.query());
    let (tool, args, mcp) = match mcp {
        Some(m) => (m.tool.into(), m.args, Some(m.mcp)),
        None => {
            body::check_overlap(value, &query)?;
            let tool: std::borrow::Cow<'r, str> = route.config.tool.as_str().into();
            (tool, input::args(value, &query), None)
        }
    };
    let class = ActionClass::with_values(
        &agent.id,
        &tool,
        parts.method.as_str(),
        &args,
        &route.config.class_args,
    );
    let stats = p.history.get(&class);
    let grants = p
        .gate
        .grants_for(&class, (&route.config.name, &path), &args);
    let now = chrono::Utc::now();
    let facts = RequestFacts {
        method: parts.method.as_str(),
        path: &path,
        query: &query,
        headers: &parts.headers,
        allowed_headers: &p.input_headers,
        body: value,
        body_format: format.as_str(),
        body_sha256: body_sha256.as_deref(),
        size: read
            .judged
            .as_ref()
            .map(|j| j.bytes.len() as u64)
            .or(read.declared),
    };
    let fingerprint = class.fingerprint();
    let mut input = input::build(
        &facts,
        &route.input,
        &agent.input,
        (&tool, args, &fingerprint),
        &stats,
        now,
    );
    input::set(
        &mut input,
        "grants",
        grants.iter().map(|g| g.input()).collect::<Vec<_>>().into(),
    );
    if let Some(m) = mcp {
        input::set(&mut input, "mcp", m);
    }
    Ok(Call {
        route,
        tool,
        method: parts.method.clone(),
        path,
        body_sha256,
        class,
        now,
        input,
        grants,
    })
}
