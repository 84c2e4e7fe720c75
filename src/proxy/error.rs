//! Every way the data plane refuses or fails a call, with one exhaustive
//! mapping to an HTTP answer. There is no catch-all arm: a new variant has to
//! choose its status here.

use http::{HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::gate::GateError;
use crate::http_util::path::PathError;
use crate::http_util::{json as json_response, Body};
use crate::identity::AuthError;
use crate::policy::body::BodyError;
use crate::upstream::SendError;

/// A call Latch answers itself with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The prompt registry refused (unknown prompt or label, a missing variable).
    #[error("{0}")]
    Prompt(#[from] crate::prompts::PromptError),
    /// Ambiguous or malformed path.
    #[error("{0}")]
    BadPath(#[from] PathError),
    /// A method Latch does not proxy (CONNECT).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A method that is not an upper-case token: `delete` would dodge a
    /// policy rule on `DELETE` while the tool treats both alike.
    #[error("methods must be upper-case tokens such as GET or DELETE")]
    BadMethod,
    /// A body the policy could not judge faithfully.
    #[error("{0}")]
    Body(#[from] BodyError),
    /// No or unknown credentials.
    #[error("{0}")]
    Unauthenticated(#[from] AuthError),
    /// Too many failed attempts from this source or principal; seconds to wait.
    #[error("too many failed attempts; try again later")]
    Throttled(u64),
    /// No route for the path.
    #[error("no route for this path")]
    NoRoute,
    /// Body larger than the route allows.
    #[error("request body exceeds {0} bytes")]
    BodyTooLarge(u64),
    /// The client was too slow sending its body.
    #[error("request body was not received in time")]
    BodyTimeout,
    /// The body could not be read.
    #[error("request body could not be read")]
    BodyRead,
    /// The upstream could not be reached.
    #[error("upstream is unavailable")]
    UpstreamUnavailable,
    /// The upstream failed mid-exchange.
    #[error("upstream failed")]
    UpstreamFailed,
    /// The upstream did not answer in time.
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
    /// `Idempotency-Key` is empty, too long or not text.
    #[error("Idempotency-Key must be 1 to 200 visible characters")]
    BadIdempotencyKey,
    /// The agent has as many pending approvals as it may.
    #[error("this agent already has {0} calls waiting for approval; wait for decisions before proposing more")]
    TooManyPending(u64),
    /// The idempotency key was used for a different request.
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyConflict,
    /// No approval with this id belongs to the caller.
    #[error("no such approval")]
    UnknownApproval,
    /// The approval has not executed, so there is no result yet.
    #[error("the approval is {0}; there is no result")]
    NotExecuted(&'static str),
    /// The audit log could not be written; nothing was forwarded.
    #[error("the audit log is unavailable; nothing was executed")]
    AuditUnavailable,
    /// The store could not be read or written; nothing was forwarded.
    #[error("the approval store is unavailable; nothing was executed")]
    StoreUnavailable,
    /// Latch itself failed; details are logged, not sent.
    #[error("internal error")]
    Internal,
}

impl ProxyError {
    /// Status and the `latch-error` code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::Prompt(p) => p
                .status_and_code()
                .unwrap_or((StatusCode::INTERNAL_SERVER_ERROR, "internal")),
            ProxyError::BadPath(_) => (StatusCode::BAD_REQUEST, "bad_path"),
            ProxyError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ProxyError::BadMethod => (StatusCode::BAD_REQUEST, "bad_method"),
            ProxyError::Body(BodyError::TooLarge(_)) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
            }
            ProxyError::Body(e) if e.is_unsupported_media() => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_body")
            }
            ProxyError::Body(_) => (StatusCode::BAD_REQUEST, "bad_body"),
            ProxyError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ProxyError::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, "throttled"),
            ProxyError::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            ProxyError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ProxyError::BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            ProxyError::BodyRead => (StatusCode::BAD_REQUEST, "bad_body"),
            ProxyError::UpstreamUnavailable => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
            ProxyError::UpstreamFailed => (StatusCode::BAD_GATEWAY, "upstream_failed"),
            ProxyError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            ProxyError::BadIdempotencyKey => (StatusCode::BAD_REQUEST, "bad_idempotency_key"),
            ProxyError::TooManyPending(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_pending"),
            ProxyError::IdempotencyConflict => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_conflict")
            }
            ProxyError::UnknownApproval => (StatusCode::NOT_FOUND, "unknown_approval"),
            ProxyError::NotExecuted(_) => (StatusCode::CONFLICT, "not_executed"),
            ProxyError::AuditUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "audit_unavailable"),
            ProxyError::StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ProxyError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The answer: JSON `{"error": code, "message"}` with `latch-error: code`.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let mut resp = json_response(
            status,
            &json!({"error": code, "message": self.to_string(), "request_id": request_id}),
        );
        let h = resp.headers_mut();
        h.insert("latch-error", HeaderValue::from_static(code));
        if matches!(self, ProxyError::Unauthenticated(_)) {
            h.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"latch\""),
            );
        }
        match self {
            ProxyError::TooManyPending(_) => {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("30"));
            }
            ProxyError::Throttled(secs) => {
                h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            }
            _ => {}
        }
        if matches!(self, ProxyError::MethodNotAllowed) {
            h.insert(
                http::header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
        }
        resp
    }
}

impl From<GateError> for ProxyError {
    fn from(e: GateError) -> ProxyError {
        match e {
            GateError::TooManyPending(n) => ProxyError::TooManyPending(n),
            GateError::IdempotencyConflict => ProxyError::IdempotencyConflict,
            GateError::AuditUnavailable => ProxyError::AuditUnavailable,
            GateError::Store(_) => ProxyError::StoreUnavailable,
            GateError::NotFound => ProxyError::UnknownApproval,
            GateError::Closed(_)
            | GateError::GrantNotFound
            | GateError::GrantClosed(_)
            | GateError::BadGrant(_)
            | GateError::Forbidden(_)
            | GateError::AlreadyVoted(_)
            | GateError::Invalid(_)
            | GateError::PolicyDenied { .. } => {
                tracing::error!(error = %e, "unexpected gate refusal on the data plane");
                ProxyError::Internal
            }
        }
    }
}

impl ProxyError {
    /// The answer for a call the upstream did not answer; `limit` is the
    /// route's body limit (a streamed body can pass it mid-send).
    pub fn from_send(e: SendError, limit: u64) -> ProxyError {
        match e {
            SendError::Timeout => ProxyError::UpstreamTimeout,
            SendError::BodyTooLarge => ProxyError::BodyTooLarge(limit),
            SendError::Unavailable(_) => ProxyError::UpstreamUnavailable,
            SendError::Failed(_) => ProxyError::UpstreamFailed,
            SendError::Target(_) => ProxyError::Internal,
        }
    }
}
