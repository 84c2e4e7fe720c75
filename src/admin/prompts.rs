//! `/api/v1/prompts`: push versions, read them, diff them, attach
//! evaluations, and move labels (protected ones through the gate).

use http::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::api::read_json;
use super::error::AdminError;
use super::routes::ApiOp;
use super::Admin;
use crate::http_util::query::parse_query;
use crate::http_util::{json as json_response, Body};
use crate::identity::Principal;
use crate::prompts::{Moved, PromptError, PushRequest};
use crate::server::ConnInfo;

/// Whether `op` is one of the registry's.
pub(super) fn serves(op: ApiOp) -> bool {
    matches!(
        op,
        ApiOp::PushPrompt
            | ApiOp::ListPrompts
            | ApiOp::GetPrompt
            | ApiOp::GetPromptVersion
            | ApiOp::DiffPrompt
            | ApiOp::AddEvaluation
            | ApiOp::MoveLabel
            | ApiOp::RollbackLabel
    )
}

fn version_param(s: &str, what: &str) -> Result<u32, AdminError> {
    s.parse().map_err(|_| AdminError::BadQuery {
        code: "bad_version",
        message: format!("{what} must be a version number, not {s:?}"),
    })
}

fn text(body: &Value, key: &str) -> Result<Option<String>, AdminError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(AdminError::Invalid(format!("`{key}` must be a string"))),
    }
}

fn moved(m: Moved) -> Response<Body> {
    match m {
        Moved::Now(m) => json_response(StatusCode::OK, &json!({"status": "moved", "moved": m})),
        Moved::Held { approval_id } => json_response(
            StatusCode::ACCEPTED,
            &json!({"status": "pending", "approval_id": approval_id,
                    "approval": format!("/api/v1/approvals/{approval_id}")}),
        ),
    }
}

/// Serve a registry operation for `human`.
pub(super) async fn serve(
    admin: &Admin,
    req: Request<Body>,
    op: ApiOp,
    params: &[String],
    human: &Principal,
    conn: &ConnInfo,
) -> Result<Response<Body>, AdminError> {
    let prompts = &admin.prompts;
    let name = params.first().map(String::as_str).unwrap_or_default();
    let second = params.get(1).map(String::as_str).unwrap_or_default();
    let ok = |v: &Value| json_response(StatusCode::OK, v);
    match op {
        ApiOp::PushPrompt => {
            let body = read_json(admin, req).await?;
            let push: PushRequest = serde_json::from_value(body)
                .map_err(|e| PromptError::Invalid(format!("not a prompt version: {e}")))?;
            let (v, created) = prompts.push(human, push).await?;
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let mut doc = serde_json::to_value(&v).unwrap_or(Value::Null);
            doc["created"] = json!(created);
            Ok(json_response(status, &doc))
        }
        ApiOp::ListPrompts => Ok(ok(&prompts.list().await?)),
        ApiOp::GetPrompt => Ok(ok(&prompts.get(name).await?)),
        ApiOp::GetPromptVersion => {
            let v = prompts
                .version(name, version_param(second, "version")?)
                .await?;
            Ok(ok(&serde_json::to_value(&v).unwrap_or(Value::Null)))
        }
        ApiOp::DiffPrompt => {
            let q = parse_query(req.uri().query());
            let get = |k: &str| {
                q.get(k)
                    .and_then(|v| v.first())
                    .cloned()
                    .unwrap_or_default()
            };
            let from = version_param(&get("from"), "from")?;
            let to = version_param(&get("to"), "to")?;
            Ok(ok(&prompts.diff(name, from, to).await?))
        }
        ApiOp::AddEvaluation => {
            let version = version_param(second, "version")?;
            let body = read_json(admin, req).await?;
            let v = prompts.add_evaluation(human, name, version, &body).await?;
            Ok(ok(&serde_json::to_value(&v).unwrap_or(Value::Null)))
        }
        ApiOp::MoveLabel => {
            let body = read_json(admin, req).await?;
            let version = body["version"]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| PromptError::Invalid("`version` must be a version number".into()))?;
            let reason = text(&body, "reason")?;
            let m = prompts
                .move_label(human, name, second, version, reason, conn.peer)
                .await?;
            Ok(moved(m))
        }
        ApiOp::RollbackLabel => {
            let body = read_json(admin, req).await?;
            let reason = text(&body, "reason")?;
            let m = prompts
                .rollback(human, name, second, reason, conn.peer)
                .await?;
            Ok(moved(m))
        }
        _ => Err(AdminError::NoEndpoint),
    }
}
