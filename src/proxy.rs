//! The agents' data plane: one explicit pipeline per call.
//!
//! ```text
//! method → path → identity → route → body → input → policy → record → answer/forward
//! ```
//! The order matters: malformed paths are refused before anything else looks
//! at them; identity comes before routing so an unauthenticated caller
//! cannot probe which routes exist; the body is read (bounded in size and
//! time) only once the route — and so its limit — is known; the decision is
//! recorded before the call is forwarded.

pub mod error;
pub mod headers;
pub mod path;
pub mod upstream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::app::Latch;
use crate::config::Mode;
use crate::gate::hold::Step;
use crate::history::ActionClass;
use crate::identity::{AuthError, Principal};
use crate::policy::body::{self, Judged};
use crate::policy::input::{self, RequestFacts};
use crate::policy::{Action, Decision};
use crate::server::{full, json as json_response, Body, ConnInfo};
use error::ProxyError;
use upstream::Route;

/// Per-request context, carried through every stage and into the log line.
struct Ctx {
    id: String,
    start: Instant,
    method: Method,
    agent: Option<Arc<Principal>>,
    route: Option<String>,
    /// `allow` / `deny` / `gate`, or the error code.
    outcome: &'static str,
    policy_code: Option<String>,
}

/// Decrements the in-flight gauge however the request ends (hyper drops the
/// future if the client goes away).
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(g: &prometheus::IntGauge) -> InFlight {
        g.inc();
        InFlight(g.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Handle one agent request.
pub async fn handle(latch: Latch, req: Request<Incoming>, conn: Arc<ConnInfo>) -> Response<Body> {
    let _in_flight = InFlight::new(&latch.metrics.in_flight);
    let mut ctx = Ctx {
        id: uuid::Uuid::now_v7().to_string(),
        start: Instant::now(),
        method: req.method().clone(),
        agent: None,
        route: None,
        outcome: "error",
        policy_code: None,
    };
    // The pipeline's state is boxed and freed before a held call waits, so
    // each of thousands of held calls keeps only the small wait future.
    let step = Box::pin(pipeline(&latch, req, &conn, &mut ctx)).await;
    let mut resp = match step {
        Ok(Step::Answer(resp)) => resp,
        Ok(Step::Hold { id, cancel_on_drop }) => {
            crate::gate::hold::wait(&latch, &id, latch.config.proxy.hold, cancel_on_drop).await
        }
        Err(e) => {
            ctx.outcome = e.status_and_code().1;
            e.into_response(&ctx.id)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&ctx.id) {
        resp.headers_mut().insert("latch-request-id", v);
    }
    let route = ctx.route.as_deref().unwrap_or("-");
    latch
        .metrics
        .requests
        .with_label_values(&[route, ctx.outcome])
        .inc();
    tracing::info!(
        request_id = %ctx.id,
        agent = ctx.agent.as_ref().map(|a| a.id.as_str()).unwrap_or("-"),
        route,
        method = %ctx.method,
        decision = ctx.outcome,
        code = ctx.policy_code.as_deref().unwrap_or("-"),
        status = resp.status().as_u16(),
        latency_us = ctx.start.elapsed().as_micros() as u64,
        "request"
    );
    resp
}

async fn pipeline(
    latch: &Latch,
    req: Request<Incoming>,
    conn: &ConnInfo,
    ctx: &mut Ctx,
) -> Result<Step, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    // The policy and the tool must agree on the method: `delete` is not
    // `DELETE` to a Rego rule, but many tools treat them alike.
    if !headers::is_upper_token(req.method().as_str()) {
        return Err(ProxyError::BadMethod);
    }
    let decoded_path = path::normalize(req.uri().path())?;

    // Guessing tokens is throttled per source address (and per principal
    // where a failure names one); while blocked, even a right token is
    // refused, or guessing would go on and just learn which guess was right.
    let ip = crate::throttle::Key::Ip(conn.peer.ip());
    let blocked = |key| {
        latch
            .throttle
            .check(key)
            .map_err(|w| ProxyError::Throttled(w.as_secs().max(1)))
    };
    blocked(ip)?;
    let agent = match latch.directory.authenticate(
        req.headers()
            .get(http::header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
        conn.cert_principal.as_ref(),
    ) {
        Ok(agent) => agent,
        Err(e) => {
            if e != AuthError::Missing {
                latch.throttle.failed(ip);
            }
            if let (AuthError::Conflict, Some(p)) = (&e, &conn.cert_principal) {
                latch
                    .throttle
                    .failed(crate::throttle::Key::Principal(&p.id));
            }
            return Err(e.into());
        }
    };
    blocked(crate::throttle::Key::Principal(&agent.id))?;
    ctx.agent = Some(agent.clone());

    // `/latch/…` belongs to Latch itself; no route may shadow it.
    if path::under(&decoded_path, "/latch") {
        ctx.route = Some("latch".into());
        ctx.outcome = "api";
        return crate::gate::hold::agent_api(latch, req.method(), &decoded_path, &agent)
            .await
            .map(Step::Answer);
    }
    let route = upstream::find(&latch.routes, &decoded_path).ok_or(ProxyError::NoRoute)?;
    ctx.route = Some(route.config.name.clone());

    let (mut parts, body) = req.into_parts();
    // Hop-by-hop headers (and any named in `Connection`) never reach the
    // tool, so they are dropped before the policy looks: it judges exactly
    // the headers the tool will get.
    headers::strip_hop_by_hop(&mut parts.headers);
    let limit = route.config.max_body_bytes;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::BodyTooLarge(limit));
    }

    // Buffer and judge the body so the policy sees exactly the content that
    // will be sent, unless the route streams (then it is opaque: the policy
    // is told it sees no body).
    let (judged, streamed): (Option<Judged>, Option<Incoming>) = if route.config.stream_body {
        (None, Some(body))
    } else {
        let raw = read_body(
            body_limited(body, limit),
            limit,
            latch.config.proxy.body_read_timeout,
        )
        .await?;
        let judged = body::judge(&parts.headers, raw, limit, route.config.opaque_body)?;
        if judged.decoded {
            parts.headers.remove(http::header::CONTENT_ENCODING);
        }
        // The forwarded bytes may differ from the agent's (decoded, BOM
        // dropped): their length is stated anew.
        parts.headers.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(judged.bytes.len()),
        );
        (Some(judged), None)
    };
    let null = regorus::Value::Null;
    let (body_value, body_format) = match &judged {
        Some(j) => (&j.value, j.format),
        None => (&null, body::Format::Opaque),
    };
    let sha = judged.as_ref().map(|j| body_digest(&j.bytes));

    let query = input::parse_query(parts.uri.query());
    body::check_overlap(body_value, &query)?;
    let tool = route.config.tool.as_str();
    let args = input::args(body_value, &query);
    let class = ActionClass::with_values(
        &agent.id,
        tool,
        parts.method.as_str(),
        &args,
        &route.config.class_args,
    );
    let stats = latch.history.get(&class);
    let now = chrono::Utc::now();
    let facts = RequestFacts {
        method: parts.method.as_str(),
        path: &decoded_path,
        query: &query,
        headers: &parts.headers,
        allowed_headers: &latch.config.policy.input_headers,
        body: body_value,
        body_format: body_format.as_str(),
        body_sha256: sha.as_deref(),
        size: judged.as_ref().map(|j| j.bytes.len() as u64).or(declared),
    };
    let fingerprint = class.fingerprint();
    let doc = input::build(
        &facts,
        &route.input,
        &agent.input,
        (tool, args, &fingerprint),
        &stats,
        now,
    );

    // On its own threads, within its time limit (a failure is logged there).
    let (policy, eval) = latch.evaluate(doc).await;
    let decision = eval.decision;
    ctx.outcome = decision.action.as_str();
    ctx.policy_code = Some(decision.code.clone());
    // Shadow mode: record what the policy would have done, then let the call
    // through, so a team can watch a new policy before it bites.
    let shadowed = (route.config.mode == Mode::Shadow && decision.action != Action::Allow)
        .then_some(decision.action);
    if let Some(would) = shadowed {
        ctx.outcome = "shadow";
        latch
            .metrics
            .shadow
            .with_label_values(&[route.config.name.as_str(), would.as_str()])
            .inc();
    }
    let carried_out = if shadowed.is_some() {
        "allow"
    } else {
        decision.action.as_str()
    };
    latch.history.record(&class, carried_out, now.timestamp());

    // The allow/deny audit record; committed before the call is answered or
    // sent, so nothing executes unaudited.
    let sha = sha.as_deref();
    let event = |d: &Decision, shadow: bool| {
        crate::audit::Event::new(
            &agent.id,
            "decision",
            &ctx.id,
            json!({
                "action": d.action, "code": d.code, "risk": d.risk, "reasons": d.reasons,
                "route": route.config.name, "method": parts.method.as_str(), "path": decoded_path,
                "body_sha256": sha, "policy": policy.hash(), "shadow": shadow,
            }),
        )
    };
    let record = |e| async {
        latch
            .audit
            .record(e)
            .await
            .map_err(|_| ProxyError::AuditUnavailable)
    };

    let buffered = judged.map(|j| j.bytes);
    match (decision.action, shadowed) {
        (_, Some(would)) => {
            record(event(&decision, true)).await?;
            let body = outgoing(buffered, streamed, limit)?;
            let suffix = path::raw_suffix(parts.uri.path(), &route.config.prefix);
            let mut resp = forward(latch, route, parts, &suffix, body, conn).await?;
            resp.headers_mut()
                .insert("latch-shadow", HeaderValue::from_static(would.as_str()));
            Ok(Step::Answer(resp))
        }
        (Action::Deny, None) => {
            record(event(&decision, false)).await?;
            Ok(Step::Answer(deny(&ctx.id, &decision)))
        }
        (Action::Gate, None) => {
            let Some(body) = buffered else {
                // Approval binds to exact bytes; a streamed body has none to bind.
                let refused = Decision {
                    action: Action::Deny,
                    code: "gate_requires_buffered_body".into(),
                    reasons: vec![
                        "this call needs approval, but its route streams bodies, so there are no exact bytes to approve"
                            .into(),
                    ],
                    ..decision
                };
                record(event(&refused, false)).await?;
                ctx.outcome = "deny";
                return Ok(Step::Answer(deny(&ctx.id, &refused)));
            };
            let mut target = path::raw_suffix(parts.uri.path(), &route.config.prefix);
            if let Some(q) = parts.uri.query() {
                target.push('?');
                target.push_str(q);
            }
            let proposal = crate::gate::hold::Proposal {
                id: &ctx.id,
                agent: &agent,
                route: &route.config.name,
                tool,
                parts: &parts,
                path: &decoded_path,
                target,
                body_sha256: sha
                    .map(str::to_string)
                    .unwrap_or_else(|| body_digest(&body)),
                body,
                decision,
                policy: policy.hash(),
                class: &class,
                conn,
            };
            crate::gate::hold::gate(latch, proposal).await
        }
        (Action::Allow, None) => {
            record(event(&decision, false)).await?;
            let body = outgoing(buffered, streamed, limit)?;
            let suffix = path::raw_suffix(parts.uri.path(), &route.config.prefix);
            forward(latch, route, parts, &suffix, body, conn)
                .await
                .map(Step::Answer)
        }
    }
}

/// The body to send upstream: the buffered bytes, or the agent's stream
/// (still bounded by the route's limit).
fn outgoing(
    buffered: Option<Bytes>,
    streamed: Option<Incoming>,
    limit: u64,
) -> Result<Body, ProxyError> {
    match (buffered, streamed) {
        (Some(b), _) => Ok(full(b)),
        (None, Some(s)) => Ok(body_limited(s, limit).boxed()),
        (None, None) => Err(ProxyError::Internal),
    }
}

/// Hex SHA-256 of a body; the empty body (every GET) is a constant.
fn body_digest(body: &[u8]) -> String {
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    if body.is_empty() {
        EMPTY.to_string()
    } else {
        crate::config::hex(&crate::config::sha256(body))
    }
}

fn body_limited(
    body: Incoming,
    limit: u64,
) -> impl http_body::Body<Data = Bytes, Error = crate::server::BoxError> {
    Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
}

async fn read_body<B>(body: B, limit: u64, timeout: Duration) -> Result<Bytes, ProxyError>
where
    B: http_body::Body<Data = Bytes, Error = crate::server::BoxError>,
{
    match tokio::time::timeout(timeout, body.collect()).await {
        Err(_) => Err(ProxyError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if is_length_limit(&*e) => Err(ProxyError::BodyTooLarge(limit)),
        Ok(Err(_)) => Err(ProxyError::BodyRead),
    }
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}

fn decision_response(status: StatusCode, action: &'static str, body: Value) -> Response<Body> {
    let mut resp = json_response(status, &body);
    resp.headers_mut()
        .insert("latch-decision", HeaderValue::from_static(action));
    resp
}

fn deny(id: &str, d: &Decision) -> Response<Body> {
    decision_response(
        StatusCode::FORBIDDEN,
        "deny",
        json!({"error": "denied", "decision_id": id, "code": d.code, "risk": d.risk, "reasons": d.reasons}),
    )
}

async fn forward(
    latch: &Latch,
    route: &Route,
    mut parts: http::request::Parts,
    suffix: &str,
    body: Body,
    conn: &ConnInfo,
) -> Result<Response<Body>, ProxyError> {
    let uri = route
        .upstream_uri(suffix, parts.uri.query())
        .map_err(|_| ProxyError::Internal)?;
    headers::upstream_request_headers(
        &mut parts.headers,
        conn.peer,
        conn.tls,
        &route.config.inject_headers,
    );
    let mut upstream_req = Request::new(body);
    *upstream_req.method_mut() = parts.method;
    *upstream_req.uri_mut() = uri;
    *upstream_req.headers_mut() = parts.headers;

    let started = Instant::now();
    let result =
        tokio::time::timeout(route.config.timeout, route.client.request(upstream_req)).await;
    latch
        .metrics
        .upstream
        .with_label_values(&[&route.config.name])
        .observe(started.elapsed().as_secs_f64());
    let resp = match result {
        Err(_) => return Err(ProxyError::UpstreamTimeout),
        Ok(Err(e)) if is_length_limit(&e) => {
            return Err(ProxyError::BodyTooLarge(route.config.max_body_bytes))
        }
        Ok(Err(e)) if e.is_connect() => {
            tracing::warn!(route = %route.config.name, error = %e, "upstream connect failed");
            return Err(ProxyError::UpstreamUnavailable);
        }
        Ok(Err(e)) => {
            tracing::warn!(route = %route.config.name, error = %e, "upstream request failed");
            return Err(ProxyError::UpstreamFailed);
        }
        Ok(Ok(resp)) => resp,
    };
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert("latch-decision", HeaderValue::from_static("allow"));
    Ok(Response::from_parts(
        parts,
        body.map_err(Into::into).boxed(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_body_digest_is_the_sha256_of_nothing() {
        let empty = crate::config::hex(&crate::config::sha256(b""));
        assert_eq!(body_digest(b""), empty);
        assert_eq!(
            body_digest(b"x"),
            crate::config::hex(&crate::config::sha256(b"x"))
        );
    }
}
