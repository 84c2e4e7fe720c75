//! The admin listener: the approvals and audit API for humans (`/api/v1`),
//! the reviewers' dashboard, health, readiness and Prometheus metrics for
//! SREs. Every route is in [`routes::endpoints`], which is also where
//! `/api/openapi.json` comes from.

mod api;
pub mod error;
mod prompts;
pub mod routes;
pub mod session;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use crate::config::AdminConfig;
use crate::gate::Gate;
use crate::history::History;
use crate::http_util::query::{parse_query, Query};
use crate::http_util::{full, json, Body};
use crate::identity::Directory;
use crate::policy::Engine;
use crate::server::ConnInfo;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::throttle::{Key, Throttle};
use error::AdminError;
use routes::{Endpoint, Op, Public, Resolved};

/// What the admin listener is built from.
pub struct Parts {
    /// `[admin]`.
    pub config: AdminConfig,
    /// Roles that may break glass (shown to the dashboard).
    pub break_glass_roles: Vec<String>,
    /// The approval engine.
    pub gate: Gate,
    /// The live policy (reloads, `/readyz`).
    pub policy: Engine,
    /// Durable state (listing approvals, audit records, readiness).
    pub store: Arc<dyn Store>,
    /// Principals.
    pub directory: Arc<Directory>,
    /// Dashboard sessions.
    pub sessions: session::Sessions,
    /// Failed-authentication counts, shared with the proxy.
    pub throttle: Arc<Throttle>,
    /// Action history (context for reviewers).
    pub history: Arc<History>,
    /// Metrics.
    pub metrics: Metrics,
    /// The prompt registry.
    pub prompts: crate::prompts::Registry,
    /// Notification channels (Slack interactivity, dead letters).
    pub notify: crate::notify::Notifier,
}

/// Cheap-to-clone handle to the admin listener's state.
#[derive(Clone)]
pub struct Admin(Arc<Shared>);

struct Shared {
    parts: Parts,
    /// The route table, built once.
    table: Vec<Endpoint>,
}

impl Admin {
    /// An admin listener over `parts`.
    pub fn new(parts: Parts) -> Admin {
        Admin(Arc::new(Shared {
            parts,
            table: routes::endpoints(),
        }))
    }
}

impl std::ops::Deref for Admin {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0.parts
    }
}

/// Handle one admin request. Any body type works, so tests can call this
/// in-process (see [`crate::http_util::boxed_request`]).
pub async fn handle(admin: Admin, req: Request<Body>, conn: Arc<ConnInfo>) -> Response<Body> {
    let (op, id) = match routes::resolve(&admin.0.table, req.method(), req.uri().path()) {
        Resolved::Found(op, id) => (op, id),
        Resolved::NotFound => return AdminError::NoEndpoint.into_response(),
        Resolved::WrongMethod(allowed) => {
            let allow = allowed.iter().map(Method::as_str).collect::<Vec<_>>();
            return AdminError::WrongMethod(allow.join(", ")).into_response();
        }
    };
    let public = match op {
        Op::Api(op) => return api::handle(&admin, req, op, id, &conn).await,
        Op::Public(public) => public,
    };
    let answer = match public {
        Public::Metrics => metrics(&admin, &req),
        Public::Healthz => Ok(json(StatusCode::OK, &json!({"status": "ok"}))),
        Public::Readyz => Ok(readyz(&admin).await),
        Public::OpenApi => Ok(json(StatusCode::OK, &routes::openapi(&admin.0.table))),
        Public::Dashboard => Ok(dashboard()),
        Public::Login => login(&admin, req, &conn).await,
        Public::Logout => logout(&admin, req, conn.tls).await,
        Public::SlackInteractions => slack(&admin, req).await,
    };
    answer.unwrap_or_else(AdminError::into_response)
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

/// `POST /slack/interactions`: Slack signs the raw body, so it is read
/// whole (small) and handed over untouched.
async fn slack(admin: &Admin, req: Request<Body>) -> Result<Response<Body>, AdminError> {
    use crate::notify::interact::Reply;
    let headers = req.headers().clone();
    let body = read_limited(admin, req, 64 * 1024).await?;
    let error = |status: StatusCode, code: &str, message: &str| {
        json(status, &json!({"error": code, "message": message}))
    };
    Ok(
        match admin.notify.slack_interaction(&headers, &body).await {
            Reply::Ok => Response::new(full("")),
            Reply::Json(v) => json(StatusCode::OK, &v),
            Reply::Unauthorized(why) => error(StatusCode::UNAUTHORIZED, "bad_signature", why),
            Reply::BadRequest(why) => error(StatusCode::BAD_REQUEST, "bad_payload", &why),
            Reply::NoSlack => error(
                StatusCode::NOT_FOUND,
                "no_slack",
                "no Slack channel is configured in [notify]",
            ),
        },
    )
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
async fn read_limited(admin: &Admin, req: Request<Body>, max: usize) -> Result<Bytes, AdminError> {
    use http_body_util::Limited;
    let timeout = admin.config.body_read_timeout;
    match tokio::time::timeout(timeout, Limited::new(req.into_body(), max).collect()).await {
        Err(_) => Err(AdminError::BodyTimeout),
        Ok(Err(_)) => Err(AdminError::BodyTooLarge(max)),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

async fn form(admin: &Admin, req: Request<Body>) -> Result<Query, AdminError> {
    let bytes = read_limited(admin, req, 16 * 1024).await?;
    Ok(parse_query(std::str::from_utf8(&bytes).ok()))
}

fn field(f: &Query, name: &str) -> Option<String> {
    f.get(name).and_then(|v| v.first()).cloned()
}

/// `POST /login`: a human's bearer token (form field `token`) → session cookie.
/// Failed logins count against the source address (429 past the limit).
async fn login(
    admin: &Admin,
    req: Request<Body>,
    conn: &ConnInfo,
) -> Result<Response<Body>, AdminError> {
    let tls = conn.tls;
    let ip = Key::Ip(conn.peer.ip());
    admin.throttle.check(ip).map_err(AdminError::Throttled)?;
    let f = form(admin, req).await?;
    let token = field(&f, "token").unwrap_or_default();
    let principal = admin
        .directory
        .authenticate(Some(format!("Bearer {}", token.trim()).as_bytes()), None)
        .ok()
        .filter(|p| !p.has_role("agent"));
    let Some(p) = principal else {
        admin.throttle.failed(ip);
        return Ok(redirect("/?login=failed", None));
    };
    tracing::info!(principal = %p.id, "dashboard login");
    let (id, _) = admin.sessions.create(p).await.map_err(AdminError::Store)?;
    Ok(redirect("/", Some(session::set_cookie(Some(&id), tls))))
}

/// `POST /logout`: needs the session's CSRF token.
async fn logout(
    admin: &Admin,
    req: Request<Body>,
    tls: bool,
) -> Result<Response<Body>, AdminError> {
    let Some((id, s)) = admin.sessions.from_headers(req.headers()).await else {
        return Ok(redirect("/", Some(session::set_cookie(None, tls))));
    };
    let header = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let presented = match header {
        Some(h) => Some(h),
        None => form(admin, req).await.ok().and_then(|f| field(&f, "csrf")),
    };
    if !session::csrf_ok(&s, presented.as_deref()) {
        return Err(AdminError::Csrf { principal: None });
    }
    admin.sessions.remove(&id).await;
    Ok(redirect("/", Some(session::set_cookie(None, tls))))
}

/// `/metrics` is open unless `[admin] metrics_token_env` names a token.
fn metrics_allowed(admin: &Admin, req: &Request<Body>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(want) = &admin.config.metrics_token_sha256 else {
        return true;
    };
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| crate::digest::sha256(t.trim().as_bytes()));
    presented.is_some_and(|p| bool::from(p.ct_eq(want)))
}

fn metrics(admin: &Admin, req: &Request<Body>) -> Result<Response<Body>, AdminError> {
    if !metrics_allowed(admin, req) {
        return Err(AdminError::MetricsToken);
    }
    let text = admin.metrics.render().map_err(|e| {
        tracing::error!(error = %e, "rendering metrics failed");
        AdminError::Internal("metrics unavailable")
    })?;
    let mut r = Response::new(full(text));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(r)
}

/// Ready when the store answers; the detail names the active policy set.
async fn readyz(admin: &Admin) -> Response<Body> {
    let store = admin.store.clone();
    let store_ok = tokio::task::spawn_blocking(move || store.ping())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .and_then(|r| r);
    let policy = admin.policy.current();
    let reload = admin.policy.status();
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
