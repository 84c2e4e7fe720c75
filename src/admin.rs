//! The admin listener: the approvals and audit API for humans (`/api/v1`),
//! health, readiness and Prometheus metrics for SREs. Every route is in
//! [`routes::endpoints`], which is also where `/api/openapi.json` comes from.

mod api;
pub mod routes;

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::app::Latch;
use crate::server::{full, json, Body, ConnInfo};

/// Handle one admin request.
pub async fn handle(latch: Latch, req: Request<Incoming>, _conn: Arc<ConnInfo>) -> Response<Body> {
    let table = routes::endpoints();
    let (op, id) = match routes::resolve(&table, req.method(), req.uri().path()) {
        routes::Resolved::Found(op, id) => (op, id),
        routes::Resolved::NotFound => {
            return error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint")
        }
        routes::Resolved::WrongMethod(allowed) => {
            let allow = allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                &format!("use {allow}"),
            );
            if let Ok(v) = HeaderValue::from_str(&allow) {
                r.headers_mut().insert(http::header::ALLOW, v);
            }
            return r;
        }
    };
    match op {
        routes::Op::Metrics => metrics(&latch),
        routes::Op::Healthz => json(StatusCode::OK, &json!({"status": "ok"})),
        routes::Op::Readyz => readyz(&latch).await,
        routes::Op::OpenApi => json(StatusCode::OK, &routes::openapi(&table)),
        routes::Op::ListApprovals
        | routes::Op::GetApproval
        | routes::Op::Approve
        | routes::Op::Reject
        | routes::Op::Modify
        | routes::Op::Override
        | routes::Op::Audit
        | routes::Op::ReloadPolicy => api::handle(&latch, req, op, id.unwrap_or_default()).await,
    }
}

pub(crate) fn error(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    let mut r = json(status, &json!({"error": code, "message": message}));
    r.headers_mut()
        .insert("latch-error", HeaderValue::from_static(code));
    r
}

fn metrics(latch: &Latch) -> Response<Body> {
    match latch.metrics.render() {
        Ok(text) => {
            let mut r = Response::new(full(text));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Err(e) => {
            tracing::error!(error = %e, "rendering metrics failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "metrics unavailable",
            )
        }
    }
}

/// Ready when the store answers; the detail names the active policy set.
async fn readyz(latch: &Latch) -> Response<Body> {
    let store = latch.store.clone();
    let store_ok = tokio::task::spawn_blocking(move || store.ping())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|r| r);
    let policy = latch.policy();
    let reload = match latch.policy_status.lock() {
        Ok(s) => s.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let body = json!({
        "status": if store_ok.is_ok() { "ready" } else { "not_ready" },
        "store": match &store_ok { Ok(()) => "ok".to_string(), Err(e) => format!("error: {e}") },
        "policy": {
            "hash": policy.hash(),
            "evaluator": format!("{:?}", policy.evaluator()).to_lowercase(),
            "reloads": reload.reloads,
            "last_reload_attempt": reload.last_attempt,
            "last_reload_error": reload.last_error,
        },
    });
    let status = if store_ok.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, &body)
}
