//! `/api/v1`: approvals and the audit trail, for humans with a bearer token.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::error;
use super::routes::Op;
use crate::app::Latch;
use crate::gate::model::{Approval, State};
use crate::gate::{self, blocking, Act, GateError};
use crate::identity::Principal;
use crate::server::{json as json_response, Body};
use crate::store::{ApprovalQuery, Cursor};

/// Largest decision request body.
const MAX_BODY: usize = 1 << 20;

/// Serve an `/api/v1/…` operation (already resolved by the route table).
pub async fn handle(
    latch: &Latch,
    req: Request<Incoming>,
    op: Op,
    id: String,
    peer: std::net::IpAddr,
) -> Response<Body> {
    let human = match authenticate(latch, &req, peer) {
        Ok(p) => p,
        Err(e) => return e.response(),
    };
    let query = crate::policy::input::parse_query(req.uri().query());
    let headers = req.headers().clone();
    let act = |verb| async move {
        let body = match read_json(latch, req).await {
            Ok(b) => b,
            Err(e) => return Err(e.response()),
        };
        parse_act(verb, &body)
            .map_err(|msg| error(StatusCode::UNPROCESSABLE_ENTITY, "invalid", &msg))
    };
    let decided = |act: Result<Act, Response<Body>>| async {
        match act {
            Err(resp) => resp,
            Ok(act) => match gate::decide(latch, &id, &human, act).await {
                Ok(a) => json_response(StatusCode::OK, &view(&a)),
                Err(e) => gate_error(e),
            },
        }
    };
    match op {
        Op::ListApprovals => {
            let state = match query.get("status").and_then(|v| v.first()) {
                None => None,
                Some(s) => match State::parse(s) {
                    Some(s) => Some(s),
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "bad_status",
                            &format!("unknown status {s:?}"),
                        )
                    }
                },
            };
            let first = |k: &str| query.get(k).and_then(|v| v.first()).cloned();
            let limit = match first("limit").map(|l| l.parse::<usize>()) {
                None => 100,
                Some(Ok(n)) if (1..=1000).contains(&n) => n,
                Some(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_limit",
                        "limit must be 1 to 1000",
                    )
                }
            };
            let after = match first("cursor") {
                None => None,
                Some(c) => match Cursor::decode(&c) {
                    Some(c) => Some(c),
                    None => return error(StatusCode::BAD_REQUEST, "bad_cursor", "unknown cursor"),
                },
            };
            let agent = first("agent");
            let q = ApprovalQuery {
                state,
                agent: agent.clone(),
                after,
                // One more than asked tells whether another page exists.
                limit: limit + 1,
            };
            let store = latch.store.clone();
            let listed = blocking(move || {
                let page = store.list_approvals(&q)?;
                let total = store.count_approvals(state, agent.as_deref())?;
                Ok((page, total))
            })
            .await;
            match listed {
                Ok((mut page, total)) => {
                    let more = page.len() > limit;
                    page.truncate(limit);
                    let next = page
                        .last()
                        .filter(|_| more)
                        .map(|a| Cursor::after(a, state).encode());
                    let list: Vec<Value> = page.iter().map(view).collect();
                    json_response(
                        StatusCode::OK,
                        &json!({"approvals": list, "next_cursor": next, "total": total}),
                    )
                }
                Err(e) => store_error(e),
            }
        }
        Op::GetApproval => {
            let store = latch.store.clone();
            match blocking(move || store.approval(&id)).await {
                Ok(Some(a)) => {
                    let mut v = view(&a);
                    // What humans did with this class before: context for the reviewer.
                    if let Some(class) = crate::history::ActionClass::from_parts(
                        &a.class,
                        &a.agent,
                        &a.tool,
                        &a.class_shape,
                    ) {
                        let h = latch.history.get(&class);
                        v["class_history"] =
                            json!({"seen": h.seen, "approved": h.approved, "rejected": h.rejected});
                    }
                    json_response(StatusCode::OK, &v)
                }
                Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such approval"),
                Err(e) => store_error(e),
            }
        }
        Op::Approve => decided(act("approve").await).await,
        Op::Reject => decided(act("reject").await).await,
        Op::Modify => decided(act("modify").await).await,
        Op::Override => decided(act("override").await).await,
        Op::Audit => audit(latch, &query).await,
        Op::ReloadPolicy => {
            let l = latch.clone();
            match tokio::task::spawn_blocking(move || l.reload_policy()).await {
                Ok(Ok(hash)) => {
                    json_response(StatusCode::OK, &json!({"status": "reloaded", "hash": hash}))
                }
                Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, "policy_rejected", &e),
                Err(_) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "reload task failed",
                ),
            }
        }
        Op::Session => {
            let session = latch.sessions.from_headers(&headers).map(|(_, s)| s);
            let break_glass = latch
                .config
                .gate
                .break_glass_roles
                .iter()
                .any(|r| human.has_role(r));
            json_response(
                StatusCode::OK,
                &json!({"principal": human.id, "roles": human.roles, "csrf": session.map(|s| s.csrf), "break_glass": break_glass}),
            )
        }
        Op::Events => events(latch),
        Op::Healthz
        | Op::Readyz
        | Op::Metrics
        | Op::OpenApi
        | Op::Dashboard
        | Op::Login
        | Op::Logout => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "not an API operation",
        ),
    }
}

/// An API refusal, turned into a JSON answer at the edge.
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The principal the refusal concerns, when known (for throttling).
    principal: Option<String>,
    /// Seconds to wait, for a 429.
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            principal: None,
            retry_after: None,
        }
    }

    fn of(mut self, principal: &str) -> ApiError {
        self.principal = Some(principal.to_string());
        self
    }

    /// 429: too many failed attempts from this source or principal.
    pub(crate) fn throttled(wait: std::time::Duration) -> ApiError {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            "too many failed attempts; try again later",
        );
        e.retry_after = Some(wait.as_secs().max(1));
        e
    }

    pub(crate) fn response(self) -> Response<Body> {
        let mut r = error(self.status, self.code, &self.message);
        if let Some(v) = self.retry_after.map(http::HeaderValue::from) {
            r.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"latch-admin\""),
            );
        }
        r
    }
}

/// A human principal from the bearer token or, for the dashboard, the
/// session cookie — in which case a state change must carry the session's
/// CSRF token. Agents are refused.
/// Failed attempts count against the source address, and against the
/// principal where one is known (a wrong CSRF token, an agent's token).
pub(super) fn authenticate(
    latch: &Latch,
    req: &Request<Incoming>,
    peer: std::net::IpAddr,
) -> Result<std::sync::Arc<Principal>, ApiError> {
    let ip = crate::throttle::Key::Ip(peer);
    latch.throttle.check(ip).map_err(ApiError::throttled)?;
    let result = authenticate_unthrottled(latch, req);
    match &result {
        Err(e) if e.status == StatusCode::UNAUTHORIZED && e.code != "unauthenticated_missing" => {
            latch.throttle.failed(ip)
        }
        Err(e) if e.status == StatusCode::FORBIDDEN => {
            latch.throttle.failed(ip);
            if let Some(who) = &e.principal {
                latch.throttle.failed(crate::throttle::Key::Principal(who));
            }
        }
        Ok(p) => {
            let key = crate::throttle::Key::Principal(&p.id);
            latch.throttle.check(key).map_err(ApiError::throttled)?;
        }
        Err(_) => {}
    }
    result.map_err(|mut e| {
        if e.code == "unauthenticated_missing" {
            e.code = "unauthenticated";
        }
        e
    })
}

fn authenticate_unthrottled(
    latch: &Latch,
    req: &Request<Incoming>,
) -> Result<std::sync::Arc<Principal>, ApiError> {
    let headers = req.headers();
    let p = match headers.get(http::header::AUTHORIZATION) {
        Some(auth) => latch
            .directory
            .authenticate(Some(auth.as_bytes()), None)
            .map_err(|e| {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())
            })?,
        None => {
            let (_, session) = latch.sessions.from_headers(headers).ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated_missing",
                    "log in or send a bearer token",
                )
            })?;
            let safe = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
            let presented = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
            if !safe && !super::session::csrf_ok(&session, presented) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "csrf",
                    "missing or wrong CSRF token",
                )
                .of(&session.principal.id));
            }
            session.principal
        }
    };
    if p.has_role("agent") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "agents cannot use the admin API",
        )
        .of(&p.id));
    }
    Ok(p)
}

async fn read_json(latch: &Latch, req: Request<Incoming>) -> Result<Value, ApiError> {
    let bytes = super::read_limited(latch, req, MAX_BODY).await?;
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("body is not JSON: {e}"),
        )
    })
}

fn text(body: &Value, key: &str) -> Result<Option<String>, String> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

fn parse_act(verb: &str, body: &Value) -> Result<Act, String> {
    if !body.is_object() {
        return Err("body must be a JSON object".into());
    }
    Ok(match verb {
        "approve" => Act::Approve {
            comment: text(body, "comment")?,
        },
        "reject" => Act::Reject {
            reason: text(body, "reason")?.ok_or("reject needs a `reason`")?,
            code: text(body, "code")?,
        },
        "modify" => Act::Modify {
            body: body
                .get("body")
                .cloned()
                .ok_or("modify needs the new `body`")?,
            comment: text(body, "comment")?,
        },
        "override" => Act::Override {
            reason: text(body, "reason")?.ok_or("override needs a `reason`")?,
        },
        other => return Err(format!("unknown decision {other:?}")),
    })
}

fn gate_error(e: GateError) -> Response<Body> {
    let message = e.to_string();
    let (status, code) = match e {
        GateError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        GateError::Closed(_) => (StatusCode::CONFLICT, "closed"),
        GateError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        GateError::AlreadyVoted(_) => (StatusCode::CONFLICT, "already_voted"),
        GateError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        GateError::PolicyDenied { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "policy_denied"),
        GateError::Store(err) => return store_error(err),
    };
    error(status, code, &message)
}

fn store_error(e: anyhow::Error) -> Response<Body> {
    tracing::error!(error = %e, "store failure on the admin API");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the store is unavailable; nothing changed",
    )
}

fn body_view(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// The reviewer's view of an approval.
pub fn view(a: &Approval) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("body".into(), body_view(&a.body));
        if let Some(orig) = &a.original_body {
            o.insert("original_body".into(), body_view(orig));
        }
        if let Some(r) = &a.result {
            o.insert(
                "result".into(),
                json!({"status": r.status, "headers": r.headers, "body": body_view(&r.body)}),
            );
        }
        o.insert("deadline_ms".into(), json!(a.deadline));
        o.insert("required".into(), json!(a.requirements()));
    }
    v
}

/// Server-sent events: one `approval` event per change, a comment every
/// 15 s so proxies keep the stream open; ends when the client goes away.
fn events(latch: &Latch) -> Response<Body> {
    let mut rx = latch.events.subscribe();
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(b"retry: 2000\n\n")).await;
        loop {
            let chunk = tokio::select! {
                msg = rx.recv() => match msg {
                    Ok(m) => format!("event: approval\ndata: {m}\n\n"),
                    // Missed some: tell the page to reload everything.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => "event: resync\ndata: {}\n\n".to_string(),
                    Err(_) => return,
                },
                _ = tokio::time::sleep(std::time::Duration::from_secs(15)) => ": keep-alive\n\n".to_string(),
            };
            if tx.send(Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(http_body_util::BodyExt::boxed(EventBody(body_rx)));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

struct EventBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = crate::server::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(http_body::Frame::data(b))))
    }
}

async fn audit(latch: &Latch, query: &crate::policy::input::Query) -> Response<Body> {
    let first = |k: &str| query.get(k).and_then(|v| v.first()).cloned();
    let after = first("after")
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    let limit = first("limit")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(1000)
        .min(10_000);
    let since = match first("since") {
        None => None,
        Some(s) => match chrono::DateTime::parse_from_rfc3339(&s) {
            Ok(t) => Some(t.with_timezone(&chrono::Utc)),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_since",
                    "since must be an RFC 3339 time",
                )
            }
        },
    };
    let subject = first("subject");
    let store = latch.store.clone();
    let records = blocking(move || {
        crate::cli::audit_records(&*store, after, limit, since, subject.as_deref())
    })
    .await;
    match records {
        Ok(records) => {
            let next = records.last().map(|r| r.seq);
            json_response(
                StatusCode::OK,
                &json!({"records": records, "next_after": next}),
            )
        }
        Err(e) => store_error(e),
    }
}
