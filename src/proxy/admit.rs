//! Stage 1, admit: a method Latch proxies, a path with one meaning, and a
//! caller who is who they say (throttled while guessing).

use std::sync::Arc;

use http::{HeaderValue, Method, Request};

use super::error::ProxyError;
use super::Proxy;
use crate::http_util::headers::is_upper_token;
use crate::http_util::{path, Body};
use crate::identity::{AuthError, Principal};
use crate::server::ConnInfo;
use crate::throttle::Key;

/// The authenticated agent and the decoded path.
pub(super) fn admit(
    p: &Proxy,
    req: &Request<Body>,
    conn: &ConnInfo,
) -> Result<(Arc<Principal>, String), ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed);
    }
    // The policy and the tool must agree on the method: `delete` is not
    // `DELETE` to a Rego rule, but many tools treat them alike.
    if !is_upper_token(req.method().as_str()) {
        return Err(ProxyError::BadMethod);
    }
    let decoded = path::normalize(req.uri().path())?;

    // Guessing tokens is throttled per source address (and per principal
    // where a failure names one); while blocked, even a right token is
    // refused, or guessing would go on and just learn which guess was right.
    let ip = Key::Ip(conn.peer.ip());
    let blocked = |key| {
        p.throttle
            .check(key)
            .map_err(|w| ProxyError::Throttled(w.as_secs().max(1)))
    };
    blocked(ip)?;
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let agent = match p
        .directory
        .authenticate(presented, conn.cert_principal.as_ref())
    {
        Ok(agent) => agent,
        Err(e) => {
            if e != AuthError::Missing {
                p.throttle.failed(ip);
            }
            if let (AuthError::Conflict, Some(cert)) = (&e, &conn.cert_principal) {
                p.throttle.failed(Key::Principal(&cert.id));
            }
            return Err(e.into());
        }
    };
    blocked(Key::Principal(&agent.id))?;
    Ok((agent, decoded))
}
