//! Outcome: forward. The judged call goes out through the route's one
//! sending path ([`Route::send`]); the upstream's answer streams back.

use http::{HeaderValue, Response};
use http_body_util::BodyExt;

use super::error::ProxyError;
use crate::http_util::{path, Body};
use crate::server::ConnInfo;
use crate::upstream::{Call, Route};

/// Send the call and relay the answer, marked `latch-decision: allow`.
pub(super) async fn forward(
    p: &super::Proxy,
    route: &Route,
    mut parts: http::request::Parts,
    body: Body,
    conn: &ConnInfo,
    call_span: &crate::trace::Span,
) -> Result<Response<Body>, ProxyError> {
    let span = p.tracer.child("latch.upstream", call_span);
    if let Some(v) = span
        .traceparent()
        .and_then(|t| HeaderValue::from_str(&t).ok())
    {
        parts.headers.insert("traceparent", v);
    }
    let suffix = path::raw_suffix(parts.uri.path(), &route.config.prefix);
    let call = Call {
        method: parts.method,
        suffix: &suffix,
        query: parts.uri.query(),
        headers: parts.headers,
        body,
        peer: conn.peer,
        tls: conn.tls,
    };
    let resp = route.send(call).await.map_err(|e| {
        span.fail(e.to_string());
        ProxyError::from_send(e, route.config.max_body_bytes)
    })?;
    span.set("http.response.status_code", resp.status().as_str());
    let (mut parts, body) = resp.into_parts();
    parts
        .headers
        .insert("latch-decision", HeaderValue::from_static("allow"));
    Ok(Response::from_parts(
        parts,
        body.map_err(crate::http_util::BodyError::from).boxed(),
    ))
}
