//! Stage 2, read the body: bounded in size and time, then judged
//! ([`crate::policy::body::judge`]) so the policy sees exactly the content
//! that will be sent — or, on a streaming route, told it sees none.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Limited};

use super::error::ProxyError;
use super::Proxy;
use crate::http_util::headers::strip_hop_by_hop;
use crate::http_util::Body;
use crate::policy::body::{self, Judged};
use crate::upstream::{is_length_limit, Route};

/// The body as read: judged bytes, or the agent's stream.
pub(super) struct Read {
    /// The buffered, judged body (not on streaming routes).
    pub judged: Option<Judged>,
    /// The agent's body, still streaming (streaming routes only).
    pub streamed: Option<Body>,
    /// The agent's `Content-Length`, if it sent one.
    pub declared: Option<u64>,
    /// The route's body limit.
    pub limit: u64,
}

/// Read and judge `body`; fixes `parts`' headers to describe what will be sent.
pub(super) async fn read(
    p: &Proxy,
    route: &Route,
    parts: &mut http::request::Parts,
    body: Body,
) -> Result<Read, ProxyError> {
    // Hop-by-hop headers (and any named in `Connection`) never reach the
    // tool, so they are dropped before the policy looks: it judges exactly
    // the headers the tool will get.
    strip_hop_by_hop(&mut parts.headers);
    let limit = route.config.max_body_bytes;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::BodyTooLarge(limit));
    }
    if route.config.stream_body {
        return Ok(Read {
            judged: None,
            streamed: Some(body),
            declared,
            limit,
        });
    }
    let raw = collect(limited(body, limit), limit, p.body_read_timeout).await?;
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
    Ok(Read {
        judged: Some(judged),
        streamed: None,
        declared,
        limit,
    })
}

/// The body to send upstream: the judged bytes, or the agent's stream
/// (still bounded by the route's limit).
pub(super) fn outgoing(read: Read) -> Result<Body, ProxyError> {
    match (read.judged, read.streamed) {
        (Some(j), _) => Ok(crate::http_util::full(j.bytes)),
        (None, Some(s)) => Ok(limited(s, read.limit)
            .map_err(crate::http_util::BodyError)
            .boxed()),
        (None, None) => Err(ProxyError::Internal),
    }
}

fn limited(body: Body, limit: u64) -> Limited<Body> {
    Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX))
}

async fn collect(body: Limited<Body>, limit: u64, timeout: Duration) -> Result<Bytes, ProxyError> {
    match tokio::time::timeout(timeout, body.collect()).await {
        Err(_) => Err(ProxyError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if is_length_limit(&*e) => Err(ProxyError::BodyTooLarge(limit)),
        Ok(Err(_)) => Err(ProxyError::BodyRead),
    }
}
