//! The admin listener: the approvals and audit API for humans (`/api/v1`),
//! health, readiness and Prometheus metrics for SREs. Every route is in
//! [`routes::endpoints`], which is also where `/api/openapi.json` comes from.

mod api;
pub mod routes;
pub mod session;

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use crate::app::Latch;
use crate::server::{full, json, Body, ConnInfo};

/// Handle one admin request.
pub async fn handle(latch: Latch, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<Body> {
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
        routes::Op::Metrics => match metrics_allowed(&latch, &req) {
            true => metrics(&latch),
            false => {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "send the metrics bearer token",
                );
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"latch-metrics\""),
                );
                r
            }
        },
        routes::Op::Healthz => json(StatusCode::OK, &json!({"status": "ok"})),
        routes::Op::Readyz => readyz(&latch).await,
        routes::Op::OpenApi => json(StatusCode::OK, &routes::openapi(&table)),
        routes::Op::Dashboard => dashboard(),
        routes::Op::Login => login(&latch, req, &conn).await,
        routes::Op::Logout => logout(&latch, req, conn.tls).await,
        routes::Op::ListApprovals
        | routes::Op::GetApproval
        | routes::Op::Approve
        | routes::Op::Reject
        | routes::Op::Modify
        | routes::Op::Override
        | routes::Op::Audit
        | routes::Op::ReloadPolicy
        | routes::Op::Session
        | routes::Op::Events => {
            api::handle(&latch, req, op, id.unwrap_or_default(), conn.peer.ip()).await
        }
    }
}

/// The dashboard page: one self-contained file (no CDN, works offline).
/// Scripts and styles run only with this response's nonce.
fn dashboard() -> Response<Body> {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let page = include_str!("admin/dashboard.html").replace("{{NONCE}}", &nonce);
    let mut r = Response::new(full(page));
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; \
         img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(http::header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

fn redirect(location: &'static str, cookie: Option<String>) -> Response<Body> {
    let mut r = Response::new(full(""));
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut()
        .insert(http::header::LOCATION, HeaderValue::from_static(location));
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(http::header::SET_COOKIE, c);
    }
    r
}

/// Read a request body of at most `max` bytes within the listener's body
/// timeout: a client that trickles its body (or never sends it) is cut off
/// instead of holding a connection slot.
pub(crate) async fn read_limited(
    latch: &Latch,
    req: Request<Incoming>,
    max: usize,
) -> Result<bytes::Bytes, api::ApiError> {
    use http_body_util::{BodyExt, Limited};
    let timeout = latch.config.admin.body_read_timeout;
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), max).collect()).await {
        Err(_) => Err(api::ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body was not received in time",
        )),
        Ok(Err(_)) => Err(api::ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body over {max} bytes or unreadable"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

async fn form(
    latch: &Latch,
    req: Request<Incoming>,
) -> Result<crate::policy::input::Query, Response<Body>> {
    let bytes = read_limited(latch, req, 16 * 1024)
        .await
        .map_err(api::ApiError::response)?;
    Ok(crate::policy::input::parse_query(
        std::str::from_utf8(&bytes).ok(),
    ))
}

fn field(f: &crate::policy::input::Query, name: &str) -> Option<String> {
    f.get(name).and_then(|v| v.first()).cloned()
}

/// `POST /login`: a human's bearer token (form field `token`) → session cookie.
/// Failed logins count against the source address (429 past the limit).
async fn login(latch: &Latch, req: Request<Incoming>, conn: &ConnInfo) -> Response<Body> {
    let tls = conn.tls;
    let ip = crate::throttle::Key::Ip(conn.peer.ip());
    if let Err(wait) = latch.throttle.check(ip) {
        return api::ApiError::throttled(wait).response();
    }
    let f = match form(latch, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let token = field(&f, "token").unwrap_or_default();
    let principal = latch
        .directory
        .authenticate(Some(format!("Bearer {}", token.trim()).as_bytes()), None)
        .ok()
        .filter(|p| !p.has_role("agent"));
    match principal {
        Some(p) => {
            tracing::info!(principal = %p.id, "dashboard login");
            match latch.sessions.create(p) {
                Ok((id, _)) => redirect("/", Some(session::set_cookie(Some(&id), tls))),
                Err(e) => {
                    tracing::error!(error = %e, "storing a dashboard session failed");
                    error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "cannot start a session now",
                    )
                }
            }
        }
        None => {
            latch.throttle.failed(ip);
            redirect("/?login=failed", None)
        }
    }
}

/// `POST /logout`: needs the session's CSRF token.
async fn logout(latch: &Latch, req: Request<Incoming>, tls: bool) -> Response<Body> {
    let Some((id, s)) = latch.sessions.from_headers(req.headers()) else {
        return redirect("/", Some(session::set_cookie(None, tls)));
    };
    let header = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let presented = match header {
        Some(h) => Some(h),
        None => form(latch, req).await.ok().and_then(|f| field(&f, "csrf")),
    };
    if !session::csrf_ok(&s, presented.as_deref()) {
        return error(StatusCode::FORBIDDEN, "csrf", "missing or wrong CSRF token");
    }
    latch.sessions.remove(&id);
    redirect("/", Some(session::set_cookie(None, tls)))
}

pub(crate) fn error(status: StatusCode, code: &'static str, message: &str) -> Response<Body> {
    let mut r = json(status, &json!({"error": code, "message": message}));
    r.headers_mut()
        .insert("latch-error", HeaderValue::from_static(code));
    r
}

/// `/metrics` is open unless `[admin] metrics_token_env` names a token.
fn metrics_allowed(latch: &Latch, req: &Request<Incoming>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(want) = &latch.config.admin.metrics_token_sha256 else {
        return true;
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| crate::config::sha256(t.trim().as_bytes()));
    presented.is_some_and(|p| bool::from(p.ct_eq(want)))
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
