//! The agents' data plane: one explicit pipeline per call.
//!
//! ```text
//! admit (method → path → identity) → route → read body → build the call
//!   → evaluate (policy, shadow, history) → record (audit) → forward | deny | hold
//! ```
//! The order matters: malformed paths are refused before anything else looks
//! at them; identity comes before routing so an unauthenticated caller
//! cannot probe which routes exist; the body is read (bounded in size and
//! time) only once the route — and so its limit — is known; the decision is
//! recorded before the call is forwarded. Each stage is a function in its
//! own file, named as above.

mod admit;
mod call;
mod deny;
pub mod error;
mod evaluate;
mod forward;
mod held;
mod mcp;
mod prompts;
mod read;
mod record;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Request, Response};

use crate::audit::AuditLog;
use crate::gate::{Gate, Held};
use crate::history::History;
use crate::http_util::{path, Body};
use crate::identity::{Directory, Principal};
use crate::policy::{Action, Engine};
use crate::server::ConnInfo;
use crate::telemetry::Metrics;
use crate::throttle::Throttle;
use crate::upstream::{self, Route};
use error::ProxyError;

/// What the proxy is built from.
pub struct Parts {
    /// How long a synchronous caller is held before a 202.
    pub hold: Duration,
    /// How often a held MCP client hears it is still waiting.
    pub progress: Duration,
    /// Time allowed to receive a request body.
    pub body_read_timeout: Duration,
    /// Headers the policy may see.
    pub input_headers: Arc<[http::HeaderName]>,
    /// Routes with their clients.
    pub routes: Arc<[Route]>,
    /// Principals.
    pub directory: Arc<Directory>,
    /// Failed-authentication counts, shared with the admin listener.
    pub throttle: Arc<Throttle>,
    /// The live policy.
    pub policy: Engine,
    /// Action history (`input.history`).
    pub history: Arc<History>,
    /// The allow/deny decision writer.
    pub audit: Arc<AuditLog>,
    /// The approval engine, for gated calls.
    pub gate: Gate,
    /// One info line per request (`[log] access`); otherwise at debug level.
    pub access_log: bool,
    /// The prompt registry (`/latch/v1/prompts/…`).
    pub prompts: crate::prompts::Registry,
    /// Metrics.
    pub metrics: Metrics,
    /// OpenTelemetry spans (no-op without an endpoint).
    pub tracer: crate::trace::Tracer,
}

/// Cheap-to-clone handle to the data plane.
#[derive(Clone)]
pub struct Proxy(Arc<Parts>);

impl Proxy {
    /// A proxy over `parts`.
    pub fn new(parts: Parts) -> Proxy {
        Proxy(Arc::new(parts))
    }
}

impl std::ops::Deref for Proxy {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

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
    /// The call's span (`latch.call`), parent of the stages' spans.
    span: crate::trace::Span,
}

/// What the proxy does next with a call.
enum Step {
    /// Answer now.
    Answer(Response<Body>),
    /// Hold the caller until a verdict or `hold` passes.
    Hold(Held),
    /// Hold an MCP client until the verdict, with progress or not.
    McpHold(Box<mcp::Waiting>),
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

/// Handle one agent request. Any body type works, so tests can call this
/// in-process (see [`crate::http_util::boxed_request`]).
///
/// Not an `async fn`: its arguments would stay in the future for its whole
/// life, the request among them, so each of thousands of held calls would
/// keep room for one. The request goes into the boxed pipeline instead.
pub fn handle(
    proxy: Proxy,
    mut req: Request<Body>,
    conn: Arc<ConnInfo>,
) -> impl Future<Output = Response<Body>> {
    let in_flight = InFlight::new(&proxy.metrics.in_flight);
    let incoming = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    let span = proxy.tracer.start_from("latch.call", incoming);
    // The call continues the agent's trace; what Latch sends on names its own span.
    if let Some(v) = span
        .traceparent()
        .and_then(|t| HeaderValue::from_str(&t).ok())
    {
        req.headers_mut().insert("traceparent", v);
    }
    let ctx = Ctx {
        id: uuid::Uuid::now_v7().to_string(),
        start: Instant::now(),
        method: req.method().clone(),
        agent: None,
        route: None,
        outcome: "error",
        policy_code: None,
        span,
    };
    // The pipeline's state is boxed and freed before a held call waits, so
    // each of thousands of held calls keeps only the small wait future.
    let judged = Box::pin(judge(proxy, req, conn, ctx));
    async move {
        let _in_flight = in_flight;
        let (proxy, step, mut ctx) = judged.await;
        let wait = match next(step, &mut ctx) {
            Next::Wait(wait) => wait,
            Next::Answer(resp) => return finish(&proxy, resp, &ctx),
        };
        let _wait = proxy.tracer.child("latch.wait", &ctx.span);
        let resp = match wait {
            Wait::Held(held) => held::wait(&proxy, held).await,
            // Boxed: it is larger than the plain wait, and unboxed every
            // held call would keep room for it (256 bytes more each).
            Wait::Mcp(w) => Box::pin(mcp::wait(&proxy, *w)).await,
        };
        finish(&proxy, resp, &ctx)
    }
}

/// After the pipeline: answer now, or wait for a verdict.
enum Next {
    Answer(Response<Body>),
    Wait(Wait),
}

/// A held call's wait.
enum Wait {
    Held(Held),
    Mcp(Box<mcp::Waiting>),
}

/// What a step leads to. A function of its own so the step is used up
/// before the wait: matched in the handler across the wait, the future
/// would keep room for the whole step (128 bytes per held call).
fn next(step: Result<Step, ProxyError>, ctx: &mut Ctx) -> Next {
    match step {
        Ok(Step::Answer(resp)) => Next::Answer(resp),
        Ok(Step::Hold(held)) => Next::Wait(Wait::Held(held)),
        Ok(Step::McpHold(w)) => Next::Wait(Wait::Mcp(w)),
        Err(e) => {
            ctx.outcome = e.status_and_code().1;
            Next::Answer(e.into_response(&ctx.id))
        }
    }
}

/// Run the pipeline; hands back what the answer needs.
async fn judge(
    proxy: Proxy,
    req: Request<Body>,
    conn: Arc<ConnInfo>,
    mut ctx: Ctx,
) -> (Proxy, Result<Step, ProxyError>, Ctx) {
    let step = pipeline(&proxy, req, &conn, &mut ctx).await;
    (proxy, step, ctx)
}

/// The answer's request id, span attributes, metrics and access line.
fn finish(proxy: &Proxy, mut resp: Response<Body>, ctx: &Ctx) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(&ctx.id) {
        resp.headers_mut().insert("latch-request-id", v);
    }
    let route = ctx.route.as_deref().unwrap_or("-");
    ctx.span.set("latch.request_id", ctx.id.as_str());
    ctx.span.set("latch.route", route);
    ctx.span.set("latch.decision", ctx.outcome);
    if let Some(a) = &ctx.agent {
        ctx.span.set("latch.agent", a.id.as_str());
    }
    if let Some(c) = &ctx.policy_code {
        ctx.span.set("latch.code", c.as_str());
    }
    if resp.status().is_server_error() {
        ctx.span.fail(format!("answered {}", resp.status()));
    }
    proxy
        .metrics
        .requests
        .with_label_values(&[route, ctx.outcome])
        .inc();
    // The audit trail records every decision; the access line is opt-in.
    macro_rules! access {
        ($level:ident) => {
            tracing::$level!(
                request_id = %ctx.id,
                agent = ctx.agent.as_ref().map(|a| a.id.as_str()).unwrap_or("-"),
                route,
                method = %ctx.method,
                decision = ctx.outcome,
                code = ctx.policy_code.as_deref().unwrap_or("-"),
                status = resp.status().as_u16(),
                latency_us = ctx.start.elapsed().as_micros() as u64,
                "request"
            )
        };
    }
    if proxy.access_log {
        access!(info);
    } else {
        access!(debug);
    }
    resp
}

async fn pipeline(
    p: &Proxy,
    req: Request<Body>,
    conn: &ConnInfo,
    ctx: &mut Ctx,
) -> Result<Step, ProxyError> {
    let (agent, decoded_path) = admit::admit(p, &req, conn)?;
    ctx.agent = Some(agent.clone());
    // `/latch/…` belongs to Latch itself; no route may shadow it.
    if path::under(&decoded_path, "/latch/v1/prompts") {
        ctx.route = Some("latch.prompts".into());
        ctx.outcome = "api";
        return Box::pin(prompts::serve(p, req, &decoded_path))
            .await
            .map(Step::Answer);
    }
    if path::under(&decoded_path, "/latch") {
        ctx.route = Some("latch".into());
        ctx.outcome = "api";
        let answer = held::agent_api(p, req.method(), &decoded_path, &agent).await;
        return answer.map(Step::Answer);
    }
    let route = upstream::find(&p.routes, &decoded_path).ok_or(ProxyError::NoRoute)?;
    ctx.route = Some(route.config.name.clone());
    if route.config.protocol == crate::config::Protocol::Mcp {
        // Boxed, like the other rarer branches, so the common allow path's
        // state stays small (many calls in flight at once each keep one).
        return Box::pin(mcp::serve(p, route, req, &agent, decoded_path, conn, ctx)).await;
    }

    let (mut parts, body) = req.into_parts();
    let body = read::read(p, route, &mut parts, body).await?;
    let call = call::build(p, route, &agent, &parts, decoded_path, &body, None)?;
    ctx.span.set("latch.tool", route.config.tool.as_str());
    let policy_span = p.tracer.child("latch.policy", &ctx.span);
    let draft = record::Draft::of(&agent, &ctx.id, &call);
    let verdict = evaluate::evaluate(p, &call, body.judged.is_some(), ctx, Some(draft)).await;
    drop(policy_span);
    ctx.span.set("latch.risk", verdict.decision.risk.as_str());
    if verdict.decision.action == Action::Gate && verdict.shadowed.is_none() {
        ctx.span.set("latch.approval_id", ctx.id.as_str());
    }
    let recorded = record::Recorded {
        proxy: p,
        request_id: &ctx.id,
        agent: &agent,
        call: &call,
        policy: verdict.policy.hash(),
        span: &ctx.span,
    };
    match (verdict.decision.action, verdict.shadowed) {
        (_, Some(would)) => {
            recorded.record(&verdict.decision, true, None).await?;
            let body = read::outgoing(body)?;
            let mut resp = forward::forward(p, route, parts, body, conn, &ctx.span).await?;
            resp.headers_mut()
                .insert("latch-shadow", HeaderValue::from_static(would.as_str()));
            Ok(Step::Answer(resp))
        }
        (Action::Deny, None) => {
            recorded
                .record_once(verdict.recorded, &verdict.decision, false, None)
                .await?;
            Ok(Step::Answer(deny::deny(&ctx.id, &verdict.decision)))
        }
        (Action::Gate, None) => {
            Box::pin(held::hold(&recorded, &parts, body, verdict.decision, conn)).await
        }
        (Action::Allow, None) => {
            let grant = verdict.grant.as_ref().map(|g| &g.grant);
            recorded
                .record_once(verdict.recorded, &verdict.decision, false, grant)
                .await?;
            let body = read::outgoing(body)?;
            let mut resp = forward::forward(p, route, parts, body, conn, &ctx.span).await?;
            // The agent learns which grant let it through (and may cite it).
            if let Some(v) = grant.and_then(|g| HeaderValue::from_str(&g.id).ok()) {
                resp.headers_mut().insert("latch-grant", v);
            }
            Ok(Step::Answer(resp))
        }
    }
}
