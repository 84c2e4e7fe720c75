//! `/api/v1`: approvals and the audit trail, for humans with a bearer token
//! (or a dashboard session and its CSRF token).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::error::AdminError;
use super::routes::ApiOp;
use super::Admin;
use crate::gate::model::{Approval, Grant, State};
use crate::gate::{Act, Gate, GateError, GrantAsk};
use crate::history::ActionClass;
use crate::http_util::query::{parse_query, Query};
use crate::http_util::{json as json_response, Body};
use crate::identity::Principal;
use crate::server::ConnInfo;
use crate::store::{blocking, ApprovalQuery, Cursor};
use crate::throttle::Key;

/// Largest decision request body.
const MAX_BODY: usize = 1 << 20;

/// Serve an `/api/v1/…` operation (already resolved by the route table).
pub(super) async fn handle(
    admin: &Admin,
    req: Request<Body>,
    op: ApiOp,
    params: Vec<String>,
    conn: &ConnInfo,
) -> Response<Body> {
    let answer = match authenticate(admin, &req, conn.peer.ip()).await {
        Ok(human) if super::prompts::serves(op) => {
            super::prompts::serve(admin, req, op, &params, &human, conn).await
        }
        Ok(human) => {
            let id = params.into_iter().next().unwrap_or_default();
            serve(admin, req, op, id, &human).await
        }
        Err(e) => Err(e),
    };
    answer.unwrap_or_else(AdminError::into_response)
}

async fn serve(
    admin: &Admin,
    req: Request<Body>,
    op: ApiOp,
    id: String,
    human: &Principal,
) -> Result<Response<Body>, AdminError> {
    let query = parse_query(req.uri().query());
    let ok = |v: &Value| json_response(StatusCode::OK, v);
    match op {
        ApiOp::ListApprovals => list(admin, &query).await.map(|v| ok(&v)),
        ApiOp::GetApproval => {
            let a = admin.gate.approval(&id).await?;
            let mut v = view(&a);
            // What humans did with this class before: context for the reviewer.
            if let Some(class) =
                ActionClass::from_parts(&a.class, &a.agent, &a.tool, &a.class_shape)
            {
                let h = admin.history.get(&class);
                v["class_history"] =
                    json!({"seen": h.seen, "approved": h.approved, "rejected": h.rejected});
            }
            Ok(ok(&v))
        }
        ApiOp::Approve | ApiOp::Reject | ApiOp::Modify | ApiOp::Override => {
            let body = read_json(admin, req).await?;
            let act = parse_act(op, &body)?;
            let a = admin.gate.decide(&id, human, act).await?;
            Ok(ok(&view(&a)))
        }
        ApiOp::Audit => audit(admin, &query).await.map(|v| ok(&v)),
        ApiOp::ReloadPolicy => {
            let engine = admin.policy.clone();
            let hash = tokio::task::spawn_blocking(move || engine.reload())
                .await
                .map_err(|_| AdminError::Internal("reload task failed"))?
                .map_err(|e| AdminError::PolicyRejected(e.to_string()))?;
            Ok(ok(&json!({"status": "reloaded", "hash": hash})))
        }
        ApiOp::Session => {
            let session = admin
                .sessions
                .from_headers(req.headers())
                .await
                .map(|(_, s)| s);
            let break_glass = admin.break_glass_roles.iter().any(|r| human.has_role(r));
            Ok(ok(
                &json!({"principal": human.id, "roles": human.roles, "csrf": session.map(|s| s.csrf),
                        "break_glass": break_glass, "max_grant_s": admin.gate.max_grant_s()}),
            ))
        }
        ApiOp::Events => Ok(events(&admin.gate)),
        ApiOp::ListGrants => list_grants(admin, &query).await.map(|v| ok(&v)),
        ApiOp::GetGrant => {
            let g = admin.gate.grant(&id).await?;
            Ok(ok(&grant_view(&g, admin.gate.now_ms())))
        }
        ApiOp::RevokeGrant => {
            let body = read_json(admin, req).await?;
            let reason = text(&body, "reason").map_err(AdminError::Invalid)?;
            let g = admin.gate.revoke_grant(&id, human, reason).await?;
            Ok(ok(&grant_view(&g, admin.gate.now_ms())))
        }
        ApiOp::Insights => insights(admin, &query).await.map(|v| ok(&v)),
        ApiOp::DeadLetters => {
            let limit = match query
                .get("limit")
                .and_then(|v| v.first())
                .map(|l| l.parse::<usize>())
            {
                None => 100,
                Some(Ok(n)) if (1..=1000).contains(&n) => n,
                Some(_) => return Err(bad_query("bad_limit", "limit must be 1 to 1000")),
            };
            let list = admin
                .notify
                .dead_letters(limit)
                .await
                .map_err(AdminError::Store)?;
            Ok(ok(&json!({"dead_letters": list})))
        }
        ApiOp::RetryDeadLetter => {
            let missing = || AdminError::NotFound(format!("{id} is not a dead letter"));
            let n: i64 = id.parse().map_err(|_| missing())?;
            let store = admin.notify.retry_dead(n).await;
            if !store.map_err(AdminError::Store)? {
                return Err(missing());
            }
            Ok(ok(&json!({"id": n, "state": "pending"})))
        }
        _ => Err(AdminError::NoEndpoint),
    }
}

/// A grant with its status now.
fn grant_view(g: &Grant, now: i64) -> Value {
    let mut v = serde_json::to_value(g).unwrap_or(Value::Null);
    v["status"] = json!(g.status(now));
    v
}

/// `GET /api/v1/grants?status=live|all`.
async fn list_grants(admin: &Admin, query: &Query) -> Result<Value, AdminError> {
    let first = |k: &str| query.get(k).and_then(|v| v.first()).map(String::as_str);
    let live_only = match first("status") {
        None | Some("live") => true,
        Some("all") => false,
        Some(s) => {
            return Err(bad_query(
                "bad_status",
                format!("status must be live or all, not {s:?}"),
            ))
        }
    };
    let limit = match first("limit").map(str::parse::<usize>) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(bad_query("bad_limit", "limit must be 1 to 1000")),
    };
    let now = admin.gate.now_ms();
    let list = admin.gate.list_grants(live_only, limit).await?;
    let list: Vec<Value> = list.iter().map(|g| grant_view(g, now)).collect();
    Ok(json!({"grants": list}))
}

/// Most audit records one insights request reads (the newest window part
/// beyond it is left out, and the answer says so).
const INSIGHTS_MAX_RECORDS: usize = 500_000;

/// `GET /api/v1/insights?days=1`: the automation rate and rubber-stamp
/// signals over the window, from the audit trail.
async fn insights(admin: &Admin, query: &Query) -> Result<Value, AdminError> {
    let first = |k: &str| query.get(k).and_then(|v| v.first()).map(String::as_str);
    let number = |k: &'static str, default: u64, max: u64| match first(k).map(str::parse::<u64>) {
        None => Ok(default),
        Some(Ok(n)) if (1..=max).contains(&n) => Ok(n),
        Some(_) => Err(bad_query("bad_query", format!("{k} must be 1 to {max}"))),
    };
    let days = number("days", 1, 90)?;
    let t = crate::insights::Thresholds {
        min: number("min", 5, 1_000_000)?,
        fast_ms: number("fast_s", 10, 86_400)? as i64 * 1000,
    };
    let since = chrono::Utc::now() - chrono::Duration::days(days as i64);
    let store = admin.store.clone();
    let records = blocking(move || {
        crate::audit::records(&*store, 0, INSIGHTS_MAX_RECORDS, Some(since), None)
    })
    .await
    .map_err(AdminError::Store)?;
    let mut v = crate::insights::report(&records, t, days);
    v["truncated"] = json!(records.len() >= INSIGHTS_MAX_RECORDS);
    Ok(v)
}

fn bad_query(code: &'static str, message: impl Into<String>) -> AdminError {
    AdminError::BadQuery {
        code,
        message: message.into(),
    }
}

/// `GET /api/v1/approvals`: one page, with a cursor for the next.
async fn list(admin: &Admin, query: &Query) -> Result<Value, AdminError> {
    let first = |k: &str| query.get(k).and_then(|v| v.first()).cloned();
    let state = match first("status") {
        None => None,
        Some(s) => Some(
            State::parse(&s)
                .ok_or_else(|| bad_query("bad_status", format!("unknown status {s:?}")))?,
        ),
    };
    let limit = match first("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return Err(bad_query("bad_limit", "limit must be 1 to 1000")),
    };
    let after = match first("cursor") {
        None => None,
        Some(c) => {
            Some(Cursor::decode(&c).ok_or_else(|| bad_query("bad_cursor", "unknown cursor"))?)
        }
    };
    let agent = first("agent");
    let q = ApprovalQuery {
        state,
        agent: agent.clone(),
        after,
        // One more than asked tells whether another page exists.
        limit: limit + 1,
    };
    let store = admin.store.clone();
    let (mut page, total) = blocking(move || {
        let page = store.list_approvals(&q)?;
        let total = store.count_approvals(state, agent.as_deref())?;
        Ok((page, total))
    })
    .await
    .map_err(AdminError::Store)?;
    let more = page.len() > limit;
    page.truncate(limit);
    let next = page
        .last()
        .filter(|_| more)
        .map(|a| Cursor::after(a, state).encode());
    let list: Vec<Value> = page.iter().map(view).collect();
    Ok(json!({"approvals": list, "next_cursor": next, "total": total}))
}

/// A human principal from the bearer token or, for the dashboard, the
/// session cookie — in which case a state change must carry the session's
/// CSRF token. Agents are refused.
/// Failed attempts count against the source address, and against the
/// principal where one is known (a wrong CSRF token, an agent's token).
async fn authenticate(
    admin: &Admin,
    req: &Request<Body>,
    peer: std::net::IpAddr,
) -> Result<Arc<Principal>, AdminError> {
    let ip = Key::Ip(peer);
    admin.throttle.check(ip).map_err(AdminError::Throttled)?;
    let result = authenticate_unthrottled(admin, req).await;
    match &result {
        Ok(p) => {
            let key = Key::Principal(&p.id);
            admin.throttle.check(key).map_err(AdminError::Throttled)?;
        }
        Err(AdminError::Unauthenticated(_)) => admin.throttle.failed(ip),
        Err(e @ (AdminError::Csrf { .. } | AdminError::Agent { .. })) => {
            admin.throttle.failed(ip);
            if let Some(who) = e.principal() {
                admin.throttle.failed(Key::Principal(who));
            }
        }
        Err(_) => {}
    }
    result
}

async fn authenticate_unthrottled(
    admin: &Admin,
    req: &Request<Body>,
) -> Result<Arc<Principal>, AdminError> {
    let headers = req.headers();
    let p = match headers.get(http::header::AUTHORIZATION) {
        Some(auth) => admin
            .directory
            .authenticate(Some(auth.as_bytes()), None)
            .map_err(|e| AdminError::Unauthenticated(e.to_string()))?,
        None => {
            let (_, session) = admin
                .sessions
                .from_headers(headers)
                .await
                .ok_or(AdminError::NoCredentials)?;
            let safe = matches!(*req.method(), http::Method::GET | http::Method::HEAD);
            let presented = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
            if !safe && !super::session::csrf_ok(&session, presented) {
                return Err(AdminError::Csrf {
                    principal: Some(session.principal.id.clone()),
                });
            }
            session.principal
        }
    };
    if p.has_role("agent") {
        return Err(AdminError::Agent {
            principal: p.id.clone(),
        });
    }
    Ok(p)
}

pub(super) async fn read_json(admin: &Admin, req: Request<Body>) -> Result<Value, AdminError> {
    let bytes = super::read_limited(admin, req, MAX_BODY).await?;
    if bytes.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| AdminError::Invalid(format!("body is not JSON: {e}")))
}

fn text(body: &Value, key: &str) -> Result<Option<String>, String> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

fn parse_act(op: ApiOp, body: &Value) -> Result<Act, AdminError> {
    if !body.is_object() {
        return Err(AdminError::Invalid("body must be a JSON object".into()));
    }
    if op != ApiOp::Approve && body.get("grant").is_some() {
        let why = "a grant comes only with an approve of the call as proposed";
        return Err(AdminError::Gate(GateError::BadGrant(why.into())));
    }
    if let ApiOp::Approve = op {
        let grant = grant_ask(body).map_err(|e| AdminError::Gate(GateError::BadGrant(e)))?;
        let comment = text(body, "comment").map_err(AdminError::Invalid)?;
        return Ok(Act::Approve { comment, grant });
    }
    parse_other_act(op, body).map_err(AdminError::Invalid)
}

fn parse_other_act(op: ApiOp, body: &Value) -> Result<Act, String> {
    Ok(match op {
        ApiOp::Reject => Act::Reject {
            reason: text(body, "reason")?.ok_or("reject needs a `reason`")?,
            code: text(body, "code")?,
        },
        ApiOp::Modify => Act::Modify {
            body: body
                .get("body")
                .cloned()
                .ok_or("modify needs the new `body`")?,
            comment: text(body, "comment")?,
        },
        ApiOp::Override => Act::Override {
            reason: text(body, "reason")?.ok_or("override needs a `reason`")?,
        },
        other => return Err(format!("{other:?} is not a decision")),
    })
}

/// `"grant": {"ttl_s": 3600, "class_args": ["to"]}` on an approve.
fn grant_ask(body: &Value) -> Result<Option<GrantAsk>, String> {
    let g = match body.get("grant") {
        None | Some(Value::Null) => return Ok(None),
        Some(g) => g.as_object().ok_or("`grant` must be an object")?,
    };
    if let Some(k) = g
        .keys()
        .find(|k| !["ttl_s", "class_args"].contains(&k.as_str()))
    {
        return Err(format!("unknown field `grant.{k}` (ttl_s, class_args)"));
    }
    let ttl_s = g
        .get("ttl_s")
        .and_then(Value::as_u64)
        .ok_or("`grant.ttl_s` must be a whole number of seconds")?;
    let class_args = match g.get("class_args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or("`grant.class_args` must be an array of argument names")?,
        Some(_) => return Err("`grant.class_args` must be an array of argument names".into()),
    };
    Ok(Some(GrantAsk { ttl_s, class_args }))
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
fn events(gate: &Gate) -> Response<Body> {
    let mut rx = gate.subscribe();
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
    type Error = crate::http_util::BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(http_body::Frame::data(b))))
    }
}

async fn audit(admin: &Admin, query: &Query) -> Result<Value, AdminError> {
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
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(&s)
                .map_err(|_| bad_query("bad_since", "since must be an RFC 3339 time"))?
                .with_timezone(&chrono::Utc),
        ),
    };
    let subject = first("subject");
    let store = admin.store.clone();
    let records =
        blocking(move || crate::audit::records(&*store, after, limit, since, subject.as_deref()))
            .await
            .map_err(AdminError::Store)?;
    let next = records.last().map(|r| r.seq);
    Ok(json!({"records": records, "next_after": next}))
}
